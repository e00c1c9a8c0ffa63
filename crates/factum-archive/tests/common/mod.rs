//! What the archive tests share: the cases every archive passes (run on a
//! directory and on S3 alike) and a moto S3 server started per test binary.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::{Path, PathBuf};

use factum_core::{Error, UnavailableReason};
use factum_engine::{Archive, ArchivedObject};

/// Bytes that differ at every offset (a repeated pattern would hide a
/// range read from the wrong place).
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Writes `bytes` to a file in `dir` and returns its path.
pub fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Asserts `error` is `Unavailable` (reason `Storage`) and its message
/// names every one of `names`.
pub fn assert_unavailable_naming(error: &Error, names: &[&str]) {
    assert!(
        matches!(
            error,
            Error::Unavailable {
                reason: UnavailableReason::Storage,
                ..
            }
        ),
        "expected Unavailable(Storage), got {error:?}"
    );
    let message = error.to_string();
    for name in names {
        assert!(message.contains(name), "{name:?} not in: {message}");
    }
}

/// put, size, get_range (start, middle, across and past the end), list
/// (with modification times), replace, an empty object, and delete (also of
/// a missing name).
pub fn round_trip(archive: &dyn Archive, scratch: &Path) {
    let first = "00000000000000000000.seg";
    let second = "00000000000000100000.seg";
    let empty = "00000000000000200000.seg";
    let bytes = content(100_000, 1);

    archive.put(first, &file(scratch, "a", &bytes)).unwrap();
    assert_eq!(archive.size(first).unwrap(), Some(100_000));
    assert_eq!(
        &archive.get_range(first, 0, 100).unwrap()[..],
        &bytes[..100]
    );
    assert_eq!(
        &archive.get_range(first, 5_000, 1_000).unwrap()[..],
        &bytes[5_000..6_000]
    );
    // Fewer bytes only at the end, none at or past it.
    assert_eq!(
        &archive.get_range(first, 99_950, 100).unwrap()[..],
        &bytes[99_950..]
    );
    assert!(archive.get_range(first, 100_000, 10).unwrap().is_empty());
    assert!(archive.get_range(first, 250_000, 10).unwrap().is_empty());
    assert!(archive.get_range(first, 10, 0).unwrap().is_empty());
    assert_eq!(
        &archive.get_range(first, 0, 100_000).unwrap()[..],
        &bytes[..]
    );

    let other = content(4_321, 2);
    archive.put(second, &file(scratch, "b", &other)).unwrap();
    archive.put(empty, &file(scratch, "c", &[])).unwrap();
    assert_eq!(archive.size(empty).unwrap(), Some(0));
    assert!(archive.get_range(empty, 0, 10).unwrap().is_empty());

    // A put replaces an object of the same name.
    let shorter = content(777, 3);
    archive.put(first, &file(scratch, "d", &shorter)).unwrap();
    assert_eq!(archive.size(first).unwrap(), Some(777));
    assert_eq!(
        &archive.get_range(first, 0, 1_000).unwrap()[..],
        &shorter[..]
    );

    let started = std::time::SystemTime::now();
    assert_eq!(
        names_and_sizes(&archive.list().unwrap()),
        vec![
            (first.into(), 777),
            (second.into(), 4_321),
            (empty.into(), 0)
        ]
    );
    // Every object carries its modification time, recent (the store's
    // clock may be a little off ours, or truncate to seconds).
    for object in archive.list().unwrap() {
        let modified = object
            .modified
            .unwrap_or_else(|| panic!("{}: no modification time", object.name));
        let age = started
            .duration_since(modified)
            .unwrap_or_else(|e| e.duration());
        assert!(
            age.as_secs() < 300,
            "{}: modified {age:?} away",
            object.name
        );
    }

    // A deletion removes the object; deleting it again, or a name that
    // never was, is no error.
    // (The S3 test looks at `second` afterwards.)
    archive.delete(empty).unwrap();
    assert_eq!(archive.size(empty).unwrap(), None);
    archive.delete(empty).unwrap();
    archive.delete("00000000000000900000.seg").unwrap();
    assert_eq!(
        names_and_sizes(&archive.list().unwrap()),
        vec![(first.into(), 777), (second.into(), 4_321)]
    );
}

/// Each object's name and size (what a listing must hold; the
/// modification time is the store's).
pub fn names_and_sizes(objects: &[ArchivedObject]) -> Vec<(String, u64)> {
    objects.iter().map(|o| (o.name.clone(), o.size)).collect()
}

/// The object [`multipart_round_trip`] writes.
pub const MULTIPART_NAME: &str = "00000000000001000000.seg";

/// A file above the multipart threshold: three parts, the last short;
/// reads across part boundaries.
pub fn multipart_round_trip(archive: &dyn Archive, scratch: &Path) {
    let part = factum_archive::PART_SIZE;
    let len = 2 * part + 12_345;
    assert!(len as u64 > factum_archive::MULTIPART_THRESHOLD);
    let name = MULTIPART_NAME;
    let bytes = content(len, 4);

    archive.put(name, &file(scratch, "big", &bytes)).unwrap();
    assert_eq!(archive.size(name).unwrap(), Some(len as u64));
    for (offset, count) in [(0, 64), (part - 10, 20), (2 * part - 1, 2), (len - 5, 64)] {
        let got = archive.get_range(name, offset as u64, count).unwrap();
        let end = (offset + count).min(len);
        assert_eq!(&got[..], &bytes[offset..end], "range {offset}+{count}");
    }
    assert_eq!(&archive.get_range(name, 0, len).unwrap()[..], &bytes[..]);
    assert!(names_and_sizes(&archive.list().unwrap()).contains(&(name.into(), len as u64)));
}

/// A name with no object: no size, and a read fails naming it.
pub fn missing_object(archive: &dyn Archive) {
    let name = "99999999999999999999.seg";
    assert_eq!(archive.size(name).unwrap(), None);
    let error = archive.get_range(name, 0, 10).unwrap_err();
    assert_unavailable_naming(&error, &[name, &archive.describe()]);
}

#[allow(unused_imports)] // each test binary uses its own part
pub use factum_archive::testing::{closed_port, skip, Moto};

//! The archive cases on a local directory, through `open_archive`.

mod common;

use factum_archive::{open_archive, ArchiveOptions};

#[test]
fn directory_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let archive = open_archive(
        dir.path().join("archive").to_str().unwrap(),
        &ArchiveOptions::default(),
    )
    .unwrap();
    common::round_trip(archive.as_ref(), dir.path());
}

#[test]
fn directory_multipart_sized_file() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("file://{}", dir.path().join("archive").display());
    let archive = open_archive(&spec, &ArchiveOptions::default()).unwrap();
    common::multipart_round_trip(archive.as_ref(), dir.path());
}

#[test]
fn directory_missing_object() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("file://{}", dir.path().display());
    let archive = open_archive(&spec, &ArchiveOptions::default()).unwrap();
    common::missing_object(archive.as_ref());
}

#[test]
fn unknown_schemes_are_refused() {
    let error = open_archive("gs://bucket/prefix", &ArchiveOptions::default())
        .unwrap_err()
        .to_string();
    assert!(error.contains("gs://"), "{error}");
    assert!(error.contains("s3://bucket"), "{error}");
    assert!(error.contains("file:///"), "{error}");
}

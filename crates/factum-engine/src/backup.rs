//! Online backup and restore of a store (issue 17, ADR 32, ADR 40).
//!
//! A backup is a copy of the log at one committed position: every sealed
//! segment whole, and the active segment up to the committed end (what
//! follows it is an append in flight or preallocated zeros), and a
//! snapshot of the index (`index.snapshot.redb`: redb as of a read
//! transaction, its checkpoint behind the copied log end), so a restored
//! store opens by replaying only the log after that checkpoint instead of
//! rebuilding the whole index. Snapshot, segment list and committed end
//! are taken while no segment rewrite can swap a file (the segments' hold),
//! and segments are copied through the descriptors taken then: the index
//! snapshot describes exactly the segment versions copied.
//!
//! Incremental: a backup into a directory that holds an earlier backup of
//! the same store copies only what changed. Every file's SHA-256 is in the
//! manifest, with the source file's identity (device, inode, change time);
//! a segment the earlier manifest lists with the same name, length and
//! identity is not read again; one with the same name and length but
//! another identity (a scavenge, compaction or re-encryption wrote a new
//! file, maybe of the same length) is read and its checksum compared, and
//! copied when it differs. The index snapshot is copied every time. Every
//! file is written beside its final name, fsynced and renamed; the manifest
//! (`BACKUP.json`) is written last, so a backup interrupted at any moment
//! leaves the previous manifest describing files that are all still whole.
//!
//! Restore copies what the manifest lists into an empty directory (or one
//! it may replace, with `force`), checks each file's length and SHA-256
//! against the manifest, puts the index snapshot in place as the store's
//! index, and leaves a store that opens and passes `verify`. Manifests of
//! version 1 (no checksums, no index) still restore (the index is rebuilt
//! at the first open); the next backup into such a directory copies every
//! segment once, to record their checksums.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use factum_core::{Error, Position, Result};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::log::sync_dir;

/// The manifest file in a backup directory.
pub const MANIFEST: &str = "BACKUP.json";

/// The index snapshot's file in a backup directory (restored as `index.redb`).
pub const INDEX_SNAPSHOT: &str = "index.snapshot.redb";

/// The manifest layout this build writes (2: checksums, source identities,
/// the index snapshot); it restores 1 and 2.
pub const MANIFEST_VERSION: u32 = 2;

/// What a backup holds: written last, read by restore.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Layout version of this manifest ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The public position of the last event in the backup (0: empty store).
    pub position: u64,
    /// The segment files, oldest first, with their lengths in bytes.
    pub segments: Vec<BackupFile>,
    /// The index snapshot (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<BackupFile>,
}

/// One file of a backup.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupFile {
    /// Its file name.
    pub name: String,
    /// Its length in bytes.
    pub bytes: u64,
    /// SHA-256 of those bytes, hex (version 2). Not a CRC32C: a segment's
    /// frames each end in their own CRC32C, and a CRC32C over the whole
    /// file stays the same when a frame's content changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The store's file it was copied from: `device:inode:ctime` (version 2).
    /// A rewritten segment is a new file, so another identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// What a backup or restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupReport {
    /// The public position of the last event copied (0: empty store).
    pub position: Position,
    /// Segment files the backup holds.
    pub files: usize,
    /// Files copied by this run (the others were already there).
    pub files_copied: usize,
    /// Segment bytes copied by this run.
    pub bytes_copied: u64,
    /// Segment bytes the backup holds.
    pub bytes_total: u64,
    /// Bytes of the index snapshot (0: none; a restore then rebuilds the index).
    pub index_bytes: u64,
    /// Segments read to compare checksums (same name and length as in the
    /// earlier backup, another source file), whether copied or not.
    pub files_checked: usize,
}

impl Engine {
    /// Copies the store, as of its committed position now, into `dest`
    /// (created if missing), while appends and reads go on. Incremental on
    /// a directory holding an earlier backup of this store. Blocking: call
    /// it from a blocking thread.
    pub fn backup(&self, dest: &Path) -> Result<BackupReport> {
        let reader = self.reader();
        fs::create_dir_all(dest).map_err(|e| io(dest, "creating", e))?;
        if dest.join("LOCK").exists() || dest.join("index.redb").exists() {
            return Err(Error::InvalidInput(format!(
                "{} holds a store, not a backup; back up into an empty directory or an earlier backup",
                dest.display()
            )));
        }
        // Everything committed so far into redb: the snapshot then indexes
        // (nearly) the whole backup, and a restore replays (nearly) nothing.
        self.flush_index()?;
        // The index snapshot and the segment versions, taken while no
        // rewrite swaps a segment (ADR 40).
        let (snapshot, segments) = {
            let _hold = reader.segments.hold();
            (reader.index.snapshot()?, reader.segments.all())
        };
        // The committed end, at or past the snapshot's checkpoint (the
        // writer indexes a group just before it publishes it).
        let indexed = snapshot.end()?;
        let mut committed = reader.committed();
        let waited = std::time::Instant::now();
        while committed.end < indexed {
            if waited.elapsed() > std::time::Duration::from_secs(10) {
                return Err(Error::unavailable(
                    factum_core::UnavailableReason::Storage,
                    "backup: the writer did not publish the indexed end of the log within 10 s",
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            committed = reader.committed();
        }
        let end = committed.end;
        let previous = read_manifest(dest).ok();
        let mut report = BackupReport {
            position: Position(committed.next_position),
            files: 0,
            files_copied: 0,
            bytes_copied: 0,
            bytes_total: 0,
            index_bytes: 0,
            files_checked: 0,
        };
        let mut manifest = Manifest {
            version: MANIFEST_VERSION,
            position: committed.next_position,
            segments: Vec::new(),
            index: None,
        };
        for seg in segments {
            if seg.number > end.segment() {
                break;
            }
            let name = file_name(&seg.path)?;
            // The active segment of an encrypted store (ADR 45): its pages
            // through the one holding the committed end, that page cut to
            // it in the copy (the writer may have appended into it since).
            let encrypted_active = seg.number == end.segment() && seg.format.encrypted();
            // A segment that lives only in the archive (ADR 43) is copied
            // whole from there, not as its stub: a backup must not depend on
            // the archive.
            let (bytes, source, held) = match (&seg.stub, seg.number < end.segment()) {
                (Some(stub), true) => {
                    // The object, and the stub's file (its key slots, which
                    // `factum rekey` rewrites).
                    let source = identity(&seg.file)
                        .ok()
                        .map(|id| format!("archive:{}:{id}", stub.object));
                    let held = previous.as_ref().and_then(|m| {
                        m.segments.iter().find(|f| {
                            f.name == name
                                && f.bytes == stub.size
                                && source.is_some()
                                && f.source == source
                                && fs::metadata(dest.join(&name))
                                    .is_ok_and(|m| m.len() == stub.size)
                        })
                    });
                    (stub.size, source, held.and_then(|f| f.sha256.clone()))
                }
                _ => {
                    let bytes = if seg.number < end.segment() {
                        // The file as stored locally (compressed or not).
                        seg.local_len()?
                    } else if encrypted_active {
                        crate::encrypt::physical_len(end.offset())
                    } else {
                        end.offset()
                    };
                    let source = identity(&seg.file).ok();
                    // What the earlier backup holds whole under this name.
                    let earlier = previous.as_ref().and_then(|m| {
                        m.segments
                            .iter()
                            .find(|f| f.name == name && f.bytes == bytes && f.sha256.is_some())
                    });
                    let earlier = earlier.filter(|_| {
                        !encrypted_active
                            && fs::metadata(dest.join(&name)).is_ok_and(|m| m.len() == bytes)
                            && same_ends(&seg.path, &dest.join(&name), bytes)
                    });
                    let held = match earlier {
                        // The same file as then: a sealed segment never changes.
                        Some(f) if source.is_some() && f.source == source => f.sha256.clone(),
                        // Another file of the same length (rewritten): compare.
                        Some(f) => {
                            report.files_checked += 1;
                            let now = digest_of(&seg.file, &seg.path, bytes)?;
                            (Some(&now) == f.sha256.as_ref()).then_some(now)
                        }
                        None => None,
                    };
                    (bytes, source, held)
                }
            };
            if held.is_none() {
                report.files_copied += 1;
                report.bytes_copied += bytes;
            }
            let digest = match (held, &seg.stub) {
                (Some(digest), _) => digest,
                (None, Some(stub)) => copy_archived(&seg, stub, &dest.join(&name))?,
                (None, None) if encrypted_active => {
                    // The file may end inside its last group (what is past
                    // its end reads as zeros); the cut below makes the copy
                    // whole groups.
                    let have = seg.local_len()?.min(bytes);
                    copy_prefix_of(&seg.file, &seg.path, &dest.join(&name), have)?;
                    let copy = dest.join(&name);
                    let f = fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&copy)
                        .map_err(|e| io(&copy, "opening", e))?;
                    let mut f = crate::encrypt::SegmentFile::new(
                        f,
                        Some(
                            seg.cipher
                                .get()
                                .cloned()
                                .ok_or_else(|| seg.cipher().err().unwrap())?,
                        ),
                    );
                    f.set_len(end.offset())
                        .and_then(|_| f.sync_all())
                        .map_err(|e| io(&copy, "cutting to the committed end", e))?;
                    digest_of(f.file(), &copy, bytes)?
                }
                (None, None) => copy_prefix_of(&seg.file, &seg.path, &dest.join(&name), bytes)?,
            };
            report.files += 1;
            report.bytes_total += bytes;
            manifest.segments.push(BackupFile {
                name,
                bytes,
                sha256: Some(digest),
                source,
            });
        }
        // The index snapshot, whole each time.
        let tmp = dest.join(format!("{INDEX_SNAPSHOT}.backup-tmp"));
        let _ = fs::remove_file(&tmp);
        let index_bytes = snapshot.write_to(&tmp)?;
        drop(snapshot);
        let index_digest = {
            let f = File::open(&tmp).map_err(|e| io(&tmp, "opening", e))?;
            digest_of(&f, &tmp, index_bytes)?
        };
        fs::rename(&tmp, dest.join(INDEX_SNAPSHOT)).map_err(|e| io(&tmp, "renaming", e))?;
        report.index_bytes = index_bytes;
        manifest.index = Some(BackupFile {
            name: INDEX_SNAPSHOT.into(),
            bytes: index_bytes,
            sha256: Some(index_digest),
            source: None,
        });
        // The copies' renames are durable before the manifest names them.
        sync_dir(dest)?;
        write_manifest(dest, &manifest)?;
        Ok(report)
    }
}

/// Makes the store in `data` from the backup in `from`. `data` must be
/// missing or empty unless `force` (then its segments and index go).
pub fn restore(from: &Path, data: &Path, force: bool) -> Result<BackupReport> {
    let manifest = read_manifest(from)?;
    if !(1..=MANIFEST_VERSION).contains(&manifest.version) {
        return Err(Error::InvalidInput(format!(
            "{} has backup layout version {}, this build knows 1 to {MANIFEST_VERSION}",
            from.join(MANIFEST).display(),
            manifest.version
        )));
    }
    fs::create_dir_all(data).map_err(|e| io(data, "creating", e))?;
    let existing: Vec<PathBuf> = fs::read_dir(data)
        .map_err(|e| io(data, "listing", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    if !existing.is_empty() {
        if !force {
            return Err(Error::InvalidInput(format!(
                "{} is not empty; restore into an empty directory, or pass --force to replace the store there",
                data.display()
            )));
        }
        // Hold the store's lock while replacing it: no process may serve it.
        let _lock = crate::engine::lock_dir(data)?;
        for p in existing {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".seg") || name == "index.redb" || name == "FSYNC_FAILED" {
                fs::remove_file(&p).map_err(|e| io(&p, "removing", e))?;
            }
        }
    }
    let mut report = BackupReport {
        position: Position(manifest.position),
        files: 0,
        files_copied: 0,
        bytes_copied: 0,
        bytes_total: 0,
        index_bytes: 0,
        files_checked: 0,
    };
    let restore_file = |f: &BackupFile, to: &Path| -> Result<()> {
        let src = from.join(&f.name);
        let len = fs::metadata(&src)
            .map_err(|e| io(&src, "reading", e))?
            .len();
        if len < f.bytes {
            return Err(Error::Corrupt {
                file: src,
                offset: len,
                detail: format!("the backup's manifest says {} bytes", f.bytes),
            });
        }
        let digest = copy_prefix(&src, to, f.bytes)?;
        if let Some(want) = f.sha256.as_ref().filter(|&want| *want != digest) {
            let _ = fs::remove_file(to);
            return Err(Error::Corrupt {
                file: src,
                offset: 0,
                detail: format!(
                    "SHA-256 {digest} of its first {} bytes, the backup's manifest says {want}",
                    f.bytes
                ),
            });
        }
        Ok(())
    };
    for f in &manifest.segments {
        restore_file(f, &data.join(&f.name))?;
        report.files += 1;
        report.files_copied += 1;
        report.bytes_copied += f.bytes;
        report.bytes_total += f.bytes;
    }
    if let Some(f) = &manifest.index {
        restore_file(f, &data.join(crate::index::INDEX_FILE))?;
        report.index_bytes = f.bytes;
    }
    sync_dir(data)?;
    Ok(report)
}

/// Reads a backup's manifest.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let bytes = fs::read(&path).map_err(|e| io(&path, "reading", e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        file: path.clone(),
        offset: 0,
        detail: format!("not a backup manifest: {e}"),
    })
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let body = serde_json::to_vec_pretty(m).expect("a manifest serializes");
    let mut f = File::create(&tmp).map_err(|e| io(&tmp, "creating", e))?;
    f.write_all(&body).map_err(|e| io(&tmp, "writing", e))?;
    f.sync_all().map_err(|e| io(&tmp, "fsync", e))?;
    let path = dir.join(MANIFEST);
    fs::rename(&tmp, &path).map_err(|e| io(&path, "renaming into", e))?;
    sync_dir(dir)
}

/// Copies the first `len` bytes of `src` to `dst` through a temporary file
/// that is fsynced and renamed into place. The caller fsyncs the directory
/// once after all copies (before a backup's manifest, at the end of a
/// restore), which makes every rename durable.
/// Returns the SHA-256 (hex) of the bytes copied.
fn copy_prefix(src: &Path, dst: &Path, len: u64) -> Result<String> {
    let input = File::open(src).map_err(|e| io(src, "opening", e))?;
    copy_prefix_of(&input, src, dst, len)
}

/// Positional reads from a descriptor shared with the store's readers.
struct At<'a>(&'a File, u64);

impl std::io::Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.0.read_at(buf, self.1)?;
        self.1 += n as u64;
        Ok(n)
    }
}

/// A reader that keeps the SHA-256 of what passes through it.
struct Digest<R>(R, sha2::Sha256);

impl<R: Read> Read for Digest<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.0.read(buf)?;
        self.1.update(&buf[..n]);
        Ok(n)
    }
}

impl<R> Digest<R> {
    fn new(r: R) -> Self {
        use sha2::Digest as _;
        Digest(r, sha2::Sha256::new())
    }

    fn hex(self) -> String {
        use sha2::Digest as _;
        self.1
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The SHA-256 (hex) of the first `len` bytes of an open file.
fn digest_of(input: &File, path: &Path, len: u64) -> Result<String> {
    let mut r = Digest::new(At(input, 0).take(len));
    let n = std::io::copy(&mut r, &mut std::io::sink()).map_err(|e| io(path, "reading", e))?;
    if n != len {
        return Err(Error::Corrupt {
            file: path.to_path_buf(),
            offset: n,
            detail: format!("ended before the {len} bytes to check"),
        });
    }
    Ok(r.hex())
}

/// An open file's identity: `device:inode:ctime` (seconds.nanoseconds).
/// A segment rewrite writes a new file and renames it in, so its
/// identity changes even when its name and length do not.
fn identity(f: &File) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok(format!(
        "{}:{}:{}.{:09}",
        m.dev(),
        m.ino(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// As [`copy_prefix`], from an open file: a segment's open descriptor keeps
/// reading the version it was opened on when a scavenge swaps in a new one
/// (ADR 33), so a backup copies either whole, never a mix.
/// Returns the SHA-256 (hex) of the bytes copied.
fn copy_prefix_of(input: &File, src: &Path, dst: &Path, len: u64) -> Result<String> {
    let mut tmp = dst.as_os_str().to_owned();
    tmp.push(".backup-tmp");
    let tmp = PathBuf::from(tmp);
    let mut out = File::create(&tmp).map_err(|e| io(&tmp, "creating", e))?;
    let mut from = Digest::new(At(input, 0).take(len));
    let copied = std::io::copy(&mut from, &mut out).map_err(|e| io(&tmp, "copying to", e))?;
    if copied != len {
        return Err(Error::Corrupt {
            file: src.to_path_buf(),
            offset: copied,
            detail: format!("ended before the {len} bytes to copy"),
        });
    }
    out.sync_all().map_err(|e| io(&tmp, "fsync", e))?;
    fs::rename(&tmp, dst).map_err(|e| io(dst, "renaming into", e))?;
    Ok(from.hex())
}

/// Copies a segment that lives only in the archive into `dst` as the
/// whole file it was before its local copy went (the archived object, read
/// through the archive tier), with the key slots of its stub for an
/// encrypted one (they hold the data key as the current master key wraps
/// it). Returns the SHA-256 (hex) of what it wrote.
fn copy_archived(
    seg: &crate::log::Segment,
    stub: &crate::archive::Stub,
    dst: &Path,
) -> Result<String> {
    let key_area = if seg.format.encrypted() {
        use std::os::unix::fs::FileExt;
        let mut area =
            vec![0u8; (crate::encrypt::KEY_AREA as usize) - crate::format::SEGMENT_HEADER_LEN];
        seg.file
            .read_exact_at(&mut area, crate::format::SEGMENT_HEADER_LEN as u64)
            .map_err(|e| io(&seg.path, "reading the key slots of", e))?;
        Some(area)
    } else {
        None
    };
    let mut tmp = dst.as_os_str().to_owned();
    tmp.push(".backup-tmp");
    let tmp = PathBuf::from(tmp);
    let mut out = File::create(&tmp).map_err(|e| io(&tmp, "creating", e))?;
    let mut from = Digest::new(Archived {
        seg,
        key_area,
        at: 0,
        size: stub.size,
    });
    let copied = std::io::copy(&mut from, &mut out).map_err(|e| io(&tmp, "copying to", e))?;
    if copied != stub.size {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Corrupt {
            file: seg.path.clone(),
            offset: copied,
            detail: format!(
                "the archived object {} ended before its {} bytes",
                stub.object, stub.size
            ),
        });
    }
    out.sync_all().map_err(|e| io(&tmp, "fsync", e))?;
    fs::rename(&tmp, dst).map_err(|e| io(dst, "renaming into", e))?;
    Ok(from.hex())
}

/// The bytes of an archived segment's file, read through the archive tier
/// (`compress::Physical`), with its stub's key slots in place.
struct Archived<'a> {
    seg: &'a crate::log::Segment,
    key_area: Option<Vec<u8>>,
    at: u64,
    size: u64,
}

impl Read for Archived<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use crate::compress::Physical;
        let want = buf.len().min((self.size - self.at).min(1 << 20) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self
            .seg
            .read_physical(&mut buf[..want], self.at)
            .map_err(std::io::Error::other)?;
        if let Some(area) = &self.key_area {
            // The overlap of bytes at..at+n with the key slots.
            let lo = crate::format::SEGMENT_HEADER_LEN as u64;
            let hi = lo + area.len() as u64;
            let (from, to) = (self.at.max(lo), (self.at + n as u64).min(hi));
            if from < to {
                buf[(from - self.at) as usize..(to - self.at) as usize]
                    .copy_from_slice(&area[(from - lo) as usize..(to - lo) as usize]);
            }
        }
        self.at += n as u64;
        Ok(n)
    }
}

/// Whether two files hold the same first and last 4 KiB of their first
/// `len` bytes: a segment of the same name and length in a directory that
/// holds a backup of another store (its frames carry other event ids) is
/// copied again rather than trusted.
fn same_ends(a: &Path, b: &Path, len: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let read = |p: &Path, at: u64, n: usize| -> Option<Vec<u8>> {
        let mut buf = vec![0u8; n];
        File::open(p).ok()?.read_exact_at(&mut buf, at).ok()?;
        Some(buf)
    };
    let n = len.min(4096);
    let ends = [0, len - n];
    ends.iter().all(|&at| {
        let (x, y) = (read(a, at, n as usize), read(b, at, n as usize));
        x.is_some() && x == y
    })
}

fn file_name(p: &Path) -> Result<String> {
    p.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::InvalidInput(format!("segment path {} has no file name", p.display()))
        })
}

fn io(p: &Path, what: &str, e: std::io::Error) -> Error {
    Error::io(format!("{what} {}", p.display()), e)
}

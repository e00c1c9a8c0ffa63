//! Online backup and restore of a store (issue 17, ADR 32).
//!
//! A backup is a copy of the log at one committed position: every sealed
//! segment whole, and the active segment up to the committed end (what
//! follows it is an append in flight or preallocated zeros). The index is
//! not copied: it is derived, and a restored store rebuilds it from the log
//! when it is first opened (`Index::open_or_rebuild`). Sealed segments are
//! immutable, so a backup into a directory that holds an earlier backup of
//! the same store copies only what is new: segments it lacks or holds
//! shorter (an active segment of the earlier backup), and the active
//! segment. Every file is written beside its final name, fsynced and
//! renamed; the manifest (`BACKUP.json`) is written last, so a backup
//! interrupted at any moment leaves the previous manifest describing files
//! that are all still whole.
//!
//! Restore copies what the manifest lists into an empty directory (or one
//! it may replace, with `force`), checks each file's length against the
//! manifest, and leaves a store that opens and passes `verify`.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use factum_core::{Error, Position, Result};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::log::sync_dir;

/// The manifest file in a backup directory.
pub const MANIFEST: &str = "BACKUP.json";

/// What a backup holds: written last, read by restore.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Layout version of this manifest (1).
    pub version: u32,
    /// The public position of the last event in the backup (0: empty store).
    pub position: u64,
    /// The segment files, oldest first, with their lengths in bytes.
    pub segments: Vec<BackupFile>,
}

/// One file of a backup.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupFile {
    /// Its file name.
    pub name: String,
    /// Its length in bytes.
    pub bytes: u64,
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
    /// Bytes copied by this run.
    pub bytes_copied: u64,
    /// Bytes the backup holds.
    pub bytes_total: u64,
}

impl Engine {
    /// Copies the store, as of its committed position now, into `dest`
    /// (created if missing), while appends and reads go on. Incremental on
    /// a directory holding an earlier backup of this store. Blocking: call
    /// it from a blocking thread.
    pub fn backup(&self, dest: &Path) -> Result<BackupReport> {
        let reader = self.reader();
        let committed = reader.committed();
        let end = committed.end;
        fs::create_dir_all(dest).map_err(|e| io(dest, "creating", e))?;
        if dest.join("LOCK").exists() || dest.join("index.redb").exists() {
            return Err(Error::InvalidInput(format!(
                "{} holds a store, not a backup; back up into an empty directory or an earlier backup",
                dest.display()
            )));
        }
        let previous = read_manifest(dest).ok();
        let mut report = BackupReport {
            position: Position(committed.next_position),
            files: 0,
            files_copied: 0,
            bytes_copied: 0,
            bytes_total: 0,
        };
        let mut manifest = Manifest {
            version: 1,
            position: committed.next_position,
            segments: Vec::new(),
        };
        for seg in reader.segments.all() {
            if seg.number > end.segment() {
                break;
            }
            let name = file_name(&seg.path)?;
            let bytes = if seg.number < end.segment() {
                seg.len()?
            } else {
                end.offset()
            };
            // A sealed segment never changes: one the earlier backup holds
            // whole is still right.
            let held = previous.as_ref().is_some_and(|m| {
                m.segments
                    .iter()
                    .any(|f| f.name == name && f.bytes == bytes)
            }) && fs::metadata(dest.join(&name)).is_ok_and(|m| m.len() == bytes)
                && same_ends(&seg.path, &dest.join(&name), bytes);
            if !held {
                copy_prefix_of(&seg.file, &seg.path, &dest.join(&name), bytes)?;
                report.files_copied += 1;
                report.bytes_copied += bytes;
            }
            report.files += 1;
            report.bytes_total += bytes;
            manifest.segments.push(BackupFile { name, bytes });
        }
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
    if manifest.version != 1 {
        return Err(Error::InvalidInput(format!(
            "{} has backup layout version {}, this build knows 1",
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
    };
    for f in &manifest.segments {
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
        copy_prefix(&src, &data.join(&f.name), f.bytes)?;
        report.files += 1;
        report.files_copied += 1;
        report.bytes_copied += f.bytes;
        report.bytes_total += f.bytes;
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
fn copy_prefix(src: &Path, dst: &Path, len: u64) -> Result<()> {
    let input = File::open(src).map_err(|e| io(src, "opening", e))?;
    copy_prefix_of(&input, src, dst, len)
}

/// As [`copy_prefix`], from an open file: a segment's open descriptor keeps
/// reading the version it was opened on when a scavenge swaps in a new one
/// (ADR 33), so a backup copies either whole, never a mix.
fn copy_prefix_of(input: &File, src: &Path, dst: &Path, len: u64) -> Result<()> {
    /// Positional reads: the descriptor is shared with the store's readers.
    struct At<'a>(&'a File, u64);
    impl std::io::Read for At<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            use std::os::unix::fs::FileExt;
            let n = self.0.read_at(buf, self.1)?;
            self.1 += n as u64;
            Ok(n)
        }
    }
    let tmp = dst.with_extension("seg.backup-tmp");
    let mut out = File::create(&tmp).map_err(|e| io(&tmp, "creating", e))?;
    let copied = std::io::copy(&mut At(input, 0).take(len), &mut out)
        .map_err(|e| io(&tmp, "copying to", e))?;
    if copied != len {
        return Err(Error::Corrupt {
            file: src.to_path_buf(),
            offset: copied,
            detail: format!("ended before the {len} bytes to copy"),
        });
    }
    out.sync_all().map_err(|e| io(&tmp, "fsync", e))?;
    fs::rename(&tmp, dst).map_err(|e| io(dst, "renaming into", e))
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

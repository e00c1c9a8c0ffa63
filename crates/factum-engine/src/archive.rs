//! The archive tier (issue 18, ADR 43): sealed segment files copied to
//! object storage or a directory, read back on demand.
//!
//! The engine sees an archive through [`Archive`]: whole-file uploads,
//! ranged reads, size checks and a listing, all blocking (the engine calls
//! them from its own threads, never from an async task). [`LocalArchive`]
//! keeps the objects in a directory; `factum-archive` implements S3 and
//! every S3-compatible store on the `object_store` crate.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use factum_core::{Error, Result, UnavailableReason};

/// One object in an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedObject {
    /// Its name (a segment file's name, e.g. `00000000000000000000.seg`).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Where sealed segments go (see the module doc). Every error is
/// `Error::Unavailable` (reason `Storage`) when the archive cannot be reached, so a read
/// fails clearly instead of answering wrongly; names are plain file names.
pub trait Archive: Send + Sync + std::fmt::Debug {
    /// Uploads the file at `path` as `name`, replacing any object of that
    /// name. Returns once the archive holds it durably (as the archive
    /// defines it: S3 acknowledges a PUT when it is stored).
    fn put(&self, name: &str, path: &Path) -> Result<()>;
    /// The object's size, or `None` when there is none of that name.
    fn size(&self, name: &str) -> Result<Option<u64>>;
    /// Bytes `offset .. offset + len` of the object (fewer only at its end).
    fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Bytes>;
    /// Every object, in name order.
    fn list(&self) -> Result<Vec<ArchivedObject>>;
    /// Where it is, for messages (`s3://bucket/prefix`, a directory).
    fn describe(&self) -> String;
}

/// An archive in a local directory (another disk, a mounted network file
/// system): objects are files, written under a temporary name, fsynced and
/// renamed into place.
#[derive(Debug, Clone)]
pub struct LocalArchive {
    dir: PathBuf,
}

impl LocalArchive {
    /// An archive in `dir` (created when missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating archive directory {}", dir.display()), e))?;
        Ok(LocalArchive { dir })
    }

    fn unavailable(&self, what: &str, e: std::io::Error) -> Error {
        Error::unavailable(
            UnavailableReason::Storage,
            format!("archive {}: {what}: {e}", self.dir.display()),
        )
    }
}

impl Archive for LocalArchive {
    fn put(&self, name: &str, path: &Path) -> Result<()> {
        let tmp = self.dir.join(format!("{name}.upload"));
        let dest = self.dir.join(name);
        let mut from =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let mut to = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| self.unavailable("creating an object", e))?;
        std::io::copy(&mut from, &mut to)
            .and_then(|_| to.flush())
            .and_then(|_| to.sync_all())
            .map_err(|e| self.unavailable("writing an object", e))?;
        std::fs::rename(&tmp, &dest).map_err(|e| self.unavailable("renaming an object", e))?;
        crate::log::sync_dir(&self.dir)
    }

    fn size(&self, name: &str) -> Result<Option<u64>> {
        match std::fs::metadata(self.dir.join(name)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.unavailable("reading an object's size", e)),
        }
    }

    fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Bytes> {
        let f = File::open(self.dir.join(name))
            .map_err(|e| self.unavailable(&format!("opening {name}"), e))?;
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.unavailable(&format!("reading {name}"), e)),
            }
        }
        buf.truncate(got);
        Ok(Bytes::from(buf))
    }

    fn list(&self) -> Result<Vec<ArchivedObject>> {
        let mut out = Vec::new();
        let rd = std::fs::read_dir(&self.dir).map_err(|e| self.unavailable("listing", e))?;
        for entry in rd {
            let entry = entry.map_err(|e| self.unavailable("listing", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".upload") {
                continue;
            }
            let size = entry
                .metadata()
                .map_err(|e| self.unavailable("listing", e))?
                .len();
            out.push(ArchivedObject { name, size });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

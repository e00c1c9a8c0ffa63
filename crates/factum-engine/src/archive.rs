//! The archive tier (issue 18, ADR 43): sealed segment files copied to
//! object storage or a directory, read back on demand.
//!
//! The engine sees an archive through [`Archive`]: whole-file uploads,
//! ranged reads, size checks, a listing and deletion, all blocking (the engine calls
//! them from its own threads, never from an async task). [`LocalArchive`]
//! keeps the objects in a directory; `factum-archive` implements S3 and
//! every S3-compatible store on the `object_store` crate.

use std::fs::{File, OpenOptions};
use std::io::Write;
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
    /// When it was last written, where the archive says (a file's mtime,
    /// S3's `Last-Modified`); `None` when it does not.
    pub modified: Option<std::time::SystemTime>,
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
    /// Deletes the object; deleting one that is not there is `Ok` (so a
    /// retried clean-up does not fail on what it removed before).
    fn delete(&self, name: &str) -> Result<()>;
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
        use crate::compress::Physical;
        let got = f.read_physical(&mut buf, offset).map_err(|e| {
            Error::unavailable(
                UnavailableReason::Storage,
                format!("archive {}: reading {name}: {e}", self.dir.display()),
            )
        })?;
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
            let metadata = entry
                .metadata()
                .map_err(|e| self.unavailable("listing", e))?;
            out.push(ArchivedObject {
                name,
                size: metadata.len(),
                modified: metadata.modified().ok(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        // No fsync of the directory: a deletion a crash undoes leaves an
        // object the next clean-up deletes again.
        match std::fs::remove_file(self.dir.join(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.unavailable(&format!("deleting {name}"), e)),
        }
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

/// Stub body magic (`FCTA`), after the segment header of a stub file.
pub const STUB_MAGIC: [u8; 4] = *b"FCTA";

/// What a stub file records of the archived segment it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stub {
    /// The object's name in the archive.
    pub object: String,
    /// The archived file's size.
    pub size: u64,
    /// CRC32C of the whole archived file (checked by `verify --archive`).
    pub crc: u32,
}

impl Stub {
    /// The stub file's bytes: `header` (which carries `FEATURE_ARCHIVED`)
    /// and the body.
    /// An encrypted segment's stub keeps its key slots (`key_area`, the
    /// file's bytes from the header to `encrypt::KEY_AREA`): its data key
    /// is read, and re-wrapped by `factum rekey`, from the stub.
    pub fn encode(
        &self,
        header: &[u8; crate::format::SEGMENT_HEADER_LEN],
        key_area: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut b = header.to_vec();
        b.extend_from_slice(key_area.unwrap_or_default());
        let body_at = b.len();
        b.extend_from_slice(&STUB_MAGIC);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.crc.to_le_bytes());
        b.extend_from_slice(&(self.object.len() as u16).to_le_bytes());
        b.extend_from_slice(self.object.as_bytes());
        let crc = crc32c::crc32c(&b[body_at..]);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes the body (the bytes after the header).
    pub fn decode(body: &[u8]) -> std::result::Result<Stub, String> {
        let short = || "archive stub is cut short".to_string();
        if body.len() < 22 || body[0..4] != STUB_MAGIC {
            return Err("archive stub has no body (bad magic)".into());
        }
        if u32::from_le_bytes(body[4..8].try_into().unwrap()) != 1 {
            return Err("archive stub version is not supported".into());
        }
        let size = u64::from_le_bytes(body[8..16].try_into().unwrap());
        let crc = u32::from_le_bytes(body[16..20].try_into().unwrap());
        let n = u16::from_le_bytes(body[20..22].try_into().unwrap()) as usize;
        let end = 22 + n;
        let stored = body.get(end..end + 4).ok_or_else(short)?;
        if u32::from_le_bytes(stored.try_into().unwrap()) != crc32c::crc32c(&body[..end]) {
            return Err("archive stub checksum mismatch".into());
        }
        let object = std::str::from_utf8(&body[22..end])
            .map_err(|_| "archive stub names no valid object".to_string())?
            .to_string();
        Ok(Stub { object, size, crc })
    }
}

/// Bytes fetched from the archive per request: reads of archived segments
/// fetch aligned chunks of this size into the cache.
pub const CHUNK_BYTES: u64 = 1 << 20;

/// Counters of the archive tier (for metrics).
#[derive(Debug, Default)]
pub struct TierStats {
    /// Chunk reads answered from the cache.
    pub hits: std::sync::atomic::AtomicU64,
    /// Chunk reads that fetched from the archive.
    pub misses: std::sync::atomic::AtomicU64,
    /// Fetches that failed.
    pub errors: std::sync::atomic::AtomicU64,
    /// Bytes fetched.
    pub fetched_bytes: std::sync::atomic::AtomicU64,
    /// Time spent fetching, µs in all.
    pub fetch_micros: std::sync::atomic::AtomicU64,
}

/// An archive with the bounded cache reads of archived segments go
/// through (least recently used chunks go first).
#[derive(Debug)]
pub struct Tier {
    archive: std::sync::Arc<dyn Archive>,
    capacity: usize,
    cache: parking_lot::Mutex<ChunkCache>,
    /// Its counters.
    pub stats: TierStats,
}

#[derive(Debug, Default)]
struct ChunkCache {
    chunks: std::collections::HashMap<(String, u64), (Bytes, u64)>,
    bytes: usize,
    tick: u64,
}

impl Tier {
    /// A tier over `archive` caching at most `cache_bytes` of chunks.
    pub fn new(archive: std::sync::Arc<dyn Archive>, cache_bytes: usize) -> Self {
        Tier {
            archive,
            capacity: cache_bytes,
            cache: parking_lot::Mutex::new(ChunkCache::default()),
            stats: TierStats::default(),
        }
    }

    /// The archive.
    pub fn archive(&self) -> &std::sync::Arc<dyn Archive> {
        &self.archive
    }

    fn chunk(&self, object: &str, size: u64, index: u64) -> Result<Bytes> {
        use std::sync::atomic::Ordering::Relaxed;
        let key = (object.to_string(), index);
        {
            let mut c = self.cache.lock();
            c.tick += 1;
            let tick = c.tick;
            if let Some((b, used)) = c.chunks.get_mut(&key) {
                *used = tick;
                self.stats.hits.fetch_add(1, Relaxed);
                return Ok(b.clone());
            }
        }
        self.stats.misses.fetch_add(1, Relaxed);
        let offset = index * CHUNK_BYTES;
        let want = CHUNK_BYTES.min(size.saturating_sub(offset)) as usize;
        let started = std::time::Instant::now();
        let got = self.archive.get_range(object, offset, want);
        self.stats
            .fetch_micros
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        let got = got.inspect_err(|_| {
            self.stats.errors.fetch_add(1, Relaxed);
        })?;
        self.stats
            .fetched_bytes
            .fetch_add(got.len() as u64, Relaxed);
        if got.len() != want {
            return Err(Error::unavailable(
                UnavailableReason::Storage,
                format!(
                    "archive {}: {object} holds {} bytes at offset {offset}, expected {want}: the archived copy is damaged or was replaced",
                    self.archive.describe(),
                    got.len()
                ),
            ));
        }
        if self.capacity > 0 {
            let mut c = self.cache.lock();
            c.tick += 1;
            let tick = c.tick;
            c.bytes += got.len();
            if let Some((old, _)) = c.chunks.insert(key, (got.clone(), tick)) {
                c.bytes -= old.len();
            }
            while c.bytes > self.capacity && c.chunks.len() > 1 {
                let oldest = c
                    .chunks
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(k, _)| k.clone())
                    .expect("non-empty");
                if let Some((b, _)) = c.chunks.remove(&oldest) {
                    c.bytes -= b.len();
                }
            }
        }
        Ok(got)
    }

    /// Fills `buf` with bytes of the archived object (`size` bytes long)
    /// from `offset`; fewer only at its end.
    pub fn read(&self, object: &str, size: u64, buf: &mut [u8], offset: u64) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            let at = offset + got as u64;
            if at >= size {
                break;
            }
            let chunk = self.chunk(object, size, at / CHUNK_BYTES)?;
            let within = (at % CHUNK_BYTES) as usize;
            let n = (chunk.len() - within).min(buf.len() - got);
            buf[got..got + n].copy_from_slice(&chunk[within..within + n]);
            got += n;
        }
        Ok(got)
    }

    /// Bytes cached now.
    pub fn cached_bytes(&self) -> usize {
        self.cache.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_archive_delete_removes_the_file_and_a_missing_name_is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let archive = LocalArchive::new(dir.path().join("archive")).unwrap();
        let source = dir.path().join("source");
        std::fs::write(&source, b"segment bytes").unwrap();
        archive.put("a.seg", &source).unwrap();
        archive.put("b.seg", &source).unwrap();
        let listed = archive.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|o| o.modified.is_some()), "{listed:?}");

        archive.delete("a.seg").unwrap();
        assert!(!dir.path().join("archive/a.seg").exists());
        assert_eq!(archive.size("a.seg").unwrap(), None);
        let names: Vec<String> = archive
            .list()
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(names, ["b.seg"]);
        // Again, and a name that never was: nothing to do, no error.
        archive.delete("a.seg").unwrap();
        archive.delete("never.seg").unwrap();
        assert_eq!(archive.size("b.seg").unwrap(), Some(13));
    }
}

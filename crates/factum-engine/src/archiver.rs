//! Archiving (issue 18, ADR 43): sealed segments copied to the archive,
//! verified, and, once old enough, evicted from local disk (the file
//! replaced by a stub naming the archived object).
//!
//! A segment is uploaded as `<file name>.<crc32c of the file>`: a segment
//! rewritten later (a scavenge, a compaction) has other bytes and so
//! another object. The upload is verified before anything local changes:
//! the archive's size, then the object read back whole and its CRC32C
//! compared. What was uploaded and verified is recorded in the journal
//! `archive-journal.json` (with the local file's identity, so a rewritten
//! file is uploaded again); a kill -9 before the journal is written only
//! costs a second upload. Eviction writes the stub under a temporary name,
//! fsyncs it, renames it over the segment's file while no read runs and
//! fsyncs the directory: a kill leaves the whole local file or the stub,
//! and the archive holds the file in both cases. One segment is archived
//! at a time under the rewrite lock, so no scavenge or compaction changes
//! it meanwhile.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::archive::{Archive, Stub};
use crate::format::{SegmentHeader, FEATURE_ARCHIVED};
use crate::log::{open_segment, sync_dir, Segment, STUB_TMP_SUFFIX};
use crate::Engine;

/// The journal of verified uploads, in the store's directory.
pub const JOURNAL: &str = "archive-journal.json";
/// Bytes read at a time when checksumming.
const READ_CHUNK: usize = 8 << 20;

/// How an archiving run treats local copies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchiveOptions {
    /// Remove the local copy of an archived segment sealed at least this
    /// long (judged as compaction judges it); `None` keeps local copies.
    pub evict_after: Option<Duration>,
}

/// What one archiving run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    /// Sealed, indexed segments looked at.
    pub segments: u32,
    /// Of them, uploaded (and verified) now.
    pub uploaded: u32,
    /// Of them, already in the archive (journal, or found there verified).
    pub already_archived: u32,
    /// Of them, whose local copy was removed now.
    pub evicted: u32,
    /// Of them, that lived only in the archive before this run.
    pub archive_only: u32,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
    /// Time taken.
    pub elapsed: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    object: String,
    size: u64,
    crc: u32,
    /// (device, inode, modification time in ns) of the local file uploaded.
    identity: (u64, u64, i128),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    segments: BTreeMap<String, Entry>,
}

impl Journal {
    fn load(dir: &Path) -> Result<Journal> {
        match std::fs::read(dir.join(JOURNAL)) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
                file: dir.join(JOURNAL),
                offset: 0,
                detail: format!("archive journal: {e} (delete it: the next run uploads again)"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
            Err(e) => Err(Error::io(
                format!("reading {}", dir.join(JOURNAL).display()),
                e,
            )),
        }
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(format!("{JOURNAL}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).expect("serializable");
        let mut f =
            File::create(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, dir.join(JOURNAL))
            .map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))?;
        sync_dir(dir)
    }
}

/// The objects the journal names: verified copies of segments still
/// local (for `verify --archive`'s listing).
pub(crate) fn journal_objects(dir: &Path) -> Result<std::collections::HashSet<String>> {
    Ok(Journal::load(dir)?
        .segments
        .into_values()
        .map(|e| e.object)
        .collect())
}

fn identity(file: &File, path: &Path) -> Result<(u64, u64, i128)> {
    let m = file
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
    Ok((
        m.dev(),
        m.ino(),
        m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    ))
}

fn crc_of(file: &File, path: &Path, len: u64) -> Result<u32> {
    let mut crc = 0u32;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = READ_CHUNK.min((len - at) as usize);
        file.read_exact_at(&mut buf[..n], at)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        at += n as u64;
    }
    Ok(crc)
}

/// Checks that `archive` holds `stub`'s object whole: its size, then its
/// bytes read back and their CRC32C.
pub fn check_object(archive: &dyn Archive, stub: &Stub) -> Result<()> {
    let where_ = || format!("archive {}: {}", archive.describe(), stub.object);
    match archive.size(&stub.object)? {
        None => {
            return Err(Error::Corrupt {
                file: where_().into(),
                offset: 0,
                detail: "the archived segment is missing".into(),
            })
        }
        Some(size) if size != stub.size => {
            return Err(Error::Corrupt {
                file: where_().into(),
                offset: 0,
                detail: format!("{size} bytes archived, expected {}", stub.size),
            })
        }
        Some(_) => {}
    }
    let mut crc = 0u32;
    let mut at = 0u64;
    while at < stub.size {
        let want = READ_CHUNK.min((stub.size - at) as usize);
        let b = archive.get_range(&stub.object, at, want)?;
        if b.len() != want {
            return Err(Error::Corrupt {
                file: where_().into(),
                offset: at,
                detail: "the archived segment ends early".into(),
            });
        }
        crc = crc32c::crc32c_append(crc, &b);
        at += want as u64;
    }
    if crc != stub.crc {
        return Err(Error::Corrupt {
            file: where_().into(),
            offset: 0,
            detail: "the archived segment's checksum does not match its stub".into(),
        });
    }
    Ok(())
}

impl Engine {
    /// Copies sealed segments to the configured archive and evicts local
    /// copies as `options` says (see the module doc). Blocking; reads and
    /// appends go on. `stop` ends it between segments.
    pub fn archive_segments(
        &self,
        options: ArchiveOptions,
        stop: &AtomicBool,
    ) -> Result<ArchiveReport> {
        let started = Instant::now();
        let tier = self.inner().tier.clone().ok_or_else(|| {
            Error::InvalidInput("no archive is configured (--archive)".to_string())
        })?;
        let archive = tier.archive().clone();
        let dir = self.dir();
        let reader = self.reader();
        let mut journal = Journal::load(dir)?;
        let mut report = ArchiveReport::default();
        let now = self.config().clock.now();
        for number in crate::rewrite::sealed_behind_checkpoint(self)? {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            // No rewrite of the segment while it is archived.
            let _one = reader.segments.rewriting.lock();
            let Some(seg) = reader.segments.get(number) else {
                continue;
            };
            report.segments += 1;
            if seg.is_archived() {
                report.archive_only += 1;
                continue;
            }
            let name = seg
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let len = seg.local_len()?;
            let id = identity(&seg.file, &seg.path)?;
            let entry = match journal.segments.get(&name) {
                Some(e) if e.identity == id && e.size == len => {
                    report.already_archived += 1;
                    e.clone()
                }
                _ => {
                    let crc = crc_of(&seg.file, &seg.path, len)?;
                    let object = format!("{name}.{crc:08x}");
                    let stub = Stub {
                        object: object.clone(),
                        size: len,
                        crc,
                    };
                    if archive.size(&object)? == Some(len)
                        && check_object(archive.as_ref(), &stub).is_ok()
                    {
                        report.already_archived += 1;
                    } else {
                        archive.put(&object, &seg.path)?;
                        check_object(archive.as_ref(), &stub).map_err(|e| Error::Unavailable {
                            reason: factum_core::UnavailableReason::Storage,
                            message: format!(
                                "the upload of {} did not verify: {e}",
                                seg.path.display()
                            ),
                        })?;
                        report.uploaded += 1;
                        report.bytes_uploaded += len;
                        tracing::info!(segment = number, object = %object, bytes = len, "segment archived");
                    }
                    let e = Entry {
                        object,
                        size: len,
                        crc,
                        identity: id,
                    };
                    journal.segments.insert(name.clone(), e.clone());
                    journal.save(dir)?;
                    e
                }
            };
            let Some(age) = options.evict_after else {
                continue;
            };
            if !crate::compact::sealed_for(reader, number, now, age)? {
                continue;
            }
            let stub = Stub {
                object: entry.object,
                size: entry.size,
                crc: entry.crc,
            };
            evict(self, &seg, &stub, &tier)?;
            journal.segments.remove(&name);
            journal.save(dir)?;
            report.evicted += 1;
            tracing::info!(segment = number, object = %stub.object, "local copy of an archived segment removed");
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

/// Replaces `seg`'s file by a stub naming `stub` (see the module doc).
fn evict(
    engine: &Engine,
    seg: &Arc<Segment>,
    stub: &Stub,
    tier: &Arc<crate::archive::Tier>,
) -> Result<()> {
    let dir = engine.dir();
    let header = SegmentHeader {
        features: seg.format.features | FEATURE_ARCHIVED,
        ..seg.format
    };
    let tmp = dir.join(format!("{:020}{STUB_TMP_SUFFIX}", seg.first_position));
    let key_area = if seg.format.encrypted() {
        let mut area =
            vec![0u8; (crate::encrypt::KEY_AREA as usize) - crate::format::SEGMENT_HEADER_LEN];
        seg.file
            .read_exact_at(&mut area, crate::format::SEGMENT_HEADER_LEN as u64)
            .map_err(|e| Error::io(format!("reading {}", seg.path.display()), e))?;
        Some(area)
    } else {
        None
    };
    let bytes = stub.encode(&header.encode(), key_area.as_deref());
    let written = File::create(&tmp)
        .and_then(|mut f| f.write_all(&bytes).and_then(|_| f.sync_all()))
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e));
    let opened = written.and_then(|_| open_segment(&tmp));
    let mut new_segment = match opened {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    new_segment.path = seg.path.clone();
    let _ = new_segment.tier.set(tier.clone());
    // The stub carries the same key slots: the same data key (ADR 45).
    if let Some(c) = seg.cipher.get() {
        let _ = new_segment.cipher.set(c.clone());
    }
    let segments = &engine.reader().segments;
    {
        let _no_reads = segments.exclusive();
        std::fs::rename(&tmp, &seg.path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(
                format!("renaming {} to {}", tmp.display(), seg.path.display()),
                e,
            )
        })?;
        segments.replace(Arc::new(new_segment));
    }
    sync_dir(dir)
}

/// Where the log's bytes are, and what the archive tier did (metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Bytes of segment files on local disk (stubs included).
    pub bytes_local: u64,
    /// Bytes of segments that live only in the archive.
    pub bytes_archived: u64,
    /// Segments that live only in the archive.
    pub segments_archived: u64,
    /// Chunk reads answered from the cache.
    pub cache_hits: u64,
    /// Chunk reads fetched from the archive.
    pub cache_misses: u64,
    /// Bytes held by the cache now.
    pub cache_bytes: u64,
    /// Fetches that failed.
    pub fetch_errors: u64,
    /// Bytes fetched.
    pub fetched_bytes: u64,
    /// Time spent fetching, µs in all.
    pub fetch_micros: u64,
}

impl Engine {
    /// Where the log's bytes are and what the archive tier did; the tier's
    /// counters are zero without an archive.
    pub fn archive_stats(&self) -> Result<ArchiveStats> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut s = ArchiveStats::default();
        for seg in self.reader().segments.all() {
            s.bytes_local += seg.local_len()?;
            if let Some(stub) = &seg.stub {
                s.bytes_archived += stub.size;
                s.segments_archived += 1;
            }
        }
        if let Some(tier) = &self.inner().tier {
            s.cache_hits = tier.stats.hits.load(Relaxed);
            s.cache_misses = tier.stats.misses.load(Relaxed);
            s.cache_bytes = tier.cached_bytes() as u64;
            s.fetch_errors = tier.stats.errors.load(Relaxed);
            s.fetched_bytes = tier.stats.fetched_bytes.load(Relaxed);
            s.fetch_micros = tier.stats.fetch_micros.load(Relaxed);
        }
        Ok(s)
    }
}

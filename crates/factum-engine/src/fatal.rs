//! The writer's fatal state and the `FSYNC_FAILED` marker (ADR 12).
//!
//! A failed `fsync`/`fdatasync` of a log file, from any thread, stops the
//! writer for good: the kernel may have dropped the data it could not write
//! and reports that only once, so no later fsync can be trusted to cover it.
//! One [`Fatal`] per store is shared by the writer and the preallocation
//! thread. It records the durable end of the log (the end of the last
//! acknowledged group: everything before it was fsynced without error), and
//! the writer acknowledges a group only after moving that end forward under
//! the same lock, so nothing is acknowledged once the store has stopped.
//!
//! Whoever trips it cuts the active segment back to the durable end in the
//! page cache (best effort: `ftruncate` drops the pages that failed to
//! write, which the kernel may keep as clean pages), writes the marker
//! `FSYNC_FAILED` recording that end (temporary name, fsync, rename,
//! directory fsync), and only then publishes the failure, so a supervisor
//! that restarts the process on it always finds the marker. The next open
//! applies the marker before it reads anything: the log is cut after the
//! durable end, the marker removed durably (docs/format.md).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use factum_core::{Error, Result};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::log::{sync_dir, Segment};

/// The marker's file name in the store's directory.
pub const MARKER_FILE: &str = "FSYNC_FAILED";
/// Where the marker is written before it is renamed into place.
pub const MARKER_TMP_FILE: &str = "FSYNC_FAILED.tmp";
/// The marker's first 8 bytes.
pub const MARKER_MAGIC: &[u8; 8] = b"FXFSYNCF";
/// The marker format version.
pub const MARKER_VERSION: u32 = 1;
/// Bytes before the reason text.
const MARKER_FIXED: usize = 28;

/// The fatal state shared by the writer and the threads working on its files.
pub(crate) struct Fatal {
    dir: PathBuf,
    tripped: AtomicBool,
    state: Mutex<State>,
    published: watch::Sender<Option<Arc<str>>>,
}

struct State {
    /// The active segment of the durable end.
    segment: Arc<Segment>,
    /// Offset in it: the end of the last acknowledged group.
    end: u64,
    reason: Option<Arc<str>>,
}

impl Fatal {
    /// A store whose log is durable up to `end` of `segment`.
    pub fn new(dir: PathBuf, segment: Arc<Segment>, end: u64) -> Fatal {
        Fatal {
            dir,
            tripped: AtomicBool::new(false),
            state: Mutex::new(State {
                segment,
                end,
                reason: None,
            }),
            published: watch::channel(None).0,
        }
    }

    /// Has the writer stopped for good? (A cheap check.)
    pub fn is_tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    /// Why the writer stopped, if it did.
    pub fn reason(&self) -> Option<Arc<str>> {
        if !self.is_tripped() {
            return None;
        }
        self.state.lock().reason.clone()
    }

    /// Called by the writer when `[.., end)` of the active segment is
    /// durable, before it acknowledges: moves the durable end, or answers
    /// why nothing may be acknowledged any more.
    pub fn durable(&self, end: u64) -> std::result::Result<(), Arc<str>> {
        let mut s = self.state.lock();
        if let Some(why) = &s.reason {
            return Err(why.clone());
        }
        debug_assert!(end >= s.end);
        s.end = end;
        Ok(())
    }

    /// Called by the writer when `segment` (just created, `end` bytes of
    /// header, fsynced) becomes the active one.
    pub fn new_segment(
        &self,
        segment: Arc<Segment>,
        end: u64,
    ) -> std::result::Result<(), Arc<str>> {
        let mut s = self.state.lock();
        if let Some(why) = &s.reason {
            return Err(why.clone());
        }
        s.segment = segment;
        s.end = end;
        Ok(())
    }

    /// Stops the writer for good because of `why` (naming the file and the
    /// OS error). The first failure wins; returns the reason in force.
    pub fn trip(&self, why: String) -> Arc<str> {
        let mut s = self.state.lock();
        if let Some(first) = &s.reason {
            tracing::error!("{why} (after the store had already stopped)");
            return first.clone();
        }
        tracing::error!("{why}");
        let mut reason = why;
        // Drop the pages after the durable end from the page cache now: a
        // process restarted before the marker is read sees the cut already.
        let cut = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&s.segment.path)
            .and_then(|f| {
                crate::encrypt::SegmentFile::new(f, s.segment.cipher.get().cloned()).set_len(s.end)
            });
        if let Err(e) = cut {
            tracing::error!(file = %s.segment.path.display(), offset = s.end, error = %e,
                "could not cut the log back to its durable end; the next open does it (FSYNC_FAILED)");
        }
        let marker = Marker {
            segment: s.segment.number,
            offset: s.end,
            reason: reason.clone(),
        };
        match write_marker(&self.dir, &marker) {
            Ok(()) => tracing::error!(
                marker = %self.dir.join(MARKER_FILE).display(),
                segment = %s.segment.path.display(),
                offset = s.end,
                "recorded the durable end of the log: the next open cuts the log after it"
            ),
            Err(e) => {
                tracing::error!(error = %e, "could not write the FSYNC_FAILED marker");
                reason.push_str(&format!(
                    "; the marker recording the durable end could not be written either ({e})"
                ));
            }
        }
        let reason: Arc<str> = reason.into();
        s.reason = Some(reason.clone());
        self.tripped.store(true, Ordering::Release);
        drop(s);
        self.published.send_replace(Some(reason.clone()));
        reason
    }

    /// A receiver that sees the reason once the writer stopped for good
    /// (after the marker is written).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<str>>> {
        self.published.subscribe()
    }
}

/// The contents of an `FSYNC_FAILED` marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The segment number of the durable end.
    pub segment: u32,
    /// The offset in that segment: everything before it was acknowledged
    /// and fsynced; nothing after it was acknowledged.
    pub offset: u64,
    /// Why the writer stopped (for people).
    pub reason: String,
}

impl Marker {
    /// The bytes (docs/format.md, "The FSYNC_FAILED marker").
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MARKER_FIXED + self.reason.len() + 4);
        b.extend_from_slice(MARKER_MAGIC);
        b.extend_from_slice(&MARKER_VERSION.to_le_bytes());
        b.extend_from_slice(&self.segment.to_le_bytes());
        b.extend_from_slice(&self.offset.to_le_bytes());
        b.extend_from_slice(&(self.reason.len() as u32).to_le_bytes());
        b.extend_from_slice(self.reason.as_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Checks and decodes the bytes.
    pub fn decode(b: &[u8]) -> std::result::Result<Marker, String> {
        if b.len() < MARKER_FIXED + 4 {
            return Err(format!("{} bytes, too short for a marker", b.len()));
        }
        if &b[..8] != MARKER_MAGIC {
            return Err("bad magic".into());
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let version = u32_at(8);
        if version != MARKER_VERSION {
            return Err(format!(
                "marker version {version}, this build reads {MARKER_VERSION}"
            ));
        }
        let len = u32_at(24) as usize;
        if b.len() != MARKER_FIXED + len + 4 {
            return Err(format!(
                "{} bytes, the marker says {}",
                b.len(),
                MARKER_FIXED + len + 4
            ));
        }
        if crc32c::crc32c(&b[..MARKER_FIXED + len]) != u32_at(MARKER_FIXED + len) {
            return Err("checksum mismatch".into());
        }
        Ok(Marker {
            segment: u32_at(12),
            offset: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            reason: String::from_utf8_lossy(&b[MARKER_FIXED..MARKER_FIXED + len]).into_owned(),
        })
    }
}

/// Writes the marker durably: temporary file, fsync, rename, directory fsync.
fn write_marker(dir: &Path, marker: &Marker) -> Result<()> {
    use std::io::Write;
    let tmp = dir.join(MARKER_TMP_FILE);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    f.write_all(&marker.encode())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    drop(f);
    let path = dir.join(MARKER_FILE);
    std::fs::rename(&tmp, &path).map_err(|e| {
        Error::io(
            format!("renaming {} to {}", tmp.display(), path.display()),
            e,
        )
    })?;
    sync_dir(dir)
}

/// Reads the store's marker, if there is one. A complete marker still under
/// its temporary name counts (the rename was all that was left); an
/// incomplete one there is `None` (the process died writing it). A damaged
/// marker under its own name is `Corrupt`: the durable end is unknown.
pub fn read_marker(dir: &Path) -> Result<Option<(PathBuf, Marker)>> {
    for (name, trusted) in [(MARKER_FILE, true), (MARKER_TMP_FILE, false)] {
        let path = dir.join(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        match Marker::decode(&bytes) {
            Ok(m) => return Ok(Some((path, m))),
            Err(detail) if trusted => {
                return Err(Error::Corrupt {
                    file: path,
                    offset: 0,
                    detail: format!(
                        "{detail}: the durable end of the log after an fsync failure is unknown"
                    ),
                })
            }
            Err(detail) => {
                tracing::warn!(file = %path.display(), %detail,
                    "ignoring an incomplete marker (its writer died before finishing it)");
            }
        }
    }
    Ok(None)
}

/// What applying a marker cut.
#[derive(Clone, Debug)]
pub struct MarkerCut {
    /// The segment the log now ends in, and where.
    pub file: PathBuf,
    /// The durable end in it.
    pub offset: u64,
    /// Bytes cut from it (never acknowledged).
    pub bytes: u64,
    /// Later segments removed (they held nothing acknowledged).
    pub removed: Vec<PathBuf>,
    /// Why the writer had stopped, as the marker recorded it.
    pub reason: String,
}

/// Applies a marker left by an fsync failure, before the log is read: cuts
/// the log after the durable end (the bytes there were never acknowledged,
/// and the page cache may still hold them though they never reached the
/// disk), then removes the marker durably. Refuses to open, naming the
/// file, when the log is shorter than the durable end.
pub fn apply_marker(
    dir: &Path,
    key: Option<&crate::encrypt::MasterKey>,
) -> Result<Option<MarkerCut>> {
    let Some((path, marker)) = read_marker(dir)? else {
        // An incomplete temporary marker is all there may be.
        remove_durably(dir, &dir.join(MARKER_TMP_FILE))?;
        return Ok(None);
    };
    let segments = crate::log::open_segments(dir)?;
    segments.unlock(key)?;
    let seg = segments.get(marker.segment).ok_or_else(|| Error::Corrupt {
        file: path.clone(),
        offset: 16,
        detail: format!(
            "the marker's durable end is in segment {}, which is missing",
            marker.segment
        ),
    })?;
    let len = seg.len()?;
    if len < marker.offset {
        return Err(Error::Corrupt {
            file: seg.path.clone(),
            offset: len,
            detail: format!(
                "the segment is {len} bytes long, but {} recorded its durable end at {}: acknowledged events are missing",
                path.display(),
                marker.offset
            ),
        });
    }
    if len > marker.offset {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg.path)
            .map_err(|e| Error::io(format!("opening {}", seg.path.display()), e))?;
        let mut f = crate::encrypt::SegmentFile::new(f, seg.cipher.get().cloned());
        f.set_len(marker.offset)
            .and_then(|_| f.sync_all())
            .map_err(|e| {
                Error::io(
                    format!("cutting {} to its durable end", seg.path.display()),
                    e,
                )
            })?;
    }
    let mut removed = Vec::new();
    for later in segments
        .all()
        .into_iter()
        .filter(|s| s.number > marker.segment)
    {
        std::fs::remove_file(&later.path)
            .map_err(|e| Error::io(format!("removing {}", later.path.display()), e))?;
        removed.push(later.path.clone());
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    tracing::warn!(
        file = %seg.path.display(),
        offset = marker.offset,
        bytes = len - marker.offset,
        removed = removed.len(),
        reason = %marker.reason,
        "the store had stopped after a failed fsync: cut the log after its durable end (nothing after it was acknowledged)"
    );
    // Durably gone before anything new is acknowledged past that end.
    remove_durably(dir, &path)?;
    remove_durably(dir, &dir.join(MARKER_TMP_FILE))?;
    Ok(Some(MarkerCut {
        file: seg.path.clone(),
        offset: marker.offset,
        bytes: len - marker.offset,
        removed,
        reason: marker.reason,
    }))
}

fn remove_durably(dir: &Path, path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// Is this I/O error one that goes away by itself (a full disk, too many
/// open files), so that the operation may be retried? Never true of a
/// failed fsync: callers do not ask for those.
pub(crate) fn is_transient(e: &Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const EAGAIN: i32 = 11;
    const EINTR: i32 = 4;
    match e {
        Error::Io { source, .. } => matches!(
            source.raw_os_error(),
            Some(ENOSPC | EDQUOT | EMFILE | ENFILE | EAGAIN | EINTR)
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_round_trips_and_damage_is_detected() {
        let m = Marker {
            segment: 3,
            offset: 123_456,
            reason: "fsync of x.seg failed (os error 5)".into(),
        };
        let b = m.encode();
        assert_eq!(Marker::decode(&b).unwrap(), m);
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x40;
            assert!(Marker::decode(&d).is_err(), "flip at {i} not detected");
        }
        assert!(Marker::decode(&b[..b.len() - 1]).is_err());
    }
}

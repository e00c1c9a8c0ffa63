//! Crash-safe rewrite of one sealed segment (ADR 33): the one mechanism a
//! scavenge (issue 17) and compression (issue 18, ADR 43: the new version
//! written in zstd blocks, `compress.rs`) use, and re-encryption (19) is
//! to use. One rewrite runs at a time (`Segments::rewriting`). It takes a sealed segment and a decision per record (keep,
//! remove, replace) and writes the segment's new version beside the old
//! one as `NNNNNNNNNNNNNNNNNNNN.seg.<generation>.rewrite`, with the feature
//! flag `SCAVENGED` (frames dense inside, gaps between them; see
//! docs/format.md). The new file is fsynced and the directory fsynced; then
//! one durable redb transaction replaces the segment's index entries (runs
//! and frames) and records the rewrite (first position, generation) as the
//! index's *rewrite marker*; then, while no read runs, the new file is
//! renamed over the old one, the directory fsynced, the segment list and
//! the block cache updated.
//!
//! The redb commit is the switch. A kill before it leaves the old segment
//! and old index; the open removes the `.rewrite` file. A kill after it
//! leaves the new index and, maybe, the `.rewrite` file not yet renamed;
//! the open finds the marker naming it and renames it ([`finish_interrupted`]).
//! Either way the store holds the old state or the new, never a mix.
//! Positions never change, so only index entries pointing into the segment
//! change; a segment is rewritten only once the index checkpoint has passed
//! it (recovery never replays it).

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_core::rules::link_parts;
use factum_core::{Error, Result, StreamName};

use crate::compress::BlockWriter;
use crate::format::{
    decode_frame_events, encode_frame, SegmentHeader, StoredEvent, FEATURE_COMPRESSED,
    FEATURE_ENCRYPTED, FEATURE_LINK_REVISIONS, FEATURE_SCAVENGED, FLAG_TOMBSTONE, FORMAT_VERSION,
    SEGMENT_HEADER_LEN,
};
use crate::index::{Index, Run, SegmentRewrite};
use crate::log::{open_segment, segment_file_name, sync_dir, FrameReader, Loc, Scanned};
use crate::overlay::RunBuilder;
use crate::reader::Reader;

/// Suffix of a segment's new version before it is swapped in.
pub const REWRITE_SUFFIX: &str = ".rewrite";

/// The file name of generation `generation` of the segment starting at `first`.
pub fn rewrite_file_name(first_position: u64, generation: u64) -> String {
    format!("{first_position:020}.seg.{generation}{REWRITE_SUFFIX}")
}

/// (first position, generation) of a rewrite file name.
fn parse_rewrite_file_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_suffix(REWRITE_SUFFIX)?;
    let (first, generation) = rest.split_once(".seg.")?;
    if first.len() != 20 {
        return None;
    }
    Some((first.parse().ok()?, generation.parse().ok()?))
}

/// What to do with one record of a segment being rewritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordAction {
    /// Copy it as it is.
    Keep,
    /// Leave it out (its index entries go).
    Remove,
    /// Write this record in its place: same position, stream and revision
    /// (a stub, a re-encrypted payload). Its index entries are rebuilt.
    Replace(StoredEvent),
}

/// What one rewrite did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewriteReport {
    /// The segment's number.
    pub segment: u32,
    /// Its file's length before.
    pub old_bytes: u64,
    /// … and after (equal when nothing changed and nothing was swapped).
    pub new_bytes: u64,
    /// Records kept as they were.
    pub kept: u64,
    /// Records left out.
    pub removed: u64,
    /// Records replaced.
    pub replaced: u64,
    /// Was a new version swapped in? (Not when every record was kept.)
    pub swapped: bool,
}

/// How fast a rewrite may read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Throttle {
    /// As fast as the disk goes.
    #[default]
    None,
    /// At most this many bytes (read plus written) per second.
    BytesPerSecond(u64),
    /// Busy this percentage of the time (1–100), resting the rest: what
    /// KurrentDB's `throttlePercent` means.
    Percent(u8),
}

/// Paces a rewrite's I/O by its [`Throttle`].
pub(crate) struct Pace {
    throttle: Throttle,
    started: Instant,
    bytes: u64,
    /// Work time since the last rest (for `Percent`).
    busy_since: Instant,
}

impl Pace {
    pub(crate) fn new(throttle: Throttle) -> Self {
        let now = Instant::now();
        Pace {
            throttle,
            started: now,
            bytes: 0,
            busy_since: now,
        }
    }

    /// Accounts `bytes` of I/O and sleeps as long as the throttle asks.
    pub(crate) fn account(&mut self, bytes: u64, stop: &AtomicBool) {
        self.bytes += bytes;
        let rest = match self.throttle {
            Throttle::None => return,
            Throttle::BytesPerSecond(0) | Throttle::Percent(0) => return,
            Throttle::BytesPerSecond(rate) => {
                let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
                due.saturating_sub(self.started.elapsed())
            }
            Throttle::Percent(p) if p >= 100 => return,
            Throttle::Percent(p) => {
                let busy = self.busy_since.elapsed();
                if busy < Duration::from_millis(10) {
                    return;
                }
                busy.mul_f64((100 - p) as f64 / p as f64)
            }
        };
        // Rest in short naps so a stop is honoured promptly.
        let until = Instant::now() + rest;
        while !stop.load(Ordering::Relaxed) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        self.busy_since = Instant::now();
    }
}

/// A record of the new file, with what the index needs of it.
struct Kept {
    position: u64,
    revision: u64,
    flags: u8,
    stream: StreamName,
    event_type: String,
    loc: Loc,
    len: u32,
}

/// Where the new version's bytes go.
enum Sink {
    /// As they are (through the page encryption of an encrypted segment,
    /// ADR 45), at the logical offset held.
    Plain(crate::encrypt::SegmentFile, u64),
    /// Compressed in blocks (ADR 43).
    Compressed(BlockWriter),
}

/// The new file being written.
struct Output {
    path: PathBuf,
    sink: Sink,
    buf: Vec<u8>,
    /// Logical bytes written or buffered (the offset of the next frame).
    len: u64,
}

impl Output {
    fn write_out(&mut self) -> Result<()> {
        match &mut self.sink {
            Sink::Plain(file, at) => {
                // The header is in the file already (with the key slots of
                // an encrypted one); offsets are logical.
                let skip = (SEGMENT_HEADER_LEN as u64)
                    .saturating_sub(*at)
                    .min(self.buf.len() as u64);
                file.write_all_at(&self.buf[skip as usize..], *at + skip)
                    .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))?;
                *at += self.buf.len() as u64;
            }
            Sink::Compressed(w) => w.write(&self.buf)?,
        }
        self.buf.clear();
        Ok(())
    }

    /// Writes what is buffered (and a compressed file's block index and
    /// footer), fsyncs the file; returns its length on disk.
    fn finish(mut self) -> Result<u64> {
        self.write_out()?;
        let (file, stored) = match self.sink {
            Sink::Plain(mut file, at) => {
                let stored = if file.encrypted() {
                    // Whole groups, as every encrypted segment (ADR 45).
                    file.set_len(at)
                        .map_err(|e| Error::io(format!("sizing {}", self.path.display()), e))?;
                    crate::encrypt::physical_len(at)
                } else {
                    at
                };
                (file.into_file(), stored)
            }
            Sink::Compressed(w) => w.finish()?,
        };
        file.sync_all()
            .map_err(|e| Error::io(format!("fsync of {}", self.path.display()), e))?;
        Ok(stored)
    }
}

/// Which segment a rewrite replaces, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RewriteSpec {
    /// The sealed segment's number.
    pub segment: u32,
    /// Feature flags the new version adds to the old one's (issues 18, 19):
    /// `FEATURE_COMPRESSED` writes it compressed (a compressed segment
    /// stays compressed when rewritten).
    pub add_features: u32,
    /// A new version that frees fewer bytes on disk is not swapped in
    /// (unless it changes how the segment is stored).
    pub min_freed_bytes: u64,
}

/// The sealed segments a rewrite may take: every segment but the active
/// one whose records the index checkpoint has passed (recovery never
/// replays them). Flushes the index first, so every sealed segment is in it
/// (the checkpoint is then in the active segment, or at the end of the last
/// sealed one, which waits for the next flush).
pub(crate) fn sealed_behind_checkpoint(engine: &crate::Engine) -> Result<Vec<u32>> {
    engine.flush_index()?;
    let reader = engine.reader();
    let behind = reader.index.checkpoint().end.segment();
    let all = reader.segments.all();
    let active = all.last().map_or(0, |s| s.number);
    Ok(all
        .iter()
        .map(|s| s.number)
        .filter(|&n| n < active && n < behind)
        .collect())
}

/// Rewrites the sealed segment `spec` names, of the store in `dir`, by
/// `decide` (see the module doc).
/// `stop` abandons the rewrite between frames (the new file is removed;
/// `Ok(None)`). Blocking; reads and appends go on meanwhile.
pub(crate) fn rewrite_segment(
    dir: &Path,
    reader: &Reader,
    spec: RewriteSpec,
    key: Option<&crate::encrypt::MasterKey>,
    decide: &mut dyn FnMut(&StoredEvent) -> Result<RecordAction>,
    pace: &mut Pace,
    stop: &AtomicBool,
) -> Result<Option<RewriteReport>> {
    let RewriteSpec {
        segment: number,
        add_features,
        min_freed_bytes,
    } = spec;
    let segments = &reader.segments;
    let index = &reader.index;
    // One rewrite at a time: a scavenge and a compaction take turns per
    // segment.
    let _one = segments.rewriting.lock();
    let seg = segments
        .get(number)
        .ok_or_else(|| Error::InvalidInput(format!("segment {number} does not exist")))?;
    if seg.is_archived() {
        return Err(Error::InvalidInput(format!(
            "segment {number} lives only in the archive; a rewrite needs its local copy"
        )));
    }
    let Some(next) = segments.get(number + 1) else {
        return Err(Error::InvalidInput(format!(
            "segment {number} is the active segment; only sealed segments are rewritten"
        )));
    };
    let (lo, hi) = (seg.first_position, next.first_position);
    let old_bytes = seg.stored_len()?;
    let generation = index.next_rewrite_generation()?;
    let path = dir.join(rewrite_file_name(lo, generation));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    // In a store opened with a master key every new version is encrypted
    // (ADR 45), under a fresh data key: a rewrite is how a segment written
    // in the clear gets encrypted.
    let encrypted = if key.is_some() { FEATURE_ENCRYPTED } else { 0 };
    let header = SegmentHeader {
        version: FORMAT_VERSION,
        features: (seg.format.features & !FEATURE_ENCRYPTED)
            | FEATURE_SCAVENGED
            | FEATURE_LINK_REVISIONS
            | add_features
            | encrypted,
        number,
        first_position: lo,
    };
    // A change of storage (compressing, encrypting) is a change even when
    // every record stays.
    let storage_changes =
        (header.features ^ seg.format.features) & (FEATURE_COMPRESSED | FEATURE_ENCRYPTED) != 0;
    let mut head = header.encode().to_vec();
    let cipher = match key {
        Some(key) => {
            let (c, area) = match crate::encrypt::new_key_area(&header, key) {
                Ok(x) => x,
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    return Err(e);
                }
            };
            head.extend_from_slice(&area);
            Some(c)
        }
        None => None,
    };
    let sink = if header.compressed() {
        match BlockWriter::new(file, path.clone(), &head, cipher.clone()) {
            Ok(w) => Sink::Compressed(w),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        }
    } else {
        if let Err(e) = file.write_all_at(&head, 0) {
            let _ = std::fs::remove_file(&path);
            return Err(Error::io(format!("writing {}", path.display()), e));
        }
        Sink::Plain(crate::encrypt::SegmentFile::new(file, cipher.clone()), 0)
    };
    let mut out = Output {
        path,
        sink,
        buf: Vec::with_capacity(1 << 20),
        len: SEGMENT_HEADER_LEN as u64,
    };
    // The logical bytes start with the header too (offsets are logical).
    out.buf.extend_from_slice(&header.encode());
    let mut entries = SegmentEntries::new(index, &seg, lo, hi);
    let result = write_new_version(&seg, &mut out, &mut entries, decide, pace, stop);
    let unchanged = |w: &Written| RewriteReport {
        segment: number,
        old_bytes,
        new_bytes: old_bytes,
        kept: w.report.kept + w.report.removed + w.report.replaced,
        ..RewriteReport::default()
    };
    let written = match result {
        Ok(Some(w)) if w.changed || storage_changes => w,
        other => {
            // Nothing to change, stopped, or failed: the old file stays.
            let _ = std::fs::remove_file(&out.path);
            return other.map(|w| w.map(|w| unchanged(&w)));
        }
    };
    let new_path = out.path.clone();
    let new_logical = out.len;
    let new_bytes = match out.finish() {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&new_path);
            return Err(e);
        }
    };
    // Encrypted pages are stored two slots to a page: what a rewrite frees
    // shows in whole pages on disk, so it is judged by logical bytes.
    let freed = if cipher.is_some() && !header.compressed() {
        seg.len()?.saturating_sub(new_logical)
    } else {
        old_bytes.saturating_sub(new_bytes)
    };
    if !storage_changes && freed < min_freed_bytes {
        let _ = std::fs::remove_file(&new_path);
        return Ok(Some(unchanged(&written)));
    }
    if let Err(e) = sync_dir(dir) {
        let _ = std::fs::remove_file(&new_path);
        return Err(e);
    }
    let change = match index_change(&mut entries, number, lo, generation, &written) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&new_path);
            return Err(e);
        }
    };
    // Opened before the switch: the descriptor follows the file through
    // its rename.
    let mut new_segment = match open_segment(&new_path) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&new_path);
            return Err(e);
        }
    };
    new_segment.path = seg.path.clone();
    if let Some(c) = &cipher {
        let _ = new_segment.cipher.set(c.clone());
    }
    let swap = || {
        let renamed = std::fs::rename(&new_path, &seg.path);
        // The index describes the new version now: reads get it whether or
        // not the rename worked (the descriptor is the new file's under
        // either name; the next open finishes a failed rename, ADR 40).
        segments.replace(Arc::new(new_segment));
        reader.cache.forget_segment(number);
        renamed.map_err(|e| {
            Error::io(
                format!(
                    "renaming {} to {} (the index already describes the new file, which is served; reopen the store to finish the swap)",
                    new_path.display(),
                    seg.path.display()
                ),
                e,
            )
        })?;
        sync_dir(dir)
    };
    if let Err(e) = index.commit_rewrite(&change, segments, swap) {
        if new_path.exists() && index.rewrite_marker().ok().flatten() != Some((lo, generation)) {
            // Not committed: the old state stands.
            let _ = std::fs::remove_file(&new_path);
        }
        return Err(e);
    }
    let mut report = written.report;
    report.segment = number;
    report.old_bytes = old_bytes;
    report.new_bytes = new_bytes;
    report.swapped = true;
    Ok(Some(report))
}

/// The new version's records and frames, before the index change.
struct Written {
    changed: bool,
    report: RewriteReport,
    /// (first position, offset, records) per new frame.
    frames: Vec<(u64, u64, Vec<Kept>)>,
    /// First positions of the old frames.
    old_frames: Vec<u64>,
    /// Index streams the old records were in (own, `$ce-`, `$et-`).
    touched: HashSet<String>,
}

fn write_new_version(
    seg: &Arc<crate::log::Segment>,
    out: &mut Output,
    entries: &mut SegmentEntries,
    decide: &mut dyn FnMut(&StoredEvent) -> Result<RecordAction>,
    pace: &mut Pace,
    stop: &AtomicBool,
) -> Result<Option<Written>> {
    let mut w = Written {
        changed: false,
        report: RewriteReport::default(),
        frames: Vec::new(),
        old_frames: Vec::new(),
        touched: HashSet::new(),
    };
    let len = seg.len()?;
    let mut frames = FrameReader::new(seg.clone(), SEGMENT_HEADER_LEN as u64, len);
    // Reused for link stream names.
    let mut name = String::new();
    let mut links = LinkRecords::default();
    let corrupt = |offset: u64, detail: String| Error::Corrupt {
        file: seg.path.clone(),
        offset,
        detail,
    };
    let mut created = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let (offset, header, events) = match frames.next_frame()? {
            Scanned::Frame {
                offset,
                header,
                bytes,
            } => {
                let events = decode_frame_events(bytes, &header).map_err(|d| corrupt(offset, d))?;
                (offset, header, events)
            }
            Scanned::End => break,
            Scanned::Incomplete { offset } => {
                return Err(corrupt(
                    offset,
                    "incomplete frame in a sealed segment".into(),
                ))
            }
            Scanned::Invalid { offset, detail } => return Err(corrupt(offset, detail)),
        };
        created = Some(header.created);
        w.old_frames.push(header.first_position);
        // The records written, in position order.
        let mut records: Vec<StoredEvent> = Vec::new();
        for (e, _) in events {
            let indexed = e.flags & FLAG_TOMBSTONE == 0 && !e.is_stub();
            if indexed {
                if !w.touched.contains(e.stream.as_str()) {
                    w.touched.insert(e.stream.as_str().to_string());
                }
                for (prefix, part) in link_parts(&e.stream, &e.event_type) {
                    if let Some(part) = part {
                        name.clear();
                        name.push_str(prefix);
                        name.push_str(part);
                        if !w.touched.contains(name.as_str()) {
                            w.touched.insert(name.clone());
                        }
                    }
                }
            }
            let action = decide(&e)?;
            let record = match action {
                RecordAction::Keep => {
                    w.report.kept += 1;
                    Some(e.clone())
                }
                RecordAction::Remove => {
                    w.report.removed += 1;
                    w.changed = true;
                    None
                }
                RecordAction::Replace(r) => {
                    if r.position != e.position || r.stream != e.stream || r.revision != e.revision
                    {
                        return Err(Error::InvalidInput(format!(
                            "a rewrite may not move the event at position {} to another place",
                            e.position
                        )));
                    }
                    w.report.replaced += 1;
                    w.changed = true;
                    Some(r)
                }
            };
            // Link revisions the record took, or a link record listed, that
            // its new version no longer carries (ADR 47).
            let links_lost = indexed
                && record
                    .as_ref()
                    .is_none_or(|r| r.is_stub() || r.flags & FLAG_TOMBSTONE != 0);
            let list_lost = e.has_link_revisions() && record.as_ref() != Some(&e);
            if links_lost || list_lost {
                if links_lost {
                    for (prefix, part) in link_parts(&e.stream, &e.event_type) {
                        let Some(part) = part else { continue };
                        name.clear();
                        name.push_str(prefix);
                        name.push_str(part);
                        let revision = entries.link_revision(&name, e.position)?;
                        links.lost(&name, revision + 1);
                    }
                }
                for (stream, next) in e.link_revisions().map_err(|d| corrupt(offset, d))? {
                    links.lost(stream, next);
                }
                links.hold(&e, record, &mut records);
            } else if let Some(record) = record {
                links.release(&mut records);
                records.push(record);
            }
        }
        write_records(seg.number, records, header.created, out, &mut w);
        if out.buf.len() >= 1 << 20 {
            out.write_out()?;
        }
        pace.account(header.len as u64 * 2, stop);
    }
    // The segment's end: what removed records took that no record here
    // lists yet is for the links of later segments.
    let mut records = Vec::new();
    links.release(&mut records);
    if let Some(created) = created {
        write_records(seg.number, records, created, out, &mut w);
    }
    Ok(Some(w))
}

/// Writes `records` (in position order) into frames of dense positions.
fn write_records(
    segment: u32,
    records: Vec<StoredEvent>,
    created: factum_core::Timestamp,
    out: &mut Output,
    w: &mut Written,
) {
    let mut runs: Vec<Vec<StoredEvent>> = Vec::new();
    for record in records {
        match runs.last_mut() {
            Some(run) if run.last().expect("non-empty").position + 1 == record.position => {
                run.push(record)
            }
            _ => runs.push(vec![record]),
        }
    }
    for run in runs {
        let frame_offset = out.len;
        let start = out.buf.len();
        let offsets = encode_frame(&run, created, 0, &mut out.buf);
        out.len += (out.buf.len() - start) as u64;
        let kept = run
            .into_iter()
            .zip(offsets)
            .map(|(e, o)| Kept {
                position: e.position,
                revision: e.revision,
                flags: e.flags,
                len: e.encoded_len() as u32,
                stream: e.stream,
                event_type: e.event_type,
                loc: Loc::new(segment, frame_offset + o as u64),
            })
            .collect::<Vec<_>>();
        w.frames.push((kept[0].position, frame_offset, kept));
    }
}

/// The link records of a rewrite (ADR 47). Removed records that took
/// `$ce-`/`$et-` revisions leave them behind: the revision after each
/// such link stream's last removed one. They are written, as a link
/// record in place of the last removed record, before the next record
/// the new version keeps (or at the segment's end), so a rebuild from the
/// log, which numbers links by counting, resumes each link stream where
/// the removed records left it.
#[derive(Default)]
struct LinkRecords {
    /// Link stream → revision its next link takes at the earliest.
    next: std::collections::BTreeMap<String, u64>,
    /// The last record that lost links: its stub, and whether its own new
    /// version is that stub (a stub it was replaced by) or nothing.
    held: Option<(StoredEvent, bool)>,
}

impl LinkRecords {
    fn lost(&mut self, stream: &str, next: u64) {
        match self.next.get_mut(stream) {
            Some(n) => *n = (*n).max(next),
            None => {
                self.next.insert(stream.to_string(), next);
            }
        }
    }

    /// `e`, whose new version is `record`, lost links: the record held
    /// before it goes out as it was decided (a later record carries the
    /// list), and `e` is held.
    fn hold(&mut self, e: &StoredEvent, record: Option<StoredEvent>, out: &mut Vec<StoredEvent>) {
        if let Some((stub, true)) = self.held.take() {
            out.push(stub);
        }
        self.held = Some(match record {
            Some(stub) if stub.is_stub() && !stub.has_link_revisions() => (stub, true),
            Some(other) => {
                // A tombstone in its place: written as it is; the list goes
                // with a stub of the event.
                out.push(other);
                (e.stub(), false)
            }
            None => (e.stub(), false),
        });
    }

    /// A record is kept next (or the segment ends): the held record goes
    /// out carrying the list, if there is one.
    fn release(&mut self, out: &mut Vec<StoredEvent>) {
        let Some((stub, own)) = self.held.take() else {
            return;
        };
        if self.next.is_empty() {
            if own {
                out.push(stub);
            }
            return;
        }
        out.push(stub.with_link_revisions(self.next.iter().map(|(s, n)| (s.as_str(), *n))));
        self.next.clear();
    }
}

/// The index entries of the streams a segment's records are in, whose
/// first position is in the segment: loaded once per stream, for the link
/// revisions of removed records and for the index change.
struct SegmentEntries<'a> {
    index: &'a Index,
    path: PathBuf,
    lo: u64,
    hi: u64,
    streams: HashMap<String, (u64, Vec<(u64, Run)>)>,
}

impl<'a> SegmentEntries<'a> {
    fn new(index: &'a Index, seg: &crate::log::Segment, lo: u64, hi: u64) -> Self {
        SegmentEntries {
            index,
            path: seg.path.clone(),
            lo,
            hi,
            streams: HashMap::new(),
        }
    }

    fn fault(&self, detail: String) -> Error {
        Error::Corrupt {
            file: self.index.path().to_path_buf(),
            offset: 0,
            detail: format!(
                "{detail} (rewriting {}; `factum reindex` rebuilds the index)",
                self.path.display()
            ),
        }
    }

    /// The stream's id and its runs (first revision, run) in the segment,
    /// oldest first.
    fn stream(&mut self, name: &str) -> Result<&(u64, Vec<(u64, Run)>)> {
        if !self.streams.contains_key(name) {
            let Some(rec) = self.index.stream(name)? else {
                return Err(self.fault(format!("the index has no stream {name:?}")));
            };
            let runs = match rec.last_revision {
                Some(last) => self
                    .index
                    .runs_in_positions(rec.id, last, self.lo, self.hi)?,
                None => Vec::new(),
            };
            self.streams.insert(name.to_string(), (rec.id, runs));
        }
        Ok(&self.streams[name])
    }

    /// The revision link stream `name` gave the record at `position`.
    fn link_revision(&mut self, name: &str, position: u64) -> Result<u64> {
        let (_, runs) = self.stream(name)?;
        let k = runs.partition_point(|(_, r)| r.position + r.count as u64 <= position);
        match runs.get(k) {
            Some((first, r)) if r.position <= position => Ok(first + (position - r.position)),
            _ => Err(self.fault(format!(
                "no entry of {name} for the event at position {position}"
            ))),
        }
    }
}

/// The index change that goes with the new version: the old runs of every
/// index stream the segment's records were in, found by position, go; the
/// new runs are built from the new frames, a `$ce-`/`$et-` record keeping
/// the link revision it had.
fn index_change(
    entries: &mut SegmentEntries,
    number: u32,
    lo: u64,
    generation: u64,
    w: &Written,
) -> Result<SegmentRewrite> {
    let mut change = SegmentRewrite {
        segment: number,
        first_position: lo,
        generation,
        old_batches: w.old_frames.clone(),
        ..SegmentRewrite::default()
    };
    let mut ids: HashMap<&str, u64> = HashMap::new();
    for name in &w.touched {
        let (id, runs) = entries.stream(name)?;
        ids.insert(name.as_str(), *id);
        change
            .old_runs
            .extend(runs.iter().map(|(first, _)| (*id, *first)));
    }
    let mut builder = RunBuilder::default();
    let mut name = String::new();
    for (first_position, offset, records) in &w.frames {
        change
            .new_batches
            .push((*first_position, Loc::new(number, *offset).0));
        for k in records {
            builder.close_runs(k.position);
            if k.flags & FLAG_TOMBSTONE != 0 || k.flags & crate::format::FLAG_STUB != 0 {
                continue;
            }
            let own = ids
                .get(k.stream.as_str())
                .ok_or_else(|| entries.fault(format!("no stream {:?}", k.stream.as_str())))?;
            builder.add_entry(*own, k.revision, k.position, k.loc, k.len);
            for (prefix, part) in link_parts(&k.stream, &k.event_type) {
                let Some(part) = part else { continue };
                name.clear();
                name.push_str(prefix);
                name.push_str(part);
                let id = ids
                    .get(name.as_str())
                    .ok_or_else(|| entries.fault(format!("no stream {name:?}")))?;
                let rev = entries.link_revision(&name, k.position)?;
                builder.add_entry(*id, rev, k.position, k.loc, k.len);
            }
        }
        builder.close_runs(u64::MAX);
    }
    change.new_runs = builder.done;
    Ok(change)
}

/// Finishes or undoes a rewrite a crash interrupted, before the segments
/// are opened: the `.rewrite` file the index's marker names was committed
/// and is renamed over its segment; any other was not and is removed.
/// Returns what it did, for the log.
pub fn finish_interrupted(dir: &Path, index: &Index) -> Result<Vec<String>> {
    let marker = index.rewrite_marker()?;
    let mut done = Vec::new();
    let rd =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(parsed) = name.to_str().and_then(parse_rewrite_file_name) else {
            continue;
        };
        let path = entry.path();
        if Some(parsed) == marker {
            let target = dir.join(segment_file_name(parsed.0));
            std::fs::rename(&path, &target).map_err(|e| {
                Error::io(
                    format!("renaming {} to {}", path.display(), target.display()),
                    e,
                )
            })?;
            tracing::warn!(file = %target.display(), "finished a segment rewrite a crash interrupted after its index change");
            done.push(format!("swapped in {}", path.display()));
        } else {
            std::fs::remove_file(&path)
                .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
            tracing::warn!(file = %path.display(), "removed a segment rewrite a crash interrupted before its index change");
            done.push(format!("removed {}", path.display()));
        }
    }
    if !done.is_empty() {
        sync_dir(dir)?;
    }
    Ok(done)
}

/// A committed rewrite whose file is not yet swapped in (`verify`, which
/// changes nothing, reports it: the next open finishes it).
pub fn pending(dir: &Path, index: &Index) -> Result<Option<PathBuf>> {
    Ok(index
        .rewrite_marker()?
        .map(|(first, generation)| dir.join(rewrite_file_name(first, generation)))
        .filter(|p| p.exists()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_file_names_round_trip() {
        let name = rewrite_file_name(1 << 40, 7);
        assert_eq!(name, "00000001099511627776.seg.7.rewrite");
        assert_eq!(parse_rewrite_file_name(&name), Some((1 << 40, 7)));
        assert_eq!(parse_rewrite_file_name("00000000000000000000.seg"), None);
        assert_eq!(parse_rewrite_file_name("0.seg.1.rewrite"), None);
    }
}

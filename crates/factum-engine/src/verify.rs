//! `factum verify`: checks every record of the log and every index entry
//! against it, without changing anything. Positions are dense but where a
//! scavenge left gaps (segments flagged `SCAVENGED`, ADR 33): between the
//! frames of such a segment and after its last one.

use std::collections::HashMap;
use std::path::Path;

use factum_core::{Result, StreamName};

use crate::engine::lock_dir;
use crate::format::{
    check_group_link, decode_frame_events, GroupBefore, StoredEvent, SEGMENT_HEADER_LEN,
};
use crate::index::Index;
use crate::log::{classify_tail, open_segments, FrameReader, Loc, Scanned, Tail};
use factum_core::rules::link_streams;

/// What `verify` found.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Segment files checked.
    pub segments: usize,
    /// Frames (atomic batches) checked.
    pub frames: u64,
    /// Event records checked.
    pub events: u64,
    /// Index entries (runs) checked against the log.
    pub index_entries: u64,
    /// Revisions those entries cover, each checked against its record.
    pub index_revisions: u64,
    /// Stream records checked.
    pub streams: u64,
    /// Stubs a scavenge left for streams' last events (ADR 33), among `events`.
    pub stubs: u64,
    /// Segments stored compressed (ADR 43), among `segments`: each block's
    /// CRC is checked as it is decompressed.
    pub compressed_segments: usize,
    /// Segments that live only in the archive (ADR 43), among `segments`.
    pub archived_segments: usize,
    /// With an archive: the objects it lists …
    pub archive_objects: usize,
    /// … of which verified copies of segments still local (the journal).
    pub archive_copies: usize,
    /// Zeros after the last frame of the active segment: space preallocated
    /// before a crash (ADR 10), free for the next appends.
    pub preallocated_bytes: u64,
    /// Problems: any entry here means the store is damaged.
    pub faults: Vec<String>,
    /// Facts worth knowing that are not damage (a torn tail the next open cuts, …).
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// True when no fault was found.
    pub fn ok(&self) -> bool {
        self.faults.is_empty()
    }
}

/// Verifies the store in `dir`. Takes the directory lock, so it refuses to
/// run on a store another process has open. Errors only when it cannot
/// run at all; damage is reported in the report's `faults`. Segments that
/// live only in an archive are skipped (a note names them): see
/// [`verify_with_archive`].
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    verify_with_archive(dir, None)
}

/// [`verify`], reading segments that live only in `archive` through it
/// (ADR 43), and checking each such archived file's size and CRC32C
/// against its stub.
pub fn verify_with_archive(
    dir: &Path,
    archive: Option<std::sync::Arc<dyn crate::archive::Archive>>,
) -> Result<VerifyReport> {
    verify_store(dir, archive, None)
}

/// [`verify_with_archive`] of a store encrypted at rest (ADR 45): its
/// segments are read with the data keys `key` unwraps. Without the key
/// (or with another) an encrypted store's report is that one fault.
pub fn verify_store(
    dir: &Path,
    archive: Option<std::sync::Arc<dyn crate::archive::Archive>>,
    key: Option<&crate::encrypt::MasterKey>,
) -> Result<VerifyReport> {
    let _lock = lock_dir(dir)?;
    let mut r = VerifyReport::default();
    let segments = match open_segments(dir).and_then(|s| s.unlock(key).map(|_| s)) {
        Ok(s) => s,
        Err(e) => {
            r.faults.push(e.to_string());
            return Ok(r);
        }
    };
    if let Some(archive) = &archive {
        let tier = std::sync::Arc::new(crate::archive::Tier::new(archive.clone(), 64 << 20));
        segments.attach(&tier);
        let mut named = std::collections::HashSet::new();
        for seg in segments.all() {
            if let Some(stub) = &seg.stub {
                r.archived_segments += 1;
                named.insert(stub.object.clone());
                if let Err(e) = crate::archiver::check_object(archive.as_ref(), stub) {
                    r.faults.push(format!("{}: {e}", seg.path.display()));
                }
            }
        }
        // The archive's listing: what the stubs name, copies of segments
        // still local (the journal), and anything else.
        match archive.list() {
            Ok(objects) => {
                let copies = crate::archiver::journal_objects(dir)?;
                for o in objects {
                    r.archive_objects += 1;
                    if named.contains(&o.name) {
                        continue;
                    }
                    if copies.contains(&o.name) {
                        r.archive_copies += 1;
                        continue;
                    }
                    r.notes.push(format!(
                        "the archive holds {} ({} bytes), which no segment of this store names: left by a segment rewritten after its upload, or another store's",
                        o.name, o.size
                    ));
                }
            }
            Err(e) => r.faults.push(format!("listing the archive: {e}")),
        }
    }
    // Segments not checked: archived, no archive given.
    let mut skipped = std::collections::HashSet::new();
    // 1. The log: every frame and record, dense positions.
    let all = segments.all();
    r.segments = all.len();
    // (position, loc) of every record the index may point to, in position
    // order (a scavenge leaves gaps, ADR 33).
    let mut locs: Vec<(u64, u64)> = Vec::new();
    let first_position = all.first().map_or(0, |s| s.first_position);
    let mut next = first_position;
    let mut log_end = Loc::default();
    let scavenged_store = all.iter().any(|s| s.format.scavenged());
    let mut previous_scavenged = false;
    'segments: for seg in &all {
        if previous_scavenged && seg.first_position > next {
            next = seg.first_position;
        }
        if let (Some(stub), None) = (&seg.stub, seg.tier.get()) {
            r.notes.push(format!(
                "{} lives only in the archive as {}: not checked (verify --archive checks it)",
                seg.path.display(),
                stub.object
            ));
            r.archived_segments += 1;
            skipped.insert(seg.number);
            previous_scavenged = true;
            continue;
        }
        previous_scavenged = seg.format.scavenged();
        if seg.first_position != next {
            r.faults.push(format!(
                "{}: starts at position {}, but the log before it ends at {next}",
                seg.path.display(),
                seg.first_position
            ));
        }
        let len = seg.len()?;
        r.compressed_segments += seg.format.compressed() as usize;
        let mut frames = FrameReader::new(seg.clone(), SEGMENT_HEADER_LEN as u64, len);
        let mut group_before = GroupBefore::SegmentStart;
        loop {
            let scanned = match frames.next_frame() {
                Ok(s) => s,
                // A damaged compressed block: name it, go on with the next segment.
                Err(e @ factum_core::Error::Corrupt { .. }) => {
                    r.faults.push(e.to_string());
                    continue 'segments;
                }
                Err(e) => return Err(e),
            };
            match scanned {
                Scanned::Frame {
                    offset,
                    header,
                    bytes,
                } => {
                    r.frames += 1;
                    if seg.format.group_frames() {
                        match check_group_link(&header, group_before) {
                            Ok(g) => group_before = GroupBefore::Group(g),
                            Err(d) => r
                                .faults
                                .push(format!("{} at offset {offset}: {d}", seg.path.display())),
                        }
                    }
                    if seg.format.scavenged() && header.first_position > next {
                        next = header.first_position;
                    }
                    if header.first_position != next {
                        r.faults.push(format!(
                            "{} at offset {offset}: frame starts at position {}, expected {next}",
                            seg.path.display(),
                            header.first_position
                        ));
                    }
                    match decode_frame_events(bytes, &header) {
                        Err(d) => r
                            .faults
                            .push(format!("{} at offset {offset}: {d}", seg.path.display())),
                        Ok(events) => {
                            for (e, o) in events {
                                if let Err(d) = StoredEvent::decode(&bytes[o as usize..], true) {
                                    r.faults.push(format!(
                                        "{} at offset {}: {d}",
                                        seg.path.display(),
                                        offset + o as u64
                                    ));
                                }
                                if e.position != next {
                                    r.faults.push(format!(
                                        "{} at offset {}: event has position {}, expected {next}",
                                        seg.path.display(),
                                        offset + o as u64,
                                        e.position
                                    ));
                                }
                                if e.has_link_revisions() {
                                    let at = format!(
                                        "{} at offset {}",
                                        seg.path.display(),
                                        offset + o as u64
                                    );
                                    if seg.format.features & crate::format::FEATURE_LINK_REVISIONS
                                        == 0
                                    {
                                        r.faults.push(format!("{at}: a link record in a segment not rewritten to hold them"));
                                    }
                                    if let Err(d) = e.link_revisions() {
                                        r.faults.push(format!("{at}: {d}"));
                                    }
                                }
                                if e.is_stub() {
                                    r.stubs += 1;
                                    if !seg.format.scavenged() {
                                        r.faults.push(format!(
                                            "{} at offset {}: a scavenge's stub in a segment that was never scavenged",
                                            seg.path.display(),
                                            offset + o as u64
                                        ));
                                    }
                                } else {
                                    locs.push((
                                        e.position,
                                        Loc::new(seg.number, offset + o as u64).0,
                                    ));
                                }
                                next = e.position + 1;
                                r.events += 1;
                            }
                        }
                    }
                    log_end = Loc::new(seg.number, offset + header.len as u64);
                }
                Scanned::End => break,
                Scanned::Incomplete { offset } | Scanned::Invalid { offset, .. } => {
                    let is_last = seg.number == all.last().expect("non-empty").number;
                    if !is_last {
                        r.faults.push(format!(
                            "{} at offset {offset}: invalid or incomplete frame in a sealed segment",
                            seg.path.display()
                        ));
                        continue 'segments;
                    }
                    match classify_tail(seg, offset, len, next)? {
                        Tail::Free => r.preallocated_bytes = len - offset,
                        Tail::Torn => r.notes.push(format!(
                            "{}: a torn write group of {} bytes at offset {offset} was never acknowledged; the next open cuts it",
                            seg.path.display(),
                            len - offset
                        )),
                        Tail::Damaged { valid_at, detail } => r.faults.push(format!(
                            "{} at offset {offset}: invalid frame; {detail} at offset {valid_at}",
                            seg.path.display()
                        )),
                    }
                    continue 'segments;
                }
            }
        }
    }
    // 2. The index: integrity, checkpoint, and every entry against the log.
    match crate::index::stored_version_in(dir, key) {
        Ok(Some(v)) if v < crate::index::INDEX_VERSION => {
            r.notes.push(format!(
                "the index has format version {v}, older than this build's ({}): not checked; the next open of the store rebuilds it from the log",
                crate::index::INDEX_VERSION
            ));
            return Ok(r);
        }
        Ok(_) => {}
        Err(e) => {
            r.faults.push(e.to_string());
            return Ok(r);
        }
    }
    let mut index = match Index::open_encrypted(dir, 16 << 20, key) {
        Ok(i) => i,
        Err(e) => {
            r.faults.push(e.to_string());
            return Ok(r);
        }
    };
    match index.check_integrity() {
        Ok(true) => {}
        Ok(false) => r
            .notes
            .push("the index file needed repair by redb (it is derived data)".into()),
        Err(e) => {
            r.faults.push(e.to_string());
            return Ok(r);
        }
    }
    match crate::rewrite::pending(dir, &index) {
        Ok(None) => {}
        Ok(Some(file)) => {
            r.notes.push(format!(
                "a segment rewrite is committed in the index but {} is not yet swapped in: the next open of the store finishes it; the index is not checked against the log until then",
                file.display()
            ));
            return Ok(r);
        }
        Err(e) => {
            r.faults.push(e.to_string());
            return Ok(r);
        }
    }
    let cp = index.checkpoint();
    if cp.next_position > next || cp.end > log_end && cp.end.offset() > SEGMENT_HEADER_LEN as u64 {
        r.faults.push(format!(
            "index checkpoint (position {}, segment {} offset {}) is past the end of the log (position {next})",
            cp.next_position,
            cp.end.segment(),
            cp.end.offset()
        ));
    }
    if cp.next_position < next {
        r.notes.push(format!(
            "{} events after the index checkpoint are not indexed yet (the next open indexes them)",
            next - cp.next_position
        ));
    }
    let mut names: HashMap<u64, (String, Option<u64>)> = HashMap::new();
    index.for_each_stream(|name, rec| {
        r.streams += 1;
        names.insert(rec.id, (name.to_string(), rec.last_revision));
        Ok(())
    })?;
    let segments_for_read = segments;
    let mut expected_rev: HashMap<u64, u64> = HashMap::new();
    index.for_each_run(|id, first, run| {
        r.index_entries += 1;
        let Some((name, _)) = names.get(&id) else {
            r.faults.push(format!("index entry for unknown stream id {id}"));
            return Ok(());
        };
        let want = expected_rev.entry(id).or_insert(0);
        // After a scavenge a stream's runs may skip removed revisions, never overlap.
        if first != *want && !(scavenged_store && first > *want) {
            r.faults.push(format!("index: stream {name:?} jumps from revision {} to {first}", *want as i64 - 1));
        }
        *want = run.end(first);
        if run.count == 0 {
            r.faults.push(format!("index: run {first}@{name} is empty"));
            return Ok(());
        }
        // Each revision of the run: the next record of the run's bytes, at
        // the next position, belonging to the stream.
        let mut o = 0u64;
        for i in 0..run.count as u64 {
            let (rev, pos, loc) = (first + i, run.position + i, Loc(run.loc.0 + o));
            if skipped.contains(&loc.segment()) {
                // In a segment not checked: its records' lengths are unknown here.
                return Ok(());
            }
            r.index_revisions += 1;
            let at = locs.binary_search_by_key(&pos, |&(p, _)| p).ok().map(|i| locs[i].1);
            if at != Some(loc.0) {
                r.faults.push(format!("index: {rev}@{name} (run {first}+{}) points to position {pos} at a location where that event is not", run.count));
                return Ok(());
            }
            let seg = segments_for_read.get(loc.segment()).expect("location checked above");
            let b = seg.read_record(loc.offset())?;
            let len = StoredEvent::peek_len(&b).unwrap_or(0) as u64;
            if let Ok((e, _)) = StoredEvent::decode(&b, true) {
                let belongs = e.stream.as_str() == name && e.revision == rev
                    || StreamName::new(&e.stream)
                        .map(|s| link_streams(&s, &e.event_type).iter().any(|l| l == name))
                        .unwrap_or(false);
                if !belongs {
                    r.faults.push(format!("index: {rev}@{name} points to {}@{}", e.revision, e.stream));
                }
            }
            o += len;
        }
        if o != run.bytes as u64 {
            r.faults.push(format!(
                "index: run {first}+{}@{name} says {} bytes, its records take {o}",
                run.count, run.bytes
            ));
        }
        Ok(())
    })?;
    for (id, (name, last)) in &names {
        let indexed = expected_rev.get(id).copied();
        // A scavenge may have removed a stream's last events (its state keeps the revision).
        let removed_tail = scavenged_store && indexed.unwrap_or(0) <= last.map_or(0, |l| l + 1);
        if last.map(|l| l + 1) != indexed && !removed_tail {
            r.faults.push(format!(
                "index: stream {name:?} has last revision {last:?} but its entries end at {:?}",
                indexed.map(|n| n as i64 - 1)
            ));
        }
    }
    Ok(r)
}

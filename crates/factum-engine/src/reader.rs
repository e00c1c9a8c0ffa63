//! Reads: one event by location, streams through the index, `$all` by
//! scanning the log. Readers only look below the committed position and
//! never take the writer's path. They run on the engine's reader pool
//! (`pool.rs`) and report their work to its [`Progress`], which stops them
//! at a step boundary when their caller has gone.

use std::sync::Arc;

use factum_core::{
    AllStart, Direction, Error, Filter, Link, PageBound, ReadAll, ReadStream, RecordedEvent,
    Result, StreamName, StreamRevision, Timestamp,
};
use tokio::sync::watch;

use crate::cache::{BlockCache, BLOCK};
use crate::format::{
    check_frame, decode_frame_events, decode_frame_events_from, log_position, public_position,
    FrameCheck, FrameHeader, StoredEvent, FRAME_HEADER_LEN,
};
use crate::index::{Index, Run, Walk};
use crate::log::{FrameReader, Loc, Scanned, Segment, Segments};
use crate::pool::Progress;
use factum_core::rules;

/// What readers may see: everything before `next_position` / `end`. The
/// writer publishes it after each durable group commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The next position to be assigned (head + 1).
    pub next_position: u64,
    /// Log end after the last committed frame.
    pub end: Loc,
}

/// Reads a store's committed data.
#[derive(Clone)]
pub struct Reader {
    pub(crate) cache: Arc<BlockCache>,
    pub(crate) segments: Arc<Segments>,
    pub(crate) index: Arc<Index>,
    pub(crate) committed: watch::Receiver<Committed>,
    /// "Now" for `$maxAge`.
    pub(crate) clock: crate::config::Clock,
}

const PAGE: usize = 512;

fn corrupt(seg: &Segment, offset: u64, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        file: seg.path.clone(),
        offset,
        detail: detail.into(),
    }
}

/// Converts a stored event to the public form (its public position is its
/// log position + 1, ADR 25).
pub fn recorded(e: StoredEvent, link: Option<Link>) -> RecordedEvent {
    RecordedEvent {
        id: e.id,
        stream: e.stream,
        revision: StreamRevision(e.revision),
        position: public_position(e.position),
        event_type: e.event_type,
        content_type: e.content_type,
        data: e.data,
        metadata: e.metadata,
        created: e.created,
        link,
    }
}

impl Reader {
    /// What is committed now.
    pub fn committed(&self) -> Committed {
        *self.committed.borrow()
    }

    fn segment(&self, loc: Loc) -> Result<Arc<Segment>> {
        self.segments
            .get(loc.segment())
            .ok_or_else(|| Error::Corrupt {
                file: self.index.path().to_path_buf(),
                offset: 0,
                detail: format!(
                    "index points to segment {} which does not exist",
                    loc.segment()
                ),
            })
    }

    /// The frame at `loc`, checked.
    pub fn frame_at(&self, loc: Loc) -> Result<(FrameHeader, Vec<(StoredEvent, u32)>)> {
        let seg = self.segment(loc)?;
        let head = seg.read_exact(loc.offset(), FRAME_HEADER_LEN)?;
        let h = FrameHeader::peek(&head)
            .ok_or_else(|| corrupt(&seg, loc.offset(), "no frame where the index points"))?;
        let bytes = seg.read_exact(loc.offset(), h.len as usize)?;
        match check_frame(&bytes) {
            FrameCheck::Valid(h) => {
                let events =
                    decode_frame_events(&bytes, &h).map_err(|d| corrupt(&seg, loc.offset(), d))?;
                Ok((h, events))
            }
            FrameCheck::Invalid(d) => Err(corrupt(&seg, loc.offset(), d)),
            FrameCheck::Incomplete => Err(corrupt(&seg, loc.offset(), "frame is cut short")),
        }
    }

    /// Up to `count` events of stream `id` from revision `from`, ascending
    /// (runs to its end: for the writer's own lookups and small reads).
    pub fn stream_events(&self, id: u64, from: u64, count: usize) -> Result<Vec<StoredEvent>> {
        let mut out = Vec::with_capacity(count.min(1024));
        let mut progress = Progress::unbounded();
        let progress = &mut progress;
        self.walk_stream(
            id,
            None,
            from,
            0,
            Walk::Up,
            count as u64,
            progress,
            |_, e| {
                out.push(e);
                Ok(if out.len() < count {
                    Step::Next
                } else {
                    Step::Stop
                })
            },
        )?;
        Ok(out)
    }

    /// Walks stream `id` from revision `from` in `walk` order, bounded below
    /// by `min_rev`, calling `f` with each event and its revision in the
    /// stream until `f` says stop. `own` names the stream when it is not a
    /// link stream: its events must then be its own (name and revision).
    /// `hint` is how many events the caller expects to take (page size).
    /// Each run visited is a run's bytes of `progress`.
    #[allow(clippy::too_many_arguments)]
    fn walk_stream(
        &self,
        id: u64,
        own: Option<&StreamName>,
        from: u64,
        min_rev: u64,
        walk: Walk,
        hint: u64,
        progress: &mut Progress<'_>,
        mut f: impl FnMut(u64, StoredEvent) -> Result<Step>,
    ) -> Result<()> {
        let mut reads = PointReads::new(self);
        let mut cursor = from;
        loop {
            let want = hint.clamp(1, PAGE as u64) as usize;
            let page = self.index.runs(id, cursor, min_rev, walk, want)?;
            let Some(&(last_first, last_run)) = page.last() else {
                return Ok(());
            };
            for (first, run) in page {
                let end = run.end(first) - 1;
                let (lo, hi) = match walk {
                    Walk::Up => (first.max(cursor), end),
                    Walk::Down => (first.max(min_rev), end.min(cursor)),
                };
                if lo > hi {
                    continue;
                }
                progress.step(run.bytes as u64)?;
                if reads.run(first, run, lo - first, hi - first, walk, own, &mut f)? == Step::Stop {
                    return Ok(());
                }
            }
            cursor = match walk {
                Walk::Up => last_run.end(last_first),
                Walk::Down => match last_first.checked_sub(1) {
                    Some(c) if c >= min_rev => c,
                    _ => return Ok(()),
                },
            };
        }
    }

    /// Reads a user stream, `$$meta`, `$ce-…` or `$et-…`.
    pub fn read_stream(
        &self,
        req: &ReadStream,
        progress: &mut Progress<'_>,
    ) -> Result<Vec<RecordedEvent>> {
        let name = &req.stream;
        let rec = if name.is_all() {
            None
        } else {
            self.index.stream(name.as_str())?
        };
        let Some(plan) =
            rules::plan_stream_read(req, rec.as_ref().map(|r| &r.state), self.clock.now())?
        else {
            return Ok(Vec::new());
        };
        let rec = rec.expect("a plan needs a stream");
        let (is_link, oldest, min_rev) = (plan.is_link, plan.oldest, plan.lo);
        let (from, walk) = if plan.forwards {
            (plan.lo, Walk::Up)
        } else {
            (plan.hi, Walk::Down)
        };
        let max = req.max_count;
        // The plan bounds the revisions a read visits.
        let span = (plan.hi - plan.lo).saturating_add(1);
        let mut out = Vec::with_capacity(max.min(span).min(4096) as usize);
        if max == 0 {
            return Ok(out);
        }
        let own = (!is_link).then_some(name);
        let mut page = PageBound::new(max, req.max_bytes);
        self.walk_stream(rec.id, own, from, min_rev, walk, max, progress, |rev, e| {
            if oldest.is_some_and(|o| e.created < o) {
                return Ok(Step::Next);
            }
            if req.until.is_some_and(|u| e.created > u) {
                return Ok(match walk {
                    Walk::Up => Step::Stop,
                    Walk::Down => Step::Next,
                });
            }
            let link = is_link.then(|| Link {
                stream: name.clone(),
                revision: StreamRevision(rev),
            });
            let e = recorded(e, link);
            let full = page.add(&e);
            out.push(e);
            Ok(if full { Step::Stop } else { Step::Next })
        })?;
        Ok(out)
    }

    /// Reads `$all`.
    pub fn read_all(
        &self,
        req: &ReadAll,
        progress: &mut Progress<'_>,
    ) -> Result<Vec<RecordedEvent>> {
        match req.direction {
            Direction::Forwards => {
                let start = match req.from {
                    AllStart::Start => 0,
                    AllStart::End => return Ok(Vec::new()),
                    // Inclusive: public 0 (before the first event) and 1
                    // both start at the first event.
                    AllStart::Position(p) => log_position(p).unwrap_or(0),
                };
                Ok(self
                    .scan_forwards(
                        start,
                        PageBound::new(req.max_count, req.max_bytes),
                        req.filter.as_ref(),
                        req.until,
                        u64::MAX,
                        progress,
                    )?
                    .0)
            }
            Direction::Backwards => self.read_all_backwards(req, progress),
        }
    }

    /// Scans `$all` forwards from `start`, returning a `page` of matching
    /// events and the position after the last one examined (at most
    /// `max_scan` examined).
    /// Each frame is its bytes of `progress`: a scan that finds nothing
    /// still stops at a step when its caller has gone.
    pub fn scan_forwards(
        &self,
        start: u64,
        mut page: PageBound,
        filter: Option<&Filter>,
        until: Option<Timestamp>,
        max_scan: u64,
        progress: &mut Progress<'_>,
    ) -> Result<(Vec<RecordedEvent>, u64)> {
        let committed = self.committed();
        // Sized for what can come back (no regrowth copies of large pages),
        // bounded for a filtered scan that may return few of them.
        let upto = page
            .max_count()
            .min(committed.next_position.saturating_sub(start))
            .min(max_scan)
            .min(1 << 16);
        let mut out = Vec::with_capacity(upto as usize);
        if start >= committed.next_position || page.is_full() {
            return Ok((out, start));
        }
        // The frame holding `start`, or, when a scavenge removed the frames
        // before it (ADR 33: `$all` has gaps), the first frame after it.
        let found = match self.index.batch(start, Walk::Down)? {
            Some(b) => Some(b),
            None => self.index.batch(start, Walk::Up)?,
        };
        let Some((_, loc)) = found else {
            return Ok((out, start));
        };
        let mut scanned = 0u64;
        let mut next = start;
        let mut seg_no = loc.segment();
        let mut offset = loc.offset();
        loop {
            let seg = self.segment(Loc::new(seg_no, 0))?;
            let limit = if seg_no == committed.end.segment() {
                committed.end.offset()
            } else {
                seg.len()?
            };
            let mut frames = FrameReader::new(seg.clone(), offset, limit);
            loop {
                match frames.next_frame()? {
                    Scanned::Frame {
                        offset,
                        header,
                        bytes,
                    } => {
                        progress.step(header.len as u64)?;
                        if header.first_position + header.count as u64 <= next {
                            continue;
                        }
                        let skip = next.saturating_sub(header.first_position) as u32;
                        let events = decode_frame_events_from(bytes, &header, skip)
                            .map_err(|d| corrupt(&seg, offset, d))?;
                        for (e, _) in events {
                            if e.position < next {
                                continue;
                            }
                            if e.position >= committed.next_position {
                                return Ok((out, next));
                            }
                            if until.is_some_and(|u| e.created > u) {
                                return Ok((out, next));
                            }
                            next = e.position + 1;
                            scanned += 1;
                            if e.is_stub() {
                                // A scavenge's stub (ADR 33): never served.
                                continue;
                            }
                            if filter
                                .is_none_or(|f| f.matches_parts(e.stream.as_str(), &e.event_type))
                            {
                                let e = recorded(e, None);
                                let full = page.add(&e);
                                out.push(e);
                                if full {
                                    return Ok((out, next));
                                }
                            }
                            if scanned >= max_scan {
                                return Ok((out, next));
                            }
                        }
                    }
                    Scanned::End => break,
                    Scanned::Incomplete { offset } => {
                        return Err(corrupt(
                            &seg,
                            offset,
                            "frame is cut short below the committed end",
                        ))
                    }
                    Scanned::Invalid { offset, detail } => {
                        return Err(corrupt(&seg, offset, detail))
                    }
                }
            }
            if seg_no >= committed.end.segment() {
                return Ok((out, next));
            }
            seg_no += 1;
            offset = crate::format::SEGMENT_HEADER_LEN as u64;
        }
    }

    fn read_all_backwards(
        &self,
        req: &ReadAll,
        progress: &mut Progress<'_>,
    ) -> Result<Vec<RecordedEvent>> {
        let committed = self.committed();
        let mut out = Vec::new();
        let Some(head) = committed.next_position.checked_sub(1) else {
            return Ok(out);
        };
        let mut pos = match req.from {
            AllStart::Start | AllStart::End => head,
            AllStart::Position(p) => match log_position(p) {
                Some(p) => p.min(head),
                // Nothing is at or before public position 0.
                None => return Ok(out),
            },
        };
        let mut page = PageBound::new(req.max_count, req.max_bytes);
        while !page.is_full() {
            let Some((first, loc)) = self.index.batch(pos, Walk::Down)? else {
                break;
            };
            let (header, events) = self.frame_at(loc)?;
            progress.step(header.len as u64)?;
            for (e, _) in events.into_iter().rev() {
                if e.position > pos || e.is_stub() {
                    continue;
                }
                if req.until.is_some_and(|u| e.created > u) {
                    continue;
                }
                if req
                    .filter
                    .as_ref()
                    .is_none_or(|f| f.matches_parts(e.stream.as_str(), &e.event_type))
                {
                    let e = recorded(e, None);
                    let full = page.add(&e);
                    out.push(e);
                    if full {
                        return Ok(out);
                    }
                }
            }
            match first.checked_sub(1) {
                Some(p) => pos = p,
                None => break,
            }
        }
        Ok(out)
    }

    /// The stream record's last revision for a subscription starting at `End`.
    pub fn stream_next_revision(&self, stream: &StreamName) -> Result<u64> {
        Ok(self
            .index
            .stream(stream.as_str())?
            .and_then(|r| r.last_revision)
            .map_or(0, |r| r + 1))
    }
}

/// Checks of records against the index runs that point at them.
impl Reader {
    fn index_fault(&self, detail: String) -> Error {
        Error::Corrupt {
            file: self.index.path().to_path_buf(),
            offset: 0,
            detail,
        }
    }

    /// Checks that record `i` of a run, at offset `o` with length `len`,
    /// lies within the run (and that the last one ends it); returns `len`.
    fn check_bounds(&self, first: u64, run: Run, i: u64, o: u64, len: u64) -> Result<u64> {
        let end = o + len;
        let last = i + 1 == run.count as u64;
        if len < crate::format::EVENT_HEADER_LEN as u64
            || end > run.bytes as u64
            || (last && end != run.bytes as u64)
        {
            return Err(self.index_fault(format!(
                "index run {first}+{} at position {} does not match the records in the log",
                run.count, run.position
            )));
        }
        Ok(len)
    }

    /// Checks that record `i` of a run is the run's event.
    fn check_event(
        &self,
        first: u64,
        run: Run,
        i: u64,
        own: Option<&StreamName>,
        e: &StoredEvent,
    ) -> Result<()> {
        let rev = first + i;
        let wrong = if e.position != run.position + i {
            "an event at another position"
        } else if own.is_some_and(|s| e.revision != rev || e.stream != *s) {
            "another stream's event or revision"
        } else {
            return Ok(());
        };
        let name = own.map_or("(link)", |s| s.as_str());
        Err(self.index_fault(format!("index entry {rev}@{name} points to {wrong}")))
    }
}

/// Whether a stream walk goes on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    Next,
    Stop,
}

/// Point reads of event records within one request: remembers the
/// committed end and the last cache block, so events that share a block
/// cost neither a lock nor a system call.
struct PointReads<'r> {
    reader: &'r Reader,
    committed: Committed,
    /// The current block: segment, block number, block size, bytes.
    block: Option<(u32, u64, u64, bytes::Bytes)>,
    /// Reused buffer of record offsets within a run.
    offsets: Vec<u64>,
}

impl<'r> PointReads<'r> {
    fn new(reader: &'r Reader) -> Self {
        PointReads {
            committed: reader.committed(),
            reader,
            block: None,
            offsets: Vec::new(),
        }
    }

    /// Visits records `lo..=hi` of the run starting at revision `first`, in
    /// `walk` order, checking each against the run (position, revision and
    /// stream when `own` is given, record bounds) and its checksum.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        first: u64,
        run: Run,
        lo: u64,
        hi: u64,
        walk: Walk,
        own: Option<&StreamName>,
        f: &mut impl FnMut(u64, StoredEvent) -> Result<Step>,
    ) -> Result<Step> {
        let mut same: Option<StreamName> = own.cloned();
        if walk == Walk::Up {
            // The records lie back to back: skip to `lo` by their lengths,
            // then decode as we go.
            let mut o = 0u64;
            for i in 0..=hi {
                let loc = Loc(run.loc.0 + o);
                if i < lo {
                    let len = self.record_len(loc)?;
                    o += self.reader.check_bounds(first, run, i, o, len)?;
                    continue;
                }
                let max_len = run.bytes as u64 - o;
                let step = self.event(loc, max_len, same.as_ref(), |r, e, len| {
                    o += r.check_bounds(first, run, i, o, len)?;
                    r.check_event(first, run, i, own, &e)?;
                    let stream = own.is_none().then(|| e.stream.clone());
                    Ok((f(first + i, e)?, stream))
                })?;
                let (step, stream) = step;
                if stream.is_some() {
                    same = stream;
                }
                if step == Step::Stop {
                    return Ok(Step::Stop);
                }
            }
            return Ok(Step::Next);
        }
        // Backwards: find the records' offsets first.
        let mut offsets = std::mem::take(&mut self.offsets);
        offsets.clear();
        let result = (|| {
            let mut o = 0u64;
            for i in 0..=hi {
                let len = self.record_len(Loc(run.loc.0 + o))?;
                offsets.push(o);
                o += self.reader.check_bounds(first, run, i, o, len)?;
            }
            for i in (lo..=hi).rev() {
                let loc = Loc(run.loc.0 + offsets[i as usize]);
                let step = self.event(loc, u64::MAX, same.as_ref(), |r, e, _| {
                    r.check_event(first, run, i, own, &e)?;
                    let stream = own.is_none().then(|| e.stream.clone());
                    Ok((f(first + i, e)?, stream))
                })?;
                let (step, stream) = step;
                if stream.is_some() {
                    same = stream;
                }
                if step == Step::Stop {
                    return Ok(Step::Stop);
                }
            }
            Ok(Step::Next)
        })();
        self.offsets = offsets;
        result
    }

    /// Decodes the record at `loc` (checksum verified) and hands it with
    /// its length to `then`; reuses `stream` when the record belongs to it.
    /// A record longer than `max_len` is not read (the index that says it
    /// is there is wrong).
    fn event<T>(
        &mut self,
        loc: Loc,
        max_len: u64,
        stream: Option<&StreamName>,
        then: impl FnOnce(&Reader, StoredEvent, u64) -> Result<T>,
    ) -> Result<T> {
        let reader = self.reader;
        // Decode and hand over in one place: no event is moved around in
        // intermediate results.
        self.with_record(loc, max_len, |b, owner| {
            match StoredEvent::decode_with(b, true, stream, owner) {
                Ok((e, len)) => then(reader, e, len as u64),
                Err(d) => Err(match reader.segment(loc) {
                    Ok(seg) => corrupt(&seg, loc.offset(), d),
                    Err(e) => e,
                }),
            }
        })
    }

    /// The length field of the record at `loc`.
    fn record_len(&mut self, loc: Loc) -> Result<u64> {
        if let Some(size) = self.load_block(loc)? {
            let within = (loc.offset() % size) as usize;
            let bytes = &self.block.as_ref().expect("loaded").3;
            if let Some(len) = bytes.get(within..).and_then(StoredEvent::peek_len) {
                return Ok(len as u64);
            }
        }
        let b = self.reader.segment(loc)?.read_exact(loc.offset(), 4)?;
        Ok(StoredEvent::peek_len(&b).unwrap_or(0) as u64)
    }

    /// Makes the block holding `loc` the current one when it may be cached
    /// (it lies wholly below the committed end): its size, `None` when it
    /// may not. Blocks are 64 KiB (`BLOCK`), or a compressed segment's
    /// blocks (`compress::BLOCK_BYTES`), so a point read decompresses one.
    fn load_block(&mut self, loc: Loc) -> Result<Option<u64>> {
        let (seg_no, offset) = (loc.segment(), loc.offset());
        let end = self.committed.end;
        if seg_no > end.segment() {
            return Ok(None);
        }
        if let Some((s, b, size, _)) = &self.block {
            if *s == seg_no && *b == offset / size {
                return Ok(Some(*size));
            }
        }
        let seg = self.reader.segment(loc)?;
        let size = if seg.format.compressed() {
            crate::compress::BLOCK_BYTES as u64
        } else {
            BLOCK
        };
        let block = offset / size;
        if seg_no == end.segment() && (block + 1) * size > end.offset() {
            return Ok(None);
        }
        let bytes = match self.reader.cache.get(seg_no, block) {
            Some(b) if b.len() as u64 == size => b,
            _ => {
                let b = seg.read_upto(block * size, size as usize)?;
                // A sealed segment's last block may be partial: used, not cached.
                if b.len() as u64 == size {
                    self.reader.cache.put(seg_no, block, b.clone());
                }
                b
            }
        };
        self.block = Some((seg_no, block, size, bytes));
        Ok(Some(size))
    }

    /// Calls `f` with the bytes of the record at `loc` (its whole length):
    /// from the block cache when the record lies within one committed block
    /// (with that block, which decoded events may slice: it never changes),
    /// else from the file.
    fn with_record<T>(
        &mut self,
        loc: Loc,
        max_len: u64,
        f: impl FnOnce(&[u8], Option<&bytes::Bytes>) -> Result<T>,
    ) -> Result<T> {
        if let Some(size) = self.load_block(loc)? {
            let within = (loc.offset() % size) as usize;
            let bytes = &self.block.as_ref().expect("loaded").3;
            if let Some(len) = bytes.get(within..).and_then(StoredEvent::peek_len) {
                if within + len <= bytes.len() {
                    return f(&bytes[within..within + len], Some(bytes));
                }
            }
        }
        // Not cacheable, or the record crosses a block boundary.
        let seg = self.reader.segment(loc)?;
        let head = seg.read_upto(loc.offset(), 1024)?;
        match StoredEvent::peek_len(&head) {
            Some(len) if len as u64 > max_len => Err(self.reader.index_fault(format!(
                "the index points to a {len}-byte record in {} at offset {} where at most {max_len} bytes are indexed",
                seg.path.display(),
                loc.offset()
            ))),
            Some(len) if len > head.len() => f(&seg.read_exact(loc.offset(), len)?, None),
            _ => f(&head, None),
        }
    }
}

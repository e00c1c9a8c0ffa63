//! Reads: one event by location, streams through the index, `$all` by
//! scanning the log. Readers only look below the committed position and
//! never take the writer's path.

use std::sync::Arc;

use factum_core::{
    AllStart, Direction, Error, Filter, Link, Position, ReadAll, ReadStream, RecordedEvent, Result,
    StreamName, StreamRevision, Timestamp,
};
use tokio::sync::watch;

use crate::cache::{BlockCache, BLOCK};
use crate::format::{
    check_frame, decode_frame_events, decode_frame_events_from, FrameCheck, FrameHeader,
    StoredEvent, FRAME_HEADER_LEN,
};
use crate::index::{Index, Walk};
use crate::log::{FrameReader, Loc, Scanned, Segment, Segments};
use crate::writer::Committed;
use factum_core::rules;

/// Reads a store's committed data.
#[derive(Clone)]
pub struct Reader {
    pub(crate) cache: Arc<BlockCache>,
    pub(crate) segments: Arc<Segments>,
    pub(crate) index: Arc<Index>,
    pub(crate) committed: watch::Receiver<Committed>,
}

const PAGE: usize = 512;

fn corrupt(seg: &Segment, offset: u64, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        file: seg.path.clone(),
        offset,
        detail: detail.into(),
    }
}

/// Converts a stored event to the public form.
pub fn recorded(e: StoredEvent, link: Option<Link>) -> RecordedEvent {
    RecordedEvent {
        id: e.id,
        stream: e.stream,
        revision: StreamRevision(e.revision),
        position: Position(e.position),
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

    /// Up to `count` events of stream `id` from revision `from`, ascending.
    pub fn stream_events(&self, id: u64, from: u64, count: usize) -> Result<Vec<StoredEvent>> {
        self.index
            .entries(id, from, 0, Walk::Up, count)?
            .into_iter()
            .map({
                let mut reads = PointReads::new(self);
                move |(_, _, loc)| reads.event(loc, None)
            })
            .collect()
    }

    /// Reads a user stream, `$$meta`, `$ce-…` or `$et-…`.
    pub fn read_stream(&self, req: &ReadStream) -> Result<Vec<RecordedEvent>> {
        let name = &req.stream;
        let rec = if name.is_all() {
            None
        } else {
            self.index.stream(name.as_str())?
        };
        let Some(plan) =
            rules::plan_stream_read(req, rec.as_ref().map(|r| &r.state), Timestamp::now())?
        else {
            return Ok(Vec::new());
        };
        let rec = rec.expect("a plan needs a stream");
        let (is_link, oldest, min_rev) = (plan.is_link, plan.oldest, plan.lo);
        let (mut cursor, walk) = if plan.forwards {
            (plan.lo, Walk::Up)
        } else {
            (plan.hi, Walk::Down)
        };
        let mut out = Vec::new();
        let mut reads = PointReads::new(self);
        while (out.len() as u64) < req.max_count {
            let want = (req.max_count - out.len() as u64).min(PAGE as u64) as usize;
            let page = self.index.entries(rec.id, cursor, min_rev, walk, want)?;
            if page.is_empty() {
                break;
            }
            for (rev, pos, loc) in &page {
                let e = reads.event(*loc, (!is_link).then_some(name))?;
                if e.position != *pos {
                    return Err(Error::Corrupt {
                        file: self.index.path().to_path_buf(),
                        offset: 0,
                        detail: format!(
                            "index entry {rev}@{name} points to an event at another position"
                        ),
                    });
                }
                if oldest.is_some_and(|o| e.created < o) {
                    continue;
                }
                if req.until.is_some_and(|u| e.created > u) {
                    if walk == Walk::Up {
                        return Ok(out);
                    }
                    continue;
                }
                let link = is_link.then(|| Link {
                    stream: name.clone(),
                    revision: StreamRevision(*rev),
                });
                out.push(recorded(e, link));
            }
            let edge = page.last().expect("non-empty").0;
            cursor = match walk {
                Walk::Up => edge + 1,
                Walk::Down => match edge.checked_sub(1) {
                    Some(c) if c >= min_rev => c,
                    _ => break,
                },
            };
        }
        Ok(out)
    }

    /// Reads `$all`.
    pub fn read_all(&self, req: &ReadAll) -> Result<Vec<RecordedEvent>> {
        match req.direction {
            Direction::Forwards => {
                let start = match req.from {
                    AllStart::Start => 0,
                    AllStart::End => return Ok(Vec::new()),
                    AllStart::Position(p) => p.0,
                };
                Ok(self
                    .scan_forwards(
                        start,
                        req.max_count,
                        req.filter.as_ref(),
                        req.until,
                        u64::MAX,
                    )?
                    .0)
            }
            Direction::Backwards => self.read_all_backwards(req),
        }
    }

    /// Scans `$all` forwards from `start`, returning matching events and the
    /// position after the last one examined (at most `max_scan` examined).
    pub fn scan_forwards(
        &self,
        start: u64,
        max_count: u64,
        filter: Option<&Filter>,
        until: Option<Timestamp>,
        max_scan: u64,
    ) -> Result<(Vec<RecordedEvent>, u64)> {
        let committed = self.committed();
        let mut out = Vec::with_capacity(max_count.min(4096) as usize);
        if start >= committed.next_position || max_count == 0 {
            return Ok((out, start));
        }
        let Some((_, loc)) = self.index.batch(start, Walk::Down)? else {
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
                            if filter
                                .is_none_or(|f| f.matches_parts(e.stream.as_str(), &e.event_type))
                            {
                                out.push(recorded(e, None));
                                if out.len() as u64 >= max_count {
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

    fn read_all_backwards(&self, req: &ReadAll) -> Result<Vec<RecordedEvent>> {
        let committed = self.committed();
        let mut out = Vec::new();
        let Some(head) = committed.next_position.checked_sub(1) else {
            return Ok(out);
        };
        let mut pos = match req.from {
            AllStart::Start | AllStart::End => head,
            AllStart::Position(p) => p.0.min(head),
        };
        while (out.len() as u64) < req.max_count {
            let Some((first, loc)) = self.index.batch(pos, Walk::Down)? else {
                break;
            };
            let (_, events) = self.frame_at(loc)?;
            for (e, _) in events.into_iter().rev() {
                if e.position > pos {
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
                    out.push(recorded(e, None));
                    if out.len() as u64 >= req.max_count {
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

/// Point reads of event records within one request: remembers the
/// committed end and the last cache block, so events that share a block
/// cost neither a lock nor a system call.
struct PointReads<'r> {
    reader: &'r Reader,
    committed: Committed,
    block: Option<(u32, u64, bytes::Bytes)>,
}

impl<'r> PointReads<'r> {
    fn new(reader: &'r Reader) -> Self {
        PointReads {
            committed: reader.committed(),
            reader,
            block: None,
        }
    }

    /// The record at `loc`, checksum verified; reuses `stream` when the
    /// record belongs to it.
    fn event(&mut self, loc: Loc, stream: Option<&StreamName>) -> Result<StoredEvent> {
        let b = self.record_bytes(loc)?;
        StoredEvent::decode_with(&b, true, stream)
            .map(|(e, _)| e)
            .map_err(|d| match self.reader.segment(loc) {
                Ok(seg) => corrupt(&seg, loc.offset(), d),
                Err(e) => e,
            })
    }

    /// The bytes of the record at `loc`, from the block cache when the
    /// record lies within one committed block.
    fn record_bytes(&mut self, loc: Loc) -> Result<bytes::Bytes> {
        let (seg_no, offset) = (loc.segment(), loc.offset());
        let block = offset / BLOCK;
        let within = (offset - block * BLOCK) as usize;
        let block_end = (block + 1) * BLOCK;
        let end = self.committed.end;
        let cacheable =
            seg_no < end.segment() || (seg_no == end.segment() && block_end <= end.offset());
        if cacheable {
            let hit = matches!(&self.block, Some((s, b, _)) if *s == seg_no && *b == block);
            if !hit {
                let bytes = match self.reader.cache.get(seg_no, block) {
                    Some(b) => b,
                    None => {
                        let b = self
                            .reader
                            .segment(loc)?
                            .read_upto(block * BLOCK, BLOCK as usize)?;
                        if b.len() == BLOCK as usize {
                            self.reader.cache.put(seg_no, block, b.clone());
                        }
                        b
                    }
                };
                self.block = Some((seg_no, block, bytes));
            }
            let bytes = &self.block.as_ref().expect("set above").2;
            if let Some(len) = bytes.get(within..).and_then(StoredEvent::peek_len) {
                if within + len <= bytes.len() {
                    return Ok(bytes.slice(within..within + len));
                }
            }
        }
        // Not cacheable, or the record crosses a block boundary.
        self.reader.segment(loc)?.read_record(offset)
    }
}

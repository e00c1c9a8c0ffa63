//! The single writer: owns the log tail, checks expectations, group-commits.
//!
//! Appends queue to one thread. It drains the queue into a group, checks each
//! append against the newest stream state (committed index + the group's
//! pending changes), encodes one frame per append, writes the whole group
//! with one write and makes it durable with one fsync, then applies the
//! index changes, publishes the new committed position and answers every
//! append. A failed fsync stops all writing for good (the page cache may
//! have dropped the data); a failed write is undone by truncation when
//! possible, and answered with the error.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use factum_core::rules::{self, Decision, Limits, Operation, WriteKind};
use factum_core::{
    AppendResult, Error, EventData, ExpectedRevision, Position, Result, StreamName, StreamRevision,
    Timestamp, Uuid,
};
use tokio::sync::{oneshot, watch};

use crate::config::{Durability, EngineConfig};
use crate::format::{
    encode_frame, StoredEvent, EVENT_HEADER_LEN, FLAG_SOFT_DELETE, FLAG_TOMBSTONE,
    FRAME_HEADER_LEN, FRAME_TRAILER_LEN,
};
use crate::index::Index;
use crate::log::{create_segment, Loc, Segment, Segments};
use crate::overlay::Overlay;
use crate::prealloc::Prealloc;
use crate::reader::Reader;

/// The writer asks for zeros ahead while its groups average fewer bytes
/// than this (ADR 10: above it, the zeros cost more than they save).
pub const PREALLOC_MAX_GROUP_BYTES: u64 = 64 << 10;

/// One queued request.
pub struct AppendRequest {
    /// The stream (for metadata: the stream whose metadata it is).
    pub stream: StreamName,
    /// The expectation.
    pub expected: ExpectedRevision,
    /// What to do.
    pub op: Operation,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<AppendResult>>,
    /// The request's place in the writer's bounded queue (ADR 13), given
    /// back when the writer drops the request.
    pub queue_slot: tokio::sync::OwnedSemaphorePermit,
}

/// What readers may see: everything before `next_position` / `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The next position to be assigned (head + 1).
    pub next_position: u64,
    /// Log end after the last committed frame.
    pub end: Loc,
}

pub(crate) struct Writer {
    pub config: EngineConfig,
    pub dir: PathBuf,
    pub segments: Arc<Segments>,
    pub index: Arc<Index>,
    pub reader: Reader,
    pub committed: watch::Sender<Committed>,
    pub file: Arc<File>,
    pub segment: Arc<Segment>,
    pub segment_len: u64,
    /// Zeros ahead of the writer (ADR 10); `None` without durability or
    /// when `preallocate_bytes` is 0.
    pub prealloc: Option<Prealloc>,
    /// Moving average of the bytes the last groups wrote.
    pub avg_group_bytes: u64,
    pub failed: Option<String>,
    pub flush_signal: std::sync::mpsc::SyncSender<()>,
}

enum Outcome {
    /// Answer now / after the group is durable.
    Done(Result<AppendResult>),
    /// Needs the group before it to be durable first.
    Defer,
    /// Does not fit in the current segment.
    Roll,
}

impl Writer {
    pub fn run(mut self, rx: Receiver<AppendRequest>) {
        let mut carry: Vec<AppendRequest> = Vec::new();
        let mut buf = Vec::with_capacity(1 << 20);
        loop {
            let mut group: Vec<AppendRequest> = std::mem::take(&mut carry);
            if group.is_empty() {
                match rx.recv() {
                    Ok(r) => group.push(r),
                    Err(_) => return self.finish(),
                }
            }
            while group.len() < self.config.max_group_appends {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            let index = self.index.clone();
            let mut overlay = Overlay::new(&index);
            let mut answers: Vec<(oneshot::Sender<Result<AppendResult>>, Result<AppendResult>)> =
                Vec::new();
            buf.clear();
            let now = Timestamp::now();
            let mut roll = false;
            let mut requests = group.into_iter();
            for req in requests.by_ref() {
                if let Some(why) = &self.failed {
                    let _ = req.reply.send(Err(Error::Unavailable(why.clone())));
                    continue;
                }
                match self.prepare(&req, &mut overlay, &mut buf, now) {
                    Outcome::Done(r) => answers.push((req.reply, r)),
                    Outcome::Defer => carry.push(req),
                    Outcome::Roll => {
                        carry.push(req);
                        roll = true;
                        break;
                    }
                }
                if buf.len() >= self.config.max_group_bytes {
                    break;
                }
            }
            carry.extend(requests);
            if !buf.is_empty() {
                if let Err(e) = self.write_durably(&buf) {
                    for (reply, r) in answers {
                        let _ = reply.send(r.and(Err(Error::Unavailable(e.to_string()))));
                    }
                    continue;
                }
                self.segment_len += buf.len() as u64;
                let changes = overlay.take();
                let cp = changes.checkpoint;
                self.index.apply(changes);
                self.committed.send_replace(Committed {
                    next_position: cp.next_position,
                    end: cp.end,
                });
                if self.index.pending_entries() >= self.config.index_flush_entries {
                    let _ = self.flush_signal.try_send(());
                }
            }
            for (reply, r) in answers {
                let _ = reply.send(r);
            }
            if roll {
                if let Err(e) = self.roll() {
                    self.failed = Some(format!("could not start a new segment: {e}"));
                    tracing::error!(error = %e, "writer stopped: could not start a new segment");
                }
            }
        }
    }

    fn write_durably(&mut self, buf: &[u8]) -> Result<()> {
        let end = self.segment_len + buf.len() as u64;
        if let Some(p) = &self.prealloc {
            p.before_write(end);
        }
        if let Err(e) = self.file.write_all_at(buf, self.segment_len) {
            // Undo a partial write so the log stays clean, then report it.
            let undone = self.truncate_tail();
            if let Err(e2) = undone {
                self.failed = Some(format!(
                    "a write to {} failed ({e}) and could not be undone ({e2}); restart to recover from the log",
                    self.segment.path.display()
                ));
            }
            return Err(Error::io(
                format!("writing to {}", self.segment.path.display()),
                e,
            ));
        }
        if self.config.durability == Durability::Always {
            if let Err(e) = self.file.sync_data() {
                let why = format!(
                    "fsync of {} failed ({e}); the store stopped accepting writes because the OS may have dropped unwritten data; restart to recover from the log",
                    self.segment.path.display()
                );
                tracing::error!("{why}");
                self.failed = Some(why.clone());
                return Err(Error::Unavailable(why));
            }
        }
        // Zeros ahead pay while groups are small (ADR 10).
        self.avg_group_bytes = (self.avg_group_bytes * 7 + buf.len() as u64) / 8;
        if let Some(p) = &self.prealloc {
            p.after_write(end, self.avg_group_bytes < PREALLOC_MAX_GROUP_BYTES);
        }
        Ok(())
    }

    /// Cuts the active segment back to its last frame: a failed write's
    /// bytes and any preallocated zeros go. Waits for a zeroing job first.
    fn truncate_tail(&mut self) -> std::io::Result<()> {
        if let Some(p) = &self.prealloc {
            p.detach();
        }
        let r = self
            .file
            .set_len(self.segment_len)
            .and_then(|_| self.file.sync_data());
        if let Some(p) = &self.prealloc {
            p.attach(
                self.file.clone(),
                self.segment.path.clone(),
                self.segment_len,
            );
        }
        r
    }

    /// The queue closed: leave the active segment ending at its last frame.
    fn finish(mut self) {
        if let Some(p) = self.prealloc.take() {
            p.detach();
            if let Err(e) = self
                .file
                .set_len(self.segment_len)
                .and_then(|_| self.file.sync_all())
            {
                // Harmless: the next open treats the zeros as free space.
                tracing::warn!(file = %self.segment.path.display(), error = %e,
                    "could not remove preallocated space at close");
            }
        }
    }

    fn roll(&mut self) -> Result<()> {
        // A sealed segment ends at its last frame: no zeros.
        if let Some(p) = &self.prealloc {
            p.detach();
            self.file.set_len(self.segment_len).map_err(|e| {
                Error::io(
                    format!(
                        "sealing {} (removing preallocated space)",
                        self.segment.path.display()
                    ),
                    e,
                )
            })?;
        }
        if self.config.durability == Durability::Always {
            self.file
                .sync_all()
                .map_err(|e| Error::io(format!("sealing {}", self.segment.path.display()), e))?;
        }
        let next_position = self.committed.borrow().next_position;
        let seg = Arc::new(create_segment(
            &self.dir,
            self.segment.number + 1,
            next_position,
        )?);
        self.file = Arc::new(
            OpenOptions::new()
                .write(true)
                .open(&seg.path)
                .map_err(|e| Error::io(format!("opening {}", seg.path.display()), e))?,
        );
        self.segment_len = crate::format::SEGMENT_HEADER_LEN as u64;
        if let Some(p) = &self.prealloc {
            p.attach(self.file.clone(), seg.path.clone(), self.segment_len);
        }
        self.segments.push(seg.clone());
        self.segment = seg;
        let end = Loc::new(self.segment.number, self.segment_len);
        self.committed.send_modify(|c| c.end = end);
        tracing::info!(segment = %self.segment.path.display(), "started a new segment");
        Ok(())
    }

    fn limits(&self) -> Limits {
        Limits {
            max_event_bytes: self.config.max_event_bytes,
            max_append_bytes: self.config.max_append_bytes,
            max_append_events: self.config.max_append_events,
        }
    }

    /// Validates one request against the newest state and, when it writes,
    /// encodes its frame into `buf` and records its index changes.
    fn prepare(
        &self,
        req: &AppendRequest,
        overlay: &mut Overlay<'_>,
        buf: &mut Vec<u8>,
        now: Timestamp,
    ) -> Outcome {
        match self.try_prepare(req, overlay, buf, now) {
            Ok(o) => o,
            Err(e) => Outcome::Done(Err(e)),
        }
    }

    fn try_prepare(
        &self,
        req: &AppendRequest,
        overlay: &mut Overlay<'_>,
        buf: &mut Vec<u8>,
        now: Timestamp,
    ) -> Result<Outcome> {
        let (owner, written) = rules::streams_of(&req.stream, &req.op);
        let owner_state = overlay.record(owner.as_str())?.map(|r| r.state);
        let written_rec = if written == owner {
            overlay.record(owner.as_str())?
        } else {
            overlay.record(written.as_str())?
        };
        let written_state = written_rec.as_ref().map(|r| r.state.clone());
        let mut decision = rules::decide(
            &req.stream,
            req.expected,
            req.op.clone(),
            owner_state.as_ref(),
            written_state.as_ref(),
            &self.limits(),
        );
        loop {
            match decision {
                Decision::Reject(e) => return Err(e),
                Decision::Done(r) => return Ok(Outcome::Done(Ok(r))),
                Decision::CheckRetry {
                    stream,
                    first,
                    ids,
                    otherwise,
                } => {
                    // The events to compare may still be pending in this group.
                    if overlay.touched(stream.as_str()) {
                        return Ok(Outcome::Defer);
                    }
                    let rec = written_rec
                        .as_ref()
                        .expect("a retry needs an existing stream");
                    match self.already_appended(rec.id, first, &ids)? {
                        Some(done) => return Ok(Outcome::Done(Ok(done))),
                        None => decision = *otherwise,
                    }
                }
                Decision::Write {
                    stream,
                    events,
                    kind,
                    first_revision,
                } => return self.encode(overlay, buf, now, stream, events, kind, first_revision),
            }
        }
    }

    /// Encodes one frame into the group buffer and records its index changes.
    #[allow(clippy::too_many_arguments)]
    fn encode(
        &self,
        overlay: &mut Overlay<'_>,
        buf: &mut Vec<u8>,
        now: Timestamp,
        stream: StreamName,
        events: Vec<EventData>,
        kind: WriteKind,
        first_revision: u64,
    ) -> Result<Outcome> {
        let flags = match kind {
            WriteKind::Events => 0,
            WriteKind::SoftDelete => FLAG_SOFT_DELETE,
            WriteKind::Tombstone => FLAG_TOMBSTONE,
        };
        let frame_len = FRAME_HEADER_LEN
            + FRAME_TRAILER_LEN
            + events
                .iter()
                .map(|e| {
                    EVENT_HEADER_LEN
                        + stream.as_str().len()
                        + e.event_type.len()
                        + e.data.len()
                        + e.metadata.len()
                })
                .sum::<usize>();
        let offset = self.segment_len + buf.len() as u64;
        let header = crate::format::SEGMENT_HEADER_LEN as u64;
        if offset > header && offset + frame_len as u64 > self.config.segment_bytes {
            return Ok(Outcome::Roll);
        }
        let first_position = overlay.mem.checkpoint.next_position;
        let stored: Vec<StoredEvent> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| StoredEvent {
                position: first_position + i as u64,
                revision: first_revision + i as u64,
                created: now,
                id: e.id,
                content_type: e.content_type,
                flags,
                stream: stream.clone(),
                event_type: e.event_type,
                data: e.data,
                metadata: e.metadata,
            })
            .collect();
        let start = buf.len();
        let offsets = encode_frame(&stored, now, buf);
        debug_assert_eq!(buf.len() - start, frame_len);
        let seg = self.segment.number;
        let located: Vec<(StoredEvent, Loc)> = stored
            .into_iter()
            .zip(offsets)
            .map(|(e, o)| (e, Loc::new(seg, offset + o as u64)))
            .collect();
        let end = Loc::new(seg, offset + frame_len as u64);
        overlay.add_frame(Loc::new(seg, offset), &located, end)?;
        let (last, _) = located.last().expect("non-empty");
        Ok(Outcome::Done(Ok(AppendResult {
            revision: StreamRevision(last.revision),
            position: Position(last.position),
        })))
    }

    /// If the events of stream `id` from revision `first` have exactly these
    /// ids, the result of that earlier append.
    fn already_appended(&self, id: u64, first: u64, ids: &[Uuid]) -> Result<Option<AppendResult>> {
        let found = self.reader.stream_events(id, first, ids.len())?;
        if found.len() != ids.len()
            || found
                .iter()
                .zip(ids)
                .any(|(f, id)| f.id != *id || f.revision < first)
        {
            return Ok(None);
        }
        let last = found.last().expect("non-empty");
        Ok(Some(AppendResult {
            revision: StreamRevision(last.revision),
            position: Position(last.position),
        }))
    }
}

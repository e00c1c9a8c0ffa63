//! The single writer: owns the log tail, checks expectations, group-commits.
//!
//! Appends queue to one thread. It drains the queue into a group, checks each
//! append against the newest stream state (committed index + the group's
//! pending changes), encodes one frame per append, writes the whole group
//! with one write and makes it durable with one fsync, then applies the
//! index changes, publishes the new committed position and answers every
//! append. A failed fsync of a log file, on this thread or another, stops
//! all writing for good (the page cache may have dropped the data; ADR 12);
//! a failed write is undone by truncation when possible, and answered with
//! the error. A roll that fails for a transient cause (a full disk, too
//! many open files) is retried with backoff while appends are answered
//! `Unavailable`.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_core::rules::multi::{self as multi_rules, Part, Settled};
use factum_core::rules::{self, Decision, Limits, Operation, WriteKind};
use factum_core::UnavailableReason;
use factum_core::{
    AppendResult, Error, EventData, ExpectedRevision, MultiAppend, MultiAppendResult, Result,
    StreamName, StreamRevision, Timestamp, Uuid,
};
use tokio::sync::{oneshot, watch};

use crate::config::{Durability, EngineConfig};
use crate::fatal::Fatal;
use crate::format::{
    begin_frame, finish_frame, public_position, StoredEvent, EVENT_HEADER_LEN,
    FEATURE_PUBLIC_POSITIONS_FROM_ONE, FLAG_SOFT_DELETE, FLAG_TOMBSTONE, FRAME_HEADER_LEN,
    FRAME_TRAILER_LEN,
};
use crate::index::Index;
use crate::log::{create_segment, segment_file_name, sync_dir, Loc, Segment, Segments};
use crate::overlay::Overlay;
use crate::prealloc::Prealloc;
use crate::reader::{Committed, Reader};

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

/// One queued multi-stream append (ADR 29): written as one frame.
pub struct MultiRequest {
    /// The request.
    pub request: MultiAppend,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<MultiAppendResult>>,
    /// Its place in the writer's bounded queue (ADR 13).
    pub queue_slot: tokio::sync::OwnedSemaphorePermit,
}

/// What the writer's queue holds.
pub enum Job {
    /// A single-stream request.
    One(AppendRequest),
    /// A multi-stream append.
    Multi(MultiRequest),
}

impl Job {
    fn fail(self, e: Error) {
        match self {
            Job::One(r) => {
                let _ = r.reply.send(Err(e));
            }
            Job::Multi(r) => {
                let _ = r.reply.send(Err(e));
            }
        }
    }
}

/// An answer waiting for its group to be durable.
enum Answer {
    One(oneshot::Sender<Result<AppendResult>>, Result<AppendResult>),
    Multi(
        oneshot::Sender<Result<MultiAppendResult>>,
        Result<MultiAppendResult>,
    ),
}

impl Answer {
    /// Sends the answer; `failed` replaces a success when the group's
    /// write failed.
    fn send(self, failed: Option<(UnavailableReason, &str)>) {
        let unavailable = |(reason, e): (UnavailableReason, &str)| Error::unavailable(reason, e);
        match self {
            Answer::One(reply, r) => {
                let _ = reply.send(match failed {
                    Some(e) => r.and(Err(unavailable(e))),
                    None => r,
                });
            }
            Answer::Multi(reply, r) => {
                let _ = reply.send(match failed {
                    Some(e) => r.and(Err(unavailable(e))),
                    None => r,
                });
            }
        }
    }
}

pub(crate) struct Writer {
    pub config: EngineConfig,
    pub dir: PathBuf,
    pub segments: Arc<Segments>,
    pub index: Arc<Index>,
    pub reader: Reader,
    pub committed: watch::Sender<Committed>,
    /// The writer's own handle of the active segment.
    pub file: crate::encrypt::SegmentFile,
    pub segment: Arc<Segment>,
    pub segment_len: u64,
    /// Zeros ahead of the writer (ADR 10); `None` without durability or
    /// when `preallocate_bytes` is 0.
    pub prealloc: Option<Prealloc>,
    /// Moving average of the bytes the last groups wrote.
    pub avg_group_bytes: u64,
    /// The fatal state shared with the preallocation thread (ADR 12).
    pub fatal: Arc<Fatal>,
    /// The active segment is sealed (cut to its last frame and fsynced)
    /// for a roll that has not finished yet.
    pub sealed: bool,
    /// A roll that failed for a transient cause, and when to retry it.
    pub roll_retry: Option<RollRetry>,
    /// Position of the first event of the group being prepared: frames
    /// link to it (`FrameHeader::group_offset`) so recovery can tell the
    /// last, unacknowledged group from the acknowledged ones.
    pub group_first: u64,
    pub flush_signal: std::sync::mpsc::SyncSender<()>,
}

/// The first wait before a failed roll is retried; it doubles up to
/// [`ROLL_RETRY_MAX`].
pub const ROLL_RETRY_FIRST: Duration = Duration::from_millis(10);
/// The longest wait between retries of a failed roll.
pub const ROLL_RETRY_MAX: Duration = Duration::from_secs(1);

/// A roll waiting for its retry.
pub(crate) struct RollRetry {
    /// What appends are answered meanwhile.
    cause: String,
    next: Instant,
    backoff: Duration,
}

enum RollError {
    /// Retry later (a full disk, too many open files).
    Transient(Error),
    /// Stop for good, for this reason.
    Fatal(String),
}

/// What one frame writes: [`Decision::Write`]'s fields.
struct FrameWrite {
    stream: StreamName,
    events: Vec<EventData>,
    kind: WriteKind,
    first_revision: u64,
    undelete: Option<rules::Undelete>,
}

/// One record of a frame: stream, revision, flags, event.
type FrameRecord = (StreamName, u64, u8, EventData);

/// The appends of a write group share frames (ADR 48) up to this many
/// bytes: a group of small appends is one frame, so the index records one
/// frame and one `$ce-`/`$et-` run for all of them instead of one each.
pub const GROUP_FRAME_BYTES: usize = 64 << 10;

/// The bytes of the write group being prepared.
#[derive(Default)]
struct GroupBuf {
    bytes: Vec<u8>,
    /// The frame appends are joining: where it starts in `bytes`, and its
    /// records so far.
    open: Option<(usize, u32)>,
}

enum Outcome<T = AppendResult> {
    /// Answer now / after the group is durable.
    Done(Result<T>),
    /// Needs the group before it to be durable first.
    Defer,
    /// Does not fit in the current segment.
    Roll,
}

impl<T> Outcome<T> {
    /// A `Defer` or `Roll` of another type (never called on `Done`).
    fn map<U>(self) -> Outcome<U> {
        match self {
            Outcome::Done(_) => Outcome::Done(Err(Error::unavailable(
                UnavailableReason::Closed,
                "an answered request was carried",
            ))),
            Outcome::Defer => Outcome::Defer,
            Outcome::Roll => Outcome::Roll,
        }
    }
}

impl Writer {
    /// Called by open before the writer starts: in a store an older build
    /// wrote, which served public positions as log positions (ADR 25),
    /// starts a segment with this build's flags at once, so that an older
    /// build refuses the store from now on rather than serving its events
    /// one position lower than this build did. (An empty active segment of
    /// an older build gets its successor at the next roll.) A roll that
    /// fails is handled as any roll: retried, or fatal.
    pub fn flag_public_positions(&mut self) {
        // A store opened with a master key for the first time writes its
        // next frames into an encrypted segment (ADR 45).
        let needs_encryption = self.config.encryption.is_some() && !self.segment.format.encrypted();
        if (self.segment.format.features & FEATURE_PUBLIC_POSITIONS_FROM_ONE == 0
            || needs_encryption)
            && self.segment_len > crate::format::SEGMENT_HEADER_LEN as u64
        {
            self.roll();
        }
    }

    pub fn run(mut self, rx: Receiver<Job>) {
        let mut carry: Vec<Job> = Vec::new();
        let mut buf = GroupBuf {
            bytes: Vec::with_capacity(1 << 20),
            open: None,
        };
        loop {
            let mut group: Vec<Job> = std::mem::take(&mut carry);
            if group.is_empty() {
                // While a roll waits for its retry, wake up for it too.
                let first = match &self.roll_retry {
                    Some(r) => {
                        match rx.recv_timeout(r.next.saturating_duration_since(Instant::now())) {
                            Ok(r) => Some(r),
                            Err(RecvTimeoutError::Timeout) => None,
                            Err(RecvTimeoutError::Disconnected) => return self.finish(),
                        }
                    }
                    None => match rx.recv() {
                        Ok(r) => Some(r),
                        Err(_) => return self.finish(),
                    },
                };
                group.extend(first);
            }
            while group.len() < self.config.max_group_appends {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if self
                .roll_retry
                .as_ref()
                .is_some_and(|r| Instant::now() >= r.next)
            {
                self.roll();
            }
            if let Some(r) = &self.roll_retry {
                // No segment to write into yet: a transient cause (a full
                // disk, too many open files), retried with backoff.
                for job in group {
                    job.fail(Error::unavailable(
                        UnavailableReason::Storage,
                        r.cause.clone(),
                    ));
                }
                continue;
            }
            let index = self.index.clone();
            let mut overlay = Overlay::new(&index);
            self.group_first = overlay.mem.checkpoint.next_position;
            let mut answers: Vec<Answer> = Vec::new();
            buf.bytes.clear();
            buf.open = None;
            let now = self.config.clock.now();
            let mut roll = false;
            let mut requests = group.into_iter();
            for job in requests.by_ref() {
                if let Some(why) = self.fatal.reason() {
                    job.fail(Error::unavailable(
                        UnavailableReason::StorageFailed,
                        why.to_string(),
                    ));
                    continue;
                }
                let (outcome, answer) = match job {
                    Job::One(req) => match self.prepare(&req, &mut overlay, &mut buf, now) {
                        Outcome::Done(r) => {
                            (Outcome::Done(Ok(())), Some(Answer::One(req.reply, r)))
                        }
                        o => {
                            carry.push(Job::One(req));
                            (o.map(), None)
                        }
                    },
                    Job::Multi(req) => {
                        let o = self
                            .try_prepare_multi(&req.request, &mut overlay, &mut buf, now)
                            .unwrap_or_else(|e| Outcome::Done(Err(e)));
                        match o {
                            Outcome::Done(r) => {
                                (Outcome::Done(Ok(())), Some(Answer::Multi(req.reply, r)))
                            }
                            o => {
                                carry.push(Job::Multi(req));
                                (o.map(), None)
                            }
                        }
                    }
                };
                answers.extend(answer);
                if let Outcome::Roll = outcome {
                    roll = true;
                    break;
                }
                if buf.bytes.len() >= self.config.max_group_bytes {
                    break;
                }
            }
            carry.extend(requests);
            self.close_frame(&mut overlay, &mut buf);
            if !buf.bytes.is_empty() {
                let written = self.write_durably(&buf.bytes).and_then(|end| {
                    // Acknowledge only while the store has not stopped
                    // (another thread's fsync may have failed meanwhile).
                    self.fatal.durable(end).map_err(|why| {
                        Error::unavailable(UnavailableReason::StorageFailed, why.to_string())
                    })
                });
                if let Err(e) = written {
                    let (reason, e) = match self.fatal.reason() {
                        Some(why) => (UnavailableReason::StorageFailed, why.to_string()),
                        None => (UnavailableReason::Storage, e.to_string()),
                    };
                    for answer in answers {
                        answer.send(Some((reason, &e)));
                    }
                    continue;
                }
                self.segment_len += buf.bytes.len() as u64;
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
            for answer in answers {
                answer.send(None);
            }
            if roll {
                self.roll();
            }
        }
    }

    /// Writes the group at the end of the active segment and (with
    /// durability) fdatasyncs it; returns the new end. A failed fsync
    /// stops the writer for good (ADR 12); a failed write is undone.
    fn write_durably(&mut self, buf: &[u8]) -> Result<u64> {
        if let Some(why) = self.fatal.reason() {
            return Err(Error::unavailable(
                UnavailableReason::StorageFailed,
                why.to_string(),
            ));
        }
        let end = self.segment_len + buf.len() as u64;
        if let Some(p) = &self.prealloc {
            p.before_write(end);
        }
        if let Err(e) = self.file.write_all_at(buf, self.segment_len) {
            // Undo a partial write so the log stays clean, then report it.
            self.truncate_tail(&format!("a write to it failed ({e})"));
            return Err(Error::io(
                format!("writing to {}", self.segment.path.display()),
                e,
            ));
        }
        if self.config.durability == Durability::Always {
            if let Err(e) = self.file.sync_data() {
                let why = self.fatal.trip(format!(
                    "fsync of {} failed ({e}); the store stopped accepting writes because the OS may have dropped unwritten data; restart to recover from the log",
                    self.segment.path.display()
                ));
                return Err(Error::unavailable(
                    UnavailableReason::StorageFailed,
                    why.to_string(),
                ));
            }
        }
        // Zeros ahead pay while groups are small (ADR 10).
        self.avg_group_bytes = (self.avg_group_bytes * 7 + buf.len() as u64) / 8;
        if let Some(p) = &self.prealloc {
            p.after_write(end, self.avg_group_bytes < PREALLOC_MAX_GROUP_BYTES);
        }
        Ok(end)
    }

    /// Cuts the active segment back to its last frame after `what` went
    /// wrong: a failed write's bytes and any preallocated zeros go. Waits
    /// for a zeroing job first. When the cut cannot be made durable the
    /// writer stops for good (the next open cuts the log instead).
    fn truncate_tail(&mut self, what: &str) {
        if let Some(p) = &self.prealloc {
            p.detach();
        }
        let path = self.segment.path.display();
        let failed = match self.file.set_len(self.segment_len) {
            Err(e) => Some(format!(
                "{what} and cutting it back to its last frame failed ({e})"
            )),
            Ok(()) => match self.file.sync_data() {
                Err(e) => Some(format!(
                    "{what} and the fsync of the cut back to its last frame failed ({e})"
                )),
                Ok(()) => None,
            },
        };
        if let Some(detail) = failed {
            self.fatal.trip(format!(
                "{path}: {detail}; the store stopped accepting writes; restart to recover from the log"
            ));
            return;
        }
        if let Some(p) = &self.prealloc {
            p.attach(
                self.segment.path.clone(),
                self.segment.format.encrypted(),
                self.segment_len,
            );
        }
    }

    /// The queue closed: leave the active segment ending at its last frame.
    fn finish(mut self) {
        let Some(p) = self.prealloc.take() else {
            return;
        };
        p.detach();
        drop(p);
        if self.fatal.is_tripped() {
            // The next open cuts the log to its durable end (the marker).
            return;
        }
        let path = self.segment.path.display();
        match self.file.set_len(self.segment_len) {
            // Harmless: the next open treats the zeros as free space.
            Err(e) => tracing::warn!(file = %path, error = %e,
                "could not remove preallocated space at close"),
            Ok(()) => {
                if let Err(e) = self.file.sync_all() {
                    self.fatal.trip(format!(
                        "fsync of {path} failed at close ({e}); restart to recover from the log"
                    ));
                }
            }
        }
    }

    /// Starts the next segment, or schedules a retry when a transient cause
    /// (a full disk, too many open files) is in the way, or stops the
    /// writer for good when an fsync (or anything else) fails.
    fn roll(&mut self) {
        match self.try_roll() {
            Ok(()) => {
                if let Some(r) = self.roll_retry.take() {
                    tracing::info!(after = %r.cause, "started the new segment after retrying");
                }
            }
            Err(RollError::Fatal(why)) => {
                self.fatal.trip(why);
                self.roll_retry = None;
            }
            Err(RollError::Transient(e)) => {
                let backoff = self
                    .roll_retry
                    .as_ref()
                    .map_or(ROLL_RETRY_FIRST, |r| (r.backoff * 2).min(ROLL_RETRY_MAX));
                let cause = format!(
                    "could not start a new segment: {e}; retrying in {backoff:?}; appends resume once it is created"
                );
                tracing::warn!("{cause}");
                self.roll_retry = Some(RollRetry {
                    cause,
                    next: Instant::now() + backoff,
                    backoff,
                });
            }
        }
    }

    fn try_roll(&mut self) -> std::result::Result<(), RollError> {
        if self.fatal.is_tripped() {
            // Appends are answered with the reason; nothing to start.
            return Ok(());
        }
        let stop = |e: Error| {
            if crate::fatal::is_transient(&e) {
                RollError::Transient(e)
            } else {
                RollError::Fatal(format!(
                    "could not start a new segment: {e}; the store stopped accepting writes; restart to recover from the log"
                ))
            }
        };
        if !self.sealed {
            // A sealed segment ends at its last frame: no zeros.
            if let Some(p) = &self.prealloc {
                p.detach();
                self.file.set_len(self.segment_len).map_err(|e| {
                    stop(Error::io(
                        format!(
                            "sealing {} (removing preallocated space)",
                            self.segment.path.display()
                        ),
                        e,
                    ))
                })?;
            }
            if self.config.durability == Durability::Always {
                self.file.sync_all().map_err(|e| {
                    RollError::Fatal(format!(
                        "fsync of {} failed while sealing it ({e}); the store stopped accepting writes because the OS may have dropped unwritten data; restart to recover from the log",
                        self.segment.path.display()
                    ))
                })?;
            }
            self.sealed = true;
        }
        let next_position = self.committed.borrow().next_position;
        // A segment an earlier attempt created but could not finish
        // (its directory fsync or opening failed): nothing was written to
        // it; start afresh so that its creation is known to be durable.
        let leftover = self.dir.join(segment_file_name(next_position));
        if leftover.exists() {
            std::fs::remove_file(&leftover)
                .map_err(|e| stop(Error::io(format!("removing {}", leftover.display()), e)))?;
            sync_dir(&self.dir).map_err(stop)?;
        }
        let seg = Arc::new(
            create_segment(
                &self.dir,
                self.segment.number + 1,
                next_position,
                self.config.encryption.as_ref(),
            )
            .map_err(stop)?,
        );
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg.path)
            .map_err(|e| stop(Error::io(format!("opening {}", seg.path.display()), e)))?;
        let file = crate::encrypt::SegmentFile::new(file, seg.cipher.get().cloned());
        let header = crate::format::SEGMENT_HEADER_LEN as u64;
        if self.fatal.new_segment(seg.clone(), header).is_err() {
            // Stopped meanwhile; the next open removes the new segment.
            return Ok(());
        }
        self.file = file;
        self.segment_len = header;
        self.sealed = false;
        if let Some(p) = &self.prealloc {
            p.attach(seg.path.clone(), seg.format.encrypted(), self.segment_len);
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
        buf: &mut GroupBuf,
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
        buf: &mut GroupBuf,
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
        // `$$<owner>` matters only to recreate a soft-deleted stream: looked
        // up then, not on every append.
        let meta_state = match &owner_state {
            Some(s) if s.deleted => overlay
                .record(owner.metadata_stream().as_str())?
                .map(|r| r.state),
            _ => None,
        };
        let mut decision = rules::decide(
            &req.stream,
            req.expected,
            req.op.clone(),
            owner_state.as_ref(),
            written_state.as_ref(),
            meta_state.as_ref(),
            &self.limits(),
        );
        loop {
            match decision {
                Decision::Reject(e) => return Err(e),
                // An empty append: the rules answer with the stream's last
                // position as the index keeps it, a log position (ADR 25).
                Decision::Done(r) => {
                    return Ok(Outcome::Done(Ok(AppendResult {
                        position: public_position(r.position.0),
                        ..r
                    })))
                }
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
                    undelete,
                } => {
                    let write = FrameWrite {
                        stream,
                        events,
                        kind,
                        first_revision,
                        undelete,
                    };
                    return self.encode(overlay, buf, now, write);
                }
            }
        }
    }

    /// Encodes one frame into the group buffer and records its index
    /// changes. The frame holds the append's events and, when it recreates
    /// a soft-deleted stream, the `$metadata` event that moves its `$tb`
    /// after them: one frame, so both are durable or neither is (ADR 26).
    fn encode(
        &self,
        overlay: &mut Overlay<'_>,
        buf: &mut GroupBuf,
        now: Timestamp,
        write: FrameWrite,
    ) -> Result<Outcome> {
        let FrameWrite {
            stream,
            events,
            kind,
            first_revision,
            undelete,
        } = write;
        let flags = match kind {
            WriteKind::Events => 0,
            WriteKind::SoftDelete => FLAG_SOFT_DELETE,
            WriteKind::Tombstone => FLAG_TOMBSTONE,
        };
        // The rules keep revisions below the tombstone's; numbers are
        // never wrapped all the same.
        let count = events.len() as u64;
        if first_revision.checked_add(count).is_none() {
            return Err(Error::InvalidInput(format!(
                "{count} events from revision {first_revision} would overflow a 64-bit number"
            )));
        }
        let mut records: Vec<FrameRecord> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| (stream.clone(), first_revision + i as u64, flags, e))
            .collect();
        if let Some(u) = undelete {
            records.push((u.stream, u.revision, 0, u.event));
        }
        Ok(match self.encode_frame_of(overlay, buf, now, records)? {
            None => Outcome::Roll,
            Some(first_position) => Outcome::Done(Ok(rules::write_answer(
                first_revision,
                count,
                public_position(first_position).0,
            ))),
        })
    }

    /// A multi-stream append (ADR 29): decided by the shared rules on the
    /// newest states, its retry checks made, and written as ONE frame (its
    /// events in the request's order, then the undelete events of the
    /// streams it recreates), so power-loss recovery keeps all of it or
    /// none, like any frame.
    fn try_prepare_multi(
        &self,
        request: &MultiAppend,
        overlay: &mut Overlay<'_>,
        buf: &mut GroupBuf,
        now: Timestamp,
    ) -> Result<Outcome<MultiAppendResult>> {
        let parts = multi_rules::decide_multi(
            request,
            |name| Ok(overlay.record(name.as_str())?.map(|r| r.state)),
            &self.limits(),
        )?;
        let mut settled = Vec::with_capacity(parts.len());
        for part in parts {
            let part = match part {
                Part::Retry {
                    ref stream,
                    first,
                    ref ids,
                    ..
                } => {
                    // The events to compare may still be pending in this group.
                    if overlay.touched(stream.as_str()) {
                        return Ok(Outcome::Defer);
                    }
                    let found = match overlay.record(stream.as_str())? {
                        Some(rec) => self.already_appended(rec.id, first, ids)?,
                        None => None,
                    };
                    multi_rules::resolve(part, found)
                }
                p => p,
            };
            settled.push(part);
        }
        match multi_rules::settle(request, settled)? {
            Settled::Done(r) => Ok(Outcome::Done(Ok(r))),
            Settled::Write(w) => {
                let records: Vec<FrameRecord> = w
                    .records
                    .iter()
                    .map(|r| (r.stream.clone(), r.revision, 0, r.event.clone()))
                    .collect();
                Ok(match self.encode_frame_of(overlay, buf, now, records)? {
                    None => Outcome::Roll,
                    Some(first) => Outcome::Done(Ok(w.result(public_position(first).0))),
                })
            }
        }
    }

    /// Encodes `records` (one append's) into the group buffer and records
    /// their index changes; returns the log position of the first, or
    /// `None` when they do not fit in the active segment (roll first).
    /// They join the group's open frame while it stays within
    /// [`GROUP_FRAME_BYTES`] (ADR 48), else start a new one: either way
    /// one append's records are in one frame, so recovery keeps all of them
    /// or none.
    fn encode_frame_of(
        &self,
        overlay: &mut Overlay<'_>,
        buf: &mut GroupBuf,
        now: Timestamp,
        records: Vec<FrameRecord>,
    ) -> Result<Option<u64>> {
        let record_len = |stream: &StreamName, e: &EventData| {
            EVENT_HEADER_LEN
                + stream.as_str().len()
                + e.event_type.len()
                + e.data.len()
                + e.metadata.len()
        };
        let records_len = records
            .iter()
            .map(|(stream, _, _, e)| record_len(stream, e))
            .sum::<usize>();
        if let Some((start, _)) = buf.open {
            if buf.bytes.len() - start + records_len + FRAME_TRAILER_LEN > GROUP_FRAME_BYTES {
                self.close_frame(overlay, buf);
            }
        }
        let new_frame = buf.open.is_none();
        let added = records_len + FRAME_TRAILER_LEN + if new_frame { FRAME_HEADER_LEN } else { 0 };
        let offset = self.segment_len + buf.bytes.len() as u64;
        let header = crate::format::SEGMENT_HEADER_LEN as u64;
        if offset > header && offset + added as u64 > self.config.segment_bytes {
            return Ok(None);
        }
        let first_position = overlay.mem.checkpoint.next_position;
        // No log holds 2^64 records; positions are never wrapped all the same.
        if first_position
            .checked_add(records.len() as u64 + 1)
            .is_none()
        {
            return Err(Error::InvalidInput(format!(
                "{} events at position {first_position} would overflow a 64-bit number",
                records.len()
            )));
        }
        let undo = buf.bytes.len();
        if new_frame {
            // Frames of one group stay in one segment (a roll ends the
            // group), and a group holds far fewer than 2^32 events
            // (max_group_bytes).
            let group_offset = if self.segment.format.group_frames() {
                u32::try_from(first_position - self.group_first).map_err(|_| {
                    Error::InvalidInput("a write group holds more than 2^32 events".into())
                })?
            } else {
                0
            };
            let start = begin_frame(first_position, now, group_offset, &mut buf.bytes);
            buf.open = Some((start, 0));
        }
        let (start, count) = buf.open.as_mut().expect("opened above");
        let seg = self.segment.number;
        let mut located: Vec<(StoredEvent, Loc)> = Vec::with_capacity(records.len());
        for (i, (stream, revision, flags, e)) in records.into_iter().enumerate() {
            let e = StoredEvent {
                position: first_position + i as u64,
                revision,
                created: now,
                id: e.id,
                content_type: e.content_type,
                flags,
                stream,
                event_type: e.event_type,
                data: e.data,
                metadata: e.metadata,
            };
            let loc = Loc::new(seg, self.segment_len + buf.bytes.len() as u64);
            e.encode_into(&mut buf.bytes);
            located.push((e, loc));
        }
        debug_assert_eq!(buf.bytes.len() - undo, added - FRAME_TRAILER_LEN);
        *count += located.len() as u32;
        let frame_loc = Loc::new(seg, self.segment_len + *start as u64);
        if let Err(e) = overlay.add_to_frame(frame_loc, &located, new_frame) {
            // Not answered as written, so not written.
            *count -= located.len() as u32;
            buf.bytes.truncate(undo);
            if new_frame {
                buf.open = None;
            }
            return Err(e);
        }
        Ok(Some(first_position))
    }

    /// Completes the group's open frame, if any (its length, count and CRC;
    /// its runs in the overlay).
    fn close_frame(&self, overlay: &mut Overlay<'_>, buf: &mut GroupBuf) {
        if let Some((start, count)) = buf.open.take() {
            finish_frame(start, count, &mut buf.bytes);
            let end = self.segment_len + buf.bytes.len() as u64;
            overlay.end_frame(Loc::new(self.segment.number, end));
        }
    }

    /// If the events of stream `id` from revision `first` have exactly these
    /// ids, the result of that earlier append.
    fn already_appended(&self, id: u64, first: u64, ids: &[Uuid]) -> Result<Option<AppendResult>> {
        // Held while the read looks up runs and reads their records, so a
        // scavenge's segment swap (ADR 33) happens before or after it.
        let found = {
            let _no_swap = self.segments.hold();
            self.reader.stream_events(id, first, ids.len())?
        };
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
            position: public_position(last.position),
        }))
    }
}

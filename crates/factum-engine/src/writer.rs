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

use factum_core::{
    AppendResult, CurrentRevision, Error, EventData, ExpectedRevision, Position, Result,
    StreamMetadata, StreamName, StreamRevision, Timestamp, METADATA_EVENT_TYPE,
};
use tokio::sync::{oneshot, watch};

use crate::config::{Durability, EngineConfig};
use crate::format::{
    encode_frame, StoredEvent, EVENT_HEADER_LEN, FLAG_SOFT_DELETE, FLAG_TOMBSTONE,
    FRAME_HEADER_LEN, FRAME_TRAILER_LEN,
};
use crate::index::{Index, StreamRecord};
use crate::log::{create_segment, Loc, Segment, Segments};
use crate::overlay::Overlay;
use crate::reader::Reader;

/// The event type of tombstones.
pub const TOMBSTONE_EVENT_TYPE: &str = "$streamDeleted";
/// The revision of a tombstone record (KurrentDB's `i64::MAX`).
pub const TOMBSTONE_REVISION: u64 = i64::MAX as u64;

/// What an append request does.
#[derive(Debug)]
pub enum AppendKind {
    /// Append the events to the stream.
    Events(Vec<EventData>),
    /// Write new metadata to `$$stream` (expectation on `$$stream`).
    SetMetadata(StreamMetadata),
    /// Soft-delete the stream.
    SoftDelete,
    /// Tombstone the stream.
    Tombstone,
}

/// One queued request.
pub struct AppendRequest {
    /// The stream (for metadata: the stream whose metadata it is).
    pub stream: StreamName,
    /// The expectation.
    pub expected: ExpectedRevision,
    /// What to do.
    pub kind: AppendKind,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<AppendResult>>,
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
    pub file: File,
    pub segment: Arc<Segment>,
    pub segment_len: u64,
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
                    Err(_) => return,
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
        if let Err(e) = self.file.write_all_at(buf, self.segment_len) {
            // Undo a partial write so the log stays clean, then report it.
            let undone = self
                .file
                .set_len(self.segment_len)
                .and_then(|_| self.file.sync_data());
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
        Ok(())
    }

    fn roll(&mut self) -> Result<()> {
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
        self.file = OpenOptions::new()
            .write(true)
            .open(&seg.path)
            .map_err(|e| Error::io(format!("opening {}", seg.path.display()), e))?;
        self.segment_len = crate::format::SEGMENT_HEADER_LEN as u64;
        self.segments.push(seg.clone());
        self.segment = seg;
        let end = Loc::new(self.segment.number, self.segment_len);
        self.committed.send_modify(|c| c.end = end);
        tracing::info!(segment = %self.segment.path.display(), "started a new segment");
        Ok(())
    }

    fn check_event(&self, e: &EventData) -> Result<()> {
        if e.event_type.is_empty() {
            return Err(Error::InvalidInput("event type is empty".into()));
        }
        if e.event_type.len() > factum_core::model::MAX_EVENT_TYPE_BYTES {
            return Err(Error::LimitExceeded {
                what: "event type length in bytes".into(),
                limit: factum_core::model::MAX_EVENT_TYPE_BYTES as u64,
                actual: e.event_type.len() as u64,
            });
        }
        if e.size() > self.config.max_event_bytes {
            return Err(Error::LimitExceeded {
                what: format!("event {} size in bytes (data + metadata + type)", e.id),
                limit: self.config.max_event_bytes as u64,
                actual: e.size() as u64,
            });
        }
        Ok(())
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
        let target = &req.stream;
        if !target.is_writable() {
            return Err(Error::InvalidInput(format!("stream {target} is read-only")));
        }
        // The stream the frame is written to, and its events.
        let (stream, events, flags) = match &req.kind {
            AppendKind::Events(events) => {
                if target.metadata_of().is_some() {
                    for e in events {
                        if e.event_type != METADATA_EVENT_TYPE {
                            return Err(Error::InvalidInput(format!(
                                "metadata stream {target} only takes {METADATA_EVENT_TYPE} events, not {}",
                                e.event_type
                            )));
                        }
                        StreamMetadata::from_json(&e.data)?;
                    }
                }
                for e in events {
                    self.check_event(e)?;
                }
                (target.clone(), events.clone(), 0u8)
            }
            AppendKind::SetMetadata(m) => {
                let data = m.to_json();
                (
                    target.metadata_stream(),
                    vec![EventData::new(
                        METADATA_EVENT_TYPE,
                        factum_core::ContentType::Json,
                        data,
                    )],
                    0,
                )
            }
            AppendKind::SoftDelete | AppendKind::Tombstone => (target.clone(), Vec::new(), 0),
        };
        let total: usize = events.iter().map(EventData::size).sum();
        if total > self.config.max_append_bytes {
            return Err(Error::LimitExceeded {
                what: "append size in bytes".into(),
                limit: self.config.max_append_bytes as u64,
                actual: total as u64,
            });
        }
        if events.len() > self.config.max_append_events {
            return Err(Error::LimitExceeded {
                what: "events in one append".into(),
                limit: self.config.max_append_events as u64,
                actual: events.len() as u64,
            });
        }
        // A metadata write or an append to `$$x` is refused when `x` is tombstoned.
        let owner = stream.metadata_of().unwrap_or_else(|| stream.clone());
        let owner_rec = overlay.record(owner.as_str())?;
        if owner_rec.as_ref().is_some_and(|r| r.tombstoned) {
            return Err(Error::StreamDeleted { stream: owner });
        }
        let rec = if owner == stream {
            owner_rec
        } else {
            overlay.record(stream.as_str())?
        };
        let current = current_revision(rec.as_ref());
        let next_rev = rec
            .as_ref()
            .and_then(|r| r.last_revision)
            .map_or(0, |r| r + 1);

        let (stream, events, flags) = match &req.kind {
            AppendKind::SoftDelete | AppendKind::Tombstone => {
                let tombstone = matches!(req.kind, AppendKind::Tombstone);
                if !req.expected.is_satisfied_by(current) {
                    return Err(wrong(target, req.expected, current));
                }
                if !tombstone && current == CurrentRevision::NoStream {
                    return Err(Error::StreamNotFound {
                        stream: target.clone(),
                    });
                }
                if tombstone {
                    (
                        stream,
                        vec![EventData::new(
                            TOMBSTONE_EVENT_TYPE,
                            factum_core::ContentType::Json,
                            "{}",
                        )],
                        FLAG_TOMBSTONE,
                    )
                } else {
                    let mut meta = match rec.as_ref().and_then(|r| r.metadata.as_deref()) {
                        Some(m) => StreamMetadata::from_json(m)?,
                        None => StreamMetadata::default(),
                    };
                    meta.truncate_before = Some(next_rev);
                    let meta_stream = target.metadata_stream();
                    let data = meta.to_json();
                    (
                        meta_stream,
                        vec![EventData::new(
                            METADATA_EVENT_TYPE,
                            factum_core::ContentType::Json,
                            data,
                        )],
                        FLAG_SOFT_DELETE,
                    )
                }
            }
            _ => (stream, events, flags),
        };
        // The expectation for deletes was checked on the target above; the
        // frame of a soft delete goes to `$$target`, so look that up too.
        let (rec, current, next_rev) =
            if stream.as_str() == target.as_str() || !matches!(req.kind, AppendKind::SoftDelete) {
                (rec, current, next_rev)
            } else {
                let r = overlay.record(stream.as_str())?;
                let c = current_revision(r.as_ref());
                let n = r
                    .as_ref()
                    .and_then(|r| r.last_revision)
                    .map_or(0, |x| x + 1);
                (r, c, n)
            };
        let is_delete = matches!(req.kind, AppendKind::SoftDelete | AppendKind::Tombstone);
        if !is_delete && !req.expected.is_satisfied_by(current) {
            return self.idempotent_or_wrong(
                &stream,
                req.expected,
                current,
                rec.as_ref(),
                &events,
                overlay,
            );
        }
        if !is_delete
            && matches!(
                req.expected,
                ExpectedRevision::Any | ExpectedRevision::StreamExists
            )
        {
            if let (Some(r), Some(last)) = (rec.as_ref(), events.last()) {
                if r.last_event_id == last.id && !r.deleted {
                    if overlay.touched(stream.as_str()) {
                        return Ok(Outcome::Defer);
                    }
                    let first = r
                        .last_revision
                        .and_then(|l| (l + 1).checked_sub(events.len() as u64));
                    if let Some(done) = first
                        .map(|f| self.already_appended(r, f, &events))
                        .transpose()?
                        .flatten()
                    {
                        return Ok(Outcome::Done(Ok(done)));
                    }
                }
            }
        }
        if events.is_empty() {
            // An empty append only checks the expectation.
            let rev = match current {
                CurrentRevision::Current(r) => r,
                CurrentRevision::NoStream => StreamRevision(u64::MAX),
            };
            let pos = rec.map_or(0, |r| r.last_position);
            return Ok(Outcome::Done(Ok(AppendResult {
                revision: rev,
                position: Position(pos),
            })));
        }
        // Encode the frame.
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
                // A tombstone sits at the end of the revision space, as in KurrentDB.
                revision: if flags == FLAG_TOMBSTONE {
                    TOMBSTONE_REVISION
                } else {
                    next_rev + i as u64
                },
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

    /// A failed expectation: succeed without writing when the same event
    /// ids already stand where the caller expected to put them.
    fn idempotent_or_wrong(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        current: CurrentRevision,
        rec: Option<&StreamRecord>,
        events: &[EventData],
        overlay: &Overlay<'_>,
    ) -> Result<Outcome> {
        let first = match expected {
            ExpectedRevision::Exact(r) => Some(r.0 + 1),
            ExpectedRevision::NoStream => Some(rec.map_or(0, |r| r.base)),
            _ => None,
        };
        if let (Some(first), Some(rec), false) = (first, rec, events.is_empty()) {
            if rec.last_revision.is_some_and(|l| l >= first) {
                if overlay.touched(stream.as_str()) {
                    return Ok(Outcome::Defer);
                }
                if let Some(done) = self.already_appended(rec, first, events)? {
                    return Ok(Outcome::Done(Ok(done)));
                }
            }
        }
        Ok(Outcome::Done(Err(wrong(stream, expected, current))))
    }

    /// If the events at revisions `first..` of the stream have exactly these
    /// ids, the result of that earlier append.
    fn already_appended(
        &self,
        rec: &StreamRecord,
        first: u64,
        events: &[EventData],
    ) -> Result<Option<AppendResult>> {
        if first < rec.base {
            // Events from before a soft delete belong to a past life of the stream.
            return Ok(None);
        }
        let found = self.reader.stream_events(rec.id, first, events.len())?;
        if found.len() != events.len()
            || found
                .iter()
                .zip(events)
                .any(|(f, e)| f.id != e.id || f.revision < first)
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

fn current_revision(rec: Option<&StreamRecord>) -> CurrentRevision {
    match rec {
        Some(r) if !r.deleted => r.last_revision.map_or(CurrentRevision::NoStream, |l| {
            CurrentRevision::Current(StreamRevision(l))
        }),
        _ => CurrentRevision::NoStream,
    }
}

fn wrong(stream: &StreamName, expected: ExpectedRevision, actual: CurrentRevision) -> Error {
    Error::WrongExpectedVersion {
        stream: stream.clone(),
        expected,
        actual,
    }
}

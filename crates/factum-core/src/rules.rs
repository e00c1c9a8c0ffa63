//! The append rules every backend applies, as one pure function.
//!
//! A backend looks up the state of the streams involved, calls [`decide`],
//! and carries out the [`Decision`]: write, answer, reject, or first compare
//! event ids for an idempotent retry. Keeping the rules here means the
//! embedded engine and PostgreSQL cannot drift apart; the conformance
//! testkit checks the outcome.

use crate::error::{Error, Result};
use crate::expected::{AppendResult, CurrentRevision, ExpectedRevision};
use crate::metadata::{StreamMetadata, METADATA_EVENT_TYPE};
use crate::model::{
    ContentType, EventData, Position, StreamName, StreamRevision, MAX_EVENT_TYPE_BYTES,
};
use uuid::Uuid;

pub mod multi;
pub mod retention;

/// The event type of tombstone records.
pub const TOMBSTONE_EVENT_TYPE: &str = "$streamDeleted";
/// The revision of a tombstone record (KurrentDB's `i64::MAX`).
pub const TOMBSTONE_REVISION: u64 = i64::MAX as u64;
/// The `$tb` that marks a stream soft-deleted (KurrentDB's
/// `EventNumber.DeletedStream`, `i64::MAX`): a soft delete writes
/// `{"$tb": 9223372036854775807}` to `$$<stream>`, and metadata a user
/// writes with this `$tb` soft-deletes the stream just the same.
pub const SOFT_DELETED_TRUNCATE_BEFORE: u64 = i64::MAX as u64;

/// What a store knows of one stream (user stream, `$$meta`, `$ce-`, `$et-`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamState {
    /// Revision of the last event (a tombstone does not count).
    pub last_revision: Option<u64>,
    /// Position of the last record.
    pub last_position: u64,
    /// Id of the last event.
    pub last_event_id: Uuid,
    /// Soft-deleted: the stream's metadata holds `$tb` =
    /// [`SOFT_DELETED_TRUNCATE_BEFORE`] (or a soft delete of a store written
    /// before ADR 26 marked it, and it was not written since).
    pub deleted: bool,
    /// Tombstoned.
    pub tombstoned: bool,
    /// First revision of the stream's current life (after its last soft delete).
    pub base: u64,
    /// The stream's metadata JSON, when set.
    pub metadata: Option<Vec<u8>>,
}

impl StreamState {
    /// Where the stream is, for expected-revision checks: its last
    /// revision, which a soft delete keeps (as KurrentDB does).
    pub fn current(&self) -> CurrentRevision {
        match self.last_revision {
            Some(l) => CurrentRevision::Current(StreamRevision(l)),
            None => CurrentRevision::NoStream,
        }
    }

    /// The revision the next event gets.
    /// Saturates at `u64::MAX`, which no stream reaches (a writer refuses
    /// to number an event past it).
    pub fn next_revision(&self) -> u64 {
        self.last_revision.map_or(0, |r| r.saturating_add(1))
    }

    /// Records an event written to this stream.
    pub fn record_event(&mut self, revision: u64, position: u64, id: Uuid, kind: WriteKind) {
        self.last_position = position;
        if kind == WriteKind::Tombstone {
            self.tombstoned = true;
            return;
        }
        self.last_revision = Some(revision);
        self.last_event_id = id;
        self.deleted = false;
    }

    /// Records a `$metadata` event written to `$$<this stream>`. The
    /// stream is soft-deleted exactly when its metadata says so (`$tb` =
    /// [`SOFT_DELETED_TRUNCATE_BEFORE`]), whoever wrote it; a soft delete
    /// of a store written before ADR 26 (flagged, `$tb` = last + 1) counts
    /// too. Deleting starts a new life at the next revision: events before
    /// it stay hidden whatever later metadata says.
    pub fn record_metadata(&mut self, data: &[u8], kind: WriteKind) {
        self.metadata = Some(data.to_vec());
        let marked = StreamMetadata::from_json(data)
            .is_ok_and(|m| m.truncate_before == Some(SOFT_DELETED_TRUNCATE_BEFORE));
        self.deleted = marked || kind == WriteKind::SoftDelete;
        if self.deleted {
            self.base = self.next_revision();
        }
    }

    /// Records a new entry of this link stream (`$ce-…`, `$et-…`); returns
    /// the entry's revision.
    pub fn record_link(&mut self, position: u64, id: Uuid) -> u64 {
        let revision = self.next_revision();
        self.last_revision = Some(revision);
        self.last_position = position;
        self.last_event_id = id;
        revision
    }
}

/// The revisions a stream read covers, after retention (`$maxCount`,
/// `$tb`, `$maxAge`) and soft deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamReadPlan {
    /// Lowest revision to read (inclusive).
    pub lo: u64,
    /// Highest revision to read (inclusive).
    pub hi: u64,
    /// Oldest first?
    pub forwards: bool,
    /// Events created before this are hidden (`$maxAge`).
    pub oldest: Option<crate::Timestamp>,
    /// A `$ce-`/`$et-` stream (events carry their link).
    pub is_link: bool,
}

/// Plans a stream read from the stream's state: the errors for missing,
/// soft-deleted and tombstoned streams, and the visible revision range.
/// `Ok(None)` means the read returns no events.
pub fn plan_stream_read(
    req: &crate::ReadStream,
    state: Option<&StreamState>,
    now: crate::Timestamp,
) -> Result<Option<StreamReadPlan>> {
    use crate::{Direction, StreamStart};
    let name = &req.stream;
    if name.is_all() {
        return Err(Error::InvalidInput("read $all with read_all".into()));
    }
    let Some(state) = state else {
        return Err(Error::StreamNotFound {
            stream: name.clone(),
        });
    };
    if state.tombstoned {
        return Err(Error::StreamDeleted {
            stream: name.clone(),
        });
    }
    let last = match state.last_revision {
        Some(l) if !state.deleted => l,
        _ => {
            return Err(Error::StreamNotFound {
                stream: name.clone(),
            })
        }
    };
    let meta = match &state.metadata {
        Some(m) => StreamMetadata::from_json(m)?,
        None => StreamMetadata::default(),
    };
    let min = meta
        .first_visible_revision(StreamRevision(last))
        .max(state.base);
    let (lo, hi) = match (req.direction, req.from) {
        (Direction::Forwards, StreamStart::End) => return Ok(None),
        (Direction::Forwards, StreamStart::Start) => (min, last),
        (Direction::Forwards, StreamStart::Revision(r)) => (r.0.max(min), last),
        (Direction::Backwards, StreamStart::Start | StreamStart::End) => (min, last),
        (Direction::Backwards, StreamStart::Revision(r)) => (min, r.0.min(last)),
    };
    if lo > hi || req.max_count == 0 {
        return Ok(None);
    }
    Ok(Some(StreamReadPlan {
        lo,
        hi,
        forwards: req.direction == Direction::Forwards,
        oldest: meta.oldest_visible(now),
        is_link: name.category_stream_of().is_some() || name.event_type_stream_of().is_some(),
    }))
}

/// The link streams an event is indexed under, as (prefix, name part):
/// `$ce-<category>` and `$et-<type>` for events of user streams (never for
/// system streams or `$`-types).
pub fn link_parts<'e>(
    stream: &'e StreamName,
    event_type: &'e str,
) -> [(&'static str, Option<&'e str>); 2] {
    if stream.is_system() {
        return [("$ce-", None), ("$et-", None)];
    }
    let typed = !event_type.is_empty() && !event_type.starts_with('$');
    [
        ("$ce-", stream.category()),
        ("$et-", typed.then_some(event_type)),
    ]
}

/// The link stream names of an event (see [`link_parts`]).
pub fn link_streams(stream: &StreamName, event_type: &str) -> Vec<String> {
    link_parts(stream, event_type)
        .into_iter()
        .filter_map(|(prefix, part)| part.map(|p| format!("{prefix}{p}")))
        .collect()
}

/// Size limits of a store.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest event (data + metadata + type), bytes.
    pub max_event_bytes: usize,
    /// Largest append, bytes.
    pub max_append_bytes: usize,
    /// Most events in one append.
    pub max_append_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 16 << 20,
            max_append_bytes: 64 << 20,
            max_append_events: 100_000,
        }
    }
}

/// `EventStore`'s four writes for a backend whose writer takes one core
/// [`Operation`] (the engine, PostgreSQL): written inside
/// `impl EventStore for …`, it expands to `append`, `set_stream_metadata`,
/// `delete_stream` and `tombstone_stream`, each one call of the backend's
/// own
/// `async fn submit(&self, StreamName, ExpectedRevision, Operation) -> Result<AppendResult>`;
/// a delete or tombstone answers the position of the record it wrote.
/// What a write means is decided once, by [`decide`] in the writer; this
/// only spares each backend the same four shells.
#[macro_export]
macro_rules! writes_through_submit {
    () => {
        async fn append(
            &self,
            stream: $crate::StreamName,
            expected: $crate::ExpectedRevision,
            events: ::std::vec::Vec<$crate::EventData>,
        ) -> $crate::Result<$crate::AppendResult> {
            self.submit(stream, expected, $crate::rules::Operation::Append(events))
                .await
        }

        async fn set_stream_metadata(
            &self,
            stream: $crate::StreamName,
            expected: $crate::ExpectedRevision,
            metadata: $crate::StreamMetadata,
        ) -> $crate::Result<$crate::AppendResult> {
            self.submit(
                stream,
                expected,
                $crate::rules::Operation::SetMetadata(metadata),
            )
            .await
        }

        $crate::writes_through_submit!(@delete delete_stream, SoftDelete);
        $crate::writes_through_submit!(@delete tombstone_stream, Tombstone);
    };
    (@delete $method:ident, $operation:ident) => {
        async fn $method(
            &self,
            stream: $crate::StreamName,
            expected: $crate::ExpectedRevision,
        ) -> $crate::Result<$crate::DeleteResult> {
            self.submit(stream, expected, $crate::rules::Operation::$operation)
                .await
                .map(|r| $crate::DeleteResult {
                    position: r.position,
                })
        }
    };
}

/// What a request does to a stream.
#[derive(Clone, Debug)]
pub enum Operation {
    /// Append these events.
    Append(Vec<EventData>),
    /// Replace the stream's metadata (a `$metadata` event in `$$stream`).
    SetMetadata(StreamMetadata),
    /// Soft delete.
    SoftDelete,
    /// Tombstone.
    Tombstone,
}

/// The kind of record a write makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// Ordinary events.
    Events,
    /// A `$metadata` event that soft-deletes its stream.
    SoftDelete,
    /// A tombstone (`$streamDeleted` at [`TOMBSTONE_REVISION`]).
    Tombstone,
}

/// What the backend does with a request.
#[derive(Debug)]
pub enum Decision {
    /// Write `events` to `stream` from revision `first_revision`.
    Write {
        /// The stream written to.
        stream: StreamName,
        /// The events.
        events: Vec<EventData>,
        /// Their kind.
        kind: WriteKind,
        /// Revision of the first event (tombstones use [`TOMBSTONE_REVISION`]).
        first_revision: u64,
        /// The write recreates a soft-deleted stream: right after `events`
        /// (possibly none), in the same atomic write, this `$metadata` event
        /// of the store's own moves the stream's `$tb` to the first revision
        /// of its new life (see [`Undelete`]). The answer stays that of
        /// `events` ([`write_answer`]).
        undelete: Option<Undelete>,
    },
    /// Answer with this result and write nothing.
    Done(AppendResult),
    /// An idempotent retry is possible: if the events of `stream` from
    /// revision `first` have exactly the ids `ids`, answer with that earlier
    /// append's result; otherwise do `otherwise`.
    CheckRetry {
        /// The stream.
        stream: StreamName,
        /// First revision to compare.
        first: u64,
        /// The append's event ids.
        ids: Vec<Uuid>,
        /// What to do when they differ.
        otherwise: Box<Decision>,
    },
    /// Refuse with this error.
    Reject(Error),
}

/// The `$metadata` event with which the store recreates a soft-deleted
/// stream, as KurrentDB does: the stream's metadata (as the write that
/// recreates it leaves it) with `$tb` = the stream's revision after its
/// last event, written to `$$<stream>` after that write's events.
#[derive(Clone, Debug)]
pub struct Undelete {
    /// `$$<stream>`.
    pub stream: StreamName,
    /// Its revision in `$$<stream>`.
    pub revision: u64,
    /// The `$metadata` event.
    pub event: EventData,
}

/// The result of a write of `count` events from `first_revision` whose
/// first record is at `first_position`: the revision and position of its
/// last event. With no events (an empty append that recreates a stream)
/// the revision is the one before `first_revision` (`u64::MAX`: none) and
/// the position that of the [`Undelete`] event that follows.
pub fn write_answer(first_revision: u64, count: u64, first_position: u64) -> AppendResult {
    AppendResult {
        revision: StreamRevision((first_revision + count).wrapping_sub(1)),
        position: Position(first_position + count.max(1) - 1),
    }
}

/// The stream whose state decides a request (the target of a delete or a
/// metadata write; `x` for an append to `$$x`), and the stream written to.
pub fn streams_of(target: &StreamName, op: &Operation) -> (StreamName, StreamName) {
    match op {
        Operation::Append(_) => (
            target.metadata_of().unwrap_or_else(|| target.clone()),
            target.clone(),
        ),
        Operation::SetMetadata(_) | Operation::SoftDelete => {
            (target.clone(), target.metadata_stream())
        }
        Operation::Tombstone => (target.clone(), target.clone()),
    }
}

fn check_events(target: &StreamName, events: &[EventData], limits: &Limits) -> Result<()> {
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
        if e.event_type.is_empty() {
            return Err(Error::InvalidInput("event type is empty".into()));
        }
        // As in stream names: a control character is never meant, and NUL
        // cannot be stored at all by PostgreSQL's `text`, where it would fail
        // the whole write group instead of this one append.
        if let Some(c) = e.event_type.chars().find(|c| c.is_control()) {
            return Err(Error::InvalidInput(format!(
                "event type {:?} contains the control character {c:?}",
                e.event_type
            )));
        }
        if e.event_type.len() > MAX_EVENT_TYPE_BYTES {
            return Err(Error::LimitExceeded {
                what: "event type length in bytes".into(),
                limit: MAX_EVENT_TYPE_BYTES as u64,
                actual: e.event_type.len() as u64,
            });
        }
        if e.size() > limits.max_event_bytes {
            return Err(Error::LimitExceeded {
                what: format!("event {} size in bytes (data + metadata + type)", e.id),
                limit: limits.max_event_bytes as u64,
                actual: e.size() as u64,
            });
        }
    }
    let total: usize = events.iter().map(EventData::size).sum();
    if total > limits.max_append_bytes {
        return Err(Error::LimitExceeded {
            what: "append size in bytes".into(),
            limit: limits.max_append_bytes as u64,
            actual: total as u64,
        });
    }
    if events.len() > limits.max_append_events {
        return Err(Error::LimitExceeded {
            what: "events in one append".into(),
            limit: limits.max_append_events as u64,
            actual: events.len() as u64,
        });
    }
    Ok(())
}

/// The checks of [`decide`] that need no stream state: a writable target,
/// valid events within the limits, an expectation in range. A backend may
/// call it before a request joins others (PostgreSQL's write groups), so
/// bad input never reaches the database; [`decide`] calls it first.
pub fn check_input(
    target: &StreamName,
    expected: ExpectedRevision,
    op: &Operation,
    limits: &Limits,
) -> Result<()> {
    if !target.is_writable() {
        return Err(Error::InvalidInput(format!("stream {target} is read-only")));
    }
    if let Operation::Append(events) = op {
        check_events(target, events, limits)?;
    }
    expected.checked().map(|_| ())
}

/// Decides a request. `owner` is the state of the first stream of
/// [`streams_of`], `written` that of the second (the same stream for plain
/// appends and tombstones); `None` when the store has never seen it.
/// `metadata` is the state of `$$<owner>`, used only to recreate a
/// soft-deleted owner: a backend may pass `None` unless `owner.deleted`
/// (then `None` means `$$<owner>` does not exist).
///
/// Soft deletes follow KurrentDB (ADR 26): a soft-deleted stream keeps its
/// last revision for expectations; `NoStream`, `Any` and its last revision
/// are satisfied, `StreamExists` answers `StreamDeleted`. An append (empty
/// or not), a metadata write or an append to `$$<owner>` that passes its
/// checks recreates it, with an [`Undelete`].
pub fn decide(
    target: &StreamName,
    expected: ExpectedRevision,
    op: Operation,
    owner: Option<&StreamState>,
    written: Option<&StreamState>,
    metadata: Option<&StreamState>,
    limits: &Limits,
) -> Decision {
    if let Err(e) = check_input(target, expected, &op, limits) {
        return Decision::Reject(e);
    }
    let (owner_name, stream) = streams_of(target, &op);
    if owner.is_some_and(|s| s.tombstoned) {
        return Decision::Reject(Error::StreamDeleted { stream: owner_name });
    }
    let empty = StreamState::default();
    let owner = owner.unwrap_or(&empty);
    let written = written.unwrap_or(&empty);
    let d = match op {
        Operation::Tombstone | Operation::SoftDelete => {
            if let Err(e) = check_expected(target, expected, owner) {
                return Decision::Reject(e);
            }
            if matches!(op, Operation::Tombstone) {
                return Decision::Write {
                    stream,
                    events: vec![EventData::new(
                        TOMBSTONE_EVENT_TYPE,
                        ContentType::Json,
                        "{}",
                    )],
                    kind: WriteKind::Tombstone,
                    first_revision: TOMBSTONE_REVISION,
                    undelete: None,
                };
            }
            // Never written, no metadata: nothing to delete. (KurrentDB
            // answers a wrong expected version; Factum keeps its answer.)
            if owner.last_revision.is_none() && owner.metadata.is_none() {
                return Decision::Reject(Error::StreamNotFound {
                    stream: target.clone(),
                });
            }
            // As KurrentDB: the metadata becomes `$tb` alone.
            let deleted = StreamMetadata {
                truncate_before: Some(SOFT_DELETED_TRUNCATE_BEFORE),
                ..StreamMetadata::default()
            };
            return Decision::Write {
                stream,
                events: vec![metadata_event(&deleted)],
                kind: WriteKind::SoftDelete,
                first_revision: written.next_revision(),
                undelete: None,
            };
        }
        Operation::SetMetadata(m) => append(&stream, expected, vec![metadata_event(&m)], written),
        Operation::Append(events) => append(&stream, expected, events, written),
    };
    if !owner.deleted {
        return d;
    }
    recreate(
        d,
        &Recreated {
            name: &owner_name,
            owner,
            written_name: &stream,
            written,
            metadata,
        },
    )
}

fn metadata_event(m: &StreamMetadata) -> EventData {
    EventData::new(METADATA_EVENT_TYPE, ContentType::Json, m.to_json())
}

/// Checks an expectation against a stream, counting soft deletes as
/// KurrentDB does (see [`decide`]).
fn check_expected(
    stream: &StreamName,
    expected: ExpectedRevision,
    state: &StreamState,
) -> Result<()> {
    let current = state.current();
    let met = match (state.deleted, expected) {
        (false, _) => expected.is_satisfied_by(current),
        (true, ExpectedRevision::Any | ExpectedRevision::NoStream) => true,
        (true, ExpectedRevision::StreamExists) => {
            return Err(Error::StreamDeleted {
                stream: stream.clone(),
            })
        }
        (true, ExpectedRevision::Exact(r)) => current == CurrentRevision::Current(r),
    };
    match met {
        true => Ok(()),
        false => Err(Error::WrongExpectedVersion {
            stream: stream.clone(),
            expected,
            actual: current,
        }),
    }
}

/// A soft-deleted stream that a write recreates.
struct Recreated<'a> {
    name: &'a StreamName,
    owner: &'a StreamState,
    /// The stream written: the owner, or `$$<owner>`.
    written_name: &'a StreamName,
    written: &'a StreamState,
    /// `$$<owner>`.
    metadata: Option<&'a StreamState>,
}

/// Adds the [`Undelete`] to a decision that writes (or, empty, checks)
/// the soft-deleted stream or its `$$` stream.
fn recreate(d: Decision, r: &Recreated<'_>) -> Decision {
    let (stream, events, kind, first_revision) = match d {
        Decision::Write {
            stream,
            events,
            kind,
            first_revision,
            undelete: None,
        } => (stream, events, kind, first_revision),
        // An empty append that passed its check recreates too.
        Decision::Done(_) => (
            r.written_name.clone(),
            Vec::new(),
            WriteKind::Events,
            r.written.next_revision(),
        ),
        Decision::CheckRetry {
            stream,
            first,
            ids,
            otherwise,
        } => {
            return Decision::CheckRetry {
                stream,
                first,
                ids,
                otherwise: Box::new(recreate(*otherwise, r)),
            }
        }
        d => return d,
    };
    let meta_stream = r.name.metadata_stream();
    // The metadata as this write leaves it, and the `$$` revision after it.
    let (latest, revision) = if stream == meta_stream {
        let latest = events.last().map(|e| &e.data[..]);
        (
            latest.or(r.owner.metadata.as_deref()),
            first_revision + events.len() as u64,
        )
    } else {
        (
            r.owner.metadata.as_deref(),
            r.metadata.map_or(0, StreamState::next_revision),
        )
    };
    let mut m = match latest.map(StreamMetadata::from_json) {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Decision::Reject(e),
        None => StreamMetadata::default(),
    };
    m.truncate_before = Some(r.owner.next_revision());
    Decision::Write {
        stream,
        events,
        kind,
        first_revision,
        undelete: Some(Undelete {
            stream: meta_stream,
            revision,
            event: metadata_event(&m),
        }),
    }
}

fn append(
    stream: &StreamName,
    expected: ExpectedRevision,
    events: Vec<EventData>,
    state: &StreamState,
) -> Decision {
    let current = state.current();
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    // A retry of an append already made in this life of the stream?
    let has_events = !events.is_empty();
    let retry_from = |first: u64| {
        has_events && first >= state.base && state.last_revision.is_some_and(|l| l >= first)
    };
    if let Err(e) = check_expected(stream, expected, state) {
        let refused = Decision::Reject(e);
        let first = match expected {
            // `checked` keeps `r` at most `i64::MAX`; checked all the same.
            ExpectedRevision::Exact(r) => r.0.checked_add(1),
            ExpectedRevision::NoStream => Some(state.base),
            _ => None,
        };
        return match first {
            Some(first) if retry_from(first) => Decision::CheckRetry {
                stream: stream.clone(),
                first,
                ids,
                otherwise: Box::new(refused),
            },
            _ => refused,
        };
    }
    if events.is_empty() {
        let revision = match current {
            CurrentRevision::Current(r) => r,
            CurrentRevision::NoStream => StreamRevision(u64::MAX),
        };
        return Decision::Done(AppendResult {
            revision,
            position: Position(state.last_position),
        });
    }
    let first_revision = state.next_revision();
    // Event revisions stay below the tombstone's; no stream gets there, but
    // a revision is never wrapped or repeated.
    if first_revision
        .checked_add(events.len() as u64)
        .is_none_or(|end| end > TOMBSTONE_REVISION)
    {
        return Decision::Reject(Error::LimitExceeded {
            what: format!("revision of the last event in stream {stream}"),
            limit: TOMBSTONE_REVISION - 1,
            actual: first_revision.saturating_add(events.len() as u64 - 1),
        });
    }
    let write = Decision::Write {
        stream: stream.clone(),
        first_revision,
        events,
        kind: WriteKind::Events,
        undelete: None,
    };
    let last_id = *ids.last().expect("non-empty");
    if matches!(
        expected,
        ExpectedRevision::Any | ExpectedRevision::StreamExists
    ) && !state.deleted
        && state.last_event_id == last_id
    {
        if let Some(first) = state
            .last_revision
            .and_then(|l| l.checked_add(1)?.checked_sub(ids.len() as u64))
        {
            if retry_from(first) {
                return Decision::CheckRetry {
                    stream: stream.clone(),
                    first,
                    ids,
                    otherwise: Box::new(write),
                };
            }
        }
    }
    write
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: &str) -> StreamName {
        StreamName::new(n).unwrap()
    }

    #[test]
    fn wrong_expectation_with_a_possible_retry_asks_for_an_id_check() {
        let state = StreamState {
            last_revision: Some(2),
            ..StreamState::default()
        };
        let ev = vec![EventData::binary("T", "x")];
        let d = decide(
            &s("a-1"),
            ExpectedRevision::Exact(StreamRevision(1)),
            Operation::Append(ev),
            Some(&state),
            Some(&state),
            None,
            &Limits::default(),
        );
        let Decision::CheckRetry {
            first, otherwise, ..
        } = d
        else {
            panic!("{d:?}")
        };
        assert_eq!(first, 2);
        assert!(matches!(
            *otherwise,
            Decision::Reject(Error::WrongExpectedVersion { .. })
        ));
    }

    #[test]
    fn tombstoned_owner_rejects_metadata_writes() {
        let state = StreamState {
            tombstoned: true,
            ..StreamState::default()
        };
        let d = decide(
            &s("a-1"),
            ExpectedRevision::Any,
            Operation::SetMetadata(StreamMetadata::default()),
            Some(&state),
            None,
            None,
            &Limits::default(),
        );
        assert!(matches!(d, Decision::Reject(Error::StreamDeleted { .. })));
    }

    #[test]
    fn exact_revisions_past_i64_max_are_invalid_input_never_a_panic() {
        let state = StreamState {
            last_revision: Some(2),
            ..StreamState::default()
        };
        for r in [i64::MAX as u64 + 1, u64::MAX - 1, u64::MAX] {
            for op in [
                Operation::Append(vec![EventData::binary("T", "x")]),
                Operation::SoftDelete,
                Operation::Tombstone,
                Operation::SetMetadata(StreamMetadata::default()),
            ] {
                let d = decide(
                    &s("a-1"),
                    ExpectedRevision::Exact(StreamRevision(r)),
                    op,
                    Some(&state),
                    Some(&state),
                    None,
                    &Limits::default(),
                );
                let Decision::Reject(Error::InvalidInput(m)) = d else {
                    panic!("{r}: {d:?}")
                };
                assert!(m.contains("out of range"), "{m}");
            }
        }
        // The largest allowed one is an ordinary wrong expectation.
        let d = decide(
            &s("a-1"),
            ExpectedRevision::Exact(StreamRevision(i64::MAX as u64)),
            Operation::Append(vec![EventData::binary("T", "x")]),
            Some(&state),
            Some(&state),
            None,
            &Limits::default(),
        );
        assert!(
            matches!(d, Decision::Reject(Error::WrongExpectedVersion { .. })),
            "{d:?}"
        );
    }

    #[test]
    fn event_revisions_stay_below_the_tombstone() {
        let at = |last: u64, n: usize| {
            let state = StreamState {
                last_revision: Some(last),
                ..StreamState::default()
            };
            decide(
                &s("a-1"),
                ExpectedRevision::Any,
                Operation::Append(vec![EventData::binary("T", "x"); n]),
                Some(&state),
                Some(&state),
                None,
                &Limits::default(),
            )
        };
        let Decision::Write { first_revision, .. } = at(TOMBSTONE_REVISION - 3, 2) else {
            panic!()
        };
        assert_eq!(first_revision, TOMBSTONE_REVISION - 2);
        for (last, n) in [
            (TOMBSTONE_REVISION - 2, 2),
            (TOMBSTONE_REVISION - 1, 1),
            (u64::MAX, 1),
        ] {
            assert!(
                matches!(at(last, n), Decision::Reject(Error::LimitExceeded { .. })),
                "{last} + {n}"
            );
        }
    }

    #[test]
    fn control_characters_in_event_types_are_invalid_input() {
        for bad in ["a\0b", "x\n", "\u{7f}", "\u{9f}"] {
            let d = decide(
                &s("a-1"),
                ExpectedRevision::Any,
                Operation::Append(vec![
                    EventData::binary("T", "x"),
                    EventData::binary(bad, "x"),
                ]),
                None,
                None,
                None,
                &Limits::default(),
            );
            let Decision::Reject(Error::InvalidInput(m)) = d else {
                panic!("{bad:?}: {d:?}")
            };
            assert!(m.contains("control character"), "{m}");
        }
    }

    #[test]
    fn read_only_streams_are_rejected() {
        let d = decide(
            &s("$ce-a"),
            ExpectedRevision::Any,
            Operation::Append(vec![]),
            None,
            None,
            None,
            &Limits::default(),
        );
        assert!(matches!(d, Decision::Reject(Error::InvalidInput(_))));
    }

    /// `a-1` with revisions 0..1, soft-deleted by `delete(Exact(1))`, and
    /// its `$$a-1` holding the one `$metadata` event of the delete.
    fn soft_deleted() -> (StreamState, StreamState) {
        let mut owner = StreamState {
            last_revision: Some(1),
            ..StreamState::default()
        };
        let mut meta = StreamState::default();
        let d = decide(
            &s("a-1"),
            ExpectedRevision::Exact(StreamRevision(1)),
            Operation::SoftDelete,
            Some(&owner),
            None,
            None,
            &Limits::default(),
        );
        let Decision::Write {
            events,
            kind,
            first_revision,
            ..
        } = d
        else {
            panic!("{d:?}")
        };
        assert_eq!((kind, first_revision), (WriteKind::SoftDelete, 0));
        assert_eq!(&events[0].data[..], br#"{"$tb":9223372036854775807}"#);
        meta.record_event(0, 7, events[0].id, kind);
        owner.record_metadata(&events[0].data, kind);
        assert!(owner.deleted);
        assert_eq!(owner.base, 2);
        (owner, meta)
    }

    fn on_deleted(expected: ExpectedRevision, op: Operation) -> Decision {
        let (owner, meta) = soft_deleted();
        let written = match op {
            Operation::Append(_) | Operation::SoftDelete | Operation::Tombstone => &owner,
            Operation::SetMetadata(_) => &meta,
        };
        decide(
            &s("a-1"),
            expected,
            op,
            Some(&owner),
            Some(written),
            Some(&meta),
            &Limits::default(),
        )
    }

    fn exact(r: u64) -> ExpectedRevision {
        ExpectedRevision::Exact(StreamRevision(r))
    }

    fn undelete_of(d: &Decision) -> (u64, StreamMetadata) {
        let Decision::Write {
            undelete: Some(u), ..
        } = d
        else {
            panic!("no undelete: {d:?}")
        };
        assert_eq!(u.stream.as_str(), "$$a-1");
        assert_eq!(u.event.event_type, METADATA_EVENT_TYPE);
        (
            u.revision,
            StreamMetadata::from_json(&u.event.data).unwrap(),
        )
    }

    #[test]
    fn a_soft_deleted_stream_keeps_its_last_revision_for_deletes() {
        let d = on_deleted(exact(1), Operation::SoftDelete);
        assert!(
            matches!(
                d,
                Decision::Write {
                    kind: WriteKind::SoftDelete,
                    undelete: None,
                    ..
                }
            ),
            "{d:?}"
        );
        let d = on_deleted(exact(0), Operation::SoftDelete);
        let Decision::Reject(Error::WrongExpectedVersion { actual, .. }) = d else {
            panic!("{d:?}")
        };
        assert_eq!(actual, CurrentRevision::Current(StreamRevision(1)));
        let d = on_deleted(ExpectedRevision::StreamExists, Operation::SoftDelete);
        assert!(
            matches!(d, Decision::Reject(Error::StreamDeleted { .. })),
            "{d:?}"
        );
        let d = on_deleted(ExpectedRevision::StreamExists, Operation::Tombstone);
        assert!(
            matches!(d, Decision::Reject(Error::StreamDeleted { .. })),
            "{d:?}"
        );
    }

    #[test]
    fn appends_to_a_soft_deleted_stream_recreate_it_after_its_last_revision() {
        let ev = || Operation::Append(vec![EventData::binary("T", "x")]);
        for expected in [exact(1), ExpectedRevision::NoStream, ExpectedRevision::Any] {
            let d = on_deleted(expected, ev());
            let Decision::Write { first_revision, .. } = &d else {
                panic!("{expected}: {d:?}")
            };
            assert_eq!(*first_revision, 2, "{expected}");
            assert_eq!(
                undelete_of(&d),
                (
                    1,
                    StreamMetadata {
                        truncate_before: Some(2),
                        ..StreamMetadata::default()
                    }
                )
            );
        }
        let d = on_deleted(ExpectedRevision::StreamExists, ev());
        assert!(
            matches!(d, Decision::Reject(Error::StreamDeleted { .. })),
            "{d:?}"
        );
        let d = on_deleted(exact(0), ev());
        let Decision::Reject(Error::WrongExpectedVersion { actual, .. }) = d else {
            panic!("{d:?}")
        };
        assert_eq!(actual, CurrentRevision::Current(StreamRevision(1)));
        // An empty append recreates too, answering the last revision.
        let d = on_deleted(ExpectedRevision::Any, Operation::Append(vec![]));
        let Decision::Write {
            events,
            first_revision,
            ..
        } = &d
        else {
            panic!("{d:?}")
        };
        assert!(events.is_empty());
        assert_eq!(
            write_answer(*first_revision, 0, 10),
            AppendResult {
                revision: StreamRevision(1),
                position: Position(10)
            }
        );
        assert_eq!(undelete_of(&d).0, 1);
    }

    #[test]
    fn a_metadata_write_recreates_keeping_its_keys_but_tb() {
        let m = StreamMetadata {
            max_count: Some(100),
            truncate_before: Some(SOFT_DELETED_TRUNCATE_BEFORE),
            ..StreamMetadata::default()
        };
        let d = on_deleted(exact(0), Operation::SetMetadata(m));
        let Decision::Write {
            stream,
            first_revision,
            ..
        } = &d
        else {
            panic!("{d:?}")
        };
        assert_eq!((stream.as_str(), *first_revision), ("$$a-1", 1));
        let (revision, meta) = undelete_of(&d);
        assert_eq!(revision, 2, "after the user's metadata event");
        assert_eq!((meta.max_count, meta.truncate_before), (Some(100), Some(2)));

        // The same for an append straight to `$$a-1`.
        let (owner, meta_state) = soft_deleted();
        let event = EventData::new(METADATA_EVENT_TYPE, ContentType::Json, r#"{"k":1}"#);
        let d = decide(
            &s("$$a-1"),
            ExpectedRevision::Any,
            Operation::Append(vec![event]),
            Some(&owner),
            Some(&meta_state),
            Some(&meta_state),
            &Limits::default(),
        );
        let (revision, meta) = undelete_of(&d);
        assert_eq!(revision, 2);
        assert_eq!(
            (meta.custom["k"].as_i64(), meta.truncate_before),
            (Some(1), Some(2))
        );
    }

    #[test]
    fn metadata_with_tb_i64_max_soft_deletes_and_other_metadata_does_not() {
        let mut state = StreamState {
            last_revision: Some(4),
            ..StreamState::default()
        };
        state.record_metadata(br#"{"$tb":9223372036854775807,"k":1}"#, WriteKind::Events);
        assert!(state.deleted);
        assert_eq!(state.base, 5);
        state.record_metadata(br#"{"$tb":5}"#, WriteKind::Events);
        assert!(!state.deleted);
        assert_eq!(
            state.base, 5,
            "the new life starts where the delete left it"
        );
    }

    #[test]
    fn write_answers_name_the_last_event() {
        let a = |r, p| AppendResult {
            revision: StreamRevision(r),
            position: Position(p),
        };
        assert_eq!(write_answer(2, 3, 10), a(4, 12));
        assert_eq!(write_answer(0, 0, 10), a(u64::MAX, 10));
        assert_eq!(
            write_answer(TOMBSTONE_REVISION, 1, 3),
            a(TOMBSTONE_REVISION, 3)
        );
    }
}

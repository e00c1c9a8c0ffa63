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

/// The event type of tombstone records.
pub const TOMBSTONE_EVENT_TYPE: &str = "$streamDeleted";
/// The revision of a tombstone record (KurrentDB's `i64::MAX`).
pub const TOMBSTONE_REVISION: u64 = i64::MAX as u64;

/// What a store knows of one stream (user stream, `$$meta`, `$ce-`, `$et-`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamState {
    /// Revision of the last event (a tombstone does not count).
    pub last_revision: Option<u64>,
    /// Position of the last record.
    pub last_position: u64,
    /// Id of the last event.
    pub last_event_id: Uuid,
    /// Soft-deleted, not written since.
    pub deleted: bool,
    /// Tombstoned.
    pub tombstoned: bool,
    /// First revision of the stream's current life (after its last soft delete).
    pub base: u64,
    /// The stream's metadata JSON, when set.
    pub metadata: Option<Vec<u8>>,
}

impl StreamState {
    /// Where the stream is, for expected-revision checks.
    pub fn current(&self) -> CurrentRevision {
        match self.last_revision {
            Some(l) if !self.deleted => CurrentRevision::Current(StreamRevision(l)),
            _ => CurrentRevision::NoStream,
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

    /// Records a `$metadata` event written to `$$<this stream>`.
    pub fn record_metadata(&mut self, data: &[u8], kind: WriteKind) {
        self.metadata = Some(data.to_vec());
        if kind == WriteKind::SoftDelete {
            self.deleted = true;
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

fn wrong(stream: &StreamName, expected: ExpectedRevision, actual: CurrentRevision) -> Decision {
    Decision::Reject(Error::WrongExpectedVersion {
        stream: stream.clone(),
        expected,
        actual,
    })
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
pub fn decide(
    target: &StreamName,
    expected: ExpectedRevision,
    op: Operation,
    owner: Option<&StreamState>,
    written: Option<&StreamState>,
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
    let meta_event =
        |m: &StreamMetadata| EventData::new(METADATA_EVENT_TYPE, ContentType::Json, m.to_json());
    match op {
        Operation::Tombstone | Operation::SoftDelete => {
            let current = owner.current();
            if !expected.is_satisfied_by(current) {
                return wrong(target, expected, current);
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
                };
            }
            if current == CurrentRevision::NoStream {
                return Decision::Reject(Error::StreamNotFound {
                    stream: target.clone(),
                });
            }
            let mut meta = match owner.metadata.as_deref().map(StreamMetadata::from_json) {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Decision::Reject(e),
                None => StreamMetadata::default(),
            };
            meta.truncate_before = Some(owner.next_revision());
            Decision::Write {
                stream,
                events: vec![meta_event(&meta)],
                kind: WriteKind::SoftDelete,
                first_revision: written.next_revision(),
            }
        }
        Operation::SetMetadata(m) => append(stream, expected, vec![meta_event(&m)], written),
        Operation::Append(events) => append(stream, expected, events, written),
    }
}

fn append(
    stream: StreamName,
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
    if !expected.is_satisfied_by(current) {
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
                otherwise: Box::new(wrong(&stream, expected, current)),
            },
            _ => wrong(&stream, expected, current),
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
                    stream,
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
            &Limits::default(),
        );
        assert!(matches!(d, Decision::Reject(Error::InvalidInput(_))));
    }
}

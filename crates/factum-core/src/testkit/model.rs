//! A simple in-memory reference model of the contract in the module docs.
//!
//! It is the oracle of [`model_proptest`](super::model_proptest) and, in this
//! crate's own tests, the backend the suite is validated against. Clarity
//! over speed: everything is a scan over vectors.

use std::collections::HashMap;

use bytes::Bytes;
use uuid::Uuid;

use super::{MAX_EVENT_SIZE, TOMBSTONE_EVENT_TYPE, TOMBSTONE_REVISION};
use crate::error::{Error, Result};
use crate::expected::{AppendResult, CurrentRevision, DeleteResult, ExpectedRevision};
use crate::metadata::{StreamMetadata, StreamMetadataResult, METADATA_EVENT_TYPE};
use crate::model::{
    ContentType, EventData, Link, Position, RecordedEvent, StreamName, StreamRevision, Timestamp,
    MAX_EVENT_TYPE_BYTES,
};
use crate::multi::{
    ActualState, MultiAppend, MultiAppendResult, StreamAppended, StreamCondition, Violation,
};
use crate::read::{
    AllStart, Direction, PageBound, ReadAll, ReadStream, StreamStart, SubscriptionStart,
    SubscriptionTarget,
};

/// The `$tb` that marks a stream soft-deleted (KurrentDB's `DeletedStream`).
const SOFT_DELETED: u64 = i64::MAX as u64;

/// One stream (user or `$$` metadata stream).
#[derive(Default, Debug)]
struct StreamState {
    /// Index in the log of each revision (its position is one more: the
    /// first event is at position 1).
    positions: Vec<u64>,
    /// First revision of the current life (after the last soft delete).
    base: u64,
    tombstoned: bool,
    /// Current metadata (for user streams; written through `$$<stream>`).
    metadata: StreamMetadata,
}

impl StreamState {
    fn len(&self) -> u64 {
        self.positions.len() as u64
    }
    /// The last revision: a soft delete keeps it.
    fn current(&self) -> CurrentRevision {
        match self.len() {
            0 => CurrentRevision::NoStream,
            n => CurrentRevision::Current(StreamRevision(n - 1)),
        }
    }
    /// Soft-deleted: the metadata says `$tb` = `i64::MAX`.
    fn soft_deleted(&self) -> bool {
        self.metadata.truncate_before == Some(SOFT_DELETED)
    }
}

/// The reference model.
#[derive(Default, Debug)]
pub(crate) struct Model {
    log: Vec<RecordedEvent>,
    streams: HashMap<StreamName, StreamState>,
    /// Link stream name (`$ce-…`, `$et-…`) → log indexes.
    links: HashMap<String, Vec<u64>>,
    last_created: Option<Timestamp>,
}

fn wev(stream: &StreamName, expected: ExpectedRevision, actual: CurrentRevision) -> Error {
    Error::WrongExpectedVersion {
        stream: stream.clone(),
        expected,
        actual,
    }
}

fn check_writable(stream: &StreamName) -> Result<()> {
    if stream.is_writable() {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!("stream {stream} is read-only")))
    }
}

fn validate(events: &[EventData]) -> Result<()> {
    for e in events {
        if e.event_type.is_empty() {
            return Err(Error::InvalidInput("event type is empty".into()));
        }
        if e.event_type.chars().any(char::is_control) {
            return Err(Error::InvalidInput(
                "event type contains a control character".into(),
            ));
        }
        if e.event_type.len() > MAX_EVENT_TYPE_BYTES {
            return Err(Error::LimitExceeded {
                what: "event type length in bytes".into(),
                limit: MAX_EVENT_TYPE_BYTES as u64,
                actual: e.event_type.len() as u64,
            });
        }
        if e.size() > MAX_EVENT_SIZE {
            return Err(Error::LimitExceeded {
                what: "event size in bytes".into(),
                limit: MAX_EVENT_SIZE as u64,
                actual: e.size() as u64,
            });
        }
    }
    Ok(())
}

impl Model {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn state(&self, stream: &StreamName) -> Option<&StreamState> {
        self.streams.get(stream)
    }

    fn tombstoned(&self, stream: &StreamName) -> bool {
        self.state(stream).is_some_and(|s| s.tombstoned)
    }

    fn soft_deleted(&self, stream: &StreamName) -> bool {
        self.state(stream).is_some_and(StreamState::soft_deleted)
    }

    /// Is `expected` met by `stream`? A soft-deleted stream meets `Any`,
    /// `NoStream` and its last revision; `StreamExists` is `StreamDeleted`.
    fn meets(&self, stream: &StreamName, expected: ExpectedRevision) -> Result<bool> {
        let current = self.current(stream);
        if !self.soft_deleted(stream) {
            return Ok(expected.is_satisfied_by(current));
        }
        match expected {
            ExpectedRevision::Any | ExpectedRevision::NoStream => Ok(true),
            ExpectedRevision::StreamExists => Err(Error::StreamDeleted {
                stream: stream.clone(),
            }),
            ExpectedRevision::Exact(r) => Ok(current == CurrentRevision::Current(r)),
        }
    }

    /// Sets a stream's metadata; metadata with `$tb` = `i64::MAX`
    /// soft-deletes it, starting a new life at its next revision.
    fn set_meta(&mut self, stream: &StreamName, metadata: StreamMetadata) {
        let state = self.streams.entry(stream.clone()).or_default();
        state.metadata = metadata;
        if state.soft_deleted() {
            state.base = state.len();
        }
    }

    /// The revision from which a soft-deleted stream would be recreated
    /// (its next one); `None` when it is not soft-deleted.
    fn recreate_from(&self, stream: &StreamName) -> Option<u64> {
        self.state(stream)
            .filter(|s| s.soft_deleted())
            .map(StreamState::len)
    }

    /// Recreates `stream` from revision `from` (see [`Model::recreate_from`],
    /// taken before the write that recreates it): the store's own
    /// `$metadata` event, the stream's metadata with `$tb` = `from`, after
    /// that write. Returns its position.
    fn undelete(
        &mut self,
        stream: &StreamName,
        from: Option<u64>,
        now: Timestamp,
    ) -> Option<Position> {
        let from = from?;
        let mut metadata = self.streams[stream].metadata.clone();
        metadata.truncate_before = Some(from);
        Some(self.write_metadata(stream, metadata, now).position)
    }

    /// Where a stream is now.
    pub(crate) fn current(&self, stream: &StreamName) -> CurrentRevision {
        self.state(stream)
            .map_or(CurrentRevision::NoStream, StreamState::current)
    }

    /// The position of the newest record.
    pub(crate) fn head(&self) -> Option<Position> {
        self.log.last().map(|e| e.position)
    }

    fn position_of(&self, stream: &StreamName, revision: u64) -> Position {
        Position(self.streams[stream].positions[revision as usize] + 1)
    }

    /// Appends one record to the log (and to its stream unless it is a tombstone).
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        stream: &StreamName,
        id: Uuid,
        event_type: &str,
        content_type: ContentType,
        data: Bytes,
        metadata: Bytes,
        now: Timestamp,
        tombstone: bool,
    ) -> (StreamRevision, Position) {
        let index = self.log.len() as u64;
        let position = index + 1;
        let created = self.last_created.map_or(now, |t| t.max(now));
        self.last_created = Some(created);
        let state = self.streams.entry(stream.clone()).or_default();
        let revision = if tombstone {
            state.tombstoned = true;
            TOMBSTONE_REVISION
        } else {
            state.positions.push(index);
            StreamRevision(state.len() - 1)
        };
        if !tombstone && !stream.is_system() {
            if let Some(category) = stream.category() {
                self.links
                    .entry(format!("$ce-{category}"))
                    .or_default()
                    .push(index);
            }
            self.links
                .entry(format!("$et-{event_type}"))
                .or_default()
                .push(index);
        }
        self.log.push(RecordedEvent {
            id,
            stream: stream.clone(),
            revision,
            position: Position(position),
            event_type: event_type.to_owned(),
            content_type,
            data,
            metadata,
            created,
            link: None,
        });
        (revision, Position(position))
    }

    fn write_metadata(
        &mut self,
        stream: &StreamName,
        metadata: StreamMetadata,
        now: Timestamp,
    ) -> AppendResult {
        let meta_stream = stream.metadata_stream();
        let data = Bytes::from(metadata.to_json());
        self.set_meta(stream, metadata);
        let (revision, position) = self.push(
            &meta_stream,
            Uuid::new_v4(),
            METADATA_EVENT_TYPE,
            ContentType::Json,
            data,
            Bytes::new(),
            now,
            false,
        );
        AppendResult { revision, position }
    }

    /// The result an append reports for a stream's current state.
    fn result_for_current(&self, stream: &StreamName) -> AppendResult {
        match self.current(stream) {
            CurrentRevision::Current(r) => AppendResult {
                revision: r,
                position: self.position_of(stream, r.0),
            },
            // Unspecified by the contract; the proptest only checks `Ok`.
            CurrentRevision::NoStream => AppendResult {
                revision: StreamRevision(u64::MAX),
                position: Position(u64::MAX),
            },
        }
    }

    /// Do revisions `from .. from + ids.len()` of the current life hold `ids`?
    fn ids_stand_at(&self, stream: &StreamName, from: u64, ids: &[Uuid]) -> bool {
        let Some(state) = self.state(stream) else {
            return false;
        };
        let Some(end) = from.checked_add(ids.len() as u64) else {
            return false;
        };
        from >= state.base
            && end <= state.len()
            && ids
                .iter()
                .zip(from..end)
                .all(|(id, r)| self.log[state.positions[r as usize] as usize].id == *id)
    }

    /// `EventStore::append`.
    pub(crate) fn append(
        &mut self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: &[EventData],
        now: Timestamp,
    ) -> Result<AppendResult> {
        check_writable(stream)?;
        validate(events)?;
        expected.checked()?;
        if self.tombstoned(stream) {
            return Err(Error::StreamDeleted {
                stream: stream.clone(),
            });
        }
        let owner = stream.metadata_of().unwrap_or_else(|| stream.clone());
        let was_deleted = self.recreate_from(&owner);
        let current = self.current(stream);
        let satisfied = self.meets(stream, expected)?;
        if events.is_empty() {
            if !satisfied {
                return Err(wev(stream, expected, current));
            }
            let result = self.result_for_current(stream);
            // An empty append recreates a soft-deleted stream too.
            return Ok(match self.undelete(&owner, was_deleted, now) {
                Some(position) => AppendResult {
                    revision: result.revision,
                    position,
                },
                None => result,
            });
        }
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        let k = ids.len() as u64;
        let base = self.state(stream).map_or(0, |s| s.base);
        match expected {
            ExpectedRevision::Any | ExpectedRevision::StreamExists => {
                if !satisfied {
                    return Err(wev(stream, expected, current));
                }
                if let CurrentRevision::Current(last) = current {
                    if last.0 + 1 >= k && self.ids_stand_at(stream, last.0 + 1 - k, &ids) {
                        return Ok(self.result_for_current(stream));
                    }
                }
            }
            ExpectedRevision::NoStream | ExpectedRevision::Exact(_) if !satisfied => {
                let place = match expected {
                    ExpectedRevision::Exact(n) => n.0.saturating_add(1),
                    _ => base,
                };
                if self.ids_stand_at(stream, place, &ids) {
                    let revision = place + k - 1;
                    return Ok(AppendResult {
                        revision: StreamRevision(revision),
                        position: self.position_of(stream, revision),
                    });
                }
                return Err(wev(stream, expected, current));
            }
            _ => {}
        }
        let mut last = None;
        for e in events {
            last = Some(self.push(
                stream,
                e.id,
                &e.event_type,
                e.content_type,
                e.data.clone(),
                e.metadata.clone(),
                now,
                false,
            ));
        }
        let (revision, position) = last.expect("non-empty batch");
        if let Some(of) = stream.metadata_of() {
            if let Some(e) = events
                .iter()
                .rev()
                .find(|e| e.event_type == METADATA_EVENT_TYPE)
            {
                self.set_meta(&of, StreamMetadata::from_json(&e.data).unwrap_or_default());
            }
        }
        self.undelete(&owner, was_deleted, now);
        Ok(AppendResult { revision, position })
    }

    /// `EventStore::append_multi`, written from the contract (ADR 29)
    /// rather than from `rules::multi` (whose input checks alone it
    /// shares): every condition first, then all events in the request's
    /// order, then the undelete events of recreated streams in stream order.
    pub(crate) fn append_multi(
        &mut self,
        req: &MultiAppend,
        now: Timestamp,
    ) -> Result<MultiAppendResult> {
        let limits = crate::rules::Limits {
            max_event_bytes: MAX_EVENT_SIZE,
            ..crate::rules::Limits::default()
        };
        crate::rules::multi::check_multi_input(req, &limits)?;
        let mut violations = Vec::new();
        let mut retried: Vec<(usize, AppendResult)> = Vec::new();
        let mut writes: Vec<usize> = Vec::new();
        for (index, part) in req.streams.iter().enumerate() {
            let s = &part.stream;
            let events: Vec<&EventData> = req.events_of(index).collect();
            let current = self.current(s);
            let (tomb, deleted) = (self.tombstoned(s), self.soft_deleted(s));
            let last = |c: CurrentRevision| match c {
                CurrentRevision::NoStream => ActualState::NoStream,
                CurrentRevision::Current(r) => ActualState::Revision(r),
            };
            let mut violated = |actual| {
                violations.push(Violation {
                    index,
                    stream: s.clone(),
                    expected: part.condition,
                    actual,
                })
            };
            if events.is_empty() {
                use StreamCondition as C;
                let holds = match (tomb, deleted, part.condition) {
                    (true, _, c) => matches!(c, C::Any | C::NoStream | C::Tombstoned),
                    (_, _, C::Any) => true,
                    (_, true, C::NoStream | C::Deleted) => true,
                    (_, true, C::Exists) => {
                        violated(ActualState::Deleted);
                        continue;
                    }
                    (_, _, C::NoStream) => current == CurrentRevision::NoStream,
                    (_, _, C::Exists) => current != CurrentRevision::NoStream,
                    (_, _, C::Revision(r)) => current == CurrentRevision::Current(r),
                    (_, false, C::Deleted) | (_, _, C::Tombstoned) => false,
                };
                if !holds {
                    violated(if tomb {
                        ActualState::Tombstoned
                    } else {
                        last(current)
                    });
                }
                continue;
            }
            if tomb {
                violated(ActualState::Tombstoned);
                continue;
            }
            let expected = match part.condition {
                StreamCondition::Tombstoned => {
                    violated(last(current));
                    continue;
                }
                StreamCondition::Deleted if !deleted => {
                    violated(last(current));
                    continue;
                }
                StreamCondition::Deleted => ExpectedRevision::Any,
                c => c.as_expected().expect("not deleted or tombstoned"),
            };
            let satisfied = match self.meets(s, expected) {
                Ok(m) => m,
                Err(_) => {
                    violated(ActualState::Deleted);
                    continue;
                }
            };
            let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
            let k = ids.len() as u64;
            let base = self.state(s).map_or(0, |st| st.base);
            match (expected, satisfied) {
                (ExpectedRevision::Any | ExpectedRevision::StreamExists, true) => match current {
                    CurrentRevision::Current(l)
                        if l.0 + 1 >= k && self.ids_stand_at(s, l.0 + 1 - k, &ids) =>
                    {
                        retried.push((index, self.result_for_current(s)))
                    }
                    _ => writes.push(index),
                },
                (_, true) => writes.push(index),
                (_, false) => {
                    let place = match expected {
                        ExpectedRevision::Exact(n) => n.0.saturating_add(1),
                        ExpectedRevision::NoStream => base,
                        _ => u64::MAX,
                    };
                    if place != u64::MAX && self.ids_stand_at(s, place, &ids) {
                        let revision = place + k - 1;
                        retried.push((
                            index,
                            AppendResult {
                                revision: StreamRevision(revision),
                                position: self.position_of(s, revision),
                            },
                        ));
                    } else {
                        violated(last(current));
                    }
                }
            }
        }
        if writes.is_empty() && !retried.is_empty() {
            let streams: Vec<StreamAppended> = retried
                .iter()
                .map(|(index, r)| StreamAppended {
                    index: *index,
                    stream: req.streams[*index].stream.clone(),
                    revision: r.revision,
                    position: r.position,
                })
                .collect();
            let position = streams.iter().map(|s| s.position).max().expect("non-empty");
            return Ok(MultiAppendResult { streams, position });
        }
        for (index, _) in retried {
            let s = &req.streams[index].stream;
            let actual = match self.current(s) {
                CurrentRevision::NoStream => ActualState::NoStream,
                CurrentRevision::Current(r) => ActualState::Revision(r),
            };
            violations.push(Violation {
                index,
                stream: s.clone(),
                expected: req.streams[index].condition,
                actual,
            });
        }
        if !violations.is_empty() {
            violations.sort_by_key(|v| v.index);
            return Err(Error::ConsistencyViolation { violations });
        }
        let recreate: Vec<(StreamName, Option<u64>)> = writes
            .iter()
            .map(|&i| {
                let s = &req.streams[i].stream;
                let owner = s.metadata_of().unwrap_or_else(|| s.clone());
                let from = self.recreate_from(&owner);
                (owner, from)
            })
            .collect();
        let mut last: HashMap<usize, (StreamRevision, Position)> = HashMap::new();
        let mut position = Position(0);
        for (i, e) in &req.events {
            let s = &req.streams[*i].stream;
            let at = self.push(
                s,
                e.id,
                &e.event_type,
                e.content_type,
                e.data.clone(),
                e.metadata.clone(),
                now,
                false,
            );
            if let Some(of) = s.metadata_of() {
                self.set_meta(&of, StreamMetadata::from_json(&e.data).unwrap_or_default());
            }
            position = at.1;
            last.insert(*i, at);
        }
        for (owner, from) in recreate {
            self.undelete(&owner, from, now);
        }
        let streams = writes
            .iter()
            .map(|&index| StreamAppended {
                index,
                stream: req.streams[index].stream.clone(),
                revision: last[&index].0,
                position: last[&index].1,
            })
            .collect();
        Ok(MultiAppendResult { streams, position })
    }

    /// `EventStore::delete_stream`.
    pub(crate) fn delete(
        &mut self,
        stream: &StreamName,
        expected: ExpectedRevision,
        now: Timestamp,
    ) -> Result<DeleteResult> {
        check_writable(stream)?;
        expected.checked()?;
        if self.tombstoned(stream) {
            return Err(Error::StreamDeleted {
                stream: stream.clone(),
            });
        }
        let current = self.current(stream);
        if !self.meets(stream, expected)? {
            return Err(wev(stream, expected, current));
        }
        let never_written = current == CurrentRevision::NoStream
            && self.current(&stream.metadata_stream()) == CurrentRevision::NoStream;
        if never_written {
            return Err(Error::StreamNotFound {
                stream: stream.clone(),
            });
        }
        // The metadata becomes `$tb` alone, as in KurrentDB.
        let metadata = StreamMetadata {
            truncate_before: Some(SOFT_DELETED),
            ..StreamMetadata::default()
        };
        let result = self.write_metadata(stream, metadata, now);
        Ok(DeleteResult {
            position: result.position,
        })
    }

    /// `EventStore::tombstone_stream`.
    pub(crate) fn tombstone(
        &mut self,
        stream: &StreamName,
        expected: ExpectedRevision,
        now: Timestamp,
    ) -> Result<DeleteResult> {
        check_writable(stream)?;
        expected.checked()?;
        if self.tombstoned(stream) {
            return Err(Error::StreamDeleted {
                stream: stream.clone(),
            });
        }
        let current = self.current(stream);
        if !self.meets(stream, expected)? {
            return Err(wev(stream, expected, current));
        }
        let (_, position) = self.push(
            stream,
            Uuid::new_v4(),
            TOMBSTONE_EVENT_TYPE,
            ContentType::Binary,
            Bytes::new(),
            Bytes::new(),
            now,
            true,
        );
        Ok(DeleteResult { position })
    }

    /// `EventStore::set_stream_metadata`.
    pub(crate) fn set_metadata(
        &mut self,
        stream: &StreamName,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
        now: Timestamp,
    ) -> Result<AppendResult> {
        expected.checked()?;
        if self.tombstoned(stream) {
            return Err(Error::StreamDeleted {
                stream: stream.clone(),
            });
        }
        let meta_stream = stream.metadata_stream();
        let current = self.current(&meta_stream);
        if !expected.is_satisfied_by(current) {
            return Err(wev(&meta_stream, expected, current));
        }
        let was_deleted = self.recreate_from(stream);
        let result = self.write_metadata(stream, metadata, now);
        self.undelete(stream, was_deleted, now);
        Ok(result)
    }

    /// `EventStore::stream_metadata`.
    pub(crate) fn metadata(&self, stream: &StreamName) -> Result<StreamMetadataResult> {
        if self.tombstoned(stream) {
            return Err(Error::StreamDeleted {
                stream: stream.clone(),
            });
        }
        let revision = match self.current(&stream.metadata_stream()) {
            CurrentRevision::NoStream => None,
            CurrentRevision::Current(r) => Some(r),
        };
        Ok(StreamMetadataResult {
            revision,
            metadata: self
                .state(stream)
                .map(|s| s.metadata.clone())
                .unwrap_or_default(),
        })
    }

    /// `EventStore::read_stream`, with `now` for `$maxAge`.
    pub(crate) fn read_stream(
        &self,
        req: &ReadStream,
        now: Timestamp,
    ) -> Result<Vec<RecordedEvent>> {
        let stream = &req.stream;
        if stream.is_all() {
            return Err(Error::InvalidInput("read $all with read_all".into()));
        }
        let not_found = || Error::StreamNotFound {
            stream: stream.clone(),
        };
        // (revision → event) for the revisions that can be read at all.
        let (events, floor): (Vec<RecordedEvent>, u64) = if !stream.is_writable() {
            let positions = self.links.get(stream.as_str()).ok_or_else(not_found)?;
            let events = positions
                .iter()
                .enumerate()
                .map(|(i, p)| RecordedEvent {
                    link: Some(Link {
                        stream: stream.clone(),
                        revision: StreamRevision(i as u64),
                    }),
                    ..self.log[*p as usize].clone()
                })
                .collect();
            (events, 0)
        } else {
            let state = self.state(stream).ok_or_else(not_found)?;
            if state.tombstoned {
                return Err(Error::StreamDeleted {
                    stream: stream.clone(),
                });
            }
            let CurrentRevision::Current(last) = state.current() else {
                return Err(not_found());
            };
            if state.soft_deleted() {
                return Err(not_found());
            }
            let floor = state.base.max(state.metadata.first_visible_revision(last));
            let events = state
                .positions
                .iter()
                .map(|p| self.log[*p as usize].clone())
                .collect();
            (events, floor)
        };
        let oldest = if stream.is_writable() {
            self.state(stream)
                .and_then(|s| s.metadata.oldest_visible(now))
        } else {
            None
        };
        let visible = |i: u64, e: &RecordedEvent| {
            i >= floor
                && oldest.is_none_or(|t| e.created >= t)
                && req.until.is_none_or(|u| e.created <= u)
        };
        let len = events.len() as u64;
        let indexes: Box<dyn Iterator<Item = u64>> = match req.direction {
            Direction::Forwards => Box::new(
                match req.from {
                    StreamStart::Start => 0,
                    StreamStart::End => len,
                    StreamStart::Revision(r) => r.0,
                }..len,
            ),
            Direction::Backwards if len == 0 => Box::new(std::iter::empty()),
            Direction::Backwards => Box::new(
                (0..=match req.from {
                    StreamStart::Start | StreamStart::End => len - 1,
                    StreamStart::Revision(r) => r.0.min(len - 1),
                })
                    .rev(),
            ),
        };
        let mut page = PageBound::new(req.max_count, req.max_bytes);
        Ok(indexes
            .filter(|i| visible(*i, &events[*i as usize]))
            .take_while(|i| page.admit(&events[*i as usize]))
            .map(|i| events[i as usize].clone())
            .collect())
    }

    /// `EventStore::read_all`.
    pub(crate) fn read_all(&self, req: &ReadAll) -> Vec<RecordedEvent> {
        let mut page = PageBound::new(req.max_count, req.max_bytes);
        let len = self.log.len() as u64;
        let indexes: Box<dyn Iterator<Item = u64>> = match req.direction {
            Direction::Forwards => Box::new(
                match req.from {
                    AllStart::Start => 0,
                    AllStart::End => len,
                    AllStart::Position(p) => p.0.saturating_sub(1),
                }..len,
            ),
            Direction::Backwards if len == 0 => Box::new(std::iter::empty()),
            Direction::Backwards if req.from == AllStart::Position(Position(0)) => {
                Box::new(std::iter::empty())
            }
            Direction::Backwards => Box::new(
                (0..=match req.from {
                    AllStart::Start | AllStart::End => len - 1,
                    AllStart::Position(p) => (p.0 - 1).min(len - 1),
                })
                    .rev(),
            ),
        };
        indexes
            .map(|i| &self.log[i as usize])
            .filter(|e| req.filter.as_ref().is_none_or(|f| f.matches(e)))
            .filter(|e| req.until.is_none_or(|u| e.created <= u))
            .take_while(|e| page.admit(e))
            .cloned()
            .collect()
    }

    /// The cursor a subscription starts after (`None`: from the beginning).
    pub(crate) fn subscription_start(
        &self,
        target: &SubscriptionTarget,
        start: SubscriptionStart,
    ) -> Result<Option<u64>> {
        Ok(match start {
            SubscriptionStart::Beginning => None,
            SubscriptionStart::After(n) => {
                crate::follow::cursor_after(n)?;
                Some(n)
            }
            SubscriptionStart::End => match target {
                SubscriptionTarget::All(_) => self.head().map(|p| p.0),
                SubscriptionTarget::Stream(s) => {
                    let len = match self.links.get(s.as_str()) {
                        Some(links) => links.len(),
                        None => self.state(s).map_or(0, |st| st.positions.len()),
                    };
                    (len as u64).checked_sub(1)
                }
            },
        })
    }

    /// Up to `limit` events a subscription delivers after the cursor `after`
    /// (a position for `$all`, else a (link) revision). Stream subscriptions
    /// skip revisions before the stream's current life.
    pub(crate) fn events_after(
        &self,
        target: &SubscriptionTarget,
        after: Option<u64>,
        limit: usize,
    ) -> Vec<RecordedEvent> {
        let from = after.map_or(0, |a| a.saturating_add(1));
        match target {
            // After position `a`: from the event at index `a` (position `a + 1`).
            SubscriptionTarget::All(filter) => self
                .log
                .iter()
                .skip(usize::try_from(after.unwrap_or(0)).unwrap_or(usize::MAX))
                .filter(|e| filter.as_ref().is_none_or(|f| f.matches(e)))
                .take(limit)
                .cloned()
                .collect(),
            SubscriptionTarget::Stream(s) if !s.is_writable() => {
                let req = ReadStream::forwards(s.clone())
                    .from_revision(StreamRevision(from))
                    .max_count(limit as u64);
                self.read_stream(&req, Timestamp::now()).unwrap_or_default()
            }
            SubscriptionTarget::Stream(s) => {
                let Some(state) = self.state(s) else {
                    return Vec::new();
                };
                (from.max(state.base)..state.len())
                    .take(limit)
                    .map(|r| self.log[state.positions[r as usize] as usize].clone())
                    .collect()
            }
        }
    }
}

//! Multi-stream atomic appends (ADR 29): events for several streams, each
//! stream with its own condition, written all or nothing in one contiguous
//! range of positions; streams that are only checked take part with their
//! condition and no events. The model follows KurrentDB's v2 protocol
//! (`AppendSession`, `AppendRecords`): a list of streams with conditions,
//! and events in log order, each naming its stream.
//!
//! The rules (which conditions hold, what a violation reports, idempotent
//! retries) are in [`crate::rules::multi`], shared by every backend.

use std::fmt;

use crate::expected::{CurrentRevision, ExpectedRevision};
use crate::model::{EventData, Position, StreamName, StreamRevision};

/// What a multi-stream append requires of one stream, as KurrentDB's v2
/// protocol states it: an expected revision, or a lifecycle state.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum StreamCondition {
    /// No requirement (written streams without a condition).
    Any,
    /// The stream has no events: never written, soft-deleted, or (for a
    /// stream only checked) tombstoned.
    NoStream,
    /// The stream has events and is neither soft-deleted nor tombstoned.
    Exists,
    /// The stream's last event has exactly this revision (a soft-deleted
    /// stream keeps its last revision).
    Revision(StreamRevision),
    /// The stream is soft-deleted (writing to it recreates it).
    Deleted,
    /// The stream is tombstoned (never true of a stream written to).
    Tombstoned,
}

impl From<ExpectedRevision> for StreamCondition {
    fn from(e: ExpectedRevision) -> Self {
        match e {
            ExpectedRevision::Any => StreamCondition::Any,
            ExpectedRevision::NoStream => StreamCondition::NoStream,
            ExpectedRevision::StreamExists => StreamCondition::Exists,
            ExpectedRevision::Exact(r) => StreamCondition::Revision(r),
        }
    }
}

impl StreamCondition {
    /// The expected revision this condition is, when it is one.
    pub fn as_expected(self) -> Option<ExpectedRevision> {
        match self {
            StreamCondition::Any => Some(ExpectedRevision::Any),
            StreamCondition::NoStream => Some(ExpectedRevision::NoStream),
            StreamCondition::Exists => Some(ExpectedRevision::StreamExists),
            StreamCondition::Revision(r) => Some(ExpectedRevision::Exact(r)),
            StreamCondition::Deleted | StreamCondition::Tombstoned => None,
        }
    }
}

impl fmt::Display for StreamCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamCondition::Any => f.write_str("any"),
            StreamCondition::NoStream => f.write_str("no-stream"),
            StreamCondition::Exists => f.write_str("exists"),
            StreamCondition::Revision(r) => write!(f, "revision {r}"),
            StreamCondition::Deleted => f.write_str("deleted"),
            StreamCondition::Tombstoned => f.write_str("tombstoned"),
        }
    }
}

/// Where a stream was when a condition on it did not hold (KurrentDB's
/// `actual_state`: a revision, −1 no stream, −5 deleted, −6 tombstoned).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ActualState {
    /// The stream has no events.
    NoStream,
    /// The stream's last event has this revision (also for a soft-deleted
    /// stream, except when the condition was [`StreamCondition::Exists`]).
    Revision(StreamRevision),
    /// The stream is soft-deleted.
    Deleted,
    /// The stream is tombstoned.
    Tombstoned,
}

impl From<CurrentRevision> for ActualState {
    fn from(c: CurrentRevision) -> Self {
        match c {
            CurrentRevision::NoStream => ActualState::NoStream,
            CurrentRevision::Current(r) => ActualState::Revision(r),
        }
    }
}

impl fmt::Display for ActualState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActualState::NoStream => f.write_str("no stream"),
            ActualState::Revision(r) => write!(f, "revision {r}"),
            ActualState::Deleted => f.write_str("deleted"),
            ActualState::Tombstoned => f.write_str("tombstoned"),
        }
    }
}

/// One condition of a multi-stream append that did not hold.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Violation {
    /// The stream's index in [`MultiAppend::streams`].
    pub index: usize,
    /// The stream.
    pub stream: StreamName,
    /// Its condition.
    pub expected: StreamCondition,
    /// Where it was.
    pub actual: ActualState,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream {}: expected {}, actual {}",
            self.stream, self.expected, self.actual
        )
    }
}

/// A stream taking part in a multi-stream append.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamPart {
    /// The stream.
    pub stream: StreamName,
    /// What must hold of it before anything is written.
    pub condition: StreamCondition,
}

/// An atomic append to several streams: all of its events are written, in
/// one contiguous range of positions in the order given, or none is.
///
/// Each stream appears once in [`streams`](Self::streams); a stream with no
/// events there is only checked. Build one with [`append`](Self::append)
/// (a stream with its expectation and events), [`record`](Self::record)
/// (one more event, interleaving streams in the log as given) and
/// [`check`](Self::check) (a condition on a stream not written).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MultiAppend {
    /// The streams and their conditions.
    pub streams: Vec<StreamPart>,
    /// The events in log order, each with its stream's index in `streams`.
    pub events: Vec<(usize, EventData)>,
}

impl MultiAppend {
    /// An empty request.
    pub fn new() -> Self {
        MultiAppend::default()
    }

    fn part(&mut self, stream: &StreamName, condition: StreamCondition) -> usize {
        self.streams.push(StreamPart {
            stream: stream.clone(),
            condition,
        });
        self.streams.len() - 1
    }

    /// Appends `events` to `stream`, which must satisfy `expected`. A
    /// stream named twice makes the request invalid.
    pub fn append(
        mut self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: impl IntoIterator<Item = EventData>,
    ) -> Self {
        let i = self.part(&stream, expected.into());
        self.events.extend(events.into_iter().map(|e| (i, e)));
        self
    }

    /// Appends one event to `stream` after the events added so far
    /// (streams may interleave in the log). A stream not named before takes
    /// part with [`StreamCondition::Any`].
    pub fn record(mut self, stream: StreamName, event: EventData) -> Self {
        let i = match self.streams.iter().position(|p| p.stream == stream) {
            Some(i) => i,
            None => self.part(&stream, StreamCondition::Any),
        };
        self.events.push((i, event));
        self
    }

    /// Requires `condition` of `stream` (written or not). For a stream
    /// already named, it replaces its condition.
    pub fn check(mut self, stream: StreamName, condition: StreamCondition) -> Self {
        match self.streams.iter_mut().find(|p| p.stream == stream) {
            Some(p) => p.condition = condition,
            None => {
                self.part(&stream, condition);
            }
        }
        self
    }

    /// The events of the stream at `index`, in order.
    pub fn events_of(&self, index: usize) -> impl Iterator<Item = &EventData> {
        self.events
            .iter()
            .filter(move |(i, _)| *i == index)
            .map(|(_, e)| e)
    }

    /// The indexes of the streams that get events.
    pub fn written(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.events.iter().map(|(i, _)| *i).collect();
        w.sort_unstable();
        w.dedup();
        w
    }
}

/// What one written stream got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamAppended {
    /// The stream's index in [`MultiAppend::streams`].
    pub index: usize,
    /// The stream.
    pub stream: StreamName,
    /// Revision of its last event now.
    pub revision: StreamRevision,
    /// Position of its last event.
    pub position: Position,
}

/// The outcome of a successful multi-stream append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiAppendResult {
    /// One entry per written stream, in the order of
    /// [`MultiAppend::streams`].
    pub streams: Vec<StreamAppended>,
    /// Position of the append's last event.
    pub position: Position,
}

//! Optimistic concurrency: expected and current revisions, append results.

use std::fmt;

use crate::error::{Error, Result};
use crate::model::{Position, StreamRevision};

/// What the caller expects of a stream when appending, as in KurrentDB.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ExpectedRevision {
    /// No check.
    Any,
    /// The stream must have no events (never written, or soft-deleted).
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last event must have exactly this revision.
    Exact(StreamRevision),
}

/// The largest revision an `Exact` expectation may name: `i64::MAX`.
/// KurrentDB's expected versions are signed 64-bit numbers (its gRPC
/// `uint64` revision is that number's two's complement, so `u64::MAX` there
/// is `-1`, no stream), and no stream gets near it: a larger one can only
/// be a mistake, and is refused with `InvalidInput` before any state is
/// consulted (see `factum_proto::expected` for the wire).
pub const MAX_EXPECTED_REVISION: u64 = i64::MAX as u64;

impl ExpectedRevision {
    /// This expectation, or `InvalidInput` when it names an exact revision
    /// above [`MAX_EXPECTED_REVISION`].
    pub fn checked(self) -> Result<Self> {
        match self {
            ExpectedRevision::Exact(r) if r.0 > MAX_EXPECTED_REVISION => {
                Err(Error::InvalidInput(format!(
                    "expected revision {r} is out of range: the largest is {MAX_EXPECTED_REVISION}"
                )))
            }
            e => Ok(e),
        }
    }

    /// Does a stream at `current` satisfy this expectation?
    pub fn is_satisfied_by(self, current: CurrentRevision) -> bool {
        match (self, current) {
            (ExpectedRevision::Any, _) => true,
            (ExpectedRevision::NoStream, CurrentRevision::NoStream) => true,
            (ExpectedRevision::StreamExists, CurrentRevision::Current(_)) => true,
            (ExpectedRevision::Exact(e), CurrentRevision::Current(c)) => e == c,
            _ => false,
        }
    }
}

impl fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedRevision::Any => f.write_str("any"),
            ExpectedRevision::NoStream => f.write_str("no-stream"),
            ExpectedRevision::StreamExists => f.write_str("exists"),
            ExpectedRevision::Exact(r) => write!(f, "{r}"),
        }
    }
}

impl std::str::FromStr for ExpectedRevision {
    type Err = Error;
    /// Parses `any`, `no-stream`, `exists` (or `stream-exists`), or a revision number.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "any" => Ok(ExpectedRevision::Any),
            "no-stream" | "no_stream" => Ok(ExpectedRevision::NoStream),
            "exists" | "stream-exists" | "stream_exists" => Ok(ExpectedRevision::StreamExists),
            _ => s
                .parse::<u64>()
                .map(|n| ExpectedRevision::Exact(StreamRevision(n)))
                .map_err(|_| {
                    Error::InvalidInput(format!(
                        "unknown expected revision {s:?}: use any, no-stream, exists or a revision number"
                    ))
                }),
        }
    }
}

/// Where a stream is now.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum CurrentRevision {
    /// The stream has no events (or was soft-deleted).
    NoStream,
    /// The revision of the stream's last event.
    Current(StreamRevision),
}

impl fmt::Display for CurrentRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CurrentRevision::NoStream => f.write_str("no-stream"),
            CurrentRevision::Current(r) => write!(f, "{r}"),
        }
    }
}

/// The outcome of a successful append.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AppendResult {
    /// Revision of the last event now in the stream (use as the next `Exact`).
    pub revision: StreamRevision,
    /// Global position of the last event appended (or already present, for an
    /// idempotent retry).
    pub position: Position,
}

/// The outcome of a delete or tombstone.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DeleteResult {
    /// Position of the record that made the deletion durable.
    pub position: Position,
}

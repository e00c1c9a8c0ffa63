//! Errors, in the caller's terms.

use std::path::PathBuf;

use crate::expected::{CurrentRevision, ExpectedRevision};
use crate::model::StreamName;

/// Result with Factum's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to an event store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream was not at the revision the append expected; nothing was written.
    #[error("wrong expected version on stream {stream}: expected {expected}, actual {actual}")]
    WrongExpectedVersion {
        /// The stream appended to.
        stream: StreamName,
        /// What the caller expected.
        expected: ExpectedRevision,
        /// Where the stream actually is.
        actual: CurrentRevision,
    },
    /// The stream was tombstoned (hard-deleted); its name can never be used again.
    #[error("stream {stream} is deleted (tombstoned)")]
    StreamDeleted {
        /// The stream.
        stream: StreamName,
    },
    /// Conditions of a multi-stream append did not hold (every one is
    /// listed); nothing was written.
    #[error("multi-stream append refused: {}", crate::error::list(violations))]
    ConsistencyViolation {
        /// The conditions that did not hold, in request order.
        violations: Vec<crate::multi::Violation>,
    },
    /// The stream has no events (it never existed or was soft-deleted).
    #[error("stream {stream} not found")]
    StreamNotFound {
        /// The stream.
        stream: StreamName,
    },
    /// The request is malformed (bad name, bad JSON, read-only stream …).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The request exceeds a configured limit; nothing was written.
    #[error("{what} exceeds the limit: {actual} > {limit}")]
    LimitExceeded {
        /// What was measured.
        what: String,
        /// The limit.
        limit: u64,
        /// The request's value.
        actual: u64,
    },
    /// An operating-system I/O error.
    #[error("I/O error {context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Stored data failed validation (checksum, framing, a missing file).
    /// The store never repairs this silently.
    #[error("corrupt data in {} at offset {offset}: {detail}", file.display())]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Byte offset within the file.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// The store cannot serve the request now: it is closed, it stopped
    /// accepting writes after a failed fsync, or its backend is down.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Another process holds the store's directory lock.
    #[error("store at {} is locked by another process", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The feature is not implemented by this backend (yet).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The caller may not do this: a client's write to a stream Factum
    /// manages itself ([`crate::managed`]); nothing was written.
    #[error("access denied: {0}")]
    AccessDenied(String),
}

impl Error {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the same request may succeed if retried later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

fn list(violations: &[crate::multi::Violation]) -> String {
    let v: Vec<String> = violations.iter().map(ToString::to_string).collect();
    v.join("; ")
}

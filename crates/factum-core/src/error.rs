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
    /// The store cannot serve the request now; [`UnavailableReason`] says
    /// why, and whether a retry may succeed.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// Why, as a caller decides on it (retry or give up).
        reason: UnavailableReason,
        /// What happened, for a person.
        message: String,
    },
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

    /// `Unavailable` for `reason`.
    pub fn unavailable(reason: UnavailableReason, message: impl Into<String>) -> Self {
        Error::Unavailable {
            reason,
            message: message.into(),
        }
    }

    /// True when the same request may succeed if retried later: an
    /// `Unavailable` whose reason is not fatal.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { reason, .. } if reason.is_transient())
    }

    /// True when the store stopped for good after a failure (see
    /// [`UnavailableReason::is_fatal`]): retrying cannot help.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Unavailable { reason, .. } if reason.is_fatal())
    }
}

/// Why a store is [`Error::Unavailable`]. Transient reasons may clear by
/// themselves (a retry with the same event ids is safe: appends are
/// idempotent); fatal ones need someone to act (restart after a failed
/// fsync, fix the database's configuration, update a client or server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnavailableReason {
    /// The store, or the part of it that would answer (writer, reader
    /// pool), is closed or closing. Transient: an embedded handle that was
    /// closed stays closed (its subscriptions end), but a remote server
    /// that is shutting down may be back after a restart.
    Closed,
    /// Too much work at once (a full queue, the append budget, a read
    /// stopped at its step limit); transient.
    Busy,
    /// A storage fault that clears by itself (a full disk, too many open
    /// files); transient.
    Storage,
    /// A failed fsync: the store stopped accepting writes for good because
    /// the OS may have dropped unwritten data (ADR 12). Fatal: restart,
    /// and the log is recovered up to its durable end.
    StorageFailed,
    /// The database could not be reached or failed the request (a lost
    /// connection, a restart, a lock or pool timeout); transient.
    DatabaseUnreachable,
    /// The database refused the request in a way retrying cannot change
    /// (authentication, a missing database, schema or table, a privilege).
    /// Fatal.
    DatabaseRejected,
    /// The server could not be reached or the call broke; transient.
    Connection,
    /// The other side spoke the protocol wrongly (a malformed or
    /// unexpected answer). Fatal: the client and server do not agree.
    Protocol,
    /// Not said (a server that does not send reasons); transient, as every
    /// `Unavailable` was before reasons existed.
    Unspecified,
}

impl UnavailableReason {
    /// Every reason, in declaration order.
    pub const ALL: [UnavailableReason; 9] = [
        UnavailableReason::Closed,
        UnavailableReason::Busy,
        UnavailableReason::Storage,
        UnavailableReason::StorageFailed,
        UnavailableReason::DatabaseUnreachable,
        UnavailableReason::DatabaseRejected,
        UnavailableReason::Connection,
        UnavailableReason::Protocol,
        UnavailableReason::Unspecified,
    ];

    /// True when retrying cannot help until someone acts.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            UnavailableReason::StorageFailed
                | UnavailableReason::DatabaseRejected
                | UnavailableReason::Protocol
        )
    }

    /// True when the same request may succeed if retried later.
    pub fn is_transient(self) -> bool {
        !self.is_fatal()
    }

    /// The reason's name on the wire (kebab case, as the error map's other
    /// fields).
    pub fn as_str(self) -> &'static str {
        match self {
            UnavailableReason::Closed => "closed",
            UnavailableReason::Busy => "busy",
            UnavailableReason::Storage => "storage",
            UnavailableReason::StorageFailed => "storage-failed",
            UnavailableReason::DatabaseUnreachable => "database-unreachable",
            UnavailableReason::DatabaseRejected => "database-rejected",
            UnavailableReason::Connection => "connection",
            UnavailableReason::Protocol => "protocol",
            UnavailableReason::Unspecified => "unspecified",
        }
    }

    /// The reason named `name` ([`UnavailableReason::as_str`]); an unknown
    /// name (a newer server's) is `Unspecified`.
    pub fn from_name(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .unwrap_or(UnavailableReason::Unspecified)
    }
}

impl std::fmt::Display for UnavailableReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn list(violations: &[crate::multi::Violation]) -> String {
    let v: Vec<String> = violations.iter().map(ToString::to_string).collect();
    v.join("; ")
}

/// An error and its causes on one line, `: `-separated; a cause whose text
/// the line already holds is left out. Libraries often keep the useful part
/// in the causes: hyper says only "connection error", object_store names
/// the request and leaves why it failed to its source.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_reasons_are_not_transient_and_names_round_trip() {
        for r in UnavailableReason::ALL {
            assert_eq!(UnavailableReason::from_name(r.as_str()), r);
            assert_ne!(r.is_fatal(), r.is_transient(), "{r}");
            let e = Error::unavailable(r, "x");
            assert_eq!(e.is_fatal(), r.is_fatal());
            assert_eq!(e.is_transient(), r.is_transient());
        }
        assert!(UnavailableReason::StorageFailed.is_fatal());
        assert!(!UnavailableReason::Closed.is_fatal());
        assert_eq!(
            UnavailableReason::from_name("from-the-future"),
            UnavailableReason::Unspecified
        );
        assert!(!Error::InvalidInput("x".into()).is_transient());
    }

    #[test]
    fn an_error_with_its_causes_on_one_line() {
        #[derive(Debug)]
        struct Outer(std::io::Error, &'static str);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.1)
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let reset = || std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            with_causes(&Outer(reset(), "connection error")),
            "connection error: connection reset"
        );
        // A cause the message already quotes is not repeated.
        assert_eq!(
            with_causes(&Outer(reset(), "listing: connection reset")),
            "listing: connection reset"
        );
        assert_eq!(with_causes(&reset()), "connection reset");
    }
}

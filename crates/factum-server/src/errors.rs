//! Factum errors as gRPC statuses, with the `exception` metadata the
//! official KurrentDB clients read to pick their error type.
//!
//! KurrentDB's conventions (what the clients key on):
//!
//! | error | status | `exception` | more metadata |
//! |---|---|---|---|
//! | wrong expected version | FAILED_PRECONDITION | `wrong-expected-version` | `stream-name`, `expected-version`, `actual-version` |
//! | stream deleted | FAILED_PRECONDITION | `stream-deleted` | `stream-name` |
//! | stream not found | NOT_FOUND | `stream-not-found` | `stream-name` |
//! | append too large | INVALID_ARGUMENT | `maximum-append-size-exceeded` | `maximum-append-size` |
//! | access denied | PERMISSION_DENIED | `access-denied` | |
//!
//! Factum adds `factum-error` (the core error kind) and, for limits,
//! `factum-limit-what` / `factum-limit` / `factum-limit-actual`, so
//! `factum-client` rebuilds the exact core error.

use factum_core::Error;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use factum_proto::expected::{current_version_number, expected_version_number};

fn put(md: &mut MetadataMap, key: &'static str, value: &str) {
    // Header values must be visible ASCII: anything else is escaped so a
    // stream name never makes the status unsendable.
    if let Ok(v) = MetadataValue::try_from(factum_proto::metadata_text::escape(value).as_str()) {
        md.insert(key, v);
    }
}

/// The operation name KurrentDB puts in wrong-expected-version messages.
#[derive(Clone, Copy, Debug)]
pub enum Operation {
    /// An append (Append, BatchAppend).
    Append,
    /// A soft delete.
    Delete,
    /// A tombstone.
    Tombstone,
    /// A read or subscription.
    Read,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Append => "Append",
            Operation::Delete => "Delete",
            Operation::Tombstone => "Tombstone",
            Operation::Read => "Read",
        }
    }
}

/// Maps a store error to the status KurrentDB would answer.
pub fn to_status(err: &Error, op: Operation) -> Status {
    let mut md = MetadataMap::new();
    let (code, message) = match err {
        Error::WrongExpectedVersion {
            stream,
            expected,
            actual,
        } => {
            let (e, a) = (
                expected_version_number(*expected),
                current_version_number(*actual),
            );
            put(&mut md, "exception", "wrong-expected-version");
            put(&mut md, "stream-name", stream.as_str());
            put(&mut md, "expected-version", &e.to_string());
            put(&mut md, "actual-version", &a.to_string());
            (
                Code::FailedPrecondition,
                format!(
                    "{} failed due to WrongExpectedVersion. Stream: {stream}, Expected version: {e}, Actual version: {a}",
                    op.name()
                ),
            )
        }
        Error::StreamDeleted { stream } => {
            put(&mut md, "exception", "stream-deleted");
            put(&mut md, "stream-name", stream.as_str());
            (
                Code::FailedPrecondition,
                format!("Event stream '{stream}' is deleted."),
            )
        }
        Error::StreamNotFound { stream } => {
            put(&mut md, "exception", "stream-not-found");
            put(&mut md, "stream-name", stream.as_str());
            (
                Code::NotFound,
                format!("Event stream '{stream}' is not found."),
            )
        }
        Error::InvalidInput(msg) => (Code::InvalidArgument, msg.clone()),
        Error::LimitExceeded {
            what,
            limit,
            actual,
        } => {
            put(&mut md, "exception", "maximum-append-size-exceeded");
            put(&mut md, "maximum-append-size", &limit.to_string());
            put(&mut md, "factum-limit-what", what);
            put(&mut md, "factum-limit", &limit.to_string());
            put(&mut md, "factum-limit-actual", &actual.to_string());
            (Code::InvalidArgument, err.to_string())
        }
        Error::Unavailable(msg) => (Code::Unavailable, format!("store unavailable: {msg}")),
        Error::Unsupported(msg) => (Code::Unimplemented, format!("not supported: {msg}")),
        Error::AccessDenied(msg) => {
            put(&mut md, "exception", "access-denied");
            (Code::PermissionDenied, msg.clone())
        }
        Error::Locked { .. } | Error::Io { .. } | Error::Corrupt { .. } => {
            (Code::Internal, err.to_string())
        }
        other => (Code::Internal, other.to_string()),
    };
    put(&mut md, "factum-error", kind(err));
    Status::with_metadata(code, message, md)
}

/// A short stable name for each error kind.
pub fn kind(err: &Error) -> &'static str {
    match err {
        Error::WrongExpectedVersion { .. } => "wrong-expected-version",
        Error::StreamDeleted { .. } => "stream-deleted",
        Error::StreamNotFound { .. } => "stream-not-found",
        Error::InvalidInput(_) => "invalid-input",
        Error::LimitExceeded { .. } => "limit-exceeded",
        Error::Io { .. } => "io",
        Error::Corrupt { .. } => "corrupt",
        Error::Unavailable(_) => "unavailable",
        Error::Locked { .. } => "locked",
        Error::Unsupported(_) => "unsupported",
        Error::AccessDenied(_) => "access-denied",
        _ => "other",
    }
}

/// The status for an append larger than the server accepts.
pub fn append_too_large(limit: u64, actual: u64) -> Status {
    to_status(
        &Error::LimitExceeded {
            what: "append size in bytes".into(),
            limit,
            actual,
        },
        Operation::Append,
    )
}

/// tonic answers an over-long gRPC message with OUT_OF_RANGE; gRPC's own
/// convention (and the contract) is RESOURCE_EXHAUSTED.
pub fn transport_status(status: Status) -> Status {
    if status.code() == Code::OutOfRange && status.message().contains("message length too large") {
        Status::resource_exhausted(status.message().to_owned())
    } else {
        status
    }
}

#[cfg(test)]
mod tests {
    use factum_core::{CurrentRevision, ExpectedRevision, StreamName, StreamRevision};

    use super::*;

    #[test]
    fn wrong_expected_version_carries_kurrentdb_metadata() {
        let err = Error::WrongExpectedVersion {
            stream: StreamName::new("order-1").unwrap(),
            expected: ExpectedRevision::Exact(StreamRevision(3)),
            actual: CurrentRevision::NoStream,
        };
        let s = to_status(&err, Operation::Delete);
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(
            s.metadata().get("exception").unwrap(),
            "wrong-expected-version"
        );
        assert_eq!(s.metadata().get("expected-version").unwrap(), "3");
        assert_eq!(s.metadata().get("actual-version").unwrap(), "-1");
        assert_eq!(
            s.message(),
            "Delete failed due to WrongExpectedVersion. Stream: order-1, Expected version: 3, Actual version: -1"
        );
    }

    #[test]
    fn access_denied_is_kurrentdbs_permission_denied() {
        let stream = StreamName::new("$persistentSubscriptionConfig").unwrap();
        let err = factum_core::managed::check_client_write(&stream).unwrap_err();
        let s = to_status(&err, Operation::Tombstone);
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(s.metadata().get("exception").unwrap(), "access-denied");
        assert_eq!(s.metadata().get("factum-error").unwrap(), "access-denied");
        assert!(s
            .message()
            .starts_with("stream $persistentSubscriptionConfig is managed by"));
    }

    #[test]
    fn non_ascii_names_are_escaped_and_restored() {
        let err = Error::StreamDeleted {
            stream: StreamName::new("café-1 %").unwrap(),
        };
        let s = to_status(&err, Operation::Read);
        let raw = s.metadata().get("stream-name").unwrap().to_str().unwrap();
        assert_eq!(raw, "caf%C3%A9-1 %25");
        assert_eq!(factum_proto::metadata_text::unescape(raw), "café-1 %");
    }
}

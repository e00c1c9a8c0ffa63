//! The one map from core errors to the wire. Every RPC (Append, BatchAppend,
//! reads and subscriptions, deletes, tombstones, metadata, persistent
//! subscriptions) and every HTTP route answers a core error through
//! [`describe`], so an error looks the same wherever it comes from and
//! `factum-client` rebuilds the exact core error from any of them (ADR 18).
//!
//! KurrentDB's conventions (what its official clients key on), and Factum's
//! choices where KurrentDB has nothing to say (marked *):
//!
//! | core error | gRPC status | `exception` and its fields | BatchAppend detail | HTTP |
//! |---|---|---|---|---|
//! | `WrongExpectedVersion` | FAILED_PRECONDITION (Append: in its answer) | `wrong-expected-version`: `stream-name`, `expected-version`, `actual-version` | `WrongExpectedVersion` | 409 |
//! | `StreamDeleted` | FAILED_PRECONDITION | `stream-deleted`: `stream-name` | `StreamDeleted` | 410 |
//! | `StreamNotFound` | NOT_FOUND (Read: in its answer) | `stream-not-found`: `stream-name` | `Unknown`* | 404 |
//! | `InvalidInput` | INVALID_ARGUMENT | – | `BadRequest` | 400 |
//! | `LimitExceeded`, append size | INVALID_ARGUMENT | `maximum-append-size-exceeded`: `maximum-append-size` | `MaximumAppendSizeExceeded` | 413 |
//! | `LimitExceeded`, event size | INVALID_ARGUMENT | `maximum-append-event-size-exceeded`: `maximum-append-event-size`, `event-id`, `proposed-append-event-size` | `MaximumAppendEventSizeExceeded` | 413 |
//! | `LimitExceeded`, any other* | INVALID_ARGUMENT | – | `BadRequest` | 413 |
//! | `Unavailable` | UNAVAILABLE | – | `Unknown` | 503 |
//! | `Io`*, `Locked`* | INTERNAL | – | `Unknown` | 500 |
//! | `Corrupt`* | DATA_LOSS | – | `Unknown` | 500 |
//! | `Unsupported` | UNIMPLEMENTED | – | `Unknown` | 501 |
//! | `AccessDenied` (a client write to a stream Factum manages, ADR 16) | PERMISSION_DENIED | `access-denied` | `AccessDenied` | 403 |
//!
//! KurrentDB's own BatchAppend answers a conflict with ALREADY_EXISTS and a
//! deleted stream with NOT_FOUND; Factum keeps one code per error in both
//! places (its clients read the detail, not the code).
//!
//! Factum adds its own fields, so `factum-client` rebuilds the exact error:
//!
//! | field | when |
//! |---|---|
//! | `factum-error` | always: the kind ([`kind`]) |
//! | `factum-message` | the text of `InvalidInput`, `Unavailable`, `Unsupported`; of an `Io` error without an OS error number |
//! | `factum-unavailable-reason` | `Unavailable`: its [`factum_core::UnavailableReason`] (`closed`, `storage-failed`, `database-rejected`, …), so a client can tell a transient fault from a fatal one |
//! | `factum-limit-what`, `factum-limit`, `factum-limit-actual` | `LimitExceeded` |
//! | `factum-io-context`, `factum-os-error` | `Io` |
//! | `factum-file`, `factum-offset`, `factum-detail` | `Corrupt` |
//! | `factum-path` | `Locked` |
//!
//! A failed call carries `exception`, its fields and Factum's fields as
//! metadata (values escaped by `factum_proto::metadata_text`); a BatchAppend
//! answer carries the same pairs, unescaped, in its status's `metadata`
//! (a Factum extension of KurrentDB's `google.rpc.Status` that KurrentDB's
//! clients skip). The HTTP body is `{"error": kind, "message": text}` plus
//! `stream` (`expected`, `actual` for a conflict) and Factum's fields
//! without the prefix, `-` as `_` (`limit_what`, `os_error`, …).

use axum::http::StatusCode;
use factum_core::{Error, StreamName, Uuid};
use factum_proto::expected::{current_version_number, expected_version_number};
use factum_proto::shared;
use factum_proto::status as rpc;
use prost::Message;
use serde_json::{json, Value};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// `LimitExceeded::what` of the append-size limit, as the core's rules and
/// the server's own early checks word it.
pub const APPEND_SIZE: &str = "append size in bytes";
/// The end of the core's `what` for one event over the event-size limit
/// (`event <id> size in bytes (data + metadata + type)`).
const EVENT_SIZE_SUFFIX: &str = " size in bytes (data + metadata + type)";

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

/// Everything the wire says about one core error.
#[derive(Debug)]
pub struct WireError {
    /// [`kind`] of the error.
    pub kind: &'static str,
    /// The gRPC status code.
    pub code: Code,
    /// The gRPC status message (KurrentDB's words where it has them).
    pub message: String,
    /// `exception` and the typed fields KurrentDB's clients read with it,
    /// then Factum's fields (`factum-error` first).
    pub metadata: Vec<(&'static str, String)>,
    /// The typed detail of a BatchAppend answer.
    pub detail: prost_types::Any,
    /// The HTTP status.
    pub http: StatusCode,
    /// The HTTP body.
    pub body: Value,
}

/// What a `LimitExceeded` is in KurrentDB's terms.
enum Limit {
    AppendSize,
    EventSize(Uuid),
    Other,
}

fn limit_of(what: &str) -> Limit {
    if what == APPEND_SIZE {
        return Limit::AppendSize;
    }
    what.strip_prefix("event ")
        .and_then(|rest| rest.strip_suffix(EVENT_SIZE_SUFFIX))
        .and_then(|id| Uuid::parse_str(id).ok())
        .map_or(Limit::Other, Limit::EventSize)
}

fn any<M: Message>(name: &str, m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/event_store.client.{name}"),
        value: m.encode_to_vec(),
    }
}

/// The map: `err` as every part of the wire shows it.
pub fn describe(err: &Error, op: Operation) -> WireError {
    let kind = kind(err);
    // KurrentDB's `exception` and fields; Factum's fields; HTTP-only fields.
    let mut kurrent: Vec<(&'static str, String)> = Vec::new();
    let mut factum: Vec<(&'static str, Value)> = Vec::new();
    let mut http_fields: Vec<(&'static str, Value)> = Vec::new();
    let stream_fields = |stream: &StreamName, kurrent: &mut Vec<_>, http: &mut Vec<_>| {
        kurrent.push(("stream-name", stream.as_str().to_owned()));
        http.push(("stream", json!(stream.as_str())));
    };
    let unknown = || any("Unknown", &shared::Unknown {});
    let (code, message, detail, http) = match err {
        Error::WrongExpectedVersion {
            stream,
            expected,
            actual,
        } => {
            let (e, a) = (
                expected_version_number(*expected),
                current_version_number(*actual),
            );
            kurrent.push(("exception", "wrong-expected-version".into()));
            stream_fields(stream, &mut kurrent, &mut http_fields);
            kurrent.push(("expected-version", e.to_string()));
            kurrent.push(("actual-version", a.to_string()));
            http_fields.push(("expected", json!(expected.to_string())));
            http_fields.push(("actual", json!(actual.to_string())));
            (
                Code::FailedPrecondition,
                format!(
                    "{} failed due to WrongExpectedVersion. Stream: {stream}, Expected version: {e}, Actual version: {a}",
                    op.name()
                ),
                any(
                    "WrongExpectedVersion",
                    &shared::WrongExpectedVersion::new(*expected, *actual),
                ),
                StatusCode::CONFLICT,
            )
        }
        Error::StreamDeleted { stream } => {
            kurrent.push(("exception", "stream-deleted".into()));
            stream_fields(stream, &mut kurrent, &mut http_fields);
            (
                Code::FailedPrecondition,
                format!("Event stream '{stream}' is deleted."),
                any(
                    "StreamDeleted",
                    &shared::StreamDeleted {
                        stream_identifier: Some(crate::convert::stream_to_wire(stream)),
                    },
                ),
                StatusCode::GONE,
            )
        }
        Error::StreamNotFound { stream } => {
            kurrent.push(("exception", "stream-not-found".into()));
            stream_fields(stream, &mut kurrent, &mut http_fields);
            (
                Code::NotFound,
                format!("Event stream '{stream}' is not found."),
                unknown(),
                StatusCode::NOT_FOUND,
            )
        }
        Error::InvalidInput(msg) => {
            factum.push(("factum-message", json!(msg)));
            (
                Code::InvalidArgument,
                msg.clone(),
                any(
                    "BadRequest",
                    &shared::BadRequest {
                        message: msg.clone(),
                    },
                ),
                StatusCode::BAD_REQUEST,
            )
        }
        Error::LimitExceeded {
            what,
            limit,
            actual,
        } => {
            let as_u32 = |n: u64| n.min(u32::MAX as u64) as u32;
            let detail = match limit_of(what) {
                Limit::AppendSize => {
                    kurrent.push(("exception", "maximum-append-size-exceeded".into()));
                    kurrent.push(("maximum-append-size", limit.to_string()));
                    any(
                        "MaximumAppendSizeExceeded",
                        &shared::MaximumAppendSizeExceeded {
                            max_append_size: as_u32(*limit),
                        },
                    )
                }
                Limit::EventSize(id) => {
                    kurrent.push(("exception", "maximum-append-event-size-exceeded".into()));
                    kurrent.push(("maximum-append-event-size", limit.to_string()));
                    kurrent.push(("event-id", id.to_string()));
                    kurrent.push(("proposed-append-event-size", actual.to_string()));
                    any(
                        "MaximumAppendEventSizeExceeded",
                        &shared::MaximumAppendEventSizeExceeded {
                            event_id: id.to_string(),
                            proposed_event_size: as_u32(*actual),
                            max_append_event_size: as_u32(*limit),
                        },
                    )
                }
                Limit::Other => any(
                    "BadRequest",
                    &shared::BadRequest {
                        message: err.to_string(),
                    },
                ),
            };
            factum.push(("factum-limit-what", json!(what)));
            factum.push(("factum-limit", json!(limit)));
            factum.push(("factum-limit-actual", json!(actual)));
            (
                Code::InvalidArgument,
                err.to_string(),
                detail,
                StatusCode::PAYLOAD_TOO_LARGE,
            )
        }
        Error::Io { context, source } => {
            factum.push(("factum-io-context", json!(context)));
            match source.raw_os_error() {
                Some(n) => factum.push(("factum-os-error", json!(n))),
                None => factum.push(("factum-message", json!(source.to_string()))),
            }
            (
                Code::Internal,
                err.to_string(),
                unknown(),
                StatusCode::INTERNAL_SERVER_ERROR,
            )
        }
        Error::Corrupt {
            file,
            offset,
            detail,
        } => {
            factum.push(("factum-file", json!(file.display().to_string())));
            factum.push(("factum-offset", json!(offset)));
            factum.push(("factum-detail", json!(detail)));
            (
                Code::DataLoss,
                err.to_string(),
                unknown(),
                StatusCode::INTERNAL_SERVER_ERROR,
            )
        }
        Error::Unavailable { reason, message } => {
            factum.push(("factum-message", json!(message)));
            factum.push(("factum-unavailable-reason", json!(reason.as_str())));
            (
                Code::Unavailable,
                err.to_string(),
                unknown(),
                StatusCode::SERVICE_UNAVAILABLE,
            )
        }
        Error::Locked { path } => {
            factum.push(("factum-path", json!(path.display().to_string())));
            (
                Code::Internal,
                err.to_string(),
                unknown(),
                StatusCode::INTERNAL_SERVER_ERROR,
            )
        }
        Error::Unsupported(msg) => {
            factum.push(("factum-message", json!(msg)));
            (
                Code::Unimplemented,
                err.to_string(),
                unknown(),
                StatusCode::NOT_IMPLEMENTED,
            )
        }
        Error::AccessDenied(msg) => {
            // KurrentDB's clients turn this into their AccessDenied error.
            kurrent.push(("exception", "access-denied".into()));
            factum.push(("factum-message", json!(msg)));
            (
                Code::PermissionDenied,
                msg.clone(),
                any("AccessDenied", &shared::AccessDenied {}),
                StatusCode::FORBIDDEN,
            )
        }
        other => (
            Code::Internal,
            other.to_string(),
            unknown(),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    };
    let mut body = json!({ "error": kind, "message": err.to_string() });
    for (k, v) in &http_fields {
        body[*k] = v.clone();
    }
    let mut metadata = kurrent;
    metadata.push(("factum-error", kind.to_owned()));
    for (k, v) in factum {
        let name = k.trim_start_matches("factum-");
        // The body's `message` is the whole error already.
        if name != "message" {
            body[name.replace('-', "_")] = v.clone();
        }
        let text = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        metadata.push((k, text));
    }
    WireError {
        kind,
        code,
        message,
        metadata,
        detail,
        http,
        body,
    }
}

/// A core error as the status a failed call ends with.
pub fn to_status(err: &Error, op: Operation) -> Status {
    let w = describe(err, op);
    let mut md = MetadataMap::new();
    for (key, value) in &w.metadata {
        // Header values must be visible ASCII: anything else is escaped so
        // a stream name never makes the status unsendable.
        if let Ok(v) = MetadataValue::try_from(factum_proto::metadata_text::escape(value).as_str())
        {
            md.insert(*key, v);
        }
    }
    Status::with_metadata(w.code, w.message, md)
}

/// A core error as a failed BatchAppend answer: the same code and fields
/// as [`to_status`], with KurrentDB's typed detail.
pub fn batch_status(err: &Error) -> rpc::Status {
    let w = describe(err, Operation::Append);
    rpc::Status {
        code: w.code as i32,
        message: w.message,
        details: Some(w.detail),
        metadata: w
            .metadata
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    }
}

/// KurrentDB's answer to a batch append whose deadline passed before it
/// was written: DEADLINE_EXCEEDED with a `Timeout` detail.
pub fn batch_timeout() -> rpc::Status {
    rpc::Status {
        code: rpc::Code::DeadlineExceeded as i32,
        message: "the append's deadline passed before it was written".into(),
        details: Some(any("Timeout", &shared::Timeout {})),
        metadata: Default::default(),
    }
}

/// A core error as an HTTP answer: status and JSON body.
pub fn http_error(err: &Error) -> (StatusCode, Value) {
    let w = describe(err, Operation::Append);
    (w.http, w.body)
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
        Error::Unavailable { .. } => "unavailable",
        Error::Locked { .. } => "locked",
        Error::Unsupported(_) => "unsupported",
        Error::AccessDenied(_) => "access-denied",
        _ => "other",
    }
}

/// The error for an append larger than the server accepts (checked while
/// it is received, before the store's own check).
pub fn append_size_exceeded(limit: u64, actual: u64) -> Error {
    Error::LimitExceeded {
        what: APPEND_SIZE.into(),
        limit,
        actual,
    }
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
    use factum_core::rules::{decide, Decision, Limits, Operation as Op};
    use factum_core::{CurrentRevision, EventData, ExpectedRevision, StreamName, StreamRevision};

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
        let b = batch_status(&err);
        assert_eq!(b.code, rpc::Code::FailedPrecondition as i32);
        assert!(b
            .details
            .unwrap()
            .type_url
            .ends_with(".WrongExpectedVersion"));
        assert_eq!(b.metadata["expected-version"], "3");
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
        // In a BatchAppend answer the text is not escaped.
        assert_eq!(batch_status(&err).metadata["stream-name"], "café-1 %");
    }

    /// The limits as the core's rules word them, so a change of wording
    /// there cannot silently turn them into "other" limits here.
    #[test]
    fn the_cores_limits_map_to_kurrentdbs() {
        let limits = Limits {
            max_event_bytes: 10,
            max_append_bytes: 15,
            max_append_events: 2,
        };
        let refuse = |events: Vec<EventData>| match decide(
            &StreamName::new("s-1").unwrap(),
            ExpectedRevision::Any,
            Op::Append(events),
            None,
            None,
            None,
            &limits,
        ) {
            Decision::Reject(e) => e,
            other => panic!("{other:?}"),
        };
        let big = EventData::binary("T", vec![0u8; 20]);
        let id = big.id;
        let e = refuse(vec![big]);
        let s = to_status(&e, Operation::Append);
        assert_eq!(
            s.metadata().get("exception").unwrap(),
            "maximum-append-event-size-exceeded"
        );
        assert_eq!(
            s.metadata().get("event-id").unwrap(),
            id.to_string().as_str()
        );
        assert_eq!(s.metadata().get("maximum-append-event-size").unwrap(), "10");
        assert_eq!(
            s.metadata().get("proposed-append-event-size").unwrap(),
            "21"
        );

        let e = refuse(
            (0..2)
                .map(|_| EventData::binary("T", vec![0u8; 7]))
                .collect(),
        );
        assert!(matches!(&e, Error::LimitExceeded { what, .. } if what == APPEND_SIZE));
        let s = to_status(&e, Operation::Append);
        assert_eq!(
            s.metadata().get("exception").unwrap(),
            "maximum-append-size-exceeded"
        );
        assert_eq!(s.metadata().get("maximum-append-size").unwrap(), "15");

        let e = refuse((0..3).map(|_| EventData::binary("T", "")).collect());
        let s = to_status(&e, Operation::Append);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.metadata().get("exception").is_none(), "{s:?}");
        assert_eq!(s.metadata().get("factum-limit").unwrap(), "2");
        let b = batch_status(&e);
        assert!(b.details.unwrap().type_url.ends_with(".BadRequest"));
    }

    #[test]
    fn disk_faults_are_server_errors_everywhere() {
        let err = Error::io("writing segment 3", std::io::Error::from_raw_os_error(5));
        let s = to_status(&err, Operation::Append);
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(s.metadata().get("factum-os-error").unwrap(), "5");
        let b = batch_status(&err);
        assert_eq!(b.code, rpc::Code::Internal as i32);
        assert!(b.details.unwrap().type_url.ends_with(".Unknown"));
        let (status, body) = http_error(&err);
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"], "io");
        assert_eq!(body["os_error"], 5);
        assert_eq!(body["io_context"], "writing segment 3");
    }
}

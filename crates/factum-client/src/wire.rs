//! Wire ⇄ model for the client: statuses as core errors, read responses as
//! recorded events, requests from core types.

use std::collections::HashMap;

use factum_core::UnavailableReason;
use factum_core::{Error, EventData, ExpectedRevision, StreamName, Uuid};
use factum_proto::expected;
use factum_proto::metadata_text::unescape;
use factum_proto::shared;
use tonic::{Code, Status};

pub fn stream_id(stream: &StreamName) -> Option<shared::StreamIdentifier> {
    Some(shared::StreamIdentifier {
        stream_name: stream.as_str().as_bytes().to_vec(),
    })
}

/// An id for the wire in the structured form (two 64-bit halves, as
/// KurrentDB's Java and .NET clients send them): no text to format here
/// or to allocate and parse on the server. KurrentDB takes both forms.
pub fn uuid(id: Uuid) -> Option<shared::Uuid> {
    let (most, least) = id.as_u64_pair();
    Some(shared::Uuid {
        value: Some(shared::uuid::Value::Structured(shared::uuid::Structured {
            most_significant_bits: most as i64,
            least_significant_bits: least as i64,
        })),
    })
}

/// The server answered something the protocol does not allow.
pub fn protocol(msg: impl Into<String>) -> Error {
    Error::unavailable(
        UnavailableReason::Protocol,
        format!("protocol error from the server: {}", msg.into()),
    )
}

/// A status as the core error it stands for: exactly, when the server is
/// Factum (`factum-error` and its fields, see `factum-server`'s `errors.rs`);
/// by KurrentDB's `exception` key or the status code otherwise.
pub fn from_status(status: Status, fallback_stream: &StreamName) -> Error {
    let md = status.metadata();
    let field = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).map(unescape);
    decode(status.code(), status.message(), field, fallback_stream)
}

/// The one decoder of the error map: `field` looks a name up in a failed
/// call's metadata or in a BatchAppend answer's `metadata` extension.
pub fn decode(
    code: Code,
    message: &str,
    field: impl Fn(&str) -> Option<String>,
    fallback_stream: &StreamName,
) -> Error {
    let stream = || {
        field("stream-name")
            .and_then(|s| StreamName::new(s).ok())
            .unwrap_or_else(|| fallback_stream.clone())
    };
    let num = |k: &str| field(k).and_then(|v| v.parse::<i64>().ok());
    let unsigned = |k: &str| field(k).and_then(|v| v.parse::<u64>().ok());
    // Factum's own text of the error; the status message for other servers.
    let text = || field("factum-message").unwrap_or_else(|| message.to_owned());
    let kind = field("factum-error").or_else(|| field("exception"));
    match kind.as_deref() {
        Some("wrong-expected-version") => Error::WrongExpectedVersion {
            stream: stream(),
            // A number KurrentDB does not define reads as `Any`: the error
            // is still a conflict, only its report is vaguer.
            expected: num("expected-version")
                .and_then(|n| expected::expected_from_version_number(n).ok())
                .unwrap_or(ExpectedRevision::Any),
            actual: expected::current_from_version_number(num("actual-version").unwrap_or(-1)),
        },
        Some("stream-deleted") => Error::StreamDeleted { stream: stream() },
        Some("stream-not-found") => Error::StreamNotFound { stream: stream() },
        Some("limit-exceeded") => Error::LimitExceeded {
            what: field("factum-limit-what").unwrap_or_default(),
            limit: unsigned("factum-limit").unwrap_or(0),
            actual: unsigned("factum-limit-actual").unwrap_or(0),
        },
        // KurrentDB's own limits.
        Some("maximum-append-size-exceeded") => Error::LimitExceeded {
            what: "append size in bytes".into(),
            limit: unsigned("maximum-append-size").unwrap_or(0),
            actual: 0,
        },
        Some("maximum-append-event-size-exceeded") => Error::LimitExceeded {
            what: format!(
                "event {} size in bytes (data + metadata + type)",
                field("event-id").unwrap_or_default()
            ),
            limit: unsigned("maximum-append-event-size").unwrap_or(0),
            actual: unsigned("proposed-append-event-size").unwrap_or(0),
        },
        Some("invalid-input") => Error::InvalidInput(text()),
        Some("unsupported") => Error::Unsupported(text()),
        Some("access-denied") => Error::AccessDenied(text()),
        Some("unavailable") => Error::unavailable(
            field("factum-unavailable-reason").map_or(UnavailableReason::Unspecified, |r| {
                UnavailableReason::from_name(&r)
            }),
            text(),
        ),
        Some("io") => Error::Io {
            context: field("factum-io-context").unwrap_or_default(),
            source: match num("factum-os-error") {
                Some(n) => std::io::Error::from_raw_os_error(n as i32),
                None => std::io::Error::other(text()),
            },
        },
        Some("corrupt") => Error::Corrupt {
            file: field("factum-file").unwrap_or_default().into(),
            offset: unsigned("factum-offset").unwrap_or(0),
            detail: field("factum-detail").unwrap_or_default(),
        },
        Some("locked") => Error::Locked {
            path: field("factum-path").unwrap_or_default().into(),
        },
        _ => match code {
            Code::InvalidArgument => Error::InvalidInput(message.to_owned()),
            Code::ResourceExhausted => Error::LimitExceeded {
                what: format!("gRPC message size ({message})"),
                limit: 0,
                actual: 0,
            },
            Code::Unimplemented => Error::Unsupported(message.to_owned()),
            Code::PermissionDenied => Error::AccessDenied(message.to_owned()),
            // Credentials refused: not worth a retry with the same ones.
            Code::Unauthenticated => Error::AccessDenied(format!("credentials refused: {message}")),
            code => Error::unavailable(
                UnavailableReason::Unspecified,
                format!("{code:?}: {message}"),
            ),
        },
    }
}

/// The system properties every proposed event carries.
pub fn proposed_metadata(e: &EventData) -> HashMap<String, String> {
    let mut m = HashMap::with_capacity(2);
    m.insert("type".to_owned(), e.event_type.clone());
    m.insert("content-type".to_owned(), e.content_type.mime().to_owned());
    m
}

/// The prost path from a read event to a recorded event: the reference
/// `read.rs`'s decoder is tested against.
#[cfg(test)]
pub mod reference {
    use factum_core::{
        ContentType, Error, Link, Position, RecordedEvent, StreamName, StreamRevision, Timestamp,
        Uuid,
    };
    use factum_proto::shared;
    use factum_proto::streams::read_resp::read_event::RecordedEvent as WireEvent;
    use factum_proto::streams::read_resp::ReadEvent;

    use super::protocol;

    const LINK_EVENT_TYPE: &str = "$>";

    fn parse_uuid(id: Option<&shared::Uuid>) -> Result<Uuid, Error> {
        match id.and_then(|u| u.value.as_ref()) {
            Some(shared::uuid::Value::Structured(s)) => Ok(Uuid::from_u64_pair(
                s.most_significant_bits as u64,
                s.least_significant_bits as u64,
            )),
            Some(shared::uuid::Value::String(s)) => Uuid::parse_str(s)
                .map_err(|e| protocol(format!("event id {s:?} is not a UUID: {e}"))),
            None => Err(protocol("an event came without its id")),
        }
    }

    /// The prost path of `read.rs`'s decoder, kept as the reference its tests
    /// compare against.
    fn record(w: WireEvent) -> Result<RecordedEvent, Error> {
        let id = parse_uuid(w.id.as_ref())?;
        let stream = StreamName::from_utf8(
            &w.stream_identifier
                .ok_or_else(|| protocol("an event came without its stream"))?
                .stream_name,
        )?;
        let event_type = w.metadata.get("type").cloned().unwrap_or_default();
        let content_type = match w.metadata.get("content-type").map(String::as_str) {
            Some("application/json") => ContentType::Json,
            _ => ContentType::Binary,
        };
        let created = w
            .metadata
            .get("created")
            .and_then(|t| factum_proto::ticks::parse(t.as_bytes()))
            .unwrap_or(Timestamp(0));
        Ok(RecordedEvent {
            id,
            stream,
            revision: StreamRevision(w.stream_revision),
            position: Position(w.commit_position),
            event_type,
            content_type,
            data: w.data.into(),
            metadata: w.custom_metadata.into(),
            created,
            link: None,
        })
    }
    /// A read event as the core sees it: the original event, with `link` set
    /// when it was reached through a `$ce-`/`$et-` link (links are always
    /// requested resolved).
    pub fn event(e: ReadEvent) -> Result<RecordedEvent, Error> {
        let event = e
            .event
            .ok_or_else(|| protocol("a read event came without its event"))?;
        let mut out = record(event)?;
        if let Some(link) = e.link {
            let link = record(link)?;
            if link.event_type == LINK_EVENT_TYPE {
                out.link = Some(Link {
                    stream: link.stream,
                    revision: link.revision,
                });
            }
        }
        Ok(out)
    }
}

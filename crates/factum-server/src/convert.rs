//! Conversions between Factum's model and the KurrentDB wire messages.

use std::collections::HashMap;

use bytes::Bytes;
use factum_core::{ContentType, EventData, Position, RecordedEvent, StreamName, Timestamp, Uuid};
use factum_proto::shared;
use factum_proto::streams::read_resp::read_event::RecordedEvent as WireEvent;
use tonic::Status;

/// The event type of a link event in `$ce-…` / `$et-…` streams.
pub const LINK_EVENT_TYPE: &str = "$>";

/// How ids go on the wire in read responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UuidFormat {
    /// Two signed 64-bit halves.
    Structured,
    /// The canonical string.
    String,
}

/// A wire UUID in either form.
pub fn uuid_to_wire(id: Uuid, format: UuidFormat) -> shared::Uuid {
    let value = match format {
        UuidFormat::Structured => {
            let (most, least) = id.as_u64_pair();
            shared::uuid::Value::Structured(shared::uuid::Structured {
                most_significant_bits: most as i64,
                least_significant_bits: least as i64,
            })
        }
        UuidFormat::String => shared::uuid::Value::String(id.hyphenated().to_string()),
    };
    shared::Uuid { value: Some(value) }
}

/// Parses a wire UUID (either form); `None` or a malformed id is `InvalidArgument`.
pub fn uuid_from_wire(id: Option<&shared::Uuid>, what: &str) -> Result<Uuid, Status> {
    match id.and_then(|u| u.value.as_ref()) {
        Some(shared::uuid::Value::Structured(s)) => Ok(Uuid::from_u64_pair(
            s.most_significant_bits as u64,
            s.least_significant_bits as u64,
        )),
        Some(shared::uuid::Value::String(s)) => Uuid::parse_str(s)
            .map_err(|e| Status::invalid_argument(format!("{what} {s:?} is not a UUID: {e}"))),
        None => Err(Status::invalid_argument(format!("{what} is missing"))),
    }
}

/// Parses a stream identifier; a missing or invalid name is `InvalidArgument`.
pub fn stream_from_wire(id: Option<&shared::StreamIdentifier>) -> Result<StreamName, Status> {
    let id = id.ok_or_else(|| Status::invalid_argument("stream_identifier is missing"))?;
    StreamName::from_utf8(&id.stream_name)
        .map_err(|e| Status::invalid_argument(format!("invalid stream name: {e}")))
}

/// A stream identifier for the wire.
pub fn stream_to_wire(stream: &StreamName) -> shared::StreamIdentifier {
    shared::StreamIdentifier {
        stream_name: stream.as_str().as_bytes().to_vec(),
    }
}

/// Builds an event to append from a proposed message's parts; `type` and
/// `content-type` are required in the system metadata, as in KurrentDB.
pub fn proposed_to_event(
    id: Option<&shared::Uuid>,
    metadata: &HashMap<String, String>,
    custom_metadata: Vec<u8>,
    data: Vec<u8>,
) -> Result<EventData, Status> {
    proposed_event(
        id,
        metadata.get("type").map(String::as_str),
        metadata.get("content-type").map(String::as_str),
        custom_metadata.into(),
        data.into(),
    )
}

/// A proposed event from its parts: the id, the `type` and `content-type`
/// system metadata (both required), custom metadata and data.
pub fn proposed_event(
    id: Option<&shared::Uuid>,
    event_type: Option<&str>,
    content_type: Option<&str>,
    custom_metadata: Bytes,
    data: Bytes,
) -> Result<EventData, Status> {
    let id = uuid_from_wire(id, "event id")?;
    let (Some(event_type), Some(content_type)) = (event_type, content_type) else {
        let missing: Vec<&str> = [("type", event_type), ("content-type", content_type)]
            .into_iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k)
            .collect();
        let mut status = Status::invalid_argument(format!(
            "required metadata properties are missing: {}",
            missing.join(", ")
        ));
        let md = status.metadata_mut();
        md.insert(
            "exception",
            "missing-required-metadata-property".parse().unwrap(),
        );
        if let Ok(v) = missing.join(",").parse() {
            md.insert("required-metadata-properties", v);
        }
        return Err(status);
    };
    let content_type = match content_type {
        "application/json" => ContentType::Json,
        _ => ContentType::Binary,
    };
    Ok(EventData {
        id,
        event_type: event_type.to_owned(),
        content_type,
        data,
        metadata: custom_metadata,
    })
}

fn system_metadata(
    event_type: &str,
    content_type: ContentType,
    created: Timestamp,
) -> HashMap<String, String> {
    let mut m = HashMap::with_capacity(3);
    m.insert("type".to_owned(), event_type.to_owned());
    m.insert("content-type".to_owned(), content_type.mime().to_owned());
    m.insert("created".to_owned(), factum_proto::ticks::to_text(created));
    m
}

/// The event itself (never the link) as a wire record.
pub fn event_to_wire(e: &RecordedEvent, format: UuidFormat) -> WireEvent {
    WireEvent {
        id: Some(uuid_to_wire(e.id, format)),
        stream_identifier: Some(stream_to_wire(&e.stream)),
        stream_revision: e.revision.0,
        prepare_position: e.position.0,
        commit_position: e.position.0,
        metadata: system_metadata(&e.event_type, e.content_type, e.created),
        custom_metadata: e.metadata.to_vec(),
        data: e.data.to_vec(),
    }
}

/// The link event (`$>`, data `"<revision>@<stream>"`) through which `e`
/// was read, when it was read through a `$ce-`/`$et-` stream.
pub fn link_to_wire(e: &RecordedEvent, format: UuidFormat) -> Option<WireEvent> {
    let link = e.link.as_ref()?;
    Some(WireEvent {
        id: Some(uuid_to_wire(e.original_id(), format)),
        stream_identifier: Some(stream_to_wire(&link.stream)),
        stream_revision: link.revision.0,
        // No separate link record exists: the link stands at its target's position.
        prepare_position: e.position.0,
        commit_position: e.position.0,
        metadata: system_metadata(LINK_EVENT_TYPE, ContentType::Binary, e.created),
        custom_metadata: Vec::new(),
        data: format!("{}@{}", e.revision, e.stream).into_bytes(),
    })
}

/// The `event` and `link` of a delivered event: read through a link
/// stream with links resolved, the event and its link; not resolved, the
/// link record alone; read directly, the event.
pub fn event_and_link(
    e: &RecordedEvent,
    resolve_links: bool,
    format: UuidFormat,
) -> (Option<WireEvent>, Option<WireEvent>) {
    match (e.link.is_some(), resolve_links) {
        (true, true) => (Some(event_to_wire(e, format)), link_to_wire(e, format)),
        (true, false) => (link_to_wire(e, format), None),
        (false, _) => (Some(event_to_wire(e, format)), None),
    }
}

/// A call's deadline from its `grpc-timeout` header, as gRPC defines it:
/// up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`). `None` when
/// absent or malformed (then the call has no deadline).
pub fn grpc_timeout(header: Option<&str>) -> Option<std::time::Duration> {
    use std::time::Duration;
    let h = header?;
    // Not `split_at`: the last character may be more than one byte.
    let (digits, unit) = h.split_at_checked(h.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The status of a call whose deadline passed.
pub fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("the call's deadline passed")
}

/// A position for the wire (`commit == prepare`: Factum's log is dense).
pub fn all_position(p: Position) -> shared::AllStreamPosition {
    shared::AllStreamPosition {
        commit_position: p.0,
        prepare_position: p.0,
    }
}

/// The server's current time as a protobuf timestamp.
pub fn now_timestamp() -> prost_types::Timestamp {
    let t = Timestamp::now().as_micros();
    prost_types::Timestamp {
        seconds: t.div_euclid(1_000_000),
        nanos: (t.rem_euclid(1_000_000) * 1000) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_round_trip_in_both_forms() {
        let id = Uuid::parse_str("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap();
        for f in [UuidFormat::Structured, UuidFormat::String] {
            let w = uuid_to_wire(id, f);
            assert_eq!(uuid_from_wire(Some(&w), "id").unwrap(), id);
        }
        // Java's layout: most significant half first, big-endian.
        let shared::uuid::Value::Structured(s) =
            uuid_to_wire(id, UuidFormat::Structured).value.unwrap()
        else {
            panic!()
        };
        assert_eq!(s.most_significant_bits as u64, 0x0f8f_ad5b_d9cb_469f);
        assert!(uuid_from_wire(None, "id").is_err());
        let bad = shared::Uuid {
            value: Some(shared::uuid::Value::String("nope".into())),
        };
        assert_eq!(
            uuid_from_wire(Some(&bad), "id").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn grpc_timeouts_parse_as_grpc_defines_them() {
        use std::time::Duration;
        assert_eq!(grpc_timeout(Some("5S")), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout(Some("250m")), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(Some("2H")), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout(Some("1n")), Some(Duration::from_nanos(1)));
        for bad in ["", "S", "5", "123456789S", "5s", "-1S", "1.5S"] {
            assert_eq!(grpc_timeout(Some(bad)), None, "{bad}");
        }
        assert_eq!(grpc_timeout(None), None);
        // Found by tests/fuzz_input.rs: a multi-byte last character.
        assert_eq!(grpc_timeout(Some("1ʲ")), None);
    }

    #[test]
    fn proposed_messages_need_type_and_content_type() {
        let id = uuid_to_wire(Uuid::new_v4(), UuidFormat::String);
        let mut md = HashMap::new();
        md.insert("type".to_owned(), "X".to_owned());
        let err = proposed_to_event(Some(&id), &md, vec![], vec![]).unwrap_err();
        assert_eq!(
            err.metadata().get("exception").unwrap(),
            "missing-required-metadata-property"
        );
        md.insert("content-type".to_owned(), "application/json".to_owned());
        let e = proposed_to_event(Some(&id), &md, vec![], b"{}".to_vec()).unwrap();
        assert_eq!(e.content_type, ContentType::Json);
    }
}

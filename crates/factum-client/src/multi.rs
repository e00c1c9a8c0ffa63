//! Multi-stream appends (ADR 29) over KurrentDB's v2 `AppendRecords`:
//! conditions other than "any" go as consistency checks, events as records
//! in the request's order. The answer has no per-stream positions; the
//! server writes the records as one contiguous range ending at the answer's
//! position, so each stream's last position follows from its last record's
//! place in the request.

use std::collections::HashMap;

use crate::connection::Transport;
use factum_core::{
    ActualState, ContentType, Error, MultiAppend, MultiAppendResult, Position, Result,
    StreamAppended, StreamCondition, StreamRevision, Violation,
};
use factum_proto::status::{ErrorInfo, RichStatus};
use factum_proto::v2_streams::errors::{
    consistency_violation, AppendConsistencyViolationErrorDetails,
};
use factum_proto::v2_streams::streams_service_client::StreamsServiceClient;
use factum_proto::v2_streams::{
    consistency_check, AppendRecord, AppendRecordsRequest, ConsistencyCheck, SchemaFormat,
    SchemaInfo,
};
use prost::Message;

fn condition_to_wire(c: StreamCondition) -> Option<i64> {
    match c {
        StreamCondition::Any => None,
        StreamCondition::NoStream => Some(-1),
        StreamCondition::Exists => Some(-4),
        StreamCondition::Revision(r) => Some(r.0 as i64),
        StreamCondition::Deleted => Some(-5),
        StreamCondition::Tombstoned => Some(-6),
    }
}

fn actual_of(v: i64) -> ActualState {
    match v {
        n if n >= 0 => ActualState::Revision(StreamRevision(n as u64)),
        -5 => ActualState::Deleted,
        -6 => ActualState::Tombstoned,
        _ => ActualState::NoStream,
    }
}

/// Event metadata must be a JSON object to travel as record properties;
/// other metadata cannot be sent this way.
fn properties(metadata: &[u8]) -> Result<std::collections::HashMap<String, prost_types::Value>> {
    if metadata.is_empty() {
        return Ok(Default::default());
    }
    let serde_json::Value::Object(map) = serde_json::from_slice(metadata).map_err(|_| {
        Error::InvalidInput("multi-stream appends take JSON object metadata only".into())
    })?
    else {
        return Err(Error::InvalidInput(
            "multi-stream appends take JSON object metadata only".into(),
        ));
    };
    Ok(map
        .into_iter()
        .filter(|(k, _)| !k.starts_with("$schema."))
        .map(|(k, v)| (k, value_of(v)))
        .collect())
}

fn value_of(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(value_of).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.into_iter().map(|(k, v)| (k, value_of(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// Sends `request` as one `AppendRecords` call.
pub(crate) async fn append_records(
    channel: Transport,
    request: &MultiAppend,
) -> Result<MultiAppendResult> {
    let mut checks = Vec::new();
    for p in &request.streams {
        if let Some(state) = condition_to_wire(p.condition) {
            checks.push(ConsistencyCheck {
                r#type: Some(consistency_check::Type::StreamState(
                    consistency_check::StreamStateCheck {
                        stream: p.stream.to_string(),
                        expected_state: state,
                    },
                )),
            });
        }
    }
    let mut records = Vec::with_capacity(request.events.len());
    for (i, e) in &request.events {
        records.push(AppendRecord {
            record_id: Some(e.id.to_string()),
            properties: properties(&e.metadata)?,
            schema: Some(SchemaInfo {
                format: match e.content_type {
                    ContentType::Json => SchemaFormat::Json,
                    ContentType::Binary => SchemaFormat::Bytes,
                } as i32,
                name: Some(e.event_type.clone()),
                id: None,
            }),
            data: e.data.to_vec(),
            stream: Some(request.streams[*i].stream.to_string()),
        });
    }
    let mut client = StreamsServiceClient::new(channel)
        .max_decoding_message_size(crate::MAX_MESSAGE)
        .max_encoding_message_size(crate::MAX_MESSAGE);
    let answer = client
        .append_records(AppendRecordsRequest { records, checks })
        .await
        .map_err(|s| error_of(s, request))?
        .into_inner();
    let last = answer.position as u64;
    let n = request.events.len() as u64;
    let mut last_record: HashMap<usize, u64> = HashMap::new();
    for (k, (i, _)) in request.events.iter().enumerate() {
        last_record.insert(*i, k as u64);
    }
    let mut streams: Vec<StreamAppended> = answer
        .revisions
        .iter()
        .filter_map(|r| {
            let index = request
                .streams
                .iter()
                .position(|p| p.stream.as_str() == r.stream)?;
            let k = last_record.get(&index)?;
            Some(StreamAppended {
                index,
                stream: request.streams[index].stream.clone(),
                revision: StreamRevision(r.revision as u64),
                position: Position(last - (n - 1 - k)),
            })
        })
        .collect();
    streams.sort_by_key(|s| s.index);
    Ok(MultiAppendResult {
        streams,
        position: Position(last),
    })
}

/// A failed call in the core's terms: consistency violations with the
/// request's indexes, the rest as the other calls map them.
fn error_of(status: tonic::Status, request: &MultiAppend) -> Error {
    let rich = RichStatus::decode(status.details()).ok();
    let reason = rich.as_ref().and_then(|r| {
        r.details
            .iter()
            .find(|d| d.type_url.ends_with("google.rpc.ErrorInfo"))
            .and_then(|d| ErrorInfo::decode(&d.value[..]).ok())
            .map(|i| i.reason)
    });
    match reason.as_deref() {
        Some("APPEND_CONSISTENCY_VIOLATION") => {
            let details = rich.as_ref().and_then(|r| {
                r.details
                    .iter()
                    .find(|d| {
                        d.type_url
                            .ends_with("AppendConsistencyViolationErrorDetails")
                    })
                    .and_then(|d| AppendConsistencyViolationErrorDetails::decode(&d.value[..]).ok())
            });
            let violations = details
                .map(|d| d.violations)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|v| {
                    let Some(consistency_violation::Type::StreamState(s)) = v.r#type else {
                        return None;
                    };
                    let index = request
                        .streams
                        .iter()
                        .position(|p| p.stream.as_str() == s.stream)?;
                    Some(Violation {
                        index,
                        stream: request.streams[index].stream.clone(),
                        expected: request.streams[index].condition,
                        actual: actual_of(s.actual_state),
                    })
                })
                .collect::<Vec<_>>();
            let mut violations = violations;
            violations.sort_by_key(|v| v.index);
            Error::ConsistencyViolation { violations }
        }
        Some("BAD_REQUEST") => Error::InvalidInput(status.message().to_owned()),
        Some("ACCESS_DENIED") => Error::AccessDenied(status.message().to_owned()),
        _ => crate::error_from_status(status),
    }
}

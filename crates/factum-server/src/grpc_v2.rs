//! KurrentDB's v2 `kurrentdb.protocol.v2.streams.StreamsService` (ADR 29):
//! `AppendSession` (client-streaming, one request per stream) and
//! `AppendRecords` (records of any streams, interleaved, with consistency
//! checks), both over `EventStore::append_multi`.
//!
//! As KurrentDB v26.1.0: expected revisions are `sint64` (a revision, −1 no
//! stream, −2 any, −4 exists; checks also −5 deleted, −6 tombstoned, never
//! −2); a record's properties and schema become the event's JSON metadata
//! as v1 readers see it (`$schema.name`, `$schema.format`, `$schema.id`
//! added); errors are a status code with `grpc-status-details-bin` holding a
//! `google.rpc.Status` whose details are an `ErrorInfo` (reason without the
//! enum prefix, e.g. `STREAM_REVISION_CONFLICT`, domain `streams` or
//! `server`) followed by the error's own details message, last (the Node
//! SDK reads that one).

use std::collections::HashSet;

use factum_core::{
    ActualState, ContentType, Error, EventData, EventStore, MultiAppend, StreamCondition,
    StreamName, StreamRevision, Uuid,
};
use factum_proto::status::{BadRequest, ErrorInfo, RichStatus};
use factum_proto::v2_streams::errors as wire_errors;
use factum_proto::v2_streams::streams_service_server::StreamsService;
use factum_proto::v2_streams::{
    consistency_check, AppendRecord, AppendRecordsRequest, AppendRecordsResponse, AppendRequest,
    AppendResponse, AppendSessionResponse, SchemaFormat, StreamRevision as WireRevision,
};
use prost::Message;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::grpc::GrpcApi;

/// The service's full name, as `ServerFeatures` lists it.
pub const SERVICE: &str = "kurrentdb.protocol.v2.streams.StreamsService";

const NO_STREAM: i64 = -1;
const ANY: i64 = -2;
const EXISTS: i64 = -4;
const DELETED: i64 = -5;
const TOMBSTONED: i64 = -6;

/// Most append requests one session may send (each names a new stream).
const MAX_SESSION_REQUESTS: usize = 10_000;

/// A status as KurrentDB's v2 services send it.
fn rich(
    code: Code,
    message: String,
    reason: &str,
    domain: &str,
    detail: Option<prost_types::Any>,
) -> Status {
    let info = ErrorInfo {
        reason: reason.to_owned(),
        domain: domain.to_owned(),
        metadata: Default::default(),
    };
    let mut details = vec![prost_types::Any {
        type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
        value: info.encode_to_vec(),
    }];
    details.extend(detail);
    let status = RichStatus {
        code: code as i32,
        message: message.clone(),
        details,
    };
    Status::with_details(code, message, status.encode_to_vec().into())
}

fn any<M: Message>(name: &str, m: &M) -> Option<prost_types::Any> {
    Some(prost_types::Any {
        type_url: format!("type.googleapis.com/{name}"),
        value: m.encode_to_vec(),
    })
}

fn bad_request(message: impl Into<String>) -> Status {
    let message = message.into();
    let details = BadRequest {
        field_violations: vec![factum_proto::status::bad_request::FieldViolation {
            field: String::new(),
            description: message.clone(),
        }],
    };
    rich(
        Code::InvalidArgument,
        message,
        "BAD_REQUEST",
        "server",
        any("google.rpc.BadRequest", &details),
    )
}

fn streams_error(
    code: Code,
    message: String,
    reason: &str,
    detail: Option<prost_types::Any>,
) -> Status {
    rich(code, message, reason, "streams", detail)
}

/// Errors other than violations, as KurrentDB names them.
fn store_error(e: &Error) -> Status {
    match e {
        Error::InvalidInput(m) => bad_request(m.clone()),
        Error::LimitExceeded {
            what,
            limit,
            actual,
        } if what.contains("append size") => {
            let d = wire_errors::AppendTransactionSizeExceededErrorDetails {
                size: i32::try_from(*actual).unwrap_or(i32::MAX),
                max_size: i32::try_from(*limit).unwrap_or(i32::MAX),
            };
            streams_error(
                Code::Aborted,
                e.to_string(),
                "APPEND_TRANSACTION_SIZE_EXCEEDED",
                any("kurrentdb.protocol.v2.streams.errors.AppendTransactionSizeExceededErrorDetails", &d),
            )
        }
        Error::LimitExceeded { .. } => bad_request(e.to_string()),
        Error::AccessDenied(m) => rich(
            Code::PermissionDenied,
            m.clone(),
            "ACCESS_DENIED",
            "server",
            None,
        ),
        Error::Unavailable { message: m, .. } => rich(
            Code::Unavailable,
            m.clone(),
            "SERVER_NOT_READY",
            "server",
            None,
        ),
        e => rich(
            Code::Internal,
            e.to_string(),
            "SERVER_MALFUNCTION",
            "server",
            None,
        ),
    }
}

fn condition_to_wire(c: StreamCondition) -> i64 {
    match c {
        StreamCondition::Any => ANY,
        StreamCondition::NoStream => NO_STREAM,
        StreamCondition::Exists => EXISTS,
        StreamCondition::Revision(r) => r.0 as i64,
        StreamCondition::Deleted => DELETED,
        StreamCondition::Tombstoned => TOMBSTONED,
    }
}

fn actual_to_wire(a: ActualState) -> i64 {
    match a {
        ActualState::NoStream => NO_STREAM,
        ActualState::Revision(r) => r.0 as i64,
        ActualState::Deleted => DELETED,
        ActualState::Tombstoned => TOMBSTONED,
    }
}

/// An append request's expected revision (unset: any).
fn expected_revision(v: Option<i64>) -> Result<StreamCondition, Status> {
    match v.unwrap_or(ANY) {
        n if n >= 0 => Ok(StreamCondition::Revision(StreamRevision(n as u64))),
        NO_STREAM => Ok(StreamCondition::NoStream),
        ANY => Ok(StreamCondition::Any),
        EXISTS => Ok(StreamCondition::Exists),
        _ => Err(bad_request(
            "Expected revision must be positive or one of the allowed constants: NoStream (-1), Any (-2) or Exists (-4).",
        )),
    }
}

/// A consistency check's expected state (never any).
fn expected_state(v: i64) -> Result<StreamCondition, Status> {
    match v {
        n if n >= 0 => Ok(StreamCondition::Revision(StreamRevision(n as u64))),
        NO_STREAM => Ok(StreamCondition::NoStream),
        EXISTS => Ok(StreamCondition::Exists),
        DELETED => Ok(StreamCondition::Deleted),
        TOMBSTONED => Ok(StreamCondition::Tombstoned),
        _ => Err(bad_request(
            "Expected state must be positive or one of the allowed constants: NoStream (-1), Exists (-4), Deleted (-5), or Tombstoned (-6). Any (-2) is not allowed.",
        )),
    }
}

fn stream_name(s: &str) -> Result<StreamName, Status> {
    if s.is_empty() || s == "$$" {
        return Err(bad_request("Stream must not be empty or '$$'."));
    }
    StreamName::new(s).map_err(|e| bad_request(e.to_string()))
}

/// `prost_types::Value` as JSON.
fn json_of(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), json_of(v)))
                .collect(),
        ),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(json_of).collect())
        }
    }
}

fn valid_schema_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '$' | ':' | '-'))
}

/// A record as the event v1 readers see: type = schema name, JSON when the
/// schema format is JSON, metadata = the properties as JSON plus
/// `$schema.*` (as KurrentDB synthesizes it for v1 reads).
fn event_of(record: AppendRecord) -> Result<EventData, Status> {
    let schema = record.schema.unwrap_or_default();
    let format = SchemaFormat::try_from(schema.format).unwrap_or(SchemaFormat::Unspecified);
    let format_name = match format {
        SchemaFormat::Unspecified => {
            return Err(bad_request("Schema format must not be Unspecified."))
        }
        SchemaFormat::Json => "Json",
        SchemaFormat::Protobuf => "Protobuf",
        SchemaFormat::Avro => "Avro",
        SchemaFormat::Bytes => "Bytes",
    };
    let name = schema.name.unwrap_or_default();
    if !valid_schema_name(&name) {
        return Err(bad_request(format!(
            "Schema name can only contain unicode letters, digits, underscores, dashes, periods, colons, and dollar signs. Attempted Value: {name}"
        )));
    }
    let id = match record.record_id.as_deref() {
        None => Uuid::new_v4(),
        Some(s) => match Uuid::parse_str(s) {
            Ok(id) if !id.is_nil() => id,
            _ => return Err(bad_request("Record ID must be a valid and non-empty UUID.")),
        },
    };
    let mut metadata = serde_json::Map::new();
    for (k, v) in &record.properties {
        if k.is_empty() {
            return Err(bad_request("Property keys must not be empty."));
        }
        metadata.insert(k.clone(), json_of(v));
    }
    metadata.insert("$schema.format".into(), format_name.into());
    if let Some(schema_id) = schema.id {
        metadata.insert("$schema.id".into(), schema_id.into());
    }
    metadata.insert("$schema.name".into(), name.clone().into());
    let content_type = match format {
        SchemaFormat::Json => ContentType::Json,
        _ => ContentType::Binary,
    };
    let metadata = serde_json::to_vec(&metadata).expect("JSON of a map");
    Ok(EventData::new(name, content_type, record.data)
        .with_id(id)
        .with_metadata(metadata))
}

#[tonic::async_trait]
impl<S: EventStore> StreamsService for GrpcApi<S> {
    async fn append_session(
        &self,
        request: Request<Streaming<AppendRequest>>,
    ) -> Result<Response<AppendSessionResponse>, Status> {
        self.authenticate(&request)?;
        let mut requests = request.into_inner();
        let mut multi = MultiAppend::new();
        let mut seen = HashSet::new();
        let mut expected = Vec::new();
        // The whole session is one append: its bytes count against the
        // append size limit as they arrive (refused before the rest comes)
        // and are held in the server's append budget until it is answered.
        let mut size = 0u64;
        let mut reserved = crate::budget::Reserved::default();
        while let Some(req) = requests.message().await? {
            let bytes = req.encoded_len() as u64;
            let ctx = self.ctx();
            ctx.config
                .count_append_bytes(&mut size, bytes)
                .map_err(|e| store_error(&e))?;
            ctx.append_budget
                .reserve(&mut reserved, bytes)
                .await
                .map_err(|e| Status::resource_exhausted(e.to_string()))?;
            if seen.len() >= MAX_SESSION_REQUESTS {
                return Err(bad_request(format!(
                    "an append session takes at most {MAX_SESSION_REQUESTS} append requests"
                )));
            }
            let stream = stream_name(&req.stream)?;
            if !seen.insert(req.stream.clone()) {
                let d = wire_errors::StreamAlreadyInAppendSessionErrorDetails {
                    stream: req.stream.clone(),
                };
                return Err(streams_error(
                    Code::Aborted,
                    format!("Stream '{}' already has a different group of messages in this session.", req.stream),
                    "STREAM_ALREADY_IN_APPEND_SESSION",
                    any("kurrentdb.protocol.v2.streams.errors.StreamAlreadyInAppendSessionErrorDetails", &d),
                ));
            }
            if req.records.is_empty() {
                return Err(bad_request(
                    "Stream append request must contain at least one record",
                ));
            }
            let condition = expected_revision(req.expected_revision)?;
            expected.push(req.expected_revision.unwrap_or(ANY));
            let events = req
                .records
                .into_iter()
                .map(event_of)
                .collect::<Result<Vec<_>, _>>()?;
            multi = multi.append(stream.clone(), factum_core::ExpectedRevision::Any, events);
            multi = multi.check(stream, condition);
        }
        if seen.is_empty() {
            return Err(streams_error(
                Code::FailedPrecondition,
                "Append session started, but no append requests were sent before ending the session.".into(),
                "APPEND_SESSION_NO_REQUESTS",
                None,
            ));
        }
        match self.ctx().store.append_multi(multi).await {
            Ok(r) => Ok(Response::new(AppendSessionResponse {
                output: r
                    .streams
                    .iter()
                    .map(|s| AppendResponse {
                        stream: s.stream.to_string(),
                        stream_revision: s.revision.0 as i64,
                        position: s.position.0 as i64,
                    })
                    .collect(),
                position: r.position.0 as i64,
            })),
            Err(Error::ConsistencyViolation { violations }) => {
                let v = &violations[0];
                if v.actual == ActualState::Tombstoned {
                    let d = wire_errors::StreamTombstonedErrorDetails {
                        stream: v.stream.to_string(),
                    };
                    return Err(streams_error(
                        Code::FailedPrecondition,
                        format!("Stream '{}' has been tombstoned. It has been permanently removed from the system and cannot be restored.", v.stream),
                        "STREAM_TOMBSTONED",
                        any("kurrentdb.protocol.v2.streams.errors.StreamTombstonedErrorDetails", &d),
                    ));
                }
                let d = wire_errors::StreamRevisionConflictErrorDetails {
                    stream: v.stream.to_string(),
                    expected_revision: expected[v.index],
                    actual_revision: actual_to_wire(v.actual),
                };
                Err(streams_error(
                    Code::FailedPrecondition,
                    format!(
                        "Append failed due to a revision conflict on stream '{}'. Expected revision: {}. Actual revision: {}.",
                        v.stream, d.expected_revision, d.actual_revision
                    ),
                    "STREAM_REVISION_CONFLICT",
                    any("kurrentdb.protocol.v2.streams.errors.StreamRevisionConflictErrorDetails", &d),
                ))
            }
            Err(e) => Err(store_error(&e)),
        }
    }

    async fn append_records(
        &self,
        request: Request<AppendRecordsRequest>,
    ) -> Result<Response<AppendRecordsResponse>, Status> {
        self.authenticate(&request)?;
        let req = request.into_inner();
        if req.records.is_empty() {
            return Err(bad_request(
                "Append records request must contain at least one record.",
            ));
        }
        let mut multi = MultiAppend::new();
        let mut checked = HashSet::new();
        for check in req.checks {
            let Some(consistency_check::Type::StreamState(s)) = check.r#type else {
                return Err(bad_request("Each consistency check must specify a type."));
            };
            let stream = stream_name(&s.stream)?;
            if !checked.insert(s.stream.clone()) {
                return Err(bad_request(
                    "Each stream can only appear once in consistency checks.",
                ));
            }
            multi = multi.check(stream, expected_state(s.expected_state)?);
        }
        for record in req.records {
            let stream = stream_name(record.stream.as_deref().unwrap_or(""))?;
            multi = multi.record(stream, event_of(record)?);
        }
        let conditions: Vec<i64> = multi
            .streams
            .iter()
            .map(|p| condition_to_wire(p.condition))
            .collect();
        match self.ctx().store.append_multi(multi).await {
            Ok(r) => Ok(Response::new(AppendRecordsResponse {
                revisions: r
                    .streams
                    .iter()
                    .map(|s| WireRevision {
                        stream: s.stream.to_string(),
                        revision: s.revision.0 as i64,
                    })
                    .collect(),
                position: r.position.0 as i64,
            })),
            Err(Error::ConsistencyViolation { violations }) => {
                use wire_errors::consistency_violation::{StreamStateViolation, Type};
                let message = violations.iter().fold(
                    String::from("Append failed due to consistency violations.\n"),
                    |m, v| m + &format!("\n - {v}"),
                );
                let d = wire_errors::AppendConsistencyViolationErrorDetails {
                    violations: violations
                        .iter()
                        .map(|v| wire_errors::ConsistencyViolation {
                            check_index: v.index as i32,
                            r#type: Some(Type::StreamState(StreamStateViolation {
                                stream: v.stream.to_string(),
                                expected_state: conditions[v.index],
                                actual_state: actual_to_wire(v.actual),
                            })),
                        })
                        .collect(),
                };
                Err(streams_error(
                    Code::FailedPrecondition,
                    message,
                    "APPEND_CONSISTENCY_VIOLATION",
                    any("kurrentdb.protocol.v2.streams.errors.AppendConsistencyViolationErrorDetails", &d),
                ))
            }
            Err(e) => Err(store_error(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use factum_proto::v2_streams::SchemaInfo;

    fn record(format: SchemaFormat, name: &str, id: Option<&str>) -> AppendRecord {
        AppendRecord {
            record_id: id.map(Into::into),
            properties: [(
                "n".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(2.5)),
                },
            )]
            .into(),
            schema: Some(SchemaInfo {
                format: format as i32,
                name: Some(name.into()),
                id: Some("4f1b5f34-3c5e-4ad5-b0f3-0c1e0f4b9a11".into()),
            }),
            data: b"\x01\x02".to_vec(),
            stream: None,
        }
    }

    #[test]
    fn records_become_events_as_v1_readers_see_them() {
        let e = event_of(record(SchemaFormat::Protobuf, "order.placed:v2", None)).unwrap();
        assert_eq!(e.event_type, "order.placed:v2");
        assert_eq!(e.content_type, ContentType::Binary);
        let m: serde_json::Value = serde_json::from_slice(&e.metadata).unwrap();
        assert_eq!(m["n"], 2.5);
        assert_eq!(m["$schema.name"], "order.placed:v2");
        assert_eq!(m["$schema.format"], "Protobuf");
        assert_eq!(m["$schema.id"], "4f1b5f34-3c5e-4ad5-b0f3-0c1e0f4b9a11");
        let e = event_of(record(SchemaFormat::Json, "Placed", None)).unwrap();
        assert_eq!(e.content_type, ContentType::Json);
    }

    #[test]
    fn bad_records_and_numbers_are_bad_requests() {
        for bad in [
            record(SchemaFormat::Unspecified, "T", None),
            record(SchemaFormat::Json, "has space", None),
            record(SchemaFormat::Json, "", None),
            record(SchemaFormat::Json, "T", Some("not-a-uuid")),
            record(
                SchemaFormat::Json,
                "T",
                Some("00000000-0000-0000-0000-000000000000"),
            ),
        ] {
            let s = event_of(bad).unwrap_err();
            assert_eq!(s.code(), Code::InvalidArgument);
        }
        assert_eq!(expected_revision(None).unwrap(), StreamCondition::Any);
        assert_eq!(
            expected_revision(Some(-4)).unwrap(),
            StreamCondition::Exists
        );
        assert!(expected_revision(Some(-3)).is_err());
        assert!(expected_revision(Some(-5)).is_err());
        assert_eq!(expected_state(-5).unwrap(), StreamCondition::Deleted);
        assert_eq!(expected_state(-6).unwrap(), StreamCondition::Tombstoned);
        assert!(expected_state(-2).is_err());
        assert_eq!(
            expected_state(i64::MAX).unwrap(),
            StreamCondition::Revision(StreamRevision(i64::MAX as u64))
        );
    }
}

//! Multi-stream appends (ADR 29) on the wire: KurrentDB's v2
//! `StreamsService` with the generated client (status details as
//! KurrentDB sends them, `ServerFeatures`, what v1 readers see) and
//! `POST /multi-append` over HTTP. A conflict on any stream writes nothing.

use std::sync::Arc;

use factum_core::{EventStore, ReadAll, ReadStream, StreamName};
use factum_engine::{Durability, Engine, EngineConfig};
use factum_proto::server_features::server_features_client::ServerFeaturesClient;
use factum_proto::shared;
use factum_proto::status::{ErrorInfo, RichStatus};
use factum_proto::v2_streams::errors::{
    AppendConsistencyViolationErrorDetails, StreamRevisionConflictErrorDetails,
};
use factum_proto::v2_streams::streams_service_client::StreamsServiceClient;
use factum_proto::v2_streams::{
    consistency_check, AppendRecord, AppendRecordsRequest, AppendRequest, ConsistencyCheck,
    SchemaFormat, SchemaInfo,
};
use prost::Message;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

async fn start() -> (std::net::SocketAddr, Arc<Engine>, tempfile::TempDir) {
    start_with(factum_server::ServerConfig::new).await
}

async fn start_with(
    server_config: impl FnOnce(std::net::SocketAddr) -> factum_server::ServerConfig,
) -> (std::net::SocketAddr, Arc<Engine>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
    let engine = Arc::new(engine);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = server_config(addr);
    tokio::spawn(factum_server::serve(
        listener,
        engine.clone(),
        cfg,
        std::future::pending(),
    ));
    (addr, engine, dir)
}

fn record(stream: Option<&str>, name: &str, data: &str) -> AppendRecord {
    let mut properties = std::collections::HashMap::new();
    properties.insert(
        "tenant".to_owned(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("acme".into())),
        },
    );
    AppendRecord {
        record_id: Some(uuid::Uuid::new_v4().to_string()),
        properties,
        schema: Some(SchemaInfo {
            format: SchemaFormat::Json as i32,
            name: Some(name.into()),
            id: None,
        }),
        data: data.as_bytes().to_vec(),
        stream: stream.map(Into::into),
    }
}

/// ErrorInfo's reason and domain, and the last detail's type and bytes.
fn details(s: &tonic::Status) -> (String, String, String, Vec<u8>) {
    let rich = RichStatus::decode(s.details()).expect("grpc-status-details-bin");
    assert_eq!(rich.code, s.code() as i32);
    assert_eq!(
        rich.details[0].type_url,
        "type.googleapis.com/google.rpc.ErrorInfo"
    );
    let info = ErrorInfo::decode(&rich.details[0].value[..]).unwrap();
    let last = rich.details.last().unwrap();
    (
        info.reason,
        info.domain,
        last.type_url.clone(),
        last.value.clone(),
    )
}

#[tokio::test]
async fn append_session_and_append_records_as_kurrentdb() {
    let (addr, engine, _dir) = start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Both methods are announced (the Node SDK checks before using them).
    let features = ServerFeaturesClient::new(channel.clone())
        .get_supported_methods(shared::Empty {})
        .await
        .unwrap()
        .into_inner();
    for m in ["appendsession", "appendrecords"] {
        assert!(features.methods.iter().any(|x| x.service_name
            == "kurrentdb.protocol.v2.streams.streamsservice"
            && x.method_name == m));
    }
    let mut v2 = StreamsServiceClient::new(channel);
    let session = |reqs: Vec<AppendRequest>| futures_util::stream::iter(reqs);
    let ok = v2
        .append_session(session(vec![
            AppendRequest {
                stream: "order-1".into(),
                records: vec![record(None, "Placed", r#"{"n":1}"#)],
                expected_revision: Some(-1),
            },
            AppendRequest {
                stream: "stock-1".into(),
                records: vec![
                    record(None, "Reserved", r#"{"n":2}"#),
                    record(None, "Reserved", r#"{"n":3}"#),
                ],
                expected_revision: None,
            },
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.position, 3);
    assert_eq!(
        ok.output
            .iter()
            .map(|o| (o.stream.as_str(), o.stream_revision))
            .collect::<Vec<_>>(),
        [("order-1", 0), ("stock-1", 1)]
    );
    // What v1 readers see: the properties and `$schema.*` as JSON metadata.
    let events = engine
        .read_stream(ReadStream::forwards(StreamName::new("order-1").unwrap()))
        .await
        .unwrap();
    let meta: Value = serde_json::from_slice(&events[0].metadata).unwrap();
    assert_eq!(meta["tenant"], "acme");
    assert_eq!(meta["$schema.name"], "Placed");
    assert_eq!(meta["$schema.format"], "Json");
    assert_eq!(&events[0].data[..], br#"{"n":1}"#);

    // A conflict on the second stream: STREAM_REVISION_CONFLICT, nothing written.
    let e = v2
        .append_session(session(vec![
            AppendRequest {
                stream: "order-2".into(),
                records: vec![record(None, "Placed", "{}")],
                expected_revision: Some(-1),
            },
            AppendRequest {
                stream: "stock-1".into(),
                records: vec![record(None, "Reserved", "{}")],
                expected_revision: Some(0),
            },
        ]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let (reason, domain, url, value) = details(&e);
    assert_eq!(
        (reason.as_str(), domain.as_str()),
        ("STREAM_REVISION_CONFLICT", "streams")
    );
    assert!(
        url.ends_with("kurrentdb.protocol.v2.streams.errors.StreamRevisionConflictErrorDetails")
    );
    let d = StreamRevisionConflictErrorDetails::decode(&value[..]).unwrap();
    assert_eq!(
        (d.stream.as_str(), d.expected_revision, d.actual_revision),
        ("stock-1", 0, 1)
    );
    assert_eq!(engine.read_all(ReadAll::forwards()).await.unwrap().len(), 3);

    // A stream twice in one session; an empty session.
    let twice = AppendRequest {
        stream: "x-1".into(),
        records: vec![record(None, "T", "{}")],
        expected_revision: None,
    };
    let e = v2
        .append_session(session(vec![twice.clone(), twice]))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::Aborted, "STREAM_ALREADY_IN_APPEND_SESSION")
    );
    let e = v2.append_session(session(vec![])).await.unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::FailedPrecondition, "APPEND_SESSION_NO_REQUESTS")
    );

    // AppendRecords: every failed check, indexes as KurrentDB counts them
    // (checks first, then the records' other streams).
    let check = |stream: &str, state: i64| ConsistencyCheck {
        r#type: Some(consistency_check::Type::StreamState(
            consistency_check::StreamStateCheck {
                stream: stream.into(),
                expected_state: state,
            },
        )),
    };
    let e = v2
        .append_records(AppendRecordsRequest {
            records: vec![record(Some("order-3"), "Placed", "{}")],
            checks: vec![
                check("order-1", 0),
                check("stock-1", 5),
                check("nobody-1", -4),
            ],
        })
        .await
        .unwrap_err();
    let (reason, _, _, value) = details(&e);
    assert_eq!(reason, "APPEND_CONSISTENCY_VIOLATION");
    let d = AppendConsistencyViolationErrorDetails::decode(&value[..]).unwrap();
    let got: Vec<_> =
        d.violations
            .iter()
            .map(|v| {
                let Some(
                    factum_proto::v2_streams::errors::consistency_violation::Type::StreamState(s),
                ) = &v.r#type
                else {
                    panic!()
                };
                (
                    v.check_index,
                    s.stream.clone(),
                    s.expected_state,
                    s.actual_state,
                )
            })
            .collect();
    assert_eq!(
        got,
        [(1, "stock-1".into(), 5, 1), (2, "nobody-1".into(), -4, -1)]
    );
    // Any (-2) is no check.
    let e = v2
        .append_records(AppendRecordsRequest {
            records: vec![record(Some("order-3"), "Placed", "{}")],
            checks: vec![check("order-1", -2)],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::InvalidArgument, "BAD_REQUEST")
    );
    assert_eq!(engine.read_all(ReadAll::forwards()).await.unwrap().len(), 3);
    let r = v2
        .append_records(AppendRecordsRequest {
            records: vec![
                record(Some("order-3"), "Placed", "{}"),
                record(Some("stock-1"), "Reserved", "{}"),
            ],
            checks: vec![check("order-1", 0), check("stock-1", 1)],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.position, 5);
}

async fn call(addr: std::net::SocketAddr, body: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /multi-append HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn http_multi_append() {
    let (addr, engine, _dir) = start().await;
    let (status, body) = call(
        addr,
        r#"{"streams": [{"stream": "a-1", "expected_revision": "no-stream", "events": [{"type": "T", "data": {"n": 1}}]},
                        {"stream": "b-1", "events": [{"type": "T", "data": {}}, {"type": "T", "data": {}}]}]}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["position"], 3);
    assert_eq!(body["streams"][1]["revision"], 1);
    let (status, body) = call(
        addr,
        r#"{"streams": [{"stream": "c-1", "events": [{"type": "T", "data": {}}]},
                        {"stream": "a-1", "expected_revision": "no-stream", "events": [{"type": "T", "data": {}}]}],
            "checks": [{"stream": "b-1", "expected": "deleted"}]}"#,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "consistency-violation");
    assert_eq!(body["violations"][0]["stream"], "a-1");
    assert_eq!(body["violations"][0]["actual"], 0);
    assert_eq!(body["violations"][1]["expected"], "deleted");
    assert_eq!(body["violations"][1]["actual"], 1);
    assert_eq!(engine.read_all(ReadAll::forwards()).await.unwrap().len(), 3);
    let (status, _) = call(addr, r#"{"streams": []}"#).await;
    assert_eq!(status, 400);
}

/// An append session is one append: its bytes count against the append size
/// limit as its requests arrive (refused before the session ends, so a
/// client cannot make the server hold an unbounded session), and a session
/// past it writes nothing.
#[tokio::test]
async fn an_append_session_past_the_append_size_limit_writes_nothing() {
    let (addr, engine, _dir) = start_with(|addr| {
        let mut c = factum_server::ServerConfig::new(addr);
        c.max_append_bytes = 64 * 1024;
        c
    })
    .await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut v2 = StreamsServiceClient::new(channel);
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(30 * 1024));
    let reqs: Vec<AppendRequest> = (0..3)
        .map(|i| AppendRequest {
            stream: format!("big-{i}"),
            records: vec![record(None, "T", &big)],
            expected_revision: None,
        })
        .collect();
    // The session never ends: the server must answer from what it received.
    use futures_util::StreamExt;
    let session = futures_util::stream::iter(reqs).chain(futures_util::stream::pending());
    let e = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        v2.append_session(session),
    )
    .await
    .expect("refused before the session ends")
    .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::Aborted, "APPEND_TRANSACTION_SIZE_EXCEEDED"),
        "{e:?}"
    );
    let all = engine.read_all(ReadAll::forwards()).await.unwrap();
    assert!(all.is_empty(), "nothing written: {} events", all.len());
}

//! Append limits over real sockets (ADR 19): HTTP bodies beyond
//! `max_append_bytes` get the documented JSON error, gRPC messages beyond
//! it RESOURCE_EXHAUSTED; the global budget of in-flight append bytes makes
//! others wait and then refuses them; a BatchAppend call cannot keep
//! unbounded appends unfinished. After each, the server still serves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use factum_engine::{Durability, Engine, EngineConfig};
use factum_proto::shared;
use factum_proto::streams::streams_client::StreamsClient;
use factum_proto::streams::{
    append_req, append_resp, batch_append_req, AppendReq, AppendResp, BatchAppendReq,
};
use factum_server::ServerConfig;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::Code;

const MIB: usize = 1024 * 1024;

async fn start(
    configure: impl FnOnce(&mut ServerConfig),
) -> (std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = ServerConfig::new(addr);
    configure(&mut cfg);
    tokio::spawn(factum_server::serve(
        listener,
        Arc::new(engine),
        cfg,
        std::future::pending(),
    ));
    (addr, dir)
}

/// Sends `head` then `body` (from a task, so a server that answers early
/// and closes does not block us) and reads the answer: (status, body).
async fn http(addr: std::net::SocketAddr, head: String, body: Vec<u8>) -> (u16, String) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&body).await;
        wr
    });
    let mut raw = Vec::new();
    let _ = rd.read_to_end(&mut raw).await;
    drop(writer);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A single-event append whose body (binary) is the event's data.
async fn post_event(addr: std::net::SocketAddr, stream: &str, data: Vec<u8>) -> (u16, String) {
    let head = format!(
        "POST /streams/{stream} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         content-type: application/octet-stream\r\nes-eventtype: Blob\r\n\
         content-length: {}\r\n\r\n",
        data.len()
    );
    http(addr, head, data).await
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

#[tokio::test]
async fn http_bodies_over_the_append_limit_get_the_json_error() {
    let (addr, _dir) = start(|c| c.max_append_bytes = 3 * MIB as u64).await;
    // Declared too long: refused before the body is read.
    let (status, body) = post_event(addr, "big-1", vec![b'x'; 3 * MIB + 1]).await;
    assert_eq!(status, 413, "{body}");
    let err = json(&body);
    assert_eq!(err["error"], "limit-exceeded", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("3145728"),
        "{err}"
    );

    // Chunked, no declared length: refused once the bytes pass the limit.
    let head = "POST /streams/big-1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
                content-type: application/octet-stream\r\nes-eventtype: Blob\r\n\
                transfer-encoding: chunked\r\n\r\n"
        .to_owned();
    let mut chunked = Vec::new();
    for _ in 0..4 {
        chunked.extend_from_slice(format!("{:x}\r\n", MIB).as_bytes());
        chunked.extend(std::iter::repeat_n(b'y', MIB));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = http(addr, head, chunked).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(json(&body)["error"], "limit-exceeded");

    // Within the configured limit (beyond axum's 2 MiB default): written,
    // and the server goes on serving.
    let (status, body) = post_event(addr, "big-1", vec![b'z'; 3 * MIB - 16]).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post_event(addr, "big-1", b"small".to_vec()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(json(&body)["revision"], 1);
}

async fn channel(addr: std::net::SocketAddr) -> StreamsClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    StreamsClient::new(channel)
        .max_encoding_message_size(64 * MIB)
        .max_decoding_message_size(64 * MIB)
}

fn options(stream: &str) -> AppendReq {
    AppendReq {
        content: Some(append_req::Content::Options(append_req::Options {
            stream_identifier: Some(shared::StreamIdentifier {
                stream_name: stream.as_bytes().to_vec(),
            }),
            expected_stream_revision: Some(append_req::options::ExpectedStreamRevision::Any(
                shared::Empty {},
            )),
        })),
    }
}

fn proposed_message(data: Vec<u8>) -> append_req::ProposedMessage {
    let mut metadata = HashMap::new();
    metadata.insert("type".to_owned(), "Blob".to_owned());
    metadata.insert(
        "content-type".to_owned(),
        "application/octet-stream".to_owned(),
    );
    append_req::ProposedMessage {
        id: Some(shared::Uuid {
            value: Some(shared::uuid::Value::String(
                uuid::Uuid::new_v4().to_string(),
            )),
        }),
        metadata,
        custom_metadata: vec![],
        data,
    }
}

fn proposed(data: Vec<u8>) -> AppendReq {
    AppendReq {
        content: Some(append_req::Content::ProposedMessage(proposed_message(data))),
    }
}

async fn append(
    client: &mut StreamsClient<Channel>,
    stream: &str,
    data: Vec<u8>,
) -> Result<AppendResp, tonic::Status> {
    let reqs = vec![options(stream), proposed(data)];
    client
        .append(futures_util::stream::iter(reqs))
        .await
        .map(|r| r.into_inner())
}

fn succeeded(r: &AppendResp) -> bool {
    matches!(r.result, Some(append_resp::Result::Success(_)))
}

#[tokio::test]
async fn grpc_messages_over_the_append_limit_are_refused_then_appends_work() {
    let (addr, _dir) = start(|c| c.max_append_bytes = MIB as u64).await;
    let mut client = channel(addr).await;
    // One message beyond the transport's limit (16 MiB with a 1 MiB append
    // limit, as KurrentDB): refused before it is buffered.
    let err = append(&mut client, "m-1", vec![b'x'; 16 * MIB + 100 * 1024])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // Messages past the append limit (one counts whole), well past it and
    // just past it: KurrentDB's maximum-append-size error.
    for size in [MIB + MIB / 2, MIB] {
        let err = append(&mut client, "m-1", vec![b'x'; size])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{size}: {err:?}");
        assert_eq!(
            err.metadata().get("exception").unwrap(),
            "maximum-append-size-exceeded"
        );
    }
    // Normal appends work on the same connection.
    let ok = append(&mut client, "m-1", vec![b'x'; MIB - 1024])
        .await
        .unwrap();
    assert!(succeeded(&ok), "{ok:?}");
}

#[tokio::test]
async fn append_bytes_in_flight_are_bounded_across_clients() {
    let (addr, _dir) = start(|c| {
        c.max_append_bytes = MIB as u64;
        // Raised to one largest message (1 MiB + 64 KiB).
        c.max_inflight_append_bytes = 1;
        c.append_budget_wait = Duration::from_millis(300);
    })
    .await;
    // A client sends 900 KiB of an append and then nothing: those bytes
    // stay reserved while it dawdles.
    let mut slow = channel(addr).await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<AppendReq>();
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let held = tokio::spawn(async move { slow.append(requests).await });
    tx.send(options("held-1")).unwrap();
    tx.send(proposed(vec![b'h'; 900 * 1024])).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Others wait for the budget, then are refused unwritten.
    let mut other = channel(addr).await;
    let started = std::time::Instant::now();
    let err = append(&mut other, "other-1", vec![b'o'; 500 * 1024])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let (status, body) = post_event(addr, "other-1", vec![b'o'; 500 * 1024]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(json(&body)["error"], "unavailable", "{body}");

    // The slow append completes; its bytes are released; others proceed.
    drop(tx);
    let done = held.await.unwrap().unwrap().into_inner();
    assert!(succeeded(&done), "{done:?}");
    let ok = append(&mut other, "other-1", vec![b'o'; 500 * 1024])
        .await
        .unwrap();
    assert!(succeeded(&ok), "{ok:?}");
    let (status, body) = post_event(addr, "other-1", vec![b'o'; 500 * 1024]).await;
    assert_eq!(status, 201, "{body}");
}

/// One request of a batch append to `stream` carrying one event of `data`,
/// under a fresh correlation id.
fn batch_request(stream: &[u8], data: Vec<u8>, is_final: bool) -> BatchAppendReq {
    let p = proposed_message(data);
    BatchAppendReq {
        correlation_id: Some(shared::Uuid {
            value: Some(shared::uuid::Value::String(
                uuid::Uuid::new_v4().to_string(),
            )),
        }),
        options: Some(batch_append_req::Options {
            stream_identifier: Some(shared::StreamIdentifier {
                stream_name: stream.to_vec(),
            }),
            expected_stream_position: Some(batch_append_req::options::ExpectedStreamPosition::Any(
                (),
            )),
            deadline_option: None,
        }),
        proposed_messages: vec![batch_append_req::ProposedMessage {
            id: p.id,
            metadata: p.metadata,
            custom_metadata: p.custom_metadata,
            data: p.data,
        }],
        is_final,
    }
}

#[tokio::test]
async fn a_batch_append_call_cannot_keep_unbounded_appends_unfinished() {
    let (addr, _dir) = start(|_| {}).await;
    let mut client = channel(addr).await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<BatchAppendReq>();
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut responses = client.batch_append(requests).await.unwrap().into_inner();
    let chunk = |is_final: bool| batch_request(b"batch-1", b"x".to_vec(), is_final);
    // Thousands of appends started and never finished.
    for _ in 0..5000 {
        if tx.send(chunk(false)).is_err() {
            break;
        }
    }
    let end = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("the call ends");
    let err = end.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("1024"), "{err:?}");

    // A fresh call appends.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<BatchAppendReq>();
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut responses = client.batch_append(requests).await.unwrap().into_inner();
    tx.send(chunk(true)).unwrap();
    let resp = responses.message().await.unwrap().unwrap();
    assert!(
        matches!(
            resp.result,
            Some(factum_proto::streams::batch_append_resp::Result::Success(_))
        ),
        "{resp:?}"
    );
}

/// A BatchAppend call drives its own appends (ADR 46): while it waits for
/// budget, the appends it already took go on and release theirs, so one
/// call whose appends together exceed the budget finishes them all.
#[tokio::test]
async fn one_batch_append_call_over_the_budget_finishes_all_its_appends() {
    let (addr, _dir) = start(|c| {
        c.max_append_bytes = MIB as u64;
        // Raised to one largest message (1 MiB + 64 KiB).
        c.max_inflight_append_bytes = 1;
        c.append_budget_wait = Duration::from_secs(5);
    })
    .await;
    let mut client = channel(addr).await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<BatchAppendReq>();
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut responses = client.batch_append(requests).await.unwrap().into_inner();
    // 12 appends of 400 KiB: 4.8 MiB through a budget of about 1 MiB.
    for _ in 0..12 {
        tx.send(batch_request(b"budget-1", vec![b'b'; 400 * 1024], true))
            .unwrap();
    }
    let started = std::time::Instant::now();
    for _ in 0..12 {
        let resp = tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await
            .expect("answered")
            .unwrap()
            .unwrap();
        assert!(
            matches!(
                resp.result,
                Some(factum_proto::streams::batch_append_resp::Result::Success(_))
            ),
            "{resp:?}"
        );
    }
    // Not by waiting the budget's 5 s out.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

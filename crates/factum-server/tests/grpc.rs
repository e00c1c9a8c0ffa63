//! The server over the embedded engine, driven with the generated tonic
//! client: wire behaviour the official clients depend on, bad input, and
//! HTTP on the same port. (The official clients themselves run in
//! factum-cli's interop tests.)

use std::collections::HashMap;
use std::sync::Arc;

use factum_engine::{Durability, Engine, EngineConfig};
use factum_proto::server_features::server_features_client::ServerFeaturesClient;
use factum_proto::shared;
use factum_proto::streams::read_req::options::{
    self as ro, CountOption, FilterOption, StreamOption,
};
use factum_proto::streams::read_resp::Content;
use factum_proto::streams::streams_client::StreamsClient;
use factum_proto::streams::{append_req, append_resp, AppendReq, ReadReq, ReadResp};
use tonic::transport::Channel;
use tonic::Code;

struct Running {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = factum_server::ServerConfig::new(addr);
    cfg.max_append_bytes = 1024 * 1024;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(factum_server::serve(
        listener,
        Arc::new(engine),
        cfg,
        async {
            let _ = rx.await;
        },
    ));
    Running {
        addr,
        stop: Some(tx),
        task,
        _dir: dir,
    }
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn sid(name: &str) -> Option<shared::StreamIdentifier> {
    Some(shared::StreamIdentifier {
        stream_name: name.as_bytes().to_vec(),
    })
}

fn proposed(event_type: &str, data: &[u8]) -> AppendReq {
    let mut md = HashMap::new();
    md.insert("type".to_owned(), event_type.to_owned());
    md.insert("content-type".to_owned(), "application/json".to_owned());
    AppendReq {
        content: Some(append_req::Content::ProposedMessage(
            append_req::ProposedMessage {
                id: Some(shared::Uuid {
                    value: Some(shared::uuid::Value::String(
                        uuid::Uuid::new_v4().to_string(),
                    )),
                }),
                metadata: md,
                custom_metadata: vec![],
                data: data.to_vec(),
            },
        )),
    }
}

fn options(stream: &str, expected: append_req::options::ExpectedStreamRevision) -> AppendReq {
    AppendReq {
        content: Some(append_req::Content::Options(append_req::Options {
            stream_identifier: sid(stream),
            expected_stream_revision: Some(expected),
        })),
    }
}

fn read_stream(stream: &str, count: u64) -> ReadReq {
    ReadReq {
        options: Some(factum_proto::streams::read_req::Options {
            stream_option: Some(StreamOption::Stream(ro::StreamOptions {
                stream_identifier: sid(stream),
                revision_option: Some(ro::stream_options::RevisionOption::Start(shared::Empty {})),
            })),
            count_option: Some(CountOption::Count(count)),
            filter_option: Some(FilterOption::NoFilter(shared::Empty {})),
            uuid_option: Some(ro::UuidOption {
                content: Some(ro::uuid_option::Content::Structured(shared::Empty {})),
            }),
            ..Default::default()
        }),
    }
}

async fn collect(
    client: &mut StreamsClient<Channel>,
    req: ReadReq,
) -> Result<Vec<ReadResp>, tonic::Status> {
    let mut stream = client.read(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.push(m);
    }
    Ok(out)
}

#[tokio::test]
async fn append_read_conflict_and_bad_input() {
    use append_req::options::ExpectedStreamRevision as E;
    let server = start().await;
    let mut client = StreamsClient::new(channel(server.addr).await);

    let reqs = vec![
        options("order-1", E::NoStream(shared::Empty {})),
        proposed("Placed", b"{}"),
        proposed("Paid", b"{}"),
    ];
    let resp = client
        .append(futures_util::stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let Some(append_resp::Result::Success(s)) = resp.result else {
        panic!("{resp:?}")
    };
    assert_eq!(
        s.current_revision_option,
        Some(append_resp::success::CurrentRevisionOption::CurrentRevision(1))
    );

    // A conflict is an answer, not an error, with both shapes filled.
    let reqs = vec![options("order-1", E::Revision(0)), proposed("X", b"{}")];
    let resp = client
        .append(futures_util::stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let Some(append_resp::Result::WrongExpectedVersion(w)) = resp.result else {
        panic!("{resp:?}")
    };
    use append_resp::wrong_expected_version as w_;
    assert_eq!(
        w.current_revision_option,
        Some(w_::CurrentRevisionOption::CurrentRevision(1))
    );
    assert_eq!(
        w.expected_revision_option,
        Some(w_::ExpectedRevisionOption::ExpectedRevision(0))
    );
    assert_eq!(
        w.current_revision_option_20_6_0,
        Some(w_::CurrentRevisionOption2060::CurrentRevision2060(1))
    );

    let events = collect(&mut client, read_stream("order-1", 10))
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    let Some(Content::Event(e)) = &events[1].content else {
        panic!()
    };
    let rec = e.event.as_ref().unwrap();
    assert_eq!(rec.metadata["type"], "Paid");
    assert!(matches!(
        rec.id.as_ref().unwrap().value,
        Some(shared::uuid::Value::Structured(_))
    ));

    // Unknown stream: a stream_not_found message, then a clean end.
    let resp = collect(&mut client, read_stream("nope-1", 10))
        .await
        .unwrap();
    assert!(matches!(
        resp[..],
        [ReadResp {
            content: Some(Content::StreamNotFound(_))
        }]
    ));

    // Invalid names and missing fields are INVALID_ARGUMENT; the server goes on.
    let err = collect(&mut client, read_stream("", 10)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = collect(&mut client, ReadReq { options: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let reqs = vec![proposed("X", b"{}")];
    let err = client
        .append(futures_util::stream::iter(reqs))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let reqs = vec![
        options("$all", E::Any(shared::Empty {})),
        proposed("X", b"{}"),
    ];
    assert_eq!(
        client
            .append(futures_util::stream::iter(reqs))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // An append over the server's limit: KurrentDB's exception metadata.
    let big = vec![b'x'; 700 * 1024];
    let reqs = vec![
        options("big-1", E::Any(shared::Empty {})),
        proposed("B", &big),
        proposed("B", &big),
    ];
    let err = client
        .append(futures_util::stream::iter(reqs))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.metadata().get("exception").unwrap(),
        "maximum-append-size-exceeded"
    );
    // A single message over the transport limit (16 MiB): RESOURCE_EXHAUSTED.
    let huge = vec![b'x'; 17 * 1024 * 1024];
    let reqs = vec![
        options("big-1", E::Any(shared::Empty {})),
        proposed("B", &huge),
    ];
    let err = client
        .append(futures_util::stream::iter(reqs))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let mut huge_read = read_stream("order-1", 1);
    if let Some(StreamOption::Stream(s)) =
        huge_read.options.as_mut().unwrap().stream_option.as_mut()
    {
        s.stream_identifier = sid(&"y".repeat(17 * 1024 * 1024));
    }
    let err = collect(&mut client, huge_read).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // Still serving.
    assert_eq!(
        collect(&mut client, read_stream("order-1", 10))
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn tombstoned_streams_answer_stream_deleted() {
    use append_req::options::ExpectedStreamRevision as E;
    use factum_proto::streams::{tombstone_req, TombstoneReq};
    let server = start().await;
    let mut client = StreamsClient::new(channel(server.addr).await);
    let reqs = vec![
        options("gone-1", E::Any(shared::Empty {})),
        proposed("X", b"{}"),
    ];
    client
        .append(futures_util::stream::iter(reqs))
        .await
        .unwrap();
    client
        .tombstone(TombstoneReq {
            options: Some(tombstone_req::Options {
                stream_identifier: sid("gone-1"),
                expected_stream_revision: Some(
                    tombstone_req::options::ExpectedStreamRevision::Any(shared::Empty {}),
                ),
            }),
        })
        .await
        .unwrap();
    let err = collect(&mut client, read_stream("gone-1", 10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.metadata().get("exception").unwrap(), "stream-deleted");
    assert_eq!(err.metadata().get("stream-name").unwrap(), "gone-1");
}

#[tokio::test]
async fn features_unimplemented_services_and_http_share_the_port() {
    let server = start().await;
    let ch = channel(server.addr).await;
    let methods = ServerFeaturesClient::new(ch.clone())
        .get_supported_methods(shared::Empty {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = methods
        .methods
        .iter()
        .map(|m| format!("{}/{}", m.service_name, m.method_name))
        .collect();
    assert!(names.contains(&"event_store.client.streams.streams/batchappend".to_owned()));
    assert!(names.contains(
        &"event_store.client.persistent_subscriptions.persistentsubscriptions/replayparked"
            .to_owned()
    ));
    assert!(names.contains(&"event_store.client.projections.projections/state".to_owned()));
    // 15 v1 methods, projections' ten (ADR 35), the v2 StreamsService's
    // two (ADR 29), and the Operations that work without a scavenging
    // backend (ADR 33).
    assert!(names.contains(&"event_store.client.operations.operations/shutdown".to_owned()));
    assert!(!names.iter().any(|n| n.ends_with("/startscavenge")));
    assert_eq!(names.len(), 29);
    let create = methods
        .methods
        .iter()
        .find(|m| m.method_name == "create")
        .unwrap();
    assert_eq!(create.features, vec!["stream", "all"]);

    // A KurrentDB service we do not implement: UNIMPLEMENTED.
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/event_store.client.monitoring.Monitoring/Stats",
    );
    let codec = tonic_prost::ProstCodec::<shared::Empty, shared::Empty>::default();
    let err = grpc
        .unary(tonic::Request::new(shared::Empty {}), path, codec)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    // HTTP on the same port.
    let body = http_get(server.addr, "/health/live").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let body = http_get(server.addr, "/streams/%24all?count=5").await;
    assert!(body.contains("\"events\":[]"), "{body}");
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn shutdown_ends_subscriptions_with_unavailable() {
    let mut server = start().await;
    let mut client = StreamsClient::new(channel(server.addr).await);
    let mut req = read_stream("live-1", 0);
    req.options.as_mut().unwrap().count_option =
        Some(CountOption::Subscription(ro::SubscriptionOptions {}));
    let mut sub = client.read(req).await.unwrap().into_inner();
    let first = sub.message().await.unwrap().unwrap();
    assert!(matches!(first.content, Some(Content::Confirmation(_))));
    let caught_up = sub.message().await.unwrap().unwrap();
    assert!(
        matches!(caught_up.content, Some(Content::CaughtUp(_))),
        "{caught_up:?}"
    );
    server.stop.take().unwrap().send(()).unwrap();
    let end = loop {
        match sub.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    drop(sub);
    drop(client);
    tokio::time::timeout(std::time::Duration::from_secs(10), server.task)
        .await
        .expect("server stops after draining")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_answers_taken_batch_appends_then_ends_the_call() {
    use factum_proto::streams::{batch_append_req, batch_append_resp, BatchAppendReq};
    let mut server = start().await;
    let mut client = StreamsClient::new(channel(server.addr).await);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<BatchAppendReq>();
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut responses = client.batch_append(requests).await.unwrap().into_inner();
    let AppendReq {
        content: Some(append_req::Content::ProposedMessage(p)),
    } = proposed("X", b"{}")
    else {
        unreachable!()
    };
    tx.send(BatchAppendReq {
        correlation_id: Some(shared::Uuid {
            value: Some(shared::uuid::Value::String(
                uuid::Uuid::new_v4().to_string(),
            )),
        }),
        options: Some(batch_append_req::Options {
            stream_identifier: sid("batch-1"),
            expected_stream_position: Some(
                batch_append_req::options::ExpectedStreamPosition::NoStream(()),
            ),
            deadline_option: None,
        }),
        proposed_messages: vec![batch_append_req::ProposedMessage {
            id: p.id,
            metadata: p.metadata,
            custom_metadata: p.custom_metadata,
            data: p.data,
        }],
        is_final: true,
    })
    .unwrap();
    let first = responses.message().await.unwrap().unwrap();
    assert!(
        matches!(first.result, Some(batch_append_resp::Result::Success(_))),
        "{first:?}"
    );
    // The call stays open (tx alive) while the server shuts down.
    server.stop.take().unwrap().send(()).unwrap();
    let end = responses.message().await;
    assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    drop(tx);
    drop(client);
    tokio::time::timeout(std::time::Duration::from_secs(10), server.task)
        .await
        .expect("server stops although a batch-append call was open")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn malformed_protobuf_is_refused_and_the_server_goes_on() {
    let server = start().await;
    let ch = channel(server.addr).await;
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.unwrap();
    // AllStreamPosition's field 1 is a varint; ReadReq's field 1 is a
    // message: the bytes cannot decode as a ReadReq.
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/event_store.client.streams.Streams/Read",
    );
    let codec = tonic_prost::ProstCodec::<shared::AllStreamPosition, ReadResp>::default();
    let garbage = shared::AllStreamPosition {
        commit_position: 5,
        prepare_position: 0,
    };
    let result = grpc
        .server_streaming(tonic::Request::new(garbage), path, codec)
        .await;
    let err = match result {
        Err(e) => e,
        Ok(resp) => resp.into_inner().message().await.unwrap_err(),
    };
    assert_ne!(err.code(), Code::Ok);
    assert!(err.message().contains("decode"), "{err:?}");
    let mut client = StreamsClient::new(ch);
    assert!(collect(&mut client, read_stream("any-1", 1)).await.is_ok());
}

/// A read request with the given start, direction and compatibility level.
fn read_with(
    stream: Option<&str>,
    start: Option<u64>,
    backwards: bool,
    compatibility: u32,
) -> ReadReq {
    let mut req = read_stream(stream.unwrap_or("x-1"), 100);
    let o = req.options.as_mut().unwrap();
    o.read_direction = backwards as i32;
    o.control_option = Some(ro::ControlOption { compatibility });
    match stream {
        Some(_) => {
            if let (Some(StreamOption::Stream(s)), Some(r)) = (o.stream_option.as_mut(), start) {
                s.revision_option = Some(ro::stream_options::RevisionOption::Revision(r));
            }
        }
        None => {
            o.stream_option = Some(StreamOption::All(ro::AllOptions {
                all_option: Some(ro::all_options::AllOption::Start(shared::Empty {})),
            }))
        }
    }
    req
}

/// The non-event messages of a read, in order, and how many events came.
async fn positions(client: &mut StreamsClient<Channel>, req: ReadReq) -> (usize, Vec<Content>) {
    let resps = collect(client, req).await.unwrap();
    let events = resps
        .iter()
        .filter(|r| matches!(r.content, Some(Content::Event(_))))
        .count();
    let rest = resps
        .into_iter()
        .filter_map(|r| r.content)
        .filter(|c| !matches!(c, Content::Event(_)))
        .collect();
    (events, rest)
}

#[tokio::test]
async fn first_and_last_positions_as_the_protocol_defines_them() {
    use append_req::options::ExpectedStreamRevision as E;
    let server = start().await;
    let mut client = StreamsClient::new(channel(server.addr).await);
    for stream in ["other-1", "pos-1"] {
        let reqs = vec![
            options(stream, E::Any(shared::Empty {})),
            proposed("A", b"{}"),
            proposed("B", b"{}"),
            proposed("C", b"{}"),
        ];
        client
            .append(futures_util::stream::iter(reqs))
            .await
            .unwrap();
    }
    // Compatibility 0 (what most clients send): events only.
    let (n, rest) = positions(&mut client, read_with(Some("pos-1"), None, false, 0)).await;
    assert_eq!((n, rest), (3, vec![]));
    // Compatibility 1: the last revision after the events, both directions.
    let (n, rest) = positions(&mut client, read_with(Some("pos-1"), None, false, 1)).await;
    assert_eq!((n, rest), (3, vec![Content::LastStreamPosition(2)]));
    let (n, rest) = positions(&mut client, read_with(Some("pos-1"), Some(1), true, 1)).await;
    assert_eq!((n, rest), (2, vec![Content::LastStreamPosition(2)]));
    // Forwards past the end: where the stream continues, then its last revision.
    let (n, rest) = positions(&mut client, read_with(Some("pos-1"), Some(9), false, 1)).await;
    assert_eq!(
        (n, rest),
        (
            0,
            vec![
                Content::FirstStreamPosition(3),
                Content::LastStreamPosition(2)
            ]
        )
    );
    // …but not when the read started exactly there.
    let (n, rest) = positions(&mut client, read_with(Some("pos-1"), Some(3), false, 1)).await;
    assert_eq!((n, rest), (0, vec![Content::LastStreamPosition(2)]));
    // `$all`: where the log ends, after the events (six events: the last
    // at 6, the first at 1).
    let (n, rest) = positions(&mut client, read_with(None, None, false, 1)).await;
    assert_eq!(n, 6);
    assert_eq!(
        rest,
        vec![Content::LastAllStreamPosition(shared::AllStreamPosition {
            commit_position: 6,
            prepare_position: 6,
        })]
    );
    let (n, rest) = positions(&mut client, read_with(None, None, false, 0)).await;
    assert_eq!((n, rest), (6, vec![]));
}

/// A gRPC call made with h2 directly, so no client-side deadline gets in
/// the way of the server's: sends `messages` (ending the request when
/// `end`), returns the call's `grpc-status`.
async fn raw_call(
    addr: std::net::SocketAddr,
    path: &str,
    grpc_timeout: &str,
    messages: Vec<Vec<u8>>,
    end: bool,
) -> String {
    let data = messages.iter().map(|m| grpc_frame(m)).collect();
    raw_bytes_call(addr, path, &[("grpc-timeout", grpc_timeout)], data, end).await
}

/// `m` as one gRPC frame: not compressed, its length, the message.
fn grpc_frame(m: &[u8]) -> Vec<u8> {
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(m.len() as u32).to_be_bytes());
    framed.extend_from_slice(m);
    framed
}

/// A gRPC call opened over a raw HTTP/2 connection of its own: its answer
/// to come and the request's body to send.
async fn open_call(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    client.send_request(req.body(()).unwrap(), false).unwrap()
}

/// An answer's body, read to its end, and its trailers.
async fn body_and_trailers(mut body: h2::RecvStream) -> (Vec<u8>, http::HeaderMap) {
    let mut answer = Vec::new();
    while let Some(d) = body.data().await {
        let d = d.unwrap();
        let _ = body.flow_control().release_capacity(d.len());
        answer.extend_from_slice(&d);
    }
    (answer, body.trailers().await.unwrap().unwrap())
}

/// A call whose body is `data` as it is (frame headers included), sent in
/// those pieces, then the end of the request when `end`; its `grpc-status`.
async fn raw_bytes_call(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    data: Vec<Vec<u8>>,
    end: bool,
) -> String {
    let (resp, mut send) = open_call(addr, path, headers).await;
    for d in data {
        send.send_data(d.into(), false).unwrap();
    }
    if end {
        send.send_data(Default::default(), true).unwrap();
    }
    let resp = resp.await.unwrap();
    let status = match resp.headers().get("grpc-status") {
        Some(s) => s.to_str().unwrap().to_owned(),
        None => {
            let (_, trailers) = body_and_trailers(resp.into_body()).await;
            trailers["grpc-status"].to_str().unwrap().to_owned()
        }
    };
    drop(send);
    status
}

#[tokio::test]
async fn call_deadlines_on_append_and_read() {
    use append_req::options::ExpectedStreamRevision as E;
    use prost::Message;
    let server = start().await;
    // An append whose client never finishes sending: refused when its
    // deadline passes, nothing written.
    let opts = options("late-1", E::Any(shared::Empty {})).encode_to_vec();
    let event = proposed("X", b"{}").encode_to_vec();
    let append = "/event_store.client.streams.Streams/Append";
    let status = raw_call(
        server.addr,
        append,
        "200m",
        vec![opts.clone(), event.clone()],
        false,
    )
    .await;
    assert_eq!(status, "4", "DEADLINE_EXCEEDED");
    let mut client = StreamsClient::new(channel(server.addr).await);
    let resp = collect(&mut client, read_stream("late-1", 10))
        .await
        .unwrap();
    assert!(matches!(
        resp[..],
        [ReadResp {
            content: Some(Content::StreamNotFound(_))
        }]
    ));
    // The same append within its deadline is written.
    let status = raw_call(server.addr, append, "30S", vec![opts, event], true).await;
    assert_eq!(status, "0");
    // A read whose deadline has passed when it starts; one that has time.
    let read = "/event_store.client.streams.Streams/Read";
    let req = read_stream("late-1", 10).encode_to_vec();
    assert_eq!(
        raw_call(server.addr, read, "1n", vec![req.clone()], true).await,
        "4"
    );
    assert_eq!(
        raw_call(server.addr, read, "30S", vec![req], true).await,
        "0"
    );
}

/// `Read` is served by a hand-written route (ADR 46): it reads the
/// request's one message however the client splits it, and refuses what
/// tonic refused.
#[tokio::test]
async fn the_read_route_takes_its_request_as_grpc_defines_it() {
    use prost::Message;
    let server = start().await;
    let read = "/event_store.client.streams.Streams/Read";
    let req = read_stream("route-1", 10).encode_to_vec();
    let framed = grpc_frame(&req);
    // The message in three pieces, the header itself split.
    let pieces = vec![
        framed[..3].to_vec(),
        framed[3..8].to_vec(),
        framed[8..].to_vec(),
    ];
    assert_eq!(
        raw_bytes_call(server.addr, read, &[], pieces, true).await,
        "0"
    );
    // No message at all.
    assert_eq!(
        raw_bytes_call(server.addr, read, &[], vec![], true).await,
        "13"
    );
    // A message announced longer than the limit: refused before it is read.
    let mut huge = vec![0u8];
    huge.extend_from_slice(&(u32::MAX).to_be_bytes());
    assert_eq!(
        raw_bytes_call(server.addr, read, &[], vec![huge], true).await,
        "8"
    );
    // Compressed: the server enables no compression.
    let mut compressed = framed.clone();
    compressed[0] = 1;
    assert_eq!(
        raw_bytes_call(server.addr, read, &[], vec![compressed], true).await,
        "12"
    );
    assert_eq!(
        raw_bytes_call(
            server.addr,
            read,
            &[("grpc-encoding", "gzip")],
            vec![framed.clone()],
            true
        )
        .await,
        "12"
    );
    // Not a ReadReq.
    let mut garbage = vec![0u8, 0, 0, 0, 3];
    garbage.extend_from_slice(&[0x0a, 0x05, 0x01]);
    assert_eq!(
        raw_bytes_call(server.addr, read, &[], vec![garbage], true).await,
        "13"
    );
    // The server goes on.
    assert_eq!(
        raw_bytes_call(server.addr, read, &[], vec![framed], true).await,
        "0"
    );
}

/// A `Read` is answered once its request has ended (the client's
/// end-of-stream after its one message), as tonic's handlers did: an
/// answer sent earlier ends with h2 resetting the call (`RST_STREAM
/// NO_ERROR`), and clients on h2 before 0.4.16 (the Node client's Rust
/// core) then lose the answer. A request that never ends runs into its
/// deadline.
#[tokio::test]
async fn a_read_is_answered_once_its_request_has_ended() {
    use prost::Message;
    let server = start().await;
    let read = "/event_store.client.streams.Streams/Read";
    let req = read_stream("ended-1", 10).encode_to_vec();
    let (resp, mut send) = open_call(server.addr, read, &[]).await;
    send.send_data(grpc_frame(&req).into(), false).unwrap();
    let mut resp = Box::pin(resp);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), &mut resp)
            .await
            .is_err(),
        "answered before the request ended"
    );
    send.send_data(Default::default(), true).unwrap();
    let (answer, trailers) = body_and_trailers(resp.await.unwrap().into_body()).await;
    assert_eq!(trailers["grpc-status"], "0");
    let msg = ReadResp::decode(&answer[5..]).unwrap();
    assert!(matches!(msg.content, Some(Content::StreamNotFound(_))));
    // Never sent: the server had nothing to reset once both halves ended.
    let reset = std::future::poll_fn(|cx| std::task::Poll::Ready(send.poll_reset(cx))).await;
    assert!(reset.is_pending(), "the server reset the call: {reset:?}");
    // A request that does not end: its deadline, not an answer.
    assert_eq!(
        raw_call(server.addr, read, "200m", vec![req], false).await,
        "4"
    );
}

#[tokio::test]
async fn batch_append_deadlines() {
    use factum_proto::streams::{batch_append_req, batch_append_resp, BatchAppendReq};
    let server = start().await;
    let mut client = StreamsClient::new(channel(server.addr).await);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<BatchAppendReq>();
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut responses = client.batch_append(requests).await.unwrap().into_inner();
    let request = |stream: &str,
                   deadline: Option<batch_append_req::options::DeadlineOption>,
                   is_final: bool| {
        let AppendReq {
            content: Some(append_req::Content::ProposedMessage(p)),
        } = proposed("X", b"{}")
        else {
            unreachable!()
        };
        BatchAppendReq {
            correlation_id: Some(shared::Uuid {
                value: Some(shared::uuid::Value::String(
                    uuid::Uuid::new_v4().to_string(),
                )),
            }),
            options: Some(batch_append_req::Options {
                stream_identifier: sid(stream),
                expected_stream_position: Some(
                    batch_append_req::options::ExpectedStreamPosition::Any(()),
                ),
                deadline_option: deadline,
            }),
            proposed_messages: vec![batch_append_req::ProposedMessage {
                id: p.id,
                metadata: p.metadata,
                custom_metadata: p.custom_metadata,
                data: p.data,
            }],
            is_final,
        }
    };
    let timed_out = |resp: &factum_proto::streams::BatchAppendResp| match &resp.result {
        Some(batch_append_resp::Result::Error(s)) => {
            s.code == 4
                && s.details
                    .as_ref()
                    .is_some_and(|d| d.type_url == "type.googleapis.com/event_store.client.Timeout")
        }
        _ => false,
    };
    use batch_append_req::options::DeadlineOption as D;
    // A deadline already passed (a zero duration; an instant in the past):
    // answered DEADLINE_EXCEEDED, not written.
    for deadline in [
        D::Deadline(prost_types::Duration {
            seconds: 0,
            nanos: 0,
        }),
        D::Deadline21100(prost_types::Timestamp {
            seconds: 1_000_000_000,
            nanos: 0,
        }),
    ] {
        let req = request("expired-1", Some(deadline), true);
        let id = req.correlation_id.clone();
        tx.send(req).unwrap();
        let resp = responses.message().await.unwrap().unwrap();
        assert!(timed_out(&resp), "{resp:?}");
        assert_eq!(resp.correlation_id, id);
    }
    // An append whose last chunk does not come before its deadline.
    let first = request(
        "expired-1",
        Some(D::Deadline(prost_types::Duration {
            seconds: 0,
            nanos: 100_000_000,
        })),
        false,
    );
    let id = first.correlation_id.clone();
    tx.send(first.clone()).unwrap();
    let resp = responses.message().await.unwrap().unwrap();
    assert!(timed_out(&resp), "{resp:?}");
    assert_eq!(resp.correlation_id, id);
    // Its late final chunk is ignored; the call goes on.
    tx.send(BatchAppendReq {
        options: None,
        is_final: true,
        ..first
    })
    .unwrap();
    let ok = request(
        "fine-1",
        Some(D::Deadline(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        })),
        true,
    );
    let ok_id = ok.correlation_id.clone();
    tx.send(ok).unwrap();
    let resp = responses.message().await.unwrap().unwrap();
    assert_eq!(resp.correlation_id, ok_id);
    assert!(
        matches!(resp.result, Some(batch_append_resp::Result::Success(_))),
        "{resp:?}"
    );
    let resp = collect(&mut client, read_stream("expired-1", 10))
        .await
        .unwrap();
    assert!(matches!(
        resp[..],
        [ReadResp {
            content: Some(Content::StreamNotFound(_))
        }]
    ));
}

async fn append_with(
    client: &mut StreamsClient<Channel>,
    stream: &str,
    expected: append_req::options::ExpectedStreamRevision,
) -> Result<append_resp::Result, tonic::Status> {
    let reqs = vec![options(stream, expected), proposed("Edge", b"{}")];
    let resp = client.append(futures_util::stream::iter(reqs)).await?;
    Ok(resp
        .into_inner()
        .result
        .expect("an append answer has a result"))
}

/// A `uint64` expected revision as KurrentDB reads it: `u64::MAX` is the
/// two's complement of -1 (no stream), anything else above `i64::MAX` is
/// INVALID_ARGUMENT saying "out of range" (Append, Delete, Tombstone,
/// BatchAppend), `i64::MAX` itself is an ordinary expectation. Reads from
/// the largest revision and count are empty, not errors. The server keeps
/// taking appends and loses nothing.
#[tokio::test]
async fn expected_revisions_at_the_edges_of_u64() {
    use append_req::options::ExpectedStreamRevision as E;
    use append_resp::wrong_expected_version as w_;
    let server = start().await;
    let mut client = StreamsClient::new(channel(server.addr).await);
    let refused = [i64::MAX as u64 + 1, i64::MAX as u64 + 2, u64::MAX - 1];
    let assert_refused = |r: u64, status: tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{r}: {status:?}");
        assert!(
            status.message().contains("out of range") && status.message().contains(&r.to_string()),
            "{r}: {}",
            status.message()
        );
    };

    // u64::MAX is no stream: it creates the stream, then conflicts with it.
    let r = append_with(&mut client, "edge-1", E::Revision(u64::MAX)).await;
    let Ok(append_resp::Result::Success(s)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        s.current_revision_option,
        Some(append_resp::success::CurrentRevisionOption::CurrentRevision(0))
    );
    let r = append_with(&mut client, "edge-1", E::Revision(u64::MAX)).await;
    let Ok(append_resp::Result::WrongExpectedVersion(w)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        w.expected_revision_option,
        Some(w_::ExpectedRevisionOption::ExpectedNoStream(
            shared::Empty {}
        ))
    );
    for r in refused {
        let status = append_with(&mut client, "edge-1", E::Revision(r))
            .await
            .unwrap_err();
        assert_refused(r, status);
    }
    let r = append_with(&mut client, "edge-1", E::Revision(i64::MAX as u64)).await;
    let Ok(append_resp::Result::WrongExpectedVersion(w)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        w.expected_revision_option,
        Some(w_::ExpectedRevisionOption::ExpectedRevision(
            i64::MAX as u64
        ))
    );

    // Delete and Tombstone read the same field the same way.
    use factum_proto::streams::{delete_req, tombstone_req, DeleteReq, TombstoneReq};
    for r in refused {
        let status = client
            .delete(DeleteReq {
                options: Some(delete_req::Options {
                    stream_identifier: sid("edge-1"),
                    expected_stream_revision: Some(
                        delete_req::options::ExpectedStreamRevision::Revision(r),
                    ),
                }),
            })
            .await
            .unwrap_err();
        assert_refused(r, status);
        let status = client
            .tombstone(TombstoneReq {
                options: Some(tombstone_req::Options {
                    stream_identifier: sid("edge-1"),
                    expected_stream_revision: Some(
                        tombstone_req::options::ExpectedStreamRevision::Revision(r),
                    ),
                }),
            })
            .await
            .unwrap_err();
        assert_refused(r, status);
    }
    client
        .tombstone(TombstoneReq {
            options: Some(tombstone_req::Options {
                stream_identifier: sid("edge-gone"),
                expected_stream_revision: Some(
                    tombstone_req::options::ExpectedStreamRevision::Revision(u64::MAX),
                ),
            }),
        })
        .await
        .expect("a tombstone expecting no stream (u64::MAX) of a stream that never was");

    // BatchAppend: a refused revision is answered at once with
    // INVALID_ARGUMENT, its later chunks are ignored; u64::MAX is no stream.
    use factum_proto::streams::{batch_append_req, batch_append_resp, BatchAppendReq};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<BatchAppendReq>();
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut responses = client.batch_append(requests).await.unwrap().into_inner();
    let message = || {
        let AppendReq {
            content: Some(append_req::Content::ProposedMessage(p)),
        } = proposed("Edge", b"{}")
        else {
            unreachable!()
        };
        batch_append_req::ProposedMessage {
            id: p.id,
            metadata: p.metadata,
            custom_metadata: p.custom_metadata,
            data: p.data,
        }
    };
    let batch = |correlation: uuid::Uuid, stream: &str, position: Option<u64>, is_final: bool| {
        BatchAppendReq {
            correlation_id: Some(shared::Uuid {
                value: Some(shared::uuid::Value::String(correlation.to_string())),
            }),
            options: position.map(|r| batch_append_req::Options {
                stream_identifier: sid(stream),
                expected_stream_position: Some(
                    batch_append_req::options::ExpectedStreamPosition::StreamPosition(r),
                ),
                deadline_option: None,
            }),
            proposed_messages: vec![message()],
            is_final,
        }
    };
    let (refused_id, ok_id) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    tx.send(batch(
        refused_id,
        "edge-2",
        Some(i64::MAX as u64 + 1),
        false,
    ))
    .unwrap();
    tx.send(batch(refused_id, "edge-2", None, true)).unwrap();
    tx.send(batch(ok_id, "edge-2", Some(u64::MAX), true))
        .unwrap();
    drop(tx);
    let mut answers = HashMap::new();
    while let Some(m) = responses.message().await.unwrap() {
        let Some(shared::uuid::Value::String(id)) = m.correlation_id.clone().unwrap().value else {
            panic!("{m:?}")
        };
        assert!(answers.insert(id, m).is_none(), "one answer per append");
    }
    assert_eq!(answers.len(), 2, "{answers:?}");
    match &answers[&refused_id.to_string()].result {
        Some(batch_append_resp::Result::Error(status)) => {
            assert_eq!(
                status.code,
                tonic::Code::InvalidArgument as i32,
                "{status:?}"
            );
            assert!(status.message.contains("out of range"), "{status:?}");
        }
        other => panic!("{other:?}"),
    }
    let ok = &answers[&ok_id.to_string()];
    assert!(
        matches!(ok.result, Some(batch_append_resp::Result::Success(_))),
        "{ok:?}"
    );
    assert_eq!(
        ok.expected_stream_position,
        Some(batch_append_resp::ExpectedStreamPosition::NoStream(()))
    );

    // Reads from the largest revision, and of the largest count, are empty
    // or whole; appends go on; nothing acknowledged is missing.
    let mut req = read_with(Some("edge-1"), Some(u64::MAX), false, 0);
    req.options.as_mut().unwrap().count_option = Some(CountOption::Count(u64::MAX));
    assert_eq!(positions(&mut client, req).await.0, 0);
    let r = append_with(&mut client, "edge-1", E::Revision(0)).await;
    assert!(matches!(r, Ok(append_resp::Result::Success(_))), "{r:?}");
    let mut req = read_with(Some("edge-1"), Some(u64::MAX), true, 0);
    req.options.as_mut().unwrap().count_option = Some(CountOption::Count(u64::MAX));
    assert_eq!(positions(&mut client, req).await.0, 2);
    assert_eq!(positions(&mut client, read_stream("edge-2", 10)).await.0, 1);

    // Subscriptions: after a revision above i64::MAX, caught up (the
    // signed resume field left out, not negative); after u64::MAX, refused.
    let subscribe_after = |r: u64| {
        let mut req = read_stream("edge-1", 0);
        let o = req.options.as_mut().unwrap();
        o.count_option = Some(CountOption::Subscription(ro::SubscriptionOptions {}));
        if let Some(StreamOption::Stream(s)) = o.stream_option.as_mut() {
            s.revision_option = Some(ro::stream_options::RevisionOption::Revision(r));
        }
        req
    };
    let mut sub = client
        .read(subscribe_after(i64::MAX as u64 + 1))
        .await
        .unwrap()
        .into_inner();
    let first = sub.message().await.unwrap().unwrap();
    assert!(
        matches!(first.content, Some(Content::Confirmation(_))),
        "{first:?}"
    );
    let caught_up = sub.message().await.unwrap().unwrap();
    let Some(Content::CaughtUp(c)) = caught_up.content else {
        panic!("{caught_up:?}")
    };
    assert_eq!(c.stream_revision, None);
    drop(sub);
    let refused = async {
        let mut sub = client.read(subscribe_after(u64::MAX)).await?.into_inner();
        while sub.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    };
    let status = refused.await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("out of range"), "{status:?}");
    let r = append_with(&mut client, "edge-1", E::Revision(1)).await;
    assert!(matches!(r, Ok(append_resp::Result::Success(_))), "{r:?}");
}

//! The error map end to end: a store that fails on demand (the real engine
//! behind a wrapper that returns a chosen core error from a chosen method)
//! in front of the real server, driven over a real socket by the real
//! `factum-client`, by KurrentDB's raw wire messages, and by HTTP. Every
//! core error variant goes through every RPC and route; the client must
//! rebuild the same error, official clients must find the status code,
//! `exception` and detail KurrentDB sends, and HTTP the mapped status and
//! JSON body.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use factum_client::{Client, Retry};
use factum_core::UnavailableReason;
use factum_core::{
    AppendResult, CurrentRevision, DeleteResult, Error, EventData, EventStore, ExpectedRevision,
    Position, ReadAll, ReadStream, RecordedEvent, StreamMetadata, StreamMetadataResult, StreamName,
    StreamRevision, Subscribe, Subscription, SubscriptionStart, Uuid,
};
use factum_engine::{Durability, Engine, EngineConfig};
use factum_proto::persistent::persistent_subscriptions_client::PersistentSubscriptionsClient;
use factum_proto::streams::streams_client::StreamsClient;
use factum_proto::{persistent, shared, streams};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The store methods a fault can be put on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Append,
    ReadStream,
    ReadAll,
    Subscribe,
    /// The subscription starts, then its first message is the error.
    SubscriptionMessage,
    StreamMetadata,
    SetStreamMetadata,
    Delete,
    Tombstone,
    HeadPosition,
}

/// Makes the error of one catalogue entry for a call on `stream` that
/// expected `expected` (a conflict names what the caller sent, as a real
/// store's would).
type MakeError = fn(&StreamName, ExpectedRevision) -> Error;

/// The real engine, failing on demand: while armed, every call of the
/// armed method returns a fresh error from the armed maker (counted in
/// `faults`).
struct Faulty {
    inner: Engine,
    armed: Mutex<Option<(Method, MakeError)>>,
    faults: std::sync::atomic::AtomicUsize,
}

impl Faulty {
    fn fault(
        &self,
        method: Method,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Option<Error> {
        match *self.armed.lock().unwrap() {
            Some((m, make)) if m == method => {
                self.faults
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Some(make(stream, expected))
            }
            _ => None,
        }
    }
    fn arm(&self, method: Method, make: MakeError) {
        *self.armed.lock().unwrap() = Some((method, make));
    }
    fn disarm(&self) {
        *self.armed.lock().unwrap() = None;
    }
}

impl EventStore for Faulty {
    async fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> factum_core::Result<AppendResult> {
        if let Some(e) = self.fault(Method::Append, &stream, expected) {
            return Err(e);
        }
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(&self, request: ReadStream) -> factum_core::Result<Vec<RecordedEvent>> {
        if let Some(e) = self.fault(Method::ReadStream, &request.stream, ExpectedRevision::Any) {
            return Err(e);
        }
        self.inner.read_stream(request).await
    }
    async fn read_all(&self, request: ReadAll) -> factum_core::Result<Vec<RecordedEvent>> {
        if let Some(e) = self.fault(Method::ReadAll, &StreamName::all(), ExpectedRevision::Any) {
            return Err(e);
        }
        self.inner.read_all(request).await
    }
    async fn subscribe(&self, request: Subscribe) -> factum_core::Result<Subscription> {
        let all = StreamName::all();
        let stream = match &request.target {
            factum_core::SubscriptionTarget::Stream(s) => s,
            _ => &all,
        };
        if let Some(e) = self.fault(Method::Subscribe, stream, ExpectedRevision::Any) {
            return Err(e);
        }
        if let Some(e) = self.fault(Method::SubscriptionMessage, stream, ExpectedRevision::Any) {
            return Ok(Subscription::new(futures_util::stream::iter([Err(e)])));
        }
        self.inner.subscribe(request).await
    }
    async fn stream_metadata(
        &self,
        stream: StreamName,
    ) -> factum_core::Result<StreamMetadataResult> {
        if let Some(e) = self.fault(Method::StreamMetadata, &stream, ExpectedRevision::Any) {
            return Err(e);
        }
        self.inner.stream_metadata(stream).await
    }
    async fn set_stream_metadata(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
    ) -> factum_core::Result<AppendResult> {
        let meta = stream.metadata_stream();
        if let Some(e) = self.fault(Method::SetStreamMetadata, &meta, expected) {
            return Err(e);
        }
        self.inner
            .set_stream_metadata(stream, expected, metadata)
            .await
    }
    async fn delete_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> factum_core::Result<DeleteResult> {
        if let Some(e) = self.fault(Method::Delete, &stream, expected) {
            return Err(e);
        }
        self.inner.delete_stream(stream, expected).await
    }
    async fn tombstone_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> factum_core::Result<DeleteResult> {
        if let Some(e) = self.fault(Method::Tombstone, &stream, expected) {
            return Err(e);
        }
        self.inner.tombstone_stream(stream, expected).await
    }
    async fn head_position(&self) -> factum_core::Result<Option<Position>> {
        if let Some(e) = self.fault(
            Method::HeadPosition,
            &StreamName::all(),
            ExpectedRevision::Any,
        ) {
            return Err(e);
        }
        self.inner.head_position().await
    }
}

/// Every core error variant (and each kind of limit), as a store would
/// answer a call on `stream` expecting `expected`.
fn catalogue() -> Vec<(&'static str, MakeError)> {
    vec![
        ("conflict", |s, e| Error::WrongExpectedVersion {
            stream: s.clone(),
            expected: e,
            actual: CurrentRevision::Current(StreamRevision(7)),
        }),
        ("conflict on no stream", |s, e| {
            Error::WrongExpectedVersion {
                stream: s.clone(),
                expected: e,
                actual: CurrentRevision::NoStream,
            }
        }),
        ("deleted", |s, _| Error::StreamDeleted { stream: s.clone() }),
        ("not found", |s, _| Error::StreamNotFound {
            stream: s.clone(),
        }),
        ("invalid input", |_, _| {
            Error::InvalidInput("the café's event type is not valid: \"\\u0000\"".into())
        }),
        ("append size", |_, _| Error::LimitExceeded {
            what: "append size in bytes".into(),
            limit: 1 << 20,
            actual: (1 << 20) + 17,
        }),
        ("event size", |_, _| Error::LimitExceeded {
            what: format!(
                "event {} size in bytes (data + metadata + type)",
                Uuid::from_u128(0x1234)
            ),
            limit: 4096,
            actual: 5000,
        }),
        ("event count", |_, _| Error::LimitExceeded {
            what: "events in one append".into(),
            limit: 100_000,
            actual: 100_001,
        }),
        ("disk fault", |_, _| {
            Error::io(
                "writing segment 00000003.log",
                io::Error::from_raw_os_error(5),
            )
        }),
        ("disk full", |_, _| {
            Error::io(
                "creating segment 00000004.log",
                io::Error::from_raw_os_error(28),
            )
        }),
        ("I/O without an OS error", |_, _| {
            Error::io("decoding a frame", io::Error::other("short frame"))
        }),
        ("corrupt", |_, _| Error::Corrupt {
            file: PathBuf::from("/data/store/00000003.log"),
            offset: 40960,
            detail: "frame checksum mismatch".into(),
        }),
        ("unavailable", |_, _| {
            Error::unavailable(
                UnavailableReason::StorageFailed,
                "the writer stopped after a failed fsync",
            )
        }),
        ("unavailable, transient", |_, _| {
            Error::unavailable(
                UnavailableReason::DatabaseUnreachable,
                "PostgreSQL connect: connection refused",
            )
        }),
        ("locked", |_, _| Error::Locked {
            path: PathBuf::from("/data/store/LOCK"),
        }),
        ("unsupported", |_, _| {
            Error::Unsupported("transactions".into())
        }),
    ]
}

/// Same variant, same fields: the Display shows every field, and an I/O
/// error's OS number is compared too.
fn assert_same(got: &Error, want: &Error, what: &str) {
    assert_eq!(
        std::mem::discriminant(got),
        std::mem::discriminant(want),
        "{what}: got {got:?}, want {want:?}"
    );
    assert_eq!(got.to_string(), want.to_string(), "{what}");
    if let (Error::Io { source: g, .. }, Error::Io { source: w, .. }) = (got, want) {
        assert_eq!(g.raw_os_error(), w.raw_os_error(), "{what}");
        assert_eq!(g.kind(), w.kind(), "{what}");
    }
    if let (Error::Unavailable { reason: g, .. }, Error::Unavailable { reason: w, .. }) =
        (got, want)
    {
        assert_eq!(g, w, "{what}: the reason");
    }
}

struct Fixture {
    store: Arc<Faulty>,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
    let store = Arc::new(Faulty {
        inner: engine,
        armed: Mutex::new(None),
        faults: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(factum_server::serve(
        listener,
        store.clone(),
        factum_server::ServerConfig::new(addr),
        std::future::pending(),
    ));
    Fixture {
        store,
        addr,
        _dir: dir,
    }
}

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

/// Every variant through every operation of `factum-client`: BatchAppend
/// (appends), Append (metadata writes), Read (streams, `$all`, metadata,
/// the head), subscriptions (refused at the start and failing later),
/// Delete and Tombstone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_rebuilds_every_error_from_every_rpc() {
    let f = start().await;
    let client = Client::connect(&format!("http://{}", f.addr))
        .await
        .unwrap()
        .with_retry(Retry::none());
    let s = name("errors-1");
    client
        .append(
            s.clone(),
            ExpectedRevision::Any,
            vec![EventData::binary("T", "x")],
        )
        .await
        .unwrap();
    for (label, make) in catalogue() {
        let case = |rpc: &str| format!("{label} through {rpc}");
        let exact = ExpectedRevision::Exact(StreamRevision(0));

        f.store.arm(Method::Append, make);
        let got = client
            .append(s.clone(), exact, vec![EventData::binary("T", "y")])
            .await
            .unwrap_err();
        assert_same(&got, &make(&s, exact), &case("BatchAppend"));

        let md = StreamMetadata::default();
        let got = client
            .set_stream_metadata(s.clone(), ExpectedRevision::Any, md)
            .await
            .unwrap_err();
        assert_same(
            &got,
            &make(&s.metadata_stream(), ExpectedRevision::Any),
            &case("Append (metadata)"),
        );

        f.store.arm(Method::ReadStream, make);
        let got = client
            .read_stream(ReadStream::forwards(s.clone()))
            .await
            .unwrap_err();
        let want = make(&s, ExpectedRevision::Any);
        assert_same(&got, &want, &case("Read (stream)"));

        // Metadata of a stream is read from `$$<stream>`: a metadata stream
        // that does not exist is the default metadata, by contract.
        let got = client.stream_metadata(s.clone()).await;
        match make(&s.metadata_stream(), ExpectedRevision::Any) {
            Error::StreamNotFound { .. } => {
                assert_eq!(got.unwrap(), StreamMetadataResult::default())
            }
            // A deleted `$$<stream>` is reported for the stream itself.
            Error::StreamDeleted { .. } => assert_same(
                &got.unwrap_err(),
                &make(&s, ExpectedRevision::Any),
                &case("Read (metadata)"),
            ),
            want => assert_same(&got.unwrap_err(), &want, &case("Read (metadata)")),
        }

        f.store.arm(Method::ReadAll, make);
        let all = StreamName::all();
        let want = make(&all, ExpectedRevision::Any);
        let got = client.read_all(ReadAll::forwards()).await.unwrap_err();
        assert_same(&got, &want, &case("Read ($all)"));
        let got = client.head_position().await.unwrap_err();
        assert_same(&got, &want, &case("Read ($all backwards, head position)"));

        for method in [Method::Subscribe, Method::SubscriptionMessage] {
            f.store.arm(method, make);
            let got = match client
                .subscribe(Subscribe::stream(s.clone(), SubscriptionStart::Beginning))
                .await
            {
                Err(e) => e,
                Ok(mut sub) => loop {
                    match sub.next().await {
                        Some(Err(e)) => break e,
                        Some(Ok(_)) => continue,
                        None => panic!(
                            "{}: the subscription ended without its error",
                            case("Read (subscription)")
                        ),
                    }
                },
            };
            assert_same(
                &got,
                &make(&s, ExpectedRevision::Any),
                &case(&format!("Read ({method:?})")),
            );
        }

        f.store.arm(Method::Delete, make);
        let got = client.delete_stream(s.clone(), exact).await.unwrap_err();
        assert_same(&got, &make(&s, exact), &case("Delete"));

        f.store.arm(Method::Tombstone, make);
        let got = client.tombstone_stream(s.clone(), exact).await.unwrap_err();
        assert_same(&got, &make(&s, exact), &case("Tombstone"));
        f.store.disarm();
    }
    // Nothing was written by any of it: the one event is still the stream.
    let events = client.read_stream(ReadStream::forwards(s)).await.unwrap();
    assert_eq!(events.len(), 1);
}

/// What KurrentDB's clients see: per variant, the status code of a failed
/// call and of a BatchAppend answer, the `exception` and the detail type.
fn kurrentdb_view(label: &str) -> (tonic::Code, Option<&'static str>, &'static str) {
    use tonic::Code::*;
    match label {
        "conflict" | "conflict on no stream" => (
            FailedPrecondition,
            Some("wrong-expected-version"),
            "WrongExpectedVersion",
        ),
        "deleted" => (FailedPrecondition, Some("stream-deleted"), "StreamDeleted"),
        "not found" => (NotFound, Some("stream-not-found"), "Unknown"),
        "invalid input" => (InvalidArgument, None, "BadRequest"),
        "append size" => (
            InvalidArgument,
            Some("maximum-append-size-exceeded"),
            "MaximumAppendSizeExceeded",
        ),
        "event size" => (
            InvalidArgument,
            Some("maximum-append-event-size-exceeded"),
            "MaximumAppendEventSizeExceeded",
        ),
        "event count" => (InvalidArgument, None, "BadRequest"),
        "disk fault" | "disk full" | "I/O without an OS error" | "locked" => {
            (Internal, None, "Unknown")
        }
        "corrupt" => (DataLoss, None, "Unknown"),
        "unavailable" | "unavailable, transient" => (Unavailable, None, "Unknown"),
        "unsupported" => (Unimplemented, None, "Unknown"),
        other => panic!("no expectation for {other}"),
    }
}

/// The raw wire as KurrentDB's clients read it: BatchAppend answers in
/// band with the code and typed detail; Delete fails with the code and the
/// `exception` metadata; persistent subscriptions (a group's configuration
/// write failing) answer with the same map, which `factum-client` decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kurrentdb_clients_see_one_code_per_error_on_every_rpc() {
    let f = start().await;
    let mut streams = StreamsClient::new(channel(f.addr).await);
    let mut groups = PersistentSubscriptionsClient::new(channel(f.addr).await);
    let s = name("errors-2");
    let stream_id = shared::StreamIdentifier {
        stream_name: s.as_str().as_bytes().to_vec(),
    };
    for (label, make) in catalogue() {
        let (code, exception, detail) = kurrentdb_view(label);
        f.store.arm(Method::Append, make);
        let req = streams::BatchAppendReq {
            correlation_id: Some(shared::Uuid {
                value: Some(shared::uuid::Value::String(Uuid::new_v4().to_string())),
            }),
            options: Some(streams::batch_append_req::Options {
                stream_identifier: Some(stream_id.clone()),
                expected_stream_position: None,
                deadline_option: None,
            }),
            proposed_messages: vec![streams::batch_append_req::ProposedMessage {
                id: Some(shared::Uuid {
                    value: Some(shared::uuid::Value::String(Uuid::new_v4().to_string())),
                }),
                metadata: [
                    ("type".to_owned(), "T".to_owned()),
                    (
                        "content-type".to_owned(),
                        "application/octet-stream".to_owned(),
                    ),
                ]
                .into(),
                custom_metadata: vec![],
                data: b"x".to_vec(),
            }],
            is_final: true,
        };
        let mut answers = streams
            .batch_append(futures_util::stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        let Some(streams::batch_append_resp::Result::Error(status)) = answer.result else {
            panic!("{label}: BatchAppend answered {answer:?}");
        };
        assert_eq!(
            tonic::Code::from(status.code),
            code,
            "{label}: BatchAppend code"
        );
        let type_url = status.details.as_ref().unwrap().type_url.clone();
        assert_eq!(
            type_url,
            format!("type.googleapis.com/event_store.client.{detail}"),
            "{label}: BatchAppend detail"
        );
        assert_eq!(
            status.metadata.get("exception").map(String::as_str),
            exception,
            "{label}: BatchAppend exception"
        );

        f.store.arm(Method::Delete, make);
        let status = streams
            .delete(streams::DeleteReq {
                options: Some(streams::delete_req::Options {
                    stream_identifier: Some(stream_id.clone()),
                    expected_stream_revision: None,
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{label}: Delete code");
        assert_eq!(
            status
                .metadata()
                .get("exception")
                .map(|v| v.to_str().unwrap()),
            exception,
            "{label}: Delete exception"
        );
        assert_same(
            &factum_client::error_from_status(status),
            &make(&s, ExpectedRevision::Any),
            &format!("{label} through Delete"),
        );
        f.store.disarm();
    }

    // Persistent subscriptions: deleting a group writes the configuration
    // stream; its failure is the store's error, through the same map.
    let config_stream = name("$persistentSubscriptionConfig");
    for (i, (label, make)) in catalogue().into_iter().enumerate() {
        let group = format!("g{i}");
        let create = persistent::CreateReq {
            options: Some(create_options(&stream_id, &group)),
        };
        groups.create(create).await.unwrap();
        f.store.arm(Method::Append, make);
        let status = groups
            .delete(persistent::DeleteReq {
                options: Some(persistent::delete_req::Options {
                    stream_option: Some(
                        persistent::delete_req::options::StreamOption::StreamIdentifier(
                            stream_id.clone(),
                        ),
                    ),
                    group_name: group,
                }),
            })
            .await
            .unwrap_err();
        f.store.disarm();
        let got = factum_client::error_from_status(status);
        match make(&config_stream, ExpectedRevision::Any) {
            // A conflict on the configuration stream means another node
            // changed it: the subsystem reports it as unavailable.
            Error::WrongExpectedVersion { .. } => {
                assert!(matches!(got, Error::Unavailable { .. }), "{label}: {got:?}")
            }
            _ => assert_same(
                &got,
                &make(&config_stream, ExpectedRevision::Any),
                &format!("{label} through PersistentSubscriptions.Delete"),
            ),
        }
    }
}

/// A stream group's options as KurrentDB's clients send them (timeouts in
/// milliseconds, the strategy by name).
fn create_options(stream: &shared::StreamIdentifier, group: &str) -> persistent::GroupOptions {
    use persistent::{group_options, settings, Settings, StreamOptions};
    persistent::GroupOptions {
        stream_option: Some(group_options::StreamOption::Stream(StreamOptions {
            stream_identifier: Some(stream.clone()),
            revision_option: Some(persistent::stream_options::RevisionOption::Start(
                shared::Empty {},
            )),
        })),
        group_name: group.to_owned(),
        settings: Some(Settings {
            max_retry_count: 10,
            min_checkpoint_count: 10,
            max_checkpoint_count: 1000,
            live_buffer_size: 500,
            read_batch_size: 20,
            history_buffer_size: 500,
            consumer_strategy: "RoundRobin".into(),
            message_timeout: Some(settings::MessageTimeout::MessageTimeoutMs(30_000)),
            checkpoint_after: Some(settings::CheckpointAfter::CheckpointAfterMs(2_000)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The reason of an `Unavailable` crosses the wire, and `factum-client`'s
/// retry acts on it: an append failing for a fatal reason (a failed fsync
/// on the server) is sent once, one failing for a transient reason (the
/// database unreachable) until the attempts run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_retry_skips_fatal_unavailable_errors() {
    use std::sync::atomic::Ordering::SeqCst;
    let f = start().await;
    let retry = Retry {
        attempts: 4,
        first_delay: std::time::Duration::from_millis(1),
        max_delay: std::time::Duration::from_millis(5),
    };
    let client = Client::connect(&format!("http://{}", f.addr))
        .await
        .unwrap()
        .with_retry(retry);
    let s = name("retry-1");
    for (label, reason, calls) in [
        ("fatal", UnavailableReason::StorageFailed, 1),
        ("transient", UnavailableReason::DatabaseUnreachable, 4),
    ] {
        let make: MakeError = match reason {
            UnavailableReason::StorageFailed => {
                |_, _| Error::unavailable(UnavailableReason::StorageFailed, "fsync failed")
            }
            _ => |_, _| Error::unavailable(UnavailableReason::DatabaseUnreachable, "refused"),
        };
        f.store.faults.store(0, SeqCst);
        f.store.arm(Method::Append, make);
        let got = client
            .append(
                s.clone(),
                ExpectedRevision::Any,
                vec![EventData::binary("T", "x")],
            )
            .await
            .unwrap_err();
        f.store.disarm();
        assert!(
            matches!(got, Error::Unavailable { reason: r, .. } if r == reason),
            "{label}: {got:?}"
        );
        assert_eq!(got.is_fatal(), reason.is_fatal(), "{label}");
        assert_eq!(f.store.faults.load(SeqCst), calls, "{label}: appends sent");
    }
}

/// One HTTP request on a fresh connection: (status, JSON body).
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text:?}")),
    )
}

/// The HTTP status each variant maps to.
fn http_status(e: &Error) -> u16 {
    match e {
        Error::WrongExpectedVersion { .. } => 409,
        Error::StreamDeleted { .. } => 410,
        Error::StreamNotFound { .. } => 404,
        Error::InvalidInput(_) => 400,
        Error::LimitExceeded { .. } => 413,
        Error::Unavailable { .. } => 503,
        Error::Unsupported(_) => 501,
        _ => 500,
    }
}

/// Every variant through every HTTP route that reaches the store: the
/// mapped status, and a JSON body with the kind, the whole message and
/// the error's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_the_mapped_status_and_json_for_every_error() {
    let f = start().await;
    let s = name("errors-3");
    let routes: [(Method, &str, String, &str); 7] = [
        (
            Method::Append,
            "POST",
            format!("/streams/{s}"),
            r#"[{"type":"T","data":{}}]"#,
        ),
        (Method::ReadStream, "GET", format!("/streams/{s}"), ""),
        (Method::Delete, "DELETE", format!("/streams/{s}"), ""),
        (
            Method::Tombstone,
            "DELETE",
            format!("/streams/{s}?tombstone=true"),
            "",
        ),
        (
            Method::StreamMetadata,
            "GET",
            format!("/streams/{s}/metadata"),
            "",
        ),
        (
            Method::SetStreamMetadata,
            "PUT",
            format!("/streams/{s}/metadata"),
            "{}",
        ),
        (
            Method::Subscribe,
            "GET",
            format!("/streams/{s}/subscribe"),
            "",
        ),
    ];
    for (label, make) in catalogue() {
        for (method, verb, path, body) in &routes {
            f.store.arm(*method, make);
            let (status, json) = http(f.addr, verb, path, body).await;
            f.store.disarm();
            let stream = if *method == Method::SetStreamMetadata {
                s.metadata_stream()
            } else {
                s.clone()
            };
            let want = make(&stream, ExpectedRevision::Any);
            let case = format!("{label} through {verb} {path}");
            assert_eq!(status, http_status(&want), "{case}: {json}");
            assert_eq!(json["message"], want.to_string(), "{case}");
            let kind = json["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{case}: {json}"));
            match &want {
                Error::WrongExpectedVersion {
                    stream,
                    expected,
                    actual,
                } => {
                    assert_eq!(kind, "wrong-expected-version");
                    assert_eq!(json["stream"], stream.as_str(), "{case}");
                    assert_eq!(json["expected"], expected.to_string(), "{case}");
                    assert_eq!(json["actual"], actual.to_string(), "{case}");
                }
                Error::StreamDeleted { stream } | Error::StreamNotFound { stream } => {
                    assert_eq!(json["stream"], stream.as_str(), "{case}");
                }
                Error::LimitExceeded {
                    what,
                    limit,
                    actual,
                } => {
                    assert_eq!(kind, "limit-exceeded");
                    assert_eq!(json["limit_what"], what.as_str(), "{case}");
                    assert_eq!(json["limit"], *limit, "{case}");
                    assert_eq!(json["limit_actual"], *actual, "{case}");
                }
                Error::Io { context, source } => {
                    assert_eq!(kind, "io");
                    assert_eq!(json["io_context"], context.as_str(), "{case}");
                    match source.raw_os_error() {
                        Some(n) => assert_eq!(json["os_error"], n, "{case}"),
                        None => assert!(json.get("os_error").is_none(), "{case}"),
                    }
                }
                Error::Corrupt {
                    file,
                    offset,
                    detail,
                } => {
                    assert_eq!(kind, "corrupt");
                    assert_eq!(json["file"], file.display().to_string(), "{case}");
                    assert_eq!(json["offset"], *offset, "{case}");
                    assert_eq!(json["detail"], detail.as_str(), "{case}");
                }
                Error::Locked { path } => {
                    assert_eq!(kind, "locked");
                    assert_eq!(json["path"], path.display().to_string(), "{case}");
                }
                Error::InvalidInput(_) => assert_eq!(kind, "invalid-input"),
                Error::Unavailable { .. } => assert_eq!(kind, "unavailable"),
                Error::Unsupported(_) => assert_eq!(kind, "unsupported"),
                other => panic!("{case}: {other:?}"),
            }
        }
    }
}

/// Metadata writes over gRPC keep the client's event id: a retry of a
/// metadata write that was applied (its answer lost) is recognised and
/// answered with the first write's result, not written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_metadata_write_is_idempotent() {
    let f = start().await;
    let mut streams = StreamsClient::new(channel(f.addr).await);
    let s = name("meta-1");
    let meta = s.metadata_stream();
    let id = Uuid::new_v4();
    let write = |expected: streams::append_req::options::ExpectedStreamRevision, max_count: u64| {
        let content = [
            streams::append_req::Content::Options(streams::append_req::Options {
                stream_identifier: Some(shared::StreamIdentifier {
                    stream_name: meta.as_str().as_bytes().to_vec(),
                }),
                expected_stream_revision: Some(expected),
            }),
            streams::append_req::Content::ProposedMessage(streams::append_req::ProposedMessage {
                id: Some(shared::Uuid {
                    value: Some(shared::uuid::Value::String(id.to_string())),
                }),
                metadata: [
                    ("type".to_owned(), "$metadata".to_owned()),
                    ("content-type".to_owned(), "application/json".to_owned()),
                ]
                .into(),
                custom_metadata: vec![],
                data: format!(r#"{{"$maxCount":{max_count}}}"#).into_bytes(),
            }),
        ];
        futures_util::stream::iter(content.map(|c| streams::AppendReq { content: Some(c) }))
    };
    use streams::append_req::options::ExpectedStreamRevision as E;
    let success = |r: streams::AppendResp| match r.result {
        Some(streams::append_resp::Result::Success(s)) => s,
        other => panic!("{other:?}"),
    };
    let first = success(
        streams
            .append(write(E::NoStream(shared::Empty {}), 5))
            .await
            .unwrap()
            .into_inner(),
    );
    // The same write again, as a client retries when the answer was lost:
    // with the same expectation, and with `any`.
    for expected in [E::NoStream(shared::Empty {}), E::Any(shared::Empty {})] {
        let again = success(
            streams
                .append(write(expected, 5))
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(again, first, "a retry answers the first write's result");
    }
    let events = f
        .store
        .inner
        .read_stream(ReadStream::forwards(meta))
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "written once");
    assert_eq!(events[0].id, id, "the client's event id is kept");
    let md = f.store.inner.stream_metadata(s).await.unwrap();
    assert_eq!(md.metadata.max_count, Some(5));
}

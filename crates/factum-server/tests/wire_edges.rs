//! Every field of Append, BatchAppend, Read, Delete and Tombstone at its
//! edges, over the wire to a real server on a socket: over gRPC with
//! factum-proto's generated client and over HTTP/1.1 with raw requests.
//! Each row names the field and edge, what is sent, and the answer it must
//! get (status code and a piece of the message); after every row `$all`
//! must read exactly as before (nothing refused was written).

use std::collections::HashMap;
use std::sync::Arc;

use factum_engine::{Durability, Engine, EngineConfig};
use factum_proto::shared;
use factum_proto::streams::read_req::options::{
    self as ro, filter_options, CountOption, FilterOption, FilterOptions, StreamOption,
};
use factum_proto::streams::read_resp::Content;
use factum_proto::streams::streams_client::StreamsClient;
use factum_proto::streams::{
    append_req, append_resp, batch_append_req, batch_append_resp, delete_req, tombstone_req,
    AppendReq, BatchAppendReq, DeleteReq, ReadReq, TombstoneReq,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::Code;

/// The server's append limit in these tests.
const MAX_APPEND: u64 = 64 * 1024;
/// The seeded stream: revisions 0..=2.
const SEEDED: &str = "edge-1";

struct Server {
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = factum_server::ServerConfig::new(addr);
    cfg.max_append_bytes = MAX_APPEND;
    tokio::spawn(factum_server::serve(
        listener,
        Arc::new(engine),
        cfg,
        std::future::pending(),
    ));
    Server { addr, _dir: dir }
}

async fn client(addr: std::net::SocketAddr) -> StreamsClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    StreamsClient::new(channel).max_decoding_message_size(64 << 20)
}

fn sid(name: &[u8]) -> Option<shared::StreamIdentifier> {
    Some(shared::StreamIdentifier {
        stream_name: name.to_vec(),
    })
}

fn id_string(s: &str) -> Option<shared::Uuid> {
    Some(shared::Uuid {
        value: Some(shared::uuid::Value::String(s.to_owned())),
    })
}

fn new_id() -> Option<shared::Uuid> {
    id_string(&uuid::Uuid::new_v4().to_string())
}

fn md(event_type: Option<&str>, content_type: Option<&str>) -> HashMap<String, String> {
    let mut m = HashMap::new();
    if let Some(t) = event_type {
        m.insert("type".to_owned(), t.to_owned());
    }
    if let Some(c) = content_type {
        m.insert("content-type".to_owned(), c.to_owned());
    }
    m
}

fn proposed(
    id: Option<shared::Uuid>,
    metadata: HashMap<String, String>,
    data: Vec<u8>,
) -> append_req::ProposedMessage {
    append_req::ProposedMessage {
        id,
        metadata,
        custom_metadata: vec![],
        data,
    }
}

fn ok_event() -> append_req::ProposedMessage {
    proposed(
        new_id(),
        md(Some("Edge"), Some("application/json")),
        b"{}".to_vec(),
    )
}

fn options(
    stream: &[u8],
    expected: Option<append_req::options::ExpectedStreamRevision>,
) -> AppendReq {
    AppendReq {
        content: Some(append_req::Content::Options(append_req::Options {
            stream_identifier: sid(stream),
            expected_stream_revision: expected,
        })),
    }
}

fn event_msg(p: append_req::ProposedMessage) -> AppendReq {
    AppendReq {
        content: Some(append_req::Content::ProposedMessage(p)),
    }
}

/// What a call answered: a status, or an answer message that reports an
/// error in its body (AppendResp's wrong_expected_version, BatchAppend's
/// error), or success.
#[derive(Debug)]
enum Outcome {
    Status(Code, String),
    Body(String),
    Success,
}

async fn append(c: &mut StreamsClient<Channel>, msgs: Vec<AppendReq>) -> Outcome {
    match c.append(futures_util::stream::iter(msgs)).await {
        Err(s) => Outcome::Status(s.code(), s.message().to_owned()),
        Ok(r) => match r.into_inner().result {
            Some(append_resp::Result::Success(_)) => Outcome::Success,
            other => Outcome::Body(format!("{other:?}")),
        },
    }
}

async fn batch(c: &mut StreamsClient<Channel>, msgs: Vec<BatchAppendReq>) -> Outcome {
    let mut answers = match c.batch_append(futures_util::stream::iter(msgs)).await {
        Err(s) => return Outcome::Status(s.code(), s.message().to_owned()),
        Ok(r) => r.into_inner(),
    };
    match answers.message().await {
        Err(s) => Outcome::Status(s.code(), s.message().to_owned()),
        Ok(None) => Outcome::Body("no answer".into()),
        Ok(Some(r)) => match r.result {
            Some(batch_append_resp::Result::Success(_)) => Outcome::Success,
            Some(batch_append_resp::Result::Error(e)) => {
                Outcome::Status(Code::from_i32(e.code), e.message)
            }
            None => Outcome::Body("an answer without a result".into()),
        },
    }
}

async fn read(c: &mut StreamsClient<Channel>, req: ReadReq) -> Outcome {
    let mut answers = match c.read(req).await {
        Err(s) => return Outcome::Status(s.code(), s.message().to_owned()),
        Ok(r) => r.into_inner(),
    };
    loop {
        match answers.message().await {
            Err(s) => return Outcome::Status(s.code(), s.message().to_owned()),
            Ok(None) => return Outcome::Success,
            Ok(Some(m)) => {
                if let Some(Content::StreamNotFound(_)) = m.content {
                    return Outcome::Body("stream not found".into());
                }
            }
        }
    }
}

async fn delete(c: &mut StreamsClient<Channel>, req: DeleteReq) -> Outcome {
    match c.delete(req).await {
        Err(s) => Outcome::Status(s.code(), s.message().to_owned()),
        Ok(_) => Outcome::Success,
    }
}

async fn tombstone(c: &mut StreamsClient<Channel>, req: TombstoneReq) -> Outcome {
    match c.tombstone(req).await {
        Err(s) => Outcome::Status(s.code(), s.message().to_owned()),
        Ok(_) => Outcome::Success,
    }
}

/// `$all`, forwards, as (position, stream, revision, id) of every event.
async fn snapshot(c: &mut StreamsClient<Channel>) -> Vec<(u64, Vec<u8>, u64, String)> {
    let req = ReadReq {
        options: Some(factum_proto::streams::read_req::Options {
            stream_option: Some(StreamOption::All(ro::AllOptions {
                all_option: Some(ro::all_options::AllOption::Start(shared::Empty {})),
            })),
            count_option: Some(CountOption::Count(u64::MAX)),
            filter_option: Some(FilterOption::NoFilter(shared::Empty {})),
            uuid_option: Some(ro::UuidOption {
                content: Some(ro::uuid_option::Content::String(shared::Empty {})),
            }),
            ..Default::default()
        }),
    };
    let mut answers = c.read(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(m) = answers.message().await.unwrap() {
        if let Some(Content::Event(e)) = m.content {
            let e = e.event.unwrap();
            out.push((
                e.commit_position,
                e.stream_identifier.unwrap().stream_name,
                e.stream_revision,
                format!("{:?}", e.id),
            ));
        }
    }
    out
}

/// The answer a gRPC row must get: a code and a piece of the message.
#[derive(Clone, Copy, Debug)]
enum Want {
    Grpc(Code, &'static str),
    /// An error carried in the answer's body (AppendResp's
    /// wrong_expected_version, Read's stream_not_found).
    Body(&'static str),
}

fn read_req(
    stream: Option<StreamOption>,
    count: Option<CountOption>,
    direction: i32,
    filter: Option<FilterOption>,
) -> ReadReq {
    ReadReq {
        options: Some(factum_proto::streams::read_req::Options {
            stream_option: stream,
            read_direction: direction,
            count_option: count,
            filter_option: filter,
            uuid_option: Some(ro::UuidOption {
                content: Some(ro::uuid_option::Content::String(shared::Empty {})),
            }),
            ..Default::default()
        }),
    }
}

fn stream_opt(name: &[u8], rev: Option<u64>) -> Option<StreamOption> {
    Some(StreamOption::Stream(ro::StreamOptions {
        stream_identifier: sid(name),
        revision_option: Some(match rev {
            Some(r) => ro::stream_options::RevisionOption::Revision(r),
            None => ro::stream_options::RevisionOption::Start(shared::Empty {}),
        }),
    }))
}

fn all_opt() -> Option<StreamOption> {
    Some(StreamOption::All(ro::AllOptions {
        all_option: Some(ro::all_options::AllOption::Start(shared::Empty {})),
    }))
}

fn regex_filter(regex: &str) -> Option<FilterOption> {
    Some(FilterOption::Filter(FilterOptions {
        filter: Some(filter_options::Filter::StreamIdentifier(
            filter_options::Expression {
                regex: regex.to_owned(),
                prefix: vec![],
            },
        )),
        window: None,
        checkpoint_interval_multiplier: 1,
    }))
}

fn batch_req(
    correlation: Option<shared::Uuid>,
    stream: Option<&[u8]>,
    expected: Option<batch_append_req::options::ExpectedStreamPosition>,
    events: Vec<append_req::ProposedMessage>,
) -> BatchAppendReq {
    BatchAppendReq {
        correlation_id: correlation,
        options: stream.map(|s| batch_append_req::Options {
            stream_identifier: sid(s),
            expected_stream_position: expected,
            deadline_option: None,
        }),
        proposed_messages: events
            .into_iter()
            .map(|p| batch_append_req::ProposedMessage {
                id: p.id,
                metadata: p.metadata,
                custom_metadata: p.custom_metadata,
                data: p.data,
            })
            .collect(),
        is_final: true,
    }
}

fn delete_req(
    stream: Option<&[u8]>,
    expected: Option<delete_req::options::ExpectedStreamRevision>,
) -> DeleteReq {
    DeleteReq {
        options: Some(delete_req::Options {
            stream_identifier: stream.and_then(sid),
            expected_stream_revision: expected,
        }),
    }
}

fn tombstone_req(
    stream: Option<&[u8]>,
    expected: Option<tombstone_req::options::ExpectedStreamRevision>,
) -> TombstoneReq {
    TombstoneReq {
        options: Some(tombstone_req::Options {
            stream_identifier: stream.and_then(sid),
            expected_stream_revision: expected,
        }),
    }
}

/// Checks an outcome against what the row wants; `None` when it matches.
fn mismatch(want: Want, got: &Outcome) -> Option<String> {
    let fine = match (want, got) {
        (Want::Grpc(code, piece), Outcome::Status(c, m)) => {
            *c == code && m.to_lowercase().contains(&piece.to_lowercase())
        }
        (Want::Body(piece), Outcome::Body(b)) => b.to_lowercase().contains(&piece.to_lowercase()),
        _ => false,
    };
    (!fine).then(|| format!("wanted {want:?}, got {got:?}"))
}

#[tokio::test]
async fn grpc_fields_at_their_edges() {
    use append_req::options::ExpectedStreamRevision as A;
    use batch_append_req::options::ExpectedStreamPosition as P;
    use delete_req::options::ExpectedStreamRevision as D;
    use tombstone_req::options::ExpectedStreamRevision as T;
    let server = start().await;
    let mut c = client(server.addr).await;
    let seeded = SEEDED.as_bytes();
    let seed = append(
        &mut c,
        vec![
            options(seeded, Some(A::NoStream(shared::Empty {}))),
            event_msg(ok_event()),
            event_msg(ok_event()),
            event_msg(ok_event()),
        ],
    )
    .await;
    assert!(matches!(seed, Outcome::Success), "{seed:?}");
    let mut before = snapshot(&mut c).await;
    assert_eq!(before.len(), 3);

    let big = (MAX_APPEND + 1) as usize;
    let any = || Some(A::Any(shared::Empty {}));
    let invalid = Code::InvalidArgument;
    let mut failures = Vec::new();
    let mut rows = 0;
    macro_rules! row {
        ($name:expr, $call:expr, $want:expr) => {{
            rows += 1;
            let got = $call;
            if let Some(m) = mismatch($want, &got) {
                failures.push(format!("{}: {m}", $name));
            }
            let after = snapshot(&mut c).await;
            if after != before {
                failures.push(format!("{}: the store changed", $name));
                before.clone_from(&after);
            }
        }};
    }

    // ---- Append
    row!(
        "append: no messages",
        append(&mut c, vec![]).await,
        Want::Grpc(invalid, "empty")
    );
    row!(
        "append: events before options",
        append(&mut c, vec![event_msg(ok_event()), options(b"e-2", any())]).await,
        Want::Grpc(invalid, "must start with its options")
    );
    row!(
        "append: options twice",
        append(&mut c, vec![options(b"e-2", any()), options(b"e-2", any())]).await,
        Want::Grpc(invalid, "options once")
    );
    row!(
        "append: missing content oneof",
        append(
            &mut c,
            vec![options(b"e-2", any()), AppendReq { content: None }]
        )
        .await,
        Want::Grpc(invalid, "empty")
    );
    row!(
        "append: stream_identifier missing",
        append(
            &mut c,
            vec![AppendReq {
                content: Some(append_req::Content::Options(append_req::Options {
                    stream_identifier: None,
                    expected_stream_revision: any(),
                })),
            }]
        )
        .await,
        Want::Grpc(invalid, "stream_identifier is missing")
    );
    for (name, stream, piece) in [
        ("empty", &b""[..], "stream name"),
        ("invalid UTF-8", &b"e-\xff"[..], "stream name"),
        ("$all", &b"$all"[..], "$all"),
    ] {
        row!(
            format!("append: stream {name}"),
            append(&mut c, vec![options(stream, any()), event_msg(ok_event())]).await,
            Want::Grpc(invalid, piece)
        );
    }
    row!(
        "append: managed stream",
        append(
            &mut c,
            vec![
                options(b"$persistentSubscriptionConfig", any()),
                event_msg(ok_event())
            ]
        )
        .await,
        Want::Grpc(Code::PermissionDenied, "")
    );
    row!(
        "append: expected_stream_revision missing",
        append(&mut c, vec![options(b"e-2", None), event_msg(ok_event())]).await,
        Want::Grpc(invalid, "expected_stream_revision is missing")
    );
    for (name, rev) in [
        ("0 (at 2)", 0),
        ("1 (at 2)", 1),
        ("3 (at 2)", 3),
        ("i64::MAX", i64::MAX as u64),
    ] {
        row!(
            format!("append: expected revision {name}"),
            append(
                &mut c,
                vec![
                    options(seeded, Some(A::Revision(rev))),
                    event_msg(ok_event())
                ]
            )
            .await,
            Want::Body("WrongExpectedVersion")
        );
    }
    // u64::MAX is -1, no stream, as in KurrentDB (ADR 15).
    row!(
        "append: expected revision u64::MAX",
        append(
            &mut c,
            vec![
                options(seeded, Some(A::Revision(u64::MAX))),
                event_msg(ok_event())
            ]
        )
        .await,
        Want::Body("ExpectedNoStream")
    );
    for (name, rev) in [
        ("i64::MAX+1", i64::MAX as u64 + 1),
        ("u64::MAX-1", u64::MAX - 1),
    ] {
        row!(
            format!("append: expected revision {name}"),
            append(
                &mut c,
                vec![
                    options(seeded, Some(A::Revision(rev))),
                    event_msg(ok_event())
                ]
            )
            .await,
            Want::Grpc(invalid, "revision")
        );
    }
    row!(
        "append: no_stream on an existing stream",
        append(
            &mut c,
            vec![
                options(seeded, Some(A::NoStream(shared::Empty {}))),
                event_msg(ok_event())
            ]
        )
        .await,
        Want::Body("WrongExpectedVersion")
    );
    row!(
        "append: stream_exists on a missing stream",
        append(
            &mut c,
            vec![
                options(b"e-none", Some(A::StreamExists(shared::Empty {}))),
                event_msg(ok_event())
            ]
        )
        .await,
        Want::Body("WrongExpectedVersion")
    );
    row!(
        "append: event id missing",
        append(
            &mut c,
            vec![
                options(b"e-2", any()),
                event_msg(proposed(
                    None,
                    md(Some("E"), Some("application/json")),
                    vec![]
                ))
            ]
        )
        .await,
        Want::Grpc(invalid, "event id is missing")
    );
    row!(
        "append: event id uuid oneof missing",
        append(
            &mut c,
            vec![
                options(b"e-2", any()),
                event_msg(proposed(
                    Some(shared::Uuid { value: None }),
                    md(Some("E"), Some("application/json")),
                    vec![]
                ))
            ]
        )
        .await,
        Want::Grpc(invalid, "event id is missing")
    );
    for bad in ["", "not-a-uuid", "0f8fad5b-d9cb-469f-a165-70867728950"] {
        row!(
            format!("append: event id {bad:?}"),
            append(
                &mut c,
                vec![
                    options(b"e-2", any()),
                    event_msg(proposed(
                        id_string(bad),
                        md(Some("E"), Some("application/json")),
                        vec![]
                    ))
                ]
            )
            .await,
            Want::Grpc(invalid, "not a UUID")
        );
    }
    row!(
        "append: type missing",
        append(
            &mut c,
            vec![
                options(b"e-2", any()),
                event_msg(proposed(
                    new_id(),
                    md(None, Some("application/json")),
                    vec![]
                ))
            ]
        )
        .await,
        Want::Grpc(invalid, "type")
    );
    row!(
        "append: content-type missing",
        append(
            &mut c,
            vec![
                options(b"e-2", any()),
                event_msg(proposed(new_id(), md(Some("E"), None), vec![]))
            ]
        )
        .await,
        Want::Grpc(invalid, "content-type")
    );
    for (name, ty) in [("NUL", "a\u{0}b"), ("newline", "a\nb"), ("empty", "")] {
        row!(
            format!("append: type with {name}"),
            append(
                &mut c,
                vec![
                    options(b"e-2", any()),
                    event_msg(proposed(
                        new_id(),
                        md(Some(ty), Some("application/json")),
                        vec![]
                    ))
                ]
            )
            .await,
            Want::Grpc(invalid, "type")
        );
    }
    row!(
        "append: data of the limit + 1",
        append(
            &mut c,
            vec![
                options(b"e-2", any()),
                event_msg(proposed(
                    new_id(),
                    md(Some("E"), Some("application/octet-stream")),
                    vec![0; big]
                ))
            ]
        )
        .await,
        Want::Grpc(invalid, "exceeds the limit")
    );

    // ---- BatchAppend
    let ev = || vec![ok_event()];
    row!(
        "batch: correlation id missing",
        batch(
            &mut c,
            vec![batch_req(None, Some(b"e-2"), Some(P::Any(())), ev())]
        )
        .await,
        Want::Grpc(invalid, "correlation")
    );
    row!(
        "batch: options missing",
        batch(&mut c, vec![batch_req(new_id(), None, None, ev())]).await,
        Want::Grpc(invalid, "options")
    );
    // A missing expected_stream_position is taken as `any` by BatchAppend
    // (tests/error_map.rs relies on it), unlike Append, which requires it:
    // not a row here, since it writes.
    for (name, stream, code) in [
        ("empty", &b""[..], invalid),
        ("invalid UTF-8", &b"e-\xff"[..], invalid),
        ("$all", &b"$all"[..], invalid),
        (
            "managed",
            &b"$persistentSubscriptionConfig"[..],
            Code::PermissionDenied,
        ),
    ] {
        row!(
            format!("batch: stream {name}"),
            batch(
                &mut c,
                vec![batch_req(new_id(), Some(stream), Some(P::Any(())), ev())]
            )
            .await,
            Want::Grpc(code, "")
        );
    }
    for (name, rev, code) in [
        ("0 (at 2)", 0, Code::FailedPrecondition),
        ("i64::MAX", i64::MAX as u64, Code::FailedPrecondition),
        ("i64::MAX+1", i64::MAX as u64 + 1, invalid),
        ("u64::MAX-1", u64::MAX - 1, invalid),
        ("u64::MAX (no stream)", u64::MAX, Code::FailedPrecondition),
    ] {
        row!(
            format!("batch: expected position {name}"),
            batch(
                &mut c,
                vec![batch_req(
                    new_id(),
                    Some(seeded),
                    Some(P::StreamPosition(rev)),
                    ev()
                )]
            )
            .await,
            Want::Grpc(code, "")
        );
    }
    row!(
        "batch: event id missing",
        batch(
            &mut c,
            vec![batch_req(
                new_id(),
                Some(b"e-2"),
                Some(P::Any(())),
                vec![proposed(
                    None,
                    md(Some("E"), Some("application/json")),
                    vec![]
                )]
            )]
        )
        .await,
        Want::Grpc(invalid, "event id")
    );
    row!(
        "batch: type with NUL",
        batch(
            &mut c,
            vec![batch_req(
                new_id(),
                Some(b"e-2"),
                Some(P::Any(())),
                vec![proposed(
                    new_id(),
                    md(Some("a\u{0}"), Some("application/json")),
                    vec![]
                )]
            )]
        )
        .await,
        Want::Grpc(invalid, "type")
    );
    row!(
        "batch: data of the limit + 1",
        batch(
            &mut c,
            vec![batch_req(
                new_id(),
                Some(b"e-2"),
                Some(P::Any(())),
                vec![proposed(
                    new_id(),
                    md(Some("E"), Some("application/octet-stream")),
                    vec![0; big]
                )]
            )]
        )
        .await,
        Want::Grpc(invalid, "exceeds the limit")
    );

    // ---- Read
    let count = |n| Some(CountOption::Count(n));
    row!(
        "read: options missing",
        read(&mut c, ReadReq { options: None }).await,
        Want::Grpc(invalid, "options is missing")
    );
    row!(
        "read: stream oneof missing",
        read(&mut c, read_req(None, count(10), 0, None)).await,
        Want::Grpc(invalid, "neither stream nor all")
    );
    row!(
        "read: count oneof missing",
        read(&mut c, read_req(stream_opt(seeded, None), None, 0, None)).await,
        Want::Grpc(invalid, "neither count nor subscription")
    );
    for d in [2, -1, i32::MAX] {
        row!(
            format!("read: direction {d}"),
            read(
                &mut c,
                read_req(stream_opt(seeded, None), count(10), d, None)
            )
            .await,
            Want::Grpc(invalid, "unknown read direction")
        );
    }
    row!(
        "read: backwards subscription",
        read(
            &mut c,
            read_req(
                all_opt(),
                Some(CountOption::Subscription(ro::SubscriptionOptions {})),
                1,
                None
            )
        )
        .await,
        Want::Grpc(invalid, "backwards")
    );
    for (name, stream) in [("empty", &b""[..]), ("invalid UTF-8", &b"e-\xff"[..])] {
        row!(
            format!("read: stream {name}"),
            read(
                &mut c,
                read_req(stream_opt(stream, None), count(10), 0, None)
            )
            .await,
            Want::Grpc(invalid, "stream name")
        );
    }
    row!(
        "read: a stream that does not exist",
        read(
            &mut c,
            read_req(stream_opt(b"e-none", None), count(10), 0, None)
        )
        .await,
        Want::Body("not found")
    );
    for (name, regex, piece) in [
        ("invalid regex", "(", "invalid filter regex"),
        ("empty expression", "", "neither prefixes nor a regex"),
    ] {
        row!(
            format!("read: filter {name}"),
            read(
                &mut c,
                read_req(all_opt(), count(10), 0, regex_filter(regex))
            )
            .await,
            Want::Grpc(invalid, piece)
        );
    }
    row!(
        "read: filter oneof missing",
        read(
            &mut c,
            read_req(
                all_opt(),
                count(10),
                0,
                Some(FilterOption::Filter(FilterOptions {
                    filter: None,
                    window: None,
                    checkpoint_interval_multiplier: 0
                }))
            )
        )
        .await,
        Want::Grpc(invalid, "neither stream_identifier nor event_type")
    );

    // ---- Delete and Tombstone
    row!(
        "delete: options missing",
        delete(&mut c, DeleteReq { options: None }).await,
        Want::Grpc(invalid, "options is missing")
    );
    row!(
        "tombstone: options missing",
        tombstone(&mut c, TombstoneReq { options: None }).await,
        Want::Grpc(invalid, "options is missing")
    );
    for (name, stream, code) in [
        ("missing", None, invalid),
        ("empty", Some(&b""[..]), invalid),
        ("invalid UTF-8", Some(&b"e-\xff"[..]), invalid),
        ("$all", Some(&b"$all"[..]), invalid),
        (
            "managed",
            Some(&b"$persistentSubscriptionConfig"[..]),
            Code::PermissionDenied,
        ),
    ] {
        row!(
            format!("delete: stream {name}"),
            delete(&mut c, delete_req(stream, Some(D::Any(shared::Empty {})))).await,
            Want::Grpc(code, "")
        );
        row!(
            format!("tombstone: stream {name}"),
            tombstone(
                &mut c,
                tombstone_req(stream, Some(T::Any(shared::Empty {})))
            )
            .await,
            Want::Grpc(code, "")
        );
    }
    for (name, rev, code) in [
        ("0 (at 2)", 0, Code::FailedPrecondition),
        ("3 (at 2)", 3, Code::FailedPrecondition),
        ("i64::MAX", i64::MAX as u64, Code::FailedPrecondition),
        ("i64::MAX+1", i64::MAX as u64 + 1, invalid),
        ("u64::MAX-1", u64::MAX - 1, invalid),
        ("u64::MAX (no stream)", u64::MAX, Code::FailedPrecondition),
    ] {
        row!(
            format!("delete: expected revision {name}"),
            delete(&mut c, delete_req(Some(seeded), Some(D::Revision(rev)))).await,
            Want::Grpc(code, "")
        );
        row!(
            format!("tombstone: expected revision {name}"),
            tombstone(&mut c, tombstone_req(Some(seeded), Some(T::Revision(rev)))).await,
            Want::Grpc(code, "")
        );
    }
    row!(
        "delete: no_stream on an existing stream",
        delete(
            &mut c,
            delete_req(Some(seeded), Some(D::NoStream(shared::Empty {})))
        )
        .await,
        Want::Grpc(Code::FailedPrecondition, "")
    );
    row!(
        "tombstone: stream_exists on a missing stream",
        tombstone(
            &mut c,
            tombstone_req(Some(b"e-none"), Some(T::StreamExists(shared::Empty {})))
        )
        .await,
        Want::Grpc(Code::FailedPrecondition, "")
    );

    println!("{rows} gRPC rows");
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Still serving: a good append goes through.
    let ok = append(&mut c, vec![options(b"e-2", any()), event_msg(ok_event())]).await;
    assert!(matches!(ok, Outcome::Success), "{ok:?}");
}

/// One HTTP/1.1 request on a fresh connection; `path` is raw bytes (so a
/// percent-encoded invalid UTF-8 name goes as it is). Returns (status, body).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    s.write_all(&req).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// (name, method, path, headers, body, status, piece of the body).
type HttpRow<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Vec<(&'a str, &'a [u8])>,
    &'a [u8],
    u16,
    &'a str,
);

#[tokio::test]
async fn http_fields_at_their_edges() {
    use append_req::options::ExpectedStreamRevision as A;
    let server = start().await;
    let addr = server.addr;
    let mut c = client(addr).await;
    let seed = append(
        &mut c,
        vec![
            options(SEEDED.as_bytes(), Some(A::NoStream(shared::Empty {}))),
            event_msg(ok_event()),
            event_msg(ok_event()),
            event_msg(ok_event()),
        ],
    )
    .await;
    assert!(matches!(seed, Outcome::Success), "{seed:?}");
    let before = snapshot(&mut c).await;

    let json: &[(&str, &[u8])] = &[("content-type", b"application/json")];
    let one = br#"[{"type":"E","data":{}}]"#.as_slice();
    let big = {
        let mut b = br#"[{"type":"E","data":""#.to_vec();
        b.extend(vec![b'x'; MAX_APPEND as usize + 1]);
        b.extend_from_slice(br#""}]"#);
        b
    };
    let ce = "\"invalid-input\"";
    // (name, method, path, headers, body, status, piece of the body)
    let rows: Vec<HttpRow> = vec![
        (
            "append: stream invalid UTF-8",
            "POST",
            "/streams/e-%FF",
            json.to_vec(),
            one,
            400,
            "",
        ),
        (
            "append: stream $all",
            "POST",
            "/streams/$all",
            json.to_vec(),
            one,
            400,
            "$all",
        ),
        (
            "append: managed stream",
            "POST",
            "/streams/$persistentSubscriptionConfig",
            json.to_vec(),
            one,
            403,
            "",
        ),
        (
            "append: empty body",
            "POST",
            "/streams/e-2",
            json.to_vec(),
            b"",
            400,
            ce,
        ),
        (
            "append: not JSON",
            "POST",
            "/streams/e-2",
            json.to_vec(),
            b"{",
            400,
            ce,
        ),
        (
            "append: wrong shape",
            "POST",
            "/streams/e-2",
            json.to_vec(),
            b"{\"a\":1}",
            400,
            ce,
        ),
        (
            "append: type missing",
            "POST",
            "/streams/e-2",
            json.to_vec(),
            br#"[{"data":{}}]"#,
            400,
            ce,
        ),
        (
            "append: type not text",
            "POST",
            "/streams/e-2",
            json.to_vec(),
            br#"[{"type":1}]"#,
            400,
            ce,
        ),
        (
            "append: type with NUL",
            "POST",
            "/streams/e-2",
            json.to_vec(),
            br#"[{"type":"a\u0000"}]"#,
            400,
            ce,
        ),
        (
            "append: id not a UUID",
            "POST",
            "/streams/e-2",
            json.to_vec(),
            br#"[{"type":"E","id":"x"}]"#,
            400,
            ce,
        ),
        (
            "append: body invalid UTF-8",
            "POST",
            "/streams/e-2",
            json.to_vec(),
            b"[{\"type\":\"\xff\"}]",
            400,
            ce,
        ),
        (
            "append: nested 10,000 deep",
            "POST",
            "/streams/e-2",
            json.to_vec(),
            &*Box::leak(
                format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))
                    .into_bytes()
                    .into_boxed_slice(),
            ),
            400,
            ce,
        ),
        (
            "append: body of the limit + 1",
            "POST",
            "/streams/e-2",
            json.to_vec(),
            &*Box::leak(big.into_boxed_slice()),
            413,
            "",
        ),
        (
            "append: expected -1",
            "POST",
            "/streams/e-2",
            vec![
                ("content-type", b"application/json"),
                ("factum-expected-revision", b"-1"),
            ],
            one,
            400,
            ce,
        ),
        (
            "append: expected empty",
            "POST",
            "/streams/e-2",
            vec![
                ("content-type", b"application/json"),
                ("factum-expected-revision", b""),
            ],
            one,
            400,
            ce,
        ),
        (
            "append: expected u64::MAX+1",
            "POST",
            "/streams/e-2",
            vec![
                ("content-type", b"application/json"),
                ("factum-expected-revision", b"18446744073709551616"),
            ],
            one,
            400,
            ce,
        ),
        (
            "append: expected i64::MAX+1",
            "POST",
            "/streams/edge-1",
            vec![
                ("content-type", b"application/json"),
                ("factum-expected-revision", b"9223372036854775808"),
            ],
            one,
            400,
            ce,
        ),
        (
            "append: expected not text",
            "POST",
            "/streams/e-2",
            vec![
                ("content-type", b"application/json"),
                ("factum-expected-revision", b"\xff"),
            ],
            one,
            400,
            ce,
        ),
        (
            "append: expected 0 (at 2)",
            "POST",
            "/streams/edge-1",
            vec![
                ("content-type", b"application/json"),
                ("factum-expected-revision", b"0"),
            ],
            one,
            409,
            "",
        ),
        (
            "append: expected no_stream (exists)",
            "POST",
            "/streams/edge-1",
            vec![
                ("content-type", b"application/json"),
                ("factum-expected-revision", b"no_stream"),
            ],
            one,
            409,
            "",
        ),
        (
            "append: expected in body, bad",
            "POST",
            "/streams/e-2",
            json.to_vec(),
            br#"{"expected_revision":"-7","events":[{"type":"E"}]}"#,
            400,
            ce,
        ),
        (
            "append: ES-EventType, bad ES-EventId",
            "POST",
            "/streams/e-2",
            vec![("es-eventtype", b"E"), ("es-eventid", b"nope")],
            b"{}",
            400,
            ce,
        ),
        (
            "append: ES-EventType empty",
            "POST",
            "/streams/e-2",
            vec![("es-eventtype", b"")],
            b"{}",
            400,
            ce,
        ),
        (
            "append: ES-ExpectedVersion -3",
            "POST",
            "/streams/e-2",
            vec![("es-eventtype", b"E"), ("es-expectedversion", b"-3")],
            b"{}",
            400,
            ce,
        ),
        (
            "append: ES-ExpectedVersion u64::MAX+1",
            "POST",
            "/streams/e-2",
            vec![
                ("es-eventtype", b"E"),
                ("es-expectedversion", b"18446744073709551616"),
            ],
            b"{}",
            400,
            ce,
        ),
        (
            "read: count -1",
            "GET",
            "/streams/edge-1?count=-1",
            vec![],
            b"",
            400,
            "",
        ),
        (
            "read: count u64::MAX+1",
            "GET",
            "/streams/edge-1?count=18446744073709551616",
            vec![],
            b"",
            400,
            "",
        ),
        (
            "read: from -1",
            "GET",
            "/streams/edge-1?from=-1",
            vec![],
            b"",
            400,
            ce,
        ),
        (
            "read: direction sideways",
            "GET",
            "/streams/edge-1?direction=sideways",
            vec![],
            b"",
            400,
            ce,
        ),
        (
            "read: stream invalid UTF-8",
            "GET",
            "/streams/e-%FF",
            vec![],
            b"",
            400,
            "",
        ),
        (
            "delete: $all",
            "DELETE",
            "/streams/$all",
            vec![],
            b"",
            400,
            "",
        ),
        (
            "delete: managed",
            "DELETE",
            "/streams/$persistentSubscriptionConfig?tombstone=true",
            vec![],
            b"",
            403,
            "",
        ),
        (
            "delete: tombstone not a bool",
            "DELETE",
            "/streams/edge-1?tombstone=maybe",
            vec![],
            b"",
            400,
            "",
        ),
        (
            "delete: expected 0 (at 2)",
            "DELETE",
            "/streams/edge-1",
            vec![("factum-expected-revision", b"0")],
            b"",
            409,
            "",
        ),
        (
            "delete: expected u64::MAX",
            "DELETE",
            "/streams/edge-1",
            vec![("factum-expected-revision", b"18446744073709551615")],
            b"",
            400,
            ce,
        ),
        (
            "tombstone: expected -1",
            "DELETE",
            "/streams/edge-1?tombstone=true",
            vec![("factum-expected-revision", b"-1")],
            b"",
            400,
            ce,
        ),
        (
            "metadata: not JSON",
            "PUT",
            "/streams/edge-1/metadata",
            json.to_vec(),
            b"{",
            400,
            "",
        ),
        (
            "metadata: $maxCount -1",
            "PUT",
            "/streams/edge-1/metadata",
            json.to_vec(),
            br#"{"$maxCount":-1}"#,
            400,
            "",
        ),
        (
            "metadata: $maxCount u64::MAX+1",
            "PUT",
            "/streams/edge-1/metadata",
            json.to_vec(),
            br#"{"$maxCount":18446744073709551616}"#,
            400,
            "",
        ),
        (
            "metadata: managed stream",
            "PUT",
            "/streams/$persistentSubscriptionConfig/metadata",
            json.to_vec(),
            br#"{"$maxCount":0}"#,
            403,
            "",
        ),
    ];
    let mut failures = Vec::new();
    for (name, method, path, headers, body, status, piece) in rows {
        let (got, text) = http(addr, method, path, &headers, body).await;
        let is_json = serde_json::from_str::<serde_json::Value>(&text).is_ok();
        if got != status || !text.contains(piece) || (got >= 400 && !is_json && got != 404) {
            failures.push(format!(
                "{name}: wanted {status} with {piece:?}, got {got} {text:?}"
            ));
        }
        let after = snapshot(&mut c).await;
        assert_eq!(after, before, "{name}: the store changed");
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let (ok, _) = http(addr, "POST", "/streams/e-2", json, one).await;
    assert_eq!(ok, 201);
}

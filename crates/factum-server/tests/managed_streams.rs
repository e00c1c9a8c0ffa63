//! Streams Factum manages (persistent-subscription configuration,
//! checkpoints, parked messages; the system projections' `$streams`,
//! `$category-…`, `$bc-…`) attacked over the wire as a hostile client
//! would: every write over gRPC (Append, BatchAppend, Delete, Tombstone,
//! `$$` metadata) and HTTP (POST, DELETE, PUT metadata) is refused with
//! KurrentDB's access-denied answer, reads are not, and afterwards
//! persistent subscriptions still work over the wire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use factum_engine::{Durability, Engine, EngineConfig};
use factum_proto::persistent as ps;
use factum_proto::persistent::persistent_subscriptions_client::PersistentSubscriptionsClient;
use factum_proto::shared;
use factum_proto::streams::streams_client::StreamsClient;
use factum_proto::streams::{
    append_req, batch_append_req, batch_append_resp, delete_req, read_req, read_resp,
    tombstone_req, AppendReq, BatchAppendReq, DeleteReq, ReadReq, TombstoneReq,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::Code;

const CONFIG: &str = "$persistentSubscriptionConfig";
const CHECKPOINT: &str = "$persistentsubscription-orders::g-checkpoint";
const PARKED: &str = "$persistentsubscription-orders::g-parked";

async fn start() -> (std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = factum_server::ServerConfig::new(addr);
    tokio::spawn(factum_server::serve(
        listener,
        Arc::new(engine),
        cfg,
        std::future::pending(),
    ));
    (addr, dir)
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
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
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn sid(name: &str) -> Option<shared::StreamIdentifier> {
    Some(shared::StreamIdentifier {
        stream_name: name.as_bytes().to_vec(),
    })
}

fn uuid() -> Option<shared::Uuid> {
    Some(shared::Uuid {
        value: Some(shared::uuid::Value::String(
            uuid::Uuid::new_v4().to_string(),
        )),
    })
}

fn proposed(event_type: &str, data: &[u8]) -> append_req::ProposedMessage {
    let mut md = HashMap::new();
    md.insert("type".to_owned(), event_type.to_owned());
    md.insert("content-type".to_owned(), "application/json".to_owned());
    append_req::ProposedMessage {
        id: uuid(),
        metadata: md,
        custom_metadata: vec![],
        data: data.to_vec(),
    }
}

async fn append(
    client: &mut StreamsClient<Channel>,
    stream: &str,
    event_type: &str,
    data: &[u8],
) -> Result<(), tonic::Status> {
    let msgs = vec![
        AppendReq {
            content: Some(append_req::Content::Options(append_req::Options {
                stream_identifier: sid(stream),
                expected_stream_revision: Some(append_req::options::ExpectedStreamRevision::Any(
                    shared::Empty {},
                )),
            })),
        },
        AppendReq {
            content: Some(append_req::Content::ProposedMessage(proposed(
                event_type, data,
            ))),
        },
    ];
    client
        .append(futures_util::stream::iter(msgs))
        .await
        .map(|_| ())
}

/// Events of a stream, read forwards over gRPC.
async fn read(client: &mut StreamsClient<Channel>, stream: &str) -> usize {
    use read_req::options::{self as ro, CountOption, FilterOption, StreamOption};
    let req = ReadReq {
        options: Some(read_req::Options {
            stream_option: Some(StreamOption::Stream(ro::StreamOptions {
                stream_identifier: sid(stream),
                revision_option: Some(ro::stream_options::RevisionOption::Start(shared::Empty {})),
            })),
            count_option: Some(CountOption::Count(1000)),
            filter_option: Some(FilterOption::NoFilter(shared::Empty {})),
            uuid_option: Some(ro::UuidOption {
                content: Some(ro::uuid_option::Content::Structured(shared::Empty {})),
            }),
            ..Default::default()
        }),
    };
    let mut stream = client.read(req).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(m) = stream.message().await.unwrap() {
        n += usize::from(matches!(m.content, Some(read_resp::Content::Event(_))));
    }
    n
}

#[track_caller]
fn denied(result: Result<impl std::fmt::Debug, tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    assert_eq!(
        status.metadata().get("exception").unwrap(),
        "access-denied",
        "{what}"
    );
    assert!(
        status.message().contains("managed by"),
        "{what}: {status:?}"
    );
}

/// Every client write to `stream` is refused as access-denied, naming it:
/// over HTTP the exact `DELETE …?tombstone=true` attack and every other
/// write route; over gRPC Tombstone, Delete, Append, `$$` metadata and
/// BatchAppend. Reading its metadata stays allowed.
async fn every_write_refused(
    addr: std::net::SocketAddr,
    streams: &mut StreamsClient<Channel>,
    stream: &str,
) {
    let metadata_stream = format!("$${stream}");
    for (method, path, body) in [
        ("DELETE", format!("/streams/{stream}?tombstone=true"), ""),
        ("DELETE", format!("/streams/{stream}"), ""),
        (
            "POST",
            format!("/streams/{stream}"),
            r#"[{"type":"$PersistentConfig","data":{}}]"#,
        ),
        (
            "PUT",
            format!("/streams/{stream}/metadata"),
            r#"{"$maxCount":0}"#,
        ),
        (
            "POST",
            format!("/streams/{metadata_stream}"),
            r#"[{"type":"$metadata","data":{"$maxCount":0}}]"#,
        ),
        (
            "PUT",
            format!("/streams/{metadata_stream}/metadata"),
            r#"{"$maxCount":0}"#,
        ),
    ] {
        let (code, text) = http(addr, method, &path, body).await;
        assert_eq!(code, 403, "{method} {path}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"], "access-denied", "{method} {path}: {text}");
        assert!(body["message"].as_str().unwrap().contains(stream), "{text}");
    }
    let (code, _) = http(addr, "GET", &format!("/streams/{stream}/metadata"), "").await;
    assert_eq!(code, 200, "reading {stream}'s metadata");

    denied(
        streams
            .tombstone(TombstoneReq {
                options: Some(tombstone_req::Options {
                    stream_identifier: sid(stream),
                    expected_stream_revision: Some(
                        tombstone_req::options::ExpectedStreamRevision::Any(shared::Empty {}),
                    ),
                }),
            })
            .await,
        &format!("tombstone {stream}"),
    );
    denied(
        streams
            .delete(DeleteReq {
                options: Some(delete_req::Options {
                    stream_identifier: sid(stream),
                    expected_stream_revision: Some(
                        delete_req::options::ExpectedStreamRevision::Any(shared::Empty {}),
                    ),
                }),
            })
            .await,
        &format!("delete {stream}"),
    );
    denied(
        append(streams, stream, "$PersistentConfig", b"{}").await,
        &format!("append to {stream}"),
    );
    denied(
        append(
            streams,
            &format!("$${stream}"),
            "$metadata",
            br#"{"$maxCount":0}"#,
        )
        .await,
        &format!("$maxCount 0 on {stream}"),
    );
    let batch = BatchAppendReq {
        correlation_id: uuid(),
        options: Some(batch_append_req::Options {
            stream_identifier: sid(stream),
            expected_stream_position: Some(batch_append_req::options::ExpectedStreamPosition::Any(
                (),
            )),
            deadline_option: None,
        }),
        proposed_messages: vec![{
            let p = proposed("$PersistentConfig", b"{}");
            batch_append_req::ProposedMessage {
                id: p.id,
                metadata: p.metadata,
                custom_metadata: p.custom_metadata,
                data: p.data,
            }
        }],
        is_final: true,
    };
    let mut answers = streams
        .batch_append(futures_util::stream::iter([batch]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(batch_append_resp::Result::Error(status)) = answer.result else {
        panic!("batch append to {stream} was not refused: {answer:?}");
    };
    assert_eq!(status.code, Code::PermissionDenied as i32, "{status:?}");
    assert!(
        status
            .details
            .as_ref()
            .is_some_and(|d| d.type_url.ends_with("event_store.client.AccessDenied")),
        "{status:?}"
    );
}

fn create_req(stream: &str, group: &str) -> ps::CreateReq {
    ps::CreateReq {
        options: Some(ps::GroupOptions {
            group_name: group.to_owned(),
            stream_option: Some(ps::group_options::StreamOption::Stream(ps::StreamOptions {
                stream_identifier: sid(stream),
                revision_option: Some(ps::stream_options::RevisionOption::Start(shared::Empty {})),
            })),
            settings: Some(ps::Settings {
                message_timeout: Some(ps::settings::MessageTimeout::MessageTimeoutMs(30_000)),
                checkpoint_after: Some(ps::settings::CheckpointAfter::CheckpointAfterMs(10)),
                max_retry_count: 10,
                min_checkpoint_count: 1,
                max_checkpoint_count: 1,
                live_buffer_size: 100,
                read_batch_size: 10,
                history_buffer_size: 100,
                consumer_strategy: "RoundRobin".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Connects to a group, receives `n` events, acks them (or nacks them
/// with Park), and answers their revisions.
async fn consume(
    client: &mut PersistentSubscriptionsClient<Channel>,
    stream: &str,
    group: &str,
    n: usize,
    park: bool,
) -> Vec<u64> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<ps::ReadReq>();
    tx.send(ps::ReadReq {
        content: Some(ps::read_req::Content::Options(ps::read_req::Options {
            stream_option: Some(ps::read_req::options::StreamOption::StreamIdentifier(
                sid(stream).unwrap(),
            )),
            group_name: group.to_owned(),
            buffer_size: 10,
            uuid_option: Some(ps::read_req::options::UuidOption {
                content: Some(ps::read_req::options::uuid_option::Content::String(
                    shared::Empty {},
                )),
            }),
        })),
    })
    .unwrap();
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut responses = client.read(requests).await.unwrap().into_inner();
    let mut revisions = Vec::new();
    while revisions.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .expect("the subscription goes on");
        let Some(ps::read_resp::Content::Event(e)) = m.content else {
            continue;
        };
        let event = e.event.unwrap();
        revisions.push(event.stream_revision);
        let ids = vec![event.id.unwrap()];
        let content = if park {
            ps::read_req::Content::Nack(ps::read_req::Nack {
                id: vec![],
                ids,
                action: ps::read_req::nack::Action::Park as i32,
                reason: "test".into(),
            })
        } else {
            ps::read_req::Content::Ack(ps::read_req::Ack { id: vec![], ids })
        };
        tx.send(ps::ReadReq {
            content: Some(content),
        })
        .unwrap();
    }
    // Give the acks time to arrive before the call is dropped.
    tokio::time::sleep(Duration::from_millis(100)).await;
    revisions
}

#[tokio::test]
async fn clients_cannot_write_the_streams_persistent_subscriptions_own() {
    let (addr, _dir) = start().await;
    let mut streams = StreamsClient::new(channel(addr).await);
    let mut subs = PersistentSubscriptionsClient::new(channel(addr).await);
    for _ in 0..3 {
        append(&mut streams, "orders", "Placed", b"{}")
            .await
            .unwrap();
    }
    subs.create(create_req("orders", "g")).await.unwrap();
    subs.create(create_req("orders", "parker")).await.unwrap();
    assert_eq!(consume(&mut subs, "orders", "g", 3, false).await, [0, 1, 2]);
    consume(&mut subs, "orders", "parker", 1, true).await;
    // The group's streams exist; reading them stays allowed.
    let config_events = read(&mut streams, CONFIG).await;
    assert!(config_events >= 2);
    for _ in 0..100 {
        if read(&mut streams, CHECKPOINT).await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(read(&mut streams, CHECKPOINT).await, 1);
    assert_eq!(
        read(
            &mut streams,
            "$persistentsubscription-orders::parker-parked"
        )
        .await,
        1
    );

    for stream in [CONFIG, CHECKPOINT, PARKED] {
        every_write_refused(addr, &mut streams, stream).await;
    }
    let (code, _) = http(addr, "GET", &format!("/streams/{CONFIG}"), "").await;
    assert_eq!(code, 200, "reading the configuration");

    // Nothing changed, and persistent subscriptions still work: the group
    // resumes, a new group is created and reads everything, and both
    // survive a restart of the subsystem.
    assert_eq!(read(&mut streams, CONFIG).await, config_events);
    for _ in 0..2 {
        append(&mut streams, "orders", "Placed", b"{}")
            .await
            .unwrap();
    }
    assert_eq!(consume(&mut subs, "orders", "g", 2, false).await, [3, 4]);
    subs.create(create_req("orders", "h")).await.unwrap();
    assert_eq!(
        consume(&mut subs, "orders", "h", 5, false).await,
        [0, 1, 2, 3, 4]
    );
    subs.restart_subsystem(shared::Empty {}).await.unwrap();
    let list = subs
        .list(ps::ListReq {
            options: Some(ps::list_req::Options {
                list_option: Some(ps::list_req::options::ListOption::ListAllSubscriptions(
                    shared::Empty {},
                )),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let mut groups: Vec<_> = list
        .subscriptions
        .iter()
        .map(|s| (s.group_name.clone(), s.status.clone()))
        .collect();
    groups.sort();
    assert_eq!(groups.len(), 3, "{groups:?}");
    assert!(
        groups
            .iter()
            .all(|(_, status)| !status.starts_with("Faulted")),
        "{groups:?}"
    );
}

#[tokio::test]
async fn a_damaged_checkpoint_is_reported_over_the_wire_and_takes_out_only_its_group() {
    use factum_core::{managed, EventData, EventStore, ExpectedRevision, StreamName};
    use factum_persistent::{GroupSettings, GroupSource, PersistentSubscriptions, StartFrom};
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::open_with(dir.path(), config).unwrap().0);
    // Two groups, then damage to one's checkpoint written through the store
    // (as only the subsystem, or damage, can).
    let subs = PersistentSubscriptions::start(engine.clone())
        .await
        .unwrap();
    let settings = GroupSettings {
        start_from: StartFrom::Start,
        ..Default::default()
    };
    for g in ["good", "bad"] {
        subs.create(GroupSource::Stream("orders".into()), g, settings.clone())
            .await
            .unwrap();
    }
    subs.shutdown().await;
    engine
        .append(
            managed::persistent_checkpoint_stream("orders", "bad").unwrap(),
            ExpectedRevision::Any,
            vec![EventData::json("$SubscriptionCheckpoint", &"garbage").unwrap()],
        )
        .await
        .unwrap();
    engine
        .append(
            StreamName::new("orders").unwrap(),
            ExpectedRevision::Any,
            vec![EventData::json("Placed", &1).unwrap()],
        )
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(factum_server::serve(
        listener,
        engine,
        factum_server::ServerConfig::new(addr),
        std::future::pending(),
    ));
    let mut subs = PersistentSubscriptionsClient::new(channel(addr).await);
    let info = |group: &str| ps::GetInfoReq {
        options: Some(ps::get_info_req::Options {
            stream_option: Some(ps::get_info_req::options::StreamOption::StreamIdentifier(
                sid("orders").unwrap(),
            )),
            group_name: group.to_owned(),
        }),
    };
    let bad = subs.get_info(info("bad")).await.unwrap().into_inner();
    let status = bad.subscription_info.unwrap().status;
    assert!(
        status.starts_with("Faulted: ") && status.contains("checkpoint"),
        "{status}"
    );
    let good = subs.get_info(info("good")).await.unwrap().into_inner();
    assert!(!good
        .subscription_info
        .unwrap()
        .status
        .starts_with("Faulted"));
    let (code, metrics) = http(addr, "GET", "/metrics", "").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("factum_persistent_faulted{source=\"orders\",group=\"good\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l
            .starts_with("factum_persistent_faulted{source=\"orders\",group=\"bad\",reason=\"")
            && l.ends_with("} 1")),
        "{metrics}"
    );
    // The good group delivers; connecting to the bad one is refused with
    // KurrentDB's persistent-subscription-failed.
    assert_eq!(consume(&mut subs, "orders", "good", 1, false).await, [0]);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<ps::ReadReq>();
    tx.send(ps::ReadReq {
        content: Some(ps::read_req::Content::Options(ps::read_req::Options {
            stream_option: Some(ps::read_req::options::StreamOption::StreamIdentifier(
                sid("orders").unwrap(),
            )),
            group_name: "bad".into(),
            buffer_size: 10,
            uuid_option: None,
        })),
    })
    .unwrap();
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let refused = match subs.read(requests).await {
        Err(status) => status,
        Ok(r) => r.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(
        refused.metadata().get("exception").unwrap(),
        "persistent-subscription-failed",
        "{refused:?}"
    );
}

/// The link-writing system projections' streams (`$streams`,
/// `$category-<c>`, `$bc-<id>`) are the server's (ADR 44): every client
/// write is refused, reads are not, and the projections go on writing them.
#[tokio::test]
async fn clients_cannot_write_the_system_projections_streams() {
    let (addr, _dir) = start().await;
    let mut streams = StreamsClient::new(channel(addr).await);
    let correlated = r#"[{"type":"Placed","data":{},"metadata":{"$correlationId":"c-1"}}]"#;
    let (code, text) = http(addr, "POST", "/streams/order-1", correlated).await;
    assert_eq!(code, 201, "{text}");
    for name in [
        "%24streams",
        "%24stream_by_category",
        "%24by_correlation_id",
    ] {
        let path = format!("/projection/{name}/command/enable");
        let (code, text) = http(addr, "POST", &path, "").await;
        assert_eq!(code, 200, "{text}");
    }
    let written = [
        ("$streams", "%24streams"),
        ("$category-order", "%24category-order"),
        ("$bc-c-1", "%24bc-c-1"),
    ];
    for (stream, _) in written {
        for _ in 0..250 {
            if read(&mut streams, stream).await > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(read(&mut streams, stream).await, 1, "{stream}");
    }
    for (stream, escaped) in written {
        every_write_refused(addr, &mut streams, stream).await;
        let (code, _) = http(addr, "GET", &format!("/streams/{escaped}"), "").await;
        assert_eq!(code, 200, "reading {stream}");
    }
    // Nothing changed, and the projections go on writing them.
    let (code, text) = http(addr, "POST", "/streams/order-2", correlated).await;
    assert_eq!(code, 201, "{text}");
    for (stream, _) in written {
        for _ in 0..250 {
            if read(&mut streams, stream).await > 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(read(&mut streams, stream).await, 2, "{stream}");
    }
}

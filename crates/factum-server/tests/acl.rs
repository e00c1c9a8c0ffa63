//! Stream ACLs (ADR 31): a matrix of users × streams × operations, each
//! cell asserted allowed or denied, over HTTP (every operation) and gRPC
//! (reads, appends, `$all`), then `$settings` defaults and an `$acl`
//! change taking effect at once (the cached ACLs are dropped).

use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::{basic, http, http_status, start_secure};

async fn start() -> (std::net::SocketAddr, tempfile::TempDir) {
    start_secure(false).await
}

const SECRET_ACL: &str =
    r#"{"$acl": {"$r": ["readers"], "$w": "alice", "$d": [], "$mr": ["alice"], "$mw": []}}"#;

const EVENT: &str = r#"[{"type":"OrderPlaced","data":{"n":1}}]"#;

/// Operations, each over HTTP: (name, method, path with `{s}`, body).
const OPERATIONS: &[(&str, &str, &str, &str)] = &[
    ("read", "GET", "/streams/{s}", ""),
    ("subscribe", "GET", "/streams/{s}/subscribe?from=start", ""),
    ("append", "POST", "/streams/{s}", EVENT),
    ("metadata-read", "GET", "/streams/{s}/metadata", ""),
    // The same `$acl` as set up, so the cells after this one see it.
    ("metadata-write", "PUT", "/streams/{s}/metadata", "{meta}"),
    ("delete", "DELETE", "/streams/{s}", ""),
];

#[tokio::test]
async fn the_acl_matrix() {
    let (addr, _dir) = start().await;
    for (login, groups) in [("alice", r#"["readers"]"#), ("bob", "[]")] {
        let body = format!(r#"{{"loginName":"{login}","password":"pw","groups":{groups}}}"#);
        assert_eq!(
            http_status(addr, "admin", "POST", "/users", &body).await,
            201
        );
    }
    // secret: readers read, alice writes and reads metadata, nobody but
    // admins deletes or changes metadata.
    assert_eq!(
        http_status(
            addr,
            "admin",
            "PUT",
            "/streams/secret-1/metadata",
            SECRET_ACL
        )
        .await,
        200
    );

    // (stream, operation) → who may: the expected matrix.
    let everyone = ["admin", "ops", "alice", "bob"];
    let admins = ["admin"].as_slice();
    let expect = |stream: &str, op: &str| -> Vec<&str> {
        match (stream, op) {
            ("orders-1", _) => everyone.to_vec(),
            ("secret-1", "read" | "subscribe") => vec!["admin", "alice"],
            ("secret-1", "append" | "metadata-read") => vec!["admin", "alice"],
            ("secret-1", _) => admins.to_vec(),
            // System streams: admins only by default.
            (_, _) => admins.to_vec(),
        }
    };
    let streams = [
        "orders-1",
        "secret-1",
        "$all",
        "$ce-orders",
        "$et-OrderPlaced",
        "$users",
        "$system-x",
    ];
    let mut cells = 0;
    let mut wrong = Vec::new();
    // Deletes last: they change the streams the other cells use.
    for (op, method, path, body) in OPERATIONS {
        for stream in streams {
            // `$all` and the derived streams take reads only; the users'
            // streams are managed (writes refused for everyone: ADR 16).
            let readonly = matches!(stream, "$all" | "$ce-orders" | "$et-OrderPlaced" | "$users");
            if readonly && !matches!(*op, "read" | "subscribe" | "metadata-read") {
                continue;
            }
            let path = path.replace("{s}", &stream.replace('$', "%24"));
            for login in everyone {
                // Deleting as admin would take the stream away from later users.
                if *op == "delete" && login == "admin" {
                    continue;
                }
                // secret-1 keeps its `$acl` for the cells after this one.
                let body = match (*body, stream) {
                    ("{meta}", "secret-1") => SECRET_ACL,
                    ("{meta}", _) => r#"{"$maxCount": 1000}"#,
                    (body, _) => body,
                };
                let status = http_status(addr, login, method, &path, body).await;
                let allowed = expect(stream, op).contains(&login);
                cells += 1;
                let denied = status == 403;
                if allowed == denied || status == 401 || status >= 500 {
                    wrong.push(format!(
                        "{login} {op} {stream}: {status} (expected {})",
                        if allowed { "allowed" } else { "denied" }
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {cells} cells wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    println!("ACL matrix: {cells} cells over HTTP");

    // /metrics: $ops and $admins.
    for (login, status) in [("admin", 200), ("ops", 200), ("alice", 403), ("bob", 403)] {
        assert_eq!(
            http_status(addr, login, "GET", "/metrics", "").await,
            status,
            "{login} /metrics"
        );
    }
    // Admin endpoints (backups): $ops and $admins; others never reach them.
    for (login, allowed) in [
        ("admin", true),
        ("ops", true),
        ("alice", false),
        ("bob", false),
    ] {
        let status = http_status(
            addr,
            login,
            "POST",
            "/admin/backup",
            r#"{"to": "/nonexistent"}"#,
        )
        .await;
        assert_eq!(status != 403, allowed, "{login} /admin/backup: {status}");
    }
}

#[tokio::test]
async fn settings_and_acl_changes_take_effect_at_once() {
    // 200 or 201 alike.
    let ok = |status: u16| {
        if (200..300).contains(&status) {
            200
        } else {
            status
        }
    };
    let (addr, _dir) = start().await;
    let body = r#"{"loginName":"bob","password":"pw","groups":["auditors"]}"#;
    assert_eq!(
        ok(http_status(addr, "admin", "POST", "/users", body).await),
        200
    );
    assert_eq!(
        ok(http_status(addr, "bob", "POST", "/streams/orders-1", EVENT).await),
        200
    );
    assert_eq!(
        ok(http_status(addr, "bob", "GET", "/streams/%24all", "").await),
        403
    );

    // `$settings` opens system streams to a group, closes user streams' writes.
    let settings = r#"[{"type":"$settings","data":{"$systemStreamAcl":{"$r":["auditors"]},"$userStreamAcl":{"$w":[]}}}]"#;
    assert_eq!(
        ok(http_status(addr, "bob", "POST", "/streams/%24settings", settings).await),
        403
    );
    assert_eq!(
        ok(http_status(addr, "admin", "POST", "/streams/%24settings", settings).await),
        200
    );
    assert_eq!(
        ok(http_status(addr, "bob", "GET", "/streams/%24all", "").await),
        200
    );
    assert_eq!(
        ok(http_status(addr, "bob", "POST", "/streams/orders-1", EVENT).await),
        403
    );
    assert_eq!(
        ok(http_status(addr, "bob", "GET", "/streams/orders-1", "").await),
        200,
        "$r not overridden"
    );

    // A stream's own `$acl` wins over the defaults, and changes at once.
    let open = r#"{"$acl": {"$w": "$all"}}"#;
    assert_eq!(
        ok(http_status(addr, "admin", "PUT", "/streams/orders-1/metadata", open).await),
        200
    );
    assert_eq!(
        ok(http_status(addr, "bob", "POST", "/streams/orders-1", EVENT).await),
        200
    );
    let closed = r#"{"$acl": {"$w": "alice"}}"#;
    assert_eq!(
        ok(http_status(addr, "admin", "PUT", "/streams/orders-1/metadata", closed).await),
        200
    );
    assert_eq!(
        ok(http_status(addr, "bob", "POST", "/streams/orders-1", EVENT).await),
        403
    );
}

/// gRPC reads run in their own task: the principal goes with them, and a
/// denial is KurrentDB's AccessDenied (PERMISSION_DENIED, `access-denied`).
#[tokio::test]
async fn grpc_reads_and_subscriptions_are_checked_too() {
    use factum_proto::shared::Empty;
    use factum_proto::streams::read_req::options::{self, AllOptions, StreamOptions};
    use factum_proto::streams::{read_req, streams_client::StreamsClient, ReadReq};

    let (addr, _dir) = start().await;
    let body = r#"{"loginName":"bob","password":"pw","groups":[]}"#;
    assert_eq!(
        http_status(addr, "admin", "POST", "/users", body).await,
        201
    );
    assert_eq!(
        http_status(addr, "admin", "POST", "/streams/orders-1", EVENT).await,
        201
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = StreamsClient::new(channel);
    let read = |stream: Option<&str>, subscribe: bool| ReadReq {
        options: Some(read_req::Options {
            stream_option: Some(match stream {
                Some(s) => options::StreamOption::Stream(StreamOptions {
                    stream_identifier: Some(factum_proto::shared::StreamIdentifier {
                        stream_name: s.as_bytes().to_vec(),
                    }),
                    revision_option: Some(options::stream_options::RevisionOption::Start(Empty {})),
                }),
                None => options::StreamOption::All(AllOptions {
                    all_option: Some(options::all_options::AllOption::Start(Empty {})),
                }),
            }),
            read_direction: 0,
            resolve_links: false,
            count_option: Some(if subscribe {
                options::CountOption::Subscription(options::SubscriptionOptions {})
            } else {
                options::CountOption::Count(10)
            }),
            filter_option: Some(options::FilterOption::NoFilter(Empty {})),
            uuid_option: Some(options::UuidOption {
                content: Some(options::uuid_option::Content::String(Empty {})),
            }),
            control_option: None,
        }),
    };
    let mut cells = 0;
    for (login, stream, subscribe, allowed) in [
        ("bob", Some("orders-1"), false, true),
        ("bob", Some("orders-1"), true, true),
        ("bob", None, false, false),
        ("bob", None, true, false),
        ("bob", Some("$ce-orders"), false, false),
        ("bob", Some("$user-admin"), false, false),
        ("admin", None, false, true),
        ("admin", None, true, true),
        ("admin", Some("$user-admin"), false, true),
    ] {
        let mut req = tonic::Request::new(read(stream, subscribe));
        req.metadata_mut()
            .insert("authorization", basic(login).parse().unwrap());
        let first = match client.read(req).await {
            Ok(resp) => resp.into_inner().message().await.map(|_| ()),
            Err(e) => Err(e),
        };
        cells += 1;
        match (allowed, first) {
            (true, Ok(())) => {}
            (false, Err(e)) => {
                assert_eq!(
                    e.code(),
                    tonic::Code::PermissionDenied,
                    "{login} {stream:?}"
                );
                assert_eq!(e.metadata().get("exception").unwrap(), "access-denied");
            }
            (allowed, got) => panic!(
                "{login} {stream:?} subscribe={subscribe}: expected allowed={allowed}, got {got:?}"
            ),
        }
    }
    println!("ACL matrix: {cells} cells over gRPC");
}

#[tokio::test]
async fn metrics_can_be_opened_to_scrapers() {
    let (addr, _dir) = start_secure(true).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
    // Everything else still needs credentials.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /streams/x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 401"));
}

/// A multi-stream append needs `$w` on every stream it writes and `$r` on
/// every stream it only checks; a refused one writes nothing.
#[tokio::test]
async fn multi_stream_appends_are_checked_on_every_stream() {
    let (addr, _dir) = start().await;
    for (login, groups) in [("alice", r#"["readers"]"#), ("bob", "[]")] {
        let body = format!(r#"{{"loginName":"{login}","password":"pw","groups":{groups}}}"#);
        assert_eq!(
            http_status(addr, "admin", "POST", "/users", &body).await,
            201
        );
    }
    assert_eq!(
        http_status(
            addr,
            "admin",
            "PUT",
            "/streams/secret-1/metadata",
            SECRET_ACL
        )
        .await,
        200
    );
    let write = |a: &str, b: &str| {
        format!(
            r#"{{"streams": [{{"stream": "{a}", "expected_revision": "any", "events": [{{"type": "T", "data": {{}}}}]}},
                             {{"stream": "{b}", "expected_revision": "any", "events": [{{"type": "T", "data": {{}}}}]}}]}}"#
        )
    };
    let check = |a: &str, b: &str| {
        format!(
            r#"{{"streams": [{{"stream": "{a}", "expected_revision": "any", "events": [{{"type": "T", "data": {{}}}}]}},
                             {{"stream": "{b}", "expected_revision": "any", "events": []}}]}}"#
        )
    };
    // bob may write orders-2 but not secret-1: nothing is written.
    let denied = http_status(
        addr,
        "bob",
        "POST",
        "/multi-append",
        &write("orders-2", "secret-1"),
    )
    .await;
    assert!(
        denied == 403 || denied == 401,
        "bob writing secret-1: {denied}"
    );
    assert_eq!(
        http_status(addr, "admin", "GET", "/streams/orders-2", "").await,
        404
    );
    // A system stream: admins only.
    let denied = http_status(
        addr,
        "bob",
        "POST",
        "/multi-append",
        &write("orders-3", "$system-y"),
    )
    .await;
    assert!(
        denied == 403 || denied == 401,
        "bob writing $system-y: {denied}"
    );
    // Checking a stream needs $r: bob has none on secret-1, alice has.
    let denied = http_status(
        addr,
        "bob",
        "POST",
        "/multi-append",
        &check("orders-4", "secret-1"),
    )
    .await;
    assert!(
        denied == 403 || denied == 401,
        "bob checking secret-1: {denied}"
    );
    assert_eq!(
        http_status(
            addr,
            "alice",
            "POST",
            "/multi-append",
            &check("orders-5", "secret-1")
        )
        .await,
        201
    );
    assert_eq!(
        http_status(
            addr,
            "alice",
            "POST",
            "/multi-append",
            &write("orders-6", "secret-1")
        )
        .await,
        201
    );
}

/// A server where bob (group `auditors`) may read `$ce-orders` and
/// `orders-1` but not `orders-2`, each holding one event.
async fn two_orders_one_closed_to_bob() -> (std::net::SocketAddr, tempfile::TempDir) {
    let (addr, dir) = start().await;
    let body = r#"{"loginName":"bob","password":"pw","groups":["auditors"]}"#;
    assert_eq!(
        http_status(addr, "admin", "POST", "/users", body).await,
        201
    );
    // `$ce-` is a system stream: open it to the auditors.
    let settings =
        r#"[{"type":"$settings","data":{"$systemStreamAcl":{"$r":["auditors","$admins"]}}}]"#;
    assert_eq!(
        http_status(addr, "admin", "POST", "/streams/%24settings", settings).await,
        201
    );
    for s in ["orders-1", "orders-2"] {
        let path = format!("/streams/{s}");
        assert_eq!(http_status(addr, "admin", "POST", &path, EVENT).await, 201);
    }
    let closed = r#"{"$acl": {"$r": "alice"}}"#;
    assert_eq!(
        http_status(addr, "admin", "PUT", "/streams/orders-2/metadata", closed).await,
        200
    );
    (addr, dir)
}

/// A link resolves only for a reader who may read its target stream
/// (which KurrentDB does not check): others get the bare link record.
#[tokio::test]
async fn links_resolve_only_to_streams_the_reader_may_read() {
    let (addr, _dir) = two_orders_one_closed_to_bob().await;

    let events = |body: &str| -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(body).expect(body);
        v["events"].as_array().cloned().unwrap_or_default()
    };
    let (status, body) = http(addr, "admin", "GET", "/streams/%24ce-orders", "").await;
    assert_eq!(status, 200, "{body}");
    let seen = events(&body);
    assert_eq!(seen.len(), 2, "{body}");
    assert!(seen.iter().all(|e| e["type"] == "OrderPlaced"), "{body}");

    let (status, body) = http(addr, "bob", "GET", "/streams/%24ce-orders", "").await;
    assert_eq!(status, 200, "{body}");
    let seen = events(&body);
    assert_eq!(seen.len(), 2, "{body}");
    assert_eq!(seen[0]["type"], "OrderPlaced", "{body}");
    assert_eq!(seen[0]["stream"], "orders-1", "{body}");
    assert_eq!(seen[1]["type"], "$>", "{body}");
    assert_eq!(seen[1]["stream"], "$ce-orders", "{body}");
    assert_eq!(seen[1]["revision"], 1, "{body}");
    let data = base64::engine::general_purpose::STANDARD.encode("0@orders-2");
    assert_eq!(seen[1]["data"], data.as_str(), "{body}");
    assert_eq!(
        http(addr, "bob", "GET", "/streams/orders-2", "").await.0,
        403,
        "the target itself stays closed"
    );
}

/// The same for a consumer group that resolves links: a delivery whose
/// target the connected consumer may not read comes unresolved.
#[tokio::test]
async fn consumer_groups_resolve_links_only_to_readable_targets() {
    use factum_proto::persistent as ps;
    use factum_proto::persistent::persistent_subscriptions_client::PersistentSubscriptionsClient;
    use factum_proto::shared;

    let (addr, _dir) = two_orders_one_closed_to_bob().await;

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = PersistentSubscriptionsClient::new(channel);
    let sid = || {
        Some(shared::StreamIdentifier {
            stream_name: b"$ce-orders".to_vec(),
        })
    };
    let mut create = tonic::Request::new(ps::CreateReq {
        options: Some(ps::GroupOptions {
            group_name: "g".to_owned(),
            stream_option: Some(ps::group_options::StreamOption::Stream(ps::StreamOptions {
                stream_identifier: sid(),
                revision_option: Some(ps::stream_options::RevisionOption::Start(shared::Empty {})),
            })),
            settings: Some(ps::Settings {
                resolve_links: true,
                message_timeout: Some(ps::settings::MessageTimeout::MessageTimeoutMs(30_000)),
                checkpoint_after: Some(ps::settings::CheckpointAfter::CheckpointAfterMs(1_000)),
                max_retry_count: 10,
                min_checkpoint_count: 1,
                max_checkpoint_count: 10,
                live_buffer_size: 100,
                read_batch_size: 10,
                history_buffer_size: 100,
                consumer_strategy: "RoundRobin".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    });
    create
        .metadata_mut()
        .insert("authorization", basic("admin").parse().unwrap());
    client.create(create).await.unwrap();

    // As bob, then as admin: (type, stream) of the two deliveries.
    let mut seen = Vec::new();
    for login in ["bob", "admin"] {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<ps::ReadReq>();
        tx.send(ps::ReadReq {
            content: Some(ps::read_req::Content::Options(ps::read_req::Options {
                stream_option: Some(ps::read_req::options::StreamOption::StreamIdentifier(
                    sid().unwrap(),
                )),
                group_name: "g".to_owned(),
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
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let mut req = tonic::Request::new(requests);
        req.metadata_mut()
            .insert("authorization", basic(login).parse().unwrap());
        let mut responses = client.read(req).await.unwrap().into_inner();
        let mut got = Vec::new();
        while got.len() < 2 {
            let m = tokio::time::timeout(Duration::from_secs(10), responses.message())
                .await
                .expect("a delivery within 10 s")
                .unwrap()
                .expect("the subscription goes on");
            if let Some(ps::read_resp::Content::Event(e)) = m.content {
                let ev = e.event.expect("an event");
                let stream = String::from_utf8(ev.stream_identifier.unwrap().stream_name).unwrap();
                got.push((ev.metadata["type"].clone(), stream, e.link.is_some()));
            }
        }
        // Not acked: the next consumer gets them again (retries).
        drop(tx);
        seen.push(got);
    }
    assert_eq!(
        seen[0],
        [
            ("OrderPlaced".to_owned(), "orders-1".to_owned(), true),
            ("$>".to_owned(), "$ce-orders".to_owned(), false)
        ],
        "bob"
    );
    assert!(
        seen[1]
            .iter()
            .all(|(t, _, link)| t == "OrderPlaced" && *link),
        "admin: {:?}",
        seen[1]
    );
}

/// Scavenges and node operations are `$ops`/`$admins` only, over HTTP and
/// the Operations gRPC service alike (ADR 33).
#[tokio::test]
async fn operations_are_for_ops_and_admins_only() {
    use factum_proto::operations::operations_client::OperationsClient;
    use factum_proto::operations::{start_scavenge_req, StartScavengeReq};

    let (addr, _dir) = start().await;
    let body = r#"{"loginName":"bob","password":"pw","groups":["auditors"]}"#;
    assert_eq!(
        http_status(addr, "admin", "POST", "/users", body).await,
        201
    );
    for path in [
        "/admin/scavenge?throttlePercent=100",
        "/admin/scavenge/current",
    ] {
        let method = if path.contains('?') { "POST" } else { "GET" };
        assert_eq!(
            http_status(addr, "bob", method, path, "").await,
            403,
            "{path}"
        );
        let ops = http_status(addr, "ops", method, path, "").await;
        assert!(ops != 401 && ops != 403, "{path}: ops got {ops}");
    }
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = OperationsClient::new(channel);
    let request = |login: &str| {
        let mut r = tonic::Request::new(StartScavengeReq {
            options: Some(start_scavenge_req::Options {
                thread_count: 1,
                start_from_chunk: 0,
            }),
        });
        r.metadata_mut()
            .insert("authorization", basic(login).parse().unwrap());
        r
    };
    let denied = client.start_scavenge(request("bob")).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    if let Err(e) = client.start_scavenge(request("ops")).await {
        assert!(
            !matches!(
                e.code(),
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            ),
            "ops: {e:?}"
        );
    }
}

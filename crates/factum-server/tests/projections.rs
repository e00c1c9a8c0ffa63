//! Projections on the wire: KurrentDB's HTTP routes (as curl uses them) and
//! the `Projections` gRPC service, over the embedded engine.

use std::sync::Arc;
use std::time::Duration;

use factum_engine::{Durability, Engine, EngineConfig};
use factum_proto::projections::projections_client::ProjectionsClient;
use factum_proto::projections::{
    create_req, statistics_req, CreateReq, DeleteReq, DisableReq, EnableReq, ResetReq, ResultReq,
    StateReq, StatisticsReq, UpdateReq,
};
use factum_proto::server_features::server_features_client::ServerFeaturesClient;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

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

async fn call(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
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

async fn eventually_json(addr: std::net::SocketAddr, path: &str, want: Value) {
    let mut last = String::new();
    for _ in 0..200 {
        let (code, body) = call(addr, "GET", path, "").await;
        if code == 200 && serde_json::from_str::<Value>(&body).ok() == Some(want.clone()) {
            return;
        }
        last = format!("{code} {body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{path}: wanted {want}, last {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes_as_curl_uses_them() {
    let (addr, _dir) = start().await;
    for i in 0..3 {
        let events = format!(r#"[{{"type":"Deposited","data":{{"amount":{i}}}}}]"#);
        let (code, _) = call(
            addr,
            "POST",
            &format!("/streams/account-{}", i % 2),
            &events,
        )
        .await;
        assert_eq!(code, 201);
    }
    let query = r#"fromCategory("account").foreachStream().when({
        $init: () => ({ total: 0 }),
        Deposited: (s, e) => { s.total += e.body.amount; return s }
    }).outputState()"#;
    let (code, body) = call(
        addr,
        "POST",
        "/projections/continuous?name=balances&emit=no&trackemittedstreams=no",
        query,
    )
    .await;
    assert_eq!(code, 201, "{body}");
    eventually_json(
        addr,
        "/projection/balances/state?partition=account-0",
        serde_json::json!({"total": 2}),
    )
    .await;
    eventually_json(
        addr,
        "/projection/balances/result?partition=account-1",
        serde_json::json!({"total": 1}),
    )
    .await;
    let (code, body) = call(addr, "GET", "/projection/balances/statistics", "").await;
    assert_eq!(code, 200);
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["projections"][0]["status"], "Running");
    assert_eq!(stats["projections"][0]["mode"], "Continuous");
    let (_, body) = call(addr, "GET", "/projections/any", "").await;
    let listed: Vec<String> = serde_json::from_str::<Value>(&body).unwrap()["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    // Ours and KurrentDB's five system projections.
    assert_eq!(
        listed,
        [
            "$by_category",
            "$by_correlation_id",
            "$by_event_type",
            "$stream_by_category",
            "$streams",
            "balances"
        ]
    );
    let (code, _) = call(addr, "POST", "/projection/balances/command/disable", "").await;
    assert_eq!(code, 200);
    let (_, body) = call(addr, "GET", "/projection/balances", "").await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["projections"][0]["status"],
        "Stopped"
    );
    // The stored streams are readable, and refuse clients' writes.
    let (code, body) = call(
        addr,
        "GET",
        "/streams/$projections-balances-account-0-checkpoint",
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = call(
        addr,
        "POST",
        "/streams/$projections-balances-checkpoint",
        r#"[{"type":"X","data":{}}]"#,
    )
    .await;
    assert_eq!(code, 403);
    let (code, _) = call(addr, "GET", "/projection/nope/state", "").await;
    assert_eq!(code, 404);
    let (code, body) = call(addr, "POST", "/projections/continuous?name=bad", "fromAll(").await;
    assert_eq!(code, 400, "{body}");
    let (code, _) = call(
        addr,
        "DELETE",
        "/projection/balances?deleteCheckpointStream=yes&deleteStateStream=yes",
        "",
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = call(addr, "GET", "/projection/balances/state", "").await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_service_create_update_enable_reset_state_delete() {
    let (addr, _dir) = start().await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let methods = ServerFeaturesClient::new(channel.clone())
        .get_supported_methods(factum_proto::shared::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(methods.methods.iter().any(|m| m.service_name
        == "event_store.client.projections.projections"
        && m.method_name == "create"));
    let (code, _) = call(
        addr,
        "POST",
        "/streams/order-1",
        r#"[{"type":"Placed","data":{"n":1}},{"type":"Placed","data":{"n":2}}]"#,
    )
    .await;
    assert_eq!(code, 201);
    let mut client = ProjectionsClient::new(channel);
    client
        .create(CreateReq {
            options: Some(create_req::Options {
                mode: Some(create_req::options::Mode::Continuous(create_req::options::Continuous {
                    name: "orders".into(),
                    emit_enabled: true,
                    track_emitted_streams: true,
                })),
                query: r#"fromStream("order-1").when({ $init: () => ({ n: 0 }), Placed: (s) => { s.n++; return s } })"#.into(),
                engine_version: 1,
                metadata: Vec::new(),
            }),
        })
        .await
        .unwrap();
    let state = |client: &mut ProjectionsClient<Channel>, name: &str| {
        let mut client = client.clone();
        let name = name.to_owned();
        async move {
            client
                .state(StateReq {
                    options: Some(factum_proto::projections::state_req::Options {
                        name,
                        partition: String::new(),
                    }),
                })
                .await
                .map(|r| r.into_inner().state)
        }
    };
    let n_is = |v: &Option<prost_types::Value>, n: f64| -> bool {
        use prost_types::value::Kind;
        match v.as_ref().and_then(|v| v.kind.as_ref()) {
            Some(Kind::StructValue(s)) => {
                matches!(s.fields.get("n").and_then(|f| f.kind.as_ref()), Some(Kind::NumberValue(x)) if *x == n)
            }
            _ => false,
        }
    };
    let mut ok = false;
    for _ in 0..200 {
        if n_is(&state(&mut client, "orders").await.unwrap(), 2.0) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ok, "state reached n = 2");
    // Update: count twice per event; reset replays with the new query.
    client
        .update(UpdateReq {
            options: Some(factum_proto::projections::update_req::Options {
                name: "orders".into(),
                query: r#"fromStream("order-1").when({ $init: () => ({ n: 0 }), Placed: (s) => { s.n += 2; return s } })"#.into(),
                emit_option: None,
                metadata: Vec::new(),
            }),
        })
        .await
        .unwrap();
    client
        .reset(ResetReq {
            options: Some(factum_proto::projections::reset_req::Options {
                name: "orders".into(),
                write_checkpoint: false,
            }),
        })
        .await
        .unwrap();
    let mut ok = false;
    for _ in 0..200 {
        if n_is(&state(&mut client, "orders").await.unwrap(), 4.0) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ok, "replayed with the new query");
    let result = client
        .result(ResultReq {
            options: Some(factum_proto::projections::result_req::Options {
                name: "orders".into(),
                partition: String::new(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .result;
    assert!(n_is(&result, 4.0));
    client
        .disable(DisableReq {
            options: Some(factum_proto::projections::disable_req::Options {
                name: "orders".into(),
                write_checkpoint: true,
            }),
        })
        .await
        .unwrap();
    let mut stats = client
        .statistics(StatisticsReq {
            options: Some(statistics_req::Options {
                mode: Some(statistics_req::options::Mode::Name("orders".into())),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let details = stats.message().await.unwrap().unwrap().details.unwrap();
    assert_eq!(
        (
            details.status.as_str(),
            details.mode.as_str(),
            details.name.as_str()
        ),
        ("Stopped", "Continuous", "orders")
    );
    client
        .enable(EnableReq {
            options: Some(factum_proto::projections::enable_req::Options {
                name: "orders".into(),
            }),
        })
        .await
        .unwrap();
    client
        .restart_subsystem(factum_proto::shared::Empty {})
        .await
        .unwrap();
    // Errors for unknown names and invalid queries.
    let err = state(&mut client, "nope").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = client
        .create(CreateReq {
            options: Some(create_req::Options {
                mode: Some(create_req::options::Mode::Continuous(
                    create_req::options::Continuous {
                        name: "bad".into(),
                        ..Default::default()
                    },
                )),
                query: "fromAll(".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // System projections are enabled and disabled like the others, but
    // their queries are the server's.
    client
        .enable(EnableReq {
            options: Some(factum_proto::projections::enable_req::Options {
                name: "$by_category".into(),
            }),
        })
        .await
        .unwrap();
    let err = client
        .update(UpdateReq {
            options: Some(factum_proto::projections::update_req::Options {
                name: "$streams".into(),
                query: "fromAll()".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    client
        .delete(DeleteReq {
            options: Some(factum_proto::projections::delete_req::Options {
                name: "orders".into(),
                delete_emitted_streams: true,
                delete_state_stream: true,
                delete_checkpoint_stream: true,
            }),
        })
        .await
        .unwrap();
    assert_eq!(
        state(&mut client, "orders").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
}

async fn events(addr: std::net::SocketAddr, stream: &str) -> Vec<Value> {
    let (code, body) = call(addr, "GET", &format!("/streams/{stream}?count=1000"), "").await;
    if code == 404 {
        return Vec::new();
    }
    assert_eq!(code, 200, "{stream}: {body}");
    serde_json::from_str::<Value>(&body).unwrap()["events"]
        .as_array()
        .unwrap()
        .clone()
}

/// (stream, revision, link stream) of each event read from `stream`.
async fn eventually_events(
    addr: std::net::SocketAddr,
    stream: &str,
    want: &[(&str, u64, Option<&str>)],
) -> Vec<Value> {
    let mut last = Vec::new();
    for _ in 0..400 {
        last = events(addr, stream).await;
        let got: Vec<(String, u64, Option<String>)> = last
            .iter()
            .map(|e| {
                (
                    e["stream"].as_str().unwrap().to_owned(),
                    e["revision"].as_u64().unwrap(),
                    e["link"]["stream"].as_str().map(str::to_owned),
                )
            })
            .collect();
        let wanted: Vec<(String, u64, Option<String>)> = want
            .iter()
            .map(|(s, r, l)| (s.to_string(), *r, l.map(str::to_owned)))
            .collect();
        if got == wanted {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{stream}: wanted {want:?}, last {last:?}");
}

async fn eventually_status(addr: std::net::SocketAddr, name: &str, want: &str) {
    let mut last = String::new();
    for _ in 0..400 {
        last = status(addr, name).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name}: wanted {want}, last {last}");
}

async fn status(addr: std::net::SocketAddr, name: &str) -> String {
    let (_, body) = call(addr, "GET", &format!("/projection/{name}"), "").await;
    serde_json::from_str::<Value>(&body).unwrap()["projections"][0]["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_projections_write_streams_bc_and_category_streams() {
    let (addr, _dir) = start().await;
    // As KurrentDB: the index-served two run, the other three start stopped.
    assert_eq!(status(addr, "%24by_category").await, "Running");
    assert_eq!(status(addr, "%24by_event_type").await, "Running");
    for name in [
        "%24streams",
        "%24stream_by_category",
        "%24by_correlation_id",
    ] {
        assert_eq!(status(addr, name).await, "Stopped", "{name}");
    }
    let correlated = |n: u32| {
        format!(r#"[{{"type":"Placed","data":{{"n":{n}}},"metadata":{{"$correlationId":"c-1"}}}}]"#)
    };
    for (stream, body) in [
        ("order-1", correlated(1)),
        ("order-1", correlated(2)),
        ("order-2", correlated(3)),
        ("invoice-1", r#"[{"type":"Billed","data":{}}]"#.to_owned()),
    ] {
        let (code, text) = call(addr, "POST", &format!("/streams/{stream}"), &body).await;
        assert_eq!(code, 201, "{text}");
    }
    for name in [
        "%24streams",
        "%24stream_by_category",
        "%24by_correlation_id",
    ] {
        let (code, body) = call(
            addr,
            "POST",
            &format!("/projection/{name}/command/enable"),
            "",
        )
        .await;
        assert_eq!(code, 200, "{body}");
        eventually_status(addr, name, "Running").await;
    }
    // `$streams`: a link to the first event of every stream, resolved.
    let first = eventually_events(
        addr,
        "%24streams",
        &[
            ("order-1", 0, Some("$streams")),
            ("order-2", 0, Some("$streams")),
            ("invoice-1", 0, Some("$streams")),
        ],
    )
    .await;
    assert_eq!(first[0]["type"], "Placed");
    assert_eq!(first[0]["link"]["revision"], 0);
    assert_eq!(first[2]["link"]["revision"], 2);
    // `$bc-<id>`: every event with that correlation id.
    let correlated = eventually_events(
        addr,
        "%24bc-c-1",
        &[
            ("order-1", 0, Some("$bc-c-1")),
            ("order-1", 1, Some("$bc-c-1")),
            ("order-2", 0, Some("$bc-c-1")),
        ],
    )
    .await;
    assert_eq!(correlated[1]["data"]["n"], 2);
    // `$category-<c>`: a stream reference (`$@`) per stream.
    let refs = eventually_events(
        addr,
        "%24category-order",
        &[("$category-order", 0, None), ("$category-order", 1, None)],
    )
    .await;
    assert_eq!(refs[0]["type"], "$@");
    // Its data is the stream's name (binary: base64 in JSON).
    assert_eq!(refs[1]["data_encoding"], "base64");
    assert_eq!(refs[1]["data"], "b3JkZXItMg==");

    // Disabled, it stops; enabled again, it goes on from its checkpoint:
    // every stream once.
    let (code, _) = call(addr, "POST", "/projection/%24streams/command/disable", "").await;
    assert_eq!(code, 200);
    assert_eq!(status(addr, "%24streams").await, "Stopped");
    let (code, _) = call(
        addr,
        "POST",
        "/streams/order-3",
        r#"[{"type":"Placed","data":{}}]"#,
    )
    .await;
    assert_eq!(code, 201);
    let (code, _) = call(addr, "POST", "/projection/%24streams/command/enable", "").await;
    assert_eq!(code, 200);
    eventually_events(
        addr,
        "%24streams",
        &[
            ("order-1", 0, Some("$streams")),
            ("order-2", 0, Some("$streams")),
            ("invoice-1", 0, Some("$streams")),
            ("order-3", 0, Some("$streams")),
        ],
    )
    .await;

    // A link whose target is gone reads as the stored link.
    let (code, _) = call(addr, "DELETE", "/streams/invoice-1", "").await;
    assert_eq!(code, 200);
    let after = events(addr, "%24streams").await;
    assert_eq!(after[2]["type"], "$>");
    assert_eq!(after[2]["stream"], "$streams");
    assert!(after[2]["link"].is_null());

    // Their definitions are the server's.
    let (code, _) = call(addr, "PUT", "/projection/%24streams/query", "fromAll()").await;
    assert_eq!(code, 400);
    let (code, _) = call(addr, "DELETE", "/projection/%24streams", "").await;
    assert_eq!(code, 400);
    let (code, _) = call(
        addr,
        "POST",
        "/projections/continuous?name=%24streams",
        "fromAll()",
    )
    .await;
    assert_eq!(code, 409);
}

//! A projection runs as the user who created it (issue 15, ADR 39): it
//! reads only what that user may read and writes only where that user may
//! write, with real users over HTTP and gRPC on a secure node. A projection
//! refused its source or an output faults with KurrentDB's reason; events
//! of a category whose streams the user may not read are passed over (the
//! link rule of ADR 31).

use std::time::Duration;

use factum_proto::projections::projections_client::ProjectionsClient;
use factum_proto::projections::{create_req, statistics_req, CreateReq, StatisticsReq};
use serde_json::Value;

mod common;

use common::{basic, http, start_secure};

async fn start() -> (std::net::SocketAddr, tempfile::TempDir) {
    start_secure(false).await
}

async fn ok(addr: std::net::SocketAddr, login: &str, method: &str, path: &str, body: &str) {
    let (code, text) = http(addr, login, method, path, body).await;
    assert!(
        (200..300).contains(&code),
        "{login} {method} {path}: {code} {text}"
    );
}

async fn append(addr: std::net::SocketAddr, stream: &str, n: usize) {
    for i in 0..n {
        let body = format!(r#"[{{"type":"Happened","data":{{"i":{i}}}}}]"#);
        ok(addr, "admin", "POST", &format!("/streams/{stream}"), &body).await;
    }
}

async fn create(addr: std::net::SocketAddr, login: &str, name: &str, query: &str, emit: bool) {
    let path = format!(
        "/projections/continuous?name={name}&emit={}&trackemittedstreams=no",
        if emit { "yes" } else { "no" }
    );
    ok(addr, login, "POST", &path, query).await;
}

/// The projection's statistics once it is no longer starting.
async fn settled(addr: std::net::SocketAddr, name: &str, want: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..400 {
        let (code, body) = http(
            addr,
            "admin",
            "GET",
            &format!("/projection/{name}/statistics"),
            "",
        )
        .await;
        if code == 200 {
            last = serde_json::from_str::<Value>(&body).unwrap()["projections"][0].clone();
            if last["status"] == want {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name}: wanted {want}, last {last}");
}

async fn state_is(addr: std::net::SocketAddr, name: &str, want: Value) {
    let mut last = String::new();
    for _ in 0..400 {
        let (code, body) = http(
            addr,
            "admin",
            "GET",
            &format!("/projection/{name}/state"),
            "",
        )
        .await;
        if code == 200 && serde_json::from_str::<Value>(&body).ok() == Some(want.clone()) {
            return;
        }
        last = format!("{code} {body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name}: wanted state {want}, last {last}");
}

const COUNT: &str = "$any: (s, e) => { s.n += 1; return s }";

fn counting(source: &str) -> String {
    format!("{source}.when({{ $init: () => ({{ n: 0 }}), {COUNT} }})")
}

/// alice and bob manage projections (`$ops`); `secret-1` is alice's alone.
async fn two_operators(addr: std::net::SocketAddr) {
    for login in ["alice", "bob"] {
        let body = format!(r#"{{"loginName":"{login}","password":"pw","groups":["$ops"]}}"#);
        ok(addr, "admin", "POST", "/users", &body).await;
    }
    let acl = r#"{"$acl": {"$r": "alice", "$w": "alice"}}"#;
    ok(addr, "admin", "PUT", "/streams/secret-1/metadata", acl).await;
    append(addr, "secret-1", 2).await;
    append(addr, "orders-1", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_reads_only_what_its_creator_may_read() {
    let (addr, _dir) = start().await;
    two_operators(addr).await;

    // `$all` is a system stream: admins only by default.
    create(addr, "bob", "bob-all", &counting("fromAll()"), false).await;
    let stats = settled(addr, "bob-all", "Faulted").await;
    let reason = stats["stateReason"].as_str().unwrap();
    assert!(
        reason.starts_with("Projection cannot read its source. Not authorized")
            && reason.contains("user 'bob'")
            && reason.contains("$all"),
        "{reason}"
    );
    create(addr, "admin", "admin-all", &counting("fromAll()"), false).await;
    state_is(addr, "admin-all", serde_json::json!({"n": 5})).await;

    // fromStreams needs $r on every stream.
    let both = counting("fromStreams(['orders-1', 'secret-1'])");
    create(addr, "bob", "bob-both", &both, false).await;
    let stats = settled(addr, "bob-both", "Faulted").await;
    assert!(
        stats["stateReason"]
            .as_str()
            .unwrap()
            .contains("may not read secret-1"),
        "{stats}"
    );
    create(addr, "alice", "alice-both", &both, false).await;
    state_is(addr, "alice-both", serde_json::json!({"n": 5})).await;

    // The query says who created it.
    let (_, body) = http(addr, "admin", "GET", "/projection/alice-both/query", "").await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["runAs"],
        "alice"
    );

    // An ACL taken away stops a running projection at its next events.
    let closed = r#"{"$acl": {"$r": "admin-only", "$w": "alice"}}"#;
    ok(addr, "admin", "PUT", "/streams/secret-1/metadata", closed).await;
    append(addr, "orders-1", 1).await;
    let stats = settled(addr, "alice-both", "Faulted").await;
    assert!(
        stats["stateReason"]
            .as_str()
            .unwrap()
            .contains("user 'alice' may not read secret-1"),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_category_passes_over_streams_its_creator_may_not_read() {
    let (addr, _dir) = start().await;
    two_operators(addr).await;
    append(addr, "secret-2", 4).await;
    // `$ce-` streams are system streams: opened to `$ops` for reading.
    let settings =
        r#"[{"type":"$settings","data":{"$systemStreamAcl":{"$r":["$ops","$admins"]}}}]"#;
    ok(addr, "admin", "POST", "/streams/%24settings", settings).await;
    let query = counting("fromCategory('secret')");
    create(addr, "alice", "alice-secrets", &query, false).await;
    create(addr, "bob", "bob-secrets", &query, false).await;
    state_is(addr, "alice-secrets", serde_json::json!({"n": 6})).await;
    // secret-1 (2 events) is alice's alone.
    state_is(addr, "bob-secrets", serde_json::json!({"n": 4})).await;
    settled(addr, "bob-secrets", "Running").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_writes_only_where_its_creator_may_write() {
    let (addr, _dir) = start().await;
    two_operators(addr).await;
    let copy_to = |target: &str| {
        format!("fromStream('orders-1').when({{ $any: (s, e) => {{ emit('{target}', 'Copied', {{ n: e.sequenceNumber }}) }} }})")
    };
    // bob may not write alice's stream: the projection faults, nothing is written.
    create(addr, "bob", "bob-copies", &copy_to("secret-1"), true).await;
    let stats = settled(addr, "bob-copies", "Faulted").await;
    let reason = stats["stateReason"].as_str().unwrap();
    assert!(
        reason.contains("Projection cannot write to stream secret-1. Not authorized")
            && reason.contains("user 'bob'"),
        "{reason}"
    );
    // alice may.
    create(addr, "alice", "alice-copies", &copy_to("secret-1"), true).await;
    let mut copied = 0;
    for _ in 0..400 {
        let (_, body) = http(addr, "admin", "GET", "/streams/secret-1", "").await;
        copied = body.matches("Copied").count();
        if copied == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(copied, 3, "alice's projection copied the three events");
    // A link is a write too; a system stream is admins' by default.
    let link = "fromStream('orders-1').when({ $any: (s, e) => { linkTo('$mine', e) } })";
    create(addr, "alice", "alice-links", link, true).await;
    let stats = settled(addr, "alice-links", "Faulted").await;
    assert!(
        stats["stateReason"]
            .as_str()
            .unwrap()
            .contains("cannot write to stream $mine"),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_grpc_the_creator_is_the_caller() {
    let (addr, _dir) = start().await;
    two_operators(addr).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ProjectionsClient::new(channel);
    let mut req = tonic::Request::new(CreateReq {
        options: Some(create_req::Options {
            mode: Some(create_req::options::Mode::Continuous(
                create_req::options::Continuous {
                    name: "grpc-secret".into(),
                    emit_enabled: false,
                    track_emitted_streams: false,
                },
            )),
            query: counting("fromStream('secret-1')"),
            engine_version: 1,
            ..Default::default()
        }),
    });
    req.metadata_mut()
        .insert("authorization", basic("bob").parse().unwrap());
    client.create(req).await.unwrap();
    let mut reason = String::new();
    for _ in 0..400 {
        let mut req = tonic::Request::new(StatisticsReq {
            options: Some(statistics_req::Options {
                mode: Some(statistics_req::options::Mode::Name("grpc-secret".into())),
            }),
        });
        req.metadata_mut()
            .insert("authorization", basic("bob").parse().unwrap());
        let mut stream = client.statistics(req).await.unwrap().into_inner();
        let details = stream.message().await.unwrap().unwrap().details.unwrap();
        if details.status == "Faulted" {
            reason = details.state_reason;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        reason.contains("Not authorized") && reason.contains("user 'bob' may not read secret-1"),
        "{reason}"
    );
}

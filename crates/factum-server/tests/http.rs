//! The HTTP/JSON API over the embedded engine, with plain HTTP/1.1 requests:
//! appends, paging, metadata, deletes, SSE tails, metrics, and an OpenAPI
//! document whose every path and method is actually routed.

use std::sync::Arc;
use std::time::Duration;

use factum_engine::{Durability, Engine, EngineConfig};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

async fn start() -> (std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = factum_server::ServerConfig::new(addr);
    cfg.size_probe = Some(Arc::new(|| Some(12345)));
    tokio::spawn(factum_server::serve(
        listener,
        Arc::new(engine),
        cfg,
        std::future::pending(),
    ));
    (addr, dir)
}

/// One request on a fresh connection: (status, body).
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req.push_str("content-type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
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

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

#[tokio::test]
async fn streams_metadata_deletes_and_metrics() {
    let (addr, _dir) = start().await;
    let events = r#"[{"type":"Opened","data":{"owner":"ann"}},{"type":"Deposited","data":{"amount":5},"metadata":{"by":"ui"}}]"#;
    let (code, body) = call(
        addr,
        "POST",
        "/streams/acct-1",
        &[("factum-expected-revision", "no-stream")],
        events,
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(json(&body)["revision"], 1);

    // Expected revision as a body field; a conflict is 409 with both sides.
    let with_field = r#"{"expected_revision":"0","events":[{"type":"X"}]}"#;
    let (code, body) = call(addr, "POST", "/streams/acct-1", &[], with_field).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(json(&body)["actual"], "1");

    let (code, body) = call(addr, "GET", "/streams/acct-1?count=1", &[], "").await;
    assert_eq!(code, 200);
    let page = json(&body);
    assert_eq!(page["events"][0]["data"]["owner"], "ann");
    assert_eq!(page["next"], 1);
    let (_, body) = call(addr, "GET", "/streams/acct-1?from=1&count=1", &[], "").await;
    assert_eq!(json(&body)["events"][0]["metadata"]["by"], "ui");
    let (_, body) = call(addr, "GET", "/streams/acct-1?direction=backwards", &[], "").await;
    assert_eq!(json(&body)["events"][0]["type"], "Deposited");
    let (_, body) = call(addr, "GET", "/streams/%24all", &[], "").await;
    assert_eq!(json(&body)["events"].as_array().unwrap().len(), 2);
    let (_, body) = call(addr, "GET", "/streams/%24ce-acct?count=5", &[], "").await;
    assert_eq!(json(&body)["events"][1]["link"]["stream"], "$ce-acct");

    let (code, _) = call(addr, "GET", "/streams/nope-1", &[], "").await;
    assert_eq!(code, 404);
    let (code, _) = call(addr, "GET", "/streams/acct-1?direction=sideways", &[], "").await;
    assert_eq!(code, 400);
    let (code, _) = call(addr, "POST", "/streams/acct-1", &[], "{not json").await;
    assert_eq!(code, 400);
    let (code, _) = call(addr, "POST", "/streams/%24all", &[], "[]").await;
    assert_eq!(code, 400);

    let (code, body) = call(
        addr,
        "PUT",
        "/streams/acct-1/metadata",
        &[],
        r#"{"$maxCount":1,"team":"ops"}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (_, body) = call(addr, "GET", "/streams/acct-1/metadata", &[], "").await;
    let md = json(&body);
    assert_eq!(
        (md["revision"].clone(), md["metadata"]["team"].clone()),
        (Value::from(0), Value::from("ops"))
    );
    let (_, body) = call(addr, "GET", "/streams/acct-1", &[], "").await;
    assert_eq!(json(&body)["events"].as_array().unwrap().len(), 1);

    let (code, _) = call(
        addr,
        "DELETE",
        "/streams/acct-1",
        &[("factum-expected-revision", "0")],
        "",
    )
    .await;
    assert_eq!(code, 409);
    let (code, _) = call(addr, "DELETE", "/streams/acct-1?tombstone=true", &[], "").await;
    assert_eq!(code, 200);
    let (code, _) = call(addr, "GET", "/streams/acct-1", &[], "").await;
    assert_eq!(code, 410);

    let (code, body) = call(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(code, 200);
    assert!(body.contains("factum_appended_events_total 3\n"), "{body}");
    assert!(body.contains("factum_store_bytes 12345\n"), "{body}");
    let (code, body) = call(addr, "GET", "/health", &[], "").await;
    assert_eq!(
        (code, json(&body)["ready"].clone()),
        (200, Value::Bool(true))
    );
}

#[tokio::test]
async fn live_tail_as_server_sent_events() {
    let (addr, _dir) = start().await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /streams/tail-1/subscribe?from=start HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(s).lines();
    let mut saw_caught_up = false;
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "event: caught-up" && !saw_caught_up {
                saw_caught_up = true;
                call(
                    addr,
                    "POST",
                    "/streams/tail-1",
                    &[],
                    r#"[{"type":"Live","data":{}}]"#,
                )
                .await;
            }
            if line.starts_with("data: ") && line.contains("\"Live\"") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(saw_caught_up && found);
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let (addr, _dir) = start().await;
    let (code, body) = call(addr, "GET", "/openapi.json", &[], "").await;
    assert_eq!(code, 200);
    let doc = json(&body);
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            if path.ends_with("/subscribe") {
                continue; // an endless stream: checked above
            }
            let concrete = path.replace("{stream}", "doc-1");
            let body = if method == "post" {
                "[]"
            } else if method == "put" {
                "{}"
            } else {
                ""
            };
            let (code, answer) = call(addr, &method.to_uppercase(), &concrete, &[], body).await;
            // A routed 404 is the API's own JSON error (the stream does
            // not exist); the router's own 404/405 have no such body.
            let routed = !matches!(code, 404 | 405) || answer.contains("\"error\"");
            assert!(routed, "{method} {path} answered {code}: {answer}");
        }
    }
    // Undocumented paths are not served.
    assert_eq!(call(addr, "GET", "/nothing-here", &[], "").await.0, 404);
}

#[tokio::test]
async fn single_event_appends_with_kurrentdb_headers() {
    let (addr, _dir) = start().await;
    let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
    // Binary data: any content type that is not JSON, type and id in headers.
    let headers = [
        ("content-type", "application/octet-stream"),
        ("ES-EventType", "Scanned"),
        ("ES-EventId", id),
        ("ES-ExpectedVersion", "-1"),
    ];
    let (code, body) = call(addr, "POST", "/streams/doc-1", &headers, "raw \u{1} bytes").await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(json(&body)["revision"], 0);
    // The same id again is an idempotent retry, not a second event.
    let (code, _) = call(addr, "POST", "/streams/doc-1", &headers, "raw \u{1} bytes").await;
    assert_eq!(code, 201);
    // A JSON body with ES-EventType is one event's JSON data, kept as sent.
    let (code, body) = call(
        addr,
        "POST",
        "/streams/doc-1",
        &[("ES-EventType", "Noted"), ("ES-ExpectedVersion", "0")],
        r#"{"note": "hi"}"#,
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (_, page) = call(addr, "GET", "/streams/doc-1", &[], "").await;
    let page = json(&page);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["id"], id);
    assert_eq!(events[0]["type"], "Scanned");
    assert_eq!(events[0]["content_type"], "application/octet-stream");
    // The CLI's shape (issue 14): the bytes in `data`, base64, and saying so.
    assert_eq!(events[0]["data"], "cmF3IAEgYnl0ZXM=");
    assert_eq!(events[0]["data_encoding"], "base64");
    assert_eq!(events[1]["type"], "Noted");
    assert_eq!(events[1]["data"]["note"], "hi");
    // Refused: a conflict, a body that is not JSON without a type, JSON
    // that does not parse, an unknown expected version.
    let conflict = [
        ("content-type", "application/octet-stream"),
        ("ES-EventType", "Scanned"),
        ("ES-ExpectedVersion", "-1"),
    ];
    let (code, _) = call(addr, "POST", "/streams/doc-1", &conflict, "x").await;
    assert_eq!(code, 409);
    let (code, body) = call(
        addr,
        "POST",
        "/streams/doc-2",
        &[("content-type", "application/octet-stream")],
        "x",
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("ES-EventType") || body.contains("es-eventtype"),
        "{body}"
    );
    let (code, _) = call(
        addr,
        "POST",
        "/streams/doc-2",
        &[("ES-EventType", "T")],
        "{nope",
    )
    .await;
    assert_eq!(code, 400);
    let bad = [
        ("content-type", "application/octet-stream"),
        ("ES-EventType", "T"),
        ("ES-ExpectedVersion", "-7"),
    ];
    let (code, _) = call(addr, "POST", "/streams/doc-2", &bad, "x").await;
    assert_eq!(code, 400);
}

/// ES-ExpectedVersion as KurrentDB defines it: -1 no stream, -2 any, -4
/// stream exists, `n ≥ 0` a revision up to `i64::MAX`. Other negative
/// numbers and numbers outside `i64` (`u64::MAX` included: HTTP carries the
/// signed number, not its two's complement) are 400 and write nothing; so
/// is Factum's own header with a revision above `i64::MAX`. Appends go on.
#[tokio::test]
async fn expected_version_header_at_the_edges() {
    let (addr, _dir) = start().await;
    async fn post(addr: std::net::SocketAddr, header: &str, value: &str) -> (u16, String) {
        let headers = [("ES-EventType", "Edge"), (header, value)];
        call(addr, "POST", "/streams/edge-1", &headers, "{}").await
    }
    let kurrentdb = "ES-ExpectedVersion";
    for (value, want) in [
        ("-4", 409),
        ("0", 409),
        ("-1", 201),
        ("-1", 409),
        ("9223372036854775807", 409),
        ("-4", 201),
        ("-2", 201),
        ("2", 201),
    ] {
        let (code, body) = post(addr, kurrentdb, value).await;
        assert_eq!(code, want, "{value}: {body}");
    }
    for value in [
        "9223372036854775808",
        "18446744073709551615",
        "-3",
        "-5",
        "-9223372036854775808",
        "-9223372036854775809",
        "1.5",
    ] {
        let (code, body) = post(addr, kurrentdb, value).await;
        assert_eq!(code, 400, "{value}: {body}");
        let message = json(&body)["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("out of range") || message.contains("signed 64-bit"),
            "{value}: {message}"
        );
    }
    let factum = factum_server::http::EXPECTED_HEADER;
    for value in ["9223372036854775808", "18446744073709551615"] {
        let (code, body) = post(addr, factum, value).await;
        assert_eq!(code, 400, "{value}: {body}");
        assert!(body.contains("out of range"), "{value}: {body}");
    }
    let (code, body) = post(addr, factum, "3").await;
    assert_eq!(code, 201, "{body}");
    let (_, page) = call(addr, "GET", "/streams/edge-1", &[], "").await;
    assert_eq!(json(&page)["events"].as_array().unwrap().len(), 5);
}

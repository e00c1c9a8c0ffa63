//! Crypto-shredding's `forget` on the wire (ADR 36): `$admins` only through
//! the authentication gate (ops and anonymous refused, over HTTP and
//! gRPC), the subject's personal fields erased on every later read with
//! the rest of the event unchanged, the audit event naming the admin; and
//! a server without a master key saying how to turn it on.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use factum_crypto::{FileKeyStore, SecretKey, Shredding};
use factum_engine::{Durability, Engine, EngineConfig};
use factum_proto::subjects::subjects_client::SubjectsClient;
use factum_proto::subjects::ForgetReq;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(shredding: bool) -> (std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
    let engine = Arc::new(engine);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = factum_server::ServerConfig::new(addr);
    cfg.users = Some(Default::default());
    if !shredding {
        tokio::spawn(factum_server::serve(
            listener,
            engine,
            cfg,
            std::future::pending(),
        ));
        return (addr, dir);
    }
    let keys = FileKeyStore::open(dir.path(), SecretKey::random().unwrap()).unwrap();
    let store = Shredding::new(engine, Arc::new(keys));
    let forgetting = store.clone();
    cfg.forget = Some(Arc::new(move |subject: String, by: String| {
        let store = forgetting.clone();
        Box::pin(async move {
            let done = store.forget(&subject, &by).await?;
            Ok(factum_server::Forgotten {
                subject: done.subject,
                had_key: done.had_key,
                audit_position: done.audit_position.0,
            })
        })
    }));
    tokio::spawn(factum_server::serve(
        listener,
        Arc::new(store),
        cfg,
        std::future::pending(),
    ));
    (addr, dir)
}

fn basic(login: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{login}:changeit"))
    )
}

/// One HTTP request: status and JSON body (`login` `None`: anonymous).
async fn http(
    addr: std::net::SocketAddr,
    login: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = login
        .map(|l| format!("authorization: {}\r\n", basic(l)))
        .unwrap_or_default();
    let r = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(r.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1).unwrap_or("0").parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // Chunked bodies: the JSON is the line that parses.
    let json = body
        .lines()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(Value::is_object)
        })
        .unwrap_or_else(|| Value::String(text.clone()));
    (status, json)
}

async fn wait_ready(addr: std::net::SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("server did not start");
}

fn grpc_request(login: Option<&str>, subject: &str) -> tonic::Request<ForgetReq> {
    let mut r = tonic::Request::new(ForgetReq {
        subject: subject.into(),
    });
    if let Some(login) = login {
        r.metadata_mut()
            .insert("authorization", basic(login).parse().unwrap());
    }
    r
}

#[tokio::test]
async fn only_admins_forget_and_reads_show_the_placeholder() {
    let (addr, _dir) = start(true).await;
    wait_ready(addr).await;
    let events = json!([{
        "type": "Registered",
        "data": {"email": "erin-9d2c@example.org", "plan": "gold"},
        "metadata": {"$subject": "customer-erin", "$personalFields": ["email"]}
    }, {
        "type": "Registered",
        "data": {"email": "finn-9d2c@example.org", "plan": "silver"},
        "metadata": {"$subject": "customer-finn", "$personalFields": ["email"]}
    }])
    .to_string();
    let (status, _) = http(addr, Some("admin"), "POST", "/streams/customers", &events).await;
    assert_eq!(status, 201);
    let (_, page) = http(addr, Some("admin"), "GET", "/streams/customers", "").await;
    assert_eq!(
        page["events"][0]["data"]["email"],
        json!("erin-9d2c@example.org"),
        "{page}"
    );

    // Ops and anonymous are refused, over HTTP and gRPC; nothing is forgotten.
    let (status, body) = http(
        addr,
        Some("ops"),
        "POST",
        "/subjects/customer-erin/forget",
        "",
    )
    .await;
    assert_eq!(
        (status, body["error"].clone()),
        (403, json!("access-denied")),
        "{body}"
    );
    let (status, _) = http(addr, None, "POST", "/subjects/customer-erin/forget", "").await;
    assert_eq!(status, 401);
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = SubjectsClient::new(channel);
    let refused = grpc
        .forget(grpc_request(Some("ops"), "customer-erin"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let (_, page) = http(addr, Some("admin"), "GET", "/streams/customers", "").await;
    assert_eq!(
        page["events"][0]["data"]["email"],
        json!("erin-9d2c@example.org")
    );

    // An admin over HTTP.
    let (status, body) = http(
        addr,
        Some("admin"),
        "POST",
        "/subjects/customer-erin/forget",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["had_key"], json!(true));
    let (_, page) = http(addr, Some("admin"), "GET", "/streams/customers", "").await;
    let erin = &page["events"][0];
    assert_eq!(
        erin["data"],
        json!({"email": null, "plan": "gold"}),
        "{page}"
    );
    assert_eq!(erin["metadata"]["$erased"], json!(true));
    assert_eq!(
        page["events"][1]["data"]["email"],
        json!("finn-9d2c@example.org")
    );

    // An admin over gRPC.
    let done = grpc
        .forget(grpc_request(Some("admin"), "customer-finn"))
        .await
        .unwrap()
        .into_inner();
    assert!(done.had_key);
    let (_, page) = http(addr, Some("admin"), "GET", "/streams/customers", "").await;
    assert_eq!(page["events"][1]["data"]["email"], Value::Null);

    // The audit trail: Factum's stream, readable, not writable by clients.
    let (_, audit) = http(
        addr,
        Some("admin"),
        "GET",
        "/streams/$subjects-forgotten",
        "",
    )
    .await;
    let first = &audit["events"][0]["data"];
    assert_eq!(
        (first["subject"].clone(), first["by"].clone()),
        (json!("customer-erin"), json!("admin"))
    );
    let (status, _) = http(
        addr,
        Some("admin"),
        "POST",
        "/streams/$subjects-forgotten",
        r#"[{"type":"x","data":{}}]"#,
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn without_a_master_key_forget_says_how_to_turn_it_on() {
    let (addr, _dir) = start(false).await;
    wait_ready(addr).await;
    let (status, body) = http(addr, Some("admin"), "POST", "/subjects/x/forget", "").await;
    assert_ne!(status, 200);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("--encryption-key-file"),
        "{body}"
    );
}

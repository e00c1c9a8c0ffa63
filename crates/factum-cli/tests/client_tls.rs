//! factum-client against a secure `factum serve --dev` (ADR 34): TLS
//! checked against the development CA, `admin:changeit` sent as Basic
//! credentials on every call, on every call path the client has (the
//! BatchAppend stream, Append for metadata, AppendRecords, Read as reads,
//! streamed `$all` and subscriptions, Delete); credentials refused or
//! missing, a server certificate from another CA, and plain text to a TLS
//! port all fail with the error that says so.

use std::process::Child;

use factum_client::Client;
use factum_core::{
    Error, EventData, EventStore, ExpectedRevision, MultiAppend, ReadAll, ReadStream,
    StreamMetadata, StreamName, StreamRevision, Subscribe, SubscriptionMessage, SubscriptionStart,
};
use futures_util::StreamExt;

mod common;

struct Server {
    child: Child,
    port: u16,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dev_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (child, port, ca) = common::serve_dev(&dir.path().join("store"));
    Server {
        child,
        port,
        ca,
        _dir: dir,
    }
}

impl Server {
    fn url(&self, userinfo: &str, query: &str) -> String {
        format!(
            "esdb://{userinfo}localhost:{}?tls=true&tlsCAFile={}{query}",
            self.port,
            self.ca.display()
        )
    }
}

fn event(data: &str) -> EventData {
    EventData::binary("Tested", data.as_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_path_works_over_tls_with_credentials() {
    let server = dev_server();
    let client = Client::connect(&server.url("admin:changeit@", ""))
        .await
        .unwrap();
    let order = StreamName::new("order-1").unwrap();

    // A live subscription first, so it sees the appends below.
    let mut live = client
        .subscribe(Subscribe::all(SubscriptionStart::End, None))
        .await
        .unwrap();

    // BatchAppend (the client's append path).
    let appended = client
        .append(order.clone(), ExpectedRevision::NoStream, vec![event("a")])
        .await
        .unwrap();
    assert_eq!(appended.revision, StreamRevision(0));
    // AppendRecords (multi-stream).
    let other = StreamName::new("order-2").unwrap();
    let multi = MultiAppend::new()
        .append(
            order.clone(),
            ExpectedRevision::Exact(StreamRevision(0)),
            [event("b")],
        )
        .append(other.clone(), ExpectedRevision::Any, [event("c")]);
    client.append_multi(multi).await.unwrap();
    // Append (metadata) and a read of `$$order-1`.
    client
        .set_stream_metadata(
            order.clone(),
            ExpectedRevision::Any,
            StreamMetadata {
                max_count: Some(100),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let meta = client.stream_metadata(order.clone()).await.unwrap();
    assert_eq!(meta.metadata.max_count, Some(100));
    // Read: a stream, and `$all` streamed.
    let read = client
        .read_stream(ReadStream::forwards(order.clone()))
        .await
        .unwrap();
    assert_eq!(read.len(), 2);
    let mut all = client
        .read_all_streaming(ReadAll::forwards())
        .await
        .unwrap();
    let mut ours = 0;
    while let Some(e) = all.next().await {
        if !e.unwrap().stream.as_str().starts_with('$') {
            ours += 1;
        }
    }
    assert_eq!(ours, 3, "order-1 twice, order-2 once");
    // The subscription delivered them.
    let mut delivered = 0;
    while delivered < 3 {
        match tokio::time::timeout(std::time::Duration::from_secs(10), live.next())
            .await
            .expect("the subscription delivers")
        {
            Some(Ok(SubscriptionMessage::Event(e))) if !e.stream.as_str().starts_with('$') => {
                delivered += 1
            }
            Some(Ok(_)) => {}
            other => panic!("subscription ended: {other:?}"),
        }
    }
    // Delete.
    client
        .delete_stream(other.clone(), ExpectedRevision::Any)
        .await
        .unwrap();
    assert!(matches!(
        client.read_stream(ReadStream::forwards(other)).await,
        Err(Error::StreamNotFound { .. } | Error::StreamDeleted { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_credentials_are_refused_without_retries() {
    let server = dev_server();
    let order = StreamName::new("order-1").unwrap();

    let anonymous = Client::connect(&server.url("", "")).await.unwrap();
    let denied = anonymous
        .append(order.clone(), ExpectedRevision::Any, vec![event("a")])
        .await;
    assert!(matches!(denied, Err(Error::AccessDenied(_))), "{denied:?}");
    let denied = anonymous
        .read_stream(ReadStream::forwards(order.clone()))
        .await;
    assert!(matches!(denied, Err(Error::AccessDenied(_))), "{denied:?}");

    let started = std::time::Instant::now();
    let wrong = Client::connect(&server.url("admin:wrong@", ""))
        .await
        .unwrap();
    let refused = wrong
        .append(order.clone(), ExpectedRevision::Any, vec![event("a")])
        .await;
    match refused {
        Err(Error::AccessDenied(why)) => assert!(why.contains("credentials refused"), "{why}"),
        other => panic!("expected the credentials refused, got {other:?}"),
    }
    // One refusal, not a retry loop (the client retries transient errors
    // for many seconds).
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // Another user with the default stream ACL: any authenticated user.
    let ops = Client::connect(&server.url("ops:changeit@", ""))
        .await
        .unwrap();
    ops.append(order.clone(), ExpectedRevision::Any, vec![event("b")])
        .await
        .unwrap();
    // But not `$all` (system streams: admins).
    let denied = ops.read_all(ReadAll::forwards().max_count(1)).await;
    assert!(matches!(denied, Err(Error::AccessDenied(_))), "{denied:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_certificate_is_checked() {
    let server = dev_server();
    // A CA the server's certificate does not chain to.
    let other = tempfile::tempdir().unwrap();
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(["certs", "create-ca", "--out"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let wrong_ca = other.path().join("ca.crt");
    assert!(wrong_ca.is_file());
    let url = format!(
        "esdb://admin:changeit@localhost:{}?tlsCAFile={}",
        server.port,
        wrong_ca.display()
    );
    match Client::connect(&url).await {
        Err(Error::Unavailable { message, .. }) => {
            assert!(message.contains("UnknownIssuer"), "{message}")
        }
        other => panic!("expected a refused certificate, got {other:?}"),
    }
    // tlsVerifyCert=false: encrypted, whoever answers.
    let unverified = Client::connect(&format!("{url}&tlsVerifyCert=false"))
        .await
        .unwrap();
    unverified
        .append(
            StreamName::new("s").unwrap(),
            ExpectedRevision::Any,
            vec![event("x")],
        )
        .await
        .unwrap();
    // Plain text to the TLS port: no answer that passes for gRPC.
    let plain = format!("esdb://admin:changeit@127.0.0.1:{}?tls=false", server.port);
    let failed = async {
        let client = Client::connect(&plain).await?;
        client.head_position().await
    };
    let failed = tokio::time::timeout(std::time::Duration::from_secs(30), failed)
        .await
        .expect("plain text to a TLS port fails, and in time");
    assert!(failed.is_err(), "{failed:?}");
}

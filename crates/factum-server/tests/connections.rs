//! The accept loop's limits over real sockets (ADR 19): connections beyond
//! the limit wait until one closes; HTTP/2 peers that stop answering pings
//! are dropped and their slot freed; HTTP/1 headers must arrive in time;
//! idle connections are closed, busy ones are not; HTTP/2 streams per
//! connection are capped; shutdown still drains.

use std::sync::Arc;
use std::time::Duration;

use factum_engine::{Durability, Engine, EngineConfig};
use factum_server::{ConnectionLimits, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

struct Running {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(limits: ConnectionLimits) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = ServerConfig::new(addr);
    cfg.connections = limits;
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

const LIVE: &[u8] = b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n";

/// Reads one `/health/live` answer (a keep-alive response of known shape).
async fn read_live(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).ends_with("live\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

/// True when the peer closes `s` (EOF or reset) within `within`; bytes it
/// sends first (an HTTP/2 GOAWAY, a 408) are read and ignored.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = vec![0u8; 4096];
    timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let server = start(ConnectionLimits {
        max_connections: 2,
        ..ConnectionLimits::default()
    })
    .await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    for s in [&mut first, &mut second] {
        s.write_all(LIVE).await.unwrap();
        assert!(read_live(s).await.starts_with("HTTP/1.1 200"));
    }
    // The third connects (the kernel's backlog) but is not served.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third.write_all(LIVE).await.unwrap();
    let mut buf = [0u8; 64];
    assert!(
        timeout(Duration::from_millis(700), third.read(&mut buf))
            .await
            .is_err(),
        "a connection beyond the limit was served"
    );
    // The open ones keep being served meanwhile.
    first.write_all(LIVE).await.unwrap();
    assert!(read_live(&mut first).await.starts_with("HTTP/1.1 200"));
    // One closes: the waiting one is accepted and answered.
    drop(second);
    let answer = timeout(Duration::from_secs(5), read_live(&mut third))
        .await
        .expect("the waiting connection is served once a slot frees");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// An HTTP/2 connection opened by hand that never answers anything.
async fn silent_http2_peer(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    s
}

/// An h2 client connection whose driver runs (so it answers pings).
async fn h2_client(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(conn))
}

async fn h2_get(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    path: &str,
) -> h2::client::ResponseFuture {
    let req = http::Request::get(format!("http://{addr}{path}"))
        .body(())
        .unwrap();
    let mut ready = send.clone().ready().await.unwrap();
    let (resp, _) = ready.send_request(req, true).unwrap();
    *send = ready;
    resp
}

#[tokio::test]
async fn http2_peers_that_stop_answering_pings_are_dropped_and_free_their_slot() {
    let server = start(ConnectionLimits {
        max_connections: 1,
        keepalive_interval: Duration::from_millis(200),
        keepalive_timeout: Duration::from_millis(300),
        // Long enough that only the pings can explain a close.
        idle_timeout: Duration::from_secs(60),
        ..ConnectionLimits::default()
    })
    .await;
    let started = Instant::now();
    let mut dead = silent_http2_peer(server.addr).await;
    assert!(
        closed_within(&mut dead, Duration::from_secs(5)).await,
        "a peer that never answers pings stays connected"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "closed too early: {took:?}"
    );

    // Its slot (the only one) is free again; a peer that answers pings
    // stays connected over many ping intervals and is served.
    let (mut send, conn) = h2_client(server.addr).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!conn.is_finished(), "a live peer was dropped");
    let resp = h2_get(&mut send, server.addr, "/health/live").await;
    let resp = timeout(Duration::from_secs(5), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn http1_headers_must_arrive_within_the_header_read_timeout() {
    let server = start(ConnectionLimits {
        header_read_timeout: Duration::from_millis(300),
        ..ConnectionLimits::default()
    })
    .await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /health/live HTTP/1.1\r\nhost:")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)).await,
        "a request whose headers never end holds its connection"
    );
    // Whole requests are served.
    let mut fine = TcpStream::connect(server.addr).await.unwrap();
    fine.write_all(LIVE).await.unwrap();
    assert!(read_live(&mut fine).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let server = start(ConnectionLimits {
        idle_timeout: Duration::from_millis(300),
        ..ConnectionLimits::default()
    })
    .await;
    // An HTTP/2 connection that made one request and then nothing.
    let (mut send, conn) = h2_client(server.addr).await;
    let resp = h2_get(&mut send, server.addr, "/health/live").await;
    assert_eq!(resp.await.unwrap().status(), 200);
    let closed = timeout(Duration::from_secs(5), conn).await;
    assert!(closed.is_ok(), "an idle HTTP/2 connection stays open");

    // A live tail is a request in flight for as long as it streams.
    let (mut send, conn) = h2_client(server.addr).await;
    let resp = h2_get(&mut send, server.addr, "/streams/idle-1/subscribe").await;
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !conn.is_finished(),
        "a connection with a live tail was closed as idle"
    );
    // Once the tail ends, the connection is idle and closes.
    drop(resp);
    let closed = timeout(Duration::from_secs(5), conn).await;
    assert!(
        closed.is_ok(),
        "the connection stayed open after its tail ended"
    );
}

#[tokio::test]
async fn http2_streams_per_connection_are_capped() {
    let server = start(ConnectionLimits {
        max_concurrent_streams: 2,
        ..ConnectionLimits::default()
    })
    .await;
    let (mut send, _conn) = h2_client(server.addr).await;
    // Learn the server's settings before opening streams.
    let warm = h2_get(&mut send, server.addr, "/health/live").await;
    assert_eq!(warm.await.unwrap().status(), 200);
    let first = h2_get(&mut send, server.addr, "/streams/cap-1/subscribe").await;
    let second = h2_get(&mut send, server.addr, "/streams/cap-2/subscribe").await;
    let first = first.await.unwrap();
    let _second = second.await.unwrap();
    // A third stream is held back by the client until one ends.
    let third = h2_get(&mut send, server.addr, "/health/live").await;
    tokio::pin!(third);
    assert!(
        timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "a stream beyond the server's limit was answered"
    );
    drop(first);
    let third = timeout(Duration::from_secs(5), third)
        .await
        .expect("the third stream runs once one ends")
        .unwrap();
    assert_eq!(third.status(), 200);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_returns() {
    let mut server = start(ConnectionLimits::default()).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(LIVE).await.unwrap();
    read_live(&mut idle).await;
    let (_send, conn) = h2_client(server.addr).await;
    let _ = server.stop.take().unwrap().send(());
    timeout(Duration::from_secs(5), &mut server.task)
        .await
        .expect("serve returns with idle connections open")
        .unwrap()
        .unwrap();
    assert!(closed_within(&mut idle, Duration::from_secs(1)).await);
    assert!(timeout(Duration::from_secs(1), conn).await.is_ok());
}

//! What the tests of a secure node share (`acl.rs`, `projections_run_as.rs`):
//! a server over a fresh engine with users required (`admin` and `ops`
//! created on first start, password `changeit`), Basic credentials for
//! them and for test users (password `pw`), and one HTTP/1.1 request as a
//! user on a fresh connection.
//!
//! Each test binary that declares `mod common;` uses only some of these.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use factum_engine::{Durability, Engine, EngineConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A secure node over a fresh engine; `metrics_anonymous` opens `/metrics`
/// to scrapers without credentials.
pub async fn start_secure(metrics_anonymous: bool) -> (SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = factum_server::ServerConfig::new(addr);
    cfg.users = Some(Default::default());
    cfg.metrics_anonymous = metrics_anonymous;
    tokio::spawn(factum_server::serve(
        listener,
        Arc::new(engine),
        cfg,
        std::future::pending(),
    ));
    (addr, dir)
}

/// `authorization: Basic …` for `login`: the built-in users' default
/// password, `pw` for the users tests create.
pub fn basic(login: &str) -> String {
    let password = match login {
        "admin" | "ops" => "changeit",
        _ => "pw",
    };
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{login}:{password}"))
    )
}

fn request(login: &str, method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\nauthorization: {}\r\ncontent-length: {}\r\n\r\n{body}",
        basic(login),
        body.len()
    )
}

/// One HTTP request as `login`: its status, from the first part of the
/// answer (so an SSE tail, which never ends, answers too).
pub async fn http_status(
    addr: SocketAddr,
    login: &str,
    method: &str,
    path: &str,
    body: &str,
) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request(login, method, path, body).as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ').nth(1).unwrap_or("0").parse().unwrap()
}

/// One HTTP request as `login`: its status and whole body.
pub async fn http(
    addr: SocketAddr,
    login: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request(login, method, path, body).as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).unwrap_or("0").parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

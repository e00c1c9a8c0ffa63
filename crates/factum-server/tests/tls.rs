//! TLS on the one port (ADR 30): HTTPS and gRPC over the same listener with
//! ALPN, and every way a handshake must fail (a CA the client does not
//! trust, an expired certificate, a host name the certificate does not
//! name, a client certificate from another CA, plain text, silence), and
//! certificates reloaded when their files change.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use factum_engine::{Durability, Engine, EngineConfig};
use factum_server::tls::{Reloading, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A test CA: its PEM and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// A leaf certificate signed by `ca` for `names`, valid from `from` days
/// to `to` days from now: (certificate PEM, key PEM).
fn leaf(ca: &Ca, cn: &str, names: &[&str], from: i64, to: i64) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from);
    params.not_after = now + time::Duration::days(to);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn node(ca: &Ca) -> (String, String) {
    leaf(ca, "factum-node", &["localhost", "127.0.0.1"], -1, 30)
}

/// Writes the node's files into `dir`.
fn write_files(dir: &Path, (cert, key): &(String, String), client_ca: Option<&Ca>) -> TlsFiles {
    std::fs::write(dir.join("node.crt"), cert).unwrap();
    std::fs::write(dir.join("node.key"), key).unwrap();
    let client_ca = client_ca.map(|ca| {
        std::fs::write(dir.join("ca.crt"), &ca.pem).unwrap();
        dir.join("ca.crt")
    });
    TlsFiles {
        cert: dir.join("node.crt"),
        key: dir.join("node.key"),
        client_ca,
    }
}

struct Server {
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start(files: TlsFiles, handshake_timeout: Duration) -> Server {
    start_with(files, handshake_timeout, false).await
}

async fn start_with(files: TlsFiles, handshake_timeout: Duration, users: bool) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = factum_server::ServerConfig::new(addr);
    cfg.tls = Some(Arc::new(Reloading::new(files).unwrap()));
    cfg.connections.tls_handshake_timeout = handshake_timeout;
    if users {
        cfg.users = Some(Default::default());
    }
    tokio::spawn(factum_server::serve(
        listener,
        Arc::new(engine),
        cfg,
        std::future::pending(),
    ));
    Server { addr, _dir: dir }
}

/// A client trusting `trusted`, offering `alpn`, with an optional client
/// certificate.
fn client(
    trusted: &Ca,
    alpn: &[&[u8]],
    identity: Option<&(String, String)>,
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(trusted.pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(factum_server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(
    server: &Server,
    connector: &tokio_rustls::TlsConnector,
    name: &str,
) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(server.addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    // TLS 1.3 clients learn that the server refused their certificate only
    // on their first read after the handshake.
    tls.write_all(b"").await?;
    Ok(tls)
}

/// `GET /health` over HTTP/1.1: the status line.
async fn health(tls: Tls) -> String {
    get(tls, "/health", None).await
}

/// `GET path` over HTTP/1.1, with an optional `authorization`: the status line.
async fn get(mut tls: Tls, path: &str, authorization: Option<&str>) -> String {
    let auth = authorization
        .map(|a| format!("authorization: {a}\r\n"))
        .unwrap_or_default();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n{auth}\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    text.lines().next().unwrap_or("").to_owned()
}

fn refusal(e: std::io::Error) -> String {
    format!("{e:?}")
}

#[tokio::test]
async fn https_and_grpc_share_the_port_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("CA");
    let server = start(
        write_files(dir.path(), &node(&ca), None),
        Duration::from_secs(10),
    )
    .await;

    let tls = connect(&server, &client(&ca, &[b"http/1.1"], None), "localhost")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        health(tls).await,
        "HTTP/1.1 200 OK",
        "/health without credentials"
    );

    // gRPC: ServerFeatures over HTTP/2 on the same port, by IP address too.
    let tls = connect(
        &server,
        &client(&ca, &[b"h2", b"http/1.1"], None),
        "127.0.0.1",
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(
        "https://localhost/event_store.client.server_features.ServerFeatures/GetSupportedMethods",
    )
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (resp, mut body) = h2.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut len = 0;
    while let Some(chunk) = body.data().await {
        len += chunk.unwrap().len();
    }
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert!(len > 5, "a list of methods came back");
}

#[tokio::test]
async fn handshakes_fail_for_a_wrong_ca_an_expired_certificate_and_a_wrong_name() {
    let dir = tempfile::tempdir().unwrap();
    let (good, other) = (ca("good"), ca("other"));
    let server = start(
        write_files(dir.path(), &node(&good), None),
        Duration::from_secs(10),
    )
    .await;
    let e = connect(&server, &client(&other, &[b"h2"], None), "localhost")
        .await
        .unwrap_err();
    assert!(refusal(e).contains("UnknownIssuer"));
    let e = connect(&server, &client(&good, &[b"h2"], None), "other.example")
        .await
        .unwrap_err();
    assert!(refusal(e).contains("NotValidForName"));

    let dir = tempfile::tempdir().unwrap();
    let expired = leaf(&good, "factum-node", &["localhost"], -10, -1);
    let server = start(
        write_files(dir.path(), &expired, None),
        Duration::from_secs(10),
    )
    .await;
    let e = connect(&server, &client(&good, &[b"h2"], None), "localhost")
        .await
        .unwrap_err();
    assert!(
        refusal(e).contains("Expired"),
        "expired certificate refused"
    );
}

#[tokio::test]
async fn client_certificates_must_chain_to_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, stranger) = (ca("CA"), ca("stranger"));
    let server = start(
        write_files(dir.path(), &node(&ca), Some(&ca)),
        Duration::from_secs(10),
    )
    .await;
    let ours = leaf(&ca, "admin", &[], -1, 1);
    let tls = connect(
        &server,
        &client(&ca, &[b"http/1.1"], Some(&ours)),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(health(tls).await, "HTTP/1.1 200 OK");
    // Certificates stay optional: credentials authenticate instead.
    let tls = connect(&server, &client(&ca, &[b"http/1.1"], None), "localhost")
        .await
        .unwrap();
    assert_eq!(health(tls).await, "HTTP/1.1 200 OK");
    let theirs = leaf(&stranger, "admin", &[], -1, 1);
    let refused = async {
        let mut tls = connect(
            &server,
            &client(&ca, &[b"http/1.1"], Some(&theirs)),
            "localhost",
        )
        .await?;
        tls.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await?;
        let mut buf = [0u8; 64];
        tls.read(&mut buf).await
    }
    .await;
    assert!(
        refused.is_err(),
        "a client certificate from another CA is refused: {refused:?}"
    );
}

#[tokio::test]
async fn certificates_are_reloaded_when_their_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (ca("first"), ca("second"));
    let files = write_files(dir.path(), &node(&first), None);
    let server = start(files, Duration::from_secs(10)).await;
    let tls = connect(&server, &client(&first, &[b"http/1.1"], None), "localhost")
        .await
        .unwrap();
    assert_eq!(health(tls).await, "HTTP/1.1 200 OK");

    // A half-written replacement (a certificate without its key yet) keeps
    // the old certificates in service.
    tokio::time::sleep(factum_server::tls::RECHECK + Duration::from_millis(100)).await;
    let replacement = node(&second);
    std::fs::write(dir.path().join("node.crt"), &replacement.0).unwrap();
    let tls = connect(&server, &client(&first, &[b"http/1.1"], None), "localhost")
        .await
        .unwrap();
    assert_eq!(health(tls).await, "HTTP/1.1 200 OK");

    tokio::time::sleep(factum_server::tls::RECHECK + Duration::from_millis(100)).await;
    std::fs::write(dir.path().join("node.key"), &replacement.1).unwrap();
    let mut served = None;
    for _ in 0..40 {
        if let Ok(tls) = connect(&server, &client(&second, &[b"http/1.1"], None), "localhost").await
        {
            served = Some(health(tls).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        served.as_deref(),
        Some("HTTP/1.1 200 OK"),
        "the new certificate is served"
    );
    assert!(
        connect(&server, &client(&first, &[b"http/1.1"], None), "localhost")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn plain_text_and_silent_peers_are_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("CA");
    let server = start(
        write_files(dir.path(), &node(&ca), None),
        Duration::from_millis(300),
    )
    .await;
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "plain HTTP on the TLS port is closed");
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut [0u8; 16])).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn bad_files_are_startup_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("CA");
    let files = write_files(dir.path(), &node(&ca), None);
    let (_, other_key) = node(&ca);
    std::fs::write(&files.key, other_key).unwrap();
    let e = Reloading::new(files.clone()).unwrap_err().to_string();
    assert!(e.contains("node.crt") && e.contains("node.key"), "{e}");
    std::fs::write(&files.cert, "not a certificate").unwrap();
    let e = Reloading::new(files).unwrap_err().to_string();
    assert!(e.contains("no CERTIFICATE"), "{e}");
}

/// A client certificate authenticates the user its subject CN names
/// (requests without credentials); credentials, when sent, decide.
#[tokio::test]
async fn a_client_certificate_names_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("CA");
    let files = write_files(dir.path(), &node(&ca), Some(&ca));
    let server = start_with(files, Duration::from_secs(10), true).await;
    let as_cert = |cn: &str| {
        let identity = leaf(&ca, cn, &[], -1, 1);
        client(&ca, &[b"http/1.1"], Some(&identity))
    };
    let all = "/streams/%24all";
    // The server creates its users before it accepts (retry until then).
    let mut status = String::new();
    for _ in 0..50 {
        let tls = connect(&server, &as_cert("admin"), "localhost")
            .await
            .unwrap();
        status = get(tls, all, None).await;
        if status.contains("200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "HTTP/1.1 200 OK", "admin by certificate reads $all");
    let tls = connect(&server, &as_cert("ops"), "localhost")
        .await
        .unwrap();
    assert_eq!(
        get(tls, all, None).await,
        "HTTP/1.1 403 Forbidden",
        "ops is not an admin"
    );
    // Disabling the user takes effect at once (its cached identity is dropped).
    let mut tls = connect(&server, &as_cert("admin"), "localhost")
        .await
        .unwrap();
    tls.write_all(
        b"POST /users/ops/command/disable HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).await.unwrap();
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
    let tls = connect(&server, &as_cert("ops"), "localhost")
        .await
        .unwrap();
    assert_eq!(
        get(tls, all, None).await,
        "HTTP/1.1 401 Unauthorized",
        "ops is disabled"
    );
    let tls = connect(&server, &as_cert("ghost"), "localhost")
        .await
        .unwrap();
    assert_eq!(
        get(tls, all, None).await,
        "HTTP/1.1 401 Unauthorized",
        "no such user"
    );
    let tls = connect(&server, &client(&ca, &[b"http/1.1"], None), "localhost")
        .await
        .unwrap();
    assert_eq!(
        get(tls, all, None).await,
        "HTTP/1.1 401 Unauthorized",
        "no certificate, no credentials"
    );
    // admin:wrong with admin's certificate: the credentials are refused.
    let tls = connect(&server, &as_cert("admin"), "localhost")
        .await
        .unwrap();
    assert_eq!(
        get(tls, all, Some("Basic YWRtaW46d3Jvbmc=")).await,
        "HTTP/1.1 401 Unauthorized"
    );
}

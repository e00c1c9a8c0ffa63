//! Bearer tokens (ADR 34): JWTs signed by keys of a JWKS file, through the
//! one authentication gate, over gRPC and HTTP alike. A valid token's user
//! and groups are what the stream ACLs see; an expired token, a wrong
//! signature, issuer or audience, a future `nbf`, an unknown `kid`, an HMAC
//! token and garbage are all unauthenticated; the file is reloaded when it
//! changes (a key taken out stops working, a key put in starts).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use factum_engine::{Durability, Engine, EngineConfig};
use factum_proto::shared::Empty;
use factum_proto::streams::read_req::options::{self, AllOptions, StreamOptions};
use factum_proto::streams::{read_req, streams_client::StreamsClient, ReadReq};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::KeyPair as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::PrivatePkcs1KeyDer;

const ISSUER: &str = "https://id.example";
const AUDIENCE: &str = "factum";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The keys tokens are signed with: the RSA test key of the fixtures
/// (`rsa-1`), and P-256 keys made now.
struct Keys {
    rsa: EncodingKey,
    rsa_jwk: serde_json::Value,
}

impl Keys {
    fn new() -> Keys {
        let pem = std::fs::read(fixture("jwt-rsa-test-key.pem")).unwrap();
        let der = PrivatePkcs1KeyDer::from_pem_slice(&pem).unwrap();
        let rsa_jwk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture("jwt-rsa-test-key.jwk.json")).unwrap())
                .unwrap();
        Keys {
            rsa: EncodingKey::from_rsa_der(der.secret_pkcs1_der()),
            rsa_jwk,
        }
    }
}

/// A P-256 key: its signing key and its JWK named `kid`.
fn ec_key(kid: &str) -> (EncodingKey, serde_json::Value) {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    assert_eq!(point[0], 4, "uncompressed point");
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
        "x": b64url(&point[1..33]), "y": b64url(&point[33..65]),
    });
    (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
}

fn write_jwks(path: &Path, keys: &[&serde_json::Value]) {
    // Written aside and renamed: the server never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::json!({ "keys": keys }).to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims for `sub` with `extra` merged in (valid for an hour by default).
fn claims(sub: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::json!({
        "sub": sub, "iss": ISSUER, "aud": AUDIENCE,
        "iat": now(), "exp": now() + 3600,
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn token(
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

async fn start(jwks: &Path) -> (std::net::SocketAddr, tempfile::TempDir) {
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
    let bearer =
        factum_server::bearer::BearerConfig::new(jwks.to_owned(), ISSUER.into(), AUDIENCE.into());
    cfg.bearer = Some(Arc::new(
        factum_server::bearer::Bearer::new(bearer).unwrap(),
    ));
    tokio::spawn(factum_server::serve(
        listener,
        Arc::new(engine),
        cfg,
        std::future::pending(),
    ));
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return (addr, dir);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("server did not start");
}

fn admin() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:changeit")
    )
}

/// One HTTP request with this `authorization`: the status.
async fn http(addr: std::net::SocketAddr, auth: &str, method: &str, path: &str, body: &str) -> u16 {
    http_from(LOCAL, addr, auth, method, path, body).await
}

const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// [`http`] from the local address `from` (refusals are slowed per client
/// address after a few: each bad-token case comes from an address of its
/// own, so the test does not wait on that).
async fn http_from(
    from: std::net::IpAddr,
    addr: std::net::SocketAddr,
    auth: &str,
    method: &str,
    path: &str,
    body: &str,
) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let r = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\nauthorization: {auth}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(r.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ').nth(1).unwrap_or("0").parse().unwrap()
}

/// A gRPC read of `stream` (`None`: `$all`) with this `authorization`:
/// the first message's outcome.
async fn grpc_read(
    addr: std::net::SocketAddr,
    auth: &str,
    stream: Option<&str>,
) -> Result<(), tonic::Status> {
    grpc_read_from(LOCAL, addr, auth, stream).await
}

/// [`grpc_read`] from the local address `from`.
async fn grpc_read_from(
    from: std::net::IpAddr,
    addr: std::net::SocketAddr,
    auth: &str,
    stream: Option<&str>,
) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(Some(from))
        .connect()
        .await
        .unwrap();
    let read = ReadReq {
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
            count_option: Some(options::CountOption::Count(10)),
            filter_option: Some(options::FilterOption::NoFilter(Empty {})),
            uuid_option: Some(options::UuidOption {
                content: Some(options::uuid_option::Content::String(Empty {})),
            }),
            control_option: None,
        }),
    };
    let mut req = tonic::Request::new(read);
    req.metadata_mut()
        .insert("authorization", auth.parse().unwrap());
    let mut resp = StreamsClient::new(channel).read(req).await?.into_inner();
    resp.message().await.map(|_| ())
}

const EVENT: &str = r#"[{"type":"OrderPlaced","data":{"n":1}}]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_names_the_user_and_groups_the_acls_check() {
    let keys = Keys::new();
    let (ec, ec_jwk) = ec_key("ec-1");
    let files = tempfile::tempdir().unwrap();
    let jwks = files.path().join("jwks.json");
    write_jwks(&jwks, &[&keys.rsa_jwk, &ec_jwk]);
    let (addr, _dir) = start(&jwks).await;

    // secret-1: readers read; only admins write.
    let acl = r#"{"$acl": {"$r": ["readers"], "$w": "$admins"}}"#;
    assert_eq!(
        http(addr, &admin(), "PUT", "/streams/secret-1/metadata", acl).await,
        200
    );
    assert_eq!(
        http(addr, &admin(), "POST", "/streams/secret-1", EVENT).await,
        201
    );

    // RS256: alice of readers (the `groups` claim).
    let alice = format!(
        "Bearer {}",
        token(
            Algorithm::RS256,
            Some("rsa-1"),
            &keys.rsa,
            &claims("alice", serde_json::json!({ "groups": ["readers"] })),
        )
    );
    // ES256: bob, in no group.
    let bob = format!(
        "Bearer {}",
        token(
            Algorithm::ES256,
            Some("ec-1"),
            &ec,
            &claims("bob", serde_json::json!({}))
        ),
    );
    // ES256: an administrator by the `roles` claim (a single string).
    let root = format!(
        "Bearer {}",
        token(
            Algorithm::ES256,
            Some("ec-1"),
            &ec,
            &claims("root", serde_json::json!({ "roles": "$admins" })),
        )
    );

    // (who, read secret-1, write secret-1, read $all) over HTTP and gRPC.
    let mut cells = 0;
    for (who, auth, read, write, all) in [
        ("alice", &alice, true, false, false),
        ("bob", &bob, false, false, false),
        ("root", &root, true, true, true),
    ] {
        let status = http(addr, auth, "GET", "/streams/secret-1", "").await;
        assert_eq!(status, if read { 200 } else { 403 }, "{who} HTTP read");
        let status = http(addr, auth, "POST", "/streams/secret-1", EVENT).await;
        assert_eq!(status, if write { 201 } else { 403 }, "{who} HTTP append");
        let got = grpc_read(addr, auth, Some("secret-1")).await;
        match (read, got) {
            (true, Ok(())) => {}
            (false, Err(e)) => assert_eq!(e.code(), tonic::Code::PermissionDenied, "{who}"),
            (_, got) => panic!("{who} gRPC read secret-1: {got:?}"),
        }
        let got = grpc_read(addr, auth, None).await;
        match (all, got) {
            (true, Ok(())) => {}
            (false, Err(e)) => assert_eq!(e.code(), tonic::Code::PermissionDenied, "{who}"),
            (_, got) => panic!("{who} gRPC read $all: {got:?}"),
        }
        // Users of other streams: every authenticated user (default ACL).
        let status = http(addr, auth, "POST", &format!("/streams/{who}-1"), EVENT).await;
        assert_eq!(status, 201, "{who} appends to a stream without an ACL");
        cells += 5;
    }
    println!("bearer ACL cells: {cells}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_unauthenticated_over_grpc_and_http() {
    let keys = Keys::new();
    let (ec, ec_jwk) = ec_key("ec-1");
    let (stranger, _) = ec_key("ec-1");
    let files = tempfile::tempdir().unwrap();
    let jwks = files.path().join("jwks.json");
    write_jwks(&jwks, &[&keys.rsa_jwk, &ec_jwk]);
    let (addr, _dir) = start(&jwks).await;

    let none = serde_json::json!({});
    let rs = |c: serde_json::Value| token(Algorithm::RS256, Some("rsa-1"), &keys.rsa, &c);
    let hmac = jsonwebtoken::encode(
        &{
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("rsa-1".into());
            h
        },
        &claims("mallory", none.clone()),
        // The public modulus as the "secret": the algorithm-confusion attack.
        &EncodingKey::from_secret(keys.rsa_jwk["n"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    let cases = [
        (
            "expired",
            rs(claims("alice", serde_json::json!({ "exp": now() - 3600 }))),
        ),
        (
            "not yet valid",
            rs(claims("alice", serde_json::json!({ "nbf": now() + 3600 }))),
        ),
        (
            "wrong audience",
            rs(claims("alice", serde_json::json!({ "aud": "other" }))),
        ),
        (
            "wrong issuer",
            rs(claims(
                "alice",
                serde_json::json!({ "iss": "https://evil.example" }),
            )),
        ),
        (
            "no exp",
            rs({
                let mut c = claims("alice", none.clone());
                c.as_object_mut().unwrap().remove("exp");
                c
            }),
        ),
        (
            "no user",
            rs({
                let mut c = claims("alice", none.clone());
                c.as_object_mut().unwrap().remove("sub");
                c
            }),
        ),
        (
            "wrong signature",
            token(
                Algorithm::ES256,
                Some("ec-1"),
                &stranger,
                &claims("alice", none.clone()),
            ),
        ),
        (
            "unknown kid",
            token(
                Algorithm::ES256,
                Some("ec-2"),
                &ec,
                &claims("alice", none.clone()),
            ),
        ),
        (
            "algorithm that does not fit the key",
            token(
                Algorithm::RS384,
                Some("rsa-1"),
                &keys.rsa,
                &claims("alice", none.clone()),
            ),
        ),
        ("HMAC", hmac),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (i, (case, token)) in cases.iter().enumerate() {
        let auth = format!("Bearer {token}");
        let from = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 1, i as u8 + 1));
        let status = http_from(from, addr, &auth, "GET", "/streams/orders-1", "").await;
        assert_eq!(status, 401, "{case} over HTTP");
        match grpc_read_from(from, addr, &auth, Some("orders-1")).await {
            Err(e) => assert_eq!(e.code(), tonic::Code::Unauthenticated, "{case} over gRPC"),
            Ok(()) => panic!("{case}: accepted over gRPC"),
        }
    }
    // The same claims, well signed, pass (so each case failed for its flaw).
    let good = format!("Bearer {}", rs(claims("alice", none)));
    assert_eq!(http(addr, &good, "GET", "/streams/orders-1", "").await, 404);
    // Refusals are counted as failed logins.
    let metrics = {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let r = format!(
            "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: {}\r\n\r\n",
            admin()
        );
        s.write_all(r.as_bytes()).await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    };
    let failed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("factum_failed_logins_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no failed-login counter in {metrics}"));
    assert!(failed >= 2 * cases.len() as u64, "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_file_is_reloaded_when_it_changes() {
    let keys = Keys::new();
    let (ec, ec_jwk) = ec_key("ec-1");
    let files = tempfile::tempdir().unwrap();
    let jwks = files.path().join("jwks.json");
    write_jwks(&jwks, &[&keys.rsa_jwk]);
    let (addr, _dir) = start(&jwks).await;

    let rsa_token = format!(
        "Bearer {}",
        token(
            Algorithm::RS256,
            Some("rsa-1"),
            &keys.rsa,
            &claims("alice", serde_json::json!({}))
        )
    );
    let ec_token = format!(
        "Bearer {}",
        token(
            Algorithm::ES256,
            Some("ec-1"),
            &ec,
            &claims("bob", serde_json::json!({}))
        )
    );
    let append =
        |auth: String| async move { http(addr, &auth, "POST", "/streams/orders-1", EVENT).await };
    assert_eq!(append(rsa_token.clone()).await, 201);
    assert_eq!(append(ec_token.clone()).await, 401);

    // Rotate: the RSA key out, the EC key in. Modification times have a
    // coarse grain on some file systems: wait it out first.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write_jwks(&jwks, &[&ec_jwk]);
    tokio::time::sleep(factum_server::bearer::RECHECK + Duration::from_millis(100)).await;
    assert_eq!(append(ec_token.clone()).await, 201, "the new key works");
    // The RSA token was cached as checked: the reload dropped it.
    assert_eq!(append(rsa_token.clone()).await, 401, "the old key does not");

    // A file that cannot be parsed keeps the keys in use.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&jwks, "{ half a fi").unwrap();
    tokio::time::sleep(factum_server::bearer::RECHECK + Duration::from_millis(100)).await;
    assert_eq!(
        append(ec_token).await,
        201,
        "still served by the previous keys"
    );
}

#[test]
fn a_bad_jwks_file_is_refused_at_startup() {
    let files = tempfile::tempdir().unwrap();
    let config =
        |p: PathBuf| factum_server::bearer::BearerConfig::new(p, ISSUER.into(), AUDIENCE.into());
    let missing = factum_server::bearer::Bearer::new(config(files.path().join("none.json")));
    assert!(missing.unwrap_err().to_string().contains("cannot read"));
    let path = files.path().join("jwks.json");
    std::fs::write(&path, "not json").unwrap();
    let bad = factum_server::bearer::Bearer::new(config(path.clone()));
    assert!(bad.unwrap_err().to_string().contains("not a JWKS"));
    // Only an HMAC key: nothing usable.
    std::fs::write(
        &path,
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#,
    )
    .unwrap();
    let hmac = factum_server::bearer::Bearer::new(config(path));
    assert!(hmac.unwrap_err().to_string().contains("no usable key"));
}

//! Users and authentication (ADR 31): KurrentDB's `Users` service, the one
//! authentication gate in front of gRPC and HTTP (Basic credentials, the
//! anonymous endpoints), the verified-credential cache dropped on every
//! change, failed logins in `/metrics`, and errors as KurrentDB sends them.

use std::sync::Arc;

use base64::Engine as _;
use factum_engine::{Durability, Engine, EngineConfig};
use factum_proto::server_features::server_features_client::ServerFeaturesClient;
use factum_proto::users::users_client::UsersClient;
use factum_proto::users::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::{Code, Request};

struct Server {
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start(users: factum_server::UsersConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = factum_server::ServerConfig::new(addr);
    cfg.users = Some(users);
    tokio::spawn(factum_server::serve(
        listener,
        Arc::new(engine),
        cfg,
        std::future::pending(),
    ));
    // The default users are created before the first connection is taken.
    let server = Server { addr, _dir: dir };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return server;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("server did not start");
}

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn basic(login: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{login}:{password}"))
    )
}

/// A request with credentials (`None`: anonymous).
fn req<T>(message: T, who: Option<(&str, &str)>) -> Request<T> {
    let mut r = Request::new(message);
    if let Some((login, password)) = who {
        r.metadata_mut()
            .insert("authorization", basic(login, password).parse().unwrap());
    }
    r
}

const ADMIN: Option<(&str, &str)> = Some(("admin", "changeit"));

async fn details(
    client: &mut UsersClient<Channel>,
    login: &str,
    who: Option<(&str, &str)>,
) -> Result<Vec<details_resp::UserDetails>, tonic::Status> {
    let mut stream = client
        .details(req(
            DetailsReq {
                options: Some(details_req::Options {
                    login_name: login.into(),
                }),
            },
            who,
        ))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(item) = stream.message().await? {
        out.push(item.user_details.unwrap());
    }
    Ok(out)
}

async fn create(
    client: &mut UsersClient<Channel>,
    login: &str,
    password: &str,
    groups: &[&str],
    who: Option<(&str, &str)>,
) -> Result<(), tonic::Status> {
    client
        .create(req(
            CreateReq {
                options: Some(create_req::Options {
                    login_name: login.into(),
                    password: password.into(),
                    full_name: format!("{login} full"),
                    groups: groups.iter().map(|g| g.to_string()).collect(),
                }),
            },
            who,
        ))
        .await
        .map(|_| ())
}

/// One HTTP/1.1 request: (status, headers and body).
async fn http(
    server: &Server,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(a) = auth {
        r.push_str(&format!("authorization: {a}\r\n"));
    }
    r.push_str("\r\n");
    r.push_str(body);
    s.write_all(r.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).unwrap_or("0").parse().unwrap();
    (status, text)
}

fn exception(s: &tonic::Status) -> &str {
    s.metadata()
        .get("exception")
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test]
async fn credentials_are_checked_in_one_gate_for_grpc_and_http() {
    let server = start(Default::default()).await;
    let mut users = UsersClient::new(channel(&server).await);

    // Anonymous: refused as KurrentDB refuses the anonymous user...
    let e = details(&mut users, "admin", None).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(exception(&e), "access-denied");
    // ...but for what clients call before they authenticate.
    ServerFeaturesClient::new(channel(&server).await)
        .get_supported_methods(req(factum_proto::shared::Empty {}, None))
        .await
        .unwrap();
    assert_eq!(http(&server, "GET", "/health", None, "").await.0, 200);

    // Wrong credentials: UNAUTHENTICATED / 401, never a fall back to anonymous.
    let e = details(&mut users, "admin", Some(("admin", "wrong")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = details(&mut users, "admin", Some(("nobody", "x")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let (status, text) = http(&server, "GET", "/streams/orders-1", None, "").await;
    assert_eq!(status, 401, "{text}");
    assert!(
        text.to_lowercase()
            .contains("www-authenticate: x-basic realm=\"esdb\""),
        "{text}"
    );
    let (status, _) = http(
        &server,
        "GET",
        "/streams/orders-1",
        Some(&basic("admin", "nope")),
        "",
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = http(&server, "GET", "/streams/orders-1", Some("Bearer abc"), "").await;
    assert_eq!(status, 401);

    // The right ones: through, gRPC and HTTP alike.
    let admin = details(&mut users, "admin", ADMIN).await.unwrap();
    assert_eq!(admin[0].groups, vec!["$admins"]);
    assert!(admin[0].last_updated.as_ref().unwrap().ticks_since_epoch > 0);
    let good = basic("admin", "changeit");
    let (status, text) = http(
        &server,
        "POST",
        "/streams/orders-1",
        Some(&good),
        r#"[{"type":"OrderPlaced","data":{"total":1}}]"#,
    )
    .await;
    assert!(status < 300, "{text}");
    let (status, text) = http(&server, "GET", "/metrics", Some(&good), "").await;
    assert_eq!(status, 200);
    let failed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("factum_failed_logins_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        failed, 4,
        "every refused credential counted (not the anonymous request)"
    );

    // The users' own streams are managed: not even admins write them.
    let (status, text) = http(
        &server,
        "POST",
        "/streams/$user-admin",
        Some(&good),
        r#"[{"type":"$UserUpdated","data":{}}]"#,
    )
    .await;
    assert_eq!(status, 403, "{text}");
}

#[tokio::test]
async fn a_user_lives_and_its_cached_credentials_follow_every_change() {
    let server = start(Default::default()).await;
    let mut users = UsersClient::new(channel(&server).await);
    create(&mut users, "bob", "pw1", &["dev"], ADMIN)
        .await
        .unwrap();
    let bob = details(&mut users, "bob", Some(("bob", "pw1")))
        .await
        .unwrap();
    assert_eq!(
        (bob[0].full_name.as_str(), bob[0].groups.clone()),
        ("bob full", vec!["dev".to_owned()])
    );

    // Only admins manage users; a taken login is a conflict.
    let e = create(&mut users, "eve", "x", &[], Some(("bob", "pw1")))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), exception(&e)),
        (Code::PermissionDenied, "access-denied")
    );
    let e = create(&mut users, "bob", "x", &[], ADMIN)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), exception(&e)),
        (Code::FailedPrecondition, "user-conflict")
    );
    assert_eq!(e.metadata().get("login-name").unwrap(), "bob");
    let e = details(&mut users, "ghost", ADMIN).await.unwrap_err();
    assert_eq!(
        (e.code(), exception(&e)),
        (Code::NotFound, "user-not-found")
    );
    assert_eq!(e.message(), "User 'ghost' is not found.");
    // bob sees himself, not others.
    let e = details(&mut users, "admin", Some(("bob", "pw1")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // A password change: the wrong current one is refused; afterwards the
    // old password (cached a moment ago) no longer works.
    let change = |current: &str, new: &str| ChangePasswordReq {
        options: Some(change_password_req::Options {
            login_name: "bob".into(),
            current_password: current.into(),
            new_password: new.into(),
        }),
    };
    let e = users
        .change_password(req(change("bad", "pw2"), Some(("bob", "pw1"))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    users
        .change_password(req(change("pw1", "pw2"), Some(("bob", "pw1"))))
        .await
        .unwrap();
    let e = details(&mut users, "bob", Some(("bob", "pw1")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    details(&mut users, "bob", Some(("bob", "pw2")))
        .await
        .unwrap();

    // Disable, enable, reset, update, delete: each takes effect at once.
    let login = |n: &str| {
        Some(disable_req::Options {
            login_name: n.into(),
        })
    };
    users
        .disable(req(
            DisableReq {
                options: login("bob"),
            },
            ADMIN,
        ))
        .await
        .unwrap();
    let e = details(&mut users, "bob", Some(("bob", "pw2")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(details(&mut users, "bob", ADMIN).await.unwrap()[0].disabled);
    users
        .enable(req(
            EnableReq {
                options: Some(enable_req::Options {
                    login_name: "bob".into(),
                }),
            },
            ADMIN,
        ))
        .await
        .unwrap();
    details(&mut users, "bob", Some(("bob", "pw2")))
        .await
        .unwrap();
    users
        .reset_password(req(
            ResetPasswordReq {
                options: Some(reset_password_req::Options {
                    login_name: "bob".into(),
                    new_password: "pw3".into(),
                }),
            },
            ADMIN,
        ))
        .await
        .unwrap();
    assert_eq!(
        details(&mut users, "bob", Some(("bob", "pw2")))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    users
        .update(req(
            UpdateReq {
                options: Some(update_req::Options {
                    login_name: "bob".into(),
                    password: String::new(),
                    full_name: "Robert".into(),
                    groups: vec!["$ops".into()],
                }),
            },
            ADMIN,
        ))
        .await
        .unwrap();
    let bob = details(&mut users, "bob", Some(("bob", "pw3")))
        .await
        .unwrap();
    assert_eq!(
        (bob[0].full_name.as_str(), bob[0].groups.clone()),
        ("Robert", vec!["$ops".to_owned()])
    );

    let all: Vec<String> = details(&mut users, "", ADMIN)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.login_name)
        .collect();
    assert_eq!(all, ["admin", "ops", "bob"]);
    users
        .delete(req(
            DeleteReq {
                options: Some(delete_req::Options {
                    login_name: "bob".into(),
                }),
            },
            ADMIN,
        ))
        .await
        .unwrap();
    assert_eq!(
        details(&mut users, "bob", Some(("bob", "pw3")))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let e = details(&mut users, "bob", ADMIN).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // The login can be taken again.
    create(&mut users, "bob", "again", &[], ADMIN)
        .await
        .unwrap();
    details(&mut users, "bob", Some(("bob", "again")))
        .await
        .unwrap();
    assert_eq!(details(&mut users, "", ADMIN).await.unwrap().len(), 3);
}

#[tokio::test]
async fn initial_passwords_come_from_the_configuration() {
    let server = start(factum_server::UsersConfig {
        admin_password: Some("s3cret".into()),
        ops_password: None,
    })
    .await;
    let mut users = UsersClient::new(channel(&server).await);
    let e = details(&mut users, "admin", ADMIN).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    details(&mut users, "admin", Some(("admin", "s3cret")))
        .await
        .unwrap();
    let ops = details(&mut users, "ops", Some(("ops", "changeit")))
        .await
        .unwrap();
    assert_eq!(ops[0].groups, vec!["$ops"]);
}

#[tokio::test]
async fn users_are_managed_over_http_too() {
    let server = start(Default::default()).await;
    let admin = basic("admin", "changeit");
    let (status, text) = http(
        &server,
        "POST",
        "/users",
        Some(&admin),
        r#"{"loginName":"carol","password":"c1","fullName":"Carol","groups":["dev"]}"#,
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let carol = basic("carol", "c1");
    let (status, text) = http(&server, "GET", "/users/carol", Some(&carol), "").await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(r#""fullName":"Carol""#) && text.contains(r#""success":true"#),
        "{text}"
    );
    let (status, _) = http(&server, "GET", "/users", Some(&carol), "").await;
    assert_eq!(status, 401, "only admins list users");
    let (status, text) = http(
        &server,
        "POST",
        "/users",
        Some(&admin),
        r#"{"loginName":"carol","password":"x"}"#,
    )
    .await;
    assert_eq!(status, 409, "{text}");
    let (status, _) = http(
        &server,
        "POST",
        "/users/carol/command/change-password",
        Some(&carol),
        r#"{"currentPassword":"c1","newPassword":"c2"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        http(&server, "GET", "/users/carol", Some(&carol), "")
            .await
            .0,
        401
    );
    let carol = basic("carol", "c2");
    assert_eq!(
        http(&server, "GET", "/users/carol", Some(&carol), "")
            .await
            .0,
        200
    );
    let (status, _) = http(
        &server,
        "POST",
        "/users/carol/command/disable",
        Some(&admin),
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        http(&server, "GET", "/users/carol", Some(&carol), "")
            .await
            .0,
        401
    );
    let (status, _) = http(
        &server,
        "PUT",
        "/users/carol",
        Some(&admin),
        r#"{"fullName":"C","groups":[]}"#,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = http(&server, "DELETE", "/users/carol", Some(&admin), "").await;
    assert_eq!(status, 200);
    let (status, text) = http(&server, "GET", "/users/carol", Some(&admin), "").await;
    assert_eq!(status, 404, "{text}");
    let (status, text) = http(&server, "GET", "/users", Some(&admin), "").await;
    assert_eq!(status, 200);
    assert!(
        text.contains(r#""loginName":"ops""#) && !text.contains("carol"),
        "{text}"
    );
    assert!(
        !text.contains("passwordHash"),
        "hashes never leave the server: {text}"
    );
}

#[tokio::test]
async fn repeated_failed_logins_from_one_address_are_slowed_down() {
    let server = start(Default::default()).await;
    let wrong = basic("admin", "guess");
    let mut last = std::time::Duration::ZERO;
    for _ in 0..6 {
        let started = std::time::Instant::now();
        assert_eq!(
            http(&server, "GET", "/streams/x", Some(&wrong), "").await.0,
            401
        );
        last = started.elapsed();
    }
    // Three free failures, then 250 ms more for each.
    assert!(last >= std::time::Duration::from_millis(700), "{last:?}");
    let good = basic("admin", "changeit");
    let started = std::time::Instant::now();
    assert_ne!(
        http(&server, "GET", "/streams/x", Some(&good), "").await.0,
        401
    );
    assert!(
        started.elapsed() < std::time::Duration::from_millis(500),
        "the right password is not held back"
    );
}

//! KurrentDB's official Rust client against `factum serve --dev` (ADR 30,
//! 31): TLS trusting the development CA, `admin:changeit`, a stream ACL
//! set through the client, access denied for `ops` (not an admin) on it
//! and on `$all`, wrong credentials refused.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, Error, ReadAllOptions, ReadStreamOptions,
    StreamAclBuilder, StreamMetadata,
};

mod common;
use common::{ev, factum_binary, name};

/// `factum serve --dev`: the process, its address and the development CA.
struct Secure {
    child: std::process::Child,
    addr: String,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Secure {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Secure {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(factum_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--dev", "--data"])
        .arg(dir.path().join("store"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Owned by the guard at once: killed and waited for however this ends.
    let mut server = Secure {
        child,
        addr: String::new(),
        ca: PathBuf::new(),
        _dir: dir,
    };
    let mut out = BufReader::new(server.child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "factum serve exited");
        if let Some(p) = line.trim().strip_prefix("development CA: ") {
            server.ca = PathBuf::from(p);
        }
        if let Some(rest) = line.split(" on ").nth(1) {
            server.addr = rest.split_whitespace().next().unwrap().to_owned();
            assert!(
                !server.ca.as_os_str().is_empty(),
                "the development CA is printed first"
            );
            return server;
        }
    }
}

fn client(server: &Secure, login: &str, password: &str) -> Client {
    let settings: ClientSettings = format!(
        "esdb://{login}:{password}@{}?tls=true&tlsCaFile={}",
        server.addr,
        server.ca.display()
    )
    .parse()
    .unwrap();
    Client::new(settings).unwrap()
}

async fn read(client: &Client, stream: &str) -> Result<usize, Error> {
    let mut s = client
        .read_stream(stream.to_owned(), &ReadStreamOptions::default())
        .await?;
    let mut n = 0;
    while s.next().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

async fn read_all(client: &Client) -> Result<usize, Error> {
    let mut s = client
        .read_all(&ReadAllOptions::default().max_count(5))
        .await?;
    let mut n = 0;
    while s.next().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_rust_client_in_secure_mode() {
    let server = start();
    let admin = client(&server, "admin", "changeit");
    let s = name("secret");
    admin
        .append_to_stream(s.clone(), &AppendToStreamOptions::default(), ev("Opened"))
        .await
        .unwrap();
    assert_eq!(read(&admin, &s).await.unwrap(), 1);
    assert!(read_all(&admin).await.unwrap() > 0, "admins read $all");

    let open = name("open");
    let ops = client(&server, "ops", "changeit");
    ops.append_to_stream(open.clone(), &AppendToStreamOptions::default(), ev("X"))
        .await
        .unwrap();
    assert_eq!(
        read(&ops, &open).await.unwrap(),
        1,
        "user streams are open to users"
    );

    let acl = StreamAclBuilder::new()
        .add_read_roles("$admins")
        .add_write_roles("$admins")
        .build();
    let md = StreamMetadata::builder()
        .acl(kurrentdb::Acl::Stream(acl))
        .build();
    admin
        .set_stream_metadata(s.clone(), &AppendToStreamOptions::default(), &md)
        .await
        .unwrap();
    assert!(matches!(read(&ops, &s).await, Err(Error::AccessDenied)));
    assert!(matches!(
        ops.append_to_stream(s.clone(), &AppendToStreamOptions::default(), ev("Y"))
            .await,
        Err(Error::AccessDenied)
    ));
    assert!(matches!(read_all(&ops).await, Err(Error::AccessDenied)));
    assert_eq!(read(&admin, &s).await.unwrap(), 1);

    let wrong = client(&server, "admin", "wrong");
    // This client reports UNAUTHENTICATED as AccessDenied too.
    assert!(matches!(read(&wrong, &s).await, Err(Error::AccessDenied)));
}

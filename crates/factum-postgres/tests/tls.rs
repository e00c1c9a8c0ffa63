//! TLS to PostgreSQL with libpq's `sslmode` and `sslrootcert` (ADR 24).
//!
//! Each test starts a private PostgreSQL server (initdb as the `postgres`
//! OS user, as `tests/settings.rs` does), so the shared server's settings
//! are never touched: one with `ssl = on` and a certificate signed by a CA
//! the test makes with the `openssl` command (for `localhost` and
//! 127.0.0.1), one with `ssl = off`. Whether a session of the store is
//! encrypted is read from `pg_stat_ssl`. Without a private server or
//! `openssl` the tests print SKIPPED; with `CI=true` they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use factum_core::{Error, EventData, EventStore, ExpectedRevision, ReadStream, StreamName};
use factum_postgres::{PostgresConfig, PostgresStore};

mod common;
use common::PrivateServer;

fn skip_or_fail(what: &str, e: String) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what} is required in CI (CI=true): {e}");
    }
    eprintln!("SKIPPED: {what}: {e}");
}

/// A directory of certificates the test made, removed when dropped.
struct Certs {
    dir: PathBuf,
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Certs {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Two CAs (`ca.crt`, and `other-ca.crt` that signed nothing), a server
/// certificate signed by the first for `localhost` and 127.0.0.1, and a
/// `pg_hba.conf`, readable by the `postgres` user (the key mode 0600, as
/// PostgreSQL demands).
fn make_certs() -> Result<Certs, String> {
    let dir = std::env::temp_dir().join(format!(
        "factum-tls-{}",
        factum_core::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let certs = Certs { dir };
    let dir = certs.dir.as_path();
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=Factum test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n",
    )
    .map_err(|e| e.to_string())?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    )?;
    // The server's pg_hba.conf: trust, except SCRAM for one role over TLS.
    std::fs::write(
        dir.join("pg_hba.conf"),
        "local all all trust\n\
         hostssl all factum_scram 127.0.0.1/32 scram-sha-256\n\
         host all factum_scram 127.0.0.1/32 reject\n\
         host all all 127.0.0.1/32 trust\n\
         host all all ::1/128 trust\n",
    )
    .map_err(|e| e.to_string())?;
    let chown = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .map_err(|e| e.to_string())?;
    if !chown.success() {
        return Err("cannot hand the certificates to the postgres user (not root?)".into());
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .map_err(|e| e.to_string())?;
    Ok(certs)
}

/// A connection string in URL form for `server` at `host`.
fn url(server: &PrivateServer, host: &str, params: &str) -> String {
    let query = if params.is_empty() { "" } else { "?" };
    format!(
        "postgres://postgres@{host}:{}/postgres{query}{params}",
        port(server)
    )
}

/// The port `server` listens on.
fn port(server: &PrivateServer) -> String {
    let after_colon = server.url().rsplit(':').next().unwrap().to_string();
    after_colon.split('/').next().unwrap().to_string()
}

/// Connects a store with `conn` (tagged with a fresh application name),
/// appends and reads one event, and answers whether its sessions are
/// encrypted (every one of them, as `pg_stat_ssl` sees it).
async fn connect(server: &PrivateServer, conn: &str) -> Result<bool, Error> {
    let app = format!("factum-tls-{}", factum_core::Uuid::new_v4().simple());
    let sep = match (conn.starts_with("postgres://"), conn.contains('?')) {
        (true, true) => "&",
        (true, false) => "?",
        (false, _) => " ",
    };
    let full = format!("{conn}{sep}application_name={app}");
    let schema = format!("tls_{}", factum_core::Uuid::new_v4().simple());
    let store = PostgresStore::connect(PostgresConfig::new(full).schema(schema))
        .await?
        .drop_schema_on_drop();
    let s = StreamName::new("secret-1").unwrap();
    store
        .append(
            s.clone(),
            ExpectedRevision::NoStream,
            vec![EventData::json("Kept", &1).unwrap()],
        )
        .await?;
    let read = store.read_stream(ReadStream::forwards(s)).await?;
    assert_eq!(read.len(), 1);
    let (admin, driver) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(driver);
    let row = admin
        .query_one(
            "SELECT count(*), coalesce(bool_and(s.ssl), false)
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    let sessions: i64 = row.get(0);
    assert!(sessions >= 1, "no session of the store is open");
    Ok(row.get(1))
}

/// The refusal of a connection string: `Unavailable` (connection trouble)
/// or `InvalidInput` (a bad connection string), with its text.
async fn refused(server: &PrivateServer, conn: &str) -> String {
    match connect(server, conn).await {
        Err(Error::Unavailable { message: m, .. }) | Err(Error::InvalidInput(m)) => m,
        Err(e) => panic!("{conn}: unexpected error {e:?}"),
        Ok(ssl) => panic!("{conn}: connected (ssl {ssl}) but should have been refused"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_against_a_server_with_tls() {
    let certs = match make_certs() {
        Ok(c) => c,
        Err(e) => return skip_or_fail("making test certificates with openssl", e),
    };
    let server = match PrivateServer::start(&[
        "ssl=on",
        &format!("ssl_cert_file={}", certs.path("server.crt")),
        &format!("ssl_key_file={}", certs.path("server.key")),
        &format!("hba_file={}", certs.path("pg_hba.conf")),
    ]) {
        Ok(s) => s,
        Err(e) => return skip_or_fail("a private PostgreSQL server", e),
    };
    let ca = certs.path("ca.crt");
    let other_ca = certs.path("other-ca.crt");

    // Encrypted, the certificate checked as far as each mode says.
    for (what, conn) in [
        ("no sslmode: libpq's default prefer", url(&server, "127.0.0.1", "")),
        ("prefer", url(&server, "127.0.0.1", "sslmode=prefer")),
        ("require without a root file", url(&server, "127.0.0.1", "sslmode=require")),
        (
            "require with a root file, any host name",
            format!(
                "host=wrong.example hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require sslrootcert={ca}",
                port(&server)
            ),
        ),
        ("verify-ca", url(&server, "127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"))),
        (
            "verify-ca does not check the host name",
            format!(
                "host=wrong.example hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-ca sslrootcert='{ca}'",
                port(&server)
            ),
        ),
        ("verify-full by address", url(&server, "127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}"))),
        ("verify-full by name", url(&server, "localhost", &format!("sslmode=verify-full&sslrootcert={ca}"))),
        (
            "verify-full, key=value form",
            format!(
                "host=localhost port={} user=postgres dbname=postgres sslmode = verify-full sslrootcert='{ca}'",
                port(&server)
            ),
        ),
    ] {
        match connect(&server, &conn).await {
            Ok(ssl) => assert!(ssl, "{what}: the store's sessions are not encrypted ({conn})"),
            Err(e) => panic!("{what}: {e} ({conn})"),
        }
        eprintln!("{what}: encrypted");
    }
    assert!(
        !connect(&server, &url(&server, "127.0.0.1", "sslmode=disable"))
            .await
            .unwrap(),
        "sslmode=disable: the store's sessions are encrypted"
    );

    // Refused, saying why.
    let m = refused(
        &server,
        &format!(
            "host=wrong.example hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={ca}",
            port(&server)
        ),
    )
    .await;
    eprintln!("verify-full, wrong host name: {m}");
    assert!(m.contains("TLS") && m.contains("wrong.example"), "{m}");
    for (what, params) in [
        (
            "verify-ca, another CA",
            format!("sslmode=verify-ca&sslrootcert={other_ca}"),
        ),
        (
            "verify-full, another CA",
            format!("sslmode=verify-full&sslrootcert={other_ca}"),
        ),
        (
            "require with another CA's root file (libpq: as verify-ca)",
            format!("sslmode=require&sslrootcert={other_ca}"),
        ),
    ] {
        let m = refused(&server, &url(&server, "localhost", &params)).await;
        eprintln!("{what}: {m}");
        assert!(
            m.contains("TLS") && m.contains("not signed by a CA in"),
            "{what}: {m}"
        );
        assert!(m.contains(&other_ca), "{what}: {m}");
    }
    let m = refused(&server, &url(&server, "127.0.0.1", "sslmode=verify-full")).await;
    assert!(m.contains("needs sslrootcert"), "{m}");

    // SCRAM bound to the TLS session (SCRAM-SHA-256-PLUS): the server
    // compares the hash of its certificate with ours.
    let (admin, driver) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(driver);
    admin
        .batch_execute("CREATE ROLE factum_scram LOGIN SUPERUSER PASSWORD 'secret'")
        .await
        .unwrap();
    for binding in ["require", "disable"] {
        let conn = url(
            &server,
            "127.0.0.1",
            &format!("user=factum_scram&password=secret&sslmode=require&channel_binding={binding}"),
        );
        match connect(&server, &conn).await {
            Ok(ssl) => assert!(ssl, "{conn}"),
            Err(e) => panic!("channel_binding={binding}: {e}"),
        }
    }
    let m = refused(
        &server,
        &url(
            &server,
            "127.0.0.1",
            "user=factum_scram&password=wrong&sslmode=require&channel_binding=require",
        ),
    )
    .await;
    assert!(m.contains("28P01"), "a wrong password: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_and_disable_against_a_server_without_tls() {
    let server = match PrivateServer::start(&["ssl=off"]) {
        Ok(s) => s,
        Err(e) => return skip_or_fail("a private PostgreSQL server", e),
    };
    for mode in ["prefer", "disable"] {
        let ssl = connect(
            &server,
            &url(&server, "127.0.0.1", &format!("sslmode={mode}")),
        )
        .await
        .unwrap_or_else(|e| panic!("sslmode={mode}: {e}"));
        assert!(!ssl, "sslmode={mode}: encrypted by a server without TLS?");
    }
    for mode in ["require", "verify-ca"] {
        let certs = match make_certs() {
            Ok(c) => c,
            Err(e) => return skip_or_fail("making test certificates with openssl", e),
        };
        let m = refused(
            &server,
            &url(
                &server,
                "127.0.0.1",
                &format!("sslmode={mode}&sslrootcert={}", certs.path("ca.crt")),
            ),
        )
        .await;
        eprintln!("sslmode={mode}: {m}");
        assert!(m.contains("server does not support TLS"), "{mode}: {m}");
    }
}

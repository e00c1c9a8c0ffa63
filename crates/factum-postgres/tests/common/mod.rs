//! Helpers shared by the PostgreSQL tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The shared server (`FACTUM_TEST_POSTGRES_URL`).
pub fn url() -> String {
    std::env::var("FACTUM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// An administrative connection, or `None` after printing SKIPPED.
pub async fn admin(url: &str) -> Option<tokio_postgres::Client> {
    match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            Some(client)
        }
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED: PostgreSQL is not reachable at {url}: {e}");
            None
        }
        Err(e) => panic!("PostgreSQL is required in CI (CI=true) but not reachable at {url}: {e}"),
    }
}

/// `url` with its database replaced.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let cut = base
        .rfind('/')
        .filter(|&i| !base[..i].ends_with('/'))
        .unwrap_or(base.len());
    format!("{}/{database}{query}", &base[..cut])
}

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL server of the test's own: initdb in a temporary
/// directory, run as the `postgres` OS user, with extra `-c` settings;
/// stopped and removed when dropped.
pub struct PrivateServer {
    dir: PathBuf,
    port: u16,
    settings: Vec<String>,
}

fn as_postgres(args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("runuser")
        .arg("-u")
        .arg("postgres")
        .arg("--")
        .args(args)
        .output()
}

impl PrivateServer {
    /// Starts one, with `settings` (`name=value`) on its command line.
    /// `Err` says why it cannot (no binaries, not root).
    pub fn start(settings: &[&str]) -> Result<PrivateServer, String> {
        if !Path::new(BIN).join("initdb").exists() {
            return Err(format!("no PostgreSQL binaries in {BIN}"));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| e.to_string())?
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!(
            "factum-pg-{}",
            factum_core::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
        if !chown.map(|s| s.success()).unwrap_or(false) {
            return Err("cannot hand a directory to the postgres user (not root?)".into());
        }
        let data = dir.join("data");
        let out = as_postgres(&[
            &format!("{BIN}/initdb"),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ])
        .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let server = PrivateServer {
            dir,
            port,
            settings: settings.iter().map(|s| s.to_string()).collect(),
        };
        server.pg_ctl(&["start", "-w"])?;
        Ok(server)
    }

    /// Runs `pg_ctl` on it (`start` gets its port and settings).
    pub fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let data = self.dir.join("data");
        let mut opts = format!("-p {} -k {} -c fsync=on", self.port, self.dir.display());
        for s in &self.settings {
            opts.push_str(&format!(" -c {s}"));
        }
        let log = self.dir.join("log");
        let mut full = vec![
            format!("{BIN}/pg_ctl"),
            "-D".into(),
            data.display().to_string(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        if args[0] == "start" {
            full.extend(["-o".into(), opts, "-l".into(), log.display().to_string()]);
        }
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = as_postgres(&refs).map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Its connection string.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-m", "immediate"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

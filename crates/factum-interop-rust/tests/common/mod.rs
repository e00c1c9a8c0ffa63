//! A real `factum serve` process for the interop tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use kurrentdb::{Client, ClientSettings, EventData};

/// The `factum` binary beside this test's executable, built when missing.
pub fn factum_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let bin = dir.join("factum");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "factum-cli", "--bin", "factum"])
            .status()
            .unwrap();
        assert!(status.success(), "cannot build the factum binary");
    }
    bin
}

/// `factum serve` on a free port; killed (SIGKILL) when dropped.
pub struct Server {
    child: Child,
    pub addr: String,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// A server over a store in a fresh temporary directory.
    pub fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Server::start_at(&dir.path().join("store"));
        server._dir = Some(dir);
        server
    }

    /// A server over a store in a fresh temporary directory, with more
    /// `factum serve` arguments.
    pub fn start_with(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Server::spawn(&dir.path().join("store"), args);
        server._dir = Some(dir);
        server
    }

    /// A server over the store in `data` (created when missing).
    pub fn start_at(data: &Path) -> Server {
        Server::spawn(data, &[])
    }

    fn spawn(data: &Path, args: &[&str]) -> Server {
        let mut child = Command::new(factum_binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--insecure"])
            .args(args)
            .arg("--data")
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split(" on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("factum serve did not say where it listens: {line:?}"))
            .to_owned();
        Server {
            child,
            addr,
            _dir: None,
        }
    }

    /// A client of this server (`esdb://…?tls=false`).
    pub fn client(&self) -> Client {
        let settings: ClientSettings = format!("esdb://{}?tls=false", self.addr).parse().unwrap();
        Client::new(settings).unwrap()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A unique name with a prefix.
pub fn name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A JSON event of type `t`.
pub fn ev(t: &str) -> EventData {
    EventData::json(t, &serde_json::json!({ "t": t })).unwrap()
}

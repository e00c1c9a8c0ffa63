//! Interop: the real `factum serve` binary driven by KurrentDB's official
//! clients, which we did not write — Python's `kurrentdbclient` (PyPI) and
//! Node's `@eventstore/db-client` (npm). The scripts are in `tests/interop/`:
//! streams, reads and subscriptions (`*_client`), consumer groups
//! (`*_persistent`, which also list the server gaps they know of).
//!
//! The clients are installed on first use under the target directory and
//! reused. When one cannot be installed (no network, no python3/node), the
//! test prints SKIPPED — except with `CI=true`, where it fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const KURRENTDBCLIENT: &str = "kurrentdbclient==1.3.5";
const NODE_CLIENT: &str = "@eventstore/db-client@6.2.1";

/// A `factum serve` process on a free port; SIGTERM and a clean exit on drop
/// are checked by [`Server::stop`].
struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_factum"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--insecure",
                "--max-append-bytes",
                "1048576",
            ])
            .arg("--data")
            .arg(dir.path().join("store"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("factum serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split(" on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        Server {
            child,
            addr,
            _dir: dir,
        }
    }

    /// SIGTERM; the server must drain, close the store and exit 0.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "factum serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(status.success(), "factum serve exited with {status}: {err}");
        assert!(err.contains("store closed"), "no clean close: {err}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn cache_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("interop")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A client could not be installed: fail in CI, skip elsewhere.
fn unavailable(what: &str, why: String) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} could not be installed in CI: {why}");
    }
    println!("SKIPPED: {what} could not be installed: {why}");
}

/// A venv with kurrentdbclient, installed once (the marker names the pin);
/// tests running at once share one install.
fn python_client() -> Result<PathBuf, String> {
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    INSTALLED.get_or_init(install_python_client).clone()
}

fn install_python_client() -> Result<PathBuf, String> {
    let dir = cache_dir("python");
    let python = dir.join("venv/bin/python");
    let marker = dir.join(KURRENTDBCLIENT);
    if !marker.exists() {
        run(Command::new("python3")
            .args(["-m", "venv"])
            .arg(dir.join("venv")))?;
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            KURRENTDBCLIENT,
        ]))?;
        std::fs::write(&marker, b"").unwrap();
    }
    Ok(python)
}

/// node_modules with the Node client, installed once; tests running at
/// once share one install.
fn node_client() -> Result<PathBuf, String> {
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    INSTALLED.get_or_init(install_node_client).clone()
}

fn install_node_client() -> Result<PathBuf, String> {
    let dir = cache_dir("node");
    let marker = dir.join("installed-6.2.1");
    if !marker.exists() {
        std::fs::write(
            dir.join("package.json"),
            br#"{"name":"factum-interop","private":true}"#,
        )
        .unwrap();
        run(Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                NODE_CLIENT,
            ])
            .current_dir(&dir))?;
        std::fs::write(&marker, b"").unwrap();
    }
    Ok(dir.join("node_modules"))
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

fn check(output: std::process::Output, what: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{what} reported failures:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(" 0 failed"),
        "{what} printed no summary:\n{stdout}\n{stderr}"
    );
}

/// Runs a script of `tests/interop/` with the Python client against a fresh
/// server; it must report no failures.
fn with_python(name: &str, what: &str) {
    let python = match python_client() {
        Ok(p) => p,
        Err(why) => return unavailable("kurrentdbclient (PyPI)", why),
    };
    let server = Server::start();
    let out = Command::new(python)
        .arg(script(name))
        .arg(&server.addr)
        .output()
        .unwrap();
    check(out, what);
    server.stop();
}

/// Runs a script of `tests/interop/` with the Node client against a fresh
/// server; it must report no failures.
fn with_node(name: &str, what: &str) {
    let modules = match node_client() {
        Ok(p) => p,
        Err(why) => return unavailable("@eventstore/db-client (npm)", why),
    };
    let server = Server::start();
    let out = Command::new("node")
        .arg(script(name))
        .arg(&server.addr)
        .env("NODE_PATH", modules)
        .output()
        .unwrap();
    check(out, what);
    server.stop();
}

#[test]
fn official_python_client() {
    with_python("python_client.py", "the Python client");
}

#[test]
fn official_node_client() {
    with_node("node_client.js", "the Node client");
}

/// Consumer groups (`PersistentSubscriptions`) through the Python client.
#[test]
fn official_python_client_persistent_subscriptions() {
    with_python(
        "python_persistent.py",
        "the Python client (persistent subscriptions)",
    );
}

/// Consumer groups (`PersistentSubscriptions`) through the Node client.
#[test]
fn official_node_client_persistent_subscriptions() {
    with_node(
        "node_persistent.js",
        "the Node client (persistent subscriptions)",
    );
}

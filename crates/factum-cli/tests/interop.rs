//! Interop: the real `factum serve` binary driven by KurrentDB's official
//! clients, which we did not write, two releases per language: Python's
//! `kurrentdbclient` and `esdbclient` (PyPI), Node's `@eventstore/db-client`
//! and `@kurrent/kurrentdb-client` (npm). The scripts are in `tests/interop/`
//! and serve every release of their language (`harness.py`/`harness.js` hold
//! the names that differ): streams, reads and subscriptions (`*_client`),
//! consumer groups (`*_persistent`). Checks that fail for a known server gap
//! print GAP with a label and the count closes each script's summary.
//!
//! The clients are installed on first use under the target directory and
//! reused; the install and each run print their time. The `…_secure`
//! tests run against `factum serve --dev` (TLS with the development CA,
//! users, ACLs): the scripts connect with `tls=true`, the CA file and
//! `admin:changeit` when `FACTUM_INTEROP_CA` is set. When one cannot be
//! installed (no network, no python3/node), the test prints SKIPPED —
//! except with `CI=true`, where it fails.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
enum Language {
    Python,
    Node,
}

/// One release of an official client: where it comes from and what the
/// scripts are told to load (their second argument).
struct Official {
    language: Language,
    package: &'static str,
    version: &'static str,
}

/// The current Python client.
const KURRENTDBCLIENT: Official = Official {
    language: Language::Python,
    package: "kurrentdbclient",
    version: "1.3.5",
};

/// The Python client before the rename, still widely deployed.
const ESDBCLIENT: Official = Official {
    language: Language::Python,
    package: "esdbclient",
    version: "1.1.7",
};

/// The Node client before the rename, still widely deployed.
const DB_CLIENT: Official = Official {
    language: Language::Node,
    package: "@eventstore/db-client",
    version: "6.2.1",
};

/// The current Node SDK (reads through its Rust core, `@kurrent/bridge`).
const KURRENTDB_CLIENT: Official = Official {
    language: Language::Node,
    package: "@kurrent/kurrentdb-client",
    version: "1.3.1",
};

/// A `factum serve` process on a free port; SIGTERM and a clean exit on drop
/// are checked by [`Server::stop`].
struct Server {
    child: Child,
    addr: String,
    /// The development CA clients trust (secure servers).
    ca: Option<PathBuf>,
    /// The server's stderr: its logs, `factum_server`'s at debug level (a
    /// file, not a pipe: a pipe nobody reads would stop a talkative server).
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_with(false)
    }

    /// Secure (`--dev`, ADR 30/31): TLS with the development CA, users.
    fn start_secure() -> Server {
        Server::start_with(true)
    }

    fn start_with(secure: bool) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_factum"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                if secure { "--dev" } else { "--insecure" },
                "--max-append-bytes",
                "1048576",
            ])
            .arg("--data")
            .arg(dir.path().join("store"))
            // FACTUM_INTEROP_LOG replaces the filter (say, to add h2's frames).
            .env(
                "FACTUM_LOG",
                std::env::var("FACTUM_INTEROP_LOG")
                    .unwrap_or_else(|_| "warn,factum_server=debug".into()),
            )
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("factum serve starts");
        // Dev mode prints the CA and a connection string before "serving".
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut ca = None;
        let line = loop {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "factum serve exited");
            if let Some(path) = line.trim().strip_prefix("development CA: ") {
                ca = Some(PathBuf::from(path));
            }
            if line.contains(" on ") {
                break line;
            }
        };
        let addr = line
            .split(" on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        assert_eq!(ca.is_some(), secure, "the development CA is printed");
        Server {
            child,
            addr,
            ca,
            log,
            _dir: dir,
        }
    }

    /// What the server has logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
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
        let err = self.log();
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

/// Where an installed release is run from, or why it could not be installed.
type Install = Result<PathBuf, String>;

/// One install per release, shared by the tests that run at once.
type Installs = Mutex<HashMap<&'static str, Arc<OnceLock<Install>>>>;

impl Official {
    fn label(&self) -> String {
        format!("{} {}", self.package, self.version)
    }

    /// Installs the release once (tests running at once share one install,
    /// releases install side by side) and returns what runs the scripts
    /// with it: the venv's python, or the node_modules for `NODE_PATH`.
    fn installed(&'static self) -> Install {
        static INSTALLS: OnceLock<Installs> = OnceLock::new();
        let once = INSTALLS
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .entry(self.package)
            .or_default()
            .clone();
        once.get_or_init(|| {
            let dir = cache_dir(&format!(
                "{}-{}",
                self.package.trim_start_matches('@').replace('/', "-"),
                self.version
            ));
            let marker = dir.join("installed");
            let started = Instant::now();
            let fresh = !marker.exists();
            if fresh {
                match self.language {
                    Language::Python => install_python(&dir, self)?,
                    Language::Node => install_node(&dir, self)?,
                }
                std::fs::write(&marker, b"").unwrap();
                println!(
                    "installed {} in {:.1} s",
                    self.label(),
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(match self.language {
                Language::Python => dir.join("venv/bin/python"),
                Language::Node => dir.join("node_modules"),
            })
        })
        .clone()
    }
}

/// A venv (`venv/`) with the package.
fn install_python(dir: &Path, client: &Official) -> Result<(), String> {
    run(Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(dir.join("venv")))?;
    run(Command::new(dir.join("venv/bin/python"))
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .arg(format!("{}=={}", client.package, client.version)))
}

/// `node_modules/` with the package.
fn install_node(dir: &Path, client: &Official) -> Result<(), String> {
    std::fs::write(
        dir.join("package.json"),
        br#"{"name":"factum-interop","private":true}"#,
    )
    .unwrap();
    run(Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
        .arg(format!("{}@{}", client.package, client.version))
        .current_dir(dir))
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

/// Runs a script of `tests/interop/` with one official client against a
/// fresh server; it must report no failures (known gaps are reported, not
/// failed).
fn with(client: &'static Official, name: &str) {
    with_server(client, name, false)
}

/// As [`with`], against a secure server (`--dev`): the scripts connect
/// with TLS, trusting the development CA (`FACTUM_INTEROP_CA`), as
/// `admin:changeit`.
fn with_secure(client: &'static Official, name: &str) {
    with_server(client, name, true)
}

/// How long one client script may run: a script that hangs (a deadlock in
/// a client, a call the server never answers) fails with what it printed
/// instead of holding the suite until CI's limit.
const SCRIPT_LIMIT: Duration = Duration::from_secs(300);

/// Runs `cmd` to its end, or kills it after `limit`; its output either
/// way, with a line saying it was killed.
fn output_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            killed = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = err.join().unwrap();
    if killed {
        stderr.extend_from_slice(
            format!(
                "\nkilled: the script ran longer than {} s\n",
                limit.as_secs()
            )
            .as_bytes(),
        );
    }
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr,
    }
}

fn with_server(client: &'static Official, name: &str, secure: bool) {
    let installed = match client.installed() {
        Ok(p) => p,
        Err(why) => return unavailable(&client.label(), why),
    };
    let server = if secure {
        Server::start_secure()
    } else {
        Server::start()
    };
    let mut cmd = match client.language {
        Language::Python => Command::new(installed),
        Language::Node => {
            let mut node = Command::new("node");
            node.env("NODE_PATH", installed);
            node
        }
    };
    if let Some(ca) = &server.ca {
        cmd.env("FACTUM_INTEROP_CA", ca);
    }
    let started = Instant::now();
    let output = output_within(
        cmd.arg(script(name)).arg(&server.addr).arg(client.package),
        SCRIPT_LIMIT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    println!(
        "{} ran {name} in {:.1} s",
        client.label(),
        started.elapsed().as_secs_f64()
    );
    let what = format!(
        "{} ({name}{})",
        client.label(),
        if secure { ", secure" } else { "" }
    );
    assert!(
        output.status.success(),
        "{what} reported failures:\n{stdout}\n{stderr}\nfactum serve's log:\n{}",
        server.log()
    );
    assert!(
        stdout.contains(" 0 failed"),
        "{what} printed no summary:\n{stdout}\n{stderr}\nfactum serve's log:\n{}",
        server.log()
    );
    server.stop();
}

#[test]
fn python_kurrentdbclient() {
    with(&KURRENTDBCLIENT, "python_client.py");
}

/// Consumer groups (`PersistentSubscriptions`).
#[test]
fn python_kurrentdbclient_persistent_subscriptions() {
    with(&KURRENTDBCLIENT, "python_persistent.py");
}

/// Server-side projections (`Projections`, ADR 35).
#[test]
fn python_kurrentdbclient_projections() {
    with(&KURRENTDBCLIENT, "python_projections.py");
}

#[test]
fn python_esdbclient() {
    with(&ESDBCLIENT, "python_client.py");
}

/// Consumer groups (`PersistentSubscriptions`).
#[test]
fn python_esdbclient_persistent_subscriptions() {
    with(&ESDBCLIENT, "python_persistent.py");
}

#[test]
fn node_db_client() {
    with(&DB_CLIENT, "node_client.js");
}

/// Consumer groups (`PersistentSubscriptions`).
#[test]
fn node_db_client_persistent_subscriptions() {
    with(&DB_CLIENT, "node_persistent.js");
}

#[test]
fn node_kurrentdb_client() {
    with(&KURRENTDB_CLIENT, "node_client.js");
}

/// Consumer groups (`PersistentSubscriptions`).
#[test]
fn node_kurrentdb_client_persistent_subscriptions() {
    with(&KURRENTDB_CLIENT, "node_persistent.js");
}

/// Server-side projections (`Projections`, ADR 35, 39) with the current
/// Node SDK.
#[test]
fn node_kurrentdb_client_projections() {
    with(&KURRENTDB_CLIENT, "node_projections.js");
}

/// Multi-stream appends (`kurrentdb.protocol.v2.streams.StreamsService`,
/// ADR 29) with the current Node SDK.
#[test]
fn node_kurrentdb_client_multi_stream_append() {
    with(&KURRENTDB_CLIENT, "node_multi.js");
}

/// The full scenario list over TLS with the development CA, as admin.
#[test]
fn python_kurrentdbclient_secure() {
    with_secure(&KURRENTDBCLIENT, "python_client.py");
}

/// Users, wrong credentials and access denied as the client reports them.
#[test]
fn python_kurrentdbclient_secure_users_and_access() {
    with_secure(&KURRENTDBCLIENT, "python_secure.py");
}

/// The full scenario list over TLS with the development CA, as admin.
#[test]
fn node_kurrentdb_client_secure() {
    with_secure(&KURRENTDB_CLIENT, "node_client.js");
}

/// Consumer groups over TLS, as admin (managing them needs `$ops`/`$admins`).
#[test]
fn python_kurrentdbclient_secure_persistent_subscriptions() {
    with_secure(&KURRENTDBCLIENT, "python_persistent.py");
}

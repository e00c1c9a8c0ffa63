//! Test helpers for archives (this crate's tests and the CLI's): a moto S3
//! server (`python3 -m moto.server`, from PyPI: `pip install
//! 'moto[server]'`) started on a free port, and the SKIPPED / CI=true
//! rule for tests that need it. Standard library only.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A local port nothing listens on (bound, then released).
/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Reports that a test could not run: a `SKIPPED:` line locally, a
/// failure under `CI=true`, where every test must really run.
pub fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("CI=true and the test cannot run: {reason}");
    }
    println!("SKIPPED: {reason}");
}

/// A moto S3 server (`python3 -m moto.server`) on a free local port,
/// killed when dropped.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    port: u16,
    /// Its output, shown when it fails to start (removed on drop).
    log: PathBuf,
}

impl Moto {
    /// Starts moto and waits (up to 60 s) until it answers.
    pub fn start() -> Result<Moto, String> {
        let port = closed_port();
        let log =
            std::env::temp_dir().join(format!("factum-moto-{}-{port}.log", std::process::id()));
        let output = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let errors = output.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .spawn()
            .map_err(|e| format!("cannot run python3 -m moto.server: {e}"))?;
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                return Err(format!(
                    "moto exited at start ({status}; is it installed? pip install 'moto[server]'): {}",
                    moto.log_tail()
                ));
            }
            if moto
                .request("GET", "/")
                .is_ok_and(|(status, _)| status < 500)
            {
                return Ok(moto);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "moto did not answer on port {port} within 60 s: {}",
                    moto.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Creates a bucket through S3's CreateBucket (moto does not check
    /// signatures).
    pub fn create_bucket(&self, bucket: &str) {
        let (status, _) = self.request("PUT", &format!("/{bucket}")).unwrap();
        assert_eq!(status, 200, "creating bucket {bucket}: {}", self.log_tail());
    }

    /// One HTTP/1.1 request without a body: the status code and the
    /// response head.
    fn request(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let response = String::from_utf8_lossy(&response);
        let head = response
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_string();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not HTTP: {head:.200}")))?;
        Ok((status, head))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read(&self.log).unwrap_or_default();
        let start = log.len().saturating_sub(2_000);
        String::from_utf8_lossy(&log[start..]).into_owned()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

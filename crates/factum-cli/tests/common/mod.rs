//! Helpers shared by the CLI's integration tests (each test crate uses
//! some of them).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Starts `factum serve --listen 127.0.0.1:0 --insecure` plus `args` (the
/// backend, the data directory, …) and waits for the line that names the
/// address it listens on; returns the process and that address.
pub fn serve(args: &[&str]) -> (Child, String) {
    serve_command(Command::new(env!("CARGO_BIN_EXE_factum")), args)
}

/// [`serve`] with a command the caller prepared (its environment).
pub fn serve_command(mut command: Command, args: &[&str]) -> (Child, String) {
    let mut server = command
        .args(["serve", "--listen", "127.0.0.1:0", "--insecure"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("factum serve starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split(" on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    (server, addr)
}

/// Starts `factum serve --dev --data DATA --listen 127.0.0.1:0` (TLS with
/// the development CA, users `admin` / `ops` with `changeit`) and reads its
/// stdout up to the "serving" line: the process, the port, the CA file.
pub fn serve_dev(data: &std::path::Path) -> (Child, u16, std::path::PathBuf) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env_remove("FACTUM_DEFAULT_ADMIN_PASSWORD")
        .env_remove("FACTUM_DEFAULT_OPS_PASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("factum serve starts");
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let mut ca = None;
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "exited early");
        if let Some(path) = line.trim().strip_prefix("development CA: ") {
            ca = Some(std::path::PathBuf::from(path));
        }
        if line.contains("serving") {
            break;
        }
    }
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (server, port, ca.expect("the CA's path is printed"))
}

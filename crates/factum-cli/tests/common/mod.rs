//! Helpers shared by the CLI's integration tests (each test crate uses
//! some of them).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Starts `factum serve --listen 127.0.0.1:0 --insecure` plus `args` (the
/// backend, the data directory, …) and waits for the line that names the
/// address it listens on; returns the process and that address.
pub fn serve(args: &[&str]) -> (Child, String) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_factum"))
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

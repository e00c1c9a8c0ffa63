//! Encryption at rest through the binary (issue 19, ADR 45): a master key
//! given to `append` / `serve` encrypts every segment; nothing written is
//! found in the clear in any file; `read`, `verify` and `serve` refuse the
//! store without the key or with another, naming it; a server killed with
//! SIGKILL restarts and serves every acknowledged event; `rekey` moves the
//! data keys to a new master key; `--encrypt-at-rest off` writes in the
//! clear.

use std::path::Path;
use std::process::{Command, Output};

mod common;

fn factum(key: Option<&Path>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_factum"));
    c.env_remove("FACTUM_ENCRYPTION_KEY_FILE")
        .env_remove("FACTUM_ENCRYPTION_KEY")
        .env_remove("FACTUM_ENCRYPT_AT_REST")
        .env_remove("FACTUM_DATA");
    if let Some(key) = key {
        c.env("FACTUM_ENCRYPTION_KEY_FILE", key);
    }
    c
}

fn run(mut c: Command) -> Output {
    let o = c.output().unwrap();
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One HTTP/1.1 request with a JSON body; the status code and the body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (code, body)
}

/// Does any file under `dir` hold `needle`?
fn found_in_files(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap();
        if f.file_type().unwrap().is_file() {
            let bytes = std::fs::read(f.path()).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                hits.push(f.file_name().to_string_lossy().into_owned());
            }
        }
    }
    hits
}

const SECRET: &str = "ivy-at-rest-93c1@example.org";
const LIVE: &str = "ivy-served-5d20@example.org";

#[test]
fn a_store_encrypted_at_rest_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("master.key");
    std::fs::write(&key, format!("{}\n", "5e".repeat(32))).unwrap();
    let body = format!(r#"{{"email":"{SECRET}"}}"#);
    let mut c = factum(Some(&key));
    c.arg("append")
        .arg("--data")
        .arg(&data)
        .args(["customer-ivy", "Registered", &body]);
    assert!(run(c).status.success());
    assert_eq!(found_in_files(&data, SECRET), Vec::<String>::new());
    // Nor the stream name: the index is encrypted too.
    assert_eq!(found_in_files(&data, "customer-ivy"), Vec::<String>::new());

    let read = |key: Option<&Path>| {
        let mut c = factum(key);
        c.arg("read")
            .arg("--data")
            .arg(&data)
            .args(["customer-ivy", "--json"]);
        run(c)
    };
    assert!(text(&read(Some(&key))).contains(SECRET));
    let o = read(None);
    assert!(!o.status.success());
    assert!(text(&o).contains("encrypted at rest"), "{}", text(&o));
    let other = dir.path().join("other.key");
    std::fs::write(&other, "a1".repeat(32)).unwrap();
    let o = read(Some(&other));
    assert!(!o.status.success());
    assert!(text(&o).contains("does not unwrap"), "{}", text(&o));

    // verify reads every frame with the key; without it, one fault.
    let verify = |key: Option<&Path>| {
        let mut c = factum(key);
        c.arg("verify").arg("--data").arg(&data);
        run(c)
    };
    assert!(verify(Some(&key)).status.success());
    let o = verify(None);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("encrypted at rest"), "{}", text(&o));

    // Served with the key: an acknowledged append survives SIGKILL.
    let (mut server, addr) =
        common::serve_command(factum(Some(&key)), &["--data", data.to_str().unwrap()]);
    let (code, answer) = http(
        &addr,
        "POST",
        "/streams/customer-ivy",
        &format!(r#"[{{"type":"EmailChanged","data":{{"email":"{LIVE}"}}}}]"#),
    );
    assert!(code == 200 || code == 201, "{code} {answer}");
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(found_in_files(&data, LIVE), Vec::<String>::new());
    // Without the key the server does not start.
    let mut refused = factum(None);
    refused
        .arg("serve")
        .arg("--data")
        .arg(&data)
        .args(["--insecure", "--listen", "127.0.0.1:0"]);
    let o = run(refused);
    assert!(!o.status.success());
    assert!(text(&o).contains("encrypted at rest"), "{}", text(&o));
    let (mut server, addr) =
        common::serve_command(factum(Some(&key)), &["--data", data.to_str().unwrap()]);
    let (code, events) = http(&addr, "GET", "/streams/customer-ivy", "");
    assert_eq!(code, 200, "{events}");
    assert!(events.contains(SECRET) && events.contains(LIVE), "{events}");
    server.kill().unwrap();
    server.wait().unwrap();

    // rekey: the data keys move to the new master key, data unchanged.
    let new = dir.path().join("new.key");
    std::fs::write(&new, "7d".repeat(32)).unwrap();
    let mut c = factum(Some(&key));
    c.arg("rekey")
        .arg("--data")
        .arg(&data)
        .arg("--new-encryption-key-file")
        .arg(&new);
    let o = run(c);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("re-wrapped the data keys"),
        "{}",
        text(&o)
    );
    let after = text(&read(Some(&new)));
    assert!(after.contains(SECRET) && after.contains(LIVE), "{after}");
    assert!(verify(Some(&new)).status.success());

    // A backup and its restore stay encrypted; restore checks with the key.
    let backup = dir.path().join("backup");
    let restored = dir.path().join("restored");
    let mut c = factum(Some(&new));
    c.arg("backup")
        .arg("--data")
        .arg(&data)
        .arg("--to")
        .arg(&backup);
    assert!(run(c).status.success());
    assert_eq!(found_in_files(&backup, SECRET), Vec::<String>::new());
    let mut c = factum(None);
    c.arg("restore")
        .arg("--from")
        .arg(&backup)
        .arg("--data")
        .arg(&restored);
    let o = run(c);
    assert!(!o.status.success());
    assert!(text(&o).contains("encrypted at rest"), "{}", text(&o));
    let mut c = factum(Some(&new));
    c.arg("restore")
        .arg("--from")
        .arg(&backup)
        .arg("--data")
        .arg(&restored)
        .arg("--force");
    let o = run(c);
    assert!(o.status.success(), "{}", text(&o));
    let mut c = factum(Some(&new));
    c.arg("read")
        .arg("--data")
        .arg(&restored)
        .args(["customer-ivy", "--json"]);
    let o = run(c);
    assert!(
        text(&o).contains(SECRET) && text(&o).contains(LIVE),
        "{}",
        text(&o)
    );
}

#[test]
fn encryption_at_rest_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("master.key");
    std::fs::write(&key, "5e".repeat(32)).unwrap();
    let mut c = factum(Some(&key));
    c.env("FACTUM_ENCRYPT_AT_REST", "off")
        .arg("append")
        .arg("--data")
        .arg(&data)
        .args(["order-1", "Placed", &format!(r#"{{"email":"{SECRET}"}}"#)]);
    assert!(run(c).status.success());
    assert!(!found_in_files(&data, SECRET).is_empty());
    let mut c = factum(Some(&key));
    c.env("FACTUM_ENCRYPT_AT_REST", "maybe")
        .arg("read")
        .arg("--data")
        .arg(&data)
        .arg("order-1");
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

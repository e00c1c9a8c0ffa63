//! Online backup through a running server, then `factum restore` (issue 17,
//! ADR 32): `POST /admin/backup` while a client appends copies every event
//! acknowledged before the request; `factum backup` refuses a store a server
//! holds (and says how to ask the server); the server writes only under
//! its `--backup-root`; after the server stops, an
//! incremental `factum backup` copies only new files; `factum restore`
//! makes a store that verifies and holds every acknowledged event, and
//! never replaces a store without `--force`.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use factum_client::{Client, Retry};
use factum_core::{EventData, EventStore, ExpectedRevision, ReadAll, StreamName, Uuid};

mod common;

fn factum(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(args)
        .output()
        .expect("factum runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// One HTTP/1.1 POST with a JSON body; the status line and the body.
fn post(addr: &str, path: &str, body: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

async fn ids_in(dir: &Path) -> HashSet<Uuid> {
    let engine = factum_engine::Engine::open(dir).unwrap();
    let mut ids = HashSet::new();
    let mut from = factum_core::Position(0);
    loop {
        let page = engine
            .read_all(ReadAll::forwards().from_position(from).max_count(4096))
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        from = factum_core::Position(last.position.0 + 1);
        ids.extend(page.iter().map(|e| e.id));
    }
    engine.close().unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backup_then_restore() {
    let root = tempfile::tempdir().unwrap();
    let (data, dest, restored) = (
        root.path().join("data"),
        root.path().join("backup"),
        root.path().join("restored"),
    );
    let data_s = data.to_str().unwrap().to_owned();
    let dest_s = dest.to_str().unwrap().to_owned();
    let root_s = root.path().to_str().unwrap().to_owned();
    let (mut server, addr) = common::serve(&["--data", &data_s, "--backup-root", &root_s]);
    let client = Client::connect(&format!("http://{addr}"))
        .await
        .unwrap()
        .with_retry(Retry::none());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            let stream = StreamName::new("order-1").unwrap();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let e = EventData::json("Placed", &serde_json::json!({ "i": i })).unwrap();
                let id = e.id;
                client
                    .append(stream.clone(), ExpectedRevision::Any, vec![e])
                    .await
                    .unwrap();
                acked.lock().unwrap().push(id);
                i += 1;
            }
        })
    };
    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Only under the backup root.
    for outside in ["/tmp/elsewhere", "../elsewhere", "backup/../../x"] {
        let answer = post(&addr, "/admin/backup", &format!("{{\"to\": {outside:?}}}"));
        assert!(answer.starts_with("HTTP/1.1 400"), "{outside}: {answer}");
        assert!(answer.contains("backup root"), "{answer}");
    }
    let before: Vec<Uuid> = acked.lock().unwrap().clone();
    let answer = tokio::task::spawn_blocking({
        // Relative to the root; an absolute path under it works too.
        let (addr, body) = (addr.clone(), "{\"to\": \"backup\"}".to_owned());
        move || post(&addr, "/admin/backup", &body)
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"files_copied\""), "{answer}");

    // The CLI does not open a store a server holds; it says what to do.
    let (ok, text) = factum(&["backup", "--data", &data_s, "--to", &dest_s]);
    assert!(!ok && text.contains("/admin/backup"), "{text}");
    let absolute = post(&addr, "/admin/backup", &format!("{{\"to\": {dest_s:?}}}"));
    assert!(absolute.starts_with("HTTP/1.1 200"), "{absolute}");

    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let all: Vec<Uuid> = acked.lock().unwrap().clone();
    server.kill().unwrap();
    server.wait().unwrap();

    // Restored from the online backup: everything acknowledged before it.
    let restored_s = restored.to_str().unwrap().to_owned();
    let (ok, text) = factum(&["restore", "--from", &dest_s, "--data", &restored_s]);
    assert!(ok && text.contains("verify: ok"), "{text}");
    let ids = ids_in(&restored).await;
    let missing = before.iter().filter(|id| !ids.contains(id)).count();
    assert_eq!(
        missing, 0,
        "acknowledged before the backup, missing from it"
    );

    // Offline and incremental: only what changed is copied.
    let (ok, text) = factum(&["backup", "--data", &data_s, "--to", &dest_s]);
    assert!(ok, "{text}");
    assert!(text.contains("copied)"), "{text}");
    let (ok, text) = factum(&["restore", "--from", &dest_s, "--data", &restored_s]);
    assert!(!ok && text.contains("--force"), "{text}");
    let (ok, text) = factum(&[
        "restore",
        "--from",
        &dest_s,
        "--data",
        &restored_s,
        "--force",
    ]);
    assert!(ok && text.contains("verify: ok"), "{text}");
    let ids = ids_in(&restored).await;
    assert!(
        all.iter().all(|id| ids.contains(id)),
        "every acknowledged event"
    );
}

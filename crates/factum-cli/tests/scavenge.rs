//! `factum scavenge` (ADR 33) killed with SIGKILL at random moments: each
//! round copies a store whose events are partly hidden, runs the real
//! binary on the copy (throttled, so the kill lands inside it), kills it,
//! reopens the store and checks that `verify` passes and that everything
//! visible is what it was; a scavenge run to its end afterwards then leaves
//! `$all` holding exactly the visible events. Rounds: 3, or
//! `FACTUM_SCAVENGE_KILL_ROUNDS` (20 for the proof).

use std::path::Path;
use std::process::{Command, Stdio};

mod common;
use std::time::Duration;

use factum_core::testkit::visible::{visible_dump, write_hidden_and_visible, VisibleDump};
use factum_core::{EventData, EventStore, ExpectedRevision, StreamName, Uuid};
use factum_engine::{Engine, EngineConfig};

fn rand_u64() -> u64 {
    u64::from_le_bytes(Uuid::new_v4().as_bytes()[..8].try_into().unwrap())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

async fn dump(dir: &Path, streams: &[StreamName]) -> VisibleDump {
    let engine = Engine::open(dir).unwrap_or_else(|e| panic!("reopen: {e}"));
    let d = visible_dump(&engine, streams).await;
    engine.close().unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scavenge_killed_at_random_moments_leaves_old_or_new_state() {
    let rounds: u32 = std::env::var("FACTUM_SCAVENGE_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let original = tempfile::tempdir().unwrap();
    let streams = {
        let config = EngineConfig {
            segment_bytes: 64 * 1024,
            ..EngineConfig::default()
        };
        let (engine, _) = Engine::open_with(original.path(), config).unwrap();
        let sc = write_hidden_and_visible(&engine, 6, 800).await;
        let filler = StreamName::new("filler-1").unwrap();
        for _ in 0..20 {
            let events = (0..10)
                .map(|_| {
                    EventData::json("Filled", &serde_json::json!({"pad": "z".repeat(800)})).unwrap()
                })
                .collect();
            engine
                .append(filler.clone(), ExpectedRevision::Any, events)
                .await
                .unwrap();
        }
        engine.close().unwrap();
        let mut s = sc.streams;
        s.push(filler);
        s
    };
    let expected = dump(original.path(), &streams).await;
    let bytes: u64 = std::fs::read_dir(original.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let (mut completed, mut inside) = (0, 0);
    for round in 0..rounds {
        let work = tempfile::tempdir().unwrap();
        copy_dir(original.path(), work.path());
        // About a second of work at this rate (it reads and writes each byte).
        let rate = (2 * bytes).to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_factum"))
            .args(["scavenge", "--data"])
            .arg(work.path())
            .args(["--bytes-per-second", &rate])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 + rand_u64() % 1300));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        if status.success() {
            completed += 1;
        }
        // Killed while a segment's new version was being written (or
        // before its swap): the open removes or finishes it.
        if std::fs::read_dir(work.path()).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".rewrite")
        }) {
            inside += 1;
        }
        let got = dump(work.path(), &streams).await;
        assert_eq!(got.streams, expected.streams, "round {round}");
        assert_eq!(got.links, expected.links, "round {round}");
        assert_eq!(got.all, expected.all, "round {round}");
        let report = factum_engine::verify(work.path()).unwrap();
        assert!(report.ok(), "round {round}: verify: {:?}", report.faults);
        assert!(
            !std::fs::read_dir(work.path()).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".rewrite")),
            "round {round}: the open left a rewrite file"
        );
        // Finished afterwards: nothing hidden is left.
        let out = Command::new(env!("CARGO_BIN_EXE_factum"))
            .args(["scavenge", "--data"])
            .arg(work.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let done = dump(work.path(), &streams).await;
        assert_eq!(done.streams, expected.streams, "round {round}");
        assert_eq!(done.all_raw, expected.all, "round {round}");
        let report = factum_engine::verify(work.path()).unwrap();
        assert!(report.ok(), "round {round}: verify: {:?}", report.faults);
    }
    eprintln!(
        "{rounds} rounds: {completed} scavenges finished before the kill, {inside} killed inside a segment rewrite"
    );
}

/// One HTTP/1.1 request; the status code and the body.
fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
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

/// A served store (`--segment-bytes`) scavenges through KurrentDB's
/// Operations service and HTTP admin routes; progress and result land in
/// `$scavenges-<id>` (linked from `$scavenges`); what clients see is the
/// same after; ServerFeatures lists the operations; `Shutdown` stops the
/// server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_store_scavenges_through_operations_and_admin_routes() {
    use factum_proto::operations::operations_client::OperationsClient;
    use factum_proto::operations::{
        scavenge_resp::ScavengeResult, start_scavenge_req, StartScavengeReq,
    };
    let dir = tempfile::tempdir().unwrap();
    let streams = {
        let config = EngineConfig {
            segment_bytes: 64 * 1024,
            ..EngineConfig::default()
        };
        let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
        let sc = write_hidden_and_visible(&engine, 3, 800).await;
        engine.close().unwrap();
        sc.streams
    };
    let data = dir.path().to_str().unwrap().to_owned();
    let (mut server, addr) = common::serve(&["--data", &data, "--segment-bytes", "65536"]);
    let client = factum_client::Client::connect(&format!("http://{addr}"))
        .await
        .unwrap();
    // Filler through the server: the hidden events end up in sealed segments.
    let filler = StreamName::new("filler-1").unwrap();
    for _ in 0..20 {
        let events = (0..10)
            .map(|_| {
                EventData::json("Filled", &serde_json::json!({"pad": "z".repeat(800)})).unwrap()
            })
            .collect();
        client
            .append(filler.clone(), ExpectedRevision::Any, events)
            .await
            .unwrap();
    }
    let before = visible_dump(&client, &streams).await;

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let features =
        factum_proto::server_features::server_features_client::ServerFeaturesClient::new(
            channel.clone(),
        )
        .get_supported_methods(factum_proto::shared::Empty {})
        .await
        .unwrap()
        .into_inner();
    let ops: Vec<&str> = features
        .methods
        .iter()
        .filter(|m| m.service_name == "event_store.client.operations.operations")
        .map(|m| m.method_name.as_str())
        .collect();
    for m in [
        "startscavenge",
        "stopscavenge",
        "mergeindexes",
        "shutdown",
        "restartpersistentsubscriptions",
    ] {
        assert!(ops.contains(&m), "{m} in {ops:?}");
    }
    assert!(!ops.contains(&"resignnode"));

    let mut operations = OperationsClient::new(channel);
    let started = operations
        .start_scavenge(StartScavengeReq {
            options: Some(start_scavenge_req::Options {
                thread_count: 1,
                start_from_chunk: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.scavenge_result, ScavengeResult::Started as i32);
    let id = started.scavenge_id;
    // Its stream gets started, chunks and completed events.
    let stream = StreamName::new(format!("$scavenges-{id}")).unwrap();
    let mut types = Vec::new();
    for _ in 0..100 {
        types = match client
            .read_stream(factum_core::ReadStream::forwards(stream.clone()))
            .await
        {
            Ok(events) => events.iter().map(|e| e.event_type.clone()).collect(),
            Err(_) => Vec::new(),
        };
        if types.last().is_some_and(|t| t == "$scavengeCompleted") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        types.first().map(String::as_str),
        Some("$scavengeStarted"),
        "{types:?}"
    );
    assert_eq!(
        types.last().map(String::as_str),
        Some("$scavengeCompleted"),
        "{types:?}"
    );
    assert!(
        types.iter().any(|t| t == "$scavengeChunksCompleted"),
        "{types:?}"
    );
    let completed = client
        .read_stream(factum_core::ReadStream::backwards(stream.clone()).max_count(1))
        .await
        .unwrap();
    let result: serde_json::Value = serde_json::from_slice(&completed[0].data).unwrap();
    assert_eq!(result["result"], "Success", "{result}");
    assert!(result["spaceSaved"].as_u64().unwrap() > 0, "{result}");
    let index = client
        .read_stream(factum_core::ReadStream::forwards(
            StreamName::new("$scavenges").unwrap(),
        ))
        .await
        .unwrap();
    let links: Vec<String> = index
        .iter()
        .map(|e| String::from_utf8_lossy(&e.data).into_owned())
        .collect();
    assert_eq!(links.len(), 2, "{links:?}");
    assert!(
        links
            .iter()
            .all(|l| l.ends_with(&format!("@$scavenges-{id}"))),
        "{links:?}"
    );
    let (code, last) = http(&addr, "GET", "/admin/scavenge/last");
    assert_eq!(code, 200, "{last}");
    assert!(last.contains(&id) && last.contains("\"Success\""), "{last}");

    let after = visible_dump(&client, &streams).await;
    assert_eq!(after.streams, before.streams);
    assert_eq!(after.links, before.links);
    assert_eq!(after.all, before.all);

    // HTTP: bad throttle refused; a throttled one starts and stops.
    let (code, body) = http(&addr, "POST", "/admin/scavenge?throttlePercent=0");
    assert_eq!(code, 400, "{body}");
    let (code, body) = http(
        &addr,
        "POST",
        "/admin/scavenge?throttlePercent=1&threshold=0",
    );
    assert_eq!(code, 200, "{body}");
    let started: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = started["scavengeId"].as_str().unwrap().to_owned();
    let (code, _) = http(&addr, "DELETE", &format!("/admin/scavenge/{id}"));
    assert!(code == 200 || code == 404, "{code}");
    let (code, _) = http(&addr, "DELETE", "/admin/scavenge/not-an-id");
    assert_eq!(code, 400);

    // Shutdown: the server stops by itself.
    operations
        .shutdown(factum_proto::shared::Empty {})
        .await
        .unwrap();
    let mut waited = 0;
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        waited += 1;
        assert!(waited < 300, "the server did not stop after Shutdown");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}");
    let report = factum_engine::verify(dir.path()).unwrap();
    assert!(report.ok(), "{:?}", report.faults);
}

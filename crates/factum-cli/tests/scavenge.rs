//! `factum scavenge` (ADR 33) killed with SIGKILL at random moments: each
//! round copies a store whose events are partly hidden, runs the real
//! binary on the copy (throttled, so the kill lands inside it), kills it,
//! reopens the store and checks that `verify` passes and that everything
//! visible is what it was; a scavenge run to its end afterwards then leaves
//! `$all` holding exactly the visible events. Rounds: 3, or
//! `FACTUM_SCAVENGE_KILL_ROUNDS` (20 for the proof).

use std::path::Path;
use std::process::{Command, Stdio};
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
                .map(|_| EventData::json("Filled", &serde_json::json!({"pad": "z".repeat(800)})).unwrap())
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
        if std::fs::read_dir(work.path())
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".rewrite"))
        {
            inside += 1;
        }
        let got = dump(work.path(), &streams).await;
        assert_eq!(got.streams, expected.streams, "round {round}");
        assert_eq!(got.links, expected.links, "round {round}");
        assert_eq!(got.all, expected.all, "round {round}");
        let report = factum_engine::verify(work.path()).unwrap();
        assert!(report.ok(), "round {round}: verify: {:?}", report.faults);
        assert!(
            !std::fs::read_dir(work.path())
                .unwrap()
                .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".rewrite")),
            "round {round}: the open left a rewrite file"
        );
        // Finished afterwards: nothing hidden is left.
        let out = Command::new(env!("CARGO_BIN_EXE_factum"))
            .args(["scavenge", "--data"])
            .arg(work.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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

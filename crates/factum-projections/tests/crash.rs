//! kill -9 of a real process running a continuous projection that emits and
//! links: after each restart it resumes from its last commit; at the end
//! every emitted event and link exists exactly once and the state equals a
//! replay from scratch.
//!
//! The child is this test binary again (`crash_child`, ignored unless run
//! by the parent with `FACTUM_PROJECTION_CHILD` set).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use factum_core::{EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, StreamName};
use factum_engine::Engine;
use factum_projections::{
    CheckpointPolicy, Create, InputEvent, Limits, Mode, Projection, Projections,
};

const EVENTS: u64 = 1500;

const QUERY: &str = r#"
fromCategory("order").when({
    $init: () => ({ count: 0, sum: 0, last: {} }),
    Placed: (s, e) => {
        s.count += 1;
        s.sum += e.body.i;
        s.last[e.streamId] = e.body.i;
        emit("audit-" + (e.body.i % 7), "Seen", { i: e.body.i });
        linkTo("orders-linked", e);
        return s;
    }
})"#;

fn child_env() -> Option<(String, String)> {
    let dir = std::env::var("FACTUM_PROJECTION_CHILD").ok()?;
    let mode = std::env::var("FACTUM_PROJECTION_CHILD_MODE").unwrap_or_default();
    Some((dir, mode))
}

/// The child: runs the projection over the store; prints its committed
/// position as it goes; in `finish` mode exits once it has caught up.
#[test]
#[ignore = "run by kill_9_during_a_continuous_projection_that_emits as its child"]
fn crash_child() {
    let Some((dir, mode)) = child_env() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = Arc::new(Engine::open_with(&dir, Default::default()).unwrap().0);
        let policy = CheckpointPolicy {
            after_events: 37,
            after_bytes: 1 << 20,
            after_time: Duration::from_millis(20),
            ..CheckpointPolicy::default()
        };
        let p = Projections::new(store.clone(), Limits::default(), policy);
        p.start().await.unwrap();
        if p.settings("crash").await.is_err() {
            p.create(Create {
                name: "crash".into(),
                query: QUERY.into(),
                mode: Mode::Continuous,
                emit_enabled: true,
                track_emitted_streams: true,
                enabled: true,
                checkpoints_enabled: true,
                run_as: Default::default(),
                engine_version: 1,
            })
            .await
            .unwrap();
        }
        loop {
            let s = p.statistics(Some("crash")).await.unwrap().remove(0);
            assert_ne!(s.status, "Faulted", "{}", s.state_reason);
            println!(
                "position {} {}",
                s.position, s.events_processed_after_restart
            );
            let state = p.state("crash", "").await.unwrap();
            let done = state.as_deref().is_some_and(|s| {
                serde_json::from_str::<serde_json::Value>(s).unwrap()["count"] == EVENTS
            });
            if mode == "finish" && done {
                println!("state {}", state.unwrap());
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        p.shutdown().await;
        store.close().unwrap();
    });
}

fn spawn_child(dir: &std::path::Path, mode: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FACTUM_PROJECTION_CHILD", dir)
        .env("FACTUM_PROJECTION_CHILD_MODE", mode)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn kill_9_during_a_continuous_projection_that_emits() {
    if child_env().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Engine::open_with(dir.path(), Default::default()).unwrap().0;
        for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(100) {
            for &i in chunk {
                store
                    .append(
                        StreamName::new(format!("order-{}", i % 13)).unwrap(),
                        ExpectedRevision::Any,
                        vec![EventData::json("Placed", &serde_json::json!({ "i": i })).unwrap()],
                    )
                    .await
                    .unwrap();
            }
        }
        store.close().unwrap();
    });

    // Kill it three times at growing points while it works.
    let mut kills = 0;
    // Each kill lands once the child has handled events (uncommitted work
    // in memory, commits possibly in flight), a few lines later each time.
    for wait_for_lines in [1usize, 3, 8] {
        let mut child = spawn_child(dir.path(), "run");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            let handled = line
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n > 0);
            if line.starts_with("position ") && (handled || seen > 0) {
                eprintln!("kill {kills} after: {line}");
                seen += 1;
                if seen >= wait_for_lines {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    assert_eq!(kills, 3);

    let child = spawn_child(dir.path(), "finish");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let state_line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("state "))
        .expect("a final state");
    let state: serde_json::Value = serde_json::from_str(state_line).unwrap();

    rt.block_on(async {
        let store = Engine::open_with(dir.path(), Default::default()).unwrap().0;
        // Every emitted event exactly once.
        let mut seen = vec![0u32; EVENTS as usize];
        for k in 0..7 {
            let events = store
                .read_stream(ReadStream::forwards(
                    StreamName::new(format!("audit-{k}")).unwrap(),
                ))
                .await
                .unwrap();
            for e in events {
                let i = e.json::<serde_json::Value>().unwrap()["i"]
                    .as_u64()
                    .unwrap();
                seen[i as usize] += 1;
            }
        }
        assert!(
            seen.iter().all(|&n| n == 1),
            "emitted counts: {:?}",
            seen.iter()
                .enumerate()
                .filter(|(_, &n)| n != 1)
                .take(10)
                .collect::<Vec<_>>()
        );
        let links = store
            .read_stream(ReadStream::forwards(
                StreamName::new("orders-linked").unwrap(),
            ))
            .await
            .unwrap();
        assert_eq!(links.len() as u64, EVENTS);
        let mut targets: Vec<Vec<u8>> = links.iter().map(|e| e.data.to_vec()).collect();
        targets.sort();
        targets.dedup();
        assert_eq!(targets.len() as u64, EVENTS, "every link once");

        // The state equals a replay from scratch in a fresh sandbox.
        let mut replay = Projection::compile(QUERY, Limits::default()).unwrap();
        replay.load_partition("", None).unwrap();
        let all = store.read_all(ReadAll::forwards()).await.unwrap();
        for e in all.iter().filter(|e| e.stream.category() == Some("order")) {
            let body = String::from_utf8_lossy(&e.data).into_owned();
            let id = e.id.to_string();
            let input = InputEvent {
                position: e.position.0,
                created_micros: e.created.as_micros(),
                stream: e.stream.as_str(),
                sequence_number: e.revision.0,
                event_type: &e.event_type,
                body: &body,
                metadata: "",
                link_metadata: None,
                is_json: true,
                category: "order",
                event_id: &id,
            };
            replay.handle("", false, &input).unwrap();
        }
        let replayed: serde_json::Value =
            serde_json::from_str(&replay.state("").unwrap().unwrap()).unwrap();
        assert_eq!(state, replayed);
        assert_eq!(state["count"], EVENTS);
        store.close().unwrap();
    });
}

//! kill -9 of a real `factum serve` under load from real clients, round
//! after round on the same data directory: every append a client saw
//! acknowledged is in the store after each restart, exactly once, and
//! `factum verify` passes at the end. Rounds: 4, or `FACTUM_CRASH_ROUNDS`.

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use factum_client::Client;
use factum_core::{EventData, EventStore, ExpectedRevision, ReadAll, StreamName, Uuid};

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill_9_of_the_server_round_after_round() {
    let rounds: u32 = std::env::var("FACTUM_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let acked: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    // One round more than kills: the last one only checks.
    for round in 0..=rounds {
        let (mut server, addr) = common::serve(&["--data", dir.to_str().unwrap()]);
        let client = Client::connect(&format!("esdb://{addr}?tls=false"))
            .await
            .unwrap();
        // Everything acknowledged before this restart is there, once.
        let events = client.read_all(ReadAll::forwards()).await.unwrap();
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        let unique: HashSet<Uuid> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "round {round}: duplicate events");
        let missing = acked
            .lock()
            .unwrap()
            .iter()
            .filter(|id| !unique.contains(id))
            .count();
        assert_eq!(missing, 0, "round {round}: acknowledged events lost");
        if round == rounds {
            server.kill().unwrap();
            server.wait().unwrap();
            break;
        }
        // Load: writers appending one or a few events per call.
        let mut writers = Vec::new();
        for w in 0..8u32 {
            let client = client.clone();
            let acked = acked.clone();
            writers.push(tokio::spawn(async move {
                let stream = StreamName::new(format!("crash-{w}")).unwrap();
                for i in 0..u32::MAX {
                    let events: Vec<EventData> = (0..1 + i % 3)
                        .map(|k| {
                            EventData::json(
                                "Written",
                                &serde_json::json!({ "w": w, "i": i, "k": k }),
                            )
                            .unwrap()
                        })
                        .collect();
                    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
                    match client
                        .append(stream.clone(), ExpectedRevision::Any, events)
                        .await
                    {
                        Ok(_) => acked.lock().unwrap().extend(ids),
                        Err(_) => return,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(150 + 97 * round as u64 % 300)).await;
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        for w in writers {
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("a writer did not notice the server was gone")
                .unwrap();
        }
        assert!(
            !acked.lock().unwrap().is_empty(),
            "round {round}: nothing was acknowledged"
        );
    }
    let verify = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(["verify", "--data"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "verify failed: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    eprintln!(
        "{rounds} rounds of kill -9, {} acknowledged events kept",
        acked.lock().unwrap().len()
    );
}

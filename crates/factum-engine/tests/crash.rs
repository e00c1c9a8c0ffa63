//! Kill -9 under load: every acknowledged append survives, no partial batch
//! is ever visible, positions and revisions stay dense, `verify` passes.
//!
//! The test re-runs its own binary as the child (`crash_child` with
//! `FACTUM_CRASH_CHILD=<dir>`), which appends from several tasks and prints
//! one `ack` line per acknowledged append; the parent kills it with SIGKILL
//! at a random moment, reopens the store and checks. Rounds alternate small
//! segments (many rolls) and the default size (whole stretches of
//! preallocated zeros, ADR 10). Rounds: 20, or `FACTUM_CRASH_ROUNDS`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use factum_core::{EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, StreamName, Uuid};
use factum_engine::{Engine, EngineConfig};

mod common;

const STREAMS: u64 = 16;

fn rand_u64() -> u64 {
    u64::from_le_bytes(Uuid::new_v4().as_bytes()[..8].try_into().unwrap())
}

/// The child: appends until killed. Does nothing unless FACTUM_CRASH_CHILD is set.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("FACTUM_CRASH_CHILD") else {
        return;
    };
    let rt = common::runtime();
    rt.block_on(async move {
        // Small segments (many rolls per round) or, every other round, the
        // default size (whole 4 MiB stretches of preallocated zeros).
        let segment_bytes = std::env::var("FACTUM_CRASH_SEGMENT_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256 * 1024);
        let config = EngineConfig {
            segment_bytes,
            index_flush_entries: 2_000,
            index_flush_interval: Duration::from_millis(50),
            encryption: master_key(),
            ..EngineConfig::default()
        };
        let (engine, _) = Engine::open_with(&dir, config).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let stream =
                        StreamName::new(format!("crash-{}", rand_u64() % STREAMS)).unwrap();
                    let n = 1 + rand_u64() % 5;
                    let batch = Uuid::new_v4();
                    let events = (0..n)
                        .map(|i| {
                            let pad = "p".repeat((rand_u64() % 2000) as usize);
                            EventData::json(
                                "Loaded",
                                &serde_json::json!({ "batch": batch, "i": i, "n": n, "pad": pad }),
                            )
                            .unwrap()
                        })
                        .collect();
                    let r = engine
                        .append(stream.clone(), ExpectedRevision::Any, events)
                        .await
                        .unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {stream} {} {} {n}", r.revision.0, r.position.0).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

struct Ack {
    stream: String,
    last_revision: u64,
    last_position: u64,
    count: u64,
}

/// The master key of an encrypted round (`FACTUM_CRASH_KEY`, hex).
fn master_key() -> Option<factum_engine::MasterKey> {
    let hex = std::env::var("FACTUM_CRASH_KEY").ok()?;
    Some(factum_engine::MasterKey::new(
        factum_crypto::SecretKey::from_hex(&hex).unwrap(),
    ))
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    sigkill_rounds(None, 20);
}

/// The same with the store encrypted at rest (ADR 45): a kill tears the
/// writer's page versions too.
#[test]
fn acknowledged_appends_survive_sigkill_encrypted() {
    sigkill_rounds(Some("6b".repeat(32)), 10);
}

fn sigkill_rounds(key: Option<String>, default_rounds: u32) {
    let rounds: u32 = std::env::var("FACTUM_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_rounds);
    let master = key
        .as_deref()
        .map(|h| factum_engine::MasterKey::new(factum_crypto::SecretKey::from_hex(h).unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let rt = common::runtime();
    let mut acked_total = 0usize;
    let mut rounds_with_zeros = 0u32;
    for round in 0..rounds {
        let mut child = Command::new(&exe);
        if let Some(k) = &key {
            child.env("FACTUM_CRASH_KEY", k);
        }
        let mut child = child
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("FACTUM_CRASH_CHILD", dir.path())
            .env(
                "FACTUM_CRASH_SEGMENT_BYTES",
                if round % 2 == 0 {
                    256 * 1024
                } else {
                    256 << 20
                }
                .to_string(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let collector = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() == 5 && f[0] == "ack" {
                    acks.push(Ack {
                        stream: f[1].to_string(),
                        last_revision: f[2].parse().unwrap(),
                        last_position: f[3].parse().unwrap(),
                        count: f[4].parse().unwrap(),
                    });
                }
            }
            acks
        });
        std::thread::sleep(Duration::from_millis(60 + rand_u64() % 400));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acks = collector.join().unwrap();
        acked_total += acks.len();
        if rt.block_on(check(dir.path(), master.clone(), &acks, round)) > 0 {
            rounds_with_zeros += 1;
        }
        let report = factum_engine::verify_store(dir.path(), None, master.as_ref()).unwrap();
        assert!(
            report.ok(),
            "round {round}: verify found {:?}",
            report.faults
        );
    }
    assert!(acked_total > 0, "the child never acknowledged an append");
    // The child's appends are small, so its writer keeps zeros ahead (ADR
    // 10): kills must have left some, and recovery must have kept them. (In
    // an encrypted store they lie below the pages: a segment's logical
    // length ends at its last page holding anything, ADR 45, so recovery
    // never meets them; fresh pages' first versions rely on them instead.)
    assert!(
        rounds < 5 || rounds_with_zeros > 0 || master.is_some(),
        "no round left preallocated zeros: the crash test does not cover them"
    );
    eprintln!(
        "{rounds} rounds, {acked_total} acknowledged appends checked, {rounds_with_zeros} rounds reopened with preallocated zeros"
    );
}

/// Reopens and checks; returns the preallocated bytes recovery found.
async fn check(
    dir: &std::path::Path,
    encryption: Option<factum_engine::MasterKey>,
    acks: &[Ack],
    round: u32,
) -> u64 {
    let config = EngineConfig {
        encryption,
        ..EngineConfig::default()
    };
    let (engine, recovery) = Engine::open_with(dir, config)
        .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
    // Every acknowledged append is there, where it was acknowledged.
    for a in acks {
        let s = StreamName::new(&a.stream).unwrap();
        let first = a.last_revision + 1 - a.count;
        let events = engine
            .read_stream(
                ReadStream::forwards(s)
                    .from_revision(factum_core::StreamRevision(first))
                    .max_count(a.count),
            )
            .await
            .unwrap();
        assert_eq!(
            events.len() as u64,
            a.count,
            "round {round}: acknowledged batch missing"
        );
        assert_eq!(
            events.last().unwrap().position.0,
            a.last_position,
            "round {round}: moved"
        );
    }
    // Dense positions, dense revisions, whole batches only.
    let all = engine.read_all(ReadAll::forwards()).await.unwrap();
    let mut batches: HashMap<String, (u64, u64)> = HashMap::new();
    let mut next_rev: HashMap<String, u64> = HashMap::new();
    for (i, e) in all.iter().enumerate() {
        assert_eq!(
            e.position.0,
            i as u64 + 1,
            "round {round}: positions not dense from 1"
        );
        let want = next_rev.entry(e.stream.to_string()).or_insert(0);
        assert_eq!(
            e.revision.0, *want,
            "round {round}: revisions not dense in {}",
            e.stream
        );
        *want += 1;
        let v: serde_json::Value = e.json().unwrap();
        let entry = batches
            .entry(v["batch"].as_str().unwrap().to_string())
            .or_insert((0, v["n"].as_u64().unwrap()));
        entry.0 += 1;
    }
    for (batch, (seen, n)) in batches {
        assert_eq!(seen, n, "round {round}: batch {batch} is partial");
    }
    engine.close().unwrap();
    recovery.preallocated
}

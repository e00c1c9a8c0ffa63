//! Faults at the system-call boundary (ADR 12): a failed fdatasync on the
//! writer's thread or on the preallocation thread stops the writer for
//! good (nothing is acknowledged after it, every append answers
//! `Unavailable` naming the file and the OS error), and a fresh open holds
//! exactly the acknowledged events: never the bytes of the group whose
//! fsync failed, though the page cache still holds them. A failed write is
//! not fatal: it is undone and appends go on.
//!
//! The test re-runs its own binary as the child (`fsync_child` with
//! `FACTUM_FSYNC_CHILD=<dir>`) with `LD_PRELOAD` of the shim
//! `tests/fault_shim.c`, built here with `cc`; the child appends from four
//! tasks and prints one line per answer. Without a C compiler the tests
//! print SKIPPED, and fail under `CI=true`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use factum_core::{EventData, EventStore, ExpectedRevision, ReadAll, StreamName};
use factum_engine::fatal::{read_marker, MARKER_FILE};
use factum_engine::format::{check_frame, FrameCheck};
use factum_engine::{Engine, EngineConfig};

mod common;

const TASKS: u64 = 4;
const ATTEMPTS: u64 = 150;

/// The child: appends `ATTEMPTS` times from each of `TASKS` tasks, one
/// small event each (so zeros are preallocated ahead), printing
/// `ack <task> <revision> <position>` or `err <task> <error>`; then whether
/// the store stopped for good, and what `close` answered.
#[test]
fn fsync_child() {
    let Ok(dir) = std::env::var("FACTUM_FSYNC_CHILD") else {
        return;
    };
    // The harness printed `test fsync_child ... ` without a line end.
    println!();
    let rt = common::runtime();
    rt.block_on(async move {
        // Small segments, for faults while rolling.
        let mut config = match std::env::var("FACTUM_FSYNC_SEGMENT_BYTES") {
            Ok(v) => EngineConfig {
                segment_bytes: v.parse().unwrap(),
                ..EngineConfig::default()
            },
            Err(_) => EngineConfig::default(),
        };
        // Encrypted at rest (ADR 45) when the parent gives a key.
        config.encryption = std::env::var(KEY_ENV).ok().map(|hex| master(&hex));
        let (engine, _) = Engine::open_with(&dir, config).unwrap();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                let stream = StreamName::new(format!("task-{t}")).unwrap();
                let mut lines = Vec::new();
                for i in 0..ATTEMPTS {
                    let event = EventData::json("Tried", &serde_json::json!({ "task": t, "i": i }))
                        .unwrap();
                    match engine
                        .append(stream.clone(), ExpectedRevision::Any, vec![event])
                        .await
                    {
                        Ok(r) => lines.push(format!("ack {t} {} {}", r.revision.0, r.position.0)),
                        Err(e) => {
                            lines.push(format!("err {t} {e}"));
                            // Give a writer that wrongly goes on a chance to.
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                }
                lines
            }));
        }
        for t in tasks {
            for line in t.await.unwrap() {
                println!("{line}");
            }
        }
        match tokio::time::timeout(Duration::from_secs(2), engine.stopped_for_good()).await {
            Ok(why) => println!("fatal {why}"),
            Err(_) => println!("not-fatal"),
        }
        match engine.close() {
            Ok(()) => println!("close ok"),
            Err(e) => println!("close err {e}"),
        }
    });
}

/// The child's master key (hex), when the run is encrypted at rest.
const KEY_ENV: &str = "FACTUM_FSYNC_KEY";

fn master(hex: &str) -> factum_engine::MasterKey {
    factum_engine::MasterKey::new(factum_crypto::SecretKey::from_hex(hex).unwrap())
}

/// What one child run printed.
struct Run {
    /// The master key the store is encrypted under, if it is.
    key: Option<factum_engine::MasterKey>,
    /// (task, revision, position) of every acknowledged append.
    acks: Vec<(u64, u64, u64)>,
    /// Per task: its answers in order, `true` for an acknowledgement.
    order: Vec<Vec<bool>>,
    errors: Vec<String>,
    fatal: Option<String>,
    /// What `close` answered.
    close: String,
    stderr: String,
}

/// Runs the child with the shim configured by `fault`, or `None` (SKIPPED).
fn run_child(test: &str, dir: &Path, fault: &[(&str, &str)]) -> Option<Run> {
    let so = common::shim::build_or_skip(test, Path::new(env!("CARGO_TARGET_TMPDIR")))?;
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["fsync_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("FACTUM_FSYNC_CHILD", dir)
        .env("LD_PRELOAD", &so)
        .env("FACTUM_LOG", "warn")
        .envs(fault.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "the child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("FAULT-INJECTED"),
        "the fault was never injected ({fault:?}):\n{stderr}"
    );
    let mut run = Run {
        key: fault
            .iter()
            .find(|(k, _)| *k == KEY_ENV)
            .map(|(_, hex)| master(hex)),
        acks: Vec::new(),
        order: vec![Vec::new(); TASKS as usize],
        errors: Vec::new(),
        fatal: None,
        close: String::new(),
        stderr,
    };
    for line in stdout.lines() {
        let f: Vec<&str> = line.splitn(3, ' ').collect();
        match f[0] {
            "ack" => {
                let n: Vec<u64> = line
                    .split(' ')
                    .skip(1)
                    .map(|x| x.parse().unwrap())
                    .collect();
                run.acks.push((n[0], n[1], n[2]));
                run.order[n[0] as usize].push(true);
            }
            "err" => {
                run.order[f[1].parse::<usize>().unwrap()].push(false);
                run.errors.push(f[2].to_string());
            }
            "fatal" => run.fatal = Some(line["fatal ".len()..].to_string()),
            "close" => run.close = line["close ".len()..].to_string(),
            _ => {}
        }
    }
    eprintln!(
        "{test}: {} acknowledged, {} failed; {}",
        run.acks.len(),
        run.errors.len(),
        run.stderr
            .lines()
            .find(|l| l.starts_with("FAULT-INJECTED"))
            .unwrap_or_default()
    );
    Some(run)
}

/// After a fatal fault: nothing acknowledged after any task's first
/// error, every error names the file and the OS error, the store reported
/// it stopped for good, and a marker records the durable end.
fn check_stopped(run: &Run, dir: &Path, reason_has: &str) {
    // At least a few: the preallocation thread's syncs run at their own
    // pace, so on a loaded machine its faulted sync can come after only
    // a handful of acknowledged appends (9 seen under CI load).
    assert!(
        run.acks.len() >= 3,
        "too few appends before the fault to prove anything"
    );
    for (t, answers) in run.order.iter().enumerate() {
        let first_err = answers.iter().position(|ok| !ok);
        if let Some(i) = first_err {
            assert!(
                answers[i..].iter().all(|ok| !ok),
                "task {t} was acknowledged after the store failed: {answers:?}"
            );
        }
    }
    assert!(!run.errors.is_empty(), "no append failed after the fault");
    for e in &run.errors {
        assert!(
            e.starts_with("store unavailable:")
                && e.contains(".seg")
                && e.contains("os error 5")
                && e.contains(reason_has),
            "{e}"
        );
    }
    let fatal = run
        .fatal
        .as_deref()
        .expect("the store never stopped for good");
    assert!(
        fatal.contains(".seg") && fatal.contains("os error 5"),
        "{fatal}"
    );
    assert!(
        dir.join(MARKER_FILE).exists(),
        "no {MARKER_FILE} marker after the fault"
    );
}

/// A fresh open (no shim) cuts what the marker says, holds exactly the
/// acknowledged events, verifies, and takes appends again.
async fn reopen_holds_exactly_the_acknowledged(dir: &Path, run: &Run, expect_marker: bool) {
    let config = EngineConfig {
        encryption: run.key.clone(),
        ..EngineConfig::default()
    };
    let (engine, recovery) = Engine::open_with(dir, config.clone()).unwrap();
    let all = engine.read_all(ReadAll::forwards()).await.unwrap();
    let stored: BTreeSet<(u64, u64, u64)> = all
        .iter()
        .map(|e| {
            let t: u64 = e.stream.as_str()["task-".len()..].parse().unwrap();
            (t, e.revision.0, e.position.0)
        })
        .collect();
    let acked: BTreeSet<(u64, u64, u64)> = run.acks.iter().copied().collect();
    let missing: Vec<_> = acked.difference(&stored).collect();
    let extra: Vec<_> = stored.difference(&acked).collect();
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");
    assert!(
        extra.is_empty(),
        "never acknowledged, yet served: {extra:?} (cut: {:?})",
        recovery.fsync_cut
    );
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position.0, i as u64 + 1, "positions not dense from 1");
    }
    assert_eq!(
        recovery.fsync_cut.is_some(),
        expect_marker,
        "{:?}",
        recovery.fsync_cut
    );
    assert!(
        !dir.join(MARKER_FILE).exists(),
        "the marker was not removed"
    );
    let s = StreamName::new("task-0").unwrap();
    engine
        .append(
            s,
            ExpectedRevision::Any,
            vec![EventData::binary("After", vec![1])],
        )
        .await
        .unwrap();
    engine.close().unwrap();
    drop(engine);
    let report = factum_engine::verify_store(dir, None, run.key.as_ref()).unwrap();
    assert!(report.ok(), "{:?}", report.faults);
    let (engine, recovery) = Engine::open_with(dir, config).unwrap();
    assert!(recovery.fsync_cut.is_none() && recovery.cut.is_none());
    assert_eq!(
        engine.read_all(ReadAll::forwards()).await.unwrap().len(),
        all.len() + 1
    );
    engine.close().unwrap();
}

#[test]
fn a_failed_fdatasync_on_the_writer_stops_it_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let Some(run) = run_child(
        "a_failed_fdatasync_on_the_writer_stops_it_for_good",
        dir.path(),
        &[
            ("FACTUM_FAULT_CALL", "fdatasync"),
            ("FACTUM_FAULT_NTH", "40"),
            ("FACTUM_FAULT_THREAD", "factum-writer"),
            ("FACTUM_FAULT_PATH", ".seg"),
        ],
    ) else {
        return;
    };
    check_stopped(&run, dir.path(), "fsync of");
    common::runtime().block_on(reopen_holds_exactly_the_acknowledged(
        dir.path(),
        &run,
        true,
    ));
}

#[test]
fn a_failed_fdatasync_on_the_preallocation_thread_stops_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let Some(run) = run_child(
        "a_failed_fdatasync_on_the_preallocation_thread_stops_the_writer",
        dir.path(),
        &[
            ("FACTUM_FAULT_CALL", "fdatasync"),
            ("FACTUM_FAULT_NTH", "6"),
            ("FACTUM_FAULT_THREAD", "factum-prealloc"),
            ("FACTUM_FAULT_PATH", ".seg"),
        ],
    ) else {
        return;
    };
    assert!(
        run.stderr.contains("thread=factum-prealloc"),
        "{}",
        run.stderr
    );
    check_stopped(&run, dir.path(), "while preallocating");
    common::runtime().block_on(reopen_holds_exactly_the_acknowledged(
        dir.path(),
        &run,
        true,
    ));
}

/// The disk dies: after the failed fdatasync even the truncation back to
/// the durable end fails, so the unacknowledged group stays in the file
/// (and the page cache) as a valid frame. Only the marker keeps the next
/// open from serving it.
#[test]
fn after_a_failed_fdatasync_the_marker_cuts_what_the_page_cache_still_holds() {
    let dir = tempfile::tempdir().unwrap();
    let Some(run) = run_child(
        "after_a_failed_fdatasync_the_marker_cuts_what_the_page_cache_still_holds",
        dir.path(),
        &[
            ("FACTUM_FAULT_CALL", "fdatasync"),
            ("FACTUM_FAULT_NTH", "25"),
            ("FACTUM_FAULT_THREAD", "factum-writer"),
            ("FACTUM_FAULT_PATH", ".seg"),
            ("FACTUM_FAULT_DEAD", "1"),
        ],
    ) else {
        return;
    };
    check_stopped(&run, dir.path(), "fsync of");
    let (_, marker) = read_marker(dir.path()).unwrap().expect("a marker");
    let seg = common::segments(dir.path())
        .into_iter()
        .last()
        .expect("a segment");
    let bytes = std::fs::read(&seg).unwrap();
    let at = marker.offset as usize;
    assert!(
        bytes.len() > at && matches!(check_frame(&bytes[at..]), FrameCheck::Valid(_)),
        "expected the unacknowledged group as a valid frame at {at} of {} ({} bytes)",
        seg.display(),
        bytes.len()
    );
    common::runtime().block_on(reopen_holds_exactly_the_acknowledged(
        dir.path(),
        &run,
        true,
    ));
}

/// A failed (partial) write is not fatal: it is undone, answered with the
/// error, and later appends are acknowledged.
#[test]
fn a_failed_write_is_undone_and_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let Some(run) = run_child(
        "a_failed_write_is_undone_and_appends_go_on",
        dir.path(),
        &[
            ("FACTUM_FAULT_CALL", "pwrite64"),
            ("FACTUM_FAULT_NTH", "30"),
            ("FACTUM_FAULT_THREAD", "factum-writer"),
            ("FACTUM_FAULT_PATH", ".seg"),
        ],
    ) else {
        return;
    };
    assert!(run.fatal.is_none(), "{:?}", run.fatal);
    assert!(!run.errors.is_empty(), "no append failed");
    for e in &run.errors {
        assert!(
            e.contains("writing to") && e.contains(".seg") && e.contains("os error 5"),
            "{e}"
        );
    }
    assert!(
        run.acks.len() as u64 + run.errors.len() as u64 == TASKS * ATTEMPTS
            && run.acks.len() as u64 > TASKS * ATTEMPTS / 2,
        "{} acknowledged",
        run.acks.len()
    );
    assert!(!dir.path().join(MARKER_FILE).exists());
    common::runtime().block_on(reopen_holds_exactly_the_acknowledged(
        dir.path(),
        &run,
        false,
    ));
}

/// Sealing a full segment at a roll: its fsync fails (the writer's
/// `fsync` calls on segment files alternate: seal, new segment's header).
#[test]
fn a_failed_fsync_sealing_a_segment_stops_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let Some(run) = run_child(
        "a_failed_fsync_sealing_a_segment_stops_the_writer",
        dir.path(),
        &[
            ("FACTUM_FSYNC_SEGMENT_BYTES", "16384"),
            ("FACTUM_FAULT_CALL", "fsync"),
            ("FACTUM_FAULT_NTH", "3"),
            ("FACTUM_FAULT_THREAD", "factum-writer"),
            ("FACTUM_FAULT_PATH", ".seg"),
        ],
    ) else {
        return;
    };
    check_stopped(&run, dir.path(), "while sealing it");
    common::runtime().block_on(reopen_holds_exactly_the_acknowledged(
        dir.path(),
        &run,
        true,
    ));
}

/// Creating the next segment: the fsync of its header fails. Never
/// transient: the writer stops for good.
#[test]
fn a_failed_fsync_creating_a_segment_stops_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let Some(run) = run_child(
        "a_failed_fsync_creating_a_segment_stops_the_writer",
        dir.path(),
        &[
            ("FACTUM_FSYNC_SEGMENT_BYTES", "16384"),
            ("FACTUM_FAULT_CALL", "fsync"),
            ("FACTUM_FAULT_NTH", "2"),
            ("FACTUM_FAULT_THREAD", "factum-writer"),
            ("FACTUM_FAULT_PATH", ".seg"),
        ],
    ) else {
        return;
    };
    assert!(run.stderr.contains(".seg.tmp errno=5"), "{}", run.stderr);
    check_stopped(&run, dir.path(), "could not start a new segment");
    common::runtime().block_on(reopen_holds_exactly_the_acknowledged(
        dir.path(),
        &run,
        true,
    ));
}

/// Closing: the fsync after removing the preallocated zeros fails. Every
/// append was acknowledged; `close` reports the failure, and the marker
/// (at the end of the log) is applied and removed by the next open.
#[test]
fn a_failed_fsync_at_close_is_reported_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(run) = run_child(
        "a_failed_fsync_at_close_is_reported_and_loses_nothing",
        dir.path(),
        &[
            ("FACTUM_FAULT_CALL", "fsync"),
            ("FACTUM_FAULT_NTH", "1"),
            ("FACTUM_FAULT_THREAD", "factum-writer"),
            ("FACTUM_FAULT_PATH", ".seg"),
        ],
    ) else {
        return;
    };
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert_eq!(run.acks.len() as u64, TASKS * ATTEMPTS);
    assert!(
        run.close.starts_with("err store unavailable: fsync of")
            && run.close.contains("at close")
            && run.close.contains("os error 5"),
        "{}",
        run.close
    );
    assert!(dir.path().join(MARKER_FILE).exists());
    common::runtime().block_on(reopen_holds_exactly_the_acknowledged(
        dir.path(),
        &run,
        true,
    ));
}

/// The writer's failed fdatasync in a store encrypted at rest (ADR 45):
/// the marker's cut goes through the encrypted pages (the last kept page
/// written again without the cut bytes), and the reopened store holds
/// exactly what was acknowledged.
#[test]
fn a_failed_fdatasync_in_an_encrypted_store_cuts_through_its_pages() {
    let dir = tempfile::tempdir().unwrap();
    let key = "4f".repeat(32);
    let Some(run) = run_child(
        "a_failed_fdatasync_in_an_encrypted_store_cuts_through_its_pages",
        dir.path(),
        &[
            ("FACTUM_FAULT_CALL", "fdatasync"),
            ("FACTUM_FAULT_NTH", "40"),
            ("FACTUM_FAULT_THREAD", "factum-writer"),
            ("FACTUM_FAULT_PATH", ".seg"),
            (KEY_ENV, &key),
        ],
    ) else {
        return;
    };
    check_stopped(&run, dir.path(), "fsync of");
    common::runtime().block_on(reopen_holds_exactly_the_acknowledged(
        dir.path(),
        &run,
        true,
    ));
}

/// A failed write in an encrypted store: a group may have written a page's
/// new version before the failing write; the undo cuts it through the
/// pages and appends go on.
#[test]
fn a_failed_write_in_an_encrypted_store_is_undone_and_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let key = "4f".repeat(32);
    let Some(run) = run_child(
        "a_failed_write_in_an_encrypted_store_is_undone_and_appends_go_on",
        dir.path(),
        &[
            ("FACTUM_FAULT_CALL", "pwrite64"),
            ("FACTUM_FAULT_NTH", "30"),
            ("FACTUM_FAULT_THREAD", "factum-writer"),
            ("FACTUM_FAULT_PATH", ".seg"),
            (KEY_ENV, &key),
        ],
    ) else {
        return;
    };
    assert!(run.fatal.is_none(), "{:?}", run.fatal);
    assert!(!run.errors.is_empty(), "no append failed");
    assert!(!dir.path().join(MARKER_FILE).exists());
    common::runtime().block_on(reopen_holds_exactly_the_acknowledged(
        dir.path(),
        &run,
        false,
    ));
}

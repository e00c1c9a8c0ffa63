//! Preallocated zeros ahead of the writer (ADR 10): small appends write into
//! durable zeros, a clean close leaves no zeros, zeros left by a crash are
//! free space (not a torn batch), a torn batch inside them is still cut,
//! and large groups do not ask for zeros.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use factum_core::{EventData, EventStore, ExpectedRevision, ReadAll, StreamName};
use factum_engine::{Engine, EngineConfig};

mod common;

fn small(i: u32) -> EventData {
    EventData::json("Ticked", &serde_json::json!({ "i": i })).unwrap()
}

fn last_segment(dir: &Path) -> PathBuf {
    common::segments(dir).pop().unwrap()
}

/// A store with `n` small events, closed; its last segment.
async fn closed_store(dir: &Path, n: u32) -> PathBuf {
    let (engine, _) = Engine::open_with(dir, EngineConfig::default()).unwrap();
    append_small(&engine, 0, n).await;
    engine.close().unwrap();
    drop(engine);
    last_segment(dir)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

async fn append_small(engine: &Engine, from: u32, n: u32) {
    let s = StreamName::new("tick-1").unwrap();
    for i in from..from + n {
        engine
            .append(s.clone(), ExpectedRevision::Any, vec![small(i)])
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_appends_get_zeros_ahead_and_a_clean_close_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = Engine::open_with(dir.path(), EngineConfig::default()).unwrap();
    append_small(&engine, 0, 50).await;
    let seg = last_segment(dir.path());
    // The zeros are written in the background: wait until they are there
    // and the file stops growing.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = 0;
    while file_len(&seg) < engine.log_bytes().unwrap() + (1 << 20) || file_len(&seg) != seen {
        seen = file_len(&seg);
        assert!(
            Instant::now() < deadline,
            "no space was preallocated: file {} bytes, log {} bytes",
            file_len(&seg),
            engine.log_bytes().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let end = engine.log_bytes().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    assert!(bytes[end as usize..].iter().all(|&b| b == 0));
    // Appends go into the zeros, without growing the file.
    let len = file_len(&seg);
    append_small(&engine, 50, 50).await;
    assert!(engine.log_bytes().unwrap() > end);
    assert_eq!(file_len(&seg), len, "an append into zeros grew the file");
    engine.close().unwrap();
    drop(engine);
    assert_eq!(file_len(&seg), end_after_reopen(dir.path(), 100).await);
}

/// Reopens, checks that nothing was cut or left as zeros and `n` events
/// are there, closes; returns the log's bytes.
async fn end_after_reopen(dir: &Path, n: usize) -> u64 {
    let (engine, rec) = Engine::open_with(dir, EngineConfig::default()).unwrap();
    assert!(rec.cut.is_none(), "{:?}", rec.cut);
    assert_eq!(rec.preallocated, 0);
    assert_eq!(engine.read_all(ReadAll::forwards()).await.unwrap().len(), n);
    let end = engine.log_bytes().unwrap();
    engine.close().unwrap();
    drop(engine);
    let report = factum_engine::verify(dir).unwrap();
    assert!(report.ok(), "{:?}", report.faults);
    assert_eq!(report.preallocated_bytes, 0);
    end
}

/// A store whose writer was killed with zeros ahead looks like this: the
/// log, then zeros. They are free space: kept, written into, no cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeros_left_by_a_crash_are_free_space_for_the_next_appends() {
    let dir = tempfile::tempdir().unwrap();
    let seg = closed_store(dir.path(), 20).await;
    let end = file_len(&seg);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(end + (3 << 20))
        .unwrap();
    let report = factum_engine::verify(dir.path()).unwrap();
    assert!(report.ok(), "{:?}", report.faults);
    assert_eq!(report.preallocated_bytes, 3 << 20);

    let (engine, rec) = Engine::open_with(dir.path(), EngineConfig::default()).unwrap();
    assert!(rec.cut.is_none(), "zeros were cut as a torn batch");
    assert_eq!(rec.preallocated, 3 << 20);
    assert_eq!(engine.log_bytes().unwrap(), end);
    append_small(&engine, 20, 30).await;
    assert!(
        file_len(&seg) >= end + (3 << 20),
        "the free space was dropped"
    );
    let events = engine.read_all(ReadAll::forwards()).await.unwrap();
    assert_eq!(events.len(), 50);
    engine.close().unwrap();
    drop(engine);
    end_after_reopen(dir.path(), 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_batch_inside_preallocated_space_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let seg = closed_store(dir.path(), 20).await;
    let before = std::fs::read(&seg).unwrap();
    // The first 60 bytes of a frame (copied from a real one), then zeros.
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&before[32..92]).unwrap();
    f.write_all(&vec![0u8; 1 << 20]).unwrap();
    drop(f);
    let report = factum_engine::verify(dir.path()).unwrap();
    assert!(report.ok(), "{:?}", report.faults);
    assert!(report.notes.iter().any(|n| n.contains("torn write group")));

    let (engine, rec) = Engine::open_with(dir.path(), EngineConfig::default()).unwrap();
    let (file, offset, bytes) = rec.cut.expect("the torn batch is cut");
    assert_eq!(
        (file, offset, bytes),
        (seg.clone(), before.len() as u64, 60 + (1 << 20))
    );
    assert_eq!(rec.preallocated, 0);
    assert_eq!(std::fs::read(&seg).unwrap(), before);
    assert_eq!(
        engine.read_all(ReadAll::forwards()).await.unwrap().len(),
        20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_groups_write_without_zeros_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = Engine::open_with(dir.path(), EngineConfig::default()).unwrap();
    let s = StreamName::new("bulk-1").unwrap();
    let pad = "x".repeat(240);
    for _ in 0..40 {
        let events = (0..1000)
            .map(|i| EventData::json("Loaded", &serde_json::json!({ "i": i, "pad": pad })).unwrap())
            .collect();
        engine
            .append(s.clone(), ExpectedRevision::Any, events)
            .await
            .unwrap();
    }
    // 40 groups of ~300 KB: the first ones may still ask for zeros (the
    // average starts at 0), but the writer has long passed them.
    let seg = last_segment(dir.path());
    assert_eq!(file_len(&seg), engine.log_bytes().unwrap());
    engine.close().unwrap();
}

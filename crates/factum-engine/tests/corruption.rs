//! Damaged stores give the documented outcome (docs/format.md, "Damage"),
//! never a panic and never silently wrong data.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use factum_core::{
    Error, EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, StreamName,
};
use factum_engine::{Engine, EngineConfig};

fn config() -> EngineConfig {
    EngineConfig {
        segment_bytes: 8 * 1024,
        ..EngineConfig::default()
    }
}

/// Writes `n` events into a fresh store in small segments and closes it.
async fn build(dir: &Path, n: u32) {
    let (engine, _) = Engine::open_with(dir, config()).unwrap();
    for i in 0..n {
        let s = StreamName::new(format!("acct-{}", i % 7)).unwrap();
        let e = EventData::json(
            "Deposited",
            &serde_json::json!({ "i": i, "pad": "x".repeat(100) }),
        )
        .unwrap();
        engine
            .append(s, ExpectedRevision::Any, vec![e])
            .await
            .unwrap();
    }
    engine.close().unwrap();
}

mod common;
use common::segments;

fn flip(path: &Path, offset: u64) {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    std::io::Read::read_exact(&mut f, &mut b).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[b[0] ^ 0x5a]).unwrap();
}

fn open(dir: &Path) -> factum_core::Result<Engine> {
    Engine::open_with(dir, config()).map(|(e, _)| e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_sealed_segment_is_reported_by_reads_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 300).await;
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "want several segments, got {}", segs.len());
    // Flip a byte of an event's data in the first (sealed, checkpointed) segment.
    flip(&segs[0], 32 + 32 + 64 + 40);
    // Open checks the tail only (open time must not grow with history) …
    let engine = open(dir.path()).unwrap();
    // … and every read checks checksums: the damaged event is an error naming file and offset.
    let err = engine.read_all(ReadAll::forwards()).await.unwrap_err();
    match err {
        Error::Corrupt { file, .. } => assert_eq!(file, segs[0]),
        other => panic!("expected Corrupt, got {other}"),
    }
    let err = engine
        .read_stream(ReadStream::forwards(StreamName::new("acct-0").unwrap()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    drop(engine);
    let report = factum_engine::verify(dir.path()).unwrap();
    assert!(!report.ok());
    assert!(
        report
            .faults
            .iter()
            .any(|f| f.contains(segs[0].to_str().unwrap())),
        "{:?}",
        report.faults
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_unindexed_log_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 300).await;
    // Without the index the whole log is replayed on open, so all of it is checked.
    std::fs::remove_file(dir.path().join("index.redb")).unwrap();
    let segs = segments(dir.path());
    flip(&segs[1], 32 + 10);
    match open(dir.path()) {
        Err(Error::Corrupt {
            file,
            offset,
            detail,
        }) => {
            assert_eq!(file, segs[1]);
            assert_eq!(offset, 32, "{detail}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("opened a corrupt store"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_cut_and_nothing_else_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 100).await;
    let segs = segments(dir.path());
    let last = segs.last().unwrap();
    let before = std::fs::read(last).unwrap();
    // A torn write: the first 70 bytes of a frame (copied from a real one) at the end.
    let frame = before[32..32 + 70].to_vec();
    OpenOptions::new()
        .append(true)
        .open(last)
        .unwrap()
        .write_all(&frame)
        .unwrap();
    let (engine, recovery) = Engine::open_with(dir.path(), config()).unwrap();
    let (file, offset, bytes) = recovery.cut.expect("tail cut");
    assert_eq!((&file, offset, bytes), (last, before.len() as u64, 70));
    assert_eq!(std::fs::read(last).unwrap(), before);
    assert_eq!(
        engine.read_all(ReadAll::forwards()).await.unwrap().len(),
        100
    );
    engine.close().unwrap();
    drop(engine);
    assert!(factum_engine::verify(dir.path()).unwrap().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeros_at_the_tail_are_the_end_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 50).await;
    let last = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len + 4096)
        .unwrap();
    // Zeros are preallocated space (ADR 10): kept, not cut.
    let (engine, recovery) = Engine::open_with(dir.path(), config()).unwrap();
    assert!(recovery.cut.is_none(), "{:?}", recovery.cut);
    assert_eq!(recovery.preallocated, 4096);
    assert_eq!(
        engine.read_all(ReadAll::forwards()).await.unwrap().len(),
        50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_truncated_below_the_index_checkpoint_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 100).await;
    let last = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    match open(dir.path()) {
        Err(Error::Corrupt { detail, .. }) => {
            assert!(detail.contains("ahead of the log"), "{detail}")
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("opened a log that lost acknowledged events"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 300).await;
    let segs = segments(dir.path());
    std::fs::remove_file(&segs[1]).unwrap();
    match open(dir.path()) {
        Err(Error::Corrupt { file, detail, .. }) => {
            assert_eq!(file, segs[2]);
            assert!(detail.contains("missing"), "{detail}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("opened a store with a missing segment"),
    }
    let report = factum_engine::verify(dir.path()).unwrap();
    assert!(!report.ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_last_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 300).await;
    std::fs::remove_file(segments(dir.path()).pop().unwrap()).unwrap();
    assert!(matches!(open(dir.path()), Err(Error::Corrupt { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_index_never_gives_wrong_data_and_reindex_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 300).await;
    let index = dir.path().join("index.redb");
    let expected: Vec<_> = {
        let e = open(dir.path()).unwrap();
        e.read_all(ReadAll::forwards()).await.unwrap()
    };
    for part in [3, 2, 5] {
        let len = std::fs::metadata(&index).unwrap().len();
        let at = len / part;
        flip(&index, at);
        match open(dir.path()) {
            Err(Error::Corrupt { file, .. }) => assert_eq!(file, index),
            Err(Error::Io { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
            Ok(engine) => {
                // Reads either agree with the log or fail loudly.
                for i in 0..7 {
                    let s = StreamName::new(format!("acct-{i}")).unwrap();
                    if let Ok(events) = engine.read_stream(ReadStream::forwards(s.clone())).await {
                        let want: Vec<_> = expected.iter().filter(|e| e.stream == s).collect();
                        assert_eq!(events.iter().collect::<Vec<_>>(), want);
                    }
                }
            }
        }
        // redb may rewrite or shrink the file when it opens it.
        if std::fs::metadata(&index).unwrap().len() > at {
            flip(&index, at);
        }
    }
    let len = std::fs::metadata(&index).unwrap().len();
    flip(&index, len / 2);
    // The index is derived: deleting it rebuilds it from the log.
    std::fs::remove_file(&index).unwrap();
    let engine = open(dir.path()).unwrap();
    assert_eq!(
        engine.read_all(ReadAll::forwards()).await.unwrap(),
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_whose_creation_was_interrupted_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 50).await;
    // A crash while creating the next segment leaves its temporary file,
    // maybe without a complete header; it was never renamed into place.
    let tmp = dir.path().join("00000000000000000050.seg.tmp");
    std::fs::write(&tmp, b"FACTUMSG\x01").unwrap();
    let before = factum_engine::verify(dir.path()).unwrap();
    assert!(before.ok(), "{:?}", before.faults);
    let engine = open(dir.path()).unwrap();
    assert!(!tmp.exists());
    assert_eq!(
        engine.read_all(ReadAll::forwards()).await.unwrap().len(),
        50
    );
    let s = StreamName::new("acct-0").unwrap();
    let e = EventData::json("Deposited", &serde_json::json!({})).unwrap();
    engine
        .append(s, ExpectedRevision::Any, vec![e])
        .await
        .unwrap();
    engine.close().unwrap();
    drop(engine);
    let report = factum_engine::verify(dir.path()).unwrap();
    assert!(report.ok(), "{:?}", report.faults);
    assert_eq!(report.events, 51);
}

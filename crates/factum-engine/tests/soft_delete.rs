//! Recreating a soft-deleted stream (ADR 26): the append's events and the
//! store's own `$metadata` event that moves `$tb` are one frame, so they
//! are durable together or not at all, and recovery rebuilds the same
//! stream states from that frame as the writer made.

use factum_core::{
    CurrentRevision, Error, EventData, EventStore, ExpectedRevision, ReadStream, StreamMetadata,
    StreamName, StreamRevision,
};
use factum_engine::Engine;

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

fn events(n: usize) -> Vec<EventData> {
    (0..n)
        .map(|i| EventData::json("E", &serde_json::json!({ "i": i })).unwrap())
        .collect()
}

/// What a reader sees of `s`: revisions, metadata, its `$$` revision.
async fn state(engine: &Engine, s: &StreamName) -> (Vec<u64>, StreamMetadata, Option<u64>) {
    let revisions = engine
        .read_stream(ReadStream::forwards(s.clone()))
        .await
        .unwrap()
        .iter()
        .map(|e| e.revision.0)
        .collect();
    let m = engine.stream_metadata(s.clone()).await.unwrap();
    (revisions, m.metadata, m.revision.map(|r| r.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recreating_append_and_its_undelete_are_one_frame_and_rebuild_alike() {
    let dir = tempfile::tempdir().unwrap();
    let s = name("acct-1");
    let frames_before;
    {
        let engine = Engine::open(dir.path()).unwrap();
        engine
            .append(s.clone(), ExpectedRevision::NoStream, events(2))
            .await
            .unwrap();
        engine
            .delete_stream(s.clone(), ExpectedRevision::Exact(StreamRevision(1)))
            .await
            .unwrap();
        engine.close().unwrap();
        drop(engine);
        frames_before = factum_engine::verify(dir.path()).unwrap().frames;
    }
    let engine = Engine::open(dir.path()).unwrap();
    let r = engine
        .append(
            s.clone(),
            ExpectedRevision::Exact(StreamRevision(1)),
            events(3),
        )
        .await
        .unwrap();
    assert_eq!(r.revision, StreamRevision(4));
    let want = (
        vec![2, 3, 4],
        StreamMetadata {
            truncate_before: Some(2),
            ..StreamMetadata::default()
        },
        Some(1),
    );
    assert_eq!(state(&engine, &s).await, want);
    engine.close().unwrap();
    drop(engine);
    let report = factum_engine::verify(dir.path()).unwrap();
    assert!(report.ok(), "{:?}", report.faults);
    assert_eq!(
        report.frames,
        frames_before + 1,
        "the events and the undelete share one frame"
    );

    // Rebuilt from the log: the frame of two streams gives the same states.
    std::fs::remove_file(dir.path().join("index.redb")).unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    assert_eq!(state(&engine, &s).await, want);
    let e = engine
        .append(s.clone(), ExpectedRevision::NoStream, events(1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::WrongExpectedVersion {
                actual: CurrentRevision::Current(StreamRevision(4)),
                ..
            }
        ),
        "recreated, so no longer absent: {e}"
    );
    engine.close().unwrap();
}

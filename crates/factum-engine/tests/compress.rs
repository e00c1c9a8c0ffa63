//! Compressed sealed segments (issue 18, ADR 43): compaction keeps every
//! event where it was (reads of `$all` both ways, streams, `$ce-`,
//! subscriptions from the start, after a reopen and after an index rebuilt
//! from the log), shrinks seed-shaped events by at least 3×, passes
//! `verify`, survives a backup and restore, stays compressed through a
//! scavenge, waits for its age, and names a damaged block instead of
//! serving a wrong answer.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use factum_core::testkit::shaped::seed_shaped;
use factum_core::{
    Error, EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, RecordedEvent, StreamName,
};
use factum_engine::{Clock, CompressPolicy, Engine, EngineConfig, Throttle};

fn config(clock: &Clock) -> EngineConfig {
    EngineConfig {
        segment_bytes: 256 * 1024,
        index_flush_entries: 500,
        clock: clock.clone(),
        ..EngineConfig::default()
    }
}

/// Appends `n` seed-shaped events from index `from`, ten to an append.
async fn write(engine: &Engine, from: u64, n: u64) {
    let mut i = from;
    while i < from + n {
        let (stream, _) = seed_shaped(i);
        let mut batch = Vec::new();
        while i < from + n && seed_shaped(i).0 == stream && batch.len() < 10 {
            batch.push(seed_shaped(i).1);
            i += 1;
        }
        engine
            .append(stream, ExpectedRevision::Any, batch)
            .await
            .unwrap();
    }
}

/// Everything a reader can see, as comparable strings.
async fn dump(engine: &Engine) -> Vec<String> {
    let mut out = dump_all(engine).await;
    out.extend(dump_streams(engine).await);
    out
}

fn show(e: &RecordedEvent) -> String {
    format!(
        "{} {} {} {} {} {:?} {:?}",
        e.position.0, e.stream, e.revision.0, e.event_type, e.id, e.data, e.metadata
    )
}

/// `$all` both ways (checked to agree).
async fn dump_all(engine: &Engine) -> Vec<String> {
    let mut out = Vec::new();
    let all = engine.read_all(ReadAll::forwards()).await.unwrap();
    out.extend(all.iter().map(show));
    let mut back = engine.read_all(ReadAll::backwards()).await.unwrap();
    back.reverse();
    assert_eq!(back.iter().map(show).collect::<Vec<_>>(), out);
    out
}

/// A few streams, `$ce-order` and `$et-AccountCredited`.
async fn dump_streams(engine: &Engine) -> Vec<String> {
    let mut out = Vec::new();
    for s in [
        "order-0",
        "order-77",
        "account-5",
        "$ce-order",
        "$et-AccountCredited",
    ] {
        let name = StreamName::new(s).unwrap();
        match engine.read_stream(ReadStream::forwards(name)).await {
            Ok(events) => out.extend(events.iter().map(show)),
            Err(e) => out.push(format!("{s}: {e}")),
        }
    }
    out
}

fn compact(engine: &Engine, policy: CompressPolicy) -> factum_engine::CompactReport {
    engine
        .compact(policy, Throttle::None, &AtomicBool::new(false))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_every_event_and_shrinks_seed_shaped_events_3x() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let (engine, _) = Engine::open_with(dir.path(), config(&clock)).unwrap();
    write(&engine, 0, 8000).await;
    let before = dump(&engine).await;
    let bytes_before = engine.log_bytes().unwrap();
    let report = compact(&engine, CompressPolicy::Sealed);
    assert!(report.compressed >= 8, "{report:?}");
    assert_eq!(report.compressed, report.segments, "{report:?}");
    assert!(
        report.ratio() >= 3.0,
        "compression ratio {:.2} on seed-shaped events: {report:?}",
        report.ratio()
    );
    assert!(engine.log_bytes().unwrap() < bytes_before);
    assert_eq!(dump(&engine).await, before, "reads after compaction");
    // A second run finds nothing to do.
    let again = compact(&engine, CompressPolicy::Sealed);
    assert_eq!(again.compressed, 0);
    assert_eq!(again.already_compressed, report.compressed);
    // A subscription from the start replays every event through the
    // compressed segments.
    let mut sub = engine
        .subscribe(factum_core::Subscribe::all(
            factum_core::SubscriptionStart::Beginning,
            None,
        ))
        .await
        .unwrap();
    let mut seen = 0u64;
    while seen < 8000 {
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(Some(Ok(factum_core::SubscriptionMessage::Event(_)))) => seen += 1,
            Ok(Some(Ok(_))) => {}
            other => panic!("subscription ended early after {seen}: {other:?}"),
        }
    }
    drop(sub);
    // Appends go on into the active segment.
    write(&engine, 8000, 50).await;
    let after_append = dump(&engine).await;
    engine.close().unwrap();
    drop(engine);

    let v = factum_engine::verify(dir.path()).unwrap();
    assert!(v.ok(), "verify: {:?}", v.faults);
    assert_eq!(v.compressed_segments, report.compressed as usize);
    assert_eq!(v.events, 8050);

    // Reopened; then with the index rebuilt from the compressed log.
    let (engine, _) = Engine::open_with(dir.path(), config(&clock)).unwrap();
    assert_eq!(dump(&engine).await, after_append, "after reopen");
    engine.close().unwrap();
    drop(engine);
    std::fs::remove_file(dir.path().join("index.redb")).unwrap();
    let (engine, _) = Engine::open_with(dir.path(), config(&clock)).unwrap();
    assert_eq!(dump(&engine).await, after_append, "after an index rebuild");

    // A backup copies the compressed files as they are; the restore reads
    // the same.
    let backup = tempfile::tempdir().unwrap();
    engine.backup(backup.path()).unwrap();
    engine.close().unwrap();
    drop(engine);
    let restored = tempfile::tempdir().unwrap();
    let data = restored.path().join("data");
    factum_engine::restore(backup.path(), &data, false).unwrap();
    let v = factum_engine::verify(&data).unwrap();
    assert!(v.ok(), "verify of the restore: {:?}", v.faults);
    assert_eq!(v.compressed_segments, report.compressed as usize);
    let (engine, _) = Engine::open_with(&data, config(&clock)).unwrap();
    assert_eq!(dump(&engine).await, after_append, "the restore");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_by_age_waits_until_segments_are_old_enough() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let (engine, _) = Engine::open_with(dir.path(), config(&clock)).unwrap();
    write(&engine, 0, 3000).await;
    let policy = CompressPolicy::SealedFor(Duration::from_secs(3600));
    let report = compact(&engine, policy);
    assert_eq!(report.compressed, 0, "{report:?}");
    assert_eq!(report.too_recent, report.segments, "{report:?}");
    clock.advance(Duration::from_secs(2 * 3600));
    // Segments sealed before the clock moved are old enough; the one
    // sealed by these appends is not.
    write(&engine, 3000, 1500).await;
    let report = compact(&engine, policy);
    assert!(report.compressed >= 2, "{report:?}");
    assert!(report.too_recent >= 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scavenge_of_a_compressed_segment_keeps_it_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let (engine, _) = Engine::open_with(dir.path(), config(&clock)).unwrap();
    // A stream truncated to its last event: most of it goes in a scavenge.
    let trunc = StreamName::new("trunc-1").unwrap();
    for n in 0..300u64 {
        let e =
            EventData::json("Step", &serde_json::json!({"n": n, "pad": "z".repeat(400)})).unwrap();
        engine
            .append(trunc.clone(), ExpectedRevision::Any, vec![e])
            .await
            .unwrap();
    }
    engine
        .set_stream_metadata(
            trunc.clone(),
            ExpectedRevision::Any,
            factum_core::StreamMetadata {
                max_count: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    write(&engine, 0, 3000).await;
    let report = compact(&engine, CompressPolicy::Sealed);
    assert!(report.compressed >= 2, "{report:?}");
    let visible = dump_streams(&engine).await;
    let all_before = dump_all(&engine).await.len();
    let status = engine
        .scavenge(factum_engine::ScavengeOptions::default())
        .unwrap();
    assert_eq!(
        status.end,
        factum_engine::scavenge::ScavengeEnd::Completed,
        "{status:?}"
    );
    assert!(status.report.events_removed >= 250, "{status:?}");
    assert_eq!(dump_streams(&engine).await, visible);
    // `$all` shows what a scavenge removes until it runs; not after.
    let all_after = dump_all(&engine).await.len();
    assert_eq!(
        all_before - all_after,
        status.report.events_removed as usize
    );
    let last = engine
        .read_stream(ReadStream::forwards(trunc.clone()))
        .await
        .unwrap();
    assert_eq!(last.len(), 1);
    engine.close().unwrap();
    drop(engine);
    let v = factum_engine::verify(dir.path()).unwrap();
    assert!(v.ok(), "verify: {:?}", v.faults);
    assert_eq!(v.compressed_segments, report.compressed as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_compressed_block_is_named_never_misread() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let (engine, _) = Engine::open_with(dir.path(), config(&clock)).unwrap();
    write(&engine, 0, 2000).await;
    assert!(compact(&engine, CompressPolicy::Sealed).compressed >= 1);
    engine.close().unwrap();
    drop(engine);
    // Flip one byte inside the first block of segment 0 (after its
    // 32-byte header).
    let seg0 = dir.path().join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&seg0).unwrap();
    bytes[100] ^= 0x5a;
    std::fs::write(&seg0, &bytes).unwrap();

    let v = factum_engine::verify(dir.path()).unwrap();
    assert!(!v.ok());
    assert!(
        v.faults
            .iter()
            .any(|f| f.contains("00000000000000000000.seg") && f.contains("block 0")),
        "{:?}",
        v.faults
    );
    let (engine, _) = Engine::open_with(dir.path(), config(&clock)).unwrap();
    match engine.read_all(ReadAll::forwards()).await {
        Err(Error::Corrupt { file, detail, .. }) => {
            assert!(file.ends_with("00000000000000000000.seg"), "{file:?}");
            assert!(detail.contains("block 0"), "{detail}");
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    // Streams wholly in later segments still read.
    let tail = engine
        .read_all(ReadAll::backwards().max_count(10))
        .await
        .unwrap();
    assert_eq!(tail.len(), 10);
}

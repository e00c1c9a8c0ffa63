//! Reads run on the engine's reader pool, in bounded steps, and the writer's
//! queue is bounded (ADR 13). No timing assertions: what is checked is who
//! finished before whom and what the engine's counters say.

use std::future::Future;
use std::pin::Pin;

use factum_core::{
    EventData, EventStore, ExpectedRevision, Filter, ReadAll, ReadStream, StreamName,
};
use factum_engine::{Durability, Engine, EngineConfig};

/// Appends of this many events: one frame each.
const PER_APPEND: usize = 100;

fn ev(i: usize) -> EventData {
    EventData::json(
        "Added",
        &serde_json::json!({ "i": i, "pad": "x".repeat(64) }),
    )
    .unwrap()
}

/// One reader thread, one step per frame scanned (so steps count frames).
fn config(durability: Durability) -> EngineConfig {
    EngineConfig {
        durability,
        reader_threads: 1,
        read_step_bytes: 1,
        ..EngineConfig::default()
    }
}

/// Fills a store with `frames` appends of [`PER_APPEND`] events, spread over
/// streams `s-0..s-9` (none of which a filter on `nothing-` matches).
async fn fill(engine: &Engine, frames: usize) {
    for f in 0..frames {
        let stream = StreamName::new(format!("s-{}", f % 10)).unwrap();
        let events = (0..PER_APPEND).map(|i| ev(f * PER_APPEND + i)).collect();
        engine
            .append(stream, ExpectedRevision::Any, events)
            .await
            .unwrap();
    }
}

/// A forwards `$all` read whose filter matches nothing: it scans the whole log.
fn scan_matching_nothing(engine: &Engine) -> impl Future<Output = factum_core::Result<usize>> + '_ {
    let read = ReadAll::forwards().filter(Filter::stream_prefix(["nothing-"]));
    async move { engine.read_all(read).await.map(|events| events.len()) }
}

/// Polls `fut` (which must not finish) until `until` holds.
async fn poll_until<F: Future + Unpin>(fut: &mut F, mut until: impl FnMut() -> bool) {
    while !until() {
        tokio::select! {
            biased;
            _ = &mut *fut => panic!("the read finished before the test could drop it"),
            _ = tokio::task::yield_now() => {}
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_dropped_scan_stops_early_and_frees_the_only_reader_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = Engine::open_with(dir.path(), config(Durability::None)).unwrap();
    let frames = 2000;
    fill(&engine, frames).await;

    // A whole scan: one step per frame.
    let before = engine.stats().reads.steps;
    assert_eq!(scan_matching_nothing(&engine).await.unwrap(), 0);
    let whole = engine.stats().reads.steps - before;
    assert!(whole >= frames as u64, "{whole} steps for {frames} frames");

    // The same scan, dropped once it is stepping on the only thread.
    let start = engine.stats().reads.steps;
    let mut scan: Pin<Box<_>> = Box::pin(scan_matching_nothing(&engine));
    poll_until(&mut scan, || engine.stats().reads.steps > start).await;
    drop(scan);

    // The thread is free again: a small read answers (it could only run
    // after the scan let go of the only thread).
    let one = engine
        .read_stream(ReadStream::forwards(StreamName::new("s-3").unwrap()).max_count(1))
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    let stats = engine.stats().reads;
    let taken = stats.steps - start;
    assert!(
        taken < whole / 2,
        "the dropped scan took {taken} of a whole scan's {whole} steps: it did not stop"
    );
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert_eq!((stats.running, stats.queued), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn appends_complete_while_sixteen_scans_hold_the_reader_pool() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = Engine::open_with(dir.path(), config(Durability::Always)).unwrap();
    fill(&engine, 500).await;
    let head = engine.head_position().await.unwrap().unwrap();

    // Sixteen scans matching nothing, on one runtime thread and one reader
    // thread: before the pool, each ran inside its task and held the
    // runtime's only thread for the whole scan.
    let scans: Vec<_> = (0..16)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { scan_matching_nothing(&engine).await })
        })
        .collect();
    // Until a scan runs on the reader thread (or, were reads still run
    // inside their tasks, until they are all done).
    while engine.stats().reads.running == 0 && !scans.iter().all(|s| s.is_finished()) {
        tokio::task::yield_now().await;
    }

    let stream = StreamName::new("live").unwrap();
    for i in 0..20 {
        let r = engine
            .append(stream.clone(), ExpectedRevision::Any, vec![ev(i)])
            .await
            .unwrap();
        assert_eq!(r.revision.0, i as u64);
    }
    let unfinished = scans.iter().filter(|s| !s.is_finished()).count();
    let stats = engine.stats().reads;
    assert!(
        unfinished > 0 && stats.running + stats.queued > 0,
        "the scans finished before 20 appends: {unfinished} unfinished, {stats:?}"
    );

    // Cancel the scans; the pool serves the next read.
    for s in &scans {
        s.abort();
    }
    for s in scans {
        let _ = s.await;
    }
    let live = engine
        .read_stream(ReadStream::forwards(stream))
        .await
        .unwrap();
    assert_eq!(live.len(), 20);
    assert!(live.iter().all(|e| e.position > head));
    assert!(engine.stats().reads.cancelled > 0);
}

#[tokio::test(flavor = "current_thread")]
async fn appends_beyond_the_writer_queue_wait_for_a_place() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        append_queue: 4,
        ..config(Durability::Always)
    };
    let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
    let appends: Vec<_> = (0..64)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let stream = StreamName::new(format!("q-{i}")).unwrap();
                engine
                    .append(stream, ExpectedRevision::NoStream, vec![ev(i)])
                    .await
            })
        })
        .collect();
    let (mut most_queued, mut most_waiting) = (0, 0);
    while appends.iter().any(|a| !a.is_finished()) {
        let stats = engine.stats();
        assert_eq!(stats.append_queue_capacity, 4);
        most_queued = most_queued.max(stats.appends_queued);
        most_waiting = most_waiting.max(stats.appends_waiting);
        tokio::task::yield_now().await;
    }
    for a in appends {
        a.await.unwrap().unwrap();
    }
    assert!(most_queued <= 4, "{most_queued} appends queued, capacity 4");
    assert!(
        most_waiting > 0,
        "64 appends at once, yet none waited for a place"
    );
    let stats = engine.stats();
    assert_eq!((stats.appends_queued, stats.appends_waiting), (0, 0));
    let all = engine.read_all(ReadAll::forwards()).await.unwrap();
    assert_eq!(all.len(), 64);
}

#[tokio::test(flavor = "current_thread")]
async fn appends_waiting_for_a_place_answer_unavailable_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        append_queue: 1,
        ..config(Durability::Always)
    };
    let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
    let appends: Vec<_> = (0..32)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let stream = StreamName::new(format!("c-{i}")).unwrap();
                engine
                    .append(stream, ExpectedRevision::NoStream, vec![ev(i)])
                    .await
            })
        })
        .collect();
    while engine.stats().appends_waiting == 0 {
        tokio::task::yield_now().await;
    }
    engine.close().unwrap();
    let (mut written, mut refused) = (0, 0);
    for a in appends {
        match a.await.unwrap() {
            Ok(_) => written += 1,
            Err(factum_core::Error::Unavailable { .. }) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(refused > 0, "{written} written, none refused");
    drop(engine);
    let engine = Engine::open(dir.path()).unwrap();
    let all = engine.read_all(ReadAll::forwards()).await.unwrap();
    assert_eq!(
        all.len(),
        written,
        "every acknowledged append is in the log"
    );
}

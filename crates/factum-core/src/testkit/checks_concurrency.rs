//! Concurrency: racing `Exact` appends, concurrent `Any` appends to one
//! stream, concurrent appends to many streams.

use std::collections::HashSet;
use std::sync::Arc;

use uuid::Uuid;

use super::support::*;
use super::StoreFactory;
use crate::error::Error;
use crate::expected::{AppendResult, ExpectedRevision};
use crate::model::{Position, RecordedEvent};
use crate::read::{ReadAll, ReadStream};
use crate::store::EventStore;

const TASKS: u64 = 64;

async fn join_all<T: Send + 'static>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) => panic!("conformance: a concurrent task failed: {e}"),
        }
    }
    out
}

/// Asserts each append's result points at its own last event, and that
/// each batch sits at contiguous revisions and positions.
fn assert_batches(events: &[RecordedEvent], batches: &[(Vec<Uuid>, AppendResult)], what: &str) {
    let by_id: std::collections::HashMap<Uuid, &RecordedEvent> =
        events.iter().map(|e| (e.id, e)).collect();
    for (ids, result) in batches {
        let got: Vec<&RecordedEvent> = ids
            .iter()
            .map(|id| {
                *by_id.get(id).unwrap_or_else(|| {
                    panic!("conformance: {what}: acknowledged event {id} is missing")
                })
            })
            .collect();
        let last = got.last().expect("non-empty batch");
        assert_eq!(
            (last.revision, last.position),
            (result.revision, result.position),
            "conformance: {what}: an append result does not point at its last event"
        );
        for w in got.windows(2) {
            assert_eq!(
                w[0].revision.0 + 1,
                w[1].revision.0,
                "conformance: {what}: a batch was split (revisions)"
            );
            assert_eq!(
                w[0].position.0 + 1,
                w[1].position.0,
                "conformance: {what}: a batch was interleaved with another (positions)"
            );
        }
    }
}

/// Asserts the stream holds each id exactly once at dense revisions.
fn assert_dense_unique(events: &[RecordedEvent], expected_len: usize, what: &str) {
    assert_eq!(
        events.len(),
        expected_len,
        "conformance: {what}: number of events"
    );
    assert_eq!(
        revs(events),
        (0..expected_len as u64).collect::<Vec<_>>(),
        "conformance: {what}: revisions must be dense"
    );
    let unique: HashSet<Uuid> = events.iter().map(|e| e.id).collect();
    assert_eq!(
        unique.len(),
        expected_len,
        "conformance: {what}: duplicate event ids"
    );
    for w in events.windows(2) {
        assert!(
            w[0].position < w[1].position,
            "conformance: {what}: positions must grow with revisions"
        );
    }
}

/// 64 tasks race `Exact` appends to one stream (read the revision, append,
/// retry on `WrongExpectedVersion`): exactly one winner per revision.
pub async fn concurrent_exact_appends<F: StoreFactory>(f: &F) {
    const ROUNDS: u64 = 2;
    const MAX_TRIES: u32 = 10_000;
    let store = Arc::new(f.create().await);
    let handles = (0..TASKS)
        .map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let s = sn("race-1");
                let mut won = Vec::new();
                for round in 0..ROUNDS {
                    let event = ev("Raced", task * 100 + round);
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        assert!(tries <= MAX_TRIES, "conformance: task {task} never won an Exact append in {MAX_TRIES} tries");
                        let expected = match store.read_stream(ReadStream::backwards(s.clone()).max_count(1)).await {
                            Ok(events) => exact(events.first().expect("an existing stream has a last event").revision.0),
                            Err(Error::StreamNotFound { .. }) => ExpectedRevision::NoStream,
                            Err(e) => panic!("conformance: read during the race: {e}"),
                        };
                        match store.append(s.clone(), expected, vec![event.clone()]).await {
                            Ok(r) => {
                                won.push((vec![event.id], r));
                                break;
                            }
                            Err(Error::WrongExpectedVersion { .. }) => tokio::task::yield_now().await,
                            Err(e) => panic!("conformance: Exact append during the race: {e}"),
                        }
                    }
                }
                won
            })
        })
        .collect();
    let won: Vec<_> = join_all(handles).await.into_iter().flatten().collect();
    let n = (TASKS * ROUNDS) as usize;
    let mut revisions: Vec<u64> = won.iter().map(|(_, r)| r.revision.0).collect();
    revisions.sort_unstable();
    assert_eq!(
        revisions,
        (0..n as u64).collect::<Vec<_>>(),
        "conformance: exactly one winner per revision"
    );
    let events = read_fwd(&*store, "race-1").await;
    assert_dense_unique(&events, n, "race-1");
    assert_batches(&events, &won, "race-1");
    let all = read_all(&*store, ReadAll::forwards()).await;
    assert_eq!(
        positions(&all),
        (1..=n as u64).collect::<Vec<_>>(),
        "conformance: race-1 positions dense"
    );
}

/// 64 tasks × 4 appends of 3 events with `Any` to one stream: every event
/// exactly once, batches contiguous, each task's batches in its order.
pub async fn concurrent_any_appends<F: StoreFactory>(f: &F) {
    const APPENDS: u64 = 4;
    const BATCH: u64 = 3;
    let store = Arc::new(f.create().await);
    let handles = (0..TASKS)
        .map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut done = Vec::new();
                for i in 0..APPENDS {
                    let events = evs("Any", (task * APPENDS + i) * BATCH, BATCH);
                    let ids = data_ids(&events);
                    let step = format!("task {task}: Any append {i}");
                    let r = ok(
                        store
                            .append(sn("any-1"), ExpectedRevision::Any, events)
                            .await,
                        step,
                    );
                    done.push((ids, r));
                }
                done
            })
        })
        .collect();
    let per_task = join_all(handles).await;
    let n = (TASKS * APPENDS * BATCH) as usize;
    let events = read_fwd(&*store, "any-1").await;
    assert_dense_unique(&events, n, "any-1");
    for batches in &per_task {
        assert_batches(&events, batches, "any-1");
        for w in batches.windows(2) {
            assert!(
                w[0].1.position < w[1].1.position,
                "conformance: any-1: a task's sequential appends are out of order"
            );
        }
    }
    let all = read_all(&*store, ReadAll::forwards()).await;
    assert_eq!(
        positions(&all),
        (1..=n as u64).collect::<Vec<_>>(),
        "conformance: any-1 positions dense"
    );
}

/// 64 tasks append to their own streams concurrently: positions dense (from 1) over
/// all of them, revisions dense per stream, results point at the right events.
pub async fn concurrent_appends_to_many_streams<F: StoreFactory>(f: &F) {
    const APPENDS: u64 = 4;
    let store = Arc::new(f.create().await);
    let handles = (0..TASKS)
        .map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let s = sn(&format!("many-{task}"));
                let mut done: Vec<(Vec<Uuid>, AppendResult)> = Vec::new();
                for i in 0..APPENDS {
                    let events = evs("Many", i * 2, 1 + i % 2);
                    let ids = data_ids(&events);
                    let expected = match done.last() {
                        None => ExpectedRevision::NoStream,
                        Some((_, r)) => ExpectedRevision::Exact(r.revision),
                    };
                    let step = format!("task {task}: append {i} to its own stream");
                    done.push((
                        ids,
                        ok(store.append(s.clone(), expected, events).await, step),
                    ));
                }
                done
            })
        })
        .collect();
    let per_task = join_all(handles).await;
    let all = read_all(&*store, ReadAll::forwards()).await;
    let n = per_task
        .iter()
        .flatten()
        .map(|(ids, _)| ids.len())
        .sum::<usize>();
    assert_eq!(
        positions(&all),
        (1..=n as u64).collect::<Vec<_>>(),
        "conformance: positions dense across concurrent streams"
    );
    assert_eq!(
        ok(store.head_position().await, "head"),
        Some(Position(n as u64))
    );
    for (task, batches) in per_task.iter().enumerate() {
        let what = format!("many-{task}");
        let events = read_fwd(&*store, &what).await;
        assert_dense_unique(
            &events,
            batches.iter().map(|(ids, _)| ids.len()).sum(),
            &what,
        );
        assert_batches(&events, batches, &what);
        for e in &events {
            assert_eq!(
                Some(e),
                all.get(e.position.0 as usize - 1),
                "conformance: {what}: stream read and $all disagree"
            );
        }
    }
}

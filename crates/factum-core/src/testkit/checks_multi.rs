//! Multi-stream atomic appends (ADR 29): all or nothing, one contiguous
//! range of positions in the request's order, every stream under the rules
//! of a single append, every violated condition reported, checks on streams
//! not written as KurrentDB evaluates them.

use super::support::*;
use super::StoreFactory;
use crate::error::Error;
use crate::expected::ExpectedRevision;
use crate::model::{Position, StreamRevision};
use crate::multi::{ActualState, MultiAppend, StreamCondition};
use crate::read::ReadAll;
use crate::store::EventStore;

fn violations(e: Error, step: &str) -> Vec<(usize, String, ActualState)> {
    match e {
        Error::ConsistencyViolation { violations } => violations
            .into_iter()
            .map(|v| (v.index, v.stream.to_string(), v.actual))
            .collect(),
        e => panic!("conformance: {step}: expected ConsistencyViolation, got {e:?}"),
    }
}

async fn head<S: EventStore>(store: &S) -> Option<Position> {
    ok(store.head_position().await, "head_position")
}

/// Interleaved events of new and existing streams: one contiguous range,
/// revisions per stream, results per stream.
pub async fn multi_append_atomic<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    ok(
        store
            .append(sn("ma-a"), ExpectedRevision::NoStream, evs("A", 0, 2))
            .await,
        "seed ma-a",
    );
    let a = evs("A", 2, 2);
    let b = evs("B", 0, 1);
    let req = MultiAppend::new()
        .append(sn("ma-a"), exact(1), [])
        .check(sn("ma-b"), StreamCondition::NoStream)
        .record(sn("ma-a"), a[0].clone())
        .record(sn("ma-b"), b[0].clone())
        .record(sn("ma-a"), a[1].clone());
    let r = ok(store.append_multi(req).await, "multi append");
    assert_eq!(r.position, Position(5), "conformance: last position");
    let got: Vec<_> = r
        .streams
        .iter()
        .map(|s| (s.index, s.stream.to_string(), s.revision.0, s.position.0))
        .collect();
    assert_eq!(
        got,
        [(0, "ma-a".into(), 3, 5), (1, "ma-b".into(), 0, 4)],
        "conformance: per-stream results"
    );
    let all = read_all(&store, ReadAll::forwards()).await;
    let order: Vec<_> = all
        .iter()
        .map(|e| (e.stream.to_string(), e.revision.0, e.position.0))
        .collect();
    assert_eq!(
        order[2..],
        [
            ("ma-a".into(), 2, 3),
            ("ma-b".into(), 0, 4),
            ("ma-a".into(), 3, 5)
        ],
        "conformance: $all holds the request's order in one range"
    );
    // (Metadata may carry more keys over the wire: v2 record properties
    // reach v1 readers with `$schema.*` added, ADR 29.)
    let ra = read_fwd(&store, "ma-a").await;
    let got = (ra[3].id, ra[3].revision.0, &ra[3].event_type, &ra[3].data);
    assert_eq!(
        got,
        (a[1].id, 3, &a[1].event_type, &a[1].data),
        "conformance: event 3@ma-a"
    );
    let rb = read_fwd(&store, "ma-b").await;
    let got = (rb[0].id, rb[0].revision.0, &rb[0].event_type, &rb[0].data);
    assert_eq!(
        got,
        (b[0].id, 0, &b[0].event_type, &b[0].data),
        "conformance: event 0@ma-b"
    );
    let cat = read_fwd(&store, "$ce-ma").await;
    assert_eq!(positions(&cat), [1, 2, 3, 4, 5], "conformance: $ce- links");
}

/// A condition that fails on any stream writes nothing, and every failed
/// condition is reported with its index.
pub async fn multi_append_conflict_writes_nothing<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    ok(
        store
            .append(sn("mc-a"), ExpectedRevision::NoStream, evs("A", 0, 1))
            .await,
        "seed",
    );
    let before = head(&store).await;
    let req = MultiAppend::new()
        .append(sn("mc-b"), ExpectedRevision::NoStream, evs("B", 0, 2))
        .append(sn("mc-a"), exact(5), evs("A", 1, 1))
        .check(sn("mc-c"), StreamCondition::Exists)
        .check(sn("mc-a"), StreamCondition::Revision(StreamRevision(7)));
    // The last check replaced mc-a's condition.
    let e = err(store.append_multi(req).await, "conflicting multi append");
    assert_eq!(
        violations(e, "conflict"),
        [
            (1, "mc-a".into(), ActualState::Revision(StreamRevision(0))),
            (2, "mc-c".into(), ActualState::NoStream)
        ],
        "conformance: every violation, nothing else"
    );
    assert_eq!(head(&store).await, before, "conformance: nothing written");
    assert_kind(
        store
            .read_stream(crate::read::ReadStream::forwards(sn("mc-b")))
            .await,
        "StreamNotFound",
        "mc-b after a refused multi append",
    );
    // The same request with right conditions goes through.
    let req = MultiAppend::new()
        .append(sn("mc-b"), ExpectedRevision::NoStream, evs("B", 0, 2))
        .append(sn("mc-a"), exact(0), evs("A", 1, 1));
    ok(store.append_multi(req).await, "right conditions");
    assert_eq!(head(&store).await, Some(Position(4)));
}

/// Soft-deleted and tombstoned streams: written ones as single appends
/// (recreated after their last revision, an undelete event after the
/// request's events; tombstoned refused), checked ones as KurrentDB.
pub async fn multi_append_deleted_streams<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    for s in ["md-soft", "md-tomb"] {
        ok(
            store
                .append(sn(s), ExpectedRevision::NoStream, evs("E", 0, 2))
                .await,
            "seed",
        );
    }
    ok(
        store.delete_stream(sn("md-soft"), exact(1)).await,
        "soft delete",
    );
    ok(
        store
            .tombstone_stream(sn("md-tomb"), ExpectedRevision::Any)
            .await,
        "tombstone",
    );
    let before = head(&store).await.expect("events").0;
    // Checks that hold: a tombstoned stream has no stream; deleted is deleted.
    let req = MultiAppend::new()
        .append(sn("md-soft"), ExpectedRevision::NoStream, evs("E", 2, 1))
        .check(sn("md-tomb"), StreamCondition::NoStream)
        .check(sn("md-none"), StreamCondition::NoStream);
    let r = ok(store.append_multi(req).await, "recreate with checks");
    assert_eq!(r.streams[0].revision, StreamRevision(2));
    assert_eq!(r.position, Position(before + 1));
    assert_eq!(
        head(&store).await,
        Some(Position(before + 2)),
        "conformance: the undelete event follows the request's events"
    );
    assert_eq!(revs(&read_fwd(&store, "md-soft").await), [2]);
    // Violations: exists on a missing stream, tombstoned stream written,
    // deleted expected of a live one.
    let before = head(&store).await;
    let req = MultiAppend::new()
        .append(sn("md-tomb"), ExpectedRevision::Any, evs("E", 0, 1))
        .check(sn("md-soft"), StreamCondition::Deleted)
        .check(sn("md-tomb2"), StreamCondition::Tombstoned)
        .append(sn("md-new"), ExpectedRevision::Any, evs("E", 0, 1));
    let e = err(store.append_multi(req).await, "violations");
    assert_eq!(
        violations(e, "deleted streams"),
        [
            (0, "md-tomb".into(), ActualState::Tombstoned),
            (
                1,
                "md-soft".into(),
                ActualState::Revision(StreamRevision(2))
            ),
            (2, "md-tomb2".into(), ActualState::NoStream)
        ]
    );
    assert_eq!(head(&store).await, before, "conformance: nothing written");
}

/// A retry of a multi append that was made answers its result and writes
/// nothing; bad requests are `InvalidInput`.
pub async fn multi_append_retry_and_bad_input<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let req = MultiAppend::new()
        .append(sn("mr-a"), ExpectedRevision::NoStream, evs("A", 0, 2))
        .append(sn("mr-b"), ExpectedRevision::NoStream, evs("B", 0, 1));
    let first = ok(store.append_multi(req.clone()).await, "first");
    let again = ok(store.append_multi(req).await, "retry");
    assert_eq!(
        first, again,
        "conformance: a retry answers the first result"
    );
    assert_eq!(head(&store).await, Some(Position(3)));
    let e = || evs("A", 9, 1);
    for (bad, what) in [
        (MultiAppend::new(), "no events"),
        (
            MultiAppend::new()
                .append(sn("mr-x"), ExpectedRevision::Any, e())
                .append(sn("mr-x"), ExpectedRevision::Any, e()),
            "a stream twice",
        ),
        (
            MultiAppend::new().append(sn("$ce-mr"), ExpectedRevision::Any, e()),
            "a read-only stream",
        ),
    ] {
        assert_kind(store.append_multi(bad).await, "InvalidInput", what);
    }
    assert_eq!(head(&store).await, Some(Position(3)));
}

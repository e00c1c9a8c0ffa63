//! Appends: atomic batches, expected revisions, idempotency, empty appends,
//! read-only system streams, limits, the head position.

use bytes::Bytes;

use super::support::*;
use super::StoreFactory;
use crate::expected::{AppendResult, CurrentRevision, ExpectedRevision};
use crate::model::{ContentType, EventData, Position, StreamRevision, Timestamp};
use crate::read::{ReadAll, ReadStream};
use crate::store::EventStore;

fn result(revision: u64, position: u64) -> AppendResult {
    AppendResult {
        revision: StreamRevision(revision),
        position: Position(position),
    }
}

/// Appends one and many events and reads every field back; revisions dense
/// from 0 per stream, positions dense from 1 in commit order across streams,
/// `created` non-decreasing and close to the local clock.
pub async fn append_and_read_back<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let before = Timestamp::now();
    assert_eq!(
        ok(store.head_position().await, "head of an empty store"),
        None
    );
    assert!(
        read_all(&store, ReadAll::forwards()).await.is_empty(),
        "conformance: empty store: read_all must be empty"
    );

    let one = vec![ev("OrderPlaced", 1).with_metadata(&b"{\"correlation\":\"c-1\"}"[..])];
    let r = ok(
        store
            .append(sn("order-1"), ExpectedRevision::NoStream, one.clone())
            .await,
        "append 1 event",
    );
    assert_eq!(r, result(0, 1), "conformance: first append result");

    let three = vec![
        EventData::binary("Blob", Bytes::from_static(&[0, 1, 2, 0xff, 0xfe])),
        EventData::new("Empty", ContentType::Json, Bytes::new()),
        EventData::binary("Blob", vec![7u8; 10_000]).with_metadata(Bytes::from_static(b"\x00\x01")),
    ];
    let r = ok(
        store
            .append(sn("order-2"), ExpectedRevision::Any, three.clone())
            .await,
        "append 3 events",
    );
    assert_eq!(
        r,
        result(2, 4),
        "conformance: 3-event append result (last revision, last position)"
    );

    let two = evs("OrderPaid", 2, 2);
    let r = ok(
        store.append(sn("order-1"), exact(0), two.clone()).await,
        "append 2 events",
    );
    assert_eq!(r, result(2, 6), "conformance: 2-event append result");

    let o1 = read_fwd(&store, "order-1").await;
    let sent1: Vec<&EventData> = one.iter().chain(two.iter()).collect();
    assert_eq!(
        o1.len(),
        3,
        "conformance: order-1 must hold 3 events, got {o1:?}"
    );
    for (i, (got, sent)) in o1.iter().zip(&sent1).enumerate() {
        assert_recorded(got, sent, "order-1", i as u64, "read order-1");
    }
    assert_eq!(positions(&o1), [1, 5, 6], "conformance: order-1 positions");
    let o2 = read_fwd(&store, "order-2").await;
    assert_eq!(
        o2.len(),
        3,
        "conformance: order-2 must hold 3 events, got {o2:?}"
    );
    for (i, (got, sent)) in o2.iter().zip(&three).enumerate() {
        assert_recorded(got, sent, "order-2", i as u64, "read order-2");
    }
    assert_eq!(positions(&o2), [2, 3, 4], "conformance: order-2 positions");

    let all = read_all(&store, ReadAll::forwards()).await;
    assert_eq!(
        positions(&all),
        [1, 2, 3, 4, 5, 6],
        "conformance: $all positions dense, the first event at 1 (0 is before it)"
    );
    let streams: Vec<&str> = all.iter().map(|e| e.stream.as_str()).collect();
    assert_eq!(
        streams,
        ["order-1", "order-2", "order-2", "order-2", "order-1", "order-1"],
        "conformance: $all commit order"
    );
    assert_eq!(
        revs(&all),
        [0, 0, 1, 2, 1, 2],
        "conformance: $all revisions"
    );
    for e in &all {
        let direct = if e.stream.as_str() == "order-1" {
            &o1
        } else {
            &o2
        };
        assert_eq!(
            Some(e),
            direct.get(e.revision.0 as usize),
            "conformance: $all and the stream read disagree"
        );
    }
    assert_created_non_decreasing(&all, "$all");
    let slack = std::time::Duration::from_secs(300);
    let after = Timestamp::now();
    for e in &all {
        assert!(
            e.created >= before.saturating_sub(slack)
                && e.created.0 <= after.0 + slack.as_micros() as i64,
            "conformance: created {} is not near the commit time ({before}..{after})",
            e.created
        );
    }
    assert_eq!(ok(store.head_position().await, "head"), Some(Position(6)));

    // A large batch stays one contiguous unit.
    let bulk = evs("Bulk", 0, 500);
    let r = ok(
        store
            .append(sn("bulk-1"), ExpectedRevision::NoStream, bulk.clone())
            .await,
        "append 500 events",
    );
    assert_eq!(r, result(499, 506), "conformance: 500-event append result");
    let got = read_fwd(&store, "bulk-1").await;
    assert_eq!(
        ids(&got),
        data_ids(&bulk),
        "conformance: bulk-1 ids in order"
    );
    assert_eq!(
        revs(&got),
        (0..500).collect::<Vec<_>>(),
        "conformance: bulk-1 revisions"
    );
    assert_eq!(
        positions(&got),
        (7..507).collect::<Vec<_>>(),
        "conformance: bulk-1 positions"
    );
}

/// `Any`, `NoStream`, `StreamExists`, `Exact` succeeding and failing; a
/// failure is `WrongExpectedVersion` with the right `actual`, and writes nothing.
pub async fn expected_revision_forms<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let s = sn("acct-1");
    let head = |n: u64| Some(Position(n));

    let step = "Exact(0) on a stream never written";
    assert_wev(
        store.append(s.clone(), exact(0), evs("E", 0, 1)).await,
        Some(&s),
        exact(0),
        CurrentRevision::NoStream,
        step,
    );
    let step = "StreamExists on a stream never written";
    assert_wev(
        store
            .append(s.clone(), ExpectedRevision::StreamExists, evs("E", 0, 1))
            .await,
        Some(&s),
        ExpectedRevision::StreamExists,
        CurrentRevision::NoStream,
        step,
    );
    assert_eq!(
        ok(store.head_position().await, "head"),
        None,
        "conformance: failed appends wrote something"
    );
    assert_kind(
        store.read_stream(ReadStream::forwards(s.clone())).await,
        "StreamNotFound",
        "read after failed appends",
    );

    let a = evs("E", 0, 1);
    assert_eq!(
        ok(
            store
                .append(s.clone(), ExpectedRevision::NoStream, a.clone())
                .await,
            "NoStream on a new stream"
        ),
        result(0, 1)
    );
    let step = "NoStream on an existing stream";
    assert_wev(
        store
            .append(s.clone(), ExpectedRevision::NoStream, evs("E", 1, 1))
            .await,
        Some(&s),
        ExpectedRevision::NoStream,
        cur(0),
        step,
    );
    let b = evs("E", 1, 1);
    assert_eq!(
        ok(
            store
                .append(s.clone(), ExpectedRevision::StreamExists, b.clone())
                .await,
            "StreamExists"
        ),
        result(1, 2)
    );
    let c = evs("E", 2, 2);
    assert_eq!(
        ok(
            store.append(s.clone(), exact(1), c.clone()).await,
            "Exact(1)"
        ),
        result(3, 4)
    );
    assert_wev(
        store.append(s.clone(), exact(1), evs("E", 4, 1)).await,
        Some(&s),
        exact(1),
        cur(3),
        "stale Exact(1)",
    );
    assert_wev(
        store.append(s.clone(), exact(7), evs("E", 4, 1)).await,
        Some(&s),
        exact(7),
        cur(3),
        "Exact(7) ahead of the stream",
    );
    assert_eq!(
        ok(store.head_position().await, "head"),
        head(4),
        "conformance: failed appends wrote something"
    );
    let d = evs("E", 4, 1);
    assert_eq!(
        ok(
            store
                .append(s.clone(), ExpectedRevision::Any, d.clone())
                .await,
            "Any"
        ),
        result(4, 5)
    );
    let e = evs("E", 5, 1);
    assert_eq!(
        ok(
            store.append(sn("acct-2"), ExpectedRevision::Any, e).await,
            "Any on a new stream"
        ),
        result(0, 6)
    );

    let got = read_fwd(&store, "acct-1").await;
    let sent: Vec<_> = [a, b, c, d].concat();
    assert_eq!(
        ids(&got),
        data_ids(&sent),
        "conformance: acct-1 holds exactly the successful appends"
    );
    assert_eq!(revs(&got), [0, 1, 2, 3, 4], "conformance: acct-1 revisions");
    assert_eq!(
        read_all(&store, ReadAll::forwards()).await.len(),
        6,
        "conformance: $all holds exactly the successful appends"
    );
}

/// Retries of the same ids at the same expected place succeed with the
/// original result and write nothing; mismatches stay errors.
pub async fn idempotent_appends<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let s = sn("idem-1");
    let a = evs("A", 0, 2);
    let ra = ok(
        store
            .append(s.clone(), ExpectedRevision::NoStream, a.clone())
            .await,
        "first append",
    );
    assert_eq!(ra, result(1, 2));
    assert_eq!(
        ok(
            store
                .append(s.clone(), ExpectedRevision::NoStream, a.clone())
                .await,
            "NoStream retry"
        ),
        ra,
        "conformance: NoStream retry result"
    );
    let b = evs("B", 2, 1);
    let rb = ok(
        store.append(s.clone(), exact(1), b.clone()).await,
        "Exact(1) append",
    );
    assert_eq!(rb, result(2, 3));
    assert_eq!(
        ok(
            store.append(s.clone(), exact(1), b.clone()).await,
            "Exact(1) retry"
        ),
        rb,
        "conformance: Exact retry result"
    );
    assert_eq!(
        ok(
            store
                .append(s.clone(), ExpectedRevision::NoStream, a.clone())
                .await,
            "late NoStream retry"
        ),
        ra,
        "conformance: NoStream retry after later appends"
    );
    assert_eq!(
        ok(
            store.append(s.clone(), exact(0), a[1..].to_vec()).await,
            "Exact(0) retry of the 2nd event"
        ),
        ra,
        "conformance: Exact retry of a suffix"
    );

    // Not at the expected place, or only partly: errors.
    let x = ev("X", 99);
    let step = "NoStream with one matching id and one new";
    assert_wev(
        store
            .append(
                s.clone(),
                ExpectedRevision::NoStream,
                vec![a[0].clone(), x.clone()],
            )
            .await,
        Some(&s),
        ExpectedRevision::NoStream,
        cur(2),
        step,
    );
    let step = "Exact(0) with the id that stands at revision 2";
    assert_wev(
        store.append(s.clone(), exact(0), b.clone()).await,
        Some(&s),
        exact(0),
        cur(2),
        step,
    );
    let step = "Exact(1) with more events than stand there";
    assert_wev(
        store
            .append(s.clone(), exact(1), vec![b[0].clone(), x.clone()])
            .await,
        Some(&s),
        exact(1),
        cur(2),
        step,
    );

    // Any (and StreamExists): re-appending the last batch is a no-op.
    let c = evs("C", 3, 2);
    let rc = ok(
        store
            .append(s.clone(), ExpectedRevision::Any, c.clone())
            .await,
        "Any append",
    );
    assert_eq!(rc, result(4, 5));
    assert_eq!(
        ok(
            store
                .append(s.clone(), ExpectedRevision::Any, c.clone())
                .await,
            "Any retry"
        ),
        rc,
        "conformance: Any retry result"
    );
    let d = evs("D", 5, 1);
    let rd = ok(
        store
            .append(s.clone(), ExpectedRevision::StreamExists, d.clone())
            .await,
        "StreamExists append",
    );
    assert_eq!(rd, result(5, 6));
    assert_eq!(
        ok(
            store
                .append(s.clone(), ExpectedRevision::StreamExists, d.clone())
                .await,
            "StreamExists retry"
        ),
        rd,
        "conformance: StreamExists retry result"
    );
    assert_eq!(
        ok(
            store
                .append(s.clone(), ExpectedRevision::Any, d.clone())
                .await,
            "Any retry of the last event"
        ),
        rd
    );

    let got = read_fwd(&store, "idem-1").await;
    let sent: Vec<_> = [a, b, c, d].concat();
    assert_eq!(
        ids(&got),
        data_ids(&sent),
        "conformance: retries must not write duplicates"
    );
    assert_eq!(
        ok(store.head_position().await, "head"),
        Some(Position(6)),
        "conformance: retries moved the head"
    );
    assert_eq!(
        read_all(&store, ReadAll::forwards()).await.len(),
        6,
        "conformance: retries wrote to $all"
    );
}

/// An empty append checks the expectation only.
pub async fn empty_append<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let s = sn("empty-1");
    ok(
        store
            .append(s.clone(), ExpectedRevision::NoStream, vec![])
            .await,
        "empty NoStream on a new stream",
    );
    ok(
        store.append(s.clone(), ExpectedRevision::Any, vec![]).await,
        "empty Any on a new stream",
    );
    assert_wev(
        store.append(s.clone(), exact(0), vec![]).await,
        Some(&s),
        exact(0),
        CurrentRevision::NoStream,
        "empty Exact(0) on a new stream",
    );
    let step = "empty StreamExists on a new stream";
    assert_wev(
        store
            .append(s.clone(), ExpectedRevision::StreamExists, vec![])
            .await,
        Some(&s),
        ExpectedRevision::StreamExists,
        CurrentRevision::NoStream,
        step,
    );
    assert_eq!(
        ok(store.head_position().await, "head"),
        None,
        "conformance: an empty append wrote something"
    );
    assert_kind(
        store.read_stream(ReadStream::forwards(s.clone())).await,
        "StreamNotFound",
        "an empty append must not create the stream",
    );

    let events = evs("E", 0, 2);
    ok(
        store
            .append(s.clone(), ExpectedRevision::NoStream, events.clone())
            .await,
        "append 2",
    );
    assert_eq!(
        ok(
            store.append(s.clone(), exact(1), vec![]).await,
            "empty Exact(1)"
        ),
        result(1, 2)
    );
    assert_eq!(
        ok(
            store
                .append(s.clone(), ExpectedRevision::StreamExists, vec![])
                .await,
            "empty StreamExists"
        ),
        result(1, 2)
    );
    assert_eq!(
        ok(
            store.append(s.clone(), ExpectedRevision::Any, vec![]).await,
            "empty Any"
        ),
        result(1, 2)
    );
    assert_wev(
        store.append(s.clone(), exact(0), vec![]).await,
        Some(&s),
        exact(0),
        cur(1),
        "empty Exact(0) (no idempotency)",
    );
    assert_wev(
        store
            .append(s.clone(), ExpectedRevision::NoStream, vec![])
            .await,
        Some(&s),
        ExpectedRevision::NoStream,
        cur(1),
        "empty NoStream",
    );
    assert_eq!(
        ok(store.head_position().await, "head"),
        Some(Position(2)),
        "conformance: an empty append moved the head"
    );
    assert_eq!(ids(&read_fwd(&store, "empty-1").await), data_ids(&events));
}

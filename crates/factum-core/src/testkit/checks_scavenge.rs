//! What a scavenge leaves (ADR 33), for backends that have one
//! ([`StoreFactory::scavenge`]): hidden events are gone from `$all` and the
//! link streams, the rest keep their positions, so `$all` has gaps, and
//! every reader crosses them: reads forwards and backwards, from a position
//! inside a gap, pages, and a subscription from the start. Streams whose
//! events all went keep their state.

use super::support::*;
use super::StoreFactory;
use crate::expected::ExpectedRevision;
use crate::model::{Position, RecordedEvent, StreamRevision};
use crate::read::{ReadAll, Subscribe, SubscriptionStart};
use crate::store::EventStore;

fn ours(events: Vec<RecordedEvent>) -> Vec<RecordedEvent> {
    events
        .into_iter()
        .filter(|e| e.stream.as_str().contains("gap-"))
        .collect()
}

/// Scavenged `$all` has gaps that every reader crosses.
pub async fn scavenge_leaves_gaps<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let w = |r: crate::Result<crate::AppendResult>, step: &str| ok(r, step);
    w(
        store
            .append(sn("gap-a"), ExpectedRevision::NoStream, evs("GapA", 0, 5))
            .await,
        "append gap-a",
    );
    set(&store, "gap-a", meta(Some(1), None)).await;
    w(
        store
            .append(sn("gap-b"), ExpectedRevision::NoStream, evs("GapB", 0, 3))
            .await,
        "append gap-b",
    );
    ok(
        store.delete_stream(sn("gap-b"), exact(2)).await,
        "delete gap-b",
    );
    w(
        store
            .append(sn("gap-c"), ExpectedRevision::NoStream, evs("GapC", 0, 2))
            .await,
        "append gap-c",
    );
    ok(
        store.tombstone_stream(sn("gap-c"), exact(1)).await,
        "tombstone gap-c",
    );
    w(
        store
            .append(sn("gap-d"), ExpectedRevision::NoStream, evs("GapD", 0, 2))
            .await,
        "append gap-d",
    );
    let before = ours(read_all(&store, ReadAll::forwards()).await);
    if !f.scavenge(&store).await {
        return;
    }
    let after = ours(read_all(&store, ReadAll::forwards()).await);
    // What stays: gap-a's last event and metadata, gap-b's soft-delete
    // metadata, gap-c's tombstone, gap-d; each at its old position.
    let kept: Vec<RecordedEvent> = before
        .iter()
        .filter(|e| {
            let s = e.stream.as_str();
            s == "gap-d"
                || s == "gap-a" && e.revision.0 == 4
                || s == "$$gap-a"
                || s == "$$gap-b"
                || s == "gap-c" && e.event_type == super::TOMBSTONE_EVENT_TYPE
        })
        .cloned()
        .collect();
    assert_eq!(
        ids(&after),
        ids(&kept),
        "conformance: a scavenge removes exactly the hidden events"
    );
    assert_eq!(
        positions(&after),
        positions(&kept),
        "conformance: positions never change"
    );
    let all = read_all(&store, ReadAll::forwards()).await;
    let mut back = read_all(&store, ReadAll::backwards()).await;
    back.reverse();
    assert_eq!(
        ids(&back),
        ids(&all),
        "conformance: $all backwards crosses the gaps"
    );
    // From inside the first gap: the next event after it.
    let p = positions(&all);
    let gap = p
        .windows(2)
        .find(|w| w[1] > w[0] + 1)
        .expect("conformance: a scavenge leaves a gap in $all")
        .to_vec();
    let from = read_all(
        &store,
        ReadAll::forwards()
            .from_position(Position(gap[0] + 1))
            .max_count(1),
    )
    .await;
    assert_eq!(
        positions(&from),
        vec![gap[1]],
        "conformance: a read from inside a gap starts after it"
    );
    let back = read_all(
        &store,
        ReadAll::backwards()
            .from_position(Position(gap[1] - 1))
            .max_count(1),
    )
    .await;
    assert_eq!(
        positions(&back),
        vec![gap[0]],
        "conformance: a read backwards from inside a gap starts before it"
    );
    let mut paged = Vec::new();
    let mut next = Position(0);
    loop {
        let page = read_all(&store, ReadAll::forwards().from_position(next).max_count(2)).await;
        let Some(last) = page.last() else { break };
        next = Position(last.position.0 + 1);
        paged.extend(page);
    }
    assert_eq!(ids(&paged), ids(&all), "conformance: pages cross the gaps");
    let mut sub = ok(
        store
            .subscribe(Subscribe::all(SubscriptionStart::Beginning, None))
            .await,
        "subscribe to $all",
    );
    let seen = events_until_caught_up(&mut sub, "subscription across gaps").await;
    assert_eq!(
        ids(&seen),
        ids(&all),
        "conformance: a subscription crosses the gaps"
    );
    // The stream states stand: gap-a goes on at 5, gap-b (all its events
    // gone) is recreated at 3, gap-c stays deleted.
    let a = w(
        store.append(sn("gap-a"), exact(4), evs("GapA", 5, 1)).await,
        "append to gap-a after a scavenge",
    );
    assert_eq!(a.revision, StreamRevision(5));
    let b = w(
        store.append(sn("gap-b"), exact(2), evs("GapB", 3, 1)).await,
        "recreate gap-b after a scavenge",
    );
    assert_eq!(b.revision, StreamRevision(3));
    assert_kind(
        store
            .append(sn("gap-c"), ExpectedRevision::Any, evs("GapC", 2, 1))
            .await,
        "StreamDeleted",
        "append to tombstoned gap-c after a scavenge",
    );
}

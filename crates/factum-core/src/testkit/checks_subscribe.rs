//! Subscriptions: to a stream, to `$all` (filtered or not), to link
//! streams; from `Beginning`, `End`, `After(n)`; catch-up → live hand-over;
//! slow consumers.

use std::sync::Arc;
use std::time::Duration;

use super::support::*;
use super::StoreFactory;
use crate::expected::ExpectedRevision;
use crate::model::{Position, RecordedEvent};
use crate::read::{Filter, ReadAll, Subscribe, SubscriptionStart};
use crate::store::{EventStore, Subscription};

async fn subscribe<S: EventStore>(store: &S, req: Subscribe) -> Subscription {
    let step = format!("subscribe({req:?})");
    ok(store.subscribe(req).await, step)
}

async fn append<S: EventStore>(store: &S, stream: &str, event_type: &str, first: u64, count: u64) {
    let step = format!("append to {stream}");
    ok(
        store
            .append(
                sn(stream),
                ExpectedRevision::Any,
                evs(event_type, first, count),
            )
            .await,
        step,
    );
}

/// Events read from `$all` matching a filter (`None`: all).
async fn all_matching<S: EventStore>(store: &S, filter: Option<Filter>) -> Vec<RecordedEvent> {
    let mut req = ReadAll::forwards();
    req.filter = filter;
    read_all(store, req).await
}

/// Stream subscriptions from `Beginning`, `After(n)` (exclusive), `End`;
/// `CaughtUp` after the existing events; a stream that does not exist yet.
pub async fn subscribe_to_stream<F: StoreFactory>(f: &F) {
    use SubscriptionStart::{After, Beginning, End};
    let store = f.create().await;
    append(&store, "sub-1", "E", 0, 3).await;
    append(&store, "other-1", "E", 0, 2).await;
    let stream = |start| Subscribe::stream(sn("sub-1"), start);

    let mut sub = subscribe(&store, stream(Beginning)).await;
    let got = events_until_caught_up(&mut sub, "stream from Beginning").await;
    assert_eq!(
        got,
        read_fwd(&store, "sub-1").await,
        "conformance: stream subscription catch-up (all events before CaughtUp, as read)"
    );
    append(&store, "sub-1", "E", 3, 2).await;
    append(&store, "other-1", "E", 2, 1).await;
    let live = take_events(&mut sub, 2, "stream live").await;
    let full = read_fwd(&store, "sub-1").await;
    assert_eq!(
        live,
        full[3..],
        "conformance: stream subscription live events"
    );
    assert_no_event(&mut sub, "stream subscription after the live events").await;

    let mut sub = subscribe(&store, stream(After(1))).await;
    let got = events_until_caught_up(&mut sub, "stream from After(1)").await;
    assert_eq!(revs(&got), [2, 3, 4], "conformance: After(1) is exclusive");
    let mut sub = subscribe(&store, stream(After(4))).await;
    assert!(
        events_until_caught_up(&mut sub, "stream from After(last)")
            .await
            .is_empty(),
        "conformance: After(last) delivers nothing old"
    );

    let mut sub = subscribe(&store, stream(End)).await;
    let got = events_until_caught_up(&mut sub, "stream from End").await;
    assert!(
        got.is_empty(),
        "conformance: End must not deliver existing events, got {got:?}"
    );
    append(&store, "sub-1", "E", 5, 1).await;
    let got = take_events(&mut sub, 1, "stream from End, live").await;
    assert_eq!(revs(&got), [5], "conformance: End delivers the next event");
    assert_no_event(&mut sub, "stream from End").await;

    let mut sub = subscribe(&store, Subscribe::stream(sn("later-1"), Beginning)).await;
    assert!(
        events_until_caught_up(&mut sub, "a stream that does not exist yet")
            .await
            .is_empty()
    );
    append(&store, "later-1", "E", 0, 2).await;
    let got = take_events(&mut sub, 2, "a stream created after subscribing").await;
    assert_eq!(
        got,
        read_fwd(&store, "later-1").await,
        "conformance: subscription to a stream created later"
    );
}

/// `$all` subscriptions from `Beginning`, `After(n)` (exclusive), `End`.
pub async fn subscribe_to_all<F: StoreFactory>(f: &F) {
    use SubscriptionStart::{After, Beginning, End};
    let store = f.create().await;
    let mut empty = subscribe(&store, Subscribe::all(Beginning, None)).await;
    assert!(events_until_caught_up(&mut empty, "$all of an empty store")
        .await
        .is_empty());
    for i in 0..5 {
        append(&store, &format!("all-{}", i % 2), "E", i, 1).await;
    }
    let mut sub = subscribe(&store, Subscribe::all(Beginning, None)).await;
    let got = events_until_caught_up(&mut sub, "$all from Beginning").await;
    assert_eq!(
        got,
        all_matching(&store, None).await,
        "conformance: $all catch-up (all events before CaughtUp, as read)"
    );
    append(&store, "all-0", "E", 5, 2).await;
    append(&store, "all-1", "E", 7, 1).await;
    let live = take_events(&mut sub, 3, "$all live").await;
    assert_eq!(
        live,
        all_matching(&store, None).await[5..],
        "conformance: $all live events"
    );
    assert_no_event(&mut sub, "$all after the live events").await;
    let old = take_events(&mut empty, 8, "$all subscribed on an empty store").await;
    assert_eq!(
        positions(&old),
        (1..=8).collect::<Vec<_>>(),
        "conformance: $all subscribed on an empty store"
    );

    let mut sub = subscribe(&store, Subscribe::all(After(2), None)).await;
    let got = events_until_caught_up(&mut sub, "$all from After(2)").await;
    assert_eq!(
        positions(&got),
        [3, 4, 5, 6, 7, 8],
        "conformance: $all After(2) is exclusive"
    );
    // 0 is "before the first event" (the first event is at 1): a consumer
    // whose stored checkpoint starts at 0 misses nothing.
    let mut sub = subscribe(&store, Subscribe::all(After(0), None)).await;
    let got = events_until_caught_up(&mut sub, "$all from After(0)").await;
    assert_eq!(
        got,
        all_matching(&store, None).await,
        "conformance: $all After(0) delivers the first event (at position 1) and all after it"
    );

    let mut sub = subscribe(&store, Subscribe::all(End, None)).await;
    let got = events_until_caught_up(&mut sub, "$all from End").await;
    assert!(
        got.is_empty(),
        "conformance: $all End must not deliver existing events, got {got:?}"
    );
    append(&store, "all-2", "E", 8, 1).await;
    let got = take_events(&mut sub, 1, "$all from End, live").await;
    assert_eq!(
        positions(&got),
        [9],
        "conformance: $all End delivers the next event"
    );
    assert_no_event(&mut sub, "$all from End").await;
}

/// Filtered `$all` subscriptions deliver exactly the matching events
/// (checkpoints ignored).
pub async fn subscribe_to_all_filtered<F: StoreFactory>(f: &F) {
    use SubscriptionStart::{After, Beginning};
    let store = f.create().await;
    append(&store, "pay-1", "PaymentMade", 0, 2).await;
    append(&store, "ship-1", "Shipped", 0, 3).await;
    append(&store, "pay-2", "PaymentRefunded", 0, 1).await;
    let filters = [
        Filter::stream_prefix(["pay-"]),
        Filter::event_type_regex("^Pay").expect("valid regex"),
        Filter::event_type_prefix(["Shipped"]),
    ];
    for filter in filters {
        let what = format!("$all filtered by {filter:?}");
        let mut sub = subscribe(&store, Subscribe::all(Beginning, Some(filter.clone()))).await;
        let mut after = subscribe(&store, Subscribe::all(After(2), Some(filter.clone()))).await;
        let want = all_matching(&store, Some(filter.clone())).await;
        let got = events_until_caught_up(&mut sub, &what).await;
        assert_eq!(got, want, "conformance: {what}: catch-up");
        let got = events_until_caught_up(&mut after, &what).await;
        let want_after: Vec<_> = want
            .iter()
            .filter(|e| e.position > Position(2))
            .cloned()
            .collect();
        assert_eq!(got, want_after, "conformance: {what} from After(2)");
        append(&store, "pay-1", "PaymentMade", 9, 1).await;
        append(&store, "ship-1", "Shipped", 9, 2).await;
        append(&store, "pay-3", "PaymentMade", 9, 1).await;
        let now = all_matching(&store, Some(filter.clone())).await;
        let new = &now[want.len()..];
        assert_eq!(
            take_events(&mut sub, new.len(), &what).await,
            new,
            "conformance: {what}: live"
        );
        assert_no_event(&mut sub, &what).await;
        assert_eq!(
            take_events(&mut after, new.len(), &what).await,
            new,
            "conformance: {what} from After(2): live"
        );
    }
}

/// Subscriptions to `$ce-…` and `$et-…` deliver the original events with
/// their links, `After(n)` counting link revisions.
pub async fn subscribe_to_link_streams<F: StoreFactory>(f: &F) {
    use SubscriptionStart::{After, Beginning, End};
    let store = f.create().await;
    append(&store, "link-1", "Ping", 0, 2).await;
    append(&store, "link-2", "Pong", 0, 1).await;
    append(&store, "other-1", "Ping", 0, 1).await;
    append(&store, "link-1", "Pong", 2, 1).await;
    for name in ["$ce-link", "$et-Ping"] {
        let mut sub = subscribe(&store, Subscribe::stream(sn(name), Beginning)).await;
        let got = events_until_caught_up(&mut sub, name).await;
        assert_eq!(
            got,
            read_fwd(&store, name).await,
            "conformance: {name} subscription catch-up (with links)"
        );
        let mut after = subscribe(&store, Subscribe::stream(sn(name), After(1))).await;
        let got = events_until_caught_up(&mut after, name).await;
        assert_eq!(
            link_revs(&got),
            (2..read_fwd(&store, name).await.len() as u64).collect::<Vec<_>>(),
            "conformance: {name} After(1) counts link revisions"
        );
        let mut end = subscribe(&store, Subscribe::stream(sn(name), End)).await;
        assert!(
            events_until_caught_up(&mut end, name).await.is_empty(),
            "conformance: {name} from End"
        );
        let before = read_fwd(&store, name).await.len();
        append(&store, "link-2", "Ping", 5, 1).await;
        let now = read_fwd(&store, name).await;
        assert_eq!(now.len(), before + 1);
        for s in [&mut sub, &mut after, &mut end] {
            let got = take_events(s, 1, name).await;
            assert_eq!(
                got,
                now[before..],
                "conformance: {name} live event (with its link)"
            );
            assert_no_event(s, name).await;
        }
    }
    let mut sub = subscribe(&store, Subscribe::stream(sn("$ce-late"), Beginning)).await;
    assert!(
        events_until_caught_up(&mut sub, "$ce-late before its first event")
            .await
            .is_empty()
    );
    append(&store, "late-1", "E", 0, 1).await;
    let got = take_events(&mut sub, 1, "$ce-late").await;
    assert_eq!(
        got,
        read_fwd(&store, "$ce-late").await,
        "conformance: a link stream created after subscribing"
    );
}

/// Catch-up then live while a writer appends concurrently: every event
/// exactly once, in order, no gap across the hand-over.
pub async fn subscribe_catch_up_then_live<F: StoreFactory>(f: &F) {
    use SubscriptionStart::{After, Beginning};
    let store = Arc::new(f.create().await);
    for i in 0..30u64 {
        append(&*store, &format!("hand-{}", i % 2), "E", i * 10, 10).await;
    }
    let mut all_sub = subscribe(&*store, Subscribe::all(Beginning, None)).await;
    let mut stream_sub = subscribe(&*store, Subscribe::stream(sn("hand-1"), Beginning)).await;
    let writer = tokio::spawn({
        let store = Arc::clone(&store);
        async move {
            for i in 0..60u64 {
                append(&*store, &format!("hand-{}", i % 2), "L", i * 5, 5).await;
                // Pace the writer so subscribers reach the head and go live
                // (and back) several times while it writes.
                if i % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    });
    // A third subscriber joins while the writer is busy.
    let mut late = None;
    for _ in 0..2000 {
        let head = ok(store.head_position().await, "head");
        if head >= Some(Position(450)) || writer.is_finished() {
            late = Some(subscribe(&*store, Subscribe::all(After(100), None)).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let got_all = take_events(&mut all_sub, 600, "$all during concurrent appends").await;
    let got_stream = take_events(&mut stream_sub, 300, "hand-1 during concurrent appends").await;
    if let Err(e) = writer.await {
        panic!("conformance: the writer task failed: {e}");
    }
    let all = all_matching(&*store, None).await;
    assert_eq!(all.len(), 600);
    assert_eq!(
        positions(&got_all),
        (1..=600).collect::<Vec<_>>(),
        "conformance: $all subscription across the hand-over (gap, duplicate or reorder)"
    );
    assert_eq!(
        got_all, all,
        "conformance: $all subscription events differ from the read"
    );
    assert_eq!(
        revs(&got_stream),
        (0..300).collect::<Vec<_>>(),
        "conformance: stream subscription across the hand-over"
    );
    assert_eq!(
        got_stream,
        read_fwd(&*store, "hand-1").await,
        "conformance: stream subscription events differ from the read"
    );
    assert_no_event(&mut all_sub, "$all after everything").await;
    assert_no_event(&mut stream_sub, "hand-1 after everything").await;
    let mut late = late.expect("conformance: the writer never reached position 450");
    let got = take_events(
        &mut late,
        500,
        "$all subscribed during appends from After(100)",
    )
    .await;
    assert_eq!(
        got,
        all[100..],
        "conformance: subscription started during appends"
    );
    assert_no_event(&mut late, "late subscriber after everything").await;
}

/// A subscriber that does not read while 5000 events are appended gets
/// them all afterwards, in order (it may be told `FellBehind`), and does not
/// block the writer.
pub async fn subscribe_slow_consumer<F: StoreFactory>(f: &F) {
    use SubscriptionStart::Beginning;
    let store = f.create().await;
    let mut all_sub = subscribe(&store, Subscribe::all(Beginning, None)).await;
    let mut stream_sub = subscribe(&store, Subscribe::stream(sn("slow-1"), Beginning)).await;
    assert!(
        events_until_caught_up(&mut all_sub, "$all on an empty store")
            .await
            .is_empty()
    );
    assert!(
        events_until_caught_up(&mut stream_sub, "slow-1 before it exists")
            .await
            .is_empty()
    );
    let writes = async {
        for i in 0..20u64 {
            append(&store, "slow-1", "E", i * 250, 250).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), writes)
        .await
        .is_err()
    {
        panic!("conformance: appends blocked behind subscribers that do not read");
    }
    let got = take_events(&mut all_sub, 5000, "slow $all subscriber").await;
    assert_eq!(
        positions(&got),
        (1..=5000).collect::<Vec<_>>(),
        "conformance: slow $all subscriber (gap, duplicate or reorder)"
    );
    let got = take_events(&mut stream_sub, 5000, "slow stream subscriber").await;
    assert_eq!(
        revs(&got),
        (0..5000).collect::<Vec<_>>(),
        "conformance: slow stream subscriber (gap, duplicate or reorder)"
    );
    assert_eq!(
        got,
        read_fwd(&store, "slow-1").await,
        "conformance: slow stream subscriber events differ from the read"
    );
    append(&store, "slow-1", "E", 5000, 1).await;
    assert_eq!(
        positions(&take_events(&mut all_sub, 1, "slow $all subscriber, live again").await),
        [5001]
    );
    assert_eq!(
        revs(&take_events(&mut stream_sub, 1, "slow stream subscriber, live again").await),
        [5000]
    );
    assert_no_event(&mut all_sub, "slow $all subscriber").await;
}

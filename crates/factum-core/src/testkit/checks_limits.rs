//! Read-only system streams, limits and bad input, the head position.

use super::support::*;
use super::{StoreFactory, MAX_EVENT_SIZE};
use crate::error::Error;
use crate::expected::ExpectedRevision;
use crate::model::{
    EventData, Position, StreamName, StreamRevision, MAX_EVENT_TYPE_BYTES, MAX_STREAM_NAME_BYTES,
};
use crate::read::{ReadAll, ReadStream};
use crate::store::EventStore;

/// `$all`, `$ce-…` and `$et-…` are read-only: appends and deletes are `InvalidInput`.
pub async fn system_streams_are_read_only<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    ok(
        store
            .append(
                sn("order-1"),
                ExpectedRevision::Any,
                vec![ev("OrderPlaced", 0)],
            )
            .await,
        "append",
    );
    for name in ["$all", "$ce-order", "$et-OrderPlaced", "$ce-x", "$et-x"] {
        let s = StreamName::new(name).expect("valid name");
        for expected in [ExpectedRevision::Any, ExpectedRevision::NoStream, exact(0)] {
            assert_kind(
                store.append(s.clone(), expected, vec![ev("X", 0)]).await,
                "InvalidInput",
                format!("append to {name} ({expected})"),
            );
        }
        assert_kind(
            store.delete_stream(s.clone(), ExpectedRevision::Any).await,
            "InvalidInput",
            format!("delete {name}"),
        );
        assert_kind(
            store
                .tombstone_stream(s.clone(), ExpectedRevision::Any)
                .await,
            "InvalidInput",
            format!("tombstone {name}"),
        );
    }
    assert_eq!(
        ok(store.head_position().await, "head"),
        Some(Position(1)),
        "conformance: a refused request wrote something"
    );
    assert_eq!(
        read_fwd(&store, "$ce-order").await.len(),
        1,
        "conformance: $ce-order after refused requests"
    );
}

/// Oversized events and bad event types are refused without writing;
/// invalid stream names are refused by `StreamName::new`.
pub async fn limits_and_bad_input<F: StoreFactory>(f: &F) {
    assert!(
        matches!(StreamName::new(""), Err(Error::InvalidInput(_))),
        "conformance: empty stream name"
    );
    assert!(
        matches!(StreamName::new("a\nb"), Err(Error::InvalidInput(_))),
        "conformance: control character in a stream name"
    );
    assert!(
        matches!(
            StreamName::new("x".repeat(MAX_STREAM_NAME_BYTES + 1)),
            Err(Error::LimitExceeded { .. })
        ),
        "conformance: stream name too long"
    );

    let store = f.create().await;
    let mib = 1024 * 1024;
    let fine = EventData::binary("Big", vec![0xabu8; mib]).with_metadata(vec![1u8; 1000]);
    ok(
        store
            .append(sn("big-0"), ExpectedRevision::NoStream, vec![fine.clone()])
            .await,
        "append a 1 MiB event",
    );
    let got = read_fwd(&store, "big-0").await;
    assert_eq!(got.len(), 1);
    assert_recorded(&got[0], &fine, "big-0", 0, "1 MiB event");
    let head = ok(store.head_position().await, "head");
    ok(
        store
            .append(
                sn("big-1"),
                ExpectedRevision::NoStream,
                vec![ev("Small", 0)],
            )
            .await,
        "append to big-1",
    );
    let head1 = ok(store.head_position().await, "head");

    let data_too_big = EventData::binary("Huge", vec![0u8; MAX_EVENT_SIZE + 1]);
    let step = "a batch with an event over 16 MiB of data";
    assert_kind(
        store
            .append(
                sn("big-1"),
                ExpectedRevision::Any,
                vec![ev("Small", 1), data_too_big],
            )
            .await,
        "LimitExceeded",
        step,
    );
    let sum_too_big =
        EventData::binary("Huge", vec![0u8; 9 * mib]).with_metadata(vec![0u8; 8 * mib]);
    let step = "an event whose data + metadata exceed 16 MiB";
    assert_kind(
        store
            .append(sn("big-2"), ExpectedRevision::NoStream, vec![sum_too_big])
            .await,
        "LimitExceeded",
        step,
    );
    let step = "an empty event type";
    assert_kind(
        store
            .append(sn("big-2"), ExpectedRevision::Any, vec![ev("", 0)])
            .await,
        "InvalidInput",
        step,
    );
    let long_type = "T".repeat(MAX_EVENT_TYPE_BYTES + 1);
    let step = "an event type over the limit";
    assert_kind(
        store
            .append(sn("big-2"), ExpectedRevision::Any, vec![ev(&long_type, 0)])
            .await,
        "LimitExceeded",
        step,
    );

    assert_eq!(
        ok(store.head_position().await, "head"),
        head1,
        "conformance: a refused batch moved the head"
    );
    assert!(head1 > head);
    assert_eq!(
        read_fwd(&store, "big-1").await.len(),
        1,
        "conformance: a refused batch wrote part of itself"
    );
    assert_kind(
        store.read_stream(ReadStream::forwards(sn("big-2"))).await,
        "StreamNotFound",
        "big-2 after refused appends",
    );
    let r = ok(
        store
            .append(sn("big-1"), exact(0), vec![ev("Small", 2)])
            .await,
        "append after refused appends",
    );
    assert_eq!(
        r.revision,
        StreamRevision(1),
        "conformance: the store must keep working after refusals"
    );
}

/// `head_position`: `None` when empty, then the position of the last commit.
pub async fn head_position<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    assert_eq!(
        ok(store.head_position().await, "head"),
        None,
        "conformance: head of an empty store"
    );
    for i in 0..5u64 {
        let r = ok(
            store
                .append(
                    sn(&format!("h-{}", i % 2)),
                    ExpectedRevision::Any,
                    evs("E", i, i + 1),
                )
                .await,
            "append",
        );
        assert_eq!(
            ok(store.head_position().await, "head"),
            Some(r.position),
            "conformance: head after append {i}"
        );
    }
    let last = read_all(&store, ReadAll::backwards().max_count(1)).await;
    assert_eq!(
        ok(store.head_position().await, "head"),
        Some(last[0].position),
        "conformance: head is the last position"
    );
    assert_eq!(last[0].position, Position(15));
}

/// Event types holding a control character (NUL, a line break, DEL, a C1
/// control) are `InvalidInput`, alone or inside a batch, and nothing is
/// written. Such an append fails only itself: 63 appends sent at the same
/// time as one with a NUL in its type all succeed (a backend that batches
/// concurrent appends must not let one bad member fail its group).
pub async fn control_characters_in_event_types<F: StoreFactory>(f: &F) {
    const TASKS: u64 = 64;
    const BAD_TASK: u64 = 17;
    let store = std::sync::Arc::new(f.create().await);
    for bad in [
        "a\0b",
        "\0",
        "line\nbreak",
        "tab\there",
        "del\u{7f}",
        "c1\u{85}",
    ] {
        assert_kind(
            store
                .append(sn("ctl-1"), ExpectedRevision::Any, vec![ev(bad, 0)])
                .await,
            "InvalidInput",
            format!("event type {bad:?}"),
        );
        assert_kind(
            store
                .append(
                    sn("ctl-1"),
                    ExpectedRevision::Any,
                    vec![ev("Fine", 0), ev(bad, 1)],
                )
                .await,
            "InvalidInput",
            format!("a batch with the event type {bad:?}"),
        );
    }
    assert_eq!(
        ok(store.head_position().await, "head"),
        None,
        "conformance: a refused event type wrote something"
    );
    let handles: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = std::sync::Arc::clone(&store);
            tokio::spawn(async move {
                let event_type = if task == BAD_TASK {
                    "Bad\0Type"
                } else {
                    "Fine"
                };
                store
                    .append(
                        sn(&format!("ctl-{task}")),
                        ExpectedRevision::NoStream,
                        vec![ev(event_type, task)],
                    )
                    .await
            })
        })
        .collect();
    for (task, h) in (0..TASKS).zip(handles) {
        let result = h
            .await
            .unwrap_or_else(|e| panic!("conformance: append task {task} failed: {e}"));
        if task == BAD_TASK {
            assert_kind(result, "InvalidInput", "the concurrent append with a NUL");
        } else {
            ok(
                result,
                format!("append {task}, sent beside one with a NUL in its type"),
            );
        }
    }
    let all = read_all(&*store, ReadAll::forwards()).await;
    assert_eq!(
        all.len() as u64,
        TASKS - 1,
        "conformance: every good concurrent append is in $all, the bad one is not"
    );
    assert_kind(
        store
            .read_stream(ReadStream::forwards(sn(&format!("ctl-{BAD_TASK}"))))
            .await,
        "StreamNotFound",
        "the stream of the refused append",
    );
}

//! Soft delete and tombstone.

use serde_json::json;

use super::support::*;
use super::{StoreFactory, TOMBSTONE_EVENT_TYPE, TOMBSTONE_REVISION};
use crate::expected::{CurrentRevision, ExpectedRevision};
use crate::metadata::StreamMetadata;
use crate::model::StreamRevision;
use crate::read::{Filter, ReadAll, ReadStream};
use crate::store::EventStore;

/// Soft delete: reads answer `StreamNotFound`; appending recreates the
/// stream with revisions continuing; old events stay hidden. (KurrentDB's
/// answers around a soft delete, row by row: `soft_delete_as_kurrentdb`.)
pub async fn soft_delete<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let s = sn("del-1");
    let first = evs("E", 0, 3);
    ok(
        store
            .append(s.clone(), ExpectedRevision::NoStream, first.clone())
            .await,
        "append",
    );
    let mut custom = meta(Some(100), None);
    custom.custom.insert("owner".into(), json!("ops"));
    set(&store, "del-1", custom.clone()).await;
    assert_wev(
        store.delete_stream(s.clone(), exact(1)).await,
        Some(&s),
        exact(1),
        cur(2),
        "delete with a stale Exact",
    );
    assert_eq!(
        read_fwd(&store, "del-1").await.len(),
        3,
        "conformance: a failed delete changed the stream"
    );
    ok(
        store.delete_stream(s.clone(), exact(2)).await,
        "delete with Exact(2)",
    );
    assert_kind(
        store.read_stream(ReadStream::forwards(s.clone())).await,
        "StreamNotFound",
        "read after soft delete",
    );
    assert_kind(
        store.read_stream(ReadStream::backwards(s.clone())).await,
        "StreamNotFound",
        "read backwards after soft delete",
    );
    let got = ok(
        store.stream_metadata(s.clone()).await,
        "metadata after soft delete",
    );
    assert_eq!(
        got.metadata,
        meta(None, Some(i64::MAX as u64)),
        "conformance: soft delete replaces the metadata with $tb = i64::MAX (as KurrentDB)"
    );
    assert_eq!(
        got.revision,
        Some(StreamRevision(1)),
        "conformance: soft delete writes one metadata event"
    );
    assert_kind(
        store
            .append(s.clone(), ExpectedRevision::StreamExists, evs("E", 9, 1))
            .await,
        "StreamDeleted",
        "StreamExists after soft delete",
    );
    assert_wev(
        store.append(s.clone(), exact(1), evs("E", 9, 1)).await,
        Some(&s),
        exact(1),
        cur(2),
        "Exact(last - 1) after soft delete: the stream keeps its last revision",
    );
    ok(
        store.delete_stream(s.clone(), ExpectedRevision::Any).await,
        "deleting a soft-deleted stream again",
    );

    let x = evs("X", 3, 1);
    let r = ok(
        store
            .append(s.clone(), ExpectedRevision::NoStream, x.clone())
            .await,
        "NoStream append recreates",
    );
    assert_eq!(
        r.revision,
        StreamRevision(3),
        "conformance: revisions continue after a soft delete"
    );
    assert_eq!(
        ok(
            store
                .append(s.clone(), ExpectedRevision::NoStream, x.clone())
                .await,
            "NoStream retry after recreation"
        ),
        r,
        "conformance: idempotent NoStream retry at the recreated stream's start"
    );
    let got = read_fwd(&store, "del-1").await;
    assert_eq!(
        (revs(&got), ids(&got)),
        (vec![3], data_ids(&x)),
        "conformance: only the new events are visible"
    );
    let step =
        "Exact(0) retry of an append from before the soft delete (not idempotent: a past life)";
    assert_wev(
        store.append(s.clone(), exact(0), first[1..].to_vec()).await,
        Some(&s),
        exact(0),
        cur(3),
        step,
    );
    let step = "NoStream retry of the first life's batch";
    assert_wev(
        store
            .append(s.clone(), ExpectedRevision::NoStream, first.clone())
            .await,
        Some(&s),
        ExpectedRevision::NoStream,
        cur(3),
        step,
    );
    ok(
        store.append(s.clone(), exact(3), evs("Y", 4, 1)).await,
        "Exact(3) after recreation",
    );
    set(&store, "del-1", StreamMetadata::default()).await;
    assert_eq!(
        revs(&read_fwd(&store, "del-1").await),
        [3, 4],
        "conformance: old events stay hidden whatever later metadata says"
    );

    ok(
        store.delete_stream(s.clone(), ExpectedRevision::Any).await,
        "delete with Any",
    );
    let r = ok(
        store
            .append(s.clone(), ExpectedRevision::Any, evs("Z", 5, 1))
            .await,
        "Any append recreates",
    );
    assert_eq!(r.revision, StreamRevision(5));
    assert_eq!(revs(&read_bwd(&store, "del-1").await), [5]);
    assert_eq!(
        read_all(
            &store,
            ReadAll::forwards().filter(Filter::stream_prefix(["del-1"]))
        )
        .await
        .len(),
        6,
        "conformance: $all keeps soft-deleted events"
    );
    assert_eq!(
        read_fwd(&store, "$ce-del").await.len(),
        6,
        "conformance: $ce- keeps soft-deleted events"
    );

    let n = sn("del-2");
    assert_kind(
        store.delete_stream(n.clone(), ExpectedRevision::Any).await,
        "StreamNotFound",
        "delete (Any) a stream never written",
    );
    assert_kind(
        store
            .delete_stream(n.clone(), ExpectedRevision::NoStream)
            .await,
        "StreamNotFound",
        "delete (NoStream) a stream never written",
    );
    assert_wev(
        store.delete_stream(n.clone(), exact(0)).await,
        Some(&n),
        exact(0),
        CurrentRevision::NoStream,
        "delete (Exact(0)) a stream never written",
    );
    assert_wev(
        store
            .delete_stream(n.clone(), ExpectedRevision::StreamExists)
            .await,
        Some(&n),
        ExpectedRevision::StreamExists,
        CurrentRevision::NoStream,
        "delete (StreamExists) a stream never written",
    );

    ok(
        store
            .delete_stream(s.clone(), ExpectedRevision::StreamExists)
            .await,
        "delete again",
    );
    ok(
        store
            .tombstone_stream(s.clone(), ExpectedRevision::NoStream)
            .await,
        "tombstone a soft-deleted stream",
    );
    assert_kind(
        store.read_stream(ReadStream::forwards(s.clone())).await,
        "StreamDeleted",
        "read after soft delete + tombstone",
    );
}

/// Tombstone: the name can never be used again.
pub async fn tombstone<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let s = sn("tomb-1");
    ok(
        store
            .append(s.clone(), ExpectedRevision::NoStream, evs("E", 0, 2))
            .await,
        "append",
    );
    ok(
        store
            .append(sn("tomb-keep"), ExpectedRevision::NoStream, evs("E", 0, 1))
            .await,
        "append",
    );
    assert_wev(
        store.tombstone_stream(s.clone(), exact(0)).await,
        Some(&s),
        exact(0),
        cur(1),
        "tombstone with a stale Exact",
    );
    assert_eq!(
        read_fwd(&store, "tomb-1").await.len(),
        2,
        "conformance: a failed tombstone changed the stream"
    );
    ok(
        store.tombstone_stream(s.clone(), exact(1)).await,
        "tombstone",
    );
    let deleted = "StreamDeleted";
    assert_kind(
        store.read_stream(ReadStream::forwards(s.clone())).await,
        deleted,
        "read after tombstone",
    );
    assert_kind(
        store.read_stream(ReadStream::backwards(s.clone())).await,
        deleted,
        "read backwards after tombstone",
    );
    for expected in [
        ExpectedRevision::Any,
        ExpectedRevision::NoStream,
        ExpectedRevision::StreamExists,
        exact(1),
    ] {
        assert_kind(
            store.append(s.clone(), expected, evs("E", 2, 1)).await,
            deleted,
            format!("append ({expected}) after tombstone"),
        );
        assert_kind(
            store.append(s.clone(), expected, vec![]).await,
            deleted,
            format!("empty append ({expected}) after tombstone"),
        );
    }
    assert_kind(
        store
            .set_stream_metadata(s.clone(), ExpectedRevision::Any, meta(Some(1), None))
            .await,
        deleted,
        "set metadata after tombstone",
    );
    assert_kind(
        store.stream_metadata(s.clone()).await,
        deleted,
        "read metadata after tombstone",
    );
    assert_kind(
        store.delete_stream(s.clone(), ExpectedRevision::Any).await,
        deleted,
        "soft delete after tombstone",
    );
    assert_kind(
        store
            .tombstone_stream(s.clone(), ExpectedRevision::Any)
            .await,
        deleted,
        "tombstone again",
    );
    assert_eq!(
        read_fwd(&store, "tomb-keep").await.len(),
        1,
        "conformance: other streams are untouched"
    );

    let n = sn("tomb-2");
    ok(
        store
            .tombstone_stream(n.clone(), ExpectedRevision::Any)
            .await,
        "tombstone (Any) a stream never written",
    );
    assert_kind(
        store.read_stream(ReadStream::forwards(n.clone())).await,
        deleted,
        "read a tombstoned stream never written",
    );
    assert_kind(
        store
            .append(n.clone(), ExpectedRevision::NoStream, evs("E", 0, 1))
            .await,
        deleted,
        "append to a tombstoned stream never written",
    );
    ok(
        store
            .tombstone_stream(sn("tomb-3"), ExpectedRevision::NoStream)
            .await,
        "tombstone (NoStream) a stream never written",
    );
    let m = sn("tomb-4");
    assert_wev(
        store
            .tombstone_stream(m.clone(), ExpectedRevision::StreamExists)
            .await,
        Some(&m),
        ExpectedRevision::StreamExists,
        CurrentRevision::NoStream,
        "tombstone (StreamExists) a stream never written",
    );
    ok(
        store
            .append(m.clone(), ExpectedRevision::NoStream, evs("E", 0, 1))
            .await,
        "a failed tombstone leaves the name usable",
    );

    let all = read_all(
        &store,
        ReadAll::forwards().filter(Filter::stream_prefix(["tomb-1"])),
    )
    .await;
    let kinds: Vec<(u64, &str)> = all
        .iter()
        .map(|e| (e.revision.0, e.event_type.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (0, "E"),
            (1, "E"),
            (TOMBSTONE_REVISION.0, TOMBSTONE_EVENT_TYPE)
        ],
        "conformance: $all keeps a tombstoned stream's events and the tombstone record"
    );
    assert_eq!(
        read_fwd(&store, "$ce-tomb").await.len(),
        4,
        "conformance: $ce- keeps tombstoned events (tomb-1 ×2, tomb-keep, tomb-4)"
    );
}

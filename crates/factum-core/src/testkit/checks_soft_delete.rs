//! Soft delete as KurrentDB does it (ADR 26): the stream keeps its last
//! revision, its metadata says `$tb = i64::MAX`, and the first write after
//! the delete recreates it with a `$metadata` event of the store's own.
//! Each row is KurrentDB's answer, checked against its server code
//! (`IndexWriter.CheckCommit`, `StorageWriterService.SoftUndeleteStream`)
//! and its `soft_delete` client tests.

use serde_json::json;

use super::support::*;
use super::StoreFactory;
use crate::expected::ExpectedRevision;
use crate::metadata::{StreamMetadata, METADATA_EVENT_TYPE};
use crate::model::{Position, StreamName, StreamRevision};
use crate::read::{Filter, ReadAll, ReadStream};
use crate::store::EventStore;

/// KurrentDB's `$tb` of a soft-deleted stream.
const DELETED: u64 = i64::MAX as u64;

/// A stream with revisions 0 and 1, then soft-deleted with `Exact(1)`.
async fn deleted_stream<S: EventStore>(store: &S, name: &str) -> StreamName {
    let s = sn(name);
    ok(
        store
            .append(s.clone(), ExpectedRevision::NoStream, evs("E", 0, 2))
            .await,
        format!("append to {name}"),
    );
    ok(
        store.delete_stream(s.clone(), exact(1)).await,
        format!("delete {name}"),
    );
    s
}

/// The stream's metadata and the revision of `$$<stream>` holding it.
async fn metadata_of<S: EventStore>(
    store: &S,
    s: &StreamName,
) -> (StreamMetadata, Option<StreamRevision>) {
    let got = ok(store.stream_metadata(s.clone()).await, "read metadata");
    (got.metadata, got.revision)
}

fn tb(revision: u64) -> StreamMetadata {
    meta(None, Some(revision))
}

/// The table: stream with revisions 0..1, then `delete(Exact(1))`.
pub async fn soft_delete_as_kurrentdb<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let s = deleted_stream(&store, "sd-1").await;
    assert_eq!(
        metadata_of(&store, &s).await,
        (tb(DELETED), Some(StreamRevision(0))),
        "conformance: metadata right after a soft delete is {{\"$tb\": 9223372036854775807}}"
    );
    assert_kind(
        store.read_stream(ReadStream::forwards(s.clone())).await,
        "StreamNotFound",
        "read a soft-deleted stream",
    );

    // Deleting again: the stream keeps its last revision.
    ok(
        store.delete_stream(s.clone(), exact(1)).await,
        "delete again with Exact(last)",
    );
    assert_eq!(
        metadata_of(&store, &s).await,
        (tb(DELETED), Some(StreamRevision(1))),
        "conformance: a second soft delete writes $tb = i64::MAX again"
    );
    assert_wev(
        store.delete_stream(s.clone(), exact(0)).await,
        Some(&s),
        exact(0),
        cur(1),
        "delete again with Exact(0): actual is the last revision",
    );
    assert_kind(
        store
            .delete_stream(s.clone(), ExpectedRevision::StreamExists)
            .await,
        "StreamDeleted",
        "delete again with StreamExists",
    );

    // Appends that do not recreate it.
    let head = ok(store.head_position().await, "head");
    assert_kind(
        store
            .append(s.clone(), ExpectedRevision::StreamExists, evs("X", 2, 1))
            .await,
        "StreamDeleted",
        "append with StreamExists to a soft-deleted stream",
    );
    assert_wev(
        store.append(s.clone(), exact(0), evs("X", 2, 1)).await,
        Some(&s),
        exact(0),
        cur(1),
        "append with Exact(0) to a soft-deleted stream",
    );
    assert_eq!(
        ok(store.head_position().await, "head"),
        head,
        "conformance: refused appends write nothing, no undelete either"
    );

    // Exact(last) recreates it after the last revision; `$tb` moves.
    let x = evs("X", 2, 3);
    let r = ok(
        store.append(s.clone(), exact(1), x.clone()).await,
        "append with Exact(last) to a soft-deleted stream",
    );
    assert_eq!(
        r.revision,
        StreamRevision(4),
        "conformance: the recreated stream continues at last + 1"
    );
    let got = ok(
        store.read_stream(ReadStream::forwards(s.clone())).await,
        "read the recreated stream",
    );
    assert_eq!(
        (revs(&got), ids(&got)),
        (vec![2, 3, 4], data_ids(&x)),
        "conformance: only the new events are visible"
    );
    assert_eq!(
        metadata_of(&store, &s).await,
        (tb(2), Some(StreamRevision(2))),
        "conformance: recreating writes the metadata with $tb = first new revision"
    );
    // In `$all`: the events, then the store's own `$metadata` event.
    let Some(head) = ok(store.head_position().await, "head") else {
        panic!("conformance: no head after an append")
    };
    assert_eq!(
        Position(r.position.0 + 1),
        head,
        "conformance: the undelete event follows the append's last event"
    );
    let tail = ok(
        store
            .read_all(ReadAll::backwards().from_position(head).max_count(4))
            .await,
        "read $all backwards",
    );
    let summary: Vec<(&str, u64, &str)> = tail
        .iter()
        .rev()
        .map(|e| (e.stream.as_str(), e.revision.0, e.event_type.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("sd-1", 2, "X"),
            ("sd-1", 3, "X"),
            ("sd-1", 4, "X"),
            ("$$sd-1", 2, METADATA_EVENT_TYPE),
        ],
        "conformance: $all holds the recreating events, then the undelete"
    );
    assert_eq!(
        positions(&tail),
        [head.0, head.0 - 1, head.0 - 2, head.0 - 3],
        "conformance: the events and the undelete take consecutive positions"
    );
    assert_eq!(
        StreamMetadata::from_json(&tail[0].data).ok(),
        Some(tb(2)),
        "conformance: the undelete event's data"
    );

    // Only the first write recreates: NoStream fails afterwards.
    assert_wev(
        store
            .append(s.clone(), ExpectedRevision::NoStream, evs("Y", 5, 1))
            .await,
        Some(&s),
        ExpectedRevision::NoStream,
        cur(4),
        "NoStream after the stream was recreated",
    );
    ok(
        store
            .append(s.clone(), ExpectedRevision::StreamExists, evs("Y", 5, 1))
            .await,
        "StreamExists after the stream was recreated",
    );

    // NoStream recreates: a soft-deleted stream counts as absent.
    let n = deleted_stream(&store, "sd-2").await;
    let r = ok(
        store
            .append(n.clone(), ExpectedRevision::NoStream, evs("X", 2, 2))
            .await,
        "append with NoStream to a soft-deleted stream",
    );
    assert_eq!(
        r.revision,
        StreamRevision(3),
        "conformance: NoStream recreates"
    );
    assert_eq!(
        metadata_of(&store, &n).await,
        (tb(2), Some(StreamRevision(1)))
    );

    // Any recreates; the next Any write goes on from there.
    let a = deleted_stream(&store, "sd-3").await;
    let r = ok(
        store
            .append(a.clone(), ExpectedRevision::Any, evs("X", 2, 3))
            .await,
        "append with Any to a soft-deleted stream",
    );
    assert_eq!(r.revision, StreamRevision(4), "conformance: Any recreates");
    let r = ok(
        store
            .append(a.clone(), ExpectedRevision::Any, evs("X", 5, 2))
            .await,
        "a second Any append",
    );
    assert_eq!(r.revision, StreamRevision(6));
    assert_eq!(
        revs(&read_fwd(&store, "sd-3").await),
        [2, 3, 4, 5, 6],
        "conformance: both writes after the delete are visible"
    );
    assert_eq!(
        metadata_of(&store, &a).await,
        (tb(2), Some(StreamRevision(1))),
        "conformance: only the first write after the delete moves $tb"
    );
    ok(
        store.delete_stream(a.clone(), exact(6)).await,
        "soft delete the recreated stream",
    );
    ok(
        store.tombstone_stream(a.clone(), exact(6)).await,
        "tombstone a soft-deleted stream with Exact(last)",
    );
}

/// A user's metadata with `$tb = i64::MAX` is a soft delete; recreating
/// keeps the rest of that metadata and moves `$tb` only.
pub async fn soft_delete_by_metadata<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let s = sn("sdm-1");
    ok(
        store
            .append(s.clone(), ExpectedRevision::NoStream, evs("E", 0, 2))
            .await,
        "append",
    );
    let mut md = meta(Some(100), Some(DELETED));
    md.custom.insert("owner".into(), json!("ops"));
    ok(
        store
            .set_stream_metadata(s.clone(), ExpectedRevision::NoStream, md.clone())
            .await,
        "set metadata with $tb = i64::MAX",
    );
    assert_kind(
        store.read_stream(ReadStream::forwards(s.clone())).await,
        "StreamNotFound",
        "read a stream whose metadata has $tb = i64::MAX",
    );
    assert_kind(
        store
            .append(s.clone(), ExpectedRevision::StreamExists, evs("X", 2, 1))
            .await,
        "StreamDeleted",
        "StreamExists on a stream soft-deleted by its metadata",
    );
    let x = evs("X", 2, 3);
    let r = ok(
        store.append(s.clone(), exact(1), x.clone()).await,
        "append after the last revision",
    );
    assert_eq!(
        r.revision,
        StreamRevision(4),
        "conformance: recreated at last + 1"
    );
    assert_eq!(
        ids(&read_fwd(&store, "sdm-1").await),
        data_ids(&x),
        "conformance: the recreated stream shows the new events"
    );
    let mut want = md.clone();
    want.truncate_before = Some(2);
    assert_eq!(
        metadata_of(&store, &s).await,
        (want, Some(StreamRevision(1))),
        "conformance: recreating keeps the metadata but $tb"
    );
}

/// A metadata write or an empty append after a soft delete recreates the
/// stream too (with no new events, it reads as an empty list).
pub async fn undelete_by_metadata_or_empty_append<F: StoreFactory>(f: &F) {
    let store = f.create().await;

    // A metadata write: the user's event, then the store's.
    let s = deleted_stream(&store, "sdu-1").await;
    let r = ok(
        store
            .set_stream_metadata(s.clone(), exact(0), meta(Some(100), None))
            .await,
        "set metadata on a soft-deleted stream",
    );
    assert_eq!(
        r.revision,
        StreamRevision(1),
        "conformance: the answer is the user's metadata event"
    );
    assert_eq!(
        metadata_of(&store, &s).await,
        (meta(Some(100), Some(2)), Some(StreamRevision(2))),
        "conformance: a metadata write recreates the stream, $tb = last + 1"
    );
    assert_eq!(
        read_fwd(&store, "sdu-1").await.len(),
        0,
        "conformance: recreated with no events: an empty list, not StreamNotFound"
    );
    let r = ok(
        store.append(s.clone(), exact(1), evs("X", 2, 1)).await,
        "append after the metadata write",
    );
    assert_eq!(r.revision, StreamRevision(2));
    assert_eq!(
        metadata_of(&store, &s).await.1,
        Some(StreamRevision(2)),
        "conformance: a live stream's appends write no metadata"
    );

    // A stream never written, soft-deleted by its metadata: `$tb` becomes 0.
    let e = sn("sdu-2");
    ok(
        store
            .set_stream_metadata(e.clone(), ExpectedRevision::Any, meta(None, Some(DELETED)))
            .await,
        "set $tb = i64::MAX on a stream never written",
    );
    ok(
        store
            .set_stream_metadata(e.clone(), exact(0), meta(Some(100), None))
            .await,
        "set metadata again",
    );
    assert_eq!(
        metadata_of(&store, &e).await,
        (meta(Some(100), Some(0)), Some(StreamRevision(2))),
        "conformance: recreating a stream with no events sets $tb = 0"
    );
    assert_kind(
        store.read_stream(ReadStream::forwards(e.clone())).await,
        "StreamNotFound",
        "read a recreated stream that has no events",
    );

    // An empty append.
    let s = deleted_stream(&store, "sdu-3").await;
    let r = ok(
        store.append(s.clone(), ExpectedRevision::Any, vec![]).await,
        "empty append to a soft-deleted stream",
    );
    let head = ok(store.head_position().await, "head");
    assert_eq!(
        (r.revision, Some(r.position)),
        (StreamRevision(1), head),
        "conformance: an empty append that recreates answers the last revision and the undelete's position"
    );
    assert_eq!(
        metadata_of(&store, &s).await,
        (tb(2), Some(StreamRevision(1))),
        "conformance: an empty append recreates the stream"
    );
    assert_eq!(read_fwd(&store, "sdu-3").await.len(), 0);
    assert_wev(
        store
            .append(s.clone(), ExpectedRevision::NoStream, vec![])
            .await,
        Some(&s),
        ExpectedRevision::NoStream,
        cur(1),
        "NoStream after an empty append recreated the stream",
    );
    let all = read_all(
        &store,
        ReadAll::forwards().filter(Filter::stream_prefix(["$$sdu-3"])),
    )
    .await;
    assert_eq!(
        all.len(),
        2,
        "conformance: the delete and the undelete, nothing for the empty append"
    );
}

//! Stream metadata (`$maxCount`, `$tb`, `$maxAge`, custom keys), soft delete
//! and tombstone.

use std::time::Duration;

use serde_json::json;

use super::support::*;
use super::{StoreFactory, TOMBSTONE_EVENT_TYPE, TOMBSTONE_REVISION};
use crate::expected::{CurrentRevision, ExpectedRevision};
use crate::metadata::{StreamMetadata, METADATA_EVENT_TYPE};
use crate::model::{ContentType, EventData, Position, StreamRevision};
use crate::read::{Filter, ReadAll, ReadStream};
use crate::store::EventStore;

/// `set_stream_metadata` then `stream_metadata` round-trips every key
/// (custom ones included); the expected revision applies to `$$<stream>`;
/// metadata on a stream never written is allowed and does not create it.
pub async fn metadata_round_trip<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let s = sn("meta-1");
    let none = ok(
        store.stream_metadata(s.clone()).await,
        "metadata of a stream never written",
    );
    assert_eq!(
        none.revision, None,
        "conformance: metadata revision before any set"
    );
    assert_eq!(
        none.metadata,
        StreamMetadata::default(),
        "conformance: default metadata"
    );

    let mut md = meta(Some(10), Some(2));
    md.max_age = Some(3600);
    md.cache_control = Some(60);
    md.acl = Some(json!({"$r": ["ops"], "$w": "admin"}));
    md.custom.insert("owner".into(), json!("ops"));
    md.custom.insert(
        "nested".into(),
        json!({"a": [1, 2.5, null, true], "b": "x"}),
    );
    let r = ok(
        store
            .set_stream_metadata(s.clone(), ExpectedRevision::NoStream, md.clone())
            .await,
        "set metadata",
    );
    assert_eq!(
        r.revision,
        StreamRevision(0),
        "conformance: first metadata revision"
    );
    assert_eq!(
        r.position,
        Position(1),
        "conformance: a metadata write takes a global position"
    );
    let got = ok(store.stream_metadata(s.clone()).await, "read metadata");
    assert_eq!(got.revision, Some(StreamRevision(0)));
    assert_eq!(got.metadata, md, "conformance: metadata round trip");

    let m = s.metadata_stream();
    let step = "NoStream on an existing metadata stream";
    assert_wev(
        store
            .set_stream_metadata(s.clone(), ExpectedRevision::NoStream, md.clone())
            .await,
        None,
        ExpectedRevision::NoStream,
        cur(0),
        step,
    );
    let md2 = meta(None, None);
    let r = ok(
        store
            .set_stream_metadata(s.clone(), exact(0), md2.clone())
            .await,
        "Exact(0) on the metadata stream",
    );
    assert_eq!(r.revision, StreamRevision(1));
    assert_wev(
        store
            .set_stream_metadata(s.clone(), exact(0), md.clone())
            .await,
        None,
        exact(0),
        cur(1),
        "stale Exact(0)",
    );
    let r = ok(
        store
            .set_stream_metadata(s.clone(), ExpectedRevision::StreamExists, md.clone())
            .await,
        "StreamExists",
    );
    assert_eq!(r.revision, StreamRevision(2));
    let step = "StreamExists on a metadata stream never written";
    assert_wev(
        store
            .set_stream_metadata(sn("meta-2"), ExpectedRevision::StreamExists, md.clone())
            .await,
        None,
        ExpectedRevision::StreamExists,
        CurrentRevision::NoStream,
        step,
    );
    let got = ok(store.stream_metadata(s.clone()).await, "read metadata");
    assert_eq!(
        (got.revision, &got.metadata),
        (Some(StreamRevision(2)), &md),
        "conformance: the latest metadata wins"
    );

    // Metadata does not create the stream.
    assert_kind(
        store.read_stream(ReadStream::forwards(s.clone())).await,
        "StreamNotFound",
        "a stream with only metadata",
    );
    let r = ok(
        store
            .append(s.clone(), ExpectedRevision::NoStream, evs("E", 0, 1))
            .await,
        "NoStream append after metadata",
    );
    assert_eq!(r.revision, StreamRevision(0));

    // The metadata stream reads as `$metadata` events.
    let events = read(&store, ReadStream::forwards(m.clone())).await;
    assert_eq!(revs(&events), [0, 1, 2], "conformance: read_stream({m})");
    for (e, want) in events.iter().zip([&md, &md2, &md]) {
        assert_eq!(
            e.event_type, METADATA_EVENT_TYPE,
            "conformance: {m} event type"
        );
        assert_eq!(&e.stream, &m, "conformance: {m} event stream");
        let parsed = StreamMetadata::from_json(&e.data)
            .unwrap_or_else(|err| panic!("conformance: {m} data is not metadata JSON: {err}"));
        assert_eq!(&parsed, want, "conformance: {m} event data");
    }

    // Clearing metadata: default again, the revision moves on.
    let r = ok(
        store
            .set_stream_metadata(s.clone(), ExpectedRevision::Any, StreamMetadata::default())
            .await,
        "clear",
    );
    assert_eq!(r.revision, StreamRevision(3));
    let got = ok(store.stream_metadata(s.clone()).await, "read metadata");
    assert_eq!(
        (got.revision, got.metadata),
        (Some(StreamRevision(3)), StreamMetadata::default())
    );

    // Appending a `$metadata` event to `$$<stream>` is a metadata write too
    // (what a gRPC client sends): the event keeps its id, and the same
    // append again — a retry whose answer was lost — is not written twice.
    let md4 = meta(Some(4), None);
    let event = EventData::new(METADATA_EVENT_TYPE, ContentType::Json, md4.to_json());
    let first = ok(
        store.append(m.clone(), exact(3), vec![event.clone()]).await,
        "a $metadata append to the metadata stream",
    );
    assert_eq!(first.revision, StreamRevision(4));
    for expected in [exact(3), ExpectedRevision::Any] {
        let again = ok(
            store.append(m.clone(), expected, vec![event.clone()]).await,
            "the same metadata append again",
        );
        assert_eq!(
            again, first,
            "conformance: a retried metadata append ({expected}) answers the first"
        );
    }
    let got = ok(store.stream_metadata(s.clone()).await, "read metadata");
    assert_eq!(
        (got.revision, got.metadata),
        (Some(StreamRevision(4)), md4),
        "conformance: an appended $metadata event is the stream's metadata"
    );
    let last = read(&store, ReadStream::backwards(m.clone()).max_count(1)).await;
    assert_eq!(
        (last[0].revision, last[0].id),
        (StreamRevision(4), event.id),
        "conformance: the metadata event keeps its id, written once"
    );
}

/// Metadata writes, soft deletes and tombstones take global positions and
/// appear in `$all` as `$metadata` / `$streamDeleted` records; `$ce-` is untouched.
pub async fn metadata_and_deletes_in_all<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    ok(
        store
            .append(sn("sys-1"), ExpectedRevision::NoStream, evs("E", 0, 1))
            .await,
        "append",
    );
    let r = ok(
        store
            .set_stream_metadata(sn("sys-1"), ExpectedRevision::Any, meta(Some(5), None))
            .await,
        "set metadata",
    );
    assert_eq!(
        (r.revision, r.position),
        (StreamRevision(0), Position(2)),
        "conformance: metadata write result"
    );
    assert_eq!(
        ok(store.head_position().await, "head"),
        Some(Position(2)),
        "conformance: head after a metadata write"
    );
    let d = ok(
        store
            .delete_stream(sn("sys-1"), ExpectedRevision::Any)
            .await,
        "soft delete",
    );
    assert_eq!(d.position, Position(3), "conformance: soft delete position");
    let t = ok(
        store
            .tombstone_stream(sn("sys-2"), ExpectedRevision::Any)
            .await,
        "tombstone a stream never written",
    );
    assert_eq!(t.position, Position(4), "conformance: tombstone position");
    assert_eq!(
        ok(store.head_position().await, "head"),
        Some(Position(4)),
        "conformance: head after a tombstone"
    );

    let all = read_all(&store, ReadAll::forwards()).await;
    assert_eq!(
        positions(&all),
        [1, 2, 3, 4],
        "conformance: $all holds the metadata and delete records"
    );
    let summary: Vec<(&str, u64, &str)> = all
        .iter()
        .map(|e| (e.stream.as_str(), e.revision.0, e.event_type.as_str()))
        .collect();
    let want = [
        ("sys-1", 0, "E"),
        ("$$sys-1", 0, METADATA_EVENT_TYPE),
        ("$$sys-1", 1, METADATA_EVENT_TYPE),
        ("sys-2", TOMBSTONE_REVISION.0, TOMBSTONE_EVENT_TYPE),
    ];
    assert_eq!(
        summary, want,
        "conformance: $all records (stream, revision, type)"
    );
    let md = |i: usize| {
        StreamMetadata::from_json(&all[i].data)
            .unwrap_or_else(|e| panic!("conformance: $all record {i} is not metadata JSON: {e}"))
    };
    assert_eq!(
        md(1),
        meta(Some(5), None),
        "conformance: metadata record data"
    );
    assert_eq!(
        md(2),
        meta(None, Some(i64::MAX as u64)),
        "conformance: soft delete record: the metadata becomes $tb = i64::MAX alone (as KurrentDB)"
    );
    let user = read_all(
        &store,
        ReadAll::forwards().filter(Filter::exclude_system_events()),
    )
    .await;
    assert_eq!(positions(&user), [1], "conformance: exclude_system_events");
    assert_eq!(
        read_fwd(&store, "$ce-sys").await.len(),
        1,
        "conformance: $ce-sys holds only the user event"
    );
}

/// `$maxCount` hides all but the newest N events from `read_stream`.
pub async fn max_count<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let s = sn("mc-1");
    ok(
        store
            .append(s.clone(), ExpectedRevision::NoStream, evs("E", 0, 5))
            .await,
        "append",
    );
    set(&store, "mc-1", meta(Some(2), None)).await;
    assert_eq!(
        revs(&read_fwd(&store, "mc-1").await),
        [3, 4],
        "conformance: $maxCount 2 forwards"
    );
    assert_eq!(
        revs(&read_bwd(&store, "mc-1").await),
        [4, 3],
        "conformance: $maxCount 2 backwards"
    );
    let r = ok(
        store.append(s.clone(), exact(4), evs("E", 5, 1)).await,
        "hidden events still count for the expected revision",
    );
    assert_eq!(r.revision, StreamRevision(5));
    assert_eq!(
        revs(&read_fwd(&store, "mc-1").await),
        [4, 5],
        "conformance: $maxCount after an append"
    );
    let got = read(
        &store,
        ReadStream::forwards(s.clone()).from_revision(StreamRevision(0)),
    )
    .await;
    assert_eq!(
        revs(&got),
        [4, 5],
        "conformance: forwards from a hidden revision starts at the first visible"
    );
    let got = read(
        &store,
        ReadStream::backwards(s.clone()).from_revision(StreamRevision(3)),
    )
    .await;
    assert!(
        got.is_empty(),
        "conformance: backwards from a hidden revision reads nothing, got {got:?}"
    );
    assert_eq!(
        read(&store, ReadStream::forwards(s.clone()).max_count(1))
            .await
            .len(),
        1
    );
    set(&store, "mc-1", meta(Some(2), Some(5))).await;
    assert_eq!(
        revs(&read_fwd(&store, "mc-1").await),
        [5],
        "conformance: the larger of $maxCount and $tb wins"
    );
    set(&store, "mc-1", meta(Some(4), None)).await;
    assert_eq!(
        revs(&read_fwd(&store, "mc-1").await),
        [2, 3, 4, 5],
        "conformance: raising $maxCount shows events again"
    );
    let all = read_all(
        &store,
        ReadAll::forwards().filter(Filter::stream_prefix(["mc-"])),
    )
    .await;
    assert_eq!(all.len(), 6, "conformance: $all ignores $maxCount");
    assert_eq!(
        read_fwd(&store, "$ce-mc").await.len(),
        6,
        "conformance: $ce- ignores $maxCount"
    );
}

/// `$tb` hides revisions below it; an existing stream whose events are all
/// hidden reads as an empty list.
pub async fn truncate_before<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let s = sn("tb-1");
    ok(
        store
            .append(s.clone(), ExpectedRevision::NoStream, evs("E", 0, 5))
            .await,
        "append",
    );
    set(&store, "tb-1", meta(None, Some(3))).await;
    assert_eq!(
        revs(&read_fwd(&store, "tb-1").await),
        [3, 4],
        "conformance: $tb 3 forwards"
    );
    assert_eq!(
        revs(&read_bwd(&store, "tb-1").await),
        [4, 3],
        "conformance: $tb 3 backwards"
    );
    let got = read(
        &store,
        ReadStream::forwards(s.clone())
            .from_revision(StreamRevision(1))
            .max_count(1),
    )
    .await;
    assert_eq!(
        revs(&got),
        [3],
        "conformance: $tb forwards from a hidden revision, max 1"
    );
    let got = read(
        &store,
        ReadStream::backwards(s.clone()).from_revision(StreamRevision(2)),
    )
    .await;
    assert!(
        got.is_empty(),
        "conformance: $tb backwards from below it, got {got:?}"
    );
    set(&store, "tb-1", meta(None, Some(10))).await;
    assert!(
        read_fwd(&store, "tb-1").await.is_empty(),
        "conformance: $tb past the end reads as empty (not StreamNotFound)"
    );
    let r = ok(
        store.append(s.clone(), exact(4), evs("E", 5, 1)).await,
        "append under $tb",
    );
    assert_eq!(r.revision, StreamRevision(5));
    assert!(read_bwd(&store, "tb-1").await.is_empty());
    set(&store, "tb-1", meta(None, Some(0))).await;
    assert_eq!(
        revs(&read_fwd(&store, "tb-1").await),
        [0, 1, 2, 3, 4, 5],
        "conformance: lowering $tb shows events again"
    );
}

/// `$maxAge` hides events older than N seconds (sleeps 1.1 s).
pub async fn max_age<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let s = sn("age-1");
    ok(
        store
            .append(s.clone(), ExpectedRevision::NoStream, evs("E", 0, 2))
            .await,
        "append",
    );
    ok(
        store
            .append(sn("age-2"), ExpectedRevision::NoStream, evs("E", 0, 2))
            .await,
        "append",
    );
    set(
        &store,
        "age-1",
        StreamMetadata {
            max_age: Some(1),
            ..StreamMetadata::default()
        },
    )
    .await;
    assert_eq!(
        revs(&read_fwd(&store, "age-1").await),
        [0, 1],
        "conformance: fresh events under $maxAge 1 are visible"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        read_fwd(&store, "age-1").await.is_empty(),
        "conformance: events older than $maxAge must be hidden"
    );
    assert!(
        read_bwd(&store, "age-1").await.is_empty(),
        "conformance: events older than $maxAge must be hidden (backwards)"
    );
    ok(
        store.append(s.clone(), exact(1), evs("E", 2, 1)).await,
        "append after expiry",
    );
    assert_eq!(
        revs(&read_fwd(&store, "age-1").await),
        [2],
        "conformance: only the fresh event is visible"
    );
    assert_eq!(
        revs(&read_fwd(&store, "age-2").await),
        [0, 1],
        "conformance: $maxAge applies to its stream only"
    );
    let all = read_all(
        &store,
        ReadAll::forwards().filter(Filter::stream_prefix(["age-1"])),
    )
    .await;
    assert_eq!(all.len(), 3, "conformance: $all ignores $maxAge");
}

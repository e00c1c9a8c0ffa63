//! What a store shows, for comparing it before and after a scavenge (ADR
//! 33): every given stream (its events, or its error, and its metadata),
//! the `$ce-`/`$et-` streams of their events, and `$all`.
//!
//! `$all` and the link streams show events that their own streams hide
//! (beyond `$maxCount`, deleted …) until a scavenge removes them, as in
//! KurrentDB; so each of them is given twice: *visible* (only events their
//! own stream shows, `$metadata` events that are a stream's current
//! metadata, tombstones) and *raw* (as read). A scavenge keeps the visible
//! dump unchanged, and after it the raw `$all` and link streams are their
//! visible selves (nothing hidden is left) where every hidden event was in
//! a scavenged part of the log.

use std::collections::{BTreeSet, HashSet};

use crate::metadata::METADATA_EVENT_TYPE;
use crate::model::{RecordedEvent, StreamName};
use crate::read::{ReadAll, ReadStream};
use crate::rules::{link_streams, TOMBSTONE_EVENT_TYPE};
use crate::store::EventStore;

/// A store's visible content (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisibleDump {
    /// Per given stream: its events or its error, and its metadata.
    pub streams: Vec<String>,
    /// `$ce-`/`$et-` streams, only events their own stream shows.
    pub links: Vec<String>,
    /// The same, as read.
    pub links_raw: Vec<String>,
    /// `$all`, only what a stream shows (events, current metadata, tombstones).
    pub all: Vec<String>,
    /// `$all` as read.
    pub all_raw: Vec<String>,
}

fn line(e: &RecordedEvent) -> String {
    format!(
        "{} {}@{} {} {} {:?} {:?} {:?} {}{}",
        e.position.0,
        e.revision.0,
        e.stream,
        e.event_type,
        e.id,
        e.content_type,
        e.data,
        e.metadata,
        e.created.0,
        e.link
            .as_ref()
            .map(|l| format!(" via {}@{}", l.revision.0, l.stream))
            .unwrap_or_default()
    )
}

/// Dumps `store` (see [`VisibleDump`]); `streams` are the streams to
/// read (user and system, not `$$`/`$ce-`/`$et-`).
pub async fn visible_dump<S: EventStore>(store: &S, streams: &[StreamName]) -> VisibleDump {
    let mut dump = VisibleDump {
        streams: Vec::new(),
        links: Vec::new(),
        links_raw: Vec::new(),
        all: Vec::new(),
        all_raw: Vec::new(),
    };
    let mut visible: HashSet<(String, u64)> = HashSet::new();
    let mut current_metadata: HashSet<(String, u64)> = HashSet::new();
    let mut links: BTreeSet<String> = BTreeSet::new();
    for s in streams {
        match store.read_stream(ReadStream::forwards(s.clone())).await {
            Ok(events) => {
                for e in &events {
                    visible.insert((e.stream.to_string(), e.revision.0));
                    links.extend(link_streams(&e.stream, &e.event_type));
                    dump.streams.push(line(e));
                }
            }
            Err(e) => dump
                .streams
                .push(format!("{s}: {}", super::support::kind(&e))),
        }
        match store.stream_metadata(s.clone()).await {
            Ok(m) => {
                if let Some(r) = m.revision {
                    current_metadata.insert((format!("$${s}"), r.0));
                }
                dump.streams
                    .push(format!("{s} metadata {:?} {:?}", m.revision, m.metadata));
            }
            Err(e) => dump
                .streams
                .push(format!("{s} metadata: {}", super::support::kind(&e))),
        }
    }
    let shown = |e: &RecordedEvent| {
        let key = (e.stream.to_string(), e.revision.0);
        visible.contains(&key)
            || e.event_type == TOMBSTONE_EVENT_TYPE
            || e.event_type == METADATA_EVENT_TYPE && current_metadata.contains(&key)
    };
    for l in links {
        let name = StreamName::new(&l).expect("a link stream name");
        match store.read_stream(ReadStream::forwards(name)).await {
            Ok(events) => {
                for e in &events {
                    dump.links_raw.push(line(e));
                    if shown(e) {
                        dump.links.push(line(e));
                    }
                }
            }
            Err(e) => {
                let what = format!("{l}: {}", super::support::kind(&e));
                dump.links_raw.push(what.clone());
                dump.links.push(what);
            }
        }
    }
    let all = store
        .read_all(ReadAll::forwards())
        .await
        .expect("reading $all");
    for e in &all {
        dump.all_raw.push(line(e));
        if shown(e) {
            dump.all.push(line(e));
        }
    }
    dump
}

/// What [`write_hidden_and_visible`] wrote.
#[derive(Clone, Debug, Default)]
pub struct Scenario {
    /// Every stream it wrote (for [`visible_dump`]).
    pub streams: Vec<StreamName>,
    /// Events that no read of their stream can see once `$maxAge` passed.
    pub hidden_events: u64,
    /// Their stream names, types, data and metadata, in bytes.
    pub hidden_bytes: u64,
    /// Events a read can see.
    pub visible_events: u64,
}

/// Writes, `scale` times over, streams whose events are partly hidden from
/// reads — beyond `$maxCount`, before `$tb`, soft-deleted, tombstoned,
/// recreated after a soft delete, superseded metadata — and visible ones;
/// the events of the `age-…` streams carry `$maxAge` 3600 s and count as
/// hidden: the caller moves its clock two hours on afterwards. Each event
/// carries `payload` bytes of data.
pub async fn write_hidden_and_visible<S: EventStore>(
    store: &S,
    scale: u64,
    payload: usize,
) -> Scenario {
    use crate::expected::ExpectedRevision as X;
    use crate::metadata::StreamMetadata;
    use crate::model::{ContentType, EventData};
    let mut sc = Scenario::default();
    let body = |n: u64| {
        let mut d = format!("{{\"n\":{n},\"pad\":\"").into_bytes();
        d.resize(payload.saturating_sub(2).max(d.len()), b'x');
        d.extend_from_slice(b"\"}");
        d
    };
    let events = |ty: &str, n: u64| -> Vec<EventData> {
        (0..n)
            .map(|i| EventData::new(ty, ContentType::Json, body(i)).with_metadata(b"{}".to_vec()))
            .collect()
    };
    let size = |s: &StreamName, ty: &str| (s.as_str().len() + ty.len() + body(0).len() + 2) as u64;
    let hide = |sc: &mut Scenario, s: &StreamName, ty: &str, n: u64| {
        sc.hidden_events += n;
        sc.hidden_bytes += n * size(s, ty);
    };
    let meta = |m: StreamMetadata| m;
    for i in 0..scale {
        let name = |k: &str| StreamName::new(format!("{k}-{i}")).expect("valid");
        let (keep, count, tb, age, del, tomb, again) = (
            name("keep"),
            name("count"),
            name("tb"),
            name("age"),
            name("del"),
            name("tomb"),
            name("again"),
        );
        let w = |r: crate::Result<crate::AppendResult>| r.expect("write");
        w(store
            .append(keep.clone(), X::NoStream, events("Kept", 10))
            .await);
        sc.visible_events += 10;
        for n in 0..3u64 {
            let m = StreamMetadata {
                custom: serde_json::json!({"n": n}).as_object().unwrap().clone(),
                ..StreamMetadata::default()
            };
            w(store
                .set_stream_metadata(keep.clone(), X::Any, meta(m))
                .await);
        }
        w(store
            .append(count.clone(), X::NoStream, events("Counted", 10))
            .await);
        let m = StreamMetadata {
            max_count: Some(2),
            ..StreamMetadata::default()
        };
        w(store.set_stream_metadata(count.clone(), X::Any, m).await);
        hide(&mut sc, &count, "Counted", 8);
        sc.visible_events += 2;
        w(store
            .append(tb.clone(), X::NoStream, events("Truncated", 10))
            .await);
        let m = StreamMetadata {
            truncate_before: Some(6),
            ..StreamMetadata::default()
        };
        w(store.set_stream_metadata(tb.clone(), X::Any, m).await);
        hide(&mut sc, &tb, "Truncated", 6);
        sc.visible_events += 4;
        let m = StreamMetadata {
            max_age: Some(3600),
            ..StreamMetadata::default()
        };
        w(store.set_stream_metadata(age.clone(), X::Any, m).await);
        w(store
            .append(age.clone(), X::NoStream, events("Aged", 10))
            .await);
        hide(&mut sc, &age, "Aged", 10);
        w(store
            .append(del.clone(), X::NoStream, events("Deleted", 10))
            .await);
        store
            .delete_stream(del.clone(), X::Any)
            .await
            .expect("soft delete");
        hide(&mut sc, &del, "Deleted", 10);
        w(store
            .append(tomb.clone(), X::NoStream, events("Tombstoned", 10))
            .await);
        store
            .tombstone_stream(tomb.clone(), X::Any)
            .await
            .expect("tombstone");
        hide(&mut sc, &tomb, "Tombstoned", 10);
        w(store
            .append(again.clone(), X::NoStream, events("Again", 5))
            .await);
        store
            .delete_stream(again.clone(), X::Any)
            .await
            .expect("soft delete");
        w(store
            .append(again.clone(), X::Any, events("Again", 5))
            .await);
        hide(&mut sc, &again, "Again", 5);
        sc.visible_events += 5;
        sc.streams.extend([keep, count, tb, age, del, tomb, again]);
    }
    sc
}

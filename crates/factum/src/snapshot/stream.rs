//! Snapshots kept in the event store itself: one stream per aggregate
//! stream, `$snapshot-<stream>`, trimmed by `$maxCount`.
//!
//! The name starts with `$` so it is a system stream: it belongs to no
//! category (`$ce-…` reads never see it) and its event type `$snapshot` is
//! dropped by the usual "exclude system events" filter of projections. It is
//! not one of the reserved prefixes (`$$`, `$ce-`, `$et-`), so it is
//! writable on every backend.

use factum_core::{
    Bytes, ContentType, Error, EventData, EventStore, ExpectedRevision, ReadStream, RecordedEvent,
    StreamMetadata, StreamName, StreamRevision, Timestamp,
};
use serde::{Deserialize, Serialize};

use super::{Snapshot, SnapshotBound, SnapshotLookup, SnapshotStore};

/// Event type of snapshot events.
pub const SNAPSHOT_EVENT_TYPE: &str = "$snapshot";

/// The snapshot stream of `stream`: `$snapshot-<stream>`.
pub fn snapshot_stream_of(stream: &StreamName) -> factum_core::Result<StreamName> {
    StreamName::new(format!("$snapshot-{stream}"))
}

#[derive(Serialize, Deserialize)]
struct SnapshotMeta {
    revision: u64,
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "lastEventAt")]
    last_event_at: i64,
}

/// Snapshots in the event store (see the module documentation).
#[derive(Clone, Debug)]
pub struct StreamSnapshotStore<S> {
    store: S,
    keep: u64,
}

impl<S: EventStore> StreamSnapshotStore<S> {
    /// Keeps the newest 8 snapshots per aggregate (older ones serve
    /// temporal loads until trimmed).
    pub fn new(store: S) -> Self {
        StreamSnapshotStore { store, keep: 8 }
    }

    /// Keeps the newest `n` (at least 1) snapshots per aggregate.
    pub fn keep(mut self, n: u64) -> Self {
        self.keep = n.max(1);
        self
    }

    async fn read_newest(
        &self,
        stream: &StreamName,
        n: u64,
    ) -> factum_core::Result<Vec<RecordedEvent>> {
        match self
            .store
            .read_stream(ReadStream::backwards(stream.clone()).max_count(n))
            .await
        {
            Ok(events) => Ok(events),
            Err(Error::StreamNotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

fn decode(e: &RecordedEvent) -> Option<Snapshot> {
    if e.event_type != SNAPSHOT_EVENT_TYPE {
        return None;
    }
    let meta: SnapshotMeta = serde_json::from_slice(&e.metadata).ok()?;
    Some(Snapshot {
        revision: StreamRevision(meta.revision),
        schema_version: meta.schema_version,
        last_event_at: Timestamp(meta.last_event_at),
        state: e.data.clone(),
        taken_at: Some(e.created),
    })
}

/// The newest usable snapshot among `events` (newest first).
fn pick(events: &[RecordedEvent], schema_version: u32, bound: SnapshotBound) -> SnapshotLookup {
    let mut out = SnapshotLookup::default();
    for e in events {
        match decode(e) {
            Some(s) if !bound.admits(&s) => continue,
            Some(s) if s.schema_version == schema_version => {
                out.snapshot = Some(s);
                return out;
            }
            _ => out.skipped_stale = true,
        }
    }
    out
}

impl<S: EventStore> SnapshotStore for StreamSnapshotStore<S> {
    async fn load(
        &self,
        stream: &StreamName,
        schema_version: u32,
        bound: SnapshotBound,
    ) -> factum_core::Result<SnapshotLookup> {
        let snap_stream = snapshot_stream_of(stream)?;
        if bound == SnapshotBound::Latest {
            // The common case: the newest snapshot is usable; one event read.
            let newest = self.read_newest(&snap_stream, 1).await?;
            let found = pick(&newest, schema_version, bound);
            if found.snapshot.is_some() || newest.is_empty() {
                return Ok(found);
            }
        }
        let all = self.read_newest(&snap_stream, self.keep).await?;
        Ok(pick(&all, schema_version, bound))
    }

    async fn save(&self, stream: &StreamName, snapshot: Snapshot) -> factum_core::Result<()> {
        let snap_stream = snapshot_stream_of(stream)?;
        let meta = SnapshotMeta {
            revision: snapshot.revision.0,
            schema_version: snapshot.schema_version,
            last_event_at: snapshot.last_event_at.0,
        };
        let meta = serde_json::to_vec(&meta)
            .map_err(|e| Error::InvalidInput(format!("snapshot metadata: {e}")))?;
        let event = EventData::new(SNAPSHOT_EVENT_TYPE, ContentType::Json, snapshot.state)
            .with_metadata(Bytes::from(meta));
        let written = self
            .store
            .append(snap_stream.clone(), ExpectedRevision::Any, vec![event])
            .await?;
        if written.revision.0 == 0 {
            // First snapshot of this aggregate: bound the stream's length.
            let metadata = StreamMetadata {
                max_count: Some(self.keep),
                ..StreamMetadata::default()
            };
            self.store
                .set_stream_metadata(snap_stream, ExpectedRevision::Any, metadata)
                .await?;
        }
        Ok(())
    }
}

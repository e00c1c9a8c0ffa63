//! Snapshots: an aggregate's serialized state at a revision, so loading
//! replays only the events after it.
//!
//! A snapshot records the aggregate revision it reflects, the schema version
//! of the serialized state and the commit time of the last event folded in
//! (so temporal loads can pick the newest snapshot at or before a time).
//! [`SnapshotStore`] is the seam for storage; [`StreamSnapshotStore`] keeps
//! them in the event store itself and so works on every backend;
//! [`PostgresSnapshotStore`] (feature `postgres`) keeps them in a table.

mod policy;
#[cfg(feature = "postgres")]
mod postgres;
mod stream;

use std::future::Future;

use factum_core::{Bytes, StreamName, StreamRevision, Timestamp};

pub use policy::{SnapshotContext, SnapshotPolicy};
#[cfg(feature = "postgres")]
pub use postgres::PostgresSnapshotStore;
pub use stream::{snapshot_stream_of, StreamSnapshotStore, SNAPSHOT_EVENT_TYPE};

/// One snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Revision of the last event folded into the state.
    pub revision: StreamRevision,
    /// Schema version of `state` (the aggregate's `SNAPSHOT_VERSION`).
    pub schema_version: u32,
    /// Commit time of the event at `revision`.
    pub last_event_at: Timestamp,
    /// The state, serialized (JSON).
    pub state: Bytes,
    /// When the snapshot was stored (set by the store on load).
    pub taken_at: Option<Timestamp>,
}

/// Which snapshot a load may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotBound {
    /// The newest.
    Latest,
    /// The newest whose revision is at or before this one.
    AtOrBeforeRevision(StreamRevision),
    /// The newest whose last event was committed at or before this time.
    AtOrBeforeTime(Timestamp),
}

impl SnapshotBound {
    /// Does `s` fall within the bound?
    pub fn admits(self, s: &Snapshot) -> bool {
        match self {
            SnapshotBound::Latest => true,
            SnapshotBound::AtOrBeforeRevision(r) => s.revision <= r,
            SnapshotBound::AtOrBeforeTime(t) => s.last_event_at <= t,
        }
    }
}

/// What a snapshot lookup found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotLookup {
    /// The newest usable snapshot within the bound.
    pub snapshot: Option<Snapshot>,
    /// True when a newer snapshot within the bound had another schema
    /// version (or could not be read) and was skipped: the next save
    /// should replace it.
    pub skipped_stale: bool,
}

/// Where snapshots live. Implement it for a backend-native store; the
/// default, [`StreamSnapshotStore`], uses the event store itself.
pub trait SnapshotStore: Send + Sync + 'static {
    /// The newest snapshot of `stream` with `schema_version` within `bound`.
    fn load(
        &self,
        stream: &StreamName,
        schema_version: u32,
        bound: SnapshotBound,
    ) -> impl Future<Output = factum_core::Result<SnapshotLookup>> + Send;

    /// Stores a snapshot of `stream`.
    fn save(
        &self,
        stream: &StreamName,
        snapshot: Snapshot,
    ) -> impl Future<Output = factum_core::Result<()>> + Send;
}

/// What happened to the snapshot after a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// The policy did not ask for one.
    NotDue,
    /// Saved at this revision.
    Saved(StreamRevision),
    /// The events were committed, but saving the snapshot failed; the next
    /// load replays more events. The reason is kept (and logged).
    Failed(String),
}

/// A snapshot store that never has a snapshot: every load replays the
/// whole stream (a baseline for measurements, or snapshots turned off).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSnapshots;

impl SnapshotStore for NoSnapshots {
    async fn load(
        &self,
        _stream: &StreamName,
        _schema_version: u32,
        _bound: SnapshotBound,
    ) -> factum_core::Result<SnapshotLookup> {
        Ok(SnapshotLookup::default())
    }

    async fn save(&self, _stream: &StreamName, _snapshot: Snapshot) -> factum_core::Result<()> {
        Ok(())
    }
}

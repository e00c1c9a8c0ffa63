//! What the integration tests share: a throwaway engine, a store that
//! injects concurrent writers.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use factum_core::{
    AppendResult, EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, RecordedEvent,
    Result, StreamMetadata, StreamMetadataResult, StreamName, Subscribe, Subscription,
};
use factum_engine::{Durability, Engine, EngineConfig};

/// An engine in a temporary directory, without fsync (tests only).
pub fn engine() -> (Arc<Engine>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir.path(), config).expect("open engine");
    (Arc::new(engine), dir)
}

/// A store that, before each of the next `races` appends with an `Exact`
/// or `NoStream` expectation, lets a competing writer append `intruder`
/// to the same stream first.
#[derive(Clone)]
pub struct RacingStore<S> {
    pub inner: S,
    pub races: Arc<AtomicU32>,
    pub intruder: Arc<dyn Fn() -> EventData + Send + Sync>,
}

impl<S: EventStore> EventStore for RacingStore<S> {
    async fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        let racing = matches!(
            expected,
            ExpectedRevision::Exact(_) | ExpectedRevision::NoStream
        ) && self
            .races
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if racing {
            self.inner
                .append(
                    stream.clone(),
                    ExpectedRevision::Any,
                    vec![(self.intruder)()],
                )
                .await?;
        }
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(&self, r: ReadStream) -> Result<Vec<RecordedEvent>> {
        self.inner.read_stream(r).await
    }
    async fn read_all(&self, r: ReadAll) -> Result<Vec<RecordedEvent>> {
        self.inner.read_all(r).await
    }
    async fn subscribe(&self, r: Subscribe) -> Result<Subscription> {
        self.inner.subscribe(r).await
    }
    async fn stream_metadata(&self, s: StreamName) -> Result<StreamMetadataResult> {
        self.inner.stream_metadata(s).await
    }
    async fn set_stream_metadata(
        &self,
        s: StreamName,
        e: ExpectedRevision,
        m: StreamMetadata,
    ) -> Result<AppendResult> {
        self.inner.set_stream_metadata(s, e, m).await
    }
    async fn delete_stream(
        &self,
        s: StreamName,
        e: ExpectedRevision,
    ) -> Result<factum_core::DeleteResult> {
        self.inner.delete_stream(s, e).await
    }
    async fn tombstone_stream(
        &self,
        s: StreamName,
        e: ExpectedRevision,
    ) -> Result<factum_core::DeleteResult> {
        self.inner.tombstone_stream(s, e).await
    }
    async fn head_position(&self) -> Result<Option<factum_core::Position>> {
        self.inner.head_position().await
    }
}

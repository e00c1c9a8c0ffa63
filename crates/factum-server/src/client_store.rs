//! The store as clients reach it: every handler, gRPC and HTTP alike,
//! reads and writes through [`ClientStore`], the one place where a
//! client's write to a stream Factum manages itself (persistent-subscription
//! configuration, checkpoints, parked messages; later users, settings,
//! projections: `factum_core::managed`) is refused with
//! `Error::AccessDenied`, before the store sees it. Reads pass through.
//! The subsystems that own those streams hold the store itself and write
//! through it directly.

use std::sync::Arc;

use factum_core::{
    managed, AppendResult, DeleteResult, EventData, EventStore, ExpectedRevision, Position,
    ReadAll, ReadStream, RecordedEvent, Result, StreamMetadata, StreamMetadataResult, StreamName,
    Subscribe, Subscription,
};

/// A store whose writes to managed streams are refused.
pub struct ClientStore<S> {
    inner: Arc<S>,
}

impl<S> ClientStore<S> {
    /// Clients' view of `store`.
    pub fn new(store: Arc<S>) -> Self {
        ClientStore { inner: store }
    }
}

impl<S: EventStore> EventStore for ClientStore<S> {
    async fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        managed::check_client_write(&stream)?;
        self.inner.append(stream, expected, events).await
    }

    async fn append_multi(
        &self,
        request: factum_core::MultiAppend,
    ) -> Result<factum_core::MultiAppendResult> {
        for i in request.written() {
            managed::check_client_write(&request.streams[i].stream)?;
        }
        self.inner.append_multi(request).await
    }

    async fn read_stream(&self, request: ReadStream) -> Result<Vec<RecordedEvent>> {
        self.inner.read_stream(request).await
    }

    async fn read_all(&self, request: ReadAll) -> Result<Vec<RecordedEvent>> {
        self.inner.read_all(request).await
    }

    async fn subscribe(&self, request: Subscribe) -> Result<Subscription> {
        self.inner.subscribe(request).await
    }

    async fn stream_metadata(&self, stream: StreamName) -> Result<StreamMetadataResult> {
        self.inner.stream_metadata(stream).await
    }

    async fn set_stream_metadata(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
    ) -> Result<AppendResult> {
        managed::check_client_write(&stream)?;
        self.inner
            .set_stream_metadata(stream, expected, metadata)
            .await
    }

    async fn delete_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> Result<DeleteResult> {
        managed::check_client_write(&stream)?;
        self.inner.delete_stream(stream, expected).await
    }

    async fn tombstone_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> Result<DeleteResult> {
        managed::check_client_write(&stream)?;
        self.inner.tombstone_stream(stream, expected).await
    }

    async fn head_position(&self) -> Result<Option<Position>> {
        self.inner.head_position().await
    }
}

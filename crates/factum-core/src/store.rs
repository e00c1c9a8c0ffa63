//! The `EventStore` contract every backend implements.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;

use crate::error::Result;
use crate::expected::{AppendResult, DeleteResult, ExpectedRevision};
use crate::metadata::{StreamMetadata, StreamMetadataResult};
use crate::model::{EventData, Position, RecordedEvent, StreamName};
use crate::multi::{MultiAppend, MultiAppendResult};
use crate::read::{ReadAll, ReadStream, Subscribe};

/// What a subscription delivers.
#[derive(Clone, Debug, PartialEq)]
pub enum SubscriptionMessage {
    /// The next event, in order, exactly once.
    Event(RecordedEvent),
    /// Catch-up reached the head: what follows is live. Sent each time the
    /// subscription (re)joins the head.
    CaughtUp,
    /// The subscriber is far behind the head and the subscription went back to
    /// reading from storage; delivery continues, gap-free.
    FellBehind,
    /// A filtered `$all` subscription scanned up to this position (so a
    /// consumer can checkpoint even when no event matched).
    Checkpoint(Position),
}

/// A live subscription: a stream of messages. Dropping it ends it.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = Result<SubscriptionMessage>> + Send>>,
}

impl Subscription {
    /// Wraps a backend's message stream.
    pub fn new(inner: impl Stream<Item = Result<SubscriptionMessage>> + Send + 'static) -> Self {
        Subscription {
            inner: Box::pin(inner),
        }
    }

    /// The next message; `None` when the subscription ended (store closed).
    pub async fn next(&mut self) -> Option<Result<SubscriptionMessage>> {
        std::future::poll_fn(|cx| self.inner.as_mut().poll_next(cx)).await
    }

    /// The next event, skipping control messages.
    pub async fn next_event(&mut self) -> Option<Result<RecordedEvent>> {
        loop {
            match self.next().await? {
                Ok(SubscriptionMessage::Event(e)) => return Some(Ok(e)),
                Ok(_) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl Stream for Subscription {
    type Item = Result<SubscriptionMessage>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

/// An event store: the contract of every backend (embedded engine,
/// PostgreSQL, remote client). The rules each method follows are in
/// DESIGN.md's Semantics section and checked by the `testkit` feature.
pub trait EventStore: Send + Sync + 'static {
    /// Appends events to a stream atomically (all or none), after checking
    /// the expected revision. An empty `events` checks the expectation only.
    /// A retry whose event ids already stand at the expected place succeeds
    /// without writing them again.
    fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> impl Future<Output = Result<AppendResult>> + Send;

    /// Appends to several streams atomically (ADR 29): every stream's
    /// condition is checked, then all events are written in one contiguous
    /// range of positions, in the request's order, or none is (a condition
    /// that does not hold answers `ConsistencyViolation` listing every
    /// one). Each written stream follows the rules of [`append`](Self::append).
    /// A backend that cannot do it atomically answers `Unsupported`.
    fn append_multi(
        &self,
        request: MultiAppend,
    ) -> impl Future<Output = Result<MultiAppendResult>> + Send {
        let _ = request;
        async {
            Err(crate::Error::Unsupported(
                "multi-stream appends are not supported by this store".into(),
            ))
        }
    }

    /// Reads a stream (user stream, `$ce-<category>`, `$et-<type>`), applying
    /// the stream's `$maxCount` / `$maxAge` / `$tb`. Errors with
    /// `StreamNotFound` or `StreamDeleted`.
    fn read_stream(
        &self,
        request: ReadStream,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>>> + Send;

    /// Reads the global log.
    fn read_all(&self, request: ReadAll)
        -> impl Future<Output = Result<Vec<RecordedEvent>>> + Send;

    /// Subscribes: catch-up from the start point, then live, without gaps or
    /// duplicates at the hand-over.
    fn subscribe(&self, request: Subscribe) -> impl Future<Output = Result<Subscription>> + Send;

    /// The metadata of a stream (default when never set).
    fn stream_metadata(
        &self,
        stream: StreamName,
    ) -> impl Future<Output = Result<StreamMetadataResult>> + Send;

    /// Writes a stream's metadata as a new event in `$$<stream>`;
    /// `expected` applies to the metadata stream.
    fn set_stream_metadata(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
    ) -> impl Future<Output = Result<AppendResult>> + Send;

    /// Soft delete: reads answer `StreamNotFound`; appending recreates the
    /// stream with revisions continuing after the last one.
    fn delete_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> impl Future<Output = Result<DeleteResult>> + Send;

    /// Hard delete: every later read or append answers `StreamDeleted`.
    fn tombstone_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> impl Future<Output = Result<DeleteResult>> + Send;

    /// The position of the newest committed event, `None` when empty.
    fn head_position(&self) -> impl Future<Output = Result<Option<Position>>> + Send;
}

impl<T: EventStore> EventStore for Arc<T> {
    fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> impl Future<Output = Result<AppendResult>> + Send {
        (**self).append(stream, expected, events)
    }
    fn append_multi(
        &self,
        request: MultiAppend,
    ) -> impl Future<Output = Result<MultiAppendResult>> + Send {
        (**self).append_multi(request)
    }
    fn read_stream(
        &self,
        request: ReadStream,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>>> + Send {
        (**self).read_stream(request)
    }
    fn read_all(
        &self,
        request: ReadAll,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>>> + Send {
        (**self).read_all(request)
    }
    fn subscribe(&self, request: Subscribe) -> impl Future<Output = Result<Subscription>> + Send {
        (**self).subscribe(request)
    }
    fn stream_metadata(
        &self,
        stream: StreamName,
    ) -> impl Future<Output = Result<StreamMetadataResult>> + Send {
        (**self).stream_metadata(stream)
    }
    fn set_stream_metadata(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
    ) -> impl Future<Output = Result<AppendResult>> + Send {
        (**self).set_stream_metadata(stream, expected, metadata)
    }
    fn delete_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> impl Future<Output = Result<DeleteResult>> + Send {
        (**self).delete_stream(stream, expected)
    }
    fn tombstone_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> impl Future<Output = Result<DeleteResult>> + Send {
        (**self).tombstone_stream(stream, expected)
    }
    fn head_position(&self) -> impl Future<Output = Result<Option<Position>>> + Send {
        (**self).head_position()
    }
}

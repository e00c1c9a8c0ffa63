//! The suite run against the reference [`Model`] wrapped as an in-memory
//! [`EventStore`]: it validates the checks against the written contract
//! (and the model against the checks). Also checks that the property test
//! catches a broken backend.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::model::Model;
use super::StoreFactory;
use crate::error::Result;
use crate::expected::{AppendResult, DeleteResult, ExpectedRevision};
use crate::metadata::{StreamMetadata, StreamMetadataResult};
use crate::model::{EventData, Position, RecordedEvent, StreamName, Timestamp};
use crate::read::{ReadAll, ReadStream, Subscribe, SubscriptionTarget};
use crate::store::{EventStore, Subscription, SubscriptionMessage};

struct Inner {
    model: Mutex<Model>,
    /// Bumped after every write, to wake subscriptions.
    changed: watch::Sender<()>,
}

/// The model as a store. With `broken_tombstone`, tombstones act as soft
/// deletes (a mutant the property test must catch).
#[derive(Clone)]
pub(crate) struct MemoryStore {
    inner: Arc<Inner>,
    broken_tombstone: bool,
}

impl MemoryStore {
    fn new(broken_tombstone: bool) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                model: Mutex::new(Model::new()),
                changed: watch::channel(()).0,
            }),
            broken_tombstone,
        }
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        self.inner.model.lock().expect("model lock")
    }

    fn write<T>(&self, f: impl FnOnce(&mut Model) -> Result<T>) -> Result<T> {
        let result = f(&mut self.model());
        self.inner.changed.send_replace(());
        result
    }
}

struct SubState {
    inner: Arc<Inner>,
    changed: watch::Receiver<()>,
    target: SubscriptionTarget,
    cursor: Option<u64>,
    pending: VecDeque<RecordedEvent>,
    caught_up: bool,
}

async fn next_message(mut st: SubState) -> Option<(Result<SubscriptionMessage>, SubState)> {
    loop {
        if let Some(e) = st.pending.pop_front() {
            return Some((Ok(SubscriptionMessage::Event(e)), st));
        }
        st.changed.borrow_and_update();
        let batch = st
            .inner
            .model
            .lock()
            .expect("model lock")
            .events_after(&st.target, st.cursor, 64);
        if let Some(last) = batch.last() {
            st.cursor = Some(match st.target {
                SubscriptionTarget::All(_) => last.position.0,
                SubscriptionTarget::Stream(_) => last.read_revision().0,
            });
            st.pending.extend(batch);
            continue;
        }
        if !st.caught_up {
            st.caught_up = true;
            return Some((Ok(SubscriptionMessage::CaughtUp), st));
        }
        if st.changed.changed().await.is_err() {
            return None;
        }
    }
}

impl EventStore for MemoryStore {
    async fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        self.write(|m| m.append(&stream, expected, &events, Timestamp::now()))
    }

    async fn append_multi(
        &self,
        request: crate::multi::MultiAppend,
    ) -> Result<crate::multi::MultiAppendResult> {
        self.write(|m| m.append_multi(&request, Timestamp::now()))
    }

    async fn read_stream(&self, request: ReadStream) -> Result<Vec<RecordedEvent>> {
        self.model().read_stream(&request, Timestamp::now())
    }

    async fn read_all(&self, request: ReadAll) -> Result<Vec<RecordedEvent>> {
        Ok(self.model().read_all(&request))
    }

    async fn subscribe(&self, request: Subscribe) -> Result<Subscription> {
        let changed = self.inner.changed.subscribe();
        let cursor = self
            .model()
            .subscription_start(&request.target, request.start)?;
        let state = SubState {
            inner: Arc::clone(&self.inner),
            changed,
            target: request.target,
            cursor,
            pending: VecDeque::new(),
            caught_up: false,
        };
        Ok(Subscription::new(futures_util::stream::unfold(
            state,
            next_message,
        )))
    }

    async fn stream_metadata(&self, stream: StreamName) -> Result<StreamMetadataResult> {
        self.model().metadata(&stream)
    }

    async fn set_stream_metadata(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
    ) -> Result<AppendResult> {
        self.write(|m| m.set_metadata(&stream, expected, metadata, Timestamp::now()))
    }

    async fn delete_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> Result<DeleteResult> {
        self.write(|m| m.delete(&stream, expected, Timestamp::now()))
    }

    async fn tombstone_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> Result<DeleteResult> {
        if self.broken_tombstone {
            return self.write(|m| m.delete(&stream, expected, Timestamp::now()));
        }
        self.write(|m| m.tombstone(&stream, expected, Timestamp::now()))
    }

    async fn head_position(&self) -> Result<Option<Position>> {
        Ok(self.model().head())
    }
}

/// Fresh in-memory stores.
#[derive(Clone, Copy, Default)]
pub(crate) struct MemoryFactory {
    broken_tombstone: bool,
}

impl StoreFactory for MemoryFactory {
    type Store = MemoryStore;
    async fn create(&self) -> MemoryStore {
        MemoryStore::new(self.broken_tombstone)
    }
}

mod conformance {
    crate::conformance_tests!(super::MemoryFactory::default());
}

#[test]
fn check_names_are_unique() {
    let unique: std::collections::HashSet<_> = super::CHECKS.iter().collect();
    assert_eq!(unique.len(), super::CHECKS.len());
}

#[test]
fn model_proptest_catches_a_broken_backend() {
    let broken = MemoryFactory {
        broken_tombstone: true,
    };
    let outcome = std::panic::catch_unwind(|| super::model_proptest(broken, 64));
    assert!(
        outcome.is_err(),
        "model_proptest passed a store whose tombstones are soft deletes"
    );
}

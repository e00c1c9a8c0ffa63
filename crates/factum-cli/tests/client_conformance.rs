//! factum-client passes the core conformance testkit against real
//! `factum serve` processes: every store the testkit creates is a fresh
//! server on a free port over a fresh temporary directory.

use std::process::Child;

use factum_client::Client;
use factum_core::testkit::StoreFactory;
use factum_core::{
    AppendResult, DeleteResult, EventData, EventStore, ExpectedRevision, Position, ReadAll,
    ReadStream, RecordedEvent, Result, StreamMetadata, StreamMetadataResult, StreamName, Subscribe,
    Subscription,
};

mod common;

/// A client plus the server process (and directory) it talks to.
pub struct RemoteStore {
    client: Client,
    server: Child,
    _dir: tempfile::TempDir,
}

impl Drop for RemoteStore {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// One `factum serve` per store.
#[derive(Default)]
pub struct ServeFactory;

impl StoreFactory for ServeFactory {
    type Store = RemoteStore;
    async fn create(&self) -> RemoteStore {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("store");
        let (server, addr) = common::serve(&["--data", data.to_str().unwrap()]);
        let client = Client::connect(&format!("esdb://{addr}?tls=false"))
            .await
            .unwrap();
        RemoteStore {
            client,
            server,
            _dir: dir,
        }
    }
}

impl EventStore for RemoteStore {
    async fn append(
        &self,
        s: StreamName,
        e: ExpectedRevision,
        ev: Vec<EventData>,
    ) -> Result<AppendResult> {
        self.client.append(s, e, ev).await
    }
    async fn read_stream(&self, r: ReadStream) -> Result<Vec<RecordedEvent>> {
        self.client.read_stream(r).await
    }
    async fn read_all(&self, r: ReadAll) -> Result<Vec<RecordedEvent>> {
        self.client.read_all(r).await
    }
    async fn subscribe(&self, r: Subscribe) -> Result<Subscription> {
        self.client.subscribe(r).await
    }
    async fn stream_metadata(&self, s: StreamName) -> Result<StreamMetadataResult> {
        self.client.stream_metadata(s).await
    }
    async fn set_stream_metadata(
        &self,
        s: StreamName,
        e: ExpectedRevision,
        m: StreamMetadata,
    ) -> Result<AppendResult> {
        self.client.set_stream_metadata(s, e, m).await
    }
    async fn delete_stream(&self, s: StreamName, e: ExpectedRevision) -> Result<DeleteResult> {
        self.client.delete_stream(s, e).await
    }
    async fn tombstone_stream(&self, s: StreamName, e: ExpectedRevision) -> Result<DeleteResult> {
        self.client.tombstone_stream(s, e).await
    }
    async fn head_position(&self) -> Result<Option<Position>> {
        self.client.head_position().await
    }
    async fn append_multi(
        &self,
        r: factum_core::MultiAppend,
    ) -> Result<factum_core::MultiAppendResult> {
        self.client.append_multi(r).await
    }
}

mod conformance {
    factum_core::conformance_tests!(super::ServeFactory);
}

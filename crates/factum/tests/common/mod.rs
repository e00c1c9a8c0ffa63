//! What the integration tests share: a throwaway store on each backend
//! (the embedded engine; PostgreSQL in a fresh schema), the macro that runs
//! a test on both, and a store that injects concurrent writers.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use factum_core::{
    AppendResult, EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, RecordedEvent,
    Result, StreamMetadata, StreamMetadataResult, StreamName, Subscribe, Subscription,
};
use factum_engine::{Durability, Engine, EngineConfig};
use factum_postgres::{PostgresConfig, PostgresStore};

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

/// The PostgreSQL server the tests use: `FACTUM_TEST_POSTGRES_URL`
/// (default `postgres://postgres@127.0.0.1:5432/postgres`).
pub fn postgres_url() -> String {
    std::env::var("FACTUM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Without a server: `None` after printing SKIPPED, except under `CI=true`,
/// where the test fails.
pub fn skip_without_postgres(test: &str, why: impl std::fmt::Display) -> Option<()> {
    let url = postgres_url();
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("PostgreSQL at {url} is required under CI=true ({test}): {why}");
    }
    println!("SKIPPED {test}: no PostgreSQL at {url} ({why})");
    None
}

/// A PostgreSQL store in a fresh schema, dropped with the store's last
/// clone, and a temporary directory (for SQLite read models); `None` (the
/// test is skipped) without a server.
pub async fn postgres(test: &str) -> Option<(PostgresStore, tempfile::TempDir)> {
    let schema = format!("factum_test_{}", factum_core::Uuid::new_v4().simple());
    let mut config = PostgresConfig::new(postgres_url()).schema(schema);
    // Live subscriptions wake on NOTIFY; poll fast as the fallback.
    config.poll_interval = std::time::Duration::from_millis(100);
    let connected = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        PostgresStore::connect(config),
    )
    .await;
    match connected {
        Ok(Ok(store)) => Some((
            store.drop_schema_on_drop(),
            tempfile::tempdir().expect("tempdir"),
        )),
        Ok(Err(e)) => skip_without_postgres(test, e).and(None),
        Err(_) => skip_without_postgres(test, "connecting timed out").and(None),
    }
}

/// Drops a PostgreSQL schema when dropped (also when a test panics).
pub struct DropSchema(pub String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        // Drop may run inside a runtime: do the blocking work on a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let client = factum::projection::postgres::connect(&postgres_url())
                    .await
                    .ok()?;
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// A snapshot table in a fresh schema (dropped with the guard); `None`
/// (the test is skipped) without a server.
pub async fn postgres_snapshots(
    test: &str,
) -> Option<(factum::snapshot::PostgresSnapshotStore, DropSchema)> {
    let schema = format!("factum_snap_{}", factum_core::Uuid::new_v4().simple());
    let connected = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        factum::snapshot::PostgresSnapshotStore::connect(&postgres_url(), &schema),
    )
    .await;
    match connected {
        Ok(Ok(store)) => Some((store, DropSchema(schema))),
        Ok(Err(e)) => skip_without_postgres(test, e).and(None),
        Err(_) => skip_without_postgres(test, "connecting timed out").and(None),
    }
}

/// Runs each named test on every backend: for `async fn name<S>(store: S,
/// dir: TempDir)` generic over the store, it makes `name::engine` and
/// `name::postgres` (skipped without a server, see [`postgres`]).
#[allow(unused_macros)] // not every test file runs on both
macro_rules! on_every_backend {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn engine() {
                let (store, dir) = crate::common::engine();
                super::$name(store, dir).await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some((store, dir)) = crate::common::postgres(stringify!($name)).await else {
                    return;
                };
                super::$name(store, dir).await;
            }
        }
    )+};
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
    /// Races on the last written stream: an intruding event lands there
    /// between the load and the commit.
    async fn append_multi(
        &self,
        request: factum_core::MultiAppend,
    ) -> Result<factum_core::MultiAppendResult> {
        let racing = self
            .races
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if let (true, Some(&k)) = (racing, request.written().last()) {
            self.inner
                .append(
                    request.streams[k].stream.clone(),
                    ExpectedRevision::Any,
                    vec![(self.intruder)()],
                )
                .await?;
        }
        self.inner.append_multi(request).await
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

/// A store whose subscriptions break: each of the next `breaks`
/// subscriptions ends with `error` after delivering `events_per_break`
/// events, and each of the next `refusals` subscribe calls fails with it.
#[derive(Clone)]
pub struct BreakingStore<S> {
    pub inner: S,
    pub breaks: Arc<AtomicU32>,
    pub refusals: Arc<AtomicU32>,
    pub events_per_break: u32,
    pub error: fn() -> factum_core::Error,
}

impl<S> BreakingStore<S> {
    pub fn new(inner: S, error: fn() -> factum_core::Error) -> Self {
        BreakingStore {
            inner,
            breaks: Arc::default(),
            refusals: Arc::default(),
            events_per_break: 2,
            error,
        }
    }
}

fn take_one(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl<S: EventStore> EventStore for BreakingStore<S> {
    async fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(&self, r: ReadStream) -> Result<Vec<RecordedEvent>> {
        self.inner.read_stream(r).await
    }
    async fn read_all(&self, r: ReadAll) -> Result<Vec<RecordedEvent>> {
        self.inner.read_all(r).await
    }
    async fn subscribe(&self, r: Subscribe) -> Result<Subscription> {
        if take_one(&self.refusals) {
            return Err((self.error)());
        }
        let sub = self.inner.subscribe(r).await?;
        if !take_one(&self.breaks) {
            return Ok(sub);
        }
        let error = self.error;
        let left = self.events_per_break;
        let broken = futures_util::stream::unfold(
            (sub, left, false),
            move |(mut sub, left, ended)| async move {
                if ended {
                    return None;
                }
                if left == 0 {
                    return Some((Err(error()), (sub, 0, true)));
                }
                let m = sub.next().await?;
                let is_event = matches!(m, Ok(factum_core::SubscriptionMessage::Event(_)));
                Some((m, (sub, left - u32::from(is_event), false)))
            },
        );
        Ok(Subscription::new(broken))
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

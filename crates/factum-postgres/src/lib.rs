//! # factum-postgres
//!
//! Factum's PostgreSQL backend: the [`EventStore`] contract on PostgreSQL,
//! so Factum servers can be stateless front ends over one shared,
//! replicated database.
//!
//! ```no_run
//! use factum_core::{EventData, EventStore, ExpectedRevision, StreamName};
//! use factum_postgres::{PostgresConfig, PostgresStore};
//! # async fn demo() -> factum_core::Result<()> {
//! let store = PostgresStore::connect(PostgresConfig::new("postgres://postgres@127.0.0.1/postgres")).await?;
//! let s = StreamName::new("order-1")?;
//! store.append(s, ExpectedRevision::NoStream, vec![EventData::json("Placed", &1)?]).await?;
//! # Ok(()) }
//! ```
//!
//! Positions are in commit order and dense as written (a scavenge,
//! `PostgresStore::scavenge`, later leaves gaps, ADR 33): every append
//! transaction takes the lock on the one `head` row first and holds it to
//! commit (ADR 6).
//! Appends from one process are batched into one transaction by a writer
//! task (group commit), so throughput comes from batching. Live
//! subscriptions wake on `LISTEN`/`NOTIFY` and poll as a fallback.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod read;
mod scavenge;
mod schema;
mod session;
mod subject_keys;
mod subscribe;
mod tls;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use factum_core::rules::{Limits, Operation};
use factum_core::UnavailableReason;
use factum_core::{
    AppendResult, Error, EventStore, ExpectedRevision, MultiAppend, MultiAppendResult, Position,
    ReadAll, ReadStream, RecordedEvent, Result, StreamMetadataResult, StreamName, Subscribe,
    Subscription,
};
use tokio::sync::{mpsc, oneshot, watch};

pub use scavenge::{PgScavengeOptions, PgScavengeReport, STREAMS_PAGE};
pub use schema::migrate;
pub use subject_keys::{PgRekeyed, PostgresKeys};

/// How to reach and use the database.
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// Connection string, as libpq takes it: a URL
    /// (`postgres://user@host:5432/db?sslmode=verify-full&sslrootcert=ca.crt`)
    /// or key=value pairs. `sslmode` (`disable`, `prefer` by default,
    /// `require`, `verify-ca`, `verify-full`) and `sslrootcert` mean what
    /// they mean in libpq (ADR 24).
    pub url: String,
    /// Schema holding the store's tables (several stores can share a database).
    pub schema: String,
    /// Connections for reads (the writer has one of its own, the live
    /// subscriptions' listener another).
    pub pool_size: usize,
    /// A read waiting this long for a free connection answers
    /// `Unavailable`, so long scans and subscriptions cannot starve other
    /// reads (`/health` among them) without end.
    pub pool_wait_timeout: Duration,
    /// Connecting gives up after this long.
    pub connect_timeout: Duration,
    /// Statement timeout applied to every connection.
    pub statement_timeout: Duration,
    /// Lock wait timeout applied to every connection: an append waiting
    /// this long for the head lock (held by a stalled instance) gives up,
    /// is retried a few times, then answers `Unavailable`; nothing was
    /// written.
    pub lock_timeout: Duration,
    /// The server ends a session of the store idle this long inside a
    /// transaction (an instance stalled while holding the head lock),
    /// releasing its locks.
    pub idle_in_transaction_timeout: Duration,
    /// TCP keepalive: a silent peer is probed after this long and then as
    /// often, and counts as dead after 3 unanswered probes; the server
    /// side of each session does the same.
    pub keepalive: Duration,
    /// Start even though the database's settings could lose acknowledged
    /// commits (`fsync` or `full_page_writes` off, or sessions that did
    /// not get `synchronous_commit` pinned): for throwaway development
    /// clusters only. Start-up refuses such a database otherwise.
    pub allow_unsafe: bool,
    /// Live subscriptions poll this often when no notification arrives.
    pub poll_interval: Duration,
    /// Most appends batched into one transaction.
    pub max_group_appends: usize,
    /// Most bytes of events batched into one transaction (a larger append
    /// goes alone): PostgreSQL takes at most 1 GiB in one message, and a
    /// smaller group keeps one large append from delaying many small ones.
    pub max_group_bytes: usize,
    /// Event and append size limits.
    pub limits: Limits,
    /// A live subscriber this many events behind the head is told it fell behind.
    pub fell_behind_events: u64,
}

impl PostgresConfig {
    /// Defaults for a connection string (schema `factum`).
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            schema: "factum".into(),
            pool_size: 8,
            pool_wait_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(10),
            allow_unsafe: false,
            poll_interval: Duration::from_millis(500),
            max_group_appends: 512,
            max_group_bytes: 16 << 20,
            limits: Limits::default(),
            fell_behind_events: 50_000,
        }
    }

    /// Uses another schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }
}

/// An event store in PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: PostgresConfig,
    pub pool: Pool,
    /// `{schema}.` prefix for table names.
    pub tables: Tables,
    writer: mpsc::Sender<writer::Request>,
    /// Bumped on every notification (or poll): a hint that the head moved.
    /// The listener starts with the first subscription, so a store that
    /// only writes keeps no listening connection woken by every commit.
    wake: std::sync::OnceLock<watch::Receiver<u64>>,
    /// How the listener connects.
    pg: tokio_postgres::Config,
    tls: tls::Tls,
    pub drop_schema_on_drop: bool,
}

/// Fully qualified table names.
#[derive(Clone, Debug)]
pub(crate) struct Tables {
    pub schema: String,
    pub head: String,
    pub streams: String,
    pub events: String,
    pub links: String,
    pub channel: String,
}

impl Tables {
    fn new(schema: &str) -> Self {
        Tables {
            schema: schema.to_string(),
            head: format!("{schema}.head"),
            streams: format!("{schema}.streams"),
            events: format!("{schema}.events"),
            links: format!("{schema}.links"),
            channel: format!("factum_{schema}"),
        }
    }
}

/// Turns a database error into the caller's terms: `Unavailable`, with
/// the reason [`unavailable_reason`] reads from it.
pub(crate) fn db_err(context: &str, e: impl std::error::Error + 'static) -> Error {
    Error::unavailable(
        unavailable_reason(&e),
        format!("PostgreSQL {context}: {}", describe(&e)),
    )
}

/// Why the database failed a request: `DatabaseRejected` (fatal) for the
/// SQLSTATE classes no retry changes — 28 (authorization), 3D (no such
/// database), 3F (no such schema), 42 (a missing table or function, a
/// privilege) —, `DatabaseUnreachable` (transient: appends are idempotent
/// by event id) for everything else, a lost connection above all.
pub(crate) fn unavailable_reason(e: &(dyn std::error::Error + 'static)) -> UnavailableReason {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(db) = c.downcast_ref::<tokio_postgres::error::DbError>() {
            let code = db.code().code();
            if ["28", "3D", "3F", "42"]
                .iter()
                .any(|class| code.starts_with(class))
            {
                return UnavailableReason::DatabaseRejected;
            }
            break;
        }
        cause = c.source();
    }
    UnavailableReason::DatabaseUnreachable
}

/// An error with its causes on one line: tokio-postgres shows a server's
/// error only as "db error", its message and SQLSTATE are in the source.
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        if let Some(db) = c.downcast_ref::<tokio_postgres::error::DbError>() {
            text.push_str(&format!(" (SQLSTATE {})", db.code().code()));
        }
        cause = c.source();
    }
    text.replace('\n', "; ")
}

pub(crate) fn valid_schema(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 48
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "schema name {s:?} must be 1-48 characters of a-z, 0-9 and _, not starting with a digit"
        )))
    }
}

/// A pool of sessions with the store's settings.
fn build_pool(
    pg: &tokio_postgres::Config,
    tls: &tls::Tls,
    size: usize,
    wait: Duration,
) -> Result<Pool> {
    let manager = Manager::from_config(
        pg.clone(),
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(wait))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| db_err("pool", e))
}

impl PostgresStore {
    /// Connects, applies pending migrations, and starts the writer and the
    /// notification listener.
    pub async fn connect(config: PostgresConfig) -> Result<PostgresStore> {
        valid_schema(&config.schema)?;
        let (mut pg, tls) = session::base_config(&config)?;
        let configured = session::configured_synchronous_commit(&pg, &tls).await?;
        let pinned = session::pinned_synchronous_commit(&configured);
        session::pin_synchronous_commit(&mut pg, pinned);
        let pool = build_pool(&pg, &tls, config.pool_size.max(1), config.pool_wait_timeout)?;
        // The writer's own: reads cannot keep it waiting for a connection.
        let writer_pool = build_pool(&pg, &tls, 1, config.pool_wait_timeout)?;
        let tables = Tables::new(&config.schema);
        {
            let mut client = pool.get().await.map_err(|e| db_err("connect", e))?;
            let found = session::settings(&client).await?;
            session::check(&found, pinned, config.allow_unsafe)?;
            schema::migrate_client(&mut client, &config.schema).await?;
        }
        let writer = writer::start(writer_pool, tables.clone(), config.clone());
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                config,
                pool,
                tables,
                writer,
                wake: std::sync::OnceLock::new(),
                pg,
                tls,
                drop_schema_on_drop: false,
            }),
        })
    }

    /// For tests: drop the store's schema (all its data) when the last
    /// clone is dropped.
    pub fn drop_schema_on_drop(mut self) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.drop_schema_on_drop = true;
        }
        self
    }

    async fn submit(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        op: Operation,
    ) -> Result<AppendResult> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send(writer::Request {
                stream,
                expected,
                op,
                reply,
            })
            .await
            .map_err(|_| Error::unavailable(UnavailableReason::Closed, "the store is closed"))?;
        rx.await.map_err(|_| {
            Error::unavailable(
                UnavailableReason::Closed,
                "the writer stopped before answering",
            )
        })?
    }
}

impl Inner {
    /// The hint that the head moved; starts the listener on first use (in
    /// a runtime).
    pub(crate) fn wake(&self) -> watch::Receiver<u64> {
        self.wake
            .get_or_init(|| {
                subscribe::listen(
                    self.pg.clone(),
                    self.tls.clone(),
                    self.tables.channel.clone(),
                    self.config.poll_interval,
                )
            })
            .clone()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.drop_schema_on_drop {
            return;
        }
        let (pg, tls) = (self.pg.clone(), self.tls.clone());
        let schema = self.tables.schema.clone();
        // Drop may run inside a runtime: do the blocking work on a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let (client, conn) = pg.connect(tls).await.ok()?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

impl EventStore for PostgresStore {
    factum_core::writes_through_submit!();

    async fn append_multi(&self, request: MultiAppend) -> Result<MultiAppendResult> {
        let i = &self.inner;
        writer::append_multi(&i.pool, &i.tables, &i.config, request).await
    }

    async fn read_stream(&self, request: ReadStream) -> Result<Vec<RecordedEvent>> {
        read::read_stream(&self.inner, &request).await
    }

    async fn read_all(&self, request: ReadAll) -> Result<Vec<RecordedEvent>> {
        read::read_all(&self.inner, &request).await
    }

    async fn subscribe(&self, request: Subscribe) -> Result<Subscription> {
        subscribe::start(self.inner.clone(), request).await
    }

    async fn stream_metadata(&self, stream: StreamName) -> Result<StreamMetadataResult> {
        read::stream_metadata(&self.inner, &stream).await
    }

    async fn head_position(&self) -> Result<Option<Position>> {
        // The first event is at 1 (ADR 25): an empty log's next position is 1.
        Ok(read::next_position(&self.inner)
            .await?
            .checked_sub(1)
            .filter(|&head| head > 0)
            .map(Position))
    }
}

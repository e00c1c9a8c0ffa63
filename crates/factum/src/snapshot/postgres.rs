//! Snapshots in a PostgreSQL table (feature `postgres`): a backend-native
//! [`SnapshotStore`] beside any event store.
//!
//! One row per snapshot in `<schema>.factum_snapshots`, keyed by (stream,
//! revision, schema version); a load is one indexed query that also says
//! whether a newer snapshot of another schema version was skipped; a save
//! is an upsert followed by trimming the stream's rows to the newest `keep`.
//! The statements are prepared once per connection; a closed connection is
//! replaced on the next call. Errors reaching the database are
//! [`Error::Unavailable`] (transient: the repository's command still
//! committed, the next load replays more events).
//!
//! Compared with [`StreamSnapshotStore`](super::StreamSnapshotStore) (one
//! event per snapshot in `$snapshot-<stream>`, works on every backend), the
//! table keeps snapshots out of the event log and picks the newest usable
//! one in one query; `factum bench aggregate-load-postgres` measures both.

use std::sync::{Arc, Mutex};

use factum_core::UnavailableReason;
use factum_core::{Bytes, Error, StreamName, StreamRevision, Timestamp};
use tokio_postgres::{Client, Statement};

use super::{Snapshot, SnapshotBound, SnapshotLookup, SnapshotStore};
use crate::projection::postgres::connect;

const SCHEMA_SQL: &str = include_str!("../../sql/postgres/snapshots.sql");
const LOAD_SQL: &str = include_str!("../../sql/postgres/snapshot_load.sql");
const SAVE_SQL: &str = include_str!("../../sql/postgres/snapshot_save.sql");
const TRIM_SQL: &str = include_str!("../../sql/postgres/snapshot_trim.sql");

/// Snapshots in a PostgreSQL table (see the module documentation).
///
/// ```no_run
/// # async fn demo<S: factum_core::EventStore + Clone, A: factum::Aggregate>(store: S) -> factum_core::Result<()> {
/// use factum::snapshot::PostgresSnapshotStore;
/// use factum::{Repository, SnapshotPolicy};
/// let snapshots = PostgresSnapshotStore::connect("postgres://postgres@127.0.0.1/app", "factum").await?;
/// let repo = Repository::<S, A>::new(store)
///     .with_snapshot_store(snapshots)
///     .snapshots(SnapshotPolicy::every(100));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresSnapshotStore {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    schema: String,
    keep: i64,
    conn: Mutex<Option<Arc<Conn>>>,
}

/// A connection and its prepared statements.
struct Conn {
    client: Client,
    load: Statement,
    save: Statement,
    trim: Statement,
}

fn unavailable(context: &str, e: tokio_postgres::Error) -> Error {
    let reason = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    Error::unavailable(
        UnavailableReason::DatabaseUnreachable,
        format!("PostgreSQL snapshot store ({context}): {reason}"),
    )
}

impl PostgresSnapshotStore {
    /// Connects to the database at `url` and creates `schema` and its
    /// `factum_snapshots` table when missing. Keeps the newest 8 snapshots
    /// per aggregate.
    pub async fn connect(url: &str, schema: &str) -> factum_core::Result<Self> {
        crate::projection::validate_name(schema)
            .map_err(|e| Error::InvalidInput(format!("snapshot schema: {e}")))?;
        let store = PostgresSnapshotStore {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                schema: schema.to_owned(),
                keep: 8,
                conn: Mutex::new(None),
            }),
        };
        store.conn().await?;
        Ok(store)
    }

    /// Keeps the newest `n` (at least 1) snapshots per aggregate.
    pub fn keep(self, n: u64) -> Self {
        let inner = Inner {
            url: self.inner.url.clone(),
            schema: self.inner.schema.clone(),
            keep: n.clamp(1, i64::MAX as u64) as i64,
            conn: Mutex::new(
                self.inner
                    .conn
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            ),
        };
        PostgresSnapshotStore {
            inner: Arc::new(inner),
        }
    }

    /// The schema holding the table.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The open connection, or a new one (creating the table when missing).
    async fn conn(&self) -> factum_core::Result<Arc<Conn>> {
        {
            let guard = self.inner.conn.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = guard.as_ref().filter(|c| !c.client.is_closed()) {
                return Ok(c.clone());
            }
        }
        let mut client = connect(&self.inner.url)
            .await
            .map_err(|e| unavailable("connect", e))?;
        let schema = &self.inner.schema;
        // Creating the same table from several processes at once can race in
        // the catalog: serialise it.
        let tx = client
            .transaction()
            .await
            .map_err(|e| unavailable("setup", e))?;
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock(hashtext('factum_snapshots'));
             CREATE SCHEMA IF NOT EXISTS {schema};
             SET LOCAL search_path TO {schema};
             {SCHEMA_SQL}"
        ))
        .await
        .map_err(|e| unavailable("creating the table", e))?;
        tx.commit().await.map_err(|e| unavailable("setup", e))?;
        client
            .batch_execute(&format!("SET search_path TO {schema}"))
            .await
            .map_err(|e| unavailable("setup", e))?;
        let prepare = |sql: &'static str| {
            let client = &client;
            async move {
                client
                    .prepare(sql)
                    .await
                    .map_err(|e| unavailable("prepare", e))
            }
        };
        let (load, save, trim) = (
            prepare(LOAD_SQL).await?,
            prepare(SAVE_SQL).await?,
            prepare(TRIM_SQL).await?,
        );
        let conn = Arc::new(Conn {
            client,
            load,
            save,
            trim,
        });
        *self.inner.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }
}

fn as_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl SnapshotStore for PostgresSnapshotStore {
    async fn load(
        &self,
        stream: &StreamName,
        schema_version: u32,
        bound: SnapshotBound,
    ) -> factum_core::Result<SnapshotLookup> {
        let (max_revision, max_time) = match bound {
            SnapshotBound::Latest => (i64::MAX, i64::MAX),
            SnapshotBound::AtOrBeforeRevision(r) => (as_i64(r.0), i64::MAX),
            SnapshotBound::AtOrBeforeTime(t) => (i64::MAX, t.0),
        };
        let version = i32::try_from(schema_version)
            .map_err(|_| Error::InvalidInput(format!("snapshot version {schema_version}")))?;
        let conn = self.conn().await?;
        let row = conn
            .client
            .query_one(
                &conn.load,
                &[&stream.as_str(), &version, &max_revision, &max_time],
            )
            .await
            .map_err(|e| unavailable("load", e))?;
        let snapshot = row.get::<_, Option<i64>>(0).map(|revision| Snapshot {
            revision: StreamRevision(revision as u64),
            schema_version,
            last_event_at: Timestamp(row.get(1)),
            state: Bytes::from(row.get::<_, Vec<u8>>(2)),
            taken_at: Some(Timestamp(row.get(3))),
        });
        Ok(SnapshotLookup {
            snapshot,
            skipped_stale: row.get(4),
        })
    }

    async fn save(&self, stream: &StreamName, snapshot: Snapshot) -> factum_core::Result<()> {
        let version = i32::try_from(snapshot.schema_version).map_err(|_| {
            Error::InvalidInput(format!("snapshot version {}", snapshot.schema_version))
        })?;
        let conn = self.conn().await?;
        conn.client
            .execute(
                &conn.save,
                &[
                    &stream.as_str(),
                    &as_i64(snapshot.revision.0),
                    &version,
                    &snapshot.last_event_at.0,
                    &&snapshot.state[..],
                ],
            )
            .await
            .map_err(|e| unavailable("save", e))?;
        conn.client
            .execute(&conn.trim, &[&stream.as_str(), &self.inner.keep])
            .await
            .map_err(|e| unavailable("trim", e))?;
        Ok(())
    }
}

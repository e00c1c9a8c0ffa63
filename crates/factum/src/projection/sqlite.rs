//! Read models in SQLite, the embedded default.
//!
//! Layout of a read-model directory: `factum-read-models.sqlite` (the
//! registry: which generation of each read model is live) and one database
//! per generation, `<name>.g<N>.sqlite`, holding the projection's tables,
//! `factum_checkpoint` and `factum_dead_letters`. A rebuild fills
//! `<name>.g<N+1>.sqlite` beside the live one; the switch is one registry
//! update, after which [`SqliteReadModel::reader`] opens the new file.
//!
//! Databases run in WAL mode with `synchronous=NORMAL` by default: a power
//! loss may lose the last commits, but the checkpoint is lost with the
//! changes it covers (one transaction), so they are re-applied exactly once.
//! Blocking SQLite work runs on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use factum_core::{Position, Timestamp};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};

use super::{
    validate_name, ApplyError, BatchOutcome, Envelope, ProjectionError, ReadModelStore, Sink,
};

const REGISTRY_SQL: &str = include_str!("../../sql/sqlite/registry.sql");
const GENERATION_SQL: &str = include_str!("../../sql/sqlite/generation.sql");
const POSITIONS_FROM_ONE_SQL: &str = include_str!("../../sql/sqlite/positions_from_one.sql");
const REGISTRY_FILE: &str = "factum-read-models.sqlite";

/// A projection into SQLite tables.
///
/// `apply` runs inside the batch's transaction; return an error to refuse an
/// event (the failure policy decides what happens). Projections are cheap
/// values (state lives in the tables), cloned for each generation.
pub trait SqliteProjection: Clone + Send + Sync + 'static {
    /// The read model's name (letters, digits, `_`).
    fn name(&self) -> &str;

    /// SQL creating the projection's tables (run once per generation).
    fn schema(&self) -> &str;

    /// Applies one event.
    fn apply(&self, tx: &Transaction<'_>, event: &Envelope) -> Result<(), ApplyError>;
}

/// A dead-lettered event, as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// Its global position.
    pub position: Position,
    /// Its stream.
    pub stream: String,
    /// Its revision.
    pub revision: u64,
    /// Its type.
    pub event_type: String,
    /// Why it was skipped.
    pub error: String,
}

/// The SQLite home of one projection's read model (see the module docs).
#[derive(Clone)]
pub struct SqliteReadModel<P> {
    dir: Arc<PathBuf>,
    projection: P,
    full_sync: bool,
}

fn sink_err(name: &str) -> impl Fn(rusqlite::Error) -> ProjectionError + '_ {
    move |e| ProjectionError::sink(name, e)
}

async fn blocking<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T, ProjectionError> + Send + 'static,
) -> Result<T, ProjectionError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProjectionError::sink(name, format!("blocking task failed: {e}")))?
}

impl<P: SqliteProjection> SqliteReadModel<P> {
    /// The read model of `projection` in directory `dir` (created if needed).
    pub fn new(dir: impl AsRef<Path>, projection: P) -> Result<Self, ProjectionError> {
        validate_name(projection.name())?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| {
            ProjectionError::sink(
                projection.name(),
                format!("creating {}: {e}", dir.display()),
            )
        })?;
        let model = SqliteReadModel {
            dir: Arc::new(dir),
            projection,
            full_sync: false,
        };
        model.registry()?;
        Ok(model)
    }

    /// Uses `synchronous=FULL` (every commit fsynced) instead of `NORMAL`.
    pub fn full_sync(mut self) -> Self {
        self.full_sync = true;
        self
    }

    /// The file of a generation.
    pub fn path_of(&self, generation: u64) -> PathBuf {
        self.dir
            .join(format!("{}.g{generation}.sqlite", self.projection.name()))
    }

    fn registry(&self) -> Result<Connection, ProjectionError> {
        let conn = Connection::open(self.dir.join(REGISTRY_FILE))
            .map_err(sink_err(self.projection.name()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .and_then(|_| conn.execute_batch(REGISTRY_SQL))
            .map_err(sink_err(self.projection.name()))?;
        Ok(conn)
    }

    fn live_generation_blocking(&self) -> Result<u64, ProjectionError> {
        let conn = self.registry()?;
        let name = self.projection.name();
        conn.execute(
            "INSERT OR IGNORE INTO factum_read_models (name, live_generation) VALUES (?1, 1)",
            params![name],
        )
        .map_err(sink_err(name))?;
        let g: i64 = conn
            .query_row(
                "SELECT live_generation FROM factum_read_models WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .map_err(sink_err(name))?;
        Ok(g as u64)
    }

    /// A read-only connection to the live generation: what readers query.
    /// Open a new one after a rebuild to see the new generation.
    pub fn reader(&self) -> Result<Connection, ProjectionError> {
        let g = self.live_generation_blocking()?;
        let conn = Connection::open_with_flags(
            self.path_of(g),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sink_err(self.projection.name()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sink_err(self.projection.name()))?;
        Ok(conn)
    }

    /// The dead letters of the live generation, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, ProjectionError> {
        let conn = self.reader()?;
        let name = self.projection.name();
        let mut stmt = conn
            .prepare(
                "SELECT position, stream, revision, event_type, error FROM factum_dead_letters ORDER BY position",
            )
            .map_err(sink_err(name))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(DeadLetter {
                    position: Position(r.get::<_, i64>(0)? as u64),
                    stream: r.get(1)?,
                    revision: r.get::<_, i64>(2)? as u64,
                    event_type: r.get(3)?,
                    error: r.get(4)?,
                })
            })
            .map_err(sink_err(name))?;
        rows.collect::<Result<_, _>>().map_err(sink_err(name))
    }

    fn open_blocking(&self, generation: u64) -> Result<SqliteSink<P>, ProjectionError> {
        let name = self.projection.name();
        let conn = Connection::open(self.path_of(generation)).map_err(sink_err(name))?;
        let sync = if self.full_sync { "FULL" } else { "NORMAL" };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};"
        ))
        .and_then(|_| conn.busy_timeout(std::time::Duration::from_secs(5)))
        .map_err(sink_err(name))?;
        let tables = || -> rusqlite::Result<()> {
            conn.execute_batch(&format!(
                "BEGIN; {GENERATION_SQL}\n{}\n;",
                self.projection.schema()
            ))?;
            // A generation written before positions started at 1 (ADR 25).
            let old: bool = conn.query_row(
                "SELECT NOT EXISTS (SELECT 1 FROM pragma_table_info('factum_checkpoint') \
                 WHERE name = 'positions_from')",
                [],
                |r| r.get(0),
            )?;
            if old {
                conn.execute_batch(POSITIONS_FROM_ONE_SQL)?;
            }
            conn.execute_batch("COMMIT;")
        };
        tables().map_err(|e| ProjectionError::sink(name, format!("creating the tables: {e}")))?;
        Ok(SqliteSink {
            name: name.to_owned(),
            inner: Some((conn, self.projection.clone())),
        })
    }

    fn generations_on_disk(&self) -> Result<Vec<u64>, ProjectionError> {
        let prefix = format!("{}.g", self.projection.name());
        let entries = std::fs::read_dir(&*self.dir)
            .map_err(|e| ProjectionError::sink(self.projection.name(), e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            if let Some(g) = file
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".sqlite"))
                .and_then(|g| g.parse::<u64>().ok())
            {
                out.push(g);
            }
        }
        Ok(out)
    }
}

impl<P: SqliteProjection> ReadModelStore for SqliteReadModel<P> {
    type Sink = SqliteSink<P>;

    fn name(&self) -> &str {
        self.projection.name()
    }

    async fn live_generation(&self) -> Result<u64, ProjectionError> {
        let me = self.clone();
        blocking(self.name(), move || me.live_generation_blocking()).await
    }

    async fn newest_generation(&self) -> Result<u64, ProjectionError> {
        let me = self.clone();
        blocking(self.name(), move || {
            let live = me.live_generation_blocking()?;
            Ok(me.generations_on_disk()?.into_iter().fold(live, u64::max))
        })
        .await
    }

    async fn open(&self, generation: u64) -> Result<SqliteSink<P>, ProjectionError> {
        let me = self.clone();
        blocking(self.name(), move || me.open_blocking(generation)).await
    }

    async fn drop_generation(&self, generation: u64) -> Result<(), ProjectionError> {
        let me = self.clone();
        blocking(self.name(), move || {
            let base = me.path_of(generation);
            for suffix in ["", "-wal", "-shm"] {
                let mut p = base.clone().into_os_string();
                p.push(suffix);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(ProjectionError::sink(me.name(), e)),
                }
            }
            Ok(())
        })
        .await
    }

    async fn switch(&self, to: u64) -> Result<(), ProjectionError> {
        let me = self.clone();
        blocking(self.name(), move || {
            let conn = me.registry()?;
            conn.execute(
                "INSERT INTO factum_read_models (name, live_generation) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET live_generation = excluded.live_generation",
                params![me.name(), to as i64],
            )
            .map_err(sink_err(me.name()))?;
            Ok(())
        })
        .await
    }
}

/// One generation of a SQLite read model.
pub struct SqliteSink<P> {
    name: String,
    inner: Option<(Connection, P)>,
}

impl<P: SqliteProjection> SqliteSink<P> {
    async fn with_conn<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Connection, &P) -> Result<T, ProjectionError> + Send + 'static,
    ) -> Result<T, ProjectionError> {
        let (mut conn, p) = self.inner.take().ok_or_else(|| {
            ProjectionError::sink(&self.name, "the connection was lost by an earlier failure")
        })?;
        let name = self.name.clone();
        let (conn, p, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut conn, &p);
            (conn, p, out)
        })
        .await
        .map_err(|e| ProjectionError::sink(&name, format!("blocking task failed: {e}")))?;
        self.inner = Some((conn, p));
        out
    }
}

fn apply_one<P: SqliteProjection>(
    p: &P,
    tx: &Transaction<'_>,
    env: &Envelope,
) -> Result<(), ApplyError> {
    if let Some(reason) = env.conversion_error() {
        return Err(reason.into());
    }
    p.apply(tx, env)
}

fn apply_batch<P: SqliteProjection>(
    conn: &mut Connection,
    p: &P,
    name: &str,
    batch: &[Envelope],
    checkpoint: Position,
    isolate: bool,
) -> Result<BatchOutcome, ProjectionError> {
    let err = sink_err(name);
    let tx = conn.transaction().map_err(&err)?;
    let mut outcome = BatchOutcome::default();
    for env in batch {
        if !isolate {
            apply_one(p, &tx, env).map_err(|e| ProjectionError::apply(name, env, e))?;
            outcome.applied += 1;
            continue;
        }
        tx.execute_batch("SAVEPOINT factum_event").map_err(&err)?;
        match apply_one(p, &tx, env) {
            Ok(()) => {
                tx.execute_batch("RELEASE factum_event").map_err(&err)?;
                outcome.applied += 1;
            }
            Err(reason) => {
                tx.execute_batch("ROLLBACK TO factum_event; RELEASE factum_event")
                    .map_err(&err)?;
                let reason = reason.to_string();
                tx.execute(
                    "INSERT OR REPLACE INTO factum_dead_letters
                     (position, stream, revision, event_type, error, data, failed_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        env.position().0 as i64,
                        env.stream().as_str(),
                        env.revision().0 as i64,
                        env.event_type(),
                        reason,
                        &env.recorded().data[..],
                        Timestamp::now().0,
                    ],
                )
                .map_err(&err)?;
                outcome.dead_lettered.push((env.position(), reason));
            }
        }
    }
    tx.execute(
        "UPDATE factum_checkpoint SET position = ?1, updated_at = ?2 WHERE id = 1",
        params![checkpoint.0 as i64, Timestamp::now().0],
    )
    .map_err(&err)?;
    tx.commit().map_err(&err)?;
    Ok(outcome)
}

impl<P: SqliteProjection> Sink for SqliteSink<P> {
    async fn checkpoint(&mut self) -> Result<Option<Position>, ProjectionError> {
        let name = self.name.clone();
        self.with_conn(move |conn, _| {
            conn.query_row(
                "SELECT position FROM factum_checkpoint WHERE id = 1",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()
            .map(|p| p.flatten().map(|p| Position(p as u64)))
            .map_err(|e| ProjectionError::sink(&name, e))
        })
        .await
    }

    async fn apply(
        &mut self,
        batch: Arc<[Envelope]>,
        checkpoint: Position,
        dead_letter: bool,
    ) -> Result<BatchOutcome, ProjectionError> {
        let name = self.name.clone();
        self.with_conn(move |conn, p| {
            // Fast path without savepoints; only a failing batch is redone
            // event by event to isolate what fails.
            match apply_batch(conn, p, &name, &batch, checkpoint, false) {
                Err(e) if dead_letter && e.is_event_failure() => {
                    apply_batch(conn, p, &name, &batch, checkpoint, true)
                }
                other => other,
            }
        })
        .await
    }
}

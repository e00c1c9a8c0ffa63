//! Read models in PostgreSQL (tokio-postgres), for scale.
//!
//! Each generation of a read model is a schema, `<prefix><name>_g<N>`
//! (prefix `rm_` by default), holding the projection's tables,
//! `factum_checkpoint` and `factum_dead_letters`; every transaction of the
//! generation runs with `SET LOCAL search_path` to it, so projection SQL
//! uses plain table names. The registry table `factum_read_models` (in the
//! `public` schema by default) says which generation is live; readers ask
//! [`PostgresReadModel::live_schema`]. A rebuild fills the next schema
//! beside the live one; the switch is one registry update; the old schema
//! is then dropped.

use std::future::Future;
use std::sync::Arc;

use factum_core::Position;
use tokio_postgres::{Client, NoTls, Transaction};

use super::{
    validate_name, ApplyError, BatchOutcome, Envelope, ProjectionError, ReadModelStore, Sink,
};

const REGISTRY_SQL: &str = include_str!("../../sql/postgres/registry.sql");
const GENERATION_SQL: &str = include_str!("../../sql/postgres/generation.sql");
const POSITIONS_FROM_ONE_SQL: &str = include_str!("../../sql/postgres/positions_from_one.sql");

/// A projection into PostgreSQL tables.
///
/// `apply` runs inside the batch's transaction. `apply_batch` may be
/// overridden to apply many events with few statements (e.g. one
/// `INSERT … SELECT unnest(…)`); when it fails, the batch is redone event
/// by event with `apply` to find the failing event.
pub trait PostgresProjection: Clone + Send + Sync + 'static {
    /// The read model's name (letters, digits, `_`).
    fn name(&self) -> &str;

    /// SQL creating the projection's tables (run once per generation, with
    /// the generation's schema as `search_path`).
    fn schema(&self) -> &str;

    /// Applies one event.
    fn apply<'a>(
        &'a self,
        tx: &'a Transaction<'_>,
        event: &'a Envelope,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send + 'a;

    /// Applies a batch of events (default: `apply` for each, in order).
    fn apply_batch<'a>(
        &'a self,
        tx: &'a Transaction<'_>,
        events: &'a [Envelope],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send + 'a {
        async move {
            for e in events {
                if let Some(reason) = e.conversion_error() {
                    return Err(reason.into());
                }
                self.apply(tx, e).await?;
            }
            Ok(())
        }
    }
}

/// The PostgreSQL home of one projection's read model (see the module docs).
#[derive(Clone)]
pub struct PostgresReadModel<P> {
    url: Arc<str>,
    registry_schema: Arc<str>,
    prefix: Arc<str>,
    projection: P,
}

fn pg_err(name: &str) -> impl Fn(tokio_postgres::Error) -> ProjectionError + '_ {
    move |e| ProjectionError::sink(name, pg_reason(&e))
}

fn pg_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Connects, running the connection on its own task.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

impl<P: PostgresProjection> PostgresReadModel<P> {
    /// The read model of `projection` in the database at `url`
    /// (e.g. `postgres://postgres@127.0.0.1:5432/app`).
    pub fn new(url: &str, projection: P) -> Result<Self, ProjectionError> {
        validate_name(projection.name())?;
        Ok(PostgresReadModel {
            url: Arc::from(url),
            registry_schema: Arc::from("public"),
            prefix: Arc::from("rm_"),
            projection,
        })
    }

    /// Keeps the registry table in another (existing) schema.
    pub fn registry_schema(mut self, schema: &str) -> Result<Self, ProjectionError> {
        validate_name(schema)?;
        self.registry_schema = Arc::from(schema);
        Ok(self)
    }

    /// The schema of a generation.
    pub fn schema_of(&self, generation: u64) -> String {
        format!("{}{}_g{generation}", self.prefix, self.projection.name())
    }

    async fn client(&self) -> Result<Client, ProjectionError> {
        connect(&self.url)
            .await
            .map_err(pg_err(self.projection.name()))
    }

    async fn registry(&self) -> Result<Client, ProjectionError> {
        let client = self.client().await?;
        client
            .batch_execute(&format!(
                "SET search_path TO {}; {REGISTRY_SQL}",
                self.registry_schema
            ))
            .await
            .map_err(pg_err(self.projection.name()))?;
        Ok(client)
    }

    /// The schema readers should query now.
    pub async fn live_schema(&self) -> Result<String, ProjectionError> {
        Ok(self.schema_of(self.live_generation().await?))
    }
}

impl<P: PostgresProjection> ReadModelStore for PostgresReadModel<P> {
    type Sink = PostgresSink<P>;

    fn name(&self) -> &str {
        self.projection.name()
    }

    async fn live_generation(&self) -> Result<u64, ProjectionError> {
        let client = self.registry().await?;
        let err = pg_err(self.name());
        client
            .execute(
                "INSERT INTO factum_read_models (name, live_generation) VALUES ($1, 1)
                 ON CONFLICT (name) DO NOTHING",
                &[&self.name()],
            )
            .await
            .map_err(&err)?;
        let row = client
            .query_one(
                "SELECT live_generation FROM factum_read_models WHERE name = $1",
                &[&self.name()],
            )
            .await
            .map_err(&err)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn newest_generation(&self) -> Result<u64, ProjectionError> {
        let live = self.live_generation().await?;
        let client = self.client().await?;
        let prefix = format!("{}{}_g", self.prefix, self.name());
        let rows = client
            .query(
                "SELECT schema_name FROM information_schema.schemata WHERE starts_with(schema_name, $1)",
                &[&prefix],
            )
            .await
            .map_err(pg_err(self.name()))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                r.get::<_, String>(0)
                    .strip_prefix(&prefix)
                    .and_then(|g| g.parse::<u64>().ok())
            })
            .fold(live, u64::max))
    }

    async fn open(&self, generation: u64) -> Result<PostgresSink<P>, ProjectionError> {
        let mut client = self.client().await?;
        let schema = self.schema_of(generation);
        let err = pg_err(self.name());
        let tx = client.transaction().await.map_err(&err)?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path TO {schema};\n{GENERATION_SQL}\n{POSITIONS_FROM_ONE_SQL}\n{}",
            self.projection.schema()
        ))
        .await
        .map_err(|e| {
            ProjectionError::sink(self.name(), format!("creating the tables: {}", pg_reason(&e)))
        })?;
        tx.commit().await.map_err(&err)?;
        Ok(PostgresSink {
            model: self.clone(),
            schema,
            client,
        })
    }

    async fn drop_generation(&self, generation: u64) -> Result<(), ProjectionError> {
        let client = self.client().await?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                self.schema_of(generation)
            ))
            .await
            .map_err(pg_err(self.name()))
    }

    async fn switch(&self, to: u64) -> Result<(), ProjectionError> {
        let client = self.registry().await?;
        client
            .execute(
                "INSERT INTO factum_read_models (name, live_generation) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET live_generation = excluded.live_generation",
                &[&self.name(), &(to as i64)],
            )
            .await
            .map_err(pg_err(self.name()))?;
        Ok(())
    }
}

/// One generation of a PostgreSQL read model.
pub struct PostgresSink<P> {
    model: PostgresReadModel<P>,
    schema: String,
    client: Client,
}

/// How a batch attempt ended.
enum Attempt {
    Done(BatchOutcome),
    Failed(ProjectionError),
}

impl<P: PostgresProjection> PostgresSink<P> {
    fn name(&self) -> &str {
        self.model.projection.name()
    }

    /// One transaction: the batch (fast: `apply_batch`; else event by
    /// event, isolating failures when `isolate`) and the checkpoint.
    async fn attempt(
        &mut self,
        batch: &[Envelope],
        checkpoint: Position,
        fast: bool,
        isolate: bool,
    ) -> Result<Attempt, ProjectionError> {
        let name = self.model.projection.name().to_owned();
        let err = pg_err(&name);
        let projection = &self.model.projection;
        let tx = self.client.transaction().await.map_err(&err)?;
        tx.batch_execute(&format!("SET LOCAL search_path TO {}", self.schema))
            .await
            .map_err(&err)?;
        let mut outcome = BatchOutcome::default();
        if fast {
            if let Err(e) = projection.apply_batch(&tx, batch).await {
                let first = batch
                    .first()
                    .map(|env| ProjectionError::apply(&name, env, &e));
                return Ok(Attempt::Failed(
                    first.unwrap_or_else(|| ProjectionError::sink(&name, e)),
                ));
            }
            outcome.applied = batch.len() as u64;
        } else {
            for env in batch {
                if isolate {
                    tx.batch_execute("SAVEPOINT factum_event")
                        .await
                        .map_err(&err)?;
                }
                let result = match env.conversion_error() {
                    Some(reason) => Err(reason.into()),
                    None => projection.apply(&tx, env).await,
                };
                match result {
                    Ok(()) => {
                        if isolate {
                            tx.batch_execute("RELEASE factum_event")
                                .await
                                .map_err(&err)?;
                        }
                        outcome.applied += 1;
                    }
                    Err(reason) if isolate => {
                        tx.batch_execute("ROLLBACK TO factum_event; RELEASE factum_event")
                            .await
                            .map_err(&err)?;
                        let reason = reason.to_string();
                        tx.execute(
                            "INSERT INTO factum_dead_letters (position, stream, revision, event_type, error, data)
                             VALUES ($1, $2, $3, $4, $5, $6)
                             ON CONFLICT (position) DO UPDATE SET error = excluded.error, failed_at = now()",
                            &[
                                &(env.position().0 as i64),
                                &env.stream().as_str(),
                                &(env.revision().0 as i64),
                                &env.event_type(),
                                &reason,
                                &&env.recorded().data[..],
                            ],
                        )
                        .await
                        .map_err(&err)?;
                        outcome.dead_lettered.push((env.position(), reason));
                    }
                    Err(reason) => {
                        return Ok(Attempt::Failed(ProjectionError::apply(&name, env, reason)))
                    }
                }
            }
        }
        tx.execute(
            "UPDATE factum_checkpoint SET position = $1, updated_at = now() WHERE id = 1",
            &[&(checkpoint.0 as i64)],
        )
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(Attempt::Done(outcome))
    }

    async fn reconnect_if_closed(&mut self) -> Result<(), ProjectionError> {
        if self.client.is_closed() {
            self.client = self.model.client().await?;
        }
        Ok(())
    }
}

impl<P: PostgresProjection> Sink for PostgresSink<P> {
    async fn checkpoint(&mut self) -> Result<Option<Position>, ProjectionError> {
        self.reconnect_if_closed().await?;
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT position FROM {}.factum_checkpoint WHERE id = 1",
                    self.schema
                ),
                &[],
            )
            .await
            .map_err(pg_err(self.name()))?;
        Ok(row.get::<_, Option<i64>>(0).map(|p| Position(p as u64)))
    }

    async fn apply(
        &mut self,
        batch: Arc<[Envelope]>,
        checkpoint: Position,
        dead_letter: bool,
    ) -> Result<BatchOutcome, ProjectionError> {
        self.reconnect_if_closed().await?;
        // The fast path first; a failing batch is redone event by event
        // (isolating failures into dead letters when asked).
        if let Attempt::Done(o) = self.attempt(&batch, checkpoint, true, false).await? {
            return Ok(o);
        }
        match self.attempt(&batch, checkpoint, false, dead_letter).await? {
            Attempt::Done(o) => Ok(o),
            Attempt::Failed(e) => Err(e),
        }
    }
}

/// Reads the dead letters of a generation's schema, oldest first:
/// (position, stream, event type, error).
pub async fn dead_letters(
    client: &Client,
    schema: &str,
) -> Result<Vec<(Position, String, String, String)>, ProjectionError> {
    validate_name(schema)?;
    let rows = client
        .query(
            &format!(
                "SELECT position, stream, event_type, error FROM {schema}.factum_dead_letters ORDER BY position"
            ),
            &[],
        )
        .await
        .map_err(pg_err(schema))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                Position(r.get::<_, i64>(0) as u64),
                r.get(1),
                r.get(2),
                r.get(3),
            )
        })
        .collect())
}

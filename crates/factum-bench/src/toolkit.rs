//! Toolkit workloads (crate `factum`): `aggregate-load` (a 10,050-event
//! aggregate loaded with a snapshot every 100 events, against full replay
//! as the baseline), `aggregate-load-postgres` (the same aggregate in a
//! PostgreSQL store, snapshots in a table against snapshots in the store's
//! `$snapshot-` stream), `projection-sqlite` and `projection-postgres` (a
//! rebuild of a balances read model from position 0, against a raw `$all`
//! read of the same events as the baseline).
//!
//! Stores are loaded with durability `None` (labelled so): these workloads
//! measure reads and read-model writes, not appends.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use factum::projection::postgres::{self, PostgresProjection, PostgresReadModel};
use factum::projection::sqlite::{SqliteProjection, SqliteReadModel};
use factum::projection::{ApplyError, Envelope};
use factum::snapshot::PostgresSnapshotStore;
use factum::{
    Aggregate, DomainEvent, NoSnapshots, ProjectionRunner, ReadModelStore, Repository,
    RunnerOptions, Snapshot, SnapshotStore, StreamSnapshotStore,
};
use factum_core::{
    Bytes, ContentType, EventData, EventStore, ExpectedRevision, Position, ReadAll, StreamName,
};
use factum_engine::{Durability, Engine};
use factum_postgres::{PostgresConfig, PostgresStore};
use serde::{Deserialize, Serialize};

use crate::error::BenchError;
use crate::util::{open_engine, rate, Latencies};
use crate::{Ctx, Report, Workload};

/// Events in the loaded aggregate: snapshots at 99, 199, …, 9,999 and a
/// tail of 50 events after the last one (the mean tail under "every 100").
const AGGREGATE_EVENTS: u64 = 10_050;
const SNAPSHOT_EVERY: u64 = 100;

fn failure(e: impl std::fmt::Display) -> BenchError {
    BenchError::failure(e.to_string())
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "type", content = "data")]
enum CounterEvent {
    #[serde(rename = "Added")]
    Added { n: u64 },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> &'static str {
        "Added"
    }
}

#[derive(Serialize, Deserialize, Default, Debug)]
struct Counter {
    total: u64,
    count: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Counter {
    const CATEGORY: &'static str = "counter";
    type Command = ();
    type Event = CounterEvent;
    type Error = Never;
    fn apply(&mut self, event: &CounterEvent) {
        let CounterEvent::Added { n } = event;
        self.total += n;
        self.count += 1;
    }
    fn handle(&self, _: &()) -> Result<Vec<CounterEvent>, Never> {
        Ok(vec![])
    }
}

/// Appends the counter's `events` events to `stream` in appends of 100 and
/// returns a snapshot of the state after each full hundred (revisions 99,
/// 199, …), to be saved in the snapshot stores under test.
async fn fill_counter<S: EventStore>(
    store: &S,
    stream: &StreamName,
    events: u64,
) -> Result<Vec<Snapshot>, BenchError> {
    let mut snapshots = Vec::new();
    let mut written = 0u64;
    let mut counter = Counter::default();
    while written < events {
        let n = SNAPSHOT_EVERY.min(events - written);
        let batch = (0..n)
            .map(|i| {
                let data = format!("{{\"n\":{}}}", written + i);
                EventData::new("Added", ContentType::Json, data)
            })
            .collect();
        let appended = store
            .append(stream.clone(), ExpectedRevision::Any, batch)
            .await?;
        for i in 0..n {
            counter.total += written + i;
            counter.count += 1;
        }
        written += n;
        if n == SNAPSHOT_EVERY {
            let state = serde_json::to_vec(&counter).map_err(failure)?;
            snapshots.push(Snapshot {
                revision: appended.revision,
                schema_version: Counter::SNAPSHOT_VERSION,
                last_event_at: factum_core::Timestamp::now(),
                state: Bytes::from(state),
                taken_at: None,
            });
        }
    }
    Ok(snapshots)
}

/// `n` timed loads of counter `1`.
async fn time_loads<S: EventStore, P: SnapshotStore>(
    repo: &Repository<S, Counter, P>,
    n: usize,
) -> Result<(Latencies, Duration), BenchError> {
    let mut lat = Latencies::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        repo.load("1").await.map_err(failure)?;
        lat.push(t.elapsed());
    }
    Ok((lat, started.elapsed()))
}

/// A warm-up load through each repository; all must give the same state.
async fn check_loads_agree<S: EventStore, P: SnapshotStore, Q: SnapshotStore>(
    snapshotted: &Repository<S, Counter, P>,
    replayed: &Repository<S, Counter, Q>,
    events: u64,
) -> Result<u64, BenchError> {
    let a = snapshotted.load("1").await.map_err(failure)?;
    let b = replayed.load("1").await.map_err(failure)?;
    if a.state.total != b.state.total || b.state.count != events || a.snapshot_revision.is_none() {
        return Err(failure("snapshot and replay loads disagree"));
    }
    Ok(a.events_replayed)
}

fn p50_p99_note(what: &str, lat: &mut Latencies) -> String {
    let (p50, p99) = lat.p50_p99_us();
    format!(
        "{what}: p50 {} µs, p99 {} µs over {} loads",
        p50.map_or("-".into(), |v| format!("{v:.0}")),
        p99.map_or("-".into(), |v| format!("{v:.0}")),
        lat.len()
    )
}

/// `aggregate-load`: p50/p99 of `Repository::load` with snapshots every 100
/// events; the baseline is the same load replaying all 10,050 events.
pub fn aggregate_load(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let dir = ctx.dir(Workload::AggregateLoad.name())?;
    let engine = std::sync::Arc::new(open_engine(&dir, Durability::None)?);
    let events = ctx.cap(AGGREGATE_EVENTS);
    let stream = Counter::stream_name("1")?;
    let snapshots = StreamSnapshotStore::new(engine.clone());
    ctx.rt.block_on(async {
        for s in fill_counter(&engine, &stream, events).await? {
            snapshots.save(&stream, s).await?;
        }
        Ok::<_, BenchError>(())
    })?;
    let with = Repository::<_, Counter>::new(engine.clone());
    let without = Repository::<_, Counter>::new(engine.clone()).with_snapshot_store(NoSnapshots);
    let loads = if ctx.quick { 2_000 } else { 20_000 };
    let replays = if ctx.quick { 20 } else { 100 };
    let (mut lat, elapsed, replayed) = ctx.rt.block_on(async {
        let replayed = check_loads_agree(&with, &without, events).await?;
        let (lat, elapsed) = time_loads(&with, loads).await?;
        Ok::<_, BenchError>((lat, elapsed, replayed))
    })?;
    let (mut base_lat, base_elapsed) = ctx.rt.block_on(time_loads(&without, replays))?;
    engine.close()?;
    let (p50, p99) = lat.p50_p99_us();
    let per_sec = rate(loads as u64, elapsed);
    let base_per_sec = rate(replays as u64, base_elapsed);
    let met = p99.map(|p| p <= 100.0);
    Ok(Report {
        events: loads as u64,
        seconds: elapsed.as_secs_f64(),
        events_per_sec: Some(per_sec),
        p50_us: p50,
        p99_us: p99,
        latency_of: "one Repository::load of the aggregate (snapshot read + tail replay)",
        baseline_events_per_sec: Some(base_per_sec),
        ratio: Some(per_sec / base_per_sec),
        target: "p99 <= 100 µs with snapshots".into(),
        target_met: met,
        durability: "none (load); reads measured".into(),
        notes: vec![
            format!("aggregate of {events} events, snapshot every {SNAPSHOT_EVERY} in $snapshot-counter-1; each load replays {replayed} events after the snapshot"),
            "events/s here = loads per second; baseline = loads per second replaying every event without snapshots".into(),
            p50_p99_note("baseline (no snapshot)", &mut base_lat),
        ],
        ..ctx.report(Workload::AggregateLoad)
    })
}

/// The PostgreSQL server of the PostgreSQL workloads.
fn bench_postgres_url() -> String {
    std::env::var("FACTUM_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `aggregate-load-postgres`: the same aggregate in a PostgreSQL event store
/// (`FACTUM_BENCH_POSTGRES_URL`; a schema of its own, dropped afterwards),
/// loaded with its snapshots in the `factum_snapshots` table
/// (`PostgresSnapshotStore`, measured) against snapshots in the
/// `$snapshot-counter-1` stream of the same store (the baseline).
/// Without a server the report says skipped.
pub fn aggregate_load_postgres(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let url = bench_postgres_url();
    let schema = format!("factum_bench_{}", std::process::id());
    let target = "measure both: snapshot table vs $snapshot- stream on PostgreSQL";
    let connected = ctx.rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(5),
            PostgresStore::connect(PostgresConfig::new(&url).schema(&schema)),
        )
        .await
    });
    let store = match connected {
        Ok(Ok(store)) => store.drop_schema_on_drop(),
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            return Ok(Report {
                target: target.into(),
                notes: vec![format!("skipped: no PostgreSQL at {url} ({why})")],
                ..ctx.report(Workload::AggregateLoadPostgres)
            });
        }
    };
    let events = ctx.cap(AGGREGATE_EVENTS);
    let stream = Counter::stream_name("1")?;
    let loads = if ctx.quick { 300 } else { 3_000 };
    let replays = if ctx.quick { 5 } else { 20 };
    let (mut table, mut in_store, mut replay, replayed) = ctx.rt.block_on(async {
        let table_store = PostgresSnapshotStore::connect(&url, &schema).await?;
        let stream_store = StreamSnapshotStore::new(store.clone());
        for s in fill_counter(&store, &stream, events).await? {
            table_store.save(&stream, s.clone()).await?;
            stream_store.save(&stream, s).await?;
        }
        let in_table =
            Repository::<_, Counter>::new(store.clone()).with_snapshot_store(table_store);
        let in_stream = Repository::<_, Counter>::new(store.clone());
        let without = Repository::<_, Counter>::new(store.clone()).with_snapshot_store(NoSnapshots);
        let replayed = check_loads_agree(&in_table, &without, events).await?;
        check_loads_agree(&in_stream, &without, events).await?;
        // Alternate blocks so drift in the server's state hits both alike.
        let (mut table, mut in_store) = (
            (Latencies::with_capacity(loads), Duration::ZERO),
            (Latencies::with_capacity(loads), Duration::ZERO),
        );
        for _ in 0..10 {
            let (lat, d) = time_loads(&in_table, loads / 10).await?;
            table.0.extend(lat);
            table.1 += d;
            let (lat, d) = time_loads(&in_stream, loads / 10).await?;
            in_store.0.extend(lat);
            in_store.1 += d;
        }
        let replay = time_loads(&without, replays).await?;
        Ok::<_, BenchError>((table, in_store, replay, replayed))
    })?;
    drop(store);
    let (p50, p99) = table.0.p50_p99_us();
    let n = table.0.len() as u64;
    let per_sec = rate(n, table.1);
    let base_per_sec = rate(in_store.0.len() as u64, in_store.1);
    Ok(Report {
        events: n,
        seconds: table.1.as_secs_f64(),
        events_per_sec: Some(per_sec),
        p50_us: p50,
        p99_us: p99,
        latency_of: "one Repository::load (snapshot from the factum_snapshots table + tail replay from PostgreSQL)",
        baseline_events_per_sec: Some(base_per_sec),
        ratio: Some(per_sec / base_per_sec),
        target: target.into(),
        target_met: None,
        durability: "PostgreSQL defaults (load); reads measured".into(),
        notes: vec![
            format!("aggregate of {events} events in a PostgreSQL store at {url}, snapshot every {SNAPSHOT_EVERY}; each load replays {replayed} events after the snapshot"),
            "events/s here = loads per second; baseline = loads per second with the snapshot in the $snapshot-counter-1 stream of the same store (StreamSnapshotStore); 10 alternating blocks".into(),
            p50_p99_note("baseline ($snapshot- stream)", &mut in_store.0),
            p50_p99_note("no snapshot (full replay)", &mut replay.0),
        ],
        ..ctx.report(Workload::AggregateLoadPostgres)
    })
}

/// Deposits of the projection workloads: `{"amount": n}` on `acct-<i>`.
#[derive(Deserialize)]
struct Deposit {
    amount: i64,
}

const ACCOUNTS: u64 = 10_000;

fn load_deposits(ctx: &Ctx, engine: &Engine, total: u64) -> Result<(), BenchError> {
    ctx.rt.block_on(async {
        let mut written = 0u64;
        while written < total {
            let n = 1000.min(total - written);
            let stream = StreamName::new(format!("acct-{}", (written / 1000) % ACCOUNTS))?;
            let batch = (0..n)
                .map(|i| {
                    let data = format!("{{\"amount\":{}}}", (written + i) % 100);
                    EventData::new("Deposited", ContentType::Json, data)
                })
                .collect();
            engine.append(stream, ExpectedRevision::Any, batch).await?;
            written += n;
        }
        Ok::<_, BenchError>(())
    })
}

/// The raw `$all` read of the whole store: the projections' baseline.
fn raw_read_rate(ctx: &Ctx, engine: &Engine) -> Result<f64, BenchError> {
    ctx.rt.block_on(async {
        let started = Instant::now();
        let mut next = 0u64;
        let mut n = 0u64;
        loop {
            let page = engine
                .read_all(
                    ReadAll::forwards()
                        .from_position(Position(next))
                        .max_count(10_000),
                )
                .await?;
            let Some(last) = page.last() else { break };
            next = last.position.0 + 1;
            n += page.len() as u64;
        }
        Ok::<_, BenchError>(rate(n, started.elapsed()))
    })
}

fn account_of(e: &Envelope) -> Option<&str> {
    e.stream().as_str().strip_prefix("acct-")
}

#[derive(Clone)]
struct SqliteBalances;

impl SqliteProjection for SqliteBalances {
    fn name(&self) -> &str {
        "bench_balances"
    }
    fn schema(&self) -> &str {
        "CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, balance INTEGER NOT NULL);"
    }
    fn apply(&self, tx: &rusqlite::Transaction<'_>, e: &Envelope) -> Result<(), ApplyError> {
        let Some(id) = account_of(e) else {
            return Ok(());
        };
        let d: Deposit = e.json()?;
        tx.prepare_cached(
            "INSERT INTO balances VALUES (?1, ?2)
             ON CONFLICT (account) DO UPDATE SET balance = balance + excluded.balance",
        )?
        .execute(rusqlite::params![id, d.amount])?;
        Ok(())
    }
}

#[derive(Clone)]
struct PgBalances;

impl PostgresProjection for PgBalances {
    fn name(&self) -> &str {
        "bench_balances"
    }
    fn schema(&self) -> &str {
        "CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, balance BIGINT NOT NULL);"
    }
    async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        e: &Envelope,
    ) -> Result<(), ApplyError> {
        let Some(id) = account_of(e) else {
            return Ok(());
        };
        let d: Deposit = e.json()?;
        tx.execute(
            "INSERT INTO balances VALUES ($1, $2)
             ON CONFLICT (account) DO UPDATE SET balance = balances.balance + excluded.balance",
            &[&id, &d.amount],
        )
        .await?;
        Ok(())
    }
    async fn apply_batch(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        events: &[Envelope],
    ) -> Result<(), ApplyError> {
        let mut sums: BTreeMap<&str, i64> = BTreeMap::new();
        for e in events {
            if let Some(id) = account_of(e) {
                *sums.entry(id).or_default() += e.json::<Deposit>()?.amount;
            }
        }
        let (ids, amounts): (Vec<&str>, Vec<i64>) = sums.into_iter().unzip();
        tx.execute(
            "INSERT INTO balances SELECT * FROM unnest($1::text[], $2::bigint[])
             ON CONFLICT (account) DO UPDATE SET balance = balances.balance + excluded.balance",
            &[&ids, &amounts],
        )
        .await?;
        Ok(())
    }
}

/// Runs a projection to the head, then times a rebuild of it.
fn time_rebuild<M: ReadModelStore>(
    ctx: &Ctx,
    engine: &std::sync::Arc<Engine>,
    model: M,
) -> Result<(Duration, u64, usize), BenchError> {
    ctx.rt.block_on(async {
        let head = engine
            .head_position()
            .await?
            .ok_or_else(|| failure("empty store"))?;
        let handle = ProjectionRunner::start(engine.clone(), model, RunnerOptions::default())
            .await
            .map_err(failure)?;
        handle
            .wait_for(head, Duration::from_secs(600))
            .await
            .map_err(failure)?;
        let mut reports = 0usize;
        let started = Instant::now();
        handle.rebuild(|_| reports += 1).await.map_err(failure)?;
        let elapsed = started.elapsed();
        let applied = handle.status().map_or(0, |s| s.events_applied);
        handle.stop().await;
        Ok::<_, BenchError>((elapsed, applied, reports))
    })
}

fn projection_report(
    ctx: &Ctx,
    workload: Workload,
    target: f64,
    elapsed: Duration,
    applied: u64,
    baseline: f64,
    mut notes: Vec<String>,
) -> Report {
    let per_sec = rate(applied, elapsed);
    notes.push("baseline = raw $all read of the same events (pages of 10,000)".into());
    notes.push("each event: JSON decode + upsert of the account's balance; checkpoint in the batch's transaction (batches of 1,000)".into());
    Report {
        events: applied,
        seconds: elapsed.as_secs_f64(),
        events_per_sec: Some(per_sec),
        latency_of: "-",
        baseline_events_per_sec: Some(baseline),
        ratio: Some(per_sec / baseline),
        target: format!("rebuild >= {}k events/s", target / 1000.0),
        target_met: Some(per_sec >= target),
        durability: "none (load); read model: see notes".into(),
        notes,
        ..ctx.report(workload)
    }
}

fn projection_events(ctx: &Ctx) -> u64 {
    ctx.cap(if ctx.quick { 200_000 } else { 1_000_000 })
}

/// `projection-sqlite`: rebuild throughput of a balances read model in SQLite.
pub fn projection_sqlite(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let dir = ctx.dir(Workload::ProjectionSqlite.name())?;
    let engine = std::sync::Arc::new(open_engine(&dir.join("store"), Durability::None)?);
    let total = projection_events(ctx);
    load_deposits(ctx, &engine, total)?;
    let baseline = raw_read_rate(ctx, &engine)?;
    let model = SqliteReadModel::new(dir.join("read-models"), SqliteBalances).map_err(failure)?;
    let (elapsed, applied, reports) = time_rebuild(ctx, &engine, model)?;
    engine.close()?;
    Ok(projection_report(
        ctx,
        Workload::ProjectionSqlite,
        200_000.0,
        elapsed,
        applied,
        baseline,
        vec![
            format!("{total} events over {ACCOUNTS} accounts; {reports} progress reports"),
            "SQLite in WAL mode, synchronous=NORMAL".into(),
        ],
    ))
}

/// `projection-postgres`: the same into PostgreSQL (`FACTUM_BENCH_POSTGRES_URL`,
/// default `postgres://postgres@127.0.0.1:5432/postgres`; a database of its
/// own is created and dropped). Without a server the report says skipped.
pub fn projection_postgres(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let base = bench_postgres_url();
    let admin = ctx.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), postgres::connect(&base)).await
    });
    let admin = match admin {
        Ok(Ok(c)) => c,
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            return Ok(Report {
                target: "rebuild >= 50k events/s".into(),
                notes: vec![format!("skipped: no PostgreSQL at {base} ({why})")],
                ..ctx.report(Workload::ProjectionPostgres)
            });
        }
    };
    let db = format!("factum_bench_{}", std::process::id());
    let url = match base.rsplit_once('/') {
        Some((prefix, _)) => format!("{prefix}/{db}"),
        None => return Err(failure(format!("cannot derive a database URL from {base}"))),
    };
    ctx.rt
        .block_on(async {
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
                .await?;
            admin.batch_execute(&format!("CREATE DATABASE {db}")).await
        })
        .map_err(|e| {
            failure(
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
            )
        })?;
    let dir = ctx.dir(Workload::ProjectionPostgres.name())?;
    let engine = std::sync::Arc::new(open_engine(&dir.join("store"), Durability::None)?);
    let total = projection_events(ctx);
    let result = (|| {
        load_deposits(ctx, &engine, total)?;
        let baseline = raw_read_rate(ctx, &engine)?;
        let model = PostgresReadModel::new(&url, PgBalances).map_err(failure)?;
        let (elapsed, applied, reports) = time_rebuild(ctx, &engine, model)?;
        Ok::<_, BenchError>(projection_report(
            ctx,
            Workload::ProjectionPostgres,
            50_000.0,
            elapsed,
            applied,
            baseline,
            vec![
                format!("{total} events over {ACCOUNTS} accounts; {reports} progress reports"),
                format!("PostgreSQL at {base}; apply_batch: one unnest upsert per batch of 1,000"),
            ],
        ))
    })();
    engine.close()?;
    let _ = ctx
        .rt
        .block_on(admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")));
    result
}

//! PostgreSQL workloads: the `factum-postgres` backend measured against
//! the baseline users would otherwise pick, Message DB
//! (`@eventide/message-db` from npm, installed into a scratch database of
//! the same server and called through `write_message`), and against the
//! embedded engine, all in the same run.
//!
//! `FACTUM_BENCH_POSTGRES_URL` names the server (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Message DB's SQL is
//! fetched with `npm pack` into the bench directory; without npm the
//! baseline is reported as missing, never invented.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_core::{
    EventData, EventStore, ExpectedRevision, Position, ReadAll, StreamName, Subscribe,
    SubscriptionStart,
};
use factum_engine::Durability;
use factum_postgres::{PostgresConfig, PostgresStore};

use crate::error::BenchError;
use crate::util::{open_engine, rate, Latencies};
use crate::{Ctx, Report, Workload};

const BATCH: usize = 1000;
const CLIENTS: usize = 64;

fn base_url() -> String {
    std::env::var("FACTUM_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn json_payload() -> serde_json::Value {
    serde_json::json!({ "payload": "x".repeat(240) })
}

fn event() -> EventData {
    EventData::json("Loaded", &json_payload()).expect("serializable")
}

fn fail(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::failure(format!("{what}: {e}"))
}

async fn pg_store(schema: &str) -> Result<PostgresStore, BenchError> {
    let config = PostgresConfig::new(base_url()).schema(schema);
    let store = tokio::time::timeout(Duration::from_secs(10), PostgresStore::connect(config))
        .await
        .map_err(|_| fail("PostgreSQL", "connect timed out"))?
        .map_err(|e| fail("PostgreSQL", e))?;
    Ok(store.drop_schema_on_drop())
}

/// Message DB in a scratch database `factum_bench_mdb`.
struct MessageDb {
    url: String,
}

fn install_sql_files(dir: &Path) -> Vec<PathBuf> {
    let db = dir.join("package/database");
    let mut files = vec![
        db.join("roles/message-store.sql"),
        db.join("schema/message-store.sql"),
        db.join("extensions/pgcrypto.sql"),
        db.join("tables/messages.sql"),
        db.join("types/message.sql"),
    ];
    for f in [
        "message-store-version",
        "hash-64",
        "acquire-lock",
        "category",
        "is-category",
        "id",
        "cardinal-id",
        "stream-version",
        "write-message",
        "get-stream-messages",
        "get-category-messages",
        "get-last-stream-message",
    ] {
        files.push(db.join(format!("functions/{f}.sql")));
    }
    for f in ["messages-id", "messages-stream", "messages-category"] {
        files.push(db.join(format!("indexes/{f}.sql")));
    }
    files
}

/// A PostgreSQL error with the server's message (its `Display` says only "db error").
fn pg_msg(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.severity(), d.message()),
        None => e.to_string(),
    }
}

impl MessageDb {
    /// Fetches Message DB from npm (once per bench directory) and installs it
    /// into a fresh scratch database.
    async fn install(root: &Path) -> Result<MessageDb, String> {
        let dir = root.join("message-db");
        if !dir.join("package/database").exists() {
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let out = std::process::Command::new("npm")
                .args(["pack", "@eventide/message-db@1", "--silent"])
                .current_dir(&dir)
                .output()
                .map_err(|e| format!("npm is not available ({e})"))?;
            if !out.status.success() {
                return Err(format!(
                    "npm pack failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let tgz = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let ok = std::process::Command::new("tar")
                .args(["xzf", &tgz])
                .current_dir(&dir)
                .status();
            if !ok.map(|s| s.success()).unwrap_or(false) {
                return Err("could not unpack the Message DB package".into());
            }
        }
        let base = base_url();
        let (admin, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        admin
            .batch_execute("DROP DATABASE IF EXISTS factum_bench_mdb WITH (FORCE)")
            .await
            .map_err(pg_msg)?;
        admin
            .batch_execute("CREATE DATABASE factum_bench_mdb")
            .await
            .map_err(pg_msg)?;
        let url = match base.rfind('/') {
            Some(i) => format!("{}/factum_bench_mdb", &base[..i]),
            None => return Err("cannot derive a database URL".into()),
        };
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        client
            .batch_execute("SET search_path TO message_store, public")
            .await
            .map_err(pg_msg)?;
        for f in install_sql_files(&dir) {
            let sql = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| format!("{}: {}", f.display(), pg_msg(e)))?;
        }
        Ok(MessageDb { url })
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, BenchError> {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .map_err(|e| fail("Message DB", e))?;
        tokio::spawn(conn);
        client
            .batch_execute("SET search_path TO message_store, public")
            .await
            .map_err(|e| fail("Message DB", e))?;
        Ok(client)
    }
}

const WRITE: &str = "SELECT message_store.write_message($1::varchar, $2::varchar, 'Loaded', $3::text::jsonb, NULL, NULL)";

/// One timed loop: `op` until `secs` pass; returns (operations, elapsed, latencies).
async fn timed<F, Fut>(secs: Duration, mut op: F) -> Result<(u64, Duration, Latencies), BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BenchError>>,
{
    let mut lat = Latencies::default();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < secs {
        let t = Instant::now();
        op().await?;
        lat.push(t.elapsed());
        n += 1;
    }
    Ok((n, started.elapsed(), lat))
}

/// Checks that `$all` of a store holds exactly `expected` events, in
/// strictly increasing positions: the "zero skipped events" part of the
/// target. (Positions are dense as written; a scavenge would leave gaps,
/// ADR 33, so density is not what this checks.)
async fn check_all_present(store: &impl EventStore, expected: u64) -> Result<(), BenchError> {
    let (mut from, mut count, mut last) = (0u64, 0u64, 0u64);
    loop {
        let page = store
            .read_all(
                ReadAll::forwards()
                    .from_position(Position(from))
                    .max_count(10_000),
            )
            .await
            .map_err(|e| fail("read $all", e))?;
        for e in &page {
            if count > 0 && e.position.0 <= last {
                return Err(fail(
                    "PostgreSQL $all",
                    format!("position {} follows {last}", e.position),
                ));
            }
            last = e.position.0;
            count += 1;
        }
        let Some(l) = page.last() else { break };
        from = l.position.0 + 1;
        if page.len() < 10_000 {
            break;
        }
    }
    if count != expected {
        return Err(fail(
            "PostgreSQL $all",
            format!("{count} events, {expected} acknowledged"),
        ));
    }
    Ok(())
}

/// Which append shape a workload measures.
#[derive(Clone, Copy)]
enum Shape {
    Single,
    Concurrent,
    Batch,
}

fn shape_of(w: Workload) -> Shape {
    match w {
        Workload::PgAppendConcurrent => Shape::Concurrent,
        Workload::PgAppendBatch => Shape::Batch,
        _ => Shape::Single,
    }
}

/// Factum and Message DB take turns in slices this long, so both meet the
/// same disk: the flush time of this machine's disk swings by several times
/// within seconds, which one block each would charge to whoever ran then.
const SLICES: u32 = 10;

/// (events, elapsed, latencies) summed over slices.
#[derive(Default)]
struct Tally(u64, Duration, Latencies);

impl Tally {
    fn add(&mut self, (n, e, l): (u64, Duration, Latencies)) {
        self.0 += n;
        self.1 += e;
        self.2.extend(l);
    }
}

/// `pg-append-seq`, `pg-append-concurrent`, `pg-append-batch`.
pub fn append(ctx: &mut Ctx, workload: Workload) -> Result<Report, BenchError> {
    let shape = shape_of(workload);
    let secs = ctx.secs(2.0, 5.0);
    let slice = secs / SLICES;
    let engine_dir = ctx.dir(workload.name())?;
    let root = ctx.root.clone();
    let (pg, engine, mdb, mdb_note) = ctx.rt.block_on(async {
        let schema = format!("factum_bench_{}", factum_core::Uuid::new_v4().simple());
        let store = pg_store(&schema).await?;
        let (mdb, note) = match MessageDb::install(&root).await {
            Ok(m) => (Some(MdbClients::connect(&m, shape).await?), None),
            Err(e) => (None, Some(e)),
        };
        let (mut pg, mut base) = (Tally::default(), Tally::default());
        for _ in 0..SLICES {
            pg.add(run_factum(&store, shape, slice).await?);
            if let Some(m) = &mdb {
                base.add(run_message_db(m, shape, slice).await?);
            }
        }
        check_all_present(&store, pg.0).await?;
        let engine = open_engine(&engine_dir, Durability::Always)?;
        let eng = run_factum(&engine, shape, secs).await?;
        engine.close().map_err(|e| fail("engine", e))?;
        Ok::<_, BenchError>((pg, eng, mdb.map(|_| base), note))
    })?;
    let Tally(n, elapsed, mut lat) = pg;
    let eps = rate(n, elapsed);
    let mut r = ctx.report(workload);
    r.events = n;
    r.seconds = elapsed.as_secs_f64();
    r.events_per_sec = Some(eps);
    (r.p50_us, r.p99_us) = lat.p50_p99_us();
    r.latency_of = match shape {
        Shape::Batch => "one append of 1,000 events until committed",
        _ => "one append (1 event) until committed",
    };
    let factor = if matches!(shape, Shape::Batch) {
        3.0
    } else {
        1.0
    };
    r.target =
        format!("≥{factor}× Message DB's throughput for the same events; zero skipped events");
    if let Some(Tally(mn, me, _)) = mdb {
        let base = rate(mn, me);
        r.baseline_events_per_sec = Some(base);
        r.ratio = Some(eps / base);
        r.target_met = Some(eps >= factor * base);
        r.notes.push(format!(
            "Factum and Message DB took turns in {SLICES} slices of {} ms each",
            slice.as_millis()
        ));
    } else {
        r.notes.push(format!(
            "Message DB baseline missing: {}",
            mdb_note.unwrap_or_default()
        ));
    }
    let (en, ee, _) = engine;
    r.notes.push(format!(
        "embedded engine, same workload and run: {:.0} events/s (PostgreSQL / engine = {:.3})",
        rate(en, ee),
        eps / rate(en, ee)
    ));
    r.notes.push(format!(
        "{} clients; $all checked afterwards: {n} acknowledged events in increasing positions, none skipped",
        if matches!(shape, Shape::Concurrent) { CLIENTS } else { 1 }
    ));
    r.durability = "always (PostgreSQL synchronous_commit as configured on the server)".into();
    Ok(r)
}

/// Runs an append shape against any store: (events, elapsed, latencies).
async fn run_factum<S: EventStore + Clone>(
    store: &S,
    shape: Shape,
    secs: Duration,
) -> Result<(u64, Duration, Latencies), BenchError> {
    match shape {
        Shape::Single => {
            let s = StreamName::new("bench-1").expect("valid");
            timed(secs, || async {
                store
                    .append(s.clone(), ExpectedRevision::Any, vec![event()])
                    .await
                    .map(|_| ())
                    .map_err(|e| fail("append", e))
            })
            .await
        }
        Shape::Batch => {
            let s = StreamName::new("bench-1").expect("valid");
            let (n, e, l) = timed(secs, || async {
                let events = (0..BATCH).map(|_| event()).collect();
                store
                    .append(s.clone(), ExpectedRevision::Any, events)
                    .await
                    .map(|_| ())
                    .map_err(|e| fail("append", e))
            })
            .await?;
            Ok((n * BATCH as u64, e, l))
        }
        Shape::Concurrent => {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for c in 0..CLIENTS {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    let s = StreamName::new(format!("bench-{c}")).expect("valid");
                    timed(secs, || async {
                        store
                            .append(s.clone(), ExpectedRevision::Any, vec![event()])
                            .await
                            .map(|_| ())
                            .map_err(|e| fail("append", e))
                    })
                    .await
                }));
            }
            let mut total = 0;
            let mut lat = Latencies::default();
            for t in tasks {
                let (n, _, l) = t.await.map_err(|e| fail("task", e))??;
                total += n;
                lat.extend(l);
            }
            Ok((total, started.elapsed(), lat))
        }
    }
}

/// Message DB connections, opened before any timing: one, or one per
/// client for the concurrent shape.
struct MdbClients {
    clients: Vec<Arc<tokio_postgres::Client>>,
    data: Arc<String>,
}

impl MdbClients {
    async fn connect(mdb: &MessageDb, shape: Shape) -> Result<MdbClients, BenchError> {
        let n = if matches!(shape, Shape::Concurrent) {
            CLIENTS
        } else {
            1
        };
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(Arc::new(mdb.connect().await?));
        }
        Ok(MdbClients {
            clients,
            data: Arc::new(json_payload().to_string()),
        })
    }
}

async fn run_message_db(
    mdb: &MdbClients,
    shape: Shape,
    secs: Duration,
) -> Result<(u64, Duration, Latencies), BenchError> {
    let data = mdb.data.clone();
    match shape {
        Shape::Single => {
            let client = &mdb.clients[0];
            timed(secs, || async {
                let id = factum_core::Uuid::new_v4().to_string();
                client
                    .execute(WRITE, &[&id, &"bench-1", &*data])
                    .await
                    .map(|_| ())
                    .map_err(|e| fail("Message DB", e))
            })
            .await
        }
        Shape::Batch => {
            let client = &mdb.clients[0];
            let mut lat = Latencies::default();
            let started = Instant::now();
            let mut n = 0u64;
            let err = |e| fail("Message DB", e);
            while started.elapsed() < secs {
                let t = Instant::now();
                client.batch_execute("BEGIN").await.map_err(err)?;
                let ids: Vec<String> = (0..BATCH)
                    .map(|_| factum_core::Uuid::new_v4().to_string())
                    .collect();
                // Pipelined: all 1,000 calls in flight on the connection at once.
                let stream = "bench-1";
                let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 3]> = ids
                    .iter()
                    .map(|id| [id as _, &stream as _, &*data as _])
                    .collect();
                let calls = params.iter().map(|p| client.execute(WRITE, p));
                for r in futures_util::future::join_all(calls).await {
                    if let Err(e) = r {
                        let _ = client.batch_execute("ROLLBACK").await;
                        return Err(err(e));
                    }
                }
                client.batch_execute("COMMIT").await.map_err(err)?;
                lat.push(t.elapsed());
                n += BATCH as u64;
            }
            Ok((n, started.elapsed(), lat))
        }
        Shape::Concurrent => {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for (c, client) in mdb.clients.iter().enumerate() {
                let (client, data) = (client.clone(), data.clone());
                tasks.push(tokio::spawn(async move {
                    let stream = format!("bench-{c}");
                    timed(secs, || async {
                        let id = factum_core::Uuid::new_v4().to_string();
                        client
                            .execute(WRITE, &[&id, &stream, &*data])
                            .await
                            .map(|_| ())
                            .map_err(|e| fail("Message DB", e))
                    })
                    .await
                }));
            }
            let mut total = 0;
            let mut lat = Latencies::default();
            for t in tasks {
                let (n, _, l) = t.await.map_err(|e| fail("task", e))??;
                total += n;
                lat.extend(l);
            }
            Ok((total, started.elapsed(), lat))
        }
    }
}

/// `pg-read-all`: `$all` forwards in pages of 10,000 on PostgreSQL vs the engine.
pub fn read_all(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let total = ctx.cap(if ctx.quick { 100_000 } else { 1_000_000 });
    let dir = ctx.dir(Workload::PgReadAll.name())?;
    let ((n, elapsed, mut lat), engine_rate) = ctx.rt.block_on(async {
        let schema = format!("factum_bench_{}", factum_core::Uuid::new_v4().simple());
        let store = pg_store(&schema).await?;
        let engine = open_engine(&dir, Durability::None)?;
        load(&store, total).await?;
        load(&engine, total).await?;
        let pg = read_pages(&store).await?;
        let eng = read_pages(&engine).await?;
        engine.close().map_err(|e| fail("engine", e))?;
        Ok::<_, BenchError>((pg, rate(eng.0, eng.1)))
    })?;
    let eps = rate(n, elapsed);
    let mut r = ctx.report(Workload::PgReadAll);
    r.events = n;
    r.seconds = elapsed.as_secs_f64();
    r.events_per_sec = Some(eps);
    (r.p50_us, r.p99_us) = lat.p50_p99_us();
    r.latency_of = "one read_all page of 10,000 events";
    r.baseline_events_per_sec = Some(engine_rate);
    r.ratio = Some(eps / engine_rate);
    r.target = "none set: PostgreSQL / embedded engine, same events".into();
    r.durability = "load: PostgreSQL always, engine none (the read is unaffected)".into();
    Ok(r)
}

async fn load<S: EventStore>(store: &S, total: u64) -> Result<(), BenchError> {
    let mut done = 0u64;
    let mut i = 0u64;
    while done < total {
        let n = (BATCH as u64).min(total - done);
        let s = StreamName::new(format!("load-{}", i % 100)).expect("valid");
        store
            .append(s, ExpectedRevision::Any, (0..n).map(|_| event()).collect())
            .await
            .map_err(|e| fail("load", e))?;
        done += n;
        i += 1;
    }
    Ok(())
}

async fn read_pages<S: EventStore>(store: &S) -> Result<(u64, Duration, Latencies), BenchError> {
    let mut lat = Latencies::default();
    let started = Instant::now();
    let mut next = 0u64;
    loop {
        let t = Instant::now();
        let page = store
            .read_all(
                ReadAll::forwards()
                    .from_position(Position(next))
                    .max_count(10_000),
            )
            .await
            .map_err(|e| fail("read", e))?;
        lat.push(t.elapsed());
        match page.last() {
            Some(l) => next = l.position.0 + 1,
            None => break,
        }
        if page.len() < 10_000 {
            break;
        }
    }
    Ok((next, started.elapsed(), lat))
}

/// `pg-subscribe-latency`: append start → live `$all` delivery at 1,000
/// appends/s on PostgreSQL vs the engine.
pub fn subscribe_latency(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let secs = ctx.secs(2.0, 5.0);
    let dir = ctx.dir(Workload::PgSubscribeLatency.name())?;
    let (pg, engine) = ctx.rt.block_on(async {
        let schema = format!("factum_bench_{}", factum_core::Uuid::new_v4().simple());
        let store = pg_store(&schema).await?;
        let pg = paced_latency(&store, secs).await?;
        let engine = open_engine(&dir, Durability::Always)?;
        let eng = paced_latency(&engine, secs).await?;
        engine.close().map_err(|e| fail("engine", e))?;
        Ok::<_, BenchError>((pg, eng))
    })?;
    let (n, elapsed, mut lat) = pg;
    let (_, _, mut elat) = engine;
    let mut r = ctx.report(Workload::PgSubscribeLatency);
    r.events = n;
    r.seconds = elapsed.as_secs_f64();
    r.events_per_sec = Some(rate(n, elapsed));
    (r.p50_us, r.p99_us) = lat.p50_p99_us();
    let (e50, e99) = elat.p50_p99_us();
    r.latency_of = "append start → delivery to a live $all subscriber";
    r.target = "none set: compared with the embedded engine".into();
    r.notes.push(format!(
        "embedded engine, same pacing: p50 {:.0} µs, p99 {:.0} µs",
        e50.unwrap_or(f64::NAN),
        e99.unwrap_or(f64::NAN)
    ));
    Ok(r)
}

async fn paced_latency<S: EventStore + Clone>(
    store: &S,
    secs: Duration,
) -> Result<(u64, Duration, Latencies), BenchError> {
    let mut sub = store
        .subscribe(Subscribe::all(SubscriptionStart::End, None))
        .await
        .map_err(|e| fail("subscribe", e))?;
    let sent: Arc<SendTimes> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The subscriber reads while the writer writes: live delivery.
    let reader = {
        let (sent, done) = (sent.clone(), done.clone());
        tokio::spawn(async move {
            let mut lat = Latencies::default();
            let mut last_progress = Instant::now();
            loop {
                if done.load(std::sync::atomic::Ordering::Acquire) && sent.is_empty() {
                    return Ok(lat);
                }
                // Short waits, so the end of the run is noticed even when the
                // last event arrived before the writer said it was done.
                match tokio::time::timeout(Duration::from_millis(50), sub.next_event()).await {
                    Ok(Some(Ok(e))) => {
                        last_progress = Instant::now();
                        if let Some(t) = sent.take(&e.id) {
                            lat.push(t.elapsed());
                        }
                    }
                    Err(_) if last_progress.elapsed() < Duration::from_secs(10) => {}
                    _ => {
                        return Err(fail(
                            "subscription",
                            format!("stopped after {} deliveries", lat.len()),
                        ))
                    }
                }
            }
        })
    };
    let s = StreamName::new("paced-1").expect("valid");
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < secs {
        tick.tick().await;
        let ev = event();
        sent.insert(ev.id, Instant::now());
        store
            .append(s.clone(), ExpectedRevision::Any, vec![ev])
            .await
            .map_err(|e| fail("append", e))?;
        n += 1;
    }
    let elapsed = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Release);
    let lat = reader.await.map_err(|e| fail("task", e))??;
    Ok((n, elapsed, lat))
}

/// Send times by event id, shared by the pacing writer and the subscriber.
#[derive(Default)]
struct SendTimes(std::sync::Mutex<std::collections::HashMap<factum_core::Uuid, Instant>>);

impl SendTimes {
    fn insert(&self, id: factum_core::Uuid, t: Instant) {
        self.0.lock().expect("not poisoned").insert(id, t);
    }
    fn take(&self, id: &factum_core::Uuid) -> Option<Instant> {
        self.0.lock().expect("not poisoned").remove(id)
    }
    fn is_empty(&self) -> bool {
        self.0.lock().expect("not poisoned").is_empty()
    }
}

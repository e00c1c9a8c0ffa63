//! `reads-under-load`: appends at a fixed rate while 16 clients run `$all`
//! reads whose filter matches nothing (each scans the whole store), against
//! the same appends with no readers, in the same run (ADR 13).
//!
//! Everything goes through an in-process `factum serve` front end on
//! 127.0.0.1: the appends over one `factum-client` connection (each started
//! at its due time, so a slow one does not delay the next), each reader on
//! a connection of its own, and a `GET /health` every 10 ms on a kept-alive
//! HTTP/1.1 connection. The store is filled first with `--reads-store-events`
//! events (default 2,000,000; quick 200,000) in appends of 1,000. Phases: a
//! warm-up (not measured), unloaded appends, the same appends with the 16
//! readers running, and unloaded appends again once the readers are done
//! (the baseline is both unloaded phases, so a drift of the disk or the
//! machine during the run shows on both sides). Targets (issue 11): append p99 within 3× of the
//! unloaded p99 and `/health` p99 under 50 ms while the readers run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_core::{EventStore, ExpectedRevision, Filter, ReadAll, StreamName};
use factum_engine::Durability;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use factum_client::Client;
use factum_engine::Engine;

use crate::error::BenchError;
use crate::util::{event, open_engine, payload, rate, Latencies};
use crate::{Ctx, Report, Workload};

/// Appends per second, one 256-byte event each.
const RATE: u64 = 500;
/// Concurrent readers.
const READERS: usize = 16;
/// Events per append while filling the store.
const FILL_BATCH: u64 = 1000;
/// Between `/health` probes.
const HEALTH_EVERY: Duration = Duration::from_millis(10);
const EVENT_BYTES: usize = 256;

/// The engine served over gRPC (and HTTP) in this process, on a free local
/// port: the workload reads the engine's reader-pool counters while the
/// readers run, which a separate server process would not show.
struct Served {
    engine: Arc<Engine>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    addr: std::net::SocketAddr,
}

impl Served {
    async fn start(engine: Arc<Engine>) -> Result<Served, BenchError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let config = factum_server::ServerConfig::new(addr);
        let task = tokio::spawn(factum_server::serve(
            listener,
            engine.clone(),
            config,
            async {
                let _ = rx.await;
            },
        ));
        Ok(Served {
            engine,
            stop: Some(tx),
            task,
            addr,
        })
    }

    async fn client(&self) -> Result<Client, BenchError> {
        Ok(Client::connect(&format!("http://{}", self.addr)).await?)
    }

    async fn stop(mut self) -> Result<(), BenchError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = self.task.await;
        self.engine.close()?;
        Ok(())
    }
}

/// What one phase measured.
struct Phase {
    appends: Latencies,
    health: Latencies,
    elapsed: Duration,
}

/// `reads-under-load`.
pub fn reads_under_load(ctx: &mut Ctx, store_events: Option<u64>) -> Result<Report, BenchError> {
    let w = Workload::ReadsUnderLoad;
    let dir = ctx.dir(w.name())?;
    let store_events = ctx.cap(store_events.unwrap_or(if ctx.quick { 200_000 } else { 2_000_000 }));
    let phase_time = ctx.secs(2.0, 5.0);
    let phase_appends = ctx.cap((RATE as f64 * phase_time.as_secs_f64()) as u64);
    let warm_appends = if ctx.cap.is_some() { 0 } else { RATE / 2 };
    let engine = Arc::new(open_engine(&dir, Durability::Always)?);
    let data = payload(EVENT_BYTES);

    // The store: written straight to the engine.
    let fill_started = Instant::now();
    ctx.rt.block_on(async {
        let mut written = 0u64;
        while written < store_events {
            let n = FILL_BATCH.min(store_events - written);
            let stream = StreamName::new(format!("fill-{}", (written / FILL_BATCH) % 100))?;
            let batch = (0..n).map(|_| event(&data)).collect();
            engine.append(stream, ExpectedRevision::Any, batch).await?;
            written += n;
        }
        Ok::<_, BenchError>(())
    })?;
    let fill_secs = fill_started.elapsed().as_secs_f64();
    let log_mb = engine.log_bytes()? as f64 / 1e6;

    let outcome = ctx.rt.block_on(async {
        let served = Served::start(engine.clone()).await?;
        let writer = served.client().await?;
        let mut health = TcpStream::connect(served.addr).await?;
        health.set_nodelay(true)?;
        if warm_appends > 0 {
            paced(&writer, &mut health, warm_appends, 0).await?;
        }
        let unloaded = paced(&writer, &mut health, phase_appends, 1).await?;

        // The readers: each scans the whole store, again and again.
        let stop = Arc::new(AtomicBool::new(false));
        let scans = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let client = served.client().await?;
            let (stop, scans) = (stop.clone(), scans.clone());
            readers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let read = ReadAll::forwards().filter(Filter::stream_prefix(["nothing-"]));
                    let found = client.read_all(read).await?;
                    if !found.is_empty() {
                        return Err(BenchError::failure("a filter matching nothing matched"));
                    }
                    scans.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, BenchError>(())
            }));
        }
        // Until every reader's first read is with the engine.
        let waited = Instant::now();
        loop {
            let reads = engine.stats().reads;
            if reads.running + reads.queued >= READERS.min(reads.threads + reads.queue_capacity)
                || waited.elapsed() > Duration::from_secs(10)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let before = engine.stats().reads;
        let loaded = paced(&writer, &mut health, phase_appends, 2).await?;
        let during = engine.stats().reads;
        let completed = scans.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.await
                .map_err(|e| BenchError::failure(format!("a reader task failed: {e}")))??;
        }
        let mut unloaded = unloaded;
        let after = paced(&writer, &mut health, phase_appends, 3).await?;
        unloaded.appends.extend(after.appends);
        unloaded.health.extend(after.health);
        drop(writer);
        served.stop().await?;
        Ok::<_, BenchError>((unloaded, loaded, before, during, completed))
    });
    let (mut unloaded, mut loaded, before, during, completed) = outcome?;

    let (u50, u99) = unloaded.appends.p50_p99_us();
    let (l50, l99) = loaded.appends.p50_p99_us();
    let (_, uh99) = unloaded.health.p50_p99_us();
    let (lh50, lh99) = loaded.health.p50_p99_us();
    let ratio = l99.zip(u99).map(|(l, u)| l / u);
    let mut r = ctx.report(w);
    r.events = loaded.appends.len() as u64;
    r.seconds = loaded.elapsed.as_secs_f64();
    r.events_per_sec = Some(rate(r.events, loaded.elapsed));
    r.p50_us = l50;
    r.p99_us = l99;
    r.ratio = ratio;
    r.latency_of = "one durable append (start → acknowledged) over gRPC while 16 clients scan $all with a filter matching nothing";
    r.target = "append p99 ≤3× unloaded p99, /health p99 ≤50 ms under 16 readers".into();
    r.target_met = Some(ratio.is_some_and(|x| x <= 3.0) && lh99.is_some_and(|h| h <= 50_000.0));
    r.notes.push(format!(
        "baseline: the same appends with no readers, same run (before the readers start and after they stop): p50 {:.0} µs, p99 {:.0} µs; loaded p99 / unloaded p99 = {:.2}",
        u50.unwrap_or(0.0),
        u99.unwrap_or(0.0),
        ratio.unwrap_or(f64::NAN)
    ));
    r.notes.push(format!(
        "GET /health every {} ms: p50 {:.0} µs, p99 {:.0} µs under the readers ({} probes); p99 {:.0} µs without",
        HEALTH_EVERY.as_millis(),
        lh50.unwrap_or(0.0),
        lh99.unwrap_or(0.0),
        loaded.health.len(),
        uh99.unwrap_or(0.0)
    ));
    r.notes.push(format!(
        "store: {store_events} events of {EVENT_BYTES} B ({log_mb:.0} MB of log) filled in {fill_secs:.1} s; appends paced at {RATE}/s, one event each, {} per phase{}",
        phase_appends,
        if warm_appends > 0 { format!(", after {warm_appends} not measured") } else { String::new() }
    ));
    r.notes.push(format!(
        "readers: {READERS} factum-client connections, each reading $all forwards with a stream prefix matching nothing, again and again; {completed} whole scans completed in the loaded phase and before; engine reader pool: {} thread(s), {} read steps and {} queued+running reads during the phase",
        during.threads,
        during.steps - before.steps,
        during.running + during.queued,
    ));
    r.notes.push(
        "in-process factum-server on 127.0.0.1; client and server share this machine's cores"
            .into(),
    );
    Ok(r)
}

/// Starts `n` appends at [`RATE`] (each at its due time, on a task of its
/// own) while probing `/health` every [`HEALTH_EVERY`]; `tag` names the
/// phase in the event data.
async fn paced(
    writer: &factum_client::Client,
    health: &mut TcpStream,
    n: u64,
    tag: u8,
) -> Result<Phase, BenchError> {
    let data = payload(EVENT_BYTES);
    let stream = StreamName::new(format!("paced-{tag}"))?;
    let mut appends = tokio::task::JoinSet::new();
    let mut phase = Phase {
        appends: Latencies::with_capacity(n as usize),
        health: Latencies::with_capacity(1024),
        elapsed: Duration::ZERO,
    };
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next_health = started;
    let mut sent = 0u64;
    while sent < n {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * RATE as f64) as u64 + 1).min(n);
        while sent < due {
            let (writer, stream, data) = (writer.clone(), stream.clone(), data.clone());
            appends.spawn(async move {
                let t = Instant::now();
                writer
                    .append(stream, ExpectedRevision::Any, vec![event(&data)])
                    .await
                    .map(|_| t.elapsed())
            });
            sent += 1;
        }
        if Instant::now() >= next_health {
            let t = Instant::now();
            get_health(health).await?;
            phase.health.push(t.elapsed());
            next_health = t + HEALTH_EVERY;
        }
        while let Some(done) = appends.try_join_next() {
            phase.appends.push(joined(done)?);
        }
    }
    while let Some(done) = appends.join_next().await {
        phase.appends.push(joined(done)?);
    }
    phase.elapsed = started.elapsed();
    Ok(phase)
}

fn joined(
    done: Result<factum_core::Result<Duration>, tokio::task::JoinError>,
) -> Result<Duration, BenchError> {
    Ok(done.map_err(|e| BenchError::failure(format!("an append task failed: {e}")))??)
}

/// One `GET /health` on a kept-alive connection; its body is read whole.
async fn get_health(conn: &mut TcpStream) -> Result<(), BenchError> {
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(BenchError::failure(
                "the server closed the /health connection",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            return Err(BenchError::failure(format!(
                "/health answered {}",
                head.lines().next().unwrap_or("")
            )));
        }
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| BenchError::failure("/health answered without a content length"))?;
        if buf.len() >= end + 4 + len {
            return Ok(());
        }
    }
}

//! gRPC workloads: the same operations through `factum serve`'s gRPC front
//! end (in-process server on 127.0.0.1, `factum-client` over one HTTP/2
//! connection per client) and straight on the embedded engine, in the same
//! run. The ratio is gRPC / embedded. Client and server share this
//! machine's cores, as they would on one host.
//!
//! `grpc-append-seq` (1 writer, 1 event per append), `grpc-append-concurrent`
//! (256 writers over 8 connections, 1 event each; target ≥100,000 events/s),
//! `grpc-append-batch` (1,000 events per append), `grpc-read-all` (`$all` as
//! one streamed read; target ≥1M events/s), `grpc-subscribe-latency`
//! (append start → live delivery, one event at a time).

use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_client::Client;
use factum_core::{
    Bytes, EventStore, ExpectedRevision, ReadAll, StreamName, Subscribe, SubscriptionMessage,
    SubscriptionStart,
};
use factum_engine::{Durability, Engine};

use crate::error::BenchError;
use crate::util::{event, open_engine, payload, rate, Latencies};
use crate::{Ctx, Report, Workload};

const EVENT_BYTES: usize = 256;
/// Connections the concurrent writers share (official clients multiplex
/// many calls on one connection; a few connections use both cores).
const CONNECTIONS: usize = 8;

/// An engine served over gRPC on a free local port.
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

/// What one side of a comparison measured.
struct Side {
    events: u64,
    elapsed: Duration,
    lat: Latencies,
}

impl Side {
    fn eps(&self) -> f64 {
        rate(self.events, self.elapsed)
    }
}

/// `writers` tasks appending `per_append` events at a time for `time`
/// (or until `max` events), each task on `stores[i % stores.len()]`.
async fn appends<S: EventStore + Clone>(
    stores: &[S],
    writers: usize,
    per_append: usize,
    time: Duration,
    max: u64,
) -> Result<Side, BenchError> {
    let data = payload(EVENT_BYTES);
    let started = Instant::now();
    let deadline = started + time;
    let per_writer = (max / writers as u64).max(1);
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let store = stores[w % stores.len()].clone();
        let data: Bytes = data.clone();
        let stream = StreamName::new(format!("bench-{w}"))?;
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::with_capacity(1024);
            let mut n = 0u64;
            while n < per_writer && (n == 0 || Instant::now() < deadline) {
                let batch = (0..per_append).map(|_| event(&data)).collect();
                let t = Instant::now();
                store
                    .append(stream.clone(), ExpectedRevision::Any, batch)
                    .await?;
                lat.push(t.elapsed());
                n += per_append as u64;
            }
            Ok::<_, BenchError>((n, lat))
        }));
    }
    let mut side = Side {
        events: 0,
        elapsed: Duration::ZERO,
        lat: Latencies::with_capacity(1 << 14),
    };
    for t in tasks {
        let (n, lat) = t
            .await
            .map_err(|e| BenchError::failure(format!("writer task failed: {e}")))??;
        side.events += n;
        side.lat.extend(lat);
    }
    side.elapsed = started.elapsed();
    Ok(side)
}

fn compare(ctx: &Ctx, w: Workload, grpc: Side, embedded: Side, latency_of: &'static str) -> Report {
    let mut grpc = grpc;
    let mut embedded = embedded;
    let (p50, p99) = grpc.lat.p50_p99_us();
    let (e50, e99) = embedded.lat.p50_p99_us();
    let mut r = ctx.report(w);
    r.events = grpc.events;
    r.seconds = grpc.elapsed.as_secs_f64();
    r.events_per_sec = Some(grpc.eps());
    r.p50_us = p50;
    r.p99_us = p99;
    r.latency_of = latency_of;
    r.baseline_events_per_sec = Some(embedded.eps());
    r.ratio = Some(grpc.eps() / embedded.eps());
    r.notes.push(format!(
        "baseline: the embedded engine, same operations in the same run: {} events in {:.2} s, p50 {:.0} µs, p99 {:.0} µs",
        embedded.events,
        embedded.elapsed.as_secs_f64(),
        e50.unwrap_or(0.0),
        e99.unwrap_or(0.0)
    ));
    r.notes.push("gRPC: in-process factum-server on 127.0.0.1, factum-client; both share this machine's cores".into());
    r
}

/// An append workload against both sides; fresh stores for each.
fn append_workload(
    ctx: &mut Ctx,
    w: Workload,
    writers: usize,
    per_append: usize,
    latency_of: &'static str,
) -> Result<Report, BenchError> {
    let time = ctx.secs(1.5, 5.0);
    let max = ctx.cap(u64::MAX);
    let dir = ctx.dir(w.name())?;
    let embedded = {
        let engine = Arc::new(open_engine(&dir.join("embedded"), Durability::Always)?);
        let side = ctx.rt.block_on(appends(
            std::slice::from_ref(&engine),
            writers,
            per_append,
            time,
            max,
        ))?;
        engine.close()?;
        side
    };
    let engine = Arc::new(open_engine(&dir.join("grpc"), Durability::Always)?);
    let grpc = ctx.rt.block_on(async {
        let served = Served::start(engine).await?;
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS.min(writers) {
            clients.push(served.client().await?);
        }
        let side = appends(&clients, writers, per_append, time, max).await?;
        drop(clients);
        served.stop().await?;
        Ok::<_, BenchError>(side)
    })?;
    let mut r = compare(ctx, w, grpc, embedded, latency_of);
    if w == Workload::GrpcAppendConcurrent {
        r.target = "≥100,000 events/s".into();
        r.target_met = r.events_per_sec.map(|e| e >= 100_000.0);
    } else {
        r.target = "none: ratio to the embedded engine reported".into();
    }
    Ok(r)
}

/// `grpc-append-seq`.
pub fn append_seq(ctx: &mut Ctx) -> Result<Report, BenchError> {
    append_workload(
        ctx,
        Workload::GrpcAppendSeq,
        1,
        1,
        "one append (1 event) until acknowledged",
    )
}

/// `grpc-append-concurrent`.
pub fn append_concurrent(ctx: &mut Ctx) -> Result<Report, BenchError> {
    append_workload(
        ctx,
        Workload::GrpcAppendConcurrent,
        256,
        1,
        "one append (1 event) until acknowledged",
    )
}

/// `grpc-append-batch`.
pub fn append_batch(ctx: &mut Ctx) -> Result<Report, BenchError> {
    append_workload(
        ctx,
        Workload::GrpcAppendBatch,
        1,
        1000,
        "one append (1,000 events) until acknowledged",
    )
}

/// `grpc-read-all`: `$all` read forwards, embedded in pages of 10,000 and
/// over gRPC as one streamed read (the server pages internally), each event
/// dropped once counted on both sides.
pub fn read_all(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let w = Workload::GrpcReadAll;
    let dir = ctx.dir(w.name())?;
    let total = ctx.cap(if ctx.quick { 200_000 } else { 1_000_000 });
    let engine = Arc::new(open_engine(&dir, Durability::None)?);
    let data = payload(EVENT_BYTES);
    let (embedded, grpc) = ctx.rt.block_on(async {
        let stream = StreamName::new("load-1")?;
        let mut written = 0;
        while written < total {
            let n = (total - written).min(1000);
            let batch = (0..n).map(|_| event(&data)).collect();
            engine
                .append(stream.clone(), ExpectedRevision::Any, batch)
                .await?;
            written += n;
        }
        // The load's index flush would otherwise run in the background
        // during both measurements, taking a core from them.
        engine.flush_index()?;
        let started = Instant::now();
        let mut from = 0u64;
        let mut events = 0u64;
        loop {
            let page = engine
                .read_all(
                    ReadAll::forwards()
                        .from_position(factum_core::Position(from))
                        .max_count(10_000),
                )
                .await?;
            let Some(last) = page.last() else { break };
            from = last.position.0 + 1;
            events += page.len() as u64;
        }
        let embedded = Side {
            events,
            elapsed: started.elapsed(),
            lat: Latencies::with_capacity(0),
        };
        let served = Served::start(engine).await?;
        let client = served.client().await?;
        let started = Instant::now();
        let mut read = client
            .read_all_streaming(ReadAll::forwards().max_count(total))
            .await?;
        let mut events = 0u64;
        while let Some(e) = futures_util::StreamExt::next(&mut read).await {
            e?;
            events += 1;
        }
        let grpc = Side {
            events,
            elapsed: started.elapsed(),
            lat: Latencies::with_capacity(0),
        };
        drop(client);
        served.stop().await?;
        Ok::<_, BenchError>((embedded, grpc))
    })?;
    let mut r = compare(ctx, w, grpc, embedded, "none (throughput)");
    r.durability = "none (load only)".into();
    r.notes
        .push("the load's index is flushed before either side is measured".into());
    r.target = "≥1,000,000 events/s".into();
    r.target_met = r.events_per_sec.map(|e| e >= 1_000_000.0);
    Ok(r)
}

/// One append at a time; latency from the append's start to the live
/// subscription delivering it.
async fn delivery<S: EventStore>(store: &S, n: u64) -> Result<Side, BenchError> {
    let mut sub = store
        .subscribe(Subscribe::all(SubscriptionStart::End, None))
        .await?;
    let stream = StreamName::new("live-1")?;
    let data = payload(EVENT_BYTES);
    let mut lat = Latencies::with_capacity(n as usize);
    let started = Instant::now();
    for _ in 0..n {
        let e = event(&data);
        let id = e.id;
        let t = Instant::now();
        let append = store.append(stream.clone(), ExpectedRevision::Any, vec![e]);
        let deliver = async {
            loop {
                match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
                    Ok(Some(Ok(SubscriptionMessage::Event(ev)))) if ev.id == id => {
                        return Ok(t.elapsed())
                    }
                    Ok(Some(Ok(_))) => continue,
                    Ok(Some(Err(e))) => return Err(BenchError::from(e)),
                    _ => return Err(BenchError::failure("the subscription stopped delivering")),
                }
            }
        };
        let (appended, delivered) = tokio::join!(append, deliver);
        appended?;
        lat.push(delivered?);
    }
    Ok(Side {
        events: n,
        elapsed: started.elapsed(),
        lat,
    })
}

/// `grpc-subscribe-latency`.
pub fn subscribe_latency(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let w = Workload::GrpcSubscribeLatency;
    let dir = ctx.dir(w.name())?;
    let n = ctx.cap(if ctx.quick { 500 } else { 2000 });
    let embedded = {
        let engine = open_engine(&dir.join("embedded"), Durability::Always)?;
        let side = ctx.rt.block_on(delivery(&engine, n))?;
        engine.close()?;
        side
    };
    let engine = Arc::new(open_engine(&dir.join("grpc"), Durability::Always)?);
    let grpc = ctx.rt.block_on(async {
        let served = Served::start(engine).await?;
        let client = served.client().await?;
        let side = delivery(&client, n).await?;
        drop(client);
        served.stop().await?;
        Ok::<_, BenchError>(side)
    })?;
    let mut r = compare(
        ctx,
        w,
        grpc,
        embedded,
        "append start → live delivery over gRPC, one at a time",
    );
    r.target = "none: p99 reported against the embedded engine's".into();
    Ok(r)
}

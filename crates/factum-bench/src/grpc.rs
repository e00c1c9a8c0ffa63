//! gRPC workloads: the same operations through `factum serve` (a process of
//! its own on 127.0.0.1, see [`crate::server`]) and straight on the
//! embedded engine in this process, in the same run. The ratio is gRPC /
//! embedded. Beside events/s and latency, each reports the server's CPU
//! time per event (user + system of the server process over the measured
//! window): the figure that stays put on a noisy machine. With two CPUs
//! the server runs on one and this process (load generator, engine
//! baseline) on the other.
//!
//! Through `factum-client`: `grpc-append-seq` (1 writer, 1 event per
//! append), `grpc-append-concurrent` (256 writers over 8 connections, 1
//! event each; target ≥100,000 events/s), `grpc-append-batch` (1,000 events
//! per append), `grpc-read-all` (`$all` as one streamed read; target ≥1M
//! events/s), `grpc-subscribe-latency` (append start → live delivery, one
//! event at a time). Through KurrentDB's official client ([`Via`],
//! [`crate::official`]): `kurrentdb-append-seq`,
//! `kurrentdb-append-concurrent-16`, `-256` (one `Append` RPC per append),
//! `kurrentdb-append-batch`, `kurrentdb-read-all`,
//! `kurrentdb-subscribe-latency`, the same shapes.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_client::Client;
use factum_core::{
    Bytes, ContentType, EventData, EventStore, ExpectedRevision, ReadAll, StreamName, Subscribe,
    SubscriptionMessage, SubscriptionStart, Uuid,
};
use factum_engine::Durability;

use crate::error::BenchError;
use crate::official;
use crate::server::{CpuClock, Placement, ServerProcess};
use crate::util::{event, open_engine, payload, rate, Latencies};
use crate::{Ctx, Report, Workload};

const EVENT_BYTES: usize = 256;
/// Connections the concurrent writers share (official clients multiplex
/// many calls on one connection; a few connections use both cores).
const CONNECTIONS: usize = 8;

/// What a workload needs of a store, local or remote: appends with given
/// event ids, and a live `$all` subscription from the end that yields the
/// ids of the events it delivers.
pub(crate) trait BenchStore: Clone + Send + Sync + 'static {
    /// A live subscription.
    type Live: Send;

    /// Appends one event of `data` per id to `stream`, expecting any revision.
    fn append(
        &self,
        stream: &StreamName,
        ids: &[Uuid],
        data: &Bytes,
    ) -> impl Future<Output = Result<(), BenchError>> + Send;

    /// Subscribes to `$all` from its end.
    fn subscribe_end(&self) -> impl Future<Output = Result<Self::Live, BenchError>> + Send;

    /// The id of the next event delivered; `None` when the subscription ended.
    fn next_id(
        live: &mut Self::Live,
    ) -> impl Future<Output = Result<Option<Uuid>, BenchError>> + Send;
}

/// Any of our `EventStore`s (the engine, `factum-client`) as a [`BenchStore`].
#[derive(Clone)]
pub(crate) struct Ours<S>(pub S);

impl<S: EventStore + Clone> BenchStore for Ours<S> {
    type Live = factum_core::Subscription;

    async fn append(
        &self,
        stream: &StreamName,
        ids: &[Uuid],
        data: &Bytes,
    ) -> Result<(), BenchError> {
        let events = ids
            .iter()
            .map(|id| EventData::new("Bench", ContentType::Json, data.clone()).with_id(*id))
            .collect();
        self.0
            .append(stream.clone(), ExpectedRevision::Any, events)
            .await?;
        Ok(())
    }

    async fn subscribe_end(&self) -> Result<Self::Live, BenchError> {
        Ok(self
            .0
            .subscribe(Subscribe::all(SubscriptionStart::End, None))
            .await?)
    }

    async fn next_id(live: &mut Self::Live) -> Result<Option<Uuid>, BenchError> {
        loop {
            match live.next().await {
                Some(Ok(SubscriptionMessage::Event(e))) => return Ok(Some(e.id)),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(None),
            }
        }
    }
}

/// What one side of a comparison measured.
pub(crate) struct Side {
    pub(crate) events: u64,
    pub(crate) elapsed: Duration,
    pub(crate) lat: Latencies,
    /// The server process's CPU time over the measured window (remote sides).
    pub(crate) server_cpu: Option<Duration>,
}

impl Side {
    fn eps(&self) -> f64 {
        rate(self.events, self.elapsed)
    }
}

/// `writers` tasks appending `per_append` events at a time for `time`
/// (or until `max` events), each task on `stores[i % stores.len()]`;
/// `server` is sampled at the start and the end of the window.
pub(crate) async fn appends<S: BenchStore>(
    stores: &[S],
    writers: usize,
    per_append: usize,
    time: Duration,
    max: u64,
    server: Option<&CpuClock>,
) -> Result<Side, BenchError> {
    let data = payload(EVENT_BYTES);
    let cpu_before = server.map(CpuClock::now).transpose()?;
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
                let ids: Vec<Uuid> = (0..per_append).map(|_| Uuid::new_v4()).collect();
                let t = Instant::now();
                store.append(&stream, &ids, &data).await?;
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
        server_cpu: None,
    };
    for t in tasks {
        let (n, lat) = t
            .await
            .map_err(|e| BenchError::failure(format!("writer task failed: {e}")))??;
        side.events += n;
        side.lat.extend(lat);
    }
    side.elapsed = started.elapsed();
    side.server_cpu = cpu_spent(server, cpu_before)?;
    Ok(side)
}

/// The server's CPU time since `before`.
fn cpu_spent(
    server: Option<&CpuClock>,
    before: Option<Duration>,
) -> Result<Option<Duration>, BenchError> {
    match (server, before) {
        (Some(clock), Some(before)) => Ok(Some(clock.now()?.saturating_sub(before))),
        _ => Ok(None),
    }
}

/// The report of a remote side against the engine's.
pub(crate) fn compare(
    ctx: &Ctx,
    w: Workload,
    remote: Side,
    embedded: Side,
    latency_of: &'static str,
    how: String,
    placement: &Placement,
) -> Report {
    compare_with(
        ctx,
        w,
        remote,
        embedded,
        "the embedded engine, same operations in the same run",
        latency_of,
        how,
        placement,
    )
}

/// The report of a remote side against a `baseline` side (named so).
#[allow(clippy::too_many_arguments)]
pub(crate) fn compare_with(
    ctx: &Ctx,
    w: Workload,
    remote: Side,
    embedded: Side,
    baseline: &str,
    latency_of: &'static str,
    how: String,
    placement: &Placement,
) -> Report {
    let mut remote = remote;
    let mut embedded = embedded;
    let (p50, p99) = remote.lat.p50_p99_us();
    let (e50, e99) = embedded.lat.p50_p99_us();
    let mut r = ctx.report(w);
    r.events = remote.events;
    r.seconds = remote.elapsed.as_secs_f64();
    r.events_per_sec = Some(remote.eps());
    r.p50_us = p50;
    r.p99_us = p99;
    r.latency_of = latency_of;
    r.baseline_events_per_sec = Some(embedded.eps());
    r.ratio = Some(remote.eps() / embedded.eps());
    r.notes.push(format!(
        "baseline: {baseline}: {} events in {:.2} s, p50 {:.0} µs, p99 {:.0} µs",
        embedded.events,
        embedded.elapsed.as_secs_f64(),
        e50.unwrap_or(0.0),
        e99.unwrap_or(0.0)
    ));
    if let Some(cpu) = remote.server_cpu {
        r.server_cpu_us_per_event = Some(cpu.as_secs_f64() * 1e6 / remote.events.max(1) as f64);
        r.notes.push(format!(
            "server CPU: {:.0} ms user+system of the factum serve process over the measured window (/proc/<pid>/stat, in clock ticks), {:.1} µs per event",
            cpu.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e6 / remote.events.max(1) as f64,
        ));
    }
    r.notes.push(how);
    r.notes.push(placement.note());
    r
}

/// The client a server-path workload drives the server with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Ours, `factum-client`: appends over one `BatchAppend` call per
    /// connection, [`CONNECTIONS`] connections for concurrent writers.
    FactumClient,
    /// KurrentDB's official Rust client (`kurrentdb` 1.2.0): one `Append`
    /// RPC per append, one client (one connection) for every writer.
    Kurrentdb,
}

impl Via {
    /// Connections for `writers` concurrent writers.
    fn connections(self, writers: usize) -> usize {
        match self {
            Via::FactumClient => CONNECTIONS.min(writers),
            Via::Kurrentdb => 1,
        }
    }

    /// How this side reached the server, for the report.
    fn describe(self, connections: usize) -> String {
        let client = match self {
            Via::FactumClient => format!(
                "factum-client over {connections} connection(s), appends on one BatchAppend call per connection"
            ),
            Via::Kurrentdb => "KurrentDB's official Rust client kurrentdb 1.2.0, one Client (one connection) for all writers, one Append RPC per append, the client's own socket options".into(),
        };
        format!("gRPC: factum serve --insecure in its own process on 127.0.0.1 (embedded engine, durability always); {client}")
    }
}

/// The embedded side of an append workload, on a fresh store.
fn embedded_appends(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    writers: usize,
    per_append: usize,
    time: Duration,
    max: u64,
) -> Result<Side, BenchError> {
    let engine = Arc::new(open_engine(dir, Durability::Always)?);
    let side = rt.block_on(appends(
        &[Ours(engine.clone())],
        writers,
        per_append,
        time,
        max,
        None,
    ))?;
    engine.close()?;
    Ok(side)
}

/// An append workload against both sides; fresh stores for each.
fn append_workload(
    ctx: &mut Ctx,
    w: Workload,
    via: Via,
    writers: usize,
    per_append: usize,
    latency_of: &'static str,
) -> Result<Report, BenchError> {
    let time = ctx.secs(1.5, 5.0);
    let max = ctx.cap(u64::MAX);
    let dir = ctx.dir(w.name())?;
    let placement = Placement::pin();
    let rt = placement.runtime(&ctx.rt);
    let embedded = embedded_appends(rt, &dir.join("embedded"), writers, per_append, time, max)?;
    let server = ServerProcess::start(&dir.join("grpc"), &placement)?;
    let connections = via.connections(writers);
    let grpc = rt.block_on(async {
        let cpu = Some(&server.cpu);
        match via {
            Via::FactumClient => {
                let mut clients = Vec::new();
                for _ in 0..connections {
                    clients.push(Ours(connect(&server).await?));
                }
                appends(&clients, writers, per_append, time, max, cpu).await
            }
            Via::Kurrentdb => {
                let client = official::connect(&server).await?;
                appends(&[client], writers, per_append, time, max, cpu).await
            }
        }
    })?;
    server.stop()?;
    let mut r = compare(
        ctx,
        w,
        grpc,
        embedded,
        latency_of,
        via.describe(connections),
        &placement,
    );
    if w == Workload::GrpcAppendConcurrent {
        r.target = "≥100,000 events/s".into();
        r.target_met = r.events_per_sec.map(|e| e >= 100_000.0);
    } else {
        r.target = "none: ratio to the embedded engine reported".into();
    }
    Ok(r)
}

/// Our client on `server`: plain text, or TLS with its CA and `admin`'s
/// credentials on every call when it runs `--dev`.
pub(crate) async fn connect(server: &ServerProcess) -> Result<Client, BenchError> {
    Ok(Client::connect(&server.connection_string()).await?)
}

/// `grpc-append-seq`, `kurrentdb-append-seq`: one writer.
pub fn append_seq(ctx: &mut Ctx, w: Workload, via: Via) -> Result<Report, BenchError> {
    append_workload(ctx, w, via, 1, 1, "one append (1 event) until acknowledged")
}

/// `grpc-append-concurrent` (256 writers), `kurrentdb-append-concurrent-16`
/// and `-256`.
pub fn append_concurrent(
    ctx: &mut Ctx,
    w: Workload,
    via: Via,
    writers: usize,
) -> Result<Report, BenchError> {
    let latency_of = match writers {
        16 => "one append (1 event) until acknowledged, under 16 concurrent writers",
        _ => "one append (1 event) until acknowledged, under 256 concurrent writers",
    };
    append_workload(ctx, w, via, writers, 1, latency_of)
}

/// `grpc-append-batch`, `kurrentdb-append-batch`.
pub fn append_batch(ctx: &mut Ctx, w: Workload, via: Via) -> Result<Report, BenchError> {
    append_workload(
        ctx,
        w,
        via,
        1,
        1000,
        "one append (1,000 events) until acknowledged",
    )
}

/// The store of a read workload: `total` events in appends of 1,000 to one
/// stream (durability `None`, labelled), index flushed, closed. Then the
/// embedded side: the store reopened and `$all` read forwards in pages of
/// 10,000, each event dropped once counted.
fn load_and_read_embedded(
    ctx: &Ctx,
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    total: u64,
) -> Result<Side, BenchError> {
    load(ctx, dir, total)?;
    read_embedded(rt, open_engine(dir, Durability::None)?)
}

/// The store of a read workload: `total` events in appends of 1,000 to one
/// stream (durability `None`, labelled), index flushed, closed.
pub(crate) fn load(ctx: &Ctx, dir: &std::path::Path, total: u64) -> Result<(), BenchError> {
    let data = payload(EVENT_BYTES);
    let engine = open_engine(dir, Durability::None)?;
    ctx.rt.block_on(async {
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
        Ok::<_, BenchError>(())
    })?;
    // The load's index flush would otherwise run in the background
    // during the measurements, taking a core from them.
    engine.flush_index()?;
    engine.close()?;
    Ok(())
}

/// The embedded side of a read workload: the loaded store read forwards.
fn read_embedded(
    rt: &tokio::runtime::Runtime,
    engine: factum_engine::Engine,
) -> Result<Side, BenchError> {
    let side = rt.block_on(async {
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
        Ok::<_, BenchError>(Side {
            events,
            elapsed: started.elapsed(),
            lat: Latencies::with_capacity(0),
            server_cpu: None,
        })
    })?;
    engine.close()?;
    Ok(side)
}

/// `$all` read forwards from the start through our client as one streamed
/// read of at most `total` events: the events read, the time, the server's
/// CPU time.
pub(crate) async fn read_all_remote(
    server: &ServerProcess,
    total: u64,
) -> Result<Side, BenchError> {
    let client = connect(server).await?;
    let cpu_before = Some(server.cpu.now()?);
    let started = Instant::now();
    let mut events = 0u64;
    let mut read = client
        .read_all_streaming(ReadAll::forwards().max_count(total))
        .await?;
    while let Some(e) = futures_util::StreamExt::next(&mut read).await {
        e?;
        events += 1;
    }
    Ok(Side {
        events,
        elapsed: started.elapsed(),
        lat: Latencies::with_capacity(0),
        server_cpu: cpu_spent(Some(&server.cpu), cpu_before)?,
    })
}

/// `grpc-read-all`, `kurrentdb-read-all`: `$all` read forwards, embedded
/// in pages of 10,000 and over gRPC as one streamed read (the server pages
/// internally), each event dropped once counted on both sides.
pub fn read_all(ctx: &mut Ctx, w: Workload, via: Via) -> Result<Report, BenchError> {
    let dir = ctx.dir(w.name())?;
    let total = ctx.cap(if ctx.quick { 200_000 } else { 1_000_000 });
    let placement = Placement::pin();
    let rt = placement.runtime(&ctx.rt);
    let embedded = load_and_read_embedded(ctx, rt, &dir.join("store"), total)?;
    let server = ServerProcess::start(&dir.join("store"), &placement)?;
    let remote = rt.block_on(async {
        let ours = match via {
            Via::FactumClient => Some(connect(&server).await?),
            Via::Kurrentdb => None,
        };
        let official = match via {
            Via::Kurrentdb => Some(official::connect(&server).await?),
            Via::FactumClient => None,
        };
        let cpu_before = Some(server.cpu.now()?);
        let started = Instant::now();
        let mut events = 0u64;
        if let Some(client) = &ours {
            let mut read = client
                .read_all_streaming(ReadAll::forwards().max_count(total))
                .await?;
            while let Some(e) = futures_util::StreamExt::next(&mut read).await {
                e?;
                events += 1;
            }
        }
        if let Some(client) = &official {
            events = official::read_all(client, total).await?;
        }
        Ok::<_, BenchError>(Side {
            events,
            elapsed: started.elapsed(),
            lat: Latencies::with_capacity(0),
            server_cpu: cpu_spent(Some(&server.cpu), cpu_before)?,
        })
    })?;
    server.stop()?;
    let how = via.describe(1);
    if remote.events != embedded.events {
        return Err(BenchError::failure(format!(
            "read {} events over gRPC and {} from the engine",
            remote.events, embedded.events
        )));
    }
    let mut r = compare(
        ctx,
        w,
        remote,
        embedded,
        "none (throughput)",
        how,
        &placement,
    );
    r.durability = "none (load only)".into();
    r.notes.push(
        "the load's index is flushed and the store reopened before either side is measured (the engine in this process, then the server process)"
            .into(),
    );
    r.target = "≥1,000,000 events/s".into();
    r.target_met = r.events_per_sec.map(|e| e >= 1_000_000.0);
    Ok(r)
}

/// One append at a time; latency from the append's start to the live
/// subscription delivering it.
async fn delivery<S: BenchStore>(
    store: &S,
    n: u64,
    server: Option<&CpuClock>,
) -> Result<Side, BenchError> {
    let mut live = store.subscribe_end().await?;
    let stream = StreamName::new("live-1")?;
    let data = payload(EVENT_BYTES);
    let mut lat = Latencies::with_capacity(n as usize);
    let cpu_before = server.map(CpuClock::now).transpose()?;
    let started = Instant::now();
    for _ in 0..n {
        let id = Uuid::new_v4();
        let t = Instant::now();
        let append = store.append(&stream, std::slice::from_ref(&id), &data);
        let deliver = async {
            loop {
                match tokio::time::timeout(Duration::from_secs(10), S::next_id(&mut live)).await {
                    Ok(Ok(Some(got))) if got == id => return Ok(t.elapsed()),
                    Ok(Ok(Some(_))) => continue,
                    Ok(Err(e)) => return Err(e),
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
        server_cpu: cpu_spent(server, cpu_before)?,
    })
}

/// The embedded side of a subscribe workload, on a fresh store.
fn embedded_delivery(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    n: u64,
) -> Result<Side, BenchError> {
    let engine = Arc::new(open_engine(dir, Durability::Always)?);
    let side = rt.block_on(delivery(&Ours(engine.clone()), n, None))?;
    engine.close()?;
    Ok(side)
}

/// `grpc-subscribe-latency`, `kurrentdb-subscribe-latency`.
pub fn subscribe_latency(ctx: &mut Ctx, w: Workload, via: Via) -> Result<Report, BenchError> {
    let dir = ctx.dir(w.name())?;
    let n = ctx.cap(if ctx.quick { 500 } else { 2000 });
    let placement = Placement::pin();
    let rt = placement.runtime(&ctx.rt);
    let embedded = embedded_delivery(rt, &dir.join("embedded"), n)?;
    let server = ServerProcess::start(&dir.join("grpc"), &placement)?;
    let grpc = rt.block_on(async {
        let cpu = Some(&server.cpu);
        match via {
            Via::FactumClient => delivery(&Ours(connect(&server).await?), n, cpu).await,
            Via::Kurrentdb => delivery(&official::connect(&server).await?, n, cpu).await,
        }
    })?;
    server.stop()?;
    let mut r = compare(
        ctx,
        w,
        grpc,
        embedded,
        "append start → live delivery over gRPC, one at a time",
        via.describe(1),
        &placement,
    );
    r.target = "none: p99 reported against the embedded engine's".into();
    // The embedded baseline never crosses between the two CPUs; the gRPC
    // path crosses twice per event (the append in, the delivery out).
    if let (Some(server_cpu), Some(load_cpu)) = (placement.server_cpu(), placement.load_cpu()) {
        let mut across = crate::server::echo_round_trips(server_cpu, n as usize)?;
        let mut same = crate::server::echo_round_trips(load_cpu, n as usize)?;
        let ((a50, a99), (s50, s99)) = (across.p50_p99_us(), same.p50_p99_us());
        r.notes.push(format!(
            "the placement's floor, same run: a loopback TCP round trip of 300 bytes, one at a time, between this process and a process on the server's CPU {server_cpu}: p50 {:.0} µs, p99 {:.0} µs; on this process's own CPU {load_cpu}: p50 {:.0} µs, p99 {:.0} µs",
            a50.unwrap_or(0.0),
            a99.unwrap_or(0.0),
            s50.unwrap_or(0.0),
            s99.unwrap_or(0.0),
        ));
    }
    Ok(r)
}

//! Write workloads: `fsync-baseline`, `append-seq`, `append-concurrent`,
//! `append-batch`. Durability is `Always`: every append is acknowledged
//! after its fdatasync.

use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_core::{Bytes, EventStore, ExpectedRevision, StreamName};
use factum_engine::{Durability, Engine};

use crate::error::BenchError;
use crate::util::{event, open_engine, payload, rate, raw_sync_loop, Latencies, RawWriter};
use crate::{Ctx, Report, Workload};

/// Size of the raw baseline's write in `fsync-baseline`.
const FSYNC_WRITE: usize = 300;
/// Event payload size.
pub const EVENT_BYTES: usize = 256;
/// Writers in `append-concurrent`.
const WRITERS: u64 = 256;
/// Events per append in `append-batch`.
pub const BATCH: u64 = 1000;
/// Engine and baseline alternate in this many slices each.
const ROUNDS: u64 = 4;
/// Chunk of the raw bandwidth baseline.
const RAW_CHUNK: usize = 256 << 10;

/// `fsync-baseline`: write(300 B) + fdatasync in a loop.
pub fn fsync_baseline(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let dir = ctx.dir(Workload::FsyncBaseline.name())?;
    let mut raw = raw_sync_loop(
        &dir.join("raw.bin"),
        FSYNC_WRITE,
        ctx.secs(2.0, 5.0),
        ctx.cap(u64::MAX),
    )?;
    ctx.fsync_rate = Some(raw.ops_per_sec());
    let (p50, p99) = raw.latencies.p50_p99_us();
    let mut r = ctx.report(Workload::FsyncBaseline);
    r.events = raw.ops;
    r.seconds = raw.elapsed.as_secs_f64();
    r.events_per_sec = Some(raw.ops_per_sec());
    r.p50_us = p50;
    r.p99_us = p99;
    r.latency_of = "one write(300 B) + fdatasync";
    r.target = "none: the reference fsync rate of this disk".into();
    r.durability = "fdatasync per write".into();
    r.notes
        .push("a file growing by appends, as the engine's log grows".into());
    Ok(r)
}

/// `append-seq`: one writer, one 256-B event per append, against raw
/// write + fdatasync of the same encoded size, in interleaved slices.
pub fn seq(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let dir = ctx.dir(Workload::AppendSeq.name())?;
    let slice = ctx.secs(0.5, 1.25);
    let max = ctx.cap(u64::MAX);
    let engine = open_engine(&dir, Durability::Always)?;
    let stream = StreamName::new("seq-1")?;
    let data = payload(EVENT_BYTES);
    // One untimed append to learn the encoded size of an append.
    let before = engine.log_bytes()?;
    ctx.rt
        .block_on(engine.append(stream.clone(), ExpectedRevision::Any, vec![event(&data)]))?;
    let frame = (engine.log_bytes()? - before) as usize;
    let mut raw = RawWriter::create(&dir.join("raw.bin"), frame)?;
    let mut raw_pre = RawWriter::create_preallocated(&dir.join("raw-pre.bin"), frame)?;
    let appends = Appends {
        stream,
        data,
        per_append: 1,
    };
    let mut tally = Tally::default();
    for round in 0..ROUNDS {
        let quota = share(max, round, ROUNDS);
        appends.slice(ctx, &engine, quota, slice, &mut tally)?;
        raw.run(slice, quota)?;
        raw_pre.run(slice, quota)?;
    }
    engine.close()?;
    let raw = raw.finish();
    let mut raw_pre = raw_pre.finish();
    let Tally {
        events: n,
        elapsed,
        mut lat,
        ..
    } = tally;
    let (p50, p99) = lat.p50_p99_us();
    let eps = rate(n, elapsed);
    let mut r = ctx.report(Workload::AppendSeq);
    r.events = n;
    r.seconds = elapsed.as_secs_f64();
    r.events_per_sec = Some(eps);
    r.p50_us = p50;
    r.p99_us = p99;
    r.latency_of = "one append (1 event) until acknowledged";
    r.baseline_events_per_sec = Some(raw.ops_per_sec());
    r.ratio = Some(eps / raw.ops_per_sec());
    r.target = "ratio ≥0.9 to raw write+fdatasync of the same encoded size".into();
    r.target_met = Some(eps / raw.ops_per_sec() >= 0.9);
    let mut raw_lat = raw.latencies.clone();
    let (raw50, raw99) = raw_lat.p50_p99_us();
    r.notes.push(format!(
        "baseline: write({frame} B, one encoded append) + fdatasync, {} ops in {:.2} s, p50 {:.0} µs, p99 {:.0} µs; engine and baseline alternate in {ROUNDS} slices each",
        raw.ops,
        raw.elapsed.as_secs_f64(),
        raw50.unwrap_or(0.0),
        raw99.unwrap_or(0.0),
    ));
    let (pre50, pre99) = raw_pre.latencies.p50_p99_us();
    r.notes.push(format!(
        "raw write + fdatasync into preallocated zeros (the engine's own technique, ADR 10; zeroing not timed): {:.0} ops/s, p50 {:.0} µs, p99 {:.0} µs; the engine reaches {:.2} of it",
        raw_pre.ops_per_sec(),
        pre50.unwrap_or(0.0),
        pre99.unwrap_or(0.0),
        eps / raw_pre.ops_per_sec(),
    ));
    Ok(r)
}

/// The cumulative quota of operations after `round` of `rounds`.
pub fn share(max: u64, round: u64, rounds: u64) -> u64 {
    if max == u64::MAX {
        return u64::MAX;
    }
    (max as u128 * (round + 1) as u128 / rounds as u128) as u64
}

/// What one writer appends: `per_append` events of `data` to `stream`,
/// one append after the other, each awaited.
pub struct Appends {
    /// The stream appended to (`ExpectedRevision::Any`).
    pub stream: StreamName,
    /// Each event's payload.
    pub data: Bytes,
    /// Events per append.
    pub per_append: u64,
}

/// What a writer's slices achieved so far.
#[derive(Default)]
pub struct Tally {
    /// Events appended and acknowledged.
    pub events: u64,
    /// Time of the slices.
    pub elapsed: Duration,
    /// Latency of each append.
    pub lat: Latencies,
    /// Events/s of each slice that appended anything.
    pub slice_rates: Vec<f64>,
}

impl Appends {
    /// One slice: appends until `slice` has passed (at least one append)
    /// or `quota` events in all are counted in `tally`.
    pub fn slice(
        &self,
        ctx: &Ctx,
        engine: &Engine,
        quota: u64,
        slice: Duration,
        tally: &mut Tally,
    ) -> Result<(), BenchError> {
        let before = tally.events;
        let started = Instant::now();
        ctx.rt.block_on(async {
            let mut k = 0;
            while tally.events < quota && (k == 0 || started.elapsed() < slice) {
                let events = (0..self.per_append).map(|_| event(&self.data)).collect();
                let t = Instant::now();
                engine
                    .append(self.stream.clone(), ExpectedRevision::Any, events)
                    .await?;
                tally.lat.push(t.elapsed());
                tally.events += self.per_append;
                k += 1;
            }
            Ok::<_, BenchError>(())
        })?;
        let took = started.elapsed();
        tally.elapsed += took;
        if tally.events > before {
            tally.slice_rates.push(rate(tally.events - before, took));
        }
        Ok(())
    }
}

/// `append-concurrent`: 256 tasks, each appending one 256-B event per
/// append to its own stream; compared with the raw fsync rate.
pub fn concurrent(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let dir = ctx.dir(Workload::AppendConcurrent.name())?;
    // The fsync rate right before and right after, so that both see the same disk.
    let fsync_slice = ctx.secs(1.0, 2.0);
    let fsync_cap = ctx.cap(u64::MAX);
    let raw_before = raw_sync_loop(&dir.join("raw.bin"), FSYNC_WRITE, fsync_slice, fsync_cap)?;
    let duration = ctx.secs(3.0, 10.0);
    let per_task = ctx.cap(u64::MAX).div_ceil(WRITERS);
    let engine = Arc::new(open_engine(&dir, Durability::Always)?);
    let data = payload(EVENT_BYTES);
    let (n, elapsed, mut lat) = ctx.rt.block_on(async {
        let started = Instant::now();
        let deadline = started + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..WRITERS {
            let engine = engine.clone();
            let data = data.clone();
            tasks.spawn(async move {
                let stream = StreamName::new(format!("conc-{i}"))?;
                let mut lat = Latencies::with_capacity(4096);
                let mut n = 0u64;
                while n < per_task && (n == 0 || Instant::now() < deadline) {
                    let t = Instant::now();
                    engine
                        .append(stream.clone(), ExpectedRevision::Any, vec![event(&data)])
                        .await?;
                    lat.push(t.elapsed());
                    n += 1;
                }
                Ok::<_, BenchError>((n, lat))
            });
        }
        let mut total = 0;
        let mut all = Latencies::with_capacity(1 << 20);
        while let Some(joined) = tasks.join_next().await {
            let (n, lat) =
                joined.map_err(|e| BenchError::failure(format!("a writer task failed: {e}")))??;
            total += n;
            all.extend(lat);
        }
        Ok::<_, BenchError>((total, started.elapsed(), all))
    })?;
    engine.close()?;
    let raw_after = raw_sync_loop(&dir.join("raw.bin"), FSYNC_WRITE, fsync_slice, fsync_cap)?;
    let fsync = (raw_before.ops + raw_after.ops) as f64
        / (raw_before.elapsed + raw_after.elapsed)
            .as_secs_f64()
            .max(1e-9);
    let (p50, p99) = lat.p50_p99_us();
    let eps = rate(n, elapsed);
    let ratio = eps / fsync;
    let mut r = ctx.report(Workload::AppendConcurrent);
    r.events = n;
    r.seconds = elapsed.as_secs_f64();
    r.events_per_sec = Some(eps);
    r.p50_us = p50;
    r.p99_us = p99;
    r.latency_of = "one append (1 event) until acknowledged, under 256 concurrent writers";
    r.baseline_events_per_sec = Some(fsync);
    r.ratio = Some(ratio);
    r.target = "≥100k events/s and ≥30× the raw fsync rate".into();
    r.target_met = Some(eps >= 100_000.0 && ratio >= 30.0);
    r.notes.push(format!(
        "{WRITERS} tokio tasks, each to its own stream with ExpectedRevision::Any; baseline = write(300 B) + fdatasync measured right before ({:.0}/s) and after ({:.0}/s){}",
        raw_before.ops_per_sec(),
        raw_after.ops_per_sec(),
        ctx.fsync_rate
            .map(|f| format!("; the fsync-baseline row measured {f:.0}/s"))
            .unwrap_or_default()
    ));
    Ok(r)
}

/// `append-batch`: 1,000 events of 256 B per append, against raw sequential
/// writes with one fdatasync per 256 KiB, in interleaved slices.
pub fn batch(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let dir = ctx.dir(Workload::AppendBatch.name())?;
    let slice = ctx.secs(0.5, 1.25);
    let max = ctx.cap(u64::MAX);
    let per_append = BATCH.min(max);
    let engine = open_engine(&dir, Durability::Always)?;
    let stream = StreamName::new("batch-1")?;
    let data = payload(EVENT_BYTES);
    let mut raw = RawWriter::create(&dir.join("raw.bin"), RAW_CHUNK)?;
    let before = engine.log_bytes()?;
    let appends = Appends {
        stream,
        data,
        per_append,
    };
    let mut tally = Tally::default();
    for round in 0..ROUNDS {
        let quota = share(max, round, ROUNDS);
        appends.slice(ctx, &engine, quota, slice, &mut tally)?;
        // Under a test's --events cap, the baseline writes about as much as the engine.
        let raw_quota = if ctx.cap.is_some() {
            ((engine.log_bytes()? - before) / RAW_CHUNK as u64).max(1)
        } else {
            u64::MAX
        };
        raw.run(slice, raw_quota)?;
    }
    let written = engine.log_bytes()? - before;
    engine.close()?;
    let raw = raw.finish();
    let Tally {
        events: n,
        elapsed,
        mut lat,
        ..
    } = tally;
    let (p50, p99) = lat.p50_p99_us();
    let bps = written as f64 / elapsed.as_secs_f64().max(1e-9);
    let mut r = ctx.report(Workload::AppendBatch);
    r.events = n;
    r.seconds = elapsed.as_secs_f64();
    r.events_per_sec = Some(rate(n, elapsed));
    r.p50_us = p50;
    r.p99_us = p99;
    r.latency_of = "one append of 1,000 events until acknowledged";
    r.bytes_per_sec = Some(bps);
    r.baseline_bytes_per_sec = Some(raw.bytes_per_sec());
    r.ratio = Some(bps / raw.bytes_per_sec());
    r.target = "ratio ≥0.5 of log bytes/s to raw sequential write + fdatasync per 256 KiB".into();
    r.target_met = Some(bps / raw.bytes_per_sec() >= 0.5);
    r.notes.push(format!(
        "{per_append} events per append; {written} log bytes written; baseline {} × 256 KiB in {:.2} s; engine and baseline alternate in {ROUNDS} slices each",
        raw.ops,
        raw.elapsed.as_secs_f64()
    ));
    Ok(r)
}

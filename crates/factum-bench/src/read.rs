//! Read workloads: `read-all` and `read-stream`. Their stores are loaded
//! with durability `None` (fast, and labelled so), then closed and reopened
//! so reads go through the persisted index as in a restarted process.

use std::path::Path;
use std::time::Instant;

use factum_core::{EventStore, ExpectedRevision, ReadStream, StreamName};
use factum_engine::{Durability, MasterKey};

use crate::error::BenchError;
use crate::util::{event, open_engine, open_engine_with, payload, rate, read_all_pages, Latencies};
use crate::{Ctx, Report, Workload};

const EVENT_BYTES: usize = 256;
/// Events per append when loading.
const LOAD_BATCH: u64 = 1000;
/// Events per `read_all` page.
pub const PAGE: u64 = 10_000;
/// Events of the stream `read-stream` reads.
const STREAM_EVENTS: u64 = 1000;

/// Loads `read-all`'s store into `dir` (encrypted under `encryption` when
/// given): `total` events of 256 B in appends of 1,000 over 100 streams,
/// durability `None`; closes it. Returns the seconds it took.
pub fn load_all_store(
    ctx: &Ctx,
    dir: &Path,
    total: u64,
    encryption: Option<MasterKey>,
) -> Result<f64, BenchError> {
    let data = payload(EVENT_BYTES);
    let started = Instant::now();
    let engine = open_engine_with(dir, Durability::None, encryption)?;
    ctx.rt.block_on(async {
        let mut loaded = 0u64;
        let mut i = 0u64;
        while loaded < total {
            let n = LOAD_BATCH.min(total - loaded);
            let stream = StreamName::new(format!("load-{}", i % 100))?;
            let events = (0..n).map(|_| event(&data)).collect();
            engine.append(stream, ExpectedRevision::Any, events).await?;
            loaded += n;
            i += 1;
        }
        Ok::<_, BenchError>(())
    })?;
    engine.close()?;
    Ok(started.elapsed().as_secs_f64())
}

/// The number of events in `read-all`'s store.
pub fn read_all_total(ctx: &Ctx) -> u64 {
    ctx.cap(if ctx.quick { 200_000 } else { 1_000_000 })
}

/// `read-all`: `$all` forwards in pages of 10,000.
pub fn read_all(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let dir = ctx.dir(Workload::ReadAll.name())?;
    let total = read_all_total(ctx);
    let load_secs = load_all_store(ctx, &dir, total, None)?;
    let engine = open_engine(&dir, Durability::Always)?;
    // Two passes over the same store: the first after reopening (the
    // process's allocator and the reader still warming up), the second is
    // the steady state that the figure reports. Both are printed.
    let pass = |engine: &factum_engine::Engine| ctx.rt.block_on(read_all_pages(engine, PAGE));
    let (first_n, first_elapsed, _) = pass(&engine)?;
    let (n, elapsed, mut lat) = pass(&engine)?;
    if first_n != n {
        return Err(BenchError::failure(format!(
            "two reads of $all disagree: {first_n} then {n} events"
        )));
    }
    engine.close()?;
    if n != total {
        return Err(BenchError::failure(format!(
            "read {n} events from $all, expected {total}"
        )));
    }
    let (p50, p99) = lat.p50_p99_us();
    let eps = rate(n, elapsed);
    let mut r = ctx.report(Workload::ReadAll);
    r.events = n;
    r.seconds = elapsed.as_secs_f64();
    r.events_per_sec = Some(eps);
    r.p50_us = p50;
    r.p99_us = p99;
    r.latency_of = "one read_all page of 10,000 events";
    r.target = "≥5M events/s".into();
    r.target_met = Some(eps >= 5_000_000.0);
    r.durability = "none (load only; the read is unaffected)".into();
    r.notes.push(format!(
        "loaded {total} events of {EVENT_BYTES} B in appends of {LOAD_BATCH} over 100 streams with durability None in {load_secs:.2} s; store reopened; page cache warm"
    ));
    r.notes.push(format!(
        "reported: the second of two passes; the first pass after reopening ran at {:.2}M events/s",
        rate(n, first_elapsed) / 1e6
    ));
    Ok(r)
}

/// `read-stream`: a 1,000-event stream (interleaved with other streams in
/// the log) read fully forwards, again and again.
pub fn read_stream(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let dir = ctx.dir(Workload::ReadStream.name())?;
    let duration = ctx.secs(2.0, 5.0);
    let max_reads = ctx.cap(u64::MAX).div_ceil(STREAM_EVENTS).max(1);
    let stream = StreamName::new("reader-1")?;
    let data = payload(EVENT_BYTES);
    {
        let engine = open_engine(&dir, Durability::None)?;
        ctx.rt.block_on(async {
            // 10 events of the stream, then 90 of others, 100 times.
            for round in 0..STREAM_EVENTS / 10 {
                let mine = (0..10).map(|_| event(&data)).collect();
                engine
                    .append(stream.clone(), ExpectedRevision::Any, mine)
                    .await?;
                let other = StreamName::new(format!("other-{}", round % 10))?;
                let theirs = (0..90).map(|_| event(&data)).collect();
                engine.append(other, ExpectedRevision::Any, theirs).await?;
            }
            Ok::<_, BenchError>(())
        })?;
        engine.close()?;
    }
    let engine = open_engine(&dir, Durability::Always)?;
    let (reads, elapsed, mut lat) = ctx.rt.block_on(async {
        let mut lat = Latencies::with_capacity(1 << 14);
        let started = Instant::now();
        let mut reads = 0u64;
        while reads < max_reads && (reads == 0 || started.elapsed() < duration) {
            let t = Instant::now();
            let events = engine
                .read_stream(ReadStream::forwards(stream.clone()))
                .await?;
            lat.push(t.elapsed());
            if events.len() as u64 != STREAM_EVENTS {
                return Err(BenchError::failure(format!(
                    "read {} events of {stream}, expected {STREAM_EVENTS}",
                    events.len()
                )));
            }
            reads += 1;
        }
        Ok((reads, started.elapsed(), lat))
    })?;
    engine.close()?;
    let (p50, p99) = lat.p50_p99_us();
    let events = reads * STREAM_EVENTS;
    let mut r = ctx.report(Workload::ReadStream);
    r.events = events;
    r.seconds = elapsed.as_secs_f64();
    r.events_per_sec = Some(rate(events, elapsed));
    r.p50_us = p50;
    r.p99_us = p99;
    r.latency_of = "one full forwards read of a 1,000-event stream";
    r.target = "p99 ≤200 µs per read".into();
    r.target_met = p99.map(|p| p <= 200.0);
    r.durability = "none (load only; the read is unaffected)".into();
    r.notes.push(format!(
        "{reads} reads; the stream's events are interleaved 10 per 100 with 10 other streams; store reopened; page cache warm"
    ));
    Ok(r)
}

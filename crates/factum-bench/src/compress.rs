//! Compressed sealed segments (issue 18, ADR 43), on events shaped like
//! the seeds' (`factum_core::testkit::shaped`: JSON order and account
//! events with correlation metadata, ~400 bytes): one store is loaded,
//! measured, compacted, and measured again in the same run, so the
//! baseline is the same events on uncompressed segments.
//! - `compressed-ratio`: bytes of the sealed segments before / after
//!   (target ≥ 3×), and the compaction's rate.
//! - `compressed-read-all`: `$all` forwards in pages of 10,000 (target ≥
//!   0.5 of the uncompressed rate).
//! - `compressed-read-stream`: full reads of random 10-event streams
//!   (target p99 ≤ 2× uncompressed).

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use factum_core::testkit::shaped::seed_shaped;
use factum_core::{EventStore, ExpectedRevision, ReadStream, StreamName};
use factum_engine::{CompactReport, CompressPolicy, Durability, Engine, EngineConfig, Throttle};

use crate::error::BenchError;
use crate::util::{median, rate, read_all_pages, Latencies};
use crate::{Ctx, Report, Workload};

/// Events per `read_all` page.
const PAGE: u64 = 10_000;

fn open(dir: &std::path::Path, durability: Durability, quick: bool) -> Result<Engine, BenchError> {
    let config = EngineConfig {
        durability,
        segment_bytes: if quick { 8 << 20 } else { 64 << 20 },
        ..EngineConfig::default()
    };
    Ok(Engine::open_with(dir, config)?.0)
}

/// Loads `total` seed-shaped events (ten to a stream, one append each)
/// into `<workload dir>/store`, then reopens it durable. Returns it, its
/// directory and the stream count.
fn load(
    ctx: &Ctx,
    workload: Workload,
    total: u64,
) -> Result<(Engine, std::path::PathBuf, u64, f64), BenchError> {
    let dir = ctx.dir(workload.name())?.join("store");
    let started = Instant::now();
    {
        let engine = open(&dir, Durability::None, ctx.quick)?;
        ctx.rt.block_on(async {
            let mut i = 0u64;
            while i < total {
                let (stream, _) = seed_shaped(i);
                let n = 10.min(total - i);
                let events = (i..i + n).map(|k| seed_shaped(k).1).collect();
                engine.append(stream, ExpectedRevision::Any, events).await?;
                i += n;
            }
            Ok::<_, BenchError>(())
        })?;
        engine.close()?;
    }
    let load_secs = started.elapsed().as_secs_f64();
    Ok((
        open(&dir, Durability::Always, ctx.quick)?,
        dir,
        total.div_ceil(10),
        load_secs,
    ))
}

/// The same store twice, one copy compacted: measurements alternate
/// between the two, so a noisy machine slows both alike.
struct Pair {
    plain: Engine,
    compressed: Engine,
    compaction: CompactReport,
    streams: u64,
}

fn pair(ctx: &Ctx, workload: Workload, total: u64) -> Result<Pair, BenchError> {
    let (engine, dir, streams, _) = load(ctx, workload, total)?;
    engine.close()?;
    drop(engine);
    let copy = dir.with_file_name("plain");
    std::fs::create_dir_all(&copy)?;
    for e in std::fs::read_dir(&dir)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), copy.join(e.file_name()))?;
        }
    }
    let compressed = open(&dir, Durability::Always, ctx.quick)?;
    let compaction = compact(&compressed)?;
    Ok(Pair {
        plain: open(&copy, Durability::Always, ctx.quick)?,
        compressed,
        compaction,
        streams,
    })
}

fn compact(engine: &Engine) -> Result<CompactReport, BenchError> {
    let r = engine.compact(
        CompressPolicy::Sealed,
        Throttle::None,
        &AtomicBool::new(false),
    )?;
    if r.compressed == 0 {
        return Err(BenchError::failure(
            "no sealed segment to compress: load more events".to_string(),
        ));
    }
    Ok(r)
}

fn total(ctx: &Ctx) -> u64 {
    ctx.cap(if ctx.quick { 200_000 } else { 1_000_000 })
}

/// `compressed-ratio`: see the module doc.
pub fn ratio(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let total = total(ctx);
    let (engine, _, _, load_secs) = load(ctx, Workload::CompressedRatio, total)?;
    let r = compact(&engine)?;
    let after = engine.log_bytes()?;
    engine.close()?;
    let ratio = r.ratio();
    let mut report = ctx.report(Workload::CompressedRatio);
    report.events = total;
    report.seconds = r.elapsed.as_secs_f64();
    report.bytes_per_sec = Some(r.bytes_before as f64 / r.elapsed.as_secs_f64().max(1e-9));
    report.ratio = Some(ratio);
    report.target = "sealed segments ≥ 3× smaller compressed".into();
    report.target_met = Some(ratio >= 3.0);
    report.latency_of = "-";
    report.durability = "none for the load; the compaction fsyncs each segment".into();
    report.notes = vec![
        format!(
            "{} sealed segments: {} → {} bytes (zstd level {}, blocks of {} KiB); whole log now {after} bytes",
            r.compressed,
            r.bytes_before,
            r.bytes_after,
            factum_engine::compress::LEVEL,
            factum_engine::compress::BLOCK_BYTES >> 10
        ),
        format!("{total} seed-shaped events loaded in {load_secs:.2} s; bytes_per_sec is the compaction's rate over uncompressed bytes"),
    ];
    Ok(report)
}

/// One pass over `$all`: events/s and per-page latencies.
fn read_all_pass(ctx: &Ctx, engine: &Engine, expect: u64) -> Result<(f64, Latencies), BenchError> {
    let (n, elapsed, lat) = ctx.rt.block_on(read_all_pages(engine, PAGE))?;
    if n != expect {
        return Err(BenchError::failure(format!(
            "read {n} events from $all, expected {expect}"
        )));
    }
    Ok((rate(n, elapsed), lat))
}

/// `compressed-read-all`: see the module doc. Five passes over each copy,
/// alternating; the medians are compared.
pub fn read_all(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let total = total(ctx);
    let p = pair(ctx, Workload::CompressedReadAll, total)?;
    let (mut plain, mut compressed) = (Vec::new(), Vec::new());
    let mut lat = Latencies::default();
    for _ in 0..5 {
        plain.push(read_all_pass(ctx, &p.plain, total)?.0);
        let (eps, l) = read_all_pass(ctx, &p.compressed, total)?;
        compressed.push(eps);
        lat.extend(l);
    }
    p.plain.close()?;
    p.compressed.close()?;
    let (plain, compressed) = (median(plain), median(compressed));
    let (p50, p99) = lat.p50_p99_us();
    let ratio = compressed / plain;
    let c = p.compaction;
    let mut r = ctx.report(Workload::CompressedReadAll);
    r.events = total;
    r.seconds = total as f64 / compressed;
    r.events_per_sec = Some(compressed);
    r.baseline_events_per_sec = Some(plain);
    r.ratio = Some(ratio);
    r.p50_us = p50;
    r.p99_us = p99;
    r.latency_of = "one read_all page of 10,000 events";
    r.target = "≥ 0.5 × the same read on uncompressed segments".into();
    r.target_met = Some(ratio >= 0.5);
    r.durability = "none (load only; the read is unaffected)".into();
    r.notes = vec![format!(
        "{} of the store's segments compressed ({:.2}×), the active one not; medians of 5 passes over each copy, alternating; page cache warm",
        c.compressed,
        c.ratio()
    )];
    Ok(r)
}

/// Full forwards reads of random streams for `duration`.
fn read_streams(
    ctx: &Ctx,
    engine: &Engine,
    streams: &[StreamName],
    duration: Duration,
) -> Result<(f64, Latencies), BenchError> {
    ctx.rt.block_on(async {
        let mut lat = Latencies::with_capacity(1 << 16);
        let started = Instant::now();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut events = 0u64;
        while started.elapsed() < duration {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let stream = streams[(x % streams.len() as u64) as usize].clone();
            let t = Instant::now();
            let got = engine.read_stream(ReadStream::forwards(stream)).await?;
            lat.push(t.elapsed());
            events += got.len() as u64;
        }
        Ok::<_, BenchError>((rate(events, started.elapsed()), lat))
    })
}

/// `compressed-read-stream`: see the module doc. Five windows on each
/// copy, alternating; the latencies of each side are pooled.
pub fn read_stream(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let total = total(ctx);
    let window = ctx.secs(0.4, 1.0);
    let p = pair(ctx, Workload::CompressedReadStream, total)?;
    // Entity k's stream holds events 10k..10k+9; named once, not in the
    // measured loop.
    let names: Vec<StreamName> = (0..p.streams).map(|k| seed_shaped(k * 10).0).collect();
    let (mut plain_lat, mut lat) = (Latencies::default(), Latencies::default());
    let (mut plain_eps, mut eps) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (e, l) = read_streams(ctx, &p.plain, &names, window)?;
        plain_eps.push(e);
        plain_lat.extend(l);
        let (e, l) = read_streams(ctx, &p.compressed, &names, window)?;
        eps.push(e);
        lat.extend(l);
    }
    p.plain.close()?;
    p.compressed.close()?;
    let (plain_eps, eps) = (median(plain_eps), median(eps));
    let (_, plain_p99) = plain_lat.p50_p99_us();
    let (p50, p99) = lat.p50_p99_us();
    let p99_ratio = match (p99, plain_p99) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let c = p.compaction;
    let mut r = ctx.report(Workload::CompressedReadStream);
    r.events = lat.len() as u64 * 10;
    r.seconds = 5.0 * window.as_secs_f64();
    r.events_per_sec = Some(eps);
    r.baseline_events_per_sec = Some(plain_eps);
    r.ratio = p99_ratio;
    r.p50_us = p50;
    r.p99_us = p99;
    r.latency_of = "one full forwards read of a random 10-event stream";
    r.target =
        "p99 ≤ 2× the same reads on uncompressed segments (ratio = p99 / uncompressed p99)".into();
    r.target_met = p99_ratio.map(|q| q <= 2.0);
    r.durability = "none (load only; the read is unaffected)".into();
    r.notes = vec![
        format!(
            "uncompressed: p99 {:.1} µs, {:.0} events/s; {} segments compressed ({:.2}×)",
            plain_p99.unwrap_or(0.0),
            plain_eps,
            c.compressed,
            c.ratio()
        ),
        format!("{} streams; 5 windows of {:.1} s on each copy, alternating; 64 MiB block caches; page cache warm", p.streams, window.as_secs_f64()),
    ];
    Ok(r)
}

//! `scavenge` (ADR 33): a store where half of the events are hidden (each
//! `hidden-…` stream truncated to its last event by `$tb`), in sealed
//! segments; the scavenge's throughput (bytes of the segments it reads and
//! rewrites, per second) against a raw copy of the same segment files
//! (read, write, fsync each, in the same run, from the same page cache).
//! Target: at least half the raw copy's rate.

use std::io::Write;
use std::time::{Duration, Instant};

use factum_core::{EventStore, ExpectedRevision, StreamMetadata, StreamName};
use factum_engine::scavenge::ScavengeEnd;
use factum_engine::{Durability, Engine, EngineConfig, ScavengeOptions};

use crate::error::BenchError;
use crate::util::{event, payload};
use crate::{Ctx, Report, Workload};

const EVENT_BYTES: usize = 256;
/// Events per append when loading.
const BATCH: u64 = 100;
/// Streams of each kind.
const STREAMS: u64 = 100;

fn open(
    dir: &std::path::Path,
    durability: Durability,
    segment_bytes: u64,
) -> Result<Engine, BenchError> {
    let config = EngineConfig {
        durability,
        segment_bytes,
        ..EngineConfig::default()
    };
    Ok(Engine::open_with(dir, config)?.0)
}

/// Copies every sealed segment of `from` into `to`, fsyncing each file
/// and the directory: what a rewrite of the same bytes costs at least.
fn raw_copy(from: &std::path::Path, to: &std::path::Path) -> Result<(u64, Duration), BenchError> {
    std::fs::create_dir_all(to)?;
    let mut names: Vec<_> = std::fs::read_dir(from)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    // The active segment is not scavenged.
    names.pop();
    let started = Instant::now();
    let mut bytes = 0;
    for n in names {
        let data = std::fs::read(from.join(&n))?;
        let mut f = std::fs::File::create(to.join(&n))?;
        f.write_all(&data)?;
        f.sync_all()?;
        bytes += data.len() as u64;
    }
    std::fs::File::open(to)?.sync_all()?;
    Ok((bytes, started.elapsed()))
}

/// `scavenge`: see the module doc.
pub fn scavenge(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let dir = ctx.dir(Workload::Scavenge.name())?;
    let store = dir.join("store");
    let total = ctx.cap(if ctx.quick { 200_000 } else { 2_000_000 });
    let segment_bytes: u64 = if ctx.quick { 4 << 20 } else { 64 << 20 };
    let data = payload(EVENT_BYTES);
    {
        let engine = open(&store, Durability::None, segment_bytes)?;
        ctx.rt.block_on(async {
            let mut loaded = 0u64;
            let mut i = 0u64;
            while loaded < total {
                let kind = if i.is_multiple_of(2) {
                    "hidden"
                } else {
                    "kept"
                };
                let stream = StreamName::new(format!("{kind}-{}", (i / 2) % STREAMS))?;
                let n = BATCH.min(total - loaded);
                let events = (0..n).map(|_| event(&data)).collect();
                engine.append(stream, ExpectedRevision::Any, events).await?;
                loaded += n;
                i += 1;
            }
            for s in 0..STREAMS {
                let stream = StreamName::new(format!("hidden-{s}"))?;
                let meta = StreamMetadata {
                    truncate_before: Some(u64::MAX >> 2),
                    ..StreamMetadata::default()
                };
                engine
                    .set_stream_metadata(stream, ExpectedRevision::Any, meta)
                    .await?;
            }
            // Filler so that every hidden event lies in a sealed segment
            // behind the index checkpoint.
            let filler = StreamName::new("filler-1")?;
            for _ in 0..(segment_bytes / (BATCH * 300) + 2) {
                let events = (0..BATCH).map(|_| event(&data)).collect();
                engine
                    .append(filler.clone(), ExpectedRevision::Any, events)
                    .await?;
            }
            Ok::<_, BenchError>(())
        })?;
        engine.close()?;
    }
    let engine = open(&store, Durability::Always, segment_bytes)?;
    let (copied, copy_time) = raw_copy(&store, &dir.join("copy"))?;
    let status = engine.scavenge(ScavengeOptions::default())?;
    engine.close()?;
    if status.end != ScavengeEnd::Completed {
        return Err(BenchError::failure(format!(
            "the scavenge ended {:?}",
            status.end
        )));
    }
    let r = &status.report;
    let rate = r.bytes_before as f64 / r.elapsed.as_secs_f64().max(1e-9);
    let baseline = copied as f64 / copy_time.as_secs_f64().max(1e-9);
    let ratio = rate / baseline;
    let mut report = ctx.report(Workload::Scavenge);
    report.events = total;
    report.seconds = r.elapsed.as_secs_f64();
    report.bytes_per_sec = Some(rate);
    report.baseline_bytes_per_sec = Some(baseline);
    report.ratio = Some(ratio);
    report.target = "scavenge ≥ 0.5 × a raw copy of the same segments".into();
    report.target_met = Some(ratio >= 0.5);
    report.latency_of = "-";
    report.notes = vec![
        format!(
            "{} segments ({} bytes) read, {} rewritten, {} events removed, {} bytes freed",
            r.segments_done,
            r.bytes_before,
            r.segments_rewritten,
            r.events_removed,
            r.bytes_freed()
        ),
        format!("raw copy: {copied} bytes in {copy_time:.2?} (read + write + fsync per file)"),
        "both from the page cache the load left; the store loaded without fsync".into(),
    ];
    Ok(report)
}

//! `open`: build a large store (many streams), close it, and time a reopen
//! in a fresh child process (`factum bench-open-probe`), whose peak RSS
//! (VmHWM) is then the reopen's own and not the load's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use factum_core::{EventStore, ExpectedRevision, StreamName};
use factum_engine::{Durability, Engine, EngineConfig};

use super::util::{event, log_bytes, open_engine, payload, proc_status_kb, rate};
use super::{Ctx, Report, Workload};
use crate::error::CliError;

const EVENT_BYTES: usize = 256;
/// Concurrent loading tasks.
const LOADERS: u64 = 64;
/// The target size.
const TARGET_EVENTS: u64 = 10_000_000;
const TARGET_STREAMS: u64 = 1_000_000;

/// Arguments of the hidden `factum bench-open-probe`.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// The store to open.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
}

/// What the probe prints (one JSON line).
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct Probe {
    /// Time of `Engine::open_with`.
    pub open_seconds: f64,
    /// Frames recovery replayed.
    pub frames_replayed: u64,
    /// Events in the store.
    pub events: u64,
    /// Peak RSS of the probe process, kB.
    pub vm_hwm_kb: Option<u64>,
}

/// Runs `factum bench-open-probe`: opens, measures, closes.
pub fn probe(args: ProbeArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let (engine, recovery) = Engine::open_with(&args.data, EngineConfig::default())?;
    let open_seconds = started.elapsed().as_secs_f64();
    let events = engine.reader().committed().next_position;
    let vm_hwm_kb = proc_status_kb("VmHWM");
    engine.close()?;
    let p = Probe {
        open_seconds,
        frames_replayed: recovery.frames_replayed,
        events,
        vm_hwm_kb,
    };
    println!(
        "{}",
        serde_json::to_string(&p).map_err(|e| CliError::failure(e.to_string()))?
    );
    Ok(())
}

/// `open`.
pub fn open(ctx: &mut Ctx) -> Result<Report, CliError> {
    let dir = ctx.dir(Workload::Open.name())?;
    let default_events = if ctx.quick { 1_000_000 } else { TARGET_EVENTS };
    let events = ctx.cap(ctx.open_events.unwrap_or(default_events)).max(1);
    let streams = ctx.open_streams.unwrap_or(events / 10).clamp(1, events);
    let data = payload(EVENT_BYTES);
    let load_started = Instant::now();
    {
        let engine = Arc::new(open_engine(&dir, Durability::None)?);
        ctx.rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for loader in 0..LOADERS.min(streams) {
                let engine = engine.clone();
                let data = data.clone();
                tasks.spawn(async move {
                    // Stream s gets events/streams events (the first
                    // events % streams streams one more), in one append.
                    let mut s = loader;
                    while s < streams {
                        let n = events / streams + u64::from(s < events % streams);
                        let name = StreamName::new(format!("open-{s}"))?;
                        let batch = (0..n).map(|_| event(&data)).collect();
                        engine.append(name, ExpectedRevision::Any, batch).await?;
                        s += LOADERS;
                    }
                    Ok::<_, CliError>(())
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.map_err(|e| CliError::failure(format!("a loading task failed: {e}")))??;
            }
            Ok::<_, CliError>(())
        })?;
        engine.close()?;
    }
    let load = load_started.elapsed();
    let index_bytes = std::fs::metadata(dir.join(factum_engine::index::INDEX_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    let exe = std::env::current_exe()
        .map_err(|e| CliError::failure(format!("cannot find the factum binary: {e}")))?;
    let output = std::process::Command::new(exe)
        .arg("bench-open-probe")
        .arg("--data")
        .arg(&dir)
        .env_remove("FACTUM_DATA")
        .output()
        .map_err(|e| CliError::failure(format!("cannot run the open probe: {e}")))?;
    if !output.status.success() {
        return Err(CliError::failure(format!(
            "the open probe failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let probe: Probe = serde_json::from_slice(&output.stdout).map_err(|e| {
        CliError::failure(format!("the open probe printed something unexpected: {e}"))
    })?;
    if probe.events != events {
        return Err(CliError::failure(format!(
            "the reopened store has {} events, expected {events}",
            probe.events
        )));
    }
    let rss_mb = probe.vm_hwm_kb.map(|kb| kb as f64 / 1024.0);
    let mut r = ctx.report(Workload::Open);
    r.events = events;
    r.seconds = probe.open_seconds;
    r.events_per_sec = None;
    r.p50_us = None;
    r.p99_us = None;
    r.latency_of = "not sampled: one reopen, timed in `seconds`";
    r.peak_rss_mb = rss_mb;
    r.target = "reopen ≤2 s and peak RSS ≤300 MB at 10M events in 1M streams".into();
    r.target_met = Some(probe.open_seconds <= 2.0 && rss_mb.is_some_and(|m| m <= 300.0));
    r.durability = "none (load only; the reopen is unaffected)".into();
    r.notes.push(format!(
        "{events} events in {streams} streams; loaded in {:.1} s ({:.0} events/s, {LOADERS} loaders, one append per stream); log {} MB, index {} MB; {} frames replayed at reopen",
        load.as_secs_f64(),
        rate(events, load),
        log_bytes(&dir) >> 20,
        index_bytes >> 20,
        probe.frames_replayed
    ));
    if events < TARGET_EVENTS || streams < TARGET_STREAMS {
        r.notes.push(
            "smaller than the target's 10M events / 1M streams: the verdict holds for this size only (run without --quick, or with --open-events 10000000 --open-streams 1000000, for the target size)"
                .into(),
        );
    }
    Ok(r)
}

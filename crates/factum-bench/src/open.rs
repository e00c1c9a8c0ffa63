//! `open`: build a large store (many streams), close it, and time a reopen
//! in a fresh child process (`factum-bench open-probe`), whose peak RSS
//! (VmHWM) is then the reopen's own and not the load's. Then crash a
//! process that appended just short of an index flush (SIGKILL, so the
//! index memtable is lost) and time the reopen that replays that log tail.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use factum_core::{EventStore, ExpectedRevision, StreamName};
use factum_engine::{Durability, Engine, EngineConfig};

use crate::error::BenchError;
use crate::util::{event, open_engine, payload, proc_status_kb, rate};
use crate::{Ctx, Report, Workload};

const EVENT_BYTES: usize = 256;
/// Concurrent loading tasks.
const LOADERS: u64 = 64;
/// The target size.
const TARGET_EVENTS: u64 = 10_000_000;
const TARGET_STREAMS: u64 = 1_000_000;

/// Arguments of the hidden `factum-bench open-probe`.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// The store to open.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Instead of timing a reopen: append this many single events to the
    /// store's streams (`open-0` … `open-<STREAMS-1>`), print one line, and
    /// wait to be killed, leaving them unindexed in redb.
    #[arg(long, value_name = "N")]
    pub crash_fill: Option<u64>,
    /// Streams of the store (with `--crash-fill`).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub streams: u64,
}

/// Index revisions per event of the fill: its stream, `$ce-open`, `$et-Bench`.
const REVISIONS_PER_EVENT: u64 = 3;

/// The fill of `--crash-fill`: single events spread over the streams (each
/// replayed event then touches another stream record), by concurrent tasks.
fn crash_fill(args: &ProbeArgs, n: u64) -> Result<(), BenchError> {
    let engine = Arc::new(open_engine(&args.data, Durability::None)?);
    let streams = args.streams.max(1);
    let data = payload(EVENT_BYTES);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .map_err(|e| BenchError::failure(format!("cannot start a runtime: {e}")))?;
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..LOADERS {
            let engine = engine.clone();
            let data = data.clone();
            tasks.spawn(async move {
                let mut i = t;
                while i < n {
                    let s = i.wrapping_mul(7919) % streams;
                    let name = StreamName::new(format!("open-{s}"))?;
                    engine
                        .append(name, ExpectedRevision::Any, vec![event(&data)])
                        .await?;
                    i += LOADERS;
                }
                Ok::<_, BenchError>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| BenchError::failure(format!("a fill task failed: {e}")))??;
        }
        Ok::<_, BenchError>(())
    })?;
    println!("filled {n}");
    std::io::Write::flush(&mut std::io::stdout())
        .map_err(|e| BenchError::failure(format!("stdout: {e}")))?;
    // Wait to be killed: the engine is never closed, so its memtable is lost.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Runs the probe in a child process and reads its report.
fn run_probe(dir: &std::path::Path) -> Result<Probe, BenchError> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::failure(format!("cannot find the factum-bench binary: {e}")))?;
    let output = std::process::Command::new(exe)
        .arg("open-probe")
        .arg("--data")
        .arg(dir)
        .env_remove("FACTUM_DATA")
        .output()
        .map_err(|e| BenchError::failure(format!("cannot run the open probe: {e}")))?;
    if !output.status.success() {
        return Err(BenchError::failure(format!(
            "the open probe failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| {
        BenchError::failure(format!("the open probe printed something unexpected: {e}"))
    })
}

/// Fills the store in a child process, kills it with SIGKILL once filled.
fn crash_after_fill(dir: &std::path::Path, streams: u64, n: u64) -> Result<(), BenchError> {
    use std::io::BufRead;
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::failure(format!("cannot find the factum-bench binary: {e}")))?;
    let mut child = std::process::Command::new(exe)
        .arg("open-probe")
        .arg("--data")
        .arg(dir)
        .arg("--crash-fill")
        .arg(n.to_string())
        .arg("--streams")
        .arg(streams.to_string())
        .env_remove("FACTUM_DATA")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::failure(format!("cannot run the fill probe: {e}")))?;
    let mut line = String::new();
    let read = std::io::BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .map_err(|e| BenchError::failure(format!("reading the fill probe: {e}")));
    // SIGKILL: nothing of the engine's shutdown (index flush) runs.
    let _ = child.kill();
    let status = child
        .wait()
        .map_err(|e| BenchError::failure(format!("waiting for the fill probe: {e}")))?;
    read?;
    if !line.starts_with("filled") {
        return Err(BenchError::failure(format!(
            "the fill probe ended ({status}) before filling the store"
        )));
    }
    Ok(())
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

/// Runs `factum-bench open-probe`: opens, measures, closes.
pub fn probe(args: ProbeArgs) -> Result<(), BenchError> {
    if let Some(n) = args.crash_fill {
        return crash_fill(&args, n);
    }
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
        serde_json::to_string(&p).map_err(|e| BenchError::failure(e.to_string()))?
    );
    Ok(())
}

/// `open`.
pub fn open(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let dir = ctx.dir(Workload::Open.name())?;
    let default_events = if ctx.quick { 1_000_000 } else { TARGET_EVENTS };
    let events = ctx.cap(ctx.open_events.unwrap_or(default_events)).max(1);
    let streams = ctx.open_streams.unwrap_or(events / 10).clamp(1, events);
    let data = payload(EVENT_BYTES);
    let load_started = Instant::now();
    let log_mb = {
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
                    Ok::<_, BenchError>(())
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.map_err(|e| BenchError::failure(format!("a loading task failed: {e}")))??;
            }
            Ok::<_, BenchError>(())
        })?;
        let log_bytes = engine.log_bytes()?;
        engine.close()?;
        log_bytes >> 20
    };
    let load = load_started.elapsed();
    let index_bytes = std::fs::metadata(dir.join(factum_engine::index::INDEX_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    let probe = run_probe(&dir)?;
    if probe.events != events {
        return Err(BenchError::failure(format!(
            "the reopened store has {} events, expected {events}",
            probe.events
        )));
    }
    // A crash just short of an index flush: the most log a reopen replays.
    let flush_at = EngineConfig::default().index_flush_entries as u64;
    let fill = ctx.cap(flush_at / REVISIONS_PER_EVENT * 99 / 100).max(1);
    crash_after_fill(&dir, streams, fill)?;
    let crashed = run_probe(&dir)?;
    if crashed.events != events + fill {
        return Err(BenchError::failure(format!(
            "the store reopened after the crash has {} events, expected {}",
            crashed.events,
            events + fill
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
    r.crash_reopen_seconds = Some(crashed.open_seconds);
    r.target = "reopen ≤2 s and peak RSS ≤300 MB at 10M events in 1M streams".into();
    r.target_met = Some(probe.open_seconds <= 2.0 && rss_mb.is_some_and(|m| m <= 300.0));
    r.durability = "none (load only; the reopen is unaffected)".into();
    r.notes.push(format!(
        "{events} events in {streams} streams; loaded in {:.1} s ({:.0} events/s, {LOADERS} loaders, one append per stream); log {} MB, index {} MB; {} frames replayed at reopen",
        load.as_secs_f64(),
        rate(events, load),
        log_mb,
        index_bytes >> 20,
        probe.frames_replayed
    ));
    r.notes.push(format!(
        "after a crash (SIGKILL) of a process that appended {fill} single events over the streams ({} index revisions in its memtable, flush at {flush_at}): reopen {:.2} s replaying {} frames",
        fill * REVISIONS_PER_EVENT,
        crashed.open_seconds,
        crashed.frames_replayed
    ));
    if events < TARGET_EVENTS || streams < TARGET_STREAMS {
        r.notes.push(
            "smaller than the target's 10M events / 1M streams: the verdict holds for this size only (run without --quick, or with --open-events 10000000 --open-streams 1000000, for the target size)"
                .into(),
        );
    }
    Ok(r)
}

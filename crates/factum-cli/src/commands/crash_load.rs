//! `factum crash-load` (hidden): appends forever, durably, from concurrent
//! tasks and prints one line per acknowledged append, flushed at once, so a
//! parent that kills the process knows exactly what was acknowledged:
//!
//! `ack <stream> <first_revision> <last_revision> <last_position> <count>`
//!
//! Each event's data is JSON `{"stream":…,"id":…,"task":…,"seq":…}` where
//! `id` is the event id (a UUID independent of revisions), so the parent can
//! check every event's contents after recovery.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use factum_core::{EventData, EventStore, ExpectedRevision, StreamName, Uuid};
use factum_engine::{Durability, EngineConfig};

use super::{open, runtime};
use crate::error::CliError;

/// Arguments of `factum crash-load`.
#[derive(Args, Debug)]
pub struct CrashLoadArgs {
    /// The store's directory (created when missing).
    #[arg(long, env = "FACTUM_DATA", value_name = "DIR")]
    pub data: PathBuf,
    /// Number of streams (`crash-0` … `crash-<N-1>`).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub streams: u64,
    /// Largest batch (events per append); each batch has 1..=N events.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch_max: u64,
    /// Concurrent appending tasks.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub tasks: u64,
}

/// A small xorshift generator (no dependency needed for test load).
pub struct Rng(u64);

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl Rng {
    /// Seeded from a random UUID.
    pub fn new() -> Self {
        let (hi, lo) = Uuid::new_v4().as_u64_pair();
        Rng((hi ^ lo) | 1)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs `factum crash-load` until killed (or until an append fails).
pub fn run(args: CrashLoadArgs) -> Result<(), CliError> {
    let config = EngineConfig {
        durability: Durability::Always,
        ..EngineConfig::default()
    };
    let engine = Arc::new(open(&args.data, config)?);
    let rt = runtime()?;
    let streams: Arc<Vec<StreamName>> = Arc::new(
        (0..args.streams)
            .map(|i| StreamName::new(format!("crash-{i}")).expect("valid name"))
            .collect(),
    );
    let result: Result<(), CliError> = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..args.tasks {
            let engine = engine.clone();
            let streams = streams.clone();
            let batch_max = args.batch_max;
            tasks.spawn(load_task(engine, streams, batch_max, task));
        }
        match tasks.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(CliError::failure(format!("a load task failed: {e}"))),
            None => Ok(()),
        }
    });
    let _ = engine.close();
    result
}

/// One appending task: random streams, random batch sizes, forever.
async fn load_task(
    engine: Arc<factum_engine::Engine>,
    streams: Arc<Vec<StreamName>>,
    batch_max: u64,
    task: u64,
) -> Result<(), CliError> {
    let mut rng = Rng::new();
    let mut seq = 0u64;
    loop {
        let stream = streams[rng.below(streams.len() as u64) as usize].clone();
        let count = 1 + rng.below(batch_max);
        let events: Vec<EventData> = (0..count)
            .map(|_| {
                seq += 1;
                let id = Uuid::new_v4();
                let data = serde_json::json!({
                    "stream": stream.as_str(),
                    "id": id.to_string(),
                    "task": task,
                    "seq": seq,
                });
                EventData::json("CrashLoad", &data)
                    .expect("a JSON value serializes")
                    .with_id(id)
            })
            .collect();
        let r = engine
            .append(stream.clone(), ExpectedRevision::Any, events)
            .await?;
        let first = r.revision.0 + 1 - count;
        let line = format!(
            "ack {stream} {first} {} {} {count}\n",
            r.revision, r.position
        );
        let mut out = std::io::stdout().lock();
        out.write_all(line.as_bytes())?;
        out.flush()?;
    }
}

//! `factum scavenge` (ADR 33): removes what no read can see any more from
//! a store no server holds (a served store is scavenged through the
//! server: `POST /admin/scavenge`, the Operations service, or its
//! `--scavenge-schedule`).

use std::path::PathBuf;

use clap::Args;
use factum_engine::scavenge::ScavengeEnd;
use factum_engine::{ScavengeOptions, Throttle};

use super::{ensure_store, open};
use crate::error::CliError;

/// Arguments of `factum scavenge`.
#[derive(Args, Debug)]
pub struct ScavengeArgs {
    /// The store's directory (not held by a running server).
    #[arg(long, env = "FACTUM_DATA", value_name = "DIR")]
    pub data: PathBuf,
    /// Busy this percentage of the time, resting the rest (1–100, as
    /// KurrentDB's `throttlePercent`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub throttle_percent: u8,
    /// At most this many bytes read and written per second (overrides
    /// `--throttle-percent`).
    #[arg(long, value_name = "BYTES")]
    pub bytes_per_second: Option<u64>,
    /// The first segment to look at.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub start_from_segment: u32,
}

/// Runs `factum scavenge`.
pub fn run(args: ScavengeArgs) -> Result<(), CliError> {
    ensure_store(&args.data)?;
    let engine = match open(&args.data, super::engine_config(None)?) {
        Ok(e) => e,
        Err(e) if e.message.contains("locked") => {
            return Err(CliError::failure(format!(
                "{}; while a server holds the store, ask it: curl -X POST http://HOST:2113/admin/scavenge",
                e.message
            )))
        }
        Err(e) => return Err(e),
    };
    let throttle = match args.bytes_per_second {
        Some(rate) => Throttle::BytesPerSecond(rate),
        None => Throttle::Percent(args.throttle_percent),
    };
    let status = engine.scavenge(ScavengeOptions {
        throttle,
        start_from_segment: args.start_from_segment,
        ..ScavengeOptions::default()
    });
    let closed = engine.close();
    let status = status?;
    closed?;
    let r = &status.report;
    println!("scavenge       {}", status.id);
    println!(
        "segments       {} looked at, {} rewritten",
        r.segments_done, r.segments_rewritten
    );
    println!(
        "events         {} removed, {} stubs",
        r.events_removed, r.stubs
    );
    println!(
        "bytes          {} → {} ({} freed)",
        r.bytes_before,
        r.bytes_after,
        r.bytes_freed()
    );
    println!("time           {:.2?}", r.elapsed);
    match status.end {
        ScavengeEnd::Completed => Ok(()),
        ScavengeEnd::Stopped => Err(CliError::failure("the scavenge was stopped".to_string())),
        ScavengeEnd::Failed(why) => Err(CliError::failure(format!(
            "the scavenge failed (the segment it was rewriting keeps its old version): {why}"
        ))),
        ScavengeEnd::Running => Err(CliError::failure("the scavenge did not end".to_string())),
    }
}

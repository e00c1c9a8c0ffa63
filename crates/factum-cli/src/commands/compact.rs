//! `factum compact` and `factum serve --compress-segments` (issue 18,
//! ADR 43): sealed segments rewritten compressed through the engine's
//! crash-safe segment rewrite.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use factum_engine::{CompressPolicy, Engine, Throttle};

use super::{ensure_store, open};
use crate::error::CliError;

/// Arguments of `factum compact`.
#[derive(Args, Debug)]
pub struct CompactArgs {
    /// The store's directory (not held by a running server).
    #[arg(long, env = "FACTUM_DATA", value_name = "DIR")]
    pub data: PathBuf,
    /// Which sealed segments: `sealed` (all of them) or an age such as
    /// `30d`, `12h` (sealed at least that long).
    #[arg(long, default_value = "sealed", value_name = "WHEN")]
    pub older_than: String,
    /// At most this many bytes read and written per second.
    #[arg(long, value_name = "BYTES")]
    pub bytes_per_second: Option<u64>,
}

/// Parses a `--compress-segments` / `--older-than` value (usage error when bad).
pub fn policy(flag: &str, value: &str) -> Result<CompressPolicy, CliError> {
    CompressPolicy::parse(value).map_err(|e| CliError::usage(format!("{flag}: {e}")))
}

/// Runs `factum compact`.
pub fn run(args: CompactArgs) -> Result<(), CliError> {
    let policy = match policy("--older-than", &args.older_than)? {
        CompressPolicy::Off => {
            return Err(CliError::usage(
                "--older-than off compresses nothing: give `sealed` or an age".to_string(),
            ))
        }
        p => p,
    };
    ensure_store(&args.data)?;
    let engine = match open(&args.data, super::engine_config(None)?) {
        Ok(e) => e,
        Err(e) if e.message.contains("locked") => {
            return Err(CliError::failure(format!(
                "{}; a server holding the store compresses with --compress-segments",
                e.message
            )))
        }
        Err(e) => return Err(e),
    };
    let throttle = args
        .bytes_per_second
        .map_or(Throttle::None, Throttle::BytesPerSecond);
    let report = engine.compact(policy, throttle, &AtomicBool::new(false));
    let closed = engine.close();
    let r = report?;
    closed?;
    println!(
        "segments       {} sealed, {} compressed now, {} already, {} too recent",
        r.segments, r.compressed, r.already_compressed, r.too_recent
    );
    println!(
        "bytes          {} → {} (ratio {:.2})",
        r.bytes_before,
        r.bytes_after,
        r.ratio()
    );
    println!("time           {:.2?}", r.elapsed);
    Ok(())
}

/// How often a server looks for segments to compress.
const EVERY: Duration = Duration::from_secs(60);

/// A server's storage thread: compresses by `policy`, then archives (when
/// an archive is configured), now and every minute until stopped.
pub struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Starts it (nothing runs for `Off`).
    pub fn start(
        engine: Arc<Engine>,
        policy: CompressPolicy,
        archiving: Option<factum_engine::ArchiveOptions>,
    ) -> Result<Background, CliError> {
        let stop = Arc::new(AtomicBool::new(false));
        if policy == CompressPolicy::Off && archiving.is_none() {
            return Ok(Background { stop, thread: None });
        }
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("factum-storage".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    if let Err(e) = engine.compact(policy, Throttle::None, &flag) {
                        tracing::error!(error = %e, "compressing sealed segments failed; the segment keeps its old version");
                    }
                    if let Some(options) = archiving {
                        if let Err(e) = engine.archive_segments(options, &flag) {
                            tracing::error!(error = %e, "archiving sealed segments failed; local copies stay until a run succeeds");
                        }
                    }
                    let until = std::time::Instant::now() + EVERY;
                    while !flag.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            })
            .map_err(|e| CliError::failure(format!("cannot start the compaction thread: {e}")))?;
        Ok(Background {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops it between frames and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

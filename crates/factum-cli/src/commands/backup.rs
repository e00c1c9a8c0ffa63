//! `factum backup` and `factum restore` (ADR 32).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use factum_engine::{BackupReport, EngineConfig};

use super::{ensure_store, open};
use crate::error::CliError;

/// Arguments of `factum backup`.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The store's directory (not held by a running server: back a served
    /// store up with `POST /admin/backup` on the server instead).
    #[arg(long, env = "FACTUM_DATA", value_name = "DIR")]
    pub data: PathBuf,
    /// Where the backup goes: an empty directory, or one holding an earlier
    /// backup of this store (then only new data is copied).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
}

/// Arguments of `factum restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup's directory.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Where the store is made: a missing or empty directory.
    #[arg(long, env = "FACTUM_DATA", value_name = "DIR")]
    pub data: PathBuf,
    /// Replace the store in a non-empty `--data` directory.
    #[arg(long)]
    pub force: bool,
}

/// Runs `factum backup`.
pub fn backup(args: BackupArgs) -> Result<(), CliError> {
    ensure_store(&args.data)?;
    let started = Instant::now();
    let engine = match open(&args.data, EngineConfig::default()) {
        Ok(e) => e,
        Err(e) if e.message.contains("locked") => {
            return Err(CliError::failure(format!(
                "{}; while a server holds the store, ask it (it writes under its --backup-root): curl -X POST http://HOST:2113/admin/backup -d '{{\"to\": \"NAME\"}}'",
                e.message
            )))
        }
        Err(e) => return Err(e),
    };
    let report = engine.backup(&args.to);
    engine.close()?;
    print(&report?, started, "backed up");
    Ok(())
}

/// Runs `factum restore`, then checks the store it made.
pub fn restore(args: RestoreArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let report = factum_engine::restore(&args.from, &args.data, args.force)?;
    print(&report, started, "restored");
    let check = factum_engine::verify(&args.data)?;
    if !check.ok() {
        return Err(CliError::failure(format!(
            "the restored store at {} fails verify: {} fault(s); the backup is damaged",
            args.data.display(),
            check.faults.len()
        )));
    }
    println!("verify: ok ({} events)", check.events);
    Ok(())
}

fn print(r: &BackupReport, started: Instant, what: &str) {
    println!("position       {}", r.position.0);
    println!("files          {} ({} copied)", r.files, r.files_copied);
    println!(
        "bytes          {} ({} copied)",
        r.bytes_total, r.bytes_copied
    );
    if r.files_checked > 0 {
        println!(
            "checked        {} segment(s) of the same length by checksum",
            r.files_checked
        );
    }
    if r.index_bytes > 0 {
        println!("index          {} bytes (snapshot)", r.index_bytes);
    } else {
        println!("index          none (rebuilt from the log at the first open)");
    }
    println!("{what} in {:.2} s", started.elapsed().as_secs_f64());
}

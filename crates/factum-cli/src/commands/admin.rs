//! `factum verify` and `factum reindex`.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use factum_core::EventStore;
use factum_engine::engine::lock_dir;
use factum_engine::index::INDEX_FILE;
use factum_engine::log::sync_dir;

use super::{ensure_store, runtime};
use crate::error::{one_line, CliError};

/// Arguments of `factum verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The store's directory.
    #[arg(long, env = "FACTUM_DATA", value_name = "DIR")]
    pub data: PathBuf,
    /// With `--archive`: segments that live only in the archive are read
    /// through it and their archived copies checked (size, CRC32C).
    #[command(flatten)]
    pub conn: super::archive::ArchiveConn,
}

/// Arguments of `factum reindex`.
#[derive(Args, Debug)]
pub struct ReindexArgs {
    /// The store's directory.
    #[arg(long, env = "FACTUM_DATA", value_name = "DIR")]
    pub data: PathBuf,
}

/// Runs `factum verify`: exit 0 when the store checks out, 1 on faults.
pub fn verify(args: VerifyArgs) -> Result<(), CliError> {
    ensure_store(&args.data)?;
    let started = Instant::now();
    let key = super::at_rest_key(None, Some(true))?;
    let report = factum_engine::verify_store(&args.data, args.conn.open()?, key.as_ref())?;
    println!("segments       {}", report.segments);
    if report.compressed_segments > 0 || report.archived_segments > 0 {
        println!(
            "               {} compressed, {} only in the archive",
            report.compressed_segments, report.archived_segments
        );
    }
    if let Some(spec) = &args.conn.archive {
        println!(
            "archive        {spec}: {} object(s): {} segment(s) only there (each checked), {} verified copies of local segments",
            report.archive_objects, report.archived_segments, report.archive_copies
        );
    }
    println!("frames         {}", report.frames);
    println!("events         {}", report.events);
    println!("streams        {}", report.streams);
    println!("index runs     {}", report.index_entries);
    if report.preallocated_bytes > 0 {
        println!(
            "preallocated   {} bytes of zeros after the last frame (free space)",
            report.preallocated_bytes
        );
    }
    for note in &report.notes {
        println!("note: {}", one_line(note));
    }
    for fault in &report.faults {
        println!("fault: {}", one_line(fault));
    }
    let secs = started.elapsed().as_secs_f64();
    if report.ok() {
        println!("ok: no fault found ({secs:.2} s)");
        Ok(())
    } else {
        Err(CliError::failure(format!(
            "the store at {} is damaged: {} fault(s) found",
            args.data.display(),
            report.faults.len()
        )))
    }
}

/// Runs `factum reindex`: deletes the index under the store's lock, then
/// opens the store, which rebuilds the index from the log.
pub fn reindex(args: ReindexArgs) -> Result<(), CliError> {
    let dir = &args.data;
    ensure_store(dir)?;
    let index = dir.join(INDEX_FILE);
    {
        let _lock = lock_dir(dir)?;
        match std::fs::metadata(&index) {
            Ok(m) => {
                std::fs::remove_file(&index).map_err(|e| {
                    CliError::failure(format!("cannot delete {}: {e}", index.display()))
                })?;
                sync_dir(dir)?;
                println!("deleted {} ({} bytes)", index.display(), m.len());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("no index file to delete");
            }
            Err(e) => {
                return Err(CliError::failure(format!(
                    "cannot access {}: {e}",
                    index.display()
                )))
            }
        }
        // The lock is released here: opening takes it again.
    }
    let started = Instant::now();
    let (engine, recovery) = factum_engine::Engine::open_with(dir, super::engine_config(None)?)
        .map_err(|e| {
            CliError::from(e).context(format!("rebuilding the index of {}", dir.display()))
        })?;
    let head = runtime()?.block_on(engine.head_position())?;
    engine.close()?;
    // Segments scavenged by a build before ADR 47 hold no link records: the
    // rebuild numbers what they removed of `$ce-`/`$et-` densely (ADR 40).
    let scavenged = factum_engine::log::open_segments(dir)
        .map(|s| {
            s.all().iter().any(|seg| {
                seg.format.scavenged()
                    && seg.format.features & factum_engine::format::FEATURE_LINK_REVISIONS == 0
            })
        })
        .unwrap_or(false);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "rebuilt the index from the log: {} frames replayed in {secs:.2} s",
        recovery.frames_replayed
    );
    match head {
        Some(p) => println!("head position {p}"),
        None => println!("the store is empty"),
    }
    if scavenged {
        println!(
            "note: this store was scavenged by a build before link records (ADR 47); $ce-/$et- streams are numbered again from 0 over the events that remain (their events and positions are unchanged): subscribers that track them by revision should resubscribe by position"
        );
    }
    if let Some((file, offset, bytes)) = &recovery.cut {
        println!(
            "cut a torn write group of {bytes} bytes at offset {offset} of {} (it was never acknowledged)",
            file.display()
        );
    }
    Ok(())
}

/// Arguments of `factum migrate`.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// PostgreSQL connection string (libpq's URL or key=value form; `sslmode`
    /// and `sslrootcert` as in libpq).
    #[arg(long, env = "FACTUM_POSTGRES_URL", value_name = "URL")]
    pub postgres_url: String,
    /// Schema of the store [default: factum].
    #[arg(
        long,
        env = "FACTUM_POSTGRES_SCHEMA",
        value_name = "NAME",
        default_value = "factum"
    )]
    pub postgres_schema: String,
}

/// Runs `factum migrate`: applies pending migrations and says which.
pub fn migrate(args: MigrateArgs) -> Result<(), CliError> {
    let rt = super::runtime()?;
    let applied = rt.block_on(factum_postgres::migrate(
        &args.postgres_url,
        &args.postgres_schema,
    ))?;
    if applied.is_empty() {
        println!("schema {} is up to date", args.postgres_schema);
    } else {
        println!(
            "schema {}: applied migrations {applied:?}",
            args.postgres_schema
        );
    }
    Ok(())
}

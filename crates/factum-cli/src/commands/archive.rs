//! `factum archive`, and the archive settings `serve` and `verify` share
//! (issue 18, ADR 43): sealed segments copied to S3 (or any S3-compatible
//! store) or a directory, local copies evicted after a retention, read back
//! on demand.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use factum_engine::{Archive, ArchiveOptions, CompressPolicy, Engine, EngineConfig};

use super::{ensure_store, open};
use crate::error::CliError;

/// How to reach an S3-compatible store (shared by the archive settings
/// and by backups to object storage).
#[derive(Args, Debug, Clone, Default)]
pub struct S3Options {
    /// The S3 endpoint of an S3-compatible store (MinIO, Ceph, R2, …)
    /// [default: AWS_ENDPOINT_URL, else AWS].
    #[arg(long, env = "FACTUM_ARCHIVE_ENDPOINT", value_name = "URL")]
    pub archive_endpoint: Option<String>,
    /// The S3 region [default: AWS_REGION, else us-east-1].
    #[arg(long, env = "FACTUM_ARCHIVE_REGION", value_name = "REGION")]
    pub archive_region: Option<String>,
    /// Allow a plain-http S3 endpoint (a private network, a test server).
    #[arg(long, env = "FACTUM_ARCHIVE_ALLOW_HTTP")]
    pub archive_allow_http: bool,
}

impl S3Options {
    /// The archive (or backup target) `spec` names: `s3://bucket/prefix`
    /// or a directory.
    pub fn open(&self, spec: &str) -> Result<Arc<dyn Archive>, CliError> {
        let mut options = factum_archive::ArchiveOptions::default();
        options.endpoint = self.archive_endpoint.clone();
        options.region = self.archive_region.clone();
        options.allow_http = self.archive_allow_http;
        factum_archive::open_archive(spec, &options)
            .map_err(|e| CliError::usage(format!("{spec}: {e}")))
    }
}

/// Where the archive is (shared by `archive`, `verify` and `serve`).
#[derive(Args, Debug, Clone, Default)]
pub struct ArchiveConn {
    /// The archive: `s3://bucket/prefix` (credentials from AWS_ACCESS_KEY_ID
    /// and AWS_SECRET_ACCESS_KEY, or the instance's role) or a directory.
    #[arg(long, env = "FACTUM_ARCHIVE", value_name = "URL|DIR")]
    pub archive: Option<String>,
    #[command(flatten)]
    pub s3: S3Options,
}

impl ArchiveConn {
    /// The archive, when one is given.
    pub fn open(&self) -> Result<Option<Arc<dyn Archive>>, CliError> {
        self.archive
            .as_deref()
            .map(|spec| self.s3.open(spec))
            .transpose()
    }
}

/// Parses `--archive-keep-local`: `forever` (never evict), or an age
/// (evict local copies of archived segments sealed at least that long).
pub fn keep_local(value: &str) -> Result<Option<Duration>, CliError> {
    match value.trim() {
        "forever" | "always" => Ok(None),
        v => age("--archive-keep-local", v).map(Some).map_err(|_| {
            CliError::usage(format!(
                "--archive-keep-local {v}: use forever, or an age such as 0s, 7d, 12h, 30m"
            ))
        }),
    }
}

/// Parses an age flag's value: `0`, or a number and `s`, `m`, `h` or `d`
/// (`0s`, `45s`, `30m`, `12h`, `7d`), as compression ages are written
/// (one parser: `CompressPolicy::parse`'s).
pub fn age(flag: &str, value: &str) -> Result<Duration, CliError> {
    match value.trim() {
        "0" => Ok(Duration::ZERO),
        v => match CompressPolicy::parse(v) {
            Ok(CompressPolicy::SealedFor(age)) => Ok(age),
            _ => Err(CliError::usage(format!(
                "{flag} {v}: use an age such as 0s, 45s, 30m, 12h, 7d"
            ))),
        },
    }
}

/// Arguments of `factum archive`.
#[derive(Args, Debug)]
pub struct ArchiveArgs {
    /// The store's directory (not held by a running server).
    #[arg(long, env = "FACTUM_DATA", value_name = "DIR")]
    pub data: PathBuf,
    #[command(flatten)]
    pub conn: ArchiveConn,
    /// Keep local copies of archived segments `forever`, or remove those
    /// sealed at least this long (`0s`, `7d`, `12h`).
    #[arg(
        long,
        env = "FACTUM_ARCHIVE_KEEP_LOCAL",
        default_value = "forever",
        value_name = "AGE"
    )]
    pub archive_keep_local: String,
}

/// Runs `factum archive`: uploads and verifies sealed segments, evicts
/// local copies past the retention.
pub fn run(args: ArchiveArgs) -> Result<(), CliError> {
    let evict_after = keep_local(&args.archive_keep_local)?;
    let archive = args.conn.open()?.ok_or_else(|| {
        CliError::usage("--archive URL|DIR is required (or FACTUM_ARCHIVE)".to_string())
    })?;
    ensure_store(&args.data)?;
    let config = EngineConfig {
        archive: Some(archive.clone()),
        ..super::engine_config(None)?
    };
    let engine = match open(&args.data, config) {
        Ok(e) => e,
        Err(e) if e.message.contains("locked") => {
            return Err(CliError::failure(format!(
                "{}; a server holding the store archives with --archive",
                e.message
            )))
        }
        Err(e) => return Err(e),
    };
    let report = engine.archive_segments(ArchiveOptions { evict_after }, &AtomicBool::new(false));
    let closed = engine.close();
    let r = report?;
    closed?;
    println!("archive        {}", archive.describe());
    println!(
        "segments       {} sealed: {} uploaded and verified now, {} archived before, {} only in the archive",
        r.segments, r.uploaded, r.already_archived, r.archive_only
    );
    println!("evicted        {} local copies", r.evicted);
    println!("uploaded       {} bytes", r.bytes_uploaded);
    println!("time           {:.2?}", r.elapsed);
    Ok(())
}

/// The archive tier's figures in Prometheus text (for `/metrics`).
pub fn metrics_text(engine: &Engine) -> String {
    let Ok(s) = engine.archive_stats() else {
        return String::new();
    };
    const GAUGE: &str = "gauge";
    const COUNTER: &str = "counter";
    let figures: [(&str, &str, &str, String); 9] = [
        (
            "factum_log_bytes_local",
            GAUGE,
            "Bytes of segment files on local disk.",
            s.bytes_local.to_string(),
        ),
        (
            "factum_log_bytes_archived",
            GAUGE,
            "Bytes of segments that live only in the archive.",
            s.bytes_archived.to_string(),
        ),
        (
            "factum_segments_archived",
            GAUGE,
            "Segments that live only in the archive.",
            s.segments_archived.to_string(),
        ),
        (
            "factum_archive_cache_hits_total",
            COUNTER,
            "Reads of archived segments answered from the cache.",
            s.cache_hits.to_string(),
        ),
        (
            "factum_archive_cache_misses_total",
            COUNTER,
            "Reads of archived segments fetched from the archive.",
            s.cache_misses.to_string(),
        ),
        (
            "factum_archive_cache_bytes",
            GAUGE,
            "Bytes held by the archive cache.",
            s.cache_bytes.to_string(),
        ),
        (
            "factum_archive_fetch_errors_total",
            COUNTER,
            "Fetches from the archive that failed.",
            s.fetch_errors.to_string(),
        ),
        (
            "factum_archive_fetched_bytes_total",
            COUNTER,
            "Bytes fetched from the archive.",
            s.fetched_bytes.to_string(),
        ),
        (
            "factum_archive_fetch_seconds_total",
            COUNTER,
            "Time spent fetching from the archive (divide by misses for the mean latency).",
            format!("{:.6}", s.fetch_micros as f64 / 1e6),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, v) in figures {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    out
}

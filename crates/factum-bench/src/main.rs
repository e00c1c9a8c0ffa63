//! `factum-bench`: the embedded engine measured against raw-disk baselines
//! taken in the same run, on the same file system; the server path
//! measured against the engine.
//!
//! Every figure is printed as measured; a figure that misses its target is
//! shown as missed. Workloads (see each module):
//! `fsync-baseline`, `append-seq`, `append-concurrent`, `append-batch`
//! ([`append`]), `read-all`, `read-stream` ([`read`]),
//! `subscribe-latency` ([`subscribe`]), `open` ([`open`]), `aggregate-load`,
//! `aggregate-load-postgres`,
//! `projection-sqlite`, `projection-postgres` ([`toolkit`]), `grpc-append-seq`,
//! `grpc-append-concurrent`, `grpc-append-batch`, `grpc-read-all`,
//! `grpc-subscribe-latency` ([`grpc`]: through the server, against the engine),
//! `kurrentdb-append-seq`, `kurrentdb-append-concurrent-16`,
//! `kurrentdb-append-concurrent-256`, `kurrentdb-append-batch`,
//! `kurrentdb-read-all`, `kurrentdb-subscribe-latency` (the same through
//! KurrentDB's official Rust client, [`official`]),
//! `secure-append-concurrent`, `secure-read-all`,
//! `secure-kurrentdb-append-concurrent-256` ([`secure`]: TLS and
//! Basic credentials against an insecure server, same run),
//! `persistent-1`, `persistent-4` ([`persistent`]: consumer groups),
//! `reads-under-load` ([`reads_under_load`]: appends while 16 clients scan),
//! `encrypted-append-seq`, `encrypted-append-batch`, `encrypted-read-all`
//! ([`encrypt`]: a store encrypted at rest against an unencrypted one,
//! same run),
//! `soak` ([`soak`]: mixed load for a set time, the server's memory; only
//! when named).
//!
//! A crate of its own (ADR 14): the product binary `factum` does not link
//! what only the bench needs (SQLite, a PostgreSQL driver, the toolkit, the
//! clients); `factum bench …` runs this binary when it sits beside `factum`.

/// The same allocator as the `factum` binary, so that the engine measured
/// here behaves as it does in the server (see `factum-cli`'s `main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod append;
mod compress;
mod encrypt;
mod error;
mod grpc;
mod official;
mod open;
mod persistent;
mod postgres;
mod projections;
mod read;
mod reads_under_load;
mod scavenge;
mod secure;
mod server;
mod shred;
mod soak;
mod subscribe;
mod toolkit;
mod util;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::error::BenchError;
use crate::grpc::Via;

/// Factum's benchmark harness: runs workloads on the embedded engine, the
/// server and the toolkit against baselines measured in the same run.
#[derive(Parser, Debug)]
#[command(
    name = "factum-bench",
    version,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
    #[command(subcommand)]
    helper: Option<Helper>,
}

/// Child processes the workloads start.
#[derive(Subcommand, Debug)]
enum Helper {
    /// Opens a store and reports the open time and peak memory (used by `open`).
    #[command(hide = true)]
    OpenProbe(open::ProbeArgs),
    /// Echoes what one TCP connection sends (used by `grpc-subscribe-latency`
    /// to measure the round-trip floor of the placement).
    #[command(hide = true)]
    Echo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.helper {
        Some(Helper::OpenProbe(a)) => open::probe(a),
        Some(Helper::Echo) => server::echo(),
        None => run(cli.bench),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.message.is_empty() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `FACTUM_LOG` (default `warn`), as the
/// `factum` binary's do: the engine says there what recovery did.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("FACTUM_LOG")
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Arguments of `factum-bench` (and of `factum bench`, which forwards them).
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Run in a fresh directory under DIR (removed afterwards) instead of
    /// the system's temporary directory. Never touches an existing store.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Short runs and smaller stores: the whole run takes about a minute.
    #[arg(long)]
    pub quick: bool,
    /// One JSON object per workload per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Run only these workloads (default: all).
    #[arg(long = "workload", value_enum, num_args = 1.., value_name = "NAME")]
    pub workloads: Vec<Workload>,
    /// Events in the `open` workload's store (default 10,000,000; quick 1,000,000).
    #[arg(long, value_name = "N")]
    pub open_events: Option<u64>,
    /// Streams in the `open` workload's store (default: events / 10).
    #[arg(long, value_name = "N")]
    pub open_streams: Option<u64>,
    /// Keep the bench directory for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Caps the events of every workload (for tests: keeps a run tiny).
    #[arg(long, value_name = "N", hide = true)]
    pub events: Option<u64>,
    /// Events in the `reads-under-load` store (default 2,000,000; quick 200,000).
    #[arg(long, value_name = "N")]
    pub reads_store_events: Option<u64>,
    /// How long the `soak` workload runs (default 600; quick 60).
    #[arg(long, value_name = "SECONDS")]
    pub soak_seconds: Option<u64>,
}

/// The workloads.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Raw write(300 B) + fdatasync loop: the disk's fsync rate.
    FsyncBaseline,
    /// One writer, one 256-B event per append.
    AppendSeq,
    /// 256 concurrent writers, one 256-B event per append each.
    AppendConcurrent,
    /// 1,000 events of 256 B per append.
    AppendBatch,
    /// `$all` read forwards in pages of 10,000.
    ReadAll,
    /// A 1,000-event stream read fully, repeatedly.
    ReadStream,
    /// Append-start → live `$all` delivery at 10k events/s.
    SubscribeLatency,
    /// Reopening a large store: time and peak memory.
    Open,
    /// Loading a 10,050-event aggregate with a snapshot every 100 vs replay.
    AggregateLoad,
    /// The same aggregate on PostgreSQL: snapshots in a table vs in a stream.
    AggregateLoadPostgres,
    /// Rebuilding a read model into SQLite.
    ProjectionSqlite,
    /// Rebuilding a read model into PostgreSQL.
    ProjectionPostgres,
    /// `append-seq` through the gRPC server, against the engine.
    GrpcAppendSeq,
    /// 256 writers through the gRPC server, against the engine.
    GrpcAppendConcurrent,
    /// 1,000-event appends through the gRPC server, against the engine.
    GrpcAppendBatch,
    /// `$all` streamed over gRPC, against paged engine reads.
    GrpcReadAll,
    /// Append → live delivery over gRPC, against the engine.
    GrpcSubscribeLatency,
    /// `grpc-append-seq` through KurrentDB's official Rust client (one
    /// writer: the concurrency-1 point of the series below).
    KurrentdbAppendSeq,
    /// 16 writers through the official client, one Append RPC each.
    #[value(name = "kurrentdb-append-concurrent-16")]
    KurrentdbAppendConcurrent16,
    /// 256 writers through the official client, one Append RPC each.
    #[value(name = "kurrentdb-append-concurrent-256")]
    KurrentdbAppendConcurrent256,
    /// 1,000-event appends through the official client.
    KurrentdbAppendBatch,
    /// `$all` streamed through the official client, against the engine.
    KurrentdbReadAll,
    /// Append → live delivery through the official client, against the engine.
    KurrentdbSubscribeLatency,
    /// PostgreSQL backend, one client, single appends (vs Message DB, engine).
    PgAppendSeq,
    /// PostgreSQL backend, 64 clients (vs Message DB, engine).
    PgAppendConcurrent,
    /// PostgreSQL backend, 1,000 events per append (vs Message DB, engine).
    PgAppendBatch,
    /// PostgreSQL backend, `$all` reads (vs engine).
    PgReadAll,
    /// PostgreSQL backend, live subscription latency (vs engine).
    PgSubscribeLatency,
    /// `grpc-append-concurrent` on a secure server (TLS, Basic credentials
    /// on every call) against the same on an insecure one.
    SecureAppendConcurrent,
    /// `grpc-read-all` on a secure server against an insecure one.
    SecureReadAll,
    /// `kurrentdb-append-concurrent-256` on a secure server against an
    /// insecure one (one Append RPC, so one authenticated request, per append).
    #[value(name = "secure-kurrentdb-append-concurrent-256")]
    SecureKurrentdbAppendConcurrent256,
    /// A consumer group delivering to one consumer that handles (10 µs of
    /// CPU) and acks each event (vs a catch-up subscription handling the same).
    #[value(name = "persistent-1")]
    Persistent1,
    /// The same with four consumers, round robin.
    #[value(name = "persistent-4")]
    Persistent4,
    /// Paced appends while 16 clients scan `$all` with a filter matching
    /// nothing (through the server), vs the same appends alone.
    ReadsUnderLoad,
    /// Crypto-shredding: appends of events with two personal fields
    /// (encrypted per subject) vs the same events naming no subject.
    ShredAppend,
    /// Crypto-shredding: `$all` read back decrypted vs the same events
    /// naming no subject.
    ShredReadAll,
    /// A counting JavaScript projection over `$all` (one-time, through the
    /// runner), against a native Rust fold over the same subscription.
    JsProjectionCount,
    /// A `foreachStream` JavaScript projection summing each stream's
    /// deposits, against the native fold.
    JsProjectionPartitioned,
    /// Scavenging a store half of whose events are hidden, against a raw
    /// copy of the same segment files (ADR 33).
    Scavenge,
    /// Seed-shaped events: sealed segments' bytes before / after
    /// compression (ADR 43).
    CompressedRatio,
    /// `$all` read from compressed segments, against the same store
    /// uncompressed.
    CompressedReadAll,
    /// Random stream reads from compressed segments, against the same
    /// store uncompressed (p99).
    CompressedReadStream,
    /// `append-seq` on a store encrypted at rest, against the same on an
    /// unencrypted one, alternating (issue 19).
    EncryptedAppendSeq,
    /// `append-batch` on a store encrypted at rest, against the same on an
    /// unencrypted one, alternating.
    EncryptedAppendBatch,
    /// `read-all` on a store encrypted at rest, against the same on an
    /// unencrypted one, alternating.
    EncryptedReadAll,
    /// Mixed load for `--soak-seconds` against a `factum serve` process:
    /// its RSS over time, appends acknowledged vs present, errors by kind.
    /// Runs only when named.
    Soak,
}

impl Workload {
    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::FsyncBaseline => "fsync-baseline",
            Workload::AppendSeq => "append-seq",
            Workload::AppendConcurrent => "append-concurrent",
            Workload::AppendBatch => "append-batch",
            Workload::ReadAll => "read-all",
            Workload::ReadStream => "read-stream",
            Workload::SubscribeLatency => "subscribe-latency",
            Workload::Open => "open",
            Workload::AggregateLoad => "aggregate-load",
            Workload::AggregateLoadPostgres => "aggregate-load-postgres",
            Workload::ProjectionSqlite => "projection-sqlite",
            Workload::ProjectionPostgres => "projection-postgres",
            Workload::PgAppendSeq => "pg-append-seq",
            Workload::PgAppendConcurrent => "pg-append-concurrent",
            Workload::PgAppendBatch => "pg-append-batch",
            Workload::PgReadAll => "pg-read-all",
            Workload::PgSubscribeLatency => "pg-subscribe-latency",
            Workload::GrpcAppendSeq => "grpc-append-seq",
            Workload::GrpcAppendConcurrent => "grpc-append-concurrent",
            Workload::GrpcAppendBatch => "grpc-append-batch",
            Workload::GrpcReadAll => "grpc-read-all",
            Workload::GrpcSubscribeLatency => "grpc-subscribe-latency",
            Workload::KurrentdbAppendSeq => "kurrentdb-append-seq",
            Workload::KurrentdbAppendConcurrent16 => "kurrentdb-append-concurrent-16",
            Workload::KurrentdbAppendConcurrent256 => "kurrentdb-append-concurrent-256",
            Workload::KurrentdbAppendBatch => "kurrentdb-append-batch",
            Workload::KurrentdbReadAll => "kurrentdb-read-all",
            Workload::KurrentdbSubscribeLatency => "kurrentdb-subscribe-latency",
            Workload::SecureAppendConcurrent => "secure-append-concurrent",
            Workload::SecureReadAll => "secure-read-all",
            Workload::SecureKurrentdbAppendConcurrent256 => {
                "secure-kurrentdb-append-concurrent-256"
            }
            Workload::Persistent1 => "persistent-1",
            Workload::Persistent4 => "persistent-4",
            Workload::ReadsUnderLoad => "reads-under-load",
            Workload::ShredAppend => "shred-append",
            Workload::ShredReadAll => "shred-read-all",
            Workload::JsProjectionCount => "js-projection-count",
            Workload::JsProjectionPartitioned => "js-projection-partitioned",
            Workload::Scavenge => "scavenge",
            Workload::CompressedRatio => "compressed-ratio",
            Workload::CompressedReadAll => "compressed-read-all",
            Workload::CompressedReadStream => "compressed-read-stream",
            Workload::EncryptedAppendSeq => "encrypted-append-seq",
            Workload::EncryptedAppendBatch => "encrypted-append-batch",
            Workload::EncryptedReadAll => "encrypted-read-all",
            Workload::Soak => "soak",
        }
    }

    const ALL: [Workload; 46] = [
        Workload::FsyncBaseline,
        Workload::AppendSeq,
        Workload::AppendConcurrent,
        Workload::AppendBatch,
        Workload::ReadAll,
        Workload::ReadStream,
        Workload::SubscribeLatency,
        Workload::Open,
        Workload::AggregateLoad,
        Workload::AggregateLoadPostgres,
        Workload::ProjectionSqlite,
        Workload::ProjectionPostgres,
        Workload::PgAppendSeq,
        Workload::PgAppendConcurrent,
        Workload::PgAppendBatch,
        Workload::PgReadAll,
        Workload::PgSubscribeLatency,
        Workload::GrpcAppendSeq,
        Workload::GrpcAppendConcurrent,
        Workload::GrpcAppendBatch,
        Workload::GrpcReadAll,
        Workload::GrpcSubscribeLatency,
        Workload::KurrentdbAppendSeq,
        Workload::KurrentdbAppendConcurrent16,
        Workload::KurrentdbAppendConcurrent256,
        Workload::KurrentdbAppendBatch,
        Workload::KurrentdbReadAll,
        Workload::KurrentdbSubscribeLatency,
        Workload::SecureAppendConcurrent,
        Workload::SecureReadAll,
        Workload::SecureKurrentdbAppendConcurrent256,
        Workload::Persistent1,
        Workload::Persistent4,
        Workload::ReadsUnderLoad,
        Workload::ShredAppend,
        Workload::ShredReadAll,
        Workload::JsProjectionCount,
        Workload::JsProjectionPartitioned,
        Workload::Scavenge,
        Workload::CompressedRatio,
        Workload::CompressedReadAll,
        Workload::CompressedReadStream,
        Workload::EncryptedAppendSeq,
        Workload::EncryptedAppendBatch,
        Workload::EncryptedReadAll,
        Workload::Soak,
    ];
}

/// One workload's result: one JSON line, one table row.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Report {
    /// Workload name.
    pub workload: &'static str,
    /// Events (or operations, for `fsync-baseline`) measured.
    pub events: u64,
    /// Measured time, seconds.
    pub seconds: f64,
    /// Throughput; `null` where it means nothing (`open`).
    pub events_per_sec: Option<f64>,
    /// Median latency of one operation (see `latency_of`), µs.
    pub p50_us: Option<f64>,
    /// 99th percentile latency, µs.
    pub p99_us: Option<f64>,
    /// What one latency sample is.
    pub latency_of: &'static str,
    /// Bytes per second written to the log, where it applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<f64>,
    /// The raw baseline's operations per second, where it applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_events_per_sec: Option<f64>,
    /// The raw baseline's bytes per second, where it applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_bytes_per_sec: Option<f64>,
    /// Measured / baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// The target, in words.
    pub target: String,
    /// Whether the target was met; `null` where there is none.
    pub target_met: Option<bool>,
    /// Durability of the measured appends (or of the load, for read workloads).
    pub durability: String,
    /// CPU time (user + system) of the server process per event over the
    /// measured window, µs (server-path workloads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_event: Option<f64>,
    /// The same for the baseline's server (`secure-…`: the insecure one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_server_cpu_us_per_event: Option<f64>,
    /// Peak resident memory, MB (`open`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
    /// Reopen time after a crash that left the index memtable full
    /// (`open`): recovery replays the unflushed log tail, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash_reopen_seconds: Option<f64>,
    /// The `soak` workload's figures: RSS over time, appends acknowledged
    /// vs present, errors by kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<soak::SoakFigures>,
    /// `quick` or `full`.
    pub mode: &'static str,
    /// File system of the bench directory.
    pub filesystem: String,
    /// How it was measured, caveats.
    pub notes: Vec<String>,
}

/// What workloads share.
pub struct Ctx {
    /// The bench directory.
    pub root: PathBuf,
    /// Quick mode.
    pub quick: bool,
    /// Cap on events per workload.
    pub cap: Option<u64>,
    /// The raw fsync rate, once measured.
    pub fsync_rate: Option<f64>,
    /// The runtime the engine's async API runs on.
    pub rt: tokio::runtime::Runtime,
    /// `open` store size.
    pub open_events: Option<u64>,
    /// `open` stream count.
    pub open_streams: Option<u64>,
    /// File system of `root`.
    pub filesystem: String,
}

impl Ctx {
    /// A fresh directory for one workload.
    pub fn dir(&self, name: &str) -> Result<PathBuf, BenchError> {
        let d = self.root.join(name);
        if d.exists() {
            std::fs::remove_dir_all(&d)?;
        }
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// A measuring time by mode.
    pub fn secs(&self, quick: f64, full: f64) -> Duration {
        Duration::from_secs_f64(if self.quick { quick } else { full })
    }

    /// `n` under the `--events` cap.
    pub fn cap(&self, n: u64) -> u64 {
        self.cap.map_or(n, |c| n.min(c.max(1)))
    }

    /// A report with the shared fields filled in.
    pub fn report(&self, workload: Workload) -> Report {
        Report {
            workload: workload.name(),
            mode: if self.quick { "quick" } else { "full" },
            filesystem: self.filesystem.clone(),
            durability: "always".into(),
            ..Report::default()
        }
    }
}

/// Runs the workloads.
fn run(args: BenchArgs) -> Result<(), BenchError> {
    let workloads: Vec<Workload> = if args.workloads.is_empty() {
        // The soak runs for minutes: only when named.
        Workload::ALL
            .into_iter()
            .filter(|w| *w != Workload::Soak)
            .collect()
    } else {
        Workload::ALL
            .into_iter()
            .filter(|w| args.workloads.contains(w))
            .collect()
    };
    let parent = match &args.data {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| BenchError::failure(format!("cannot create {}: {e}", d.display())))?;
            d.clone()
        }
        None => std::env::temp_dir(),
    };
    let tmp = tempfile::Builder::new()
        .prefix("factum-bench-")
        .tempdir_in(&parent)
        .map_err(|e| {
            BenchError::failure(format!(
                "cannot create a directory in {}: {e}",
                parent.display()
            ))
        })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::failure(format!("cannot start the async runtime: {e}")))?;
    let filesystem = util::filesystem_of(tmp.path());
    let mut ctx = Ctx {
        root: tmp.path().to_path_buf(),
        quick: args.quick,
        cap: args.events,
        fsync_rate: None,
        rt,
        open_events: args.open_events,
        open_streams: args.open_streams,
        filesystem,
    };
    eprintln!(
        "factum bench ({} mode) in {} on {}; {} CPU(s)",
        if ctx.quick { "quick" } else { "full" },
        ctx.root.display(),
        ctx.filesystem,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if ctx.filesystem.starts_with("tmpfs") {
        eprintln!("warning: the bench directory is on tmpfs, where fsync does nothing: figures are not representative of a disk");
    }
    let mut reports = Vec::new();
    for w in workloads {
        eprintln!("running {} …", w.name());
        let report = match w {
            Workload::FsyncBaseline => append::fsync_baseline(&mut ctx),
            Workload::AppendSeq => append::seq(&mut ctx),
            Workload::AppendConcurrent => append::concurrent(&mut ctx),
            Workload::AppendBatch => append::batch(&mut ctx),
            Workload::ReadAll => read::read_all(&mut ctx),
            Workload::ReadStream => read::read_stream(&mut ctx),
            Workload::ShredAppend => shred::append(&mut ctx),
            Workload::ShredReadAll => shred::read(&mut ctx),
            Workload::SubscribeLatency => subscribe::latency(&mut ctx),
            Workload::Open => open::open(&mut ctx),
            Workload::AggregateLoad => toolkit::aggregate_load(&mut ctx),
            Workload::AggregateLoadPostgres => toolkit::aggregate_load_postgres(&mut ctx),
            Workload::ProjectionSqlite => toolkit::projection_sqlite(&mut ctx),
            Workload::JsProjectionCount => projections::count(&mut ctx),
            Workload::JsProjectionPartitioned => projections::partitioned(&mut ctx),
            Workload::ProjectionPostgres => toolkit::projection_postgres(&mut ctx),
            w
            @ (Workload::PgAppendSeq | Workload::PgAppendConcurrent | Workload::PgAppendBatch) => {
                postgres::append(&mut ctx, w)
            }
            Workload::PgReadAll => postgres::read_all(&mut ctx),
            Workload::PgSubscribeLatency => postgres::subscribe_latency(&mut ctx),
            Workload::GrpcAppendSeq => grpc::append_seq(&mut ctx, w, Via::FactumClient),
            Workload::GrpcAppendConcurrent => {
                grpc::append_concurrent(&mut ctx, w, Via::FactumClient, 256)
            }
            Workload::GrpcAppendBatch => grpc::append_batch(&mut ctx, w, Via::FactumClient),
            Workload::GrpcReadAll => grpc::read_all(&mut ctx, w, Via::FactumClient),
            Workload::GrpcSubscribeLatency => {
                grpc::subscribe_latency(&mut ctx, w, Via::FactumClient)
            }
            Workload::KurrentdbAppendSeq => grpc::append_seq(&mut ctx, w, Via::Kurrentdb),
            Workload::KurrentdbAppendConcurrent16 => {
                grpc::append_concurrent(&mut ctx, w, Via::Kurrentdb, 16)
            }
            Workload::KurrentdbAppendConcurrent256 => {
                grpc::append_concurrent(&mut ctx, w, Via::Kurrentdb, 256)
            }
            Workload::KurrentdbAppendBatch => grpc::append_batch(&mut ctx, w, Via::Kurrentdb),
            Workload::KurrentdbReadAll => grpc::read_all(&mut ctx, w, Via::Kurrentdb),
            Workload::KurrentdbSubscribeLatency => {
                grpc::subscribe_latency(&mut ctx, w, Via::Kurrentdb)
            }
            Workload::SecureAppendConcurrent => {
                secure::append_concurrent(&mut ctx, w, Via::FactumClient)
            }
            Workload::SecureKurrentdbAppendConcurrent256 => {
                secure::append_concurrent(&mut ctx, w, Via::Kurrentdb)
            }
            Workload::SecureReadAll => secure::read_all(&mut ctx, w),
            Workload::Persistent1 => persistent::one(&mut ctx),
            Workload::Persistent4 => persistent::four(&mut ctx),
            Workload::ReadsUnderLoad => {
                reads_under_load::reads_under_load(&mut ctx, args.reads_store_events)
            }
            Workload::Scavenge => scavenge::scavenge(&mut ctx),
            Workload::CompressedRatio => compress::ratio(&mut ctx),
            Workload::CompressedReadAll => compress::read_all(&mut ctx),
            Workload::CompressedReadStream => compress::read_stream(&mut ctx),
            Workload::EncryptedAppendSeq => encrypt::append_seq(&mut ctx),
            Workload::EncryptedAppendBatch => encrypt::append_batch(&mut ctx),
            Workload::EncryptedReadAll => encrypt::read_all(&mut ctx),
            Workload::Soak => soak::soak(&mut ctx, args.soak_seconds),
        }
        .map_err(|e| e.context(format!("workload {}", w.name())))?;
        if !args.keep {
            let _ = std::fs::remove_dir_all(ctx.root.join(w.name()));
        }
        if args.json {
            let line = serde_json::to_string(&report)
                .map_err(|e| BenchError::failure(format!("cannot encode the report: {e}")))?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()?;
        } else {
            eprintln!("  {}", summary(&report));
        }
        reports.push(report);
    }
    if !args.json {
        print_table(&reports)?;
    }
    if args.keep {
        let kept = tmp.keep();
        eprintln!("kept the bench directory {}", kept.display());
    }
    Ok(())
}

fn fmt_rate(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 1e6 => format!("{:.2}M", v / 1e6),
        Some(v) if v >= 1e4 => format!("{:.1}k", v / 1e3),
        Some(v) => format!("{v:.0}"),
    }
}

fn fmt_us(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 10_000.0 => format!("{:.1} ms", v / 1000.0),
        Some(v) => format!("{v:.0} µs"),
    }
}

fn met(r: &Report) -> &'static str {
    match r.target_met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "-",
    }
}

fn summary(r: &Report) -> String {
    format!(
        "{}: {} events in {:.3} s, {} events/s, p50 {}, p99 {}, ratio {},{} target {} ({})",
        r.workload,
        r.events,
        r.seconds,
        fmt_rate(r.events_per_sec),
        fmt_us(r.p50_us),
        fmt_us(r.p99_us),
        r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
        r.server_cpu_us_per_event
            .map_or(String::new(), |c| format!(" server CPU {c:.1} µs/event,")),
        r.target,
        met(r)
    )
}

fn print_table(reports: &[Report]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<31} {:>9} {:>7} {:>9} {:>8} {:>8} {:>10} {:>7} {:>9} {:>6}  durability",
        "workload",
        "events",
        "secs",
        "events/s",
        "p50",
        "p99",
        "baseline",
        "ratio",
        "bytes/s",
        "target"
    )?;
    for r in reports {
        let baseline = r
            .baseline_events_per_sec
            .map(|v| format!("{}/s", fmt_rate(Some(v))))
            .or_else(|| {
                r.baseline_bytes_per_sec
                    .map(|v| format!("{}B/s", fmt_rate(Some(v))))
            })
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<31} {:>9} {:>7.3} {:>9} {:>8} {:>8} {:>10} {:>7} {:>9} {:>6}  {}",
            r.workload,
            r.events,
            r.seconds,
            fmt_rate(r.events_per_sec),
            fmt_us(r.p50_us),
            fmt_us(r.p99_us),
            baseline,
            r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
            fmt_rate(r.bytes_per_sec),
            met(r),
            r.durability
        )?;
    }
    writeln!(out)?;
    for r in reports {
        writeln!(out, "{} — target: {} → {}", r.workload, r.target, met(r))?;
        if let Some(cpu) = r.server_cpu_us_per_event {
            writeln!(out, "    server CPU {cpu:.1} µs per event")?;
        }
        if let Some(rss) = r.peak_rss_mb {
            writeln!(out, "    peak RSS {rss:.0} MB")?;
        }
        if let Some(s) = r.crash_reopen_seconds {
            writeln!(
                out,
                "    reopen after a crash with a full index memtable {s:.2} s"
            )?;
        }
        writeln!(out, "    latency: {}", r.latency_of)?;
        for n in &r.notes {
            writeln!(out, "    {n}")?;
        }
    }
    if let Some(fs) = reports.first().map(|r| &r.filesystem) {
        writeln!(out, "file system: {fs}")?;
    }
    Ok(())
}

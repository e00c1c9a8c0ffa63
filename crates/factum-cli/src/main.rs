//! `factum`: the command-line tool of the Factum event store.
//!
//! Every command works on a store directory (`--data DIR`, or the
//! `FACTUM_DATA` environment variable) through the embedded engine.
//! Errors print one line on stderr (`error: …`) and exit with 2 for
//! invalid input or usage, 1 for anything else.

/// mimalloc instead of glibc's allocator: reads allocate many short-lived
/// events, and glibc returns the heap top to the OS after each page and
/// page-faults it back in (measured: `$all` reads 1.5M/s with glibc, 6–7M/s
/// with mimalloc on the same store).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod commands;
mod error;
mod output;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::error::CliError;

/// Factum: an event store. These commands work on a store directory
/// through the embedded engine.
#[derive(Parser, Debug)]
#[command(name = "factum", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The store directory, shared by every command.
#[derive(Args, Debug, Clone)]
pub struct DataDir {
    /// The store's directory.
    #[arg(long, env = "FACTUM_DATA", value_name = "DIR")]
    pub data: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Appends one JSON event to a stream and prints its revision and position.
    Append(commands::append::AppendArgs),
    /// Reads a stream, `$all`, `$ce-<category>` or `$et-<type>`.
    Read(commands::read::ReadArgs),
    /// Follows a stream or `$all` live, printing events as `read` does, until Ctrl-C.
    Tail(commands::tail::TailArgs),
    /// Prints the store's size and head without reading the whole log.
    Stats(commands::stats::StatsArgs),
    /// Checks every record of the log and every index entry; exit 1 on damage.
    Verify(commands::admin::VerifyArgs),
    /// Deletes the index and rebuilds it from the log.
    Reindex(commands::admin::ReindexArgs),
    /// Copies a store (not held by a server) at its committed position into a
    /// directory; incremental into an earlier backup.
    Backup(commands::backup::BackupArgs),
    /// Makes a store from a backup, then verifies it.
    Restore(commands::backup::RestoreArgs),
    /// Forgets a data subject (crypto-shredding): destroys its key, so its
    /// personal fields read as erased everywhere; records an audit event.
    Forget(commands::forget::ForgetArgs),
    /// Re-seals the subject keys (crypto-shredding) under a new master key,
    /// so the old one can be retired; events are not rewritten.
    Rekey(commands::rekey::RekeyArgs),
    /// Removes the events no read can see any more (`$maxCount`, `$maxAge`,
    /// `$tb`, deleted streams, old metadata) from a store no server holds.
    Scavenge(commands::scavenge::ScavengeArgs),
    /// Copies sealed segments to an archive (S3 or a directory), verifies
    /// them, and removes local copies past a retention.
    Archive(commands::archive::ArchiveArgs),
    /// Rewrites sealed segments compressed (zstd blocks; every event keeps
    /// its position) in a store no server holds.
    Compact(commands::compact::CompactArgs),
    /// Serves a store over KurrentDB's gRPC protocol and HTTP/JSON on one port.
    Serve(Box<commands::serve::ServeArgs>),
    /// Makes TLS certificates: a CA (`create-ca`) and node certificates
    /// signed by it (`create-node`).
    Certs(commands::certs::CertsArgs),
    /// Applies pending PostgreSQL schema migrations (also applied on start).
    Migrate(commands::admin::MigrateArgs),
    /// Runs the benchmark harness: the `factum-bench` binary beside this one,
    /// with these arguments (`factum bench --help` lists them).
    #[command(disable_help_flag = true)]
    Bench(commands::bench::BenchArgs),
    /// Appends forever from concurrent tasks and reports every acknowledged
    /// append on stdout (for crash tests).
    #[command(hide = true)]
    CrashLoad(commands::crash_load::CrashLoadArgs),
}

fn main() -> ExitCode {
    install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("error: {}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Append(a) => commands::append::run(a),
        Command::Read(a) => commands::read::run(a),
        Command::Tail(a) => commands::tail::run(a),
        Command::Stats(a) => commands::stats::run(a),
        Command::Verify(a) => commands::admin::verify(a),
        Command::Reindex(a) => commands::admin::reindex(a),
        Command::Backup(a) => commands::backup::backup(a),
        Command::Restore(a) => commands::backup::restore(a),
        Command::Forget(a) => commands::forget::run(a),
        Command::Rekey(a) => commands::rekey::run(a),
        Command::Scavenge(a) => commands::scavenge::run(a),
        Command::Archive(a) => commands::archive::run(a),
        Command::Compact(a) => commands::compact::run(a),
        Command::Serve(a) => commands::serve::run(*a),
        Command::Certs(a) => commands::certs::run(a),
        Command::Migrate(a) => commands::admin::migrate(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::CrashLoad(a) => commands::crash_load::run(a),
    }
}

/// Prints clap's help and version as usual; any other parse error becomes
/// one `error: …` line and exit code 2.
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let rendered = e.render().to_string();
            // The first paragraph holds the message (and, for missing
            // arguments, their names on the following lines).
            let first: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let msg = first.join(" ");
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
            eprintln!("error: {msg} (see `factum --help`)");
            ExitCode::from(2)
        }
    }
}

/// Logs go to stderr, filtered by `FACTUM_LOG` (default `warn`), so the
/// user sees what recovery did (a cut tail, …).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("FACTUM_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("warning: ignoring FACTUM_LOG={spec:?} ({e}); logging at warn");
                EnvFilter::new("warn")
            }
        },
        _ => EnvFilter::new("warn"),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// A panic is a bug: say so in one line rather than with a backtrace dump
/// (set `RUST_BACKTRACE=1` for the details).
fn install_panic_hook() {
    if std::env::var_os("RUST_BACKTRACE").is_some() {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        eprintln!("error: internal error (a bug in factum){location}: {payload}");
    }));
}

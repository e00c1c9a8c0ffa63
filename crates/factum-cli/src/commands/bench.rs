//! `factum bench …`: runs the benchmark harness, the `factum-bench` binary
//! installed beside this one, with the same arguments (ADR 14). The harness
//! is a crate of its own so that this binary does not link what only the
//! bench needs (SQLite, a PostgreSQL driver, the toolkit, the clients).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use clap::Args;

use crate::error::CliError;

/// The harness's binary name.
const BENCH_BINARY: &str = "factum-bench";

/// Arguments of `factum bench`: passed unchanged to `factum-bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// `factum-bench`'s arguments (`factum bench --help` shows them).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<OsString>,
}

/// Where `factum-bench` should be: beside the running `factum`.
fn bench_binary() -> Result<PathBuf, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::failure(format!("cannot find the factum binary: {e}")))?;
    let dir = exe
        .parent()
        .ok_or_else(|| CliError::failure(format!("{} has no parent directory", exe.display())))?;
    Ok(dir.join(BENCH_BINARY))
}

/// Replaces this process with `factum-bench ARGS`; returns only on failure.
pub fn run(args: BenchArgs) -> Result<(), CliError> {
    let bench = bench_binary()?;
    if !bench.is_file() {
        return Err(CliError::failure(format!(
            "the benchmark harness is not installed: {} does not exist (build it with `cargo build --release -p factum-bench`, which puts it beside factum)",
            bench.display()
        )));
    }
    let e = std::process::Command::new(&bench).args(args.args).exec();
    Err(CliError::failure(format!(
        "cannot run {}: {e}",
        bench.display()
    )))
}

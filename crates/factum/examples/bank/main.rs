//! The bank account example, end to end on the embedded engine:
//! commands (including refused ones), three SQLite read models kept live,
//! read-your-writes, temporal queries and a rebuild.
//!
//! Run: `cargo run -p factum --example bank [DATA_DIR]` (a temporary
//! directory by default). `tests/examples.rs` runs the same scenario.
//!
//! Rebuild read models of a store the scenario left in DATA_DIR, with a
//! progress bar on stderr:
//! `cargo run -p factum --example bank -- rebuild DATA_DIR [MODEL…]`
//! (MODEL: `account_balances`, `account_summary`, `daily_transactions`;
//! default all).

#[path = "../common/rebuild.rs"]
pub mod cli;
pub mod domain;
pub mod read_models;
pub mod scenario;

use std::path::Path;

use factum::projection::ProgressBar;

/// The read models `rebuild` knows.
pub const READ_MODELS: [&str; 3] = ["account_balances", "account_summary", "daily_transactions"];

/// Rebuilds the named read models (all when none) over `dir`; `bar` makes
/// each one's progress bar. Returns (model, new generation).
pub async fn rebuild(
    dir: &Path,
    names: &[String],
    bar: impl Fn(&str) -> ProgressBar,
) -> Result<Vec<(String, u64)>, cli::Error> {
    use read_models::{AccountBalances, AccountSummary, DailyTransactions};
    let models = cli::chosen(names, &READ_MODELS)?;
    let store = cli::open_store(dir)?;
    let mut done = Vec::new();
    for name in models {
        let generation = match name {
            "account_balances" => cli::rebuild_one(&store, dir, AccountBalances, bar(name)).await?,
            "account_summary" => cli::rebuild_one(&store, dir, AccountSummary, bar(name)).await?,
            _ => cli::rebuild_one(&store, dir, DailyTransactions, bar(name)).await?,
        };
        done.push((name.to_owned(), generation));
    }
    store.close()?;
    Ok(done)
}

#[tokio::main]
async fn main() -> Result<(), cli::Error> {
    match cli::parse("bank", std::env::args().skip(1))? {
        cli::Command::Rebuild(dir, names) => {
            rebuild(&dir, &names, |m| ProgressBar::stderr(m)).await?;
        }
        cli::Command::Scenario(dir) => {
            let tmp = tempfile::tempdir()?;
            let report = scenario::run(dir.as_deref().unwrap_or(tmp.path())).await?;
            println!("{report:#?}");
        }
    }
    Ok(())
}

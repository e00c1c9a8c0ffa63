//! The order lifecycle example, end to end on the embedded engine:
//! enforced transitions, three SQLite read models, a temporal query and a
//! rebuild.
//!
//! Run: `cargo run -p factum --example orders [DATA_DIR]` (a temporary
//! directory by default). `tests/examples.rs` runs the same scenario.
//!
//! Rebuild read models of a store the scenario left in DATA_DIR, with a
//! progress bar on stderr:
//! `cargo run -p factum --example orders -- rebuild DATA_DIR [MODEL…]`
//! (MODEL: `orders_by_status`, `revenue_by_product`,
//! `customer_order_history`; default all).

#[path = "../common/rebuild.rs"]
pub mod cli;
pub mod domain;
pub mod read_models;
pub mod scenario;

use std::path::Path;

use factum::projection::ProgressBar;

/// The read models `rebuild` knows.
pub const READ_MODELS: [&str; 3] = [
    "orders_by_status",
    "revenue_by_product",
    "customer_order_history",
];

/// Rebuilds the named read models (all when none) over `dir`; `bar` makes
/// each one's progress bar. Returns (model, new generation).
pub async fn rebuild(
    dir: &Path,
    names: &[String],
    bar: impl Fn(&str) -> ProgressBar,
) -> Result<Vec<(String, u64)>, cli::Error> {
    use read_models::{CustomerOrderHistory, OrdersByStatus, RevenueByProduct};
    let models = cli::chosen(names, &READ_MODELS)?;
    let store = cli::open_store(dir)?;
    let mut done = Vec::new();
    for name in models {
        let generation = match name {
            "orders_by_status" => cli::rebuild_one(&store, dir, OrdersByStatus, bar(name)).await?,
            "revenue_by_product" => {
                cli::rebuild_one(&store, dir, RevenueByProduct, bar(name)).await?
            }
            _ => cli::rebuild_one(&store, dir, CustomerOrderHistory, bar(name)).await?,
        };
        done.push((name.to_owned(), generation));
    }
    store.close()?;
    Ok(done)
}

#[tokio::main]
async fn main() -> Result<(), cli::Error> {
    match cli::parse("orders", std::env::args().skip(1))? {
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

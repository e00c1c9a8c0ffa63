//! The order lifecycle example, end to end on the embedded engine:
//! enforced transitions, three SQLite read models, a temporal query and a
//! rebuild.
//!
//! Run: `cargo run -p factum --example orders [DATA_DIR]` (a temporary
//! directory by default). `tests/examples.rs` runs the same scenario.

pub mod domain;
pub mod read_models;
pub mod scenario;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let tmp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let report = scenario::run(&dir).await?;
    println!("{report:#?}");
    Ok(())
}

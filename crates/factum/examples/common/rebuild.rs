//! `rebuild DATA_DIR [MODEL…]`, shared by the examples: rebuilds read
//! models of a store a scenario left in `DATA_DIR` (`store/` and
//! `read-models/`), each beside its live generation, with a progress bar.

use std::path::Path;
use std::sync::Arc;

use factum::projection::sqlite::{SqliteProjection, SqliteReadModel};
use factum::projection::ProgressBar;
use factum::{ProjectionRunner, RunnerOptions};
use factum_engine::Engine;

/// The examples' error type.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Brings the read model of `projection` up to date, rebuilds it into a
/// new generation (drawing `bar`), switches readers over and stops.
/// Returns the new live generation.
pub async fn rebuild_one<P: SqliteProjection>(
    store: &Arc<Engine>,
    dir: &Path,
    projection: P,
    mut bar: ProgressBar,
) -> Result<u64, Error> {
    let model = SqliteReadModel::new(dir.join("read-models"), projection)?;
    let handle = ProjectionRunner::start(store.clone(), model, RunnerOptions::default()).await?;
    let generation = handle.rebuild(|p| bar.update(&p)).await;
    handle.stop().await;
    let generation = generation?;
    bar.finish(&format!("generation {generation} is live"));
    Ok(generation)
}

/// Opens the store a scenario left in `dir` (refusing to create one).
pub fn open_store(dir: &Path) -> Result<Arc<Engine>, Error> {
    let path = dir.join("store");
    if !path.is_dir() {
        return Err(format!(
            "no store at {}: run the example with this DATA_DIR first",
            path.display()
        )
        .into());
    }
    Ok(Arc::new(Engine::open(path)?))
}

/// The models to rebuild: those named, or all; an unknown name is an error
/// that lists the known ones.
pub fn chosen<'a>(names: &'a [String], known: &[&'a str]) -> Result<Vec<&'a str>, Error> {
    if names.is_empty() {
        return Ok(known.to_vec());
    }
    names
        .iter()
        .map(|n| {
            known
                .iter()
                .find(|k| **k == n.as_str())
                .copied()
                .ok_or_else(|| {
                    format!("unknown read model {n:?}; known: {}", known.join(", ")).into()
                })
        })
        .collect()
}

/// What an example was asked to do.
pub enum Command {
    /// Run the scenario in this directory (a temporary one when `None`).
    Scenario(Option<std::path::PathBuf>),
    /// Rebuild these read models (all when empty) of the store in this
    /// directory.
    Rebuild(std::path::PathBuf, Vec<String>),
}

/// Parses `[DATA_DIR]` or `rebuild DATA_DIR [MODEL…]`.
pub fn parse(example: &str, args: impl IntoIterator<Item = String>) -> Result<Command, Error> {
    let mut args = args.into_iter();
    match args.next() {
        Some(verb) if verb == "rebuild" => match args.next() {
            Some(dir) => Ok(Command::Rebuild(dir.into(), args.collect())),
            None => Err(format!("usage: {example} rebuild DATA_DIR [MODEL…]").into()),
        },
        dir => Ok(Command::Scenario(dir.map(Into::into))),
    }
}

//! The commands, and what they share: parsing names, opening a store,
//! the async runtime.

pub mod admin;
pub mod append;
pub mod archive;
pub mod backup;
pub mod bench;
pub mod certs;
pub mod compact;
pub mod crash_load;
pub mod forget;
pub mod pg_scavenge;
pub mod read;
pub mod rekey;
pub mod scavenge;
pub mod serve;
pub mod stats;
pub mod tail;

use std::path::Path;

use factum_core::StreamName;
use factum_engine::{Engine, EngineConfig};

use crate::error::CliError;

/// Validates a stream name given on the command line (exit 2 when invalid).
pub fn parse_stream(s: &str) -> Result<StreamName, CliError> {
    StreamName::new(s).map_err(|e| match e {
        factum_core::Error::InvalidInput(msg) => {
            CliError::usage(format!("invalid stream name: {msg}"))
        }
        other => CliError::usage(format!("invalid stream name: {other}")),
    })
}

/// Fails unless `dir` holds a store (at least one segment file), so that
/// reading commands never create an empty store by accident.
pub fn ensure_store(dir: &Path) -> Result<(), CliError> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CliError::failure(format!(
                "no store at {}: the directory does not exist",
                dir.display()
            ))
        } else {
            CliError::failure(format!("cannot access {}: {e}", dir.display()))
        }
    })?;
    if !meta.is_dir() {
        return Err(CliError::failure(format!(
            "no store at {}: not a directory",
            dir.display()
        )));
    }
    if segment_files(dir)?.is_empty() {
        return Err(CliError::failure(format!(
            "no store at {}: the directory holds no segment files",
            dir.display()
        )));
    }
    Ok(())
}

/// The segment files of a store with their sizes, oldest first.
pub fn segment_files(dir: &Path) -> Result<Vec<(std::path::PathBuf, u64)>, CliError> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| CliError::failure(format!("cannot list {}: {e}", dir.display())))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry =
            entry.map_err(|e| CliError::failure(format!("cannot list {}: {e}", dir.display())))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_segment = name
            .strip_suffix(".seg")
            .is_some_and(|stem| stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()));
        if is_segment {
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((entry.path(), len));
        }
    }
    out.sort();
    Ok(out)
}

/// The environment variable that turns encryption at rest off
/// (`FACTUM_ENCRYPT_AT_REST=off`): a master key then serves
/// crypto-shredding alone, and new segments are written in the clear.
pub const ENCRYPT_AT_REST_ENV: &str = "FACTUM_ENCRYPT_AT_REST";

/// `on` or `off` (what `--encrypt-at-rest` and FACTUM_ENCRYPT_AT_REST take).
pub fn parse_on_off(what: &str, v: &str) -> Result<bool, CliError> {
    match v.trim() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        other => Err(CliError::usage(format!(
            "{what} takes on or off, not {other:?}"
        ))),
    }
}

/// The master key segments are encrypted under (ADR 45): the one of
/// crypto-shredding (`key_file`, else FACTUM_ENCRYPTION_KEY_FILE, else
/// FACTUM_ENCRYPTION_KEY), unless encryption at rest is off (`at_rest`,
/// else FACTUM_ENCRYPT_AT_REST; on by default).
pub fn at_rest_key(
    key_file: Option<&Path>,
    at_rest: Option<bool>,
) -> Result<Option<factum_engine::MasterKey>, CliError> {
    let on = match at_rest {
        Some(on) => on,
        None => match std::env::var(ENCRYPT_AT_REST_ENV) {
            Ok(v) => parse_on_off(ENCRYPT_AT_REST_ENV, &v)?,
            Err(_) => true,
        },
    };
    if !on {
        return Ok(None);
    }
    Ok(forget::master_key(key_file)?.map(factum_engine::MasterKey::new))
}

/// The engine's configuration for a command: defaults, with encryption
/// at rest as [`at_rest_key`] gives it.
pub fn engine_config(key_file: Option<&Path>) -> Result<EngineConfig, CliError> {
    Ok(EngineConfig {
        encryption: at_rest_key(key_file, None)?,
        ..EngineConfig::default()
    })
}

/// Opens a store (durable appends), logging what recovery did.
pub fn open(dir: &Path, config: EngineConfig) -> Result<Engine, CliError> {
    let (engine, recovery) = Engine::open_with(dir, config)
        .map_err(|e| CliError::from(e).context(format!("opening {}", dir.display())))?;
    if recovery.frames_replayed > 0 {
        tracing::info!(
            frames = recovery.frames_replayed,
            "replayed the log tail into the index"
        );
    }
    Ok(engine)
}

/// A multi-threaded runtime for the engine's async API.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failure(format!("cannot start the async runtime: {e}")))
}

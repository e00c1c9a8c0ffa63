//! Crypto-shredding in the CLI (ADR 36): `factum forget --data DIR
//! SUBJECT` on a store no server holds, and what `serve` needs to encrypt
//! personal fields (the master key from `--encryption-key-file` /
//! `FACTUM_ENCRYPTION_KEY_FILE` / `FACTUM_ENCRYPTION_KEY`, the `forget`
//! hook of the HTTP and gRPC routes).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use factum_core::EventStore;
use factum_crypto::{FileKeyStore, SecretKey, Shredding, KEY_FILE_NAME};

use super::{ensure_store, open, runtime};
use crate::error::CliError;
use crate::DataDir;

/// Arguments of `factum forget`.
#[derive(Args, Debug)]
pub struct ForgetArgs {
    #[command(flatten)]
    data: DataDir,
    /// The master key: a file of 64 hex digits (`openssl rand -hex 32`);
    /// or the key itself in FACTUM_ENCRYPTION_KEY.
    #[arg(long, env = "FACTUM_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    encryption_key_file: Option<PathBuf>,
    /// The data subject, as events name it in their `$subject` metadata.
    subject: String,
}

/// The master key the settings name, `None` when crypto-shredding is off.
pub fn master_key(key_file: Option<&Path>) -> Result<Option<SecretKey>, CliError> {
    factum_crypto::provider_from_settings(key_file)
        .map(|p| p.master_key())
        .transpose()
        .map_err(|e| CliError::usage(e.to_string()))
}

/// Refuses to serve a store that holds subject keys without the master
/// key: events naming a subject would be written in plaintext.
pub fn refuse_keys_without_master(data: &Path) -> Result<(), CliError> {
    if data.join(KEY_FILE_NAME).exists() {
        return Err(CliError::usage(format!(
            "{} holds subject keys (crypto-shredding): give the master key with --encryption-key-file FILE (FACTUM_ENCRYPTION_KEY_FILE) or FACTUM_ENCRYPTION_KEY",
            data.display()
        )));
    }
    Ok(())
}

/// The engine's subject keys in `data`, under `master`.
pub fn engine_keys(data: &Path, master: SecretKey) -> Result<FileKeyStore, CliError> {
    FileKeyStore::open(data, master).map_err(|e| {
        CliError::failure(e.to_string()).context(format!("opening {}", data.display()))
    })
}

/// The server's `forget`: the store's [`Shredding::forget`].
pub fn forget_hook<S: EventStore>(store: Shredding<S>) -> factum_server::ForgetHook {
    Arc::new(move |subject, by| {
        let store = store.clone();
        Box::pin(async move {
            let done = store.forget(&subject, &by).await?;
            Ok(factum_server::Forgotten {
                subject: done.subject,
                had_key: done.had_key,
                audit_position: done.audit_position.0,
            })
        })
    })
}

/// Runs `factum forget`.
pub fn run(args: ForgetArgs) -> Result<(), CliError> {
    let data = &args.data.data;
    ensure_store(data)?;
    let Some(master) = master_key(args.encryption_key_file.as_deref())? else {
        return Err(CliError::usage(
            "forget needs the master key: --encryption-key-file FILE (FACTUM_ENCRYPTION_KEY_FILE) or FACTUM_ENCRYPTION_KEY",
        ));
    };
    let engine = Arc::new(open(
        data,
        super::engine_config(args.encryption_key_file.as_deref())?,
    )?);
    let keys = engine_keys(data, master)?;
    let store = Shredding::new(engine.clone(), Arc::new(keys));
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown user".into());
    let by = format!("factum forget (offline, {user})");
    let done = runtime()?.block_on(store.forget(&args.subject, &by));
    drop(store);
    let closed = engine.close();
    let done = done?;
    closed?;
    println!(
        "forgot subject {}: {}; audit event at position {}",
        done.subject,
        if done.had_key {
            "its key is destroyed"
        } else {
            "it had no key"
        },
        done.audit_position.0
    );
    Ok(())
}

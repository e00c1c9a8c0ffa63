//! `factum rekey`: master-key rotation for crypto-shredding's subject keys
//! (ADR 42) and for the data keys of segments encrypted at rest (ADR 45).
//! Re-seals the key store from the current master key to a new one,
//! offline: the engine's `subject-keys` file under the data directory's
//! lock, or PostgreSQL's `subject_keys` table in one transaction; and
//! re-wraps each encrypted segment's data key into its second key slot.
//! Events are not rewritten (their fields are sealed under subject keys,
//! their pages under data keys, neither of which changes). Idempotent:
//! after an interruption, run it again.

use std::path::PathBuf;

use clap::Args;
use factum_crypto::{FileKeyStore, Rekeyed, SecretKey};
use factum_engine::engine::lock_dir;

use crate::error::CliError;

/// The environment variable naming the new master key's file.
pub const NEW_KEY_FILE_ENV: &str = "FACTUM_NEW_ENCRYPTION_KEY_FILE";
/// The environment variable holding the new master key itself (hex).
pub const NEW_KEY_ENV: &str = "FACTUM_NEW_ENCRYPTION_KEY";

/// Arguments of `factum rekey`.
#[derive(Args, Debug)]
pub struct RekeyArgs {
    /// The engine store's directory (no server may hold it).
    #[arg(
        long,
        env = "FACTUM_DATA",
        value_name = "DIR",
        required_unless_present = "postgres_url",
        conflicts_with = "postgres_url"
    )]
    data: Option<PathBuf>,
    /// Or a PostgreSQL store: its connection string. Stop (or restart with
    /// the new key) every server on it.
    #[arg(long, env = "FACTUM_POSTGRES_URL", value_name = "URL")]
    postgres_url: Option<String>,
    /// Schema of the PostgreSQL store [default: factum].
    #[arg(
        long,
        env = "FACTUM_POSTGRES_SCHEMA",
        value_name = "NAME",
        default_value = "factum"
    )]
    postgres_schema: String,
    /// The current master key's file (or the key itself in
    /// FACTUM_ENCRYPTION_KEY).
    #[arg(long, env = "FACTUM_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    encryption_key_file: Option<PathBuf>,
    /// The new master key's file, 64 hex digits (`openssl rand -hex 32`);
    /// or the key itself in FACTUM_NEW_ENCRYPTION_KEY.
    #[arg(long, env = NEW_KEY_FILE_ENV, value_name = "FILE")]
    new_encryption_key_file: Option<PathBuf>,
}

fn new_master(file: Option<&PathBuf>) -> Result<SecretKey, CliError> {
    let Some(provider) =
        factum_crypto::provider_from(file.map(|p| p.as_path()), NEW_KEY_FILE_ENV, NEW_KEY_ENV)
    else {
        return Err(CliError::usage(format!(
            "rekey needs the new master key: --new-encryption-key-file FILE ({NEW_KEY_FILE_ENV}) or {NEW_KEY_ENV}"
        )));
    };
    provider
        .master_key()
        .map_err(|e| CliError::usage(format!("new {e}")))
}

/// Runs `factum rekey`.
pub fn run(args: RekeyArgs) -> Result<(), CliError> {
    let Some(old) = super::forget::master_key(args.encryption_key_file.as_deref())? else {
        return Err(CliError::usage(
            "rekey needs the current master key: --encryption-key-file FILE (FACTUM_ENCRYPTION_KEY_FILE) or FACTUM_ENCRYPTION_KEY",
        ));
    };
    let new = new_master(args.new_encryption_key_file.as_ref())?;
    if old.expose() == new.expose() {
        return Err(CliError::usage(
            "the new master key is the current one: make a new one with `openssl rand -hex 32`",
        ));
    }
    if let Some(data) = &args.data {
        super::ensure_store(data)?;
        // Segments encrypted at rest (ADR 45): each data key re-wrapped in
        // its file's second key slot; no data rewritten.
        let segs = factum_engine::rekey_store(
            data,
            &factum_engine::MasterKey::new(old.clone()),
            &factum_engine::MasterKey::new(new.clone()),
        )
        .map_err(|e| {
            CliError::from(e).context(format!("rekeying the segments of {}", data.display()))
        })?;
        if segs.moved + segs.already > 0 {
            println!(
                "re-wrapped the data keys of {} encrypted segment(s) under the new master key ({} already were)",
                segs.moved, segs.already
            );
        }
        let _lock = lock_dir(data)?;
        let done = FileKeyStore::rekey(data, &old, &new).map_err(|e| {
            CliError::failure(e.to_string()).context(format!("rekeying {}", data.display()))
        })?;
        match done {
            Rekeyed::Resealed { subjects } => println!(
                "re-sealed the keys of {subjects} subject(s) under the new master key; serve with the new key from now on and retire the old one"
            ),
            Rekeyed::AlreadyNew { subjects } => println!(
                "the keys of {subjects} subject(s) are already under the new master key; nothing to do"
            ),
            Rekeyed::NoStore => {
                println!("{} holds no subject keys; nothing to do", data.display())
            }
        }
        return Ok(());
    }
    let url = args.postgres_url.clone().unwrap_or_default();
    let rt = super::runtime()?;
    let done = rt.block_on(async {
        let config = factum_postgres::PostgresConfig::new(url).schema(args.postgres_schema.clone());
        let store = factum_postgres::PostgresStore::connect(config)
            .await
            .map_err(|e| CliError::failure(format!("PostgreSQL: {e}")))?;
        store
            .subject_keys(new)
            .rekey(&old)
            .await
            .map_err(|e| CliError::failure(e.to_string()))
    })?;
    println!(
        "schema {}: re-sealed {} subject key(s) under the new master key ({} already were); restart every server with the new key and retire the old one",
        args.postgres_schema, done.resealed, done.already_new
    );
    Ok(())
}

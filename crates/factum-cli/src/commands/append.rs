//! `factum append`: one JSON event, durably.

use std::io::Read;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Args;
use factum_core::{ContentType, EventData, EventStore, ExpectedRevision, Uuid};

use super::{open, parse_stream, runtime};
use crate::error::CliError;

/// Arguments of `factum append`.
#[derive(Args, Debug)]
pub struct AppendArgs {
    /// The store's directory (created when missing).
    #[arg(long, env = "FACTUM_DATA", value_name = "DIR")]
    pub data: PathBuf,
    /// The stream to append to.
    pub stream: String,
    /// The event type, e.g. OrderPlaced.
    #[arg(value_name = "TYPE")]
    pub event_type: String,
    /// The event data: a JSON document (`-` reads it from stdin).
    #[arg(value_name = "JSON", allow_hyphen_values = true)]
    pub json: String,
    /// Expected revision of the stream: any, no-stream, exists, or a revision number.
    #[arg(long, default_value = "any", value_name = "EXPECTED")]
    pub expected: String,
    /// Event metadata: a JSON document.
    #[arg(long, value_name = "JSON", allow_hyphen_values = true)]
    pub metadata: Option<String>,
    /// The event id (a UUID; a retry with the same id is idempotent). Default: random.
    #[arg(long, value_name = "UUID")]
    pub id: Option<String>,
    /// The master key of crypto-shredding (ADR 36): needed when the
    /// metadata names a `$subject`, whose personal fields are encrypted.
    #[arg(long, env = "FACTUM_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    pub encryption_key_file: Option<PathBuf>,
}

/// Runs `factum append`.
pub fn run(args: AppendArgs) -> Result<(), CliError> {
    let stream = parse_stream(&args.stream)?;
    if !stream.is_writable() {
        return Err(CliError::usage(format!(
            "stream {stream} is read-only: $all, $ce-… and $et-… are derived from other streams"
        )));
    }
    let expected = ExpectedRevision::from_str(&args.expected).map_err(|_| {
        CliError::usage(format!(
            "unknown --expected {:?}: use any, no-stream, exists or a revision number",
            args.expected
        ))
    })?;
    if args.event_type.is_empty() {
        return Err(CliError::usage("the event type is empty"));
    }
    let data = if args.json == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::usage(format!("cannot read the event data from stdin: {e}")))?;
        s
    } else {
        args.json
    };
    check_json("event data", &data)?;
    let mut event = EventData::new(args.event_type, ContentType::Json, data.into_bytes());
    if let Some(m) = args.metadata {
        check_json("--metadata", &m)?;
        event = event.with_metadata(m.into_bytes());
    }
    if let Some(id) = args.id {
        let id = Uuid::parse_str(&id)
            .map_err(|e| CliError::usage(format!("--id {id:?} is not a UUID: {e}")))?;
        event = event.with_id(id);
    }
    let master = super::forget::master_key(args.encryption_key_file.as_deref())?;
    let names_subject = factum_crypto::convention::personal(&event.metadata)?.is_some();
    if names_subject && master.is_none() {
        return Err(CliError::usage(
            "the metadata names a $subject: give the master key (--encryption-key-file FILE, FACTUM_ENCRYPTION_KEY_FILE or FACTUM_ENCRYPTION_KEY) so its personal fields are written encrypted",
        ));
    }
    let engine = std::sync::Arc::new(open(
        &args.data,
        super::engine_config(args.encryption_key_file.as_deref())?,
    )?);
    let rt = runtime()?;
    let result = match master {
        Some(master) if names_subject => {
            let keys = super::forget::engine_keys(&args.data, master)?;
            let store = factum_crypto::Shredding::new(engine.clone(), std::sync::Arc::new(keys));
            rt.block_on(store.append(stream, expected, vec![event]))
        }
        _ => rt.block_on(engine.append(stream, expected, vec![event])),
    };
    let closed = engine.close();
    let r = result?;
    closed?;
    println!("revision={} position={}", r.revision, r.position);
    Ok(())
}

/// Fails with exit 2 unless `text` is one JSON document.
fn check_json(what: &str, text: &str) -> Result<(), CliError> {
    serde_json::from_str::<serde_json::Value>(text)
        .map(|_| ())
        .map_err(|e| CliError::usage(format!("{what} is not valid JSON: {e}")))
}

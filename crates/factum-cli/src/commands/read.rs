//! `factum read`: a stream, `$all`, `$ce-…` or `$et-…`, page by page.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use clap::Args;
use factum_core::{
    AllStart, Direction, EventStore, Position, ReadAll, ReadStream, RecordedEvent, StreamRevision,
    StreamStart,
};

use super::{ensure_store, open, parse_stream, runtime};
use crate::error::CliError;
use crate::output::EventPrinter;

/// Events fetched per read request.
const PAGE: u64 = 1000;

/// Arguments of `factum read`.
#[derive(Args, Debug)]
pub struct ReadArgs {
    /// The store's directory.
    #[arg(long, env = "FACTUM_DATA", value_name = "DIR")]
    pub data: PathBuf,
    /// A stream, `$all`, `$ce-<category>` or `$et-<type>`.
    pub stream: String,
    /// Start at this revision (for `$all`: this position), included.
    #[arg(long, value_name = "N")]
    pub from: Option<u64>,
    /// Newest first.
    #[arg(long)]
    pub backwards: bool,
    /// Print at most this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// One JSON object per line (see `output.rs` for the fields).
    #[arg(long)]
    pub json: bool,
    /// The master key of crypto-shredding (ADR 36): personal fields are
    /// shown decrypted (or erased); without it, as stored (encrypted).
    #[arg(long, env = "FACTUM_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    pub encryption_key_file: Option<PathBuf>,
}

/// Runs `factum read`.
pub fn run(args: ReadArgs) -> Result<(), CliError> {
    let stream = parse_stream(&args.stream)?;
    ensure_store(&args.data)?;
    let master = super::forget::master_key(args.encryption_key_file.as_deref())?;
    let engine = std::sync::Arc::new(open(
        &args.data,
        super::engine_config(args.encryption_key_file.as_deref())?,
    )?);
    let rt = runtime()?;
    let stdout = std::io::stdout();
    let mut printer = EventPrinter::new(BufWriter::new(stdout.lock()), args.json);
    let result = match master {
        Some(master) => {
            let keys = super::forget::engine_keys(&args.data, master)?;
            let store = factum_crypto::Shredding::new(engine.clone(), std::sync::Arc::new(keys));
            rt.block_on(read_to(&store, &stream, &args, &mut printer))
        }
        None => rt.block_on(read_to(&*engine, &stream, &args, &mut printer)),
    };
    let flushed = printer.flush();
    drop(printer);
    let closed = engine.close();
    result?;
    flushed?;
    closed?;
    Ok(())
}

async fn read_to<W: Write, S: EventStore>(
    engine: &S,
    stream: &factum_core::StreamName,
    args: &ReadArgs,
    printer: &mut EventPrinter<W>,
) -> Result<(), CliError> {
    let direction = if args.backwards {
        Direction::Backwards
    } else {
        Direction::Forwards
    };
    let mut remaining = args.count.unwrap_or(u64::MAX);
    if stream.is_all() {
        let mut from = match (args.from, direction) {
            (Some(p), _) => AllStart::Position(Position(p)),
            (None, Direction::Forwards) => AllStart::Start,
            (None, Direction::Backwards) => AllStart::End,
        };
        while remaining > 0 {
            let want = remaining.min(PAGE);
            let request = ReadAll {
                from,
                direction,
                max_count: want,
                max_bytes: u64::MAX,
                filter: None,
                until: None,
            };
            let events = engine.read_all(request).await?;
            let Some(next) = print_page(&events, printer, direction, |e| e.position.0)? else {
                break;
            };
            remaining -= events.len() as u64;
            if (events.len() as u64) < want {
                break;
            }
            from = AllStart::Position(Position(next));
        }
    } else {
        let mut from = match (args.from, direction) {
            (Some(r), _) => StreamStart::Revision(StreamRevision(r)),
            (None, Direction::Forwards) => StreamStart::Start,
            (None, Direction::Backwards) => StreamStart::End,
        };
        while remaining > 0 {
            let want = remaining.min(PAGE);
            let request = ReadStream {
                stream: stream.clone(),
                from,
                direction,
                max_count: want,
                max_bytes: u64::MAX,
                until: None,
            };
            let events = engine.read_stream(request).await?;
            let Some(next) = print_page(&events, printer, direction, |e| e.read_revision().0)?
            else {
                break;
            };
            remaining -= events.len() as u64;
            if (events.len() as u64) < want {
                break;
            }
            from = StreamStart::Revision(StreamRevision(next));
        }
    }
    Ok(())
}

/// Prints a page; returns where the next page starts, `None` when done.
fn print_page<W: Write>(
    events: &[RecordedEvent],
    printer: &mut EventPrinter<W>,
    direction: Direction,
    key: impl Fn(&RecordedEvent) -> u64,
) -> Result<Option<u64>, CliError> {
    for e in events {
        printer.print(e)?;
    }
    let Some(last) = events.last() else {
        return Ok(None);
    };
    Ok(match direction {
        Direction::Forwards => key(last).checked_add(1),
        Direction::Backwards => key(last).checked_sub(1),
    })
}

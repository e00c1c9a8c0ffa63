//! `factum tail`: follows a stream or `$all` live until Ctrl-C.

use std::path::PathBuf;

use clap::Args;
use factum_core::{
    EventStore, Subscribe, SubscriptionMessage, SubscriptionStart, SubscriptionTarget,
};

use super::{ensure_store, open, parse_stream, runtime};
use crate::error::CliError;
use crate::output::EventPrinter;

/// Arguments of `factum tail`.
#[derive(Args, Debug)]
pub struct TailArgs {
    /// The store's directory.
    #[arg(long, env = "FACTUM_DATA", value_name = "DIR")]
    pub data: PathBuf,
    /// A stream, `$all`, `$ce-<category>` or `$et-<type>`.
    pub stream: String,
    /// Print the existing events first, then follow (default: only new events).
    #[arg(long)]
    pub from_start: bool,
    /// One JSON object per line, as `read --json`.
    #[arg(long)]
    pub json: bool,
}

/// Runs `factum tail`.
pub fn run(args: TailArgs) -> Result<(), CliError> {
    let stream = parse_stream(&args.stream)?;
    ensure_store(&args.data)?;
    let engine = open(&args.data, super::engine_config(None)?)?;
    let rt = runtime()?;
    let start = if args.from_start {
        SubscriptionStart::Beginning
    } else {
        SubscriptionStart::End
    };
    let target = if stream.is_all() {
        SubscriptionTarget::All(None)
    } else {
        SubscriptionTarget::Stream(stream)
    };
    let result = rt.block_on(async {
        let mut sub = engine.subscribe(Subscribe { target, start }).await?;
        let stdout = std::io::stdout();
        let mut printer = EventPrinter::new(stdout.lock(), args.json);
        let stop = stop_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                message = sub.next() => match message {
                    None => return Err(CliError::failure("the store closed the subscription")),
                    Some(Err(e)) => return Err(CliError::from(e)),
                    Some(Ok(SubscriptionMessage::Event(e))) => {
                        printer.print(&e)?;
                        printer.flush()?;
                    }
                    Some(Ok(SubscriptionMessage::CaughtUp)) => {
                        tracing::info!("caught up; following live");
                    }
                    Some(Ok(SubscriptionMessage::FellBehind)) => {
                        tracing::warn!("fell behind the head; catching up from storage");
                    }
                    Some(Ok(SubscriptionMessage::Checkpoint(_))) => {}
                },
            }
        }
    });
    let closed = engine.close();
    result?;
    closed?;
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term_recv = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term_recv => {}
    }
}

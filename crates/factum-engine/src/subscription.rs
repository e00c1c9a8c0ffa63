//! Subscriptions: one pull loop serves catch-up and live.
//!
//! A subscription task reads the committed log after its cursor, page by
//! page, and sends what it finds into a bounded channel. At the head it
//! waits for the committed position to move. Catch-up and live are the same
//! read, so the hand-over can neither skip nor repeat an event, and the
//! writer never waits for a subscriber: a slow one only falls behind (and is
//! told so) while its task keeps reading from storage.

use factum_core::{
    Error, Position, Result, Subscribe, SubscriptionMessage, SubscriptionStart, SubscriptionTarget,
};
use tokio::sync::mpsc;

use crate::reader::Reader;

const PAGE: u64 = 512;
const MAX_SCAN: u64 = 8192;

struct Cursor {
    target: SubscriptionTarget,
    /// Next revision (stream) or position (`$all`) to read.
    next: u64,
}

/// Starts a subscription task; returns the receiving end.
pub fn start(
    reader: Reader,
    req: Subscribe,
    fell_behind: u64,
    buffer: usize,
) -> Result<mpsc::Receiver<Result<SubscriptionMessage>>> {
    let next = match (&req.target, req.start) {
        (_, SubscriptionStart::Beginning) => 0,
        (_, SubscriptionStart::After(n)) => n
            .checked_add(1)
            .ok_or_else(|| Error::InvalidInput("subscription start is past the end".into()))?,
        (SubscriptionTarget::All(_), SubscriptionStart::End) => reader.committed().next_position,
        (SubscriptionTarget::Stream(s), SubscriptionStart::End) => {
            reader.stream_next_revision(s)?
        }
    };
    if let SubscriptionTarget::Stream(s) = &req.target {
        if s.is_all() {
            return Err(Error::InvalidInput(
                "subscribe to $all with SubscriptionTarget::All".into(),
            ));
        }
    }
    let (tx, rx) = mpsc::channel(buffer.max(1));
    let cursor = Cursor {
        target: req.target,
        next,
    };
    tokio::spawn(run(reader, cursor, fell_behind, tx));
    Ok(rx)
}

async fn run(
    reader: Reader,
    mut cursor: Cursor,
    fell_behind: u64,
    tx: mpsc::Sender<Result<SubscriptionMessage>>,
) {
    let mut committed = reader.committed.clone();
    let mut live = false;
    let mut last_checkpoint = None;
    loop {
        committed.borrow_and_update();
        let page = read_page(&reader, &mut cursor);
        let events = match page {
            Ok(e) => e,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let scanned_to_head = match &cursor.target {
            SubscriptionTarget::All(_) => cursor.next >= reader.committed().next_position,
            SubscriptionTarget::Stream(_) => true,
        };
        if events.is_empty() && !scanned_to_head {
            continue;
        }
        if events.is_empty() {
            if !live {
                live = true;
                if tx.send(Ok(SubscriptionMessage::CaughtUp)).await.is_err() {
                    return;
                }
            }
            if let SubscriptionTarget::All(Some(_)) = &cursor.target {
                if cursor.next > 0 && last_checkpoint != Some(cursor.next) {
                    last_checkpoint = Some(cursor.next);
                    let cp = SubscriptionMessage::Checkpoint(Position(cursor.next - 1));
                    if tx.send(Ok(cp)).await.is_err() {
                        return;
                    }
                }
            }
            tokio::select! {
                changed = committed.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
            continue;
        }
        for e in events {
            if tx.send(Ok(SubscriptionMessage::Event(e))).await.is_err() {
                return;
            }
        }
        if live && behind(&reader, &cursor) > fell_behind {
            live = false;
            if tx.send(Ok(SubscriptionMessage::FellBehind)).await.is_err() {
                return;
            }
        }
    }
}

fn behind(reader: &Reader, cursor: &Cursor) -> u64 {
    match &cursor.target {
        SubscriptionTarget::All(_) => reader.committed().next_position.saturating_sub(cursor.next),
        SubscriptionTarget::Stream(s) => reader
            .stream_next_revision(s)
            .map_or(0, |n| n.saturating_sub(cursor.next)),
    }
}

fn read_page(reader: &Reader, cursor: &mut Cursor) -> Result<Vec<factum_core::RecordedEvent>> {
    match &cursor.target {
        SubscriptionTarget::All(filter) => {
            let (events, next) =
                reader.scan_forwards(cursor.next, PAGE, filter.as_ref(), None, MAX_SCAN)?;
            cursor.next = next;
            Ok(events)
        }
        SubscriptionTarget::Stream(stream) => {
            let req = factum_core::ReadStream::forwards(stream.clone())
                .from_revision(factum_core::StreamRevision(cursor.next))
                .max_count(PAGE);
            match reader.read_stream(&req) {
                Ok(events) => {
                    if let Some(last) = events.last() {
                        cursor.next = last.read_revision().0 + 1;
                    }
                    Ok(events)
                }
                Err(Error::StreamNotFound { .. }) => Ok(Vec::new()),
                Err(e) => Err(e),
            }
        }
    }
}

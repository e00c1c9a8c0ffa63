//! Subscriptions: the engine's side of the shared subscription loop
//! (`factum_core::follow`, ADR 3). Pages come from the committed log, read
//! on the reader pool like any other read (ADR 13); the head is the
//! writer's `watch` of the committed position. A `$all` cursor is a public
//! position (the log position + 1, ADR 25), so the checkpoints the shared
//! loop derives from it are public too.

use factum_core::follow::{cursor_after, follow, Follow};
use factum_core::{
    Error, PageBound, Position, ReadStream, RecordedEvent, Result, StreamRevision, Subscribe,
    Subscription, SubscriptionStart, SubscriptionTarget,
};
use std::sync::Arc;

use tokio::sync::watch;

use crate::format::{log_position, public_position};
use crate::pool::{Progress, ReadPool};
use crate::reader::Reader;
use crate::writer::Committed;

const PAGE: u64 = 512;
/// A catch-up page also ends at this many bytes (ADR 21).
const PAGE_BYTES: u64 = factum_core::PAGE_BYTES;
const MAX_SCAN: u64 = 8192;

struct EngineFollow {
    reader: Reader,
    pool: Arc<ReadPool>,
    committed: watch::Receiver<Committed>,
}

/// The public position after the log's last committed event: where a
/// `$all` cursor stands at the head.
fn public_next(reader: &Reader) -> u64 {
    public_position(reader.committed().next_position).0
}

/// One page of `target` after `cursor` (for `$all` a public position, at
/// least 1): the events, the cursor after them and whether it reached the
/// head.
fn page(
    reader: &Reader,
    target: &SubscriptionTarget,
    cursor: u64,
    progress: &mut Progress<'_>,
) -> Result<(Vec<RecordedEvent>, u64, bool)> {
    match target {
        SubscriptionTarget::All(filter) => {
            let from = log_position(Position(cursor)).unwrap_or(0);
            let (events, next) = reader.scan_forwards(
                from,
                PageBound::new(PAGE, PAGE_BYTES),
                filter.as_ref(),
                None,
                MAX_SCAN,
                progress,
            )?;
            let next = public_position(next).0;
            Ok((events, next, next >= public_next(reader)))
        }
        SubscriptionTarget::Stream(stream) => {
            let req = ReadStream::forwards(stream.clone())
                .from_revision(StreamRevision(cursor))
                .max_count(PAGE)
                .max_bytes(PAGE_BYTES);
            match reader.read_stream(&req, progress) {
                Ok(events) => {
                    let next = events.last().map_or(cursor, |e| e.read_revision().0 + 1);
                    Ok((events, next, true))
                }
                Err(Error::StreamNotFound { .. }) => Ok((Vec::new(), cursor, true)),
                Err(e) => Err(e),
            }
        }
    }
}

impl Follow for EngineFollow {
    async fn page(
        &mut self,
        target: &SubscriptionTarget,
        cursor: &mut u64,
    ) -> Result<(Vec<RecordedEvent>, bool)> {
        let (reader, target, from) = (self.reader.clone(), target.clone(), *cursor);
        let (events, next, at_head) = self
            .pool
            .run(move |progress| page(&reader, &target, from, progress))
            .await?;
        *cursor = next;
        Ok((events, at_head))
    }

    async fn behind(&mut self, target: &SubscriptionTarget, cursor: u64) -> u64 {
        match target {
            SubscriptionTarget::All(_) => public_next(&self.reader).saturating_sub(cursor),
            SubscriptionTarget::Stream(s) => {
                let (reader, stream) = (self.reader.clone(), s.clone());
                self.pool
                    .run(move |_| reader.stream_next_revision(&stream))
                    .await
                    .map_or(0, |n| n.saturating_sub(cursor))
            }
        }
    }

    fn mark_seen(&mut self) {
        self.committed.borrow_and_update();
    }

    async fn wait(&mut self) -> bool {
        self.committed.changed().await.is_ok()
    }
}

/// Starts a subscription; its reads run on `pool`.
pub(crate) async fn start(
    reader: Reader,
    pool: Arc<ReadPool>,
    req: Subscribe,
    fell_behind: u64,
) -> Result<Subscription> {
    if let SubscriptionTarget::Stream(s) = &req.target {
        if s.is_all() {
            return Err(Error::InvalidInput(
                "subscribe to $all with SubscriptionTarget::All".into(),
            ));
        }
    }
    let cursor = match (&req.target, req.start) {
        (SubscriptionTarget::All(_), SubscriptionStart::Beginning) => 1,
        (SubscriptionTarget::Stream(_), SubscriptionStart::Beginning) => 0,
        (_, SubscriptionStart::After(n)) => cursor_after(n)?,
        (SubscriptionTarget::All(_), SubscriptionStart::End) => public_next(&reader),
        (SubscriptionTarget::Stream(s), SubscriptionStart::End) => {
            let (reader, stream) = (reader.clone(), s.clone());
            pool.run(move |_| reader.stream_next_revision(&stream))
                .await?
        }
    };
    let source = EngineFollow {
        committed: reader.committed.clone(),
        reader,
        pool,
    };
    Ok(follow(source, req.target, cursor, fell_behind))
}

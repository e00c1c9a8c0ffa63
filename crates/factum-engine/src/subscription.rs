//! Subscriptions: the engine's side of the shared subscription loop
//! (`factum_core::follow`, ADR 3). Pages come from the committed log, read
//! on the reader pool like any other read (ADR 13); the head is the
//! writer's `watch` of the committed position. A `$all` cursor is a public
//! position (the log position + 1, ADR 25), so the checkpoints the shared
//! loop derives from it are public too.

use factum_core::follow::{
    follow, page_bound, start_cursor, stream_page, stream_page_request, Follow, MAX_SCAN,
};
use factum_core::{
    PageBound, Position, RecordedEvent, Result, Subscribe, Subscription, SubscriptionTarget,
};
use std::sync::Arc;

use tokio::sync::watch;

use crate::format::{log_position, public_position};
use crate::pool::{Progress, ReadPool};
use crate::reader::{Committed, Reader};

struct EngineFollow {
    reader: Reader,
    pool: Arc<ReadPool>,
    committed: watch::Receiver<Committed>,
    /// The committed end when a `$all` page last reached the head: the
    /// next page then reads only what was committed since.
    head_end: Option<crate::log::Loc>,
}

/// A live `$all` page whose new log bytes are at most this many is read on
/// the subscription's own task rather than the reader pool: the bytes
/// were just written (in the page cache and the block cache), and the
/// hand-off to a pool thread and back would be most of its cost.
const INLINE_TAIL_BYTES: u64 = 64 << 10;

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
    bound: PageBound,
    progress: &mut Progress<'_>,
) -> Result<(Vec<RecordedEvent>, u64, bool)> {
    match target {
        SubscriptionTarget::All(filter) => {
            let from = log_position(Position(cursor)).unwrap_or(0);
            let (events, next) =
                reader.scan_forwards(from, bound, filter.as_ref(), None, MAX_SCAN, progress)?;
            let next = public_position(next).0;
            Ok((events, next, next >= public_next(reader)))
        }
        SubscriptionTarget::Stream(stream) => {
            let read = reader.read_stream(&stream_page_request(stream, cursor), progress);
            let (events, next) = stream_page(read, cursor)?;
            Ok((events, next, true))
        }
    }
}

impl Follow for EngineFollow {
    async fn page(
        &mut self,
        target: &SubscriptionTarget,
        cursor: &mut u64,
    ) -> Result<(Vec<RecordedEvent>, bool)> {
        let end = self.reader.committed().end;
        let small_tail = matches!(target, SubscriptionTarget::All(_))
            && self.head_end.is_some_and(|was| {
                was.segment() == end.segment()
                    && end.offset().saturating_sub(was.offset()) <= INLINE_TAIL_BYTES
            });
        let (events, next, at_head) = if small_tail {
            // Bounded by bytes too, should more have been committed since.
            let bound = PageBound::new(page_bound().max_count(), INLINE_TAIL_BYTES);
            page(
                &self.reader,
                target,
                *cursor,
                bound,
                &mut crate::pool::Progress::unbounded(),
            )?
        } else {
            let (reader, target, from) = (self.reader.clone(), target.clone(), *cursor);
            self.pool
                .run(move |progress| page(&reader, &target, from, page_bound(), progress))
                .await?
        };
        // Read up to `end` at least: at the head, the next page starts there.
        self.head_end = at_head.then_some(end);
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
    let cursor = match start_cursor(&req)? {
        Some(cursor) => cursor,
        None => match &req.target {
            SubscriptionTarget::All(_) => public_next(&reader),
            SubscriptionTarget::Stream(s) => {
                let (reader, stream) = (reader.clone(), s.clone());
                pool.run(move |_| reader.stream_next_revision(&stream))
                    .await?
            }
        },
    };
    let source = EngineFollow {
        committed: reader.committed.clone(),
        reader,
        pool,
        head_end: None,
    };
    Ok(follow(source, req.target, cursor, fell_behind))
}

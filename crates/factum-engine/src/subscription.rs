//! Subscriptions: the engine's side of the shared subscription loop
//! (`factum_core::follow`, ADR 3). Pages come from the committed log; the
//! head is the writer's `watch` of the committed position.

use factum_core::follow::{cursor_after, follow, Follow};
use factum_core::{
    Error, ReadStream, RecordedEvent, Result, StreamRevision, Subscribe, Subscription,
    SubscriptionStart, SubscriptionTarget,
};
use tokio::sync::watch;

use crate::reader::Reader;
use crate::writer::Committed;

const PAGE: u64 = 512;
const MAX_SCAN: u64 = 8192;

struct EngineFollow {
    reader: Reader,
    committed: watch::Receiver<Committed>,
}

impl Follow for EngineFollow {
    async fn page(
        &mut self,
        target: &SubscriptionTarget,
        cursor: &mut u64,
    ) -> Result<(Vec<RecordedEvent>, bool)> {
        match target {
            SubscriptionTarget::All(filter) => {
                let (events, next) =
                    self.reader
                        .scan_forwards(*cursor, PAGE, filter.as_ref(), None, MAX_SCAN)?;
                *cursor = next;
                Ok((events, next >= self.reader.committed().next_position))
            }
            SubscriptionTarget::Stream(stream) => {
                let req = ReadStream::forwards(stream.clone())
                    .from_revision(StreamRevision(*cursor))
                    .max_count(PAGE);
                match self.reader.read_stream(&req) {
                    Ok(events) => {
                        if let Some(last) = events.last() {
                            *cursor = last.read_revision().0 + 1;
                        }
                        Ok((events, true))
                    }
                    Err(Error::StreamNotFound { .. }) => Ok((Vec::new(), true)),
                    Err(e) => Err(e),
                }
            }
        }
    }

    async fn behind(&mut self, target: &SubscriptionTarget, cursor: u64) -> u64 {
        match target {
            SubscriptionTarget::All(_) => {
                self.reader.committed().next_position.saturating_sub(cursor)
            }
            SubscriptionTarget::Stream(s) => self
                .reader
                .stream_next_revision(s)
                .map_or(0, |n| n.saturating_sub(cursor)),
        }
    }

    fn mark_seen(&mut self) {
        self.committed.borrow_and_update();
    }

    async fn wait(&mut self) -> bool {
        self.committed.changed().await.is_ok()
    }
}

/// Starts a subscription.
pub fn start(reader: Reader, req: Subscribe, fell_behind: u64) -> Result<Subscription> {
    if let SubscriptionTarget::Stream(s) = &req.target {
        if s.is_all() {
            return Err(Error::InvalidInput(
                "subscribe to $all with SubscriptionTarget::All".into(),
            ));
        }
    }
    let cursor = match (&req.target, req.start) {
        (_, SubscriptionStart::Beginning) => 0,
        (_, SubscriptionStart::After(n)) => cursor_after(n)?,
        (SubscriptionTarget::All(_), SubscriptionStart::End) => reader.committed().next_position,
        (SubscriptionTarget::Stream(s), SubscriptionStart::End) => {
            reader.stream_next_revision(s)?
        }
    };
    let source = EngineFollow {
        committed: reader.committed.clone(),
        reader,
    };
    Ok(follow(source, req.target, cursor, fell_behind))
}

//! The subscription loop every backend shares (ADR 3): catch-up and live
//! are one read from one cursor, so the hand-over can neither skip nor
//! repeat an event, and nobody waits for a slow subscriber — it only falls
//! behind and is told so.
//!
//! A backend implements [`Follow`] (read a page after a cursor, wait for the
//! head to move) and calls [`follow`]. The loop reads only when the
//! subscriber asks for more, so a subscriber that stops reading costs
//! nothing.

use std::collections::VecDeque;
use std::future::Future;

use crate::error::{Error, Result};
use crate::model::{Position, RecordedEvent, StreamName, StreamRevision};
use crate::read::{
    PageBound, ReadStream, Subscribe, SubscriptionStart, SubscriptionTarget, PAGE_BYTES,
};
use crate::store::{Subscription, SubscriptionMessage};

/// What a backend provides to [`follow`].
pub trait Follow: Send + 'static {
    /// Reads up to one page of events of `target` after `cursor` (the next
    /// revision for a stream, the next position for `$all`), advancing the
    /// cursor past everything examined. Returns the events and whether the
    /// cursor reached the head.
    fn page(
        &mut self,
        target: &SubscriptionTarget,
        cursor: &mut u64,
    ) -> impl Future<Output = Result<(Vec<RecordedEvent>, bool)>> + Send;

    /// How many events the cursor is behind the head.
    fn behind(
        &mut self,
        target: &SubscriptionTarget,
        cursor: u64,
    ) -> impl Future<Output = u64> + Send;

    /// Marks the head as seen; called before each read so that [`Follow::wait`]
    /// returns when anything commits after it.
    fn mark_seen(&mut self);

    /// Waits until the head may have moved (or, after a transient error, a
    /// while). `false` when the store closed and the subscription ends.
    fn wait(&mut self) -> impl Future<Output = bool> + Send;
}

struct State<F> {
    source: F,
    target: SubscriptionTarget,
    cursor: u64,
    fell_behind: u64,
    live: bool,
    last_checkpoint: Option<u64>,
    pending: VecDeque<Result<SubscriptionMessage>>,
    wait_first: bool,
    done: bool,
}

/// The cursor of a subscription that starts after `n` (a revision or a
/// position): `n + 1`. After `u64::MAX` nothing can ever come, so that
/// start is `InvalidInput` rather than a wrapped cursor at the beginning.
pub fn cursor_after(n: u64) -> Result<u64> {
    n.checked_add(1).ok_or_else(|| {
        Error::InvalidInput(format!(
            "subscription start after {n} is out of range: the largest is {}",
            u64::MAX - 1
        ))
    })
}

/// Events in one catch-up page at most (a page also ends at
/// [`PAGE_BYTES`], ADR 21).
pub const PAGE_EVENTS: u64 = 512;

/// Log entries one `$all` page examines at most, matching or not, so that a
/// filter matching nothing still answers (and is cancellable) in bounded steps.
pub const MAX_SCAN: u64 = 8192;

/// The bound of one catch-up page.
pub fn page_bound() -> PageBound {
    PageBound::new(PAGE_EVENTS, PAGE_BYTES)
}

/// Where a subscription's cursor starts: `Some(cursor)` from the request
/// alone (`Beginning`: position 1 for `$all`, ADR 25, revision 0 for a
/// stream; `After(n)`: [`cursor_after`]), `None` for `End`, where the
/// backend puts it at its head. `$all` named as a stream is refused.
pub fn start_cursor(request: &Subscribe) -> Result<Option<u64>> {
    let all = match &request.target {
        SubscriptionTarget::All(_) => true,
        SubscriptionTarget::Stream(s) if s.is_all() => {
            return Err(Error::InvalidInput(
                "subscribe to $all with SubscriptionTarget::All".into(),
            ))
        }
        SubscriptionTarget::Stream(_) => false,
    };
    match request.start {
        SubscriptionStart::Beginning => Ok(Some(if all { 1 } else { 0 })),
        SubscriptionStart::After(n) => cursor_after(n).map(Some),
        SubscriptionStart::End => Ok(None),
    }
}

/// The read of one catch-up page of `stream` from revision `cursor`.
pub fn stream_page_request(stream: &StreamName, cursor: u64) -> ReadStream {
    ReadStream::forwards(stream.clone())
        .from_revision(StreamRevision(cursor))
        .max_count(PAGE_EVENTS)
        .max_bytes(PAGE_BYTES)
}

/// A stream page from the backend's answer to [`stream_page_request`]: the
/// events and the cursor after them (the revision after the last one read,
/// the link's revision for `$ce-`/`$et-`). A stream that does not exist
/// (yet) is an empty page, the cursor unmoved.
pub fn stream_page(
    read: Result<Vec<RecordedEvent>>,
    cursor: u64,
) -> Result<(Vec<RecordedEvent>, u64)> {
    match read {
        Ok(events) => {
            let next = events.last().map_or(cursor, |e| e.read_revision().0 + 1);
            Ok((events, next))
        }
        Err(Error::StreamNotFound { .. }) => Ok((Vec::new(), cursor)),
        Err(e) => Err(e),
    }
}

/// A subscription over `source` from `cursor` (the first revision or
/// position to deliver). A live subscriber more than `fell_behind` events
/// behind the head is sent [`SubscriptionMessage::FellBehind`].
pub fn follow<F: Follow>(
    source: F,
    target: SubscriptionTarget,
    cursor: u64,
    fell_behind: u64,
) -> Subscription {
    let state = State {
        source,
        target,
        cursor,
        fell_behind,
        live: false,
        last_checkpoint: None,
        pending: VecDeque::new(),
        wait_first: false,
        done: false,
    };
    Subscription::new(futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(m) = st.pending.pop_front() {
                return Some((m, st));
            }
            if st.done {
                return None;
            }
            if std::mem::take(&mut st.wait_first) && !st.source.wait().await {
                return None;
            }
            st.source.mark_seen();
            let (events, at_head) = match st.source.page(&st.target, &mut st.cursor).await {
                Ok(page) => page,
                Err(e) if e.is_transient() => {
                    // The backend is down or restarting: resume from the cursor later.
                    st.wait_first = true;
                    continue;
                }
                Err(e) => {
                    st.done = true;
                    st.pending.push_back(Err(e));
                    continue;
                }
            };
            if events.is_empty() {
                if !at_head {
                    continue;
                }
                if !st.live {
                    st.live = true;
                    st.pending.push_back(Ok(SubscriptionMessage::CaughtUp));
                }
                if let SubscriptionTarget::All(Some(_)) = &st.target {
                    // A `$all` cursor of 1 has examined nothing (the first
                    // event is at 1): no checkpoint to report yet.
                    if st.cursor > 1 && st.last_checkpoint != Some(st.cursor) {
                        st.last_checkpoint = Some(st.cursor);
                        st.pending
                            .push_back(Ok(SubscriptionMessage::Checkpoint(Position(
                                st.cursor - 1,
                            ))));
                    }
                }
                st.wait_first = true;
                continue;
            }
            st.pending.extend(
                events
                    .into_iter()
                    .map(|e| Ok(SubscriptionMessage::Event(e))),
            );
            if st.live && st.source.behind(&st.target, st.cursor).await > st.fell_behind {
                st.live = false;
                st.pending.push_back(Ok(SubscriptionMessage::FellBehind));
            }
        }
    }))
}

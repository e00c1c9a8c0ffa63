//! Read and subscription requests, and server-side filters.

pub use crate::filter::{Filter, FilterMatch, FilterOn};
use crate::model::{Position, RecordedEvent, StreamName, StreamRevision, Timestamp};

/// Which way to read.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forwards,
    /// Newest first.
    Backwards,
}

/// Where a stream read starts (inclusive).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum StreamStart {
    /// The first event (forwards) — or, backwards, the last.
    #[default]
    Start,
    /// The last event (backwards); forwards from `End` reads nothing.
    End,
    /// This revision, included.
    Revision(StreamRevision),
}

/// Where a `$all` read starts (inclusive).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum AllStart {
    /// The first event (forwards) — or, backwards, the head.
    #[default]
    Start,
    /// The head (backwards); forwards from `End` reads nothing.
    End,
    /// This position, included (forwards from 0, "before the first event",
    /// is the first event; backwards from 0 reads nothing).
    Position(Position),
}

/// A read of one stream: a user stream, `$ce-<category>` or `$et-<type>`.
#[derive(Clone, Debug)]
pub struct ReadStream {
    /// The stream.
    pub stream: StreamName,
    /// Where to start.
    pub from: StreamStart,
    /// Which way.
    pub direction: Direction,
    /// At most this many events.
    pub max_count: u64,
    /// At most about this many bytes: the page ends after the event that
    /// brings it to `max_bytes` (see [`PageBound`]); at least one event.
    pub max_bytes: u64,
    /// Only events created at or before this time (a temporal read).
    pub until: Option<Timestamp>,
}

impl ReadStream {
    /// Forwards from the start, without a count limit.
    pub fn forwards(stream: StreamName) -> Self {
        ReadStream {
            stream,
            from: StreamStart::Start,
            direction: Direction::Forwards,
            max_count: u64::MAX,
            max_bytes: u64::MAX,
            until: None,
        }
    }

    /// Backwards from the end, without a count limit.
    pub fn backwards(stream: StreamName) -> Self {
        ReadStream {
            direction: Direction::Backwards,
            from: StreamStart::End,
            ..Self::forwards(stream)
        }
    }

    /// Starts at this revision (inclusive).
    pub fn from_revision(mut self, revision: StreamRevision) -> Self {
        self.from = StreamStart::Revision(revision);
        self
    }

    /// Reads at most `n` events.
    pub fn max_count(mut self, n: u64) -> Self {
        self.max_count = n;
        self
    }

    /// Ends the page after the event that brings it to `n` bytes.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }

    /// Only events created at or before `t`.
    pub fn until(mut self, t: Timestamp) -> Self {
        self.until = Some(t);
        self
    }
}

/// A read of the global log.
#[derive(Clone, Debug)]
pub struct ReadAll {
    /// Where to start.
    pub from: AllStart,
    /// Which way.
    pub direction: Direction,
    /// At most this many (matching) events.
    pub max_count: u64,
    /// At most about this many bytes of (matching) events: the page ends
    /// after the event that brings it to `max_bytes` (see [`PageBound`]);
    /// at least one event.
    pub max_bytes: u64,
    /// Only matching events.
    pub filter: Option<Filter>,
    /// Only events created at or before this time.
    pub until: Option<Timestamp>,
}

impl ReadAll {
    /// Forwards from position 0, without a count limit.
    pub fn forwards() -> Self {
        ReadAll {
            from: AllStart::Start,
            direction: Direction::Forwards,
            max_count: u64::MAX,
            max_bytes: u64::MAX,
            filter: None,
            until: None,
        }
    }

    /// Backwards from the head, without a count limit.
    pub fn backwards() -> Self {
        ReadAll {
            from: AllStart::End,
            direction: Direction::Backwards,
            ..Self::forwards()
        }
    }

    /// Starts at this position (inclusive).
    pub fn from_position(mut self, p: Position) -> Self {
        self.from = AllStart::Position(p);
        self
    }

    /// Reads at most `n` events.
    pub fn max_count(mut self, n: u64) -> Self {
        self.max_count = n;
        self
    }

    /// Ends the page after the event that brings it to `n` bytes.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }

    /// Only events the filter accepts.
    pub fn filter(mut self, f: Filter) -> Self {
        self.filter = Some(f);
        self
    }

    /// Only events created at or before `t`.
    pub fn until(mut self, t: Timestamp) -> Self {
        self.until = Some(t);
        self
    }
}

/// Bytes in a page of events that the server builds at once (a gRPC read
/// page, a subscription's catch-up page, an HTTP page): with events of up
/// to 16 MiB a page of thousands cannot be held whole, so pages end at
/// this size as well as at their count (ADR 21).
pub const PAGE_BYTES: u64 = 4 << 20;

/// Counts a page against its `max_count` and `max_bytes`: the page ends
/// after the event that brings it to either, so it always holds at least
/// one event and at most `max_bytes` plus one event's size. An event's
/// bytes are [`RecordedEvent::size`], what it counts against the largest
/// append.
#[derive(Clone, Copy, Debug)]
pub struct PageBound {
    count: u64,
    bytes: u64,
    max_count: u64,
    max_bytes: u64,
}

impl PageBound {
    /// A page of at most `max_count` events and about `max_bytes` bytes.
    pub fn new(max_count: u64, max_bytes: u64) -> Self {
        PageBound {
            count: 0,
            bytes: 0,
            max_count,
            max_bytes,
        }
    }

    /// Counts an event into the page; `true` when the page is now full.
    pub fn add(&mut self, e: &RecordedEvent) -> bool {
        self.count += 1;
        self.bytes = self.bytes.saturating_add(e.size() as u64);
        self.is_full()
    }

    /// The page's count bound.
    pub fn max_count(&self) -> u64 {
        self.max_count
    }

    /// Bytes the page may still take before it is full (at least 1).
    pub fn bytes_left(&self) -> u64 {
        self.max_bytes.saturating_sub(self.bytes).max(1)
    }

    /// Takes an event into the page if there is room for it: `false` once
    /// the page is full (for iterator adaptors such as `take_while`).
    pub fn admit(&mut self, e: &RecordedEvent) -> bool {
        if self.is_full() {
            return false;
        }
        self.add(e);
        true
    }

    /// Has the page reached either bound? A page that is not full ended
    /// because nothing more was there to read.
    pub fn is_full(&self) -> bool {
        self.count >= self.max_count || (self.count > 0 && self.bytes >= self.max_bytes)
    }

    /// Did this page of a read with these bounds end at a bound (so more
    /// may follow) rather than at the end of what there is?
    pub fn ended_full(events: &[RecordedEvent], max_count: u64, max_bytes: u64) -> bool {
        let mut b = PageBound::new(max_count, max_bytes);
        events.iter().any(|e| b.add(e))
    }
}

/// What a subscription follows.
#[derive(Clone, Debug)]
pub enum SubscriptionTarget {
    /// One stream (a user stream, `$ce-…` or `$et-…`).
    Stream(StreamName),
    /// The global log, optionally filtered.
    All(Option<Filter>),
}

/// Where a subscription starts. Subscriptions start *after* the given point
/// (exclusive), as in KurrentDB, so a consumer passes its last checkpoint.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SubscriptionStart {
    /// From the first event.
    Beginning,
    /// Only events committed after the subscription starts.
    End,
    /// After this revision (stream targets) or position (`$all`).
    After(u64),
}

/// A subscription request.
#[derive(Clone, Debug)]
pub struct Subscribe {
    /// What to follow.
    pub target: SubscriptionTarget,
    /// From where.
    pub start: SubscriptionStart,
}

impl Subscribe {
    /// Follow a stream.
    pub fn stream(stream: StreamName, start: SubscriptionStart) -> Self {
        Subscribe {
            target: SubscriptionTarget::Stream(stream),
            start,
        }
    }

    /// Follow `$all`, optionally filtered.
    pub fn all(start: SubscriptionStart, filter: Option<Filter>) -> Self {
        Subscribe {
            target: SubscriptionTarget::All(filter),
            start,
        }
    }
}

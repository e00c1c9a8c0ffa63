//! Reads that resume: a read whose connection breaks, or whose server
//! restarts, is asked again from after the last event received (see
//! [`Retry`](crate::Retry)); its events arrive as the server sends them.

use factum_core::{
    AllStart, Direction, Error, Position, ReadAll, ReadStream, RecordedEvent, Result, StreamName,
    StreamRevision, StreamStart, Timestamp,
};
use factum_proto::streams::read_resp::Content;
use factum_proto::streams::ReadResp;
use tonic::Streaming;

use crate::read::ReadItem;
use crate::retry::Backoff;
use crate::{request, wire, Client};

/// What a read asks for; advanced past every event received, so a read
/// whose connection breaks resumes where it stopped.
pub(crate) enum Target {
    Stream(ReadStream),
    All(ReadAll),
}

/// What is left of a read's `max_count` and `max_bytes` after `e`: the
/// read ends (a count of 0) after the event that brings it to `max_bytes`,
/// as every backend's page does (`factum_core::PageBound`). The server
/// streams the events; the client stops reading them there.
fn page_left(count: u64, bytes: u64, e: &RecordedEvent) -> (u64, u64) {
    let size = e.size() as u64;
    if size >= bytes {
        (0, 0)
    } else {
        (count, bytes - size)
    }
}

/// A read that resumes after transient failures (see [`Retry`]).
pub(crate) struct Resumable {
    client: Client,
    target: Target,
    events: Option<Events>,
    backoff: Backoff,
    done: bool,
    /// The server answered once: a count of 0 still asks it, so that a
    /// missing or deleted stream is reported as by every other backend.
    opened: bool,
}

impl Resumable {
    pub(crate) fn new(client: &Client, target: Target) -> Resumable {
        Resumable {
            client: client.clone(),
            backoff: Backoff::new(client.retry),
            target,
            events: None,
            done: false,
            opened: false,
        }
    }

    fn remaining(&self) -> u64 {
        match &self.target {
            Target::Stream(r) => r.max_count,
            Target::All(r) => r.max_count,
        }
    }

    async fn open(&self) -> Result<Events> {
        match &self.target {
            Target::Stream(r) => {
                let resp = self.client.read(request::read_stream(r), &r.stream).await?;
                Ok(Events {
                    resp,
                    stream: r.stream.clone(),
                    direction: r.direction,
                    remaining: r.max_count,
                    until: r.until,
                    done: false,
                })
            }
            Target::All(r) => {
                let all = StreamName::all();
                let resp = self.client.read(request::read_all(r), &all).await?;
                Ok(Events::new(resp, all, r))
            }
        }
    }

    /// The request for what comes after `e`.
    fn advance(&mut self, e: &RecordedEvent) {
        match &mut self.target {
            Target::Stream(r) => {
                r.max_count = r.max_count.saturating_sub(1);
                (r.max_count, r.max_bytes) = page_left(r.max_count, r.max_bytes, e);
                let rev = e.read_revision().0;
                match r.direction {
                    Direction::Forwards => r.from = StreamStart::Revision(StreamRevision(rev + 1)),
                    Direction::Backwards if rev == 0 => r.max_count = 0,
                    Direction::Backwards => r.from = StreamStart::Revision(StreamRevision(rev - 1)),
                }
            }
            Target::All(r) => {
                r.max_count = r.max_count.saturating_sub(1);
                (r.max_count, r.max_bytes) = page_left(r.max_count, r.max_bytes, e);
                let p = e.position.0;
                match r.direction {
                    Direction::Forwards => r.from = AllStart::Position(Position(p + 1)),
                    Direction::Backwards if p == 0 => r.max_count = 0,
                    Direction::Backwards => r.from = AllStart::Position(Position(p - 1)),
                }
            }
        }
    }

    pub(crate) async fn next(&mut self) -> Option<Result<RecordedEvent>> {
        loop {
            if self.done || (self.opened && self.remaining() == 0) {
                return None;
            }
            if self.events.is_none() {
                match self.open().await {
                    Ok(events) => {
                        self.events = Some(events);
                        self.opened = true;
                    }
                    Err(e) => {
                        if self.backoff.again(&e).await {
                            continue;
                        }
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            let Some(events) = self.events.as_mut() else {
                continue;
            };
            match events.next().await {
                Some(Ok(e)) => {
                    self.backoff.reset();
                    self.advance(&e);
                    return Some(Ok(e));
                }
                Some(Err(e)) => {
                    self.events = None;
                    if self.backoff.again(&e).await {
                        continue;
                    }
                    self.done = true;
                    return Some(Err(e));
                }
                None => {
                    self.done = true;
                    return None;
                }
            }
        }
    }

    /// Everything the read returns.
    pub(crate) async fn collect(mut self) -> Result<Vec<RecordedEvent>> {
        let mut out = Vec::with_capacity(self.remaining().min(4096) as usize);
        while let Some(e) = self.next().await {
            out.push(e?);
        }
        Ok(out)
    }
}

/// The events of a count read, as they arrive.
struct Events {
    resp: Streaming<ReadItem>,
    stream: StreamName,
    direction: Direction,
    remaining: u64,
    until: Option<Timestamp>,
    done: bool,
}

impl Events {
    fn new(resp: Streaming<ReadItem>, stream: StreamName, request: &ReadAll) -> Events {
        Events {
            resp,
            stream,
            direction: request.direction,
            remaining: request.max_count,
            until: request.until,
            done: false,
        }
    }

    /// The next event created at or before `until`; `None` at the end.
    async fn next(&mut self) -> Option<Result<RecordedEvent>> {
        loop {
            // At a count of 0 the answer is still read: it may be
            // StreamNotFound (the server sends no events past the count).
            if self.done {
                return None;
            }
            let msg = match self.resp.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return None,
                Err(s) => {
                    self.done = true;
                    return Some(Err(wire::from_status(s, &self.stream)));
                }
            };
            match msg {
                ReadItem::Event(Ok(e)) => match self.until {
                    // Commit times never decrease along the log.
                    Some(t) if e.created > t && self.direction == Direction::Forwards => {
                        self.done = true;
                        return None;
                    }
                    Some(t) if e.created > t => continue,
                    _ => {
                        let Some(left) = self.remaining.checked_sub(1) else {
                            self.done = true;
                            return None;
                        };
                        self.remaining = left;
                        return Some(Ok(e));
                    }
                },
                ReadItem::Event(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                ReadItem::Other(ReadResp {
                    content: Some(Content::StreamNotFound(_)),
                }) => {
                    self.done = true;
                    return Some(Err(Error::StreamNotFound {
                        stream: self.stream.clone(),
                    }));
                }
                ReadItem::Other(_) => {}
            }
        }
    }
}

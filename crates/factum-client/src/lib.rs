//! # factum-client
//!
//! A remote [`EventStore`] over the KurrentDB-compatible gRPC protocol:
//! the toolkit (or anything written against the trait) runs unchanged
//! against a `factum serve` — or, for what the protocol covers, a KurrentDB
//! node. It passes the core conformance testkit against `factum serve`.
//!
//! What the protocol cannot say is done on the client: temporal reads
//! (`until`) filter on each event's `created` time; `head_position` reads
//! `$all` backwards; metadata is the last `$metadata` event of `$$<stream>`.
//!
//! ```no_run
//! # async fn run() -> factum_core::Result<()> {
//! use factum_core::{EventData, EventStore, ExpectedRevision, ReadStream, StreamName};
//! let store = factum_client::Client::connect("esdb://127.0.0.1:2113?tls=false").await?;
//! let order = StreamName::new("order-1")?;
//! store.append(order.clone(), ExpectedRevision::Any, vec![EventData::binary("Placed", "x")]).await?;
//! let events = store.read_stream(ReadStream::forwards(order)).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod batch;
mod read;
mod wire;

use std::time::Duration;

use factum_core::{
    AllStart, AppendResult, CurrentRevision, DeleteResult, Direction, Error, EventData, EventStore,
    ExpectedRevision, Filter, FilterMatch, FilterOn, Position, ReadAll, ReadStream, RecordedEvent,
    Result, StreamMetadata, StreamMetadataResult, StreamName, StreamRevision, StreamStart,
    Subscribe, Subscription, SubscriptionMessage, SubscriptionStart, SubscriptionTarget, Timestamp,
    METADATA_EVENT_TYPE,
};
use factum_proto::shared::Empty;
use factum_proto::streams::read_req::options::{
    self as ro, CountOption, FilterOption, StreamOption,
};
use factum_proto::streams::read_req::Options as ReadOptions;
use factum_proto::streams::read_resp::Content;
use factum_proto::streams::streams_client::StreamsClient;
use factum_proto::streams::ReadResp;
use factum_proto::streams::{append_req, append_resp, delete_req, tombstone_req, ReadReq};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
#[doc(hidden)]
pub use read::decode_read_message;
use read::ReadItem;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

/// The core error a failed call of a Factum server stands for, exactly as
/// the server's store returned it (from KurrentDB: by its `exception`
/// metadata or the status code). For calls this client does not make
/// itself, such as persistent subscriptions through the generated client.
pub fn error_from_status(status: tonic::Status) -> Error {
    wire::from_status(status, &StreamName::all())
}

/// Largest message the client sends or accepts (the server's default
/// append limit plus framing).
const MAX_MESSAGE: usize = 65 * 1024 * 1024;

/// A connection to a server; cheap to clone (one HTTP/2 connection shared).
#[derive(Clone, Debug)]
pub struct Client {
    streams: StreamsClient<Channel>,
    /// Reads go through their own codec (see `read.rs`).
    channel: Channel,
    /// The BatchAppend call appends share, opened on first use.
    batcher: std::sync::Arc<tokio::sync::Mutex<Option<std::sync::Arc<batch::Batcher>>>>,
    retry: Retry,
}

/// How operations that are safe to repeat are retried when the server is
/// unreachable or the connection breaks (an [`Error::Unavailable`]):
/// appends (event ids make a repeated append idempotent), metadata writes,
/// and reads (resumed after the last event received). Deletes, tombstones
/// and subscriptions are not retried. The wait doubles from `first_delay`
/// up to `max_delay`; progress (an event read) starts the count afresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all; 1 means no retry.
    pub attempts: u32,
    /// The wait before the first retry.
    pub first_delay: Duration,
    /// The longest wait between attempts.
    pub max_delay: Duration,
}

impl Default for Retry {
    /// 6 attempts over about 1.5 s: enough to ride out a server restart.
    fn default() -> Self {
        Retry {
            attempts: 6,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl Retry {
    /// No retries: every failure is returned at once.
    pub fn none() -> Retry {
        Retry {
            attempts: 1,
            ..Retry::default()
        }
    }
}

/// Errors after which a safe operation is tried again.
fn transient(e: &Error) -> bool {
    matches!(e, Error::Unavailable(_))
}

/// Attempts made so far and the next wait, for one operation.
struct Backoff {
    retry: Retry,
    attempt: u32,
    delay: Duration,
}

impl Backoff {
    fn new(retry: Retry) -> Backoff {
        Backoff {
            retry,
            attempt: 1,
            delay: retry.first_delay,
        }
    }

    /// Waits and returns true when `e` deserves another attempt.
    async fn again(&mut self, e: &Error) -> bool {
        if !transient(e) || self.attempt >= self.retry.attempts {
            return false;
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(self.retry.max_delay);
        self.attempt += 1;
        true
    }

    /// Progress was made: the next failure starts a fresh count.
    fn reset(&mut self) {
        self.attempt = 1;
        self.delay = self.retry.first_delay;
    }
}

impl Client {
    /// Connects to `http://host:port` or `esdb://host:port?tls=false`
    /// (TLS is not implemented yet and is refused).
    pub async fn connect(endpoint: &str) -> Result<Client> {
        let url = if let Some(rest) = endpoint.strip_prefix("esdb://") {
            let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
            if !query
                .split('&')
                .any(|kv| kv.eq_ignore_ascii_case("tls=false"))
            {
                return Err(Error::Unsupported(
                    "TLS connections are not implemented yet: add ?tls=false".into(),
                ));
            }
            let host = hosts
                .split(',')
                .next()
                .unwrap_or(hosts)
                .trim_end_matches('/');
            format!("http://{host}")
        } else {
            endpoint.to_owned()
        };
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::InvalidInput(format!("bad endpoint {endpoint:?}: {e}")))?
            .tcp_nodelay(true)
            // Reads stream many events: HTTP/2's default 64 KiB window
            // would stall the server between window updates.
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .connect()
            .await
            .map_err(|e| Error::Unavailable(format!("cannot connect to {url}: {e}")))?;
        Ok(Client {
            channel: channel.clone(),
            streams: StreamsClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            batcher: Default::default(),
            retry: Retry::default(),
        })
    }

    /// The same client with another retry policy.
    pub fn with_retry(mut self, retry: Retry) -> Client {
        self.retry = retry;
        self
    }

    /// Runs `op` until it succeeds, fails for good, or the attempts run out.
    async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut backoff = Backoff::new(self.retry);
        loop {
            match op().await {
                Err(e) if backoff.again(&e).await => continue,
                r => return r,
            }
        }
    }

    /// The shared BatchAppend call, (re)opened when needed.
    async fn batcher(&self) -> Result<std::sync::Arc<batch::Batcher>> {
        let mut slot = self.batcher.lock().await;
        match slot.as_ref() {
            Some(b) if b.is_open() => Ok(b.clone()),
            _ => {
                let b = batch::Batcher::open(&self.streams).await?;
                *slot = Some(b.clone());
                Ok(b)
            }
        }
    }

    /// Appends through the `Append` call (one HTTP/2 stream per append).
    async fn append_raw(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        let expected_wire = expected.try_into()?;
        let mut reqs = Vec::with_capacity(events.len() + 1);
        reqs.push(append_req::Content::Options(append_req::Options {
            stream_identifier: wire::stream_id(stream),
            expected_stream_revision: Some(expected_wire),
        }));
        for e in events {
            reqs.push(append_req::Content::ProposedMessage(
                append_req::ProposedMessage {
                    id: wire::uuid(e.id),
                    metadata: wire::proposed_metadata(&e),
                    custom_metadata: e.metadata.to_vec(),
                    data: e.data.to_vec(),
                },
            ));
        }
        let reqs = reqs
            .into_iter()
            .map(|c| factum_proto::streams::AppendReq { content: Some(c) });
        let resp = self
            .streams
            .clone()
            .append(futures_util::stream::iter(reqs))
            .await
            .map_err(|s| wire::from_status(s, stream))?
            .into_inner();
        use append_resp::success::{CurrentRevisionOption as C, PositionOption as P};
        match resp.result {
            Some(append_resp::Result::Success(s)) => Ok(AppendResult {
                revision: StreamRevision(match s.current_revision_option {
                    Some(C::CurrentRevision(r)) => r,
                    _ => 0,
                }),
                position: Position(match s.position_option {
                    Some(P::Position(p)) => p.commit_position,
                    _ => 0,
                }),
            }),
            Some(append_resp::Result::WrongExpectedVersion(w)) => {
                use append_resp::wrong_expected_version::CurrentRevisionOption as Cur;
                Err(Error::WrongExpectedVersion {
                    stream: stream.clone(),
                    expected,
                    actual: match w.current_revision_option {
                        Some(Cur::CurrentRevision(r)) => {
                            CurrentRevision::Current(StreamRevision(r))
                        }
                        _ => CurrentRevision::NoStream,
                    },
                })
            }
            None => Err(wire::protocol("an append answer without a result")),
        }
    }

    async fn read(&self, options: ReadOptions, stream: &StreamName) -> Result<Streaming<ReadItem>> {
        let req = ReadReq {
            options: Some(ReadOptions {
                resolve_links: true,
                // Two integers: cheaper than the string form at both ends.
                uuid_option: Some(ro::UuidOption {
                    content: Some(ro::uuid_option::Content::Structured(Empty {})),
                }),
                control_option: Some(ro::ControlOption { compatibility: 2 }),
                ..options
            }),
        };
        let mut grpc = tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        grpc.ready()
            .await
            .map_err(|e| Error::Unavailable(format!("the connection is not ready: {e}")))?;
        grpc.server_streaming(
            tonic::Request::new(req),
            tonic::codegen::http::uri::PathAndQuery::from_static(read::READ_PATH),
            read::ReadCodec,
        )
        .await
        .map(|r| r.into_inner())
        .map_err(|s| wire::from_status(s, stream))
    }

    fn read_all_options(request: &ReadAll) -> ReadOptions {
        let count = if request.until.is_some() {
            u64::MAX
        } else {
            request.max_count
        };
        ReadOptions {
            stream_option: all_option(request.from),
            read_direction: direction(request.direction),
            count_option: Some(CountOption::Count(count)),
            filter_option: Some(match &request.filter {
                Some(f) => FilterOption::Filter(filter_options(f)),
                None => FilterOption::NoFilter(Empty {}),
            }),
            ..Default::default()
        }
    }

    /// Reads `$all` as one streamed read: events arrive as the server sends
    /// them, so a long read needs no memory for the whole result (what
    /// [`EventStore::read_all`] returns at once). Same request, same events.
    pub async fn read_all_streaming(
        &self,
        request: ReadAll,
    ) -> Result<BoxStream<'static, Result<RecordedEvent>>> {
        let mut reader = Resumable::new(self, Target::All(request));
        // Fail early, as the other reads do, when the read cannot start.
        let first = reader.next().await;
        if let Some(Err(e)) = first {
            return Err(e);
        }
        let rest = futures_util::stream::unfold(reader, |mut reader| async move {
            reader.next().await.map(|e| (e, reader))
        });
        Ok(futures_util::stream::iter(first).chain(rest).boxed())
    }

    fn read_stream_options(request: &ReadStream) -> ReadOptions {
        let count = if request.until.is_some() {
            u64::MAX
        } else {
            request.max_count
        };
        ReadOptions {
            stream_option: stream_option(&request.stream, request.from),
            read_direction: direction(request.direction),
            count_option: Some(CountOption::Count(count)),
            filter_option: Some(FilterOption::NoFilter(Empty {})),
            ..Default::default()
        }
    }
}

/// What a read asks for; advanced past every event received, so a read
/// whose connection breaks resumes where it stopped.
enum Target {
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
struct Resumable {
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
    fn new(client: &Client, target: Target) -> Resumable {
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
                let resp = self
                    .client
                    .read(Client::read_stream_options(r), &r.stream)
                    .await?;
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
                let resp = self.client.read(Client::read_all_options(r), &all).await?;
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

    async fn next(&mut self) -> Option<Result<RecordedEvent>> {
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
    async fn collect(mut self) -> Result<Vec<RecordedEvent>> {
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

fn direction(d: Direction) -> i32 {
    match d {
        Direction::Forwards => 0,
        Direction::Backwards => 1,
    }
}

fn filter_options(f: &Filter) -> ro::FilterOptions {
    use ro::filter_options::{Expression, Filter as F, Window};
    let expr = match &f.matcher {
        FilterMatch::Prefixes(p) => Expression {
            regex: String::new(),
            prefix: p.clone(),
        },
        FilterMatch::Regex(r) => Expression {
            regex: r.as_str().to_owned(),
            prefix: Vec::new(),
        },
    };
    ro::FilterOptions {
        filter: Some(match f.on {
            FilterOn::StreamName => F::StreamIdentifier(expr),
            FilterOn::EventType => F::EventType(expr),
        }),
        window: Some(Window::Max(32)),
        checkpoint_interval_multiplier: 1,
    }
}

fn stream_option(stream: &StreamName, from: StreamStart) -> Option<StreamOption> {
    use ro::stream_options::RevisionOption as R;
    Some(StreamOption::Stream(ro::StreamOptions {
        stream_identifier: wire::stream_id(stream),
        revision_option: Some(match from {
            StreamStart::Start => R::Start(Empty {}),
            StreamStart::End => R::End(Empty {}),
            StreamStart::Revision(r) => R::Revision(r.0),
        }),
    }))
}

fn all_option(from: AllStart) -> Option<StreamOption> {
    use ro::all_options::AllOption as A;
    Some(StreamOption::All(ro::AllOptions {
        all_option: Some(match from {
            AllStart::Start => A::Start(Empty {}),
            AllStart::End => A::End(Empty {}),
            AllStart::Position(p) => A::Position(ro::Position {
                commit_position: p.0,
                prepare_position: p.0,
            }),
        }),
    }))
}

impl EventStore for Client {
    async fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        self.retrying(|| {
            let (stream, events) = (&stream, events.clone());
            async move { self.batcher().await?.append(stream, expected, events).await }
        })
        .await
    }

    async fn read_stream(&self, request: ReadStream) -> Result<Vec<RecordedEvent>> {
        Resumable::new(self, Target::Stream(request))
            .collect()
            .await
    }

    async fn read_all(&self, request: ReadAll) -> Result<Vec<RecordedEvent>> {
        Resumable::new(self, Target::All(request)).collect().await
    }

    async fn subscribe(&self, request: Subscribe) -> Result<Subscription> {
        let (option, filter, name) = match &request.target {
            SubscriptionTarget::Stream(s) => {
                let from = match request.start {
                    SubscriptionStart::Beginning => StreamStart::Start,
                    SubscriptionStart::End => StreamStart::End,
                    SubscriptionStart::After(r) => StreamStart::Revision(StreamRevision(r)),
                };
                (
                    stream_option(s, from),
                    FilterOption::NoFilter(Empty {}),
                    s.clone(),
                )
            }
            SubscriptionTarget::All(f) => {
                let from = match request.start {
                    SubscriptionStart::Beginning => AllStart::Start,
                    SubscriptionStart::End => AllStart::End,
                    SubscriptionStart::After(p) => AllStart::Position(Position(p)),
                };
                let filter = match f {
                    Some(f) => FilterOption::Filter(filter_options(f)),
                    None => FilterOption::NoFilter(Empty {}),
                };
                (all_option(from), filter, StreamName::all())
            }
        };
        let options = ReadOptions {
            stream_option: option,
            count_option: Some(CountOption::Subscription(ro::SubscriptionOptions {})),
            filter_option: Some(filter),
            ..Default::default()
        };
        let mut resp = self.read(options, &name).await?;
        // The confirmation means the server's subscription exists: every
        // event committed from now on will be delivered.
        match resp
            .message()
            .await
            .map_err(|s| wire::from_status(s, &name))?
        {
            Some(ReadItem::Other(ReadResp {
                content: Some(Content::Confirmation(_)),
            })) => {}
            other => {
                return Err(wire::protocol(format!(
                    "expected a subscription confirmation, got {other:?}"
                )))
            }
        }
        let messages = resp.filter_map(move |msg| {
            let name = name.clone();
            async move {
                let msg = match msg {
                    Ok(m) => m,
                    Err(s) => return Some(Err(wire::from_status(s, &name))),
                };
                let content = match msg {
                    ReadItem::Event(e) => return Some(e.map(SubscriptionMessage::Event)),
                    ReadItem::Other(r) => r.content?,
                };
                match content {
                    Content::Event(_) => None,
                    Content::CaughtUp(_) => Some(Ok(SubscriptionMessage::CaughtUp)),
                    Content::FellBehind(_) => Some(Ok(SubscriptionMessage::FellBehind)),
                    Content::Checkpoint(c) => Some(Ok(SubscriptionMessage::Checkpoint(Position(
                        c.commit_position,
                    )))),
                    _ => None,
                }
            }
        });
        Ok(Subscription::new(messages))
    }

    async fn stream_metadata(&self, stream: StreamName) -> Result<StreamMetadataResult> {
        let meta = stream.metadata_stream();
        let read = ReadStream::backwards(meta).max_count(1);
        match self.read_stream(read).await {
            Ok(events) => match events.first() {
                Some(e) => Ok(StreamMetadataResult {
                    revision: Some(e.revision),
                    metadata: StreamMetadata::from_json(&e.data)?,
                }),
                None => Ok(StreamMetadataResult::default()),
            },
            Err(Error::StreamNotFound { .. }) => Ok(StreamMetadataResult::default()),
            Err(Error::StreamDeleted { .. }) => Err(Error::StreamDeleted { stream }),
            Err(e) => Err(e),
        }
    }

    async fn set_stream_metadata(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
    ) -> Result<AppendResult> {
        let event = EventData::new(
            METADATA_EVENT_TYPE,
            factum_core::ContentType::Json,
            metadata.to_json(),
        );
        let meta = stream.metadata_stream();
        self.retrying(|| self.append_raw(&meta, expected, vec![event.clone()]))
            .await
    }

    async fn delete_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> Result<DeleteResult> {
        let req = factum_proto::streams::DeleteReq {
            options: Some(delete_req::Options {
                stream_identifier: wire::stream_id(&stream),
                expected_stream_revision: Some(expected.try_into()?),
            }),
        };
        let resp = self
            .streams
            .clone()
            .delete(req)
            .await
            .map_err(|s| wire::from_status(s, &stream))?
            .into_inner();
        use factum_proto::streams::delete_resp::PositionOption as P;
        Ok(DeleteResult {
            position: Position(match resp.position_option {
                Some(P::Position(p)) => p.commit_position,
                _ => 0,
            }),
        })
    }

    async fn tombstone_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> Result<DeleteResult> {
        let req = factum_proto::streams::TombstoneReq {
            options: Some(tombstone_req::Options {
                stream_identifier: wire::stream_id(&stream),
                expected_stream_revision: Some(expected.try_into()?),
            }),
        };
        let resp = self
            .streams
            .clone()
            .tombstone(req)
            .await
            .map_err(|s| wire::from_status(s, &stream))?
            .into_inner();
        use factum_proto::streams::tombstone_resp::PositionOption as P;
        Ok(DeleteResult {
            position: Position(match resp.position_option {
                Some(P::Position(p)) => p.commit_position,
                _ => 0,
            }),
        })
    }

    async fn head_position(&self) -> Result<Option<Position>> {
        let last = self.read_all(ReadAll::backwards().max_count(1)).await?;
        Ok(last.first().map(|e| e.position))
    }
}

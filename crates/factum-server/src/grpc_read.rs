//! `Streams.Read`: reads (count) and subscriptions of a stream or `$all`,
//! and [`ReadRoute`], the route `app()` serves them on (answers encoded by
//! `read_wire`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use factum_core::{
    AllStart, Direction, Error, EventStore, PageBound, Position, ReadAll, ReadStream,
    RecordedEvent, StreamName, StreamRevision, StreamStart, Subscribe, SubscriptionMessage,
    SubscriptionStart, SubscriptionTarget,
};
use factum_proto::streams::read_req::options::{
    self as opts, all_options::AllOption, stream_options::RevisionOption, CountOption,
    FilterOption, StreamOption,
};
use factum_proto::streams::read_resp::{self, Content};
use factum_proto::streams::{ReadReq, ReadResp};
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;

use crate::context::Ctx;
use crate::convert::{self, UuidFormat};
use crate::errors::{to_status, Operation};
use crate::filter::WireFilter;
use crate::grpc_call::{authenticate, grpc_timeout, ResponseStream};
use crate::read_wire::{Outgoing, ReadCodec};

/// Events in the first store call of a read: the first answers leave soon.
const FIRST_PAGE: u64 = 256;
/// Pages double up to this many events: long reads make few, large store
/// calls (the engine reads its log in 1 MiB chunks per call, and sizes a
/// page's vector for up to 4,096 events).
const MAX_PAGE: u64 = 4096;
/// Pages also end at this many bytes of events (ADR 21): 4,096 events of
/// 16 MiB are never read into memory at once.
const PAGE_BYTES: u64 = factum_core::PAGE_BYTES;

/// Where a read goes.
enum Target {
    Stream(StreamName, StreamStart),
    All(AllStart),
}

/// A parsed `ReadReq`.
struct Plan {
    target: Target,
    direction: Direction,
    resolve_links: bool,
    /// `None` for a subscription.
    count: Option<u64>,
    filter: Option<WireFilter>,
    uuid: UuidFormat,
    compatibility: u32,
}

fn plan(req: ReadReq) -> Result<Plan, Status> {
    let o = req
        .options
        .ok_or_else(|| Status::invalid_argument("ReadReq.options is missing"))?;
    let direction = match o.read_direction {
        0 => Direction::Forwards,
        1 => Direction::Backwards,
        d => {
            return Err(Status::invalid_argument(format!(
                "unknown read direction {d}"
            )))
        }
    };
    let target = match o.stream_option {
        Some(StreamOption::Stream(s)) => {
            let name = convert::stream_from_wire(s.stream_identifier.as_ref())?;
            let start = match s.revision_option {
                Some(RevisionOption::Revision(r)) => StreamStart::Revision(StreamRevision(r)),
                Some(RevisionOption::End(_)) => StreamStart::End,
                Some(RevisionOption::Start(_)) | None => StreamStart::Start,
            };
            if name.is_all() {
                Target::All(match start {
                    StreamStart::Start => AllStart::Start,
                    StreamStart::End => AllStart::End,
                    StreamStart::Revision(r) => AllStart::Position(Position(r.0)),
                })
            } else {
                Target::Stream(name, start)
            }
        }
        Some(StreamOption::All(a)) => Target::All(match a.all_option {
            Some(AllOption::Position(p)) => AllStart::Position(Position(p.commit_position)),
            Some(AllOption::End(_)) => AllStart::End,
            Some(AllOption::Start(_)) | None => AllStart::Start,
        }),
        None => {
            return Err(Status::invalid_argument(
                "ReadReq.options has neither stream nor all",
            ))
        }
    };
    let count = match o.count_option {
        Some(CountOption::Count(n)) => Some(n),
        Some(CountOption::Subscription(_)) => None,
        None => {
            return Err(Status::invalid_argument(
                "ReadReq.options has neither count nor subscription",
            ))
        }
    };
    if count.is_none() && direction == Direction::Backwards {
        return Err(Status::invalid_argument(
            "a subscription cannot go backwards",
        ));
    }
    // KurrentDB applies filters to `$all` only; a stream read ignores one.
    let filter = match (&target, o.filter_option) {
        (Target::All(_), Some(FilterOption::Filter(f))) => Some(WireFilter::from_wire(&f)?),
        _ => None,
    };
    let uuid = match o.uuid_option.and_then(|u| u.content) {
        Some(opts::uuid_option::Content::Structured(_)) => UuidFormat::Structured,
        _ => UuidFormat::String,
    };
    Ok(Plan {
        target,
        direction,
        resolve_links: o.resolve_links,
        count,
        filter,
        uuid,
        compatibility: o.control_option.map_or(0, |c| c.compatibility),
    })
}

/// Encoded bytes per batch handed to the response stream: one channel
/// hand-off per batch instead of per event keeps long reads cheap.
const BATCH_BYTES: usize = 64 * 1024;

/// Batches of answers (or the final error).
pub type Batch = Result<Vec<Outgoing>, Status>;

/// Sends to the client; `Err` means the client went away.
struct Out<'a, S> {
    tx: mpsc::Sender<Batch>,
    ctx: &'a Ctx<S>,
    plan: &'a Plan,
    pending: std::sync::Mutex<Pending>,
}

/// Messages encoded but not yet handed over.
#[derive(Default)]
struct Pending {
    messages: Vec<Outgoing>,
    /// About the bytes `messages` encode to.
    bytes: usize,
    /// Events (and their payload bytes) in `messages`, for the metrics.
    events: u64,
    payload: u64,
}

struct Gone;

impl<S> Out<'_, S> {
    /// Hands over what is queued when it is enough, or when `now`.
    async fn hand_over(&self, now: bool) -> Result<(), Gone> {
        let batch = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if p.messages.is_empty() || (!now && p.bytes < BATCH_BYTES) {
                return Ok(());
            }
            self.ctx.metrics.sent(p.events, p.payload);
            p.bytes = 0;
            p.events = 0;
            p.payload = 0;
            std::mem::take(&mut p.messages)
        };
        self.tx.send(Ok(batch)).await.map_err(|_| Gone)
    }

    /// Sends whatever is queued.
    async fn flush(&self) -> Result<(), Gone> {
        self.hand_over(true).await
    }

    /// Sends a control message (and anything queued before it) now.
    async fn send(&self, content: Content) -> Result<(), Gone> {
        {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let m = Bytes::from(
                ReadResp {
                    content: Some(content),
                }
                .encode_to_vec(),
            );
            p.bytes += m.len();
            p.messages.push(Outgoing::Message(m));
        }
        self.hand_over(true).await
    }

    /// An event: queued in reads (`now == false`), sent at once in subscriptions.
    async fn event(&self, e: RecordedEvent, now: bool) -> Result<(), Gone> {
        {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let payload = e.data.len() + e.metadata.len();
            // The fixed part of an event message is about 150 bytes.
            p.bytes += payload + e.event_type.len() + e.stream.as_str().len() + 150;
            p.events += 1;
            p.payload += payload as u64;
            p.messages.push(Outgoing::Event {
                event: e,
                resolve_links: self.plan.resolve_links,
                uuid: self.plan.uuid,
            });
        }
        self.hand_over(now).await
    }
}

/// Starts a read or subscription; its encoded answers arrive in batches.
/// A read (not a subscription) with a call deadline (`grpc-timeout`) ends
/// with DEADLINE_EXCEEDED when it passes.
pub fn start<S: EventStore>(
    ctx: Arc<Ctx<S>>,
    req: ReadReq,
    timeout: Option<Duration>,
) -> mpsc::Receiver<Batch> {
    // A few batches of up to 64 KiB in flight are plenty.
    let (tx, rx) = mpsc::channel(4);
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    tokio::spawn(crate::auth::inherit(run(ctx, req, tx, deadline)));
    rx
}

/// The batches as a stream of single answers.
pub fn encoded(rx: mpsc::Receiver<Batch>) -> ResponseStream<Outgoing> {
    use futures_util::StreamExt;
    let batches = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    // Each batch's answers are handed on as they are, not collected again.
    Box::pin(batches.flat_map(|batch| {
        let (items, error) = match batch {
            Ok(items) => (items, None),
            Err(status) => (Vec::new(), Some(Err(status))),
        };
        futures_util::stream::iter(items.into_iter().map(Ok).chain(error))
    }))
}

/// The batches as a stream of decoded messages (for `GrpcApi`
/// used as a plain tonic service; `app()` routes reads through
/// [`ReadRoute`] instead).
pub fn decoded(rx: mpsc::Receiver<Batch>) -> ResponseStream<ReadResp> {
    use futures_util::StreamExt;
    Box::pin(encoded(rx).map(|m| {
        m.and_then(|out| {
            let mut buf = BytesMut::new();
            out.encode(&mut buf);
            ReadResp::decode(buf.freeze())
                .map_err(|e| Status::internal(format!("re-decoding: {e}")))
        })
    }))
}

/// Runs a read or subscription, streaming into `tx`.
async fn run<S: EventStore>(
    ctx: Arc<Ctx<S>>,
    req: ReadReq,
    tx: mpsc::Sender<Batch>,
    deadline: Option<Instant>,
) {
    let plan = match plan(req) {
        Ok(p) => p,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let out = Out {
        tx: tx.clone(),
        ctx: &ctx,
        plan: &plan,
        pending: Default::default(),
    };
    let result = match plan.count {
        Some(n) => {
            let started = Instant::now();
            ctx.metrics.reads.fetch_add(1, Ordering::Relaxed);
            let r = match deadline {
                Some(d) if d <= Instant::now() => Ok(Err(convert::deadline_exceeded())),
                Some(d) => match tokio::time::timeout_at(d.into(), read(&out, n)).await {
                    Ok(r) => r,
                    Err(_) => Ok(Err(convert::deadline_exceeded())),
                },
                None => read(&out, n).await,
            };
            let r = match r {
                Ok(r) => out.flush().await.map(|_| r),
                gone => gone,
            };
            ctx.metrics.read_latency.observe(started.elapsed());
            r
        }
        None => {
            ctx.metrics
                .subscriptions_total
                .fetch_add(1, Ordering::Relaxed);
            ctx.metrics
                .subscriptions_active
                .fetch_add(1, Ordering::Relaxed);
            let r = subscribe(&out).await;
            ctx.metrics
                .subscriptions_active
                .fetch_sub(1, Ordering::Relaxed);
            r
        }
    };
    if let Ok(Err(status)) = result {
        let _ = tx.send(Err(status)).await;
    }
}

type Outcome = Result<Result<(), Status>, Gone>;

async fn read<S: EventStore>(out: &Out<'_, S>, count: u64) -> Outcome {
    match &out.plan.target {
        Target::Stream(name, start) => read_stream(out, name, *start, count).await,
        Target::All(start) => read_all(out, *start, count).await,
    }
}

async fn read_stream<S: EventStore>(
    out: &Out<'_, S>,
    name: &StreamName,
    start: StreamStart,
    count: u64,
) -> Outcome {
    let store = &out.ctx.store;
    let direction = out.plan.direction;
    let mut from = start;
    let mut remaining = count;
    let mut first_page = true;
    let mut first_page_empty = false;
    let mut page = FIRST_PAGE;
    // Metadata of a tombstoned stream is gone with it: `$$<stream>` reads
    // answer StreamDeleted, as the stream's own reads do.
    if let Some(target) = name.metadata_of() {
        if let Err(e @ Error::StreamDeleted { .. }) = store.stream_metadata(target).await {
            return Ok(Err(to_status(&e, Operation::Read)));
        }
    }
    // The first page always reaches the store, so a count of 0 still
    // reports a missing or deleted stream.
    while remaining > 0 || first_page {
        if out.ctx.shutting_down() {
            return Ok(Err(Status::unavailable("server is shutting down")));
        }
        let want = remaining.min(page);
        page = (page * 2).min(MAX_PAGE);
        let req = ReadStream {
            stream: name.clone(),
            from,
            direction,
            max_count: want,
            max_bytes: PAGE_BYTES,
            until: None,
        };
        let events = match store.read_stream(req).await {
            Ok(e) => e,
            Err(Error::StreamNotFound { stream }) if first_page => {
                out.send(Content::StreamNotFound(read_resp::StreamNotFound {
                    stream_identifier: Some(convert::stream_to_wire(&stream)),
                }))
                .await?;
                return Ok(Ok(()));
            }
            // Deleted between pages: what was read stands.
            Err(Error::StreamNotFound { .. }) => break,
            Err(e) => return Ok(Err(to_status(&e, Operation::Read))),
        };
        if first_page {
            first_page_empty = events.is_empty();
        }
        first_page = false;
        let n = events.len() as u64;
        let full = PageBound::ended_full(&events, want, PAGE_BYTES);
        let last = events.last().map(|e| e.read_revision().0);
        for e in events {
            out.event(e, false).await?;
        }
        remaining -= n;
        let Some(r) = last else { break };
        if !full {
            break;
        }
        from = match direction {
            Direction::Forwards => StreamStart::Revision(StreamRevision(r + 1)),
            Direction::Backwards if r == 0 => break,
            Direction::Backwards => StreamStart::Revision(StreamRevision(r - 1)),
        };
    }
    // What KurrentDB sends to clients that understand it (compatibility
    // 1): after a read, the stream's last revision; before it, when a
    // forwards read found nothing, where the stream continues (its last
    // revision + 1) if that is not where the read started.
    if out.plan.compatibility >= 1 {
        if let Some(last) = last_revision(out.ctx, name).await {
            if first_page_empty && direction == Direction::Forwards {
                let started = match start {
                    StreamStart::Start => Some(0),
                    StreamStart::Revision(r) => Some(r.0),
                    StreamStart::End => None,
                };
                if started != Some(last + 1) {
                    out.send(Content::FirstStreamPosition(last + 1)).await?;
                }
            }
            out.send(Content::LastStreamPosition(last)).await?;
        }
    }
    Ok(Ok(()))
}

/// The last readable revision of a stream.
async fn last_revision<S: EventStore>(ctx: &Ctx<S>, name: &StreamName) -> Option<u64> {
    let last = ctx
        .store
        .read_stream(ReadStream::backwards(name.clone()).max_count(1))
        .await
        .ok()?;
    Some(last.first()?.read_revision().0)
}

async fn read_all<S: EventStore>(out: &Out<'_, S>, start: AllStart, count: u64) -> Outcome {
    let store = &out.ctx.store;
    let direction = out.plan.direction;
    let store_filter = out.plan.filter.as_ref().map(|f| f.filter.clone());
    let mut from = start;
    let mut remaining = count;
    let mut page = FIRST_PAGE;
    while remaining > 0 {
        if out.ctx.shutting_down() {
            return Ok(Err(Status::unavailable("server is shutting down")));
        }
        let want = remaining.min(page);
        page = (page * 2).min(MAX_PAGE);
        let req = ReadAll {
            from,
            direction,
            max_count: want,
            max_bytes: PAGE_BYTES,
            filter: store_filter.clone(),
            until: None,
        };
        let events = match store.read_all(req).await {
            Ok(e) => e,
            Err(e) => return Ok(Err(to_status(&e, Operation::Read))),
        };
        let full = PageBound::ended_full(&events, want, PAGE_BYTES);
        let last = events.last().map(|e| e.position.0);
        for e in events {
            if remaining == 0 {
                break;
            }
            out.event(e, false).await?;
            remaining -= 1;
        }
        let Some(p) = last else { break };
        if !full {
            break;
        }
        from = match direction {
            Direction::Forwards => AllStart::Position(Position(p + 1)),
            Direction::Backwards if p == 0 => break,
            Direction::Backwards => AllStart::Position(Position(p - 1)),
        };
    }
    // The protocol's `last_all_stream_position`: where `$all` ends now, for
    // clients that understand it (KurrentDB's .NET client reads it into
    // `LastPosition`).
    if out.plan.compatibility >= 1 {
        match out.ctx.store.head_position().await {
            Ok(Some(p)) => {
                out.send(Content::LastAllStreamPosition(convert::all_position(p)))
                    .await?
            }
            Ok(None) => {}
            Err(e) => return Ok(Err(to_status(&e, Operation::Read))),
        }
    }
    Ok(Ok(()))
}

/// The resume point a subscription reports in caught-up / fell-behind.
#[derive(Default)]
struct Resume {
    revision: Option<u64>,
    position: Option<u64>,
}

impl Resume {
    fn caught_up(&self) -> read_resp::CaughtUp {
        read_resp::CaughtUp {
            timestamp: Some(convert::now_timestamp()),
            // The field is signed: a start the client gave above
            // `i64::MAX` is not reported rather than reported negative.
            stream_revision: self.revision.and_then(|r| i64::try_from(r).ok()),
            position: self.position.map(|p| read_resp::Position {
                commit_position: p,
                prepare_position: p,
            }),
        }
    }

    fn fell_behind(&self) -> read_resp::FellBehind {
        let c = self.caught_up();
        read_resp::FellBehind {
            timestamp: c.timestamp,
            stream_revision: c.stream_revision,
            position: c.position,
        }
    }
}

async fn subscribe<S: EventStore>(out: &Out<'_, S>) -> Outcome {
    let mut resume = Resume::default();
    let (target, start) = match &out.plan.target {
        Target::Stream(name, start) => {
            let start = match start {
                StreamStart::Start => SubscriptionStart::Beginning,
                StreamStart::End => SubscriptionStart::End,
                StreamStart::Revision(r) => {
                    resume.revision = Some(r.0);
                    SubscriptionStart::After(r.0)
                }
            };
            (SubscriptionTarget::Stream(name.clone()), start)
        }
        Target::All(start) => {
            let start = match start {
                AllStart::Start => SubscriptionStart::Beginning,
                AllStart::End => SubscriptionStart::End,
                AllStart::Position(p) => {
                    resume.position = Some(p.0);
                    SubscriptionStart::After(p.0)
                }
            };
            // Filtering happens here so checkpoints come at the interval the
            // client asked for.
            (SubscriptionTarget::All(None), start)
        }
    };
    let mut sub = match out.ctx.store.subscribe(Subscribe { target, start }).await {
        Ok(s) => s,
        Err(e) => return Ok(Err(to_status(&e, Operation::Read))),
    };
    let id = uuid::Uuid::new_v4().to_string();
    out.send(Content::Confirmation(read_resp::SubscriptionConfirmation {
        subscription_id: id,
    }))
    .await?;
    let filter = out.plan.filter.as_ref();
    let mut scanned_since_checkpoint = 0u64;
    let mut shutdown = out.ctx.shutdown.clone();
    loop {
        let msg = tokio::select! {
            m = sub.next() => m,
            _ = shutdown.wait_for(|s| *s) => {
                return Ok(Err(Status::unavailable("server is shutting down")));
            }
            _ = out.tx.closed() => return Err(Gone),
        };
        let Some(msg) = msg else {
            return Ok(Err(Status::unavailable(
                "the store closed the subscription",
            )));
        };
        match msg {
            Ok(SubscriptionMessage::Event(e)) => match filter {
                Some(f) => {
                    resume.position = Some(e.position.0);
                    if f.matches(&e) {
                        out.event(e, true).await?;
                        scanned_since_checkpoint = 0;
                    } else {
                        scanned_since_checkpoint += 1;
                        if scanned_since_checkpoint >= f.checkpoint_interval {
                            scanned_since_checkpoint = 0;
                            out.send(checkpoint(e.position)).await?;
                        }
                    }
                }
                None => {
                    if matches!(out.plan.target, Target::All(_)) {
                        resume.position = Some(e.position.0);
                    } else {
                        resume.revision = Some(e.read_revision().0);
                    }
                    out.event(e, true).await?;
                }
            },
            Ok(SubscriptionMessage::CaughtUp) => {
                if let (Some(_), Some(p)) = (filter, resume.position) {
                    if scanned_since_checkpoint > 0 {
                        scanned_since_checkpoint = 0;
                        out.send(checkpoint(Position(p))).await?;
                    }
                }
                out.send(Content::CaughtUp(resume.caught_up())).await?;
            }
            Ok(SubscriptionMessage::FellBehind) => {
                if out.plan.compatibility >= 2 {
                    out.send(Content::FellBehind(resume.fell_behind())).await?;
                }
            }
            Ok(SubscriptionMessage::Checkpoint(p)) => {
                if filter.is_some() {
                    out.send(checkpoint(p)).await?;
                }
            }
            Err(e) => return Ok(Err(to_status(&e, Operation::Read))),
        }
    }
}

fn checkpoint(p: Position) -> Content {
    Content::Checkpoint(read_resp::Checkpoint {
        commit_position: p.0,
        prepare_position: p.0,
        timestamp: Some(convert::now_timestamp()),
    })
}

/// `Streams.Read` as a route of its own, answered with `read_wire`'s
/// [`ReadCodec`] (events encoded by hand; see that module).
pub struct ReadRoute<S> {
    ctx: Arc<Ctx<S>>,
}

impl<S> Clone for ReadRoute<S> {
    fn clone(&self) -> Self {
        ReadRoute {
            ctx: self.ctx.clone(),
        }
    }
}

impl<S: EventStore> ReadRoute<S> {
    /// Serves reads of `ctx`'s store.
    pub fn new(ctx: Arc<Ctx<S>>) -> Self {
        ReadRoute { ctx }
    }
}

/// The method behind the route.
struct ReadMethod<S>(Arc<Ctx<S>>);

type ReadFuture =
    Pin<Box<dyn Future<Output = Result<tonic::Response<ResponseStream<Outgoing>>, Status>> + Send>>;

impl<S: EventStore> tonic::server::ServerStreamingService<ReadReq> for ReadMethod<S> {
    type Response = Outgoing;
    type ResponseStream = ResponseStream<Outgoing>;
    type Future = ReadFuture;

    fn call(&mut self, request: tonic::Request<ReadReq>) -> ReadFuture {
        let ctx = self.0.clone();
        Box::pin(async move {
            authenticate(&ctx, &request)?;
            let timeout = grpc_timeout(&request);
            let batches = start(ctx, request.into_inner(), timeout);
            Ok(tonic::Response::new(encoded(batches)))
        })
    }
}

impl<S: EventStore> tower::Service<axum::http::Request<Body>> for ReadRoute<S> {
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::http::Request<Body>) -> Self::Future {
        let method = ReadMethod(self.ctx.clone());
        let max = self.ctx.config.max_message_bytes();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ReadCodec)
                .apply_max_message_size_config(Some(max), Some(max));
            Ok(grpc.server_streaming(method, req).await)
        })
    }
}

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
use crate::grpc_call::{authenticate, ResponseStream};
use crate::read_wire;

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

/// A chunk of answers, each a gRPC frame (`read_wire::frame_event`), or
/// the final error.
pub type Batch = Result<Bytes, Status>;

/// Sends to the client; `Err` means the client went away.
struct Out<'a, S> {
    tx: mpsc::Sender<Batch>,
    ctx: &'a Ctx<S>,
    plan: &'a Plan,
    /// The longest answer the client is sent.
    max: usize,
    pending: std::sync::Mutex<Pending>,
}

/// Answers encoded but not yet handed over.
#[derive(Default)]
struct Pending {
    chunk: BytesMut,
    /// Events (and their payload bytes) in `chunk`, for the metrics.
    events: u64,
    payload: u64,
}

struct Gone;

impl<S> Out<'_, S> {
    /// Hands over what is queued when it is enough, or when `now`.
    async fn hand_over(&self, now: bool) -> Result<(), Gone> {
        let batch = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if p.chunk.is_empty() || (!now && p.chunk.len() < BATCH_BYTES) {
                return Ok(());
            }
            self.ctx.metrics.sent(p.events, p.payload);
            p.events = 0;
            p.payload = 0;
            p.chunk.split().freeze()
        };
        self.tx.send(Ok(batch)).await.map_err(|_| Gone)
    }

    /// Sends whatever is queued.
    async fn flush(&self) -> Result<(), Gone> {
        self.hand_over(true).await
    }

    /// Ends the call with `status` after what is queued: the read stops.
    async fn fail(&self, status: Status) -> Result<(), Gone> {
        self.flush().await?;
        let _ = self.tx.send(Err(status)).await;
        Err(Gone)
    }

    /// Sends a control message (and anything queued before it) now.
    async fn send(&self, content: Content) -> Result<(), Gone> {
        let framed = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let m = ReadResp {
                content: Some(content),
            };
            read_wire::frame_message(&mut p.chunk, &m, self.max)
        };
        match framed {
            Ok(()) => self.hand_over(true).await,
            Err(status) => self.fail(status).await,
        }
    }

    /// A read's page of events, framed by reference (no event moved out of
    /// the page) and handed over in chunks of `BATCH_BYTES`.
    async fn events(&self, events: &[RecordedEvent]) -> Result<(), Gone> {
        let mut rest = events;
        while !rest.is_empty() {
            let framed = {
                let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let mut r = Ok(());
                while let Some((e, more)) = rest.split_first() {
                    r = read_wire::frame_event(
                        &mut p.chunk,
                        e,
                        self.plan.resolve_links,
                        self.plan.uuid,
                        self.max,
                    );
                    if r.is_err() {
                        break;
                    }
                    p.events += 1;
                    p.payload += (e.data.len() + e.metadata.len()) as u64;
                    rest = more;
                    if p.chunk.len() >= BATCH_BYTES {
                        break;
                    }
                }
                r
            };
            match framed {
                Ok(()) => self.hand_over(false).await?,
                Err(status) => return self.fail(status).await,
            }
        }
        Ok(())
    }

    /// A subscription's event, sent at once (with anything queued before
    /// it).
    async fn event(&self, e: RecordedEvent) -> Result<(), Gone> {
        self.events(std::slice::from_ref(&e)).await?;
        self.flush().await
    }
}

/// Starts a read or subscription; its encoded answers arrive in chunks.
/// A read (not a subscription) with a call deadline (`grpc-timeout`) ends
/// with DEADLINE_EXCEEDED when it passes.
pub fn start<S: EventStore>(
    ctx: Arc<Ctx<S>>,
    req: ReadReq,
    timeout: Option<Duration>,
) -> mpsc::Receiver<Batch> {
    // A few chunks of up to 64 KiB in flight are plenty.
    let (tx, rx) = mpsc::channel(4);
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    tokio::spawn(crate::auth::inherit(run(ctx, req, tx, deadline)));
    rx
}

/// The chunks as a stream of decoded messages (for `GrpcApi` used as a
/// plain tonic service; `app()` routes reads through [`ReadRoute`], which
/// sends the chunks as they are).
pub fn decoded(rx: mpsc::Receiver<Batch>) -> ResponseStream<ReadResp> {
    use futures_util::StreamExt;
    let batches = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Box::pin(batches.flat_map(|batch| {
        let items: Vec<Result<ReadResp, Status>> = match batch {
            Ok(chunk) => read_wire::messages(chunk)
                .map(|m| {
                    ReadResp::decode(m).map_err(|e| Status::internal(format!("re-decoding: {e}")))
                })
                .collect(),
            Err(status) => vec![Err(status)],
        };
        futures_util::stream::iter(items)
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
        max: ctx.config.max_message_bytes(),
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
        out.events(&events).await?;
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
        let take = events
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        out.events(&events[..take]).await?;
        remaining -= take as u64;
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
                        out.event(e).await?;
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
                    out.event(e).await?;
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

/// `Streams.Read` as a route of its own, written by hand (ADR 46): the
/// request's one message is read and decoded here, and the answer's body
/// is the chunks of gRPC frames the read writes (`read_wire`), handed to
/// HTTP/2 as they are, then the trailers — no per-answer item, encoder or
/// buffer copy in between.
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

/// The request's gRPC message (a call has one): read until it is whole,
/// never more than `max` bytes of it; then the request is read to its end,
/// as tonic's handlers for one-message calls do (anything after the message
/// is dropped as it comes).
///
/// Answering before the request has ended would let h2 end the call with
/// `RST_STREAM(NO_ERROR)` once the answer is sent (the request half is
/// still open and nobody reads it). HTTP/2 allows that, but clients on h2
/// before 0.4.16 — the Rust core of KurrentDB's Node client 1.x — then
/// drop the answer they had not read yet and fail the read
/// (`UnavailableError`): a race the client loses when its empty end-of-
/// request frame comes after the answer, which load makes likely.
async fn request_message(mut body: Body, max: usize) -> Result<Bytes, Status> {
    use http_body_util::BodyExt;
    let message = first_message(&mut body, max).await?;
    while let Some(frame) = body.frame().await {
        if let Err(e) = frame {
            return Err(Status::cancelled(format!("reading the request: {e}")));
        }
    }
    Ok(message)
}

/// The request's first gRPC message, read until it is whole, never more
/// than `max` bytes of it.
async fn first_message(body: &mut Body, max: usize) -> Result<Bytes, Status> {
    use http_body_util::BodyExt;
    let mut buf = BytesMut::new();
    loop {
        if buf.len() >= 5 {
            if buf[0] != 0 {
                return Err(Status::unimplemented(
                    "compressed requests are not supported: send messages uncompressed",
                ));
            }
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if len > max {
                return Err(Status::resource_exhausted(format!(
                    "Error, decoded message length too large: found {len} bytes, the limit is: {max} bytes"
                )));
            }
            if buf.len() >= 5 + len {
                let _ = buf.split_to(5);
                return Ok(buf.split_to(len).freeze());
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                return Err(Status::cancelled(format!("reading the request: {e}")));
            }
            None => return Err(Status::internal("Missing request message.")),
        }
    }
}

/// The answer's body: each chunk as a data frame, then the trailers with
/// the call's status (OK, or the error the read ended with).
fn read_body(rx: mpsc::Receiver<Batch>) -> Body {
    use http_body::Frame;
    let frames = futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        let (frame, rest) = match rx.recv().await {
            Some(Ok(chunk)) => (Frame::data(chunk), Some(rx)),
            Some(Err(status)) => (Frame::trailers(trailers(status)), None),
            None => (Frame::trailers(trailers(Status::ok(""))), None),
        };
        Some((Ok::<_, Infallible>(frame), rest))
    });
    Body::new(http_body_util::StreamBody::new(frames))
}

/// `grpc-status`, `grpc-message` (and details) of `status`.
fn trailers(status: Status) -> axum::http::HeaderMap {
    let mut map = axum::http::HeaderMap::new();
    if let Err(e) = status.add_header(&mut map) {
        // Only a message that cannot be a header value gets here.
        let _ = Status::new(e.code(), "").add_header(&mut map);
    }
    map
}

impl<S: EventStore> ReadRoute<S> {
    async fn answer(self, req: axum::http::Request<Body>) -> axum::http::Response<Body> {
        let (parts, body) = req.into_parts();
        if let Some(encoding) = parts.headers.get("grpc-encoding") {
            if encoding != "identity" {
                return Status::unimplemented(format!(
                    "Content is compressed with `{}` which isn't supported",
                    String::from_utf8_lossy(encoding.as_bytes())
                ))
                .into_http();
            }
        }
        let max = self.ctx.config.max_message_bytes();
        let started = Instant::now();
        let timeout = convert::grpc_timeout(
            parts
                .headers
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok()),
        );
        let message = match timeout {
            Some(t) => tokio::time::timeout(t, request_message(body, max))
                .await
                .unwrap_or_else(|_| Err(convert::deadline_exceeded())),
            None => request_message(body, max).await,
        };
        let message = match message {
            Ok(m) => m,
            Err(status) => return status.into_http(),
        };
        let req = match ReadReq::decode(message) {
            Ok(r) => r,
            Err(e) => return Status::internal(format!("malformed ReadReq: {e}")).into_http(),
        };
        let request = tonic::Request::from_parts(
            tonic::metadata::MetadataMap::from_headers(parts.headers),
            parts.extensions,
            req,
        );
        if let Err(status) = authenticate(&self.ctx, &request) {
            return status.into_http();
        }
        // The deadline counts from the call's start.
        let timeout = timeout.map(|t| t.saturating_sub(started.elapsed()));
        let rx = start(self.ctx.clone(), request.into_inner(), timeout);
        let mut resp = axum::http::Response::new(read_body(rx));
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/grpc"),
        );
        resp
    }
}

impl<S: EventStore> tower::Service<axum::http::Request<Body>> for ReadRoute<S> {
    type Response = axum::http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::http::Request<Body>) -> Self::Future {
        let route = self.clone();
        Box::pin(async move { Ok(route.answer(req).await) })
    }
}

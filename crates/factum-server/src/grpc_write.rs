//! `Streams.Append`, `BatchAppend`, `Delete`, `Tombstone`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use factum_core::{AppendResult, Error, EventData, EventStore, ExpectedRevision, StreamName, Uuid};
use factum_proto::shared;
use factum_proto::status as rpc;
use factum_proto::streams::{
    append_req, append_resp, batch_append_req, batch_append_resp, AppendResp, BatchAppendResp,
    DeleteReq, DeleteResp, TombstoneReq, TombstoneResp,
};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tonic::Status;

use crate::append_wire::{AppendMsg, BatchMsg};
use crate::budget::Reserved;
use crate::context::Ctx;
use crate::convert::{self, UuidFormat};
use crate::errors::{batch_status, batch_timeout, to_status, transport_status, Operation};

/// Appends (to `$$<stream>`: sets metadata) and counts it.
async fn write<S: EventStore>(
    ctx: &Ctx<S>,
    stream: StreamName,
    expected: ExpectedRevision,
    events: Vec<EventData>,
) -> Result<AppendResult, Error> {
    let started = Instant::now();
    let (n, bytes) = (events.len(), events.iter().map(EventData::size).sum());
    // An append to `$$<stream>` is a metadata write: the store checks that
    // its events are `$metadata` JSON and keeps their ids, so a retried
    // metadata write is idempotent like any append.
    let result = ctx.store.append(stream, expected, events).await;
    match &result {
        Ok(_) => ctx.metrics.appended(n, bytes, started.elapsed()),
        Err(_) => {
            ctx.metrics.append_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    result
}

/// An append's expectation: required, as in KurrentDB; a revision in the
/// refused range is INVALID_ARGUMENT (`factum_proto::expected`).
fn expected_of_append(
    o: Option<append_req::options::ExpectedStreamRevision>,
) -> Result<ExpectedRevision, Status> {
    let o = o.ok_or_else(|| Status::invalid_argument("expected_stream_revision is missing"))?;
    ExpectedRevision::try_from(o).map_err(|e| to_status(&e, Operation::Append))
}

/// A delete's or tombstone's expectation: `Any` when absent.
fn expected_or_any<W>(o: Option<W>, op: Operation) -> Result<ExpectedRevision, Status>
where
    ExpectedRevision: TryFrom<W, Error = Error>,
{
    o.map_or(Ok(ExpectedRevision::Any), ExpectedRevision::try_from)
        .map_err(|e| to_status(&e, op))
}

/// `Streams.Append`: options, then events, then one answer. With a call
/// deadline (`grpc-timeout`), an append not fully received by then is
/// refused with DEADLINE_EXCEEDED and not written; one already being
/// written completes (its answer may come too late for the client, whose
/// retry with the same event ids is idempotent).
pub async fn append<S: EventStore>(
    ctx: Arc<Ctx<S>>,
    input: impl futures_util::Stream<Item = Result<AppendMsg, Status>> + Unpin,
    timeout: Option<Duration>,
) -> Result<AppendResp, Status> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let received = receive(&ctx, input);
    tokio::pin!(received);
    // An append is usually whole by the time its call starts: it is taken
    // without arming a timer (KurrentDB's clients give every append a
    // deadline, and a timer armed and cancelled per call is a measurable
    // share of the server's time per `Append`, ADR 41). Only an append
    // still arriving waits under the deadline.
    let first = std::future::poll_fn(|cx| Poll::Ready(received.as_mut().poll(cx))).await;
    // The append's bytes stay reserved until the store has answered.
    let (stream, expected, events, _reserved) = match (first, deadline) {
        (Poll::Ready(r), _) => r?,
        (Poll::Pending, Some(d)) => tokio::time::timeout_at(d.into(), received)
            .await
            .map_err(|_| convert::deadline_exceeded())??,
        (Poll::Pending, None) => received.await?,
    };
    if deadline.is_some_and(|d| d <= Instant::now()) {
        return Err(convert::deadline_exceeded());
    }
    let result = match write(&ctx, stream, expected, events).await {
        Ok(r) => append_resp::Result::Success(r.into()),
        Err(Error::WrongExpectedVersion {
            expected, actual, ..
        }) => append_resp::Result::WrongExpectedVersion(append_resp::WrongExpectedVersion::new(
            expected, actual,
        )),
        Err(e) => return Err(to_status(&e, Operation::Append)),
    };
    Ok(AppendResp {
        result: Some(result),
    })
}

/// An append's options and events, as the client streams them. Every
/// proposed message counts whole (type, metadata, data, framing; as
/// KurrentDB counts them) against `max_append_bytes` as it arrives, and is
/// reserved in the server's append budget before the next is read.
async fn receive<S>(
    ctx: &Ctx<S>,
    mut input: impl futures_util::Stream<Item = Result<AppendMsg, Status>> + Unpin,
) -> Result<(StreamName, ExpectedRevision, Vec<EventData>, Reserved), Status> {
    let first = input
        .next()
        .await
        .transpose()
        .map_err(transport_status)?
        .ok_or_else(|| Status::invalid_argument("the append stream was empty"))?;
    let AppendMsg::Options(options) = first else {
        return Err(Status::invalid_argument(
            "an append must start with its options",
        ));
    };
    let stream = convert::stream_from_wire(options.stream_identifier.as_ref())?;
    let expected = expected_of_append(options.expected_stream_revision)?;
    let mut events = Vec::new();
    let mut size = 0u64;
    let mut reserved = Reserved::default();
    while let Some(msg) = input.next().await.transpose().map_err(transport_status)? {
        match msg {
            AppendMsg::Proposed(p) => {
                let bytes = p.bytes;
                ctx.config
                    .count_append_bytes(&mut size, bytes)
                    .map_err(|e| to_status(&e, Operation::Append))?;
                ctx.append_budget
                    .reserve(&mut reserved, bytes)
                    .await
                    .map_err(|e| Status::resource_exhausted(e.to_string()))?;
                events.push(p.event?);
            }
            AppendMsg::Options(_) => {
                return Err(Status::invalid_argument(
                    "an append carries its options once",
                ))
            }
            AppendMsg::Empty => {
                return Err(Status::invalid_argument("an append message was empty"))
            }
        }
    }
    Ok((stream, expected, events, reserved))
}

/// `Streams.Delete` (soft delete).
pub async fn delete<S: EventStore>(ctx: &Ctx<S>, req: DeleteReq) -> Result<DeleteResp, Status> {
    let o = req
        .options
        .ok_or_else(|| Status::invalid_argument("DeleteReq.options is missing"))?;
    let stream = convert::stream_from_wire(o.stream_identifier.as_ref())?;
    let expected = expected_or_any(o.expected_stream_revision, Operation::Delete)?;
    let r = ctx
        .store
        .delete_stream(stream, expected)
        .await
        .map_err(|e| to_status(&e, Operation::Delete))?;
    Ok(DeleteResp {
        position_option: Some(
            factum_proto::streams::delete_resp::PositionOption::Position(
                factum_proto::streams::delete_resp::Position {
                    commit_position: r.position.0,
                    prepare_position: r.position.0,
                },
            ),
        ),
    })
}

/// `Streams.Tombstone` (hard delete).
pub async fn tombstone<S: EventStore>(
    ctx: &Ctx<S>,
    req: TombstoneReq,
) -> Result<TombstoneResp, Status> {
    let o = req
        .options
        .ok_or_else(|| Status::invalid_argument("TombstoneReq.options is missing"))?;
    let stream = convert::stream_from_wire(o.stream_identifier.as_ref())?;
    let expected = expected_or_any(o.expected_stream_revision, Operation::Tombstone)?;
    let r = ctx
        .store
        .tombstone_stream(stream, expected)
        .await
        .map_err(|e| to_status(&e, Operation::Tombstone))?;
    Ok(TombstoneResp {
        position_option: Some(
            factum_proto::streams::tombstone_resp::PositionOption::Position(
                factum_proto::streams::tombstone_resp::Position {
                    commit_position: r.position.0,
                    prepare_position: r.position.0,
                },
            ),
        ),
    })
}

/// One append being assembled from BatchAppend chunks.
struct Pending {
    stream: StreamName,
    wire_stream: shared::StreamIdentifier,
    expected: ExpectedRevision,
    events: Vec<EventData>,
    size: u64,
    /// The request's own deadline, when it set one.
    deadline: Option<Instant>,
    /// The correlation id as the client sent it (answers echo its form).
    correlation: Option<shared::Uuid>,
    /// Its bytes in the server's append budget, until it is answered.
    reserved: Reserved,
}

/// Appends one BatchAppend call may have started and not finished
/// (assembling, or answered early and still sending chunks); beyond it the
/// call ends with RESOURCE_EXHAUSTED.
const MAX_PENDING_PER_CALL: usize = 1024;

/// Appends of one BatchAppend call being written at once; beyond it the
/// call reads no further requests until one is answered.
const MAX_WRITING_PER_CALL: usize = 256;

/// When a batch append must be answered by, from its `deadline` option: a
/// duration from now (current clients) or a point in time (clients before
/// 21.10). A deadline already passed is `now`.
fn batch_deadline(o: &batch_append_req::Options) -> Option<Instant> {
    use batch_append_req::options::DeadlineOption as D;
    let now = Instant::now();
    let after = |secs: i64, nanos: i32| {
        let total = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        let left = Duration::from_nanos(total.clamp(0, i128::from(u64::MAX)) as u64);
        now.checked_add(left)
    };
    match &o.deadline_option {
        Some(D::Deadline(d)) => after(d.seconds, d.nanos),
        Some(D::Deadline21100(t)) => {
            let since_epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let secs = t.seconds.saturating_sub(since_epoch.as_secs() as i64);
            after(secs, t.nanos - since_epoch.subsec_nanos() as i32)
        }
        None => None,
    }
}

/// `Streams.BatchAppend`: appends multiplexed by correlation id; each
/// completed append runs concurrently and answers when done.
pub async fn batch_append<S: EventStore>(
    ctx: Arc<Ctx<S>>,
    mut input: impl futures_util::Stream<Item = Result<BatchMsg, Status>> + Unpin,
    tx: mpsc::Sender<Result<BatchAppendResp, Status>>,
) {
    let mut pending: HashMap<Uuid, Pending> = HashMap::new();
    // Appends answered before their last chunk came (deadline passed): the
    // rest of their chunks are ignored.
    let mut answered: HashSet<Uuid> = HashSet::new();
    // The appends taken, driven by this call's own task (not a task each:
    // a spawn per append was a measurable share of a batch append's server
    // CPU, ADR 46). Every wait of the loop below also drives them.
    let mut in_flight = FuturesUnordered::new();
    let mut shutdown = ctx.shutdown.clone();
    // The loop's waits that last across messages are made once, not per
    // message (a `select!` evaluates every branch's future each time).
    let shutting_down = shutdown.wait_for(|s| *s);
    tokio::pin!(shutting_down);
    let expiry = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(expiry);
    let end = loop {
        while in_flight.len() >= MAX_WRITING_PER_CALL {
            in_flight.next().await;
        }
        let next_deadline = pending.values().filter_map(|p| p.deadline).min();
        if let Some(d) = next_deadline {
            let d = tokio::time::Instant::from_std(d);
            if expiry.deadline() != d {
                expiry.as_mut().reset(d);
            }
        }
        // In a fixed order: shutting down and deadlines are never starved by
        // a client that keeps sending; finished appends answer before more
        // are read.
        let next = tokio::select! {
            biased;
            _ = &mut shutting_down => None,
            _ = &mut expiry, if next_deadline.is_some() => Some(None),
            Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
            m = input.next() => Some(Some(m.transpose())),
        };
        let next = match next {
            Some(Some(m)) => Some(m),
            Some(None) => {
                // Appends still being assembled when their deadline passed.
                let now = Instant::now();
                let expired: Vec<Uuid> = pending
                    .iter()
                    .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
                    .map(|(id, _)| *id)
                    .collect();
                for id in expired {
                    if let Some(p) = pending.remove(&id) {
                        answered.insert(id);
                        let resp = batch_response(
                            p.correlation.clone(),
                            &p.wire_stream,
                            Some(p.expected),
                            Err(batch_timeout()),
                        );
                        let _ = tx.send(Ok(resp)).await;
                    }
                }
                continue;
            }
            None => None,
        };
        let msg = match next {
            Some(Ok(Some(m))) => m,
            // The client closed its side: answer what it sent, then end.
            Some(Ok(None)) => break None,
            Some(Err(status)) => break Some(transport_status(status)),
            // Shutting down: appends already taken finish and are answered;
            // then the call ends so the server can stop.
            None => break Some(Status::unavailable("server is shutting down")),
        };
        let correlation =
            match convert::uuid_from_wire(msg.correlation_id.as_ref(), "correlation_id") {
                Ok(c) => c,
                Err(status) => {
                    break Some(status);
                }
            };
        let wire_correlation = msg.correlation_id.clone();
        if answered.contains(&correlation) {
            if msg.is_final {
                answered.remove(&correlation);
            }
            continue;
        }
        if !pending.contains_key(&correlation)
            && pending.len() + answered.len() >= MAX_PENDING_PER_CALL
        {
            break Some(Status::resource_exhausted(format!(
                "more than {MAX_PENDING_PER_CALL} appends unfinished on one batch append call"
            )));
        }
        // An append's first message starts it here; it joins `pending` only
        // when more chunks are to come (most appends are one message).
        let mut fresh = None;
        let entry = match pending.get_mut(&correlation) {
            Some(p) => p,
            None => {
                let Some(options) = msg.options.as_ref() else {
                    break Some(Status::invalid_argument(format!(
                        "the first request of batch append {correlation} carries no options"
                    )));
                };
                let stream = match convert::stream_from_wire(options.stream_identifier.as_ref()) {
                    Ok(s) => s,
                    Err(status) => {
                        break Some(status);
                    }
                };
                let expected = match options
                    .expected_stream_position
                    .map_or(Ok(ExpectedRevision::Any), ExpectedRevision::try_from)
                {
                    Ok(e) => e,
                    Err(e) => {
                        // Refused at once, as a deadline that passed: the
                        // rest of this append's chunks are ignored.
                        let resp = batch_response(
                            wire_correlation,
                            &convert::stream_to_wire(&stream),
                            None,
                            Err(batch_status(&e)),
                        );
                        let _ = tx.send(Ok(resp)).await;
                        if !msg.is_final {
                            answered.insert(correlation);
                        }
                        continue;
                    }
                };
                let deadline = batch_deadline(options);
                fresh.insert(Pending {
                    wire_stream: convert::stream_to_wire(&stream),
                    stream,
                    expected,
                    events: Vec::new(),
                    size: 0,
                    deadline,
                    correlation: wire_correlation.clone(),
                    reserved: Reserved::default(),
                })
            }
        };
        // Each proposed message counts whole, as in `Append`, and is
        // reserved in the append budget as it is taken.
        let mut refused = None;
        for p in msg.proposed {
            let bytes = p.bytes;
            if let Err(e) = ctx.config.count_append_bytes(&mut entry.size, bytes) {
                refused = Some(batch_status(&e));
                break;
            }
            // Budget is released by appends finishing: drive them meanwhile.
            let reserve = ctx.append_budget.reserve(&mut entry.reserved, bytes);
            tokio::pin!(reserve);
            let reserved = loop {
                tokio::select! {
                    r = &mut reserve => break r,
                    Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                }
            };
            if let Err(e) = reserved {
                refused = Some(rpc::Status {
                    code: rpc::Code::ResourceExhausted as i32,
                    message: e.to_string(),
                    details: None,
                    metadata: Default::default(),
                });
                break;
            }
            match p.event {
                Ok(e) => entry.events.push(e),
                Err(status) => {
                    refused = Some(batch_status(&Error::InvalidInput(
                        status.message().to_owned(),
                    )));
                    break;
                }
            }
        }
        if refused.is_none() && !msg.is_final {
            if let Some(p) = fresh {
                pending.insert(correlation, p);
            }
            continue;
        }
        let Some(p) = fresh.or_else(|| pending.remove(&correlation)) else {
            continue;
        };
        if refused.is_some() && !msg.is_final {
            // Refused before its last chunk: the rest are ignored.
            answered.insert(correlation);
        }
        let (ctx, tx) = (ctx.clone(), tx.clone());
        // The request's principal goes with its appends (ACLs, ADR 31).
        in_flight.push(crate::auth::inherit(async move {
            let answer = |result: Result<AppendResult, rpc::Status>| {
                batch_response(
                    wire_correlation.clone(),
                    &p.wire_stream,
                    Some(p.expected),
                    result,
                )
            };
            if let Some(status) = refused {
                let _ = tx.send(Ok(answer(Err(status)))).await;
                return;
            }
            if p.deadline.is_some_and(|d| d <= Instant::now()) {
                let _ = tx.send(Ok(answer(Err(batch_timeout())))).await;
                return;
            }
            let _reserved = p.reserved;
            let write = write(&ctx, p.stream.clone(), p.expected, p.events);
            tokio::pin!(write);
            let result = match p.deadline {
                Some(d) => tokio::select! {
                    r = &mut write => r.map_err(|e| batch_status(&e)),
                    _ = tokio::time::sleep_until(d.into()) => {
                        // Answered now; the write itself goes on (it may
                        // commit, as in KurrentDB: a retry with the same
                        // event ids is idempotent) and is waited for.
                        let _ = tx.send(Ok(answer(Err(batch_timeout())))).await;
                        let _ = write.await;
                        return;
                    }
                },
                None => write.await.map_err(|e| batch_status(&e)),
            };
            let _ = tx.send(Ok(answer(result))).await;
        }));
    };
    // Appends already taken finish and are answered before the call ends.
    while in_flight.next().await.is_some() {}
    if let Some(status) = end {
        let _ = tx.send(Err(status)).await;
    }
}

fn batch_response(
    correlation_id: Option<shared::Uuid>,
    stream: &shared::StreamIdentifier,
    expected: Option<ExpectedRevision>,
    result: Result<AppendResult, rpc::Status>,
) -> BatchAppendResp {
    let result = match result {
        Ok(r) => batch_append_resp::Result::Success(r.into()),
        Err(status) => batch_append_resp::Result::Error(status),
    };
    BatchAppendResp {
        correlation_id: correlation_id
            .or_else(|| Some(convert::uuid_to_wire(Uuid::nil(), UuidFormat::String))),
        result: Some(result),
        stream_identifier: Some(stream.clone()),
        // Taken from the request, so always representable.
        expected_stream_position: expected.and_then(|e| e.try_into().ok()),
    }
}

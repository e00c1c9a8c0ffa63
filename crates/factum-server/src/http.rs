//! HTTP/JSON for people and scripts, on the gRPC port: streams, metadata,
//! deletes, live tails as server-sent events, health, metrics, OpenAPI.
//! `openapi.rs` documents exactly these routes.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use factum_core::UnavailableReason;
use factum_core::{
    AllStart, ContentType, Direction, Error, EventData, EventStore, ExpectedRevision, Position,
    ReadAll, ReadStream, RecordedEvent, StreamMetadata, StreamName, StreamRevision, StreamStart,
    Subscribe, SubscriptionMessage, SubscriptionStart, Uuid,
};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::budget::Reserved;
use crate::context::Ctx;
pub use crate::http_headers::{
    EVENT_ID_HEADER, EVENT_TYPE_HEADER, EXPECTED_HEADER, EXPECTED_VERSION_HEADER,
};

/// Largest page a read returns.
const MAX_PAGE: u64 = 4096;

type Shared<S> = State<Arc<Ctx<S>>>;

/// The HTTP routes over `ctx`'s store.
pub fn router<S: EventStore>(ctx: Arc<Ctx<S>>) -> Router {
    Router::new()
        .route("/health", get(health::<S>))
        .route("/health/live", get(|| async { "live\n" }))
        .route("/health/ready", get(ready::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/admin/backup", post(backup::<S>))
        .route("/admin/scavenge", post(crate::operations::http::post::<S>))
        .route(
            "/admin/scavenge/current",
            get(crate::operations::http::current::<S>),
        )
        .route(
            "/admin/scavenge/last",
            get(crate::operations::http::last::<S>),
        )
        .route(
            "/admin/scavenge/{id}",
            axum::routing::delete(crate::operations::http::stop::<S>),
        )
        .route(
            "/openapi.json",
            get(|| async { Json(crate::openapi::document()) }),
        )
        .route(
            "/streams/{stream}",
            get(read::<S>).post(append::<S>).delete(delete::<S>),
        )
        .route(
            "/streams/{stream}/metadata",
            get(get_metadata::<S>).put(put_metadata::<S>),
        )
        .route("/streams/{stream}/subscribe", get(subscribe::<S>))
        .route(
            "/multi-append",
            axum::routing::post(crate::http_multi::append_multi::<S>),
        )
        .with_state(ctx)
}

/// `POST /admin/backup` with `{"to": DIR}`: a consistent copy of the store
/// at its committed position into `DIR` on the server's machine (ADR 32).
async fn backup<S: EventStore>(
    State(ctx): Shared<S>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    #[derive(serde::Deserialize)]
    struct BackupRequest {
        to: std::path::PathBuf,
    }
    let req: BackupRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::from(Error::InvalidInput(format!(
            "a backup request is {{\"to\": \"/dir\"}}: {e}"
        )))
    })?;
    let Some(hook) = ctx.config.backup.clone() else {
        return Err(Error::Unsupported(
            "online backup needs the embedded engine; back up PostgreSQL with its own tools".into(),
        )
        .into());
    };
    let report = tokio::task::spawn_blocking(move || hook(req.to))
        .await
        .map_err(|e| {
            Error::unavailable(
                factum_core::UnavailableReason::Unspecified,
                format!("the backup task failed: {e}"),
            )
        })??;
    Ok(Json(report))
}

/// An error answer: `{"error": kind, "message": text, ...}`.
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, body) = crate::errors::http_error(&e);
        ApiError(status, body)
    }
}

/// axum's `Path`, its rejection (such as a name that is not UTF-8 once
/// percent-decoded) answered as the API's JSON `invalid-input` error rather
/// than axum's plain text (found by tests/wire_edges.rs).
struct Path<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(t)) => Ok(Path(t)),
            Err(e) => Err(bad(e.body_text())),
        }
    }
}

/// axum's `Query`, its rejection answered as the API's JSON error.
struct Query<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(t)) => Ok(Query(t)),
            Err(e) => Err(bad(e.body_text())),
        }
    }
}

pub(crate) fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::from(Error::InvalidInput(msg.into()))
}

pub(crate) fn stream_name(raw: &str) -> Result<StreamName, ApiError> {
    StreamName::new(raw).map_err(ApiError::from)
}

async fn health<S: EventStore>(State(ctx): Shared<S>) -> Response {
    let ready = !ctx.shutting_down() && ctx.store.head_position().await.is_ok();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({ "live": true, "ready": ready }))).into_response()
}

async fn ready<S: EventStore>(State(ctx): Shared<S>) -> Response {
    if ctx.shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match ctx.store.head_position().await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}

async fn metrics<S: EventStore>(State(ctx): Shared<S>) -> Response {
    let size = ctx.config.size_probe.as_ref().and_then(|p| p());
    let mut text = ctx.metrics.render(size);
    if let Some(extra) = &ctx.config.extra_metrics {
        text.push_str(&extra());
    }
    match ctx.persistent.list(None).await {
        Ok(groups) => crate::metrics::render_groups(&mut text, &groups),
        Err(e) => tracing::warn!("persistent subscription metrics unavailable: {e}"),
    }
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

/// Query of a read: `from` (revision, position, `start` or `end`),
/// `direction` (`forwards`/`backwards`), `count` (≤ 4096).
#[derive(Deserialize)]
pub struct ReadQuery {
    from: Option<String>,
    direction: Option<String>,
    count: Option<u64>,
}

async fn read<S: EventStore>(
    State(ctx): Shared<S>,
    Path(stream): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    let direction = match q.direction.as_deref() {
        None | Some("forwards") => Direction::Forwards,
        Some("backwards") => Direction::Backwards,
        Some(d) => return Err(bad(format!("direction {d:?}: use forwards or backwards"))),
    };
    let count = q.count.unwrap_or(100).min(MAX_PAGE);
    let from = match q.from.as_deref() {
        None => None,
        Some("start") => Some(Err(false)),
        Some("end") => Some(Err(true)),
        Some(n) => Some(Ok(n
            .parse::<u64>()
            .map_err(|_| bad(format!("from {n:?}: use start, end or a number")))?)),
    };
    let name = stream_name(&stream)?;
    let events = if name.is_all() {
        let from = match from {
            None => match direction {
                Direction::Forwards => AllStart::Start,
                Direction::Backwards => AllStart::End,
            },
            Some(Ok(p)) => AllStart::Position(Position(p)),
            Some(Err(false)) => AllStart::Start,
            Some(Err(true)) => AllStart::End,
        };
        ctx.store
            .read_all(ReadAll {
                from,
                direction,
                max_count: count,
                max_bytes: factum_core::PAGE_BYTES,
                filter: None,
                until: None,
            })
            .await?
    } else {
        let from = match from {
            None => match direction {
                Direction::Forwards => StreamStart::Start,
                Direction::Backwards => StreamStart::End,
            },
            Some(Ok(r)) => StreamStart::Revision(StreamRevision(r)),
            Some(Err(false)) => StreamStart::Start,
            Some(Err(true)) => StreamStart::End,
        };
        ctx.store
            .read_stream(ReadStream {
                stream: name.clone(),
                from,
                direction,
                max_count: count,
                max_bytes: factum_core::PAGE_BYTES,
                until: None,
            })
            .await?
    };
    // Where the next page starts, when this one was full.
    let full = factum_core::PageBound::ended_full(&events, count, factum_core::PAGE_BYTES);
    let next = match (events.last(), full) {
        (Some(last), true) => {
            let at = if name.is_all() {
                last.position.0
            } else {
                last.read_revision().0
            };
            match direction {
                Direction::Forwards => Some(at + 1),
                Direction::Backwards => at.checked_sub(1),
            }
        }
        _ => None,
    };
    ctx.metrics.sent(
        events.len() as u64,
        events
            .iter()
            .map(|e| (e.data.len() + e.metadata.len()) as u64)
            .sum(),
    );
    Ok(page_json(&name, &events, next))
}

/// A page of events: `{"stream", "events", "next"}`, each event in its JSON
/// form (`factum_core::json`), written as text so that event data reaches
/// the client as it was stored.
fn page_json(stream: &StreamName, events: &[RecordedEvent], next: Option<u64>) -> Response {
    let mut body = String::with_capacity(
        64 + events
            .iter()
            .map(|e| 256 + e.data.len() + e.metadata.len())
            .sum::<usize>(),
    );
    body.push_str("{\"stream\":");
    body.push_str(&json!(stream.as_str()).to_string());
    body.push_str(",\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        factum_core::json::write_event(e, &mut body);
    }
    body.push_str("],\"next\":");
    body.push_str(&json!(next).to_string());
    body.push('}');
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// An event to append over HTTP.
#[derive(Deserialize)]
pub struct NewEvent {
    id: Option<Uuid>,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    data: Value,
    metadata: Option<Value>,
}

impl NewEvent {
    /// The event to append (JSON data, JSON metadata).
    pub(crate) fn into_event(self) -> Result<EventData, Error> {
        let mut d = EventData::json(self.event_type, &self.data)?;
        if let Some(id) = self.id {
            d = d.with_id(id);
        }
        if let Some(m) = self.metadata {
            d = d.with_metadata(serde_json::to_vec(&m).unwrap_or_default());
        }
        Ok(d)
    }
}

/// An append body: a list of events, or `{expected_revision, events}`.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum AppendBody {
    /// Just the events.
    Events(Vec<NewEvent>),
    /// Events with an expected revision.
    WithExpected {
        /// `any`, `no-stream`, `exists` or a revision number.
        expected_revision: Option<String>,
        /// The events.
        events: Vec<NewEvent>,
    },
}

fn expected(headers: &HeaderMap, field: Option<&str>) -> Result<ExpectedRevision, ApiError> {
    let raw = match headers.get(EXPECTED_HEADER) {
        Some(h) => Some(
            h.to_str()
                .map_err(|_| bad(format!("{EXPECTED_HEADER} is not text")))?,
        ),
        None => field,
    };
    raw.map_or(Ok(ExpectedRevision::Any), |s| {
        s.parse().map_err(ApiError::from)
    })
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|h| h.to_str().map_err(|_| bad(format!("{name} is not text"))))
        .transpose()
}

/// True for `application/json` and `application/…+json`.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_none_or(|m| {
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
}

/// A single event from KurrentDB's headers: the body is its data, JSON or
/// binary by the content type.
fn single_event(headers: &HeaderMap, event_type: &str, body: &[u8]) -> Result<EventData, ApiError> {
    let mut event = if is_json(headers) {
        serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|e| {
            bad(format!(
                "the body is not JSON (content type application/json): {e}"
            ))
        })?;
        EventData::new(event_type, ContentType::Json, body.to_vec())
    } else {
        EventData::binary(event_type, body.to_vec())
    };
    if let Some(id) = header(headers, EVENT_ID_HEADER)? {
        let id = Uuid::parse_str(id).map_err(|e| bad(format!("{EVENT_ID_HEADER} {id:?}: {e}")))?;
        event = event.with_id(id);
    }
    Ok(event)
}

/// KurrentDB's numeric expected version (`factum_proto::expected`): a
/// number outside `i64` or a negative one KurrentDB does not define is 400.
fn expected_version(raw: &str) -> Result<ExpectedRevision, ApiError> {
    let n = raw.trim().parse::<i64>().map_err(|_| {
        bad(format!(
            "{EXPECTED_VERSION_HEADER} {raw:?} is not a signed 64-bit number: use -2 (any), -1 (no stream), -4 (exists) or a revision from 0 to {}",
            i64::MAX
        ))
    })?;
    factum_proto::expected::expected_from_version_number(n).map_err(|e| match e {
        Error::InvalidInput(m) => bad(format!("{EXPECTED_VERSION_HEADER}: {m}")),
        e => e.into(),
    })
}

/// A request body that writes: at most `max_append_bytes` (refused with
/// 413 and the JSON error as soon as its declared length or the bytes
/// received pass it), and held in the server's append budget until the
/// request ends (503 when no room came within the budget's wait).
pub(crate) async fn receive_body<S>(
    ctx: &Ctx<S>,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<(axum::body::Bytes, Reserved), ApiError> {
    let limit = ctx.config.max_append_bytes;
    let too_large = |actual| {
        ApiError::from(Error::LimitExceeded {
            what: "request body in bytes".into(),
            limit,
            actual,
        })
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > limit) {
        return Err(too_large(n));
    }
    let mut reserved = Reserved::default();
    ctx.append_budget
        .reserve(&mut reserved, declared.unwrap_or(limit))
        .await
        .map_err(|e| ApiError::from(Error::unavailable(UnavailableReason::Busy, e.to_string())))?;
    let bytes = axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .map_err(|e| {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(cause) = source {
                if cause.is::<http_body_util::LengthLimitError>() {
                    return too_large(limit.saturating_add(1));
                }
                source = cause.source();
            }
            bad(format!("request body: {e}"))
        })?;
    Ok((bytes, reserved))
}

async fn append<S: EventStore>(
    State(ctx): Shared<S>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (body, _reserved) = receive_body(&ctx, &headers, body).await?;
    let (expected, events) = match header(&headers, EVENT_TYPE_HEADER)? {
        // One event, the body its data (JSON or binary), as KurrentDB takes it.
        Some(event_type) => {
            let event = single_event(&headers, event_type, &body)?;
            let expected = match header(&headers, EXPECTED_VERSION_HEADER)? {
                Some(v) if headers.get(EXPECTED_HEADER).is_none() => expected_version(v)?,
                _ => expected(&headers, None)?,
            };
            (expected, vec![event])
        }
        None => {
            // Whatever the content type (`curl -d` sends a form type): a
            // list of events unless ES-EventType says the body is one.
            let body: AppendBody = serde_json::from_slice(&body).map_err(|e| {
                bad(format!(
                    "append body: {e} (a body that is one event's data needs the ES-EventType header)"
                ))
            })?;
            let (exp, events) = match body {
                AppendBody::Events(ev) => (None, ev),
                AppendBody::WithExpected {
                    expected_revision,
                    events,
                } => (expected_revision, events),
            };
            let expected = expected(&headers, exp.as_deref())?;
            let events: Vec<EventData> = events
                .into_iter()
                .map(NewEvent::into_event)
                .collect::<Result<_, Error>>()?;
            (expected, events)
        }
    };
    let name = stream_name(&stream)?;
    let mut size = 0u64;
    let bytes = events.iter().map(|e| e.size() as u64).sum();
    ctx.config.count_append_bytes(&mut size, bytes)?;
    let started = std::time::Instant::now();
    let n = events.len();
    let r = ctx.store.append(name, expected, events).await?;
    ctx.metrics.appended(n, size as usize, started.elapsed());
    Ok((
        StatusCode::CREATED,
        Json(json!({ "revision": r.revision.0, "position": r.position.0 })),
    ))
}

/// Query of a delete: `tombstone=true` for a hard delete.
#[derive(Deserialize)]
pub struct DeleteQuery {
    tombstone: Option<bool>,
}

async fn delete<S: EventStore>(
    State(ctx): Shared<S>,
    Path(stream): Path<String>,
    Query(q): Query<DeleteQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let name = stream_name(&stream)?;
    let expected = expected(&headers, None)?;
    let r = if q.tombstone.unwrap_or(false) {
        ctx.store.tombstone_stream(name, expected).await?
    } else {
        ctx.store.delete_stream(name, expected).await?
    };
    Ok(Json(json!({ "position": r.position.0 })))
}

async fn get_metadata<S: EventStore>(
    State(ctx): Shared<S>,
    Path(stream): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let r = ctx.store.stream_metadata(stream_name(&stream)?).await?;
    let metadata: Value = serde_json::from_slice(&r.metadata.to_json()).unwrap_or(Value::Null);
    Ok(Json(
        json!({ "revision": r.revision.map(|r| r.0), "metadata": metadata }),
    ))
}

async fn put_metadata<S: EventStore>(
    State(ctx): Shared<S>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let (body, _reserved) = receive_body(&ctx, &headers, body).await?;
    let metadata = StreamMetadata::from_json(&body)?;
    let expected = expected(&headers, None)?;
    let started = std::time::Instant::now();
    let r = ctx
        .store
        .set_stream_metadata(stream_name(&stream)?, expected, metadata)
        .await?;
    // Counted as a one-event append, as over gRPC (where it is one).
    ctx.metrics.appended(1, body.len(), started.elapsed());
    Ok(Json(
        json!({ "revision": r.revision.0, "position": r.position.0 }),
    ))
}

/// Query of a live tail: `from` = `start`, `end` (default) or the revision
/// / position to continue after.
#[derive(Deserialize)]
pub struct SubscribeQuery {
    from: Option<String>,
}

async fn subscribe<S: EventStore>(
    State(ctx): Shared<S>,
    Path(stream): Path<String>,
    Query(q): Query<SubscribeQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let start = match q.from.as_deref() {
        None | Some("end") => SubscriptionStart::End,
        Some("start") => SubscriptionStart::Beginning,
        Some(n) => SubscriptionStart::After(
            n.parse()
                .map_err(|_| bad(format!("from {n:?}: use start, end or a number")))?,
        ),
    };
    let name = stream_name(&stream)?;
    let req = if name.is_all() {
        Subscribe::all(start, None)
    } else {
        Subscribe::stream(name, start)
    };
    let sub = ctx.store.subscribe(req).await?;
    let shutdown = ctx.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (sub, shutdown, false),
        |(mut sub, mut shutdown, done)| async move {
            if done {
                return None;
            }
            let msg = tokio::select! {
                m = sub.next() => Some(m),
                _ = shutdown.wait_for(|s| *s) => None,
            };
            let Some(msg) = msg else {
                let ev = SseEvent::default()
                    .event("shutdown")
                    .data("server is shutting down");
                return Some((Ok(ev), (sub, shutdown, true)));
            };
            let ev = match msg? {
                Ok(SubscriptionMessage::Event(e)) => SseEvent::default()
                    .event("event")
                    .data(factum_core::json::event_json(&e)),
                Ok(SubscriptionMessage::CaughtUp) => {
                    SseEvent::default().event("caught-up").data("{}")
                }
                Ok(SubscriptionMessage::FellBehind) => {
                    SseEvent::default().event("fell-behind").data("{}")
                }
                Ok(SubscriptionMessage::Checkpoint(p)) => SseEvent::default()
                    .event("checkpoint")
                    .data(json!({ "position": p.0 }).to_string()),
                Err(e) => {
                    let ev = SseEvent::default()
                        .event("error")
                        .data(crate::errors::http_error(&e).1.to_string());
                    return Some((Ok(ev), (sub, shutdown, true)));
                }
            };
            Some((Ok(ev), (sub, shutdown, false)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

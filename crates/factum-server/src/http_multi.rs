//! `POST /multi-append` (ADR 29): the HTTP form of a multi-stream atomic
//! append. The body names streams with their expected revision and events
//! (as `POST /streams/{stream}` takes them), and checks on streams not
//! written:
//!
//! ```json
//! {"streams": [{"stream": "order-1", "expected_revision": "no-stream",
//!               "events": [{"type": "Placed", "data": {}}]}],
//!  "checks":  [{"stream": "customer-7", "expected": "exists"}]}
//! ```
//!
//! 201 answers `{"position", "streams": [{"stream", "revision",
//! "position"}]}`; conditions that do not hold answer 409
//! `{"error": "consistency-violation", "violations": [{"index", "stream",
//! "expected", "actual"}]}` and nothing is written.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use factum_core::{
    ActualState, Error, EventData, EventStore, ExpectedRevision, MultiAppend, StreamCondition,
    StreamRevision,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::Ctx;
use crate::http::{bad, receive_body, stream_name, ApiError, NewEvent};

/// One written stream.
#[derive(Deserialize)]
pub struct StreamBody {
    stream: String,
    /// `any` (the default), `no-stream`, `exists` or a revision number.
    expected_revision: Option<String>,
    events: Vec<NewEvent>,
}

/// One stream only checked.
#[derive(Deserialize)]
pub struct CheckBody {
    stream: String,
    /// `no-stream`, `exists`, `deleted`, `tombstoned` or a revision number.
    expected: String,
}

/// The request.
#[derive(Deserialize)]
pub struct MultiBody {
    streams: Vec<StreamBody>,
    #[serde(default)]
    checks: Vec<CheckBody>,
}

fn condition(raw: &str) -> Result<StreamCondition, ApiError> {
    match raw {
        "deleted" => Ok(StreamCondition::Deleted),
        "tombstoned" => Ok(StreamCondition::Tombstoned),
        _ => raw
            .parse::<ExpectedRevision>()
            .map(StreamCondition::from)
            .map_err(ApiError::from),
    }
}

fn condition_text(c: StreamCondition) -> Value {
    match c {
        StreamCondition::Any => "any".into(),
        StreamCondition::NoStream => "no-stream".into(),
        StreamCondition::Exists => "exists".into(),
        StreamCondition::Revision(StreamRevision(r)) => r.into(),
        StreamCondition::Deleted => "deleted".into(),
        StreamCondition::Tombstoned => "tombstoned".into(),
    }
}

fn actual_text(a: ActualState) -> Value {
    match a {
        ActualState::NoStream => "no-stream".into(),
        ActualState::Revision(StreamRevision(r)) => r.into(),
        ActualState::Deleted => "deleted".into(),
        ActualState::Tombstoned => "tombstoned".into(),
    }
}

/// `POST /multi-append`.
pub async fn append_multi<S: EventStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (body, _reserved) = receive_body(&ctx, &headers, body).await?;
    let body: MultiBody =
        serde_json::from_slice(&body).map_err(|e| bad(format!("multi-append body: {e}")))?;
    let mut request = MultiAppend::new();
    for s in body.streams {
        let expected = match s.expected_revision.as_deref() {
            None => ExpectedRevision::Any,
            Some(raw) => raw.parse().map_err(ApiError::from)?,
        };
        let events = s
            .events
            .into_iter()
            .map(NewEvent::into_event)
            .collect::<Result<Vec<EventData>, Error>>()?;
        request = request.append(stream_name(&s.stream)?, expected, events);
    }
    for c in body.checks {
        if request
            .streams
            .iter()
            .any(|p| p.stream.as_str() == c.stream)
        {
            return Err(bad(format!(
                "stream {} is both written and checked: give its expected_revision instead",
                c.stream
            )));
        }
        request = request.check(stream_name(&c.stream)?, condition(&c.expected)?);
    }
    let n = request.events.len();
    let size: usize = request.events.iter().map(|(_, e)| e.size()).sum();
    let started = std::time::Instant::now();
    match ctx.store.append_multi(request).await {
        Ok(r) => {
            ctx.metrics.appended(n, size, started.elapsed());
            let streams: Vec<Value> = r
                .streams
                .iter()
                .map(|s| {
                    json!({ "stream": s.stream.as_str(), "revision": s.revision.0, "position": s.position.0 })
                })
                .collect();
            Ok((
                StatusCode::CREATED,
                Json(json!({ "position": r.position.0, "streams": streams })),
            ))
        }
        Err(Error::ConsistencyViolation { violations }) => {
            let message = violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            let list: Vec<Value> = violations
                .iter()
                .map(|v| {
                    json!({ "index": v.index, "stream": v.stream.as_str(),
                            "expected": condition_text(v.expected), "actual": actual_text(v.actual) })
                })
                .collect();
            Err(ApiError(
                StatusCode::CONFLICT,
                json!({ "error": "consistency-violation", "message": message, "violations": list }),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

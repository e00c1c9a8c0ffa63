//! KurrentDB's HTTP routes for projections (ADR 35), as its tools and
//! clients use them:
//!
//! | route | what |
//! |---|---|
//! | `GET /projections/{any,all-non-transient,continuous,onetime,transient}` | `{"projections": [statistics…]}` |
//! | `POST /projections/{continuous,onetime,transient}?name=&emit=&trackemittedstreams=&enabled=` | create; the body is the query |
//! | `GET /projection/{name}` , `/statistics` | statistics |
//! | `GET /projection/{name}/state?partition=`, `/result?partition=` | state / result JSON |
//! | `GET /projection/{name}/query` , `PUT …/query?emit=` | the query; update it |
//! | `POST /projection/{name}/command/{enable,disable,abort,reset}` | commands |
//! | `DELETE /projection/{name}?deleteStateStream=&deleteCheckpointStream=&deleteEmittedStreams=` | delete |
//!
//! Creating, changing and deleting need `$ops` or `$admins` when users are
//! required; reading is open to any authenticated user.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{Extensions, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use factum_core::EventStore;
use factum_projections::{Create, DeleteOptions, Mode, ProjectionError, Statistics};
use serde_json::{json, Value};

use crate::auth;
use crate::context::Ctx;

/// gRPC projection calls that manage (only `$ops`/`$admins`).
pub(crate) fn manages(path: &str) -> bool {
    const SERVICE: &str = "/event_store.client.projections.Projections/";
    path.strip_prefix(SERVICE).is_some_and(|m| {
        matches!(
            m,
            "Create" | "Update" | "Delete" | "Disable" | "Enable" | "Reset" | "RestartSubsystem"
        )
    })
}

/// The routes.
pub fn router<S: EventStore>(ctx: Arc<Ctx<S>>) -> Router {
    Router::new()
        .route("/projections/{mode}", get(list::<S>).post(create::<S>))
        .route(
            "/projection/{name}",
            get(statistics::<S>).delete(delete::<S>),
        )
        .route("/projection/{name}/statistics", get(statistics::<S>))
        .route("/projection/{name}/state", get(state::<S>))
        .route("/projection/{name}/result", get(result::<S>))
        .route("/projection/{name}/query", get(query::<S>).put(update::<S>))
        .route("/projection/{name}/command/{command}", post(command::<S>))
        .with_state(ctx)
}

struct Failure(ProjectionError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            ProjectionError::NotFound(_) => StatusCode::NOT_FOUND,
            ProjectionError::AlreadyExists(_) => StatusCode::CONFLICT,
            ProjectionError::Invalid(_) => StatusCode::BAD_REQUEST,
            ProjectionError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProjectionError::Store(e) => {
                let (status, body) = crate::errors::http_error(e);
                return (status, Json(body)).into_response();
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(json!({ "error": self.0.to_string() }))).into_response()
    }
}

type Answer = Result<Response, Failure>;

fn denied() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": "access-denied", "message": "$ops or $admins only" })),
    )
        .into_response()
}

/// Whether the caller may manage projections.
fn may_manage<S>(ctx: &Ctx<S>, extensions: &Extensions) -> bool {
    ctx.users.is_none()
        || matches!(auth::principal(extensions), auth::Principal::User(who) if who.is_ops())
}

fn shown(s: Statistics) -> Value {
    json!({
        "name": s.name, "effectiveName": s.name, "status": s.status, "stateReason": s.state_reason,
        "mode": s.mode, "progress": s.progress, "position": s.position,
        "lastCheckpoint": s.last_checkpoint,
        "eventsProcessedAfterRestart": s.events_processed_after_restart,
        "partitionsCached": s.partitions_cached, "readsInProgress": s.reads_in_progress,
        "writesInProgress": s.writes_in_progress, "bufferedEvents": s.buffered_events,
        "writePendingEventsBeforeCheckpoint": s.write_pending_events_before_checkpoint,
        "writePendingEventsAfterCheckpoint": s.write_pending_events_after_checkpoint,
        "enabled": s.enabled, "epoch": s.epoch, "version": s.version,
        "checkpointStatus": s.checkpoint_status, "coreProcessingTime": s.core_processing_time,
        "statusUrl": format!("/projection/{}", s.name),
        "stateUrl": format!("/projection/{}/state", s.name),
        "resultUrl": format!("/projection/{}/result", s.name),
        "queryUrl": format!("/projection/{}/query?config=yes", s.name),
    })
}

fn flag(q: &HashMap<String, String>, key: &str, default: bool) -> bool {
    q.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map_or(default, |(_, v)| matches!(v.as_str(), "yes" | "true" | "1"))
}

fn mode_of(s: &str) -> Option<Mode> {
    match s {
        "continuous" => Some(Mode::Continuous),
        "onetime" => Some(Mode::OneTime),
        "transient" => Some(Mode::Transient),
        _ => None,
    }
}

async fn list<S: EventStore>(State(ctx): State<Arc<Ctx<S>>>, Path(mode): Path<String>) -> Answer {
    let keep: Box<dyn Fn(&Statistics) -> bool + Send> = match mode.as_str() {
        "any" => Box::new(|_| true),
        "all-non-transient" => Box::new(|s| s.mode != "Transient"),
        m => match mode_of(m) {
            Some(mode) => Box::new(move |s| s.mode == mode.as_str()),
            None => return Ok(StatusCode::NOT_FOUND.into_response()),
        },
    };
    let stats = ctx.projections.statistics(None).await.map_err(Failure)?;
    let list: Vec<Value> = stats.into_iter().filter(|s| keep(s)).map(shown).collect();
    Ok(Json(json!({ "projections": list })).into_response())
}

async fn create<S: EventStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    Path(mode): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    extensions: Extensions,
    query: String,
) -> Answer {
    if !may_manage(&ctx, &extensions) {
        return Ok(denied());
    }
    let Some(mode) = mode_of(&mode) else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    let name = match q.get("name") {
        Some(n) => n.clone(),
        None if mode != Mode::Continuous => factum_core::Uuid::new_v4().to_string(),
        None => {
            return Err(Failure(ProjectionError::Invalid(
                "a continuous projection needs ?name=".into(),
            )))
        }
    };
    ctx.projections
        .create(Create {
            name: name.clone(),
            query,
            mode,
            emit_enabled: flag(&q, "emit", false),
            track_emitted_streams: flag(&q, "trackemittedstreams", false),
            enabled: flag(&q, "enabled", true),
            checkpoints_enabled: flag(&q, "checkpoints", true),
            run_as: crate::grpc_projections::run_as(&auth::principal(&extensions)),
            engine_version: 1,
        })
        .await
        .map_err(Failure)?;
    Ok((
        StatusCode::CREATED,
        [("location", format!("/projection/{name}"))],
        Json(json!({ "name": name })),
    )
        .into_response())
}

async fn statistics<S: EventStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    Path(name): Path<String>,
) -> Answer {
    let stats = ctx
        .projections
        .statistics(Some(&name))
        .await
        .map_err(Failure)?;
    let list: Vec<Value> = stats.into_iter().map(shown).collect();
    Ok(Json(json!({ "projections": list })).into_response())
}

fn json_body(s: Option<String>) -> Response {
    let body = s.unwrap_or_else(|| "{}".into());
    ([("content-type", "application/json")], body).into_response()
}

async fn state<S: EventStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let partition = q.get("partition").map_or("", String::as_str);
    let s = ctx
        .projections
        .state(&name, partition)
        .await
        .map_err(Failure)?;
    Ok(json_body(s))
}

async fn result<S: EventStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let partition = q.get("partition").map_or("", String::as_str);
    let s = ctx
        .projections
        .result(&name, partition)
        .await
        .map_err(Failure)?;
    Ok(json_body(s))
}

async fn query<S: EventStore>(State(ctx): State<Arc<Ctx<S>>>, Path(name): Path<String>) -> Answer {
    let s = ctx.projections.settings(&name).await.map_err(Failure)?;
    Ok(Json(json!({
        "name": s.name, "query": s.query, "mode": s.mode.as_str(),
        "emitEnabled": s.emit_enabled, "trackEmittedStreams": s.track_emitted_streams,
        "checkpointsEnabled": s.checkpoints_enabled, "runAs": s.run_as,
    }))
    .into_response())
}

async fn update<S: EventStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    extensions: Extensions,
    query: String,
) -> Answer {
    if !may_manage(&ctx, &extensions) {
        return Ok(denied());
    }
    let emit = q.contains_key("emit").then(|| flag(&q, "emit", false));
    let by = crate::grpc_projections::run_as(&auth::principal(&extensions));
    ctx.projections
        .update(&name, Some(query), emit, Some(by))
        .await
        .map_err(Failure)?;
    Ok(StatusCode::OK.into_response())
}

async fn command<S: EventStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    Path((name, command)): Path<(String, String)>,
    extensions: Extensions,
) -> Answer {
    if !may_manage(&ctx, &extensions) {
        return Ok(denied());
    }
    let p = &ctx.projections;
    match command.as_str() {
        "enable" => p.enable(&name).await,
        "disable" => p.disable(&name, true).await,
        "abort" => p.disable(&name, false).await,
        "reset" => p.reset(&name).await,
        _ => return Ok(StatusCode::NOT_FOUND.into_response()),
    }
    .map_err(Failure)?;
    Ok(Json(json!({ "name": name })).into_response())
}

async fn delete<S: EventStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    extensions: Extensions,
) -> Answer {
    if !may_manage(&ctx, &extensions) {
        return Ok(denied());
    }
    ctx.projections
        .delete(
            &name,
            DeleteOptions {
                delete_emitted_streams: flag(&q, "deleteEmittedStreams", false),
                delete_state_stream: flag(&q, "deleteStateStream", false),
                delete_checkpoint_stream: flag(&q, "deleteCheckpointStream", false),
            },
        )
        .await
        .map_err(Failure)?;
    Ok(StatusCode::OK.into_response())
}

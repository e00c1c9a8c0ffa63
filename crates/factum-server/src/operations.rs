//! Operations (ADR 33): KurrentDB's `event_store.client.operations.Operations`
//! gRPC service, its HTTP admin routes for scavenges (`POST /admin/scavenge`,
//! `GET /admin/scavenge/current`, `GET /admin/scavenge/last`,
//! `DELETE /admin/scavenge/{id}`), the `$scavenges` / `$scavenges-<id>`
//! streams a scavenge's progress and result are written to (as KurrentDB
//! writes them), and the scavenge schedule. Every route and method is for
//! `$ops` and `$admins` only (the gate, `auth::ops_only`).
//!
//! On a single node: `Shutdown` stops the server, `RestartPersistentSubscriptions`
//! restarts the consumer groups, `MergeIndexes` checkpoints the index (Factum's
//! index has no tables to merge); `ResignNode` and `SetNodePriority` have no
//! cluster to act on and answer UNIMPLEMENTED, and ServerFeatures lists only
//! the others (the scavenge methods only when the backend can scavenge).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use factum_core::{
    Error, EventData, EventStore, ExpectedRevision, Result, StreamMetadata, StreamName, Uuid,
};
use factum_proto::operations::operations_server::Operations;
use factum_proto::operations::{
    scavenge_resp::ScavengeResult, ScavengeResp, SetNodePriorityReq, StartScavengeReq,
    StopScavengeReq,
};
use factum_proto::shared;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::context::Ctx;
use crate::errors::{to_status, Operation};
use crate::grpc::GrpcApi;

/// The stream listing every scavenge (links to their own streams' events).
pub const SCAVENGES_STREAM: &str = "$scavenges";
/// How long KurrentDB keeps a scavenge's stream (`$maxAge`, 30 days).
const SCAVENGE_HISTORY_MAX_AGE_SECS: u64 = 30 * 24 * 3600;

/// A backend's scavenges, for the server (the engine's and PostgreSQL's,
/// wired by `factum serve`; ADR 33, ADR 40).
pub trait Scavenger: Send + Sync {
    /// Starts a scavenge; refused (`InProgress` with the running one's id)
    /// while one runs.
    fn start(&self, request: ScavengeRequest) -> Result<ScavengeStart>;
    /// Asks the running scavenge (the one with `id`, when given) to stop.
    fn stop(&self, id: Option<Uuid>) -> bool;
    /// The running scavenge.
    fn current(&self) -> Option<ScavengeInfo>;
    /// The last finished one.
    fn last(&self) -> Option<ScavengeInfo>;
    /// Checkpoints the index (`MergeIndexes`).
    fn merge_indexes(&self) -> Result<()>;
}

/// How a scavenge is asked to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScavengeRequest {
    /// Busy this percentage of the time (1–100).
    pub throttle_percent: u8,
    /// Rewrite a segment only when it frees at least this percentage of it
    /// (KurrentDB's `threshold`; 0 or less: whenever anything goes).
    pub threshold: i64,
    /// The first segment (chunk) to look at.
    pub start_from_segment: u32,
}

impl Default for ScavengeRequest {
    fn default() -> Self {
        ScavengeRequest {
            throttle_percent: 100,
            threshold: 0,
            start_from_segment: 0,
        }
    }
}

/// The answer to a start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScavengeStart {
    /// Started with this id.
    Started(Uuid),
    /// Another scavenge (this id) is running.
    InProgress(Uuid),
}

/// A scavenge as the admin routes show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScavengeInfo {
    /// Its id.
    pub scavenge_id: Uuid,
    /// `InProgress`, `Success`, `Stopped` or `Failed` (KurrentDB's results).
    pub result: String,
    /// Why it failed.
    pub error: String,
    /// The first segment it looked at.
    pub start_from_segment: u32,
    /// Segments it looks at.
    pub segments_total: u32,
    /// … looked at so far.
    pub segments_done: u32,
    /// … rewritten.
    pub segments_rewritten: u32,
    /// Events removed.
    pub events_removed: u64,
    /// Bytes freed.
    pub space_saved: u64,
    /// Time taken, milliseconds.
    pub time_taken_ms: u64,
    /// The stream its progress is written to.
    pub scavenge_link: String,
}

impl ScavengeInfo {
    fn running(&self) -> bool {
        self.result == "InProgress"
    }
}

/// The stream of one scavenge.
pub fn scavenge_stream(id: Uuid) -> String {
    format!("{SCAVENGES_STREAM}-{id}")
}

/// .NET's `TimeSpan` text ("c" format), as KurrentDB writes `timeTaken`.
fn time_span(d: Duration) -> String {
    let ticks = d.as_nanos() / 100;
    let secs = d.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:07}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ticks % 10_000_000
    )
}

fn scavenger<S>(ctx: &Ctx<S>) -> Result<Arc<dyn Scavenger>> {
    ctx.config.scavenge.clone().ok_or_else(|| {
        Error::Unsupported(
            "this server was started without scavenges (`factum serve` wires them for the engine and for PostgreSQL)".into(),
        )
    })
}

/// Starts a scavenge and the task that writes its progress and result to
/// `$scavenges-<id>` (and links in `$scavenges`).
pub async fn start<S: EventStore>(
    ctx: &Arc<Ctx<S>>,
    request: ScavengeRequest,
) -> Result<ScavengeStart> {
    let scavenger = scavenger(ctx)?;
    let started = scavenger.start(request)?;
    if let ScavengeStart::Started(id) = started {
        let ctx = ctx.clone();
        tokio::spawn(async move { log_scavenge(ctx, scavenger, id, request).await });
    }
    Ok(started)
}

/// Writes `event` of `$scavenges-<id>` and, as KurrentDB does for the
/// start and the end, a link to it in `$scavenges`.
async fn write_detail<S: EventStore>(
    store: &S,
    id: Uuid,
    event_type: &str,
    data: serde_json::Value,
    link: bool,
) {
    let stream = match StreamName::new(scavenge_stream(id)) {
        Ok(s) => s,
        Err(e) => return tracing::error!("scavenge stream name: {e}"),
    };
    let event = match EventData::json(event_type, &data) {
        Ok(e) => e,
        Err(e) => return tracing::error!("scavenge event: {e}"),
    };
    match store
        .append(stream.clone(), ExpectedRevision::Any, vec![event])
        .await
    {
        Ok(r) if link => {
            let target = format!("{}@{}", r.revision.0, stream);
            let link = EventData::new("$>", factum_core::ContentType::Binary, target.into_bytes());
            let all = StreamName::new(SCAVENGES_STREAM).expect("a valid name");
            if let Err(e) = store.append(all, ExpectedRevision::Any, vec![link]).await {
                tracing::warn!("writing to {SCAVENGES_STREAM}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("writing to {stream}: {e}"),
    }
}

async fn log_scavenge<S: EventStore>(
    ctx: Arc<Ctx<S>>,
    scavenger: Arc<dyn Scavenger>,
    id: Uuid,
    request: ScavengeRequest,
) {
    let store = ctx.store.inner().clone();
    let node = ctx.config.advertise.to_string();
    if let Ok(stream) = StreamName::new(scavenge_stream(id)) {
        let metadata = StreamMetadata {
            max_age: Some(SCAVENGE_HISTORY_MAX_AGE_SECS),
            acl: Some(
                serde_json::json!({"$r": ["$ops"], "$w": [], "$d": [], "$mr": [], "$mw": []}),
            ),
            ..StreamMetadata::default()
        };
        if let Err(e) = store
            .set_stream_metadata(stream, ExpectedRevision::Any, metadata)
            .await
        {
            tracing::warn!("writing the metadata of {}: {e}", scavenge_stream(id));
        }
    }
    let data = serde_json::json!({
        "scavengeId": id.to_string(),
        "nodeEndpoint": node,
        "alwaysKeepScavenged": false,
        "mergeChunks": false,
        "startFromChunk": request.start_from_segment,
        "threads": 1,
    });
    write_detail(&*store, id, "$scavengeStarted", data, true).await;
    let (mut done, mut saved, mut at) = (0u32, 0u64, std::time::Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = scavenger.current().filter(|c| c.scavenge_id == id);
        let info = match now {
            Some(c) => c,
            None => match scavenger.last().filter(|l| l.scavenge_id == id) {
                Some(l) => l,
                None => continue,
            },
        };
        if info.segments_done > done {
            let data = serde_json::json!({
                "scavengeId": id.to_string(),
                "chunkStartNumber": request.start_from_segment + done,
                "chunkEndNumber": request.start_from_segment + info.segments_done - 1,
                "timeTaken": time_span(at.elapsed()),
                "wasScavenged": info.segments_rewritten > 0,
                "spaceSaved": info.space_saved - saved,
                "nodeEndpoint": node,
                "errorMessage": "",
            });
            write_detail(&*store, id, "$scavengeChunksCompleted", data, false).await;
            (done, saved, at) = (
                info.segments_done,
                info.space_saved,
                std::time::Instant::now(),
            );
        }
        if !info.running() {
            let data = serde_json::json!({
                "scavengeId": id.to_string(),
                "nodeEndpoint": node,
                "result": info.result,
                "error": info.error,
                "timeTaken": time_span(Duration::from_millis(info.time_taken_ms)),
                "spaceSaved": info.space_saved,
                "maxChunkScavenged": (request.start_from_segment + info.segments_done).saturating_sub(1),
            });
            write_detail(&*store, id, "$scavengeCompleted", data, true).await;
            return;
        }
    }
}

fn scavenge_resp(started: ScavengeStart) -> ScavengeResp {
    let (id, result) = match started {
        ScavengeStart::Started(id) => (id, ScavengeResult::Started),
        ScavengeStart::InProgress(id) => (id, ScavengeResult::InProgress),
    };
    ScavengeResp {
        scavenge_id: id.to_string(),
        scavenge_result: result as i32,
    }
}

fn status(e: &Error) -> Status {
    to_status(e, Operation::Append)
}

#[tonic::async_trait]
impl<S: EventStore> Operations for GrpcApi<S> {
    async fn start_scavenge(
        &self,
        request: Request<StartScavengeReq>,
    ) -> std::result::Result<Response<ScavengeResp>, Status> {
        self.authenticate(&request)?;
        let options = request.into_inner().options.unwrap_or_default();
        if options.thread_count < 0 || options.start_from_chunk < 0 {
            return Err(Status::invalid_argument(
                "thread count and start-from chunk must not be negative",
            ));
        }
        // One segment at a time: the thread count is accepted, not used.
        let req = ScavengeRequest {
            start_from_segment: options.start_from_chunk as u32,
            ..ScavengeRequest::default()
        };
        start(self.ctx(), req)
            .await
            .map(|s| Response::new(scavenge_resp(s)))
            .map_err(|e| status(&e))
    }

    async fn stop_scavenge(
        &self,
        request: Request<StopScavengeReq>,
    ) -> std::result::Result<Response<ScavengeResp>, Status> {
        self.authenticate(&request)?;
        let id = request
            .into_inner()
            .options
            .map(|o| o.scavenge_id)
            .unwrap_or_default();
        let id: Uuid = id
            .parse()
            .map_err(|_| Status::invalid_argument(format!("{id:?} is not a scavenge id")))?;
        let scavenger = scavenger(self.ctx()).map_err(|e| status(&e))?;
        if !scavenger.stop(Some(id)) {
            return Err(Status::not_found(format!("scavenge {id} is not running")));
        }
        Ok(Response::new(ScavengeResp {
            scavenge_id: id.to_string(),
            scavenge_result: ScavengeResult::Stopped as i32,
        }))
    }

    async fn shutdown(
        &self,
        request: Request<shared::Empty>,
    ) -> std::result::Result<Response<shared::Empty>, Status> {
        self.authenticate(&request)?;
        tracing::info!("shutdown requested through the Operations service");
        self.ctx().shutdown_requested.notify_one();
        Ok(Response::new(shared::Empty {}))
    }

    async fn merge_indexes(
        &self,
        request: Request<shared::Empty>,
    ) -> std::result::Result<Response<shared::Empty>, Status> {
        self.authenticate(&request)?;
        let scavenger = scavenger(self.ctx()).map_err(|e| status(&e))?;
        tokio::task::spawn_blocking(move || scavenger.merge_indexes())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| status(&e))?;
        Ok(Response::new(shared::Empty {}))
    }

    async fn resign_node(
        &self,
        request: Request<shared::Empty>,
    ) -> std::result::Result<Response<shared::Empty>, Status> {
        self.authenticate(&request)?;
        Err(Status::unimplemented(
            "ResignNode: a single Factum node has no cluster to resign from",
        ))
    }

    async fn set_node_priority(
        &self,
        request: Request<SetNodePriorityReq>,
    ) -> std::result::Result<Response<shared::Empty>, Status> {
        self.authenticate(&request)?;
        Err(Status::unimplemented(
            "SetNodePriority: a single Factum node takes part in no election",
        ))
    }

    async fn restart_persistent_subscriptions(
        &self,
        request: Request<shared::Empty>,
    ) -> std::result::Result<Response<shared::Empty>, Status> {
        self.authenticate(&request)?;
        self.ctx()
            .persistent
            .restart()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(shared::Empty {}))
    }
}

/// When scheduled scavenges run (`--scavenge-schedule`): `daily@HH:MM` or
/// `hourly@MM`, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Every day at this hour and minute (UTC).
    Daily {
        /// 0–23.
        hour: u32,
        /// 0–59.
        minute: u32,
    },
    /// Every hour at this minute.
    Hourly {
        /// 0–59.
        minute: u32,
    },
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!("{s:?} is not a schedule: expected daily@HH:MM or hourly@MM (UTC), e.g. daily@03:00")
        };
        let (kind, at) = s.split_once('@').ok_or_else(bad)?;
        let num = |t: &str, max: u32| t.parse::<u32>().ok().filter(|&n| n <= max).ok_or_else(bad);
        match kind {
            "daily" => {
                let (h, m) = at.split_once(':').ok_or_else(bad)?;
                Ok(Schedule::Daily {
                    hour: num(h, 23)?,
                    minute: num(m, 59)?,
                })
            }
            "hourly" => Ok(Schedule::Hourly {
                minute: num(at, 59)?,
            }),
            _ => Err(bad()),
        }
    }
}

impl Schedule {
    /// How long from `now` until the next run.
    pub fn until_next(&self, now: SystemTime) -> Duration {
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let (period, offset) = match *self {
            Schedule::Daily { hour, minute } => (86_400, hour as u64 * 3600 + minute as u64 * 60),
            Schedule::Hourly { minute } => (3600, minute as u64 * 60),
        };
        let into = secs % period;
        let wait = if into < offset {
            offset - into
        } else {
            period - into + offset
        };
        Duration::from_secs(wait)
    }
}

/// Runs scheduled scavenges until shutdown (one skipped while another runs).
pub async fn run_schedule<S: EventStore>(ctx: Arc<Ctx<S>>, schedule: Schedule) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let wait = schedule.until_next(SystemTime::now());
        tracing::info!(in_secs = wait.as_secs(), "next scheduled scavenge");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match start(&ctx, ScavengeRequest::default()).await {
            Ok(ScavengeStart::Started(id)) => tracing::info!(%id, "scheduled scavenge started"),
            Ok(ScavengeStart::InProgress(id)) => {
                tracing::info!(%id, "scheduled scavenge skipped: one is running")
            }
            Err(e) => tracing::error!("scheduled scavenge: {e}"),
        }
        // Never twice in the same minute.
        tokio::time::sleep(Duration::from_secs(61)).await;
    }
}

/// The HTTP admin routes.
pub mod http {
    use std::sync::Arc;

    use axum::extract::{Path, Query, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::Json;
    use factum_core::{Error, EventStore, Uuid};
    use serde::Deserialize;
    use serde_json::json;

    use super::{scavenger, start, ScavengeRequest, ScavengeStart};
    use crate::context::Ctx;

    fn error(e: &Error) -> Response {
        let (status, body) = crate::errors::http_error(e);
        (status, Json(body)).into_response()
    }

    /// `POST /admin/scavenge` query parameters (KurrentDB's names).
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    pub struct StartQuery {
        throttle_percent: Option<u8>,
        threshold: Option<i64>,
        start_from_chunk: Option<u32>,
        threads: Option<u32>,
    }

    /// `POST /admin/scavenge?throttlePercent=..&threshold=..&startFromChunk=..`.
    pub async fn post<S: EventStore>(
        State(ctx): State<Arc<Ctx<S>>>,
        Query(q): Query<StartQuery>,
    ) -> Response {
        let throttle = q.throttle_percent.unwrap_or(100);
        if !(1..=100).contains(&throttle) {
            return error(&Error::InvalidInput(
                "throttlePercent must be between 1 and 100".into(),
            ));
        }
        let _ = q.threads;
        let req = ScavengeRequest {
            throttle_percent: throttle,
            threshold: q.threshold.unwrap_or(0),
            start_from_segment: q.start_from_chunk.unwrap_or(0),
        };
        match start(&ctx, req).await {
            Ok(ScavengeStart::Started(id)) => Json(json!({
                "scavengeId": id.to_string(),
                "scavengeLink": format!("/streams/{}", super::scavenge_stream(id)),
            }))
            .into_response(),
            Ok(ScavengeStart::InProgress(id)) => (
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "error": "scavenge-in-progress",
                    "message": format!("scavenge {id} is already running"),
                    "scavengeId": id.to_string(),
                })),
            )
                .into_response(),
            Err(e) => error(&e),
        }
    }

    /// `GET /admin/scavenge/current`.
    pub async fn current<S: EventStore>(State(ctx): State<Arc<Ctx<S>>>) -> Response {
        match scavenger(&ctx) {
            Ok(s) => match s.current() {
                Some(info) => Json(info).into_response(),
                None => (
                    StatusCode::NOT_FOUND,
                    Json(json!({"error": "not-found", "message": "no scavenge is running"})),
                )
                    .into_response(),
            },
            Err(e) => error(&e),
        }
    }

    /// `GET /admin/scavenge/last`.
    pub async fn last<S: EventStore>(State(ctx): State<Arc<Ctx<S>>>) -> Response {
        match scavenger(&ctx) {
            Ok(s) => match s.current().or_else(|| s.last()) {
                Some(info) => Json(info).into_response(),
                None => (
                    StatusCode::NOT_FOUND,
                    Json(json!({"error": "not-found", "message": "no scavenge has run since the server started"})),
                )
                    .into_response(),
            },
            Err(e) => error(&e),
        }
    }

    /// `DELETE /admin/scavenge/{id}`: stops it.
    pub async fn stop<S: EventStore>(
        State(ctx): State<Arc<Ctx<S>>>,
        Path(id): Path<String>,
    ) -> Response {
        let Ok(id) = id.parse::<Uuid>() else {
            return error(&Error::InvalidInput(format!("{id:?} is not a scavenge id")));
        };
        match scavenger(&ctx) {
            Ok(s) if s.stop(Some(id)) => Json(json!({"scavengeId": id.to_string(), "result": "Stopped"})).into_response(),
            Ok(_) => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "not-found", "message": format!("scavenge {id} is not running")})),
            )
                .into_response(),
            Err(e) => error(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_and_wait_for_the_next_slot() {
        assert_eq!(
            "daily@03:30".parse(),
            Ok(Schedule::Daily {
                hour: 3,
                minute: 30
            })
        );
        assert_eq!("hourly@05".parse(), Ok(Schedule::Hourly { minute: 5 }));
        for bad in ["daily@24:00", "daily@3", "weekly@1", "hourly@60", ""] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let daily = Schedule::Daily { hour: 3, minute: 0 };
        assert_eq!(daily.until_next(at(0)), Duration::from_secs(3 * 3600));
        assert_eq!(daily.until_next(at(3 * 3600)), Duration::from_secs(86_400));
        assert_eq!(
            daily.until_next(at(4 * 3600)),
            Duration::from_secs(23 * 3600)
        );
        let hourly = Schedule::Hourly { minute: 10 };
        assert_eq!(
            hourly.until_next(at(3600 + 5 * 60)),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn time_taken_is_a_dotnet_time_span() {
        assert_eq!(time_span(Duration::from_millis(1234)), "00:00:01.2340000");
        assert_eq!(time_span(Duration::from_secs(3723)), "01:02:03.0000000");
    }
}

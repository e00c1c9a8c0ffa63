//! KurrentDB's `Projections` gRPC service over [`Projections`] (ADR 35).
//! Managing projections (create, update, delete, enable, disable, reset,
//! restart) is for `$ops` and `$admins` (the gate in `auth.rs`); a
//! projection records who created it and runs as them.
//!
//! | error | status |
//! |---|---|
//! | no such projection | NOT_FOUND "Projection 'x' not found" |
//! | name taken | ALREADY_EXISTS "Conflict: projection 'x' already exists" |
//! | invalid query or name | INVALID_ARGUMENT with the compile error |
//! | a system projection (not implemented yet) | UNIMPLEMENTED saying so |

use std::sync::Arc;

use factum_core::EventStore;
use factum_projections::{
    Create, DeleteOptions, Mode, ProjectionError, Projections, RunAs, Statistics,
};
use factum_proto::projections::projections_server::Projections as ProjectionsService;
use factum_proto::projections::{
    create_req, statistics_req, update_req, CreateReq, CreateResp, DeleteReq, DeleteResp,
    DisableReq, DisableResp, EnableReq, EnableResp, ResetReq, ResetResp, ResultReq, ResultResp,
    StateReq, StateResp, StatisticsReq, StatisticsResp, UpdateReq, UpdateResp,
};
use factum_proto::shared;
use tonic::{Request, Response, Status};

use crate::auth::{self, Principal};
use crate::errors::{self, Operation};
use crate::grpc::ResponseStream;

/// The Projections service.
pub struct ProjectionsApi<S> {
    projections: Arc<Projections<S>>,
}

impl<S> ProjectionsApi<S> {
    /// Serves `projections`.
    pub fn new(projections: Arc<Projections<S>>) -> Self {
        ProjectionsApi { projections }
    }
}

/// A projection error as KurrentDB answers it.
pub fn to_status(e: ProjectionError) -> Status {
    match e {
        ProjectionError::NotFound(name) => {
            Status::not_found(format!("Projection '{name}' not found"))
        }
        ProjectionError::AlreadyExists(name) => {
            Status::already_exists(format!("Conflict: projection '{name}' already exists"))
        }
        ProjectionError::Invalid(m) => Status::invalid_argument(m),
        ProjectionError::NotImplemented(m) => {
            Status::unimplemented(format!("not implemented yet: {m}"))
        }
        ProjectionError::Store(e) => errors::to_status(&e, Operation::Append),
        other => Status::internal(other.to_string()),
    }
}

/// The user a projection runs as: its creator's login and groups (kept
/// with its settings, as KurrentDB keeps its `runAs`).
pub fn run_as(principal: &Principal) -> RunAs {
    match principal {
        Principal::User(who) => RunAs {
            login: Some(who.login.clone()),
            groups: who.groups.to_vec(),
        },
        Principal::Anonymous => RunAs::default(),
    }
}

/// A JSON document as `google.protobuf.Value`.
pub fn json_to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

fn state_value(state: Option<String>) -> prost_types::Value {
    // KurrentDB answers an empty state as an empty string.
    match state.and_then(|s| serde_json::from_str(&s).ok()) {
        Some(v) => json_to_value(v),
        None => json_to_value(serde_json::Value::String(String::new())),
    }
}

fn details(s: Statistics) -> StatisticsResp {
    use factum_proto::projections::statistics_resp::Details;
    StatisticsResp {
        details: Some(Details {
            core_processing_time: s.core_processing_time,
            version: s.version,
            epoch: s.epoch,
            effective_name: s.name.clone(),
            writes_in_progress: s.writes_in_progress,
            reads_in_progress: s.reads_in_progress,
            partitions_cached: s.partitions_cached,
            status: s.status,
            state_reason: s.state_reason,
            name: s.name,
            mode: s.mode,
            position: s.position,
            progress: s.progress,
            last_checkpoint: s.last_checkpoint,
            events_processed_after_restart: s.events_processed_after_restart as i64,
            checkpoint_status: s.checkpoint_status,
            buffered_events: s.buffered_events as i64,
            write_pending_events_before_checkpoint: s.write_pending_events_before_checkpoint,
            write_pending_events_after_checkpoint: s.write_pending_events_after_checkpoint,
        }),
    }
}

fn name_of(name: String) -> Result<String, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("a projection name is required"));
    }
    Ok(name)
}

#[tonic::async_trait]
impl<S: EventStore> ProjectionsService for ProjectionsApi<S> {
    async fn create(&self, request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        let who = auth::principal(request.extensions());
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("options are required"))?;
        let (name, mode, emit, track) = match options.mode {
            Some(create_req::options::Mode::Continuous(c)) => (
                c.name,
                Mode::Continuous,
                c.emit_enabled,
                c.track_emitted_streams,
            ),
            Some(create_req::options::Mode::Transient(t)) => {
                (t.name, Mode::Transient, false, false)
            }
            // KurrentDB's one-time projections get a generated name.
            Some(create_req::options::Mode::OneTime(_)) => (
                factum_core::Uuid::new_v4().to_string(),
                Mode::OneTime,
                false,
                false,
            ),
            None => return Err(Status::invalid_argument("a projection mode is required")),
        };
        self.projections
            .create(Create {
                name: name_of(name)?,
                query: options.query,
                mode,
                emit_enabled: emit,
                track_emitted_streams: track,
                enabled: true,
                checkpoints_enabled: true,
                run_as: run_as(&who),
                engine_version: options.engine_version,
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(CreateResp {}))
    }

    async fn update(&self, request: Request<UpdateReq>) -> Result<Response<UpdateResp>, Status> {
        let who = auth::principal(request.extensions());
        let o = request.into_inner().options.unwrap_or_default();
        let emit = match o.emit_option {
            Some(update_req::options::EmitOption::EmitEnabled(e)) => Some(e),
            _ => None,
        };
        self.projections
            .update(&name_of(o.name)?, Some(o.query), emit, Some(run_as(&who)))
            .await
            .map_err(to_status)?;
        Ok(Response::new(UpdateResp {}))
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        let o = request.into_inner().options.unwrap_or_default();
        self.projections
            .delete(
                &name_of(o.name)?,
                DeleteOptions {
                    delete_emitted_streams: o.delete_emitted_streams,
                    delete_state_stream: o.delete_state_stream,
                    delete_checkpoint_stream: o.delete_checkpoint_stream,
                },
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(DeleteResp {}))
    }

    type StatisticsStream = ResponseStream<StatisticsResp>;

    async fn statistics(
        &self,
        request: Request<StatisticsReq>,
    ) -> Result<Response<Self::StatisticsStream>, Status> {
        let o = request.into_inner().options.unwrap_or_default();
        use statistics_req::options::Mode as M;
        let (name, mode) = match o.mode {
            Some(M::Name(n)) => (Some(n), None),
            Some(M::Transient(_)) => (None, Some("Transient")),
            Some(M::Continuous(_)) => (None, Some("Continuous")),
            Some(M::OneTime(_)) => (None, Some("OneTime")),
            Some(M::All(_)) | None => (None, None),
        };
        let stats = self
            .projections
            .statistics(name.as_deref())
            .await
            .map_err(to_status)?;
        let items: Vec<Result<StatisticsResp, Status>> = stats
            .into_iter()
            .filter(|s| mode.is_none_or(|m| s.mode == m))
            .map(|s| Ok(details(s)))
            .collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(items))))
    }

    async fn disable(&self, request: Request<DisableReq>) -> Result<Response<DisableResp>, Status> {
        let o = request.into_inner().options.unwrap_or_default();
        // Abort is a disable without a checkpoint write.
        self.projections
            .disable(&name_of(o.name)?, o.write_checkpoint)
            .await
            .map_err(to_status)?;
        Ok(Response::new(DisableResp {}))
    }

    async fn enable(&self, request: Request<EnableReq>) -> Result<Response<EnableResp>, Status> {
        let o = request.into_inner().options.unwrap_or_default();
        self.projections
            .enable(&name_of(o.name)?)
            .await
            .map_err(to_status)?;
        Ok(Response::new(EnableResp {}))
    }

    async fn reset(&self, request: Request<ResetReq>) -> Result<Response<ResetResp>, Status> {
        let o = request.into_inner().options.unwrap_or_default();
        self.projections
            .reset(&name_of(o.name)?)
            .await
            .map_err(to_status)?;
        Ok(Response::new(ResetResp {}))
    }

    async fn state(&self, request: Request<StateReq>) -> Result<Response<StateResp>, Status> {
        let o = request.into_inner().options.unwrap_or_default();
        let state = self
            .projections
            .state(&name_of(o.name)?, &o.partition)
            .await
            .map_err(to_status)?;
        Ok(Response::new(StateResp {
            state: Some(state_value(state)),
        }))
    }

    async fn result(&self, request: Request<ResultReq>) -> Result<Response<ResultResp>, Status> {
        let o = request.into_inner().options.unwrap_or_default();
        let result = self
            .projections
            .result(&name_of(o.name)?, &o.partition)
            .await
            .map_err(to_status)?;
        Ok(Response::new(ResultResp {
            result: Some(state_value(result)),
        }))
    }

    async fn restart_subsystem(
        &self,
        _request: Request<shared::Empty>,
    ) -> Result<Response<shared::Empty>, Status> {
        self.projections.restart().await.map_err(to_status)?;
        Ok(Response::new(shared::Empty {}))
    }
}

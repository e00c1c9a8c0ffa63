//! Crypto-shredding's `forget` on the wire (ADR 36): `POST
//! /subjects/{subject}/forget` and `factum.subjects.Subjects/Forget`.
//! Both call the server's [`ForgetHook`] (set when the store was opened
//! with a master key: the `factum_crypto::Shredding` wrapper). Only
//! `$admins` reach them once users are required: the authentication gate
//! refuses everyone else (`auth.rs`, `admins_only`). Without a hook they
//! answer `Unsupported`, naming the setting that turns it on.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use factum_core::{Error, EventStore};
use factum_proto::subjects::subjects_server::Subjects;
use factum_proto::subjects::{ForgetReq, ForgetResp};
use serde_json::{json, Value};

use crate::auth::Principal;
use crate::context::{Ctx, ForgetHook, Forgotten};
use crate::http::ApiError;

/// The path prefix of the HTTP route (admins only).
pub(crate) const HTTP_PREFIX: &str = "/subjects/";
/// The path prefix of the gRPC service (admins only).
pub(crate) const GRPC_PREFIX: &str = "/factum.subjects.Subjects/";

/// Who asked, as the audit event records it.
fn requester() -> String {
    match crate::auth::current() {
        Principal::User(u) => u.login.clone(),
        Principal::Anonymous => "anonymous (insecure server)".to_owned(),
    }
}

fn hook<S>(ctx: &Ctx<S>) -> Result<ForgetHook, Error> {
    ctx.config.forget.clone().ok_or_else(|| {
        Error::Unsupported(
            "crypto-shredding is off: start the server with --encryption-key-file FILE \
             (FACTUM_ENCRYPTION_KEY_FILE) to encrypt personal fields and forget subjects"
                .into(),
        )
    })
}

/// The HTTP route.
pub(crate) fn router<S: EventStore>(ctx: Arc<Ctx<S>>) -> Router {
    Router::new()
        .route("/subjects/{subject}/forget", post(forget_http::<S>))
        .with_state(ctx)
}

async fn forget_http<S: EventStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    axum::extract::Path(subject): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let forget = hook(&ctx)?;
    let done: Forgotten = forget(subject, requester()).await?;
    Ok(Json(json!({
        "subject": done.subject,
        "had_key": done.had_key,
        "audit_position": done.audit_position,
    })))
}

/// The gRPC service.
pub(crate) struct SubjectsApi<S> {
    ctx: Arc<Ctx<S>>,
}

impl<S> SubjectsApi<S> {
    pub(crate) fn new(ctx: Arc<Ctx<S>>) -> Self {
        SubjectsApi { ctx }
    }
}

#[tonic::async_trait]
impl<S: EventStore> Subjects for SubjectsApi<S> {
    async fn forget(
        &self,
        request: tonic::Request<ForgetReq>,
    ) -> Result<tonic::Response<ForgetResp>, tonic::Status> {
        let status = |e: Error| crate::errors::to_status(&e, crate::errors::Operation::Append);
        let forget = hook(&self.ctx).map_err(status)?;
        let subject = request.into_inner().subject;
        let done = forget(subject, requester()).await.map_err(status)?;
        Ok(tonic::Response::new(ForgetResp {
            had_key: done.had_key,
            audit_position: done.audit_position,
        }))
    }
}

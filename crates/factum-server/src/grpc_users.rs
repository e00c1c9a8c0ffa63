//! KurrentDB's `Users` gRPC service over [`Users`] (ADR 31), with its
//! errors as KurrentDB sends them:
//!
//! | error | status | `exception` and fields |
//! |---|---|---|
//! | no such user | NOT_FOUND "User 'x' is not found." | `user-not-found`, `login-name` |
//! | login taken, concurrent change | FAILED_PRECONDITION "Conflict." | `user-conflict`, `login-name` |
//! | not allowed, wrong current password | PERMISSION_DENIED "Access Denied" | `access-denied` |
//! | bad login or password | INVALID_ARGUMENT | – |

use std::sync::Arc;

use factum_core::EventStore;
use factum_proto::users::users_server::Users as UsersService;
use factum_proto::users::{
    details_resp, ChangePasswordReq, ChangePasswordResp, CreateReq, CreateResp, DeleteReq,
    DeleteResp, DetailsReq, DetailsResp, DisableReq, DisableResp, EnableReq, EnableResp,
    ResetPasswordReq, ResetPasswordResp, UpdateReq, UpdateResp,
};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

use crate::auth::{self, Principal};
use crate::errors::{self, Operation};
use crate::grpc::ResponseStream;
use crate::users::{UserDetails, UserError, Users};

/// The Users service.
pub struct UsersApi<S> {
    users: Arc<Users<S>>,
}

impl<S> UsersApi<S> {
    /// Serves `users`.
    pub fn new(users: Arc<Users<S>>) -> Self {
        UsersApi { users }
    }
}

/// A user error as KurrentDB answers it.
pub fn to_status(e: UserError) -> Status {
    let with_login = |code: Code, message: String, exception: &'static str, login: &str| {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("exception", MetadataValue::from_static(exception));
        if let Ok(v) = MetadataValue::try_from(factum_proto::metadata_text::escape(login).as_str())
        {
            md.insert("login-name", v);
        }
        Status::with_metadata(code, message, md)
    };
    match e {
        UserError::NotFound(login) => with_login(
            Code::NotFound,
            format!("User '{login}' is not found."),
            "user-not-found",
            &login,
        ),
        UserError::Conflict(login) => with_login(
            Code::FailedPrecondition,
            "Conflict.".into(),
            "user-conflict",
            &login,
        ),
        UserError::AccessDenied => auth::access_denied(),
        UserError::InvalidInput(m) => Status::invalid_argument(m),
        UserError::Store(e) => errors::to_status(&e, Operation::Read),
    }
}

/// The principal the gate attached (tonic keeps the HTTP extensions).
fn principal<T>(req: &Request<T>) -> Principal {
    auth::principal(req.extensions())
}

fn options<T: Default>(o: Option<T>) -> T {
    o.unwrap_or_default()
}

fn details(d: UserDetails) -> DetailsResp {
    DetailsResp {
        user_details: Some(details_resp::UserDetails {
            login_name: d.login_name,
            full_name: d.full_name,
            groups: d.groups,
            last_updated: Some(details_resp::user_details::DateTime {
                ticks_since_epoch: factum_proto::ticks::from_timestamp(d.last_updated),
            }),
            disabled: d.disabled,
        }),
    }
}

#[tonic::async_trait]
impl<S: EventStore> UsersService for UsersApi<S> {
    async fn create(&self, request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        let by = principal(&request);
        let o = options(request.into_inner().options);
        self.users
            .create(&by, &o.login_name, &o.password, &o.full_name, o.groups)
            .await
            .map_err(to_status)?;
        Ok(Response::new(CreateResp {}))
    }

    async fn update(&self, request: Request<UpdateReq>) -> Result<Response<UpdateResp>, Status> {
        let by = principal(&request);
        let o = options(request.into_inner().options);
        self.users
            .update(&by, &o.login_name, &o.full_name, o.groups)
            .await
            .map_err(to_status)?;
        Ok(Response::new(UpdateResp {}))
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        let by = principal(&request);
        let o = options(request.into_inner().options);
        self.users
            .delete(&by, &o.login_name)
            .await
            .map_err(to_status)?;
        Ok(Response::new(DeleteResp {}))
    }

    async fn disable(&self, request: Request<DisableReq>) -> Result<Response<DisableResp>, Status> {
        let by = principal(&request);
        let o = options(request.into_inner().options);
        self.users
            .set_disabled(&by, &o.login_name, true)
            .await
            .map_err(to_status)?;
        Ok(Response::new(DisableResp {}))
    }

    async fn enable(&self, request: Request<EnableReq>) -> Result<Response<EnableResp>, Status> {
        let by = principal(&request);
        let o = options(request.into_inner().options);
        self.users
            .set_disabled(&by, &o.login_name, false)
            .await
            .map_err(to_status)?;
        Ok(Response::new(EnableResp {}))
    }

    type DetailsStream = ResponseStream<DetailsResp>;

    async fn details(
        &self,
        request: Request<DetailsReq>,
    ) -> Result<Response<Self::DetailsStream>, Status> {
        let by = principal(&request);
        let o = options(request.into_inner().options);
        let all = if o.login_name.trim().is_empty() {
            self.users.all(&by).await
        } else {
            self.users
                .details(&by, &o.login_name)
                .await
                .map(|d| vec![d])
        }
        .map_err(to_status)?;
        let items: Vec<Result<DetailsResp, Status>> =
            all.into_iter().map(|d| Ok(details(d))).collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(items))))
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordReq>,
    ) -> Result<Response<ChangePasswordResp>, Status> {
        let by = principal(&request);
        let o = options(request.into_inner().options);
        self.users
            .change_password(&by, &o.login_name, &o.current_password, &o.new_password)
            .await
            .map_err(to_status)?;
        Ok(Response::new(ChangePasswordResp {}))
    }

    async fn reset_password(
        &self,
        request: Request<ResetPasswordReq>,
    ) -> Result<Response<ResetPasswordResp>, Status> {
        let by = principal(&request);
        let o = options(request.into_inner().options);
        self.users
            .reset_password(&by, &o.login_name, &o.new_password)
            .await
            .map_err(to_status)?;
        Ok(Response::new(ResetPasswordResp {}))
    }
}

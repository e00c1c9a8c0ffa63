//! User management over HTTP, KurrentDB's routes (ADR 31): the same
//! operations as the `Users` gRPC service, through the same [`Users`].
//!
//! | route | operation |
//! |---|---|
//! | `GET /users` | every user (admins) |
//! | `GET /users/{login}` | one user (admins, or the user) |
//! | `POST /users` `{loginName, password, fullName, groups}` | create (admins), 201 |
//! | `PUT /users/{login}` `{fullName, groups}` | update (admins) |
//! | `DELETE /users/{login}` | delete (admins) |
//! | `POST /users/{login}/command/enable` / `disable` | (admins) |
//! | `POST /users/{login}/command/reset-password` `{newPassword}` | (admins) |
//! | `POST /users/{login}/command/change-password` `{currentPassword, newPassword}` | the user |
//!
//! Answers are KurrentDB's `{"success": true, "data": …}`; errors
//! `{"error": kind, "message": …}` with 404, 409, 401 (not allowed), 400.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{Extensions, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use factum_core::EventStore;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{self, Principal};
use crate::users::{UserDetails, UserError, Users};

/// The routes over `users`.
pub fn router<S: EventStore>(users: Arc<Users<S>>) -> Router {
    Router::new()
        .route("/users", get(all::<S>).post(create::<S>))
        .route(
            "/users/{login}",
            get(one::<S>).put(update::<S>).delete(delete::<S>),
        )
        .route("/users/{login}/command/{command}", post(command::<S>))
        .with_state(users)
}

struct Failure(UserError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, kind) = match &self.0 {
            UserError::NotFound(_) => (StatusCode::NOT_FOUND, "user-not-found"),
            UserError::Conflict(_) => (StatusCode::CONFLICT, "user-conflict"),
            // KurrentDB answers HTTP requests it denies with 401.
            UserError::AccessDenied => (StatusCode::UNAUTHORIZED, "access-denied"),
            UserError::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid-input"),
            UserError::Store(e) => {
                let (status, body) = crate::errors::http_error(e);
                return (status, Json(body)).into_response();
            }
        };
        (
            status,
            Json(json!({ "error": kind, "message": self.0.to_string() })),
        )
            .into_response()
    }
}

type Answer = Result<Response, Failure>;

fn principal(extensions: &Extensions) -> Principal {
    auth::principal(extensions)
}

fn shown(d: UserDetails) -> Value {
    json!({
        "loginName": d.login_name,
        "fullName": d.full_name,
        "groups": d.groups,
        "disabled": d.disabled,
        "dateLastUpdated": d.last_updated.to_string(),
    })
}

fn ok(status: StatusCode, data: Value) -> Answer {
    Ok((status, Json(json!({ "success": true, "data": data }))).into_response())
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(bytes)
        .map_err(|e| Failure(UserError::InvalidInput(format!("request body: {e}"))))
}

async fn all<S: EventStore>(State(users): State<Arc<Users<S>>>, ext: Extensions) -> Answer {
    let all = users.all(&principal(&ext)).await.map_err(Failure)?;
    ok(
        StatusCode::OK,
        Value::Array(all.into_iter().map(shown).collect()),
    )
}

async fn one<S: EventStore>(
    State(users): State<Arc<Users<S>>>,
    Path(login): Path<String>,
    ext: Extensions,
) -> Answer {
    let d = users
        .details(&principal(&ext), &login)
        .await
        .map_err(Failure)?;
    ok(StatusCode::OK, shown(d))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewUser {
    login_name: String,
    password: String,
    #[serde(default)]
    full_name: String,
    #[serde(default)]
    groups: Vec<String>,
}

async fn create<S: EventStore>(
    State(users): State<Arc<Users<S>>>,
    ext: Extensions,
    bytes: axum::body::Bytes,
) -> Answer {
    let u: NewUser = body(&bytes)?;
    users
        .create(
            &principal(&ext),
            &u.login_name,
            &u.password,
            &u.full_name,
            u.groups,
        )
        .await
        .map_err(Failure)?;
    ok(StatusCode::CREATED, json!({ "loginName": u.login_name }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Changed {
    #[serde(default)]
    full_name: String,
    #[serde(default)]
    groups: Vec<String>,
}

async fn update<S: EventStore>(
    State(users): State<Arc<Users<S>>>,
    Path(login): Path<String>,
    ext: Extensions,
    bytes: axum::body::Bytes,
) -> Answer {
    let c: Changed = body(&bytes)?;
    users
        .update(&principal(&ext), &login, &c.full_name, c.groups)
        .await
        .map_err(Failure)?;
    ok(StatusCode::OK, json!({ "loginName": login }))
}

async fn delete<S: EventStore>(
    State(users): State<Arc<Users<S>>>,
    Path(login): Path<String>,
    ext: Extensions,
) -> Answer {
    users
        .delete(&principal(&ext), &login)
        .await
        .map_err(Failure)?;
    ok(StatusCode::OK, json!({ "loginName": login }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Passwords {
    #[serde(default)]
    current_password: String,
    new_password: String,
}

async fn command<S: EventStore>(
    State(users): State<Arc<Users<S>>>,
    Path((login, command)): Path<(String, String)>,
    ext: Extensions,
    bytes: axum::body::Bytes,
) -> Answer {
    let by = principal(&ext);
    match command.as_str() {
        "enable" => users.set_disabled(&by, &login, false).await,
        "disable" => users.set_disabled(&by, &login, true).await,
        "reset-password" => {
            let p: Passwords = body(&bytes)?;
            users.reset_password(&by, &login, &p.new_password).await
        }
        "change-password" => {
            let p: Passwords = body(&bytes)?;
            users
                .change_password(&by, &login, &p.current_password, &p.new_password)
                .await
        }
        other => {
            return Ok((
                StatusCode::NOT_FOUND,
                Json(json!({ "error": "not-found", "message": format!("no user command {other:?}: enable, disable, reset-password, change-password") })),
            )
                .into_response())
        }
    }
    .map_err(Failure)?;
    ok(StatusCode::OK, json!({ "loginName": login }))
}

//! Authentication: one gate in front of gRPC and HTTP alike (ADR 31).
//!
//! [`gate`] runs before a request is dispatched: it asks the configured
//! [`Authenticator`] who the request comes from (`authorization: Basic …`,
//! an HTTP header or gRPC metadata, the same thing on the wire) and
//! attaches the [`Principal`] to the request's extensions, where handlers
//! find it ([`principal`]). Credentials that do not check out end the
//! request there, as KurrentDB answers them: gRPC UNAUTHENTICATED
//! ("Unauthenticated"), HTTP 401 with `WWW-Authenticate: X-Basic
//! realm="ESDB"`. No credentials at all is the anonymous principal; when
//! the authenticator requires users (secure mode) an anonymous request is
//! refused unless it asks for one of the few endpoints clients call before
//! they authenticate — `ServerFeatures`, `Gossip`, `/health` — with gRPC
//! PERMISSION_DENIED and `exception: access-denied` (KurrentDB's
//! AccessDenied, which is what it answers the anonymous user), HTTP 401.
//!
//! Insecure mode ([`Insecure`]) accepts any or no credentials: every
//! request is anonymous and nothing is refused.
//!
//! With a JWKS file configured, [`WithBearer`] answers requests that carry
//! `authorization: Bearer <JWT>` (ADR 34) and leaves the others to the
//! users; a refused token is answered like refused credentials.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode};

use crate::metrics::Metrics;

/// The groups whose members pass every access check.
pub const ADMINS: &str = "$admins";
/// The group of operators: consumer groups, metrics.
pub const OPS: &str = "$ops";

/// An authenticated user: login name and groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The login name (every user also has the role of its own name).
    pub login: String,
    /// The groups (roles) it belongs to, `$admins` and `$ops` included.
    pub groups: Arc<[String]>,
}

impl Identity {
    /// True when the user is `role` or belongs to it.
    pub fn has_role(&self, role: &str) -> bool {
        self.login == role || self.groups.iter().any(|g| g == role)
    }

    /// A member of `$admins`.
    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == ADMINS)
    }

    /// A member of `$ops` or `$admins`.
    pub fn is_ops(&self) -> bool {
        self.is_admin() || self.groups.iter().any(|g| g == OPS)
    }
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// No credentials (or insecure mode, where none are checked).
    Anonymous,
    /// An authenticated user.
    User(Identity),
}

/// The connection a request came on (the accept loop attaches it).
#[derive(Clone, Debug)]
pub struct Connection {
    /// The peer's address.
    pub peer: std::net::SocketAddr,
    /// The subject CN of the client certificate it presented (verified
    /// against `--tls-ca`), if any.
    pub certificate_login: Option<String>,
}

/// Why a request was refused: credentials that do not check out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused(pub String);

/// What [`Authenticator::authenticate`] returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Principal, Refused>> + Send + 'a>>;

/// Decides who a request comes from, from its headers (gRPC metadata and
/// HTTP headers alike: `authorization: Basic …`).
pub trait Authenticator: Send + Sync + 'static {
    /// The principal, or why the credentials are refused. No credentials
    /// is [`Principal::Anonymous`], not a refusal.
    fn authenticate<'a>(&'a self, headers: &'a HeaderMap) -> AuthFuture<'a>;

    /// The user a verified client certificate names (its subject CN), for
    /// requests without credentials; anonymous by default.
    fn certificate<'a>(&'a self, _login: &'a str) -> AuthFuture<'a> {
        Box::pin(std::future::ready(Ok(Principal::Anonymous)))
    }

    /// True when anonymous requests are refused (but for the endpoints
    /// clients call before authenticating).
    fn required(&self) -> bool {
        false
    }
}

/// Insecure mode: every request is accepted, credentials or not.
#[derive(Clone, Copy, Debug, Default)]
pub struct Insecure;

impl Authenticator for Insecure {
    fn authenticate<'a>(&'a self, _headers: &'a HeaderMap) -> AuthFuture<'a> {
        Box::pin(std::future::ready(Ok(Principal::Anonymous)))
    }
}

/// The `login` and `password` of an `authorization: Basic …` header;
/// `Ok(None)` without one; an error for one that is malformed or another
/// scheme.
pub fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, Refused> {
    use base64::Engine as _;
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || Refused("malformed authorization header: expected Basic credentials".into());
    let value = value.to_str().map_err(|_| bad())?.trim();
    let (scheme, token) = value.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Refused(format!(
            "authorization scheme {scheme:?} is not supported: use Basic"
        )));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (login, password) = text.split_once(':').ok_or_else(bad)?;
    Ok(Some((login.to_owned(), password.to_owned())))
}

/// The token of an `authorization: Bearer …` header, if that is what the
/// request carries.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Bearer tokens (JWT, `bearer.rs`, ADR 34) in front of another
/// authenticator, which answers every request that carries no token.
pub struct WithBearer {
    /// Checks the tokens.
    pub bearer: Arc<crate::bearer::Bearer>,
    /// Everything else: Basic credentials, client certificates.
    pub inner: Arc<dyn Authenticator>,
}

impl Authenticator for WithBearer {
    fn authenticate<'a>(&'a self, headers: &'a HeaderMap) -> AuthFuture<'a> {
        match bearer_token(headers) {
            Some(token) => Box::pin(std::future::ready(
                self.bearer.verify(token).map(Principal::User),
            )),
            None => self.inner.authenticate(headers),
        }
    }

    fn certificate<'a>(&'a self, login: &'a str) -> AuthFuture<'a> {
        self.inner.certificate(login)
    }

    fn required(&self) -> bool {
        self.inner.required()
    }
}

/// The principal the gate attached to a request (anonymous when the
/// request did not pass through it: a service used on its own).
pub fn principal(extensions: &axum::http::Extensions) -> Principal {
    extensions
        .get::<Principal>()
        .cloned()
        .unwrap_or(Principal::Anonymous)
}

tokio::task_local! {
    /// The principal of the request a task works for (set around each
    /// request by `app()`'s dispatch; [`inherit`] carries it into tasks a
    /// handler spawns).
    static PRINCIPAL: Principal;
}

/// The principal of the request this task works for; anonymous outside
/// any request (so a forgotten [`inherit`] fails closed in secure mode).
pub fn current() -> Principal {
    PRINCIPAL
        .try_with(Principal::clone)
        .unwrap_or(Principal::Anonymous)
}

/// Runs `f` as `principal`'s.
pub async fn scope<F: Future>(principal: Principal, f: F) -> F::Output {
    PRINCIPAL.scope(principal, f).await
}

/// `f`, run for the current request's principal: for tasks a handler spawns.
pub fn inherit<F: Future>(f: F) -> impl Future<Output = F::Output> {
    PRINCIPAL.scope(current(), f)
}

/// Requests only `$ops` and `$admins` may make (ADR 31): managing consumer
/// groups and projections (ADR 35), `/metrics`, the admin endpoints
/// (`/admin/…`: backups, scavenges) and the Operations service (ADR 33).
fn ops_only(path: &str) -> bool {
    if crate::http_projections::manages(path) {
        return true;
    }
    const GROUPS: &str = "/event_store.client.persistent_subscriptions.PersistentSubscriptions/";
    match path.strip_prefix(GROUPS) {
        Some(method) => matches!(
            method,
            "Create" | "Update" | "Delete" | "ReplayParked" | "RestartSubsystem"
        ),
        None => {
            path == "/metrics"
                || path.starts_with("/admin/")
                || path.starts_with("/event_store.client.operations.Operations/")
        }
    }
}

/// Requests only `$admins` may make: forgetting a data subject (ADR 36).
fn admins_only(path: &str) -> bool {
    path.starts_with(crate::subjects::HTTP_PREFIX) || path.starts_with(crate::subjects::GRPC_PREFIX)
}

/// Requests the anonymous user may make when users are required: what
/// clients call before they authenticate (as KurrentDB).
fn open_to_anonymous(path: &str) -> bool {
    path.starts_with("/event_store.client.server_features.ServerFeatures/")
        || path.starts_with("/event_store.client.gossip.Gossip/")
        || path == "/health"
}

/// Authenticates `req` and attaches its principal, or answers it.
pub(crate) async fn gate(
    authenticator: &dyn Authenticator,
    metrics: &Metrics,
    failures: &Failures,
    mut req: Request<Body>,
    is_grpc: bool,
    metrics_anonymous: bool,
) -> Result<Request<Body>, Response<Body>> {
    // Scrapers without credentials, when the operator says so.
    let anonymous_metrics = metrics_anonymous && !is_grpc && req.uri().path() == "/metrics";
    let connection = req.extensions().get::<Connection>().cloned();
    let mut principal = match authenticator.authenticate(req.headers()).await {
        Ok(p) => p,
        Err(Refused(why)) => {
            metrics.failed_login();
            let peer = connection.as_ref().map(|c| c.peer);
            tracing::warn!(path = %req.uri().path(), ?peer, "authentication failed: {why}");
            if let Some(peer) = peer {
                // Slow down whoever keeps guessing (per address).
                tokio::time::sleep(failures.delay_after_failure(peer.ip())).await;
            }
            return Err(unauthenticated(is_grpc, &why));
        }
    };
    // No credentials: a client certificate may name the user.
    let login = connection
        .as_ref()
        .and_then(|c| c.certificate_login.as_deref());
    if let (Principal::Anonymous, Some(login)) = (&principal, login) {
        principal = match authenticator.certificate(login).await {
            Ok(p) => p,
            Err(Refused(why)) => {
                metrics.failed_login();
                let peer = connection.as_ref().map(|c| c.peer);
                tracing::warn!(path = %req.uri().path(), ?peer, "client certificate refused: {why}");
                if let Some(peer) = peer {
                    // Slowed like refused passwords (per address).
                    tokio::time::sleep(failures.delay_after_failure(peer.ip())).await;
                }
                return Err(unauthenticated(is_grpc, &why));
            }
        };
    }
    if principal == Principal::Anonymous
        && authenticator.required()
        && !open_to_anonymous(req.uri().path())
        && !anonymous_metrics
    {
        return Err(if is_grpc {
            access_denied_grpc()
        } else {
            unauthenticated(false, "credentials required")
        });
    }
    if authenticator.required() && ops_only(req.uri().path()) && !anonymous_metrics {
        let ops = matches!(&principal, Principal::User(u) if u.is_ops());
        if !ops {
            return Err(if is_grpc {
                access_denied_grpc()
            } else {
                let body = serde_json::json!({ "error": "access-denied", "message": "$ops or $admins only" });
                let mut resp = Response::new(Body::from(body.to_string()));
                *resp.status_mut() = StatusCode::FORBIDDEN;
                resp.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/json"));
                resp
            });
        }
    }
    if authenticator.required()
        && admins_only(req.uri().path())
        && !matches!(&principal, Principal::User(u) if u.is_admin())
    {
        return Err(if is_grpc {
            access_denied_grpc()
        } else {
            forbidden("$admins only")
        });
    }
    req.extensions_mut().insert(principal);
    Ok(req)
}

/// HTTP 403 with the documented JSON error.
fn forbidden(message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": "access-denied", "message": message });
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = StatusCode::FORBIDDEN;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp
}

/// Recent failed logins per client address: after a few, each further
/// failure is answered later (up to [`MAX_FAILURE_DELAY`]), so guessing
/// passwords is slow while one mistyped password costs nothing.
#[derive(Default)]
pub struct Failures(
    std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
);

/// Failures from one address before answers slow down.
const FREE_FAILURES: u32 = 3;
/// The longest a refusal is held back.
const MAX_FAILURE_DELAY: std::time::Duration = std::time::Duration::from_secs(2);
/// Failures older than this are forgotten.
const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

impl Failures {
    fn delay_after_failure(&self, ip: std::net::IpAddr) -> std::time::Duration {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= 100_000 {
            map.clear();
        }
        let now = std::time::Instant::now();
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) > FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let over = entry.0.saturating_sub(FREE_FAILURES);
        (std::time::Duration::from_millis(250) * over).min(MAX_FAILURE_DELAY)
    }
}

/// KurrentDB's answer to credentials that do not check out.
fn unauthenticated(is_grpc: bool, why: &str) -> Response<Body> {
    if is_grpc {
        return tonic::Status::unauthenticated("Unauthenticated").into_http();
    }
    let body = serde_json::json!({ "error": "unauthenticated", "message": why }).to_string();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    let h = resp.headers_mut();
    // "X-" as KurrentDB: browsers do not pop up a login dialog.
    h.insert(
        "www-authenticate",
        HeaderValue::from_static("X-Basic realm=\"ESDB\""),
    );
    h.insert("content-type", HeaderValue::from_static("application/json"));
    resp
}

/// KurrentDB's AccessDenied as a gRPC answer.
pub fn access_denied() -> tonic::Status {
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert(
        "exception",
        tonic::metadata::MetadataValue::from_static("access-denied"),
    );
    tonic::Status::with_metadata(tonic::Code::PermissionDenied, "Access Denied", md)
}

fn access_denied_grpc() -> Response<Body> {
    access_denied().into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn basic_credentials_are_parsed_and_bad_ones_refused() {
        // admin:changeit
        assert_eq!(
            basic_credentials(&headers("Basic YWRtaW46Y2hhbmdlaXQ=")).unwrap(),
            Some(("admin".into(), "changeit".into()))
        );
        // a password with a colon: only the first one separates.
        assert_eq!(
            basic_credentials(&headers("basic dTpwOnE=")).unwrap(),
            Some(("u".into(), "p:q".into()))
        );
        assert_eq!(basic_credentials(&HeaderMap::new()).unwrap(), None);
        for bad in ["Basic", "Basic !!!", "Bearer abc", "Basic bm9jb2xvbg=="] {
            assert!(basic_credentials(&headers(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles() {
        let admin = Identity {
            login: "admin".into(),
            groups: vec![ADMINS.to_owned()].into(),
        };
        assert!(admin.is_admin() && admin.is_ops() && admin.has_role("admin"));
        let ops = Identity {
            login: "ops".into(),
            groups: vec![OPS.to_owned()].into(),
        };
        assert!(!ops.is_admin() && ops.is_ops() && !ops.has_role(ADMINS));
    }
}

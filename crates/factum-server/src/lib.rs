//! # factum-server
//!
//! Factum's network front end over any [`EventStore`]: the KurrentDB gRPC
//! protocol (so KurrentDB's official clients work unchanged) and an
//! HTTP/JSON API, both on one port. Requests whose content type is
//! `application/grpc…` go to the gRPC services; everything else to the HTTP
//! routes.
//!
//! | module | what |
//! |---|---|
//! | `grpc` | `Streams`, `ServerFeatures`, `Gossip`; other KurrentDB services answer UNIMPLEMENTED |
//! | `operations` | KurrentDB's `Operations` service, the `/admin/scavenge` routes, `$scavenges` streams, the scavenge schedule (ADR 33) |
//! | `grpc_read` | `Streams.Read`: reads and subscriptions, filters, checkpoints, links |
//! | `grpc_persistent` | `PersistentSubscriptions`: consumer groups (`factum_persistent`) on the wire |
//! | `grpc_projections` / `http_projections` | `Projections` and KurrentDB's `/projections` routes over `factum_projections` (ADR 35) |
//! | `grpc_write` | `Append`, `BatchAppend`, `Delete`, `Tombstone`; metadata via `$$<stream>` |
//! | `convert` / `errors` | wire ⇄ model; errors as statuses with KurrentDB's `exception` metadata |
//! | `http` / `openapi` | the HTTP/JSON routes and their OpenAPI document |
//! | `metrics` | Prometheus counters and latency histograms |
//! | `budget` | one budget of in-flight append bytes across all clients |
//! | `auth` | the authentication gate in front of gRPC and HTTP: Basic credentials, the anonymous endpoints (insecure mode accepts anything) |
//! | `bearer` | bearer tokens: JWT checked against a JWKS file (reloaded when it changes), claims → user and groups |
//! | `users` / `grpc_users` / `http_users` | users in `$user-<login>` streams, argon2id, the verified-credential cache; KurrentDB's `Users` service |
//! | `client_store` | the store as handlers reach it: clients' writes to streams Factum manages are refused there, once; stream ACLs checked there (secure mode) |
//! | `acl` | KurrentDB's stream ACLs: `$acl`, `$settings` defaults, built-ins; cached |
//! | `listener` | the accept loop: connection limits, HTTP/2 settings and keep-alive, timeouts |
//! | `subjects` | crypto-shredding's `forget` over HTTP and gRPC (`$admins` only; ADR 36) |
//! | `tls` | TLS on the one port: rustls, ALPN, certificates reloaded when their files change |
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::sync::Arc;
//! let (store, _) = factum_engine::Engine::open_with("./data", Default::default()).unwrap();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:2113").await?;
//! let config = factum_server::ServerConfig::new(listener.local_addr()?);
//! factum_server::serve(listener, Arc::new(store), config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acl;
mod advertise;
mod append_wire;
pub mod auth;
pub mod bearer;
pub mod budget;
mod client_store;
mod context;
pub mod convert;
pub mod errors;
pub mod filter;
pub mod grpc;
mod grpc_call;
mod grpc_persistent;
mod grpc_projections;
mod grpc_read;
mod grpc_users;
pub mod grpc_v2;
mod grpc_write;
pub mod http;
mod http_headers;
mod http_multi;
mod http_projections;
mod http_users;
mod listener;
pub mod metrics;
pub mod openapi;
pub mod operations;
mod read_wire;
mod subjects;
pub mod tls;
pub mod users;

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header::CONTENT_TYPE, HeaderValue, Request, Response};
use axum::Router;
use factum_core::EventStore;
use factum_proto::gossip::gossip_server::GossipServer;
use factum_proto::persistent::persistent_subscriptions_server::PersistentSubscriptionsServer;
use factum_proto::projections::projections_server::ProjectionsServer;
use factum_proto::server_features::server_features_server::ServerFeaturesServer;
use factum_proto::streams::streams_server::StreamsServer;
use factum_proto::users::users_server::UsersServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

pub use advertise::{Advertise, AdvertiseError};
pub use client_store::ClientStore;
pub use context::{BackupHook, Ctx, ForgetHook, Forgotten, ServerConfig, SizeProbe, UsersConfig};
pub use listener::ConnectionLimits;
pub use operations::{ScavengeInfo, ScavengeRequest, ScavengeStart, Scavenger, Schedule};

/// Largest consumer-group request (an ack of many ids is the largest).
const PERSISTENT_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Builds the single service that answers both gRPC and HTTP, and the
/// shared context (whose `shutdown` flips when `shutdown_tx` sends `true`).
pub fn app<S: EventStore>(
    store: Arc<S>,
    config: ServerConfig,
) -> (Router, Arc<Ctx<S>>, watch::Sender<bool>) {
    let (shutdown_tx, shutdown) = watch::channel(false);
    let max = config.max_message_bytes();
    // Consumer-group requests carry settings and event ids, never events.
    let max_persistent_request = max.min(PERSISTENT_REQUEST_BYTES);
    let persistent = factum_persistent::PersistentSubscriptions::new(store.clone());
    let append_budget = budget::AppendBudget::new(
        config.max_inflight_append_bytes,
        config.max_append_message_bytes() as u64,
        config.append_budget_wait,
    );
    let users = config
        .users
        .as_ref()
        .map(|_| Arc::new(users::Users::new(store.clone())));
    let authenticator: Arc<dyn auth::Authenticator> = match &users {
        Some(users) => users.clone(),
        None => config.authenticator.clone(),
    };
    let authenticator: Arc<dyn auth::Authenticator> = match &config.bearer {
        Some(bearer) => Arc::new(auth::WithBearer {
            bearer: bearer.clone(),
            inner: authenticator,
        }),
        None => authenticator,
    };
    // One ACL cache for clients and projections: a write through this node
    // to `$$x` or `$settings` reaches both at once.
    let acls = users
        .as_ref()
        .map(|_| Arc::new(acl::Acls::new(store.clone())));
    // A projection runs as the user who created it (ADR 39).
    let projections = factum_projections::Projections::with_access(
        store.clone(),
        Default::default(),
        Default::default(),
        acls.clone()
            .map(|a| a as Arc<dyn factum_projections::Access>),
    );
    let client_store = match acls {
        Some(acls) => client_store::ClientStore::with_acls(store.clone(), acls),
        None => client_store::ClientStore::new(store),
    };
    let ctx = Arc::new(Ctx {
        store: client_store,
        persistent,
        projections,
        append_budget,
        config,
        metrics: Default::default(),
        shutdown,
        users,
        authenticator,
        login_failures: Default::default(),
        shutdown_requested: Default::default(),
    });
    let api = grpc::GrpcApi::new(ctx.clone());
    let streams = StreamsServer::new(api.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let read_route = grpc_read::ReadRoute::new(ctx.clone());
    let grpc = tonic::service::Routes::new(streams.clone())
        .add_service(ServerFeaturesServer::new(api.clone()))
        .add_service(GossipServer::new(api.clone()))
        .add_service(
            factum_proto::v2_streams::streams_service_server::StreamsServiceServer::new(
                api.clone(),
            )
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .add_service(ProjectionsServer::new(
            grpc_projections::ProjectionsApi::new(ctx.projections.clone()),
        ))
        .add_service(
            PersistentSubscriptionsServer::new(api.clone())
                .max_decoding_message_size(max_persistent_request)
                .max_encoding_message_size(max),
        )
        .add_service(
            factum_proto::operations::operations_server::OperationsServer::new(api.clone()),
        );
    let grpc = match &ctx.users {
        Some(users) => grpc.add_service(UsersServer::new(grpc_users::UsersApi::new(users.clone()))),
        None => grpc,
    };
    let grpc = grpc.add_service(
        factum_proto::subjects::subjects_server::SubjectsServer::new(subjects::SubjectsApi::new(
            ctx.clone(),
        )),
    );
    let grpc = grpc
        .prepare()
        .into_axum_router()
        .route_service(read_wire::READ_PATH, read_route.clone());
    let http = match &ctx.users {
        Some(users) => http::router(ctx.clone()).merge(http_users::router(users.clone())),
        None => http::router(ctx.clone()),
    };
    let http = http
        .merge(subjects::router(ctx.clone()))
        .merge(http_projections::router(ctx.clone()));
    let gate_ctx = ctx.clone();
    let dispatch = tower::service_fn(move |req: Request<Body>| {
        let is_grpc = req
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let (grpc, http, ctx) = (grpc.clone(), http.clone(), gate_ctx.clone());
        let (streams, read_route, api) = (streams.clone(), read_route.clone(), api.clone());
        async move {
            // One authentication gate in front of both (ADR 31).
            let req = match auth::gate(
                &*ctx.authenticator,
                &ctx.metrics,
                &ctx.login_failures,
                req,
                is_grpc,
                ctx.config.metrics_anonymous,
            )
            .await
            {
                Ok(req) => req,
                Err(refused) => return Ok(refused),
            };
            let principal = auth::principal(req.extensions());
            // Stream ACLs are checked in the client store for this principal.
            // `Streams` calls (nearly every call) go straight to their
            // service: the router's path matching, its wildcard parameters
            // and its boxed futures cost a measurable share of an `Append`
            // (ADR 41); the router answers everything else.
            let path = req.uri().path();
            let mut resp = if !is_grpc {
                auth::scope(principal, http.oneshot(req)).await?
            } else if path == read_wire::READ_PATH {
                auth::scope(principal, read_route.oneshot(req)).await?
            } else if path == grpc::APPEND_PATH {
                auth::scope(principal, grpc::append_route(api, req, max))
                    .await
                    .map(Body::new)
            } else if path == grpc::BATCH_APPEND_PATH {
                auth::scope(principal, grpc::batch_append_route(api, req, max))
                    .await
                    .map(Body::new)
            } else if path
                .strip_prefix('/')
                .and_then(|p| p.strip_prefix(factum_proto::service_names::STREAMS))
                .is_some_and(|method| method.starts_with('/'))
            {
                auth::scope(principal, streams.oneshot(req))
                    .await?
                    .map(Body::new)
            } else {
                auth::scope(principal, grpc.oneshot(req)).await?
            };
            if is_grpc {
                oversized_is_resource_exhausted(&mut resp);
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    (Router::new().fallback_service(dispatch), ctx, shutdown_tx)
}

/// tonic refuses an over-long message before our handlers run, with
/// OUT_OF_RANGE in a trailers-only response; gRPC's convention for "message
/// larger than the limit" is RESOURCE_EXHAUSTED.
fn oversized_is_resource_exhausted(resp: &mut Response<Body>) {
    let h = resp.headers();
    let oversized = h.get("grpc-status").is_some_and(|s| s == "11")
        && h.get("grpc-message").is_some_and(|m| {
            m.to_str()
                .unwrap_or("")
                .contains("message%20length%20too%20large")
                || m.to_str()
                    .unwrap_or("")
                    .contains("message length too large")
        });
    if oversized {
        resp.headers_mut()
            .insert("grpc-status", HeaderValue::from_static("8"));
    }
}

/// Serves `store` on `listener` until `shutdown` completes; then stops
/// accepting, ends subscriptions with UNAVAILABLE, lets in-flight requests
/// (appends included) finish, and returns. The caller closes the store.
pub async fn serve<S: EventStore>(
    listener: TcpListener,
    store: Arc<S>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (router, ctx, shutdown_tx) = app(store, config);
    // Start the stored consumer groups now, so a broken configuration shows
    // at startup rather than at the first client's call.
    if let Err(e) = ctx.persistent.restart().await {
        tracing::error!("persistent subscriptions did not start: {e}");
    }
    if let Err(e) = ctx.projections.start().await {
        tracing::error!("projections did not start: {e}");
    }
    if let (Some(users), Some(initial)) = (&ctx.users, &ctx.config.users) {
        users
            .ensure_defaults(initial.admin_password.clone(), initial.ops_password.clone())
            .await
            .map_err(|e| std::io::Error::other(format!("cannot create the default users: {e}")))?;
    }
    if let Some(schedule) = ctx.config.scavenge_schedule {
        tokio::spawn(operations::run_schedule(ctx.clone(), schedule));
    }
    let limits = ctx.config.connections.clone();
    let tls = ctx.config.tls.clone();
    let requested = ctx.shutdown_requested.clone();
    let served = listener::run(listener, router, limits, tls, async move {
        tokio::select! {
            _ = shutdown => {}
            _ = requested.notified() => {}
        }
        tracing::info!("shutting down: draining requests, ending subscriptions");
        let _ = shutdown_tx.send(true);
    })
    .await;
    // Groups write their checkpoints before the caller closes the store.
    ctx.persistent.shutdown().await;
    ctx.projections.shutdown().await;
    served
}

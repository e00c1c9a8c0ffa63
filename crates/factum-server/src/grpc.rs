//! The gRPC services: `Streams`, `ServerFeatures`, `Gossip` (and
//! `PersistentSubscriptions`, in `grpc_persistent`). Every other
//! KurrentDB service path answers UNIMPLEMENTED (tonic's router does that for
//! unknown paths) until its issue lands.

use std::sync::Arc;

use factum_core::{EventStore, Uuid};
use factum_proto::gossip::{self, gossip_server::Gossip, ClusterInfo, MemberInfo};
use factum_proto::server_features::{
    server_features_server::ServerFeatures, SupportedMethod, SupportedMethods,
};
use factum_proto::shared;
use factum_proto::streams::streams_server::Streams;
use factum_proto::streams::{
    AppendReq, AppendResp, BatchAppendReq, BatchAppendResp, DeleteReq, DeleteResp, ReadReq,
    ReadResp, TombstoneReq, TombstoneResp,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::append_wire::{decode_append, decode_batch, AppendMsg, BatchMsg, HandCodec};
use crate::context::Ctx;
use crate::convert::{self, UuidFormat};
use crate::grpc_call::{self, channel_stream, grpc_timeout, CHANNEL};
use crate::{grpc_read, grpc_write};

pub use crate::grpc_call::ResponseStream;

/// The gRPC front end over a store.
pub struct GrpcApi<S> {
    ctx: Arc<Ctx<S>>,
    instance_id: Uuid,
}

impl<S> Clone for GrpcApi<S> {
    fn clone(&self) -> Self {
        GrpcApi {
            ctx: self.ctx.clone(),
            instance_id: self.instance_id,
        }
    }
}

impl<S: EventStore> GrpcApi<S> {
    /// Serves `ctx`'s store.
    pub fn new(ctx: Arc<Ctx<S>>) -> Self {
        GrpcApi {
            ctx,
            instance_id: Uuid::new_v4(),
        }
    }

    /// The shared context.
    pub(crate) fn ctx(&self) -> &Arc<Ctx<S>> {
        &self.ctx
    }

    pub(crate) fn authenticate<T>(&self, req: &Request<T>) -> Result<(), Status> {
        grpc_call::authenticate(&self.ctx, req)
    }
}

#[tonic::async_trait]
impl<S: EventStore> Streams for GrpcApi<S> {
    type ReadStream = ResponseStream<ReadResp>;

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<Self::ReadStream>, Status> {
        self.authenticate(&request)?;
        // `app()` serves reads through `grpc_read::ReadRoute` (encoded by
        // hand); this path is for the service used on its own.
        let timeout = grpc_timeout(&request);
        let batches = grpc_read::start(self.ctx.clone(), request.into_inner(), timeout);
        Ok(Response::new(grpc_read::decoded(batches)))
    }

    async fn append(
        &self,
        request: Request<Streaming<AppendReq>>,
    ) -> Result<Response<AppendResp>, Status> {
        // `app()` serves appends through `append_route` (requests decoded
        // by hand); this path is for the service used on its own.
        use futures_util::StreamExt;
        self.append_msgs(request.map(|input| input.map(|m| m.map(AppendMsg::from))))
            .await
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        self.authenticate(&request)?;
        grpc_write::delete(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn tombstone(
        &self,
        request: Request<TombstoneReq>,
    ) -> Result<Response<TombstoneResp>, Status> {
        self.authenticate(&request)?;
        grpc_write::tombstone(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    type BatchAppendStream = ResponseStream<BatchAppendResp>;

    async fn batch_append(
        &self,
        request: Request<Streaming<BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        // `app()` serves batch appends through `batch_append_route`
        // (requests decoded by hand); this path is for the service used on
        // its own.
        use futures_util::StreamExt;
        self.start_batch_append(request.map(|input| input.map(|m| m.map(BatchMsg::from))))
    }
}

/// `Streams.BatchAppend`'s path.
pub const BATCH_APPEND_PATH: &str = "/event_store.client.streams.Streams/BatchAppend";
/// `Streams.Append`'s path.
pub const APPEND_PATH: &str = "/event_store.client.streams.Streams/Append";

impl<S: EventStore> GrpcApi<S> {
    /// An append call over `request`'s messages.
    async fn append_msgs<I>(&self, request: Request<I>) -> Result<Response<AppendResp>, Status>
    where
        I: futures_util::Stream<Item = Result<AppendMsg, Status>> + Unpin + Send + 'static,
    {
        self.authenticate(&request)?;
        let timeout = grpc_timeout(&request);
        grpc_write::append(self.ctx.clone(), request.into_inner(), timeout)
            .await
            .map(Response::new)
    }

    /// A batch-append call over `request`'s messages: its appends run on a
    /// task of their own, their answers are the response stream.
    fn start_batch_append<I>(
        &self,
        request: Request<I>,
    ) -> Result<Response<ResponseStream<BatchAppendResp>>, Status>
    where
        I: futures_util::Stream<Item = Result<BatchMsg, Status>> + Unpin + Send + 'static,
    {
        self.authenticate(&request)?;
        let (tx, rx) = mpsc::channel(CHANNEL);
        tokio::spawn(crate::auth::inherit(grpc_write::batch_append(
            self.ctx.clone(),
            request.into_inner(),
            tx,
        )));
        Ok(Response::new(channel_stream(rx)))
    }
}

/// `Streams.BatchAppend` as `app()` serves it (ADR 51): tonic's streaming
/// call, as the generated service makes it (message limit `max` both
/// ways, no compression), with requests decoded by `append_wire` instead of
/// prost's generated `BatchAppendReq`.
pub async fn batch_append_route<S: EventStore, B>(
    api: GrpcApi<S>,
    req: axum::http::Request<B>,
    max: usize,
) -> axum::http::Response<tonic::body::Body>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let service = tower::service_fn(move |request: Request<Streaming<BatchMsg>>| {
        let started = api.start_batch_append(request);
        std::future::ready(started)
    });
    HandCodec::<BatchAppendResp, _>::grpc(decode_batch, max)
        .streaming(service, req)
        .await
}

/// `Streams.Append` as `app()` serves it (ADR 51): tonic's client-streaming
/// call, as the generated service makes it, with requests decoded by
/// `append_wire`.
pub async fn append_route<S: EventStore, B>(
    api: GrpcApi<S>,
    req: axum::http::Request<B>,
    max: usize,
) -> axum::http::Response<tonic::body::Body>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let service = tower::service_fn(move |request: Request<Streaming<AppendMsg>>| {
        let api = api.clone();
        async move { api.append_msgs(request).await }
    });
    HandCodec::<AppendResp, _>::grpc(decode_append, max)
        .client_streaming(service, req)
        .await
}

/// Exactly the methods this server implements: (service, methods).
pub const IMPLEMENTED: [(&str, &[&str]); 6] = [
    (
        factum_proto::service_names::STREAMS,
        &["read", "append", "delete", "tombstone", "batchappend"],
    ),
    (
        factum_proto::service_names::SERVER_FEATURES,
        &["getsupportedmethods"],
    ),
    (factum_proto::service_names::GOSSIP, &["read"]),
    // Multi-stream appends (ADR 29): the Node SDK uses them only when listed.
    (crate::grpc_v2::SERVICE, &["appendsession", "appendrecords"]),
    (
        factum_proto::service_names::PERSISTENT_SUBSCRIPTIONS,
        &[
            "create",
            "update",
            "delete",
            "read",
            "getinfo",
            "replayparked",
            "list",
            "restartsubsystem",
        ],
    ),
    (
        factum_proto::service_names::PROJECTIONS,
        &[
            "create",
            "update",
            "delete",
            "statistics",
            "disable",
            "enable",
            "reset",
            "state",
            "result",
            "restartsubsystem",
        ],
    ),
];

/// Features a method announces: persistent subscriptions work on streams
/// and on `$all` (clients check `stream`/`all` before using a method and
/// fall back to KurrentDB's HTTP API without them).
fn features_of(service: &str, method: &str) -> Vec<String> {
    let on_both = [
        "create",
        "update",
        "delete",
        "read",
        "getinfo",
        "replayparked",
        "list",
    ];
    if service == factum_proto::service_names::PERSISTENT_SUBSCRIPTIONS && on_both.contains(&method)
    {
        vec!["stream".to_owned(), "all".to_owned()]
    } else {
        Vec::new()
    }
}

#[tonic::async_trait]
impl<S: EventStore> ServerFeatures for GrpcApi<S> {
    async fn get_supported_methods(
        &self,
        request: Request<shared::Empty>,
    ) -> Result<Response<SupportedMethods>, Status> {
        self.authenticate(&request)?;
        // Operations (ADR 33): what works on a single node; the scavenge
        // methods only when the backend can scavenge.
        let mut operations = vec!["shutdown", "restartpersistentsubscriptions"];
        if self.ctx.config.scavenge.is_some() {
            operations.extend(["startscavenge", "stopscavenge", "mergeindexes"]);
        }
        let operations: &[&str] = &operations;
        let methods = IMPLEMENTED
            .iter()
            .copied()
            .chain([(factum_proto::service_names::OPERATIONS, operations)])
            .flat_map(|(service, methods)| {
                methods.iter().map(move |m| SupportedMethod {
                    method_name: (*m).to_owned(),
                    service_name: service.to_lowercase(),
                    features: features_of(service, m),
                })
            })
            .collect();
        Ok(Response::new(SupportedMethods {
            methods,
            event_store_server_version: self.ctx.config.version.clone(),
        }))
    }
}

#[tonic::async_trait]
impl<S: EventStore> Gossip for GrpcApi<S> {
    async fn read(&self, request: Request<shared::Empty>) -> Result<Response<ClusterInfo>, Status> {
        self.authenticate(&request)?;
        let addr = &self.ctx.config.advertise;
        // One node, always the leader; alive unless shutting down.
        let state = if self.ctx.shutting_down() {
            gossip::member_info::VNodeState::ShuttingDown
        } else {
            gossip::member_info::VNodeState::Leader
        };
        let ticks = factum_proto::ticks::from_timestamp(factum_core::Timestamp::now());
        Ok(Response::new(ClusterInfo {
            members: vec![MemberInfo {
                instance_id: Some(convert::uuid_to_wire(self.instance_id, UuidFormat::String)),
                time_stamp: ticks,
                state: state as i32,
                is_alive: !self.ctx.shutting_down(),
                http_end_point: Some(gossip::EndPoint {
                    address: addr.host().to_owned(),
                    port: u32::from(addr.port()),
                }),
            }],
        }))
    }
}

//! What every gRPC call shares, whichever service answers it: the boxed
//! response stream and the channel behind it, the call's deadline
//! (`grpc-timeout`) and the authentication seam. A module of its own so
//! that the services (`grpc`, `grpc_read` and its hand-encoded route,
//! `grpc_write`, `grpc_persistent`) depend on it rather than on each other.

use std::pin::Pin;

use futures_util::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Status};

use crate::context::Ctx;
use crate::convert;

/// A boxed stream of responses.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Buffered responses per call: enough to keep the socket busy, small
/// enough that a slow reader holds little memory.
pub(crate) const CHANNEL: usize = 256;

/// The responses sent into `rx`'s channel, as a response stream.
pub(crate) fn channel_stream<T: Send + 'static>(
    rx: mpsc::Receiver<Result<T, Status>>,
) -> ResponseStream<T> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// The call's `grpc-timeout`, if it has one.
pub(crate) fn grpc_timeout<T>(request: &Request<T>) -> Option<std::time::Duration> {
    convert::grpc_timeout(
        request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok()),
    )
}

/// Authentication happens once, in the gate in front of every service
/// (`auth::gate`, ADR 31); the principal is in the request's extensions.
pub(crate) fn authenticate<S, T>(_ctx: &Ctx<S>, _req: &Request<T>) -> Result<(), Status> {
    Ok(())
}

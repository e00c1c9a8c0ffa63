//! The accept loop: the one place where connections are taken, limited,
//! kept alive and closed (ADR 19).
//!
//! Each accepted TCP connection (TCP_NODELAY: gRPC exchanges small frames)
//! is served by hyper's auto builder, HTTP/1.1 or HTTP/2 by its preface.
//! At most `max_connections` are open at once: beyond that the loop stops
//! accepting, so new connections wait in the kernel's backlog (and time out
//! there by their own connect timeout) until one closes. HTTP/2 connections
//! allow `max_concurrent_streams` streams and are pinged every
//! `keepalive_interval`; a peer that does not answer within
//! `keepalive_timeout` is dropped, and with it its calls (subscriptions,
//! consumer-group connections). HTTP/1 requests must send their headers
//! within `header_read_timeout` (which also closes idle keep-alive
//! connections). A connection with no request in flight for `idle_timeout`
//! is closed gracefully (GOAWAY for HTTP/2; clients reconnect).
//!
//! At shutdown the loop stops accepting, every connection is told to finish
//! gracefully (in-flight requests complete, no new ones start), and `run`
//! returns when the last one has closed.
//!
//! When the node is secure (ADR 30) the TLS handshake runs in the
//! connection's own task, within `tls_handshake_timeout`, so a slow or
//! silent peer never holds up the loop; hyper then sees the decrypted
//! stream. A failed handshake (wrong CA, a client certificate the CA did
//! not sign, plain HTTP on a TLS port) closes the connection and frees its
//! slot.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::tls::Reloading;

/// Limits on connections; `factum serve` flags set each (README).
/// (10 s for a TLS handshake.)
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once; beyond it new ones wait to be accepted.
    pub max_connections: usize,
    /// Concurrent streams (calls) per HTTP/2 connection; clients queue the rest.
    pub max_concurrent_streams: u32,
    /// How often an HTTP/2 connection is pinged.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
    /// How long an HTTP/1 request may take to send its headers (and how
    /// long an idle HTTP/1 keep-alive connection stays open).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// How long a TLS handshake may take before the connection is closed.
    pub tls_handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// 1,000 connections, 100 streams each (Kestrel's default, so as
    /// KurrentDB), pings every 10 s answered within 10 s (KurrentDB's
    /// keep-alive defaults), 30 s for HTTP/1 headers, 5 minutes idle.
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1000,
            max_concurrent_streams: 100,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// What a connection is doing: requests in flight and when the last ended.
struct Activity {
    in_flight: AtomicUsize,
    last_active: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_active: Mutex::new(Instant::now()),
        }
    }

    fn last_active(&self) -> Instant {
        *self.last_active.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        *self.last_active.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

/// One request in flight on a connection, until its response body is
/// dropped (a subscription stays in flight as long as it streams).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`
/// completes; then closes every connection gracefully and returns when the
/// last one has.
pub(crate) async fn run(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<Reloading>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    let builder = Arc::new(builder);
    let max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max_connections));
    let (closing_tx, closing) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            _ = &mut shutdown => break,
        };
        // The semaphore is never closed.
        let Ok(slot) = slot else { break };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // Out of file descriptors and the like: wait for
                        // some to be released instead of spinning.
                        tracing::warn!("accept failed: {e}; retrying in 1 s");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = &mut shutdown => break,
                        }
                    }
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let (builder, router, closing) = (builder.clone(), router.clone(), closing.clone());
        let idle_timeout = limits.idle_timeout;
        let handshake_timeout = limits.tls_handshake_timeout;
        let tls = tls.clone();
        // The connection's events (hyper's and h2's too) name its peer.
        let span = tracing::debug_span!("connection", %peer);
        let served = async move {
            let _ = tcp.set_nodelay(true);
            let io = CoalescedWrites::new(tcp);
            let mut info = crate::auth::Connection {
                peer,
                certificate_login: None,
            };
            match tls {
                None => serve_connection(&builder, io, router, idle_timeout, closing, info).await,
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(io)).await {
                        Ok(Ok(io)) => {
                            // A client certificate (verified against
                            // --tls-ca) names its user by its subject CN.
                            info.certificate_login = io
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .and_then(|cert| crate::tls::common_name(cert));
                            serve_connection(&builder, io, router, idle_timeout, closing, info)
                                .await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        };
        tokio::spawn(tracing::Instrument::instrument(served, span));
    }
    drop(listener);
    let _ = closing_tx.send(true);
    // Every connection holds a slot until it has closed.
    let _ = slots.acquire_many(max_connections as u32).await;
    Ok(())
}

/// Errors about one connection (the peer reset it before it was accepted):
/// the listener itself is fine.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset
    )
}

/// Serves one connection until it closes: gracefully when `closing` turns
/// true or when it has been idle for `idle_timeout`.
async fn serve_connection<Io>(
    builder: &auto::Builder<TokioExecutor>,
    io: Io,
    router: Router,
    idle_timeout: Duration,
    mut closing: watch::Receiver<bool>,
    info: crate::auth::Connection,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let tracked = activity.clone();
    let service = tower::service_fn(move |mut req: Request<Incoming>| {
        let in_flight = InFlight::new(&tracked);
        // With debug logging on, a call that ends with an error status is
        // logged with its path (what a client reports is often only the
        // code).
        let logged = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| (info.peer, req.uri().path().to_owned()));
        // Who is at the other end, for the authentication gate.
        req.extensions_mut().insert(info.clone());
        let call = router.clone().oneshot(req.map(Body::new));
        async move {
            let resp = call.await?;
            if let Some((peer, path)) = &logged {
                log_error_status(*peer, path, resp.headers());
            }
            // The request stays in flight until its body has been sent.
            Ok::<_, std::convert::Infallible>(resp.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &in_flight;
                    if let (Some((peer, path)), Some(trailers)) = (&logged, frame.trailers_ref()) {
                        log_error_status(*peer, path, trailers);
                    }
                    frame
                }))
            }))
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let mut graceful = false;
    loop {
        let idle_at = activity.last_active() + idle_timeout;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection ended: {}", factum_core::error::with_causes(&*e));
                }
                return;
            }
            _ = closing.wait_for(|c| *c), if !graceful => {
                graceful = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(idle_at), if !graceful => {
                let idle = activity.in_flight.load(Ordering::Relaxed) == 0
                    && activity.last_active() + idle_timeout <= Instant::now();
                if idle {
                    graceful = true;
                    conn.as_mut().graceful_shutdown();
                } else if activity.in_flight.load(Ordering::Relaxed) > 0 {
                    // Busy: look again one idle period from now.
                    activity.touch();
                }
            }
        }
    }
}

/// Logs (debug) a gRPC call's error status, from the answer's headers
/// (an immediate error) or its trailers.
fn log_error_status(peer: std::net::SocketAddr, path: &str, fields: &axum::http::HeaderMap) {
    let Some(code) = fields.get("grpc-status") else {
        return;
    };
    if code.as_bytes() != b"0" {
        let message = fields
            .get("grpc-message")
            .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned());
        tracing::debug!(
            %peer,
            path,
            code = %String::from_utf8_lossy(code.as_bytes()),
            message = message.as_deref().unwrap_or(""),
            "call ended with an error"
        );
    }
}

/// A connection whose writes wait for the calls that are ready to run
/// first, so that their answers leave in one write.
///
/// Each answer of a call (its own task) wakes the connection's task, which
/// the runtime then runs next (its LIFO slot) and which writes and flushes
/// at once: one `writev` (one TCP segment, and on loopback the peer's
/// receive work too) per answer, the largest share of the server's CPU
/// time per `Append` (ADR 22). Here the first write of each flush yields
/// once instead: the connection's task wakes itself and goes to the back of
/// the run queue, the other calls that are ready run and add their frames,
/// and the write that follows carries them all. Nothing waits on a timer
/// (unlike Nagle's algorithm), the bytes and their order are unchanged, and
/// with nothing else to run the write happens on the next poll.
struct CoalescedWrites<T> {
    inner: T,
    /// This flush's write already yielded once.
    yielded: bool,
}

impl<T> CoalescedWrites<T> {
    fn new(inner: T) -> Self {
        CoalescedWrites {
            inner,
            yielded: false,
        }
    }

    /// `Pending` (after waking itself) the first time in a flush.
    fn yield_once(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            Poll::Ready(())
        } else {
            self.yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl AsyncRead for CoalescedWrites<TcpStream> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            quick_ack(&this.inner);
        }
        read
    }
}

/// Acknowledges what was just read at once instead of by the delayed-ACK
/// timer (40 ms on Linux). With writes coalesced, a client that keeps
/// Nagle's algorithm on (KurrentDB's official clients do) would otherwise
/// hold its next request until the timer fired: its first segment carries
/// only a call's headers, the server has no answer to send with the ACK,
/// and the client will not send the call's message before that ACK. The
/// kernel leaves quick-ACK mode on its own, hence once per read (reads
/// carry many calls each).
fn quick_ack(tcp: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(tcp).set_tcp_quickack(true);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = tcp;
}

impl AsyncWrite for CoalescedWrites<TcpStream> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.yield_once(cx));
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.yield_once(cx));
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        if flushed.is_ready() {
            // The next write starts the next flush.
            this.yielded = false;
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

//! State shared by every request: the store, limits, metrics, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::client_store::ClientStore;
use crate::metrics::Metrics;

/// A probe for the store's size on disk (for `/metrics`).
pub type SizeProbe = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// Server settings.
#[derive(Clone)]
pub struct ServerConfig {
    /// Largest append accepted (sum of data + metadata bytes), like
    /// KurrentDB's `MaxAppendSize`. Larger appends answer
    /// `maximum-append-size-exceeded`.
    pub max_append_bytes: u64,
    /// Largest single gRPC message accepted; longer ones answer
    /// RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// The address clients reach this node at (Gossip's answer).
    pub advertise: SocketAddr,
    /// Version reported by ServerFeatures (clients parse "major.minor.patch").
    pub version: String,
    /// Who requests come from.
    pub authenticator: Arc<dyn Authenticator>,
    /// The store's size on disk, when the backend can tell.
    pub size_probe: Option<SizeProbe>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("max_append_bytes", &self.max_append_bytes)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("advertise", &self.advertise)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// Defaults for a node reachable at `advertise`: 64 MiB appends (the
    /// engine's own limit), messages up to that plus 1 MiB of framing, insecure.
    pub fn new(advertise: SocketAddr) -> Self {
        ServerConfig {
            max_append_bytes: 64 * 1024 * 1024,
            max_message_bytes: 65 * 1024 * 1024,
            advertise,
            // Clients compare versions to enable features: speak as a
            // current KurrentDB would.
            version: "24.10.0".to_owned(),
            authenticator: Arc::new(crate::auth::Insecure),
            size_probe: None,
        }
    }
}

/// What every handler sees.
pub struct Ctx<S> {
    /// The store as clients reach it: writes to the streams Factum
    /// manages are refused here (`client_store.rs`); the persistent
    /// subscriptions hold the store itself.
    pub store: ClientStore<S>,
    /// Settings.
    pub config: ServerConfig,
    /// Counters.
    pub metrics: Metrics,
    /// Flips to `true` when the server starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// The store's persistent subscriptions (consumer groups).
    pub persistent: factum_persistent::PersistentSubscriptions<S>,
}

impl<S> Ctx<S> {
    /// True once shutdown began.
    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

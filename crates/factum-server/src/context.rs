//! State shared by every request: the store, limits, metrics, shutdown.

use std::sync::Arc;
use std::time::Duration;

use factum_core::Error;
use tokio::sync::watch;

use crate::advertise::Advertise;
use crate::auth::Authenticator;
use crate::budget::AppendBudget;
use crate::client_store::ClientStore;
use crate::errors::append_size_exceeded;
use crate::listener::ConnectionLimits;
use crate::metrics::Metrics;

/// A probe for the store's size on disk (for `/metrics`).
pub type SizeProbe = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// Takes a backup of the store into a directory on the server's machine
/// (`POST /admin/backup`), when the backend can (the embedded engine):
/// answers the report as JSON.
pub type BackupHook =
    Arc<dyn Fn(std::path::PathBuf) -> factum_core::Result<serde_json::Value> + Send + Sync>;

/// What `forget` did (crypto-shredding, ADR 36).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forgotten {
    /// The subject.
    pub subject: String,
    /// Whether it had a key.
    pub had_key: bool,
    /// The audit event's position in `$all`.
    pub audit_position: u64,
}

/// Forgets a data subject (`POST /subjects/{subject}/forget`, gRPC
/// `factum.subjects.Subjects/Forget`): called with the subject and who
/// asked, when the store was opened with a master key (ADR 36).
pub type ForgetHook = Arc<
    dyn Fn(
            String,
            String,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = factum_core::Result<Forgotten>> + Send>,
        > + Send
        + Sync,
>;

/// Server settings.
#[derive(Clone)]
pub struct ServerConfig {
    /// Largest append accepted (sum of data + metadata bytes), like
    /// KurrentDB's `MaxAppendSize`. Larger appends answer
    /// `maximum-append-size-exceeded`.
    pub max_append_bytes: u64,
    /// Append bytes held in memory at once across all clients (`budget.rs`);
    /// never less than one largest message.
    pub max_inflight_append_bytes: u64,
    /// How long an append waits for room in that budget before it is
    /// refused (gRPC RESOURCE_EXHAUSTED, HTTP 503), unwritten.
    pub append_budget_wait: Duration,
    /// Limits on connections (the accept loop, `listener.rs`).
    pub connections: ConnectionLimits,
    /// The address clients reach this node at (Gossip's answer).
    pub advertise: Advertise,
    /// Version reported by ServerFeatures (clients parse "major.minor.patch").
    pub version: String,
    /// Who requests come from.
    pub authenticator: Arc<dyn Authenticator>,
    /// The store's size on disk, when the backend can tell.
    pub size_probe: Option<SizeProbe>,
    /// More Prometheus text for `/metrics` from the backend (the engine's
    /// archive tier, ADR 43).
    pub extra_metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Online backups, when the backend can take them.
    pub backup: Option<BackupHook>,
    /// Crypto-shredding's `forget`, when the store encrypts personal
    /// fields (ADR 36).
    pub forget: Option<ForgetHook>,
    /// Scavenges, when the backend can run them (ADR 33).
    pub scavenge: Option<Arc<dyn crate::operations::Scavenger>>,
    /// When scheduled scavenges run (`--scavenge-schedule`).
    pub scavenge_schedule: Option<crate::operations::Schedule>,
    /// TLS on the port (ADR 30); `None`: plain TCP (insecure mode).
    pub tls: Option<Arc<crate::tls::Reloading>>,
    /// Users kept in the store, who must authenticate (ADR 31); replaces
    /// `authenticator`. `None`: `authenticator` decides (insecure: anyone).
    pub users: Option<UsersConfig>,
    /// `/metrics` without credentials when users are required (for
    /// scrapers); otherwise it needs `$ops` or `$admins`.
    pub metrics_anonymous: bool,
    /// Bearer tokens (JWT) checked against a JWKS file (ADR 34), in front
    /// of the users or `authenticator`; `None`: Bearer is refused.
    pub bearer: Option<Arc<crate::bearer::Bearer>>,
}

/// Secure mode's users: the initial passwords of `admin` and `ops` when
/// they are created on first start (`None`: `changeit`).
#[derive(Clone, Default)]
pub struct UsersConfig {
    /// `FACTUM_DEFAULT_ADMIN_PASSWORD`.
    pub admin_password: Option<String>,
    /// `FACTUM_DEFAULT_OPS_PASSWORD`.
    pub ops_password: Option<String>,
}

impl std::fmt::Debug for UsersConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsersConfig")
            .field("admin_password", &self.admin_password.as_ref().map(|_| "…"))
            .field("ops_password", &self.ops_password.as_ref().map(|_| "…"))
            .finish()
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("max_append_bytes", &self.max_append_bytes)
            .field("max_inflight_append_bytes", &self.max_inflight_append_bytes)
            .field("append_budget_wait", &self.append_budget_wait)
            .field("connections", &self.connections)
            .field("advertise", &self.advertise)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// Defaults for a node reachable at `advertise`: 64 MiB appends (the
    /// engine's own limit), [`ConnectionLimits::default`], insecure.
    pub fn new(advertise: impl Into<Advertise>) -> Self {
        ServerConfig {
            max_append_bytes: 64 * 1024 * 1024,
            max_inflight_append_bytes: 256 * 1024 * 1024,
            append_budget_wait: Duration::from_secs(5),
            connections: ConnectionLimits::default(),
            advertise: advertise.into(),
            // Clients compare versions to enable features: speak as a
            // current KurrentDB would.
            version: "24.10.0".to_owned(),
            authenticator: Arc::new(crate::auth::Insecure),
            size_probe: None,
            extra_metrics: None,
            backup: None,
            forget: None,
            scavenge: None,
            scavenge_schedule: None,
            tls: None,
            users: None,
            metrics_anonymous: false,
            bearer: None,
        }
    }
}

/// What a gRPC message may hold beyond its events' bytes (stream name,
/// expected revision, correlation id, deadline).
const MESSAGE_FRAMING_BYTES: usize = 64 * 1024;

/// The smallest gRPC message limit: KurrentDB reads messages up to its
/// largest log record (16 MiB) whatever its append limit (1 MiB by
/// default), so an append somewhat over the limit reaches the append check
/// and answers `MaximumAppendSizeExceeded`, which its clients expect,
/// rather than the transport's RESOURCE_EXHAUSTED.
const MIN_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

impl ServerConfig {
    /// Largest append as it arrives: one append's bytes (as
    /// `max_append_bytes` counts them: each proposed message whole) plus the
    /// request's own fields. The in-flight budget always holds one.
    pub fn max_append_message_bytes(&self) -> usize {
        usize::try_from(self.max_append_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(MESSAGE_FRAMING_BYTES)
    }

    /// Largest single gRPC message accepted:
    /// [`ServerConfig::max_append_message_bytes`], and never less than
    /// 16 MiB (as KurrentDB). Longer ones answer RESOURCE_EXHAUSTED before
    /// they are buffered.
    pub fn max_message_bytes(&self) -> usize {
        self.max_append_message_bytes().max(MIN_MESSAGE_BYTES)
    }

    /// The one maximum-append-size check, made by every append path
    /// (`Append` and `BatchAppend` per proposed message as it arrives,
    /// counted whole as KurrentDB counts it; HTTP per event it parsed):
    /// adds `bytes` to the append's running `total` and refuses it with
    /// `maximum-append-size-exceeded` (`errors::append_size_exceeded`) once
    /// the total passes `max_append_bytes`.
    pub fn count_append_bytes(&self, total: &mut u64, bytes: u64) -> Result<(), Error> {
        *total = total.saturating_add(bytes);
        if *total > self.max_append_bytes {
            return Err(append_size_exceeded(self.max_append_bytes, *total));
        }
        Ok(())
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
    /// The store's projections (ADR 35).
    pub projections: Arc<factum_projections::Projections<S>>,
    /// Append bytes in memory, across all clients.
    pub append_budget: AppendBudget,
    /// The users, when they are required (ADR 31).
    pub users: Option<Arc<crate::users::Users<S>>>,
    /// Who requests come from: the users, else `config.authenticator`.
    pub authenticator: Arc<dyn Authenticator>,
    /// Recent failed logins per client address (slows guessing).
    pub login_failures: crate::auth::Failures,
    /// Notified when a client asks the server to stop (Operations' `Shutdown`).
    pub shutdown_requested: Arc<tokio::sync::Notify>,
}

impl<S> Ctx<S> {
    /// True once shutdown began.
    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

//! Projections: read models built from `$all`, with the checkpoint written
//! in the same transaction as the read-model change (exactly-once effect).
//!
//! The pieces:
//! - [`Envelope`]: one event as a projection sees it (upcast or pinned).
//! - [`ReadModelStore`] and [`Sink`]: where a read model lives, in
//!   generations (a rebuild builds generation N+1 beside the live N);
//!   [`sqlite`] (embedded, the default) and [`postgres`] implement them.
//! - [`ProjectionRunner`]: catch-up from the checkpoint, then live;
//!   batching; the failure policy; lag; `wait_for`; rebuild.
//! - [`ProgressBar`]: a rebuild's progress on a terminal or in a log.
//! - [`metrics`]: lag and counters as name → value samples and Prometheus
//!   text, for the application's `/metrics`.

mod envelope;
pub mod metrics;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod progress;
mod runner;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use factum_core::{Position, Timestamp};

pub use envelope::Envelope;
pub use metrics::{render_prometheus, ProjectionMetrics};
pub use progress::ProgressBar;
pub use runner::{ProjectionHandle, ProjectionRunner, RunnerOptions};

/// An error a projection's `apply` returns (any error type).
pub type ApplyError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a projection stopped or an operation on it failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The projection failed on one event; nothing of its batch was
    /// committed.
    #[error(
        "projection {projection} failed on event {position} ({event_type} in {stream}): {reason}"
    )]
    Apply {
        /// The projection.
        projection: String,
        /// The event's global position.
        position: Position,
        /// Its stream.
        stream: String,
        /// Its type.
        event_type: String,
        /// What went wrong.
        reason: String,
    },
    /// The read-model database failed.
    #[error("read model {projection}: {reason}")]
    Sink {
        /// The projection.
        projection: String,
        /// What went wrong.
        reason: String,
    },
    /// The event store failed (or the subscription ended).
    #[error("event store: {0}")]
    Store(String),
    /// A wait ran out of time.
    #[error("projection {projection} did not reach position {position} within {timeout:?} (it is at {reached:?})")]
    Timeout {
        /// The projection.
        projection: String,
        /// The position waited for.
        position: Position,
        /// How long.
        timeout: Duration,
        /// Where it got to.
        reached: Option<Position>,
    },
    /// The projection is stopped (after a failure or by request).
    #[error("projection {projection} is stopped: {reason}")]
    Stopped {
        /// The projection.
        projection: String,
        /// Why.
        reason: String,
    },
    /// Invalid configuration (a name that cannot name a table or file …).
    #[error("invalid projection setup: {0}")]
    Invalid(String),
}

impl ProjectionError {
    /// True when the error is about one event (the failure policy applies).
    pub fn is_event_failure(&self) -> bool {
        matches!(self, ProjectionError::Apply { .. })
    }

    /// A failure of the read model's storage (for sinks, the built-in ones
    /// and yours).
    pub fn sink(projection: &str, reason: impl std::fmt::Display) -> Self {
        ProjectionError::Sink {
            projection: projection.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// A failure to apply one event (the failure policy applies).
    pub fn apply(projection: &str, env: &Envelope, reason: impl std::fmt::Display) -> Self {
        ProjectionError::Apply {
            projection: projection.to_owned(),
            position: env.position(),
            stream: env.stream().to_string(),
            event_type: env.event_type().to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// What to do when applying an event fails.
#[derive(Clone, Debug, PartialEq)]
pub enum FailurePolicy {
    /// Stop the projection; its checkpoint stays before the failing batch.
    Stop,
    /// Retry the batch with exponential backoff (for transient failures),
    /// `max_attempts` in all; then stop, or dead-letter the failing events.
    Retry {
        /// Attempts in all (at least 1).
        max_attempts: u32,
        /// Wait before the second attempt; doubles each time.
        initial_backoff: Duration,
        /// Longest wait.
        max_backoff: Duration,
        /// After the last attempt: dead-letter instead of stopping.
        then_dead_letter: bool,
    },
    /// Skip each failing event, recording it (position, stream, type,
    /// error, data) in the read model's `factum_dead_letters` table, in the
    /// same transaction as the batch.
    DeadLetter,
}

impl FailurePolicy {
    /// Retry `max_attempts` times from 50 ms up to 5 s, then stop.
    pub fn retry(max_attempts: u32) -> Self {
        FailurePolicy::Retry {
            max_attempts,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            then_dead_letter: false,
        }
    }
}

/// When the store ends a projection's subscription with a transient error
/// ([`factum_core::Error::is_transient`]: the server or database is down or
/// restarting), the runner waits and subscribes again after its position,
/// with exponential backoff, instead of failing. Other errors stop it.
#[derive(Clone, Debug, PartialEq)]
pub struct ResubscribePolicy {
    /// Wait before the first re-subscribe; doubles after each failure in a
    /// row (a subscription that delivers anything resets it).
    pub initial_backoff: Duration,
    /// Longest wait.
    pub max_backoff: Duration,
    /// Failures in a row after which the projection stops (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for ResubscribePolicy {
    /// From 100 ms up to 10 s, for ever.
    fn default() -> Self {
        ResubscribePolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_attempts: None,
        }
    }
}

impl ResubscribePolicy {
    /// The wait before re-subscribing after `failures` (≥ 1) in a row.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// What committing a batch did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchOutcome {
    /// Events applied.
    pub applied: u64,
    /// Events skipped into the dead-letter table: (position, reason).
    pub dead_lettered: Vec<(Position, String)>,
}

/// One generation of a read model: applies batches and keeps the
/// checkpoint, atomically.
pub trait Sink: Send + 'static {
    /// The checkpoint: the position of the last event whose effect is
    /// committed; `None` when nothing is.
    fn checkpoint(
        &mut self,
    ) -> impl Future<Output = Result<Option<Position>, ProjectionError>> + Send;

    /// Applies `batch` (in order) and sets the checkpoint to `checkpoint`,
    /// in one transaction. With `dead_letter` unset, the first failing event
    /// fails the whole batch (nothing committed, `ProjectionError::Apply`);
    /// with it set, failing events are recorded in the dead-letter table and
    /// skipped.
    fn apply(
        &mut self,
        batch: Arc<[Envelope]>,
        checkpoint: Position,
        dead_letter: bool,
    ) -> impl Future<Output = Result<BatchOutcome, ProjectionError>> + Send;
}

/// Where a read model's generations live.
pub trait ReadModelStore: Clone + Send + Sync + 'static {
    /// The sink of one generation.
    type Sink: Sink;

    /// The read model's name.
    fn name(&self) -> &str;

    /// The generation readers see; makes generation 1 live when there is
    /// none yet.
    fn live_generation(&self) -> impl Future<Output = Result<u64, ProjectionError>> + Send;

    /// The newest generation present (a rebuild builds the next one).
    fn newest_generation(&self) -> impl Future<Output = Result<u64, ProjectionError>> + Send;

    /// Opens a generation, creating its tables when new.
    fn open(
        &self,
        generation: u64,
    ) -> impl Future<Output = Result<Self::Sink, ProjectionError>> + Send;

    /// Removes a generation and everything in it.
    fn drop_generation(
        &self,
        generation: u64,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;

    /// Makes `to` the live generation, atomically for readers.
    fn switch(&self, to: u64) -> impl Future<Output = Result<(), ProjectionError>> + Send;
}

/// What a projection is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Opening the read model and subscribing.
    Starting,
    /// Reading history.
    CatchingUp,
    /// At the head, following live events.
    Live,
    /// Waiting before retrying a failed batch, or before re-subscribing
    /// after a transient store error (`last_error` says which).
    Retrying,
    /// Stopped on request.
    Stopped,
    /// Stopped by a failure (see `last_error`).
    Failed,
}

/// A projection's progress and health.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// The generation this status describes.
    pub generation: u64,
    /// What it is doing.
    pub state: RunState,
    /// Everything at or before this position has been processed
    /// (committed, or filtered out).
    pub position: Option<Position>,
    /// Events applied since start.
    pub events_applied: u64,
    /// Events dead-lettered since start.
    pub dead_lettered: u64,
    /// Batch attempts that failed and were retried.
    pub retries: u64,
    /// Times the subscription was re-opened after the store ended it with
    /// a transient error (see [`ResubscribePolicy`]).
    pub resubscribes: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Commit time of the last event applied.
    pub last_event_at: Option<Timestamp>,
}

/// How far a projection is behind the store's head.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lag {
    /// Global positions committed but not yet processed (at least the
    /// events behind: a scavenge leaves gaps in positions, ADR 33).
    pub positions_behind: u64,
    /// Age of the oldest unprocessed event, seconds (0 when caught up).
    pub seconds_behind: f64,
    /// The store's head.
    pub head: Option<Position>,
    /// The projection's position.
    pub position: Option<Position>,
}

/// A rebuild's progress, reported while the new generation catches up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RebuildProgress {
    /// The generation being built.
    pub generation: u64,
    /// Where it is.
    pub position: Option<Position>,
    /// The store's head when measured.
    pub head: Option<Position>,
    /// Events applied to the new generation so far.
    pub events_applied: u64,
}

impl RebuildProgress {
    /// Fraction done, 0.0 ..= 1.0: positions done of the head's (the first
    /// event is at 1; a scavenged log has fewer events than that).
    pub fn fraction(&self) -> f64 {
        match (self.position, self.head) {
            (_, None) => 1.0,
            (_, Some(Position(0))) => 1.0,
            (None, Some(_)) => 0.0,
            (Some(p), Some(h)) => (p.0 as f64 / h.0 as f64).min(1.0),
        }
    }
}

/// Checks a read-model name: letters, digits and `_`, 1..=48 bytes,
/// starting with a letter (it names files, schemas and tables).
pub fn validate_name(name: &str) -> Result<(), ProjectionError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ProjectionError::Invalid(format!(
            "read-model name {name:?}: use 1-48 ASCII letters, digits or '_', starting with a letter"
        )))
    }
}

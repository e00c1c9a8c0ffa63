//! When to take a snapshot.

use std::sync::Arc;
use std::time::Duration;

/// What a policy decides on, after a command appended events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotContext {
    /// Events folded in since the last usable snapshot (all of them when
    /// there is none).
    pub events_since_snapshot: u64,
    /// Age of the last usable snapshot; `None` when there is none.
    pub snapshot_age: Option<Duration>,
    /// Size of the serialized state in bytes.
    pub state_bytes: usize,
}

/// When the repository saves a snapshot after a command. Combine with
/// [`SnapshotPolicy::any`] / [`SnapshotPolicy::all`]. No policy fires when no
/// event was added since the last snapshot.
#[derive(Clone)]
#[non_exhaustive]
pub enum SnapshotPolicy {
    /// Never.
    Never,
    /// When at least N events were added since the last snapshot.
    EveryEvents(u64),
    /// When the last snapshot is older than this (or there is none).
    OlderThan(Duration),
    /// When the serialized state is at least this many bytes (small states
    /// are cheap to rebuild; large ones are worth a snapshot).
    StateBytesAtLeast(usize),
    /// A rule of your own.
    Custom(Arc<dyn Fn(&SnapshotContext) -> bool + Send + Sync>),
    /// When any of these says so.
    Any(Vec<SnapshotPolicy>),
    /// When all of these say so.
    All(Vec<SnapshotPolicy>),
}

impl std::fmt::Debug for SnapshotPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotPolicy::Never => f.write_str("Never"),
            SnapshotPolicy::EveryEvents(n) => write!(f, "EveryEvents({n})"),
            SnapshotPolicy::OlderThan(d) => write!(f, "OlderThan({d:?})"),
            SnapshotPolicy::StateBytesAtLeast(n) => write!(f, "StateBytesAtLeast({n})"),
            SnapshotPolicy::Custom(_) => f.write_str("Custom(..)"),
            SnapshotPolicy::Any(v) => f.debug_tuple("Any").field(v).finish(),
            SnapshotPolicy::All(v) => f.debug_tuple("All").field(v).finish(),
        }
    }
}

impl SnapshotPolicy {
    /// Every `n` events.
    pub fn every(n: u64) -> Self {
        SnapshotPolicy::EveryEvents(n)
    }

    /// A custom rule.
    pub fn custom(f: impl Fn(&SnapshotContext) -> bool + Send + Sync + 'static) -> Self {
        SnapshotPolicy::Custom(Arc::new(f))
    }

    /// When any of the policies says so.
    pub fn any(policies: impl IntoIterator<Item = SnapshotPolicy>) -> Self {
        SnapshotPolicy::Any(policies.into_iter().collect())
    }

    /// When all of the policies say so.
    pub fn all(policies: impl IntoIterator<Item = SnapshotPolicy>) -> Self {
        SnapshotPolicy::All(policies.into_iter().collect())
    }

    /// Whether snapshots are on at all.
    pub fn is_never(&self) -> bool {
        matches!(self, SnapshotPolicy::Never)
    }

    /// Whether deciding needs the state's serialized size.
    pub fn needs_state_size(&self) -> bool {
        match self {
            SnapshotPolicy::StateBytesAtLeast(_) | SnapshotPolicy::Custom(_) => true,
            SnapshotPolicy::Any(v) | SnapshotPolicy::All(v) => {
                v.iter().any(SnapshotPolicy::needs_state_size)
            }
            _ => false,
        }
    }

    /// Should a snapshot be taken now?
    pub fn is_due(&self, ctx: &SnapshotContext) -> bool {
        ctx.events_since_snapshot > 0 && self.decide(ctx)
    }

    fn decide(&self, ctx: &SnapshotContext) -> bool {
        match self {
            SnapshotPolicy::Never => false,
            SnapshotPolicy::EveryEvents(n) => ctx.events_since_snapshot >= (*n).max(1),
            SnapshotPolicy::OlderThan(d) => ctx.snapshot_age.is_none_or(|age| age >= *d),
            SnapshotPolicy::StateBytesAtLeast(n) => ctx.state_bytes >= *n,
            SnapshotPolicy::Custom(f) => f(ctx),
            SnapshotPolicy::Any(v) => v.iter().any(|p| p.decide(ctx)),
            SnapshotPolicy::All(v) => !v.is_empty() && v.iter().all(|p| p.decide(ctx)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(events: u64, age_s: Option<u64>, bytes: usize) -> SnapshotContext {
        SnapshotContext {
            events_since_snapshot: events,
            snapshot_age: age_s.map(Duration::from_secs),
            state_bytes: bytes,
        }
    }

    #[test]
    fn policies_decide() {
        let every = SnapshotPolicy::every(10);
        assert!(!every.is_due(&ctx(9, None, 0)));
        assert!(every.is_due(&ctx(10, None, 0)));
        let age = SnapshotPolicy::OlderThan(Duration::from_secs(60));
        assert!(age.is_due(&ctx(1, None, 0)));
        assert!(!age.is_due(&ctx(1, Some(59), 0)));
        assert!(age.is_due(&ctx(1, Some(60), 0)));
        assert!(
            !age.is_due(&ctx(0, None, 0)),
            "nothing new, nothing to save"
        );
        let big = SnapshotPolicy::all([
            SnapshotPolicy::every(5),
            SnapshotPolicy::StateBytesAtLeast(100),
        ]);
        assert!(big.needs_state_size());
        assert!(!big.is_due(&ctx(5, None, 99)));
        assert!(big.is_due(&ctx(5, None, 100)));
        let custom = SnapshotPolicy::custom(|c| c.events_since_snapshot % 2 == 0);
        assert!(custom.is_due(&ctx(2, None, 0)));
        assert!(!custom.is_due(&ctx(3, None, 0)));
        let any = SnapshotPolicy::any([SnapshotPolicy::Never, SnapshotPolicy::every(3)]);
        assert!(any.is_due(&ctx(3, None, 0)));
        assert!(!SnapshotPolicy::all([]).is_due(&ctx(3, None, 0)));
        assert!(!SnapshotPolicy::Never.is_due(&ctx(1000, None, 0)));
    }
}

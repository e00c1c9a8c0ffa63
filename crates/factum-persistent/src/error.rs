//! What can go wrong with a persistent subscription, in the caller's terms.

use crate::settings::GroupKey;

/// An error of a persistent-subscription operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistentError {
    /// `create` for a group that exists.
    #[error("persistent subscription group {0} already exists")]
    AlreadyExists(GroupKey),
    /// The group does not exist.
    #[error("persistent subscription group {0} does not exist")]
    NotFound(GroupKey),
    /// The group has `max_subscriber_count` consumers already.
    #[error("persistent subscription group {key} has its maximum of {max} subscribers")]
    MaximumSubscribersReached {
        /// The group.
        key: GroupKey,
        /// Its limit.
        max: u32,
    },
    /// Settings or names that cannot be used.
    #[error("invalid persistent subscription settings: {0}")]
    InvalidSettings(String),
    /// The consumer's connection ended: the group was deleted, updated or
    /// stopped, the consumer nacked with `Stop`, or the subsystem restarted.
    #[error("persistent subscription {key} dropped: {reason}")]
    Dropped {
        /// The group.
        key: GroupKey,
        /// Why.
        reason: String,
    },
    /// The group's stored configuration or checkpoint cannot be read: the
    /// group is out of service (reported by `info`/`list`) until it is
    /// updated with new settings or deleted; the other groups run.
    #[error("persistent subscription group {key} is out of service: {reason}")]
    Faulted {
        /// The group.
        key: GroupKey,
        /// What is damaged.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] factum_core::Error),
}

/// Results of persistent-subscription operations.
pub type Result<T, E = PersistentError> = std::result::Result<T, E>;

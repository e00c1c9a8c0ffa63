//! The streams Factum manages itself, named in one place.
//!
//! A subsystem that keeps its state in the store (persistent
//! subscriptions today; users, settings and projections later) owns its
//! streams: they change only through that subsystem's operations (creating,
//! updating or deleting a group …), which write through the store
//! directly. Clients may read them, but an append, a delete, a tombstone
//! or a metadata write from a client is refused with
//! [`Error::AccessDenied`] — one raw write could otherwise break the whole
//! subsystem (a tombstoned configuration stream can never be written
//! again). The server calls [`check_client_write`] on every client-facing
//! write; a stream's `$$` metadata stream belongs to the same owner.
//!
//! Adding a subsystem's streams (the next issues): add an [`Owner`]
//! variant with its name and operations, and its rows in `MANAGED` —
//! settings:
//! `Exact("$settings")`; projections: `Prefix("$projections-")` — plus
//! constructors for the names it writes, so the subsystem and this table
//! cannot disagree. Unlike KurrentDB, admins will not write them either
//! (they may read them): the owning operations are the only way in.

use crate::error::{Error, Result};
use crate::model::StreamName;

/// The stream holding every persistent-subscription group's configuration
/// (KurrentDB's name).
pub const PERSISTENT_SUBSCRIPTION_CONFIG_STREAM: &str = "$persistentSubscriptionConfig";

/// The prefix of every per-group persistent-subscription stream:
/// `$persistentsubscription-<source>::<group>-checkpoint` and `…-parked`
/// (KurrentDB's names).
pub const PERSISTENT_SUBSCRIPTION_STREAM_PREFIX: &str = "$persistentsubscription-";

/// Every user's login name, one `$User` event per user created
/// (KurrentDB's name).
pub const USERS_STREAM: &str = "$users";

/// The prefix of each user's stream, `$user-<login>`: its details and
/// password hash (KurrentDB's name).
pub const USER_STREAM_PREFIX: &str = "$user-";

/// The audit trail of crypto-shredding: one `$SubjectForgotten` event
/// per `forget` (who, when, which subject; ADR 36).
pub const FORGOTTEN_SUBJECTS_STREAM: &str = "$subjects-forgotten";
/// The prefix of every projection stream: `$projections-$all` (the
/// registrations), `$projections-<name>` (settings), `-checkpoint`,
/// `-result`, `-partitions`, `-emittedstreams`, partition states
/// (KurrentDB's names, ADR 35).
pub const PROJECTIONS_STREAM_PREFIX: &str = "$projections-";

/// KurrentDB's `$streams` system projection's stream: a link to the first
/// event of every stream (ADR 39).
pub const STREAMS_STREAM: &str = "$streams";
/// The prefix of `$stream_by_category`'s streams, `$category-<c>`: a stream
/// reference per stream of category `c` (ADR 39).
pub const CATEGORY_STREAM_PREFIX: &str = "$category-";
/// The prefix of `$by_correlation_id`'s streams, `$bc-<id>`: a link to
/// every event whose metadata has that `$correlationId` (ADR 39).
pub const CORRELATION_STREAM_PREFIX: &str = "$bc-";

/// Whether `stream` is one a link-writing system projection (`$streams`,
/// `$stream_by_category`, `$by_correlation_id`) writes: managed by
/// projections, and the only managed streams a projection's own emits may
/// reach (those projections' commits).
pub fn is_system_projection_stream(stream: &StreamName) -> bool {
    let name = stream.as_str();
    name == STREAMS_STREAM
        || name.starts_with(CATEGORY_STREAM_PREFIX)
        || name.starts_with(CORRELATION_STREAM_PREFIX)
}

/// A subsystem that owns streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Owner {
    /// Persistent subscriptions (consumer groups): their configuration,
    /// checkpoints and parked messages.
    PersistentSubscriptions,
    /// Users: their details, groups and password hashes (ADR 31).
    Users,
    /// Crypto-shredding: the audit trail of forgotten subjects (ADR 36).
    Subjects,
    /// Projections: registrations, settings, checkpoints, states, results
    /// (ADR 35); the system projections' `$streams`, `$category-…`,
    /// `$bc-…` (ADR 44).
    Projections,
}

impl Owner {
    /// The subsystem's name, as errors say it.
    pub fn name(self) -> &'static str {
        match self {
            Owner::PersistentSubscriptions => "persistent subscriptions",
            Owner::Users => "user management",
            Owner::Subjects => "crypto-shredding",
            Owner::Projections => "projections",
        }
    }

    /// The operations through which its streams change.
    pub fn operations(self) -> &'static str {
        match self {
            Owner::PersistentSubscriptions => {
                "creating, updating or deleting a group, acks, nacks and parked-message replays"
            }
            Owner::Users => {
                "the Users service: creating, updating, enabling, disabling and deleting users, \
                 password changes and resets"
            }
            Owner::Subjects => {
                "forgetting a subject (POST /subjects/{subject}/forget, factum forget)"
            }
            Owner::Projections => {
                "the Projections service: creating, updating, enabling, disabling, resetting and \
                 deleting projections, and the projections' own commits"
            }
        }
    }
}

/// How a managed stream is named.
#[derive(Clone, Copy, Debug)]
enum Pattern {
    /// Exactly this name.
    Exact(&'static str),
    /// Every name starting with this.
    Prefix(&'static str),
}

impl Pattern {
    fn matches(self, name: &str) -> bool {
        match self {
            Pattern::Exact(n) => name == n,
            Pattern::Prefix(p) => name.starts_with(p),
        }
    }
}

/// Every managed stream, by name pattern and owner.
const MANAGED: &[(Pattern, Owner)] = &[
    (
        Pattern::Exact(PERSISTENT_SUBSCRIPTION_CONFIG_STREAM),
        Owner::PersistentSubscriptions,
    ),
    (
        Pattern::Prefix(PERSISTENT_SUBSCRIPTION_STREAM_PREFIX),
        Owner::PersistentSubscriptions,
    ),
    (Pattern::Exact(USERS_STREAM), Owner::Users),
    (Pattern::Prefix(USER_STREAM_PREFIX), Owner::Users),
    (Pattern::Exact(FORGOTTEN_SUBJECTS_STREAM), Owner::Subjects),
    (
        Pattern::Prefix(PROJECTIONS_STREAM_PREFIX),
        Owner::Projections,
    ),
    (Pattern::Exact(STREAMS_STREAM), Owner::Projections),
    (Pattern::Prefix(CATEGORY_STREAM_PREFIX), Owner::Projections),
    (
        Pattern::Prefix(CORRELATION_STREAM_PREFIX),
        Owner::Projections,
    ),
];

/// The subsystem that owns `stream` (or, for `$$<stream>`, the stream
/// whose metadata it holds), `None` for streams clients own.
pub fn owner_of(stream: &StreamName) -> Option<Owner> {
    let mut name = stream.as_str();
    // `$$x` is x's metadata, `$$$$x` the metadata of `$$x`: same owner.
    while let Some(of) = name.strip_prefix("$$").filter(|s| !s.is_empty()) {
        name = of;
    }
    MANAGED
        .iter()
        .find(|(pattern, _)| pattern.matches(name))
        .map(|&(_, owner)| owner)
}

/// Refuses a client's write (append, delete, tombstone, metadata) to a
/// stream a subsystem owns, with [`Error::AccessDenied`] naming the owner
/// and its operations.
pub fn check_client_write(stream: &StreamName) -> Result<()> {
    match owner_of(stream) {
        None => Ok(()),
        Some(owner) => Err(Error::AccessDenied(format!(
            "stream {stream} is managed by {}: it changes only through {} (clients may read it)",
            owner.name(),
            owner.operations()
        ))),
    }
}

/// `$persistentsubscription-<source>::<group>-checkpoint`: where a
/// persistent-subscription group keeps its checkpoint.
pub fn persistent_checkpoint_stream(source: &str, group: &str) -> Result<StreamName> {
    persistent_group_stream(source, group, "checkpoint")
}

/// `$persistentsubscription-<source>::<group>-parked`: links to the events
/// a persistent-subscription group parked.
pub fn persistent_parked_stream(source: &str, group: &str) -> Result<StreamName> {
    persistent_group_stream(source, group, "parked")
}

/// `$user-<login>`: where a user's details and password hash live.
pub fn user_stream(login: &str) -> Result<StreamName> {
    StreamName::new(format!("{USER_STREAM_PREFIX}{login}"))
}

fn persistent_group_stream(source: &str, group: &str, suffix: &str) -> Result<StreamName> {
    StreamName::new(format!(
        "{PERSISTENT_SUBSCRIPTION_STREAM_PREFIX}{source}::{group}-{suffix}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> StreamName {
        StreamName::new(s).unwrap()
    }

    #[test]
    fn persistent_subscription_streams_are_managed_with_their_metadata() {
        let checkpoint = persistent_checkpoint_stream("$all", "g").unwrap();
        assert_eq!(
            checkpoint.as_str(),
            "$persistentsubscription-$all::g-checkpoint"
        );
        let parked = persistent_parked_stream("orders", "billing").unwrap();
        assert_eq!(
            parked.as_str(),
            "$persistentsubscription-orders::billing-parked"
        );
        for s in [
            checkpoint.clone(),
            parked.clone(),
            checkpoint.metadata_stream(),
            parked.metadata_stream().metadata_stream(),
            name(PERSISTENT_SUBSCRIPTION_CONFIG_STREAM),
            name(PERSISTENT_SUBSCRIPTION_CONFIG_STREAM).metadata_stream(),
        ] {
            assert_eq!(owner_of(&s), Some(Owner::PersistentSubscriptions), "{s}");
            let err = check_client_write(&s).unwrap_err();
            assert!(
                matches!(&err, Error::AccessDenied(m) if m.contains(s.as_str())),
                "{err}"
            );
        }
    }

    #[test]
    fn user_streams_are_managed() {
        for s in [
            user_stream("admin").unwrap(),
            user_stream("admin").unwrap().metadata_stream(),
            name(USERS_STREAM),
            name(USERS_STREAM).metadata_stream(),
        ] {
            assert_eq!(owner_of(&s), Some(Owner::Users), "{s}");
            assert!(check_client_write(&s).is_err(), "{s}");
        }
    }

    #[test]
    fn system_projection_streams_are_managed() {
        for s in [
            "$streams",
            "$$$streams",
            "$category-order",
            "$$$category-order",
            "$bc-c-1",
            "$$$bc-c-1",
            "$projections-$all",
        ] {
            assert_eq!(owner_of(&name(s)), Some(Owner::Projections), "{s}");
            assert!(check_client_write(&name(s)).is_err(), "{s}");
        }
        for (s, written) in [
            ("$streams", true),
            ("$category-order", true),
            ("$bc-c-1", true),
            ("$$$streams", false),
            ("$projections-x-result", false),
            ("$streamsX", false),
        ] {
            assert_eq!(is_system_projection_stream(&name(s)), written, "{s}");
        }
    }

    #[test]
    fn client_streams_are_not() {
        for s in [
            "orders-1",
            "$$orders-1",
            "$$",
            "$persistentSubscriptionConfigX",
            "persistentsubscription-x",
            "$ce-orders",
            "$settings",
            "$usersX",
            "user-1",
            "projections-1",
            "$streamsX",
            "$category",
            "$bc",
            "streams",
            "bc-1",
        ] {
            assert_eq!(owner_of(&name(s)), None, "{s}");
            check_client_write(&name(s)).unwrap();
        }
    }
}

//! The `Aggregate` trait: state built by applying events; commands decided
//! against that state.

use factum_core::StreamName;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::event::DomainEvent;

/// A consistency boundary: one stream of events, one state.
///
/// `apply` folds an event into the state and must not fail: events are
/// facts that already happened. `handle` decides a command against the
/// current state and returns new events or the user's own domain error.
/// The state is serialized (JSON) for snapshots; change
/// [`SNAPSHOT_VERSION`](Aggregate::SNAPSHOT_VERSION) whenever its shape
/// changes, and old snapshots are ignored rather than misread.
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stream category: instances live in streams `<CATEGORY>-<id>`.
    const CATEGORY: &'static str;
    /// Schema version of the serialized state (snapshots of another version
    /// are ignored and replaced on the next save).
    const SNAPSHOT_VERSION: u32 = 1;

    /// What callers ask for.
    type Command: Send + Sync;
    /// What happened.
    type Event: DomainEvent;
    /// Why a command was refused (the user's own type).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Folds one event into the state.
    fn apply(&mut self, event: &Self::Event);

    /// Decides a command: the events it produces, or why it is refused. It
    /// may run more than once (the repository re-runs it on a concurrency
    /// conflict against the reloaded state), so it must have no side effects.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// The stream of the instance `id` (default `<CATEGORY>-<id>`).
    fn stream_name(id: &str) -> factum_core::Result<StreamName> {
        StreamName::new(format!("{}-{}", Self::CATEGORY, id))
    }
}

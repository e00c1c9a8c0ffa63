//! What a group reports about itself (`GetInfo`, `List`, `/metrics`).

use crate::settings::{GroupSettings, GroupSource};

/// A group's state as `GetInfo` and `List` report it.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupInfo {
    /// The source stream, or `$all`.
    pub source: GroupSource,
    /// The group's name.
    pub group: String,
    /// `Live`, `CatchingUp`, `Stopped`, or `Faulted` (see `error`).
    pub status: &'static str,
    /// Why the group is out of service (`Faulted`): its stored
    /// configuration or checkpoint cannot be read.
    pub error: Option<String>,
    /// The settings it runs with.
    pub settings: GroupSettings,
    /// Its consumers.
    pub connections: Vec<ConnectionInfo>,
    /// Events delivered since the group started (redeliveries included).
    pub total_items: u64,
    /// Deliveries per second over the last measured second.
    pub average_per_second: u64,
    /// Deliveries in the last measured second.
    pub count_since_last_measurement: u64,
    /// The last checkpoint written (revision or position), if any.
    pub last_checkpointed_position: Option<u64>,
    /// The newest source revision or position read.
    pub last_known_position: Option<u64>,
    /// Events read ahead, waiting for a consumer.
    pub buffered: u64,
    /// Events waiting to be retried (nacked, timed out, or replayed from
    /// the parked stream).
    pub retry_buffered: u64,
    /// Events delivered and not yet acked.
    pub in_flight: u64,
    /// Events in the parked stream not yet replayed.
    pub parked: u64,
    /// Redeliveries so far (timeouts, retries, consumers gone, replays).
    pub redelivered: u64,
    /// Events parked since the group started.
    pub parked_total: u64,
}

impl GroupInfo {
    /// Events behind: how far the last checkpoint trails the newest event
    /// read (a lower bound of the work left).
    pub fn lag(&self) -> u64 {
        match (self.last_known_position, self.last_checkpointed_position) {
            (Some(k), Some(c)) => k.saturating_sub(c),
            (Some(k), None) => k + 1,
            _ => 0,
        }
    }
}

/// One consumer of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Where it connects from (a peer address, or `in-process`).
    pub from: String,
    /// The name it gave.
    pub name: String,
    /// Deliveries per second over the last measured second.
    pub average_items_per_second: u64,
    /// Events delivered to it.
    pub total_items: u64,
    /// Deliveries in the last measured second.
    pub count_since_last_measurement: u64,
    /// How many more it may have in flight.
    pub available_slots: u64,
    /// Delivered to it and not yet acked.
    pub in_flight: u64,
}

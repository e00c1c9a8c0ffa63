#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//!
//! | module | what |
//! |---|---|
//! | `settings` | `GroupSettings` (KurrentDB's names and defaults), `GroupSource`, `GroupKey` and the system streams it names |
//! | `manager` | `PersistentSubscriptions`: the groups of a store, their configuration, `Consumer` handles |
//! | `group` | one group's task: lazy source reads, dispatch by strategy, acks, nacks, timeouts, parking, checkpoints; the task of a faulted group (damaged configuration or checkpoint) |
//! | `streams` | the group's system streams: checkpoint events, parked links, their reading |
//! | `info` | `GroupInfo` / `ConnectionInfo`: what `GetInfo` and `List` report |

mod error;
mod group;
mod info;
mod manager;
mod settings;
mod streams;

pub use error::{PersistentError, Result};
pub use group::{Delivery, NackAction};
pub use info::{ConnectionInfo, GroupInfo};
pub use manager::{
    ConnectOptions, Consumer, PersistentSubscriptions, CONFIG_EVENT_TYPE, CONFIG_STREAM,
};
pub use settings::{
    ConsumerStrategy, FilterSpec, GroupKey, GroupSettings, GroupSource, StartFrom, MAX_BUFFER_SIZE,
    MAX_CONSUMER_WINDOW, MAX_SUBSCRIBER_COUNT,
};
pub use streams::{CHECKPOINT_EVENT_TYPE, PARKED_EVENT_TYPE};

//! # factum-core
//!
//! Factum's model and contracts: [`EventData`], [`RecordedEvent`],
//! [`StreamName`], [`ExpectedRevision`], read and subscription requests,
//! [`Error`], and the [`EventStore`] trait that every backend implements
//! (the embedded engine, PostgreSQL, the remote client).
//!
//! With the `testkit` feature, [`testkit`] holds the conformance suite
//! every backend must pass.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod expected;
pub mod filter;
pub mod follow;
pub mod json;
pub mod managed;
pub mod metadata;
pub mod model;
pub mod multi;
pub mod personal;
pub mod read;
pub mod rules;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use error::{Error, Result, UnavailableReason};
pub use expected::{
    AppendResult, CurrentRevision, DeleteResult, ExpectedRevision, MAX_EXPECTED_REVISION,
};
pub use filter::{FilterRegex, MAX_FILTER_REGEX_LEN};
pub use metadata::{StreamMetadata, StreamMetadataResult, METADATA_EVENT_TYPE};
pub use model::{
    ContentType, EventData, Link, Position, RecordedEvent, StreamName, StreamRevision, Timestamp,
};
pub use multi::{
    ActualState, MultiAppend, MultiAppendResult, StreamAppended, StreamCondition, StreamPart,
    Violation,
};
pub use read::{
    AllStart, Direction, Filter, FilterMatch, FilterOn, PageBound, ReadAll, ReadStream,
    StreamStart, Subscribe, SubscriptionStart, SubscriptionTarget, PAGE_BYTES,
};
pub use store::{EventStore, Subscription, SubscriptionMessage};
pub use {bytes::Bytes, uuid::Uuid};

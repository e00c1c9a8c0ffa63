#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aggregate;
pub mod context;
pub mod event;
pub mod projection;
pub mod repository;
pub mod snapshot;
pub mod temporal;
pub mod testing;
pub mod upcast;

pub use aggregate::Aggregate;
pub use context::{CommandContext, EventMetadata, PersonalData};
pub use event::{CodecError, DomainEvent};
pub use projection::{
    Envelope, FailurePolicy, Lag, ProjectionError, ProjectionHandle, ProjectionMetrics,
    ProjectionRunner, ProjectionStatus, ReadModelStore, RebuildProgress, ResubscribePolicy,
    RunState, RunnerOptions, Sink,
};
pub use repository::{Executed, Loaded, Recorded, Repository, RepositoryError};
pub use snapshot::{
    NoSnapshots, Snapshot, SnapshotBound, SnapshotContext, SnapshotOutcome, SnapshotPolicy,
    SnapshotStore, StreamSnapshotStore,
};
pub use temporal::stream_events_between;
pub use upcast::Upcasters;

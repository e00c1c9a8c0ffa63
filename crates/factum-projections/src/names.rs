//! The streams a projection keeps in the store, named as KurrentDB names
//! them (its `ProjectionNamesBuilder`), and the event types written there.

use factum_core::{Result, StreamName};

/// Every projection's registration: `$ProjectionCreated` / `$ProjectionDeleted`
/// events whose data is the projection's name.
pub const REGISTRATION_STREAM: &str = "$projections-$all";
/// The prefix of every projection stream.
pub const PREFIX: &str = "$projections-";

/// A projection was registered (in [`REGISTRATION_STREAM`]).
pub const CREATED_EVENT: &str = "$ProjectionCreated";
/// A projection was deleted (in [`REGISTRATION_STREAM`]).
pub const DELETED_EVENT: &str = "$ProjectionDeleted";
/// A projection's definition and status (in `$projections-<name>`).
pub const UPDATED_EVENT: &str = "$ProjectionUpdated";
/// A projection's checkpoint: its position and root state.
pub const CHECKPOINT_EVENT: &str = "$ProjectionCheckpoint";
/// A partition's state.
pub const PARTITION_CHECKPOINT_EVENT: &str = "$Checkpoint";
/// A result (`outputState`).
pub const RESULT_EVENT: &str = "Result";
/// A stream the projection emitted to (`track_emitted_streams`).
pub const STREAM_TRACKED_EVENT: &str = "$StreamTracked";
/// A partition the projection has seen (its catalog).
pub const PARTITION_EVENT: &str = "$partition";

/// The streams of one projection.
#[derive(Clone, Debug)]
pub struct Names {
    name: String,
    result_stream: Option<String>,
    partition_result_pattern: Option<String>,
}

impl Names {
    /// Names for projection `name`; the result streams as the definition
    /// overrides them (`resultStreamName`, `outputTo`).
    pub fn new(
        name: &str,
        result_stream: Option<String>,
        partition_result_pattern: Option<String>,
    ) -> Names {
        Names {
            name: name.to_owned(),
            result_stream,
            partition_result_pattern,
        }
    }

    fn stream(&self, suffix: &str) -> Result<StreamName> {
        StreamName::new(format!("{PREFIX}{}{suffix}", self.name))
    }

    /// `$projections-<name>`: definition and status.
    pub fn definition(&self) -> Result<StreamName> {
        self.stream("")
    }
    /// `$projections-<name>-checkpoint`.
    pub fn checkpoint(&self) -> Result<StreamName> {
        self.stream("-checkpoint")
    }
    /// `$projections-<name>-emittedstreams`.
    pub fn emitted_streams(&self) -> Result<StreamName> {
        self.stream("-emittedstreams")
    }
    /// `$projections-<name>-partitions`: the partition catalog.
    pub fn partitions(&self) -> Result<StreamName> {
        self.stream("-partitions")
    }
    /// `$projections-<name>-<partition>-checkpoint`: a partition's state.
    pub fn partition_checkpoint(&self, partition: &str) -> Result<StreamName> {
        self.stream(&format!("-{partition}-checkpoint"))
    }
    /// The result stream of a partition ("" for the root):
    /// `$projections-<name>-result` / `$projections-<name>-<partition>-result`
    /// unless the definition names others.
    pub fn result(&self, partition: &str) -> Result<StreamName> {
        if partition.is_empty() {
            return match &self.result_stream {
                Some(s) => StreamName::new(s),
                None => self.stream("-result"),
            };
        }
        match &self.partition_result_pattern {
            Some(p) => StreamName::new(p.replace("{0}", partition)),
            None => self.stream(&format!("-{partition}-result")),
        }
    }
    /// Every stream a delete with `delete_state_stream` /
    /// `delete_checkpoint_stream` removes, besides the partitions'.
    pub fn all_fixed(&self) -> Result<Vec<StreamName>> {
        Ok(vec![
            self.definition()?,
            self.checkpoint()?,
            self.emitted_streams()?,
            self.partitions()?,
            self.result("")?,
        ])
    }
}

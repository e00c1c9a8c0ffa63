//! A projection's persisted settings: what `$projections-<name>` holds
//! (one `$ProjectionUpdated` event per change, the last one wins).

use serde::{Deserialize, Serialize};

/// How a projection runs (KurrentDB's modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// Runs once to the head in memory; nothing is written.
    Transient,
    /// Runs once to the head, writes its final state and results.
    OneTime,
    /// Runs for ever, checkpointing.
    Continuous,
}

impl Mode {
    /// KurrentDB's name (`Transient`, `OneTime`, `Continuous`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Transient => "Transient",
            Mode::OneTime => "OneTime",
            Mode::Continuous => "Continuous",
        }
    }
}

/// What a projection is and how it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// The projection's name.
    pub name: String,
    /// Its JavaScript.
    pub query: String,
    /// Its mode.
    pub mode: Mode,
    /// Whether it runs.
    pub enabled: bool,
    /// Whether `emit`/`linkTo`… may write.
    pub emit_enabled: bool,
    /// Whether emitted streams are listed in `$projections-<name>-emittedstreams`.
    pub track_emitted_streams: bool,
    /// Whether checkpoints are written (one-time and continuous).
    pub checkpoints_enabled: bool,
    /// The user it runs as (who created or last updated it); `None` in
    /// insecure mode.
    pub run_as: Option<String>,
    /// That user's groups then (KurrentDB keeps the roles with the
    /// projection too): reads and writes are checked against them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_as_groups: Vec<String>,
    /// A system projection (`$streams`, …): runs as the system, past ACLs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub system: bool,
    /// The engine version a client asked for (kept, not interpreted).
    #[serde(default)]
    pub engine_version: i32,
    /// Bumped by every reset: checkpoints of an older epoch are ignored,
    /// so the projection replays from the beginning.
    #[serde(default)]
    pub epoch: u64,
}

impl Settings {
    /// The user it runs as.
    pub fn run_as(&self) -> crate::RunAs {
        crate::RunAs {
            login: self.run_as.clone(),
            groups: self.run_as_groups.clone(),
        }
    }

    /// New settings for a projection created now.
    pub fn new(name: &str, query: &str, mode: Mode) -> Settings {
        Settings {
            name: name.to_owned(),
            query: query.to_owned(),
            mode,
            enabled: true,
            emit_enabled: false,
            track_emitted_streams: false,
            checkpoints_enabled: mode != Mode::Transient,
            run_as: None,
            run_as_groups: Vec::new(),
            system: false,
            engine_version: 1,
            epoch: 0,
        }
    }
}

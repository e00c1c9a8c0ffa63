//! A group's settings, named as KurrentDB names them, and its source.

use std::time::Duration;

use factum_core::{managed, Filter, FilterMatch, FilterOn, StreamName};
use serde::{Deserialize, Serialize};

use crate::error::PersistentError;

/// How a group hands events to its consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConsumerStrategy {
    /// Every event to the first connected consumer with room; the next one
    /// only when it is full.
    DispatchToSingle,
    /// Consumers in turn, skipping full ones.
    RoundRobin,
    /// Every event of one source stream to the same consumer (by a hash of
    /// the stream name), so one consumer sees a stream's events in order.
    Pinned,
}

impl ConsumerStrategy {
    /// KurrentDB's name for the strategy.
    pub fn name(self) -> &'static str {
        match self {
            ConsumerStrategy::DispatchToSingle => "DispatchToSingle",
            ConsumerStrategy::RoundRobin => "RoundRobin",
            ConsumerStrategy::Pinned => "Pinned",
        }
    }

    /// Parses KurrentDB's name (case-insensitive).
    pub fn parse(name: &str) -> Result<Self, PersistentError> {
        match name.to_ascii_lowercase().as_str() {
            "dispatchtosingle" => Ok(ConsumerStrategy::DispatchToSingle),
            "roundrobin" => Ok(ConsumerStrategy::RoundRobin),
            "pinned" => Ok(ConsumerStrategy::Pinned),
            _ => Err(PersistentError::InvalidSettings(format!(
                "unknown consumer strategy {name:?} (expected DispatchToSingle, RoundRobin or Pinned)"
            ))),
        }
    }
}

/// Where a new group starts reading its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartFrom {
    /// From the first event.
    Start,
    /// After the last event at the time the group first runs.
    End,
    /// From this stream revision (stream groups) or `$all` position
    /// (inclusive).
    At(u64),
}

/// The largest `live_buffer_size`, `read_batch_size` and
/// `history_buffer_size` (events): what a group reads ahead is held in
/// memory (ADR 21).
pub const MAX_BUFFER_SIZE: u32 = 10_000;
/// The largest `max_subscriber_count` (0, unlimited, stays allowed:
/// connections are bounded by the server's own limits).
pub const MAX_SUBSCRIBER_COUNT: u32 = 10_000;
/// The largest window a consumer may ask for (`buffer_size`: events it
/// holds unacked at once).
pub const MAX_CONSUMER_WINDOW: usize = 10_000;
/// A group's settings; [`Default`] gives KurrentDB's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GroupSettings {
    /// Where a new group starts.
    pub start_from: StartFrom,
    /// Deliver the events `$ce-`/`$et-` links point to (with the link),
    /// rather than the links.
    pub resolve_links: bool,
    /// Keep extra statistics (accepted and reported; Factum always keeps
    /// its statistics).
    pub extra_statistics: bool,
    /// An event not acked within this is retried; zero never times out.
    #[serde(with = "millis")]
    pub message_timeout: Duration,
    /// After this many retries an event is parked.
    pub max_retry_count: u32,
    /// Events read ahead of dispatch, at most.
    pub live_buffer_size: u32,
    /// Events read from the store per step.
    pub read_batch_size: u32,
    /// Kept for KurrentDB compatibility: the read-ahead is bounded by
    /// `live_buffer_size` alone.
    pub history_buffer_size: u32,
    /// A checkpoint is written at most this often…
    #[serde(with = "millis")]
    pub checkpoint_after: Duration,
    /// …and only when at least this many events were handled since the last;
    pub min_checkpoint_count: u32,
    /// at this many handled events one is written at once.
    pub max_checkpoint_count: u32,
    /// Consumers at once; zero is unlimited.
    pub max_subscriber_count: u32,
    /// How events are shared among consumers.
    pub consumer_strategy: ConsumerStrategy,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            start_from: StartFrom::End,
            resolve_links: false,
            extra_statistics: false,
            message_timeout: Duration::from_secs(30),
            max_retry_count: 10,
            live_buffer_size: 500,
            read_batch_size: 20,
            history_buffer_size: 500,
            checkpoint_after: Duration::from_secs(2),
            min_checkpoint_count: 10,
            max_checkpoint_count: 1000,
            max_subscriber_count: 0,
            consumer_strategy: ConsumerStrategy::RoundRobin,
        }
    }
}

impl GroupSettings {
    /// Checks the settings' consistency, as KurrentDB does on create/update.
    pub fn validate(&self) -> Result<(), PersistentError> {
        let bad = |m: &str| Err(PersistentError::InvalidSettings(m.to_owned()));
        if self.live_buffer_size == 0 {
            return bad("live buffer size must be positive");
        }
        if self.read_batch_size == 0 {
            return bad("read batch size must be positive");
        }
        if self.history_buffer_size == 0 {
            return bad("history buffer size must be positive");
        }
        for (name, value, max) in [
            ("live buffer size", self.live_buffer_size, MAX_BUFFER_SIZE),
            ("read batch size", self.read_batch_size, MAX_BUFFER_SIZE),
            (
                "history buffer size",
                self.history_buffer_size,
                MAX_BUFFER_SIZE,
            ),
            (
                "maximum subscriber count",
                self.max_subscriber_count,
                MAX_SUBSCRIBER_COUNT,
            ),
        ] {
            if value > max {
                return Err(PersistentError::InvalidSettings(format!(
                    "{name} {value} is more than the largest allowed, {max}"
                )));
            }
        }
        if self.read_batch_size > self.live_buffer_size {
            return bad("read batch size may not exceed the live buffer size");
        }
        if self.min_checkpoint_count > self.max_checkpoint_count {
            return bad("minimum checkpoint count may not exceed the maximum checkpoint count");
        }
        Ok(())
    }

    /// Events a group holds read ahead of dispatch.
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.live_buffer_size.max(self.read_batch_size) as usize
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// A `$all` filter in a form that can be stored (a compiled regex cannot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterSpec {
    /// Match on event types (`true`) or stream names.
    pub on_event_type: bool,
    /// Prefixes (any matches), when no regex is given.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// A regular expression.
    #[serde(default)]
    pub regex: Option<String>,
}

impl FilterSpec {
    /// Compiles the filter with the one filter type in core (a regex wins
    /// over prefixes; look-ahead only in the linear-time forms it accepts).
    pub fn compile(&self) -> Result<Filter, PersistentError> {
        let on = if self.on_event_type {
            FilterOn::EventType
        } else {
            FilterOn::StreamName
        };
        Filter::from_parts(
            on,
            self.prefixes.clone(),
            self.regex.as_deref().unwrap_or(""),
        )
        .map_err(|e| PersistentError::InvalidSettings(e.to_string()))
    }

    /// Describes a store filter.
    pub fn from_filter(filter: &Filter) -> Self {
        let (prefixes, regex) = match &filter.matcher {
            FilterMatch::Prefixes(p) => (p.clone(), None),
            FilterMatch::Regex(r) => (Vec::new(), Some(r.as_str().to_owned())),
        };
        FilterSpec {
            on_event_type: filter.on == FilterOn::EventType,
            prefixes,
            regex,
        }
    }
}

/// What a group reads: one stream (a user stream, `$ce-…`, `$et-…`) or
/// the global log, optionally filtered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GroupSource {
    /// One stream.
    Stream(String),
    /// `$all`.
    All(Option<FilterSpec>),
}

impl GroupSource {
    /// A stream source; `$all` is refused (use [`GroupSource::All`]).
    pub fn stream(name: &StreamName) -> Self {
        GroupSource::Stream(name.as_str().to_owned())
    }

    /// The name groups are keyed by: the stream, or `$all`.
    pub fn name(&self) -> &str {
        match self {
            GroupSource::Stream(s) => s,
            GroupSource::All(_) => "$all",
        }
    }

    /// True for `$all` groups.
    pub fn is_all(&self) -> bool {
        matches!(self, GroupSource::All(_))
    }
}

/// How a group is named: its source and its group name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    source: String,
    group: String,
}

impl GroupKey {
    /// A key; the group name must be non-empty and free of control characters.
    pub fn new(
        source: impl Into<String>,
        group: impl Into<String>,
    ) -> Result<Self, PersistentError> {
        let (source, group) = (source.into(), group.into());
        if group.is_empty() {
            return Err(PersistentError::InvalidSettings(
                "group name is empty".into(),
            ));
        }
        if group.chars().any(char::is_control) {
            return Err(PersistentError::InvalidSettings(format!(
                "group name {group:?} contains a control character"
            )));
        }
        StreamName::new(&source).map_err(|e| PersistentError::InvalidSettings(e.to_string()))?;
        let key = GroupKey { source, group };
        // The checkpoint and parked streams must be valid names too (the
        // longest of the two is the checkpoint stream).
        managed::persistent_checkpoint_stream(&key.source, &key.group).map_err(|e| {
            PersistentError::InvalidSettings(format!(
                "source and group names too long for the group's streams: {e}"
            ))
        })?;
        Ok(key)
    }

    /// The source stream, or `$all`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// `$persistentsubscription-<source>::<group>-checkpoint`: where the
    /// group's checkpoint lives (named by `factum_core::managed`).
    pub fn checkpoint_stream(&self) -> StreamName {
        managed::persistent_checkpoint_stream(&self.source, &self.group)
            .expect("checked by GroupKey::new: the longest of the group's names is valid")
    }

    /// `$persistentsubscription-<source>::<group>-parked`: links to the
    /// events parked by the group (named by `factum_core::managed`).
    pub fn parked_stream(&self) -> StreamName {
        managed::persistent_parked_stream(&self.source, &self.group)
            .expect("checked by GroupKey::new: the longest of the group's names is valid")
    }
}

impl std::fmt::Display for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}::{}", self.source, self.group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use factum_core::RecordedEvent;

    #[test]
    fn settings_validate_and_round_trip() {
        let s = GroupSettings::default();
        s.validate().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"messageTimeout\":30000"), "{json}");
        assert_eq!(serde_json::from_str::<GroupSettings>(&json).unwrap(), s);
        let bad = GroupSettings {
            min_checkpoint_count: 5,
            max_checkpoint_count: 1,
            ..Default::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(PersistentError::InvalidSettings(_))
        ));
        assert_eq!(
            ConsumerStrategy::parse("pinned").unwrap(),
            ConsumerStrategy::Pinned
        );
        assert!(ConsumerStrategy::parse("Random").is_err());
    }

    #[test]
    fn keys_name_their_streams() {
        let k = GroupKey::new("$all", "g1").unwrap();
        assert_eq!(
            k.parked_stream().as_str(),
            "$persistentsubscription-$all::g1-parked"
        );
        assert!(GroupKey::new("orders", "").is_err());
        assert!(GroupKey::new("x".repeat(1000), "g").is_err());
        assert!(GroupKey::new("", "g").is_err());
    }

    #[test]
    fn filters_compile_with_look_around() {
        let f = FilterSpec {
            on_event_type: true,
            prefixes: vec![],
            regex: Some(r"^(?!(\$.+$|PersistentConfig\d+$|Result$))".into()),
        };
        let c = f.compile().unwrap();
        let ev = |t: &str| RecordedEvent {
            id: factum_core::Uuid::nil(),
            stream: StreamName::new("s").unwrap(),
            revision: factum_core::StreamRevision(0),
            position: factum_core::Position(0),
            event_type: t.into(),
            content_type: factum_core::ContentType::Json,
            data: Default::default(),
            metadata: Default::default(),
            created: factum_core::Timestamp(0),
            link: None,
        };
        assert!(c.matches(&ev("OrderPlaced")));
        assert!(!c.matches(&ev("$metadata")));
        let bad = FilterSpec {
            regex: Some("(".into()),
            ..f
        };
        assert!(bad.compile().is_err());
        let back = FilterSpec::from_filter(&Filter::stream_prefix(["a-"]));
        assert_eq!(back.prefixes, vec!["a-"]);
    }
}

//! Command context and event metadata: correlation, causation, actor,
//! schema version and custom keys, as JSON in every event's metadata.
//!
//! Keys written: `$correlationId` and `$causationId` (KurrentDB's names),
//! `$actor`, `$schemaVersion`, and the context's custom keys (which may not
//! start with `$`: that prefix is reserved). Timestamps are not written here:
//! the store records when it committed each event.

use factum_core::{RecordedEvent, Uuid};
use serde_json::{Map, Value};

use crate::event::CodecError;

/// Metadata key of the correlation id (KurrentDB's name).
pub const CORRELATION_ID: &str = "$correlationId";
/// Metadata key of the causation id (KurrentDB's name).
pub const CAUSATION_ID: &str = "$causationId";
/// Metadata key of the acting user or service.
pub const ACTOR: &str = "$actor";
/// Metadata key of the event's schema version (absent means 1).
pub const SCHEMA_VERSION: &str = "$schemaVersion";

/// Which data subject an event is about and which of its fields are
/// personal (crypto-shredding, ADR 36): written as `$subject` and
/// `$personalFields` metadata, so a store that shreds (a server started
/// with a master key, or `factum_crypto::Shredding`) encrypts those fields
/// with the subject's key, and `forget(subject)` erases them everywhere.
/// Use an opaque subject id (`customer-<uuid>`): ids, stream names, event
/// types and other metadata are not encrypted. Erased fields read as
/// `null`: make personal fields `Option<…>` so events still decode after
/// a `forget`.
///
/// ```
/// use factum::context::PersonalData;
/// let p = PersonalData::subject("customer-42").fields(["email", "name"]);
/// assert_eq!(p.personal_fields, vec!["email", "name"]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonalData {
    /// The data subject's id.
    pub subject: String,
    /// The personal top-level fields of the event's data; empty: all of it.
    pub personal_fields: Vec<String>,
}

impl PersonalData {
    /// About `subject`, the whole data personal (until [`fields`](Self::fields)).
    pub fn subject(subject: impl Into<String>) -> Self {
        PersonalData {
            subject: subject.into(),
            personal_fields: Vec::new(),
        }
    }

    /// Only these top-level fields are personal.
    pub fn fields<I: IntoIterator<Item = F>, F: Into<String>>(mut self, fields: I) -> Self {
        self.personal_fields = fields.into_iter().map(Into::into).collect();
        self
    }

    /// Adds the convention's keys to a metadata object.
    fn write_into(&self, map: &mut Map<String, Value>) {
        use factum_core::personal::{PERSONAL_FIELDS, SUBJECT};
        map.insert(SUBJECT.into(), Value::String(self.subject.clone()));
        if !self.personal_fields.is_empty() {
            map.insert(
                PERSONAL_FIELDS.into(),
                Value::Array(
                    self.personal_fields
                        .iter()
                        .map(|f| Value::String(f.clone()))
                        .collect(),
                ),
            );
        }
    }
}

/// Who asked for a command and why: flows into every event it produces.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandContext {
    /// Id of this command (fresh by default).
    pub command_id: Uuid,
    /// Ties together everything caused by one original request.
    pub correlation_id: String,
    /// The message (command or event) that directly caused this command.
    pub causation_id: String,
    /// The user or service acting, if known.
    pub actor: Option<String>,
    /// Any other keys, copied into every event's metadata.
    pub custom: Map<String, Value>,
}

impl Default for CommandContext {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandContext {
    /// A context for a new request: a fresh command id, which is also its
    /// correlation and causation id.
    pub fn new() -> Self {
        let id = Uuid::new_v4();
        CommandContext {
            command_id: id,
            correlation_id: id.to_string(),
            causation_id: id.to_string(),
            actor: None,
            custom: Map::new(),
        }
    }

    /// A context for a command issued in reaction to `event` (a process
    /// manager or policy): same correlation id, caused by that event.
    pub fn caused_by(event: &RecordedEvent) -> Self {
        let meta = EventMetadata::parse(&event.metadata).unwrap_or_default();
        let mut ctx = Self::new();
        ctx.correlation_id = meta.correlation_id.unwrap_or_else(|| event.id.to_string());
        ctx.causation_id = event.id.to_string();
        ctx.actor = meta.actor;
        ctx
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = id.into();
        self
    }

    /// Sets the causation id.
    pub fn causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = id.into();
        self
    }

    /// Sets the actor.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Adds a custom key (keys starting with `$` are refused when events
    /// are written: that prefix is reserved).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.custom.insert(key.into(), value.into());
        self
    }

    /// The metadata JSON of one event written under this context.
    pub fn event_metadata(&self, schema_version: u32) -> Result<Vec<u8>, CodecError> {
        self.event_metadata_for(schema_version, None)
    }

    /// The metadata JSON of one event written under this context, naming
    /// its data subject and personal fields when it has some.
    pub fn event_metadata_for(
        &self,
        schema_version: u32,
        personal: Option<&PersonalData>,
    ) -> Result<Vec<u8>, CodecError> {
        if let Some(k) = self.custom.keys().find(|k| k.starts_with('$')) {
            return Err(CodecError::Metadata(format!(
                "custom key {k:?} starts with '$', which is reserved for system keys"
            )));
        }
        let mut map = self.custom.clone();
        map.insert(
            CORRELATION_ID.into(),
            Value::String(self.correlation_id.clone()),
        );
        map.insert(
            CAUSATION_ID.into(),
            Value::String(self.causation_id.clone()),
        );
        if let Some(a) = &self.actor {
            map.insert(ACTOR.into(), Value::String(a.clone()));
        }
        map.insert(SCHEMA_VERSION.into(), Value::from(schema_version));
        if let Some(p) = personal {
            p.write_into(&mut map);
        }
        serde_json::to_vec(&Value::Object(map)).map_err(|source| CodecError::Encode {
            what: "event metadata".into(),
            source,
        })
    }
}

/// An event's metadata, parsed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventMetadata {
    /// `$correlationId`.
    pub correlation_id: Option<String>,
    /// `$causationId`.
    pub causation_id: Option<String>,
    /// `$actor`.
    pub actor: Option<String>,
    /// `$schemaVersion` (1 when absent).
    pub schema_version: u32,
    /// Every other key.
    pub custom: Map<String, Value>,
}

impl EventMetadata {
    /// Parses metadata bytes; empty bytes are empty metadata (version 1).
    /// Metadata written by other clients that is not a JSON object is an
    /// error; a missing or non-numeric `$schemaVersion` means 1.
    pub fn parse(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut out = EventMetadata {
            schema_version: 1,
            ..Self::default()
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(out);
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| CodecError::Metadata(format!("invalid JSON: {e}")))?;
        let Value::Object(mut map) = value else {
            return Err(CodecError::Metadata(format!("found {value}")));
        };
        let mut take = |k: &str| match map.remove(k) {
            Some(Value::String(s)) => Some(s),
            Some(other) => Some(other.to_string()),
            None => None,
        };
        out.correlation_id = take(CORRELATION_ID);
        out.causation_id = take(CAUSATION_ID);
        out.actor = take(ACTOR);
        if let Some(v) = map.remove(SCHEMA_VERSION) {
            out.schema_version = v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .unwrap_or(1);
        }
        out.custom = map;
        Ok(out)
    }
}

/// The schema version in metadata bytes, parsing only what it must
/// (1 when absent or unreadable).
pub fn schema_version_of(metadata: &[u8]) -> u32 {
    // Fast path: our own writer puts `$schemaVersion` in every event; most
    // events need no full parse to find it.
    let key = b"\"$schemaVersion\":";
    let Some(at) = metadata.windows(key.len()).position(|w| w == key) else {
        return 1;
    };
    let digits: Vec<u8> = metadata[at + key.len()..]
        .iter()
        .skip_while(|c| c.is_ascii_whitespace())
        .take_while(|c| c.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| EventMetadata::parse(metadata).map_or(1, |m| m.schema_version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_flows_into_metadata_and_back() {
        let ctx = CommandContext::new()
            .correlation_id("corr-1")
            .causation_id("cause-1")
            .actor("alice")
            .with("tenant", "acme");
        let bytes = ctx.event_metadata(3).unwrap();
        let m = EventMetadata::parse(&bytes).unwrap();
        assert_eq!(m.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(m.causation_id.as_deref(), Some("cause-1"));
        assert_eq!(m.actor.as_deref(), Some("alice"));
        assert_eq!(m.schema_version, 3);
        assert_eq!(m.custom["tenant"], "acme");
        assert_eq!(schema_version_of(&bytes), 3);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["$correlationId"], "corr-1");
        assert_eq!(v["$causationId"], "cause-1");
    }

    #[test]
    fn reserved_custom_keys_are_refused_and_odd_metadata_is_tolerated() {
        let ctx = CommandContext::new().with("$correlationId", "forged");
        assert!(ctx.event_metadata(1).is_err());
        assert_eq!(EventMetadata::parse(b"").unwrap().schema_version, 1);
        assert!(EventMetadata::parse(b"[1]").is_err());
        assert!(EventMetadata::parse(b"{oops").is_err());
        assert_eq!(schema_version_of(b"{\"$schemaVersion\": \"x\"}"), 1);
        assert_eq!(schema_version_of(b"{\"a\":1}"), 1);
        assert_eq!(schema_version_of(b"garbage"), 1);
    }

    #[test]
    fn caused_by_keeps_correlation() {
        let ctx = CommandContext::new().correlation_id("c").actor("bob");
        let ev = RecordedEvent {
            id: Uuid::new_v4(),
            stream: factum_core::StreamName::new("s-1").unwrap(),
            revision: factum_core::StreamRevision(0),
            position: factum_core::Position(0),
            event_type: "X".into(),
            content_type: factum_core::ContentType::Json,
            data: factum_core::Bytes::from_static(b"{}"),
            metadata: ctx.event_metadata(1).unwrap().into(),
            created: factum_core::Timestamp(0),
            link: None,
        };
        let next = CommandContext::caused_by(&ev);
        assert_eq!(next.correlation_id, "c");
        assert_eq!(next.causation_id, ev.id.to_string());
        assert_eq!(next.actor.as_deref(), Some("bob"));
    }
}

//! Typed domain events: stable type names, schema versions, JSON encoding.
//!
//! A domain event type is a serde enum, adjacently tagged with
//! `#[serde(tag = "type", content = "data")]`: each variant's serde name is
//! its stable event type (what the store records), and its fields are the
//! event's JSON data. [`DomainEvent::event_type`] names the same string
//! without serializing; [`encode`] checks that both agree, so a rename of a
//! variant can never silently change what is written.
//!
//! ```
//! use factum::DomainEvent;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! #[serde(tag = "type", content = "data")]
//! enum AccountEvent {
//!     #[serde(rename = "AccountOpened")]
//!     Opened { owner: String },
//!     #[serde(rename = "MoneyDeposited")]
//!     Deposited { amount: u64, currency: String },
//! }
//!
//! impl DomainEvent for AccountEvent {
//!     fn event_type(&self) -> &'static str {
//!         match self {
//!             AccountEvent::Opened { .. } => "AccountOpened",
//!             AccountEvent::Deposited { .. } => "MoneyDeposited",
//!         }
//!     }
//!     fn schema_version(event_type: &str) -> u32 {
//!         if event_type == "MoneyDeposited" { 2 } else { 1 }
//!     }
//! }
//!
//! let e = AccountEvent::Opened { owner: "ada".into() };
//! let (event_type, data) = factum::event::encode(&e).unwrap();
//! assert_eq!(event_type, "AccountOpened");
//! assert_eq!(data, br#"{"owner":"ada"}"#);
//! let back: AccountEvent = factum::event::decode("AccountOpened", &data).unwrap();
//! assert_eq!(back, e);
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// A typed domain event with stable type names and per-type schema versions.
///
/// See the [module documentation](self) for the serde shape it expects.
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable event type recorded in the store, e.g. `MoneyDeposited`.
    /// Never a Rust type path: it must survive refactoring.
    fn event_type(&self) -> &'static str;

    /// The current schema version of an event type (default 1). Events are
    /// written with it (in metadata, `$schemaVersion`) and older ones are
    /// upcast to it on read.
    fn schema_version(event_type: &str) -> u32 {
        let _ = event_type;
        1
    }

    /// The data subject this event is about and its personal fields
    /// (crypto-shredding, ADR 36), written into its metadata; `None` (the
    /// default): nothing personal.
    fn personal_data(&self) -> Option<crate::context::PersonalData> {
        None
    }
}

/// Encoding or decoding an event, a snapshot or metadata failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be serialized to JSON.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The stored JSON does not match the type it is read as.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// What was being decoded (event type and version, snapshot …).
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The event type is not adjacently tagged as documented, or its serde
    /// tag disagrees with `event_type()`.
    #[error("event type mismatch: {0}")]
    Shape(String),
    /// No upcaster or downcaster leads from the stored schema version to the
    /// wanted one.
    #[error("no {direction} path for event type {event_type} from schema version {from} to {to}")]
    NoPath {
        /// `upcast` or `downcast`.
        direction: &'static str,
        /// The event type.
        event_type: String,
        /// Stored version.
        from: u32,
        /// Wanted version.
        to: u32,
    },
    /// An upcaster or downcaster rejected the data.
    #[error("converting {event_type} from schema version {from} to {to} failed: {reason}")]
    Convert {
        /// The event type.
        event_type: String,
        /// Version of the input.
        from: u32,
        /// Version of the output.
        to: u32,
        /// Why.
        reason: String,
    },
    /// Event metadata is present but is not a JSON object.
    #[error("event metadata is not a JSON object: {0}")]
    Metadata(String),
}

/// Serializes an event: its stable type and its JSON data.
pub fn encode<E: DomainEvent>(event: &E) -> Result<(&'static str, Vec<u8>), CodecError> {
    let event_type = event.event_type();
    let value = serde_json::to_value(event).map_err(|source| CodecError::Encode {
        what: format!("event {event_type}"),
        source,
    })?;
    let Value::Object(mut map) = value else {
        return Err(CodecError::Shape(format!(
            "{event_type} did not serialize to an object; mark the enum #[serde(tag = \"type\", content = \"data\")]"
        )));
    };
    match map.get("type") {
        Some(Value::String(t)) if t == event_type => {}
        Some(Value::String(t)) => {
            return Err(CodecError::Shape(format!(
                "event_type() says {event_type} but serde names the variant {t}"
            )))
        }
        _ => {
            return Err(CodecError::Shape(format!(
                "{event_type} has no \"type\" tag; mark the enum #[serde(tag = \"type\", content = \"data\")]"
            )))
        }
    }
    let data = map.remove("data").unwrap_or(Value::Null);
    let bytes = serde_json::to_vec(&data).map_err(|source| CodecError::Encode {
        what: format!("event {event_type}"),
        source,
    })?;
    Ok((event_type, bytes))
}

/// Deserializes an event from its type and JSON data (at the current schema
/// version; upcast first with [`crate::Upcasters`]).
pub fn decode<E: DomainEvent>(event_type: &str, data: &[u8]) -> Result<E, CodecError> {
    // Rebuild the adjacently tagged form around the raw bytes: no
    // intermediate `Value`, one pass of the parser.
    let tag = serde_json::to_string(event_type).map_err(|source| CodecError::Encode {
        what: "event type".into(),
        source,
    })?;
    let trimmed = trim_ascii(data);
    let mut doc = Vec::with_capacity(data.len() + tag.len() + 20);
    doc.extend_from_slice(b"{\"type\":");
    doc.extend_from_slice(tag.as_bytes());
    if !(trimmed.is_empty() || trimmed == b"null") {
        doc.extend_from_slice(b",\"data\":");
        doc.extend_from_slice(data);
    }
    doc.push(b'}');
    serde_json::from_slice(&doc).map_err(|source| CodecError::Decode {
        what: format!("event {event_type}"),
        source,
    })
}

/// Deserializes an event from its type and already-parsed JSON data.
pub fn decode_value<E: DomainEvent>(event_type: &str, data: Value) -> Result<E, CodecError> {
    let mut map = serde_json::Map::with_capacity(2);
    map.insert("type".into(), Value::String(event_type.to_owned()));
    if !data.is_null() {
        map.insert("data".into(), data);
    }
    serde_json::from_value(Value::Object(map)).map_err(|source| CodecError::Decode {
        what: format!("event {event_type}"),
        source,
    })
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(tag = "type", content = "data")]
    enum Ev {
        #[serde(rename = "Opened")]
        Opened { owner: String },
        #[serde(rename = "Closed")]
        Closed,
        #[serde(rename = "Liar")]
        Liar,
    }

    impl DomainEvent for Ev {
        fn event_type(&self) -> &'static str {
            match self {
                Ev::Opened { .. } => "Opened",
                Ev::Closed => "Closed",
                Ev::Liar => "SomethingElse",
            }
        }
    }

    #[test]
    fn round_trips_struct_and_unit_variants() {
        for e in [Ev::Opened { owner: "o".into() }, Ev::Closed] {
            let (t, data) = encode(&e).unwrap();
            assert_eq!(decode::<Ev>(t, &data).unwrap(), e);
            let v: Value = serde_json::from_slice(&data).unwrap();
            assert_eq!(decode_value::<Ev>(t, v).unwrap(), e);
        }
        assert_eq!(encode(&Ev::Closed).unwrap().1, b"null");
        assert_eq!(decode::<Ev>("Closed", b"").unwrap(), Ev::Closed);
    }

    #[test]
    fn mismatched_names_and_bad_data_are_errors() {
        assert!(matches!(encode(&Ev::Liar), Err(CodecError::Shape(_))));
        assert!(matches!(
            decode::<Ev>("Opened", b"{\"owner\":1}"),
            Err(CodecError::Decode { .. })
        ));
        assert!(decode::<Ev>("Unknown", b"{}").is_err());
        assert!(decode::<Ev>("Opened", b"{not json").is_err());
        // An injected tag cannot escape the type string.
        assert!(decode::<Ev>("Opened\",\"x\":\"", b"{\"owner\":\"o\"}").is_err());
    }
}

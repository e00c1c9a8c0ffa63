//! One event as a projection sees it.

use std::collections::HashMap;

use factum_core::{Position, RecordedEvent, StreamName, StreamRevision, Timestamp};
use serde::de::DeserializeOwned;

use crate::context::{schema_version_of, EventMetadata};
use crate::event::{self, CodecError, DomainEvent};
use crate::upcast::Upcasters;

/// A recorded event, with its data converted to the schema version the
/// projection reads (the newest the upcasters know, or the version it pins).
#[derive(Clone, Debug)]
pub struct Envelope {
    event: RecordedEvent,
    converted: Option<Vec<u8>>,
    schema_version: u32,
    broken: Option<String>,
}

impl Envelope {
    /// Wraps an event, converting its data with `upcasters` to the pinned
    /// version of its type, or else to the newest version known. A failed
    /// conversion is kept and reported when the projection applies it (the
    /// failure policy then decides).
    pub fn new(event: RecordedEvent, upcasters: &Upcasters, pinned: &HashMap<String, u32>) -> Self {
        let pin = pinned.get(&event.event_type).copied();
        if pin.is_none() && !upcasters.knows(&event.event_type) {
            let schema_version = if event.metadata.is_empty() {
                1
            } else {
                schema_version_of(&event.metadata)
            };
            return Envelope {
                event,
                converted: None,
                schema_version,
                broken: None,
            };
        }
        let stored = schema_version_of(&event.metadata);
        let target = pin.unwrap_or_else(|| upcasters.latest_version(&event.event_type).max(stored));
        let (converted, broken) =
            match upcasters.convert_bytes(&event.event_type, stored, target, &event.data) {
                Ok(std::borrow::Cow::Borrowed(_)) => (None, None),
                Ok(std::borrow::Cow::Owned(v)) => (Some(v), None),
                Err(e) => (None, Some(e.to_string())),
            };
        Envelope {
            event,
            converted,
            schema_version: if broken.is_some() { stored } else { target },
            broken,
        }
    }

    /// The event as stored.
    pub fn recorded(&self) -> &RecordedEvent {
        &self.event
    }

    /// Its global position.
    pub fn position(&self) -> Position {
        self.event.position
    }

    /// Its stream.
    pub fn stream(&self) -> &StreamName {
        &self.event.stream
    }

    /// Its revision in the stream.
    pub fn revision(&self) -> StreamRevision {
        self.event.revision
    }

    /// Its type.
    pub fn event_type(&self) -> &str {
        &self.event.event_type
    }

    /// When the store committed it.
    pub fn created(&self) -> Timestamp {
        self.event.created
    }

    /// The schema version of [`data`](Self::data).
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }

    /// The JSON data, converted.
    pub fn data(&self) -> &[u8] {
        self.converted.as_deref().unwrap_or(&self.event.data)
    }

    /// Why the conversion failed, if it did.
    pub fn conversion_error(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// The data as any deserializable type.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, CodecError> {
        if let Some(b) = &self.broken {
            return Err(CodecError::Shape(b.clone()));
        }
        serde_json::from_slice(self.data()).map_err(|source| CodecError::Decode {
            what: format!("event {} at {}", self.event_type(), self.position()),
            source,
        })
    }

    /// The event as a typed domain event.
    pub fn decode<E: DomainEvent>(&self) -> Result<E, CodecError> {
        if let Some(b) = &self.broken {
            return Err(CodecError::Shape(b.clone()));
        }
        event::decode(self.event_type(), self.data())
    }

    /// The metadata (correlation, causation, actor, custom keys).
    pub fn metadata(&self) -> Result<EventMetadata, CodecError> {
        EventMetadata::parse(&self.event.metadata)
    }
}

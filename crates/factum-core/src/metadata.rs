//! Stream metadata, stored as JSON in `$$<stream>` with KurrentDB's keys.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::model::{StreamRevision, Timestamp};

/// The event type of metadata events in `$$<stream>`.
pub const METADATA_EVENT_TYPE: &str = "$metadata";

/// A stream's metadata. Unknown keys are kept in `custom`.
#[derive(Clone, Default, PartialEq, Debug, Serialize, Deserialize)]
pub struct StreamMetadata {
    /// Keep only the newest N events visible to reads.
    #[serde(rename = "$maxCount", default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
    /// Hide events older than this many seconds from reads.
    #[serde(rename = "$maxAge", default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
    /// Hide events with a revision below this ("truncate before").
    #[serde(rename = "$tb", default, skip_serializing_if = "Option::is_none")]
    pub truncate_before: Option<u64>,
    /// Cache-control hint in seconds (kept for KurrentDB compatibility).
    #[serde(
        rename = "$cacheControl",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_control: Option<u64>,
    /// Access control list (stored; enforced once ACLs land).
    #[serde(rename = "$acl", default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<Value>,
    /// Any other keys.
    #[serde(flatten)]
    pub custom: Map<String, Value>,
}

impl StreamMetadata {
    /// Parses metadata JSON, checking the reserved keys' types.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidInput(format!("stream metadata is not valid: {e}")))
    }

    /// Serializes to JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("metadata always serializes")
    }

    /// `$maxAge` as a duration.
    pub fn max_age(&self) -> Option<Duration> {
        self.max_age.map(Duration::from_secs)
    }

    /// The lowest revision visible under `$tb` and `$maxCount`, given the
    /// stream's last revision.
    pub fn first_visible_revision(&self, last: StreamRevision) -> u64 {
        let by_tb = self.truncate_before.unwrap_or(0);
        let by_count = self
            .max_count
            .map_or(0, |n| last.0.saturating_add(1).saturating_sub(n));
        by_tb.max(by_count)
    }

    /// Events created before this time are hidden by `$maxAge`.
    pub fn oldest_visible(&self, now: Timestamp) -> Option<Timestamp> {
        self.max_age().map(|age| now.saturating_sub(age))
    }
}

/// The metadata of a stream as read, with the revision of the metadata stream.
#[derive(Clone, Default, PartialEq, Debug)]
pub struct StreamMetadataResult {
    /// Revision of `$$<stream>` holding it; `None` when never set.
    pub revision: Option<StreamRevision>,
    /// The metadata (default when never set).
    pub metadata: StreamMetadata,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_custom_values_round_trip() {
        let m = StreamMetadata::from_json(br#"{"$maxCount":3,"$tb":2,"owner":"ops"}"#).unwrap();
        assert_eq!(m.max_count, Some(3));
        assert_eq!(m.truncate_before, Some(2));
        assert_eq!(m.custom["owner"], "ops");
        assert_eq!(StreamMetadata::from_json(&m.to_json()).unwrap(), m);
        assert_eq!(m.first_visible_revision(StreamRevision(9)), 7);
        assert!(StreamMetadata::from_json(br#"{"$maxCount":"x"}"#).is_err());
        assert!(StreamMetadata::from_json(b"[").is_err());
    }
}

//! A group's system streams, as KurrentDB names and fills them: the
//! checkpoint (`…-checkpoint`, `$maxCount` 1; a revision, or
//! `"C:<p>/P:<p>"` for `$all`) and the parked links (`…-parked`, `$>` events
//! whose data is `"<revision>@<stream>"`).

use factum_core::{
    ContentType, EventData, EventStore, ExpectedRevision, Link, ReadStream, RecordedEvent,
    StreamMetadata, StreamName, StreamRevision,
};
use serde_json::{json, Value};

use crate::error::{PersistentError, Result};
use crate::settings::GroupKey;

/// The event type of checkpoint events (KurrentDB's name).
pub const CHECKPOINT_EVENT_TYPE: &str = "$SubscriptionCheckpoint";
/// The event type of parked-message links.
pub const PARKED_EVENT_TYPE: &str = "$>";

/// The last revision of a stream (the link revision for `$ce-`/`$et-`),
/// `None` when it has no events.
pub(crate) async fn last_revision<S: EventStore>(
    store: &S,
    stream: &StreamName,
) -> Result<Option<u64>> {
    match store
        .read_stream(ReadStream::backwards(stream.clone()).max_count(1))
        .await
    {
        Ok(events) => Ok(events.first().map(|e| e.read_revision().0)),
        Err(factum_core::Error::StreamNotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The metadata key of the `$all` checkpoints this build writes (ADR 25):
/// their position is in the numbering where the first event is at 1. A
/// `C:…/P:…` checkpoint without it was written by a build that numbered
/// from 0, and names the event now one position later.
pub const POSITIONS_FROM_ONE_KEY: &str = "$positionsFromOne";

/// The group's last written checkpoint.
pub(crate) async fn read_checkpoint<S: EventStore>(
    store: &S,
    key: &GroupKey,
) -> Result<Option<u64>> {
    let events = match store
        .read_stream(ReadStream::backwards(key.checkpoint_stream()).max_count(1))
        .await
    {
        Ok(e) => e,
        Err(factum_core::Error::StreamNotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some(event) = events.first() else {
        return Ok(None);
    };
    let value: Value = serde_json::from_slice(&event.data).map_err(|e| {
        PersistentError::Store(factum_core::Error::InvalidInput(format!(
            "checkpoint of {key} is not JSON: {e}"
        )))
    })?;
    let place = parse_checkpoint(&value).ok_or_else(|| {
        PersistentError::Store(factum_core::Error::InvalidInput(format!(
            "checkpoint of {key} is not a revision or a C:…/P:… position: {value}"
        )))
    })?;
    Ok(Some(if value.is_string() && !positions_from_one(event) {
        place.saturating_add(1)
    } else {
        place
    }))
}

/// Whether a checkpoint event says its position numbers the first event 1.
fn positions_from_one(event: &RecordedEvent) -> bool {
    serde_json::from_slice::<Value>(&event.metadata)
        .ok()
        .and_then(|m| m.get(POSITIONS_FROM_ONE_KEY).and_then(Value::as_bool))
        .unwrap_or(false)
}

/// A checkpoint as KurrentDB writes it: a revision number, or
/// `"C:<commit>/P:<prepare>"` for `$all`.
fn parse_checkpoint(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s
            .strip_prefix("C:")
            .and_then(|r| r.split('/').next())
            .and_then(|c| c.parse().ok()),
        _ => None,
    }
}

/// The checkpoint event for a place in the source.
pub(crate) fn checkpoint_event(source_is_all: bool, place: u64) -> factum_core::Result<EventData> {
    if source_is_all {
        let meta = json!({ POSITIONS_FROM_ONE_KEY: true });
        Ok(EventData::json(
            CHECKPOINT_EVENT_TYPE,
            &json!(format!("C:{place}/P:{place}")),
        )?
        .with_metadata(meta.to_string().into_bytes()))
    } else {
        EventData::json(CHECKPOINT_EVENT_TYPE, &json!(place))
    }
}

/// Sets `$maxCount` 1 on a stream (the checkpoint stream keeps only its last).
pub(crate) async fn keep_last_only<S: EventStore>(
    store: &S,
    stream: &StreamName,
) -> factum_core::Result<()> {
    let meta = StreamMetadata {
        max_count: Some(1),
        ..Default::default()
    };
    store
        .set_stream_metadata(stream.clone(), ExpectedRevision::Any, meta)
        .await
        .map(|_| ())
}

/// The `$>` link that parks `event`, with why and, when it came through a
/// `$ce-`/`$et-` stream, that link in its metadata (so a replay delivers it
/// as it was first delivered).
pub(crate) fn parked_link(event: &RecordedEvent, retry_count: u32, reason: &str) -> EventData {
    let mut meta = json!({ "$parkedReason": reason, "$retryCount": retry_count });
    if let Some(link) = &event.link {
        meta["$linkStream"] = json!(link.stream.as_str());
        meta["$linkRevision"] = json!(link.revision.0);
    }
    EventData::new(
        PARKED_EVENT_TYPE,
        ContentType::Binary,
        format!("{}@{}", event.revision, event.stream).into_bytes(),
    )
    .with_metadata(meta.to_string().into_bytes())
}

/// The event a parked link points at, with the link it was read through;
/// `None` when it no longer exists (or the link is malformed).
pub(crate) async fn resolve_parked<S: EventStore>(
    store: &S,
    link: &RecordedEvent,
) -> Result<Option<RecordedEvent>> {
    let text = String::from_utf8_lossy(&link.data);
    let Some((revision, stream)) = text
        .split_once('@')
        .and_then(|(r, s)| Some((r.parse::<u64>().ok()?, StreamName::new(s).ok()?)))
    else {
        tracing::warn!("parked link {text:?} in {} is malformed", link.stream);
        return Ok(None);
    };
    let read = ReadStream::forwards(stream)
        .from_revision(StreamRevision(revision))
        .max_count(1);
    let mut event = match store.read_stream(read).await {
        Ok(events) => match events.into_iter().next() {
            Some(e) if e.revision.0 == revision => e,
            _ => return Ok(None),
        },
        Err(
            factum_core::Error::StreamNotFound { .. } | factum_core::Error::StreamDeleted { .. },
        ) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let meta: Value = serde_json::from_slice(&link.metadata).unwrap_or(Value::Null);
    if let (Some(s), Some(r)) = (
        meta.get("$linkStream").and_then(Value::as_str),
        meta.get("$linkRevision").and_then(Value::as_u64),
    ) {
        if let Ok(stream) = StreamName::new(s) {
            event.link = Some(Link {
                stream,
                revision: StreamRevision(r),
            });
        }
    }
    Ok(Some(event))
}

/// Events in the parked stream not yet replayed.
pub(crate) async fn parked_count<S: EventStore>(store: &S, stream: &StreamName) -> Result<u64> {
    let Some(last) = last_revision(store, stream).await? else {
        return Ok(0);
    };
    let meta = store.stream_metadata(stream.clone()).await?.metadata;
    Ok((last + 1).saturating_sub(meta.truncate_before.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_parse_in_both_forms() {
        assert_eq!(parse_checkpoint(&json!(42)), Some(42));
        assert_eq!(parse_checkpoint(&json!("C:17/P:17")), Some(17));
        assert_eq!(parse_checkpoint(&json!("17")), None);
        assert_eq!(parse_checkpoint(&json!(null)), None);
        let e = checkpoint_event(true, 17).unwrap();
        assert_eq!(
            parse_checkpoint(&serde_json::from_slice(&e.data).unwrap()),
            Some(17)
        );
    }

    /// A `$all` checkpoint this build writes says its numbering (ADR 25);
    /// one without the mark was written by a build that numbered from 0.
    #[test]
    fn all_checkpoints_say_their_numbering() {
        let recorded = |data: EventData| RecordedEvent {
            id: factum_core::Uuid::new_v4(),
            stream: StreamName::new("$persistentsubscription-$all::g-checkpoint").unwrap(),
            revision: StreamRevision(0),
            position: factum_core::Position(1),
            event_type: data.event_type,
            content_type: data.content_type,
            data: data.data,
            metadata: data.metadata,
            created: factum_core::Timestamp(0),
            link: None,
        };
        let new = recorded(checkpoint_event(true, 17).unwrap());
        assert!(positions_from_one(&new));
        let old = recorded(EventData::json(CHECKPOINT_EVENT_TYPE, &json!("C:17/P:17")).unwrap());
        assert!(!positions_from_one(&old));
        // Revisions (stream groups) carry no mark and need none.
        let revision = recorded(checkpoint_event(false, 17).unwrap());
        assert!(!positions_from_one(&revision));
        assert_eq!(revision.metadata.len(), 0);
    }
}

//! [`Shredding`]: any [`EventStore`] with the subject convention applied —
//! the one place every append and every read passes. The server,
//! embedded use, subscriptions, consumer groups and the toolkit sit above
//! it and see plaintext; the backend below sees only ciphertext for
//! personal fields.
//!
//! An event whose metadata cannot name a subject (a byte search, no
//! parsing) passes through untouched, both ways. `forget` destroys the
//! subject's key, then records who asked, and when, in
//! [`FORGOTTEN_SUBJECTS_STREAM`] (a stream Factum manages, ADR 16).

use std::sync::Arc;

use factum_core::managed::FORGOTTEN_SUBJECTS_STREAM;
use factum_core::{
    AppendResult, DeleteResult, Error, EventData, EventStore, ExpectedRevision, MultiAppend,
    MultiAppendResult, Position, ReadAll, ReadStream, RecordedEvent, Result, StreamMetadata,
    StreamMetadataResult, StreamName, Subscribe, Subscription, SubscriptionMessage,
};
use futures_util::StreamExt;

use crate::convention::{self, Revealed};
use crate::key_store::SubjectKeys;

/// The type of the audit events in [`FORGOTTEN_SUBJECTS_STREAM`].
pub const SUBJECT_FORGOTTEN_EVENT: &str = "$SubjectForgotten";

/// What `forget` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forgotten {
    /// The subject.
    pub subject: String,
    /// Whether it had a key (false: nothing of it was ever written
    /// encrypted, or it was forgotten before).
    pub had_key: bool,
    /// Where the audit event stands in `$all`.
    pub audit_position: Position,
}

/// A store whose events' personal fields are encrypted per data subject.
pub struct Shredding<S> {
    inner: Arc<S>,
    keys: Arc<dyn SubjectKeys>,
}

impl<S> Clone for Shredding<S> {
    fn clone(&self) -> Self {
        Shredding {
            inner: self.inner.clone(),
            keys: self.keys.clone(),
        }
    }
}

impl<S: EventStore> Shredding<S> {
    /// `store` with the subjects' keys in `keys`.
    pub fn new(store: Arc<S>, keys: Arc<dyn SubjectKeys>) -> Self {
        Shredding { inner: store, keys }
    }

    /// The store underneath (ciphertext).
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// Destroys `subject`'s key — every personal field of it, wherever the
    /// log was copied, reads as erased from now on — and appends an audit
    /// event naming the subject, `by` (who asked) and the time. Forgetting
    /// a subject without a key still records the request. When the audit
    /// append fails the key is gone all the same: retrying records it.
    pub async fn forget(&self, subject: &str, by: &str) -> Result<Forgotten> {
        crate::key_store::check_subject(subject).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let had_key = self.keys.forget(subject).await.map_err(Error::from)?;
        let audit = EventData::json(
            SUBJECT_FORGOTTEN_EVENT,
            &serde_json::json!({
                "subject": subject,
                "by": by,
                "at": factum_core::Timestamp::now().to_rfc3339(),
                "hadKey": had_key,
            }),
        )?;
        let stream = StreamName::new(FORGOTTEN_SUBJECTS_STREAM)?;
        let written = self
            .inner
            .append(stream, ExpectedRevision::Any, vec![audit])
            .await
            .map_err(|e| {
                Error::unavailable(
                    factum_core::UnavailableReason::Unspecified,
                    format!(
                        "the key of subject {subject} was destroyed, but its audit event was not written ({e}); forget it again to record it"
                    ),
                )
            })?;
        tracing::info!(subject, by, had_key, "subject forgotten");
        Ok(Forgotten {
            subject: subject.to_owned(),
            had_key,
            audit_position: written.position,
        })
    }

    async fn seal_events(&self, events: Vec<EventData>) -> Result<Vec<EventData>> {
        seal_events(&*self.keys, events).await
    }
}

/// Encrypts the personal parts of the events that name a subject.
async fn seal_events(keys: &dyn SubjectKeys, mut events: Vec<EventData>) -> Result<Vec<EventData>> {
    for event in &mut events {
        let Some(personal) = convention::personal(&event.metadata)? else {
            continue;
        };
        let key = keys
            .find_or_create(&personal.subject)
            .await
            .map_err(Error::from)?;
        event.data = convention::encrypt(&personal, event.id, &event.data, &key)?;
    }
    Ok(events)
}

/// Decrypts (or erases) the personal parts of one read event.
async fn reveal(keys: &dyn SubjectKeys, mut event: RecordedEvent) -> Result<RecordedEvent> {
    // Reads answer what was written: an event whose metadata is now
    // malformed is passed through rather than failing the whole page.
    let Ok(Some(personal)) = convention::personal(&event.metadata) else {
        return Ok(event);
    };
    let key = keys.find(&personal.subject).await.map_err(Error::from)?;
    let binary = event.content_type == factum_core::ContentType::Binary;
    match convention::decrypt(&personal, event.id, &event.data, binary, key.as_ref())? {
        Revealed::Unchanged => {}
        Revealed::Data(data) => event.data = data,
        Revealed::Erased(data) => {
            event.data = data;
            event.metadata = convention::mark_erased(&event.metadata);
        }
    }
    Ok(event)
}

async fn reveal_all(
    keys: &dyn SubjectKeys,
    events: Vec<RecordedEvent>,
) -> Result<Vec<RecordedEvent>> {
    if !events
        .iter()
        .any(|e| convention::may_name_subject(&e.metadata))
    {
        return Ok(events);
    }
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        out.push(reveal(keys, event).await?);
    }
    Ok(out)
}

impl<S: EventStore> EventStore for Shredding<S> {
    async fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        let events = self.seal_events(events).await?;
        self.inner.append(stream, expected, events).await
    }

    async fn append_multi(&self, mut request: MultiAppend) -> Result<MultiAppendResult> {
        let (parts, events): (Vec<usize>, Vec<EventData>) =
            std::mem::take(&mut request.events).into_iter().unzip();
        let events = self.seal_events(events).await?;
        request.events = parts.into_iter().zip(events).collect();
        self.inner.append_multi(request).await
    }

    async fn read_stream(&self, request: ReadStream) -> Result<Vec<RecordedEvent>> {
        let events = self.inner.read_stream(request).await?;
        reveal_all(&*self.keys, events).await
    }

    async fn read_all(&self, request: ReadAll) -> Result<Vec<RecordedEvent>> {
        let events = self.inner.read_all(request).await?;
        reveal_all(&*self.keys, events).await
    }

    async fn subscribe(&self, request: Subscribe) -> Result<Subscription> {
        let inner = self.inner.subscribe(request).await?;
        let keys = self.keys.clone();
        Ok(Subscription::new(inner.then(move |message| {
            let keys = keys.clone();
            async move {
                match message {
                    Ok(SubscriptionMessage::Event(e))
                        if convention::may_name_subject(&e.metadata) =>
                    {
                        reveal(&*keys, e).await.map(SubscriptionMessage::Event)
                    }
                    other => other,
                }
            }
        })))
    }

    fn stream_metadata(
        &self,
        stream: StreamName,
    ) -> impl std::future::Future<Output = Result<StreamMetadataResult>> + Send {
        self.inner.stream_metadata(stream)
    }

    fn set_stream_metadata(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
    ) -> impl std::future::Future<Output = Result<AppendResult>> + Send {
        self.inner.set_stream_metadata(stream, expected, metadata)
    }

    fn delete_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> impl std::future::Future<Output = Result<DeleteResult>> + Send {
        self.inner.delete_stream(stream, expected)
    }

    fn tombstone_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> impl std::future::Future<Output = Result<DeleteResult>> + Send {
        self.inner.tombstone_stream(stream, expected)
    }

    fn head_position(&self) -> impl std::future::Future<Output = Result<Option<Position>>> + Send {
        self.inner.head_position()
    }
}

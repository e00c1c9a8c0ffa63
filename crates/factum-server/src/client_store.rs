//! The store as clients reach it: every handler, gRPC and HTTP alike,
//! reads and writes through [`ClientStore`], the one place where a
//! client's write to a stream Factum manages itself (persistent-subscription
//! configuration, checkpoints, parked messages; later users, settings,
//! projections: `factum_core::managed`) is refused with
//! `Error::AccessDenied`, before the store sees it. Reads pass through.
//! The subsystems that own those streams hold the store itself and write
//! through it directly.
//!
//! In secure mode it is also where stream ACLs are enforced (ADR 31):
//! every read, subscription, append, delete, tombstone and metadata access
//! asks [`Acls`] whether the request's principal (`auth::current`, set by
//! the authentication gate for the request's task) may, and answers
//! `Error::AccessDenied` (KurrentDB's AccessDenied) when not. A write to
//! `$$x` or `$settings` drops the cached ACLs it changes.

use std::sync::Arc;

use crate::acl::{Acls, Permission};
use crate::convert::LINK_EVENT_TYPE;
use factum_core::{
    managed, AppendResult, ContentType, DeleteResult, Error, EventData, EventStore,
    ExpectedRevision, Position, ReadAll, ReadStream, RecordedEvent, Result, StreamMetadata,
    StreamMetadataResult, StreamName, Subscribe, Subscription, SubscriptionMessage,
};
use futures_util::StreamExt;

/// `$all`, as ACLs name it.
const ALL: &str = "$all";

/// A store whose writes to managed streams are refused.
pub struct ClientStore<S> {
    inner: Arc<S>,
    acls: Option<Arc<Acls<S>>>,
}

impl<S> ClientStore<S> {
    /// Clients' view of `store` (insecure: no ACLs).
    pub fn new(store: Arc<S>) -> Self {
        ClientStore {
            inner: store,
            acls: None,
        }
    }

    /// Clients' view of `store`, every access checked against `acls`.
    pub fn with_acls(store: Arc<S>, acls: Arc<Acls<S>>) -> Self {
        ClientStore {
            inner: store,
            acls: Some(acls),
        }
    }
}

impl<S> ClientStore<S> {
    /// The store itself, for what the server writes on its own account
    /// (`$scavenges`, ADR 33).
    pub(crate) fn inner(&self) -> &Arc<S> {
        &self.inner
    }
}

impl<S: EventStore> ClientStore<S> {
    /// Refuses unless the request's principal has `permission` on `stream`
    /// (`$$x`: the metadata permissions of `x`).
    async fn check(&self, stream: &StreamName, permission: Permission) -> Result<()> {
        let Some(acls) = &self.acls else {
            return Ok(());
        };
        let (target, permission) = match stream.as_str().strip_prefix("$$") {
            Some(of) if !of.is_empty() => (
                StreamName::new(of)?,
                match permission {
                    Permission::Read | Permission::MetadataRead => Permission::MetadataRead,
                    _ => Permission::MetadataWrite,
                },
            ),
            _ => (stream.clone(), permission),
        };
        let who = crate::auth::current();
        if acls.allowed(&who, &target, permission).await? {
            Ok(())
        } else {
            Err(Error::AccessDenied(format!(
                "{} on {target} is not allowed for {}",
                permission.key(),
                match &who {
                    crate::auth::Principal::User(u) => format!("user '{}'", u.login),
                    crate::auth::Principal::Anonymous => "the anonymous user".to_owned(),
                }
            )))
        }
    }

    /// Refuses unless the request's principal may read `stream` (`$all`
    /// included): for readers that go around this store, such as a
    /// consumer group's connection.
    pub async fn check_read(&self, stream: &str) -> Result<()> {
        self.check(&StreamName::new(stream)?, Permission::Read)
            .await
    }

    /// May `who` read `stream`? Always without ACLs (insecure); an error
    /// deciding counts as no. For readers that resolve links outside this
    /// store (a consumer group's deliveries).
    pub async fn may_read(&self, who: &crate::auth::Principal, stream: &StreamName) -> bool {
        match &self.acls {
            None => true,
            Some(acls) => acls
                .allowed(who, stream, Permission::Read)
                .await
                .unwrap_or(false),
        }
    }

    /// After a write to `stream`: drop the cached ACLs it changed.
    fn wrote(&self, stream: &StreamName) {
        let Some(acls) = &self.acls else { return };
        match stream.as_str() {
            crate::acl::SETTINGS_STREAM => acls.forget_settings(),
            name => {
                if let Some(of) = name.strip_prefix("$$") {
                    acls.forget(of);
                }
            }
        }
    }
}

/// A link (read through `$ce-…`/`$et-…`) resolves to its target only for a
/// reader who may read the target stream (the security issue; KurrentDB
/// resolves links without that check). For any other reader the event is
/// the bare link, as a read with `resolveLinkTos = false` shows it: type
/// `$>`, data `<revision>@<stream>`, the link's id, stream, revision and
/// position. The page keeps its length and its revisions, so paging and
/// subscriptions go on exactly as before.
async fn hide_unreadable_targets<S: EventStore>(
    acls: &Acls<S>,
    who: &crate::auth::Principal,
    mut events: Vec<RecordedEvent>,
) -> Result<Vec<RecordedEvent>> {
    let mut decided: Vec<(StreamName, bool)> = Vec::new();
    for e in events.iter_mut() {
        let Some(link) = &e.link else { continue };
        let readable = match decided.iter().find(|(s, _)| *s == e.stream) {
            Some((_, r)) => *r,
            None => {
                let r = acls.allowed(who, &e.stream, Permission::Read).await?;
                decided.push((e.stream.clone(), r));
                r
            }
        };
        if !readable {
            let bare = RecordedEvent {
                id: e.link_id().unwrap_or(e.id),
                stream: link.stream.clone(),
                revision: link.revision,
                position: e.position,
                event_type: LINK_EVENT_TYPE.to_owned(),
                content_type: ContentType::Binary,
                data: format!("{}@{}", e.revision, e.stream).into(),
                metadata: Default::default(),
                created: e.created,
                link: None,
            };
            *e = bare;
        }
    }
    Ok(events)
}

/// A stored link — a `$>` event whose data is `<revision>@<stream>`, as
/// `linkTo` and the system projections (`$streams`, `$category-…`,
/// `$bc-…`) write them (ADR 39) — reads as its target event carrying the
/// link (stream and revision), as the index-served `$ce-`/`$et-` links
/// do: a reader that resolves links gets the target, one that does not
/// gets the link record (`<revision>@<stream>`; its id derived, its
/// position the target's, its own metadata not shown). A link whose
/// target no longer exists (deleted, tombstoned, truncated, scavenged)
/// or whose data is not a link stays the stored `$>` event, as KurrentDB
/// shows an unresolvable link.
async fn resolve_stored_links<S: EventStore>(
    store: &S,
    mut events: Vec<RecordedEvent>,
) -> Result<Vec<RecordedEvent>> {
    for e in events.iter_mut() {
        if e.link.is_none() && e.event_type == LINK_EVENT_TYPE {
            if let Some(target) = resolve_stored_link(store, e).await? {
                *e = target;
            }
        }
    }
    Ok(events)
}

async fn resolve_stored_link<S: EventStore>(
    store: &S,
    link: &RecordedEvent,
) -> Result<Option<RecordedEvent>> {
    let Some((revision, stream)) = std::str::from_utf8(&link.data)
        .ok()
        .and_then(|text| text.split_once('@'))
    else {
        return Ok(None);
    };
    let (Ok(revision), Ok(stream)) = (revision.parse::<u64>(), StreamName::new(stream)) else {
        return Ok(None);
    };
    let request = ReadStream {
        from: factum_core::StreamStart::Revision(factum_core::StreamRevision(revision)),
        max_count: 1,
        ..ReadStream::forwards(stream)
    };
    match store.read_stream(request).await {
        Ok(mut page) => Ok(page
            .pop()
            .filter(|t| t.revision.0 == revision)
            .map(|mut t| {
                t.link = Some(factum_core::Link {
                    stream: link.stream.clone(),
                    revision: link.revision,
                });
                t
            })),
        Err(Error::StreamNotFound { .. } | Error::StreamDeleted { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

impl<S: EventStore> EventStore for ClientStore<S> {
    async fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        managed::check_client_write(&stream)?;
        self.check(&stream, Permission::Write).await?;
        let name = stream.clone();
        let result = self.inner.append(stream, expected, events).await;
        self.wrote(&name);
        result
    }

    async fn append_multi(
        &self,
        request: factum_core::MultiAppend,
    ) -> Result<factum_core::MultiAppendResult> {
        // A multi-stream append needs $w on every stream it writes (the
        // security issue) and $r on every stream it only checks (a check
        // tells the stream's state).
        let written = request.written();
        for (i, part) in request.streams.iter().enumerate() {
            if written.binary_search(&i).is_ok() {
                managed::check_client_write(&part.stream)?;
                self.check(&part.stream, Permission::Write).await?;
            } else {
                self.check(&part.stream, Permission::Read).await?;
            }
        }
        let names: Vec<StreamName> = written
            .iter()
            .map(|&i| request.streams[i].stream.clone())
            .collect();
        let result = self.inner.append_multi(request).await;
        for name in &names {
            self.wrote(name);
        }
        result
    }

    async fn read_stream(&self, request: ReadStream) -> Result<Vec<RecordedEvent>> {
        self.check(&request.stream, Permission::Read).await?;
        let events = self.inner.read_stream(request).await?;
        let events = resolve_stored_links(&*self.inner, events).await?;
        match &self.acls {
            Some(acls) => hide_unreadable_targets(acls, &crate::auth::current(), events).await,
            None => Ok(events),
        }
    }

    async fn read_all(&self, request: ReadAll) -> Result<Vec<RecordedEvent>> {
        self.check(&StreamName::new(ALL)?, Permission::Read).await?;
        self.inner.read_all(request).await
    }

    async fn subscribe(&self, request: Subscribe) -> Result<Subscription> {
        let resolves = matches!(&request.target, factum_core::SubscriptionTarget::Stream(_));
        match &request.target {
            factum_core::SubscriptionTarget::Stream(s) => self.check(s, Permission::Read).await?,
            factum_core::SubscriptionTarget::All(_) => {
                self.check(&StreamName::new(ALL)?, Permission::Read).await?
            }
        }
        let inner = self.inner.subscribe(request).await?;
        // Stored links resolve in a stream's subscription as in its reads
        // (`$all` shows every event as stored).
        if !resolves && self.acls.is_none() {
            return Ok(inner);
        }
        let store = self.inner.clone();
        let acls = self.acls.clone();
        // The subscription is polled outside the request's task: the
        // principal is taken now.
        let who = crate::auth::current();
        Ok(Subscription::new(inner.then(move |message| {
            let (store, acls, who) = (store.clone(), acls.clone(), who.clone());
            async move {
                match message {
                    Ok(SubscriptionMessage::Event(e))
                        if e.link.is_some() || (resolves && e.event_type == LINK_EVENT_TYPE) =>
                    {
                        let mut one = vec![e];
                        if resolves {
                            one = resolve_stored_links(&*store, one).await?;
                        }
                        if let Some(acls) = &acls {
                            one = hide_unreadable_targets(acls, &who, one).await?;
                        }
                        Ok(SubscriptionMessage::Event(one.remove(0)))
                    }
                    other => other,
                }
            }
        })))
    }

    async fn stream_metadata(&self, stream: StreamName) -> Result<StreamMetadataResult> {
        // Reads look at the stream's metadata first (is it deleted?): a
        // reader without `$mr` gets the answer without the metadata.
        if self.check(&stream, Permission::MetadataRead).await.is_err() {
            self.check(&stream, Permission::Read).await?;
            let mut result = self.inner.stream_metadata(stream).await?;
            result.metadata = Default::default();
            return Ok(result);
        }
        self.inner.stream_metadata(stream).await
    }

    async fn set_stream_metadata(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
    ) -> Result<AppendResult> {
        managed::check_client_write(&stream)?;
        self.check(&stream, Permission::MetadataWrite).await?;
        let name = stream.metadata_stream();
        let result = self
            .inner
            .set_stream_metadata(stream, expected, metadata)
            .await;
        self.wrote(&name);
        result
    }

    async fn delete_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> Result<DeleteResult> {
        managed::check_client_write(&stream)?;
        self.check(&stream, Permission::Delete).await?;
        self.inner.delete_stream(stream, expected).await
    }

    async fn tombstone_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> Result<DeleteResult> {
        managed::check_client_write(&stream)?;
        self.check(&stream, Permission::Delete).await?;
        self.inner.tombstone_stream(stream, expected).await
    }

    async fn head_position(&self) -> Result<Option<Position>> {
        self.inner.head_position().await
    }
}

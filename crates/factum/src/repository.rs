//! The repository: load an aggregate (newest usable snapshot + the events
//! after it), execute commands with optimistic concurrency and bounded
//! retries, save snapshots by policy.

use std::marker::PhantomData;
use std::time::Duration;

use factum_core::{
    ContentType, Error, EventData, EventStore, ExpectedRevision, Position, ReadStream,
    RecordedEvent, StreamName, StreamRevision, Timestamp,
};

use crate::aggregate::Aggregate;
use crate::context::{schema_version_of, CommandContext, EventMetadata};
use crate::event::{self, CodecError, DomainEvent};
use crate::snapshot::{
    Snapshot, SnapshotBound, SnapshotContext, SnapshotOutcome, SnapshotPolicy, SnapshotStore,
    StreamSnapshotStore,
};
use crate::upcast::Upcasters;

/// Why a repository operation failed. The user's domain error is kept as is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepositoryError<E: std::error::Error + 'static> {
    /// The aggregate refused the command.
    #[error("command refused: {0}")]
    Domain(#[source] E),
    /// Other writers kept changing the stream: every attempt met a
    /// concurrency conflict. Nothing of this command was written.
    #[error("concurrency conflict on {stream} after {attempts} attempts: {source}")]
    Conflict {
        /// The aggregate's stream.
        stream: StreamName,
        /// Attempts made (1 + retries).
        attempts: u32,
        /// The last `WrongExpectedVersion`.
        #[source]
        source: Error,
    },
    /// A stored event or snapshot could not be decoded or upcast, or a new
    /// event could not be encoded.
    #[error("{stream}{}: {source}", at.map_or(String::new(), |r| format!(" at revision {r}")))]
    Codec {
        /// The aggregate's stream.
        stream: StreamName,
        /// The revision of the event at fault, when it was a stored event.
        at: Option<StreamRevision>,
        /// What went wrong.
        #[source]
        source: CodecError,
    },
    /// The event store failed (or the id makes an invalid stream name).
    #[error(transparent)]
    Store(#[from] Error),
}

/// An aggregate as loaded.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// Its state.
    pub state: A,
    /// Revision of the last event folded in; `None` for a new aggregate.
    pub revision: Option<StreamRevision>,
    /// Commit time of that event.
    pub last_event_at: Option<Timestamp>,
    /// The snapshot the load started from, if any.
    pub snapshot_revision: Option<StreamRevision>,
    /// Events replayed on top of the snapshot (or from the start).
    pub events_replayed: u64,
    /// When the snapshot used was taken.
    pub snapshot_taken_at: Option<Timestamp>,
    /// A newer snapshot of another schema version was skipped.
    pub skipped_stale_snapshot: bool,
}

impl<A> Loaded<A> {
    /// True when the aggregate has no events (within the bound asked for).
    pub fn is_new(&self) -> bool {
        self.revision.is_none()
    }

    /// The expected revision for appending after this state.
    pub fn expected(&self) -> ExpectedRevision {
        self.revision
            .map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact)
    }

    fn events_since_snapshot(&self) -> u64 {
        match (self.revision, self.snapshot_revision) {
            (None, _) => 0,
            (Some(r), Some(s)) => r.0.saturating_sub(s.0),
            (Some(r), None) => r.0 + 1,
        }
    }
}

/// A command that was executed.
#[derive(Debug, Clone)]
pub struct Executed<A: Aggregate> {
    /// The state after the new events.
    pub state: A,
    /// The events appended (empty when the command changed nothing).
    pub events: Vec<A::Event>,
    /// Revision of the last event of the stream now.
    pub revision: Option<StreamRevision>,
    /// Global position of the last appended event (for read-your-writes
    /// with a projection's `wait_for`); `None` when nothing was appended.
    pub position: Option<Position>,
    /// Attempts it took (1 when there was no conflict).
    pub attempts: u32,
    /// Whether a snapshot was saved.
    pub snapshot: SnapshotOutcome,
}

/// An event of an aggregate as stored, decoded (after upcasting).
#[derive(Debug, Clone)]
pub struct Recorded<E> {
    /// The event.
    pub event: E,
    /// Its revision in the stream.
    pub revision: StreamRevision,
    /// Its global position.
    pub position: Position,
    /// When the store committed it.
    pub created: Timestamp,
    /// Its metadata (correlation, causation, actor, schema version as stored).
    pub metadata: EventMetadata,
}

/// Loads and saves aggregates of type `A` in an event store.
///
/// ```no_run
/// # async fn demo<S: factum_core::EventStore + Clone, A: factum::Aggregate>(store: S, cmd: A::Command) {
/// use factum::{CommandContext, Repository, SnapshotPolicy};
/// let repo = Repository::<S, A>::new(store).snapshots(SnapshotPolicy::every(100));
/// let done = repo.execute("42", &cmd, &CommandContext::new().actor("alice")).await;
/// # }
/// ```
pub struct Repository<S, A, P = StreamSnapshotStore<S>> {
    store: S,
    snapshots: P,
    policy: SnapshotPolicy,
    upcasters: Upcasters,
    max_retries: u32,
    retry_delay: Duration,
    _aggregate: PhantomData<fn() -> A>,
}

impl<S: EventStore + Clone, A: Aggregate> Repository<S, A> {
    /// A repository over `store`, snapshots off, 3 retries on conflict.
    pub fn new(store: S) -> Self {
        Repository {
            snapshots: StreamSnapshotStore::new(store.clone()),
            store,
            policy: SnapshotPolicy::Never,
            upcasters: Upcasters::new(),
            max_retries: 3,
            retry_delay: Duration::from_millis(1),
            _aggregate: PhantomData,
        }
    }
}

impl<S: EventStore, A: Aggregate, P: SnapshotStore> Repository<S, A, P> {
    /// Keeps snapshots in another [`SnapshotStore`].
    pub fn with_snapshot_store<Q: SnapshotStore>(self, snapshots: Q) -> Repository<S, A, Q> {
        Repository {
            store: self.store,
            snapshots,
            policy: self.policy,
            upcasters: self.upcasters,
            max_retries: self.max_retries,
            retry_delay: self.retry_delay,
            _aggregate: PhantomData,
        }
    }

    /// Saves snapshots by this policy (loads always use one when present).
    pub fn snapshots(mut self, policy: SnapshotPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Converts stored events of older (or newer) schema versions on read.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Retries a command this many times after concurrency conflicts
    /// (default 3), waiting `delay × attempt` between attempts.
    pub fn retries(mut self, max_retries: u32, delay: Duration) -> Self {
        self.max_retries = max_retries;
        self.retry_delay = delay;
        self
    }

    /// The event store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The snapshot store.
    pub fn snapshot_store(&self) -> &P {
        &self.snapshots
    }

    /// Loads the current state of aggregate `id`.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        let stream = A::stream_name(id)?;
        self.load_stream(&stream, SnapshotBound::Latest, None, None)
            .await
    }

    /// Loads `stream` from the newest snapshot within `bound`, then events
    /// up to `max_revision` / `until` (inclusive).
    pub(crate) async fn load_stream(
        &self,
        stream: &StreamName,
        bound: SnapshotBound,
        max_revision: Option<StreamRevision>,
        until: Option<Timestamp>,
    ) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        let mut loaded = Loaded {
            state: A::default(),
            revision: None,
            last_event_at: None,
            snapshot_revision: None,
            events_replayed: 0,
            snapshot_taken_at: None,
            skipped_stale_snapshot: false,
        };
        let lookup = self
            .snapshots
            .load(stream, A::SNAPSHOT_VERSION, bound)
            .await?;
        loaded.skipped_stale_snapshot = lookup.skipped_stale;
        if let Some(s) = lookup.snapshot {
            match serde_json::from_slice::<A>(&s.state) {
                Ok(state) => {
                    loaded.state = state;
                    loaded.revision = Some(s.revision);
                    loaded.snapshot_revision = Some(s.revision);
                    loaded.last_event_at = Some(s.last_event_at);
                    loaded.snapshot_taken_at = s.taken_at;
                }
                Err(e) => {
                    // Same declared version, different shape: a forgotten
                    // SNAPSHOT_VERSION bump. Never misread: replay instead.
                    tracing::warn!(%stream, revision = %s.revision, error = %e,
                        "snapshot does not match the aggregate's state; ignoring it");
                    loaded.skipped_stale_snapshot = true;
                }
            }
        }
        let from = loaded.revision.map_or(0, |r| r.0 + 1);
        if max_revision.is_some_and(|m| m.0 < from) {
            return Ok(loaded);
        }
        let mut req = ReadStream::forwards(stream.clone()).from_revision(StreamRevision(from));
        if let Some(m) = max_revision {
            req = req.max_count(m.0 - from + 1);
        }
        if let Some(t) = until {
            req = req.until(t);
        }
        let events = match self.store.read_stream(req).await {
            Ok(events) => events,
            Err(Error::StreamNotFound { .. }) if loaded.revision.is_none() => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for e in &events {
            let typed = self.decode(e).map_err(|source| RepositoryError::Codec {
                stream: stream.clone(),
                at: Some(e.revision),
                source,
            })?;
            loaded.state.apply(&typed);
            loaded.revision = Some(e.revision);
            loaded.last_event_at = Some(e.created);
            loaded.events_replayed += 1;
        }
        Ok(loaded)
    }

    /// Decodes a stored event of this aggregate, upcasting it first.
    pub fn decode(&self, e: &RecordedEvent) -> Result<A::Event, CodecError> {
        let target = A::Event::schema_version(&e.event_type);
        let stored = if self.upcasters.is_empty() && target == 1 {
            1
        } else {
            schema_version_of(&e.metadata)
        };
        let data = self
            .upcasters
            .convert_bytes(&e.event_type, stored, target, &e.data)?;
        event::decode(&e.event_type, &data)
    }

    /// Decodes a stored event with its metadata.
    pub fn decode_recorded(
        &self,
        e: &RecordedEvent,
    ) -> Result<Recorded<A::Event>, RepositoryError<A::Error>> {
        let codec = |source| RepositoryError::Codec {
            stream: e.stream.clone(),
            at: Some(e.revision),
            source,
        };
        Ok(Recorded {
            event: self.decode(e).map_err(codec)?,
            revision: e.revision,
            position: e.position,
            created: e.created,
            metadata: EventMetadata::parse(&e.metadata).map_err(codec)?,
        })
    }

    /// Runs `command` against aggregate `id`: load → handle → append with
    /// the expected revision (`NoStream` for a new aggregate). On a
    /// concurrency conflict it reloads and re-runs the command, up to the
    /// retry bound, then returns [`RepositoryError::Conflict`]. The context's
    /// correlation, causation, actor and custom keys go into every event's
    /// metadata.
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
        context: &CommandContext,
    ) -> Result<Executed<A>, RepositoryError<A::Error>> {
        let stream = A::stream_name(id)?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut loaded = self
                .load_stream(&stream, SnapshotBound::Latest, None, None)
                .await?;
            let events = loaded
                .state
                .handle(command)
                .map_err(RepositoryError::Domain)?;
            if events.is_empty() {
                return Ok(Executed {
                    revision: loaded.revision,
                    state: loaded.state,
                    events,
                    position: None,
                    attempts,
                    snapshot: SnapshotOutcome::NotDue,
                });
            }
            let data = self.encode(&stream, &events, context)?;
            match self
                .store
                .append(stream.clone(), loaded.expected(), data)
                .await
            {
                Ok(written) => {
                    for e in &events {
                        loaded.state.apply(e);
                    }
                    loaded.revision = Some(written.revision);
                    loaded.last_event_at = None;
                    let snapshot = self.maybe_snapshot(&stream, &loaded).await;
                    return Ok(Executed {
                        state: loaded.state,
                        events,
                        revision: Some(written.revision),
                        position: Some(written.position),
                        attempts,
                        snapshot,
                    });
                }
                Err(e @ Error::WrongExpectedVersion { .. }) => {
                    if attempts > self.max_retries {
                        return Err(RepositoryError::Conflict {
                            stream,
                            attempts,
                            source: e,
                        });
                    }
                    tracing::debug!(%stream, attempts, "concurrency conflict; retrying the command");
                    if !self.retry_delay.is_zero() {
                        tokio::time::sleep(self.retry_delay * attempts).await;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs several commands in one commit (ADR 29): each `(id, command)`
    /// against its aggregate (commands for the same id run in order on its
    /// state), then every aggregate's events are appended with one
    /// multi-stream append, each stream at the revision it was loaded at —
    /// all of them or none. A conflict on any stream reloads them all and
    /// re-runs every command, up to the retry bound
    /// ([`RepositoryError::Conflict`] names the first stream in conflict);
    /// a command the aggregate refuses writes nothing. The answer holds
    /// one [`Executed`] per distinct id, in the order of first mention.
    /// Needs a store that implements [`EventStore::append_multi`].
    pub async fn execute_many(
        &self,
        commands: &[(&str, A::Command)],
        context: &CommandContext,
    ) -> Result<Vec<Executed<A>>, RepositoryError<A::Error>> {
        let mut ids: Vec<&str> = Vec::new();
        for (id, _) in commands {
            if !ids.contains(id) {
                ids.push(id);
            }
        }
        let streams = ids
            .iter()
            .map(|id| A::stream_name(id))
            .collect::<Result<Vec<_>, _>>()?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut loaded = Vec::with_capacity(ids.len());
            for stream in &streams {
                loaded.push(
                    self.load_stream(stream, SnapshotBound::Latest, None, None)
                        .await?,
                );
            }
            let mut events: Vec<Vec<A::Event>> = ids.iter().map(|_| Vec::new()).collect();
            for (id, command) in commands {
                let k = ids.iter().position(|i| i == id).expect("listed above");
                let new = loaded[k]
                    .state
                    .handle(command)
                    .map_err(RepositoryError::Domain)?;
                // The next command for this id sees these events.
                for e in &new {
                    loaded[k].state.apply(e);
                }
                events[k].extend(new);
            }
            let mut request = factum_core::MultiAppend::new();
            for (k, stream) in streams.iter().enumerate() {
                if !events[k].is_empty() {
                    let data = self.encode(stream, &events[k], context)?;
                    request = request.append(stream.clone(), loaded[k].expected(), data);
                }
            }
            if request.events.is_empty() {
                return Ok(loaded
                    .into_iter()
                    .zip(events)
                    .map(|(l, events)| Executed {
                        revision: l.revision,
                        state: l.state,
                        events,
                        position: None,
                        attempts,
                        snapshot: SnapshotOutcome::NotDue,
                    })
                    .collect());
            }
            match self.store.append_multi(request).await {
                Ok(written) => {
                    let mut done = Vec::with_capacity(ids.len());
                    for (k, (mut l, events)) in loaded.into_iter().zip(events).enumerate() {
                        let mine = written.streams.iter().find(|w| w.stream == streams[k]);
                        let (revision, position) = match mine {
                            Some(w) => (Some(w.revision), Some(w.position)),
                            None => (l.revision, None),
                        };
                        let mut snapshot = SnapshotOutcome::NotDue;
                        if mine.is_some() {
                            l.revision = revision;
                            l.last_event_at = None;
                            snapshot = self.maybe_snapshot(&streams[k], &l).await;
                        }
                        done.push(Executed {
                            state: l.state,
                            events,
                            revision,
                            position,
                            attempts,
                            snapshot,
                        });
                    }
                    return Ok(done);
                }
                Err(e @ Error::ConsistencyViolation { .. }) => {
                    if attempts > self.max_retries {
                        let stream = match &e {
                            Error::ConsistencyViolation { violations } => violations
                                .first()
                                .map_or_else(|| streams[0].clone(), |v| v.stream.clone()),
                            _ => unreachable!("matched above"),
                        };
                        return Err(RepositoryError::Conflict {
                            stream,
                            attempts,
                            source: e,
                        });
                    }
                    tracing::debug!(
                        attempts,
                        "concurrency conflict in a multi-aggregate commit; retrying"
                    );
                    if !self.retry_delay.is_zero() {
                        tokio::time::sleep(self.retry_delay * attempts).await;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn encode(
        &self,
        stream: &StreamName,
        events: &[A::Event],
        context: &CommandContext,
    ) -> Result<Vec<EventData>, RepositoryError<A::Error>> {
        let codec = |source| RepositoryError::Codec {
            stream: stream.clone(),
            at: None,
            source,
        };
        events
            .iter()
            .map(|e| {
                let (event_type, data) = event::encode(e).map_err(codec)?;
                let version = A::Event::schema_version(event_type);
                let meta = context
                    .event_metadata_for(version, e.personal_data().as_ref())
                    .map_err(codec)?;
                Ok(EventData::new(event_type, ContentType::Json, data).with_metadata(meta))
            })
            .collect()
    }

    async fn maybe_snapshot(&self, stream: &StreamName, loaded: &Loaded<A>) -> SnapshotOutcome {
        if self.policy.is_never() {
            return SnapshotOutcome::NotDue;
        }
        let Some(revision) = loaded.revision else {
            return SnapshotOutcome::NotDue;
        };
        let mut state: Option<Vec<u8>> = None;
        if self.policy.needs_state_size() {
            match serde_json::to_vec(&loaded.state) {
                Ok(s) => state = Some(s),
                Err(e) => return SnapshotOutcome::Failed(format!("state does not serialize: {e}")),
            }
        }
        let ctx = SnapshotContext {
            events_since_snapshot: loaded.events_since_snapshot(),
            snapshot_age: loaded.snapshot_taken_at.map(|t| {
                Timestamp::now()
                    .to_system_time()
                    .duration_since(t.to_system_time())
                    .unwrap_or_default()
            }),
            state_bytes: state.as_ref().map_or(0, Vec::len),
        };
        // A skipped snapshot of another schema version is replaced now.
        if !(self.policy.is_due(&ctx) || loaded.skipped_stale_snapshot) {
            return SnapshotOutcome::NotDue;
        }
        let state = match state.map_or_else(|| serde_json::to_vec(&loaded.state), Ok) {
            Ok(s) => s,
            Err(e) => return SnapshotOutcome::Failed(format!("state does not serialize: {e}")),
        };
        // Append does not return commit times: read the last event's, so a
        // temporal load before it never starts from this snapshot.
        let last_event_at = match loaded.last_event_at {
            Some(t) => t,
            None => match self
                .store
                .read_stream(
                    ReadStream::forwards(stream.clone())
                        .from_revision(revision)
                        .max_count(1),
                )
                .await
            {
                Ok(events) if events.first().is_some_and(|e| e.revision == revision) => {
                    events[0].created
                }
                Ok(_) => {
                    return SnapshotOutcome::Failed(format!("event {revision} is not readable"))
                }
                Err(e) => return SnapshotOutcome::Failed(e.to_string()),
            },
        };
        let snapshot = Snapshot {
            revision,
            schema_version: A::SNAPSHOT_VERSION,
            last_event_at,
            state: state.into(),
            taken_at: None,
        };
        match self.snapshots.save(stream, snapshot).await {
            Ok(()) => SnapshotOutcome::Saved(revision),
            Err(e) => {
                tracing::warn!(%stream, %revision, error = %e, "saving a snapshot failed");
                SnapshotOutcome::Failed(e.to_string())
            }
        }
    }
}

//! The projections subsystem: every projection of one store, what
//! KurrentDB's Projections service asks of it (create, update, delete,
//! enable, disable, abort, reset, statistics, state, result, restart).
//!
//! Registration and settings live in the store (`$projections-$all`,
//! `$projections-<name>`, ADR 35), so projections survive restarts: `start`
//! reads them back and runs the enabled ones. Transient projections live in
//! memory only. Each running projection is one task ([`crate::runner`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use factum_core::{
    ContentType, Error, EventData, EventStore, ExpectedRevision, MultiAppend, StreamCondition,
    StreamName,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access::{Access, RunAs};
use crate::names::{self, Names};
use crate::runner::{self, CheckpointPolicy, Published, Run, RunError, Status, StopRequest};
use crate::sandbox::{Limits, Projection};
use crate::settings::{Mode, Settings};

use crate::system;
pub use crate::system::SYSTEM_PROJECTIONS;

/// What went wrong managing a projection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// No projection of that name.
    #[error("projection '{0}' not found")]
    NotFound(String),
    /// A projection of that name exists.
    #[error("a projection named '{0}' already exists")]
    AlreadyExists(String),
    /// A bad name or query (the query's compile error).
    #[error("{0}")]
    Invalid(String),
    /// Not implemented yet.
    #[error("not implemented yet: {0}")]
    NotImplemented(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// A new projection.
#[derive(Clone, Debug)]
pub struct Create {
    /// Its name (transient ones may go without: a name is made).
    pub name: String,
    /// Its JavaScript.
    pub query: String,
    /// Its mode.
    pub mode: Mode,
    /// Whether it may emit.
    pub emit_enabled: bool,
    /// Whether emitted streams are tracked.
    pub track_emitted_streams: bool,
    /// Whether it starts enabled.
    pub enabled: bool,
    /// Whether checkpoints are written (continuous projections always do).
    pub checkpoints_enabled: bool,
    /// Who creates it (it runs as them: their reads and writes are checked
    /// against the stream ACLs when the subsystem has an [`Access`]).
    pub run_as: RunAs,
    /// The engine version the client asked for.
    pub engine_version: i32,
}

/// What a delete removes besides the projection.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeleteOptions {
    /// The streams it emitted to (those tracked).
    pub delete_emitted_streams: bool,
    /// Its result and partition state streams.
    pub delete_state_stream: bool,
    /// Its checkpoint streams.
    pub delete_checkpoint_stream: bool,
}

/// A projection's statistics (KurrentDB's fields).
#[derive(Clone, Debug)]
pub struct Statistics {
    /// Name.
    pub name: String,
    /// `Running`, `Stopped`, `Faulted`, `Completed`, `Preparing`.
    pub status: String,
    /// Why it faulted ("" otherwise).
    pub state_reason: String,
    /// `Continuous`, `OneTime`, `Transient`.
    pub mode: String,
    /// Percent of `$all` handled.
    pub progress: f32,
    /// The checkpoint position, `C:<n>/P:<n>`.
    pub position: String,
    /// The last position committed.
    pub last_checkpoint: String,
    /// Events handled since it started.
    pub events_processed_after_restart: u64,
    /// Partitions in memory.
    pub partitions_cached: i32,
    /// Reads under way.
    pub reads_in_progress: i32,
    /// Writes under way.
    pub writes_in_progress: i32,
    /// Events buffered for a write.
    pub buffered_events: i32,
    /// Write queue size.
    pub write_pending_events_before_checkpoint: i32,
    /// Write queue size after.
    pub write_pending_events_after_checkpoint: i32,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Its epoch (resets).
    pub epoch: i64,
    /// Its settings version.
    pub version: i64,
    /// Checkpoint status ("" when idle).
    pub checkpoint_status: String,
    /// Core processing time (ms), not measured: 0.
    pub core_processing_time: i64,
}

struct Entry {
    settings: Settings,
    version: i64,
    published: Arc<Mutex<Published>>,
    stop: Option<watch::Sender<StopRequest>>,
    task: Option<JoinHandle<Result<runner::End, RunError>>>,
}

/// Every projection of a store.
pub struct Projections<S> {
    store: Arc<S>,
    limits: Limits,
    policy: CheckpointPolicy,
    access: Option<Arc<dyn Access>>,
    entries: tokio::sync::Mutex<BTreeMap<String, Entry>>,
}

fn invalid_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a projection needs a name".into());
    }
    if name.chars().any(char::is_control) || name.contains('/') || name.len() > 1024 {
        return Some(format!("invalid projection name '{name}'"));
    }
    None
}

impl<S: EventStore> Projections<S> {
    /// The subsystem over `store`; call [`start`](Self::start) to run the
    /// stored projections.
    pub fn new(store: Arc<S>, limits: Limits, policy: CheckpointPolicy) -> Arc<Self> {
        Self::with_access(store, limits, policy, None)
    }

    /// The subsystem over `store`, each projection's reads and writes
    /// checked by `access` as the user it runs as (secure servers).
    pub fn with_access(
        store: Arc<S>,
        limits: Limits,
        policy: CheckpointPolicy,
        access: Option<Arc<dyn Access>>,
    ) -> Arc<Self> {
        Arc::new(Projections {
            store,
            limits,
            policy,
            access,
            entries: tokio::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// Reads the registered projections from the store and runs the
    /// enabled ones.
    pub async fn start(&self) -> Result<(), ProjectionError> {
        let registry = StreamName::new(names::REGISTRATION_STREAM)?;
        let mut registered: Vec<String> = Vec::new();
        let mut from = factum_core::StreamStart::Start;
        loop {
            let page = match self
                .store
                .read_stream(factum_core::ReadStream {
                    from,
                    max_count: 1000,
                    ..factum_core::ReadStream::forwards(registry.clone())
                })
                .await
            {
                Ok(p) => p,
                Err(Error::StreamNotFound { .. }) => break,
                Err(e) => return Err(e.into()),
            };
            let n = page.len();
            for e in &page {
                let name = String::from_utf8_lossy(&e.data).into_owned();
                match e.event_type.as_str() {
                    names::CREATED_EVENT => registered.push(name),
                    names::DELETED_EVENT => registered.retain(|n| *n != name),
                    _ => {}
                }
            }
            match page.last() {
                Some(last) if n == 1000 => {
                    from = factum_core::StreamStart::Revision(factum_core::StreamRevision(
                        last.revision.0 + 1,
                    ))
                }
                _ => break,
            }
        }
        let mut entries = self.entries.lock().await;
        for name in registered {
            if entries.contains_key(&name) {
                // Created since the list was read (a client's first call can
                // come while the subsystem starts): it runs already, and a
                // second runner would be a second writer of its streams.
                continue;
            }
            let stream = Names::new(&name, None, None).definition()?;
            let last = match self
                .store
                .read_stream(factum_core::ReadStream {
                    max_count: 1,
                    ..factum_core::ReadStream::backwards(stream)
                })
                .await
            {
                Ok(mut e) => e.pop(),
                Err(Error::StreamNotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            let Some(last) = last else { continue };
            let mut entry = match serde_json::from_slice::<Settings>(&last.data) {
                Ok(settings) => Entry {
                    settings,
                    version: last.revision.0 as i64,
                    published: Default::default(),
                    stop: None,
                    task: None,
                },
                Err(e) => {
                    // Kept and reported, not dropped.
                    let mut settings = Settings::new(&name, "", Mode::Continuous);
                    settings.enabled = false;
                    let published = Published {
                        status: Status::Faulted(format!("its settings are not readable: {e}")),
                        ..Default::default()
                    };
                    Entry {
                        settings,
                        version: last.revision.0 as i64,
                        published: Arc::new(Mutex::new(published)),
                        stop: None,
                        task: None,
                    }
                }
            };
            if entry.settings.enabled {
                self.spawn(&mut entry);
            } else if entry.task.is_none()
                && matches!(
                    entry.published.lock().expect("published").status,
                    Status::Starting
                )
            {
                entry.published.lock().expect("published").status = Status::Stopped;
            }
            entries.insert(name, entry);
        }
        for name in SYSTEM_PROJECTIONS {
            if entries.contains_key(name) {
                continue;
            }
            let mut entry = self.system_entry(name).await?;
            if entry.settings.enabled {
                self.spawn(&mut entry);
            } else {
                entry.published.lock().expect("published").status = Status::Stopped;
            }
            entries.insert(name.to_owned(), entry);
        }
        Ok(())
    }

    /// A system projection: its stored settings (written when it was
    /// first enabled, disabled or reset), else KurrentDB's defaults.
    async fn system_entry(&self, name: &str) -> Result<Entry, ProjectionError> {
        let stream = Names::new(name, None, None).definition()?;
        let last = match self
            .store
            .read_stream(factum_core::ReadStream {
                max_count: 1,
                ..factum_core::ReadStream::backwards(stream)
            })
            .await
        {
            Ok(mut e) => e.pop(),
            Err(Error::StreamNotFound { .. } | Error::StreamDeleted { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let mut settings = Settings::new(
            name,
            system::query(name).unwrap_or_default(),
            Mode::Continuous,
        );
        settings.enabled = system::enabled_by_default(name);
        settings.emit_enabled = true;
        let mut version = 0;
        if let Some(last) = last {
            match serde_json::from_slice::<Settings>(&last.data) {
                Ok(stored) => {
                    settings.enabled = stored.enabled;
                    settings.epoch = stored.epoch;
                    version = last.revision.0 as i64;
                }
                Err(e) => tracing::warn!("the settings of {name} are not readable ({e}): defaults"),
            }
        }
        // The query is the server's, whatever was stored.
        settings.system = true;
        Ok(Entry {
            settings,
            version,
            published: Default::default(),
            stop: None,
            task: None,
        })
    }

    fn spawn(&self, entry: &mut Entry) {
        if system::index_served(&entry.settings.name) {
            // Nothing runs: the store's index serves its streams.
            entry.published = Arc::new(Mutex::new(Published {
                status: Status::Running,
                ..Default::default()
            }));
            return;
        }
        let (stop_tx, stop_rx) = watch::channel(StopRequest::Run);
        entry.published = Arc::new(Mutex::new(Published::default()));
        let run = Run {
            store: self.store.clone(),
            settings: entry.settings.clone(),
            limits: self.limits,
            policy: self.policy,
            published: entry.published.clone(),
            stop: stop_rx,
            access: if entry.settings.system {
                None
            } else {
                self.access.clone()
            },
        };
        entry.stop = Some(stop_tx);
        entry.task = Some(tokio::spawn(runner::run(run)));
    }

    async fn halt(entry: &mut Entry, request: StopRequest) {
        if let Some(stop) = entry.stop.take() {
            let _ = stop.send(request);
        }
        if let Some(task) = entry.task.take() {
            let _ = task.await;
        }
    }

    async fn persist(&self, settings: &Settings) -> Result<i64, ProjectionError> {
        let names = Names::new(&settings.name, None, None);
        let data = serde_json::to_vec(settings).expect("settings serialize");
        let r = self
            .store
            .append(
                names.definition()?,
                ExpectedRevision::Any,
                vec![EventData::new(
                    names::UPDATED_EVENT,
                    ContentType::Json,
                    data,
                )],
            )
            .await?;
        Ok(r.revision.0 as i64)
    }

    /// Creates (and, if enabled, starts) a projection. The query is
    /// compiled first: an invalid one is refused with its error.
    pub async fn create(&self, create: Create) -> Result<(), ProjectionError> {
        if let Some(why) = invalid_name(&create.name) {
            return Err(ProjectionError::Invalid(why));
        }
        if SYSTEM_PROJECTIONS.contains(&create.name.as_str()) {
            return Err(ProjectionError::AlreadyExists(create.name));
        }
        let query = create.query.clone();
        let limits = self.limits;
        tokio::task::spawn_blocking(move || Projection::compile(&query, limits).map(|_| ()))
            .await
            .map_err(|e| ProjectionError::Invalid(e.to_string()))?
            .map_err(|f| ProjectionError::Invalid(f.to_string()))?;
        let mut entries = self.entries.lock().await;
        if entries.contains_key(&create.name) {
            return Err(ProjectionError::AlreadyExists(create.name));
        }
        let settings = Settings {
            name: create.name.clone(),
            query: create.query,
            mode: create.mode,
            enabled: create.enabled,
            emit_enabled: create.emit_enabled,
            track_emitted_streams: create.track_emitted_streams,
            checkpoints_enabled: create.mode == Mode::Continuous
                || (create.mode == Mode::OneTime && create.checkpoints_enabled),
            run_as: create.run_as.login,
            run_as_groups: create.run_as.groups,
            system: false,
            engine_version: create.engine_version,
            epoch: 0,
        };
        let mut version = 0;
        if create.mode != Mode::Transient {
            let names = Names::new(&settings.name, None, None);
            let request = MultiAppend::new()
                .append(
                    StreamName::new(names::REGISTRATION_STREAM)?,
                    ExpectedRevision::Any,
                    [EventData::new(
                        names::CREATED_EVENT,
                        ContentType::Binary,
                        settings.name.clone().into_bytes(),
                    )],
                )
                .append(
                    names.definition()?,
                    ExpectedRevision::Any,
                    [EventData::new(
                        names::UPDATED_EVENT,
                        ContentType::Json,
                        serde_json::to_vec(&settings).expect("settings serialize"),
                    )],
                )
                .check(names.definition()?, StreamCondition::NoStream);
            let r = self
                .store
                .append_multi(request)
                .await
                .map_err(|e| match e {
                    Error::ConsistencyViolation { .. } => {
                        ProjectionError::AlreadyExists(settings.name.clone())
                    }
                    e => e.into(),
                })?;
            version = r.streams.last().map_or(0, |s| s.revision.0 as i64);
        }
        let mut entry = Entry {
            settings,
            version,
            published: Default::default(),
            stop: None,
            task: None,
        };
        if entry.settings.enabled {
            self.spawn(&mut entry);
        } else {
            entry.published.lock().expect("published").status = Status::Stopped;
        }
        entries.insert(entry.settings.name.clone(), entry);
        Ok(())
    }

    /// Refuses to change or delete a system projection's definition.
    fn system(name: &str, what: &str) -> Result<(), ProjectionError> {
        if system::is_system(name) {
            return Err(ProjectionError::Invalid(format!(
                "{name} is a system projection: it cannot be {what} (enable, disable or reset it)"
            )));
        }
        Ok(())
    }

    /// Changes a projection's query and/or emit setting; a running one
    /// commits, stops and restarts from its checkpoint with them. A new
    /// query runs as `by`, who wrote it (an `$ops` user must not get an
    /// admin's rights by rewriting an admin's projection).
    pub async fn update(
        &self,
        name: &str,
        query: Option<String>,
        emit_enabled: Option<bool>,
        by: Option<RunAs>,
    ) -> Result<(), ProjectionError> {
        Self::system(name, "updated")?;
        if let Some(q) = &query {
            let q = q.clone();
            let limits = self.limits;
            tokio::task::spawn_blocking(move || Projection::compile(&q, limits).map(|_| ()))
                .await
                .map_err(|e| ProjectionError::Invalid(e.to_string()))?
                .map_err(|f| ProjectionError::Invalid(f.to_string()))?;
        }
        let mut entries = self.entries.lock().await;
        let entry = entries
            .get_mut(name)
            .ok_or_else(|| ProjectionError::NotFound(name.into()))?;
        Self::halt(entry, StopRequest::Stop).await;
        if let Some(q) = query {
            entry.settings.query = q;
            if let Some(by) = by {
                entry.settings.run_as = by.login;
                entry.settings.run_as_groups = by.groups;
            }
        }
        if let Some(e) = emit_enabled {
            entry.settings.emit_enabled = e;
        }
        if entry.settings.mode != Mode::Transient {
            entry.version = self.persist(&entry.settings).await?;
        }
        if entry.settings.enabled {
            self.spawn(entry);
        }
        Ok(())
    }

    /// Starts a stopped projection.
    pub async fn enable(&self, name: &str) -> Result<(), ProjectionError> {
        let mut entries = self.entries.lock().await;
        let entry = entries
            .get_mut(name)
            .ok_or_else(|| ProjectionError::NotFound(name.into()))?;
        let running = entry.task.as_ref().is_some_and(|t| !t.is_finished());
        if running {
            return Ok(());
        }
        Self::halt(entry, StopRequest::Abort).await;
        if !entry.settings.enabled {
            entry.settings.enabled = true;
            if entry.settings.mode != Mode::Transient {
                entry.version = self.persist(&entry.settings).await?;
            }
        }
        self.spawn(entry);
        Ok(())
    }

    /// Stops a projection: with a final checkpoint (disable) or without
    /// (abort, `write_checkpoint = false`).
    pub async fn disable(&self, name: &str, write_checkpoint: bool) -> Result<(), ProjectionError> {
        let mut entries = self.entries.lock().await;
        let entry = entries
            .get_mut(name)
            .ok_or_else(|| ProjectionError::NotFound(name.into()))?;
        let request = if write_checkpoint {
            StopRequest::Stop
        } else {
            StopRequest::Abort
        };
        Self::halt(entry, request).await;
        {
            let mut p = entry.published.lock().expect("published");
            if !matches!(p.status, Status::Faulted(_) | Status::Completed) {
                p.status = Status::Stopped;
            }
        }
        if entry.settings.enabled {
            entry.settings.enabled = false;
            if entry.settings.mode != Mode::Transient {
                entry.version = self.persist(&entry.settings).await?;
            }
        }
        Ok(())
    }

    /// Resets a projection: a new epoch, so it replays from the beginning
    /// (its old checkpoints and partition states are ignored). The streams
    /// it emitted to, when tracked, are truncated first: the replay's
    /// events are the only ones readers see. Untracked ones are not known
    /// here: the runner truncates each, before the new epoch's first write
    /// to it, when this projection's older epoch wrote its last event
    /// (ADR 44).
    pub async fn reset(&self, name: &str) -> Result<(), ProjectionError> {
        let mut entries = self.entries.lock().await;
        let entry = entries
            .get_mut(name)
            .ok_or_else(|| ProjectionError::NotFound(name.into()))?;
        Self::halt(entry, StopRequest::Abort).await;
        if entry.settings.mode != Mode::Transient && entry.settings.track_emitted_streams {
            self.truncate_emitted(entry).await?;
        }
        entry.settings.epoch += 1;
        if entry.settings.mode != Mode::Transient {
            entry.version = self.persist(&entry.settings).await?;
        }
        entry.published = Arc::new(Mutex::new(Published {
            status: Status::Stopped,
            ..Default::default()
        }));
        if entry.settings.enabled {
            self.spawn(entry);
        }
        Ok(())
    }

    /// Hides what a projection emitted before a reset: each tracked
    /// emitted stream is truncated before its next revision (`$tb`, its
    /// other metadata kept), so readers see only what the replay emits —
    /// KurrentDB's result, which truncates an emitted stream when the reset
    /// projection first writes it again.
    async fn truncate_emitted(&self, entry: &Entry) -> Result<(), ProjectionError> {
        let names = Names::new(&entry.settings.name, None, None);
        let emitted = runner::read_strings(
            &*self.store,
            &names.emitted_streams()?,
            names::STREAM_TRACKED_EVENT,
        )
        .await?;
        for name in emitted {
            let stream = StreamName::new(name)?;
            let last = match self
                .store
                .read_stream(factum_core::ReadStream {
                    max_count: 1,
                    ..factum_core::ReadStream::backwards(stream.clone())
                })
                .await
            {
                Ok(mut e) => e.pop(),
                Err(Error::StreamNotFound { .. } | Error::StreamDeleted { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            let Some(last) = last else { continue };
            runner::truncate_through(&*self.store, stream, last.revision).await?;
        }
        Ok(())
    }

    /// Deletes a projection (stopping it first) and, as asked, its streams.
    pub async fn delete(&self, name: &str, options: DeleteOptions) -> Result<(), ProjectionError> {
        Self::system(name, "deleted")?;
        let mut entries = self.entries.lock().await;
        let mut entry = entries
            .remove(name)
            .ok_or_else(|| ProjectionError::NotFound(name.into()))?;
        Self::halt(&mut entry, StopRequest::Abort).await;
        if entry.settings.mode == Mode::Transient {
            return Ok(());
        }
        let definition = {
            let published = entry.published.lock().expect("published");
            published.definition.clone()
        };
        let names = match &definition {
            Some(d) => Names::new(
                name,
                d.result_stream_name.clone(),
                d.partition_result_stream_name_pattern.clone(),
            ),
            None => Names::new(name, None, None),
        };
        let partitions =
            runner::read_strings(&*self.store, &names.partitions()?, names::PARTITION_EVENT)
                .await?;
        let mut doomed: Vec<StreamName> = Vec::new();
        if options.delete_checkpoint_stream {
            doomed.push(names.checkpoint()?);
            doomed.push(names.partitions()?);
            for p in &partitions {
                doomed.push(names.partition_checkpoint(p)?);
            }
        }
        if options.delete_state_stream {
            doomed.push(names.result("")?);
            for p in &partitions {
                doomed.push(names.result(p)?);
            }
        }
        if options.delete_emitted_streams {
            let emitted = runner::read_strings(
                &*self.store,
                &names.emitted_streams()?,
                names::STREAM_TRACKED_EVENT,
            )
            .await?;
            for s in emitted {
                doomed.push(StreamName::new(s)?);
            }
            doomed.push(names.emitted_streams()?);
        }
        doomed.push(names.definition()?);
        self.store
            .append(
                StreamName::new(names::REGISTRATION_STREAM)?,
                ExpectedRevision::Any,
                vec![EventData::new(
                    names::DELETED_EVENT,
                    ContentType::Binary,
                    name.as_bytes().to_vec(),
                )],
            )
            .await?;
        for stream in doomed {
            match self
                .store
                .delete_stream(stream, ExpectedRevision::Any)
                .await
            {
                Ok(_) | Err(Error::StreamNotFound { .. }) | Err(Error::StreamDeleted { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Statistics of one projection, or of all (`None`).
    pub async fn statistics(&self, name: Option<&str>) -> Result<Vec<Statistics>, ProjectionError> {
        let head = self.store.head_position().await?.map_or(0, |p| p.0);
        let entries = self.entries.lock().await;
        let mut out = Vec::new();
        for (n, entry) in entries.iter() {
            if name.is_some_and(|x| x != n) {
                continue;
            }
            let p = entry.published.lock().expect("published");
            let running = entry.task.as_ref().is_some_and(|t| !t.is_finished());
            let status = match (&p.status, running) {
                (Status::Running | Status::Starting, false) if !entry.settings.enabled => {
                    "Stopped".to_owned()
                }
                (s, _) => s.as_str().to_owned(),
            };
            let progress = if head == 0 || p.position >= head {
                100.0
            } else {
                (p.position as f64 / head as f64 * 100.0) as f32
            };
            out.push(Statistics {
                name: n.clone(),
                status,
                state_reason: match &p.status {
                    Status::Faulted(why) => why.clone(),
                    _ => String::new(),
                },
                mode: entry.settings.mode.as_str().into(),
                progress,
                position: format!("C:{0}/P:{0}", p.position),
                last_checkpoint: format!("C:{0}/P:{0}", p.position),
                events_processed_after_restart: p.events_processed,
                partitions_cached: p.partitions_cached.min(i32::MAX as u64) as i32,
                reads_in_progress: p.reads_in_progress as i32,
                writes_in_progress: p.writes_in_progress as i32,
                buffered_events: 0,
                write_pending_events_before_checkpoint: 0,
                write_pending_events_after_checkpoint: 0,
                enabled: entry.settings.enabled,
                epoch: entry.settings.epoch as i64,
                version: entry.version,
                checkpoint_status: String::new(),
                core_processing_time: 0,
            });
        }
        if let Some(n) = name {
            if out.is_empty() {
                return Err(ProjectionError::NotFound(n.into()));
            }
        }
        Ok(out)
    }

    async fn published_state(
        &self,
        name: &str,
        partition: &str,
        result: bool,
    ) -> Result<Option<String>, ProjectionError> {
        let (published, settings) = {
            let entries = self.entries.lock().await;
            let entry = entries
                .get(name)
                .ok_or_else(|| ProjectionError::NotFound(name.into()))?;
            (entry.published.clone(), entry.settings.clone())
        };
        let (found, definition) = {
            let p = published.lock().expect("published");
            (p.states.get(partition).cloned(), p.definition.clone())
        };
        if let Some((state, res)) = found {
            return Ok(if result { res } else { state });
        }
        // A partition not touched since the start: its stored state.
        if partition.is_empty() || settings.mode == Mode::Transient {
            return Ok(None);
        }
        let names = match &definition {
            Some(d) => Names::new(
                name,
                d.result_stream_name.clone(),
                d.partition_result_stream_name_pattern.clone(),
            ),
            None => Names::new(name, None, None),
        };
        let stream = if result {
            names.result(partition)?
        } else {
            names.partition_checkpoint(partition)?
        };
        let last = match self
            .store
            .read_stream(factum_core::ReadStream {
                max_count: 1,
                ..factum_core::ReadStream::backwards(stream)
            })
            .await
        {
            Ok(mut e) => e.pop(),
            Err(Error::StreamNotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(last
            .map(|e| String::from_utf8_lossy(&e.data).into_owned())
            .filter(|s| s != "null"))
    }

    /// A projection's state (of `partition`, "" for the root), as JSON;
    /// `None` when it has none yet.
    pub async fn state(
        &self,
        name: &str,
        partition: &str,
    ) -> Result<Option<String>, ProjectionError> {
        self.published_state(name, partition, false).await
    }

    /// A projection's result (its state through `transformBy`/`filterBy`).
    pub async fn result(
        &self,
        name: &str,
        partition: &str,
    ) -> Result<Option<String>, ProjectionError> {
        self.published_state(name, partition, true).await
    }

    /// A projection's settings.
    pub async fn settings(&self, name: &str) -> Result<Settings, ProjectionError> {
        let entries = self.entries.lock().await;
        entries
            .get(name)
            .map(|e| e.settings.clone())
            .ok_or_else(|| ProjectionError::NotFound(name.into()))
    }

    /// Waits until a projection is no longer running (completed, stopped
    /// or faulted) and returns its status.
    pub async fn wait(&self, name: &str) -> Result<Status, ProjectionError> {
        let (task, published) = {
            let mut entries = self.entries.lock().await;
            let entry = entries
                .get_mut(name)
                .ok_or_else(|| ProjectionError::NotFound(name.into()))?;
            (entry.task.take(), entry.published.clone())
        };
        if let Some(task) = task {
            let _ = task.await;
        }
        let status = published.lock().expect("published").status.clone();
        Ok(status)
    }

    /// Stops every projection (with a final checkpoint) and starts the
    /// stored ones again: KurrentDB's RestartSubsystem.
    pub async fn restart(&self) -> Result<(), ProjectionError> {
        self.shutdown().await;
        self.entries
            .lock()
            .await
            .retain(|_, e| e.settings.mode == Mode::Transient);
        self.start().await
    }

    /// Stops every projection, each with a final checkpoint.
    pub async fn shutdown(&self) {
        let mut entries = self.entries.lock().await;
        for entry in entries.values_mut() {
            Self::halt(entry, StopRequest::Stop).await;
        }
    }
}

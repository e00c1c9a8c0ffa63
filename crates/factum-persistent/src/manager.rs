//! The subsystem: every group of a store, their configuration (kept in the
//! store itself, in `$persistentSubscriptionConfig`), and the consumer
//! handles.

use std::collections::BTreeMap;
use std::sync::Arc;

use factum_core::{EventData, EventStore, ExpectedRevision, ReadStream, StreamName, Uuid};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::error::{PersistentError, Result};
use crate::group::{Command, ConsumerMessage, Delivery, Group, NackAction};
use crate::info::GroupInfo;
use crate::settings::{GroupKey, GroupSettings, GroupSource, MAX_CONSUMER_WINDOW};

/// The stream holding every group's configuration (KurrentDB's name; one
/// home: `factum_core::managed`).
pub const CONFIG_STREAM: &str = factum_core::managed::PERSISTENT_SUBSCRIPTION_CONFIG_STREAM;
/// The event type of configuration events.
pub const CONFIG_EVENT_TYPE: &str = "$PersistentConfig";

/// One group as stored in the configuration stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredGroup {
    source: GroupSource,
    group: String,
    settings: GroupSettings,
}

/// The configuration as stored: each group's entry is read on its own, so
/// one that cannot be read takes out only its group.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredConfig {
    /// [`CONFIG_VERSION`], or 1: written by a build that numbered `$all`
    /// positions from 0.
    version: u32,
    groups: Vec<Value>,
}

/// The configuration version this build writes: 2, `$all` positions (a
/// `$all` group's `startFrom`) in the numbering where the first event is
/// at 1 (ADR 25). Version 1 named the same event one lower.
const CONFIG_VERSION: u32 = 2;

impl StoredConfig {
    /// Brings a configuration an older build wrote to this build's
    /// numbering: a version-1 `$all` group's `startFrom: {"At": n}` named
    /// the event now at `n + 1`. The entries are written back in the new
    /// numbering at the next change.
    fn upgrade(mut self) -> Self {
        if self.version < CONFIG_VERSION {
            for entry in &mut self.groups {
                let all = entry.get("source").is_some_and(|s| s.get("all").is_some());
                let at = entry.pointer_mut("/settings/startFrom/At");
                if let (true, Some(at)) = (all, at) {
                    if let Some(n) = at.as_u64() {
                        *at = Value::from(n.saturating_add(1));
                    }
                }
            }
            self.version = CONFIG_VERSION;
        }
        self
    }
}

/// A configuration entry, read.
enum Entry {
    /// A group, with why it cannot run when its entry is damaged.
    Group {
        key: GroupKey,
        /// `None` when the entry's source cannot be read.
        source: Option<GroupSource>,
        settings: GroupSettings,
        fault: Option<String>,
    },
    /// An entry that does not even name its group: kept, never run.
    Unattributed(String),
}

impl Entry {
    fn read(raw: &Value) -> Entry {
        let fault = match serde_json::from_value::<StoredGroup>(raw.clone()) {
            Ok(g) => {
                return match GroupKey::new(g.source.name(), &g.group) {
                    Ok(key) => Entry::Group {
                        key,
                        source: Some(g.source),
                        settings: g.settings,
                        fault: None,
                    },
                    Err(e) => Entry::Unattributed(e.to_string()),
                }
            }
            Err(e) => format!("its stored configuration cannot be read: {e}"),
        };
        // Damaged: name the group by what can still be read.
        let source = raw
            .get("source")
            .and_then(|s| serde_json::from_value::<GroupSource>(s.clone()).ok());
        let source_name = match (&source, raw.get("source")) {
            (Some(s), _) => Some(s.name().to_owned()),
            (None, Some(s)) if s.get("all").is_some() => Some("$all".to_owned()),
            (None, Some(s)) => s.get("stream").and_then(Value::as_str).map(str::to_owned),
            (None, None) => None,
        };
        let group = raw.get("group").and_then(Value::as_str);
        match (source_name, group) {
            (Some(s), Some(g)) => match GroupKey::new(s, g) {
                Ok(key) => Entry::Group {
                    key,
                    source,
                    settings: GroupSettings::default(),
                    fault: Some(fault),
                },
                Err(e) => Entry::Unattributed(format!("{fault}; {e}")),
            },
            _ => Entry::Unattributed(fault),
        }
    }
}

struct Running {
    /// `None` when its stored entry's source cannot be read.
    source: Option<GroupSource>,
    /// Its entry in the configuration stream, written back as it is.
    entry: Value,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    /// Whether the stored configuration was read and its groups started.
    loaded: bool,
    groups: BTreeMap<GroupKey, Running>,
    /// Entries that name no group: kept in the configuration, never run.
    unattributed: Vec<Value>,
    /// The configuration stream's revision this node last wrote or read.
    config_revision: Option<u64>,
}

/// Persistent subscriptions over a store: create, update, delete, list and
/// describe groups, connect consumers, replay parked events.
///
/// ```no_run
/// # async fn run(store: std::sync::Arc<factum_engine::Engine>) -> factum_persistent::Result<()> {
/// use factum_persistent::*;
/// let subs = PersistentSubscriptions::start(store).await?;
/// let source = GroupSource::Stream("orders".into());
/// subs.create(source, "billing", GroupSettings::default()).await?;
/// let mut consumer = subs.connect("orders", "billing", ConnectOptions::default()).await?;
/// while let Some(delivery) = consumer.next().await {
///     let delivery = delivery?;
///     // … handle delivery.event …
///     consumer.ack([delivery.id()]).await;
/// }
/// # Ok(()) }
/// ```
pub struct PersistentSubscriptions<S> {
    store: Arc<S>,
    state: Arc<Mutex<State>>,
}

impl<S> Clone for PersistentSubscriptions<S> {
    fn clone(&self) -> Self {
        PersistentSubscriptions {
            store: self.store.clone(),
            state: self.state.clone(),
        }
    }
}

/// How a consumer connects.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Events it may hold unacked at once (its window).
    pub buffer_size: usize,
    /// A name shown in `GetInfo`.
    pub name: String,
    /// Where it connects from, shown in `GetInfo`.
    pub from: String,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            buffer_size: 10,
            name: String::new(),
            from: "in-process".to_owned(),
        }
    }
}

impl<S: EventStore> PersistentSubscriptions<S> {
    /// The subsystem over `store`; groups configured in the store start on
    /// first use (or with [`PersistentSubscriptions::start`]).
    pub fn new(store: Arc<S>) -> Self {
        PersistentSubscriptions {
            store,
            state: Arc::new(Mutex::new(State {
                loaded: false,
                groups: BTreeMap::new(),
                unattributed: Vec::new(),
                config_revision: None,
            })),
        }
    }

    /// Loads the groups configured in the store and starts them; each
    /// resumes after its checkpoint.
    pub async fn start(store: Arc<S>) -> Result<Self> {
        let subs = Self::new(store);
        drop(subs.ready().await?);
        Ok(subs)
    }

    /// The state, with the stored groups started. A group whose entry or
    /// checkpoint cannot be read runs faulted (reporting its error); only
    /// a store that cannot be read at all fails here.
    async fn ready(&self) -> Result<tokio::sync::MutexGuard<'_, State>> {
        let mut state = self.state.lock().await;
        if !state.loaded {
            let (config, revision) = read_config(&*self.store).await?;
            state.config_revision = revision;
            state.groups.clear();
            state.unattributed.clear();
            for raw in config.groups {
                match Entry::read(&raw) {
                    Entry::Group {
                        key,
                        source,
                        settings,
                        fault,
                    } => {
                        let running = self
                            .spawn(key.clone(), source, settings, raw, fault)
                            .await?;
                        state.groups.insert(key, running);
                    }
                    Entry::Unattributed(reason) => {
                        tracing::error!(
                            "an entry of {CONFIG_STREAM} names no group and is kept unused: {reason}: {raw}"
                        );
                        state.unattributed.push(raw);
                    }
                }
            }
            state.loaded = true;
        }
        Ok(state)
    }

    /// Starts a group's task: a faulted one when its entry is damaged
    /// (`fault`) or its checkpoint or parked stream cannot be read. Only a
    /// transient store failure is an error (the caller retries).
    async fn spawn(
        &self,
        key: GroupKey,
        source: Option<GroupSource>,
        settings: GroupSettings,
        entry: Value,
        fault: Option<String>,
    ) -> Result<Running> {
        let (commands, rx) = mpsc::channel(crate::group::COMMAND_QUEUE);
        let loaded = match (&source, fault) {
            (Some(source), None) => Group::load(
                key.clone(),
                source.clone(),
                settings.clone(),
                self.store.clone(),
            )
            .await
            .map_err(|e| match e {
                PersistentError::Store(e) if e.is_transient() => Err(e.into()),
                e => Ok(e.to_string()),
            }),
            (_, Some(fault)) => Err(Ok(fault)),
            (None, None) => Err(Ok("its stored source cannot be read".to_owned())),
        };
        let task = match loaded {
            Ok(group) => tokio::spawn(group.run(rx)),
            Err(Err(transient)) => return Err(transient),
            Err(Ok(reason)) => {
                let shown = source
                    .clone()
                    .unwrap_or_else(|| GroupSource::Stream(key.source().to_owned()));
                tokio::spawn(crate::group::run_faulted(key, shown, settings, reason, rx))
            }
        };
        Ok(Running {
            source,
            entry,
            commands,
            task,
        })
    }

    /// Creates a group and starts it.
    pub async fn create(
        &self,
        source: GroupSource,
        group: &str,
        settings: GroupSettings,
    ) -> Result<()> {
        settings.validate()?;
        if let GroupSource::All(Some(f)) = &source {
            f.compile()?;
        }
        let key = GroupKey::new(source.name(), group)?;
        let mut state = self.ready().await?;
        if state.groups.contains_key(&key) {
            return Err(PersistentError::AlreadyExists(key));
        }
        let entry = entry_of(&source, group, &settings)?;
        let mut config = stored(&state);
        config.groups.push(entry.clone());
        self.write_config(&mut state, &config).await?;
        let running = self
            .spawn(key.clone(), Some(source), settings, entry, None)
            .await?;
        state.groups.insert(key, running);
        Ok(())
    }

    /// Changes a group's settings. Its consumers are disconnected (they
    /// reconnect, as with KurrentDB); its checkpoint is kept.
    pub async fn update(&self, source: &str, group: &str, settings: GroupSettings) -> Result<()> {
        settings.validate()?;
        let key = GroupKey::new(source, group)?;
        let mut state = self.ready().await?;
        let Some(source) = state.groups.get(&key).map(|r| r.source.clone()) else {
            return Err(PersistentError::NotFound(key));
        };
        // A faulted group whose source can be read is repaired by new
        // settings; without its source (a `$all` filter, say) it can only
        // be deleted.
        let Some(source) = source else {
            return Err(PersistentError::Faulted {
                key,
                reason: "its stored source cannot be read: delete the group and create it again"
                    .to_owned(),
            });
        };
        let entry = entry_of(&source, group, &settings)?;
        let running = state.groups.remove(&key).expect("looked up above");
        stop(running, "the group's settings were updated").await;
        let mut config = stored(&state);
        config.groups.push(entry.clone());
        let written = self.write_config(&mut state, &config).await;
        let restarted = self
            .spawn(key.clone(), Some(source), settings, entry, None)
            .await?;
        state.groups.insert(key, restarted);
        written
    }

    /// Deletes a group, its checkpoint and its parked stream; its consumers
    /// are disconnected.
    pub async fn delete(&self, source: &str, group: &str) -> Result<()> {
        let key = GroupKey::new(source, group)?;
        let mut state = self.ready().await?;
        let running = state
            .groups
            .remove(&key)
            .ok_or_else(|| PersistentError::NotFound(key.clone()))?;
        stop(running, "the group was deleted").await;
        let config = stored(&state);
        self.write_config(&mut state, &config).await?;
        for stream in [key.checkpoint_stream(), key.parked_stream()] {
            match self
                .store
                .delete_stream(stream, ExpectedRevision::Any)
                .await
            {
                Ok(_) | Err(factum_core::Error::StreamNotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Every group, or those of one source (`$all` for the `$all` groups).
    pub async fn list(&self, source: Option<&str>) -> Result<Vec<GroupInfo>> {
        let targets: Vec<_> = {
            let state = self.ready().await?;
            state
                .groups
                .iter()
                .filter(|(k, _)| source.is_none_or(|s| k.source() == s))
                .map(|(_, r)| r.commands.clone())
                .collect()
        };
        let mut infos = Vec::with_capacity(targets.len());
        for commands in targets {
            if let Some(info) = ask_info(&commands).await {
                infos.push(info);
            }
        }
        Ok(infos)
    }

    /// One group's state.
    pub async fn info(&self, source: &str, group: &str) -> Result<GroupInfo> {
        let (key, commands) = self.commands(source, group).await?;
        ask_info(&commands)
            .await
            .ok_or(PersistentError::NotFound(key))
    }

    /// Connects a consumer.
    pub async fn connect(
        &self,
        source: &str,
        group: &str,
        options: ConnectOptions,
    ) -> Result<Consumer> {
        if options.buffer_size > MAX_CONSUMER_WINDOW {
            return Err(PersistentError::InvalidSettings(format!(
                "consumer buffer size {} is more than the largest allowed, {MAX_CONSUMER_WINDOW}",
                options.buffer_size
            )));
        }
        let (key, commands) = self.commands(source, group).await?;
        let (reply, answer) = oneshot::channel();
        let sent = commands
            .send(Command::Connect {
                name: options.name,
                from: options.from,
                window: options.buffer_size,
                reply,
            })
            .await;
        if sent.is_err() {
            return Err(PersistentError::NotFound(key));
        }
        let connected = answer
            .await
            .map_err(|_| PersistentError::NotFound(key.clone()))??;
        Ok(Consumer {
            key,
            id: connected.consumer,
            commands,
            events: connected.events,
            settings: connected.settings,
            ended: false,
        })
    }

    /// Delivers the group's parked events again (at most `stop_at` of
    /// them); answers how many were queued for redelivery.
    pub async fn replay_parked(
        &self,
        source: &str,
        group: &str,
        stop_at: Option<u64>,
    ) -> Result<u64> {
        let (key, commands) = self.commands(source, group).await?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command::ReplayParked { stop_at, reply })
            .await
            .map_err(|_| PersistentError::NotFound(key.clone()))?;
        answer.await.map_err(|_| PersistentError::NotFound(key))?
    }

    /// Stops every group (checkpointing, disconnecting consumers) and
    /// starts them again from the stored configuration.
    pub async fn restart(&self) -> Result<()> {
        self.stop_all("the persistent subscriptions subsystem restarted")
            .await;
        drop(self.ready().await?);
        Ok(())
    }

    /// Stops every group, writing each one's checkpoint. Call before
    /// closing the store.
    pub async fn shutdown(&self) {
        self.stop_all("the server is shutting down").await;
    }

    async fn stop_all(&self, reason: &str) {
        let mut state = self.state.lock().await;
        for (_, running) in std::mem::take(&mut state.groups) {
            stop(running, reason).await;
        }
        state.loaded = false;
    }

    async fn commands(
        &self,
        source: &str,
        group: &str,
    ) -> Result<(GroupKey, mpsc::Sender<Command>)> {
        let key = GroupKey::new(source, group)?;
        let state = self.ready().await?;
        match state.groups.get(&key) {
            Some(r) => Ok((key, r.commands.clone())),
            None => Err(PersistentError::NotFound(key)),
        }
    }

    async fn write_config(&self, state: &mut State, config: &StoredConfig) -> Result<()> {
        let expected = match state.config_revision {
            None => ExpectedRevision::NoStream,
            Some(r) => ExpectedRevision::Exact(factum_core::StreamRevision(r)),
        };
        let event = EventData::json(CONFIG_EVENT_TYPE, config)?;
        match self
            .store
            .append(config_stream(), expected, vec![event])
            .await
        {
            Ok(r) => {
                state.config_revision = Some(r.revision.0);
                Ok(())
            }
            Err(e @ factum_core::Error::WrongExpectedVersion { .. }) => {
                Err(PersistentError::Store(factum_core::Error::unavailable(factum_core::UnavailableReason::Unspecified, format!(
                    "the persistent subscription configuration was changed by another node ({e}); restart the subsystem to reload it"
                ))))
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn stored(state: &State) -> StoredConfig {
    StoredConfig {
        version: CONFIG_VERSION,
        groups: state
            .groups
            .values()
            .map(|r| r.entry.clone())
            .chain(state.unattributed.iter().cloned())
            .collect(),
    }
}

/// A group's configuration entry.
fn entry_of(source: &GroupSource, group: &str, settings: &GroupSettings) -> Result<Value> {
    serde_json::to_value(StoredGroup {
        source: source.clone(),
        group: group.to_owned(),
        settings: settings.clone(),
    })
    .map_err(|e| PersistentError::InvalidSettings(format!("settings cannot be stored: {e}")))
}

fn config_stream() -> StreamName {
    StreamName::new(CONFIG_STREAM).expect("valid name")
}

/// Configuration events looked through, newest first, for one that can
/// be read at all.
const CONFIG_HISTORY: u64 = 64;

/// The newest configuration and the stream's last revision. Each event is
/// the whole configuration; one that cannot be read as a list of entries
/// (a damaged event) is passed over for the newest older one that can,
/// loudly: the next change supersedes it.
async fn read_config<S: EventStore>(store: &S) -> Result<(StoredConfig, Option<u64>)> {
    let events = match store
        .read_stream(ReadStream::backwards(config_stream()).max_count(CONFIG_HISTORY))
        .await
    {
        Ok(events) => events,
        Err(factum_core::Error::StreamNotFound { .. }) => {
            return Ok((StoredConfig::default(), None))
        }
        Err(e) => return Err(e.into()),
    };
    let Some(last) = events.first().map(|e| e.revision.0) else {
        return Ok((StoredConfig::default(), None));
    };
    for e in &events {
        match serde_json::from_slice::<StoredConfig>(&e.data) {
            Ok(config) => return Ok((config.upgrade(), Some(last))),
            Err(err) => tracing::error!(
                "{CONFIG_STREAM} revision {} is not a configuration Factum can read ({err}); trying the one before",
                e.revision
            ),
        }
    }
    tracing::error!(
        "none of the last {} events of {CONFIG_STREAM} is a configuration Factum can read: no group is started",
        events.len()
    );
    Ok((StoredConfig::default(), Some(last)))
}

async fn ask_info(commands: &mpsc::Sender<Command>) -> Option<GroupInfo> {
    let (reply, answer) = oneshot::channel();
    commands.send(Command::Info { reply }).await.ok()?;
    answer.await.ok()
}

async fn stop(running: Running, reason: &str) {
    let (reply, done) = oneshot::channel();
    if running
        .commands
        .send(Command::Stop {
            reason: reason.to_owned(),
            reply,
        })
        .await
        .is_ok()
    {
        let _ = done.await;
    }
    let _ = running.task.await;
}

/// A connected consumer: receives deliveries, acks and nacks them. Dropping
/// it disconnects; its unacked events go to other consumers.
pub struct Consumer {
    key: GroupKey,
    id: u64,
    commands: mpsc::Sender<Command>,
    events: mpsc::UnboundedReceiver<ConsumerMessage>,
    settings: GroupSettings,
    ended: bool,
}

impl Consumer {
    /// The next delivery; an error when the connection was dropped (the
    /// group was deleted or updated, the subsystem stopped), then `None`.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        if self.ended {
            return None;
        }
        match self.events.recv().await {
            Some(ConsumerMessage::Event(d)) => Some(Ok(d)),
            Some(ConsumerMessage::Dropped(reason)) => {
                self.ended = true;
                Some(Err(PersistentError::Dropped {
                    key: self.key.clone(),
                    reason,
                }))
            }
            None => {
                self.ended = true;
                Some(Err(PersistentError::Dropped {
                    key: self.key.clone(),
                    reason: "the group stopped".to_owned(),
                }))
            }
        }
    }

    /// Acknowledges events by [`Delivery::id`]. Waits while the group's
    /// request queue is full.
    pub async fn ack(&self, ids: impl IntoIterator<Item = Uuid>) {
        let _ = self
            .commands
            .send(Command::Ack {
                ids: ids.into_iter().collect(),
            })
            .await;
    }

    /// Rejects events by [`Delivery::id`]. Waits while the group's request
    /// queue is full.
    pub async fn nack(
        &self,
        ids: impl IntoIterator<Item = Uuid>,
        action: NackAction,
        reason: &str,
    ) {
        let _ = self
            .commands
            .send(Command::Nack {
                consumer: self.id,
                ids: ids.into_iter().collect(),
                action,
                reason: reason.to_owned(),
            })
            .await;
    }

    /// The settings of its group at the time it connected.
    pub fn settings(&self) -> &GroupSettings {
        &self.settings
    }

    /// The group this consumer belongs to.
    pub fn group(&self) -> &GroupKey {
        &self.key
    }

    /// KurrentDB's subscription id for the confirmation message:
    /// `<source>::<group>`.
    pub fn subscription_id(&self) -> String {
        self.key.to_string()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Drop cannot wait: when the queue is full, the group notices the
        // closed delivery channel on its next timer tick instead.
        let _ = self
            .commands
            .try_send(Command::Disconnect { consumer: self.id });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StartFrom;
    use serde_json::json;

    #[test]
    fn a_version_1_configuration_moves_all_start_positions_up_one() {
        let old: StoredConfig = serde_json::from_value(json!({
            "version": 1,
            "groups": [
                { "source": { "all": null }, "group": "a", "settings": { "startFrom": { "At": 3 } } },
                { "source": { "all": null }, "group": "b", "settings": { "startFrom": "Start" } },
                { "source": { "stream": "order-1" }, "group": "c", "settings": { "startFrom": { "At": 3 } } },
                { "damaged": true }
            ]
        }))
        .unwrap();
        let new = old.upgrade();
        assert_eq!(new.version, CONFIG_VERSION);
        let start = |i: usize| new.groups[i].pointer("/settings/startFrom").cloned();
        // The event the old build numbered 3 is at 4 now; revisions stay.
        assert_eq!(start(0), Some(json!({ "At": 4 })));
        assert_eq!(start(1), Some(json!("Start")));
        assert_eq!(start(2), Some(json!({ "At": 3 })));
        assert_eq!(new.groups[3], json!({ "damaged": true }));
        let Entry::Group { settings, .. } = Entry::read(&new.groups[0]) else {
            panic!("entry a unreadable");
        };
        assert_eq!(settings.start_from, StartFrom::At(4));
        // A configuration this build wrote is left as it is.
        let again = StoredConfig {
            version: CONFIG_VERSION,
            groups: new.groups.clone(),
        }
        .upgrade();
        assert_eq!(again.groups, new.groups);
    }
}

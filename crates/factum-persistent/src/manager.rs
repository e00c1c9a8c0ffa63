//! The subsystem: every group of a store, their configuration (kept in the
//! store itself, in `$persistentSubscriptionConfig`), and the consumer
//! handles.

use std::collections::BTreeMap;
use std::sync::Arc;

use factum_core::{EventData, EventStore, ExpectedRevision, ReadStream, StreamName, Uuid};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::error::{PersistentError, Result};
use crate::group::{Command, ConsumerMessage, Delivery, Group, NackAction};
use crate::info::GroupInfo;
use crate::settings::{GroupKey, GroupSettings, GroupSource};

/// The stream holding every group's configuration (KurrentDB's name).
pub const CONFIG_STREAM: &str = "$persistentSubscriptionConfig";
/// The event type of configuration events.
pub const CONFIG_EVENT_TYPE: &str = "$PersistentConfig";

/// One group as stored in the configuration stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredGroup {
    source: GroupSource,
    group: String,
    settings: GroupSettings,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredConfig {
    version: u32,
    groups: Vec<StoredGroup>,
}

struct Running {
    source: GroupSource,
    settings: GroupSettings,
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    /// Whether the stored configuration was read and its groups started.
    loaded: bool,
    groups: BTreeMap<GroupKey, Running>,
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
///     consumer.ack([delivery.id()]);
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

    /// The state, with the stored groups started.
    async fn ready(&self) -> Result<tokio::sync::MutexGuard<'_, State>> {
        let mut state = self.state.lock().await;
        if !state.loaded {
            let (config, revision) = read_config(&*self.store).await?;
            state.config_revision = revision;
            for g in config.groups {
                let key = GroupKey::new(g.source.name(), &g.group)?;
                let running = self.spawn(key.clone(), g.source, g.settings).await?;
                state.groups.insert(key, running);
            }
            state.loaded = true;
        }
        Ok(state)
    }

    async fn spawn(
        &self,
        key: GroupKey,
        source: GroupSource,
        settings: GroupSettings,
    ) -> Result<Running> {
        let group = Group::load(key, source.clone(), settings.clone(), self.store.clone()).await?;
        let (commands, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(group.run(rx));
        Ok(Running {
            source,
            settings,
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
        let mut config = stored(&state);
        config.groups.push(StoredGroup {
            source: source.clone(),
            group: group.to_owned(),
            settings: settings.clone(),
        });
        self.write_config(&mut state, &config).await?;
        let running = self.spawn(key.clone(), source, settings).await?;
        state.groups.insert(key, running);
        Ok(())
    }

    /// Changes a group's settings. Its consumers are disconnected (they
    /// reconnect, as with KurrentDB); its checkpoint is kept.
    pub async fn update(&self, source: &str, group: &str, settings: GroupSettings) -> Result<()> {
        settings.validate()?;
        let key = GroupKey::new(source, group)?;
        let mut state = self.ready().await?;
        let running = state
            .groups
            .remove(&key)
            .ok_or_else(|| PersistentError::NotFound(key.clone()))?;
        let source = running.source.clone();
        stop(running, "the group's settings were updated").await;
        let mut config = stored(&state);
        config.groups.push(StoredGroup {
            source: source.clone(),
            group: group.to_owned(),
            settings: settings.clone(),
        });
        let written = self.write_config(&mut state, &config).await;
        let restarted = self.spawn(key.clone(), source, settings).await?;
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
        let (key, commands) = self.commands(source, group).await?;
        let (reply, answer) = oneshot::channel();
        let sent = commands.send(Command::Connect {
            name: options.name,
            from: options.from,
            window: options.buffer_size,
            reply,
        });
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
    ) -> Result<(GroupKey, mpsc::UnboundedSender<Command>)> {
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
                Err(PersistentError::Store(factum_core::Error::Unavailable(format!(
                    "the persistent subscription configuration was changed by another node ({e}); restart the subsystem to reload it"
                ))))
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn stored(state: &State) -> StoredConfig {
    StoredConfig {
        version: 1,
        groups: state
            .groups
            .iter()
            .map(|(k, r)| StoredGroup {
                source: r.source.clone(),
                group: k.group().to_owned(),
                settings: r.settings.clone(),
            })
            .collect(),
    }
}

fn config_stream() -> StreamName {
    StreamName::new(CONFIG_STREAM).expect("valid name")
}

async fn read_config<S: EventStore>(store: &S) -> Result<(StoredConfig, Option<u64>)> {
    match store
        .read_stream(ReadStream::backwards(config_stream()).max_count(1))
        .await
    {
        Ok(events) => match events.first() {
            Some(e) => {
                let config: StoredConfig = serde_json::from_slice(&e.data).map_err(|err| {
                    PersistentError::Store(factum_core::Error::InvalidInput(format!(
                        "{CONFIG_STREAM} revision {} is not a configuration Factum can read: {err}",
                        e.revision
                    )))
                })?;
                Ok((config, Some(e.revision.0)))
            }
            None => Ok((StoredConfig::default(), None)),
        },
        Err(factum_core::Error::StreamNotFound { .. }) => Ok((StoredConfig::default(), None)),
        Err(e) => Err(e.into()),
    }
}

async fn ask_info(commands: &mpsc::UnboundedSender<Command>) -> Option<GroupInfo> {
    let (reply, answer) = oneshot::channel();
    commands.send(Command::Info { reply }).ok()?;
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
    commands: mpsc::UnboundedSender<Command>,
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

    /// Acknowledges events by [`Delivery::id`].
    pub fn ack(&self, ids: impl IntoIterator<Item = Uuid>) {
        let _ = self.commands.send(Command::Ack {
            ids: ids.into_iter().collect(),
        });
    }

    /// Rejects events by [`Delivery::id`].
    pub fn nack(&self, ids: impl IntoIterator<Item = Uuid>, action: NackAction, reason: &str) {
        let _ = self.commands.send(Command::Nack {
            consumer: self.id,
            ids: ids.into_iter().collect(),
            action,
            reason: reason.to_owned(),
        });
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
        let _ = self
            .commands
            .send(Command::Disconnect { consumer: self.id });
    }
}

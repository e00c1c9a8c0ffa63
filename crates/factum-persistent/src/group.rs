//! One group: a task that reads the source lazily, hands events to consumers
//! by the group's strategy, tracks acks, retries, timeouts and parking, and
//! writes the checkpoint. Commands reach it over a channel, so a group never
//! shares state with another and a slow consumer only ever holds up itself:
//! the source is read only while the read-ahead buffer has room, and each
//! consumer receives at most its window of unacked events.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use factum_core::{
    managed, EventStore, ExpectedRevision, ReadStream, RecordedEvent, StreamName, Subscribe,
    Subscription, SubscriptionMessage, SubscriptionStart, Uuid,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::{PersistentError, Result};
use crate::info::{ConnectionInfo, GroupInfo};
use crate::settings::{ConsumerStrategy, GroupKey, GroupSettings, GroupSource, StartFrom};
use crate::streams;

/// How long a group waits before re-subscribing after its source failed.
const RESUBSCRIBE_BACKOFF: Duration = Duration::from_secs(1);
/// Throughput is measured per this interval.
const MEASUREMENT: Duration = Duration::from_secs(1);
/// Source places a group tracks for its checkpoint at most: when an early
/// event stays unacked while later ones flow, reading pauses here (until it
/// is acked or times out) rather than growing without bound.
const MAX_TRACKED: usize = 100_000;

/// What a consumer does with an event it cannot handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NackAction {
    /// Move it to the parked stream now.
    Park,
    /// Deliver it again (parked after `max_retry_count` retries).
    Retry,
    /// Drop it: it counts as handled.
    Skip,
    /// End this consumer's connection; the event is delivered again.
    Stop,
}

/// An event handed to a consumer.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The event (with its link when the source is a `$ce-`/`$et-` stream).
    pub event: Arc<RecordedEvent>,
    /// How many times it was delivered before.
    pub retry_count: u32,
}

impl Delivery {
    /// The id to ack or nack it by: the link's when it came through one.
    pub fn id(&self) -> Uuid {
        self.event.original_id()
    }
}

/// What a consumer's channel carries.
#[derive(Debug)]
pub(crate) enum ConsumerMessage {
    Event(Delivery),
    Dropped(String),
}

/// A new consumer's handles.
pub(crate) struct Connected {
    pub consumer: u64,
    pub events: mpsc::UnboundedReceiver<ConsumerMessage>,
    pub settings: GroupSettings,
}

/// How many requests may wait for a group's task. Senders wait beyond it:
/// a client that acks faster than the group handles acks is slowed down
/// (its gRPC stream is read no faster), instead of queueing without bound.
pub(crate) const COMMAND_QUEUE: usize = 256;

/// Requests to a group's task.
pub(crate) enum Command {
    Connect {
        name: String,
        from: String,
        window: usize,
        reply: oneshot::Sender<Result<Connected>>,
    },
    /// Acks go by event id, whichever consumer sends them.
    Ack {
        ids: Vec<Uuid>,
    },
    Nack {
        consumer: u64,
        ids: Vec<Uuid>,
        action: NackAction,
        reason: String,
    },
    Disconnect {
        consumer: u64,
    },
    Info {
        reply: oneshot::Sender<GroupInfo>,
    },
    ReplayParked {
        stop_at: Option<u64>,
        reply: oneshot::Sender<Result<u64>>,
    },
    Stop {
        reason: String,
        reply: oneshot::Sender<()>,
    },
}

/// An event on its way through the group.
struct Message {
    event: Arc<RecordedEvent>,
    retry_count: u32,
    /// Its place in the source (revision or position) while it holds the
    /// checkpoint back; `None` for events replayed from the parked stream.
    seq: Option<u64>,
}

struct InFlight {
    message: Message,
    consumer: u64,
    nonce: u64,
}

struct Consumer {
    id: u64,
    name: String,
    from: String,
    /// Unbounded in type, bounded in use: the group sends an event only
    /// while `in_flight < window` (at most MAX_CONSUMER_WINDOW), plus one
    /// `Dropped`.
    tx: mpsc::UnboundedSender<ConsumerMessage>,
    window: usize,
    in_flight: usize,
    total: u64,
    measured: u64,
    last_measured: u64,
}

/// A group's task state.
pub(crate) struct Group<S> {
    key: GroupKey,
    source: GroupSource,
    /// The `$all` filter, applied in the group.
    filter: Option<factum_core::Filter>,
    settings: GroupSettings,
    store: Arc<S>,
    /// Where to (re)subscribe from.
    resume: SubscriptionStart,
    resubscribe_at: Option<Instant>,
    source_closed: bool,
    live: bool,
    last_read: Option<u64>,
    scanned_to: Option<u64>,
    /// Source places read and not yet handled (`true` once handled), in
    /// source order: the checkpoint is the last place before the first
    /// unhandled one.
    window: VecDeque<(u64, bool)>,
    checkpoint_candidate: Option<u64>,
    checkpoint_written: Option<u64>,
    checkpoint_stream_ready: bool,
    since_checkpoint: u64,
    last_checkpoint_at: Instant,
    buffer: VecDeque<Message>,
    retry: VecDeque<Message>,
    in_flight: HashMap<Uuid, InFlight>,
    timeouts: VecDeque<(Instant, Uuid, u64)>,
    nonce: u64,
    consumers: Vec<Consumer>,
    next_consumer: u64,
    round_robin: usize,
    parked: u64,
    parked_total: u64,
    redelivered: u64,
    total_items: u64,
    measured: u64,
    last_measured: u64,
    measured_at: Instant,
}

impl<S: EventStore> Group<S> {
    /// Prepares a group: reads its checkpoint and parked count, and works
    /// out where reading starts.
    pub(crate) async fn load(
        key: GroupKey,
        source: GroupSource,
        settings: GroupSettings,
        store: Arc<S>,
    ) -> Result<Self> {
        let checkpoint = streams::read_checkpoint(&*store, &key).await?;
        let parked = streams::parked_count(&*store, &key.parked_stream()).await?;
        let now = Instant::now();
        let filter = match &source {
            GroupSource::All(Some(f)) => Some(f.compile()?),
            _ => None,
        };
        let mut group = Group {
            key,
            filter,
            source,
            settings,
            store,
            resume: SubscriptionStart::Beginning,
            resubscribe_at: Some(now),
            source_closed: false,
            live: false,
            last_read: checkpoint,
            scanned_to: checkpoint,
            window: VecDeque::new(),
            checkpoint_candidate: checkpoint,
            checkpoint_written: checkpoint,
            checkpoint_stream_ready: checkpoint.is_some(),
            since_checkpoint: 0,
            last_checkpoint_at: now,
            buffer: VecDeque::new(),
            retry: VecDeque::new(),
            in_flight: HashMap::new(),
            timeouts: VecDeque::new(),
            nonce: 0,
            consumers: Vec::new(),
            next_consumer: 1,
            round_robin: 0,
            parked,
            parked_total: 0,
            redelivered: 0,
            total_items: 0,
            measured: 0,
            last_measured: 0,
            measured_at: now,
        };
        group.resume = match checkpoint {
            Some(c) => SubscriptionStart::After(c),
            None => group.initial_start().await?,
        };
        Ok(group)
    }

    /// Where a group without a checkpoint starts. `End` is resolved once
    /// and written as the checkpoint, so a restart does not skip the events
    /// appended in between.
    async fn initial_start(&mut self) -> Result<SubscriptionStart> {
        Ok(match self.settings.start_from {
            StartFrom::Start | StartFrom::At(0) => SubscriptionStart::Beginning,
            StartFrom::At(n) => SubscriptionStart::After(n - 1),
            StartFrom::End => {
                let end = match &self.source {
                    GroupSource::All(_) => self.store.head_position().await?.map(|p| p.0),
                    GroupSource::Stream(s) => {
                        streams::last_revision(&*self.store, &stream_name(s)?).await?
                    }
                };
                match end {
                    None => SubscriptionStart::Beginning,
                    Some(e) => {
                        self.checkpoint_candidate = Some(e);
                        self.last_read = Some(e);
                        self.scanned_to = Some(e);
                        self.write_checkpoint().await;
                        SubscriptionStart::After(e)
                    }
                }
            }
        })
    }

    /// Runs until stopped or until every handle to it is gone.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut subscription: Option<Subscription> = None;
        loop {
            self.dispatch();
            if self.since_checkpoint >= u64::from(self.settings.max_checkpoint_count) {
                self.write_checkpoint().await;
            }
            let can_read = subscription.is_some()
                && self.buffer.len() < self.settings.buffer_capacity()
                && self.window.len() < MAX_TRACKED.max(self.settings.buffer_capacity());
            let wake = self.next_wake();
            enum Woken {
                Command(Option<Command>),
                Source(Option<factum_core::Result<SubscriptionMessage>>),
                Timer,
            }
            let woken = tokio::select! {
                biased;
                c = commands.recv() => Woken::Command(c),
                m = async { subscription.as_mut().expect("can_read").next().await }, if can_read => {
                    Woken::Source(m)
                }
                _ = tokio::time::sleep_until(wake) => Woken::Timer,
            };
            match woken {
                Woken::Command(None) => {
                    self.stop("the subsystem stopped").await;
                    return;
                }
                Woken::Command(Some(Command::Stop { reason, reply })) => {
                    self.stop(&reason).await;
                    let _ = reply.send(());
                    return;
                }
                Woken::Command(Some(c)) => self.handle(c).await,
                Woken::Source(m) => {
                    if !self.on_source(m) {
                        subscription = None;
                    }
                }
                Woken::Timer => {
                    self.on_timer().await;
                    if subscription.is_none() && self.resubscribe_due() {
                        subscription = self.subscribe().await;
                    }
                }
            }
        }
    }

    fn resubscribe_due(&self) -> bool {
        !self.source_closed && self.resubscribe_at.is_some_and(|t| t <= Instant::now())
    }

    async fn subscribe(&mut self) -> Option<Subscription> {
        let request = match &self.source {
            GroupSource::Stream(s) => match stream_name(s) {
                Ok(name) => Subscribe::stream(name, self.resume),
                Err(e) => {
                    tracing::error!(group = %self.key, "cannot subscribe: {e}");
                    self.resubscribe_at = None;
                    return None;
                }
            },
            // Filtered in the group (look-around regexes are allowed), so
            // events that do not match still move the checkpoint.
            GroupSource::All(_) => Subscribe::all(self.resume, None),
        };
        match self.store.subscribe(request).await {
            Ok(s) => {
                self.resubscribe_at = None;
                Some(s)
            }
            Err(e) => {
                tracing::warn!(group = %self.key, "subscribing to the source failed, retrying: {e}");
                self.resubscribe_at = Some(Instant::now() + RESUBSCRIBE_BACKOFF);
                None
            }
        }
    }

    /// Takes one message from the source; `false` when the subscription is
    /// gone (an error: re-subscribe later; the end: the store closed).
    fn on_source(&mut self, message: Option<factum_core::Result<SubscriptionMessage>>) -> bool {
        let skips = match &message {
            Some(Ok(SubscriptionMessage::Event(event))) => self.skips(event),
            _ => false,
        };
        match message {
            Some(Ok(SubscriptionMessage::Event(event))) if skips => {
                self.scanned(event.position.0);
                true
            }
            Some(Ok(SubscriptionMessage::Event(event))) => {
                let seq = match self.source {
                    GroupSource::Stream(_) => event.read_revision().0,
                    GroupSource::All(_) => event.position.0,
                };
                self.last_read = Some(seq);
                self.scanned_to = Some(seq);
                self.resume = SubscriptionStart::After(seq);
                self.window.push_back((seq, false));
                self.buffer.push_back(Message {
                    event: Arc::new(event),
                    retry_count: 0,
                    seq: Some(seq),
                });
                true
            }
            Some(Ok(SubscriptionMessage::Checkpoint(p))) => {
                self.scanned(p.0);
                true
            }
            Some(Ok(SubscriptionMessage::CaughtUp)) => {
                self.live = true;
                true
            }
            Some(Ok(SubscriptionMessage::FellBehind)) => {
                self.live = false;
                true
            }
            Some(Err(e)) => {
                tracing::warn!(group = %self.key, "source subscription failed, re-subscribing: {e}");
                self.live = false;
                self.resubscribe_at = Some(Instant::now() + RESUBSCRIBE_BACKOFF);
                false
            }
            None => {
                self.source_closed = true;
                false
            }
        }
    }

    /// Whether a `$all` group passes over an event: one its filter does not
    /// match, or one of the streams persistent subscriptions write
    /// themselves (checkpoints, parked links, the configuration), so a
    /// group never feeds on its own checkpoints.
    /// Filters match in linear time and always decide (factum_core::filter).
    fn skips(&self, event: &RecordedEvent) -> bool {
        if !self.source.is_all() {
            return false;
        }
        if managed::owner_of(&event.stream) == Some(managed::Owner::PersistentSubscriptions) {
            return true;
        }
        self.filter.as_ref().is_some_and(|f| !f.matches(event))
    }

    /// The source was read up to `place` with nothing to deliver.
    fn scanned(&mut self, place: u64) {
        if self.scanned_to.is_none_or(|s| s < place) {
            self.scanned_to = Some(place);
            self.resume = SubscriptionStart::After(place);
            self.advance_candidate();
        }
    }

    /// Hands waiting events (retries first) to consumers with room.
    fn dispatch(&mut self) {
        loop {
            let from_retry = !self.retry.is_empty();
            let next = if from_retry {
                self.retry.front()
            } else {
                self.buffer.front()
            };
            let Some(message) = next else { return };
            if self.in_flight.contains_key(&message.event.original_id()) {
                // The same event is out already (replayed while in flight):
                // it waits for that delivery's outcome.
                return;
            }
            let event = message.event.clone();
            let Some(index) = self.choose(&event) else {
                return;
            };
            let message = if from_retry {
                self.retry.pop_front()
            } else {
                self.buffer.pop_front()
            }
            .expect("peeked");
            let consumer = &mut self.consumers[index];
            let delivery = Delivery {
                event: message.event.clone(),
                retry_count: message.retry_count,
            };
            if consumer.tx.send(ConsumerMessage::Event(delivery)).is_err() {
                // The consumer went away without saying so.
                let id = consumer.id;
                self.retry.push_front(message);
                self.remove_consumer(id);
                continue;
            }
            consumer.in_flight += 1;
            consumer.total += 1;
            consumer.measured += 1;
            self.total_items += 1;
            self.measured += 1;
            if message.retry_count > 0 {
                self.redelivered += 1;
            }
            self.nonce += 1;
            let id = message.event.original_id();
            if !self.settings.message_timeout.is_zero() {
                self.timeouts.push_back((
                    Instant::now() + self.settings.message_timeout,
                    id,
                    self.nonce,
                ));
            }
            let consumer = consumer.id;
            self.in_flight.insert(
                id,
                InFlight {
                    message,
                    consumer,
                    nonce: self.nonce,
                },
            );
        }
    }

    /// The consumer for an event by the group's strategy, `None` when the
    /// one it must go to (or every one) is full.
    fn choose(&mut self, event: &RecordedEvent) -> Option<usize> {
        let n = self.consumers.len();
        if n == 0 {
            return None;
        }
        let free = |c: &Consumer| c.in_flight < c.window;
        match self.settings.consumer_strategy {
            ConsumerStrategy::DispatchToSingle => self.consumers.iter().position(free),
            ConsumerStrategy::RoundRobin => {
                let i = (0..n)
                    .map(|k| (self.round_robin + k) % n)
                    .find(|&i| free(&self.consumers[i]))?;
                self.round_robin = i + 1;
                Some(i)
            }
            ConsumerStrategy::Pinned => {
                let mut h = DefaultHasher::new();
                event.stream.as_str().hash(&mut h);
                let i = (h.finish() % n as u64) as usize;
                free(&self.consumers[i]).then_some(i)
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Connect {
                name,
                from,
                window,
                reply,
            } => {
                let max = self.settings.max_subscriber_count;
                if max > 0 && self.consumers.len() >= max as usize {
                    let _ = reply.send(Err(PersistentError::MaximumSubscribersReached {
                        key: self.key.clone(),
                        max,
                    }));
                    return;
                }
                let (tx, events) = mpsc::unbounded_channel();
                let id = self.next_consumer;
                self.next_consumer += 1;
                self.consumers.push(Consumer {
                    id,
                    name,
                    from,
                    tx,
                    window: window.max(1),
                    in_flight: 0,
                    total: 0,
                    measured: 0,
                    last_measured: 0,
                });
                let _ = reply.send(Ok(Connected {
                    consumer: id,
                    events,
                    settings: self.settings.clone(),
                }));
            }
            Command::Ack { ids } => {
                for id in ids {
                    if let Some(message) = self.take(id) {
                        self.handled(message.seq);
                    }
                }
            }
            Command::Nack {
                consumer,
                ids,
                action,
                reason,
            } => {
                for id in ids {
                    let Some(message) = self.take(id) else {
                        continue;
                    };
                    match action {
                        NackAction::Park => self.park(message, &reason).await,
                        NackAction::Retry => self.retry_or_park(message, &reason).await,
                        NackAction::Skip => self.handled(message.seq),
                        NackAction::Stop => self.requeue(message),
                    }
                }
                if action == NackAction::Stop {
                    if let Some(c) = self.consumers.iter().find(|c| c.id == consumer) {
                        let _ = c.tx.send(ConsumerMessage::Dropped(format!(
                            "the consumer nacked with Stop: {reason}"
                        )));
                    }
                    self.remove_consumer(consumer);
                }
            }
            Command::Disconnect { consumer } => self.remove_consumer(consumer),
            Command::Info { reply } => {
                let _ = reply.send(self.info());
            }
            Command::ReplayParked { stop_at, reply } => {
                let _ = reply.send(self.replay_parked(stop_at).await);
            }
            Command::Stop { .. } => unreachable!("handled by run"),
        }
    }

    /// Takes an event out of flight (or out of the retry queue, for an ack
    /// that arrives after its timeout).
    fn take(&mut self, id: Uuid) -> Option<Message> {
        if let Some(f) = self.in_flight.remove(&id) {
            if let Some(c) = self.consumers.iter_mut().find(|c| c.id == f.consumer) {
                c.in_flight = c.in_flight.saturating_sub(1);
            }
            return Some(f.message);
        }
        let i = self
            .retry
            .iter()
            .position(|m| m.event.original_id() == id)?;
        self.retry.remove(i)
    }

    /// An event is done with (acked, skipped or parked).
    fn handled(&mut self, seq: Option<u64>) {
        self.since_checkpoint += 1;
        if let Some(seq) = seq {
            if let Ok(i) = self.window.binary_search_by_key(&seq, |w| w.0) {
                self.window[i].1 = true;
            }
            self.advance_candidate();
        }
    }

    fn advance_candidate(&mut self) {
        while let Some(&(seq, true)) = self.window.front() {
            self.window.pop_front();
            self.checkpoint_candidate = Some(seq);
        }
        if self.window.is_empty() && self.scanned_to > self.checkpoint_candidate {
            self.checkpoint_candidate = self.scanned_to;
        }
    }

    fn requeue(&mut self, message: Message) {
        self.retry.push_back(message);
    }

    async fn retry_or_park(&mut self, mut message: Message, reason: &str) {
        message.retry_count += 1;
        if message.retry_count > self.settings.max_retry_count {
            let reason = format!(
                "{reason} (retried {} times, the maximum is {})",
                message.retry_count - 1,
                self.settings.max_retry_count
            );
            self.park(message, &reason).await;
        } else {
            self.requeue(message);
        }
    }

    /// Writes a link to the event into the parked stream; the event then
    /// counts as handled. If the write fails it stays due for retry.
    async fn park(&mut self, message: Message, reason: &str) {
        let e = &message.event;
        let link = streams::parked_link(e, message.retry_count, reason);
        match self
            .store
            .append(self.key.parked_stream(), ExpectedRevision::Any, vec![link])
            .await
        {
            Ok(_) => {
                self.parked += 1;
                self.parked_total += 1;
                self.handled(message.seq);
            }
            Err(err) => {
                tracing::warn!(group = %self.key, "parking {}@{} failed, it will be retried: {err}", e.revision, e.stream);
                self.requeue(message);
            }
        }
    }

    fn remove_consumer(&mut self, consumer: u64) {
        let Some(i) = self.consumers.iter().position(|c| c.id == consumer) else {
            return;
        };
        self.consumers.remove(i);
        if self.round_robin > i {
            self.round_robin -= 1;
        }
        let ids: Vec<Uuid> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.consumer == consumer)
            .map(|(id, _)| *id)
            .collect();
        let mut back: Vec<Message> = ids
            .into_iter()
            .filter_map(|id| self.in_flight.remove(&id))
            .map(|f| f.message)
            .collect();
        back.sort_by_key(|m| m.seq);
        for mut m in back {
            m.retry_count += 1;
            self.requeue(m);
        }
    }

    fn next_wake(&mut self) -> Instant {
        let now = Instant::now();
        let mut wake = self.measured_at + MEASUREMENT;
        while let Some(&(_, id, nonce)) = self.timeouts.front() {
            if self.in_flight.get(&id).is_some_and(|f| f.nonce == nonce) {
                break;
            }
            self.timeouts.pop_front();
        }
        // Acked deliveries behind a long-unacked one stay queued until it
        // leaves the front: drop them when they outnumber the live ones.
        if self.timeouts.len() > 2 * self.in_flight.len() + 1024 {
            let in_flight = &self.in_flight;
            self.timeouts
                .retain(|(_, id, nonce)| in_flight.get(id).is_some_and(|f| f.nonce == *nonce));
        }
        if let Some(&(t, _, _)) = self.timeouts.front() {
            wake = wake.min(t);
        }
        if self.since_checkpoint > 0 {
            wake = wake.min(self.last_checkpoint_at + self.settings.checkpoint_after);
        }
        if let Some(t) = self.resubscribe_at {
            wake = wake.min(t);
        }
        wake.max(now)
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        // A consumer dropped while the command queue was full could not
        // say so (Drop cannot wait): its closed channel says it instead.
        let gone: Vec<u64> = self
            .consumers
            .iter()
            .filter(|c| c.tx.is_closed())
            .map(|c| c.id)
            .collect();
        for id in gone {
            self.remove_consumer(id);
        }
        while let Some(&(t, id, nonce)) = self.timeouts.front() {
            if t > now {
                break;
            }
            self.timeouts.pop_front();
            if self.in_flight.get(&id).is_some_and(|f| f.nonce == nonce) {
                let f = self.in_flight.remove(&id).expect("present");
                if let Some(c) = self.consumers.iter_mut().find(|c| c.id == f.consumer) {
                    c.in_flight = c.in_flight.saturating_sub(1);
                }
                self.retry_or_park(f.message, "message timeout").await;
            }
        }
        if self.since_checkpoint > 0
            && self.since_checkpoint >= u64::from(self.settings.min_checkpoint_count)
            && now >= self.last_checkpoint_at + self.settings.checkpoint_after
        {
            self.write_checkpoint().await;
        }
        if now >= self.measured_at + MEASUREMENT {
            self.last_measured = self.measured;
            self.measured = 0;
            for c in &mut self.consumers {
                c.last_measured = c.measured;
                c.measured = 0;
            }
            self.measured_at = now;
        }
    }

    /// Writes the checkpoint when it moved; a failure is logged and the
    /// write tried again later (the group only redelivers more after a
    /// restart).
    async fn write_checkpoint(&mut self) {
        self.last_checkpoint_at = Instant::now();
        let Some(candidate) = self.checkpoint_candidate else {
            return;
        };
        if self.checkpoint_written == Some(candidate) {
            self.since_checkpoint = 0;
            return;
        }
        let stream = self.key.checkpoint_stream();
        if !self.checkpoint_stream_ready {
            if let Err(e) = streams::keep_last_only(&*self.store, &stream).await {
                tracing::warn!(group = %self.key, "setting $maxCount on the checkpoint stream failed: {e}");
            }
            self.checkpoint_stream_ready = true;
        }
        let event = match streams::checkpoint_event(self.source.is_all(), candidate) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(group = %self.key, "encoding the checkpoint failed: {e}");
                return;
            }
        };
        match self
            .store
            .append(stream, ExpectedRevision::Any, vec![event])
            .await
        {
            Ok(_) => {
                self.checkpoint_written = Some(candidate);
                self.since_checkpoint = 0;
            }
            Err(e) => tracing::warn!(group = %self.key, "writing the checkpoint failed: {e}"),
        }
    }

    async fn replay_parked(&mut self, stop_at: Option<u64>) -> Result<u64> {
        let stream = self.key.parked_stream();
        let mut request = ReadStream::forwards(stream.clone());
        if let Some(n) = stop_at {
            request = request.max_count(n);
        }
        let links = match self.store.read_stream(request).await {
            Ok(l) => l,
            Err(factum_core::Error::StreamNotFound { .. }) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let Some(last) = links.last().map(|l| l.revision.0) else {
            return Ok(0);
        };
        let mut replayed = 0;
        for link in &links {
            match streams::resolve_parked(&*self.store, link).await {
                Ok(Some(event)) => {
                    replayed += 1;
                    self.retry.push_back(Message {
                        event: Arc::new(event),
                        retry_count: 0,
                        seq: None,
                    });
                }
                Ok(None) => tracing::warn!(
                    group = %self.key,
                    "parked event {} is gone (deleted or truncated); not replayed",
                    String::from_utf8_lossy(&link.data)
                ),
                Err(e) => return Err(e),
            }
        }
        let mut meta = self.store.stream_metadata(stream.clone()).await?.metadata;
        meta.truncate_before = Some(last + 1);
        self.store
            .set_stream_metadata(stream.clone(), ExpectedRevision::Any, meta)
            .await?;
        self.parked = streams::parked_count(&*self.store, &stream).await?;
        Ok(replayed)
    }

    async fn stop(&mut self, reason: &str) {
        self.write_checkpoint().await;
        for c in self.consumers.drain(..) {
            let _ = c.tx.send(ConsumerMessage::Dropped(reason.to_owned()));
        }
    }

    fn info(&self) -> GroupInfo {
        GroupInfo {
            source: self.source.clone(),
            group: self.key.group().to_owned(),
            error: None,
            status: if self.source_closed {
                "Stopped"
            } else if self.live {
                "Live"
            } else {
                "CatchingUp"
            },
            settings: self.settings.clone(),
            connections: self
                .consumers
                .iter()
                .map(|c| ConnectionInfo {
                    from: c.from.clone(),
                    name: c.name.clone(),
                    average_items_per_second: c.last_measured,
                    total_items: c.total,
                    count_since_last_measurement: c.measured,
                    available_slots: c.window.saturating_sub(c.in_flight) as u64,
                    in_flight: c.in_flight as u64,
                })
                .collect(),
            total_items: self.total_items,
            average_per_second: self.last_measured,
            count_since_last_measurement: self.measured,
            last_checkpointed_position: self.checkpoint_written,
            last_known_position: self.last_read,
            buffered: self.buffer.len() as u64,
            retry_buffered: self.retry.len() as u64,
            in_flight: self.in_flight.len() as u64,
            parked: self.parked,
            redelivered: self.redelivered,
            parked_total: self.parked_total,
        }
    }
}

/// A group that cannot run (its configuration or checkpoint cannot be
/// read): answers `Info` with its error and refuses consumers and replays,
/// until it is stopped (updated, deleted, the subsystem restarted).
pub(crate) async fn run_faulted(
    key: GroupKey,
    source: GroupSource,
    settings: GroupSettings,
    reason: String,
    mut commands: mpsc::Receiver<Command>,
) {
    tracing::error!(group = %key, "persistent subscription group out of service: {reason}");
    let faulted = || PersistentError::Faulted {
        key: key.clone(),
        reason: reason.clone(),
    };
    while let Some(command) = commands.recv().await {
        match command {
            Command::Connect { reply, .. } => {
                let _ = reply.send(Err(faulted()));
            }
            Command::ReplayParked { reply, .. } => {
                let _ = reply.send(Err(faulted()));
            }
            Command::Info { reply } => {
                let _ = reply.send(GroupInfo {
                    source: source.clone(),
                    group: key.group().to_owned(),
                    status: "Faulted",
                    error: Some(reason.clone()),
                    settings: settings.clone(),
                    connections: Vec::new(),
                    total_items: 0,
                    average_per_second: 0,
                    count_since_last_measurement: 0,
                    last_checkpointed_position: None,
                    last_known_position: None,
                    buffered: 0,
                    retry_buffered: 0,
                    in_flight: 0,
                    parked: 0,
                    redelivered: 0,
                    parked_total: 0,
                });
            }
            Command::Ack { .. } | Command::Nack { .. } | Command::Disconnect { .. } => {}
            Command::Stop { reply, .. } => {
                let _ = reply.send(());
                return;
            }
        }
    }
}

fn stream_name(s: &str) -> Result<StreamName> {
    StreamName::new(s).map_err(|e| PersistentError::InvalidSettings(e.to_string()))
}

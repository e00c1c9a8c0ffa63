//! The projection runner: one worker task per generation of a read model.
//!
//! A worker subscribes to `$all` after its checkpoint (catch-up, then live:
//! the store's subscription guarantees no gap and no duplicate at the
//! hand-over), gathers what is already delivered into batches of up to
//! `batch_size`, and commits each batch with its checkpoint in one
//! transaction. A rebuild runs a second worker on a new generation from
//! the first event and switches readers over when it has caught up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use factum_core::{
    EventStore, Filter, Position, ReadAll, Subscribe, SubscriptionMessage, SubscriptionStart,
    Timestamp,
};
use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    Envelope, FailurePolicy, Lag, ProjectionError, ProjectionMetrics, ProjectionStatus,
    ReadModelStore, RebuildProgress, ResubscribePolicy, RunState, Sink,
};
use crate::upcast::Upcasters;

/// How a projection runs.
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// Most events per transaction (default 1,000).
    pub batch_size: usize,
    /// Which events to receive (default: everything but system events,
    /// i.e. types starting with `$` such as snapshots and metadata).
    pub filter: Filter,
    /// What to do when an event fails (default: stop).
    pub failure: FailurePolicy,
    /// Conversions of older event versions.
    pub upcasters: Upcasters,
    /// Event types this projection reads at a fixed (older or newer)
    /// version; their data is up- or downcast to it.
    pub pinned: HashMap<String, u32>,
    /// How often a checkpoint-only advance (events filtered out) is
    /// persisted (default 1 s).
    pub checkpoint_interval: Duration,
    /// Re-subscribing after transient store errors (default: from 100 ms
    /// up to 10 s, for ever).
    pub resubscribe: ResubscribePolicy,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            batch_size: 1000,
            filter: Filter::exclude_system_events(),
            failure: FailurePolicy::Stop,
            upcasters: Upcasters::new(),
            pinned: HashMap::new(),
            checkpoint_interval: Duration::from_secs(1),
            resubscribe: ResubscribePolicy::default(),
        }
    }
}

impl RunnerOptions {
    /// Sets the batch size.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Sets the failure policy.
    pub fn failure(mut self, policy: FailurePolicy) -> Self {
        self.failure = policy;
        self
    }

    /// Sets the upcasters.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Reads `event_type` at `version` (downcasting newer events).
    pub fn pin(mut self, event_type: impl Into<String>, version: u32) -> Self {
        self.pinned.insert(event_type.into(), version);
        self
    }

    /// Sets the re-subscribe policy.
    pub fn resubscribe(mut self, policy: ResubscribePolicy) -> Self {
        self.resubscribe = policy;
        self
    }

    /// Sets the subscription filter.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }
}

/// Starts projections.
pub struct ProjectionRunner;

impl ProjectionRunner {
    /// Starts the projection of read model `model` from its live
    /// generation's checkpoint. It runs until stopped or failed.
    pub async fn start<S, M>(
        store: S,
        model: M,
        options: RunnerOptions,
    ) -> Result<ProjectionHandle<S, M>, ProjectionError>
    where
        S: EventStore + Clone,
        M: ReadModelStore,
    {
        let options = Arc::new(options);
        let generation = model.live_generation().await?;
        let sink = model.open(generation).await?;
        let worker = Worker::spawn(
            store.clone(),
            sink,
            model.name(),
            generation,
            options.clone(),
        );
        Ok(ProjectionHandle {
            store,
            model,
            options,
            live: Mutex::new(Some(worker)),
            closed: AtomicBool::new(false),
            rebuilding: tokio::sync::Mutex::new(()),
        })
    }
}

struct Worker {
    generation: u64,
    status: watch::Receiver<ProjectionStatus>,
    stop: watch::Sender<bool>,
    join: JoinHandle<()>,
}

impl Worker {
    fn spawn<S: EventStore, K: Sink>(
        store: S,
        sink: K,
        name: &str,
        generation: u64,
        options: Arc<RunnerOptions>,
    ) -> Worker {
        let (status_tx, status) = watch::channel(ProjectionStatus {
            name: name.to_owned(),
            generation,
            state: RunState::Starting,
            position: None,
            events_applied: 0,
            dead_lettered: 0,
            retries: 0,
            resubscribes: 0,
            last_error: None,
            last_event_at: None,
        });
        let (stop, stop_rx) = watch::channel(false);
        let name = name.to_owned();
        let join = tokio::spawn(async move {
            let mut w = Work {
                sink,
                name,
                options,
                status: status_tx,
                live: false,
            };
            let result = w.run(store, stop_rx).await;
            w.status.send_modify(|s| match result {
                Ok(()) => s.state = RunState::Stopped,
                Err(e) => {
                    tracing::error!(projection = %s.name, error = %e, "projection stopped");
                    s.state = RunState::Failed;
                    s.last_error = Some(e.to_string());
                }
            });
        });
        Worker {
            generation,
            status,
            stop,
            join,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.join.await;
    }
}

/// Why one subscription of a worker ended without an error.
enum Interrupted {
    /// Stop was requested.
    Stopped,
    /// The store failed transiently: subscribe again.
    Transient(factum_core::Error),
}

struct Work<K> {
    sink: K,
    name: String,
    options: Arc<RunnerOptions>,
    status: watch::Sender<ProjectionStatus>,
    live: bool,
}

impl<K: Sink> Work<K> {
    fn running_state(&self) -> RunState {
        if self.live {
            RunState::Live
        } else {
            RunState::CatchingUp
        }
    }

    /// Follows the store from the checkpoint until stopped; re-subscribes
    /// after transient store errors (the options' [`ResubscribePolicy`]).
    async fn run<S: EventStore>(
        &mut self,
        store: S,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        let checkpoint = self.sink.checkpoint().await?;
        self.status.send_modify(|s| {
            s.position = checkpoint;
            s.state = RunState::CatchingUp;
        });
        let mut failures = 0u32;
        loop {
            let error = match self.follow(&store, &mut stop, &mut failures).await? {
                Interrupted::Stopped => return Ok(()),
                Interrupted::Transient(e) => e,
            };
            failures += 1;
            let policy = &self.options.resubscribe;
            if policy.max_attempts.is_some_and(|m| failures > m) {
                return Err(ProjectionError::Store(format!(
                    "{error} (gave up after {} re-subscribes)",
                    failures - 1
                )));
            }
            let wait = policy.backoff(failures);
            tracing::warn!(projection = %self.name, error = %error, failures,
                "the subscription ended with a transient error; re-subscribing in {wait:?}");
            self.live = false;
            self.status.send_modify(|s| {
                s.state = RunState::Retrying;
                s.last_error = Some(format!("event store: {error}"));
                s.resubscribes += 1;
            });
            tokio::select! {
                biased;
                _ = stop.changed() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One subscription after the position reached so far: batches and
    /// commits until stopped (`Stopped`) or the store fails transiently
    /// (`Transient`, with everything received before committed). Any other
    /// failure is the error. `failures` is reset once the store delivers.
    async fn follow<S: EventStore>(
        &mut self,
        store: &S,
        stop: &mut watch::Receiver<bool>,
        failures: &mut u32,
    ) -> Result<Interrupted, ProjectionError> {
        let start = self
            .status
            .borrow()
            .position
            .map_or(SubscriptionStart::Beginning, |p| {
                SubscriptionStart::After(p.0)
            });
        let mut sub = match store
            .subscribe(Subscribe::all(start, Some(self.options.filter.clone())))
            .await
        {
            Ok(sub) => sub,
            Err(e) if e.is_transient() => return Ok(Interrupted::Transient(e)),
            Err(e) => return Err(ProjectionError::Store(e.to_string())),
        };
        if self.status.borrow().state == RunState::Retrying {
            self.status.send_modify(|s| s.state = RunState::CatchingUp);
        }
        let mut batch: Vec<Envelope> = Vec::with_capacity(self.options.batch_size);
        // A checkpoint-only advance not yet persisted, and when it was seen.
        let mut unpersisted: Option<(Position, Instant)> = None;
        loop {
            let persist_in = unpersisted.map(|(_, since)| {
                self.options
                    .checkpoint_interval
                    .saturating_sub(since.elapsed())
            });
            let first = tokio::select! {
                biased;
                _ = stop.changed() => {
                    if let Some((p, _)) = unpersisted.take() {
                        self.commit(Vec::new(), p).await?;
                    }
                    return Ok(Interrupted::Stopped);
                }
                _ = tokio::time::sleep(persist_in.unwrap_or_default()), if persist_in.is_some() => {
                    if let Some((p, _)) = unpersisted.take() {
                        self.commit(Vec::new(), p).await?;
                    }
                    continue;
                }
                m = sub.next() => m,
            };
            let mut next = Some(first);
            while let Some(msg) = next {
                match msg {
                    None => {
                        return Err(ProjectionError::Store(
                            "the subscription ended (the store closed)".into(),
                        ))
                    }
                    Some(Err(e)) if e.is_transient() => {
                        self.flush(&mut batch).await?;
                        return Ok(Interrupted::Transient(e));
                    }
                    Some(Err(e)) => return Err(ProjectionError::Store(e.to_string())),
                    Some(Ok(SubscriptionMessage::Event(e))) => {
                        *failures = 0;
                        batch.push(Envelope::new(
                            e,
                            &self.options.upcasters,
                            &self.options.pinned,
                        ));
                        if batch.len() >= self.options.batch_size {
                            self.flush(&mut batch).await?;
                            unpersisted = None;
                        }
                    }
                    Some(Ok(SubscriptionMessage::CaughtUp)) => {
                        *failures = 0;
                        self.flush(&mut batch).await?;
                        self.live = true;
                        self.status.send_modify(|s| s.state = RunState::Live);
                    }
                    Some(Ok(SubscriptionMessage::FellBehind)) => {
                        self.flush(&mut batch).await?;
                        self.live = false;
                        self.status.send_modify(|s| s.state = RunState::CatchingUp);
                    }
                    Some(Ok(SubscriptionMessage::Checkpoint(p))) => {
                        self.flush(&mut batch).await?;
                        let ahead = self.status.borrow().position.is_none_or(|q| p > q);
                        if ahead {
                            self.status.send_modify(|s| s.position = Some(p));
                            let since = unpersisted.map_or_else(Instant::now, |(_, t)| t);
                            unpersisted = Some((p, since));
                        }
                    }
                }
                next = if batch.len() < self.options.batch_size {
                    sub.next().now_or_never()
                } else {
                    None
                };
            }
            if !batch.is_empty() {
                self.flush(&mut batch).await?;
                unpersisted = None;
            }
        }
    }

    async fn flush(&mut self, batch: &mut Vec<Envelope>) -> Result<(), ProjectionError> {
        let Some(last) = batch.last().map(Envelope::position) else {
            return Ok(());
        };
        let events = std::mem::replace(batch, Vec::with_capacity(self.options.batch_size));
        self.commit(events, last).await
    }

    /// Commits a batch (or, empty, just a checkpoint) under the failure policy.
    async fn commit(
        &mut self,
        events: Vec<Envelope>,
        checkpoint: Position,
    ) -> Result<(), ProjectionError> {
        let last_event_at = events.last().map(Envelope::created);
        let batch: Arc<[Envelope]> = events.into();
        let mut dead_letter = self.options.failure == FailurePolicy::DeadLetter;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let err = match self
                .sink
                .apply(batch.clone(), checkpoint, dead_letter)
                .await
            {
                Ok(outcome) => {
                    for (p, reason) in &outcome.dead_lettered {
                        tracing::warn!(projection = %self.name, position = %p, %reason, "event dead-lettered");
                    }
                    let state = self.running_state();
                    self.status.send_modify(|s| {
                        s.position = Some(checkpoint).max(s.position);
                        s.events_applied += outcome.applied;
                        s.dead_lettered += outcome.dead_lettered.len() as u64;
                        if let Some((_, reason)) = outcome.dead_lettered.last() {
                            s.last_error = Some(reason.clone());
                        }
                        if last_event_at.is_some() {
                            s.last_event_at = last_event_at;
                        }
                        s.state = state;
                    });
                    return Ok(());
                }
                Err(e) => e,
            };
            let FailurePolicy::Retry {
                max_attempts,
                initial_backoff,
                max_backoff,
                then_dead_letter,
            } = &self.options.failure
            else {
                return Err(err);
            };
            self.status.send_modify(|s| {
                s.retries += 1;
                s.last_error = Some(err.to_string());
                s.state = RunState::Retrying;
            });
            if attempt < (*max_attempts).max(1) {
                let factor = 2u32.saturating_pow(attempt - 1);
                let wait = initial_backoff.saturating_mul(factor).min(*max_backoff);
                tracing::warn!(projection = %self.name, attempt, error = %err, "retrying batch in {wait:?}");
                tokio::time::sleep(wait).await;
                continue;
            }
            if *then_dead_letter && !dead_letter && err.is_event_failure() {
                dead_letter = true;
                continue;
            }
            return Err(err);
        }
    }
}

/// A running projection: status, lag, read-your-writes, rebuild, stop.
pub struct ProjectionHandle<S, M> {
    store: S,
    model: M,
    options: Arc<RunnerOptions>,
    live: Mutex<Option<Worker>>,
    closed: AtomicBool,
    rebuilding: tokio::sync::Mutex<()>,
}

impl<S: EventStore + Clone, M: ReadModelStore> ProjectionHandle<S, M> {
    fn live_status(&self) -> Option<watch::Receiver<ProjectionStatus>> {
        let guard = self.live.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(|w| w.status.clone())
    }

    /// The read model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The live generation's status (`None` after [`stop`](Self::stop)).
    pub fn status(&self) -> Option<ProjectionStatus> {
        self.live_status().map(|rx| rx.borrow().clone())
    }

    /// How far the live generation is behind the store's head.
    pub async fn lag(&self) -> Result<Lag, ProjectionError> {
        let head = self
            .store
            .head_position()
            .await
            .map_err(|e| ProjectionError::Store(e.to_string()))?;
        let position = self.status().and_then(|s| s.position);
        lag_between(&self.store, head, position).await
    }

    /// The live generation's status and lag, for export as metrics
    /// ([`ProjectionMetrics::samples`], [`render_prometheus`](super::render_prometheus)).
    /// After [`stop`](Self::stop) it is an error.
    pub async fn metrics(&self) -> Result<ProjectionMetrics, ProjectionError> {
        let status = self
            .status()
            .ok_or_else(|| self.stopped("stopped by request"))?;
        let head = self
            .store
            .head_position()
            .await
            .map_err(|e| ProjectionError::Store(e.to_string()))?;
        let lag = lag_between(&self.store, head, status.position).await?;
        Ok(ProjectionMetrics { status, lag })
    }

    /// Waits until the live read model reflects every event up to
    /// `position` (e.g. the position an append returned): read-your-writes.
    pub async fn wait_for(
        &self,
        position: Position,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Some(mut rx) = self.live_status() else {
                return Err(self.stopped("stopped by request"));
            };
            loop {
                let (reached, state, error) = {
                    let s = rx.borrow_and_update();
                    (s.position, s.state.clone(), s.last_error.clone())
                };
                if reached.is_some_and(|p| p >= position) {
                    return Ok(());
                }
                match state {
                    RunState::Failed => {
                        return Err(self.stopped(&error.unwrap_or_else(|| "failed".into())))
                    }
                    RunState::Stopped if self.closed.load(Ordering::SeqCst) => {
                        return Err(self.stopped("stopped by request"))
                    }
                    _ => {}
                }
                let changed = tokio::time::timeout_at(deadline, rx.changed()).await;
                match changed {
                    Err(_) => {
                        return Err(ProjectionError::Timeout {
                            projection: self.model.name().to_owned(),
                            position,
                            timeout,
                            reached,
                        })
                    }
                    // The worker was replaced (a rebuild switched over).
                    Ok(Err(_)) => break,
                    Ok(Ok(())) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn stopped(&self, reason: &str) -> ProjectionError {
        ProjectionError::Stopped {
            projection: self.model.name().to_owned(),
            reason: reason.to_owned(),
        }
    }

    /// Rebuilds the read model without downtime: builds a new generation
    /// from the first event beside the live one (readers keep reading the live
    /// one), reports progress about every 100 ms, and when the new one has
    /// caught up, stops the old worker, switches readers over and drops the
    /// old generation. Returns the new generation. On failure the new
    /// generation is dropped and the live one keeps running.
    pub async fn rebuild(
        &self,
        mut progress: impl FnMut(RebuildProgress) + Send,
    ) -> Result<u64, ProjectionError> {
        let _one_at_a_time = self.rebuilding.lock().await;
        let old_generation = {
            let guard = self.live.lock().unwrap_or_else(|p| p.into_inner());
            guard.as_ref().map(|w| w.generation)
        }
        .ok_or_else(|| self.stopped("stopped by request"))?;
        // Leftovers of an interrupted rebuild are dropped first.
        let newest = self.model.newest_generation().await?;
        for g in old_generation + 1..=newest {
            self.model.drop_generation(g).await?;
        }
        let generation = old_generation + 1;
        let sink = self.model.open(generation).await?;
        let worker = Worker::spawn(
            self.store.clone(),
            sink,
            self.model.name(),
            generation,
            self.options.clone(),
        );
        let mut rx = worker.status.clone();
        let outcome = self.follow(&mut rx, generation, &mut progress).await;
        if let Err(e) = outcome {
            worker.stop().await;
            self.model.drop_generation(generation).await?;
            return Err(e);
        }
        // Freeze the old generation, let the new one pass where it stopped,
        // then switch readers and handles over.
        let old = {
            let mut guard = self.live.lock().unwrap_or_else(|p| p.into_inner());
            guard.take()
        };
        let old_position = match old {
            Some(w) => {
                let p = w.status.borrow().position;
                w.stop().await;
                p
            }
            None => None,
        };
        if let Some(p) = old_position {
            let mut waiter = worker.status.clone();
            let caught = tokio::time::timeout(
                Duration::from_secs(30),
                waiter.wait_for(|s| s.position >= Some(p) || s.state == RunState::Failed),
            )
            .await;
            if !matches!(caught, Ok(Ok(ref s)) if s.position >= Some(p)) {
                tracing::warn!(projection = %self.model.name(), "new generation did not reach the old one's position before the switch");
            }
        }
        self.model.switch(generation).await?;
        {
            let mut guard = self.live.lock().unwrap_or_else(|p| p.into_inner());
            *guard = Some(worker);
        }
        self.model.drop_generation(old_generation).await?;
        Ok(generation)
    }

    async fn follow(
        &self,
        rx: &mut watch::Receiver<ProjectionStatus>,
        generation: u64,
        progress: &mut (impl FnMut(RebuildProgress) + Send),
    ) -> Result<(), ProjectionError> {
        let mut last_report: Option<Instant> = None;
        loop {
            let s = rx.borrow_and_update().clone();
            let done = matches!(
                s.state,
                RunState::Live | RunState::Failed | RunState::Stopped
            );
            if done || last_report.is_none_or(|t| t.elapsed() >= Duration::from_millis(100)) {
                last_report = Some(Instant::now());
                let head = self
                    .store
                    .head_position()
                    .await
                    .map_err(|e| ProjectionError::Store(e.to_string()))?;
                progress(RebuildProgress {
                    generation,
                    position: s.position,
                    head,
                    events_applied: s.events_applied,
                });
            }
            match s.state {
                RunState::Live => return Ok(()),
                RunState::Failed | RunState::Stopped => {
                    return Err(ProjectionError::Stopped {
                        projection: self.model.name().to_owned(),
                        reason: format!(
                            "rebuild of generation {generation} failed: {}",
                            s.last_error.unwrap_or_default()
                        ),
                    })
                }
                _ => {}
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
        }
    }

    /// Stops the projection after its current batch.
    pub async fn stop(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let worker = {
            let mut guard = self.live.lock().unwrap_or_else(|p| p.into_inner());
            guard.take()
        };
        if let Some(w) = worker {
            w.stop().await;
        }
    }
}

/// The lag of a projection at `position` behind `head`.
async fn lag_between<S: EventStore>(
    store: &S,
    head: Option<Position>,
    position: Option<Position>,
) -> Result<Lag, ProjectionError> {
    // No position yet is position 0, "before the first event" (the first
    // event is at 1).
    let behind = match head {
        None => 0,
        Some(h) => h.0.saturating_sub(position.map_or(0, |p| p.0)),
    };
    let mut seconds = 0.0;
    if behind > 0 {
        let next = position.map_or(0, |p| p.0 + 1);
        let oldest = store
            .read_all(
                ReadAll::forwards()
                    .from_position(Position(next))
                    .max_count(1),
            )
            .await
            .map_err(|e| ProjectionError::Store(e.to_string()))?;
        if let Some(e) = oldest.first() {
            seconds = (Timestamp::now().0 - e.created.0).max(0) as f64 / 1e6;
        }
    }
    Ok(Lag {
        positions_behind: behind,
        seconds_behind: seconds,
        head,
        position,
    })
}

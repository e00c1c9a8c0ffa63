//! Scavenge (issue 17, ADR 33): removes from sealed segments every event
//! no read of its stream can see any more (`factum_core::rules::retention`:
//! beyond `$maxCount`, older than `$maxAge`, before `$tb`, in soft-deleted
//! and tombstoned streams, superseded `$metadata`), segment by segment
//! through the crash-safe rewrite (`rewrite.rs`). Positions never change;
//! `$all` gets gaps. A stream's last event, when it goes, leaves a stub so
//! the stream keeps its last revision.
//!
//! Online: appends, reads and subscriptions go on (a read waits only while
//! a rewritten segment is swapped in: one redb commit and one rename); the
//! I/O is throttled; one scavenge runs at a time; its progress can be read
//! while it runs and its result after; it can be stopped between frames
//! (the segment being rewritten keeps its old version).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use factum_core::rules::retention::{retention, Retention, StoredFacts};
use factum_core::rules::StreamState;
use factum_core::{Error, Result, StreamName, Timestamp, Uuid};
use parking_lot::Mutex;

use crate::format::{StoredEvent, FLAG_TOMBSTONE};
use crate::rewrite::{rewrite_segment, Pace, RecordAction, RewriteSpec, Throttle};
use crate::Engine;

/// How a scavenge runs.
#[derive(Clone, Debug)]
pub struct ScavengeOptions {
    /// Its id (reported in its status; the server names `$scavenges-<id>`
    /// after it).
    pub id: Uuid,
    /// I/O pacing.
    pub throttle: Throttle,
    /// The first segment to look at (KurrentDB's "start from chunk").
    pub start_from_segment: u32,
    /// "Now" for `$maxAge`; the engine's clock when `None`.
    pub now: Option<Timestamp>,
    /// Rewrite a segment only when that frees at least this percentage of
    /// it (KurrentDB's `threshold`); 0: whenever anything goes.
    pub min_freed_percent: u8,
}

impl Default for ScavengeOptions {
    fn default() -> Self {
        ScavengeOptions {
            id: Uuid::new_v4(),
            throttle: Throttle::None,
            start_from_segment: 0,
            now: None,
            min_freed_percent: 0,
        }
    }
}

/// What a scavenge did (so far, while it runs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScavengeReport {
    /// Sealed segments it looks at (behind the index checkpoint, from the
    /// start segment on).
    pub segments_total: u32,
    /// Of them, looked at so far.
    pub segments_done: u32,
    /// Of them, rewritten (some record went).
    pub segments_rewritten: u32,
    /// Events removed.
    pub events_removed: u64,
    /// Events replaced by stubs.
    pub stubs: u64,
    /// Bytes of the segments looked at, before …
    pub bytes_before: u64,
    /// … and after.
    pub bytes_after: u64,
    /// Time taken so far.
    pub elapsed: Duration,
}

impl ScavengeReport {
    /// Bytes freed on disk.
    pub fn bytes_freed(&self) -> u64 {
        self.bytes_before.saturating_sub(self.bytes_after)
    }
}

/// How a scavenge ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScavengeEnd {
    /// It is still running.
    Running,
    /// Every segment was looked at.
    Completed,
    /// Stopped on request.
    Stopped,
    /// Failed (the segment it was rewriting kept its old version).
    Failed(String),
}

/// A scavenge's status: the one running, or the last one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScavengeStatus {
    /// Its id.
    pub id: Uuid,
    /// When it started.
    pub started: Timestamp,
    /// The first segment it looks at.
    pub start_from_segment: u32,
    /// How it ended (or that it runs).
    pub end: ScavengeEnd,
    /// What it did.
    pub report: ScavengeReport,
}

struct Running {
    status: Mutex<ScavengeStatus>,
    stop: AtomicBool,
}

/// The engine's scavenges: at most one running, and the last one's status.
#[derive(Default)]
pub(crate) struct Scavenges {
    current: Mutex<Option<Arc<Running>>>,
    last: Mutex<Option<ScavengeStatus>>,
}

impl Scavenges {
    /// Asks the running scavenge, if any, to stop; true if there was one.
    pub(crate) fn stop(&self, id: Option<Uuid>) -> bool {
        match &*self.current.lock() {
            Some(r) if id.is_none_or(|id| r.status.lock().id == id) => {
                r.stop.store(true, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }
}

/// A started scavenge.
pub struct ScavengeHandle {
    /// Its id.
    pub id: Uuid,
    thread: JoinHandle<ScavengeStatus>,
}

impl ScavengeHandle {
    /// Waits for it to end.
    pub fn join(self) -> ScavengeStatus {
        self.thread.join().unwrap_or_else(|_| ScavengeStatus {
            id: self.id,
            started: Timestamp(0),
            start_from_segment: 0,
            end: ScavengeEnd::Failed("the scavenge thread panicked".into()),
            report: ScavengeReport::default(),
        })
    }
}

impl Engine {
    /// Starts a scavenge on a thread of its own; refused while one runs.
    pub fn start_scavenge(&self, options: ScavengeOptions) -> Result<ScavengeHandle> {
        let scavenges = &self.inner().scavenges;
        let running = {
            let mut current = scavenges.current.lock();
            if let Some(r) = &*current {
                return Err(Error::InvalidInput(format!(
                    "a scavenge is already running ({})",
                    r.status.lock().id
                )));
            }
            let running = Arc::new(Running {
                status: Mutex::new(ScavengeStatus {
                    id: options.id,
                    started: Timestamp::now(),
                    start_from_segment: options.start_from_segment,
                    end: ScavengeEnd::Running,
                    report: ScavengeReport::default(),
                }),
                stop: AtomicBool::new(false),
            });
            *current = Some(running.clone());
            running
        };
        let engine = self.clone();
        let id = options.id;
        let thread = std::thread::Builder::new()
            .name("factum-scavenge".into())
            .spawn(move || {
                let end = match run(&engine, &running, &options) {
                    Ok(true) => ScavengeEnd::Stopped,
                    Ok(false) => ScavengeEnd::Completed,
                    Err(e) => {
                        tracing::error!(error = %e, "scavenge failed");
                        ScavengeEnd::Failed(e.to_string())
                    }
                };
                let status = {
                    let mut s = running.status.lock();
                    s.end = end;
                    s.clone()
                };
                let scavenges = &engine.inner().scavenges;
                *scavenges.last.lock() = Some(status.clone());
                *scavenges.current.lock() = None;
                tracing::info!(id = %status.id, end = ?status.end, report = ?status.report, "scavenge ended");
                status
            });
        match thread {
            Ok(thread) => Ok(ScavengeHandle { id, thread }),
            Err(e) => {
                *scavenges.current.lock() = None;
                Err(Error::io("starting the scavenge thread", e))
            }
        }
    }

    /// Runs a scavenge to its end (blocking).
    pub fn scavenge(&self, options: ScavengeOptions) -> Result<ScavengeStatus> {
        Ok(self.start_scavenge(options)?.join())
    }

    /// The running scavenge's status.
    pub fn scavenge_current(&self) -> Option<ScavengeStatus> {
        let current = self.inner().scavenges.current.lock();
        current.as_ref().map(|r| r.status.lock().clone())
    }

    /// The last finished scavenge's status (since the store was opened).
    pub fn scavenge_last(&self) -> Option<ScavengeStatus> {
        self.inner().scavenges.last.lock().clone()
    }

    /// Asks the running scavenge (the one with `id`, when given) to stop;
    /// false when none (or another) runs.
    pub fn stop_scavenge(&self, id: Option<Uuid>) -> bool {
        self.inner().scavenges.stop(id)
    }
}

/// The scavenge itself; true when stopped.
fn run(engine: &Engine, running: &Running, options: &ScavengeOptions) -> Result<bool> {
    let started = Instant::now();
    let reader = engine.reader();
    // A segment that lives only in the archive is not scavenged (ADR 43):
    // reads still hide what a scavenge would remove.
    let candidates: Vec<u32> = crate::rewrite::sealed_behind_checkpoint(engine)?
        .into_iter()
        .filter(|&n| n >= options.start_from_segment)
        .filter(|&n| reader.segments.get(n).is_some_and(|s| !s.is_archived()))
        .collect();
    running.status.lock().report.segments_total = candidates.len() as u32;
    let now = options.now.unwrap_or_else(|| engine.config().clock.now());
    let mut pace = Pace::new(options.throttle);
    let index = reader.index.clone();
    for number in candidates {
        if running.stop.load(Ordering::Relaxed) {
            return Ok(true);
        }
        // Stream states, looked up once per segment (bounded by it).
        let mut states: HashMap<StreamName, Option<StreamState>> = HashMap::new();
        let mut decide = |e: &StoredEvent| -> Result<RecordAction> {
            let state = match states.get(&e.stream) {
                Some(s) => s,
                None => {
                    let s = index.stream(e.stream.as_str())?.map(|r| r.state);
                    states.entry(e.stream.clone()).or_insert(s)
                }
            };
            let Some(state) = state else {
                return Ok(RecordAction::Keep);
            };
            let facts = StoredFacts {
                stream: &e.stream,
                revision: e.revision,
                created: e.created,
                tombstone: e.flags & FLAG_TOMBSTONE != 0,
                stub: e.is_stub(),
            };
            Ok(match retention(facts, state, now) {
                Retention::Keep => RecordAction::Keep,
                Retention::Remove => RecordAction::Remove,
                Retention::Stub if e.is_stub() => RecordAction::Keep,
                Retention::Stub => RecordAction::Replace(e.stub()),
            })
        };
        let min_freed = match reader.segments.get(number) {
            Some(seg) => seg.stored_len()? * options.min_freed_percent.min(100) as u64 / 100,
            None => 0,
        };
        let spec = RewriteSpec {
            segment: number,
            add_features: 0,
            min_freed_bytes: min_freed.max(1),
        };
        let done = rewrite_segment(
            engine.dir(),
            reader,
            spec,
            engine.config().encryption.as_ref(),
            &mut decide,
            &mut pace,
            &running.stop,
        )?;
        let Some(done) = done else {
            return Ok(true);
        };
        let mut status = running.status.lock();
        let r = &mut status.report;
        r.segments_done += 1;
        r.segments_rewritten += done.swapped as u32;
        if done.swapped {
            r.events_removed += done.removed;
            r.stubs += done.replaced;
        }
        r.bytes_before += done.old_bytes;
        r.bytes_after += done.new_bytes;
        r.elapsed = started.elapsed();
    }
    running.status.lock().report.elapsed = started.elapsed();
    Ok(false)
}

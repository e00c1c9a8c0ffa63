//! The reader pool: engine reads (`pread`s, redb lookups, `$all` scans)
//! run on a few threads the engine owns, never on the async runtime's
//! workers (ADR 13).
//!
//! A read is queued to the pool and answered through a oneshot. The queue
//! is bounded: when it is full the caller waits asynchronously, so a burst
//! of reads costs waiting futures, not threads or memory. A read works in
//! bounded steps ([`Progress`]): at each step boundary it checks that its
//! caller still waits for the answer. A dropped future (a cancelled
//! request, a passed `grpc-timeout`: the server drops the read) stops the
//! read at its next step and frees its thread; a read whose caller left
//! while it was queued is skipped. A read that panics answers `Unavailable`
//! and its thread lives on.
//!
//! By default the pool has one thread fewer than the machine has cores (at
//! least one), so the writer and the runtime always keep a core.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use factum_core::UnavailableReason;
use factum_core::{Error, Result};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce(&Shared) + Send>;

/// What the pool's threads share with its handle.
struct Shared {
    step_bytes: u64,
    running: AtomicUsize,
    steps: AtomicU64,
    cancelled: AtomicU64,
    /// The store's segments: every read holds off their swap while it runs
    /// (ADR 33). `None` in tests of the pool alone.
    segments: Option<Arc<crate::log::Segments>>,
}

/// A bounded pool of reader threads with a bounded queue.
pub(crate) struct ReadPool {
    queue: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    threads: usize,
}

/// What the reader pool is doing (a snapshot; see [`crate::Engine::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Reader threads.
    pub threads: usize,
    /// Reads running on them now.
    pub running: usize,
    /// Reads waiting in the queue.
    pub queued: usize,
    /// Places in the queue; callers beyond them wait asynchronously.
    pub queue_capacity: usize,
    /// Steps all reads have taken so far (a step is about
    /// `EngineConfig::read_step_bytes` of log or index work).
    pub steps: u64,
    /// Reads stopped (or skipped) because their caller stopped waiting.
    pub cancelled: u64,
}

impl ReadPool {
    /// Starts `threads` reader threads (at least one) behind a queue of
    /// `queue` reads (at least one); reads take steps of `step_bytes`, each
    /// holding `segments` (when given) while it runs.
    pub(crate) fn start(
        threads: usize,
        queue: usize,
        step_bytes: u64,
        segments: Option<Arc<crate::log::Segments>>,
    ) -> std::io::Result<ReadPool> {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared {
            step_bytes: step_bytes.max(1),
            running: AtomicUsize::new(0),
            steps: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            segments,
        });
        for i in 0..threads {
            let rx = rx.clone();
            let shared = shared.clone();
            // Detached: a thread ends when the pool's last handle is dropped
            // and the queue is empty (after its current read).
            std::thread::Builder::new()
                .name(format!("factum-reader-{i}"))
                .spawn(move || loop {
                    // One thread waits on the queue, the others on the lock.
                    let job = rx.lock().blocking_recv();
                    match job {
                        Some(job) => job(&shared),
                        None => return,
                    }
                })?;
        }
        Ok(ReadPool {
            queue: tx,
            shared,
            threads,
        })
    }

    /// Runs `read` on a reader thread and waits for its answer. Dropping
    /// the returned future stops the read at its next step.
    pub(crate) async fn run<T, F>(&self, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Progress<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |shared: &Shared| {
            if reply.is_closed() {
                shared.cancelled.fetch_add(1, Ordering::Relaxed);
                return;
            }
            shared.running.fetch_add(1, Ordering::Relaxed);
            let gone = || reply.is_closed();
            let mut progress = Progress {
                caller_gone: Some(&gone),
                step_bytes: shared.step_bytes,
                since_step: 0,
                steps: Some(&shared.steps),
            };
            let result = catch_unwind(AssertUnwindSafe(|| {
                let _no_swap = shared.segments.as_ref().map(|s| s.hold());
                read(&mut progress)
            }));
            let cancelled = progress.cancelled();
            shared.running.fetch_sub(1, Ordering::Relaxed);
            if cancelled {
                shared.cancelled.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let result = result.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %what, "a read panicked");
                Err(Error::unavailable(
                    UnavailableReason::Unspecified,
                    format!("the read failed: {what}"),
                ))
            });
            let _ = reply.send(result);
        });
        self.queue.send(job).await.map_err(|_| {
            Error::unavailable(UnavailableReason::Closed, "the reader pool stopped")
        })?;
        answer.await.map_err(|_| {
            Error::unavailable(
                UnavailableReason::Closed,
                "the reader stopped before answering",
            )
        })?
    }

    /// What the pool is doing now.
    pub(crate) fn stats(&self) -> ReadStats {
        let queue_capacity = self.queue.max_capacity();
        ReadStats {
            threads: self.threads,
            running: self.shared.running.load(Ordering::Relaxed),
            queued: queue_capacity - self.queue.capacity(),
            queue_capacity,
            steps: self.shared.steps.load(Ordering::Relaxed),
            cancelled: self.shared.cancelled.load(Ordering::Relaxed),
        }
    }
}

/// A read's progress in bounded steps: the read reports the bytes it worked
/// through, and at each step boundary [`Progress::step`] answers an error
/// when the read's caller no longer waits for it, so the read stops there.
pub struct Progress<'a> {
    caller_gone: Option<&'a (dyn Fn() -> bool + 'a)>,
    step_bytes: u64,
    since_step: u64,
    steps: Option<&'a AtomicU64>,
}

impl Progress<'static> {
    /// For a read that runs to its end, whoever calls it (tools such as
    /// `verify`, the writer's own lookups).
    pub fn unbounded() -> Self {
        Progress {
            caller_gone: None,
            step_bytes: u64::MAX,
            since_step: 0,
            steps: None,
        }
    }
}

impl Progress<'_> {
    /// Accounts `bytes` of work. At a step boundary: `Unavailable` when the
    /// caller has gone (the read must stop and return it).
    pub fn step(&mut self, bytes: u64) -> Result<()> {
        self.since_step = self.since_step.saturating_add(bytes);
        if self.since_step < self.step_bytes {
            return Ok(());
        }
        self.since_step = 0;
        if let Some(steps) = self.steps {
            steps.fetch_add(1, Ordering::Relaxed);
        }
        if self.cancelled() {
            return Err(Error::unavailable(
                UnavailableReason::Busy,
                "the read was cancelled: its caller stopped waiting",
            ));
        }
        Ok(())
    }

    fn cancelled(&self) -> bool {
        self.caller_gone.is_some_and(|gone| gone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read that only ends when its caller leaves: dropping the future
    /// stops it at a step, and the single thread serves the next read.
    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_read_stops_and_frees_its_thread() {
        let pool = ReadPool::start(1, 4, 1, None).expect("pool");
        let endless = pool.run(|p| -> Result<()> {
            loop {
                p.step(1)?;
                std::thread::yield_now();
            }
        });
        let mut endless = Box::pin(endless);
        // Poll until the read is on the thread and stepping.
        while pool.stats().steps == 0 {
            tokio::select! {
                biased;
                r = &mut endless => panic!("an endless read answered: {r:?}"),
                _ = tokio::task::yield_now() => {}
            }
        }
        drop(endless);
        let answer = pool.run(|_| Ok(42)).await.expect("answer");
        assert_eq!(answer, 42);
        let stats = pool.stats();
        assert_eq!(stats.cancelled, 1, "{stats:?}");
        assert_eq!(stats.running, 0, "{stats:?}");
    }

    /// A read whose caller left while it was queued is skipped.
    #[tokio::test(flavor = "current_thread")]
    async fn a_read_dropped_in_the_queue_never_runs() {
        let pool = ReadPool::start(1, 4, 1, None).expect("pool");
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let blocker = pool.run(move |_| {
            let _ = hold_rx.recv();
            Ok(())
        });
        let mut blocker = Box::pin(blocker);
        while pool.stats().running == 0 {
            tokio::select! {
                biased;
                _ = &mut blocker => panic!("the held read answered"),
                _ = tokio::task::yield_now() => {}
            }
        }
        let ran = Arc::new(AtomicUsize::new(0));
        let queued = {
            let ran = ran.clone();
            pool.run(move |_| {
                ran.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
        };
        let mut queued = Box::pin(queued);
        // Put it in the queue (the first read holds the thread).
        while pool.stats().queued == 0 {
            tokio::select! {
                biased;
                _ = &mut queued => panic!("ran while the thread was held"),
                _ = tokio::task::yield_now() => {}
            }
        }
        drop(queued);
        hold_tx.send(()).expect("blocker waits");
        blocker.await.expect("read");
        pool.run(|_| Ok(())).await.expect("read");
        assert_eq!(ran.load(Ordering::Relaxed), 0);
        assert_eq!(pool.stats().cancelled, 1);
    }

    /// A panicking read answers an error; the thread serves the next one.
    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_read_answers_unavailable() {
        let pool = ReadPool::start(1, 1, 1, None).expect("pool");
        let r: Result<()> = pool.run(|_| panic!("boom")).await;
        assert!(
            matches!(&r, Err(Error::Unavailable { message, .. }) if message.contains("boom")),
            "{r:?}"
        );
        assert_eq!(pool.run(|_| Ok(7)).await.expect("answer"), 7);
    }
}

//! Engine configuration.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use factum_core::Timestamp;

/// The engine's clock: commit times of new events, and "now" for `$maxAge`
/// in reads and scavenges. The system clock, or (for tests of `$maxAge`
/// without sleeping) the system clock moved forward by hand.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Microseconds added to the system clock (`None`: the system clock).
    ahead: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock::default()
    }

    /// The system clock, movable forward with [`Clock::advance`] (clones
    /// share it).
    pub fn manual() -> Self {
        Clock {
            ahead: Some(Arc::new(AtomicI64::new(0))),
        }
    }

    /// Moves a manual clock forward by `by` (no effect on the system clock).
    pub fn advance(&self, by: Duration) {
        if let Some(a) = &self.ahead {
            a.fetch_add(by.as_micros() as i64, Ordering::SeqCst);
        }
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        let now = Timestamp::now();
        match &self.ahead {
            Some(a) => Timestamp(now.0.saturating_add(a.load(Ordering::SeqCst))),
            None => now,
        }
    }
}

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After the log is fsynced (the default): an acknowledged append
    /// survives a crash or power loss.
    Always,
    /// Without fsync. Only for tests and clearly labelled benchmarks: a
    /// crash of the machine can lose acknowledged appends.
    None,
}

/// Limits and tuning of an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Durability of acknowledged appends.
    pub durability: Durability,
    /// Largest event (data + metadata + type), bytes. Default 16 MiB.
    pub max_event_bytes: usize,
    /// Largest append (sum of its events), bytes. Default 64 MiB.
    pub max_append_bytes: usize,
    /// Most events in one append. Default 100,000.
    pub max_append_events: usize,
    /// Segment size at which a new segment starts. Default 256 MiB.
    pub segment_bytes: u64,
    /// Durable zeros kept ahead of the writer while appends are small, so
    /// that an append's fsync does not also commit a new file size (ADR 10).
    /// 0 turns it off; it is off without durability.
    pub preallocate_bytes: u64,
    /// Most appends in one group commit.
    pub max_group_appends: usize,
    /// A group commit stops taking appends past this many bytes.
    pub max_group_bytes: usize,
    /// Flush the index to disk when the pending runs cover this many
    /// revisions (an event counts once per stream it is indexed in: its own,
    /// `$ce-`, `$et-`). This bounds the log tail a reopen replays.
    pub index_flush_entries: usize,
    /// … or at least this often.
    pub index_flush_interval: Duration,
    /// Page cache of the index file, bytes.
    pub index_cache_bytes: usize,
    /// Cache of log blocks for reads through the index, bytes.
    pub read_cache_bytes: usize,
    /// A live subscriber this many events behind the head is told it fell behind.
    pub fell_behind_events: u64,
    /// Appends waiting for the writer; beyond them an append waits
    /// asynchronously for a place (backpressure, ADR 13). Default 8,192
    /// (two full groups).
    pub append_queue: usize,
    /// Threads that run reads (ADR 13). Default: one fewer than the cores,
    /// at least one, so the writer and the async runtime keep a core.
    pub reader_threads: usize,
    /// Reads waiting for a reader thread; beyond them a read waits
    /// asynchronously for a place. Default 1,024.
    pub read_queue: usize,
    /// A read checks whether its caller still waits after about this many
    /// bytes of log or index work (a step). Default 256 KiB.
    pub read_step_bytes: u64,
    /// The clock for commit times and `$maxAge` (the system clock unless a
    /// test moves it).
    pub clock: Clock,
    /// The archive sealed segments are copied to and read back from (ADR
    /// 43); `None`: no archive (a segment that lives only in one then
    /// fails its reads, naming itself).
    pub archive: Option<std::sync::Arc<dyn crate::archive::Archive>>,
    /// Cache of chunks read from the archive, bytes. Default 64 MiB.
    pub archive_cache_bytes: usize,
    /// Encryption at rest (ADR 45): with a master key, every segment the
    /// store creates from now on is encrypted under a data key of its own
    /// that this key wraps, and encrypted segments open only with it.
    /// `None`: segments are written in the clear (and an encrypted store
    /// refuses to open).
    pub encryption: Option<crate::encrypt::MasterKey>,
}

/// One fewer than the cores, at least one.
pub fn default_reader_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .max(1)
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            durability: Durability::Always,
            max_event_bytes: 16 << 20,
            max_append_bytes: 64 << 20,
            max_append_events: 100_000,
            segment_bytes: 256 << 20,
            preallocate_bytes: 4 << 20,
            max_group_appends: 4096,
            max_group_bytes: 8 << 20,
            index_flush_entries: 200_000,
            index_flush_interval: Duration::from_secs(30),
            index_cache_bytes: 64 << 20,
            read_cache_bytes: 64 << 20,
            fell_behind_events: 50_000,
            append_queue: 8192,
            reader_threads: default_reader_threads(),
            read_queue: 1024,
            read_step_bytes: 256 << 10,
            clock: Clock::system(),
            archive: None,
            archive_cache_bytes: 64 << 20,
            encryption: None,
        }
    }
}

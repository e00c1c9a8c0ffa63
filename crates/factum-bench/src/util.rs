//! What the workloads share: percentiles, payloads, raw-disk baselines,
//! the file system, memory.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use factum_core::{Bytes, ContentType, EventData, EventStore, Position, ReadAll};
use factum_engine::{Durability, Engine, EngineConfig, MasterKey};

use crate::error::BenchError;

/// Latency samples; percentiles by sorting (nearest rank).
#[derive(Default, Debug, Clone)]
pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    /// Room for `n` samples.
    pub fn with_capacity(n: usize) -> Self {
        Latencies(Vec::with_capacity(n))
    }

    /// Adds a sample.
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// Adds another set's samples.
    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// (p50, p99) in µs; `None` without samples.
    pub fn p50_p99_us(&mut self) -> (Option<f64>, Option<f64>) {
        self.0.sort_unstable();
        (percentile_us(&self.0, 0.50), percentile_us(&self.0, 0.99))
    }
}

/// The `q` quantile (0 < q ≤ 1) of sorted samples, nearest-rank, in µs.
pub fn percentile_us(sorted: &[Duration], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1].as_secs_f64() * 1e6)
}

/// A JSON document of exactly `n` bytes (n ≥ 10): `{"p":"xxxx…"}`.
pub fn payload(n: usize) -> Bytes {
    let pad = n.saturating_sub(8).max(1);
    let s = format!("{{\"p\":\"{}\"}}", "x".repeat(pad));
    Bytes::from(s)
}

/// A JSON event of type `Bench` with this payload and a fresh id.
pub fn event(data: &Bytes) -> EventData {
    EventData::new("Bench", ContentType::Json, data.clone())
}

/// Opens a store for a workload.
pub fn open_engine(dir: &Path, durability: Durability) -> Result<Engine, BenchError> {
    open_engine_with(dir, durability, None)
}

/// Opens a store for a workload, encrypted at rest under `encryption`
/// when given (ADR 45); otherwise as [`open_engine`].
pub fn open_engine_with(
    dir: &Path,
    durability: Durability,
    encryption: Option<MasterKey>,
) -> Result<Engine, BenchError> {
    let config = EngineConfig {
        durability,
        encryption,
        ..EngineConfig::default()
    };
    Ok(Engine::open_with(dir, config)?.0)
}

/// The median of some measurements (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// What a raw write + fdatasync loop achieved.
pub struct Raw {
    /// write+fdatasync operations.
    pub ops: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Time taken.
    pub elapsed: Duration,
    /// Per-operation latency.
    pub latencies: Latencies,
}

impl Raw {
    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Bytes per second.
    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A raw baseline: appends `chunk` bytes to a new file (growing it, as the
/// engine's log grows) and fdatasyncs after each write. It can run in
/// slices, interleaved with the engine's, so both see the same disk.
pub struct RawWriter {
    file: std::fs::File,
    path: std::path::PathBuf,
    buf: Vec<u8>,
    /// With preallocation: the file holds durable zeros up to here.
    zeroed: Option<u64>,
    /// What it achieved so far.
    pub raw: Raw,
}

impl RawWriter {
    /// Creates the file.
    pub fn create(path: &Path, chunk: usize) -> Result<Self, BenchError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)
            .map_err(|e| BenchError::failure(format!("creating {}: {e}", path.display())))?;
        Ok(RawWriter {
            file,
            path: path.to_path_buf(),
            buf: vec![0xA5u8; chunk.max(1)],
            zeroed: None,
            raw: Raw {
                ops: 0,
                bytes: 0,
                elapsed: Duration::ZERO,
                latencies: Latencies::with_capacity(1 << 14),
            },
        })
    }

    /// Like [`RawWriter::create`], but every write lands in space that
    /// already holds durable zeros (written and fdatasynced 4 MiB ahead, not
    /// timed), as the engine's preallocation arranges (ADR 10): the best
    /// case for an fdatasync of this size on this disk.
    pub fn create_preallocated(path: &Path, chunk: usize) -> Result<Self, BenchError> {
        let mut w = Self::create(path, chunk)?;
        w.zeroed = Some(0);
        Ok(w)
    }

    /// Writes for `duration` or until `max_ops` operations in all, whichever
    /// comes first (at least one operation).
    pub fn run(&mut self, duration: Duration, max_ops: u64) -> Result<(), BenchError> {
        const AHEAD: u64 = 4 << 20;
        let started = Instant::now();
        let mut untimed = Duration::ZERO;
        let first = self.raw.ops;
        while self.raw.ops < max_ops.max(1)
            && (self.raw.ops == first || started.elapsed() < duration + untimed)
        {
            let t = Instant::now();
            if self.zero_ahead(self.raw.bytes + self.buf.len() as u64 + AHEAD)? {
                untimed += t.elapsed();
            }
            let t = Instant::now();
            self.write_one()?;
            self.raw.latencies.push(t.elapsed());
        }
        self.raw.elapsed += started.elapsed() - untimed;
        Ok(())
    }

    /// `ticks` writes, one every `every` (paced, as a live system's
    /// appends arrive); each write's latency runs from its scheduled time,
    /// so it includes waiting behind a slow earlier one. With
    /// preallocation, the zeros for all of them are written first.
    pub fn run_paced(&mut self, every: Duration, ticks: u64) -> Result<(), BenchError> {
        self.zero_ahead(self.raw.bytes + self.buf.len() as u64 * (ticks + 1))?;
        let started = Instant::now();
        for k in 0..ticks {
            let due = started + every * k as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            self.write_one()?;
            self.raw.latencies.push(due.elapsed());
        }
        self.raw.elapsed += started.elapsed();
        Ok(())
    }

    /// With preallocation: durable zeros up to `upto`. True if it wrote any.
    fn zero_ahead(&mut self, upto: u64) -> Result<bool, BenchError> {
        let Some(zeroed) = self.zeroed.filter(|z| upto > *z) else {
            return Ok(false);
        };
        let zeros = vec![0u8; (upto - zeroed) as usize];
        self.file
            .write_all_at(&zeros, zeroed)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| {
                BenchError::failure(format!("preallocating {}: {e}", self.path.display()))
            })?;
        self.zeroed = Some(upto);
        Ok(true)
    }

    /// One write of the chunk at the end, and its fdatasync.
    fn write_one(&mut self) -> Result<(), BenchError> {
        self.file
            .write_all_at(&self.buf, self.raw.bytes)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| BenchError::failure(format!("writing {}: {e}", self.path.display())))?;
        self.raw.bytes += self.buf.len() as u64;
        self.raw.ops += 1;
        Ok(())
    }

    /// Removes the file and returns the totals.
    pub fn finish(self) -> Raw {
        drop(self.file);
        let _ = std::fs::remove_file(&self.path);
        self.raw
    }
}

/// One uninterrupted raw loop (see [`RawWriter`]).
pub fn raw_sync_loop(
    path: &Path,
    chunk: usize,
    duration: Duration,
    max_ops: u64,
) -> Result<Raw, BenchError> {
    let mut w = RawWriter::create(path, chunk)?;
    w.run(duration, max_ops)?;
    Ok(w.finish())
}

/// The file system holding `path`, e.g. `ext4 (/dev/vda on /)`, from
/// /proc/self/mountinfo (longest mount point that contains the path).
pub fn filesystem_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return "unknown".into();
    };
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        // id parent major:minor root mountpoint options [optional…] - fstype source superopts
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mount), Some(fstype)) = (fields.get(4), fields.get(sep + 1)) else {
            continue;
        };
        let source = fields.get(sep + 2).copied().unwrap_or("?");
        let mount = mount.replace("\\040", " ");
        if path.starts_with(&mount) && best.as_ref().is_none_or(|(len, _)| mount.len() >= *len) {
            best = Some((mount.len(), format!("{fstype} ({source} on {mount})")));
        }
    }
    best.map_or_else(|| "unknown".into(), |(_, s)| s)
}

/// A field of /proc/self/status in kB (e.g. `VmHWM`, `VmRSS`).
pub fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Events per second.
pub fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Reads `$all` forwards in pages of `page` events: how many, the time,
/// and the latency of each page.
pub async fn read_all_pages<S: EventStore>(
    store: &S,
    page: u64,
) -> Result<(u64, Duration, Latencies), BenchError> {
    let mut lat = Latencies::default();
    let started = Instant::now();
    let (mut next, mut n) = (0u64, 0u64);
    loop {
        let t = Instant::now();
        let events = store
            .read_all(
                ReadAll::forwards()
                    .from_position(Position(next))
                    .max_count(page),
            )
            .await?;
        let Some(last) = events.last() else { break };
        lat.push(t.elapsed());
        n += events.len() as u64;
        next = last.position.0 + 1;
        if (events.len() as u64) < page {
            break;
        }
    }
    Ok((n, started.elapsed(), lat))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile_us(&v, 0.5), Some(50.0));
        assert_eq!(percentile_us(&v, 0.99), Some(99.0));
        assert_eq!(percentile_us(&v[..1], 0.99), Some(1.0));
        assert_eq!(percentile_us(&[], 0.5), None);
    }

    #[test]
    fn payload_has_the_asked_size_and_is_json() {
        let p = payload(256);
        assert_eq!(p.len(), 256);
        serde_json::from_slice::<serde_json::Value>(&p).unwrap();
    }
}

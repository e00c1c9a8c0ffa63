//! Compaction (issue 18, ADR 43): sealed segments rewritten compressed
//! (`compress.rs`) through the one crash-safe segment rewrite
//! (`rewrite.rs`) a scavenge uses, every record kept. Online or offline
//! (`factum compact`); `factum serve --compress-segments` runs it on a
//! timer. The active segment is never compressed; a segment is compressed
//! only once the index checkpoint has passed it, as a scavenge requires.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use factum_core::Result;

use crate::format::{FEATURE_COMPRESSED, SEGMENT_HEADER_LEN};
use crate::log::{FrameReader, Scanned};
use crate::rewrite::{rewrite_segment, Pace, RecordAction, RewriteSpec, Throttle};
use crate::Engine;

/// When sealed segments are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CompressPolicy {
    /// Never (the default).
    #[default]
    Off,
    /// As soon as they are sealed (and indexed).
    Sealed,
    /// Once sealed at least this long (judged by the commit time of the
    /// first event after the segment, on the engine's clock).
    SealedFor(Duration),
}

impl CompressPolicy {
    /// Parses `off`, `sealed`, or an age such as `30d`, `12h`, `90m`,
    /// `45s` (sealed at least that long).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        match s {
            "off" | "no" | "false" => return Ok(CompressPolicy::Off),
            "sealed" | "on" | "true" => return Ok(CompressPolicy::Sealed),
            _ => {}
        }
        let bad = || {
            format!("`{s}` is not a compression policy: use off, sealed, or an age such as 7d, 12h, 30m, 45s")
        };
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = s.split_at(split);
        let n: u64 = n.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => Some(n),
            "m" => n.checked_mul(60),
            "h" => n.checked_mul(3600),
            "d" => n.checked_mul(86_400),
            _ => None,
        }
        .ok_or_else(bad)?;
        Ok(CompressPolicy::SealedFor(Duration::from_secs(secs)))
    }
}

/// What one compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Sealed, indexed segments looked at.
    pub segments: u32,
    /// Of them, compressed now.
    pub compressed: u32,
    /// Of them, compressed before.
    pub already_compressed: u32,
    /// Of them, left alone because they were sealed too recently.
    pub too_recent: u32,
    /// Of them, left alone because they live only in the archive.
    pub archive_only: u32,
    /// Bytes on disk of the segments compressed now, before …
    pub bytes_before: u64,
    /// … and after.
    pub bytes_after: u64,
    /// Time taken.
    pub elapsed: Duration,
}

impl CompactReport {
    /// bytes before / bytes after of the segments compressed now.
    pub fn ratio(&self) -> f64 {
        self.bytes_before as f64 / self.bytes_after.max(1) as f64
    }
}

impl Engine {
    /// Compresses the sealed segments `policy` selects (blocking; reads and
    /// appends go on). `stop` ends it between frames, the segment being
    /// rewritten keeping its old version. `Off` does nothing.
    pub fn compact(
        &self,
        policy: CompressPolicy,
        throttle: Throttle,
        stop: &AtomicBool,
    ) -> Result<CompactReport> {
        let started = Instant::now();
        let mut report = CompactReport::default();
        if policy == CompressPolicy::Off {
            return Ok(report);
        }
        let reader = self.reader();
        let now = self.config().clock.now();
        let mut pace = Pace::new(throttle);
        for number in crate::rewrite::sealed_behind_checkpoint(self)? {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let Some(seg) = reader.segments.get(number) else {
                continue;
            };
            report.segments += 1;
            if seg.is_archived() {
                // Only in the archive: compressed there or not, it stays as
                // it was uploaded (ADR 43).
                report.archive_only += 1;
                continue;
            }
            // A store opened with a master key also takes its compressed
            // segments written in the clear: rewritten, they are encrypted
            // (ADR 45).
            if seg.format.compressed()
                && (seg.format.encrypted() || self.config().encryption.is_none())
            {
                report.already_compressed += 1;
                continue;
            }
            if let CompressPolicy::SealedFor(age) = policy {
                if !sealed_for(reader, number, now, age)? {
                    report.too_recent += 1;
                    continue;
                }
            }
            let spec = RewriteSpec {
                segment: number,
                add_features: FEATURE_COMPRESSED,
                min_freed_bytes: 0,
            };
            let mut keep = |_: &_| Ok(RecordAction::Keep);
            let done = rewrite_segment(
                self.dir(),
                reader,
                spec,
                self.config().encryption.as_ref(),
                &mut keep,
                &mut pace,
                stop,
            )?;
            let Some(done) = done else { break };
            if done.swapped {
                report.compressed += 1;
                report.bytes_before += done.old_bytes;
                report.bytes_after += done.new_bytes;
                tracing::info!(
                    segment = number,
                    before = done.old_bytes,
                    after = done.new_bytes,
                    "segment compressed"
                );
            }
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

/// Was segment `number` sealed at least `age` before `now`? Judged by the
/// commit time of the first event after it (false while there is none).
pub(crate) fn sealed_for(
    reader: &crate::reader::Reader,
    number: u32,
    now: factum_core::Timestamp,
    age: Duration,
) -> Result<bool> {
    let sealed = reader
        .segments
        .get(number + 1)
        .map(|next| first_commit_time(&next))
        .transpose()?
        .flatten();
    Ok(sealed.is_some_and(|t| t <= now.saturating_sub(age)))
}

/// The commit time of the first frame of `seg` (when the segment before it
/// was sealed, near enough); `None` while it holds no frame.
fn first_commit_time(
    seg: &std::sync::Arc<crate::log::Segment>,
) -> Result<Option<factum_core::Timestamp>> {
    let len = seg.len()?;
    let mut frames = FrameReader::new(seg.clone(), SEGMENT_HEADER_LEN as u64, len);
    Ok(match frames.next_frame()? {
        Scanned::Frame { header, .. } => Some(header.created),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!(CompressPolicy::parse("off"), Ok(CompressPolicy::Off));
        assert_eq!(CompressPolicy::parse("sealed"), Ok(CompressPolicy::Sealed));
        assert_eq!(
            CompressPolicy::parse("7d"),
            Ok(CompressPolicy::SealedFor(Duration::from_secs(7 * 86_400)))
        );
        assert_eq!(
            CompressPolicy::parse("90m"),
            Ok(CompressPolicy::SealedFor(Duration::from_secs(5400)))
        );
        for bad in ["", "7", "7w", "d", "-1d", "99999999999999999999d"] {
            let e = CompressPolicy::parse(bad).unwrap_err();
            assert!(e.contains("off, sealed"), "{bad}: {e}");
        }
    }
}

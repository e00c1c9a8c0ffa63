//! Scavenge on PostgreSQL (ADR 33): the engine's rule
//! (`factum_core::rules::retention::visible`) turned into bounded deletes.
//! Stream by stream (keyset pages of the `streams` table), the events no
//! read can see any more are deleted with their `$ce-`/`$et-` entries in
//! batches of at most `batch` rows, one short transaction each, so
//! appends and reads go on and no batch holds many locks; PostgreSQL's
//! autovacuum reuses the space. Positions never change (`$all` gets
//! gaps); the `streams` rows keep every stream's state (last revision,
//! deletion), so a stream whose events all went answers expected
//! revisions as before. Tombstones stay.
//!
//! Online (ADR 40): [`PostgresStore::scavenge_with`] is throttled
//! (KurrentDB's busy percentage, by resting after each batch), stops
//! between batches when asked, and reports its progress after each batch;
//! the server drives it through the Operations service and `/admin/scavenge`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use factum_core::rules::retention::{visible, Visible};
use factum_core::rules::StreamState;
use factum_core::{Result, StreamName, Timestamp};

use crate::read::q;
use crate::{db_err, PostgresStore};

/// What a PostgreSQL scavenge did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PgScavengeReport {
    /// Streams looked at.
    pub streams: u64,
    /// Events deleted.
    pub events_removed: u64,
    /// `$ce-`/`$et-` entries deleted with them.
    pub links_removed: u64,
    /// Bytes of the deleted events' data and metadata (PostgreSQL reuses
    /// them after autovacuum; the files do not shrink).
    pub bytes_removed: u64,
    /// Streams in the store when the scavenge started (its total work).
    pub streams_total: u64,
    /// Pages of streams (of [`STREAMS_PAGE`]) looked at so far.
    pub pages_done: u64,
    /// … of them, pages where something was deleted.
    pub pages_changed: u64,
    /// Stopped on request before the end.
    pub stopped: bool,
}

/// Streams looked at per keyset page: what the server reports as one
/// "chunk" of a PostgreSQL scavenge (PostgreSQL has no chunk files).
pub const STREAMS_PAGE: u64 = 500;

/// How a PostgreSQL scavenge runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PgScavengeOptions {
    /// "Now" for `$maxAge`; the system clock when `None`.
    pub now: Option<Timestamp>,
    /// Rows deleted per transaction (at least 1).
    pub batch: u32,
    /// Busy this percentage of the time (1–100; KurrentDB's
    /// `throttlePercent`): after a batch that took `t`, it rests
    /// `t·(100−p)/p`.
    pub throttle_percent: u8,
}

impl Default for PgScavengeOptions {
    fn default() -> Self {
        PgScavengeOptions {
            now: None,
            batch: 1000,
            throttle_percent: 100,
        }
    }
}

/// Rests as long as `throttle_percent` asks after `busy` of work, in short
/// naps so a stop is honoured promptly.
async fn rest(busy: Duration, throttle_percent: u8, stop: &AtomicBool) {
    let p = throttle_percent.clamp(1, 100);
    if p >= 100 {
        return;
    }
    let until = Instant::now() + busy.mul_f64((100 - p) as f64 / p as f64);
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(Duration::from_millis(50))).await;
    }
}

/// A bound as PostgreSQL's `bigint` holds it (values past `i64::MAX` are
/// clamped: revisions that large keep their events).
fn bigint(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// The rows of `stream` no read can see at `now`: revisions below the
/// first bound, or created before the second (microseconds); `None` when
/// it hides nothing.
fn bounds(stream: &StreamName, state: &StreamState, now: Timestamp) -> Option<(i64, i64)> {
    let (below, created_before) = match visible(stream, state, now) {
        Visible::All => return None,
        Visible::None => (i64::MAX, i64::MIN),
        Visible::Last(last) => (bigint(last), i64::MIN),
        Visible::From { from, created_from } => {
            (bigint(from), created_from.map_or(i64::MIN, |t| t.0))
        }
    };
    (below > 0 || created_before != i64::MIN).then_some((below, created_before))
}

impl PostgresStore {
    /// Removes every event no read of its stream can see at `now` (the
    /// system clock when `None`), in batches of at most `batch` rows.
    pub async fn scavenge(&self, now: Option<Timestamp>, batch: u32) -> Result<PgScavengeReport> {
        let options = PgScavengeOptions {
            now,
            batch,
            ..PgScavengeOptions::default()
        };
        self.scavenge_with(options, &AtomicBool::new(false), &mut |_| {})
            .await
    }

    /// [`scavenge`](Self::scavenge) throttled, stoppable between batches
    /// (`stop`; the report then says `stopped`), calling `progress` after
    /// every batch and page with the report so far.
    pub async fn scavenge_with(
        &self,
        options: PgScavengeOptions,
        stop: &AtomicBool,
        progress: &mut (dyn FnMut(&PgScavengeReport) + Send),
    ) -> Result<PgScavengeReport> {
        let inner = &self.inner;
        let now = options.now.unwrap_or_else(Timestamp::now);
        let batch = i64::from(options.batch.max(1));
        let mut client = inner.pool.get().await.map_err(|e| db_err("connect", e))?;
        let page_sql = format!(
            "SELECT name, id, last_revision, last_position, last_event_id, base, deleted, tombstoned, metadata
             FROM {} WHERE name > $1 ORDER BY name LIMIT {STREAMS_PAGE}",
            inner.tables.streams
        );
        let count_sql = format!("SELECT count(*) FROM {}", inner.tables.streams);
        // The state again, under a share lock on the stream's row, in the
        // batch's own transaction: an append, delete or metadata change of
        // the stream (which update that row) waits for the batch, and a
        // batch never acts on a state read before one (ADR 40).
        let state_sql = format!(
            "SELECT last_revision, last_position, last_event_id, base, deleted, tombstoned, metadata
             FROM {} WHERE id = $1 FOR SHARE",
            inner.tables.streams
        );
        let state_stmt = client.prepare(&state_sql).await.map_err(q)?;
        let delete_sql =
            include_str!("../sql/scavenge_batch.sql").replace("{schema}", &inner.tables.schema);
        let delete = client.prepare(&delete_sql).await.map_err(q)?;
        let mut report = PgScavengeReport {
            streams_total: client
                .query_one(&count_sql, &[])
                .await
                .map_err(q)?
                .get::<_, i64>(0) as u64,
            ..PgScavengeReport::default()
        };
        progress(&report);
        let mut after = String::new();
        loop {
            if stop.load(Ordering::Relaxed) {
                report.stopped = true;
                return Ok(report);
            }
            let rows = client.query(&page_sql, &[&after]).await.map_err(q)?;
            let Some(last) = rows.last() else {
                return Ok(report);
            };
            after = last.get(0);
            let removed_before = report.events_removed;
            for r in &rows {
                let name: String = r.get(0);
                let Ok(stream) = StreamName::new(&name) else {
                    continue;
                };
                if stream.category_stream_of().is_some() || stream.event_type_stream_of().is_some()
                {
                    // Link streams hold no events of their own.
                    continue;
                }
                report.streams += 1;
                let id: i64 = r.get(1);
                let state = StreamState {
                    last_revision: r.get::<_, Option<i64>>(2).map(|v| v as u64),
                    last_position: r.get::<_, i64>(3) as u64,
                    last_event_id: r.get(4),
                    base: r.get::<_, i64>(5) as u64,
                    deleted: r.get(6),
                    tombstoned: r.get(7),
                    metadata: r.get(8),
                };
                // A first look without a lock: most streams hide nothing.
                if bounds(&stream, &state, now).is_none() {
                    continue;
                }
                loop {
                    if stop.load(Ordering::Relaxed) {
                        report.stopped = true;
                        return Ok(report);
                    }
                    let started = Instant::now();
                    let tx = client.transaction().await.map_err(q)?;
                    let Some(r) = tx.query_opt(&state_stmt, &[&id]).await.map_err(q)? else {
                        break;
                    };
                    let state = StreamState {
                        last_revision: r.get::<_, Option<i64>>(0).map(|v| v as u64),
                        last_position: r.get::<_, i64>(1) as u64,
                        last_event_id: r.get(2),
                        base: r.get::<_, i64>(3) as u64,
                        deleted: r.get(4),
                        tombstoned: r.get(5),
                        metadata: r.get(6),
                    };
                    let Some((below, created_before)) = bounds(&stream, &state, now) else {
                        tx.commit().await.map_err(q)?;
                        break;
                    };
                    let row = tx
                        .query_one(&delete, &[&id, &below, &created_before, &batch])
                        .await
                        .map_err(q)?;
                    tx.commit().await.map_err(q)?;
                    let (events, links, bytes): (i64, i64, i64) =
                        (row.get(0), row.get(1), row.get(2));
                    report.events_removed += events as u64;
                    report.links_removed += links as u64;
                    report.bytes_removed += bytes as u64;
                    progress(&report);
                    rest(started.elapsed(), options.throttle_percent, stop).await;
                    if events < batch {
                        break;
                    }
                }
            }
            report.pages_done += 1;
            report.pages_changed += u64::from(report.events_removed > removed_before);
            progress(&report);
        }
    }
}

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
}

/// A bound as PostgreSQL's `bigint` holds it (values past `i64::MAX` are
/// clamped: revisions that large keep their events).
fn bigint(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl PostgresStore {
    /// Removes every event no read of its stream can see at `now` (the
    /// system clock when `None`), in batches of at most `batch` rows.
    pub async fn scavenge(&self, now: Option<Timestamp>, batch: u32) -> Result<PgScavengeReport> {
        let inner = &self.inner;
        let now = now.unwrap_or_else(Timestamp::now);
        let batch = i64::from(batch.max(1));
        let client = inner.pool.get().await.map_err(|e| db_err("connect", e))?;
        let page_sql = format!(
            "SELECT name, id, last_revision, last_position, last_event_id, base, deleted, tombstoned, metadata
             FROM {} WHERE name > $1 ORDER BY name LIMIT 500",
            inner.tables.streams
        );
        let delete_sql =
            include_str!("../sql/scavenge_batch.sql").replace("{schema}", &inner.tables.schema);
        let delete = client.prepare(&delete_sql).await.map_err(q)?;
        let mut report = PgScavengeReport::default();
        let mut after = String::new();
        loop {
            let rows = client.query(&page_sql, &[&after]).await.map_err(q)?;
            let Some(last) = rows.last() else {
                return Ok(report);
            };
            after = last.get(0);
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
                let (below, created_before) = match visible(&stream, &state, now) {
                    Visible::All => continue,
                    Visible::None => (i64::MAX, i64::MIN),
                    Visible::Last(last) => (bigint(last), i64::MIN),
                    Visible::From { from, created_from } => {
                        (bigint(from), created_from.map_or(i64::MIN, |t| t.0))
                    }
                };
                if below <= 0 && created_before == i64::MIN {
                    continue;
                }
                loop {
                    let row = client
                        .query_one(&delete, &[&id, &below, &created_before, &batch])
                        .await
                        .map_err(q)?;
                    let (events, links): (i64, i64) = (row.get(0), row.get(1));
                    report.events_removed += events as u64;
                    report.links_removed += links as u64;
                    if events < batch {
                        break;
                    }
                }
            }
        }
    }
}

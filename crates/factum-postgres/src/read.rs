//! Reads: streams (through `events` or `links`), `$all` by position.

use factum_core::rules::{self, StreamState};
use factum_core::{
    AllStart, ContentType, Direction, Error, Filter, Link, PageBound, Position, ReadAll,
    ReadStream, RecordedEvent, Result, StreamMetadata, StreamMetadataResult, StreamName,
    StreamRevision, Timestamp,
};
use tokio_postgres::Row;

use crate::{db_err, Inner};

const PAGE: i64 = 1000;
const COLUMNS: &str = "e.position, e.stream_name, e.revision, e.id, e.event_type, e.content_type, e.created, e.data, e.metadata";
/// An event's bytes against a page's `max_bytes`, as
/// [`RecordedEvent::size`] counts them.
const SIZE: &str = "(octet_length(e.data) + octet_length(e.metadata) + octet_length(e.event_type))";

/// The bytes of the rows before each one, in the query's order (`ord`):
/// a row is part of a page bounded by `max_bytes` when those are below it
/// (the first row always is), so PostgreSQL sends no more than a page's
/// bytes plus one event.
fn bytes_before(ord: &str) -> String {
    format!("SUM({SIZE}) OVER (ORDER BY {ord} ROWS UNBOUNDED PRECEDING) - {SIZE} AS bytes_before")
}

/// `max_bytes` as the bound on `bytes_before` (at least 1: the first row
/// has 0 before it).
fn bytes_bound(max_bytes: u64) -> i64 {
    max_bytes.clamp(1, i64::MAX as u64) as i64
}

pub(crate) fn q(e: tokio_postgres::Error) -> Error {
    db_err("read", e)
}

fn event(row: &Row, link: Option<Link>) -> Result<RecordedEvent> {
    let stream: String = row.get(1);
    Ok(RecordedEvent {
        position: Position(row.get::<_, i64>(0) as u64),
        stream: StreamName::new(stream)?,
        revision: StreamRevision(row.get::<_, i64>(2) as u64),
        id: row.get(3),
        event_type: row.get(4),
        content_type: if row.get::<_, i16>(5) == 0 {
            ContentType::Json
        } else {
            ContentType::Binary
        },
        created: Timestamp(row.get(6)),
        data: row.get::<_, Vec<u8>>(7).into(),
        metadata: row.get::<_, Vec<u8>>(8).into(),
        link,
    })
}

/// A stream's id and state, if the store has seen it.
pub(crate) async fn stream_state(inner: &Inner, name: &str) -> Result<Option<(i64, StreamState)>> {
    let client = inner.pool.get().await.map_err(|e| db_err("connect", e))?;
    let row = client
        .query_opt(
            &format!(
                "SELECT id, last_revision, last_position, last_event_id, base, deleted, tombstoned, metadata
                 FROM {} WHERE name = $1",
                inner.tables.streams
            ),
            &[&name],
        )
        .await
        .map_err(q)?;
    Ok(row.map(|r| {
        (
            r.get(0),
            StreamState {
                last_revision: r.get::<_, Option<i64>>(1).map(|v| v as u64),
                last_position: r.get::<_, i64>(2) as u64,
                last_event_id: r.get(3),
                base: r.get::<_, i64>(4) as u64,
                deleted: r.get(5),
                tombstoned: r.get(6),
                metadata: r.get(7),
            },
        )
    }))
}

/// The next position to be assigned (head + 1).
pub(crate) async fn next_position(inner: &Inner) -> Result<u64> {
    let client = inner.pool.get().await.map_err(|e| db_err("connect", e))?;
    let row = client
        .query_one(
            &format!(
                "SELECT next_position FROM {} WHERE id = 1",
                inner.tables.head
            ),
            &[],
        )
        .await
        .map_err(q)?;
    Ok(row.get::<_, i64>(0) as u64)
}

pub(crate) async fn read_stream(inner: &Inner, req: &ReadStream) -> Result<Vec<RecordedEvent>> {
    let name = &req.stream;
    let found = if name.is_all() {
        None
    } else {
        stream_state(inner, name.as_str()).await?
    };
    let Some(plan) =
        rules::plan_stream_read(req, found.as_ref().map(|(_, s)| s), Timestamp::now())?
    else {
        return Ok(Vec::new());
    };
    let id = found.map_or(-1, |(id, _)| id);
    let (lo, hi, forwards, is_link) = (plan.lo, plan.hi, plan.forwards, plan.is_link);
    let oldest = plan.oldest.map_or(i64::MIN, |t| t.0);
    let until = req.until.map_or(i64::MAX, |t| t.0);
    let order = if forwards { "ASC" } else { "DESC" };
    let limit = req.max_count.min(i64::MAX as u64) as i64;
    if limit == 0 {
        return Ok(Vec::new());
    }
    let sql = if is_link {
        format!(
            "SELECT * FROM (
               SELECT {COLUMNS}, l.revision AS link_revision, {}
               FROM {} l JOIN {} e ON e.position = l.position
               WHERE l.stream_id = $1 AND l.revision BETWEEN $2 AND $3 AND e.created >= $4 AND e.created <= $5
               ORDER BY l.revision {order} LIMIT $6) p
             WHERE bytes_before < $7 ORDER BY link_revision {order}",
            bytes_before(&format!("l.revision {order}")),
            inner.tables.links,
            inner.tables.events
        )
    } else {
        format!(
            "SELECT * FROM (
               SELECT {COLUMNS}, {} FROM {} e
               WHERE e.stream_id = $1 AND e.revision BETWEEN $2 AND $3 AND e.created >= $4 AND e.created <= $5
                 AND e.flags & 1 = 0
               ORDER BY e.revision {order} LIMIT $6) p
             WHERE bytes_before < $7 ORDER BY revision {order}",
            bytes_before(&format!("e.revision {order}")),
            inner.tables.events
        )
    };
    let client = inner.pool.get().await.map_err(|e| db_err("connect", e))?;
    let rows = client
        .query(
            &sql,
            &[
                &id,
                &(lo as i64),
                &(hi as i64),
                &oldest,
                &until,
                &limit,
                &bytes_bound(req.max_bytes),
            ],
        )
        .await
        .map_err(q)?;
    rows.iter()
        .map(|row| {
            let link = is_link.then(|| Link {
                stream: name.clone(),
                revision: StreamRevision(row.get::<_, i64>(9) as u64),
            });
            event(row, link)
        })
        .collect()
}

pub(crate) async fn read_all(inner: &Inner, req: &ReadAll) -> Result<Vec<RecordedEvent>> {
    match req.direction {
        Direction::Forwards => {
            let start = match req.from {
                AllStart::Start => 0,
                AllStart::End => return Ok(Vec::new()),
                AllStart::Position(p) => p.0,
            };
            Ok(scan(
                inner,
                start,
                true,
                PageBound::new(req.max_count, req.max_bytes),
                req.filter.as_ref(),
                req.until,
                u64::MAX,
            )
            .await?
            .0)
        }
        Direction::Backwards => {
            let start = match req.from {
                AllStart::Start | AllStart::End => i64::MAX as u64,
                AllStart::Position(p) => p.0,
            };
            Ok(scan(
                inner,
                start,
                false,
                PageBound::new(req.max_count, req.max_bytes),
                req.filter.as_ref(),
                req.until,
                u64::MAX,
            )
            .await?
            .0)
        }
    }
}

/// Scans `$all` from `start` (inclusive) in one direction; returns a
/// `page` of matching events and, forwards, the position after the last one
/// examined. Stops after `max_scan` examined events. Each query fetches at
/// most the bytes left in the page (plus one event), matching or not.
pub(crate) async fn scan(
    inner: &Inner,
    start: u64,
    forwards: bool,
    mut page_bound: PageBound,
    filter: Option<&Filter>,
    until: Option<Timestamp>,
    max_scan: u64,
) -> Result<(Vec<RecordedEvent>, u64)> {
    if page_bound.is_full() {
        return Ok((Vec::new(), start));
    }
    let client = inner.pool.get().await.map_err(|e| db_err("connect", e))?;
    let (cmp, order) = if forwards {
        (">=", "ASC")
    } else {
        ("<=", "DESC")
    };
    let sql = format!(
        "SELECT * FROM (
           SELECT {COLUMNS}, {} FROM {} e WHERE e.position {cmp} $1 ORDER BY e.position {order} LIMIT $2) p
         WHERE bytes_before < $3 ORDER BY position {order}",
        bytes_before(&format!("e.position {order}")),
        inner.tables.events
    );
    let mut out = Vec::new();
    // Positions are `bigint`: one past `i64::MAX` is as far as any can be
    // (a plain cast would turn a client's huge start into a negative one
    // and scan from the beginning).
    let mut cursor = i64::try_from(start).unwrap_or(i64::MAX);
    let mut scanned = 0u64;
    loop {
        let page = PAGE
            .min((max_scan - scanned).min(i64::MAX as u64) as i64)
            .max(1);
        let fetch = page_bound.bytes_left();
        let rows = client
            .query(&sql, &[&cursor, &page, &bytes_bound(fetch)])
            .await
            .map_err(q)?;
        if rows.is_empty() {
            let next = if scanned == 0 {
                start
            } else {
                cursor.max(0) as u64
            };
            return Ok((out, next));
        }
        let n = rows.len() as i64;
        let mut fetched = 0u64;
        for row in &rows {
            let e = event(row, None)?;
            fetched = fetched.saturating_add(e.size() as u64);
            cursor = if forwards {
                e.position.0 as i64 + 1
            } else {
                e.position.0 as i64 - 1
            };
            scanned += 1;
            if until.is_some_and(|u| e.created > u) {
                if forwards {
                    return Ok((out, e.position.0));
                }
                continue;
            }
            if filter.is_none_or(|f| f.matches(&e)) {
                let full = page_bound.add(&e);
                out.push(e);
                if full {
                    return Ok((out, cursor.max(0) as u64));
                }
            }
            if scanned >= max_scan {
                return Ok((out, cursor.max(0) as u64));
            }
        }
        // Fewer rows than asked for and not cut short by bytes: the end.
        if (n < page && fetched < fetch) || cursor < 0 {
            return Ok((out, cursor.max(0) as u64));
        }
    }
}

pub(crate) async fn stream_metadata(
    inner: &Inner,
    stream: &StreamName,
) -> Result<StreamMetadataResult> {
    let owner = stream_state(inner, stream.as_str()).await?;
    if owner.as_ref().is_some_and(|(_, s)| s.tombstoned) {
        return Err(Error::StreamDeleted {
            stream: stream.clone(),
        });
    }
    let meta_stream = stream_state(inner, stream.metadata_stream().as_str()).await?;
    let Some(revision) = meta_stream.and_then(|(_, s)| s.last_revision) else {
        return Ok(StreamMetadataResult::default());
    };
    let json = owner.and_then(|(_, s)| s.metadata).unwrap_or_default();
    Ok(StreamMetadataResult {
        revision: Some(StreamRevision(revision)),
        metadata: StreamMetadata::from_json(&json)?,
    })
}

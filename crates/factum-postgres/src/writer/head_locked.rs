//! The head-locked path (ADR 6): locks `head`, loads the group's streams
//! and decides in the transaction (two round trips), from what the
//! database holds. Every group may take it; the fast path falls back to it.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::{ClientWrapper, Object};
use factum_core::rules::Decision;
use factum_core::{AppendResult, Position, StreamRevision, Uuid};

use super::fast_path::{Cache, Head};
use super::group::{entry_of, group_names, Group, Rows};
use super::{failure, q, Answers, Failure, Request, Sql};
use crate::{PostgresConfig, Tables};

/// Begins a transaction, locks `head` and loads the rows of `names` in one
/// round trip (the transaction is managed by hand so BEGIN, the lock and the
/// load go out together, and the writes and COMMIT in another). On any error
/// the transaction is rolled back, and the first error in statement order
/// is the cause (see `finish`). Both the group path and multi-stream appends
/// start here.
pub(super) async fn begin_locked(
    tx: &ClientWrapper,
    sql: &Sql,
    names: &[String],
) -> std::result::Result<(tokio_postgres::Row, Vec<tokio_postgres::Row>), Failure> {
    let (lock_head, load_streams) = tokio::try_join!(
        tx.prepare_cached(&sql.lock_head),
        tx.prepare_cached(&sql.load_streams)
    )
    .map_err(q)?;
    let load_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&names];
    let (begin, head, rows) = tokio::join!(
        tx.batch_execute("BEGIN"),
        tx.query_one(&lock_head, &[]),
        tx.query(&load_streams, &load_params)
    );
    let begun = begin.and(head).and_then(|head| Ok((head, rows?)));
    match begun {
        Ok(r) => Ok(r),
        Err(e) => {
            let _ = tx.batch_execute("ROLLBACK").await;
            Err(q(e))
        }
    }
}

/// Runs one group in one transaction on the head-locked path; the outer error
/// means the whole transaction failed (nothing of it is known to be
/// committed). Statements are prepared once per connection and pipelined
/// where they do not depend on each other's answers: begin, lock + load,
/// (retry checks), writes, commit. Afterwards the cache holds what this
/// group committed (and what it found, if another instance had written).
pub(super) async fn commit(
    client: &mut Object,
    sql: &Sql,
    t: &Tables,
    config: &PostgresConfig,
    group: &[Request],
    cache: &mut Cache,
) -> std::result::Result<Answers, Failure> {
    // Every stream the group may touch, loaded in one query.
    let names = group_names(group);
    let tx: &ClientWrapper = client;
    let (head, rows) = begin_locked(tx, sql, &names).await?;
    // Did another instance commit since this writer's last commit?
    let found = (head.get::<_, i64>(0), head.get::<_, i64>(1));
    let unmoved = cache
        .head
        .is_some_and(|h| (h.next_position, h.next_stream_id) == found);
    let quiet = cache.head.is_none() || unmoved;
    if !unmoved {
        cache.clear();
    }
    cache.quiet = quiet;
    let mut g = Group {
        sql,
        states: HashMap::new(),
        touched: HashSet::new(),
        next_position: found.0,
        next_stream_id: found.1,
        created: head.get::<_, i64>(3).max(head.get::<_, i64>(2)),
        rows: Rows::default(),
    };
    for row in &rows {
        let (name, entry) = entry_of(row);
        g.states.insert(name, entry);
    }
    let mut answers = Vec::with_capacity(group.len());
    for r in group {
        let mut d = g.decide(r, &config.limits);
        let answer = loop {
            match d {
                Decision::Reject(e) => break Err(e),
                Decision::Done(res) => break Ok(res),
                Decision::CheckRetry {
                    stream,
                    first,
                    ids,
                    otherwise,
                } => {
                    g.flush(tx).await?;
                    let id = g.states.get(stream.as_str()).map(|e| e.id).unwrap_or(-1);
                    let retry = tx.prepare_cached(&sql.retry_ids).await.map_err(q)?;
                    let found = tx
                        .query(&retry, &[&id, &(first as i64), &(ids.len() as i64)])
                        .await
                        .map_err(q)?;
                    let same = found.len() == ids.len()
                        && found
                            .iter()
                            .zip(&ids)
                            .all(|(row, id)| row.get::<_, Uuid>(0) == *id);
                    match found.last() {
                        Some(last) if same => {
                            break Ok(AppendResult {
                                revision: StreamRevision(last.get::<_, i64>(1) as u64),
                                position: Position(last.get::<_, i64>(2) as u64),
                            })
                        }
                        _ => d = *otherwise,
                    }
                }
                Decision::Write {
                    stream,
                    events,
                    kind,
                    first_revision,
                    undelete,
                } => {
                    break Ok(g.write(&stream, events, kind, first_revision, undelete));
                }
            }
        };
        answers.push(answer);
    }
    match finish(tx, sql, t, &mut g, &head).await {
        Ok(last_created) => {
            let committed = Head {
                next_position: g.next_position,
                next_stream_id: g.next_stream_id,
                last_created,
            };
            // Every stream the group looked up, present or not.
            let looked_up: Vec<_> = names
                .into_iter()
                .map(|name| {
                    let e = g.states.remove(&name);
                    (name, e)
                })
                .collect();
            let rest = g.states.into_iter().map(|(name, e)| (name, Some(e)));
            cache.committed(committed, looked_up.into_iter().chain(rest));
            Ok(answers)
        }
        Err(f) => {
            let _ = tx.batch_execute("ROLLBACK").await;
            Err(f)
        }
    }
}

/// Writes the group's rows, the stream states and the head, and commits:
/// every statement is sent before the first answer is awaited, so this is
/// one round trip. A failed statement aborts the transaction, and the
/// COMMIT behind it then rolls back. Returns `head.last_created` as
/// committed.
pub(super) async fn finish(
    tx: &ClientWrapper,
    sql: &Sql,
    t: &Tables,
    g: &mut Group<'_>,
    head: &tokio_postgres::Row,
) -> std::result::Result<i64, Failure> {
    let wrote = g.next_position != head.get::<_, i64>(0);
    if !wrote && g.next_stream_id == head.get::<_, i64>(1) && g.touched.is_empty() {
        tx.batch_execute("COMMIT")
            .await
            .map_err(|e| failure(e, true))?;
        return Ok(head.get(2));
    }
    let (events, links, upsert, update_head, notify) = tokio::try_join!(
        tx.prepare_cached(&sql.insert_events),
        tx.prepare_cached(&sql.insert_links),
        tx.prepare_cached(&sql.upsert_streams),
        tx.prepare_cached(&sql.update_head),
        tx.prepare_cached("SELECT pg_notify($1, $2)")
    )
    .map_err(q)?;
    let r = std::mem::take(&mut g.rows);
    let (_, c) = g.stream_columns(|_| false);
    let next = g.next_position.to_string();
    let insert_events = r.insert_events(tx, &events);
    let insert_links = r.insert_links(tx, &links);
    let upsert_streams = c.upsert(tx, &upsert);
    let head_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&g.next_position, &g.next_stream_id, &g.created];
    let head_row = tx.execute(&update_head, &head_params);
    // Delivered at commit, so a woken subscriber finds the events.
    let notify = async {
        if !wrote {
            return Ok(0);
        }
        tx.execute(&notify, &[&t.channel, &next]).await
    };
    let commit = async { tx.batch_execute("COMMIT").await.map(|_| 0u64) };
    // Every answer is awaited; the first error in statement order is the
    // cause: the statements after it fail only because the transaction is
    // aborted (SQLSTATE 25P02), and the COMMIT then rolls back.
    let answers = tokio::join!(
        insert_events,
        insert_links,
        upsert_streams,
        head_row,
        notify,
        commit
    );
    let (events, links, streams, head, notify, commit) = answers;
    for answer in [events, links, streams, head, notify, commit] {
        answer.map_err(|e| failure(e, true))?;
    }
    Ok(g.created)
}

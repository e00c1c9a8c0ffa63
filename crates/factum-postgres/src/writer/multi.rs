//! Multi-stream appends (ADR 29): one transaction of their own, on a pooled
//! connection, the way the head-locked path commits a group: BEGIN, lock
//! `head`, load every stream the request may touch, decide with the shared
//! rules (`factum_core::rules::multi`), compare ids for retries, write all
//! rows, COMMIT. Either every row is committed or none; positions are one
//! contiguous range because `head` is locked from the first statement to
//! the commit. The writer task's cache notices the moved head (its guard
//! raises `head_moved`) and takes its head-locked path, as after another
//! instance's write.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::{ClientWrapper, Object, Pool};
use factum_core::rules::multi::{self as multi_rules, Part, Settled};
use factum_core::rules::{self, WriteKind};
use factum_core::{
    AppendResult, Error, MultiAppend, MultiAppendResult, Position, Result, StreamRevision,
    UnavailableReason, Uuid,
};

use super::group::{entry_of, Group, Rows};
use super::head_locked::{begin_locked, finish};
use super::{discard, q, Failure, Sql, RETRIES, RETRY_PAUSE};
use crate::{describe, PostgresConfig, Tables};

/// Appends `request` in one transaction, retrying one that was rolled back
/// before its commit (nothing was written).
pub(crate) async fn append_multi(
    pool: &Pool,
    tables: &Tables,
    config: &PostgresConfig,
    request: MultiAppend,
) -> Result<MultiAppendResult> {
    // Bad input never reaches the database.
    multi_rules::check_multi_input(&request, &config.limits)?;
    let sql = Sql::new(tables);
    let mut attempt = 0u32;
    loop {
        let mut client = Some(pool.get().await.map_err(|e| {
            Error::unavailable(
                UnavailableReason::DatabaseUnreachable,
                format!("PostgreSQL is unreachable: {}", describe(&e)),
            )
        })?);
        let c = client.as_mut().expect("connected");
        match once(c, &sql, tables, config, &request).await {
            Ok(answer) => return answer,
            Err(f) => {
                let _ = c.batch_execute("ROLLBACK").await;
                discard(&mut client);
                match f {
                    Failure::RolledBack(e) if attempt < RETRIES => {
                        attempt += 1;
                        tracing::warn!("multi-stream append rolled back ({e}); retry {attempt}");
                        tokio::time::sleep(RETRY_PAUSE * attempt).await;
                    }
                    Failure::RolledBack(e) => {
                        return Err(Error::unavailable(
                            UnavailableReason::DatabaseUnreachable,
                            format!("{e}; nothing was written"),
                        ))
                    }
                    Failure::Rejected(why) => {
                        return Err(Error::InvalidInput(format!(
                            "PostgreSQL refused the append: {why}"
                        )))
                    }
                    Failure::Unknown(e) => return Err(Error::unavailable(UnavailableReason::DatabaseUnreachable, format!(
                        "{e}; the append may or may not have been committed: retrying it with the same event ids is safe"
                    ))),
                }
            }
        }
    }
}

/// Every stream the request may touch: its streams, their owners and `$$`
/// streams, and the link streams of its events (sorted, no duplicates).
fn names_of(request: &MultiAppend) -> Vec<String> {
    let mut names = Vec::new();
    for (i, p) in request.streams.iter().enumerate() {
        let owner = p.stream.metadata_of().unwrap_or_else(|| p.stream.clone());
        names.push(p.stream.to_string());
        names.push(owner.metadata_stream().to_string());
        names.push(owner.to_string());
        for e in request.events_of(i) {
            names.extend(rules::link_streams(&p.stream, &e.event_type));
        }
    }
    names.sort();
    names.dedup();
    names
}

/// One attempt. The outer error: the transaction failed (the caller rolls
/// back); the inner result: the answer (a refusal by the rules included).
async fn once(
    client: &mut Object,
    sql: &Sql,
    t: &Tables,
    config: &PostgresConfig,
    request: &MultiAppend,
) -> std::result::Result<Result<MultiAppendResult>, Failure> {
    let names = names_of(request);
    let tx: &ClientWrapper = client;
    let (head, rows) = begin_locked(tx, sql, &names).await?;
    let mut g = Group {
        sql,
        states: HashMap::new(),
        touched: HashSet::new(),
        next_position: head.get::<_, i64>(0),
        next_stream_id: head.get::<_, i64>(1),
        created: head.get::<_, i64>(3).max(head.get::<_, i64>(2)),
        rows: Rows::default(),
    };
    for row in &rows {
        let (name, entry) = entry_of(row);
        g.states.insert(name, entry);
    }
    let parts =
        match multi_rules::decide_multi(request, |name| Ok(g.state(name).cloned()), &config.limits)
        {
            Ok(p) => p,
            Err(e) => return rollback(tx, e).await,
        };
    let mut resolved = Vec::with_capacity(parts.len());
    for part in parts {
        let part = match part {
            Part::Retry {
                ref stream,
                first,
                ref ids,
                ..
            } => {
                let id = g.states.get(stream.as_str()).map_or(-1, |e| e.id);
                let found = already_appended(tx, sql, id, first, ids).await?;
                multi_rules::resolve(part, found)
            }
            p => p,
        };
        resolved.push(part);
    }
    let write = match multi_rules::settle(request, resolved) {
        Ok(Settled::Write(w)) => w,
        Ok(Settled::Done(r)) => {
            tx.batch_execute("COMMIT").await.map_err(q)?;
            return Ok(Ok(r));
        }
        Err(e) => return rollback(tx, e).await,
    };
    let first_position = g.next_position as u64;
    for r in &write.records {
        g.write_events(
            &r.stream,
            vec![r.event.clone()],
            WriteKind::Events,
            r.revision,
        );
    }
    finish(tx, sql, t, &mut g, &head).await?;
    Ok(Ok(write.result(first_position)))
}

async fn rollback(
    tx: &ClientWrapper,
    e: Error,
) -> std::result::Result<Result<MultiAppendResult>, Failure> {
    tx.batch_execute("ROLLBACK").await.map_err(q)?;
    Ok(Err(e))
}

/// If the events of stream `id` from revision `first` have exactly `ids`,
/// the result of that earlier append.
async fn already_appended(
    tx: &ClientWrapper,
    sql: &Sql,
    id: i64,
    first: u64,
    ids: &[Uuid],
) -> std::result::Result<Option<AppendResult>, Failure> {
    let retry = tx.prepare_cached(&sql.retry_ids).await.map_err(q)?;
    let found = tx
        .query(&retry, &[&id, &(first as i64), &(ids.len() as i64)])
        .await
        .map_err(q)?;
    let same = found.len() == ids.len()
        && found
            .iter()
            .zip(ids)
            .all(|(row, id)| row.get::<_, Uuid>(0) == *id);
    Ok(match found.last() {
        Some(last) if same => Some(AppendResult {
            revision: StreamRevision(last.get::<_, i64>(1) as u64),
            position: Position(last.get::<_, i64>(2) as u64),
        }),
        _ => None,
    })
}

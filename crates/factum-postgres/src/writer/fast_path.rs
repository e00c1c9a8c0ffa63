//! The fast path (ADR 6): decides a group from what this writer committed
//! last ([`Cache`]) and commits it as one statement whose first part locks
//! `head` and raises the named condition `head_moved` (SQLSTATE
//! [`HEAD_MOVED`], schema version 3) unless `head` is where this writer
//! left it: another instance wrote. A failed guard writes nothing and the
//! group takes the head-locked path, so correctness never depends on the
//! cache.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::{ClientWrapper, Object};
use factum_core::rules::Decision;

use super::group::{entry_of, group_names, Entry, Group, Rows};
use super::{failure, q, Answers, Failure, Request, Sql};
use crate::{PostgresConfig, Tables};

/// The SQLSTATE of `{schema}.expect_head_unmoved` (migration 3): `head`
/// moved since this writer's last commit — another instance wrote. (Class
/// `FX` is Factum's own; PostgreSQL defines no such class.)
pub(super) const HEAD_MOVED: &str = "FX001";

/// The fast path's statement. `h` goes first: every other part reads from
/// it, so no row is written before it has locked `head` (as the head-locked path
/// does) and checked that `head` is where this writer left it (`$1`, `$2`),
/// raising `head_moved` ([`HEAD_MOVED`]) otherwise. It moves `head` to `$3`, `$4`
/// and takes the commit time from the database clock (the statement's
/// start, never below the last commit's). Then the events, the links, the
/// streams known to exist (updated: no `ON CONFLICT`, whose row lock costs
/// a WAL record each; the count must match `$35`) and the new streams
/// (inserted), and `NOTIFY`, delivered at commit.
pub(super) fn commit_sql(t: &Tables) -> String {
    format!(
        "WITH h AS (
             UPDATE {head} SET next_position = $3, next_stream_id = $4,
                 last_created = GREATEST((extract(epoch FROM now()) * 1000000)::bigint, last_created)
             WHERE id = 1 AND {schema}.expect_head_unmoved(next_position = $1 AND next_stream_id = $2) = 1
             RETURNING last_created),
         ev AS (
             INSERT INTO {events} (position, stream_id, stream_name, revision, id, event_type, content_type, flags, created, data, metadata)
             SELECT u.p, u.s, u.n, u.r, u.i, u.t, u.c, u.f, h.last_created, u.d, u.m
             FROM h, UNNEST($5::bigint[], $6::bigint[], $7::text[], $8::bigint[], $9::uuid[], $10::text[],
                            $11::smallint[], $12::smallint[], $13::bytea[], $14::bytea[]) AS u(p, s, n, r, i, t, c, f, d, m)),
         li AS (
             INSERT INTO {links} (stream_id, revision, position)
             SELECT u.s, u.r, u.p FROM h, UNNEST($15::bigint[], $16::bigint[], $17::bigint[]) AS u(s, r, p)),
         known AS (
             UPDATE {streams} st SET last_revision = u.r, last_position = u.p, last_event_id = u.e,
                 base = u.b, deleted = u.d, tombstoned = u.t, metadata = u.m
             FROM h, UNNEST($18::text[], $19::bigint[], $20::bigint[], $21::uuid[], $22::bigint[],
                            $23::boolean[], $24::boolean[], $25::bytea[]) AS u(n, r, p, e, b, d, t, m)
             WHERE st.name = u.n
             RETURNING 1),
         fresh AS (
             INSERT INTO {streams} (name, id, last_revision, last_position, last_event_id, base, deleted, tombstoned, metadata)
             SELECT u.* FROM h, UNNEST($26::text[], $27::bigint[], $28::bigint[], $29::bigint[], $30::uuid[],
                                       $31::bigint[], $32::boolean[], $33::boolean[], $34::bytea[])
                 AS u(n, i, r, p, e, b, d, t, m))
         SELECT h.last_created, (SELECT {schema}.expect_head_unmoved(count(*) = $35) FROM known), pg_notify($36, $37)::text
         FROM h",
        schema = t.schema,
        head = t.head,
        events = t.events,
        links = t.links,
        streams = t.streams,
    )
}

/// The `head` row as a commit left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) next_position: i64,
    pub(super) next_stream_id: i64,
    pub(super) last_created: i64,
}

/// What this writer knows of the database: `head` and stream states as its
/// own last commit left them. It is right exactly while no other instance
/// has committed since, which the fast path's guard checks in the
/// database, under the head lock, before anything it wrote can commit.
#[derive(Default)]
pub(super) struct Cache {
    pub(super) head: Option<Head>,
    /// Stream states as of `head`; `None`: no such stream.
    pub(super) streams: HashMap<String, Option<Entry>>,
    /// This writer's previous group found no other instance's commit since
    /// its own: the fast path is likely to succeed. (After a miss, groups
    /// take the head-locked path until one finds the head where this writer left
    /// it, so contended instances do not pay for failed guards.)
    pub(super) quiet: bool,
}

/// Most stream states cached; beyond that the cache starts over.
const CACHED_STREAMS: usize = 50_000;

impl Cache {
    pub(super) fn clear(&mut self) {
        *self = Cache::default();
    }

    /// After a commit that left the database at `head`.
    pub(super) fn committed(
        &mut self,
        head: Head,
        states: impl Iterator<Item = (String, Option<Entry>)>,
    ) {
        if self.streams.len() > CACHED_STREAMS {
            self.streams.clear();
        }
        self.head = Some(head);
        self.streams.extend(states);
    }
}

/// Whether a fast-path guard failed: `head` moved since this writer's last
/// commit.
fn head_moved(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code() == HEAD_MOVED)
}

/// The fast path: decides the group from the cache and commits it with one
/// statement, one round trip (one more when streams must be loaded first),
/// whose first part locks `head` and fails unless it is where this writer
/// left it ([`commit_sql`]). `Ok(None)`: nothing was written, take the
/// head-locked path (no cache, a failed guard, or an append that needs an
/// idempotency check).
pub(super) async fn commit(
    client: &mut Object,
    sql: &Sql,
    t: &Tables,
    config: &PostgresConfig,
    group: &[Request],
    cache: &mut Cache,
) -> std::result::Result<Option<Answers>, Failure> {
    let Some(head) = cache.head.filter(|_| cache.quiet) else {
        return Ok(None);
    };
    let tx: &ClientWrapper = client;
    let names = group_names(group);
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !cache.streams.contains_key(*n))
        .cloned()
        .collect();
    if !missing.is_empty() {
        // Read outside the transaction. If the guard then finds `head`
        // unmoved, nothing was committed since this writer's last commit,
        // so these rows are the states at `head`; if not, the cache goes.
        let load = tx.prepare_cached(&sql.load_streams).await.map_err(q)?;
        let rows = tx.query(&load, &[&missing]).await.map_err(q)?;
        for name in missing {
            cache.streams.insert(name, None);
        }
        for row in &rows {
            let (name, entry) = entry_of(row);
            cache.streams.insert(name, Some(entry));
        }
    }
    let mut g = Group {
        sql,
        states: names
            .iter()
            .filter_map(|n| Some((n.clone(), cache.streams.get(n)?.clone()?)))
            .collect(),
        touched: HashSet::new(),
        next_position: head.next_position,
        next_stream_id: head.next_stream_id,
        // Unused: the statements take the time from the database clock.
        created: head.last_created,
        rows: Rows::default(),
    };
    let mut answers = Vec::with_capacity(group.len());
    for r in group {
        let d = g.decide(r, &config.limits);
        answers.push(match d {
            Decision::Reject(e) => Err(e),
            Decision::Done(res) => Ok(res),
            Decision::Write {
                stream,
                events,
                kind,
                first_revision,
                undelete,
            } => Ok(g.write(&stream, events, kind, first_revision, undelete)),
            // Needs a query inside the transaction.
            Decision::CheckRetry { .. } => return Ok(None),
        });
    }
    if g.next_position == head.next_position && g.touched.is_empty() {
        // Nothing to write: the answers hold if the cache was right.
        let check = tx.prepare_cached(&sql.check_head).await.map_err(q)?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&head.next_position, &head.next_stream_id];
        return match tx.execute(&check, &params).await {
            Ok(_) => Ok(Some(answers)),
            Err(e) if head_moved(&e) => {
                cache.quiet = false;
                Ok(None)
            }
            Err(e) => Err(q(e)),
        };
    }
    let stmt = tx.prepare_cached(&sql.fast_commit).await.map_err(q)?;
    let r = std::mem::take(&mut g.rows);
    let (old, new) = g.stream_columns(|name| matches!(cache.streams.get(name), Some(Some(_))));
    let known = old.names.len() as i64;
    let next = g.next_position.to_string();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 37] = [
        &head.next_position,
        &head.next_stream_id,
        &g.next_position,
        &g.next_stream_id,
        &r.position,
        &r.stream_id,
        &r.stream_name,
        &r.revision,
        &r.id,
        &r.event_type,
        &r.content_type,
        &r.flags,
        &r.data,
        &r.metadata,
        &r.link_stream,
        &r.link_revision,
        &r.link_position,
        &old.names,
        &old.revs,
        &old.poss,
        &old.evids,
        &old.bases,
        &old.dels,
        &old.tombs,
        &old.metas,
        &new.names,
        &new.ids,
        &new.revs,
        &new.poss,
        &new.evids,
        &new.bases,
        &new.dels,
        &new.tombs,
        &new.metas,
        &known,
        &t.channel,
        &next,
    ];
    // One statement outside any transaction block: PostgreSQL commits it
    // before answering, or rolls all of it back on any error.
    match tx.query_one(&stmt, &params).await {
        Ok(row) => {
            cache.committed(
                Head {
                    next_position: g.next_position,
                    next_stream_id: g.next_stream_id,
                    last_created: row.get(0),
                },
                g.states.into_iter().map(|(name, e)| (name, Some(e))),
            );
            Ok(Some(answers))
        }
        Err(e) if head_moved(&e) => {
            // Another instance wrote: nothing of this group was written.
            cache.quiet = false;
            tracing::debug!(
                "another instance wrote since this writer's last commit: head-locked path"
            );
            Ok(None)
        }
        // An error from the server: rolled back (or refused on the data);
        // the connection failed: the commit may have happened.
        Err(e) => Err(failure(e, true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard of a schema at version 3 raises what the writer takes
    /// for "another instance wrote", and nothing else does. Needs
    /// PostgreSQL at `FACTUM_TEST_POSTGRES_URL` (SKIPPED without one,
    /// failed with `CI=true`).
    #[tokio::test]
    async fn the_guard_raises_what_head_moved_recognizes() {
        let url = std::env::var("FACTUM_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let admin = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                client
            }
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("SKIPPED: PostgreSQL is not reachable at {url}: {e}");
                return;
            }
            Err(e) => panic!("PostgreSQL is required in CI (CI=true): {e}"),
        };
        let schema = format!("factum_guard_{}", factum_core::Uuid::new_v4().simple());
        let mut config = PostgresConfig::new(url);
        config.schema = schema.clone();
        let store = crate::PostgresStore::connect(config)
            .await
            .unwrap()
            .drop_schema_on_drop();
        let guard = format!("SELECT {schema}.expect_head_unmoved($1)");
        let moved = admin.query_one(&guard, &[&false]).await.unwrap_err();
        assert!(head_moved(&moved), "{moved:?}");
        assert_eq!(
            admin
                .query_one(&guard, &[&true])
                .await
                .unwrap()
                .get::<_, i32>(0),
            1
        );
        // A division by zero (a data error) is not a moved head.
        let other = admin.query_one("SELECT 1 / 0", &[]).await.unwrap_err();
        assert!(!head_moved(&other));
        drop(store);
    }
}

//! The writer task: batches appends into one transaction (group commit).
//!
//! Each group locks the `head` row first, so positions are assigned in
//! commit order with no gaps even with several processes writing (ADR 6).
//! The append rules are `factum_core::rules`, the same as the engine's.
//!
//! Two paths commit a group (ADR 6). The head-locked path
//! (`head_locked.rs`) locks `head`, loads the streams and decides in the
//! transaction (two round trips). The fast path (`fast_path.rs`) decides
//! from what this writer committed last ([`Cache`]) and commits the group
//! as one statement whose first part locks `head` and raises the named
//! condition `head_moved` when it moved since (another instance wrote): one
//! round trip. A failed check writes nothing and the group takes the
//! head-locked path, so correctness never depends on the cache. Both build
//! a group's rows the same way (`group.rs`).

mod fast_path;
mod group;
mod head_locked;

use deadpool_postgres::{Object, Pool};
use factum_core::rules::{self, Operation};
use factum_core::UnavailableReason;
use factum_core::{AppendResult, Error, ExpectedRevision, Result, StreamName};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::{Severity, SqlState};

use crate::{describe, PostgresConfig, Tables};
use fast_path::Cache;

/// One queued request.
pub struct Request {
    pub stream: StreamName,
    pub expected: ExpectedRevision,
    pub op: Operation,
    pub reply: oneshot::Sender<Result<AppendResult>>,
}

/// Starts the writer task; appends go through the returned sender.
pub fn start(pool: Pool, tables: Tables, config: PostgresConfig) -> mpsc::Sender<Request> {
    let (tx, rx) = mpsc::channel(config.max_group_appends.max(1) * 4);
    tokio::spawn(run(pool, tables, config, rx));
    tx
}

async fn run(pool: Pool, tables: Tables, config: PostgresConfig, mut rx: mpsc::Receiver<Request>) {
    let mut client: Option<Object> = None;
    let sql = Sql::new(&tables);
    let mut cache = Cache::default();
    let mut carried: Option<Request> = None;
    loop {
        let first = match carried.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => break,
            },
        };
        let members;
        (members, carried) = take_group(first, &mut rx, &config);
        // Groups the database refused on the data (a constraint, a value it
        // cannot store) are halved until the refused append stands alone:
        // it fails, every other member commits. First halves first.
        let mut pending = vec![members];
        while let Some(mut members) = pending.pop() {
            if members.is_empty() {
                continue;
            }
            let outcome = commit(
                &pool,
                &mut client,
                &sql,
                &tables,
                &config,
                &members,
                &mut cache,
            )
            .await;
            match outcome {
                Ok(answers) => {
                    for (r, a) in members.into_iter().zip(answers) {
                        let _ = r.reply.send(a);
                    }
                }
                Err(Failure::Rejected(why)) if members.len() == 1 => {
                    tracing::debug!("PostgreSQL refused an append: {why}");
                    for r in members {
                        let _ = r.reply.send(Err(Error::InvalidInput(format!(
                            "PostgreSQL refused the append: {why}"
                        ))));
                    }
                }
                Err(Failure::Rejected(why)) => {
                    tracing::debug!(
                        "PostgreSQL refused a group of {} appends ({why}): halving it",
                        members.len()
                    );
                    let second = members.split_off(members.len() / 2);
                    pending.push(second);
                    pending.push(members);
                }
                Err(f) => {
                    let why = match f {
                        Failure::RolledBack(e) => format!("{e}; nothing was written"),
                        Failure::Unknown(e) => format!(
                            "{e}; the append may or may not have been committed: retrying it with the same event ids is safe"
                        ),
                        Failure::Rejected(_) => unreachable!("handled above"),
                    };
                    tracing::warn!("append group failed: {why}");
                    for r in members {
                        let _ = r.reply.send(Err(Error::unavailable(
                            UnavailableReason::DatabaseUnreachable,
                            why.clone(),
                        )));
                    }
                }
            }
        }
    }
}

/// The next group: `first` and whatever else is queued, up to
/// `max_group_appends` requests and `max_group_bytes` of events (one
/// request alone may be larger: it goes alone). A request that would pass
/// the byte cap is handed back, to start the next group.
fn take_group(
    first: Request,
    rx: &mut mpsc::Receiver<Request>,
    config: &PostgresConfig,
) -> (Vec<Request>, Option<Request>) {
    let mut members = Vec::new();
    let mut bytes = 0;
    admit(first, config, &mut members, &mut bytes);
    while members.len() < config.max_group_appends {
        let Ok(r) = rx.try_recv() else {
            break;
        };
        if !members.is_empty() && bytes + request_bytes(&r) > config.max_group_bytes {
            return (members, Some(r));
        }
        admit(r, config, &mut members, &mut bytes);
    }
    (members, None)
}

/// What a request sends to the database, roughly: its events' bytes.
fn request_bytes(r: &Request) -> usize {
    match &r.op {
        Operation::Append(events) => events.iter().map(|e| e.size()).sum(),
        _ => 0,
    }
}

/// Adds a request to the group, or answers it at once when its input is
/// refused without looking at any stream: bad input (a NUL in an event
/// type, say) never reaches a statement shared with other appends.
fn admit(r: Request, config: &PostgresConfig, members: &mut Vec<Request>, bytes: &mut usize) {
    match rules::check_input(&r.stream, r.expected, &r.op, &config.limits) {
        Ok(()) => {
            *bytes += request_bytes(&r);
            members.push(r);
        }
        Err(e) => {
            let _ = r.reply.send(Err(e));
        }
    }
}

/// Commits one group, on the fast path when it may, retrying a group that
/// was rolled back (on a fresh connection; safe, nothing was written).
/// After the COMMIT went out the outcome may be unknown, and that is not
/// retried. A group the database refused on the data is not retried here
/// either: the caller halves it.
async fn commit(
    pool: &Pool,
    client: &mut Option<Object>,
    sql: &Sql,
    tables: &Tables,
    config: &PostgresConfig,
    group: &[Request],
    cache: &mut Cache,
) -> std::result::Result<Answers, Failure> {
    let mut attempt = 0u32;
    loop {
        if client.is_none() {
            match pool.get().await {
                Ok(c) => *client = Some(c),
                Err(e) if attempt < RETRIES => {
                    attempt += 1;
                    tracing::warn!("PostgreSQL unreachable ({e}); retry {attempt}");
                    tokio::time::sleep(RETRY_PAUSE * attempt).await;
                    continue;
                }
                Err(e) => {
                    return Err(Failure::RolledBack(format!(
                        "PostgreSQL is unreachable: {}",
                        describe(&e)
                    )))
                }
            }
        }
        let c = client.as_mut().expect("connected above");
        let committed = match fast_path::commit(c, sql, tables, config, group, cache).await {
            Ok(Some(answers)) => Ok(answers),
            Ok(None) => head_locked::commit(c, sql, tables, config, group, cache).await,
            // Judged again on the head-locked path, from what the database holds,
            // so only the head-locked path ever fails an append as refused.
            Err(Failure::Rejected(_)) => {
                cache.clear();
                head_locked::commit(c, sql, tables, config, group, cache).await
            }
            Err(f) => Err(f),
        };
        if committed.is_err() {
            // The outcome may be unknown: what was cached may be wrong.
            cache.clear();
        }
        match committed {
            Ok(answers) => return Ok(answers),
            Err(Failure::Rejected(why)) => {
                // The transaction is over; the connection is fine. (Outside
                // a transaction ROLLBACK only warns.)
                if c.batch_execute("ROLLBACK").await.is_err() {
                    discard(client);
                }
                return Err(Failure::Rejected(why));
            }
            Err(Failure::RolledBack(e)) if attempt < RETRIES => {
                discard(client);
                attempt += 1;
                tracing::warn!("append group rolled back ({e}); retry {attempt}");
                tokio::time::sleep(RETRY_PAUSE * attempt).await;
            }
            Err(f) => {
                discard(client);
                return Err(f);
            }
        }
    }
}

/// Drops a connection that may be broken or inside a failed transaction
/// instead of returning it to the pool.
fn discard(client: &mut Option<Object>) {
    if let Some(c) = client.take() {
        drop(Object::take(c));
    }
}

/// Retries of a group that was rolled back before its commit.
const RETRIES: u32 = 3;
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// How a group transaction failed (each with what PostgreSQL said).
enum Failure {
    /// Nothing was written: before the COMMIT was sent, or the server
    /// answered with an error (not a fatal one) that aborted the
    /// transaction, so its COMMIT rolled back. Retrying is safe.
    RolledBack(String),
    /// The server refused a statement on the data it carried (SQLSTATE
    /// class 22 data exception, 23 integrity constraint, 54 program
    /// limit): nothing was written, and the same group would be refused
    /// again. One of its appends is at fault; the writer halves the group
    /// to find it.
    Rejected(String),
    /// The COMMIT was sent and no answer says what became of it (the
    /// connection broke, or a fatal error ended the session): the outcome
    /// is unknown.
    Unknown(String),
}

/// Classifies a failed statement of a group; `commit_sent`: the COMMIT
/// (or, on the fast path, the one statement that commits) had gone out.
fn failure(e: tokio_postgres::Error, commit_sent: bool) -> Failure {
    let why = describe(&e);
    if e.as_db_error()
        .is_some_and(|db| refuses_the_data(db.code()))
    {
        return Failure::Rejected(why);
    }
    let why = format!("PostgreSQL append: {why}");
    match e.as_db_error() {
        // The session goes on and its transaction is aborted: rolled back.
        Some(db) if db.parsed_severity() == Some(Severity::Error) => Failure::RolledBack(why),
        _ if commit_sent => Failure::Unknown(why),
        _ => Failure::RolledBack(why),
    }
}

/// Whether an error is the database refusing the data of a statement
/// rather than trouble with the database: data exceptions (class 22: a
/// value it cannot store, such as a character the database encoding
/// lacks), integrity constraints (class 23: a constraint or trigger of the
/// operator's) and program limits (class 54: a value too large). The fast
/// path's guard raises its own class (`FX`), never one of these.
fn refuses_the_data(code: &SqlState) -> bool {
    let class = &code.code()[..2];
    matches!(class, "22" | "23" | "54")
}

/// The writer's statements, for the configured schema.
struct Sql {
    lock_head: String,
    load_streams: String,
    retry_ids: String,
    insert_events: String,
    insert_links: String,
    upsert_streams: String,
    update_head: String,
    /// Fast path without writes: raises `head_moved` unless `head` is
    /// where this writer left it.
    check_head: String,
    /// Fast path: the whole group as one statement (so one implicit
    /// transaction and one round trip), see [`fast_path::commit_sql`].
    fast_commit: String,
}

impl Sql {
    fn new(t: &Tables) -> Sql {
        Sql {
            // The clock is read in the same statement; monotonic `created` is
            // kept by taking the maximum with the last commit's time.
            lock_head: format!(
                "SELECT next_position, next_stream_id, last_created,
                        (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
                 FROM {} WHERE id = 1 FOR UPDATE",
                t.head
            ),
            load_streams: format!(
                "SELECT name, id, last_revision, last_position, last_event_id, base, deleted, tombstoned, metadata
                 FROM {} WHERE name = ANY($1)",
                t.streams
            ),
            retry_ids: format!(
                "SELECT id, revision, position FROM {} WHERE stream_id = $1 AND revision >= $2 AND flags & 1 = 0
                 ORDER BY revision LIMIT $3",
                t.events
            ),
            insert_events: format!(
                "INSERT INTO {} (position, stream_id, stream_name, revision, id, event_type, content_type, flags, created, data, metadata)
                 SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::uuid[], $6::text[],
                                      $7::smallint[], $8::smallint[], $9::bigint[], $10::bytea[], $11::bytea[])",
                t.events
            ),
            insert_links: format!(
                "INSERT INTO {} (stream_id, revision, position) SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[])",
                t.links
            ),
            upsert_streams: format!(
                "INSERT INTO {} (name, id, last_revision, last_position, last_event_id, base, deleted, tombstoned, metadata)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::uuid[], $6::bigint[],
                                      $7::boolean[], $8::boolean[], $9::bytea[])
                 ON CONFLICT (name) DO UPDATE SET
                     last_revision = EXCLUDED.last_revision, last_position = EXCLUDED.last_position,
                     last_event_id = EXCLUDED.last_event_id, base = EXCLUDED.base, deleted = EXCLUDED.deleted,
                     tombstoned = EXCLUDED.tombstoned, metadata = EXCLUDED.metadata",
                t.streams
            ),
            update_head: format!(
                "UPDATE {} SET next_position = $1, next_stream_id = $2, last_created = $3 WHERE id = 1",
                t.head
            ),
            check_head: format!(
                "SELECT {}.expect_head_unmoved(next_position = $1 AND next_stream_id = $2) FROM {} WHERE id = 1",
                t.schema, t.head
            ),
            fast_commit: fast_path::commit_sql(t),
        }
    }
}

/// A statement before the COMMIT failed.
fn q(e: tokio_postgres::Error) -> Failure {
    failure(e, false)
}

type Answers = Vec<Result<AppendResult>>;

#[cfg(test)]
mod tests {
    use super::*;
    use factum_core::EventData;

    fn request(stream: &str, event_type: &str, bytes: usize) -> Request {
        Request {
            stream: StreamName::new(stream).unwrap(),
            expected: ExpectedRevision::Any,
            op: Operation::Append(vec![EventData::binary(event_type, vec![0u8; bytes])]),
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn groups_are_capped_by_count_and_by_bytes() {
        let mut config = PostgresConfig::new("postgres://unused");
        config.max_group_appends = 4;
        config.max_group_bytes = 1000;
        let (tx, mut rx) = mpsc::channel(16);
        for i in 0..6 {
            tx.try_send(request(&format!("s-{i}"), "T", 99)).unwrap();
        }
        // By count: 4 of 100 bytes each.
        let first = rx.try_recv().unwrap();
        let (members, carried) = take_group(first, &mut rx, &config);
        assert_eq!(members.len(), 4);
        assert!(carried.is_none());
        // By bytes: 2 left of 100, then 600 + 500 pass 1000: the 500 waits.
        tx.try_send(request("big-1", "T", 599)).unwrap();
        tx.try_send(request("big-2", "T", 499)).unwrap();
        let first = rx.try_recv().unwrap();
        let (members, carried) = take_group(first, &mut rx, &config);
        assert_eq!(members.len(), 3, "100 + 100 + 600");
        let carried = carried.expect("the request past the byte cap");
        assert_eq!(carried.stream.as_str(), "big-2");
        // An append larger than the cap goes alone.
        tx.try_send(request("s-9", "T", 9)).unwrap();
        let (members, carried) = take_group(request("huge", "T", 5000), &mut rx, &config);
        assert_eq!(members.len(), 1);
        assert_eq!(carried.unwrap().stream.as_str(), "s-9");
    }

    #[test]
    fn bad_input_is_answered_before_it_joins_a_group() {
        let config = PostgresConfig::new("postgres://unused");
        let (tx, mut rx) = mpsc::channel(16);
        let (reply, mut answer) = oneshot::channel();
        tx.try_send(Request {
            reply,
            ..request("s-1", "Bad\0Type", 1)
        })
        .unwrap();
        tx.try_send(request("s-2", "Fine", 1)).unwrap();
        let first = request("s-0", "Fine", 1);
        let (members, _) = take_group(first, &mut rx, &config);
        let streams: Vec<_> = members.iter().map(|r| r.stream.as_str()).collect();
        assert_eq!(streams, ["s-0", "s-2"]);
        assert!(matches!(answer.try_recv(), Ok(Err(Error::InvalidInput(_)))));
    }

    #[test]
    fn only_data_errors_refuse_an_append() {
        // 22012 (division by zero) is a data error like any other: the
        // fast path's guard no longer raises it (schema version 3).
        for code in ["22P05", "22021", "22012", "23514", "23505", "54000"] {
            assert!(refuses_the_data(&SqlState::from_code(code)), "{code}");
        }
        for code in [
            fast_path::HEAD_MOVED,
            "25P02",
            "40001",
            "55P03",
            "57014",
            "57P01",
            "08006",
        ] {
            assert!(!refuses_the_data(&SqlState::from_code(code)), "{code}");
        }
    }
}

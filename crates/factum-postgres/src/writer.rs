//! The writer task: batches appends into one transaction (group commit).
//!
//! Each group locks the `head` row first, so positions are assigned in
//! commit order with no gaps even with several processes writing (ADR 6).
//! The append rules are `factum_core::rules`, the same as the engine's.
//!
//! Two paths commit a group. The slow path locks `head`, loads the streams
//! and decides in the transaction (two round trips). The fast path decides
//! from what this writer committed last ([`Cache`]) and commits the group
//! as one statement whose first part locks `head` and fails when it moved
//! since (another instance wrote): one round trip. A failed check writes
//! nothing and the group takes the slow path, so correctness never depends
//! on the cache (ADR 6).

use std::collections::{HashMap, HashSet};

use deadpool_postgres::ClientWrapper;
use deadpool_postgres::{Object, Pool};
use factum_core::rules::{self, Decision, Operation, StreamState, WriteKind, TOMBSTONE_REVISION};
use factum_core::{
    AppendResult, ContentType, Error, ExpectedRevision, Position, Result, StreamName,
    StreamRevision, Uuid,
};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::{Severity, SqlState};

use crate::{describe, PostgresConfig, Tables};

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
                        let _ = r.reply.send(Err(Error::Unavailable(why.clone())));
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
        let committed = match fast_group(c, sql, tables, config, group, cache).await {
            Ok(Some(answers)) => Ok(answers),
            Ok(None) => commit_group(c, sql, tables, config, group, cache).await,
            // Judged again on the slow path, from what the database holds,
            // so only the slow path ever fails an append as refused.
            Err(Failure::Rejected(_)) => {
                cache.clear();
                commit_group(c, sql, tables, config, group, cache).await
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
/// operator's) and program limits (class 54: a value too large). Division
/// by zero is not: the fast path's guards raise it on purpose.
fn refuses_the_data(code: &SqlState) -> bool {
    let class = &code.code()[..2];
    matches!(class, "22" | "23" | "54") && *code != SqlState::DIVISION_BY_ZERO
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
    /// Fast path without writes: fails (division by zero) unless `head`
    /// is where this writer left it.
    check_head: String,
    /// Fast path: the whole group as one statement (so one implicit
    /// transaction and one round trip), see [`fast_commit_sql`].
    fast_commit: String,
}

/// The fast path's statement. `h` goes first: every other part reads from
/// it, so no row is written before it has locked `head` (as the slow path
/// does) and checked that `head` is where this writer left it (`$1`, `$2`),
/// failing with division by zero otherwise. It moves `head` to `$3`, `$4`
/// and takes the commit time from the database clock (the statement's
/// start, never below the last commit's). Then the events, the links, the
/// streams known to exist (updated: no `ON CONFLICT`, whose row lock costs
/// a WAL record each; the count must match `$35`) and the new streams
/// (inserted), and `NOTIFY`, delivered at commit.
fn fast_commit_sql(t: &Tables) -> String {
    format!(
        "WITH h AS (
             UPDATE {head} SET next_position = $3, next_stream_id = $4,
                 last_created = GREATEST((extract(epoch FROM now()) * 1000000)::bigint, last_created)
             WHERE id = 1 AND 1 / ((next_position = $1 AND next_stream_id = $2)::int) = 1
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
         SELECT h.last_created, (SELECT 1 / ((count(*) = $35)::int) FROM known), pg_notify($36, $37)::text
         FROM h",
        head = t.head,
        events = t.events,
        links = t.links,
        streams = t.streams,
    )
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
                "SELECT 1 / ((next_position = $1 AND next_stream_id = $2)::int) FROM {} WHERE id = 1",
                t.head
            ),
            fast_commit: fast_commit_sql(t),
        }
    }
}

/// A stream's id and state within a group.
#[derive(Clone)]
struct Entry {
    id: i64,
    state: StreamState,
}

/// Rows to insert, column by column (for `UNNEST`).
#[derive(Default)]
struct Rows {
    position: Vec<i64>,
    stream_id: Vec<i64>,
    stream_name: Vec<String>,
    revision: Vec<i64>,
    id: Vec<Uuid>,
    event_type: Vec<String>,
    content_type: Vec<i16>,
    flags: Vec<i16>,
    created: Vec<i64>,
    data: Vec<Vec<u8>>,
    metadata: Vec<Vec<u8>>,
    link_stream: Vec<i64>,
    link_revision: Vec<i64>,
    link_position: Vec<i64>,
}

impl Rows {
    /// Inserts the event rows (none: nothing is sent).
    async fn insert_events(
        &self,
        tx: &ClientWrapper,
        stmt: &tokio_postgres::Statement,
    ) -> std::result::Result<u64, tokio_postgres::Error> {
        if self.position.is_empty() {
            return Ok(0);
        }
        let r = self;
        tx.execute(
            stmt,
            &[
                &r.position,
                &r.stream_id,
                &r.stream_name,
                &r.revision,
                &r.id,
                &r.event_type,
                &r.content_type,
                &r.flags,
                &r.created,
                &r.data,
                &r.metadata,
            ],
        )
        .await
    }

    /// Inserts the link rows (none: nothing is sent).
    async fn insert_links(
        &self,
        tx: &ClientWrapper,
        stmt: &tokio_postgres::Statement,
    ) -> std::result::Result<u64, tokio_postgres::Error> {
        if self.link_stream.is_empty() {
            return Ok(0);
        }
        tx.execute(
            stmt,
            &[&self.link_stream, &self.link_revision, &self.link_position],
        )
        .await
    }
}

struct Group<'t> {
    sql: &'t Sql,
    states: HashMap<String, Entry>,
    touched: HashSet<String>,
    next_position: i64,
    next_stream_id: i64,
    created: i64,
    rows: Rows,
}

/// A statement before the COMMIT failed.
fn q(e: tokio_postgres::Error) -> Failure {
    failure(e, false)
}

impl Group<'_> {
    fn entry(&mut self, name: &str) -> &mut Entry {
        self.touched.insert(name.to_string());
        let next = &mut self.next_stream_id;
        self.states.entry(name.to_string()).or_insert_with(|| {
            let id = *next;
            *next += 1;
            Entry {
                id,
                state: StreamState::default(),
            }
        })
    }

    fn state(&self, name: &StreamName) -> Option<&StreamState> {
        self.states.get(name.as_str()).map(|e| &e.state)
    }

    /// Adds the rows of a write: its events, then the `$metadata` event
    /// that recreates a soft-deleted stream (in the same transaction).
    fn write(
        &mut self,
        stream: &StreamName,
        events: Vec<factum_core::EventData>,
        kind: WriteKind,
        first: u64,
        undelete: Option<rules::Undelete>,
    ) -> AppendResult {
        let first_position = self.next_position as u64;
        let count = events.len() as u64;
        self.write_events(stream, events, kind, first);
        if let Some(u) = undelete {
            self.write_events(&u.stream, vec![u.event], WriteKind::Events, u.revision);
        }
        rules::write_answer(first, count, first_position)
    }

    fn write_events(
        &mut self,
        stream: &StreamName,
        events: Vec<factum_core::EventData>,
        kind: WriteKind,
        first: u64,
    ) {
        for (i, e) in events.into_iter().enumerate() {
            let position = self.next_position;
            self.next_position += 1;
            let revision = if kind == WriteKind::Tombstone {
                TOMBSTONE_REVISION
            } else {
                first + i as u64
            };
            let entry = self.entry(stream.as_str());
            entry
                .state
                .record_event(revision, position as u64, e.id, kind);
            let stream_id = entry.id;
            if kind != WriteKind::Tombstone {
                if let Some(target) = stream.metadata_of() {
                    self.entry(target.as_str())
                        .state
                        .record_metadata(&e.data, kind);
                }
                for link in rules::link_streams(stream, &e.event_type) {
                    let l = self.entry(&link);
                    let rev = l.state.record_link(position as u64, e.id);
                    let id = l.id;
                    self.rows.link_stream.push(id);
                    self.rows.link_revision.push(rev as i64);
                    self.rows.link_position.push(position);
                }
            }
            let r = &mut self.rows;
            r.position.push(position);
            r.stream_id.push(stream_id);
            r.stream_name.push(stream.to_string());
            r.revision.push(revision as i64);
            r.id.push(e.id);
            r.event_type.push(e.event_type);
            r.content_type.push(match e.content_type {
                ContentType::Json => 0,
                ContentType::Binary => 1,
            });
            r.flags.push(match kind {
                WriteKind::Events => 0,
                WriteKind::Tombstone => 1,
                WriteKind::SoftDelete => 2,
            });
            r.created.push(self.created);
            r.data.push(e.data.to_vec());
            r.metadata.push(e.metadata.to_vec());
        }
    }

    /// Inserts the pending rows (so queries in this transaction see them).
    async fn flush(&mut self, tx: &ClientWrapper) -> std::result::Result<(), Failure> {
        let r = std::mem::take(&mut self.rows);
        let (events, links) = tokio::try_join!(
            tx.prepare_cached(&self.sql.insert_events),
            tx.prepare_cached(&self.sql.insert_links)
        )
        .map_err(q)?;
        // Pipelined: both statements go out before either answer comes back.
        // All answers are awaited and the first error in statement order
        // is the cause (later ones only say the transaction is aborted).
        let (events, links) =
            tokio::join!(r.insert_events(tx, &events), r.insert_links(tx, &links));
        events.map_err(q)?;
        links.map_err(q)?;
        Ok(())
    }

    /// The touched streams' states, column by column (for `UNNEST`):
    /// those for which `existed` holds, and the others.
    fn stream_columns(&mut self, existed: impl Fn(&str) -> bool) -> (StreamCols, StreamCols) {
        let (mut old, mut new) = (StreamCols::default(), StreamCols::default());
        for name in self.touched.drain() {
            let cols = if existed(&name) { &mut old } else { &mut new };
            cols.push(&name, &self.states[&name]);
        }
        (old, new)
    }
}

/// Stream rows, column by column (for `UNNEST`).
#[derive(Default)]
struct StreamCols {
    names: Vec<String>,
    ids: Vec<i64>,
    revs: Vec<Option<i64>>,
    poss: Vec<i64>,
    evids: Vec<Uuid>,
    bases: Vec<i64>,
    dels: Vec<bool>,
    tombs: Vec<bool>,
    metas: Vec<Option<Vec<u8>>>,
}

impl StreamCols {
    fn push(&mut self, name: &str, e: &Entry) {
        let s = &e.state;
        self.names.push(name.to_string());
        self.ids.push(e.id);
        self.revs.push(s.last_revision.map(|r| r as i64));
        self.poss.push(s.last_position as i64);
        self.evids.push(s.last_event_id);
        self.bases.push(s.base as i64);
        self.dels.push(s.deleted);
        self.tombs.push(s.tombstoned);
        self.metas.push(s.metadata.clone());
    }

    /// Inserts new streams, or updates them (none: nothing is sent).
    async fn upsert(
        &self,
        tx: &ClientWrapper,
        stmt: &tokio_postgres::Statement,
    ) -> std::result::Result<u64, tokio_postgres::Error> {
        if self.names.is_empty() {
            return Ok(0);
        }
        let c = self;
        tx.execute(
            stmt,
            &[
                &c.names, &c.ids, &c.revs, &c.poss, &c.evids, &c.bases, &c.dels, &c.tombs, &c.metas,
            ],
        )
        .await
    }
}

/// Every stream a group may touch (sorted, no duplicates).
fn group_names(group: &[Request]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in group {
        let (owner, written) = rules::streams_of(&r.stream, &r.op);
        if let Operation::Append(events) = &r.op {
            for e in events {
                names.extend(rules::link_streams(&written, &e.event_type));
            }
        }
        // `$$<owner>` too: a write recreating a soft-deleted stream
        // writes there (known only once the owner is loaded).
        names.push(owner.metadata_stream().to_string());
        names.push(owner.to_string());
        names.push(written.to_string());
    }
    names.sort();
    names.dedup();
    names
}

/// A row of `load_streams`.
fn entry_of(row: &tokio_postgres::Row) -> (String, Entry) {
    let state = StreamState {
        last_revision: row.get::<_, Option<i64>>(2).map(|r| r as u64),
        last_position: row.get::<_, i64>(3) as u64,
        last_event_id: row.get(4),
        base: row.get::<_, i64>(5) as u64,
        deleted: row.get(6),
        tombstoned: row.get(7),
        metadata: row.get(8),
    };
    (
        row.get(0),
        Entry {
            id: row.get(1),
            state,
        },
    )
}

/// The `head` row as a commit left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    next_position: i64,
    next_stream_id: i64,
    last_created: i64,
}

/// What this writer knows of the database: `head` and stream states as its
/// own last commit left them. It is right exactly while no other instance
/// has committed since, which the fast path's guard checks in the
/// database, under the head lock, before anything it wrote can commit.
#[derive(Default)]
struct Cache {
    head: Option<Head>,
    /// Stream states as of `head`; `None`: no such stream.
    streams: HashMap<String, Option<Entry>>,
    /// This writer's previous group found no other instance's commit since
    /// its own: the fast path is likely to succeed. (After a miss, groups
    /// take the slow path until one finds the head where this writer left
    /// it, so contended instances do not pay for failed guards.)
    quiet: bool,
}

/// Most stream states cached; beyond that the cache starts over.
const CACHED_STREAMS: usize = 50_000;

impl Cache {
    fn clear(&mut self) {
        *self = Cache::default();
    }

    /// After a commit that left the database at `head`.
    fn committed(&mut self, head: Head, states: impl Iterator<Item = (String, Option<Entry>)>) {
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
    e.code() == Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
}

type Answers = Vec<Result<AppendResult>>;

/// The fast path: decides the group from the cache and commits it with one
/// statement, one round trip (one more when streams must be loaded first),
/// whose first part locks `head` and fails unless it is where this writer
/// left it ([`fast_commit_sql`]). `Ok(None)`: nothing was written, take the
/// slow path (no cache, a failed guard, or an append that needs an
/// idempotency check).
async fn fast_group(
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
        let (owner, written) = rules::streams_of(&r.stream, &r.op);
        let d = rules::decide(
            &r.stream,
            r.expected,
            r.op.clone(),
            g.state(&owner),
            g.state(&written),
            g.state(&owner.metadata_stream()),
            &config.limits,
        );
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
            tracing::debug!("another instance wrote since this writer's last commit: slow path");
            Ok(None)
        }
        // An error from the server: rolled back (or refused on the data);
        // the connection failed: the commit may have happened.
        Err(e) => Err(failure(e, true)),
    }
}

/// Runs one group in one transaction on the slow path; the outer error
/// means the whole transaction failed (nothing of it is known to be
/// committed). Statements are prepared once per connection and pipelined
/// where they do not depend on each other's answers: begin, lock + load,
/// (retry checks), writes, commit. Afterwards the cache holds what this
/// group committed (and what it found, if another instance had written).
async fn commit_group(
    client: &mut Object,
    sql: &Sql,
    t: &Tables,
    config: &PostgresConfig,
    group: &[Request],
    cache: &mut Cache,
) -> std::result::Result<Answers, Failure> {
    // Every stream the group may touch, loaded in one query.
    let names = group_names(group);
    // The transaction is managed by hand so BEGIN, the head lock and the
    // load go out in one round trip, and the writes and COMMIT in another.
    let tx: &ClientWrapper = client;
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
    // The first error in statement order is the cause (see `finish`).
    let begun = begin.and(head).and_then(|head| Ok((head, rows?)));
    let (head, rows) = match begun {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.batch_execute("ROLLBACK").await;
            return Err(q(e));
        }
    };
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
        let (owner, written) = rules::streams_of(&r.stream, &r.op);
        let mut d = rules::decide(
            &r.stream,
            r.expected,
            r.op.clone(),
            g.state(&owner),
            g.state(&written),
            g.state(&owner.metadata_stream()),
            &config.limits,
        );
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
async fn finish(
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
        for code in ["22P05", "22021", "23514", "23505", "54000"] {
            assert!(refuses_the_data(&SqlState::from_code(code)), "{code}");
        }
        for code in [
            "22012", "25P02", "40001", "55P03", "57014", "57P01", "08006",
        ] {
            assert!(!refuses_the_data(&SqlState::from_code(code)), "{code}");
        }
    }
}

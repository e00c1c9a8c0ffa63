//! A group's streams and rows as both paths build them: the stream states
//! the rules decide on, the rows a group writes (column by column, for
//! `UNNEST`), and every stream a group may touch.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::ClientWrapper;
use factum_core::rules::{
    self, Decision, Limits, Operation, StreamState, WriteKind, TOMBSTONE_REVISION,
};
use factum_core::{AppendResult, ContentType, StreamName, Uuid};

use super::{q, Failure, Request, Sql};

/// A stream's id and state within a group.
#[derive(Clone)]
pub(super) struct Entry {
    pub(super) id: i64,
    pub(super) state: StreamState,
}

/// Rows to insert, column by column (for `UNNEST`).
#[derive(Default)]
pub(super) struct Rows {
    pub(super) position: Vec<i64>,
    pub(super) stream_id: Vec<i64>,
    pub(super) stream_name: Vec<String>,
    pub(super) revision: Vec<i64>,
    pub(super) id: Vec<Uuid>,
    pub(super) event_type: Vec<String>,
    pub(super) content_type: Vec<i16>,
    pub(super) flags: Vec<i16>,
    pub(super) created: Vec<i64>,
    pub(super) data: Vec<Vec<u8>>,
    pub(super) metadata: Vec<Vec<u8>>,
    pub(super) link_stream: Vec<i64>,
    pub(super) link_revision: Vec<i64>,
    pub(super) link_position: Vec<i64>,
}

impl Rows {
    /// Inserts the event rows (none: nothing is sent).
    pub(super) async fn insert_events(
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
    pub(super) async fn insert_links(
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

pub(super) struct Group<'t> {
    pub(super) sql: &'t Sql,
    pub(super) states: HashMap<String, Entry>,
    pub(super) touched: HashSet<String>,
    pub(super) next_position: i64,
    pub(super) next_stream_id: i64,
    pub(super) created: i64,
    pub(super) rows: Rows,
}

impl Group<'_> {
    pub(super) fn entry(&mut self, name: &str) -> &mut Entry {
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

    pub(super) fn state(&self, name: &StreamName) -> Option<&StreamState> {
        self.states.get(name.as_str()).map(|e| &e.state)
    }

    /// What the rules decide for `r` on the states the group holds now
    /// (both paths ask the same question; they differ in where the states
    /// came from).
    pub(super) fn decide(&self, r: &Request, limits: &Limits) -> Decision {
        let (owner, written) = rules::streams_of(&r.stream, &r.op);
        rules::decide(
            &r.stream,
            r.expected,
            r.op.clone(),
            self.state(&owner),
            self.state(&written),
            self.state(&owner.metadata_stream()),
            limits,
        )
    }

    /// Adds the rows of a write: its events, then the `$metadata` event
    /// that recreates a soft-deleted stream (in the same transaction).
    pub(super) fn write(
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

    pub(super) fn write_events(
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
    pub(super) async fn flush(&mut self, tx: &ClientWrapper) -> std::result::Result<(), Failure> {
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
    pub(super) fn stream_columns(
        &mut self,
        existed: impl Fn(&str) -> bool,
    ) -> (StreamCols, StreamCols) {
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
pub(super) struct StreamCols {
    pub(super) names: Vec<String>,
    pub(super) ids: Vec<i64>,
    pub(super) revs: Vec<Option<i64>>,
    pub(super) poss: Vec<i64>,
    pub(super) evids: Vec<Uuid>,
    pub(super) bases: Vec<i64>,
    pub(super) dels: Vec<bool>,
    pub(super) tombs: Vec<bool>,
    pub(super) metas: Vec<Option<Vec<u8>>>,
}

impl StreamCols {
    pub(super) fn push(&mut self, name: &str, e: &Entry) {
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
    pub(super) async fn upsert(
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
pub(super) fn group_names(group: &[Request]) -> Vec<String> {
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
pub(super) fn entry_of(row: &tokio_postgres::Row) -> (String, Entry) {
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

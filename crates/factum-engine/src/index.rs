//! Derived indexes: stream records, (stream, revision) → (position, location),
//! and batch start position → location.
//!
//! Recent changes live in an in-memory memtable; a background flush writes
//! them to a redb file (`index.redb`) in one durable transaction together
//! with the checkpoint (the log location up to which the index is complete).
//! Opening a store replays only the log after that checkpoint. The index
//! never points past the durable end of the log: entries are added only
//! after the log write they describe was fsynced.
//!
//! Readers take a short shared lock to copy what they need from the
//! memtables and to open a redb read transaction; they never hold it across
//! log I/O and never wait for a flush.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use factum_core::rules::StreamState;
use factum_core::{Error, Result, Uuid};
use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::log::Loc;

const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
const ENTRIES: TableDefinition<(u64, u64), (u64, u64)> = TableDefinition::new("entries");
const BATCHES: TableDefinition<u64, u64> = TableDefinition::new("batches");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The file name of the index.
pub const INDEX_FILE: &str = "index.redb";
const INDEX_VERSION: u64 = 1;

/// What the index knows about one stream (user, `$$meta`, `$ce-`, `$et-`):
/// its dense id (used in index keys) and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRecord {
    /// Dense id used in index keys.
    pub id: u64,
    /// Revisions, deletion, metadata.
    pub state: StreamState,
}

impl std::ops::Deref for StreamRecord {
    type Target = StreamState;
    fn deref(&self) -> &StreamState {
        &self.state
    }
}

impl std::ops::DerefMut for StreamRecord {
    fn deref_mut(&mut self) -> &mut StreamState {
        &mut self.state
    }
}

impl StreamRecord {
    /// A record for a stream seen for the first time.
    pub fn new(id: u64) -> Self {
        StreamRecord {
            id,
            state: StreamState::default(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(48 + self.metadata.as_ref().map_or(0, Vec::len));
        b.extend_from_slice(&self.id.to_le_bytes());
        b.extend_from_slice(&self.last_revision.map_or(u64::MAX, |r| r).to_le_bytes());
        b.extend_from_slice(&self.last_position.to_le_bytes());
        b.extend_from_slice(self.last_event_id.as_bytes());
        b.extend_from_slice(&self.base.to_le_bytes());
        b.push(
            self.deleted as u8
                | (self.tombstoned as u8) << 1
                | (self.metadata.is_some() as u8) << 2,
        );
        if let Some(m) = &self.metadata {
            b.extend_from_slice(m);
        }
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 49 {
            return None;
        }
        let u = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let flags = b[48];
        Some(StreamRecord {
            id: u(0),
            state: StreamState {
                last_revision: Some(u(8)).filter(|&r| r != u64::MAX),
                last_position: u(16),
                last_event_id: Uuid::from_bytes(b[24..40].try_into().unwrap()),
                base: u(40),
                deleted: flags & 1 != 0,
                tombstoned: flags & 2 != 0,
                metadata: (flags & 4 != 0).then(|| b[49..].to_vec()),
            },
        })
    }
}

/// Where the index is complete up to: the next position and stream id to
/// assign, and the log location after the last indexed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// The next global position.
    pub next_position: u64,
    /// The next stream id.
    pub next_stream_id: u64,
    /// End of the last indexed frame.
    pub end: Loc,
}

/// Index changes not yet in redb (also used by the writer as a group's overlay).
#[derive(Clone, Debug, Default)]
pub struct Memtable {
    /// Changed stream records by name.
    pub streams: HashMap<Arc<str>, StreamRecord>,
    /// (stream id, revision) → (position, location).
    pub entries: BTreeMap<(u64, u64), (u64, u64)>,
    /// Batch first position → location of the frame.
    pub batches: BTreeMap<u64, u64>,
    /// Checkpoint after these changes.
    pub checkpoint: Checkpoint,
}

impl Memtable {
    /// True when it holds no change.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.entries.is_empty() && self.batches.is_empty()
    }

    /// Folds `newer` into `self`.
    pub fn merge(&mut self, newer: Memtable) {
        self.streams.extend(newer.streams);
        self.entries.extend(newer.entries);
        self.batches.extend(newer.batches);
        self.checkpoint = newer.checkpoint;
    }
}

struct State {
    active: Memtable,
    frozen: Option<Arc<Memtable>>,
}

/// The index: memtables over a redb file.
pub struct Index {
    db: Database,
    path: PathBuf,
    state: RwLock<State>,
    flush_lock: Mutex<()>,
}

fn redb_err(path: &Path, e: impl Into<redb::Error>) -> Error {
    match e.into() {
        redb::Error::Corrupted(detail) => Error::Corrupt {
            file: path.to_path_buf(),
            offset: 0,
            detail: format!(
                "{detail} (the index is derived data: `factum reindex` rebuilds it from the log)"
            ),
        },
        redb::Error::Io(source) => Error::io(format!("index {}", path.display()), source),
        other => Error::io(
            format!("index {}", path.display()),
            std::io::Error::other(other.to_string()),
        ),
    }
}

/// Runs a redb operation, turning a panic inside redb (which it documents
/// for files altered behind its back) into a `Corrupt` error.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::Corrupt {
            file: path.to_path_buf(),
            offset: 0,
            detail: "the index file is damaged (`factum reindex` rebuilds it from the log)".into(),
        })
    })
}

/// Which way to walk entries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Walk {
    /// Ascending revisions.
    Up,
    /// Descending revisions.
    Down,
}

impl Index {
    /// Opens (or creates) the index in `dir` and reads its checkpoint.
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<Index> {
        let path = dir.join(INDEX_FILE);
        let p = path.clone();
        let db = guarded(&path, || {
            redb::Builder::new()
                .set_cache_size(cache_bytes)
                .create(&p)
                .map_err(|e| redb_err(&p, e))
        })?;
        let index = Index {
            db,
            path,
            state: RwLock::new(State {
                active: Memtable::default(),
                frozen: None,
            }),
            flush_lock: Mutex::new(()),
        };
        let checkpoint = index.read_checkpoint()?;
        index.state.write().active.checkpoint = checkpoint;
        Ok(index)
    }

    /// Verifies the checksum of every page of the index file (reads it all).
    pub fn check_integrity(&mut self) -> Result<bool> {
        let p = self.path.clone();
        guarded(&p, || {
            self.db.check_integrity().map_err(|e| redb_err(&p, e))
        })
    }

    /// The index file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_checkpoint(&self) -> Result<Checkpoint> {
        let p = &self.path;
        guarded(p, || {
            let tx = self.db.begin_write().map_err(|e| redb_err(p, e))?;
            let cp = {
                let mut meta = tx.open_table(META).map_err(|e| redb_err(p, e))?;
                tx.open_table(STREAMS).map_err(|e| redb_err(p, e))?;
                tx.open_table(ENTRIES).map_err(|e| redb_err(p, e))?;
                tx.open_table(BATCHES).map_err(|e| redb_err(p, e))?;
                let get = |meta: &redb::Table<&str, u64>, k: &str| -> Result<Option<u64>> {
                    Ok(meta.get(k).map_err(|e| redb_err(p, e))?.map(|v| v.value()))
                };
                match get(&meta, "version")? {
                    None => {
                        meta.insert("version", INDEX_VERSION)
                            .map_err(|e| redb_err(p, e))?;
                    }
                    Some(INDEX_VERSION) => {}
                    Some(v) => {
                        return Err(Error::Corrupt {
                            file: p.clone(),
                            offset: 0,
                            detail: format!(
                                "index version {v} is not supported; run `factum reindex`"
                            ),
                        })
                    }
                }
                Checkpoint {
                    next_position: get(&meta, "next_position")?.unwrap_or(0),
                    next_stream_id: get(&meta, "next_stream_id")?.unwrap_or(0),
                    end: Loc(get(&meta, "end")?.unwrap_or(0)),
                }
            };
            tx.commit().map_err(|e| redb_err(p, e))?;
            Ok(cp)
        })
    }

    /// The checkpoint of everything applied (memtables included).
    pub fn checkpoint(&self) -> Checkpoint {
        self.state.read().active.checkpoint
    }

    /// Number of entries waiting in the active memtable.
    pub fn pending_entries(&self) -> usize {
        self.state.read().active.entries.len()
    }

    /// Applies a group of changes (after the log write they describe is durable).
    pub fn apply(&self, changes: crate::overlay::Changes) {
        let mut st = self.state.write();
        let m = &mut st.active;
        m.streams.extend(changes.streams);
        m.entries.extend(changes.entries);
        m.batches.extend(changes.batches);
        m.checkpoint = changes.checkpoint;
    }

    /// A stream's record.
    pub fn stream(&self, name: &str) -> Result<Option<StreamRecord>> {
        let tx = {
            let st = self.state.read();
            if let Some(r) = st.active.streams.get(name) {
                return Ok(Some(r.clone()));
            }
            if let Some(r) = st.frozen.as_ref().and_then(|f| f.streams.get(name)) {
                return Ok(Some(r.clone()));
            }
            self.begin_read()?
        };
        let p = &self.path;
        guarded(p, || {
            let t = tx.open_table(STREAMS).map_err(|e| redb_err(p, e))?;
            match t.get(name).map_err(|e| redb_err(p, e))? {
                None => Ok(None),
                Some(v) => {
                    StreamRecord::decode(v.value())
                        .map(Some)
                        .ok_or_else(|| Error::Corrupt {
                            file: p.clone(),
                            offset: 0,
                            detail: format!("stream record of {name:?} is malformed"),
                        })
                }
            }
        })
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction> {
        let p = &self.path;
        guarded(p, || self.db.begin_read().map_err(|e| redb_err(p, e)))
    }

    /// Up to `limit` entries of stream `id` from revision `from` (inclusive)
    /// walking `walk`, bounded below by `min_rev`: (revision, position, loc).
    pub fn entries(
        &self,
        id: u64,
        from: u64,
        min_rev: u64,
        walk: Walk,
        limit: usize,
    ) -> Result<Vec<(u64, u64, Loc)>> {
        if limit == 0 || from < min_rev {
            return Ok(Vec::new());
        }
        let range = match walk {
            Walk::Up => (Bound::Included((id, from)), Bound::Included((id, u64::MAX))),
            Walk::Down => (Bound::Included((id, min_rev)), Bound::Included((id, from))),
        };
        // Memtable entries are few; merge them (and drop duplicates with redb
        // during a flush) only when there are any.
        let mut merged: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let take = |m: &BTreeMap<(u64, u64), (u64, u64)>, out: &mut BTreeMap<u64, (u64, u64)>| {
            let it = m.range(range);
            let pick: Box<dyn Iterator<Item = _>> = match walk {
                Walk::Up => Box::new(it.take(limit)),
                Walk::Down => Box::new(it.rev().take(limit)),
            };
            for (k, v) in pick {
                out.insert(k.1, *v);
            }
        };
        let tx = {
            let st = self.state.read();
            take(&st.active.entries, &mut merged);
            if let Some(f) = &st.frozen {
                take(&f.entries, &mut merged);
            }
            self.begin_read()?
        };
        let p = &self.path;
        let mut from_db: Vec<(u64, u64, Loc)> = Vec::with_capacity(limit.min(1024));
        guarded(p, || {
            let t = tx.open_table(ENTRIES).map_err(|e| redb_err(p, e))?;
            let it = t.range::<(u64, u64)>(range).map_err(|e| redb_err(p, e))?;
            let it: Box<dyn Iterator<Item = _>> = match walk {
                Walk::Up => Box::new(it.take(limit)),
                Walk::Down => Box::new(it.rev().take(limit)),
            };
            for r in it {
                let (k, v) = r.map_err(|e| redb_err(p, e))?;
                let (pos, loc) = v.value();
                from_db.push((k.value().1, pos, Loc(loc)));
            }
            Ok(())
        })?;
        if merged.is_empty() {
            return Ok(from_db);
        }
        merged.extend(
            from_db
                .into_iter()
                .map(|(rev, pos, loc)| (rev, (pos, loc.0))),
        );
        let out = merged
            .into_iter()
            .map(|(rev, (pos, loc))| (rev, pos, Loc(loc)));
        Ok(match walk {
            Walk::Up => out.take(limit).collect(),
            Walk::Down => out.rev().take(limit).collect(),
        })
    }

    /// The frame holding `position`: the last batch starting at or before it
    /// (`Walk::Down`), or the first batch starting at or after it (`Walk::Up`).
    pub fn batch(&self, position: u64, walk: Walk) -> Result<Option<(u64, Loc)>> {
        let pick = |m: &BTreeMap<u64, u64>| match walk {
            Walk::Down => m.range(..=position).next_back().map(|(k, v)| (*k, *v)),
            Walk::Up => m.range(position..).next().map(|(k, v)| (*k, *v)),
        };
        let mut best: Option<(u64, u64)> = None;
        let mut consider = |c: Option<(u64, u64)>| {
            if let Some(c) = c {
                best = Some(match (best, walk) {
                    (Some(b), Walk::Down) if b.0 >= c.0 => b,
                    (Some(b), Walk::Up) if b.0 <= c.0 => b,
                    _ => c,
                });
            }
        };
        let tx = {
            let st = self.state.read();
            consider(pick(&st.active.batches));
            if let Some(f) = &st.frozen {
                consider(pick(&f.batches));
            }
            self.begin_read()?
        };
        let p = &self.path;
        let from_db = guarded(p, || {
            let t = tx.open_table(BATCHES).map_err(|e| redb_err(p, e))?;
            let mut r = match walk {
                Walk::Down => t.range(..=position),
                Walk::Up => t.range(position..),
            }
            .map_err(|e| redb_err(p, e))?;
            let x = match walk {
                Walk::Down => r.next_back(),
                Walk::Up => r.next(),
            };
            Ok(match x {
                None => None,
                Some(x) => {
                    let (k, v) = x.map_err(|e| redb_err(p, e))?;
                    Some((k.value(), v.value()))
                }
            })
        })?;
        consider(from_db);
        Ok(best.map(|(k, v)| (k, Loc(v))))
    }

    /// Writes the memtable to redb with its checkpoint, durably.
    pub fn flush(&self) -> Result<()> {
        let _one_flush = self.flush_lock.lock();
        let frozen = {
            let mut st = self.state.write();
            if st.active.is_empty() {
                return Ok(());
            }
            let checkpoint = st.active.checkpoint;
            let frozen = Arc::new(std::mem::replace(
                &mut st.active,
                Memtable {
                    checkpoint,
                    ..Memtable::default()
                },
            ));
            st.frozen = Some(frozen.clone());
            frozen
        };
        let p = &self.path;
        let result = guarded(p, || {
            let tx = self.db.begin_write().map_err(|e| redb_err(p, e))?;
            {
                let mut streams = tx.open_table(STREAMS).map_err(|e| redb_err(p, e))?;
                for (name, rec) in &frozen.streams {
                    streams
                        .insert(&**name, rec.encode().as_slice())
                        .map_err(|e| redb_err(p, e))?;
                }
                let mut entries = tx.open_table(ENTRIES).map_err(|e| redb_err(p, e))?;
                for (k, v) in &frozen.entries {
                    entries.insert(k, v).map_err(|e| redb_err(p, e))?;
                }
                let mut batches = tx.open_table(BATCHES).map_err(|e| redb_err(p, e))?;
                for (k, v) in &frozen.batches {
                    batches.insert(k, v).map_err(|e| redb_err(p, e))?;
                }
                let mut meta = tx.open_table(META).map_err(|e| redb_err(p, e))?;
                let cp = frozen.checkpoint;
                meta.insert("next_position", cp.next_position)
                    .map_err(|e| redb_err(p, e))?;
                meta.insert("next_stream_id", cp.next_stream_id)
                    .map_err(|e| redb_err(p, e))?;
                meta.insert("end", cp.end.0).map_err(|e| redb_err(p, e))?;
            }
            tx.commit().map_err(|e| redb_err(p, e))
        });
        let mut st = self.state.write();
        match result {
            Ok(()) => st.frozen = None,
            Err(_) => {
                // Keep the changes in memory: put them back under the newer ones.
                let newer = std::mem::take(&mut st.active);
                let mut back = (*frozen).clone();
                back.merge(newer);
                st.active = back;
                st.frozen = None;
            }
        }
        result
    }

    /// Every entry in redb and the memtables, for verification: calls `f`
    /// with (stream id, revision, position, loc).
    pub fn for_each_entry(
        &self,
        mut f: impl FnMut(u64, u64, u64, Loc) -> Result<()>,
    ) -> Result<()> {
        self.flush()?;
        let tx = self.begin_read()?;
        let p = &self.path;
        guarded(p, || {
            let t = tx.open_table(ENTRIES).map_err(|e| redb_err(p, e))?;
            for r in t.iter().map_err(|e| redb_err(p, e))? {
                let (k, v) = r.map_err(|e| redb_err(p, e))?;
                let ((id, rev), (pos, loc)) = (k.value(), v.value());
                f(id, rev, pos, Loc(loc))?;
            }
            Ok(())
        })
    }

    /// Every stream record: (name, record).
    pub fn for_each_stream(
        &self,
        mut f: impl FnMut(&str, StreamRecord) -> Result<()>,
    ) -> Result<()> {
        self.flush()?;
        let tx = self.begin_read()?;
        let p = &self.path;
        guarded(p, || {
            let t = tx.open_table(STREAMS).map_err(|e| redb_err(p, e))?;
            for r in t.iter().map_err(|e| redb_err(p, e))? {
                let (k, v) = r.map_err(|e| redb_err(p, e))?;
                let rec = StreamRecord::decode(v.value()).ok_or_else(|| Error::Corrupt {
                    file: p.clone(),
                    offset: 0,
                    detail: format!("stream record of {:?} is malformed", k.value()),
                })?;
                f(k.value(), rec)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let mut r = StreamRecord::new(5);
        assert_eq!(StreamRecord::decode(&r.encode()).unwrap(), r);
        r.last_revision = Some(9);
        r.tombstoned = true;
        r.base = 3;
        r.metadata = Some(b"{\"$maxCount\":2}".to_vec());
        r.last_event_id = Uuid::new_v4();
        assert_eq!(StreamRecord::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn entries_merge_memtable_and_flushed_data() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        let mut m = crate::overlay::Changes::default();
        for rev in 0..10 {
            m.entries.push(((1, rev), (rev * 2, rev * 100)));
        }
        index.apply(m);
        index.flush().unwrap();
        let mut m = crate::overlay::Changes::default();
        for rev in 10..15 {
            m.entries.push(((1, rev), (rev * 2, rev * 100)));
        }
        index.apply(m);
        let up = index.entries(1, 8, 0, Walk::Up, 4).unwrap();
        assert_eq!(
            up.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![8, 9, 10, 11]
        );
        let down = index.entries(1, 11, 3, Walk::Down, 100).unwrap();
        assert_eq!(
            down.iter().map(|e| e.0).collect::<Vec<_>>(),
            (3..=11).rev().collect::<Vec<_>>()
        );
        assert!(index.entries(2, 0, 0, Walk::Up, 10).unwrap().is_empty());
    }
}

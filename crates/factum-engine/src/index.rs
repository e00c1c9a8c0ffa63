//! Derived indexes: stream records, runs ((stream, first revision) →
//! (position, location, count, bytes)), and batch start position → location.
//!
//! A *run* is one index entry for consecutive revisions of one stream whose
//! events are consecutive records of one frame: an append of N events to a
//! stream is one run of that stream, one of its category (`$ce-`), and one
//! per stretch of equal event types (`$et-`). Within a run, revision
//! `first + i` is the run's `i`-th record, at position `position + i`; the
//! records lie back to back in `bytes` bytes from `loc` (see ADR 8).
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

use crate::encrypt::MasterKey;

use crate::log::Loc;

const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
/// (stream id, first revision) → (first position, location of the first
/// record, count, bytes): see [`Run`].
const RUNS: TableDefinition<(u64, u64), (u64, u64, u32, u32)> = TableDefinition::new("runs");
const BATCHES: TableDefinition<u64, u64> = TableDefinition::new("batches");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The file name of the index.
pub const INDEX_FILE: &str = "index.redb";
/// Version of the index's tables (1: one entry per event; 2: runs).
pub const INDEX_VERSION: u64 = 2;

/// One index entry: `count` consecutive revisions of a stream, starting at
/// the entry's key revision, whose events are `count` consecutive records
/// of one frame. Revision `first + i` is at position `position + i`; the
/// records lie back to back in the `bytes` bytes starting at `loc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Global position of the first event.
    pub position: u64,
    /// Location of the first event's record.
    pub loc: Loc,
    /// Number of events (≥ 1).
    pub count: u32,
    /// Total length of the records.
    pub bytes: u32,
}

impl Run {
    fn value(self) -> (u64, u64, u32, u32) {
        (self.position, self.loc.0, self.count, self.bytes)
    }

    fn from_value((position, loc, count, bytes): (u64, u64, u32, u32)) -> Run {
        Run {
            position,
            loc: Loc(loc),
            count,
            bytes,
        }
    }

    /// The revision after the run's last one, for a run starting at `first`.
    pub fn end(self, first: u64) -> u64 {
        first.saturating_add(self.count as u64)
    }

    /// How many of the run's revisions a walk from `from` bounded below by
    /// `min_rev` visits.
    fn covers(self, first: u64, walk: Walk, from: u64, min_rev: u64) -> u64 {
        let end = self.end(first);
        match walk {
            Walk::Up => end.saturating_sub(first.max(from)),
            Walk::Down => end
                .min(from.saturating_add(1))
                .saturating_sub(first.max(min_rev)),
        }
    }
}

/// Runs of one stream keyed by first revision: the runs one source (a
/// memtable or redb) holds that a walk visits first, covering at least
/// `limit` revisions when the source has them. `before` yields the runs
/// starting at or before `from`, newest first; `after` those starting after
/// it, oldest first.
#[allow(clippy::too_many_arguments)]
fn pick_runs<B, A>(
    walk: Walk,
    from: u64,
    min_rev: u64,
    limit: u64,
    mut before: B,
    after: impl FnOnce() -> Result<A>,
    out: &mut Vec<(u64, Run)>,
) -> Result<()>
where
    B: Iterator<Item = Result<(u64, Run)>>,
    A: Iterator<Item = Result<(u64, Run)>>,
{
    let mut covered = 0u64;
    match walk {
        Walk::Up => {
            if let Some(r) = before.next() {
                let (first, run) = r?;
                let n = run.covers(first, walk, from, min_rev);
                if n > 0 {
                    covered += n;
                    out.push((first, run));
                }
            }
            if covered < limit {
                for r in after()? {
                    let (first, run) = r?;
                    covered += run.covers(first, walk, from, min_rev);
                    out.push((first, run));
                    if covered >= limit {
                        break;
                    }
                }
            }
        }
        Walk::Down => {
            for r in before {
                let (first, run) = r?;
                if run.end(first) <= min_rev {
                    break;
                }
                covered += run.covers(first, walk, from, min_rev);
                out.push((first, run));
                if covered >= limit {
                    break;
                }
            }
        }
    }
    Ok(())
}

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

/// Index changes of one group commit (or one stretch of recovery), in the
/// order they were made.
#[derive(Debug, Default)]
pub struct Changes {
    /// Changed stream records by name (newest state).
    pub streams: HashMap<Arc<str>, StreamRecord>,
    /// New runs: ((stream id, first revision), run).
    pub runs: Vec<((u64, u64), Run)>,
    /// Revisions the new runs cover.
    pub covered: usize,
    /// New frames: (first position, location).
    pub batches: Vec<(u64, u64)>,
    /// Checkpoint after these changes.
    pub checkpoint: Checkpoint,
}

/// The index change of one segment rewrite (ADR 33): the runs and frames
/// of the old file go, those of the new one come.
#[derive(Debug, Default)]
pub struct SegmentRewrite {
    /// The segment's number.
    pub segment: u32,
    /// Its first position (its name).
    pub first_position: u64,
    /// The rewrite's generation (names the new file until it is swapped in).
    pub generation: u64,
    /// Keys of the runs that pointed into the old file.
    pub old_runs: Vec<(u64, u64)>,
    /// Runs of the new file.
    pub new_runs: Vec<((u64, u64), Run)>,
    /// First positions of the old file's frames.
    pub old_batches: Vec<u64>,
    /// (first position, location) of the new file's frames.
    pub new_batches: Vec<(u64, u64)>,
}

/// Index changes not yet in redb (also used by the writer as a group's overlay).
#[derive(Clone, Debug, Default)]
pub struct Memtable {
    /// Changed stream records by name.
    pub streams: HashMap<Arc<str>, StreamRecord>,
    /// (stream id, first revision) → run.
    pub runs: BTreeMap<(u64, u64), Run>,
    /// Batch first position → location of the frame.
    pub batches: BTreeMap<u64, u64>,
    /// Revisions the runs cover (what one entry per event would have been).
    pub covered: usize,
    /// Checkpoint after these changes.
    pub checkpoint: Checkpoint,
}

impl Memtable {
    /// True when it holds no change.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.runs.is_empty() && self.batches.is_empty()
    }

    /// Folds `newer` into `self`.
    pub fn merge(&mut self, newer: Memtable) {
        self.streams.extend(newer.streams);
        self.runs.extend(newer.runs);
        self.batches.extend(newer.batches);
        self.covered += newer.covered;
        self.checkpoint = newer.checkpoint;
    }

    fn pick(
        &self,
        id: u64,
        walk: Walk,
        from: u64,
        min_rev: u64,
        limit: u64,
        out: &mut Vec<(u64, Run)>,
    ) {
        let before = self
            .runs
            .range((id, 0)..=(id, from))
            .rev()
            .map(|(k, r)| Ok((k.1, *r)));
        let after = || {
            Ok(self
                .runs
                .range((Bound::Excluded((id, from)), Bound::Included((id, u64::MAX))))
                .map(|(k, r)| Ok((k.1, *r))))
        };
        pick_runs(walk, from, min_rev, limit, before, after, out).expect("memtables do not fail");
    }
}

struct State {
    active: Memtable,
    frozen: Option<Arc<Memtable>>,
}

/// The index: memtables over a redb file.
pub struct Index {
    db: Database,
    /// The master key the file is encrypted under (ADR 45): a snapshot
    /// written for a backup is encrypted under it too.
    key: Option<MasterKey>,
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

fn open_db(path: &Path, cache_bytes: usize, key: Option<&MasterKey>) -> Result<Database> {
    let encrypted = crate::encrypt::is_encrypted_index(path);
    match key {
        None if encrypted => Err(Error::InvalidInput(format!(
            "{} is encrypted at rest; give its master key (--encryption-key-file FILE, FACTUM_ENCRYPTION_KEY_FILE or FACTUM_ENCRYPTION_KEY)",
            path.display()
        ))),
        None => guarded(path, || {
            redb::Builder::new()
                .set_cache_size(cache_bytes)
                .create(path)
                .map_err(|e| redb_err(path, e))
        }),
        Some(key) => {
            // Encrypted at rest (ADR 45): redb over the encrypted pages.
            let backend = crate::encrypt::EncryptedIndexFile::open_or_create(path, key)?;
            guarded(path, || {
                redb::Builder::new()
                    .set_cache_size(cache_bytes)
                    .create_with_backend(backend)
                    .map_err(|e| redb_err(path, e))
            })
        }
    }
}

/// Is there an index file at `path` written in the clear, where `key`
/// asks for an encrypted one?
fn clear_index_under_key(path: &Path, key: Option<&MasterKey>) -> bool {
    key.is_some()
        && std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
        && !crate::encrypt::is_encrypted_index(path)
}

/// The index version the index file in `dir` holds (`None`: no file, or
/// a new one).
pub fn stored_version_in(dir: &Path, key: Option<&MasterKey>) -> Result<Option<u64>> {
    let path = dir.join(INDEX_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let db = open_db(&path, 1 << 20, key)?;
    stored_version(&db, &path)
}

/// The `version` the index file holds (`None` for a new file).
fn stored_version(db: &Database, p: &Path) -> Result<Option<u64>> {
    guarded(p, || {
        let tx = db.begin_read().map_err(|e| redb_err(p, e))?;
        let meta = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(redb_err(p, e)),
        };
        let v = meta.get("version").map_err(|e| redb_err(p, e))?;
        Ok(v.map(|v| v.value()))
    })
}

/// A row of the `runs` table as redb's iterators yield it.
type RunRow<'a> = std::result::Result<
    (
        redb::AccessGuard<'a, (u64, u64)>,
        redb::AccessGuard<'a, (u64, u64, u32, u32)>,
    ),
    redb::StorageError,
>;

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
    /// Changes nothing in an existing index of another version: one of an
    /// older format is refused with an error saying how it gets rebuilt.
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<Index> {
        Self::open_with(dir, cache_bytes, false, None)
    }

    /// [`Index::open`] of a store encrypted at rest (ADR 45).
    pub fn open_encrypted(
        dir: &Path,
        cache_bytes: usize,
        key: Option<&MasterKey>,
    ) -> Result<Index> {
        Self::open_with(dir, cache_bytes, false, key)
    }

    /// As [`Index::open`], but an index written in an older format
    /// (version 1: one entry per event) is deleted, so that recovery
    /// rebuilds it from the log. Used by the engine's open.
    /// With a master key (ADR 45) the index is encrypted at rest, and one
    /// written in the clear is rebuilt encrypted the same way.
    pub fn open_or_rebuild(
        dir: &Path,
        cache_bytes: usize,
        key: Option<&MasterKey>,
    ) -> Result<Index> {
        Self::open_with(dir, cache_bytes, true, key)
    }

    fn open_with(
        dir: &Path,
        cache_bytes: usize,
        rebuild_old: bool,
        key: Option<&MasterKey>,
    ) -> Result<Index> {
        let path = dir.join(INDEX_FILE);
        let mut key = key;
        if clear_index_under_key(&path, key) {
            if !rebuild_old {
                // A reader (verify, stats) reads a clear index as it is.
                key = None;
            } else {
                tracing::warn!(file = %path.display(), "the index was written in the clear; rebuilding it encrypted from the log");
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
            }
        }
        let mut db = open_db(&path, cache_bytes, key)?;
        if let Some(v) = stored_version(&db, &path)? {
            if v < INDEX_VERSION && !rebuild_old {
                return Err(Error::Corrupt {
                    file: path,
                    offset: 0,
                    detail: format!(
                        "index version {v} is older than this build's ({INDEX_VERSION}); opening the store rebuilds it from the log (or run `factum reindex`)"
                    ),
                });
            }
            if v < INDEX_VERSION {
                tracing::warn!(
                    file = %path.display(),
                    version = v,
                    "the index has an older format; rebuilding it from the log"
                );
                drop(db);
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
                db = open_db(&path, cache_bytes, key)?;
            }
        }
        let index = Index {
            db,
            key: key.cloned(),
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
                                "index version {v} is newer than this build's ({INDEX_VERSION}); run `factum reindex` to rebuild it from the log"
                            ),
                        })
                    }
                }
                // After the version check: tables of another version may
                // have other types.
                tx.open_table(STREAMS).map_err(|e| redb_err(p, e))?;
                tx.open_table(RUNS).map_err(|e| redb_err(p, e))?;
                tx.open_table(BATCHES).map_err(|e| redb_err(p, e))?;
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

    /// Revisions covered by the runs waiting in the active memtable (one per
    /// event and per link of it: what bounds the log tail recovery replays).
    pub fn pending_entries(&self) -> usize {
        self.state.read().active.covered
    }

    /// Applies a group of changes (after the log write they describe is durable).
    pub fn apply(&self, changes: Changes) {
        let mut st = self.state.write();
        let m = &mut st.active;
        m.streams.extend(changes.streams);
        m.runs.extend(changes.runs);
        m.batches.extend(changes.batches);
        m.covered += changes.covered;
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

    /// The runs of stream `id` a walk from revision `from` (inclusive)
    /// bounded below by `min_rev` visits first, in walk order, covering at
    /// least `limit` revisions when the stream has them: (first revision,
    /// run). The first run may start before `from` (a walk `Up` from the
    /// middle of a run) or end after it (a walk `Down`); the last may reach
    /// past `limit`.
    pub fn runs(
        &self,
        id: u64,
        from: u64,
        min_rev: u64,
        walk: Walk,
        limit: usize,
    ) -> Result<Vec<(u64, Run)>> {
        if limit == 0 || from < min_rev {
            return Ok(Vec::new());
        }
        let limit = limit as u64;
        // Memtable runs are few; merge them (and drop duplicates with redb
        // during a flush) only when there are any.
        let mut mem = Vec::new();
        let tx = {
            let st = self.state.read();
            st.active.pick(id, walk, from, min_rev, limit, &mut mem);
            if let Some(f) = &st.frozen {
                f.pick(id, walk, from, min_rev, limit, &mut mem);
            }
            self.begin_read()?
        };
        let p = &self.path;
        let mut from_db = Vec::new();
        guarded(p, || {
            let t = tx.open_table(RUNS).map_err(|e| redb_err(p, e))?;
            let decode = |r: RunRow<'_>| {
                let (k, v) = r.map_err(|e| redb_err(p, e))?;
                Ok((k.value().1, Run::from_value(v.value())))
            };
            let before = t
                .range((id, 0)..=(id, from))
                .map_err(|e| redb_err(p, e))?
                .rev()
                .map(decode);
            let after = || {
                Ok(t.range::<(u64, u64)>((
                    Bound::Excluded((id, from)),
                    Bound::Included((id, u64::MAX)),
                ))
                .map_err(|e| redb_err(p, e))?
                .map(decode))
            };
            pick_runs(walk, from, min_rev, limit, before, after, &mut from_db)
        })?;
        if mem.is_empty() {
            return Ok(from_db);
        }
        let merged: BTreeMap<u64, Run> = from_db.into_iter().chain(mem).collect();
        let mut out = Vec::new();
        let mut covered = 0u64;
        let mut take = |(first, run): (u64, Run)| {
            let n = run.covers(first, walk, from, min_rev);
            if n > 0 && covered < limit {
                covered += n;
                out.push((first, run));
            }
        };
        match walk {
            Walk::Up => merged.into_iter().for_each(&mut take),
            Walk::Down => merged.into_iter().rev().for_each(&mut take),
        }
        Ok(out)
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
        self.flush_locked()
    }

    /// [`Index::flush`] with the flush lock held by the caller.
    fn flush_locked(&self) -> Result<()> {
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
                let mut runs = tx.open_table(RUNS).map_err(|e| redb_err(p, e))?;
                for (k, r) in &frozen.runs {
                    runs.insert(k, r.value()).map_err(|e| redb_err(p, e))?;
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

    /// The runs of stream `id` whose first position lies in `lo..hi` (the
    /// positions of one segment), oldest first. A stream's positions grow
    /// with its revisions, so the first such run is found by a binary
    /// search over revisions `0..=last_revision` (a few lookups, whatever
    /// the stream's length), the rest by walking on.
    pub fn runs_in_positions(
        &self,
        id: u64,
        last_revision: u64,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<(u64, Run)>> {
        // The position of revision `r`, or of the first revision indexed
        // after it (gaps, ADR 33), grows with `r`: find the first `r` at
        // which it reaches `lo`.
        let (mut a, mut b) = (0u64, last_revision.saturating_add(1));
        while a < b {
            let mid = a + (b - a) / 2;
            match self.runs(id, mid, 0, Walk::Up, 1)?.first() {
                Some(&(first, run)) if run.position + mid.saturating_sub(first) < lo => a = mid + 1,
                _ => b = mid,
            }
        }
        let mut out = Vec::new();
        let mut cursor = a;
        loop {
            let page = self.runs(id, cursor, 0, Walk::Up, 512)?;
            let Some(&(last_first, last_run)) = page.last() else {
                return Ok(out);
            };
            for (first, run) in page {
                if run.position >= hi {
                    return Ok(out);
                }
                if run.position >= lo && out.last().is_none_or(|&(f, _)| f < first) {
                    out.push((first, run));
                }
            }
            cursor = last_run.end(last_first);
        }
    }

    /// The segment rewrite the index last committed (ADR 33): (first
    /// position of the segment, generation). Its new file is swapped in by
    /// the open that finds it still beside the old one.
    pub fn rewrite_marker(&self) -> Result<Option<(u64, u64)>> {
        let tx = self.begin_read()?;
        let p = &self.path;
        guarded(p, || {
            let meta = tx.open_table(META).map_err(|e| redb_err(p, e))?;
            let get = |k: &str| -> Result<Option<u64>> {
                Ok(meta.get(k).map_err(|e| redb_err(p, e))?.map(|v| v.value()))
            };
            Ok(
                match (get("rewrite_segment")?, get("rewrite_generation")?) {
                    (Some(first), Some(generation)) => Some((first, generation)),
                    _ => None,
                },
            )
        })
    }

    /// Commits the index change of a segment rewrite (ADR 33) in one durable
    /// redb transaction together with the marker naming the rewrite, then
    /// calls `swap` (which puts the segment's new file in place) before
    /// anyone can read the new entries: `segments` is held exclusively
    /// ([`crate::log::Segments::exclusive`]) around the commit and `swap`. The memtable is flushed first, under
    /// the flush lock held throughout, so it holds none of the segment's
    /// entries (they come from before its seal) and no flush interleaves.
    /// Refused when the index checkpoint has not yet passed the segment
    /// (recovery would replay from offsets that change).
    pub(crate) fn commit_rewrite(
        &self,
        change: &SegmentRewrite,
        segments: &crate::log::Segments,
        swap: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let _one_flush = self.flush_lock.lock();
        self.flush_locked()?;
        let cp = self.checkpoint();
        if cp.end.segment() <= change.segment {
            return Err(Error::InvalidInput(format!(
                "segment {} is not yet behind the index checkpoint (segment {}); it can be rewritten after the next segment holds indexed events",
                change.segment,
                cp.end.segment()
            )));
        }
        let p = &self.path;
        let tx = guarded(p, || {
            let tx = self.db.begin_write().map_err(|e| redb_err(p, e))?;
            {
                let mut runs = tx.open_table(RUNS).map_err(|e| redb_err(p, e))?;
                for k in &change.old_runs {
                    runs.remove(k).map_err(|e| redb_err(p, e))?;
                }
                for (k, r) in &change.new_runs {
                    runs.insert(k, r.value()).map_err(|e| redb_err(p, e))?;
                }
                let mut batches = tx.open_table(BATCHES).map_err(|e| redb_err(p, e))?;
                for k in &change.old_batches {
                    batches.remove(k).map_err(|e| redb_err(p, e))?;
                }
                for (k, v) in &change.new_batches {
                    batches.insert(k, v).map_err(|e| redb_err(p, e))?;
                }
                let mut meta = tx.open_table(META).map_err(|e| redb_err(p, e))?;
                meta.insert("rewrite_segment", change.first_position)
                    .map_err(|e| redb_err(p, e))?;
                meta.insert("rewrite_generation", change.generation)
                    .map_err(|e| redb_err(p, e))?;
            }
            Ok(tx)
        })?;
        let _no_reads = segments.exclusive();
        guarded(p, || tx.commit().map_err(|e| redb_err(p, e)))?;
        swap()
    }

    /// The generation the next segment rewrite takes (one more than the
    /// last committed one).
    pub fn next_rewrite_generation(&self) -> Result<u64> {
        Ok(self.rewrite_marker()?.map_or(1, |(_, g)| g + 1))
    }

    /// Every run in redb and the memtables, for verification: calls `f`
    /// with (stream id, first revision, run), in key order.
    pub fn for_each_run(&self, mut f: impl FnMut(u64, u64, Run) -> Result<()>) -> Result<()> {
        self.flush()?;
        let tx = self.begin_read()?;
        let p = &self.path;
        guarded(p, || {
            let t = tx.open_table(RUNS).map_err(|e| redb_err(p, e))?;
            for r in t.iter().map_err(|e| redb_err(p, e))? {
                let (k, v) = r.map_err(|e| redb_err(p, e))?;
                let (id, first) = k.value();
                f(id, first, Run::from_value(v.value()))?;
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

/// A consistent read of the index's durable part (redb, up to its
/// checkpoint) for an online backup (ADR 40): what [`Index::snapshot`]
/// began, written out as a redb file of its own by [`write_to`](Self::write_to).
pub struct IndexSnapshot {
    tx: redb::ReadTransaction,
    path: PathBuf,
    key: Option<MasterKey>,
}

/// Rows copied per (non-durable) transaction when a snapshot is written:
/// bounds the memory of one transaction, whatever the index's size.
const SNAPSHOT_ROWS_PER_TX: usize = 50_000;

impl Index {
    /// Begins a snapshot of the index as redb holds it now. A backup takes
    /// it while holding the segments ([`crate::log::Segments::hold`]), so no
    /// segment rewrite commits between it and the segment versions copied;
    /// its checkpoint is never past the durable end of the log.
    pub fn snapshot(&self) -> Result<IndexSnapshot> {
        Ok(IndexSnapshot {
            tx: self.begin_read()?,
            path: self.path.clone(),
            key: self.key.clone(),
        })
    }
}

impl IndexSnapshot {
    /// The end of the log the snapshot indexes (its checkpoint).
    pub fn end(&self) -> Result<Loc> {
        let p = &self.path;
        guarded(p, || {
            let meta = match self.tx.open_table(META) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Loc(0)),
                Err(e) => return Err(redb_err(p, e)),
            };
            let end = meta.get("end").map_err(|e| redb_err(p, e))?;
            Ok(Loc(end.map_or(0, |v| v.value())))
        })
    }

    /// Writes the snapshot as a new index file at `to` (which must not
    /// exist): every table copied in transactions of bounded size, the last
    /// one durable. Returns the file's length.
    pub fn write_to(&self, to: &Path) -> Result<u64> {
        let src = &self.path;
        let db = open_db(to, 1 << 20, self.key.as_ref())?;
        macro_rules! copy_table {
            ($def:expr) => {{
                let table = match self.tx.open_table($def) {
                    Ok(t) => Some(t),
                    Err(redb::TableError::TableDoesNotExist(_)) => None,
                    Err(e) => return Err(redb_err(src, e)),
                };
                if let Some(table) = table {
                    let mut rows = table.iter().map_err(|e| redb_err(src, e))?;
                    loop {
                        let mut tx = db.begin_write().map_err(|e| redb_err(to, e))?;
                        tx.set_durability(redb::Durability::None).map_err(|e| {
                            Error::io(
                                format!("index snapshot {}", to.display()),
                                std::io::Error::other(e.to_string()),
                            )
                        })?;
                        let mut more = false;
                        {
                            let mut out = tx.open_table($def).map_err(|e| redb_err(to, e))?;
                            for (n, row) in rows.by_ref().enumerate() {
                                let (k, v) = row.map_err(|e| redb_err(src, e))?;
                                out.insert(k.value(), v.value())
                                    .map_err(|e| redb_err(to, e))?;
                                if n + 1 == SNAPSHOT_ROWS_PER_TX {
                                    more = true;
                                    break;
                                }
                            }
                        }
                        tx.commit().map_err(|e| redb_err(to, e))?;
                        if !more {
                            break;
                        }
                    }
                }
            }};
        }
        guarded(to, || {
            copy_table!(META);
            copy_table!(STREAMS);
            copy_table!(RUNS);
            copy_table!(BATCHES);
            // Durable: makes the non-durable commits before it durable too.
            let tx = db.begin_write().map_err(|e| redb_err(to, e))?;
            tx.commit().map_err(|e| redb_err(to, e))?;
            Ok(())
        })?;
        drop(db);
        std::fs::metadata(to)
            .map(|m| m.len())
            .map_err(|e| Error::io(format!("index snapshot {}", to.display()), e))
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

    fn run(position: u64, count: u32) -> Run {
        Run {
            position,
            loc: Loc(position * 100),
            count,
            bytes: count * 100,
        }
    }

    /// Runs of stream 1: revisions 0..10 in runs of 3, 3, 4 (flushed), then
    /// 10..15 as 1 + 4 (in the memtable).
    fn two_tier_index(dir: &Path) -> Index {
        let index = Index::open(dir, 1 << 20).unwrap();
        let mut m = Changes::default();
        for (first, count) in [(0, 3), (3, 3), (6, 4)] {
            m.runs.push(((1, first), run(first * 2, count)));
        }
        m.runs.push(((2, 0), run(500, 7)));
        index.apply(m);
        index.flush().unwrap();
        let mut m = Changes::default();
        for (first, count) in [(10, 1), (11, 4)] {
            m.runs.push(((1, first), run(first * 2, count)));
        }
        index.apply(m);
        index
    }

    fn firsts(v: &[(u64, Run)]) -> Vec<u64> {
        v.iter().map(|r| r.0).collect()
    }

    #[test]
    fn runs_merge_memtable_and_flushed_data() {
        let dir = tempfile::tempdir().unwrap();
        let index = two_tier_index(dir.path());
        // From the middle of a run: that run, then on until 4 revisions are covered.
        assert_eq!(
            firsts(&index.runs(1, 4, 0, Walk::Up, 4).unwrap()),
            vec![3, 6]
        );
        assert_eq!(
            firsts(&index.runs(1, 8, 0, Walk::Up, 4).unwrap()),
            vec![6, 10, 11]
        );
        assert_eq!(
            firsts(&index.runs(1, 0, 0, Walk::Up, 100).unwrap()),
            vec![0, 3, 6, 10, 11]
        );
        assert_eq!(
            firsts(&index.runs(1, 14, 0, Walk::Up, 100).unwrap()),
            vec![11]
        );
        assert!(index.runs(1, 15, 0, Walk::Up, 100).unwrap().is_empty());
        // Backwards, bounded below by a revision inside a run.
        assert_eq!(
            firsts(&index.runs(1, 11, 4, Walk::Down, 100).unwrap()),
            vec![11, 10, 6, 3]
        );
        assert_eq!(
            firsts(&index.runs(1, 12, 0, Walk::Down, 3).unwrap()),
            vec![11, 10]
        );
        assert_eq!(
            firsts(&index.runs(1, 12, 0, Walk::Down, 4).unwrap()),
            vec![11, 10, 6]
        );
        assert_eq!(
            firsts(&index.runs(1, 2, 0, Walk::Down, 1).unwrap()),
            vec![0]
        );
        assert!(index.runs(1, 2, 3, Walk::Down, 1).unwrap().is_empty());
        assert!(index.runs(3, 0, 0, Walk::Up, 10).unwrap().is_empty());
        assert_eq!(
            index.runs(2, 3, 0, Walk::Down, 1).unwrap(),
            vec![(0, run(500, 7))]
        );
        // The same after everything is flushed, and during a flush (frozen memtable).
        index.flush().unwrap();
        assert_eq!(
            firsts(&index.runs(1, 8, 0, Walk::Up, 4).unwrap()),
            vec![6, 10, 11]
        );
        assert_eq!(
            firsts(&index.runs(1, 11, 4, Walk::Down, 100).unwrap()),
            vec![11, 10, 6, 3]
        );
    }

    /// Writes a version-1 index (one entry per event in table `entries`).
    fn write_v1_index(dir: &Path) {
        let db = redb::Database::create(dir.join(INDEX_FILE)).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let old: TableDefinition<(u64, u64), (u64, u64)> = TableDefinition::new("entries");
            tx.open_table(old).unwrap().insert((0, 0), (0, 32)).unwrap();
            let mut meta = tx.open_table(META).unwrap();
            meta.insert("version", 1).unwrap();
            meta.insert("next_position", 1).unwrap();
            meta.insert("end", 100).unwrap();
        }
        tx.commit().unwrap();
    }

    #[test]
    fn an_index_of_the_old_format_is_refused_or_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        write_v1_index(dir.path());
        assert_eq!(stored_version_in(dir.path(), None).unwrap(), Some(1));
        // Tools that must change nothing are told how it gets rebuilt …
        match Index::open(dir.path(), 1 << 20) {
            Err(Error::Corrupt { detail, .. }) => assert!(detail.contains("older"), "{detail}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("an old index must not be read"),
        }
        assert_eq!(stored_version_in(dir.path(), None).unwrap(), Some(1));
        // … and the engine's open rebuilds it: nothing of it is read, the
        // checkpoint starts over, so the whole log is replayed.
        let index = Index::open_or_rebuild(dir.path(), 1 << 20, None).unwrap();
        assert_eq!(index.checkpoint(), Checkpoint::default());
        drop(index);
        assert_eq!(
            stored_version_in(dir.path(), None).unwrap(),
            Some(INDEX_VERSION)
        );
    }

    #[test]
    fn an_index_of_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = redb::Database::create(dir.path().join(INDEX_FILE)).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("version", INDEX_VERSION + 1)
                .unwrap();
            tx.commit().unwrap();
        }
        match Index::open(dir.path(), 1 << 20) {
            Err(Error::Corrupt { detail, .. }) => assert!(detail.contains("reindex"), "{detail}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a newer index must be refused"),
        }
    }
}

//! The engine: opening (lock, recovery), the `EventStore` implementation,
//! and closing.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use factum_core::UnavailableReason;
use factum_core::{
    AppendResult, Error, EventStore, ExpectedRevision, MultiAppend, MultiAppendResult, Position,
    ReadAll, ReadStream, RecordedEvent, Result, StreamMetadata, StreamMetadataResult, StreamName,
    StreamRevision, Subscribe, Subscription, METADATA_EVENT_TYPE,
};
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch, Semaphore};

use crate::config::{Durability, EngineConfig};
use crate::fatal::{apply_marker, Fatal, MarkerCut};
use crate::format::{check_group_link, decode_frame_events, GroupBefore, SEGMENT_HEADER_LEN};
use crate::index::Index;
use crate::log::{classify_tail, FrameReader, Loc, Scanned, Segments, Tail};
use crate::overlay::Overlay;
use crate::pool::{ReadPool, ReadStats};
use crate::prealloc::Prealloc;
use crate::reader::Committed;
use crate::reader::Reader;
use crate::writer::{AppendRequest, Job, MultiRequest, Writer};
use factum_core::rules::Operation;

/// The name of the lock file in a store's directory.
pub const LOCK_FILE: &str = "LOCK";

/// An embedded event store in a directory. Cheap to clone; the store
/// closes when the last clone is dropped (or on [`Engine::close`]).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    dir: PathBuf,
    config: EngineConfig,
    reader: Reader,
    /// Runs every read off the async runtime (ADR 13).
    pool: Arc<ReadPool>,
    index: Arc<Index>,
    /// The writer's queue, bounded by `append_slots` (ADR 13).
    writer_tx: Mutex<Option<SyncSender<Job>>>,
    /// A place in the writer's queue per permit.
    append_slots: Arc<Semaphore>,
    /// Appends waiting for a place.
    appends_waiting: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    fatal: Arc<Fatal>,
    /// The running scavenge and the last one (ADR 33).
    pub(crate) scavenges: crate::scavenge::Scavenges,
    /// The archive tier, when an archive is configured (ADR 43).
    pub(crate) tier: Option<Arc<crate::archive::Tier>>,
    _lock: File,
}

/// What an engine is doing now (a snapshot, for metrics and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Appends holding a place in the writer's queue: handed to the writer
    /// and not yet taken into a group (or deferred to the next one); never
    /// more than `append_queue_capacity`.
    pub appends_queued: usize,
    /// Places in the writer's queue (`EngineConfig::append_queue`).
    pub append_queue_capacity: usize,
    /// Appends waiting asynchronously for a place (backpressure).
    pub appends_waiting: usize,
    /// The reader pool.
    pub reads: ReadStats,
}

/// What opening found and did.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// Frames replayed into the index from the log tail.
    pub frames_replayed: u64,
    /// Bytes of an incomplete last batch that were cut, and where.
    pub cut: Option<(PathBuf, u64, u64)>,
    /// Zeros after the last frame of the active segment (space the writer
    /// preallocated before a crash, ADR 10): kept as free space.
    pub preallocated: u64,
    /// The store had stopped after a failed fsync: what the
    /// `FSYNC_FAILED` marker made the open cut after the log's durable end
    /// (ADR 12).
    pub fsync_cut: Option<MarkerCut>,
}

/// Takes the directory lock so only one process opens the store.
pub fn lock_dir(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked { path }),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::io(format!("locking {}", path.display()), e))
        }
    }
}

/// Replays the log after the index checkpoint into the index (flushing to
/// redb whenever `flush_every` revisions are pending; the rest stays in the
/// memtable). Cuts an incomplete tail batch of the last segment; refuses
/// anything else that does not check out.
fn recover(segments: &Segments, index: &Index, flush_every: usize) -> Result<Recovery> {
    let mut report = Recovery::default();
    let all = segments.all();
    let first = all.first().expect("at least one segment");
    let last_no = all.last().expect("at least one segment").number;
    let cp = index.checkpoint();
    let (mut seg_no, mut offset) = if cp.end == Loc(0) {
        (first.number, SEGMENT_HEADER_LEN as u64)
    } else {
        (cp.end.segment(), cp.end.offset())
    };
    let index_ahead = |detail: String| {
        Error::Corrupt {
        file: index.path().to_path_buf(),
        offset: 0,
        detail: format!("{detail}: the index is ahead of the log, so acknowledged events are missing from the log"),
    }
    };
    let mut overlay = Overlay::new(index);
    loop {
        let seg = segments.get(seg_no).ok_or_else(|| {
            index_ahead(format!(
                "the index checkpoint names segment {seg_no}, which is missing"
            ))
        })?;
        let len = seg.len()?;
        if offset > len {
            return Err(index_ahead(format!(
                "the index checkpoint is at offset {offset} of {}, which is {len} bytes long",
                seg.path.display()
            )));
        }
        // A scavenged segment may have lost its last events (ADR 33): the
        // next one then starts after the position its last frame ends at.
        let after_gap = seg_no > first.number
            && segments
                .get(seg_no - 1)
                .is_some_and(|s| s.format.scavenged())
            && seg.first_position > overlay.mem.checkpoint.next_position;
        if offset == SEGMENT_HEADER_LEN as u64 && after_gap {
            overlay.mem.checkpoint.next_position = seg.first_position;
        }
        if offset == SEGMENT_HEADER_LEN as u64
            && seg.first_position != overlay.mem.checkpoint.next_position
        {
            return Err(Error::Corrupt {
                file: seg.path.clone(),
                offset: 0,
                detail: format!(
                    "segment starts at position {}, but the log before it ends at {}",
                    seg.first_position, overlay.mem.checkpoint.next_position
                ),
            });
        }
        let mut group_before = if offset == SEGMENT_HEADER_LEN as u64 {
            GroupBefore::SegmentStart
        } else {
            GroupBefore::Unknown
        };
        let mut frames = FrameReader::new(seg.clone(), offset, len);
        loop {
            match frames.next_frame()? {
                Scanned::Frame {
                    offset,
                    header,
                    bytes,
                } => {
                    let expected = overlay.mem.checkpoint.next_position;
                    if seg.format.group_frames() {
                        let link = check_group_link(&header, group_before).map_err(|detail| {
                            Error::Corrupt {
                                file: seg.path.clone(),
                                offset,
                                detail,
                            }
                        })?;
                        group_before = GroupBefore::Group(link);
                    }
                    // Frames of a scavenged segment may follow a gap (ADR 33).
                    let gap = seg.format.scavenged() && header.first_position > expected;
                    if header.first_position != expected && !gap {
                        return Err(Error::Corrupt {
                            file: seg.path.clone(),
                            offset,
                            detail: format!(
                                "frame starts at position {}, expected {expected}",
                                header.first_position
                            ),
                        });
                    }
                    let events =
                        decode_frame_events(bytes, &header).map_err(|detail| Error::Corrupt {
                            file: seg.path.clone(),
                            offset,
                            detail,
                        })?;
                    let located: Vec<_> = events
                        .into_iter()
                        .map(|(e, o)| (e, Loc::new(seg.number, offset + o as u64)))
                        .collect();
                    let end = Loc::new(seg.number, offset + header.len as u64);
                    overlay.add_frame(Loc::new(seg.number, offset), &located, end)?;
                    report.frames_replayed += 1;
                    if overlay.mem.covered >= flush_every {
                        index.apply(overlay.take());
                        index.flush()?;
                    }
                }
                Scanned::End => break,
                Scanned::Incomplete { offset } | Scanned::Invalid { offset, .. } => {
                    if seg.number != last_no {
                        return Err(Error::Corrupt {
                            file: seg.path.clone(),
                            offset,
                            detail: "invalid or incomplete frame in a sealed segment".into(),
                        });
                    }
                    let next = overlay.mem.checkpoint.next_position;
                    match classify_tail(&seg, offset, len, next)? {
                        Tail::Free => {
                            // Preallocated space (ADR 10): the end of the log.
                            report.preallocated = len - offset;
                            break;
                        }
                        Tail::Damaged { valid_at, detail } => {
                            return Err(Error::Corrupt {
                                file: seg.path.clone(),
                                offset,
                                detail: format!("invalid frame; {detail} at offset {valid_at}"),
                            });
                        }
                        Tail::Torn => {}
                    }
                    // The last write group was torn before it was
                    // acknowledged: keep its whole frames before the damage,
                    // cut the rest. Truncation also drops the cut bytes from
                    // the page cache, and the next writes land on zeros.
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&seg.path)
                        .map_err(|e| Error::io(format!("opening {}", seg.path.display()), e))?;
                    let mut f = crate::encrypt::SegmentFile::new(f, seg.cipher.get().cloned());
                    f.set_len(offset).and_then(|_| f.sync_all()).map_err(|e| {
                        Error::io(format!("cutting the tail of {}", seg.path.display()), e)
                    })?;
                    tracing::warn!(
                        file = %seg.path.display(),
                        offset,
                        bytes = len - offset,
                        "cut a torn write group at the end of the log (it was never acknowledged)"
                    );
                    report.cut = Some((seg.path.clone(), offset, len - offset));
                    break;
                }
            }
        }
        if seg_no == last_no {
            // The checkpoint must cover at least the start of the active segment.
            if overlay.mem.checkpoint.end.segment() != seg_no
                || overlay.mem.checkpoint.end == Loc(0)
            {
                overlay.mem.checkpoint.end = Loc::new(seg_no, frames.offset().min(len));
            }
            break;
        }
        seg_no += 1;
        offset = SEGMENT_HEADER_LEN as u64;
        overlay.mem.checkpoint.end = Loc::new(seg_no, offset);
    }
    // The replayed tail stays in the memtable (bounded by `flush_every`,
    // as in normal operation); the indexer flushes it in the background
    // right after open instead of making the open wait for it.
    index.apply(overlay.take());
    Ok(report)
}

/// A store opened with a master key whose active segment was written in
/// the clear and holds no frame yet: that segment is created again,
/// encrypted (one with frames is sealed by the writer's first roll
/// instead), so no frame of this open is written in the clear.
fn encrypt_empty_active(
    dir: &Path,
    segments: &crate::log::Segments,
    key: &crate::encrypt::MasterKey,
) -> Result<()> {
    let active = segments.last().expect("at least one segment");
    let len = active.len()?;
    // No frame: nothing after the header, or only preallocated zeros.
    if active.format.encrypted() || !crate::log::all_zero(&active, SEGMENT_HEADER_LEN as u64, len)?
    {
        return Ok(());
    }
    std::fs::remove_file(&active.path)
        .map_err(|e| Error::io(format!("removing {}", active.path.display()), e))?;
    crate::log::sync_dir(dir)?;
    let fresh = crate::log::create_segment(dir, active.number, active.first_position, Some(key))?;
    segments.replace(Arc::new(fresh));
    Ok(())
}

impl Engine {
    /// Opens (or creates) a store in `dir` with default configuration.
    pub fn open(dir: impl AsRef<Path>) -> Result<Engine> {
        Self::open_with(dir, EngineConfig::default()).map(|(e, _)| e)
    }

    /// Opens (or creates) a store, returning what recovery did.
    pub fn open_with(dir: impl AsRef<Path>, config: EngineConfig) -> Result<(Engine, Recovery)> {
        let dir = dir.as_ref().to_path_buf();
        let lock = lock_dir(&dir)?;
        crate::log::remove_interrupted_segments(&dir)?;
        // After a failed fsync, the log is cut at its durable end before
        // anything is read (the page cache may hold what never reached the disk).
        let fsync_cut = apply_marker(&dir, config.encryption.as_ref())?;
        let index = Arc::new(Index::open_or_rebuild(
            &dir,
            config.index_cache_bytes,
            config.encryption.as_ref(),
        )?);
        // A segment rewrite a crash interrupted is finished (its index
        // change was committed) or undone (it was not) before the segments
        // are opened (ADR 33).
        crate::rewrite::finish_interrupted(&dir, &index)?;
        let segments = Arc::new(crate::log::open_segments_with(
            &dir,
            config.encryption.as_ref(),
        )?);
        // Encrypted segments open only with their master key (ADR 45).
        segments.unlock(config.encryption.as_ref())?;
        if let Some(key) = &config.encryption {
            encrypt_empty_active(&dir, &segments, key)?;
        }
        // Segments that live only in the archive read through it (ADR 43).
        let tier = config.archive.as_ref().map(|a| {
            Arc::new(crate::archive::Tier::new(
                a.clone(),
                config.archive_cache_bytes,
            ))
        });
        if let Some(tier) = &tier {
            segments.attach(tier);
        }
        let mut recovery = recover(&segments, &index, config.index_flush_entries)?;
        recovery.fsync_cut = fsync_cut;
        let cp = index.checkpoint();
        let active = segments.last().expect("at least one segment");
        // The log ends before the preallocated zeros recovery found.
        let file_len = active.len()?;
        let segment_len = file_len - recovery.preallocated;
        let (committed_tx, committed_rx) = watch::channel(Committed {
            next_position: cp.next_position,
            end: Loc::new(active.number, segment_len),
        });
        let reader = Reader {
            cache: Arc::new(crate::cache::BlockCache::new(config.read_cache_bytes)),
            segments: segments.clone(),
            index: index.clone(),
            committed: committed_rx,
            clock: config.clock.clone(),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&active.path)
            .map_err(|e| Error::io(format!("opening {}", active.path.display()), e))?;
        let file = crate::encrypt::SegmentFile::new(file, active.cipher.get().cloned());
        let fatal = Arc::new(Fatal::new(dir.clone(), active.clone(), segment_len));
        let prealloc = if config.durability == Durability::Always && config.preallocate_bytes > 0 {
            Some(
                Prealloc::start(
                    active.path.clone(),
                    active.format.encrypted(),
                    segment_len,
                    file_len,
                    config.preallocate_bytes,
                    config.segment_bytes,
                    fatal.clone(),
                )
                .map_err(|e| Error::io("starting the preallocation thread", e))?,
            )
        } else {
            None
        };
        let (flush_tx, flush_rx) = mpsc::sync_channel::<()>(1);
        if recovery.frames_replayed > 0 {
            // Flush the replayed tail as soon as the indexer starts.
            let _ = flush_tx.try_send(());
        }
        let mut writer = Writer {
            config: config.clone(),
            dir: dir.clone(),
            segments: segments.clone(),
            index: index.clone(),
            reader: reader.clone(),
            committed: committed_tx,
            file,
            segment: active,
            segment_len,
            prealloc,
            avg_group_bytes: 0,
            fatal: fatal.clone(),
            sealed: false,
            roll_retry: None,
            group_first: 0,
            flush_signal: flush_tx,
        };
        writer.flag_public_positions();
        // Bounded twice over: the channel's own capacity and the permits
        // submitters wait for asynchronously (a request holds its permit
        // until the writer drops it, so the channel is never full).
        let append_queue = config.append_queue.clamp(1, Semaphore::MAX_PERMITS);
        let (tx, rx) = mpsc::sync_channel(append_queue);
        let writer_thread = std::thread::Builder::new()
            .name("factum-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::io("starting the writer thread", e))?;
        let flush_index = index.clone();
        let interval = config.index_flush_interval;
        let indexer_thread = std::thread::Builder::new()
            .name("factum-indexer".into())
            .spawn(move || loop {
                let stop = matches!(flush_rx.recv_timeout(interval), Err(mpsc::RecvTimeoutError::Disconnected));
                if let Err(e) = flush_index.flush() {
                    tracing::error!(error = %e, "index flush failed; will retry (the log is intact)");
                }
                if stop {
                    return;
                }
            })
            .map_err(|e| Error::io("starting the indexer thread", e))?;
        let pool = ReadPool::start(
            config.reader_threads,
            config.read_queue,
            config.read_step_bytes,
            Some(segments.clone()),
        )
        .map_err(|e| Error::io("starting the reader threads", e))?;
        let engine = Engine {
            inner: Arc::new(Inner {
                dir,
                config,
                reader,
                pool: Arc::new(pool),
                index,
                writer_tx: Mutex::new(Some(tx)),
                append_slots: Arc::new(Semaphore::new(append_queue)),
                appends_waiting: AtomicUsize::new(0),
                threads: Mutex::new(vec![writer_thread, indexer_thread]),
                fatal,
                scavenges: Default::default(),
                tier,
                _lock: lock,
            }),
        };
        Ok((engine, recovery))
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// A reader of committed data (for tools such as `verify`).
    pub fn reader(&self) -> &Reader {
        &self.inner.reader
    }

    /// Bytes of the log on local disk up to its committed end: every sealed
    /// segment file as stored (compressed or not; a stub for one that lives
    /// only in the archive, ADR 43) and the active
    /// one's frames, not the preallocated zeros after the last frame (ADR 10).
    pub fn log_bytes(&self) -> Result<u64> {
        let reader = &self.inner.reader;
        let end = reader.committed().end;
        let mut total = end.offset();
        for seg in reader.segments.all() {
            if seg.number < end.segment() {
                total += seg.local_len()?;
            }
        }
        Ok(total)
    }

    /// What the writer's queue and the reader pool are doing now.
    pub fn stats(&self) -> EngineStats {
        let capacity = self
            .inner
            .config
            .append_queue
            .clamp(1, Semaphore::MAX_PERMITS);
        EngineStats {
            appends_queued: capacity - self.inner.append_slots.available_permits(),
            append_queue_capacity: capacity,
            appends_waiting: self.inner.appends_waiting.load(Ordering::Relaxed),
            reads: self.inner.pool.stats(),
        }
    }

    /// Flushes the index to disk now (it is also flushed in the background).
    pub fn flush_index(&self) -> Result<()> {
        self.inner.index.flush()
    }

    /// Stops accepting appends, finishes queued ones, flushes the index and
    /// waits for the writer. Other clones then answer `Unavailable`. After
    /// the writer stopped for good (see [`Engine::fatal`]) it answers that
    /// reason as `Unavailable`, once the index is flushed.
    pub fn close(&self) -> Result<()> {
        self.inner.scavenges.stop(None);
        self.inner.shutdown();
        self.inner.index.flush()?;
        match self.fatal() {
            Some(why) => Err(Error::unavailable(UnavailableReason::StorageFailed, why)),
            None => Ok(()),
        }
    }

    /// Why the writer stopped for good, if it did: an fsync of a log file
    /// failed (on any thread), so nothing more is acknowledged and every
    /// append answers `Unavailable` with this reason (ADR 12). Reads go on.
    /// The process should exit: the next open cuts the log after its
    /// durable end.
    pub fn fatal(&self) -> Option<String> {
        self.inner.fatal.reason().map(|r| r.to_string())
    }

    /// Resolves, with the reason, once the writer has stopped for good
    /// (after the marker for the next open is written); pending forever
    /// otherwise. Independent of the engine's lifetime.
    pub fn stopped_for_good(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.inner.fatal.subscribe();
        async move {
            let reason = match rx.wait_for(|r| r.is_some()).await {
                Ok(r) => r.as_deref().map(str::to_string),
                Err(_) => None,
            };
            match reason {
                Some(why) => why,
                // The engine is gone without a fatal error.
                None => std::future::pending().await,
            }
        }
    }

    async fn submit(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        op: Operation,
    ) -> Result<AppendResult> {
        self.queue(|reply, queue_slot| {
            Job::One(AppendRequest {
                stream,
                expected,
                op,
                reply,
                queue_slot,
            })
        })
        .await
    }

    /// Queues a job for the writer once it has a place, and waits for its
    /// answer.
    async fn queue<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T>>, tokio::sync::OwnedSemaphorePermit) -> Job,
    ) -> Result<T> {
        let closed = || Error::unavailable(UnavailableReason::Closed, "the store is closed");
        let queue_slot = {
            let _waiting = Waiting::enter(&self.inner.appends_waiting);
            self.inner
                .append_slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| closed())?
        };
        let (reply, rx) = oneshot::channel();
        let req = job(reply, queue_slot);
        {
            let tx = self.inner.writer_tx.lock();
            let tx = tx.as_ref().ok_or_else(closed)?;
            match tx.try_send(req) {
                Ok(()) => {}
                Err(TrySendError::Disconnected(_)) => return Err(closed()),
                // A queued request holds a permit, so this means a bug in
                // that bookkeeping: answer it rather than block a runtime thread.
                Err(TrySendError::Full(_)) => {
                    return Err(Error::unavailable(
                        UnavailableReason::Busy,
                        "the writer's queue is full although a place was free",
                    ))
                }
            }
        }
        rx.await.map_err(|_| {
            Error::unavailable(
                UnavailableReason::Closed,
                "the writer stopped before answering",
            )
        })?
    }
}

/// Counts an append waiting for a place in the writer's queue for as long
/// as it waits (also when its future is dropped while waiting).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Inner {
    fn shutdown(&self) {
        // Appends waiting for a place answer `Unavailable`.
        self.append_slots.close();
        drop(self.writer_tx.lock().take());
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
        if let Err(e) = self.index.flush() {
            tracing::error!(error = %e, "index flush at close failed; the next open replays the log");
        }
    }
}

/// The metadata of `stream`: its last `$metadata` event (one index lookup
/// and one point read).
fn stream_metadata(reader: &Reader, stream: StreamName) -> Result<StreamMetadataResult> {
    let index = &reader.index;
    let meta_stream = stream.metadata_stream();
    match index.stream(stream.as_str())? {
        Some(r) if r.tombstoned => return Err(Error::StreamDeleted { stream }),
        _ => {}
    }
    let rec = index.stream(meta_stream.as_str())?;
    let Some(rev) = rec.as_ref().and_then(|r| r.last_revision) else {
        return Ok(StreamMetadataResult::default());
    };
    let events = reader.stream_events(rec.expect("checked").id, rev, 1)?;
    let last = events.last().ok_or_else(|| Error::Corrupt {
        file: index.path().to_path_buf(),
        offset: 0,
        detail: format!("metadata event {rev}@{meta_stream} is missing from the index"),
    })?;
    debug_assert_eq!(last.event_type, METADATA_EVENT_TYPE);
    Ok(StreamMetadataResult {
        revision: Some(StreamRevision(rev)),
        metadata: StreamMetadata::from_json(&last.data)?,
    })
}

impl EventStore for Engine {
    factum_core::writes_through_submit!();

    async fn append_multi(&self, request: MultiAppend) -> Result<MultiAppendResult> {
        self.queue(|reply, queue_slot| {
            Job::Multi(MultiRequest {
                request,
                reply,
                queue_slot,
            })
        })
        .await
    }

    async fn read_stream(&self, request: ReadStream) -> Result<Vec<RecordedEvent>> {
        let reader = self.inner.reader.clone();
        self.inner
            .pool
            .run(move |progress| reader.read_stream(&request, progress))
            .await
    }

    async fn read_all(&self, request: ReadAll) -> Result<Vec<RecordedEvent>> {
        let reader = self.inner.reader.clone();
        self.inner
            .pool
            .run(move |progress| reader.read_all(&request, progress))
            .await
    }

    async fn subscribe(&self, request: Subscribe) -> Result<Subscription> {
        crate::subscription::start(
            self.inner.reader.clone(),
            self.inner.pool.clone(),
            request,
            self.inner.config.fell_behind_events,
        )
        .await
    }

    async fn stream_metadata(&self, stream: StreamName) -> Result<StreamMetadataResult> {
        let reader = self.inner.reader.clone();
        self.inner
            .pool
            .run(move |_| stream_metadata(&reader, stream))
            .await
    }

    async fn head_position(&self) -> Result<Option<Position>> {
        Ok(self
            .inner
            .reader
            .committed()
            .next_position
            .checked_sub(1)
            .map(crate::format::public_position))
    }
}

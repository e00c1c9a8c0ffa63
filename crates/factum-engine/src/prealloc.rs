//! Zero-filled space ahead of the writer in the active segment (ADR 10).
//!
//! An `fdatasync` after a write that grows a file must also make the new
//! file size and block allocation durable: on ext4 that is a journal commit
//! on top of the data flush. After a write into space that already holds
//! durable zeros, `fdatasync` flushes the data alone. For small appends (one
//! event, a few hundred bytes) that commit is a large share of the time, so
//! a background thread keeps a few MiB of durable zeros ahead of the writer
//! while the writer's groups are small. For large groups the cost is the
//! other way round (zeros would double the bytes written, and one commit is
//! spread over much data), so the writer stops asking.
//!
//! Ownership of the file's bytes: the writer owns everything below
//! `written`; a zeroing job owns `[max(ready, written), job end)` while it
//! runs. Before a write that would cross into a running job's range the
//! writer waits for the job; a job never starts below `written`. So the two
//! never write the same bytes.
//!
//! Recovery treats an all-zero tail after the last frame as free space, not
//! as a torn batch (docs/format.md); a sealed segment is truncated to its
//! last frame before the next one starts, and a closing writer truncates
//! the active one, so zeros only survive a crash.
//!
//! The thread opens each segment itself: its own open file description,
//! not a `dup` of the writer's. Linux reports a writeback error once per
//! open file description, so with a shared one an error this thread's
//! fdatasync consumed would let the writer's next fdatasync succeed over
//! lost data. With its own, the kernel reports the error to both; and any
//! fdatasync failure here stops the writer for good as well (ADR 12).

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::fatal::Fatal;

/// Zeros are written in pieces of this size.
const PIECE: usize = 256 << 10;

/// The preallocating thread and the state it shares with the writer.
pub(crate) struct Prealloc {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Bytes zeroed per job.
    chunk: u64,
    /// The file is never zeroed past this offset (the segment size).
    cap: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    fatal: Arc<Fatal>,
}

#[derive(Default)]
struct State {
    /// The active segment, opened by this thread (None while the writer
    /// switches segments).
    file: Option<(Arc<File>, PathBuf)>,
    /// Is the active segment encrypted (zeros then go to whole pages, ADR 45)?
    encrypted: bool,
    /// `[.., ready)` is durable: the writer's data or zeros.
    ready: u64,
    /// The writer writes (or wrote) up to here.
    written: u64,
    /// Zeros are wanted up to here.
    want: u64,
    /// A job is zeroing up to here.
    job: Option<u64>,
    /// A zeroing job failed (a full disk, say): no more jobs in this segment.
    failed: bool,
    stop: bool,
}

impl State {
    fn wants_job(&self) -> bool {
        self.file.is_some() && !self.failed && self.job.is_none() && self.want > self.free_from()
    }

    fn free_from(&self) -> u64 {
        self.ready.max(self.written)
    }
}

impl Prealloc {
    /// Starts the thread for the segment at `path`, whose bytes `[.., len)`
    /// are the log (and maybe zeros) and `[.., data_end)` the log's frames.
    /// An fdatasync failure trips `fatal`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        path: PathBuf,
        encrypted: bool,
        data_end: u64,
        len: u64,
        chunk: u64,
        cap: u64,
        fatal: Arc<Fatal>,
    ) -> std::io::Result<Prealloc> {
        let file = Arc::new(open_own(&path)?);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                file: Some((file, path)),
                encrypted,
                ready: len,
                written: data_end,
                want: 0,
                ..State::default()
            }),
            changed: Condvar::new(),
            fatal,
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("factum-prealloc".into())
            .spawn(move || worker.run())?;
        Ok(Prealloc {
            shared,
            thread: Some(thread),
            chunk,
            cap,
        })
    }

    /// Before the writer writes `[.., end)`: waits while a job zeroes bytes
    /// below `end`, then claims them.
    pub fn before_write(&self, end: u64) {
        let mut s = self.shared.state.lock();
        while s.job.is_some() && end > s.free_from() {
            self.shared.changed.wait(&mut s);
        }
        s.written = s.written.max(end);
    }

    /// After the writer's `[.., end)` is durable. With `small` (the writer's
    /// recent groups are small) asks for zeros ahead when fewer than half a
    /// chunk are left.
    pub fn after_write(&self, end: u64, small: bool) {
        let mut s = self.shared.state.lock();
        s.ready = s.ready.max(end);
        if small && s.ready < end + self.chunk / 2 {
            s.want = s.want.max((end + self.chunk).min(self.cap));
            if s.wants_job() {
                self.shared.changed.notify_all();
            }
        }
    }

    /// Waits for a running job and detaches the file (no job starts until
    /// [`Prealloc::attach`]): the writer may then truncate or seal it.
    pub fn detach(&self) {
        let mut s = self.shared.state.lock();
        while s.job.is_some() {
            self.shared.changed.wait(&mut s);
        }
        s.want = 0;
        s.file = None;
    }

    /// Attaches the new active segment at `path`, `len` bytes long, all of
    /// them log, opening it anew. When it cannot be opened (too many open
    /// files, say) that segment gets no zeros: appends go on without them.
    pub fn attach(&self, path: PathBuf, encrypted: bool, len: u64) {
        let file = match open_own(&path) {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e,
                    "could not open the segment to preallocate log space; appends continue without it");
                None
            }
        };
        let mut s = self.shared.state.lock();
        debug_assert!(s.job.is_none());
        s.failed = file.is_none();
        s.file = file.map(|f| (f, path));
        s.encrypted = encrypted;
        s.ready = len;
        s.written = len;
        s.want = 0;
    }
}

/// The thread's own open file description of a segment (see the module doc).
fn open_own(path: &std::path::Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).open(path)
}

impl Drop for Prealloc {
    fn drop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn run(&self) {
        let zeros = vec![0u8; PIECE];
        loop {
            // One piece at a time, each claimed on its own and made durable
            // on its own: a writer that catches up waits for one piece at
            // most, and no long flush holds up its fdatasyncs.
            let (file, path, encrypted, start, end) = {
                let mut s = self.state.lock();
                while !s.stop && !s.wants_job() {
                    self.changed.wait(&mut s);
                }
                if s.stop {
                    return;
                }
                let start = s.free_from();
                let end = s.want.min(start + PIECE as u64);
                s.job = Some(end);
                let (file, path) = s.file.clone().expect("wants_job checks the file");
                (file, path, s.encrypted, start, end)
            };
            let result = match crate::encrypt::write_zeros(&file, encrypted, start, end, &zeros) {
                Ok(()) => file.sync_data().map_err(|e| (true, e)),
                Err(e) => Err((false, e)),
            };
            if let Err((true, e)) = &result {
                // The data of the whole file may be lost, the writer's
                // included: stop the writer for good (ADR 12). Outside the
                // lock, so the writer can finish waiting for this job.
                self.fatal.trip(format!(
                    "fsync of {} failed ({e}) while preallocating log space; the store stopped accepting writes because the OS may have dropped unwritten data; restart to recover from the log",
                    path.display()
                ));
            }
            let mut s = self.state.lock();
            s.job = None;
            match result {
                Ok(()) => s.ready = s.ready.max(end),
                Err((true, _)) => s.failed = true,
                Err((false, e)) => {
                    // Not fatal: the writer grows the file as without
                    // preallocation. The zeros written (if any) are free space.
                    tracing::warn!(file = %path.display(), error = %e,
                        "could not preallocate log space; appends continue without it");
                    s.failed = true;
                }
            }
            self.changed.notify_all();
        }
    }
}

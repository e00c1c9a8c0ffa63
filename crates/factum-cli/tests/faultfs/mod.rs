//! A passthrough FUSE file system that loses writes on demand, for
//! `tests/fuse_fsync.rs` (issue 11, ADR 12).
//!
//! Every operation goes to a real directory (the backing directory). Each
//! regular file keeps an undo log of the writes (and truncations) it got
//! since its last good fsync: the old bytes and the old length. A
//! [`Control`] shared with the test arms a fault: the next `FUSE_FSYNC` of a
//! file whose name ends with the armed suffix fails with EIO and the undo
//! log is applied to the backing file, so the bytes written since its last
//! good fsync are gone from it, as a disk that never got them. The kernel
//! does not learn of that: with the writeback cache (`FUSE_WRITEBACK_CACHE`)
//! the pages it wrote to us are clean in its page cache, every open keeps
//! that cache (`FOPEN_KEEP_CACHE`) and the kernel trusts its own file size,
//! so any process reading the file through the mount is served the dropped
//! bytes until they are truncated away or evicted.
//!
//! Error reporting follows Linux's `errseq_t`: a FUSE file handle is one
//! open file description, and each handle open at the fault gets EIO at its
//! next fsync (once), as the kernel reports a writeback error to every open
//! description. With `dead` set, truncating the faulted file fails with EIO
//! too (a disk that died), until the test revives it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

/// How long the kernel may cache entries and attributes. Everything that
/// changes the backing directory goes through the mount, so the kernel's
/// view stays right.
const TTL: Duration = Duration::from_secs(60);

/// What the test controls, shared with the file system's thread.
#[derive(Default)]
pub struct Control {
    /// The next fsync of a file whose name ends with `.0`, asked for by a
    /// thread whose name contains `.1`, fails (once).
    armed: Mutex<Option<(String, String)>>,
    /// After the fault: truncating the faulted file fails with EIO.
    dead: AtomicBool,
    fault: Mutex<Option<Fault>>,
}

/// What the fault did.
#[derive(Clone, Debug)]
pub struct Fault {
    /// The file, relative to the backing directory.
    pub path: PathBuf,
    /// Bytes written to the file since its last good fsync, rolled back in
    /// the backing file (whole pages with the writeback cache: the part of
    /// a page that was already durable is rolled back to the same bytes).
    pub dropped_bytes: u64,
    /// How many writes those were.
    pub dropped_writes: usize,
    /// The backing file's length after the undo.
    pub backing_len: u64,
    /// Whether the fsync asked only for the data (`fdatasync`).
    pub datasync: bool,
}

impl Control {
    /// The next fsync of a file whose name ends with `suffix`, from a
    /// thread whose name contains `thread` (FUSE tells the caller's thread
    /// id; its name is in /proc), fails with EIO and loses what was written
    /// since that file's last good fsync. With `dead`, truncating that file
    /// fails afterwards too.
    pub fn arm(&self, suffix: &str, thread: &str, dead: bool) {
        self.dead.store(dead, Ordering::SeqCst);
        *self.armed.lock().unwrap() = Some((suffix.to_owned(), thread.to_owned()));
    }

    /// Truncation works again.
    pub fn revive(&self) {
        self.dead.store(false, Ordering::SeqCst);
    }

    /// What the fault did, once it happened.
    pub fn fault(&self) -> Option<Fault> {
        self.fault.lock().unwrap().clone()
    }
}

/// One write (or truncation) since the last good fsync, to undo.
struct Undo {
    offset: u64,
    old: Vec<u8>,
    old_len: u64,
    /// Bytes it wrote (0 for a truncation).
    written: u64,
}

#[derive(Default)]
struct FileState {
    undo: Vec<Undo>,
    /// Bumped at each fault of this file (Linux's errseq_t).
    err_seq: u64,
    /// Truncation fails (a dead disk) while `Control::dead` is set.
    faulted: bool,
}

struct Handle {
    ino: u64,
    file: Arc<File>,
    /// The file's `err_seq` this handle has reported.
    seen: u64,
}

struct Inner {
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    files: HashMap<u64, FileState>,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
}

/// The file system: serves `backing` and obeys `control`.
pub struct FaultFs {
    backing: PathBuf,
    control: Arc<Control>,
    inner: Mutex<Inner>,
}

type Res<T> = Result<T, Errno>;

fn errno(e: std::io::Error) -> Errno {
    Errno::from(e)
}

fn attr(ino: u64, m: &std::fs::Metadata) -> FileAttr {
    let time = |s: i64, ns: i64| {
        UNIX_EPOCH + Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
    };
    let kind = if m.is_dir() {
        FileType::Directory
    } else if m.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    FileAttr {
        ino: INodeNo(ino),
        size: m.len(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: time(m.mtime(), m.mtime_nsec()),
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// Reads what `file` holds in `[offset, offset + len)` (less at its end).
fn read_at(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut n = 0;
    while n < len {
        match file.read_at(&mut buf[n..], offset + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    buf.truncate(n);
    Ok(buf)
}

impl FaultFs {
    pub fn new(backing: PathBuf, control: Arc<Control>) -> FaultFs {
        let mut inner = Inner {
            paths: HashMap::new(),
            inos: HashMap::new(),
            next_ino: 2,
            files: HashMap::new(),
            handles: HashMap::new(),
            next_fh: 1,
        };
        inner.paths.insert(1, PathBuf::new());
        inner.inos.insert(PathBuf::new(), 1);
        FaultFs {
            backing,
            control,
            inner: Mutex::new(inner),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path_of(&self, ino: INodeNo) -> Res<PathBuf> {
        self.inner().paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Res<PathBuf> {
        Ok(self.path_of(parent)?.join(name))
    }

    /// The inode number of `rel`, assigned on first sight.
    fn ino_for(&self, rel: &Path) -> u64 {
        let mut inner = self.inner();
        if let Some(&ino) = inner.inos.get(rel) {
            return ino;
        }
        let ino = inner.next_ino;
        inner.next_ino += 1;
        inner.inos.insert(rel.to_path_buf(), ino);
        inner.paths.insert(ino, rel.to_path_buf());
        ino
    }

    fn entry(&self, rel: &Path) -> Res<FileAttr> {
        let m = std::fs::symlink_metadata(self.backing.join(rel)).map_err(errno)?;
        Ok(attr(self.ino_for(rel), &m))
    }

    fn new_handle(&self, ino: u64, file: File) -> u64 {
        let mut inner = self.inner();
        let seen = inner.files.entry(ino).or_default().err_seq;
        let fh = inner.next_fh;
        inner.next_fh += 1;
        inner.handles.insert(
            fh,
            Handle {
                ino,
                file: Arc::new(file),
                seen,
            },
        );
        fh
    }

    fn handle_file(&self, fh: FileHandle) -> Res<Arc<File>> {
        self.inner()
            .handles
            .get(&fh.0)
            .map(|h| h.file.clone())
            .ok_or(Errno::EBADF)
    }

    /// Records what a write of `len` bytes at `offset` changes in `file` (the
    /// old bytes there and the old length), so a fault can undo it. A
    /// truncation records the same way (see `set_size`).
    fn record(&self, ino: u64, file: &File, offset: u64, len: u64) -> Res<()> {
        let old_len = file.metadata().map_err(errno)?.len();
        let end = (offset + len).min(old_len);
        let old = if end > offset {
            read_at(file, offset, (end - offset) as usize).map_err(errno)?
        } else {
            Vec::new()
        };
        self.inner().files.entry(ino).or_default().undo.push(Undo {
            offset,
            old,
            old_len,
            written: len,
        });
        Ok(())
    }

    fn set_size(&self, ino: u64, fh: Option<FileHandle>, size: u64) -> Res<()> {
        let dead = self.control.dead.load(Ordering::SeqCst)
            && self.inner().files.get(&ino).is_some_and(|f| f.faulted);
        if dead {
            return Err(Errno::EIO);
        }
        let file = match fh {
            Some(fh) => self.handle_file(fh)?,
            None => Arc::new(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(self.backing.join(self.path_of(INodeNo(ino))?))
                    .map_err(errno)?,
            ),
        };
        let len = file.metadata().map_err(errno)?.len();
        // A shrink loses [size, len): keep it to undo.
        if size < len {
            self.record(ino, &file, size, len - size)?;
            if let Some(u) = self
                .inner()
                .files
                .get_mut(&ino)
                .and_then(|f| f.undo.last_mut())
            {
                u.written = 0;
            }
        } else {
            self.record(ino, &file, size, 0)?;
        }
        file.set_len(size).map_err(errno)
    }

    /// The fsync of handle `fh`: the armed fault, a fault to report, or a
    /// real fsync that makes everything written so far durable.
    fn fsync_handle(&self, fh: FileHandle, datasync: bool, tid: u32) -> Res<()> {
        let mut inner = self.inner();
        let (ino, file, seen) = {
            let h = inner.handles.get(&fh.0).ok_or(Errno::EBADF)?;
            (h.ino, h.file.clone(), h.seen)
        };
        let rel = inner.paths.get(&ino).cloned().unwrap_or_default();
        let armed = {
            let mut armed = self.control.armed.lock().unwrap();
            let hit = armed.as_ref().is_some_and(|(suffix, thread)| {
                rel.file_name()
                    .is_some_and(|n| n.as_bytes().ends_with(suffix.as_bytes()))
                    && std::fs::read_to_string(format!("/proc/{tid}/comm"))
                        .is_ok_and(|name| name.contains(thread.as_str()))
            });
            if hit {
                *armed = None;
            }
            hit
        };
        let state = inner.files.entry(ino).or_default();
        if armed {
            // The disk never got what was written since the last good fsync.
            let undo = std::mem::take(&mut state.undo);
            let dropped_bytes = undo.iter().map(|u| u.written).sum();
            let dropped_writes = undo.iter().filter(|u| u.written > 0).count();
            for u in undo.iter().rev() {
                file.write_all_at(&u.old, u.offset).map_err(errno)?;
                file.set_len(u.old_len).map_err(errno)?;
            }
            file.sync_all().map_err(errno)?;
            state.err_seq += 1;
            state.faulted = true;
            let err_seq = state.err_seq;
            inner.handles.get_mut(&fh.0).expect("the handle").seen = err_seq;
            let backing_len = file.metadata().map_err(errno)?.len();
            eprintln!(
                "FUSE-FAULT fsync of {} failed with EIO: dropped {dropped_bytes} bytes of {dropped_writes} writes; the backing file is {backing_len} bytes",
                rel.display()
            );
            *self.control.fault.lock().unwrap() = Some(Fault {
                path: rel,
                dropped_bytes,
                dropped_writes,
                backing_len,
                datasync,
            });
            return Err(Errno::EIO);
        }
        let report = seen < state.err_seq;
        let err_seq = state.err_seq;
        drop(inner);
        let synced = if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        };
        let mut inner = self.inner();
        if synced.is_ok() {
            inner.files.entry(ino).or_default().undo.clear();
        }
        if report {
            // Each open description hears of the fault once.
            if let Some(h) = inner.handles.get_mut(&fh.0) {
                h.seen = err_seq;
            }
            return Err(Errno::EIO);
        }
        synced.map_err(errno)
    }
}

impl Filesystem for FaultFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        config
            .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
            .map_err(|missing| {
                std::io::Error::other(format!("the kernel lacks FUSE capabilities {missing:?}"))
            })
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name).and_then(|rel| self.entry(&rel)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let m = match fh.map(|fh| self.handle_file(fh)) {
            Some(Ok(f)) => f.metadata().map_err(errno),
            _ => self
                .path_of(ino)
                .and_then(|rel| std::fs::symlink_metadata(self.backing.join(rel)).map_err(errno)),
        };
        match m {
            Ok(m) => reply.attr(&TTL, &attr(ino.0, &m)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let done = (|| -> Res<FileAttr> {
            let rel = self.path_of(ino)?;
            let full = self.backing.join(&rel);
            if let Some(size) = size {
                self.set_size(ino.0, fh, size)?;
            }
            if let Some(mode) = mode {
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(errno)?;
            }
            let m = std::fs::symlink_metadata(&full).map_err(errno)?;
            Ok(attr(ino.0, &m))
        })();
        match done {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let done = self.child(parent, name).and_then(|rel| {
            let full = self.backing.join(&rel);
            std::fs::create_dir(&full).map_err(errno)?;
            std::fs::set_permissions(
                &full,
                std::fs::Permissions::from_mode(mode & !umask & 0o7777),
            )
            .map_err(errno)?;
            self.entry(&rel)
        });
        match done {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let done = self.child(parent, name).and_then(|rel| {
            std::fs::remove_file(self.backing.join(&rel)).map_err(errno)?;
            let mut inner = self.inner();
            if let Some(ino) = inner.inos.remove(&rel) {
                inner.paths.remove(&ino);
            }
            Ok(())
        });
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let done = self.child(parent, name).and_then(|rel| {
            std::fs::remove_dir(self.backing.join(&rel)).map_err(errno)?;
            let mut inner = self.inner();
            if let Some(ino) = inner.inos.remove(&rel) {
                inner.paths.remove(&ino);
            }
            Ok(())
        });
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.bits() != 0 {
            return reply.error(Errno::EINVAL);
        }
        let done = (|| -> Res<()> {
            let from = self.child(parent, name)?;
            let to = self.child(newparent, newname)?;
            std::fs::rename(self.backing.join(&from), self.backing.join(&to)).map_err(errno)?;
            let mut inner = self.inner();
            if let Some(replaced) = inner.inos.remove(&to) {
                inner.paths.remove(&replaced);
            }
            // The entry and, for a directory, everything under it.
            let moved: Vec<(PathBuf, u64)> = inner
                .inos
                .iter()
                .filter(|(p, _)| p.starts_with(&from))
                .map(|(p, &i)| (p.clone(), i))
                .collect();
            for (old, ino) in moved {
                let rest = old.strip_prefix(&from).expect("under from");
                // (`join("")` would add a trailing slash.)
                let new = if rest.as_os_str().is_empty() {
                    to.clone()
                } else {
                    to.join(rest)
                };
                inner.inos.remove(&old);
                inner.inos.insert(new.clone(), ino);
                inner.paths.insert(ino, new);
            }
            Ok(())
        })();
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // Always readable: the writeback cache reads partly written pages.
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let done = self.path_of(ino).and_then(|rel| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .open(self.backing.join(rel))
                .map_err(errno)
        });
        match done {
            Ok(f) => reply.opened(
                FileHandle(self.new_handle(ino.0, f)),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let done = (|| -> Res<(FileAttr, u64)> {
            let rel = self.child(parent, name)?;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .create_new(flags & libc::O_EXCL != 0)
                .truncate(flags & libc::O_TRUNC != 0)
                .mode(mode & !umask & 0o7777)
                .open(self.backing.join(&rel))
                .map_err(errno)?;
            let a = attr(self.ino_for(&rel), &f.metadata().map_err(errno)?);
            let fh = self.new_handle(a.ino.0, f);
            Ok((a, fh))
        })();
        match done {
            Ok((a, fh)) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self
            .handle_file(fh)
            .and_then(|f| read_at(&f, offset, size as usize).map_err(errno))
        {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let done = self.handle_file(fh).and_then(|f| {
            self.record(ino.0, &f, offset, data.len() as u64)?;
            f.write_all_at(data, offset).map_err(errno)
        });
        match done {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.inner().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fsync_handle(fh, datasync, req.pid()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self.path_of(ino).and_then(|rel| {
            let mut names = Vec::new();
            for e in std::fs::read_dir(self.backing.join(&rel)).map_err(errno)? {
                let e = e.map_err(errno)?;
                let kind = if e.file_type().map_err(errno)?.is_dir() {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                names.push((self.ino_for(&rel.join(e.file_name())), kind, e.file_name()));
            }
            names.sort_by(|a, b| a.2.cmp(&b.2));
            Ok(names)
        });
        let names = match listed {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".").to_owned()),
            (ino.0, FileType::Directory, OsStr::new("..").to_owned()),
        ];
        for (i, (ino, kind, name)) in dots
            .into_iter()
            .chain(names)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.path_of(ino).and_then(|rel| {
            File::open(self.backing.join(rel))
                .and_then(|d| d.sync_all())
                .map_err(errno)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let path = std::ffi::CString::new(self.backing.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: a valid C string and a zeroed statvfs to fill.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
            return reply.error(errno(std::io::Error::last_os_error()));
        }
        reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }
}

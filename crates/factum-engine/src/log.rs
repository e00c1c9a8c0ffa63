//! The segment log: the source of truth.
//!
//! Segment files `NNNNNNNNNNNNNNNNNNNN.seg` are named by the first global
//! position they may hold and carry a dense segment number in their header.
//! A location (`Loc`) packs a segment number and a byte offset into a `u64`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use factum_core::{Error, Result};
use parking_lot::RwLock;

use crate::format::{check_frame, FrameCheck, FrameHeader, SegmentHeader, SEGMENT_HEADER_LEN};

/// A place in the log: segment number (high 24 bits) and byte offset (low 40 bits).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash, Default)]
pub struct Loc(pub u64);

impl Loc {
    /// Packs a segment number and offset.
    pub fn new(segment: u32, offset: u64) -> Loc {
        debug_assert!(offset < (1 << 40));
        Loc(((segment as u64) << 40) | offset)
    }
    /// The segment number.
    pub fn segment(self) -> u32 {
        (self.0 >> 40) as u32
    }
    /// The offset within the segment.
    pub fn offset(self) -> u64 {
        self.0 & ((1 << 40) - 1)
    }
}

/// One segment file, open for reading.
#[derive(Debug)]
pub struct Segment {
    /// Dense number.
    pub number: u32,
    /// First position it may hold.
    pub first_position: u64,
    /// Format version and feature flags from its header.
    pub format: SegmentHeader,
    /// Its path.
    pub path: PathBuf,
    /// Read handle (positional reads only, shared by readers).
    pub file: File,
    /// The block map when the segment is stored compressed (ADR 43):
    /// reads then go through it, at the same logical offsets. Loaded on
    /// open for a local file, on first read for an archived one.
    pub blocks: OnceLock<crate::compress::Blocks>,
    /// When the file is a stub: the archived object holding the segment.
    pub stub: Option<crate::archive::Stub>,
    /// The archive tier reads of a stub go through (set by the engine).
    pub tier: OnceLock<Arc<crate::archive::Tier>>,
    /// The data key of an encrypted segment (ADR 45), unwrapped by
    /// [`Segments::unlock`] or set when the segment is created.
    pub cipher: OnceLock<Arc<crate::encrypt::SegmentCipher>>,
}

impl crate::compress::Physical for Segment {
    fn read_physical(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        match &self.stub {
            None => self.file.read_physical(buf, offset).map_err(|e| match e {
                Error::Io { source, .. } => Error::io(format!("reading {}", self.path.display()), source),
                other => other,
            }),
            Some(stub) => match self.tier.get() {
                Some(tier) => tier.read(&stub.object, stub.size, buf, offset).map_err(|e| {
                    Error::unavailable(
                        factum_core::UnavailableReason::Storage,
                        format!(
                            "segment {} ({}) lives only in the archive as {}, which cannot be read: {e}",
                            self.number,
                            self.path.display(),
                            stub.object
                        ),
                    )
                }),
                None => Err(Error::unavailable(
                    factum_core::UnavailableReason::Storage,
                    format!(
                        "segment {} ({}) lives only in the archive as {}, and no archive is configured (--archive)",
                        self.number,
                        self.path.display(),
                        stub.object
                    ),
                )),
            },
        }
    }
}

impl Segment {
    /// Fills `buf` with the segment's (logical) bytes from `offset`;
    /// fewer only at its end. Returns how many. Every read of a segment's
    /// bytes goes through here, so a compressed segment reads like any
    /// other.
    pub fn read_into(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        use crate::compress::Physical;
        match self.blocks()? {
            Some(blocks) => {
                blocks.read_into(self, &self.path, self.cipher_if_encrypted()?, buf, offset)
            }
            None if self.format.encrypted() => crate::encrypt::read_pages(
                self.cipher_arc()?,
                &|b, o| self.read_physical(b, o),
                self.stored_len()?,
                buf,
                offset,
                self.stub.is_none().then_some(&self.file),
            ),
            None => self.read_physical(buf, offset),
        }
    }

    /// The data key of this encrypted segment; an error naming the segment
    /// when the store was opened without its master key.
    pub fn cipher(&self) -> Result<&crate::encrypt::SegmentCipher> {
        self.cipher_arc().map(|c| &**c)
    }

    /// [`Segment::cipher`], shared.
    pub fn cipher_arc(&self) -> Result<&Arc<crate::encrypt::SegmentCipher>> {
        self.cipher.get().ok_or_else(|| {
            Error::InvalidInput(format!(
                "{} is encrypted at rest and no master key was given (--encryption-key-file FILE, FACTUM_ENCRYPTION_KEY_FILE or FACTUM_ENCRYPTION_KEY)",
                self.path.display()
            ))
        })
    }

    /// [`Segment::cipher`] for an encrypted segment, `None` otherwise.
    pub fn cipher_if_encrypted(&self) -> Result<Option<&crate::encrypt::SegmentCipher>> {
        if self.format.encrypted() {
            self.cipher().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The block map of a compressed segment (loaded on first use for an
    /// archived one); `None` when it is not compressed.
    pub fn blocks(&self) -> Result<Option<&crate::compress::Blocks>> {
        if !self.format.compressed() {
            return Ok(None);
        }
        if let Some(b) = self.blocks.get() {
            return Ok(Some(b));
        }
        let loaded = crate::compress::Blocks::load(
            self,
            &self.path,
            self.stored_len()?,
            data_start(&self.format),
        )?;
        let _ = self.blocks.set(loaded);
        Ok(self.blocks.get())
    }

    /// Unwraps this segment's data key with `key` when it is encrypted.
    pub fn unlock(&self, key: Option<&crate::encrypt::MasterKey>) -> Result<()> {
        if self.format.encrypted() && self.cipher.get().is_none() {
            let c = crate::encrypt::unlock(&self.file, &self.path, &self.format, key)?;
            let _ = self.cipher.set(c);
        }
        Ok(())
    }

    /// Does the segment live only in the archive (its file is a stub)?
    pub fn is_archived(&self) -> bool {
        self.stub.is_some()
    }

    /// Reads exactly `len` bytes at `offset`.
    pub fn read_exact(&self, offset: u64, len: usize) -> Result<Bytes> {
        let mut buf = BytesMut::zeroed(len);
        if self.read_into(&mut buf, offset)? < len {
            return Err(Error::Corrupt {
                file: self.path.clone(),
                offset,
                detail: format!("expected {len} bytes, file ends first"),
            });
        }
        Ok(buf.freeze())
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    pub fn read_upto(&self, offset: u64, len: usize) -> Result<Bytes> {
        let mut buf = BytesMut::zeroed(len);
        let got = self.read_into(&mut buf, offset)?;
        buf.truncate(got);
        Ok(buf.freeze())
    }

    /// The bytes of the event record at `offset`: one short read, and a
    /// second only for a record longer than it.
    pub fn read_record(&self, offset: u64) -> Result<Bytes> {
        let b = self.read_upto(offset, 1024)?;
        match crate::format::StoredEvent::peek_len(&b) {
            None => Err(Error::Corrupt {
                file: self.path.clone(),
                offset,
                detail: "event record is cut short".into(),
            }),
            Some(len) if len > b.len() => self.read_exact(offset, len),
            Some(_) => Ok(b),
        }
    }

    /// The segment's (logical) length: where its frames end. For a
    /// compressed segment, the length of its uncompressed version.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> Result<u64> {
        use crate::compress::Physical;
        match self.blocks()? {
            Some(blocks) => Ok(blocks.logical_len()),
            None if self.format.encrypted() => crate::encrypt::logical_len(
                self.cipher()?,
                &|b, o| self.read_physical(b, o),
                self.stored_len()?,
            ),
            None => self.stored_len(),
        }
    }

    /// The length of the segment file as stored (compressed or not): the
    /// archived file's for a stub.
    pub fn stored_len(&self) -> Result<u64> {
        match &self.stub {
            Some(stub) => Ok(stub.size),
            None => self.local_len(),
        }
    }

    /// The length of the local file (a stub's own, for an archived segment).
    pub fn local_len(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io(format!("stat {}", self.path.display()), e))
    }
}

/// Where a segment file's data starts: after the header, and the key
/// slots of an encrypted segment.
pub fn data_start(header: &SegmentHeader) -> u64 {
    if header.encrypted() {
        crate::encrypt::KEY_AREA
    } else {
        SEGMENT_HEADER_LEN as u64
    }
}

/// The file name of a segment.
pub fn segment_file_name(first_position: u64) -> String {
    format!("{first_position:020}.seg")
}

/// The set of segments, shared by the writer and readers.
#[derive(Debug, Default)]
pub struct Segments {
    list: RwLock<Vec<Arc<Segment>>>,
    /// Held shared by every read that looks up index entries and then reads
    /// the records they point to, and exclusively by a rewrite while it
    /// commits a segment's new index entries and swaps in its new file
    /// (ADR 33): a read sees the old index and file, or the new ones.
    swap: RwLock<()>,
    /// Held by a rewrite from start to swap: one at a time (a scavenge and
    /// a compaction take turns).
    pub(crate) rewriting: parking_lot::Mutex<()>,
}

impl Segments {
    /// The segment with this number.
    pub fn get(&self, number: u32) -> Option<Arc<Segment>> {
        let list = self.list.read();
        let first = list.first()?.number;
        list.get(number.checked_sub(first)? as usize).cloned()
    }

    /// All segments, oldest first.
    pub fn all(&self) -> Vec<Arc<Segment>> {
        self.list.read().clone()
    }

    /// The newest segment.
    pub fn last(&self) -> Option<Arc<Segment>> {
        self.list.read().last().cloned()
    }

    /// Adds a new newest segment.
    pub fn push(&self, s: Arc<Segment>) {
        self.list.write().push(s);
    }

    /// Holds off segment swaps (ADR 33) while the guard lives: taken by a
    /// read around its index lookups and record reads. Never nest it.
    pub fn hold(&self) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.swap.read()
    }

    /// Waits until no read holds the segments, and keeps new ones out while
    /// the guard lives (a rewrite's commit and swap).
    pub(crate) fn exclusive(&self) -> parking_lot::RwLockWriteGuard<'_, ()> {
        self.swap.write()
    }

    /// Unwraps the data key of every encrypted segment with `key` (ADR
    /// 45): a clear error when one is encrypted and `key` is `None` or
    /// not the key its data key is wrapped by.
    pub fn unlock(&self, key: Option<&crate::encrypt::MasterKey>) -> Result<()> {
        for s in self.list.read().iter() {
            s.unlock(key)?;
        }
        Ok(())
    }

    /// Gives every archived segment the tier its reads go through.
    pub fn attach(&self, tier: &Arc<crate::archive::Tier>) {
        for s in self.list.read().iter() {
            if s.is_archived() {
                let _ = s.tier.set(tier.clone());
            }
        }
    }

    /// Replaces the segment with the same number (a rewritten file, ADR 33).
    pub(crate) fn replace(&self, s: Arc<Segment>) {
        let mut list = self.list.write();
        if let Some(first) = list.first().map(|f| f.number) {
            if let Some(slot) = s
                .number
                .checked_sub(first)
                .and_then(|i| list.get_mut(i as usize))
            {
                *slot = s;
            }
        }
    }
}

/// Opens a segment file for reading and checks its header (name and
/// header must agree).
pub fn open_segment(path: &Path) -> Result<Segment> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut hb = [0u8; SEGMENT_HEADER_LEN];
    let header = file
        .read_exact_at(&mut hb, 0)
        .map_err(|e| e.to_string())
        .and_then(|_| SegmentHeader::decode(&hb));
    let header = header.map_err(|detail| Error::Corrupt {
        file: path.to_path_buf(),
        offset: 0,
        detail,
    })?;
    let stem = path
        .file_name()
        .and_then(|s| s.to_str())
        .and_then(|s| s.get(..20))
        .unwrap_or_default();
    if stem != format!("{:020}", header.first_position) {
        return Err(Error::Corrupt {
            file: path.to_path_buf(),
            offset: 0,
            detail: format!(
                "file name does not match the header's first position {}",
                header.first_position
            ),
        });
    }
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
        .len();
    let stub = if header.archived() {
        // An encrypted segment's stub keeps its key slots before the body.
        let body_at = if header.encrypted() {
            crate::encrypt::KEY_AREA as usize
        } else {
            SEGMENT_HEADER_LEN
        };
        let mut body = vec![0u8; (len as usize).saturating_sub(body_at).min(4096)];
        file.read_exact_at(&mut body, body_at as u64)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Some(
            crate::archive::Stub::decode(&body).map_err(|detail| Error::Corrupt {
                file: path.to_path_buf(),
                offset: body_at as u64,
                detail,
            })?,
        )
    } else {
        None
    };
    let blocks = OnceLock::new();
    if header.compressed() && stub.is_none() {
        let _ = blocks.set(crate::compress::Blocks::load(
            &file,
            path,
            len,
            data_start(&header),
        )?);
    }
    Ok(Segment {
        number: header.number,
        first_position: header.first_position,
        format: header,
        path: path.to_path_buf(),
        file,
        blocks,
        stub,
        tier: OnceLock::new(),
        cipher: OnceLock::new(),
    })
}

/// Removes segments whose creation a crash interrupted (`*.seg.tmp`: never
/// renamed into place, so nothing was ever written to them). The engine
/// calls it on open, under the directory lock; segment listing ignores them.
pub fn remove_interrupted_segments(dir: &Path) -> Result<()> {
    let rd =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(SEGMENT_TMP_SUFFIX) || n.ends_with(STUB_TMP_SUFFIX))
        {
            let tmp = entry.path();
            std::fs::remove_file(&tmp)
                .map_err(|e| Error::io(format!("removing {}", tmp.display()), e))?;
            tracing::warn!(file = %tmp.display(), "removed a segment whose creation was interrupted");
        }
    }
    Ok(())
}

/// Opens every segment in `dir` and checks that their numbers are dense.
/// Creates segment 0 in an empty store.
pub fn open_segments(dir: &Path) -> Result<Segments> {
    open_segments_with(dir, None)
}

/// [`open_segments`]; segment 0 of an empty store is created encrypted
/// under `key` when one is given (the keys of existing segments are
/// unwrapped by [`Segments::unlock`]).
pub fn open_segments_with(dir: &Path, key: Option<&crate::encrypt::MasterKey>) -> Result<Segments> {
    let mut found = Vec::new();
    let rd =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".seg") {
            if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    let segments = Segments::default();
    if found.is_empty() {
        segments.push(Arc::new(create_segment(dir, 0, 0, key)?));
        return Ok(segments);
    }
    let mut expected_number = None;
    for path in found {
        let segment = open_segment(&path)?;
        let header = segment.format;
        if let Some(n) = expected_number {
            if header.number != n {
                return Err(Error::Corrupt {
                    file: path.clone(),
                    offset: 0,
                    detail: format!(
                        "segment number {} follows segment {}: segment(s) {}..{} are missing",
                        header.number,
                        n - 1,
                        n,
                        header.number
                    ),
                });
            }
        }
        expected_number = Some(header.number + 1);
        segments.push(Arc::new(segment));
    }
    Ok(segments)
}

/// Suffix of a segment being created (never read; removed on open).
pub const SEGMENT_TMP_SUFFIX: &str = ".seg.tmp";
/// Suffix of a stub being written before it replaces an archived
/// segment's file (never read; removed on open, the segment's file stays).
pub const STUB_TMP_SUFFIX: &str = ".seg.stub";

/// Creates a segment file with its header, durably: the header is written
/// and fsynced under a temporary name, which is then renamed to the
/// segment's name and the directory fsynced. A crash at any point leaves
/// either no segment or a complete header, never a segment without one.
pub fn create_segment(
    dir: &Path,
    number: u32,
    first_position: u64,
    key: Option<&crate::encrypt::MasterKey>,
) -> Result<Segment> {
    let path = dir.join(segment_file_name(first_position));
    if path.exists() {
        return Err(Error::io(
            format!("creating {}", path.display()),
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        ));
    }
    let tmp = dir.join(format!("{:020}{SEGMENT_TMP_SUFFIX}", first_position));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    let mut format = SegmentHeader::new(number, first_position);
    let mut first_bytes = Vec::with_capacity(crate::encrypt::KEY_AREA as usize);
    let cipher = OnceLock::new();
    if let Some(key) = key {
        format.features |= crate::format::FEATURE_ENCRYPTED;
        let (c, area) = crate::encrypt::new_key_area(&format, key)?;
        first_bytes.extend_from_slice(&format.encode());
        first_bytes.extend_from_slice(&area);
        let _ = cipher.set(c);
    } else {
        first_bytes.extend_from_slice(&format.encode());
    }
    f.write_all(&first_bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing header of {}", tmp.display()), e))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(|e| {
        Error::io(
            format!("renaming {} to {}", tmp.display(), path.display()),
            e,
        )
    })?;
    sync_dir(dir)?;
    let file =
        File::open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    Ok(Segment {
        number,
        first_position,
        format,
        path,
        file,
        blocks: OnceLock::new(),
        stub: None,
        tier: OnceLock::new(),
        cipher,
    })
}

/// fsyncs a directory so new and renamed entries in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync of directory {}", dir.display()), e))
}

/// Reads frames of one segment sequentially in large chunks, into one
/// buffer reused for the whole scan.
pub struct FrameReader {
    segment: Arc<Segment>,
    /// File offset of `buf[0]`.
    buf_offset: u64,
    buf: Vec<u8>,
    /// Valid bytes in `buf`.
    buf_len: usize,
    /// Offset of the next frame.
    offset: u64,
    /// Do not read at or past this offset.
    limit: u64,
}

/// What [`FrameReader::next_frame`] found.
pub enum Scanned<'a> {
    /// A valid frame at this offset.
    Frame {
        /// Where it starts.
        offset: u64,
        /// Its header.
        header: FrameHeader,
        /// Exactly the frame's bytes (valid until the next call).
        bytes: &'a [u8],
    },
    /// The limit was reached exactly.
    End,
    /// The bytes at `offset` are not a complete frame.
    Incomplete {
        /// Where.
        offset: u64,
    },
    /// The bytes at `offset` are a complete but invalid frame.
    Invalid {
        /// Where.
        offset: u64,
        /// Why.
        detail: String,
    },
}

const CHUNK: usize = 1 << 20;

impl FrameReader {
    /// Reads `segment` from `offset` up to `limit`.
    pub fn new(segment: Arc<Segment>, offset: u64, limit: u64) -> Self {
        FrameReader {
            segment,
            buf_offset: offset,
            buf: Vec::new(),
            buf_len: 0,
            offset,
            limit,
        }
    }

    /// The segment being read.
    pub fn segment(&self) -> &Arc<Segment> {
        &self.segment
    }

    /// Offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn start(&self) -> usize {
        ((self.offset - self.buf_offset) as usize).min(self.buf_len)
    }

    fn refill(&mut self, need: usize) -> Result<()> {
        let want = need.max(CHUNK).min((self.limit - self.offset) as usize);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let got = self.segment.read_into(&mut self.buf[..want], self.offset)?;
        self.buf_len = got;
        self.buf_offset = self.offset;
        Ok(())
    }

    /// The next frame, checked.
    pub fn next_frame(&mut self) -> Result<Scanned<'_>> {
        if self.offset >= self.limit {
            return Ok(Scanned::End);
        }
        let mut need = crate::format::FRAME_HEADER_LEN;
        loop {
            let avail = &self.buf[self.start()..self.buf_len];
            let have_all = self.buf_offset + self.buf_len as u64 >= self.limit;
            if avail.len() >= need || have_all {
                match check_frame(avail) {
                    FrameCheck::Valid(header) => {
                        let start = self.start();
                        let offset = self.offset;
                        self.offset += header.len as u64;
                        let bytes = &self.buf[start..start + header.len as usize];
                        return Ok(Scanned::Frame {
                            offset,
                            header,
                            bytes,
                        });
                    }
                    FrameCheck::Invalid(detail) => {
                        return Ok(Scanned::Invalid {
                            offset: self.offset,
                            detail,
                        })
                    }
                    FrameCheck::Incomplete if have_all => {
                        return Ok(Scanned::Incomplete {
                            offset: self.offset,
                        })
                    }
                    FrameCheck::Incomplete
                        if avail.len() >= crate::format::FRAME_HEADER_LEN
                            && FrameHeader::peek(avail).is_none() =>
                    {
                        // A zero header (preallocated space, ADR 10): no
                        // amount of further bytes makes it a frame.
                        return Ok(Scanned::Incomplete {
                            offset: self.offset,
                        });
                    }
                    FrameCheck::Incomplete => {
                        let want = FrameHeader::peek(avail).map_or(need, |h| h.len as usize);
                        need = if want > avail.len() {
                            want
                        } else {
                            avail.len() + 1
                        };
                    }
                }
            }
            self.refill(need)?;
        }
    }
}

/// Are bytes `offset..len` of `segment` all zero? Zeros after the last
/// frame of the active segment are preallocated space (ADR 10), not a torn
/// batch: a write always starts with a frame's non-zero magic.
pub fn all_zero(segment: &Arc<Segment>, offset: u64, len: u64) -> Result<bool> {
    let mut at = offset;
    while at < len {
        let chunk = segment.read_upto(at, CHUNK.min((len - at) as usize))?;
        if chunk.is_empty() {
            break;
        }
        if chunk.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += chunk.len() as u64;
    }
    Ok(true)
}

/// What follows the last valid frame of the active segment, when the bytes
/// at `offset` are not a valid frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Tail {
    /// Zeros to the end of the file: preallocated space (ADR 10), the end
    /// of the log.
    Free,
    /// The last write group was only partly written (a crash or power loss
    /// before its fdatasync returned, so none of it was acknowledged): the
    /// log ends at `offset` and the rest is cut.
    Torn,
    /// A valid frame at `valid_at` cannot belong to the damaged write group:
    /// the damage is in data that was acknowledged. Nothing may be cut.
    Damaged {
        /// Where the valid frame is.
        valid_at: u64,
        /// Why it proves the damage was acknowledged.
        detail: String,
    },
}

/// Tells a torn last write group from damage before it (docs/format.md,
/// "Recovery"). `next_position` is the position the frame at `offset`
/// should start with.
///
/// Only one write group is ever in flight: the writer writes a group and
/// fdatasyncs it before it writes the next. Power loss may persist any
/// subset of that group's pages, so valid frames of the group may follow a
/// damaged one; they all link to a group that starts at or before
/// `next_position`. A valid frame of a later group proves that the damaged
/// group was complete and acknowledged. In a segment without group frames
/// (format version 1) every valid frame after the damage is such proof.
pub fn classify_tail(
    segment: &Arc<Segment>,
    offset: u64,
    file_len: u64,
    next_position: u64,
) -> Result<Tail> {
    if all_zero(segment, offset, file_len)? {
        return Ok(Tail::Free);
    }
    let grouped = segment.format.group_frames();
    let mut from = offset + 1;
    while let Some((at, h)) = valid_frame_after(segment, from, file_len)? {
        let detail = if !grouped {
            Some(
                "a valid frame follows (this segment's format cannot tell write groups apart)"
                    .to_string(),
            )
        } else if h.first_position < next_position {
            Some(format!(
                "a valid frame of positions already in the log ({}) follows",
                h.first_position
            ))
        } else {
            match h.group_first_position() {
                Some(g) if g <= next_position => None,
                _ => Some(format!(
                    "a valid frame of a later write group (positions from {}) follows, so the damaged group had been acknowledged",
                    h.first_position
                )),
            }
        };
        if let Some(detail) = detail {
            return Ok(Tail::Damaged {
                valid_at: at,
                detail,
            });
        }
        from = at + h.len as u64;
    }
    Ok(Tail::Torn)
}

/// The first valid frame in `segment` at or after `from`, found by its
/// magic (frames after damage cannot be reached by walking lengths).
fn valid_frame_after(
    segment: &Arc<Segment>,
    from: u64,
    file_len: u64,
) -> Result<Option<(u64, FrameHeader)>> {
    let magic = crate::format::FRAME_MAGIC.to_le_bytes();
    let mut at = from;
    while at + crate::format::FRAME_HEADER_LEN as u64 <= file_len {
        let chunk = segment.read_upto(at, CHUNK + 3)?;
        for i in 0..chunk.len().saturating_sub(3) {
            if chunk[i..i + 4] == magic {
                let cand = at + i as u64;
                let h = segment.read_upto(cand, crate::format::FRAME_HEADER_LEN)?;
                if let Some(h) = FrameHeader::peek(&h) {
                    if cand + h.len as u64 <= file_len {
                        let b = segment.read_upto(cand, h.len as usize)?;
                        if let FrameCheck::Valid(h) = check_frame(&b) {
                            return Ok(Some((cand, h)));
                        }
                    }
                }
            }
        }
        at += CHUNK as u64;
    }
    Ok(None)
}

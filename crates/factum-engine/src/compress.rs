//! Compressed sealed segments (issue 18, ADR 43; the bytes in
//! `docs/format.md`).
//!
//! A compressed segment keeps the *logical* bytes of its uncompressed
//! version — the same frames at the same offsets — cut into blocks of
//! [`BLOCK_BYTES`] each compressed on its own with zstd. The file is the
//! 32-byte segment header (flag `COMPRESSED`), the compressed blocks, a
//! block index (physical offset, compressed length and CRC32C of each
//! block) and a fixed footer that locates and checks the index. Because
//! logical offsets do not change, every index entry, `Loc`, reader, the
//! verifier and recovery work on a compressed segment as on any other: the
//! segment maps a logical read onto the blocks that cover it
//! ([`Blocks::read_into`]). A point read decompresses one block (which the
//! reader's block cache then keeps at that size); a scan
//! streams blocks. Each block's CRC is checked before it is decompressed,
//! and every record inside still carries its own CRC.
//!
//! The active segment is never compressed: a segment is compressed by the
//! crash-safe rewrite (`rewrite.rs`) once sealed.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use factum_core::{Error, Result};
use parking_lot::Mutex;

use crate::encrypt::{SegmentCipher, BLOCK_OVERHEAD};
use crate::format::SEGMENT_HEADER_LEN;

/// Logical bytes per compressed block. The read cache keeps a compressed
/// segment's blocks at this size, so a point read through the index
/// decompresses one 16 KiB block (a 64 KiB one cost 3× the p99 of an
/// uncompressed read on random stream reads; ADR 43 has the figures).
pub const BLOCK_BYTES: usize = 16 * 1024;
/// Footer magic (`FCTZ`).
pub const FOOTER_MAGIC: [u8; 4] = *b"FCTZ";
/// Size of the footer.
pub const FOOTER_LEN: usize = 40;
/// Size of one block index entry.
pub const INDEX_ENTRY_LEN: usize = 16;
/// zstd level: 3 is zstd's default, a good ratio at several hundred MB/s.
pub const LEVEL: i32 = 3;

/// The last blocks decompressed: (block number, its bytes).
type Recent = [Option<(usize, Arc<Vec<u8>>)>; 2];

/// Reads a file's bytes as stored (a local file, or an archived segment
/// through the archive tier's cache).
pub trait Physical {
    /// Fills `buf` from `offset`; fewer bytes only at the end.
    fn read_physical(&self, buf: &mut [u8], offset: u64) -> Result<usize>;
}

impl Physical for File {
    fn read_physical(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("reading a segment file", e)),
            }
        }
        Ok(got)
    }
}

fn read_exact(file: &dyn Physical, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    if file.read_physical(buf, offset)? < buf.len() {
        return Err(corrupt(
            path,
            offset,
            format!("expected {} bytes, the file ends first", buf.len()),
        ));
    }
    Ok(())
}

/// Threads a scan decompresses with: the machine's cores, at most 4.
pub(crate) fn scan_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4)
    })
}

/// Where one block lives in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BlockEntry {
    offset: u64,
    len: u32,
    crc: u32,
}

/// The block map of a compressed segment, read from its footer on open.
#[derive(Debug)]
pub struct Blocks {
    logical_len: u64,
    entries: Vec<BlockEntry>,
    /// The last blocks decompressed, so a scan whose reads straddle a
    /// block boundary decompresses each block once.
    recent: Mutex<Recent>,
}

fn corrupt(path: &Path, offset: u64, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        file: path.to_path_buf(),
        offset,
        detail: detail.into(),
    }
}

impl Blocks {
    /// Reads and checks the footer and block index of the compressed
    /// segment `file` (physical length `file_len`), whose first block
    /// starts at `data_start` (after the header, and the key slots of an
    /// encrypted segment).
    pub fn load(
        file: &dyn Physical,
        path: &Path,
        file_len: u64,
        data_start: u64,
    ) -> Result<Blocks> {
        if file_len < (SEGMENT_HEADER_LEN + FOOTER_LEN) as u64 {
            return Err(corrupt(
                path,
                file_len,
                "compressed segment is too short for its footer",
            ));
        }
        let footer_at = file_len - FOOTER_LEN as u64;
        let mut footer = [0u8; FOOTER_LEN];
        read_exact(file, path, &mut footer, footer_at)?;
        if footer[0..4] != FOOTER_MAGIC {
            return Err(corrupt(
                path,
                footer_at,
                "compressed segment has no footer (bad magic): the file is cut short or damaged",
            ));
        }
        let u32_at = |o: usize| u32::from_le_bytes(footer[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(footer[o..o + 8].try_into().unwrap());
        let block_bytes = u32_at(4) as usize;
        let count = u32_at(8) as usize;
        let logical_len = u64_at(12);
        let index_at = u64_at(20);
        let crc = u32_at(28);
        let index_len = count * INDEX_ENTRY_LEN;
        if block_bytes != BLOCK_BYTES {
            return Err(corrupt(
                path,
                footer_at,
                format!("compressed block size {block_bytes} is not supported (this build uses {BLOCK_BYTES})"),
            ));
        }
        if index_at.checked_add(index_len as u64) != Some(footer_at)
            || (count as u64) != logical_len.div_ceil(BLOCK_BYTES as u64)
        {
            return Err(corrupt(
                path,
                footer_at,
                "compressed segment footer does not match the file's length",
            ));
        }
        let mut index = vec![0u8; index_len];
        read_exact(file, path, &mut index, index_at)?;
        let mut h = crc32c::crc32c(&index);
        h = crc32c::crc32c_append(h, &footer[0..28]);
        if h != crc {
            return Err(corrupt(
                path,
                index_at,
                "compressed segment block index checksum mismatch",
            ));
        }
        let mut entries = Vec::with_capacity(count);
        let mut expect = data_start;
        for (i, e) in index.chunks_exact(INDEX_ENTRY_LEN).enumerate() {
            let entry = BlockEntry {
                offset: u64::from_le_bytes(e[0..8].try_into().unwrap()),
                len: u32::from_le_bytes(e[8..12].try_into().unwrap()),
                crc: u32::from_le_bytes(e[12..16].try_into().unwrap()),
            };
            if entry.offset != expect {
                return Err(corrupt(
                    path,
                    index_at + (i * INDEX_ENTRY_LEN) as u64,
                    format!("block {i} of the compressed segment is not where the index says"),
                ));
            }
            expect += entry.len as u64;
            entries.push(entry);
        }
        if expect != index_at {
            return Err(corrupt(
                path,
                index_at,
                "compressed blocks do not end where the block index starts",
            ));
        }
        Ok(Blocks {
            logical_len,
            entries,
            recent: Mutex::new([None, None]),
        })
    }

    /// Length of the uncompressed (logical) segment.
    pub fn logical_len(&self) -> u64 {
        self.logical_len
    }

    /// Number of blocks.
    pub fn block_count(&self) -> usize {
        self.entries.len()
    }

    /// Block `i`, decompressed and checked.
    fn block(
        &self,
        file: &dyn Physical,
        path: &Path,
        cipher: Option<&SegmentCipher>,
        i: usize,
    ) -> Result<Arc<Vec<u8>>> {
        {
            let recent = self.recent.lock();
            for (n, b) in recent.iter().flatten() {
                if *n == i {
                    return Ok(b.clone());
                }
            }
        }
        let e = self.entries[i];
        let mut raw = vec![0u8; e.len as usize];
        if file.read_physical(&mut raw, e.offset)? < raw.len() {
            return Err(corrupt(
                path,
                e.offset,
                format!("compressed block {i} is cut short"),
            ));
        }
        // Checked and decompressed as a scan's blocks are.
        let mut plain = vec![0u8; self.block_len(i)];
        let mut d = zstd::bulk::Decompressor::new().map_err(|e| Error::io("starting zstd", e))?;
        self.decompress_run(path, &mut d, cipher, &raw, e.offset, i, i + 1, &mut plain)?;
        let plain = Arc::new(plain);
        let mut recent = self.recent.lock();
        recent.swap(0, 1);
        recent[0] = Some((i, plain.clone()));
        Ok(plain)
    }

    /// Logical bytes in block `i` (the last one may be shorter).
    fn block_len(&self, i: usize) -> usize {
        (self.logical_len - (i * BLOCK_BYTES) as u64).min(BLOCK_BYTES as u64) as usize
    }

    /// Decompresses blocks `first..` that fit whole into `out` (at least
    /// one, at most 1 MiB of compressed bytes read at once); returns the
    /// logical bytes written.
    #[allow(clippy::too_many_arguments)]
    fn whole_blocks(
        &self,
        file: &dyn Physical,
        path: &Path,
        cipher: Option<&SegmentCipher>,
        d: &mut zstd::bulk::Decompressor<'static>,
        first: usize,
        out: &mut [u8],
    ) -> Result<usize> {
        let mut end = first;
        let (mut room, mut raw_len) = (out.len(), 0usize);
        while end < self.entries.len()
            && room >= self.block_len(end)
            && (end == first || raw_len + (self.entries[end].len as usize) <= 1 << 20)
        {
            room -= self.block_len(end);
            raw_len += self.entries[end].len as usize;
            end += 1;
        }
        let start = self.entries[first].offset;
        let mut raw = vec![0u8; raw_len];
        if file.read_physical(&mut raw, start)? < raw_len {
            return Err(corrupt(
                path,
                start,
                format!("compressed block {first} is cut short"),
            ));
        }
        let written: usize = (first..end).map(|i| self.block_len(i)).sum();
        let out = &mut out[..written];
        let threads = scan_threads();
        if threads < 2 || end - first < 8 {
            self.decompress_run(path, d, cipher, &raw, start, first, end, out)?;
            return Ok(written);
        }
        // A long run: the blocks split between threads (independent blocks
        // are what make this possible), each with its own decompressor.
        let per = (end - first).div_ceil(threads);
        std::thread::scope(|scope| {
            let mut rest = out;
            let mut tasks = Vec::new();
            let mut i = first;
            while i < end {
                let j = (i + per).min(end);
                let len: usize = (i..j).map(|k| self.block_len(k)).sum();
                let (mine, tail) = std::mem::take(&mut rest).split_at_mut(len);
                rest = tail;
                let raw = &raw;
                tasks.push(scope.spawn(move || {
                    let mut d = zstd::bulk::Decompressor::new()
                        .map_err(|e| Error::io("starting zstd", e))?;
                    self.decompress_run(path, &mut d, cipher, raw, start, i, j, mine)
                }));
                i = j;
            }
            tasks.into_iter().try_for_each(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(corrupt(path, start, "decompressing a block panicked")))
            })
        })?;
        Ok(written)
    }

    /// Checks and decompresses blocks `first..end`, whose compressed bytes
    /// are in `raw` (from physical offset `start`), into `out` (exactly
    /// their logical length).
    #[allow(clippy::too_many_arguments)]
    fn decompress_run(
        &self,
        path: &Path,
        d: &mut zstd::bulk::Decompressor<'static>,
        cipher: Option<&SegmentCipher>,
        raw: &[u8],
        start: u64,
        first: usize,
        end: usize,
        out: &mut [u8],
    ) -> Result<()> {
        let mut written = 0;
        for i in first..end {
            let e = self.entries[i];
            let at = (e.offset - start) as usize;
            let z = &raw[at..at + e.len as usize];
            if crc32c::crc32c(z) != e.crc {
                return Err(corrupt(
                    path,
                    e.offset,
                    format!("compressed block {i} checksum mismatch"),
                ));
            }
            let opened;
            let z = match cipher {
                None => z,
                Some(c) => {
                    let mut sealed = z.to_vec();
                    if !c.open_block(i as u64, &mut sealed) {
                        return Err(corrupt(
                            path,
                            e.offset,
                            format!("encrypted block {i} does not open under the segment's key (damaged)"),
                        ));
                    }
                    opened = sealed;
                    &opened[crate::encrypt::BLOCK_OVERHEAD - 16..opened.len() - 16]
                }
            };
            let want = self.block_len(i);
            let n = d
                .decompress_to_buffer(z, &mut out[written..written + want])
                .map_err(|err| corrupt(path, e.offset, format!("compressed block {i}: {err}")))?;
            if n != want {
                return Err(corrupt(
                    path,
                    e.offset,
                    format!("compressed block {i} holds {n} bytes, expected {want}"),
                ));
            }
            written += want;
        }
        Ok(())
    }

    /// Fills `buf` with logical bytes from `offset`; fewer only at the end
    /// of the segment. Returns how many.
    pub fn read_into(
        &self,
        file: &dyn Physical,
        path: &Path,
        cipher: Option<&SegmentCipher>,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<usize> {
        let mut got = 0;
        let mut decompressor = None;
        while got < buf.len() {
            let at = offset + got as u64;
            if at >= self.logical_len {
                break;
            }
            let i = (at / BLOCK_BYTES as u64) as usize;
            if at.is_multiple_of(BLOCK_BYTES as u64) && buf.len() - got >= self.block_len(i) {
                // Whole blocks (a scan): one read of their compressed
                // bytes, each decompressed straight into `buf`.
                let d = match &mut decompressor {
                    Some(d) => d,
                    None => decompressor.insert(
                        zstd::bulk::Decompressor::new()
                            .map_err(|e| Error::io("starting zstd", e))?,
                    ),
                };
                got += self.whole_blocks(file, path, cipher, d, i, &mut buf[got..])?;
                continue;
            }
            let block = self.block(file, path, cipher, i)?;
            let within = (at - (i * BLOCK_BYTES) as u64) as usize;
            let n = (block.len() - within).min(buf.len() - got);
            buf[got..got + n].copy_from_slice(&block[within..within + n]);
            got += n;
        }
        Ok(got)
    }
}

/// Writes a compressed segment: logical bytes in, blocks out, then the
/// block index and footer ([`BlockWriter::finish`]).
pub struct BlockWriter {
    file: File,
    cipher: Option<Arc<SegmentCipher>>,
    path: PathBuf,
    pending: Vec<u8>,
    entries: Vec<BlockEntry>,
    physical: u64,
    logical: u64,
    out: Vec<u8>,
}

impl BlockWriter {
    /// Starts the file with its (physical) segment header, and the key
    /// slots of an encrypted one, whose blocks `cipher` seals.
    pub fn new(
        mut file: File,
        path: PathBuf,
        head: &[u8],
        cipher: Option<Arc<SegmentCipher>>,
    ) -> Result<Self> {
        file.write_all(head)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        Ok(BlockWriter {
            file,
            cipher,
            path,
            pending: Vec::with_capacity(BLOCK_BYTES),
            entries: Vec::new(),
            physical: head.len() as u64,
            logical: 0,
            out: Vec::with_capacity(1 << 20),
        })
    }

    /// Appends logical bytes.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let n = (BLOCK_BYTES - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.pending.len() == BLOCK_BYTES {
                self.seal_block()?;
            }
        }
        Ok(())
    }

    fn seal_block(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut z = zstd::bulk::compress(&self.pending, LEVEL)
            .map_err(|e| Error::io(format!("compressing {}", self.path.display()), e))?;
        if let Some(c) = &self.cipher {
            let mut sealed = vec![0u8; z.len() + BLOCK_OVERHEAD];
            sealed[BLOCK_OVERHEAD - 16..BLOCK_OVERHEAD - 16 + z.len()].copy_from_slice(&z);
            c.seal_block(self.entries.len() as u64, &mut sealed)?;
            z = sealed;
        }
        self.entries.push(BlockEntry {
            offset: self.physical,
            len: z.len() as u32,
            crc: crc32c::crc32c(&z),
        });
        self.physical += z.len() as u64;
        self.logical += self.pending.len() as u64;
        self.pending.clear();
        self.out.extend_from_slice(&z);
        if self.out.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.file
            .write_all(&self.out)
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))?;
        self.out.clear();
        Ok(())
    }

    /// Writes the last block, the block index and the footer; returns the
    /// file (not yet fsynced) and its physical length.
    pub fn finish(mut self) -> Result<(File, u64)> {
        self.seal_block()?;
        let index_at = self.physical;
        let mut tail = Vec::with_capacity(self.entries.len() * INDEX_ENTRY_LEN + FOOTER_LEN);
        for e in &self.entries {
            tail.extend_from_slice(&e.offset.to_le_bytes());
            tail.extend_from_slice(&e.len.to_le_bytes());
            tail.extend_from_slice(&e.crc.to_le_bytes());
        }
        let index_end = tail.len();
        tail.extend_from_slice(&FOOTER_MAGIC);
        tail.extend_from_slice(&(BLOCK_BYTES as u32).to_le_bytes());
        tail.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        tail.extend_from_slice(&self.logical.to_le_bytes());
        tail.extend_from_slice(&index_at.to_le_bytes());
        let crc = crc32c::crc32c(&tail);
        tail.extend_from_slice(&crc.to_le_bytes());
        tail.extend_from_slice(&[0u8; 8]);
        debug_assert_eq!(tail.len() - index_end, FOOTER_LEN);
        self.out.extend_from_slice(&tail);
        self.flush()?;
        let len = index_at + tail.len() as u64;
        Ok((self.file, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, logical: &[u8]) -> u64 {
        let file = File::create(path).unwrap();
        let header = [7u8; SEGMENT_HEADER_LEN];
        let mut w = BlockWriter::new(file, path.to_path_buf(), &header, None).unwrap();
        for chunk in logical.chunks(1000) {
            w.write(chunk).unwrap();
        }
        let (f, len) = w.finish().unwrap();
        f.sync_all().unwrap();
        len
    }

    #[test]
    fn logical_bytes_round_trip_at_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z");
        let logical: Vec<u8> = (0..(10 * BLOCK_BYTES + 1234))
            .map(|i| (i / 7 % 251) as u8)
            .collect();
        let len = write(&path, &logical);
        let file = File::open(&path).unwrap();
        assert_eq!(file.metadata().unwrap().len(), len);
        let blocks = Blocks::load(&file, &path, len, SEGMENT_HEADER_LEN as u64).unwrap();
        assert_eq!(blocks.logical_len(), logical.len() as u64);
        assert_eq!(blocks.block_count(), 11);
        for (offset, n) in [
            (0usize, 10usize),
            (BLOCK_BYTES - 5, 10),
            (BLOCK_BYTES * 2 - 1, BLOCK_BYTES + 2),
            (logical.len() - 3, 10),
            // Whole blocks (a scan), decompressed on several threads.
            (0, logical.len()),
            (BLOCK_BYTES, 9 * BLOCK_BYTES + 5),
        ] {
            let mut buf = vec![0u8; n];
            let got = blocks
                .read_into(&file, &path, None, &mut buf, offset as u64)
                .unwrap();
            let want = &logical[offset..(offset + n).min(logical.len())];
            assert_eq!(&buf[..got], want);
        }
    }

    #[test]
    fn a_damaged_block_or_footer_is_named_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z");
        let logical = vec![42u8; 10 * BLOCK_BYTES];
        let len = write(&path, &logical);
        // Flip a byte inside block 1.
        let mut bytes = std::fs::read(&path).unwrap();
        let file = File::open(&path).unwrap();
        let blocks = Blocks::load(&file, &path, len, SEGMENT_HEADER_LEN as u64).unwrap();
        let at = blocks.entries[1].offset as usize + 2;
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let blocks = Blocks::load(&file, &path, len, SEGMENT_HEADER_LEN as u64).unwrap();
        let mut buf = vec![0u8; 16];
        blocks.read_into(&file, &path, None, &mut buf, 0).unwrap();
        let err = blocks
            .read_into(&file, &path, None, &mut buf, BLOCK_BYTES as u64)
            .unwrap_err();
        assert!(err.to_string().contains("block 1 checksum"), "{err}");
        // The scan path finds it too.
        let mut all = vec![0u8; logical.len()];
        let err = blocks
            .read_into(&file, &path, None, &mut all, 0)
            .unwrap_err();
        assert!(err.to_string().contains("block 1 checksum"), "{err}");
        // A cut file has no footer.
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let err =
            Blocks::load(&file, &path, bytes.len() as u64, SEGMENT_HEADER_LEN as u64).unwrap_err();
        assert!(err.to_string().contains("footer"), "{err}");
    }
}

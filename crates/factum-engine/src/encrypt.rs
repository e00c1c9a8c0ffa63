//! Encryption at rest of segments (issue 19, ADR 45; the bytes in
//! `docs/format.md`, "Encrypted segments").
//!
//! Every segment of an encrypted store has its own random 256-bit data
//! key, wrapped by the master key in a *key slot* of the segment's first
//! 4 KiB (two slots, so `factum rekey` writes the new wrapping beside the
//! old one and a torn write never loses the key). The segment's *logical*
//! bytes — the header and the frames, at the offsets an unencrypted
//! segment would have them — are cut into pages of [`PAGE`] bytes. Each
//! page is stored in one of two 4 KiB *slots* as `seq | used | nonce |
//! ciphertext | tag` under XAES-256-GCM (factum-crypto's `xaes`: a random
//! salt per sealer and a counter, so no nonce repeats). Slots are laid out
//! in groups of [`GROUP`] pages: the first slots side by side, then the
//! second slots, so a batch's fresh pages (first versions, first slots)
//! are one contiguous write. The writer appends into the last, partly
//! filled page by writing its new version into the slot that does not
//! hold the current one, with a higher `seq`: a torn write leaves the
//! current version intact, and acknowledged bytes are never overwritten in
//! place. A reader takes the valid slot with the higher `seq`. A page
//! whose slots are both zero reads as zeros, so preallocated space (ADR
//! 10), recovery's tail classification and every offset work exactly as
//! in an unencrypted segment: this module sits below all of them. Past a
//! segment's logical end every slot is zero (preallocation, cuts, holes),
//! which is what lets a fresh page skip its second slot.
//!
//! Nonces are never derived from offsets or positions, so a recovery or
//! rewrite that writes a page again never repeats one. Compressed sealed
//! segments (ADR 43) seal each zstd block the same way (`compress.rs`).
//! Scans go through kept chunks of whole pages, opened ahead on a second
//! thread ([`read_pages`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use factum_core::{Error, Result};
use factum_crypto::seal::{open_in_place, seal_in_place, NONCE_LEN, TAG_LEN};
use factum_crypto::xaes::XaesKey;
use factum_crypto::SecretKey;
use sha2::Digest;

use crate::format::{SegmentHeader, SEGMENT_HEADER_LEN};

/// Physical bytes before the first page: the segment header and the two
/// key slots.
pub const KEY_AREA: u64 = 4096;
/// Physical bytes of one page slot.
pub const SLOT: usize = 4096;
/// Slot bytes before the nonce: `seq` (u64) and `used` (u32), 4 zero bytes.
const SLOT_HEAD: usize = 16;
/// Where a slot's body (ciphertext, or plaintext once opened in place)
/// starts.
const BODY_AT: usize = SLOT_HEAD + NONCE_LEN;
/// Logical bytes per page.
pub const PAGE: usize = SLOT - SLOT_HEAD - NONCE_LEN - TAG_LEN;
/// Physical bytes of one page (its two slots).
pub const PAIR: u64 = 2 * SLOT as u64;
/// Where the two key slots are (different 512-byte sectors).
const KEY_SLOT_AT: [u64; 2] = [64, 2048];
/// Key slot magic (`FKEY`).
const KEY_MAGIC: [u8; 4] = *b"FKEY";
/// Bytes of one key slot: magic, generation, fingerprint, nonce, wrapped
/// key, tag, CRC32C.
const KEY_SLOT_LEN: usize = 4 + 4 + 8 + NONCE_LEN + 32 + TAG_LEN + 4;
/// What sealing adds to a compressed block.
pub const BLOCK_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The master key that wraps every segment's data key, with its
/// fingerprint (8 bytes of a SHA-256 over a label and the key), which key
/// slots record so a wrong key is named rather than guessed at.
#[derive(Clone)]
pub struct MasterKey {
    key: SecretKey,
    fingerprint: [u8; 8],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.fingerprint_hex())
    }
}

impl MasterKey {
    /// Wraps a master key (from factum-crypto's providers: a key file or
    /// an environment variable; a KMS later).
    pub fn new(key: SecretKey) -> Self {
        let mut h = sha2::Sha256::new();
        h.update(b"factum master key fingerprint v1");
        h.update(key.expose());
        let digest = h.finalize();
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(&digest[..8]);
        MasterKey { key, fingerprint }
    }

    /// The fingerprint as 16 hex digits.
    pub fn fingerprint_hex(&self) -> String {
        hex(&self.fingerprint)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The data key of one segment, and what binds its pages to their place.
pub struct SegmentCipher {
    key: XaesKey,
    number: u32,
    first_position: u64,
    /// Recently opened chunks of whole pages, for scans (below).
    chunks: ChunkCache,
    /// The logical length last found and the stored length it was found
    /// for ([`logical_len`]), with a generation that every write of the
    /// file bumps before and after it (a length found while a write ran is
    /// not kept).
    len_memo: parking_lot::Mutex<(u64, Option<(u64, u64)>)>,
}

impl std::fmt::Debug for SegmentCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SegmentCipher(segment {})", self.number)
    }
}

/// What a page's two slots hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageState {
    /// Both slots are zero: free (preallocated or never written) space.
    Zero,
    /// The current version: its `seq`, logical bytes in use, and the slot
    /// (0 or 1) holding it. Its plaintext is in the caller's buffer.
    Valid {
        /// Version number (higher is newer).
        seq: u64,
        /// Logical bytes of the page in use.
        used: usize,
        /// Which slot.
        slot: usize,
    },
    /// Neither slot opens: damaged, torn (never acknowledged), or written
    /// under another key.
    Invalid,
}

/// The associated data's labels: a page, a compressed block (XAES-256-GCM,
/// ADR 45).
const PAGE_LABEL: &[u8] = b"factum page v2";
const BLOCK_LABEL: &[u8] = b"factum block v2";

fn io_err(what: String, e: std::io::Error) -> Error {
    Error::io(what, e)
}

/// Associated data: a label, the segment, the page or block, and (for a
/// page) its `seq | used`; on the stack.
struct Aad {
    buf: [u8; 64],
    len: usize,
}

impl std::ops::Deref for Aad {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl SegmentCipher {
    /// Forgets the remembered logical length (the file is being written).
    fn forget_len(&self) {
        let mut memo = self.len_memo.lock();
        memo.0 += 1;
        memo.1 = None;
    }

    fn aad(&self, label: &[u8], index: u64, extra: &[u8]) -> Aad {
        let mut a = Aad {
            buf: [0; 64],
            len: 0,
        };
        for part in [
            label,
            &self.number.to_le_bytes()[..],
            &self.first_position.to_le_bytes()[..],
            &index.to_le_bytes()[..],
            extra,
        ] {
            a.buf[a.len..a.len + part.len()].copy_from_slice(part);
            a.len += part.len();
        }
        a
    }

    /// Seals page `page`'s plaintext (`plain`, at most [`PAGE`] bytes; zeros
    /// after it) as version `seq` (≥ 1) with `used` bytes in use into `out`
    /// ([`SLOT`] bytes).
    pub fn seal_page(
        &self,
        page: u64,
        seq: u64,
        used: usize,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        debug_assert!(plain.len() <= PAGE);
        debug_assert_eq!(out.len(), SLOT);
        debug_assert!(seq >= 1);
        out[0..8].copy_from_slice(&seq.to_le_bytes());
        out[8..12].copy_from_slice(&(used as u32).to_le_bytes());
        out[12..16].fill(0);
        let aad = self.aad(PAGE_LABEL, page, &out[0..12]);
        let body_at = BODY_AT;
        out[body_at..body_at + plain.len()].copy_from_slice(plain);
        out[body_at + plain.len()..body_at + PAGE].fill(0);
        let mut nonce = [0u8; NONCE_LEN];
        let tag = self
            .key
            .seal_in_place(&aad, &mut nonce, &mut out[body_at..body_at + PAGE])
            .map_err(|e| Error::io("encrypting a segment page", std::io::Error::other(e)))?;
        out[SLOT_HEAD..body_at].copy_from_slice(&nonce);
        out[body_at + PAGE..].copy_from_slice(&tag);
        Ok(())
    }

    /// Opens one slot of page `page` in place (its body becomes the
    /// plaintext, at `BODY_AT..BODY_AT + PAGE`): `Some((seq, used))`.
    fn open_slot_in_place(&self, page: u64, slot: &mut [u8]) -> Option<(u64, usize)> {
        let seq = u64::from_le_bytes(slot[0..8].try_into().unwrap());
        let used = u32::from_le_bytes(slot[8..12].try_into().unwrap()) as usize;
        if seq == 0 || used > PAGE || slot[12..16] != [0; 4] {
            return None;
        }
        let aad = self.aad(PAGE_LABEL, page, &slot[0..12]);
        let nonce: [u8; NONCE_LEN] = slot[SLOT_HEAD..BODY_AT].try_into().unwrap();
        let tag: [u8; TAG_LEN] = slot[BODY_AT + PAGE..].try_into().unwrap();
        self.key
            .open_in_place(&aad, &nonce, &mut slot[BODY_AT..BODY_AT + PAGE], &tag)
            .then_some((seq, used))
    }

    /// Decodes page `page` from its two slots (`pair`: the first slot, then
    /// the second, up to [`PAIR`] bytes; a missing tail reads as zeros)
    /// into `plain` ([`PAGE`] bytes, zeroed unless the page is valid).
    pub fn open_page(&self, page: u64, pair: &[u8], plain: &mut [u8]) -> PageState {
        let mut copy = vec![0u8; PAIR as usize];
        let n = pair.len().min(PAIR as usize);
        copy[..n].copy_from_slice(&pair[..n]);
        let (a, b) = copy.split_at_mut(SLOT);
        let state = self.open_page_in_place(page, a, b);
        match state {
            PageState::Valid { slot, .. } => {
                let opened = if slot == 0 { &*a } else { &*b };
                plain.copy_from_slice(&opened[BODY]);
            }
            PageState::Zero | PageState::Invalid => plain.fill(0),
        }
        state
    }

    /// [`SegmentCipher::open_page`] in place: the page's slots `a` and `b`
    /// ([`SLOT`] bytes each) are decrypted where they lie; a valid page's
    /// plaintext is at [`BODY`] of its slot. The other slot may be
    /// overwritten.
    pub fn open_page_in_place(&self, page: u64, a: &mut [u8], b: &mut [u8]) -> PageState {
        debug_assert_eq!((a.len(), b.len()), (SLOT, SLOT));
        let seq_of = |s: &[u8]| u64::from_le_bytes(s[0..8].try_into().unwrap());
        let (s0, s1) = (seq_of(a), seq_of(b));
        // A version has seq ≥ 1: a slot whose seq is 0 holds none (zeros,
        // or a torn write), and need not be tried.
        let order: &[usize] = match (s0 == 0, s1 == 0) {
            (true, true) => {
                return if a.iter().chain(b.iter()).all(|&x| x == 0) {
                    PageState::Zero
                } else {
                    PageState::Invalid
                };
            }
            (true, false) => &[1],
            (false, true) => &[0],
            // The higher version first; the other when it does not open (a
            // torn write of the newer one).
            _ if s1 > s0 => &[1, 0],
            _ => &[0, 1],
        };
        for &s in order {
            let slot = if s == 0 { &mut *a } else { &mut *b };
            if let Some((seq, used)) = self.open_slot_in_place(page, slot) {
                return PageState::Valid { seq, used, slot: s };
            }
        }
        PageState::Invalid
    }

    /// Seals a compressed block in place: `buf` is `nonce | body | tag`
    /// with room for both ([`BLOCK_OVERHEAD`] more than the body).
    pub fn seal_block(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        let aad = self.aad(BLOCK_LABEL, block, &[]);
        let n = buf.len();
        let mut nonce = [0u8; NONCE_LEN];
        let tag = self
            .key
            .seal_in_place(&aad, &mut nonce, &mut buf[NONCE_LEN..n - TAG_LEN])
            .map_err(|e| Error::io("encrypting a segment block", std::io::Error::other(e)))?;
        buf[..NONCE_LEN].copy_from_slice(&nonce);
        buf[n - TAG_LEN..].copy_from_slice(&tag);
        Ok(())
    }

    /// Opens a sealed block in place; the body is `buf[NONCE_LEN..len -
    /// TAG_LEN]` when it returns true.
    pub fn open_block(&self, block: u64, buf: &mut [u8]) -> bool {
        if buf.len() < BLOCK_OVERHEAD {
            return false;
        }
        let aad = self.aad(BLOCK_LABEL, block, &[]);
        let n = buf.len();
        let nonce: [u8; NONCE_LEN] = buf[..NONCE_LEN].try_into().unwrap();
        let tag: [u8; TAG_LEN] = buf[n - TAG_LEN..].try_into().unwrap();
        self.key
            .open_in_place(&aad, &nonce, &mut buf[NONCE_LEN..n - TAG_LEN], &tag)
    }
}

/// Where, in a slot opened in place, the plaintext lies.
pub const BODY: std::ops::Range<usize> = BODY_AT..BODY_AT + PAGE;

/// Pages of a segment per *group*: a group stores the first slots of its
/// pages in one run, then their second slots in another, so the fresh
/// pages of a batch (their first versions, in first slots) are one
/// contiguous write, and a scan reads whole groups.
pub const GROUP: u64 = 64;
/// Physical bytes of one group.
pub const GROUP_BYTES: u64 = GROUP * PAIR;

/// The physical offset of slot `slot` (0 or 1) of segment page `page`.
pub fn slot_offset(page: u64, slot: usize) -> u64 {
    KEY_AREA + (page / GROUP) * GROUP_BYTES + (slot as u64 * GROUP + page % GROUP) * SLOT as u64
}

/// Where slot `slot` of page `page` lies in a buffer of whole groups from
/// the one holding page `base`.
fn slot_in(base: u64, page: u64, slot: usize) -> usize {
    (slot_offset(page, slot) - slot_offset(base - base % GROUP, 0)) as usize
}

/// The two slots of page `page` in a buffer of whole groups from the one
/// holding page `base`.
fn slots_in(buf: &mut [u8], base: u64, page: u64) -> (&mut [u8], &mut [u8]) {
    let a = slot_in(base, page, 0);
    let b = slot_in(base, page, 1);
    let (lo, hi) = buf.split_at_mut(b);
    (&mut lo[a..a + SLOT], &mut hi[..SLOT])
}

/// Pages of a segment file `stored_len` bytes long: its whole groups (the
/// last one may end early on disk; what is missing reads as zeros).
pub fn pages_in_file(stored_len: u64) -> u64 {
    if stored_len <= KEY_AREA {
        return 0;
    }
    (stored_len - KEY_AREA).div_ceil(GROUP_BYTES) * GROUP
}

/// The physical offset of an index page's pair (the index keeps its
/// slots side by side: redb writes pages anywhere, one at a time).
pub fn pair_offset(page: u64) -> u64 {
    KEY_AREA + page * PAIR
}

/// The page holding logical offset `offset` (≥ the header) and the offset
/// within it.
pub fn page_of(offset: u64) -> (u64, usize) {
    let pos = offset - SEGMENT_HEADER_LEN as u64;
    (pos / PAGE as u64, (pos % PAGE as u64) as usize)
}

/// The logical offset where page `page` starts.
pub fn page_start(page: u64) -> u64 {
    SEGMENT_HEADER_LEN as u64 + page * PAGE as u64
}

/// Pages holding logical bytes `[.., len)` of a segment.
fn pages_for(len: u64) -> u64 {
    if len <= SEGMENT_HEADER_LEN as u64 {
        return 0;
    }
    (len - SEGMENT_HEADER_LEN as u64).div_ceil(PAGE as u64)
}

/// Physical length of a segment file holding logical bytes `[.., len)`:
/// whole groups.
pub fn physical_len(len: u64) -> u64 {
    KEY_AREA + pages_for(len).div_ceil(GROUP) * GROUP_BYTES
}

/// Reads `buf.len()` bytes at `offset`, or up to the file's end (the rest
/// of `buf` zero then).
fn read_fully(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[got..].fill(0);
    Ok(())
}

// ---- key slots -----------------------------------------------------------

fn key_aad(header: &SegmentHeader, generation: u32, fingerprint: &[u8]) -> Vec<u8> {
    let mut aad = b"factum segment key v1".to_vec();
    aad.extend_from_slice(&header.number.to_le_bytes());
    aad.extend_from_slice(&header.first_position.to_le_bytes());
    aad.extend_from_slice(&generation.to_le_bytes());
    aad.extend_from_slice(fingerprint);
    aad
}

/// One key slot as found on disk.
#[derive(Clone, Copy, Debug)]
struct KeySlot {
    generation: u32,
    fingerprint: [u8; 8],
    bytes: [u8; KEY_SLOT_LEN],
}

fn decode_key_slot(b: &[u8]) -> Option<KeySlot> {
    if b[0..4] != KEY_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[KEY_SLOT_LEN - 4..KEY_SLOT_LEN].try_into().unwrap());
    if crc32c::crc32c(&b[..KEY_SLOT_LEN - 4]) != crc {
        return None;
    }
    Some(KeySlot {
        generation: u32::from_le_bytes(b[4..8].try_into().unwrap()),
        fingerprint: b[8..16].try_into().unwrap(),
        bytes: b[..KEY_SLOT_LEN].try_into().unwrap(),
    })
}

fn encode_key_slot(
    header: &SegmentHeader,
    generation: u32,
    master: &MasterKey,
    data_key: &SecretKey,
) -> Result<[u8; KEY_SLOT_LEN]> {
    let mut b = [0u8; KEY_SLOT_LEN];
    b[0..4].copy_from_slice(&KEY_MAGIC);
    b[4..8].copy_from_slice(&generation.to_le_bytes());
    b[8..16].copy_from_slice(&master.fingerprint);
    let aad = key_aad(header, generation, &master.fingerprint);
    let body = 16 + NONCE_LEN;
    b[body..body + 32].copy_from_slice(data_key.expose());
    let mut nonce = [0u8; NONCE_LEN];
    let tag = seal_in_place(&master.key, &aad, &mut nonce, &mut b[body..body + 32])
        .map_err(|e| Error::io("wrapping a segment key", std::io::Error::other(e)))?;
    b[16..body].copy_from_slice(&nonce);
    b[body + 32..body + 32 + TAG_LEN].copy_from_slice(&tag);
    let crc = crc32c::crc32c(&b[..KEY_SLOT_LEN - 4]);
    b[KEY_SLOT_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    Ok(b)
}

fn unwrap_slot(header: &SegmentHeader, slot: &KeySlot, master: &MasterKey) -> Option<SecretKey> {
    if slot.fingerprint != master.fingerprint {
        return None;
    }
    let aad = key_aad(header, slot.generation, &slot.fingerprint);
    let body = 16 + NONCE_LEN;
    let nonce: [u8; NONCE_LEN] = slot.bytes[16..body].try_into().unwrap();
    let tag: [u8; TAG_LEN] = slot.bytes[body + 32..body + 32 + TAG_LEN]
        .try_into()
        .unwrap();
    let mut key = [0u8; 32];
    key.copy_from_slice(&slot.bytes[body..body + 32]);
    let opened = open_in_place(&master.key, &aad, &nonce, &mut key[..], &tag);
    let out = opened.then(|| SecretKey::from_bytes(key));
    key.fill(0);
    out
}

/// A fresh data key for a new segment file, and the key area (physical
/// bytes `SEGMENT_HEADER_LEN..KEY_AREA`) that carries it wrapped.
pub fn new_key_area(
    header: &SegmentHeader,
    master: &MasterKey,
) -> Result<(Arc<SegmentCipher>, Vec<u8>)> {
    let data_key = SecretKey::random()
        .map_err(|e| Error::io("creating a segment key", std::io::Error::other(e)))?;
    let mut area = vec![0u8; KEY_AREA as usize - SEGMENT_HEADER_LEN];
    let slot = encode_key_slot(header, 1, master, &data_key)?;
    let at = KEY_SLOT_AT[0] as usize - SEGMENT_HEADER_LEN;
    area[at..at + KEY_SLOT_LEN].copy_from_slice(&slot);
    Ok((
        Arc::new(SegmentCipher {
            key: XaesKey::new(&data_key),
            number: header.number,
            first_position: header.first_position,
            chunks: ChunkCache::default(),
            len_memo: parking_lot::Mutex::new((0, None)),
        }),
        area,
    ))
}

/// The key slots of an encrypted segment file (or stub).
fn read_key_slots(file: &File) -> std::io::Result<[Option<KeySlot>; 2]> {
    let mut out = [None, None];
    for (i, at) in KEY_SLOT_AT.iter().enumerate() {
        let mut b = [0u8; KEY_SLOT_LEN];
        file.read_exact_at(&mut b, *at)?;
        out[i] = decode_key_slot(&b);
    }
    Ok(out)
}

/// Unwraps the data key of the encrypted segment `file` (header `header`)
/// with `master`; a clear error naming the keys when it is not the one.
pub fn unlock(
    file: &File,
    path: &std::path::Path,
    header: &SegmentHeader,
    master: Option<&MasterKey>,
) -> Result<Arc<SegmentCipher>> {
    let slots = read_key_slots(file)
        .map_err(|e| io_err(format!("reading the key slots of {}", path.display()), e))?;
    let found: Vec<String> = slots
        .iter()
        .flatten()
        .map(|s| hex(&s.fingerprint))
        .collect();
    if found.is_empty() {
        return Err(Error::Corrupt {
            file: path.to_path_buf(),
            offset: KEY_SLOT_AT[0],
            detail: "encrypted segment has no readable key slot: its data key is lost".into(),
        });
    }
    let Some(master) = master else {
        return Err(Error::InvalidInput(format!(
            "{} is encrypted at rest (data key wrapped by master key {}); give its master key (--encryption-key-file FILE, FACTUM_ENCRYPTION_KEY_FILE or FACTUM_ENCRYPTION_KEY)",
            path.display(),
            found.join(" or ")
        )));
    };
    let mut best: Option<(u32, SecretKey)> = None;
    for slot in slots.iter().flatten() {
        if let Some(k) = unwrap_slot(header, slot, master) {
            if best.as_ref().is_none_or(|(g, _)| slot.generation > *g) {
                best = Some((slot.generation, k));
            }
        }
    }
    match best {
        Some((_, key)) => Ok(Arc::new(SegmentCipher {
            key: XaesKey::new(&key),
            number: header.number,
            first_position: header.first_position,
            chunks: ChunkCache::default(),
            len_memo: parking_lot::Mutex::new((0, None)),
        })),
        None => Err(Error::InvalidInput(format!(
            "{}: the master key given (fingerprint {}) does not unwrap this segment's data key (wrapped by master key {}): the wrong key, or a key slot was damaged",
            path.display(),
            master.fingerprint_hex(),
            found.join(" or ")
        ))),
    }
}

/// What [`rewrap`] did to one segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrapped {
    /// Its data key is now (also) wrapped by the new master key.
    Moved,
    /// It already opened under the new master key.
    Already,
}

/// Wraps the data key of the encrypted segment file at `path` under `new`
/// (`factum rekey`): written into the slot that does not hold the newest
/// wrapping under `old`, then fdatasynced. The data is not rewritten. A
/// crash leaves the old slot intact, so running it again finishes.
pub fn rewrap(
    path: &std::path::Path,
    header: &SegmentHeader,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<Rewrapped> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_err(format!("opening {}", path.display()), e))?;
    let slots = read_key_slots(&file)
        .map_err(|e| io_err(format!("reading the key slots of {}", path.display()), e))?;
    if slots
        .iter()
        .flatten()
        .any(|s| unwrap_slot(header, s, new).is_some())
    {
        return Ok(Rewrapped::Already);
    }
    let mut current: Option<(usize, u32, SecretKey)> = None;
    for (i, slot) in slots.iter().enumerate() {
        if let Some(slot) = slot {
            if let Some(k) = unwrap_slot(header, slot, old) {
                if current
                    .as_ref()
                    .is_none_or(|(_, g, _)| slot.generation > *g)
                {
                    current = Some((i, slot.generation, k));
                }
            }
        }
    }
    let Some((keep, generation, key)) = current else {
        return Err(Error::InvalidInput(format!(
            "{}: its data key opens under neither the current master key ({}) nor the new one ({})",
            path.display(),
            old.fingerprint_hex(),
            new.fingerprint_hex()
        )));
    };
    let bytes = encode_key_slot(header, generation + 1, new, &key)?;
    file.write_all_at(&bytes, KEY_SLOT_AT[1 - keep])
        .and_then(|_| file.sync_data())
        .map_err(|e| io_err(format!("writing a key slot of {}", path.display()), e))?;
    Ok(Rewrapped::Moved)
}

/// What [`rekey_store`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RekeyReport {
    /// Encrypted segments (and stubs, and the index file) whose data key
    /// is now wrapped by the new master key.
    pub moved: usize,
    /// Encrypted segments already under the new key (an earlier run).
    pub already: usize,
    /// Segments written in the clear (nothing to re-wrap).
    pub plain: usize,
}

/// `factum rekey` for segments (ADR 45): re-wraps the data key of every
/// encrypted segment of the store in `dir` (archived ones' stubs
/// included) from `old` to `new`, without rewriting data. Takes the
/// directory's lock (a running server holds it: refused). Each file is
/// changed by one slot write and an fdatasync, so an interrupted run is
/// finished by running it again.
pub fn rekey_store(dir: &std::path::Path, old: &MasterKey, new: &MasterKey) -> Result<RekeyReport> {
    let _lock = crate::engine::lock_dir(dir)?;
    let segments = crate::log::open_segments(dir)?;
    let mut report = RekeyReport::default();
    for seg in segments.all() {
        if !seg.format.encrypted() {
            report.plain += 1;
            continue;
        }
        match rewrap(&seg.path, &seg.format, old, new)? {
            Rewrapped::Moved => report.moved += 1,
            Rewrapped::Already => report.already += 1,
        }
    }
    match rewrap_index(&dir.join(crate::index::INDEX_FILE), old, new)? {
        Some(Rewrapped::Moved) => report.moved += 1,
        Some(Rewrapped::Already) => report.already += 1,
        None => {}
    }
    Ok(report)
}

// ---- the write side --------------------------------------------------------

/// The last page the writer wrote, kept so an append into it needs no read.
struct Tail {
    page: u64,
    seq: u64,
    slot: Option<usize>,
    used: usize,
    plain: Vec<u8>,
}

/// A segment file opened for writing, in logical offsets: the plain file,
/// or an encrypted one whose pages this seals (see the module doc). The
/// writer, the preallocating thread, recovery's cut and a rewrite's
/// output all write segments through it.
pub struct SegmentFile {
    file: File,
    cipher: Option<Arc<SegmentCipher>>,
    tail: Option<Tail>,
    /// The writer's buffer of sealed first slots, kept between writes.
    slots: Vec<u8>,
}

impl SegmentFile {
    /// Wraps an open file (read and write access when encrypted: an append
    /// into a partly written page reads it first).
    pub fn new(file: File, cipher: Option<Arc<SegmentCipher>>) -> Self {
        SegmentFile {
            file,
            cipher,
            tail: None,
            slots: Vec::new(),
        }
    }

    /// The file underneath.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file underneath, owned.
    pub fn into_file(self) -> File {
        self.file
    }

    /// Is it encrypted?
    pub fn encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    /// Loads page `page` as the tail (from memory when it is the tail).
    fn load(&mut self, cipher: &SegmentCipher, page: u64) -> std::io::Result<Tail> {
        if let Some(t) = self.tail.take() {
            if t.page == page {
                return Ok(t);
            }
        }
        let mut pair = vec![0u8; PAIR as usize];
        for slot in 0..2 {
            read_fully(
                &self.file,
                &mut pair[slot * SLOT..(slot + 1) * SLOT],
                slot_offset(page, slot),
            )?;
        }
        let mut plain = vec![0u8; PAGE];
        match cipher.open_page(page, &pair, &mut plain) {
            PageState::Zero => Ok(Tail {
                page,
                seq: 0,
                slot: None,
                used: 0,
                plain,
            }),
            PageState::Valid { seq, used, slot } => Ok(Tail {
                page,
                seq,
                slot: Some(slot),
                used,
                plain,
            }),
            PageState::Invalid => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("encrypted page {page} opens in neither slot (damaged, or another key)"),
            )),
        }
    }

    /// Writes `buf` at logical `offset` (at or after the header).
    pub fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let Some(cipher) = self.cipher.clone() else {
            return self.file.write_all_at(buf, offset);
        };
        debug_assert!(offset >= SEGMENT_HEADER_LEN as u64);
        cipher.forget_len();
        let r = self.write_pages(&cipher, buf, offset);
        cipher.forget_len();
        r
    }

    fn write_pages(
        &mut self,
        cipher: &Arc<SegmentCipher>,
        buf: &[u8],
        offset: u64,
    ) -> std::io::Result<()> {
        let (first, within) = page_of(offset);
        let mut rest = buf;
        let mut page = first;
        let mut slot_buf = vec![0u8; SLOT];
        if within > 0
            || self
                .tail
                .as_ref()
                .is_some_and(|t| t.page == first && t.used > 0)
        {
            // Into a partly written page: its new version goes to the slot
            // that does not hold the current one.
            let mut t = self.load(cipher, first)?;
            let n = rest.len().min(PAGE - within);
            t.plain[within..within + n].copy_from_slice(&rest[..n]);
            t.used = t.used.max(within + n);
            t.seq += 1;
            let slot = t.slot.map_or(0, |s| 1 - s);
            cipher
                .seal_page(first, t.seq, t.used, &t.plain, &mut slot_buf)
                .map_err(std::io::Error::other)?;
            self.file
                .write_all_at(&slot_buf, slot_offset(first, slot))?;
            t.slot = Some(slot);
            rest = &rest[n..];
            page += 1;
            self.tail = Some(t);
        }
        if rest.is_empty() {
            return Ok(());
        }
        // Fresh pages: their version 1 in their first slots, one write per
        // group (the first slots of a group are side by side). Their second
        // slots are zero already: past the logical end a file holds only
        // zeros (preallocation writes them, a cut writes them over what it
        // cuts, and the rest of the file is a hole).
        let pages = rest.len().div_ceil(PAGE);
        if self.slots.len() < pages * SLOT {
            self.slots.resize(pages * SLOT, 0);
        }
        let slots = &mut self.slots[..pages * SLOT];
        seal_fresh(cipher, page, rest, slots).map_err(std::io::Error::other)?;
        let mut done = 0;
        while done < pages {
            let p = page + done as u64;
            let n = ((GROUP - p % GROUP) as usize).min(pages - done);
            self.file
                .write_all_at(&slots[done * SLOT..(done + n) * SLOT], slot_offset(p, 0))?;
            done += n;
        }
        if self.slots.len() > 8 << 20 {
            self.slots = Vec::new();
        }
        let last = (pages - 1) * PAGE;
        let mut plain = vec![0u8; PAGE];
        plain[..rest.len() - last].copy_from_slice(&rest[last..]);
        self.tail = Some(Tail {
            page: page + (pages - 1) as u64,
            seq: 1,
            slot: Some(0),
            used: rest.len() - last,
            plain,
        });
        Ok(())
    }

    /// Cuts the file to logical length `len`: whole pages go, and the last
    /// kept page is written again without the cut bytes (into its other
    /// slot) when it held any.
    pub fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        let Some(cipher) = self.cipher.clone() else {
            return self.file.set_len(len);
        };
        // Kept chunks past the cut go, before and after it (a chunk opened
        // while it runs is not kept).
        cipher.chunks.clear();
        let r = self.cut(&cipher, len);
        cipher.chunks.clear();
        cipher.forget_len();
        r
    }

    fn cut(&mut self, cipher: &SegmentCipher, len: u64) -> std::io::Result<()> {
        cipher.forget_len();
        if len > SEGMENT_HEADER_LEN as u64 {
            let (page, within) = page_of(len);
            if within > 0 {
                let mut t = self.load(cipher, page)?;
                if t.used > within {
                    t.plain[within..].fill(0);
                    t.used = within;
                    t.seq += 1;
                    let slot = t.slot.map_or(0, |s| 1 - s);
                    let mut slot_buf = vec![0u8; SLOT];
                    cipher
                        .seal_page(page, t.seq, t.used, &t.plain, &mut slot_buf)
                        .map_err(std::io::Error::other)?;
                    self.file.write_all_at(&slot_buf, slot_offset(page, slot))?;
                    t.slot = Some(slot);
                }
                self.tail = Some(t);
            } else {
                self.tail = None;
            }
        } else {
            self.tail = None;
        }
        // The pages cut that share the last kept group: both their slots
        // zero (what is past the file's end reads as zeros already).
        let keep = pages_for(len);
        if !keep.is_multiple_of(GROUP) {
            let stored = self.file.metadata()?.len();
            let end = keep - keep % GROUP + GROUP;
            for slot in 0..2 {
                let from = slot_offset(keep, slot);
                let to = slot_offset(end - 1, slot) + SLOT as u64;
                if from < stored {
                    let zeros = vec![0u8; (to.min(stored) - from) as usize];
                    self.file.write_all_at(&zeros, from)?;
                }
            }
        }
        self.file.set_len(physical_len(len))
    }

    /// fdatasync.
    pub fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// fsync.
    pub fn sync_all(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

/// Seals `data`, fresh pages from `first`, as their version 1 into `out`
/// (one [`SLOT`] a page, side by side); a long run on several threads.
fn seal_fresh(cipher: &SegmentCipher, first: u64, data: &[u8], out: &mut [u8]) -> Result<()> {
    let pages = data.len().div_ceil(PAGE);
    let one = |from: usize, out: &mut [u8]| -> Result<()> {
        for (j, slot) in out.chunks_mut(SLOT).enumerate() {
            let i = from + j;
            let chunk = &data[i * PAGE..((i + 1) * PAGE).min(data.len())];
            cipher.seal_page(first + i as u64, 1, chunk.len(), chunk, slot)?;
        }
        Ok(())
    };
    let threads = crate::compress::scan_threads();
    if threads < 2 || pages < SEAL_PARALLEL_PAGES {
        return one(0, out);
    }
    let per = pages.div_ceil(threads);
    std::thread::scope(|scope| {
        let tasks: Vec<_> = out
            .chunks_mut(per * SLOT)
            .enumerate()
            .map(|(k, part)| {
                let one = &one;
                scope.spawn(move || one(k * per, part))
            })
            .collect();
        tasks.into_iter().try_for_each(|t| {
            t.join().unwrap_or_else(|_| {
                Err(Error::io(
                    "sealing segment pages",
                    std::io::Error::other("a sealing thread panicked"),
                ))
            })
        })
    })
}

/// Runs of at least this many pages are opened on several threads (below
/// it, starting threads costs more than it saves).
const PARALLEL_PAGES: usize = 64;
/// Runs of at least this many pages are sealed on several threads: a
/// batch of a few hundred KiB seals faster on the writer's thread alone
/// (AES-256-GCM, several GB/s) than two threads start.
const SEAL_PARALLEL_PAGES: usize = 256;

/// Writes zeros over logical `[start, end)` of a segment file, free
/// space ahead of the writer (preallocation, ADR 10). In an encrypted one:
/// both slots of every page from the first that starts at or after
/// `start` through the one holding `end - 1` (the page holding `start`
/// reads as zeros after its data already, and nobody writes past `end`
/// while this runs).
pub fn write_zeros(
    file: &File,
    encrypted: bool,
    start: u64,
    end: u64,
    zeros: &[u8],
) -> std::io::Result<()> {
    if !encrypted {
        return file.write_all_at(&zeros[..(end - start) as usize], start);
    }
    let (mut p, within) = page_of(start.max(SEGMENT_HEADER_LEN as u64));
    if within > 0 {
        p += 1;
    }
    let (q, _) = page_of(end.max(SEGMENT_HEADER_LEN as u64 + 1) - 1);
    // Both slots of pages p..=q: two runs per group.
    while p <= q {
        let n = (GROUP - p % GROUP).min(q + 1 - p);
        for slot in 0..2 {
            let mut at = slot_offset(p, slot);
            let stop = at + n * SLOT as u64;
            while at < stop {
                let k = (stop - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..k], at)?;
                at += k as u64;
            }
        }
        p += n;
    }
    Ok(())
}

// ---- the read side ---------------------------------------------------------

/// Fills `buf` with the logical bytes of an encrypted (page-format)
/// segment from `offset`, reading its stored bytes through `read` (the
/// local file or the archive), `stored_len` long. Fewer bytes only at the
/// end. Pages that open in neither slot read as 0xFF bytes: no frame
/// starts with them, so a torn last write looks torn to recovery and a
/// damaged page fails its frames' and records' checks, as in an
/// unencrypted segment.
pub fn read_pages(
    cipher: &Arc<SegmentCipher>,
    read: &dyn Fn(&mut [u8], u64) -> Result<usize>,
    stored_len: u64,
    buf: &mut [u8],
    offset: u64,
    file: Option<&File>,
) -> Result<usize> {
    thread_local! {
        /// A thread's buffer of pairs (decrypted in place), kept between
        /// reads.
        static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut raw = SCRATCH.take();
    let r = read_pages_with(&mut raw, cipher, read, stored_len, buf, offset, file);
    if raw.capacity() <= 4 << 20 {
        SCRATCH.set(raw);
    }
    r
}

/// [`read_pages`] with the caller's buffer.
fn read_pages_with(
    raw: &mut Vec<u8>,
    cipher: &Arc<SegmentCipher>,
    read: &dyn Fn(&mut [u8], u64) -> Result<usize>,
    stored_len: u64,
    buf: &mut [u8],
    offset: u64,
    file: Option<&File>,
) -> Result<usize> {
    let mut got = 0;
    if offset < SEGMENT_HEADER_LEN as u64 {
        let n = (SEGMENT_HEADER_LEN - offset as usize).min(buf.len());
        got = read(&mut buf[..n], offset)?;
        if got < n {
            return Ok(got);
        }
    }
    if stored_len <= KEY_AREA {
        return Ok(got);
    }
    let pages = pages_in_file(stored_len);
    // A scan (a large read) goes through whole cached chunks, and opens
    // the next chunk ahead on another thread while its caller works on
    // this one.
    let scan = buf.len() >= SCAN_READ;
    let mut uncachable = None;
    while got < buf.len() {
        let at = offset + got as u64;
        let (first, within) = page_of(at);
        if first >= pages {
            break;
        }
        let chunk = first / CHUNK_PAGES;
        if scan && uncachable != Some(chunk) {
            let text = match cipher.chunks.get(chunk) {
                Some(text) => Some(text),
                None => load_chunk(cipher, read, pages, chunk, crate::compress::scan_threads())?,
            };
            match text {
                Some(text) => {
                    if let Some(file) = file {
                        prefetch(cipher, file, pages, chunk + 1);
                    }
                    let start = (first - chunk * CHUNK_PAGES) as usize * PAGE + within;
                    got += text.copy_to(start, &mut buf[got..]);
                    continue;
                }
                None => uncachable = Some(chunk),
            }
        }
        // Up to about 1 MiB of logical bytes at once, in whole groups.
        let want_pages = ((buf.len() - got + within).div_ceil(PAGE) as u64)
            .min(pages - first)
            .min(CHUNK_PAGES) as usize;
        let base = first - first % GROUP;
        let groups = (first + want_pages as u64).div_ceil(GROUP) - base / GROUP;
        let want = (groups * GROUP_BYTES) as usize;
        if raw.len() < want {
            raw.resize(want, 0);
        }
        let raw = &mut raw[..want];
        let n = read(raw, slot_offset(base, 0))?;
        // What lies past the file's end reads as zeros.
        raw[n..].fill(0);
        let mut states = vec![PageState::Zero; want_pages];
        open_groups_in_place(
            cipher,
            base,
            raw,
            first,
            &mut states,
            crate::compress::scan_threads(),
        );
        for (i, state) in states.iter_mut().enumerate() {
            let page = first + i as u64;
            if *state == PageState::Invalid {
                // A writer may be writing one of its slots right now: read
                // the slots again before calling the page damaged.
                for _ in 0..3 {
                    let (a, b) = slots_in(raw, base, page);
                    for (slot, into) in [(0, a), (1, b)] {
                        into.fill(0);
                        read(into, slot_offset(page, slot))?;
                    }
                    let (a, b) = slots_in(raw, base, page);
                    *state = cipher.open_page_in_place(page, a, b);
                    if *state != PageState::Invalid {
                        break;
                    }
                }
            }
            let body = |slot: usize| {
                let at = slot_in(base, page, slot);
                &raw[at + BODY.start..at + BODY.end]
            };
            let (text, len): (&[u8], usize) = match *state {
                PageState::Zero => (&ZERO_PAGE, PAGE),
                PageState::Valid { used, slot, .. } if page + 1 == pages => (body(slot), used),
                PageState::Valid { slot, .. } => (body(slot), PAGE),
                PageState::Invalid => (&DAMAGED_PAGE, PAGE),
            };
            let from = if i == 0 { within } else { 0 };
            if from >= len {
                return Ok(got);
            }
            let n = (len - from).min(buf.len() - got);
            buf[got..got + n].copy_from_slice(&text[from..from + n]);
            got += n;
            if got == buf.len() || (page + 1 == pages && from + n == len) {
                return Ok(got);
            }
        }
    }
    Ok(got)
}

/// Reads at least this large are scans: they go through [`ChunkCache`].
const SCAN_READ: usize = 256 << 10;
/// Pages in a cached chunk (about 1 MiB of plaintext).
const CHUNK_PAGES: u64 = 256;
/// Chunks one segment keeps.
const CHUNKS_PER_SEGMENT: usize = 4;
/// Chunks all segments of the process keep together (memory bound: 2 MiB
/// each).
const CHUNKS_IN_ALL: usize = 32;
/// Chunks cached now, over all segments.
static CACHED_CHUNKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Buffers of dropped chunks, for the next ones (no allocation and page
/// faults per chunk).
static SPARE_BUFFERS: parking_lot::Mutex<Vec<Vec<u8>>> = parking_lot::Mutex::new(Vec::new());

/// One opened chunk: its groups, opened in place, and which slot of each
/// page holds it.
struct Chunk {
    pairs: Vec<u8>,
    slots: Vec<u8>,
}

impl Chunk {
    /// Copies the chunk's logical bytes from `start` into `out`; how many.
    fn copy_to(&self, start: usize, out: &mut [u8]) -> usize {
        let mut done = 0;
        let mut at = start;
        while done < out.len() && at < self.slots.len() * PAGE {
            let (i, within) = (at / PAGE, at % PAGE);
            let from = slot_in(0, i as u64, self.slots[i] as usize) + BODY.start + within;
            let n = (PAGE - within).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.pairs[from..from + n]);
            done += n;
            at += n;
        }
        done
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let mut spare = SPARE_BUFFERS.lock();
        if spare.len() < 4 {
            spare.push(std::mem::take(&mut self.pairs));
        }
    }
}

/// Recently opened chunks of a segment ([`CHUNK_PAGES`] pages from a
/// multiple of it): a scan that stops in the middle of one (a page of
/// `$all`) and the next scan that starts there open it once, and a scan's
/// next chunks are opened ahead on another thread while it works on this
/// one. Only chunks whose every page is full and valid are kept, and such
/// pages change only when the file is cut ([`SegmentFile::set_len`]),
/// which drops them; a chunk opened while a cut ran is not kept (the
/// generation).
#[derive(Default)]
struct ChunkCache {
    inner: parking_lot::Mutex<ChunkInner>,
    /// Signalled when a chunk opened ahead is done.
    ready: parking_lot::Condvar,
}

#[derive(Default)]
struct ChunkInner {
    generation: u64,
    chunks: std::collections::VecDeque<(u64, Arc<Chunk>)>,
    /// The chunk being opened ahead.
    ahead: Option<u64>,
}

impl ChunkCache {
    /// Chunk `chunk` if kept; when it is being opened ahead, waits for it.
    fn get(&self, chunk: u64) -> Option<Arc<Chunk>> {
        let mut inner = self.inner.lock();
        loop {
            if let Some((_, c)) = inner.chunks.iter().find(|(c, _)| *c == chunk) {
                return Some(c.clone());
            }
            if inner.ahead != Some(chunk) {
                return None;
            }
            self.ready.wait(&mut inner);
        }
    }

    fn generation(&self) -> u64 {
        self.inner.lock().generation
    }

    fn insert(&self, chunk: u64, generation: u64, text: Arc<Chunk>) {
        use std::sync::atomic::Ordering;
        let mut inner = self.inner.lock();
        if inner.generation != generation || inner.chunks.iter().any(|(c, _)| *c == chunk) {
            return;
        }
        if inner.chunks.len() >= CHUNKS_PER_SEGMENT {
            inner.chunks.pop_front();
        } else if CACHED_CHUNKS.fetch_add(1, Ordering::Relaxed) >= CHUNKS_IN_ALL {
            CACHED_CHUNKS.fetch_sub(1, Ordering::Relaxed);
            if inner.chunks.is_empty() {
                return;
            }
            inner.chunks.pop_front();
        }
        inner.chunks.push_back((chunk, text));
    }

    /// Drops every chunk (the file was cut).
    fn clear(&self) {
        let mut inner = self.inner.lock();
        inner.generation += 1;
        let n = inner.chunks.len();
        inner.chunks.clear();
        CACHED_CHUNKS.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for ChunkCache {
    fn drop(&mut self) {
        let n = self.inner.get_mut().chunks.len();
        CACHED_CHUNKS.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Opens chunk `chunk` of a segment of `pages` pages (on `threads`
/// threads) and keeps it; `None` when it is not whole (the file ends in
/// it) or one of its pages is not full and valid (the active segment's
/// tail, a page being written, damage: those are read page by page).
fn load_chunk(
    cipher: &SegmentCipher,
    read: &dyn Fn(&mut [u8], u64) -> Result<usize>,
    pages: u64,
    chunk: u64,
    threads: usize,
) -> Result<Option<Arc<Chunk>>> {
    let first = chunk * CHUNK_PAGES;
    if first + CHUNK_PAGES > pages {
        return Ok(None);
    }
    let generation = cipher.chunks.generation();
    let len = CHUNK_PAGES as usize * PAIR as usize;
    let mut pairs = SPARE_BUFFERS.lock().pop().unwrap_or_default();
    pairs.resize(len, 0);
    let mut chunk_of = Chunk {
        pairs,
        slots: Vec::with_capacity(CHUNK_PAGES as usize),
    };
    if read(&mut chunk_of.pairs, slot_offset(first, 0))? < len {
        return Ok(None);
    }
    let mut states = vec![PageState::Zero; CHUNK_PAGES as usize];
    open_groups_in_place(
        cipher,
        first,
        &mut chunk_of.pairs,
        first,
        &mut states,
        threads,
    );
    for state in &states {
        match state {
            PageState::Valid { used, slot, .. } if *used == PAGE => {
                chunk_of.slots.push(*slot as u8)
            }
            _ => return Ok(None),
        }
    }
    let text = Arc::new(chunk_of);
    cipher.chunks.insert(chunk, generation, text.clone());
    Ok(Some(text))
}

/// Opens the first of chunks `chunk` and `chunk + 1` not kept yet ahead,
/// on a thread of its own, unless another is being opened ahead or the
/// file ends in it.
fn prefetch(cipher: &Arc<SegmentCipher>, file: &File, pages: u64, chunk: u64) {
    if crate::compress::scan_threads() < 2 {
        return;
    }
    let next = {
        let mut inner = cipher.chunks.inner.lock();
        if inner.ahead.is_some() {
            return;
        }
        let Some(next) = (chunk..chunk + 2).find(|c| !inner.chunks.iter().any(|(k, _)| k == c))
        else {
            return;
        };
        if (next + 1) * CHUNK_PAGES > pages {
            return;
        }
        inner.ahead = Some(next);
        next
    };
    /// Ends the opening ahead however it ends (a reader may be waiting).
    struct Done(Arc<SegmentCipher>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.chunks.inner.lock().ahead = None;
            self.0.chunks.ready.notify_all();
        }
    }
    let done = Done(cipher.clone());
    let Ok(file) = file.try_clone() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("factum-read-ahead".into())
        .spawn(move || {
            let c = &done.0;
            let read = |b: &mut [u8], o: u64| crate::compress::Physical::read_physical(&file, b, o);
            // Errors are the reader's to meet when it gets there.
            let _ = load_chunk(c, &read, pages, next, 1);
        });
    // Not spawned: the closure, and `done` with it, is dropped.
    drop(spawned);
}

/// What a free page reads as.
static ZERO_PAGE: [u8; PAGE] = [0; PAGE];
/// What a page that opens in neither slot reads as.
static DAMAGED_PAGE: [u8; PAGE] = [0xff; PAGE];

/// Opens pages `first..first + states.len()` in place, from `raw` (whole
/// groups from the one holding page `base`), into `states`; a long run on
/// up to `threads` threads (groups are independent), as compressed blocks
/// are decompressed.
fn open_groups_in_place(
    cipher: &SegmentCipher,
    base: u64,
    raw: &mut [u8],
    first: u64,
    states: &mut [PageState],
    threads: usize,
) {
    let base = base - base % GROUP;
    let end = first + states.len() as u64;
    // One item per group: its bytes, its first page, its pages' states.
    let mut items = Vec::new();
    let mut rest = states;
    for (k, group) in raw.chunks_mut(GROUP_BYTES as usize).enumerate() {
        let lo = (base + k as u64 * GROUP).max(first);
        let hi = (base + (k as u64 + 1) * GROUP).min(end);
        if lo >= hi {
            continue;
        }
        let (mine, others) = std::mem::take(&mut rest).split_at_mut((hi - lo) as usize);
        rest = others;
        items.push((group, base + k as u64 * GROUP, lo, mine));
    }
    let one = |items: &mut [(&mut [u8], u64, u64, &mut [PageState])]| {
        for (group, group_base, lo, states) in items.iter_mut() {
            for (j, state) in states.iter_mut().enumerate() {
                let page = *lo + j as u64;
                let (a, b) = slots_in(group, *group_base, page);
                *state = cipher.open_page_in_place(page, a, b);
            }
        }
    };
    let pages = (end - first) as usize;
    if threads < 2 || pages < PARALLEL_PAGES || items.len() < 2 {
        one(&mut items);
        return;
    }
    let per = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for part in items.chunks_mut(per) {
            let one = &one;
            scope.spawn(move || one(part));
        }
    });
}

/// The logical length of an encrypted (page-format) segment whose stored
/// bytes are `stored_len` long: up to the bytes in use of its last page
/// holding anything (pages of zeros after it are free space: the rest of
/// the last group, preallocated pages). Remembered until the file changes.
pub fn logical_len(
    cipher: &SegmentCipher,
    read: &dyn Fn(&mut [u8], u64) -> Result<usize>,
    stored_len: u64,
) -> Result<u64> {
    let generation = {
        let memo = cipher.len_memo.lock();
        if let Some((stored, logical)) = memo.1 {
            if stored == stored_len {
                return Ok(logical);
            }
        }
        memo.0
    };
    let mut group = vec![0u8; GROUP_BYTES as usize];
    let mut g = pages_in_file(stored_len) / GROUP;
    let logical = loop {
        if g == 0 {
            break SEGMENT_HEADER_LEN as u64;
        }
        g -= 1;
        let base = g * GROUP;
        let n = read(&mut group, slot_offset(base, 0))?;
        group[n..].fill(0);
        let last = (base..base + GROUP).rev().find(|&p| {
            (0..2).any(|slot| {
                let at = slot_in(base, p, slot);
                group[at..at + SLOT].iter().any(|&x| x != 0)
            })
        });
        if let Some(p) = last {
            let (a, b) = slots_in(&mut group, base, p);
            let used = match cipher.open_page_in_place(p, a, b) {
                PageState::Valid { used, .. } => used,
                PageState::Zero | PageState::Invalid => PAGE,
            };
            break page_start(p) + used as u64;
        }
    };
    let mut memo = cipher.len_memo.lock();
    if memo.0 == generation {
        memo.1 = Some((stored_len, logical));
    }
    Ok(logical)
}

// ---- the index file ----------------------------------------------------------

/// Magic of an encrypted index file (`index.redb`, ADR 45).
pub const INDEX_MAGIC: [u8; 8] = *b"FCTIDXE1";

/// What the index's key slots are bound to (it has no segment number).
fn index_header() -> SegmentHeader {
    SegmentHeader {
        version: crate::format::FORMAT_VERSION,
        features: 0,
        number: u32::MAX,
        first_position: u64::MAX,
    }
}

/// Is the file at `path` an encrypted index?
pub fn is_encrypted_index(path: &std::path::Path) -> bool {
    let mut magic = [0u8; 8];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut magic, 0))
        .is_ok_and(|_| magic == INDEX_MAGIC)
}

/// The index file encrypted at rest (ADR 45): redb's storage backend over
/// the same two-slot pages as segments, with random access. The file is a
/// 4 KiB head (magic, logical length, the two key slots of its own data
/// key) and the pages of redb's logical bytes, page `i` holding bytes
/// `[i * PAGE, (i + 1) * PAGE)`. Every write of a page puts its new
/// version in the slot that does not hold the current one, so a torn
/// write leaves the version redb last synced; redb's own commit protocol
/// does the rest.
#[derive(Debug)]
pub struct EncryptedIndexFile {
    file: File,
    cipher: Arc<SegmentCipher>,
    /// Logical length (also at bytes 8..16 of the file).
    len: std::sync::atomic::AtomicU64,
    /// Per page: its current version and slot, once known.
    pages: parking_lot::Mutex<std::collections::HashMap<u64, (u64, Option<usize>)>>,
}

impl EncryptedIndexFile {
    /// Opens the encrypted index at `path`, or creates it (with a fresh
    /// data key wrapped by `master`) when there is no file or an empty one.
    pub fn open_or_create(path: &std::path::Path, master: &MasterKey) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_err(format!("opening {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| io_err(format!("stat {}", path.display()), e))?
            .len();
        let header = index_header();
        let cipher = if len == 0 {
            let (c, area) = new_key_area(&header, master)?;
            let mut head = vec![0u8; KEY_AREA as usize];
            head[..8].copy_from_slice(&INDEX_MAGIC);
            head[SEGMENT_HEADER_LEN..].copy_from_slice(&area);
            file.write_all_at(&head, 0)
                .and_then(|_| file.sync_all())
                .map_err(|e| io_err(format!("creating {}", path.display()), e))?;
            if let Some(dir) = path.parent() {
                crate::log::sync_dir(dir)?;
            }
            c
        } else {
            let mut magic = [0u8; 8];
            file.read_exact_at(&mut magic, 0)
                .map_err(|e| io_err(format!("reading {}", path.display()), e))?;
            if magic != INDEX_MAGIC {
                return Err(Error::Corrupt {
                    file: path.to_path_buf(),
                    offset: 0,
                    detail: "not an encrypted index".into(),
                });
            }
            unlock(&file, path, &header, Some(master))?
        };
        let mut l = [0u8; 8];
        file.read_exact_at(&mut l, 8)
            .map_err(|e| io_err(format!("reading {}", path.display()), e))?;
        Ok(EncryptedIndexFile {
            file,
            cipher,
            len: std::sync::atomic::AtomicU64::new(u64::from_le_bytes(l)),
            pages: Default::default(),
        })
    }

    fn pair(&self, page: u64) -> std::io::Result<Vec<u8>> {
        let mut pair = vec![0u8; PAIR as usize];
        let mut got = 0;
        while got < pair.len() {
            match self
                .file
                .read_at(&mut pair[got..], pair_offset(page) + got as u64)?
            {
                0 => break,
                n => got += n,
            }
        }
        Ok(pair)
    }

    /// Page `page`'s plaintext into `plain`; its version and slot.
    fn read_page(&self, page: u64, plain: &mut [u8]) -> std::io::Result<(u64, Option<usize>)> {
        let pair = self.pair(page)?;
        let state = match self.cipher.open_page(page, &pair, plain) {
            PageState::Zero => (0, None),
            PageState::Valid { seq, slot, .. } => (seq, Some(slot)),
            PageState::Invalid => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("encrypted index page {page} opens in neither slot (damaged)"),
                ))
            }
        };
        self.pages.lock().insert(page, state);
        Ok(state)
    }
}

impl redb::StorageBackend for EncryptedIndexFile {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.len.load(std::sync::atomic::Ordering::Acquire))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        if offset + out.len() as u64 > self.len()? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the index",
            ));
        }
        let mut plain = vec![0u8; PAGE];
        let mut done = 0;
        while done < out.len() {
            let at = offset + done as u64;
            let (page, within) = (at / PAGE as u64, (at % PAGE as u64) as usize);
            self.read_page(page, &mut plain)?;
            let n = (PAGE - within).min(out.len() - done);
            out[done..done + n].copy_from_slice(&plain[within..within + n]);
            done += n;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let pages = len.div_ceil(PAGE as u64);
        let old = self.len()?;
        if len < old && !len.is_multiple_of(PAGE as u64) {
            // The cut page keeps zeros after the new end (redb's contract
            // for space it grows back into).
            let mut plain = vec![0u8; PAGE];
            let page = len / PAGE as u64;
            let (seq, slot) = self.read_page(page, &mut plain)?;
            plain[(len % PAGE as u64) as usize..].fill(0);
            self.write_version(page, seq, slot, &plain)?;
        }
        if len < old {
            self.pages.lock().retain(|p, _| *p < pages);
        }
        self.file.set_len(pair_offset(pages))?;
        self.file.write_all_at(&len.to_le_bytes(), 8)?;
        self.len.store(len, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut plain = vec![0u8; PAGE];
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let (page, within) = (at / PAGE as u64, (at % PAGE as u64) as usize);
            let n = (PAGE - within).min(data.len() - done);
            let known = self.pages.lock().get(&page).copied();
            let (seq, slot) = match known {
                Some(s) if n == PAGE => s,
                _ => self.read_page(page, &mut plain)?,
            };
            plain[within..within + n].copy_from_slice(&data[done..done + n]);
            self.write_version(page, seq, slot, &plain)?;
            done += n;
        }
        Ok(())
    }
}

impl EncryptedIndexFile {
    /// Writes `plain` as the version after `seq` of `page`, into the slot
    /// that does not hold version `seq`.
    fn write_version(
        &self,
        page: u64,
        seq: u64,
        slot: Option<usize>,
        plain: &[u8],
    ) -> std::io::Result<()> {
        let mut out = vec![0u8; SLOT];
        let target = slot.map_or(0, |s| 1 - s);
        self.cipher
            .seal_page(page, seq + 1, PAGE, plain, &mut out)
            .map_err(std::io::Error::other)?;
        self.file
            .write_all_at(&out, pair_offset(page) + (target * SLOT) as u64)?;
        self.pages.lock().insert(page, (seq + 1, Some(target)));
        Ok(())
    }
}

/// `factum rekey` for the index file: its data key re-wrapped.
pub fn rewrap_index(
    path: &std::path::Path,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<Option<Rewrapped>> {
    if !is_encrypted_index(path) {
        return Ok(None);
    }
    rewrap(path, &index_header(), old, new).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> (SegmentHeader, Arc<SegmentCipher>, Vec<u8>) {
        let header = SegmentHeader::new(3, 1000);
        let master = MasterKey::new(SecretKey::random().unwrap());
        let (c, area) = new_key_area(&header, &master).unwrap();
        (header, c, area)
    }

    fn file_with(
        header: &SegmentHeader,
        area: &[u8],
        dir: &std::path::Path,
    ) -> (std::path::PathBuf, SegmentFile) {
        let path = dir.join("s");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all_at(&header.encode(), 0).unwrap();
        f.write_all_at(area, SEGMENT_HEADER_LEN as u64).unwrap();
        (path, SegmentFile::new(f, None))
    }

    fn read_all(c: &Arc<SegmentCipher>, path: &std::path::Path) -> Vec<u8> {
        let f = File::open(path).unwrap();
        let len = f.metadata().unwrap().len();
        let read = |b: &mut [u8], o: u64| -> Result<usize> {
            let mut got = 0;
            while got < b.len() {
                let n = f.read_at(&mut b[got..], o + got as u64).unwrap();
                if n == 0 {
                    break;
                }
                got += n;
            }
            Ok(got)
        };
        let l = logical_len(c, &read, len).unwrap();
        let mut out = vec![0u8; l as usize];
        let n = read_pages(c, &read, len, &mut out, 0, None).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn appends_cuts_and_torn_slots_read_back_as_logical_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (header, c, area) = cipher();
        let (path, mut f) = file_with(&header, &area, dir.path());
        f.cipher = Some(c.clone());
        let mut logical = header.encode().to_vec();
        // Small appends, a large one across pages, more small ones.
        let mut at = SEGMENT_HEADER_LEN as u64;
        // 300,000 bytes: a run of pages sealed and opened on several threads.
        for (i, n) in [10usize, 300, 5000, 3, 9000, 1, PAGE, 77, 300_000, 5]
            .iter()
            .enumerate()
        {
            let bytes: Vec<u8> = (0..*n).map(|j| (i * 31 + j % 251 + 1) as u8).collect();
            f.write_all_at(&bytes, at).unwrap();
            at += *n as u64;
            logical.extend_from_slice(&bytes);
            assert_eq!(read_all(&c, &path), logical, "after append {i}");
        }
        // No plaintext on disk.
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(64).any(|w| logical[100..164] == *w));
        // A cut in the middle of a page.
        let cut = at - 500;
        f.set_len(cut).unwrap();
        logical.truncate(cut as usize);
        assert_eq!(read_all(&c, &path), logical);
        // A torn write of the tail page's next version: the current one
        // still reads.
        let (page, _) = page_of(cut);
        let t = f.tail.as_ref().unwrap();
        let other = 1 - t.slot.unwrap();
        f.file
            .write_all_at(&[0x5a; 1000], slot_offset(page, other))
            .unwrap();
        assert_eq!(read_all(&c, &path), logical);
        // Appending after reopening (the tail page read from disk).
        let mut g = SegmentFile::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap(),
            Some(c.clone()),
        );
        g.write_all_at(b"more", cut).unwrap();
        logical.extend_from_slice(b"more");
        assert_eq!(read_all(&c, &path), logical);
        // Preallocated zeros after the data read as zeros.
        let end = logical.len() as u64;
        write_zeros(
            g.file(),
            true,
            end,
            end + 3 * PAGE as u64,
            &vec![0u8; 1 << 16],
        )
        .unwrap();
        let all = read_all(&c, &path);
        assert_eq!(&all[..logical.len()], &logical[..]);
        assert!(all[logical.len()..].iter().all(|&b| b == 0));
    }

    /// Scans (reads of 1 MiB, as a frame reader's) go through kept chunks
    /// and open the next ones ahead; what they return is the logical bytes
    /// wherever they start, and a cut followed by different bytes at the
    /// same offsets is never served from a chunk kept before the cut.
    #[test]
    fn scans_through_kept_chunks_read_the_bytes_written_after_a_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (header, c, area) = cipher();
        let (path, mut f) = file_with(&header, &area, dir.path());
        f.cipher = Some(c.clone());
        let fill = |seed: u8, n: usize| -> Vec<u8> {
            (0..n).map(|j| seed.wrapping_add((j % 253) as u8)).collect()
        };
        // Five chunks and a bit: whole chunks are kept, the tail is not.
        let n = 5 * CHUNK_PAGES as usize * PAGE + 1234;
        let mut logical = header.encode().to_vec();
        logical.extend_from_slice(&fill(1, n));
        f.write_all_at(&logical[SEGMENT_HEADER_LEN..], SEGMENT_HEADER_LEN as u64)
            .unwrap();
        let file = File::open(&path).unwrap();
        let scan = |from: usize, out: &mut Vec<u8>| {
            let len = file.metadata().unwrap().len();
            let read = |b: &mut [u8], o: u64| -> Result<usize> { Ok(file.read_at(b, o).unwrap()) };
            let mut buf = vec![0u8; 1 << 20];
            let mut at = from;
            loop {
                let got = read_pages(&c, &read, len, &mut buf, at as u64, Some(&file)).unwrap();
                out.extend_from_slice(&buf[..got]);
                at += got;
                if got < buf.len() {
                    break;
                }
            }
        };
        for from in [0usize, 32, 4040 * 255 + 17, 3 << 20, n - 100] {
            let mut out = Vec::new();
            scan(from, &mut out);
            // The logical bytes, then zeros to the end of the last group.
            let want = logical.len() - from;
            assert!(out.len() >= want, "from {from}: {} bytes", out.len());
            assert!(out[..want] == logical[from..], "scan from {from} differs");
            assert!(
                out[want..].iter().all(|&b| b == 0),
                "from {from}: not zeros after the end"
            );
        }
        assert!(
            !c.chunks.inner.lock().chunks.is_empty(),
            "scans kept no chunk"
        );
        // Cut into the second chunk and write other bytes in its place.
        let cut = SEGMENT_HEADER_LEN + CHUNK_PAGES as usize * PAGE + 500;
        f.set_len(cut as u64).unwrap();
        logical.truncate(cut);
        logical.extend_from_slice(&fill(99, n + SEGMENT_HEADER_LEN - cut));
        f.write_all_at(&logical[cut..], cut as u64).unwrap();
        // (From inside the cut chunk first: it is kept, unless the cut
        // dropped it.)
        for from in [cut - 10, 0, 2 << 20] {
            let mut out = Vec::new();
            scan(from, &mut out);
            let want = logical.len() - from;
            assert!(
                out[..want] == logical[from..],
                "scan from {from} after the cut differs"
            );
            assert!(out[want..].iter().all(|&b| b == 0));
        }
        assert_eq!(read_all(&c, &path), logical);
    }

    #[test]
    fn keys_open_only_under_their_master_and_rewrap_moves_them() {
        let dir = tempfile::tempdir().unwrap();
        let header = SegmentHeader::new(0, 0);
        let old = MasterKey::new(SecretKey::random().unwrap());
        let new = MasterKey::new(SecretKey::random().unwrap());
        let (c, area) = new_key_area(&header, &old).unwrap();
        let (path, mut f) = file_with(&header, &area, dir.path());
        f.cipher = Some(c);
        f.write_all_at(b"hello", 32).unwrap();
        let file = File::open(&path).unwrap();
        assert!(unlock(&file, &path, &header, Some(&old)).is_ok());
        let e = unlock(&file, &path, &header, Some(&new))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&old.fingerprint_hex()) && e.contains("does not unwrap"),
            "{e}"
        );
        let e = unlock(&file, &path, &header, None).unwrap_err().to_string();
        assert!(e.contains("encrypted at rest"), "{e}");
        assert_eq!(
            rewrap(&path, &header, &old, &new).unwrap(),
            Rewrapped::Moved
        );
        assert_eq!(
            rewrap(&path, &header, &old, &new).unwrap(),
            Rewrapped::Already
        );
        let c2 = unlock(&file, &path, &header, Some(&new)).unwrap();
        assert_eq!(&read_all(&c2, &path)[32..], b"hello");
        // A third key: the slot of the oldest wrapping is the one replaced.
        let third = MasterKey::new(SecretKey::random().unwrap());
        assert_eq!(
            rewrap(&path, &header, &new, &third).unwrap(),
            Rewrapped::Moved
        );
        assert!(unlock(&file, &path, &header, Some(&third)).is_ok());
        assert!(unlock(&file, &path, &header, Some(&new)).is_ok());
        assert!(unlock(&file, &path, &header, Some(&old)).is_err());
    }
}

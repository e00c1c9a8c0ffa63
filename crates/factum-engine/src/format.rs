//! The bytes the engine writes to segment files (see `docs/format.md`).
//!
//! A segment is a header followed by batch frames. A frame is one atomic
//! append: a fixed header, event records, and a CRC32C over the whole frame.
//! Every event record also carries its own CRC32C so a single event can be
//! read and checked without reading its whole batch.

use bytes::Bytes;
use factum_core::{ContentType, StreamName, Timestamp, Uuid};

/// Segment header magic: `FACTUMSG`.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FACTUMSG";
/// The format version this build writes. Version 1 (no feature flags; the
/// frame's bytes 20..24 zero) is still read. A later change of the format
/// either sets a new feature flag (segments without it read as before) or,
/// when the header itself changes, takes the next version.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this build reads.
pub const MIN_FORMAT_VERSION: u32 = 1;
/// Feature flag: every frame's bytes 20..24 link it to its write group
/// (`FrameHeader::group_offset`), so recovery can tell damage inside the
/// last, unacknowledged group from damage before it.
pub const FEATURE_GROUP_FRAMES: u32 = 1;
/// Feature flag: the segment was created by a build that numbers public
/// positions from 1 (ADR 25): the event at log position `n` (what frames
/// and records hold, from 0) is at public position `n + 1`, and the
/// positions in the consumer-group checkpoints written beside it are in
/// that numbering. The bytes of frames and records do not change; the flag
/// keeps an older build, which would serve the same events at positions one
/// lower, from opening the store.
pub const FEATURE_PUBLIC_POSITIONS_FROM_ONE: u32 = 2;
/// Feature flag: the segment was rewritten (`rewrite.rs`, ADR 33) with
/// some of its records removed or replaced by stubs (`FLAG_STUB`). Its
/// frames' positions are dense within each frame, but there may be gaps
/// before a frame, between frames and after the last one; every frame starts
/// its own write group (bytes 20..24 zero). Set only on rewritten segments,
/// never by the writer.
pub const FEATURE_SCAVENGED: u32 = 4;
/// Feature flag: the segment's bytes after its header are zstd blocks of
/// its logical (uncompressed) bytes, a block index and a footer
/// (`compress.rs`, ADR 43). Offsets into it are logical: the same as in
/// its uncompressed version. Set only by a rewrite of a sealed segment,
/// never by the writer.
pub const FEATURE_COMPRESSED: u32 = 8;
/// Feature flag: the file is a stub; the segment's bytes live only in the
/// archive (`archive.rs`, ADR 43). After the header: the archived
/// object's name, size and CRC32C. The other flags are the archived
/// file's (a compressed segment stays compressed in the archive). Set only
/// on eviction of an archived sealed segment, never by the writer.
pub const FEATURE_ARCHIVED: u32 = 16;
/// Feature flag: the segment is encrypted at rest (`encrypt.rs`, ADR 45):
/// two key slots after the header, then its logical bytes in encrypted
/// pages (or, with `COMPRESSED`, encrypted zstd blocks). Set by the writer
/// of a store opened with a master key, and by rewrites in such a store.
pub const FEATURE_ENCRYPTED: u32 = 32;
/// Feature flag: the segment was rewritten by a build that keeps the
/// `$ce-`/`$et-` revisions of removed events in the log: it may hold link
/// records (`FLAG_STUB | FLAG_LINKS`, ADR 47), which an older build would
/// replay as plain stubs and so renumber link streams on a rebuild. Set on
/// every rewritten version, never by the writer.
pub const FEATURE_LINK_REVISIONS: u32 = 64;
/// Every feature flag this build understands. A segment with any other flag
/// set was written by a newer build and is refused rather than misread.
pub const KNOWN_FEATURES: u32 = FEATURE_GROUP_FRAMES
    | FEATURE_PUBLIC_POSITIONS_FROM_ONE
    | FEATURE_SCAVENGED
    | FEATURE_COMPRESSED
    | FEATURE_ARCHIVED
    | FEATURE_ENCRYPTED
    | FEATURE_LINK_REVISIONS;
/// The feature flags of the segments this build creates.
pub const WRITTEN_FEATURES: u32 = FEATURE_GROUP_FRAMES | FEATURE_PUBLIC_POSITIONS_FROM_ONE;

/// The public position (what `RecordedEvent::position`, append results and
/// reads of `$all` use) of the event at log position `log` (ADR 25): one
/// more, so that no event is at 0, which KurrentDB's clients take for
/// "before the first event". Every store maps the same way, whatever build
/// wrote it.
pub fn public_position(log: u64) -> factum_core::Position {
    factum_core::Position(log.saturating_add(1))
}

/// The log position of public position `p`; `None` for 0, "before the
/// first event".
pub fn log_position(p: factum_core::Position) -> Option<u64> {
    p.0.checked_sub(1)
}
/// Size of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Frame magic (`FCTB` little-endian).
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"FCTB");
/// Size of a frame header.
pub const FRAME_HEADER_LEN: usize = 32;
/// Size of a frame trailer (the CRC).
pub const FRAME_TRAILER_LEN: usize = 4;
/// Size of the fixed part of an event record.
pub const EVENT_HEADER_LEN: usize = 64;

/// Record flag: the event is a tombstone (`$streamDeleted`).
pub const FLAG_TOMBSTONE: u8 = 1;
/// Record flag: the `$metadata` event soft-deletes its stream.
pub const FLAG_SOFT_DELETE: u8 = 2;
/// Record flag: a stub left by a scavenge in place of the last event of a
/// stream whose events were all removed (ADR 33): its position, revision,
/// id, commit time and stream name, with no type, data or metadata. It is
/// never served and never indexed; it keeps the stream's last revision in
/// the log, so an index rebuilt from the log still knows it. Only in
/// segments with `FEATURE_SCAVENGED`.
pub const FLAG_STUB: u8 = 4;
/// Record flag, only with `FLAG_STUB`: a link record (ADR 47). A rewrite
/// puts one in place of the last removed event before a kept one (or the
/// segment's end) when removed events took `$ce-`/`$et-` revisions: its
/// data lists, per link stream, the revision after the removed ones
/// ([`StoredEvent::link_revisions`]), so an index rebuilt from the log
/// numbers the kept links exactly as before. Otherwise a stub (same
/// position, revision, id, commit time and stream as the removed event).
/// Only in segments with `FEATURE_LINK_REVISIONS`.
pub const FLAG_LINKS: u8 = 8;

/// The header of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version the segment was written in.
    pub version: u32,
    /// `FEATURE_*` flags (always 0 in version 1).
    pub features: u32,
    /// Dense sequence number of the segment (0, 1, 2 …).
    pub number: u32,
    /// Global position of the first event the segment may hold.
    pub first_position: u64,
}

impl SegmentHeader {
    /// The header of a segment this build creates.
    pub fn new(number: u32, first_position: u64) -> Self {
        SegmentHeader {
            version: FORMAT_VERSION,
            features: WRITTEN_FEATURES,
            number,
            first_position,
        }
    }

    /// Do this segment's frames link to their write groups?
    pub fn group_frames(&self) -> bool {
        self.features & FEATURE_GROUP_FRAMES != 0
    }

    /// Was this segment rewritten by a scavenge (gaps between its frames,
    /// stubs; ADR 33)?
    pub fn scavenged(&self) -> bool {
        self.features & FEATURE_SCAVENGED != 0
    }

    /// Is this segment stored compressed (ADR 43)?
    pub fn compressed(&self) -> bool {
        self.features & FEATURE_COMPRESSED != 0
    }

    /// Is this segment encrypted at rest (ADR 45)?
    pub fn encrypted(&self) -> bool {
        self.features & FEATURE_ENCRYPTED != 0
    }

    /// Is this file a stub of a segment that lives only in the archive?
    pub fn archived(&self) -> bool {
        self.features & FEATURE_ARCHIVED != 0
    }

    /// Encodes to the 32-byte header, in the layout of `self.version`
    /// (version 1 only to build old stores in tests).
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.number.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_position.to_le_bytes());
        if self.version == 1 {
            let crc = crc32c::crc32c(&b[0..24]);
            b[24..28].copy_from_slice(&crc.to_le_bytes());
        } else {
            b[24..28].copy_from_slice(&self.features.to_le_bytes());
            let crc = crc32c::crc32c(&b[0..28]);
            b[28..32].copy_from_slice(&crc.to_le_bytes());
        }
        b
    }

    /// Decodes and checks a header; the error says what is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(format!(
                "segment header is {} bytes, expected {SEGMENT_HEADER_LEN}",
                b.len()
            ));
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err("not a Factum segment (bad magic)".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let version = u32_at(8);
        let (features, crc, covered) = match version {
            1 => (0, u32_at(24), &b[0..24]),
            2 => (u32_at(24), u32_at(28), &b[0..28]),
            _ => {
                return Err(format!(
                    "segment format version {version} is not supported (this build reads {MIN_FORMAT_VERSION} to {FORMAT_VERSION}); \
                     a newer build of Factum wrote it"
                ))
            }
        };
        if crc != crc32c::crc32c(covered) {
            return Err("segment header checksum mismatch".into());
        }
        let unknown = features & !KNOWN_FEATURES;
        if unknown != 0 {
            return Err(format!(
                "segment uses feature flags {unknown:#x} unknown to this build (a newer build of Factum wrote it)"
            ));
        }
        Ok(SegmentHeader {
            version,
            features,
            number: u32_at(12),
            first_position: u64::from_le_bytes(b[16..24].try_into().unwrap()),
        })
    }
}

/// One event as the engine stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Global position.
    pub position: u64,
    /// Revision in its stream.
    pub revision: u64,
    /// Commit time.
    pub created: Timestamp,
    /// Event id.
    pub id: Uuid,
    /// Content type.
    pub content_type: ContentType,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Stream.
    pub stream: StreamName,
    /// Event type.
    pub event_type: String,
    /// Payload.
    pub data: Bytes,
    /// User metadata.
    pub metadata: Bytes,
}

impl StoredEvent {
    /// Is this record a scavenge's stub (`FLAG_STUB`), never served?
    pub fn is_stub(&self) -> bool {
        self.flags & FLAG_STUB != 0
    }

    /// The stub that stands for this event once a scavenge removed it: the
    /// same position, revision, id, commit time and stream; no type, data
    /// or metadata.
    pub fn stub(&self) -> StoredEvent {
        StoredEvent {
            position: self.position,
            revision: self.revision,
            created: self.created,
            id: self.id,
            content_type: self.content_type,
            flags: FLAG_STUB,
            stream: self.stream.clone(),
            event_type: String::new(),
            data: Bytes::new(),
            metadata: Bytes::new(),
        }
    }

    /// Is this record a link record (`FLAG_LINKS`, a stub whose data lists
    /// link streams' next revisions)?
    pub fn has_link_revisions(&self) -> bool {
        self.flags & (FLAG_STUB | FLAG_LINKS) == FLAG_STUB | FLAG_LINKS
    }

    /// This stub (see [`StoredEvent::stub`]) as a link record: `next` lists,
    /// per link stream, the revision its next link takes at the earliest
    /// (each name: 2-byte length, UTF-8; then the revision, 8 bytes; all
    /// little-endian, in the order given).
    pub fn with_link_revisions<'a>(
        &self,
        next: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> StoredEvent {
        let mut data = Vec::new();
        for (name, revision) in next {
            data.extend_from_slice(&(name.len() as u16).to_le_bytes());
            data.extend_from_slice(name.as_bytes());
            data.extend_from_slice(&revision.to_le_bytes());
        }
        StoredEvent {
            flags: self.flags | FLAG_STUB | FLAG_LINKS,
            data: Bytes::from(data),
            ..self.clone()
        }
    }

    /// What a link record lists (empty for any other record); an error
    /// describes a list that does not decode.
    pub fn link_revisions(&self) -> std::result::Result<Vec<(&str, u64)>, String> {
        let mut out = Vec::new();
        if !self.has_link_revisions() {
            return Ok(out);
        }
        let mut b = &self.data[..];
        while !b.is_empty() {
            let bad = || format!("link record at position {} is malformed", self.position);
            let n = u16::from_le_bytes(b.get(..2).ok_or_else(bad)?.try_into().unwrap()) as usize;
            let name = b.get(2..2 + n).ok_or_else(bad)?;
            let name = std::str::from_utf8(name).map_err(|_| bad())?;
            let rev = b.get(2 + n..10 + n).ok_or_else(bad)?;
            out.push((name, u64::from_le_bytes(rev.try_into().unwrap())));
            b = &b[10 + n..];
        }
        Ok(out)
    }

    /// Bytes this event takes in a frame.
    pub fn encoded_len(&self) -> usize {
        EVENT_HEADER_LEN
            + self.stream.as_str().len()
            + self.event_type.len()
            + self.data.len()
            + self.metadata.len()
    }

    /// Appends the encoded record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let len = self.encoded_len() as u32;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&[0u8; 4]); // crc, filled below
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.revision.to_le_bytes());
        out.extend_from_slice(&self.created.0.to_le_bytes());
        out.extend_from_slice(self.id.as_bytes());
        out.push(match self.content_type {
            ContentType::Json => 0,
            ContentType::Binary => 1,
        });
        out.push(self.flags);
        out.extend_from_slice(&(self.stream.as_str().len() as u16).to_le_bytes());
        out.extend_from_slice(&(self.event_type.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0u8; 2]);
        out.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u32).to_le_bytes());
        debug_assert_eq!(out.len() - start, EVENT_HEADER_LEN);
        out.extend_from_slice(self.stream.as_str().as_bytes());
        out.extend_from_slice(self.event_type.as_bytes());
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.metadata);
        let crc = crc32c::crc32c(&out[start + 8..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// The total length of the record starting at `b`, from its length field.
    pub fn peek_len(b: &[u8]) -> Option<usize> {
        b.get(0..4)
            .map(|l| u32::from_le_bytes(l.try_into().unwrap()) as usize)
    }

    /// Decodes one record from `buf` (which holds exactly the record or more).
    /// `check_crc` verifies the record's own checksum.
    pub fn decode(buf: &[u8], check_crc: bool) -> Result<(StoredEvent, usize), String> {
        Self::decode_with(buf, check_crc, None, None)
    }

    /// As [`StoredEvent::decode`], reusing `same_stream` when the record's
    /// stream has that name (the events of a frame share one stream, but
    /// for the undelete that may end it (ADR 26), so a frame decodes and
    /// validates the name about once).
    ///
    /// Data and metadata are copied out, so the record's buffer can be reused
    /// (many small copies are cheaper than pinning large read buffers) —
    /// unless `owner` is given: an immutable buffer that holds `buf` (a
    /// cached 64 KiB log block, ADR 5), of which they become slices.
    #[inline]
    pub fn decode_with(
        buf: &[u8],
        check_crc: bool,
        same_stream: Option<&StreamName>,
        owner: Option<&Bytes>,
    ) -> Result<(StoredEvent, usize), String> {
        let b = buf;
        if b.len() < EVENT_HEADER_LEN {
            return Err("event record shorter than its header".into());
        }
        let len = Self::peek_len(b).unwrap();
        if len < EVENT_HEADER_LEN || len > b.len() {
            return Err(format!("event record length {len} is out of bounds"));
        }
        if check_crc {
            let crc = u32::from_le_bytes(b[4..8].try_into().unwrap());
            if crc != crc32c::crc32c(&b[8..len]) {
                return Err("event record checksum mismatch".into());
            }
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap()) as usize;
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
        let content_type = match b[48] {
            0 => ContentType::Json,
            1 => ContentType::Binary,
            other => return Err(format!("unknown content type tag {other}")),
        };
        let (sl, tl, dl, ml) = (u16_at(50), u16_at(52), u32_at(56), u32_at(60));
        if EVENT_HEADER_LEN + sl + tl + dl + ml != len {
            return Err("event record field lengths do not add up".into());
        }
        let mut o = EVENT_HEADER_LEN;
        let name = &b[o..o + sl];
        let stream = match same_stream {
            Some(s) if s.as_str().as_bytes() == name => s.clone(),
            _ => StreamName::from_utf8(name).map_err(|e| e.to_string())?,
        };
        o += sl;
        let event_type = std::str::from_utf8(&b[o..o + tl])
            .map_err(|_| "event type is not UTF-8".to_string())?
            .to_string();
        o += tl;
        let take = |part: &[u8]| match owner {
            Some(block) => block.slice_ref(part),
            None => Bytes::copy_from_slice(part),
        };
        let data = take(&buf[o..o + dl]);
        o += dl;
        let metadata = if ml == 0 {
            Bytes::new()
        } else {
            take(&buf[o..o + ml])
        };
        Ok((
            StoredEvent {
                position: u64_at(8),
                revision: u64_at(16),
                created: Timestamp(u64_at(24) as i64),
                id: Uuid::from_bytes(b[32..48].try_into().unwrap()),
                content_type,
                flags: b[49],
                stream,
                event_type,
                data,
                metadata,
            },
            len,
        ))
    }
}

/// The fixed header of a batch frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Total frame length including header and trailer.
    pub len: u32,
    /// Position of the first event.
    pub first_position: u64,
    /// Number of events.
    pub count: u32,
    /// Commit time.
    pub created: Timestamp,
    /// Events between the first event of the frame's write group and the
    /// frame's first event (0 for a group's first frame). Always 0 in a
    /// segment without `FEATURE_GROUP_FRAMES`.
    pub group_offset: u32,
}

impl FrameHeader {
    /// Position of the first event of the write group this frame belongs to.
    /// `None` if the link points before position 0 (a damaged header that
    /// passed its CRC cannot happen; a hand-made one can).
    pub fn group_first_position(&self) -> Option<u64> {
        self.first_position.checked_sub(self.group_offset as u64)
    }

    /// Parses a frame header without checking the CRC.
    pub fn peek(b: &[u8]) -> Option<FrameHeader> {
        if b.len() < FRAME_HEADER_LEN {
            return None;
        }
        if u32::from_le_bytes(b[0..4].try_into().unwrap()) != FRAME_MAGIC {
            return None;
        }
        Some(FrameHeader {
            len: u32::from_le_bytes(b[4..8].try_into().unwrap()),
            first_position: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            count: u32::from_le_bytes(b[16..20].try_into().unwrap()),
            group_offset: u32::from_le_bytes(b[20..24].try_into().unwrap()),
            created: Timestamp(i64::from_le_bytes(b[24..32].try_into().unwrap())),
        })
    }
}

/// Encodes one batch frame (header, event records, CRC) onto `out`.
/// `group_offset` is [`FrameHeader::group_offset`] (0 in a segment without
/// group frames). Returns the offsets of each event record relative to the
/// frame start.
pub fn encode_frame(
    events: &[StoredEvent],
    created: Timestamp,
    group_offset: u32,
    out: &mut Vec<u8>,
) -> Vec<u32> {
    let start = begin_frame(events[0].position, created, group_offset, out);
    let mut offsets = Vec::with_capacity(events.len());
    for e in events {
        offsets.push((out.len() - start) as u32);
        e.encode_into(out);
    }
    finish_frame(start, events.len() as u32, out);
    offsets
}

/// Starts a frame at the end of `out` whose first record holds
/// `first_position`: its header, with the length and record count left
/// for [`finish_frame`]. Records are appended after it
/// ([`StoredEvent::encode_into`]); returns where the frame starts.
pub fn begin_frame(
    first_position: u64,
    created: Timestamp,
    group_offset: u32,
    out: &mut Vec<u8>,
) -> usize {
    let start = out.len();
    out.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]); // length, by finish_frame
    out.extend_from_slice(&first_position.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]); // record count, by finish_frame
    out.extend_from_slice(&group_offset.to_le_bytes());
    out.extend_from_slice(&created.0.to_le_bytes());
    debug_assert_eq!(out.len() - start, FRAME_HEADER_LEN);
    start
}

/// Completes the frame [`begin_frame`] started at `start` of `out`, which
/// now holds its `count` records: fills in its length and count and
/// appends the CRC trailer.
pub fn finish_frame(start: usize, count: u32, out: &mut Vec<u8>) {
    let len = (out.len() - start + FRAME_TRAILER_LEN) as u32;
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    out[start + 16..start + 20].copy_from_slice(&count.to_le_bytes());
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// What came before a frame in its segment, for [`check_group_link`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBefore {
    /// The frame is the first of its segment (groups never span segments).
    SegmentStart,
    /// Not known (a scan that starts at the index checkpoint).
    Unknown,
    /// The frame before it belongs to the group starting at this position.
    Group(u64),
}

/// Checks that frame `h` of a segment with group frames either starts a
/// write group or continues the group of the frame before it, and returns
/// the position its group starts at. Recovery relies on these links to
/// tell the last group's frames from older ones, so a link that does not
/// fit is damage.
pub fn check_group_link(h: &FrameHeader, before: GroupBefore) -> Result<u64, String> {
    let group = h.group_first_position().ok_or_else(|| {
        format!(
            "frame at position {} links to a write group {} events before it",
            h.first_position, h.group_offset
        )
    })?;
    let fits = match before {
        _ if group == h.first_position => true,
        GroupBefore::SegmentStart => false,
        GroupBefore::Unknown => true,
        GroupBefore::Group(g) => g == group,
    };
    if fits {
        Ok(group)
    } else {
        Err(format!(
            "frame at position {} links to a write group starting at {group}, which is not the group of the frame before it ({before:?})",
            h.first_position
        ))
    }
}

/// What is at an offset in a segment.
#[derive(Debug)]
pub enum FrameCheck {
    /// A complete, valid frame.
    Valid(FrameHeader),
    /// The bytes end before a complete frame (a torn tail, or zeros).
    Incomplete,
    /// A complete frame whose checksum or structure is wrong.
    Invalid(String),
}

/// Checks the frame at the start of `b` (`b` extends to the end of the file
/// or further than the frame). Verifies the frame CRC and the events' framing.
pub fn check_frame(b: &[u8]) -> FrameCheck {
    if b.len() < FRAME_HEADER_LEN {
        return FrameCheck::Incomplete;
    }
    let Some(h) = FrameHeader::peek(b) else {
        if b[..FRAME_HEADER_LEN].iter().all(|&x| x == 0) {
            return FrameCheck::Incomplete;
        }
        return FrameCheck::Invalid("bad frame magic".into());
    };
    let len = h.len as usize;
    if len < FRAME_HEADER_LEN + FRAME_TRAILER_LEN + EVENT_HEADER_LEN {
        return FrameCheck::Invalid(format!("frame length {len} is too small"));
    }
    if len > b.len() {
        return FrameCheck::Incomplete;
    }
    let crc = u32::from_le_bytes(b[len - 4..len].try_into().unwrap());
    if crc != crc32c::crc32c(&b[..len - 4]) {
        return FrameCheck::Invalid("frame checksum mismatch".into());
    }
    // Walk the records so a valid CRC over inconsistent framing is still caught.
    let mut o = FRAME_HEADER_LEN;
    for _ in 0..h.count {
        match StoredEvent::peek_len(&b[o..len - 4]) {
            Some(l) if l >= EVENT_HEADER_LEN && o + l <= len - 4 => o += l,
            _ => return FrameCheck::Invalid("event record overruns its frame".into()),
        }
    }
    if o != len - 4 {
        return FrameCheck::Invalid("frame has bytes after its last event".into());
    }
    FrameCheck::Valid(h)
}

/// Decodes the events of a frame already checked with [`check_frame`].
/// `frame` holds exactly the frame.
pub fn decode_frame_events(
    frame: &[u8],
    h: &FrameHeader,
) -> Result<Vec<(StoredEvent, u32)>, String> {
    decode_frame_events_from(frame, h, 0)
}

/// As [`decode_frame_events`], skipping the first `skip` records without
/// decoding them (a read that starts inside a frame).
pub fn decode_frame_events_from(
    frame: &[u8],
    h: &FrameHeader,
    skip: u32,
) -> Result<Vec<(StoredEvent, u32)>, String> {
    let end = frame.len() - FRAME_TRAILER_LEN;
    let mut out = Vec::with_capacity(h.count.saturating_sub(skip) as usize);
    let mut o = FRAME_HEADER_LEN;
    for i in 0..h.count {
        if i < skip {
            o += StoredEvent::peek_len(&frame[o..end]).ok_or("event record overruns its frame")?;
            continue;
        }
        let same = out.last().map(|(e, _): &(StoredEvent, u32)| &e.stream);
        let (e, l) = StoredEvent::decode_with(&frame[o..end], false, same, None)?;
        out.push((e, o as u32));
        o += l;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(pos: u64, data: &'static [u8]) -> StoredEvent {
        StoredEvent {
            position: pos,
            revision: pos,
            created: Timestamp(42),
            id: Uuid::new_v4(),
            content_type: ContentType::Json,
            flags: 0,
            stream: StreamName::new("s-1").unwrap(),
            event_type: "T".into(),
            data: Bytes::from_static(data),
            metadata: Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn link_records_round_trip_through_a_frame_and_malformed_lists_are_refused() {
        let e = ev(9, b"{}");
        assert!(e.link_revisions().unwrap().is_empty());
        let stub = e.stub();
        assert!(!stub.has_link_revisions());
        let links = stub.with_link_revisions([("$ce-s", 12), ("$et-T", u64::MAX)]);
        assert!(links.is_stub() && links.has_link_revisions());
        assert_eq!(
            (links.position, links.revision, links.id, &links.stream),
            (e.position, e.revision, e.id, &e.stream)
        );
        let mut buf = Vec::new();
        encode_frame(std::slice::from_ref(&links), Timestamp(42), 0, &mut buf);
        let FrameCheck::Valid(h) = check_frame(&buf) else {
            panic!()
        };
        let frame = Bytes::from(buf);
        let decoded = decode_frame_events(&frame, &h).unwrap();
        assert_eq!(
            decoded[0].0.link_revisions().unwrap(),
            vec![("$ce-s", 12), ("$et-T", u64::MAX)]
        );
        // Cut anywhere inside an entry: refused, not misread.
        for cut in 1..links.data.len() {
            if cut == 15 {
                continue; // the end of the first entry: a shorter valid list
            }
            let short = StoredEvent {
                data: links.data.slice(..cut),
                ..links.clone()
            };
            assert!(short.link_revisions().is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn frame_round_trip_and_every_torn_prefix_is_incomplete() {
        let events = vec![ev(7, b"{\"a\":1}"), ev(8, b"[]")];
        let mut buf = Vec::new();
        let offsets = encode_frame(&events, Timestamp(42), 3, &mut buf);
        let FrameCheck::Valid(h) = check_frame(&buf) else {
            panic!()
        };
        assert_eq!(
            (h.first_position, h.count, h.len as usize, h.group_offset),
            (7, 2, buf.len(), 3)
        );
        assert_eq!(h.group_first_position(), Some(4));
        let frame = Bytes::from(buf.clone());
        let decoded = decode_frame_events(&frame, &h).unwrap();
        assert_eq!(
            decoded.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>(),
            events
        );
        assert_eq!(decoded.iter().map(|(_, o)| *o).collect::<Vec<_>>(), offsets);
        let (single, _) = StoredEvent::decode(&frame.slice(offsets[1] as usize..), true).unwrap();
        assert_eq!(single, events[1]);
        // With an owner (a cached block), data and metadata are slices of it.
        let rest = &frame[offsets[1] as usize..];
        let (sliced, _) = StoredEvent::decode_with(rest, true, None, Some(&frame)).unwrap();
        assert_eq!(sliced, events[1]);
        let inside = |b: &Bytes| {
            let (lo, hi) = (
                frame.as_ptr() as usize,
                frame.as_ptr() as usize + frame.len(),
            );
            (lo..hi).contains(&(b.as_ptr() as usize))
        };
        assert!(inside(&sliced.data) && inside(&sliced.metadata));
        for cut in 0..buf.len() {
            assert!(
                matches!(check_frame(&buf[..cut]), FrameCheck::Incomplete),
                "cut {cut}"
            );
        }
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(
                !matches!(check_frame(&bad), FrameCheck::Valid(_)),
                "flip at {i}"
            );
        }
    }

    #[test]
    fn segment_header_round_trip_in_both_versions() {
        let h = SegmentHeader::new(3, 1 << 33);
        assert!(h.group_frames());
        let old = SegmentHeader {
            version: 1,
            features: 0,
            ..h
        };
        for h in [h, old] {
            assert_eq!(SegmentHeader::decode(&h.encode()).unwrap(), h);
            // Version 1 leaves bytes 28..32 unchecked (always zero).
            let checked = if h.version == 1 {
                28
            } else {
                SEGMENT_HEADER_LEN
            };
            for i in 0..checked {
                let mut b = h.encode();
                b[i] ^= 1;
                assert!(SegmentHeader::decode(&b).is_err(), "flip at {i}");
            }
        }
    }

    #[test]
    fn unknown_versions_and_features_are_refused() {
        let newer = SegmentHeader {
            version: FORMAT_VERSION + 1,
            ..SegmentHeader::new(0, 0)
        };
        let e = SegmentHeader::decode(&newer.encode()).unwrap_err();
        assert!(e.contains("version 3 is not supported"), "{e}");
        let unknown = SegmentHeader {
            features: WRITTEN_FEATURES | 0x100,
            ..SegmentHeader::new(0, 0)
        };
        let e = SegmentHeader::decode(&unknown.encode()).unwrap_err();
        assert!(e.contains("0x100 unknown"), "{e}");
    }
}

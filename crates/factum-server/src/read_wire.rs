//! The read path's wire format, written by hand: `Streams.Read` answers are
//! most of what a server sends, so event messages are encoded straight from
//! a [`RecordedEvent`] into the chunk that goes out — no intermediate prost
//! structs, no metadata map, no per-field allocations, no second copy. The
//! bytes are exactly the protobuf encoding of
//! `ReadResp { event: ReadEvent { … } }` (tested against prost's decoder
//! below). Control messages (confirmation, checkpoints, caught-up, …) still
//! go through prost.
//!
//! Answers are written as gRPC frames (a flag byte, a 4-byte length, the
//! message) one after another into one buffer ([`frame_event`],
//! [`frame_message`]); `grpc_read` hands such chunks to the response body
//! as they are (ADR 46).

use bytes::{Buf, Bytes, BytesMut};
use factum_core::{ContentType, RecordedEvent, Uuid};
use prost::encoding::encoded_len_varint;
use prost::Message;
use tonic::Status;

use crate::convert::{UuidFormat, LINK_EVENT_TYPE};

/// The request path of `Streams.Read`.
pub const READ_PATH: &str = "/event_store.client.streams.Streams/Read";

/// Where an encoding goes: only whole slices are written (see [`Cursor`]).
pub trait Sink {
    /// Appends `b`.
    fn put_slice(&mut self, b: &[u8]);
    /// Appends one byte.
    fn put_u8(&mut self, b: u8) {
        self.put_slice(&[b]);
    }
}

#[cfg(test)]
impl Sink for BytesMut {
    fn put_slice(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
}

/// One message written into the bytes reserved for exactly that message:
/// each small write (a key, a varint) is a bounds check and a copy, where
/// `BytesMut` checks its capacity and may grow per write (the largest share
/// of the server's CPU time in `grpc-read-all`, ADR 22). Writes past the
/// end are dropped and remembered, never a panic; [`frame_event`] reports
/// them as an internal error.
struct Cursor<'a> {
    buf: &'a mut [u8],
    len: usize,
    overflow: bool,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a mut [u8]) -> Cursor<'a> {
        Cursor {
            buf,
            len: 0,
            overflow: false,
        }
    }

    /// Whether exactly the bytes reserved were written.
    fn exact(&self) -> bool {
        !self.overflow && self.len == self.buf.len()
    }
}

impl Sink for Cursor<'_> {
    #[inline]
    fn put_slice(&mut self, b: &[u8]) {
        match self.buf.get_mut(self.len..self.len + b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                self.len += b.len();
            }
            None => self.overflow = true,
        }
    }

    /// A byte stored in place: keys and varints are most of an event's
    /// writes, and a slice copy of one or two bytes is a `memcpy` call.
    #[inline]
    fn put_u8(&mut self, b: u8) {
        match self.buf.get_mut(self.len) {
            Some(dst) => {
                *dst = b;
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }
}

/// A varint, byte by byte into the sink (`Cursor` stores each in place).
#[inline]
fn encode_varint(mut v: u64, buf: &mut impl Sink) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

const VARINT: u64 = 0;
const LEN: u64 = 2;

fn put_key(buf: &mut impl Sink, field: u32, wire_type: u64) {
    encode_varint(u64::from(field) << 3 | wire_type, buf);
}

/// Length of a length-delimited payload of `n` bytes with its prefix.
fn delimited(n: usize) -> usize {
    encoded_len_varint(n as u64) + n
}

/// A proto3 scalar field: absent when zero.
fn varint_len(v: u64) -> usize {
    if v == 0 {
        0
    } else {
        1 + encoded_len_varint(v)
    }
}

fn put_varint(buf: &mut impl Sink, field: u32, v: u64) {
    if v != 0 {
        put_key(buf, field, VARINT);
        encode_varint(v, buf);
    }
}

/// A proto3 `bytes`/`string` field: absent when empty.
fn bytes_len(b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        1 + delimited(b.len())
    }
}

fn put_bytes(buf: &mut impl Sink, field: u32, b: &[u8]) {
    if !b.is_empty() {
        put_key(buf, field, LEN);
        encode_varint(b.len() as u64, buf);
        buf.put_slice(b);
    }
}

/// A message-typed field (always present once set).
fn message_len(inner: usize) -> usize {
    1 + delimited(inner)
}

fn put_message_header(buf: &mut impl Sink, field: u32, inner: usize) {
    put_key(buf, field, LEN);
    encode_varint(inner as u64, buf);
}

/// A decimal number formatted without allocating.
struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    fn new(v: i64) -> Decimal {
        // itoa writes two digits at a time; one division per digit was
        // a few percent of a read's server CPU.
        let mut buf = itoa::Buffer::new();
        let text = buf.format(v).as_bytes();
        let mut digits = [0u8; 20];
        let start = digits.len() - text.len();
        digits[start..].copy_from_slice(text);
        Decimal { digits, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

/// A wire UUID in the form the client asked for.
enum WireUuid {
    Structured(u64, u64),
    String([u8; 36]),
}

impl WireUuid {
    fn new(id: Uuid, format: UuidFormat) -> WireUuid {
        match format {
            UuidFormat::Structured => {
                let (most, least) = id.as_u64_pair();
                WireUuid::Structured(most, least)
            }
            UuidFormat::String => {
                let mut s = [0u8; 36];
                id.hyphenated().encode_lower(&mut s);
                WireUuid::String(s)
            }
        }
    }

    /// Length of the `UUID` message's body.
    fn body_len(&self) -> usize {
        match self {
            // oneof value { Structured structured = 1; string string = 2; }
            WireUuid::Structured(m, l) => message_len(varint_len(*m) + varint_len(*l)),
            WireUuid::String(s) => 1 + delimited(s.len()),
        }
    }

    fn put(&self, buf: &mut impl Sink) {
        match self {
            WireUuid::Structured(m, l) => {
                put_message_header(buf, 1, varint_len(*m) + varint_len(*l));
                put_varint(buf, 1, *m);
                put_varint(buf, 2, *l);
            }
            WireUuid::String(s) => {
                put_key(buf, 2, LEN);
                encode_varint(s.len() as u64, buf);
                buf.put_slice(s);
            }
        }
    }
}

/// One `ReadResp.ReadEvent.RecordedEvent`, borrowed from the event.
struct Record<'a> {
    id: WireUuid,
    stream: &'a [u8],
    revision: u64,
    position: u64,
    event_type: &'a str,
    content_type: &'static str,
    created: Decimal,
    custom_metadata: &'a [u8],
    data: &'a [u8],
}

/// The length of one `map<string, string>` entry's body.
fn entry_len(k: &str, v: &[u8]) -> usize {
    bytes_len(k.as_bytes()) + bytes_len(v)
}

impl Record<'_> {
    fn entries(&self) -> [(&'static str, &[u8]); 3] {
        [
            ("type", self.event_type.as_bytes()),
            ("content-type", self.content_type.as_bytes()),
            ("created", self.created.as_bytes()),
        ]
    }

    fn body_len(&self) -> usize {
        let mut n = message_len(self.id.body_len())
            + message_len(bytes_len(self.stream))
            + varint_len(self.revision)
            + 2 * varint_len(self.position)
            + bytes_len(self.custom_metadata)
            + bytes_len(self.data);
        for (k, v) in self.entries() {
            n += message_len(entry_len(k, v));
        }
        n
    }

    fn put(&self, buf: &mut impl Sink) {
        put_message_header(buf, 1, self.id.body_len());
        self.id.put(buf);
        put_message_header(buf, 2, bytes_len(self.stream));
        put_bytes(buf, 3, self.stream);
        put_varint(buf, 3, self.revision);
        put_varint(buf, 4, self.position);
        put_varint(buf, 5, self.position);
        for (k, v) in self.entries() {
            put_message_header(buf, 6, entry_len(k, v));
            put_bytes(buf, 1, k.as_bytes());
            put_bytes(buf, 2, v);
        }
        put_bytes(buf, 7, self.custom_metadata);
        put_bytes(buf, 8, self.data);
    }
}

/// `created` as it travels: .NET ticks (`factum_proto::ticks`).
fn ticks(e: &RecordedEvent) -> Decimal {
    Decimal::new(factum_proto::ticks::from_timestamp(e.created))
}

fn event_record(e: &RecordedEvent, format: UuidFormat) -> Record<'_> {
    Record {
        id: WireUuid::new(e.id, format),
        stream: e.stream.as_str().as_bytes(),
        revision: e.revision.0,
        position: e.position.0,
        event_type: &e.event_type,
        content_type: e.content_type.mime(),
        created: ticks(e),
        custom_metadata: &e.metadata,
        data: &e.data,
    }
}

/// One event's `ReadResp`: its records and their lengths.
struct Layout<'a> {
    event: Option<(Record<'a>, usize)>,
    link: Option<(Record<'a>, usize)>,
    read_event_len: usize,
    position: u64,
}

impl<'a> Layout<'a> {
    /// The event, its link (when read through `$ce-`/`$et-` with links
    /// resolved), or the link alone (not resolved): the same choice
    /// [`crate::convert`] documents. `link_data` holds the link's data.
    fn new(
        e: &'a RecordedEvent,
        resolve_links: bool,
        format: UuidFormat,
        link_data: &'a mut String,
    ) -> Layout<'a> {
        let link = match &e.link {
            Some(link) => {
                *link_data = format!("{}@{}", e.revision, e.stream);
                Some(Record {
                    id: WireUuid::new(e.original_id(), format),
                    stream: link.stream.as_str().as_bytes(),
                    revision: link.revision.0,
                    // No separate link record exists: the link stands at its target's position.
                    position: e.position.0,
                    event_type: LINK_EVENT_TYPE,
                    content_type: ContentType::Binary.mime(),
                    created: ticks(e),
                    custom_metadata: &[],
                    data: link_data.as_bytes(),
                })
            }
            None => None,
        };
        let (event, link) = match link {
            Some(l) if resolve_links => (Some(event_record(e, format)), Some(l)),
            Some(l) => (Some(l), None),
            None => (Some(event_record(e, format)), None),
        };
        let event = event.map(|r| {
            let n = r.body_len();
            (r, n)
        });
        let link = link.map(|r| {
            let n = r.body_len();
            (r, n)
        });
        // ReadEvent { event = 1; link = 2; oneof position { commit_position = 3 } }:
        // a oneof scalar is written even when zero.
        let read_event_len = event.as_ref().map_or(0, |(_, n)| message_len(*n))
            + link.as_ref().map_or(0, |(_, n)| message_len(*n))
            + 1
            + encoded_len_varint(e.position.0);
        Layout {
            event,
            link,
            read_event_len,
            position: e.position.0,
        }
    }

    /// The `ReadResp`'s length: `ReadResp { oneof content { ReadEvent event = 1; … } }`.
    fn len(&self) -> usize {
        message_len(self.read_event_len)
    }

    fn put(&self, buf: &mut impl Sink) {
        put_message_header(buf, 1, self.read_event_len);
        if let Some((r, n)) = &self.event {
            put_message_header(buf, 1, *n);
            r.put(buf);
        }
        if let Some((r, n)) = &self.link {
            put_message_header(buf, 2, *n);
            r.put(buf);
        }
        put_key(buf, 3, VARINT);
        encode_varint(self.position, buf);
    }
}

/// Appends one `ReadResp` carrying `e` to `buf` (unframed; the tests'
/// reference for the framed chunks).
#[cfg(test)]
fn encode_event(buf: &mut impl Sink, e: &RecordedEvent, resolve_links: bool, format: UuidFormat) {
    let mut link_data = String::new();
    Layout::new(e, resolve_links, format, &mut link_data).put(buf);
}

/// The gRPC frame header: not compressed, then the length (big-endian).
const FRAME_HEADER: usize = 5;

/// The error for an answer longer than the limit (gRPC's code for a message
/// larger than allowed).
fn too_large(len: usize, max: usize) -> Status {
    Status::resource_exhausted(format!(
        "an answer of {len} bytes is longer than the {max}-byte message limit (--max-append-size sets it)"
    ))
}

/// Makes room at the end of `chunk` for one framed message of `len` bytes
/// and returns the message's bytes (zeroed), after its header.
fn frame(chunk: &mut BytesMut, len: usize) -> &mut [u8] {
    let start = chunk.len();
    if chunk.capacity() - start < FRAME_HEADER + len {
        // Room for the rest of a batch at once, not a reallocation per event.
        chunk.reserve((FRAME_HEADER + len).max(CHUNK_RESERVE));
    }
    chunk.resize(start + FRAME_HEADER + len, 0);
    let (header, message) = chunk[start..].split_at_mut(FRAME_HEADER);
    header[0] = 0;
    header[1..].copy_from_slice(&(len as u32).to_be_bytes());
    message
}

/// What a chunk reserves when it needs room: a batch (`grpc_read` hands
/// over at 64 KiB) and a typical event.
const CHUNK_RESERVE: usize = 64 * 1024 + 1024;

/// Appends the event's `ReadResp` to `chunk` as a gRPC frame; an answer
/// longer than `max` bytes is refused (nothing is written).
pub fn frame_event(
    chunk: &mut BytesMut,
    e: &RecordedEvent,
    resolve_links: bool,
    format: UuidFormat,
    max: usize,
) -> Result<(), Status> {
    let mut link_data = String::new();
    let layout = Layout::new(e, resolve_links, format, &mut link_data);
    let len = layout.len();
    if len > max {
        return Err(too_large(len, max));
    }
    let start = chunk.len();
    let mut cursor = Cursor::new(frame(chunk, len));
    layout.put(&mut cursor);
    if !cursor.exact() {
        chunk.truncate(start);
        return Err(Status::internal(
            "an event's encoding did not match its length",
        ));
    }
    Ok(())
}

/// Appends any `ReadResp` to `chunk` as a gRPC frame (prost-encoded).
pub fn frame_message(chunk: &mut BytesMut, m: &impl Message, max: usize) -> Result<(), Status> {
    let len = m.encoded_len();
    if len > max {
        return Err(too_large(len, max));
    }
    let mut message = frame(chunk, len);
    m.encode(&mut message)
        .map_err(|e| Status::internal(format!("encoding an answer: {e}")))
}

/// The messages of a chunk of frames (as [`frame_event`] and
/// [`frame_message`] write them).
pub fn messages(mut chunk: Bytes) -> impl Iterator<Item = Bytes> {
    std::iter::from_fn(move || {
        if chunk.len() < FRAME_HEADER {
            return None;
        }
        let len = u32::from_be_bytes([chunk[1], chunk[2], chunk[3], chunk[4]]) as usize;
        chunk.advance(FRAME_HEADER);
        let len = len.min(chunk.len());
        Some(chunk.split_to(len))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use factum_core::{Link, Position, StreamName, StreamRevision, Timestamp};
    use factum_proto::streams::read_resp::{self, Content};
    use factum_proto::streams::ReadResp;

    use crate::convert;

    /// What the prost-built path sends for `e`.
    fn reference(e: &RecordedEvent, resolve: bool, f: UuidFormat) -> ReadResp {
        let (event, link) = convert::event_and_link(e, resolve, f);
        ReadResp {
            content: Some(Content::Event(read_resp::ReadEvent {
                event,
                link,
                position: Some(read_resp::read_event::Position::CommitPosition(
                    e.position.0,
                )),
            })),
        }
    }

    fn events() -> Vec<RecordedEvent> {
        let base = RecordedEvent {
            id: Uuid::parse_str("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap(),
            stream: StreamName::new("order-1").unwrap(),
            revision: StreamRevision(0),
            position: Position(0),
            event_type: "Placed".into(),
            content_type: ContentType::Json,
            data: Bytes::from_static(b"{\"a\":1}"),
            metadata: Bytes::new(),
            created: Timestamp(0),
            link: None,
        };
        let mut big = base.clone();
        big.id = Uuid::from_u64_pair(u64::MAX, 1 << 63);
        big.revision = StreamRevision(u64::MAX);
        big.position = Position(300_000_000_000);
        big.event_type = String::new();
        big.content_type = ContentType::Binary;
        big.data = Bytes::from(vec![7u8; 70_000]);
        big.metadata = Bytes::from_static(b"{\"m\":true}");
        big.created = Timestamp(1_700_000_000_123_456);
        let mut linked = base.clone();
        linked.position = Position(42);
        linked.revision = StreamRevision(5);
        linked.created = Timestamp(-5);
        linked.link = Some(Link {
            stream: StreamName::new("$ce-order").unwrap(),
            revision: StreamRevision(9),
        });
        let mut nil = base.clone();
        nil.id = Uuid::nil();
        nil.data = Bytes::new();
        vec![base, big, linked, nil]
    }

    #[test]
    fn encoded_events_decode_as_the_prost_messages() {
        for e in events() {
            for resolve in [false, true] {
                for f in [UuidFormat::String, UuidFormat::Structured] {
                    let mut buf = BytesMut::new();
                    encode_event(&mut buf, &e, resolve, f);
                    let decoded = ReadResp::decode(buf.freeze()).unwrap();
                    assert_eq!(decoded, reference(&e, resolve, f), "{e:?} {resolve} {f:?}");
                }
            }
        }
    }

    #[test]
    fn encoded_lengths_match_prost() {
        for e in events() {
            let mut buf = BytesMut::new();
            encode_event(&mut buf, &e, true, UuidFormat::Structured);
            let r = reference(&e, true, UuidFormat::Structured);
            assert_eq!(buf.len(), r.encoded_len());
        }
    }

    #[test]
    fn framed_chunks_hold_the_messages_encode_event_writes() {
        let mut chunk = BytesMut::new();
        let mut expected = Vec::new();
        for e in events() {
            for resolve in [false, true] {
                for f in [UuidFormat::String, UuidFormat::Structured] {
                    let mut one = BytesMut::new();
                    encode_event(&mut one, &e, resolve, f);
                    expected.push(one.freeze());
                    frame_event(&mut chunk, &e, resolve, f, 1 << 20).unwrap();
                }
            }
        }
        let caught_up = ReadResp {
            content: Some(Content::LastAllStreamPosition(
                factum_proto::shared::AllStreamPosition {
                    commit_position: 7,
                    prepare_position: 7,
                },
            )),
        };
        frame_message(&mut chunk, &caught_up, 1 << 20).unwrap();
        expected.push(Bytes::from(caught_up.encode_to_vec()));
        let chunk = chunk.freeze();
        // Each frame: not compressed, its length, the message.
        assert_eq!(chunk[0], 0);
        assert_eq!(
            u32::from_be_bytes([chunk[1], chunk[2], chunk[3], chunk[4]]) as usize,
            expected[0].len()
        );
        let got: Vec<Bytes> = messages(chunk).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn answers_past_the_limit_are_refused_and_leave_the_chunk_as_it_was() {
        let big = events().remove(1);
        let mut chunk = BytesMut::new();
        frame_event(&mut chunk, &events()[0], false, UuidFormat::String, 1000).unwrap();
        let before = chunk.clone();
        let e = frame_event(&mut chunk, &big, false, UuidFormat::String, 1000).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert_eq!(chunk, before);
    }

    #[test]
    fn writes_past_the_reserved_bytes_are_refused_not_a_panic() {
        let mut bytes = [0u8; 3];
        let mut s = Cursor::new(&mut bytes);
        s.put_slice(b"ab");
        assert!(!s.exact(), "short");
        s.put_slice(b"cd");
        assert!(s.overflow);
        assert!(!s.exact(), "past the end");
    }

    #[test]
    fn decimals() {
        for v in [0i64, 7, -7, 10, 1234567890, i64::MAX, i64::MIN] {
            assert_eq!(Decimal::new(v).as_bytes(), v.to_string().as_bytes());
        }
    }
}

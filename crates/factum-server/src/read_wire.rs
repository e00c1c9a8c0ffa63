//! The read path's wire format, written by hand: `Streams.Read` answers are
//! most of what a server sends, so event messages are encoded straight from
//! a [`RecordedEvent`] into one buffer — no intermediate prost structs, no
//! metadata map, no per-field allocations. The bytes are exactly the
//! protobuf encoding of `ReadResp { event: ReadEvent { … } }` (tested
//! against prost's decoder below). Control messages (confirmation,
//! checkpoints, caught-up, …) still go through prost.
//!
//! The route `/event_store.client.streams.Streams/Read` is served by
//! `grpc_read::ReadRoute` with [`ReadCodec`], whose items are events
//! (encoded by hand as tonic writes them, straight into its buffer) or
//! encoded messages.

use bytes::{BufMut, Bytes, BytesMut};
use factum_core::{ContentType, RecordedEvent, Uuid};
use factum_proto::streams::ReadReq;
use prost::encoding::encoded_len_varint;
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::convert::{UuidFormat, LINK_EVENT_TYPE};

/// The request path of `Streams.Read`.
pub const READ_PATH: &str = "/event_store.client.streams.Streams/Read";

/// Where an encoding goes: only whole slices are written (see [`Exact`]).
pub trait Sink {
    /// Appends `b`.
    fn put_slice(&mut self, b: &[u8]);
    /// Makes room for exactly `n` more bytes (the message about to be
    /// written); `false` when they cannot be written here.
    fn reserve_exact(&mut self, n: usize) -> bool;
}

impl Sink for BytesMut {
    fn put_slice(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }

    fn reserve_exact(&mut self, n: usize) -> bool {
        self.reserve(n);
        true
    }
}

/// One event message written into a reused buffer sized for exactly that
/// message: each small write (a key, a varint) is a bounds check and a
/// copy, where `BytesMut` checks its capacity and may grow per write (the
/// largest share of the server's CPU time in `grpc-read-all`, ADR 22).
/// Writes past the size are dropped and remembered, never a panic; the
/// encoder reports them as an internal error.
struct Exact {
    buf: Vec<u8>,
    len: usize,
    overflow: bool,
}

impl Exact {
    fn new() -> Exact {
        Exact {
            buf: Vec::new(),
            len: 0,
            overflow: false,
        }
    }

    /// The bytes written, when they are exactly the message announced.
    fn written(&self) -> Option<&[u8]> {
        (!self.overflow && self.len == self.buf.len()).then_some(&self.buf[..])
    }
}

impl Sink for Exact {
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

    fn reserve_exact(&mut self, n: usize) -> bool {
        if self.len != 0 || self.overflow {
            // One message per use.
            self.overflow = true;
            return false;
        }
        // Zeroing a few hundred bytes is cheaper than tracking what is
        // initialised; the vector keeps its capacity between messages.
        self.buf.clear();
        self.buf.resize(n, 0);
        true
    }
}

/// A varint in one write: `BufMut::put_u8` on a `BytesMut` (what prost's
/// `encode_varint` uses) is a slice copy with a capacity check per byte.
fn encode_varint(mut v: u64, buf: &mut impl Sink) {
    let mut bytes = [0u8; 10];
    let mut n = 0;
    while v >= 0x80 {
        bytes[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    bytes[n] = v as u8;
    buf.put_slice(&bytes[..=n]);
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
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let negative = v < 0;
        let mut n = v.unsigned_abs();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if negative {
            start -= 1;
            digits[start] = b'-';
        }
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

/// Appends one `ReadResp` carrying `e` — the event, its link (when read
/// through `$ce-`/`$et-` with links resolved), or the link alone (not
/// resolved) — to `buf`. The same choice [`crate::convert`] documents.
pub fn encode_event(
    buf: &mut impl Sink,
    e: &RecordedEvent,
    resolve_links: bool,
    format: UuidFormat,
) {
    let link_data;
    let link = match &e.link {
        Some(link) => {
            link_data = format!("{}@{}", e.revision, e.stream);
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
    let event_len = event.as_ref().map(Record::body_len);
    let link_len = link.as_ref().map(Record::body_len);
    // ReadEvent { event = 1; link = 2; oneof position { commit_position = 3 } }:
    // a oneof scalar is written even when zero.
    let read_event_len = event_len.map_or(0, message_len)
        + link_len.map_or(0, message_len)
        + 1
        + encoded_len_varint(e.position.0);
    // ReadResp { oneof content { ReadEvent event = 1; … } }
    let total = message_len(read_event_len);
    if !buf.reserve_exact(total) {
        return;
    }
    put_message_header(buf, 1, read_event_len);
    if let (Some(r), Some(n)) = (&event, event_len) {
        put_message_header(buf, 1, n);
        r.put(buf);
    }
    if let (Some(r), Some(n)) = (&link, link_len) {
        put_message_header(buf, 2, n);
        r.put(buf);
    }
    put_key(buf, 3, VARINT);
    encode_varint(e.position.0, buf);
}

/// One answer of a read: an event, encoded when tonic writes it (straight
/// into its buffer), or a message already encoded.
pub enum Outgoing {
    /// An event and how the client asked for it.
    Event {
        /// The event (with its link, if read through one).
        event: RecordedEvent,
        /// Send the event and its link, not the link alone.
        resolve_links: bool,
        /// The id form.
        uuid: UuidFormat,
    },
    /// Any other `ReadResp`, encoded.
    Message(Bytes),
}

impl Outgoing {
    /// Writes the `ReadResp` into `buf`.
    pub fn encode(self, buf: &mut impl Sink) {
        match self {
            Outgoing::Event {
                event,
                resolve_links,
                uuid,
            } => encode_event(buf, &event, resolve_links, uuid),
            Outgoing::Message(m) => buf.put_slice(&m),
        }
    }
}

/// Read answers are encoded as tonic writes them; requests are decoded by prost.
#[derive(Clone, Copy, Default)]
pub struct ReadCodec;

/// Writes answers into tonic's buffer.
pub struct Encoded {
    /// An event is encoded here first, then copied into tonic's buffer in
    /// one write: tonic's buffer takes each small write (a varint byte) as
    /// a slice copy with its own capacity check. Reused, so it stays in
    /// cache.
    scratch: Exact,
}

impl Encoder for Encoded {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outgoing::Message(m) => dst.put_slice(&m),
            event => {
                let scratch = &mut self.scratch;
                scratch.len = 0;
                scratch.overflow = false;
                event.encode(scratch);
                let bytes = scratch.written().ok_or_else(|| {
                    Status::internal("an event's encoding did not match its length")
                })?;
                dst.put_slice(bytes);
            }
        }
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        // Ready answers are encoded into one buffer until 64 KiB are there
        // (or the stream has nothing more right now), then written.
        BufferSettings::new(64 * 1024, 64 * 1024)
    }
}

/// Decodes the `ReadReq`.
pub struct Request;

impl Decoder for Request {
    type Item = ReadReq;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ReadReq>, Status> {
        ReadReq::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("malformed ReadReq: {e}")))
    }
}

impl Codec for ReadCodec {
    type Encode = Outgoing;
    type Decode = ReadReq;
    type Encoder = Encoded;
    type Decoder = Request;

    fn encoder(&mut self) -> Encoded {
        Encoded {
            scratch: Exact::new(),
        }
    }

    fn decoder(&mut self) -> Request {
        Request
    }
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
    fn the_encoder_writes_what_encode_event_writes() {
        let mut encoder = ReadCodec.encoder();
        for e in events() {
            for resolve in [false, true] {
                for f in [UuidFormat::String, UuidFormat::Structured] {
                    let mut expected = BytesMut::new();
                    encode_event(&mut expected, &e, resolve, f);
                    let s = &mut encoder.scratch;
                    s.len = 0;
                    s.overflow = false;
                    encode_event(s, &e, resolve, f);
                    assert_eq!(s.written(), Some(&expected[..]));
                }
            }
        }
    }

    #[test]
    fn writes_past_the_announced_length_are_refused_not_a_panic() {
        let mut s = Exact::new();
        assert!(s.reserve_exact(3));
        s.put_slice(b"ab");
        assert_eq!(s.written(), None, "short");
        s.put_slice(b"cd");
        assert!(s.overflow);
        assert_eq!(s.written(), None, "past the end");
        assert!(!s.reserve_exact(1), "one message per use");
    }

    #[test]
    fn decimals() {
        for v in [0i64, 7, -7, 10, 1234567890, i64::MAX, i64::MIN] {
            assert_eq!(Decimal::new(v).as_bytes(), v.to_string().as_bytes());
        }
    }
}

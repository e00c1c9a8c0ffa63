//! `Streams.Read` answers decoded by hand: an event message becomes a
//! [`RecordedEvent`] straight from the received bytes — one allocation for
//! `data` (and one for user metadata when there is any), the stream name of
//! consecutive events shared, no metadata map built. Any other
//! answer (confirmation, caught-up, checkpoint, …) is decoded by prost.
//!
//! Protobuf rules are kept: fields in any order, unknown fields skipped,
//! a repeated scalar's last value wins, repeated embedded messages merge.

use std::ops::Range;

use bytes::{Buf, Bytes};
use factum_core::{
    ContentType, Error, Link, Position, RecordedEvent, StreamName, StreamRevision, Timestamp, Uuid,
};
use factum_proto::streams::{ReadReq, ReadResp};
use factum_proto::wire;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::wire::protocol;

/// The request path of `Streams.Read`.
pub const READ_PATH: &str = "/event_store.client.streams.Streams/Read";

/// The link event type of `$ce-`/`$et-` streams.
const LINK_EVENT_TYPE: &str = "$>";

/// One answer of a read or subscription.
#[derive(Debug)]
pub enum ReadItem {
    /// An event (the original, with `link` set when reached through one),
    /// or why the server's event message is not one.
    Event(Result<RecordedEvent, Error>),
    /// Anything else, as prost decodes it.
    Other(ReadResp),
}

/// Requests encoded by prost, answers decoded by [`ReadDecoder`].
#[derive(Default)]
pub struct ReadCodec;

impl Codec for ReadCodec {
    type Encode = ReadReq;
    type Decode = ReadItem;
    type Encoder = RequestEncoder;
    type Decoder = ReadDecoder;

    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }

    fn decoder(&mut self) -> ReadDecoder {
        ReadDecoder::default()
    }
}

/// Encodes the `ReadReq`.
pub struct RequestEncoder;

impl Encoder for RequestEncoder {
    type Item = ReadReq;
    type Error = Status;

    fn encode(&mut self, item: ReadReq, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the read request: {e}")))
    }
}

/// Decodes answers; remembers the last stream name so consecutive events
/// of one stream share it.
#[derive(Default)]
pub struct ReadDecoder {
    last_stream: Option<StreamName>,
}

impl Decoder for ReadDecoder {
    type Item = ReadItem;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ReadItem>, Status> {
        let message = src.copy_to_bytes(src.remaining());
        match self.decode_event(&message) {
            Ok(Some(event)) => Ok(Some(ReadItem::Event(event))),
            // Not an event message: prost decides what it is.
            Ok(None) => ReadResp::decode(message)
                .map(|r| Some(ReadItem::Other(r)))
                .map_err(|e| Status::internal(format!("malformed ReadResp: {e}"))),
            Err(e) => Ok(Some(ReadItem::Event(Err(e)))),
        }
    }
}

/// Decodes one `ReadResp` message as [`ReadDecoder`] does, with a fresh
/// decoder: `Ok(Some(..))` for an event message, `Ok(None)` for any other
/// answer prost decodes. For the fuzz tests (`tests/fuzz_decode.rs`).
#[doc(hidden)]
#[allow(clippy::type_complexity)]
pub fn decode_read_message(message: Bytes) -> Result<Option<Result<RecordedEvent, Error>>, Status> {
    let mut decoder = ReadDecoder::default();
    match decoder.decode_event(&message) {
        Ok(Some(event)) => Ok(Some(event)),
        Ok(None) => ReadResp::decode(message)
            .map(|_| None)
            .map_err(|e| Status::internal(format!("malformed ReadResp: {e}"))),
        Err(e) => Ok(Some(Err(e))),
    }
}

/// A position in a message being read: the shared cursor
/// ([`wire::Fields`]) over the answer's `Bytes`, its refusals as this
/// client's protocol errors.
struct Fields<'a> {
    bytes: &'a Bytes,
    inner: wire::Fields<'a>,
}

fn malformed(what: &str) -> Error {
    protocol(format!("malformed ReadResp: {what}"))
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a Bytes, range: Range<usize>) -> Fields<'a> {
        Fields {
            bytes,
            inner: wire::Fields::within(bytes, range),
        }
    }

    /// The next field's number and wire type; `None` at the end.
    #[inline]
    fn next(&mut self) -> Result<Option<(u64, u8)>, Error> {
        self.inner.key().map_err(|e| malformed(e.0))
    }

    /// Skips a field of this wire type (its key already read).
    fn skip(&mut self, field: u64, wire_type: u8) -> Result<(), Error> {
        self.inner
            .skip(field, wire_type)
            .map_err(|e| malformed(e.0))
    }

    /// A length-delimited field's position, checking its wire type.
    #[inline]
    fn expect_delimited(&mut self, wire_type: u8) -> Result<Range<usize>, Error> {
        self.inner
            .expect_delimited(wire_type)
            .map_err(|e| malformed(e.0))
    }

    #[inline]
    fn expect_varint(&mut self, wire_type: u8) -> Result<u64, Error> {
        self.inner
            .expect_varint(wire_type)
            .map_err(|e| malformed(e.0))
    }
}

/// An event id as it was sent.
#[derive(Default)]
enum Id {
    #[default]
    Missing,
    Structured(u64, u64),
    String(Range<usize>),
}

/// One `RecordedEvent` message, merged field by field.
#[derive(Default)]
struct Record {
    id: Id,
    stream: Option<Range<usize>>,
    revision: u64,
    commit_position: u64,
    event_type: Option<Range<usize>>,
    content_type: Option<Range<usize>>,
    created: Option<Range<usize>>,
    custom_metadata: Range<usize>,
    data: Range<usize>,
}

impl Record {
    fn merge(&mut self, f: &mut Fields<'_>) -> Result<(), Error> {
        while let Some((field, wt)) = f.next()? {
            match field {
                1 => {
                    let r = f.expect_delimited(wt)?;
                    self.merge_id(&mut Fields::new(f.bytes, r))?;
                }
                2 => {
                    let r = f.expect_delimited(wt)?;
                    let mut s = Fields::new(f.bytes, r);
                    // StreamIdentifier { bytes stream_name = 3; }
                    let mut name = self.stream.take().unwrap_or(0..0);
                    while let Some((field, wt)) = s.next()? {
                        match field {
                            3 => name = s.expect_delimited(wt)?,
                            _ => s.skip(field, wt)?,
                        }
                    }
                    self.stream = Some(name);
                }
                3 => self.revision = f.expect_varint(wt)?,
                5 => self.commit_position = f.expect_varint(wt)?,
                6 => {
                    // map<string, string> entry { key = 1; value = 2; }
                    let r = f.expect_delimited(wt)?;
                    let mut entry = Fields::new(f.bytes, r);
                    let (mut key, mut value) = (0..0, 0..0);
                    while let Some((field, wt)) = entry.next()? {
                        match field {
                            1 => key = entry.expect_delimited(wt)?,
                            2 => value = entry.expect_delimited(wt)?,
                            _ => entry.skip(field, wt)?,
                        }
                    }
                    match &f.bytes[key] {
                        b"type" => self.event_type = Some(value),
                        b"content-type" => self.content_type = Some(value),
                        b"created" => self.created = Some(value),
                        _ => {}
                    }
                }
                7 => self.custom_metadata = f.expect_delimited(wt)?,
                8 => self.data = f.expect_delimited(wt)?,
                _ => f.skip(field, wt)?,
            }
        }
        Ok(())
    }

    fn merge_id(&mut self, f: &mut Fields<'_>) -> Result<(), Error> {
        // UUID { oneof value { Structured structured = 1; string string = 2; } }
        while let Some((field, wt)) = f.next()? {
            match field {
                1 => {
                    let r = f.expect_delimited(wt)?;
                    let (mut most, mut least) = match self.id {
                        Id::Structured(m, l) => (m, l),
                        _ => (0, 0),
                    };
                    let mut s = Fields::new(f.bytes, r);
                    while let Some((field, wt)) = s.next()? {
                        match field {
                            1 => most = s.expect_varint(wt)?,
                            2 => least = s.expect_varint(wt)?,
                            _ => s.skip(field, wt)?,
                        }
                    }
                    self.id = Id::Structured(most, least);
                }
                2 => self.id = Id::String(f.expect_delimited(wt)?),
                _ => f.skip(field, wt)?,
            }
        }
        Ok(())
    }

    fn finish(
        self,
        bytes: &Bytes,
        last_stream: &mut Option<StreamName>,
    ) -> Result<RecordedEvent, Error> {
        let text = |r: &Range<usize>, what: &str| {
            std::str::from_utf8(&bytes[r.clone()])
                .map_err(|_| malformed(&format!("{what} is not UTF-8")))
        };
        let id = match &self.id {
            Id::Structured(m, l) => Uuid::from_u64_pair(*m, *l),
            Id::String(r) => {
                let s = text(r, "the event id")?;
                Uuid::parse_str(s)
                    .map_err(|e| protocol(format!("event id {s:?} is not a UUID: {e}")))?
            }
            Id::Missing => return Err(protocol("an event came without its id")),
        };
        let name = self
            .stream
            .ok_or_else(|| protocol("an event came without its stream"))?;
        let name = &bytes[name];
        let stream = match last_stream {
            Some(s) if s.as_str().as_bytes() == name => s.clone(),
            _ => {
                let s = StreamName::from_utf8(name)?;
                *last_stream = Some(s.clone());
                s
            }
        };
        let event_type = match &self.event_type {
            Some(r) => text(r, "the event type")?.to_owned(),
            None => String::new(),
        };
        let content_type = match self.content_type.map(|r| &bytes[r]) {
            Some(b"application/json") => ContentType::Json,
            _ => ContentType::Binary,
        };
        let created = self
            .created
            .and_then(|r| factum_proto::ticks::parse(&bytes[r]))
            .unwrap_or(Timestamp(0));
        Ok(RecordedEvent {
            id,
            stream,
            revision: StreamRevision(self.revision),
            position: Position(self.commit_position),
            event_type,
            content_type,
            // Copied out: the receive buffer is then free to be reused at
            // once (slices would keep each one alive, and new ones would be
            // allocated for every frame).
            data: Bytes::copy_from_slice(&bytes[self.data]),
            metadata: Bytes::copy_from_slice(&bytes[self.custom_metadata]),
            created,
            link: None,
        })
    }
}

impl ReadDecoder {
    /// `Ok(None)`: the message is not an event.
    #[allow(clippy::type_complexity)]
    fn decode_event(
        &mut self,
        message: &Bytes,
    ) -> Result<Option<Result<RecordedEvent, Error>>, Error> {
        let mut top = Fields::new(message, 0..message.len());
        let mut event: Option<Record> = None;
        let mut link: Option<Record> = None;
        let mut is_event = false;
        while let Some((field, wt)) = top.next()? {
            match field {
                // ReadResp { oneof content { ReadEvent event = 1; … 2..=9 } }
                1 => {
                    is_event = true;
                    let r = top.expect_delimited(wt)?;
                    let mut read_event = Fields::new(message, r);
                    // ReadEvent { event = 1; link = 2; position = 3 | 4 }
                    while let Some((field, wt)) = read_event.next()? {
                        match field {
                            1 | 2 => {
                                let r = read_event.expect_delimited(wt)?;
                                let slot = if field == 1 { &mut event } else { &mut link };
                                slot.get_or_insert_with(Record::default)
                                    .merge(&mut Fields::new(message, r))?;
                            }
                            _ => read_event.skip(field, wt)?,
                        }
                    }
                }
                2..=9 => return Ok(None),
                _ => top.skip(field, wt)?,
            }
        }
        if !is_event {
            return Ok(None);
        }
        let Some(event) = event else {
            return Ok(Some(Err(protocol("a read event came without its event"))));
        };
        let mut out = match event.finish(message, &mut self.last_stream) {
            Ok(e) => e,
            Err(e) => return Ok(Some(Err(e))),
        };
        if let Some(link) = link {
            // Link streams are not the events' streams: keep the cache.
            let mut cache = None;
            let link = match link.finish(message, &mut cache) {
                Ok(l) => l,
                Err(e) => return Ok(Some(Err(e))),
            };
            if link.event_type == LINK_EVENT_TYPE {
                out.link = Some(Link {
                    stream: link.stream,
                    revision: link.revision,
                });
            }
        }
        Ok(Some(Ok(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use factum_proto::shared;
    use factum_proto::streams::read_resp::{self, read_event::RecordedEvent as WireEvent, Content};
    use std::collections::HashMap;

    fn wire_event(id: shared::uuid::Value, stream: &str, ty: &str, data: &[u8]) -> WireEvent {
        let mut metadata = HashMap::new();
        metadata.insert("type".to_owned(), ty.to_owned());
        metadata.insert("content-type".to_owned(), "application/json".to_owned());
        metadata.insert("created".to_owned(), "17000000001234567".to_owned());
        metadata.insert("extra".to_owned(), "ignored".to_owned());
        WireEvent {
            id: Some(shared::Uuid { value: Some(id) }),
            stream_identifier: Some(shared::StreamIdentifier {
                stream_name: stream.as_bytes().to_vec(),
            }),
            stream_revision: 7,
            prepare_position: 99,
            commit_position: 99,
            metadata,
            custom_metadata: b"{\"m\":1}".to_vec(),
            data: data.to_vec(),
        }
    }

    fn resp(event: Option<WireEvent>, link: Option<WireEvent>) -> ReadResp {
        ReadResp {
            content: Some(Content::Event(read_resp::ReadEvent {
                event,
                link,
                position: Some(read_resp::read_event::Position::CommitPosition(99)),
            })),
        }
    }

    fn decode(d: &mut ReadDecoder, r: &ReadResp) -> Option<Result<RecordedEvent, Error>> {
        let bytes = Bytes::from(r.encode_to_vec());
        d.decode_event(&bytes).unwrap()
    }

    #[test]
    fn events_decode_as_the_prost_path_does() {
        let id = Uuid::parse_str("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap();
        let (m, l) = id.as_u64_pair();
        let forms = [
            shared::uuid::Value::String(id.to_string()),
            shared::uuid::Value::Structured(shared::uuid::Structured {
                most_significant_bits: m as i64,
                least_significant_bits: l as i64,
            }),
        ];
        let mut d = ReadDecoder::default();
        for form in forms {
            let w = wire_event(form, "order-1", "Placed", b"{\"a\":1}");
            let r = resp(Some(w.clone()), None);
            let fast = decode(&mut d, &r).unwrap().unwrap();
            let Some(Content::Event(e)) = r.content else {
                unreachable!()
            };
            let slow = crate::wire::reference::event(e).unwrap();
            assert_eq!(fast, slow);
            assert_eq!(fast.id, id);
            assert_eq!(fast.created, Timestamp(1_700_000_000_123_456));
            assert_eq!(&fast.data[..], b"{\"a\":1}");
        }
    }

    #[test]
    fn links_are_resolved_and_other_messages_fall_through() {
        let id = shared::uuid::Value::String(Uuid::new_v4().to_string());
        let event = wire_event(id.clone(), "order-1", "Placed", b"{}");
        let mut link = wire_event(id, "$ce-order", "$>", b"7@order-1");
        link.stream_revision = 3;
        let mut d = ReadDecoder::default();
        let e = decode(&mut d, &resp(Some(event), Some(link)))
            .unwrap()
            .unwrap();
        let l = e.link.unwrap();
        assert_eq!((l.stream.as_str(), l.revision.0), ("$ce-order", 3));
        assert!(decode(&mut d, &resp(None, None)).unwrap().is_err());
        let other = ReadResp {
            content: Some(Content::LastStreamPosition(4)),
        };
        assert!(decode(&mut d, &other).is_none());
    }

    #[test]
    fn merged_and_unknown_fields_follow_protobuf_rules() {
        let id = shared::uuid::Value::String(Uuid::new_v4().to_string());
        let mut bytes = resp(Some(wire_event(id, "a-1", "X", b"1")), None).encode_to_vec();
        // An unknown varint field (50) and fixed64 (51) at the top level.
        bytes.extend_from_slice(&[0x90, 0x03, 0x01, 0x99, 0x03, 0, 0, 0, 0, 0, 0, 0, 0]);
        // A second ReadEvent whose event carries only a new revision: merged.
        let second = ReadResp {
            content: Some(Content::Event(read_resp::ReadEvent {
                event: Some(WireEvent {
                    stream_revision: 8,
                    ..Default::default()
                }),
                link: None,
                position: None,
            })),
        };
        bytes.extend_from_slice(&second.encode_to_vec());
        let mut d = ReadDecoder::default();
        let e = d
            .decode_event(&Bytes::from(bytes.clone()))
            .unwrap()
            .unwrap()
            .unwrap();
        let slow = ReadResp::decode(&bytes[..]).unwrap();
        let Some(Content::Event(s)) = slow.content else {
            unreachable!()
        };
        assert_eq!(e, crate::wire::reference::event(s).unwrap());
        assert_eq!(e.revision.0, 8);
        // Truncated input is an error, never a panic.
        for cut in 0..bytes.len() {
            let _ = d.decode_event(&Bytes::from(bytes[..cut].to_vec()));
        }
    }
}

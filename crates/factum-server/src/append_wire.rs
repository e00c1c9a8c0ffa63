//! Append requests decoded by hand (ADR 51): `BatchAppend`'s and
//! `Append`'s messages go straight from their bytes into the events the
//! writer takes, instead of prost's generated messages (a `HashMap` and
//! two `String`s per event, its reads through tonic's non-contiguous
//! buffer), then a conversion.
//!
//! The hand decoder takes the shapes clients send (and skips unknown
//! fields, groups included, with the shared cursor `factum_proto::wire`).
//! Anything else — a field with another wire type than the schema's, a
//! sub-message given twice (which protobuf merges), a truncated message —
//! goes to prost
//! and is converted from there, so every message, valid or not, is
//! answered exactly as the generated decoder would answer it.
//! `the_hand_decoder_agrees_with_prost` and its twin for `Append` check the
//! two against each other on random and damaged messages.

use bytes::{Buf, Bytes};
use factum_core::EventData;
use factum_proto::shared;
use factum_proto::streams::{append_req, batch_append_req, AppendReq, BatchAppendReq};
use factum_proto::wire::{self, LEN, VARINT};
use prost::Message;
use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;

use crate::convert;

/// One `BatchAppendReq` as the batch-append loop takes it.
#[derive(Debug)]
pub struct BatchMsg {
    pub correlation_id: Option<shared::Uuid>,
    pub options: Option<batch_append_req::Options>,
    pub proposed: Vec<Proposed>,
    pub is_final: bool,
}

/// One proposed message: its size as it counts against the append limits,
/// and the event it proposes (or why it is refused).
#[derive(Debug)]
pub struct Proposed {
    pub bytes: u64,
    pub event: Result<EventData, Status>,
}

impl From<BatchAppendReq> for BatchMsg {
    fn from(m: BatchAppendReq) -> Self {
        BatchMsg {
            correlation_id: m.correlation_id,
            options: m.options,
            proposed: m
                .proposed_messages
                .into_iter()
                .map(|p| {
                    Proposed::from_prost(
                        p.encoded_len(),
                        p.id,
                        p.metadata,
                        p.custom_metadata,
                        p.data,
                    )
                })
                .collect(),
            is_final: m.is_final,
        }
    }
}

impl Proposed {
    /// From prost's decoded proposed message (of `Append` or `BatchAppend`:
    /// the same fields) and its `encoded_len`.
    fn from_prost(
        encoded_len: usize,
        id: Option<shared::Uuid>,
        metadata: std::collections::HashMap<String, String>,
        custom_metadata: Vec<u8>,
        data: Vec<u8>,
    ) -> Self {
        Proposed {
            bytes: encoded_len as u64,
            event: convert::proposed_to_event(id.as_ref(), &metadata, custom_metadata, data),
        }
    }
}

/// One `AppendReq` as `Append` takes it.
#[derive(Debug)]
pub enum AppendMsg {
    Options(append_req::Options),
    Proposed(Proposed),
    /// No content.
    Empty,
}

impl From<AppendReq> for AppendMsg {
    fn from(m: AppendReq) -> Self {
        match m.content {
            Some(append_req::Content::Options(o)) => AppendMsg::Options(o),
            Some(append_req::Content::ProposedMessage(p)) => AppendMsg::Proposed(
                Proposed::from_prost(p.encoded_len(), p.id, p.metadata, p.custom_metadata, p.data),
            ),
            None => AppendMsg::Empty,
        }
    }
}

/// Decodes one message by `hand` when it has the usual shape, through
/// prost's `M` otherwise (and prost's error, as tonic reports it, for an
/// invalid one).
fn decode_with<M, T>(buf: &[u8], hand: fn(&[u8]) -> Option<T>) -> Result<T, Status>
where
    M: Message + Default,
    T: From<M>,
{
    match hand(buf) {
        Some(m) => Ok(m),
        None => M::decode(buf)
            .map(T::from)
            .map_err(|e| Status::internal(e.to_string())),
    }
}

/// Decodes one `BatchAppendReq`.
pub fn decode_batch(buf: &[u8]) -> Result<BatchMsg, Status> {
    decode_with::<BatchAppendReq, _>(buf, fast)
}

/// Decodes one `AppendReq`.
pub fn decode_append(buf: &[u8]) -> Result<AppendMsg, Status> {
    decode_with::<AppendReq, _>(buf, fast_append)
}

/// The codec of a route whose requests are decoded by `decode` (here) and
/// whose answers `E` are encoded by prost.
pub struct HandCodec<E, D> {
    decode: fn(&[u8]) -> Result<D, Status>,
    answers: PhantomData<fn(E)>,
}

impl<E, D> HandCodec<E, D>
where
    E: Message + Send + 'static,
    D: Send + 'static,
{
    /// tonic's call machinery with this codec, as the generated services
    /// make it: messages up to `max` bytes both ways, no compression.
    pub fn grpc(decode: fn(&[u8]) -> Result<D, Status>, max: usize) -> tonic::server::Grpc<Self> {
        tonic::server::Grpc::new(HandCodec {
            decode,
            answers: PhantomData,
        })
        .apply_max_message_size_config(Some(max), Some(max))
    }
}

impl<E, D> Codec for HandCodec<E, D>
where
    E: Message + Send + 'static,
    D: Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = tonic_prost::ProstEncoder<E>;
    type Decoder = HandDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        HandDecoder(self.decode)
    }
}

pub struct HandDecoder<D>(fn(&[u8]) -> Result<D, Status>);

impl<D> Decoder for HandDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        let len = buf.remaining();
        // tonic hands a message over in one piece of its buffer.
        let msg = if buf.chunk().len() == len {
            let m = (self.0)(buf.chunk());
            buf.advance(len);
            m
        } else {
            (self.0)(&buf.copy_to_bytes(len))
        };
        msg.map(Some)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The shared cursor ([`wire::Fields`]) where any refusal is `None`: the
/// message then goes to prost, whose error the client gets.
struct Fields<'a>(wire::Fields<'a>);

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Fields<'a> {
        Fields(wire::Fields::new(buf))
    }

    fn varint(&mut self) -> Option<u64> {
        self.0.varint().ok()
    }

    /// The next field's number and wire type; `None` at the end too.
    fn key(&mut self) -> Option<(u64, u8)> {
        self.0.key().ok().flatten()
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        self.0.bytes().ok()
    }

    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    /// Skips an unknown field (a group with all in it).
    fn skip(&mut self, field: u64, wire: u8) -> Option<()> {
        self.0.skip(field, wire).ok()
    }

    fn done(&self) -> bool {
        self.0.done()
    }
}

fn fast(buf: &[u8]) -> Option<BatchMsg> {
    let mut f = Fields::new(buf);
    let mut m = BatchMsg {
        correlation_id: None,
        options: None,
        proposed: Vec::new(),
        is_final: false,
    };
    while !f.done() {
        match f.key()? {
            (1, LEN) if m.correlation_id.is_none() => m.correlation_id = Some(uuid(f.bytes()?)?),
            (2, LEN) if m.options.is_none() => {
                m.options = Some(batch_append_req::Options::decode(f.bytes()?).ok()?)
            }
            (3, LEN) => m.proposed.push(proposed(f.bytes()?)?),
            (4, VARINT) => m.is_final = f.varint()? != 0,
            (1..=4, _) => return None,
            (field, wire) => f.skip(field, wire)?,
        }
    }
    Some(m)
}

fn fast_append(buf: &[u8]) -> Option<AppendMsg> {
    let mut f = Fields::new(buf);
    let mut m = AppendMsg::Empty;
    let mut seen = false;
    while !f.done() {
        match f.key()? {
            // A second content field replaces or merges into the first:
            // prost's business.
            (1 | 2, _) if seen => return None,
            (1, LEN) => m = AppendMsg::Options(append_req::Options::decode(f.bytes()?).ok()?),
            (2, LEN) => m = AppendMsg::Proposed(proposed(f.bytes()?)?),
            (1 | 2, _) => return None,
            (field, wire) => f.skip(field, wire)?,
        }
        seen |= !matches!(m, AppendMsg::Empty);
    }
    Some(m)
}

fn uuid(buf: &[u8]) -> Option<shared::Uuid> {
    let mut f = Fields::new(buf);
    let mut value = None;
    while !f.done() {
        match f.key()? {
            (1, LEN) if value.is_none() => {
                let mut s = Fields::new(f.bytes()?);
                let (mut most, mut least) = (0u64, 0u64);
                while !s.done() {
                    match s.key()? {
                        (1, VARINT) => most = s.varint()?,
                        (2, VARINT) => least = s.varint()?,
                        (1 | 2, _) => return None,
                        (field, wire) => s.skip(field, wire)?,
                    }
                }
                value = Some(shared::uuid::Value::Structured(shared::uuid::Structured {
                    most_significant_bits: most as i64,
                    least_significant_bits: least as i64,
                }));
            }
            (2, LEN) if value.is_none() => {
                value = Some(shared::uuid::Value::String(f.text()?.to_owned()))
            }
            (1 | 2, _) => return None,
            (field, wire) => f.skip(field, wire)?,
        }
    }
    Some(shared::Uuid { value })
}

fn proposed(buf: &[u8]) -> Option<Proposed> {
    let mut f = Fields::new(buf);
    let mut id = None;
    let (mut event_type, mut content_type) = (None, None);
    let (mut custom, mut data): (&[u8], &[u8]) = (&[], &[]);
    while !f.done() {
        match f.key()? {
            (1, LEN) if id.is_none() => id = Some(uuid(f.bytes()?)?),
            (2, LEN) => {
                let mut e = Fields::new(f.bytes()?);
                let (mut key, mut value) = ("", "");
                while !e.done() {
                    match e.key()? {
                        (1, LEN) => key = e.text()?,
                        (2, LEN) => value = e.text()?,
                        (1 | 2, _) => return None,
                        (field, wire) => e.skip(field, wire)?,
                    }
                }
                match key {
                    "type" => event_type = Some(value),
                    "content-type" => content_type = Some(value),
                    _ => {}
                }
            }
            (3, LEN) => custom = f.bytes()?,
            (4, LEN) => data = f.bytes()?,
            (1..=4, _) => return None,
            (field, wire) => f.skip(field, wire)?,
        }
    }
    Some(Proposed {
        bytes: buf.len() as u64,
        event: convert::proposed_event(
            id.as_ref(),
            event_type,
            content_type,
            Bytes::copy_from_slice(custom),
            Bytes::copy_from_slice(data),
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use factum_core::Uuid;
    use proptest::prelude::*;

    use super::*;

    /// What a decoded message amounts to, comparable across the two paths.
    fn summary(r: &Result<BatchMsg, Status>) -> String {
        match r {
            Ok(m) => format!(
                "{:?} {:?} final={} [{}]",
                m.correlation_id,
                m.options,
                m.is_final,
                m.proposed
                    .iter()
                    .map(|p| match &p.event {
                        Ok(e) => format!("ok {:?}", e),
                        Err(s) => format!("err {:?} {}", s.code(), s.message()),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(s) => format!("error {:?} {}", s.code(), s.message()),
        }
    }

    /// prost's path alone.
    fn reference(buf: &[u8]) -> Result<BatchMsg, Status> {
        decode_with::<BatchAppendReq, _>(buf, |_| None)
    }

    fn wire_uuid(structured: bool, id: u128) -> shared::Uuid {
        let id = Uuid::from_u128(id);
        convert::uuid_to_wire(
            id,
            if structured {
                convert::UuidFormat::Structured
            } else {
                convert::UuidFormat::String
            },
        )
    }

    prop_compose! {
        fn message()(
            structured in any::<bool>(),
            corr in any::<u128>(),
            stream in "[a-z-]{0,12}",
            expected in 0u8..5,
            events in prop::collection::vec(
                (any::<bool>(), any::<u128>(), "[A-Za-z]{0,8}", 0u8..4,
                 prop::collection::vec(any::<u8>(), 0..40), any::<bool>()),
                0..4),
            is_final in any::<bool>(),
            with_options in any::<bool>(),
        ) -> BatchAppendReq {
            use batch_append_req::options::ExpectedStreamPosition as E;
            BatchAppendReq {
                correlation_id: Some(wire_uuid(structured, corr)),
                options: with_options.then(|| batch_append_req::Options {
                    stream_identifier: Some(shared::StreamIdentifier {
                        stream_name: stream.into_bytes(),
                    }),
                    expected_stream_position: match expected {
                        0 => None,
                        1 => Some(E::StreamPosition(7)),
                        2 => Some(E::NoStream(())),
                        3 => Some(E::Any(())),
                        _ => Some(E::StreamExists(())),
                    },
                    deadline_option: None,
                }),
                proposed_messages: events
                    .into_iter()
                    .map(|(s, id, ty, ct, data, with_id)| {
                        let mut metadata = HashMap::new();
                        if ct != 0 {
                            metadata.insert("type".to_owned(), ty);
                        }
                        match ct {
                            1 => {}
                            2 => {
                                metadata.insert("content-type".into(), "application/json".into());
                            }
                            _ => {
                                metadata.insert("content-type".into(), "application/octet-stream".into());
                                metadata.insert("other".into(), "x".into());
                            }
                        }
                        batch_append_req::ProposedMessage {
                            id: with_id.then(|| wire_uuid(s, id)),
                            metadata,
                            custom_metadata: data.iter().rev().copied().collect(),
                            data,
                        }
                    })
                    .collect(),
                is_final,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every message clients send decodes by hand, to what prost gives.
        #[test]
        fn the_hand_decoder_agrees_with_prost(m in message()) {
            let buf = m.encode_to_vec();
            prop_assert!(fast(&buf).is_some(), "a client's message went to prost");
            prop_assert_eq!(summary(&decode_batch(&buf)), summary(&reference(&buf)));
            for p in decode_batch(&buf).unwrap().proposed.iter().zip(&m.proposed_messages) {
                prop_assert_eq!(p.0.bytes, p.1.encoded_len() as u64);
            }
        }

        /// Damaged, truncated and extended messages: the same answer as
        /// prost's, valid or not.
        #[test]
        fn damaged_messages_are_answered_as_prost_answers_them(
            m in message(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<bool>(),
            tail in prop::collection::vec(any::<u8>(), 0..6),
        ) {
            let mut buf = m.encode_to_vec();
            if !buf.is_empty() {
                let i = at.index(buf.len());
                if cut {
                    buf.truncate(i);
                } else {
                    buf[i] = byte;
                }
            }
            buf.extend(tail);
            prop_assert_eq!(summary(&decode_batch(&buf)), summary(&reference(&buf)));
        }
    }

    #[test]
    fn unusual_shapes_go_to_prost() {
        let m = BatchAppendReq {
            correlation_id: Some(wire_uuid(true, 5)),
            options: None,
            proposed_messages: vec![],
            is_final: true,
        };
        let mut buf = m.encode_to_vec();
        // The correlation id again: protobuf merges it into the first.
        buf.push(0x0a);
        buf.extend(
            m.correlation_id
                .as_ref()
                .unwrap()
                .encode_length_delimited_to_vec(),
        );
        assert!(fast(&buf).is_none());
        assert_eq!(summary(&decode_batch(&buf)), summary(&reference(&buf)));
        // An unknown field of every wire type is skipped by hand.
        let mut buf = m.encode_to_vec();
        buf.extend([
            0x28, 0x01, 0x31, 1, 2, 3, 4, 5, 6, 7, 8, 0x3a, 1, 9, 0x45, 1, 2, 3, 4,
        ]);
        assert!(fast(&buf).is_some());
        assert_eq!(summary(&decode_batch(&buf)), summary(&reference(&buf)));
        // An unknown group is skipped too; an unterminated one goes to prost.
        let mut buf = m.encode_to_vec();
        buf.extend([0x2b, 0x28, 0x01, 0x2c]);
        assert!(fast(&buf).is_some());
        assert_eq!(summary(&decode_batch(&buf)), summary(&reference(&buf)));
        let mut buf = m.encode_to_vec();
        buf.extend([0x2b, 0x28, 0x01]);
        assert!(fast(&buf).is_none());
        assert_eq!(summary(&decode_batch(&buf)), summary(&reference(&buf)));
    }

    /// What a decoded message amounts to; its size only when `sized` (a
    /// damaged message's wire size and prost's `encoded_len` of what it
    /// decoded from it differ by design: unknown fields, non-canonical
    /// lengths).
    fn append_summary(r: &Result<AppendMsg, Status>, sized: bool) -> String {
        match r {
            Ok(AppendMsg::Proposed(p)) => format!(
                "proposed {} {}",
                if sized { p.bytes } else { 0 },
                match &p.event {
                    Ok(e) => format!("ok {e:?}"),
                    Err(s) => format!("err {:?} {}", s.code(), s.message()),
                }
            ),
            Ok(m) => format!("{m:?}"),
            Err(s) => format!("error {:?} {}", s.code(), s.message()),
        }
    }

    fn append_reference(buf: &[u8]) -> Result<AppendMsg, Status> {
        decode_with::<AppendReq, _>(buf, |_| None)
    }

    /// `Append`'s messages: its options, or one of the batch's proposed
    /// messages (the same fields).
    fn append_messages(m: &BatchAppendReq) -> Vec<AppendReq> {
        use append_req::options::ExpectedStreamRevision as E;
        let mut out = vec![AppendReq { content: None }];
        if let Some(o) = &m.options {
            out.push(AppendReq {
                content: Some(append_req::Content::Options(append_req::Options {
                    stream_identifier: o.stream_identifier.clone(),
                    expected_stream_revision: Some(match o.expected_stream_position {
                        Some(
                            batch_append_req::options::ExpectedStreamPosition::StreamPosition(r),
                        ) => E::Revision(r),
                        Some(batch_append_req::options::ExpectedStreamPosition::NoStream(())) => {
                            E::NoStream(shared::Empty {})
                        }
                        Some(batch_append_req::options::ExpectedStreamPosition::StreamExists(
                            (),
                        )) => E::StreamExists(shared::Empty {}),
                        _ => E::Any(shared::Empty {}),
                    }),
                })),
            });
        }
        for p in &m.proposed_messages {
            out.push(AppendReq {
                content: Some(append_req::Content::ProposedMessage(
                    append_req::ProposedMessage {
                        id: p.id.clone(),
                        metadata: p.metadata.clone(),
                        custom_metadata: p.custom_metadata.clone(),
                        data: p.data.clone(),
                    },
                )),
            });
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// `Append`'s messages decode by hand to what prost gives; damaged
        /// ones get prost's answer.
        #[test]
        fn append_messages_decode_as_prost_decodes_them(
            m in message(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<bool>(),
        ) {
            for a in append_messages(&m) {
                let buf = a.encode_to_vec();
                prop_assert!(fast_append(&buf).is_some(), "a client's message went to prost");
                prop_assert_eq!(append_summary(&decode_append(&buf), true), append_summary(&append_reference(&buf), true));
                let mut damaged = buf.clone();
                if !damaged.is_empty() {
                    let i = at.index(damaged.len());
                    if cut { damaged.truncate(i) } else { damaged[i] = byte }
                }
                prop_assert_eq!(append_summary(&decode_append(&damaged), false), append_summary(&append_reference(&damaged), false));
                // Two contents in one message: prost decides.
                let mut twice = buf.clone();
                twice.extend(&buf);
                prop_assert_eq!(append_summary(&decode_append(&twice), true), append_summary(&append_reference(&twice), true));
            }
        }
    }
}

//! Fuzzing the client's hand decoder of `Streams.Read` answers (ADR 20):
//! what a hostile or broken server could send. Inputs are random bytes,
//! random protobuf field sequences (nested groups, unknown wire types,
//! lengths at their edges) and mutations of valid `ReadResp` encodings
//! (bit flips, truncations, splices, varints replaced by edge values).
//! Every input must give an answer — never a panic — and an untouched
//! valid message must decode to what was sent.
//!
//! `fuzz_decode_short` runs with the normal tests; `fuzz_decode_long`
//! (ignored) runs `FACTUM_FUZZ_CASES` (default 1,000,000):
//! `cargo test --release -p factum-client --test fuzz_decode -- --ignored --nocapture`.
//! `FACTUM_FUZZ_SEED` picks the seed (printed by every run).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use factum_client::decode_read_message;
use factum_proto::shared;
use factum_proto::streams::read_resp::{self, read_event::RecordedEvent as WireEvent, Content};
use factum_proto::streams::ReadResp;
use prost::Message;
use uuid::Uuid;

/// xorshift64*: a seeded generator, so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn edge_u64(&mut self) -> u64 {
        const EDGES: [u64; 9] = [
            0,
            1,
            127,
            128,
            u32::MAX as u64,
            i64::MAX as u64,
            i64::MIN as u64,
            u64::MAX - 1,
            u64::MAX,
        ];
        if self.chance(2) {
            EDGES[self.below(EDGES.len())]
        } else {
            self.next() >> self.below(64)
        }
    }
}

fn seed() -> u64 {
    std::env::var("FACTUM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1
}

fn cases(default: u64) -> u64 {
    std::env::var("FACTUM_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

const STREAMS: [&[u8]; 6] = [b"order-1", b"", b"$ce-order", b"a\xffb", b"$all", b"x"];
const TYPES: [&str; 5] = ["Placed", "", "$>", "$metadata", "t\u{0}pe"];

fn wire_event(rng: &mut Rng) -> WireEvent {
    let id = Uuid::from_u64_pair(rng.next(), rng.next());
    let value = match rng.below(3) {
        0 => shared::uuid::Value::String(id.to_string()),
        1 => shared::uuid::Value::String(["", "not-a-uuid", "ü"][rng.below(3)].to_owned()),
        _ => {
            let (m, l) = id.as_u64_pair();
            shared::uuid::Value::Structured(shared::uuid::Structured {
                most_significant_bits: m as i64,
                least_significant_bits: l as i64,
            })
        }
    };
    let mut metadata = HashMap::new();
    if !rng.chance(8) {
        metadata.insert("type".into(), TYPES[rng.below(TYPES.len())].into());
    }
    if rng.chance(2) {
        metadata.insert("content-type".into(), "application/json".into());
    }
    if !rng.chance(4) {
        let created = ["17000000001234567", "-1", "", "99999999999999999999", "x"];
        metadata.insert("created".into(), created[rng.below(created.len())].into());
    }
    if rng.chance(4) {
        metadata.insert("extra".into(), "ignored".into());
    }
    let data_len = [0, 1, 20, 300][rng.below(4)];
    WireEvent {
        id: (!rng.chance(16)).then_some(shared::Uuid { value: Some(value) }),
        stream_identifier: (!rng.chance(16)).then(|| shared::StreamIdentifier {
            stream_name: STREAMS[rng.below(STREAMS.len())].to_vec(),
        }),
        stream_revision: rng.edge_u64(),
        prepare_position: rng.edge_u64(),
        commit_position: rng.edge_u64(),
        metadata,
        custom_metadata: {
            let n = [0, 5][rng.below(2)];
            rng.bytes(n)
        },
        data: rng.bytes(data_len),
    }
}

fn valid_message(rng: &mut Rng) -> ReadResp {
    let content = match rng.below(6) {
        0..=3 => Content::Event(read_resp::ReadEvent {
            event: (!rng.chance(16)).then(|| wire_event(rng)),
            link: rng.chance(3).then(|| wire_event(rng)),
            position: Some(read_resp::read_event::Position::CommitPosition(
                rng.edge_u64(),
            )),
        }),
        4 => Content::LastStreamPosition(rng.edge_u64()),
        _ => Content::Checkpoint(read_resp::Checkpoint {
            commit_position: rng.edge_u64(),
            prepare_position: rng.edge_u64(),
            timestamp: None,
        }),
    };
    ReadResp {
        content: Some(content),
    }
}

/// A random protobuf-shaped message: fields of every wire type (including
/// groups and the reserved types 6 and 7), nested `depth` levels.
fn random_fields(rng: &mut Rng, depth: u32, out: &mut Vec<u8>) {
    for _ in 0..rng.below(6) {
        let field = [1, 2, 3, 5, 6, 7, 8, 10, 1 << 20, (1 << 29) - 1, 0][rng.below(11)] as u64;
        let wire = rng.below(8) as u64;
        varint(field << 3 | wire, out);
        match wire {
            0 => varint(rng.edge_u64(), out),
            1 => out.extend_from_slice(&rng.next().to_le_bytes()),
            2 => {
                let mut inner = Vec::new();
                if depth > 0 && rng.chance(2) {
                    random_fields(rng, depth - 1, &mut inner);
                } else {
                    let n = rng.below(20);
                    inner = rng.bytes(n);
                }
                let len = if rng.chance(8) {
                    rng.edge_u64()
                } else {
                    inner.len() as u64
                };
                varint(len, out);
                out.extend_from_slice(&inner);
            }
            3 => {
                if depth > 0 {
                    random_fields(rng, depth - 1, out);
                }
                if !rng.chance(4) {
                    varint(field << 3 | 4, out);
                }
            }
            5 => out.extend_from_slice(&(rng.next() as u32).to_le_bytes()),
            _ => {}
        }
    }
}

fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 | 1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            2 => {
                let n = rng.below(b.len() + 1);
                b.truncate(n);
            }
            3 if !b.is_empty() => {
                // A varint (often a length) replaced by an edge value.
                let i = rng.below(b.len());
                let mut v = Vec::new();
                varint(
                    [
                        rng.edge_u64(),
                        (b.len() - i) as u64,
                        (b.len() - i + 1) as u64,
                    ][rng.below(3)],
                    &mut v,
                );
                let end = (i + 1).min(b.len());
                b.splice(i..end, v);
            }
            4 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = [0, 0x80, 0xff, 0x7f, 0x0b, 0x0c][rng.below(6)];
            }
            5 if b.len() > 1 => {
                let from = rng.below(b.len());
                let n = rng.below(b.len() - from + 1).min(256);
                let piece = b[from..from + n].to_vec();
                let to = rng.below(b.len());
                b.splice(to..to, piece);
            }
            _ => {
                let mut more = Vec::new();
                random_fields(rng, 2, &mut more);
                b.extend_from_slice(&more);
            }
        }
    }
}

#[derive(Default, Debug)]
struct Seen {
    events_ok: u64,
    events_refused: u64,
    others: u64,
    malformed: u64,
}

fn run_one(input: Bytes, expect: Option<&ReadResp>, seen: &mut Seen) {
    let answer = decode_read_message(input);
    match &answer {
        Ok(Some(Ok(_))) => seen.events_ok += 1,
        Ok(Some(Err(_))) => seen.events_refused += 1,
        Ok(None) => seen.others += 1,
        Err(_) => seen.malformed += 1,
    }
    // An untouched valid message decodes to what was sent.
    if let Some(sent) = expect {
        match (&sent.content, answer) {
            (Some(Content::Event(sent)), Ok(Some(Ok(got)))) => {
                let e = sent.event.as_ref().expect("an event was sent");
                assert_eq!(got.revision.0, e.stream_revision);
                assert_eq!(got.position.0, e.commit_position);
                assert_eq!(&got.data[..], &e.data[..]);
                assert_eq!(&got.metadata[..], &e.custom_metadata[..]);
                assert_eq!(
                    got.stream.as_str().as_bytes(),
                    &e.stream_identifier.as_ref().unwrap().stream_name[..]
                );
                let ty = e.metadata.get("type").map_or("", |s| s.as_str());
                assert_eq!(got.event_type, ty);
            }
            (Some(Content::Event(_)), Ok(Some(Err(_)))) => {}
            (Some(Content::Event(_)), other) => panic!("an event message answered {other:?}"),
            (_, other) => assert!(matches!(other, Ok(None)), "{other:?}"),
        }
    }
}

fn input(rng: &mut Rng) -> (Vec<u8>, Option<ReadResp>) {
    match rng.below(8) {
        0 => {
            let n = rng.below(200);
            (rng.bytes(n), None)
        }
        1 => {
            let mut b = Vec::new();
            random_fields(rng, 4, &mut b);
            (b, None)
        }
        _ => {
            let m = valid_message(rng);
            let mut b = m.encode_to_vec();
            if rng.chance(6) {
                return (b, Some(m));
            }
            mutate(rng, &mut b);
            (b, None)
        }
    }
}

fn run(default_cases: u64) {
    let seed = seed();
    let cases = cases(default_cases);
    let mut rng = Rng(seed);
    let mut seen = Seen::default();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..cases {
        let (bytes, expect) = input(&mut rng);
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_one(Bytes::from(bytes.clone()), expect.as_ref(), &mut seen)
        }));
        if outcome.is_err() {
            panic!("input {i} (seed {seed}) panicked: {bytes:02x?}");
        }
        slowest = slowest.max(t.elapsed());
    }
    let took = started.elapsed();
    println!(
        "fuzz_decode: {cases} inputs in {took:.2?} ({:.0}/s), seed {seed}, slowest input {slowest:.2?}, {seen:?}",
        cases as f64 / took.as_secs_f64()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "an input took {slowest:?}"
    );
    if cases >= 2_000 {
        assert!(
            seen.events_ok > 0 && seen.events_refused > 0 && seen.others > 0,
            "{seen:?}"
        );
    }
}

#[test]
fn fuzz_decode_short() {
    run(20_000);
}

#[test]
#[ignore = "long: 1M inputs; run in release with --ignored"]
fn fuzz_decode_long() {
    run(1_000_000);
}

/// Groups nested a million deep (4 MiB, under the client's message limit)
/// must be refused, not overflow the stack.
#[test]
fn deeply_nested_groups_are_refused() {
    // Field 10, wire type 3 (start group): 0x53, repeated.
    let message = Bytes::from(vec![0x53u8; 1 << 20]);
    let answer = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || matches!(decode_read_message(message), Ok(Some(Err(_))) | Err(_)))
        .unwrap()
        .join()
        .expect("no panic");
    assert!(answer, "refused as malformed");
}

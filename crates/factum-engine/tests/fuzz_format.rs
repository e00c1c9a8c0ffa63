//! Fuzzing the engine's hand-written decoders (ADR 20): segment headers,
//! frames and event records from random bytes and from mutations of valid
//! encodings (bit flips, truncations, length fields at their edges, and
//! checksums recomputed after the damage so the decoders get past the
//! first check). Every input must give an answer — never a panic — and a
//! record that decodes must encode back to the same bytes.
//!
//! `fuzz_format_short` runs a few thousand inputs with the normal tests;
//! `fuzz_format_long` (ignored) runs `FACTUM_FUZZ_CASES` (default 1,000,000):
//! `cargo test --release -p factum-engine --test fuzz_format -- --ignored --nocapture`.
//! `FACTUM_FUZZ_SEED` picks the seed (printed by every run).

use std::time::{Duration, Instant};

use bytes::Bytes;
use factum_core::{ContentType, StreamName, Timestamp, Uuid};
use factum_engine::format::{
    check_frame, decode_frame_events, decode_frame_events_from, encode_frame, FrameCheck,
    SegmentHeader, StoredEvent, EVENT_HEADER_LEN, FRAME_HEADER_LEN, FRAME_TRAILER_LEN,
    SEGMENT_HEADER_LEN,
};

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
    /// A number from the edges of `u64` as often as from the middle.
    fn edge_u64(&mut self) -> u64 {
        const EDGES: [u64; 10] = [
            0,
            1,
            2,
            63,
            64,
            u16::MAX as u64,
            u32::MAX as u64,
            i64::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ];
        if self.chance(2) {
            EDGES[self.below(EDGES.len())]
        } else {
            self.next()
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

const STREAMS: [&str; 6] = ["a", "order-1", "$ce-order", "$$order-1", "ü-stream", "x"];
const TYPES: [&str; 5] = ["", "placed", "$>", "$metadata", "tÿpe"];

fn event(rng: &mut Rng, position: u64, stream: &StreamName) -> StoredEvent {
    let data_len = [0, 1, 7, 64, 300][rng.below(5)];
    let meta_len = [0, 0, 3, 40][rng.below(4)];
    StoredEvent {
        position,
        revision: rng.edge_u64(),
        created: Timestamp(rng.edge_u64() as i64),
        id: Uuid::from_u64_pair(rng.next(), rng.next()),
        content_type: if rng.chance(2) {
            ContentType::Json
        } else {
            ContentType::Binary
        },
        flags: rng.below(4) as u8,
        stream: stream.clone(),
        event_type: TYPES[rng.below(TYPES.len())].to_owned(),
        data: Bytes::from(rng.bytes(data_len)),
        metadata: Bytes::from(rng.bytes(meta_len)),
    }
}

/// A valid frame of 1–4 events of one stream, and its records' offsets.
fn valid_frame(rng: &mut Rng) -> (Vec<u8>, Vec<u32>) {
    let stream = StreamName::new(STREAMS[rng.below(STREAMS.len())]).unwrap();
    let first = rng.edge_u64().min(u64::MAX - 8);
    let events: Vec<StoredEvent> = (0..1 + rng.below(4))
        .map(|i| event(rng, first + i as u64, &stream))
        .collect();
    let mut out = Vec::new();
    let offsets = encode_frame(
        &events,
        Timestamp(rng.edge_u64() as i64),
        rng.edge_u64() as u32,
        &mut out,
    );
    (out, offsets)
}

fn put(b: &mut [u8], at: usize, v: u64, width: usize) {
    if at + width <= b.len() {
        b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
    }
}

/// Damages `b` in 1–4 ways. `fields` are offsets of length/count fields
/// (with their widths), set to values at their edges.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>, fields: &[(usize, usize)]) {
    for _ in 0..1 + rng.below(4) {
        match rng.below(8) {
            0 | 1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            2 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = [0, 0xff, 0x7f, 0x80, 0x01][rng.below(5)];
            }
            3 => {
                let n = rng.below(b.len() + 1);
                b.truncate(n);
            }
            4 => {
                let n = rng.below(64);
                let more = rng.bytes(n);
                b.extend_from_slice(&more);
            }
            5 | 6 if !fields.is_empty() => {
                let (at, width) = fields[rng.below(fields.len())];
                let len = b.len() as u64;
                let v = match rng.below(6) {
                    0 => rng.edge_u64(),
                    1 => len,
                    2 => len.wrapping_sub(1),
                    3 => len + 1,
                    4 => EVENT_HEADER_LEN as u64 + rng.below(4) as u64 - 1,
                    _ => rng.below(512) as u64,
                };
                put(b, at, v, width);
            }
            _ if b.len() > 1 => {
                // Move a slice of the input elsewhere (duplicated records).
                let from = rng.below(b.len());
                let n = rng.below(b.len() - from + 1).min(128);
                let piece = b[from..from + n].to_vec();
                let to = rng.below(b.len());
                b.splice(to..to, piece);
            }
            _ => {}
        }
    }
}

/// Recomputes a record's CRC (after damage), as the writer would have.
fn fix_record_crc(rec: &mut [u8]) {
    if rec.len() >= 8 {
        let len = (u32::from_le_bytes(rec[0..4].try_into().unwrap()) as usize).min(rec.len());
        if len >= 8 {
            let crc = crc32c::crc32c(&rec[8..len]);
            rec[4..8].copy_from_slice(&crc.to_le_bytes());
        }
    }
}

/// Recomputes a frame's CRC over whatever its length field claims.
fn fix_frame_crc(b: &mut [u8]) {
    if b.len() >= FRAME_HEADER_LEN {
        let len = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
        if (FRAME_HEADER_LEN + FRAME_TRAILER_LEN..=b.len()).contains(&len) {
            let crc = crc32c::crc32c(&b[..len - 4]);
            b[len - 4..len].copy_from_slice(&crc.to_le_bytes());
        }
    }
}

/// What a run saw, to show the inputs reached past the first checks.
#[derive(Default, Debug)]
struct Seen {
    headers_ok: u64,
    frames_valid: u64,
    frames_decoded: u64,
    records_ok: u64,
}

/// Decodes one input with every decoder; panics (failing the test) only
/// when a decoder breaks its own contract.
fn run_one(input: &[u8], rng: &mut Rng, seen: &mut Seen) {
    if let Ok(h) = SegmentHeader::decode(input) {
        seen.headers_ok += 1;
        if h.version == 2 {
            assert_eq!(&h.encode()[..], &input[..SEGMENT_HEADER_LEN]);
        }
        assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
    }
    match check_frame(input) {
        FrameCheck::Valid(h) => {
            seen.frames_valid += 1;
            let frame = &input[..h.len as usize];
            if let Ok(events) = decode_frame_events(frame, &h) {
                seen.frames_decoded += 1;
                assert_eq!(events.len(), h.count as usize);
            }
            let skip = rng.below(h.count as usize + 2) as u32;
            if let Ok(events) = decode_frame_events_from(frame, &h, skip) {
                assert_eq!(events.len(), h.count.saturating_sub(skip) as usize);
            }
        }
        FrameCheck::Incomplete | FrameCheck::Invalid(_) => {}
    }
    for check_crc in [true, false] {
        if let Ok((e, len)) = StoredEvent::decode(input, check_crc) {
            assert!((EVENT_HEADER_LEN..=input.len()).contains(&len));
            assert_eq!(e.encoded_len(), len);
            seen.records_ok += 1;
            if check_crc {
                // Bytes 54..56 are reserved (written as zeros, not read),
                // so the checksum differs when they were not zeros.
                let mut again = Vec::new();
                e.encode_into(&mut again);
                let mut expected = input[..len].to_vec();
                expected[54..56].fill(0);
                assert_eq!(&again[8..], &expected[8..], "a decoded record re-encodes");
                if input[54..56] == [0, 0] {
                    assert_eq!(again[4..8], input[4..8]);
                }
            }
        }
    }
    let same = StreamName::new(STREAMS[rng.below(STREAMS.len())]).unwrap();
    let owner = Bytes::copy_from_slice(input);
    let _ = StoredEvent::decode_with(&owner, false, Some(&same), Some(&owner));
}

/// One input: random bytes, or a valid header / frame / record mutated.
fn input(rng: &mut Rng) -> Vec<u8> {
    match rng.below(8) {
        0 => {
            let n = rng.below(256);
            rng.bytes(n)
        }
        1 => {
            let h = SegmentHeader {
                version: [1, 2, 3, 0, u32::MAX][rng.below(5)],
                features: rng.edge_u64() as u32,
                number: rng.edge_u64() as u32,
                first_position: rng.edge_u64(),
            };
            let mut b = h.encode().to_vec();
            mutate(rng, &mut b, &[(8, 4), (12, 4), (16, 8), (24, 4)]);
            if rng.chance(2) && b.len() >= 32 {
                let covered = if b[8] == 1 { 24 } else { 28 };
                let crc = crc32c::crc32c(&b[..covered]);
                b[covered..covered + 4].copy_from_slice(&crc.to_le_bytes());
            }
            b
        }
        2..=4 => {
            let (mut b, offsets) = valid_frame(rng);
            let mut fields = vec![(4, 4), (8, 8), (16, 4), (20, 4)];
            for &o in &offsets {
                let o = o as usize;
                fields.extend([(o, 4), (o + 50, 2), (o + 52, 2), (o + 56, 4), (o + 60, 4)]);
            }
            mutate(rng, &mut b, &fields);
            if rng.chance(4) {
                let o = offsets[rng.below(offsets.len())] as usize;
                if o < b.len() {
                    fix_record_crc(&mut b[o..]);
                }
            }
            if !rng.chance(4) {
                fix_frame_crc(&mut b);
            }
            b
        }
        _ => {
            let stream = StreamName::new(STREAMS[rng.below(STREAMS.len())]).unwrap();
            let position = rng.edge_u64();
            let e = event(rng, position, &stream);
            let mut b = Vec::new();
            e.encode_into(&mut b);
            if rng.chance(8) {
                // The untouched record: the round trip must hold.
                return b;
            }
            mutate(rng, &mut b, &[(0, 4), (50, 2), (52, 2), (56, 4), (60, 4)]);
            if !rng.chance(4) {
                fix_record_crc(&mut b);
            }
            b
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
        let input = input(&mut rng);
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_one(&input, &mut rng, &mut seen)
        }));
        if outcome.is_err() {
            panic!(
                "input {i} (seed {seed}) panicked: {:02x?}",
                input.iter().take(512).collect::<Vec<_>>()
            );
        }
        slowest = slowest.max(t.elapsed());
    }
    let took = started.elapsed();
    println!(
        "fuzz_format: {cases} inputs in {took:.2?} ({:.0}/s), seed {seed}, slowest input {slowest:.2?}, {seen:?}",
        cases as f64 / took.as_secs_f64()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "an input took {slowest:?}"
    );
    // The mutations must get past the first checks, or the run tests little.
    if cases >= 2_000 {
        assert!(seen.headers_ok > 0 && seen.frames_valid > 0 && seen.records_ok > 0);
        assert!(seen.frames_decoded > 0, "{seen:?}");
    }
}

#[test]
fn fuzz_format_short() {
    run(20_000);
}

#[test]
#[ignore = "long: 1M inputs; run in release with --ignored"]
fn fuzz_format_long() {
    run(1_000_000);
}

/// Inputs a run found, kept so they stay answered (none yet panicked; the
/// edges the reviewers thought of).
#[test]
fn regression_inputs() {
    let mut rng = Rng(1);
    let mut seen = Seen::default();
    let mut zeros = vec![0u8; 200];
    run_one(&zeros, &mut rng, &mut seen);
    // A record whose lengths add up past the buffer.
    put(&mut zeros, 0, 64, 4);
    put(&mut zeros, 56, u32::MAX as u64, 4);
    run_one(&zeros, &mut rng, &mut seen);
    // A frame claiming u32::MAX events with a valid checksum.
    let (mut frame, _) = valid_frame(&mut rng);
    put(&mut frame, 16, u32::MAX as u64, 4);
    fix_frame_crc(&mut frame);
    assert!(matches!(check_frame(&frame), FrameCheck::Invalid(_)));
}

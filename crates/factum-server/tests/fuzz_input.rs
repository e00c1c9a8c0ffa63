//! Fuzzing what clients send the server (ADR 20), on stable Rust with
//! seeded loops:
//!
//! - `convert`: the wire ⇄ model conversions (`uuid_from_wire`,
//!   `stream_from_wire`, `proposed_to_event`, `factum_proto::ticks::parse`,
//!   `grpc_timeout`) and filters (`WireFilter::from_wire`, `matches`,
//!   with generated regexes (look-around, back-references,
//!   nested repetition: the backtracking engine's limit bounds each match);
//! - `http`: the whole HTTP router, driven in process with
//!   `tower::ServiceExt::oneshot` (no socket): methods, paths (percent-
//!   encoded invalid UTF-8, `$all`, managed streams), query strings,
//!   headers (non-UTF-8 values, numbers at their edges) and JSON bodies
//!   (valid ones mutated, deep nesting, wrong shapes);
//! - `grpc`: the same router with gRPC requests (`Append`, `BatchAppend`,
//!   `Read`, `Delete`, `Tombstone`, unknown methods): valid protobuf
//!   messages with numbers at their edges, mutated, in gRPC frames whose
//!   prefix is damaged too.
//!
//! Zero panics anywhere (a panic hook counts them on every thread, the
//! engine's included) and zero hangs (each request must finish within
//! seconds; infinite answers such as subscriptions are read only in part).
//! The `*_short` tests run with the normal suite; the ignored `*_long` ones
//! run `FACTUM_FUZZ_CASES` (default 1,000,000) inputs:
//! `cargo test --release -p factum-server --test fuzz_input -- --ignored --nocapture --test-threads 1`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request};
use bytes::Bytes;
use factum_core::{Position, RecordedEvent, StreamName, StreamRevision, Timestamp};
use factum_engine::{Durability, Engine, EngineConfig};
use factum_proto::shared;
use factum_proto::streams::read_req::options::{
    self as ro, filter_options, CountOption, FilterOption, FilterOptions, StreamOption,
};
use factum_proto::streams::{
    append_req, batch_append_req, delete_req, tombstone_req, AppendReq, BatchAppendReq, DeleteReq,
    ReadReq, TombstoneReq,
};
use factum_server::convert;
use factum_server::filter::WireFilter;
use http_body_util::BodyExt;
use prost::Message;
use tower::ServiceExt;

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
    fn pick<'a, T: ?Sized>(&mut self, xs: &[&'a T]) -> &'a T {
        xs[self.below(xs.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn edge_u64(&mut self) -> u64 {
        const EDGES: [u64; 9] = [
            0,
            1,
            u32::MAX as u64,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX - 2,
            u64::MAX - 1,
            u64::MAX,
            1 << 53,
        ];
        match self.below(3) {
            0 => EDGES[self.below(EDGES.len())],
            1 => self.below(8) as u64,
            _ => self.next() >> self.below(64),
        }
    }
    /// Text at the edges of what a number field takes.
    fn number_text(&mut self) -> String {
        const TEXTS: [&str; 14] = [
            "",
            "0",
            "-1",
            "1",
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775809",
            "1e3",
            " 1",
            "0x10",
            "any",
            "no_stream",
        ];
        if self.chance(3) {
            self.edge_u64().to_string()
        } else {
            TEXTS[self.below(TEXTS.len())].to_owned()
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

/// Panics on any thread (handlers, spawned tasks, the engine's threads).
static PANICS: AtomicU64 = AtomicU64::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        match rng.below(6) {
            0 | 1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            2 => {
                let n = rng.below(b.len() + 1);
                b.truncate(n);
            }
            3 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = [0, 0x80, 0xff, 0x7f, b'"', b'{', b'[', b'\\'][rng.below(8)];
            }
            4 if b.len() > 1 => {
                let from = rng.below(b.len());
                let n = rng.below(b.len() - from + 1).min(64);
                let piece = b[from..from + n].to_vec();
                let to = rng.below(b.len());
                b.splice(to..to, piece);
            }
            _ => {
                let n = rng.below(16);
                let more = rng.bytes(n);
                let at = rng.below(b.len() + 1);
                b.splice(at..at, more);
            }
        }
    }
}

// ---------------------------------------------------------------- names

const STREAM_NAMES: [&[u8]; 16] = [
    b"order-1",
    b"",
    b"$all",
    b"$$order-1",
    b"$$$all",
    b"$ce-order",
    b"$et-Placed",
    b"$persistentSubscriptionConfig",
    b"$persistentsubscription-s::g-checkpoint",
    b"a\xffb",
    b"\xc3",
    b"nul\x00",
    b"$",
    b"$$",
    b"with space/and%",
    b"\xf0\x9f\x92\xa9-stream",
];

fn stream_bytes(rng: &mut Rng) -> Vec<u8> {
    match rng.below(8) {
        0 => {
            let n = rng.below(40);
            rng.bytes(n)
        }
        1 => vec![b'x'; [255, 256, 65_535, 65_536][rng.below(4)]],
        _ => STREAM_NAMES[rng.below(STREAM_NAMES.len())].to_vec(),
    }
}

const REGEX_PARTS: [&str; 28] = [
    "a",
    ".",
    "*",
    "+",
    "?",
    "(",
    ")",
    "[",
    "]",
    "^",
    "$",
    "|",
    "\\",
    "{2}",
    "{1000}",
    "{0,100000}",
    "(?=",
    "(?!",
    "(?<=a)",
    "(?<!b)",
    "\\1",
    "(a+)+",
    "(a|a)*",
    "\\$",
    "\\p{L}",
    "(?i)",
    "[^-]",
    "\u{fffd}",
];

fn regex(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => ["^(?!(\\$.*)).*$", "^order-", "(a+)+$", "(?=(a+))a*b\\1", ""][rng.below(5)].into(),
        _ => (0..1 + rng.below(10))
            .map(|_| rng.pick(&REGEX_PARTS))
            .collect(),
    }
}

// ---------------------------------------------------------------- convert

fn uuid(rng: &mut Rng) -> Option<shared::Uuid> {
    let value = match rng.below(6) {
        0 => None,
        1 => Some(shared::uuid::Value::Structured(shared::uuid::Structured {
            most_significant_bits: rng.edge_u64() as i64,
            least_significant_bits: rng.edge_u64() as i64,
        })),
        2 => Some(shared::uuid::Value::String(
            [
                "",
                "not-a-uuid",
                "0f8fad5b-d9cb-469f-a165-70867728950",
                "{0f8fad5b-d9cb-469f-a165-70867728950e}",
                "ü",
            ][rng.below(5)]
            .into(),
        )),
        _ => Some(shared::uuid::Value::String(
            uuid::Uuid::from_u64_pair(rng.next(), rng.next()).to_string(),
        )),
    };
    (!rng.chance(8)).then_some(shared::Uuid { value })
}

fn sid(rng: &mut Rng) -> Option<shared::StreamIdentifier> {
    (!rng.chance(10)).then(|| shared::StreamIdentifier {
        stream_name: stream_bytes(rng),
    })
}

fn system_metadata(rng: &mut Rng) -> HashMap<String, String> {
    let mut md = HashMap::new();
    if !rng.chance(8) {
        let ty = ["Placed", "", "$>", "$metadata", "a\u{0}b", "tab\there", "ü"][rng.below(7)];
        md.insert("type".into(), ty.into());
    }
    if !rng.chance(8) {
        let ct = [
            "application/json",
            "application/octet-stream",
            "",
            "text/plain",
        ][rng.below(4)];
        md.insert("content-type".into(), ct.into());
    }
    if rng.chance(4) {
        md.insert("created".into(), rng.number_text());
    }
    md
}

fn event(rng: &mut Rng) -> RecordedEvent {
    let subjects = [
        "order-1",
        "$ce-order",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab",
        "ü-x",
        "$$x",
    ];
    RecordedEvent {
        id: uuid::Uuid::nil(),
        stream: StreamName::new(subjects[rng.below(subjects.len())]).unwrap(),
        revision: StreamRevision(0),
        position: Position(0),
        event_type: subjects[rng.below(subjects.len())].to_owned(),
        content_type: factum_core::ContentType::Json,
        data: Bytes::new(),
        metadata: Bytes::new(),
        created: Timestamp(0),
        link: None,
    }
}

fn filter_options(rng: &mut Rng) -> FilterOptions {
    let expr = filter_options::Expression {
        regex: if rng.chance(2) {
            regex(rng)
        } else {
            String::new()
        },
        prefix: (0..rng.below(3))
            .map(|_| String::from_utf8_lossy(&stream_bytes(rng)).into_owned())
            .collect(),
    };
    FilterOptions {
        filter: match rng.below(5) {
            0 => None,
            1 | 2 => Some(filter_options::Filter::StreamIdentifier(expr)),
            _ => Some(filter_options::Filter::EventType(expr)),
        },
        window: match rng.below(3) {
            0 => None,
            1 => Some(filter_options::Window::Max(rng.edge_u64() as u32)),
            _ => Some(filter_options::Window::Count(shared::Empty {})),
        },
        checkpoint_interval_multiplier: rng.edge_u64() as u32,
    }
}

/// Runs one input; returns the filter it tried (to name a slow input).
fn convert_one(rng: &mut Rng) -> FilterOptions {
    let _ = convert::uuid_from_wire(uuid(rng).as_ref(), "event id");
    if let Ok(name) = convert::stream_from_wire(sid(rng).as_ref()) {
        // What came in goes back out unchanged.
        let back = convert::stream_to_wire(&name);
        assert_eq!(StreamName::from_utf8(&back.stream_name).unwrap(), name);
    }
    let _ = convert::proposed_to_event(
        uuid(rng).as_ref(),
        &system_metadata(rng),
        rng.bytes(4),
        rng.bytes(4),
    );
    let _ = factum_proto::ticks::parse(rng.number_text().as_bytes());
    let timeout = match rng.below(3) {
        0 => format!(
            "{}{}",
            rng.number_text(),
            ["H", "M", "S", "m", "u", "n", "x", ""][rng.below(8)]
        ),
        1 => {
            let n = rng.below(10) + 1;
            String::from_utf8_lossy(&rng.bytes(n)).into_owned()
        }
        _ => format!("99999999{}", ["H", "M", "S"][rng.below(3)]),
    };
    let _ = convert::grpc_timeout(Some(&timeout));
    let options = filter_options(rng);
    if let Ok(f) = WireFilter::from_wire(&options) {
        assert!(f.checkpoint_interval >= 1);
        for _ in 0..3 {
            f.matches(&event(rng));
        }
    }
    options
}

fn run_convert(default_cases: u64) {
    count_panics();
    let seed = seed();
    let cases = cases(default_cases);
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut slowest = (Duration::ZERO, None);
    for _ in 0..cases {
        let t = Instant::now();
        let filter = convert_one(&mut rng);
        if t.elapsed() > slowest.0 {
            slowest = (t.elapsed(), Some(filter));
        }
    }
    let (slowest, slowest_filter) = slowest;
    let took = started.elapsed();
    println!(
        "fuzz convert: {cases} inputs in {took:.2?} ({:.0}/s), seed {seed}, slowest input {slowest:.2?}",
        cases as f64 / took.as_secs_f64()
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "seed {seed}");
    assert!(
        slowest < Duration::from_secs(5),
        "an input took {slowest:?}: {slowest_filter:?}"
    );
}

// ---------------------------------------------------------------- the router

/// The router, its store's directory, and the shutdown sender (dropping it
/// would tell the server to shut down).
type Running = (
    axum::Router,
    tempfile::TempDir,
    tokio::sync::watch::Sender<bool>,
);

fn router() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
    let mut cfg =
        factum_server::ServerConfig::new("127.0.0.1:2113".parse::<std::net::SocketAddr>().unwrap());
    cfg.max_append_bytes = 64 * 1024;
    cfg.size_probe = Some(Arc::new(|| Some(1)));
    let (router, _ctx, shutdown) = factum_server::app(Arc::new(engine), cfg);
    (router, dir, shutdown)
}

/// What the answers were, by status.
#[derive(Default, Debug)]
struct Tally {
    by_status: std::collections::BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, s: String) {
        *self.by_status.entry(s).or_default() += 1;
    }
}

/// Sends one request; reads at most `max_frames` body frames (infinite
/// answers — subscriptions — are dropped after them). Returns the status
/// (for gRPC, `grpc-status` from the headers or trailers).
async fn send(router: &axum::Router, req: Request<Body>, grpc: bool) -> String {
    let resp = router.clone().oneshot(req).await.unwrap();
    let http_status = resp.status().as_u16();
    let mut grpc_status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap_or("?").to_owned());
    let mut body = resp.into_body();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    if let Some(s) = t.get("grpc-status") {
                        grpc_status = Some(s.to_str().unwrap_or("?").to_owned());
                    }
                }
            }
            // Ended, failed, or waiting (a live subscription): done.
            _ => break,
        }
    }
    if grpc {
        format!("grpc {}", grpc_status.unwrap_or_else(|| "none".into()))
    } else {
        format!("http {http_status}")
    }
}

fn percent(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-_.$".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn json_body(rng: &mut Rng) -> Vec<u8> {
    let event = |rng: &mut Rng| {
        let mut fields = Vec::new();
        if !rng.chance(8) {
            fields.push(format!(
                "\"type\":{}",
                ["\"Placed\"", "\"\"", "1", "null", "\"a\\u0000b\"", "\"$>\""][rng.below(6)]
            ));
        }
        if rng.chance(2) {
            fields.push(format!(
                "\"data\":{}",
                ["{\"a\":1}", "[]", "\"text\"", "1e999", "-0", "null"][rng.below(6)]
            ));
        }
        if rng.chance(3) {
            let id = [
                "\"0f8fad5b-d9cb-469f-a165-70867728950e\"",
                "\"x\"",
                "0",
                "null",
            ][rng.below(4)];
            fields.push(format!("\"id\":{id}"));
        }
        if rng.chance(4) {
            fields.push(format!(
                "\"metadata\":{}",
                ["{\"$maxCount\":0}", "{}", "7"][rng.below(3)]
            ));
        }
        format!("{{{}}}", fields.join(","))
    };
    let events: Vec<String> = (0..rng.below(4)).map(|_| event(rng)).collect();
    let list = format!("[{}]", events.join(","));
    let mut body = match rng.below(6) {
        0 => format!(
            "{{\"expected_revision\":\"{}\",\"events\":{list}}}",
            rng.number_text()
        )
        .into_bytes(),
        1 => {
            // Deep nesting.
            let depth = [64, 127, 128, 129, 10_000][rng.below(5)];
            let mut b = vec![b'['; depth];
            b.extend(vec![b']'; depth]);
            b
        }
        2 => format!(
            "{{\"$maxCount\":{},\"$maxAge\":{},\"$tb\":{},\"$acl\":{{\"$r\":[1]}},\"custom\":\"x\"}}",
            rng.number_text(),
            rng.number_text(),
            rng.number_text()
        )
        .into_bytes(),
        _ => list.into_bytes(),
    };
    if rng.chance(2) {
        mutate(rng, &mut body);
    }
    body
}

fn http_request(rng: &mut Rng) -> Option<Request<Body>> {
    let method = match rng.below(8) {
        0 | 1 => Method::GET,
        2..=4 => Method::POST,
        5 => Method::DELETE,
        6 => Method::PUT,
        _ => Method::PATCH,
    };
    let stream = percent(&stream_bytes(rng));
    let mut path = match rng.below(10) {
        0 => [
            "/health",
            "/health/ready",
            "/metrics",
            "/openapi.json",
            "/",
            "/streams",
            "/streams/",
        ][rng.below(7)]
        .to_owned(),
        1 => format!("/streams/{stream}/metadata"),
        2 if rng.chance(8) => format!("/streams/{stream}/subscribe"),
        _ => format!("/streams/{stream}"),
    };
    if rng.chance(2) {
        let keys = ["from", "direction", "count", "tombstone", "from", "x"];
        let values = |rng: &mut Rng| match rng.below(3) {
            0 => rng.number_text(),
            1 => [
                "start",
                "end",
                "forwards",
                "backwards",
                "true",
                "false",
                "%ff",
                "%",
            ][rng.below(8)]
            .to_owned(),
            _ => percent(&rng.bytes(3)),
        };
        let q: Vec<String> = (0..1 + rng.below(3))
            .map(|_| format!("{}={}", rng.pick(&keys), values(rng)))
            .collect();
        path = format!("{path}?{}", q.join("&"));
    }
    let body = json_body(rng);
    let mut req = Request::builder().method(method).uri(path);
    let headers = [
        "content-type",
        "factum-expected-revision",
        "es-eventtype",
        "es-eventid",
        "es-expectedversion",
        "content-length",
        "accept",
    ];
    for _ in 0..rng.below(4) {
        let name = rng.pick(&headers);
        let value = match rng.below(4) {
            0 => HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
            1 => HeaderValue::from_str(&rng.number_text()).unwrap(),
            2 => HeaderValue::from_str(rng.pick(&[
                "application/json",
                "application/octet-stream",
                "text/plain",
                "Placed",
                "0f8fad5b-d9cb-469f-a165-70867728950e",
                "",
            ]))
            .unwrap(),
            _ => HeaderValue::from_bytes(&[b'a', rng.next() as u8 | 0x80]).unwrap(),
        };
        req = req.header(name, value);
    }
    req.body(Body::from(body)).ok()
}

fn grpc_frames(rng: &mut Rng, messages: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for mut m in messages {
        if rng.chance(3) {
            mutate(rng, &mut m);
        }
        let flag = if rng.chance(32) { 1 } else { 0 };
        let len = match rng.below(24) {
            0 => u32::MAX,
            1 => m.len() as u32 + 1,
            2 => (m.len() as u32).saturating_sub(1),
            _ => m.len() as u32,
        };
        out.push(flag);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&m);
    }
    if rng.chance(16) {
        let n = rng.below(out.len() + 1);
        out.truncate(n);
    }
    out
}

fn proposed(rng: &mut Rng) -> append_req::ProposedMessage {
    append_req::ProposedMessage {
        id: uuid(rng),
        metadata: system_metadata(rng),
        custom_metadata: {
            let n = rng.below(8);
            rng.bytes(n)
        },
        data: {
            let n = [0, 3, 100, 70_000][rng.below(4)];
            vec![b'1'; n]
        },
    }
}

fn grpc_request(rng: &mut Rng) -> Request<Body> {
    use append_req::options::ExpectedStreamRevision as A;
    let (method, messages): (&str, Vec<Vec<u8>>) = match rng.below(6) {
        0 | 1 => {
            let expected = match rng.below(6) {
                0 => None,
                1 => Some(A::Revision(rng.edge_u64())),
                2 => Some(A::NoStream(shared::Empty {})),
                3 => Some(A::StreamExists(shared::Empty {})),
                _ => Some(A::Any(shared::Empty {})),
            };
            let mut ms = vec![AppendReq {
                content: Some(append_req::Content::Options(append_req::Options {
                    stream_identifier: sid(rng),
                    expected_stream_revision: expected,
                })),
            }
            .encode_to_vec()];
            for _ in 0..rng.below(4) {
                ms.push(
                    AppendReq {
                        content: (!rng.chance(16))
                            .then(|| append_req::Content::ProposedMessage(proposed(rng))),
                    }
                    .encode_to_vec(),
                );
            }
            if rng.chance(8) {
                let last = ms.len() - 1;
                ms.swap(0, last);
            }
            ("Append", ms)
        }
        2 => {
            use batch_append_req::options::ExpectedStreamPosition as P;
            let ms = (0..1 + rng.below(3))
                .map(|_| {
                    BatchAppendReq {
                        correlation_id: uuid(rng),
                        options: (!rng.chance(6)).then(|| batch_append_req::Options {
                            stream_identifier: sid(rng),
                            expected_stream_position: match rng.below(5) {
                                0 => None,
                                1 => Some(P::StreamPosition(rng.edge_u64())),
                                2 => Some(P::NoStream(())),
                                3 => Some(P::StreamExists(())),
                                _ => Some(P::Any(())),
                            },
                            deadline_option: None,
                        }),
                        proposed_messages: (0..rng.below(3))
                            .map(|_| {
                                let p = proposed(rng);
                                batch_append_req::ProposedMessage {
                                    id: p.id,
                                    metadata: p.metadata,
                                    custom_metadata: p.custom_metadata,
                                    data: p.data,
                                }
                            })
                            .collect(),
                        is_final: !rng.chance(4),
                    }
                    .encode_to_vec()
                })
                .collect();
            ("BatchAppend", ms)
        }
        3 => {
            let stream_option = match rng.below(4) {
                0 => None,
                1 => Some(StreamOption::All(ro::AllOptions {
                    all_option: match rng.below(3) {
                        0 => None,
                        1 => Some(ro::all_options::AllOption::Start(shared::Empty {})),
                        _ => Some(ro::all_options::AllOption::Position(ro::Position {
                            commit_position: rng.edge_u64(),
                            prepare_position: rng.edge_u64(),
                        })),
                    },
                })),
                _ => Some(StreamOption::Stream(ro::StreamOptions {
                    stream_identifier: sid(rng),
                    revision_option: match rng.below(4) {
                        0 => None,
                        1 => Some(ro::stream_options::RevisionOption::Revision(rng.edge_u64())),
                        2 => Some(ro::stream_options::RevisionOption::End(shared::Empty {})),
                        _ => Some(ro::stream_options::RevisionOption::Start(shared::Empty {})),
                    },
                })),
            };
            let req = ReadReq {
                options: (!rng.chance(16)).then(|| factum_proto::streams::read_req::Options {
                    stream_option,
                    read_direction: [0, 1, 2, -1, i32::MAX][rng.below(5)],
                    resolve_links: rng.chance(2),
                    count_option: match rng.below(4) {
                        0 => None,
                        1 => Some(CountOption::Subscription(ro::SubscriptionOptions {})),
                        _ => Some(CountOption::Count(rng.edge_u64())),
                    },
                    filter_option: match rng.below(3) {
                        0 => None,
                        1 => Some(FilterOption::NoFilter(shared::Empty {})),
                        _ => Some(FilterOption::Filter(filter_options(rng))),
                    },
                    uuid_option: (!rng.chance(8)).then_some(ro::UuidOption {
                        content: Some(ro::uuid_option::Content::String(shared::Empty {})),
                    }),
                    control_option: rng.chance(2).then(|| ro::ControlOption {
                        compatibility: rng.edge_u64() as u32,
                    }),
                }),
            };
            ("Read", vec![req.encode_to_vec()])
        }
        4 => {
            use delete_req::options::ExpectedStreamRevision as D;
            let expected = match rng.below(4) {
                0 => None,
                1 => Some(D::Revision(rng.edge_u64())),
                2 => Some(D::NoStream(shared::Empty {})),
                _ => Some(D::Any(shared::Empty {})),
            };
            let req = DeleteReq {
                options: (!rng.chance(8)).then(|| delete_req::Options {
                    stream_identifier: sid(rng),
                    expected_stream_revision: expected,
                }),
            };
            ("Delete", vec![req.encode_to_vec()])
        }
        _ => {
            use tombstone_req::options::ExpectedStreamRevision as T;
            let expected = match rng.below(4) {
                0 => None,
                1 => Some(T::Revision(rng.edge_u64())),
                2 => Some(T::StreamExists(shared::Empty {})),
                _ => Some(T::Any(shared::Empty {})),
            };
            let req = TombstoneReq {
                options: (!rng.chance(8)).then(|| tombstone_req::Options {
                    stream_identifier: sid(rng),
                    expected_stream_revision: expected,
                }),
            };
            let method = if rng.chance(16) { "Nope" } else { "Tombstone" };
            (method, vec![req.encode_to_vec()])
        }
    };
    let body = grpc_frames(rng, messages);
    let mut req = Request::builder()
        .method(Method::POST)
        .version(axum::http::Version::HTTP_2)
        .uri(format!(
            "http://localhost/event_store.client.streams.Streams/{method}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if rng.chance(8) {
        req = req.header(
            "grpc-timeout",
            ["1n", "99999999H", "0m", "x", "100m"][rng.below(5)],
        );
    }
    if rng.chance(16) {
        req = req.header("grpc-encoding", "gzip");
    }
    req.body(Body::from(body)).unwrap()
}

async fn run_router(default_cases: u64, grpc: bool) {
    count_panics();
    let seed = seed();
    let cases = cases(default_cases);
    let mut rng = Rng(seed);
    let (router, _dir, _shutdown) = router();
    let mut tally = Tally::default();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..cases {
        let req = if grpc {
            Some(grpc_request(&mut rng))
        } else {
            http_request(&mut rng)
        };
        let Some(req) = req else {
            tally.add("unbuildable".into());
            continue;
        };
        let what = format!("{} {}", req.method(), req.uri());
        let t = Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(10), send(&router, req, grpc))
            .await
            .unwrap_or_else(|_| panic!("input {i} (seed {seed}) hung: {what}"));
        slowest = slowest.max(t.elapsed());
        tally.add(status);
        assert_eq!(
            PANICS.load(Ordering::SeqCst),
            0,
            "input {i} (seed {seed}) panicked: {what}"
        );
    }
    let took = started.elapsed();
    println!(
        "fuzz {}: {cases} inputs in {took:.2?} ({:.0}/s), seed {seed}, slowest input {slowest:.2?}, {:?}",
        if grpc { "grpc" } else { "http" },
        cases as f64 / took.as_secs_f64(),
        tally.by_status
    );
    if !grpc {
        // A client's bad input is never the server's internal error.
        assert!(!tally.by_status.contains_key("http 500"), "{tally:?}");
    }
}

#[test]
fn fuzz_convert_short() {
    run_convert(3_000);
}

#[test]
#[ignore = "long: 1M inputs; run in release with --ignored"]
fn fuzz_convert_long() {
    run_convert(1_000_000);
}

#[tokio::test]
async fn fuzz_http_short() {
    run_router(3_000, false).await;
}

#[tokio::test]
#[ignore = "long: 1M inputs; run in release with --ignored"]
async fn fuzz_http_long() {
    run_router(1_000_000, false).await;
}

#[tokio::test]
async fn fuzz_grpc_short() {
    run_router(3_000, true).await;
}

#[tokio::test]
#[ignore = "long: 1M inputs; run in release with --ignored"]
async fn fuzz_grpc_long() {
    run_router(1_000_000, true).await;
}

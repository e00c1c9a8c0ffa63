//! The model-based property test: random operation sequences run against a
//! backend and the reference [`Model`] side by side, comparing every result
//! and every read after each operation.

use std::fmt::Debug;

use ::proptest::collection::vec;
use ::proptest::option;
use ::proptest::prelude::*;
use ::proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use bytes::Bytes;
use uuid::Uuid;

use super::model::Model;
use super::support::kind;
use super::StoreFactory;
use crate::error::{Error, Result};
use crate::expected::{CurrentRevision, ExpectedRevision};
use crate::metadata::{StreamMetadata, METADATA_EVENT_TYPE};
use crate::model::{
    ContentType, EventData, Position, RecordedEvent, StreamName, StreamRevision, Timestamp,
};
use crate::read::{
    AllStart, Direction, ReadAll, ReadStream, StreamStart, Subscribe, SubscriptionStart,
    SubscriptionTarget,
};
use crate::store::{EventStore, SubscriptionMessage};

/// The streams operations pick from: two share the category `a`.
const NAMES: [&str; 4] = ["a-1", "a-2", "b-1", "c"];
/// Streams read after every operation besides [`NAMES`].
const LINK_STREAMS: [&str; 3] = ["$ce-a", "$et-A", "$et-B"];

/// Numbers at the edges of `u64`, `i64` and the `Exact` range (largest
/// [`MAX_EXPECTED_REVISION`](crate::MAX_EXPECTED_REVISION)), for every
/// client-supplied number: expected revisions, read starts and counts,
/// metadata values, subscription starts.
const EDGES: [u64; 9] = [
    0,
    1,
    2,
    i64::MAX as u64 - 1,
    i64::MAX as u64,
    i64::MAX as u64 + 1,
    u64::MAX - 2,
    u64::MAX - 1,
    u64::MAX,
];

/// A number at an edge (see [`EDGES`]).
fn edge() -> impl Strategy<Value = u64> {
    (0..EDGES.len()).prop_map(|i| EDGES[i])
}

/// A small number (about the size of a stream here) or one at an edge.
fn small_or_edge(small: std::ops::Range<u64>) -> impl Strategy<Value = u64> {
    prop_oneof![2 => small, 1 => edge()]
}

/// How long the proptest waits for a subscription's `CaughtUp`.
const CATCH_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Cases when `FACTUM_PROPTEST_CASES` is not set.
pub const DEFAULT_PROPTEST_CASES: u32 = 32;

/// The number of cases to run: `FACTUM_PROPTEST_CASES` or 32.
pub fn proptest_cases() -> u32 {
    std::env::var("FACTUM_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_PROPTEST_CASES)
}

/// An expected revision, some of them relative to the stream's current one
/// so that correct `Exact` values are common.
#[derive(Clone, Copy, Debug)]
enum Exp {
    Any,
    NoStream,
    StreamExists,
    /// `Exact(current + delta)` (or `Exact(delta)` at `NoStream`), floored at 0.
    Relative(i8),
    Absolute(u64),
}

#[derive(Clone, Debug)]
enum Op {
    /// Append new events (`true` = type `B`, else `A`; may be empty).
    Append {
        stream: usize,
        expected: Exp,
        types: Vec<bool>,
    },
    /// An earlier append again (`back` = 0: the previous one): same stream,
    /// expectation and events.
    Retry {
        back: usize,
    },
    /// An earlier append's events with another stream or expectation.
    ReuseIds {
        back: usize,
        stream: usize,
        expected: Exp,
    },
    Delete {
        stream: usize,
        expected: Exp,
    },
    Tombstone {
        stream: usize,
        expected: Exp,
    },
    SetMetadata {
        stream: usize,
        expected: Exp,
        max_count: Option<u64>,
        tb: Option<u64>,
        /// `$maxAge`, only values that hide nothing written by this test.
        max_age: Option<u64>,
    },
    /// A read with numbers at the edges, compared with the model's.
    /// `target` indexes [`NAMES`] then [`LINK_STREAMS`], or is `$all`.
    Read {
        target: usize,
        forwards: bool,
        /// `None`: from the start (forwards) or the end (backwards).
        from: Option<u64>,
        max_count: u64,
        /// The page's byte bound (events here are a few dozen bytes).
        max_bytes: u64,
        /// Microseconds since the epoch, as `until`.
        until: Option<i64>,
    },
    /// A subscription (to `$all` or a link stream, from the beginning, the
    /// end or after an edge) read until `CaughtUp`, compared with the model.
    Subscribe {
        /// Indexes [`LINK_STREAMS`], or is `$all`.
        target: usize,
        start: SubscriptionStart,
    },
}

/// Reads and subscriptions: every stream and `$all` (the last index).
const READ_TARGETS: usize = NAMES.len() + LINK_STREAMS.len() + 1;

fn expected() -> impl Strategy<Value = Exp> {
    prop_oneof![
        3 => Just(Exp::Any),
        2 => Just(Exp::NoStream),
        1 => Just(Exp::StreamExists),
        5 => (-2i8..=1).prop_map(Exp::Relative),
        1 => (0u64..8).prop_map(Exp::Absolute),
        1 => edge().prop_map(Exp::Absolute),
    ]
}

fn metadata_expected() -> impl Strategy<Value = Exp> {
    prop_oneof![6 => Just(Exp::Any), 1 => expected()]
}

/// How far back in the history of appends a retry reaches.
fn back() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(0usize), 2 => 1usize..6]
}

fn op() -> impl Strategy<Value = Op> {
    let stream = 0..NAMES.len();
    let types = prop_oneof![1 => vec(any::<bool>(), 0..=0), 8 => vec(any::<bool>(), 1..=3)];
    prop_oneof![
        8 => (stream.clone(), expected(), types)
            .prop_map(|(stream, expected, types)| Op::Append { stream, expected, types }),
        4 => back().prop_map(|back| Op::Retry { back }),
        1 => (back(), stream.clone(), expected())
            .prop_map(|(back, stream, expected)| Op::ReuseIds { back, stream, expected }),
        3 => (stream.clone(), expected()).prop_map(|(stream, expected)| Op::Delete { stream, expected }),
        1 => (stream.clone(), expected()).prop_map(|(stream, expected)| Op::Tombstone { stream, expected }),
        2 => (
            stream,
            metadata_expected(),
            option::of(small_or_edge(1..4)),
            option::of(small_or_edge(0..6)),
            option::of(prop_oneof![Just(1u64 << 40), (3..EDGES.len()).prop_map(|i| EDGES[i])]),
        )
            .prop_map(|(stream, expected, max_count, tb, max_age)| Op::SetMetadata {
                stream,
                expected,
                max_count,
                tb,
                max_age,
            }),
        2 => (
            0..READ_TARGETS,
            any::<bool>(),
            option::of(small_or_edge(0..8)),
            small_or_edge(0..4),
            small_or_edge(0..64),
            option::of(prop_oneof![
                Just(i64::MIN),
                Just(0i64),
                Just(i64::MAX - 1),
                Just(i64::MAX)
            ]),
        )
            .prop_map(
                |(target, forwards, from, max_count, max_bytes, until)| Op::Read {
                    target,
                    forwards,
                    from,
                    max_count,
                    max_bytes,
                    until,
                },
            ),
        1 => (
            0..=LINK_STREAMS.len(),
            prop_oneof![
                1 => Just(SubscriptionStart::Beginning),
                1 => Just(SubscriptionStart::End),
                3 => small_or_edge(0..8).prop_map(SubscriptionStart::After),
            ],
        )
            .prop_map(|(target, start)| Op::Subscribe { target, start }),
    ]
}

fn resolve(e: Exp, current: CurrentRevision) -> ExpectedRevision {
    match e {
        Exp::Any => ExpectedRevision::Any,
        Exp::NoStream => ExpectedRevision::NoStream,
        Exp::StreamExists => ExpectedRevision::StreamExists,
        Exp::Absolute(n) => ExpectedRevision::Exact(StreamRevision(n)),
        Exp::Relative(d) => {
            let base = match current {
                CurrentRevision::Current(r) => r.0 as i64,
                CurrentRevision::NoStream => 0,
            };
            ExpectedRevision::Exact(StreamRevision((base + i64::from(d)).max(0) as u64))
        }
    }
}

/// Everything but `created`; system records (`$…` types) only by stream,
/// revision, position, type and link, plus the parsed data of `$metadata`.
fn normalize(mut e: RecordedEvent) -> RecordedEvent {
    e.created = Timestamp(0);
    if e.event_type.starts_with('$') {
        e.id = Uuid::nil();
        e.metadata = Bytes::new();
        e.content_type = ContentType::Binary;
        e.data = match StreamMetadata::from_json(&e.data) {
            Ok(m) if e.event_type == METADATA_EVENT_TYPE => Bytes::from(m.to_json()),
            _ if e.event_type == METADATA_EVENT_TYPE => e.data,
            _ => Bytes::new(),
        };
    }
    e
}

/// What must match between two errors: the kind, for conflicts the
/// expected and actual revisions, and for a number out of range that the
/// message says so.
fn error_key(e: &Error) -> String {
    match e {
        Error::WrongExpectedVersion {
            expected, actual, ..
        } => format!("WrongExpectedVersion(expected {expected}, actual {actual})"),
        Error::InvalidInput(m) if m.contains("out of range") => "InvalidInput(out of range)".into(),
        e => kind(e).to_owned(),
    }
}

fn describe<T: Debug>(r: &Result<T>) -> String {
    match r {
        Ok(v) => format!("Ok({v:?})"),
        Err(e) => format!("{} ({e})", error_key(e)),
    }
}

/// Compares a backend result with the model's: equal `Ok` values (or just
/// `Ok` when `only_ok`), or matching errors (see [`error_key`]).
fn compare<T: Debug + PartialEq>(
    what: &str,
    backend: &Result<T>,
    model: &Result<T>,
    only_ok: bool,
) -> std::result::Result<(), String> {
    let same = match (backend, model) {
        (Ok(b), Ok(m)) => only_ok || b == m,
        (Err(b), Err(m)) => error_key(b) == error_key(m),
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(format!(
            "{what}:\n  backend: {}\n  model:   {}",
            describe(backend),
            describe(model)
        ))
    }
}

struct Case<'a, S> {
    store: &'a S,
    model: Model,
    /// Every append issued so far (stream, resolved expectation, events).
    appends: Vec<(StreamName, ExpectedRevision, Vec<EventData>)>,
    next_id: u128,
}

impl<S: EventStore> Case<'_, S> {
    fn events(&mut self, types: &[bool]) -> Vec<EventData> {
        types
            .iter()
            .map(|b| {
                self.next_id += 1;
                let n = self.next_id;
                EventData::new(
                    if *b { "B" } else { "A" },
                    ContentType::Json,
                    format!("{{\"n\":{n}}}"),
                )
                .with_id(Uuid::from_u128(n))
                .with_metadata(format!("m{n}"))
            })
            .collect()
    }

    /// The append `back` places before the last one (clamped to the first).
    fn earlier(&self, back: usize) -> Option<(StreamName, ExpectedRevision, Vec<EventData>)> {
        let i = self.appends.len().checked_sub(1)?.saturating_sub(back);
        self.appends.get(i).cloned()
    }

    async fn append(
        &mut self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> std::result::Result<(), String> {
        // The values of an empty append at `NoStream` are unspecified.
        let only_ok = events.is_empty() && self.model.current(&stream) == CurrentRevision::NoStream;
        let want = self
            .model
            .append(&stream, expected, &events, Timestamp::now());
        let ids: Vec<u128> = events.iter().map(|e| e.id.as_u128()).collect();
        let what = format!("append({stream}, {expected}, event ids {ids:?})");
        let got = self.store.append(stream, expected, events).await;
        compare(&what, &got, &want, only_ok)
    }

    async fn apply(&mut self, op: &Op) -> std::result::Result<(), String> {
        let name = |i: usize| StreamName::new(NAMES[i]).expect("valid name");
        match op {
            Op::Append {
                stream,
                expected,
                types,
            } => {
                let s = name(*stream);
                let e = resolve(*expected, self.model.current(&s));
                let events = self.events(types);
                self.appends.push((s.clone(), e, events.clone()));
                self.append(s, e, events).await
            }
            Op::Retry { back } => match self.earlier(*back) {
                Some((s, e, events)) => self.append(s, e, events).await,
                None => Ok(()),
            },
            Op::ReuseIds {
                back,
                stream,
                expected,
            } => match self.earlier(*back) {
                Some((_, _, events)) => {
                    let s = name(*stream);
                    let e = resolve(*expected, self.model.current(&s));
                    self.append(s, e, events).await
                }
                None => Ok(()),
            },
            Op::Delete { stream, expected } => {
                let s = name(*stream);
                let e = resolve(*expected, self.model.current(&s));
                let want = self.model.delete(&s, e, Timestamp::now());
                let got = self.store.delete_stream(s, e).await;
                compare(&format!("delete_stream({e})"), &got, &want, false)
            }
            Op::Tombstone { stream, expected } => {
                let s = name(*stream);
                let e = resolve(*expected, self.model.current(&s));
                let want = self.model.tombstone(&s, e, Timestamp::now());
                let got = self.store.tombstone_stream(s, e).await;
                compare(&format!("tombstone_stream({e})"), &got, &want, false)
            }
            Op::SetMetadata {
                stream,
                expected,
                max_count,
                tb,
                max_age,
            } => {
                let s = name(*stream);
                let e = resolve(*expected, self.model.current(&s.metadata_stream()));
                let md = StreamMetadata {
                    max_count: *max_count,
                    truncate_before: *tb,
                    max_age: *max_age,
                    ..StreamMetadata::default()
                };
                let want = self.model.set_metadata(&s, e, md.clone(), Timestamp::now());
                let got = self.store.set_stream_metadata(s, e, md).await;
                compare(&format!("set_stream_metadata({e})"), &got, &want, false)
            }
            Op::Read {
                target,
                forwards,
                from,
                max_count,
                max_bytes,
                until,
            } => {
                self.read(*target, *forwards, *from, *max_count, *max_bytes, *until)
                    .await
            }
            Op::Subscribe { target, start } => self.subscribe(*target, *start).await,
        }
    }

    /// One read with the given numbers, compared with the model's.
    async fn read(
        &self,
        target: usize,
        forwards: bool,
        from: Option<u64>,
        max_count: u64,
        max_bytes: u64,
        until: Option<i64>,
    ) -> std::result::Result<(), String> {
        let norm = |r: Result<Vec<RecordedEvent>>| {
            r.map(|v| v.into_iter().map(normalize).collect::<Vec<_>>())
        };
        let direction = if forwards {
            Direction::Forwards
        } else {
            Direction::Backwards
        };
        let until = until.map(Timestamp);
        let (what, got, want) = match NAMES.iter().chain(&LINK_STREAMS).nth(target) {
            Some(s) => {
                let s = StreamName::new(s).expect("valid name");
                let req = ReadStream {
                    stream: s.clone(),
                    from: from.map_or(
                        if forwards {
                            StreamStart::Start
                        } else {
                            StreamStart::End
                        },
                        |r| StreamStart::Revision(StreamRevision(r)),
                    ),
                    direction,
                    max_count,
                    max_bytes,
                    until,
                };
                let want = norm(self.model.read_stream(&req, Timestamp::now()));
                let what = format!(
                    "read_stream({s}, {direction:?}, {:?}, max {max_count}/{max_bytes}B, until {until:?})",
                    req.from
                );
                (what, norm(self.store.read_stream(req).await), want)
            }
            None => {
                let req = ReadAll {
                    from: from.map_or(
                        if forwards {
                            AllStart::Start
                        } else {
                            AllStart::End
                        },
                        |p| AllStart::Position(Position(p)),
                    ),
                    direction,
                    max_count,
                    max_bytes,
                    filter: None,
                    until,
                };
                let want =
                    Ok(self.model.read_all(&req)).map(|v| v.into_iter().map(normalize).collect());
                let what = format!(
                    "read_all({direction:?}, {:?}, max {max_count}/{max_bytes}B, until {until:?})",
                    req.from
                );
                (what, norm(self.store.read_all(req).await), want)
            }
        };
        compare(&what, &got, &want, false)
    }

    /// A subscription read until `CaughtUp`, compared with the model.
    async fn subscribe(
        &self,
        target: usize,
        start: SubscriptionStart,
    ) -> std::result::Result<(), String> {
        let target = match LINK_STREAMS.get(target) {
            Some(s) => SubscriptionTarget::Stream(StreamName::new(s).expect("valid name")),
            None => SubscriptionTarget::All(None),
        };
        let want = self.model.subscription_start(&target, start).map(|after| {
            self.model
                .events_after(&target, after, usize::MAX)
                .into_iter()
                .map(normalize)
                .collect::<Vec<_>>()
        });
        let what = format!("subscribe({target:?}, {start:?}) until CaughtUp");
        let got = self.catch_up(target, start).await;
        compare(&what, &got, &want, false)
    }

    /// The events a subscription delivers before `CaughtUp`, or its error
    /// (from `subscribe` or as its first message).
    async fn catch_up(
        &self,
        target: SubscriptionTarget,
        start: SubscriptionStart,
    ) -> Result<Vec<RecordedEvent>> {
        let mut sub = self.store.subscribe(Subscribe { target, start }).await?;
        let mut events = Vec::new();
        loop {
            match tokio::time::timeout(CATCH_UP_TIMEOUT, sub.next()).await {
                Err(_) => {
                    return Err(Error::unavailable(
                        crate::error::UnavailableReason::Unspecified,
                        format!("no CaughtUp within {CATCH_UP_TIMEOUT:?}"),
                    ))
                }
                Ok(None) => {
                    return Err(Error::unavailable(
                        crate::error::UnavailableReason::Unspecified,
                        "ended before CaughtUp",
                    ))
                }
                Ok(Some(Err(e))) => return Err(e),
                Ok(Some(Ok(SubscriptionMessage::Event(e)))) => events.push(normalize(e)),
                Ok(Some(Ok(SubscriptionMessage::CaughtUp))) => return Ok(events),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Compares every read the model can answer.
    async fn compare_reads(&self) -> std::result::Result<(), String> {
        let norm = |r: Result<Vec<RecordedEvent>>| {
            r.map(|v| v.into_iter().map(normalize).collect::<Vec<_>>())
        };
        for s in NAMES.iter().chain(&LINK_STREAMS) {
            let s = StreamName::new(s).expect("valid name");
            for req in [
                ReadStream::forwards(s.clone()),
                ReadStream::backwards(s.clone()),
            ] {
                let want = norm(self.model.read_stream(&req, Timestamp::now()));
                let what = format!("read_stream({s}, {:?})", req.direction);
                let got = norm(self.store.read_stream(req).await);
                compare(&what, &got, &want, false)?;
            }
        }
        for s in NAMES {
            let s = StreamName::new(s).expect("valid name");
            let want = self.model.metadata(&s);
            let got = self.store.stream_metadata(s.clone()).await;
            compare(&format!("stream_metadata({s})"), &got, &want, false)?;
        }
        let want = Ok(self.model.read_all(&ReadAll::forwards()))
            .map(|v| v.into_iter().map(normalize).collect::<Vec<_>>());
        let got = norm(self.store.read_all(ReadAll::forwards()).await);
        compare("read_all forwards", &got, &want, false)?;
        let got = self.store.head_position().await;
        compare("head_position", &got, &Ok(self.model.head()), false)
    }
}

async fn run_case<F: StoreFactory>(
    factory: &F,
    ops: &[Op],
) -> std::result::Result<(), TestCaseError> {
    let store = factory.create().await;
    let mut case = Case {
        store: &store,
        model: Model::new(),
        appends: Vec::new(),
        next_id: 0,
    };
    case.compare_reads()
        .await
        .map_err(|e| TestCaseError::fail(format!("on the empty store: {e}")))?;
    for (i, op) in ops.iter().enumerate() {
        let step = |e: String| TestCaseError::fail(format!("after op #{i} {op:?}: {e}"));
        case.apply(op).await.map_err(step)?;
        case.compare_reads().await.map_err(step)?;
    }
    Ok(())
}

/// Runs `cases` random operation sequences (1 to 40 appends, retries,
/// re-used ids, deletes, tombstones, metadata writes over the streams
/// `a-1`, `a-2`, `b-1`, `c`, reads and subscriptions) against fresh stores
/// from `factory` and the reference model, comparing each result (the `Ok`
/// value or the error kind) and then every stream read (forwards and
/// backwards, `$ce-a`, `$et-A`, `$et-B`), the metadata, `read_all` and the
/// head. `created` is not compared.
///
/// Numbers come from the edges too (0, 1, around `i64::MAX` and
/// `u64::MAX`): expected revisions, read starts, counts and `until`,
/// `$maxCount`, `$tb`, `$maxAge`, subscription starts. Whatever they do,
/// the store answers as the model does (an out-of-range expectation or
/// subscription start is `InvalidInput` saying "out of range"), and the
/// comparisons after every operation show that it still takes appends and
/// lost nothing it acknowledged.
///
/// Sync: it builds its own tokio runtime, so call it from a plain `#[test]`
/// (not inside a tokio runtime). The RNG is deterministic; set
/// `FACTUM_PROPTEST_SEED=<u64>` to explore other sequences. Panics with the
/// shrunk failing sequence.
pub fn model_proptest<F: StoreFactory + 'static>(factory: F, cases: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the model proptest");
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 1024,
        ..Config::default()
    };
    let rng = match std::env::var("FACTUM_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        Some(seed) => {
            let mut bytes = [0u8; 32];
            for chunk in bytes.chunks_mut(8) {
                chunk.copy_from_slice(&seed.to_le_bytes());
            }
            TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
        }
        None => TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    };
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&vec(op(), 1..40), |ops| {
        runtime.block_on(run_case(&factory, &ops))
    });
    if let Err(e) = result {
        panic!("conformance: model_proptest failed: {e}");
    }
}

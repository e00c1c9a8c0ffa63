//! `soak`: mixed load against a real `factum serve` process for a set time
//! (`--soak-seconds`, default 600; quick 60), watching the server's memory.
//!
//! At once, until the time is up: paced appends of 100 B–4 KiB events (one
//! in 500 of 1 MiB) by four writers; `$all` and stream reads from random
//! places; a catch-up subscription restarted from a random place whenever
//! it catches up; a live `$all` subscription; a consumer group (through
//! KurrentDB's official client) acking every event; a slow consumer that
//! subscribes from the beginning and never reads; reads and subscriptions
//! dropped after their first event, HTTP bodies cut off mid-way; appends
//! over the server's `--max-append-bytes` (gRPC and HTTP), malformed HTTP
//! JSON and bytes that are not HTTP at all.
//!
//! Reported: the server's resident memory (`VmRSS`) sampled every second
//! (per quarter, and a series), appends acknowledged vs present in `$all`
//! at the end, and errors by kind — expected ones (the refusals the
//! oversized and malformed requests must get) apart from the rest. Target:
//! RSS flat after warm-up (the last quarter's mean within 10 % of the
//! second's), every acknowledged append present, no unexpected error.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use factum_client::Client;
use factum_core::{
    Bytes, ContentType, EventData, EventStore, ExpectedRevision, Position, ReadAll, ReadStream,
    StreamName, Subscribe, SubscriptionMessage, SubscriptionStart, Uuid,
};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::BenchError;
use crate::server::{Placement, ServerProcess};
use crate::{Ctx, Report, Workload};

/// The server's append limit in this workload: oversized requests are
/// cheap to make.
const MAX_APPEND: usize = 4 << 20;
/// Streams the writers spread over.
const STREAMS: u64 = 200;
/// The stream the consumer group reads.
const GROUP_STREAM: &str = "soak-group";
/// Appends per second per writer.
const WRITER_RATE: f64 = 50.0;
const WRITERS: u64 = 4;

/// A small, seedable generator (xorshift64*): sizes and places, not secrets.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the load saw.
#[derive(Default)]
struct Stats {
    acked: Mutex<HashSet<Uuid>>,
    /// Operations that ended as they should, by kind.
    ok: Mutex<BTreeMap<String, u64>>,
    /// Refusals the request was made to get (oversized, malformed).
    expected: Mutex<BTreeMap<String, u64>>,
    /// Everything else that failed.
    unexpected: Mutex<BTreeMap<String, u64>>,
    head: AtomicU64,
}

impl Stats {
    fn count(map: &Mutex<BTreeMap<String, u64>>, key: String) {
        *map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += 1;
    }
    fn ok(&self, what: &str) {
        Self::count(&self.ok, what.to_owned());
    }
    fn expected(&self, what: &str, kind: &str) {
        Self::count(&self.expected, format!("{what}: {kind}"));
    }
    fn unexpected(&self, what: &str, kind: &str) {
        Self::count(&self.unexpected, format!("{what}: {kind}"));
    }
    fn error(&self, what: &str, e: &factum_core::Error) {
        self.unexpected(what, &kind(e));
    }
}

/// An error's variant name (`LimitExceeded`, `Unavailable`, …).
fn kind(e: &factum_core::Error) -> String {
    let d = format!("{e:?}");
    d.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("?")
        .to_owned()
}

/// `soak`.
pub fn soak(ctx: &mut Ctx, seconds: Option<u64>) -> Result<Report, BenchError> {
    let w = Workload::Soak;
    let dir = ctx.dir(w.name())?;
    let duration = Duration::from_secs(seconds.unwrap_or(if ctx.quick { 60 } else { 600 }));
    let placement = Placement::Shared("not pinned: the soak measures memory, not CPU".into());
    let max = MAX_APPEND.to_string();
    let server = ServerProcess::start_with(
        &dir.join("store"),
        &placement,
        &["--max-append-bytes", &max],
    )?;
    let addr = server.addr;
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    let (samples, present, missing) = ctx.rt.block_on(async {
        let client = Client::connect(&format!("esdb://{addr}?tls=false")).await?;
        let mut tasks = Vec::new();
        for i in 0..WRITERS {
            tasks.push(tokio::spawn(writer(
                client.clone(),
                stats.clone(),
                stop.clone(),
                i,
            )));
        }
        tasks.push(tokio::spawn(reader(
            client.clone(),
            stats.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(catch_up(
            client.clone(),
            stats.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(live(
            client.clone(),
            stats.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(group(addr, stats.clone(), stop.clone())));
        tasks.push(tokio::spawn(abuse(
            client.clone(),
            addr,
            stats.clone(),
            stop.clone(),
        )));
        // The slow consumer: subscribed from the beginning, never read.
        let slow = client
            .subscribe(Subscribe::all(SubscriptionStart::Beginning, None))
            .await?;

        let mut samples: Vec<(f64, u64)> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while started.elapsed() < duration {
            tick.tick().await;
            samples.push((started.elapsed().as_secs_f64(), server.rss()?));
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        drop(slow);

        // Every acknowledged append must be in $all: each id found is
        // struck off once (a duplicate cannot hide a missing one).
        let mut acked = std::mem::take(&mut *stats.acked.lock().unwrap_or_else(|p| p.into_inner()));
        let mut present = 0u64;
        let mut all = client.read_all_streaming(ReadAll::forwards()).await?;
        while let Some(e) = all.next().await {
            if acked.remove(&e?.id) {
                present += 1;
            }
        }
        let missing = acked.len() as u64;
        Ok::<_, BenchError>((samples, present, missing))
    })?;
    let seconds = started.elapsed().as_secs_f64();
    server.stop()?;

    // Memory per quarter of the run.
    let quarter = |q: usize| -> Option<f64> {
        let span = duration.as_secs_f64() / 4.0;
        let (lo, hi) = (span * q as f64, span * (q + 1) as f64);
        let v: Vec<u64> = samples
            .iter()
            .filter(|(t, _)| *t >= lo && *t < hi)
            .map(|(_, r)| *r)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<u64>() as f64 / v.len() as f64)
    };
    let mib = |b: f64| b / (1u64 << 20) as f64;
    let quarters: Vec<Option<f64>> = (0..4).map(quarter).collect();
    let flat = match (quarters[1], quarters[3]) {
        (Some(q2), Some(q4)) => Some((q4 - q2).abs() <= 0.10 * q2),
        _ => None,
    };
    let take = |m: &Mutex<BTreeMap<String, u64>>| {
        std::mem::take(&mut *m.lock().unwrap_or_else(|p| p.into_inner()))
    };
    let (ok, expected, unexpected) = (
        take(&stats.ok),
        take(&stats.expected),
        take(&stats.unexpected),
    );
    let acknowledged = present + missing;
    let mut r = ctx.report(w);
    r.events = acknowledged;
    r.seconds = seconds;
    r.events_per_sec = Some(acknowledged as f64 / seconds);
    r.latency_of = "none: the soak measures memory and loss, not latency";
    r.target = "server RSS flat after warm-up (last quarter's mean within 10 % of the second's); every acknowledged append present; no unexpected error".into();
    r.target_met = Some(flat.unwrap_or(false) && missing == 0 && unexpected.is_empty());
    r.peak_rss_mb = samples
        .iter()
        .map(|(_, b)| mib(*b as f64))
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    r.soak = Some(SoakFigures {
        rss_mb_by_quarter: quarters.iter().map(|q| q.map(mib)).collect(),
        rss_mb_over_time: samples
            .iter()
            .step_by((samples.len() / 40).max(1))
            .map(|(t, b)| (t.round(), (mib(*b as f64) * 10.0).round() / 10.0))
            .collect(),
        acknowledged,
        present,
        missing,
        operations: ok,
        expected_errors: expected,
        unexpected_errors: unexpected,
    });
    let s = r.soak.as_ref().expect("set above");
    r.notes.push(format!(
        "RSS by quarter (MiB): {}",
        s.rss_mb_by_quarter
            .iter()
            .map(|q| q.map_or("-".into(), |v| format!("{v:.1}")))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    r.notes.push(format!(
        "appends acknowledged {acknowledged}, present at the end {present}, missing {missing}"
    ));
    r.notes.push(format!("operations: {:?}", s.operations));
    r.notes
        .push(format!("expected refusals: {:?}", s.expected_errors));
    r.notes
        .push(format!("unexpected errors: {:?}", s.unexpected_errors));
    r.notes.push(format!(
        "load: {WRITERS} writers at {WRITER_RATE}/s each (100 B-4 KiB, 1 in 500 of 1 MiB), reads, catch-up, live and slow subscriptions, a consumer group, dropped calls, oversized and malformed requests; factum serve --max-append-bytes {MAX_APPEND}"
    ));
    Ok(r)
}

/// The soak's own figures in its report.
#[derive(serde::Serialize, Clone, Debug, Default)]
pub struct SoakFigures {
    /// Mean server RSS per quarter of the run, MiB.
    pub rss_mb_by_quarter: Vec<Option<f64>>,
    /// (seconds, MiB) about 40 points over the run.
    pub rss_mb_over_time: Vec<(f64, f64)>,
    /// Appends the server acknowledged.
    pub acknowledged: u64,
    /// Of those, found in `$all` at the end.
    pub present: u64,
    /// Acknowledged and not found.
    pub missing: u64,
    /// Operations that ended as they should, by kind.
    pub operations: BTreeMap<String, u64>,
    /// Refusals the oversized and malformed requests got, by kind.
    pub expected_errors: BTreeMap<String, u64>,
    /// Any other failure, by kind.
    pub unexpected_errors: BTreeMap<String, u64>,
}

fn seed(i: u64) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    t ^ (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn stream(n: u64) -> StreamName {
    StreamName::new(format!("soak-{n}")).expect("a valid name")
}

async fn writer(client: Client, stats: Arc<Stats>, stop: Arc<AtomicBool>, i: u64) {
    let mut rng = Rng::new(seed(i));
    let pause = Duration::from_secs_f64(1.0 / WRITER_RATE);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        next += pause;
        let size = if rng.below(500) == 0 {
            1 << 20
        } else {
            100 + rng.below(4000) as usize
        };
        let target = if rng.below(10) == 0 {
            StreamName::new(GROUP_STREAM).expect("valid")
        } else {
            stream(rng.below(STREAMS))
        };
        let e = EventData::new("Soak", ContentType::Binary, vec![i as u8; size]);
        let id = e.id;
        match client.append(target, ExpectedRevision::Any, vec![e]).await {
            Ok(r) => {
                stats
                    .acked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id);
                stats.head.fetch_max(r.position.0, Ordering::Relaxed);
                stats.ok("append");
            }
            Err(e) => stats.error("append", &e),
        }
        tokio::time::sleep_until(next.into()).await;
    }
}

async fn reader(client: Client, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let mut rng = Rng::new(seed(100));
    while !stop.load(Ordering::Relaxed) {
        let head = stats.head.load(Ordering::Relaxed);
        let from = Position(rng.below(head + 1));
        match client
            .read_all_streaming(ReadAll::forwards().from_position(from).max_count(500))
            .await
        {
            Ok(mut events) => {
                let mut failed = false;
                while let Some(e) = events.next().await {
                    if let Err(e) = e {
                        stats.error("read $all", &e);
                        failed = true;
                        break;
                    }
                }
                if !failed {
                    stats.ok("read $all");
                }
            }
            Err(e) => stats.error("read $all", &e),
        }
        let s = stream(rng.below(STREAMS));
        match client
            .read_stream(ReadStream::backwards(s).max_count(100))
            .await
        {
            Ok(_) | Err(factum_core::Error::StreamNotFound { .. }) => stats.ok("read stream"),
            Err(e) => stats.error("read stream", &e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Catch-up subscriptions from a random place, each until it catches up.
async fn catch_up(client: Client, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let mut rng = Rng::new(seed(200));
    while !stop.load(Ordering::Relaxed) {
        let head = stats.head.load(Ordering::Relaxed);
        let start = match rng.below(head + 1) {
            0 => SubscriptionStart::Beginning,
            p => SubscriptionStart::After(p),
        };
        let mut sub = match client.subscribe(Subscribe::all(start, None)).await {
            Ok(s) => s,
            Err(e) => {
                stats.error("catch-up subscription", &e);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
                Ok(Some(Ok(SubscriptionMessage::CaughtUp))) => {
                    stats.ok("catch-up subscription");
                    break;
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => {
                    stats.error("catch-up subscription", &e);
                    break;
                }
                Ok(None) => {
                    stats.unexpected("catch-up subscription", "ended");
                    break;
                }
                Err(_) => {}
            }
        }
    }
}

async fn live(client: Client, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let mut sub = match client
        .subscribe(Subscribe::all(SubscriptionStart::End, None))
        .await
    {
        Ok(s) => s,
        Err(e) => return stats.error("live subscription", &e),
    };
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
            Ok(Some(Ok(SubscriptionMessage::Event(_)))) => stats.ok("live event"),
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(Some(Err(e))) => return stats.error("live subscription", &e),
            Ok(None) => return stats.unexpected("live subscription", "ended"),
        }
    }
}

/// A consumer group on [`GROUP_STREAM`] through KurrentDB's official
/// client, acking every event.
async fn group(addr: std::net::SocketAddr, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    use kurrentdb::{
        PersistentSubscriptionOptions, StreamPosition, SubscribeToPersistentSubscriptionOptions,
    };
    let client = match format!("esdb://{addr}?tls=false")
        .parse()
        .map_err(|e| format!("{e}"))
        .and_then(|s| kurrentdb::Client::new(s).map_err(|e| format!("{e}")))
    {
        Ok(c) => c,
        Err(e) => return stats.unexpected("consumer group", &e),
    };
    let options = PersistentSubscriptionOptions::default().start_from(StreamPosition::Start);
    if let Err(e) = client
        .create_persistent_subscription(GROUP_STREAM, "soak", &options)
        .await
    {
        return stats.unexpected("consumer group create", &e.to_string());
    }
    let mut sub = match client
        .subscribe_to_persistent_subscription(
            GROUP_STREAM,
            "soak",
            &SubscribeToPersistentSubscriptionOptions::default().buffer_size(50),
        )
        .await
    {
        Ok(s) => s,
        Err(e) => return stats.unexpected("consumer group connect", &e.to_string()),
    };
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
            Ok(Ok(event)) => match sub.ack(&event).await {
                Ok(()) => stats.ok("consumer group ack"),
                Err(e) => return stats.unexpected("consumer group ack", &e.to_string()),
            },
            Ok(Err(e)) => return stats.unexpected("consumer group", &e.to_string()),
            Err(_) => {}
        }
    }
}

/// Writes `bytes`, reads the answer until the server closes or 5 s pass;
/// returns the HTTP status, if any.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8], close_early: bool) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let _ = s.write_all(bytes).await;
    if close_early {
        return None;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    std::str::from_utf8(answer.get(9..12)?).ok()?.parse().ok()
}

/// Dropped calls, oversized and malformed requests, in turn.
async fn abuse(
    client: Client,
    addr: std::net::SocketAddr,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) {
    let mut round = 0u64;
    let big = Bytes::from(vec![7u8; MAX_APPEND + 1]);
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        match round % 7 {
            // A gRPC append over the limit.
            0 => {
                let e = EventData::new("Big", ContentType::Binary, big.clone());
                match client
                    .append(stream(0), ExpectedRevision::Any, vec![e])
                    .await
                {
                    Err(e @ factum_core::Error::LimitExceeded { .. }) => {
                        stats.expected("oversized gRPC append", &kind(&e))
                    }
                    Err(e) => stats.error("oversized gRPC append", &e),
                    Ok(_) => stats.unexpected("oversized gRPC append", "accepted"),
                }
            }
            // An HTTP append announcing a body over the limit.
            1 => {
                let head = format!(
                    "POST /streams/soak-0 HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/octet-stream\r\nes-eventtype: Big\r\ncontent-length: {}\r\n\r\n",
                    MAX_APPEND + 1
                );
                match raw(addr, head.as_bytes(), false).await {
                    Some(413) => stats.expected("oversized HTTP append", "413"),
                    other => stats.unexpected("oversized HTTP append", &format!("{other:?}")),
                }
            }
            // Malformed JSON.
            2 => {
                let body = b"{\"not\": json";
                let head = format!(
                    "POST /streams/soak-0 HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/vnd.eventstore.events+json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let mut req = head.into_bytes();
                req.extend_from_slice(body);
                match raw(addr, &req, false).await {
                    Some(s @ 400..=499) => stats.expected("malformed HTTP append", &s.to_string()),
                    other => stats.unexpected("malformed HTTP append", &format!("{other:?}")),
                }
            }
            // Not HTTP at all.
            3 => {
                let _ = raw(addr, b"\x00\x01\x02 this is not a protocol\r\n\r\n", false).await;
                stats.ok("garbage connection");
            }
            // An HTTP body cut off half way.
            4 => {
                let head = "POST /streams/soak-0 HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\nes-eventtype: Cut\r\ncontent-length: 100000\r\n\r\n";
                let mut req = head.as_bytes().to_vec();
                req.extend(std::iter::repeat_n(b'x', 50_000));
                let _ = raw(addr, &req, true).await;
                stats.ok("cut-off HTTP body");
            }
            // A read dropped after its first event.
            5 => {
                if let Ok(mut r) = client.read_all_streaming(ReadAll::forwards()).await {
                    let _ = r.next().await;
                }
                stats.ok("dropped read");
            }
            // A subscription dropped after its first event.
            _ => {
                if let Ok(mut s) = client
                    .subscribe(Subscribe::all(SubscriptionStart::Beginning, None))
                    .await
                {
                    let _ = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
                }
                stats.ok("dropped subscription");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

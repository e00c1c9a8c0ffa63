//! `subscribe-latency`: a live `$all` subscriber while appends arrive at a
//! paced 10,000 events/s (durability `Always`). Each event carries the time
//! its append started; the subscriber measures start → delivery. The first
//! half second is a warm-up (paced and delivered the same way, not
//! measured): a fresh store's first fsyncs also commit the creation of its
//! files. Each append also records start → acknowledgement, which shows how
//! much of the delivery latency is the durable append itself; the measured
//! part runs in slices that alternate with a raw baseline (write + fdatasync
//! of the same bytes every millisecond), so both see the same disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_core::{
    Bytes, ContentType, EventData, EventStore, ExpectedRevision, StreamName, Subscribe,
    SubscriptionMessage, SubscriptionStart,
};
use factum_engine::Durability;

use crate::error::BenchError;
use crate::util::{open_engine, rate, Latencies, RawWriter};
use crate::{Ctx, Report, Workload};

/// Appends per second.
const RATE: u64 = 10_000;
/// Streams the appends spread over.
const STREAMS: u64 = 64;
/// Not measured at the start.
const WARM_UP: Duration = Duration::from_millis(500);
/// Measured slices; each is followed by the raw baseline for as long.
const SLICES: u64 = 5;

#[derive(serde::Deserialize)]
struct Probe {
    /// Nanoseconds since the bench's base instant when the append started.
    t: u64,
    /// 1 when measured (0 in the warm-up).
    m: u8,
}

fn probe_event(base: Instant, measured: bool) -> EventData {
    let t = base.elapsed().as_nanos() as u64;
    // About 256 bytes, like the other workloads' events.
    let data = format!(
        "{{\"t\":{t},\"m\":{},\"p\":\"{}\"}}",
        u8::from(measured),
        "x".repeat(224)
    );
    EventData::new("Probe", ContentType::Json, Bytes::from(data))
}

/// `subscribe-latency`.
pub fn latency(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let dir = ctx.dir(Workload::SubscribeLatency.name())?;
    let duration = ctx.secs(3.0, 10.0);
    let total = ctx.cap((RATE as f64 * duration.as_secs_f64()) as u64);
    // Under a test's --events cap, no warm-up.
    let (warm_events, warm_up) = if ctx.cap.is_some() {
        (0, Duration::ZERO)
    } else {
        ((RATE as f64 * WARM_UP.as_secs_f64()) as u64, WARM_UP)
    };
    let sent_total = warm_events + total;
    let engine = Arc::new(open_engine(&dir, Durability::Always)?);
    let streams: Arc<Vec<StreamName>> = Arc::new(
        (0..STREAMS)
            .map(|i| StreamName::new(format!("sub-{i}")))
            .collect::<Result<_, _>>()?,
    );
    let outcome = ctx.rt.block_on(async {
        let mut sub = engine
            .subscribe(Subscribe::all(SubscriptionStart::End, None))
            .await?;
        let base = Instant::now();
        let consumer = tokio::spawn(async move {
            let mut lat = Latencies::with_capacity(total as usize);
            let mut fell_behind = 0u64;
            let mut received = 0u64;
            while received < sent_total {
                let next = tokio::time::timeout(Duration::from_secs(10), sub.next()).await;
                match next {
                    Err(_) | Ok(None) => break,
                    Ok(Some(Err(e))) => return Err(BenchError::from(e)),
                    Ok(Some(Ok(SubscriptionMessage::Event(e)))) => {
                        let now = base.elapsed().as_nanos() as u64;
                        let probe: Probe = serde_json::from_slice(&e.data).map_err(|err| {
                            BenchError::failure(format!("unexpected event data: {err}"))
                        })?;
                        received += 1;
                        if probe.m == 1 {
                            lat.push(Duration::from_nanos(now.saturating_sub(probe.t)));
                        }
                    }
                    Ok(Some(Ok(SubscriptionMessage::FellBehind))) => fell_behind += 1,
                    Ok(Some(Ok(_))) => {}
                }
            }
            Ok((lat, fell_behind))
        });
        // The producer: every millisecond, start the appends that are due.
        // Phases: the warm-up, then measured slices, each followed by the
        // raw baseline for as long (the subscriber idles meanwhile).
        let mut phases = Vec::new();
        if warm_events > 0 {
            phases.push((warm_events, false));
        }
        for k in 0..SLICES {
            phases.push((total * (k + 1) / SLICES - total * k / SLICES, true));
        }
        let mut appends = tokio::task::JoinSet::new();
        let mut acks = Latencies::with_capacity(total as usize);
        let mut raw: Option<RawWriter> = None;
        let mut produce_secs = Duration::ZERO;
        let mut sent = 0u64;
        let mut ack = |done: Result<Result<(bool, Duration), factum_core::Error>, _>| {
            let (measured, took) =
                done.map_err(|e| BenchError::failure(format!("an append task failed: {e}")))??;
            if measured {
                acks.push(took);
            }
            Ok::<_, BenchError>(())
        };
        for (n, measured) in phases {
            let first = sent;
            let end = sent + n;
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while sent < end {
                tick.tick().await;
                let due =
                    (first + (started.elapsed().as_secs_f64() * RATE as f64) as u64 + 1).min(end);
                while sent < due {
                    let engine = engine.clone();
                    let stream = streams[(sent % STREAMS) as usize].clone();
                    appends.spawn(async move {
                        let t = Instant::now();
                        engine
                            .append(
                                stream,
                                ExpectedRevision::Any,
                                vec![probe_event(base, measured)],
                            )
                            .await
                            .map(|_| (measured, t.elapsed()))
                    });
                    sent += 1;
                }
                while let Some(done) = appends.try_join_next() {
                    ack(done)?;
                }
            }
            if measured {
                produce_secs += started.elapsed();
            }
            while let Some(done) = appends.join_next().await {
                ack(done)?;
            }
            if !measured {
                continue;
            }
            // The baseline: what one millisecond of these appends writes,
            // written and fdatasynced every millisecond.
            let raw = match &mut raw {
                Some(raw) => raw,
                None => {
                    let per_event = engine.log_bytes()? / sent.max(1);
                    let chunk = (per_event * RATE / 1000) as usize;
                    raw.insert(RawWriter::create_preallocated(&dir.join("raw.bin"), chunk)?)
                }
            };
            tokio::task::block_in_place(|| {
                raw.run_paced(Duration::from_millis(1), n * 1000 / RATE)
            })?;
        }
        let raw = raw.map(RawWriter::finish);
        let sent = sent - warm_events;
        let (lat, fell_behind) = consumer
            .await
            .map_err(|e| BenchError::failure(format!("the subscriber failed: {e}")))??;
        Ok::<_, BenchError>((sent, produce_secs, lat, acks, raw, fell_behind))
    });
    let closed = engine.close();
    let (sent, elapsed, mut lat, mut acks, raw, fell_behind) = outcome?;
    closed?;
    let received = lat.len() as u64;
    let (p50, p99) = lat.p50_p99_us();
    let mut r = ctx.report(Workload::SubscribeLatency);
    r.events = received;
    r.seconds = elapsed.as_secs_f64();
    r.events_per_sec = Some(rate(sent, elapsed));
    r.p50_us = p50;
    r.p99_us = p99;
    r.latency_of = "append start → delivery to a live $all subscriber";
    r.target = "p99 ≤2 ms at 10k events/s".into();
    r.target_met = Some(received == sent && p99.is_some_and(|p| p <= 2000.0));
    r.notes.push(format!(
        "appends paced at {RATE}/s (1 event each, {STREAMS} streams, ExpectedRevision::Any) after a {} ms warm-up that is not measured; events_per_sec is the achieved append rate; {received} of {sent} delivered",
        warm_up.as_millis()
    ));
    let (ack50, ack99) = acks.p50_p99_us();
    r.notes.push(format!(
        "the durable append alone (start → acknowledged, same events): p50 {:.0} µs, p99 {:.0} µs",
        ack50.unwrap_or(0.0),
        ack99.unwrap_or(0.0)
    ));
    if let Some(mut raw) = raw.filter(|raw| raw.ops > 0) {
        let (raw50, raw99) = raw.latencies.p50_p99_us();
        let frame = raw.bytes / raw.ops.max(1);
        r.notes.push(format!(
            "the disk in the same run (slices alternating with the engine's): raw write({frame} B, one millisecond of these appends) + fdatasync every 1 ms into preallocated zeros, latency from its scheduled time: p50 {:.0} µs, p99 {:.0} µs; delivery p99 / raw p99 = {:.2}",
            raw50.unwrap_or(0.0),
            raw99.unwrap_or(0.0),
            p99.unwrap_or(0.0) / raw99.unwrap_or(f64::NAN),
        ));
    }
    if fell_behind > 0 {
        r.notes.push(format!(
            "the subscriber was told {fell_behind} time(s) that it fell behind"
        ));
    }
    if received != sent {
        r.notes.push(format!(
            "{} event(s) were not delivered within 10 s",
            sent - received
        ));
    }
    Ok(r)
}

//! `subscribe-latency`: a live `$all` subscriber while appends arrive at a
//! paced 10,000 events/s (durability `Always`). Each event carries the time
//! its append started; the subscriber measures start → delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_core::{
    Bytes, ContentType, EventData, EventStore, ExpectedRevision, StreamName, Subscribe,
    SubscriptionMessage, SubscriptionStart,
};
use factum_engine::Durability;

use super::util::{open_engine, rate, Latencies};
use super::{Ctx, Report, Workload};
use crate::error::CliError;

/// Appends per second.
const RATE: u64 = 10_000;
/// Streams the appends spread over.
const STREAMS: u64 = 64;

#[derive(serde::Deserialize)]
struct Probe {
    /// Nanoseconds since the bench's base instant when the append started.
    t: u64,
}

fn probe_event(base: Instant) -> EventData {
    let t = base.elapsed().as_nanos() as u64;
    // About 256 bytes, like the other workloads' events.
    let data = format!("{{\"t\":{t},\"p\":\"{}\"}}", "x".repeat(230));
    EventData::new("Probe", ContentType::Json, Bytes::from(data))
}

/// `subscribe-latency`.
pub fn latency(ctx: &mut Ctx) -> Result<Report, CliError> {
    let dir = ctx.dir(Workload::SubscribeLatency.name())?;
    let duration = ctx.secs(3.0, 10.0);
    let total = ctx.cap((RATE as f64 * duration.as_secs_f64()) as u64);
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
            while (lat.len() as u64) < total {
                let next = tokio::time::timeout(Duration::from_secs(10), sub.next()).await;
                match next {
                    Err(_) | Ok(None) => break,
                    Ok(Some(Err(e))) => return Err(CliError::from(e)),
                    Ok(Some(Ok(SubscriptionMessage::Event(e)))) => {
                        let now = base.elapsed().as_nanos() as u64;
                        let probe: Probe = serde_json::from_slice(&e.data).map_err(|err| {
                            CliError::failure(format!("unexpected event data: {err}"))
                        })?;
                        lat.push(Duration::from_nanos(now.saturating_sub(probe.t)));
                    }
                    Ok(Some(Ok(SubscriptionMessage::FellBehind))) => fell_behind += 1,
                    Ok(Some(Ok(_))) => {}
                }
            }
            Ok((lat, fell_behind))
        });
        // The producer: every millisecond, start the appends that are due.
        let started = Instant::now();
        let mut appends = tokio::task::JoinSet::new();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while sent < total {
            tick.tick().await;
            let due = ((started.elapsed().as_secs_f64() * RATE as f64) as u64 + 1).min(total);
            while sent < due {
                let engine = engine.clone();
                let stream = streams[(sent % STREAMS) as usize].clone();
                appends.spawn(async move {
                    engine
                        .append(stream, ExpectedRevision::Any, vec![probe_event(base)])
                        .await
                });
                sent += 1;
            }
            while let Some(done) = appends.try_join_next() {
                done.map_err(|e| CliError::failure(format!("an append task failed: {e}")))??;
            }
        }
        let produce_secs = started.elapsed();
        while let Some(done) = appends.join_next().await {
            done.map_err(|e| CliError::failure(format!("an append task failed: {e}")))??;
        }
        let (lat, fell_behind) = consumer
            .await
            .map_err(|e| CliError::failure(format!("the subscriber failed: {e}")))??;
        Ok::<_, CliError>((sent, produce_secs, lat, fell_behind))
    });
    let closed = engine.close();
    let (sent, elapsed, mut lat, fell_behind) = outcome?;
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
        "appends paced at {RATE}/s (1 event each, {STREAMS} streams, ExpectedRevision::Any); events_per_sec is the achieved append rate; {received} of {sent} delivered"
    ));
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

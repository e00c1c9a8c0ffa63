//! `persistent-1`, `persistent-4`: events delivered through a persistent
//! subscription (consumer group, round robin) and acked, by one and by four
//! in-process consumers, against a plain catch-up subscription reading the
//! same events in the same run (the ratio). Checkpoints are written with
//! durability `Always`, as a server would.
//!
//! Every consumer, and the baseline's reader, spends [`HANDLING`] of CPU on
//! each event before acking it, as a consumer that does something with its
//! events does: a consumer group exists to spread that work over consumers,
//! and it is what `persistent-4` against `persistent-1` measures. (With
//! consumers that do nothing, the group's own dispatch is the limit, and on
//! two cores four consumers cannot be faster than one.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_core::{
    Bytes, ContentType, EventData, EventStore, ExpectedRevision, StreamName, Subscribe,
    SubscriptionMessage, SubscriptionStart,
};
use factum_engine::Durability;
use factum_persistent::{
    ConnectOptions, GroupSettings, GroupSource, PersistentError, PersistentSubscriptions, StartFrom,
};

use crate::error::BenchError;
use crate::util::{open_engine, rate};
use crate::{Ctx, Report, Workload};

/// Events per append while loading.
const BATCH: u64 = 1_000;
/// Unacked events each consumer may hold.
const WINDOW: usize = 200;
/// CPU a consumer spends on each event.
const HANDLING: Duration = Duration::from_micros(10);

/// Handles one event: [`HANDLING`] of CPU (a spin on the clock).
fn handle() {
    let until = Instant::now() + HANDLING;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

fn persistent_error(e: PersistentError) -> BenchError {
    match e {
        PersistentError::Store(e) => e.into(),
        other => BenchError::failure(other.to_string()),
    }
}

/// `persistent-1`.
pub fn one(ctx: &mut Ctx) -> Result<Report, BenchError> {
    run(ctx, Workload::Persistent1, 1)
}

/// `persistent-4`.
pub fn four(ctx: &mut Ctx) -> Result<Report, BenchError> {
    run(ctx, Workload::Persistent4, 4)
}

fn run(ctx: &mut Ctx, workload: Workload, consumers: usize) -> Result<Report, BenchError> {
    let dir = ctx.dir(workload.name())?;
    let total = ctx.cap(if ctx.quick { 20_000 } else { 200_000 });
    let engine = Arc::new(open_engine(&dir, Durability::Always)?);
    let stream = StreamName::new("jobs-1")?;
    let (elapsed, baseline, redelivered) = ctx.rt.block_on(async {
        let payload = Bytes::from(format!("{{\"p\":\"{}\"}}", "x".repeat(248)));
        let mut left = total;
        while left > 0 {
            let n = left.min(BATCH);
            let events = (0..n)
                .map(|_| EventData::new("Job", ContentType::Json, payload.clone()))
                .collect();
            engine
                .append(stream.clone(), ExpectedRevision::Any, events)
                .await?;
            left -= n;
        }

        // Baseline: a catch-up subscription over the same events.
        let started = Instant::now();
        let mut sub = engine
            .subscribe(Subscribe::stream(
                stream.clone(),
                SubscriptionStart::Beginning,
            ))
            .await?;
        let mut seen = 0;
        while seen < total {
            match sub.next().await {
                Some(Ok(SubscriptionMessage::Event(_))) => {
                    handle();
                    seen += 1
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(BenchError::failure("the subscription ended early")),
            }
        }
        let baseline = rate(total, started.elapsed());
        drop(sub);

        let subs = PersistentSubscriptions::start(engine.clone())
            .await
            .map_err(persistent_error)?;
        let settings = GroupSettings {
            start_from: StartFrom::Start,
            read_batch_size: 500,
            live_buffer_size: 2_000,
            ..GroupSettings::default()
        };
        subs.create(GroupSource::stream(&stream), "bench", settings)
            .await
            .map_err(persistent_error)?;
        let acked = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..consumers {
            let mut consumer = subs
                .connect(
                    stream.as_str(),
                    "bench",
                    ConnectOptions {
                        buffer_size: WINDOW,
                        name: format!("consumer-{i}"),
                        ..ConnectOptions::default()
                    },
                )
                .await
                .map_err(persistent_error)?;
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                while acked.load(Ordering::Relaxed) < total {
                    match tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
                        Ok(Some(Ok(d))) => {
                            handle();
                            consumer.ack([d.id()]).await;
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Some(Err(e))) => return Err(persistent_error(e)),
                        Ok(None) => break,
                        Err(_) => continue,
                    }
                }
                Ok(())
            }));
        }
        for t in tasks {
            t.await
                .map_err(|e| BenchError::failure(format!("a consumer failed: {e}")))??;
        }
        // Delivered and acked: wait for the group to have taken every ack.
        let info = loop {
            let info = subs
                .info(stream.as_str(), "bench")
                .await
                .map_err(persistent_error)?;
            if info.in_flight == 0 {
                break info;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let elapsed = started.elapsed();
        subs.shutdown().await;
        Ok::<_, BenchError>((elapsed, baseline, info.redelivered))
    })?;
    engine.close()?;
    let events_per_sec = rate(total, elapsed);
    let mut r = ctx.report(workload);
    r.events = total;
    r.seconds = elapsed.as_secs_f64();
    r.events_per_sec = Some(events_per_sec);
    r.latency_of = "-";
    r.baseline_events_per_sec = Some(baseline);
    r.ratio = Some(events_per_sec / baseline);
    r.target = "none set (figure for the closing note)".into();
    r.notes = vec![
        format!(
            "{consumers} in-process consumer(s), round robin, window {WINDOW} each, one ack per event, {} µs of CPU handling each event",
            HANDLING.as_micros()
        ),
        "baseline: a catch-up subscription reading the same stream in the same run, handling each event the same way".into(),
        format!("redelivered: {redelivered}"),
    ];
    Ok(r)
}

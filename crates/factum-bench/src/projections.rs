//! Server-side JavaScript projections (`factum_projections`, ADR 35):
//! `js-projection-count` (a counting projection over `fromAll`) and
//! `js-projection-partitioned` (`fromCategory(..).foreachStream()` summing
//! each stream's deposits: one state per stream, body parsed per event).
//! Each runs as a one-time projection through the whole runner (the `$all`
//! subscription, the QuickJS sandbox, the final commit), from the first
//! event to the head; the baseline is a native Rust projection doing the
//! same fold over the same subscription of the same store in the same run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_core::{
    ContentType, EventData, EventStore, ExpectedRevision, StreamName, Subscribe,
    SubscriptionMessage, SubscriptionStart,
};
use factum_engine::{Durability, Engine};
use factum_projections::{CheckpointPolicy, Create, Limits, Mode, Projections};

use crate::error::BenchError;
use crate::util::{open_engine, rate};
use crate::{Ctx, Report, Workload};

/// Streams the events are spread over (1,000 consecutive events each).
const STREAMS: u64 = 1_000;

const COUNT: &str = r#"fromAll().when({
    $init: function () { return { count: 0 } },
    $any: function (s, e) { s.count += 1; return s }
})"#;

const PARTITIONED: &str = r#"fromCategory("acct").foreachStream().when({
    $init: function () { return { balance: 0, n: 0 } },
    Deposited: function (s, e) { s.balance += e.body.amount; s.n += 1; return s }
})"#;

fn failure(e: impl std::fmt::Display) -> BenchError {
    BenchError::failure(e.to_string())
}

fn load(ctx: &Ctx, engine: &Engine, total: u64) -> Result<(), BenchError> {
    ctx.rt.block_on(async {
        let mut written = 0u64;
        while written < total {
            let n = 1000.min(total - written);
            let stream = StreamName::new(format!("acct-{}", (written / 1000) % STREAMS))?;
            let batch = (0..n)
                .map(|i| {
                    let data = format!("{{\"amount\":{}}}", (written + i) % 100);
                    EventData::new("Deposited", ContentType::Json, data)
                })
                .collect();
            engine.append(stream, ExpectedRevision::Any, batch).await?;
            written += n;
        }
        Ok::<_, BenchError>(())
    })
}

/// The native fold over the same subscription: (elapsed, events, check).
fn native(
    ctx: &Ctx,
    engine: &Arc<Engine>,
    partitioned: bool,
) -> Result<(Duration, u64, u64), BenchError> {
    ctx.rt.block_on(async {
        let started = Instant::now();
        let mut sub = engine
            .subscribe(Subscribe::all(SubscriptionStart::Beginning, None))
            .await?;
        let mut count = 0u64;
        let mut balances: HashMap<String, (i64, u64)> = HashMap::new();
        while let Some(m) = sub.next().await {
            match m? {
                SubscriptionMessage::Event(e) => {
                    if e.stream.as_str().starts_with('$') {
                        continue;
                    }
                    if partitioned {
                        if e.stream.category() != Some("acct") || e.event_type != "Deposited" {
                            continue;
                        }
                        let body: serde_json::Value =
                            serde_json::from_slice(&e.data).map_err(failure)?;
                        let amount = body["amount"].as_i64().unwrap_or(0);
                        let s = balances.entry(e.stream.as_str().to_owned()).or_default();
                        s.0 += amount;
                        s.1 += 1;
                    }
                    count += 1;
                }
                SubscriptionMessage::CaughtUp => break,
                _ => {}
            }
        }
        let check = if partitioned {
            balances.len() as u64
        } else {
            count
        };
        Ok((started.elapsed(), count, check))
    })
}

fn js(
    ctx: &Ctx,
    engine: &Arc<Engine>,
    name: &str,
    query: &str,
) -> Result<(Duration, u64), BenchError> {
    ctx.rt.block_on(async {
        let projections = Projections::new(
            engine.clone(),
            Limits::default(),
            CheckpointPolicy::default(),
        );
        let started = Instant::now();
        projections
            .create(Create {
                name: name.into(),
                query: query.into(),
                mode: Mode::OneTime,
                emit_enabled: false,
                track_emitted_streams: false,
                enabled: true,
                checkpoints_enabled: true,
                run_as: Default::default(),
                engine_version: 1,
            })
            .await
            .map_err(failure)?;
        let status = projections.wait(name).await.map_err(failure)?;
        let elapsed = started.elapsed();
        if status.as_str() != "Completed" {
            return Err(failure(format!("the projection ended {status:?}")));
        }
        let stats = projections.statistics(Some(name)).await.map_err(failure)?;
        Ok((elapsed, stats[0].events_processed_after_restart))
    })
}

fn workload(ctx: &mut Ctx, workload: Workload, partitioned: bool) -> Result<Report, BenchError> {
    let dir = ctx.dir(workload.name())?;
    let engine = Arc::new(open_engine(&dir.join("store"), Durability::None)?);
    let total = ctx.cap(if ctx.quick { 200_000 } else { 1_000_000 });
    load(ctx, &engine, total)?;
    // Native first and JavaScript second, then native again: the faster
    // native figure is the baseline (a warm cache for both).
    let (n1, native_events, check) = native(ctx, &engine, partitioned)?;
    let (query, name) = if partitioned {
        (PARTITIONED, "bench-partitioned")
    } else {
        (COUNT, "bench-count")
    };
    let (elapsed, handled) = js(ctx, &engine, name, query)?;
    let (n2, _, _) = native(ctx, &engine, partitioned)?;
    engine.close()?;
    if handled != native_events {
        return Err(failure(format!(
            "the projection handled {handled} events, the native fold {native_events}"
        )));
    }
    let per_sec = rate(handled, elapsed);
    let baseline = rate(native_events, n1.min(n2));
    let target = 100_000.0;
    Ok(Report {
        events: handled,
        seconds: elapsed.as_secs_f64(),
        events_per_sec: Some(per_sec),
        latency_of: "-",
        baseline_events_per_sec: Some(baseline),
        ratio: Some(per_sec / baseline),
        target: "counting >= 100k events/s and >= 0.3 of native".into(),
        target_met: (!partitioned).then_some(per_sec >= target && per_sec / baseline >= 0.3),
        durability: "none (load); one commit at the end".into(),
        notes: vec![
            format!("{total} events over {STREAMS} streams (acct-N), 1,000 consecutive per stream"),
            format!(
                "one-time projection through the runner (subscription, QuickJS sandbox, commit); {}",
                if partitioned {
                    format!("{check} partitions, body parsed per event")
                } else {
                    "state only, body not parsed".into()
                }
            ),
            "baseline = the same fold in Rust over the same $all subscription (serde_json per event when partitioned)".into(),
        ],
        ..ctx.report(workload)
    })
}

/// `js-projection-count`.
pub fn count(ctx: &mut Ctx) -> Result<Report, BenchError> {
    workload(ctx, Workload::JsProjectionCount, false)
}

/// `js-projection-partitioned`.
pub fn partitioned(ctx: &mut Ctx) -> Result<Report, BenchError> {
    workload(ctx, Workload::JsProjectionPartitioned, true)
}

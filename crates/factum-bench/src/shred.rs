//! Crypto-shredding (issue 19, ADR 36): `shred-append` and
//! `shred-read-all`. The same events — JSON of about 256 B with an email
//! and a name — are written through the `Shredding` wrapper over the
//! engine twice in the same run: once naming a data subject with those
//! two fields personal (encrypted, one key per subject, 1,000 subjects),
//! once with a metadata object of the same size naming none (the
//! wrapper's pass-through path: one byte search). The ratio is personal ÷
//! plain. Keys are created before the measured window (a new subject's key
//! costs one fdatasync of the key file, once).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_core::{ContentType, EventData, EventStore, ExpectedRevision, StreamName};
use factum_crypto::{FileKeyStore, SecretKey, Shredding};
use factum_engine::{Durability, Engine};

use crate::error::BenchError;
use crate::util::{open_engine, rate, read_all_pages, Latencies};
use crate::{Ctx, Report, Workload};

/// Events per append.
const BATCH: u64 = 1000;
/// Data subjects the events are about (fewer for tiny runs: each new
/// subject's key is one fdatasync of the key file).
const SUBJECTS: u64 = 1000;

fn subjects(total: u64) -> u64 {
    (total / 10).clamp(1, SUBJECTS)
}
/// Events per `read_all` page.
const PAGE: u64 = 10_000;

fn event(i: u64, subjects: u64, personal: bool) -> EventData {
    let subject = i % subjects;
    let data = serde_json::json!({
        "email": format!("person-{subject}@example.org"),
        "name": format!("Person Number {subject}"),
        "plan": "gold",
        "note": "x".repeat(150),
    });
    let metadata = if personal {
        serde_json::json!({"$subject": format!("customer-{subject}"), "$personalFields": ["email", "name"]})
    } else {
        // The same size, naming no subject.
        serde_json::json!({"customerId": format!("customer-{subject}"), "personalNote": ["email", "name"]})
    };
    EventData::new(
        "Registered",
        ContentType::Json,
        serde_json::to_vec(&data).expect("JSON"),
    )
    .with_metadata(serde_json::to_vec(&metadata).expect("JSON"))
}

type Store = Shredding<Engine>;

fn open(dir: &Path, durability: Durability) -> Result<(Arc<Engine>, Store), BenchError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| BenchError::failure(format!("cannot create {}: {e}", dir.display())))?;
    let engine = Arc::new(open_engine(dir, durability)?);
    let keys = FileKeyStore::open(dir, SecretKey::from_bytes([7; 32]))
        .map_err(|e| BenchError::failure(e.to_string()))?;
    let store = Shredding::new(engine.clone(), Arc::new(keys));
    Ok((engine, store))
}

/// Appends `total` events in batches; the time of the appends only.
async fn append_all(
    store: &Store,
    total: u64,
    personal: bool,
) -> Result<(Duration, Latencies), BenchError> {
    // Every subject's key exists before the clock starts.
    let subjects = subjects(total);
    if personal {
        let warm: Vec<EventData> = (0..subjects).map(|i| event(i, subjects, true)).collect();
        store
            .append(StreamName::new("warm-up")?, ExpectedRevision::Any, warm)
            .await?;
    }
    let mut lat = Latencies::with_capacity((total / BATCH) as usize + 1);
    let mut elapsed = Duration::ZERO;
    let mut written = 0u64;
    let mut batch_no = 0u64;
    while written < total {
        let n = BATCH.min(total - written);
        let events: Vec<EventData> = (written..written + n)
            .map(|i| event(i, subjects, personal))
            .collect();
        let stream = StreamName::new(format!("customers-{}", batch_no % 100))?;
        let t = Instant::now();
        store.append(stream, ExpectedRevision::Any, events).await?;
        let d = t.elapsed();
        elapsed += d;
        lat.push(d);
        written += n;
        batch_no += 1;
    }
    Ok((elapsed, lat))
}

fn total(ctx: &Ctx) -> u64 {
    ctx.cap(if ctx.quick { 50_000 } else { 300_000 })
}

/// `shred-append`: appends of 1,000 events naming a subject with two
/// personal fields, against the same events naming none.
pub fn append(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let total = total(ctx);
    let root = ctx.dir(Workload::ShredAppend.name())?;
    let run = |personal: bool| -> Result<(Duration, Latencies), BenchError> {
        let dir = root.join(if personal { "personal" } else { "plain" });
        let (engine, store) = open(&dir, Durability::Always)?;
        let measured = ctx.rt.block_on(append_all(&store, total, personal))?;
        drop(store);
        engine.close()?;
        Ok(measured)
    };
    // Plain first, personal second, then plain again: the baseline is the
    // better of the two plain runs (the disk warms up).
    let (plain_a, _) = run(false)?;
    let (personal, mut lat) = run(true)?;
    let (plain_b, _) = run(false)?;
    let plain = plain_a.min(plain_b);
    let eps = rate(total, personal);
    let base = rate(total, plain);
    let (p50, p99) = lat.p50_p99_us();
    let mut r = ctx.report(Workload::ShredAppend);
    r.events = total;
    r.seconds = personal.as_secs_f64();
    r.events_per_sec = Some(eps);
    r.p50_us = p50;
    r.p99_us = p99;
    r.latency_of = "one append of 1,000 events";
    r.baseline_events_per_sec = Some(base);
    r.ratio = Some(eps / base);
    r.target = "none set: the cost of encrypting two fields per event, measured".into();
    r.notes.push(format!(
        "baseline: the same events through the same wrapper naming no subject (metadata of the same size), the better of a run before and one after; {} subjects, keys created before the window", subjects(total)
    ));
    Ok(r)
}

/// `shred-read-all`: `$all` read back decrypted, against the same events
/// naming no subject.
pub fn read(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let total = total(ctx);
    let root = ctx.dir(Workload::ShredReadAll.name())?;
    let run = |personal: bool| -> Result<(u64, Duration, Latencies), BenchError> {
        let dir = root.join(if personal { "personal" } else { "plain" });
        let (engine, store) = open(&dir, Durability::None)?;
        ctx.rt.block_on(append_all(&store, total, personal))?;
        // Twice: the second pass is the steady state that is reported.
        ctx.rt.block_on(read_all_pages(&store, PAGE))?;
        let measured = ctx.rt.block_on(read_all_pages(&store, PAGE))?;
        drop(store);
        engine.close()?;
        Ok(measured)
    };
    let (plain_n, plain, _) = run(false)?;
    let (n, personal, mut lat) = run(true)?;
    let expected_personal = total + subjects(total);
    if plain_n != total || n != expected_personal {
        return Err(BenchError::failure(format!(
            "read {plain_n} plain and {n} personal events, expected {total} and {expected_personal}"
        )));
    }
    let eps = rate(n, personal);
    let base = rate(plain_n, plain);
    let (p50, p99) = lat.p50_p99_us();
    let mut r = ctx.report(Workload::ShredReadAll);
    r.events = n;
    r.seconds = personal.as_secs_f64();
    r.events_per_sec = Some(eps);
    r.p50_us = p50;
    r.p99_us = p99;
    r.latency_of = "one read_all page of 10,000 events";
    r.baseline_events_per_sec = Some(base);
    r.ratio = Some(eps / base);
    r.target = "none set: the cost of decrypting two fields per event, measured".into();
    r.durability = "none (load only; the read is unaffected)".into();
    r.notes.push(
        "baseline: the same events naming no subject, read through the same wrapper (the pass-through path); page cache warm, second pass reported".into(),
    );
    Ok(r)
}

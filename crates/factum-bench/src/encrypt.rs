//! Encryption at rest (issue 19, ADR 45): `encrypted-append-seq`,
//! `encrypted-append-batch`, `encrypted-read-all`. Each does the work of
//! its plain workload (`append-seq`, `append-batch`, `read-all`: the same
//! events, appends and pages, the same engine settings) on two stores in
//! the same run, one of them encrypted at rest under a random master key,
//! and reports the encrypted store's events/s, the plain store's as the
//! baseline, and the ratio encrypted ÷ plain.
//!
//! The two stores take turns, in the order plain-encrypted, then
//! encrypted-plain, and so on (ABBA), so a noisy machine or a disk warming
//! up slows both alike:
//! - appends: [`ROUNDS`] slices on each store, durability `Always`;
//!   events/s over all of a store's slices. The spread of the plain
//!   store's slices (half their range over its midpoint) is the noise
//!   `encrypted-append-seq` is judged against.
//! - `$all`: both stores loaded alike (durability `None`), reopened, one
//!   unmeasured pass over each, then [`PASSES`] measured passes over each;
//!   the medians are compared.
//!
//! After the measurement the encrypted store must refuse to open without
//! its key: the figure is of an encrypted store, not of a setting ignored.

use std::path::{Path, PathBuf};

use factum_core::StreamName;
use factum_crypto::SecretKey;
use factum_engine::{Durability, Engine, MasterKey};

use crate::append::{share, Appends, Tally, BATCH, EVENT_BYTES};
use crate::error::BenchError;
use crate::read::{load_all_store, read_all_total, PAGE};
use crate::util::{median, open_engine_with, payload, rate, read_all_pages, Latencies};
use crate::{Ctx, Report, Workload};

/// Slices of appends on each store.
const ROUNDS: u64 = 6;
/// Measured `$all` passes over each store.
const PASSES: u64 = 5;
/// `encrypted-append-seq`'s noise floor: a difference below this is
/// called unchanged even when the plain slices agree more closely.
const SEQ_NOISE_FLOOR: f64 = 0.05;
/// `encrypted-append-batch`'s and `encrypted-read-all`'s target (issue 19).
const TARGET_RATIO: f64 = 0.85;

/// A fresh master key for one workload.
fn master_key() -> Result<MasterKey, BenchError> {
    let key = SecretKey::random()
        .map_err(|e| BenchError::failure(format!("cannot make a master key: {e}")))?;
    Ok(MasterKey::new(key))
}

/// The workload's two store directories, created: plain and encrypted.
fn store_dirs(ctx: &Ctx, workload: Workload) -> Result<(PathBuf, PathBuf), BenchError> {
    let root = ctx.dir(workload.name())?;
    let dirs = (root.join("plain"), root.join("encrypted"));
    std::fs::create_dir_all(&dirs.0)?;
    std::fs::create_dir_all(&dirs.1)?;
    Ok(dirs)
}

/// Bytes of the files in a store's directory (segments with their
/// preallocated zeros, the index).
fn store_bytes(dir: &Path) -> Result<u64, BenchError> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Fails unless the store in `dir` refuses to open without a master key.
fn check_encrypted(dir: &Path) -> Result<(), BenchError> {
    match open_engine_with(dir, Durability::None, None) {
        Err(_) => Ok(()),
        Ok(engine) => {
            engine.close()?;
            Err(BenchError::failure(format!(
                "{} opened without its master key: it is not encrypted",
                dir.display()
            )))
        }
    }
}

/// "12.3 MB" for notes.
fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// `encrypted-append-seq`: `append-seq`'s appends (one 256-B event each,
/// one writer) on both stores.
pub fn append_seq(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let w = appends(ctx, Workload::EncryptedAppendSeq, 1)?;
    // The plain slices' half-range relative to its midpoint (below 100 %):
    // how much the same work varies from slice to slice on this machine
    // right now.
    let noise = match (
        w.plain.slice_rates.iter().copied().reduce(f64::min),
        w.plain.slice_rates.iter().copied().reduce(f64::max),
    ) {
        (Some(lo), Some(hi)) if hi > 0.0 => (hi - lo) / (hi + lo),
        _ => 0.0,
    };
    let band = noise.max(SEQ_NOISE_FLOOR);
    let mut r = w.report(ctx, Workload::EncryptedAppendSeq)?;
    r.latency_of = "one append (1 event) until acknowledged, encrypted store";
    r.target = format!(
        "unchanged within noise: ratio ≥ 1 − the plain slices' spread (±{:.1} %, at least ±{:.0} %)",
        noise * 100.0,
        SEQ_NOISE_FLOOR * 100.0
    );
    r.target_met = r.ratio.map(|q| q >= 1.0 - band);
    Ok(r)
}

/// `encrypted-append-batch`: `append-batch`'s appends (1,000 events of
/// 256 B each, one writer) on both stores.
pub fn append_batch(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let per_append = BATCH.min(ctx.cap(u64::MAX));
    let w = appends(ctx, Workload::EncryptedAppendBatch, per_append)?;
    let mut r = w.report(ctx, Workload::EncryptedAppendBatch)?;
    r.latency_of = "one append of 1,000 events until acknowledged, encrypted store";
    r.target = format!("ratio ≥ {TARGET_RATIO} of the same appends to an unencrypted store");
    r.target_met = r.ratio.map(|q| q >= TARGET_RATIO);
    Ok(r)
}

/// What the two stores' append slices achieved.
struct AppendRun {
    plain: Tally,
    encrypted: Tally,
    /// Encrypted ÷ plain events/s of each round's pair of slices.
    round_ratios: Vec<f64>,
    per_append: u64,
    plain_bytes: u64,
    encrypted_bytes: u64,
}

/// Opens both stores (durability `Always`), appends one unmeasured append
/// to each, then alternates [`ROUNDS`] slices on each; closes them.
fn appends(ctx: &Ctx, workload: Workload, per_append: u64) -> Result<AppendRun, BenchError> {
    let (plain_dir, encrypted_dir) = store_dirs(ctx, workload)?;
    let slice = ctx.secs(0.5, 1.25);
    let max = ctx.cap(u64::MAX);
    let plain = open_engine_with(&plain_dir, Durability::Always, None)?;
    let encrypted = open_engine_with(&encrypted_dir, Durability::Always, Some(master_key()?))?;
    let appends = Appends {
        stream: StreamName::new("encrypted-bench-1")?,
        data: payload(EVENT_BYTES),
        per_append,
    };
    // The first append to a fresh store (its first page, the writer's
    // first group) is not what the figure is about.
    let mut warm_up = Tally::default();
    appends.slice(ctx, &plain, per_append, slice, &mut warm_up)?;
    let mut warm_up = Tally::default();
    appends.slice(ctx, &encrypted, per_append, slice, &mut warm_up)?;
    let (mut p, mut e) = (Tally::default(), Tally::default());
    let mut round_ratios = Vec::new();
    for round in 0..ROUNDS {
        let quota = share(max, round, ROUNDS);
        let (p_before, e_before) = (p.slice_rates.len(), e.slice_rates.len());
        if round % 2 == 0 {
            appends.slice(ctx, &plain, quota, slice, &mut p)?;
            appends.slice(ctx, &encrypted, quota, slice, &mut e)?;
        } else {
            appends.slice(ctx, &encrypted, quota, slice, &mut e)?;
            appends.slice(ctx, &plain, quota, slice, &mut p)?;
        }
        if let (Some(pr), Some(er)) = (p.slice_rates.get(p_before), e.slice_rates.get(e_before)) {
            round_ratios.push(er / pr);
        }
    }
    plain.close()?;
    encrypted.close()?;
    drop((plain, encrypted));
    check_encrypted(&encrypted_dir)?;
    Ok(AppendRun {
        plain: p,
        encrypted: e,
        round_ratios,
        per_append,
        plain_bytes: store_bytes(&plain_dir)?,
        encrypted_bytes: store_bytes(&encrypted_dir)?,
    })
}

impl AppendRun {
    /// The report's figures and notes; the caller adds the target.
    fn report(mut self, ctx: &Ctx, workload: Workload) -> Result<Report, BenchError> {
        let eps = rate(self.encrypted.events, self.encrypted.elapsed);
        let base = rate(self.plain.events, self.plain.elapsed);
        let (p50, p99) = self.encrypted.lat.p50_p99_us();
        let (plain50, plain99) = self.plain.lat.p50_p99_us();
        let mut r = ctx.report(workload);
        r.events = self.encrypted.events;
        r.seconds = self.encrypted.elapsed.as_secs_f64();
        r.events_per_sec = Some(eps);
        r.p50_us = p50;
        r.p99_us = p99;
        r.baseline_events_per_sec = Some(base);
        r.ratio = Some(eps / base);
        r.notes.push(format!(
            "baseline: the same appends ({} event(s) of {EVENT_BYTES} B each) to an unencrypted store in the same run: {} events in {:.2} s, p50 {:.0} µs, p99 {:.0} µs; the stores alternate in {ROUNDS} slices each (ABBA), after one unmeasured append each",
            self.per_append,
            self.plain.events,
            self.plain.elapsed.as_secs_f64(),
            plain50.unwrap_or(0.0),
            plain99.unwrap_or(0.0),
        ));
        r.notes.push(format!(
            "per-round ratios {}; plain slices {}",
            range(&self.round_ratios, |x| format!("{x:.2}")),
            range(&self.plain.slice_rates, |x| format!("{x:.0}/s")),
        ));
        r.notes.push(format!(
            "store directories after the run: plain {}, encrypted {} (files' lengths, preallocated zeros included); the encrypted one refuses to open without its key",
            megabytes(self.plain_bytes),
            megabytes(self.encrypted_bytes),
        ));
        Ok(r)
    }
}

/// "lo–hi" of some figures, or "-" without any.
fn range(v: &[f64], show: impl Fn(f64) -> String) -> String {
    let lo = v.iter().copied().reduce(f64::min);
    let hi = v.iter().copied().reduce(f64::max);
    match (lo, hi) {
        (Some(lo), Some(hi)) => format!("{}–{}", show(lo), show(hi)),
        _ => "-".into(),
    }
}

/// One pass over `$all`: its events/s and page latencies, checked to
/// hold every event.
fn read_pass(ctx: &Ctx, engine: &Engine, expect: u64) -> Result<(f64, Latencies), BenchError> {
    let (n, elapsed, lat) = ctx.rt.block_on(read_all_pages(engine, PAGE))?;
    if n != expect {
        return Err(BenchError::failure(format!(
            "read {n} events from $all, expected {expect}"
        )));
    }
    Ok((rate(n, elapsed), lat))
}

/// `encrypted-read-all`: `read-all`'s store and pages on both stores.
pub fn read_all(ctx: &mut Ctx) -> Result<Report, BenchError> {
    let total = read_all_total(ctx);
    let (plain_dir, encrypted_dir) = store_dirs(ctx, Workload::EncryptedReadAll)?;
    let key = master_key()?;
    let plain_load = load_all_store(ctx, &plain_dir, total, None)?;
    let encrypted_load = load_all_store(ctx, &encrypted_dir, total, Some(key.clone()))?;
    let plain = open_engine_with(&plain_dir, Durability::Always, None)?;
    let encrypted = open_engine_with(&encrypted_dir, Durability::Always, Some(key))?;
    // Unmeasured: the first pass after reopening warms the reader up (see
    // `read-all`).
    read_pass(ctx, &plain, total)?;
    read_pass(ctx, &encrypted, total)?;
    let (mut p, mut e) = (Vec::new(), Vec::new());
    let (mut plain_lat, mut lat) = (Latencies::default(), Latencies::default());
    for pass in 0..PASSES {
        let mut measure = |encrypted_side: bool| -> Result<(), BenchError> {
            if encrypted_side {
                let (eps, l) = read_pass(ctx, &encrypted, total)?;
                e.push(eps);
                lat.extend(l);
            } else {
                let (eps, l) = read_pass(ctx, &plain, total)?;
                p.push(eps);
                plain_lat.extend(l);
            }
            Ok(())
        };
        let encrypted_first = pass % 2 == 1;
        measure(encrypted_first)?;
        measure(!encrypted_first)?;
    }
    plain.close()?;
    encrypted.close()?;
    drop((plain, encrypted));
    check_encrypted(&encrypted_dir)?;
    let pass_ratios: Vec<f64> = e.iter().zip(&p).map(|(a, b)| a / b).collect();
    let plain_range = range(&p, |x| format!("{:.2}M", x / 1e6));
    let encrypted_range = range(&e, |x| format!("{:.2}M", x / 1e6));
    let (base, eps) = (median(p), median(e));
    let (p50, p99) = lat.p50_p99_us();
    let (plain50, plain99) = plain_lat.p50_p99_us();
    let ratio = eps / base;
    let mut r = ctx.report(Workload::EncryptedReadAll);
    r.events = total;
    r.seconds = total as f64 / eps;
    r.events_per_sec = Some(eps);
    r.baseline_events_per_sec = Some(base);
    r.ratio = Some(ratio);
    r.p50_us = p50;
    r.p99_us = p99;
    r.latency_of = "one read_all page of 10,000 events, encrypted store";
    r.target = format!("ratio ≥ {TARGET_RATIO} of the same read from an unencrypted store");
    r.target_met = Some(ratio >= TARGET_RATIO);
    r.durability = "none (load only; the read is unaffected)".into();
    r.notes = vec![
        format!(
            "both stores: {total} events of {EVENT_BYTES} B in appends of 1,000 over 100 streams (as read-all), loaded with durability None (plain {plain_load:.2} s, encrypted {encrypted_load:.2} s), reopened; one unmeasured pass each, then medians of {PASSES} passes over each, alternating (ABBA); page cache warm"
        ),
        format!(
            "events/s per pass: plain {plain_range}, encrypted {encrypted_range}; per-pass ratios {}; plain page p50 {:.0} µs, p99 {:.0} µs",
            range(&pass_ratios, |x| format!("{x:.2}")),
            plain50.unwrap_or(0.0),
            plain99.unwrap_or(0.0),
        ),
        format!(
            "store directories: plain {}, encrypted {}; the encrypted one refuses to open without its key",
            megabytes(store_bytes(&plain_dir)?),
            megabytes(store_bytes(&encrypted_dir)?),
        ),
    ];
    Ok(r)
}

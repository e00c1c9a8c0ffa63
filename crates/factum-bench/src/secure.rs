//! Secure against insecure (issue 15): the same gRPC workload through
//! `factum-client` on a `factum serve --insecure` and on a `factum serve
//! --dev` (TLS with the development CA, users, `admin:changeit` sent as
//! Basic credentials on every call, so every request passes the
//! authentication gate and the stream ACLs), one after the other in the
//! same run, each on a fresh server process. The ratio is secure /
//! insecure (target ≥ 0.9); beside events/s each side's server CPU time per
//! event is reported, the steadier figure on a shared machine.
//!
//! `secure-append-concurrent`: 256 writers over 8 connections, one event
//! per append (as `grpc-append-concurrent`), a fresh store per side; the
//! appends of a connection share one BatchAppend call, so the gate runs
//! once per connection and the ACL check once per append.
//! `secure-kurrentdb-append-concurrent-256`: the same 256 writers through
//! KurrentDB's official client, one `Append` RPC per append, so every
//! append is a request through the gate (credentials checked against the
//! cache) as well as through the ACLs.
//! `secure-read-all`: `$all` streamed from one loaded store, served
//! insecure first, then secure.

use crate::error::BenchError;
use crate::grpc::{self, Ours, Side, Via};
use crate::official;
use crate::server::{Placement, Security, ServerProcess};
use crate::{Ctx, Report, Workload};

/// Writers of `secure-append-concurrent`.
const WRITERS: usize = 256;
/// Connections they share.
const CONNECTIONS: usize = 8;

const TARGET: f64 = 0.9;

fn how(security: &str) -> String {
    format!(
        "gRPC through factum-client: factum serve --insecure, then factum serve --dev ({security}), each in its own process on 127.0.0.1 (embedded engine)"
    )
}

/// The report of `secure` against `insecure`.
fn report(
    ctx: &Ctx,
    w: Workload,
    secure: Side,
    insecure: Side,
    latency_of: &'static str,
    how: String,
    placement: &Placement,
) -> Report {
    let per_event = |s: &Side| {
        s.server_cpu
            .map(|c| c.as_secs_f64() * 1e6 / s.events.max(1) as f64)
    };
    let (secure_cpu, insecure_cpu) = (per_event(&secure), per_event(&insecure));
    let mut r = grpc::compare_with(
        ctx,
        w,
        secure,
        insecure,
        "the same workload on factum serve --insecure, same run",
        latency_of,
        how,
        placement,
    );
    r.baseline_server_cpu_us_per_event = insecure_cpu;
    if let (Some(s), Some(i)) = (secure_cpu, insecure_cpu) {
        r.notes.push(format!(
            "server CPU per event: secure {s:.1} µs, insecure {i:.1} µs (insecure / secure = {:.2}, the throughput ratio a CPU-bound server would show)",
            i / s.max(f64::MIN_POSITIVE)
        ));
    }
    r.target = format!("secure ≥ {TARGET} of insecure (events/s)");
    r.target_met = r.ratio.map(|x| x >= TARGET);
    r
}

/// `secure-append-concurrent` (our client), `secure-kurrentdb-append-concurrent-256`.
pub fn append_concurrent(ctx: &mut Ctx, w: Workload, via: Via) -> Result<Report, BenchError> {
    let time = ctx.secs(1.5, 5.0);
    let max = ctx.cap(u64::MAX);
    let dir = ctx.dir(w.name())?;
    let placement = Placement::pin();
    let mut sides = Vec::new();
    for (name, security) in [("insecure", Security::Insecure), ("secure", Security::Dev)] {
        let server = ServerProcess::start_as(&dir.join(name), &placement, security, &[])?;
        let side = placement.runtime(&ctx.rt).block_on(async {
            let cpu = Some(&server.cpu);
            match via {
                Via::FactumClient => {
                    let mut clients = Vec::new();
                    for _ in 0..CONNECTIONS {
                        clients.push(Ours(grpc::connect(&server).await?));
                    }
                    grpc::appends(&clients, WRITERS, 1, time, max, cpu).await
                }
                Via::Kurrentdb => {
                    let client = official::connect(&server).await?;
                    grpc::appends(&[client], WRITERS, 1, time, max, cpu).await
                }
            }
        })?;
        server.stop()?;
        sides.push(side);
    }
    let secure = sides.pop().expect("two sides");
    let insecure = sides.pop().expect("two sides");
    Ok(report(
        ctx,
        w,
        secure,
        insecure,
        "one append (1 event) until acknowledged, under 256 concurrent writers",
        how(&match via {
            Via::FactumClient => format!(
                "TLS 1.3, Basic credentials on every call); {WRITERS} writers over {CONNECTIONS} factum-client connections, appends on one BatchAppend call per connection, a fresh store per side"
            ),
            Via::Kurrentdb => format!(
                "TLS 1.3, Basic credentials on every call); {WRITERS} writers on one KurrentDB official client (kurrentdb 1.2.0), one Append RPC per append, a fresh store per side"
            ),
        }),
        &placement,
    ))
}

/// `secure-read-all`.
pub fn read_all(ctx: &mut Ctx, w: Workload) -> Result<Report, BenchError> {
    let dir = ctx.dir(w.name())?;
    let total = ctx.cap(if ctx.quick { 200_000 } else { 1_000_000 });
    let placement = Placement::pin();
    let store = dir.join("store");
    grpc::load(ctx, &store, total)?;
    let mut sides = Vec::new();
    for security in [Security::Insecure, Security::Dev] {
        let server = ServerProcess::start_as(&store, &placement, security, &[])?;
        let side = placement
            .runtime(&ctx.rt)
            .block_on(grpc::read_all_remote(&server, total))?;
        server.stop()?;
        if side.events != total {
            return Err(BenchError::failure(format!(
                "read {} of {total} events over gRPC ({security:?})",
                side.events
            )));
        }
        sides.push(side);
    }
    let secure = sides.pop().expect("two sides");
    let insecure = sides.pop().expect("two sides");
    let mut r = report(
        ctx,
        w,
        secure,
        insecure,
        "none (throughput)",
        how("TLS 1.3, Basic credentials on the call; `$all` as one streamed read, the same loaded store"),
        &placement,
    );
    r.durability = "none (load only)".into();
    Ok(r)
}

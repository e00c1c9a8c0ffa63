//! The server-path workloads run a real `factum serve` process, through our
//! client and KurrentDB's official one: a tiny run reports events/s, the
//! engine baseline and ratio, and the server's CPU time per event; without
//! the `factum` binary they say where they looked.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// `factum` beside `factum-bench`, built when missing (a whole-workspace
/// build has it already).
fn factum_binary() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_factum-bench"));
    let dir = bench.parent().unwrap().to_path_buf();
    let factum = dir.join("factum");
    if !factum.exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", "factum-cli", "--bin", "factum"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "cannot build factum");
    }
    factum
}

/// Runs these workloads with `--events N --json` against a real server
/// and checks what every server-path report carries.
fn run_server_path(workloads: &[&str], events: u64) -> Vec<Value> {
    let factum = factum_binary();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_factum-bench"))
        .env("FACTUM_BIN", &factum)
        .args([
            "--quick",
            "--json",
            "--events",
            &events.to_string(),
            "--data",
        ])
        .arg(dir.path())
        .arg("--workload")
        .args(workloads)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = lines
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(names, workloads);
    for r in &lines {
        assert!(r["events"].as_u64().unwrap() > 0, "{r}");
        assert!(r["events_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["baseline_events_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["ratio"].as_f64().unwrap() > 0.0, "{r}");
        let cpu = r["server_cpu_us_per_event"].as_f64();
        assert!(cpu.is_some_and(|c| c >= 0.0), "{r}");
        let notes: Vec<&str> = r["notes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("pinned (taskset)") || n.starts_with("not pinned")),
            "{r}"
        );
        assert!(notes.iter().any(|n| n.starts_with("server CPU: ")), "{r}");
        if r["workload"]
            .as_str()
            .unwrap()
            .ends_with("subscribe-latency")
        {
            assert!(
                r["p99_us"].as_f64().unwrap() >= r["p50_us"].as_f64().unwrap(),
                "{r}"
            );
        }
    }
    // The bench removed its stores and the servers' logs.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    lines
}

#[test]
fn server_path_workloads_report_server_cpu_per_event() {
    let lines = run_server_path(
        &[
            "grpc-append-concurrent",
            "grpc-read-all",
            "grpc-subscribe-latency",
        ],
        300,
    );
    assert_eq!(lines[1]["events"], 300, "every event read back over gRPC");
}

#[test]
fn the_official_client_workloads_report_server_cpu_per_event() {
    let lines = run_server_path(
        &[
            "kurrentdb-append-concurrent-16",
            "kurrentdb-read-all",
            "kurrentdb-subscribe-latency",
        ],
        64,
    );
    assert_eq!(lines[0]["events"], 64, "16 writers, 4 appends each");
    assert_eq!(lines[1]["events"], 64, "every event read back by kurrentdb");
    assert_eq!(lines[2]["events"], 64, "every event delivered to kurrentdb");
}

#[test]
fn without_the_factum_binary_the_server_path_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-factum-here");
    let out = Command::new(env!("CARGO_BIN_EXE_factum-bench"))
        .env("FACTUM_BIN", &missing)
        .args(["--quick", "--workload", "grpc-append-seq", "--events", "10"])
        .arg("--data")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("FACTUM_BIN={} is not a file", missing.display())),
        "{err}"
    );
}

/// A tiny `soak` (8 s): every kind of load ran, every acknowledged append
/// is in `$all`, the oversized and malformed requests got their refusals
/// and nothing else failed; the server's RSS was sampled every second.
/// (Flatness needs a real run: `--workload soak --soak-seconds 600`.)
#[test]
fn a_tiny_soak_loses_nothing_and_reports_memory_and_errors() {
    let factum = factum_binary();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_factum-bench"))
        .env("FACTUM_BIN", &factum)
        .args(["--json", "--workload", "soak", "--soak-seconds", "8"])
        .arg("--data")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &r["soak"];
    let acknowledged = s["acknowledged"].as_u64().unwrap();
    assert!(acknowledged > 100, "appends were acknowledged: {r}");
    assert_eq!(s["present"].as_u64(), Some(acknowledged), "{r}");
    assert_eq!(s["missing"], 0, "{r}");
    assert_eq!(
        s["unexpected_errors"].as_object().unwrap().len(),
        0,
        "nothing failed that should not: {r}"
    );
    let expected = s["expected_errors"].as_object().unwrap();
    for kind in [
        "oversized gRPC append: LimitExceeded",
        "oversized HTTP append: 413",
        "malformed HTTP append: 400",
    ] {
        assert!(
            expected.get(kind).and_then(Value::as_u64) > Some(0),
            "{kind}: {r}"
        );
    }
    let ops = s["operations"].as_object().unwrap();
    for op in [
        "append",
        "read $all",
        "read stream",
        "catch-up subscription",
        "live event",
        "consumer group ack",
        "dropped read",
        "dropped subscription",
        "cut-off HTTP body",
        "garbage connection",
    ] {
        assert!(ops.get(op).and_then(Value::as_u64) > Some(0), "{op}: {r}");
    }
    let series = s["rss_mb_over_time"].as_array().unwrap();
    assert!(series.len() >= 6, "RSS sampled every second: {r}");
    assert!(series.iter().all(|p| p[1].as_f64().unwrap() > 1.0), "{r}");
    assert_eq!(s["rss_mb_by_quarter"].as_array().unwrap().len(), 4);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn the_secure_workloads_compare_tls_and_credentials_with_insecure() {
    // CI's one run of the secure path through the bench: `factum serve
    // --dev`, TLS with its CA, Basic credentials on every call.
    let lines = run_server_path(&["secure-append-concurrent", "secure-read-all"], 300);
    for r in &lines {
        assert!(
            r["baseline_server_cpu_us_per_event"].as_f64().is_some(),
            "{r}"
        );
        assert!(r["target"].as_str().unwrap().contains("of insecure"), "{r}");
        let notes = r["notes"].to_string();
        assert!(notes.contains("factum serve --insecure, same run"), "{r}");
        assert!(notes.contains("server CPU per event: secure"), "{r}");
    }
    assert_eq!(lines[1]["events"], 300, "every event read back over TLS");
}

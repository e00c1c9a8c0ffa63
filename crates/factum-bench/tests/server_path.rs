//! The server-path workloads run a real `factum serve` process: a tiny run
//! reports events/s, the engine baseline and ratio, and the server's CPU
//! time per event; without the `factum` binary they say where they looked.

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

#[test]
fn server_path_workloads_report_server_cpu_per_event() {
    let factum = factum_binary();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_factum-bench"))
        .env("FACTUM_BIN", &factum)
        .args([
            "--quick",
            "--workload",
            "grpc-append-concurrent",
            "grpc-read-all",
            "grpc-subscribe-latency",
            "--json",
            "--events",
            "300",
            "--data",
        ])
        .arg(dir.path())
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
    assert_eq!(
        names,
        [
            "grpc-append-concurrent",
            "grpc-read-all",
            "grpc-subscribe-latency"
        ]
    );
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
    }
    assert_eq!(lines[1]["events"], 300, "every event read back over gRPC");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
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

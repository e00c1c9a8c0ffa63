//! `factum-bench` run end to end on tiny inputs: the report's keys and the
//! engine's and consumer groups' workloads.

use std::process::{Command, Output};

use serde_json::Value;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_factum-bench"))
        .env_remove("FACTUM_LOG")
        .args(args)
        .output()
        .expect("the binary runs")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn bench_append_seq_json_has_the_required_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(run(&[
        "--quick",
        "--workload",
        "append-seq",
        "--json",
        "--events",
        "20",
        "--data",
        dir.path().to_str().unwrap(),
    ]));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    let r = &lines[0];
    for key in [
        "workload",
        "events",
        "seconds",
        "events_per_sec",
        "p50_us",
        "p99_us",
        "baseline_events_per_sec",
        "ratio",
        "target",
        "durability",
    ] {
        assert!(r.get(key).is_some(), "missing {key}: {r}");
    }
    assert_eq!(r["workload"], "append-seq");
    assert_eq!(r["events"], 20);
    assert_eq!(r["durability"], "always");
    assert!(r["events_per_sec"].as_f64().unwrap() > 0.0);
    assert!(r["p99_us"].as_f64().unwrap() >= r["p50_us"].as_f64().unwrap());
    // The bench cleans up after itself.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bench_persistent_delivers_and_acks_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(run(&[
        "--quick",
        "--workload",
        "persistent-1",
        "persistent-4",
        "--json",
        "--events",
        "500",
        "--data",
        dir.path().to_str().unwrap(),
    ]));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{out}");
    for (r, name) in lines.iter().zip(["persistent-1", "persistent-4"]) {
        assert_eq!(r["workload"], name);
        assert_eq!(r["events"], 500);
        assert!(r["events_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["baseline_events_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    }
}

#[test]
fn bench_reads_under_load_compares_appends_with_and_without_readers() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(run(&[
        "--quick",
        "--workload",
        "reads-under-load",
        "--json",
        "--events",
        "200",
        "--data",
        dir.path().to_str().unwrap(),
    ]));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    let r = &lines[0];
    assert_eq!(r["workload"], "reads-under-load");
    assert_eq!(r["events"], 200, "every paced append answered: {r}");
    assert!(r["p99_us"].as_f64().unwrap() >= r["p50_us"].as_f64().unwrap());
    assert!(r["ratio"].as_f64().unwrap() > 0.0, "{r}");
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("without readers") || notes.contains("no readers"),
        "{notes}"
    );
    assert!(notes.contains("/health"), "{notes}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bench_shred_reports_personal_against_plain() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(run(&[
        "--quick",
        "--workload",
        "shred-append",
        "shred-read-all",
        "--json",
        "--events",
        "2000",
        "--data",
        dir.path().to_str().unwrap(),
    ]));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{out}");
    for (r, name) in lines.iter().zip(["shred-append", "shred-read-all"]) {
        assert_eq!(r["workload"], name);
        assert!(r["events_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["baseline_events_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["ratio"].as_f64().unwrap() > 0.0, "{r}");
    }
}

#[test]
fn bench_encrypted_reports_encrypted_against_plain() {
    let dir = tempfile::tempdir().unwrap();
    let names = [
        "encrypted-append-seq",
        "encrypted-append-batch",
        "encrypted-read-all",
    ];
    let mut args = vec!["--quick", "--workload"];
    args.extend(names);
    args.extend(["--json", "--events", "50", "--data"]);
    args.push(dir.path().to_str().unwrap());
    let out = ok(run(&args));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{out}");
    for (r, name) in lines.iter().zip(names) {
        assert_eq!(r["workload"], name);
        assert!(r["events"].as_u64().unwrap() > 0, "{r}");
        assert!(r["events_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["baseline_events_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        let ratio = r["ratio"].as_f64().unwrap();
        let expected =
            r["events_per_sec"].as_f64().unwrap() / r["baseline_events_per_sec"].as_f64().unwrap();
        assert!((ratio - expected).abs() < 1e-9 * expected, "{r}");
        assert!(r["target_met"].is_boolean(), "{r}");
        let notes = r["notes"].to_string();
        assert!(notes.contains("refuses to open without its key"), "{notes}");
    }
    assert_eq!(
        lines[2]["events"], 50,
        "every event read back: {}",
        lines[2]
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

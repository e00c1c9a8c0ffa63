//! The `factum` binary, run against temporary stores.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn factum() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_factum"));
    c.env_remove("FACTUM_DATA").env_remove("FACTUM_LOG");
    c
}

fn run(args: &[&str]) -> Output {
    factum().args(args).output().expect("the binary runs")
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec![args[0], "--data", dir.to_str().unwrap()];
    all.extend_from_slice(&args[1..]);
    run(&all)
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A store with order-1 (2 events), order-2 (1 event).
fn seeded() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = ok(run_in(
        d,
        &["append", "order-1", "OrderPlaced", r#"{"total": 42}"#],
    ));
    assert_eq!(out.trim(), "revision=0 position=1");
    let out = ok(run_in(
        d,
        &[
            "append",
            "order-1",
            "OrderPaid",
            r#"{"paid":true}"#,
            "--expected",
            "0",
            "--metadata",
            r#"{"corr":"c-1"}"#,
            "--id",
            "3f2a9a52-8a8e-4b8f-9d7c-0f6a1c2b3d4e",
        ],
    ));
    assert_eq!(out.trim(), "revision=1 position=2");
    let out = ok(run_in(
        d,
        &[
            "append",
            "order-2",
            "OrderPlaced",
            "[1, 2]",
            "--expected",
            "no-stream",
        ],
    ));
    assert_eq!(out.trim(), "revision=0 position=3");
    dir
}

#[test]
fn append_then_read_human_and_json() {
    let dir = seeded();
    let d = dir.path();
    let human = ok(run_in(d, &["read", "order-1"]));
    let lines: Vec<Vec<&str>> = human.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2, "{human}");
    assert_eq!(&lines[0][..4], &["1", "order-1", "0", "OrderPlaced"]);
    assert!(
        lines[0][4].ends_with('Z'),
        "RFC 3339 created: {}",
        lines[0][4]
    );
    assert_eq!(lines[0][5], r#"{"total":42}"#);
    assert_eq!(&lines[1][..4], &["2", "order-1", "1", "OrderPaid"]);

    let events = json_lines(&ok(run_in(d, &["read", "order-1", "--json"])));
    assert_eq!(events.len(), 2);
    let e = &events[1];
    assert_eq!(e["id"], "3f2a9a52-8a8e-4b8f-9d7c-0f6a1c2b3d4e");
    assert_eq!(e["stream"], "order-1");
    assert_eq!(e["revision"], 1);
    assert_eq!(e["position"], 2);
    assert_eq!(e["type"], "OrderPaid");
    assert_eq!(e["content_type"], "application/json");
    assert!(e["created"].as_str().unwrap().ends_with('Z'));
    assert_eq!(e["data"], serde_json::json!({"paid": true}));
    assert_eq!(e["data_encoding"], "json");
    assert_eq!(e["metadata"], serde_json::json!({"corr": "c-1"}));
    assert!(e.get("link").is_none());
    assert_eq!(events[0]["metadata"], Value::Null);

    let back = json_lines(&ok(run_in(
        d,
        &["read", "order-1", "--json", "--backwards", "--count", "1"],
    )));
    assert_eq!(back.len(), 1);
    assert_eq!(back[0]["revision"], 1);
    let from = json_lines(&ok(run_in(
        d,
        &["read", "order-1", "--json", "--from", "1"],
    )));
    assert_eq!(from.len(), 1);
    assert_eq!(from[0]["revision"], 1);
}

#[test]
fn reads_all_category_and_event_type() {
    let dir = seeded();
    let d = dir.path();
    let all = json_lines(&ok(run_in(d, &["read", "$all", "--json"])));
    let positions: Vec<u64> = all
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, vec![1, 2, 3]);
    assert_eq!(all[2]["data"], serde_json::json!([1, 2]));
    let from = json_lines(&ok(run_in(
        d,
        &["read", "$all", "--json", "--from", "1", "--count", "1"],
    )));
    assert_eq!(from.len(), 1);
    assert_eq!(from[0]["position"], 1);
    let back = json_lines(&ok(run_in(d, &["read", "$all", "--json", "--backwards"])));
    assert_eq!(back.len(), 3);
    assert_eq!(back[0]["position"], 3);

    let ce = json_lines(&ok(run_in(d, &["read", "$ce-order", "--json"])));
    assert_eq!(ce.len(), 3);
    assert_eq!(ce[2]["stream"], "order-2");
    assert_eq!(ce[2]["link"]["stream"], "$ce-order");
    assert_eq!(ce[2]["link"]["revision"], 2);
    let et = ok(run_in(d, &["read", "$et-OrderPlaced"]));
    assert_eq!(et.lines().count(), 2, "{et}");
}

#[test]
fn wrong_expected_revision_fails_and_changes_nothing() {
    let dir = seeded();
    let d = dir.path();
    let o = run_in(
        d,
        &["append", "order-1", "OrderShipped", "{}", "--expected", "0"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("wrong expected version"), "{err}");
    assert!(err.contains("actual 1"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let o = run_in(d, &["append", "order-9", "X", "{}", "--expected", "exists"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(ok(run_in(d, &["read", "$all"])).lines().count(), 3);
}

#[test]
fn invalid_input_exits_2_with_one_clear_line() {
    let dir = seeded();
    let d = dir.path();
    let cases: &[(&[&str], &str)] = &[
        (&["append", "", "X", "{}"], "invalid stream name"),
        (&["append", "a\u{1}b", "X", "{}"], "invalid stream name"),
        (&["read", ""], "invalid stream name"),
        (&["append", "$all", "X", "{}"], "read-only"),
        (
            &["append", "s", "X", "{}", "--expected", "sometimes"],
            "unknown --expected",
        ),
        (&["append", "s", "X", "{\"a\":"], "not valid JSON"),
        (
            &["append", "s", "X", "{}", "--metadata", "nope"],
            "--metadata is not valid JSON",
        ),
        (&["append", "s", "X", "{}", "--id", "123"], "not a UUID"),
        (&["read", "s", "--count", "many"], "invalid value"),
    ];
    for (args, want) in cases {
        let o = run_in(d, args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(want),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(ok(run_in(d, &["read", "$all"])).lines().count(), 3);
    // Invalid input does not create a store.
    let fresh = d.join("fresh");
    let o = run_in(&fresh, &["append", "s", "X", "not json"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!fresh.exists());
}

#[cfg(unix)]
#[test]
fn invalid_utf8_arguments_are_refused() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let o = factum()
        .arg("append")
        .arg("--data")
        .arg(dir.path())
        .arg(OsStr::from_bytes(b"bad\xff"))
        .args(["X", "{}"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("UTF-8"), "{}", stderr(&o));
}

#[test]
fn missing_store_and_missing_stream_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("nothing");
    let o = run_in(&none, &["read", "$all"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no store"), "{}", stderr(&o));
    assert!(!none.exists(), "reading must not create a store");
    let seeded = seeded();
    let o = run_in(seeded.path(), &["read", "order-404"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
}

#[test]
fn data_dir_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let o = factum()
        .env("FACTUM_DATA", dir.path())
        .args(["append", "env-1", "X", "{}"])
        .output()
        .unwrap();
    assert_eq!(ok(o).trim(), "revision=0 position=1");
}

#[test]
fn verify_stats_and_reindex_on_a_good_store() {
    let dir = seeded();
    let d = dir.path();
    let v = ok(run_in(d, &["verify"]));
    assert!(v.contains("events         3"), "{v}");
    assert!(v.contains("ok"), "{v}");
    let s = ok(run_in(d, &["stats"]));
    // Three events: positions 1 ..= 3 (log positions 0 ..= 2).
    assert!(s.contains("head position     3"), "{s}");
    assert!(s.contains("segments          1"), "{s}");
    let j: Value = serde_json::from_str(ok(run_in(d, &["stats", "--json"])).trim()).unwrap();
    assert_eq!(j["head_position"], 3);
    assert_eq!(j["events"], 3);
    assert!(j["log_bytes"].as_u64().unwrap() > 0);
    assert!(j["index_bytes"].as_u64().unwrap() > 0);
    assert_eq!(j["index_checkpoint_position"], 3);
    let r = ok(run_in(d, &["reindex"]));
    assert!(r.contains("rebuilt the index"), "{r}");
    assert!(r.contains("head position 3"), "{r}");
    assert_eq!(ok(run_in(d, &["read", "$ce-order"])).lines().count(), 3);
    ok(run_in(d, &["verify"]));
}

#[test]
fn serve_refuses_to_run_without_a_certificate_or_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let o = run(&[
        "serve",
        "--data",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("a secure server needs a certificate"),
        "{}",
        stderr(&o)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(["serve", "--insecure"])
        .env_remove("FACTUM_DATA")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--data DIR is required"),
        "{}",
        stderr(&o)
    );
    let config = dir.path().join("factum.conf");
    std::fs::write(&config, "listen = 127.0.0.1:0\nport = 2113\n").unwrap();
    let o = run(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown setting \"port\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn serve_postgres_allow_unsafe_is_a_yes_no_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("factum.conf");
    std::fs::write(
        &config,
        "backend = postgres\npostgres-url = postgres://nowhere\npostgres-allow-unsafe = maybe\ninsecure = true\n",
    )
    .unwrap();
    let o = run(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("config postgres-allow-unsafe = \"maybe\": use true or false"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn serve_takes_its_settings_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("factum.conf");
    let data = dir.path().join("store");
    std::fs::write(
        &config,
        format!(
            "# test\ndata = \"{}\"\nlisten = 127.0.0.1:0\ninsecure = true\n",
            data.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("FACTUM_DATA")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        line.contains(&format!("serving {} on 127.0.0.1:", data.display())),
        "{line}"
    );
    assert!(data.is_dir());
}

#[test]
fn tail_prints_existing_events_from_the_start() {
    let dir = seeded();
    let mut child = factum()
        .args([
            "tail",
            "--data",
            dir.path().to_str().unwrap(),
            "$all",
            "--from-start",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut got = Vec::new();
    for _ in 0..3 {
        let line = lines.next().expect("a line").unwrap();
        got.push(
            serde_json::from_str::<Value>(&line).unwrap()["position"]
                .as_u64()
                .unwrap(),
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(got, vec![1, 2, 3]);
}

#[test]
fn crash_load_acknowledges_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = factum()
        .args([
            "crash-load",
            "--data",
            dir.path().to_str().unwrap(),
            "--streams",
            "3",
            "--batch-max",
            "4",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acks = Vec::new();
    while acks.len() < 50 {
        let line = lines.next().expect("an ack line").unwrap();
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 6, "{line}");
        assert_eq!(f[0], "ack");
        let n = |i: usize| f[i].parse::<u64>().unwrap();
        assert_eq!(n(3) - n(2) + 1, n(5), "{line}");
        acks.push((f[1].to_string(), n(3), n(4)));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    ok(run_in(dir.path(), &["verify"]));
    for (stream, last_rev, last_pos) in acks {
        let e = json_lines(&ok(run_in(
            dir.path(),
            &[
                "read",
                &stream,
                "--json",
                "--from",
                &last_rev.to_string(),
                "--count",
                "1",
            ],
        )));
        assert_eq!(e[0]["position"], last_pos);
        assert_eq!(e[0]["data"]["stream"], stream.as_str());
        assert_eq!(e[0]["data"]["id"], e[0]["id"]);
    }
}

/// `factum-bench` beside the `factum` under test, built when missing (a
/// whole-workspace build has it already).
fn bench_binary() -> std::path::PathBuf {
    let factum = Path::new(env!("CARGO_BIN_EXE_factum"));
    let dir = factum.parent().unwrap();
    let bench = dir.join("factum-bench");
    if !bench.exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", "factum-bench", "--bin", "factum-bench"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        assert!(
            build.status().unwrap().success(),
            "cannot build factum-bench"
        );
    }
    bench
}

#[test]
fn bench_forwards_its_arguments_to_factum_bench() {
    bench_binary();
    let dir = tempfile::tempdir().unwrap();
    let out = ok(run(&[
        "bench",
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
    assert_eq!(lines[0]["workload"], "append-seq");
    assert_eq!(lines[0]["events"], 20);
    // Help is the harness's own, with its workloads.
    let help = ok(run(&["bench", "--help"]));
    assert!(help.contains("factum-bench"), "{help}");
    assert!(help.contains("grpc-append-concurrent"), "{help}");
    // Its exit code comes through.
    let bad = run(&["bench", "--workload", "no-such-workload"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

#[test]
fn bench_without_the_harness_installed_says_where_it_looked() {
    // A `factum` alone in a directory (a hard link: current_exe is its path).
    let dir = tempfile::tempdir_in(Path::new(env!("CARGO_TARGET_TMPDIR"))).unwrap();
    let alone = dir.path().join("factum");
    std::fs::hard_link(env!("CARGO_BIN_EXE_factum"), &alone)
        .or_else(|_| std::fs::copy(env!("CARGO_BIN_EXE_factum"), &alone).map(|_| ()))
        .unwrap();
    let out = Command::new(&alone)
        .args(["bench", "--quick"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("benchmark harness is not installed")
            && err.contains(&dir.path().join("factum-bench").display().to_string()),
        "{err}"
    );
}

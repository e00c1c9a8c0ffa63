//! Cold storage through the binary (issue 18, ADR 43), against a real
//! S3-compatible server (moto, started by the test; SKIPPED without it,
//! failing under `CI=true`): `factum compact`, `factum archive` with
//! eviction, `verify` with and without the archive, `factum serve` reading
//! every event back through the archive with its metrics, and `factum
//! archive` killed (SIGKILL) at random moments of its uploads and run
//! again; `factum backup` to S3 (incremental, deleting the objects the two
//! newest manifests do not name) and `factum restore` from it.

mod common;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use factum_archive::testing::{skip, Moto};
use factum_core::testkit::shaped::seed_shaped;
use factum_core::{EventStore, ExpectedRevision, ReadAll};
use factum_engine::{Engine, EngineConfig};

const BUCKET: &str = "factum-cold";

/// A store of `n` seed-shaped events in segments of `segment_bytes`.
async fn store(dir: &Path, n: u64, segment_bytes: u64) {
    let config = EngineConfig {
        segment_bytes,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir, config).unwrap();
    let mut i = 0;
    while i < n {
        let (stream, _) = seed_shaped(i);
        let events = (i..i + 10).map(|j| seed_shaped(j).1).collect();
        engine
            .append(stream, ExpectedRevision::Any, events)
            .await
            .unwrap();
        i += 10;
    }
    engine.close().unwrap();
}

fn archive_args(moto: &Moto, prefix: &str) -> Vec<String> {
    let mut a = vec![s("--archive"), format!("s3://{BUCKET}/{prefix}")];
    a.extend(on_moto(moto));
    a
}

fn factum(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_factum"));
    c.args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("FACTUM_ARCHIVE")
        .env_remove("AWS_ENDPOINT_URL");
    c
}

fn run(args: &[String]) -> Output {
    factum(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn moto_or_skip() -> Option<Moto> {
    match Moto::start() {
        Ok(m) => {
            m.create_bucket(BUCKET);
            Some(m)
        }
        Err(e) => {
            skip(&format!(
                "no S3-compatible server for the archive tests: {e}"
            ));
            None
        }
    }
}

fn s(v: &str) -> String {
    v.to_string()
}

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// Starts `factum serve` with `args` and the test's AWS environment.
fn serve(args: &[String]) -> (Child, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::serve_command(factum(&[]), &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_archive_evict_and_serve_everything_back_from_s3() {
    let Some(moto) = moto_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    store(&data, 4000, 256 * 1024).await;
    let d = data.to_str().unwrap().to_string();

    let out = ok(&run(&[s("compact"), s("--data"), d.clone()]));
    assert!(out.contains("compressed now"), "{out}");
    let mut args = vec![s("archive"), s("--data"), d.clone()];
    args.extend(archive_args(&moto, "store-1"));
    args.extend([s("--archive-keep-local"), s("0s")]);
    let out = ok(&run(&args));
    assert!(out.contains("uploaded and verified now"), "{out}");
    let evicted: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("evicted"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(evicted >= 3, "{out}");
    // Again: nothing to upload.
    let out = ok(&run(&args));
    assert!(out.contains(" 0 uploaded"), "{out}");

    // verify without the archive notes the archived segments; with it,
    // reads them and checks their copies.
    let out = ok(&run(&[s("verify"), s("--data"), d.clone()]));
    assert!(out.contains("lives only in the archive"), "{out}");
    let mut v = vec![s("verify"), s("--data"), d.clone()];
    v.extend(archive_args(&moto, "store-1"));
    let out = ok(&run(&v));
    assert!(out.contains("only in the archive"), "{out}");
    assert!(out.contains("events         4000"), "{out}");
    assert!(
        out.contains(&format!("object(s): {evicted} segment(s) only there")),
        "{out}"
    );
    // A read without the archive says what is missing.
    let out = run(&[s("read"), s("--data"), d.clone(), s("$all")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no archive is configured"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Served with the archive: every event comes back, and the metrics say
    // where the bytes are and what the cache did.
    let mut sargs = vec![s("--data"), d.clone()];
    sargs.extend(archive_args(&moto, "store-1"));
    let (mut server, addr) = serve(&sargs);
    let client = factum_client::Client::connect(&format!("http://{addr}"))
        .await
        .unwrap();
    let all = client.read_all(ReadAll::forwards()).await.unwrap();
    assert_eq!(all.len(), 4000);
    let metrics = http_get(&addr, "/metrics");
    assert!(metric(&metrics, "factum_segments_archived") >= evicted as f64);
    assert!(metric(&metrics, "factum_log_bytes_archived") > 0.0);
    assert!(metric(&metrics, "factum_archive_cache_misses_total") >= 1.0);
    assert!(metric(&metrics, "factum_archive_fetch_seconds_total") > 0.0);
    server.kill().unwrap();
    server.wait().unwrap();

    // The archive goes away: the server's reads fail naming the segment,
    // and the server itself stays up.
    drop(moto);
    let (mut server, addr) = serve(&sargs);
    let client = factum_client::Client::connect(&format!("http://{addr}"))
        .await
        .unwrap();
    let err = client.read_all(ReadAll::forwards()).await.unwrap_err();
    assert!(
        err.to_string().contains("lives only in the archive"),
        "{err}"
    );
    assert!(http_get(&addr, "/health/live").contains("200"));
    server.kill().unwrap();
    server.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_killed_at_random_moments_is_retried_and_loses_nothing() {
    let Some(moto) = moto_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Segments of 4 MiB: uploads take long enough to be cut.
    store(&data, 40_000, 4 << 20).await;
    let d = data.to_str().unwrap().to_string();
    let mut args = vec![s("archive"), s("--data"), d.clone()];
    args.extend(archive_args(&moto, "store-2"));
    args.extend([s("--archive-keep-local"), s("0s")]);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    for round in 0..3u64 {
        let mut child = factum(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let wait = 100 + (seed.wrapping_mul(round + 7) % 900);
        std::thread::sleep(Duration::from_millis(wait));
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
        let mut v = vec![s("verify"), s("--data"), d.clone()];
        v.extend(archive_args(&moto, "store-2"));
        let out = ok(&run(&v));
        assert!(out.contains("events         40000"), "round {round}: {out}");
    }
    let out = ok(&run(&args));
    assert!(out.contains("evicted"), "{out}");
    let mut v = vec![s("verify"), s("--data"), d.clone()];
    v.extend(archive_args(&moto, "store-2"));
    let out = ok(&run(&v));
    assert!(out.contains("events         40000"), "{out}");
    // Every sealed segment lives only in the archive now.
    let sealed = std::fs::read_dir(&data)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count()
        - 1;
    assert!(
        out.contains(&format!("0 compressed, {sealed} only in the archive")),
        "{out}"
    );
    // Read back through the engine with the S3 archive.
    let mut options = factum_archive::ArchiveOptions::default();
    options.endpoint = Some(moto.endpoint.clone());
    options.allow_http = true;
    options.access_key_id = Some("test".into());
    options.secret_access_key = Some("test".into());
    let archive =
        factum_archive::open_archive(&format!("s3://{BUCKET}/store-2"), &options).unwrap();
    let config = EngineConfig {
        archive: Some(archive),
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(&data, config).unwrap();
    let all = engine.read_all(ReadAll::forwards()).await.unwrap();
    assert_eq!(all.len(), 40_000);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position.0, i as u64 + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_to_s3_is_incremental_and_restores() {
    let Some(moto) = moto_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    store(&data, 3000, 256 * 1024).await;
    let prefix = format!("s3://{BUCKET}/backups/node-1");
    let b = backup_to_s3(&data, &prefix, &dir.path().join("staging"), &moto);
    let first = ok(&run(&b));
    let count = |out: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix("uploaded"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{out}"))
    };
    let all_files = count(&first);
    assert!(all_files >= 4, "{first}");
    // More events: only the changed tail (the active segment, the index)
    // goes up again.
    store(&data, 10, 256 * 1024).await;
    let second = ok(&run(&b));
    assert!(count(&second) <= 3, "{second}");
    // Restored from S3 into a new directory (verified by restore).
    let r = restore_from_s3(&prefix, &dir.path().join("restored"), &moto);
    restored_as(&r, &data, 3010).await;
    // A prefix holding no backup is named.
    let mut bad = r.clone();
    bad[2] = format!("s3://{BUCKET}/backups/none");
    bad[4] = dir.path().join("other").to_str().unwrap().to_string();
    let out = run(&bad);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no BACKUP.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The S3 options of every command against moto.
fn on_moto(moto: &Moto) -> [String; 3] {
    [
        s("--archive-endpoint"),
        moto.endpoint.clone(),
        s("--archive-allow-http"),
    ]
}

/// `factum backup` of the store in `data` to the S3 `prefix`.
fn backup_to_s3(data: &Path, prefix: &str, staging: &Path, moto: &Moto) -> Vec<String> {
    let mut b = vec![
        s("backup"),
        s("--data"),
        data.to_str().unwrap().to_string(),
        s("--to"),
        s(prefix),
        s("--staging"),
        staging.to_str().unwrap().to_string(),
    ];
    b.extend(on_moto(moto));
    b
}

/// `factum restore` from the S3 `prefix` into `into` (the prefix and the
/// directory are its arguments 2 and 4).
fn restore_from_s3(prefix: &str, into: &Path, moto: &Moto) -> Vec<String> {
    let mut r = vec![
        s("restore"),
        s("--from"),
        s(prefix),
        s("--data"),
        into.to_str().unwrap().to_string(),
    ];
    r.extend(on_moto(moto));
    r
}

/// Runs the `restore` command `r`: it verifies `events` events, and the
/// restored store reads as the one in `data`. Returns its events.
async fn restored_as(r: &[String], data: &Path, events: u64) -> Vec<factum_core::RecordedEvent> {
    let out = ok(&run(r));
    assert!(
        out.contains(&format!("verify: ok ({events} events)")),
        "{out}"
    );
    let (engine, _) = Engine::open_with(Path::new(&r[4]), EngineConfig::default()).unwrap();
    let all = engine.read_all(ReadAll::forwards()).await.unwrap();
    let (original, _) = Engine::open_with(data, EngineConfig::default()).unwrap();
    let want = original.read_all(ReadAll::forwards()).await.unwrap();
    assert_eq!(all, want);
    all
}

/// The objects `BACKUP.json` in `archive` names.
fn manifest_objects(archive: &dyn factum_engine::Archive) -> BTreeSet<String> {
    let size = archive.size("BACKUP.json").unwrap().expect("a BACKUP.json");
    let bytes = archive.get_range("BACKUP.json", 0, size as usize).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    manifest["objects"]
        .as_object()
        .expect("objects in BACKUP.json")
        .values()
        .map(|object| object.as_str().unwrap().to_string())
        .collect()
}

/// The objects in `archive`, with their sizes.
fn listed(archive: &dyn factum_engine::Archive) -> BTreeMap<String, u64> {
    archive
        .list()
        .unwrap()
        .into_iter()
        .map(|object| (object.name, object.size))
        .collect()
}

/// The objects and bytes on a backup's `deleted` line.
fn deleted(out: &str) -> (usize, u64) {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("deleted"))
        .unwrap_or_else(|| panic!("no deleted line: {out}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    match words[..] {
        [objects, "object(s),", bytes, "byte(s)", ..] => {
            (objects.parse().unwrap(), bytes.parse().unwrap())
        }
        _ => panic!("deleted line: {line}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_to_s3_deletes_objects_the_two_newest_manifests_do_not_name() {
    let Some(moto) = moto_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    store(&data, 3000, 256 * 1024).await;
    let d = data.to_str().unwrap().to_string();
    let prefix = format!("s3://{BUCKET}/backups/node-2");
    let b = backup_to_s3(&data, &prefix, &dir.path().join("staging"), &moto);
    let mut at_once = b.clone();
    at_once.extend([s("--delete-unreferenced-after"), s("0s")]);
    let mut options = factum_archive::ArchiveOptions::default();
    options.endpoint = Some(moto.endpoint.clone());
    options.allow_http = true;
    options.access_key_id = Some("test".into());
    options.secret_access_key = Some("test".into());
    let archive = factum_archive::open_archive(&prefix, &options).unwrap();

    let out = ok(&run(&b));
    assert_eq!(deleted(&out), (0, 0), "{out}");
    let first = manifest_objects(archive.as_ref());

    // A rewrite of every sealed segment (compression) and more events: the
    // next backup uploads new objects for them; the first manifest's stay,
    // since it is the previous one.
    let out = ok(&run(&[s("compact"), s("--data"), d.clone()]));
    assert!(out.contains("compressed now"), "{out}");
    store(&data, 10, 256 * 1024).await;
    let out = ok(&run(&at_once));
    assert_eq!(deleted(&out), (0, 0), "{out}");
    let second = manifest_objects(archive.as_ref());
    let only_first: BTreeSet<String> = first.difference(&second).cloned().collect();
    assert!(
        only_first.iter().filter(|o| o.contains(".seg.")).count() >= 3,
        "the rewrite should have given sealed segments new objects: {only_first:?}"
    );
    let before = listed(archive.as_ref());
    for object in first.iter().chain(&second) {
        assert!(before.contains_key(object), "{object} missing: {before:?}");
    }

    // The third: what only the first manifest named goes, and its bytes
    // are reported; what the second and third name stays.
    store(&data, 10, 256 * 1024).await;
    let out = ok(&run(&at_once));
    let third = manifest_objects(archive.as_ref());
    let gone: BTreeSet<&String> = only_first.difference(&third).collect();
    let gone_bytes: u64 = gone.iter().map(|object| before[*object]).sum();
    assert_eq!(deleted(&out), (gone.len(), gone_bytes), "{out}");
    let after = listed(archive.as_ref());
    for object in &gone {
        assert!(
            !after.contains_key(*object),
            "{object} still there: {after:?}"
        );
    }
    for object in second.iter().chain(&third) {
        assert!(after.contains_key(object), "{object} missing: {after:?}");
    }
    assert!(after.contains_key("BACKUP.json"));

    // --keep-unreferenced deletes nothing, though the second manifest's
    // own objects (its active segment, its index) are now named by neither.
    store(&data, 10, 256 * 1024).await;
    let mut keep = b.clone();
    keep.push(s("--keep-unreferenced"));
    let out = ok(&run(&keep));
    assert!(
        out.contains("deleted        nothing (--keep-unreferenced)"),
        "{out}"
    );
    let fourth = manifest_objects(archive.as_ref());
    let only_second: Vec<&String> = second
        .iter()
        .filter(|o| !third.contains(*o) && !fourth.contains(*o))
        .collect();
    assert!(!only_second.is_empty(), "{second:?} / {fourth:?}");
    let kept = listed(archive.as_ref());
    for object in only_second {
        assert!(kept.contains_key(object), "{object} deleted: {kept:?}");
    }

    // A restore from the prefix holds every event and passes verify.
    let r = restore_from_s3(&prefix, &dir.path().join("restored"), &moto);
    let all = restored_as(&r, &data, 3030).await;
    assert_eq!(all.len(), 3030);
}

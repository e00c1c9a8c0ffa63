//! A full disk: appends fail with a clear error, nothing acknowledged is
//! lost, the store stays consistent and takes appends again once there is
//! room, and it reopens and verifies.
//!
//! The test re-runs its own binary as the child (`full_disk_child` with
//! `FACTUM_FULL_DISK_CHILD=<dir>`) inside a private mount namespace
//! (`unshare -rm`) where `<dir>` is a small tmpfs: a real file system that
//! really runs out of space, gone when the child exits. Where namespaces or
//! mounts are not allowed it prints SKIPPED, and fails under `CI=true`.

use std::process::Command;

use factum_core::{
    Bytes, ContentType, Error, EventData, EventStore, ExpectedRevision, ReadAll, StreamName,
};
use factum_engine::{Engine, EngineConfig};

mod common;

/// Exit code of the child's script when the mount is not possible.
const CANNOT_MOUNT: i32 = 77;

#[test]
fn full_disk_child() {
    let Ok(dir) = std::env::var("FACTUM_FULL_DISK_CHILD") else {
        return;
    };
    let rt = common::runtime();
    rt.block_on(scenario(std::path::Path::new(&dir)));
}

async fn scenario(dir: &std::path::Path) {
    // Ballast, removed later to make room.
    let ballast = dir.join("ballast");
    std::fs::write(&ballast, vec![1u8; 1 << 20]).unwrap();
    let store = dir.join("store");
    let (engine, _) = Engine::open_with(&store, EngineConfig::default()).unwrap();
    let s = StreamName::new("fill-1").unwrap();
    let ev = |i: u64| {
        EventData::new(
            "Filled",
            ContentType::Binary,
            Bytes::from(vec![(i % 251) as u8; 8 << 10]),
        )
    };
    // Small appends (so zeros are preallocated ahead too) until the disk is full.
    let mut acked = 0u64;
    let err = loop {
        match engine
            .append(s.clone(), ExpectedRevision::Any, vec![ev(acked)])
            .await
        {
            Ok(r) => {
                assert_eq!(r.revision.0, acked);
                acked += 1;
                assert!(acked < 10_000, "the disk never filled");
            }
            Err(e) => break e,
        }
    };
    eprintln!("full after {acked} appends: {err}");
    // The writer answers a failed write with `Unavailable` (room may come
    // back; the same append can be retried), naming the file and the OS error.
    match &err {
        Error::Unavailable(why) => {
            assert!(why.contains(".seg") && why.contains("os error 28"), "{err}")
        }
        other => panic!("expected Unavailable (no space), got {other:?}"),
    }
    assert!(err.to_string().contains("No space left"), "{err}");
    assert!(acked > 10, "the disk filled too early to prove anything");
    // Still full: the same clear error, and the store is unchanged.
    let again = engine
        .append(s.clone(), ExpectedRevision::Any, vec![ev(acked)])
        .await
        .unwrap_err();
    assert!(again.to_string().contains("No space left"), "{again}");
    let check = |events: Vec<factum_core::RecordedEvent>, n: u64| {
        assert_eq!(events.len() as u64, n);
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.position.0, i as u64);
            assert_eq!(e.revision.0, i as u64);
            assert_eq!(e.data.len(), 8 << 10);
            assert!(e.data.iter().all(|&b| b == (i % 251) as u8));
        }
    };
    check(engine.read_all(ReadAll::forwards()).await.unwrap(), acked);
    // Room again: appends continue where they stopped.
    std::fs::remove_file(&ballast).unwrap();
    let r = engine
        .append(
            s.clone(),
            ExpectedRevision::Exact(factum_core::StreamRevision(acked - 1)),
            vec![ev(acked)],
        )
        .await
        .unwrap();
    assert_eq!((r.revision.0, r.position.0), (acked, acked));
    engine.close().unwrap();
    drop(engine);
    let (engine, rec) = Engine::open_with(&store, EngineConfig::default()).unwrap();
    assert!(rec.cut.is_none(), "{:?}", rec.cut);
    check(
        engine.read_all(ReadAll::forwards()).await.unwrap(),
        acked + 1,
    );
    engine.close().unwrap();
    drop(engine);
    let report = factum_engine::verify(&store).unwrap();
    assert!(report.ok(), "{:?}", report.faults);
    println!("FULL-DISK-OK {acked}");
}

#[test]
fn a_full_disk_fails_appends_clearly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "mount -t tmpfs -o size=6m tmpfs '{}' || exit {CANNOT_MOUNT}; exec '{}' full_disk_child --exact --nocapture --test-threads=1",
        mnt.display(),
        exe.display()
    );
    let out = Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .env("FACTUM_FULL_DISK_CHILD", &mnt)
        .output();
    let skip = |why: String| {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "full-disk test cannot run under CI=true: {why}"
        );
        eprintln!("SKIPPED: full-disk test: {why}");
    };
    let out = match out {
        Ok(out) => out,
        Err(e) => return skip(format!("cannot run unshare: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(CANNOT_MOUNT)
        || (!out.status.success() && stderr.contains("unshare:"))
    {
        return skip(format!("no private tmpfs mount here: {}", stderr.trim()));
    }
    assert!(
        out.status.success() && stdout.contains("FULL-DISK-OK"),
        "the child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for line in stderr.lines().filter(|l| l.starts_with("full after")) {
        eprintln!("{line}");
    }
}

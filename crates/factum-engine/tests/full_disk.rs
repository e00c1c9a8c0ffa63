//! A full disk: appends fail with a clear error, nothing acknowledged is
//! lost, the store stays consistent and takes appends again once there is
//! room, and it reopens and verifies. Twice: the disk fills while appends
//! write into the active segment, and while the writer starts the next
//! segment (the roll is retried with backoff; appends resume by themselves).
//! And the same roll with too many open files (EMFILE) instead of a full
//! disk: the process's own `RLIMIT_NOFILE` is lowered to its open files
//! just as a segment must roll, then raised again.
//!
//! The test re-runs its own binary as the child (`full_disk_child` with
//! `FACTUM_FULL_DISK_CHILD=<dir>` and `FACTUM_FULL_DISK_CASE`) inside a private mount namespace
//! (`unshare -rm`) where `<dir>` is a small tmpfs: a real file system that
//! really runs out of space, gone when the child exits. Where namespaces or
//! mounts are not allowed it prints SKIPPED, and fails under `CI=true`.
//! The EMFILE case needs no mount: its child runs on a plain temporary
//! directory (the limit is the child's own).

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
    let dir = std::path::Path::new(&dir);
    match std::env::var("FACTUM_FULL_DISK_CASE").as_deref() {
        Ok("roll") => rt.block_on(roll_scenario(dir, Blocker::FullDisk)),
        Ok("emfile") => rt.block_on(roll_scenario(dir, Blocker::NoFiles)),
        _ => rt.block_on(scenario(dir)),
    }
}

fn event(i: u64) -> EventData {
    EventData::new(
        "Filled",
        ContentType::Binary,
        Bytes::from(vec![(i % 251) as u8; 8 << 10]),
    )
}

/// Every event is there, in order, with its bytes.
fn check_events(events: Vec<factum_core::RecordedEvent>, n: u64) {
    assert_eq!(events.len() as u64, n);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position.0, i as u64 + 1);
        assert_eq!(e.revision.0, i as u64);
        assert_eq!(e.data.len(), 8 << 10);
        assert!(e.data.iter().all(|&b| b == (i % 251) as u8));
    }
}

/// Writes `path` until the file system is full, to the last page.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [64 << 10, 4 << 10, 512] {
        let buf = vec![1u8; chunk];
        loop {
            match f.write_all(&buf) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
}

/// What keeps the next segment from being created.
#[derive(Clone, Copy, Debug)]
enum Blocker {
    /// The file system is full (ENOSPC): a ballast file fills it.
    FullDisk,
    /// The process may open no more files (EMFILE): its soft
    /// `RLIMIT_NOFILE` is lowered to the lowest free descriptor.
    NoFiles,
}

impl Blocker {
    /// The OS error appends must name.
    fn os_error(self) -> &'static str {
        match self {
            Blocker::FullDisk => "os error 28",
            Blocker::NoFiles => "os error 24",
        }
    }

    /// Puts the cause in place; returns what `unblock` needs.
    fn block(self, dir: &std::path::Path) -> u64 {
        match self {
            Blocker::FullDisk => {
                fill(&dir.join("ballast"));
                0
            }
            Blocker::NoFiles => {
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: a valid pointer to an rlimit.
                assert_eq!(
                    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
                    0
                );
                // The lowest free descriptor: every one below it is open.
                let lowest = {
                    let f = std::fs::File::open("/dev/null").unwrap();
                    std::os::fd::AsRawFd::as_raw_fd(&f) as u64
                };
                let lowered = libc::rlimit {
                    rlim_cur: lowest,
                    rlim_max: limit.rlim_max,
                };
                // SAFETY: a valid pointer to an rlimit.
                assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
                let e = std::fs::File::open("/dev/null").unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                eprintln!(
                    "RLIMIT_NOFILE lowered from {} to {lowest} (the open files)",
                    limit.rlim_cur
                );
                limit.rlim_cur
            }
        }
    }

    /// Takes the cause away again.
    fn unblock(self, dir: &std::path::Path, saved: u64) {
        match self {
            Blocker::FullDisk => std::fs::remove_file(dir.join("ballast")).unwrap(),
            Blocker::NoFiles => {
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: valid pointers to an rlimit.
                unsafe {
                    assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
                    limit.rlim_cur = saved;
                    assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
                }
            }
        }
    }
}

/// The disk is full (or the process may open no more files) just when the
/// active segment is full: creating the next segment fails. Appends answer
/// `Unavailable` naming the cause, the writer is not stopped for good, and
/// once the cause is gone appends resume by themselves (the writer retries
/// the roll with backoff).
async fn roll_scenario(dir: &std::path::Path, blocker: Blocker) {
    let store = dir.join("store");
    let config = EngineConfig {
        segment_bytes: 64 << 10,
        // Zeros ahead would be freed by sealing, making room for the roll.
        preallocate_bytes: 0,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(&store, config.clone()).unwrap();
    let s = StreamName::new("roll-1").unwrap();
    // Fill the first segment until the next append needs a new one.
    let mut acked = 0u64;
    let mut frame = 0;
    loop {
        let before = engine.log_bytes().unwrap();
        if acked > 0 && before + frame > config.segment_bytes {
            break;
        }
        engine
            .append(s.clone(), ExpectedRevision::Any, vec![event(acked)])
            .await
            .unwrap();
        acked += 1;
        frame = engine.log_bytes().unwrap() - before;
    }
    assert_eq!(common::segments(&store).len(), 1);
    let saved = blocker.block(dir);
    let err = engine
        .append(s.clone(), ExpectedRevision::Any, vec![event(acked)])
        .await
        .unwrap_err();
    eprintln!("roll blocked ({blocker:?}) after {acked} appends: {err}");
    let cause_ok = |e: &Error| match e {
        Error::Unavailable { message: why, .. } => {
            why.contains("could not start a new segment")
                && why.contains(".seg")
                && why.contains(blocker.os_error())
        }
        _ => false,
    };
    assert!(cause_ok(&err), "{err:?}");
    // Not stopped for good; still full after some retries: the same cause.
    assert_eq!(engine.fatal(), None);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let again = engine
        .append(s.clone(), ExpectedRevision::Any, vec![event(acked)])
        .await
        .unwrap_err();
    assert!(cause_ok(&again), "{again:?}");
    // (Listing the directory needs a descriptor too.)
    if let Blocker::FullDisk = blocker {
        assert_eq!(common::segments(&store).len(), 1);
    }
    check_events(engine.read_all(ReadAll::forwards()).await.unwrap(), acked);
    // The cause gone: the writer's own retry starts the segment; the same
    // append succeeds without anything else done to the store.
    blocker.unblock(dir, saved);
    let freed = std::time::Instant::now();
    let r = loop {
        match engine
            .append(s.clone(), ExpectedRevision::Any, vec![event(acked)])
            .await
        {
            Ok(r) => break r,
            Err(e) => {
                assert!(cause_ok(&e), "{e:?}");
                assert!(
                    freed.elapsed() < std::time::Duration::from_secs(5),
                    "appends did not resume after the cause ({blocker:?}) was gone: {e}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    eprintln!(
        "appends resumed {:?} after the cause ({blocker:?}) was gone",
        freed.elapsed()
    );
    assert_eq!((r.revision.0, r.position.0), (acked, acked + 1));
    acked += 1;
    assert_eq!(common::segments(&store).len(), 2);
    // And on, across further rolls.
    for _ in 0..20 {
        engine
            .append(s.clone(), ExpectedRevision::Any, vec![event(acked)])
            .await
            .unwrap();
        acked += 1;
    }
    assert!(common::segments(&store).len() >= 4);
    engine.close().unwrap();
    drop(engine);
    let (engine, rec) = Engine::open_with(&store, config).unwrap();
    assert!(rec.cut.is_none() && rec.fsync_cut.is_none(), "{rec:?}");
    check_events(engine.read_all(ReadAll::forwards()).await.unwrap(), acked);
    engine.close().unwrap();
    drop(engine);
    let report = factum_engine::verify(&store).unwrap();
    assert!(report.ok(), "{:?}", report.faults);
    println!("FULL-DISK-OK {acked}");
}

async fn scenario(dir: &std::path::Path) {
    // Ballast, removed later to make room.
    let ballast = dir.join("ballast");
    std::fs::write(&ballast, vec![1u8; 1 << 20]).unwrap();
    let store = dir.join("store");
    let (engine, _) = Engine::open_with(&store, EngineConfig::default()).unwrap();
    let s = StreamName::new("fill-1").unwrap();
    let ev = event;
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
        Error::Unavailable { message: why, .. } => {
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
    let check = check_events;
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
    assert_eq!((r.revision.0, r.position.0), (acked, acked + 1));
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
    run_child("full-disk test", "append");
}

#[test]
fn a_full_disk_while_starting_a_segment_is_retried_until_there_is_room() {
    run_child("full-disk roll test", "roll");
}

/// EMFILE while starting the next segment: transient like ENOSPC. The
/// child lowers its own open-file limit, so it needs no mount.
#[test]
fn too_many_open_files_while_starting_a_segment_is_retried_until_files_can_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "full_disk_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FACTUM_FULL_DISK_CHILD", dir.path())
        .env("FACTUM_FULL_DISK_CASE", "emfile")
        .output()
        .unwrap();
    check_child(&out);
}

/// Runs the child's `case` on a 6 MiB tmpfs of its own.
fn run_child(test: &str, case: &str) {
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
        .env("FACTUM_FULL_DISK_CASE", case)
        .output();
    let skip = |why: String| {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} cannot run under CI=true: {why}"
        );
        eprintln!("SKIPPED: {test}: {why}");
    };
    let out = match out {
        Ok(out) => out,
        Err(e) => return skip(format!("cannot run unshare: {e}")),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(CANNOT_MOUNT)
        || (!out.status.success() && stderr.contains("unshare:"))
    {
        return skip(format!("no private tmpfs mount here: {}", stderr.trim()));
    }
    check_child(&out);
}

/// The child passed; shows what it saw.
fn check_child(out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("FULL-DISK-OK"),
        "the child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for line in stderr.lines().filter(|l| {
        l.starts_with("full after")
            || l.starts_with("roll blocked")
            || l.starts_with("RLIMIT_NOFILE")
            || l.starts_with("appends resumed")
    }) {
        eprintln!("{line}");
    }
}

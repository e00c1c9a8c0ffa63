//! A failed fsync on a FUSE file system that really drops the bytes (issue
//! 11, ADR 12): `factum serve` runs on a passthrough FUSE mount
//! (`tests/faultfs`) and acknowledges appends; then the writer's next fsync
//! of a segment fails with EIO and the file system drops, from the backing file,
//! every byte written to that segment since its last good fsync, while the
//! kernel's page cache keeps them (writeback cache, `FOPEN_KEEP_CACHE`).
//! The server acknowledges nothing more and exits 1; a fresh `factum serve`
//! on the same mount, where the cache is still warm, serves exactly the
//! acknowledged events; and so does the backing directory opened directly
//! after the mount is gone (what a reboot would find).
//!
//! Twice: once as it happens (the engine cuts the segment back to its
//! durable end at the fault, which drops the cached pages), and once with
//! that cut failing too (the file system refuses to truncate the segment
//! until the faulting process is gone): then the page cache demonstrably
//! serves the dropped bytes as a valid frame after the durable end, and only
//! the `FSYNC_FAILED` marker keeps the fresh process from serving them.
//!
//! The test runs itself again as the child (`fuse_child`, with
//! `FACTUM_FUSE_CHILD=<dir>` and `FACTUM_FUSE_CASE`) in a private mount
//! namespace (`unshare -m`), so no mount outlives it even if it is killed;
//! the child also unmounts (`umount2(MNT_DETACH)`) in a guard when it ends
//! or panics. The file system is served by a thread of the child, with
//! `fuser` mounting through mount(2) (root, no fusermount). Without
//! `/dev/fuse`, or where mounting is not permitted, it prints SKIPPED, and
//! fails under `CI=true`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_client::{Client, Retry};
use factum_core::{EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, StreamName};
use factum_engine::fatal::read_marker;
use factum_engine::format::{check_frame, FrameCheck};

mod faultfs;

/// The child's exit code when it cannot mount.
const CANNOT_MOUNT: i32 = 77;
/// Appends acknowledged before the fault is armed.
const BEFORE: u64 = 40;

/// The mount, unmounted lazily when dropped (also while a panic unwinds).
struct Mounted {
    mnt: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Mounted {
    fn unmount(&mut self) {
        if self.session.is_none() {
            return;
        }
        let path = std::ffi::CString::new(self.mnt.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!(
                "umount2({}): {}",
                self.mnt.display(),
                std::io::Error::last_os_error()
            );
        }
        // Its own unmount finds nothing left to do.
        drop(self.session.take());
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A child process killed when dropped (a failing test leaves none).
struct Server {
    child: Child,
    addr: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `factum serve` over `data`; returns once it listens.
    fn start(data: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_factum"))
            .args(["serve", "--listen", "127.0.0.1:0", "--insecure"])
            .arg("--data")
            .arg(data)
            .env("FACTUM_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("factum serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let Some(addr) = line
            .split(" on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        else {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            panic!("factum serve is not listening: {line:?}\n{s}");
        };
        let addr = addr.to_owned();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Server {
            child,
            addr,
            stderr: Some(stderr),
        }
    }

    async fn client(&self) -> Client {
        Client::connect(&format!("http://{}", self.addr))
            .await
            .unwrap()
            .with_retry(Retry::none())
    }

    /// Waits for the process to exit by itself; its status and stderr.
    fn exit(&mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "factum serve did not exit");
            std::thread::sleep(Duration::from_millis(50));
        };
        (status, self.stderr.take().unwrap().join().unwrap())
    }

    /// SIGTERM, and it exits 0.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let (status, stderr) = self.exit(Duration::from_secs(20));
        assert!(
            status.success(),
            "factum serve exited with {status}\n{stderr}"
        );
    }
}

fn event(i: u64) -> EventData {
    // A few hundred bytes, so the dropped group is more than a header.
    EventData::binary(
        "Written",
        format!("event {i} {}", "x".repeat(300)).into_bytes(),
    )
}

/// The user's events (not the streams the store manages itself).
async fn user_events<S: EventStore>(store: &S) -> Vec<(String, u64, Vec<u8>)> {
    store
        .read_all(ReadAll::forwards())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| !e.stream.as_str().starts_with('$'))
        .map(|e| (e.stream.as_str().to_owned(), e.revision.0, e.data.to_vec()))
        .collect()
}

/// The segment files of a store, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// The child: mounts the file system over `<dir>/backing` at `<dir>/mnt`
/// and runs the case.
#[test]
fn fuse_child() {
    let Ok(dir) = std::env::var("FACTUM_FUSE_CHILD") else {
        return;
    };
    println!();
    let dead = match std::env::var("FACTUM_FUSE_CASE").as_deref() {
        Ok("dead") => true,
        Ok("plain") => false,
        other => panic!("unknown case {other:?}"),
    };
    let dir = PathBuf::from(dir);
    let backing = dir.join("backing");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    if !Path::new("/dev/fuse").exists() {
        println!("CANNOT-MOUNT: no /dev/fuse");
        std::process::exit(CANNOT_MOUNT);
    }
    let control = Arc::new(faultfs::Control::default());
    let fs = faultfs::FaultFs::new(backing.clone(), control.clone());
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::FSName("factum-faultfs".into())];
    let session = match fuser::Session::new(fs, &mnt, &config) {
        Ok(s) => s,
        Err(e) => {
            println!("CANNOT-MOUNT: mounting FUSE at {}: {e}", mnt.display());
            std::process::exit(CANNOT_MOUNT);
        }
    };
    let mut mounted = Mounted {
        mnt: mnt.clone(),
        session: Some(session.spawn().unwrap()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(scenario(&mnt, &backing, &control, dead, &mut mounted));
}

async fn scenario(
    mnt: &Path,
    backing: &Path,
    control: &faultfs::Control,
    dead: bool,
    mounted: &mut Mounted,
) {
    let data = mnt.join("store");
    let stream = StreamName::new("fuse-1").unwrap();
    let mut server = Server::start(&data);
    let client = server.client().await;
    let mut acked = Vec::new();
    for i in 0..BEFORE {
        let r = client
            .append(stream.clone(), ExpectedRevision::Any, vec![event(i)])
            .await
            .unwrap();
        assert_eq!(r.revision.0, i);
        acked.push(("fuse-1".to_owned(), i, event(i).data.to_vec()));
    }
    // The next fsync of a segment fails and loses what it should have kept.
    control.arm(".seg", "factum-writer", dead);
    let mut answers = Vec::new();
    for i in BEFORE..BEFORE + 5 {
        answers.push(
            client
                .append(stream.clone(), ExpectedRevision::Any, vec![event(i)])
                .await,
        );
    }
    let fault = control.fault().expect("the armed fsync never came");
    for (i, a) in answers.iter().enumerate() {
        assert!(
            a.is_err(),
            "append {} was acknowledged after the fault: {a:?}",
            BEFORE + i as u64
        );
    }
    let first = answers[0].as_ref().unwrap_err().to_string();
    assert!(
        first.contains("os error 5") && first.contains(".seg"),
        "{first}"
    );
    let (status, stderr) = server.exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{status}\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: the store failed for good:")
            && last.contains(".seg")
            && last.contains("os error 5"),
        "{stderr}"
    );
    drop(server);
    eprintln!(
        "{BEFORE} acknowledged; the fault: {fault:?}; the first append after it: {first}; factum serve exited with {status}: {last}"
    );
    // The writer's group commit (`fdatasync`), with its bytes.
    assert!(fault.datasync && fault.dropped_bytes > 0, "{fault:?}");

    // What the mount serves now, against what the backing file holds.
    let (_, marker) = read_marker(&data)
        .unwrap()
        .expect("no FSYNC_FAILED marker after the fault");
    let seg = segments(&data)
        .into_iter()
        .find(|p| fault.path.file_name() == p.file_name())
        .expect("the faulted segment");
    let cached = std::fs::read(&seg).unwrap();
    let on_disk = std::fs::read(backing.join(&fault.path)).unwrap();
    let at = marker.offset as usize;
    let frame_at = |b: &[u8]| b.len() > at && matches!(check_frame(&b[at..]), FrameCheck::Valid(_));
    assert!(
        !frame_at(&on_disk),
        "the backing file still holds a frame after the durable end {at}"
    );
    if dead {
        // The kernel serves what the file system dropped: a whole frame.
        assert!(
            frame_at(&cached),
            "expected the page cache to serve the dropped group at {at} ({} bytes through the mount, {} in the backing file)",
            cached.len(),
            on_disk.len()
        );
        let differ = cached
            .iter()
            .zip(on_disk.iter().chain(std::iter::repeat(&0)))
            .skip(at)
            .filter(|(a, b)| a != b)
            .count();
        eprintln!(
            "the truncation failed too: through the mount the segment is {} bytes and holds a valid frame at the durable end {at}; {differ} bytes after it differ from the backing file ({} bytes)",
            cached.len(),
            on_disk.len()
        );
        control.revive();
    } else {
        assert!(
            !frame_at(&cached),
            "the engine's cut at the fault left a frame after the durable end {at} in the page cache"
        );
        eprintln!(
            "the engine cut the segment at the fault: through the mount it is {} bytes, the durable end is {at}",
            cached.len()
        );
    }

    // A fresh process on the same mount (the cache still warm).
    let mut fresh = Server::start(&data);
    let client = fresh.client().await;
    let served = user_events(&client).await;
    let by_stream = client
        .read_stream(ReadStream::forwards(stream.clone()))
        .await
        .unwrap();
    assert_eq!(by_stream.len(), acked.len());
    fresh.stop();
    assert_eq!(
        served.len(),
        acked.len(),
        "a fresh process served {} events, {} were acknowledged",
        served.len(),
        acked.len()
    );
    assert_eq!(served, acked, "a fresh process served other events");
    assert!(read_marker(&data).unwrap().is_none(), "the marker stayed");

    // Without the mount: the backing directory alone, as after a reboot.
    mounted.unmount();
    let store = backing.join("store");
    let (engine, recovery) =
        factum_engine::Engine::open_with(&store, factum_engine::EngineConfig::default()).unwrap();
    assert!(recovery.fsync_cut.is_none(), "{:?}", recovery.fsync_cut);
    let on_disk_events = user_events(&engine).await;
    engine.close().unwrap();
    drop(engine);
    assert_eq!(on_disk_events, acked, "the backing directory lost events");
    let report = factum_engine::verify(&store).unwrap();
    assert!(report.ok(), "{:?}", report.faults);
    println!(
        "FUSE-OK acknowledged={} dropped_bytes={} dropped_writes={} backing_len_after_fault={} fresh_process_served={} backing_holds={}",
        acked.len(),
        fault.dropped_bytes,
        fault.dropped_writes,
        fault.backing_len,
        served.len(),
        on_disk_events.len()
    );
}

/// Runs the child's `case` in a private mount namespace.
fn run_case(test: &str, case: &str) {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let child_args = ["fuse_child", "--exact", "--nocapture", "--test-threads=1"];
    let skip = |why: String| {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} cannot run under CI=true: {why}"
        );
        eprintln!("SKIPPED: {test}: {why}");
    };
    let mut out = Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(&exe)
        .args(child_args)
        .env("FACTUM_FUSE_CHILD", dir.path())
        .env("FACTUM_FUSE_CASE", case)
        .output();
    let no_namespace = match &out {
        Err(e) => Some(format!("cannot run unshare: {e}")),
        Ok(o) if !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("unshare:") => {
            Some(String::from_utf8_lossy(&o.stderr).trim().to_owned())
        }
        Ok(_) => None,
    };
    if let Some(why) = no_namespace {
        // The child's guard still unmounts.
        eprintln!("no private mount namespace ({why}); mounting in this one");
        out = Command::new(&exe)
            .args(child_args)
            .env("FACTUM_FUSE_CHILD", dir.path())
            .env("FACTUM_FUSE_CASE", case)
            .output();
    }
    let out = out.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(CANNOT_MOUNT) {
        let why = stdout
            .lines()
            .find(|l| l.starts_with("CANNOT-MOUNT"))
            .unwrap_or("cannot mount");
        return skip(why.to_owned());
    }
    assert!(
        out.status.success() && stdout.contains("FUSE-OK"),
        "the child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for line in stderr.lines().chain(stdout.lines()).filter(|l| {
        l.starts_with("FUSE-")
            || l.contains(" acknowledged; the fault")
            || l.starts_with("the truncation failed")
            || l.starts_with("the engine cut")
    }) {
        eprintln!("{line}");
    }
}

#[test]
fn a_failed_fsync_on_fuse_loses_no_acknowledged_event_and_serves_no_dropped_one() {
    run_case(
        "a_failed_fsync_on_fuse_loses_no_acknowledged_event_and_serves_no_dropped_one",
        "plain",
    );
}

#[test]
fn when_the_cut_fails_too_the_marker_keeps_the_page_cache_from_serving_dropped_bytes() {
    run_case(
        "when_the_cut_fails_too_the_marker_keeps_the_page_cache_from_serving_dropped_bytes",
        "dead",
    );
}

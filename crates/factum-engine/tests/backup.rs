//! Online backup and restore (issue 17, ADR 32): a backup taken while
//! writers append holds every event acknowledged before it started,
//! restores into a store that passes `verify` and serves, and a second
//! backup into the same directory copies only what is new.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use factum_core::{EventData, EventStore, ExpectedRevision, ReadAll, StreamName, Uuid};
use factum_engine::{restore, verify, Engine, EngineConfig};

fn config() -> EngineConfig {
    EngineConfig {
        // Several segments, so a backup has sealed ones and an active one.
        segment_bytes: 64 * 1024,
        ..EngineConfig::default()
    }
}

/// Appends until `stop`, recording each acknowledged event id.
async fn writer(engine: Engine, w: u32, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<Uuid>>>) {
    let stream = StreamName::new(format!("account-{w}")).unwrap();
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let e = EventData::json(
            "Deposited",
            &serde_json::json!({ "w": w, "i": i, "pad": "x".repeat(200) }),
        )
        .unwrap();
        let id = e.id;
        engine
            .append(stream.clone(), ExpectedRevision::Any, vec![e])
            .await
            .unwrap();
        acked.lock().unwrap().push(id);
        i += 1;
    }
}

async fn ids_in(dir: &std::path::Path) -> (Vec<Uuid>, u64) {
    let engine = Engine::open_with(dir, config()).unwrap().0;
    let mut ids = Vec::new();
    let mut last = 0;
    let mut from = factum_core::Position(0);
    loop {
        let page = engine
            .read_all(ReadAll::forwards().from_position(from).max_count(4096))
            .await
            .unwrap();
        let Some(e) = page.last() else { break };
        last = e.position.0;
        from = factum_core::Position(last + 1);
        ids.extend(page.iter().map(|e| e.id));
    }
    engine.close().unwrap();
    (ids, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_every_acknowledged_event_and_increments() {
    let root = tempfile::tempdir().unwrap();
    let (data, dest, restored) = (
        root.path().join("data"),
        root.path().join("backup"),
        root.path().join("restored"),
    );
    let engine = Engine::open_with(&data, config()).unwrap().0;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(writer(engine.clone(), w, stop.clone(), acked.clone())))
        .collect();
    while acked.lock().unwrap().len() < 2000 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Everything acknowledged before the backup starts must be in it.
    let before: Vec<Uuid> = acked.lock().unwrap().clone();
    let e = engine.clone();
    let d = dest.clone();
    let first = tokio::task::spawn_blocking(move || e.backup(&d))
        .await
        .unwrap()
        .unwrap();
    let during = acked.lock().unwrap().len();
    assert!(
        first.files >= 2,
        "sealed segments and the active one: {first:?}"
    );
    assert_eq!(first.files_copied, first.files);
    assert_eq!(first.bytes_copied, first.bytes_total);
    assert!(first.position.0 >= before.len() as u64, "{first:?}");

    restore(&dest, &restored, false).unwrap();
    let report = verify(&restored).unwrap();
    assert!(report.ok(), "{report:?}");
    let (ids, last) = ids_in(&restored).await;
    assert_eq!(
        last, first.position.0,
        "the backup ends at its reported position"
    );
    let present: HashSet<Uuid> = ids.iter().copied().collect();
    let missing = before.iter().filter(|id| !present.contains(id)).count();
    assert_eq!(
        missing, 0,
        "acknowledged before the backup started, missing from it"
    );
    eprintln!(
        "backup under load: {} acked before, {} events in the backup ({} acked by its end), {} files, {} bytes",
        before.len(),
        ids.len(),
        during,
        first.files,
        first.bytes_total
    );

    // More writes, then a second backup into the same directory.
    while acked.lock().unwrap().len() < during + 1000 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let all: Vec<Uuid> = acked.lock().unwrap().clone();
    let e = engine.clone();
    let d = dest.clone();
    let second = tokio::task::spawn_blocking(move || e.backup(&d))
        .await
        .unwrap()
        .unwrap();
    assert!(
        second.files_copied < second.files && second.bytes_copied < second.bytes_total,
        "only new data is copied: {second:?}"
    );
    eprintln!("incremental backup: {second:?}");

    // A restore never replaces a store unless asked to.
    let err = restore(&dest, &restored, false).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    restore(&dest, &restored, true).unwrap();
    assert!(verify(&restored).unwrap().ok());
    let (ids, _) = ids_in(&restored).await;
    assert_eq!(
        ids.len(),
        all.len(),
        "every acknowledged event after the writers stopped"
    );
    // The restored store serves appends.
    let r = Engine::open_with(&restored, config()).unwrap().0;
    r.append(
        StreamName::new("after-restore").unwrap(),
        ExpectedRevision::NoStream,
        vec![EventData::json("Opened", &serde_json::json!({})).unwrap()],
    )
    .await
    .unwrap();
    r.close().unwrap();
    engine.close().unwrap();
}

#[test]
fn a_backup_never_goes_into_a_store() {
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("a");
    let b = root.path().join("b");
    let ea = Engine::open_with(&a, config()).unwrap().0;
    let eb = Engine::open_with(&b, config()).unwrap().0;
    let err = ea.backup(&b).unwrap_err();
    assert!(err.to_string().contains("holds a store"), "{err}");
    drop(eb);
    let err = restore(&a, &root.path().join("c"), false).unwrap_err();
    assert!(err.to_string().contains("BACKUP.json"), "{err}");
}

/// A directory holding a backup of another store whose segments have the
/// same names and lengths is not trusted: every segment is copied again.
#[tokio::test]
async fn a_backup_of_another_store_is_not_taken_for_this_one() {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("backup");
    let mut reports = Vec::new();
    for name in ["a", "b"] {
        let dir = root.path().join(name);
        let engine = Engine::open_with(&dir, config()).unwrap().0;
        // Same shape in both stores: same segment names and lengths.
        for i in 0..400u32 {
            let e = EventData::json(
                "Same",
                &serde_json::json!({ "i": i, "pad": "y".repeat(300) }),
            )
            .unwrap();
            engine
                .append(
                    StreamName::new("s-1").unwrap(),
                    ExpectedRevision::Any,
                    vec![e],
                )
                .await
                .unwrap();
        }
        reports.push(engine.backup(&dest).unwrap());
        engine.close().unwrap();
    }
    assert_eq!(reports[0].bytes_total, reports[1].bytes_total, "same shape");
    assert_eq!(
        reports[1].files_copied, reports[1].files,
        "every segment of the second store copied: {:?}",
        reports[1]
    );
    let restored = root.path().join("restored");
    restore(&dest, &restored, false).unwrap();
    assert!(verify(&restored).unwrap().ok());
}

/// Rewrites, in the closed store in `dir`, the one record whose data holds
/// `marker` so that it holds `replacement` (same length), fixing the
/// record's and its frame's CRC32C, into a new file renamed over the
/// segment: a same-length rewrite, as re-encryption or compression at an
/// equal size would make. Returns the segment's file name.
fn rewrite_same_length(dir: &std::path::Path, marker: &[u8], replacement: &[u8]) -> String {
    use factum_engine::format::{FRAME_HEADER_LEN, FRAME_TRAILER_LEN, SEGMENT_HEADER_LEN};
    assert_eq!(marker.len(), replacement.len());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("seg") {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) else {
            continue;
        };
        // The frame around `at`, and the record in it.
        let mut frame = SEGMENT_HEADER_LEN;
        loop {
            let len = u32::from_le_bytes(bytes[frame + 4..frame + 8].try_into().unwrap()) as usize;
            if at < frame + len {
                let mut record = frame + FRAME_HEADER_LEN;
                loop {
                    let rlen =
                        u32::from_le_bytes(bytes[record..record + 4].try_into().unwrap()) as usize;
                    if at < record + rlen {
                        bytes[at..at + marker.len()].copy_from_slice(replacement);
                        let crc = crc32c::crc32c(&bytes[record + 8..record + rlen]);
                        bytes[record + 4..record + 8].copy_from_slice(&crc.to_le_bytes());
                        break;
                    }
                    record += rlen;
                }
                let body = frame + len - FRAME_TRAILER_LEN;
                let crc = crc32c::crc32c(&bytes[frame..body]);
                bytes[body..body + 4].copy_from_slice(&crc.to_le_bytes());
                break;
            }
            frame += len;
        }
        let tmp = path.with_extension("seg.same-length");
        std::fs::write(&tmp, &bytes).unwrap();
        std::fs::File::open(&tmp).unwrap().sync_all().unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        return path.file_name().unwrap().to_str().unwrap().to_owned();
    }
    panic!("no segment holds the marker");
}

/// ADR 40: a backup carries the index snapshot (a restore opens without
/// rebuilding the index: it replays only the log after the snapshot's
/// checkpoint) and a SHA-256 per file; a sealed segment rewritten at the
/// same length between two incremental backups is found by its checksum
/// and copied again, the others are not; a damaged backup file is refused
/// by restore, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_carry_the_index_and_checksums_that_catch_same_length_rewrites() {
    let root = tempfile::tempdir().unwrap();
    let (data, dest) = (root.path().join("data"), root.path().join("backup"));
    let marker = b"MARKER-before-rewrite-0001";
    let engine = Engine::open_with(&data, config()).unwrap().0;
    let marked = StreamName::new("marked-1").unwrap();
    engine
        .append(
            marked.clone(),
            ExpectedRevision::NoStream,
            vec![EventData::binary("Marked", marker.to_vec())],
        )
        .await
        .unwrap();
    for i in 0..600u32 {
        let e = EventData::json(
            "Filled",
            &serde_json::json!({ "i": i, "pad": "f".repeat(300) }),
        )
        .unwrap();
        engine
            .append(
                StreamName::new(format!("fill-{}", i % 7)).unwrap(),
                ExpectedRevision::Any,
                vec![e],
            )
            .await
            .unwrap();
    }
    let first = engine.backup(&dest).unwrap();
    assert!(first.files >= 3, "{first:?}");
    assert!(first.index_bytes > 0, "{first:?}");
    let manifest = factum_engine::backup::read_manifest(&dest).unwrap();
    assert_eq!(manifest.version, 2);
    assert!(manifest
        .segments
        .iter()
        .all(|f| f.sha256.is_some() && f.source.is_some()));
    assert!(dest.join("index.snapshot.redb").exists());
    engine.close().unwrap();
    drop(engine);

    // Restored from the first backup: the index is the snapshot's, not a
    // rebuild (only the frames after its checkpoint are replayed).
    let restored = root.path().join("restored-1");
    let r = restore(&dest, &restored, false).unwrap();
    assert_eq!(r.index_bytes, first.index_bytes);
    assert!(restored.join("index.redb").exists());
    let (reopened, recovery) = Engine::open_with(&restored, config()).unwrap();
    assert_eq!(
        recovery.frames_replayed, 0,
        "the snapshot indexes the whole backup: {recovery:?}"
    );
    let events = reopened
        .read_stream(factum_core::ReadStream::forwards(marked.clone()))
        .await
        .unwrap();
    assert_eq!(&events[0].data[..], &marker[..]);
    reopened.close().unwrap();
    drop(reopened);
    assert!(verify(&restored).unwrap().ok());

    // A same-length rewrite of a sealed segment, then an incremental backup.
    let replacement = b"REWRITTEN-same-length-0001";
    let changed = rewrite_same_length(&data, marker, replacement);
    let engine = Engine::open_with(&data, config()).unwrap().0;
    let second = engine.backup(&dest).unwrap();
    engine.close().unwrap();
    drop(engine);
    eprintln!("after a same-length rewrite of {changed}: {second:?}");
    assert_eq!(second.files, first.files, "{second:?}");
    assert!(second.files_checked >= 1, "{second:?}");
    assert!(
        second.files_copied >= 1 && second.files_copied < second.files,
        "the rewritten segment, not every one: {second:?}"
    );
    let after = factum_engine::backup::read_manifest(&dest).unwrap();
    for (was, now) in manifest.segments.iter().zip(&after.segments) {
        assert_eq!((&was.name, was.bytes), (&now.name, now.bytes));
        assert_eq!(
            was.sha256 != now.sha256,
            now.name == changed,
            "only {changed} changed: {was:?} {now:?}"
        );
    }
    let restored = root.path().join("restored-2");
    restore(&dest, &restored, false).unwrap();
    assert!(verify(&restored).unwrap().ok());
    let reopened = Engine::open_with(&restored, config()).unwrap().0;
    let events = reopened
        .read_stream(factum_core::ReadStream::forwards(marked))
        .await
        .unwrap();
    assert_eq!(
        &events[0].data[..],
        &replacement[..],
        "the rewritten version"
    );
    reopened.close().unwrap();
    drop(reopened);

    // A damaged backup file is refused, by name.
    let victim = dest.join(&changed);
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    let err = restore(&dest, &root.path().join("restored-3"), false).unwrap_err();
    assert!(
        err.to_string().contains("SHA-256") && err.to_string().contains(&changed),
        "{err}"
    );
}

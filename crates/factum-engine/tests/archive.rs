//! The archive tier (issue 18, ADR 43) on a local-directory archive (the
//! S3 archive passes the same trait's tests in `factum-archive`, and the
//! binary's in `factum-cli`): segments archived, evicted, read back
//! (`$all` both ways, streams, `$ce-`); a restart with segments in all
//! three places (local only, local and archived, archived only); an index
//! rebuilt through the archive; verify with and without it; a backup that
//! copies archived segments whole and a restore that needs no archive; an unreachable archive fails naming the segment; a damaged or
//! missing archived copy is detected and uploaded again.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use factum_core::testkit::shaped::seed_shaped;
use factum_core::{
    Error, EventStore, ExpectedRevision, ReadAll, ReadStream, RecordedEvent, StreamName,
};
use factum_engine::{
    ArchiveOptions, Clock, CompressPolicy, Engine, EngineConfig, LocalArchive, Throttle,
};

fn config(clock: &Clock, archive: Option<&Path>) -> EngineConfig {
    EngineConfig {
        segment_bytes: 256 * 1024,
        index_flush_entries: 500,
        clock: clock.clone(),
        archive: archive
            .map(|a| Arc::new(LocalArchive::new(a).unwrap()) as Arc<dyn factum_engine::Archive>),
        archive_cache_bytes: 2 << 20,
        ..EngineConfig::default()
    }
}

async fn write(engine: &Engine, from: u64, n: u64) {
    let mut i = from;
    while i < from + n {
        let (stream, _) = seed_shaped(i);
        let k = (10 - i % 10).min(from + n - i);
        let events = (i..i + k).map(|j| seed_shaped(j).1).collect();
        engine
            .append(stream, ExpectedRevision::Any, events)
            .await
            .unwrap();
        i += k;
    }
}

fn show(e: &RecordedEvent) -> String {
    format!(
        "{} {} {} {} {} {:?} {:?}",
        e.position.0, e.stream, e.revision.0, e.event_type, e.id, e.data, e.metadata
    )
}

async fn dump(engine: &Engine) -> Vec<String> {
    let all = engine.read_all(ReadAll::forwards()).await.unwrap();
    let mut out: Vec<String> = all.iter().map(show).collect();
    let mut back = engine.read_all(ReadAll::backwards()).await.unwrap();
    back.reverse();
    assert_eq!(back.iter().map(show).collect::<Vec<_>>(), out);
    for s in [
        "order-0",
        "order-150",
        "account-2",
        "$ce-account",
        "$et-OrderPlaced",
    ] {
        let events = engine
            .read_stream(ReadStream::forwards(StreamName::new(s).unwrap()))
            .await
            .unwrap();
        out.extend(events.iter().map(show));
    }
    out
}

fn archive(engine: &Engine, evict_after: Option<Duration>) -> factum_engine::ArchiveReport {
    engine
        .archive_segments(ArchiveOptions { evict_after }, &AtomicBool::new(false))
        .unwrap()
}

fn segment_kinds(dir: &Path) -> (usize, usize) {
    let mut stubs = 0;
    let mut full = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with(".seg") {
            if e.metadata().unwrap().len() < 200 {
                stubs += 1;
            } else {
                full += 1;
            }
        }
    }
    (stubs, full)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_segments_read_back_from_three_places_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let arch = dir.path().join("archive");
    let clock = Clock::manual();
    let (engine, _) = Engine::open_with(&data, config(&clock, Some(&arch))).unwrap();
    write(&engine, 0, 4000).await;
    // Half the store compressed: archived segments of both kinds.
    let c = engine
        .compact(
            CompressPolicy::Sealed,
            Throttle::None,
            &AtomicBool::new(false),
        )
        .unwrap();
    assert!(c.compressed >= 3, "{c:?}");
    write(&engine, 4000, 2000).await;

    // Archived, kept local: nothing changes locally.
    let first = archive(&engine, None);
    assert!(first.uploaded >= 6, "{first:?}");
    assert_eq!(first.evicted, 0);
    let again = archive(&engine, None);
    assert_eq!(again.uploaded, 0, "{again:?}");
    assert_eq!(again.already_archived, first.uploaded);
    // Too recent to evict.
    let young = archive(&engine, Some(Duration::from_secs(3600)));
    assert_eq!(young.evicted, 0, "{young:?}");
    // An hour later, the segments sealed before are evicted; the ones the
    // next appends seal stay local (and are not archived yet: no run since).
    clock.advance(Duration::from_secs(2 * 3600));
    write(&engine, 6000, 100).await;
    let expected = dump(&engine).await;
    let local_before = engine.log_bytes().unwrap();
    let old = archive(&engine, Some(Duration::from_secs(3600)));
    assert!(old.evicted >= 6, "{old:?}");
    assert!(engine.log_bytes().unwrap() < local_before / 2);
    assert_eq!(dump(&engine).await[..], expected[..], "after eviction");
    write(&engine, 6100, 2000).await;
    let expected_all = dump(&engine).await;
    let (stubs, full) = segment_kinds(&data);
    assert!(stubs >= 6 && full >= 3, "stubs {stubs}, full {full}");
    engine.close().unwrap();
    drop(engine);

    // Verify: without the archive the archived segments are noted; with it
    // they are read and their objects checked.
    let v = factum_engine::verify(&data).unwrap();
    assert!(v.ok(), "{:?}", v.faults);
    assert_eq!(v.archived_segments, stubs);
    assert!(v
        .notes
        .iter()
        .any(|n| n.contains("lives only in the archive")));
    let archive_handle: Arc<dyn factum_engine::Archive> =
        Arc::new(LocalArchive::new(&arch).unwrap());
    let v = factum_engine::verify_with_archive(&data, Some(archive_handle.clone())).unwrap();
    assert!(v.ok(), "{:?}", v.faults);
    assert_eq!(v.archived_segments, stubs);
    // The listing: the evicted segments' objects, the copies of segments
    // archived and still local, nothing else.
    assert_eq!(v.archive_objects, stubs + v.archive_copies, "{:?}", v.notes);
    assert!(!v
        .notes
        .iter()
        .any(|n| n.contains("no segment of this store names")));
    // An object no segment names is reported (not a fault).
    std::fs::write(arch.join("99999999999999999999.seg.deadbeef"), b"stale").unwrap();
    let v = factum_engine::verify_with_archive(&data, Some(archive_handle.clone())).unwrap();
    assert!(v.ok(), "{:?}", v.faults);
    assert!(
        v.notes
            .iter()
            .any(|n| n.contains("99999999999999999999.seg.deadbeef") && n.contains("no segment")),
        "{:?}",
        v.notes
    );
    std::fs::remove_file(arch.join("99999999999999999999.seg.deadbeef")).unwrap();
    assert_eq!(v.events, 8100);

    // Restart: segments in all three places.
    let (engine, _) = Engine::open_with(&data, config(&clock, Some(&arch))).unwrap();
    assert_eq!(dump(&engine).await, expected_all, "after a restart");
    // A subscription from the start replays through the archive.
    let mut sub = engine
        .subscribe(factum_core::Subscribe::all(
            factum_core::SubscriptionStart::Beginning,
            None,
        ))
        .await
        .unwrap();
    let mut seen = 0;
    while seen < 8100 {
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(Some(Ok(factum_core::SubscriptionMessage::Event(_)))) => seen += 1,
            Ok(Some(Ok(_))) => {}
            other => panic!("subscription ended after {seen}: {other:?}"),
        }
    }
    drop(sub);
    // A backup copies the segments that live only in the archive whole,
    // from the archive (ADR 40's leftover): the restore needs no archive.
    let backup = dir.path().join("backup");
    let first = engine.backup(&backup).unwrap();
    assert!(first.files_copied >= stubs, "{first:?}");
    // Again into the same backup: the archived segments are not fetched.
    let again = engine.backup(&backup).unwrap();
    assert!(again.files_copied <= 1, "{again:?}");
    engine.close().unwrap();
    drop(engine);
    let restored = dir.path().join("restored");
    factum_engine::restore(&backup, &restored, false).unwrap();
    let v = factum_engine::verify(&restored).unwrap();
    assert!(v.ok(), "{:?}", v.faults);
    assert_eq!(v.archived_segments, 0, "the restore holds every segment");
    let (engine, _) = Engine::open_with(&restored, config(&clock, None)).unwrap();
    assert_eq!(
        dump(&engine).await,
        expected_all,
        "the restore, without the archive"
    );
    engine.close().unwrap();
    drop(engine);

    // The index rebuilt from the log, through the archive.
    std::fs::remove_file(data.join("index.redb")).unwrap();
    let (engine, _) = Engine::open_with(&data, config(&clock, Some(&arch))).unwrap();
    assert_eq!(dump(&engine).await, expected_all, "after an index rebuild");
    // Scavenge and compaction leave archived segments alone.
    let c = engine
        .compact(
            CompressPolicy::Sealed,
            Throttle::None,
            &AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(c.archive_only as usize, stubs, "{c:?}");
    let s = engine
        .scavenge(factum_engine::ScavengeOptions::default())
        .unwrap();
    assert_eq!(s.end, factum_engine::scavenge::ScavengeEnd::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_archive_fails_reads_naming_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let arch = dir.path().join("archive");
    let clock = Clock::manual();
    let (engine, _) = Engine::open_with(&data, config(&clock, Some(&arch))).unwrap();
    write(&engine, 0, 3000).await;
    let r = archive(&engine, Some(Duration::ZERO));
    assert!(r.evicted >= 2, "{r:?}");
    engine.close().unwrap();
    drop(engine);
    // The archive goes away (an unmounted disk, a network partition).
    let away = dir.path().join("archive-away");
    std::fs::rename(&arch, &away).unwrap();
    std::fs::create_dir(&arch).unwrap();
    let (engine, _) = Engine::open_with(&data, config(&clock, Some(&arch))).unwrap();
    match engine.read_all(ReadAll::forwards()).await {
        Err(Error::Unavailable { message, .. }) => {
            assert!(
                message.contains("segment 0") && message.contains("lives only in the archive"),
                "{message}"
            );
        }
        other => panic!("expected Unavailable, got {:?}", other.map(|v| v.len())),
    }
    // What is local still reads.
    let tail = engine
        .read_all(ReadAll::backwards().max_count(5))
        .await
        .unwrap();
    assert_eq!(tail.len(), 5);
    engine.close().unwrap();
    drop(engine);
    // Without any archive configured the error says so.
    let (engine, _) = Engine::open_with(&data, config(&clock, None)).unwrap();
    match engine.read_all(ReadAll::forwards()).await {
        Err(Error::Unavailable { message, .. }) => {
            assert!(message.contains("no archive is configured"), "{message}")
        }
        other => panic!("expected Unavailable, got {:?}", other.map(|v| v.len())),
    }
    engine.close().unwrap();
    drop(engine);
    // Back: everything reads.
    std::fs::remove_dir(&arch).unwrap();
    std::fs::rename(&away, &arch).unwrap();
    let (engine, _) = Engine::open_with(&data, config(&clock, Some(&arch))).unwrap();
    assert_eq!(
        engine.read_all(ReadAll::forwards()).await.unwrap().len(),
        3000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_archived_copy_is_detected_and_uploaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let arch = dir.path().join("archive");
    let clock = Clock::manual();
    let (engine, _) = Engine::open_with(&data, config(&clock, Some(&arch))).unwrap();
    write(&engine, 0, 3000).await;
    let r = archive(&engine, None);
    assert!(r.uploaded >= 2, "{r:?}");
    // An interrupted upload's leftover, a damaged object (same size) and a
    // lost journal (a kill before it was written).
    let objects: Vec<_> = std::fs::read_dir(&arch)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    std::fs::write(arch.join("00000000000000000000.seg.0.upload"), b"torn").unwrap();
    let victim = objects.iter().min().unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(victim, &bytes).unwrap();
    std::fs::remove_file(data.join(factum_engine::archiver::JOURNAL)).unwrap();
    let again = archive(&engine, Some(Duration::ZERO));
    assert_eq!(
        again.uploaded, 1,
        "the damaged copy is uploaded again: {again:?}"
    );
    assert_eq!(again.already_archived, r.uploaded - 1, "{again:?}");
    assert_eq!(again.evicted, r.uploaded);
    assert_eq!(
        engine.read_all(ReadAll::forwards()).await.unwrap().len(),
        3000
    );
    engine.close().unwrap();
    drop(engine);
    // Damage after eviction: verify --archive names the object; a read
    // is refused, never answered wrongly.
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[mid] ^= 1;
    std::fs::write(victim, &bytes).unwrap();
    let handle: Arc<dyn factum_engine::Archive> = Arc::new(LocalArchive::new(&arch).unwrap());
    let v = factum_engine::verify_with_archive(&data, Some(handle)).unwrap();
    assert!(
        v.faults.iter().any(|f| f.contains("checksum")),
        "{:?}",
        v.faults
    );
    let (engine, _) = Engine::open_with(&data, config(&clock, Some(&arch))).unwrap();
    assert!(engine.read_all(ReadAll::forwards()).await.is_err());
}

//! The run-encoded index (ADR 8): one entry per run of consecutive revisions
//! in one frame. Every read of a stream, its category and its event types
//! must give what the log holds, from any revision, both ways, with any
//! count, across frames, segments, flushes, reopen and rebuild.

use std::path::Path;

use factum_core::{
    Error, EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, RecordedEvent,
    StreamMetadata, StreamName, StreamRevision,
};
use factum_engine::index::{Index, Run, Walk};
use factum_engine::{Engine, EngineConfig};
use redb::ReadableDatabase;

fn config() -> EngineConfig {
    EngineConfig {
        // Small segments: batches end up in many frames and segments.
        segment_bytes: 16 * 1024,
        // Flushes in the middle: reads merge memtable and redb runs.
        index_flush_entries: 97,
        ..EngineConfig::default()
    }
}

fn ev(ty: &str, i: usize) -> EventData {
    EventData::json(
        ty,
        &serde_json::json!({ "i": i, "pad": "p".repeat(i % 50) }),
    )
    .unwrap()
}

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

/// Batches of mixed sizes and event types over two categories: the types
/// change inside batches, so `$et-` runs are split within frames.
async fn load(engine: &Engine) {
    let types = ["Opened", "Opened", "Moved", "Closed", "Moved", "Moved"];
    let mut k = 0;
    for round in 0..12 {
        for (s, n) in [
            ("order-1", 1 + round * 7 % 23),
            ("order-2", 3),
            ("cart-1", 40),
        ] {
            let events = (0..n)
                .map(|_| {
                    k += 1;
                    ev(types[(k / 5) % types.len()], k)
                })
                .collect();
            engine
                .append(name(s), ExpectedRevision::Any, events)
                .await
                .unwrap();
        }
    }
}

/// What a read of `stream` must return, from `$all` (the log in order).
fn model(all: &[RecordedEvent], stream: &str) -> Vec<(u64, RecordedEvent)> {
    let mut out = Vec::new();
    for e in all {
        let s = e.stream.as_str();
        let belongs = if let Some(cat) = stream.strip_prefix("$ce-") {
            e.stream.category() == Some(cat)
        } else if let Some(ty) = stream.strip_prefix("$et-") {
            e.event_type == ty && !s.starts_with('$')
        } else {
            s == stream
        };
        if belongs {
            let rev = if stream.starts_with('$') {
                out.len() as u64
            } else {
                e.revision.0
            };
            out.push((rev, e.clone()));
        }
    }
    out
}

/// Compares every start revision, both directions and several counts.
async fn check_stream(engine: &Engine, all: &[RecordedEvent], stream: &str) {
    let want = model(all, stream);
    assert!(!want.is_empty(), "{stream} has events");
    let last = want.last().unwrap().0;
    let is_link = stream.starts_with('$');
    let strip = |v: Vec<RecordedEvent>| -> Vec<(u64, RecordedEvent)> {
        v.into_iter()
            .map(|mut e| {
                let rev = match e.link.take() {
                    Some(l) => {
                        assert!(is_link);
                        assert_eq!(l.stream.as_str(), stream);
                        l.revision.0
                    }
                    None => e.revision.0,
                };
                (rev, e)
            })
            .collect()
    };
    for from in (0..=last + 1).step_by(((last as usize) / 40).max(1)) {
        for count in [1u64, 2, 5, 37, 600, u64::MAX] {
            let fwd = engine
                .read_stream(
                    ReadStream::forwards(name(stream))
                        .from_revision(StreamRevision(from))
                        .max_count(count),
                )
                .await
                .unwrap();
            let exp: Vec<_> = want
                .iter()
                .filter(|(r, _)| *r >= from)
                .take(count.min(usize::MAX as u64) as usize)
                .cloned()
                .collect();
            assert_eq!(
                strip(fwd),
                exp,
                "{stream} forwards from {from} count {count}"
            );
            let back = engine
                .read_stream(
                    ReadStream::backwards(name(stream))
                        .from_revision(StreamRevision(from))
                        .max_count(count),
                )
                .await
                .unwrap();
            let exp: Vec<_> = want
                .iter()
                .rev()
                .filter(|(r, _)| *r <= from)
                .take(count.min(usize::MAX as u64) as usize)
                .cloned()
                .collect();
            assert_eq!(
                strip(back),
                exp,
                "{stream} backwards from {from} count {count}"
            );
        }
    }
}

const STREAMS: [&str; 8] = [
    "order-1",
    "order-2",
    "cart-1",
    "$ce-order",
    "$ce-cart",
    "$et-Opened",
    "$et-Moved",
    "$et-Closed",
];

async fn check_all_streams(engine: &Engine) -> Vec<RecordedEvent> {
    let all = engine.read_all(ReadAll::forwards()).await.unwrap();
    for s in STREAMS {
        check_stream(engine, &all, s).await;
    }
    all
}

fn verify_ok(dir: &Path) -> factum_engine::VerifyReport {
    let report = factum_engine::verify(dir).unwrap();
    assert!(report.ok(), "{:?}", report.faults);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_read_like_the_log_across_frames_segments_flushes_and_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = Engine::open_with(dir.path(), config()).unwrap();
    load(&engine).await;
    // Memtable and redb mixed.
    let all = check_all_streams(&engine).await;
    engine.close().unwrap();
    drop(engine);
    let segments = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert!(segments > 5, "want many segments, got {segments}");
    let written = verify_ok(dir.path());
    // One entry per run, far fewer than one per event and link.
    assert!(
        written.index_entries * 4 < written.index_revisions,
        "{written:?}"
    );
    // Reopened: everything from redb.
    let (engine, _) = Engine::open_with(dir.path(), config()).unwrap();
    assert_eq!(check_all_streams(&engine).await, all);
    engine.close().unwrap();
    drop(engine);
    // Rebuilt from the log by recovery: the same index as the writer made.
    std::fs::remove_file(dir.path().join("index.redb")).unwrap();
    let (engine, rec) = Engine::open_with(dir.path(), config()).unwrap();
    assert!(rec.frames_replayed > 0);
    assert_eq!(check_all_streams(&engine).await, all);
    engine.close().unwrap();
    drop(engine);
    let rebuilt = verify_ok(dir.path());
    assert_eq!(
        (
            rebuilt.index_entries,
            rebuilt.index_revisions,
            rebuilt.streams
        ),
        (
            written.index_entries,
            written.index_revisions,
            written.streams
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_append_is_one_run_per_stream_category_and_type_stretch() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path()).unwrap();
        let types = ["A", "A", "B", "B", "B", "A"];
        let events = types.iter().enumerate().map(|(i, t)| ev(t, i)).collect();
        engine
            .append(name("acct-1"), ExpectedRevision::NoStream, events)
            .await
            .unwrap();
        engine.close().unwrap();
    }
    // acct-1: 1 run; $ce-acct: 1 run; $et-A: 2 runs (0-1, then 5); $et-B: 1 run.
    let report = verify_ok(dir.path());
    assert_eq!((report.index_entries, report.index_revisions), (5, 18));
    let index = Index::open(dir.path(), 1 << 20).unwrap();
    let id = |s: &str| index.stream(s).unwrap().unwrap().id;
    let runs = |s: &str| index.runs(id(s), 0, 0, Walk::Up, 1000).unwrap();
    let stream = runs("acct-1");
    assert_eq!(stream.len(), 1);
    assert_eq!((stream[0].0, stream[0].1.count), (0, 6));
    assert_eq!(runs("$ce-acct"), stream);
    let a = runs("$et-A");
    assert_eq!(
        a.iter()
            .map(|(f, r)| (*f, r.position, r.count))
            .collect::<Vec<_>>(),
        vec![(0, 0, 2), (2, 5, 1)]
    );
    assert_eq!(
        runs("$et-B")
            .iter()
            .map(|(f, r)| (*f, r.position, r.count))
            .collect::<Vec<_>>(),
        vec![(0, 2, 3)]
    );
    // The runs' bytes add up to the stream run's.
    let b = runs("$et-B")[0].1.bytes;
    assert_eq!(a[0].1.bytes + b + a[1].1.bytes, stream[0].1.bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_deletes_cut_runs_in_the_middle() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let s = name("job-1");
    let batch = |n: usize, base: usize| (0..n).map(|i| ev("Step", base + i)).collect::<Vec<_>>();
    engine
        .append(s.clone(), ExpectedRevision::Any, batch(10, 0))
        .await
        .unwrap();
    engine
        .append(s.clone(), ExpectedRevision::Any, batch(10, 10))
        .await
        .unwrap();
    let revs = |v: Vec<RecordedEvent>| v.iter().map(|e| e.revision.0).collect::<Vec<_>>();
    // $maxCount inside the second run.
    engine
        .set_stream_metadata(
            s.clone(),
            ExpectedRevision::Any,
            StreamMetadata {
                max_count: Some(7),
                ..StreamMetadata::default()
            },
        )
        .await
        .unwrap();
    let fwd = engine
        .read_stream(ReadStream::forwards(s.clone()))
        .await
        .unwrap();
    assert_eq!(revs(fwd), (13..20).collect::<Vec<_>>());
    let back = engine
        .read_stream(ReadStream::backwards(s.clone()).max_count(100))
        .await
        .unwrap();
    assert_eq!(revs(back), (13..20).rev().collect::<Vec<_>>());
    let from_old = engine
        .read_stream(
            ReadStream::forwards(s.clone())
                .from_revision(StreamRevision(2))
                .max_count(3),
        )
        .await
        .unwrap();
    assert_eq!(revs(from_old), vec![13, 14, 15]);
    // $tb (truncate before) inside the first run.
    engine
        .set_stream_metadata(
            s.clone(),
            ExpectedRevision::Any,
            StreamMetadata {
                truncate_before: Some(4),
                ..StreamMetadata::default()
            },
        )
        .await
        .unwrap();
    let fwd = engine
        .read_stream(ReadStream::forwards(s.clone()))
        .await
        .unwrap();
    assert_eq!(revs(fwd), (4..20).collect::<Vec<_>>());
    let back = engine
        .read_stream(
            ReadStream::backwards(s.clone())
                .from_revision(StreamRevision(12))
                .max_count(100),
        )
        .await
        .unwrap();
    assert_eq!(revs(back), (4..=12).rev().collect::<Vec<_>>());
    // Soft delete, then a new life: revisions continue in a new run.
    engine
        .delete_stream(s.clone(), ExpectedRevision::Any)
        .await
        .unwrap();
    engine
        .append(s.clone(), ExpectedRevision::Any, batch(5, 20))
        .await
        .unwrap();
    let fwd = engine
        .read_stream(ReadStream::forwards(s.clone()))
        .await
        .unwrap();
    assert_eq!(revs(fwd), (20..25).collect::<Vec<_>>());
    // Tombstone: no entry of its own; the stream is gone, its links stay.
    engine
        .tombstone_stream(s.clone(), ExpectedRevision::Any)
        .await
        .unwrap();
    assert!(matches!(
        engine.read_stream(ReadStream::forwards(s.clone())).await,
        Err(Error::StreamDeleted { .. })
    ));
    let ce = engine
        .read_stream(ReadStream::backwards(name("$ce-job")).max_count(6))
        .await
        .unwrap();
    assert_eq!(
        ce.iter()
            .map(|e| (e.link.as_ref().unwrap().revision.0, e.revision.0))
            .collect::<Vec<_>>(),
        vec![(24, 24), (23, 23), (22, 22), (21, 21), (20, 20), (19, 19)]
    );
    engine.close().unwrap();
    drop(engine);
    verify_ok(dir.path());
}

/// Index damage redb cannot notice (a wrong but well-formed run) is caught
/// by reads and by `verify`, never returned as data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_run_is_refused_by_reads_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path()).unwrap();
        for (s, n) in [("acct-1", 5), ("acct-2", 4), ("acct-1", 3)] {
            let events = (0..n).map(|i| ev("Deposited", i)).collect();
            engine
                .append(name(s), ExpectedRevision::Any, events)
                .await
                .unwrap();
        }
        engine.close().unwrap();
    }
    verify_ok(dir.path());
    let index_file = dir.path().join("index.redb");
    let good = std::fs::read(&index_file).unwrap();
    let damage = |f: &dyn Fn(u64, Run) -> (u64, Run)| {
        std::fs::write(&index_file, &good).unwrap();
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        let id = index.stream("acct-1").unwrap().unwrap().id;
        let (first, run) = index.runs(id, 0, 0, Walk::Up, 1).unwrap()[0];
        let (first, run) = f(first, run);
        let mut changes = factum_engine::overlay::Changes {
            checkpoint: index.checkpoint(),
            ..Default::default()
        };
        changes.runs.push(((id, first), run));
        index.apply(changes);
        index.flush().unwrap();
    };
    let cases: [&dyn Fn(u64, Run) -> (u64, Run); 4] = [
        // Longer than the frame's records of the stream.
        &|f, r| {
            (
                f,
                Run {
                    count: r.count + 2,
                    ..r
                },
            )
        },
        // Shifted by one position (and record).
        &|f, r| {
            (
                f,
                Run {
                    position: r.position + 1,
                    ..r
                },
            )
        },
        // Wrong byte length.
        &|f, r| {
            (
                f,
                Run {
                    bytes: r.bytes - 1,
                    ..r
                },
            )
        },
        // Pointing at another stream's records.
        &|f, r| {
            (
                f,
                Run {
                    position: 5,
                    loc: factum_engine::log::Loc(r.loc.0 + r.bytes as u64 + 36),
                    ..r
                },
            )
        },
    ];
    for (k, case) in cases.iter().enumerate() {
        damage(*case);
        let report = factum_engine::verify(dir.path()).unwrap();
        assert!(!report.ok(), "case {k}: verify must find the wrong run");
        let engine = Engine::open(dir.path()).unwrap();
        for read in [
            ReadStream::forwards(name("acct-1")),
            ReadStream::backwards(name("acct-1")),
        ] {
            match engine.read_stream(read).await {
                Err(Error::Corrupt { .. }) => {}
                other => panic!("case {k}: expected Corrupt, got {other:?}"),
            }
        }
        drop(engine);
    }
}

/// A damaged byte in a record is caught by every read that returns it,
/// whole-run and partial, both ways; reads that do not return it succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_is_caught_by_whole_and_partial_run_reads() {
    let dir = tempfile::tempdir().unwrap();
    let s = name("acct-1");
    {
        let engine = Engine::open(dir.path()).unwrap();
        for batch in 0..3 {
            let events = (0..5)
                .map(|i| {
                    EventData::json(
                        "Deposited",
                        &serde_json::json!({ "marker": format!("XYZZY-{batch}-{i}") }),
                    )
                    .unwrap()
                })
                .collect();
            engine
                .append(s.clone(), ExpectedRevision::Any, events)
                .await
                .unwrap();
        }
        engine.close().unwrap();
    }
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    // Revision 7: the third event of the second append.
    let at = bytes.windows(9).position(|w| w == b"XYZZY-1-2").unwrap();
    bytes[at + 6] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let read = |r: ReadStream| {
        let engine = engine.clone();
        async move { engine.read_stream(r).await }
    };
    for r in [
        ReadStream::forwards(s.clone()),
        ReadStream::backwards(s.clone()),
        ReadStream::forwards(s.clone())
            .from_revision(StreamRevision(5))
            .max_count(5),
        ReadStream::forwards(s.clone())
            .from_revision(StreamRevision(6))
            .max_count(2),
        ReadStream::backwards(s.clone())
            .from_revision(StreamRevision(8))
            .max_count(2),
        ReadStream::backwards(s.clone())
            .from_revision(StreamRevision(7))
            .max_count(1),
    ] {
        match read(r.clone()).await {
            Err(Error::Corrupt { file, .. }) => assert_eq!(file, seg, "{r:?}"),
            other => panic!("{r:?}: expected Corrupt, got {other:?}"),
        }
    }
    // Reads that do not include the damaged event still work.
    let revs = |v: Vec<RecordedEvent>| v.iter().map(|e| e.revision.0).collect::<Vec<_>>();
    let ok = read(ReadStream::forwards(s.clone()).from_revision(StreamRevision(8)))
        .await
        .unwrap();
    assert_eq!(revs(ok), (8..15).collect::<Vec<_>>());
    let ok = read(ReadStream::forwards(s.clone()).max_count(7))
        .await
        .unwrap();
    assert_eq!(revs(ok), (0..7).collect::<Vec<_>>());
    let ok = read(
        ReadStream::backwards(s.clone())
            .from_revision(StreamRevision(6))
            .max_count(100),
    )
    .await
    .unwrap();
    assert_eq!(revs(ok), (0..7).rev().collect::<Vec<_>>());
}

/// A store whose index has the old format (version 1): `verify` leaves it
/// alone and says so; opening the store rebuilds it from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_format_index_is_rebuilt_on_open_and_left_alone_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let all = {
        let engine = Engine::open(dir.path()).unwrap();
        load(&engine).await;
        let all = engine.read_all(ReadAll::forwards()).await.unwrap();
        engine.close().unwrap();
        all
    };
    let index_file = dir.path().join("index.redb");
    std::fs::remove_file(&index_file).unwrap();
    {
        // A version-1 index, as an older build leaves it.
        let db = redb::Database::create(&index_file).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let old: redb::TableDefinition<(u64, u64), (u64, u64)> =
                redb::TableDefinition::new("entries");
            tx.open_table(old).unwrap().insert((0, 0), (0, 64)).unwrap();
            let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            let mut meta = tx.open_table(meta).unwrap();
            meta.insert("version", 1).unwrap();
            meta.insert("next_position", all.len() as u64).unwrap();
        }
        tx.commit().unwrap();
    }
    let report = factum_engine::verify(dir.path()).unwrap();
    assert!(report.ok(), "{:?}", report.faults);
    assert!(
        report.notes.iter().any(|n| n.contains("version 1")),
        "{:?}",
        report.notes
    );
    // Verify left it as it was (redb may rewrite its own header on open).
    assert_eq!(
        factum_engine::index::stored_version_in(dir.path(), None).unwrap(),
        Some(1)
    );
    {
        let db = redb::Database::open(&index_file).unwrap();
        let tx = db.begin_read().unwrap();
        let old: redb::TableDefinition<(u64, u64), (u64, u64)> =
            redb::TableDefinition::new("entries");
        let row = tx.open_table(old).unwrap().get((0, 0)).unwrap().unwrap();
        assert_eq!(row.value(), (0, 64));
    }
    let (engine, rec) = Engine::open_with(dir.path(), config()).unwrap();
    assert!(rec.frames_replayed > 0);
    assert_eq!(check_all_streams(&engine).await, all);
    engine.close().unwrap();
    drop(engine);
    let report = verify_ok(dir.path());
    assert!(report.notes.is_empty(), "{:?}", report.notes);
}

/// Single-event appends of many writers at once share their write group's
/// frame (ADR 48): the log holds far fewer frames than appends, the index
/// one `$ce-` and one `$et-` run per frame rather than per append, and an
/// index rebuilt from the log is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_frames_and_category_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (writers, rounds) = (200usize, 5usize);
    let engine = Engine::open(dir.path()).unwrap();
    for round in 0..rounds {
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    engine
                        .append(
                            name(&format!("acct-{w}")),
                            ExpectedRevision::Any,
                            vec![ev("Booked", round * writers + w)],
                        )
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    let category = engine
        .read_stream(ReadStream::forwards(name("$ce-acct")))
        .await
        .unwrap();
    assert_eq!(category.len(), writers * rounds);
    engine.close().unwrap();
    drop(engine);
    let appends = (writers * rounds) as u64;
    let written = verify_ok(dir.path());
    assert!(written.frames * 2 < appends, "{written:?}");
    // Each stream: one run per append (its events are in different
    // groups); `$ce-acct` and `$et-Booked`: one run per frame at most.
    assert!(
        written.index_entries <= appends + 2 * written.frames,
        "{written:?}"
    );
    std::fs::remove_file(dir.path().join("index.redb")).unwrap();
    let (engine, _) = Engine::open_with(dir.path(), EngineConfig::default()).unwrap();
    let rebuilt = engine
        .read_stream(ReadStream::forwards(name("$ce-acct")))
        .await
        .unwrap();
    assert_eq!(rebuilt, category);
    engine.close().unwrap();
    drop(engine);
    let again = verify_ok(dir.path());
    assert_eq!(
        (again.index_entries, again.index_revisions, again.frames),
        (
            written.index_entries,
            written.index_revisions,
            written.frames
        )
    );
}

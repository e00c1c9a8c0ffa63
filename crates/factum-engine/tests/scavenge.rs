//! Scavenge (ADR 33): a store where a known fraction of the bytes is
//! hidden shrinks by that fraction (± 5 points); everything visible is the
//! same before and after, and `$all` then holds nothing hidden; streams
//! whose events all went keep their state; `verify` passes; a reopened
//! store (and one whose index is rebuilt from the log) serves the same.
//! `$maxAge` runs on a manual clock, no sleeping.
//!
//! `FACTUM_SCAVENGE_SCALE` (default 12) sets how many times the scenario's
//! streams are written.

use std::time::Duration;

use factum_core::testkit::visible::{visible_dump, write_hidden_and_visible, Scenario};
use factum_core::{
    EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, StreamName, StreamRevision,
};
use factum_engine::scavenge::ScavengeEnd;
use factum_engine::{Clock, Engine, EngineConfig, ScavengeOptions};

fn scale() -> u64 {
    std::env::var("FACTUM_SCAVENGE_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

pub fn config(clock: &Clock) -> EngineConfig {
    EngineConfig {
        segment_bytes: 128 * 1024,
        index_flush_entries: 500,
        clock: clock.clone(),
        ..EngineConfig::default()
    }
}

/// Writes the scenario, moves the clock past `$maxAge`, then writes
/// visible filler so that every hidden event lies in a sealed segment
/// behind the index checkpoint.
async fn populate(engine: &Engine, clock: &Clock, scale: u64) -> (Scenario, StreamName) {
    let sc = write_hidden_and_visible(engine, scale, 1000).await;
    clock.advance(Duration::from_secs(2 * 3600));
    let filler = StreamName::new("filler-1").unwrap();
    let bytes = 3 * engine.config().segment_bytes as usize;
    for _ in 0..bytes / (10 * 1100) {
        let events = (0..10)
            .map(|i| {
                EventData::json(
                    "Filled",
                    &serde_json::json!({"i": i, "pad": "y".repeat(1000)}),
                )
                .unwrap()
            })
            .collect();
        engine
            .append(filler.clone(), ExpectedRevision::Any, events)
            .await
            .unwrap();
    }
    (sc, filler)
}

/// What an append expects of a stream holding `n` events.
fn expect(n: u64) -> ExpectedRevision {
    match n {
        0 => ExpectedRevision::NoStream,
        n => ExpectedRevision::Exact(StreamRevision(n - 1)),
    }
}

fn all_streams(sc: &Scenario, filler: &StreamName) -> Vec<StreamName> {
    let mut v = sc.streams.clone();
    v.push(filler.clone());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scavenge_frees_the_hidden_fraction_and_keeps_everything_visible() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let (engine, _) = Engine::open_with(dir.path(), config(&clock)).unwrap();
    let (sc, filler) = populate(&engine, &clock, scale()).await;
    let streams = all_streams(&sc, &filler);
    let before = visible_dump(&engine, &streams).await;
    assert_ne!(
        before.all, before.all_raw,
        "the scenario hides events in $all"
    );
    let bytes_before = engine.log_bytes().unwrap();
    // Record header (64) per hidden event; stubs and frames are noise.
    let expected = (sc.hidden_bytes + 64 * sc.hidden_events) as f64 / bytes_before as f64;

    let status = engine.scavenge(ScavengeOptions::default()).unwrap();
    assert_eq!(status.end, ScavengeEnd::Completed, "{status:?}");
    let r = &status.report;
    assert!(r.segments_rewritten > 0 && r.events_removed > 0, "{r:?}");
    assert_eq!(engine.scavenge_last().unwrap().id, status.id);

    let bytes_after = engine.log_bytes().unwrap();
    let freed = (bytes_before - bytes_after) as f64 / bytes_before as f64;
    eprintln!(
        "scavenge: {bytes_before} → {bytes_after} bytes: freed {:.1} %, hidden {:.1} %; {r:?}",
        freed * 100.0,
        expected * 100.0
    );
    assert!(
        (freed - expected).abs() <= 0.05,
        "freed {freed:.3} of the log, expected {expected:.3} ± 0.05"
    );
    assert_eq!(r.bytes_freed(), bytes_before - bytes_after);

    let after = visible_dump(&engine, &streams).await;
    assert_eq!(after.streams, before.streams);
    assert_eq!(after.links, before.links);
    assert_eq!(after.all, before.all);
    // Nothing hidden is left: $all and the link streams as read are
    // exactly what their streams show.
    assert_eq!(after.all_raw, before.all);
    assert_eq!(after.links_raw, before.links);

    // A second scavenge finds nothing more.
    let again = engine.scavenge(ScavengeOptions::default()).unwrap();
    assert_eq!(again.report.events_removed, 0, "{:?}", again.report);

    // Streams whose events all went keep their state.
    let del = StreamName::new("del-0").unwrap();
    let age = StreamName::new("age-0").unwrap();
    let tomb = StreamName::new("tomb-0").unwrap();
    let one = || vec![EventData::json("Later", &serde_json::json!({})).unwrap()];
    let wrong = engine
        .append(
            del.clone(),
            ExpectedRevision::Exact(StreamRevision(3)),
            one(),
        )
        .await;
    assert!(wrong.is_err(), "a deleted stream keeps its last revision");
    let recreated = engine
        .append(
            del.clone(),
            ExpectedRevision::Exact(StreamRevision(9)),
            one(),
        )
        .await
        .unwrap();
    assert_eq!(recreated.revision, StreamRevision(10));
    let aged = engine
        .append(
            age.clone(),
            ExpectedRevision::Exact(StreamRevision(9)),
            one(),
        )
        .await
        .unwrap();
    assert_eq!(aged.revision, StreamRevision(10));
    assert!(engine
        .append(tomb.clone(), ExpectedRevision::Any, one())
        .await
        .is_err());
    engine.close().unwrap();
    drop(engine);

    let report = factum_engine::verify(dir.path()).unwrap();
    assert!(report.ok(), "verify: {:?}", report.faults);
    assert!(report.stubs > 0, "{report:?}");

    // Reopened, and with the index rebuilt from the log, it serves the same
    // (the stubs keep the streams' last revisions).
    let expected_after = {
        let (engine, _) = Engine::open_with(dir.path(), config(&clock)).unwrap();
        let d = visible_dump(&engine, &streams).await;
        engine.close().unwrap();
        d
    };
    std::fs::remove_file(dir.path().join("index.redb")).unwrap();
    let (engine, _) = Engine::open_with(dir.path(), config(&clock)).unwrap();
    let rebuilt = visible_dump(&engine, &streams).await;
    assert_eq!(rebuilt.streams, expected_after.streams);
    assert_eq!(rebuilt.all_raw, expected_after.all_raw);
    let aged = engine
        .append(
            age.clone(),
            ExpectedRevision::Exact(StreamRevision(10)),
            one(),
        )
        .await
        .unwrap();
    assert_eq!(aged.revision, StreamRevision(11));
    engine.close().unwrap();
    drop(engine);
    let report = factum_engine::verify(dir.path()).unwrap();
    assert!(report.ok(), "verify after rebuild: {:?}", report.faults);
}

/// `$all` after a scavenge has gaps: reads forwards and backwards, from a
/// position inside a gap, and a subscription from the start all agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_subscriptions_cross_the_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let (engine, _) = Engine::open_with(dir.path(), config(&clock)).unwrap();
    populate(&engine, &clock, 2).await;
    engine.scavenge(ScavengeOptions::default()).unwrap();
    let forwards = engine.read_all(ReadAll::forwards()).await.unwrap();
    let positions: Vec<u64> = forwards.iter().map(|e| e.position.0).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    let gap = positions
        .windows(2)
        .find(|w| w[1] > w[0] + 1)
        .expect("a gap")
        .to_vec();
    let mut backwards = engine.read_all(ReadAll::backwards()).await.unwrap();
    backwards.reverse();
    assert_eq!(backwards, forwards);
    // From inside the gap: the next event after it.
    let from = engine
        .read_all(
            ReadAll::forwards()
                .from_position(factum_core::Position(gap[0] + 1))
                .max_count(1),
        )
        .await
        .unwrap();
    assert_eq!(from[0].position.0, gap[1]);
    let back = engine
        .read_all(
            ReadAll::backwards()
                .from_position(factum_core::Position(gap[1] - 1))
                .max_count(1),
        )
        .await
        .unwrap();
    assert_eq!(back[0].position.0, gap[0]);
    // Pages of 7 from the start meet every event once.
    let mut paged = Vec::new();
    let mut next = factum_core::Position(0);
    loop {
        let page = engine
            .read_all(ReadAll::forwards().from_position(next).max_count(7))
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        next = factum_core::Position(last.position.0 + 1);
        paged.extend(page);
    }
    assert_eq!(paged, forwards);
    let mut sub = engine
        .subscribe(factum_core::Subscribe::all(
            factum_core::SubscriptionStart::Beginning,
            None,
        ))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < forwards.len() {
        let e = tokio::time::timeout(Duration::from_secs(20), sub.next_event())
            .await
            .expect("subscription delivers")
            .expect("open")
            .unwrap();
        seen.push(e);
    }
    assert_eq!(seen, forwards);
    // The category stream of a truncated stream starts after its gap.
    let ce = engine
        .read_stream(ReadStream::forwards(StreamName::new("$ce-count").unwrap()))
        .await
        .unwrap();
    assert_eq!(ce.len(), 4, "2 × 2 visible events of count-0 and count-1");
    engine.close().unwrap();
}

/// A scavenge runs while appends and reads go on; stopping it leaves a
/// consistent store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scavenge_online_with_appends_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let (engine, _) = Engine::open_with(dir.path(), config(&clock)).unwrap();
    let (sc, filler) = populate(&engine, &clock, 4).await;
    let streams = all_streams(&sc, &filler);
    let before = visible_dump(&engine, &streams).await;
    let writer = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let s = StreamName::new("live-1").unwrap();
            for i in 0..200u64 {
                let e = EventData::json("Live", &serde_json::json!({"i": i})).unwrap();
                engine.append(s.clone(), expect(i), vec![e]).await.unwrap();
                let read = engine
                    .read_stream(ReadStream::forwards(s.clone()))
                    .await
                    .unwrap();
                assert_eq!(read.len() as u64, i + 1);
            }
        })
    };
    let slow = ScavengeOptions {
        throttle: factum_engine::Throttle::Percent(50),
        ..ScavengeOptions::default()
    };
    let handle = engine.start_scavenge(slow).unwrap();
    assert!(
        engine.start_scavenge(ScavengeOptions::default()).is_err(),
        "one at a time"
    );
    assert!(engine.scavenge_current().is_some());
    writer.await.unwrap();
    let status = handle.join();
    assert_eq!(status.end, ScavengeEnd::Completed, "{status:?}");
    let after = visible_dump(&engine, &streams).await;
    assert_eq!(after.streams, before.streams);
    assert_eq!(after.all, before.all[..]);

    // Stopped at once: ends as stopped, the store is consistent.
    let handle = engine
        .start_scavenge(ScavengeOptions {
            throttle: factum_engine::Throttle::BytesPerSecond(1),
            ..ScavengeOptions::default()
        })
        .unwrap();
    assert!(engine.stop_scavenge(None));
    let status = handle.join();
    assert_eq!(status.end, ScavengeEnd::Stopped);
    engine.close().unwrap();
    drop(engine);
    let report = factum_engine::verify(dir.path()).unwrap();
    assert!(report.ok(), "verify: {:?}", report.faults);
}

/// A link line of the visible dump split into the event it resolves to and
/// the link's (stream, revision).
fn link_parts(line: &str) -> (&str, (&str, u64)) {
    let (event, via) = line.rsplit_once(" via ").expect("a link line");
    let (rev, stream) = via.split_once('@').unwrap();
    (event, (stream, rev.parse().unwrap()))
}

/// What clients see of `$ce-`/`$et-` revisions after a scavenge (ADR 40,
/// 47): the store keeps them, with the gaps the scavenge left, as
/// KurrentDB's link streams keep theirs — reopened, restored from an online
/// backup (which carries the index snapshot), and rebuilt from the log
/// (`factum reindex`, or losing `index.redb`), where the link records the
/// rewrite left give the revisions back; after a rebuild each link stream
/// also goes on at the revision it would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_revisions_survive_reopen_restore_and_a_rebuild_from_the_log() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let clock = Clock::manual();
    let (engine, _) = Engine::open_with(&dir, config(&clock)).unwrap();
    let (sc, filler) = populate(&engine, &clock, 2).await;
    let streams = all_streams(&sc, &filler);
    engine.scavenge(ScavengeOptions::default()).unwrap();
    let seen = visible_dump(&engine, &streams).await;
    // The scavenge left gaps in some link stream.
    let mut gaps = 0;
    let mut last: std::collections::HashMap<&str, u64> = Default::default();
    for l in &seen.links_raw {
        let (_, (stream, rev)) = link_parts(l);
        if let Some(prev) = last.insert(stream, rev) {
            gaps += (rev != prev + 1) as u32;
        } else {
            gaps += (rev != 0) as u32;
        }
    }
    assert!(gaps > 0, "the scavenge left no gap in a link stream");
    let backup = root.path().join("backup");
    engine.backup(&backup).unwrap();
    engine.close().unwrap();
    drop(engine);

    // Reopened: the same link revisions.
    let (engine, _) = Engine::open_with(&dir, config(&clock)).unwrap();
    assert_eq!(
        visible_dump(&engine, &streams).await.links_raw,
        seen.links_raw
    );
    engine.close().unwrap();
    drop(engine);
    // Restored from the backup (index snapshot): the same.
    let restored = root.path().join("restored");
    factum_engine::restore(&backup, &restored, false).unwrap();
    let (engine, _) = Engine::open_with(&restored, config(&clock)).unwrap();
    assert_eq!(
        visible_dump(&engine, &streams).await.links_raw,
        seen.links_raw
    );
    engine.close().unwrap();
    drop(engine);

    // Rebuilt from the log: the link records a rewrite leaves (ADR 47)
    // give every link its revision back.
    std::fs::remove_file(dir.join("index.redb")).unwrap();
    let (engine, _) = Engine::open_with(&dir, config(&clock)).unwrap();
    let rebuilt = visible_dump(&engine, &streams).await;
    assert_eq!(rebuilt.streams, seen.streams);
    assert_eq!(rebuilt.all_raw, seen.all_raw);
    assert_eq!(rebuilt.links_raw, seen.links_raw);
    // … and each link stream goes on where it was: a new event of every
    // category and type takes the same link revision in both stores.
    let (original, _) = Engine::open_with(&restored, config(&clock)).unwrap();
    let next_links = |engine: Engine| {
        let streams = streams.clone();
        async move {
            let mut out = Vec::new();
            for s in &streams {
                // Tombstoned streams refuse it, in both stores alike.
                let _ = engine
                    .append(
                        s.clone(),
                        ExpectedRevision::Any,
                        vec![EventData::json("Next", &serde_json::json!({})).unwrap()],
                    )
                    .await;
            }
            let dump = visible_dump(&engine, &streams).await;
            // The newest link of each link stream: its revision.
            let mut last: std::collections::BTreeMap<String, u64> = Default::default();
            for l in &dump.links_raw {
                let (_, (stream, rev)) = link_parts(l);
                last.insert(stream.to_string(), rev);
            }
            out.extend(last);
            engine.close().unwrap();
            out
        }
    };
    let after_rebuild = next_links(engine).await;
    let after_restore = next_links(original).await;
    assert!(!after_rebuild.is_empty());
    assert_eq!(after_rebuild, after_restore);
    assert!(factum_engine::verify(&dir).unwrap().ok());
}

/// A second scavenge removes more events from segments the first one
/// rewrote, and with them the first one's link records (stubs of events
/// that are not their stream's last): the lists they carried go into the
/// new link records, so an index rebuilt from the log still gives every
/// link its revision (ADR 47).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successive_scavenges_keep_link_revisions_through_a_rebuild() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let clock = Clock::manual();
    let (engine, _) = Engine::open_with(&dir, config(&clock)).unwrap();
    let (sc, filler) = populate(&engine, &clock, 2).await;
    let streams = all_streams(&sc, &filler);
    let first = engine.scavenge(ScavengeOptions::default()).unwrap();
    assert!(first.report.events_removed > 0, "{first:?}");
    // Streams the first scavenge kept whole keep their last three now.
    let mut trimmed = 0;
    for s in &streams {
        if s.as_str().starts_with("keep") || s.as_str().starts_with("again") {
            let m = factum_core::StreamMetadata {
                max_count: Some(3),
                ..Default::default()
            };
            engine
                .set_stream_metadata(s.clone(), ExpectedRevision::Any, m)
                .await
                .unwrap();
            trimmed += 1;
        }
    }
    assert!(trimmed > 0);
    let second = engine.scavenge(ScavengeOptions::default()).unwrap();
    assert!(second.report.events_removed > 0, "{second:?}");
    let seen = visible_dump(&engine, &streams).await;
    engine.close().unwrap();
    drop(engine);
    assert!(factum_engine::verify(&dir).unwrap().ok());

    std::fs::remove_file(dir.join("index.redb")).unwrap();
    let (engine, _) = Engine::open_with(&dir, config(&clock)).unwrap();
    let rebuilt = visible_dump(&engine, &streams).await;
    engine.close().unwrap();
    assert_eq!(rebuilt.streams, seen.streams);
    assert_eq!(rebuilt.all_raw, seen.all_raw);
    assert_eq!(rebuilt.links_raw, seen.links_raw);
}

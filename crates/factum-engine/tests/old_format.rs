//! Stores written in format version 1 (before segment feature flags and
//! group frames) keep opening: their segments are read as they are, new
//! frames in a version-1 segment stay version-1 frames, and the next
//! segment is created in the current version. A torn tail in a version-1
//! segment keeps the old, strict rule: any valid frame after the damage
//! makes open refuse.

use std::path::Path;

use bytes::Bytes;
use factum_core::{
    ContentType, Error, EventData, EventStore, ExpectedRevision, ReadAll, StreamName, Timestamp,
    Uuid,
};
use factum_engine::format::{
    encode_frame, SegmentHeader, StoredEvent, FEATURE_GROUP_FRAMES,
    FEATURE_PUBLIC_POSITIONS_FROM_ONE, FORMAT_VERSION, WRITTEN_FEATURES,
};
use factum_engine::{Engine, EngineConfig};

mod common;

/// Writes segment 0 of a version-1 store holding `frames` frames of two
/// events each, as the previous build wrote them (no index: open rebuilds
/// it). Returns the frames' offsets.
fn write_v1_store(dir: &Path, frames: u64) -> Vec<usize> {
    let header = SegmentHeader {
        version: 1,
        features: 0,
        number: 0,
        first_position: 0,
    };
    write_store(dir, header, frames)
}

/// Writes segment 0 with `header` and `frames` frames of two events each
/// (log positions from 0, as every build wrote them).
fn write_store(dir: &Path, header: SegmentHeader, frames: u64) -> Vec<usize> {
    let mut bytes = header.encode().to_vec();
    let stream = StreamName::new("order-1").unwrap();
    let mut offsets = Vec::new();
    for f in 0..frames {
        let events: Vec<StoredEvent> = (0..2)
            .map(|i| StoredEvent {
                position: f * 2 + i,
                revision: f * 2 + i,
                created: Timestamp(1_700_000_000_000_000),
                id: Uuid::new_v4(),
                content_type: ContentType::Json,
                flags: 0,
                stream: stream.clone(),
                event_type: "OrderPlaced".into(),
                data: Bytes::from(format!("{{\"n\":{}}}", f * 2 + i)),
                metadata: Bytes::new(),
            })
            .collect();
        offsets.push(bytes.len());
        // Every frame starts its own write group (group offset 0).
        encode_frame(&events, Timestamp(1_700_000_000_000_000), 0, &mut bytes);
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("{:020}.seg", 0)), bytes).unwrap();
    offsets
}

fn header_of(path: &Path) -> SegmentHeader {
    let bytes = std::fs::read(path).unwrap();
    SegmentHeader::decode(&bytes[..32]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_store_opens_takes_appends_and_rolls_into_the_current_version() {
    let dir = tempfile::tempdir().unwrap();
    write_v1_store(dir.path(), 10);
    let config = EngineConfig {
        segment_bytes: 4096,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir.path(), config.clone()).unwrap();
    let events = engine.read_all(ReadAll::forwards()).await.unwrap();
    assert_eq!(events.len(), 20);
    assert_eq!(events[19].data, Bytes::from("{\"n\":19}"));
    let s = StreamName::new("order-1").unwrap();
    for i in 0..40 {
        engine
            .append(
                s.clone(),
                ExpectedRevision::Exact(factum_core::StreamRevision(19 + i)),
                vec![EventData::json(
                    "OrderPaid",
                    &serde_json::json!({ "i": i, "pad": "x".repeat(200) }),
                )
                .unwrap()],
            )
            .await
            .unwrap();
    }
    engine.close().unwrap();
    drop(engine);
    let segments = common::segments(dir.path());
    assert!(segments.len() > 1, "no roll happened");
    assert_eq!(header_of(&segments[0]).version, 1);
    for seg in &segments[1..] {
        let h = header_of(seg);
        assert_eq!((h.version, h.features), (FORMAT_VERSION, WRITTEN_FEATURES));
    }
    let report = factum_engine::verify(dir.path()).unwrap();
    assert!(report.ok(), "{:?}", report.faults);
    let (engine, _) = Engine::open_with(dir.path(), config).unwrap();
    let events = engine.read_all(ReadAll::forwards()).await.unwrap();
    assert_eq!(events.len(), 60);
    assert!(events
        .iter()
        .enumerate()
        .all(|(i, e)| e.position.0 == i as u64 + 1));
}

/// A store the build before ADR 25 wrote (version 2, group frames, public
/// positions = log positions) opens with every event one position higher,
/// the first at 1; the open starts a segment flagged
/// `PUBLIC_POSITIONS_FROM_ONE` at once, so an older build would refuse the
/// store from then on; `$all` from 0 and a subscription after 0 include
/// the first event, and a stored position keeps naming one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_numbered_from_0_serves_its_events_from_1_and_is_flagged_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let header = SegmentHeader {
        version: 2,
        features: FEATURE_GROUP_FRAMES,
        number: 0,
        first_position: 0,
    };
    write_store(dir.path(), header, 5);
    let (engine, _) = Engine::open_with(dir.path(), EngineConfig::default()).unwrap();
    let segments = common::segments(dir.path());
    assert_eq!(segments.len(), 2, "open did not start a flagged segment");
    assert_eq!(header_of(&segments[0]).features, FEATURE_GROUP_FRAMES);
    let flagged = header_of(&segments[1]);
    assert_eq!(flagged.features, WRITTEN_FEATURES);
    assert_ne!(flagged.features & FEATURE_PUBLIC_POSITIONS_FROM_ONE, 0);
    assert_eq!(flagged.first_position, 10, "log positions go on");

    let all = engine.read_all(ReadAll::forwards()).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position.0).collect();
    assert_eq!(positions, (1..=10).collect::<Vec<_>>());
    assert_eq!(all[0].data, Bytes::from("{\"n\":0}"));
    let from_0 = engine
        .read_all(ReadAll::forwards().from_position(factum_core::Position(0)))
        .await
        .unwrap();
    assert_eq!(from_0, all);
    let mut sub = engine
        .subscribe(factum_core::Subscribe::all(
            factum_core::SubscriptionStart::After(0),
            None,
        ))
        .await
        .unwrap();
    for e in &all {
        assert_eq!(&sub.next_event().await.unwrap().unwrap(), e);
    }
    let r = engine
        .append(
            StreamName::new("order-1").unwrap(),
            ExpectedRevision::Exact(factum_core::StreamRevision(9)),
            vec![EventData::json("OrderPaid", &serde_json::json!({})).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(r.position.0, 11);
    assert_eq!(sub.next_event().await.unwrap().unwrap().position.0, 11);
    assert_eq!(
        engine.head_position().await.unwrap(),
        Some(factum_core::Position(11))
    );
    drop(sub);
    engine.close().unwrap();
    drop(engine);
    let report = factum_engine::verify(dir.path()).unwrap();
    assert!(report.ok(), "{:?}", report.faults);
    // Reopening a flagged store starts no other segment.
    let (engine, _) = Engine::open_with(dir.path(), EngineConfig::default()).unwrap();
    assert_eq!(common::segments(dir.path()).len(), 2);
    assert_eq!(
        engine.read_all(ReadAll::forwards()).await.unwrap().len(),
        11
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_segment_keeps_the_strict_rule_for_damage() {
    let dir = tempfile::tempdir().unwrap();
    let offsets = write_v1_store(dir.path(), 10);
    let seg = dir.path().join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&seg).unwrap();
    // Damage frame 7 of 10: frames 8 and 9 are valid after it.
    bytes[offsets[7] + 40] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    match Engine::open_with(dir.path(), EngineConfig::default()) {
        Err(Error::Corrupt { file, offset, .. }) => {
            assert_eq!((file, offset), (seg, offsets[7] as u64));
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("damage before valid frames in a version-1 segment was not refused"),
    }
}

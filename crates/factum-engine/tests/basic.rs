//! Basic behaviour of the engine across reopen.

use factum_core::{
    EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, StreamName, Subscribe,
    SubscriptionStart,
};
use factum_engine::{Engine, EngineConfig};

fn ev(i: u32) -> EventData {
    EventData::json("Added", &serde_json::json!({ "i": i })).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_reopen_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        segment_bytes: 4096,
        index_flush_entries: 50,
        ..EngineConfig::default()
    };
    let s = StreamName::new("order-1").unwrap();
    {
        let (engine, _) = Engine::open_with(dir.path(), config.clone()).unwrap();
        for i in 0..200u32 {
            let r = engine
                .append(s.clone(), ExpectedRevision::Any, vec![ev(i)])
                .await
                .unwrap();
            assert_eq!(r.revision.0, i as u64);
        }
        let events = engine
            .read_stream(ReadStream::forwards(s.clone()))
            .await
            .unwrap();
        assert_eq!(events.len(), 200);
        engine.close().unwrap();
    }
    let (engine, rec) = Engine::open_with(dir.path(), config).unwrap();
    assert!(rec.cut.is_none());
    let events = engine
        .read_stream(ReadStream::backwards(s.clone()).max_count(5))
        .await
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.revision.0).collect::<Vec<_>>(),
        vec![199, 198, 197, 196, 195]
    );
    let all = engine.read_all(ReadAll::forwards()).await.unwrap();
    assert_eq!(all.len(), 200);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, e)| e.position.0 == i as u64 + 1));
    let ce = engine
        .read_stream(ReadStream::forwards(StreamName::new("$ce-order").unwrap()))
        .await
        .unwrap();
    assert_eq!(ce.len(), 200);
    let mut sub = engine
        .subscribe(Subscribe::all(SubscriptionStart::After(190), None))
        .await
        .unwrap();
    for want in 191..=200u64 {
        assert_eq!(sub.next_event().await.unwrap().unwrap().position.0, want);
    }
    engine
        .append(
            s.clone(),
            ExpectedRevision::Exact(factum_core::StreamRevision(199)),
            vec![ev(200)],
        )
        .await
        .unwrap();
    assert_eq!(sub.next_event().await.unwrap().unwrap().position.0, 201);
    let report = {
        drop(sub);
        engine.close().unwrap();
        drop(engine);
        factum_engine::verify(dir.path()).unwrap()
    };
    assert!(report.ok(), "{:?}", report.faults);
    assert_eq!(report.events, 201);
}

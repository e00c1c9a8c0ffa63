//! Helpers shared by the persistent-subscription tests over the engine.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use factum_core::{EventData, EventStore, ExpectedRevision, StreamName};
use factum_engine::Engine;
use factum_persistent::{
    ConnectOptions, Consumer, Delivery, GroupSettings, PersistentSubscriptions, StartFrom,
};

pub fn open(dir: &std::path::Path) -> Arc<Engine> {
    Arc::new(Engine::open_with(dir, Default::default()).unwrap().0)
}

pub fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

pub async fn append(store: &Engine, stream: &str, n: usize, event_type: &str) {
    let events = (0..n)
        .map(|i| EventData::json(event_type, &serde_json::json!({ "i": i })).unwrap())
        .collect();
    store
        .append(name(stream), ExpectedRevision::Any, events)
        .await
        .unwrap();
}

pub fn from_start() -> GroupSettings {
    GroupSettings {
        start_from: StartFrom::Start,
        checkpoint_after: Duration::from_millis(50),
        min_checkpoint_count: 1,
        ..Default::default()
    }
}

pub async fn next(c: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("a delivery within 10 s")
        .expect("connected")
        .expect("no error")
}

pub async fn nothing_for(c: &mut Consumer, d: Duration) {
    if let Ok(Some(m)) = tokio::time::timeout(d, c.next()).await {
        panic!(
            "expected no delivery, got {:?}",
            m.map(|d| d.event.revision)
        );
    }
}

pub fn opts(buffer_size: usize) -> ConnectOptions {
    ConnectOptions {
        buffer_size,
        ..Default::default()
    }
}

pub async fn eventually<F: Fn(&factum_persistent::GroupInfo) -> bool>(
    subs: &PersistentSubscriptions<Engine>,
    source: &str,
    group: &str,
    what: &str,
    f: F,
) -> factum_persistent::GroupInfo {
    for _ in 0..200 {
        let info = subs.info(source, group).await.unwrap();
        if f(&info) {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{what}: never happened; last info {:?}",
        subs.info(source, group).await.unwrap()
    );
}

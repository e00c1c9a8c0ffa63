//! The streams the subsystem writes itself: a damaged group configuration
//! or checkpoint takes out only its group (reported by `info`/`list`), and
//! a `$all` group never receives them.

mod common;

use std::time::Duration;

use common::*;
use factum_core::{managed, EventData, EventStore, ExpectedRevision, ReadStream};
use factum_engine::Engine;
use factum_persistent::{
    GroupSettings, GroupSource, PersistentError, PersistentSubscriptions, CONFIG_EVENT_TYPE,
    CONFIG_STREAM,
};
use serde_json::{json, Value};

/// The newest configuration event's JSON.
async fn stored_config(store: &Engine) -> Value {
    let events = store
        .read_stream(ReadStream::backwards(name(CONFIG_STREAM)).max_count(1))
        .await
        .unwrap();
    serde_json::from_slice(&events[0].data).unwrap()
}

/// Writes a configuration event directly through the store, as only the
/// subsystem (or damage) can.
async fn write_config(store: &Engine, data: Vec<u8>) {
    store
        .append(
            name(CONFIG_STREAM),
            ExpectedRevision::Any,
            vec![EventData::new(
                CONFIG_EVENT_TYPE,
                factum_core::ContentType::Json,
                data,
            )],
        )
        .await
        .unwrap();
}

async fn delivers(subs: &PersistentSubscriptions<Engine>, source: &str, group: &str, revs: &[u64]) {
    let mut c = subs.connect(source, group, opts(10)).await.unwrap();
    for &r in revs {
        let d = next(&mut c).await;
        assert_eq!(d.event.revision.0, r, "{source}::{group}");
        c.ack([d.id()]).await;
    }
}

fn stream(s: &str) -> GroupSource {
    GroupSource::Stream(s.into())
}

#[tokio::test]
async fn a_damaged_checkpoint_or_configuration_entry_takes_out_only_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for s in ["a", "b", "c"] {
        append(&store, s, 3, "E").await;
    }
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    for s in ["a", "b", "c"] {
        subs.create(stream(s), "g", from_start()).await.unwrap();
        delivers(&subs, s, "g", &[0, 1]).await;
        eventually(&subs, s, "g", "checkpoint", |i| {
            i.last_checkpointed_position == Some(1)
        })
        .await;
    }
    subs.shutdown().await;
    drop(subs);

    // b's checkpoint is not a revision; c's entry has a setting of the
    // wrong type.
    store
        .append(
            managed::persistent_checkpoint_stream("b", "g").unwrap(),
            ExpectedRevision::Any,
            vec![EventData::json("$SubscriptionCheckpoint", &json!("garbage")).unwrap()],
        )
        .await
        .unwrap();
    let mut config = stored_config(&store).await;
    for entry in config["groups"].as_array_mut().unwrap() {
        if entry["source"]["stream"] == "c" {
            entry["settings"]["messageTimeout"] = json!("soon");
        }
    }
    write_config(&store, serde_json::to_vec(&config).unwrap()).await;

    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    let list = subs.list(None).await.unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    let status = |g: &str| {
        let i = list.iter().find(|i| i.source.name() == g).unwrap();
        (i.status, i.error.clone())
    };
    let (s, e) = status("a");
    assert!(s != "Faulted" && e.is_none(), "{s} {e:?}");
    let (s, e) = status("b");
    assert_eq!(s, "Faulted");
    assert!(e.as_deref().unwrap().contains("checkpoint"), "{e:?}");
    let (s, e) = status("c");
    assert_eq!(s, "Faulted");
    assert!(e.as_deref().unwrap().contains("configuration"), "{e:?}");
    assert!(matches!(
        subs.connect("b", "g", opts(1)).await,
        Err(PersistentError::Faulted { .. })
    ));
    assert!(matches!(
        subs.replay_parked("c", "g", None).await,
        Err(PersistentError::Faulted { .. })
    ));
    // The healthy group resumes after its checkpoint; new groups work.
    delivers(&subs, "a", "g", &[2]).await;
    subs.create(stream("a"), "new", from_start()).await.unwrap();
    delivers(&subs, "a", "new", &[0, 1, 2]).await;

    // The damaged entry survives that configuration write (nothing is
    // lost behind the operator's back) …
    subs.restart().await.unwrap();
    assert_eq!(subs.info("c", "g").await.unwrap().status, "Faulted");
    // … until new settings repair it; deleting and recreating repairs a
    // damaged checkpoint.
    subs.update("c", "g", from_start()).await.unwrap();
    delivers(&subs, "c", "g", &[2]).await;
    subs.delete("b", "g").await.unwrap();
    subs.create(stream("b"), "g", from_start()).await.unwrap();
    delivers(&subs, "b", "g", &[0, 1, 2]).await;
    let list = subs.list(None).await.unwrap();
    assert!(list.iter().all(|i| i.error.is_none()), "{list:?}");
}

#[tokio::test]
async fn an_unreadable_configuration_event_falls_back_to_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append(&store, "a", 2, "E").await;
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    subs.create(stream("a"), "g", from_start()).await.unwrap();
    subs.shutdown().await;
    write_config(&store, b"{not json".to_vec()).await;
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    delivers(&subs, "a", "g", &[0, 1]).await;
    // Changes are written after the damaged event and supersede it.
    subs.create(stream("a"), "h", from_start()).await.unwrap();
    subs.restart().await.unwrap();
    assert_eq!(subs.list(None).await.unwrap().len(), 2);
}

#[tokio::test]
async fn an_all_group_never_receives_the_subsystems_own_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    // A checkpoint per ack, at once: before, each checkpoint event was an
    // event of `$all` the group delivered to itself, acked, checkpointed …
    let settings = GroupSettings {
        checkpoint_after: Duration::ZERO,
        min_checkpoint_count: 1,
        max_checkpoint_count: 1,
        ..from_start()
    };
    subs.create(GroupSource::All(None), "g", settings)
        .await
        .unwrap();
    // Another group parks an event, so a parked stream exists too.
    subs.create(stream("s"), "p", from_start()).await.unwrap();
    append(&store, "s", 5, "E").await;
    let mut parker = subs.connect("s", "p", opts(1)).await.unwrap();
    let d = next(&mut parker).await;
    parker
        .nack([d.id()], factum_persistent::NackAction::Park, "test")
        .await;

    let mut c = subs.connect("$all", "g", opts(10)).await.unwrap();
    for i in 0..5 {
        let d = next(&mut c).await;
        assert_eq!(
            (d.event.stream.as_str(), d.event.revision.0),
            ("s", i),
            "{:?}",
            d.event
        );
        c.ack([d.id()]).await;
    }
    nothing_for(&mut c, Duration::from_millis(500)).await;
    let info = subs.info("$all", "g").await.unwrap();
    assert_eq!(info.total_items, 5, "{info:?}");
    // The checkpoints were written (and passed over).
    let checkpoints = store
        .read_stream(ReadStream::forwards(
            managed::persistent_checkpoint_stream("$all", "g").unwrap(),
        ))
        .await
        .unwrap();
    assert!(!checkpoints.is_empty());
    assert!(store
        .read_stream(ReadStream::forwards(
            managed::persistent_parked_stream("s", "p").unwrap()
        ))
        .await
        .is_ok_and(|e| e.len() == 1));
}

//! Persistent subscriptions over the embedded engine: every consumer
//! strategy, acks, nacks, timeouts, parking and replay, limits, and resuming
//! from the checkpoint after a restart.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use factum_core::{EventStore, ReadStream};
use factum_persistent::{
    ConsumerStrategy, FilterSpec, GroupSettings, GroupSource, NackAction, PersistentError,
    PersistentSubscriptions,
};

#[tokio::test]
async fn round_robin_shares_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append(&store, "orders-1", 20, "Placed").await;
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    subs.create(GroupSource::Stream("orders-1".into()), "g", from_start())
        .await
        .unwrap();
    let mut a = subs.connect("orders-1", "g", opts(5)).await.unwrap();
    let mut b = subs.connect("orders-1", "g", opts(5)).await.unwrap();
    let mut seen = HashMap::new();
    for _ in 0..10 {
        for (label, c) in [("a", &mut a), ("b", &mut b)] {
            let d = next(c).await;
            c.ack([d.id()]).await;
            assert!(
                seen.insert(d.event.revision.0, label).is_none(),
                "duplicate"
            );
        }
    }
    assert_eq!(seen.len(), 20);
    let per_a = seen.values().filter(|l| **l == "a").count();
    assert_eq!(per_a, 10, "round robin shares evenly: {seen:?}");
    let info = eventually(&subs, "orders-1", "g", "checkpoint at 19", |i| {
        i.last_checkpointed_position == Some(19)
    })
    .await;
    assert_eq!(info.connections.len(), 2);
    assert_eq!(info.total_items, 20);
    assert_eq!(info.in_flight, 0);
    // The checkpoint is in the store, where KurrentDB keeps it.
    let cp = store
        .read_stream(
            ReadStream::backwards(name("$persistentsubscription-orders-1::g-checkpoint"))
                .max_count(1),
        )
        .await
        .unwrap();
    assert_eq!(cp[0].data.as_ref(), b"19");
}

#[tokio::test]
async fn dispatch_to_single_fills_the_first_consumer_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append(&store, "s", 6, "E").await;
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    let settings = GroupSettings {
        consumer_strategy: ConsumerStrategy::DispatchToSingle,
        ..from_start()
    };
    subs.create(GroupSource::Stream("s".into()), "g", settings)
        .await
        .unwrap();
    let mut first = subs.connect("s", "g", opts(4)).await.unwrap();
    let mut second = subs.connect("s", "g", opts(4)).await.unwrap();
    let mut got_first = Vec::new();
    for _ in 0..4 {
        got_first.push(next(&mut first).await.event.revision.0);
    }
    assert_eq!(got_first, vec![0, 1, 2, 3]);
    // The first one is full: the overflow goes to the second.
    assert_eq!(next(&mut second).await.event.revision.0, 4);
    assert_eq!(next(&mut second).await.event.revision.0, 5);
}

#[tokio::test]
async fn pinned_keeps_a_stream_on_one_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..8 {
        append(&store, &format!("cart-{i}"), 3, "Added").await;
    }
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    let settings = GroupSettings {
        consumer_strategy: ConsumerStrategy::Pinned,
        resolve_links: true,
        ..from_start()
    };
    subs.create(GroupSource::Stream("$ce-cart".into()), "g", settings)
        .await
        .unwrap();
    let mut a = subs.connect("$ce-cart", "g", opts(100)).await.unwrap();
    let mut b = subs.connect("$ce-cart", "g", opts(100)).await.unwrap();
    let mut owner: HashMap<String, &str> = HashMap::new();
    let mut total = 0;
    for (label, c) in [("a", &mut a), ("b", &mut b)] {
        while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(300), c.next()).await
        {
            // Read through the category: the delivery carries its link and
            // is acked by the link's id.
            let link = d.event.link.as_ref().expect("read through $ce-cart");
            assert_eq!(link.stream.as_str(), "$ce-cart");
            assert_ne!(d.id(), d.event.id);
            c.ack([d.id()]).await;
            let prev = owner.insert(d.event.stream.to_string(), label);
            assert!(
                prev.is_none() || prev == Some(label),
                "stream split across consumers"
            );
            total += 1;
        }
    }
    assert_eq!(total, 24);
    eventually(&subs, "$ce-cart", "g", "all acked", |i| {
        i.in_flight == 0 && i.last_checkpointed_position == Some(23)
    })
    .await;
}

#[tokio::test]
async fn nacks_park_retry_skip_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append(&store, "s", 4, "E").await;
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    let settings = GroupSettings {
        max_retry_count: 1,
        ..from_start()
    };
    subs.create(GroupSource::Stream("s".into()), "g", settings)
        .await
        .unwrap();
    let mut c = subs.connect("s", "g", opts(1)).await.unwrap();
    // 0: parked at once.
    let d = next(&mut c).await;
    assert_eq!(d.event.revision.0, 0);
    c.nack([d.id()], NackAction::Park, "poison").await;
    // 1: retried once, then parked on the second retry (max_retry_count 1).
    let d = next(&mut c).await;
    assert_eq!((d.event.revision.0, d.retry_count), (1, 0));
    c.nack([d.id()], NackAction::Retry, "busy").await;
    let d = next(&mut c).await;
    assert_eq!((d.event.revision.0, d.retry_count), (1, 1));
    c.nack([d.id()], NackAction::Retry, "still busy").await;
    // 2: skipped.
    let d = next(&mut c).await;
    assert_eq!(d.event.revision.0, 2);
    c.nack([d.id()], NackAction::Skip, "not mine").await;
    // 3: Stop ends this connection; the event goes to the next consumer.
    let d = next(&mut c).await;
    assert_eq!(d.event.revision.0, 3);
    c.nack([d.id()], NackAction::Stop, "shutting down").await;
    match tokio::time::timeout(Duration::from_secs(5), c.next())
        .await
        .unwrap()
    {
        Some(Err(PersistentError::Dropped { .. })) => {}
        other => panic!("expected the connection to drop, got {other:?}"),
    }
    assert!(c.next().await.is_none());
    let mut c2 = subs.connect("s", "g", opts(1)).await.unwrap();
    let d = next(&mut c2).await;
    assert_eq!(d.event.revision.0, 3);
    c2.ack([d.id()]).await;

    eventually(&subs, "s", "g", "two parked, checkpoint at 3", |i| {
        i.parked == 2 && i.last_checkpointed_position == Some(3)
    })
    .await;
    let parked = store
        .read_stream(ReadStream::forwards(name(
            "$persistentsubscription-s::g-parked",
        )))
        .await
        .unwrap();
    let links: Vec<_> = parked
        .iter()
        .map(|e| String::from_utf8_lossy(&e.data).to_string())
        .collect();
    assert_eq!(links, vec!["0@s", "1@s"]);
    assert_eq!(parked[0].event_type, "$>");

    // Replay delivers the parked events again, then the parked stream is empty.
    assert_eq!(subs.replay_parked("s", "g", None).await.unwrap(), 2);
    let mut replayed = Vec::new();
    for _ in 0..2 {
        let d = next(&mut c2).await;
        replayed.push(d.event.revision.0);
        c2.ack([d.id()]).await;
    }
    assert_eq!(replayed, vec![0, 1]);
    eventually(&subs, "s", "g", "parked emptied", |i| i.parked == 0).await;
    assert_eq!(subs.replay_parked("s", "g", None).await.unwrap(), 0);
}

#[tokio::test]
async fn unacked_events_time_out_and_are_retried_then_parked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append(&store, "s", 1, "E").await;
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    let settings = GroupSettings {
        message_timeout: Duration::from_millis(100),
        max_retry_count: 2,
        ..from_start()
    };
    subs.create(GroupSource::Stream("s".into()), "g", settings)
        .await
        .unwrap();
    let mut c = subs.connect("s", "g", opts(5)).await.unwrap();
    for expected_retry in 0..=2 {
        let d = next(&mut c).await;
        assert_eq!((d.event.revision.0, d.retry_count), (0, expected_retry));
    }
    nothing_for(&mut c, Duration::from_millis(400)).await;
    let info = eventually(&subs, "s", "g", "parked after retries", |i| i.parked == 1).await;
    assert_eq!(info.redelivered, 2);
}

#[tokio::test]
async fn a_disconnected_consumers_events_go_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append(&store, "s", 3, "E").await;
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    subs.create(GroupSource::Stream("s".into()), "g", from_start())
        .await
        .unwrap();
    let mut gone = subs.connect("s", "g", opts(3)).await.unwrap();
    for _ in 0..3 {
        next(&mut gone).await;
    }
    let mut stays = subs.connect("s", "g", opts(3)).await.unwrap();
    drop(gone);
    let mut revs: Vec<u64> = Vec::new();
    for _ in 0..3 {
        let d = next(&mut stays).await;
        assert_eq!(d.retry_count, 1);
        revs.push(d.event.revision.0);
        stays.ack([d.id()]).await;
    }
    assert_eq!(revs, vec![0, 1, 2]);
}

#[tokio::test]
async fn limits_and_lifecycle_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    let settings = GroupSettings {
        max_subscriber_count: 1,
        ..from_start()
    };
    let source = GroupSource::Stream("s".into());
    subs.create(source.clone(), "g", settings.clone())
        .await
        .unwrap();
    assert!(matches!(
        subs.create(source.clone(), "g", settings).await,
        Err(PersistentError::AlreadyExists(_))
    ));
    let _one = subs.connect("s", "g", opts(1)).await.unwrap();
    assert!(matches!(
        subs.connect("s", "g", opts(1)).await,
        Err(PersistentError::MaximumSubscribersReached { max: 1, .. })
    ));
    assert!(matches!(
        subs.connect("s", "nope", opts(1)).await,
        Err(PersistentError::NotFound(_))
    ));
    assert!(matches!(
        subs.info("other", "g").await,
        Err(PersistentError::NotFound(_))
    ));
    let bad = GroupSettings {
        read_batch_size: 0,
        ..Default::default()
    };
    assert!(matches!(
        subs.create(source.clone(), "h", bad).await,
        Err(PersistentError::InvalidSettings(_))
    ));
    assert!(matches!(
        subs.create(source.clone(), "", Default::default()).await,
        Err(PersistentError::InvalidSettings(_))
    ));
    let regex = GroupSource::All(Some(FilterSpec {
        on_event_type: true,
        prefixes: vec![],
        regex: Some("(".into()),
    }));
    assert!(matches!(
        subs.create(regex, "h", Default::default()).await,
        Err(PersistentError::InvalidSettings(_))
    ));
    assert_eq!(subs.list(None).await.unwrap().len(), 1);
    subs.delete("s", "g").await.unwrap();
    assert!(matches!(
        subs.delete("s", "g").await,
        Err(PersistentError::NotFound(_))
    ));
    assert!(subs.list(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn update_drops_consumers_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append(&store, "s", 5, "E").await;
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    subs.create(GroupSource::Stream("s".into()), "g", from_start())
        .await
        .unwrap();
    let mut c = subs.connect("s", "g", opts(10)).await.unwrap();
    for _ in 0..3 {
        let d = next(&mut c).await;
        c.ack([d.id()]).await;
    }
    eventually(&subs, "s", "g", "checkpoint at 2", |i| {
        i.last_checkpointed_position == Some(2)
    })
    .await;
    let changed = GroupSettings {
        consumer_strategy: ConsumerStrategy::DispatchToSingle,
        ..from_start()
    };
    subs.update("s", "g", changed).await.unwrap();
    // The old connection drops (after the events it was already sent).
    loop {
        match tokio::time::timeout(Duration::from_secs(5), c.next())
            .await
            .unwrap()
        {
            Some(Ok(_)) => continue,
            Some(Err(PersistentError::Dropped { .. })) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let info = subs.info("s", "g").await.unwrap();
    assert_eq!(
        info.settings.consumer_strategy,
        ConsumerStrategy::DispatchToSingle
    );
    let mut c = subs.connect("s", "g", opts(10)).await.unwrap();
    assert_eq!(next(&mut c).await.event.revision.0, 3);
}

#[tokio::test]
async fn all_groups_filter_and_resume_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append(&store, "order-1", 5, "OrderPlaced").await;
    append(&store, "user-1", 5, "UserJoined").await;
    let filter = GroupSource::All(Some(FilterSpec {
        on_event_type: false,
        prefixes: vec!["order-".into()],
        regex: None,
    }));
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    subs.create(filter, "g", from_start()).await.unwrap();
    let mut c = subs.connect("$all", "g", opts(10)).await.unwrap();
    let mut seen = HashSet::new();
    for _ in 0..3 {
        let d = next(&mut c).await;
        assert_eq!(d.event.stream.as_str(), "order-1");
        seen.insert(d.event.id);
        c.ack([d.id()]).await;
    }
    // Two delivered but never acked: they come back after the restart.
    let unacked: Vec<_> = vec![next(&mut c).await, next(&mut c).await];
    let checkpoint = eventually(&subs, "$all", "g", "checkpoint", |i| {
        i.last_checkpointed_position.is_some_and(|p| p >= 2)
    })
    .await
    .last_checkpointed_position;
    drop(c);
    subs.shutdown().await;
    store.close().unwrap();
    drop(subs);
    drop(store);

    let store = open(dir.path());
    append(&store, "order-1", 2, "OrderPlaced").await;
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    let info = subs.info("$all", "g").await.unwrap();
    assert_eq!(info.last_checkpointed_position, checkpoint);
    let mut c = subs.connect("$all", "g", opts(10)).await.unwrap();
    let mut after = Vec::new();
    for _ in 0..4 {
        let d = next(&mut c).await;
        assert_eq!(d.event.stream.as_str(), "order-1");
        assert!(!seen.contains(&d.event.id), "an acked event came back");
        after.push(d.event.revision.0);
        c.ack([d.id()]).await;
    }
    assert_eq!(after, vec![3, 4, 5, 6]);
    assert!(unacked.iter().all(|d| after.contains(&d.event.revision.0)));
    nothing_for(&mut c, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn start_from_end_survives_a_restart_before_any_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append(&store, "s", 3, "E").await;
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    subs.create(
        GroupSource::Stream("s".into()),
        "g",
        GroupSettings::default(),
    )
    .await
    .unwrap();
    subs.shutdown().await;
    // Appended while no group runs: a group started "from the end" before
    // these must still deliver them.
    append(&store, "s", 2, "E").await;
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    let mut c = subs.connect("s", "g", opts(10)).await.unwrap();
    assert_eq!(next(&mut c).await.event.revision.0, 3);
    assert_eq!(next(&mut c).await.event.revision.0, 4);
}

#[tokio::test]
async fn a_slow_consumer_holds_only_its_own_window() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    let settings = GroupSettings {
        live_buffer_size: 20,
        read_batch_size: 10,
        ..from_start()
    };
    subs.create(GroupSource::Stream("s".into()), "slow", settings.clone())
        .await
        .unwrap();
    subs.create(GroupSource::Stream("s".into()), "fast", settings)
        .await
        .unwrap();
    let mut slow = subs.connect("s", "slow", opts(2)).await.unwrap();
    let mut fast = subs.connect("s", "fast", opts(50)).await.unwrap();
    append(&store, "s", 500, "E").await;
    // The fast group gets everything while the slow one never acks.
    for i in 0..500 {
        let d = next(&mut fast).await;
        assert_eq!(d.event.revision.0, i);
        fast.ack([d.id()]).await;
    }
    next(&mut slow).await;
    next(&mut slow).await;
    nothing_for(&mut slow, Duration::from_millis(100)).await;
    let info = subs.info("s", "slow").await.unwrap();
    assert_eq!(info.in_flight, 2);
    assert!(
        info.buffered <= 20,
        "read ahead beyond the buffer: {info:?}"
    );
    // Writers are not held up either.
    append(&store, "s", 10, "E").await;
}

/// After a scavenge (ADR 33) `$all` and streams have gaps: an `$all` group
/// and a stream group from the start deliver exactly what is left, and the
/// `$all` group checkpoints past the gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_cross_the_gaps_a_scavenge_leaves() {
    use factum_core::{EventData, ExpectedRevision, StreamMetadata};
    let dir = tempfile::tempdir().unwrap();
    let config = factum_engine::EngineConfig {
        segment_bytes: 64 * 1024,
        ..Default::default()
    };
    let store = std::sync::Arc::new(
        factum_engine::Engine::open_with(dir.path(), config)
            .unwrap()
            .0,
    );
    let big = |i: usize| {
        EventData::json(
            "Gone",
            &serde_json::json!({"i": i, "pad": "g".repeat(1000)}),
        )
        .unwrap()
    };
    store
        .append(
            name("gone-1"),
            ExpectedRevision::NoStream,
            (0..50).map(big).collect(),
        )
        .await
        .unwrap();
    let meta = StreamMetadata {
        max_count: Some(1),
        ..Default::default()
    };
    store
        .set_stream_metadata(name("gone-1"), ExpectedRevision::Any, meta)
        .await
        .unwrap();
    append(&store, "order-1", 5, "OrderPlaced").await;
    for _ in 0..20 {
        store
            .append(
                name("filler-1"),
                ExpectedRevision::Any,
                (0..10).map(big).collect(),
            )
            .await
            .unwrap();
    }
    let status = store
        .scavenge(factum_engine::ScavengeOptions::default())
        .unwrap();
    assert!(status.report.events_removed >= 49, "{status:?}");

    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    let filter = GroupSource::All(Some(FilterSpec {
        on_event_type: false,
        prefixes: vec!["order-".into(), "gone-".into()],
        regex: None,
    }));
    subs.create(filter, "g", from_start()).await.unwrap();
    subs.create(GroupSource::Stream("gone-1".into()), "s", from_start())
        .await
        .unwrap();
    let mut all = subs.connect("$all", "g", opts(10)).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..6 {
        let d = next(&mut all).await;
        got.push((d.event.stream.to_string(), d.event.revision.0));
        all.ack([d.id()]).await;
    }
    let mut want = vec![("gone-1".to_string(), 49)];
    want.extend((0..5).map(|r| ("order-1".to_string(), r)));
    assert_eq!(got, want);
    nothing_for(&mut all, Duration::from_millis(200)).await;
    eventually(&subs, "$all", "g", "checkpoint past the gaps", |i| {
        i.last_checkpointed_position.is_some()
    })
    .await;
    let mut stream = subs.connect("gone-1", "s", opts(10)).await.unwrap();
    let d = next(&mut stream).await;
    assert_eq!(d.event.revision.0, 49);
    stream.ack([d.id()]).await;
    nothing_for(&mut stream, Duration::from_millis(200)).await;
    subs.shutdown().await;
}

//! Persistent subscriptions through KurrentDB's official Rust client against
//! a real `factum serve`: create / read / ack / nack in every mode, parking
//! and replay, round robin, maximum subscribers, update, delete, list, info,
//! restart of the subsystem, and resuming after the server is killed.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use kurrentdb::{
    AppendToStreamOptions, Client, DeletePersistentSubscriptionOptions, Error,
    GetPersistentSubscriptionInfoOptions, ListPersistentSubscriptionsOptions, NakAction,
    PersistentSubscription, PersistentSubscriptionOptions, PersistentSubscriptionToAllOptions,
    ReplayParkedMessagesOptions, ResolvedEvent, RestartPersistentSubscriptionSubsystem,
    StreamPosition, SubscribeToPersistentSubscriptionOptions, SubscriptionFilter,
    SystemConsumerStrategy,
};

mod common;
use common::{ev, name, Server};

async fn append(client: &Client, stream: &str, n: usize) {
    let events: Vec<_> = (0..n).map(|_| ev("Happened")).collect();
    client
        .append_to_stream(stream.to_owned(), &AppendToStreamOptions::default(), events)
        .await
        .unwrap();
}

async fn next(sub: &mut PersistentSubscription) -> ResolvedEvent {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event within 10 s")
        .expect("the subscription works")
}

async fn subscribe(
    client: &Client,
    stream: &str,
    group: &str,
    buffer: usize,
) -> PersistentSubscription {
    client
        .subscribe_to_persistent_subscription(
            stream,
            group,
            &SubscribeToPersistentSubscriptionOptions::default().buffer_size(buffer),
        )
        .await
        .unwrap()
}

fn revision(e: &ResolvedEvent) -> u64 {
    e.get_original_event().revision
}

fn fast_checkpoints(o: PersistentSubscriptionOptions) -> PersistentSubscriptionOptions {
    o.checkpoint_after(Duration::from_millis(100))
        .checkpoint_lower_bound(1)
        .checkpoint_upper_bound(1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_with_the_official_rust_client() {
    let server = Server::start();
    let client = server.client();
    let stream = name("orders");
    append(&client, &stream, 20).await;

    // Create, and the errors for a second create and an unknown group.
    let opts = fast_checkpoints(
        PersistentSubscriptionOptions::default()
            .start_from(StreamPosition::Start)
            .consumer_strategy_name(SystemConsumerStrategy::RoundRobin)
            .max_subscriber_count(2),
    );
    client
        .create_persistent_subscription(stream.as_str(), "g", &opts)
        .await
        .unwrap();
    assert!(matches!(
        client
            .create_persistent_subscription(stream.as_str(), "g", &opts)
            .await,
        Err(Error::ResourceAlreadyExists)
    ));
    assert!(matches!(
        client
            .delete_persistent_subscription(
                stream.as_str(),
                "nope",
                &DeletePersistentSubscriptionOptions::default()
            )
            .await,
        Err(Error::ResourceNotFound)
    ));

    // Round robin over two consumers; a third is over the maximum.
    let mut a = subscribe(&client, &stream, "g", 10).await;
    let mut b = subscribe(&client, &stream, "g", 10).await;
    let third = client
        .subscribe_to_persistent_subscription(
            stream.as_str(),
            "g",
            &SubscribeToPersistentSubscriptionOptions::default(),
        )
        .await;
    let refused = match third {
        Err(e) => Some(e),
        Ok(mut s) => tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap()
            .err(),
    };
    assert!(
        refused.is_some(),
        "a third consumer was accepted over the maximum of 2"
    );

    let mut owner = HashMap::new();
    for _ in 0..10 {
        for (label, sub) in [("a", &mut a), ("b", &mut b)] {
            let e = next(sub).await;
            sub.ack(&e).await.unwrap();
            assert!(
                owner.insert(revision(&e), label).is_none(),
                "delivered twice"
            );
        }
    }
    assert_eq!(owner.len(), 20);
    assert_eq!(owner.values().filter(|l| **l == "a").count(), 10);
    // Acks travel asynchronously: let them land before b hangs up (else its
    // unacked events go, rightly, to a).
    for _ in 0..100 {
        let i = client
            .get_persistent_subscription_info(
                stream.as_str(),
                "g",
                &GetPersistentSubscriptionInfoOptions::default(),
            )
            .await
            .unwrap();
        if i.stats.total_in_flight_messages == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(b);

    // Nack in every mode.
    append(&client, &stream, 4).await;
    let e = next(&mut a).await;
    assert_eq!(revision(&e), 20);
    a.nack(&e, NakAction::Park, "poison").await.unwrap();
    let e = next(&mut a).await;
    assert_eq!(revision(&e), 21);
    a.nack(&e, NakAction::Retry, "later").await.unwrap();
    // 22 and 23 are out already; the retried 21 follows them.
    let mut handled = BTreeSet::new();
    while handled.len() < 3 {
        let e = next(&mut a).await;
        let r = revision(&e);
        match r {
            21 => {
                assert_eq!(e.get_original_event().revision, 21);
                a.ack(&e).await.unwrap();
            }
            22 => a.nack(&e, NakAction::Skip, "not mine").await.unwrap(),
            _ => a.ack(&e).await.unwrap(),
        }
        assert!(handled.insert(r), "{r} delivered twice");
    }
    assert_eq!(handled, [21, 22, 23].into());

    // Info: the parked event, the checkpoint, the connection.
    let mut info = None;
    for _ in 0..100 {
        let i = client
            .get_persistent_subscription_info(
                stream.as_str(),
                "g",
                &GetPersistentSubscriptionInfoOptions::default(),
            )
            .await
            .unwrap();
        if i.stats.parked_message_count == 1 && i.stats.last_checkpointed_event_revision == Some(23)
        {
            info = Some(i);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = info.expect("info shows one parked event and the checkpoint at 23");
    assert_eq!(info.group_name, "g");
    assert_eq!(info.event_source, stream);
    assert_eq!(info.connections.len(), 1);
    let settings = info.settings.unwrap();
    assert_eq!(settings.max_subscriber_count, 2);
    assert_eq!(settings.start_from, StreamPosition::Start);

    // Replay the parked event: it comes again.
    client
        .replay_parked_messages(
            stream.as_str(),
            "g",
            &ReplayParkedMessagesOptions::default(),
        )
        .await
        .unwrap();
    let e = next(&mut a).await;
    assert_eq!(revision(&e), 20);
    a.ack(&e).await.unwrap();

    // Stop: the connection ends.
    append(&client, &stream, 1).await;
    let e = next(&mut a).await;
    a.nack(&e, NakAction::Stop, "bye").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), a.next())
        .await
        .unwrap();
    assert!(ended.is_err(), "the connection goes on after a Stop nack");

    // Update keeps the group and its checkpoint; the event nacked with
    // Stop is delivered to the next consumer.
    client
        .update_persistent_subscription(
            stream.as_str(),
            "g",
            &fast_checkpoints(
                PersistentSubscriptionOptions::default()
                    .start_from(StreamPosition::Start)
                    .consumer_strategy_name(SystemConsumerStrategy::DispatchToSingle),
            ),
        )
        .await
        .unwrap();
    let mut c = subscribe(&client, &stream, "g", 10).await;
    let e = next(&mut c).await;
    assert_eq!(revision(&e), 24);
    c.ack(&e).await.unwrap();

    // $all with a filter, list, restart, delete.
    let to_all = PersistentSubscriptionToAllOptions::default()
        .start_from(StreamPosition::Start)
        .filter(SubscriptionFilter::on_stream_name().add_prefix(&stream));
    client
        .create_persistent_subscription_to_all("all-g", &to_all)
        .await
        .unwrap();
    let mut all = client
        .subscribe_to_persistent_subscription_to_all(
            "all-g",
            &SubscribeToPersistentSubscriptionOptions::default().buffer_size(50),
        )
        .await
        .unwrap();
    let mut revs = BTreeSet::new();
    while revs.len() < 25 {
        let e = next(&mut all).await;
        assert_eq!(e.get_original_stream_id(), stream);
        revs.insert(revision(&e));
        all.ack(&e).await.unwrap();
    }
    assert_eq!(revs, (0..25).collect());

    let listed = client
        .list_all_persistent_subscriptions(&ListPersistentSubscriptionsOptions::default())
        .await
        .unwrap();
    let mut groups: Vec<_> = listed.iter().map(|i| i.group_name.clone()).collect();
    groups.sort();
    assert_eq!(groups, vec!["all-g", "g"]);
    let for_stream = client
        .list_persistent_subscriptions_for_stream(
            stream.as_str(),
            &ListPersistentSubscriptionsOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(for_stream.len(), 1);
    let to_all_info = client
        .get_persistent_subscription_info_to_all(
            "all-g",
            &GetPersistentSubscriptionInfoOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(to_all_info.event_source, "$all");

    client
        .restart_persistent_subscription_subsystem(
            &RestartPersistentSubscriptionSubsystem::default(),
        )
        .await
        .unwrap();
    client
        .delete_persistent_subscription_to_all(
            "all-g",
            &DeletePersistentSubscriptionOptions::default(),
        )
        .await
        .unwrap();
    client
        .delete_persistent_subscription(
            stream.as_str(),
            "g",
            &DeletePersistentSubscriptionOptions::default(),
        )
        .await
        .unwrap();
    let listed = client
        .list_all_persistent_subscriptions(&ListPersistentSubscriptionsOptions::default())
        .await
        .unwrap();
    assert!(listed.is_empty());
}

/// kill -9 the server with events delivered and unacked; after a restart a
/// consumer gets every event not covered by the checkpoint: nothing is
/// skipped, and redelivery is limited to what was not checkpointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resumes_from_its_checkpoint_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let stream = name("jobs");
    let server = Server::start_at(&data);
    let client = server.client();
    append(&client, &stream, 50).await;
    client
        .create_persistent_subscription(
            stream.as_str(),
            "workers",
            &fast_checkpoints(
                PersistentSubscriptionOptions::default().start_from(StreamPosition::Start),
            ),
        )
        .await
        .unwrap();
    let mut sub = subscribe(&client, &stream, "workers", 20).await;
    let mut acked = BTreeSet::new();
    for _ in 0..30 {
        let e = next(&mut sub).await;
        acked.insert(revision(&e));
        sub.ack(&e).await.unwrap();
    }
    // Delivered, not acked.
    for _ in 0..5 {
        next(&mut sub).await;
    }
    let mut checkpoint = None;
    for _ in 0..100 {
        let i = client
            .get_persistent_subscription_info(
                stream.as_str(),
                "workers",
                &GetPersistentSubscriptionInfoOptions::default(),
            )
            .await
            .unwrap();
        if i.stats.last_checkpointed_event_revision == Some(29) {
            checkpoint = Some(29);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(checkpoint, Some(29), "the checkpoint reached 29");
    drop(sub);
    server.kill9();

    let server = Server::start_at(&data);
    let client = server.client();
    let mut sub = subscribe(&client, &stream, "workers", 20).await;
    let mut after = BTreeSet::new();
    while after.len() < 20 {
        let e = next(&mut sub).await;
        after.insert(revision(&e));
        sub.ack(&e).await.unwrap();
    }
    assert_eq!(
        after,
        (30..50).collect(),
        "resumed right after the checkpoint"
    );
    let extra = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(extra.is_err(), "nothing beyond the stream: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_groups_live_in_are_not_the_clients_to_write() {
    use kurrentdb::{DeleteStreamOptions, StreamMetadata, TombstoneStreamOptions};
    let server = Server::start();
    let client = server.client();
    let stream = name("orders");
    append(&client, &stream, 3).await;
    let opts = fast_checkpoints(
        PersistentSubscriptionOptions::default().start_from(StreamPosition::Start),
    );
    client
        .create_persistent_subscription(stream.as_str(), "g", &opts)
        .await
        .unwrap();
    let mut sub = subscribe(&client, &stream, "g", 10).await;
    for i in 0..3 {
        let e = next(&mut sub).await;
        assert_eq!(revision(&e), i);
        sub.ack(&e).await.unwrap();
    }
    let checkpoint = format!("$persistentsubscription-{stream}::g-checkpoint");
    let parked = format!("$persistentsubscription-{stream}::g-parked");
    for target in ["$persistentSubscriptionConfig", &checkpoint, &parked] {
        let denied = |what: &str, r: Result<(), Error>| {
            assert!(
                matches!(r, Err(Error::AccessDenied)),
                "{what} {target}: {r:?}"
            );
        };
        denied(
            "tombstone",
            client
                .tombstone_stream(target, &TombstoneStreamOptions::default())
                .await
                .map(|_| ()),
        );
        denied(
            "delete",
            client
                .delete_stream(target, &DeleteStreamOptions::default())
                .await
                .map(|_| ()),
        );
        denied(
            "append to",
            client
                .append_to_stream(target, &AppendToStreamOptions::default(), ev("X"))
                .await
                .map(|_| ()),
        );
        denied(
            "$maxCount 0 on",
            client
                .set_stream_metadata(
                    target,
                    &AppendToStreamOptions::default(),
                    &StreamMetadata::builder().max_count(0).build(),
                )
                .await
                .map(|_| ()),
        );
    }
    // The group goes on, and new groups can be created.
    append(&client, &stream, 2).await;
    for i in 3..5 {
        let e = next(&mut sub).await;
        assert_eq!(revision(&e), i);
        sub.ack(&e).await.unwrap();
    }
    client
        .create_persistent_subscription(stream.as_str(), "h", &opts)
        .await
        .unwrap();
    let mut h = subscribe(&client, &stream, "h", 10).await;
    for i in 0..5 {
        let e = next(&mut h).await;
        assert_eq!(revision(&e), i);
        h.ack(&e).await.unwrap();
    }
    let groups = client
        .list_persistent_subscriptions_for_stream(
            stream.as_str(),
            &ListPersistentSubscriptionsOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(groups.len(), 2);
}

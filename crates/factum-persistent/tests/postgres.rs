//! Consumer groups on the PostgreSQL backend (the groups are generic over
//! `EventStore`): round robin, parking and replay, and a new subsystem over
//! the same database resuming from the stored checkpoint. Needs PostgreSQL
//! (`FACTUM_TEST_POSTGRES_URL`); prints SKIPPED without one, fails under
//! `CI=true`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use factum_core::{EventData, EventStore, ExpectedRevision, StreamName};
use factum_persistent::{
    ConnectOptions, Consumer, Delivery, GroupSettings, GroupSource, NackAction,
    PersistentSubscriptions, StartFrom,
};
use factum_postgres::{PostgresConfig, PostgresStore};

async fn store() -> Option<Arc<PostgresStore>> {
    let url = std::env::var("FACTUM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let schema = format!("factum_test_{}", factum_core::Uuid::new_v4().simple());
    let mut config = PostgresConfig::new(url.clone()).schema(schema);
    config.poll_interval = Duration::from_millis(100);
    match tokio::time::timeout(Duration::from_secs(5), PostgresStore::connect(config)).await {
        Ok(Ok(s)) => Some(Arc::new(s.drop_schema_on_drop())),
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "connecting timed out".into(),
            };
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("PostgreSQL at {url} is required under CI=true: {why}");
            }
            println!("SKIPPED persistent subscriptions on PostgreSQL: no server at {url} ({why})");
            None
        }
    }
}

async fn next(c: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("a delivery within 10 s")
        .expect("connected")
        .expect("no error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_run_on_postgres() {
    let Some(store) = store().await else { return };
    let stream = StreamName::new("invoice-1").unwrap();
    let events = (0..10)
        .map(|i| EventData::json("Issued", &serde_json::json!({ "i": i })).unwrap())
        .collect();
    store
        .append(stream.clone(), ExpectedRevision::NoStream, events)
        .await
        .unwrap();
    let settings = GroupSettings {
        start_from: StartFrom::Start,
        checkpoint_after: Duration::from_millis(50),
        min_checkpoint_count: 1,
        ..Default::default()
    };
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    subs.create(GroupSource::stream(&stream), "g", settings)
        .await
        .unwrap();
    let opts = ConnectOptions {
        buffer_size: 3,
        ..Default::default()
    };
    let mut a = subs.connect("invoice-1", "g", opts.clone()).await.unwrap();
    let mut b = subs.connect("invoice-1", "g", opts.clone()).await.unwrap();
    let mut seen = BTreeSet::new();
    for i in 0..6 {
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        let d = next(c).await;
        if d.event.revision.0 == 2 {
            c.nack([d.id()], NackAction::Park, "bad invoice").await;
        } else {
            c.ack([d.id()]).await;
        }
        assert!(seen.insert(d.event.revision.0));
    }
    assert_eq!(seen, (0..6).collect());
    // The parked event comes back on replay.
    let mut parked = 0;
    for _ in 0..200 {
        parked = subs.info("invoice-1", "g").await.unwrap().parked;
        if parked == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(parked, 1);
    drop(b);
    assert_eq!(subs.replay_parked("invoice-1", "g", None).await.unwrap(), 1);
    let mut replayed = false;
    while !replayed {
        let d = next(&mut a).await;
        replayed = d.event.revision.0 == 2;
        seen.insert(d.event.revision.0);
        a.ack([d.id()]).await;
    }
    drop(a);
    subs.shutdown().await;
    let checkpoint = subs_checkpoint(&store).await;

    // A new subsystem over the same database (another process, or after a
    // restart) resumes after the checkpoint.
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    let more = (0..2)
        .map(|i| EventData::json("Issued", &serde_json::json!({ "i": 10 + i })).unwrap())
        .collect();
    store
        .append(stream.clone(), ExpectedRevision::Any, more)
        .await
        .unwrap();
    let mut c = subs.connect("invoice-1", "g", opts).await.unwrap();
    let mut after = BTreeSet::new();
    while !after.contains(&11) {
        let d = next(&mut c).await;
        after.insert(d.event.revision.0);
        c.ack([d.id()]).await;
    }
    assert!(
        after.iter().all(|r| Some(*r) > checkpoint),
        "events at or before the checkpoint {checkpoint:?} came back: {after:?}"
    );
    let all: BTreeSet<u64> = seen.union(&after).copied().collect();
    assert_eq!(all, (0..12).collect(), "an event was skipped");
    subs.shutdown().await;
}

/// The checkpoint the group stored (its revision).
async fn subs_checkpoint(store: &PostgresStore) -> Option<u64> {
    let cp = StreamName::new("$persistentsubscription-invoice-1::g-checkpoint").unwrap();
    let events = store
        .read_stream(factum_core::ReadStream::backwards(cp).max_count(1))
        .await
        .ok()?;
    serde_json::from_slice(&events.first()?.data).ok()
}

//! Upcasting stored v1 events on load (the seed cases) and temporal queries.

#[macro_use]
mod common;
#[path = "../examples/bank/domain.rs"]
#[allow(dead_code)]
mod domain;

use std::time::Duration;

use domain::{Account, AccountCommand as Cmd, AccountEvent as Ev};
use factum::{CommandContext, Repository, RepositoryError, SnapshotPolicy};
use factum_core::{EventData, EventStore, ExpectedRevision, StreamName, StreamRevision, Timestamp};
use serde_json::json;

on_every_backend!(
    v1_events_are_upcast_on_load,
    as_of_time_and_revision_and_time_ranges,
);

async fn v1_events_are_upcast_on_load<S: EventStore + Clone>(store: S, _dir: tempfile::TempDir) {
    let stream = StreamName::new("account-old").unwrap();
    // Written by an old version of the application: no `$schemaVersion`,
    // `name` instead of `owner`, deposits without a currency.
    store
        .append(
            stream.clone(),
            ExpectedRevision::NoStream,
            vec![
                EventData::json("AccountOpened", &json!({"name": "ada"})).unwrap(),
                EventData::json("MoneyDeposited", &json!({"amount": 40})).unwrap(),
                EventData::json("MoneyDeposited", &json!({"amount": 2, "currency": "USD"}))
                    .unwrap()
                    .with_metadata(&b"{\"$schemaVersion\":2}"[..]),
            ],
        )
        .await
        .unwrap();

    let repo = Repository::<_, Account>::new(store.clone()).upcasters(domain::upcasters());
    let loaded = repo.load("old").await.unwrap();
    assert_eq!(loaded.state.owner, "ada", "name → owner");
    assert_eq!(loaded.state.balance, 42);
    let events = repo
        .events_between("old", Timestamp(0), Timestamp::now())
        .await
        .unwrap();
    assert_eq!(
        events[1].event,
        Ev::Deposited {
            amount: 40,
            currency: "EUR".into()
        },
        "currency defaulted"
    );
    assert_eq!(events[1].metadata.schema_version, 1, "stored version kept");
    assert_eq!(
        events[2].event,
        Ev::Deposited {
            amount: 2,
            currency: "USD".into()
        }
    );

    // New commands work on the upcast state and write v2.
    repo.execute("old", &Cmd::Withdraw { amount: 42 }, &CommandContext::new())
        .await
        .unwrap();

    // Without the upcasters, the old data is a clear error, not a panic.
    let bare = Repository::<_, Account>::new(store.clone());
    match bare.load("old").await {
        Err(RepositoryError::Codec { at, source, .. }) => {
            assert_eq!(at, Some(StreamRevision(0)));
            assert!(source.to_string().contains("AccountOpened"), "{source}");
        }
        other => panic!("expected a codec error, got {other:?}"),
    }
    // Garbage data is an error too.
    store
        .append(
            stream.clone(),
            ExpectedRevision::Any,
            vec![EventData::json("MoneyWithdrawn", &json!("not an object")).unwrap()],
        )
        .await
        .unwrap();
    assert!(matches!(
        repo.load("old").await,
        Err(RepositoryError::Codec { .. })
    ));
}

async fn as_of_time_and_revision_and_time_ranges<S: EventStore + Clone>(
    store: S,
    _dir: tempfile::TempDir,
) {
    let repo = Repository::<_, Account>::new(store.clone()).snapshots(SnapshotPolicy::every(3));
    let ctx = CommandContext::new();
    repo.execute("t", &Cmd::Open { owner: "o".into() }, &ctx)
        .await
        .unwrap();
    let mut marks = Vec::new(); // (time after deposit k, balance then)
    for k in 1..=8u64 {
        repo.execute("t", &Cmd::Deposit { amount: k }, &ctx)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
        let balance: u64 = (1..=k).sum();
        marks.push((Timestamp::now(), balance));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // Snapshots at revisions 2, 5, 8.
    for (k, (t, balance)) in marks.iter().enumerate() {
        let then = repo.load_as_of("t", *t).await.unwrap();
        assert_eq!(then.state.balance, *balance, "as of mark {k}");
        assert_eq!(then.revision, Some(StreamRevision(k as u64 + 1)));
        if let Some(s) = then.snapshot_revision {
            assert!(
                s <= then.revision.unwrap(),
                "snapshot at or before the time"
            );
        }
    }
    let at4 = repo.load_as_of("t", marks[3].0).await.unwrap();
    assert_eq!(at4.snapshot_revision, Some(StreamRevision(2)));
    assert_eq!(at4.events_replayed, 2);
    let before = repo.load_as_of("t", Timestamp(0)).await.unwrap();
    assert!(before.is_new(), "nothing existed at the epoch");

    let r5 = repo.load_at_revision("t", StreamRevision(5)).await.unwrap();
    assert_eq!(r5.state.balance, 15);
    assert_eq!(r5.snapshot_revision, Some(StreamRevision(5)));
    assert_eq!(r5.events_replayed, 0);
    let r4 = repo.load_at_revision("t", StreamRevision(4)).await.unwrap();
    assert_eq!(r4.state.balance, 10);
    assert_eq!(r4.snapshot_revision, Some(StreamRevision(2)));
    let r0 = repo.load_at_revision("t", StreamRevision(0)).await.unwrap();
    assert_eq!(r0.state.balance, 0);
    assert_eq!(r0.revision, Some(StreamRevision(0)));
    let beyond = repo
        .load_at_revision("t", StreamRevision(99))
        .await
        .unwrap();
    assert_eq!(beyond.state.balance, 36);

    // Deposits 3..=5 happened strictly between mark 2 and mark 5.
    let window = repo
        .events_between("t", marks[1].0, marks[4].0)
        .await
        .unwrap();
    let amounts: Vec<u64> = window
        .iter()
        .map(|r| match &r.event {
            Ev::Deposited { amount, .. } => *amount,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(amounts, vec![3, 4, 5]);
    assert!(window
        .iter()
        .all(|r| r.created > marks[1].0 && r.created <= marks[4].0));
    assert!(repo
        .events_between("t", marks[4].0, marks[1].0)
        .await
        .unwrap()
        .is_empty());
    assert!(repo
        .events_between("nobody", Timestamp(0), Timestamp::now())
        .await
        .unwrap()
        .is_empty());
}

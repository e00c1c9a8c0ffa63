//! The repository on every backend: execute, metadata, conflicts and
//! retries, domain errors, given/when/then.

#[macro_use]
mod common;
#[path = "../examples/bank/domain.rs"]
#[allow(dead_code)]
mod domain;

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use domain::{Account, AccountCommand as Cmd, AccountError, AccountEvent as Ev, Status};
use factum::testing::given;
use factum::{CommandContext, EventMetadata, Repository, RepositoryError};
use factum_core::{EventData, EventStore, ReadStream, StreamName, Timestamp};

#[test]
fn bank_rules_given_when_then() {
    let opened = || Ev::Opened {
        owner: "ada".into(),
    };
    given::<Account>([])
        .when(&Cmd::Open {
            owner: "ada".into(),
        })
        .then([opened()]);
    given::<Account>([])
        .when(&Cmd::Deposit { amount: 5 })
        .then_error_eq(AccountError::NotOpen);
    given::<Account>([opened()])
        .when(&Cmd::Deposit { amount: 5 })
        .then([Ev::Deposited {
            amount: 5,
            currency: "EUR".into(),
        }]);
    given::<Account>([opened()])
        .when(&Cmd::Withdraw { amount: 1 })
        .then_error(|e| {
            matches!(
                e,
                AccountError::InsufficientFunds {
                    balance: 0,
                    requested: 1
                }
            )
        });
    let funded = || {
        [
            opened(),
            Ev::Deposited {
                amount: 10,
                currency: "EUR".into(),
            },
        ]
    };
    given::<Account>(funded())
        .when(&Cmd::Close)
        .then_error_eq(AccountError::NonZeroBalance(10));
    given::<Account>(funded())
        .when(&Cmd::Withdraw { amount: 10 })
        .then([Ev::Withdrawn { amount: 10 }]);
    given::<Account>([opened(), Ev::Closed])
        .when(&Cmd::Deposit { amount: 1 })
        .then_error_eq(AccountError::Closed);
    given::<Account>([opened()])
        .when(&Cmd::Close)
        .then([Ev::Closed]);
    given::<Account>([opened()])
        .when(&Cmd::Open { owner: "x".into() })
        .then_error_eq(AccountError::AlreadyOpen);
    assert_eq!(given::<Account>(funded()).state().balance, 10);
}

#[test]
#[should_panic(expected = "other events than expected")]
fn then_fails_on_other_events() {
    given::<Account>([])
        .when(&Cmd::Open {
            owner: "ada".into(),
        })
        .then([Ev::Opened {
            owner: "bob".into(),
        }]);
}

on_every_backend!(
    execute_appends_with_metadata_and_keeps_domain_errors,
    conflicts_reload_and_retry_then_give_up,
    several_aggregates_in_one_commit,
    a_conflict_in_a_multi_aggregate_commit_retries_all,
);

/// A deposit lands on one account between the load and the commit: the
/// whole commit is re-run on fresh states; past the bound, `Conflict`.
async fn a_conflict_in_a_multi_aggregate_commit_retries_all<S: EventStore + Clone>(
    engine: S,
    _dir: tempfile::TempDir,
) {
    let races = Arc::new(AtomicU32::new(0));
    let store = common::RacingStore {
        inner: engine.clone(),
        races: races.clone(),
        intruder: Arc::new(intruding_deposit),
    };
    let repo = Repository::<_, Account>::new(store).retries(1, std::time::Duration::ZERO);
    let ctx = CommandContext::new();
    let open = |o: &str| Cmd::Open { owner: o.into() };
    repo.execute_many(&[("r-a", open("a")), ("r-b", open("b"))], &ctx)
        .await
        .unwrap();
    races.store(1, std::sync::atomic::Ordering::SeqCst);
    let both = [
        ("r-a", Cmd::Deposit { amount: 2 }),
        ("r-b", Cmd::Deposit { amount: 3 }),
    ];
    let done = repo.execute_many(&both, &ctx).await.unwrap();
    assert_eq!(done[0].attempts, 2);
    assert_eq!(done[1].state.balance, 4, "the intruding deposit was seen");
    races.store(2, std::sync::atomic::Ordering::SeqCst);
    let before = engine.head_position().await.unwrap();
    match repo.execute_many(&both, &ctx).await {
        Err(RepositoryError::Conflict {
            stream, attempts, ..
        }) => assert_eq!((stream.as_str(), attempts), ("account-r-b", 2)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Only the two intruding events were written.
    assert_eq!(
        engine.head_position().await.unwrap().map(|p| p.0),
        before.map(|p| p.0 + 2)
    );
}

/// A transfer: a withdrawal and a deposit on two accounts, one commit
/// (ADR 29); a refused command writes neither.
async fn several_aggregates_in_one_commit<S: EventStore + Clone>(
    store: S,
    _dir: tempfile::TempDir,
) {
    let repo = Repository::<_, Account>::new(store.clone());
    let ctx = CommandContext::new().correlation_id("transfer-1");
    let open = |owner: &str| Cmd::Open {
        owner: owner.into(),
    };
    let opened = repo
        .execute_many(
            &[
                ("t-a", open("ada")),
                ("t-a", Cmd::Deposit { amount: 10 }),
                ("t-b", open("bob")),
            ],
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(opened.len(), 2);
    assert_eq!(opened[0].state.balance, 10);
    assert_eq!(opened[0].revision.map(|r| r.0), Some(1));
    let head = store.head_position().await.unwrap();
    assert_eq!(
        opened[1].position, head,
        "one commit: b's event is the last"
    );
    let transfer = [
        ("t-a", Cmd::Withdraw { amount: 4 }),
        ("t-b", Cmd::Deposit { amount: 4 }),
    ];
    let done = repo.execute_many(&transfer, &ctx).await.unwrap();
    assert_eq!((done[0].state.balance, done[1].state.balance), (6, 4));
    let a = done[0].position.unwrap().0;
    assert_eq!(done[1].position.unwrap().0, a + 1, "contiguous positions");
    // Too much: the domain refuses, nothing of the transfer is written.
    let before = store.head_position().await.unwrap();
    let refused = repo
        .execute_many(
            &[
                ("t-b", Cmd::Deposit { amount: 100 }),
                ("t-a", Cmd::Withdraw { amount: 100 }),
            ],
            &ctx,
        )
        .await;
    assert!(matches!(
        refused,
        Err(RepositoryError::Domain(
            AccountError::InsufficientFunds { .. }
        ))
    ));
    assert_eq!(store.head_position().await.unwrap(), before);
    assert_eq!(repo.load("t-b").await.unwrap().state.balance, 4);
}

async fn execute_appends_with_metadata_and_keeps_domain_errors<S: EventStore + Clone>(
    store: S,
    _dir: tempfile::TempDir,
) {
    let repo = Repository::<_, Account>::new(store.clone());
    let ctx = CommandContext::new()
        .correlation_id("corr-7")
        .causation_id("http-request-9")
        .actor("alice")
        .with("tenant", "acme");
    let before = Timestamp::now();
    let opened = repo
        .execute(
            "1",
            &Cmd::Open {
                owner: "ada".into(),
            },
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(opened.attempts, 1);
    assert_eq!(opened.revision.map(|r| r.0), Some(0));
    assert!(opened.position.is_some());
    assert_eq!(opened.state.status, Status::Open);
    repo.execute("1", &Cmd::Deposit { amount: 30 }, &ctx)
        .await
        .unwrap();

    let events = store
        .read_stream(ReadStream::forwards(StreamName::new("account-1").unwrap()))
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].event_type, "AccountOpened");
    assert_eq!(events[1].event_type, "MoneyDeposited");
    for e in &events {
        let m = EventMetadata::parse(&e.metadata).unwrap();
        assert_eq!(m.correlation_id.as_deref(), Some("corr-7"));
        assert_eq!(m.causation_id.as_deref(), Some("http-request-9"));
        assert_eq!(m.actor.as_deref(), Some("alice"));
        assert_eq!(m.custom["tenant"], "acme");
        assert_eq!(m.schema_version, 2, "both event types are at v2");
        assert!(e.created >= before, "the store stamps commit times");
    }

    let refused = repo.execute("1", &Cmd::Withdraw { amount: 31 }, &ctx).await;
    match refused {
        Err(RepositoryError::Domain(AccountError::InsufficientFunds {
            balance: 30,
            requested: 31,
        })) => {}
        other => panic!("expected the domain error, got {other:?}"),
    }
    let bad_ctx = CommandContext::new().with("$causationId", "forged");
    assert!(matches!(
        repo.execute("1", &Cmd::Deposit { amount: 1 }, &bad_ctx)
            .await,
        Err(RepositoryError::Codec { .. })
    ));
    let loaded = repo.load("1").await.unwrap();
    assert_eq!(loaded.state.balance, 30);
    assert_eq!(loaded.revision.map(|r| r.0), Some(1));
    assert!(repo.load("never").await.unwrap().is_new());
    // A no-op command (none here) and a bad id are handled without panics.
    assert!(matches!(
        repo.load("bad\u{0}id").await,
        Err(RepositoryError::Store(_))
    ));
}

fn intruding_deposit() -> EventData {
    EventData::json(
        "MoneyDeposited",
        &serde_json::json!({"amount": 1, "currency": "EUR"}),
    )
    .unwrap()
    .with_metadata(&b"{\"$schemaVersion\":2}"[..])
}

async fn conflicts_reload_and_retry_then_give_up<S: EventStore + Clone>(
    engine: S,
    _dir: tempfile::TempDir,
) {
    let races = Arc::new(AtomicU32::new(0));
    let store = common::RacingStore {
        inner: engine.clone(),
        races: races.clone(),
        intruder: Arc::new(intruding_deposit),
    };
    let repo = Repository::<_, Account>::new(store.clone()).retries(2, std::time::Duration::ZERO);
    let ctx = CommandContext::new();
    repo.execute("9", &Cmd::Open { owner: "o".into() }, &ctx)
        .await
        .unwrap();

    // Two concurrent deposits sneak in: the command is re-run against the
    // reloaded state and succeeds on the third attempt.
    races.store(2, std::sync::atomic::Ordering::SeqCst);
    let done = repo
        .execute("9", &Cmd::Deposit { amount: 5 }, &ctx)
        .await
        .unwrap();
    assert_eq!(done.attempts, 3);
    assert_eq!(done.state.balance, 7, "both intruding deposits were seen");
    assert_eq!(done.revision.map(|r| r.0), Some(3));
    repo.execute("9", &Cmd::Withdraw { amount: 7 }, &ctx)
        .await
        .unwrap();

    // The re-run decides against the new state: closing at zero was fine,
    // but after a racing deposit the reloaded balance is 1, so the domain
    // refuses instead of conflicting.
    races.store(1, std::sync::atomic::Ordering::SeqCst);
    let refused = repo.execute("9", &Cmd::Close, &ctx).await;
    assert!(
        matches!(
            refused,
            Err(RepositoryError::Domain(AccountError::NonZeroBalance(1)))
        ),
        "{refused:?}"
    );

    // Always racing: bounded, then the conflict is returned.
    races.store(100, std::sync::atomic::Ordering::SeqCst);
    match repo.execute("9", &Cmd::Deposit { amount: 5 }, &ctx).await {
        Err(RepositoryError::Conflict {
            attempts, source, ..
        }) => {
            assert_eq!(attempts, 3);
            assert!(matches!(
                source,
                factum_core::Error::WrongExpectedVersion { .. }
            ));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    // A new aggregate appends with NoStream: a racing creator wins, the
    // re-run then sees an open account.
    races.store(1, std::sync::atomic::Ordering::SeqCst);
    let store2 = common::RacingStore {
        inner: engine.clone(),
        races: races.clone(),
        intruder: Arc::new(|| {
            EventData::json("AccountOpened", &serde_json::json!({"owner": "first"}))
                .unwrap()
                .with_metadata(&b"{\"$schemaVersion\":2}"[..])
        }),
    };
    let repo2 = Repository::<_, Account>::new(store2).retries(1, std::time::Duration::ZERO);
    let second = repo2
        .execute(
            "10",
            &Cmd::Open {
                owner: "second".into(),
            },
            &ctx,
        )
        .await;
    assert!(
        matches!(
            second,
            Err(RepositoryError::Domain(AccountError::AlreadyOpen))
        ),
        "{second:?}"
    );
}

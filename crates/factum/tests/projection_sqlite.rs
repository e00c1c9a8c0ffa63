//! Projections into SQLite, on every backend's store: catch-up then live,
//! restart without double-apply, failure policies, lag, read-your-writes,
//! rebuild, upcasting and pinning.

#[macro_use]
mod common;
#[path = "../examples/bank/domain.rs"]
#[allow(dead_code)]
mod domain;
#[path = "../examples/bank/read_models.rs"]
#[allow(dead_code)]
mod read_models;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::{Account, AccountCommand as Cmd};
use factum::projection::sqlite::{SqliteProjection, SqliteReadModel};
use factum::projection::{ApplyError, Envelope};
use factum::{
    CommandContext, FailurePolicy, ProjectionError, ProjectionRunner, Repository, RunState,
    RunnerOptions,
};
use factum_core::{EventData, EventStore, ExpectedRevision, Position, StreamName};
use read_models::AccountBalances;
use serde_json::json;

on_every_backend!(
    catch_up_live_restart_and_read_your_writes,
    stop_policy_commits_nothing_of_the_failing_batch_then_resumes_exactly_once,
    dead_letter_and_retry_policies,
    rebuild_beside_the_live_generation_then_switch,
    projections_read_upcast_or_pinned_versions,
    transient_store_errors_resubscribe_from_the_position,
);

const WAIT: Duration = Duration::from_secs(10);

async fn bank_activity<S: EventStore + Clone>(
    repo: &Repository<S, Account>,
    id: &str,
    deposits: &[u64],
) -> Position {
    let ctx = CommandContext::new();
    let mut last = repo
        .execute(
            id,
            &Cmd::Open {
                owner: format!("owner of {id}"),
            },
            &ctx,
        )
        .await
        .unwrap()
        .position;
    for d in deposits {
        last = repo
            .execute(id, &Cmd::Deposit { amount: *d }, &ctx)
            .await
            .unwrap()
            .position;
    }
    last.unwrap()
}

/// Waits until the runner reports `Live`: a position can be reached before
/// the store says it caught up (an event appended during catch-up is
/// delivered before `CaughtUp`).
async fn eventually_live<S: EventStore + Clone, M: factum::ReadModelStore>(
    handle: &factum::ProjectionHandle<S, M>,
) -> factum::ProjectionStatus {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status = handle.status().unwrap();
        if status.state == RunState::Live {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not live within {WAIT:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn balances(model: &SqliteReadModel<impl SqliteProjection>) -> Vec<(String, i64)> {
    let conn = model.reader().unwrap();
    let mut stmt = conn
        .prepare("SELECT account, balance FROM account_balances ORDER BY account")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

async fn catch_up_live_restart_and_read_your_writes<S: EventStore + Clone>(
    store: S,
    dir: tempfile::TempDir,
) {
    let repo = Repository::<_, Account>::new(store.clone());
    bank_activity(&repo, "a", &[10, 20]).await;
    bank_activity(&repo, "b", &[5]).await;
    let model = SqliteReadModel::new(dir.path().join("rm"), AccountBalances).unwrap();
    let handle = ProjectionRunner::start(store.clone(), model.clone(), RunnerOptions::default())
        .await
        .unwrap();
    let head = store.head_position().await.unwrap().unwrap();
    handle.wait_for(head, WAIT).await.unwrap();
    assert_eq!(balances(&model), vec![("a".into(), 30), ("b".into(), 5)]);
    let lag = handle.lag().await.unwrap();
    assert_eq!(lag.positions_behind, 0);
    assert_eq!(lag.seconds_behind, 0.0);
    let m = handle.metrics().await.unwrap();
    assert_eq!(m.lag, lag);
    let text = factum::projection::render_prometheus(&[m]);
    assert!(
        text.contains("factum_projection_lag_positions{projection=\"account_balances\"} 0\n"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "factum_projection_position{{projection=\"account_balances\"}} {}\n",
        head.0
    )));

    // Live: read-your-writes with the position the command returned.
    let done = repo
        .execute("a", &Cmd::Withdraw { amount: 7 }, &CommandContext::new())
        .await
        .unwrap();
    handle.wait_for(done.position.unwrap(), WAIT).await.unwrap();
    assert_eq!(balances(&model)[0], ("a".into(), 23));
    let status = eventually_live(&handle).await;
    assert_eq!(status.events_applied, 6);

    // A position never written: the wait times out with where it got to.
    match handle
        .wait_for(Position(head.0 + 1000), Duration::from_millis(50))
        .await
    {
        Err(ProjectionError::Timeout { reached, .. }) => assert!(reached.is_some()),
        other => panic!("expected a timeout, got {other:?}"),
    }

    // Restart: resumes after the checkpoint, applies nothing twice.
    handle.stop().await;
    assert!(handle.status().is_none());
    assert!(matches!(
        handle.wait_for(head, WAIT).await,
        Err(ProjectionError::Stopped { .. })
    ));
    bank_activity(&repo, "c", &[1]).await;
    let again = ProjectionRunner::start(store.clone(), model.clone(), RunnerOptions::default())
        .await
        .unwrap();
    let head = store.head_position().await.unwrap().unwrap();
    again.wait_for(head, WAIT).await.unwrap();
    assert_eq!(
        balances(&model),
        vec![("a".into(), 23), ("b".into(), 5), ("c".into(), 1)]
    );
    assert_eq!(
        again.status().unwrap().events_applied,
        2,
        "only the new events"
    );

    // Events of other categories and system events move the checkpoint
    // without touching the read model.
    let other = store
        .append(
            StreamName::new("audit-1").unwrap(),
            ExpectedRevision::Any,
            vec![EventData::json("Noted", &json!({})).unwrap()],
        )
        .await
        .unwrap();
    again.wait_for(other.position, WAIT).await.unwrap();
    again.stop().await;
}

/// Account balances that refuse deposits of `poison` while `failures` > 0
/// (forever when negative).
#[derive(Clone)]
struct Flaky {
    poison: u64,
    failures: Arc<AtomicI64>,
    seen: Arc<Mutex<Vec<u64>>>,
}

impl SqliteProjection for Flaky {
    fn name(&self) -> &str {
        "account_balances"
    }
    fn schema(&self) -> &str {
        AccountBalances.schema()
    }
    fn apply(&self, tx: &rusqlite::Transaction<'_>, e: &Envelope) -> Result<(), ApplyError> {
        if let Ok(domain::AccountEvent::Deposited { amount, .. }) = e.decode() {
            if amount == self.poison {
                let left = self.failures.fetch_sub(1, Ordering::SeqCst);
                if left != 0 {
                    if left < 0 {
                        self.failures.store(-1, Ordering::SeqCst);
                    }
                    return Err(format!("deposit of {amount} refused").into());
                }
            }
            self.seen.lock().unwrap().push(amount);
        }
        AccountBalances.apply(tx, e)
    }
}

fn flaky(poison: u64, failures: i64) -> Flaky {
    Flaky {
        poison,
        failures: Arc::new(AtomicI64::new(failures)),
        seen: Arc::default(),
    }
}

async fn stop_policy_commits_nothing_of_the_failing_batch_then_resumes_exactly_once<
    S: EventStore + Clone,
>(
    store: S,
    dir: tempfile::TempDir,
) {
    let repo = Repository::<_, Account>::new(store.clone());
    bank_activity(&repo, "a", &[1, 2, 13, 4]).await;
    let f = flaky(13, -1);
    let model = SqliteReadModel::new(dir.path().join("rm"), f.clone()).unwrap();
    let handle = ProjectionRunner::start(store.clone(), model.clone(), RunnerOptions::default())
        .await
        .unwrap();
    let head = store.head_position().await.unwrap().unwrap();
    match handle.wait_for(head, WAIT).await {
        Err(ProjectionError::Stopped { reason, .. }) => {
            assert!(reason.contains("deposit of 13 refused"), "{reason}")
        }
        other => panic!("expected the projection to stop, got {other:?}"),
    }
    let status = handle.status().unwrap();
    assert_eq!(status.state, RunState::Failed);
    assert!(status.last_error.unwrap().contains("deposit of 13"));
    // The whole batch (open, 1, 2, 13, 4) was rolled back with its checkpoint.
    assert!(balances(&model).is_empty());
    let lag = handle.lag().await.unwrap();
    assert_eq!(lag.positions_behind, 5);
    assert!(lag.seconds_behind > 0.0);
    let m = handle.metrics().await.unwrap();
    assert_eq!(m.lag.positions_behind, 5);
    let samples = m.samples();
    let value = |name: &str| samples.iter().find(|s| s.name == name).unwrap().value;
    assert_eq!(value("factum_projection_failed"), 1.0);
    assert_eq!(value("factum_projection_live"), 0.0);
    assert!(value("factum_projection_lag_seconds") > 0.0);

    // Fixed: runs again from the same checkpoint; every deposit counted once.
    f.failures.store(0, Ordering::SeqCst);
    let fixed = ProjectionRunner::start(store.clone(), model.clone(), RunnerOptions::default())
        .await
        .unwrap();
    fixed.wait_for(head, WAIT).await.unwrap();
    assert_eq!(balances(&model), vec![("a".into(), 20)]);
    fixed.stop().await;
}

async fn dead_letter_and_retry_policies<S: EventStore + Clone>(store: S, dir: tempfile::TempDir) {
    let repo = Repository::<_, Account>::new(store.clone());
    let head = bank_activity(&repo, "a", &[1, 13, 2]).await;

    // Dead letter: the poison event is skipped, recorded and counted.
    let model = SqliteReadModel::new(dir.path().join("dl"), flaky(13, -1)).unwrap();
    let handle = ProjectionRunner::start(
        store.clone(),
        model.clone(),
        RunnerOptions::default().failure(FailurePolicy::DeadLetter),
    )
    .await
    .unwrap();
    handle.wait_for(head, WAIT).await.unwrap();
    assert_eq!(balances(&model), vec![("a".into(), 3)]);
    let dead = model.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_type, "MoneyDeposited");
    assert_eq!(dead[0].stream, "account-a");
    assert!(dead[0].error.contains("refused"));
    let status = handle.status().unwrap();
    assert_eq!(status.dead_lettered, 1);
    assert!(status.last_error.is_some());
    handle.stop().await;

    // Retry: two failed attempts, then it goes through.
    let f = flaky(13, 2);
    let model = SqliteReadModel::new(dir.path().join("retry"), f.clone()).unwrap();
    let policy = FailurePolicy::Retry {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        then_dead_letter: false,
    };
    let handle = ProjectionRunner::start(
        store.clone(),
        model.clone(),
        RunnerOptions::default().failure(policy),
    )
    .await
    .unwrap();
    handle.wait_for(head, WAIT).await.unwrap();
    assert_eq!(balances(&model), vec![("a".into(), 16)]);
    assert_eq!(handle.status().unwrap().retries, 2);
    handle.stop().await;

    // Retry then dead-letter: a permanent failure ends in the table.
    let model = SqliteReadModel::new(dir.path().join("both"), flaky(13, -1)).unwrap();
    let policy = FailurePolicy::Retry {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
        then_dead_letter: true,
    };
    let handle = ProjectionRunner::start(
        store.clone(),
        model.clone(),
        RunnerOptions::default().failure(policy),
    )
    .await
    .unwrap();
    handle.wait_for(head, WAIT).await.unwrap();
    assert_eq!(balances(&model), vec![("a".into(), 3)]);
    assert_eq!(model.dead_letters().unwrap().len(), 1);
    handle.stop().await;
}

async fn rebuild_beside_the_live_generation_then_switch<S: EventStore + Clone>(
    store: S,
    dir: tempfile::TempDir,
) {
    let repo = Repository::<_, Account>::new(store.clone());
    for i in 0..20 {
        bank_activity(&repo, &format!("r{i:02}"), &[i + 1, 100]).await;
    }
    let model = SqliteReadModel::new(dir.path().join("rm"), AccountBalances).unwrap();
    let handle = ProjectionRunner::start(
        store.clone(),
        model.clone(),
        RunnerOptions::default().batch_size(7),
    )
    .await
    .unwrap();
    let head = store.head_position().await.unwrap().unwrap();
    handle.wait_for(head, WAIT).await.unwrap();
    let before = balances(&model);
    assert_eq!(before.len(), 20);
    let old_reader = model.reader().unwrap();

    let mut reports = Vec::new();
    let generation = handle.rebuild(|p| reports.push(p)).await.unwrap();
    assert_eq!(generation, 2);
    assert!(!reports.is_empty());
    assert!(reports.iter().all(|p| p.generation == 2));
    assert!(reports.last().unwrap().fraction() >= 1.0);
    assert_eq!(balances(&model), before, "same content, new generation");
    assert!(model.path_of(2).exists());
    assert!(!model.path_of(1).exists(), "the old generation is dropped");
    // Readers reopen after a switch (the old file is gone).
    drop(old_reader);

    // The new generation is live: new writes reach it.
    let done = repo
        .execute("r00", &Cmd::Withdraw { amount: 1 }, &CommandContext::new())
        .await
        .unwrap();
    handle.wait_for(done.position.unwrap(), WAIT).await.unwrap();
    assert_eq!(balances(&model)[0], ("r00".into(), 100));
    assert_eq!(handle.status().unwrap().generation, 2);
    handle.stop().await;
    // Restarting finds generation 2 live.
    let again = ProjectionRunner::start(store.clone(), model.clone(), RunnerOptions::default())
        .await
        .unwrap();
    assert_eq!(again.status().unwrap().generation, 2);
    again.stop().await;
}

/// Records the deposit data as the projection sees it.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<(u32, serde_json::Value)>>>,
}

impl SqliteProjection for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn schema(&self) -> &str {
        "CREATE TABLE IF NOT EXISTS recorder_unused (x INTEGER);"
    }
    fn apply(&self, _: &rusqlite::Transaction<'_>, e: &Envelope) -> Result<(), ApplyError> {
        if e.event_type() == "MoneyDeposited" {
            self.seen
                .lock()
                .unwrap()
                .push((e.schema_version(), e.json()?));
        }
        Ok(())
    }
}

async fn projections_read_upcast_or_pinned_versions<S: EventStore + Clone>(
    store: S,
    dir: tempfile::TempDir,
) {
    let stream = StreamName::new("account-u").unwrap();
    store
        .append(
            stream,
            ExpectedRevision::NoStream,
            vec![
                EventData::json("AccountOpened", &json!({"name": "ada"})).unwrap(),
                EventData::json("MoneyDeposited", &json!({"amount": 1})).unwrap(),
            ],
        )
        .await
        .unwrap();
    let repo = Repository::<_, Account>::new(store.clone()).upcasters(domain::upcasters());
    let head = repo
        .execute("u", &Cmd::Deposit { amount: 2 }, &CommandContext::new())
        .await
        .unwrap()
        .position
        .unwrap();

    let latest = Recorder::default();
    let model = SqliteReadModel::new(dir.path().join("latest"), latest.clone()).unwrap();
    let h = ProjectionRunner::start(
        store.clone(),
        model,
        RunnerOptions::default().upcasters(domain::upcasters()),
    )
    .await
    .unwrap();
    h.wait_for(head, WAIT).await.unwrap();
    h.stop().await;
    assert_eq!(
        *latest.seen.lock().unwrap(),
        vec![
            (2, json!({"amount": 1, "currency": "EUR"})),
            (2, json!({"amount": 2, "currency": "EUR"})),
        ]
    );

    let pinned = Recorder::default();
    let model = SqliteReadModel::new(dir.path().join("pinned"), pinned.clone()).unwrap();
    let h = ProjectionRunner::start(
        store.clone(),
        model,
        RunnerOptions::default()
            .upcasters(domain::upcasters())
            .pin("MoneyDeposited", 1),
    )
    .await
    .unwrap();
    h.wait_for(head, WAIT).await.unwrap();
    h.stop().await;
    assert_eq!(
        *pinned.seen.lock().unwrap(),
        vec![(1, json!({"amount": 1})), (1, json!({"amount": 2}))],
        "a consumer pinned to v1 gets v2 events downcast"
    );
}

#[test]
fn bad_names_are_refused() {
    #[derive(Clone)]
    struct Bad;
    impl SqliteProjection for Bad {
        fn name(&self) -> &str {
            "../etc"
        }
        fn schema(&self) -> &str {
            ""
        }
        fn apply(&self, _: &rusqlite::Transaction<'_>, _: &Envelope) -> Result<(), ApplyError> {
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        SqliteReadModel::new(dir.path(), Bad),
        Err(ProjectionError::Invalid(_))
    ));
}

/// The store ends subscriptions with a transient error (a restarting
/// server) twice mid-stream and refuses one subscribe: the runner
/// re-subscribes after its position and every event counts exactly once.
/// A permanent error still stops it.
async fn transient_store_errors_resubscribe_from_the_position<S: EventStore + Clone>(
    store: S,
    dir: tempfile::TempDir,
) {
    let repo = Repository::<_, Account>::new(store.clone());
    bank_activity(&repo, "a", &[1, 2, 3, 4]).await;
    bank_activity(&repo, "b", &[10, 20]).await;
    let flaky = common::BreakingStore::new(store.clone(), || {
        factum_core::Error::unavailable(
            factum_core::UnavailableReason::Connection,
            "connection reset (injected)",
        )
    });
    flaky.breaks.store(2, Ordering::SeqCst);
    flaky.refusals.store(1, Ordering::SeqCst);
    let policy = factum::ResubscribePolicy {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        max_attempts: Some(3),
    };
    let model = SqliteReadModel::new(dir.path().join("rm"), AccountBalances).unwrap();
    let handle = ProjectionRunner::start(
        flaky.clone(),
        model.clone(),
        RunnerOptions::default()
            .batch_size(1)
            .resubscribe(policy.clone()),
    )
    .await
    .unwrap();
    let head = store.head_position().await.unwrap().unwrap();
    handle.wait_for(head, WAIT).await.unwrap();
    assert_eq!(balances(&model), vec![("a".into(), 10), ("b".into(), 30)]);
    let status = handle.status().unwrap();
    // Broken after 2 events, refused once (a failed re-subscribe), broken
    // after 2 more, then it runs.
    assert_eq!(status.resubscribes, 3);
    assert_eq!(status.events_applied, 8, "nothing applied twice");
    assert!(status
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("injected")));
    // Live again after the breaks.
    let done = repo
        .execute("a", &Cmd::Deposit { amount: 5 }, &CommandContext::new())
        .await
        .unwrap();
    handle.wait_for(done.position.unwrap(), WAIT).await.unwrap();
    assert_eq!(balances(&model)[0], ("a".into(), 15));
    eventually_live(&handle).await;
    handle.stop().await;

    // A store that stays down: after max_attempts failures in a row, stop.
    flaky.refusals.store(100, Ordering::SeqCst);
    let down = ProjectionRunner::start(
        flaky.clone(),
        model.clone(),
        RunnerOptions::default().resubscribe(policy),
    )
    .await
    .unwrap();
    match down.wait_for(Position(head.0 + 100), WAIT).await {
        Err(ProjectionError::Stopped { reason, .. }) => {
            assert!(reason.contains("gave up after 3 re-subscribes"), "{reason}")
        }
        other => panic!("expected the projection to give up, got {other:?}"),
    }
    assert_eq!(down.status().unwrap().resubscribes, 3);
    down.stop().await;

    // A permanent error is not retried.
    let broken = common::BreakingStore::new(store.clone(), || {
        factum_core::Error::InvalidInput("bad subscription (injected)".into())
    });
    broken.breaks.store(1, Ordering::SeqCst);
    let model = SqliteReadModel::new(dir.path().join("rm2"), AccountBalances).unwrap();
    let handle = ProjectionRunner::start(broken, model, RunnerOptions::default())
        .await
        .unwrap();
    match handle.wait_for(head, WAIT).await {
        Err(ProjectionError::Stopped { reason, .. }) => {
            assert!(reason.contains("bad subscription"), "{reason}")
        }
        other => panic!("expected the projection to stop, got {other:?}"),
    }
    assert_eq!(handle.status().unwrap().resubscribes, 0);
    handle.stop().await;
}

//! Projections into PostgreSQL. Needs a server: `FACTUM_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`). Each test
//! creates its own database and drops it. Without a server the tests print
//! SKIPPED and pass, except under `CI=true`, where they fail.

mod common;
#[path = "../examples/bank/domain.rs"]
#[allow(dead_code)]
mod domain;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain::{Account, AccountCommand as Cmd, AccountEvent};
use factum::projection::postgres::{self, PostgresProjection, PostgresReadModel};
use factum::projection::{ApplyError, Envelope};
use factum::{CommandContext, FailurePolicy, ProjectionRunner, Repository, RunnerOptions};
use factum_core::EventStore;
use tokio_postgres::{Client, Transaction};

const WAIT: Duration = Duration::from_secs(20);

/// A fresh database for one test; dropped by `drop_db`.
struct TestDb {
    admin: Client,
    name: String,
    url: String,
}

async fn test_db(test: &str) -> Option<TestDb> {
    let base = common::postgres_url();
    let admin = match tokio::time::timeout(Duration::from_secs(5), postgres::connect(&base)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return common::skip_without_postgres(test, e).and(None),
        Err(_) => return common::skip_without_postgres(test, "timed out").and(None),
    };
    let name = format!("factum_test_{}", factum_core::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = match base.rsplit_once('/') {
        Some((prefix, _)) => format!("{prefix}/{name}"),
        None => panic!("cannot derive a database URL from {base}"),
    };
    Some(TestDb { admin, name, url })
}

impl TestDb {
    async fn drop_db(self) {
        self.admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap();
    }
}

/// Account balances; `apply_batch` sums a batch per account and writes it
/// with one statement. Refuses deposits of 13 while `poison` is set.
#[derive(Clone, Default)]
struct PgBalances {
    poison: Arc<AtomicBool>,
}

fn delta(e: &Envelope, poison: bool) -> Result<Option<(String, i64)>, ApplyError> {
    let Some(id) = e.stream().as_str().strip_prefix("account-") else {
        return Ok(None);
    };
    let d = match e.decode::<AccountEvent>()? {
        AccountEvent::Deposited { amount: 13, .. } if poison => {
            return Err("deposit of 13 refused".into())
        }
        AccountEvent::Deposited { amount, .. } => amount as i64,
        AccountEvent::Withdrawn { amount } => -(amount as i64),
        _ => 0,
    };
    Ok(Some((id.to_owned(), d)))
}

impl PostgresProjection for PgBalances {
    fn name(&self) -> &str {
        "balances"
    }
    fn schema(&self) -> &str {
        "CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, balance BIGINT NOT NULL);"
    }
    async fn apply(&self, tx: &Transaction<'_>, e: &Envelope) -> Result<(), ApplyError> {
        if let Some((id, d)) = delta(e, self.poison.load(Ordering::SeqCst))? {
            tx.execute(
                "INSERT INTO balances VALUES ($1, $2)
                 ON CONFLICT (account) DO UPDATE SET balance = balances.balance + excluded.balance",
                &[&id, &d],
            )
            .await?;
        }
        Ok(())
    }
    async fn apply_batch(
        &self,
        tx: &Transaction<'_>,
        events: &[Envelope],
    ) -> Result<(), ApplyError> {
        let mut sums: BTreeMap<String, i64> = BTreeMap::new();
        for e in events {
            if let Some((id, d)) = delta(e, self.poison.load(Ordering::SeqCst))? {
                *sums.entry(id).or_default() += d;
            }
        }
        let (ids, ds): (Vec<String>, Vec<i64>) = sums.into_iter().unzip();
        tx.execute(
            "INSERT INTO balances SELECT * FROM unnest($1::text[], $2::bigint[])
             ON CONFLICT (account) DO UPDATE SET balance = balances.balance + excluded.balance",
            &[&ids, &ds],
        )
        .await?;
        Ok(())
    }
}

async fn balances(db: &TestDb, model: &PostgresReadModel<PgBalances>) -> Vec<(String, i64)> {
    let client = postgres::connect(&db.url).await.unwrap();
    let schema = model.live_schema().await.unwrap();
    client
        .query(
            &format!("SELECT account, balance FROM {schema}.balances ORDER BY account"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn postgres_catch_up_live_dead_letter_and_rebuild() {
    let Some(db) = test_db("postgres_catch_up_live_dead_letter_and_rebuild").await else {
        return;
    };
    let (store, _dir) = common::engine();
    let repo = Repository::<_, Account>::new(store.clone());
    let ctx = CommandContext::new();
    for id in ["a", "b"] {
        repo.execute(id, &Cmd::Open { owner: id.into() }, &ctx)
            .await
            .unwrap();
        for amount in [5, 13, 7] {
            repo.execute(id, &Cmd::Deposit { amount }, &ctx)
                .await
                .unwrap();
        }
    }
    let projection = PgBalances::default();
    projection.poison.store(true, Ordering::SeqCst);
    let model = PostgresReadModel::new(&db.url, projection.clone()).unwrap();
    let handle = ProjectionRunner::start(
        store.clone(),
        model.clone(),
        RunnerOptions::default().failure(FailurePolicy::DeadLetter),
    )
    .await
    .unwrap();
    let head = store.head_position().await.unwrap().unwrap();
    handle.wait_for(head, WAIT).await.unwrap();
    // The batch path failed on the poison, the event-by-event path
    // dead-lettered the two deposits of 13 and applied the rest.
    assert_eq!(
        balances(&db, &model).await,
        vec![("a".into(), 12), ("b".into(), 12)]
    );
    let client = postgres::connect(&db.url).await.unwrap();
    let dead = postgres::dead_letters(&client, &model.live_schema().await.unwrap())
        .await
        .unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead
        .iter()
        .all(|d| d.2 == "MoneyDeposited" && d.3.contains("refused")));
    assert_eq!(handle.status().unwrap().dead_lettered, 2);

    // Live, read-your-writes.
    let done = repo
        .execute("a", &Cmd::Withdraw { amount: 2 }, &ctx)
        .await
        .unwrap();
    handle.wait_for(done.position.unwrap(), WAIT).await.unwrap();
    assert_eq!(balances(&db, &model).await[0], ("a".into(), 10));

    // Rebuild with the poison gone: generation 2 counts every deposit.
    projection.poison.store(false, Ordering::SeqCst);
    let mut reports = 0;
    let generation = handle.rebuild(|_| reports += 1).await.unwrap();
    assert_eq!(generation, 2);
    assert!(reports > 0);
    assert_eq!(model.live_schema().await.unwrap(), "rm_balances_g2");
    assert_eq!(
        balances(&db, &model).await,
        vec![("a".into(), 23), ("b".into(), 25)]
    );
    let old: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'rm_balances_g1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(old, 0, "the old generation's schema is dropped");
    let done = repo
        .execute("b", &Cmd::Withdraw { amount: 5 }, &ctx)
        .await
        .unwrap();
    handle.wait_for(done.position.unwrap(), WAIT).await.unwrap();
    assert_eq!(balances(&db, &model).await[1], ("b".into(), 20));

    // Restart resumes generation 2 without double-applying.
    handle.stop().await;
    let again = ProjectionRunner::start(store.clone(), model.clone(), RunnerOptions::default())
        .await
        .unwrap();
    again.wait_for(done.position.unwrap(), WAIT).await.unwrap();
    assert_eq!(
        balances(&db, &model).await,
        vec![("a".into(), 23), ("b".into(), 20)]
    );
    again.stop().await;
    drop(client);
    db.drop_db().await;
}

/// A generation written before positions started at 1 (ADR 25: no
/// `positions_from` column) is converted when opened, once: its checkpoint
/// and dead letters name the same events in the new numbering.
#[tokio::test]
async fn a_generation_numbered_from_0_is_converted_once_when_opened() {
    use factum::projection::ReadModelStore;
    let Some(db) = test_db("a_generation_numbered_from_0_is_converted_once_when_opened").await
    else {
        return;
    };
    let model = PostgresReadModel::new(&db.url, PgBalances::default()).unwrap();
    let schema = model.schema_of(1);
    let client = postgres::connect(&db.url).await.unwrap();
    // The bookkeeping tables as the previous build created them.
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.factum_checkpoint (
                 id         INTEGER PRIMARY KEY CHECK (id = 1),
                 position   BIGINT,
                 updated_at TIMESTAMPTZ NOT NULL DEFAULT now());
             INSERT INTO {schema}.factum_checkpoint (id, position) VALUES (1, 4);
             CREATE TABLE {schema}.factum_dead_letters (
                 position   BIGINT PRIMARY KEY,
                 stream     TEXT NOT NULL,
                 revision   BIGINT NOT NULL,
                 event_type TEXT NOT NULL,
                 error      TEXT NOT NULL,
                 data       BYTEA NOT NULL,
                 failed_at  TIMESTAMPTZ NOT NULL DEFAULT now());
             INSERT INTO {schema}.factum_dead_letters (position, stream, revision, event_type, error, data)
             VALUES (2, 'account-a', 1, 'Deposited', 'refused', ''), (3, 'account-a', 2, 'Deposited', 'refused', '');"
        ))
        .await
        .unwrap();
    for _ in 0..2 {
        drop(model.open(1).await.unwrap());
        let row = client
            .query_one(
                &format!("SELECT position, positions_from FROM {schema}.factum_checkpoint"),
                &[],
            )
            .await
            .unwrap();
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i32>(1)), (5, 1));
        let dead: Vec<i64> = client
            .query(
                &format!("SELECT position FROM {schema}.factum_dead_letters ORDER BY position"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(dead, [3, 4]);
    }
    drop(client);
    db.drop_db().await;
}

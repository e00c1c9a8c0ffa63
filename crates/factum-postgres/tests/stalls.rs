//! A stalled instance or a held lock cannot block every writer and reader
//! (ADR 17): appends waiting for the head lock give up after
//! `lock_timeout` with a clear error; an instance frozen (SIGSTOP) while
//! holding the head lock inside a transaction is ended by the server after
//! `idle_in_transaction_session_timeout`, and the others' appends go on;
//! a read waiting for a free connection gives up after `pool_wait_timeout`.
//!
//! Needs PostgreSQL at `FACTUM_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); without one the tests
//! print SKIPPED, with `CI=true` they fail.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use factum_core::{Error, EventData, EventStore, ExpectedRevision, ReadAll, StreamName};
use factum_postgres::{PostgresConfig, PostgresStore};

mod common;
use common::{admin, url};

fn append_one(
    store: &PostgresStore,
    stream: &str,
) -> impl std::future::Future<Output = factum_core::Result<factum_core::AppendResult>> + 'static {
    let store = store.clone();
    let stream = StreamName::new(stream).unwrap();
    async move {
        store
            .append(
                stream,
                ExpectedRevision::Any,
                vec![EventData::json("Happened", &1).unwrap()],
            )
            .await
    }
}

fn schema() -> String {
    format!("factum_stall_{}", factum_core::Uuid::new_v4().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_behind_a_held_head_lock_fails_after_lock_timeout_instead_of_hanging() {
    let url = url();
    let Some(holder) = admin(&url).await else {
        return;
    };
    let schema = schema();
    let mut config = PostgresConfig::new(&url).schema(&schema);
    config.lock_timeout = Duration::from_millis(300);
    let store = PostgresStore::connect(config)
        .await
        .unwrap()
        .drop_schema_on_drop();
    append_one(&store, "s-1").await.unwrap();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {schema}.head WHERE id = 1 FOR UPDATE"
        ))
        .await
        .unwrap();
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), append_one(&store, "s-1"))
        .await
        .expect("the append hung behind the lock");
    let waited = started.elapsed();
    match outcome {
        Err(Error::Unavailable { message: m, .. }) => {
            assert!(m.contains("lock timeout"), "{m}");
            assert!(m.contains("55P03"), "{m}");
            assert!(m.contains("nothing was written"), "{m}");
        }
        other => panic!("expected Unavailable after lock timeouts, got {other:?}"),
    }
    // Four tries of 300 ms and the pauses between them.
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    eprintln!("an append behind a held head lock failed after {waited:?}");
    holder.batch_execute("COMMIT").await.unwrap();
    let r = append_one(&store, "s-1").await.unwrap();
    assert_eq!(r.revision.0, 1, "the refused append wrote nothing");
}

/// The frozen instance of
/// `an_instance_frozen_holding_the_head_lock_is_ended_by_the_server`: run
/// by that test as a child process (ignored otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of another test"]
async fn frozen_instance_child() {
    let schema = std::env::var("FACTUM_FROZEN_SCHEMA").expect("run by the parent test");
    let mut config = PostgresConfig::new(url()).schema(&schema);
    config.idle_in_transaction_timeout = Duration::from_secs(2);
    config.lock_timeout = Duration::from_secs(120);
    let store = PostgresStore::connect(config).await.unwrap();
    eprintln!("child: appending");
    // Blocks on the parent's lock; the parent freezes this process then.
    let _ = append_one(&store, "child-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_frozen_holding_the_head_lock_is_ended_by_the_server() {
    let url = url();
    let Some(admin) = admin(&url).await else {
        return;
    };
    let schema = schema();
    let store = PostgresStore::connect(PostgresConfig::new(&url).schema(&schema))
        .await
        .unwrap()
        .drop_schema_on_drop();
    append_one(&store, "s-1").await.unwrap();
    // The other instance's group will wait for this lock ...
    admin
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {schema}.head WHERE id = 1 FOR UPDATE"
        ))
        .await
        .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "frozen_instance_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("FACTUM_FROZEN_SCHEMA", &schema)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let observer = common::admin(&url).await.unwrap();
    let waiting_pid = format!(
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'
           AND query LIKE '%FROM {schema}.head WHERE id = 1 FOR UPDATE%' AND pid <> pg_backend_pid()"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let child_backend: i32 = loop {
        if let Some(row) = observer.query_opt(&waiting_pid, &[]).await.unwrap() {
            break row.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "the child never waited for the head lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // ... and is frozen, so once it has the lock it holds it, idle in its
    // transaction, without end (the kernel still answers its TCP
    // keepalives).
    let stop = Command::new("kill")
        .args(["-STOP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stop.success());
    admin.batch_execute("COMMIT").await.unwrap();
    let state = "SELECT state FROM pg_stat_activity WHERE pid = $1";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = observer.query_opt(state, &[&child_backend]).await.unwrap();
        let s: Option<String> = row.and_then(|r| r.get(0));
        if s.as_deref() == Some("idle in transaction") {
            break;
        }
        assert!(Instant::now() < deadline, "the child's session is {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let outcome = append_one(&store, "s-1").await;
    let waited = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    let r = outcome.expect("an append once the frozen instance's session was ended");
    assert_eq!(r.revision.0, 1);
    assert!(
        waited > Duration::from_millis(1000) && waited < Duration::from_secs(10),
        "waited {waited:?} for a session idle in its transaction for at most 2 s"
    );
    eprintln!("an append behind a frozen instance's lock succeeded after {waited:?}");
    let gone = observer.query_opt(state, &[&child_backend]).await.unwrap();
    assert!(
        gone.is_none(),
        "the frozen instance's session was not ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waiting_for_a_connection_gives_up_after_the_pool_wait_timeout() {
    let url = url();
    let Some(admin) = admin(&url).await else {
        return;
    };
    let schema = schema();
    let mut config = PostgresConfig::new(&url).schema(&schema);
    config.pool_size = 1;
    config.pool_wait_timeout = Duration::from_millis(300);
    let store = PostgresStore::connect(config)
        .await
        .unwrap()
        .drop_schema_on_drop();
    append_one(&store, "s-1").await.unwrap();
    // A read stuck behind a lock holds the only read connection.
    admin
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {schema}.events IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    let stuck = {
        let store = store.clone();
        tokio::spawn(async move { store.read_all(ReadAll::forwards()).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let outcome = store.read_all(ReadAll::forwards()).await;
    let waited = started.elapsed();
    match outcome {
        Err(Error::Unavailable { message: m, .. }) => assert!(m.contains("connect"), "{m}"),
        other => panic!("expected Unavailable after the pool wait, got {other:?}"),
    }
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    admin.batch_execute("COMMIT").await.unwrap();
    assert_eq!(stuck.await.unwrap().unwrap().len(), 1);
    assert_eq!(store.read_all(ReadAll::forwards()).await.unwrap().len(), 1);
}

//! One append the database refuses fails alone (ADR 17): the writer
//! batches concurrent appends into one transaction (ADR 6), and when
//! PostgreSQL refuses a statement on its data (SQLSTATE class 22 or 23) the
//! group is halved until the refused append stands alone. It answers
//! `InvalidInput`; every other member commits.
//!
//! The refusals are the database's own: a character the database encoding
//! lacks (a LATIN1 database made by the test), and a CHECK constraint the
//! test adds to its own schema. To be sure the refused append shares a
//! group with many others, another session holds the `head` row lock while
//! the appends queue behind the writer's first group.
//!
//! Needs PostgreSQL at `FACTUM_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); without one the tests
//! print SKIPPED, with `CI=true` they fail.

use std::time::Duration;

use factum_core::{
    Error, EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, StreamName,
};
use factum_postgres::{PostgresConfig, PostgresStore};

mod common;
use common::{admin, url, with_database};

/// Sends `appends` (stream, event type) concurrently while another session
/// holds the `head` lock, so they queue up and the writer takes them as one
/// group; returns each append's outcome, in order.
async fn append_as_one_group(
    store: &PostgresStore,
    db_url: &str,
    schema: &str,
    appends: Vec<(String, String)>,
) -> Vec<factum_core::Result<factum_core::AppendResult>> {
    let holder = admin(db_url).await.expect("connected before");
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {schema}.head WHERE id = 1 FOR UPDATE"
        ))
        .await
        .unwrap();
    // The first append takes the writer into a group that waits for the
    // lock; everything sent meanwhile queues for the next group.
    let first = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(
                    StreamName::new("opener").unwrap(),
                    ExpectedRevision::NoStream,
                    vec![EventData::json("Opened", &0).unwrap()],
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tasks: Vec<_> = appends
        .into_iter()
        .enumerate()
        .map(|(i, (stream, event_type))| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(
                        StreamName::new(stream).unwrap(),
                        ExpectedRevision::Any,
                        vec![EventData::json(event_type, &i).unwrap()],
                    )
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    first.await.unwrap().expect("the opening append");
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Checks that exactly the appends at `refused` failed, with
/// `InvalidInput` naming `why`, and that every other one is in `$all` at
/// dense positions after the opener.
async fn assert_only_refused_failed(
    store: &PostgresStore,
    outcomes: &[factum_core::Result<factum_core::AppendResult>],
    refused: &[usize],
    why: &str,
) {
    for (i, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Err(Error::InvalidInput(m)) if refused.contains(&i) => {
                assert!(m.contains(why), "append {i}: {m}");
            }
            Ok(_) if !refused.contains(&i) => {}
            other => panic!("append {i} (refused: {}): {other:?}", refused.contains(&i)),
        }
    }
    let all = store.read_all(ReadAll::forwards()).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position.0).collect();
    let expected = 1 + outcomes.len() - refused.len();
    assert_eq!(
        positions,
        (1..=expected as u64).collect::<Vec<_>>(),
        "every accepted append once, at dense positions"
    );
    // The store goes on: the writer's connection and cache are sound.
    store
        .append(
            StreamName::new("after").unwrap(),
            ExpectedRevision::NoStream,
            vec![EventData::json("After", &0).unwrap()],
        )
        .await
        .expect("an append after the refusals");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_constraint_refuses_one_append_of_a_group_and_only_that_one() {
    let url = url();
    let Some(admin) = admin(&url).await else {
        return;
    };
    let schema = format!("factum_refuse_{}", factum_core::Uuid::new_v4().simple());
    let store = PostgresStore::connect(PostgresConfig::new(&url).schema(&schema))
        .await
        .unwrap()
        .drop_schema_on_drop();
    // The operator's own rule, enforced by the database alone.
    admin
        .batch_execute(&format!(
            "ALTER TABLE {schema}.events ADD CONSTRAINT no_refused_events CHECK (event_type <> 'Refused')"
        ))
        .await
        .unwrap();
    let refused = [3, 150, 255];
    let appends = (0..256)
        .map(|i| {
            let event_type = if refused.contains(&i) {
                "Refused"
            } else {
                "Fine"
            };
            (format!("s-{}", i % 16), event_type.to_string())
        })
        .collect();
    let outcomes = append_as_one_group(&store, &url, &schema, appends).await;
    assert_only_refused_failed(&store, &outcomes, &refused, "no_refused_events").await;
    // Streams of refused appends hold only what was accepted.
    let s3 = store
        .read_stream(ReadStream::forwards(StreamName::new("s-3").unwrap()))
        .await
        .unwrap();
    assert!(s3.iter().all(|e| e.event_type == "Fine"));
    assert_eq!(s3.len(), 256 / 16 - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_character_the_database_encoding_lacks_fails_only_its_append() {
    let url = url();
    let Some(admin) = admin(&url).await else {
        return;
    };
    let database = format!("factum_latin1_{}", factum_core::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {database} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ))
        .await
        .unwrap();
    let db_url = with_database(&url, &database);
    let result = async move {
        let store = PostgresStore::connect(PostgresConfig::new(&db_url).schema("factum"))
            .await
            .unwrap();
        // Valid Unicode, in types and stream names, that LATIN1 cannot hold
        // (é can: it is accepted).
        let refused = [10, 11, 99];
        let appends = (0..128)
            .map(|i| match i {
                10 => ("s-1".to_string(), "Bestellung→Versand".to_string()),
                11 => ("注文-1".to_string(), "Fine".to_string()),
                99 => ("s-2".to_string(), "🦀".to_string()),
                _ => (format!("s-{}", i % 8), "Café".to_string()),
            })
            .collect();
        let outcomes = append_as_one_group(&store, &db_url, "factum", appends).await;
        assert_only_refused_failed(&store, &outcomes, &refused, "22P05").await;
        let all = store.read_all(ReadAll::forwards()).await.unwrap();
        let types: Vec<_> = all.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types.first(), Some(&"Opened"));
        assert_eq!(types.last(), Some(&"After"));
        assert!(types[1..types.len() - 1].iter().all(|t| *t == "Café"));
    };
    // Drop the database whatever happened.
    let outcome = tokio::spawn(result).await;
    admin
        .batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .await
        .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

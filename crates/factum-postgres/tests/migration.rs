//! A schema written before positions started at 1 (schema version 1,
//! ADR 25) is migrated on connect: every event, link entry and stream
//! keeps its place and moves up one position, appends go on after the
//! last, and a subscription from 0 delivers the first event. A schema a
//! newer build migrated is refused.
//!
//! Needs PostgreSQL at `FACTUM_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Without one the tests
//! print SKIPPED; with `CI=true` they fail instead.

use factum_core::{
    ContentType, EventData, EventStore, ExpectedRevision, Position, ReadAll, ReadStream,
    StreamName, StreamRevision, Subscribe, SubscriptionStart, Uuid,
};
use factum_postgres::{PostgresConfig, PostgresStore};

mod common;

/// The first schema version, as the build before ADR 25 created it.
const INIT_SQL: &str = include_str!("../sql/0001_init.sql");

/// Creates `schema` at version 1 (as that build's migrator did) holding
/// three events of `order-1` at positions 0, 1, 2 with their `$ce-order`
/// and `$et-OrderPlaced` entries, as that build's writer stored them.
/// Returns the events' ids.
async fn old_schema(admin: &tokio_postgres::Client, schema: &str) -> Vec<Uuid> {
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now());
             {}
             INSERT INTO {schema}.migrations (version) VALUES (1);",
            INIT_SQL.replace("{schema}", schema)
        ))
        .await
        .unwrap();
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let created = 1_700_000_000_000_000i64;
    for (i, id) in ids.iter().enumerate() {
        let i = i as i64;
        admin
            .execute(
                &format!(
                    "INSERT INTO {schema}.events (position, stream_id, stream_name, revision, id, event_type, content_type, flags, created, data, metadata)
                     VALUES ($1, 0, 'order-1', $1, $2, 'OrderPlaced', 0, 0, $3, $4, '')"
                ),
                &[&i, id, &created, &format!("{{\"n\":{i}}}").into_bytes()],
            )
            .await
            .unwrap();
        admin
            .execute(
                &format!(
                    "INSERT INTO {schema}.links (stream_id, revision, position) VALUES (1, $1, $1), (2, $1, $1)"
                ),
                &[&i],
            )
            .await
            .unwrap();
    }
    let last = ids[2];
    admin
        .execute(
            &format!(
                "INSERT INTO {schema}.streams (name, id, last_revision, last_position, last_event_id, base, deleted, tombstoned, metadata)
                 VALUES ('order-1', 0, 2, 2, $1, 0, false, false, NULL),
                        ('$ce-order', 1, 2, 2, $1, 0, false, false, NULL),
                        ('$et-OrderPlaced', 2, 2, 2, $1, 0, false, false, NULL)"
            ),
            &[&last],
        )
        .await
        .unwrap();
    admin
        .execute(
            &format!(
                "UPDATE {schema}.head SET next_position = 3, next_stream_id = 3, last_created = $1"
            ),
            &[&created],
        )
        .await
        .unwrap();
    ids
}

fn config(schema: &str) -> PostgresConfig {
    let mut config = PostgresConfig::new(common::url()).schema(schema);
    config.poll_interval = std::time::Duration::from_millis(200);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_schema_moves_up_one_position_and_goes_on() {
    let url = common::url();
    let Some(admin) = common::admin(&url).await else {
        return;
    };
    let schema = format!("factum_test_{}", Uuid::new_v4().simple());
    let ids = old_schema(&admin, &schema).await;

    // (Not dropped with this store: the schema is connected to again below.)
    let store = PostgresStore::connect(config(&schema)).await.unwrap();
    let version: i32 = admin
        .query_one(
            &format!("SELECT max(version) FROM {schema}.migrations"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Every migration since, up to the latest (5: links by position, ADR 33).
    assert_eq!(version, 5);

    let all = store.read_all(ReadAll::forwards()).await.unwrap();
    let got: Vec<(u64, Uuid)> = all.iter().map(|e| (e.position.0, e.id)).collect();
    assert_eq!(got, vec![(1, ids[0]), (2, ids[1]), (3, ids[2])]);
    assert_eq!(store.head_position().await.unwrap(), Some(Position(3)));
    for link in ["$ce-order", "$et-OrderPlaced"] {
        let events = store
            .read_stream(ReadStream::forwards(StreamName::new(link).unwrap()))
            .await
            .unwrap();
        let got: Vec<(u64, Uuid)> = events.iter().map(|e| (e.position.0, e.id)).collect();
        assert_eq!(got, vec![(1, ids[0]), (2, ids[1]), (3, ids[2])], "{link}");
    }
    let s = StreamName::new("order-1").unwrap();
    let r = store
        .append(
            s.clone(),
            ExpectedRevision::Exact(StreamRevision(2)),
            vec![EventData::new("OrderPaid", ContentType::Json, &b"{}"[..])],
        )
        .await
        .unwrap();
    assert_eq!((r.revision.0, r.position.0), (3, 4));
    // An empty append answers with the stream's last position, moved too.
    let r = store
        .append(s, ExpectedRevision::Exact(StreamRevision(3)), vec![])
        .await
        .unwrap();
    assert_eq!(r.position, Position(4));
    let mut sub = store
        .subscribe(Subscribe::all(SubscriptionStart::After(0), None))
        .await
        .unwrap();
    for want in 1..=4u64 {
        assert_eq!(sub.next_event().await.unwrap().unwrap().position.0, want);
    }
    drop(sub);
    drop(store);

    // Connecting again applies nothing more.
    let store = PostgresStore::connect(config(&schema))
        .await
        .unwrap()
        .drop_schema_on_drop();
    assert_eq!(store.head_position().await.unwrap(), Some(Position(4)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_a_newer_build_migrated_is_refused() {
    let url = common::url();
    let Some(admin) = common::admin(&url).await else {
        return;
    };
    let schema = format!("factum_test_{}", Uuid::new_v4().simple());
    let store = PostgresStore::connect(config(&schema))
        .await
        .unwrap()
        .drop_schema_on_drop();
    admin
        .batch_execute(&format!(
            "INSERT INTO {schema}.migrations (version) VALUES (99)"
        ))
        .await
        .unwrap();
    let err = match PostgresStore::connect(config(&schema)).await {
        Ok(_) => panic!("a schema at version 99 was served"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("version 99"), "{err}");
    drop(store);
}

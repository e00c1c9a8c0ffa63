//! A store written before positions started at 1 (ADR 25) is upgraded
//! with a consumer group and a projection mid-way: both resume without a
//! skip or a repeat, on the engine and on PostgreSQL.
//!
//! What the previous build left is made as that build left it: the log's
//! bytes are the same in both builds, so the store is written here and
//! then put back the way the previous build had it (engine: its segments
//! without the `PUBLIC_POSITIONS_FROM_ONE` flag; PostgreSQL: schema
//! version 1, positions one lower). Its consumer-group state is what that
//! build wrote: a version-1 configuration and a `$all` checkpoint without
//! the numbering mark; the projection's SQLite bookkeeping has no
//! `positions_from` column and a checkpoint one lower.
//!
//! Before the upgrade the store holds U0 … U4, then the group's
//! configuration and checkpoint; group `g1` had processed U0 … U4, group
//! `g2` (never run) starts at U3, and the projection had applied U0 … U4.
//! After the upgrade U5 … U9 are appended. `g1` must deliver exactly
//! U5 … U9, `g2` exactly U3 … U9, the projection must hold each of
//! U0 … U9 once; after a restart (now with checkpoints this build wrote)
//! `g1` delivers exactly U10.

#[macro_use]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use factum::projection::sqlite::{SqliteProjection, SqliteReadModel};
use factum::projection::{ApplyError, Envelope};
use factum::{ProjectionRunner, RunnerOptions};
use factum_core::{EventData, EventStore, ExpectedRevision, Position, StreamName, Uuid};
use factum_engine::format::{SegmentHeader, FEATURE_GROUP_FRAMES, SEGMENT_HEADER_LEN};
use factum_engine::{Durability, Engine, EngineConfig};
use factum_persistent::{
    Consumer, GroupSettings, GroupSource, PersistentSubscriptions, StartFrom,
    CHECKPOINT_EVENT_TYPE, CONFIG_EVENT_TYPE, CONFIG_STREAM,
};
use factum_postgres::{PostgresConfig, PostgresStore};
use rusqlite::params;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

/// Counts how often each user event was applied.
#[derive(Clone)]
struct Seen;

impl SqliteProjection for Seen {
    fn name(&self) -> &str {
        "seen"
    }
    fn schema(&self) -> &str {
        "CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, times INTEGER NOT NULL)"
    }
    fn apply(&self, tx: &rusqlite::Transaction<'_>, e: &Envelope) -> Result<(), ApplyError> {
        if !e.stream().as_str().starts_with("acct-") {
            return Ok(());
        }
        tx.execute(
            "INSERT INTO seen (id, times) VALUES (?1, 1)
             ON CONFLICT (id) DO UPDATE SET times = times + 1",
            params![e.recorded().id.to_string()],
        )?;
        Ok(())
    }
}

fn settings(start_from: StartFrom) -> GroupSettings {
    GroupSettings {
        start_from,
        checkpoint_after: Duration::from_millis(20),
        min_checkpoint_count: 1,
        ..Default::default()
    }
}

/// Appends `U<from>` … `U<to - 1>`, one event each, to `acct-<n % 3>`.
async fn user_events<S: EventStore>(store: &S, range: std::ops::Range<u64>) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for n in range {
        let e = EventData::json("Deposited", &json!({ "n": n })).unwrap();
        ids.push(e.id);
        store
            .append(
                StreamName::new(format!("acct-{}", n % 3)).unwrap(),
                ExpectedRevision::Any,
                vec![e],
            )
            .await
            .unwrap();
    }
    ids
}

/// Before the upgrade: U0 … U4, the projection run over them, and the
/// group state the previous build wrote (positions in its numbering, where
/// U<n> was at n). Returns the user events' ids.
async fn before_upgrade<S: EventStore + Clone>(store: S, read_models: &Path) -> Vec<Uuid> {
    let ids = user_events(&store, 0..5).await;
    // The projection applied U0 … U4 (its checkpoint is U4's position).
    let model = SqliteReadModel::new(read_models, Seen).unwrap();
    let handle = ProjectionRunner::start(store.clone(), model, RunnerOptions::default())
        .await
        .unwrap();
    handle.wait_for(Position(5), WAIT).await.unwrap();
    handle.stop().await;
    // Its bookkeeping as the previous build kept it: no positions_from,
    // the checkpoint in the old numbering.
    let files: Vec<_> = std::fs::read_dir(read_models)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seen.g") && n.ends_with(".sqlite"))
        })
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let conn = rusqlite::Connection::open(&files[0]).unwrap();
    let checkpoint: i64 = conn
        .query_row("SELECT position FROM factum_checkpoint", [], |r| r.get(0))
        .unwrap();
    assert_eq!(checkpoint, 5, "U4 is at 5");
    conn.execute_batch(
        "UPDATE factum_checkpoint SET position = position - 1;
         ALTER TABLE factum_checkpoint DROP COLUMN positions_from;",
    )
    .unwrap();
    drop(conn);
    let group = |name: &str, start: StartFrom| {
        json!({
            "source": serde_json::to_value(GroupSource::All(None)).unwrap(),
            "group": name,
            "settings": serde_json::to_value(settings(start)).unwrap(),
        })
    };
    let config = json!({
        "version": 1,
        "groups": [group("g1", StartFrom::Start), group("g2", StartFrom::At(3))],
    });
    store
        .append(
            StreamName::new(CONFIG_STREAM).unwrap(),
            ExpectedRevision::Any,
            vec![EventData::json(CONFIG_EVENT_TYPE, &config).unwrap()],
        )
        .await
        .unwrap();
    // g1 processed U0 … U4: its last was U4, at 4 in the old numbering.
    store
        .append(
            factum_core::managed::persistent_checkpoint_stream("$all", "g1").unwrap(),
            ExpectedRevision::Any,
            vec![EventData::json(CHECKPOINT_EVENT_TYPE, &json!("C:4/P:4")).unwrap()],
        )
        .await
        .unwrap();
    ids
}

/// The ids of the next `n` user events a consumer delivers (acking every
/// delivery, system events included).
async fn deliveries(consumer: &mut Consumer, n: usize) -> Vec<Uuid> {
    let mut got = Vec::new();
    while got.len() < n {
        let d = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("a delivery in time")
            .expect("connected")
            .expect("no error");
        consumer.ack([d.id()]).await;
        if d.event.stream.as_str().starts_with("acct-") {
            got.push(d.event.id);
        }
    }
    got
}

/// Nothing more for a while.
async fn no_more(consumer: &mut Consumer, what: &str) {
    if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await
    {
        if d.event.stream.as_str().starts_with("acct-") {
            panic!("{what}: unexpected delivery {}", d.event.id);
        }
    }
}

/// After the upgrade: U5 … U9 appended; the groups and the projection
/// resume. Returns the manager (shut down) for the restart check.
async fn after_upgrade<S: EventStore + Clone>(store: S, read_models: &Path, mut ids: Vec<Uuid>) {
    ids.extend(user_events(&store, 5..10).await);
    let subs = PersistentSubscriptions::start(Arc::new(store.clone()))
        .await
        .unwrap();
    let mut g1 = subs
        .connect("$all", "g1", Default::default())
        .await
        .unwrap();
    let mut g2 = subs
        .connect("$all", "g2", Default::default())
        .await
        .unwrap();
    assert_eq!(
        deliveries(&mut g1, 5).await,
        ids[5..10],
        "g1 resumes after its old checkpoint (U4)"
    );
    no_more(&mut g1, "g1").await;
    assert_eq!(
        deliveries(&mut g2, 7).await,
        ids[3..10],
        "g2 starts at its old start position (U3)"
    );
    no_more(&mut g2, "g2").await;

    let model = SqliteReadModel::new(read_models, Seen).unwrap();
    let handle = ProjectionRunner::start(store.clone(), model.clone(), RunnerOptions::default())
        .await
        .unwrap();
    let head = store.head_position().await.unwrap().unwrap();
    handle.wait_for(head, WAIT).await.unwrap();
    handle.stop().await;
    let conn = model.reader().unwrap();
    let mut stmt = conn.prepare("SELECT id, times FROM seen").unwrap();
    let mut seen: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    seen.sort();
    let mut want: Vec<(String, i64)> = ids.iter().map(|id| (id.to_string(), 1)).collect();
    want.sort();
    assert_eq!(seen, want, "the projection applied each event exactly once");

    // The checkpoints are now this build's: a restart resumes exactly.
    drop((g1, g2));
    subs.shutdown().await;
    let u10 = user_events(&store, 10..11).await;
    let subs = PersistentSubscriptions::start(Arc::new(store.clone()))
        .await
        .unwrap();
    let mut g1 = subs
        .connect("$all", "g1", Default::default())
        .await
        .unwrap();
    assert_eq!(deliveries(&mut g1, 1).await, u10, "g1 after a restart");
    no_more(&mut g1, "g1 after a restart").await;
    drop(g1);
    subs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_store_numbered_from_0_upgrades_with_a_group_and_a_projection_mid_way() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let read_models = dir.path().join("rm");
    let config = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(&store_dir, config.clone()).unwrap();
    let engine = Arc::new(engine);
    let ids = before_upgrade(engine.clone(), &read_models).await;
    engine.close().unwrap();
    drop(engine);
    // The segments as the previous build wrote them: no
    // PUBLIC_POSITIONS_FROM_ONE (their frames are the same bytes).
    for entry in std::fs::read_dir(&store_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "seg") {
            let mut bytes = std::fs::read(&path).unwrap();
            let header = SegmentHeader::decode(&bytes[..SEGMENT_HEADER_LEN]).unwrap();
            let old = SegmentHeader {
                features: FEATURE_GROUP_FRAMES,
                ..header
            };
            bytes[..SEGMENT_HEADER_LEN].copy_from_slice(&old.encode());
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let (engine, _) = Engine::open_with(&store_dir, config).unwrap();
    let engine = Arc::new(engine);
    after_upgrade(engine.clone(), &read_models, ids).await;
    engine.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_schema_at_version_1_upgrades_with_a_group_and_a_projection_mid_way() {
    let test = "positions_upgrade::postgres";
    let schema = format!("factum_test_{}", Uuid::new_v4().simple());
    let _drop = common::DropSchema(schema.clone());
    let config = || {
        let mut config = PostgresConfig::new(common::postgres_url()).schema(schema.clone());
        config.poll_interval = Duration::from_millis(100);
        config
    };
    let store = match PostgresStore::connect(config()).await {
        Ok(store) => store,
        Err(e) => return common::skip_without_postgres(test, e).unwrap_or(()),
    };
    let dir = tempfile::tempdir().unwrap();
    let read_models = dir.path().join("rm");
    let ids = before_upgrade(store.clone(), &read_models).await;
    drop(store);
    // Schema version 1 as the previous build left it: every position one
    // lower (the reverse of migration 2).
    let admin = factum::projection::postgres::connect(&common::postgres_url())
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "ALTER TABLE {schema}.events DROP CONSTRAINT events_pkey;
             UPDATE {schema}.events SET position = position - 1;
             ALTER TABLE {schema}.events ADD PRIMARY KEY (position);
             UPDATE {schema}.links SET position = position - 1;
             UPDATE {schema}.streams SET last_position = last_position - 1;
             UPDATE {schema}.head SET next_position = next_position - 1;
             DELETE FROM {schema}.migrations WHERE version = 2;"
        ))
        .await
        .unwrap();
    let store = PostgresStore::connect(config()).await.unwrap();
    let first: Vec<Position> = store
        .read_all(factum_core::ReadAll::forwards().max_count(1))
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(first, [Position(1)], "migrated to version 2");
    after_upgrade(store, &read_models, ids).await;
}

//! Start-up checks of the database's settings (ADR 17): a server that
//! could lose acknowledged commits (`fsync`, `full_page_writes` off) is
//! refused with a clear message unless `allow_unsafe`; settings the store
//! can override per session (`synchronous_commit`, the isolation level, set
//! with `ALTER DATABASE` or `ALTER ROLE … IN DATABASE`) are pinned, which
//! the start-up check confirms in a session of the store.
//!
//! The unsafe server is a private one the test starts (initdb, as the
//! `postgres` OS user); the overridden settings are on a database of the
//! test's own on the shared server. Without either the tests print SKIPPED;
//! with `CI=true` they fail.

use factum_core::{Error, EventData, EventStore, ExpectedRevision, StreamName};
use factum_postgres::{PostgresConfig, PostgresStore};

mod common;
use common::{admin, url, with_database, PrivateServer};

async fn append_works(store: &PostgresStore) {
    store
        .append(
            StreamName::new("s-1").unwrap(),
            ExpectedRevision::NoStream,
            vec![EventData::json("Happened", &1).unwrap()],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_fsync_or_full_page_writes_is_refused_unless_allowed() {
    let server = match PrivateServer::start(&["fsync=off", "full_page_writes=off"]) {
        Ok(s) => s,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED: cannot run a private PostgreSQL server: {e}");
            return;
        }
        Err(e) => panic!("a private PostgreSQL server is required in CI (CI=true): {e}"),
    };
    match PostgresStore::connect(PostgresConfig::new(server.url())).await {
        Err(Error::Unsupported(m)) => {
            eprintln!("refused: {m}");
            assert!(m.contains("fsync is off"), "{m}");
            assert!(m.contains("full_page_writes is off"), "{m}");
            assert!(m.contains("--postgres-allow-unsafe"), "{m}");
        }
        Err(e) => panic!("expected Unsupported, got {e:?}"),
        Ok(_) => panic!("a server with fsync = off was accepted"),
    }
    let mut config = PostgresConfig::new(server.url());
    config.allow_unsafe = true;
    let store = PostgresStore::connect(config).await.unwrap();
    append_works(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weaker_database_and_role_settings_are_overridden_in_every_session() {
    let url = url();
    let Some(admin) = admin(&url).await else {
        return;
    };
    for (scope, sync) in [
        ("DATABASE", "off"),
        ("ROLE", "local"),
        ("DATABASE", "remote_apply"),
    ] {
        let database = format!("factum_settings_{}", factum_core::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .unwrap();
        let target = if scope == "DATABASE" {
            format!("DATABASE {database}")
        } else {
            format!("ROLE CURRENT_USER IN DATABASE {database}")
        };
        admin
            .batch_execute(&format!(
                "ALTER {target} SET synchronous_commit = {sync};
                 ALTER {target} SET default_transaction_isolation = 'serializable'"
            ))
            .await
            .unwrap();
        let db_url = with_database(&url, &database);
        // What a session without the store's options gets there.
        let plain = common::admin(&db_url).await.unwrap();
        let row = plain
            .query_one(
                "SELECT current_setting('synchronous_commit'), current_setting('transaction_isolation')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), sync);
        assert_eq!(row.get::<_, String>(1), "serializable");
        drop(plain);
        // The store's start-up check reads these in one of its own
        // sessions and refuses anything but what it pinned.
        let connected = PostgresStore::connect(PostgresConfig::new(&db_url)).await;
        let outcome = match connected {
            Ok(store) => {
                append_works(&store).await;
                drop(store);
                Ok(())
            }
            Err(e) => Err(e),
        };
        admin
            .batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)"))
            .await
            .unwrap();
        outcome.unwrap_or_else(|e| panic!("{scope} synchronous_commit = {sync}: {e}"));
    }
}

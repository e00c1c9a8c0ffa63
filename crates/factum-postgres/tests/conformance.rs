//! The factum-core conformance suite and property test against PostgreSQL,
//! each store in a fresh schema that is dropped afterwards.
//!
//! Needs PostgreSQL at `FACTUM_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Without one the tests
//! print SKIPPED; with `CI=true` they fail instead.

use factum_core::testkit::StoreFactory;
use factum_postgres::{PostgresConfig, PostgresStore};

fn url() -> String {
    std::env::var("FACTUM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Fresh stores in fresh schemas.
pub struct PgFactory;

impl StoreFactory for PgFactory {
    type Store = PostgresStore;
    async fn create(&self) -> PostgresStore {
        let schema = format!("factum_test_{}", factum_core::Uuid::new_v4().simple());
        let mut config = PostgresConfig::new(url()).schema(schema);
        config.poll_interval = std::time::Duration::from_millis(200);
        match PostgresStore::connect(config).await {
            Ok(store) => store.drop_schema_on_drop(),
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("SKIPPED: PostgreSQL is not reachable at {}: {e}", url());
                std::process::exit(0);
            }
            Err(e) => panic!(
                "PostgreSQL is required in CI (CI=true) but not reachable at {}: {e}",
                url()
            ),
        }
    }

    /// Deletes the hidden rows in small batches (several per stream).
    async fn scavenge(&self, store: &PostgresStore) -> bool {
        store.scavenge(None, 2).await.unwrap();
        true
    }
}

mod conformance {
    factum_core::conformance_tests!(super::PgFactory);
}

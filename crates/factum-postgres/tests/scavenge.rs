//! Scavenge on PostgreSQL (ADR 33): the same scenario as the engine's
//! proof — streams partly hidden by `$maxCount`, `$tb`, `$maxAge`, soft
//! deletes, tombstones, recreation and superseded metadata —, scavenged in
//! small batches: exactly the hidden rows go, everything visible (every
//! stream, metadata, `$ce-`/`$et-`, `$all`) is the same after, and `$all`
//! then holds nothing hidden. `$maxAge` is tested with a "now" two hours
//! on, not by sleeping.
//!
//! Needs PostgreSQL at `FACTUM_TEST_POSTGRES_URL`; SKIPPED without it
//! (fails with `CI=true`).

use factum_core::testkit::visible::{visible_dump, write_hidden_and_visible};
use factum_core::Timestamp;
use factum_postgres::{PostgresConfig, PostgresStore};

fn url() -> String {
    std::env::var("FACTUM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scavenge_deletes_exactly_the_hidden_rows() {
    let schema = format!("factum_test_{}", factum_core::Uuid::new_v4().simple());
    let store = match PostgresStore::connect(PostgresConfig::new(url()).schema(schema)).await {
        Ok(s) => s.drop_schema_on_drop(),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED: PostgreSQL is not reachable at {}: {e}", url());
            return;
        }
        Err(e) => panic!("PostgreSQL is required in CI: {e}"),
    };
    let scale = std::env::var("FACTUM_SCAVENGE_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let sc = write_hidden_and_visible(&store, scale, 200).await;
    // Two hours on: the `age-…` streams' `$maxAge` (1 h) hides them. The
    // dumps are taken by reads at the real time, where they are visible,
    // so they are compared without those streams.
    let later = Timestamp(Timestamp::now().0 + 2 * 3600 * 1_000_000);
    let streams: Vec<_> = sc
        .streams
        .iter()
        .filter(|s| !s.as_str().starts_with("age-"))
        .cloned()
        .collect();
    let before = visible_dump(&store, &streams).await;
    let report = store.scavenge(Some(later), 3).await.unwrap();
    assert_eq!(
        report.events_removed,
        sc.hidden_events + 3 * scale,
        "the hidden events and the superseded metadata (2 of 3 per keep-stream, the soft delete's of again-…): {report:?}"
    );
    assert!(report.links_removed > 0, "{report:?}");
    let after = visible_dump(&store, &streams).await;
    assert_eq!(after.streams, before.streams);
    assert_eq!(after.links, before.links);
    assert_eq!(after.all, before.all);
    // Nothing hidden is left but the `age-` streams' own metadata events.
    let left: Vec<_> = after
        .all_raw
        .iter()
        .filter(|l| !l.contains("@age-") && !l.contains("@$$age-"))
        .cloned()
        .collect();
    assert_eq!(left, before.all);
    // A second scavenge finds nothing.
    let again = store.scavenge(Some(later), 3).await.unwrap();
    assert_eq!(again.events_removed, 0, "{again:?}");
}

//! The global-order proof (ADR 6): 32 concurrent writers spread over four
//! store instances (as four stateless servers would be) and three
//! subscribers on other instances. Every subscriber must receive every
//! committed event exactly once, in position order, with no gap.
//!
//! Runs 8 s by default; `FACTUM_ORDERING_SECS` makes it longer.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use factum_core::{
    EventData, EventStore, ExpectedRevision, StreamName, Subscribe, SubscriptionStart,
};
use factum_postgres::{PostgresConfig, PostgresStore};

fn url() -> String {
    std::env::var("FACTUM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_subscribers_see_one_gapless_order() {
    let schema = format!("factum_order_{}", factum_core::Uuid::new_v4().simple());
    let config = || {
        let mut c = PostgresConfig::new(url()).schema(schema.clone());
        c.poll_interval = Duration::from_millis(100);
        c
    };
    let first = match PostgresStore::connect(config()).await {
        Ok(s) => s.drop_schema_on_drop(),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED: PostgreSQL is not reachable at {}: {e}", url());
            return;
        }
        Err(e) => panic!("PostgreSQL is required in CI (CI=true): {e}"),
    };
    let mut writers_stores = vec![first.clone()];
    for _ in 0..3 {
        writers_stores.push(PostgresStore::connect(config()).await.unwrap());
    }
    let secs: u64 = std::env::var("FACTUM_ORDERING_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let deadline = Instant::now() + Duration::from_secs(secs);

    // Subscribers first, on their own instances, from the beginning.
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let store = PostgresStore::connect(config()).await.unwrap();
        let mut sub = store
            .subscribe(Subscribe::all(SubscriptionStart::Beginning, None))
            .await
            .unwrap();
        subscribers.push(tokio::spawn(async move {
            let _keep = store;
            let mut seen = Vec::new();
            let idle = Duration::from_secs(5);
            while let Ok(Some(msg)) = tokio::time::timeout(idle, sub.next_event()).await {
                seen.push(msg.unwrap());
            }
            seen
        }));
    }

    // 32 writers, 8 per instance, single and multi-event appends to a few streams.
    let mut writers = Vec::new();
    for w in 0..32u64 {
        let store = writers_stores[(w % 4) as usize].clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let stream = StreamName::new(format!("order-{}", (w + i) % 8)).unwrap();
                let n = 1 + (i % 3) as usize;
                let events: Vec<_> = (0..n)
                    .map(|k| EventData::json("Written", &(w, i, k)).unwrap())
                    .collect();
                let ids: Vec<_> = events.iter().map(|e| e.id).collect();
                store
                    .append(stream, ExpectedRevision::Any, events)
                    .await
                    .unwrap();
                acked.extend(ids);
                i += 1;
            }
            acked
        }));
    }
    let mut acked = HashSet::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let head = first.head_position().await.unwrap().map_or(0, |p| p.0 + 1);
    assert_eq!(
        head as usize,
        acked.len(),
        "every acknowledged event has exactly one position"
    );
    for (k, s) in subscribers.into_iter().enumerate() {
        let seen = s.await.unwrap();
        assert_eq!(
            seen.len(),
            acked.len(),
            "subscriber {k} saw {} of {} events",
            seen.len(),
            acked.len()
        );
        for (i, e) in seen.iter().enumerate() {
            assert_eq!(
                e.position.0, i as u64,
                "subscriber {k}: gap or reordering at {i}"
            );
            assert!(acked.contains(&e.id), "subscriber {k}: unknown event");
        }
    }
    eprintln!(
        "{} events from 32 writers on 4 instances, seen in one gapless order by 3 subscribers",
        acked.len()
    );
}

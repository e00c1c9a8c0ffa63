//! The global-order proof (ADR 6): 32 concurrent writers spread over four
//! store instances (as four stateless servers would be) and three
//! subscribers on other instances. Every subscriber must receive every
//! committed event exactly once, in position order, with no gap.
//!
//! Runs 8 s by default; `FACTUM_ORDERING_SECS` makes it longer.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use factum_core::{
    Error, EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, StreamName,
    StreamRevision, Subscribe, SubscriptionStart,
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
    // The first event is at 1: the head is the number of events.
    let head = first.head_position().await.unwrap().map_or(0, |p| p.0);
    assert_eq!(
        head as usize,
        acked.len(),
        "every acknowledged event has exactly one position"
    );
    // The order every subscriber must see: `$all`'s (positions strictly
    // increasing; a scavenge would leave gaps, ADR 33). Nothing was
    // scavenged here, so it is also dense from 1.
    let order: Vec<u64> = first
        .read_all(ReadAll::forwards())
        .await
        .unwrap()
        .iter()
        .map(|e| e.position.0)
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(order, (1..=acked.len() as u64).collect::<Vec<_>>());
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
                e.position.0, order[i],
                "subscriber {k}: an event missed or out of $all's order at {i}"
            );
            assert!(acked.contains(&e.id), "subscriber {k}: unknown event");
        }
    }
    eprintln!(
        "{} events from 32 writers on 4 instances, seen in $all's one order by 3 subscribers",
        acked.len()
    );
}

/// Each writer decides appends from what it committed last and sends them
/// behind a guard on `head` (ADR 6). Two instances taking turns on one
/// stream must each see the other's writes: every expected revision is
/// judged against the database, never against a stale cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_taking_turns_judge_expected_revisions_by_the_database() {
    let schema = format!("factum_turns_{}", factum_core::Uuid::new_v4().simple());
    let config = || PostgresConfig::new(url()).schema(schema.clone());
    let a = match PostgresStore::connect(config()).await {
        Ok(s) => s.drop_schema_on_drop(),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED: PostgreSQL is not reachable at {}: {e}", url());
            return;
        }
        Err(e) => panic!("PostgreSQL is required in CI (CI=true): {e}"),
    };
    let b = PostgresStore::connect(config()).await.unwrap();
    let s = StreamName::new("turn-1").unwrap();
    let ev = |n: u64| vec![EventData::json("Turned", &n).unwrap()];
    let exact = |r: u64| ExpectedRevision::Exact(StreamRevision(r));
    let rev = |r: factum_core::Result<factum_core::AppendResult>| r.unwrap().revision.0;
    let conflict = |r: factum_core::Result<factum_core::AppendResult>| {
        assert!(
            matches!(r, Err(Error::WrongExpectedVersion { .. })),
            "expected a conflict, got {r:?}"
        )
    };

    // A alone: its writer learns the stream and then writes from what it knows.
    assert_eq!(
        rev(a.append(s.clone(), ExpectedRevision::NoStream, ev(0)).await),
        0
    );
    assert_eq!(rev(a.append(s.clone(), exact(0), ev(1)).await), 1);
    assert_eq!(rev(a.append(s.clone(), exact(1), ev(2)).await), 2);
    // B writes behind A's back.
    assert_eq!(rev(b.append(s.clone(), exact(2), ev(3)).await), 3);
    // A still remembers revision 2: the database says 3.
    conflict(a.append(s.clone(), exact(2), ev(4)).await);
    assert_eq!(rev(a.append(s.clone(), exact(3), ev(4)).await), 4);
    assert_eq!(rev(a.append(s.clone(), exact(4), ev(5)).await), 5);
    // A rejection A's memory would make (it knows 5) is wrong after B's write.
    assert_eq!(rev(b.append(s.clone(), exact(5), ev(6)).await), 6);
    assert_eq!(rev(a.append(s.clone(), exact(6), ev(7)).await), 7);
    // B soft-deletes; A's memory says the stream exists at 7, the
    // database says soft-deleted: `StreamExists` is refused (ADR 26).
    b.delete_stream(s.clone(), exact(7)).await.unwrap();
    let r = a
        .append(s.clone(), ExpectedRevision::StreamExists, ev(8))
        .await;
    assert!(matches!(r, Err(Error::StreamDeleted { .. })), "{r:?}");
    assert_eq!(
        rev(a.append(s.clone(), ExpectedRevision::NoStream, ev(8)).await),
        8
    );
    // A new stream through B, then appended to by A, which never saw it.
    let t = StreamName::new("turn-2").unwrap();
    b.append(t.clone(), ExpectedRevision::NoStream, ev(0))
        .await
        .unwrap();
    assert_eq!(rev(a.append(t.clone(), exact(0), ev(1)).await), 1);
    conflict(a.append(t.clone(), ExpectedRevision::NoStream, ev(2)).await);
    conflict(a.append(t.clone(), exact(9), ev(2)).await);
    // An append retried through the other instance is idempotent.
    let once = ev(2);
    let first = a.append(t.clone(), exact(1), once.clone()).await.unwrap();
    let again = b.append(t.clone(), exact(1), once).await.unwrap();
    assert_eq!(first, again);

    // One dense order with commit times that never go back, and each
    // stream's revisions in it exactly once.
    let all = a
        .read_all(ReadAll::forwards().max_count(1000))
        .await
        .unwrap();
    // (Dense because nothing was scavenged; a scavenge leaves gaps, ADR 33.)
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position.0, i as u64 + 1, "gap at {i}");
    }
    assert!(all.windows(2).all(|w| w[0].created <= w[1].created));
    let revs = |name: &StreamName| {
        all.iter()
            .filter(|e| &e.stream == name)
            .map(|e| e.revision.0)
            .collect::<Vec<_>>()
    };
    assert_eq!(revs(&s), (0..=8).collect::<Vec<_>>());
    assert_eq!(revs(&t), vec![0, 1, 2]);
    let t_events = b
        .read_stream(ReadStream::forwards(t.clone()))
        .await
        .unwrap();
    assert_eq!(t_events.len(), 3);
}

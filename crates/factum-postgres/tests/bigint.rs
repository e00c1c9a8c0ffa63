//! Numbers beyond PostgreSQL's `bigint` (issue 12, item 4; ADR 15):
//! positions and revisions are `u64` in the API and `bigint` in the
//! database, so every start, count and expectation above `i64::MAX` must be
//! clamped or refused before it reaches SQL. A plain cast turned a forwards
//! `$all` read from `u64::MAX` into one from -1, which returned the whole
//! log. The property test in `conformance.rs` draws such numbers at random;
//! this one sends each edge once, over the shared server.

use factum_core::{
    Error, EventData, EventStore, ExpectedRevision, Position, ReadAll, ReadStream, StreamName,
    StreamRevision, Subscribe, SubscriptionMessage, SubscriptionStart,
};
use factum_postgres::{PostgresConfig, PostgresStore};

mod common;
use common::{admin, url};

const BEYOND: [u64; 3] = [i64::MAX as u64 + 1, u64::MAX - 1, u64::MAX];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_expectations_beyond_bigint_are_clamped_or_refused() {
    let url = url();
    if admin(&url).await.is_none() {
        return;
    }
    let schema = format!("bigint_{}", factum_core::Uuid::new_v4().simple());
    let store = PostgresStore::connect(PostgresConfig::new(url).schema(schema))
        .await
        .unwrap()
        .drop_schema_on_drop();
    let s = StreamName::new("edge-1").unwrap();
    let events = (0..3)
        .map(|i| EventData::json("Happened", &i).unwrap())
        .collect();
    store
        .append(s.clone(), ExpectedRevision::NoStream, events)
        .await
        .unwrap();

    for n in BEYOND {
        let got = store
            .read_all(ReadAll::forwards().from_position(Position(n)))
            .await
            .unwrap();
        assert!(
            got.is_empty(),
            "$all forwards from {n} returned {} events",
            got.len()
        );
        let got = store
            .read_all(ReadAll::backwards().from_position(Position(n)))
            .await
            .unwrap();
        assert_eq!(got.len(), 3, "$all backwards from {n}");

        let got = store
            .read_stream(ReadStream::forwards(s.clone()).from_revision(StreamRevision(n)))
            .await
            .unwrap();
        assert!(got.is_empty(), "stream forwards from {n}: {}", got.len());
        let got = store
            .read_stream(ReadStream::backwards(s.clone()).from_revision(StreamRevision(n)))
            .await
            .unwrap();
        assert_eq!(got.len(), 3, "stream backwards from {n}");

        match store
            .append(
                s.clone(),
                ExpectedRevision::Exact(StreamRevision(n)),
                vec![EventData::json("Happened", &n).unwrap()],
            )
            .await
        {
            Err(Error::InvalidInput(m)) => assert!(m.contains("out of range"), "{m}"),
            other => panic!("append at Exact({n}): {other:?}"),
        }
    }
    assert!(matches!(
        store
            .read_all(
                ReadAll::forwards()
                    .from_position(Position(u64::MAX))
                    .max_count(u64::MAX)
            )
            .await
            .as_deref(),
        Ok([])
    ));

    // Nothing can come after u64::MAX; after any other edge, nothing has
    // come yet: the subscription catches up at once, with no event.
    match store
        .subscribe(Subscribe::all(SubscriptionStart::After(u64::MAX), None))
        .await
    {
        Err(Error::InvalidInput(m)) => assert!(m.contains("out of range"), "{m}"),
        Err(e) => panic!("subscribe after u64::MAX: {e:?}"),
        Ok(_) => panic!("subscribe after u64::MAX was accepted"),
    }
    for n in [i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX - 1] {
        for request in [
            Subscribe::all(SubscriptionStart::After(n), None),
            Subscribe::stream(s.clone(), SubscriptionStart::After(n)),
        ] {
            let mut sub = store.subscribe(request).await.unwrap();
            loop {
                match tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
                    .await
                    .expect("no CaughtUp within 10 s")
                {
                    Some(Ok(SubscriptionMessage::CaughtUp)) => break,
                    Some(Ok(SubscriptionMessage::Event(e))) => {
                        panic!("after {n}: delivered {:?}", e.position)
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("after {n}: {e:?}"),
                    None => panic!("after {n}: ended"),
                }
            }
        }
    }

    // The store still takes appends where they belong.
    let r = store
        .append(
            s.clone(),
            ExpectedRevision::Exact(StreamRevision(2)),
            vec![EventData::json("Happened", &3).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(r.revision, StreamRevision(3));
}

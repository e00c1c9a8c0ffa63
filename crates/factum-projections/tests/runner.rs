//! Projections over a real store (the embedded engine): modes, restarts,
//! reset, faults, and the streams they keep.

use std::sync::Arc;
use std::time::Duration;

use factum_core::{EventData, EventStore, ExpectedRevision, ReadStream, StreamName};
use factum_engine::Engine;
use factum_projections::{
    CheckpointPolicy, Create, DeleteOptions, Limits, Mode, ProjectionError, Projections,
};

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

fn open(dir: &std::path::Path) -> Arc<Engine> {
    Arc::new(Engine::open_with(dir, Default::default()).unwrap().0)
}

async fn append(store: &Engine, stream: &str, event_type: &str, body: serde_json::Value) {
    store
        .append(
            name(stream),
            ExpectedRevision::Any,
            vec![EventData::json(event_type, &body).unwrap()],
        )
        .await
        .unwrap();
}

async fn read(store: &Engine, stream: &str) -> Vec<factum_core::RecordedEvent> {
    match store.read_stream(ReadStream::forwards(name(stream))).await {
        Ok(e) => e,
        Err(factum_core::Error::StreamNotFound { .. }) => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

fn create(name: &str, query: &str, mode: Mode) -> Create {
    Create {
        name: name.into(),
        query: query.into(),
        mode,
        emit_enabled: true,
        track_emitted_streams: true,
        enabled: true,
        checkpoints_enabled: true,
        run_as: Default::default(),
        engine_version: 1,
    }
}

fn policy() -> CheckpointPolicy {
    CheckpointPolicy {
        after_events: 7,
        after_bytes: 1 << 20,
        after_time: Duration::from_millis(50),
        ..CheckpointPolicy::default()
    }
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn state_of(p: &Projections<Engine>, n: &str, partition: &str) -> Option<serde_json::Value> {
    p.state(n, partition)
        .await
        .unwrap()
        .map(|s| serde_json::from_str(&s).unwrap())
}

const COUNTER: &str = r#"
fromCategory("order").when({
    $init: () => ({ count: 0 }),
    $any: (s, e) => {
        s.count += 1;
        emit("audit-" + e.streamId, "Seen", { n: s.count });
        linkTo("orders-linked", e);
        return s;
    }
}).outputState()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_projection_counts_emits_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..20 {
        append(
            &store,
            &format!("order-{}", i % 3),
            "Placed",
            serde_json::json!({"i": i}),
        )
        .await;
        append(&store, "customer-1", "Other", serde_json::json!({})).await;
    }
    let p = Projections::new(store.clone(), Limits::default(), policy());
    p.start().await.unwrap();
    p.create(create("counter", COUNTER, Mode::Continuous))
        .await
        .unwrap();
    eventually("20 events counted", || async {
        state_of(&p, "counter", "").await == Some(serde_json::json!({"count": 20}))
    })
    .await;
    let stats = p.statistics(Some("counter")).await.unwrap();
    assert_eq!(stats[0].status, "Running");
    assert_eq!(stats[0].mode, "Continuous");
    // Live events.
    for _ in 0..5 {
        append(&store, "order-9", "Placed", serde_json::json!({})).await;
    }
    eventually("25 events counted", || async {
        state_of(&p, "counter", "").await == Some(serde_json::json!({"count": 25}))
    })
    .await;
    p.shutdown().await;
    drop(p);

    // KurrentDB's streams, each emitted event once.
    let audit: usize = [0, 1, 2, 9]
        .iter()
        .map(|i| format!("audit-order-{i}"))
        .collect::<Vec<_>>()
        .len();
    assert_eq!(audit, 4);
    let mut emitted = 0;
    for s in [
        "audit-order-0",
        "audit-order-1",
        "audit-order-2",
        "audit-order-9",
    ] {
        emitted += read(&store, s).await.len();
    }
    assert_eq!(emitted, 25);
    let links = read(&store, "orders-linked").await;
    assert_eq!(links.len(), 25);
    assert_eq!(links[0].event_type, "$>");
    assert_eq!(&links[0].data[..], b"0@order-0");
    let result = read(&store, "$projections-counter-result").await;
    assert_eq!(result.last().unwrap().event_type, "Result");
    assert_eq!(
        result.last().unwrap().json::<serde_json::Value>().unwrap(),
        serde_json::json!({"count": 25})
    );
    assert!(!read(&store, "$projections-counter-checkpoint")
        .await
        .is_empty());
    assert_eq!(read(&store, "$projections-$all").await.len(), 1);
    let tracked = read(&store, "$projections-counter-emittedstreams").await;
    assert_eq!(tracked.len(), 5, "four audit streams and the link stream");

    // A new subsystem over the same store resumes from the checkpoint.
    let p = Projections::new(store.clone(), Limits::default(), policy());
    p.start().await.unwrap();
    append(&store, "order-1", "Placed", serde_json::json!({})).await;
    eventually("26 events counted after the restart", || async {
        state_of(&p, "counter", "").await == Some(serde_json::json!({"count": 26}))
    })
    .await;
    p.shutdown().await;
    assert_eq!(
        read(&store, "orders-linked").await.len(),
        26,
        "no event emitted twice"
    );

    // Reset replays from the beginning into the same state.
    let p = Projections::new(store.clone(), Limits::default(), policy());
    p.start().await.unwrap();
    p.reset("counter").await.unwrap();
    eventually("replayed after reset", || async {
        state_of(&p, "counter", "").await == Some(serde_json::json!({"count": 26}))
    })
    .await;
    // The tracked emitted streams were truncated first: the replay's
    // events are the only ones left to read.
    eventually("the replay's links", || async {
        read(&store, "orders-linked").await.len() == 26
    })
    .await;
    let links = read(&store, "orders-linked").await;
    assert_eq!(links[0].revision.0, 26, "the old links are truncated away");
    p.disable("counter", true).await.unwrap();
    assert_eq!(
        p.statistics(Some("counter")).await.unwrap()[0].status,
        "Stopped"
    );
    p.delete(
        "counter",
        DeleteOptions {
            delete_emitted_streams: true,
            delete_state_stream: true,
            delete_checkpoint_stream: true,
        },
    )
    .await
    .unwrap();
    assert!(read(&store, "orders-linked").await.is_empty());
    assert!(read(&store, "$projections-counter-checkpoint")
        .await
        .is_empty());
    assert!(matches!(
        p.state("counter", "").await,
        Err(ProjectionError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_one_time_and_transient() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..12 {
        append(
            &store,
            &format!("account-{}", i % 4),
            "Deposited",
            serde_json::json!({"amount": i}),
        )
        .await;
    }
    let p = Projections::new(store.clone(), Limits::default(), policy());
    p.start().await.unwrap();
    let by_stream = r#"fromCategory("account").foreachStream().when({
        $init: () => ({ total: 0 }),
        Deposited: (s, e) => { s.total += e.body.amount; return s }
    }).outputState()"#;
    p.create(create("balances", by_stream, Mode::OneTime))
        .await
        .unwrap();
    assert_eq!(p.wait("balances").await.unwrap().as_str(), "Completed");
    assert_eq!(
        state_of(&p, "balances", "account-1").await,
        Some(serde_json::json!({"total": 1 + 5 + 9}))
    );
    let stored = read(&store, "$projections-balances-account-1-checkpoint").await;
    assert_eq!(
        stored.last().unwrap().json::<serde_json::Value>().unwrap(),
        serde_json::json!({"total": 15})
    );
    assert_eq!(
        read(&store, "$projections-balances-account-1-result")
            .await
            .len(),
        1
    );
    assert_eq!(
        read(&store, "$projections-balances-partitions").await.len(),
        4
    );

    let by_type = r#"fromAll().partitionBy(e => e.body.amount % 2 ? "odd" : "even").when({
        $init: () => ({ n: 0 }), $any: (s) => { s.n++; return s } })"#;
    p.create(create("parity", by_type, Mode::Transient))
        .await
        .unwrap();
    assert_eq!(p.wait("parity").await.unwrap().as_str(), "Completed");
    assert_eq!(
        state_of(&p, "parity", "odd").await,
        Some(serde_json::json!({"n": 6}))
    );
    assert!(
        read(&store, "$projections-parity-checkpoint")
            .await
            .is_empty(),
        "transient writes nothing"
    );

    // Errors for unknown names and invalid queries.
    assert!(matches!(
        p.state("nope", "").await,
        Err(ProjectionError::NotFound(_))
    ));
    assert!(matches!(
        p.enable("nope").await,
        Err(ProjectionError::NotFound(_))
    ));
    let err = p
        .create(create("bad", "fromAll().when(", Mode::Continuous))
        .await
        .unwrap_err();
    assert!(matches!(err, ProjectionError::Invalid(_)), "{err}");
    let err = p
        .create(create("balances", by_stream, Mode::OneTime))
        .await
        .unwrap_err();
    assert!(matches!(err, ProjectionError::AlreadyExists(_)), "{err}");
    // System projections are enabled like the others; their queries are
    // the server's.
    p.enable("$by_category").await.unwrap();
    let err = p
        .update("$streams", Some("fromAll()".into()), None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ProjectionError::Invalid(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_projection_faults_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append(&store, "order-1", "Placed", serde_json::json!({})).await;
    let limits = Limits {
        handler_time: Duration::from_millis(300),
        memory_bytes: 8 << 20,
        ..Limits::default()
    };
    let p = Projections::new(store.clone(), limits, policy());
    p.create(create(
        "loop",
        "fromAll().when({ $any: () => { for (;;) {} } })",
        Mode::Continuous,
    ))
    .await
    .unwrap();
    p.create(create("huge", "fromAll().when({ $init: () => ({xs: []}), $any: (s) => { for (;;) s.xs.push('x'.repeat(4096)) } })", Mode::Continuous))
        .await
        .unwrap();
    let mut no_emit = create(
        "quiet",
        r#"fromAll().when({ $any: (s, e) => { emit("x-1", "T", {}) } })"#,
        Mode::Continuous,
    );
    no_emit.emit_enabled = false;
    p.create(no_emit).await.unwrap();
    p.create(create("ok", COUNTER, Mode::Continuous))
        .await
        .unwrap();
    for (n, reason) in [
        ("loop", "too long"),
        ("huge", "out of memory"),
        ("quiet", "'emit' is not allowed"),
    ] {
        eventually(n, || async {
            let s = &p.statistics(Some(n)).await.unwrap()[0];
            s.status == "Faulted" && s.state_reason.contains(reason)
        })
        .await;
    }
    eventually("the healthy projection", || async {
        state_of(&p, "ok", "").await == Some(serde_json::json!({"count": 1}))
    })
    .await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_states_beyond_the_cache_are_evicted_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let policy = CheckpointPolicy {
        cached_partitions: 4,
        ..policy()
    };
    let p = Projections::new(store.clone(), Limits::default(), policy);
    p.start().await.unwrap();
    let by_stream = r#"fromCategory("account").foreachStream().when({
        $init: () => ({ total: 0 }),
        Deposited: (s, e) => { s.total += e.body.amount; return s }
    })"#;
    p.create(create("balances", by_stream, Mode::Continuous))
        .await
        .unwrap();
    for round in 0..3 {
        for i in 0..20 {
            append(
                &store,
                &format!("account-{i}"),
                "Deposited",
                serde_json::json!({"amount": i}),
            )
            .await;
        }
        let want = serde_json::json!({"total": 19 * (round + 1)});
        eventually("the last partition's total", || async {
            state_of(&p, "balances", "account-19").await == Some(want.clone())
        })
        .await;
    }
    // Every partition is right, though at most four stay in memory.
    for i in 0..20 {
        assert_eq!(
            state_of(&p, "balances", &format!("account-{i}")).await,
            Some(serde_json::json!({"total": 3 * i})),
            "account-{i}"
        );
    }
    // The statistics count a batch's partitions before the commit after
    // which the least recently used are dropped: wait for that commit.
    eventually("at most seven partitions cached", || async {
        p.statistics(Some("balances")).await.unwrap()[0].partitions_cached <= 7
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_sources_and_include_links() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..4 {
        append(
            &store,
            &format!("order-{i}"),
            "Placed",
            serde_json::json!({}),
        )
        .await;
        append(&store, "invoice-1", "Billed", serde_json::json!({})).await;
        append(&store, "customer-1", "Placed", serde_json::json!({})).await;
    }
    let p = Projections::new(store.clone(), Limits::default(), policy());
    p.start().await.unwrap();
    let count = |source: &str| {
        format!("{source}.when({{ $init: () => ({{ n: 0 }}), $any: (s, e) => {{ s.n += 1; return s }} }})")
    };
    // A category, a stream and an event type, together.
    p.create(create(
        "mixed",
        &count("fromStreams(['$ce-order', 'invoice-1'])"),
        Mode::Continuous,
    ))
    .await
    .unwrap();
    p.create(create(
        "by-type",
        &count("fromStream('$et-Placed')"),
        Mode::Continuous,
    ))
    .await
    .unwrap();
    eventually("the mixed source's count", || async {
        state_of(&p, "mixed", "").await == Some(serde_json::json!({"n": 8}))
    })
    .await;
    eventually("the event type's count", || async {
        state_of(&p, "by-type", "").await == Some(serde_json::json!({"n": 8}))
    })
    .await;
    // Links written by one projection reach another with $includeLinks.
    let linker = "fromCategory('order').when({ $any: (s, e) => { linkTo('links-1', e) } })";
    p.create(create("linker", linker, Mode::Continuous))
        .await
        .unwrap();
    let links = r#"options({ $includeLinks: true });
        fromStream('links-1').when({ $init: () => ({ n: 0, data: [] }),
            $any: (s, e) => { s.n += 1; s.data.push(e.eventType + ' ' + e.bodyRaw); return s } })"#;
    p.create(create("links", links, Mode::Continuous))
        .await
        .unwrap();
    eventually("the links seen", || async {
        state_of(&p, "links", "").await.is_some_and(|s| s["n"] == 4)
    })
    .await;
    let s = state_of(&p, "links", "").await.unwrap();
    assert_eq!(s["data"][0], "$> 0@order-0");
    p.shutdown().await;
}

/// KurrentDB's `when_handling_deleted` cases: a `foreachStream()`
/// projection's `$deleted` handler runs on the partition of a stream that
/// is tombstoned or soft-deleted — before the projection starts and while
/// it runs — and its result stream gets the state; deletions of streams
/// outside the source are not seen; a reset replays them the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_handlers_see_tombstones_and_soft_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for s in ["stream-1", "stream-2", "stream-3", "other-1"] {
        append(&store, s, "type1", serde_json::json!({})).await;
        append(&store, s, "type2", serde_json::json!({})).await;
    }
    // Before the projection exists: stream-1 tombstoned, other-1 too.
    store
        .tombstone_stream(name("stream-1"), ExpectedRevision::Any)
        .await
        .unwrap();
    store
        .tombstone_stream(name("other-1"), ExpectedRevision::Any)
        .await
        .unwrap();
    let query = r#"fromCategory('stream').foreachStream().when({
        $init: function () { return { a: 0 } },
        type1: function (s, e) { s.a++ },
        type2: function (s, e) { s.a++ },
        $deleted: function (s, e, partition) { s.deleted = (s.deleted || 0) + 1; s.p = partition }
    }).outputState()"#;
    let all = r#"fromAll().foreachStream().when({
        $init: function () { return {} },
        $any: function (s, e) {},
        $deleted: function (s) { s.deleted = true }
    })"#;
    let p = Projections::new(store.clone(), Limits::default(), policy());
    p.start().await.unwrap();
    p.create(create("deletes", query, Mode::Continuous))
        .await
        .unwrap();
    p.create(create("all-deletes", all, Mode::Continuous))
        .await
        .unwrap();
    eventually("the tombstone seen", || async {
        state_of(&p, "deletes", "stream-1").await
            == Some(serde_json::json!({"a": 2, "deleted": 1, "p": "stream-1"}))
    })
    .await;
    // Live: a soft delete, then more events elsewhere.
    store
        .delete_stream(name("stream-2"), ExpectedRevision::Any)
        .await
        .unwrap();
    append(&store, "stream-3", "type1", serde_json::json!({})).await;
    eventually("the soft delete seen", || async {
        state_of(&p, "deletes", "stream-2").await
            == Some(serde_json::json!({"a": 2, "deleted": 1, "p": "stream-2"}))
            && state_of(&p, "deletes", "stream-3").await == Some(serde_json::json!({"a": 3}))
    })
    .await;
    assert_eq!(state_of(&p, "deletes", "other-1").await, None);
    // fromAll sees every user stream's deletion, other-1's included.
    eventually("fromAll's deletions", || async {
        state_of(&p, "all-deletes", "other-1").await == Some(serde_json::json!({"deleted": true}))
            && state_of(&p, "all-deletes", "stream-2").await
                == Some(serde_json::json!({"deleted": true}))
    })
    .await;
    assert_eq!(
        state_of(&p, "all-deletes", "stream-3").await,
        Some(serde_json::json!({}))
    );
    // The result stream, as KurrentDB's test reads it.
    let result = |stream: &'static str| {
        let store = store.clone();
        async move {
            let events = read(&store, stream).await;
            let last = events.last().expect("a result");
            assert_eq!(last.event_type, "Result");
            serde_json::from_slice::<serde_json::Value>(&last.data).unwrap()
        }
    };
    eventually("the results written", || async {
        !read(&store, "$projections-deletes-stream-2-result")
            .await
            .is_empty()
    })
    .await;
    assert_eq!(
        result("$projections-deletes-stream-1-result").await,
        serde_json::json!({"a": 2, "deleted": 1, "p": "stream-1"})
    );
    // A recreated soft-deleted stream is not deleted again by its undelete.
    append(&store, "stream-2", "type1", serde_json::json!({})).await;
    eventually("the recreated stream counted", || async {
        state_of(&p, "deletes", "stream-2").await
            == Some(serde_json::json!({"a": 3, "deleted": 1, "p": "stream-2"}))
    })
    .await;
    // A reset replays the deletions once each.
    p.reset("deletes").await.unwrap();
    eventually("the replay", || async {
        state_of(&p, "deletes", "stream-2").await
            == Some(serde_json::json!({"a": 3, "deleted": 1, "p": "stream-2"}))
            && state_of(&p, "deletes", "stream-1").await
                == Some(serde_json::json!({"a": 2, "deleted": 1, "p": "stream-1"}))
    })
    .await;
    p.shutdown().await;
}

/// Resetting the system projections that write links (`$streams`,
/// `$stream_by_category`, `$by_correlation_id`) does not duplicate them:
/// as KurrentDB's emitted streams, each stream written again by the new
/// epoch is first truncated after the older epoch's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_link_writing_system_projections_does_not_duplicate_links() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let correlated = |stream: &'static str| {
        let store = store.clone();
        async move {
            let event = EventData::json("Placed", &serde_json::json!({}))
                .unwrap()
                .with_metadata(r#"{"$correlationId":"c-1"}"#);
            store
                .append(name(stream), ExpectedRevision::Any, vec![event])
                .await
                .unwrap();
        }
    };
    correlated("order-1").await;
    correlated("order-1").await;
    correlated("order-2").await;
    append(&store, "invoice-1", "Billed", serde_json::json!({})).await;
    let p = Projections::new(store.clone(), Limits::default(), policy());
    p.start().await.unwrap();
    let counts = || async {
        (
            read(&store, "$streams").await.len(),
            read(&store, "$bc-c-1").await.len(),
            read(&store, "$category-order").await.len(),
        )
    };
    for s in ["$streams", "$stream_by_category", "$by_correlation_id"] {
        p.enable(s).await.unwrap();
    }
    eventually("the links written", || async {
        counts().await == (3, 3, 2)
    })
    .await;
    for round in 0..2 {
        for s in ["$streams", "$stream_by_category", "$by_correlation_id"] {
            p.reset(s).await.unwrap();
        }
        // A new stream after the replay's events: once it is linked, the
        // replay is done.
        let stream = ["order-3", "order-4"][round];
        correlated(stream).await;
        eventually("the replay and the new stream", || async {
            let streams = read(&store, "$streams").await;
            let category = read(&store, "$category-order").await;
            streams
                .last()
                .is_some_and(|e| e.data.as_ref() == format!("0@{stream}").as_bytes())
                && category
                    .last()
                    .is_some_and(|e| e.data.as_ref() == stream.as_bytes())
                && read(&store, "$bc-c-1").await.len() >= 4 + round
        })
        .await;
        // Let the commits settle, then count: every link once.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            counts().await,
            (4 + round, 4 + round, 3 + round),
            "round {round}"
        );
        let links: Vec<String> = read(&store, "$streams")
            .await
            .iter()
            .map(|e| String::from_utf8_lossy(&e.data).into_owned())
            .collect();
        let mut want = vec!["0@order-1", "0@order-2", "0@invoice-1", "0@order-3"];
        if round == 1 {
            want.push("0@order-4");
        }
        assert_eq!(links, want, "round {round}");
    }
    p.shutdown().await;
}

/// What a projection emitted to `stream`: each event's body and the
/// metadata keys naming its writer.
async fn emitted(
    store: &Engine,
    stream: &str,
) -> Vec<(String, serde_json::Value, serde_json::Value)> {
    read(store, stream)
        .await
        .iter()
        .map(|e| {
            let m: serde_json::Value = serde_json::from_slice(&e.metadata).unwrap_or_default();
            (
                String::from_utf8_lossy(&e.data).into_owned(),
                m["$projection"].clone(),
                m["$epoch"].clone(),
            )
        })
        .collect()
}

const AUDIT: &str = r#"
fromCategory("order").when({
    $any: (s, e) => {
        emit("audit_" + PROJECTION, "Seen", { at: e.sequenceNumber + "@" + e.streamId });
        linkTo("links_" + PROJECTION, e);
    }
})"#;

/// Resetting a user projection does not duplicate what it emitted, whether
/// its emitted streams are tracked or not: as KurrentDB's emitted streams
/// (and the system projections' links, ADR 44), each emitted event carries
/// the projection and its epoch, and a stream last written by an older
/// epoch is truncated after it before the new epoch's first write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_a_user_projection_does_not_duplicate_its_emitted_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append(&store, "order-1", "Placed", serde_json::json!({})).await;
    append(&store, "order-1", "Paid", serde_json::json!({})).await;
    append(&store, "order-2", "Placed", serde_json::json!({})).await;
    let p = Projections::new(store.clone(), Limits::default(), policy());
    p.start().await.unwrap();
    for (n, tracked) in [("untracked", false), ("tracked", true)] {
        let mut c = create(
            n,
            &AUDIT.replace("PROJECTION", &format!("'{n}'")),
            Mode::Continuous,
        );
        c.track_emitted_streams = tracked;
        p.create(c).await.unwrap();
    }
    let mut want = vec!["0@order-1", "1@order-1", "0@order-2"];
    for n in ["untracked", "tracked"] {
        eventually("the first run's events", || async {
            read(&store, &format!("audit_{n}")).await.len() == 3
                && read(&store, &format!("links_{n}")).await.len() == 3
        })
        .await;
    }
    for round in 0..2u64 {
        for n in ["untracked", "tracked"] {
            p.reset(n).await.unwrap();
        }
        // A new event after the replay's: once it is emitted, the replay
        // is done.
        let stream = ["order-3", "order-4"][round as usize];
        append(&store, stream, "Placed", serde_json::json!({})).await;
        want.push(["0@order-3", "0@order-4"][round as usize]);
        for n in ["untracked", "tracked"] {
            eventually("the replay and the new event", || async {
                read(&store, &format!("audit_{n}"))
                    .await
                    .last()
                    .is_some_and(|e| {
                        e.data.as_ref() == format!(r#"{{"at":"0@{stream}"}}"#).as_bytes()
                    })
                    && read(&store, &format!("links_{n}"))
                        .await
                        .last()
                        .is_some_and(|e| e.data.as_ref() == format!("0@{stream}").as_bytes())
            })
            .await;
        }
        // Let the commits settle, then read: every event once, in order,
        // written by this epoch.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for n in ["untracked", "tracked"] {
            let audit = emitted(&store, &format!("audit_{n}")).await;
            let bodies: Vec<String> = audit.iter().map(|(b, _, _)| b.clone()).collect();
            let expected: Vec<String> = want.iter().map(|w| format!(r#"{{"at":"{w}"}}"#)).collect();
            assert_eq!(bodies, expected, "{n}, round {round}");
            for (_, projection, epoch) in &audit {
                assert_eq!(projection, n, "{n}, round {round}");
                assert_eq!(epoch, &serde_json::json!(round + 1), "{n}, round {round}");
            }
            let links: Vec<String> = emitted(&store, &format!("links_{n}"))
                .await
                .into_iter()
                .map(|(b, _, _)| b)
                .collect();
            assert_eq!(links, want, "{n}, round {round}");
        }
    }
    // Later events are appended after the replay's, once each.
    append(&store, "order-5", "Placed", serde_json::json!({})).await;
    want.push("0@order-5");
    for n in ["untracked", "tracked"] {
        eventually("the later event", || async {
            read(&store, &format!("links_{n}")).await.len() == want.len()
                && read(&store, &format!("audit_{n}")).await.len() == want.len()
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in ["untracked", "tracked"] {
        let links: Vec<String> = emitted(&store, &format!("links_{n}"))
            .await
            .into_iter()
            .map(|(b, _, _)| b)
            .collect();
        assert_eq!(links, want, "{n}, after the resets");
        assert_eq!(read(&store, &format!("audit_{n}")).await.len(), want.len());
    }
    p.shutdown().await;
}

/// A stream whose last event a client wrote is not the projection's to
/// truncate: after a reset the replay appends to it (nothing hidden, no
/// fault), as Factum did before the epoch check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_does_not_truncate_a_stream_a_client_wrote_last() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append(&store, "order-1", "Placed", serde_json::json!({})).await;
    append(&store, "order-2", "Placed", serde_json::json!({})).await;
    let p = Projections::new(store.clone(), Limits::default(), policy());
    p.start().await.unwrap();
    let mut c = create(
        "shared",
        &AUDIT.replace("PROJECTION", "'shared'"),
        Mode::Continuous,
    );
    c.track_emitted_streams = false;
    p.create(c).await.unwrap();
    eventually("the first run's events", || async {
        read(&store, "audit_shared").await.len() == 2
    })
    .await;
    // A client writes to the stream the projection emits to.
    append(
        &store,
        "audit_shared",
        "Note",
        serde_json::json!({"by": "client"}),
    )
    .await;
    p.reset("shared").await.unwrap();
    append(&store, "order-3", "Placed", serde_json::json!({})).await;
    eventually("the replay and the new event", || async {
        read(&store, "audit_shared")
            .await
            .last()
            .is_some_and(|e| e.data.as_ref() == br#"{"at":"0@order-3"}"#)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let audit = emitted(&store, "audit_shared").await;
    let bodies: Vec<&str> = audit.iter().map(|(b, _, _)| b.as_str()).collect();
    assert_eq!(
        bodies,
        [
            r#"{"at":"0@order-1"}"#,
            r#"{"at":"0@order-2"}"#,
            r#"{"by":"client"}"#,
            r#"{"at":"0@order-1"}"#,
            r#"{"at":"0@order-2"}"#,
            r#"{"at":"0@order-3"}"#,
        ],
        "nothing truncated: the client's event and the projection's before it still read"
    );
    let metadata = store.stream_metadata(name("audit_shared")).await.unwrap();
    assert_eq!(metadata.metadata.truncate_before, None);
    assert_eq!(
        p.statistics(Some("shared")).await.unwrap()[0].status,
        "Running"
    );
    p.shutdown().await;
}

//! The projection language, from KurrentDB's documentation examples and
//! users' common projections, on the sandbox alone (no store).

use std::time::Duration;

use factum_projections::{Emitted, Fault, Input, InputEvent, Limits, Projection, Source};

struct Event {
    stream: &'static str,
    event_type: &'static str,
    body: String,
    metadata: String,
}

fn ev(stream: &'static str, event_type: &'static str, body: &str) -> Event {
    Event {
        stream,
        event_type,
        body: body.to_owned(),
        metadata: String::new(),
    }
}

/// Feeds events the way the runner does: the partition, its state loaded
/// (initialized the first time, `$created` then), the handler.
fn run(p: &mut Projection, events: &[Event]) -> Result<Vec<Emitted>, Fault> {
    let mut emitted = Vec::new();
    let mut revisions = std::collections::HashMap::<&str, u64>::new();
    for (i, e) in events.iter().enumerate() {
        let revision = revisions.entry(e.stream).or_default();
        let id = format!("00000000-0000-0000-0000-{:012}", i + 1);
        let category = e.stream.split_once('-').map_or("", |(c, _)| c);
        let input = InputEvent {
            position: i as u64 + 1,
            created_micros: 1_700_000_000_000_000 + i as i64 * 1000,
            stream: e.stream,
            sequence_number: *revision,
            event_type: e.event_type,
            body: &e.body,
            metadata: &e.metadata,
            link_metadata: None,
            is_json: true,
            category,
            event_id: &id,
        };
        *revision += 1;
        if !p.definition().handles(e.event_type) {
            continue;
        }
        let Some(partition) = p.partition_of(&input)? else {
            continue;
        };
        let created = !p.has_partition(&partition)?;
        if created {
            p.load_partition(&partition, None)?;
        }
        let created = created && !partition.is_empty();
        emitted.extend(p.handle(&partition, created, &input)?);
    }
    Ok(emitted)
}

fn compile(source: &str) -> Projection {
    Projection::compile(source, Limits::default()).unwrap_or_else(|f| panic!("{f}"))
}

fn json(s: Option<String>) -> serde_json::Value {
    serde_json::from_str(&s.expect("a state")).unwrap()
}

#[test]
fn counting_events_of_a_category() {
    // KurrentDB docs, "when": count events of a stream.
    let mut p = compile(
        r#"fromCategory("account").when({
            $init: function () { return { count: 0 } },
            $any: function (state, event) { state.count += 1; return state; }
        }).outputState()"#,
    );
    assert_eq!(
        p.definition().source,
        Source::Categories(vec!["account".into()])
    );
    assert!(p.definition().output_state);
    run(
        &mut p,
        &[
            ev("account-1", "Opened", "{}"),
            ev("account-1", "Deposited", r#"{"amount":5}"#),
            ev("account-2", "Opened", "{}"),
        ],
    )
    .unwrap();
    assert_eq!(json(p.state("").unwrap()), serde_json::json!({"count": 3}));
}

#[test]
fn typed_handlers_and_body_fields() {
    // The "sum of deposits" projection of KurrentDB's user guide.
    let mut p = compile(
        r#"fromStream("account-1").when({
            $init() { return { balance: 0 } },
            Deposited(s, e) { s.balance += e.body.amount; return s },
            Withdrawn(s, e) { s.balance -= e.data.amount; return s },
        })"#,
    );
    assert_eq!(
        p.definition().source,
        Source::Streams(vec!["account-1".into()])
    );
    assert!(!p.definition().handles("Opened"));
    run(
        &mut p,
        &[
            ev("account-1", "Opened", "{}"),
            ev("account-1", "Deposited", r#"{"amount":10}"#),
            ev("account-1", "Withdrawn", r#"{"amount":3}"#),
        ],
    )
    .unwrap();
    assert_eq!(
        json(p.state("").unwrap()),
        serde_json::json!({"balance": 7})
    );
}

#[test]
fn the_event_object_has_kurrentdbs_fields() {
    let mut p = compile(
        r#"fromAll().when({ $any(s, e) {
            return { streamId: e.streamId, sequenceNumber: e.sequenceNumber, eventType: e.eventType,
                     bodyRaw: e.bodyRaw, body: e.body, data: e.data, metadata: e.metadata,
                     metadataRaw: e.metadataRaw, isJson: e.isJson, partition: e.partition,
                     category: e.category, eventId: e.eventId, linkMetadata: e.linkMetadata };
        } })"#,
    );
    let mut e = ev("order-7", "Placed", r#"{"x":1}"#);
    e.metadata = r#"{"$correlationId":"c1"}"#.into();
    run(&mut p, &[ev("order-7", "Created", "{}"), e]).unwrap();
    assert_eq!(
        json(p.state("").unwrap()),
        serde_json::json!({
            "streamId": "order-7", "sequenceNumber": 1, "eventType": "Placed",
            "bodyRaw": "{\"x\":1}", "body": {"x": 1}, "data": {"x": 1},
            "metadata": {"$correlationId": "c1"}, "metadataRaw": "{\"$correlationId\":\"c1\"}",
            "isJson": true, "partition": "", "category": "order",
            "eventId": "00000000-0000-0000-0000-000000000002"
        })
    );
}

#[test]
fn partition_by_keeps_a_state_per_partition() {
    // KurrentDB docs, "partitionBy": count by event type.
    let mut p = compile(
        r#"fromCategory("account")
            .partitionBy(function (event) { return event.eventType })
            .when({ $init: () => ({ count: 0 }), $any: (s, e) => { s.count++; return s } })"#,
    );
    assert!(p.definition().partitioned);
    run(
        &mut p,
        &[
            ev("account-1", "Opened", "{}"),
            ev("account-1", "Deposited", "{}"),
            ev("account-2", "Deposited", "{}"),
        ],
    )
    .unwrap();
    assert_eq!(
        json(p.state("Deposited").unwrap()),
        serde_json::json!({"count": 2})
    );
    assert_eq!(
        json(p.state("Opened").unwrap()),
        serde_json::json!({"count": 1})
    );
    assert_eq!(p.state("").unwrap(), None);
}

#[test]
fn foreach_stream_and_created() {
    // KurrentDB docs, "foreachStream" (handlers given to foreachStream) and
    // `$created` for each new partition.
    let mut p = compile(
        r#"fromStreams(["website-enquiries", "email-enquiries"]).foreachStream({
            $init: () => ({ created: 0 }),
            $created: (s, e) => { s.created += 1 },
            $any: function (state, event) {
                return { ...state, [event.eventType]: (state[event.eventType] ?? 0) + 1 }
            },
        })"#,
    );
    assert!(p.definition().by_stream);
    run(
        &mut p,
        &[
            ev("website-enquiries", "Enquiry", "{}"),
            ev("email-enquiries", "Enquiry", "{}"),
            ev("website-enquiries", "Enquiry", "{}"),
        ],
    )
    .unwrap();
    assert_eq!(
        json(p.state("website-enquiries").unwrap()),
        serde_json::json!({"created": 1, "Enquiry": 2})
    );
    assert_eq!(
        json(p.state("email-enquiries").unwrap()),
        serde_json::json!({"created": 1, "Enquiry": 1})
    );
}

#[test]
fn emit_link_to_link_stream_to_and_copy_to() {
    let mut p = compile(
        r#"fromCategory("order").when({
            Placed(s, e) {
                emit("shipping-" + e.body.id, "ShipmentRequested", { order: e.body.id }, { source: "p" });
                linkTo("orders-placed", e);
                linkStreamTo("order-streams", e.streamId);
                copyTo("orders-copy", e);
            }
        })"#,
    );
    let out = run(&mut p, &[ev("order-1", "Placed", r#"{"id":"o1"}"#)]).unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(out[0].stream, "shipping-o1");
    assert_eq!(out[0].event_type, "ShipmentRequested");
    assert_eq!(out[0].data, r#"{"order":"o1"}"#);
    let meta: serde_json::Value =
        serde_json::from_str(out[0].metadata.as_deref().unwrap()).unwrap();
    assert_eq!(meta["source"], "p");
    assert_eq!(meta["$causedBy"], "00000000-0000-0000-0000-000000000001");
    assert!(out[0].is_json);
    assert_eq!(
        (
            out[1].stream.as_str(),
            out[1].event_type.as_str(),
            out[1].data.as_str()
        ),
        ("orders-placed", "$>", "0@order-1")
    );
    assert!(!out[1].is_json);
    assert_eq!(
        (out[2].event_type.as_str(), out[2].data.as_str()),
        ("$@", "order-1")
    );
    assert_eq!(
        (
            out[3].stream.as_str(),
            out[3].event_type.as_str(),
            out[3].data.as_str()
        ),
        ("orders-copy", "Placed", r#"{"id":"o1"}"#)
    );
}

#[test]
fn emit_checks_its_arguments() {
    let mut p = compile(r#"fromAll().when({ $any(s, e) { emit("x", "T", "not an object") } })"#);
    let err = run(&mut p, &[ev("a-1", "E", "{}")]).unwrap_err();
    assert!(
        matches!(&err, Fault::Script(m) if m.contains("eventBody must be an object")),
        "{err}"
    );
    let err =
        Projection::compile(r#"emit("x", "T", {}); fromAll()"#, Limits::default()).unwrap_err();
    assert!(
        matches!(&err, Fault::Invalid(m) if m.contains("only be called from an event handler")),
        "{err}"
    );
}

#[test]
fn transform_by_and_filter_by_shape_the_result() {
    let mut p = compile(
        r#"fromAll().when({ $init: () => ({ count: 0 }), $any: (s) => { s.count++; return s } })
            .transformBy(s => ({ total: s.count * 10 }))
            .filterBy(s => s.total > 15)"#,
    );
    assert!(p.definition().defines_state_transform);
    run(&mut p, &[ev("a-1", "E", "{}")]).unwrap();
    assert_eq!(p.result("").unwrap(), None, "filtered out below 15");
    run(&mut p, &[ev("a-1", "E", "{}")]).unwrap();
    assert_eq!(
        json(p.result("").unwrap()),
        serde_json::json!({"total": 20})
    );
    assert_eq!(json(p.state("").unwrap()), serde_json::json!({"count": 2}));
}

#[test]
fn options_and_output_to() {
    let p = compile(
        r#"options({ resultStreamName: "my-results", $includeLinks: true, reorderEvents: true, processingLag: 500 });
           fromAll().when({ $any: (s) => s }).outputTo("out", "out-{0}")"#,
    );
    let d = p.definition();
    assert_eq!(d.result_stream_name.as_deref(), Some("out"));
    assert_eq!(
        d.partition_result_stream_name_pattern.as_deref(),
        Some("out-{0}")
    );
    assert!(d.include_links && d.reorder_events);
    assert_eq!(d.processing_lag, Some(500));
    let err =
        Projection::compile(r#"options({ nope: 1 }); fromAll()"#, Limits::default()).unwrap_err();
    assert!(
        matches!(&err, Fault::Invalid(m) if m.contains("Unrecognized option: nope")),
        "{err}"
    );
}

#[test]
fn bi_state_has_a_shared_state() {
    let mut p = compile(
        r#"options({ biState: true });
           fromCategory("a").foreachStream().when({
             $init: () => ({ n: 0 }),
             $initShared: () => ({ total: 0 }),
             $any: (s, e) => { s[0].n++; s[1].total++; return s }
           })"#,
    );
    assert!(p.definition().bi_state);
    p.load_shared(None).unwrap();
    run(
        &mut p,
        &[
            ev("a-1", "E", "{}"),
            ev("a-2", "E", "{}"),
            ev("a-1", "E", "{}"),
        ],
    )
    .unwrap();
    assert_eq!(json(p.state("a-1").unwrap()), serde_json::json!({"n": 2}));
    assert_eq!(
        json(p.shared_state().unwrap()),
        serde_json::json!({"total": 3})
    );
}

#[test]
fn from_ce_stream_is_the_category_and_sources_are_checked() {
    let p = compile(r#"fromStream("$ce-order").when({ $any: s => s })"#);
    assert_eq!(
        p.definition().source,
        Source::Categories(vec!["order".into()])
    );
    let p = compile(r#"fromCategories("a", "b").when({ $any: s => s })"#);
    assert_eq!(
        p.definition().source,
        Source::Categories(vec!["a".into(), "b".into()])
    );
    for bad in [
        "1 +",
        "when({})",
        "fromAll(); fromAll()",
        "fromAll().when({}).partitionBy(e => e)",
        "fromStream(42)",
    ] {
        let err = Projection::compile(bad, Limits::default()).unwrap_err();
        assert!(matches!(err, Fault::Invalid(_)), "{bad}: {err}");
    }
}

#[test]
fn the_clock_and_randomness_are_deterministic() {
    let source = r#"fromAll().when({ $init: () => ({ t: [], r: [] }),
        $any: (s) => { s.t.push(Date.now(), new Date().getTime()); s.r.push(Math.random()); return s } })"#;
    let mut a = compile(source);
    let mut b = compile(source);
    let events = [ev("a-1", "E", "{}"), ev("a-1", "E", "{}")];
    run(&mut a, &events).unwrap();
    run(&mut b, &events).unwrap();
    let state = json(a.state("").unwrap());
    assert_eq!(
        Some(state.clone()),
        b.state("")
            .unwrap()
            .map(|s| serde_json::from_str(&s).unwrap())
    );
    assert_eq!(
        state["t"],
        serde_json::json!([
            1_700_000_000_000i64,
            1_700_000_000_000i64,
            1_700_000_000_001i64,
            1_700_000_000_001i64
        ])
    );
    let err = Projection::compile(r#"eval("1"); fromAll()"#, Limits::default()).unwrap_err();
    assert!(matches!(err, Fault::Invalid(_)), "{err}");
    let err = Projection::compile(
        r#"(function(){}).constructor("return 1")(); fromAll()"#,
        Limits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Fault::Invalid(m) if m.contains("not allowed")),
        "{err}"
    );
}

#[test]
fn no_io_timers_or_modules() {
    for source in [
        "setTimeout(() => 1, 0); fromAll()",
        "require('fs'); fromAll()",
        "import('x'); fromAll().when({$any: s => { undefinedThing(); }})",
    ] {
        match Projection::compile(source, Limits::default()) {
            Err(Fault::Invalid(_)) => {}
            Ok(mut p) => {
                // A dynamic import returns a promise that never settles:
                // nothing is loaded and the handler faults on its own.
                assert!(run(&mut p, &[ev("a-1", "E", "{}")]).is_err(), "{source}");
            }
            Err(other) => panic!("{source}: {other}"),
        }
    }
}

#[test]
fn an_endless_loop_faults_with_the_time_limit() {
    let limits = Limits {
        handler_time: Duration::from_millis(50),
        ..Limits::default()
    };
    let mut p = Projection::compile(
        "fromAll().when({ $any: (s) => { while (true) {} } })",
        limits,
    )
    .unwrap();
    let err = run(&mut p, &[ev("a-1", "E", "{}")]).unwrap_err();
    assert!(
        matches!(
            err,
            Fault::TimeLimit {
                what: "execute",
                ..
            }
        ),
        "{err}"
    );
    let err = Projection::compile("while (true) {}", limits).unwrap_err();
    assert!(
        matches!(
            err,
            Fault::TimeLimit {
                what: "compile",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_huge_state_faults_with_the_memory_limit() {
    // A generous time limit: the memory limit is what must stop it.
    let limits = Limits {
        memory_bytes: 8 << 20,
        handler_time: Duration::from_secs(30),
        ..Limits::default()
    };
    let mut p = Projection::compile(
        r#"fromAll().when({ $init: () => ({ xs: [] }), $any: (s) => { for (;;) s.xs.push("x".repeat(1000) + s.xs.length) } })"#,
        limits,
    )
    .unwrap();
    let err = run(&mut p, &[ev("a-1", "E", "{}")]).unwrap_err();
    assert!(matches!(err, Fault::MemoryLimit { .. }), "{err}");
    // Deep recursion is stopped by the stack limit, as an exception.
    let mut p = Projection::compile(
        "fromAll().when({ $any: (s) => { const f = (n) => f(n + 1) + 1; return f(0) } })",
        limits,
    )
    .unwrap();
    let err = run(&mut p, &[ev("a-1", "E", "{}")]).unwrap_err();
    assert!(
        matches!(&err, Fault::Script(m) if m.contains("stack")),
        "{err}"
    );
}

#[test]
fn deleted_handlers_need_foreach_stream_and_get_kurrentdbs_arguments() {
    // KurrentDB: "Deleted stream notifications are only supported with
    // foreachStream()"; and none in a bi-state projection.
    for source in [
        "fromAll().when({ $deleted: (s) => s })",
        "fromAll().partitionBy((e) => e.streamId).when({ $deleted: (s) => s })",
    ] {
        let err = Projection::compile(source, Limits::default()).unwrap_err();
        assert!(
            matches!(&err, Fault::Invalid(m) if m.contains("only supported with foreachStream()")),
            "{source}: {err}"
        );
    }
    let err = Projection::compile(
        "fromAll().foreachStream().when({ $initShared: () => ({}), $deleted: (s) => s })",
        Limits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Fault::Invalid(m) if m.contains("Cannot handle deletes in bi-state")),
        "{err}"
    );

    // `$deleted(state, null, partition, false)` on the partition's state,
    // which it mutates; its return value is not the new state (KurrentDB's
    // runtime ignores it), and it may emit.
    let mut p = compile(
        r#"fromAll().foreachStream().when({
            $init: () => ({ n: 0 }),
            E: (s, e) => { s.n += 1 },
            $deleted: function (s, e, partition, isSoftDeleted) {
                s.deleted = [e, partition, isSoftDeleted, arguments.length, Date.now()];
                emit("gone", "Gone", { partition: partition });
                return { replaced: true };
            }
        })"#,
    );
    run(&mut p, &[ev("a-1", "E", "{}"), ev("a-1", "E", "{}")]).unwrap();
    let out = p
        .handle_many([Input::Deleted {
            partition: "a-1",
            position: 9,
            created_micros: 1_700_000_000_123_000,
        }])
        .unwrap();
    assert_eq!(
        json(p.state("a-1").unwrap()),
        serde_json::json!({"n": 2, "deleted": [null, "a-1", false, 4, 1_700_000_000_123i64]})
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 0);
    assert_eq!(out[0].1[0].stream, "gone");
    assert_eq!(out[0].1[0].data, r#"{"partition":"a-1"}"#);
    assert_eq!(p.take_dirty().unwrap(), vec!["a-1".to_owned()]);
}

/// The CPU-time limit is per event even though a batch of events is one
/// call into the engine: events that each stay under the limit pass however
/// long the batch takes; an event that runs past it faults.
#[test]
fn the_time_limit_is_per_event_within_a_batch() {
    let limits = Limits {
        handler_time: Duration::from_millis(200),
        ..Limits::default()
    };
    let source = r#"fromAll().when({
        $init: () => ({ n: 0, x: 0 }),
        $any: (s, e) => {
            if (e.body.loops < 0) for (;;) {}
            for (let i = 0; i < e.body.loops; i++) s.x = (s.x + i) % 7;
            s.n += 1
        }
    })"#;
    let body = |loops: u64| format!(r#"{{"loops":{loops}}}"#);
    fn event(body: &str, n: u64) -> InputEvent<'_> {
        InputEvent {
            position: n + 1,
            created_micros: 0,
            stream: "a-1",
            sequence_number: n,
            event_type: "E",
            body,
            metadata: "",
            link_metadata: None,
            is_json: true,
            category: "a",
            event_id: "00000000-0000-0000-0000-000000000001",
        }
    }
    // Calibrate: loops for at least 10 ms of one event on this machine
    // (far under the limit, whatever the load).
    let mut p = Projection::compile(source, limits).unwrap();
    p.load_partition("", None).unwrap();
    let mut loops = 10_000u64;
    let mut handled = 0u64;
    loop {
        let probe = body(loops);
        let started = std::time::Instant::now();
        p.handle("", false, &event(&probe, handled)).unwrap();
        handled += 1;
        if started.elapsed() >= Duration::from_millis(10) {
            break;
        }
        loops *= 2;
    }
    // A batch of such events taking longer than the limit in all passes.
    let slow = body(loops);
    let mut count = 16u64;
    loop {
        let started = std::time::Instant::now();
        p.handle_many((0..count).map(|n| Input::Event {
            partition: "",
            created: false,
            event: event(&slow, handled + n),
        }))
        .unwrap();
        handled += count;
        if started.elapsed() > Duration::from_millis(300) {
            break;
        }
        count *= 2;
        assert!(count < 100_000, "calibration failed");
    }
    assert_eq!(json(p.state("").unwrap())["n"], handled);
    // An endless event after a slow one in a batch: it faults.
    let endless = r#"{"loops":-1}"#.to_owned();
    let err = p
        .handle_many([
            Input::Event {
                partition: "",
                created: false,
                event: event(&slow, 11),
            },
            Input::Event {
                partition: "",
                created: false,
                event: event(&endless, 12),
            },
        ])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Fault::TimeLimit {
                what: "execute",
                ..
            }
        ),
        "{err}"
    );
}

/// The event object reads its fields from the batch it came in, yet
/// behaves as one with its own fields: `JSON.stringify` shows them all,
/// `for…in` lists them, a field can be assigned, and an event kept in the
/// state reads the same after its batch.
#[test]
fn the_event_object_shows_its_fields() {
    let mut p = compile(
        r#"fromAll().when({
            $init: () => ({ seen: [] }),
            $any: (s, e) => {
                const keys = [];
                for (const k in e) keys.push(k);
                s.keys = keys.sort().join(",");
                s.json = JSON.parse(JSON.stringify(e));
                e.streamId = "changed";
                s.assigned = e.streamId;
                s.kept = e;
                s.seen.push(e.sequenceNumber + "@" + e.partition + "/" + e.category + ":" + e.body.n);
            }
        })"#,
    );
    run(
        &mut p,
        &[ev("a-1", "E", r#"{"n":1}"#), ev("b-2", "F", r#"{"n":2}"#)],
    )
    .unwrap();
    let state = json(p.state("").unwrap());
    assert_eq!(
        state["keys"],
        "body,bodyRaw,category,data,eventId,eventType,isJson,linkMetadata,linkMetadataRaw,metadata,metadataRaw,partition,sequenceNumber,streamId"
            .split(',')
            .filter(|k| !["body", "data", "linkMetadata", "metadata"].contains(k))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(
        state["json"],
        serde_json::json!({
            "partition": "", "streamId": "b-2", "sequenceNumber": 0, "eventType": "F",
            "bodyRaw": "{\"n\":2}", "metadataRaw": "", "linkMetadataRaw": null, "isJson": true,
            "category": "b", "eventId": "00000000-0000-0000-0000-000000000002"
        })
    );
    assert_eq!(state["assigned"], "changed");
    assert_eq!(state["kept"]["streamId"], "changed");
    assert_eq!(state["kept"]["body"], serde_json::json!({"n": 2}));
    assert_eq!(state["kept"]["eventType"], "F");
    assert_eq!(state["seen"], serde_json::json!(["0@/a:1", "0@/b:2"]));
}

/// An event object is made only for a handler that can reach its event
/// (ADR 44): one that cannot still emits with the event's id as
/// `$causedBy`, and every way of reaching it still gets it — the second
/// parameter, `arguments` (in a nested arrow too), a rest parameter, a
/// default, a pattern, a name spelled with an escape, a bound function.
#[test]
fn handlers_get_their_event_however_they_reach_it() {
    let mut p = compile(
        r#"fromAll().when({
            $init: () => ({ n: 0, seen: [] }),
            A: function (s, e) { s.n += 1; emit("out-a", "Counted", { n: s.n }); return s },
            B: function (s) { s.seen.push("B " + arguments[1].eventType); return s },
            C: (s, ...rest) => { s.seen.push("C " + rest[0].eventType); return s },
            D: (s, e = null) => { s.seen.push("D " + e.eventType); return s },
            E: (s, { eventType }) => { s.seen.push("E " + eventType); return s },
            F(s, ev) { s.seen.push("F " + \u0065v.eventType); return s },
            G: function (s) { const f = () => arguments[1]; s.seen.push("G " + f().eventType); return s },
            H: (function (s, e) { s.seen.push("H " + e.eventType); return s }).bind(null),
            I: s => { s.n += 1; linkStreamTo("out-i", "x"); return s },
            J: function (s, e) { s.seen.push("J " + e.eventType); return s },
        })"#,
    );
    let types = ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J"];
    let events: Vec<Event> = types.iter().map(|t| ev("a-1", t, "{}")).collect();
    let out = run(&mut p, &events).unwrap();
    let state = json(p.state("").unwrap());
    assert_eq!(state["n"], 2);
    assert_eq!(
        state["seen"],
        serde_json::json!(["B B", "C C", "D D", "E E", "F F", "G G", "H H", "J J"])
    );
    assert_eq!(out.len(), 2);
    let caused_by = |e: &Emitted| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(e.metadata.as_deref().unwrap()).unwrap()
            ["$causedBy"]
            .clone()
    };
    assert_eq!(caused_by(&out[0]), "00000000-0000-0000-0000-000000000001");
    assert_eq!(caused_by(&out[1]), "00000000-0000-0000-0000-000000000009");
    // In one batch, as the runner hands events over.
    let mut p = compile(
        r#"fromAll().when({
            $init: () => ({ n: 0 }),
            $any: function (s, e) { s.n += 1; emit("out", "Counted", { n: s.n }); return s },
        })"#,
    );
    p.load_partition("", None).unwrap();
    let ids: Vec<String> = (1..=3)
        .map(|i| format!("00000000-0000-0000-0000-{i:012}"))
        .collect();
    let out = p
        .handle_many(ids.iter().enumerate().map(|(i, id)| Input::Event {
            partition: "",
            created: false,
            event: InputEvent {
                position: i as u64 + 1,
                created_micros: 0,
                stream: "a-1",
                sequence_number: i as u64,
                event_type: "E",
                body: "{}",
                metadata: "",
                link_metadata: None,
                is_json: true,
                category: "a",
                event_id: id,
            },
        }))
        .unwrap();
    let seen: Vec<(usize, serde_json::Value)> =
        out.iter().map(|(i, e)| (*i, caused_by(&e[0]))).collect();
    assert_eq!(
        seen,
        (0..3)
            .map(|i| (i, serde_json::Value::from(ids[i].clone())))
            .collect::<Vec<_>>()
    );
    assert_eq!(json(p.state("").unwrap())["n"], 3);
}

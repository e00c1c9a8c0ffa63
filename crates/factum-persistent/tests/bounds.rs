//! Consumer groups are bounded whatever clients ask (ADR 21): every size
//! setting and a consumer's window have an upper bound, refused with
//! `InvalidSettings` naming the setting and the bound; a filter regex that
//! hits its backtracking limit faults the group (reported by `info`, its
//! consumers dropped) with the checkpoint before the event it could not
//! decide, never a silent skip past it.

mod common;

use std::time::Duration;

use common::*;
use factum_core::{EventStore, ReadStream};
use factum_persistent::{
    FilterSpec, GroupSettings, GroupSource, PersistentError, PersistentSubscriptions,
    MAX_BUFFER_SIZE, MAX_CONSUMER_WINDOW, MAX_SUBSCRIBER_COUNT,
};

fn refused(r: Result<(), PersistentError>, setting: &str, max: u64) {
    match r {
        Err(PersistentError::InvalidSettings(m)) => assert!(
            m.contains(setting) && m.contains(&max.to_string()),
            "the refusal names {setting} and {max}: {m}"
        ),
        other => panic!("{setting} past its bound: expected InvalidSettings, got {other:?}"),
    }
}

#[tokio::test]
async fn size_settings_and_windows_have_upper_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    let base = GroupSettings {
        live_buffer_size: MAX_BUFFER_SIZE,
        ..from_start()
    };
    type Set = fn(&mut GroupSettings, u32);
    let cases: [(&str, Set, u32); 4] = [
        (
            "live buffer size",
            |s, v| s.live_buffer_size = v,
            MAX_BUFFER_SIZE,
        ),
        (
            "read batch size",
            |s, v| s.read_batch_size = v,
            MAX_BUFFER_SIZE,
        ),
        (
            "history buffer size",
            |s, v| s.history_buffer_size = v,
            MAX_BUFFER_SIZE,
        ),
        (
            "maximum subscriber count",
            |s, v| s.max_subscriber_count = v,
            MAX_SUBSCRIBER_COUNT,
        ),
    ];
    for (i, (setting, set, max)) in cases.iter().enumerate() {
        let group = format!("g{i}");
        let mut at = base.clone();
        set(&mut at, *max);
        subs.create(GroupSource::Stream("s".into()), &group, at.clone())
            .await
            .unwrap_or_else(|e| panic!("{setting} at its bound {max} is accepted: {e}"));
        let mut past = base.clone();
        set(&mut past, max + 1);
        let other = format!("{group}-past");
        refused(
            subs.create(GroupSource::Stream("s".into()), &other, past.clone())
                .await,
            setting,
            u64::from(*max),
        );
        refused(
            subs.update("s", &group, past).await,
            setting,
            u64::from(*max),
        );
        // Refused updates leave the group as it was.
        assert_eq!(subs.info("s", &group).await.unwrap().settings, at);
        assert!(matches!(
            subs.info("s", &other).await,
            Err(PersistentError::NotFound(_))
        ));
    }
    // A consumer's window (its buffer size).
    let c = subs.connect("s", "g0", opts(MAX_CONSUMER_WINDOW)).await;
    assert!(c.is_ok(), "a window at its bound is accepted");
    match subs.connect("s", "g0", opts(MAX_CONSUMER_WINDOW + 1)).await {
        Err(PersistentError::InvalidSettings(m)) => assert!(
            m.contains("buffer size") && m.contains(&MAX_CONSUMER_WINDOW.to_string()),
            "{m}"
        ),
        Err(e) => panic!("a window past its bound: expected InvalidSettings, got {e:?}"),
        Ok(_) => panic!("a window past its bound: expected InvalidSettings, connected"),
    }
    let info = subs.info("s", "g0").await.unwrap();
    assert_eq!(info.connections.len(), 1, "only the accepted consumer");
}

/// Matches `order-…` streams; on a stream named `a…ab` the first branch
/// backtracks exponentially (the backreference keeps fancy-regex on its
/// backtracking engine) and passes the limit.
const CATASTROPHIC: &str = r"^(a|aa)+\1c$|^order-";

#[tokio::test]
async fn a_regex_past_its_backtrack_limit_faults_the_group_before_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let trap = format!("{}b", "a".repeat(48));
    append(&store, "order-1", 3, "Placed").await;
    append(&store, &trap, 1, "Trap").await;
    append(&store, "order-1", 2, "Placed").await;
    let trap_position = store
        .read_stream(ReadStream::forwards(name(&trap)))
        .await
        .unwrap()[0]
        .position
        .0;
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    let source = GroupSource::All(Some(FilterSpec {
        on_event_type: false,
        prefixes: vec![],
        regex: Some(CATASTROPHIC.into()),
    }));
    subs.create(source, "g", from_start()).await.unwrap();
    let mut c = subs.connect("$all", "g", opts(10)).await.unwrap();
    for _ in 0..3 {
        let d = next(&mut c).await;
        assert_eq!(d.event.stream.as_str(), "order-1");
        c.ack([d.id()]);
    }
    let info = eventually(&subs, "$all", "g", "the group faults", |i| {
        i.status == "Faulted"
    })
    .await;
    let error = info.error.expect("a faulted group says why");
    assert!(
        error.contains("backtrack") && error.contains(&trap),
        "the error names the limit and the event: {error}"
    );
    // Its consumer was dropped; new ones are refused with the reason.
    match tokio::time::timeout(Duration::from_secs(10), c.next()).await {
        Ok(Some(Err(PersistentError::Dropped { reason, .. }))) => {
            assert!(reason.contains("backtrack"), "{reason}")
        }
        Ok(None) => {}
        other => panic!(
            "the consumer is dropped, got {:?}",
            other.map(|o| o.map(|r| r.map(|d| d.event.position)))
        ),
    }
    assert!(matches!(
        subs.connect("$all", "g", opts(10)).await,
        Err(PersistentError::Faulted { .. })
    ));
    // The checkpoint, if the acks were handled before the group read the
    // event, is before the event the filter could not decide.
    let checkpoint = |store| async move {
        if let Some(at) = store_checkpoint(store).await {
            assert!(
                at < trap_position,
                "the checkpoint {at} stays before the undecided event at {trap_position}"
            );
        }
    };
    checkpoint(&store).await;
    // Restarting the group (an update) meets the same event again and
    // faults again: nothing is delivered from it on, nothing moved past it.
    subs.update("$all", "g", from_start()).await.unwrap();
    if let Ok(mut c) = subs.connect("$all", "g", opts(10)).await {
        while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(10), c.next()).await {
            assert!(
                d.event.position.0 < trap_position,
                "delivered {} at or after the undecided event",
                d.event.position.0
            );
            c.ack([d.id()]);
        }
    }
    eventually(&subs, "$all", "g", "the group faults again", |i| {
        i.status == "Faulted"
    })
    .await;
    checkpoint(&store).await;
}

async fn store_checkpoint(store: &factum_engine::Engine) -> Option<u64> {
    let cp = store
        .read_stream(
            ReadStream::backwards(name("$persistentsubscription-$all::g-checkpoint")).max_count(1),
        )
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&cp.first()?.data).ok()?;
    cp_position(&v)
}

/// The commit position in a `$all` checkpoint event (`"C:<n>/P:<n>"`).
fn cp_position(v: &serde_json::Value) -> Option<u64> {
    v.as_str()?
        .strip_prefix("C:")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

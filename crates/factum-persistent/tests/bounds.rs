//! Consumer groups are bounded whatever clients ask (ADR 21): every size
//! setting and a consumer's window have an upper bound, refused with
//! `InvalidSettings` naming the setting and the bound; a filter regex that
//! hits its backtracking limit faults the group (reported by `info`, its
//! consumers dropped) with the checkpoint before the event it could not
//! decide, never a silent skip past it.

mod common;

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

/// Matches `order-…` streams; a backtracking engine on a stream named
/// `a…ab` explores the first branch exponentially. Filters are matched in
/// linear time (factum_core::filter), so such a pattern is refused when the
/// group is made, saying why, and no event can be left undecided.
const CATASTROPHIC: &str = r"^(a|aa)+\1c$|^order-";

#[tokio::test]
async fn a_regex_without_a_linear_time_match_is_refused_and_look_ahead_works() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let trap = format!("{}b", "a".repeat(48));
    append(&store, "order-1", 3, "Placed").await;
    append(&store, &trap, 1, "Trap").await;
    append(&store, "order-2", 2, "Placed").await;
    let subs = PersistentSubscriptions::start(store.clone()).await.unwrap();
    let spec = |regex: &str| {
        GroupSource::All(Some(FilterSpec {
            on_event_type: false,
            prefixes: vec![],
            regex: Some(regex.into()),
        }))
    };
    match subs.create(spec(CATASTROPHIC), "g", from_start()).await {
        Err(PersistentError::InvalidSettings(m)) => {
            assert!(m.contains("linear time"), "{m}")
        }
        other => panic!("expected InvalidSettings, got {other:?}"),
    }
    // The form official clients send (a leading negative look-ahead) works.
    subs.create(spec(r"^(?!(\$.*|a+b$))"), "g", from_start())
        .await
        .unwrap();
    let mut c = subs.connect("$all", "g", opts(10)).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let d = next(&mut c).await;
        seen.push(d.event.stream.as_str().to_owned());
        c.ack([d.id()]).await;
    }
    assert!(seen.iter().all(|s| s.starts_with("order-")), "{seen:?}");
    let _ = store_checkpoint(&store).await;
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

//! Helpers shared by the checks: event builders, reads that must succeed,
//! error assertions, subscription helpers with timeouts.

use std::fmt::{Debug, Display};
use std::time::Duration;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::expected::{CurrentRevision, ExpectedRevision};
use crate::metadata::StreamMetadata;
use crate::model::{ContentType, EventData, RecordedEvent, StreamName, StreamRevision};
use crate::read::{ReadAll, ReadStream};
use crate::store::{EventStore, Subscription, SubscriptionMessage};

/// How long a subscription may take to deliver what the check expects.
pub(crate) const SUBSCRIPTION_TIMEOUT: Duration = Duration::from_secs(20);

/// A valid stream name.
pub(crate) fn sn(name: &str) -> StreamName {
    StreamName::new(name).expect("valid stream name in the testkit")
}

/// A JSON event `{"n": n}` with metadata `{"m": n}` and a fresh id.
pub(crate) fn ev(event_type: &str, n: u64) -> EventData {
    EventData::new(
        event_type,
        ContentType::Json,
        format!("{{\"n\":{n}}}").into_bytes(),
    )
    .with_metadata(format!("{{\"m\":{n}}}").into_bytes())
}

/// `count` events of one type, numbered from `first`.
pub(crate) fn evs(event_type: &str, first: u64, count: u64) -> Vec<EventData> {
    (first..first + count).map(|n| ev(event_type, n)).collect()
}

/// Unwraps an `Ok`, or panics naming the step.
#[track_caller]
pub(crate) fn ok<T>(result: Result<T>, step: impl Display) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("conformance: {step}: expected Ok, got error: {e} ({e:?})"),
    }
}

/// Unwraps an `Err`, or panics naming the step.
#[track_caller]
pub(crate) fn err<T: Debug>(result: Result<T>, step: impl Display) -> Error {
    match result {
        Ok(v) => panic!("conformance: {step}: expected an error, got Ok({v:?})"),
        Err(e) => e,
    }
}

/// The error's variant, for messages and comparisons.
pub(crate) fn kind(e: &Error) -> &'static str {
    match e {
        Error::WrongExpectedVersion { .. } => "WrongExpectedVersion",
        Error::StreamDeleted { .. } => "StreamDeleted",
        Error::StreamNotFound { .. } => "StreamNotFound",
        Error::InvalidInput(_) => "InvalidInput",
        Error::LimitExceeded { .. } => "LimitExceeded",
        Error::Io { .. } => "Io",
        Error::Corrupt { .. } => "Corrupt",
        Error::Unavailable { .. } => "Unavailable",
        Error::Locked { .. } => "Locked",
        Error::Unsupported(_) => "Unsupported",
        Error::AccessDenied(_) => "AccessDenied",
    }
}

/// Asserts that `result` failed with the error variant `want`.
#[track_caller]
pub(crate) fn assert_kind<T: Debug>(result: Result<T>, want: &str, step: impl Display) {
    let e = err(result, &step);
    assert_eq!(
        kind(&e),
        want,
        "conformance: {step}: expected {want}, got {e} ({e:?})"
    );
}

/// Asserts a `WrongExpectedVersion` with these `expected` and `actual`
/// (and `stream`, when given).
#[track_caller]
pub(crate) fn assert_wev<T: Debug>(
    result: Result<T>,
    stream: Option<&StreamName>,
    expected: ExpectedRevision,
    actual: CurrentRevision,
    step: impl Display,
) {
    match err(result, &step) {
        Error::WrongExpectedVersion {
            stream: s,
            expected: e,
            actual: a,
        } => {
            assert_eq!(
                e, expected,
                "conformance: {step}: WrongExpectedVersion.expected"
            );
            assert_eq!(
                a, actual,
                "conformance: {step}: WrongExpectedVersion.actual"
            );
            if let Some(stream) = stream {
                assert_eq!(
                    &s, stream,
                    "conformance: {step}: WrongExpectedVersion.stream"
                );
            }
        }
        other => {
            panic!("conformance: {step}: expected WrongExpectedVersion, got {other} ({other:?})")
        }
    }
}

/// `Current(r)`.
pub(crate) fn cur(r: u64) -> CurrentRevision {
    CurrentRevision::Current(StreamRevision(r))
}

/// `Exact(r)`.
pub(crate) fn exact(r: u64) -> ExpectedRevision {
    ExpectedRevision::Exact(StreamRevision(r))
}

/// Runs a stream read that must succeed.
pub(crate) async fn read<S: EventStore>(store: &S, req: ReadStream) -> Vec<RecordedEvent> {
    let step = format!("read_stream({req:?})");
    ok(store.read_stream(req).await, step)
}

/// Reads a whole stream forwards.
pub(crate) async fn read_fwd<S: EventStore>(store: &S, stream: &str) -> Vec<RecordedEvent> {
    read(store, ReadStream::forwards(sn(stream))).await
}

/// Reads a whole stream backwards.
pub(crate) async fn read_bwd<S: EventStore>(store: &S, stream: &str) -> Vec<RecordedEvent> {
    read(store, ReadStream::backwards(sn(stream))).await
}

/// Runs a `$all` read that must succeed.
pub(crate) async fn read_all<S: EventStore>(store: &S, req: ReadAll) -> Vec<RecordedEvent> {
    let step = format!("read_all({req:?})");
    ok(store.read_all(req).await, step)
}

/// The revisions of events.
pub(crate) fn revs(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.revision.0).collect()
}

/// The positions of events.
pub(crate) fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position.0).collect()
}

/// The link revisions of events (panics on an event without a link).
pub(crate) fn link_revs(events: &[RecordedEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| {
            e.link
                .as_ref()
                .unwrap_or_else(|| panic!("conformance: event {e:?} was read without its link"))
                .revision
                .0
        })
        .collect()
}

/// The ids of recorded events.
pub(crate) fn ids(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

/// The ids of events to append.
pub(crate) fn data_ids(events: &[EventData]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

/// Asserts a recorded event carries everything that was appended.
#[track_caller]
pub(crate) fn assert_recorded(
    got: &RecordedEvent,
    sent: &EventData,
    stream: &str,
    revision: u64,
    step: impl Display,
) {
    let what = format!("conformance: {step}: event {revision}@{stream}");
    assert_eq!(got.id, sent.id, "{what}: id");
    assert_eq!(got.stream.as_str(), stream, "{what}: stream");
    assert_eq!(got.revision, StreamRevision(revision), "{what}: revision");
    assert_eq!(got.event_type, sent.event_type, "{what}: event type");
    assert_eq!(got.content_type, sent.content_type, "{what}: content type");
    assert_eq!(got.data, sent.data, "{what}: data");
    assert_eq!(got.metadata, sent.metadata, "{what}: metadata");
    assert_eq!(got.link, None, "{what}: link (read directly)");
}

/// Asserts `created` never decreases along `events`.
#[track_caller]
pub(crate) fn assert_created_non_decreasing(events: &[RecordedEvent], step: impl Display) {
    for w in events.windows(2) {
        assert!(
            w[0].created <= w[1].created,
            "conformance: {step}: created went backwards: {:?} at {} then {:?} at {}",
            w[0].created,
            w[0].position,
            w[1].created,
            w[1].position
        );
    }
}

/// The next message, or a panic after [`SUBSCRIPTION_TIMEOUT`].
pub(crate) async fn next_message(sub: &mut Subscription, step: &str) -> SubscriptionMessage {
    match tokio::time::timeout(SUBSCRIPTION_TIMEOUT, sub.next()).await {
        Err(_) => {
            panic!("conformance: {step}: no subscription message within {SUBSCRIPTION_TIMEOUT:?}")
        }
        Ok(None) => panic!("conformance: {step}: the subscription ended"),
        Ok(Some(Err(e))) => panic!("conformance: {step}: subscription error: {e} ({e:?})"),
        Ok(Some(Ok(m))) => m,
    }
}

/// Collects exactly `n` events (ignoring control messages).
pub(crate) async fn take_events(
    sub: &mut Subscription,
    n: usize,
    step: &str,
) -> Vec<RecordedEvent> {
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        let step = format!("{step} (received {} of {n} events)", events.len());
        if let SubscriptionMessage::Event(e) = next_message(sub, &step).await {
            events.push(e);
        }
    }
    events
}

/// Collects the events that arrive before the first `CaughtUp`.
pub(crate) async fn events_until_caught_up(
    sub: &mut Subscription,
    step: &str,
) -> Vec<RecordedEvent> {
    let mut events = Vec::new();
    loop {
        let step = format!(
            "{step} (waiting for CaughtUp after {} events)",
            events.len()
        );
        match next_message(sub, &step).await {
            SubscriptionMessage::Event(e) => events.push(e),
            SubscriptionMessage::CaughtUp => return events,
            _ => {}
        }
    }
}

/// Asserts no event arrives for a short while (control messages are fine).
pub(crate) async fn assert_no_event(sub: &mut Subscription, step: &str) {
    let quiet = Duration::from_millis(200);
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Err(_) => return,
            Ok(Some(Ok(SubscriptionMessage::Event(e)))) => {
                panic!("conformance: {step}: unexpected event {e:?}")
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("conformance: {step}: subscription error: {e} ({e:?})"),
            Ok(None) => panic!("conformance: {step}: the subscription ended"),
        }
    }
}

/// Metadata with only `$maxCount` and `$tb`.
pub(crate) fn meta(max_count: Option<u64>, tb: Option<u64>) -> StreamMetadata {
    StreamMetadata {
        max_count,
        truncate_before: tb,
        ..StreamMetadata::default()
    }
}

/// Sets a stream's metadata with `Any`, which must succeed.
pub(crate) async fn set<S: EventStore>(store: &S, stream: &str, md: StreamMetadata) {
    let step = format!("set_stream_metadata({stream}, {md:?})");
    ok(
        store
            .set_stream_metadata(sn(stream), ExpectedRevision::Any, md)
            .await,
        step,
    );
}

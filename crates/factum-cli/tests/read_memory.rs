//! Reads and subscriptions of large events over the wire stream them in
//! pages bounded by bytes (ADR 21): a `factum serve` process holding 192
//! events of 1 MiB answers a `$all` read of all of them, a stream read
//! and a catch-up subscription from the beginning without ever holding
//! them at once. Measured as the server's peak RSS (`VmHWM`, reset through
//! `/proc/<pid>/clear_refs` before each read): without the byte bound the
//! first page alone (256 events for a read, 512 for a subscription) would
//! be all 192 MiB.

use std::time::Duration;

use factum_client::Client;
use factum_core::{
    ContentType, EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, StreamName,
    Subscribe, SubscriptionMessage, SubscriptionStart,
};
use futures_util::StreamExt;

mod common;

const EVENTS: usize = 192;
const MIB: u64 = 1 << 20;
/// The most a read may add to the server's peak RSS: the engine's read
/// cache (64 MiB), a page (4 MiB plus one event), the encoded batches in
/// flight and allocator slack; far below the 192 MiB of one whole page.
const MAX_GROWTH: u64 = 120 * MIB;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resets the peak RSS, returning the RSS now (bytes).
fn reset_peak(pid: u32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    status_kib(pid, "VmRSS:") * 1024
}

fn peak(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:") * 1024
}

/// `factum serve` over `data`: the process, its pid and a client.
async fn start(data: &str) -> (std::process::Child, u32, Client) {
    let (server, addr) = common::serve(&["--data", data]);
    let pid = server.id();
    let client = Client::connect(&format!("esdb://{addr}?tls=false"))
        .await
        .unwrap();
    (server, pid, client)
}

fn check(what: &str, pid: u32, before: u64) {
    let grew = peak(pid).saturating_sub(before);
    eprintln!("{what}: peak RSS grew {} MiB", grew / MIB);
    assert!(
        grew < MAX_GROWTH,
        "{what}: the server's peak RSS grew {} MiB (at most {} MiB): a page was built whole",
        grew / MIB,
        MAX_GROWTH / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_are_read_and_caught_up_in_bounded_pages() {
    if !std::path::Path::new("/proc/self/clear_refs").exists() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "/proc/<pid>/clear_refs is required in CI"
        );
        eprintln!("SKIPPED: no /proc/<pid>/clear_refs to measure the server's peak RSS");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let data = data.to_str().unwrap();
    let (mut server, _, client) = start(data).await;
    let stream = StreamName::new("large").unwrap();
    for i in 0..EVENTS {
        let e = EventData::new(
            "Blob",
            ContentType::Binary,
            vec![i as u8; MIB as usize - 64],
        );
        client
            .append(stream.clone(), ExpectedRevision::Any, vec![e])
            .await
            .unwrap();
    }

    // Each read on a freshly started server over the same data: memory
    // one read left behind cannot hide another's.
    let _ = server.kill();
    let _ = server.wait();

    // $all, one read of every event.
    let (mut server, pid, client) = start(data).await;
    let before = reset_peak(pid);
    let mut read = client
        .read_all_streaming(ReadAll::forwards().max_count(4096))
        .await
        .unwrap();
    let mut n = 0;
    while let Some(e) = read.next().await {
        let e = e.unwrap();
        assert_eq!(e.data[0], n as u8, "event {n} of $all");
        n += 1;
    }
    assert_eq!(n, EVENTS, "the $all read returns every event");
    check("a $all read of 192 MiB", pid, before);

    let _ = server.kill();
    let _ = server.wait();

    // The stream, one read of every event (collected by the client: the
    // test's memory, not the server's).
    let (mut server, pid, client) = start(data).await;
    let before = reset_peak(pid);
    let events = client
        .read_stream(ReadStream::forwards(stream.clone()).max_count(4096))
        .await
        .unwrap();
    assert_eq!(events.len(), EVENTS, "the stream read returns every event");
    drop(events);
    check("a stream read of 192 MiB", pid, before);

    let _ = server.kill();
    let _ = server.wait();

    // A catch-up subscription to $all from the beginning.
    let (mut server, pid, client) = start(data).await;
    let before = reset_peak(pid);
    let mut sub = client
        .subscribe(Subscribe::all(SubscriptionStart::Beginning, None))
        .await
        .unwrap();
    let mut n = 0;
    while n < EVENTS {
        match tokio::time::timeout(Duration::from_secs(60), sub.next())
            .await
            .expect("the subscription delivers within a minute")
        {
            Some(Ok(SubscriptionMessage::Event(e))) => {
                assert_eq!(e.data[0], n as u8, "subscription event {n}");
                n += 1;
            }
            Some(Ok(_)) => {}
            other => panic!("subscription ended early: {other:?}"),
        }
    }
    drop(sub);
    check("a catch-up subscription over 192 MiB", pid, before);

    let _ = server.kill();
    let _ = server.wait();
}

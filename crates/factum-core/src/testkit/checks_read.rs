//! Reads: streams and `$all` in both directions with bounds, filters,
//! temporal reads.

use std::time::Duration;

use super::support::*;
use super::StoreFactory;
use crate::expected::ExpectedRevision;
use crate::model::{ContentType, EventData, Position, RecordedEvent, StreamRevision, Timestamp};
use crate::read::{AllStart, Direction, Filter, PageBound, ReadAll, ReadStream, StreamStart};
use crate::store::EventStore;

/// Reads `$all` in pages of `page` by position; returns everything read.
async fn page_all<S: EventStore>(store: &S, direction: Direction, page: u64) -> Vec<RecordedEvent> {
    let mut out: Vec<RecordedEvent> = Vec::new();
    let mut req = ReadAll {
        direction,
        ..ReadAll::forwards()
    }
    .max_count(page);
    if direction == Direction::Backwards {
        req.from = AllStart::End;
    }
    loop {
        let got = read_all(store, req.clone()).await;
        assert!(
            got.len() as u64 <= page,
            "conformance: read_all returned more than max_count"
        );
        let Some(last) = got.last() else { return out };
        let next = match direction {
            Direction::Forwards => last.position.0 + 1,
            Direction::Backwards if last.position.0 <= 1 => {
                out.extend(got);
                return out;
            }
            Direction::Backwards => last.position.0 - 1,
        };
        out.extend(got);
        req.from = AllStart::Position(Position(next));
    }
}

/// Reads a stream in pages of `page` by `read_revision()`.
pub(super) async fn page_stream<S: EventStore>(
    store: &S,
    stream: &str,
    direction: Direction,
    page: u64,
) -> Vec<RecordedEvent> {
    let mut out: Vec<RecordedEvent> = Vec::new();
    let mut req = match direction {
        Direction::Forwards => ReadStream::forwards(sn(stream)),
        Direction::Backwards => ReadStream::backwards(sn(stream)),
    }
    .max_count(page);
    loop {
        let got = read(store, req.clone()).await;
        assert!(
            got.len() as u64 <= page,
            "conformance: read_stream({stream}) returned more than max_count"
        );
        let Some(last) = got.last() else { return out };
        let r = last.read_revision().0;
        let next = match direction {
            Direction::Forwards => r + 1,
            Direction::Backwards if r == 0 => {
                out.extend(got);
                return out;
            }
            Direction::Backwards => r - 1,
        };
        out.extend(got);
        req.from = StreamStart::Revision(StreamRevision(next));
    }
}

pub(super) fn rev_range(from: u64, to_inclusive: u64) -> Vec<u64> {
    (from..=to_inclusive).collect()
}

fn rev_range_down(from: u64, to_inclusive: u64) -> Vec<u64> {
    (to_inclusive..=from).rev().collect()
}

/// `read_stream` forwards and backwards, from a revision (inclusive), with
/// `max_count`, from `End`/`Start`, paging; `StreamNotFound` for unknown streams.
pub async fn read_stream_directions_and_bounds<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let s = sn("read-1");
    ok(
        store
            .append(s.clone(), ExpectedRevision::NoStream, evs("E", 0, 4))
            .await,
        "append",
    );
    ok(
        store
            .append(sn("other-1"), ExpectedRevision::Any, evs("O", 0, 3))
            .await,
        "append other",
    );
    ok(
        store.append(s.clone(), exact(3), evs("E", 4, 6)).await,
        "append",
    );
    let fwd = |from: StreamStart, n: u64| {
        ReadStream {
            from,
            ..ReadStream::forwards(s.clone())
        }
        .max_count(n)
    };
    let bwd = |from: StreamStart, n: u64| {
        ReadStream {
            from,
            ..ReadStream::backwards(s.clone())
        }
        .max_count(n)
    };
    let r = |n| StreamStart::Revision(StreamRevision(n));
    let cases: Vec<(&str, ReadStream, Vec<u64>)> = vec![
        ("forwards", ReadStream::forwards(s.clone()), rev_range(0, 9)),
        (
            "backwards",
            ReadStream::backwards(s.clone()),
            rev_range_down(9, 0),
        ),
        ("forwards from 4", fwd(r(4), u64::MAX), rev_range(4, 9)),
        ("forwards from 4, max 3", fwd(r(4), 3), vec![4, 5, 6]),
        ("forwards from 9", fwd(r(9), u64::MAX), vec![9]),
        (
            "forwards from 10 (past the end)",
            fwd(r(10), u64::MAX),
            vec![],
        ),
        ("forwards from 100", fwd(r(100), 5), vec![]),
        ("forwards from End", fwd(StreamStart::End, 5), vec![]),
        ("forwards, max 0", fwd(StreamStart::Start, 0), vec![]),
        ("forwards, max 1", fwd(StreamStart::Start, 1), vec![0]),
        (
            "backwards from 4",
            bwd(r(4), u64::MAX),
            rev_range_down(4, 0),
        ),
        ("backwards from 4, max 2", bwd(r(4), 2), vec![4, 3]),
        ("backwards from 0", bwd(r(0), u64::MAX), vec![0]),
        (
            "backwards from 100 (past the end)",
            bwd(r(100), 3),
            vec![9, 8, 7],
        ),
        (
            "backwards from Start (= the last)",
            bwd(StreamStart::Start, 2),
            vec![9, 8],
        ),
        (
            "backwards from End, max 1",
            bwd(StreamStart::End, 1),
            vec![9],
        ),
        ("backwards, max 0", bwd(StreamStart::End, 0), vec![]),
    ];
    let all = read_fwd(&store, "read-1").await;
    for (what, req, want) in cases {
        let got = read(&store, req).await;
        assert_eq!(
            revs(&got),
            want,
            "conformance: read_stream {what}: revisions"
        );
        for e in &got {
            assert_eq!(
                Some(e),
                all.get(e.revision.0 as usize),
                "conformance: read_stream {what}: event differs from the full read"
            );
        }
    }
    assert_eq!(
        positions(&all),
        [1, 2, 3, 4, 8, 9, 10, 11, 12, 13],
        "conformance: read-1 positions"
    );
    for page in [1, 3, 4, 10, 11] {
        assert_eq!(
            ids(&page_stream(&store, "read-1", Direction::Forwards, page).await),
            ids(&all),
            "conformance: paging forwards by {page}"
        );
        let mut back = ids(&page_stream(&store, "read-1", Direction::Backwards, page).await);
        back.reverse();
        assert_eq!(back, ids(&all), "conformance: paging backwards by {page}");
    }
    for req in [
        ReadStream::forwards(sn("nope-1")),
        ReadStream::backwards(sn("nope-1")),
        ReadStream::forwards(sn("nope-1")).from_revision(StreamRevision(3)),
    ] {
        let step = format!("read_stream of an unknown stream ({req:?})");
        assert_kind(store.read_stream(req).await, "StreamNotFound", step);
    }
}

/// `read_all` forwards and backwards, from a position (inclusive), with
/// `max_count`, from `End`/`Start`, paging; an empty store reads as empty.
pub async fn read_all_directions_and_bounds<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    assert!(
        read_all(&store, ReadAll::forwards()).await.is_empty(),
        "conformance: read_all of an empty store"
    );
    assert!(
        read_all(&store, ReadAll::backwards()).await.is_empty(),
        "conformance: read_all backwards of an empty store"
    );
    for i in 0..6u64 {
        ok(
            store
                .append(
                    sn(&format!("all-{}", i % 3)),
                    ExpectedRevision::Any,
                    evs("E", 2 * i, 2),
                )
                .await,
            "append",
        );
    }
    let p = |n| AllStart::Position(Position(n));
    let fwd = |from: AllStart, n: u64| {
        ReadAll {
            from,
            ..ReadAll::forwards()
        }
        .max_count(n)
    };
    let bwd = |from: AllStart, n: u64| {
        ReadAll {
            from,
            ..ReadAll::backwards()
        }
        .max_count(n)
    };
    // 12 events: positions 1 ..= 12 (the first event is at 1; 0 is
    // "before the first event").
    let cases: Vec<(&str, ReadAll, Vec<u64>)> = vec![
        ("forwards", ReadAll::forwards(), rev_range(1, 12)),
        ("backwards", ReadAll::backwards(), rev_range_down(12, 1)),
        ("forwards from 0", fwd(p(0), u64::MAX), rev_range(1, 12)),
        ("forwards from 1", fwd(p(1), u64::MAX), rev_range(1, 12)),
        ("forwards from 5", fwd(p(5), u64::MAX), rev_range(5, 12)),
        ("forwards from 5, max 3", fwd(p(5), 3), vec![5, 6, 7]),
        (
            "forwards from 13 (past the head)",
            fwd(p(13), u64::MAX),
            vec![],
        ),
        ("forwards from End", fwd(AllStart::End, 3), vec![]),
        ("forwards, max 0", fwd(AllStart::Start, 0), vec![]),
        (
            "backwards from 5",
            bwd(p(5), u64::MAX),
            rev_range_down(5, 1),
        ),
        ("backwards from 5, max 2", bwd(p(5), 2), vec![5, 4]),
        (
            "backwards from 1000 (past the head)",
            bwd(p(1000), 2),
            vec![12, 11],
        ),
        (
            "backwards from Start (= the head)",
            bwd(AllStart::Start, 1),
            vec![12],
        ),
        (
            "backwards from End, max 3",
            bwd(AllStart::End, 3),
            vec![12, 11, 10],
        ),
        ("backwards from 1", bwd(p(1), 5), vec![1]),
        (
            "backwards from 0 (before the first event)",
            bwd(p(0), 5),
            vec![],
        ),
    ];
    let all = read_all(&store, ReadAll::forwards()).await;
    for (what, req, want) in cases {
        let got = read_all(&store, req).await;
        assert_eq!(
            positions(&got),
            want,
            "conformance: read_all {what}: positions"
        );
        for e in &got {
            assert_eq!(
                Some(e),
                all.get(e.position.0 as usize - 1),
                "conformance: read_all {what}: event differs from the full read"
            );
        }
    }
    for page in [1, 5, 12, 13] {
        assert_eq!(
            ids(&page_all(&store, Direction::Forwards, page).await),
            ids(&all),
            "conformance: paging $all forwards by {page}"
        );
        let mut back = ids(&page_all(&store, Direction::Backwards, page).await);
        back.reverse();
        assert_eq!(
            back,
            ids(&all),
            "conformance: paging $all backwards by {page}"
        );
    }
}

/// `read_all` with stream-prefix, event-type-prefix and regex filters,
/// combined with direction, start and `max_count` (which counts matches).
pub async fn read_all_filters<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let writes: [(&str, &str); 9] = [
        ("order-1", "OrderPlaced"),
        ("cart-1", "CartAdded"),
        ("order-2", "OrderPlaced"),
        ("order-1", "OrderPaid"),
        ("orderly", "Misc"),
        ("cart-1", "CartPaid"),
        ("order-2", "OrderPaid"),
        ("user-7", "UserRenamed"),
        ("order-1", "OrderShipped"),
    ];
    for (i, (s, t)) in writes.iter().enumerate() {
        ok(
            store
                .append(sn(s), ExpectedRevision::Any, vec![ev(t, i as u64)])
                .await,
            "append",
        );
    }
    let all = read_all(&store, ReadAll::forwards()).await;
    let expect = |pred: &dyn Fn(&str, &str) -> bool| -> Vec<u64> {
        writes
            .iter()
            .enumerate()
            .filter(|(_, (s, t))| pred(s, t))
            .map(|(i, _)| i as u64 + 1)
            .collect()
    };
    let cases: Vec<(&str, Filter, Vec<u64>)> = vec![
        (
            "stream prefix order-",
            Filter::stream_prefix(["order-"]),
            expect(&|s, _| s.starts_with("order-")),
        ),
        (
            "stream prefixes cart-, order-2",
            Filter::stream_prefix(["cart-", "order-2"]),
            expect(&|s, _| s.starts_with("cart-") || s == "order-2"),
        ),
        (
            "stream prefix order",
            Filter::stream_prefix(["order"]),
            expect(&|s, _| s.starts_with("order")),
        ),
        (
            "event type prefix OrderP",
            Filter::event_type_prefix(["OrderP"]),
            expect(&|_, t| t.starts_with("OrderP")),
        ),
        (
            "stream regex ^order-\\d+$",
            Filter::stream_regex(r"^order-\d+$").unwrap(),
            expect(&|s, _| s.starts_with("order-")),
        ),
        (
            "event type regex Paid$ (unanchored start)",
            Filter::event_type_regex("Paid$").unwrap(),
            expect(&|_, t| t.ends_with("Paid")),
        ),
        (
            "stream regex matching nothing",
            Filter::stream_regex("^nothing$").unwrap(),
            vec![],
        ),
        (
            "event type prefix matching nothing",
            Filter::event_type_prefix(["Zzz"]),
            vec![],
        ),
    ];
    for (what, filter, want) in cases {
        let got = read_all(&store, ReadAll::forwards().filter(filter.clone())).await;
        assert_eq!(
            positions(&got),
            want,
            "conformance: read_all filtered by {what}"
        );
        for e in &got {
            assert_eq!(
                Some(e),
                all.get(e.position.0 as usize - 1),
                "conformance: filtered read_all ({what}) changed an event"
            );
        }
        let mut back =
            positions(&read_all(&store, ReadAll::backwards().filter(filter.clone())).await);
        back.reverse();
        assert_eq!(
            back, want,
            "conformance: read_all backwards filtered by {what}"
        );
        let got = positions(
            &read_all(
                &store,
                ReadAll::forwards().filter(filter.clone()).max_count(2),
            )
            .await,
        );
        assert_eq!(
            got,
            want.iter().copied().take(2).collect::<Vec<_>>(),
            "conformance: read_all filtered by {what}, max 2 (counts matches)"
        );
        let got = positions(
            &read_all(
                &store,
                ReadAll::forwards()
                    .from_position(Position(3))
                    .filter(filter.clone()),
            )
            .await,
        );
        assert_eq!(
            got,
            want.iter().copied().filter(|p| *p >= 3).collect::<Vec<_>>(),
            "conformance: read_all filtered by {what} from 3"
        );
        let got = positions(
            &read_all(
                &store,
                ReadAll::backwards()
                    .from_position(Position(5))
                    .filter(filter)
                    .max_count(1),
            )
            .await,
        );
        assert_eq!(
            got,
            want.iter()
                .copied()
                .rfind(|p| *p <= 5)
                .into_iter()
                .collect::<Vec<_>>(),
            "conformance: read_all backwards filtered by {what} from 5, max 1"
        );
    }
}

/// `until`: stream, `$all` and `$ce-` reads keep only events created at or
/// before the given time.
pub async fn temporal_reads<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    for i in 0..6u64 {
        let s = if i % 2 == 0 { "time-1" } else { "time-2" };
        ok(
            store
                .append(sn(s), ExpectedRevision::Any, vec![ev("E", i)])
                .await,
            "append",
        );
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let all = read_all(&store, ReadAll::forwards()).await;
    assert_created_non_decreasing(&all, "$all");
    assert!(
        all[0].created < all[5].created,
        "conformance: created did not advance over 75 ms"
    );
    let times: Vec<Timestamp> = [Timestamp(all[0].created.0 - 1)]
        .into_iter()
        .chain(all.iter().map(|e| e.created))
        .collect();
    for t in times {
        let upto = |e: &&RecordedEvent| e.created <= t;
        let want_all: Vec<u64> = positions(&all.iter().filter(upto).cloned().collect::<Vec<_>>());
        assert_eq!(
            positions(&read_all(&store, ReadAll::forwards().until(t)).await),
            want_all,
            "conformance: read_all until {t}"
        );
        let mut back = positions(&read_all(&store, ReadAll::backwards().until(t)).await);
        back.reverse();
        assert_eq!(back, want_all, "conformance: read_all backwards until {t}");
        let first = positions(&read_all(&store, ReadAll::forwards().until(t).max_count(1)).await);
        assert_eq!(
            first,
            want_all.iter().copied().take(1).collect::<Vec<_>>(),
            "conformance: read_all until {t}, max 1"
        );
        for s in ["time-1", "time-2", "$ce-time"] {
            let full = read_fwd(&store, s).await;
            let want: Vec<_> = ids(&full.iter().filter(upto).cloned().collect::<Vec<_>>());
            let got = read(&store, ReadStream::forwards(sn(s)).until(t)).await;
            assert_eq!(
                ids(&got),
                want,
                "conformance: read_stream({s}) until {t} (an empty list when nothing is that old)"
            );
            let mut back = ids(&read(&store, ReadStream::backwards(sn(s)).until(t)).await);
            back.reverse();
            assert_eq!(
                back, want,
                "conformance: read_stream({s}) backwards until {t}"
            );
        }
    }
}

/// Pages bounded by bytes (`max_bytes`): a stream read, a `$all` read forwards and backwards and a filtered `$all` read each return
/// a prefix of the unbounded read that ends after the event bringing the
/// page to `max_bytes` (at least one event, however large); the caller
/// continues from the last event and reads everything exactly once.
pub async fn read_pages_by_bytes<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    // Sizes that make pages end in different places: 1 KiB, 10 KiB, 100 B, 30 KiB, ...
    let sizes = [
        1024usize,
        10 * 1024,
        100,
        30 * 1024,
        1,
        5000,
        5000,
        5000,
        70_000,
        3,
    ];
    for (i, size) in sizes.iter().enumerate() {
        let stream = if i % 2 == 0 { "bytes-a" } else { "bytes-b" };
        let e = EventData::new("Big", ContentType::Binary, vec![i as u8; *size]);
        ok(
            store
                .append(sn(stream), ExpectedRevision::Any, vec![e])
                .await,
            "append",
        );
    }
    let all_fwd = read_all(&store, ReadAll::forwards()).await;
    let all_bwd = read_all(&store, ReadAll::backwards()).await;
    let a_fwd = read_fwd(&store, "bytes-a").await;
    let a_bwd = read_bwd(&store, "bytes-a").await;
    let b_all: Vec<RecordedEvent> = all_fwd
        .iter()
        .filter(|e| e.stream.as_str() == "bytes-b")
        .cloned()
        .collect();
    assert_eq!(
        all_fwd.len(),
        sizes.len(),
        "conformance: read_all after appends"
    );
    for max_bytes in [0u64, 1, 1100, 12 * 1024, 40 * 1024, 1 << 20] {
        // What a page must hold: events up to and including the one that
        // brings it to `max_bytes`.
        let expect_page = |rest: &[RecordedEvent], max_count: u64| -> usize {
            let mut b = PageBound::new(max_count, max_bytes);
            rest.iter().take_while(|e| b.admit(e)).count()
        };
        let check = |what: &str, whole: &[RecordedEvent], pages: Vec<Vec<RecordedEvent>>| {
            let mut at = 0;
            for page in &pages {
                let want = expect_page(&whole[at..], u64::MAX);
                assert!(
                    !page.is_empty(),
                    "conformance: {what} with max_bytes {max_bytes} returned an empty page at {at}"
                );
                assert_eq!(
                    ids(page),
                    ids(&whole[at..at + want]),
                    "conformance: {what} with max_bytes {max_bytes}: the page at {at} is not the \
                     prefix ending after the event that reaches the bound"
                );
                at += want;
            }
            assert_eq!(
                at,
                whole.len(),
                "conformance: {what} with max_bytes {max_bytes} paged through {at} of {} events",
                whole.len()
            );
        };
        // $all forwards, in pages, continuing after each page's last event.
        let mut pages = Vec::new();
        let mut from = AllStart::Start;
        loop {
            let page = read_all(
                &store,
                ReadAll {
                    from,
                    ..ReadAll::forwards()
                }
                .max_bytes(max_bytes),
            )
            .await;
            let Some(last) = page.last() else { break };
            from = AllStart::Position(Position(last.position.0 + 1));
            pages.push(page);
        }
        check("read_all forwards", &all_fwd, pages);
        // $all backwards.
        let mut pages = Vec::new();
        let mut from = AllStart::End;
        loop {
            let page = read_all(
                &store,
                ReadAll {
                    from,
                    ..ReadAll::backwards()
                }
                .max_bytes(max_bytes),
            )
            .await;
            let Some(last) = page.last() else { break };
            let done = last.position.0 == 0;
            from = AllStart::Position(Position(last.position.0.saturating_sub(1)));
            pages.push(page);
            if done {
                break;
            }
        }
        check("read_all backwards", &all_bwd, pages);
        // $all filtered: only matching events count against the bound.
        let mut pages = Vec::new();
        let mut from = AllStart::Start;
        loop {
            let page = read_all(
                &store,
                ReadAll {
                    from,
                    ..ReadAll::forwards()
                }
                .filter(Filter::stream_prefix(["bytes-b"]))
                .max_bytes(max_bytes),
            )
            .await;
            let Some(last) = page.last() else { break };
            from = AllStart::Position(Position(last.position.0 + 1));
            pages.push(page);
        }
        check("filtered read_all", &b_all, pages);
        // A stream, both ways.
        for (direction, whole) in [
            (Direction::Forwards, &a_fwd),
            (Direction::Backwards, &a_bwd),
        ] {
            let mut pages = Vec::new();
            let mut req = match direction {
                Direction::Forwards => ReadStream::forwards(sn("bytes-a")),
                Direction::Backwards => ReadStream::backwards(sn("bytes-a")),
            }
            .max_bytes(max_bytes);
            loop {
                let page = read(&store, req.clone()).await;
                let Some(last) = page.last() else { break };
                let r = last.revision.0;
                pages.push(page);
                req.from = match direction {
                    Direction::Forwards => StreamStart::Revision(StreamRevision(r + 1)),
                    Direction::Backwards if r == 0 => break,
                    Direction::Backwards => StreamStart::Revision(StreamRevision(r - 1)),
                };
            }
            check(&format!("read_stream {direction:?}"), whole, pages);
        }
        // Both bounds: whichever is reached first ends the page.
        let page = read_all(
            &store,
            ReadAll::forwards().max_count(2).max_bytes(max_bytes),
        )
        .await;
        assert_eq!(
            page.len(),
            expect_page(&all_fwd, 2),
            "conformance: read_all with max_count 2 and max_bytes {max_bytes}"
        );
    }
    // max_count 0 reads nothing, whatever max_bytes says.
    assert!(
        read_all(&store, ReadAll::forwards().max_count(0).max_bytes(0))
            .await
            .is_empty(),
        "conformance: read_all with max_count 0"
    );
}

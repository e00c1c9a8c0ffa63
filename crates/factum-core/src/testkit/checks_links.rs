//! The `$ce-<category>` and `$et-<type>` link streams.

use super::checks_read::{page_stream, rev_range};
use super::support::*;
use super::StoreFactory;
use crate::expected::ExpectedRevision;
use crate::model::{Link, RecordedEvent, StreamName, StreamRevision};
use crate::read::{Direction, ReadAll, ReadStream};
use crate::store::EventStore;

/// `$ce-<category>` and `$et-<type>`: the original events in commit order,
/// with dense link revisions; paging by `read_revision()`.
pub async fn category_and_event_type_streams<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let writes: [(&str, &[&str]); 8] = [
        ("order-1", &["OrderPlaced"]),
        ("cart-1", &["CartAdded"]),
        ("order-2", &["OrderPlaced", "OrderPaid"]),
        ("orders", &["OrderPlaced"]),
        ("order-1", &["OrderPaid"]),
        ("order-x-y", &["OrderPlaced"]),
        ("$sys-1", &["OrderPaid"]),
        ("cart-2", &["CartAdded", "OrderPaid"]),
    ];
    for (s, types) in writes {
        let events = types.iter().map(|t| ev(t, 0)).collect();
        ok(
            store.append(sn(s), ExpectedRevision::Any, events).await,
            format!("append to {s}"),
        );
    }
    let all = read_all(&store, ReadAll::forwards()).await;
    let user = |e: &&RecordedEvent| !e.stream.is_system();
    let cases: Vec<(&str, Vec<&RecordedEvent>)> = vec![
        (
            "$ce-order",
            all.iter()
                .filter(|e| e.stream.category() == Some("order"))
                .collect(),
        ),
        (
            "$ce-cart",
            all.iter()
                .filter(|e| e.stream.category() == Some("cart"))
                .collect(),
        ),
        (
            "$et-OrderPaid",
            all.iter()
                .filter(user)
                .filter(|e| e.event_type == "OrderPaid")
                .collect(),
        ),
        (
            "$et-OrderPlaced",
            all.iter()
                .filter(user)
                .filter(|e| e.event_type == "OrderPlaced")
                .collect(),
        ),
    ];
    for (name, originals) in cases {
        let link_stream = sn(name);
        let want: Vec<RecordedEvent> = originals
            .iter()
            .enumerate()
            .map(|(i, e)| RecordedEvent {
                link: Some(Link {
                    stream: link_stream.clone(),
                    revision: StreamRevision(i as u64),
                }),
                ..(*e).clone()
            })
            .collect();
        assert!(!want.is_empty());
        let n = want.len() as u64;
        assert_eq!(
            read_fwd(&store, name).await,
            want,
            "conformance: {name} forwards"
        );
        let mut back = read_bwd(&store, name).await;
        back.reverse();
        assert_eq!(back, want, "conformance: {name} backwards");
        let got = read(
            &store,
            ReadStream::forwards(link_stream.clone())
                .from_revision(StreamRevision(1))
                .max_count(2),
        )
        .await;
        assert_eq!(
            link_revs(&got),
            rev_range(1, 2.min(n - 1)),
            "conformance: {name} from link revision 1, max 2"
        );
        let got = read(
            &store,
            ReadStream::backwards(link_stream.clone()).from_revision(StreamRevision(1)),
        )
        .await;
        assert_eq!(
            link_revs(&got),
            vec![1, 0],
            "conformance: {name} backwards from link revision 1"
        );
        let got = read(
            &store,
            ReadStream::forwards(link_stream.clone()).from_revision(StreamRevision(n)),
        )
        .await;
        assert!(got.is_empty(), "conformance: {name} from past its end");
        for page in [1, 2, 3] {
            assert_eq!(
                page_stream(&store, name, Direction::Forwards, page).await,
                want,
                "conformance: {name} paged forwards by {page}"
            );
            let mut back = page_stream(&store, name, Direction::Backwards, page).await;
            back.reverse();
            assert_eq!(back, want, "conformance: {name} paged backwards by {page}");
        }
    }
    for name in ["$ce-nope", "$et-Nope", "$ce-orders"] {
        let s = StreamName::new(name).expect("valid name");
        assert_kind(
            store.read_stream(ReadStream::forwards(s)).await,
            "StreamNotFound",
            format!("read {name}"),
        );
    }
}

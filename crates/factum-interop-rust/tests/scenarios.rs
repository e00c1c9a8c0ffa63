//! The scenarios every official client runs (the Python and Node scripts of
//! `factum-cli/tests/interop/` run the same list), through KurrentDB's Rust
//! client: conflicts on every write, reads from a revision with a count,
//! `$all` filtered by regex, catch-up from a checkpoint and from 0,
//! KurrentDB's soft-delete rules, bad input. `kurrentdb_client.rs` has the
//! basics.
//!
//! Each row of KurrentDB's rules runs inside [`row`], which names it when
//! it fails: "position-0" (no event at commit position 0, which clients
//! treat as "before everything"; ADR 25) and "soft-delete" (ADR 26).

use std::future::Future;

use kurrentdb::{
    AppendToStreamOptions, Client, CurrentRevision, DeleteStreamOptions, Error, Position,
    ReadAllOptions, ReadStreamOptions, RecordedEvent, StreamMetadata, StreamMetadataResult,
    StreamPosition, StreamState, SubscribeToAllOptions, SubscribeToStreamOptions,
    SubscriptionFilter, TombstoneStreamOptions,
};

mod common;
use common::{ev, name, Server};

type Check = Result<(), String>;

/// `Err(what)` unless `holds`.
fn ensure(holds: bool, what: impl std::fmt::Display) -> Check {
    if holds {
        Ok(())
    } else {
        Err(what.to_string())
    }
}

/// A named check that must pass: a failure names the row.
async fn row(label: &str, check: impl Future<Output = Check>) {
    if let Err(why) = check.await {
        panic!("{label}: {why}");
    }
}

fn at(state: StreamState) -> AppendToStreamOptions {
    AppendToStreamOptions::default().stream_state(state)
}

fn delete_at(state: StreamState) -> DeleteStreamOptions {
    DeleteStreamOptions::default().stream_state(state)
}

/// What the checks look at of a recorded event (the client's type is not
/// `Clone`).
#[derive(Debug)]
struct Seen {
    stream: String,
    revision: u64,
    event_type: String,
    id: String,
    position: Position,
}

impl Seen {
    fn of(e: &RecordedEvent) -> Seen {
        Seen {
            stream: e.stream_id().to_owned(),
            revision: e.revision,
            event_type: e.event_type.clone(),
            id: e.id.to_string(),
            position: e.position,
        }
    }
}

async fn read(client: &Client, stream: &str, opts: &ReadStreamOptions) -> Result<Vec<Seen>, Error> {
    let mut s = client.read_stream(stream.to_owned(), opts).await?;
    let mut out = Vec::new();
    while let Some(e) = s.next().await? {
        out.push(Seen::of(e.get_original_event()));
    }
    Ok(out)
}

async fn read_all(client: &Client, opts: &ReadAllOptions) -> Vec<Seen> {
    let mut s = client.read_all(opts).await.unwrap();
    let mut out = Vec::new();
    while let Some(e) = s.next().await.unwrap() {
        out.push(Seen::of(e.get_original_event()));
    }
    out
}

fn revisions(events: &[Seen]) -> Vec<u64> {
    events.iter().map(|e| e.revision).collect()
}

fn types(events: &[Seen]) -> Vec<String> {
    events.iter().map(|e| e.event_type.clone()).collect()
}

/// A conflict, with the actual revision when given: typed for appends;
/// deletes and tombstones this client does not type, and shows
/// KurrentDB's FAILED_PRECONDITION with its message.
fn is_wrong_expected_version(
    r: &Result<impl std::fmt::Debug, Error>,
    current: Option<u64>,
) -> bool {
    match r {
        Err(Error::WrongExpectedVersion { current: c, .. }) => match current {
            Some(n) => c.to_string() == CurrentRevision::Current(n).to_string(),
            None => true,
        },
        Err(Error::Grpc { code, message }) => {
            format!("{code:?}") == "FailedPrecondition"
                && message.contains("WrongExpectedVersion")
                && current.is_none_or(|n| message.contains(&format!("Actual version: {n}")))
        }
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_on_every_write_name_the_actual_revision() {
    let server = Server::start();
    let client = server.client();
    let s = name("acct");
    let events = vec![ev("A"), ev("B"), ev("C"), ev("D"), ev("E")];
    client
        .append_to_stream(s.clone(), &at(StreamState::NoStream), events)
        .await
        .unwrap();
    let r = client
        .append_to_stream(s.clone(), &at(StreamState::StreamRevision(1)), ev("X"))
        .await;
    assert!(is_wrong_expected_version(&r, Some(4)), "{r:?}");
    let r = client
        .delete_stream(s.clone(), &delete_at(StreamState::StreamRevision(3)))
        .await;
    assert!(is_wrong_expected_version(&r, Some(4)), "{r:?}");
    let r = client
        .tombstone_stream(
            s.clone(),
            &TombstoneStreamOptions::default().stream_state(StreamState::NoStream),
        )
        .await;
    assert!(is_wrong_expected_version(&r, Some(4)), "{r:?}");
    let md = StreamMetadata::builder().max_count(2).build();
    let r = client
        .set_stream_metadata(s.clone(), &at(StreamState::StreamRevision(0)), &md)
        .await;
    assert!(is_wrong_expected_version(&r, None), "{r:?}");
    assert_eq!(
        read(&client, &s, &Default::default()).await.unwrap().len(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_a_revision_with_a_count_and_all_by_regex() {
    let server = Server::start();
    let client = server.client();
    let s = name("rd");
    let events: Vec<_> = (0..10).map(|i| ev(&format!("E{i}"))).collect();
    client
        .append_to_stream(s.clone(), &at(StreamState::NoStream), events)
        .await
        .unwrap();
    let from = ReadStreamOptions::default()
        .position(StreamPosition::Position(5))
        .max_count(2);
    assert_eq!(
        types(&read(&client, &s, &from).await.unwrap()),
        ["E5", "E6"]
    );
    let back = ReadStreamOptions::default()
        .backwards()
        .position(StreamPosition::Position(5))
        .max_count(3);
    assert_eq!(
        revisions(&read(&client, &s, &back).await.unwrap()),
        [5, 4, 3]
    );

    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (s1, s2) = (format!("flt{tag}-1"), format!("other{tag}-1"));
    let alpha = format!("Alpha{tag}");
    let beta = format!("Beta{tag}");
    client
        .append_to_stream(
            s1.clone(),
            &at(StreamState::Any),
            vec![ev(&alpha), ev(&beta)],
        )
        .await
        .unwrap();
    client
        .append_to_stream(s2.clone(), &at(StreamState::Any), ev(&alpha))
        .await
        .unwrap();
    let by_type = SubscriptionFilter::on_event_type().regex(format!("^(Al|Be)[a-z]+{tag}$"));
    let got = read_all(&client, &ReadAllOptions::default().filter(by_type)).await;
    let pairs: Vec<_> = got
        .iter()
        .map(|e| (e.stream.clone(), e.event_type.clone()))
        .collect();
    assert_eq!(
        pairs,
        [
            (s1.clone(), alpha.clone()),
            (s1.clone(), beta.clone()),
            (s2.clone(), alpha.clone())
        ]
    );
    let by_name = SubscriptionFilter::on_stream_name().regex(format!("^flt{tag}-"));
    assert_eq!(
        types(&read_all(&client, &ReadAllOptions::default().filter(by_name.clone())).await),
        [alpha.clone(), beta]
    );
    // The count applies to matching events.
    assert_eq!(
        read_all(
            &client,
            &ReadAllOptions::default().filter(by_name).max_count(1)
        )
        .await
        .len(),
        1
    );
    let last_two = read_all(
        &client,
        &ReadAllOptions::default()
            .backwards()
            .position(StreamPosition::End)
            .max_count(2),
    )
    .await;
    assert!(last_two[0].position > last_two[1].position, "{last_two:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_from_the_start_and_from_a_checkpoint() {
    let server = Server::start();
    let client = server.client();
    let s = name("ckpt");
    let events: Vec<_> = (0..5).map(|i| ev(&format!("E{i}"))).collect();
    client
        .append_to_stream(s.clone(), &at(StreamState::NoStream), events)
        .await
        .unwrap();
    let recorded = read(&client, &s, &Default::default()).await.unwrap();

    // From a checkpoint in $all (exclusive): the events after it, each once,
    // then a live one.
    let only_s = SubscriptionFilter::on_stream_name().add_prefix(&s);
    let from = StreamPosition::Position(recorded[2].position);
    let mut sub = client
        .subscribe_to_all(
            &SubscribeToAllOptions::default()
                .position(from)
                .filter(only_s),
        )
        .await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            sub.next()
                .await
                .unwrap()
                .get_original_event()
                .event_type
                .clone(),
        );
    }
    client
        .append_to_stream(s.clone(), &at(StreamState::StreamRevision(4)), ev("E5"))
        .await
        .unwrap();
    got.push(
        sub.next()
            .await
            .unwrap()
            .get_original_event()
            .event_type
            .clone(),
    );
    assert_eq!(got, ["E3", "E4", "E5"]);

    // From a checkpoint in the stream (exclusive).
    let opts = SubscribeToStreamOptions::default().start_from(StreamPosition::Position(2));
    let mut sub = client.subscribe_to_stream(s.clone(), &opts).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sub.next().await.unwrap().get_original_event().revision);
    }
    assert_eq!(got, [3, 4, 5]);

    // From the start of $all: the store's first event first.
    let first = read_all(&client, &ReadAllOptions::default().max_count(1))
        .await
        .remove(0);
    let mut sub = client
        .subscribe_to_all(&SubscribeToAllOptions::default())
        .await;
    assert_eq!(
        sub.next()
            .await
            .unwrap()
            .get_original_event()
            .id
            .to_string(),
        first.id
    );
    // From commit position 0, the checkpoint clients store before they have
    // seen anything: in KurrentDB no event is at 0, so the first comes too.
    row(
        "position-0: subscribe_to_all from position 0 delivers the first event",
        async {
            let zero = StreamPosition::Position(Position {
                commit: 0,
                prepare: 0,
            });
            let mut sub = client
                .subscribe_to_all(&SubscribeToAllOptions::default().position(zero))
                .await;
            let e = sub.next().await.map_err(|e| e.to_string())?;
            let got = Seen::of(e.get_original_event());
            ensure(
                got.id == first.id,
                format!(
                    "first event at {:?}, got {:?}",
                    first.position, got.position
                ),
            )
        },
    )
    .await;
}

/// A stream with revisions 0..1, soft-deleted with expected revision 1.
async fn deleted(client: &Client) -> String {
    let s = name("soft");
    client
        .append_to_stream(
            s.clone(),
            &at(StreamState::NoStream),
            vec![ev("A"), ev("B")],
        )
        .await
        .unwrap();
    client
        .delete_stream(s.clone(), &delete_at(StreamState::StreamRevision(1)))
        .await
        .unwrap();
    s
}

async fn truncate_before(client: &Client, s: &str) -> Result<Option<u64>, String> {
    let last = ReadStreamOptions::default()
        .backwards()
        .position(StreamPosition::End)
        .max_count(1);
    match client
        .get_stream_metadata(s.to_owned(), &last)
        .await
        .map_err(|e| e.to_string())?
    {
        StreamMetadataResult::Success(m) => Ok(m.metadata().truncate_before),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_delete_and_recreate_as_kurrentdb() {
    let server = Server::start();
    let client = server.client();
    // Each row of KurrentDB's rules on a stream of its own.
    let s = deleted(&client).await;
    assert!(matches!(
        read(&client, &s, &Default::default()).await,
        Err(Error::ResourceNotFound)
    ));
    client
        .append_to_stream(s.clone(), &at(StreamState::NoStream), ev("C"))
        .await
        .unwrap();
    assert_eq!(
        revisions(&read(&client, &s, &Default::default()).await.unwrap()),
        [2]
    );
    let s = deleted(&client).await;
    client
        .append_to_stream(s.clone(), &at(StreamState::Any), ev("C"))
        .await
        .unwrap();
    assert_eq!(
        revisions(&read(&client, &s, &Default::default()).await.unwrap()),
        [2]
    );

    row(
        "soft-delete: metadata right after the delete is $tb = i64::MAX",
        async {
            let tb = truncate_before(&client, &deleted(&client).await).await?;
            ensure(tb == Some(i64::MAX as u64), format!("$tb {tb:?}"))
        },
    )
    .await;
    row(
        "soft-delete: deleting again with the last revision succeeds",
        async {
            let s = deleted(&client).await;
            let r = client
                .delete_stream(s, &delete_at(StreamState::StreamRevision(1)))
                .await;
            ensure(r.is_ok(), format!("{r:?}"))
        },
    )
    .await;
    row(
        "soft-delete: deleting again with an older revision is WrongExpectedVersion",
        async {
            let s = deleted(&client).await;
            let r = client
                .delete_stream(s, &delete_at(StreamState::StreamRevision(0)))
                .await;
            ensure(is_wrong_expected_version(&r, Some(1)), format!("{r:?}"))
        },
    )
    .await;
    row(
        "soft-delete: deleting again with 'exists' is StreamDeleted",
        async {
            let s = deleted(&client).await;
            let r = client
                .delete_stream(s, &delete_at(StreamState::StreamExists))
                .await;
            ensure(matches!(r, Err(Error::ResourceDeleted)), format!("{r:?}"))
        },
    )
    .await;
    row(
        "soft-delete: appending with 'exists' is StreamDeleted",
        async {
            let s = deleted(&client).await;
            let r = client
                .append_to_stream(s, &at(StreamState::StreamExists), ev("C"))
                .await;
            ensure(matches!(r, Err(Error::ResourceDeleted)), format!("{r:?}"))
        },
    )
    .await;
    row(
        "soft-delete: appending with the last revision recreates the stream, $tb moves",
        async {
            let s = deleted(&client).await;
            let r = client
                .append_to_stream(s.clone(), &at(StreamState::StreamRevision(1)), ev("C"))
                .await;
            ensure(r.is_ok(), format!("{r:?}"))?;
            let revs = read(&client, &s, &Default::default())
                .await
                .map_err(|e| e.to_string())?;
            ensure(revisions(&revs) == [2], format!("{:?}", revisions(&revs)))?;
            let tb = truncate_before(&client, &s).await?;
            ensure(tb == Some(2), format!("$tb {tb:?}"))
        },
    )
    .await;
    row(
        "soft-delete: a user's $tb = i64::MAX is a soft delete, and an append recreates",
        async {
            let s = name("usertb");
            let two = vec![ev("A"), ev("B")];
            client
                .append_to_stream(s.clone(), &at(StreamState::NoStream), two)
                .await
                .map_err(|e| e.to_string())?;
            let md = StreamMetadata::builder()
                .truncate_before(i64::MAX as u64)
                .build();
            client
                .set_stream_metadata(s.clone(), &at(StreamState::Any), &md)
                .await
                .map_err(|e| e.to_string())?;
            let r = read(&client, &s, &Default::default()).await;
            ensure(
                matches!(r, Err(Error::ResourceNotFound)),
                format!("read after $tb: {r:?}"),
            )?;
            client
                .append_to_stream(s.clone(), &at(StreamState::StreamRevision(1)), ev("C"))
                .await
                .map_err(|e| e.to_string())?;
            let revs = read(&client, &s, &Default::default())
                .await
                .map_err(|e| e.to_string())?;
            ensure(revisions(&revs) == [2], format!("{:?}", revisions(&revs)))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_answers_clearly_and_the_server_keeps_serving() {
    let server = Server::start_with(&["--max-append-bytes", "1048576"]);
    let client = server.client();
    // Over the append limit, in two events or one: KurrentDB's error, which
    // this client shows as INVALID_ARGUMENT with the server's message.
    let big = |kib: usize| kurrentdb::EventData::binary("Big", vec![b'x'; kib * 1024].into());
    for events in [vec![big(700), big(700)], vec![big(1536)], vec![big(3072)]] {
        let s = name("big");
        let r = client
            .append_to_stream(s.clone(), &at(StreamState::Any), events)
            .await;
        let Err(Error::Grpc { code, message }) = &r else {
            panic!("{r:?}")
        };
        assert_eq!(format!("{code:?}"), "InvalidArgument", "{message}");
        assert!(message.contains("1048576"), "{message}");
        assert!(matches!(
            read(&client, &s, &Default::default()).await,
            Err(Error::ResourceNotFound)
        ));
    }
    // Invalid names: refused with a reason.
    for bad in ["bad\u{0}name", ""] {
        let r = client
            .append_to_stream(bad.to_owned(), &at(StreamState::Any), ev("X"))
            .await;
        let Err(Error::Grpc { code, message }) = &r else {
            panic!("{bad:?}: {r:?}")
        };
        assert_eq!(format!("{code:?}"), "InvalidArgument", "{bad:?}: {message}");
        assert!(
            message.contains("stream name") || message.contains("control character"),
            "{message}"
        );
    }
    let s = name("after");
    client
        .append_to_stream(s.clone(), &at(StreamState::NoStream), ev("Fine"))
        .await
        .unwrap();
    assert_eq!(
        read(&client, &s, &Default::default()).await.unwrap().len(),
        1
    );
}

//! KurrentDB's official Rust client against a real `factum serve`.

use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, DeleteStreamOptions, Error, Position,
    ReadAllOptions, ReadStreamOptions, StreamMetadata, StreamMetadataResult, StreamPosition,
    StreamState, SubscribeToAllOptions, SubscribeToStreamOptions, SubscriptionEvent,
    SubscriptionFilter, TombstoneStreamOptions,
};

mod common;
use common::{ev, name, Server};

async fn read_types(
    client: &Client,
    stream: &str,
    opts: &ReadStreamOptions,
) -> Result<Vec<String>, Error> {
    let mut s = client.read_stream(stream.to_owned(), opts).await?;
    let mut out = Vec::new();
    while let Some(e) = s.next().await? {
        out.push(e.get_original_event().event_type.clone());
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_rust_client() {
    let server = Server::start();
    let settings: ClientSettings = format!("esdb://{}?tls=false", server.addr).parse().unwrap();
    let client = Client::new(settings).unwrap();

    // Every expected-revision form, and conflicts with the current revision.
    let s = name("acct");
    let opts = |st| AppendToStreamOptions::default().stream_state(st);
    let r = client
        .append_to_stream(s.clone(), &opts(StreamState::NoStream), ev("Opened"))
        .await
        .unwrap();
    assert_eq!(r.next_expected_version, 0);
    match client
        .append_to_stream(s.clone(), &opts(StreamState::NoStream), ev("X"))
        .await
    {
        Err(Error::WrongExpectedVersion { current, .. }) => assert_eq!(
            current.to_string(),
            kurrentdb::CurrentRevision::Current(0).to_string()
        ),
        other => panic!("{other:?}"),
    }
    client
        .append_to_stream(
            s.clone(),
            &opts(StreamState::StreamRevision(0)),
            vec![ev("D"), ev("D")],
        )
        .await
        .unwrap();
    client
        .append_to_stream(s.clone(), &opts(StreamState::StreamExists), ev("W"))
        .await
        .unwrap();
    client
        .append_to_stream(s.clone(), &opts(StreamState::Any), ev("C"))
        .await
        .unwrap();
    assert!(matches!(
        client
            .append_to_stream(name("none"), &opts(StreamState::StreamExists), ev("X"))
            .await,
        Err(Error::WrongExpectedVersion { .. })
    ));

    // Reads both ways.
    let fwd = read_types(&client, &s, &ReadStreamOptions::default())
        .await
        .unwrap();
    assert_eq!(fwd, ["Opened", "D", "D", "W", "C"]);
    let back = ReadStreamOptions::default()
        .backwards()
        .position(StreamPosition::End)
        .max_count(2);
    assert_eq!(read_types(&client, &s, &back).await.unwrap(), ["C", "W"]);
    assert!(matches!(
        read_types(&client, &name("unknown"), &ReadStreamOptions::default()).await,
        Err(Error::ResourceNotFound)
    ));

    // $all with a server-side filter.
    let tag = name("Tag").replace('-', "");
    client
        .append_to_stream(
            name("f"),
            &opts(StreamState::Any),
            vec![ev(&tag), ev("Other")],
        )
        .await
        .unwrap();
    let filter = SubscriptionFilter::on_event_type().add_prefix(&tag);
    let mut all = client
        .read_all(&ReadAllOptions::default().filter(filter).max_count(10))
        .await
        .unwrap();
    let mut hits = Vec::new();
    while let Some(e) = all.next().await.unwrap() {
        hits.push(e.get_original_event().event_type.clone());
    }
    assert_eq!(hits, vec![tag]);

    // Catch-up then live.
    let live = name("live");
    client
        .append_to_stream(live.clone(), &opts(StreamState::Any), ev("Before"))
        .await
        .unwrap();
    let mut sub = client
        .subscribe_to_stream(
            live.clone(),
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Start),
        )
        .await;
    let mut seen = Vec::new();
    loop {
        match sub.next_subscription_event().await.unwrap() {
            SubscriptionEvent::EventAppeared(e) => {
                seen.push(e.get_original_event().event_type.clone());
                if seen.len() == 2 {
                    break;
                }
            }
            SubscriptionEvent::CaughtUp(_) => {
                client
                    .append_to_stream(
                        live.clone(),
                        &opts(StreamState::StreamRevision(0)),
                        ev("After"),
                    )
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    assert_eq!(seen, ["Before", "After"]);

    // Filtered $all subscription with checkpoints.
    let filter = SubscriptionFilter::on_event_type().add_prefix("NeverWritten");
    let mut sub = client
        .subscribe_to_all(&SubscribeToAllOptions::default().filter(filter))
        .await;
    let checkpoint = loop {
        if let SubscriptionEvent::Checkpoint(p) = sub.next_subscription_event().await.unwrap() {
            break p;
        }
    };
    assert!(checkpoint.commit > 0);

    // Metadata.
    let md = StreamMetadata::builder().max_count(2).build();
    client
        .set_stream_metadata(s.clone(), &AppendToStreamOptions::default(), &md)
        .await
        .unwrap();
    let back = client
        .get_stream_metadata(
            s.clone(),
            &ReadStreamOptions::default()
                .backwards()
                .position(StreamPosition::End)
                .max_count(1),
        )
        .await
        .unwrap();
    let kurrentdb::StreamMetadataResult::Success(m) = back else {
        panic!("{back:?}")
    };
    assert_eq!(m.metadata().max_count, Some(2));
    assert_eq!(
        read_types(&client, &s, &ReadStreamOptions::default())
            .await
            .unwrap(),
        ["W", "C"]
    );

    // $ce- with resolved links.
    let cat = format!("cat{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    client
        .append_to_stream(format!("{cat}-1"), &opts(StreamState::Any), ev("One"))
        .await
        .unwrap();
    let mut links = client
        .read_stream(
            format!("$ce-{cat}"),
            &ReadStreamOptions::default().resolve_link_tos(),
        )
        .await
        .unwrap();
    let e = links.next().await.unwrap().unwrap();
    // The resolved event, and the link it was read through ("original").
    assert_eq!(e.event.as_ref().unwrap().stream_id(), format!("{cat}-1"));
    assert_eq!(e.get_original_event().stream_id(), format!("$ce-{cat}"));
    assert_eq!(e.link.as_ref().unwrap().event_type, "$>");

    // Delete, recreate, tombstone.
    client
        .delete_stream(s.clone(), &DeleteStreamOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        read_types(&client, &s, &ReadStreamOptions::default()).await,
        Err(Error::ResourceNotFound)
    ));
    client
        .tombstone_stream(s.clone(), &TombstoneStreamOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        read_types(&client, &s, &ReadStreamOptions::default()).await,
        Err(Error::ResourceDeleted)
    ));
    assert!(matches!(
        client
            .append_to_stream(s.clone(), &opts(StreamState::Any), ev("X"))
            .await,
        Err(Error::ResourceDeleted)
    ));

    // Soft delete as KurrentDB (ADR 26): the stream keeps its last
    // revision, its metadata says `$tb` = i64::MAX, and an append with the
    // last revision recreates it after that revision.
    let sd = name("sdel");
    client
        .append_to_stream(
            sd.clone(),
            &opts(StreamState::NoStream),
            vec![ev("A"), ev("B")],
        )
        .await
        .unwrap();
    let delete = |st| DeleteStreamOptions::default().stream_state(st);
    client
        .delete_stream(sd.clone(), &delete(StreamState::StreamRevision(1)))
        .await
        .unwrap();
    let last_meta = ReadStreamOptions::default()
        .position(StreamPosition::End)
        .max_count(1);
    let meta = |m: StreamMetadataResult| match m {
        StreamMetadataResult::Success(v) => (v.version(), v.metadata().truncate_before),
        other => panic!("{other:?}"),
    };
    let got = client
        .get_stream_metadata(sd.clone(), &last_meta)
        .await
        .unwrap();
    assert_eq!(meta(got), (0, Some(i64::MAX as u64)));
    client
        .delete_stream(sd.clone(), &delete(StreamState::StreamRevision(1)))
        .await
        .unwrap();
    // This client reports a delete's conflict as the bare gRPC status
    // (FAILED_PRECONDITION), whose text names the actual revision.
    match client
        .delete_stream(sd.clone(), &delete(StreamState::StreamRevision(0)))
        .await
    {
        Err(Error::Grpc { message, .. }) => assert!(
            message.contains("WrongExpectedVersion") && message.contains("Actual version: 1"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client
            .append_to_stream(sd.clone(), &opts(StreamState::StreamExists), ev("X"))
            .await,
        Err(Error::ResourceDeleted)
    ));
    let r = client
        .append_to_stream(sd.clone(), &opts(StreamState::StreamRevision(1)), ev("C"))
        .await
        .unwrap();
    assert_eq!(r.next_expected_version, 2);
    let got = client
        .get_stream_metadata(sd.clone(), &last_meta)
        .await
        .unwrap();
    assert_eq!(meta(got), (2, Some(2)));
    assert_eq!(
        read_types(&client, &sd, &ReadStreamOptions::default())
            .await
            .unwrap(),
        ["C"]
    );
}

/// The ids of the events `read` yields.
async fn all_ids(client: &Client, opts: &ReadAllOptions) -> Vec<String> {
    let mut read = client.read_all(opts).await.unwrap();
    let mut out = Vec::new();
    while let Some(e) = read.next().await.unwrap() {
        out.push(e.get_original_event().id.to_string());
    }
    out
}

/// An event as these checks compare it: its id and its `$all` position.
type Seen = (String, Position);

fn seen(e: &kurrentdb::ResolvedEvent) -> Seen {
    let e = e.get_original_event();
    (e.id.to_string(), e.position)
}

/// The next `n` events of a subscription; a missing one fails in 10 s.
async fn take(sub: &mut kurrentdb::Subscription, n: usize) -> Vec<Seen> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} events delivered in 10 s", out.len()))
            .unwrap();
        out.push(seen(&e));
    }
    out
}

/// No event of a store is at commit position 0, which this client takes
/// for "before everything" (issue 13.1): on an empty store, subscribers
/// from 0 and from the current position (0) receive the first event; a
/// subscriber resuming from the position of the last event it handled
/// receives every later one exactly once; a `$all` consumer group started
/// at 0 delivers the first event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_rust_client_positions_start_at_one() {
    let server = Server::start();
    let client = server.client();
    let zero = Position {
        commit: 0,
        prepare: 0,
    };
    let last = ReadAllOptions::default()
        .backwards()
        .position(StreamPosition::End)
        .max_count(1);
    let mut head = client.read_all(&last).await.unwrap();
    let current = match head.next().await.unwrap() {
        Some(e) => e.get_original_event().position,
        None => zero,
    };
    assert_eq!(current, zero, "an empty store");
    let mut from_zero = client
        .subscribe_to_all(
            &SubscribeToAllOptions::default().position(StreamPosition::Position(zero)),
        )
        .await;
    let mut from_current = client
        .subscribe_to_all(
            &SubscribeToAllOptions::default().position(StreamPosition::Position(current)),
        )
        .await;
    let s = name("first");
    client
        .append_to_stream(
            s.clone(),
            &AppendToStreamOptions::default().stream_state(StreamState::NoStream),
            vec![ev("First0"), ev("First1"), ev("First2")],
        )
        .await
        .unwrap();
    let mut read = client.read_all(&ReadAllOptions::default()).await.unwrap();
    let mut written = Vec::new();
    while let Some(e) = read.next().await.unwrap() {
        written.push(seen(&e));
    }
    let commits: Vec<u64> = written.iter().map(|(_, p)| p.commit).collect();
    assert_eq!(commits, [1, 2, 3], "the first event is at 1");
    let want: Vec<String> = written.into_iter().map(|(id, _)| id).collect();
    for (what, sub) in [
        ("from 0", &mut from_zero),
        ("from the empty store's position", &mut from_current),
    ] {
        let got: Vec<String> = take(sub, 3).await.into_iter().map(|(id, _)| id).collect();
        assert_eq!(got, want, "{what}");
    }
    drop((from_zero, from_current));
    assert_eq!(
        all_ids(
            &client,
            &ReadAllOptions::default().position(StreamPosition::Position(zero))
        )
        .await,
        want,
        "read_all from 0"
    );

    // A checkpoint taken mid-stream: the position of the last event handled.
    let tag = name("Mid").replace('-', "");
    let mid = name("mid");
    client
        .append_to_stream(
            mid.clone(),
            &AppendToStreamOptions::default().stream_state(StreamState::NoStream),
            (0..10).map(|_| ev(&tag)).collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let filter = || SubscriptionFilter::on_event_type().add_prefix(&tag);
    let mut sub = client
        .subscribe_to_all(
            &SubscribeToAllOptions::default()
                .position(StreamPosition::Position(zero))
                .filter(filter()),
        )
        .await;
    let first = take(&mut sub, 5).await;
    drop(sub);
    let checkpoint = first[4].1;
    let mut sub = client
        .subscribe_to_all(
            &SubscribeToAllOptions::default()
                .position(StreamPosition::Position(checkpoint))
                .filter(filter()),
        )
        .await;
    let rest = take(&mut sub, 5).await;
    drop(sub);
    let mut read = client
        .read_stream(mid.clone(), &ReadStreamOptions::default())
        .await
        .unwrap();
    let mut mid_ids = Vec::new();
    while let Some(e) = read.next().await.unwrap() {
        mid_ids.push(e.get_original_event().id.to_string());
    }
    let got: Vec<String> = first.into_iter().chain(rest).map(|(id, _)| id).collect();
    assert_eq!(got, mid_ids, "resumed from {checkpoint}");

    // A $all consumer group started at 0 delivers the store's first event.
    client
        .create_persistent_subscription_to_all(
            "from0",
            &kurrentdb::PersistentSubscriptionToAllOptions::default()
                .start_from(StreamPosition::Position(zero)),
        )
        .await
        .unwrap();
    let mut group = client
        .subscribe_to_persistent_subscription_to_all("from0", &Default::default())
        .await
        .unwrap();
    let mut delivered = Vec::new();
    while delivered.len() < 13 {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), group.next())
            .await
            .expect("a delivery in 10 s")
            .unwrap();
        group.ack(&e).await.unwrap();
        delivered.push(e.get_original_event().id.to_string());
    }
    let mut all = want.clone();
    all.extend(mid_ids);
    assert_eq!(delivered, all, "$all group from 0");
}

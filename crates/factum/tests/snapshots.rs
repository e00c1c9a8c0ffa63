//! Snapshots: policies, the `$snapshot-` stream and its `$maxCount`, the
//! PostgreSQL table store, schema versions, and loads that use them.

#[macro_use]
mod common;
#[path = "../examples/bank/domain.rs"]
#[allow(dead_code)]
mod domain;

use domain::{Account, AccountCommand as Cmd, AccountError, AccountEvent};
use factum::snapshot::snapshot_stream_of;
use factum::{
    Aggregate, CommandContext, Repository, SnapshotBound, SnapshotOutcome, SnapshotPolicy,
    SnapshotStore, StreamSnapshotStore,
};
use factum_core::{EventStore, ReadStream, StreamName, StreamRevision, Timestamp};
use serde::{Deserialize, Serialize};

on_every_backend!(
    table_snapshots_serve_loads_and_temporal_loads,
    every_n_events_and_loads_from_the_newest,
    max_count_trims_old_snapshots,
    another_schema_version_is_ignored_then_replaced,
    state_size_and_custom_policies,
);

async fn deposits<S: EventStore + Clone, A>(repo: &Repository<S, A>, id: &str, n: u64)
where
    A: Aggregate<Command = Cmd, Error = AccountError>,
{
    let ctx = CommandContext::new();
    for _ in 0..n {
        repo.execute(id, &Cmd::Deposit { amount: 1 }, &ctx)
            .await
            .unwrap();
    }
}

async fn every_n_events_and_loads_from_the_newest<S: EventStore + Clone>(
    store: S,
    _dir: tempfile::TempDir,
) {
    let repo = Repository::<_, Account>::new(store.clone()).snapshots(SnapshotPolicy::every(10));
    let ctx = CommandContext::new();
    let first = repo
        .execute("s", &Cmd::Open { owner: "o".into() }, &ctx)
        .await
        .unwrap();
    assert_eq!(first.snapshot, SnapshotOutcome::NotDue);
    deposits(&repo, "s", 24).await; // revisions 1..=24
    let loaded = repo.load("s").await.unwrap();
    assert_eq!(loaded.state.balance, 24);
    assert_eq!(loaded.revision, Some(StreamRevision(24)));
    // Snapshots at revisions 9 and 19 (every 10 events); the load starts
    // from 19 and replays 5.
    assert_eq!(loaded.snapshot_revision, Some(StreamRevision(19)));
    assert_eq!(loaded.events_replayed, 5);

    let stream = StreamName::new("account-s").unwrap();
    let snap_stream = snapshot_stream_of(&stream).unwrap();
    assert_eq!(snap_stream.as_str(), "$snapshot-account-s");
    let meta = store.stream_metadata(snap_stream.clone()).await.unwrap();
    assert_eq!(meta.metadata.max_count, Some(8));
    // Snapshots never show in the aggregate's category.
    let category = store
        .read_stream(ReadStream::forwards(
            StreamName::new("$ce-account").unwrap(),
        ))
        .await
        .unwrap();
    assert!(category.iter().all(|e| e.stream == stream));

    // Loading without snapshots gives the same state.
    let plain = Repository::<_, Account>::new(store.clone())
        .with_snapshot_store(NoSnapshots)
        .load("s")
        .await
        .unwrap();
    assert_eq!(plain.state, loaded.state);
    assert_eq!(plain.events_replayed, 25);
}

async fn max_count_trims_old_snapshots<S: EventStore + Clone>(store: S, _dir: tempfile::TempDir) {
    let snaps = StreamSnapshotStore::new(store.clone()).keep(2);
    let repo = Repository::<_, Account>::new(store.clone())
        .with_snapshot_store(snaps.clone())
        .snapshots(SnapshotPolicy::every(1));
    let ctx = CommandContext::new();
    repo.execute("t", &Cmd::Open { owner: "o".into() }, &ctx)
        .await
        .unwrap();
    for _ in 0..5 {
        repo.execute("t", &Cmd::Deposit { amount: 1 }, &ctx)
            .await
            .unwrap();
    }
    let snap_stream = snapshot_stream_of(&StreamName::new("account-t").unwrap()).unwrap();
    let visible = store
        .read_stream(ReadStream::forwards(snap_stream))
        .await
        .unwrap();
    assert_eq!(visible.len(), 2, "$maxCount 2 keeps the newest two");
    let old = snaps
        .load(
            &StreamName::new("account-t").unwrap(),
            1,
            SnapshotBound::AtOrBeforeRevision(StreamRevision(2)),
        )
        .await
        .unwrap();
    assert!(old.snapshot.is_none(), "trimmed snapshots are gone");
}

/// The same account with a new state shape: its snapshots are version 2.
#[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
struct AccountV2 {
    open: bool,
    cents: u64,
}

impl Aggregate for AccountV2 {
    const CATEGORY: &'static str = "account";
    const SNAPSHOT_VERSION: u32 = 2;
    type Command = Cmd;
    type Event = AccountEvent;
    type Error = AccountError;
    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { amount, .. } => self.cents += amount * 100,
            AccountEvent::Withdrawn { amount } => self.cents -= amount * 100,
            AccountEvent::Closed => self.open = false,
        }
    }
    fn handle(&self, command: &Cmd) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            Cmd::Deposit { amount } => Ok(vec![AccountEvent::Deposited {
                amount: *amount,
                currency: "EUR".into(),
            }]),
            _ => Err(AccountError::NotOpen),
        }
    }
}

/// Same declared version as `Account` (1) but another shape: a forgotten
/// version bump.
#[derive(Serialize, Deserialize, Default, Debug)]
struct Mislabelled {
    cents_only: u64,
}

impl Aggregate for Mislabelled {
    const CATEGORY: &'static str = "account";
    type Command = Cmd;
    type Event = AccountEvent;
    type Error = AccountError;
    fn apply(&mut self, event: &AccountEvent) {
        if let AccountEvent::Deposited { amount, .. } = event {
            self.cents_only += amount * 100;
        }
    }
    fn handle(&self, _: &Cmd) -> Result<Vec<AccountEvent>, AccountError> {
        Ok(vec![])
    }
}

async fn another_schema_version_is_ignored_then_replaced<S: EventStore + Clone>(
    store: S,
    _dir: tempfile::TempDir,
) {
    let v1 = Repository::<_, Account>::new(store.clone()).snapshots(SnapshotPolicy::every(5));
    v1.execute(
        "v",
        &Cmd::Open { owner: "o".into() },
        &CommandContext::new(),
    )
    .await
    .unwrap();
    deposits(&v1, "v", 6).await; // a v1 snapshot at revision 4
    assert_eq!(
        v1.load("v").await.unwrap().snapshot_revision,
        Some(StreamRevision(4))
    );

    let v2 = Repository::<_, AccountV2>::new(store.clone()).snapshots(SnapshotPolicy::every(100));
    let loaded = v2.load("v").await.unwrap();
    assert_eq!(loaded.snapshot_revision, None, "v1 snapshot not misread");
    assert!(loaded.skipped_stale_snapshot);
    assert_eq!(
        loaded.state,
        AccountV2 {
            open: true,
            cents: 600
        }
    );
    // The next save replaces it, although the policy is not due yet.
    let done = v2
        .execute("v", &Cmd::Deposit { amount: 1 }, &CommandContext::new())
        .await
        .unwrap();
    assert_eq!(done.snapshot, SnapshotOutcome::Saved(StreamRevision(7)));
    let again = v2.load("v").await.unwrap();
    assert_eq!(again.snapshot_revision, Some(StreamRevision(7)));
    assert_eq!(again.events_replayed, 0);
    assert!(!again.skipped_stale_snapshot);
    // The v1 reader now finds its older v1 snapshot behind the v2 one.
    let v1_again = v1.load("v").await.unwrap();
    assert_eq!(v1_again.snapshot_revision, Some(StreamRevision(4)));
    assert_eq!(v1_again.state.balance, 7);

    // A snapshot that does not deserialize is ignored, never misread.
    let mis = Repository::<_, Mislabelled>::new(store.clone());
    let m = mis.load("v").await.unwrap();
    assert_eq!(m.snapshot_revision, None);
    assert!(m.skipped_stale_snapshot);
    assert_eq!(m.state.cents_only, 700);
}

async fn state_size_and_custom_policies<S: EventStore + Clone>(store: S, _dir: tempfile::TempDir) {
    let ctx = CommandContext::new();
    let small = Repository::<_, Account>::new(store.clone())
        .snapshots(SnapshotPolicy::StateBytesAtLeast(10_000));
    small
        .execute("z", &Cmd::Open { owner: "o".into() }, &ctx)
        .await
        .unwrap();
    let r = small
        .execute("z", &Cmd::Deposit { amount: 1 }, &ctx)
        .await
        .unwrap();
    assert_eq!(
        r.snapshot,
        SnapshotOutcome::NotDue,
        "a tiny state is not worth it"
    );
    let big = Repository::<_, Account>::new(store.clone())
        .snapshots(SnapshotPolicy::StateBytesAtLeast(10));
    let r = big
        .execute("z", &Cmd::Deposit { amount: 1 }, &ctx)
        .await
        .unwrap();
    assert_eq!(r.snapshot, SnapshotOutcome::Saved(StreamRevision(2)));
    let custom = Repository::<_, Account>::new(store.clone())
        .snapshots(SnapshotPolicy::custom(|c| c.events_since_snapshot >= 2));
    let r = custom
        .execute("z", &Cmd::Deposit { amount: 1 }, &ctx)
        .await
        .unwrap();
    assert_eq!(r.snapshot, SnapshotOutcome::NotDue);
    let r = custom
        .execute("z", &Cmd::Deposit { amount: 1 }, &ctx)
        .await
        .unwrap();
    assert_eq!(r.snapshot, SnapshotOutcome::Saved(StreamRevision(4)));
    let aged = Repository::<_, Account>::new(store.clone()).snapshots(SnapshotPolicy::OlderThan(
        std::time::Duration::from_secs(3600),
    ));
    let r = aged
        .execute("z", &Cmd::Deposit { amount: 1 }, &ctx)
        .await
        .unwrap();
    assert_eq!(r.snapshot, SnapshotOutcome::NotDue, "the last one is fresh");
}

/// A snapshot store that has none (the baseline).
struct NoSnapshots;

impl SnapshotStore for NoSnapshots {
    async fn load(
        &self,
        _: &StreamName,
        _: u32,
        _: SnapshotBound,
    ) -> factum_core::Result<factum::snapshot::SnapshotLookup> {
        Ok(Default::default())
    }
    async fn save(&self, _: &StreamName, _: factum::Snapshot) -> factum_core::Result<()> {
        Ok(())
    }
}

/// What every snapshot store does: the newest usable snapshot within a
/// bound (revision or exact commit time), other schema versions skipped and
/// reported, other streams apart, the newest `keep` (3) kept.
async fn snapshot_store_contract(snaps: impl SnapshotStore) {
    let s = StreamName::new("account-c").unwrap();
    let snap = |revision: u64, schema_version: u32, at: i64| factum::Snapshot {
        revision: StreamRevision(revision),
        schema_version,
        last_event_at: Timestamp(at),
        state: format!("{{\"r\":{revision}}}").into_bytes().into(),
        taken_at: None,
    };
    let load = |version: u32, bound: SnapshotBound| {
        let (snaps, s) = (&snaps, s.clone());
        async move {
            let l = snaps.load(&s, version, bound).await.unwrap();
            (l.snapshot.map(|x| x.revision.0), l.skipped_stale)
        }
    };
    assert_eq!(load(1, SnapshotBound::Latest).await, (None, false));
    snaps.save(&s, snap(4, 1, 100)).await.unwrap();
    snaps.save(&s, snap(9, 1, 200)).await.unwrap();
    snaps.save(&s, snap(14, 2, 300)).await.unwrap();

    let newest = snaps
        .load(&s, 1, SnapshotBound::Latest)
        .await
        .unwrap()
        .snapshot
        .unwrap();
    assert_eq!(newest.revision, StreamRevision(9));
    assert_eq!(newest.schema_version, 1);
    assert_eq!(newest.last_event_at, Timestamp(200));
    assert_eq!(&newest.state[..], b"{\"r\":9}");
    assert!(
        newest.taken_at.is_some(),
        "the store stamps when it stored it"
    );
    assert_eq!(
        load(1, SnapshotBound::Latest).await,
        (Some(9), true),
        "the newer v2 snapshot is skipped and reported"
    );
    assert_eq!(load(2, SnapshotBound::Latest).await, (Some(14), false));
    assert_eq!(load(3, SnapshotBound::Latest).await, (None, true));
    let rev = SnapshotBound::AtOrBeforeRevision;
    assert_eq!(load(1, rev(StreamRevision(8))).await, (Some(4), false));
    assert_eq!(load(1, rev(StreamRevision(9))).await, (Some(9), false));
    assert_eq!(load(1, rev(StreamRevision(3))).await, (None, false));
    assert_eq!(load(2, rev(StreamRevision(13))).await, (None, true));
    let time = SnapshotBound::AtOrBeforeTime;
    assert_eq!(load(1, time(Timestamp(199))).await, (Some(4), false));
    assert_eq!(load(1, time(Timestamp(200))).await, (Some(9), false));
    assert_eq!(load(1, time(Timestamp(99))).await, (None, false));
    assert_eq!(load(1, time(Timestamp(300))).await, (Some(9), true));

    let other = snaps
        .load(
            &StreamName::new("account-d").unwrap(),
            1,
            SnapshotBound::Latest,
        )
        .await
        .unwrap();
    assert_eq!(other, Default::default(), "streams are apart");

    // A fourth snapshot trims the oldest.
    snaps.save(&s, snap(19, 1, 400)).await.unwrap();
    assert_eq!(load(1, rev(StreamRevision(8))).await, (None, false));
    assert_eq!(load(1, SnapshotBound::Latest).await, (Some(19), false));
    assert_eq!(load(1, rev(StreamRevision(18))).await, (Some(9), true));
}

#[tokio::test]
async fn snapshot_store_contract_in_stream_on_engine() {
    let (store, _dir) = common::engine();
    snapshot_store_contract(StreamSnapshotStore::new(store).keep(3)).await;
}

#[tokio::test]
async fn snapshot_store_contract_in_stream_on_postgres() {
    let test = "snapshot_store_contract_in_stream_on_postgres";
    let Some((store, _dir)) = common::postgres(test).await else {
        return;
    };
    snapshot_store_contract(StreamSnapshotStore::new(store).keep(3)).await;
}

#[tokio::test]
async fn snapshot_store_contract_in_postgres_table() {
    let test = "snapshot_store_contract_in_postgres_table";
    let Some((snaps, _schema)) = common::postgres_snapshots(test).await else {
        return;
    };
    snapshot_store_contract(snaps.keep(3)).await;
}

/// The table store behind a repository (on any event store): loads start
/// from its snapshots, temporal loads from the newest one before the time,
/// and nothing is written to `$snapshot-` streams.
async fn table_snapshots_serve_loads_and_temporal_loads<S: EventStore + Clone>(
    store: S,
    _dir: tempfile::TempDir,
) {
    let test = "table_snapshots_serve_loads_and_temporal_loads";
    let Some((snaps, _schema)) = common::postgres_snapshots(test).await else {
        return;
    };
    let repo = Repository::<_, Account>::new(store.clone())
        .with_snapshot_store(snaps.clone())
        .snapshots(SnapshotPolicy::every(10));
    let ctx = CommandContext::new();
    repo.execute("p", &Cmd::Open { owner: "o".into() }, &ctx)
        .await
        .unwrap();
    let mut at_12 = None;
    for k in 1..=24 {
        let done = repo
            .execute("p", &Cmd::Deposit { amount: 1 }, &ctx)
            .await
            .unwrap();
        if k == 9 || k == 19 {
            assert_eq!(done.snapshot, SnapshotOutcome::Saved(StreamRevision(k)));
        }
        if k == 12 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            at_12 = Some(Timestamp::now());
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    let loaded = repo.load("p").await.unwrap();
    assert_eq!(loaded.state.balance, 24);
    assert_eq!(loaded.snapshot_revision, Some(StreamRevision(19)));
    assert_eq!(loaded.events_replayed, 5);
    let then = repo.load_as_of("p", at_12.unwrap()).await.unwrap();
    assert_eq!(then.state.balance, 12);
    assert_eq!(then.snapshot_revision, Some(StreamRevision(9)));
    assert_eq!(then.events_replayed, 3);
    let stream = StreamName::new("account-p").unwrap();
    let in_store = store
        .read_stream(ReadStream::forwards(snapshot_stream_of(&stream).unwrap()))
        .await;
    assert!(
        matches!(in_store, Err(factum_core::Error::StreamNotFound { .. })),
        "{in_store:?}"
    );
}

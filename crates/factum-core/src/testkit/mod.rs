//! # Conformance testkit
//!
//! The suite every [`EventStore`] backend must pass (the
//! embedded engine, PostgreSQL, the remote client). A backend provides a
//! [`StoreFactory`] that hands out fresh, empty stores, and gets one test per
//! rule with [`conformance_tests!`](crate::conformance_tests) plus a
//! model-based property test ([`model_proptest`]) that runs random operation
//! sequences against the backend and a reference model side by side.
//!
//! ```ignore
//! // crates/factum-engine/tests/conformance.rs (tokio is a dev-dependency)
//! struct EngineFactory;
//! impl factum_core::testkit::StoreFactory for EngineFactory {
//!     type Store = TempStore; // keeps its temp dir alive
//!     async fn create(&self) -> TempStore { TempStore::open_in_new_temp_dir().await }
//! }
//! factum_core::conformance_tests!(EngineFactory);
//! ```
//!
//! # The contract, precisely
//!
//! DESIGN.md's Semantics section, made exact where it was open. Where a
//! choice had to be made it follows KurrentDB unless noted.
//!
//! ## Positions and the log
//! - Every successful write takes the next dense global positions (from 1,
//!   in commit order; a scavenge later leaves gaps where it removed events; 0 is "before the first event", as KurrentDB's clients
//!   take it, ADR 25): an append of *n* events takes *n*;
//!   `set_stream_metadata` takes 1 (a `$metadata` event in `$$<stream>`); a
//!   soft delete takes 1 (also a `$metadata` event, see below); a tombstone
//!   takes 1 (a [`TOMBSTONE_EVENT_TYPE`] record); a write that recreates a
//!   soft-deleted stream takes 1 more, right after its own (the store's
//!   `$metadata` event, see "Soft delete"). Failed appends, idempotent
//!   retries and other empty appends take none.
//! - `read_all` returns every record of the log, system records included
//!   (`$metadata`, `$streamDeleted`; [`Filter::exclude_system_events`]
//!   hides them). It ignores stream metadata and deletions: events of
//!   truncated, soft-deleted and tombstoned streams stay in `$all` until a
//!   scavenge removes them (ADR 33). After a scavenge positions have gaps:
//!   the remaining events keep their positions, and every reader and
//!   subscription crosses the gaps (`scavenge_leaves_gaps`, for backends
//!   whose factory can scavenge).
//! - The tombstone record reads as: stream = the deleted stream, revision =
//!   [`TOMBSTONE_REVISION`] (`i64::MAX`, KurrentDB's `DeletedStream`), type
//!   [`TOMBSTONE_EVENT_TYPE`]. Its id, content type, data and metadata are
//!   the backend's choice.
//! - `head_position` is the position of the newest record, `None` when empty.
//! - `read_all` forwards from 0 or 1 starts at the first event; backwards
//!   from 0 reads nothing; a `$all` subscription `After(0)` delivers the
//!   first event.
//! - `created` is the commit time; it never decreases along positions.
//!
//! ## Expected revision and the current revision
//! - A stream's current revision is `NoStream` when it was never written,
//!   else `Current(last revision)`, also after a soft delete (as in
//!   KurrentDB; see "Soft delete" for how expectations meet a soft-deleted
//!   stream). Events hidden by `$maxCount`/`$tb`/`$maxAge` still count:
//!   such a stream exists and reads as an empty list.
//! - A failed expectation is `WrongExpectedVersion { stream, expected,
//!   actual }` and writes nothing.
//! - Checks happen in this order: bad input (`InvalidInput`,
//!   `LimitExceeded`), tombstoned (`StreamDeleted`), expectation.
//!
//! ## Idempotency (`append` with a non-empty batch of *k* events)
//! - `Exact(n)` not satisfied: if revisions `n+1 ..= n+k` exist in the
//!   stream's current life (at or after the revision where it was last
//!   recreated) and hold exactly the batch's ids in order, the append
//!   succeeds without writing and returns the original result
//!   (`revision: n+k`, position of that event). Otherwise
//!   `WrongExpectedVersion`. A partial match is `WrongExpectedVersion`.
//! - `NoStream` not satisfied: the same, at the first revision of the
//!   stream's current life (0, or the revision after the last one before the
//!   soft delete).
//! - `Any`, and `StreamExists` when satisfied: if the stream's last *k* live
//!   events hold exactly the batch's ids in order, the append is a no-op
//!   returning `revision: last`, `position` of the last event. Otherwise
//!   the events are written (a satisfied `Exact`/`NoStream` always writes).
//! - An empty append checks the expectation only (no idempotency). Its
//!   result is the stream's last revision and that event's position; when
//!   the stream is at `NoStream` the result values are unspecified (the
//!   core `AppendResult` cannot say "no stream") and only `Ok` is checked.
//!
//! ## System streams
//! - `$all`, `$ce-<category>` and `$et-<type>` are read-only: `append`,
//!   `delete_stream` and `tombstone_stream` answer `InvalidInput`.
//! - `$ce-<category>` holds, in commit order, every event appended to a user
//!   (non-`$`) stream whose [`StreamName::category`](crate::StreamName::category)
//!   is `<category>`; `$et-<type>` every event of that type appended to a
//!   user stream. Metadata and tombstone records are not in them. Reads
//!   return the original event (stream, revision, position, …) with
//!   `link: Some(Link { stream: "$ce-…", revision })`, link revisions dense
//!   from 0 (until a scavenge removes links of hidden events); `from_revision` and paging use the link revision
//!   ([`RecordedEvent::read_revision`](crate::RecordedEvent::read_revision)).
//!   Like `$all`, they ignore the member streams' metadata and deletions.
//!   One with no events answers `StreamNotFound`.
//!
//! ## Reads
//! - `read_stream` of a stream at `NoStream` answers `StreamNotFound`; of a
//!   tombstoned one `StreamDeleted`; of an existing stream whose events are
//!   all hidden (or all after `until`, or past `from`) an empty list.
//! - Forwards from `Revision(r)` starts at `r` inclusive; from `End` reads
//!   nothing. Backwards from `Start`/`End` starts at the last event; from
//!   `Revision(r)` at `min(r, last)`. The same for `read_all` with
//!   positions. `max_count` counts returned (matching, visible) events; 0
//!   returns nothing.
//! - `until: Some(t)` keeps only events with `created <= t`.
//!
//! ## Stream metadata
//! - `set_stream_metadata` appends a `$metadata` event (JSON of
//!   [`StreamMetadata`](crate::StreamMetadata)) to `$$<stream>`; `expected`
//!   applies to `$$<stream>` and the result carries its revision. It is
//!   allowed on a stream never written (it does not create the stream) and
//!   on a soft-deleted one (it recreates it, see "Soft delete").
//! - `read_stream("$$<stream>")` returns those `$metadata` events.
//! - Visible revisions of a stream: from `max(first revision of the current
//!   life, $tb, last + 1 - $maxCount)`, minus events created more than
//!   `$maxAge` seconds ago. Metadata is a read-time filter: lowering
//!   `$maxCount`/`$tb` makes events visible again, until a scavenge
//!   removed them (ADR 33).
//!   `$all` and link streams ignore it.
//! - `stream_metadata` of a tombstoned stream answers `StreamDeleted`.
//! - A failed expectation names `$$<stream>` (or `<stream>`; both are
//!   accepted) in `WrongExpectedVersion::stream`.
//!
//! ## Soft delete (`delete_stream`), as KurrentDB (ADR 26)
//! - A stream is soft-deleted while its metadata has `$tb` = `i64::MAX`
//!   (KurrentDB's `DeletedStream`), whether `delete_stream` or the user
//!   wrote it. Reads answer `StreamNotFound`. Expectations: `Any`,
//!   `NoStream` (a soft-deleted stream counts as absent) and `Exact(last)`
//!   are met; `StreamExists` answers `StreamDeleted`; another `Exact`
//!   answers `WrongExpectedVersion` with `actual: Current(last)`. This
//!   holds for `append`, `delete_stream` and `tombstone_stream`.
//! - `delete_stream`: tombstoned → `StreamDeleted`; expectation as above;
//!   a stream never written and without metadata → `StreamNotFound` (so
//!   `Any` on an unknown stream is `StreamNotFound`). It replaces the
//!   metadata with `{"$tb": 9223372036854775807}` alone (one `$metadata`
//!   event; `DeleteResult::position` is its position). Deleting again
//!   succeeds the same way.
//! - The first write after it that passes its checks recreates the stream:
//!   an append (empty or not; events continue at `last + 1`), a metadata
//!   write, an append to `$$<stream>`. Right after that write's events the
//!   store writes a `$metadata` event of its own: the metadata as that write
//!   leaves it with `$tb` = `last + 1` (0 for a stream never written), one
//!   more `$$` revision and position. The answer is that of the write's own
//!   events (for an empty append: `last`, and the undelete's position).
//!   Events before the delete stay hidden whatever later metadata says.
//!
//! ## Tombstone (`tombstone_stream`)
//! - Tombstoned → `StreamDeleted` (tombstoning again included); expectation
//!   → `WrongExpectedVersion`; otherwise it succeeds, also for a stream never
//!   written or soft-deleted (at `NoStream`); `DeleteResult::position` is
//!   the tombstone record's position. Afterwards every `append`
//!   (empty included), `read_stream`, `delete_stream`, `tombstone_stream`,
//!   `set_stream_metadata` and `stream_metadata` answers `StreamDeleted`.
//!
//! ## Limits
//! - An event whose [`EventData::size`](crate::EventData::size) exceeds
//!   16 MiB ([`MAX_EVENT_SIZE`]) answers `LimitExceeded` and the whole
//!   batch is refused; events of 1 MiB are accepted. An empty event type is
//!   `InvalidInput`; one over [`MAX_EVENT_TYPE_BYTES`](crate::model::MAX_EVENT_TYPE_BYTES)
//!   bytes is `LimitExceeded`. An event type holding a control character
//!   (`char::is_control`: NUL, line breaks, DEL, C1 controls) is
//!   `InvalidInput`, like a stream name. A refused append fails only
//!   itself: appends sent at the same time are unaffected.
//!
//! ## Subscriptions
//! - Every event after the start point arrives exactly once, in order
//!   (positions for `$all`, revisions for a stream, link revisions for
//!   `$ce-`/`$et-`), across the catch-up → live hand-over and after falling
//!   behind. `After(n)` is exclusive; `End` delivers only events committed
//!   after `subscribe` returned. Subscribing to a stream that does not exist
//!   yet is allowed.
//! - `CaughtUp` is sent once the subscription reaches the head, and every
//!   event committed before `subscribe` returned is delivered before the
//!   first `CaughtUp` (for `End`: it comes without waiting for new events).
//!   `FellBehind`/`Checkpoint` may be interleaved anywhere.
//! - A subscriber that does not read must not block appends.
//!
//! ## Multi-stream appends (`append_multi`, ADR 29)
//! - All events of the request are written in one contiguous range of
//!   positions, in the request's order, or none is; each written stream
//!   follows the rules of `append` (revisions, soft deletes with their
//!   undelete events, which follow all of the request's events, in stream
//!   order; tombstones). A stream only checked follows KurrentDB's
//!   consistency checks: a tombstoned stream satisfies `NoStream` and
//!   `Tombstoned`, a soft-deleted one `NoStream`, `Deleted` and its last
//!   revision.
//! - Any condition that does not hold answers `ConsistencyViolation`
//!   listing every one (index, stream, condition, actual state) and
//!   nothing is written. A retry whose every written stream already holds
//!   its events answers the earlier result; a partial one is a violation.
//! - No events, a stream named twice, a stream with its `$$` stream, a
//!   read-only written stream: `InvalidInput`.
//!
//! ## Numbers at the edges
//! Every number a caller supplies may be anything from 0 to `u64::MAX`
//! (`i64::MIN` to `i64::MAX` for `until`); none makes a store panic, wrap
//! or stop taking appends ([`model_proptest`] draws them from the edges).
//! - `Exact(n)` with `n` above [`MAX_EXPECTED_REVISION`](crate::MAX_EXPECTED_REVISION)
//!   (`i64::MAX`, KurrentDB's signed expected version) is `InvalidInput`
//!   ("out of range") in every write, checked with the other bad input
//!   (before `StreamDeleted`). `Exact(i64::MAX)` is an ordinary expectation.
//! - Read starts past the end read nothing forwards and from the last event
//!   backwards; a `max_count` of `u64::MAX` means all; `$maxCount`, `$tb` and
//!   `$maxAge` of any size hide what they say and no more.
//! - A subscription `After(u64::MAX)` is `InvalidInput` ("out of range"):
//!   nothing can come after it. Any smaller start is served.
//! - Event revisions stay below [`TOMBSTONE_REVISION`]: an append that would
//!   reach it is `LimitExceeded` (no stream gets there in practice).
//!
//! ## Not specified (not checked yet)
//! - The values of an empty append at `NoStream` (only `Ok`).
//! - Subscriptions to streams with `$maxCount`/`$tb`/`$maxAge` or that were
//!   deleted; subscribing to a tombstoned stream.
//! - Appends straight to `$$<stream>` (they recreate a soft-deleted stream
//!   as a metadata write does: checked in the rules' unit tests only);
//!   metadata of `$all`/`$ce-`/`$et-`.
//! - The id, content type, data and metadata of tombstone records, and the
//!   id / user metadata of `$metadata` records.
//!
//! The reference model of all this is `testkit/model.rs`; the crate's own
//! tests run the whole suite against it (`testkit/memory_store_test.rs`).
//!
//! [`Filter::exclude_system_events`]: crate::Filter::exclude_system_events

use std::future::Future;
use std::time::Duration;

use crate::model::StreamRevision;
use crate::store::EventStore;

mod checks_append;
mod checks_concurrency;
mod checks_delete;
mod checks_limits;
mod checks_links;
mod checks_meta;
mod checks_multi;
mod checks_read;
mod checks_scavenge;
mod checks_soft_delete;
mod checks_subscribe;
pub(crate) mod model;
mod proptest;
pub mod shaped;
mod support;
pub mod visible;

#[cfg(test)]
mod memory_store_test;

pub use self::checks_append::{
    append_and_read_back, empty_append, expected_revision_forms, idempotent_appends,
};
pub use self::checks_concurrency::{
    concurrent_any_appends, concurrent_appends_to_many_streams, concurrent_exact_appends,
};
pub use self::checks_delete::{soft_delete, tombstone};
pub use self::checks_limits::{
    control_characters_in_event_types, head_position, limits_and_bad_input,
    system_streams_are_read_only,
};
pub use self::checks_links::category_and_event_type_streams;
pub use self::checks_meta::{
    max_age, max_count, metadata_and_deletes_in_all, metadata_round_trip, truncate_before,
};
pub use self::checks_multi::{
    multi_append_atomic, multi_append_conflict_writes_nothing, multi_append_deleted_streams,
    multi_append_retry_and_bad_input,
};
pub use self::checks_read::{
    read_all_directions_and_bounds, read_all_filters, read_pages_by_bytes,
    read_stream_directions_and_bounds, temporal_reads,
};
pub use self::checks_scavenge::scavenge_leaves_gaps;
pub use self::checks_soft_delete::{
    soft_delete_as_kurrentdb, soft_delete_by_metadata, undelete_by_metadata_or_empty_append,
};
pub use self::checks_subscribe::{
    subscribe_catch_up_then_live, subscribe_slow_consumer, subscribe_to_all,
    subscribe_to_all_filtered, subscribe_to_link_streams, subscribe_to_stream,
};
pub use self::proptest::{model_proptest, proptest_cases};

pub use crate::rules::TOMBSTONE_EVENT_TYPE;
/// The revision a tombstone record reads with in `$all` (KurrentDB's
/// `EventNumber.DeletedStream`, `i64::MAX`).
pub const TOMBSTONE_REVISION: StreamRevision = StreamRevision(crate::rules::TOMBSTONE_REVISION);
/// Largest event ([`EventData::size`](crate::EventData::size)) a backend must
/// accept at most: one byte more answers `LimitExceeded`.
pub const MAX_EVENT_SIZE: usize = 16 * 1024 * 1024;
/// How long a single conformance check may run before it counts as hung.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// Makes fresh, empty stores for the conformance suite.
///
/// Each call must return an independent store with no events (the engine
/// uses a new temporary directory; PostgreSQL a new schema). The store must
/// keep whatever it needs alive (e.g. the temporary directory) until dropped.
pub trait StoreFactory: Send + Sync {
    /// The backend under test.
    type Store: EventStore;
    /// A fresh, empty store.
    fn create(&self) -> impl Future<Output = Self::Store> + Send;

    /// Runs a scavenge on `store` (ADR 33) that removes every hidden event
    /// written so far, if the backend has one; `false` (the default) when
    /// it has none, and checks of what a scavenge leaves are skipped.
    fn scavenge(&self, store: &Self::Store) -> impl Future<Output = bool> + Send {
        let _ = store;
        async { false }
    }
}

/// Calls `$cb! { [$args] check_a, check_b, ... }` with every check name:
/// the single list behind [`CHECKS`], [`run_all`] and
/// [`conformance_tests!`](crate::conformance_tests).
#[doc(hidden)]
#[macro_export]
macro_rules! __factum_testkit_checks {
    (cb = [$($cb:tt)*], args = [$($args:tt)*]) => {
        $($cb)*! { [$($args)*]
            append_and_read_back,
            expected_revision_forms,
            idempotent_appends,
            empty_append,
            system_streams_are_read_only,
            limits_and_bad_input,
            control_characters_in_event_types,
            head_position,
            read_stream_directions_and_bounds,
            read_all_directions_and_bounds,
            read_all_filters,
            read_pages_by_bytes,
            temporal_reads,
            category_and_event_type_streams,
            metadata_round_trip,
            metadata_and_deletes_in_all,
            max_count,
            truncate_before,
            max_age,
            soft_delete,
            soft_delete_as_kurrentdb,
            soft_delete_by_metadata,
            undelete_by_metadata_or_empty_append,
            tombstone,
            subscribe_to_stream,
            subscribe_to_all,
            subscribe_to_all_filtered,
            subscribe_to_link_streams,
            subscribe_catch_up_then_live,
            subscribe_slow_consumer,
            concurrent_exact_appends,
            concurrent_any_appends,
            concurrent_appends_to_many_streams,
            multi_append_atomic,
            multi_append_conflict_writes_nothing,
            multi_append_deleted_streams,
            multi_append_retry_and_bad_input,
            scavenge_leaves_gaps,
        }
    };
}

macro_rules! define_run_all {
    ([] $($name:ident),* $(,)?) => {
        /// The names of every conformance check, in the order [`run_all`] runs them.
        pub const CHECKS: &[&str] = &[$(stringify!($name)),*];

        /// Runs every conformance check in turn (each on fresh stores, each
        /// under [`CHECK_TIMEOUT`]); panics at the first violation.
        pub async fn run_all<F: StoreFactory>(f: &F) {
            $( with_timeout(stringify!($name), $name(f)).await; )*
        }
    };
}
crate::__factum_testkit_checks!(cb = [define_run_all], args = []);

/// Runs one check under [`CHECK_TIMEOUT`], panicking if it takes longer.
#[doc(hidden)]
pub async fn with_timeout(name: &str, check: impl Future<Output = ()>) {
    if tokio::time::timeout(CHECK_TIMEOUT, check).await.is_err() {
        panic!("conformance check `{name}` did not finish within {CHECK_TIMEOUT:?} (hung?)");
    }
}

/// Expands to one `#[tokio::test]` per conformance check, plus a `#[test]`
/// running [`model_proptest`] with [`proptest_cases`] cases, so failures are
/// reported individually. `$factory` is an expression building the
/// [`StoreFactory`] (evaluated once per test; it must be `'static` for the
/// property test). The calling crate needs `tokio` (features `macros`,
/// `rt-multi-thread`, `time`) as a dev-dependency.
///
/// ```ignore
/// factum_core::conformance_tests!(EngineFactory::default());
/// ```
///
/// Put it in its own module to namespace the generated test names.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::__factum_testkit_checks!(
            cb = [$crate::__factum_conformance_tests_impl],
            args = [$factory]
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __factum_conformance_tests_impl {
    ([$factory:expr] $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::testkit::with_timeout(
                    stringify!($name),
                    $crate::testkit::$name(&$factory),
                )
                .await;
            }
        )*

        #[test]
        fn model_proptest() {
            $crate::testkit::model_proptest($factory, $crate::testkit::proptest_cases());
        }

    };
}

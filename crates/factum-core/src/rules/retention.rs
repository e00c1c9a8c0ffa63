//! What a scavenge keeps (ADR 33): one rule for every backend. An event
//! goes when no read of its stream can return it any more — beyond
//! `$maxCount`, older than `$maxAge`, before `$tb`, before the stream's
//! current life (a soft delete), in a soft-deleted or tombstoned stream —
//! and a `$metadata` event goes once a later one supersedes it. The
//! tombstone stays. The last event of a stream that is not tombstoned
//! leaves a stub (a backend's record of the stream's last revision, never
//! served) when it goes, so that the stream keeps its state: expected-
//! revision checks and soft-delete rules (ADR 26) see the same stream
//! after a scavenge as before, also in an index rebuilt from the log.

use crate::metadata::StreamMetadata;
use crate::model::{StreamName, StreamRevision, Timestamp};

use super::StreamState;

/// What a scavenge does with one stored event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// A read can still see it (or it is a tombstone): it stays.
    Keep,
    /// No read can see it: it goes, with its index entries.
    Remove,
    /// No read can see it, but it is its stream's last event (or the stub
    /// standing for it): a stub stays in its place.
    Stub,
}

/// One stored event, as the rule needs it.
#[derive(Clone, Copy, Debug)]
pub struct StoredFacts<'a> {
    /// Its stream.
    pub stream: &'a StreamName,
    /// Its revision.
    pub revision: u64,
    /// Its commit time.
    pub created: Timestamp,
    /// A tombstone.
    pub tombstone: bool,
    /// A stub a scavenge left.
    pub stub: bool,
}

/// Which events of one stream a read can still see: the rule as bounds,
/// for a backend that removes rows by query (PostgreSQL) rather than by
/// looking at each event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visible {
    /// Every event (unreadable metadata: reads fail on it, so nothing is
    /// known to be hidden).
    All,
    /// None (soft-deleted, tombstoned, or no event yet).
    None,
    /// Revisions from `from` on, created at or after `created_from` when set.
    From {
        /// The first visible revision.
        from: u64,
        /// Events created before this are hidden (`$maxAge`).
        created_from: Option<Timestamp>,
    },
    /// Only the last revision (a `$$` stream: its newest `$metadata` event).
    Last(u64),
}

/// What a read of a stream in state `state` (named `stream`; for a `$$`
/// stream its own state) can still see at time `now`.
pub fn visible(stream: &StreamName, state: &StreamState, now: Timestamp) -> Visible {
    let Some(last) = state.last_revision else {
        return Visible::None;
    };
    if stream.metadata_of().is_some() {
        return Visible::Last(last);
    }
    if state.deleted || state.tombstoned {
        return Visible::None;
    }
    let meta = match state.metadata.as_deref().map(StreamMetadata::from_json) {
        None => StreamMetadata::default(),
        Some(Ok(m)) => m,
        Some(Err(_)) => return Visible::All,
    };
    Visible::From {
        from: meta
            .first_visible_revision(StreamRevision(last))
            .max(state.base),
        created_from: meta.oldest_visible(now),
    }
}

/// What a scavenge does with `event` of a stream in state `state` (for a
/// `$$` stream, the `$$` stream's own state) at time `now`.
pub fn retention(event: StoredFacts<'_>, state: &StreamState, now: Timestamp) -> Retention {
    if event.tombstone {
        return Retention::Keep;
    }
    let last = state.last_revision == Some(event.revision);
    let seen = match visible(event.stream, state, now) {
        Visible::All => return Retention::Keep,
        Visible::None => false,
        // Metadata: the newest `$metadata` event is the stream's metadata.
        Visible::Last(_) => {
            return if last {
                Retention::Keep
            } else {
                Retention::Remove
            }
        }
        Visible::From { from, created_from } => {
            event.revision >= from && created_from.is_none_or(|oldest| event.created >= oldest)
        }
    };
    let visible = !event.stub && seen;
    if visible {
        Retention::Keep
    } else if last && !state.tombstoned {
        Retention::Stub
    } else {
        Retention::Remove
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(stream: &StreamName, revision: u64, created: i64) -> StoredFacts<'_> {
        StoredFacts {
            stream,
            revision,
            created: Timestamp(created),
            tombstone: false,
            stub: false,
        }
    }

    fn state(last: u64, meta: &str) -> StreamState {
        StreamState {
            last_revision: Some(last),
            metadata: (!meta.is_empty()).then(|| meta.as_bytes().to_vec()),
            ..StreamState::default()
        }
    }

    #[test]
    fn each_rule_hides_what_reads_hide() {
        let s = StreamName::new("order-1").unwrap();
        let now = Timestamp(10_000_000);
        // $maxCount 2 of revisions 0..=4: 3 and 4 stay.
        let st = state(4, r#"{"$maxCount":2}"#);
        let r: Vec<_> = (0..5)
            .map(|i| retention(facts(&s, i, 0), &st, now))
            .collect();
        use Retention::*;
        assert_eq!(r, [Remove, Remove, Remove, Keep, Keep]);
        // $tb 3.
        let st = state(4, r#"{"$tb":3}"#);
        assert_eq!(retention(facts(&s, 2, 0), &st, now), Remove);
        assert_eq!(retention(facts(&s, 3, 0), &st, now), Keep);
        // $maxAge 1 s: created 8.5 s in is hidden at 10 s, 9.5 s is not;
        // the last event, hidden, leaves a stub.
        let st = state(4, r#"{"$maxAge":1}"#);
        assert_eq!(retention(facts(&s, 3, 9_500_000), &st, now), Keep);
        assert_eq!(retention(facts(&s, 3, 8_500_000), &st, now), Remove);
        assert_eq!(retention(facts(&s, 4, 8_500_000), &st, now), Stub);
        // Soft-deleted: all go, the last leaves a stub; tombstoned: all go
        // but the tombstone.
        let mut st = state(4, r#"{"$tb":9223372036854775807}"#);
        st.deleted = true;
        assert_eq!(retention(facts(&s, 0, 0), &st, now), Remove);
        assert_eq!(retention(facts(&s, 4, 0), &st, now), Stub);
        st.deleted = false;
        st.tombstoned = true;
        assert_eq!(retention(facts(&s, 4, 0), &st, now), Remove);
        let tombstone = StoredFacts {
            tombstone: true,
            ..facts(&s, u64::MAX >> 1, 0)
        };
        assert_eq!(retention(tombstone, &st, now), Keep);
        // A previous life (before `base`) goes whatever the metadata says.
        let mut st = state(9, r#"{"$tb":5}"#);
        st.base = 7;
        assert_eq!(retention(facts(&s, 6, 0), &st, now), Remove);
        assert_eq!(retention(facts(&s, 7, 0), &st, now), Keep);
        // Metadata: all but the last go.
        let m = StreamName::new("$$order-1").unwrap();
        let st = state(3, "");
        assert_eq!(retention(facts(&m, 2, 0), &st, now), Remove);
        assert_eq!(retention(facts(&m, 3, 0), &st, now), Keep);
        // A stub stays while it stands for the last event, then goes.
        let stub = StoredFacts {
            stub: true,
            ..facts(&s, 4, 0)
        };
        assert_eq!(retention(stub, &state(4, ""), now), Stub);
        assert_eq!(retention(stub, &state(6, ""), now), Remove);
        // Unreadable metadata: nothing is known to be hidden.
        assert_eq!(retention(facts(&s, 0, 0), &state(4, "["), now), Keep);
    }
}

//! Temporal queries: an aggregate as it was at a time or a revision, and
//! the events of a stream within a time range.

use factum_core::{
    Error, EventStore, ReadStream, RecordedEvent, StreamName, StreamRevision, Timestamp,
};

use crate::aggregate::Aggregate;
use crate::repository::{Loaded, Recorded, Repository, RepositoryError};
use crate::snapshot::{SnapshotBound, SnapshotStore};

impl<S: EventStore, A: Aggregate, P: SnapshotStore> Repository<S, A, P> {
    /// The state of aggregate `id` as of time `t`: every event committed at
    /// or before `t`, starting from the newest snapshot whose last event is
    /// at or before `t`. `revision` is `None` when it did not exist yet.
    pub async fn load_as_of(
        &self,
        id: &str,
        t: Timestamp,
    ) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        let stream = A::stream_name(id)?;
        self.load_stream(&stream, SnapshotBound::AtOrBeforeTime(t), None, Some(t))
            .await
    }

    /// The state of aggregate `id` after the event at `revision` (or the
    /// latest state, when the stream is shorter), starting from the newest
    /// snapshot at or before that revision.
    pub async fn load_at_revision(
        &self,
        id: &str,
        revision: StreamRevision,
    ) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        let stream = A::stream_name(id)?;
        self.load_stream(
            &stream,
            SnapshotBound::AtOrBeforeRevision(revision),
            Some(revision),
            None,
        )
        .await
    }

    /// The events of aggregate `id` committed within `[from, to]`,
    /// decoded and upcast (the auditor's question: every event on account X
    /// in January).
    pub async fn events_between(
        &self,
        id: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Recorded<A::Event>>, RepositoryError<A::Error>> {
        let stream = A::stream_name(id)?;
        stream_events_between(self.store(), &stream, from, to)
            .await?
            .iter()
            .map(|e| self.decode_recorded(e))
            .collect()
    }
}

/// The events of any stream committed within `[from, to]`, as stored. A
/// stream that does not exist has no events.
///
/// It reads forwards and stops at `to` (the store applies `until`); the
/// stream is scanned from its start because revisions are not indexed by
/// time.
pub async fn stream_events_between<S: EventStore>(
    store: &S,
    stream: &StreamName,
    from: Timestamp,
    to: Timestamp,
) -> factum_core::Result<Vec<RecordedEvent>> {
    if to < from {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut next = StreamRevision(0);
    const PAGE: u64 = 4096;
    loop {
        let req = ReadStream::forwards(stream.clone())
            .from_revision(next)
            .max_count(PAGE)
            .until(to);
        let page = match store.read_stream(req).await {
            Ok(p) => p,
            Err(Error::StreamNotFound { .. }) => return Ok(out),
            Err(e) => return Err(e),
        };
        let Some(last) = page.last() else {
            return Ok(out);
        };
        next = StreamRevision(last.read_revision().0 + 1);
        let full = page.len() as u64 == PAGE;
        out.extend(page.into_iter().filter(|e| e.created >= from));
        if !full {
            return Ok(out);
        }
    }
}

//! Deriving index changes from events: used by the writer for each group
//! commit and by recovery when it replays the log tail, so both compute the
//! same index from the same log.

use std::sync::Arc;

use factum_core::{Result, StreamName};

use crate::format::{StoredEvent, FLAG_SOFT_DELETE, FLAG_TOMBSTONE};
use crate::index::{Index, Memtable, StreamRecord};
use crate::log::Loc;

/// Pending index changes over the committed index.
pub struct Overlay<'a> {
    index: &'a Index,
    /// The changes.
    pub mem: Memtable,
}

/// The link streams an event of a user stream is indexed under.
pub fn link_streams(stream: &StreamName, event_type: &str) -> [Option<String>; 2] {
    if stream.is_system() {
        return [None, None];
    }
    [
        stream.category().map(|c| format!("$ce-{c}")),
        (!event_type.is_empty() && !event_type.starts_with('$'))
            .then(|| format!("$et-{event_type}")),
    ]
}

impl<'a> Overlay<'a> {
    /// An empty overlay continuing from the index's checkpoint.
    pub fn new(index: &'a Index) -> Self {
        Overlay {
            index,
            mem: Memtable {
                checkpoint: index.checkpoint(),
                ..Memtable::default()
            },
        }
    }

    /// Takes the changes, leaving an empty overlay at the same checkpoint.
    pub fn take(&mut self) -> Memtable {
        let checkpoint = self.mem.checkpoint;
        std::mem::replace(
            &mut self.mem,
            Memtable {
                checkpoint,
                ..Memtable::default()
            },
        )
    }

    /// The newest record of a stream: pending, else committed.
    pub fn record(&self, name: &str) -> Result<Option<StreamRecord>> {
        match self.mem.streams.get(name) {
            Some(r) => Ok(Some(r.clone())),
            None => self.index.stream(name),
        }
    }

    /// True when this overlay changed the stream.
    pub fn touched(&self, name: &str) -> bool {
        self.mem.streams.contains_key(name)
    }

    fn record_or_new(&mut self, name: &str) -> Result<StreamRecord> {
        if let Some(r) = self.record(name)? {
            return Ok(r);
        }
        let id = self.mem.checkpoint.next_stream_id;
        self.mem.checkpoint.next_stream_id += 1;
        let r = StreamRecord::new(id);
        self.mem.streams.insert(Arc::from(name), r.clone());
        Ok(r)
    }

    fn put(&mut self, name: &str, r: StreamRecord) {
        self.mem.streams.insert(Arc::from(name), r);
    }

    /// Records one durable (or being made durable) frame: its events with
    /// the location of each record, and where the frame ends.
    pub fn add_frame(
        &mut self,
        frame_loc: Loc,
        events: &[(StoredEvent, Loc)],
        end: Loc,
    ) -> Result<()> {
        if let Some((first, _)) = events.first() {
            self.mem.batches.insert(first.position, frame_loc.0);
        }
        for (e, loc) in events {
            self.add_event(e, *loc)?;
        }
        if let Some((last, _)) = events.last() {
            self.mem.checkpoint.next_position = last.position + 1;
        }
        self.mem.checkpoint.end = end;
        Ok(())
    }

    fn add_event(&mut self, e: &StoredEvent, loc: Loc) -> Result<()> {
        let name = e.stream.as_str();
        let mut rec = self.record_or_new(name)?;
        rec.last_position = e.position;
        if e.flags & FLAG_TOMBSTONE != 0 {
            rec.tombstoned = true;
            self.put(name, rec);
            return Ok(());
        }
        rec.last_revision = Some(e.revision);
        rec.last_event_id = e.id;
        rec.deleted = false;
        self.mem
            .entries
            .insert((rec.id, e.revision), (e.position, loc.0));
        self.put(name, rec);
        if let Some(target) = e.stream.metadata_of() {
            let mut t = self.record_or_new(target.as_str())?;
            t.metadata = Some(e.data.to_vec());
            if e.flags & FLAG_SOFT_DELETE != 0 {
                t.deleted = true;
                t.base = t.last_revision.map_or(0, |l| l + 1);
            }
            self.put(target.as_str(), t);
        }
        for link in link_streams(&e.stream, &e.event_type).into_iter().flatten() {
            let mut l = self.record_or_new(&link)?;
            let rev = l.last_revision.map_or(0, |r| r + 1);
            l.last_revision = Some(rev);
            l.last_position = e.position;
            l.last_event_id = e.id;
            self.mem.entries.insert((l.id, rev), (e.position, loc.0));
            self.put(&link, l);
        }
        Ok(())
    }
}

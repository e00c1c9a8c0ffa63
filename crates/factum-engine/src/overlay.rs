//! Deriving index changes from events: used by the writer for each group
//! commit and by recovery when it replays the log tail, so both compute the
//! same index from the same log.

use std::sync::Arc;

use factum_core::rules::{link_parts, WriteKind};
use factum_core::Result;

use crate::format::{StoredEvent, FLAG_SOFT_DELETE, FLAG_TOMBSTONE};
use std::collections::HashMap;

use crate::index::{Checkpoint, Index, StreamRecord};
use crate::log::Loc;

/// Index changes of one group commit (or one stretch of recovery), in the
/// order they were made.
#[derive(Debug, Default)]
pub struct Changes {
    /// Changed stream records by name (newest state).
    pub streams: HashMap<Arc<str>, StreamRecord>,
    /// New entries: ((stream id, revision), (position, location)).
    pub entries: Vec<((u64, u64), (u64, u64))>,
    /// New frames: (first position, location).
    pub batches: Vec<(u64, u64)>,
    /// Checkpoint after these changes.
    pub checkpoint: Checkpoint,
}

/// Pending index changes over the committed index.
pub struct Overlay<'a> {
    index: &'a Index,
    /// The changes.
    pub mem: Changes,
    /// Reused buffer for link stream names.
    link: String,
}

impl<'a> Overlay<'a> {
    /// An empty overlay continuing from the index's checkpoint.
    pub fn new(index: &'a Index) -> Self {
        Overlay {
            index,
            mem: Changes {
                checkpoint: index.checkpoint(),
                ..Changes::default()
            },
            link: String::new(),
        }
    }

    /// Takes the changes, leaving an empty overlay at the same checkpoint.
    pub fn take(&mut self) -> Changes {
        let checkpoint = self.mem.checkpoint;
        std::mem::replace(
            &mut self.mem,
            Changes {
                checkpoint,
                ..Changes::default()
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

    /// The pending record of a stream, fetched from the index or created
    /// (with the next stream id) the first time the group touches it.
    fn record_mut(&mut self, name: &str) -> Result<&mut StreamRecord> {
        if !self.mem.streams.contains_key(name) {
            let r = match self.index.stream(name)? {
                Some(r) => r,
                None => {
                    let id = self.mem.checkpoint.next_stream_id;
                    self.mem.checkpoint.next_stream_id += 1;
                    StreamRecord::new(id)
                }
            };
            self.mem.streams.insert(Arc::from(name), r);
        }
        Ok(self.mem.streams.get_mut(name).expect("inserted above"))
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
            self.mem.batches.push((first.position, frame_loc.0));
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
        let kind = if e.flags & FLAG_TOMBSTONE != 0 {
            WriteKind::Tombstone
        } else if e.flags & FLAG_SOFT_DELETE != 0 {
            WriteKind::SoftDelete
        } else {
            WriteKind::Events
        };
        let rec = self.record_mut(e.stream.as_str())?;
        rec.record_event(e.revision, e.position, e.id, kind);
        if kind == WriteKind::Tombstone {
            return Ok(());
        }
        let key = (rec.id, e.revision);
        self.mem.entries.push((key, (e.position, loc.0)));
        if let Some(target) = e.stream.metadata_of() {
            self.record_mut(target.as_str())?
                .record_metadata(&e.data, kind);
        }
        for (prefix, part) in link_parts(&e.stream, &e.event_type) {
            let Some(part) = part else { continue };
            let mut name = std::mem::take(&mut self.link);
            name.clear();
            name.push_str(prefix);
            name.push_str(part);
            let l = self.record_mut(&name)?;
            let key = (l.id, l.record_link(e.position, e.id));
            self.mem.entries.push((key, (e.position, loc.0)));
            self.link = name;
        }
        Ok(())
    }
}

//! Deriving index changes from events: used by the writer for each group
//! commit and by recovery when it replays the log tail, so both compute the
//! same index from the same log.

use std::sync::Arc;

use factum_core::rules::{link_parts, WriteKind};
use factum_core::{Error, Result};

use crate::format::{StoredEvent, FLAG_SOFT_DELETE, FLAG_TOMBSTONE};

pub use crate::index::Changes;
use crate::index::{Index, Run, StreamRecord};
use crate::log::Loc;

/// Pending index changes over the committed index.
pub struct Overlay<'a> {
    index: &'a Index,
    /// The changes.
    pub mem: Changes,
    /// Reused buffer for link stream names.
    link: String,
    /// The runs of the frame being added.
    runs: RunBuilder,
}

/// Builds the runs (index entries, [`Run`]) of one frame's records: a
/// record extends the open run of the same index stream when it holds that
/// run's next revision at its next position, right after its last record;
/// anything else starts a new run. Shared by the writer and recovery (through
/// [`Overlay`]) and by a segment rewrite (`rewrite.rs`), which rebuilds the
/// runs of a rewritten segment's frames, so every run anywhere satisfies
/// "revision `first + i` is at position `position + i`" even where a
/// scavenge left gaps (ADR 33).
#[derive(Debug, Default)]
pub struct RunBuilder {
    /// Runs that the next record may extend: (stream id, first revision, run).
    open: Vec<(u64, u64, Run)>,
    /// Completed runs.
    pub done: Vec<((u64, u64), Run)>,
    /// Revisions the runs cover.
    pub covered: usize,
}

impl RunBuilder {
    /// Adds revision `rev` of stream `id` (the record at `loc`, `len` bytes,
    /// holding position `position`) to the open run it extends, or opens one.
    pub fn add_entry(&mut self, id: u64, rev: u64, position: u64, loc: Loc, len: u32) {
        self.covered += 1;
        if let Some((_, first, run)) = self.open.iter_mut().find(|(i, ..)| *i == id) {
            if run.end(*first) == rev
                && run.position + run.count as u64 == position
                && run.loc.0 + run.bytes as u64 == loc.0
            {
                run.count += 1;
                run.bytes += len;
                return;
            }
        }
        // Not an extension: the stream's open run (if any) is complete.
        if let Some(k) = self.open.iter().position(|(i, ..)| *i == id) {
            let (id, first, run) = self.open.swap_remove(k);
            self.done.push(((id, first), run));
        }
        self.open.push((
            id,
            rev,
            Run {
                position,
                loc,
                count: 1,
                bytes: len,
            },
        ));
    }

    /// Completes the open runs that the record at `position` cannot extend
    /// (`u64::MAX`: all of them, at the end of a frame).
    pub fn close_runs(&mut self, position: u64) {
        let mut k = 0;
        while k < self.open.len() {
            let (id, first, run) = self.open[k];
            if run.position + run.count as u64 != position {
                self.done.push(((id, first), run));
                self.open.swap_remove(k);
            } else {
                k += 1;
            }
        }
    }
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
            runs: RunBuilder::default(),
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
    ///
    /// Index entries are runs (see [`Run`]): consecutive records of the frame
    /// that hold consecutive revisions of one stream (the stream itself, its
    /// `$ce-` category or an `$et-` event type) make one entry. A run never
    /// spans two frames, so a run, once added, never changes.
    pub fn add_frame(
        &mut self,
        frame_loc: Loc,
        events: &[(StoredEvent, Loc)],
        end: Loc,
    ) -> Result<()> {
        self.add_to_frame(frame_loc, events, true)?;
        self.end_frame(end);
        Ok(())
    }

    /// Records records appended to a frame not yet complete (the writer's
    /// frame of a write group, ADR 48): `first` for the frame's first
    /// records, which also record the frame itself. Runs stay open, so the
    /// next records of the frame extend them; [`Overlay::end_frame`]
    /// completes them. Recording a frame in parts gives the same changes as
    /// [`Overlay::add_frame`] of the whole.
    pub fn add_to_frame(
        &mut self,
        frame_loc: Loc,
        events: &[(StoredEvent, Loc)],
        first: bool,
    ) -> Result<()> {
        if first {
            if let Some((e, _)) = events.first() {
                self.mem.batches.push((e.position, frame_loc.0));
            }
        }
        let mut i = 0;
        while i < events.len() {
            if events[i].0.has_link_revisions() {
                self.add_link_record(&events[i..i + 1])?;
                i += 1;
                continue;
            }
            // The events of a frame the writer makes belong to one stream,
            // but for the `$$` undelete that may end it (ADR 26); handle
            // each stretch of one stream with one lookup per stream.
            let stream = &events[i].0.stream;
            let n = events[i..]
                .iter()
                .take_while(|(e, _)| e.stream == *stream && !e.has_link_revisions())
                .count();
            self.add_events(&events[i..i + n])?;
            i += n;
        }
        if let Some((last, _)) = events.last() {
            self.mem.checkpoint.next_position = last.position + 1;
        }
        Ok(())
    }

    /// The frame being recorded ends at `end`: its runs are complete.
    pub fn end_frame(&mut self, end: Loc) {
        self.close_runs(u64::MAX);
        self.mem.checkpoint.end = end;
    }

    fn add_entry(&mut self, id: u64, rev: u64, position: u64, loc: Loc, len: u32) {
        self.runs.add_entry(id, rev, position, loc, len);
    }

    /// A rewrite's link record (ADR 47): a stub of a removed event, after
    /// which each link stream it lists takes at least the listed revision
    /// next (the removed events took those before it).
    fn add_link_record(&mut self, record: &[(StoredEvent, Loc)]) -> Result<()> {
        self.add_events(record)?;
        let e = &record[0].0;
        let list = e.link_revisions().map_err(|detail| Error::Corrupt {
            file: self.index.path().to_path_buf(),
            offset: 0,
            detail: format!("{detail} (replaying the log into the index)"),
        })?;
        for (stream, next) in list {
            let l = self.record_mut(stream)?;
            if l.next_revision() < next {
                l.last_revision = next.checked_sub(1);
            }
        }
        Ok(())
    }

    /// Completes the open runs that the record at `position` cannot extend,
    /// moving completed runs into the changes.
    fn close_runs(&mut self, position: u64) {
        self.runs.close_runs(position);
        self.mem.covered += self.runs.covered;
        self.runs.covered = 0;
        self.mem.runs.append(&mut self.runs.done);
    }

    /// Events of one stream, consecutive in one frame.
    fn add_events(&mut self, events: &[(StoredEvent, Loc)]) -> Result<()> {
        let Some((head, _)) = events.first() else {
            return Ok(());
        };
        let stream = head.stream.clone();
        let mut linked = 0;
        {
            let rec = self.record_mut(stream.as_str())?;
            let id = rec.id;
            for (e, _) in events {
                rec.record_event(e.revision, e.position, e.id, kind_of(e));
            }
            for (e, loc) in events {
                self.close_runs(e.position);
                // Tombstones and a scavenge's stubs (ADR 33) change the
                // stream's state but are never read through the index.
                if kind_of(e) == WriteKind::Tombstone || e.is_stub() {
                    continue;
                }
                linked += 1;
                self.add_entry(id, e.revision, e.position, *loc, e.encoded_len() as u32);
            }
        }
        if let Some(target) = stream.metadata_of() {
            for (e, _) in events {
                if kind_of(e) != WriteKind::Tombstone && !e.is_stub() {
                    self.record_mut(target.as_str())?
                        .record_metadata(&e.data, kind_of(e));
                }
            }
        }
        if linked == 0 {
            return Ok(());
        }
        // Links: one `$ce-` stream for all of them, `$et-` per stretch of a type.
        let mut k = 0;
        while k < events.len() {
            let ty = &events[k].0.event_type;
            let n = events[k..]
                .iter()
                .take_while(|(e, _)| e.event_type == *ty)
                .count();
            let stretch = &events[k..k + n];
            k += n;
            self.close_runs(stretch[0].0.position);
            for (prefix, part) in link_parts(&stream, ty) {
                let Some(part) = part else { continue };
                let mut name = std::mem::take(&mut self.link);
                name.clear();
                name.push_str(prefix);
                name.push_str(part);
                let mut added = Vec::with_capacity(stretch.len());
                {
                    let l = self.record_mut(&name)?;
                    for (e, loc) in stretch {
                        if kind_of(e) == WriteKind::Tombstone || e.is_stub() {
                            continue;
                        }
                        added.push((l.id, l.record_link(e.position, e.id), e, *loc));
                    }
                }
                self.link = name;
                for (id, rev, e, loc) in added {
                    self.add_entry(id, rev, e.position, loc, e.encoded_len() as u32);
                }
            }
        }
        Ok(())
    }
}

fn kind_of(e: &StoredEvent) -> WriteKind {
    if e.flags & FLAG_TOMBSTONE != 0 {
        WriteKind::Tombstone
    } else if e.flags & FLAG_SOFT_DELETE != 0 {
        WriteKind::SoftDelete
    } else {
        WriteKind::Events
    }
}

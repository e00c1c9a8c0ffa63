//! `factum stats`: sizes from the directory, the index checkpoint, and the
//! head found by scanning only the log after that checkpoint.

use std::path::{Path, PathBuf};

use clap::Args;
use factum_engine::engine::lock_dir;
use factum_engine::format::{public_position, SEGMENT_HEADER_LEN};
use factum_engine::index::{Checkpoint, Index, INDEX_FILE};
use factum_engine::log::{all_zero, open_segments, FrameReader, Loc, Scanned};

use super::{ensure_store, segment_files};
use crate::error::CliError;

/// Arguments of `factum stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// The store's directory.
    #[arg(long, env = "FACTUM_DATA", value_name = "DIR")]
    pub data: PathBuf,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize, Default)]
struct Stats {
    dir: String,
    segments: usize,
    log_bytes: u64,
    index_bytes: Option<u64>,
    /// Position of the newest event as clients see it (the log position
    /// + 1, ADR 25); `None` when empty or unknown.
    head_position: Option<u64>,
    /// Number of events (= the next log position).
    events: Option<u64>,
    /// The next log position the index checkpoint covers up to.
    index_checkpoint_position: Option<u64>,
    index_checkpoint_segment: Option<u32>,
    index_checkpoint_offset: Option<u64>,
    /// Events after the checkpoint (indexed at the next open).
    unindexed_events: Option<u64>,
    /// Bytes of an incomplete batch at the end (cut at the next open).
    torn_tail_bytes: Option<u64>,
    /// Zeros after the last frame (preallocated space left by a crash;
    /// part of `log_bytes`, reused by the next appends).
    preallocated_bytes: Option<u64>,
    notes: Vec<String>,
}

/// Runs `factum stats`.
pub fn run(args: StatsArgs) -> Result<(), CliError> {
    let dir = &args.data;
    ensure_store(dir)?;
    let files = segment_files(dir)?;
    let mut stats = Stats {
        dir: dir.display().to_string(),
        segments: files.len(),
        log_bytes: files.iter().map(|(_, len)| len).sum(),
        index_bytes: std::fs::metadata(dir.join(INDEX_FILE))
            .ok()
            .map(|m| m.len()),
        ..Stats::default()
    };
    match lock_dir(dir) {
        Ok(lock) => {
            head_and_checkpoint(dir, &mut stats)?;
            drop(lock);
        }
        Err(factum_core::Error::Locked { .. }) => stats.notes.push(
            "the store is open in another process: head and checkpoint need the lock, only file sizes are shown"
                .into(),
        ),
        Err(e) => return Err(e.into()),
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&stats).map_err(|e| CliError::failure(e.to_string()))?
        );
        return Ok(());
    }
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    println!("store             {}", stats.dir);
    match (stats.events, stats.head_position) {
        (Some(_), Some(h)) => println!("head position     {h}"),
        (Some(_), None) => println!("head position     - (empty)"),
        _ => println!("head position     unknown"),
    }
    println!("events            {}", opt(stats.events));
    println!("segments          {}", stats.segments);
    println!("log bytes         {}", stats.log_bytes);
    println!("index bytes       {}", opt(stats.index_bytes));
    match stats.index_checkpoint_position {
        Some(p) => println!(
            "index checkpoint  position {p} (segment {} offset {})",
            stats.index_checkpoint_segment.unwrap_or(0),
            stats.index_checkpoint_offset.unwrap_or(0)
        ),
        None => println!("index checkpoint  none"),
    }
    if let Some(n) = stats.unindexed_events {
        println!("unindexed events  {n}");
    }
    if let Some(n) = stats.torn_tail_bytes {
        println!("torn tail bytes   {n}");
    }
    if let Some(n) = stats.preallocated_bytes {
        println!("preallocated      {n} bytes of zeros after the last frame (free space)");
    }
    for n in &stats.notes {
        println!("note: {n}");
    }
    Ok(())
}

/// Reads the checkpoint and scans the log after it (the store's lock held).
fn head_and_checkpoint(dir: &Path, stats: &mut Stats) -> Result<(), CliError> {
    let segments = open_segments(dir)?;
    // An encrypted store (ADR 45) is read with the key from the environment.
    let key = super::at_rest_key(None, Some(true))?;
    segments.unlock(key.as_ref())?;
    let all = segments.all();
    let Some(first) = all.first() else {
        return Ok(());
    };
    let checkpoint = if stats.index_bytes.is_some() {
        Some(Index::open_encrypted(dir, 1 << 20, key.as_ref())?.checkpoint())
    } else {
        stats
            .notes
            .push("no index file: the next open rebuilds it from the log".into());
        None
    };
    let (mut next_position, mut seg_no, mut offset) = match checkpoint {
        Some(Checkpoint {
            next_position, end, ..
        }) if end != Loc(0) => (next_position, end.segment(), end.offset()),
        _ => (
            first.first_position,
            first.number,
            SEGMENT_HEADER_LEN as u64,
        ),
    };
    if let Some(cp) = checkpoint {
        stats.index_checkpoint_position = Some(cp.next_position);
        stats.index_checkpoint_segment = Some(cp.end.segment());
        stats.index_checkpoint_offset = Some(cp.end.offset());
    }
    let after_checkpoint = next_position;
    let last_no = all.last().map_or(0, |s| s.number);
    while let Some(seg) = segments.get(seg_no) {
        let len = seg.len()?;
        if offset > len {
            stats.notes.push(format!(
                "the index checkpoint is past the end of {} ({offset} > {len}): run `factum verify`",
                seg.path.display()
            ));
            break;
        }
        let mut frames = FrameReader::new(seg.clone(), offset, len);
        loop {
            match frames.next_frame()? {
                Scanned::Frame { header, .. } => {
                    next_position = header.first_position + header.count as u64;
                }
                Scanned::End => break,
                Scanned::Incomplete { offset } | Scanned::Invalid { offset, .. } => {
                    if seg.number == last_no && all_zero(&seg, offset, len)? {
                        stats.preallocated_bytes = Some(len - offset);
                    } else if seg.number == last_no {
                        stats.torn_tail_bytes = Some(len - offset);
                    } else {
                        stats.notes.push(format!(
                            "{} has an invalid frame at offset {offset}: run `factum verify`",
                            seg.path.display()
                        ));
                    }
                    break;
                }
            }
        }
        if seg_no == last_no {
            break;
        }
        seg_no += 1;
        offset = SEGMENT_HEADER_LEN as u64;
    }
    stats.events = Some(next_position);
    stats.head_position = next_position
        .checked_sub(1)
        .map(|log| public_position(log).0);
    if checkpoint.is_some() {
        stats.unindexed_events = Some(next_position.saturating_sub(after_checkpoint));
    }
    Ok(())
}

//! Power loss inside the last write group (docs/format.md, "Recovery").
//!
//! A crash simulator: a real engine writes acknowledged appends and then
//! one last write group of many appends. From the resulting files it makes
//! images of the disk after a power loss in which an arbitrary subset of
//! that group's 4 KiB pages (and, separately, 512-byte sectors) holds the
//! new bytes and the rest zeros (the preallocated space they overwrite), or
//! the file ends early (a size that never reached the disk). Bytes that
//! were acknowledged are never touched. Every image must open, hold every
//! acknowledged event, and hold exactly the frames of the group that lie
//! whole before its first damaged byte — each frame, and so each append,
//! whole or not at all (the appends of a group share frames of up to
//! 64 KiB, ADR 48),
//! multi-stream appends (one frame over two streams, ADR 29) included.
//! Damage before the last group must make open refuse, naming the file.
//!
//! `FACTUM_CRASH_IMAGES` sets the number of random images per unit size
//! (default 100; thousands for a thorough run). `FACTUM_CRASH_SEED` repeats
//! a run.

use std::path::{Path, PathBuf};

use factum_core::{Error, EventData, EventStore, ExpectedRevision, ReadAll, StreamName, Uuid};
use factum_engine::format::{check_frame, FrameCheck, SEGMENT_HEADER_LEN};
use factum_engine::{Engine, EngineConfig};

mod common;

/// A small, fast, seedable generator (no dependency needed for coin flips).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn event(i: usize, size: usize) -> EventData {
    let filler: String = (0..size)
        .map(|k| (b'a' + ((i + k) % 26) as u8) as char)
        .collect();
    EventData::json("Recorded", &serde_json::json!({ "i": i, "filler": filler })).unwrap()
}

/// One frame (one append, or several small ones: ADR 48) of the last write group.
struct Frame {
    offset: u64,
    end: u64,
    ids: Vec<Uuid>,
}

/// What the engine left behind, and what an image must contain.
struct Written {
    /// Every file of the store after the acknowledged appends (index included).
    base: Vec<(String, Vec<u8>)>,
    /// The last segment's name and its bytes with the last group written.
    segment: String,
    bytes: Vec<u8>,
    /// Where the last group starts in that segment.
    group_start: u64,
    /// Events acknowledged before the last group, in log order.
    acked: Vec<Uuid>,
    /// The appends of the last group, in log order.
    group: Vec<Frame>,
}

fn read_dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().unwrap() != "LOCK")
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

async fn all_ids(engine: &Engine) -> Vec<Uuid> {
    engine
        .read_all(ReadAll::forwards())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

/// Writes the scenario with a real engine: acknowledged appends (some
/// before the index checkpoint a clean close leaves, some after it), then
/// one group of many concurrent appends, which a big append ahead of them
/// keeps queued so the writer takes them together.
async fn write_scenario(dir: &Path) -> Written {
    let config = EngineConfig::default();
    let streams: Vec<StreamName> = (0..4)
        .map(|s| StreamName::new(format!("account-{s}")).unwrap())
        .collect();
    // Acknowledged, then a clean close: the index checkpoint is here.
    let (engine, _) = Engine::open_with(dir, config.clone()).unwrap();
    for i in 0..20 {
        engine
            .append(
                streams[i % 4].clone(),
                ExpectedRevision::Any,
                vec![event(i, 300)],
            )
            .await
            .unwrap();
    }
    engine.close().unwrap();
    drop(engine);
    let base = read_dir_files(dir);
    for attempt in 0..5 {
        let (engine, _) = Engine::open_with(dir, config.clone()).unwrap();
        // Acknowledged groups after the checkpoint: recovery replays them.
        for i in 0..10 {
            let events = (0..1 + i % 3)
                .map(|k| event(100 + i * 3 + k, 200))
                .collect();
            engine
                .append(streams[i % 4].clone(), ExpectedRevision::Any, events)
                .await
                .unwrap();
        }
        // The events are made before the tasks start, so the burst reaches
        // the writer while it is still busy with the big append.
        let big = {
            let engine = engine.clone();
            let s = streams[0].clone();
            let events: Vec<EventData> = (0..40).map(|k| event(1000 + k, 20_000)).collect();
            tokio::spawn(async move { engine.append(s, ExpectedRevision::Any, events).await })
        };
        tokio::task::yield_now().await;
        let burst_events: Vec<_> = (0..48)
            .map(|i| {
                // Large enough that the group's shared frames (up to 64 KiB,
                // ADR 48) are many, each holding a few appends.
                let size = 4_000 + (i * 577) % 12_000;
                let events: Vec<EventData> = (0..1 + i % 2)
                    .map(|k| event(2000 + i * 2 + k, size))
                    .collect();
                (events, event(5000 + i, size))
            })
            .collect();
        let mut burst = Vec::new();
        for (i, (events, last)) in burst_events.into_iter().enumerate() {
            let engine = engine.clone();
            let s = streams[i % 4].clone();
            // Every third is a multi-stream append (ADR 29): one frame
            // over two streams, so it too must come back whole or not at all.
            let other = streams[(i + 1) % 4].clone();
            burst.push(tokio::spawn(async move {
                if i % 3 == 0 {
                    let request = factum_core::MultiAppend::new()
                        .append(s, ExpectedRevision::Any, events)
                        .append(other, ExpectedRevision::Any, [last]);
                    return engine.append_multi(request).await.map(|_| ());
                }
                engine
                    .append(s, ExpectedRevision::Any, events)
                    .await
                    .map(|_| ())
            }));
        }
        big.await.unwrap().unwrap();
        for b in burst {
            b.await.unwrap().unwrap();
        }
        let ids = all_ids(&engine).await;
        engine.close().unwrap();
        drop(engine);
        let seg = common::segments(dir).pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        let frames = frames_of(&bytes);
        // The power loss strikes while the largest group of the burst is
        // in flight: it is the last group, nothing after it was written.
        let mut sizes = std::collections::BTreeMap::<u64, usize>::new();
        for f in &frames {
            *sizes.entry(f.2).or_default() += 1;
        }
        let (&last_group, &most) = sizes.iter().max_by_key(|(_, n)| **n).unwrap();
        if most < 8 {
            eprintln!("attempt {attempt}: the largest group has {most} frames; again");
            continue;
        }
        let mut next_id = 0;
        let mut acked = Vec::new();
        let mut group: Vec<Frame> = Vec::new();
        for (offset, end, g, count) in &frames {
            let frame_ids = ids[next_id..next_id + *count].to_vec();
            next_id += count;
            if *g == last_group {
                group.push(Frame {
                    offset: *offset,
                    end: *end,
                    ids: frame_ids,
                });
            } else if *g < last_group {
                acked.extend(frame_ids);
            }
        }
        assert_eq!(next_id, ids.len());
        bytes.truncate(group.last().unwrap().end as usize);
        return Written {
            base,
            segment: seg.file_name().unwrap().to_string_lossy().into_owned(),
            bytes,
            group_start: group[0].offset,
            acked,
            group,
        };
    }
    panic!("the writer never took the burst as one group");
}

/// (offset, end, group's first position, events) of every frame of a segment.
fn frames_of(bytes: &[u8]) -> Vec<(u64, u64, u64, usize)> {
    let mut out = Vec::new();
    let mut o = SEGMENT_HEADER_LEN;
    while o < bytes.len() {
        let FrameCheck::Valid(h) = check_frame(&bytes[o..]) else {
            panic!("the engine left an invalid frame at {o}")
        };
        let end = o + h.len as usize;
        out.push((
            o as u64,
            end as u64,
            h.group_first_position().unwrap(),
            h.count as usize,
        ));
        o = end;
    }
    out
}

/// Lays out a store directory: the base files, with the last segment
/// replaced by `segment`.
fn lay_out(dir: &Path, w: &Written, segment: &[u8]) {
    for (name, bytes) in &w.base {
        if name.ends_with(".seg") {
            continue;
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    for (name, bytes) in &w.base {
        if name.ends_with(".seg") && *name != w.segment {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    std::fs::write(dir.join(&w.segment), segment).unwrap();
}

/// A power-loss image: units of `unit` bytes of the last group, each new
/// or zero by `keep`; the file cut at `len` (a size that did not persist).
fn image(w: &Written, unit: u64, keep: &[bool], len: u64) -> Vec<u8> {
    let end = w.bytes.len() as u64;
    let first_unit = w.group_start / unit;
    let mut img = w.bytes.clone();
    img.resize(len.max(end) as usize, 0);
    for (i, &kept) in keep.iter().enumerate() {
        if kept {
            continue;
        }
        let u = first_unit + i as u64;
        // Acknowledged bytes sharing the group's first unit stay as they are.
        let lo = (u * unit).max(w.group_start);
        let hi = ((u + 1) * unit).min(end);
        img[lo as usize..hi as usize].fill(0);
    }
    img.truncate(len as usize);
    img
}

/// The events the image must hold: the acknowledged ones, then the group's
/// appends before the first one whose bytes are not all there.
fn expected(w: &Written, img: &[u8]) -> Vec<Uuid> {
    let mut ids = w.acked.clone();
    for f in &w.group {
        let (o, e) = (f.offset as usize, f.end as usize);
        if img.len() < e || img[o..e] != w.bytes[o..e] {
            break;
        }
        ids.extend(&f.ids);
    }
    ids
}

/// The engine's configuration for opening images: no zeros written ahead
/// (they cost an fdatasync per open and change nothing in recovery).
fn image_config() -> EngineConfig {
    EngineConfig {
        preallocate_bytes: 0,
        ..EngineConfig::default()
    }
}

async fn open_image(dir: &Path) -> factum_core::Result<Vec<Uuid>> {
    let (engine, _) = Engine::open_with(dir, image_config())?;
    let ids = all_ids(&engine).await;
    engine.close()?;
    Ok(ids)
}

/// Where images are laid out: a tmpfs when there is one (the images test
/// recovery's decisions, not the disk; fsyncs there cost nothing).
fn image_dir() -> tempfile::TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

fn seed() -> u64 {
    std::env::var("FACTUM_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

fn images_per_unit() -> usize {
    std::env::var("FACTUM_CRASH_IMAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_power_loss_image_of_the_last_group_keeps_what_was_acknowledged() {
    let scenario = tempfile::tempdir().unwrap();
    let w = write_scenario(scenario.path()).await;
    let end = w.bytes.len() as u64;
    let seed = seed();
    eprintln!(
        "power-loss simulator: seed {seed} (FACTUM_CRASH_SEED), last group {} appends, {} bytes",
        w.group.len(),
        end - w.group_start
    );
    let mut rng = Rng(seed);
    let work = image_dir();
    let mut tried = 0;
    let mut cut_some = 0;
    for unit in [4096u64, 512] {
        let units = (end.div_ceil(unit) - w.group_start / unit) as usize;
        let n = images_per_unit();
        for round in 0..n + 4 {
            // The first rounds are the edges: nothing, everything, every
            // other unit, all but the first unit; then random subsets with
            // a random share of units kept, and sometimes a short file.
            let keep: Vec<bool> = match round {
                0 => vec![false; units],
                1 => vec![true; units],
                2 => (0..units).map(|i| i % 2 == 1).collect(),
                3 => (0..units).map(|i| i > 0).collect(),
                _ => {
                    let share = rng.below(101);
                    (0..units).map(|_| rng.below(100) < share).collect()
                }
            };
            let len = if round >= 4 && rng.below(4) == 0 {
                let u = w.group_start / unit + rng.below(units as u64 + 1);
                (u * unit).clamp(w.group_start, end)
            } else if round >= 4 && rng.below(3) == 0 {
                // Preallocated zeros after the group.
                end + rng.below(64 << 10)
            } else {
                end
            };
            let img = image(&w, unit, &keep, len);
            let want = expected(&w, &img);
            let dir = work.path().join(format!("{unit}-{round}"));
            std::fs::create_dir(&dir).unwrap();
            lay_out(&dir, &w, &img);
            let got = open_image(&dir).await.unwrap_or_else(|e| {
                panic!("seed {seed}, unit {unit}, round {round}: open refused: {e}")
            });
            assert_eq!(
                got.len(),
                want.len(),
                "seed {seed}, unit {unit}, round {round}: events after recovery"
            );
            assert!(
                got == want,
                "seed {seed}, unit {unit}, round {round}: wrong events"
            );
            if want.len() < w.acked.len() + w.group.iter().map(|f| f.ids.len()).sum::<usize>() {
                cut_some += 1;
            }
            // Every tenth image: the store takes appends again and reopens.
            if round % 10 == 1 {
                let (engine, _) = Engine::open_with(&dir, image_config()).unwrap();
                let r = engine
                    .append(
                        StreamName::new("after-1").unwrap(),
                        ExpectedRevision::NoStream,
                        vec![event(0, 10)],
                    )
                    .await
                    .unwrap();
                assert_eq!(r.position.0, want.len() as u64 + 1);
                engine.close().unwrap();
                drop(engine);
                assert_eq!(open_image(&dir).await.unwrap().len(), want.len() + 1);
                let report = factum_engine::verify(&dir).unwrap();
                assert!(report.ok(), "{:?}", report.faults);
            }
            std::fs::remove_dir_all(&dir).unwrap();
            tried += 1;
        }
    }
    assert!(
        cut_some > tried / 2,
        "too few images cut anything: {cut_some} of {tried}"
    );
}

/// Zeroes `len` bytes at `at` of the store's last segment.
fn damage(path: &PathBuf, at: u64, len: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize..at as usize + len].fill(0);
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_the_last_group_is_refused_naming_the_file() {
    let scenario = tempfile::tempdir().unwrap();
    let w = write_scenario(scenario.path()).await;
    // The acknowledged frames after the index checkpoint (which recovery
    // reads): damage the last one before the group, with the group whole,
    // and with the group partly written.
    let acked_frames: Vec<_> = frames_of(&w.bytes)
        .into_iter()
        .filter(|f| f.1 <= w.group_start)
        .collect();
    let victim = acked_frames[acked_frames.len() - 1];
    let units = ((w.bytes.len() as u64).div_ceil(4096) - w.group_start / 4096) as usize;
    for keep_all in [true, false] {
        let keep: Vec<bool> = (0..units).map(|i| keep_all || i % 3 != 1).collect();
        let mut img = image(&w, 4096, &keep, w.bytes.len() as u64);
        img[(victim.0 + 40) as usize..(victim.0 + 48) as usize].fill(0);
        // Still a valid frame of the last group after the damage?
        let has_later = w.group.iter().any(|f| {
            img[f.offset as usize..f.end as usize] == w.bytes[f.offset as usize..f.end as usize]
        });
        let dir = tempfile::tempdir().unwrap();
        lay_out(dir.path(), &w, &img);
        let seg = dir.path().join(&w.segment);
        if !has_later {
            continue;
        }
        match open_image(dir.path()).await {
            Err(Error::Corrupt {
                file,
                offset,
                detail,
            }) => {
                assert_eq!(file, seg);
                assert_eq!(offset, victim.0, "{detail}");
                assert!(detail.contains("later write group"), "{detail}");
            }
            other => panic!("damage before the last group was not refused: {other:?}"),
        }
        let report = factum_engine::verify(dir.path()).unwrap();
        assert!(!report.ok());
    }
    // Damage inside the group itself is cut, not refused.
    let dir = tempfile::tempdir().unwrap();
    lay_out(dir.path(), &w, &w.bytes);
    let seg = dir.path().join(&w.segment);
    damage(&seg, w.group[1].offset + 40, 8);
    let ids = open_image(dir.path()).await.unwrap();
    assert_eq!(ids.len(), w.acked.len() + w.group[0].ids.len());
}

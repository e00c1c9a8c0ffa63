//! Encryption at rest (issue 19, ADR 45), on real files: no plaintext in
//! any segment, reads through every path (pages, compressed and scavenged
//! rewrites, reopen, recovery of a torn last write, backup and restore),
//! clear refusals without the key or with another, a store written in the
//! clear taken over, and `rekey` without rewriting data.

use std::path::Path;

use factum_core::{EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, StreamName};
use factum_crypto::SecretKey;
use factum_engine::{CompressPolicy, Engine, EngineConfig, MasterKey, Throttle};

mod common;

fn key() -> MasterKey {
    MasterKey::new(SecretKey::random().unwrap())
}

fn config(key: Option<&MasterKey>) -> EngineConfig {
    EngineConfig {
        segment_bytes: 64 * 1024,
        index_flush_entries: 64,
        encryption: key.cloned(),
        ..EngineConfig::default()
    }
}

/// A value no encoder would produce by accident: found on disk only if the
/// event was written in the clear.
fn marker(i: usize) -> String {
    format!("SECRET-{i:05}-ZQXJ")
}

async fn write(engine: &Engine, from: usize, n: usize) {
    for i in from..from + n {
        let stream = StreamName::new(format!("customer-{}", i % 7)).unwrap();
        let e = EventData::json(
            "Registered",
            &serde_json::json!({"email": marker(i), "pad": "x".repeat(i % 900)}),
        )
        .unwrap();
        engine
            .append(stream, ExpectedRevision::Any, vec![e])
            .await
            .unwrap();
    }
}

async fn all_emails(engine: &Engine) -> Vec<String> {
    engine
        .read_all(ReadAll::forwards())
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event_type == "Registered")
        .map(|e| {
            let v: serde_json::Value = e.json().unwrap();
            v["email"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Every segment file's bytes.
fn segment_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".seg") {
            out.push((name, std::fs::read(e.path()).unwrap()));
        }
    }
    assert!(!out.is_empty());
    out
}

/// Every file of the store (segments, the index, anything else).
fn store_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Does the store hold an index file (searched with everything else)?
fn is_index(dir: &Path) -> bool {
    store_files(dir).iter().any(|(n, _)| n == "index.redb")
}

fn assert_no_plaintext(dir: &Path) {
    for (name, bytes) in store_files(dir) {
        // Every marker starts so: one search finds any of them.
        assert!(
            !bytes.windows(7).any(|w| w == b"SECRET-"),
            "{name} holds event data in the clear"
        );
        assert!(
            !bytes.windows(10).any(|w| w == b"Registered"),
            "{name} holds an event type in the clear"
        );
        // Stream names are in the index too (ADR 45 encrypts it).
        assert!(
            !bytes.windows(10).any(|w| w == b"customer-3"),
            "{name} holds a stream name in the clear"
        );
    }
}

fn expected(n: usize) -> Vec<String> {
    (0..n).map(marker).collect()
}

#[test]
fn an_encrypted_store_reads_back_everything_and_keeps_no_plaintext() {
    let rt = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    rt.block_on(async {
        let (engine, _) = Engine::open_with(dir.path(), config(Some(&k))).unwrap();
        write(&engine, 0, 400).await;
        assert_eq!(all_emails(&engine).await, expected(400));
        let s = engine
            .read_stream(ReadStream::forwards(StreamName::new("customer-3").unwrap()))
            .await
            .unwrap();
        assert_eq!(s.len(), (0..400).filter(|i| i % 7 == 3).count());
        engine.close().unwrap();
    });
    let segs = segment_bytes(dir.path());
    assert!(segs.len() > 2, "several segments: {}", segs.len());
    assert!(is_index(dir.path()));
    assert_no_plaintext(dir.path());

    // Without the key, and with another: refused, naming the reason.
    let e = Engine::open_with(dir.path(), config(None))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("encrypted at rest"), "{e}");
    let e = Engine::open_with(dir.path(), config(Some(&key())))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("does not unwrap") && e.contains(&k.fingerprint_hex()),
        "{e}"
    );
    let r = factum_engine::verify(dir.path()).unwrap();
    assert!(
        !r.ok() && r.faults[0].contains("encrypted at rest"),
        "{:?}",
        r.faults
    );

    // verify reads every frame with the key.
    let r = factum_engine::verify_store(dir.path(), None, Some(&k)).unwrap();
    assert!(r.ok(), "{:?}", r.faults);

    // Reopened: the same events, and appends go on.
    rt.block_on(async {
        let (engine, _) = Engine::open_with(dir.path(), config(Some(&k))).unwrap();
        assert_eq!(all_emails(&engine).await, expected(400));
        write(&engine, 400, 100).await;
        assert_eq!(all_emails(&engine).await, expected(500));
        engine.close().unwrap();
    });
    assert_no_plaintext(dir.path());
}

#[test]
fn a_torn_last_write_loses_only_itself() {
    use std::os::unix::fs::FileExt;
    let rt = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let big = EngineConfig {
        segment_bytes: 256 << 20,
        ..config(Some(&k))
    };
    rt.block_on(async {
        let (engine, _) = Engine::open_with(dir.path(), big.clone()).unwrap();
        write(&engine, 0, 5).await;
        engine.close().unwrap();
    });
    // The last page's newest slot is damaged as a torn write would leave
    // it: the page's previous version (four events) is what the log holds.
    let (name, bytes) = segment_bytes(dir.path()).pop().unwrap();
    let path = dir.path().join(name);
    use factum_engine::encrypt::{pages_in_file, slot_offset};
    let slot_seq = |page: u64, s: usize| {
        let at = slot_offset(page, s) as usize;
        bytes
            .get(at..at + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    // The last page holding a version (the rest of its group is zeros).
    let last = (0..pages_in_file(bytes.len() as u64))
        .rev()
        .find(|&p| slot_seq(p, 0) > 0 || slot_seq(p, 1) > 0)
        .unwrap();
    let newest = if slot_seq(last, 1) > slot_seq(last, 0) {
        1
    } else {
        0
    };
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0xa5; 512], slot_offset(last, newest) + 100)
        .unwrap();
    drop(f);
    // As after a crash before the index took the last write in: rebuilt
    // from the log.
    std::fs::remove_file(dir.path().join("index.redb")).unwrap();
    rt.block_on(async {
        let (engine, recovery) = Engine::open_with(dir.path(), big.clone()).unwrap();
        let got = all_emails(&engine).await;
        assert!(
            got.len() < 5 && got == expected(got.len()),
            "a prefix of the events: {got:?} ({recovery:?})"
        );
        // Appends go on after the cut.
        write(&engine, got.len(), 3).await;
        assert_eq!(all_emails(&engine).await, expected(got.len() + 3));
        engine.close().unwrap();
    });
    let r = factum_engine::verify_store(dir.path(), None, Some(&k)).unwrap();
    assert!(r.ok(), "{:?}", r.faults);
}

#[test]
fn compaction_scavenge_and_backups_stay_encrypted() {
    let rt = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let restored = tempfile::tempdir().unwrap();
    let k = key();
    let want = rt.block_on(async {
        let (engine, _) = Engine::open_with(dir.path(), config(Some(&k))).unwrap();
        write(&engine, 0, 400).await;
        // Compressed and encrypted sealed segments.
        let report = engine
            .compact(
                CompressPolicy::Sealed,
                Throttle::default(),
                &Default::default(),
            )
            .unwrap();
        assert!(report.compressed > 0, "{report:?}");
        assert_eq!(all_emails(&engine).await, expected(400));
        // A scavenge of a deleted stream rewrites segments again.
        engine
            .delete_stream(
                StreamName::new("customer-0").unwrap(),
                ExpectedRevision::Any,
            )
            .await
            .unwrap();
        write(&engine, 400, 50).await;
        engine
            .scavenge(factum_engine::ScavengeOptions::default())
            .unwrap();
        // The deleted stream's events are gone from `$all` (soft-deleted
        // events stay in `$all` until a scavenge), everything else stays.
        let want = all_emails(&engine).await;
        let kept: Vec<String> = (0..450)
            .filter(|i| *i >= 400 || i % 7 != 0)
            .map(marker)
            .collect();
        assert!(want.len() < 450, "{}", want.len());
        assert!(kept.iter().all(|m| want.contains(m)));
        // An online backup of the encrypted store.
        engine.backup(backup.path()).unwrap();
        write(&engine, 450, 10).await;
        engine.close().unwrap();
        want
    });
    assert_no_plaintext(dir.path());
    assert_no_plaintext(backup.path());
    let r = factum_engine::verify_store(dir.path(), None, Some(&k)).unwrap();
    assert!(r.ok(), "{:?}", r.faults);
    factum_engine::restore(backup.path(), restored.path(), false).unwrap();
    assert!(Engine::open_with(restored.path(), config(None)).is_err());
    rt.block_on(async {
        let (engine, _) = Engine::open_with(restored.path(), config(Some(&k))).unwrap();
        assert_eq!(all_emails(&engine).await, want);
        engine.close().unwrap();
    });
}

#[test]
fn a_clear_store_is_taken_over_and_rekey_rewraps_without_rewriting() {
    let rt = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    rt.block_on(async {
        let (engine, _) = Engine::open_with(dir.path(), config(None)).unwrap();
        write(&engine, 0, 300).await;
        // Some of it compressed in the clear: compaction with the key
        // takes those too.
        let r = engine
            .compact(
                CompressPolicy::Sealed,
                Throttle::default(),
                &Default::default(),
            )
            .unwrap();
        assert!(r.compressed > 0, "{r:?}");
        engine.close().unwrap();
    });
    let clear = segment_bytes(dir.path()).len();
    rt.block_on(async {
        // With a key: the next frames go to a new, encrypted segment.
        let (engine, _) = Engine::open_with(dir.path(), config(Some(&k))).unwrap();
        write(&engine, 300, 100).await;
        assert_eq!(all_emails(&engine).await, expected(400));
        // Compaction rewrites the clear sealed segments encrypted.
        engine
            .compact(
                CompressPolicy::Sealed,
                Throttle::default(),
                &Default::default(),
            )
            .unwrap();
        assert_eq!(all_emails(&engine).await, expected(400));
        engine.close().unwrap();
    });
    assert!(segment_bytes(dir.path()).len() > clear);
    // Every segment is encrypted now: the active one since the open, the
    // sealed ones (compressed in the clear or not) by the compaction.
    let segs = segment_bytes(dir.path());
    let plain: Vec<_> = segs
        .iter()
        .filter(|(_, b)| u32::from_le_bytes(b[24..28].try_into().unwrap()) & 32 == 0)
        .map(|(n, _)| n.clone())
        .collect();
    assert!(plain.is_empty(), "segments still in the clear: {plain:?}");

    // Rekey: every data key re-wrapped, no data rewritten.
    let new = key();
    let before: Vec<_> = segment_bytes(dir.path())
        .into_iter()
        .map(|(n, b)| (n, b[4096..].to_vec()))
        .collect();
    let r = factum_engine::rekey_store(dir.path(), &k, &new).unwrap();
    assert!(r.moved > 0, "{r:?}");
    let again = factum_engine::rekey_store(dir.path(), &k, &new).unwrap();
    assert_eq!((again.moved, again.already), (0, r.moved), "{again:?}");
    let after: Vec<_> = segment_bytes(dir.path())
        .into_iter()
        .map(|(n, b)| (n, b[4096..].to_vec()))
        .collect();
    assert_eq!(before, after, "rekey rewrote data");
    rt.block_on(async {
        let (engine, _) = Engine::open_with(dir.path(), config(Some(&new))).unwrap();
        assert_eq!(all_emails(&engine).await, expected(400));
        engine.close().unwrap();
    });
    // A key that is neither: refused, nothing changed.
    assert!(factum_engine::rekey_store(dir.path(), &key(), &key()).is_err());
}

#[test]
fn archived_encrypted_segments_read_back_and_rekey_through_their_stubs() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let rt = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let arch = dir.path().join("archive");
    std::fs::create_dir_all(&arch).unwrap();
    let k = key();
    let with_archive = |key: &MasterKey| EngineConfig {
        archive: Some(Arc::new(factum_engine::LocalArchive::new(&arch).unwrap())
            as Arc<dyn factum_engine::Archive>),
        ..config(Some(key))
    };
    let before = rt.block_on(async {
        let (engine, _) = Engine::open_with(&data, with_archive(&k)).unwrap();
        write(&engine, 0, 300).await;
        // Some sealed segments compressed: stubs of both kinds.
        engine
            .compact(
                CompressPolicy::Sealed,
                Throttle::default(),
                &AtomicBool::new(false),
            )
            .unwrap();
        write(&engine, 300, 200).await;
        let r = engine
            .archive_segments(
                factum_engine::ArchiveOptions {
                    evict_after: Some(std::time::Duration::ZERO),
                },
                &AtomicBool::new(false),
            )
            .unwrap();
        assert!(r.evicted >= 2, "{r:?}");
        let got = all_emails(&engine).await;
        engine.close().unwrap();
        got
    });
    assert_eq!(before, expected(500));
    assert_no_plaintext(&arch);
    // Rekey re-wraps the stubs' keys; the archived objects stay as they are.
    let objects = store_files(&arch);
    let new = key();
    factum_engine::rekey_store(&data, &k, &new).unwrap();
    assert_eq!(store_files(&arch), objects);
    // A backup copies the archived segments whole, with the stubs' (new)
    // key slots: restored, they read with the new key and no archive.
    let backup = dir.path().join("backup");
    rt.block_on(async {
        let (engine, _) = Engine::open_with(&data, with_archive(&new)).unwrap();
        assert_eq!(all_emails(&engine).await, before);
        engine.backup(&backup).unwrap();
        engine.close().unwrap();
    });
    assert_no_plaintext(&backup);
    let restored = dir.path().join("restored");
    factum_engine::restore(&backup, &restored, false).unwrap();
    let r = factum_engine::verify_store(&restored, None, Some(&new)).unwrap();
    assert!(r.ok(), "{:?}", r.faults);
    assert_eq!(r.archived_segments, 0);
    rt.block_on(async {
        let (engine, _) = Engine::open_with(&restored, config(Some(&new))).unwrap();
        assert_eq!(all_emails(&engine).await, before);
        engine.close().unwrap();
    });
    let r = factum_engine::verify_store(
        &data,
        Some(Arc::new(factum_engine::LocalArchive::new(&arch).unwrap())),
        Some(&new),
    )
    .unwrap();
    assert!(r.ok(), "{:?}", r.faults);
}

/// Power loss inside the one write of an encrypted batch (the grouped page
/// layout, ADR 45): from the files before the batch (acknowledged, closed)
/// and after it, images of the disk in which any subset of the batch's
/// 4 KiB units (or 512-byte sectors: torn slots) holds the new bytes and
/// the rest the old, or the file never grew. Every image opens, holds every
/// acknowledged event, holds the batch whole or not at all, and verifies.
#[test]
fn power_loss_inside_an_encrypted_batch_keeps_what_was_acknowledged() {
    let rt = common::runtime();
    let k = key();
    let cfg = EngineConfig {
        segment_bytes: 8 << 20,
        encryption: Some(k.clone()),
        ..EngineConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let (engine, _) = Engine::open_with(dir.path(), cfg.clone()).unwrap();
        write(&engine, 0, 30).await;
        engine.close().unwrap();
    });
    let base = store_files(dir.path());
    // One append of 120 events (~300 KB): the last page's next version in
    // its other slot, then fresh first slots over two groups of pages.
    rt.block_on(async {
        let (engine, _) = Engine::open_with(dir.path(), cfg.clone()).unwrap();
        let events = (0..120)
            .map(|i| {
                EventData::json(
                    "Registered",
                    &serde_json::json!({"email": format!("BATCH-{i:04}"), "pad": "y".repeat(2400)}),
                )
                .unwrap()
            })
            .collect::<Vec<_>>();
        engine
            .append(
                StreamName::new("customer-batch").unwrap(),
                ExpectedRevision::Any,
                events,
            )
            .await
            .unwrap();
        engine.close().unwrap();
    });
    let (seg_name, new) = segment_bytes(dir.path()).pop().unwrap();
    let old = base
        .iter()
        .find(|(n, _)| *n == seg_name)
        .map(|(_, b)| b.clone())
        .unwrap();
    let images: u64 = std::env::var("FACTUM_CRASH_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut state = 0x9e37_79b9_7f4a_7c15u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
    let mut coin = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut whole, mut none) = (0, 0);
    for i in 0..images {
        let unit = if i % 2 == 0 { 4096 } else { 512 };
        let len = if i % 10 == 7 { old.len() } else { new.len() };
        let mut img = old.clone();
        img.resize(new.len().max(old.len()), 0);
        // Units that differ: each new or old at random; every fifth image
        // all new but one, every tenth all new (the batch must be whole).
        let units: Vec<usize> = (0..new.len())
            .step_by(unit)
            .filter(|&at| {
                new[at..(at + unit).min(new.len())] != img[at..(at + unit).min(new.len())]
            })
            .collect();
        let left_out = (coin() as usize) % units.len().max(1);
        for (j, &at) in units.iter().enumerate() {
            let end = (at + unit).min(new.len());
            let take = match i % 10 {
                0 => true,
                4 | 9 => j != left_out,
                _ => coin() % 2 == 0,
            };
            if take {
                img[at..end].copy_from_slice(&new[at..end]);
            }
        }
        img.truncate(len);
        let image = tempfile::tempdir().unwrap();
        for (name, bytes) in &base {
            let bytes = if *name == seg_name { &img } else { bytes };
            std::fs::write(image.path().join(name), bytes).unwrap();
        }
        let emails = rt.block_on(async {
            let (engine, _) = Engine::open_with(image.path(), cfg.clone())
                .unwrap_or_else(|e| panic!("image {i} (unit {unit}) does not open: {e}"));
            let got = all_emails(&engine).await;
            engine.close().unwrap();
            got
        });
        assert_eq!(
            emails[..30.min(emails.len())],
            expected(30)[..],
            "image {i} (unit {unit}): acknowledged events lost"
        );
        match emails.len() - 30 {
            0 => none += 1,
            120 => whole += 1,
            n => panic!("image {i} (unit {unit}): {n} of the batch's 120 events"),
        }
        let r = factum_engine::verify_store(image.path(), None, Some(&k)).unwrap();
        assert!(r.ok(), "image {i} (unit {unit}): {:?}", r.faults);
    }
    eprintln!("{images} images: the batch whole in {whole}, absent in {none}");
    assert!(whole > 0 && none > 0, "whole {whole}, absent {none}");
}

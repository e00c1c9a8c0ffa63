//! kill -9 during `forget` leaves each key either whole or gone, never
//! half (ADR 36): a real child process forgets subjects one after another
//! (each a rewrite of the key file: write, fsync, rename, fsync the
//! directory) and is killed with SIGKILL at a different moment each
//! round; the key store then opens, holds exactly the original keys of a
//! suffix of the subjects, and none of the subjects the child reported.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use factum_crypto::{FileKeyStore, SecretKey, SubjectKey};

const CHILD_DIR: &str = "FACTUM_TEST_FORGET_CHILD_DIR";
const CHILD_KEY: &str = "FACTUM_TEST_FORGET_CHILD_KEY";
const SUBJECTS: usize = 120;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The child: runs only when the parent starts it.
#[test]
fn forgetting_child() {
    let (Ok(dir), Ok(key)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_KEY)) else {
        return;
    };
    let store = FileKeyStore::open(dir.as_ref(), SecretKey::from_hex(&key).unwrap()).unwrap();
    for i in 0..SUBJECTS {
        assert!(store.forget_blocking(&format!("subject-{i}")).unwrap());
        println!("forgot {i}");
    }
    println!("done");
}

#[test]
fn sigkill_during_forget_leaves_each_key_whole_or_gone() {
    let mut killed_mid_way = 0;
    for round in 0..4 {
        let dir = tempfile::tempdir().unwrap();
        let master = SecretKey::random().unwrap();
        let store = FileKeyStore::open(dir.path(), master.clone()).unwrap();
        let keys: Vec<SubjectKey> = (0..SUBJECTS)
            .map(|i| {
                store
                    .find_or_create_blocking(&format!("subject-{i}"))
                    .unwrap()
            })
            .collect();
        drop(store);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "forgetting_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_KEY, hex(master.expose()))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let wait_for = 1 + round * 25;
        let mut reported = 0;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if line.starts_with("forgot ") {
                reported += 1;
                if reported == wait_for {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_eq!(reported, wait_for, "the child reported too few forgets");

        let store = FileKeyStore::open(dir.path(), master).unwrap();
        let remaining = store.len();
        assert!(
            remaining <= SUBJECTS - reported,
            "a reported forget came back"
        );
        if remaining > 0 {
            killed_mid_way += 1;
        }
        for (i, key) in keys.iter().enumerate() {
            let found = store.find_now(&format!("subject-{i}"));
            if i < SUBJECTS - remaining {
                assert!(found.is_none(), "round {round}: subject-{i} is back");
            } else {
                let found = found.unwrap_or_else(|| panic!("round {round}: subject-{i} lost"));
                assert_eq!(found.id, key.id);
                assert_eq!(
                    found.key.expose(),
                    key.key.expose(),
                    "subject-{i}: half a key"
                );
            }
        }
        assert!(!dir.path().join("subject-keys.tmp").exists());
    }
    assert!(
        killed_mid_way > 0,
        "every child finished before it was killed"
    );
}

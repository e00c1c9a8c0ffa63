//! Proof of crypto-shredding on the embedded engine (issue 19, ADR 36):
//! personal fields never reach the disk in plaintext; after `forget`
//! neither the live store nor a backup taken before it and restored
//! afterwards reveals them, with every key found on disk tried; other
//! subjects read back intact; the audit event names who and whom.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use factum_core::managed::FORGOTTEN_SUBJECTS_STREAM;
use factum_core::{
    EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, RecordedEvent, StreamName,
    Subscribe, SubscriptionStart,
};
use factum_crypto::{FileKeyStore, SecretKey, Shredding, SubjectKey};
use factum_engine::Engine;
use serde_json::{json, Value};

type Store = Shredding<Engine>;

fn open(dir: &Path, master: &SecretKey) -> (Arc<Engine>, Store) {
    let engine = Arc::new(Engine::open(dir).unwrap());
    let keys = FileKeyStore::open(dir, master.clone()).unwrap();
    let store = Shredding::new(engine.clone(), Arc::new(keys));
    (engine, store)
}

fn close(engine: Arc<Engine>, store: Store) {
    drop(store);
    engine.close().unwrap();
    drop(engine);
}

/// Distinctive values: none of them may ever be on disk.
fn email(who: &str) -> String {
    format!("{who}-mail-5e1f9c2a@example.org")
}
fn name(who: &str) -> String {
    format!("{who} Quillfeather-7d41")
}
fn note(who: &str) -> String {
    format!("{who}-whole-data-secret-0b8e")
}

fn registered(who: &str) -> EventData {
    let mut e = EventData::json(
        "Registered",
        &json!({"email": email(who), "name": name(who), "plan": format!("{who}-plan-visible")}),
    )
    .unwrap();
    e.metadata =
        serde_json::to_vec(&json!({"$subject": who, "$personalFields": ["email", "name"]}))
            .unwrap()
            .into();
    e
}

fn noted(who: &str) -> EventData {
    let mut e = EventData::json("Noted", &json!({"text": note(who)})).unwrap();
    e.metadata = serde_json::to_vec(&json!({"$subject": who}))
        .unwrap()
        .into();
    e
}

async fn write(store: &Store, who: &str) {
    store
        .append(
            StreamName::new(format!("customer-{who}")).unwrap(),
            ExpectedRevision::Any,
            vec![registered(who), noted(who)],
        )
        .await
        .unwrap();
}

async fn read(store: &Store, who: &str) -> Vec<RecordedEvent> {
    store
        .read_stream(ReadStream::forwards(
            StreamName::new(format!("customer-{who}")).unwrap(),
        ))
        .await
        .unwrap()
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn assert_intact(events: &[RecordedEvent], who: &str) {
    assert_eq!(events.len(), 2);
    assert_eq!(
        json_of(&events[0].data),
        json!({"email": email(who), "name": name(who), "plan": format!("{who}-plan-visible")})
    );
    assert_eq!(json_of(&events[1].data), json!({"text": note(who)}));
    assert!(json_of(&events[0].metadata).get("$erased").is_none());
}

fn assert_erased(events: &[RecordedEvent], who: &str) {
    assert_eq!(events.len(), 2);
    assert_eq!(
        json_of(&events[0].data),
        json!({"email": null, "name": null, "plan": format!("{who}-plan-visible")})
    );
    assert_eq!(json_of(&events[1].data), Value::Null);
    for e in events {
        let meta = json_of(&e.metadata);
        assert_eq!(meta["$erased"], json!(true));
        assert_eq!(meta["$subject"], json!(who));
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dirs` holding `needle`.
fn files_holding(dirs: &[&Path], needle: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in dirs {
        files_under(dir, &mut files);
    }
    files
        .into_iter()
        .filter(|f| contains(&std::fs::read(f).unwrap(), needle.as_bytes()))
        .collect()
}

fn secrets(who: &str) -> [String; 3] {
    [email(who), name(who), note(who)]
}

#[tokio::test]
async fn personal_fields_never_reach_the_disk_in_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::random().unwrap();
    let (engine, store) = open(dir.path(), &master);
    write(&store, "alice").await;
    write(&store, "bob").await;
    // Every read API decrypts: stream, $all, $ce- links, subscription.
    assert_intact(&read(&store, "alice").await, "alice");
    let all = store.read_all(ReadAll::forwards()).await.unwrap();
    assert_eq!(json_of(&all[0].data)["email"], json!(email("alice")));
    let category = store
        .read_stream(ReadStream::forwards(
            StreamName::new("$ce-customer").unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(json_of(&category[2].data)["name"], json!(name("bob")));
    let mut sub = store
        .subscribe(Subscribe::all(SubscriptionStart::Beginning, None))
        .await
        .unwrap();
    let first = sub.next_event().await.unwrap().unwrap();
    assert_eq!(json_of(&first.data)["email"], json!(email("alice")));
    drop(sub);
    close(engine, store);
    for who in ["alice", "bob"] {
        for secret in secrets(who) {
            let found = files_holding(&[dir.path()], &secret);
            assert!(found.is_empty(), "{secret} in plaintext in {found:?}");
        }
        // The scan does find what is not personal: it can fail.
        let plan = format!("{who}-plan-visible");
        assert!(
            !files_holding(&[dir.path()], &plan).is_empty(),
            "{plan} not found"
        );
    }
}

#[tokio::test]
async fn forget_erases_the_live_store_and_a_backup_taken_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let master = SecretKey::random().unwrap();
    let (engine, store) = open(dir.path(), &master);
    write(&store, "alice").await;
    write(&store, "bob").await;
    let alice_key_before = find_key(dir.path(), &master, "alice");
    engine.backup(backup.path()).unwrap();

    let done = store.forget("alice", "admin (test)").await.unwrap();
    assert!(done.had_key);
    assert_erased(&read(&store, "alice").await, "alice");
    assert_intact(&read(&store, "bob").await, "bob");
    // A subscription from the start sees the placeholder too.
    let mut sub = store
        .subscribe(Subscribe::all(SubscriptionStart::Beginning, None))
        .await
        .unwrap();
    let first = sub.next_event().await.unwrap().unwrap();
    assert_eq!(json_of(&first.data)["email"], Value::Null);
    drop(sub);
    // The audit event: who, when, which subject.
    let audit = store
        .read_stream(ReadStream::forwards(
            StreamName::new(FORGOTTEN_SUBJECTS_STREAM).unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    let body = json_of(&audit[0].data);
    assert_eq!(body["subject"], json!("alice"));
    assert_eq!(body["by"], json!("admin (test)"));
    assert!(body["at"].as_str().unwrap().starts_with("20"));
    // Forgetting again is recorded, and finds no key.
    assert!(!store.forget("alice", "admin (test)").await.unwrap().had_key);
    close(engine, store);

    // The backup taken before forget, restored over the live store: it
    // reads the live key store, in which alice has no key.
    factum_engine::restore(backup.path(), dir.path(), true).unwrap();
    let (engine, store) = open(dir.path(), &master);
    assert_erased(&read(&store, "alice").await, "alice");
    assert_intact(&read(&store, "bob").await, "bob");
    // A new event of alice gets a new key; her old data stays erased.
    write(&store, "alice").await;
    let events = read(&store, "alice").await;
    assert_erased(&events[..2], "alice");
    assert_intact(&events[2..], "alice");
    let old = store
        .inner()
        .read_stream(ReadStream::forwards(
            StreamName::new("customer-alice").unwrap(),
        ))
        .await
        .unwrap();
    close(engine, store);

    // Try every key that can be found on disk — every 32-byte window of
    // every file that is not a segment, the master key, every key the key
    // store holds — against alice's old ciphertexts, in the live store and
    // the backup.
    let mut candidates = std::collections::HashSet::from([*master.expose()]);
    let mut files = Vec::new();
    files_under(dir.path(), &mut files);
    files_under(backup.path(), &mut files);
    for f in files
        .iter()
        .filter(|f| f.extension().is_none_or(|e| e != "seg"))
    {
        let bytes = std::fs::read(f).unwrap();
        candidates.extend(bytes.windows(32).map(|w| <[u8; 32]>::try_from(w).unwrap()));
    }
    let keys = FileKeyStore::open(dir.path(), master.clone()).unwrap();
    assert_eq!(keys.len(), 2, "bob's key and alice's new one");
    candidates.insert(*keys.find_now("alice").unwrap().key.expose());
    candidates.insert(*keys.find_now("bob").unwrap().key.expose());
    assert!(
        candidates
            .iter()
            .all(|c| c != alice_key_before.key.expose()),
        "alice's destroyed key is still on disk"
    );
    for (i, candidate) in candidates.iter().enumerate() {
        let key = SubjectKey {
            id: alice_key_before.id,
            key: SecretKey::from_bytes(*candidate),
        };
        for event in &old[..2] {
            let personal = factum_crypto::convention::personal(&event.metadata)
                .unwrap()
                .unwrap();
            let binary = false;
            let opened = factum_crypto::convention::decrypt(
                &personal,
                event.id,
                &event.data,
                binary,
                Some(&key),
            );
            assert!(opened.is_err(), "candidate {i} opens alice's old data");
        }
    }
    // The plaintext is nowhere, in the store or the backup.
    for secret in secrets("alice") {
        let found = files_holding(&[dir.path(), backup.path()], &secret);
        assert!(found.is_empty(), "{secret} in plaintext in {found:?}");
    }
}

fn find_key(dir: &Path, master: &SecretKey, subject: &str) -> SubjectKey {
    // The store holds the key file open for appending only; a second
    // reader sees the same records.
    let keys = FileKeyStore::open(dir, master.clone()).unwrap();
    keys.find_now(subject).unwrap()
}

#[tokio::test]
async fn events_without_a_subject_pass_through_unchanged_and_bad_conventions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::random().unwrap();
    let (engine, store) = open(dir.path(), &master);
    let plain = EventData::json("Plain", &json!({"email": "x@example.org"})).unwrap();
    let data = plain.data.clone();
    let stream = StreamName::new("plain-1").unwrap();
    store
        .append(stream.clone(), ExpectedRevision::Any, vec![plain])
        .await
        .unwrap();
    let raw = store
        .inner()
        .read_stream(ReadStream::forwards(stream))
        .await
        .unwrap();
    assert_eq!(raw[0].data, data, "stored byte for byte");
    let mut bad = EventData::json("Bad", &json!([1, 2])).unwrap();
    bad.metadata = br#"{"$subject":"s","$personalFields":["email"]}"#.to_vec().into();
    let e = store
        .append(
            StreamName::new("bad-1").unwrap(),
            ExpectedRevision::Any,
            vec![bad],
        )
        .await
        .unwrap_err();
    assert!(matches!(e, factum_core::Error::InvalidInput(_)), "{e}");
    // The audit stream is Factum's: clients' writes are refused (ADR 16).
    let audit = StreamName::new(FORGOTTEN_SUBJECTS_STREAM).unwrap();
    assert!(factum_core::managed::check_client_write(&audit).is_err());
    close(engine, store);
}

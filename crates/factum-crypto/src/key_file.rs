//! The engine's subject-key store: one file, `subject-keys`, in the data
//! directory, beside the log but never part of it (backups leave it out,
//! restores keep the live one).
//!
//! ```text
//! header   "FXSK" | version 1 | seal(master key, "factum subject-keys v1 file key", file key)
//! record*  length u32 LE | crc32c u32 LE of the sealed bytes |
//!          seal(file key, "factum subject-keys v1 entry", key id (16) | key (32) | subject)
//! ```
//!
//! The file key is random and exists only sealed in this file's header.
//! A new subject's key is appended as a record and fdatasynced before it
//! is used, so no event is ever written under a key that could be lost.
//! `forget` writes the whole file again without the subject, under a
//! fresh file key (write `subject-keys.tmp`, fsync, rename over, fsync the
//! directory): the rename is atomic, so after a crash (kill -9 or power
//! loss) the key is either still all there or gone, never half. Blocks
//! of the previous file that the file system has not reused are sealed
//! under the previous file key, which exists nowhere but in the previous
//! header: ADR 36 says exactly what that protects and what not.
//!
//! Open: a header that does not open under the master key is refused (the
//! wrong key, or damage); a last record cut short or failing its CRC is a
//! torn append (never acknowledged: no event used that key) and is cut;
//! anything else damaged is refused naming the offset.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use zeroize::Zeroizing;

use crate::key_store::{check_subject, KeyFuture, SubjectKey, SubjectKeys, KEY_ID_LEN};
use crate::master::{SecretKey, KEY_LEN};
use crate::seal::{open, seal};
use crate::CryptoError;

/// The key store's file name in a data directory.
pub const KEY_FILE_NAME: &str = "subject-keys";
/// Where a rewrite is prepared.
const TMP_NAME: &str = "subject-keys.tmp";
const MAGIC: &[u8; 4] = b"FXSK";
const VERSION: u8 = 1;
const HEADER_AAD: &[u8] = b"factum subject-keys v1 file key";
const ENTRY_AAD: &[u8] = b"factum subject-keys v1 entry";
const HEADER_LEN: usize = 5 + KEY_LEN + crate::seal::OVERHEAD;

/// Subject keys in a file of the data directory. Every key is held in
/// memory (about 100 bytes a subject).
#[derive(Clone)]
pub struct FileKeyStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    master: SecretKey,
    state: Mutex<State>,
}

struct State {
    /// The file, open for appending.
    file: File,
    file_key: SecretKey,
    keys: HashMap<String, SubjectKey>,
}

impl FileKeyStore {
    /// Opens (or creates) `dir/subject-keys` under `master`.
    pub fn open(dir: &Path, master: SecretKey) -> Result<Self, CryptoError> {
        let path = dir.join(KEY_FILE_NAME);
        let tmp = dir.join(TMP_NAME);
        // A rewrite interrupted before its rename: the old file is whole.
        if tmp.exists() {
            std::fs::remove_file(&tmp).map_err(|e| CryptoError::io(&tmp, "removing", e))?;
        }
        let state = if path.exists() {
            load(&path, &master)?
        } else {
            let file_key = SecretKey::random()?;
            write_new(dir, &master, &file_key, &HashMap::new())?;
            State {
                file: append_handle(&path)?,
                file_key,
                keys: HashMap::new(),
            }
        };
        Ok(FileKeyStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                master,
                state: Mutex::new(state),
            }),
        })
    }

    /// The number of subjects with a key.
    pub fn len(&self) -> usize {
        self.inner.state.lock().keys.len()
    }

    /// True when no subject has a key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The subject's key, from memory.
    pub fn find_now(&self, subject: &str) -> Option<SubjectKey> {
        self.inner.state.lock().keys.get(subject).cloned()
    }

    /// Blocking: the subject's key, appended and fdatasynced when new.
    pub fn find_or_create_blocking(&self, subject: &str) -> Result<SubjectKey, CryptoError> {
        check_subject(subject)?;
        let mut state = self.inner.state.lock();
        if let Some(key) = state.keys.get(subject) {
            return Ok(key.clone());
        }
        let key = SubjectKey::random()?;
        let record = encode_record(&state.file_key, subject, &key)?;
        let path = self.inner.dir.join(KEY_FILE_NAME);
        state
            .file
            .write_all(&record)
            .and_then(|_| state.file.sync_data())
            .map_err(|e| CryptoError::io(&path, "appending a key to", e))?;
        state.keys.insert(subject.to_owned(), key.clone());
        Ok(key)
    }

    /// Blocking: rewrites the file without `subject`, under a fresh file
    /// key; `true` when it had a key.
    pub fn forget_blocking(&self, subject: &str) -> Result<bool, CryptoError> {
        let mut state = self.inner.state.lock();
        if !state.keys.contains_key(subject) {
            return Ok(false);
        }
        let mut keys = state.keys.clone();
        keys.remove(subject);
        let file_key = SecretKey::random()?;
        write_new(&self.inner.dir, &self.inner.master, &file_key, &keys)?;
        // The rename is durable: from here the key is gone.
        let path = self.inner.dir.join(KEY_FILE_NAME);
        state.file = append_handle(&path)?;
        state.file_key = file_key;
        state.keys = keys;
        Ok(true)
    }
}

/// What [`FileKeyStore::rekey`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rekeyed {
    /// The file was sealed under the old master key and now is under the
    /// new one (with a fresh file key); `subjects` keys carried over.
    Resealed {
        /// Subjects with a key.
        subjects: usize,
    },
    /// The file already opens under the new master key (an earlier rekey
    /// finished, or was interrupted after its rename); nothing written.
    AlreadyNew {
        /// Subjects with a key.
        subjects: usize,
    },
    /// The directory holds no subject-key file; nothing to do.
    NoStore,
}

impl FileKeyStore {
    /// Blocking, offline: re-seals `dir/subject-keys` from the `old` master
    /// key to the `new` one, under a fresh file key, so the old master key
    /// can be retired (ADR 42). The caller holds the data
    /// directory's lock (no store may have the file open). Written beside
    /// the live file, fsynced and renamed over it: after a crash the file
    /// opens under exactly one of the two keys, and running the rekey again
    /// finishes it (`AlreadyNew` once done). A file that opens under
    /// neither key is refused, nothing written.
    pub fn rekey(dir: &Path, old: &SecretKey, new: &SecretKey) -> Result<Rekeyed, CryptoError> {
        let path = dir.join(KEY_FILE_NAME);
        let tmp = dir.join(TMP_NAME);
        if tmp.exists() {
            std::fs::remove_file(&tmp).map_err(|e| CryptoError::io(&tmp, "removing", e))?;
        }
        if !path.exists() {
            return Ok(Rekeyed::NoStore);
        }
        match load(&path, new) {
            Ok(state) => {
                return Ok(Rekeyed::AlreadyNew {
                    subjects: state.keys.len(),
                })
            }
            Err(CryptoError::WrongMasterKey(_)) => {}
            Err(other) => return Err(other),
        }
        let state = match load(&path, old) {
            Ok(state) => state,
            Err(CryptoError::WrongMasterKey(p)) => {
                return Err(CryptoError::BadMasterKey(format!(
                    "{} opens under neither the old nor the new master key: check both keys",
                    p.display()
                )))
            }
            Err(other) => return Err(other),
        };
        drop(state.file);
        write_new(dir, new, &SecretKey::random()?, &state.keys)?;
        Ok(Rekeyed::Resealed {
            subjects: state.keys.len(),
        })
    }
}

impl SubjectKeys for FileKeyStore {
    fn find<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, Option<SubjectKey>> {
        Box::pin(std::future::ready(Ok(self.find_now(subject))))
    }

    fn find_or_create<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, SubjectKey> {
        if let Some(key) = self.find_now(subject) {
            return Box::pin(std::future::ready(Ok(key)));
        }
        let store = self.clone();
        let subject = subject.to_owned();
        Box::pin(blocking(move || store.find_or_create_blocking(&subject)))
    }

    fn forget<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, bool> {
        let store = self.clone();
        let subject = subject.to_owned();
        Box::pin(blocking(move || store.forget_blocking(&subject)))
    }
}

/// Runs file I/O off the async runtime's workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CryptoError> + Send + 'static,
) -> Result<T, CryptoError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CryptoError::Io(format!("the key store's task failed: {e}")))?
}

fn append_handle(path: &Path) -> Result<File, CryptoError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| CryptoError::io(path, "opening", e))
}

fn encode_record(
    file_key: &SecretKey,
    subject: &str,
    key: &SubjectKey,
) -> Result<Vec<u8>, CryptoError> {
    let mut plain = Zeroizing::new(Vec::with_capacity(KEY_ID_LEN + KEY_LEN + subject.len()));
    plain.extend_from_slice(&key.id);
    plain.extend_from_slice(key.key.expose());
    plain.extend_from_slice(subject.as_bytes());
    let sealed = seal(file_key, ENTRY_AAD, &plain)?;
    let mut record = Vec::with_capacity(8 + sealed.len());
    record.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32c::crc32c(&sealed).to_le_bytes());
    record.extend_from_slice(&sealed);
    Ok(record)
}

/// Writes a whole key file beside the live one, fsyncs it, renames it
/// over, fsyncs the directory.
fn write_new(
    dir: &Path,
    master: &SecretKey,
    file_key: &SecretKey,
    keys: &HashMap<String, SubjectKey>,
) -> Result<(), CryptoError> {
    let tmp = dir.join(TMP_NAME);
    let path = dir.join(KEY_FILE_NAME);
    let mut body = Vec::with_capacity(HEADER_LEN + keys.len() * 128);
    body.extend_from_slice(MAGIC);
    body.push(VERSION);
    body.extend_from_slice(&seal(master, HEADER_AAD, file_key.expose())?);
    for (subject, key) in keys {
        body.extend_from_slice(&encode_record(file_key, subject, key)?);
    }
    let mut f = File::create(&tmp).map_err(|e| CryptoError::io(&tmp, "creating", e))?;
    f.write_all(&body)
        .and_then(|_| f.sync_all())
        .map_err(|e| CryptoError::io(&tmp, "writing", e))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(|e| CryptoError::io(&path, "renaming into", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CryptoError::io(dir, "fsync of the directory", e))
}

fn load(path: &Path, master: &SecretKey) -> Result<State, CryptoError> {
    let bytes =
        Zeroizing::new(std::fs::read(path).map_err(|e| CryptoError::io(path, "reading", e))?);
    let corrupt = |offset: usize, detail: &str| CryptoError::Corrupt {
        file: path.to_path_buf(),
        offset: offset as u64,
        detail: detail.to_owned(),
    };
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err(corrupt(0, "not a subject-key file (bad header)"));
    }
    if bytes[4] != VERSION {
        return Err(corrupt(
            4,
            &format!("version {}, this build knows {VERSION}", bytes[4]),
        ));
    }
    let Some(file_key) = open(master, HEADER_AAD, &bytes[5..HEADER_LEN]) else {
        return Err(CryptoError::WrongMasterKey(path.to_path_buf()));
    };
    let file_key: [u8; KEY_LEN] = file_key
        .as_slice()
        .try_into()
        .map_err(|_| corrupt(5, "the file key has the wrong length"))?;
    let file_key = SecretKey::from_bytes(file_key);
    let mut keys = HashMap::new();
    let mut at = HEADER_LEN;
    let mut torn = None;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let (len, crc) = match rest {
            [a, b, c, d, e, f, g, h, ..] => (
                u32::from_le_bytes([*a, *b, *c, *d]) as usize,
                u32::from_le_bytes([*e, *f, *g, *h]),
            ),
            _ => {
                torn = Some(at);
                break;
            }
        };
        let end = at.saturating_add(8).saturating_add(len);
        if end > bytes.len() {
            torn = Some(at);
            break;
        }
        let sealed = &bytes[at + 8..end];
        if crc32c::crc32c(sealed) != crc {
            if end == bytes.len() {
                torn = Some(at);
                break;
            }
            return Err(corrupt(at, "a key record fails its checksum"));
        }
        let plain = Zeroizing::new(
            open(&file_key, ENTRY_AAD, sealed)
                .ok_or_else(|| corrupt(at, "a key record does not open under the file key"))?,
        );
        if plain.len() <= KEY_ID_LEN + KEY_LEN {
            return Err(corrupt(at, "a key record is too short"));
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&plain[..KEY_ID_LEN]);
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&plain[KEY_ID_LEN..KEY_ID_LEN + KEY_LEN]);
        let subject = std::str::from_utf8(&plain[KEY_ID_LEN + KEY_LEN..])
            .map_err(|_| corrupt(at, "a key record's subject is not UTF-8"))?
            .to_owned();
        let key = SecretKey::from_bytes(key);
        keys.insert(subject, SubjectKey { id, key });
        at = end;
    }
    let file = append_handle(path)?;
    if let Some(cut) = torn {
        tracing::warn!(file = %path.display(), offset = cut, "cut a torn key record (an append a crash interrupted)");
        file.set_len(cut as u64)
            .and_then(|_| file.sync_all())
            .map_err(|e| CryptoError::io(path, "cutting a torn record of", e))?;
    }
    Ok(State {
        file,
        file_key,
        keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_reopen_and_forget_rewrites_under_a_fresh_file_key() {
        let dir = tempfile::tempdir().unwrap();
        let master = SecretKey::random().unwrap();
        let store = FileKeyStore::open(dir.path(), master.clone()).unwrap();
        let a = store.find_or_create_blocking("a").unwrap();
        let b = store.find_or_create_blocking("b").unwrap();
        assert_eq!(store.find_or_create_blocking("a").unwrap().id, a.id);
        let header = std::fs::read(dir.path().join(KEY_FILE_NAME)).unwrap()[..HEADER_LEN].to_vec();
        drop(store);
        let store = FileKeyStore::open(dir.path(), master.clone()).unwrap();
        assert_eq!(store.find_now("a").unwrap().key.expose(), a.key.expose());
        assert!(store.forget_blocking("a").unwrap());
        assert!(!store.forget_blocking("a").unwrap());
        let after = std::fs::read(dir.path().join(KEY_FILE_NAME)).unwrap();
        assert_ne!(after[..HEADER_LEN], header[..], "a fresh file key");
        drop(store);
        let store = FileKeyStore::open(dir.path(), master).unwrap();
        assert!(store.find_now("a").is_none());
        assert_eq!(store.find_now("b").unwrap().id, b.id);
        let wrong = FileKeyStore::open(dir.path(), SecretKey::random().unwrap());
        assert!(matches!(wrong, Err(CryptoError::WrongMasterKey(_))));
    }

    #[test]
    fn a_torn_last_record_is_cut_and_damage_before_it_refused() {
        let dir = tempfile::tempdir().unwrap();
        let master = SecretKey::random().unwrap();
        let store = FileKeyStore::open(dir.path(), master.clone()).unwrap();
        store.find_or_create_blocking("a").unwrap();
        store.find_or_create_blocking("b").unwrap();
        drop(store);
        let path = dir.path().join(KEY_FILE_NAME);
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() - 5]).unwrap();
        let store = FileKeyStore::open(dir.path(), master.clone()).unwrap();
        assert_eq!(store.len(), 1);
        store.find_or_create_blocking("c").unwrap();
        drop(store);
        let mut damaged = std::fs::read(&path).unwrap();
        damaged[HEADER_LEN + 10] ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        let e = FileKeyStore::open(dir.path(), master).err().unwrap();
        assert!(matches!(e, CryptoError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn rekey_reseals_under_the_new_master_key_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let old = SecretKey::random().unwrap();
        let new = SecretKey::random().unwrap();
        assert_eq!(
            FileKeyStore::rekey(dir.path(), &old, &new).unwrap(),
            Rekeyed::NoStore
        );
        let store = FileKeyStore::open(dir.path(), old.clone()).unwrap();
        let a = store.find_or_create_blocking("a").unwrap();
        let b = store.find_or_create_blocking("b").unwrap();
        drop(store);
        let before = std::fs::read(dir.path().join(KEY_FILE_NAME)).unwrap();
        assert_eq!(
            FileKeyStore::rekey(dir.path(), &old, &new).unwrap(),
            Rekeyed::Resealed { subjects: 2 }
        );
        let after = std::fs::read(dir.path().join(KEY_FILE_NAME)).unwrap();
        assert_ne!(before[..HEADER_LEN], after[..HEADER_LEN]);
        assert!(matches!(
            FileKeyStore::open(dir.path(), old.clone()),
            Err(CryptoError::WrongMasterKey(_))
        ));
        let store = FileKeyStore::open(dir.path(), new.clone()).unwrap();
        assert_eq!(store.find_now("a").unwrap().key.expose(), a.key.expose());
        assert_eq!(store.find_now("b").unwrap().id, b.id);
        drop(store);
        assert_eq!(
            FileKeyStore::rekey(dir.path(), &old, &new).unwrap(),
            Rekeyed::AlreadyNew { subjects: 2 }
        );
        let third = SecretKey::random().unwrap();
        let e = FileKeyStore::rekey(dir.path(), &third, &SecretKey::random().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither the old nor the new"), "{e}");
    }
}

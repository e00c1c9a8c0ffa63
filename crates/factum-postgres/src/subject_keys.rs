//! Crypto-shredding's subject keys in PostgreSQL (ADR 36): the
//! `subject_keys` table of the store's schema (`sql/0004_subject_keys.sql`),
//! one row per subject holding its key sealed under the master key (the
//! subject as associated data, so a row copied to another subject does not
//! open). Keys are created on first use (`INSERT … ON CONFLICT DO NOTHING`,
//! then read back: two instances creating the same subject's key at once
//! agree on one) and cached for [`CACHE_TTL`], so a `forget` on another
//! instance takes effect here within that time; a `forget` here drops the
//! cached entry at once. `forget` is one `DELETE`: committed, the key is
//! gone; not committed, it is whole.
//!
//! Unlike the engine's key file, rows are sealed directly under the master
//! key: PostgreSQL keeps a deleted row in dead tuples until `VACUUM`, in
//! its WAL and in base backups, and there the master key opens it. ADR 36
//! says what that means and what to do (vacuum, rotate the master key).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use factum_crypto::key_store::{check_subject, KEY_ID_LEN};
use factum_crypto::master::KEY_LEN;
use factum_crypto::seal::{open, seal};
use factum_crypto::{CryptoError, KeyFuture, SecretKey, SubjectKey, SubjectKeys};
use parking_lot::Mutex;
use zeroize::Zeroizing;

use crate::PostgresStore;

/// How long a key (or its absence) is served from memory.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// Cached subjects at most (the cache is emptied when full).
const CACHE_LIMIT: usize = 100_000;
const AAD_PREFIX: &[u8] = b"factum subject key v1\0";

/// Subject keys in the store's schema.
pub struct PostgresKeys {
    pool: Pool,
    table: String,
    master: SecretKey,
    cache: Mutex<HashMap<String, (Option<SubjectKey>, Instant)>>,
}

impl PostgresStore {
    /// The store's subject keys, sealed under `master` (crypto-shredding,
    /// ADR 36).
    pub fn subject_keys(&self, master: SecretKey) -> PostgresKeys {
        PostgresKeys {
            pool: self.inner.pool.clone(),
            table: format!("{}.subject_keys", self.inner.tables.schema),
            master,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

fn db(context: &str, e: impl std::error::Error + 'static) -> CryptoError {
    CryptoError::Database(format!("PostgreSQL {context}: {}", crate::describe(&e)))
}

impl PostgresKeys {
    fn aad(subject: &str) -> Vec<u8> {
        [AAD_PREFIX, subject.as_bytes()].concat()
    }

    fn cached(&self, subject: &str) -> Option<Option<SubjectKey>> {
        let cache = self.cache.lock();
        let (key, at) = cache.get(subject)?;
        (at.elapsed() < CACHE_TTL).then(|| key.clone())
    }

    fn remember(&self, subject: &str, key: Option<SubjectKey>) {
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(subject.to_owned(), (key, Instant::now()));
    }

    async fn load(&self, subject: &str) -> Result<Option<SubjectKey>, CryptoError> {
        let client = self.pool.get().await.map_err(|e| db("connect", e))?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT key_id, sealed FROM {} WHERE subject = $1",
                    self.table
                ),
                &[&subject],
            )
            .await
            .map_err(|e| db("reading a subject key", e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id: Vec<u8> = row.get(0);
        let sealed: Vec<u8> = row.get(1);
        let damaged = |detail: &str| CryptoError::Corrupt {
            file: format!("table {}", self.table).into(),
            offset: 0,
            detail: format!("the key of subject {subject:?} {detail}"),
        };
        let plain = Zeroizing::new(open(&self.master, &Self::aad(subject), &sealed).ok_or_else(
            || damaged("does not open under this master key (the wrong key, or a damaged row)"),
        )?);
        let (Ok(id), Ok(key)) = (
            <[u8; KEY_ID_LEN]>::try_from(id.as_slice()),
            <[u8; KEY_LEN]>::try_from(plain.as_slice()),
        ) else {
            return Err(damaged("has the wrong length"));
        };
        Ok(Some(SubjectKey {
            id,
            key: SecretKey::from_bytes(key),
        }))
    }

    async fn find_key(&self, subject: &str) -> Result<Option<SubjectKey>, CryptoError> {
        if let Some(hit) = self.cached(subject) {
            return Ok(hit);
        }
        let key = self.load(subject).await?;
        self.remember(subject, key.clone());
        Ok(key)
    }

    async fn create(&self, subject: &str) -> Result<SubjectKey, CryptoError> {
        check_subject(subject)?;
        if let Some(key) = self.find_key(subject).await? {
            return Ok(key);
        }
        let fresh = SubjectKey::random()?;
        let sealed = seal(&self.master, &Self::aad(subject), fresh.key.expose())?;
        {
            let client = self.pool.get().await.map_err(|e| db("connect", e))?;
            client
                .execute(
                    &format!(
                        "INSERT INTO {} (subject, key_id, sealed) VALUES ($1, $2, $3) ON CONFLICT (subject) DO NOTHING",
                        self.table
                    ),
                    &[&subject, &&fresh.id[..], &sealed],
                )
                .await
                .map_err(|e| db("creating a subject key", e))?;
        }
        // Whichever instance won the insert, this is the key.
        let key = self.load(subject).await?.ok_or_else(|| {
            CryptoError::Database(format!(
                "the key of subject {subject:?} was forgotten while it was being created; write again"
            ))
        })?;
        self.remember(subject, Some(key.clone()));
        Ok(key)
    }

    async fn delete(&self, subject: &str) -> Result<bool, CryptoError> {
        let client = self.pool.get().await.map_err(|e| db("connect", e))?;
        let deleted = client
            .execute(
                &format!("DELETE FROM {} WHERE subject = $1", self.table),
                &[&subject],
            )
            .await
            .map_err(|e| db("forgetting a subject key", e))?;
        self.remember(subject, None);
        Ok(deleted > 0)
    }
}

/// What [`PostgresKeys::rekey`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgRekeyed {
    /// Rows that were sealed under the old master key and now are under
    /// the new one.
    pub resealed: u64,
    /// Rows already sealed under the new master key (an earlier rekey, or
    /// a key an instance created with the new key), left as they were.
    pub already_new: u64,
}

impl PostgresKeys {
    /// Checks that the master key opens the keys already stored (one row
    /// is enough: every row is sealed under the same master key unless a
    /// rekey is half done). `serve` calls it at start, so a wrong key is
    /// refused before any event is written, not at the first read.
    pub async fn check_master(&self) -> Result<(), CryptoError> {
        let client = self.pool.get().await.map_err(|e| db("connect", e))?;
        let rows = client
            .query(
                &format!("SELECT subject, sealed FROM {} LIMIT 1", self.table),
                &[],
            )
            .await
            .map_err(|e| db("reading subject keys", e))?;
        for row in rows {
            let subject: String = row.get(0);
            let sealed: Vec<u8> = row.get(1);
            if open(&self.master, &Self::aad(&subject), &sealed).is_none() {
                return Err(CryptoError::BadMasterKey(format!(
                    "the subject keys in table {} do not open under this master key (the wrong key, or a rekey to another key)",
                    self.table
                )));
            }
        }
        Ok(())
    }

    /// Re-seals every row from the `old` master key (this store's is the
    /// new one) in one transaction holding the table against writers:
    /// either every row moves or none. Rows already under the new key are
    /// left alone, so running it again after an interruption, or after an
    /// instance still on the old key created keys, finishes the job; a row
    /// that opens under neither key aborts it, nothing changed (ADR 42).
    pub async fn rekey(&self, old: &SecretKey) -> Result<PgRekeyed, CryptoError> {
        let mut client = self.pool.get().await.map_err(|e| db("connect", e))?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db("starting a rekey", e))?;
        tx.batch_execute(&format!(
            "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
            self.table
        ))
        .await
        .map_err(|e| db("locking the subject keys", e))?;
        let rows = tx
            .query(
                &format!(
                    "SELECT subject, sealed FROM {} ORDER BY subject",
                    self.table
                ),
                &[],
            )
            .await
            .map_err(|e| db("reading subject keys", e))?;
        let update = tx
            .prepare(&format!(
                "UPDATE {} SET sealed = $2 WHERE subject = $1",
                self.table
            ))
            .await
            .map_err(|e| db("preparing a rekey", e))?;
        let mut done = PgRekeyed {
            resealed: 0,
            already_new: 0,
        };
        for row in rows {
            let subject: String = row.get(0);
            let sealed: Vec<u8> = row.get(1);
            let aad = Self::aad(&subject);
            if open(&self.master, &aad, &sealed).is_some() {
                done.already_new += 1;
                continue;
            }
            let plain = Zeroizing::new(open(old, &aad, &sealed).ok_or_else(|| {
                CryptoError::BadMasterKey(format!(
                    "the key of subject {subject:?} in table {} opens under neither the old nor the new master key: check both keys; nothing was changed",
                    self.table
                ))
            })?);
            let resealed = seal(&self.master, &aad, &plain)?;
            tx.execute(&update, &[&subject, &resealed])
                .await
                .map_err(|e| db("re-sealing a subject key", e))?;
            done.resealed += 1;
        }
        tx.commit().await.map_err(|e| db("committing a rekey", e))?;
        self.cache.lock().clear();
        Ok(done)
    }
}

impl PostgresStore {
    /// True when the store's schema holds subject keys: `serve` without a
    /// master key refuses such a store, as it refuses an engine directory
    /// with a key file (events naming a subject would be written in
    /// plaintext).
    pub async fn has_subject_keys(&self) -> Result<bool, CryptoError> {
        let client = self.inner.pool.get().await.map_err(|e| db("connect", e))?;
        let row = client
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {}.subject_keys)",
                    self.inner.tables.schema
                ),
                &[],
            )
            .await
            .map_err(|e| db("reading subject keys", e))?;
        Ok(row.get(0))
    }
}

impl SubjectKeys for PostgresKeys {
    fn find<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, Option<SubjectKey>> {
        Box::pin(self.find_key(subject))
    }

    fn find_or_create<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, SubjectKey> {
        Box::pin(self.create(subject))
    }

    fn forget<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, bool> {
        Box::pin(self.delete(subject))
    }
}

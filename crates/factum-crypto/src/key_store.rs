//! Subject keys: one random key per data subject, kept outside the
//! append-only log so that destroying it erases the subject's personal
//! fields everywhere the log was copied. [`SubjectKeys`] is what the
//! [`Shredding`](crate::Shredding) wrapper needs; the embedded engine's
//! implementation is a file in the data directory
//! ([`FileKeyStore`](crate::FileKeyStore)), PostgreSQL's a table
//! (`factum_postgres::PostgresKeys`).

use std::future::Future;
use std::pin::Pin;

use crate::master::SecretKey;
use crate::CryptoError;

/// Longest subject id, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 1024;

/// Length of a key's id.
pub const KEY_ID_LEN: usize = 16;

/// A subject's key and its random id. The id goes into every ciphertext,
/// so data sealed under a forgotten key is told from data sealed under a
/// later key of the same subject (a subject written again after `forget`
/// gets a new key; its old data stays erased).
#[derive(Clone, Debug)]
pub struct SubjectKey {
    /// Random, not secret.
    pub id: [u8; KEY_ID_LEN],
    /// The key.
    pub key: SecretKey,
}

impl SubjectKey {
    /// A fresh random key.
    pub fn random() -> Result<Self, CryptoError> {
        let mut id = [0u8; KEY_ID_LEN];
        crate::seal::fill_random(&mut id)?;
        Ok(SubjectKey {
            id,
            key: SecretKey::random()?,
        })
    }
}

/// What a key-store call returns.
pub type KeyFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CryptoError>> + Send + 'a>>;

/// Where subject keys live. Implementations cache: `find` is called for
/// every read event that names a subject.
pub trait SubjectKeys: Send + Sync + 'static {
    /// The subject's key; `None` when it has none (never written, or
    /// forgotten).
    fn find<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, Option<SubjectKey>>;
    /// The subject's key, created (durably, before it is returned) when it
    /// has none.
    fn find_or_create<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, SubjectKey>;
    /// Destroys the subject's key, durably before it returns; `true` when
    /// there was one. Either the key is gone or it is whole: never half.
    fn forget<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, bool>;
}

/// Checks a subject id's length and characters.
pub fn check_subject(subject: &str) -> Result<(), CryptoError> {
    if subject.is_empty() || subject.len() > MAX_SUBJECT_BYTES {
        return Err(CryptoError::BadSubject(format!(
            "a subject id is 1 to {MAX_SUBJECT_BYTES} bytes, this one {}",
            subject.len()
        )));
    }
    if subject.chars().any(char::is_control) {
        return Err(CryptoError::BadSubject(
            "a subject id has no control characters".into(),
        ));
    }
    Ok(())
}

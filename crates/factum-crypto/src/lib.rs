//! # factum-crypto
//!
//! Crypto-shredding for Factum (issue 19, ADR 36): personal data in
//! events is encrypted with a key per data subject; destroying the key
//! (`forget`) erases that data everywhere the log went — segments,
//! backups, archives, read models rebuilt later — while the events, their
//! order and the audit trail stay.
//!
//! | module | what |
//! |---|---|
//! | `master` | the master key: [`KeyProvider`] ([`KeyFile`], [`KeyEnv`]; a KMS later), [`SecretKey`] (zeroed on drop) |
//! | `seal` | the AEAD of subject data and key wrapping: XChaCha20-Poly1305, random 192-bit nonces, associated data |
//! | `xaes` | XAES-256-GCM for encryption at rest's pages and blocks (ring's AES-256-GCM, 192-bit nonces: a random salt per sealer and a counter) |
//! | `key_store` | [`SubjectKeys`]: where subject keys live (created on first use, forgotten for good) |
//! | `key_file` | [`FileKeyStore`]: the engine's key store, a file in the data directory rewritten under a fresh file key on `forget` |
//! | `convention` | the metadata convention (`$subject`, `$personalFields`), encryption of one event, the erased placeholder |
//! | `shredding` | [`Shredding`]: any `EventStore` with the convention applied; `forget` with its audit event |
//!
//! ```no_run
//! # async fn run() -> factum_core::Result<()> {
//! use std::sync::Arc;
//! use factum_core::{EventData, EventStore, ExpectedRevision, StreamName};
//! use factum_crypto::{FileKeyStore, KeyFile, KeyProvider, Shredding};
//! let dir = std::path::Path::new("./data");
//! let (engine, _) = factum_engine::Engine::open_with(dir, Default::default())?;
//! let master = KeyFile("master.key".into()).master_key()?;
//! let keys = FileKeyStore::open(dir, master)?;
//! let store = Shredding::new(Arc::new(engine), Arc::new(keys));
//! let mut event = EventData::json("Registered", &serde_json::json!({"email": "a@example.com", "plan": "gold"}))?;
//! event.metadata = br#"{"$subject":"customer-42","$personalFields":["email"]}"#.to_vec().into();
//! store.append(StreamName::new("customer-42")?, ExpectedRevision::Any, vec![event]).await?;
//! store.forget("customer-42", "admin").await?; // "email" now reads as null, "$erased": true
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod convention;
pub mod key_file;
pub mod key_store;
pub mod master;
pub mod seal;
pub mod shredding;
pub mod xaes;

use std::path::{Path, PathBuf};

pub use key_file::{FileKeyStore, Rekeyed, KEY_FILE_NAME};
pub use key_store::{KeyFuture, SubjectKey, SubjectKeys};
pub use master::{provider_from, provider_from_settings, KeyEnv, KeyFile, KeyProvider, SecretKey};
pub use shredding::{Forgotten, Shredding, SUBJECT_FORGOTTEN_EVENT};

/// What went wrong with keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The master key is missing or malformed.
    #[error("master key: {0}")]
    BadMasterKey(String),
    /// The key store does not open under this master key (the wrong key,
    /// or its header is damaged).
    #[error("the subject-key store {0} does not open under this master key: the wrong key, or a damaged file")]
    WrongMasterKey(PathBuf),
    /// The key store is damaged.
    #[error("the subject-key store {file} is damaged at byte {offset}: {detail}")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Where.
        offset: u64,
        /// What.
        detail: String,
    },
    /// A subject id is not acceptable.
    #[error("{0}")]
    BadSubject(String),
    /// Reading or writing keys failed; nothing was changed unless said.
    #[error("subject keys: {0}")]
    Io(String),
    /// The key store's database failed.
    #[error("subject keys: {0}")]
    Database(String),
    /// The system's random-number generator failed.
    #[error("the system random-number generator failed")]
    Random,
    /// Encryption failed (a message too long for the AEAD).
    #[error("encryption failed")]
    Seal,
}

impl CryptoError {
    /// An I/O error on `path` while `doing`.
    pub fn io(path: &Path, doing: &str, e: std::io::Error) -> Self {
        CryptoError::Io(format!("{doing} {}: {e}", path.display()))
    }
}

impl From<CryptoError> for factum_core::Error {
    fn from(e: CryptoError) -> Self {
        use factum_core::{Error, UnavailableReason};
        match e {
            CryptoError::BadSubject(why) => Error::InvalidInput(why),
            CryptoError::Corrupt {
                file,
                offset,
                detail,
            } => Error::Corrupt {
                file,
                offset,
                detail,
            },
            CryptoError::Database(why) => {
                Error::unavailable(UnavailableReason::DatabaseUnreachable, why)
            }
            other => Error::unavailable(UnavailableReason::Storage, other.to_string()),
        }
    }
}

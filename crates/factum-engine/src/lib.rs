//! # factum-engine
//!
//! Factum's embedded storage engine: an append-only log of CRC32C-framed
//! segment files written by one group-committing writer, with derived,
//! checkpointed indexes and catch-up/live subscriptions. It implements
//! [`factum_core::EventStore`].
//!
//! ```no_run
//! use factum_core::{EventData, EventStore, ExpectedRevision, ReadStream, StreamName};
//! # async fn demo() -> factum_core::Result<()> {
//! let store = factum_engine::Engine::open("./data")?;
//! let stream = StreamName::new("order-1")?;
//! let event = EventData::json("OrderPlaced", &serde_json::json!({"total": 42}))?;
//! store.append(stream.clone(), ExpectedRevision::NoStream, vec![event]).await?;
//! let events = store.read_stream(ReadStream::forwards(stream)).await?;
//! assert_eq!(events.len(), 1);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod archive;
pub mod archiver;
pub mod backup;
pub mod cache;
pub mod compact;
pub mod compress;
pub mod config;
pub mod encrypt;
pub mod engine;
pub mod fatal;
pub mod format;
pub mod index;
pub mod log;
pub mod overlay;
pub mod pool;
mod prealloc;
pub mod reader;
pub mod rewrite;
pub mod scavenge;
pub mod subscription;
pub mod verify;
pub mod writer;

pub use archive::{Archive, ArchivedObject, LocalArchive};
pub use archiver::{ArchiveOptions, ArchiveReport, ArchiveStats};
pub use backup::{restore, BackupReport, Manifest};
pub use compact::{CompactReport, CompressPolicy};
pub use config::{Clock, Durability, EngineConfig};
pub use encrypt::{rekey_store, MasterKey, RekeyReport};
pub use engine::{Engine, EngineStats, Recovery};
pub use pool::{Progress, ReadStats};
pub use rewrite::{RecordAction, RewriteReport, Throttle};
pub use scavenge::{ScavengeOptions, ScavengeReport, ScavengeStatus};
pub use verify::{verify, verify_store, verify_with_archive, VerifyReport};

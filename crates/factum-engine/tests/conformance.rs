//! The factum-core conformance suite and model-based property test against
//! the embedded engine (each store in a fresh temporary directory).

use factum_core::testkit::StoreFactory;
use factum_engine::{Durability, Engine, EngineConfig};

/// Fresh engines in temporary directories (kept alive with the engine).
#[derive(Default)]
pub struct EngineFactory;

/// The same suite against stores encrypted at rest (ADR 45).
#[derive(Default)]
pub struct EncryptedEngineFactory;

impl StoreFactory for EncryptedEngineFactory {
    type Store = Engine;
    async fn create(&self) -> Engine {
        create(true)
    }
    async fn scavenge(&self, store: &Engine) -> bool {
        EngineFactory.scavenge(store).await
    }
}

fn create(encrypted: bool) -> Engine {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        // Small segments and frequent index flushes exercise rolls and
        // the memtable → redb hand-over in every check.
        segment_bytes: 64 * 1024,
        index_flush_entries: 64,
        durability: Durability::Always,
        encryption: encrypted
            .then(|| factum_engine::MasterKey::new(factum_crypto::SecretKey::random().unwrap())),
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open_with(dir.keep(), config).unwrap();
    engine
}

/// An engine that removes its directory when dropped.
pub struct TempEngine {
    engine: Engine,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TempEngine {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl StoreFactory for EngineFactory {
    type Store = Engine;
    async fn create(&self) -> Engine {
        create(false)
    }

    /// Seals what the check wrote (visible filler in a stream of its own,
    /// past two segments), then scavenges every sealed segment.
    async fn scavenge(&self, store: &Engine) -> bool {
        use factum_core::{EventData, EventStore, ExpectedRevision, StreamName};
        let filler = StreamName::new("scavenge-filler").unwrap();
        for _ in 0..16 {
            let events = (0..8)
                .map(|_| {
                    EventData::json("Filler", &serde_json::json!({"pad": "f".repeat(1024)}))
                        .unwrap()
                })
                .collect();
            store
                .append(filler.clone(), ExpectedRevision::Any, events)
                .await
                .unwrap();
        }
        let status = store
            .scavenge(factum_engine::ScavengeOptions::default())
            .unwrap();
        assert_eq!(status.end, factum_engine::scavenge::ScavengeEnd::Completed);
        true
    }
}

mod conformance {
    factum_core::conformance_tests!(super::EngineFactory);
}

mod conformance_encrypted {
    factum_core::conformance_tests!(super::EncryptedEngineFactory);
}

//! The factum-core conformance suite and model-based property test against
//! the embedded engine (each store in a fresh temporary directory).

use factum_core::testkit::StoreFactory;
use factum_engine::{Durability, Engine, EngineConfig};

/// Fresh engines in temporary directories (kept alive with the engine).
#[derive(Default)]
pub struct EngineFactory;

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
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig {
            // Small segments and frequent index flushes exercise rolls and
            // the memtable → redb hand-over in every check.
            segment_bytes: 64 * 1024,
            index_flush_entries: 64,
            durability: Durability::Always,
            ..EngineConfig::default()
        };
        let (engine, _) = Engine::open_with(dir.keep(), config).unwrap();
        engine
    }
}

mod conformance {
    factum_core::conformance_tests!(super::EngineFactory);
}

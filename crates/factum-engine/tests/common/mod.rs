//! Helpers shared by the engine's integration tests (each test crate uses
//! some of them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The store's segment files, oldest first.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// The runtime the engine's multi-process tests use: two workers, as on
/// the 2-core machines the tests run on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub mod shim;

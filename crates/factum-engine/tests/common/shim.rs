//! Builds the LD_PRELOAD fault shim (`tests/fault_shim.c` of
//! factum-engine) with the system C compiler. Also used by factum-cli's
//! tests (`#[path]`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The shim's C source (the path works from any crate of the workspace).
pub fn source() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../factum-engine/tests/fault_shim.c")
}

/// Compiles the shim into `out_dir`; `Err` says why it could not (no C
/// compiler, say).
pub fn build(out_dir: &Path) -> Result<PathBuf, String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let src = source();
    let so = out_dir.join(format!(
        "fault_shim-{}-{}.so",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .output()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cc failed on {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(so)
}

/// The shim, or `None` after printing SKIPPED (and a panic under CI=true).
pub fn build_or_skip(test: &str, out_dir: &Path) -> Option<PathBuf> {
    match build(out_dir) {
        Ok(so) => Some(so),
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test} cannot run under CI=true: {why}"
            );
            eprintln!("SKIPPED: {test}: {why}");
            None
        }
    }
}

//! The bridge from the blocking [`factum_engine::Archive`] calls to
//! object_store's async API.
//!
//! Each archive holds its own small tokio runtime. A call spawns its future
//! there and waits on a std channel, so it works from any thread: a plain
//! std thread (what the engine uses) and also, should it ever happen, a
//! thread of someone else's runtime, where `Runtime::block_on` would panic
//! with "Cannot start a runtime from within a runtime" (waiting on a channel
//! only blocks that thread). Dropping the archive shuts the runtime down in
//! the background for the same reason: a blocking shutdown panics inside an
//! async context. A future that panics comes back as an error, not a panic
//! of the caller.

use std::future::Future;

use factum_core::{Error, Result, UnavailableReason};
use tokio::runtime::Runtime;

/// Threads for network I/O and request signing; the work is waiting on the
/// network, so two are plenty for one archive.
const WORKER_THREADS: usize = 2;

/// A private runtime that blocking callers hand futures to.
#[derive(Debug)]
pub(crate) struct BlockingRuntime {
    /// `None` only while dropping.
    runtime: Option<Runtime>,
}

impl BlockingRuntime {
    pub(crate) fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("factum-archive")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the archive's I/O threads", e))?;
        Ok(BlockingRuntime {
            runtime: Some(runtime),
        })
    }

    /// Runs `future` to completion on the private runtime and returns its
    /// output; `describe` names the archive in the error when the future
    /// panicked.
    pub(crate) fn run<T, F>(&self, describe: &str, future: F) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let runtime = self.runtime.as_ref().expect("runtime present until drop");
        let (done, outcome) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            // The receiver waits until this is sent or the task is gone.
            let _ = done.send(future.await);
        });
        // A panic in the task drops the sender without sending.
        outcome.recv().unwrap_or_else(|_| {
            Err(Error::unavailable(
                UnavailableReason::Storage,
                format!("archive {describe}: the request failed inside the archive client (a panic; see the log)"),
            ))
        })
    }
}

impl Drop for BlockingRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_from_a_plain_thread() {
        let runtime = BlockingRuntime::new().unwrap();
        let answer = runtime.run("test", async { Ok(42) }).unwrap();
        assert_eq!(answer, 42);
    }

    #[test]
    fn runs_and_drops_inside_another_runtime() {
        let outer = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        outer.block_on(async {
            let runtime = BlockingRuntime::new().unwrap();
            let answer = runtime
                .run("test", async {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    Ok("done")
                })
                .unwrap();
            assert_eq!(answer, "done");
            drop(runtime);
        });
    }

    #[test]
    fn a_panicking_request_is_an_error() {
        let runtime = BlockingRuntime::new().unwrap();
        let outcome: Result<()> = runtime.run("s3://bucket/prefix", async { panic!("boom") });
        let message = outcome.unwrap_err().to_string();
        assert!(message.contains("s3://bucket/prefix"), "{message}");
    }
}

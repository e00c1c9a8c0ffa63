//! One budget of append bytes held in memory at once, across every client
//! and protocol (ADR 19).
//!
//! An append reserves its bytes as they arrive (gRPC: each proposed
//! message as it is decoded; HTTP: the body before it is read) and holds
//! them until the store has answered. When the budget is spent, a request
//! waits for bytes to be released; after `wait` it is refused (gRPC
//! RESOURCE_EXHAUSTED, HTTP 503) without having been written. The budget is
//! never smaller than one largest message, so every allowed append can
//! eventually be taken.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The server's budget of in-flight append bytes.
pub struct AppendBudget {
    bytes: Arc<Semaphore>,
    total: u64,
    wait: Duration,
}

/// Bytes one append holds; released when dropped.
#[derive(Default)]
pub struct Reserved(Option<OwnedSemaphorePermit>);

impl Reserved {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.0.as_ref().map_or(0, |p| p.num_permits() as u64)
    }
}

/// The budget stayed spent for the whole wait.
#[derive(Debug)]
pub struct Exhausted {
    /// Bytes asked for.
    pub wanted: u64,
    /// The whole budget.
    pub total: u64,
    /// How long the request waited.
    pub waited: Duration,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's {} bytes of in-flight appends stayed in use for {:?}: {} more bytes could not be taken; retry later",
            self.total, self.waited, self.wanted
        )
    }
}

impl AppendBudget {
    /// A budget of `total` bytes (at least `largest`, one largest message)
    /// whose requests wait up to `wait` for room.
    pub fn new(total: u64, largest: u64, wait: Duration) -> Self {
        let total = total.max(largest).min(Semaphore::MAX_PERMITS as u64);
        AppendBudget {
            bytes: Arc::new(Semaphore::new(total as usize)),
            total,
            wait,
        }
    }

    /// Adds `bytes` to what `held` reserves, waiting up to the budget's
    /// wait for room.
    pub async fn reserve(&self, held: &mut Reserved, bytes: u64) -> Result<(), Exhausted> {
        if bytes == 0 {
            return Ok(());
        }
        let exhausted = || Exhausted {
            wanted: bytes,
            total: self.total,
            waited: self.wait,
        };
        // More than the whole budget can never be granted; a single call
        // asks for at most u32::MAX at a time.
        let wanted = u32::try_from(bytes)
            .ok()
            .filter(|b| u64::from(*b) <= self.total)
            .ok_or_else(exhausted)?;
        // Room at once (nearly always): no timer, no clock read.
        let permit = match self.bytes.clone().try_acquire_many_owned(wanted) {
            Ok(permit) => permit,
            Err(_) => {
                tokio::time::timeout(self.wait, self.bytes.clone().acquire_many_owned(wanted))
                    .await
                    .map_err(|_| exhausted())?
                    // The semaphore is never closed.
                    .map_err(|_| exhausted())?
            }
        };
        match &mut held.0 {
            Some(p) => p.merge(permit),
            None => held.0 = Some(permit),
        }
        Ok(())
    }

    /// Bytes reserved right now (for `/metrics`).
    pub fn in_use(&self) -> u64 {
        self.total - self.bytes.available_permits() as u64
    }
}

//! Retries of operations that are safe to repeat: the policy ([`Retry`]),
//! the backoff of one operation, and [`Client::retrying`], which repeats an
//! operation until it stands. Reads resume through `resume.rs`.

use std::time::Duration;

use factum_core::{Error, Result};

use crate::Client;

/// How operations that are safe to repeat are retried when the server is
/// unreachable or the connection breaks (an [`Error::Unavailable`] whose
/// reason is not fatal, [`factum_core::UnavailableReason::is_fatal`]):
/// appends (event ids make a repeated append idempotent), metadata writes,
/// and reads (resumed after the last event received). Deletes, tombstones
/// and subscriptions are not retried. The wait doubles from `first_delay`
/// up to `max_delay`; progress (an event read) starts the count afresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all; 1 means no retry.
    pub attempts: u32,
    /// The wait before the first retry.
    pub first_delay: Duration,
    /// The longest wait between attempts.
    pub max_delay: Duration,
}

impl Default for Retry {
    /// 6 attempts over about 1.5 s: enough to ride out a server restart.
    fn default() -> Self {
        Retry {
            attempts: 6,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl Retry {
    /// No retries: every failure is returned at once.
    pub fn none() -> Retry {
        Retry {
            attempts: 1,
            ..Retry::default()
        }
    }
}

/// Errors after which a safe operation is tried again: `Unavailable`
/// unless its reason is fatal (a failed fsync on the server, a database
/// that refuses it, a protocol error), which no retry can mend.
fn transient(e: &Error) -> bool {
    e.is_transient()
}

/// Attempts made so far and the next wait, for one operation.
pub(crate) struct Backoff {
    retry: Retry,
    attempt: u32,
    delay: Duration,
}

impl Backoff {
    pub(crate) fn new(retry: Retry) -> Backoff {
        Backoff {
            retry,
            attempt: 1,
            delay: retry.first_delay,
        }
    }

    /// Waits and returns true when `e` deserves another attempt.
    pub(crate) async fn again(&mut self, e: &Error) -> bool {
        if !transient(e) || self.attempt >= self.retry.attempts {
            return false;
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(self.retry.max_delay);
        self.attempt += 1;
        true
    }

    /// Progress was made: the next failure starts a fresh count.
    pub(crate) fn reset(&mut self) {
        self.attempt = 1;
        self.delay = self.retry.first_delay;
    }
}

impl Client {
    /// Runs `op` until it succeeds, fails for good, or the attempts run out.
    pub(crate) async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut backoff = Backoff::new(self.retry);
        loop {
            match op().await {
                Err(e) if backoff.again(&e).await => continue,
                r => return r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use factum_core::UnavailableReason;

    use super::*;

    fn quick() -> Retry {
        Retry {
            attempts: 3,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn transient_unavailable_is_retried_fatal_is_not() {
        for reason in UnavailableReason::ALL {
            let mut backoff = Backoff::new(quick());
            let e = Error::unavailable(reason, "x");
            assert_eq!(backoff.again(&e).await, !reason.is_fatal(), "{reason}");
        }
        let mut backoff = Backoff::new(quick());
        let fsync = Error::unavailable(UnavailableReason::StorageFailed, "fsync failed");
        assert!(!backoff.again(&fsync).await);
        let lost = Error::unavailable(UnavailableReason::Connection, "reset");
        assert!(backoff.again(&lost).await);
        assert!(backoff.again(&lost).await);
        assert!(!backoff.again(&lost).await, "attempts ran out");
        assert!(
            !Backoff::new(quick())
                .again(&Error::InvalidInput("x".into()))
                .await
        );
    }
}

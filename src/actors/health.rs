//! Fail-stop on storage failures (SPEC 2.1, DESIGN 3).
//!
//! A failed write or read means the engine no longer knows that what it holds in memory matches
//! what is on disk, so it must not go on as if nothing happened (answering 400, skipping the
//! write, letting the next checkpoint trim the log that would repair it). The first failure
//! flips [`Health`] to failed: from then on the engine refuses new work (503 with `Retry-After`,
//! `/ready` failing), writes no checkpoint or trim, and the server exits non-zero after a bounded
//! drain; the supervisor restarts it and recovery replays the log.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use tokio::sync::Notify;

use crate::storage::StorageError;

#[derive(Default)]
pub struct Health {
    /// Fenced at the first failure, so no thread writes past it.
    store: Option<crate::storage::Store>,
    failed: AtomicBool,
    reason: Mutex<Option<String>>,
    changed: Notify,
}

impl Health {
    /// Records a storage failure: logged once at ERROR with what failed; every later call only
    /// adds a WARN line.
    pub fn fail_stop(&self, what: &str, error: &StorageError) {
        if let Some(store) = &self.store {
            store.fence();
        }
        if self.failed.swap(true, SeqCst) {
            tracing::warn!(%error, what, "another storage failure while stopping");
            return;
        }
        let reason = format!("{what}: {error}");
        tracing::error!(%error, what, "storage failure: the engine stops accepting work and the process exits; a restart recovers from the log");
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.changed.notify_waiters();
    }

    /// Health that fences `store` when it fails.
    pub fn fencing(store: crate::storage::Store) -> Health {
        Health {
            store: Some(store),
            ..Health::default()
        }
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(SeqCst)
    }

    /// What failed first, once something has.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves once a storage failure was recorded (at once if one already was).
    pub async fn failed(&self) {
        loop {
            let notified = self.changed.notified();
            if self.is_failed() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn the_first_failure_is_kept_and_waiters_wake() {
        let health = std::sync::Arc::new(Health::default());
        assert!(!health.is_failed());
        let waiter = {
            let health = std::sync::Arc::clone(&health);
            actix_rt::spawn(async move { health.failed().await })
        };
        health.fail_stop("outbox write", &StorageError::Injected("first".into()));
        health.fail_stop("checkpoint", &StorageError::Injected("second".into()));
        waiter.await.unwrap();
        assert!(health.is_failed());
        assert!(health.reason().unwrap().contains("first"));
        health.failed().await;
    }
}

//! Engine counters, read by `/metrics`. Plain atomics: cheap to bump on the hot path.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct EngineMetrics {
    pub events_accepted: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_late: AtomicU64,
    pub events_late_released: AtomicU64,
    pub inputs_applied: AtomicU64,
    pub inputs_rejected: AtomicU64,
    /// Inputs kept in quarantine instead of applied (SPEC 2.1).
    pub inputs_quarantined: AtomicU64,
    /// Quarantined inputs an operator re-applied, or discarded.
    pub quarantine_reapplied: AtomicU64,
    pub quarantine_discarded: AtomicU64,
    pub actors_resident: AtomicI64,
    pub actors_evicted: AtomicU64,
    /// Customers made resident by the background preload after recovery.
    pub actors_preloaded: AtomicU64,
    pub workflows_started: AtomicU64,
    pub workflows_released: AtomicU64,
    pub workflows_failed: AtomicU64,
    pub workflows_action_required: AtomicU64,
    pub payment_requests: AtomicU64,
    pub overloaded: AtomicU64,
    pub checkpoints: AtomicU64,
    pub checkpoint_last_micros: AtomicU64,
    pub checkpoint_states_last: AtomicU64,
    pub recovery_replayed: AtomicU64,
    pub recovery_millis: AtomicU64,
}

impl EngineMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}

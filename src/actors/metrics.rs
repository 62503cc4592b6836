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
    pub workflows_action_required: AtomicU64,
    /// Times a recharge safety rail started holding a recharge back (live inputs).
    pub recharges_limited: AtomicU64,
    pub payment_requests: AtomicU64,
    pub overloaded: AtomicU64,
    pub checkpoints: AtomicU64,
    pub checkpoint_last_micros: AtomicU64,
    pub checkpoint_states_last: AtomicU64,
    pub recovery_replayed: AtomicU64,
    pub recovery_millis: AtomicU64,
    /// Ingest requests from arrival at the engine to the durable acknowledgement.
    pub ingest_ack: crate::histogram::Histogram,
    /// Inputs from their acknowledgement (log append) to their apply.
    pub apply_lag: crate::histogram::Histogram,
    /// Payment provider steps, by `action` and `result`.
    pub payment_calls: crate::histogram::LabeledHistograms,
    /// Workflows started, released and failed, by gate.
    pub gates: GateCounters,
}

impl EngineMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}

/// Samples of a counter once a second (the engine's clock, in ms), for rates over the last
/// seconds: the dashboard summary's ingest rate (SPEC 3.1).
#[derive(Debug, Default)]
pub struct RateWindow {
    samples: std::sync::Mutex<std::collections::VecDeque<(i64, u64)>>,
}

/// Samples kept: one minute and one.
const RATE_SAMPLES: usize = 61;

impl RateWindow {
    pub fn sample(&self, at_ms: i64, value: u64) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((at_ms, value));
        while samples.len() > RATE_SAMPLES {
            samples.pop_front();
        }
    }

    /// Per second over the last `seconds` (or as many as were sampled); `None` before two
    /// samples.
    pub fn per_second(&self, seconds: usize) -> Option<u64> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let (last_at, last) = *samples.back()?;
        let first = samples.len().saturating_sub(seconds + 1);
        let (first_at, first_value) = *samples.get(first)?;
        let Ok(millis) = u128::try_from(last_at.saturating_sub(first_at)) else {
            return None;
        };
        if millis == 0 {
            return None;
        }
        let per_second = u128::from(last.saturating_sub(first_value)) * 1_000 / millis;
        Some(u64::try_from(per_second).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn rates_are_taken_over_the_samples_of_the_window() {
        let window = RateWindow::default();
        let t0: i64 = 1_765_000_000_000;
        assert_eq!(window.per_second(10), None);
        window.sample(t0, 100);
        assert_eq!(window.per_second(10), None, "one sample is no rate");
        for s in 1..=70u64 {
            // 50 per second for the first 40 s, then 200 per second.
            let value = if s <= 40 {
                100 + 50 * s
            } else {
                2_100 + 200 * (s - 40)
            };
            window.sample(t0 + 1_000 * s as i64, value);
        }
        assert_eq!(window.per_second(10), Some(200));
        assert_eq!(window.per_second(1), Some(200));
        // The minute spans 30 s at 50/s and 30 s at 200/s.
        assert_eq!(window.per_second(60), Some(125));
        assert_eq!(
            window.per_second(600),
            Some(125),
            "at most the samples kept"
        );
    }
}

/// Workflows started, released and failed, per gate (NONE, EXTERNAL, STRIPE): rebuilt from the
/// stored indexes at start, then counted live, so started = released + failed + in flight holds
/// across restarts.
#[derive(Debug, Default)]
pub struct GateCounters {
    /// [gate][started, released, failed].
    counts: [[AtomicU64; 3]; 3],
}

fn gate_index(gate: crate::domain::gate::GateType) -> usize {
    match gate {
        crate::domain::gate::GateType::None => 0,
        crate::domain::gate::GateType::External => 1,
        crate::domain::gate::GateType::Stripe => 2,
    }
}

impl GateCounters {
    /// Counts a state change: INITIATED starts, RELEASED and FAILED end.
    pub fn count(
        &self,
        gate: crate::domain::gate::GateType,
        state: crate::domain::gate::WorkflowState,
    ) {
        use crate::domain::gate::WorkflowState;
        let column = match state {
            WorkflowState::Initiated => 0,
            WorkflowState::Released => 1,
            WorkflowState::Failed => 2,
            _ => return,
        };
        self.counts[gate_index(gate)][column].fetch_add(1, Relaxed);
    }

    /// Sets what the stored indexes hold (at start).
    pub fn set(
        &self,
        gate: crate::domain::gate::GateType,
        (started, released, failed): (u64, u64, u64),
    ) {
        let row = &self.counts[gate_index(gate)];
        row[0].store(started, Relaxed);
        row[1].store(released, Relaxed);
        row[2].store(failed, Relaxed);
    }

    /// (started, released, failed) of `gate`.
    pub fn get(&self, gate: crate::domain::gate::GateType) -> (u64, u64, u64) {
        let row = &self.counts[gate_index(gate)];
        (
            row[0].load(Relaxed),
            row[1].load(Relaxed),
            row[2].load(Relaxed),
        )
    }
}

//! Quarantine: inputs whose apply panicked, or whose sums overflowed despite the bounds, kept
//! durably with the reason instead of being lost or half-applied (SPEC 2.1).
//!
//! The domain applies every input whole or not at all (`Customer::apply` rolls back on any
//! refusal and while a panic unwinds), so quarantining changes nothing in the customer's
//! state: the input is recorded here, counted, logged at ERROR and listed for the operator, and
//! the customer's later inputs go on. Replay reaches the same verdict (the code is
//! deterministic) and writes the same entry again, so the entry needs no fsync of its own.
//! "Applied exactly once" becomes "applied exactly once, or quarantined and visible".

use serde::{Deserialize, Serialize};

use super::entry::META_VERSION;
use crate::domain::customer::Input;
use crate::domain::{Id, Timestamp};
use crate::storage::{self, StorageError, Store};

/// `quar/` ++ partition (u16) ++ seq (u64) ++ index (u32, 0 for the input, i + 1 for the i-th
/// parked usage event its customer's creation released), all big-endian: listing order is log
/// order.
pub const QUARANTINE_PREFIX: &[u8] = b"quar/";

/// Why an input was quarantined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuarantineCause {
    /// The apply panicked (a bug); the message is the panic's.
    Panic,
    /// The domain refused an input nobody could be told about (acknowledged usage, a tick),
    /// e.g. a sum that overflowed.
    Refused,
}

/// One quarantined input with everything needed to apply it again later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    pub partition: u16,
    pub seq: u64,
    pub index: u32,
    pub customer_id: Id,
    /// When the input was accepted, and the catalog version it was accepted at.
    pub at: Timestamp,
    pub catalog_version: u64,
    pub input: Input,
    pub cause: QuarantineCause,
    pub reason: String,
}

impl Quarantined {
    pub fn key(&self) -> Vec<u8> {
        let mut key = QUARANTINE_PREFIX.to_vec();
        key.extend_from_slice(&self.partition.to_be_bytes());
        key.extend_from_slice(&self.seq.to_be_bytes());
        key.extend_from_slice(&self.index.to_be_bytes());
        key
    }

    /// The entry as written to `meta`.
    ///
    /// # Errors
    /// [`StorageError::Encode`].
    pub fn encoded(&self) -> Result<(Vec<u8>, Vec<u8>), StorageError> {
        Ok((self.key(), storage::encode(META_VERSION, self)?))
    }
}

thread_local! {
    /// Set while this thread applies one input under [`catching`].
    static APPLYING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs one input's apply, catching a panic (the only place a panic is survivable).
pub fn catching<R>(apply: impl FnOnce() -> R) -> std::thread::Result<R> {
    APPLYING.set(true);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(apply));
    APPLYING.set(false);
    result
}

/// Makes every panic outside [`catching`] stop the process (after the usual message), as
/// `panic = "abort"` did: a panic in an actor or task would otherwise end only that thread and
/// leave the engine running without it. The server installs it; tests keep the default hook.
pub fn install_fatal_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if !APPLYING.get() {
            std::process::abort();
        }
    }));
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// Quarantined inputs in log order, `limit` at most, after the entry whose key is `after`.
///
/// # Errors
/// Storage read or decode errors.
pub fn list(
    store: &Store,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<Quarantined>, StorageError> {
    store
        .meta_scan_page(QUARANTINE_PREFIX, after, limit)?
        .into_iter()
        .map(|(_, value)| storage::decode(META_VERSION, &value))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::actors::EngineError;
    use crate::actors::clock::ManualClock;
    use crate::actors::customer::{Logged, apply_logged, persist_quarantined};
    use crate::actors::entry::PersistedCustomer;
    use crate::actors::metrics::EngineMetrics;
    use crate::actors::shared::{EngineSettings, Shared};
    use crate::domain::contract::LineDraw;
    use crate::domain::fixtures::{self, CONTRACT, CUSTOMER, T0};
    use crate::domain::{Ctx, Limits, Money};
    use crate::storage::StoreOptions;

    fn shared(dir: &std::path::Path) -> Shared {
        let store = Store::open(dir, StoreOptions::default()).unwrap();
        let settings = EngineSettings {
            partitions: 1,
            limits: Limits::default(),
            webhook_urls: Vec::new(),
            mailbox_capacity: 16,
            pending_inputs_max: 16,
            checkpoint_interval_ms: 60_000,
            checkpoint_every_inputs: 1_000,
            evict_idle_ms: 60_000,
            tick_interval_ms: 60_000,
            late_window_ms: 60_000,
        };
        Shared::new(
            store,
            settings,
            Arc::new(ManualClock::new(T0.millis())),
            Arc::new(EngineMetrics::default()),
            fixtures::catalog(),
        )
    }

    /// A customer with one contract on which 10 tokens were charged.
    fn customer_with_tokens() -> PersistedCustomer {
        let mut state = PersistedCustomer::default();
        let catalog = fixtures::catalog();
        let limits = Limits::default();
        let ctx = Ctx {
            at: T0,
            catalog: &catalog,
            catalog_version: catalog.version(),
            limits: &limits,
        };
        let mut contract = fixtures::contract(CONTRACT);
        contract.commits.push(fixtures::prepaid_commit(10_000, 1));
        for input in [
            Input::create_customer(fixtures::profile(CUSTOMER, false)),
            Input::create_contract(contract),
            Input::RecordUsage(fixtures::llm_tokens("t1", T0, "10")),
        ] {
            state.customer.apply(&input, &ctx).unwrap();
        }
        state
    }

    fn usage(seq: u64, txn: &str, tokens: &str, catalog_version: u64) -> (u64, Input, u64) {
        (
            seq,
            Input::RecordUsage(fixtures::llm_tokens(txn, T0, tokens)),
            catalog_version,
        )
    }

    fn apply(
        shared: &Shared,
        state: &mut PersistedCustomer,
        (seq, input, catalog_version): (u64, Input, u64),
        quarantined: &mut Vec<Quarantined>,
    ) -> Result<crate::domain::Applied, EngineError> {
        let logged = Logged {
            partition: 0,
            seq,
            customer_id: CUSTOMER,
            at: T0,
            catalog_version,
            input: &input,
        };
        apply_logged(shared, state, logged, true, quarantined)
    }

    #[test]
    fn a_panicking_apply_is_quarantined_the_state_is_unchanged_and_later_inputs_apply() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        let version = shared.catalog().version();
        let mut state = customer_with_tokens();
        // A corrupt state (a draw from a commit that does not exist): giving back panics.
        state.customer.contracts[0].periods[0].lines[0].draws[0] = LineDraw {
            commit: 99,
            segment: 0,
            amount: Money::from_i64(20),
        };
        let before = state.customer.clone();
        let mut quarantined = Vec::new();
        let result = apply(
            &shared,
            &mut state,
            usage(5, "neg", "-5", version),
            &mut quarantined,
        );
        assert!(
            matches!(result, Err(EngineError::Quarantined(_))),
            "{result:?}"
        );
        assert_eq!(
            state.customer, before,
            "a quarantined input changes nothing"
        );
        assert_eq!(state.applied_seq, 5, "and is not applied again on replay");
        assert_eq!(quarantined.len(), 1);
        assert_eq!(quarantined[0].cause, QuarantineCause::Panic);
        assert!(
            quarantined[0].reason.contains("index out of bounds"),
            "{}",
            quarantined[0].reason
        );
        assert_eq!(EngineMetrics::get(&shared.metrics.inputs_quarantined), 1);

        // Kept durably and listed, in log order.
        persist_quarantined(&shared, &quarantined).unwrap();
        let listed = list(&shared.store, None, 10).unwrap();
        assert_eq!(listed, quarantined);

        // The customer's later inputs go on.
        let mut more = Vec::new();
        apply(
            &shared,
            &mut state,
            usage(6, "pos", "5", version),
            &mut more,
        )
        .unwrap();
        assert!(more.is_empty());
        assert_ne!(state.customer, before);
    }

    #[test]
    fn usage_refused_inside_the_engine_is_quarantined_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        let version = shared.catalog().version();
        let mut state = customer_with_tokens();
        // A line whose charge is at Decimal's limit (impossible within the bounds): any more
        // usage overflows.
        let line = &mut state.customer.contracts[0].periods[0].lines[0];
        line.charged = Money::from_decimal(rust_decimal::Decimal::MAX);
        let before = state.customer.clone();
        let mut quarantined = Vec::new();
        let result = apply(
            &shared,
            &mut state,
            usage(7, "big", "1000000", version),
            &mut quarantined,
        );
        assert!(
            matches!(result, Err(EngineError::Quarantined(_))),
            "{result:?}"
        );
        assert_eq!(state.customer, before);
        assert_eq!(quarantined[0].cause, QuarantineCause::Refused);
        assert!(
            quarantined[0].reason.contains("overflow"),
            "{}",
            quarantined[0].reason
        );
    }
}

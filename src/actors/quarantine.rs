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

/// What an operator decides for a quarantined input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Apply it now, as it would have applied when accepted (after an upgrade).
    Reapply,
    /// Never apply it; the reason is logged.
    Discard { reason: String },
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

/// The `quar/` key of the input at this log position.
pub fn quarantine_key(partition: u16, seq: u64, index: u32) -> Vec<u8> {
    let mut key = QUARANTINE_PREFIX.to_vec();
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// What applying a batch of inputs did to the quarantine, written with the batch's effects.
#[derive(Debug, Default)]
pub struct QuarantineWrites {
    /// Inputs quarantined now.
    pub kept: Vec<Quarantined>,
    /// Keys of entries an operator's decision resolved (re-applied or discarded).
    pub resolved: Vec<Vec<u8>>,
}

impl QuarantineWrites {
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty() && self.resolved.is_empty()
    }
}

impl Quarantined {
    pub fn key(&self) -> Vec<u8> {
        quarantine_key(self.partition, self.seq, self.index)
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

/// The quarantined input stored under `key`, if any.
///
/// # Errors
/// Storage read or decode errors.
pub fn get(store: &Store, key: &[u8]) -> Result<Option<Quarantined>, StorageError> {
    if !key.starts_with(QUARANTINE_PREFIX) {
        return Ok(None);
    }
    store
        .meta_get(key)?
        .map(|value| storage::decode(META_VERSION, &value))
        .transpose()
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

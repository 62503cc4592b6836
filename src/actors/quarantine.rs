//! Quarantine: inputs whose apply panicked, or whose sums overflowed despite the bounds, kept
//! durably with the reason instead of being lost or half-applied (SPEC 2.1).
//!
//! The domain applies every input whole or not at all (`Customer::apply` rolls back on any
//! refusal and while a panic unwinds), so quarantining changes nothing in the customer's
//! state: the input is recorded here, counted, logged at ERROR and listed for the operator, and
//! the customer's later inputs go on. Replay reaches the same verdict (the code is
//! deterministic) and writes the same entry again, so the entry needs no fsync of its own: the
//! next synced write (the outbox write of the same batch, a log append) makes it durable, and
//! nothing that depends on the verdict is released before that write.
//! "Applied exactly once" becomes "applied exactly once, or quarantined and visible".
//!
//! A quarantine is a decision like any other, and the inputs after it were decided (and their
//! effects sent: a workflow charged, a webhook delivered) with the quarantined input left out.
//! So replay, after a crash or after an upgrade that fixed the bug, and a state rebuild do not
//! run an input whose position has an entry ([`QuarantinedPositions`]): they quarantine it
//! again, and only the operator's decision, itself in the log, applies it, at the decision's
//! place. (Until 2026-12-08 the fixed version's replay applied it, and the later inputs replayed
//! to other decisions than the ones acted on: found by the simulation, seed 257, where usage
//! replayed with a quarantined negative event crossed a spend threshold later, and the workflow
//! that had been paid at Stripe was back in CHARGING with nothing left to report its payment.)

use std::collections::HashMap;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::entry::META_VERSION;
use crate::domain::customer::Input;
use crate::domain::{Id, Timestamp};
use crate::storage::{self, StorageError, Store};

/// `quar/` ++ partition (u16) ++ seq (u64) ++ index (u32, 0 for the input, i + 1 for the i-th
/// parked usage event its customer's creation released), all big-endian: listing order is log
/// order.
pub const QUARANTINE_PREFIX: &[u8] = b"quar/";
/// `quar-done/` ++ the same suffix: [`Resolved`], how an operator decided on the entry (the
/// audit trail of re-applies and discards; a second decision is answered from it).
pub const RESOLVED_PREFIX: &[u8] = b"quar-done/";

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

/// The `quar/` key of the input at this log position.
pub fn quarantine_key(partition: u16, seq: u64, index: u32) -> Vec<u8> {
    let mut key = QUARANTINE_PREFIX.to_vec();
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// The `quar-done/` key of the input at this log position.
pub fn resolved_key(partition: u16, seq: u64, index: u32) -> Vec<u8> {
    let mut key = quarantine_key(partition, seq, index);
    key.splice(..QUARANTINE_PREFIX.len(), RESOLVED_PREFIX.iter().copied());
    key
}

/// How an operator decided on a quarantined input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    Reapplied,
    Discarded { reason: String },
}

/// A decided entry: the input, the decision, and the log position of the decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    pub entry: Quarantined,
    pub resolution: Resolution,
    pub decided_seq: u64,
    pub decided_at: Timestamp,
}

/// Keys and values to write.
pub type Puts = Vec<(Vec<u8>, Vec<u8>)>;

/// What applying a batch of inputs did to the quarantine, written with the batch's effects.
#[derive(Debug, Default)]
pub struct QuarantineWrites {
    /// Inputs quarantined now.
    pub kept: Vec<Quarantined>,
    /// Entries an operator's decision resolved now: their `quar/` entry goes, their
    /// `quar-done/` entry comes.
    pub resolved: Vec<Resolved>,
    /// `quar/` keys of entries that are not quarantined any more without a decision (replay
    /// after an upgrade applied the input): removed so that the list shows only what is.
    pub stale: Vec<Vec<u8>>,
}

impl QuarantineWrites {
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty() && self.resolved.is_empty() && self.stale.is_empty()
    }

    /// The `meta` puts and deletes: puts first, then deletes, so that within one batch a
    /// replayed quarantine and its later resolution end resolved.
    ///
    /// # Errors
    /// [`StorageError::Encode`].
    pub fn encoded(&self) -> Result<(Puts, Vec<Vec<u8>>), StorageError> {
        let mut puts = Vec::with_capacity(self.kept.len() + self.resolved.len());
        for entry in &self.kept {
            puts.push(entry.encoded()?);
        }
        let mut deletes = self.stale.clone();
        for resolved in &self.resolved {
            let e = &resolved.entry;
            puts.push((
                resolved_key(e.partition, e.seq, e.index),
                storage::encode(META_VERSION, resolved)?,
            ));
            deletes.push(e.key());
        }
        Ok((puts, deletes))
    }
}

/// Whether an input may be re-applied from quarantine. Inputs nobody waits for (usage, ticks)
/// may, and so may inputs the domain makes idempotent (a payment outcome, a void, an archive).
/// A request whose caller was told it failed (a 500) may not: the caller may have sent it
/// again since, and re-applying would do it twice (a second contract, commit or alias owner);
/// it can only be discarded.
pub fn reappliable(input: &Input) -> bool {
    matches!(
        input,
        Input::RecordUsage(_)
            | Input::Tick
            | Input::PaymentOutcome(_)
            | Input::VoidInvoice { .. }
            | Input::ArchiveCustomer
    )
}

/// The log positions (partition, seq, index) of every input quarantined so far, pending or
/// decided, with the log seq of the decision that resolved it: loaded from `quar/` and
/// `quar-done/` at start, added to as inputs are quarantined and decided. Replay applies an
/// operator's decision only if it is the one that resolved the input live: a re-apply that failed
/// live (the input stayed quarantined) must not succeed on a later version's replay, since the
/// inputs after it were decided without it.
#[derive(Debug, Default)]
pub struct QuarantinedPositions(RwLock<HashMap<(u16, u64, u32), Option<u64>>>);

impl QuarantinedPositions {
    /// Every position with a `quar/` or `quar-done/` entry.
    ///
    /// # Errors
    /// Storage read or decode errors, or a key that does not have the layout of
    /// [`quarantine_key`].
    pub fn load(store: &Store) -> Result<QuarantinedPositions, StorageError> {
        let mut positions = HashMap::new();
        for prefix in [QUARANTINE_PREFIX, RESOLVED_PREFIX] {
            for (key, value) in store.meta_scan_prefix(prefix)? {
                let position = key
                    .strip_prefix(prefix)
                    .and_then(position_of)
                    .ok_or_else(|| StorageError::Corrupt {
                        what: "quarantine entry key",
                        detail: hex::encode(&key),
                    })?;
                let decided = if prefix == RESOLVED_PREFIX {
                    let resolved: Resolved = storage::decode(META_VERSION, &value)?;
                    Some(resolved.decided_seq)
                } else {
                    None
                };
                let slot = positions.entry(position).or_insert(None);
                *slot = slot.or(decided);
            }
        }
        Ok(QuarantinedPositions(RwLock::new(positions)))
    }

    pub fn contains(&self, partition: u16, seq: u64, index: u32) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&(partition, seq, index))
    }

    /// The seq of the decision that resolved the input at this position, if any.
    pub fn decided(&self, partition: u16, seq: u64, index: u32) -> Option<u64> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(partition, seq, index))
            .copied()
            .flatten()
    }

    pub fn insert(&self, partition: u16, seq: u64, index: u32) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry((partition, seq, index))
            .or_insert(None);
    }

    /// Records that the decision at `decided_seq` resolved the input at this position.
    pub fn set_decided(&self, partition: u16, seq: u64, index: u32, decided_seq: u64) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((partition, seq, index), Some(decided_seq));
    }
}

/// Partition, seq and index from the suffix of a `quar/` or `quar-done/` key.
fn position_of(suffix: &[u8]) -> Option<(u16, u64, u32)> {
    let (partition, rest) = suffix.split_first_chunk::<2>()?;
    let (seq, rest) = rest.split_first_chunk::<8>()?;
    let index = <[u8; 4]>::try_from(rest).ok()?;
    Some((
        u16::from_be_bytes(*partition),
        u64::from_be_bytes(*seq),
        u32::from_be_bytes(index),
    ))
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

/// The decision recorded for the input whose `quar/` key is `key`, if any.
///
/// # Errors
/// Storage read or decode errors.
pub fn resolution(store: &Store, key: &[u8]) -> Result<Option<Resolved>, StorageError> {
    let Some(suffix) = key.strip_prefix(QUARANTINE_PREFIX) else {
        return Ok(None);
    };
    let mut done = RESOLVED_PREFIX.to_vec();
    done.extend_from_slice(suffix);
    store
        .meta_get(&done)?
        .map(|value| storage::decode(META_VERSION, &value))
        .transpose()
}

/// Decided entries in log order of the input, `limit` at most, after the entry whose
/// `quar-done/` key is `after`.
///
/// # Errors
/// Storage read or decode errors.
pub fn list_resolved(
    store: &Store,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<Resolved>, StorageError> {
    store
        .meta_scan_page(RESOLVED_PREFIX, after, limit)?
        .into_iter()
        .map(|(_, value)| storage::decode(META_VERSION, &value))
        .collect()
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

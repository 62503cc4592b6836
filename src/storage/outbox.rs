//! The outbox: effects (webhooks, payment requests) persisted under deterministic ids before
//! anyone acts on them, their delivery marks, and dead letters. It owns the moves between
//! `outbox`, `outbox_done` and `dead_letter`, each one write batch under the outbox lock. It must
//! not deliver, retry or interpret an effect; the actors do that and store their bookkeeping in
//! the opaque value (`update_outbox`).
//!
//! Each id lives in at most one place: pending in `outbox`, delivered in `outbox_done` (until
//! the cause's log entries are trimmed), or parked in `dead_letter`. A replay re-creates the
//! effects of the inputs it re-applies with the same ids; `put_outbox` skips ids that already
//! live somewhere, so a delivered effect is not sent twice and a pending one keeps its retry
//! state.

use std::sync::{MutexGuard, PoisonError};

use rustc_hash::FxHashSet;

use super::backend::{Batch, Cf, CursorOptions};
use super::keys::{outbox_done_value, parse_effect_id};
use super::{StorageError, Store, Uuid16};

/// Where an effect lives, for [`Store::effects_page`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EffectPlace {
    /// In `outbox`, waiting to be carried out.
    Pending,
    /// In `dead_letter`, given up on until an operator re-drives it.
    DeadLetter,
}

impl Store {
    /// Persists new effects caused by log entry `cause` (partition, seq), in one write batch
    /// without an fsync of its own: a replay of the cause re-creates them, and the next synced
    /// write (a log append, the checkpoint that would end that replay) makes them durable. Ids already pending, delivered or dead-lettered are skipped;
    /// the first occurrence wins when `entries` repeats an id. Returns how many were written.
    ///
    /// # Errors
    /// RocksDB errors; nothing is written then.
    pub fn put_outbox(
        &self,
        entries: &[(Uuid16, Vec<u8>)],
        cause: (u16, u64),
    ) -> Result<usize, StorageError> {
        self.inner
            .shared
            .check(super::faults::StorageOp::OutboxWrite)?;
        if entries.is_empty() {
            return Ok(0);
        }
        let _outbox = self.lock_outbox();
        let ids: Vec<&[u8]> = entries.iter().map(|(id, _)| id.as_slice()).collect();
        let backend = &self.inner.backend;
        let pending = backend.multi_get(Cf::Outbox, &ids, false)?;
        let done = backend.multi_get(Cf::OutboxDone, &ids, false)?;
        let dead = backend.multi_get(Cf::DeadLetter, &ids, false)?;
        let mut batch = Batch::default();
        let mut written = FxHashSet::default();
        for (index, (id, value)) in entries.iter().enumerate() {
            let exists = pending[index].is_some() || done[index].is_some() || dead[index].is_some();
            if !exists && written.insert(*id) {
                batch.put(Cf::Outbox, id, value);
            }
        }
        if !batch.is_empty() {
            // Derived: never its own fsync (see the doc above).
            backend.write(batch, false)?;
        }
        tracing::trace!(
            partition = cause.0,
            seq = cause.1,
            offered = entries.len(),
            written = written.len(),
            "outbox persisted"
        );
        Ok(written.len())
    }

    /// Every pending effect, in id order.
    ///
    /// # Errors
    /// RocksDB read errors, a key that is not a 16-byte id.
    pub fn outbox_pending(&self) -> Result<Vec<(Uuid16, Vec<u8>)>, StorageError> {
        self.inner.shared.check(super::faults::StorageOp::Read)?;
        self.scan_effects(Cf::Outbox)
    }

    /// Which of `ids` are still pending in `outbox` (not delivered, not dead-lettered), in
    /// order, in one batched read.
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn outbox_contains(&self, ids: &[Uuid16]) -> Result<Vec<bool>, StorageError> {
        self.inner
            .shared
            .check(super::faults::StorageOp::OutboxRead)?;
        let keys: Vec<&[u8]> = ids.iter().map(|id| id.as_slice()).collect();
        let values = self.inner.backend.multi_get(Cf::Outbox, &keys, false)?;
        Ok(values.iter().map(Option::is_some).collect())
    }

    /// Marks an effect delivered: removes it from `outbox` and records it in `outbox_done`
    /// with its cause, in one batch. Idempotent.
    ///
    /// # Errors
    /// RocksDB errors; nothing changed then.
    pub fn mark_delivered(&self, id: Uuid16, cause: (u16, u64)) -> Result<(), StorageError> {
        self.move_to_done(id, cause, None, self.inner.sync)
    }

    /// As [`Store::mark_delivered`], without an fsync of its own: the next synced write (a log
    /// append, a checkpoint record) makes it durable. A process crash keeps it (it is in the
    /// write-ahead log); only a power loss before that next fsync can lose it, and then the
    /// effect is still pending and is delivered again with the same id. For webhooks, which
    /// are delivered at least once; never for payment requests, whose retirement must hold.
    ///
    /// # Errors
    /// RocksDB errors; nothing changed then.
    pub fn mark_delivered_lazily(&self, id: Uuid16, cause: (u16, u64)) -> Result<(), StorageError> {
        self.move_to_done(id, cause, None, false)
    }

    /// As [`Store::mark_delivered_lazily`], writing `record` (a `meta` key and value: what the
    /// operator sees of the delivery) in the same batch, so the two never disagree.
    ///
    /// # Errors
    /// RocksDB errors; nothing changed then.
    pub fn mark_delivered_lazily_with(
        &self,
        id: Uuid16,
        cause: (u16, u64),
        record: (&[u8], &[u8]),
    ) -> Result<(), StorageError> {
        self.move_to_done(id, cause, Some(record), false)
    }

    fn move_to_done(
        &self,
        id: Uuid16,
        cause: (u16, u64),
        record: Option<(&[u8], &[u8])>,
        sync: bool,
    ) -> Result<(), StorageError> {
        self.inner
            .shared
            .check(super::faults::StorageOp::OutboxWrite)?;
        let _outbox = self.lock_outbox();
        let mut batch = Batch::default();
        batch.delete(Cf::Outbox, &id);
        batch.put(Cf::OutboxDone, &id, &outbox_done_value(cause));
        if let Some((key, value)) = record {
            batch.put(Cf::Meta, key, value);
        }
        self.inner.backend.write(batch, sync)
    }

    /// Up to `limit` effects of `place` whose id is greater than `after`, in id order (the
    /// operator's cursor pages).
    ///
    /// # Errors
    /// RocksDB read errors, a key that is not a 16-byte id.
    pub fn effects_page(
        &self,
        place: EffectPlace,
        after: Option<Uuid16>,
        limit: usize,
    ) -> Result<Vec<(Uuid16, Vec<u8>)>, StorageError> {
        self.inner.shared.check(super::faults::StorageOp::Read)?;
        let cf = match place {
            EffectPlace::Pending => Cf::Outbox,
            EffectPlace::DeadLetter => Cf::DeadLetter,
        };
        let mut it = self.inner.backend.cursor(cf, CursorOptions::new())?;
        match after {
            Some(id) => {
                it.seek(&id);
                if it.key() == Some(&id[..]) {
                    it.next();
                }
            }
            None => it.seek_to_first(),
        }
        let mut effects = Vec::new();
        while let Some((key, value)) = it.item() {
            if effects.len() >= limit {
                break;
            }
            effects.push((parse_effect_id(key)?, value.to_vec()));
            it.next();
        }
        it.status()?;
        Ok(effects)
    }

    /// How many effects are in `place`, counting at most `max`.
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn effects_count(&self, place: EffectPlace, max: usize) -> Result<usize, StorageError> {
        self.inner.shared.check(super::faults::StorageOp::Read)?;
        let cf = match place {
            EffectPlace::Pending => Cf::Outbox,
            EffectPlace::DeadLetter => Cf::DeadLetter,
        };
        let mut it = self.inner.backend.cursor(cf, CursorOptions::new())?;
        it.seek_to_first();
        let mut count = 0;
        while it.key().is_some() && count < max {
            count += 1;
            it.next();
        }
        it.status()?;
        Ok(count)
    }

    /// Replaces the value of a pending effect (e.g. its retry attempt count). Returns `false`
    /// and writes nothing when the effect is no longer pending, so a late retry update cannot
    /// resurrect a delivered or dead-lettered effect.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn update_outbox(&self, id: Uuid16, value: &[u8]) -> Result<bool, StorageError> {
        self.write_pending(id, value, self.inner.sync)
    }

    /// As [`Store::update_outbox`], without an fsync of its own (the next synced write makes
    /// it durable): for a webhook's retry bookkeeping, which a power loss may only turn back
    /// to an earlier attempt; never for payment requests.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn update_outbox_lazily(&self, id: Uuid16, value: &[u8]) -> Result<bool, StorageError> {
        self.write_pending(id, value, false)
    }

    fn write_pending(&self, id: Uuid16, value: &[u8], sync: bool) -> Result<bool, StorageError> {
        self.inner
            .shared
            .check(super::faults::StorageOp::OutboxWrite)?;
        let _outbox = self.lock_outbox();
        if self.inner.backend.get(Cf::Outbox, &id)?.is_none() {
            return Ok(false);
        }
        let mut batch = Batch::default();
        batch.put(Cf::Outbox, &id, value);
        self.inner.backend.write(batch, sync)?;
        Ok(true)
    }

    /// Moves a pending effect to `dead_letter` with `value` (e.g. the last error), in one
    /// batch. Returns `false` and writes nothing when the effect is not pending.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn dead_letter(&self, id: Uuid16, value: &[u8]) -> Result<bool, StorageError> {
        self.inner
            .shared
            .check(super::faults::StorageOp::OutboxWrite)?;
        let _outbox = self.lock_outbox();
        if self.inner.backend.get(Cf::Outbox, &id)?.is_none() {
            return Ok(false);
        }
        let mut batch = Batch::default();
        batch.delete(Cf::Outbox, &id);
        batch.put(Cf::DeadLetter, &id, value);
        self.inner.backend.write(batch, self.inner.sync)?;
        Ok(true)
    }

    /// Every dead-lettered effect, in id order.
    ///
    /// # Errors
    /// RocksDB read errors, a key that is not a 16-byte id.
    pub fn dead_letters(&self) -> Result<Vec<(Uuid16, Vec<u8>)>, StorageError> {
        self.inner.shared.check(super::faults::StorageOp::Read)?;
        self.scan_effects(Cf::DeadLetter)
    }

    /// The stored value of the dead letter `id`, if there is one.
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn dead_letter_value(&self, id: Uuid16) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.shared.check(super::faults::StorageOp::Read)?;
        self.inner.backend.get(Cf::DeadLetter, &id)
    }

    /// Moves a dead-lettered effect back to `outbox` with `value` (its bookkeeping for the new
    /// attempts), in one synced batch. Returns `false` and writes nothing when the id is not
    /// dead-lettered.
    ///
    /// # Errors
    /// RocksDB errors; nothing changed then.
    pub fn redrive_dead_letter_as(&self, id: Uuid16, value: &[u8]) -> Result<bool, StorageError> {
        self.inner
            .shared
            .check(super::faults::StorageOp::OutboxWrite)?;
        let _outbox = self.lock_outbox();
        if self.inner.backend.get(Cf::DeadLetter, &id)?.is_none() {
            return Ok(false);
        }
        let mut batch = Batch::default();
        batch.delete(Cf::DeadLetter, &id);
        batch.put(Cf::Outbox, &id, value);
        self.inner.backend.write(batch, self.inner.sync)?;
        Ok(true)
    }

    /// Ids of effects carried out (`outbox_done`, until trimmed) or parked as dead letters:
    /// with [`outbox_pending`](Self::outbox_pending), every effect the store knows of.
    ///
    /// # Errors
    /// As [`outbox_pending`](Self::outbox_pending).
    pub fn outbox_settled_ids(&self) -> Result<Vec<Uuid16>, StorageError> {
        self.inner.shared.check(super::faults::StorageOp::Read)?;
        let mut ids: Vec<Uuid16> = self
            .scan_effects(Cf::OutboxDone)?
            .into_iter()
            .chain(self.scan_effects(Cf::DeadLetter)?)
            .map(|(id, _)| id)
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn scan_effects(&self, cf: Cf) -> Result<Vec<(Uuid16, Vec<u8>)>, StorageError> {
        let mut it = self.inner.backend.cursor(cf, CursorOptions::new())?;
        it.seek_to_first();
        let mut effects = Vec::new();
        while let Some((key, value)) = it.item() {
            effects.push((parse_effect_id(key)?, value.to_vec()));
            it.next();
        }
        it.status()?;
        Ok(effects)
    }

    pub(super) fn lock_outbox(&self) -> MutexGuard<'_, ()> {
        self.inner
            .outbox_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

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

use rocksdb::WriteBatch;
use rustc_hash::FxHashSet;

use super::keys::{outbox_done_value, parse_effect_id};
use super::{CF_DEAD_LETTER, CF_OUTBOX, CF_OUTBOX_DONE, StorageError, Store, Uuid16};

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
        let outbox = self.cf(CF_OUTBOX)?;
        let done = self.cf(CF_OUTBOX_DONE)?;
        let dead = self.cf(CF_DEAD_LETTER)?;
        let _outbox = self.lock_outbox();
        let lookups = entries
            .iter()
            .flat_map(|(id, _)| [(outbox, id), (done, id), (dead, id)]);
        let found = self.inner.db.multi_get_cf(lookups);
        let mut batch = WriteBatch::default();
        let mut written = FxHashSet::default();
        for ((id, value), places) in entries.iter().zip(found.chunks_exact(3)) {
            let mut exists = false;
            for place in places {
                match place {
                    Ok(Some(_)) => exists = true,
                    Ok(None) => {}
                    Err(e) => return Err(e.clone().into()),
                }
            }
            if !exists && written.insert(*id) {
                batch.put_cf(outbox, id, value);
            }
        }
        if !batch.is_empty() {
            self.inner
                .db
                .write_opt(batch, &self.inner.derived_write_opts)?;
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
        self.scan_effects(CF_OUTBOX)
    }

    /// Marks an effect delivered: removes it from `outbox` and records it in `outbox_done`
    /// with its cause, in one batch. Idempotent.
    ///
    /// # Errors
    /// RocksDB errors; nothing changed then.
    pub fn mark_delivered(&self, id: Uuid16, cause: (u16, u64)) -> Result<(), StorageError> {
        self.inner
            .shared
            .check(super::faults::StorageOp::OutboxWrite)?;
        let outbox = self.cf(CF_OUTBOX)?;
        let done = self.cf(CF_OUTBOX_DONE)?;
        let _outbox = self.lock_outbox();
        let mut batch = WriteBatch::default();
        batch.delete_cf(outbox, id);
        batch.put_cf(done, id, outbox_done_value(cause));
        self.inner.db.write_opt(batch, &self.inner.write_opts)?;
        Ok(())
    }

    /// Replaces the value of a pending effect (e.g. its retry attempt count). Returns `false`
    /// and writes nothing when the effect is no longer pending, so a late retry update cannot
    /// resurrect a delivered or dead-lettered effect.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn update_outbox(&self, id: Uuid16, value: &[u8]) -> Result<bool, StorageError> {
        self.inner
            .shared
            .check(super::faults::StorageOp::OutboxWrite)?;
        let outbox = self.cf(CF_OUTBOX)?;
        let _outbox = self.lock_outbox();
        if self.inner.db.get_pinned_cf(outbox, id)?.is_none() {
            return Ok(false);
        }
        self.inner
            .db
            .put_cf_opt(outbox, id, value, &self.inner.write_opts)?;
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
        let outbox = self.cf(CF_OUTBOX)?;
        let dead = self.cf(CF_DEAD_LETTER)?;
        let _outbox = self.lock_outbox();
        if self.inner.db.get_pinned_cf(outbox, id)?.is_none() {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(outbox, id);
        batch.put_cf(dead, id, value);
        self.inner.db.write_opt(batch, &self.inner.write_opts)?;
        Ok(true)
    }

    /// Every dead-lettered effect, in id order.
    ///
    /// # Errors
    /// RocksDB read errors, a key that is not a 16-byte id.
    pub fn dead_letters(&self) -> Result<Vec<(Uuid16, Vec<u8>)>, StorageError> {
        self.inner.shared.check(super::faults::StorageOp::Read)?;
        self.scan_effects(CF_DEAD_LETTER)
    }

    /// Moves a dead-lettered effect back to `outbox` with its stored value, in one batch, for
    /// another delivery attempt. Returns `false` when the id is not dead-lettered.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn redrive_dead_letter(&self, id: Uuid16) -> Result<bool, StorageError> {
        self.inner
            .shared
            .check(super::faults::StorageOp::OutboxWrite)?;
        let outbox = self.cf(CF_OUTBOX)?;
        let dead = self.cf(CF_DEAD_LETTER)?;
        let _outbox = self.lock_outbox();
        let Some(value) = self.inner.db.get_pinned_cf(dead, id)? else {
            return Ok(false);
        };
        let mut batch = WriteBatch::default();
        batch.delete_cf(dead, id);
        batch.put_cf(outbox, id, &*value);
        self.inner.db.write_opt(batch, &self.inner.write_opts)?;
        Ok(true)
    }

    fn scan_effects(&self, name: &'static str) -> Result<Vec<(Uuid16, Vec<u8>)>, StorageError> {
        let mut it = self.inner.db.raw_iterator_cf(self.cf(name)?);
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

//! Trimming: deleting what a checkpoint made redundant (log entries, the `outbox_done` marks
//! they caused) and dedupe entries older than the window. It owns the rule that nothing a
//! checkpoint does not cover is deleted; it must not decide when to trim (the engine does,
//! after each checkpoint, possibly on a thread of its own).

use std::sync::PoisonError;

use super::backend::{Batch, Cf, CursorOptions};
use super::keys::{log_key, parse_log_key, parse_outbox_done_value, record_count, record_last_seq};
use super::{DEDUPE_SWEEP_INTERVAL_MS, StorageError, Store, TrimStats, dedupe, faults};

impl Store {
    /// Deletes what a checkpoint made redundant: the log records of `partition` holding only
    /// seqs <= `up_to_seq` (a record reaching past it stays whole), and the `outbox_done`
    /// entries caused by seqs <= `up_to_seq`; plus, at most once per
    /// [`DEDUPE_SWEEP_INTERVAL_MS`] of `now_ms`, every `dedupe` entry (all partitions) first
    /// accepted before `now_ms - dedupe_window_ms`.
    ///
    /// `up_to_seq` is capped at the partition's checkpoint: entries no checkpoint covers are
    /// still needed for recovery, so without a checkpoint no log entry is deleted. The cap is
    /// reported in [`TrimStats::log_trimmed_up_to`].
    ///
    /// # Errors
    /// RocksDB errors, malformed stored values. A failure leaves everything consistent; the
    /// next trim finishes the work.
    pub fn trim(
        &self,
        partition: u16,
        up_to_seq: u64,
        now_ms: i64,
    ) -> Result<TrimStats, StorageError> {
        self.inner.shared.check(faults::StorageOp::Trim)?;
        let mut stats = TrimStats {
            log_trimmed_up_to: up_to_seq.min(self.checkpoint_seq(partition)?.unwrap_or(0)),
            ..TrimStats::default()
        };
        let up_to = stats.log_trimmed_up_to;

        let end = if up_to > 0 {
            self.trim_end(partition, up_to)?
        } else {
            0
        };
        if end > 0
            && let Some(first) = self.first_seq(partition)?
            && first < end
        {
            let mut batch = Batch::default();
            // One range tombstone instead of a delete per record; the end is exclusive.
            batch.delete_range(Cf::Log, &log_key(partition, 0), &log_key(partition, end));
            self.inner.backend.write(batch, self.inner.sync)?;
            stats.log_deleted = end - first;
        }

        if up_to > 0 {
            stats.outbox_done_deleted = self.trim_outbox_done(partition, up_to)?;
        }

        let sweep_due = {
            let last = self
                .inner
                .last_dedupe_sweep_ms
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            last.is_none_or(|last| now_ms.saturating_sub(last) >= DEDUPE_SWEEP_INTERVAL_MS)
        };
        if sweep_due {
            let cutoff_ms = now_ms.saturating_sub(self.inner.dedupe_window_ms);
            stats.dedupe_deleted = dedupe::sweep_expired(
                &*self.inner.backend,
                &self.inner.shared,
                self.inner.sync,
                cutoff_ms,
            )?;
            stats.dedupe_swept = true;
            // Recorded only after a complete sweep, so a failed one is retried next time.
            *self
                .inner
                .last_dedupe_sweep_ms
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(now_ms);
        }
        tracing::debug!(partition, ?stats, "trimmed");
        Ok(stats)
    }

    /// The first seq of `partition` that a trim up to `up_to` keeps: a record holds
    /// consecutive seqs, so one that reaches past `up_to` is kept whole, and what it holds up
    /// to `up_to` is deleted later, with it.
    fn trim_end(&self, partition: u16, up_to: u64) -> Result<u64, StorageError> {
        let mut it = self.inner.backend.cursor(Cf::Log, CursorOptions::new())?;
        it.seek_for_prev(&log_key(partition, up_to));
        let end = match it.item() {
            Some((key, value)) => match parse_log_key(key)? {
                (p, first) if p == partition => {
                    let last = record_last_seq(first, u64::from(record_count(value)?))?;
                    // Covered whole: trim through it (a record ending at `u64::MAX` is the
                    // partition's last and is kept, like any record holding the last seq).
                    match last.checked_add(1) {
                        Some(after_last) if last <= up_to => after_last,
                        _ => first,
                    }
                }
                // Nothing of this partition at or before `up_to`.
                _ => 0,
            },
            None => 0,
        };
        it.status()?;
        Ok(end)
    }

    /// The smallest seq still in the log of `partition`.
    fn first_seq(&self, partition: u16) -> Result<Option<u64>, StorageError> {
        let mut it = self.inner.backend.cursor(Cf::Log, CursorOptions::new())?;
        it.seek(&log_key(partition, 0));
        let first = match it.key() {
            Some(key) => match parse_log_key(key)? {
                (p, seq) if p == partition => Some(seq),
                _ => None,
            },
            None => None,
        };
        it.status()?;
        Ok(first)
    }

    fn trim_outbox_done(&self, partition: u16, up_to: u64) -> Result<u64, StorageError> {
        let _outbox = self.lock_outbox();
        let mut batch = Batch::default();
        let mut deleted = 0u64;
        let mut it = self
            .inner
            .backend
            .cursor(Cf::OutboxDone, CursorOptions::new())?;
        it.seek_to_first();
        while let Some((key, value)) = it.item() {
            let (cause_partition, cause_seq) = parse_outbox_done_value(value)?;
            if cause_partition == partition && cause_seq <= up_to {
                batch.delete(Cf::OutboxDone, key);
                deleted += 1;
            }
            it.next();
        }
        it.status()?;
        if !batch.is_empty() {
            self.inner.backend.write(batch, self.inner.sync)?;
        }
        Ok(deleted)
    }
}

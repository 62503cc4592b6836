//! Storage: the only place bytes reach disk. It owns the RocksDB database, its column families
//! and key layout, the group-committed partition logs with transaction dedupe, checkpoints, the
//! outbox and dead letters, and a generic `meta` key-value space. Payloads are opaque bytes here:
//! this module must not interpret inputs, state or effects (the engine encodes them, optionally
//! with [`encode`]/[`decode`]), must not read a clock (times come in as `at_ms`/`now_ms`), and
//! must not hold business rules beyond "a key seen within the window is a duplicate".
//!
//! # Column families and key layout
//! Integers are big-endian, so RocksDB's bytewise key order is numeric order. The default column
//! family is unused.
//!
//! | CF | key | value |
//! |---|---|---|
//! | `log` | partition `u16` ++ seq `u64` | `at_ms` `i64` ++ payload |
//! | `dedupe` | caller's dedupe key bytes (e.g. `b"tx:" ++ transaction_id`) | partition `u16` ++ seq `u64` ++ `at_ms` `i64` of the first acceptance |
//! | `checkpoint` | partition `u16` | seq `u64` reflected ++ opaque state |
//! | `outbox` | effect id (16 bytes) | opaque effect |
//! | `outbox_done` | effect id (16 bytes) | partition `u16` ++ seq `u64` of the cause |
//! | `dead_letter` | effect id (16 bytes) | opaque effect |
//! | `meta` | caller's key bytes (catalog objects, config fingerprints) | opaque bytes |
//!
//! Seqs start at 1 per partition and are gap-free. `dedupe` has a bloom filter (10 bits/key):
//! most keys looked up are new, and the filter answers "absent" without touching a data block.
//!
//! # Invariants
//! - Only the group-commit thread (`log.rs`) writes `log`, and `dedupe` except for deleting
//!   expired entries. The dedupe check and seq assignment are one ordered step there.
//! - A record and its dedupe entry are written in one write batch: neither exists without the
//!   other.
//! - `trim` never deletes log entries a checkpoint does not cover, and the seq counters start
//!   from `max(last log key, checkpoint seq)`, so trimming a whole log never restarts its seqs.

mod codec;
mod dedupe;
pub mod faults;
mod keys;
mod log;
mod meta;
mod outbox;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DB, Options, ReadOptions, WriteBatch,
    WriteOptions,
};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use codec::{decode, encode};
pub use meta::MetaEntry;

use keys::{
    checkpoint_value, log_key, log_partition_end, parse_checkpoint_value, parse_log_key,
    parse_outbox_done_value, parse_partition_key, parse_record_value, partition_key,
};
use log::{GroupCommit, Request, WriterConfig};

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_DEDUPE: &str = "dedupe";
pub(crate) const CF_CHECKPOINT: &str = "checkpoint";
pub(crate) const CF_OUTBOX: &str = "outbox";
pub(crate) const CF_OUTBOX_DONE: &str = "outbox_done";
pub(crate) const CF_DEAD_LETTER: &str = "dead_letter";
pub(crate) const CF_META: &str = "meta";

/// Transaction ids are deduplicated for 34 days, Metronome's documented window.
pub const DEDUPE_WINDOW_MS_DEFAULT: i64 = 34 * 24 * 60 * 60 * 1000;
/// Recent dedupe keys kept exactly in memory. At ~150 bytes per entry with 40-byte keys this is
/// ~150 MB and covers minutes of peak ingest, the span in which client retries arrive.
pub const DEDUPE_MEMORY_ENTRIES_DEFAULT: usize = 1_000_000;
/// `trim` sweeps the whole `dedupe` column family at most this often. Expiry is measured in days,
/// so sweeping more often than hourly frees nothing worth a full scan (and `trim` runs once per
/// partition per checkpoint).
pub const DEDUPE_SWEEP_INTERVAL_MS: i64 = 60 * 60 * 1000;

/// An effect id: a 16-byte UUID.
pub type Uuid16 = [u8; 16];

/// Everything that can go wrong below the engine.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// RocksDB failed: I/O error, corruption it detected, or shutdown.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// Bytes on disk do not have the layout this module writes (see the module docs).
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// [`encode`] could not serialize a value.
    #[error("encode: {0}")]
    Encode(String),
    /// [`decode`] could not deserialize bytes of the expected version.
    #[error("decode: {0}")]
    Decode(String),
    /// [`decode`] was given bytes written with another version.
    #[error("unknown payload version {found} (this build reads version {expected})")]
    UnknownVersion { expected: u8, found: u8 },
    /// A replay found a hole in a partition's log: `after_seq` is below what was trimmed (load
    /// the checkpoint first), or entries were lost.
    #[error("log of partition {partition} has a gap: expected seq {expected}, found {found}")]
    LogGap {
        partition: u16,
        expected: u64,
        found: u64,
    },
    /// A checkpoint must not claim a seq that is not in the log yet, nor move backwards.
    #[error(
        "checkpoint of partition {partition} at seq {seq} is outside [{checkpointed}, {last}] \
         (current checkpoint, last seq)"
    )]
    CheckpointOutOfRange {
        partition: u16,
        seq: u64,
        checkpointed: u64,
        last: u64,
    },
    /// The append queue is full; the caller should shed load (HTTP 429) and retry later.
    #[error("the append queue is full ({0} requests waiting)")]
    Overloaded(usize),
    /// The group-commit thread is gone (the store is shutting down).
    #[error("the storage writer has stopped")]
    Closed,
    /// The group-commit thread could not be started.
    #[error("starting the storage writer thread")]
    Spawn(#[source] Arc<std::io::Error>),
    /// `StoreOptions` make no sense (e.g. a negative dedupe window).
    #[error("invalid storage options: {0}")]
    InvalidOptions(&'static str),
    /// The database lacks a column family this module creates on open.
    #[error("column family {0} is missing")]
    MissingColumnFamily(&'static str),
    /// The store was fenced after a failure: it writes nothing more in this process.
    #[error("the store is fenced after a storage failure; restart to recover")]
    Fenced,
    /// A test's [`faults::FaultInjector`] failed the operation (as a failing disk would).
    #[error("injected storage fault: {0}")]
    Injected(String),
}

/// When an append is acknowledged (`storage.durability` in config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the group's fsync: survives power loss.
    #[default]
    Fsync,
    /// After the WAL write without fsync: survives a process kill, not a power loss.
    Wal,
}

/// How to open a [`Store`] (the `storage` section of the config; absent fields take defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    pub durability: Durability,
    /// A dedupe key first accepted more than this long before an append's `at_ms` is accepted
    /// again.
    pub dedupe_window_ms: i64,
    /// Size of the exact in-memory map of recently accepted dedupe keys (0 disables it; every
    /// lookup then goes to RocksDB).
    pub dedupe_memory_entries: usize,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            durability: Durability::Fsync,
            dedupe_window_ms: DEDUPE_WINDOW_MS_DEFAULT,
            dedupe_memory_entries: DEDUPE_MEMORY_ENTRIES_DEFAULT,
        }
    }
}

/// Records to append to one partition's log, all stamped with the same wall-clock `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendBatch {
    pub partition: u16,
    pub at_ms: i64,
    pub records: Vec<LogRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Records with a key are appended only if the key was not accepted within the window.
    pub dedupe_key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// The outcome of an append, one entry per record in order: `Some(seq)` when appended, `None`
/// for a duplicate (accepted before within the window, earlier in the same batch, or in a
/// concurrent batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub seqs: Vec<Option<u64>>,
}

/// What a [`Store::trim`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TrimStats {
    /// Log entries up to this seq are gone: the requested seq capped by the checkpoint.
    pub log_trimmed_up_to: u64,
    pub log_deleted: u64,
    /// Whether this call swept `dedupe` (see [`DEDUPE_SWEEP_INTERVAL_MS`]).
    pub dedupe_swept: bool,
    pub dedupe_deleted: u64,
    pub outbox_done_deleted: u64,
}

/// Counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Append requests answered successfully.
    pub appends: u64,
    /// Records appended (given a seq).
    pub records: u64,
    /// Records refused as duplicates.
    pub duplicates: u64,
    /// Group writes to RocksDB (a group of only duplicates writes nothing).
    pub groups: u64,
    /// Group writes with fsync (`Durability::Fsync`).
    pub fsyncs: u64,
    /// Records (appended + duplicates) in the last group, and the most in any group.
    pub group_records_last: u64,
    pub group_records_max: u64,
    /// Most requests in any group.
    pub group_requests_max: u64,
    /// Duration of the last group write, including its fsync.
    pub last_persist_micros: u64,
    /// Group writes that failed.
    pub write_errors: u64,
}

#[derive(Default)]
pub(crate) struct StatCounters {
    appends: AtomicU64,
    records: AtomicU64,
    duplicates: AtomicU64,
    groups: AtomicU64,
    fsyncs: AtomicU64,
    group_records_last: AtomicU64,
    group_records_max: AtomicU64,
    group_requests_max: AtomicU64,
    last_persist_micros: AtomicU64,
    write_errors: AtomicU64,
}

/// State shared between `Store` handles and the writer thread.
pub(crate) struct Shared {
    /// Last persisted seq per partition, published by the writer before it answers.
    last_seqs: RwLock<FxHashMap<u16, u64>>,
    stats: StatCounters,
    /// Held by the writer from its dedupe reads to its write, and by the trim sweep while it
    /// re-reads and deletes expired entries, so a sweep never deletes a key the writer has just
    /// re-accepted.
    dedupe_lock: Mutex<()>,
    /// Tests' fault injection; `None` in production.
    faults: Option<faults::Faults>,
    /// Set by [`Store::fence`]: every write is refused from then on.
    fenced: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Asks the fault injector, if any, whether `op` may go ahead.
    #[inline]
    fn check(&self, op: faults::StorageOp) -> Result<(), StorageError> {
        if op != faults::StorageOp::Read && self.fenced.load(Relaxed) {
            return Err(StorageError::Fenced);
        }
        match &self.faults {
            Some(faults) => faults.before(op),
            None => Ok(()),
        }
    }
}

/// Handle to the database. Cheap to clone. Dropping the last handle stops the writer thread
/// after it has answered everything queued, waits for that (briefly blocking the dropping
/// thread), and closes the database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    // Declared first so it drops first: its drop joins the writer thread, which releases the
    // thread's database handle before ours goes.
    log: GroupCommit,
    db: Arc<DB>,
    shared: Arc<Shared>,
    write_opts: WriteOptions,
    /// For data a replay of the log re-creates (effects, indexes): never its own fsync.
    derived_write_opts: WriteOptions,
    dedupe_window_ms: i64,
    /// Serializes outbox and dead-letter moves. Each is read-check-write (an id must not be
    /// written back to `outbox` once it is in `outbox_done`), so two of them must not
    /// interleave.
    outbox_lock: Mutex<()>,
    /// `now_ms` of the last dedupe sweep.
    last_dedupe_sweep_ms: Mutex<Option<i64>>,
}

impl Store {
    /// Opens (creating if needed) the database in `dir` and starts the group-commit thread.
    ///
    /// # Errors
    /// [`StorageError::InvalidOptions`], RocksDB open errors (another process holds the lock,
    /// an unreadable directory), corrupt keys found while recovering the seq counters, a
    /// failed thread spawn.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StorageError> {
        Store::open_with_faults(dir, opts, None)
    }

    /// [`Store::open`] with a fault injector asked before every write and read (tests).
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_with_faults(
        dir: &Path,
        opts: StoreOptions,
        faults: Option<faults::Faults>,
    ) -> Result<Store, StorageError> {
        if opts.dedupe_window_ms < 0 {
            // A negative window would silently turn dedupe off.
            return Err(StorageError::InvalidOptions(
                "dedupe_window_ms must not be negative",
            ));
        }
        let db = Arc::new(open_db(dir)?);
        let seqs = recover_seqs(&db)?;
        tracing::info!(dir = %dir.display(), partitions = seqs.len(), durability = ?opts.durability, "storage opened");
        let shared = Arc::new(Shared {
            last_seqs: RwLock::new(seqs.clone()),
            stats: StatCounters::default(),
            dedupe_lock: Mutex::new(()),
            faults,
            fenced: std::sync::atomic::AtomicBool::new(false),
        });
        let log = GroupCommit::start(
            Arc::clone(&db),
            Arc::clone(&shared),
            WriterConfig {
                durability: opts.durability,
                dedupe_window_ms: opts.dedupe_window_ms,
                dedupe_memory_entries: opts.dedupe_memory_entries,
            },
            seqs,
        )?;
        Ok(Store {
            inner: Arc::new(Inner {
                log,
                db,
                shared,
                write_opts: log::write_options(opts.durability),
                derived_write_opts: log::write_options(Durability::Wal),
                dedupe_window_ms: opts.dedupe_window_ms,
                outbox_lock: Mutex::new(()),
                last_dedupe_sweep_ms: Mutex::new(None),
            }),
        })
    }

    /// Appends a batch through group commit, deduplicating keyed records.
    ///
    /// The request is queued when this is called, not when the future is first polled, and
    /// the returned future borrows nothing. Cancel-safe in that sense: once this returns, the
    /// append happens (or fails) whether or not the future is polled or dropped; dropping it
    /// only loses the answer.
    ///
    /// # Errors
    /// [`StorageError::Overloaded`] when the queue is full (nothing was queued), a RocksDB
    /// write error for the whole group, [`StorageError::Corrupt`] when a stored dedupe entry of
    /// this batch is unreadable (nothing of this batch was appended), [`StorageError::Closed`].
    pub fn append(
        &self,
        batch: AppendBatch,
    ) -> impl Future<Output = Result<Appended, StorageError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let queued = self.inner.log.submit(Request { batch, reply });
        async move {
            queued?;
            answer.await.map_err(|_| StorageError::Closed)?
        }
    }

    /// [`Store::append`] for threads that may block (tests, tools, benches). Waits for room in
    /// the queue instead of answering `Overloaded`.
    ///
    /// Must not be called from inside an async runtime (it blocks the thread, and tokio's
    /// blocking receive panics there).
    ///
    /// # Errors
    /// As [`Store::append`], except `Overloaded`.
    pub fn append_blocking(&self, batch: AppendBatch) -> Result<Appended, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.inner.log.submit_blocking(Request { batch, reply })?;
        answer.blocking_recv().map_err(|_| StorageError::Closed)?
    }

    /// Refuses every later write (log appends, states, checkpoints, outbox, trims) from any
    /// thread: after a storage failure nothing may be written that claims more than what is
    /// known to be on disk (a checkpoint covering an input whose effects were lost, say).
    /// Reads go on.
    pub fn fence(&self) {
        self.inner.shared.fenced.store(true, Relaxed);
    }

    /// Writes a consistent, openable copy of the whole database to `dir` (which must not
    /// exist), while the store keeps running: RocksDB's checkpoint (hard links of the table
    /// files plus the write-ahead log). What a crash at this instant would leave on disk.
    ///
    /// # Errors
    /// RocksDB errors (`dir` exists, another file system for hard links is copied instead).
    pub fn copy_to(&self, dir: &Path) -> Result<(), StorageError> {
        rocksdb::checkpoint::Checkpoint::new(&self.inner.db)?.create_checkpoint(dir)?;
        Ok(())
    }

    /// The last persisted seq of `partition` (0 when it has none).
    ///
    /// # Errors
    /// None today; `Result` keeps room for a log that is not in memory.
    pub fn last_seq(&self, partition: u16) -> Result<u64, StorageError> {
        let seqs = self
            .inner
            .shared
            .last_seqs
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(seqs.get(&partition).copied().unwrap_or(0))
    }

    /// Streams the log records of `partition` with seq > `after_seq` to `f` in seq order, as
    /// `(seq, at_ms, payload)`, and returns how many were passed. Reads a consistent snapshot
    /// (appends made during the replay are not seen) one record at a time.
    ///
    /// # Errors
    /// The first error `f` returns (the replay stops there), RocksDB read errors,
    /// [`StorageError::LogGap`] when the records do not continue `after_seq` without holes,
    /// [`StorageError::Corrupt`] for a malformed record.
    pub fn replay(
        &self,
        partition: u16,
        after_seq: u64,
        mut f: impl FnMut(u64, i64, &[u8]) -> Result<(), StorageError>,
    ) -> Result<u64, StorageError> {
        self.inner.shared.check(faults::StorageOp::Read)?;
        let Some(mut expected) = after_seq.checked_add(1) else {
            return Ok(0);
        };
        let log = self.cf(CF_LOG)?;
        let mut read_opts = ReadOptions::default();
        // Recovery reads each record once; do not evict the hot blocks.
        read_opts.fill_cache(false);
        if let Some(end) = log_partition_end(partition) {
            read_opts.set_iterate_upper_bound(end);
        }
        let mut it = self.inner.db.raw_iterator_cf_opt(log, read_opts);
        it.seek(log_key(partition, expected));
        let mut count = 0u64;
        while let Some((key, value)) = it.item() {
            let (key_partition, seq) = parse_log_key(key)?;
            if key_partition != partition {
                break;
            }
            if seq != expected {
                return Err(StorageError::LogGap {
                    partition,
                    expected,
                    found: seq,
                });
            }
            let (at_ms, payload) = parse_record_value(value)?;
            f(seq, at_ms, payload)?;
            count += 1;
            expected = seq.saturating_add(1);
            it.next();
        }
        it.status()?;
        Ok(count)
    }

    /// Persists `state` as the checkpoint of `partition` reflecting the log up to `seq`, with
    /// an fsync whatever the durability mode: checkpoints are rare and `trim` relies on them.
    ///
    /// # Errors
    /// [`StorageError::CheckpointOutOfRange`] when `seq` is beyond the last appended seq or
    /// below the current checkpoint; RocksDB errors.
    pub fn put_checkpoint(
        &self,
        partition: u16,
        seq: u64,
        state: &[u8],
    ) -> Result<(), StorageError> {
        self.inner.shared.check(faults::StorageOp::Checkpoint)?;
        let last = self.last_seq(partition)?;
        let checkpointed = self.checkpoint_seq(partition)?.unwrap_or(0);
        if seq > last || seq < checkpointed {
            return Err(StorageError::CheckpointOutOfRange {
                partition,
                seq,
                checkpointed,
                last,
            });
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.inner.db.put_cf_opt(
            self.cf(CF_CHECKPOINT)?,
            partition_key(partition),
            checkpoint_value(seq, state),
            &opts,
        )?;
        Ok(())
    }

    /// The checkpoint of `partition`: the seq it reflects and its state bytes.
    ///
    /// # Errors
    /// RocksDB read errors, a malformed checkpoint value.
    pub fn checkpoint(&self, partition: u16) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let Some(value) = self
            .inner
            .db
            .get_pinned_cf(self.cf(CF_CHECKPOINT)?, partition_key(partition))?
        else {
            return Ok(None);
        };
        let (seq, state) = parse_checkpoint_value(&value)?;
        Ok(Some((seq, state.to_vec())))
    }

    fn checkpoint_seq(&self, partition: u16) -> Result<Option<u64>, StorageError> {
        let value = self
            .inner
            .db
            .get_pinned_cf(self.cf(CF_CHECKPOINT)?, partition_key(partition))?;
        value
            .map(|v| parse_checkpoint_value(&v).map(|(seq, _)| seq))
            .transpose()
    }

    /// Deletes what a checkpoint made redundant: the log entries of `partition` with seq <=
    /// `up_to_seq`, and the `outbox_done` entries caused by them; plus, at most once per
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

        if up_to > 0
            && let Some(first) = self.first_seq(partition)?
            && first <= up_to
        {
            let mut batch = WriteBatch::default();
            // One range tombstone instead of a delete per entry. The end is exclusive; `up_to`
            // is at most the last seq, which never reaches u64::MAX.
            batch.delete_range_cf(
                self.cf(CF_LOG)?,
                log_key(partition, 0),
                log_key(partition, up_to.saturating_add(1)),
            );
            self.inner.db.write_opt(batch, &self.inner.write_opts)?;
            stats.log_deleted = up_to - first + 1;
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
                &self.inner.db,
                &self.inner.shared,
                &self.inner.write_opts,
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

    /// The smallest seq still in the log of `partition`.
    fn first_seq(&self, partition: u16) -> Result<Option<u64>, StorageError> {
        let mut it = self.inner.db.raw_iterator_cf(self.cf(CF_LOG)?);
        it.seek(log_key(partition, 0));
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
        let done = self.cf(CF_OUTBOX_DONE)?;
        let _outbox = self.lock_outbox();
        let mut batch = WriteBatch::default();
        let mut deleted = 0u64;
        let mut it = self.inner.db.raw_iterator_cf(done);
        it.seek_to_first();
        while let Some((key, value)) = it.item() {
            let (cause_partition, cause_seq) = parse_outbox_done_value(value)?;
            if cause_partition == partition && cause_seq <= up_to {
                batch.delete_cf(done, key);
                deleted += 1;
            }
            it.next();
        }
        it.status()?;
        if !batch.is_empty() {
            self.inner.db.write_opt(batch, &self.inner.write_opts)?;
        }
        Ok(deleted)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.shared.stats;
        StoreStats {
            appends: c.appends.load(Relaxed),
            records: c.records.load(Relaxed),
            duplicates: c.duplicates.load(Relaxed),
            groups: c.groups.load(Relaxed),
            fsyncs: c.fsyncs.load(Relaxed),
            group_records_last: c.group_records_last.load(Relaxed),
            group_records_max: c.group_records_max.load(Relaxed),
            group_requests_max: c.group_requests_max.load(Relaxed),
            last_persist_micros: c.last_persist_micros.load(Relaxed),
            write_errors: c.write_errors.load(Relaxed),
        }
    }

    fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StorageError> {
        cf(&self.inner.db, name)
    }
}

pub(crate) fn cf<'db>(db: &'db DB, name: &'static str) -> Result<&'db ColumnFamily, StorageError> {
    db.cf_handle(name)
        .ok_or(StorageError::MissingColumnFamily(name))
}

/// Memtable size of the `dedupe` column family (RocksDB's default is 64 MiB).
const DEDUPE_MEMTABLE_BYTES: usize = 8 << 20;

fn open_db(dir: &Path) -> Result<DB, StorageError> {
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    // Writers without an fsync (effects, states) should not wait behind the group commit's
    // WAL sync: pipelined writes let the next group's memtable inserts overlap it.
    db_opts.set_enable_pipelined_write(true);
    // A writer queued behind another waits on a condition variable instead of spinning with
    // sched_yield: with an fsync in progress, the spinning burned whole partition threads.
    db_opts.set_enable_write_thread_adaptive_yield(false);

    let mut dedupe_table = BlockBasedOptions::default();
    dedupe_table.set_bloom_filter(10.0, false);
    let mut dedupe_opts = Options::default();
    dedupe_opts.set_block_based_table_factory(&dedupe_table);
    // The same answer for keys still in the memtable: a whole-key bloom filter there too.
    dedupe_opts.set_memtable_whole_key_filtering(true);
    dedupe_opts.set_memtable_prefix_bloom_ratio(0.1);
    // Dedupe keys are random (hashes of transaction ids): every insert searches the memtable's
    // skiplist, a cache miss per level. A smaller memtable keeps more of that search in the CPU
    // cache; flushes and compaction run on background threads. (A hash memtable made inserts
    // cheap but its flushes, which must sort, cost more than they saved.)
    dedupe_opts.set_write_buffer_size(DEDUPE_MEMTABLE_BYTES);

    let descriptors = [
        ColumnFamilyDescriptor::new(CF_LOG, Options::default()),
        ColumnFamilyDescriptor::new(CF_DEDUPE, dedupe_opts),
        ColumnFamilyDescriptor::new(CF_CHECKPOINT, Options::default()),
        ColumnFamilyDescriptor::new(CF_OUTBOX, Options::default()),
        ColumnFamilyDescriptor::new(CF_OUTBOX_DONE, Options::default()),
        ColumnFamilyDescriptor::new(CF_DEAD_LETTER, Options::default()),
        ColumnFamilyDescriptor::new(CF_META, Options::default()),
    ];
    Ok(DB::open_cf_descriptors(&db_opts, dir, descriptors)?)
}

/// The last seq of every partition: the larger of its last log key and its checkpoint seq
/// (a fully trimmed log has no keys but must not restart at 1).
fn recover_seqs(db: &DB) -> Result<FxHashMap<u16, u64>, StorageError> {
    let mut seqs = FxHashMap::default();

    // Skip-scan: one seek to the last key of each partition that has a log, not a full read.
    let mut it = db.raw_iterator_cf(cf(db, CF_LOG)?);
    it.seek_to_first();
    while let Some(key) = it.key() {
        let (partition, _) = parse_log_key(key)?;
        it.seek_for_prev(log_key(partition, u64::MAX));
        let Some(last_key) = it.key() else { break };
        let (last_partition, last) = parse_log_key(last_key)?;
        if last_partition != partition {
            // Keys are sorted, so landing in another partition means RocksDB moved under us.
            return Err(StorageError::Corrupt {
                what: "log key order",
                detail: format!("last key of partition {partition} is in {last_partition}"),
            });
        }
        seqs.insert(partition, last);
        match log_partition_end(partition) {
            Some(end) => it.seek(end),
            None => break,
        }
    }
    it.status()?;

    let mut it = db.raw_iterator_cf(cf(db, CF_CHECKPOINT)?);
    it.seek_to_first();
    while let Some((key, value)) = it.item() {
        let partition = parse_partition_key(key)?;
        let (seq, _) = parse_checkpoint_value(value)?;
        let last = seqs.entry(partition).or_insert(0);
        *last = (*last).max(seq);
        it.next();
    }
    it.status()?;
    Ok(seqs)
}

//! Storage: the only place bytes reach disk. It owns the database (RocksDB, or the simulated
//! disk of deterministic tests), its column families and key layout, the group-committed
//! partition logs with transaction dedupe, checkpoints, the outbox and dead letters, and a
//! generic `meta` key-value space. Payloads are opaque bytes here:
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
//! | `log` | partition `u16` ++ first seq `u64` | `at_ms` `i64` ++ count `u32` ++ (length `u32` ++ payload) per record: one append request's accepted records, seqs first..first+count |
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
//! - Only the group-commit writer (`log.rs`) writes `log`, and `dedupe` except for deleting
//!   expired entries. The dedupe check and seq assignment are one ordered step there.
//! - A record and its dedupe entry are written in one write batch: neither exists without the
//!   other.
//! - `trim` never deletes log entries a checkpoint does not cover, and the seq counters start
//!   from `max(last log key, checkpoint seq)`, so trimming a whole log never restarts its seqs.
//!
//! # Backends
//! `Store` talks to its database through a small column-family-addressed key-value trait
//! (`backend.rs`: get, multi-get, ordered cursors, atomic write batches with a `sync` flag, a
//! consistent copy). [`Store::open`] runs on RocksDB (`rocks.rs`) with the group commit on a
//! thread of its own. [`Store::open_sim`] runs on a [`sim::SimDisk`], in-memory ordered maps
//! that keep, at a [`sim::SimDisk::crash`], only what RocksDB promises to keep; there the group
//! commit runs synchronously in the caller of `append` (no thread), so one thread can drive a
//! whole engine deterministically. [`Store::open_inline`] is RocksDB with that inline writer.
//! Both backends pass the same behaviour tests (`tests.rs`, `backend_tests.rs`).
//!
//! # Durability
//! Every write goes through RocksDB's write-ahead log (nothing sets `disable_wal`), so every
//! write survives a process crash. Which writes also fsync (and so survive a power loss, with
//! everything written before them):
//!
//! | write | `fsync` mode | `wal` mode |
//! |---|---|---|
//! | log appends (group commit), `meta_put`/`meta_delete`/`meta_write_batch`, outbox moves (`mark_delivered`, `update_outbox`, `dead_letter`, `redrive_dead_letter_as`), trims and dedupe sweeps | sync | no sync |
//! | derived writes: `put_outbox`, `meta_write_derived*` (a replay re-creates them), `mark_delivered_lazily` (webhooks: lost only with a power loss, then delivered again), `update_outbox_lazily` (a webhook's retry bookkeeping: a power loss turns it back to an earlier attempt) | no sync | no sync |
//! | `put_checkpoint` | sync | sync |

mod backend;
#[cfg(test)]
mod backend_tests;
mod codec;
mod dedupe;
pub mod faults;
mod keys;
mod log;
mod meta;
mod outbox;
mod rocks;
pub mod sim;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;
mod trim;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

pub use backend::CfSize;
pub use codec::{decode, encode};
pub use meta::MetaEntry;
pub use outbox::EffectPlace;

use backend::{Backend, Batch, Cf, CursorOptions};
use keys::{
    checkpoint_value, log_key, log_partition_end, parse_checkpoint_value, parse_log_key,
    parse_partition_key, parse_record_value, partition_key, record_count,
};
use log::{GroupCommit, WriterConfig};
use rocks::RocksBackend;
use sim::SimDisk;

/// Transaction ids are deduplicated for 34 days, Metronome's documented window.
pub const DEDUPE_WINDOW_MS_DEFAULT: i64 = 34 * 24 * 60 * 60 * 1000;
/// Recent dedupe keys kept exactly in memory. At ~150 bytes per entry with 40-byte keys this is
/// ~150 MB and covers minutes of peak ingest, the span in which client retries arrive.
pub const DEDUPE_MEMORY_ENTRIES_DEFAULT: usize = 1_000_000;
/// `trim` sweeps the whole `dedupe` column family at most this often. Expiry is measured in days,
/// so sweeping more often than hourly frees nothing worth a full scan (and `trim` runs once per
/// partition per checkpoint).
pub const DEDUPE_SWEEP_INTERVAL_MS: i64 = 60 * 60 * 1000;

/// The layout of the data directory this build writes and reads, kept under
/// [`STORAGE_FORMAT_KEY`] in `meta`. Version 1 (no mark; builds before 2026-12-03) wrote one log
/// record per input; version 2 writes one per append request and partition; version 3
/// (2026-12-04) has the same log and outbox entries that keep their last failed attempt's
/// status, which builds of version 2 cannot read; version 4 (2026-12-04) has customer states
/// that keep their workflows' history and log entries for operators' cancels, which builds of
/// version 3 cannot read; version 5 (2026-12-07) has customer states with recharge rails and
/// lifecycles, contract inputs with rails and end dates (log entry version 6) and the `wak/`
/// alarms, which builds of version 4 cannot read; version 6 (2026-12-08) has alerts in the
/// catalog log, alert resets (log entry version 7) and customer states with alert statuses
/// (state version 6), which builds of version 5 cannot read; version 7 (2026-12-08) has
/// customer-level commits and credits (log entry version 8, state version 7), which builds of
/// version 6 cannot read; version 8 (2026-12-08) has manual ledger entries, custom fields,
/// balance specifiers and archives (log entry version 9, state version 8) and the
/// `commit.archive` notices in the outbox, which builds of version 7 cannot read; version 9
/// (2026-12-08) has custom pricing units (credit types and conversions in the catalog log, log
/// entry version 10, state version 9), which builds of version 8 cannot read. A version 2 to 8
/// directory is marked 9 at start (its entries are read as they are): see
/// [`STORAGE_FORMAT_UPGRADABLE`].
pub const STORAGE_FORMAT_VERSION: u32 = 9;
/// The older versions this build opens, re-marking them as [`STORAGE_FORMAT_VERSION`] first.
pub const STORAGE_FORMAT_UPGRADABLE: [u32; 7] = [2, 3, 4, 5, 6, 7, 8];
/// The `meta` key of the storage format version (`u32`, big-endian).
pub const STORAGE_FORMAT_KEY: &[u8] = b"storage/format-version";

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
    /// A test's [`faults::FaultInjector`] failed the operation (as a failing disk would), or a
    /// [`sim::SimDisk`] refused a write after its crash point.
    #[error("injected storage fault: {0}")]
    Injected(String),
    /// The data directory was written in a layout this build does not read.
    #[error(
        "the data directory has storage format version {found}; this build reads versions 2 \
         to {expected} only: run the build that wrote it, or start on an empty data directory \
         (README, \"Storage format\")"
    )]
    FormatVersion { found: u32, expected: u32 },
    /// The simulated disk refused: it is open in another store, the process of this store
    /// crashed ([`sim::SimDisk::crash`]), or a copy's directory exists.
    #[error("simulated disk: {0}")]
    SimDisk(&'static str),
}

impl StorageError {
    /// Whether the store itself failed (disk, RocksDB, a fence, a lost writer): such failures
    /// are fail-stop (SPEC 2.1). A value that does not encode or decode, back-pressure and bad
    /// options are not: they concern one record or one caller, and stopping would not mend
    /// them (a restart would read the same bytes again).
    pub fn is_store_failure(&self) -> bool {
        match self {
            StorageError::Rocks(_)
            | StorageError::Corrupt { .. }
            | StorageError::LogGap { .. }
            | StorageError::CheckpointOutOfRange { .. }
            | StorageError::Closed
            | StorageError::Spawn(_)
            | StorageError::MissingColumnFamily(_)
            | StorageError::Fenced
            | StorageError::Injected(_)
            | StorageError::FormatVersion { .. }
            | StorageError::SimDisk(_) => true,
            StorageError::Encode(_)
            | StorageError::Decode(_)
            | StorageError::UnknownVersion { .. }
            | StorageError::Overloaded(_)
            | StorageError::InvalidOptions(_) => false,
        }
    }
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
    /// The requested seq capped by the checkpoint: every log record holding only seqs up to
    /// this one is gone (a record reaching past it stays whole until a later trim).
    pub log_trimmed_up_to: u64,
    /// Seqs deleted (the records' payloads).
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
    /// Group writes to RocksDB, their fsync included.
    pub(crate) persist: crate::histogram::Histogram,
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
        if op.is_write() && self.fenced.load(Relaxed) {
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
/// thread), and closes the database (on a simulated disk: releases the disk for the next open).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    // Declared first so it drops first: its drop joins the writer thread, which releases the
    // thread's database handle before ours goes.
    log: GroupCommit,
    backend: Arc<dyn Backend>,
    shared: Arc<Shared>,
    /// Whether the store's own writes fsync (`Durability::Fsync`). Data a replay of the log
    /// re-creates (effects, indexes) never syncs on its own; checkpoints always do.
    sync: bool,
    dedupe_window_ms: i64,
    /// Serializes outbox and dead-letter moves. Each is read-check-write (an id must not be
    /// written back to `outbox` once it is in `outbox_done`), so two of them must not
    /// interleave.
    outbox_lock: Mutex<()>,
    /// `now_ms` of the last dedupe sweep.
    last_dedupe_sweep_ms: Mutex<Option<i64>>,
}

/// Who runs the group commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriterMode {
    /// A thread of its own, fed by a queue (production).
    Thread,
    /// The caller of `append`, synchronously (deterministic simulation).
    Inline,
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
        Store::open_rocks(dir, opts, faults, WriterMode::Thread)
    }

    /// [`Store::open_with_faults`] with the group commit run by the caller of `append`, as on
    /// the simulated disk: for deterministic runs on real RocksDB. (RocksDB's own flush and
    /// compaction threads still run; they change no answer.)
    ///
    /// # Errors
    /// As [`Store::open`], without the thread spawn.
    pub fn open_inline(
        dir: &Path,
        opts: StoreOptions,
        faults: Option<faults::Faults>,
    ) -> Result<Store, StorageError> {
        Store::open_rocks(dir, opts, faults, WriterMode::Inline)
    }

    fn open_rocks(
        dir: &Path,
        opts: StoreOptions,
        faults: Option<faults::Faults>,
        mode: WriterMode,
    ) -> Result<Store, StorageError> {
        check_options(&opts)?;
        let backend = Arc::new(RocksBackend::open(dir)?);
        Store::start(backend, &dir.display(), opts, faults, mode)
    }

    /// Opens a store on a simulated disk, recovering from what it holds (after a
    /// [`SimDisk::crash`], what survived). No thread is started: each `append` runs its group
    /// commit synchronously, so its future is ready when `append` returns and
    /// `append_blocking` may be called anywhere, even inside an async runtime. The fault
    /// injector, if any, is asked exactly as on RocksDB.
    ///
    /// # Errors
    /// [`StorageError::InvalidOptions`], [`StorageError::SimDisk`] when another store has the
    /// disk open, corrupt keys found while recovering the seq counters.
    pub fn open_sim(
        disk: &Arc<SimDisk>,
        opts: StoreOptions,
        faults: Option<faults::Faults>,
    ) -> Result<Store, StorageError> {
        check_options(&opts)?;
        let backend = Arc::new(disk.open_backend()?);
        Store::start(
            backend,
            &"(simulated disk)",
            opts,
            faults,
            WriterMode::Inline,
        )
    }

    /// Recovers the seq counters from `backend` and starts the writer. `dir` is for the log.
    fn start(
        backend: Arc<dyn Backend>,
        dir: &dyn std::fmt::Display,
        opts: StoreOptions,
        faults: Option<faults::Faults>,
        mode: WriterMode,
    ) -> Result<Store, StorageError> {
        check_format(&*backend)?;
        let seqs = recover_seqs(&*backend)?;
        tracing::info!(
            %dir,
            partitions = seqs.len(),
            durability = ?opts.durability,
            writer = ?mode,
            "storage opened"
        );
        let shared = Arc::new(Shared {
            last_seqs: RwLock::new(seqs.clone()),
            stats: StatCounters::default(),
            dedupe_lock: Mutex::new(()),
            faults,
            fenced: std::sync::atomic::AtomicBool::new(false),
        });
        let config = WriterConfig {
            durability: opts.durability,
            dedupe_window_ms: opts.dedupe_window_ms,
            dedupe_memory_entries: opts.dedupe_memory_entries,
        };
        let (writer_backend, writer_shared) = (Arc::clone(&backend), Arc::clone(&shared));
        let log = match mode {
            WriterMode::Thread => GroupCommit::start(writer_backend, writer_shared, config, seqs)?,
            WriterMode::Inline => GroupCommit::inline(writer_backend, writer_shared, config, seqs),
        };
        Ok(Store {
            inner: Arc::new(Inner {
                log,
                backend,
                shared,
                sync: opts.durability == Durability::Fsync,
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
    /// only loses the answer. On an inline writer ([`Store::open_sim`]) the append is done
    /// when this returns and the future is ready.
    ///
    /// # Errors
    /// [`StorageError::Overloaded`] when the queue is full (nothing was queued), a RocksDB
    /// write error for the whole group, [`StorageError::Corrupt`] when a stored dedupe entry of
    /// this batch is unreadable (nothing of this batch was appended), [`StorageError::Closed`].
    pub fn append(
        &self,
        batch: AppendBatch,
    ) -> impl Future<Output = Result<Appended, StorageError>> + Send + 'static {
        self.inner.log.append(batch)
    }

    /// [`Store::append`] for threads that may block (tests, tools, benches). Waits for room in
    /// the queue instead of answering `Overloaded`.
    ///
    /// Must not be called from inside an async runtime (it blocks the thread, and tokio's
    /// blocking receive panics there), except on an inline writer, which never waits.
    ///
    /// # Errors
    /// As [`Store::append`], except `Overloaded`.
    pub fn append_blocking(&self, batch: AppendBatch) -> Result<Appended, StorageError> {
        self.inner.log.append_blocking(batch)
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
    /// files plus the write-ahead log). What a crash at this instant would leave on disk. On a
    /// simulated disk, a new RocksDB database holding what the store reads now.
    ///
    /// # Errors
    /// RocksDB errors (`dir` exists, another file system for hard links is copied instead);
    /// [`StorageError::SimDisk`] when `dir` exists on a simulated disk.
    pub fn copy_to(&self, dir: &Path) -> Result<(), StorageError> {
        self.inner.backend.copy_to(dir)
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
        // Recovery reads each record once; do not evict the hot blocks.
        let end = log_partition_end(partition);
        let opts = CursorOptions::new()
            .no_fill_cache()
            .upper_bound(end.as_ref().map(|end| &end[..]));
        let mut it = self.inner.backend.cursor(Cf::Log, opts)?;
        // A record holds consecutive seqs from its key's on: the one holding `expected` is the
        // last at or before it, when that is in this partition.
        it.seek_for_prev(&log_key(partition, expected));
        let in_partition = match it.key() {
            Some(key) => parse_log_key(key)?.0 == partition,
            None => false,
        };
        if !in_partition {
            it.seek(&log_key(partition, expected));
        }
        let mut count = 0u64;
        let mut first_record = true;
        while let Some((key, value)) = it.item() {
            let (key_partition, first) = parse_log_key(key)?;
            if key_partition != partition {
                break;
            }
            let run = parse_record_value(value)?;
            let last = keys::record_last_seq(first, run.payloads.len() as u64)?;
            if first > expected {
                return Err(StorageError::LogGap {
                    partition,
                    expected,
                    found: first,
                });
            }
            // Only the first record read may start before `expected` (a checkpoint inside it);
            // a later one that does overlaps its predecessor, which the writer never does.
            if first < expected && !first_record {
                return Err(StorageError::Corrupt {
                    what: "log record",
                    detail: format!(
                        "partition {partition}: a record from seq {first} overlaps the one before, which ends at {}",
                        expected - 1
                    ),
                });
            }
            first_record = false;
            for (seq, payload) in (first..=last).zip(run.payloads) {
                if seq >= expected {
                    f(seq, run.at_ms, payload)?;
                    count += 1;
                }
            }
            match last.checked_add(1) {
                Some(next) => expected = expected.max(next),
                // The last seq there is: nothing can follow it.
                None => break,
            }
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
        let mut batch = Batch::default();
        batch.put(
            Cf::Checkpoint,
            &partition_key(partition),
            &checkpoint_value(seq, state),
        );
        self.inner.backend.write(batch, true)
    }

    /// The checkpoint of `partition`: the seq it reflects and its state bytes.
    ///
    /// # Errors
    /// RocksDB read errors, a malformed checkpoint value.
    pub fn checkpoint(&self, partition: u16) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let Some(value) = self
            .inner
            .backend
            .get(Cf::Checkpoint, &partition_key(partition))?
        else {
            return Ok(None);
        };
        let (seq, state) = parse_checkpoint_value(&value)?;
        Ok(Some((seq, state.to_vec())))
    }

    fn checkpoint_seq(&self, partition: u16) -> Result<Option<u64>, StorageError> {
        let value = self
            .inner
            .backend
            .get(Cf::Checkpoint, &partition_key(partition))?;
        value
            .map(|v| parse_checkpoint_value(&v).map(|(seq, _)| seq))
            .transpose()
    }

    /// The size of every column family, by name (empty on the simulated disk): what
    /// `/metrics` reports as `tollgate_storage_bytes`.
    pub fn sizes(&self) -> Vec<(&'static str, CfSize)> {
        Cf::ALL
            .iter()
            .filter_map(|cf| Some((cf.name(), self.inner.backend.size_of(*cf)?)))
            .collect()
    }

    /// A snapshot of the counters.
    /// Durations of the group writes (their fsync included).
    pub fn persist_histogram(&self) -> &crate::histogram::Histogram {
        &self.inner.shared.stats.persist
    }

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
}

fn check_options(opts: &StoreOptions) -> Result<(), StorageError> {
    if opts.dedupe_window_ms < 0 {
        // A negative window would silently turn dedupe off.
        return Err(StorageError::InvalidOptions(
            "dedupe_window_ms must not be negative",
        ));
    }
    Ok(())
}

/// Refuses a data directory of another storage format; marks a new one with this build's.
/// A directory holding data but no mark was written before marks existed: version 1.
fn check_format(backend: &dyn Backend) -> Result<(), StorageError> {
    let found = match backend.get(Cf::Meta, STORAGE_FORMAT_KEY)? {
        Some(value) => {
            let bytes: [u8; 4] =
                value
                    .as_slice()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt {
                        what: "storage format version",
                        detail: format!("length {} != 4", value.len()),
                    })?;
            u32::from_be_bytes(bytes)
        }
        None => {
            if !is_empty(backend)? {
                1
            } else {
                write_format_mark(backend)?;
                STORAGE_FORMAT_VERSION
            }
        }
    };
    if STORAGE_FORMAT_UPGRADABLE.contains(&found) {
        // Readable as it is; the new mark keeps builds of the old version from opening it
        // once it holds entries they cannot read.
        write_format_mark(backend)?;
        tracing::info!(
            from = found,
            to = STORAGE_FORMAT_VERSION,
            "data directory storage format upgraded"
        );
        return Ok(());
    }
    if found != STORAGE_FORMAT_VERSION {
        return Err(StorageError::FormatVersion {
            found,
            expected: STORAGE_FORMAT_VERSION,
        });
    }
    Ok(())
}

/// Marks the data directory with this build's storage format version (synced).
fn write_format_mark(backend: &dyn Backend) -> Result<(), StorageError> {
    let mut batch = Batch::default();
    batch.put(
        Cf::Meta,
        STORAGE_FORMAT_KEY,
        &STORAGE_FORMAT_VERSION.to_be_bytes(),
    );
    backend.write(batch, true)
}

/// Whether no column family holds a key.
fn is_empty(backend: &dyn Backend) -> Result<bool, StorageError> {
    for cf in Cf::ALL {
        let mut it = backend.cursor(cf, CursorOptions::new())?;
        it.seek_to_first();
        let found = it.key().is_some();
        it.status()?;
        if found {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The last seq of every partition: the larger of its last log key and its checkpoint seq
/// (a fully trimmed log has no keys but must not restart at 1).
fn recover_seqs(backend: &dyn Backend) -> Result<FxHashMap<u16, u64>, StorageError> {
    let mut seqs = FxHashMap::default();

    // Skip-scan: one seek to the last key of each partition that has a log, not a full read.
    let mut it = backend.cursor(Cf::Log, CursorOptions::new())?;
    it.seek_to_first();
    while let Some(key) = it.key() {
        let (partition, _) = parse_log_key(key)?;
        it.seek_for_prev(&log_key(partition, u64::MAX));
        let Some((last_key, last_value)) = it.item() else {
            break;
        };
        let (last_partition, last_first) = parse_log_key(last_key)?;
        // The last record holds the seqs from its key's on.
        let last = keys::record_last_seq(last_first, u64::from(record_count(last_value)?))?;
        if last_partition != partition {
            // Keys are sorted, so landing in another partition means RocksDB moved under us.
            return Err(StorageError::Corrupt {
                what: "log key order",
                detail: format!("last key of partition {partition} is in {last_partition}"),
            });
        }
        seqs.insert(partition, last);
        match log_partition_end(partition) {
            Some(end) => it.seek(&end),
            None => break,
        }
    }
    it.status()?;

    let mut it = backend.cursor(Cf::Checkpoint, CursorOptions::new())?;
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

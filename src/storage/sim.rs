//! A simulated disk for deterministic tests: the store's column families as in-memory ordered
//! maps, with the durability RocksDB promises and nothing kinder. It owns what survives a crash;
//! it must not use threads, a clock or randomly seeded hashing, so a seed replays the same way.
//!
//! # The durability model
//! Every write batch applies to the visible state at once (reads see it) and is appended to the
//! list of batches not yet durable. A write with `sync` makes itself *and every earlier batch*
//! durable: RocksDB has one write-ahead log for all column families, and an fsync covers
//! everything written before it. Every write in this codebase goes through the write-ahead log
//! (none sets `disable_wal`); which ones sync is decided by the store (see `storage/mod.rs`,
//! "Durability"): in `fsync` mode log appends, `meta` writes, outbox moves and trims sync, while
//! derived writes (`put_outbox`, `meta_write_derived*`) never do; in `wal` mode only
//! checkpoints sync.
//!
//! [`SimDisk::crash`] ends the process that had the disk open and keeps:
//! - [`CrashKind::ProcessCrash`] (`kill -9`): every batch that reached the write-ahead log,
//!   synced or not: RocksDB replays the whole log on open.
//! - [`CrashKind::PowerLoss`]: only the batches up to the last synced one.
//! - [`CrashKind::PowerLossKeeping`]: the synced batches plus the first `n` unsynced ones. A
//!   real power loss may keep any such prefix (the OS wrote part of the log back, a memtable
//!   flush synced what came before it), and RocksDB's default point-in-time recovery replays
//!   the log up to its first torn record: always whole batches, always a prefix.
//!
//! What survives becomes durable: RocksDB flushes the replayed log into synced table files
//! when it opens, so a second crash cannot lose it.
//!
//! # Stopping the world between two writes
//! [`SimDisk::stop_after_writes`] lets the next `n` writes apply and refuses every later one
//! with [`StorageError::Injected`], applying nothing, until the next crash. The first refused
//! write can be [`FailedWrite::ReachedWal`]: an error answered for a write that still survives
//! a process crash (RocksDB wrote its log record, then the fsync failed), the ambiguous
//! failure a caller must be ready for. Reads go on working, as they would from the page cache.
//!
//! A store open on a disk holds it like RocksDB's `LOCK` file: a second open fails until the
//! first store is dropped or the disk crashes. After a crash, the stores of the crashed
//! process fail every operation with [`StorageError::SimDisk`]: a dead process writes nothing.
//!
//! # Using it
//! ```
//! use tollgate::storage::sim::{CrashKind, FailedWrite, SimDisk};
//! use tollgate::storage::{AppendBatch, Durability, LogRecord, Store, StoreOptions};
//!
//! let disk = SimDisk::new();
//! let opts = StoreOptions { durability: Durability::Wal, ..StoreOptions::default() };
//! let store = Store::open_sim(&disk, opts.clone(), None).unwrap();
//! let record = LogRecord { dedupe_key: Some(b"tx:1".to_vec()), payload: b"event".to_vec() };
//! let batch = AppendBatch { partition: 0, at_ms: 0, records: vec![record] };
//! // No thread: the append is done when the call returns.
//! store.append_blocking(batch).unwrap();
//! // Let two more writes through, then stop the world.
//! disk.stop_after_writes(2, FailedWrite::Lost);
//! // ... drive the engine until its writes fail ...
//! let crashed = disk.crash(CrashKind::PowerLoss);
//! assert_eq!(crashed.batches_lost, 1); // `wal` mode: the append was never synced
//! let store = Store::open_sim(&disk, opts, None).unwrap();
//! assert_eq!(store.last_seq(0).unwrap(), 0);
//! ```

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::StorageError;
use super::backend::{Backend, Batch, BatchOp, Cf, Cursor, CursorOptions};

type Table = BTreeMap<Vec<u8>, Vec<u8>>;
type Tables = [Table; Cf::ALL.len()];

/// How the process that had the disk open ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashKind {
    /// The process is killed (`kill -9`, a panic that aborts): everything written survives,
    /// synced or not.
    ProcessCrash,
    /// The machine loses power: only what was synced survives.
    PowerLoss,
    /// The machine loses power after the OS wrote back the first `unsynced_batches` batches
    /// written after the last sync (capped at how many there are).
    PowerLossKeeping { unsynced_batches: usize },
}

/// What happens to the first write refused after [`SimDisk::stop_after_writes`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailedWrite {
    /// Nothing of it exists anywhere.
    #[default]
    Lost,
    /// It is not visible, but it is in the write-ahead log: a process crash keeps it (as an
    /// unsynced batch, so a power loss may not).
    ReachedWal,
}

/// What [`SimDisk::crash`] threw away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Crashed {
    /// Unsynced batches lost.
    pub batches_lost: usize,
    /// Unsynced batches kept (they are durable now).
    pub batches_kept: usize,
}

/// Counters of a disk since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimDiskStats {
    /// Write batches applied.
    pub writes: u64,
    /// Of those, with `sync`.
    pub synced_writes: u64,
    /// Writes refused after a [`SimDisk::stop_after_writes`] crash point.
    pub refused_writes: u64,
    /// Batches written since the last sync (what a power loss would lose now).
    pub unsynced_batches: usize,
    /// Crashes so far.
    pub crashes: u64,
}

/// An in-memory disk that a [`Store`](super::Store) opens with
/// [`Store::open_sim`](super::Store::open_sim). Share it as `Arc<SimDisk>`; it outlives the
/// stores opened on it, like a data directory.
pub struct SimDisk {
    state: Mutex<DiskState>,
}

struct DiskState {
    /// What a power loss keeps: every batch up to the last synced one.
    durable: Tables,
    /// Batches in the write-ahead log after the last sync, oldest first.
    unsynced: Vec<Batch>,
    /// What reads see. A cursor's snapshot is a clone of the `Arc`; a write while a snapshot is
    /// alive copies that table once (`Arc::make_mut`).
    visible: [Arc<Table>; Cf::ALL.len()],
    /// Bumped by every crash; stores opened in an older generation are dead.
    generation: u64,
    /// Whether a store of the current generation has the disk open.
    open: bool,
    stop: Option<Stop>,
    stats: SimDiskStats,
}

#[derive(Clone, Copy, Debug)]
struct Stop {
    writes_left: u64,
    failed_write: FailedWrite,
    refused_any: bool,
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> Arc<SimDisk> {
        Arc::new(SimDisk::with_tables(Tables::default()))
    }

    fn with_tables(tables: Tables) -> SimDisk {
        SimDisk {
            state: Mutex::new(DiskState {
                visible: tables.clone().map(Arc::new),
                durable: tables,
                unsynced: Vec::new(),
                generation: 0,
                open: false,
                stop: None,
                stats: SimDiskStats::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the process that has the disk open: what survives is what `kind` keeps (see the
    /// module docs), every store opened before is dead, any crash point is cleared, and the
    /// next [`Store::open_sim`](super::Store::open_sim) recovers from the survivors.
    pub fn crash(&self, kind: CrashKind) -> Crashed {
        let mut state = self.lock();
        let (survivors, crashed) = state.survivors(kind);
        state.visible = survivors.clone().map(Arc::new);
        state.durable = survivors;
        state.unsynced.clear();
        state.generation += 1;
        state.open = false;
        state.stop = None;
        state.stats.crashes += 1;
        state.stats.unsynced_batches = 0;
        crashed
    }

    /// A new disk holding what a crash of `kind` would leave now; this disk and its store go
    /// on undisturbed. For checking that recovery from *this* instant is correct.
    pub fn fork(&self, kind: CrashKind) -> Arc<SimDisk> {
        let (survivors, _) = self.lock().survivors(kind);
        Arc::new(SimDisk::with_tables(survivors))
    }

    /// Sets a crash point: the next `writes` writes apply, every later one is refused with
    /// [`StorageError::Injected`] and applies nothing, until [`SimDisk::crash`]. The first
    /// refused write is `failed_write` (lost, or in the write-ahead log anyway).
    ///
    /// Calling this again after a refusal lets writes through again without a restart, which
    /// RocksDB does not do after a failed log write (it refuses writes until reopened). The
    /// store does not rely on that: after a failed log write it is fenced and writes nothing
    /// more, since the failed group's seqs may be in the write-ahead log.
    pub fn stop_after_writes(&self, writes: u64, failed_write: FailedWrite) {
        self.lock().stop = Some(Stop {
            writes_left: writes,
            failed_write,
            refused_any: false,
        });
    }

    /// The counters since the disk was created.
    pub fn stats(&self) -> SimDiskStats {
        self.lock().stats
    }

    /// Whether a store has the disk open.
    pub fn is_open(&self) -> bool {
        self.lock().open
    }

    /// A hash of everything visible (all column families, keys and values): equal digests mean
    /// equal contents. Stable across runs and platforms (xxh3, fixed seed), so traces can
    /// include it.
    pub fn digest(&self) -> u64 {
        let state = self.lock();
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for (cf, table) in Cf::ALL.iter().zip(&state.visible) {
            hasher.update(cf.name().as_bytes());
            hasher.update(&(table.len() as u64).to_le_bytes());
            for (key, value) in table.iter() {
                hasher.update(&(key.len() as u64).to_le_bytes());
                hasher.update(key);
                hasher.update(&(value.len() as u64).to_le_bytes());
                hasher.update(value);
            }
        }
        hasher.digest()
    }

    /// Opens the disk for one store.
    pub(crate) fn open_backend(self: &Arc<SimDisk>) -> Result<SimBackend, StorageError> {
        let mut state = self.lock();
        if state.open {
            return Err(StorageError::SimDisk(
                "the simulated disk is open in another store",
            ));
        }
        state.open = true;
        Ok(SimBackend {
            disk: Arc::clone(self),
            generation: state.generation,
        })
    }
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDisk")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl DiskState {
    /// What a crash of `kind` keeps, and how many unsynced batches that loses and keeps.
    fn survivors(&self, kind: CrashKind) -> (Tables, Crashed) {
        let kept = match kind {
            CrashKind::ProcessCrash => self.unsynced.len(),
            CrashKind::PowerLoss => 0,
            CrashKind::PowerLossKeeping { unsynced_batches } => {
                unsynced_batches.min(self.unsynced.len())
            }
        };
        let mut tables = self.durable.clone();
        for batch in &self.unsynced[..kept] {
            for op in batch.iter() {
                apply(&mut tables[op_cf(op).index()], op);
            }
        }
        let crashed = Crashed {
            batches_lost: self.unsynced.len() - kept,
            batches_kept: kept,
        };
        (tables, crashed)
    }

    fn check_alive(&self, generation: u64) -> Result<(), StorageError> {
        if generation == self.generation {
            Ok(())
        } else {
            Err(StorageError::SimDisk(
                "the process of this store crashed (SimDisk::crash)",
            ))
        }
    }

    fn write(&mut self, batch: Batch, sync: bool) -> Result<(), StorageError> {
        if let Some(stop) = &mut self.stop {
            if stop.writes_left == 0 {
                if !stop.refused_any && stop.failed_write == FailedWrite::ReachedWal {
                    self.unsynced.push(batch);
                    self.stats.unsynced_batches = self.unsynced.len();
                }
                stop.refused_any = true;
                self.stats.refused_writes += 1;
                return Err(StorageError::Injected(
                    "the simulated disk stopped at its crash point".to_owned(),
                ));
            }
            stop.writes_left -= 1;
        }
        for op in batch.iter() {
            apply(Arc::make_mut(&mut self.visible[op_cf(op).index()]), op);
        }
        self.stats.writes += 1;
        if sync {
            self.stats.synced_writes += 1;
            for earlier in std::mem::take(&mut self.unsynced) {
                apply_batch(&mut self.durable, &earlier);
            }
            apply_batch(&mut self.durable, &batch);
        } else {
            self.unsynced.push(batch);
        }
        self.stats.unsynced_batches = self.unsynced.len();
        Ok(())
    }
}

fn op_cf(op: BatchOp<'_>) -> Cf {
    match op {
        BatchOp::Put(cf, ..) | BatchOp::Delete(cf, ..) | BatchOp::DeleteRange(cf, ..) => cf,
    }
}

fn apply_batch(tables: &mut Tables, batch: &Batch) {
    for op in batch.iter() {
        apply(&mut tables[op_cf(op).index()], op);
    }
}

fn apply(table: &mut Table, op: BatchOp<'_>) {
    match op {
        BatchOp::Put(_, key, value) => {
            table.insert(key.to_vec(), value.to_vec());
        }
        BatchOp::Delete(_, key) => {
            table.remove(key);
        }
        BatchOp::DeleteRange(_, start, end) => {
            // An empty or inverted range covers nothing (as a RocksDB range tombstone).
            if start >= end {
                return;
            }
            let doomed: Vec<Vec<u8>> = table
                .range::<[u8], _>((Included(start), Excluded(end)))
                .map(|(key, _)| key.clone())
                .collect();
            for key in doomed {
                table.remove(&key);
            }
        }
    }
}

/// One store's handle on a [`SimDisk`].
pub(crate) struct SimBackend {
    disk: Arc<SimDisk>,
    /// The disk's generation when this store opened it.
    generation: u64,
}

impl SimBackend {
    fn state(&self) -> Result<MutexGuard<'_, DiskState>, StorageError> {
        let state = self.disk.lock();
        state.check_alive(self.generation)?;
        Ok(state)
    }
}

impl Drop for SimBackend {
    fn drop(&mut self) {
        let mut state = self.disk.lock();
        if state.generation == self.generation {
            state.open = false;
        }
    }
}

impl Backend for SimBackend {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.state()?.visible[cf.index()].get(key).cloned())
    }

    fn multi_get(
        &self,
        cf: Cf,
        keys: &[&[u8]],
        _sorted: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let state = self.state()?;
        let table = &state.visible[cf.index()];
        Ok(keys.iter().map(|key| table.get(*key).cloned()).collect())
    }

    fn cursor(&self, cf: Cf, opts: CursorOptions) -> Result<Box<dyn Cursor + '_>, StorageError> {
        let table = Arc::clone(&self.state()?.visible[cf.index()]);
        Ok(Box::new(SimCursor {
            table,
            upper_bound: opts.upper_bound,
            position: None,
        }))
    }

    fn write(&self, batch: Batch, sync: bool) -> Result<(), StorageError> {
        self.state()?.write(batch, sync)
    }

    fn copy_to(&self, dir: &Path) -> Result<(), StorageError> {
        let snapshot: Vec<Arc<Table>> = self.state()?.visible.iter().map(Arc::clone).collect();
        if dir.exists() {
            return Err(StorageError::SimDisk("copy_to: the directory exists"));
        }
        super::rocks::write_new_db(
            dir,
            Cf::ALL.iter().zip(&snapshot).map(|(&cf, table)| {
                (
                    cf,
                    table
                        .iter()
                        .map(|(key, value)| (key.as_slice(), value.as_slice())),
                )
            }),
        )
    }
}

/// A cursor over a snapshot of one table. Holds the snapshot, so the disk's lock is not held
/// while the caller iterates (it may write meanwhile).
struct SimCursor {
    table: Arc<Table>,
    upper_bound: Option<Vec<u8>>,
    /// The key at the position; `None` when invalid.
    position: Option<Vec<u8>>,
}

impl SimCursor {
    /// Moves to `key`, or to the invalid position when there is none or it is past the bound.
    fn land(&mut self, key: Option<Vec<u8>>) {
        self.position = key.filter(|key| {
            self.upper_bound
                .as_deref()
                .is_none_or(|bound| key.as_slice() < bound)
        });
    }
}

impl Cursor for SimCursor {
    fn seek(&mut self, key: &[u8]) {
        let found = self
            .table
            .range::<[u8], _>((Included(key), Unbounded))
            .next()
            .map(|(k, _)| k.clone());
        self.land(found);
    }

    fn seek_to_first(&mut self) {
        let found = self.table.keys().next().cloned();
        self.land(found);
    }

    fn seek_for_prev(&mut self, key: &[u8]) {
        // The last key <= `key` that is also below the bound.
        let mut range = match self.upper_bound.as_deref() {
            Some(bound) if bound <= key => {
                self.table.range::<[u8], _>((Unbounded, Excluded(bound)))
            }
            _ => self.table.range::<[u8], _>((Unbounded, Included(key))),
        };
        let found = range.next_back().map(|(k, _)| k.clone());
        self.land(found);
    }

    fn next(&mut self) {
        let Some(current) = self.position.take() else {
            return;
        };
        let found = self
            .table
            .range::<[u8], _>((Excluded(current.as_slice()), Unbounded))
            .next()
            .map(|(k, _)| k.clone());
        self.land(found);
    }

    fn item(&self) -> Option<(&[u8], &[u8])> {
        let key = self.position.as_deref()?;
        self.table
            .get_key_value(key)
            .map(|(key, value)| (key.as_slice(), value.as_slice()))
    }

    fn status(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

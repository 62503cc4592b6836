//! The production backend: RocksDB, with the column families and tuning of the on-disk format
//! (see the module docs of `storage`). It owns opening the database and translating
//! [`Batch`]es, cursors and reads into RocksDB calls; it must not know what the keys mean.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DB, DBRawIterator, Options,
    ReadOptions, WriteOptions,
};

use super::StorageError;
use super::backend::{Backend, Batch, BatchOp, Cf, CfSize, Cursor, CursorOptions};

/// Memtable size of the `dedupe` column family (RocksDB's default is 64 MiB).
const DEDUPE_MEMTABLE_BYTES: usize = 8 << 20;

pub(crate) struct RocksBackend {
    db: DB,
    /// Write options, created once: each is a C object.
    synced: WriteOptions,
    unsynced: WriteOptions,
}

impl RocksBackend {
    /// Opens (creating if needed) the database in `dir` with every column family.
    ///
    /// # Errors
    /// RocksDB open errors (another process holds the lock, an unreadable directory).
    pub(crate) fn open(dir: &Path) -> Result<RocksBackend, StorageError> {
        let mut synced = WriteOptions::default();
        // The WAL stays enabled for every write; `sync` only adds the fsync, so an unsynced
        // write survives a process kill (it is in the OS page cache) but not a power loss.
        synced.set_sync(true);
        let mut unsynced = WriteOptions::default();
        unsynced.set_sync(false);
        Ok(RocksBackend {
            db: open_db(dir)?,
            synced,
            unsynced,
        })
    }

    fn handle(&self, cf: Cf) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(cf.name())
            .ok_or(StorageError::MissingColumnFamily(cf.name()))
    }
}

impl Backend for RocksBackend {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .db
            .get_pinned_cf(self.handle(cf)?, key)?
            .map(|value| value.to_vec()))
    }

    fn multi_get(
        &self,
        cf: Cf,
        keys: &[&[u8]],
        sorted: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let handle = self.handle(cf)?;
        self.db
            .batched_multi_get_cf(handle, keys, sorted)
            .into_iter()
            .map(|value| Ok(value?.map(|v| v.to_vec())))
            .collect()
    }

    fn cursor(&self, cf: Cf, opts: CursorOptions) -> Result<Box<dyn Cursor + '_>, StorageError> {
        let mut read_opts = ReadOptions::default();
        read_opts.fill_cache(opts.fill_cache);
        if let Some(bound) = opts.upper_bound {
            read_opts.set_iterate_upper_bound(bound);
        }
        let it = self.db.raw_iterator_cf_opt(self.handle(cf)?, read_opts);
        Ok(Box::new(RocksCursor(it)))
    }

    fn write(&self, batch: Batch, sync: bool) -> Result<(), StorageError> {
        // Column family handles, looked up once per family per write.
        let mut handles: [Option<&ColumnFamily>; Cf::ALL.len()] = [None; Cf::ALL.len()];
        let mut handle = |cf: Cf| -> Result<&ColumnFamily, StorageError> {
            match handles[cf.index()] {
                Some(h) => Ok(h),
                None => {
                    let h = self.handle(cf)?;
                    handles[cf.index()] = Some(h);
                    Ok(h)
                }
            }
        };
        let mut rocks = rocksdb::WriteBatch::default();
        for op in batch.iter() {
            match op {
                BatchOp::Put(cf, key, value) => rocks.put_cf(handle(cf)?, key, value),
                BatchOp::Delete(cf, key) => rocks.delete_cf(handle(cf)?, key),
                BatchOp::DeleteRange(cf, start, end) => {
                    rocks.delete_range_cf(handle(cf)?, start, end);
                }
            }
        }
        let opts = if sync { &self.synced } else { &self.unsynced };
        self.db.write_opt(rocks, opts)?;
        Ok(())
    }

    fn copy_to(&self, dir: &Path) -> Result<(), StorageError> {
        // Hard links of the table files plus the write-ahead log.
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(())
    }

    fn size_of(&self, cf: Cf) -> Option<CfSize> {
        let handle = self.handle(cf).ok()?;
        let property = |name: &str| self.db.property_int_value_cf(handle, name).ok().flatten();
        Some(CfSize {
            table_bytes: property("rocksdb.total-sst-files-size")?,
            memtable_bytes: property("rocksdb.cur-size-all-mem-tables")?,
        })
    }

    fn prepare_writer_thread(&self) {
        // RocksDB's per-operation perf counters cost a thread-local lookup per put.
        rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::Disable);
    }
}

struct RocksCursor<'db>(DBRawIterator<'db>);

impl Cursor for RocksCursor<'_> {
    fn seek(&mut self, key: &[u8]) {
        self.0.seek(key);
    }

    fn seek_to_first(&mut self) {
        self.0.seek_to_first();
    }

    fn seek_for_prev(&mut self, key: &[u8]) {
        self.0.seek_for_prev(key);
    }

    fn next(&mut self) {
        self.0.next();
    }

    fn item(&self) -> Option<(&[u8], &[u8])> {
        self.0.item()
    }

    fn key(&self) -> Option<&[u8]> {
        self.0.key()
    }

    fn status(&self) -> Result<(), StorageError> {
        Ok(self.0.status()?)
    }
}

/// Writes `tables` (one map per column family, in [`Cf::ALL`] order) as a new RocksDB database
/// in `dir`, synced: how a simulated disk's [`Backend::copy_to`] makes a real copy.
///
/// # Errors
/// RocksDB errors.
pub(crate) fn write_new_db<'t>(
    dir: &Path,
    tables: impl IntoIterator<Item = (Cf, impl IntoIterator<Item = (&'t [u8], &'t [u8])>)>,
) -> Result<(), StorageError> {
    /// Keys per write batch, so a large copy does not build one huge batch.
    const COPY_BATCH_KEYS: usize = 4096;
    let backend = RocksBackend::open(dir)?;
    for (cf, entries) in tables {
        let mut batch = Batch::default();
        for (key, value) in entries {
            batch.put(cf, key, value);
            if batch.len() >= COPY_BATCH_KEYS {
                backend.write(std::mem::take(&mut batch), false)?;
            }
        }
        backend.write(batch, false)?;
    }
    // One fsync of the write-ahead log covers every batch before it.
    backend.db.flush_wal(true)?;
    Ok(())
}

/// The most the write-ahead log files may hold before the column families that keep the oldest
/// one are flushed (RocksDB's `max_total_wal_size`).
const WAL_TOTAL_BYTES_MAX: u64 = 256 << 20;

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
    // RocksDB keeps a write-ahead log file until every column family with data in it has
    // flushed. The small families (meta, checkpoint, outbox) fill their memtables slowly, so
    // without a bound they held every WAL file since the start: 0.9 GB after 6.6M events in
    // 100 s. Past this total the families holding the oldest file are flushed.
    db_opts.set_max_total_wal_size(WAL_TOTAL_BYTES_MAX);

    let descriptors = Cf::ALL.map(|cf| {
        let opts = match cf {
            Cf::Dedupe => dedupe_options(),
            Cf::Log | Cf::Checkpoint | Cf::Outbox | Cf::OutboxDone | Cf::DeadLetter | Cf::Meta => {
                Options::default()
            }
        };
        ColumnFamilyDescriptor::new(cf.name(), opts)
    });
    Ok(DB::open_cf_descriptors(&db_opts, dir, descriptors)?)
}

fn dedupe_options() -> Options {
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
    dedupe_opts
}

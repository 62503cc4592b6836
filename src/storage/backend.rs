//! The key-value seam below the store: what `Store` needs from a database, addressed by column
//! family. Two backends implement it: RocksDB (`rocks.rs`, production, the on-disk format in the
//! module docs) and the simulated disk (`sim.rs`, deterministic tests). It owns the operations
//! and their contract, not the key layout: keys and values are opaque bytes here.
//!
//! The contract both backends keep (and `backend_tests.rs` checks on both):
//! - A [`Batch`] applies whole or not at all, and a later read sees all of it.
//! - `write(batch, sync: true)` returns once the batch *and every batch written before it* would
//!   survive a power loss (RocksDB has one write-ahead log, and an fsync covers everything before
//!   it). With `sync: false` the batch is in the write-ahead log: it survives a process crash,
//!   not necessarily a power loss. No write in this codebase skips the write-ahead log.
//! - A [`Cursor`] reads a consistent snapshot taken when it was created: writes made while it is
//!   open are not seen. Keys are ordered bytewise.

use std::path::Path;

use super::StorageError;

/// The column families of the store (see the key layout table in `storage/mod.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Cf {
    Log,
    Dedupe,
    Checkpoint,
    Outbox,
    OutboxDone,
    DeadLetter,
    Meta,
}

impl Cf {
    pub(crate) const ALL: [Cf; 7] = [
        Cf::Log,
        Cf::Dedupe,
        Cf::Checkpoint,
        Cf::Outbox,
        Cf::OutboxDone,
        Cf::DeadLetter,
        Cf::Meta,
    ];

    /// The RocksDB column family name: part of the on-disk format.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Cf::Log => "log",
            Cf::Dedupe => "dedupe",
            Cf::Checkpoint => "checkpoint",
            Cf::Outbox => "outbox",
            Cf::OutboxDone => "outbox_done",
            Cf::DeadLetter => "dead_letter",
            Cf::Meta => "meta",
        }
    }

    /// Position in [`Cf::ALL`], for per-family arrays.
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// What one batch operation does (the byte ranges live in [`Batch::bytes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    /// First range: key, second: value.
    Put,
    /// First range: key.
    Delete,
    /// First range: start key (inclusive), second: end key (exclusive).
    DeleteRange,
}

#[derive(Clone, Copy, Debug)]
struct Op {
    kind: OpKind,
    cf: Cf,
    start: usize,
    first_len: usize,
    second_len: usize,
}

/// A write batch that any backend can apply: puts, deletes and range deletes, in order, over
/// any column families. The bytes of all operations share one buffer, so building a batch of
/// thousands of records costs a few buffer growths, not an allocation per key.
#[derive(Clone, Debug, Default)]
pub(crate) struct Batch {
    bytes: Vec<u8>,
    ops: Vec<Op>,
}

/// One operation of a [`Batch`], borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BatchOp<'b> {
    Put(Cf, &'b [u8], &'b [u8]),
    Delete(Cf, &'b [u8]),
    /// Every key in `[start, end)`.
    DeleteRange(Cf, &'b [u8], &'b [u8]),
}

impl Batch {
    /// A batch with room for `ops` operations of `bytes` key and value bytes in total.
    pub(crate) fn with_capacity(ops: usize, bytes: usize) -> Batch {
        Batch {
            bytes: Vec::with_capacity(bytes),
            ops: Vec::with_capacity(ops),
        }
    }

    pub(crate) fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.put_with(cf, key, |out| out.extend_from_slice(value));
    }

    /// A put whose value `write_value` appends to the buffer it is given (a log record's
    /// header and payloads, say), without building the value first.
    pub(crate) fn put_with(&mut self, cf: Cf, key: &[u8], write_value: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        write_value(&mut self.bytes);
        self.ops.push(Op {
            kind: OpKind::Put,
            cf,
            start,
            first_len: key.len(),
            second_len: self.bytes.len() - start - key.len(),
        });
    }

    pub(crate) fn delete(&mut self, cf: Cf, key: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        self.ops.push(Op {
            kind: OpKind::Delete,
            cf,
            start,
            first_len: key.len(),
            second_len: 0,
        });
    }

    /// Deletes every key in `[start, end)`.
    pub(crate) fn delete_range(&mut self, cf: Cf, start_key: &[u8], end_key: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(start_key);
        self.bytes.extend_from_slice(end_key);
        self.ops.push(Op {
            kind: OpKind::DeleteRange,
            cf,
            start,
            first_len: start_key.len(),
            second_len: end_key.len(),
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of operations.
    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    /// The operations in the order they were added (the order they apply in).
    pub(crate) fn iter(&self) -> impl Iterator<Item = BatchOp<'_>> + '_ {
        self.ops.iter().map(|op| {
            let first_end = op.start + op.first_len;
            let first = &self.bytes[op.start..first_end];
            let second = &self.bytes[first_end..first_end + op.second_len];
            match op.kind {
                OpKind::Put => BatchOp::Put(op.cf, first, second),
                OpKind::Delete => BatchOp::Delete(op.cf, first),
                OpKind::DeleteRange => BatchOp::DeleteRange(op.cf, first, second),
            }
        })
    }
}

/// How a [`Cursor`] reads.
#[derive(Clone, Debug, Default)]
pub(crate) struct CursorOptions {
    /// Keys at or after this are not returned (exclusive bound of forward iteration).
    pub upper_bound: Option<Vec<u8>>,
    /// Whether the blocks read should enter the block cache; `false` for scans that read
    /// everything once (recovery, sweeps) so they do not evict the hot blocks. Only a hint.
    pub fill_cache: bool,
}

impl CursorOptions {
    /// Defaults: no bound, cache filled.
    pub(crate) fn new() -> CursorOptions {
        CursorOptions {
            upper_bound: None,
            fill_cache: true,
        }
    }

    pub(crate) fn upper_bound(mut self, bound: Option<&[u8]>) -> CursorOptions {
        self.upper_bound = bound.map(<[u8]>::to_vec);
        self
    }

    pub(crate) fn no_fill_cache(mut self) -> CursorOptions {
        self.fill_cache = false;
        self
    }
}

/// A positioned reader over one column family's snapshot, shaped like RocksDB's raw iterator:
/// position with a seek, read `item`, step with `next`, and check `status` at the end (an
/// invalid position means "end" or "error"; `status` tells which).
pub(crate) trait Cursor {
    /// Positions at the first key `>= key`.
    fn seek(&mut self, key: &[u8]);
    /// Positions at the first key.
    fn seek_to_first(&mut self);
    /// Positions at the last key `<= key`.
    fn seek_for_prev(&mut self, key: &[u8]);
    /// Moves to the next key (only valid on a valid position).
    fn next(&mut self);
    /// The key and value at the position, or `None` at the end (or after an error).
    fn item(&self) -> Option<(&[u8], &[u8])>;
    /// The key at the position.
    fn key(&self) -> Option<&[u8]> {
        self.item().map(|(key, _)| key)
    }
    /// # Errors
    /// The error that ended the iteration, if one did.
    fn status(&self) -> Result<(), StorageError>;
}

/// A database the store can run on. Every method may be called from any thread.
pub(crate) trait Backend: Send + Sync + 'static {
    /// The value under `key`.
    ///
    /// # Errors
    /// Read errors.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// The values under `keys`, in order. `sorted` says `keys` are ascending (a hint).
    ///
    /// # Errors
    /// The first read error (a failed read of any key fails the whole call).
    fn multi_get(
        &self,
        cf: Cf,
        keys: &[&[u8]],
        sorted: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError>;

    /// A cursor over a snapshot of `cf` taken now.
    ///
    /// # Errors
    /// The column family is missing, the backend is closed.
    fn cursor(&self, cf: Cf, opts: CursorOptions) -> Result<Box<dyn Cursor + '_>, StorageError>;

    /// Applies `batch` atomically; with `sync`, also makes it and everything written before it
    /// durable (see the module docs).
    ///
    /// # Errors
    /// Write errors; nothing of the batch was applied then.
    fn write(&self, batch: Batch, sync: bool) -> Result<(), StorageError>;

    /// Writes a consistent, openable RocksDB copy of the whole database to `dir`, which must
    /// not exist.
    ///
    /// # Errors
    /// `dir` exists, I/O errors.
    fn copy_to(&self, dir: &Path) -> Result<(), StorageError>;

    /// Called once on the group-commit thread before its first write (thread-local tuning).
    fn prepare_writer_thread(&self) {}

    /// What `cf` holds: bytes in table files on disk and in memtables (which are also in the
    /// write-ahead log on disk). `None` where the backend cannot tell (the simulated disk).
    fn size_of(&self, _cf: Cf) -> Option<CfSize> {
        None
    }
}

/// The size of one column family (see [`Backend::size_of`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CfSize {
    pub table_bytes: u64,
    pub memtable_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_yields_its_operations_in_order_with_their_bytes() {
        let mut batch = Batch::default();
        batch.put(Cf::Meta, b"k1", b"v1");
        batch.put_with(Cf::Log, b"k2", |out| {
            out.extend_from_slice(b"head");
            out.extend_from_slice(b"tail");
        });
        batch.delete(Cf::Outbox, b"gone");
        batch.delete_range(Cf::Log, b"a", b"b");
        batch.put(Cf::Meta, b"", b"");
        assert_eq!(batch.len(), 5);
        assert_eq!(batch.bytes.len(), 2 + 2 + 2 + 8 + 4 + 1 + 1);
        let ops: Vec<_> = batch.iter().collect();
        assert_eq!(
            ops,
            [
                BatchOp::Put(Cf::Meta, b"k1", b"v1"),
                BatchOp::Put(Cf::Log, b"k2", b"headtail"),
                BatchOp::Delete(Cf::Outbox, b"gone"),
                BatchOp::DeleteRange(Cf::Log, b"a", b"b"),
                BatchOp::Put(Cf::Meta, b"", b""),
            ]
        );
        assert!(!batch.is_empty());
        assert!(Batch::with_capacity(4, 64).is_empty());
    }

    #[test]
    fn column_family_indexes_follow_all() {
        for (index, cf) in Cf::ALL.iter().enumerate() {
            assert_eq!(cf.index(), index);
        }
    }
}

//! The `meta` column family: a generic key-value space for data shared by all partitions
//! (catalog objects, config fingerprints). It owns plain get/put/delete/prefix-scan with the
//! store's durability. It must not impose a key scheme; callers namespace their keys with
//! prefixes (e.g. `b"catalog/metric/"`) and scan by prefix. The prefix `storage/` is the store's
//! own (the storage format version, [`super::STORAGE_FORMAT_KEY`]).

use super::backend::{Batch, Cf, CursorOptions};
use super::{StorageError, Store};

/// A `meta` key and its value.
pub type MetaEntry = (Vec<u8>, Vec<u8>);

impl Store {
    /// Stores `value` under `key`, replacing any previous value.
    ///
    /// # Errors
    /// RocksDB write errors.
    pub fn meta_put(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.inner
            .shared
            .check(super::faults::StorageOp::MetaWrite)?;
        let mut batch = Batch::default();
        batch.put(Cf::Meta, key, value);
        self.inner.backend.write(batch, self.inner.sync)
    }

    /// The value under `key`.
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.shared.check(super::faults::StorageOp::Read)?;
        self.inner.backend.get(Cf::Meta, key)
    }

    /// The values under `keys`, in order, in one batched read.
    ///
    /// # Errors
    /// The first RocksDB read error.
    pub fn meta_multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        self.inner.shared.check(super::faults::StorageOp::Read)?;
        let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        self.inner.backend.multi_get(Cf::Meta, &keys, false)
    }

    /// Removes `key`; removing an absent key is not an error.
    ///
    /// # Errors
    /// RocksDB write errors.
    pub fn meta_delete(&self, key: &[u8]) -> Result<(), StorageError> {
        self.inner
            .shared
            .check(super::faults::StorageOp::MetaWrite)?;
        let mut batch = Batch::default();
        batch.delete(Cf::Meta, key);
        self.inner.backend.write(batch, self.inner.sync)
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order. Meant for catalog
    /// loading at startup; it collects, so keep prefixes narrower than "everything" when the
    /// space grows large.
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn meta_scan_prefix(&self, prefix: &[u8]) -> Result<Vec<MetaEntry>, StorageError> {
        self.inner.shared.check(super::faults::StorageOp::Read)?;
        let mut it = self.meta_cursor(prefix)?;
        it.seek(prefix);
        let mut found = Vec::new();
        while let Some((key, value)) = it.item() {
            if !key.starts_with(prefix) {
                break;
            }
            found.push((key.to_vec(), value.to_vec()));
            it.next();
        }
        it.status()?;
        Ok(found)
    }

    /// Up to `limit` entries under `prefix` whose key is greater than `after` (a cursor for
    /// paging through large key spaces such as customer listings).
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn meta_scan_page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<MetaEntry>, StorageError> {
        self.inner.shared.check(super::faults::StorageOp::Read)?;
        let mut it = self.meta_cursor(prefix)?;
        match after {
            Some(cursor) => {
                it.seek(cursor);
                if it.key() == Some(cursor) {
                    it.next();
                }
            }
            None => it.seek(prefix),
        }
        let mut found = Vec::new();
        while let Some((key, value)) = it.item() {
            if !key.starts_with(prefix) || found.len() >= limit {
                break;
            }
            found.push((key.to_vec(), value.to_vec()));
            it.next();
        }
        it.status()?;
        Ok(found)
    }

    /// How many keys are under `prefix`, counting at most `max` (a dashboard's gauge: the
    /// caller says when the count stopped at `max`).
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn meta_count_prefix(&self, prefix: &[u8], max: usize) -> Result<usize, StorageError> {
        self.inner.shared.check(super::faults::StorageOp::Read)?;
        let mut it = self.meta_cursor(prefix)?;
        it.seek(prefix);
        let mut count = 0;
        while let Some(key) = it.key() {
            if !key.starts_with(prefix) || count >= max {
                break;
            }
            count += 1;
            it.next();
        }
        it.status()?;
        Ok(count)
    }

    /// The entry with the greatest key under `prefix`, if any.
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn meta_last_under(&self, prefix: &[u8]) -> Result<Option<MetaEntry>, StorageError> {
        self.inner.shared.check(super::faults::StorageOp::Read)?;
        let mut it = self.meta_cursor(prefix)?;
        match prefix_end(prefix) {
            // The cursor's upper bound is `end`: the last key before it.
            Some(end) => it.seek_for_prev(&end),
            None => it.seek_for_prev(&[u8::MAX; 64]),
        }
        let found = match it.item() {
            Some((key, value)) if key.starts_with(prefix) => Some((key.to_vec(), value.to_vec())),
            _ => None,
        };
        it.status()?;
        Ok(found)
    }

    /// Deletes every key in `[start, end)` without an fsync of its own: for records whose loss
    /// to a power cut only means they are deleted again later (expired delivery records).
    ///
    /// # Errors
    /// RocksDB write errors; nothing is deleted then.
    pub fn meta_delete_range_lazily(&self, start: &[u8], end: &[u8]) -> Result<(), StorageError> {
        self.inner
            .shared
            .check(super::faults::StorageOp::MetaWrite)?;
        let mut batch = Batch::default();
        batch.delete_range(Cf::Meta, start, end);
        self.inner.backend.write(batch, false)
    }

    /// Writes and deletes many keys in one write batch (one fsync in `Fsync` mode): customer
    /// states at a checkpoint, registry entries of one input.
    ///
    /// # Errors
    /// RocksDB write errors; nothing is written then.
    pub fn meta_write_batch(
        &self,
        puts: &[(Vec<u8>, Vec<u8>)],
        deletes: &[Vec<u8>],
    ) -> Result<(), StorageError> {
        self.write_meta(puts, deletes, self.inner.sync)
    }

    /// Writes keys that a replay of the log re-creates (indexes derived from applied inputs)
    /// without an fsync of their own. RocksDB has one write-ahead log: the next synced write
    /// (a log append, a checkpoint) makes these durable too, and the checkpoint that would end
    /// their replay is written after them. A `kill -9` loses nothing either way.
    ///
    /// # Errors
    /// RocksDB write errors; nothing is written then.
    pub fn meta_write_derived(&self, puts: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StorageError> {
        self.write_meta(puts, &[], false)
    }

    /// [`Store::meta_write_derived`] with deletes too (puts first, then deletes).
    ///
    /// # Errors
    /// RocksDB write errors; nothing is written then.
    pub fn meta_write_derived_batch(
        &self,
        puts: &[(Vec<u8>, Vec<u8>)],
        deletes: &[Vec<u8>],
    ) -> Result<(), StorageError> {
        self.write_meta(puts, deletes, false)
    }

    fn write_meta(
        &self,
        puts: &[(Vec<u8>, Vec<u8>)],
        deletes: &[Vec<u8>],
        sync: bool,
    ) -> Result<(), StorageError> {
        self.inner
            .shared
            .check(super::faults::StorageOp::MetaWrite)?;
        if puts.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        for (key, value) in puts {
            batch.put(Cf::Meta, key, value);
        }
        for key in deletes {
            batch.delete(Cf::Meta, key);
        }
        self.inner.backend.write(batch, sync)
    }

    /// A cursor over `meta` bounded to the keys under `prefix`.
    fn meta_cursor(
        &self,
        prefix: &[u8],
    ) -> Result<Box<dyn super::backend::Cursor + '_>, StorageError> {
        let end = prefix_end(prefix);
        self.inner
            .backend
            .cursor(Cf::Meta, CursorOptions::new().upper_bound(end.as_deref()))
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` when there is none
/// (an empty prefix, or all `0xff`).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix_range() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}

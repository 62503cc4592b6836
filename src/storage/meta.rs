//! The `meta` column family: a generic key-value space for data shared by all partitions
//! (catalog objects, config fingerprints). It owns plain get/put/delete/prefix-scan with the
//! store's durability. It must not impose a key scheme; callers namespace their keys with
//! prefixes (e.g. `b"catalog/metric/"`) and scan by prefix.

use rocksdb::ReadOptions;

use super::{CF_META, StorageError, Store};

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
        self.inner
            .db
            .put_cf_opt(self.cf(CF_META)?, key, value, &self.inner.write_opts)?;
        Ok(())
    }

    /// The value under `key`.
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.shared.check(super::faults::StorageOp::Read)?;
        Ok(self.inner.db.get_cf(self.cf(CF_META)?, key)?)
    }

    /// The values under `keys`, in order, in one batched read.
    ///
    /// # Errors
    /// The first RocksDB read error.
    pub fn meta_multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        self.inner.shared.check(super::faults::StorageOp::Read)?;
        let cf = self.cf(CF_META)?;
        self.inner
            .db
            .batched_multi_get_cf(cf, keys, false)
            .into_iter()
            .map(|value| Ok(value?.map(|v| v.to_vec())))
            .collect()
    }

    /// Removes `key`; removing an absent key is not an error.
    ///
    /// # Errors
    /// RocksDB write errors.
    pub fn meta_delete(&self, key: &[u8]) -> Result<(), StorageError> {
        self.inner
            .shared
            .check(super::faults::StorageOp::MetaWrite)?;
        self.inner
            .db
            .delete_cf_opt(self.cf(CF_META)?, key, &self.inner.write_opts)?;
        Ok(())
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order. Meant for catalog
    /// loading at startup; it collects, so keep prefixes narrower than "everything" when the
    /// space grows large.
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn meta_scan_prefix(&self, prefix: &[u8]) -> Result<Vec<MetaEntry>, StorageError> {
        self.inner.shared.check(super::faults::StorageOp::Read)?;
        let mut read_opts = ReadOptions::default();
        if let Some(end) = prefix_end(prefix) {
            read_opts.set_iterate_upper_bound(end);
        }
        let mut it = self
            .inner
            .db
            .raw_iterator_cf_opt(self.cf(CF_META)?, read_opts);
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
        let mut read_opts = ReadOptions::default();
        if let Some(end) = prefix_end(prefix) {
            read_opts.set_iterate_upper_bound(end);
        }
        let mut it = self
            .inner
            .db
            .raw_iterator_cf_opt(self.cf(CF_META)?, read_opts);
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
        self.write_meta(puts, deletes, &self.inner.write_opts)
    }

    /// Writes keys that a replay of the log re-creates (indexes derived from applied inputs)
    /// without an fsync of their own. RocksDB has one write-ahead log: the next synced write
    /// (a log append, a checkpoint) makes these durable too, and the checkpoint that would end
    /// their replay is written after them. A `kill -9` loses nothing either way.
    ///
    /// # Errors
    /// RocksDB write errors; nothing is written then.
    pub fn meta_write_derived(&self, puts: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StorageError> {
        self.write_meta(puts, &[], &self.inner.derived_write_opts)
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
        self.write_meta(puts, deletes, &self.inner.derived_write_opts)
    }

    fn write_meta(
        &self,
        puts: &[(Vec<u8>, Vec<u8>)],
        deletes: &[Vec<u8>],
        opts: &rocksdb::WriteOptions,
    ) -> Result<(), StorageError> {
        self.inner
            .shared
            .check(super::faults::StorageOp::MetaWrite)?;
        if puts.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        let cf = self.cf(CF_META)?;
        let mut batch = rocksdb::WriteBatch::default();
        for (key, value) in puts {
            batch.put_cf(cf, key, value);
        }
        for key in deletes {
            batch.delete_cf(cf, key);
        }
        self.inner.db.write_opt(batch, opts)?;
        Ok(())
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

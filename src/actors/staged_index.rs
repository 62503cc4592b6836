//! Invoice -> customer index entries a partition has applied but not yet written.
//!
//! Applying an input that opens an invoice (a customer's first usage of a period, a threshold
//! purchase) records which customer owns it, so `void` by invoice id finds the customer. Writing
//! that from the customer actor cost one RocksDB write per opened invoice, on the partition's
//! thread and behind the log's fsync: at a month start, or after a restart, every customer's
//! first event paid it (a profile of `tollgate bench` at 100k customers put 11% of the server's
//! CPU there, and the partition stalled meanwhile). Entries are now staged here and written in
//! one batch by the partition's housekeeping, and always before its checkpoint record: the
//! index is derived (replay re-creates what a crash lost), but a checkpoint must never cover an
//! input whose entries are unwritten, since replay starts after it. Readers look here first, so
//! an invoice is found the moment the input that opened it is applied.

use std::sync::Mutex;

use rustc_hash::FxHashMap;

use super::entry;
use crate::domain::Id;
use crate::storage::{StorageError, Store};

#[derive(Debug, Default)]
pub struct StagedIndex {
    /// invoice -> customer.
    staged: Mutex<FxHashMap<Id, Id>>,
}

impl StagedIndex {
    /// Stages `customer` as the owner of `invoices`.
    pub fn stage(&self, customer: Id, invoices: impl Iterator<Item = Id>) {
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        for invoice in invoices {
            staged.insert(invoice, customer);
        }
    }

    /// The staged owner of `invoice`, if it is staged.
    pub fn get(&self, invoice: Id) -> Option<Id> {
        let staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        staged.get(&invoice).copied()
    }

    /// Entries staged and not yet written.
    pub fn len(&self) -> usize {
        self.staged.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes every staged entry in one batch (without an fsync of its own: the next synced
    /// write, at the latest the checkpoint record, follows it in the write-ahead log), then
    /// unstages what was written. Entries stay readable here until they are written.
    ///
    /// # Errors
    /// The write's error; everything stays staged then.
    pub fn flush(&self, store: &Store) -> Result<usize, StorageError> {
        let entries: Vec<(Id, Id)> = {
            let staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
            staged.iter().map(|(i, c)| (*i, *c)).collect()
        };
        if entries.is_empty() {
            return Ok(0);
        }
        let puts: Vec<(Vec<u8>, Vec<u8>)> = entries
            .iter()
            .map(|(invoice, customer)| (entry::invoice_key(*invoice), customer.as_bytes().to_vec()))
            .collect();
        store.meta_write_derived(&puts)?;
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        for (invoice, customer) in &entries {
            // Staged again meanwhile (the same owner: invoices never change hands): keep it
            // only if it changed.
            if staged.get(invoice) == Some(customer) {
                staged.remove(invoice);
            }
        }
        Ok(entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::StagedIndex;
    use crate::actors::entry;
    use crate::domain::Id;
    use crate::storage::faults::{Faults, ScriptedFaults, StorageOp};
    use crate::storage::{Store, StoreOptions};

    #[test]
    fn staged_entries_are_readable_until_written_and_stay_staged_if_the_write_fails() {
        let dir = tempfile::tempdir().unwrap();
        let faults = ScriptedFaults::new();
        let faults_seam = Some(faults.clone() as Faults);
        let store = Store::open_with_faults(dir.path(), StoreOptions::default(), faults_seam);
        let store = store.unwrap();
        let index = StagedIndex::default();
        let (customer, a, b) = (Id::from_u128(1), Id::from_u128(10), Id::from_u128(11));
        assert_eq!(index.flush(&store).unwrap(), 0);
        index.stage(customer, [a, b].into_iter());
        assert_eq!(index.get(a), Some(customer));
        assert_eq!(index.get(Id::from_u128(12)), None);
        assert_eq!(store.meta_get(&entry::invoice_key(a)).unwrap(), None);

        faults.fail_from(StorageOp::MetaWrite, 0);
        assert!(index.flush(&store).is_err());
        assert_eq!(index.len(), 2, "nothing unstaged by a failed write");
        assert_eq!(index.get(b), Some(customer));

        faults.heal();
        assert_eq!(index.flush(&store).unwrap(), 2);
        assert!(index.is_empty());
        for invoice in [a, b] {
            assert_eq!(
                store.meta_get(&entry::invoice_key(invoice)).unwrap(),
                Some(customer.as_bytes().to_vec())
            );
        }
    }
}

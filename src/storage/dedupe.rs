//! Dedupe of caller-supplied keys (e.g. `b"tx:" + transaction_id`) over a time window: the exact
//! in-memory map of recently accepted keys that spares the group-commit thread a RocksDB read
//! for hot duplicates, and the sweep that deletes expired entries from the `dedupe` column
//! family. It must not decide on its own whether a key is a duplicate; that decision belongs to
//! the single group-commit thread (`log.rs`), which is what makes it race-free.

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError};

use rustc_hash::FxHashMap;

use super::backend::{Backend, Batch, Cf, CursorOptions};
use super::keys::DedupeHit;
use super::{Shared, StorageError};

/// Keys deleted per write batch by the sweep. The sweep holds the dedupe lock while it re-reads
/// and deletes one chunk, which pauses appends; 1024 point reads keep that pause near a
/// millisecond.
const SWEEP_CHUNK_KEYS: usize = 1024;

/// The most recently accepted dedupe keys, exactly, bounded by count.
///
/// An entry is a copy of what the `dedupe` column family holds for that key (the map is only
/// updated after the write that put it there succeeded), so a hit here is as good as a hit on
/// disk and a miss means "ask RocksDB". Only the group-commit writer touches it; the key bytes
/// are shared between the map and the eviction queue, not copied. (`Arc` rather than `Rc` only
/// because the inline writer lives behind a mutex that any thread may take.)
pub(crate) struct RecentKeys {
    map: FxHashMap<Arc<[u8]>, DedupeHit>,
    /// Insertion order for eviction. A key re-accepted after expiry appears twice; the older
    /// queue entry is recognised as stale because its hit no longer matches the map's.
    order: VecDeque<(Arc<[u8]>, DedupeHit)>,
    capacity: usize,
}

impl RecentKeys {
    /// Allocates the map and queue for `capacity` keys up front. The map gets room for twice as
    /// many: at a steady `capacity` live keys with evictions leaving tombstones, a table less
    /// than half full is rehashed in place, while a fuller one is reallocated at double the
    /// size. Growing to that size during the first minutes of ingest cost the group-commit
    /// thread about 3% of the server's CPU in page faults and rehashes (profile in
    /// BENCHMARKS.md); untouched pages of the table cost no memory until keys land there.
    pub(crate) fn new(capacity: usize) -> RecentKeys {
        RecentKeys {
            map: FxHashMap::with_capacity_and_hasher(
                capacity.saturating_mul(2),
                Default::default(),
            ),
            order: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&DedupeHit> {
        self.map.get(key)
    }

    /// Records an accepted key, evicting the oldest entries beyond the capacity.
    pub(crate) fn insert(&mut self, key: &[u8], hit: DedupeHit) {
        if self.capacity == 0 {
            return;
        }
        let key: Arc<[u8]> = Arc::from(key);
        self.map.insert(Arc::clone(&key), hit);
        self.order.push_back((key, hit));
        // Bounding the queue (not the map) bounds both, because every map entry has a queue
        // entry.
        while self.order.len() > self.capacity {
            let Some((old_key, old_hit)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old_key) == Some(&old_hit) {
                self.map.remove(&old_key);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Deletes `dedupe` entries first accepted before `cutoff_ms`; returns how many.
///
/// Scans the whole column family (the key is the caller's id, so age has no key order) and
/// deletes in chunks. Each chunk is re-read under the dedupe lock before it is deleted: between
/// the scan and the delete the group-commit thread may have re-accepted an expired key, and that
/// fresh entry must survive.
pub(crate) fn sweep_expired(
    backend: &dyn Backend,
    shared: &Shared,
    sync: bool,
    cutoff_ms: i64,
) -> Result<u64, StorageError> {
    // A sweep touches every entry once; keep it from evicting the hot blocks of the block cache.
    let mut it = backend.cursor(Cf::Dedupe, CursorOptions::new().no_fill_cache())?;
    it.seek_to_first();
    let mut deleted = 0u64;
    let mut chunk: Vec<Vec<u8>> = Vec::with_capacity(SWEEP_CHUNK_KEYS);
    while let Some((key, value)) = it.item() {
        if DedupeHit::decode(value)?.at_ms < cutoff_ms {
            chunk.push(key.to_vec());
            if chunk.len() >= SWEEP_CHUNK_KEYS {
                deleted += delete_if_expired(backend, shared, sync, &chunk, cutoff_ms)?;
                chunk.clear();
            }
        }
        it.next();
    }
    it.status()?;
    if !chunk.is_empty() {
        deleted += delete_if_expired(backend, shared, sync, &chunk, cutoff_ms)?;
    }
    Ok(deleted)
}

fn delete_if_expired(
    backend: &dyn Backend,
    shared: &Shared,
    sync: bool,
    keys: &[Vec<u8>],
    cutoff_ms: i64,
) -> Result<u64, StorageError> {
    let _writer = shared
        .dedupe_lock
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let mut batch = Batch::default();
    let mut deleted = 0u64;
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    // The keys come from a cursor, so they are sorted, which a batched read can exploit.
    for (key, current) in keys.iter().zip(backend.multi_get(Cf::Dedupe, &keys, true)?) {
        let Some(current) = current else { continue };
        if DedupeHit::decode(&current)?.at_ms < cutoff_ms {
            batch.delete(Cf::Dedupe, key);
            deleted += 1;
        }
    }
    if !batch.is_empty() {
        backend.write(batch, sync)?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(seq: u64) -> DedupeHit {
        DedupeHit {
            partition: 0,
            seq,
            at_ms: 0,
        }
    }

    #[test]
    fn recent_keys_evict_the_oldest_beyond_capacity() {
        let mut recent = RecentKeys::new(2);
        recent.insert(b"a", hit(1));
        recent.insert(b"b", hit(2));
        recent.insert(b"c", hit(3));
        assert_eq!(recent.get(b"a"), None);
        assert_eq!(recent.get(b"b"), Some(&hit(2)));
        assert_eq!(recent.get(b"c"), Some(&hit(3)));
        assert_eq!(recent.len(), 2);
    }

    #[test]
    fn recent_keys_keep_a_reaccepted_key_when_its_stale_entry_is_evicted() {
        let mut recent = RecentKeys::new(2);
        recent.insert(b"a", hit(1));
        recent.insert(b"a", hit(2));
        // Evicts the stale ("a", 1) queue entry; "a" itself is current and stays.
        recent.insert(b"b", hit(3));
        assert_eq!(recent.get(b"a"), Some(&hit(2)));
        assert_eq!(recent.get(b"b"), Some(&hit(3)));
    }

    #[test]
    fn recent_keys_with_zero_capacity_remember_nothing() {
        let mut recent = RecentKeys::new(0);
        recent.insert(b"a", hit(1));
        assert_eq!(recent.get(b"a"), None);
    }
}

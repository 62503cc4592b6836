//! When each customer next needs a tick: the engine's alarm clock for time-driven rules.
//!
//! The domain says when time alone next changes something for a customer
//! ([`Customer::next_wake`]: a segment's start or end, a contract's end, a recharge held by a
//! rail being evaluated again, an ACTION_REQUIRED deadline). The customer's actor records that
//! here after an input that may have moved it; the partition's housekeeping (every 200 ms)
//! submits a `Tick` through the log for every customer whose time has come, so these rules are
//! decided within a fraction of a second of their time instead of at the next hourly tick (which
//! stays, as the backstop). Entries are also kept in `meta` under `wak/` (staged and written by
//! the housekeeping and before every checkpoint record, like the invoice index: replay re-creates
//! what a crash lost after the checkpoint), so a restart keeps every alarm.
//!
//! [`Customer::next_wake`]: crate::domain::customer::Customer::next_wake

use std::collections::BTreeSet;
use std::sync::Mutex;

use rustc_hash::FxHashMap;

use crate::domain::{Id, Timestamp};
use crate::storage::{StorageError, Store};

/// The `meta` prefix of the alarms.
pub const WAKE_PREFIX: &[u8] = b"wak/";

/// `wak/` ++ customer id -> the instant (ms, i64 big-endian).
pub fn wake_key(customer: Id) -> Vec<u8> {
    let mut key = WAKE_PREFIX.to_vec();
    key.extend_from_slice(customer.as_bytes());
    key
}

#[derive(Debug, Default)]
struct Alarms {
    by_customer: FxHashMap<Id, i64>,
    queue: BTreeSet<(i64, Id)>,
    /// Changes not yet written: `Some` puts, `None` deletes.
    staged: FxHashMap<Id, Option<i64>>,
}

/// One partition's alarms.
#[derive(Debug, Default)]
pub struct WakeIndex {
    alarms: Mutex<Alarms>,
}

impl WakeIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Alarms> {
        self.alarms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets (or clears) when `customer` next needs a tick; a change is staged for writing.
    pub fn set(&self, customer: Id, at: Option<Timestamp>) {
        let at = at.map(Timestamp::millis);
        let mut alarms = self.lock();
        let current = alarms.by_customer.get(&customer).copied();
        if current == at {
            return;
        }
        if let Some(old) = current {
            alarms.queue.remove(&(old, customer));
            alarms.by_customer.remove(&customer);
        }
        if let Some(at) = at {
            alarms.queue.insert((at, customer));
            alarms.by_customer.insert(customer, at);
        }
        alarms.staged.insert(customer, at);
    }

    /// Brings `customer`'s alarm forward to `at` (unless it is due earlier already): a new
    /// alert's sweep. The customer's next tick sets its own next alarm again.
    pub fn wake_by(&self, customer: Id, at: Timestamp) {
        let current = self.lock().by_customer.get(&customer).copied();
        if current.is_none_or(|current| current > at.millis()) {
            self.set(customer, Some(at));
        }
    }

    /// Takes out of the queue up to `max` customers whose time is at or before `now_ms`,
    /// earliest first. The alarm itself stays set (and in `meta`) until the tick they are sent
    /// sets the next one or clears it: a crash before the tick applies ticks them again after
    /// the restart, and a tick that clears the alarm is a change that reaches `meta`.
    pub fn take_due(&self, now_ms: i64, max: usize) -> Vec<Id> {
        let mut alarms = self.lock();
        let mut due = Vec::new();
        while due.len() < max {
            let Some(&(at, customer)) = alarms.queue.first() else {
                break;
            };
            if at > now_ms {
                break;
            }
            alarms.queue.pop_first();
            due.push(customer);
        }
        due
    }

    /// The next alarm of `customer`, if one is set.
    pub fn get(&self, customer: Id) -> Option<Timestamp> {
        self.lock()
            .by_customer
            .get(&customer)
            .copied()
            .map(Timestamp)
    }

    /// How many alarms are set.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many alarms are due at `now_ms` and not yet taken by the housekeeping.
    pub fn due(&self, now_ms: i64) -> usize {
        self.lock()
            .queue
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .count()
    }

    /// Adds an alarm read from `meta` at start (one already set since wins: it is newer).
    pub fn load(&self, customer: Id, at: Timestamp) {
        let mut alarms = self.lock();
        if alarms.by_customer.contains_key(&customer) || alarms.staged.contains_key(&customer) {
            return;
        }
        alarms.queue.insert((at.millis(), customer));
        alarms.by_customer.insert(customer, at.millis());
    }

    /// Writes every staged change in one batch (no fsync of its own: the next synced write, at
    /// the latest the checkpoint record, follows it in the write-ahead log); what was written
    /// is unstaged, unless it changed again meanwhile.
    ///
    /// # Errors
    /// The write's error; everything stays staged then.
    pub fn flush(&self, store: &Store) -> Result<usize, StorageError> {
        let staged: Vec<(Id, Option<i64>)> = {
            let alarms = self.lock();
            alarms.staged.iter().map(|(c, at)| (*c, *at)).collect()
        };
        if staged.is_empty() {
            return Ok(0);
        }
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        for (customer, at) in &staged {
            match at {
                Some(at) => puts.push((wake_key(*customer), at.to_be_bytes().to_vec())),
                None => deletes.push(wake_key(*customer)),
            }
        }
        store.meta_write_derived_batch(&puts, &deletes)?;
        let mut alarms = self.lock();
        for (customer, at) in &staged {
            if alarms.staged.get(customer) == Some(at) {
                alarms.staged.remove(customer);
            }
        }
        Ok(staged.len())
    }
}

/// Decodes a `wak/` entry.
pub fn decode_entry(key: &[u8], value: &[u8]) -> Option<(Id, Timestamp)> {
    let id = key.strip_prefix(WAKE_PREFIX)?;
    let id: [u8; 16] = id.try_into().ok()?;
    let at: [u8; 8] = value.try_into().ok()?;
    Some((Id::from_bytes(id), Timestamp(i64::from_be_bytes(at))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StoreOptions;

    #[test]
    fn alarms_come_due_in_time_order_and_survive_in_meta() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let index = WakeIndex::default();
        let (a, b, c) = (Id::from_u128(1), Id::from_u128(2), Id::from_u128(3));
        index.set(a, Some(Timestamp(300)));
        index.set(b, Some(Timestamp(100)));
        index.set(c, Some(Timestamp(200)));
        index.set(c, None);
        assert_eq!(index.len(), 2);
        assert_eq!(index.take_due(99, 10), Vec::<Id>::new());
        assert_eq!(index.take_due(1_000, 1), vec![b]);
        assert_eq!(index.flush(&store).unwrap(), 3);
        let kept: Vec<(Id, Timestamp)> = store
            .meta_scan_prefix(WAKE_PREFIX)
            .unwrap()
            .iter()
            .filter_map(|(k, v)| decode_entry(k, v))
            .collect();
        // b was taken out but keeps its entry until its tick sets the next alarm; c is gone.
        assert_eq!(kept, vec![(a, Timestamp(300)), (b, Timestamp(100))]);
        // b's tick finds nothing more to wake it for: the clearing reaches meta (found by the
        // simulation: an alarm forgotten in memory when taken was never deleted, and a
        // restart ticked the customer again).
        index.set(b, None);
        assert_eq!(index.flush(&store).unwrap(), 1);
        let left: Vec<Vec<u8>> = store
            .meta_scan_prefix(WAKE_PREFIX)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, vec![wake_key(a)]);
        let restarted = WakeIndex::default();
        restarted.set(a, Some(Timestamp(500)));
        for (customer, at) in kept {
            restarted.load(customer, at);
        }
        assert_eq!(restarted.get(a), Some(Timestamp(500)), "newer than meta");
        assert_eq!(restarted.take_due(1_000, 10), vec![b, a]);
    }
}

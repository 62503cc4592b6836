//! Which customers exist and which ingest aliases name them, shared by every partition.
//!
//! Derived from customer inputs: the customer actor that applies `CreateCustomer` or
//! `SetIngestAliases` updates this map and persists it in `meta` (`alias/`, `cust/`), and start-up
//! loads it back, and loads it again from the final profiles once recovery has replayed the
//! log: replay sets aliases in each partition's log order, not in the order they happened
//! across partitions, so an alias moved between customers of two partitions could end up
//! naming the wrong customer, or none. Ingest reads it to attribute events; a key it does not know yet makes the event
//! "late" (kept and applied when the alias appears).

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::domain::Id;

#[derive(Debug, Default)]
pub struct Registry {
    inner: RwLock<RegistryMaps>,
    /// Replay (not a live input) changed a customer's entry since the last [`Registry::take_replayed`].
    replayed: AtomicBool,
}

#[derive(Debug, Default)]
struct RegistryMaps {
    customers: FxHashSet<Id>,
    aliases: FxHashMap<String, Id>,
}

impl RegistryMaps {
    fn resolve(&self, key: &str) -> Option<Id> {
        Id::parse(key)
            .filter(|id| self.customers.contains(id))
            .or_else(|| self.aliases.get(key).copied())
    }
}

impl Registry {
    /// The customer named by `key`: a customer id first, then an ingest alias (SPEC 2.1: an
    /// alias can never capture the usage of the customer whose id it spells).
    pub fn resolve(&self, key: &str) -> Option<Id> {
        let maps = self.inner.read().unwrap_or_else(|e| e.into_inner());
        maps.resolve(key)
    }

    /// Resolves many keys under one lock.
    pub fn resolve_all<'a>(&self, keys: impl Iterator<Item = &'a str>) -> Vec<Option<Id>> {
        let maps = self.inner.read().unwrap_or_else(|e| e.into_inner());
        keys.map(|key| maps.resolve(key)).collect()
    }

    pub fn contains(&self, customer: Id) -> bool {
        let maps = self.inner.read().unwrap_or_else(|e| e.into_inner());
        maps.customers.contains(&customer)
    }

    /// The customer an alias belongs to, if any.
    pub fn alias_owner(&self, alias: &str) -> Option<Id> {
        let maps = self.inner.read().unwrap_or_else(|e| e.into_inner());
        maps.aliases.get(alias).copied()
    }

    /// Records a customer and replaces its aliases (removing those it no longer has).
    pub fn set(&self, customer: Id, old_aliases: &[String], aliases: &[String]) {
        let mut maps = self.inner.write().unwrap_or_else(|e| e.into_inner());
        maps.customers.insert(customer);
        for alias in old_aliases {
            if maps.aliases.get(alias) == Some(&customer) {
                maps.aliases.remove(alias);
            }
        }
        for alias in aliases {
            maps.aliases.insert(alias.clone(), customer);
        }
    }

    /// Notes that replay changed an entry: the map must be loaded again from the profiles.
    pub fn note_replayed(&self) {
        self.replayed.store(true, Ordering::Relaxed);
    }

    /// Whether replay changed an entry since the last call.
    pub fn take_replayed(&self) -> bool {
        self.replayed.swap(false, Ordering::Relaxed)
    }

    /// Forgets every customer and alias (before loading the map again from the profiles).
    pub fn clear(&self) {
        let mut maps = self.inner.write().unwrap_or_else(|e| e.into_inner());
        *maps = RegistryMaps::default();
    }

    pub fn customer_count(&self) -> usize {
        let maps = self.inner.read().unwrap_or_else(|e| e.into_inner());
        maps.customers.len()
    }

    /// Every customer id (for periodic ticks).
    pub fn customers(&self) -> Vec<Id> {
        let maps = self.inner.read().unwrap_or_else(|e| e.into_inner());
        maps.customers.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_ids_resolve_and_removed_aliases_do_not() {
        let registry = Registry::default();
        let id = Id::from_u128(7);
        registry.set(id, &[], &["team@example.com".into(), "t1".into()]);
        assert_eq!(registry.resolve("team@example.com"), Some(id));
        assert_eq!(registry.resolve(&id.to_string()), Some(id));
        assert_eq!(registry.resolve(&Id::from_u128(8).to_string()), None);
        registry.set(
            id,
            &["team@example.com".into(), "t1".into()],
            &["t2".into()],
        );
        assert_eq!(registry.resolve("team@example.com"), None);
        assert_eq!(registry.resolve("t2"), Some(id));
        assert_eq!(
            registry.resolve_all(["t2", "nobody"].into_iter()),
            vec![Some(id), None]
        );
    }
}

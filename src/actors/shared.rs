//! What every partition and actor of one engine shares: the store, the catalog snapshot, the
//! customer registry, settings, the clock, counters, and the sinks effects are handed to.

use std::sync::{Arc, RwLock};

use super::backlog::Backlog;
use super::clock::SharedClock;
use super::entry::{self, META_VERSION};
use super::handles::{Enqueue, PartitionHandle, PaymentJobs, Placement, Sinks};
use super::health::Health;
use super::metrics::EngineMetrics;
use super::outbox::{OutboxEffect, OutboxEntry};
use super::registry::Registry;
use super::staged_index::StagedIndex;
use crate::domain::customer::CustomerProfile;
use crate::domain::{Catalog, Id, Limits};
use crate::storage::{self, Store};

/// Engine settings the actors need (from config).
#[derive(Clone, Debug)]
pub struct EngineSettings {
    pub partitions: u16,
    pub limits: Limits,
    /// URL of every webhook destination (each webhook gets one outbox entry per URL).
    /// Where webhooks go, and which types each destination receives.
    pub webhook_routes: Vec<WebhookRoute>,
    pub mailbox_capacity: usize,
    /// The most inputs accepted but not yet applied a partition may hold (the ceiling of its
    /// adapted limit, see [`super::backlog`]).
    pub pending_inputs_max: usize,
    /// How long the oldest unapplied input of a partition may have waited before ingest
    /// answers 429 (the apply lag, bounded in time).
    pub apply_lag_max_ms: i64,
    pub checkpoint_interval_ms: u64,
    /// A checkpoint also starts after this many inputs, bounding replay after a crash.
    pub checkpoint_every_inputs: u64,
    pub evict_idle_ms: i64,
    /// After recovery, each partition reads the states of up to this many of its customers
    /// (divided evenly between partitions) into memory in the background, so their first
    /// event does not wait for a read (0 = no preload).
    pub preload_customers_max: usize,
    pub tick_interval_ms: u64,
    /// How often the partition looks at its checkpoint, eviction and tick schedules.
    pub housekeeping_ms: u64,
    /// How long events for unknown customers are kept (34 days).
    pub late_window_ms: i64,
}

pub struct Shared {
    pub store: Store,
    pub settings: EngineSettings,
    pub clock: SharedClock,
    pub metrics: Arc<EngineMetrics>,
    pub registry: Registry,
    /// Fail-stop state: set by the first storage failure.
    pub health: Arc<Health>,
    catalog: RwLock<Arc<Catalog>>,
    /// Inputs accepted but not yet applied, per partition, and how long the oldest has waited
    /// (backpressure).
    pub pending: Vec<Backlog>,
    /// Invoice index entries applied and not yet written, per partition.
    pub invoice_index: Vec<StagedIndex>,
    /// When each customer next needs a tick, per partition.
    pub wakes: Vec<super::wakes::WakeIndex>,
    /// Where persisted effects and released late keys go (made before any actor started).
    pub sinks: Sinks,
    /// Every partition's queues, by partition.
    pub handles: Vec<PartitionHandle>,
    /// Where actors and background work run ([`Placement::Threads`] unless the engine was
    /// started otherwise).
    pub placement: Placement,
    /// A bug of this version (the simulation's seam): inputs it names panic when applied.
    /// `None` in production.
    pub apply_bug: Option<ApplyBug>,
    /// Where inputs were quarantined: replay and state rebuilds quarantine them again.
    pub quarantined: super::quarantine::QuarantinedPositions,
}

/// A webhook destination and the types it receives (`None`: every type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookRoute {
    pub url: String,
    pub event_types: Option<Vec<String>>,
}

impl WebhookRoute {
    /// Every type, to `url`.
    pub fn all(url: &str) -> WebhookRoute {
        WebhookRoute {
            url: url.to_owned(),
            event_types: None,
        }
    }

    /// Whether webhooks of `event_type` go to this destination.
    pub fn receives(&self, event_type: &str) -> bool {
        self.event_types.as_ref().is_none_or(|patterns| {
            patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => event_type.starts_with(prefix),
                None => p == event_type,
            })
        })
    }
}

/// Names the inputs a simulated bug makes panic (the quarantine's workload: a later version,
/// started without it, is the upgrade that fixes it).
pub type ApplyBug = Arc<dyn Fn(&crate::domain::customer::Input) -> bool + Send + Sync>;

impl Shared {
    pub fn new(
        store: Store,
        settings: EngineSettings,
        clock: SharedClock,
        metrics: Arc<EngineMetrics>,
        catalog: Catalog,
        (sinks, handles): (Sinks, Vec<PartitionHandle>),
    ) -> Shared {
        let pending = (0..settings.partitions)
            .map(|_| Backlog::new(settings.pending_inputs_max))
            .collect();
        let invoice_index = (0..settings.partitions)
            .map(|_| StagedIndex::default())
            .collect();
        let wakes = (0..settings.partitions)
            .map(|_| super::wakes::WakeIndex::default())
            .collect();
        let health = Arc::new(Health::fencing(store.clone()));
        Shared {
            store,
            settings,
            clock,
            metrics,
            registry: Registry::default(),
            health,
            catalog: RwLock::new(Arc::new(catalog)),
            pending,
            invoice_index,
            wakes,
            sinks,
            handles,
            placement: Placement::Threads,
            apply_bug: None,
            quarantined: super::quarantine::QuarantinedPositions::default(),
        }
    }

    /// Reads the alarms kept in `meta` into each partition's [`super::wakes::WakeIndex`]
    /// (before recovery replays: what replay sets is newer and wins).
    ///
    /// # Errors
    /// Storage read errors.
    pub fn load_wakes(&self) -> Result<usize, storage::StorageError> {
        let mut loaded = 0;
        for (key, value) in self.store.meta_scan_prefix(super::wakes::WAKE_PREFIX)? {
            if let Some((customer, at)) = super::wakes::decode_entry(&key, &value) {
                let partition = usize::from(self.partition_of(customer));
                if let Some(index) = self.wakes.get(partition) {
                    index.load(customer, at);
                    loaded += 1;
                }
            }
        }
        Ok(loaded)
    }

    /// The current catalog snapshot.
    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalog.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set_catalog(&self, catalog: Catalog) {
        *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(catalog);
    }

    /// Records a customer's profile and aliases in the registry and in `meta`, and (live)
    /// releases late events waiting for its id or aliases.
    pub fn record_profile(&self, profile: &CustomerProfile, old_aliases: &[String], live: bool) {
        self.registry
            .set(profile.id, old_aliases, &profile.ingest_aliases);
        if !live {
            self.registry.note_replayed();
        }
        let mut puts = Vec::new();
        match storage::encode(META_VERSION, profile) {
            Ok(bytes) => puts.push((entry::profile_key(profile.id), bytes)),
            Err(error) => tracing::error!(%error, "profile encoding failed"),
        }
        for alias in &profile.ingest_aliases {
            puts.push((entry::alias_key(alias), profile.id.as_bytes().to_vec()));
        }
        let deletes: Vec<Vec<u8>> = old_aliases
            .iter()
            .filter(|a| !profile.ingest_aliases.contains(a))
            .map(|a| entry::alias_key(a))
            .collect();
        // The log holds the input: a failure here is repaired by replay after a restart.
        if let Err(error) = self.store.meta_write_batch(&puts, &deletes) {
            self.health.fail_stop("registry write", &error);
        }
        if live {
            let mut keys = profile.ingest_aliases.clone();
            keys.push(profile.id.to_string());
            self.sinks.late_release.send(keys);
        }
    }

    /// Loads registry entries written by earlier runs.
    ///
    /// # Errors
    /// Storage errors.
    pub fn load_registry(&self) -> Result<usize, storage::StorageError> {
        let mut count = 0;
        for (_, value) in self.store.meta_scan_prefix(entry::PROFILE_PREFIX)? {
            let profile: CustomerProfile = storage::decode(META_VERSION, &value)?;
            self.registry.set(profile.id, &[], &profile.ingest_aliases);
            count += 1;
        }
        Ok(count)
    }

    /// Hands freshly persisted effects to the actors that carry them out.
    pub fn notify_effects(&self, entries: Vec<([u8; 16], OutboxEntry)>) {
        if entries.is_empty() {
            return;
        }
        let (payments, webhooks): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|(_, e)| matches!(e.effect, OutboxEffect::Payment(_)));
        if !webhooks.is_empty() {
            // The entries are durable; a lost message is re-read from the outbox at start.
            self.sinks.webhooks.do_send(Enqueue(webhooks));
        }
        if !payments.is_empty() {
            self.sinks.payments.do_send(PaymentJobs(payments));
        }
    }

    /// The handle of a partition.
    pub fn handle(&self, partition: u16) -> Option<PartitionHandle> {
        self.handles.get(usize::from(partition)).cloned()
    }

    pub fn partition_of(&self, customer: Id) -> u16 {
        entry::partition_of(customer, self.settings.partitions)
    }
}

#[cfg(test)]
mod tests {
    use super::WebhookRoute;

    #[test]
    fn a_route_receives_the_types_it_names_exactly_or_by_prefix() {
        assert!(WebhookRoute::all("http://x").receives("contract.end"));
        let route = WebhookRoute {
            url: "http://x".into(),
            event_types: Some(vec!["payment_gate.*".into(), "contract.end".into()]),
        };
        assert!(route.receives("payment_gate.threshold_reached"));
        assert!(route.receives("contract.end"));
        assert!(!route.receives("contract.edit"));
        assert!(!route.receives("commit.create"));
        let none = WebhookRoute {
            url: "http://x".into(),
            event_types: Some(vec![]),
        };
        assert!(!none.receives("payment_gate.payment_status"));
    }
}

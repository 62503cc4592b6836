//! What every partition and actor of one engine shares: the store, the catalog snapshot, the
//! customer registry, settings, the clock, counters, and the sinks effects are handed to.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock, RwLock};

use actix::Addr;
use tokio::sync::mpsc;

use super::clock::SharedClock;
use super::entry::{self, META_VERSION};
use super::health::Health;
use super::metrics::EngineMetrics;
use super::outbox::{OutboxEffect, OutboxEntry};
use super::partition::PartitionHandle;
use super::payment::{PaymentActor, PaymentJobs};
use super::registry::Registry;
use super::webhook::{Enqueue, WebhookActor};
use crate::domain::customer::CustomerProfile;
use crate::domain::{Catalog, Id, Limits};
use crate::storage::{self, Store};

/// Engine settings the actors need (from config).
#[derive(Clone, Debug)]
pub struct EngineSettings {
    pub partitions: u16,
    pub limits: Limits,
    /// URL of every webhook destination (each webhook gets one outbox entry per URL).
    pub webhook_urls: Vec<String>,
    pub mailbox_capacity: usize,
    /// Inputs accepted but not yet applied, per partition, before ingest answers 429.
    pub pending_inputs_max: usize,
    pub checkpoint_interval_ms: u64,
    /// A checkpoint also starts after this many inputs, bounding replay after a crash.
    pub checkpoint_every_inputs: u64,
    pub evict_idle_ms: i64,
    pub tick_interval_ms: u64,
    /// How long events for unknown customers are kept (34 days).
    pub late_window_ms: i64,
}

/// A late key that may now resolve: its events are re-submitted to their customer.
#[derive(Debug)]
pub struct LateRelease {
    pub keys: Vec<String>,
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
    /// Inputs accepted but not yet applied, per partition (backpressure).
    pub pending: Vec<AtomicUsize>,
    pub webhook: OnceLock<Addr<WebhookActor>>,
    pub payment: OnceLock<Addr<PaymentActor>>,
    pub late_release: OnceLock<mpsc::UnboundedSender<LateRelease>>,
    pub handles: OnceLock<Vec<PartitionHandle>>,
}

impl Shared {
    pub fn new(
        store: Store,
        settings: EngineSettings,
        clock: SharedClock,
        metrics: Arc<EngineMetrics>,
        catalog: Catalog,
    ) -> Shared {
        let pending = (0..settings.partitions)
            .map(|_| AtomicUsize::new(0))
            .collect();
        Shared {
            store,
            settings,
            clock,
            metrics,
            registry: Registry::default(),
            health: Arc::new(Health::default()),
            catalog: RwLock::new(Arc::new(catalog)),
            pending,
            webhook: OnceLock::new(),
            payment: OnceLock::new(),
            late_release: OnceLock::new(),
            handles: OnceLock::new(),
        }
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
            if let Some(sink) = self.late_release.get() {
                let _ = sink.send(LateRelease { keys });
            }
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
            if let Some(webhook) = self.webhook.get() {
                // The entries are durable; a lost message is re-read from the outbox at start.
                webhook.do_send(Enqueue(webhooks));
            }
        }
        if !payments.is_empty() {
            if let Some(payment) = self.payment.get() {
                payment.do_send(PaymentJobs(payments));
            }
        }
    }

    /// The handle of a partition (set once the engine started).
    pub fn handle(&self, partition: u16) -> Option<PartitionHandle> {
        self.handles.get()?.get(usize::from(partition)).cloned()
    }

    pub fn partition_of(&self, customer: Id) -> u16 {
        entry::partition_of(customer, self.settings.partitions)
    }
}

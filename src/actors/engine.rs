//! The `Engine` facade: the only thing `src/http/` calls. It hides actix (arbiters, actors,
//! mailboxes) behind plain async methods, so a later move to other runtimes touches this
//! module only.
//!
//! Start-up order matters: open storage, load the catalog and registry, recover every partition
//! (checkpoint + log suffix), then start the webhook and payment actors (which read the outbox
//! that recovery completed), then the partitions, then release late events; only then does the
//! engine report ready.

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use tokio::sync::{Mutex, mpsc, oneshot};

use super::backlog::Backlog;
use super::clock::SharedClock;
use super::deliveries::{DELIVERED_PREFIX, DeliveredWebhook};
use super::entry::{self, CATALOG_PARTITION, LogEntry, META_VERSION, PersistedCustomer};
pub use super::error::EngineError;
use super::handles::{
    self, Control, LateRelease, LateReleases, Mailbox, PendingRecord, Placement, QueryFn, Sinks,
    Submission,
};
use super::metrics::EngineMetrics;
use super::outbox::{OutboxEffect, OutboxEntry};
use super::partition;
use super::payment::{PaymentActor, Payments};
use super::shared::{EngineSettings, Shared};
use super::webhook::{Redrive, WebhookActor, WebhookParts, WebhookSettings, WebhookStats};
use crate::domain::catalog::CatalogChange;
use crate::domain::customer::{
    Applied, CustomerProfile, Input, QuarantineAction, QuarantineDecision,
};
use crate::domain::usage::UsageEvent;
use crate::domain::{Catalog, Id, Rejection};
use crate::storage::{
    self, AppendBatch, Durability, EffectPlace, LogRecord, StorageError, Store, StoreOptions,
    StoreStats, Uuid16,
};

/// Webhook entries of one page and the outbox id to go on after, if more may follow.
pub type WebhookPage = (Vec<(Uuid16, OutboxEntry)>, Option<Uuid16>);

/// Everything needed to start an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
    pub dedupe_window_ms: i64,
    pub dedupe_memory_entries: usize,
    pub settings: EngineSettings,
    pub webhooks: WebhookSettings,
    /// Queued submissions per partition before senders wait.
    pub submit_capacity: usize,
}

/// What the engine talks to outside itself, each behind a trait: production wires the real
/// ones ([`Engine::start`]); tests and the simulation replace any of them.
pub struct Seams {
    /// Time for the log, delivery schedules and checkpoints.
    pub clock: SharedClock,
    /// Collects STRIPE-gated charges (provider and pacing); `None` leaves them waiting.
    pub payments: Option<Payments>,
    /// Asked before every storage write and read; `None` in production.
    pub storage_faults: Option<crate::storage::faults::Faults>,
    /// Delivers webhook attempts; `None` is HTTP.
    pub webhook_transport: Option<Arc<dyn super::webhook::WebhookTransport>>,
    /// Where the actors run: [`Placement::Threads`] in production.
    pub placement: Placement,
    /// Seeds the engine's randomness (webhook retry jitter); `None` seeds it from the OS.
    pub random_seed: Option<u64>,
    /// Where the store lives.
    pub disk: Disk,
    /// A bug of this version: the inputs it names panic when applied (quarantine in the
    /// simulation); `None` in production.
    pub apply_bug: Option<super::shared::ApplyBug>,
}

/// The store the engine opens.
#[derive(Clone, Default)]
pub enum Disk {
    /// RocksDB in the configured data dir, appends group-committed on a thread (production).
    #[default]
    RocksDb,
    /// RocksDB in the data dir, each append written by its caller: deterministic runs.
    RocksDbInline,
    /// The simulated disk (the data dir is not used).
    Sim(Arc<crate::storage::sim::SimDisk>),
}

impl Seams {
    /// Production's seams on `clock`: no payment provider, real storage, HTTP webhooks, actors
    /// on threads, randomness from the OS. Tests replace fields with struct update syntax.
    pub fn new(clock: SharedClock) -> Seams {
        Seams {
            clock,
            payments: None,
            storage_faults: None,
            webhook_transport: None,
            placement: Placement::Threads,
            random_seed: None,
            disk: Disk::RocksDb,
            apply_bug: None,
        }
    }
}

/// One event to ingest with the customer key it named (an id or an ingest alias).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestEvent {
    pub customer_key: String,
    pub event: UsageEvent,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestReceipt {
    pub accepted: usize,
    pub duplicates: usize,
}

#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    catalog_lock: Arc<Mutex<()>>,
    profile_lock: Arc<Mutex<()>>,
    ready: Arc<AtomicBool>,
    webhook_stats: Arc<WebhookStats>,
    webhook_redrive: actix::Recipient<Redrive>,
    payment_cancel: actix::Recipient<super::payment::ChargeCancel>,
    ingest_rate: Arc<super::metrics::RateWindow>,
    data_dir: Arc<PathBuf>,
}

impl Engine {
    /// Opens the data directory, recovers, and starts every actor. Must run inside an actix
    /// system.
    ///
    /// # Errors
    /// Storage errors, a corrupt log or state, or a partition count that differs from the one
    /// the data directory was created with.
    pub async fn start(
        config: EngineConfig,
        clock: SharedClock,
        payments: Option<Payments>,
    ) -> Result<Engine, EngineError> {
        let seams = Seams {
            payments,
            ..Seams::new(clock)
        };
        Engine::start_with(config, seams).await
    }

    /// [`Engine::start`] with every seam given: what tests and the simulation replace.
    ///
    /// # Errors
    /// As [`Engine::start`].
    pub async fn start_with(config: EngineConfig, seams: Seams) -> Result<Engine, EngineError> {
        let Seams {
            clock,
            payments,
            storage_faults: faults,
            webhook_transport,
            placement,
            random_seed,
            disk,
            apply_bug,
        } = seams;
        let started = Instant::now();
        let options = StoreOptions {
            durability: config.durability,
            dedupe_window_ms: config.dedupe_window_ms,
            dedupe_memory_entries: config.dedupe_memory_entries,
        };
        let store = match disk {
            Disk::RocksDb => Store::open_with_faults(&config.data_dir, options, faults)?,
            Disk::RocksDbInline => Store::open_inline(&config.data_dir, options, faults)?,
            Disk::Sim(disk) => Store::open_sim(&disk, options, faults)?,
        };
        let partitions = fix_partition_count(&store, config.settings.partitions)?;
        let mut settings = config.settings.clone();
        settings.partitions = partitions;
        let mut catalog = load_catalog(&store)?;
        log_limits(
            &store,
            &mut catalog,
            &config.settings.limits,
            clock.now_ms(),
        )
        .await?;
        let metrics = Arc::new(EngineMetrics::default());
        // Every handle first, then the actors that use them.
        let (webhook_addr, webhook_mailbox) = Mailbox::<WebhookActor>::new();
        let (payment_addr, payment_mailbox) = Mailbox::<PaymentActor>::new();
        let (late_tx, late_rx) = LateReleases::channel();
        let (handles, queues): (Vec<_>, Vec<_>) = (0..partitions)
            .map(|_| handles::partition_queues(config.submit_capacity))
            .unzip();
        let webhook_redrive = webhook_addr.clone().recipient();
        let payment_cancel = payment_addr.clone().recipient();
        let sinks = Sinks {
            webhooks: webhook_addr.recipient(),
            payments: payment_addr.recipient(),
            late_release: late_tx,
        };
        let mut shared = Shared::new(
            store,
            settings,
            Arc::clone(&clock),
            metrics,
            catalog,
            (sinks, handles),
        );
        shared.placement = placement;
        shared.apply_bug = apply_bug;
        shared.quarantined = super::quarantine::QuarantinedPositions::load(&shared.store)?;
        let shared = Arc::new(shared);
        shared.load_registry()?;
        shared.load_wakes()?;
        if let Some(indexed) = super::customer::build_workflow_state_index(&shared)? {
            tracing::info!(indexed, "workflows in flight indexed by state");
        }
        let recovered = recover_partitions(&shared, partitions, placement);
        let mut states = Vec::with_capacity(recovered.len());
        let mut replayed_total = 0;
        for result in recovered {
            let (map, last, replayed) = result?;
            replayed_total += replayed;
            states.push((map, last));
        }
        // Replay set aliases partition by partition; each customer's final profile is right,
        // the order across partitions was not (an alias moved from a customer of one partition
        // to one of another): the map is the profiles' again, read once more only if replay
        // touched it.
        if shared.registry.take_replayed()
            && !crate::defects::active(crate::defects::Defect::AliasMapNotReloaded)
        {
            shared.registry.clear();
            shared.load_registry()?;
        }
        rebuild_gate_counters(&shared)?;
        let customers = shared.registry.customer_count();
        let webhook_stats = Arc::new(WebhookStats::default());
        let webhook_parts = WebhookParts {
            store: shared.store.clone(),
            settings: config.webhooks.clone(),
            clock: Arc::clone(&clock),
            stats: Arc::clone(&webhook_stats),
            transport: webhook_transport,
            health: Arc::clone(&shared.health),
            placement,
            seed: random_seed,
        };
        WebhookActor::start_on(webhook_mailbox, webhook_parts);
        PaymentActor::start_on(payment_mailbox, Arc::clone(&shared), payments);
        for (p, ((map, last), queues)) in states.into_iter().zip(queues).enumerate() {
            if placement == Placement::CurrentThread {
                partition::start(p as u16, Arc::clone(&shared), map, last, queues);
                continue;
            }
            let arbiter = actix::Arbiter::new();
            let (tx, rx) = oneshot::channel();
            let shared_p = Arc::clone(&shared);
            let spawned = arbiter.spawn_fn(move || {
                partition::start(p as u16, shared_p, map, last, queues);
                let _ = tx.send(());
            });
            if !spawned {
                return Err(EngineError::Internal(
                    "partition arbiter did not start".into(),
                ));
            }
            rx.await
                .map_err(|_| EngineError::Internal("partition did not start".into()))?;
            // The arbiter keeps running after its handle drops.
            std::mem::forget(arbiter);
        }
        let engine = Engine {
            shared: Arc::clone(&shared),
            catalog_lock: Arc::new(Mutex::new(())),
            profile_lock: Arc::new(Mutex::new(())),
            ready: Arc::new(AtomicBool::new(false)),
            webhook_stats,
            webhook_redrive,
            payment_cancel,
            ingest_rate: Arc::default(),
            data_dir: Arc::new(config.data_dir.clone()),
        };
        actix_rt::spawn(release_late_loop(Arc::clone(&shared), late_rx));
        actix_rt::spawn(sample_rates(
            Arc::clone(&shared),
            Arc::clone(&engine.ingest_rate),
        ));
        engine.sweep_late()?;
        engine.resume_alert_sweeps()?;
        let metrics = &shared.metrics;
        metrics.recovery_replayed.store(replayed_total, Relaxed);
        metrics
            .recovery_millis
            .store(started.elapsed().as_millis() as u64, Relaxed);
        tracing::info!(
            partitions,
            customers,
            replayed = replayed_total,
            millis = started.elapsed().as_millis() as u64,
            "engine recovered"
        );
        engine.ready.store(true, Relaxed);
        Ok(engine)
    }

    /// Whether the engine accepts work: recovered, and no storage failure since.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed) && !self.shared.health.is_failed()
    }

    /// `Ok` while the engine accepts work, else the error to answer (503: starting, or
    /// stopped by a storage failure). The edge asks this before anything else, so a failed
    /// engine never answers 429 for a backlog it will not apply.
    ///
    /// # Errors
    /// [`EngineError::NotReady`], [`EngineError::Unavailable`].
    pub fn check_ready(&self) -> Result<(), EngineError> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(self.not_ready())
        }
    }

    /// The error for work refused because the engine is not ready.
    fn not_ready(&self) -> EngineError {
        if self.shared.health.is_failed() {
            EngineError::Unavailable
        } else {
            EngineError::NotReady
        }
    }

    /// Resolves once a storage failure has stopped the engine (the server then exits).
    pub async fn failed(&self) {
        self.shared.health.failed().await;
    }

    /// What failed first, once a storage failure has stopped the engine.
    pub fn failure(&self) -> Option<String> {
        self.shared.health.reason()
    }

    pub fn metrics(&self) -> &EngineMetrics {
        &self.shared.metrics
    }

    pub fn webhook_stats(&self) -> &WebhookStats {
        &self.webhook_stats
    }

    /// Up to `limit` webhook entries (one per webhook and destination) of `place`, after the
    /// outbox id `after`, in id order; payment entries are skipped. Also answers the id to go
    /// on after (the last entry read, webhook or not) when more may follow.
    ///
    /// # Errors
    /// Storage errors; an entry this build cannot read.
    pub fn webhook_entries(
        &self,
        place: EffectPlace,
        mut after: Option<Uuid16>,
        limit: usize,
    ) -> Result<WebhookPage, EngineError> {
        /// Entries read per step, and per call at most (payments in between are skipped).
        const STEP: usize = 256;
        const READ_MAX: usize = 10_000;
        let mut found = Vec::new();
        let mut read = 0usize;
        loop {
            let page = self.with_store("webhook list", |store| {
                store.effects_page(place, after, STEP)
            })?;
            let exhausted = page.len() < STEP;
            for (id, value) in page {
                if found.len() == limit || read == READ_MAX {
                    return Ok((found, after));
                }
                read += 1;
                after = Some(id);
                // One unreadable entry (another build's format) must not hide the others.
                match OutboxEntry::decode(&value) {
                    Ok(entry) if matches!(entry.effect, OutboxEffect::Webhook { .. }) => {
                        found.push((id, entry));
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::error!(id = %Id::from_bytes(id), %error, "unreadable outbox entry left out of the list");
                    }
                }
            }
            if exhausted {
                return Ok((found, None));
            }
        }
    }

    /// Up to `limit` delivered webhooks still kept, oldest first, after the record key `after`.
    ///
    /// # Errors
    /// Storage errors; a record this build cannot read.
    pub fn delivered_webhooks(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, DeliveredWebhook)>, EngineError> {
        let page = self.with_store("delivered webhook list", |store| {
            store.meta_scan_page(DELIVERED_PREFIX, after, limit)
        })?;
        page.into_iter()
            .map(|(key, value)| {
                DeliveredWebhook::decode(&value)
                    .map(|record| (key, record))
                    .map_err(|e| EngineError::Internal(format!("delivered webhook: {e}")))
            })
            .collect()
    }

    /// The payment actor's cancel mailbox (`cancel.rs`).
    pub(super) fn payment_cancel(&self) -> &actix::Recipient<super::payment::ChargeCancel> {
        &self.payment_cancel
    }

    /// Moves the webhook dead letter `id` back to the outbox with a fresh retry window, for the
    /// webhook actor to send at once (SPEC 3.1: same id, new attempts). `Ok(false)`: no webhook
    /// dead letter has that id.
    ///
    /// # Errors
    /// Storage errors (the engine stops); the webhook actor gone.
    pub async fn redrive_webhook(&self, id: Uuid16) -> Result<bool, EngineError> {
        let moved = self
            .webhook_redrive
            .send(Redrive(id))
            .await
            .map_err(|_| EngineError::Unavailable)?;
        self.with_store("webhook re-drive", |_| moved)
    }

    pub fn store_stats(&self) -> StoreStats {
        self.shared.store.stats()
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.shared.settings
    }

    pub fn now_ms(&self) -> i64 {
        self.shared.clock.now_ms()
    }

    /// The current catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.shared.catalog()
    }

    /// The customer an id or alias names.
    pub fn resolve(&self, key: &str) -> Option<Id> {
        self.shared.registry.resolve(key)
    }

    pub fn customer_exists(&self, customer: Id) -> bool {
        self.shared.registry.contains(customer)
    }

    /// The data directory the engine was started on.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Customers known (archived ones included).
    pub fn customer_count(&self) -> usize {
        self.shared.registry.customer_count()
    }

    pub fn alias_owner(&self, alias: &str) -> Option<Id> {
        self.shared.registry.alias_owner(alias)
    }

    /// Releases of late events queued or running (an alias or customer that appeared).
    pub fn late_releases_pending(&self) -> usize {
        self.shared.sinks.late_release.pending()
    }

    /// Events accepted per second over the last `seconds` (at most 60); `None` in the first
    /// second after the start.
    pub fn ingest_per_second(&self, seconds: usize) -> Option<u64> {
        self.ingest_rate.per_second(seconds)
    }

    /// Inputs waiting to be applied in a partition (backpressure gauge).
    pub fn pending_inputs(&self) -> usize {
        self.shared.pending.iter().map(Backlog::pending).sum()
    }

    /// Alarms due now that the housekeeping has not ticked yet, over all partitions (a reader
    /// that wants a state no alarm is about to move waits for 0).
    pub fn alarms_due(&self) -> usize {
        let now = self.shared.clock.now_ms();
        self.shared.wakes.iter().map(|w| w.due(now)).sum()
    }

    /// Inputs admitted since the start, over all partitions (a reader that sees it unchanged
    /// and nothing pending around its reads read one consistent state).
    pub fn inputs_admitted(&self) -> u64 {
        self.shared.pending.iter().map(Backlog::admitted).sum()
    }

    /// How long the oldest input admitted and not yet applied has waited, over all partitions
    /// (milliseconds; 0 when nothing waits).
    pub fn apply_lag_ms(&self) -> i64 {
        let now = self.shared.clock.now_ms();
        self.shared
            .pending
            .iter()
            .map(|p| p.lag_ms(now))
            .max()
            .unwrap_or(0)
    }

    /// Whether some partition is behind: its oldest unapplied input has waited longer than
    /// `engine.apply_lag_max_ms`, or it holds as many inputs as it may. Ingest then answers
    /// 429 before reading and parsing a request, so the lag stays bounded in time whatever the
    /// offered load, and a storm of retries costs little CPU. [`Engine::ingest`] still checks
    /// the count exactly per partition.
    pub fn is_saturated(&self) -> bool {
        let lag_max_ms = self.shared.settings.apply_lag_max_ms;
        let now = self.shared.clock.now_ms();
        self.shared
            .pending
            .iter()
            .any(|p| !p.has_room(1, now, lag_max_ms))
    }

    /// Appends usage events durably (deduplicated by transaction id) and returns once they
    /// are; applying them to balances and thresholds follows within milliseconds.
    ///
    /// # Errors
    /// [`EngineError::Overloaded`] before anything is appended when a partition has too much
    /// accepted work waiting; storage errors (some partitions' events may then be durable:
    /// retrying the batch is safe, duplicates are ignored).
    pub async fn ingest(&self, events: Vec<IngestEvent>) -> Result<IngestReceipt, EngineError> {
        if !self.is_ready() {
            return Err(self.not_ready());
        }
        let started = std::time::Instant::now();
        let shared = &self.shared;
        let partitions = shared.settings.partitions;
        let version = shared.catalog().version();
        let resolved = shared
            .registry
            .resolve_all(events.iter().map(|e| e.customer_key.as_str()));
        let mut per_partition: Vec<Vec<PendingRecord>> =
            (0..partitions).map(|_| Vec::new()).collect();
        for (event, customer) in events.into_iter().zip(resolved) {
            let dedupe_key = Some(entry::transaction_key(&event.event.transaction_id));
            let (partition, entry) = match customer {
                Some(customer_id) => (
                    shared.partition_of(customer_id),
                    LogEntry::Customer {
                        customer_id,
                        catalog_version: version,
                        input: Input::RecordUsage(event.event),
                    },
                ),
                None => (
                    entry::partition_of_key(&event.customer_key, partitions),
                    LogEntry::UnmatchedAt {
                        key: event.customer_key,
                        catalog_version: version,
                        event: event.event,
                    },
                ),
            };
            per_partition[usize::from(partition)].push(PendingRecord {
                dedupe_key,
                entry,
                reply: None,
            });
        }
        self.admit(&per_partition)?;
        let mut acks = Vec::new();
        let mut total = 0;
        for (p, records) in per_partition.into_iter().enumerate() {
            if records.is_empty() {
                continue;
            }
            total += records.len();
            let (ack, answer) = oneshot::channel();
            self.submit(p as u16, Submission { records, ack }).await?;
            acks.push(answer);
        }
        let mut receipt = IngestReceipt::default();
        for answer in acks {
            let appended = answer
                .await
                .map_err(|_| EngineError::Internal("partition stopped".into()))??;
            receipt.duplicates += appended.seqs.iter().filter(|s| s.is_none()).count();
        }
        receipt.accepted = total - receipt.duplicates;
        EngineMetrics::add(&shared.metrics.events_accepted, receipt.accepted as u64);
        shared.metrics.ingest_ack.observe_since(started);
        Ok(receipt)
    }

    /// Checks every partition has room, then counts the records as pending.
    fn admit(&self, per_partition: &[Vec<PendingRecord>]) -> Result<(), EngineError> {
        let lag_max_ms = self.shared.settings.apply_lag_max_ms;
        let now_ms = self.shared.clock.now_ms();
        for (p, records) in per_partition.iter().enumerate() {
            if !records.is_empty()
                && !self.shared.pending[p].has_room(records.len(), now_ms, lag_max_ms)
            {
                EngineMetrics::add(&self.shared.metrics.overloaded, 1);
                return Err(EngineError::Overloaded);
            }
        }
        for (p, records) in per_partition.iter().enumerate() {
            self.shared.pending[p].admit(records.len(), now_ms);
        }
        Ok(())
    }

    async fn submit(&self, partition: u16, submission: Submission) -> Result<(), EngineError> {
        let handle = self.shared.handle(partition).ok_or(EngineError::NotReady)?;
        handle
            .submit
            .send(submission)
            .await
            .map_err(|_| EngineError::Internal("partition stopped".into()))
    }

    /// Appends one input for a customer and returns the domain's verdict once applied.
    ///
    /// # Errors
    /// [`EngineError::Rejected`] when the domain refused it (the refused input stays in the log
    /// and is refused again identically on replay, changing nothing), overload, storage.
    pub async fn apply(&self, customer: Id, input: Input) -> Result<Applied, EngineError> {
        if !self.is_ready() {
            return Err(self.not_ready());
        }
        let partition = self.shared.partition_of(customer);
        let (reply, verdict) = oneshot::channel();
        let record = PendingRecord {
            dedupe_key: None,
            entry: LogEntry::Customer {
                customer_id: customer,
                catalog_version: self.shared.catalog().version(),
                input,
            },
            reply: Some(reply),
        };
        let mut per_partition: Vec<Vec<PendingRecord>> = (0..self.shared.settings.partitions)
            .map(|_| Vec::new())
            .collect();
        per_partition[usize::from(partition)].push(record);
        self.admit(&per_partition)?;
        let record = per_partition
            .swap_remove(usize::from(partition))
            .pop()
            .expect("pushed above");
        let (ack, appended) = oneshot::channel();
        self.submit(
            partition,
            Submission {
                records: vec![record],
                ack,
            },
        )
        .await?;
        appended
            .await
            .map_err(|_| EngineError::Internal("partition stopped".into()))??;
        let applied = verdict
            .await
            .map_err(|_| EngineError::Internal("customer actor stopped".into()))??;
        Ok(applied)
    }

    /// Creates a customer; its ingest aliases must be free.
    ///
    /// # Errors
    /// [`Rejection::AliasInUse`], [`Rejection::AlreadyExists`], and as [`Engine::apply`].
    pub async fn create_customer(&self, profile: CustomerProfile) -> Result<Applied, EngineError> {
        let _guard = self.profile_lock.lock().await;
        if self.shared.registry.contains(profile.id) {
            return Err(Rejection::AlreadyExists.into());
        }
        self.check_aliases_free(profile.id, &profile.ingest_aliases)?;
        let id = profile.id;
        self.apply(id, Input::create_customer(profile)).await
    }

    /// Replaces a customer's ingest aliases.
    ///
    /// # Errors
    /// [`Rejection::AliasInUse`], [`Rejection::CustomerNotFound`], and as [`Engine::apply`].
    pub async fn set_ingest_aliases(
        &self,
        customer: Id,
        aliases: Vec<String>,
    ) -> Result<Applied, EngineError> {
        let _guard = self.profile_lock.lock().await;
        if !self.shared.registry.contains(customer) {
            return Err(Rejection::CustomerNotFound.into());
        }
        self.check_aliases_free(customer, &aliases)?;
        self.apply(customer, Input::SetIngestAliases(aliases)).await
    }

    /// Aliases must be well-formed keys, not the id of any customer (ids resolve first, so such
    /// an alias would be dead at best), and not another customer's alias.
    fn check_aliases_free(&self, customer: Id, aliases: &[String]) -> Result<(), EngineError> {
        for (i, alias) in aliases.iter().enumerate() {
            if let Some(problem) = crate::domain::ids::key_problem(alias) {
                return Err(Rejection::invalid(&format!("ingest_aliases[{i}]"), problem).into());
            }
            if Id::parse(alias).is_some_and(|id| self.shared.registry.contains(id)) {
                return Err(Rejection::AliasInUse(alias.clone()).into());
            }
        }
        for alias in aliases {
            match self.shared.registry.alias_owner(alias) {
                Some(owner) if owner != customer => {
                    return Err(Rejection::AliasInUse(alias.clone()).into());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Applies a catalog change: validated on a copy, appended durably, then published.
    ///
    /// # Errors
    /// [`EngineError::Rejected`] (nothing written), storage errors.
    pub async fn change_catalog(&self, change: CatalogChange) -> Result<(), EngineError> {
        let _guard = self.catalog_lock.lock().await;
        let mut next = (*self.shared.catalog()).clone();
        next.apply(change.clone())?;
        let payload = storage::encode(entry::LOG_VERSION, &LogEntry::Catalog(change))?;
        let appended = self
            .shared
            .store
            .append(AppendBatch {
                partition: CATALOG_PARTITION,
                at_ms: self.shared.clock.now_ms(),
                records: vec![LogRecord {
                    dedupe_key: None,
                    payload,
                }],
            })
            .await;
        if let Err(error) = appended {
            // As a partition's append (SPEC 2.1): a full queue is back-pressure; any other
            // failure stops the engine, since the change may or may not have reached the log
            // and only a restart's replay knows which.
            if error.is_store_failure() {
                self.fail_stop("catalog append", &error);
            }
            return Err(EngineError::of_append(&error));
        }
        self.shared.set_catalog(next);
        Ok(())
    }

    /// Creates an alert (a catalog change) and sweeps the customers it applies to, so that
    /// each is evaluated within a housekeeping round even if it sends nothing.
    ///
    /// # Errors
    /// The catalog's refusal, storage errors.
    pub async fn create_alert(
        &self,
        alert: crate::domain::alerts::Alert,
    ) -> Result<(), EngineError> {
        let id = alert.id;
        self.change_catalog(CatalogChange::CreateAlert(alert))
            .await?;
        let alert = self
            .shared
            .catalog()
            .alert(id)
            .cloned()
            .ok_or_else(|| EngineError::Internal("alert not in the catalog".into()))?;
        self.sweep_alert(&alert)
    }

    /// Brings the alarm of every customer `alert` applies to forward to now (kept in `meta`
    /// like every alarm: the housekeeping ticks them, `WAKES_PER_HOUSEKEEPING` at a time per
    /// partition), then marks the sweep done (synced, which makes the alarms durable with it).
    /// A crash before the mark sweeps again at the next start; a second tick changes nothing.
    fn sweep_alert(&self, alert: &crate::domain::alerts::Alert) -> Result<(), EngineError> {
        let now = crate::domain::Timestamp(self.shared.clock.now_ms());
        let customers = match alert.customer_id {
            Some(customer) => vec![customer],
            None => self.shared.registry.customers(),
        };
        for customer in &customers {
            let partition = usize::from(self.shared.partition_of(*customer));
            if let Some(wakes) = self.shared.wakes.get(partition) {
                wakes.wake_by(*customer, now);
            }
        }
        let marked = self
            .shared
            .wakes
            .iter()
            .try_for_each(|wakes| wakes.flush(&self.shared.store).map(|_| ()))
            .and_then(|()| {
                self.shared
                    .store
                    .meta_write_batch(&[(alert_swept_key(alert.id), vec![1])], &[])
            });
        if let Err(error) = marked {
            self.fail_stop("alert sweep", &error);
            return Err(error.into());
        }
        tracing::info!(alert = %alert.id, customers = customers.len(), "alert sweep scheduled");
        Ok(())
    }

    /// Sweeps again for every alert in force whose sweep was not marked done (a crash between
    /// the alert's creation and the mark).
    fn resume_alert_sweeps(&self) -> Result<(), EngineError> {
        let catalog = self.shared.catalog();
        for alert in catalog.alerts().filter(|a| a.archived_at.is_none()) {
            if self
                .shared
                .store
                .meta_get(&alert_swept_key(alert.id))?
                .is_none()
            {
                self.sweep_alert(alert)?;
            }
        }
        Ok(())
    }

    /// Reads a customer's state through its actor.
    ///
    /// # Errors
    /// [`Rejection::CustomerNotFound`] for an unknown customer.
    pub async fn query<R: Send + 'static>(
        &self,
        customer: Id,
        f: impl FnOnce(&PersistedCustomer) -> R + Send + 'static,
    ) -> Result<R, EngineError> {
        if !self.shared.registry.contains(customer) {
            return Err(Rejection::CustomerNotFound.into());
        }
        let partition = self.shared.partition_of(customer);
        let handle = self.shared.handle(partition).ok_or(EngineError::NotReady)?;
        let (reply, answer) = oneshot::channel();
        let f: QueryFn = Box::new(move |state| Box::new(f(state)) as Box<dyn Any + Send>);
        handle
            .control
            .send(Control::Query { customer, f, reply })
            .map_err(|_| EngineError::Internal("partition stopped".into()))?;
        let answer = answer
            .await
            .map_err(|_| match self.shared.health.is_failed() {
                true => EngineError::Unavailable,
                false => EngineError::Internal("customer actor stopped".into()),
            })?;
        answer
            .downcast::<R>()
            .map(|r| *r)
            .map_err(|_| EngineError::Internal("query answer type".into()))
    }

    /// Stops the engine after a storage failure outside its actors (the HTTP layer's own
    /// reads and writes): storage failures are fail-stop (SPEC 2.1), whatever noticed them.
    pub fn fail_stop(&self, what: &str, error: &StorageError) {
        self.shared.health.fail_stop(what, error);
    }

    /// Runs a read (or write) of the store for a caller outside the actors. A failure of the
    /// store stops the engine (SPEC 2.1) and is returned; a value that does not decode (or
    /// encode) is an internal error of this one request, and does not stop the engine: a
    /// restart would read the same bytes and stop again.
    ///
    /// # Errors
    /// [`EngineError::Storage`] for a store failure, [`EngineError::Internal`] otherwise.
    pub fn with_store<T>(
        &self,
        what: &str,
        op: impl FnOnce(&Store) -> Result<T, StorageError>,
    ) -> Result<T, EngineError> {
        op(&self.shared.store).map_err(|error| {
            if error.is_store_failure() {
                self.fail_stop(what, &error);
                EngineError::Storage(error)
            } else {
                tracing::error!(%error, what, "a stored value could not be read or written");
                EngineError::Internal(format!("{what}: {error}"))
            }
        })
    }

    /// Quarantined inputs in log order, after the entry whose key is `after` (SPEC 2.1).
    ///
    /// # Errors
    /// Storage errors.
    pub fn quarantined(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<super::quarantine::Quarantined>, EngineError> {
        self.with_store("quarantine list", |store| {
            super::quarantine::list(store, after, limit)
        })
    }

    /// An operator's decision on the quarantined input stored under `key` (SPEC 2.1): it goes
    /// through the customer's log like every input, so replay decides the same way. `None`
    /// when nothing is, or was, quarantined under `key`.
    ///
    /// A checkpoint is written first, so that the customer's written state covers the input:
    /// neither replay nor a state rebuild evaluates the input again after the decision (with
    /// code that no longer fails, that would apply an input the operator discarded).
    ///
    /// # Errors
    /// [`Rejection::NotQuarantined`] when it was decided on already (or replay applied it),
    /// [`Rejection::NotReappliable`] for a re-apply of a request whose caller was told it
    /// failed, [`Rejection::StillFailing`] when a re-apply fails again, and as
    /// [`Engine::apply`].
    pub async fn decide_quarantined(
        &self,
        key: &[u8],
        decision: QuarantineDecision,
    ) -> Result<Option<Applied>, EngineError> {
        let entry = self.with_store("quarantine read", |store| {
            super::quarantine::get(store, key)
        })?;
        let Some(entry) = entry else {
            let resolved = self.with_store("quarantine read", |store| {
                super::quarantine::resolution(store, key)
            })?;
            if resolved.is_some() {
                return Err(EngineError::Rejected(Rejection::NotQuarantined));
            }
            return Ok(None);
        };
        if decision == QuarantineDecision::Reapply && !super::quarantine::reappliable(&entry.input)
        {
            return Err(EngineError::Rejected(Rejection::NotReappliable));
        }
        self.checkpoint().await?;
        let action = QuarantineAction {
            seq: entry.seq,
            index: entry.index,
            at: entry.at,
            catalog_version: entry.catalog_version,
            input: entry.input,
            panicked: entry.cause == super::quarantine::QuarantineCause::Panic,
            reason: entry.reason,
            decision,
        };
        let input = Input::Quarantine(Box::new(action));
        self.apply(entry.customer_id, input).await.map(Some)
    }

    /// Decided quarantine entries (the audit trail of re-applies and discards), in log order
    /// of the inputs, after the entry whose key is `after`.
    ///
    /// # Errors
    /// Storage errors.
    pub fn quarantine_decisions(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<super::quarantine::Resolved>, EngineError> {
        self.with_store("quarantine decisions list", |store| {
            super::quarantine::list_resolved(store, after, limit)
        })
    }

    /// The customer whose contract runs a workflow.
    ///
    /// # Errors
    /// Storage errors.
    pub fn workflow_customer(&self, workflow: Id) -> Result<Option<Id>, EngineError> {
        let bytes = self.with_store("workflow index read", |store| {
            store.meta_get(&entry::workflow_key(workflow))
        })?;
        Ok(bytes
            .and_then(|bytes| <[u8; 16]>::try_from(bytes.as_slice()).ok())
            .map(Id::from_bytes))
    }

    /// The customer an invoice belongs to.
    ///
    /// # Errors
    /// Storage errors.
    pub fn invoice_customer(&self, invoice: Id) -> Result<Option<Id>, EngineError> {
        if let Some(customer) = self
            .shared
            .invoice_index
            .iter()
            .find_map(|s| s.get(invoice))
        {
            return Ok(Some(customer));
        }
        let bytes = self.with_store("invoice index read", |store| {
            store.meta_get(&entry::invoice_key(invoice))
        })?;
        Ok(bytes
            .and_then(|bytes| <[u8; 16]>::try_from(bytes.as_slice()).ok())
            .map(Id::from_bytes))
    }

    /// A page of customer profiles in id order, after the cursor id.
    ///
    /// # Errors
    /// Storage or decode errors.
    pub fn list_profiles(
        &self,
        after: Option<Id>,
        limit: usize,
    ) -> Result<Vec<CustomerProfile>, EngineError> {
        let cursor = after.map(entry::profile_key);
        self.with_store("customer list", |store| {
            let page = store.meta_scan_page(entry::PROFILE_PREFIX, cursor.as_deref(), limit)?;
            page.iter()
                .map(|(_, value)| storage::decode(META_VERSION, value))
                .collect()
        })
    }

    /// Writes a checkpoint of every partition now (shutdown, tests).
    ///
    /// # Errors
    /// The first partition's failure.
    pub async fn checkpoint(&self) -> Result<(), EngineError> {
        for p in 0..self.shared.settings.partitions {
            let handle = self.shared.handle(p).ok_or(EngineError::NotReady)?;
            let (reply, answer) = oneshot::channel();
            handle
                .control
                .send(Control::Checkpoint(reply))
                .map_err(|_| EngineError::Internal("partition stopped".into()))?;
            answer
                .await
                .map_err(|_| EngineError::Internal("partition stopped".into()))??;
        }
        Ok(())
    }

    /// Releases every late event whose key resolves now and forgets expired ones.
    fn sweep_late(&self) -> Result<(), EngineError> {
        let mut keys: Vec<String> = Vec::new();
        let now = self.shared.clock.now_ms();
        let mut expired = Vec::new();
        for (key, value) in self.shared.store.meta_scan_prefix(entry::LATE_PREFIX)? {
            let Some(customer_key) = entry::late_customer_key(&key) else {
                continue;
            };
            let customer_key = String::from_utf8_lossy(customer_key).into_owned();
            let late = entry::decode_late(&value)?;
            if now - late.at_ms > self.shared.settings.late_window_ms {
                expired.push(key);
            } else if self.shared.registry.resolve(&customer_key).is_some()
                && !keys.contains(&customer_key)
            {
                keys.push(customer_key);
            }
        }
        self.shared.store.meta_write_batch(&[], &expired)?;
        if !keys.is_empty() {
            self.shared.sinks.late_release.send(keys);
        }
        Ok(())
    }
}

/// Re-submits late events to the customers their keys now name.
/// Recovers every partition: in parallel, one thread each, or in turn on this thread.
fn recover_partitions(
    shared: &Shared,
    partitions: u16,
    placement: Placement,
) -> Vec<Result<partition::Recovered, EngineError>> {
    if placement == Placement::CurrentThread {
        return (0..partitions)
            .map(|p| partition::recover(shared, p))
            .collect();
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..partitions)
            .map(|p| scope.spawn(move || partition::recover(shared, p)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(EngineError::Internal("recovery panicked".into())))
            })
            .collect()
    })
}

/// Sets the per-gate workflow counters from the stored indexes (after recovery, whose replay
/// wrote the log tail's moves), so they add up whatever happened before the restart.
fn rebuild_gate_counters(shared: &Shared) -> Result<(), EngineError> {
    use super::entry::{GATES, ended_prefix, gate_prefix};
    use crate::domain::gate::WorkflowState;
    let count = |prefix: Vec<u8>| -> Result<u64, StorageError> {
        Ok(shared.store.meta_count_prefix(&prefix, usize::MAX)? as u64)
    };
    for gate in GATES {
        let started = count(gate_prefix("wfg", gate))?;
        let released = count(ended_prefix(gate, WorkflowState::Released))?;
        let failed = count(ended_prefix(gate, WorkflowState::Failed))?;
        shared.metrics.gates.set(gate, (started, released, failed));
    }
    Ok(())
}

/// Samples the accepted-events counter once a second for the summary's ingest rate.
async fn sample_rates(shared: Arc<Shared>, rate: Arc<super::metrics::RateWindow>) {
    let mut tick = actix_rt::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let accepted = EngineMetrics::get(&shared.metrics.events_accepted);
        // The engine's clock, not the machine's: under the simulation's clock the summary's
        // rate is as deterministic as the rest of what the engine answers.
        rate.sample(shared.clock.now_ms(), accepted);
    }
}

async fn release_late_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<LateRelease>) {
    while let Some(release) = rx.recv().await {
        for key in release.keys {
            match release_key(&shared, &key).await {
                Ok(()) => {}
                Err(EngineError::Storage(error)) if error.is_store_failure() => {
                    shared.health.fail_stop("late event release", &error);
                }
                Err(error) => {
                    tracing::error!(%error, key, "releasing late events failed; retried at restart");
                }
            }
        }
        shared.sinks.late_release.done();
    }
}

async fn release_key(shared: &Shared, key: &str) -> Result<(), EngineError> {
    let Some(customer) = shared.registry.resolve(key) else {
        return Ok(());
    };
    let entries = shared.store.meta_scan_prefix(&entry::late_prefix(key))?;
    if entries.is_empty() {
        return Ok(());
    }
    let partition = shared.partition_of(customer);
    let current = shared.catalog().version();
    for chunk in entries.chunks(100) {
        let mut records = Vec::with_capacity(chunk.len());
        let mut keys = Vec::with_capacity(chunk.len());
        for (meta_key, value) in chunk {
            let late = entry::decode_late(value)?;
            records.push(PendingRecord {
                dedupe_key: Some(entry::late_apply_key(&late.event.transaction_id)),
                entry: LogEntry::Customer {
                    customer_id: customer,
                    // Rated as accepted, not as released.
                    catalog_version: late.catalog_version.unwrap_or(current),
                    input: Input::RecordUsage(late.event),
                },
                reply: None,
            });
            keys.push(meta_key.clone());
        }
        let count = records.len();
        shared.pending[usize::from(partition)].admit(count, shared.clock.now_ms());
        let handle = shared.handle(partition).ok_or(EngineError::NotReady)?;
        let (ack, answer) = oneshot::channel();
        handle
            .submit
            .send(Submission { records, ack })
            .await
            .map_err(|_| EngineError::Internal("partition stopped".into()))?;
        answer
            .await
            .map_err(|_| EngineError::Internal("partition stopped".into()))??;
        // Durable in the customer's log: the late copies can go.
        shared.store.meta_write_batch(&[], &keys)?;
        EngineMetrics::add(&shared.metrics.events_late_released, count as u64);
    }
    Ok(())
}

/// Fixes the partition count at first start: customers are assigned by it, so it cannot change
/// for a data directory.
fn fix_partition_count(store: &Store, configured: u16) -> Result<u16, EngineError> {
    match store.meta_get(entry::PARTITIONS_KEY)? {
        Some(bytes) => {
            let stored = <[u8; 2]>::try_from(bytes.as_slice())
                .map(u16::from_be_bytes)
                .map_err(|_| EngineError::Internal("corrupt partition count".into()))?;
            if stored != configured {
                tracing::warn!(
                    stored,
                    configured,
                    "partition count is fixed by the data directory; using the stored value"
                );
            }
            Ok(stored)
        }
        None => {
            let partitions = configured.max(1);
            store.meta_write_batch(
                &[(
                    entry::PARTITIONS_KEY.to_vec(),
                    partitions.to_be_bytes().to_vec(),
                )],
                &[],
            )?;
            Ok(partitions)
        }
    }
}

/// Rebuilds the catalog from its log (catalog changes are few; the log is never trimmed).
/// Logs the configured limits when they differ from those in force, before anything is replayed
/// or accepted: inputs already logged keep the limits they were accepted under.
async fn log_limits(
    store: &Store,
    catalog: &mut Catalog,
    limits: &crate::domain::Limits,
    now_ms: i64,
) -> Result<(), EngineError> {
    if catalog.current_limits() == limits {
        return Ok(());
    }
    let change = CatalogChange::SetLimits(limits.clone());
    catalog.apply(change.clone())?;
    let payload = storage::encode(entry::LOG_VERSION, &LogEntry::Catalog(change))?;
    store
        .append(AppendBatch {
            partition: CATALOG_PARTITION,
            at_ms: now_ms,
            records: vec![LogRecord {
                dedupe_key: None,
                payload,
            }],
        })
        .await?;
    Ok(())
}

/// `asw/` ++ alert id: the alert's sweep was scheduled (see [`Engine::create_alert`]).
fn alert_swept_key(alert: Id) -> Vec<u8> {
    let mut key = b"asw/".to_vec();
    key.extend_from_slice(alert.as_bytes());
    key
}

fn load_catalog(store: &Store) -> Result<Catalog, EngineError> {
    let mut catalog = Catalog::default();
    store.replay(CATALOG_PARTITION, 0, |_, _, bytes| {
        let entry = entry::decode_log_entry(bytes)?;
        if let LogEntry::Catalog(change) = entry {
            if let Err(rejection) = catalog.apply(change) {
                tracing::error!(%rejection, "a logged catalog change no longer applies");
            }
        }
        Ok(())
    })?;
    Ok(catalog)
}

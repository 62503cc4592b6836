//! A partition: its log, its resident customer actors, its checkpoints.
//!
//! Two tasks run on the partition's own arbiter. The *submitter* turns submissions into log
//! appends in arrival order (storage group-commits appends from all partitions together). The
//! *worker* awaits those appends in the same order and dispatches each durable record to its
//! customer's actor, so every customer sees its inputs in log order, live exactly as in replay.
//! The worker also activates actors lazily, evicts idle ones, writes checkpoints and trims the
//! log, and answers reads by forwarding them to the right actor.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

// Tokio's clock: the real one in production, paused and stepped in the simulation.
use tokio::time::Instant;

use actix::{Actor, Addr};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};

use super::customer::{
    ApplyInputs, CustomerActor, Evict, Logged, Pass, Query, Sequenced, Snapshot, WorkflowMoves,
    apply_logged, load_state, load_states, persist_effects, persist_quarantined,
};
use super::entry::{self, LateEvent, LogEntry, PersistedCustomer};
use super::error::EngineError;
use super::handles::{Control, PartitionQueues, PendingRecord, Placement, Submission};
use super::metrics::EngineMetrics;
use super::quarantine::QuarantineWrites;
use super::shared::Shared;
use crate::domain::customer::Input;
use crate::domain::{Id, Timestamp};
use crate::storage::{self, AppendBatch, Appended, LogRecord, StorageError};

/// Records on their way to the log, queued for the worker in submission order.
struct InFlight {
    /// The append's outcome (the caller was acknowledged from it already).
    durable: oneshot::Receiver<Result<Appended, StorageError>>,
    at_ms: i64,
    records: Vec<PendingRecord>,
}

struct Resident {
    addr: Addr<CustomerActor>,
    last_input_ms: i64,
    dirty: bool,
    /// Queries sent and not yet answered: an actor with one is not evicted (the query would
    /// reach a stopped actor and fail).
    queries: Arc<AtomicUsize>,
}

pub struct Worker {
    partition: u16,
    shared: Arc<Shared>,
    residents: FxHashMap<Id, Resident>,
    dispatched_seq: u64,
    inputs_since_checkpoint: u64,
    last_checkpoint: Instant,
    last_tick: Instant,
    force_full_snapshot: bool,
    /// The checkpoint being written, a chunk of states at a time between commits.
    checkpoint: Option<CheckpointJob>,
    /// Set while a trim runs on its own thread.
    trimming: Arc<AtomicBool>,
    /// Customers whose states the background preload has still to read, last first.
    preload: Vec<Id>,
    /// When the last preload step ran (engine clock, ms).
    last_preload_ms: i64,
}

/// States the preload reads per step (one batched read on the partition's thread, between
/// commits): about a millisecond, so the apply lag hardly notices.
const PRELOAD_CHUNK_STATES: usize = 64;
/// While inputs keep coming, a preload step follows a commit at most this often (ms), so
/// under full load the preload takes about a quarter of the partition's thread; an idle
/// partition preloads without pause.
const PRELOAD_PACE_MS: i64 = 5;

/// States written per checkpoint step: small enough that commits (and other writers to
/// RocksDB's single write queue) wait at most a few milliseconds behind one.
const CHECKPOINT_CHUNK_STATES: usize = 1_000;

/// A checkpoint in progress. It covers the log up to `seq`: every customer that was dirty when
/// it started is in `remaining` until its state is written. States written later than that
/// may reflect newer inputs, which replay skips by each state's `applied_seq`, so commits can
/// go on between chunks.
struct CheckpointJob {
    seq: u64,
    force: bool,
    remaining: Vec<Id>,
    states: usize,
    started: Instant,
    waiting: Vec<oneshot::Sender<Result<u64, EngineError>>>,
}

/// At most this many customers' alarms are ticked per housekeeping round (every 200 ms); the
/// rest wait for the next round.
const WAKES_PER_HOUSEKEEPING: usize = 10_000;

/// Starts a partition on the current arbiter with the states recovery produced, on the queues
/// whose handle the engine already holds.
pub fn start(
    partition: u16,
    shared: Arc<Shared>,
    recovered: FxHashMap<Id, PersistedCustomer>,
    last_seq: u64,
    queues: PartitionQueues,
) {
    let PartitionQueues {
        submit: mut submit_rx,
        control: mut control_rx,
    } = queues;
    let (ordered_tx, mut ordered_rx) = mpsc::unbounded_channel::<InFlight>();
    let submitter_shared = Arc::clone(&shared);
    actix_rt::spawn(async move {
        while let Some(submission) = submit_rx.recv().await {
            let at_ms = submitter_shared.clock.now_ms();
            let mut records = Vec::with_capacity(submission.records.len());
            let mut encode_error = None;
            for record in &submission.records {
                match storage::encode(entry::LOG_VERSION, &record.entry) {
                    Ok(payload) => records.push(LogRecord {
                        dedupe_key: record.dedupe_key.clone(),
                        payload,
                    }),
                    Err(error) => encode_error = Some(error),
                }
            }
            if let Some(error) = encode_error {
                let _ = submission.ack.send(Err(EngineError::Storage(error)));
                continue;
            }
            let append = submitter_shared.store.append(AppendBatch {
                partition,
                at_ms,
                records,
            });
            // The caller hears as soon as the records are durable, even while the worker is
            // busy (a checkpoint, a cold customer's load); the worker applies them in order.
            let (durable_tx, durable_rx) = oneshot::channel();
            let ack = submission.ack;
            actix_rt::spawn(async move {
                let result = append.await;
                let _ = ack.send(match &result {
                    Ok(appended) => Ok(appended.clone()),
                    Err(error) => Err(EngineError::of_append(error)),
                });
                let _ = durable_tx.send(result);
            });
            let in_flight = InFlight {
                durable: durable_rx,
                at_ms,
                records: submission.records,
            };
            if ordered_tx.send(in_flight).is_err() {
                break;
            }
        }
    });
    let mut worker = Worker {
        partition,
        shared: Arc::clone(&shared),
        residents: FxHashMap::default(),
        dispatched_seq: last_seq,
        inputs_since_checkpoint: 0,
        last_checkpoint: Instant::now(),
        last_tick: Instant::now(),
        force_full_snapshot: false,
        checkpoint: None,
        trimming: Arc::new(AtomicBool::new(false)),
        preload: Vec::new(),
        last_preload_ms: i64::MIN,
    };
    for (id, state) in recovered {
        worker.activate(id, state, true);
    }
    worker.preload = preload_list(&worker);
    actix_rt::spawn(async move {
        let housekeeping_ms = shared.settings.housekeeping_ms.max(1);
        let mut timer = tokio::time::interval(Duration::from_millis(housekeeping_ms));
        loop {
            tokio::select! {
                biased;
                next = ordered_rx.recv() => match next {
                    Some(in_flight) => worker.commit(in_flight).await,
                    None => break,
                },
                Some(control) = control_rx.recv() => worker.control(control).await,
                () = std::future::ready(()), if worker.checkpoint.is_some() => {
                    worker.checkpoint_step().await;
                }
                _ = timer.tick() => worker.housekeeping().await,
                () = std::future::ready(()), if !worker.preload.is_empty() => {
                    worker.preload_step();
                    // The step is synchronous and the other branches return Pending without
                    // spending tokio's budget: without this the loop would run the whole
                    // preload back to back and starve every task of this thread (the
                    // submitter, the acknowledgements, the customer actors).
                    tokio::task::yield_now().await;
                }
            }
            // A checkpoint and the preload advance a chunk after each commit too, so steady
            // load cannot starve them.
            if worker.checkpoint.is_some() {
                worker.checkpoint_step().await;
            }
            if !worker.preload.is_empty()
                && worker
                    .shared
                    .clock
                    .now_ms()
                    .saturating_sub(worker.last_preload_ms)
                    >= PRELOAD_PACE_MS
            {
                worker.preload_step();
            }
        }
    });
}

/// The customers of the worker's partition the preload reads, up to its share of
/// `engine.preload_customers_max`: every known customer that recovery did not make resident.
fn preload_list(worker: &Worker) -> Vec<Id> {
    let settings = &worker.shared.settings;
    let share = settings
        .preload_customers_max
        .div_ceil(usize::from(settings.partitions.max(1)));
    let mut ids: Vec<Id> = worker
        .shared
        .registry
        .customers()
        .into_iter()
        .filter(|id| {
            worker.shared.partition_of(*id) == worker.partition
                && !worker.residents.contains_key(id)
        })
        .take(share.saturating_sub(worker.residents.len()))
        .collect();
    // Steps pop from the end: read in registry order.
    ids.reverse();
    ids
}

impl Worker {
    /// Reads the next chunk of preloaded states and makes those customers resident. The read
    /// and the activation are one step of this thread, so no eviction (which writes a newer
    /// state) can come between them; a customer that became resident meanwhile (its first
    /// event came before the preload reached it) is skipped. A failed read stops the engine,
    /// like any state read.
    fn preload_step(&mut self) {
        self.last_preload_ms = self.shared.clock.now_ms();
        if self.shared.health.is_failed() {
            self.preload.clear();
            return;
        }
        let at = self.preload.len().saturating_sub(PRELOAD_CHUNK_STATES);
        let chunk: Vec<Id> = self
            .preload
            .drain(at..)
            .filter(|id| !self.residents.contains_key(id))
            .collect();
        if chunk.is_empty() {
            return;
        }
        match load_states(&self.shared, &chunk) {
            Ok(states) => {
                let count = chunk.len() as u64;
                for (id, state) in chunk.into_iter().zip(states) {
                    self.activate(id, state, false);
                }
                EngineMetrics::add(&self.shared.metrics.actors_preloaded, count);
            }
            Err(error) => {
                self.preload.clear();
                self.shared.health.fail_stop("customer states read", &error);
            }
        }
    }

    fn activate(&mut self, id: Id, state: PersistedCustomer, dirty: bool) -> Addr<CustomerActor> {
        let addr = CustomerActor {
            id,
            partition: self.partition,
            state,
            dirty,
            shared: Arc::clone(&self.shared),
        }
        .start();
        self.residents.insert(
            id,
            Resident {
                addr: addr.clone(),
                last_input_ms: self.shared.clock.now_ms(),
                dirty,
                queries: Arc::default(),
            },
        );
        addr
    }

    /// The resident actor of `id`, loading its state if it is not resident.
    fn actor(&mut self, id: Id) -> Result<&mut Resident, StorageError> {
        if !self.residents.contains_key(&id) {
            let state = load_state(&self.shared, id)?;
            self.activate(id, state, false);
        }
        Ok(self
            .residents
            .get_mut(&id)
            .expect("resident: just activated"))
    }

    async fn commit(&mut self, in_flight: InFlight) {
        let outcome = in_flight.durable.await.unwrap_or(Err(StorageError::Closed));
        let appended = match outcome {
            Ok(appended) => appended,
            Err(error) => {
                // Nothing of these records is in the log; the callers got the error already.
                if !matches!(error, StorageError::Overloaded(_)) {
                    self.shared.health.fail_stop("log append", &error);
                }
                let count = in_flight.records.len();
                self.shared.pending[usize::from(self.partition)].applied(count);
                for record in in_flight.records {
                    if let Some(reply) = record.reply {
                        let _ = reply.send(Err(EngineError::Storage(error.clone())));
                    }
                }
                return;
            }
        };
        // The caller may have been acknowledged already. A read it sends next still sees these
        // inputs: this commit was queued before the acknowledgement, and the worker takes queued
        // commits before control messages and dispatches them to the mailboxes reads go to.
        let seqs = appended.seqs;
        let at = Timestamp(in_flight.at_ms);
        let mut batches: FxHashMap<Id, Vec<Sequenced>> = FxHashMap::default();
        let mut order: Vec<Id> = Vec::new();
        let mut not_dispatched = 0;
        for (record, seq) in in_flight.records.into_iter().zip(&seqs) {
            let Some(seq) = *seq else {
                // A duplicate transaction id: accepted, ignored.
                not_dispatched += 1;
                EngineMetrics::add(&self.shared.metrics.events_duplicate, 1);
                continue;
            };
            self.dispatched_seq = self.dispatched_seq.max(seq);
            self.inputs_since_checkpoint += 1;
            match record.entry {
                LogEntry::Customer {
                    customer_id,
                    catalog_version,
                    input,
                } => {
                    let batch = batches.entry(customer_id).or_insert_with(|| {
                        order.push(customer_id);
                        Vec::new()
                    });
                    batch.push(Sequenced {
                        seq,
                        at,
                        catalog_version,
                        input,
                        reply: record.reply,
                    });
                }
                LogEntry::Unmatched { key, event } => {
                    not_dispatched += 1;
                    keep_late(&self.shared, &key, in_flight.at_ms, event, None);
                }
                LogEntry::UnmatchedAt {
                    key,
                    catalog_version,
                    event,
                } => {
                    not_dispatched += 1;
                    keep_late(
                        &self.shared,
                        &key,
                        in_flight.at_ms,
                        event,
                        Some(catalog_version),
                    );
                }
                LogEntry::Catalog(_) => not_dispatched += 1,
            }
        }
        self.shared.pending[usize::from(self.partition)].applied(not_dispatched);
        self.activate_cold(&order).await;
        let now = self.shared.clock.now_ms();
        for id in order {
            let inputs = batches.remove(&id).unwrap_or_default();
            match self.actor(id) {
                Ok(resident) => {
                    // The mailbox outlives this send: only the worker stops actors (eviction),
                    // and it does so between dispatches.
                    resident.addr.do_send(ApplyInputs(inputs));
                    resident.last_input_ms = now;
                    resident.dirty = true;
                }
                Err(error) => {
                    // The records are durable; a restart replays them. Refuse to go on with a
                    // state we cannot read.
                    self.shared.health.fail_stop("customer state read", &error);
                    let count = inputs.len();
                    self.shared.pending[usize::from(self.partition)].applied(count);
                    for input in inputs {
                        if let Some(reply) = input.reply {
                            let _ = reply.send(Err(EngineError::Storage(error.clone())));
                        }
                    }
                }
            }
        }
    }

    /// Makes the customers of `ids` resident, reading the states of those that are not in one
    /// batched read on a blocking thread: meanwhile this thread keeps acknowledging appends.
    /// A customer whose state cannot be read stays cold; dispatch then reports it.
    async fn activate_cold(&mut self, ids: &[Id]) {
        let cold: Vec<Id> = ids
            .iter()
            .filter(|id| !self.residents.contains_key(id))
            .copied()
            .collect();
        if cold.is_empty() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let load = move || {
            let states = load_states(&shared, &cold);
            (cold, states)
        };
        let loaded = match self.shared.placement {
            Placement::Threads => tokio::task::spawn_blocking(load).await,
            Placement::CurrentThread => Ok(load()),
        };
        match loaded {
            Ok((cold, Ok(states))) => {
                for (id, state) in cold.into_iter().zip(states) {
                    self.activate(id, state, false);
                }
            }
            Ok((_, Err(error))) => {
                self.shared.health.fail_stop("customer states read", &error);
            }
            Err(error) => {
                tracing::error!(%error, partition = self.partition, "state loading stopped");
                let error = StorageError::Corrupt {
                    what: "state load",
                    detail: error.to_string(),
                };
                self.shared.health.fail_stop("customer states read", &error);
            }
        }
    }

    async fn control(&mut self, control: Control) {
        match control {
            Control::Query { customer, f, reply } => match self.actor(customer) {
                Ok(resident) => {
                    let addr = resident.addr.clone();
                    let queries = Arc::clone(&resident.queries);
                    queries.fetch_add(1, Relaxed);
                    actix_rt::spawn(async move {
                        let answer = addr.send(Query(f)).await;
                        queries.fetch_sub(1, Relaxed);
                        if let Ok(answer) = answer {
                            let _ = reply.send(answer);
                        }
                    });
                }
                // Dropping the reply answers the caller 503 (the engine has failed).
                Err(error) => self.shared.health.fail_stop("customer state read", &error),
            },
            Control::Checkpoint(reply) => self.start_checkpoint(Some(reply)),
        }
    }

    async fn housekeeping(&mut self) {
        let index = &self.shared.invoice_index[usize::from(self.partition)];
        if let Err(error) = index.flush(&self.shared.store) {
            self.shared.health.fail_stop("invoice index write", &error);
        }
        let wakes = &self.shared.wakes[usize::from(self.partition)];
        if let Err(error) = wakes.flush(&self.shared.store) {
            self.shared.health.fail_stop("alarm index write", &error);
        }
        if !self.shared.health.is_failed() {
            let due = wakes.take_due(self.shared.clock.now_ms(), WAKES_PER_HOUSEKEEPING);
            self.submit_ticks_to(due);
        }
        let settings = &self.shared.settings;
        let due = self.last_checkpoint.elapsed()
            >= Duration::from_millis(settings.checkpoint_interval_ms)
            || self.inputs_since_checkpoint >= settings.checkpoint_every_inputs;
        if due && self.inputs_since_checkpoint > 0 && self.checkpoint.is_none() {
            self.start_checkpoint(None);
        }
        self.evict_idle().await;
        if self.last_tick.elapsed() >= Duration::from_millis(self.shared.settings.tick_interval_ms)
        {
            self.last_tick = Instant::now();
            self.submit_ticks();
        }
    }

    /// Starts a checkpoint of everything dispatched so far (or joins the one in progress).
    fn start_checkpoint(&mut self, reply: Option<oneshot::Sender<Result<u64, EngineError>>>) {
        if self.shared.health.is_failed() {
            // No checkpoint past a storage failure: what is in memory may not be on disk.
            if let Some(reply) = reply {
                let _ = reply.send(Err(EngineError::Unavailable));
            }
            return;
        }
        if let Some(job) = &mut self.checkpoint {
            job.waiting.extend(reply);
            return;
        }
        let force = std::mem::take(&mut self.force_full_snapshot);
        let mut remaining = Vec::new();
        for (id, resident) in &mut self.residents {
            if resident.dirty || force {
                resident.dirty = false;
                remaining.push(*id);
            }
        }
        self.inputs_since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.checkpoint = Some(CheckpointJob {
            seq: self.dispatched_seq,
            force,
            remaining,
            states: 0,
            started: Instant::now(),
            waiting: reply.into_iter().collect(),
        });
    }

    /// Writes the next chunk of states; after the last, records the checkpoint and starts a
    /// trim of what no longer needs replaying.
    async fn checkpoint_step(&mut self) {
        if self.shared.health.is_failed() {
            return self.fail_checkpoint(EngineError::Unavailable);
        }
        let Some(job) = self.checkpoint.as_mut() else {
            return;
        };
        let chunk = job
            .remaining
            .split_off(job.remaining.len().saturating_sub(CHECKPOINT_CHUNK_STATES));
        let force = job.force;
        let asked: Vec<_> = chunk
            .iter()
            .filter_map(|id| {
                let resident = self.residents.get(id)?;
                Some((*id, resident.addr.send(Snapshot { force })))
            })
            .collect();
        let mut puts = Vec::with_capacity(asked.len());
        for (id, answer) in asked {
            match answer.await {
                Ok(Some(bytes)) => puts.push((entry::state_key(id), bytes)),
                Ok(None) => {}
                Err(error) => {
                    return self.fail_checkpoint(EngineError::Internal(format!(
                        "snapshot of {id}: {error}"
                    )));
                }
            }
        }
        // Without an fsync of its own: the synced checkpoint record below follows it in the
        // write-ahead log, and until then these states only shorten a replay.
        if let Err(error) = self.shared.store.meta_write_derived(&puts) {
            return self.fail_checkpoint(EngineError::Storage(error));
        }
        let Some(job) = self.checkpoint.as_mut() else {
            return;
        };
        job.states += puts.len();
        if !job.remaining.is_empty() {
            return;
        }
        let seq = job.seq;
        // The index entries of every input the checkpoint covers are staged by now (an actor
        // stages while applying, before it answers its snapshot): written before the record,
        // since replay will not re-create them.
        let index = &self.shared.invoice_index[usize::from(self.partition)];
        if let Err(error) = index.flush(&self.shared.store) {
            return self.fail_checkpoint(EngineError::Storage(error));
        }
        let wakes = &self.shared.wakes[usize::from(self.partition)];
        if let Err(error) = wakes.flush(&self.shared.store) {
            return self.fail_checkpoint(EngineError::Storage(error));
        }
        if let Err(error) = self.shared.store.put_checkpoint(self.partition, seq, &[]) {
            return self.fail_checkpoint(EngineError::Storage(error));
        }
        let Some(job) = self.checkpoint.take() else {
            return;
        };
        self.trim_in_background(seq);
        let metrics = &self.shared.metrics;
        EngineMetrics::add(&metrics.checkpoints, 1);
        metrics
            .checkpoint_last_micros
            .store(job.started.elapsed().as_micros() as u64, Relaxed);
        metrics
            .checkpoint_states_last
            .store(job.states as u64, Relaxed);
        for reply in job.waiting {
            let _ = reply.send(Ok(seq));
        }
    }

    /// Abandons the checkpoint in progress: the actors it snapshotted think they are clean, so
    /// the next one writes everything.
    fn fail_checkpoint(&mut self, error: EngineError) {
        tracing::error!(%error, partition = self.partition, "checkpoint failed");
        if let EngineError::Storage(storage) = &error {
            self.shared.health.fail_stop("checkpoint write", storage);
        }
        self.force_full_snapshot = true;
        self.inputs_since_checkpoint = self.inputs_since_checkpoint.max(1);
        if let Some(job) = self.checkpoint.take() {
            for reply in job.waiting {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }

    /// Trims the log, delivered outbox entries and expired dedupe keys on a thread of its own
    /// (a dedupe sweep reads the whole column family); skipped while the last one still runs.
    fn trim_in_background(&self, seq: u64) {
        if self.shared.health.is_failed() || self.trimming.swap(true, Relaxed) {
            return;
        }
        let (shared, trimming, partition) = (
            Arc::clone(&self.shared),
            Arc::clone(&self.trimming),
            self.partition,
        );
        let trim = move || {
            let now = shared.clock.now_ms();
            if let Err(error) = shared.store.trim(partition, seq, now) {
                shared.health.fail_stop("trim", &error);
            }
            trimming.store(false, Relaxed);
        };
        if self.shared.placement == Placement::CurrentThread {
            trim();
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("tollgate-trim".to_owned())
            .spawn(trim);
        if let Err(error) = spawned {
            tracing::warn!(%error, "trim thread did not start");
            self.trimming.store(false, Relaxed);
        }
    }

    async fn evict_idle(&mut self) {
        let now = self.shared.clock.now_ms();
        let idle_ms = self.shared.settings.evict_idle_ms;
        let idle: Vec<Id> = self
            .residents
            .iter()
            .filter(|(_, r)| now - r.last_input_ms >= idle_ms && r.queries.load(Relaxed) == 0)
            .map(|(id, _)| *id)
            .take(1_000)
            .collect();
        let mut asked = Vec::with_capacity(idle.len());
        for id in idle {
            if let Some(resident) = self.residents.remove(&id) {
                asked.push((id, resident.addr.send(Evict)));
            }
        }
        let mut ids = Vec::with_capacity(asked.len());
        let mut puts = Vec::with_capacity(asked.len());
        for (id, answer) in asked {
            match answer.await {
                Ok(Some(bytes)) => {
                    ids.push(id);
                    puts.push((entry::state_key(id), bytes));
                }
                Ok(None) | Err(_) => {
                    tracing::error!(customer = %id, "eviction lost a state; it will be replayed");
                    self.force_full_snapshot = true;
                }
            }
        }
        // One write for all, without an fsync of its own: the next checkpoint record, which is
        // synced, follows it in the write-ahead log; until then the log still replays them.
        if let Err(error) = self.shared.store.meta_write_derived(&puts) {
            self.shared.health.fail_stop("eviction write", &error);
            for (id, (_, bytes)) in ids.into_iter().zip(puts) {
                match storage::decode(entry::STATE_VERSION, &bytes) {
                    Ok(state) => {
                        self.activate(id, state, true);
                    }
                    Err(_) => self.force_full_snapshot = true,
                }
            }
            return;
        }
        EngineMetrics::add(&self.shared.metrics.actors_evicted, puts.len() as u64);
    }

    /// Appends a `Tick` for every customer of this partition, so time-driven rules (period
    /// close, segment expiry, contracts that start later) are evaluated even without usage.
    fn submit_ticks(&self) {
        let partition = self.partition;
        let customers: Vec<Id> = self
            .shared
            .registry
            .customers()
            .into_iter()
            .filter(|id| self.shared.partition_of(*id) == partition)
            .collect();
        self.submit_ticks_to(customers);
    }

    /// Appends a `Tick` for each of `customers` (of this partition), in chunks.
    fn submit_ticks_to(&self, customers: Vec<Id>) {
        let partition = self.partition;
        let shared = Arc::clone(&self.shared);
        if customers.is_empty() {
            return;
        }
        let Some(handle) = shared.handle(partition) else {
            return;
        };
        actix_rt::spawn(async move {
            let version = shared.catalog().version();
            for chunk in customers.chunks(1_000) {
                let records: Vec<PendingRecord> = chunk
                    .iter()
                    .map(|id| PendingRecord {
                        dedupe_key: None,
                        entry: LogEntry::Customer {
                            customer_id: *id,
                            catalog_version: version,
                            input: Input::Tick,
                        },
                        reply: None,
                    })
                    .collect();
                shared.pending[usize::from(partition)].admit(records.len(), shared.clock.now_ms());
                let (ack, answer) = oneshot::channel();
                if handle
                    .submit
                    .send(Submission { records, ack })
                    .await
                    .is_err()
                {
                    return;
                }
                let _ = answer.await;
            }
        });
    }
}

/// Keeps usage for an unknown key in `meta` (34 days), with the catalog version it was accepted
/// at, or hands it on if the key resolves now.
pub fn keep_late(
    shared: &Shared,
    key: &str,
    at_ms: i64,
    event: crate::domain::usage::UsageEvent,
    catalog_version: Option<u64>,
) {
    let late_key = entry::late_key(key, &event.transaction_id);
    let late = LateEvent {
        at_ms,
        event,
        catalog_version,
    };
    let written = entry::encode_late(&late)
        .and_then(|value| shared.store.meta_write_derived(&[(late_key, value)]));
    if let Err(error) = written {
        // The event is in the log: recovery keeps it again.
        shared.health.fail_stop("late event write", &error);
        return;
    }
    EngineMetrics::add(&shared.metrics.events_late, 1);
    // The customer may have appeared between ingest and now: check after writing, so either
    // this check or the release triggered by the registration sees the event.
    if shared.registry.resolve(key).is_some() {
        shared.sinks.late_release.send(vec![key.to_owned()]);
    }
}

/// Rebuilds a partition's resident states from its checkpoint and log suffix (before serving).
///
/// # Errors
/// Storage or decode errors.
/// What recovery of one partition yields: the states it touched, the last log seq, and how
/// many records it replayed.
pub type Recovered = (FxHashMap<Id, PersistedCustomer>, u64, u64);

pub fn recover(shared: &Shared, partition: u16) -> Result<Recovered, EngineError> {
    let from = shared
        .store
        .checkpoint(partition)?
        .map(|(seq, _)| seq)
        .unwrap_or(0);
    let mut states: FxHashMap<Id, PersistedCustomer> = FxHashMap::default();
    let mut last = from;
    let mut pending_effects = VecDeque::new();
    let replayed = shared.store.replay(partition, from, |seq, at_ms, bytes| {
        last = seq;
        let entry = entry::decode_log_entry(bytes)?;
        match entry {
            LogEntry::Customer {
                customer_id,
                catalog_version,
                input,
            } => {
                let state = match states.entry(customer_id) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(load_state(shared, customer_id)?)
                    }
                };
                let logged = Logged {
                    partition,
                    seq,
                    customer_id,
                    at: Timestamp(at_ms),
                    catalog_version,
                    input: &input,
                };
                let mut quarantined = QuarantineWrites::default();
                let result = apply_logged(shared, state, logged, Pass::Recovery, &mut quarantined);
                persist_quarantined(shared, &quarantined)?;
                if let Ok(applied) = result {
                    let moves = WorkflowMoves::of(&applied, customer_id, &state.customer);
                    if !applied.effects.is_empty() || !moves.is_empty() {
                        pending_effects.push_back(((partition, seq), applied.effects, moves));
                    }
                }
                // Write effects in bounded groups to keep memory flat on long replays.
                while pending_effects.len() > 1_024 {
                    let (cause, effects, moves) = pending_effects.pop_front().expect("non-empty");
                    persist_effects(shared, cause, &effects, &moves)?;
                }
            }
            LogEntry::Unmatched { key, event } => keep_late(shared, &key, at_ms, event, None),
            LogEntry::UnmatchedAt {
                key,
                catalog_version,
                event,
            } => keep_late(shared, &key, at_ms, event, Some(catalog_version)),
            LogEntry::Catalog(_) => {}
        }
        Ok(())
    })?;
    for (cause, effects, moves) in pending_effects {
        persist_effects(shared, cause, &effects, &moves)?;
    }
    shared.invoice_index[usize::from(partition)].flush(&shared.store)?;
    Ok((states, last, replayed))
}

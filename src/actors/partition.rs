//! A partition: its log, its resident customer actors, its checkpoints.
//!
//! Two tasks run on the partition's own arbiter. The *submitter* turns submissions into log
//! appends in arrival order (storage group-commits appends from all partitions together). The
//! *worker* awaits those appends in the same order and dispatches each durable record to its
//! customer's actor, so every customer sees its inputs in log order, live exactly as in replay.
//! The worker also activates actors lazily, evicts idle ones, writes checkpoints and trims the
//! log, and answers reads by forwarding them to the right actor.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};

use super::customer::{
    ApplyInputs, CustomerActor, Evict, Query, QueryFn, Sequenced, Snapshot, apply_logged,
    load_state, persist_effects,
};
use super::engine::EngineError;
use super::entry::{self, LateEvent, LogEntry, META_VERSION, PersistedCustomer};
use super::metrics::EngineMetrics;
use super::shared::Shared;
use crate::domain::customer::{Applied, Input};
use crate::domain::{Id, Rejection, Timestamp};
use crate::storage::{self, AppendBatch, Appended, LogRecord, StorageError};

/// One record to append.
pub struct PendingRecord {
    pub dedupe_key: Option<Vec<u8>>,
    pub entry: LogEntry,
    /// Who waits for the domain's verdict on this input (control inputs).
    pub reply: Option<oneshot::Sender<Result<Applied, Rejection>>>,
}

/// Records for one partition, acknowledged once durable.
pub struct Submission {
    pub records: Vec<PendingRecord>,
    pub ack: oneshot::Sender<Result<Appended, EngineError>>,
}

pub enum Control {
    Query {
        customer: Id,
        f: QueryFn,
        reply: oneshot::Sender<Box<dyn std::any::Any + Send>>,
    },
    /// Write a checkpoint now (tests, shutdown); answers when done.
    Checkpoint(oneshot::Sender<Result<u64, EngineError>>),
}

type AppendFuture = Pin<Box<dyn Future<Output = Result<Appended, StorageError>> + Send>>;

struct InFlight {
    append: AppendFuture,
    at_ms: i64,
    records: Vec<PendingRecord>,
    ack: oneshot::Sender<Result<Appended, EngineError>>,
}

/// The handle the engine keeps for a partition.
#[derive(Clone)]
pub struct PartitionHandle {
    pub submit: mpsc::Sender<Submission>,
    pub control: mpsc::UnboundedSender<Control>,
}

struct Resident {
    addr: Addr<CustomerActor>,
    last_input_ms: i64,
    dirty: bool,
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
}

/// Starts a partition on the current arbiter with the states recovery produced.
pub fn start(
    partition: u16,
    shared: Arc<Shared>,
    recovered: FxHashMap<Id, PersistedCustomer>,
    last_seq: u64,
    submit_capacity: usize,
) -> PartitionHandle {
    let (submit_tx, mut submit_rx) = mpsc::channel::<Submission>(submit_capacity);
    let (control_tx, mut control_rx) = mpsc::unbounded_channel::<Control>();
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
            let in_flight = InFlight {
                append: Box::pin(append),
                at_ms,
                records: submission.records,
                ack: submission.ack,
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
    };
    for (id, state) in recovered {
        worker.activate(id, state, true);
    }
    actix_rt::spawn(async move {
        let mut timer = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                biased;
                next = ordered_rx.recv() => match next {
                    Some(in_flight) => worker.commit(in_flight).await,
                    None => break,
                },
                Some(control) = control_rx.recv() => worker.control(control).await,
                _ = timer.tick() => worker.housekeeping().await,
            }
        }
    });
    PartitionHandle {
        submit: submit_tx,
        control: control_tx,
    }
}

impl Worker {
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
            },
        );
        addr
    }

    /// The resident actor of `id`, loading its state if it is not resident.
    fn actor(&mut self, id: Id) -> Result<Addr<CustomerActor>, StorageError> {
        if let Some(resident) = self.residents.get(&id) {
            return Ok(resident.addr.clone());
        }
        let state = load_state(&self.shared, id)?;
        Ok(self.activate(id, state, false))
    }

    async fn commit(&mut self, in_flight: InFlight) {
        let appended = match in_flight.append.await {
            Ok(appended) => appended,
            Err(error) => {
                tracing::error!(%error, partition = self.partition, "append failed");
                let count = in_flight.records.len();
                self.shared.pending[usize::from(self.partition)].fetch_sub(count, Relaxed);
                for record in in_flight.records {
                    if let Some(reply) = record.reply {
                        let _ = reply
                            .send(Err(Rejection::Unsupported("storage failure; retry".into())));
                    }
                }
                let _ = in_flight.ack.send(Err(EngineError::Storage(error)));
                return;
            }
        };
        // Durable: acknowledge now. Applying follows below; a read sent after this ack reaches
        // the customer's mailbox after the inputs dispatched here (the worker handles control
        // messages only between commits), so readers still see their own writes.
        let seqs = appended.seqs.clone();
        let _ = in_flight.ack.send(Ok(appended));
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
                    keep_late(&self.shared, &key, in_flight.at_ms, event);
                }
                LogEntry::Catalog(_) => not_dispatched += 1,
            }
        }
        self.shared.pending[usize::from(self.partition)].fetch_sub(not_dispatched, Relaxed);
        let now = self.shared.clock.now_ms();
        for id in order {
            let inputs = batches.remove(&id).unwrap_or_default();
            match self.actor(id) {
                Ok(addr) => {
                    // The mailbox outlives this send: only the worker stops actors (eviction),
                    // and it does so between dispatches.
                    addr.do_send(ApplyInputs(inputs));
                    if let Some(resident) = self.residents.get_mut(&id) {
                        resident.last_input_ms = now;
                        resident.dirty = true;
                    }
                }
                Err(error) => {
                    // The records are durable; a restart replays them. Refuse to go on with a
                    // state we cannot read.
                    tracing::error!(%error, customer = %id, "customer state unreadable");
                    for input in inputs {
                        if let Some(reply) = input.reply {
                            let _ = reply
                                .send(Err(Rejection::Unsupported("storage failure; retry".into())));
                        }
                    }
                }
            }
        }
    }

    async fn control(&mut self, control: Control) {
        match control {
            Control::Query { customer, f, reply } => match self.actor(customer) {
                Ok(addr) => {
                    actix_rt::spawn(async move {
                        if let Ok(answer) = addr.send(Query(f)).await {
                            let _ = reply.send(answer);
                        }
                    });
                }
                Err(error) => tracing::error!(%error, %customer, "customer state unreadable"),
            },
            Control::Checkpoint(reply) => {
                let result = self.checkpoint().await;
                let _ = reply.send(result);
            }
        }
    }

    async fn housekeeping(&mut self) {
        let settings = &self.shared.settings;
        let due = self.last_checkpoint.elapsed()
            >= Duration::from_millis(settings.checkpoint_interval_ms)
            || self.inputs_since_checkpoint >= settings.checkpoint_every_inputs;
        if due && self.inputs_since_checkpoint > 0 {
            if let Err(error) = self.checkpoint().await {
                tracing::error!(%error, partition = self.partition, "checkpoint failed");
            }
        }
        self.evict_idle().await;
        if self.last_tick.elapsed() >= Duration::from_millis(self.shared.settings.tick_interval_ms)
        {
            self.last_tick = Instant::now();
            self.submit_ticks();
        }
    }

    /// Writes the state of every changed resident and records the log position they cover,
    /// then trims what no longer needs replaying.
    async fn checkpoint(&mut self) -> Result<u64, EngineError> {
        let started = Instant::now();
        let seq = self.dispatched_seq;
        let force = std::mem::take(&mut self.force_full_snapshot);
        let mut waiting = Vec::new();
        for (id, resident) in &mut self.residents {
            if resident.dirty || force {
                resident.dirty = false;
                waiting.push((*id, resident.addr.send(Snapshot { force })));
            }
        }
        let mut puts = Vec::with_capacity(waiting.len());
        for (id, answer) in waiting {
            match answer.await {
                Ok(Some(bytes)) => puts.push((entry::state_key(id), bytes)),
                Ok(None) => {}
                Err(error) => {
                    self.force_full_snapshot = true;
                    return Err(EngineError::Internal(format!("snapshot of {id}: {error}")));
                }
            }
        }
        let states = puts.len();
        let written = self
            .shared
            .store
            .meta_write_batch(&puts, &[])
            .and_then(|()| self.shared.store.put_checkpoint(self.partition, seq, &[]));
        if let Err(error) = written {
            // Those actors think they are clean: write everything next time.
            self.force_full_snapshot = true;
            return Err(EngineError::Storage(error));
        }
        self.inputs_since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        let now = self.shared.clock.now_ms();
        if let Err(error) = self.shared.store.trim(self.partition, seq, now) {
            tracing::warn!(%error, partition = self.partition, "trim failed");
        }
        let metrics = &self.shared.metrics;
        EngineMetrics::add(&metrics.checkpoints, 1);
        metrics
            .checkpoint_last_micros
            .store(started.elapsed().as_micros() as u64, Relaxed);
        metrics.checkpoint_states_last.store(states as u64, Relaxed);
        Ok(seq)
    }

    async fn evict_idle(&mut self) {
        let now = self.shared.clock.now_ms();
        let idle_ms = self.shared.settings.evict_idle_ms;
        let idle: Vec<Id> = self
            .residents
            .iter()
            .filter(|(_, r)| now - r.last_input_ms >= idle_ms)
            .map(|(id, _)| *id)
            .take(1_000)
            .collect();
        for id in idle {
            let Some(resident) = self.residents.remove(&id) else {
                continue;
            };
            match resident.addr.send(Evict).await {
                Ok(Some(bytes)) => {
                    if let Err(error) = self
                        .shared
                        .store
                        .meta_write_batch(&[(entry::state_key(id), bytes.clone())], &[])
                    {
                        tracing::error!(%error, customer = %id, "eviction write failed; keeping the actor");
                        if let Ok(state) = storage::decode(entry::STATE_VERSION, &bytes) {
                            self.activate(id, state, true);
                        }
                        continue;
                    }
                    EngineMetrics::add(&self.shared.metrics.actors_evicted, 1);
                }
                Ok(None) | Err(_) => {
                    tracing::error!(customer = %id, "eviction lost a state; it will be replayed");
                    self.force_full_snapshot = true;
                }
            }
        }
    }

    /// Appends a `Tick` for every customer of this partition, so time-driven rules (period
    /// close, segment expiry, contracts that start later) are evaluated even without usage.
    fn submit_ticks(&self) {
        let partition = self.partition;
        let shared = Arc::clone(&self.shared);
        let customers: Vec<Id> = self
            .shared
            .registry
            .customers()
            .into_iter()
            .filter(|id| shared.partition_of(*id) == partition)
            .collect();
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
                shared.pending[usize::from(partition)].fetch_add(records.len(), Relaxed);
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

/// Keeps usage for an unknown key in `meta` (34 days), or hands it on if the key resolves now.
pub fn keep_late(shared: &Shared, key: &str, at_ms: i64, event: crate::domain::usage::UsageEvent) {
    let late_key = entry::late_key(key, &event.transaction_id);
    let value = match storage::encode(META_VERSION, &LateEvent { at_ms, event }) {
        Ok(value) => value,
        Err(error) => {
            tracing::error!(%error, "late event encoding failed");
            return;
        }
    };
    if let Err(error) = shared.store.meta_write_derived(&[(late_key, value)]) {
        tracing::error!(%error, "late event write failed; replay will retry");
        return;
    }
    EngineMetrics::add(&shared.metrics.events_late, 1);
    // The customer may have appeared between ingest and now: check after writing, so either
    // this check or the release triggered by the registration sees the event.
    if shared.registry.resolve(key).is_some() {
        if let Some(sink) = shared.late_release.get() {
            let _ = sink.send(super::shared::LateRelease {
                keys: vec![key.to_owned()],
            });
        }
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
        let entry: LogEntry = storage::decode(entry::LOG_VERSION, bytes)?;
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
                if let Ok(applied) = apply_logged(
                    shared,
                    state,
                    seq,
                    Timestamp(at_ms),
                    catalog_version,
                    &input,
                    false,
                ) {
                    if !applied.effects.is_empty() {
                        pending_effects.push_back(((partition, seq), applied.effects));
                    }
                }
                // Write effects in bounded groups to keep memory flat on long replays.
                while pending_effects.len() > 1_024 {
                    let (cause, effects) = pending_effects.pop_front().expect("non-empty");
                    persist_effects(shared, cause, &effects)?;
                }
            }
            LogEntry::Unmatched { key, event } => keep_late(shared, &key, at_ms, event),
            LogEntry::Catalog(_) => {}
        }
        Ok(())
    })?;
    for (cause, effects) in pending_effects {
        persist_effects(shared, cause, &effects)?;
    }
    Ok((states, last, replayed))
}

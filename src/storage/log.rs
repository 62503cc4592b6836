//! Group commit: the one writer that appends to the `log` of every partition and writes the
//! `dedupe` column family. It owns the per-partition seq counters and the in-memory recent-key
//! map, so the dedupe check and the seq assignment form one ordered step and two concurrent
//! copies of one event can never both pass. Nothing else may write `log` entries or `dedupe`
//! entries that are not expired (the trim sweep deletes expired ones under the dedupe lock).
//!
//! In production the writer is an OS thread: callers send an [`AppendBatch`] with a reply
//! channel; the thread takes the first request, drains whatever else is queued (bounded by
//! [`GROUP_RECORDS_MAX`] and [`GROUP_REQUESTS_MAX`]), decides every record of the group in
//! order, persists the group in one write batch (one fsync in `Fsync` mode) and only then
//! answers everyone. A failed write answers the error to every caller of the group and leaves
//! seqs and the recent map as they were, so the next group reuses the same seqs and nothing
//! acknowledged is ever skipped.
//!
//! The inline writer (simulated disk, deterministic runs) is the same writer behind a mutex:
//! each append is a group of one, decided and persisted by its caller before `append` returns.
//! No thread, no queue, so the order of appends is the order of the calls.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::oneshot;

use super::backend::{Backend, Batch, Cf};
use super::dedupe::RecentKeys;
use super::keys::{
    DEDUPE_VALUE_LEN, DedupeHit, LOG_KEY_LEN, check_run, encode_run, encoded_run_len, log_key,
};
use super::{AppendBatch, Appended, Durability, Shared, StorageError};

/// Records per group. Bounds the size of one write batch (and so the latency the first caller of
/// a group pays for the others); 4096 records of ~200 bytes is ~1 MB, a few ms of writing.
pub(crate) const GROUP_RECORDS_MAX: usize = 4096;
/// Requests per group, for the same reason when requests are small.
pub(crate) const GROUP_REQUESTS_MAX: usize = 1024;
/// Requests waiting for the writer. Beyond this `Store::append` answers
/// [`StorageError::Overloaded`] instead of queueing without bound: a full queue is the disk
/// telling the edge to slow down (the HTTP layer turns it into 429).
pub(crate) const QUEUE_REQUESTS_MAX: usize = 65_536;

const _: () = assert!(GROUP_REQUESTS_MAX <= QUEUE_REQUESTS_MAX);

pub(crate) type Reply = oneshot::Sender<Result<Appended, StorageError>>;

pub(crate) struct Request {
    pub batch: AppendBatch,
    pub reply: Reply,
}

/// What the writer thread needs to know from `StoreOptions`.
pub(crate) struct WriterConfig {
    pub durability: Durability,
    pub dedupe_window_ms: i64,
    pub dedupe_memory_entries: usize,
}

/// Handle to the writer. For the thread: dropping it closes the queue; the thread answers
/// everything already queued, then exits, and the drop waits for that so the database can be
/// reopened right after the last `Store` is gone.
pub(crate) struct GroupCommit {
    mode: Mode,
}

enum Mode {
    Thread {
        tx: Option<Sender<Request>>,
        thread: Option<JoinHandle<()>>,
    },
    /// Held by the appending caller for the whole group.
    Inline(Mutex<Writer>),
}

impl GroupCommit {
    /// Starts the writer thread. `seqs` holds the last seq of every partition that has one.
    pub(crate) fn start(
        backend: Arc<dyn Backend>,
        shared: Arc<Shared>,
        config: WriterConfig,
        seqs: FxHashMap<u16, u64>,
    ) -> Result<GroupCommit, StorageError> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_REQUESTS_MAX);
        let thread = std::thread::Builder::new()
            .name("tollgate-log".to_owned())
            .spawn(move || {
                backend.prepare_writer_thread();
                Writer::new(backend, shared, &config, seqs, true).run(&rx);
            })
            .map_err(|e| StorageError::Spawn(Arc::new(e)))?;
        Ok(GroupCommit {
            mode: Mode::Thread {
                tx: Some(tx),
                thread: Some(thread),
            },
        })
    }

    /// A writer run by the callers of `append`, one request per group, without a thread.
    pub(crate) fn inline(
        backend: Arc<dyn Backend>,
        shared: Arc<Shared>,
        config: WriterConfig,
        seqs: FxHashMap<u16, u64>,
    ) -> GroupCommit {
        GroupCommit {
            mode: Mode::Inline(Mutex::new(Writer::new(
                backend, shared, &config, seqs, false,
            ))),
        }
    }

    /// Queues (or, inline, performs) an append; the future answers it. See `Store::append`.
    pub(crate) fn append(
        &self,
        batch: AppendBatch,
    ) -> impl Future<Output = Result<Appended, StorageError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let request = Request { batch, reply };
        let queued = match &self.mode {
            Mode::Thread { tx, .. } => submit(tx.as_ref(), request),
            Mode::Inline(writer) => {
                lock(writer).answer_group(vec![request]);
                Ok(())
            }
        };
        async move {
            queued?;
            answer.await.map_err(|_| StorageError::Closed)?
        }
    }

    /// Performs an append, waiting for room in the queue and for the answer.
    pub(crate) fn append_blocking(&self, batch: AppendBatch) -> Result<Appended, StorageError> {
        let (reply, mut answer) = oneshot::channel();
        let request = Request { batch, reply };
        match &self.mode {
            Mode::Thread { tx, .. } => {
                let tx = tx.as_ref().ok_or(StorageError::Closed)?;
                tx.send(request).map_err(|_| StorageError::Closed)?;
                answer.blocking_recv().map_err(|_| StorageError::Closed)?
            }
            Mode::Inline(writer) => {
                lock(writer).answer_group(vec![request]);
                // Already answered: no waiting, so this works inside an async runtime too.
                answer.try_recv().map_err(|_| StorageError::Closed)?
            }
        }
    }
}

/// Queues a request for the writer thread without blocking.
fn submit(tx: Option<&Sender<Request>>, request: Request) -> Result<(), StorageError> {
    let tx = tx.ok_or(StorageError::Closed)?;
    tx.try_send(request).map_err(|e| match e {
        TrySendError::Full(_) => StorageError::Overloaded(QUEUE_REQUESTS_MAX),
        TrySendError::Disconnected(_) => StorageError::Closed,
    })
}

fn lock(writer: &Mutex<Writer>) -> std::sync::MutexGuard<'_, Writer> {
    // A panic inside a group leaves seqs and the recent map as they were before it (they are
    // only updated after a successful write), so the writer is still consistent.
    writer.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        if let Mode::Thread { tx, thread } = &mut self.mode {
            drop(tx.take());
            if let Some(thread) = thread.take()
                && thread.join().is_err()
            {
                tracing::error!("storage writer thread panicked");
            }
        }
    }
}

/// State owned by the writer (the thread, or whoever holds the inline writer's lock).
struct Writer {
    backend: Arc<dyn Backend>,
    shared: Arc<Shared>,
    /// Whether each group's write fsyncs (`Durability::Fsync`). The WAL is written either way.
    fsync: bool,
    /// Whether to measure `last_persist_micros` (the wall clock); the inline writer does not,
    /// so a simulated run's counters are deterministic.
    timed: bool,
    dedupe_window_ms: i64,
    /// Last persisted seq per partition; absent means 0.
    seqs: FxHashMap<u16, u64>,
    recent: RecentKeys,
}

/// What RocksDB holds for a dedupe key that missed the recent map.
enum Stored {
    Absent,
    Hit(DedupeHit),
    Corrupt(StorageError),
}

/// One log record: a request's accepted records, which have consecutive seqs, under the key of
/// the first. Its value is encoded straight into the group's batch.
struct LogPut<'g> {
    key: [u8; LOG_KEY_LEN],
    at_ms: i64,
    payloads: Vec<&'g [u8]>,
}

/// A group's decisions, ready to be persisted.
struct Decided<'g> {
    batch: Batch,
    /// One outcome per request of the group, in order.
    outcomes: Vec<Result<Appended, StorageError>>,
    /// Last seq per partition after this group.
    seqs: FxHashMap<u16, u64>,
    accepted_keys: Vec<(&'g [u8], DedupeHit)>,
    accepted: u64,
    duplicates: u64,
}

impl Writer {
    fn new(
        backend: Arc<dyn Backend>,
        shared: Arc<Shared>,
        config: &WriterConfig,
        seqs: FxHashMap<u16, u64>,
        timed: bool,
    ) -> Writer {
        Writer {
            backend,
            shared,
            fsync: config.durability == Durability::Fsync,
            timed,
            dedupe_window_ms: config.dedupe_window_ms,
            seqs,
            recent: RecentKeys::new(config.dedupe_memory_entries),
        }
    }

    fn run(&mut self, rx: &Receiver<Request>) {
        let mut group = Vec::with_capacity(GROUP_REQUESTS_MAX);
        // `recv` keeps returning queued requests after the last sender is gone and fails only
        // once the queue is empty, so shutdown drains.
        while let Ok(first) = rx.recv() {
            let mut records = first.batch.records.len();
            group.push(first);
            while group.len() < GROUP_REQUESTS_MAX && records < GROUP_RECORDS_MAX {
                match rx.try_recv() {
                    Ok(next) => {
                        records += next.batch.records.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            group = self.answer_group(group);
        }
    }

    /// Persists `group` and answers each of its requests; returns the emptied vector for reuse.
    fn answer_group(&mut self, mut group: Vec<Request>) -> Vec<Request> {
        let outcomes = self.persist_group(&group).unwrap_or_else(|e| {
            tracing::error!(error = %e, requests = group.len(), "log group write failed");
            self.shared.stats.write_errors.fetch_add(1, Relaxed);
            vec![Err(e); group.len()]
        });
        for (request, outcome) in group.drain(..).zip(outcomes) {
            // A caller that stopped waiting (a dropped future) still had its records
            // persisted; there is no one left to tell, which is fine.
            let _ = request.reply.send(outcome);
        }
        group
    }

    /// Decides and persists one group. `Err` is a group-wide failure (nothing was written);
    /// a per-request failure is an `Err` inside the returned outcomes.
    fn persist_group(
        &mut self,
        group: &[Request],
    ) -> Result<Vec<Result<Appended, StorageError>>, StorageError> {
        // Hold the dedupe lock from the first read to the write, so the trim sweep cannot delete
        // an entry between our decision and its persistence.
        let shared = Arc::clone(&self.shared);
        let _dedupe_writer = shared
            .dedupe_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let stored = self.read_stored_keys(group)?;
        let decided = self.decide(group, &stored)?;

        let stats = &self.shared.stats;
        let group_records = decided.accepted + decided.duplicates;
        if !decided.batch.is_empty() {
            let started = self.timed.then(Instant::now);
            self.shared.check(super::faults::StorageOp::Append)?;
            if let Err(error) = self.backend.write(decided.batch, self.fsync) {
                // A failed write may still have reached the write-ahead log (an fsync that
                // failed after the write): its seqs must never be given to other records, so
                // nothing more is written in this process; recovery reads what survived.
                self.shared.fenced.store(true, Relaxed);
                return Err(error);
            }
            if let Some(started) = started {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                stats.last_persist_micros.store(micros, Relaxed);
                stats.persist.observe_micros(micros);
            }
            stats.groups.fetch_add(1, Relaxed);
            if self.fsync {
                stats.fsyncs.fetch_add(1, Relaxed);
            }
        }

        // Persisted: from here on the decisions are facts.
        {
            let mut last_seqs = self
                .shared
                .last_seqs
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for (&partition, &seq) in &decided.seqs {
                self.seqs.insert(partition, seq);
                last_seqs.insert(partition, seq);
            }
        }
        for (key, hit) in decided.accepted_keys {
            self.recent.insert(key, hit);
        }
        let answered = decided.outcomes.iter().filter(|o| o.is_ok()).count();
        stats.appends.fetch_add(answered as u64, Relaxed);
        stats.records.fetch_add(decided.accepted, Relaxed);
        stats.duplicates.fetch_add(decided.duplicates, Relaxed);
        stats.group_records_last.store(group_records, Relaxed);
        stats.group_records_max.fetch_max(group_records, Relaxed);
        stats
            .group_requests_max
            .fetch_max(group.len() as u64, Relaxed);
        Ok(decided.outcomes)
    }

    /// Reads, in one batched multi-get, every dedupe key of the group that the recent map does
    /// not know. The bloom filter on `dedupe` makes the common case (a new key) cheap.
    fn read_stored_keys<'g>(
        &self,
        group: &'g [Request],
    ) -> Result<FxHashMap<&'g [u8], Stored>, StorageError> {
        let records = group_records(group);
        let mut wanted: Vec<&'g [u8]> = Vec::with_capacity(records);
        let mut stored: FxHashMap<&'g [u8], Stored> =
            FxHashMap::with_capacity_and_hasher(records, Default::default());
        for request in group {
            for record in &request.batch.records {
                if let Some(key) = record.dedupe_key.as_deref()
                    && self.recent.get(key).is_none()
                    && !stored.contains_key(key)
                {
                    stored.insert(key, Stored::Absent);
                    wanted.push(key);
                }
            }
        }
        if wanted.is_empty() {
            return Ok(stored);
        }
        // A read error is a disk problem, not a property of one request: fail the group.
        let values = self.backend.multi_get(Cf::Dedupe, &wanted, false)?;
        for (key, value) in wanted.iter().zip(values) {
            if let Some(value) = value {
                let entry = match DedupeHit::decode(&value) {
                    Ok(hit) => Stored::Hit(hit),
                    Err(e) => Stored::Corrupt(e),
                };
                stored.insert(key, entry);
            }
        }
        Ok(stored)
    }

    /// Decides every record of the group in order: duplicate or next seq of its partition.
    fn decide<'g>(
        &self,
        group: &'g [Request],
        stored: &FxHashMap<&'g [u8], Stored>,
    ) -> Result<Decided<'g>, StorageError> {
        // Puts are collected, then written in key order per column family: consecutive skiplist
        // inserts then start from the previous insert's position instead of the top. Random
        // dedupe keys and interleaved partitions otherwise cost a full memtable search (a cache
        // miss per level) each, which profiling showed as most of this thread's time.
        let records = group_records(group);
        let mut log_puts: Vec<LogPut<'g>> = Vec::with_capacity(group.len());
        let mut dedupe_puts: Vec<(&'g [u8], [u8; DEDUPE_VALUE_LEN])> = Vec::with_capacity(records);
        let mut decided = Decided {
            batch: Batch::default(),
            outcomes: Vec::with_capacity(group.len()),
            seqs: FxHashMap::default(),
            accepted_keys: Vec::with_capacity(records),
            accepted: 0,
            duplicates: 0,
        };
        // Keys accepted earlier in this group; they are not in RocksDB or the recent map yet.
        let mut group_seen: FxHashSet<&'g [u8]> =
            FxHashSet::with_capacity_and_hasher(records, Default::default());

        for request in group {
            let batch = &request.batch;
            // A corrupt stored entry makes the request's dedupe decision unknowable: refuse the
            // whole request (an input applies whole or not at all) and leave the others alone.
            let corrupt = batch.records.iter().find_map(|r| {
                match r.dedupe_key.as_deref().and_then(|k| stored.get(k)) {
                    Some(Stored::Corrupt(e)) => Some(e.clone()),
                    _ => None,
                }
            });
            let lens = batch.records.iter().map(|r| r.payload.len());
            if let Some(e) = corrupt.or_else(|| check_run(lens).err()) {
                tracing::error!(error = %e, partition = batch.partition, "append refused");
                decided.outcomes.push(Err(e));
                continue;
            }

            let partition = batch.partition;
            let mut seq = decided
                .seqs
                .get(&partition)
                .or_else(|| self.seqs.get(&partition))
                .copied()
                .unwrap_or(0);
            // First acceptances before this instant have expired and count as not seen.
            let cutoff_ms = batch.at_ms.saturating_sub(self.dedupe_window_ms);
            let mut seqs = Vec::with_capacity(batch.records.len());
            let mut accepted: Vec<&'g [u8]> = Vec::with_capacity(batch.records.len());
            let mut first_seq = None;
            for record in &batch.records {
                let key = record.dedupe_key.as_deref();
                if let Some(key) = key {
                    let skipped = crate::defects::active(crate::defects::Defect::DedupeSkip)
                        && key.first().is_some_and(|b| b % 8 == 0);
                    let seen = !skipped
                        && (group_seen.contains(key)
                            || match self.recent.get(key) {
                                // The recent map is never older than RocksDB, so it decides alone.
                                Some(hit) => hit.at_ms >= cutoff_ms,
                                None => {
                                    matches!(stored.get(key), Some(Stored::Hit(hit)) if hit.at_ms >= cutoff_ms)
                                }
                            });
                    if seen {
                        seqs.push(None);
                        decided.duplicates += 1;
                        continue;
                    }
                }
                seq = seq.checked_add(1).ok_or(StorageError::Corrupt {
                    what: "log seq",
                    detail: format!("partition {partition} exhausted u64 seqs"),
                })?;
                first_seq.get_or_insert(seq);
                accepted.push(&record.payload);
                if let Some(key) = key {
                    let hit = DedupeHit {
                        partition,
                        seq,
                        at_ms: batch.at_ms,
                    };
                    // Overwrites an expired entry, so the window restarts from this acceptance.
                    dedupe_puts.push((key, hit.encode()));
                    group_seen.insert(key);
                    decided.accepted_keys.push((key, hit));
                }
                seqs.push(Some(seq));
                decided.accepted += 1;
            }
            if let Some(first) = first_seq {
                log_puts.push(LogPut {
                    key: log_key(partition, first),
                    at_ms: batch.at_ms,
                    payloads: accepted,
                });
            }
            decided.seqs.insert(partition, seq);
            decided.outcomes.push(Ok(Appended { seqs }));
        }
        log_puts.sort_unstable_by_key(|put| put.key);
        dedupe_puts.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let bytes = log_puts
            .iter()
            .map(|put| put.key.len() + encoded_run_len(&put.payloads))
            .chain(
                dedupe_puts
                    .iter()
                    .map(|(key, value)| key.len() + value.len()),
            )
            .sum();
        decided.batch = Batch::with_capacity(log_puts.len() + dedupe_puts.len(), bytes);
        for put in &log_puts {
            decided.batch.put_with(Cf::Log, &put.key, |out| {
                encode_run(out, put.at_ms, &put.payloads);
            });
        }
        for (key, value) in &dedupe_puts {
            decided.batch.put(Cf::Dedupe, key, value);
        }
        Ok(decided)
    }
}

fn group_records(group: &[Request]) -> usize {
    group.iter().map(|r| r.batch.records.len()).sum()
}

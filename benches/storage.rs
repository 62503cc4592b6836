//! Group-commit throughput: N threads each appending 100-record batches with unique dedupe keys,
//! in `wal` and `fsync` durability, reported as events (records) per second.
//!
//! `cargo bench --bench storage -- --quick` for a fast run. After each case the store's counters
//! are printed to stderr, so the group sizes behind a figure are visible.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tollgate::storage::{AppendBatch, Durability, LogRecord, Store, StoreOptions};

/// Events per append, the engine's per-request maximum.
const RECORDS_PER_BATCH: u64 = 100;
/// Appends per thread per measured iteration.
const BATCHES_PER_THREAD: u64 = 10;
/// Bytes of a stored usage event (a bincode-encoded input is roughly this size).
const PAYLOAD_BYTES: usize = 120;
const THREAD_COUNTS: [u64; 3] = [1, 4, 16];

fn append_batches(store: &Store, thread: u64, next_key: &AtomicU64) {
    for _ in 0..BATCHES_PER_THREAD {
        let first = next_key.fetch_add(RECORDS_PER_BATCH, Relaxed);
        let records = (first..first + RECORDS_PER_BATCH)
            .map(|n| LogRecord {
                dedupe_key: Some(format!("tx:{n:032x}").into_bytes()),
                payload: vec![0x5a; PAYLOAD_BYTES],
            })
            .collect();
        let appended = store
            .append_blocking(AppendBatch {
                partition: (thread % 16) as u16,
                at_ms: 1_700_000_000_000,
                records,
            })
            .expect("append");
        assert!(appended.seqs.iter().all(Option::is_some), "unique keys");
    }
}

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("group_commit");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (name, durability) in [("wal", Durability::Wal), ("fsync", Durability::Fsync)] {
        for threads in THREAD_COUNTS {
            let dir = tempfile::TempDir::new().expect("temp dir");
            let store = Store::open(
                dir.path(),
                StoreOptions {
                    durability,
                    ..StoreOptions::default()
                },
            )
            .expect("open store");
            let next_key = AtomicU64::new(0);
            group.throughput(Throughput::Elements(
                threads * BATCHES_PER_THREAD * RECORDS_PER_BATCH,
            ));
            group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
                b.iter_custom(|iters| {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters {
                        let started = Instant::now();
                        std::thread::scope(|scope| {
                            for thread in 0..threads {
                                let (store, next_key) = (&store, &next_key);
                                scope.spawn(move || append_batches(store, thread, next_key));
                            }
                        });
                        elapsed += started.elapsed();
                    }
                    elapsed
                });
            });
            let stats = store.stats();
            eprintln!(
                "  {name}/{threads}: {} records in {} group writes ({:.0} records/write, max {}), last write {} us",
                stats.records,
                stats.groups,
                stats.records as f64 / stats.groups.max(1) as f64,
                stats.group_records_max,
                stats.last_persist_micros,
            );
        }
    }
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);

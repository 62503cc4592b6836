//! Behaviour tests of the store, each run on both backends: real RocksDB directories in temp
//! dirs, and the simulated disk (`sim.rs`), which must answer exactly as RocksDB does.

use std::path::Path;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use tempfile::TempDir;

use super::backend::{Batch, Cf, CursorOptions};
use super::faults::{ScriptedFaults, StorageOp};
use super::sim::SimDisk;
use super::*;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

pub(super) fn options(durability: Durability, memory_entries: usize) -> StoreOptions {
    StoreOptions {
        durability,
        dedupe_window_ms: DEDUPE_WINDOW_MS_DEFAULT,
        dedupe_memory_entries: memory_entries,
    }
}

/// The backend a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Rocks,
    Sim,
}

/// Where a store lives, opened and reopened like a data directory: a temp dir for RocksDB, a
/// simulated disk for the simulation.
pub(super) struct Place {
    kind: Kind,
    dir: TempDir,
    disk: Arc<SimDisk>,
    scratch: TempDir,
}

impl Place {
    pub(super) fn new(kind: Kind) -> Place {
        Place {
            kind,
            dir: TempDir::new().unwrap(),
            disk: SimDisk::new(),
            scratch: TempDir::new().unwrap(),
        }
    }

    pub(super) fn try_open(
        &self,
        opts: StoreOptions,
        faults: Option<faults::Faults>,
    ) -> Result<Store, StorageError> {
        match self.kind {
            Kind::Rocks => Store::open_with_faults(self.dir.path(), opts, faults),
            Kind::Sim => Store::open_sim(&self.disk, opts, faults),
        }
    }

    pub(super) fn open_with(&self, opts: StoreOptions) -> Store {
        self.try_open(opts, None).unwrap()
    }

    /// `fsync` durability, a recent-key map of 1000.
    pub(super) fn open(&self) -> Store {
        self.open_with(options(Durability::Fsync, 1000))
    }

    /// A directory outside the store's, for copies.
    fn scratch(&self) -> &Path {
        self.scratch.path()
    }
}

/// Defines a module `$name` with the test body run once per backend: `$name::rocksdb` and
/// `$name::sim`.
macro_rules! on_both_backends {
    ($(#[$attr:meta])* fn $name:ident($kind:ident) $body:block) => {
        $(#[$attr])*
        mod $name {
            use super::*;

            fn run($kind: Kind) $body

            #[test]
            fn rocksdb() {
                run(Kind::Rocks);
            }

            #[test]
            fn sim() {
                run(Kind::Sim);
            }
        }
    };
}

pub(super) fn keyed(key: &str, payload: &str) -> LogRecord {
    LogRecord {
        dedupe_key: Some(key.as_bytes().to_vec()),
        payload: payload.as_bytes().to_vec(),
    }
}

pub(super) fn unkeyed(payload: &str) -> LogRecord {
    LogRecord {
        dedupe_key: None,
        payload: payload.as_bytes().to_vec(),
    }
}

pub(super) fn batch(partition: u16, at_ms: i64, records: Vec<LogRecord>) -> AppendBatch {
    AppendBatch {
        partition,
        at_ms,
        records,
    }
}

pub(super) fn append(
    store: &Store,
    partition: u16,
    at_ms: i64,
    records: Vec<LogRecord>,
) -> Vec<Option<u64>> {
    store
        .append_blocking(batch(partition, at_ms, records))
        .unwrap()
        .seqs
}

pub(super) fn replay_all(store: &Store, partition: u16, after: u64) -> Vec<(u64, i64, Vec<u8>)> {
    let mut seen = Vec::new();
    store
        .replay(partition, after, |seq, at_ms, payload| {
            seen.push((seq, at_ms, payload.to_vec()));
            Ok(())
        })
        .unwrap();
    seen
}

/// Writes bytes the store itself would never write (corruption tests).
fn plant(store: &Store, cf: Cf, key: &[u8], value: &[u8]) {
    let mut batch = Batch::default();
    batch.put(cf, key, value);
    store.inner.backend.write(batch, false).unwrap();
}

on_both_backends! {
    fn appends_get_gap_free_seqs_per_partition(kind) {
        let place = Place::new(kind);
        let store = place.open();
        assert_eq!(
            append(&store, 0, 1, vec![unkeyed("a"), unkeyed("b")]),
            [Some(1), Some(2)]
        );
        assert_eq!(append(&store, 1, 1, vec![unkeyed("x")]), [Some(1)]);
        assert_eq!(
            append(&store, 0, 2, vec![keyed("k1", "c"), unkeyed("d")]),
            [Some(3), Some(4)]
        );
        assert_eq!(store.last_seq(0).unwrap(), 4);
        assert_eq!(store.last_seq(1).unwrap(), 1);
        assert_eq!(store.last_seq(2).unwrap(), 0);
        let stats = store.stats();
        assert_eq!(stats.appends, 3);
        assert_eq!(stats.records, 5);
        assert_eq!(stats.fsyncs, stats.groups);
    }
}

on_both_backends! {
    fn an_empty_batch_appends_nothing(kind) {
        let place = Place::new(kind);
        let store = place.open();
        assert!(append(&store, 0, 1, vec![]).is_empty());
        assert_eq!(store.last_seq(0).unwrap(), 0);
    }
}

on_both_backends! {
    fn duplicates_within_a_batch_are_flagged_after_the_first(kind) {
        let place = Place::new(kind);
        let store = place.open();
        let seqs = append(
            &store,
            0,
            1,
            vec![
                keyed("a", "1"),
                keyed("a", "2"),
                keyed("b", "3"),
                keyed("a", "4"),
            ],
        );
        assert_eq!(seqs, [Some(1), None, Some(2), None]);
        let payloads: Vec<_> = replay_all(&store, 0, 0).into_iter().map(|r| r.2).collect();
        assert_eq!(payloads, [b"1".to_vec(), b"3".to_vec()]);
        assert_eq!(store.stats().duplicates, 2);
    }
}

on_both_backends! {
    fn duplicates_across_batches_and_partitions_are_flagged(kind) {
        for memory_entries in [0, 1000] {
            let place = Place::new(kind);
            let store = place.open_with(options(Durability::Wal, memory_entries));
            assert_eq!(append(&store, 0, 1, vec![keyed("tx:1", "a")]), [Some(1)]);
            // The dedupe space is global: a transaction id seen on partition 0 is a duplicate on 3.
            assert_eq!(
                append(&store, 3, 2, vec![keyed("tx:1", "a"), keyed("tx:2", "b")]),
                [None, Some(1)]
            );
            assert_eq!(append(&store, 0, 3, vec![keyed("tx:2", "b")]), [None]);
            assert_eq!(
                store.last_seq(0).unwrap(),
                1,
                "memory_entries={memory_entries}"
            );
        }
    }
}

on_both_backends! {
    fn concurrent_appends_of_the_same_keys_from_many_threads_accept_each_key_once(kind) {
        const THREADS: usize = 8;
        const KEYS: usize = 200;
        let place = Place::new(kind);
        let store = place.open();
        let barrier = Arc::new(std::sync::Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = store.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut accepted = Vec::new();
                    // Small batches so that the threads' requests interleave within groups.
                    for chunk in 0..KEYS / 10 {
                        let records = (0..10)
                            .map(|i| keyed(&format!("tx:{}", chunk * 10 + i), &format!("t{t}")))
                            .collect();
                        let partition = (t % 2) as u16;
                        let seqs = append(&store, partition, 1, records);
                        for (i, seq) in seqs.into_iter().enumerate() {
                            if let Some(seq) = seq {
                                accepted.push((chunk * 10 + i, partition, seq));
                            }
                        }
                    }
                    accepted
                })
            })
            .collect();
        let mut accepted_per_key: FxHashMap<usize, usize> = FxHashMap::default();
        let mut seqs_per_partition: FxHashMap<u16, Vec<u64>> = FxHashMap::default();
        for handle in handles {
            for (key, partition, seq) in handle.join().unwrap() {
                *accepted_per_key.entry(key).or_default() += 1;
                seqs_per_partition.entry(partition).or_default().push(seq);
            }
        }
        assert_eq!(accepted_per_key.len(), KEYS);
        assert!(accepted_per_key.values().all(|&n| n == 1));
        // Whatever the interleaving, each partition's seqs are exactly 1..=n.
        let mut total = 0;
        for (partition, mut seqs) in seqs_per_partition {
            seqs.sort_unstable();
            let n = seqs.len() as u64;
            assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
            assert_eq!(store.last_seq(partition).unwrap(), n);
            total += n;
        }
        assert_eq!(total, KEYS as u64);
        let stats = store.stats();
        assert_eq!(stats.records, KEYS as u64);
        assert_eq!(stats.duplicates, (THREADS * KEYS - KEYS) as u64);
    }
}

on_both_backends! {
    fn dedupe_and_seqs_survive_reopen(kind) {
        let place = Place::new(kind);
        {
            let store = place.open();
            append(&store, 0, 1, vec![keyed("tx:1", "a"), unkeyed("b")]);
            append(&store, 5, 1, vec![unkeyed("c")]);
        }
        let store = place.open();
        assert_eq!(store.last_seq(0).unwrap(), 2);
        assert_eq!(store.last_seq(5).unwrap(), 1);
        assert_eq!(
            append(&store, 0, 2, vec![keyed("tx:1", "a"), keyed("tx:2", "d")]),
            [None, Some(3)]
        );
        assert_eq!(append(&store, 5, 2, vec![unkeyed("e")]), [Some(2)]);
    }
}

on_both_backends! {
    fn the_last_partition_recovers_its_seq_on_reopen(kind) {
        let place = Place::new(kind);
        {
            let store = place.open();
            append(&store, u16::MAX, 1, vec![unkeyed("a"), unkeyed("b")]);
            append(&store, u16::MAX - 1, 1, vec![unkeyed("c")]);
        }
        let store = place.open();
        assert_eq!(store.last_seq(u16::MAX).unwrap(), 2);
        assert_eq!(store.last_seq(u16::MAX - 1).unwrap(), 1);
        assert_eq!(replay_all(&store, u16::MAX, 0).len(), 2);
    }
}

on_both_backends! {
    fn expired_dedupe_entries_are_accepted_again(kind) {
        for memory_entries in [0, 1000] {
            let place = Place::new(kind);
            let store = place.open_with(StoreOptions {
                dedupe_window_ms: 1000,
                ..options(Durability::Wal, memory_entries)
            });
            assert_eq!(append(&store, 0, 0, vec![keyed("k", "a")]), [Some(1)]);
            // Exactly at the window's edge the key is still known.
            assert_eq!(append(&store, 0, 1000, vec![keyed("k", "a")]), [None]);
            assert_eq!(append(&store, 0, 1001, vec![keyed("k", "a")]), [Some(2)]);
            // The re-acceptance restarted the window.
            assert_eq!(append(&store, 0, 1500, vec![keyed("k", "a")]), [None]);
        }
    }
}

on_both_backends! {
    fn replay_streams_exactly_the_records_after_a_seq(kind) {
        let place = Place::new(kind);
        let store = place.open();
        for i in 0..10 {
            append(&store, 1, 100 + i, vec![unkeyed(&format!("p{i}"))]);
        }
        append(&store, 0, 1, vec![unkeyed("other")]);
        append(&store, 2, 1, vec![unkeyed("other")]);
        let replayed = replay_all(&store, 1, 6);
        assert_eq!(
            replayed,
            [
                (7, 106, b"p6".to_vec()),
                (8, 107, b"p7".to_vec()),
                (9, 108, b"p8".to_vec()),
                (10, 109, b"p9".to_vec()),
            ]
        );
        assert!(replay_all(&store, 1, 10).is_empty());
        assert!(replay_all(&store, 1, u64::MAX).is_empty());
        assert!(replay_all(&store, 7, 0).is_empty());
    }
}

on_both_backends! {
    fn replay_stops_at_the_first_callback_error(kind) {
        let place = Place::new(kind);
        let store = place.open();
        append(&store, 0, 1, vec![unkeyed("a"), unkeyed("b"), unkeyed("c")]);
        let mut calls = 0;
        let err = store
            .replay(0, 0, |seq, _, _| {
                calls += 1;
                if seq == 2 {
                    Err(StorageError::Decode("bad input".to_owned()))
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert!(matches!(err, StorageError::Decode(_)));
        assert_eq!(calls, 2);
    }
}

on_both_backends! {
    fn checkpoint_roundtrips_and_refuses_seqs_out_of_range(kind) {
        let place = Place::new(kind);
        let store = place.open();
        assert_eq!(store.checkpoint(3).unwrap(), None);
        append(&store, 3, 1, vec![unkeyed("a"), unkeyed("b")]);
        store.put_checkpoint(3, 1, b"state-1").unwrap();
        assert_eq!(store.checkpoint(3).unwrap(), Some((1, b"state-1".to_vec())));
        store.put_checkpoint(3, 2, b"state-2").unwrap();
        assert_eq!(store.checkpoint(3).unwrap(), Some((2, b"state-2".to_vec())));
        assert!(matches!(
            store.put_checkpoint(3, 3, b"ahead"),
            Err(StorageError::CheckpointOutOfRange { last: 2, .. })
        ));
        assert!(matches!(
            store.put_checkpoint(3, 1, b"behind"),
            Err(StorageError::CheckpointOutOfRange {
                checkpointed: 2,
                ..
            })
        ));
        assert_eq!(store.checkpoint(3).unwrap(), Some((2, b"state-2".to_vec())));
        assert_eq!(store.checkpoint(4).unwrap(), None);
    }
}

on_both_backends! {
    fn trim_deletes_old_log_and_dedupe_entries_and_keeps_newer(kind) {
        let place = Place::new(kind);
        let store = place.open_with(options(Durability::Fsync, 0));
        let day0 = 0;
        let day30 = 30 * DAY_MS;
        let day40 = 40 * DAY_MS;
        append(
            &store,
            0,
            day0,
            vec![keyed("old:1", "a"), keyed("old:2", "b")],
        );
        append(&store, 0, day30, vec![keyed("new:1", "c"), unkeyed("d")]);
        append(&store, 1, day30, vec![unkeyed("e")]);
        store.put_checkpoint(0, 3, b"state").unwrap();

        // Seq 3 shares its record with seq 4, which no checkpoint covers: that record stays.
        let stats = store.trim(0, 3, day40).unwrap();
        assert_eq!(
            stats,
            TrimStats {
                log_trimmed_up_to: 3,
                log_deleted: 2,
                dedupe_swept: true,
                dedupe_deleted: 2,
                outbox_done_deleted: 0,
            }
        );
        assert_eq!(replay_all(&store, 0, 3), [(4, day30, b"d".to_vec())]);
        assert_eq!(
            replay_all(&store, 0, 2),
            [(3, day30, b"c".to_vec()), (4, day30, b"d".to_vec())]
        );
        assert!(matches!(
            store.replay(0, 0, |_, _, _| Ok(())),
            Err(StorageError::LogGap {
                expected: 1,
                found: 3,
                ..
            })
        ));
        assert_eq!(
            replay_all(&store, 1, 0).len(),
            1,
            "other partitions untouched"
        );

        let backend = &store.inner.backend;
        assert!(backend.get(Cf::Dedupe, b"old:1").unwrap().is_none());
        assert!(backend.get(Cf::Dedupe, b"new:1").unwrap().is_some());
        // The in-window key is still a duplicate; the expired one is accepted again.
        assert_eq!(
            append(
                &store,
                0,
                day40,
                vec![keyed("new:1", "c"), keyed("old:1", "a")]
            ),
            [None, Some(5)]
        );
        // A second trim within the sweep interval skips the dedupe scan.
        assert!(!store.trim(0, 3, day40 + 1).unwrap().dedupe_swept);
    }
}

on_both_backends! {
    fn trim_never_deletes_log_entries_beyond_the_checkpoint(kind) {
        let place = Place::new(kind);
        let store = place.open();
        for payload in ["a", "b", "c"] {
            append(&store, 0, 1, vec![unkeyed(payload)]);
        }
        let stats = store.trim(0, 3, 1).unwrap();
        assert_eq!((stats.log_trimmed_up_to, stats.log_deleted), (0, 0));
        store.put_checkpoint(0, 1, b"s").unwrap();
        let stats = store.trim(0, 3, 1).unwrap();
        assert_eq!((stats.log_trimmed_up_to, stats.log_deleted), (1, 1));
        assert_eq!(replay_all(&store, 0, 1).len(), 2);
        // Trimming again is a no-op.
        assert_eq!(store.trim(0, 3, 1).unwrap().log_deleted, 0);

        // A record of several seqs goes only once a checkpoint covers its last.
        append(&store, 0, 2, vec![unkeyed("d"), unkeyed("e"), unkeyed("f")]);
        store.put_checkpoint(0, 5, b"s").unwrap();
        let stats = store.trim(0, 5, 1).unwrap();
        assert_eq!((stats.log_trimmed_up_to, stats.log_deleted), (5, 2));
        assert_eq!(replay_all(&store, 0, 3).len(), 3);
        store.put_checkpoint(0, 6, b"s").unwrap();
        assert_eq!(store.trim(0, 6, 1).unwrap().log_deleted, 3);
        assert!(replay_all(&store, 0, 6).is_empty());
    }
}

on_both_backends! {
    fn a_fully_trimmed_log_continues_its_seqs_after_reopen(kind) {
        let place = Place::new(kind);
        {
            let store = place.open();
            append(&store, 0, 1, vec![unkeyed("a"), unkeyed("b")]);
            store.put_checkpoint(0, 2, b"s").unwrap();
            assert_eq!(store.trim(0, 2, 1).unwrap().log_deleted, 2);
        }
        let store = place.open();
        assert_eq!(store.last_seq(0).unwrap(), 2);
        assert_eq!(append(&store, 0, 2, vec![unkeyed("c")]), [Some(3)]);
        assert_eq!(replay_all(&store, 0, 2), [(3, 2, b"c".to_vec())]);
    }
}

on_both_backends! {
    fn put_outbox_skips_delivered_pending_and_dead_lettered_ids(kind) {
        let place = Place::new(kind);
        let store = place.open();
        let (a, b, c, d) = ([1u8; 16], [2u8; 16], [3u8; 16], [4u8; 16]);
        let written = store
            .put_outbox(
                &[(a, b"a".to_vec()), (b, b"b".to_vec()), (c, b"c".to_vec())],
                (0, 1),
            )
            .unwrap();
        assert_eq!(written, 3);
        store.mark_delivered(a, (0, 1)).unwrap();
        assert!(store.update_outbox(b, b"b-retry-1").unwrap());
        assert!(store.dead_letter(c, b"c-failed").unwrap());

        // A replay re-creates all four effects: only the new one is written, and the pending one
        // keeps its retry state.
        let written = store
            .put_outbox(
                &[
                    (a, b"a".to_vec()),
                    (b, b"b".to_vec()),
                    (c, b"c".to_vec()),
                    (d, b"d".to_vec()),
                    (d, b"d-again".to_vec()),
                ],
                (0, 1),
            )
            .unwrap();
        assert_eq!(written, 1);
        assert_eq!(
            store.outbox_pending().unwrap(),
            [(b, b"b-retry-1".to_vec()), (d, b"d".to_vec())]
        );
        // A late retry update of a delivered effect does not resurrect it.
        assert!(!store.update_outbox(a, b"a-retry").unwrap());
        assert_eq!(store.outbox_pending().unwrap().len(), 2);
    }
}

on_both_backends! {
    fn trim_forgets_delivered_ids_whose_cause_is_checkpointed(kind) {
        let place = Place::new(kind);
        let store = place.open();
        append(&store, 0, 1, vec![unkeyed("a"), unkeyed("b")]);
        append(&store, 1, 1, vec![unkeyed("x")]);
        let (a, b, x) = ([1u8; 16], [2u8; 16], [9u8; 16]);
        store.mark_delivered(a, (0, 1)).unwrap();
        store.mark_delivered(b, (0, 2)).unwrap();
        store.mark_delivered(x, (1, 1)).unwrap();
        store.put_checkpoint(0, 1, b"s").unwrap();
        assert_eq!(store.trim(0, 2, 1).unwrap().outbox_done_deleted, 1);
        // `a` is forgotten (its cause is before the checkpoint and will not be replayed); `b` and
        // the other partition's `x` are still remembered.
        assert_eq!(
            store
                .put_outbox(&[(a, vec![]), (b, vec![]), (x, vec![])], (0, 2))
                .unwrap(),
            1
        );
        assert_eq!(store.outbox_pending().unwrap(), [(a, vec![])]);
    }
}

on_both_backends! {
    fn dead_letter_and_redrive_move_entries(kind) {
        let place = Place::new(kind);
        let store = place.open();
        let id = [7u8; 16];
        assert!(!store.dead_letter(id, b"nothing pending").unwrap());
        store
            .put_outbox(&[(id, b"effect".to_vec())], (0, 1))
            .unwrap();
        assert!(store.dead_letter(id, b"effect+error").unwrap());
        assert!(store.outbox_pending().unwrap().is_empty());
        assert_eq!(
            store.dead_letters().unwrap(),
            [(id, b"effect+error".to_vec())]
        );

        assert_eq!(store.dead_letter_value(id).unwrap(), Some(b"effect+error".to_vec()));
        assert!(store.redrive_dead_letter_as(id, b"effect+fresh").unwrap());
        assert!(store.dead_letters().unwrap().is_empty());
        assert_eq!(store.dead_letter_value(id).unwrap(), None);
        assert_eq!(
            store.outbox_pending().unwrap(),
            [(id, b"effect+fresh".to_vec())]
        );
        assert!(!store.redrive_dead_letter_as(id, b"again").unwrap());
        assert_eq!(
            store.outbox_pending().unwrap(),
            [(id, b"effect+fresh".to_vec())],
            "a re-drive of what is not a dead letter writes nothing"
        );
    }
}

on_both_backends! {
    fn meta_supports_put_get_delete_and_prefix_scan(kind) {
        let place = Place::new(kind);
        let store = place.open();
        store.meta_put(b"catalog/metric/1", b"m1").unwrap();
        store.meta_put(b"catalog/metric/2", b"m2").unwrap();
        store.meta_put(b"catalog/product/1", b"p1").unwrap();
        store.meta_put(b"config", b"fp").unwrap();
        assert_eq!(store.meta_get(b"config").unwrap(), Some(b"fp".to_vec()));
        assert_eq!(
            store.meta_scan_prefix(b"catalog/metric/").unwrap(),
            [
                (b"catalog/metric/1".to_vec(), b"m1".to_vec()),
                (b"catalog/metric/2".to_vec(), b"m2".to_vec()),
            ]
        );
        store.meta_delete(b"catalog/metric/1").unwrap();
        assert_eq!(store.meta_get(b"catalog/metric/1").unwrap(), None);
        assert_eq!(store.meta_scan_prefix(b"catalog/").unwrap().len(), 2);
        // Everything, and the store's own format mark.
        assert_eq!(store.meta_scan_prefix(b"").unwrap().len(), 3 + 1);
    }
}

on_both_backends! {
    fn async_append_is_queued_before_the_future_is_polled(kind) {
        let place = Place::new(kind);
        let store = place.open_with(options(Durability::Wal, 1000));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let appended = runtime
            .block_on(store.append(batch(0, 1, vec![keyed("k", "a")])))
            .unwrap();
        assert_eq!(appended.seqs, [Some(1)]);

        // Dropped without ever being polled: the append still happens.
        drop(store.append(batch(0, 2, vec![keyed("k2", "b")])));
        let appended = runtime
            .block_on(store.append(batch(0, 3, vec![keyed("k2", "b"), unkeyed("c")])))
            .unwrap();
        assert_eq!(appended.seqs, [None, Some(3)]);
    }
}

on_both_backends! {
    fn a_corrupt_dedupe_entry_fails_its_append_loudly_and_spares_the_others(kind) {
        let place = Place::new(kind);
        let store = place.open_with(options(Durability::Fsync, 0));
        plant(&store, Cf::Dedupe, b"tx:bad", b"garbage");

        let err = store
            .append_blocking(batch(0, 1, vec![unkeyed("a"), keyed("tx:bad", "b")]))
            .unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
        // Nothing of the refused batch was appended, and the next append is unaffected.
        assert_eq!(store.last_seq(0).unwrap(), 0);
        assert_eq!(append(&store, 0, 1, vec![keyed("tx:ok", "c")]), [Some(1)]);
    }
}

on_both_backends! {
    fn a_corrupt_log_record_fails_replay_loudly(kind) {
        let place = Place::new(kind);
        let store = place.open();
        append(&store, 0, 1, vec![unkeyed("a")]);
        plant(&store, Cf::Log, &keys::log_key(0, 2), b"short");
        let err = store.replay(0, 0, |_, _, _| Ok(())).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
        // A last record without payloads: the partition's last seq is unknowable.
        plant(&store, Cf::Log, &keys::log_key(0, 2), &keys::record_value(1, &[]));
        drop(store);
        let err = place.try_open(options(Durability::Fsync, 0), None).err();
        assert!(matches!(err, Some(StorageError::Corrupt { .. })), "{err:?}");
    }
}

on_both_backends! {
    fn a_log_record_overlapping_the_one_before_fails_replay_loudly(kind) {
        let place = Place::new(kind);
        let store = place.open();
        append(&store, 0, 1, vec![unkeyed("a"), unkeyed("b")]);
        // Seqs 1-2 are one record; another starting at 2 overlaps it.
        plant(&store, Cf::Log, &keys::log_key(0, 2), &keys::record_value(1, &[b"x"]));
        let err = store.replay(0, 0, |_, _, _| Ok(())).unwrap_err();
        assert!(
            matches!(&err, StorageError::Corrupt { detail, .. } if detail.contains("overlaps")),
            "{err}"
        );
    }
}

#[test]
fn a_records_seq_range_is_checked() {
    assert_eq!(keys::record_last_seq(1, 1).unwrap(), 1);
    assert_eq!(keys::record_last_seq(5, 3).unwrap(), 7);
    assert_eq!(keys::record_last_seq(u64::MAX, 1).unwrap(), u64::MAX);
    assert!(keys::record_last_seq(u64::MAX, 2).is_err());
    assert!(keys::record_last_seq(3, 0).is_err());
}

on_both_backends! {
    fn an_append_is_one_log_record_and_replay_can_start_inside_it(kind) {
        let place = Place::new(kind);
        let store = place.open();
        append(&store, 0, 1, vec![keyed("k:1", "dup")]);
        assert_eq!(
            append(
                &store,
                0,
                7,
                vec![unkeyed("a"), keyed("k:1", "dup"), keyed("k:2", "b"), unkeyed("c")]
            ),
            [Some(2), None, Some(3), Some(4)]
        );
        let mut it = store.inner.backend.cursor(Cf::Log, CursorOptions::new()).unwrap();
        it.seek_to_first();
        let mut records = Vec::new();
        while let Some((key, value)) = it.item() {
            let run = keys::parse_record_value(value).unwrap();
            records.push((keys::parse_log_key(key).unwrap(), run.at_ms, run.payloads.len()));
            it.next();
        }
        drop(it);
        assert_eq!(records, [((0, 1), 1, 1), ((0, 2), 7, 3)], "one record per append");
        let all = [
            (1, 1, b"dup".to_vec()),
            (2, 7, b"a".to_vec()),
            (3, 7, b"b".to_vec()),
            (4, 7, b"c".to_vec()),
        ];
        for after in 0..=4 {
            assert_eq!(replay_all(&store, 0, after), all[after as usize..], "after {after}");
        }
        // Other partitions' records around it change nothing.
        append(&store, 1, 8, vec![unkeyed("x"), unkeyed("y")]);
        drop(store);
        let store = place.open();
        assert_eq!(store.last_seq(0).unwrap(), 4);
        assert_eq!(store.last_seq(1).unwrap(), 2);
        assert_eq!(replay_all(&store, 1, 1), [(2, 8, b"y".to_vec())]);
        assert_eq!(replay_all(&store, 0, 3), all[3..]);
    }
}

on_both_backends! {
    fn a_data_directory_of_another_storage_format_is_refused_naming_its_version(kind) {
        let refused = |place: &Place, found: u32| {
            let err = place.try_open(options(Durability::Fsync, 0), None).err();
            assert!(
                matches!(
                    err,
                    Some(StorageError::FormatVersion { found: f, expected: STORAGE_FORMAT_VERSION })
                        if f == found
                ),
                "{err:?}"
            );
            let message = err.unwrap().to_string();
            assert!(message.contains(&format!("storage format version {found}")), "{message}");
        };
        // Data without a mark: written before marks existed, one record per input.
        let place = Place::new(kind);
        let store = place.open();
        assert_eq!(
            store.meta_get(STORAGE_FORMAT_KEY).unwrap(),
            Some(STORAGE_FORMAT_VERSION.to_be_bytes().to_vec()),
            "a new directory is marked"
        );
        append(&store, 0, 1, vec![unkeyed("a")]);
        store.meta_delete(STORAGE_FORMAT_KEY).unwrap();
        drop(store);
        refused(&place, 1);
        refused(&place, 1);

        // A later version.
        let place = Place::new(kind);
        let store = place.open();
        let later = STORAGE_FORMAT_VERSION + 1;
        store.meta_put(STORAGE_FORMAT_KEY, &later.to_be_bytes()).unwrap();
        drop(store);
        refused(&place, later);

        // The versions before this one open, and are marked with this version first.
        for old in STORAGE_FORMAT_UPGRADABLE {
            let place = Place::new(kind);
            let store = place.open();
            append(&store, 0, 1, vec![unkeyed("a")]);
            store.meta_put(STORAGE_FORMAT_KEY, &old.to_be_bytes()).unwrap();
            drop(store);
            let store = place.open();
            assert_eq!(
                store.meta_get(STORAGE_FORMAT_KEY).unwrap(),
                Some(STORAGE_FORMAT_VERSION.to_be_bytes().to_vec())
            );
            assert_eq!(store.last_seq(0).unwrap(), 1, "its log is read as it is");
        }

        // A new directory reopens fine: the mark is written once.
        let place = Place::new(kind);
        drop(place.open());
        let store = place.open();
        assert_eq!(store.meta_scan_prefix(b"storage/").unwrap().len(), 1);
    }
}

on_both_backends! {
    fn a_second_open_of_the_same_dir_is_an_error_not_a_panic(kind) {
        let place = Place::new(kind);
        let _store = place.open();
        let err = place.try_open(StoreOptions::default(), None).err().unwrap();
        let expected = match kind {
            Kind::Rocks => matches!(err, StorageError::Rocks(_)),
            Kind::Sim => matches!(err, StorageError::SimDisk(_)),
        };
        assert!(expected, "{err}");
    }
}

on_both_backends! {
    fn dropping_the_last_handle_answers_queued_appends_before_closing(kind) {
        let place = Place::new(kind);
        let store = place.open_with(options(Durability::Wal, 1000));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let pending: Vec<_> = (0..100)
            .map(|i| store.append(batch(0, i, vec![unkeyed("x")])))
            .collect();
        drop(store);
        for (i, fut) in pending.into_iter().enumerate() {
            let appended = runtime.block_on(fut).unwrap();
            assert_eq!(appended.seqs, [Some(i as u64 + 1)]);
        }
        let store = place.open();
        assert_eq!(store.last_seq(0).unwrap(), 100);
    }
}

#[test]
fn durability_deserializes_from_lowercase_names() {
    let wal: Durability = serde_json::from_str("\"wal\"").unwrap();
    let fsync: Durability = serde_json::from_str("\"fsync\"").unwrap();
    assert_eq!((wal, fsync), (Durability::Wal, Durability::Fsync));
    assert!(serde_json::from_str::<Durability>("\"Fsync\"").is_err());
    let opts: StoreOptions = serde_json::from_str(r#"{"durability":"wal"}"#).unwrap();
    assert_eq!(opts.durability, Durability::Wal);
    assert_eq!(opts.dedupe_window_ms, DEDUPE_WINDOW_MS_DEFAULT);
}

on_both_backends! {
    fn a_negative_dedupe_window_is_refused(kind) {
        let place = Place::new(kind);
        let opts = StoreOptions {
            dedupe_window_ms: -1,
            ..StoreOptions::default()
        };
        assert!(matches!(
            place.try_open(opts, None),
            Err(StorageError::InvalidOptions(_))
        ));
    }
}

on_both_backends! {
    fn meta_last_under_finds_the_greatest_key_of_a_prefix_only(kind) {
        let place = Place::new(kind);
        let store = place.open();
        assert_eq!(store.meta_last_under(b"c/").unwrap(), None);
        let puts = [
            (b"b/9".to_vec(), vec![0]),
            (b"c/1".to_vec(), vec![1]),
            (b"c/2\xff".to_vec(), vec![2]),
            (b"c0".to_vec(), vec![3]),
            (b"d".to_vec(), vec![4]),
        ];
        store.meta_write_batch(&puts, &[]).unwrap();
        assert_eq!(
            store.meta_last_under(b"c/").unwrap(),
            Some((b"c/2\xff".to_vec(), vec![2]))
        );
        // Keys just below and just above the prefix's range are not under it.
        assert_eq!(store.meta_last_under(b"c/3").unwrap(), None);
        assert_eq!(store.meta_last_under(b"a").unwrap(), None);
        assert_eq!(store.meta_last_under(b"d").unwrap(), Some((b"d".to_vec(), vec![4])));
        // A prefix of only 0xff bytes has no end key.
        store.meta_put(&[0xff, 0xff, 1], &[5]).unwrap();
        assert_eq!(
            store.meta_last_under(&[0xff, 0xff]).unwrap(),
            Some((vec![0xff, 0xff, 1], vec![5]))
        );
    }
}

on_both_backends! {
    fn meta_scan_page_pages_through_a_prefix_after_a_cursor(kind) {
        let place = Place::new(kind);
        let store = place.open();
        let puts: Vec<_> = (0..5u8)
            .map(|i| (vec![b'c', b'/', b'0' + i], vec![i]))
            .chain([(b"c".to_vec(), vec![]), (b"d/0".to_vec(), vec![])])
            .collect();
        store.meta_write_batch(&puts, &[]).unwrap();
        let keys = |page: Vec<MetaEntry>| -> Vec<Vec<u8>> {
            page.into_iter().map(|e| e.0).collect()
        };
        let first = keys(store.meta_scan_page(b"c/", None, 2).unwrap());
        assert_eq!(first, [b"c/0".to_vec(), b"c/1".to_vec()]);
        let second = keys(store.meta_scan_page(b"c/", Some(b"c/1"), 2).unwrap());
        assert_eq!(second, [b"c/2".to_vec(), b"c/3".to_vec()]);
        // A cursor that is not a stored key continues after it; the last page is short.
        let last = keys(store.meta_scan_page(b"c/", Some(b"c/33"), 2).unwrap());
        assert_eq!(last, [b"c/4".to_vec()]);
        assert!(store.meta_scan_page(b"c/", Some(b"c/4"), 2).unwrap().is_empty());
        assert!(store.meta_scan_page(b"c/", None, 0).unwrap().is_empty());
        // Everything, and the store's own format mark.
        assert_eq!(store.meta_scan_page(b"", None, 10).unwrap().len(), 7 + 1);
        assert_eq!(
            store.meta_multi_get(&[b"c/4".to_vec(), b"x".to_vec()]).unwrap(),
            [Some(vec![4]), None]
        );
        store.meta_write_derived_batch(&[], &[b"c/0".to_vec()]).unwrap();
        assert_eq!(store.meta_scan_prefix(b"c/").unwrap().len(), 4);
    }
}

on_both_backends! {
    fn scripted_faults_fail_every_write_from_the_nth_and_leave_reads_alone(kind) {
        let place = Place::new(kind);
        let faults = ScriptedFaults::new();
        let store = place
            .try_open(
                options(Durability::Fsync, 1000),
                Some(faults.clone() as faults::Faults),
            )
            .unwrap();
        faults.fail_writes_from(2);
        append(&store, 0, 1, vec![keyed("a", "a")]);
        store.meta_put(b"k", b"v").unwrap();
        // The third write, whatever its kind, and every later one fail.
        let failed = [
            store.put_outbox(&[([1; 16], vec![])], (0, 1)).unwrap_err(),
            store.append_blocking(batch(0, 2, vec![unkeyed("b")])).unwrap_err(),
            store.put_checkpoint(0, 1, b"s").unwrap_err(),
            store.trim(0, 1, 1).unwrap_err(),
        ];
        for err in failed {
            assert!(matches!(err, StorageError::Injected(_)), "{err}");
        }
        assert_eq!(store.meta_get(b"k").unwrap(), Some(b"v".to_vec()));
        assert!(store.outbox_pending().unwrap().is_empty());
        assert_eq!(replay_all(&store, 0, 0).len(), 1);
        faults.heal();
        assert_eq!(append(&store, 0, 3, vec![unkeyed("c")]), [Some(2)]);
        // The injector's kinds: one kind only counts that kind.
        faults.fail_from(StorageOp::Checkpoint, 0);
        store.meta_put(b"k2", b"v").unwrap();
        assert!(store.put_checkpoint(0, 1, b"s").is_err());
    }
}

on_both_backends! {
    fn copy_to_makes_a_rocksdb_copy_that_reopens_with_the_same_log(kind) {
        let place = Place::new(kind);
        let store = place.open();
        append(&store, 2, 5, vec![keyed("tx:1", "a"), unkeyed("b")]);
        store.put_checkpoint(2, 1, b"s").unwrap();
        let copy = place.scratch().join("copy");
        store.copy_to(&copy).unwrap();
        append(&store, 2, 6, vec![unkeyed("after the copy")]);
        let copied = Store::open(&copy, options(Durability::Fsync, 1000)).unwrap();
        assert_eq!(copied.last_seq(2).unwrap(), 2);
        assert_eq!(replay_all(&copied, 2, 0), [(1, 5, b"a".to_vec()), (2, 5, b"b".to_vec())]);
        assert_eq!(copied.checkpoint(2).unwrap(), Some((1, b"s".to_vec())));
        assert_eq!(append(&copied, 2, 7, vec![keyed("tx:1", "a")]), [None]);
    }
}

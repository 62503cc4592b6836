//! Behaviour tests of the store against real RocksDB directories in temp dirs.

use std::path::Path;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use tempfile::TempDir;

use super::*;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

fn options(durability: Durability, memory_entries: usize) -> StoreOptions {
    StoreOptions {
        durability,
        dedupe_window_ms: DEDUPE_WINDOW_MS_DEFAULT,
        dedupe_memory_entries: memory_entries,
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir, options(Durability::Fsync, 1000)).unwrap()
}

fn keyed(key: &str, payload: &str) -> LogRecord {
    LogRecord {
        dedupe_key: Some(key.as_bytes().to_vec()),
        payload: payload.as_bytes().to_vec(),
    }
}

fn unkeyed(payload: &str) -> LogRecord {
    LogRecord {
        dedupe_key: None,
        payload: payload.as_bytes().to_vec(),
    }
}

fn batch(partition: u16, at_ms: i64, records: Vec<LogRecord>) -> AppendBatch {
    AppendBatch {
        partition,
        at_ms,
        records,
    }
}

fn append(store: &Store, partition: u16, at_ms: i64, records: Vec<LogRecord>) -> Vec<Option<u64>> {
    store
        .append_blocking(batch(partition, at_ms, records))
        .unwrap()
        .seqs
}

fn replay_all(store: &Store, partition: u16, after: u64) -> Vec<(u64, i64, Vec<u8>)> {
    let mut seen = Vec::new();
    store
        .replay(partition, after, |seq, at_ms, payload| {
            seen.push((seq, at_ms, payload.to_vec()));
            Ok(())
        })
        .unwrap();
    seen
}

#[test]
fn appends_get_gap_free_seqs_per_partition() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
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

#[test]
fn an_empty_batch_appends_nothing() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    assert!(append(&store, 0, 1, vec![]).is_empty());
    assert_eq!(store.last_seq(0).unwrap(), 0);
}

#[test]
fn duplicates_within_a_batch_are_flagged_after_the_first() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
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

#[test]
fn duplicates_across_batches_and_partitions_are_flagged() {
    for memory_entries in [0, 1000] {
        let dir = TempDir::new().unwrap();
        let store = Store::open(dir.path(), options(Durability::Wal, memory_entries)).unwrap();
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

#[test]
fn concurrent_appends_of_the_same_keys_from_many_threads_accept_each_key_once() {
    const THREADS: usize = 8;
    const KEYS: usize = 200;
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
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

#[test]
fn dedupe_and_seqs_survive_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(dir.path());
        append(&store, 0, 1, vec![keyed("tx:1", "a"), unkeyed("b")]);
        append(&store, 5, 1, vec![unkeyed("c")]);
    }
    let store = open(dir.path());
    assert_eq!(store.last_seq(0).unwrap(), 2);
    assert_eq!(store.last_seq(5).unwrap(), 1);
    assert_eq!(
        append(&store, 0, 2, vec![keyed("tx:1", "a"), keyed("tx:2", "d")]),
        [None, Some(3)]
    );
    assert_eq!(append(&store, 5, 2, vec![unkeyed("e")]), [Some(2)]);
}

#[test]
fn the_last_partition_recovers_its_seq_on_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(dir.path());
        append(&store, u16::MAX, 1, vec![unkeyed("a"), unkeyed("b")]);
        append(&store, u16::MAX - 1, 1, vec![unkeyed("c")]);
    }
    let store = open(dir.path());
    assert_eq!(store.last_seq(u16::MAX).unwrap(), 2);
    assert_eq!(store.last_seq(u16::MAX - 1).unwrap(), 1);
    assert_eq!(replay_all(&store, u16::MAX, 0).len(), 2);
}

#[test]
fn expired_dedupe_entries_are_accepted_again() {
    for memory_entries in [0, 1000] {
        let dir = TempDir::new().unwrap();
        let store = Store::open(
            dir.path(),
            StoreOptions {
                dedupe_window_ms: 1000,
                ..options(Durability::Wal, memory_entries)
            },
        )
        .unwrap();
        assert_eq!(append(&store, 0, 0, vec![keyed("k", "a")]), [Some(1)]);
        // Exactly at the window's edge the key is still known.
        assert_eq!(append(&store, 0, 1000, vec![keyed("k", "a")]), [None]);
        assert_eq!(append(&store, 0, 1001, vec![keyed("k", "a")]), [Some(2)]);
        // The re-acceptance restarted the window.
        assert_eq!(append(&store, 0, 1500, vec![keyed("k", "a")]), [None]);
    }
}

#[test]
fn replay_streams_exactly_the_records_after_a_seq() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
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

#[test]
fn replay_stops_at_the_first_callback_error() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
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

#[test]
fn checkpoint_roundtrips_and_refuses_seqs_out_of_range() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
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

#[test]
fn trim_deletes_old_log_and_dedupe_entries_and_keeps_newer() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path(), options(Durability::Fsync, 0)).unwrap();
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

    let stats = store.trim(0, 3, day40).unwrap();
    assert_eq!(
        stats,
        TrimStats {
            log_trimmed_up_to: 3,
            log_deleted: 3,
            dedupe_swept: true,
            dedupe_deleted: 2,
            outbox_done_deleted: 0,
        }
    );
    assert_eq!(replay_all(&store, 0, 3), [(4, day30, b"d".to_vec())]);
    assert!(matches!(
        store.replay(0, 0, |_, _, _| Ok(())),
        Err(StorageError::LogGap {
            expected: 1,
            found: 4,
            ..
        })
    ));
    assert_eq!(
        replay_all(&store, 1, 0).len(),
        1,
        "other partitions untouched"
    );

    let dedupe = cf(&store.inner.db, CF_DEDUPE).unwrap();
    assert!(store.inner.db.get_cf(dedupe, b"old:1").unwrap().is_none());
    assert!(store.inner.db.get_cf(dedupe, b"new:1").unwrap().is_some());
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

#[test]
fn trim_never_deletes_log_entries_beyond_the_checkpoint() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    append(&store, 0, 1, vec![unkeyed("a"), unkeyed("b"), unkeyed("c")]);
    let stats = store.trim(0, 3, 1).unwrap();
    assert_eq!((stats.log_trimmed_up_to, stats.log_deleted), (0, 0));
    store.put_checkpoint(0, 1, b"s").unwrap();
    let stats = store.trim(0, 3, 1).unwrap();
    assert_eq!((stats.log_trimmed_up_to, stats.log_deleted), (1, 1));
    assert_eq!(replay_all(&store, 0, 1).len(), 2);
    // Trimming again is a no-op.
    assert_eq!(store.trim(0, 3, 1).unwrap().log_deleted, 0);
}

#[test]
fn a_fully_trimmed_log_continues_its_seqs_after_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(dir.path());
        append(&store, 0, 1, vec![unkeyed("a"), unkeyed("b")]);
        store.put_checkpoint(0, 2, b"s").unwrap();
        assert_eq!(store.trim(0, 2, 1).unwrap().log_deleted, 2);
    }
    let store = open(dir.path());
    assert_eq!(store.last_seq(0).unwrap(), 2);
    assert_eq!(append(&store, 0, 2, vec![unkeyed("c")]), [Some(3)]);
    assert_eq!(replay_all(&store, 0, 2), [(3, 2, b"c".to_vec())]);
}

#[test]
fn put_outbox_skips_delivered_pending_and_dead_lettered_ids() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
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

#[test]
fn trim_forgets_delivered_ids_whose_cause_is_checkpointed() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
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

#[test]
fn dead_letter_and_redrive_move_entries() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
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

    assert!(store.redrive_dead_letter(id).unwrap());
    assert!(store.dead_letters().unwrap().is_empty());
    assert_eq!(
        store.outbox_pending().unwrap(),
        [(id, b"effect+error".to_vec())]
    );
    assert!(!store.redrive_dead_letter(id).unwrap());
}

#[test]
fn meta_supports_put_get_delete_and_prefix_scan() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
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
    assert_eq!(store.meta_scan_prefix(b"").unwrap().len(), 3);
}

#[test]
fn async_append_is_queued_before_the_future_is_polled() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path(), options(Durability::Wal, 1000)).unwrap();
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

#[test]
fn a_corrupt_dedupe_entry_fails_its_append_loudly_and_spares_the_others() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path(), options(Durability::Fsync, 0)).unwrap();
    let dedupe = cf(&store.inner.db, CF_DEDUPE).unwrap();
    store
        .inner
        .db
        .put_cf(dedupe, b"tx:bad", b"garbage")
        .unwrap();

    let err = store
        .append_blocking(batch(0, 1, vec![unkeyed("a"), keyed("tx:bad", "b")]))
        .unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    // Nothing of the refused batch was appended, and the next append is unaffected.
    assert_eq!(store.last_seq(0).unwrap(), 0);
    assert_eq!(append(&store, 0, 1, vec![keyed("tx:ok", "c")]), [Some(1)]);
}

#[test]
fn a_corrupt_log_record_fails_replay_loudly() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    append(&store, 0, 1, vec![unkeyed("a")]);
    let log = cf(&store.inner.db, CF_LOG).unwrap();
    store
        .inner
        .db
        .put_cf(log, keys::log_key(0, 2), b"short")
        .unwrap();
    let err = store.replay(0, 0, |_, _, _| Ok(())).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
}

#[test]
fn a_second_open_of_the_same_dir_is_an_error_not_a_panic() {
    let dir = TempDir::new().unwrap();
    let _store = open(dir.path());
    let err = Store::open(dir.path(), StoreOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, StorageError::Rocks(_)), "{err}");
}

#[test]
fn dropping_the_last_handle_answers_queued_appends_before_closing() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path(), options(Durability::Wal, 1000)).unwrap();
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
    let store = open(dir.path());
    assert_eq!(store.last_seq(0).unwrap(), 100);
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

#[test]
fn a_negative_dedupe_window_is_refused() {
    let dir = TempDir::new().unwrap();
    let opts = StoreOptions {
        dedupe_window_ms: -1,
        ..StoreOptions::default()
    };
    assert!(matches!(
        Store::open(dir.path(), opts),
        Err(StorageError::InvalidOptions(_))
    ));
}

//! What only the simulated disk can show: which writes a crash keeps, stores of a crashed
//! process, crash points between any two writes, and that a run is deterministic.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tempfile::TempDir;

use super::backend::{Cf, CursorOptions};
use super::keys::{DedupeHit, parse_log_key};
use super::sim::{CrashKind, FailedWrite, SimDisk};
use super::tests::{append, batch, keyed, options, replay_all, unkeyed};
use super::*;

fn open(disk: &Arc<SimDisk>, durability: Durability) -> Store {
    Store::open_sim(disk, options(durability, 1000), None).unwrap()
}

/// Appends one keyed record per call, `tx:{i}` with payload `tx:{i}`, alternating partitions
/// 0 and 1, with a derived `meta` write after each (as the engine writes states).
fn keyed_workload(store: &Store, from: usize, count: usize) {
    for i in from..from + count {
        let key = format!("tx:{i}");
        let partition = (i % 2) as u16;
        append(store, partition, i as i64, vec![keyed(&key, &key)]);
        store
            .meta_write_derived(&[(format!("state/{i}").into_bytes(), vec![1])])
            .unwrap();
    }
}

/// Checks the store against the invariants a crash must not break, and returns the keys whose
/// records survived: every dedupe entry points at a log record carrying its key, every keyed
/// record has its dedupe entry, each partition's log is gap-free from 1 and ends at its
/// `last_seq`.
fn check_dedupe_and_seqs(store: &Store) -> Vec<String> {
    let mut survived = Vec::new();
    for partition in [0u16, 1] {
        let records = replay_all(store, partition, 0);
        let seqs: Vec<u64> = records.iter().map(|r| r.0).collect();
        assert_eq!(seqs, (1..=records.len() as u64).collect::<Vec<_>>());
        assert_eq!(store.last_seq(partition).unwrap(), records.len() as u64);
        for (seq, _, payload) in records {
            let key = payload.clone();
            let hit = store
                .inner
                .backend
                .get(Cf::Dedupe, &key)
                .unwrap()
                .map(|v| DedupeHit::decode(&v).unwrap());
            assert_eq!(
                hit.map(|h| (h.partition, h.seq)),
                Some((partition, seq)),
                "record {partition}/{seq} without its dedupe entry"
            );
            survived.push(String::from_utf8(payload).unwrap());
        }
    }
    let mut cursor = store
        .inner
        .backend
        .cursor(Cf::Dedupe, CursorOptions::new())
        .unwrap();
    cursor.seek_to_first();
    let mut entries = 0;
    while let Some((key, value)) = cursor.item() {
        let hit = DedupeHit::decode(value).unwrap();
        let record = replay_all(store, hit.partition, hit.seq - 1);
        assert_eq!(
            record.first().map(|r| r.2.as_slice()),
            Some(key),
            "dedupe entry without its record"
        );
        entries += 1;
        cursor.next();
    }
    assert_eq!(entries, survived.len());
    survived.sort();
    survived
}

#[test]
fn unsynced_appends_are_lost_on_power_loss_but_kept_on_a_process_crash_in_wal_mode() {
    let disk = SimDisk::new();
    let store = open(&disk, Durability::Wal);
    keyed_workload(&store, 0, 4);
    // Only the format mark of the new directory, at open.
    assert_eq!(disk.stats().synced_writes, 1);
    let power_loss = disk.fork(CrashKind::PowerLoss);

    drop(store);
    let crashed = disk.crash(CrashKind::ProcessCrash);
    assert_eq!((crashed.batches_lost, crashed.batches_kept), (0, 8));
    let store = open(&disk, Durability::Wal);
    assert_eq!(check_dedupe_and_seqs(&store).len(), 4);
    assert_eq!(store.meta_scan_prefix(b"state/").unwrap().len(), 4);

    let store = open(&power_loss, Durability::Wal);
    assert!(check_dedupe_and_seqs(&store).is_empty());
    let meta: Vec<_> = store.meta_scan_prefix(b"").unwrap();
    assert_eq!(
        meta,
        [(
            STORAGE_FORMAT_KEY.to_vec(),
            STORAGE_FORMAT_VERSION.to_be_bytes().to_vec()
        )]
    );
}

#[test]
fn fsync_mode_appends_survive_a_power_loss_and_derived_writes_after_the_last_sync_do_not() {
    let disk = SimDisk::new();
    let store = open(&disk, Durability::Fsync);
    keyed_workload(&store, 0, 3);
    drop(store);
    disk.crash(CrashKind::PowerLoss);
    let store = open(&disk, Durability::Fsync);
    assert_eq!(check_dedupe_and_seqs(&store), ["tx:0", "tx:1", "tx:2"]);
    // Each derived state write was made durable by the next append's fsync, except the last.
    let states = store.meta_scan_prefix(b"state/").unwrap();
    let keys: Vec<_> = states.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys, [&b"state/0"[..], b"state/1"]);
}

#[test]
fn a_synced_write_makes_itself_and_every_earlier_batch_durable() {
    let disk = SimDisk::new();
    let store = open(&disk, Durability::Wal);
    append(&store, 0, 1, vec![keyed("a", "a"), keyed("b", "b")]);
    store
        .meta_write_derived(&[(b"derived".to_vec(), vec![])])
        .unwrap();
    store
        .put_outbox(&[([1; 16], b"effect".to_vec())], (0, 1))
        .unwrap();
    assert_eq!(disk.stats().unsynced_batches, 3);
    // A checkpoint always syncs, whatever the durability mode.
    store.put_checkpoint(0, 2, b"state").unwrap();
    assert_eq!(disk.stats().unsynced_batches, 0);
    append(&store, 0, 2, vec![keyed("c", "c")]);
    drop(store);

    let crashed = disk.crash(CrashKind::PowerLoss);
    assert_eq!((crashed.batches_lost, crashed.batches_kept), (1, 0));
    let store = open(&disk, Durability::Wal);
    assert_eq!(check_dedupe_and_seqs(&store), ["a", "b"]);
    assert_eq!(store.checkpoint(0).unwrap(), Some((2, b"state".to_vec())));
    assert_eq!(store.meta_get(b"derived").unwrap(), Some(vec![]));
    assert_eq!(store.outbox_pending().unwrap().len(), 1);
    // The lost key is new again; the seqs continue after what survived.
    assert_eq!(
        append(&store, 0, 3, vec![keyed("c", "c"), keyed("a", "a")]),
        [Some(3), None]
    );
}

#[test]
fn a_reopen_after_a_power_loss_sees_exactly_a_prefix_of_the_batches() {
    const APPENDS: usize = 6;
    let disk = SimDisk::new();
    let store = open(&disk, Durability::Wal);
    keyed_workload(&store, 0, APPENDS);
    // Each append is followed by its derived write: 2 batches per append.
    assert_eq!(disk.stats().unsynced_batches, 2 * APPENDS);
    for kept in 0..=2 * APPENDS + 1 {
        let fork = disk.fork(CrashKind::PowerLossKeeping {
            unsynced_batches: kept,
        });
        let reopened = open(&fork, Durability::Wal);
        let appended = kept.div_ceil(2).min(APPENDS);
        let mut expected: Vec<String> = (0..appended).map(|i| format!("tx:{i}")).collect();
        expected.sort();
        assert_eq!(check_dedupe_and_seqs(&reopened), expected, "kept {kept}");
        let states = reopened.meta_scan_prefix(b"state/").unwrap().len();
        assert_eq!(states, (kept / 2).min(APPENDS), "kept {kept}");
        // Every key re-sent: the survivors are duplicates, the lost ones are appended again.
        let resent: Vec<_> = (0..APPENDS)
            .map(|i| keyed(&format!("tx:{i}"), &format!("tx:{i}")))
            .collect();
        let seqs = append(&reopened, 7, 1_000, resent);
        let fresh = seqs.iter().filter(|s| s.is_some()).count();
        assert_eq!(fresh, APPENDS - appended, "kept {kept}");
    }
    // The running store was not disturbed by the forks.
    assert_eq!(check_dedupe_and_seqs(&store).len(), APPENDS);
}

/// Appends, derived writes, a checkpoint and a trim, ignoring refused writes; returns the keys
/// whose appends were acknowledged.
fn crash_point_workload(store: &Store) -> Vec<String> {
    let mut acknowledged = Vec::new();
    for i in 0..4u16 {
        let key = format!("tx:{i}");
        let records = vec![keyed(&key, &key), keyed("tx:0", "tx:0")];
        if store.append_blocking(batch(i % 2, 1, records)).is_ok() {
            acknowledged.push(key.clone());
        }
        let _ = store.meta_write_derived(&[(key.into_bytes(), vec![])]);
        if i == 1 {
            let _ = store.put_checkpoint(0, store.last_seq(0).unwrap(), b"s");
            let _ = store.trim(0, 1, 2);
        }
    }
    acknowledged
}

#[test]
fn a_record_and_its_dedupe_entry_never_split_at_any_crash_point() {
    // Stop the disk after every possible number of writes, with the refused write lost or in
    // the log, crash either way, and reopen: consistent every time, and every acknowledged
    // append that the durability mode promises is there.
    let total_writes = {
        let disk = SimDisk::new();
        crash_point_workload(&open(&disk, Durability::Wal));
        disk.stats().writes
    };
    assert!(total_writes >= 10, "{total_writes}");
    for stop_at in 0..=total_writes {
        for failed_write in [FailedWrite::Lost, FailedWrite::ReachedWal] {
            for durability in [Durability::Wal, Durability::Fsync] {
                for kind in [CrashKind::ProcessCrash, CrashKind::PowerLoss] {
                    let disk = SimDisk::new();
                    let store = open(&disk, durability);
                    disk.stop_after_writes(stop_at, failed_write);
                    let acknowledged = crash_point_workload(&store);
                    drop(store);
                    disk.crash(kind);
                    let store = open(&disk, durability);
                    let checkpointed = store.checkpoint(0).unwrap().map_or(0, |c| c.0);
                    let survived = check_after_checkpoint(&store, checkpointed);
                    let promised =
                        kind == CrashKind::ProcessCrash || durability == Durability::Fsync;
                    for key in acknowledged.iter().filter(|_| promised) {
                        // `tx:0` is partition 0's seq 1, which the trim may have removed.
                        assert!(
                            survived.contains(key) || key == "tx:0" && checkpointed > 0,
                            "acknowledged {key} lost (stop at {stop_at}, {failed_write:?}, \
                             {durability:?}, {kind:?})"
                        );
                    }
                }
            }
        }
    }
}

/// [`check_dedupe_and_seqs`] for a store whose partition 0 may be trimmed up to `checkpointed`.
fn check_after_checkpoint(store: &Store, checkpointed: u64) -> Vec<String> {
    let mut survived = Vec::new();
    for partition in [0u16, 1] {
        let after = if partition == 0 { checkpointed } else { 0 };
        let first = match store.replay(partition, 0, |_, _, _| Ok(())) {
            Ok(_) => 0,
            Err(StorageError::LogGap { .. }) => after,
            Err(e) => panic!("{e}"),
        };
        let records = replay_all(store, partition, first);
        let mut expected = first;
        for (seq, _, payload) in &records {
            expected += 1;
            assert_eq!(*seq, expected);
            let hit = store.inner.backend.get(Cf::Dedupe, payload).unwrap();
            let hit = DedupeHit::decode(&hit.expect("record without its dedupe entry")).unwrap();
            assert_eq!((hit.partition, hit.seq), (partition, *seq));
            survived.push(String::from_utf8(payload.clone()).unwrap());
        }
        assert_eq!(store.last_seq(partition).unwrap(), expected.max(after));
    }
    survived
}

#[test]
fn writes_after_the_crash_point_fail_and_apply_nothing() {
    let disk = SimDisk::new();
    let store = open(&disk, Durability::Fsync);
    disk.stop_after_writes(1, FailedWrite::Lost);
    append(&store, 0, 1, vec![keyed("a", "a")]);
    let err = store
        .append_blocking(batch(0, 2, vec![keyed("b", "b")]))
        .unwrap_err();
    assert!(matches!(err, StorageError::Injected(_)), "{err}");
    assert!(store.meta_put(b"k", b"v").is_err());
    assert!(store.put_checkpoint(0, 1, b"s").is_err());
    // Nothing of the refused writes is visible, and reads go on.
    assert_eq!(store.last_seq(0).unwrap(), 1);
    assert_eq!(store.meta_get(b"k").unwrap(), None);
    assert_eq!(replay_all(&store, 0, 0).len(), 1);
    // The failed log write fenced the store: the later writes never reached the disk.
    assert_eq!(disk.stats().refused_writes, 1);
    assert_eq!(store.stats().write_errors, 1);

    drop(store);
    disk.crash(CrashKind::ProcessCrash);
    let store = open(&disk, Durability::Fsync);
    assert_eq!(check_dedupe_and_seqs(&store), ["a"]);
    // The crash cleared the crash point.
    assert_eq!(append(&store, 0, 3, vec![keyed("b", "b")]), [Some(2)]);
}

#[test]
fn a_refused_write_that_reached_the_wal_survives_a_process_crash_only() {
    for (kind, survives) in [
        (CrashKind::ProcessCrash, true),
        (CrashKind::PowerLoss, false),
    ] {
        let disk = SimDisk::new();
        let store = open(&disk, Durability::Fsync);
        append(&store, 0, 1, vec![keyed("a", "a")]);
        disk.stop_after_writes(0, FailedWrite::ReachedWal);
        assert!(
            store
                .append_blocking(batch(0, 2, vec![keyed("b", "b")]))
                .is_err()
        );
        // Answered as failed and invisible; the next write is refused and lost.
        assert_eq!(store.last_seq(0).unwrap(), 1);
        assert!(store.meta_put(b"k", b"v").is_err());
        drop(store);
        disk.crash(kind);
        let store = open(&disk, Durability::Fsync);
        let expected: &[&str] = if survives { &["a", "b"] } else { &["a"] };
        assert_eq!(check_dedupe_and_seqs(&store), expected, "{kind:?}");
        assert_eq!(store.meta_get(b"k").unwrap(), None);
    }
}

#[test]
fn a_store_of_a_crashed_process_fails_every_operation() {
    let disk = SimDisk::new();
    let old = open(&disk, Durability::Wal);
    append(&old, 0, 1, vec![unkeyed("a")]);
    disk.crash(CrashKind::ProcessCrash);
    assert!(!disk.is_open());
    let new = open(&disk, Durability::Wal);
    for err in [
        old.append_blocking(batch(0, 2, vec![unkeyed("b")]))
            .unwrap_err(),
        old.meta_put(b"k", b"v").unwrap_err(),
        old.meta_get(b"k").unwrap_err(),
        old.outbox_pending().unwrap_err(),
    ] {
        // The first failed write fences the store: later writes stop before the disk.
        assert!(
            matches!(err, StorageError::SimDisk(_) | StorageError::Fenced),
            "{err}"
        );
    }
    // Dropping the dead store does not unlock the disk under the new one.
    drop(old);
    assert!(disk.is_open());
    assert_eq!(append(&new, 0, 2, vec![unkeyed("b")]), [Some(2)]);
}

#[test]
fn a_second_store_on_an_open_disk_is_refused_until_the_first_is_dropped() {
    let disk = SimDisk::new();
    let first = open(&disk, Durability::Wal);
    let err = Store::open_sim(&disk, StoreOptions::default(), None)
        .err()
        .unwrap();
    assert!(matches!(err, StorageError::SimDisk(_)), "{err}");
    // A clone is the same store, not a second open.
    let clone = first.clone();
    drop(first);
    assert!(disk.is_open());
    drop(clone);
    assert!(!disk.is_open());
    open(&disk, Durability::Wal);
}

#[test]
fn the_same_run_gives_the_same_disk_digest() {
    let run = |extra: bool| {
        let disk = SimDisk::new();
        let store = open(&disk, Durability::Fsync);
        keyed_workload(&store, 0, 5);
        store.put_checkpoint(1, 2, b"s").unwrap();
        store.trim(1, 2, 10).unwrap();
        if extra {
            store.meta_put(b"extra", b"").unwrap();
        }
        (disk.digest(), disk.stats())
    };
    assert_eq!(run(false), run(false));
    assert_ne!(run(false).0, run(true).0);
}

#[test]
fn an_inline_append_is_ready_at_once_and_blocking_appends_work_inside_a_runtime() {
    let disk = SimDisk::new();
    let store = open(&disk, Durability::Wal);
    let mut future = pin!(store.append(batch(0, 1, vec![keyed("k", "a")])));
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(appended) => assert_eq!(appended.unwrap().seqs, [Some(1)]),
        Poll::Pending => panic!("an inline append must not wait"),
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let seqs =
        runtime.block_on(async { append(&store, 0, 2, vec![keyed("k", "a"), unkeyed("b")]) });
    assert_eq!(seqs, [None, Some(2)]);
}

#[test]
fn copy_to_of_a_sim_store_opens_as_rocksdb_with_the_same_contents() {
    let disk = SimDisk::new();
    let store = open(&disk, Durability::Wal);
    keyed_workload(&store, 0, 4);
    store
        .put_outbox(&[([5; 16], b"e".to_vec())], (0, 1))
        .unwrap();
    store.put_checkpoint(0, 1, b"s").unwrap();
    let dir = TempDir::new().unwrap();
    let copy = dir.path().join("copy");
    store.copy_to(&copy).unwrap();
    assert!(matches!(
        store.copy_to(&copy),
        Err(StorageError::SimDisk(_))
    ));

    let rocks = Store::open(&copy, options(Durability::Wal, 1000)).unwrap();
    assert_eq!(check_dedupe_and_seqs(&rocks), check_dedupe_and_seqs(&store));
    for partition in [0, 1] {
        assert_eq!(
            replay_all(&rocks, partition, 0),
            replay_all(&store, partition, 0)
        );
    }
    assert_eq!(
        rocks.meta_scan_prefix(b"").unwrap(),
        store.meta_scan_prefix(b"").unwrap()
    );
    assert_eq!(
        rocks.outbox_pending().unwrap(),
        store.outbox_pending().unwrap()
    );
    assert_eq!(rocks.checkpoint(0).unwrap(), Some((1, b"s".to_vec())));
}

#[test]
fn recovered_seqs_come_from_the_last_log_key_of_each_partition() {
    // The skip-scan of `recover_seqs` uses `seek_for_prev`, the one reverse read.
    let disk = SimDisk::new();
    {
        let store = open(&disk, Durability::Wal);
        for partition in [0, 3, u16::MAX] {
            for at_ms in 0..=i64::from(partition % 5) {
                append(&store, partition, at_ms, vec![unkeyed("x")]);
            }
        }
    }
    disk.crash(CrashKind::ProcessCrash);
    let store = open(&disk, Durability::Wal);
    assert_eq!(
        [0, 3, u16::MAX].map(|p| store.last_seq(p).unwrap()),
        [1, 4, 1]
    );
    let mut cursor = store
        .inner
        .backend
        .cursor(Cf::Log, CursorOptions::new())
        .unwrap();
    cursor.seek_to_first();
    assert_eq!(parse_log_key(cursor.key().unwrap()).unwrap(), (0, 1));
}

#[test]
fn after_a_failed_log_write_the_store_writes_nothing_more_so_no_seq_is_given_twice() {
    let disk = SimDisk::new();
    let store = open(&disk, Durability::Fsync);
    append(&store, 0, 1, vec![keyed("a", "a")]);
    // An fsync that fails after the record reached the write-ahead log ...
    disk.stop_after_writes(0, FailedWrite::ReachedWal);
    assert!(
        store
            .append_blocking(batch(0, 2, vec![keyed("b", "b")]))
            .is_err()
    );
    // ... and a disk that takes writes again (RocksDB would refuse until reopened).
    disk.stop_after_writes(u64::MAX, FailedWrite::Lost);
    // The store refuses: seq 2 may be b's, so it is never given to c.
    assert!(
        store
            .append_blocking(batch(0, 3, vec![keyed("c", "c")]))
            .is_err()
    );
    assert!(
        store.meta_put(b"k", b"v").is_err(),
        "fenced for every write"
    );
    drop(store);
    disk.crash(CrashKind::ProcessCrash);
    let store = open(&disk, Durability::Fsync);
    // b survived in the log with its dedupe entry; c was never written: a retry of c applies.
    assert_eq!(check_dedupe_and_seqs(&store), ["a", "b"]);
    assert_eq!(append(&store, 0, 4, vec![keyed("c", "c")]), [Some(3)]);
}

/// A webhook's lazy "delivered" mark: kept by a process crash; lost by a power loss until the
/// next synced write carries it, and then the effect is pending again (delivered once more).
/// A payment's mark (`mark_delivered`) is synced by itself in `fsync` mode.
#[test]
fn a_lazy_delivered_mark_is_lost_only_by_a_power_loss_before_the_next_fsync() {
    let (webhook, payment) = ([7u8; 16], [8u8; 16]);
    let pending_ids = |store: &Store| -> Vec<Uuid16> {
        store
            .outbox_pending()
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    };
    for kind in [CrashKind::ProcessCrash, CrashKind::PowerLoss] {
        let disk = SimDisk::new();
        let store = open(&disk, Durability::Fsync);
        append(&store, 0, 1, vec![keyed("tx:a", "a")]);
        store
            .put_outbox(&[(webhook, vec![1]), (payment, vec![2])], (0, 1))
            .unwrap();
        append(&store, 0, 2, vec![keyed("tx:b", "b")]);
        // The synced mark first: a synced write makes every earlier batch durable with it.
        store.mark_delivered(payment, (0, 1)).unwrap();
        store.mark_delivered_lazily(webhook, (0, 1)).unwrap();
        drop(store);
        disk.crash(kind);
        let store = open(&disk, Durability::Fsync);
        let expected: Vec<Uuid16> = if kind == CrashKind::PowerLoss {
            vec![webhook]
        } else {
            vec![]
        };
        assert_eq!(pending_ids(&store), expected, "{kind:?}");
    }
    // The next synced write makes the lazy mark durable.
    let disk = SimDisk::new();
    let store = open(&disk, Durability::Fsync);
    store.put_outbox(&[(webhook, vec![1])], (0, 1)).unwrap();
    store.mark_delivered_lazily(webhook, (0, 1)).unwrap();
    append(&store, 0, 1, vec![keyed("tx:c", "c")]);
    drop(store);
    disk.crash(CrashKind::PowerLoss);
    assert!(pending_ids(&open(&disk, Durability::Fsync)).is_empty());
}

#[test]
fn a_lazy_outbox_update_is_lost_only_by_a_power_loss_and_the_pending_check_sees_every_move() {
    let (webhook, delivered) = ([7u8; 16], [8u8; 16]);
    for kind in [CrashKind::ProcessCrash, CrashKind::PowerLoss] {
        let disk = SimDisk::new();
        let store = open(&disk, Durability::Fsync);
        store
            .put_outbox(&[(webhook, vec![1]), (delivered, vec![2])], (0, 1))
            .unwrap();
        append(&store, 0, 1, vec![keyed("tx:a", "a")]);
        store.mark_delivered(delivered, (0, 1)).unwrap();
        assert_eq!(
            store
                .outbox_contains(&[webhook, delivered, [9; 16]])
                .unwrap(),
            [true, false, false]
        );
        assert!(store.update_outbox_lazily(webhook, &[1, 1]).unwrap());
        assert!(
            !store.update_outbox_lazily(delivered, &[2, 2]).unwrap(),
            "a delivered effect is not written back"
        );
        drop(store);
        disk.crash(kind);
        let store = open(&disk, Durability::Fsync);
        let expected = if kind == CrashKind::PowerLoss {
            vec![1]
        } else {
            vec![1, 1]
        };
        assert_eq!(
            store.outbox_pending().unwrap(),
            [(webhook, expected)],
            "{kind:?}"
        );
    }
}

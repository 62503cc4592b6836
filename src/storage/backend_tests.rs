//! The backend contract (`backend.rs`), checked on RocksDB and on the simulated disk alike: the
//! simulation is only worth its seeds if its answers are RocksDB's.

use std::sync::Arc;

use tempfile::TempDir;

use super::StorageError;
use super::backend::{Backend, Batch, Cf, CursorOptions};
use super::rocks::RocksBackend;
use super::sim::SimDisk;

/// A backend of each kind, with the directory that keeps the RocksDB one alive.
fn backends() -> Vec<(&'static str, Box<dyn Backend>, Option<TempDir>)> {
    let dir = TempDir::new().unwrap();
    let rocks: Box<dyn Backend> = Box::new(RocksBackend::open(dir.path()).unwrap());
    let disk = SimDisk::new();
    let sim: Box<dyn Backend> = Box::new(disk.open_backend().unwrap());
    vec![("rocksdb", rocks, Some(dir)), ("sim", sim, None)]
}

fn write(backend: &dyn Backend, ops: impl FnOnce(&mut Batch)) {
    let mut batch = Batch::default();
    ops(&mut batch);
    backend.write(batch, false).unwrap();
}

/// Every `(key, value)` of `cf` from `from` on, below `upper_bound`.
fn scan(backend: &dyn Backend, cf: Cf, from: &[u8], upper_bound: Option<&[u8]>) -> Vec<Vec<u8>> {
    let mut cursor = backend
        .cursor(cf, CursorOptions::new().upper_bound(upper_bound))
        .unwrap();
    cursor.seek(from);
    let mut keys = Vec::new();
    while let Some((key, _)) = cursor.item() {
        keys.push(key.to_vec());
        cursor.next();
    }
    cursor.status().unwrap();
    keys
}

fn keys(names: &[&str]) -> Vec<Vec<u8>> {
    names.iter().map(|n| n.as_bytes().to_vec()).collect()
}

#[test]
fn backends_read_what_was_written_per_column_family() {
    for (name, backend, _dir) in backends() {
        let backend = &*backend;
        write(backend, |b| {
            b.put(Cf::Meta, b"a", b"1");
            b.put(Cf::Meta, b"b", b"2");
            b.put(Cf::Outbox, b"a", b"other family");
        });
        assert_eq!(
            backend.get(Cf::Meta, b"a").unwrap(),
            Some(b"1".to_vec()),
            "{name}"
        );
        assert_eq!(backend.get(Cf::Log, b"a").unwrap(), None, "{name}");
        assert_eq!(
            backend
                .multi_get(Cf::Meta, &[b"b", b"zz", b"a"], false)
                .unwrap(),
            [Some(b"2".to_vec()), None, Some(b"1".to_vec())],
            "{name}"
        );
        assert!(backend.multi_get(Cf::Meta, &[], true).unwrap().is_empty());

        // Within a batch, later operations win.
        write(backend, |b| {
            b.put(Cf::Meta, b"a", b"3");
            b.delete(Cf::Meta, b"a");
            b.delete(Cf::Meta, b"b");
            b.put(Cf::Meta, b"b", b"4");
            b.delete(Cf::Meta, b"never there");
        });
        assert_eq!(backend.get(Cf::Meta, b"a").unwrap(), None, "{name}");
        assert_eq!(
            backend.get(Cf::Meta, b"b").unwrap(),
            Some(b"4".to_vec()),
            "{name}"
        );
        assert_eq!(
            backend.get(Cf::Outbox, b"a").unwrap(),
            Some(b"other family".to_vec()),
            "{name}"
        );
        // An empty value is a value, not an absence.
        write(backend, |b| b.put(Cf::Meta, b"empty", b""));
        assert_eq!(
            backend.get(Cf::Meta, b"empty").unwrap(),
            Some(vec![]),
            "{name}"
        );
    }
}

#[test]
fn backends_delete_exactly_the_half_open_range() {
    for (name, backend, _dir) in backends() {
        let backend = &*backend;
        write(backend, |b| {
            for key in ["a", "b", "ba", "c", "d"] {
                b.put(Cf::Log, key.as_bytes(), b"v");
            }
        });
        write(backend, |b| b.delete_range(Cf::Log, b"b", b"c"));
        assert_eq!(
            scan(backend, Cf::Log, b"", None),
            keys(&["a", "c", "d"]),
            "{name}"
        );
        // A range put back in the same batch after its delete is there.
        write(backend, |b| {
            b.delete_range(Cf::Log, b"a", b"z");
            b.put(Cf::Log, b"c", b"again");
        });
        assert_eq!(scan(backend, Cf::Log, b"", None), keys(&["c"]), "{name}");
    }
}

#[test]
fn backend_cursors_seek_step_and_stop_at_the_upper_bound() {
    for (name, backend, _dir) in backends() {
        let backend = &*backend;
        write(backend, |b| {
            for key in ["b", "d", "f", "h"] {
                b.put(Cf::Meta, key.as_bytes(), key.as_bytes());
            }
        });
        assert_eq!(
            scan(backend, Cf::Meta, b"c", None),
            keys(&["d", "f", "h"]),
            "{name}"
        );
        assert_eq!(
            scan(backend, Cf::Meta, b"d", Some(b"h")),
            keys(&["d", "f"]),
            "{name}"
        );
        assert!(scan(backend, Cf::Meta, b"i", None).is_empty(), "{name}");
        assert!(
            scan(backend, Cf::Meta, b"", Some(b"b")).is_empty(),
            "{name}"
        );

        let mut cursor = backend.cursor(Cf::Meta, CursorOptions::new()).unwrap();
        cursor.seek_to_first();
        assert_eq!(cursor.item(), Some((&b"b"[..], &b"b"[..])), "{name}");
        cursor.seek_for_prev(b"e");
        assert_eq!(cursor.key(), Some(&b"d"[..]), "{name}");
        cursor.seek_for_prev(b"f");
        assert_eq!(cursor.key(), Some(&b"f"[..]), "{name}");
        cursor.seek_for_prev(b"zzz");
        assert_eq!(cursor.key(), Some(&b"h"[..]), "{name}");
        cursor.next();
        assert_eq!(cursor.key(), None, "{name}");
        cursor.seek_for_prev(b"a");
        assert_eq!(cursor.key(), None, "{name}");
        cursor.status().unwrap();

        let mut empty = backend.cursor(Cf::Log, CursorOptions::new()).unwrap();
        empty.seek_to_first();
        assert_eq!(empty.item(), None, "{name}");
    }
}

#[test]
fn backend_cursors_read_the_snapshot_of_their_creation() {
    for (name, backend, _dir) in backends() {
        let backend = &*backend;
        write(backend, |b| {
            b.put(Cf::Log, b"a", b"old");
            b.put(Cf::Log, b"c", b"old");
        });
        let mut cursor = backend
            .cursor(Cf::Log, CursorOptions::new().no_fill_cache())
            .unwrap();
        write(backend, |b| {
            b.put(Cf::Log, b"b", b"new");
            b.put(Cf::Log, b"c", b"new");
            b.delete(Cf::Log, b"a");
        });
        cursor.seek_to_first();
        let mut seen = Vec::new();
        while let Some((key, value)) = cursor.item() {
            seen.push((key.to_vec(), value.to_vec()));
            cursor.next();
        }
        assert_eq!(
            seen,
            [
                (b"a".to_vec(), b"old".to_vec()),
                (b"c".to_vec(), b"old".to_vec())
            ],
            "{name}"
        );
        assert_eq!(
            scan(backend, Cf::Log, b"", None),
            keys(&["b", "c"]),
            "{name}"
        );
    }
}

#[test]
fn backends_copy_to_an_openable_rocksdb_and_refuse_an_existing_dir() {
    for (name, backend, _dir) in backends() {
        let backend = &*backend;
        let scratch = TempDir::new().unwrap();
        write(backend, |b| {
            b.put(Cf::Meta, b"m", b"1");
            b.put(Cf::Dedupe, b"tx:1", b"hit");
        });
        let copy = scratch.path().join("copy");
        backend.copy_to(&copy).unwrap();
        // Writes after the copy are not in it.
        write(backend, |b| b.put(Cf::Meta, b"later", b"2"));
        let err = backend.copy_to(&copy).unwrap_err();
        assert!(
            matches!(err, StorageError::Rocks(_) | StorageError::SimDisk(_)),
            "{name}: {err}"
        );
        let copied = RocksBackend::open(&copy).unwrap();
        assert_eq!(
            copied.get(Cf::Meta, b"m").unwrap(),
            Some(b"1".to_vec()),
            "{name}"
        );
        assert_eq!(copied.get(Cf::Meta, b"later").unwrap(), None, "{name}");
        assert_eq!(
            copied.get(Cf::Dedupe, b"tx:1").unwrap(),
            Some(b"hit".to_vec()),
            "{name}"
        );
    }
}

#[test]
fn a_sim_cursor_keeps_its_snapshot_while_its_table_is_rewritten() {
    // The copy-on-write path: the write copies the table the cursor still reads.
    let disk = SimDisk::new();
    let backend = Arc::new(disk.open_backend().unwrap());
    write(&*backend, |b| b.put(Cf::Meta, b"k", b"v1"));
    let mut cursor = backend.cursor(Cf::Meta, CursorOptions::new()).unwrap();
    write(&*backend, |b| b.put(Cf::Meta, b"k", b"v2"));
    cursor.seek(b"k");
    assert_eq!(cursor.item(), Some((&b"k"[..], &b"v1"[..])));
    assert_eq!(backend.get(Cf::Meta, b"k").unwrap(), Some(b"v2".to_vec()));
}

//! The storage seam tests use to fail: a [`FaultInjector`] is asked before every write and read
//! the store makes, and an error it returns is answered exactly as a failing disk would be
//! (nothing of that operation is written). Production stores have none.
//!
//! This is how tests (and the simulation) make a read or a write fail, or stop the store
//! between any two writes: fail every write after the n-th
//! ([`ScriptedFaults::fail_writes_from`]), then reopen the directory without faults and recover
//! from what survived. It works the same on RocksDB and on the simulated disk. The injector is
//! asked once per store operation, before it touches the database; to stop between the
//! database writes *inside* one operation (a trim writes several batches), set a crash point on
//! the simulated disk instead (`sim::SimDisk::stop_after_writes`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use super::StorageError;

/// What the store is about to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageOp {
    /// A group commit of log appends (all partitions of the group).
    Append,
    /// A `meta` write (states, indexes, profiles, late events, quarantine).
    MetaWrite,
    /// An outbox write, update, delivery mark or dead-letter move.
    OutboxWrite,
    /// A checkpoint record.
    Checkpoint,
    /// Trimming the log, outbox and dedupe entries.
    Trim,
    /// Any read (states, outbox, log replay, scans) but the next.
    Read,
    /// The point read of whether effects are still pending in the outbox.
    OutboxRead,
}

/// Decides whether an operation fails.
pub trait FaultInjector: Send + Sync + 'static {
    /// # Errors
    /// The error the operation fails with.
    fn before(&self, op: StorageOp) -> Result<(), StorageError>;
}

/// Shared handle to an injector.
pub type Faults = Arc<dyn FaultInjector>;

impl StorageOp {
    /// Every operation but [`StorageOp::Read`] and [`StorageOp::OutboxRead`] writes.
    pub fn is_write(self) -> bool {
        !matches!(self, StorageOp::Read | StorageOp::OutboxRead)
    }
}

/// Which operations a [`ScriptedFaults`] script counts and fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    One(StorageOp),
    AnyWrite,
}

impl Target {
    fn matches(self, op: StorageOp) -> bool {
        match self {
            Target::One(kind) => kind == op,
            Target::AnyWrite => op.is_write(),
        }
    }
}

/// A scriptable injector: fail one kind of operation, or every write, from the n-th on, or fail
/// everything from now on ("the disk is gone").
#[derive(Debug, Default)]
pub struct ScriptedFaults {
    /// Operations of the scripted target seen so far.
    seen: AtomicU64,
    /// Fail the scripted target once `seen` reaches this (u64::MAX: never).
    fail_from: AtomicU64,
    target: std::sync::Mutex<Option<Target>>,
    everything: AtomicBool,
}

impl ScriptedFaults {
    pub fn new() -> Arc<ScriptedFaults> {
        Arc::new(ScriptedFaults {
            fail_from: AtomicU64::new(u64::MAX),
            ..ScriptedFaults::default()
        })
    }

    /// Fails operations of `kind` from the `nth` (0-based, counted from now) on.
    pub fn fail_from(&self, kind: StorageOp, nth: u64) {
        self.script(Target::One(kind), nth);
    }

    /// Fails every write operation (any kind but the reads) from the `nth` (0-based,
    /// counted from now) on: a crash point between any two of the store's writes. Reads go on.
    pub fn fail_writes_from(&self, nth: u64) {
        self.script(Target::AnyWrite, nth);
    }

    fn script(&self, target: Target, nth: u64) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Some(target);
        self.seen.store(0, SeqCst);
        self.fail_from.store(nth, SeqCst);
    }

    /// Fails every operation from now on.
    pub fn fail_everything(&self) {
        self.everything.store(true, SeqCst);
    }

    /// Stops failing.
    pub fn heal(&self) {
        self.everything.store(false, SeqCst);
        self.fail_from.store(u64::MAX, SeqCst);
    }
}

impl FaultInjector for ScriptedFaults {
    fn before(&self, op: StorageOp) -> Result<(), StorageError> {
        let injected = || Err(StorageError::Injected(format!("{op:?}")));
        if self.everything.load(SeqCst) {
            return injected();
        }
        let target = *self.target.lock().unwrap_or_else(|e| e.into_inner());
        if target.is_some_and(|t| t.matches(op))
            && self.seen.fetch_add(1, SeqCst) >= self.fail_from.load(SeqCst)
        {
            return injected();
        }
        Ok(())
    }
}

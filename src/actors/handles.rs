//! The handles actors reach each other with, and the messages that travel on them.
//!
//! Every handle here is created before any actor starts (a channel's sending end, or an actix
//! mailbox made ahead of its actor), so the engine is wired in one pass: no late-bound
//! `OnceLock`s, and no actor module imports another to send to it. Data flows one way: the
//! engine submits to partitions, customer actors hand persisted effects to the webhook and
//! payment actors, and late usage is released back through the engine.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use actix::dev::channel::{self, AddressReceiver};
use actix::{Actor, Addr, Context, Message, Recipient};
use tokio::sync::{mpsc, oneshot};

use super::entry::{LogEntry, PersistedCustomer};
use super::error::EngineError;
use super::outbox::OutboxEntry;
use crate::domain::Id;
use crate::domain::customer::Applied;
use crate::storage::{Appended, Uuid16};

/// One record to append.
pub struct PendingRecord {
    pub dedupe_key: Option<Vec<u8>>,
    pub entry: LogEntry,
    /// Who waits for the domain's verdict on this input (control inputs).
    pub reply: Option<oneshot::Sender<Result<Applied, EngineError>>>,
}

/// Records for one partition, acknowledged once durable.
pub struct Submission {
    pub records: Vec<PendingRecord>,
    pub ack: oneshot::Sender<Result<Appended, EngineError>>,
}

/// A read of a customer's state, run by its actor.
pub type QueryFn = Box<dyn FnOnce(&PersistedCustomer) -> Box<dyn Any + Send> + Send>;

pub enum Control {
    Query {
        customer: Id,
        f: QueryFn,
        reply: oneshot::Sender<Box<dyn Any + Send>>,
    },
    /// Write a checkpoint now (tests, shutdown); answers when done.
    Checkpoint(oneshot::Sender<Result<u64, EngineError>>),
}

/// The sending ends of a partition's queues.
#[derive(Clone)]
pub struct PartitionHandle {
    pub submit: mpsc::Sender<Submission>,
    pub control: mpsc::UnboundedSender<Control>,
}

/// The receiving ends, handed to the partition when it starts.
pub struct PartitionQueues {
    pub submit: mpsc::Receiver<Submission>,
    pub control: mpsc::UnboundedReceiver<Control>,
}

/// A partition's queues: the handle to keep, the queues to start it with.
pub fn partition_queues(submit_capacity: usize) -> (PartitionHandle, PartitionQueues) {
    let (submit_tx, submit_rx) = mpsc::channel(submit_capacity);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    (
        PartitionHandle {
            submit: submit_tx,
            control: control_tx,
        },
        PartitionQueues {
            submit: submit_rx,
            control: control_rx,
        },
    )
}

/// Webhook entries already persisted in the outbox by the caller (a customer actor): deliver
/// them. Entries that are not webhooks, that the webhook actor already tracks, or that are no
/// longer pending in the outbox (delivered or dead-lettered before a replay re-created them)
/// are ignored.
///
/// Fire-and-forget (`do_send`) is enough: the entries are durable, and every pending entry is
/// reloaded from the outbox when the actor starts.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Enqueue(pub Vec<(Uuid16, OutboxEntry)>);

/// Payment requests already persisted in the outbox.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PaymentJobs(pub Vec<(Uuid16, OutboxEntry)>);

/// A late key that may now resolve: its events are re-submitted to their customer.
#[derive(Debug)]
pub struct LateRelease {
    pub keys: Vec<String>,
}

/// The queue of late keys to release, with a count of the releases sent and not yet done
/// (so that a test can wait until every release it caused has run).
#[derive(Clone)]
pub struct LateReleases {
    tx: mpsc::UnboundedSender<LateRelease>,
    pending: Arc<AtomicUsize>,
}

impl LateReleases {
    /// The queue and its receiving end.
    pub fn channel() -> (LateReleases, mpsc::UnboundedReceiver<LateRelease>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        (LateReleases { tx, pending }, rx)
    }

    /// Queues a release of `keys` (dropped when the engine is gone).
    pub fn send(&self, keys: Vec<String>) {
        self.pending.fetch_add(1, Relaxed);
        if self.tx.send(LateRelease { keys }).is_err() {
            self.pending.fetch_sub(1, Relaxed);
        }
    }

    /// Marks one release as done (by the loop that received it).
    pub fn done(&self) {
        self.pending.fetch_sub(1, Relaxed);
    }

    /// Releases queued or running.
    pub fn pending(&self) -> usize {
        self.pending.load(Relaxed)
    }
}

/// Where persisted effects and released late keys go.
pub struct Sinks {
    pub webhooks: Recipient<Enqueue>,
    pub payments: Recipient<PaymentJobs>,
    pub late_release: LateReleases,
}

impl Sinks {
    /// Sinks whose receivers are gone: what is sent is dropped. For benches and tests that
    /// drive customer actors without the webhook and payment actors.
    pub fn detached<W, P>() -> Sinks
    where
        W: Actor<Context = Context<W>> + actix::Handler<Enqueue>,
        P: Actor<Context = Context<P>> + actix::Handler<PaymentJobs>,
    {
        let (webhooks, _) = Mailbox::<W>::new();
        let (payments, _) = Mailbox::<P>::new();
        Sinks {
            webhooks: webhooks.recipient(),
            payments: payments.recipient(),
            late_release: LateReleases::channel().0,
        }
    }
}

/// Where the engine's actors and background work run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// Production: each partition, the webhook actor and the payment actor on an arbiter
    /// (thread) of its own; recovery, cold state loads and trims on threads of their own.
    #[default]
    Threads,
    /// Everything on the caller's arbiter and nothing on another thread: on a current-thread
    /// runtime with paused time and a store that appends inline, a run depends only on its
    /// inputs (the simulation's deterministic mode).
    CurrentThread,
}

/// Messages in an actor's mailbox before they are handled (actix's default).
const MAILBOX_CAPACITY: usize = 16;

/// An actor's mailbox made before the actor: its address can be handed out at once, and the
/// actor is started on it later with [`Mailbox::start_on_new_arbiter`].
pub struct Mailbox<A: Actor<Context = Context<A>>> {
    receiver: AddressReceiver<A>,
}

impl<A: Actor<Context = Context<A>>> Mailbox<A> {
    pub fn new() -> (Addr<A>, Mailbox<A>) {
        let (sender, receiver) = channel::channel(MAILBOX_CAPACITY);
        (Addr::new(sender), Mailbox { receiver })
    }

    /// Runs the actor `make` builds on this mailbox: on a new arbiter (thread) of its own, or
    /// on the current one.
    pub fn start(
        self,
        placement: Placement,
        make: impl FnOnce(&mut Context<A>) -> A + Send + 'static,
    ) {
        let receiver = self.receiver;
        let run = move || {
            let mut ctx = Context::with_receiver(receiver);
            let actor = make(&mut ctx);
            actix_rt::spawn(ctx.into_future(actor));
        };
        match placement {
            Placement::CurrentThread => run(),
            Placement::Threads => {
                let arbiter = actix::Arbiter::new();
                arbiter.spawn_fn(run);
                // The arbiter keeps running after its handle drops.
                std::mem::forget(arbiter);
            }
        }
    }
}

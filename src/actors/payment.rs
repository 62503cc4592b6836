//! `PaymentActor`: carries out the payment requests of STRIPE gates through a
//! [`PaymentProvider`] and turns what it learns into inputs on the customer's log.
//!
//! NONE gates release inside the domain and EXTERNAL gates wait for the operator, so only
//! provider-collected charges come here. Each request is an outbox entry, kept until it is done:
//! - **Charge**: reconcile first (first try, retry, restart): find the workflow's object by
//!   `metadata.workflow_id` and continue with it; create only when the provider answered that
//!   there is none. The object's id is logged (`Pending`) before anything else, then each state
//!   as it is seen: a decided one as the workflow's outcome, an undecided one (`processing`,
//!   ACTION_REQUIRED) polled with backoff until it is decided. 409 and 400 `idempotency_error`
//!   are retried as reconciliations, never declines. Its entry is retired by the workflow's
//!   Close, whoever decided it (this actor or Stripe's webhook).
//! - **Close**: the workflow ended: retire the charge; after a FAILED end also cancel the
//!   PaymentIntent or void the invoice. If that finds the money collected after all, it reports
//!   `Paid`, which the domain answers with a refund.
//! - **Refund**: refund in full and log `Refunded` (the domain then sends
//!   `payment_gate.payment_refunded`).
//!
//! Time comes from the engine's clock; due jobs are looked for on a short real-time interval, so
//! a manual clock drives retries and polls in tests.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, AsyncContext, Context, Handler, Message};
use tokio::sync::oneshot;

use super::entry::LogEntry;
use super::handles::{Mailbox, PendingRecord, Submission};
use super::outbox::{OUTBOX_VERSION, OutboxEffect, OutboxEntry, payment_outbox_id};
use super::shared::Shared;
use crate::domain::customer::Input;
use crate::domain::effects::{PaymentAction, PaymentRequest};
use crate::domain::gate::{OutcomeSource, PaymentOutcome, PaymentResult, ProviderError};
use crate::domain::{Id, Rejection};
use crate::payments::{Answer, ChargeStatus, PaymentProvider, ProviderObject, Refusal};
use crate::storage;

/// How the actor paces its work (`[payments]` in the config).
#[derive(Clone, Debug)]
pub struct PaymentSettings {
    /// ACTION_REQUIRED ends FAILED after this long; logged with each ACTION_REQUIRED outcome.
    pub action_required_timeout_ms: i64,
    /// First retry or poll delay, doubling up to `retry_max_ms`.
    pub retry_first_ms: i64,
    pub retry_max_ms: i64,
    /// How often (real time) due jobs are looked for.
    pub scan_interval_ms: u64,
}

impl Default for PaymentSettings {
    fn default() -> PaymentSettings {
        PaymentSettings {
            action_required_timeout_ms: 24 * 3_600_000,
            retry_first_ms: 1_000,
            retry_max_ms: 15 * 60 * 1_000,
            scan_interval_ms: 1_000,
        }
    }
}

/// A provider and how to pace it.
#[derive(Clone)]
pub struct Payments {
    pub provider: Arc<dyn PaymentProvider>,
    pub settings: PaymentSettings,
}

pub use super::handles::PaymentJobs;

/// What this run remembers of a charge; rebuilt by reconciling after a restart.
#[derive(Clone, Debug, Default)]
struct Memo {
    /// The object id already logged.
    recorded: Option<String>,
    /// When ACTION_REQUIRED was first seen (the deadline estimate).
    action_since_ms: Option<i64>,
    /// A create was sent: an object may exist that Stripe's search does not show yet.
    create_sent: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Find the object (create it if there is none) and act on its state.
    Reconcile,
    /// Read the object again.
    Poll(String),
    /// The outcome is logged; the workflow's Close retires the job.
    Wait,
}

enum Next {
    /// No progress: the same step after the backoff.
    Retry {
        step: Step,
        error: String,
    },
    /// Undecided: look again after the backoff.
    Poll(String),
    Wait,
    /// Finished: retire the entry.
    Done,
}

struct Job {
    entry: OutboxEntry,
    request: PaymentRequest,
    step: Step,
    due_ms: i64,
    running: bool,
    /// Tries since the last progress (backoff exponent).
    tries: u32,
    memo: Memo,
    /// An operator's cancel (its token) holds the charge: no step of it starts (nothing is
    /// created or confirmed) until that cancel is logged, answered otherwise, or the Close
    /// retires the charge. Only the holder's token lets it go.
    held: Option<u64>,
    /// A cancel waiting for the running step to finish.
    cancel_waiting: Option<WaitingCancel>,
}

struct WaitingCancel {
    request: PaymentRequest,
    token: u64,
    reply: oneshot::Sender<CancelAnswer>,
}

/// An operator's cancel of a STRIPE workflow in flight (SPEC 3.1), asked of this actor before
/// the cancel is logged: the provider's object is cancelled (PaymentIntent) or voided (invoice).
pub enum ChargeCancel {
    /// Hold the workflow's charge under `token` (a running step finishes first) and cancel
    /// its object. `request` is the workflow's as the log has it now (its object id included).
    Cancel {
        request: Box<PaymentRequest>,
        token: u64,
        reply: oneshot::Sender<CancelAnswer>,
    },
    /// The cancel `token` is decided (logged, or not): the charge, if it still holds it,
    /// goes on.
    Finished { workflow_id: Id, token: u64 },
}

impl Message for ChargeCancel {
    type Result = ();
}

/// What the provider said to a cancel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelAnswer {
    /// Nothing at the provider can collect for the workflow any more: cancelled or voided now,
    /// declined or cancelled before, or no object exists (and the held charge creates none).
    Canceled,
    /// The provider collected the money: the workflow is to be released, not cancelled.
    Succeeded { payment_intent_id: Option<String> },
    /// The provider is still deciding and cannot cancel now (a `processing` PaymentIntent).
    Processing { object_id: String },
    /// The provider could not be asked or gave no usable answer; nothing is decided.
    Unavailable(String),
    /// Another cancel of the workflow is running; nothing was asked.
    InProgress,
}

struct CancelRan {
    id: [u8; 16],
    token: u64,
    answer: CancelAnswer,
    reply: oneshot::Sender<CancelAnswer>,
}

impl Message for CancelRan {
    type Result = ();
}

struct Ran {
    id: [u8; 16],
    next: Next,
    memo: Memo,
}

impl Message for Ran {
    type Result = ();
}

pub struct PaymentActor {
    shared: Arc<Shared>,
    payments: Option<Payments>,
    /// In id order: scans run them in an order that depends on nothing but the ids.
    jobs: BTreeMap<[u8; 16], Job>,
}

impl PaymentActor {
    /// Starts on its own arbiter and picks up every payment request left in the outbox.
    pub fn start_on(
        mailbox: Mailbox<PaymentActor>,
        shared: Arc<Shared>,
        payments: Option<Payments>,
    ) {
        let placement = shared.placement;
        mailbox.start(placement, move |_| PaymentActor {
            shared,
            payments,
            jobs: BTreeMap::new(),
        });
    }

    fn add(&mut self, id: [u8; 16], entry: OutboxEntry, ctx: &mut Context<Self>) {
        let OutboxEffect::Payment(request) = entry.effect.clone() else {
            return;
        };
        if self.jobs.contains_key(&id) {
            return;
        }
        if let PaymentAction::Close { .. } = request.action {
            // Retired first: whatever the cancellation does, the charge is never re-sent. A
            // late answer of its running step finds no job and is dropped.
            let workflow = request.workflow_id;
            let charge = payment_outbox_id(workflow);
            self.jobs.remove(&charge);
            if let Err(error) = self.shared.store.mark_delivered(charge, entry.cause) {
                tracing::error!(%workflow, "retiring a closed charge failed");
                self.shared.health.fail_stop("payment outbox write", &error);
            }
        }
        let job = Job {
            due_ms: entry.next_attempt_at_ms,
            entry,
            request,
            step: Step::Reconcile,
            running: false,
            tries: 0,
            memo: Memo::default(),
            held: None,
            cancel_waiting: None,
        };
        self.jobs.insert(id, job);
        self.launch(id, ctx);
    }

    fn retire(&self, id: [u8; 16], entry: &OutboxEntry) {
        if let Err(error) = self.shared.store.mark_delivered(id, entry.cause) {
            // Redone at restart (the request is still pending).
            self.shared.health.fail_stop("payment outbox write", &error);
        }
    }

    /// Runs the job's step if it is due and idle.
    fn launch(&mut self, id: [u8; 16], ctx: &mut Context<Self>) {
        let now = self.shared.clock.now_ms();
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if job.running || job.held.is_some() || job.step == Step::Wait || job.due_ms > now {
            return;
        }
        let Some(payments) = self.payments.clone() else {
            if job.tries == 0 {
                tracing::error!(workflow = %job.request.workflow_id, "a STRIPE gate needs [payments.stripe] in the config; the charge waits");
                job.tries = 1;
            }
            return;
        };
        job.running = true;
        let worker = Worker {
            shared: Arc::clone(&self.shared),
            payments,
        };
        let (request, step, memo) = (job.request.clone(), job.step.clone(), job.memo.clone());
        let addr = ctx.address();
        actix_rt::spawn(async move {
            let mut memo = memo;
            let next = worker.work(&request, step, &mut memo).await;
            addr.do_send(Ran { id, next, memo });
        });
    }

    fn scan(&mut self, ctx: &mut Context<Self>) {
        let ids: Vec<[u8; 16]> = self.jobs.keys().copied().collect();
        for id in ids {
            self.launch(id, ctx);
        }
    }

    fn retry_bounds(&self) -> (i64, i64) {
        let settings = self.payments.as_ref().map(|p| &p.settings);
        settings.map_or((1_000, 900_000), |s| (s.retry_first_ms, s.retry_max_ms))
    }
}

impl Actor for PaymentActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let interval = self
            .payments
            .as_ref()
            .map_or(1_000, |p| p.settings.scan_interval_ms.max(1));
        ctx.run_interval(Duration::from_millis(interval), |act, ctx| act.scan(ctx));
        let pending = match self.shared.store.outbox_pending() {
            Ok(pending) => pending,
            Err(error) => {
                self.shared.health.fail_stop("payment outbox read", &error);
                return;
            }
        };
        let mut entries = Vec::new();
        for (id, bytes) in pending {
            match OutboxEntry::decode(&bytes) {
                Ok(entry) if matches!(entry.effect, OutboxEffect::Payment(_)) => {
                    entries.push((id, entry));
                }
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "unreadable outbox entry"),
            }
        }
        // A charge whose workflow was closed (the close is pending too) is retired, not re-run.
        let closed: HashSet<Id> = entries
            .iter()
            .filter_map(|(_, e)| match &e.effect {
                OutboxEffect::Payment(r) if matches!(r.action, PaymentAction::Close { .. }) => {
                    Some(r.workflow_id)
                }
                _ => None,
            })
            .collect();
        for (id, entry) in entries {
            let skip = matches!(&entry.effect, OutboxEffect::Payment(r)
                if r.action == PaymentAction::Charge && closed.contains(&r.workflow_id));
            if skip {
                self.retire(id, &entry);
            } else {
                self.add(id, entry, ctx);
                // An earlier run may have sent a create whose answer it never saw.
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.memo.create_sent = true;
                }
            }
        }
    }
}

impl Handler<PaymentJobs> for PaymentActor {
    type Result = ();

    fn handle(&mut self, jobs: PaymentJobs, ctx: &mut Self::Context) {
        for (id, entry) in jobs.0 {
            self.add(id, entry, ctx);
        }
    }
}

impl Handler<Ran> for PaymentActor {
    type Result = ();

    fn handle(&mut self, ran: Ran, ctx: &mut Self::Context) {
        let now = self.shared.clock.now_ms();
        let bounds = self.retry_bounds();
        let Some(job) = self.jobs.get_mut(&ran.id) else {
            return; // closed meanwhile
        };
        job.running = false;
        job.memo = ran.memo;
        let waiting = job.cancel_waiting.take();
        match ran.next {
            Next::Retry { step, error } => {
                job.tries += 1;
                job.step = step;
                job.due_ms = now + backoff_ms(bounds, job.tries);
                job.entry.attempts += 1;
                job.entry.next_attempt_at_ms = job.due_ms;
                job.entry.last_error = Some(error.clone());
                tracing::warn!(workflow = %job.request.workflow_id, attempt = job.entry.attempts, %error, "payment step not done; retrying");
                if let Ok(bytes) = storage::encode(OUTBOX_VERSION, &job.entry) {
                    if let Err(error) = self.shared.store.update_outbox(ran.id, &bytes) {
                        self.shared.health.fail_stop("payment retry state", &error);
                    }
                }
            }
            Next::Poll(object) => {
                if job.step != Step::Poll(object.clone()) {
                    job.tries = 0;
                }
                job.tries += 1;
                job.step = Step::Poll(object);
                job.due_ms = now + backoff_ms(bounds, job.tries);
            }
            Next::Wait => job.step = Step::Wait,
            Next::Done => {
                if let Some(job) = self.jobs.remove(&ran.id) {
                    if !crate::defects::active(crate::defects::Defect::PaidChargeNotRetired) {
                        self.retire(ran.id, &job.entry);
                    }
                    if let Some(waiting) = waiting {
                        // The charge finished meanwhile: the cancel still asks the provider,
                        // with what this run learnt of the object.
                        let created = job.memo.create_sent;
                        let known = job.memo.recorded.or(waiting.request.object_id.clone());
                        self.run_cancel(ran.id, waiting, (known, created), ctx);
                    }
                }
                return;
            }
        }
        if let Some(waiting) = waiting {
            let known = job
                .memo
                .recorded
                .clone()
                .or(waiting.request.object_id.clone());
            let created = job.memo.create_sent;
            self.run_cancel(ran.id, waiting, (known, created), ctx);
            return;
        }
        self.launch(ran.id, ctx);
    }
}

impl PaymentActor {
    /// Asks the provider to cancel the workflow's object (`known`, else found by its
    /// metadata), then answers the cancel.
    fn run_cancel(
        &mut self,
        id: [u8; 16],
        cancel: WaitingCancel,
        known: (Option<String>, bool),
        ctx: &mut Context<Self>,
    ) {
        let WaitingCancel {
            request,
            token,
            reply,
        } = cancel;
        let Some(payments) = self.payments.clone() else {
            let _ = reply.send(CancelAnswer::Unavailable(
                "no payment provider is configured ([payments.stripe])".into(),
            ));
            self.unhold(id, token, ctx);
            return;
        };
        let worker = Worker {
            shared: Arc::clone(&self.shared),
            payments,
        };
        let addr = ctx.address();
        actix_rt::spawn(async move {
            let answer = worker.cancel_for_operator(&request, known).await;
            addr.do_send(CancelRan {
                id,
                token,
                answer,
                reply,
            });
        });
    }

    /// Lets a charge held by cancel `token` go on.
    fn unhold(&mut self, id: [u8; 16], token: u64, ctx: &mut Context<Self>) {
        if let Some(job) = self.jobs.get_mut(&id) {
            if job.held == Some(token) {
                job.held = None;
                self.launch(id, ctx);
            }
        }
    }
}

impl Handler<ChargeCancel> for PaymentActor {
    type Result = ();

    fn handle(&mut self, message: ChargeCancel, ctx: &mut Self::Context) {
        match message {
            ChargeCancel::Cancel {
                request,
                token,
                reply,
            } => {
                let id = payment_outbox_id(request.workflow_id);
                let cancel = WaitingCancel {
                    request: *request,
                    token,
                    reply,
                };
                let Some(job) = self.jobs.get_mut(&id) else {
                    // No charge here (it finished, or was retired): the provider is asked all
                    // the same, and nothing is taken for granted about what it holds.
                    let known = cancel.request.object_id.clone();
                    self.run_cancel(id, cancel, (known, true), ctx);
                    return;
                };
                if job.held.is_some() {
                    let _ = cancel.reply.send(CancelAnswer::InProgress);
                    return;
                }
                job.held = Some(token);
                if job.running {
                    job.cancel_waiting = Some(cancel);
                    return;
                }
                let known = job
                    .memo
                    .recorded
                    .clone()
                    .or(cancel.request.object_id.clone());
                let created = job.memo.create_sent;
                self.run_cancel(id, cancel, (known, created), ctx);
            }
            ChargeCancel::Finished { workflow_id, token } => {
                self.unhold(payment_outbox_id(workflow_id), token, ctx);
            }
        }
    }
}

impl Handler<CancelRan> for PaymentActor {
    type Result = ();

    fn handle(&mut self, ran: CancelRan, ctx: &mut Self::Context) {
        // Held on while the engine logs what the provider said (a cancel or a release);
        // anything else lets the charge go on now.
        let decided = matches!(
            ran.answer,
            CancelAnswer::Canceled | CancelAnswer::Succeeded { .. }
        );
        if !decided {
            self.unhold(ran.id, ran.token, ctx);
        }
        if ran.reply.send(ran.answer).is_err() && decided {
            // Nobody logs it: the charge reconciles and sees the provider's state itself.
            self.unhold(ran.id, ran.token, ctx);
        }
    }
}

/// `first * 2^(tries - 1)`, at most `max`.
fn backoff_ms((first, max): (i64, i64), tries: u32) -> i64 {
    first
        .saturating_mul(1_i64 << tries.saturating_sub(1).min(30))
        .min(max)
}

/// The async side of one step: provider calls and outcome submissions. Steps run spawned and
/// are never cancelled; one cut short by a crash is redone by reconciling, which is why every
/// step starts by asking the provider rather than trusting what this run remembers.
struct Worker {
    shared: Arc<Shared>,
    payments: Payments,
}

fn retry<T>(step: Step, answer: Answer<T>) -> Next {
    Next::Retry {
        step,
        error: answer.describe_failure().unwrap_or_default(),
    }
}

impl Worker {
    async fn work(&self, request: &PaymentRequest, step: Step, memo: &mut Memo) -> Next {
        let started = std::time::Instant::now();
        let (action, next) = match request.action {
            PaymentAction::Charge => ("charge", self.charge(request, step, memo).await),
            PaymentAction::Close { cancel: false } => return Next::Done,
            PaymentAction::Close { cancel: true } => ("cancel", self.cancel(request).await),
            PaymentAction::Refund => ("refund", self.refund(request).await),
        };
        let result = match &next {
            Next::Retry { .. } => "retry",
            Next::Poll(_) => "pending",
            Next::Wait | Next::Done => "decided",
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.shared
            .metrics
            .payment_calls
            .observe_micros(&[("action", action), ("result", result)], micros);
        next
    }

    /// Reconcile (or poll), then act on the object's state.
    async fn charge(&self, request: &PaymentRequest, step: Step, memo: &mut Memo) -> Next {
        let provider = &self.payments.provider;
        let answer = match &step {
            Step::Poll(id) => provider.retrieve(request, id).await,
            Step::Reconcile | Step::Wait
                if crate::defects::active(crate::defects::Defect::CreateWithoutSearch) =>
            {
                memo.create_sent = true;
                provider.charge(request, None).await
            }
            Step::Reconcile | Step::Wait => match provider.find(request).await {
                Answer::Ok(Some(found)) if found.status != ChargeStatus::Unfinished => {
                    Answer::Ok(found)
                }
                // Created only when the provider said there is none; an unfinished object
                // (draft invoice, unconfirmed PaymentIntent) is carried on, not replaced.
                Answer::Ok(found) => {
                    memo.create_sent |= found.is_none();
                    provider.charge(request, found).await
                }
                other => other.retype(),
            },
        };
        match answer {
            Answer::Ok(object) => self.on_object(request, object, memo).await,
            Answer::Refused(refusal) => {
                let Refusal { error, object } = *refusal;
                let intent = object.as_ref().and_then(|o| o.payment_intent_id.clone());
                if let Some(object) = &object {
                    if let Err(next) = self.record(request, object, memo).await {
                        return next;
                    }
                }
                self.decided(
                    request,
                    PaymentResult::Failed { error: Some(error) },
                    intent,
                )
                .await
            }
            // 409, 400 idempotency_error, 5xx, timeouts: unknown, so look again later.
            other => retry(step_after(step), other),
        }
    }

    async fn on_object(
        &self,
        request: &PaymentRequest,
        object: ProviderObject,
        memo: &mut Memo,
    ) -> Next {
        if let Err(next) = self.record(request, &object, memo).await {
            return next;
        }
        let intent = object.payment_intent_id.clone();
        match object.status {
            ChargeStatus::Succeeded => self.decided(request, PaymentResult::Paid, intent).await,
            ChargeStatus::Failed { error } => {
                let result = PaymentResult::Failed { error: Some(error) };
                self.decided(request, result, intent).await
            }
            ChargeStatus::Canceled => {
                let error = tollgate_error("payment_canceled", "the Stripe payment was canceled");
                let result = PaymentResult::Failed { error: Some(error) };
                self.decided(request, result, intent).await
            }
            ChargeStatus::Processing
                if crate::defects::active(crate::defects::Defect::ReleaseOnProcessing) =>
            {
                self.decided(request, PaymentResult::Paid, intent).await
            }
            ChargeStatus::Processing => Next::Poll(object.id),
            ChargeStatus::RequiresAction { ref next_action } => {
                let next_action = next_action.clone();
                self.action_required(request, &object, next_action, memo)
                    .await
            }
            ChargeStatus::RequiresCapture => self.refuse_capture(request, &object.id).await,
            ChargeStatus::Unfinished => Next::Retry {
                step: Step::Reconcile,
                error: format!("{} is still unfinished", object.id),
            },
        }
    }

    /// Logs the object's id once per run (outcomes of a PaymentIntent carry it already).
    async fn record(
        &self,
        request: &PaymentRequest,
        object: &ProviderObject,
        memo: &mut Memo,
    ) -> Result<(), Next> {
        if memo.recorded.as_deref() == Some(object.id.as_str()) {
            return Ok(());
        }
        let carried = object.payment_intent_id.as_deref() == Some(object.id.as_str())
            && matches!(
                object.status,
                ChargeStatus::Succeeded
                    | ChargeStatus::Failed { .. }
                    | ChargeStatus::Canceled
                    | ChargeStatus::RequiresAction { .. }
            );
        if !carried {
            let result = PaymentResult::Pending {
                object_id: object.id.clone(),
            };
            self.submit(request, result, object.payment_intent_id.clone())
                .await
                .map_err(|error| Next::Retry {
                    step: Step::Reconcile,
                    error,
                })?;
        }
        memo.recorded = Some(object.id.clone());
        Ok(())
    }

    /// ACTION_REQUIRED: logged once per run, and again once the deadline may have passed (the
    /// domain decides on the logged time); polled meanwhile.
    async fn action_required(
        &self,
        request: &PaymentRequest,
        object: &ProviderObject,
        next_action: Option<String>,
        memo: &mut Memo,
    ) -> Next {
        let now = self.shared.clock.now_ms();
        let timeout_ms = self.payments.settings.action_required_timeout_ms;
        let first = memo.action_since_ms.is_none();
        // Never later than the domain's start of the clock (it is at least the PaymentIntent's
        // creation), so the repeat that lets the domain end it is never late.
        let since = *memo
            .action_since_ms
            .get_or_insert(object.created_ms.map_or(now, |c| c.min(now)));
        let id = object.id.clone();
        if first || now >= since.saturating_add(timeout_ms) {
            let result = PaymentResult::ActionRequired {
                error_message: next_action,
                timeout_ms,
            };
            let intent = object.payment_intent_id.clone();
            if let Err(error) = self.submit(request, result, intent).await {
                return Next::Retry {
                    step: Step::Poll(id),
                    error,
                };
            }
        }
        Next::Poll(id)
    }

    /// `requires_capture`: Tollgate never asks for manual capture, so the authorization is
    /// released and the workflow fails (a capture that happened meanwhile is seen by the poll).
    async fn refuse_capture(&self, request: &PaymentRequest, id: &str) -> Next {
        match self.payments.provider.cancel(request, id).await {
            Answer::Ok(object) if object.status == ChargeStatus::Canceled => {
                let error = tollgate_error(
                    "requires_capture",
                    "Stripe asked for a manual capture, which Tollgate never requests; the authorization was cancelled",
                );
                let result = PaymentResult::Failed { error: Some(error) };
                self.decided(request, result, object.payment_intent_id)
                    .await
            }
            Answer::Ok(object) => Next::Poll(object.id),
            other => retry(Step::Poll(id.to_owned()), other),
        }
    }

    /// Logs a decided outcome; the workflow's Close retires the charge. A workflow that had
    /// ended already (Stripe's webhook was first) has been closed: done.
    async fn decided(
        &self,
        request: &PaymentRequest,
        result: PaymentResult,
        intent: Option<String>,
    ) -> Next {
        match self.submit_verdict(request, result, intent).await {
            Ok(Some(Rejection::WorkflowAlreadyEnded)) => Next::Done,
            Ok(_) => Next::Wait,
            Err(error) => Next::Retry {
                step: Step::Reconcile,
                error,
            },
        }
    }

    /// Close after FAILED: cancel the PaymentIntent or void the invoice. Money found collected
    /// is reported (`Paid`) so the domain refunds it.
    async fn cancel(&self, request: &PaymentRequest) -> Next {
        let provider = &self.payments.provider;
        let id = match &request.object_id {
            Some(id) => id.clone(),
            None => match provider.find(request).await {
                Answer::Ok(Some(object)) => object.id,
                Answer::Ok(None) => return Next::Done,
                other => return retry(Step::Reconcile, other),
            },
        };
        match provider.cancel(request, &id).await {
            Answer::Ok(object) => match object.status {
                ChargeStatus::Succeeded => {
                    match self
                        .decided(request, PaymentResult::Paid, object.payment_intent_id)
                        .await
                    {
                        Next::Wait => Next::Done,
                        other => other,
                    }
                }
                ChargeStatus::Processing => Next::Retry {
                    step: Step::Reconcile,
                    error: format!("{id} is processing and cannot be cancelled yet"),
                },
                _ => Next::Done,
            },
            Answer::Refused(refusal) => {
                let error = &refusal.error;
                tracing::warn!(workflow = %request.workflow_id, object = %id, ?error, "Stripe refused the cancellation; nothing left to cancel");
                Next::Done
            }
            other => retry(Step::Reconcile, other),
        }
    }

    /// An operator's cancel: the object (known, or found by its metadata) is cancelled or
    /// voided; a provider that already decided answers with its state.
    async fn cancel_for_operator(
        &self,
        request: &PaymentRequest,
        (known, created_maybe): (Option<String>, bool),
    ) -> CancelAnswer {
        let provider = &self.payments.provider;
        let unavailable = |answer: &dyn Fn() -> Option<String>| {
            CancelAnswer::Unavailable(answer().unwrap_or_else(|| "no answer".into()))
        };
        let id = match known.or_else(|| request.object_id.clone()) {
            Some(id) => id,
            None => match provider.find(request).await {
                Answer::Ok(Some(object)) => object.id,
                // Nothing was created, and the held charge creates nothing.
                Answer::Ok(None) if !created_maybe => return CancelAnswer::Canceled,
                // A create whose answer was lost (or Stripe's search lagging behind it) may
                // still bring an object: the charge reconciles first, then a cancel finds it.
                Answer::Ok(None) => {
                    return CancelAnswer::Unavailable(
                        "Stripe shows no payment for the workflow yet, but a create was sent \
                         whose outcome is not known; the charge reconciles first, retry the \
                         cancel shortly"
                            .into(),
                    );
                }
                other => return unavailable(&|| other.describe_failure()),
            },
        };
        match provider.cancel(request, &id).await {
            Answer::Ok(object) => match object.status {
                ChargeStatus::Canceled | ChargeStatus::Failed { .. } => CancelAnswer::Canceled,
                ChargeStatus::Succeeded => CancelAnswer::Succeeded {
                    payment_intent_id: object.payment_intent_id,
                },
                ChargeStatus::Processing => CancelAnswer::Processing { object_id: id },
                other => CancelAnswer::Unavailable(format!(
                    "{id} is still {other:?} after the cancel; try again"
                )),
            },
            other => unavailable(&|| other.describe_failure()),
        }
    }

    async fn refund(&self, request: &PaymentRequest) -> Next {
        let provider = &self.payments.provider;
        let id = match &request.object_id {
            Some(id) => id.clone(),
            None => match provider.find(request).await {
                Answer::Ok(Some(object)) => object.id,
                Answer::Ok(None) => {
                    return Next::Retry {
                        step: Step::Reconcile,
                        error: "the object to refund is not found yet".into(),
                    };
                }
                other => return retry(Step::Reconcile, other),
            },
        };
        match provider.refund(request, &id).await {
            Answer::Ok(receipt) => {
                let result = PaymentResult::Refunded {
                    refund_id: receipt.id,
                };
                match self
                    .submit(request, result, receipt.payment_intent_id)
                    .await
                {
                    Ok(()) => Next::Done,
                    Err(error) => Next::Retry {
                        step: Step::Reconcile,
                        error,
                    },
                }
            }
            other => retry(Step::Reconcile, other),
        }
    }

    async fn submit(
        &self,
        request: &PaymentRequest,
        result: PaymentResult,
        intent: Option<String>,
    ) -> Result<(), String> {
        self.submit_verdict(request, result, intent)
            .await
            .map(|_| ())
    }

    /// Logs an outcome; `Ok(Some(_))` is the domain's refusal (the outcome is in the log anyway).
    async fn submit_verdict(
        &self,
        request: &PaymentRequest,
        result: PaymentResult,
        intent: Option<String>,
    ) -> Result<Option<Rejection>, String> {
        let outcome = PaymentOutcome {
            workflow_id: request.workflow_id,
            source: OutcomeSource::Stripe,
            result,
            payment_intent_id: intent,
        };
        submit_outcome(&self.shared, request.customer_id, outcome)
            .await
            .map_err(|e| format!("outcome not recorded: {e}"))
    }
}

/// The step to retry after an unknown answer: a poll stays a poll, anything else reconciles.
fn step_after(step: Step) -> Step {
    match step {
        Step::Poll(id) => Step::Poll(id),
        Step::Reconcile | Step::Wait => Step::Reconcile,
    }
}

fn tollgate_error(code: &str, message: &str) -> ProviderError {
    ProviderError {
        error_type: Some("tollgate_error".into()),
        code: Some(code.into()),
        decline_code: None,
        message: Some(message.into()),
    }
}

/// Appends a payment outcome to its customer's log and waits until it applied; answers the
/// domain's refusal, if any (a refused outcome is in the log all the same).
///
/// # Errors
/// Overload or storage failures (the outcome was then not recorded).
pub async fn submit_outcome(
    shared: &Shared,
    customer: crate::domain::Id,
    outcome: PaymentOutcome,
) -> Result<Option<Rejection>, super::error::EngineError> {
    let partition = shared.partition_of(customer);
    let handle = shared
        .handle(partition)
        .ok_or_else(|| super::error::EngineError::Internal("engine not started".into()))?;
    let (reply, verdict) = oneshot::channel();
    let (ack, appended) = oneshot::channel();
    shared.pending[usize::from(partition)].admit(1, shared.clock.now_ms());
    let record = PendingRecord {
        dedupe_key: None,
        entry: LogEntry::Customer {
            customer_id: customer,
            catalog_version: shared.catalog().version(),
            input: Input::PaymentOutcome(outcome),
        },
        reply: Some(reply),
    };
    handle
        .submit
        .send(Submission {
            records: vec![record],
            ack,
        })
        .await
        .map_err(|_| super::error::EngineError::Internal("partition stopped".into()))?;
    appended
        .await
        .map_err(|_| super::error::EngineError::Internal("partition stopped".into()))??;
    match verdict.await {
        Ok(Err(super::error::EngineError::Rejected(rejection))) => Ok(Some(rejection)),
        // The outcome is in the log, but its effects may not be: the engine has failed and a
        // restart re-creates them; report the failure so nothing is retired meanwhile.
        Ok(Err(error @ super::error::EngineError::Storage(_))) => Err(error),
        // Applied, quarantined (kept for the operator), or the actor went away after the
        // append: the outcome is in the log.
        Ok(Ok(_) | Err(_)) | Err(_) => Ok(None),
    }
}

//! `PaymentActor`: carries out payment requests (STRIPE gates) through a [`PaymentProvider`]
//! and turns each answer into a payment-outcome input on the customer's log.
//!
//! NONE gates release inside the domain and EXTERNAL gates wait for the operator's release call,
//! so only provider-collected charges come here. A request stays in the outbox until its outcome
//! input is durable; after a crash it is re-run with the same idempotency key (the workflow id),
//! so the provider returns the same charge instead of making a second one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, AsyncContext, Context, Handler, Message};
use tokio::sync::oneshot;

use super::entry::LogEntry;
use super::outbox::{OUTBOX_VERSION, OutboxEffect, OutboxEntry};
use super::partition::{PendingRecord, Submission};
use super::shared::Shared;
use crate::domain::customer::Input;
use crate::domain::effects::PaymentRequest;
use crate::domain::gate::{OutcomeSource, PaymentOutcome, PaymentResult};
use crate::storage;

/// What a provider answered for one charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeResult {
    /// A final or intermediate outcome (paid, failed, action required).
    Outcome {
        result: PaymentResult,
        payment_intent_id: Option<String>,
    },
    /// The charge was created and the provider will report through its webhook.
    Pending { payment_intent_id: Option<String> },
    /// A transient failure (5xx, 429, timeout): try again later with the same idempotency key.
    Retry { error: String },
}

pub type ChargeFuture = Pin<Box<dyn Future<Output = ChargeResult> + Send>>;

/// A payment provider client (Stripe's REST API in `src/payments/`).
pub trait PaymentProvider: Send + Sync + 'static {
    /// Charges `request.amount`, idempotent on `request.workflow_id`.
    fn charge(&self, request: PaymentRequest) -> ChargeFuture;
}

/// Payment requests already persisted in the outbox.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PaymentJobs(pub Vec<([u8; 16], OutboxEntry)>);

struct Done {
    id: [u8; 16],
    entry: OutboxEntry,
    answer: ChargeResult,
}

impl Message for Done {
    type Result = ();
}

pub struct PaymentActor {
    shared: Arc<Shared>,
    provider: Option<Arc<dyn PaymentProvider>>,
    retry_first_ms: i64,
    retry_max_ms: i64,
}

impl PaymentActor {
    /// Starts on its own arbiter and picks up every payment request left in the outbox.
    pub fn start(
        shared: Arc<Shared>,
        provider: Option<Arc<dyn PaymentProvider>>,
    ) -> actix::Addr<PaymentActor> {
        let arbiter = actix::Arbiter::new();
        PaymentActor::start_in_arbiter(&arbiter.handle(), move |_| PaymentActor {
            shared,
            provider,
            retry_first_ms: 1_000,
            retry_max_ms: 15 * 60 * 1_000,
        })
    }

    fn run(&self, id: [u8; 16], entry: OutboxEntry, ctx: &mut Context<Self>) {
        let OutboxEffect::Payment(request) = entry.effect.clone() else {
            return;
        };
        let Some(provider) = self.provider.clone() else {
            tracing::error!(workflow = %request.workflow_id, "a STRIPE gate needs [payments.stripe] in the config; the charge waits");
            return;
        };
        let delay = (entry.next_attempt_at_ms - self.shared.clock.now_ms()).max(0) as u64;
        let addr = ctx.address();
        actix_rt::spawn(async move {
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let answer = provider.charge(request).await;
            addr.do_send(Done { id, entry, answer });
        });
    }
}

impl Actor for PaymentActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        match self.shared.store.outbox_pending() {
            Ok(pending) => {
                for (id, bytes) in pending {
                    match storage::decode::<OutboxEntry>(OUTBOX_VERSION, &bytes) {
                        Ok(entry) if matches!(entry.effect, OutboxEffect::Payment(_)) => {
                            self.run(id, entry, ctx);
                        }
                        Ok(_) => {}
                        Err(error) => tracing::error!(%error, "unreadable outbox entry"),
                    }
                }
            }
            Err(error) => tracing::error!(%error, "outbox unreadable"),
        }
    }
}

impl Handler<PaymentJobs> for PaymentActor {
    type Result = ();

    fn handle(&mut self, jobs: PaymentJobs, ctx: &mut Self::Context) {
        for (id, entry) in jobs.0 {
            self.run(id, entry, ctx);
        }
    }
}

impl Handler<Done> for PaymentActor {
    type Result = ();

    fn handle(&mut self, done: Done, ctx: &mut Self::Context) {
        let Done {
            id,
            mut entry,
            answer,
        } = done;
        let OutboxEffect::Payment(request) = &entry.effect else {
            return;
        };
        match answer {
            ChargeResult::Outcome {
                result,
                payment_intent_id,
            } => {
                let outcome = PaymentOutcome {
                    workflow_id: request.workflow_id,
                    source: OutcomeSource::Stripe,
                    result,
                    payment_intent_id,
                };
                let shared = Arc::clone(&self.shared);
                let customer = request.customer_id;
                let cause = entry.cause;
                actix_rt::spawn(async move {
                    match submit_outcome(&shared, customer, outcome).await {
                        Ok(()) => {
                            if let Err(error) = shared.store.mark_delivered(id, cause) {
                                tracing::error!(%error, "marking a payment request done failed");
                            }
                        }
                        Err(error) => {
                            tracing::error!(%error, "payment outcome not recorded; retried at restart")
                        }
                    }
                });
            }
            ChargeResult::Pending { .. } => {
                // The provider's webhook brings the outcome; the request stays in the outbox so a
                // restart asks again (same idempotency key, same charge).
            }
            ChargeResult::Retry { error } => {
                entry.attempts += 1;
                let backoff = self
                    .retry_first_ms
                    .saturating_mul(1_i64 << entry.attempts.min(20))
                    .min(self.retry_max_ms);
                entry.next_attempt_at_ms = self.shared.clock.now_ms() + backoff;
                entry.last_error = Some(error.clone());
                tracing::warn!(workflow = %request.workflow_id, attempt = entry.attempts, %error, "payment attempt failed; retrying");
                if let Ok(bytes) = storage::encode(OUTBOX_VERSION, &entry) {
                    if let Err(error) = self.shared.store.update_outbox(id, &bytes) {
                        tracing::error!(%error, "payment retry state not saved");
                    }
                }
                self.run(id, entry, ctx);
            }
        }
    }
}

/// Appends a payment outcome to its customer's log and waits until it applied.
///
/// # Errors
/// Overload or storage failures (the outcome was then not recorded).
pub async fn submit_outcome(
    shared: &Shared,
    customer: crate::domain::Id,
    outcome: PaymentOutcome,
) -> Result<(), super::engine::EngineError> {
    let partition = shared.partition_of(customer);
    let handle = shared
        .handle(partition)
        .ok_or_else(|| super::engine::EngineError::Internal("engine not started".into()))?;
    let (reply, verdict) = oneshot::channel();
    let (ack, appended) = oneshot::channel();
    shared.pending[usize::from(partition)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        .map_err(|_| super::engine::EngineError::Internal("partition stopped".into()))?;
    appended
        .await
        .map_err(|_| super::engine::EngineError::Internal("partition stopped".into()))??;
    // Any verdict (including "already ended") means the outcome is in the log.
    let _ = verdict.await;
    Ok(())
}

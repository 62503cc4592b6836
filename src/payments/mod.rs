//! The payment-provider seam: what the `PaymentActor` may ask a provider, and every answer a
//! provider can give, sorted by what the engine may conclude from it. Stripe's REST API
//! implements it in [`stripe`]; tests pass their own.
//!
//! Providers turn requests into API calls and the answers into these types; they decide nothing
//! about money. This module imports neither `src/http/` nor `src/actors/`.

use std::future::Future;
use std::pin::Pin;

use crate::domain::effects::PaymentRequest;
use crate::domain::gate::ProviderError;

pub mod stripe;

pub type ProviderFuture<T> = Pin<Box<dyn Future<Output = Answer<T>> + Send>>;

/// One provider call's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    Ok(T),
    /// The provider refused the request (a card decline, an invalid request). For a create, no
    /// money moved by this request.
    Refused(Box<Refusal>),
    /// HTTP 409: a request with the same idempotency key is still in progress (or the object
    /// is locked by another request). The outcome is unknown: reconcile later.
    InProgress(String),
    /// HTTP 400 `idempotency_error`: the key was first used with other parameters (e.g. the
    /// customer's default payment method changed since a try that timed out). The first try may
    /// have charged: reconcile, never a decline.
    KeyReused(String),
    /// 5xx, 429, a timeout or a broken connection: the outcome is unknown; try again later.
    Transient(String),
    /// 401/403: the account's key is wrong or lacks a permission. Nothing is known about the
    /// charge; retried (slowly) until the operator fixes the configuration.
    Unauthorized(String),
}

/// Why the provider refused, and what the refusal concerns when there is one (a declined
/// PaymentIntent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub error: ProviderError,
    pub object: Option<ProviderObject>,
}

impl<T> Answer<T> {
    pub fn refused(error: ProviderError, object: Option<ProviderObject>) -> Answer<T> {
        Answer::Refused(Box::new(Refusal { error, object }))
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        match self {
            Answer::Ok(value) => Answer::Ok(f(value)),
            other => other.retype(),
        }
    }

    /// The same failure for another payload type (an `Ok` here would be a caller's bug; it
    /// becomes a transient failure rather than a panic).
    pub fn retype<U>(self) -> Answer<U> {
        match self {
            Answer::Ok(_) => Answer::Transient("an answer was dropped".into()),
            Answer::Refused(refusal) => Answer::Refused(refusal),
            Answer::InProgress(e) => Answer::InProgress(e),
            Answer::KeyReused(e) => Answer::KeyReused(e),
            Answer::Transient(e) => Answer::Transient(e),
            Answer::Unauthorized(e) => Answer::Unauthorized(e),
        }
    }

    /// Why the call did not give a usable answer, for logs and the outbox entry.
    pub fn describe_failure(&self) -> Option<String> {
        match self {
            Answer::Ok(_) => None,
            Answer::Refused(refusal) => Some(format!(
                "refused: {}",
                refusal
                    .error
                    .message
                    .clone()
                    .or_else(|| refusal.error.code.clone())
                    .unwrap_or_default()
            )),
            Answer::InProgress(e) => Some(format!("in progress (409): {e}")),
            Answer::KeyReused(e) => Some(format!("idempotency key reused (400): {e}")),
            Answer::Transient(e) => Some(format!("transient: {e}")),
            Answer::Unauthorized(e) => Some(format!("unauthorized: {e}")),
        }
    }
}

/// Where a provider's object stands, as far as the workflow is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeStatus {
    /// The money was collected (PaymentIntent `succeeded`, invoice `paid`).
    Succeeded,
    /// The provider is still deciding (PaymentIntent `processing`, an invoice payment `open`).
    Processing,
    /// The customer must act (PaymentIntent `requires_action`, an invoice whose payment needs
    /// authentication).
    RequiresAction { next_action: Option<String> },
    /// An authorization waits for a manual capture. Tollgate never asks for manual capture, so
    /// this is a provider error: the authorization is cancelled and the workflow fails.
    RequiresCapture,
    /// Not yet asked to pay: a PaymentIntent awaiting confirmation, a draft invoice, an open
    /// invoice never attempted. [`PaymentProvider::charge`] carries it on.
    Unfinished,
    /// Declined or refused for good (PaymentIntent `requires_payment_method` after a confirm,
    /// an open invoice whose attempt failed, an `uncollectible` invoice).
    Failed { error: ProviderError },
    /// Cancelled (PaymentIntent) or voided (invoice): it can no longer collect.
    Canceled,
}

/// A PaymentIntent or invoice of one workflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderObject {
    /// `pi_...` or `in_...`.
    pub id: String,
    pub status: ChargeStatus,
    /// The PaymentIntent that carries the money: the object itself for PaymentIntents, the
    /// invoice's payment for invoices, when known.
    pub payment_intent_id: Option<String>,
    /// When the provider created it (ms since the epoch).
    pub created_ms: Option<i64>,
}

/// A refund the provider created (or had already created under the same key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundReceipt {
    pub id: String,
    pub payment_intent_id: Option<String>,
    /// The provider's status (`succeeded`, `pending`, ...).
    pub status: String,
}

/// A payment provider. Every method is safe to call again after any answer, including a
/// timeout: writes carry idempotency keys derived from the workflow id.
pub trait PaymentProvider: Send + Sync + 'static {
    /// The workflow's existing object, looked up by `metadata.workflow_id` (search, or list
    /// where search is unavailable). `Ok(None)` only when the provider answered that there is
    /// none.
    fn find(&self, request: &PaymentRequest) -> ProviderFuture<Option<ProviderObject>>;

    /// Creates and confirms the charge (`existing: None`), or carries an unfinished object
    /// found by [`find`](Self::find) on to its payment.
    fn charge(
        &self,
        request: &PaymentRequest,
        existing: Option<ProviderObject>,
    ) -> ProviderFuture<ProviderObject>;

    /// The object's current state (polling).
    fn retrieve(&self, request: &PaymentRequest, object_id: &str)
    -> ProviderFuture<ProviderObject>;

    /// Cancels a PaymentIntent or voids (a draft: deletes) an invoice. An object that cannot be
    /// cancelled any more (it succeeded) is answered with its state, not refused.
    fn cancel(&self, request: &PaymentRequest, object_id: &str) -> ProviderFuture<ProviderObject>;

    /// Refunds in full the money the object collected; idempotent (a second call answers the
    /// existing refund).
    fn refund(&self, request: &PaymentRequest, object_id: &str) -> ProviderFuture<RefundReceipt>;
}

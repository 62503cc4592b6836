//! Stripe's webhook endpoint (`POST /v1/stripe/webhook` unless configured otherwise): verifies
//! `Stripe-Signature`, then turns the PaymentIntent and invoice events below into payment-outcome
//! inputs for the workflow named in the object's `metadata.workflow_id`. It never calls Stripe:
//! what must happen at Stripe afterwards (voiding the invoice of a FAILED workflow, refunding
//! money that arrived after FAILED) is an effect of the logged input, carried out by the payment
//! actor. Unknown events, unknown workflows and replays of events already applied change nothing
//! and answer 200 (so Stripe stops retrying); a bad signature is a 400.
//!
//! Events are read in the shape of [`STRIPE_VERSION`](crate::payments::stripe::STRIPE_VERSION)
//! (the webhook endpoint must be created with that version): an invoice names no PaymentIntent.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::actors::EngineError;
use crate::domain::customer::Input;
use crate::domain::gate::{OutcomeSource, PaymentOutcome, PaymentResult, ProviderError};
use crate::domain::{Id, Rejection};
use crate::payments::stripe::{self, provider_error};

/// What the HTTP layer knows of the Stripe account: only how to check its webhooks.
#[derive(Clone, Debug)]
pub struct StripeWebhook {
    pub webhook_secret: crate::secret::Secret,
    pub webhook_path: String,
}

/// Stripe's webhook at its configured path (served only when `[payments.stripe]` is set).
pub fn routes(routes: &mut super::openapi::Routes<'_>, path: &str) {
    routes
        .post(
            path,
            "stripeWebhook",
            "Stripe's webhook events (signed with Stripe-Signature), served only when [payments.stripe] is configured",
            webhook,
        )
        .body::<StripeEvent>()
        .answers::<super::openapi::Empty>()
        .public();
}

/// The parts of a Stripe event Tollgate reads (`data.object` is a PaymentIntent or an invoice);
/// the body is read as text first, since the signature covers its exact bytes.
#[derive(utoipa::ToSchema)]
pub struct StripeEvent {
    /// `payment_intent.succeeded`, `invoice.paid`, ...
    #[schema(rename = "type")]
    pub event_type: String,
    pub data: StripeEventData,
}

#[derive(utoipa::ToSchema)]
pub struct StripeEventData {
    /// The PaymentIntent or invoice, with `metadata.workflow_id`.
    pub object: serde_json::Value,
}

async fn webhook(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let Some(stripe) = &state.stripe else {
        return Err(ApiError::NotFound("no such endpoint".into()));
    };
    let header = request
        .headers()
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::BadRequest("Stripe-Signature header is missing".into()))?;
    let now_s = state.engine.now_ms() / 1000;
    stripe::verify_signature(header, &body, stripe.webhook_secret.expose(), now_s)
        .map_err(ApiError::BadRequest)?;
    let event: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid event JSON: {e}")))?;
    let object = &event["data"]["object"];
    let Some((result, intent)) = outcome_of(event["type"].as_str().unwrap_or(""), object) else {
        tracing::debug!(event_type = %event["type"], "Stripe event ignored");
        return Ok(HttpResponse::Ok().finish());
    };
    let Some(workflow_id) = object["metadata"]["workflow_id"]
        .as_str()
        .and_then(Id::parse)
    else {
        return Ok(HttpResponse::Ok().finish());
    };
    let Some(customer) = state.engine.workflow_customer(workflow_id)? else {
        return Ok(HttpResponse::Ok().finish());
    };
    let outcome = PaymentOutcome {
        workflow_id,
        source: OutcomeSource::Stripe,
        result,
        payment_intent_id: intent,
    };
    match state
        .engine
        .apply(customer, Input::PaymentOutcome(outcome))
        .await
    {
        Ok(_) => Ok(HttpResponse::Ok().finish()),
        // A replayed or late event: the workflow already has its outcome.
        Err(EngineError::Rejected(
            Rejection::WorkflowAlreadyEnded | Rejection::WorkflowGateMismatch,
        )) => Ok(HttpResponse::Ok().finish()),
        Err(error) => Err(error.into()),
    }
}

/// The outcome an event reports, with the PaymentIntent it names, or `None` to ignore it.
fn outcome_of(event_type: &str, object: &Value) -> Option<(PaymentResult, Option<String>)> {
    let id = object["id"].as_str().map(str::to_owned);
    let failed = |code: &str, message: &str| PaymentResult::Failed {
        error: Some(ProviderError {
            error_type: Some("card_error".into()),
            code: Some(code.into()),
            decline_code: None,
            message: Some(message.into()),
        }),
    };
    Some(match event_type {
        "payment_intent.succeeded" => (PaymentResult::Paid, id),
        "payment_intent.payment_failed" => (
            PaymentResult::Failed {
                error: Some(provider_error(&object["last_payment_error"])),
            },
            id,
        ),
        "payment_intent.processing" => (
            PaymentResult::Pending {
                object_id: id.clone()?,
            },
            id,
        ),
        "payment_intent.canceled" => (
            failed("payment_canceled", "the Stripe PaymentIntent was canceled"),
            id,
        ),
        // Since 2025-03-31.basil an invoice has no `payment_intent`: the payment actor reads
        // the invoice's payments when it needs the PaymentIntent (a refund).
        "invoice.paid" => (PaymentResult::Paid, None),
        "invoice.payment_failed" => (
            failed(
                "invoice_payment_failed",
                "the Stripe invoice's payment failed",
            ),
            None,
        ),
        "invoice.voided" => (
            failed("invoice_voided", "the Stripe invoice was voided"),
            None,
        ),
        "invoice.marked_uncollectible" => (
            failed(
                "invoice_uncollectible",
                "the Stripe invoice was marked uncollectible",
            ),
            None,
        ),
        _ => return None,
    })
}

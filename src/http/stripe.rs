//! Stripe's webhook endpoint (`POST /v1/stripe/webhook` unless configured otherwise): verifies
//! `Stripe-Signature`, then turns `payment_intent.succeeded`, `payment_intent.payment_failed`,
//! `invoice.paid` and `invoice.payment_failed` into payment-outcome inputs for the workflow
//! named in the object's metadata. Unknown events, unknown workflows and replays of events
//! already applied change nothing and answer 200 (so Stripe stops retrying); a bad signature is
//! a 400.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::actors::EngineError;
use crate::domain::customer::Input;
use crate::domain::gate::{OutcomeSource, PaymentOutcome, PaymentResult, ProviderError};
use crate::domain::{Id, Rejection};
use crate::payments::stripe::{self, StripeSettings};

/// What the HTTP layer knows of the Stripe account.
#[derive(Clone, Debug)]
pub struct StripeWebhook {
    pub webhook_secret: String,
    pub webhook_path: String,
    pub api: StripeSettings,
}

pub fn routes(cfg: &mut web::ServiceConfig, stripe: Option<&StripeWebhook>) {
    if let Some(stripe) = stripe {
        cfg.route(&stripe.webhook_path, web::post().to(webhook));
    }
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
    stripe::verify_signature(header, &body, &stripe.webhook_secret, now_s)
        .map_err(ApiError::BadRequest)?;
    let event: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid event JSON: {e}")))?;
    let object = &event["data"]["object"];
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let (result, intent) = match event["type"].as_str().unwrap_or("") {
        "payment_intent.succeeded" => (PaymentResult::Paid, text(&object["id"])),
        "payment_intent.payment_failed" => (
            PaymentResult::Failed {
                error: Some(error_of(&object["last_payment_error"])),
            },
            text(&object["id"]),
        ),
        "invoice.paid" => (PaymentResult::Paid, text(&object["payment_intent"])),
        "invoice.payment_failed" => {
            if let Some(invoice) = object["id"].as_str() {
                let api = stripe.api.clone();
                let invoice = invoice.to_owned();
                let key = object["metadata"]["workflow_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                actix_rt::spawn(async move { stripe::void_invoice(&api, &invoice, &key).await });
            }
            (
                PaymentResult::Failed {
                    error: Some(ProviderError {
                        error_type: Some("card_error".into()),
                        code: Some("invoice_payment_failed".into()),
                        decline_code: None,
                        message: Some("the Stripe invoice's payment failed".into()),
                    }),
                },
                text(&object["payment_intent"]),
            )
        }
        other => {
            tracing::debug!(event_type = other, "Stripe event ignored");
            return Ok(HttpResponse::Ok().finish());
        }
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

fn error_of(error: &Value) -> ProviderError {
    let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_owned);
    ProviderError {
        error_type: text("type"),
        code: text("code"),
        decline_code: text("decline_code"),
        message: text("message"),
    }
}

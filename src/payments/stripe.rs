//! Stripe's REST API as a [`PaymentProvider`]: off-session PaymentIntents or invoices, every
//! call with an idempotency key derived from the workflow id, so a retry (after a 5xx, a
//! timeout, or a crash that re-runs the outbox entry) returns the same object instead of
//! charging twice. Also the verification of Stripe's webhook signatures.
//!
//! Amounts go to Stripe in integer minor units: the engine's one rounding rule (half-up) is
//! applied here, where money leaves the engine.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::actors::payment::{ChargeFuture, ChargeResult, PaymentProvider};
use crate::domain::effects::PaymentRequest;
use crate::domain::gate::{PaymentResult, ProviderError, StripePaymentType};

/// Stripe's public API.
pub const API_BASE_DEFAULT: &str = "https://api.stripe.com";
/// Stripe refuses charges below its minimum (USD 0.50); in the currency's minor units.
pub const MINIMUM_CHARGE_MINOR_UNITS: i64 = 50;
/// Stripe's webhook signatures are accepted this far from now (Stripe's own default).
pub const SIGNATURE_TOLERANCE_S: i64 = 300;

#[derive(Clone, Debug)]
pub struct StripeSettings {
    pub secret_key: String,
    pub api_base: String,
    pub timeout_ms: u64,
}

pub struct StripeProvider {
    client: reqwest::Client,
    settings: StripeSettings,
}

impl StripeProvider {
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(settings: StripeSettings) -> Result<StripeProvider, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .build()
            .map_err(|e| format!("cannot build the Stripe client: {e}"))?;
        Ok(StripeProvider { client, settings })
    }
}

/// One Stripe call's outcome, sorted by what the engine does with it.
enum Call {
    Ok(Value),
    /// A 402 card error or another 4xx: final.
    Refused(Value),
    /// 5xx, 429, connection error, timeout: try again later with the same key.
    Transient(String),
}

impl PaymentProvider for StripeProvider {
    fn charge(&self, request: PaymentRequest) -> ChargeFuture {
        let client = self.client.clone();
        let settings = self.settings.clone();
        Box::pin(async move { charge(&client, &settings, &request).await })
    }
}

async fn call(
    client: &reqwest::Client,
    settings: &StripeSettings,
    method: reqwest::Method,
    path: &str,
    form: &[(String, String)],
    idempotency_key: Option<&str>,
) -> Call {
    let url = format!("{}{path}", settings.api_base.trim_end_matches('/'));
    let mut builder = client
        .request(method.clone(), url)
        .bearer_auth(&settings.secret_key);
    if let Some(key) = idempotency_key {
        builder = builder.header("Idempotency-Key", key);
    }
    if method == reqwest::Method::POST {
        builder = builder.form(form);
    }
    let response = match builder.send().await {
        Ok(response) => response,
        Err(error) => return Call::Transient(format!("stripe request failed: {error}")),
    };
    let status = response.status().as_u16();
    let body: Value = match response.json().await {
        Ok(body) => body,
        Err(error) => {
            return Call::Transient(format!("stripe answered {status} unreadably: {error}"));
        }
    };
    match status {
        200..=299 => Call::Ok(body),
        429 | 500..=599 => Call::Transient(format!("stripe answered {status}")),
        _ => Call::Refused(body),
    }
}

fn provider_error(error: &Value) -> ProviderError {
    let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_owned);
    ProviderError {
        error_type: text("type"),
        code: text("code"),
        decline_code: text("decline_code"),
        message: text("message"),
    }
}

fn failed(error: ProviderError, payment_intent_id: Option<String>) -> ChargeResult {
    ChargeResult::Outcome {
        result: PaymentResult::Failed { error: Some(error) },
        payment_intent_id,
    }
}

fn metadata(request: &PaymentRequest, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut form = vec![
        (
            "metadata[tollgate_workflow_id]".to_owned(),
            request.workflow_id.to_string(),
        ),
        (
            "metadata[workflow_id]".to_owned(),
            request.workflow_id.to_string(),
        ),
        (
            "metadata[invoice_id]".to_owned(),
            request.invoice_id.to_string(),
        ),
        (
            "metadata[workflow_type]".to_owned(),
            request.workflow_type.as_str().to_owned(),
        ),
    ];
    for (key, value) in extra {
        form.push((format!("metadata[{key}]"), value.clone()));
    }
    form
}

/// Carries out one charge.
async fn charge(
    client: &reqwest::Client,
    settings: &StripeSettings,
    request: &PaymentRequest,
) -> ChargeResult {
    let amount = match request.amount.to_minor_units(&request.credit_type) {
        Ok(amount) => amount,
        Err(rejection) => {
            return failed(
                ProviderError {
                    error_type: Some("invalid_request_error".into()),
                    code: Some("amount_invalid".into()),
                    decline_code: None,
                    message: Some(format!("the amount cannot be charged: {rejection}")),
                },
                None,
            );
        }
    };
    if amount < MINIMUM_CHARGE_MINOR_UNITS {
        // Never silently dropped: the workflow fails and says why (see the README).
        return failed(
            ProviderError {
                error_type: Some("invalid_request_error".into()),
                code: Some("amount_too_small".into()),
                decline_code: None,
                message: Some(format!(
                    "{amount} minor units is below Stripe's minimum charge of {MINIMUM_CHARGE_MINOR_UNITS}"
                )),
            },
            None,
        );
    }
    let currency = request
        .credit_type
        .currency
        .clone()
        .unwrap_or_else(|| "usd".into())
        .to_lowercase();
    match request.stripe.payment_type {
        StripePaymentType::PaymentIntent => {
            payment_intent(client, settings, request, amount, &currency).await
        }
        StripePaymentType::Invoice => invoice(client, settings, request, amount, &currency).await,
    }
}

async fn payment_intent(
    client: &reqwest::Client,
    settings: &StripeSettings,
    request: &PaymentRequest,
    amount: i64,
    currency: &str,
) -> ChargeResult {
    let customer = &request.stripe_customer_id;
    let payment_method = match call(
        client,
        settings,
        reqwest::Method::GET,
        &format!("/v1/customers/{customer}"),
        &[],
        None,
    )
    .await
    {
        Call::Ok(body) => body["invoice_settings"]["default_payment_method"]
            .as_str()
            .or_else(|| body["default_source"].as_str())
            .map(str::to_owned),
        Call::Refused(body) => return failed(provider_error(&body["error"]), None),
        Call::Transient(error) => return ChargeResult::Retry { error },
    };
    let Some(payment_method) = payment_method else {
        return failed(
            ProviderError {
                error_type: Some("invalid_request_error".into()),
                code: Some("no_default_payment_method".into()),
                decline_code: None,
                message: Some(format!(
                    "Stripe customer {customer} has no default payment method"
                )),
            },
            None,
        );
    };
    let mut form = vec![
        ("amount".to_owned(), amount.to_string()),
        ("currency".to_owned(), currency.to_owned()),
        ("customer".to_owned(), customer.clone()),
        ("payment_method".to_owned(), payment_method),
        ("confirm".to_owned(), "true".to_owned()),
        ("description".to_owned(), request.description.clone()),
    ];
    if request.stripe.on_session_payment {
        form.push(("setup_future_usage".to_owned(), "off_session".to_owned()));
    } else {
        form.push(("off_session".to_owned(), "true".to_owned()));
    }
    form.extend(metadata(request, &[]));
    let key = request.workflow_id.to_string();
    match call(
        client,
        settings,
        reqwest::Method::POST,
        "/v1/payment_intents",
        &form,
        Some(&key),
    )
    .await
    {
        Call::Ok(intent) => intent_result(&intent),
        Call::Refused(body) => {
            let error = &body["error"];
            let intent_id = error["payment_intent"]["id"].as_str().map(str::to_owned);
            failed(provider_error(error), intent_id)
        }
        Call::Transient(error) => ChargeResult::Retry { error },
    }
}

/// What a PaymentIntent's status means for the workflow.
pub fn intent_result(intent: &Value) -> ChargeResult {
    let id = intent["id"].as_str().map(str::to_owned);
    match intent["status"].as_str().unwrap_or("") {
        "succeeded" => ChargeResult::Outcome {
            result: PaymentResult::Paid,
            payment_intent_id: id,
        },
        "requires_action" | "requires_confirmation" => ChargeResult::Outcome {
            result: PaymentResult::ActionRequired {
                error_message: intent["next_action"]["type"].as_str().map(str::to_owned),
            },
            payment_intent_id: id,
        },
        "processing" | "requires_capture" => ChargeResult::Pending {
            payment_intent_id: id,
        },
        _ => failed(provider_error(&intent["last_payment_error"]), id),
    }
}

async fn invoice(
    client: &reqwest::Client,
    settings: &StripeSettings,
    request: &PaymentRequest,
    amount: i64,
    currency: &str,
) -> ChargeResult {
    let key = |step: &str| format!("{}-{step}", request.workflow_id);
    let customer = request.stripe_customer_id.clone();
    let mut form = vec![
        ("customer".to_owned(), customer.clone()),
        (
            "collection_method".to_owned(),
            "charge_automatically".to_owned(),
        ),
        ("auto_advance".to_owned(), "false".to_owned()),
        ("currency".to_owned(), currency.to_owned()),
        ("description".to_owned(), request.description.clone()),
    ];
    form.extend(metadata(request, &request.stripe.invoice_metadata));
    let invoice = match call(
        client,
        settings,
        reqwest::Method::POST,
        "/v1/invoices",
        &form,
        Some(&key("invoice")),
    )
    .await
    {
        Call::Ok(invoice) => invoice,
        Call::Refused(body) => return failed(provider_error(&body["error"]), None),
        Call::Transient(error) => return ChargeResult::Retry { error },
    };
    let Some(invoice_id) = invoice["id"].as_str().map(str::to_owned) else {
        return ChargeResult::Retry {
            error: "stripe returned an invoice without id".into(),
        };
    };
    let mut item = vec![
        ("customer".to_owned(), customer),
        ("invoice".to_owned(), invoice_id.clone()),
        ("amount".to_owned(), amount.to_string()),
        ("currency".to_owned(), currency.to_owned()),
        ("description".to_owned(), request.description.clone()),
    ];
    item.extend(metadata(request, &[]));
    match call(
        client,
        settings,
        reqwest::Method::POST,
        "/v1/invoiceitems",
        &item,
        Some(&key("item")),
    )
    .await
    {
        Call::Ok(_) => {}
        Call::Refused(body) => return failed(provider_error(&body["error"]), None),
        Call::Transient(error) => return ChargeResult::Retry { error },
    }
    let finalize = format!("/v1/invoices/{invoice_id}/finalize");
    match call(
        client,
        settings,
        reqwest::Method::POST,
        &finalize,
        &[],
        Some(&key("finalize")),
    )
    .await
    {
        Call::Ok(_) => {}
        Call::Refused(body) => return failed(provider_error(&body["error"]), None),
        Call::Transient(error) => return ChargeResult::Retry { error },
    }
    let pay = format!("/v1/invoices/{invoice_id}/pay");
    match call(
        client,
        settings,
        reqwest::Method::POST,
        &pay,
        &[],
        Some(&key("pay")),
    )
    .await
    {
        Call::Ok(paid) if paid["status"] == "paid" => ChargeResult::Outcome {
            result: PaymentResult::Paid,
            payment_intent_id: paid["payment_intent"].as_str().map(str::to_owned),
        },
        Call::Ok(open) => ChargeResult::Pending {
            payment_intent_id: open["payment_intent"].as_str().map(str::to_owned),
        },
        Call::Refused(body) => {
            // The payment failed: void the Stripe invoice too, then report the failure.
            let void = format!("/v1/invoices/{invoice_id}/void");
            if let Call::Transient(error) = call(
                client,
                settings,
                reqwest::Method::POST,
                &void,
                &[],
                Some(&key("void")),
            )
            .await
            {
                return ChargeResult::Retry { error };
            }
            let error = &body["error"];
            failed(
                provider_error(error),
                error["payment_intent"]["id"].as_str().map(str::to_owned),
            )
        }
        Call::Transient(error) => ChargeResult::Retry { error },
    }
}

/// Voids a Stripe invoice after a failure reported by Stripe's webhook (best effort; the
/// workflow's outcome does not depend on it).
pub async fn void_invoice(settings: &StripeSettings, invoice_id: &str, workflow_key: &str) {
    let Ok(provider) = StripeProvider::new(settings.clone()) else {
        return;
    };
    let path = format!("/v1/invoices/{invoice_id}/void");
    let key = format!("{workflow_key}-void");
    match call(
        &provider.client,
        settings,
        reqwest::Method::POST,
        &path,
        &[],
        Some(&key),
    )
    .await
    {
        Call::Ok(_) => {}
        Call::Refused(body) => {
            tracing::warn!(error = %body, invoice_id, "Stripe refused to void the invoice");
        }
        Call::Transient(error) => {
            tracing::warn!(%error, invoice_id, "voiding the Stripe invoice failed");
        }
    }
}

/// Verifies a `Stripe-Signature` header (`t=<unix seconds>,v1=<hex hmac>[,v1=...]`) over
/// `"{t}.{payload}"` with the endpoint's signing secret, within the tolerance of `now_s`.
///
/// # Errors
/// A description of what is wrong (missing parts, stale timestamp, no matching signature).
pub fn verify_signature(
    header: &str,
    payload: &[u8],
    secret: &str,
    now_s: i64,
) -> Result<(), String> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", sig)) => signatures.push(sig.to_owned()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("Stripe-Signature has no timestamp")?;
    if signatures.is_empty() {
        return Err("Stripe-Signature has no v1 signature".into());
    }
    if (now_s - timestamp).abs() > SIGNATURE_TOLERANCE_S {
        return Err("Stripe-Signature timestamp is outside the tolerance".into());
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|_| "unusable webhook secret".to_owned())?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    let expected = hex::encode(mac.finalize().into_bytes());
    let matched = signatures
        .iter()
        .any(|sig| crate::http::constant_time_eq(sig.as_bytes(), expected.as_bytes()));
    if matched {
        Ok(())
    } else {
        Err("no Stripe-Signature v1 value matches".into())
    }
}

/// Signs a payload as Stripe does (tests and fakes).
pub fn sign(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_within_tolerance_only() {
        let payload = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
        let header = sign(payload, "whsec_x", 1_000_000);
        assert!(verify_signature(&header, payload, "whsec_x", 1_000_100).is_ok());
        assert!(verify_signature(&header, payload, "whsec_y", 1_000_100).is_err());
        assert!(verify_signature(&header, b"{}", "whsec_x", 1_000_100).is_err());
        assert!(verify_signature(&header, payload, "whsec_x", 1_000_000 + 301).is_err());
        assert!(verify_signature("v1=abc", payload, "whsec_x", 1_000_000).is_err());
        // Several v1 values (secret rotation): any match counts.
        let rotated = format!("{header},v1=deadbeef");
        assert!(verify_signature(&rotated, payload, "whsec_x", 1_000_000).is_ok());
    }

    #[test]
    fn intent_statuses_map_to_workflow_outcomes() {
        let paid = intent_result(&serde_json::json!({"id": "pi_1", "status": "succeeded"}));
        assert!(matches!(
            paid,
            ChargeResult::Outcome {
                result: PaymentResult::Paid,
                ..
            }
        ));
        let action = intent_result(
            &serde_json::json!({"id": "pi_1", "status": "requires_action", "next_action": {"type": "use_stripe_sdk"}}),
        );
        assert!(matches!(
            action,
            ChargeResult::Outcome {
                result: PaymentResult::ActionRequired { .. },
                ..
            }
        ));
        let declined = intent_result(
            &serde_json::json!({"id": "pi_1", "status": "requires_payment_method",
            "last_payment_error": {"type": "card_error", "decline_code": "insufficient_funds"}}),
        );
        match declined {
            ChargeResult::Outcome {
                result: PaymentResult::Failed { error: Some(e) },
                ..
            } => {
                assert_eq!(e.decline_code.as_deref(), Some("insufficient_funds"));
            }
            other => panic!("{other:?}"),
        }
    }
}

//! The PAYMENT_INTENT flow: one off-session PaymentIntent per workflow, created and confirmed
//! in one request under the workflow id as idempotency key; its refund and cancellation.

use serde_json::Value;

use super::{Client, amount_of, answer, failure, key, metadata, provider_error, refusal};
use crate::domain::effects::PaymentRequest;
use crate::payments::{Answer, ChargeStatus, ProviderObject, RefundReceipt};

/// A PaymentIntent (`2025-03-31.basil` shape) as a provider object; `None` if it has no id.
/// An unknown status is read as `processing` (polled), never as a decline.
pub fn intent_object(intent: &Value) -> Option<ProviderObject> {
    let id = intent["id"].as_str()?.to_owned();
    let error = &intent["last_payment_error"];
    let status = match intent["status"].as_str().unwrap_or("") {
        "succeeded" => ChargeStatus::Succeeded,
        "requires_action" => ChargeStatus::RequiresAction {
            next_action: intent["next_action"]["type"].as_str().map(str::to_owned),
        },
        "requires_capture" => ChargeStatus::RequiresCapture,
        "requires_confirmation" => ChargeStatus::Unfinished,
        // Tollgate confirms with a payment method, so this status follows a failed attempt;
        // without an error the PaymentIntent was never confirmed.
        "requires_payment_method" if error.is_object() => ChargeStatus::Failed {
            error: provider_error(error),
        },
        "requires_payment_method" => ChargeStatus::Unfinished,
        "canceled" => ChargeStatus::Canceled,
        _ => ChargeStatus::Processing,
    };
    Some(ProviderObject {
        payment_intent_id: Some(id.clone()),
        id,
        status,
        created_ms: intent["created"].as_i64().map(|s| s.saturating_mul(1000)),
    })
}

/// How promising an object is, when a search finds several for one workflow (which Tollgate
/// never creates; logged): the one that collected wins.
fn rank(status: &ChargeStatus) -> u8 {
    match status {
        ChargeStatus::Succeeded => 0,
        ChargeStatus::Processing => 1,
        ChargeStatus::RequiresCapture => 2,
        ChargeStatus::RequiresAction { .. } => 3,
        ChargeStatus::Unfinished => 4,
        ChargeStatus::Failed { .. } => 5,
        ChargeStatus::Canceled => 6,
    }
}

pub(super) fn best(
    objects: Vec<ProviderObject>,
    request: &PaymentRequest,
) -> Option<ProviderObject> {
    if objects.len() > 1 {
        let ids: Vec<&str> = objects.iter().map(|o| o.id.as_str()).collect();
        tracing::error!(workflow = %request.workflow_id, ?ids, "several Stripe objects for one workflow");
    }
    objects.into_iter().min_by_key(|o| rank(&o.status))
}

pub(super) async fn find(
    client: &Client,
    request: &PaymentRequest,
) -> Answer<Option<ProviderObject>> {
    client
        .find_raw("payment_intents", request)
        .await
        .map(|found| best(found.iter().filter_map(intent_object).collect(), request))
}

/// The Stripe customer's default payment method, or the refusal to charge without one.
async fn payment_method(client: &Client, request: &PaymentRequest) -> Answer<String> {
    let customer = &request.stripe_customer_id;
    let body = match client.get(&format!("/v1/customers/{customer}"), &[]).await {
        super::Reply::Ok(body) => body,
        other => return failure(other),
    };
    let method = body["invoice_settings"]["default_payment_method"]
        .as_str()
        .or_else(|| body["default_source"].as_str());
    match method {
        Some(method) => Answer::Ok(method.to_owned()),
        None => Answer::refused(
            refusal(
                "no_default_payment_method",
                format!("Stripe customer {customer} has no default payment method"),
            ),
            None,
        ),
    }
}

/// Creates and confirms the PaymentIntent, or confirms an unfinished one found by search.
pub(super) async fn charge(
    client: &Client,
    request: &PaymentRequest,
    existing: Option<ProviderObject>,
) -> Answer<ProviderObject> {
    if let Some(existing) = &existing {
        if existing.status != ChargeStatus::Unfinished {
            return Answer::Ok(existing.clone());
        }
    }
    let (amount, currency) = match amount_of(request) {
        Ok(amount) => amount,
        Err(error) => return Answer::refused(error, None),
    };
    let method = match payment_method(client, request).await {
        Answer::Ok(method) => method,
        other => return other.retype(),
    };
    let mut form = vec![("payment_method".to_owned(), method)];
    if request.stripe.on_session_payment {
        form.push(("setup_future_usage".to_owned(), "off_session".to_owned()));
    } else {
        form.push(("off_session".to_owned(), "true".to_owned()));
    }
    let reply = match existing {
        Some(existing) => {
            let path = format!("/v1/payment_intents/{}/confirm", existing.id);
            client.post(&path, &form, &key(request, "confirm")).await
        }
        None => {
            form.extend([
                ("amount".to_owned(), amount.to_string()),
                ("currency".to_owned(), currency),
                ("customer".to_owned(), request.stripe_customer_id.clone()),
                ("confirm".to_owned(), "true".to_owned()),
                ("description".to_owned(), request.description.clone()),
            ]);
            form.extend(metadata(request, &[]));
            client
                .post("/v1/payment_intents", &form, &key(request, ""))
                .await
        }
    };
    answer(reply, intent_object)
}

pub(super) async fn retrieve(client: &Client, id: &str) -> Answer<ProviderObject> {
    let reply = client.get(&format!("/v1/payment_intents/{id}"), &[]).await;
    answer(reply, intent_object)
}

/// Cancels the PaymentIntent; one that can no longer be cancelled (it succeeded, or is already
/// cancelled) is answered with its current state.
pub(super) async fn cancel(
    client: &Client,
    request: &PaymentRequest,
    id: &str,
) -> Answer<ProviderObject> {
    let form = vec![("cancellation_reason".to_owned(), "abandoned".to_owned())];
    let path = format!("/v1/payment_intents/{id}/cancel");
    match answer(
        client.post(&path, &form, &key(request, "cancel")).await,
        intent_object,
    ) {
        Answer::Refused(_) => retrieve(client, id).await,
        other => other,
    }
}

/// Refunds the PaymentIntent in full; if it was refunded already (a retry past the key
/// window), answers that refund.
pub(super) async fn refund(
    client: &Client,
    request: &PaymentRequest,
    intent: &str,
) -> Answer<RefundReceipt> {
    let mut form = vec![("payment_intent".to_owned(), intent.to_owned())];
    // None of Stripe's refund reasons fits; the metadata says why.
    let why = [(
        "tollgate_reason".to_owned(),
        "collected_after_workflow_failed".to_owned(),
    )];
    form.extend(metadata(request, &why));
    let reply = client
        .post("/v1/refunds", &form, &key(request, "refund"))
        .await;
    match answer(reply, refund_receipt) {
        Answer::Refused(refusal)
            if refusal.error.code.as_deref() == Some("charge_already_refunded") =>
        {
            let query = vec![("payment_intent".to_owned(), intent.to_owned())];
            match client.get("/v1/refunds", &query).await {
                super::Reply::Ok(list) => match list["data"].get(0).and_then(refund_receipt) {
                    Some(receipt) => Answer::Ok(receipt),
                    None => Answer::Refused(refusal),
                },
                other => failure(other),
            }
        }
        other => other,
    }
}

fn refund_receipt(refund: &Value) -> Option<RefundReceipt> {
    Some(RefundReceipt {
        id: refund["id"].as_str()?.to_owned(),
        payment_intent_id: refund["payment_intent"].as_str().map(str::to_owned),
        status: refund["status"].as_str().unwrap_or_default().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn intent_statuses_map_to_charge_statuses() {
        let status = |v: Value| intent_object(&v).unwrap().status;
        assert_eq!(
            status(json!({"id": "pi_1", "status": "succeeded"})),
            ChargeStatus::Succeeded
        );
        assert_eq!(
            status(
                json!({"id": "pi_1", "status": "requires_action", "next_action": {"type": "use_stripe_sdk"}})
            ),
            ChargeStatus::RequiresAction {
                next_action: Some("use_stripe_sdk".into())
            }
        );
        assert_eq!(
            status(json!({"id": "pi_1", "status": "requires_capture"})),
            ChargeStatus::RequiresCapture
        );
        match status(json!({"id": "pi_1", "status": "requires_payment_method",
            "last_payment_error": {"type": "card_error", "decline_code": "insufficient_funds"}}))
        {
            ChargeStatus::Failed { error } => {
                assert_eq!(error.decline_code.as_deref(), Some("insufficient_funds"));
            }
            other => panic!("{other:?}"),
        }
        // Unknown statuses are never declines.
        assert_eq!(
            status(json!({"id": "pi_1", "status": "something_new"})),
            ChargeStatus::Processing
        );
        assert!(intent_object(&json!({"status": "succeeded"})).is_none());
    }
}

//! The INVOICE flow: a Stripe invoice per workflow (create, one item, finalize, pay), each step
//! under its own idempotency key, resumable from whatever state a search finds it in.
//!
//! Since `2025-03-31.basil` an invoice names no PaymentIntent; its payments
//! (`/v1/invoice_payments?invoice=...`, PaymentIntents expanded) say which PaymentIntent paid
//! it and whether an attempt is still running or was declined.

use serde_json::Value;

use super::intents::{best, intent_object};
use super::{Client, Method, Reply, amount_of, answer, failure, json, key, metadata};
use crate::domain::effects::PaymentRequest;
use crate::domain::gate::ProviderError;
use crate::payments::{Answer, ChargeStatus, ProviderObject};

pub(super) async fn find(
    client: &Client,
    request: &PaymentRequest,
) -> Answer<Option<ProviderObject>> {
    let found = match client.find_raw("invoices", request).await {
        Answer::Ok(found) => found,
        other => return other.retype(),
    };
    let mut objects = Vec::with_capacity(found.len());
    for invoice in &found {
        match read(client, invoice).await {
            Answer::Ok(object) => objects.push(object),
            other => return other.retype(),
        }
    }
    Answer::Ok(best(objects, request))
}

/// The invoice's payments, newest first, with their PaymentIntents expanded.
async fn payments(client: &Client, invoice_id: &str) -> Answer<Vec<Value>> {
    let query = vec![
        ("invoice".to_owned(), invoice_id.to_owned()),
        (
            "expand[]".to_owned(),
            "data.payment.payment_intent".to_owned(),
        ),
    ];
    answer(client.get("/v1/invoice_payments", &query).await, |list| {
        list["data"].as_array().cloned()
    })
}

/// The PaymentIntent of an invoice payment (expanded object or bare id).
fn payment_intent(payment: &Value) -> (Option<String>, Option<ProviderObject>) {
    let intent = &payment["payment"]["payment_intent"];
    match intent.as_str() {
        Some(id) => (Some(id.to_owned()), None),
        None => {
            let object = intent_object(intent);
            (object.as_ref().map(|o| o.id.clone()), object)
        }
    }
}

/// An invoice (`2025-03-31.basil` shape) as a provider object, reading its payments where the
/// invoice alone does not say enough.
async fn read(client: &Client, invoice: &Value) -> Answer<ProviderObject> {
    let Some(id) = invoice["id"].as_str().map(str::to_owned) else {
        return Answer::Transient(format!("stripe answered an invoice without id: {invoice}"));
    };
    let created_ms = invoice["created"].as_i64().map(|s| s.saturating_mul(1000));
    let object = |status, payment_intent_id| ProviderObject {
        id: id.clone(),
        status,
        payment_intent_id,
        created_ms,
    };
    let status = invoice["status"].as_str().unwrap_or("");
    let simple = match status {
        "draft" => Some(ChargeStatus::Unfinished),
        "void" => Some(ChargeStatus::Canceled),
        "uncollectible" => Some(ChargeStatus::Failed {
            error: invoice_error(
                "invoice_uncollectible",
                "the Stripe invoice is uncollectible",
            ),
        }),
        _ => None,
    };
    if let Some(simple) = simple {
        return Answer::Ok(object(simple, None));
    }
    let payments = match payments(client, &id).await {
        Answer::Ok(payments) => payments,
        other => return other.retype(),
    };
    if status == "paid" {
        let paid = payments.iter().find(|p| p["status"] == "paid");
        let intent = paid.and_then(|p| payment_intent(p).0);
        return Answer::Ok(object(ChargeStatus::Succeeded, intent));
    }
    // Open: the latest attempt decides; none means it was never asked to pay.
    let (intent_id, intent) = payments.first().map(payment_intent).unwrap_or_default();
    let status = match intent.map(|i| i.status) {
        Some(ChargeStatus::Succeeded | ChargeStatus::Processing) => ChargeStatus::Processing,
        Some(s @ (ChargeStatus::RequiresAction { .. } | ChargeStatus::RequiresCapture)) => s,
        Some(ChargeStatus::Failed { error }) => ChargeStatus::Failed { error },
        _ if invoice["attempted"] == true => ChargeStatus::Failed {
            error: invoice_error(
                "invoice_payment_failed",
                "the Stripe invoice's payment failed",
            ),
        },
        _ => ChargeStatus::Unfinished,
    };
    Answer::Ok(object(status, intent_id))
}

fn invoice_error(code: &str, message: &str) -> ProviderError {
    ProviderError {
        error_type: Some("card_error".into()),
        code: Some(code.into()),
        decline_code: None,
        message: Some(message.into()),
    }
}

pub(super) async fn retrieve(client: &Client, id: &str) -> Answer<ProviderObject> {
    match client.get(&format!("/v1/invoices/{id}"), &[]).await {
        Reply::Ok(invoice) => read(client, &invoice).await,
        other => failure(other),
    }
}

async fn raw(client: &Client, id: &str) -> Answer<Value> {
    json(client.get(&format!("/v1/invoices/{id}"), &[]).await)
}

/// Creates the invoice, or carries an unfinished one on: the item (unless the invoice already
/// has a total), finalize, pay.
pub(super) async fn charge(
    client: &Client,
    request: &PaymentRequest,
    existing: Option<ProviderObject>,
) -> Answer<ProviderObject> {
    let (amount, currency) = match amount_of(request) {
        Ok(amount) => amount,
        Err(error) => return Answer::refused(error, None),
    };
    let invoice = match existing {
        Some(existing) if existing.status != ChargeStatus::Unfinished => {
            return Answer::Ok(existing);
        }
        Some(existing) => raw(client, &existing.id).await,
        None => create(client, request, &currency).await,
    };
    let mut invoice = match invoice {
        Answer::Ok(invoice) => invoice,
        other => return other.retype(),
    };
    let id = invoice["id"].as_str().unwrap_or_default().to_owned();
    if invoice["status"] == "draft" {
        if invoice["total"].as_i64().unwrap_or(0) == 0 {
            if let failed @ (Answer::Refused(_)
            | Answer::InProgress(_)
            | Answer::KeyReused(_)
            | Answer::Transient(_)
            | Answer::Unauthorized(_)) = add_item(client, request, &id, amount, &currency).await
            {
                return failed.retype();
            }
        }
        let path = format!("/v1/invoices/{id}/finalize");
        invoice = match json(client.post(&path, &[], &key(request, "finalize")).await) {
            Answer::Ok(invoice) => invoice,
            other => return other.retype(),
        };
    }
    if invoice["status"] != "open" {
        return read(client, &invoice).await;
    }
    pay(client, request, &id).await
}

async fn create(client: &Client, request: &PaymentRequest, currency: &str) -> Answer<Value> {
    let mut form = vec![
        ("customer".to_owned(), request.stripe_customer_id.clone()),
        (
            "collection_method".to_owned(),
            "charge_automatically".to_owned(),
        ),
        ("auto_advance".to_owned(), "false".to_owned()),
        ("currency".to_owned(), currency.to_owned()),
        ("description".to_owned(), request.description.clone()),
    ];
    form.extend(metadata(request, &request.stripe.invoice_metadata));
    let reply = client
        .post("/v1/invoices", &form, &key(request, "invoice"))
        .await;
    answer(reply, |v| v["id"].is_string().then(|| v.clone()))
}

async fn add_item(
    client: &Client,
    request: &PaymentRequest,
    invoice_id: &str,
    amount: i64,
    currency: &str,
) -> Answer<()> {
    let mut item = vec![
        ("customer".to_owned(), request.stripe_customer_id.clone()),
        ("invoice".to_owned(), invoice_id.to_owned()),
        ("amount".to_owned(), amount.to_string()),
        ("currency".to_owned(), currency.to_owned()),
        ("description".to_owned(), request.description.clone()),
    ];
    item.extend(metadata(request, &[]));
    let reply = client
        .post("/v1/invoiceitems", &item, &key(request, "item"))
        .await;
    answer(reply, |_| Some(()))
}

/// Pays an open invoice. A card error is the decline (or the authentication the customer
/// owes); any other refusal (e.g. it was paid meanwhile) is answered with the invoice's state.
async fn pay(client: &Client, request: &PaymentRequest, id: &str) -> Answer<ProviderObject> {
    let path = format!("/v1/invoices/{id}/pay");
    let reply = client.post(&path, &[], &key(request, "pay")).await;
    let invoice = match reply {
        Reply::Ok(invoice) => invoice,
        other => match failure::<ProviderObject>(other) {
            Answer::Refused(refusal)
                if refusal.error.error_type.as_deref() == Some("card_error") =>
            {
                let error = refusal.error;
                let status =
                    if error.code.as_deref() == Some("invoice_payment_intent_requires_action") {
                        ChargeStatus::RequiresAction { next_action: None }
                    } else {
                        ChargeStatus::Failed {
                            error: error.clone(),
                        }
                    };
                let object = ProviderObject {
                    id: id.to_owned(),
                    status,
                    payment_intent_id: None,
                    created_ms: None,
                };
                if matches!(object.status, ChargeStatus::Failed { .. }) {
                    return Answer::refused(error, Some(object));
                }
                return Answer::Ok(object);
            }
            Answer::Refused(_) => return retrieve(client, id).await,
            other => return other,
        },
    };
    read(client, &invoice).await
}

/// Voids an open invoice, deletes a draft; any other invoice is answered with its state.
pub(super) async fn cancel(
    client: &Client,
    request: &PaymentRequest,
    id: &str,
) -> Answer<ProviderObject> {
    let invoice = match raw(client, id).await {
        Answer::Ok(invoice) => invoice,
        other => return other.retype(),
    };
    match invoice["status"].as_str().unwrap_or("") {
        "draft" => {
            let path = format!("/v1/invoices/{id}");
            match client.call(Method::Delete, &path, &[], None).await {
                Reply::Ok(_) => Answer::Ok(ProviderObject {
                    id: id.to_owned(),
                    status: ChargeStatus::Canceled,
                    payment_intent_id: None,
                    created_ms: None,
                }),
                other => failure(other),
            }
        }
        "open" => {
            let path = format!("/v1/invoices/{id}/void");
            match client.post(&path, &[], &key(request, "void")).await {
                Reply::Ok(invoice) => read(client, &invoice).await,
                other => match failure::<ProviderObject>(other) {
                    Answer::Refused(_) => retrieve(client, id).await,
                    other => other,
                },
            }
        }
        _ => read(client, &invoice).await,
    }
}

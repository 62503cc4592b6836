//! Stripe's REST API as a [`PaymentProvider`]: off-session PaymentIntents or invoices, found
//! again by `metadata.workflow_id` before anything is created, every write under an idempotency
//! key derived from the workflow id. Also the verification of Stripe's webhook signatures.
//!
//! Every request pins [`STRIPE_VERSION`], and only fields that exist in that version are read:
//! since `2025-03-31.basil` an invoice has no `payment_intent` (nor `charge`, nor `paid`), so an
//! invoice's PaymentIntent comes from its invoice payments (`/v1/invoice_payments`).
//!
//! Amounts go to Stripe in integer minor units: the engine's one rounding rule (half-up) is
//! applied here, where money leaves the engine.

mod intents;
mod invoices;
mod signature;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use self::intents::intent_object;
pub use self::signature::{SIGNATURE_TOLERANCE_S, sign, verify_signature};
use super::{Answer, PaymentProvider, ProviderFuture, ProviderObject, RefundReceipt};
use crate::domain::effects::PaymentRequest;
use crate::domain::gate::{ProviderError, StripePaymentType};

/// Stripe's public API.
pub const API_BASE_DEFAULT: &str = "https://api.stripe.com";
/// The API version every request pins (`Stripe-Version`). The Stripe webhook endpoint must be
/// created with the same version, so events carry the shapes read here.
pub const STRIPE_VERSION: &str = "2025-03-31.basil";
/// Stripe refuses charges below its minimum (USD 0.50); in the currency's minor units.
pub const MINIMUM_CHARGE_MINOR_UNITS: i64 = 50;
/// How many list pages the fallback lookup reads (100 objects each) when search is unavailable.
const LIST_PAGES_MAX: usize = 10;

#[derive(Clone, Debug)]
pub struct StripeSettings {
    pub secret_key: crate::secret::Secret,
    pub api_base: String,
    pub timeout_ms: u64,
}

#[derive(Clone)]
pub struct StripeProvider {
    inner: Arc<Client>,
}

/// One request to Stripe's API as a [`StripeTransport`] sends it: the method, the path under
/// the API base, the form (POST) or query (GET, DELETE) parameters in order, and the
/// idempotency key of a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripeCall {
    pub method: StripeMethod,
    pub path: String,
    pub params: Vec<(String, String)>,
    pub idempotency_key: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StripeMethod {
    Get,
    Post,
    Delete,
}

impl StripeMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            StripeMethod::Get => "GET",
            StripeMethod::Post => "POST",
            StripeMethod::Delete => "DELETE",
        }
    }
}

/// What came back from one exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StripeReply {
    /// Stripe answered with a status and a JSON body.
    Answered { status: u16, body: Value },
    /// No readable answer: a connection error or an unparseable body.
    Lost(String),
}

pub type TransportFuture = std::pin::Pin<Box<dyn std::future::Future<Output = StripeReply> + Send>>;

/// Carries calls to Stripe: HTTPS in production ([`StripeProvider::new`]), a scripted Stripe
/// in the simulation. The client bounds every call by `timeout_ms` itself, so a transport that
/// never answers is a timeout like any other.
pub trait StripeTransport: Send + Sync + 'static {
    fn send(&self, call: StripeCall) -> TransportFuture;
}

/// Stripe over HTTPS with `reqwest`: the secret key as bearer, [`STRIPE_VERSION`] pinned.
struct HttpTransport {
    http: reqwest::Client,
    api_base: String,
    secret_key: String,
}

impl StripeTransport for HttpTransport {
    fn send(&self, call: StripeCall) -> TransportFuture {
        let url = format!("{}{}", self.api_base.trim_end_matches('/'), call.path);
        let method = match call.method {
            StripeMethod::Get => reqwest::Method::GET,
            StripeMethod::Post => reqwest::Method::POST,
            StripeMethod::Delete => reqwest::Method::DELETE,
        };
        let mut builder = self
            .http
            .request(method, url)
            .bearer_auth(&self.secret_key)
            .header("Stripe-Version", STRIPE_VERSION);
        if let Some(key) = &call.idempotency_key {
            builder = builder.header("Idempotency-Key", key);
        }
        builder = match call.method {
            StripeMethod::Post => builder.form(&call.params),
            StripeMethod::Get | StripeMethod::Delete => builder.query(&call.params),
        };
        Box::pin(async move {
            let response = match builder.send().await {
                Ok(response) => response,
                Err(error) => return StripeReply::Lost(format!("stripe request failed: {error}")),
            };
            let status = response.status().as_u16();
            match response.json::<Value>().await {
                Ok(body) => StripeReply::Answered { status, body },
                Err(error) => {
                    StripeReply::Lost(format!("stripe answered {status} unreadably: {error}"))
                }
            }
        })
    }
}

struct Client {
    transport: Arc<dyn StripeTransport>,
    timeout_ms: u64,
}

impl StripeProvider {
    /// Stripe over HTTPS.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(settings: StripeSettings) -> Result<StripeProvider, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .build()
            .map_err(|e| format!("cannot build the Stripe client: {e}"))?;
        let transport = HttpTransport {
            http,
            api_base: settings.api_base.clone(),
            secret_key: settings.secret_key.expose().to_owned(),
        };
        Ok(StripeProvider::with_transport(
            Arc::new(transport),
            settings.timeout_ms,
        ))
    }

    /// Stripe through `transport` (the simulation's scripted Stripe), each call bounded by
    /// `timeout_ms`.
    pub fn with_transport(transport: Arc<dyn StripeTransport>, timeout_ms: u64) -> StripeProvider {
        StripeProvider {
            inner: Arc::new(Client {
                transport,
                timeout_ms,
            }),
        }
    }
}

/// One HTTP exchange with Stripe, sorted.
enum Reply {
    Ok(Value),
    /// A readable error answer.
    Error {
        status: u16,
        body: Value,
    },
    /// No readable answer (connection error, timeout, unparseable body).
    Lost(String),
}

use StripeMethod as Method;

impl Client {
    async fn call(
        &self,
        method: Method,
        path: &str,
        params: &[(String, String)],
        idempotency_key: Option<&str>,
    ) -> Reply {
        let call = StripeCall {
            method,
            path: path.to_owned(),
            params: params.to_vec(),
            idempotency_key: idempotency_key.map(str::to_owned),
        };
        let sent = self.transport.send(call);
        match actix_rt::time::timeout(Duration::from_millis(self.timeout_ms), sent).await {
            Err(_) => Reply::Lost(format!(
                "stripe did not answer within {} ms",
                self.timeout_ms
            )),
            Ok(StripeReply::Lost(error)) => Reply::Lost(error),
            Ok(StripeReply::Answered { status, body }) if (200..300).contains(&status) => {
                Reply::Ok(body)
            }
            Ok(StripeReply::Answered { status, body }) => Reply::Error { status, body },
        }
    }

    async fn get(&self, path: &str, query: &[(String, String)]) -> Reply {
        self.call(Method::Get, path, query, None).await
    }

    async fn post(&self, path: &str, form: &[(String, String)], key: &str) -> Reply {
        self.call(Method::Post, path, form, Some(key)).await
    }
}

/// Sorts a failed reply into what the engine may conclude. `Ok` replies are the caller's.
fn failure<T>(reply: Reply) -> Answer<T> {
    match reply {
        Reply::Ok(_) => Answer::Transient("unexpected success".into()),
        Reply::Lost(error) => Answer::Transient(error),
        Reply::Error { status, body } => {
            let error = &body["error"];
            let message = error["message"].as_str().unwrap_or_default().to_owned();
            match status {
                409 => Answer::InProgress(message),
                400 if error["type"] == "idempotency_error" => Answer::KeyReused(message),
                401 | 403 => Answer::Unauthorized(format!("stripe answered {status}: {message}")),
                429 | 500..=599 => {
                    Answer::Transient(format!("stripe answered {status}: {message}"))
                }
                _ => Answer::refused(
                    provider_error(error),
                    error
                        .get("payment_intent")
                        .filter(|pi| pi.is_object())
                        .and_then(intent_object),
                ),
            }
        }
    }
}

/// Maps an `Ok` reply through `read`; anything else through [`failure`].
fn answer<T>(reply: Reply, read: impl FnOnce(&Value) -> Option<T>) -> Answer<T> {
    match reply {
        Reply::Ok(body) => match read(&body) {
            Some(value) => Answer::Ok(value),
            None => Answer::Transient(format!("stripe answered an unexpected object: {body}")),
        },
        other => failure(other),
    }
}

/// An `Ok` reply's body as it is.
fn json(reply: Reply) -> Answer<Value> {
    answer(reply, |v| Some(v.clone()))
}

pub(crate) fn provider_error(error: &Value) -> ProviderError {
    let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_owned);
    ProviderError {
        error_type: text("type"),
        code: text("code"),
        decline_code: text("decline_code"),
        message: text("message"),
    }
}

/// A refusal made by Tollgate itself before calling Stripe (nothing was sent).
fn refusal(code: &str, message: String) -> ProviderError {
    ProviderError {
        error_type: Some("invalid_request_error".into()),
        code: Some(code.into()),
        decline_code: None,
        message: Some(message),
    }
}

/// The idempotency key of one write of a workflow: the workflow id for the PaymentIntent
/// create (the key Tollgate always used), `<workflow>-<step>` for the others.
fn key(request: &PaymentRequest, step: &str) -> String {
    if step.is_empty() {
        request.workflow_id.to_string()
    } else {
        format!("{}-{step}", request.workflow_id)
    }
}

/// The metadata keys Tollgate writes itself: a gate's `invoice_metadata` may not name them
/// (refused at the edge; skipped here for anything stored before that rule).
pub const RESERVED_METADATA_KEYS: [&str; 4] = [
    "tollgate_workflow_id",
    "workflow_id",
    "invoice_id",
    "workflow_type",
];

/// The metadata every object carries; `workflow_id` is what [`PaymentProvider::find`] searches
/// and what Stripe's webhooks are routed by, so the caller's keys come first and can never
/// replace Tollgate's.
fn metadata(request: &PaymentRequest, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut form: Vec<(String, String)> = extra
        .iter()
        .filter(|(key, _)| {
            !RESERVED_METADATA_KEYS.contains(&key.as_str()) && !key.contains(['[', ']'])
        })
        .map(|(key, value)| (format!("metadata[{key}]"), value.clone()))
        .collect();
    form.extend([
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
    ]);
    form
}

/// The search query for a workflow's objects.
fn workflow_query(request: &PaymentRequest) -> Vec<(String, String)> {
    vec![(
        "query".to_owned(),
        format!("metadata['workflow_id']:'{}'", request.workflow_id),
    )]
}

/// The amount in minor units and the lower-case currency, or the refusal to charge it.
fn amount_of(request: &PaymentRequest) -> Result<(i64, String), ProviderError> {
    let amount = request
        .amount
        .to_minor_units(&request.credit_type)
        .map_err(|e| {
            refusal(
                "amount_invalid",
                format!("the amount cannot be charged: {e}"),
            )
        })?;
    if amount < MINIMUM_CHARGE_MINOR_UNITS {
        // Never silently dropped: the workflow fails and says why (see the README).
        return Err(refusal(
            "amount_too_small",
            format!(
                "{amount} minor units is below Stripe's minimum charge of {MINIMUM_CHARGE_MINOR_UNITS}"
            ),
        ));
    }
    let currency = request
        .credit_type
        .currency
        .clone()
        .unwrap_or_else(|| "usd".into())
        .to_lowercase();
    Ok((amount, currency))
}

/// Objects of a search or list answer whose `metadata.workflow_id` is the workflow's (search
/// answers are filtered again: a list answer holds every object of the customer).
fn of_workflow<'a>(list: &'a Value, request: &PaymentRequest) -> Vec<&'a Value> {
    let id = request.workflow_id.to_string();
    list["data"]
        .as_array()
        .map(|data| {
            data.iter()
                .filter(|o| o["metadata"]["workflow_id"].as_str() == Some(id.as_str()))
                .collect()
        })
        .unwrap_or_default()
}

impl Client {
    /// The workflow's objects of one kind (`payment_intents` or `invoices`): search, or the
    /// customer's list when this account cannot search (search answers 400/404 there).
    async fn find_raw(&self, kind: &str, request: &PaymentRequest) -> Answer<Vec<Value>> {
        let search = self
            .get(&format!("/v1/{kind}/search"), &workflow_query(request))
            .await;
        match search {
            Reply::Ok(body) => {
                return Answer::Ok(of_workflow(&body, request).into_iter().cloned().collect());
            }
            Reply::Error {
                status: 400 | 404, ..
            } => {}
            other => return failure(other),
        }
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..LIST_PAGES_MAX {
            let mut query = vec![
                ("customer".to_owned(), request.stripe_customer_id.clone()),
                ("limit".to_owned(), "100".to_owned()),
            ];
            if let Some(after) = &after {
                query.push(("starting_after".to_owned(), after.clone()));
            }
            let body = match self.get(&format!("/v1/{kind}"), &query).await {
                Reply::Ok(body) => body,
                other => return failure(other),
            };
            found.extend(of_workflow(&body, request).into_iter().cloned());
            after = body["data"]
                .as_array()
                .and_then(|d| d.last())
                .and_then(|o| o["id"].as_str())
                .map(str::to_owned);
            if body["has_more"] != true || after.is_none() {
                return Answer::Ok(found);
            }
        }
        Answer::Transient(
            "too many objects to list for this customer; search is unavailable".into(),
        )
    }
}

impl PaymentProvider for StripeProvider {
    fn find(&self, request: &PaymentRequest) -> ProviderFuture<Option<ProviderObject>> {
        let client = Arc::clone(&self.inner);
        let request = request.clone();
        Box::pin(async move {
            match request.stripe.payment_type {
                StripePaymentType::PaymentIntent => intents::find(&client, &request).await,
                StripePaymentType::Invoice => invoices::find(&client, &request).await,
            }
        })
    }

    fn charge(
        &self,
        request: &PaymentRequest,
        existing: Option<ProviderObject>,
    ) -> ProviderFuture<ProviderObject> {
        let client = Arc::clone(&self.inner);
        let request = request.clone();
        Box::pin(async move {
            match request.stripe.payment_type {
                StripePaymentType::PaymentIntent => {
                    intents::charge(&client, &request, existing).await
                }
                StripePaymentType::Invoice => invoices::charge(&client, &request, existing).await,
            }
        })
    }

    fn retrieve(
        &self,
        request: &PaymentRequest,
        object_id: &str,
    ) -> ProviderFuture<ProviderObject> {
        let client = Arc::clone(&self.inner);
        let (request, id) = (request.clone(), object_id.to_owned());
        Box::pin(async move {
            match request.stripe.payment_type {
                StripePaymentType::PaymentIntent => intents::retrieve(&client, &id).await,
                StripePaymentType::Invoice => invoices::retrieve(&client, &id).await,
            }
        })
    }

    fn cancel(&self, request: &PaymentRequest, object_id: &str) -> ProviderFuture<ProviderObject> {
        let client = Arc::clone(&self.inner);
        let (request, id) = (request.clone(), object_id.to_owned());
        Box::pin(async move {
            match request.stripe.payment_type {
                StripePaymentType::PaymentIntent => intents::cancel(&client, &request, &id).await,
                StripePaymentType::Invoice => invoices::cancel(&client, &request, &id).await,
            }
        })
    }

    fn refund(&self, request: &PaymentRequest, object_id: &str) -> ProviderFuture<RefundReceipt> {
        let client = Arc::clone(&self.inner);
        let (request, id) = (request.clone(), object_id.to_owned());
        Box::pin(async move {
            let intent = match request.stripe.payment_type {
                StripePaymentType::PaymentIntent => id,
                StripePaymentType::Invoice => {
                    match invoices::retrieve(&client, &id)
                        .await
                        .map(|i| i.payment_intent_id)
                    {
                        Answer::Ok(Some(intent)) => intent,
                        Answer::Ok(None) => {
                            return Answer::Transient(format!(
                                "invoice {id} has no paid PaymentIntent yet"
                            ));
                        }
                        other => return other.retype(),
                    }
                }
            };
            intents::refund(&client, &request, &intent).await
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_caller_s_metadata_never_replaces_the_keys_that_name_the_workflow() {
        let workflow_id = crate::domain::Id::from_key("test-workflow", "1");
        let request = crate::domain::fixtures::payment_request(workflow_id);
        let extra = vec![
            ("workflow_id".to_owned(), "someone-else".to_owned()),
            ("x][workflow_id".to_owned(), "someone-else".to_owned()),
            ("order".to_owned(), "42".to_owned()),
        ];
        let form = metadata(&request, &extra);
        let workflow: Vec<&String> = form
            .iter()
            .filter(|(k, _)| k == "metadata[workflow_id]")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(workflow, vec![&workflow_id.to_string()]);
        assert!(form.iter().all(|(_, v)| v != "someone-else"));
        assert!(form.contains(&("metadata[order]".to_owned(), "42".to_owned())));
    }

    fn error(status: u16, body: Value) -> Answer<()> {
        failure(Reply::Error { status, body })
    }

    #[test]
    fn every_stripe_error_status_is_sorted_by_what_the_engine_may_conclude() {
        let idempotency = json!({"error": {"type": "idempotency_error", "message": "x"}});
        assert!(matches!(
            error(409, idempotency.clone()),
            Answer::InProgress(_)
        ));
        assert!(matches!(error(400, idempotency), Answer::KeyReused(_)));
        for status in [429, 500, 502, 503] {
            let body = json!({"error": {"type": "api_error"}});
            assert!(
                matches!(error(status, body), Answer::Transient(_)),
                "{status}"
            );
        }
        for status in [401, 403] {
            let body = json!({"error": {"type": "invalid_request_error"}});
            assert!(
                matches!(error(status, body), Answer::Unauthorized(_)),
                "{status}"
            );
        }
        assert!(matches!(
            failure::<()>(Reply::Lost("timeout".into())),
            Answer::Transient(_)
        ));
        // A card decline is a refusal that names its PaymentIntent.
        let declined = json!({"error": {"type": "card_error", "decline_code": "insufficient_funds",
            "payment_intent": {"id": "pi_1", "status": "requires_payment_method",
                "last_payment_error": {"type": "card_error"}}}});
        match error(402, declined) {
            Answer::Refused(refusal) => {
                assert_eq!(
                    refusal.error.decline_code.as_deref(),
                    Some("insufficient_funds")
                );
                assert_eq!(refusal.object.map(|o| o.id).as_deref(), Some("pi_1"));
            }
            other => panic!("{other:?}"),
        }
        let invalid =
            json!({"error": {"type": "invalid_request_error", "code": "resource_missing"}});
        assert!(matches!(error(400, invalid), Answer::Refused(_)));
    }
}

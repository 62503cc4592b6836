//! A local fake of Stripe's REST API, faithful where Tollgate's money safety depends on it:
//! - `Idempotency-Key` as Stripe keeps it: the first answer (a 500 included) is saved and
//!   replayed; a key whose first request is still running answers 409; the same key with other
//!   parameters answers 400 `idempotency_error`; keys expire 24 h after first use (the fake's
//!   own settable clock), after which the same key runs the request again;
//! - search (`/v1/{payment_intents,invoices}/search?query=metadata['workflow_id']:'...'`, which
//!   can be told to lag) and list by customer;
//! - PaymentIntents (create+confirm, retrieve, cancel, confirm), refunds, and invoices in the
//!   `2025-03-31.basil` shape: no `invoice.payment_intent`; `/v1/invoice_payments` instead.
//!
//! A mode decides what the next charging request (PaymentIntent create, invoice pay) does.
//!
//! The same fake serves HTTP on loopback ([`FakeStripe::start`], tests/stripe.rs) or is the
//! engine's [`StripeTransport`] in process ([`FakeStripe::in_process`], the simulation), and
//! records the webhook events Stripe would send for every change of an object's status.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use tollgate::actors::clock::{Clock, ManualClock};
use tollgate::payments::stripe::{
    StripeCall, StripeMethod, StripeReply, StripeTransport, TransportFuture,
};

pub const SECRET_KEY: &str = "sk_test_tollgate";
const DAY_MS: i64 = 86_400_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Succeed,
    Decline,
    RequireAction,
    Processing,
    RequiresCapture,
    /// Answer 500 before doing anything (saved under the key, so replayed).
    Fail500Before,
    /// Do the work (the charge exists), then answer 500 (saved under the key).
    Fail500After,
    /// Do the work and save the answer, then answer only after `hang_ms` (a client timeout).
    Hang,
    /// Hold the key in progress for `hang_ms`, then do the work (a retry meanwhile gets 409).
    Slow,
}

struct Saved {
    fingerprint: String,
    status: u16,
    body: Value,
    at_ms: i64,
    in_progress: bool,
}

pub struct FakeState {
    pub mode: Mode,
    pub hang_ms: u64,
    idempotency: HashMap<String, Saved>,
    pub intents: Vec<Value>,
    pub invoices: Vec<Value>,
    pub invoice_payments: Vec<Value>,
    pub refunds: Vec<Value>,
    /// Every request as it arrives: method, path, answered status (0 until answered; a
    /// request whose client went away stays 0).
    pub requests: Vec<(String, String, u16)>,
    /// `Stripe-Version` of every request ("" when absent).
    pub versions: Vec<String>,
    pub default_payment_method: String,
    /// Search answers nothing (Stripe's search index lags behind writes).
    pub search_hidden: bool,
    /// A cancellation finds the PaymentIntent just succeeded (the customer completed 3DS).
    pub succeed_on_cancel: bool,
    /// The webhook events Stripe would send, in order (`type`, `data.object`), for every
    /// PaymentIntent and invoice status change.
    pub events: Vec<Value>,
}

#[derive(Clone)]
pub struct FakeStripe<C = ManualClock> {
    pub base: String,
    pub state: Arc<Mutex<FakeState>>,
    pub clock: C,
}

fn new_state(mode: Mode) -> Arc<Mutex<FakeState>> {
    Arc::new(Mutex::new(FakeState {
        mode,
        hang_ms: 5_000,
        idempotency: HashMap::new(),
        intents: Vec::new(),
        invoices: Vec::new(),
        invoice_payments: Vec::new(),
        refunds: Vec::new(),
        requests: Vec::new(),
        versions: Vec::new(),
        default_payment_method: "pm_card_visa".into(),
        search_hidden: false,
        succeed_on_cancel: false,
        events: Vec::new(),
    }))
}

impl FakeStripe {
    pub fn start(mode: Mode, clock: ManualClock) -> FakeStripe {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = new_state(mode);
        let fake = FakeStripe {
            base: format!("http://127.0.0.1:{port}"),
            state,
            clock,
        };
        let served = fake.clone();
        let server = HttpServer::new(move || {
            let fake = served.clone();
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let fake = fake.clone();
                async move { fake.handle(req, body).await }
            }))
        })
        .workers(2)
        .shutdown_timeout(1)
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        fake
    }
}

// `in_process` and `take_events` are only the simulation's (tests/simulation/stripe.rs).
#[allow(dead_code)]
impl<C: Clock + Clone> FakeStripe<C> {
    /// The fake without a server: the engine calls it through [`StripeTransport`].
    pub fn in_process(mode: Mode, clock: C) -> FakeStripe<C> {
        FakeStripe {
            base: String::new(),
            state: new_state(mode),
            clock,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn intents(&self) -> Vec<Value> {
        self.state.lock().unwrap().intents.clone()
    }

    pub fn refunds(&self) -> Vec<Value> {
        self.state.lock().unwrap().refunds.clone()
    }

    /// Requests that reached an endpoint (`POST /v1/payment_intents` etc.), replays included.
    pub fn count(&self, method: &str, path: &str) -> usize {
        let s = self.state.lock().unwrap();
        s.requests
            .iter()
            .filter(|(m, p, _)| m == method && p == path)
            .count()
    }

    pub fn answered(&self, status: u16) -> usize {
        let s = self.state.lock().unwrap();
        s.requests.iter().filter(|(_, _, st)| *st == status).count()
    }

    pub fn set_intent_status(&self, id: &str, status: &str) {
        let mut s = self.state.lock().unwrap();
        let intent = s.intents.iter_mut().find(|i| i["id"] == id).unwrap();
        intent["status"] = json!(status);
        if status != "requires_action" {
            intent["next_action"] = Value::Null;
        }
    }

    /// The bank or the customer decides a PaymentIntent that was `processing` or
    /// `requires_action`: it succeeds or is declined, its invoice (if it pays one) follows,
    /// and Stripe's events are recorded. `false` when the PaymentIntent was not undecided.
    pub fn settle(&self, id: &str, succeeded: bool) -> bool {
        let mut s = self.state.lock().unwrap();
        let now_s = self.clock.now_ms() / 1000;
        let Some(intent) = s.intents.iter_mut().find(|i| i["id"] == id) else {
            return false;
        };
        if !matches!(
            intent["status"].as_str(),
            Some("processing" | "requires_action")
        ) {
            return false;
        }
        intent["next_action"] = Value::Null;
        if succeeded {
            intent["status"] = json!("succeeded");
        } else {
            intent["status"] = json!("requires_payment_method");
            intent["last_payment_error"] = card_error("card_declined", None)["error"].clone();
        }
        let intent = intent.clone();
        emit_intent(&mut s, &intent, now_s);
        let paying = s
            .invoice_payments
            .iter_mut()
            .find(|p| p["payment"]["payment_intent"] == id);
        let Some(payment) = paying else {
            return true;
        };
        let invoice_id = payment["invoice"].clone();
        if succeeded {
            payment["status"] = json!("paid");
        }
        let Some(invoice) = s.invoices.iter_mut().find(|i| i["id"] == invoice_id) else {
            return true;
        };
        if invoice["status"] != "open" {
            return true;
        }
        if succeeded {
            invoice["status"] = json!("paid");
            invoice["amount_paid"] = invoice["amount_due"].clone();
        }
        let invoice = invoice.clone();
        let event_type = if succeeded {
            "invoice.paid"
        } else {
            "invoice.payment_failed"
        };
        emit(&mut s, event_type, &invoice, now_s);
        true
    }

    /// Takes the events recorded since the last call.
    pub fn take_events(&self) -> Vec<Value> {
        std::mem::take(&mut self.state.lock().unwrap().events)
    }

    async fn handle(&self, req: HttpRequest, body: web::Bytes) -> HttpResponse {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if auth != format!("Bearer {SECRET_KEY}") {
            return reply(
                401,
                json!({"error": {"type": "invalid_request_error", "message": "bad key"}}),
            );
        }
        let version = req
            .headers()
            .get("stripe-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        self.state.lock().unwrap().versions.push(version);
        let method = match req.method().as_str() {
            "POST" => StripeMethod::Post,
            "DELETE" => StripeMethod::Delete,
            _ => StripeMethod::Get,
        };
        let body_text = String::from_utf8_lossy(&body).into_owned();
        let params = if method == StripeMethod::Post {
            decode_pairs(&body_text)
        } else {
            decode_pairs(req.query_string())
        };
        let idempotency_key = req
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let call = StripeCall {
            method,
            path: req.path().to_owned(),
            params,
            idempotency_key,
        };
        let (status, body) = self.serve(call).await;
        reply(status, body)
    }

    /// One API request, as Stripe would answer it.
    pub async fn serve(&self, call: StripeCall) -> (u16, Value) {
        let method = call.method.as_str();
        let path = call.path.as_str();
        let params = &call.params;
        let key = call.idempotency_key.clone().filter(|_| method == "POST");
        let fingerprint = format!("{method} {path} {params:?}");
        let index = self.log(method, path);
        if let Some(key) = &key {
            if let Some(answer) = self.claim(key, &fingerprint) {
                self.answer(index, answer.0);
                return answer;
            }
        }
        let charging = is_charging(method, path);
        let mode = self.state.lock().unwrap().mode;
        let hang = Duration::from_millis(self.state.lock().unwrap().hang_ms);
        // The work runs on its own task: like Stripe, it finishes even when the client gives
        // up waiting (a slow request outlives the client's timeout).
        let this = self.clone();
        let (method, path, params) = (method.to_owned(), path.to_owned(), params.clone());
        let work = actix_rt::spawn(async move {
            if charging && mode == Mode::Slow {
                actix_rt::time::sleep(hang).await;
            }
            let (status, response) = {
                let mut s = this.state.lock().unwrap();
                let now_s = this.clock.now_ms() / 1000;
                s.mode = mode;
                route(&mut s, &method, &path, &params, now_s)
            };
            if let Some(key) = key {
                let mut s = this.state.lock().unwrap();
                // Stripe saves nothing for a request that failed validation.
                if status == 400 && response["error"]["param"].is_string() {
                    s.idempotency.remove(&key);
                } else if let Some(saved) = s.idempotency.get_mut(&key) {
                    saved.status = status;
                    saved.body = response.clone();
                    saved.in_progress = false;
                }
            }
            (status, response)
        });
        let (status, response) = work.await.expect("the fake's work does not panic");
        if charging && mode == Mode::Hang {
            actix_rt::time::sleep(hang).await;
        }
        self.answer(index, status);
        (status, response)
    }

    /// Stripe's idempotency layer: `Some(answer)` replays or refuses; `None` claims the key.
    fn claim(&self, key: &str, fingerprint: &str) -> Option<(u16, Value)> {
        let now = self.clock.now_ms();
        let mut s = self.state.lock().unwrap();
        s.idempotency.retain(|_, saved| now - saved.at_ms < DAY_MS);
        if let Some(saved) = s.idempotency.get(key) {
            if saved.in_progress {
                return Some((
                    409,
                    json!({"error": {"type": "idempotency_error", "message":
                        "There is currently another in-progress request using this Idempotent Key. Please try again later."}}),
                ));
            }
            if saved.fingerprint != fingerprint {
                return Some((
                    400,
                    json!({"error": {"type": "idempotency_error", "message":
                        "Keys for idempotent requests can only be used with the same parameters they were first used with."}}),
                ));
            }
            return Some((saved.status, saved.body.clone()));
        }
        s.idempotency.insert(
            key.to_owned(),
            Saved {
                fingerprint: fingerprint.to_owned(),
                status: 0,
                body: Value::Null,
                at_ms: now,
                in_progress: true,
            },
        );
        None
    }

    fn log(&self, method: &str, path: &str) -> usize {
        let mut s = self.state.lock().unwrap();
        s.requests.push((method.to_owned(), path.to_owned(), 0));
        s.requests.len() - 1
    }

    fn answer(&self, index: usize, status: u16) {
        self.state.lock().unwrap().requests[index].2 = status;
    }
}

impl<C: Clock + Clone + Send + Sync + 'static> StripeTransport for FakeStripe<C> {
    fn send(&self, call: StripeCall) -> TransportFuture {
        let fake = self.clone();
        Box::pin(async move {
            let (status, body) = fake.serve(call).await;
            StripeReply::Answered { status, body }
        })
    }
}

fn reply(status: u16, body: Value) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(body)
}

fn is_charging(method: &str, path: &str) -> bool {
    method == "POST"
        && (path == "/v1/payment_intents"
            || (path.starts_with("/v1/invoices/") && path.ends_with("/pay")))
}

fn decode_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn metadata(params: &[(String, String)]) -> Value {
    let map: serde_json::Map<String, Value> = params
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata[")
                .and_then(|k| k.strip_suffix(']'))
                .map(|k| (k.to_owned(), json!(v)))
        })
        .collect();
    Value::Object(map)
}

fn not_found(what: &str) -> (u16, Value) {
    (
        404,
        json!({"error": {"type": "invalid_request_error", "code": "resource_missing",
            "message": format!("No such {what}")}}),
    )
}

fn card_error(code: &str, intent: Option<&Value>) -> Value {
    let mut error = json!({
        "type": "card_error", "code": code, "decline_code": "insufficient_funds",
        "message": "Your card has insufficient funds."
    });
    if let Some(intent) = intent {
        error["payment_intent"] = intent.clone();
    }
    json!({"error": error})
}

fn server_error() -> (u16, Value) {
    (
        500,
        json!({"error": {"type": "api_error", "message": "An unknown error occurred"}}),
    )
}

/// Search answers: `metadata['workflow_id']:'<id>'`.
fn search(objects: &[Value], params: &[(String, String)], hidden: bool) -> (u16, Value) {
    let query = param(params, "query").unwrap_or("");
    let wanted = query
        .strip_prefix("metadata['workflow_id']:'")
        .and_then(|q| q.strip_suffix('\''));
    let Some(wanted) = wanted else {
        return (
            400,
            json!({"error": {"type": "invalid_request_error", "message": "unsupported query"}}),
        );
    };
    let data: Vec<Value> = if hidden {
        Vec::new()
    } else {
        objects
            .iter()
            .filter(|o| o["metadata"]["workflow_id"] == wanted)
            .cloned()
            .collect()
    };
    (
        200,
        json!({"object": "search_result", "data": data, "has_more": false, "next_page": null}),
    )
}

/// List answers by customer, newest first, paginated with `limit` and `starting_after`.
fn list(objects: &[Value], params: &[(String, String)]) -> (u16, Value) {
    let customer = param(params, "customer");
    let limit: usize = param(params, "limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(10);
    let mut all: Vec<&Value> = objects
        .iter()
        .rev()
        .filter(|o| customer.is_none_or(|c| o["customer"] == c))
        .collect();
    if let Some(after) = param(params, "starting_after") {
        if let Some(pos) = all.iter().position(|o| o["id"] == after) {
            all = all.split_off(pos + 1);
        }
    }
    let has_more = all.len() > limit;
    let data: Vec<Value> = all.into_iter().take(limit).cloned().collect();
    (
        200,
        json!({"object": "list", "data": data, "has_more": has_more}),
    )
}

fn route(
    s: &mut FakeState,
    method: &str,
    path: &str,
    params: &[(String, String)],
    now_s: i64,
) -> (u16, Value) {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["v1", "customers", id]) => (
            200,
            json!({"id": id, "object": "customer",
                "invoice_settings": {"default_payment_method": s.default_payment_method}}),
        ),
        ("POST", ["v1", "payment_intents"]) => create_intent(s, params, now_s),
        ("GET", ["v1", "payment_intents", "search"]) => search(&s.intents, params, s.search_hidden),
        ("GET", ["v1", "payment_intents"]) => list(&s.intents, params),
        ("GET", ["v1", "payment_intents", id]) => match s.intents.iter().find(|i| i["id"] == *id) {
            Some(intent) => (200, intent.clone()),
            None => not_found("payment_intent"),
        },
        ("POST", ["v1", "payment_intents", id, "cancel"]) => cancel_intent(s, id, now_s),
        ("POST", ["v1", "payment_intents", id, "confirm"]) => confirm_intent(s, id, now_s),
        ("POST", ["v1", "refunds"]) => refund(s, params, now_s),
        ("GET", ["v1", "refunds"]) => {
            let intent = param(params, "payment_intent");
            let data: Vec<Value> = s
                .refunds
                .iter()
                .filter(|r| intent.is_none_or(|i| r["payment_intent"] == i))
                .cloned()
                .collect();
            (
                200,
                json!({"object": "list", "data": data, "has_more": false}),
            )
        }
        ("POST", ["v1", "invoices"]) => {
            let id = format!("in_{}", s.invoices.len() + 1);
            let invoice = json!({"id": id, "object": "invoice", "status": "draft",
                "customer": param(params, "customer"), "metadata": metadata(params),
                "total": 0, "amount_due": 0, "amount_paid": 0, "attempted": false,
                "attempt_count": 0, "created": now_s});
            s.invoices.push(invoice.clone());
            (200, invoice)
        }
        ("GET", ["v1", "invoices", "search"]) => search(&s.invoices, params, s.search_hidden),
        ("GET", ["v1", "invoices"]) => list(&s.invoices, params),
        ("POST", ["v1", "invoiceitems"]) => add_item(s, params),
        ("GET" | "POST" | "DELETE", ["v1", "invoices", id, ..]) => {
            let action = segments.get(3).copied().unwrap_or("");
            invoice_action(s, method, id, action, now_s)
        }
        ("GET", ["v1", "invoice_payments"]) => invoice_payments(s, params),
        _ => (
            404,
            json!({"error": {"type": "invalid_request_error", "message": format!("unknown path {method} {path}")}}),
        ),
    }
}

/// An invoice's payments, newest first, PaymentIntents expanded when asked.
fn invoice_payments(s: &FakeState, params: &[(String, String)]) -> (u16, Value) {
    let invoice = param(params, "invoice");
    let expand = param(params, "expand[]") == Some("data.payment.payment_intent");
    let mut data: Vec<Value> = s
        .invoice_payments
        .iter()
        .rev()
        .filter(|p| invoice.is_none_or(|i| p["invoice"] == i))
        .cloned()
        .collect();
    if expand {
        for payment in &mut data {
            let id = payment["payment"]["payment_intent"].clone();
            if let Some(intent) = s.intents.iter().find(|i| i["id"] == id) {
                payment["payment"]["payment_intent"] = intent.clone();
            }
        }
    }
    (
        200,
        json!({"object": "list", "data": data, "has_more": false}),
    )
}

/// Records the event Stripe sends when an object reaches `object`'s status.
fn emit(s: &mut FakeState, event_type: &str, object: &Value, now_s: i64) {
    let n = s.events.len() + 1;
    s.events.push(
        json!({"id": format!("evt_{n}"), "object": "event", "type": event_type,
        "api_version": tollgate::payments::stripe::STRIPE_VERSION, "created": now_s,
        "data": {"object": object}}),
    );
}

/// The event of a PaymentIntent's status, if Stripe sends one for it.
fn emit_intent(s: &mut FakeState, intent: &Value, now_s: i64) {
    let event_type = match intent["status"].as_str().unwrap_or("") {
        "succeeded" => "payment_intent.succeeded",
        "processing" => "payment_intent.processing",
        "requires_action" => "payment_intent.requires_action",
        "requires_capture" => "payment_intent.amount_capturable_updated",
        "canceled" => "payment_intent.canceled",
        "requires_payment_method" if intent["last_payment_error"].is_object() => {
            "payment_intent.payment_failed"
        }
        _ => return,
    };
    emit(s, event_type, intent, now_s);
}

fn new_intent(s: &FakeState, amount: Value, customer: Value, metadata: Value, now_s: i64) -> Value {
    let n = s.intents.len() + 1;
    json!({"id": format!("pi_{n}"), "object": "payment_intent", "status": "requires_payment_method",
        "amount": amount, "amount_refunded": 0, "currency": "usd", "customer": customer,
        "metadata": metadata, "created": now_s, "latest_charge": format!("ch_{n}"),
        "next_action": null, "last_payment_error": null})
}

/// Sets a new PaymentIntent's status as the mode says.
fn apply_mode(intent: &mut Value, mode: Mode) {
    let status = match mode {
        Mode::RequireAction => "requires_action",
        Mode::Processing => "processing",
        Mode::RequiresCapture => "requires_capture",
        Mode::Decline => "requires_payment_method",
        _ => "succeeded",
    };
    intent["status"] = json!(status);
    match mode {
        Mode::RequireAction => intent["next_action"] = json!({"type": "use_stripe_sdk"}),
        Mode::Decline => {
            intent["last_payment_error"] = card_error("card_declined", None)["error"].clone();
        }
        _ => {}
    }
}

fn create_intent(s: &mut FakeState, params: &[(String, String)], now_s: i64) -> (u16, Value) {
    if s.mode == Mode::Fail500Before {
        return server_error();
    }
    if param(params, "payment_method").is_none() || param(params, "confirm") != Some("true") {
        return (
            400,
            json!({"error": {"type": "invalid_request_error", "param": "payment_method",
                "message": "the fake only supports create-and-confirm with a payment method"}}),
        );
    }
    let amount = param(params, "amount").and_then(|a| a.parse::<i64>().ok());
    let mut intent = new_intent(
        s,
        json!(amount),
        json!(param(params, "customer")),
        metadata(params),
        now_s,
    );
    intent["payment_method"] = json!(param(params, "payment_method"));
    apply_mode(&mut intent, s.mode);
    s.intents.push(intent.clone());
    emit_intent(s, &intent, now_s);
    match s.mode {
        Mode::Decline => (402, card_error("card_declined", Some(&intent))),
        Mode::Fail500After => server_error(),
        _ => (200, intent),
    }
}

fn unexpected_state(intent: &Value, action: &str) -> (u16, Value) {
    (
        400,
        json!({"error": {"type": "invalid_request_error", "code": "payment_intent_unexpected_state",
            "message": format!("You cannot {action} this PaymentIntent because it has a status of {}.", intent["status"].as_str().unwrap_or("")),
            "payment_intent": intent}}),
    )
}

fn cancel_intent(s: &mut FakeState, id: &str, now_s: i64) -> (u16, Value) {
    let succeed_on_cancel = s.succeed_on_cancel;
    let Some(intent) = s.intents.iter_mut().find(|i| i["id"] == id) else {
        return not_found("payment_intent");
    };
    let status = intent["status"].as_str().unwrap_or("").to_owned();
    // Stripe cannot cancel a PaymentIntent that is processing (the bank decides it).
    if matches!(status.as_str(), "succeeded" | "canceled" | "processing") {
        return unexpected_state(intent, "cancel");
    }
    if succeed_on_cancel {
        intent["status"] = json!("succeeded");
        intent["next_action"] = Value::Null;
        let (intent, answer) = (intent.clone(), unexpected_state(intent, "cancel"));
        emit_intent(s, &intent, now_s);
        return answer;
    }
    intent["status"] = json!("canceled");
    intent["cancellation_reason"] = json!("abandoned");
    let intent = intent.clone();
    emit_intent(s, &intent, now_s);
    (200, intent)
}

fn confirm_intent(s: &mut FakeState, id: &str, now_s: i64) -> (u16, Value) {
    let mode = s.mode;
    let Some(intent) = s.intents.iter_mut().find(|i| i["id"] == id) else {
        return not_found("payment_intent");
    };
    apply_mode(intent, mode);
    let intent = intent.clone();
    emit_intent(s, &intent, now_s);
    (200, intent)
}

fn refund(s: &mut FakeState, params: &[(String, String)], now_s: i64) -> (u16, Value) {
    let id = param(params, "payment_intent").unwrap_or("");
    let Some(intent) = s.intents.iter_mut().find(|i| i["id"] == id) else {
        return not_found("payment_intent");
    };
    if intent["status"] != "succeeded" {
        return (
            400,
            json!({"error": {"type": "invalid_request_error", "code": "charge_not_captured",
                "message": "This PaymentIntent has no successful charge to refund."}}),
        );
    }
    if intent["amount_refunded"] == intent["amount"] {
        return (
            400,
            json!({"error": {"type": "invalid_request_error", "code": "charge_already_refunded",
                "message": "Charge has already been refunded."}}),
        );
    }
    intent["amount_refunded"] = intent["amount"].clone();
    let refund = json!({"id": format!("re_{}", s.refunds.len() + 1), "object": "refund",
        "status": "succeeded", "payment_intent": id, "amount": intent["amount"],
        "metadata": metadata(params), "created": now_s});
    s.refunds.push(refund.clone());
    (200, refund)
}

fn add_item(s: &mut FakeState, params: &[(String, String)]) -> (u16, Value) {
    let invoice = param(params, "invoice").unwrap_or("").to_owned();
    let amount: i64 = param(params, "amount")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let Some(inv) = s.invoices.iter_mut().find(|i| i["id"] == invoice.as_str()) else {
        return not_found("invoice");
    };
    let total = inv["total"].as_i64().unwrap_or(0) + amount;
    inv["total"] = json!(total);
    inv["amount_due"] = json!(total);
    (
        200,
        json!({"id": format!("ii_{invoice}"), "object": "invoiceitem", "invoice": invoice, "amount": amount}),
    )
}

fn invoice_action(
    s: &mut FakeState,
    method: &str,
    id: &str,
    action: &str,
    now_s: i64,
) -> (u16, Value) {
    let Some(index) = s.invoices.iter().position(|i| i["id"] == id) else {
        return not_found("invoice");
    };
    let status = s.invoices[index]["status"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let refuse = |message: &str| {
        (
            400,
            json!({"error": {"type": "invalid_request_error", "code": "invoice_not_editable", "message": message}}),
        )
    };
    match (method, action) {
        ("GET", "") => (200, s.invoices[index].clone()),
        ("DELETE", "") if status == "draft" => {
            s.invoices.remove(index);
            (200, json!({"id": id, "object": "invoice", "deleted": true}))
        }
        ("POST", "finalize") if status == "draft" => {
            s.invoices[index]["status"] = json!("open");
            (200, s.invoices[index].clone())
        }
        ("POST", "void") if status == "open" && invoice_payment_processing(s, id) => {
            refuse("This invoice has a payment that is processing and cannot be voided")
        }
        ("POST", "void") if status == "open" => {
            s.invoices[index]["status"] = json!("void");
            let invoice = s.invoices[index].clone();
            // Voiding cancels the invoice's PaymentIntents that have not succeeded.
            let intents: Vec<Value> = s
                .invoice_payments
                .iter()
                .filter(|p| p["invoice"] == id)
                .map(|p| p["payment"]["payment_intent"].clone())
                .collect();
            for intent_id in intents {
                let Some(intent) = s.intents.iter_mut().find(|i| i["id"] == intent_id) else {
                    continue;
                };
                if intent["status"] != "succeeded" && intent["status"] != "canceled" {
                    intent["status"] = json!("canceled");
                    intent["next_action"] = Value::Null;
                    let intent = intent.clone();
                    emit_intent(s, &intent, now_s);
                }
            }
            emit(s, "invoice.voided", &invoice, now_s);
            (200, invoice)
        }
        ("POST", "pay") if status == "open" => pay(s, index, now_s),
        ("POST", "pay") if status == "paid" => refuse("Invoice is already paid"),
        _ => refuse(&format!(
            "cannot {method} {action} an invoice that is {status}"
        )),
    }
}

/// Whether one of the invoice's payments is a PaymentIntent still processing.
fn invoice_payment_processing(s: &FakeState, invoice_id: &str) -> bool {
    s.invoice_payments
        .iter()
        .filter(|p| p["invoice"] == invoice_id)
        .any(|p| {
            let intent = &p["payment"]["payment_intent"];
            s.intents
                .iter()
                .any(|i| i["id"] == *intent && i["status"] == "processing")
        })
}

fn pay(s: &mut FakeState, index: usize, now_s: i64) -> (u16, Value) {
    let mode = s.mode;
    if mode == Mode::Fail500Before {
        return server_error();
    }
    let invoice_id = s.invoices[index]["id"].clone();
    let amount = s.invoices[index]["amount_due"].clone();
    let customer = s.invoices[index]["customer"].clone();
    // An invoice's PaymentIntent carries no metadata of its own.
    let mut intent = new_intent(s, amount.clone(), customer, json!({}), now_s);
    apply_mode(&mut intent, mode);
    let paid = intent["status"] == "succeeded";
    s.invoice_payments.push(
        json!({"id": format!("inpay_{}", s.invoice_payments.len() + 1),
        "object": "invoice_payment", "invoice": invoice_id, "is_default": true,
        "status": if paid { "paid" } else { "open" }, "amount_requested": amount,
        "payment": {"type": "payment_intent", "payment_intent": intent["id"]}}),
    );
    emit_intent(s, &intent, now_s);
    s.intents.push(intent);
    let invoice = &mut s.invoices[index];
    invoice["attempted"] = json!(true);
    invoice["attempt_count"] = json!(invoice["attempt_count"].as_i64().unwrap_or(0) + 1);
    if paid {
        invoice["status"] = json!("paid");
        invoice["amount_paid"] = amount;
    }
    let invoice = invoice.clone();
    match mode {
        _ if paid => emit(s, "invoice.paid", &invoice, now_s),
        Mode::Decline => emit(s, "invoice.payment_failed", &invoice, now_s),
        _ => {}
    }
    match mode {
        Mode::Decline => (402, card_error("card_declined", None)),
        Mode::RequireAction => (
            402,
            card_error("invoice_payment_intent_requires_action", None),
        ),
        Mode::Fail500After => server_error(),
        _ => (200, invoice),
    }
}

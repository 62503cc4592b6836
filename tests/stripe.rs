//! The STRIPE payment gate end to end over Tollgate's HTTP API, against a local fake Stripe
//! that enforces `Authorization` and `Idempotency-Key` semantics and can be told to succeed,
//! decline, require action, answer 500 or hang; plus a `kill -9` of the real binary during a
//! Stripe call: one charge in the fake's records, not two.

mod support;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use support::{Receiver, eventually};
use tollgate::actors::Engine;
use tollgate::actors::clock::SystemClock;
use tollgate::http::stripe::StripeWebhook;
use tollgate::http::{ApiOptions, Application};
use tollgate::payments::stripe::{StripeProvider, StripeSettings, sign};

const TOKEN: &str = "stripe-test-token";
const SECRET_KEY: &str = "sk_test_tollgate";
const WEBHOOK_SECRET: &str = "whsec_stripe_test";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Succeed,
    Decline,
    RequireAction,
    /// Answer 500 this many times, then succeed.
    Fail500(u32),
    Hang,
}

#[derive(Default)]
struct FakeState {
    mode: Option<Mode>,
    /// Idempotency-Key -> (request body, status, response).
    idempotency: HashMap<String, (String, u16, Value)>,
    intents: Vec<Value>,
    invoices: HashMap<String, Value>,
    voided: Vec<String>,
    requests: u32,
}

#[derive(Clone)]
struct FakeStripe {
    base: String,
    state: Arc<Mutex<FakeState>>,
}

impl FakeStripe {
    fn start(mode: Mode) -> FakeStripe {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(FakeState {
            mode: Some(mode),
            ..FakeState::default()
        }));
        let shared = state.clone();
        let server = HttpServer::new(move || {
            let shared = shared.clone();
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let shared = shared.clone();
                async move { fake(shared, req, body).await }
            }))
        })
        .workers(1)
        .shutdown_timeout(1)
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        FakeStripe {
            base: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = Some(mode);
    }

    fn intents(&self) -> Vec<Value> {
        self.state.lock().unwrap().intents.clone()
    }
}

fn form_value<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

async fn fake(state: Arc<Mutex<FakeState>>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {SECRET_KEY}") {
        return HttpResponse::Unauthorized()
            .json(json!({"error": {"type": "invalid_request_error", "message": "bad key"}}));
    }
    let body_text = String::from_utf8_lossy(&body).into_owned();
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(key) = &key {
        let seen = state.lock().unwrap().idempotency.get(key).cloned();
        if let Some((seen_body, status, response)) = seen {
            if seen_body != body_text {
                return HttpResponse::BadRequest().json(json!({"error": {
                    "type": "idempotency_error",
                    "message": "Keys for idempotent requests can only be used with the same parameters they were first used with."
                }}));
            }
            return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                .json(response);
        }
    }
    let mode = {
        let mut s = state.lock().unwrap();
        s.requests += 1;
        let mode = s.mode.unwrap_or(Mode::Succeed);
        if let Mode::Fail500(n) = mode {
            if req.method() == actix_web::http::Method::POST {
                s.mode = Some(if n <= 1 {
                    Mode::Succeed
                } else {
                    Mode::Fail500(n - 1)
                });
                return HttpResponse::InternalServerError()
                    .json(json!({"error": {"type": "api_error", "message": "boom"}}));
            }
        }
        mode
    };
    let form: Vec<(String, String)> = url_decode_pairs(&body_text);
    let path = req.path().to_owned();
    let (status, response) = {
        let mut s = state.lock().unwrap();
        route(&mut s, &path, &form, mode)
    };
    if let Some(key) = key {
        state
            .lock()
            .unwrap()
            .idempotency
            .insert(key, (body_text, status, response.clone()));
    }
    // Hang after doing the work: the charge exists at Stripe but the answer never arrives.
    if mode == Mode::Hang && req.method() == actix_web::http::Method::POST {
        actix_rt::time::sleep(Duration::from_secs(5)).await;
    }
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(response)
}

fn url_decode_pairs(body: &str) -> Vec<(String, String)> {
    body.split('&')
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

fn card_error(intent: Option<&Value>) -> Value {
    let mut error = json!({
        "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
        "message": "Your card has insufficient funds."
    });
    if let Some(intent) = intent {
        error["payment_intent"] = intent.clone();
    }
    json!({"error": error})
}

fn route(s: &mut FakeState, path: &str, form: &[(String, String)], mode: Mode) -> (u16, Value) {
    let metadata: serde_json::Map<String, Value> = form
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata[")
                .and_then(|k| k.strip_suffix(']'))
                .map(|k| (k.to_owned(), json!(v)))
        })
        .collect();
    if let Some(customer) = path.strip_prefix("/v1/customers/") {
        return (
            200,
            json!({"id": customer, "invoice_settings": {"default_payment_method": "pm_card_visa"}}),
        );
    }
    if path == "/v1/payment_intents" {
        let id = format!("pi_{}", s.intents.len() + 1);
        let status = match mode {
            Mode::RequireAction => "requires_action",
            Mode::Decline => "requires_payment_method",
            _ => "succeeded",
        };
        let intent = json!({
            "id": id, "object": "payment_intent", "status": status,
            "amount": form_value(form, "amount").and_then(|a| a.parse::<i64>().ok()),
            "currency": form_value(form, "currency"),
            "customer": form_value(form, "customer"),
            "metadata": metadata,
            "next_action": if status == "requires_action" { json!({"type": "use_stripe_sdk"}) } else { Value::Null },
        });
        s.intents.push(intent.clone());
        if mode == Mode::Decline {
            return (402, card_error(Some(&intent)));
        }
        return (200, intent);
    }
    if path == "/v1/invoices" {
        let id = format!("in_{}", s.invoices.len() + 1);
        let invoice = json!({"id": id, "status": "draft", "metadata": metadata, "amount_due": 0});
        s.invoices.insert(id, invoice.clone());
        return (200, invoice);
    }
    if path == "/v1/invoiceitems" {
        let invoice = form_value(form, "invoice").unwrap_or("").to_owned();
        let amount: i64 = form_value(form, "amount")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        if let Some(inv) = s.invoices.get_mut(&invoice) {
            inv["amount_due"] = json!(amount);
        }
        return (
            200,
            json!({"id": format!("ii_{invoice}"), "invoice": invoice, "amount": amount}),
        );
    }
    if let Some(rest) = path.strip_prefix("/v1/invoices/") {
        let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
        let Some(invoice) = s.invoices.get(id).cloned() else {
            return (
                404,
                json!({"error": {"type": "invalid_request_error", "message": "no such invoice"}}),
            );
        };
        return match action {
            "finalize" => {
                let mut inv = invoice;
                inv["status"] = json!("open");
                s.invoices.insert(id.to_owned(), inv.clone());
                (200, inv)
            }
            "pay" if mode == Mode::Decline => (402, card_error(None)),
            "pay" => {
                let mut inv = invoice;
                inv["status"] = json!("paid");
                inv["payment_intent"] = json!(format!("pi_for_{id}"));
                s.intents.push(json!({"id": format!("pi_for_{id}"), "invoice": id, "amount": inv["amount_due"]}));
                s.invoices.insert(id.to_owned(), inv.clone());
                (200, inv)
            }
            "void" => {
                let mut inv = invoice;
                inv["status"] = json!("void");
                s.voided.push(id.to_owned());
                s.invoices.insert(id.to_owned(), inv.clone());
                (200, inv)
            }
            _ => (404, json!({"error": {"type": "invalid_request_error"}})),
        };
    }
    (
        404,
        json!({"error": {"type": "invalid_request_error", "message": format!("unknown path {path}")}}),
    )
}

struct TestApp {
    base: String,
    client: reqwest::Client,
    receiver: Receiver,
    _dir: tempfile::TempDir,
}

async fn spawn(fake: &FakeStripe) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let mut config = support::engine_config(dir.path(), Some(&receiver.url));
    config.settings.partitions = 1;
    let api = StripeSettings {
        secret_key: SECRET_KEY.into(),
        api_base: fake.base.clone(),
        timeout_ms: 1_000,
    };
    let provider = Arc::new(StripeProvider::new(api.clone()).unwrap());
    let engine = Engine::start(config, Arc::new(SystemClock), Some(provider))
        .await
        .unwrap();
    for change in tollgate::domain::fixtures::catalog_changes() {
        engine.change_catalog(change).await.unwrap();
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let app = Application::build_with(
        listener,
        engine,
        ApiOptions {
            tokens: vec![TOKEN.into()],
            body_limit: 1 << 20,
            workers: 1,
            stripe: Some(StripeWebhook {
                webhook_secret: WEBHOOK_SECRET.into(),
                webhook_path: "/v1/stripe/webhook".into(),
                api,
            }),
        },
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    actix_rt::spawn(app.run_until_stopped());
    TestApp {
        base,
        client: reqwest::Client::new(),
        receiver,
        _dir: dir,
    }
}

impl TestApp {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

const COMMIT_PRODUCT: &str = "00000000-0000-0000-0000-000000002003";
const RATE_CARD: &str = "00000000-0000-0000-0000-000000003001";

fn now_rfc3339() -> String {
    tollgate::domain::Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
    .to_rfc3339()
}

/// A customer with Stripe billing and a contract with a $5 STRIPE spend threshold, pushed
/// over it by 5 calls. Returns the customer id.
async fn cross_stripe_threshold(app: &TestApp, alias: &str, payment_type: &str) -> String {
    let (status, customer) = app
        .post(
            "/v1/customers",
            json!({"name": alias, "ingest_aliases": [alias],
                   "customer_billing_provider_configurations": [{
                       "billing_provider": "stripe", "delivery_method": "direct_to_billing_provider",
                       "configuration": {"stripe_customer_id": "cus_123", "stripe_collection_method": "charge_automatically"}}]}),
        )
        .await;
    assert_eq!(status, 200, "{customer}");
    let customer = customer["data"]["id"].as_str().unwrap().to_owned();
    let start = tollgate::domain::Timestamp::parse_rfc3339(&now_rfc3339())
        .unwrap()
        .month_start()
        .to_rfc3339();
    let (status, body) = app
        .post(
            "/v1/contracts/create",
            json!({"customer_id": customer, "rate_card_id": RATE_CARD, "starting_at": start,
                   "spend_threshold_configuration": {
                       "commit": {"product_id": COMMIT_PRODUCT}, "is_enabled": true,
                       "payment_gate_config": {"payment_gate_type": "STRIPE",
                           "stripe_config": {"payment_type": payment_type, "invoice_metadata": {"team": "a"}}},
                       "threshold_amount": 500}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let events: Vec<Value> = (0..5)
        .map(|i| {
            json!({"transaction_id": format!("{alias}-{i}"), "customer_id": alias,
                        "event_type": "api_call", "timestamp": now_rfc3339()})
        })
        .collect();
    let (status, _) = app.post("/v1/ingest", json!(events)).await;
    assert_eq!(status, 200);
    customer
}

fn statuses(app: &TestApp) -> Vec<Value> {
    app.receiver
        .of_type("payment_gate.payment_status")
        .into_iter()
        .map(|r| r.body)
        .collect()
}

#[actix_rt::test]
async fn a_payment_intent_that_succeeds_releases_the_commit() {
    let fake = FakeStripe::start(Mode::Succeed);
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-ok", "PAYMENT_INTENT").await;
    eventually("paid", || statuses(&app).len() == 1).await;
    let paid = &statuses(&app)[0];
    assert_eq!(paid["properties"]["payment_status"], "paid");
    assert_eq!(
        paid["properties"]["billing_provider"]["stripe"]["payment_intent_id"],
        "pi_1"
    );
    let intents = fake.intents();
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0]["amount"], 500);
    assert_eq!(intents[0]["currency"], "usd");
    assert!(intents[0]["metadata"]["workflow_id"].is_string());
}

#[actix_rt::test]
async fn a_declined_card_fails_the_workflow_with_the_decline_code() {
    let fake = FakeStripe::start(Mode::Decline);
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-decline", "PAYMENT_INTENT").await;
    eventually("failed", || statuses(&app).len() == 1).await;
    let failed = &statuses(&app)[0];
    assert_eq!(failed["properties"]["payment_status"], "failed");
    assert_eq!(
        failed["properties"]["billing_provider"]["stripe"]["error"]["decline_code"],
        "insufficient_funds"
    );
}

#[actix_rt::test]
async fn requires_action_then_a_signed_stripe_webhook_releases_and_replays_change_nothing() {
    let fake = FakeStripe::start(Mode::RequireAction);
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-3ds", "PAYMENT_INTENT").await;
    eventually("action required", || {
        app.receiver
            .of_type("payment_gate.payment_pending_action_required")
            .len()
            == 1
    })
    .await;
    let pending = app
        .receiver
        .of_type("payment_gate.payment_pending_action_required")[0]
        .body
        .clone();
    assert_eq!(
        pending["properties"]["billing_provider"]["stripe"]["payment_intent_id"],
        "pi_1"
    );
    let workflow = pending["properties"]["workflow_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let event = json!({"id": "evt_1", "type": "payment_intent.succeeded",
        "data": {"object": {"id": "pi_1", "status": "succeeded", "metadata": {"workflow_id": workflow}}}});
    let payload = serde_json::to_vec(&event).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let send = |signature: String, payload: Vec<u8>| {
        app.client
            .post(format!("{}/v1/stripe/webhook", app.base))
            .header("Stripe-Signature", signature)
            .header("Content-Type", "application/json")
            .body(payload)
            .send()
    };
    // A bad signature is refused and changes nothing.
    let bad = send(sign(&payload, "whsec_wrong", now), payload.clone())
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    assert!(statuses(&app).is_empty());
    let ok = send(sign(&payload, WEBHOOK_SECRET, now), payload.clone())
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    eventually("paid after 3DS", || statuses(&app).len() == 1).await;
    assert_eq!(statuses(&app)[0]["properties"]["payment_status"], "paid");
    // The same event again (Stripe retries) and an unknown event: 200, nothing changes.
    let again = send(sign(&payload, WEBHOOK_SECRET, now), payload.clone())
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 200);
    let other = serde_json::to_vec(
        &json!({"id": "evt_2", "type": "customer.updated", "data": {"object": {}}}),
    )
    .unwrap();
    let other = send(sign(&other, WEBHOOK_SECRET, now), other)
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 200);
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(statuses(&app).len(), 1);
    assert_eq!(fake.intents().len(), 1);
}

#[actix_rt::test]
async fn stripe_500s_are_retried_under_the_same_key_and_charge_once() {
    let fake = FakeStripe::start(Mode::Fail500(2));
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-500", "PAYMENT_INTENT").await;
    eventually("paid after retries", || statuses(&app).len() == 1).await;
    assert_eq!(statuses(&app)[0]["properties"]["payment_status"], "paid");
    assert_eq!(fake.intents().len(), 1, "one charge");
    assert!(fake.state.lock().unwrap().requests >= 4);
}

#[actix_rt::test]
async fn invoice_payment_type_pays_or_voids_the_stripe_invoice() {
    let fake = FakeStripe::start(Mode::Succeed);
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "inv-ok", "INVOICE").await;
    eventually("invoice paid", || statuses(&app).len() == 1).await;
    assert_eq!(statuses(&app)[0]["properties"]["payment_status"], "paid");
    {
        let s = fake.state.lock().unwrap();
        let invoice = s.invoices.values().next().unwrap();
        assert_eq!(invoice["status"], "paid");
        assert_eq!(invoice["amount_due"], 500);
        assert_eq!(invoice["metadata"]["team"], "a");
    }
    fake.set_mode(Mode::Decline);
    cross_stripe_threshold(&app, "inv-decline", "INVOICE").await;
    eventually("invoice failed", || statuses(&app).len() == 2).await;
    assert!(
        statuses(&app)
            .iter()
            .any(|s| s["properties"]["payment_status"] == "failed")
    );
    assert_eq!(
        fake.state.lock().unwrap().voided.len(),
        1,
        "the Stripe invoice is voided"
    );
}

#[actix_rt::test]
async fn stripe_gates_below_the_minimum_or_without_billing_config_are_refused() {
    let fake = FakeStripe::start(Mode::Succeed);
    let app = spawn(&fake).await;
    let (_, customer) = app.post("/v1/customers", json!({"name": "plain"})).await;
    let customer = customer["data"]["id"].as_str().unwrap();
    let start = "2025-01-01T00:00:00Z";
    let config = |amount: i64| {
        json!({"customer_id": customer, "rate_card_id": RATE_CARD, "starting_at": start,
        "spend_threshold_configuration": {"commit": {"product_id": COMMIT_PRODUCT}, "is_enabled": true,
            "payment_gate_config": {"payment_gate_type": "STRIPE"}, "threshold_amount": amount}})
    };
    let (status, body) = app.post("/v1/contracts/create", config(49)).await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("minimum"),
        "{body}"
    );
    let (status, body) = app.post("/v1/contracts/create", config(500)).await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Stripe billing provider"),
        "{body}"
    );
}

/// Kills the child server when the test ends, even by a panic.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real binary, killed while its Stripe call hangs, restarted against the same fake: the
/// request is re-run with the same idempotency key and Stripe holds one charge.
#[actix_rt::test]
async fn kill_9_during_a_stripe_call_then_restart_charges_once() {
    let fake = FakeStripe::start(Mode::Hang);
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = dir.path().join("t.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[http]
listen = "127.0.0.1:0"
[auth]
tokens = ["{TOKEN}"]
[storage]
data_dir = "{data}"
[engine]
partitions = 1
[[webhooks.destinations]]
url = "{hook}"
secret = "{secret}"
[payments.stripe]
secret_key = "{SECRET_KEY}"
webhook_secret = "{WEBHOOK_SECRET}"
api_base = "{api}"
timeout_ms = 30000
"#,
            data = dir.path().join("data").display(),
            hook = receiver.url,
            secret = support::SECRET,
            api = fake.base,
        ),
    )
    .unwrap();
    let start = || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let base = loop {
            let line = lines.next().unwrap().unwrap();
            if let Some(rest) = line.strip_prefix("tollgate listening on ") {
                break rest.trim().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        (Guard(child), base)
    };
    let (mut child, base) = start();
    let app = TestApp {
        base,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        receiver: receiver.clone(),
        _dir: tempfile::tempdir().unwrap(),
    };
    for _ in 0..200 {
        if app
            .client
            .get(format!("{}/ready", app.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
    // Catalog over the API.
    let (_, metric) = app.post("/v1/billable-metrics/create", json!({"name": "calls", "aggregation_type": "COUNT", "event_type_filter": {"in_values": ["api_call"]}})).await;
    let (_, usage) = app
        .post(
            "/v1/contract-pricing/products/create",
            json!({"name": "calls", "type": "USAGE", "billable_metric_id": metric["data"]["id"]}),
        )
        .await;
    let (_, fixed) = app
        .post(
            "/v1/contract-pricing/products/create",
            json!({"name": "charge", "type": "FIXED"}),
        )
        .await;
    let (_, card) = app
        .post(
            "/v1/contract-pricing/rate-cards/create",
            json!({"name": "list"}),
        )
        .await;
    let (status, rate) = app.post("/v1/contract-pricing/rate-cards/addRate", json!({"rate_card_id": card["data"]["id"], "product_id": usage["data"]["id"], "entitled": true, "rate_type": "FLAT", "price": 100, "starting_at": "2020-01-01T00:00:00Z"})).await;
    assert_eq!(status, 200, "{rate}");
    let (_, customer) = app.post("/v1/customers", json!({"name": "k", "ingest_aliases": ["k"],
        "customer_billing_provider_configurations": [{"billing_provider": "stripe", "delivery_method": "direct_to_billing_provider",
            "configuration": {"stripe_customer_id": "cus_k"}}]})).await;
    let customer = customer["data"]["id"].as_str().unwrap().to_owned();
    let (status, body) = app.post("/v1/contracts/create", json!({"customer_id": customer, "rate_card_id": card["data"]["id"],
        "starting_at": "2020-01-01T00:00:00Z",
        "spend_threshold_configuration": {"commit": {"product_id": fixed["data"]["id"]}, "is_enabled": true,
            "payment_gate_config": {"payment_gate_type": "STRIPE", "stripe_config": {"payment_type": "PAYMENT_INTENT"}},
            "threshold_amount": 500}})).await;
    assert_eq!(status, 200, "{body}");
    let events: Vec<Value> = (0..5).map(|i| json!({"transaction_id": format!("k{i}"), "customer_id": "k", "event_type": "api_call", "timestamp": now_rfc3339()})).collect();
    app.post("/v1/ingest", json!(events)).await;
    // The charge request reaches Stripe and hangs there; kill the server mid-call.
    eventually("the PaymentIntent was created at Stripe", || {
        fake.intents().len() == 1
    })
    .await;
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    fake.set_mode(Mode::Succeed);
    let (_child, base) = start();
    let app = TestApp { base, ..app };
    eventually("paid after restart", || {
        statuses(&app)
            .iter()
            .any(|s| s["properties"]["payment_status"] == "paid")
    })
    .await;
    let intents = fake.intents();
    assert_eq!(intents.len(), 1, "one charge, not two: {intents:?}");
}

//! The STRIPE payment gate end to end over Tollgate's HTTP API, against a local fake Stripe
//! (`stripe/fake.rs`) that keeps idempotency keys as Stripe does (saved 500s replayed, 409 while
//! in progress, 400 `idempotency_error` for changed parameters, expiry after 24 h on its own
//! clock) and supports search and list by metadata. In-process tests share a manual clock with
//! the engine and the fake, so retries, polls and the 24 h windows are driven, not waited for;
//! the real binary is killed with `kill -9` and restarted where a restart is the point.

mod support;

#[path = "stripe/fake.rs"]
mod fake;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use fake::{FakeStripe, Mode, SECRET_KEY};
use serde_json::{Value, json};
use support::{Receiver, eventually};
use tollgate::actors::Engine;
use tollgate::actors::clock::{Clock, ManualClock, SystemClock};
use tollgate::actors::payment::{PaymentSettings, Payments};
use tollgate::http::stripe::StripeWebhook;
use tollgate::http::{ApiOptions, Application};
use tollgate::payments::stripe::{StripeProvider, StripeSettings, sign};

const TOKEN: &str = "stripe-test-token";
const WEBHOOK_SECRET: &str = "whsec_stripe_test";
const PINNED_VERSION: &str = "2025-03-31.basil";
const HOUR_MS: i64 = 3_600_000;

// ------------------------------------------------------------------ wiring

fn stripe_settings(fake: &FakeStripe) -> StripeSettings {
    StripeSettings {
        secret_key: SECRET_KEY.into(),
        api_base: fake.base.clone(),
        timeout_ms: 1_000,
    }
}

/// The Stripe REST provider against the fake, its due jobs looked for every 20 ms (the clock
/// is driven by the tests).
fn payments(fake: &FakeStripe) -> Option<Payments> {
    Some(Payments {
        provider: Arc::new(StripeProvider::new(stripe_settings(fake)).unwrap()),
        settings: PaymentSettings {
            scan_interval_ms: 20,
            ..PaymentSettings::default()
        },
    })
}

fn webhook_config() -> StripeWebhook {
    StripeWebhook {
        webhook_secret: WEBHOOK_SECRET.into(),
        webhook_path: "/v1/stripe/webhook".into(),
    }
}

// ----------------------------------------------------------------- harness

struct TestApp {
    base: String,
    client: reqwest::Client,
    receiver: Receiver,
    /// Signs Stripe webhooks (the engine's clock in-process; the system's for the binary).
    clock: ManualClock,
    _dir: tempfile::TempDir,
}

fn system_now_ms() -> i64 {
    SystemClock.now_ms()
}

/// Tollgate in-process on the fake's clock.
async fn spawn(fake: &FakeStripe) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    spawn_on(fake, dir, &data, true).await
}

/// Tollgate in-process on `data` (in `dir`, kept as long as the app), with the catalog when
/// `fresh`.
async fn spawn_on(
    fake: &FakeStripe,
    dir: tempfile::TempDir,
    data: &std::path::Path,
    fresh: bool,
) -> TestApp {
    let receiver = Receiver::start();
    let mut config = support::engine_config(data, Some(&receiver.url));
    config.settings.partitions = 1;
    let engine = Engine::start(config, Arc::new(fake.clock.clone()), payments(fake))
        .await
        .unwrap();
    if fresh {
        for change in tollgate::domain::fixtures::catalog_changes() {
            engine.change_catalog(change).await.unwrap();
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let app = Application::build_with(
        listener,
        engine,
        ApiOptions {
            tokens: tollgate::http::full_access(&[TOKEN.into()]),
            body_limit: 1 << 20,
            workers: 1,
            stripe: Some(webhook_config()),
        },
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    actix_rt::spawn(app.run_until_stopped());
    TestApp {
        base,
        client: reqwest::Client::new(),
        receiver,
        clock: fake.clock.clone(),
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

    /// Sends a Stripe event to the webhook endpoint, signed with `secret`.
    async fn stripe_event(&self, event: &Value, secret: &str) -> u16 {
        let payload = serde_json::to_vec(event).unwrap();
        let signature = sign(&payload, secret, self.clock.now_ms() / 1000);
        self.client
            .post(format!("{}/v1/stripe/webhook", self.base))
            .header("Stripe-Signature", signature)
            .header("Content-Type", "application/json")
            .body(payload)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    fn now_rfc3339(&self) -> String {
        tollgate::domain::Timestamp(self.clock.now_ms()).to_rfc3339()
    }

    fn hooks(&self, event_type: &str) -> Vec<Value> {
        self.receiver
            .of_type(event_type)
            .into_iter()
            .map(|r| r.body)
            .collect()
    }
}

fn statuses(app: &TestApp) -> Vec<Value> {
    app.hooks("payment_gate.payment_status")
}

fn failed(app: &TestApp) -> Vec<Value> {
    statuses(app)
        .into_iter()
        .filter(|s| s["properties"]["payment_status"] == "failed")
        .collect()
}

/// Moves the shared clock by `step_ms` every 20 ms (real) until `done` holds, for at most
/// about 15 s of real time.
async fn drive(clock: &ManualClock, step_ms: i64, what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..750 {
        if done() {
            return;
        }
        clock.advance(step_ms);
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out driving the clock until: {what}");
}

const COMMIT_PRODUCT: &str = "00000000-0000-0000-0000-000000002003";
const RATE_CARD: &str = "00000000-0000-0000-0000-000000003001";

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
    let start = tollgate::domain::Timestamp(app.clock.now_ms())
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
                        "event_type": "api_call", "timestamp": app.now_rfc3339()})
        })
        .collect();
    let (status, _) = app.post("/v1/ingest", json!(events)).await;
    assert_eq!(status, 200);
    customer
}

fn workflow_of(intent: &Value) -> String {
    intent["metadata"]["workflow_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn intent_event(event_type: &str, intent: &Value) -> Value {
    json!({"id": format!("evt_{}", event_type), "type": event_type,
        "data": {"object": {"id": intent["id"], "object": "payment_intent", "status": intent["status"],
            "metadata": {"workflow_id": workflow_of(intent)}}}})
}

// -------------------------------------------------------------- happy paths

#[actix_rt::test]
async fn a_payment_intent_that_succeeds_releases_the_commit_and_every_request_pins_the_api_version()
{
    let fake = FakeStripe::start(Mode::Succeed, ManualClock::new(system_now_ms()));
    let app = spawn(&fake).await;
    let customer = cross_stripe_threshold(&app, "pi-ok", "PAYMENT_INTENT").await;
    eventually("paid", || statuses(&app).len() == 1).await;
    let (_, invoices) = app
        .get(&format!("/v1/customers/{customer}/invoices?type=SCHEDULED"))
        .await;
    let external = &invoices["data"][0]["external_invoice"];
    assert_eq!(external["billing_provider_type"], "stripe", "{invoices}");
    assert_eq!(external["external_status"], "PAID");
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
    let versions = fake.state.lock().unwrap().versions.clone();
    assert!(!versions.is_empty());
    assert!(
        versions.iter().all(|v| v == PINNED_VERSION),
        "every Stripe request pins {PINNED_VERSION}: {versions:?}"
    );
}

#[actix_rt::test]
async fn a_declined_card_fails_the_workflow_with_the_decline_code() {
    let fake = FakeStripe::start(Mode::Decline, ManualClock::new(system_now_ms()));
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-decline", "PAYMENT_INTENT").await;
    eventually("failed", || statuses(&app).len() == 1).await;
    let failed = &statuses(&app)[0];
    assert_eq!(failed["properties"]["payment_status"], "failed");
    assert_eq!(
        failed["properties"]["billing_provider"]["stripe"]["error"]["decline_code"],
        "insufficient_funds"
    );
    assert_eq!(fake.intents().len(), 1);
    assert!(fake.refunds().is_empty());
}

#[actix_rt::test]
async fn requires_action_then_a_signed_stripe_webhook_releases_and_replays_change_nothing() {
    let fake = FakeStripe::start(Mode::RequireAction, ManualClock::new(system_now_ms()));
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-3ds", "PAYMENT_INTENT").await;
    let action = "payment_gate.payment_pending_action_required";
    eventually("action required", || app.hooks(action).len() == 1).await;
    let pending = app.hooks(action)[0].clone();
    assert_eq!(
        pending["properties"]["billing_provider"]["stripe"]["payment_intent_id"],
        "pi_1"
    );
    fake.set_intent_status("pi_1", "succeeded");
    let event = intent_event("payment_intent.succeeded", &fake.intents()[0]);
    // A bad signature is refused and changes nothing.
    assert_eq!(app.stripe_event(&event, "whsec_wrong").await, 400);
    assert!(statuses(&app).is_empty());
    assert_eq!(app.stripe_event(&event, WEBHOOK_SECRET).await, 200);
    eventually("paid after 3DS", || statuses(&app).len() == 1).await;
    assert_eq!(statuses(&app)[0]["properties"]["payment_status"], "paid");
    // The same event again (Stripe retries) and an unknown event: 200, nothing changes.
    assert_eq!(app.stripe_event(&event, WEBHOOK_SECRET).await, 200);
    let other = json!({"id": "evt_2", "type": "customer.updated", "data": {"object": {}}});
    assert_eq!(app.stripe_event(&other, WEBHOOK_SECRET).await, 200);
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(statuses(&app).len(), 1);
    assert_eq!(fake.intents().len(), 1);
    assert!(fake.refunds().is_empty());
}

#[actix_rt::test]
async fn invoice_payment_type_pays_or_voids_the_stripe_invoice() {
    let fake = FakeStripe::start(Mode::Succeed, ManualClock::new(system_now_ms()));
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "inv-ok", "INVOICE").await;
    eventually("invoice paid", || statuses(&app).len() == 1).await;
    assert_eq!(statuses(&app)[0]["properties"]["payment_status"], "paid");
    {
        let s = fake.state.lock().unwrap();
        let invoice = &s.invoices[0];
        assert_eq!(invoice["status"], "paid");
        assert_eq!(invoice["amount_due"], 500);
        assert_eq!(invoice["metadata"]["team"], "a");
    }
    fake.set_mode(Mode::Decline);
    cross_stripe_threshold(&app, "inv-decline", "INVOICE").await;
    eventually("invoice failed", || statuses(&app).len() == 2).await;
    assert_eq!(failed(&app).len(), 1);
    eventually("the Stripe invoice is voided", || {
        fake.state.lock().unwrap().invoices[1]["status"] == "void"
    })
    .await;
}

#[actix_rt::test]
async fn stripe_gates_below_the_minimum_or_without_billing_config_are_refused() {
    let fake = FakeStripe::start(Mode::Succeed, ManualClock::new(system_now_ms()));
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

// ------------------------------------------------------ unknown answers

#[actix_rt::test]
async fn a_stripe_500_saved_after_the_charge_is_reconciled_by_search_and_charges_once() {
    let fake = FakeStripe::start(Mode::Fail500After, ManualClock::new(system_now_ms()));
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-500-after", "PAYMENT_INTENT").await;
    eventually("the charge was made and answered 500", || {
        fake.answered(500) >= 1
    })
    .await;
    // The key replays the 500 for 24 h; only a search finds the PaymentIntent it made.
    drive(&app.clock, 60_000, "paid", || statuses(&app).len() == 1).await;
    assert_eq!(statuses(&app)[0]["properties"]["payment_status"], "paid");
    assert_eq!(fake.intents().len(), 1, "one charge");
}

#[actix_rt::test]
async fn a_stripe_500_before_any_work_is_replayed_until_the_key_expires_then_charges_once() {
    let fake = FakeStripe::start(Mode::Fail500Before, ManualClock::new(system_now_ms()));
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-500-before", "PAYMENT_INTENT").await;
    eventually("a 500 was answered", || fake.answered(500) >= 1).await;
    fake.set_mode(Mode::Succeed);
    // Saved under the key, the 500 is replayed to every retry of the next 24 h.
    drive(&app.clock, 10 * 60_000, "paid", || {
        statuses(&app).len() == 1
    })
    .await;
    assert_eq!(statuses(&app)[0]["properties"]["payment_status"], "paid");
    assert!(fake.answered(500) >= 2, "the saved 500 was replayed");
    assert_eq!(fake.intents().len(), 1, "one charge");
}

#[actix_rt::test]
async fn a_processing_payment_intent_whose_stripe_webhook_is_lost_is_polled_until_it_succeeds() {
    let fake = FakeStripe::start(Mode::Processing, ManualClock::new(system_now_ms()));
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-poll", "PAYMENT_INTENT").await;
    eventually("the PaymentIntent is processing", || {
        fake.intents().len() == 1
    })
    .await;
    drive(&app.clock, 60_000, "a few polls", || {
        fake.count("GET", "/v1/payment_intents/pi_1") >= 2
    })
    .await;
    assert!(statuses(&app).is_empty(), "processing is not an outcome");
    // The bank settles; Stripe's webhook never arrives.
    fake.set_intent_status("pi_1", "succeeded");
    drive(&app.clock, 60_000, "paid by polling", || {
        statuses(&app).len() == 1
    })
    .await;
    assert_eq!(statuses(&app)[0]["properties"]["payment_status"], "paid");
    assert_eq!(fake.count("POST", "/v1/payment_intents"), 1, "one create");
}

#[actix_rt::test]
async fn a_409_for_a_key_still_in_progress_does_not_fail_the_workflow_and_charges_once() {
    let fake = FakeStripe::start(Mode::Slow, ManualClock::new(system_now_ms()));
    fake.state.lock().unwrap().hang_ms = 4_000;
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-409", "PAYMENT_INTENT").await;
    // The first create times out at the client (1 s) while Stripe still works on it.
    drive(&app.clock, 2_000, "paid", || statuses(&app).len() == 1).await;
    assert!(fake.answered(409) >= 1, "a retry met the key in progress");
    assert_eq!(statuses(&app)[0]["properties"]["payment_status"], "paid");
    assert!(failed(&app).is_empty());
    assert_eq!(fake.intents().len(), 1, "one charge");
}

#[actix_rt::test]
async fn a_400_idempotency_error_after_a_timeout_does_not_fail_the_workflow_and_charges_once() {
    let fake = FakeStripe::start(Mode::Hang, ManualClock::new(system_now_ms()));
    {
        let mut s = fake.state.lock().unwrap();
        s.hang_ms = 3_000;
        // Stripe's search index lags behind the create.
        s.search_hidden = true;
    }
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-400", "PAYMENT_INTENT").await;
    eventually("the charge was made", || fake.intents().len() == 1).await;
    // Meanwhile the customer's default payment method changes: the retry's parameters differ.
    fake.state.lock().unwrap().default_payment_method = "pm_card_mastercard".into();
    drive(&app.clock, 2_000, "a 400 idempotency_error", || {
        fake.answered(400) >= 1
    })
    .await;
    fake.state.lock().unwrap().search_hidden = false;
    drive(&app.clock, 2_000, "paid", || !statuses(&app).is_empty()).await;
    assert_eq!(statuses(&app)[0]["properties"]["payment_status"], "paid");
    assert!(failed(&app).is_empty());
    assert_eq!(fake.intents().len(), 1, "one charge");
}

#[actix_rt::test]
async fn requires_capture_is_a_provider_error_the_authorization_is_cancelled_and_the_workflow_fails()
 {
    let fake = FakeStripe::start(Mode::RequiresCapture, ManualClock::new(system_now_ms()));
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-capture", "PAYMENT_INTENT").await;
    drive(&app.clock, 60_000, "failed", || !failed(&app).is_empty()).await;
    let failed = &failed(&app)[0];
    assert_eq!(
        failed["properties"]["billing_provider"]["stripe"]["error"]["code"],
        "requires_capture"
    );
    assert_eq!(fake.intents()[0]["status"], "canceled");
    assert!(statuses(&app).len() == 1, "never released");
}

// ----------------------------------------------- ACTION_REQUIRED and refunds

#[actix_rt::test]
async fn action_required_ends_failed_after_24_hours_and_the_payment_intent_is_cancelled() {
    let fake = FakeStripe::start(Mode::RequireAction, ManualClock::new(system_now_ms()));
    let app = spawn(&fake).await;
    let started = app.clock.now_ms();
    cross_stripe_threshold(&app, "pi-3ds-timeout", "PAYMENT_INTENT").await;
    let action = "payment_gate.payment_pending_action_required";
    eventually("action required", || app.hooks(action).len() == 1).await;
    drive(&app.clock, 10 * 60_000, "23 hours", || {
        app.clock.now_ms() >= started + 23 * HOUR_MS
    })
    .await;
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert!(statuses(&app).is_empty(), "still waiting for the customer");
    drive(&app.clock, 10 * 60_000, "failed", || {
        !failed(&app).is_empty()
    })
    .await;
    assert!(app.clock.now_ms() >= started + 24 * HOUR_MS);
    let failed = &failed(&app)[0];
    assert_eq!(
        failed["properties"]["billing_provider"]["stripe"]["error"]["code"],
        "action_required_timeout"
    );
    eventually("the PaymentIntent is cancelled", || {
        fake.intents()[0]["status"] == "canceled"
    })
    .await;
    assert!(fake.refunds().is_empty());
}

#[actix_rt::test]
async fn a_success_after_the_workflow_failed_is_refunded_once_and_reported() {
    let fake = FakeStripe::start(Mode::RequireAction, ManualClock::new(system_now_ms()));
    // The customer completes 3DS just as the timeout cancels the PaymentIntent.
    fake.state.lock().unwrap().succeed_on_cancel = true;
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-late", "PAYMENT_INTENT").await;
    let action = "payment_gate.payment_pending_action_required";
    eventually("action required", || app.hooks(action).len() == 1).await;
    drive(&app.clock, 10 * 60_000, "failed", || {
        !failed(&app).is_empty()
    })
    .await;
    let refunded = "payment_gate.payment_refunded";
    drive(&app.clock, 60_000, "refunded", || {
        !app.hooks(refunded).is_empty()
    })
    .await;
    let hook = &app.hooks(refunded)[0];
    assert_eq!(
        hook["properties"]["billing_provider"]["stripe"]["payment_intent_id"],
        "pi_1"
    );
    assert_eq!(
        hook["properties"]["billing_provider"]["stripe"]["refund_id"],
        "re_1"
    );
    assert_eq!(
        hook["properties"]["workflow_id"],
        workflow_of(&fake.intents()[0])
    );
    // Stripe's own webhook for the success arrives too, later: nothing more happens.
    let event = intent_event("payment_intent.succeeded", &fake.intents()[0]);
    assert_eq!(app.stripe_event(&event, WEBHOOK_SECRET).await, 200);
    drive(&app.clock, 60_000, "a while", || {
        fake.count("GET", "/v1/payment_intents/pi_1") >= 3
    })
    .await;
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.refunds().len(), 1, "refunded once");
    assert_eq!(app.hooks(refunded).len(), 1);
    assert_eq!(
        statuses(&app).len(),
        1,
        "a FAILED workflow is never released"
    );
    assert_eq!(fake.intents().len(), 1);
}

#[actix_rt::test]
async fn an_invoice_failed_by_stripe_webhook_is_voided_by_the_payment_actor() {
    let fake = FakeStripe::start(Mode::Processing, ManualClock::new(system_now_ms()));
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "inv-hook", "INVOICE").await;
    eventually("the invoice is being paid", || {
        fake.count("POST", "/v1/invoices/in_1/pay") == 1
    })
    .await;
    let invoice = fake.state.lock().unwrap().invoices[0].clone();
    assert!(
        invoice.get("payment_intent").is_none(),
        "no invoice.payment_intent in {PINNED_VERSION}"
    );
    // The bank declines the processing payment (Stripe cannot void an invoice whose payment
    // is still processing), and Stripe reports the failure.
    let intent = fake.state.lock().unwrap().invoice_payments[0]["payment"]["payment_intent"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(fake.settle(&intent, false));
    let event = json!({"id": "evt_inv", "type": "invoice.payment_failed",
        "data": {"object": {"id": "in_1", "object": "invoice", "status": "open",
            "metadata": invoice["metadata"]}}});
    assert_eq!(app.stripe_event(&event, WEBHOOK_SECRET).await, 200);
    eventually("failed", || failed(&app).len() == 1).await;
    eventually("the Stripe invoice is voided", || {
        fake.state.lock().unwrap().invoices[0]["status"] == "void"
    })
    .await;
}

// ------------------------------------------------------- the real binary

/// Kills the child server when the test ends, even by a panic.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A config file for the real binary against the fake.
fn binary_config(
    dir: &std::path::Path,
    fake: &FakeStripe,
    receiver: &Receiver,
    timeout_ms: u64,
) -> std::path::PathBuf {
    let config = dir.join("t.toml");
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
timeout_ms = {timeout_ms}
"#,
            data = dir.join("data").display(),
            hook = receiver.url,
            secret = support::SECRET,
            api = fake.base,
        ),
    )
    .unwrap();
    config
}

/// Starts the binary and waits until it is ready; returns it and its base URL.
async fn start_binary(config: &std::path::Path) -> (Guard, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(config)
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
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
    (Guard(child), base)
}

fn binary_app(base: String, receiver: &Receiver) -> TestApp {
    TestApp {
        base,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        receiver: receiver.clone(),
        clock: ManualClock::new(system_now_ms()),
        _dir: tempfile::tempdir().unwrap(),
    }
}

/// Catalog, customer and a STRIPE PAYMENT_INTENT spend threshold over the API, then the usage
/// that crosses it.
async fn binary_threshold(app: &TestApp) {
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
    let events: Vec<Value> = (0..5).map(|i| json!({"transaction_id": format!("k{i}"), "customer_id": "k", "event_type": "api_call", "timestamp": app.now_rfc3339()})).collect();
    app.post("/v1/ingest", json!(events)).await;
}

/// The real binary, killed while its Stripe call hangs, restarted against the same fake: the
/// request is reconciled and Stripe holds one charge.
#[actix_rt::test]
async fn kill_9_during_a_stripe_call_then_restart_charges_once() {
    let fake = FakeStripe::start(Mode::Hang, ManualClock::new(system_now_ms()));
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = binary_config(dir.path(), &fake, &receiver, 30_000);
    let (mut child, base) = start_binary(&config).await;
    let app = binary_app(base, &receiver);
    binary_threshold(&app).await;
    // The charge request reaches Stripe and hangs there; kill the server mid-call.
    eventually("the PaymentIntent was created at Stripe", || {
        fake.intents().len() == 1
    })
    .await;
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    fake.set_mode(Mode::Succeed);
    let (_child, base) = start_binary(&config).await;
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

/// A create that timed out at the client, then `kill -9`, then a restart 25 h later (past
/// Stripe's key window): the search finds the PaymentIntent; nothing is created again.
#[actix_rt::test]
async fn a_create_that_timed_out_and_a_restart_24_hours_later_find_the_payment_intent_and_charge_once()
 {
    let fake = FakeStripe::start(Mode::Hang, ManualClock::new(system_now_ms()));
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = binary_config(dir.path(), &fake, &receiver, 300);
    let (mut child, base) = start_binary(&config).await;
    let app = binary_app(base, &receiver);
    binary_threshold(&app).await;
    eventually("the PaymentIntent was created at Stripe", || {
        fake.intents().len() == 1
    })
    .await;
    // The client timed out (300 ms); its retry would come after a second. Crash first.
    actix_rt::time::sleep(Duration::from_millis(600)).await;
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    fake.clock.advance(25 * HOUR_MS);
    fake.set_mode(Mode::Succeed);
    let (_child, base) = start_binary(&config).await;
    let app = TestApp { base, ..app };
    eventually("paid after restart", || {
        statuses(&app)
            .iter()
            .any(|s| s["properties"]["payment_status"] == "paid")
    })
    .await;
    let intents = fake.intents();
    assert_eq!(intents.len(), 1, "one charge, not two: {intents:?}");
    assert_eq!(
        fake.count("POST", "/v1/payment_intents"),
        1,
        "no create after the restart"
    );
}

/// A PaymentIntent answered `processing`, released by Stripe's webhook; `kill -9` and a restart
/// 25 h later: the charge is not sent again (its outbox entry was retired by the webhook's
/// outcome).
#[actix_rt::test]
async fn a_processing_payment_intent_released_by_stripe_webhook_is_not_created_again_after_a_restart()
 {
    let fake = FakeStripe::start(Mode::Processing, ManualClock::new(system_now_ms()));
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = binary_config(dir.path(), &fake, &receiver, 2_000);
    let (mut child, base) = start_binary(&config).await;
    let app = binary_app(base, &receiver);
    binary_threshold(&app).await;
    eventually("the PaymentIntent is processing", || {
        fake.intents().len() == 1
    })
    .await;
    fake.set_intent_status("pi_1", "succeeded");
    let event = intent_event("payment_intent.succeeded", &fake.intents()[0]);
    assert_eq!(app.stripe_event(&event, WEBHOOK_SECRET).await, 200);
    eventually("paid by the webhook", || statuses(&app).len() == 1).await;
    assert_eq!(statuses(&app)[0]["properties"]["payment_status"], "paid");
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    fake.clock.advance(25 * HOUR_MS);
    let (_child, _base) = start_binary(&config).await;
    actix_rt::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        fake.count("POST", "/v1/payment_intents"),
        1,
        "no second create"
    );
    assert_eq!(fake.intents().len(), 1, "one charge");
}

// ------------------------------------------------------------ operator cancel

impl TestApp {
    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn cancel(&self, workflow: &str, reason: &str) -> (u16, Value) {
        self.post(
            &format!("/v1/tollgate/workflows/{workflow}/cancel"),
            json!({ "reason": reason }),
        )
        .await
    }
}

fn history_states(workflow: &Value) -> Vec<String> {
    workflow["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_rt::test]
async fn an_operator_cancels_a_payment_intent_waiting_for_3ds_and_the_workflow_ends_failed_with_the_reason()
 {
    let fake = FakeStripe::start(Mode::RequireAction, ManualClock::new(system_now_ms()));
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-cancel", "PAYMENT_INTENT").await;
    let action = "payment_gate.payment_pending_action_required";
    eventually("action required", || app.hooks(action).len() == 1).await;
    let workflow = workflow_of(&fake.intents()[0]);
    let (status, body) = app.cancel(&workflow, "customer asked to stop").await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(data["state"], "FAILED");
    assert_eq!(data["error_message"], "customer asked to stop");
    assert_eq!(data["error_code"], "canceled_by_operator");
    assert_eq!(
        history_states(data),
        ["INITIATED", "CHARGING", "ACTION_REQUIRED", "FAILED"]
    );
    assert_eq!(data["history"][3]["reason"], "customer asked to stop");
    // Stripe's PaymentIntent was cancelled before the cancel was logged.
    assert_eq!(fake.intents()[0]["status"], "canceled");
    eventually("the failed payment_status webhook", || {
        failed(&app).len() == 1
    })
    .await;
    assert_eq!(
        failed(&app)[0]["properties"]["error_message"],
        "customer asked to stop"
    );
    // A repeat is answered with the workflow; nothing is charged, cancelled or refunded again.
    let (status, again) = app.cancel(&workflow, "once more").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["data"]["error_message"], "customer asked to stop");
    drive(&app.clock, 60_000, "a while", || {
        app.clock.now_ms() > system_now_ms() + 30 * 60_000
    })
    .await;
    assert_eq!(fake.count("POST", "/v1/payment_intents"), 1, "one charge");
    assert!(fake.refunds().is_empty());
    assert_eq!(statuses(&app).len(), 1);
    // A failed charge's consequences: the spend threshold is disabled.
    let (_, wf) = app.get(&format!("/v1/tollgate/workflows/{workflow}")).await;
    let contract = wf["data"]["contract_id"].as_str().unwrap().to_owned();
    let customer = wf["data"]["customer_id"].as_str().unwrap().to_owned();
    let (_, contract) = app
        .post(
            "/v2/contracts/get",
            json!({"customer_id": customer, "contract_id": contract}),
        )
        .await;
    assert_eq!(
        contract["data"]["spend_threshold_configuration"]["is_enabled"],
        false
    );
}

#[actix_rt::test]
async fn a_cancel_racing_a_stripe_success_answers_409_and_the_workflow_is_released_once() {
    let fake = FakeStripe::start(Mode::RequireAction, ManualClock::new(system_now_ms()));
    // The customer completes 3DS just as the operator cancels.
    fake.state.lock().unwrap().succeed_on_cancel = true;
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-cancel-race", "PAYMENT_INTENT").await;
    let action = "payment_gate.payment_pending_action_required";
    eventually("action required", || app.hooks(action).len() == 1).await;
    let workflow = workflow_of(&fake.intents()[0]);
    let (status, body) = app.cancel(&workflow, "too slow").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("succeeded"),
        "{body}"
    );
    let (_, wf) = app.get(&format!("/v1/tollgate/workflows/{workflow}")).await;
    assert_eq!(wf["data"]["state"], "RELEASED");
    assert_eq!(
        history_states(&wf["data"]),
        ["INITIATED", "CHARGING", "ACTION_REQUIRED", "RELEASED"]
    );
    eventually("the paid payment_status webhook", || {
        statuses(&app).len() == 1
    })
    .await;
    assert_eq!(statuses(&app)[0]["properties"]["payment_status"], "paid");
    // Stripe's own webhook and the charge's polls change nothing more.
    let event = intent_event("payment_intent.succeeded", &fake.intents()[0]);
    assert_eq!(app.stripe_event(&event, WEBHOOK_SECRET).await, 200);
    drive(&app.clock, 60_000, "a while", || {
        app.clock.now_ms() > system_now_ms() + 30 * 60_000
    })
    .await;
    assert_eq!(statuses(&app).len(), 1, "released once");
    assert!(fake.refunds().is_empty(), "a released payment is kept");
    assert_eq!(fake.intents().len(), 1);
    let (status, body) = app.cancel(&workflow, "again").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("RELEASED"));
}

#[actix_rt::test]
async fn a_processing_payment_cannot_be_cancelled_and_an_invoice_is_voided_by_a_cancel() {
    let fake = FakeStripe::start(Mode::Processing, ManualClock::new(system_now_ms()));
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-cancel-processing", "PAYMENT_INTENT").await;
    eventually("the PaymentIntent is processing", || {
        fake.intents().len() == 1
    })
    .await;
    let workflow = workflow_of(&fake.intents()[0]);
    let (status, body) = app.cancel(&workflow, "stop").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("processing"));
    let (_, wf) = app.get(&format!("/v1/tollgate/workflows/{workflow}")).await;
    assert_eq!(wf["data"]["state"], "CHARGING", "nothing changed");
    // The charge goes on after the refused cancel: the bank settles and it is polled.
    fake.set_intent_status("pi_1", "succeeded");
    drive(&app.clock, 60_000, "paid by polling", || {
        statuses(&app).len() == 1
    })
    .await;
    assert_eq!(statuses(&app)[0]["properties"]["payment_status"], "paid");

    // An invoice whose payment waits for the customer is voided by a cancel.
    fake.set_mode(Mode::RequireAction);
    cross_stripe_threshold(&app, "inv-cancel", "INVOICE").await;
    let action = "payment_gate.payment_pending_action_required";
    eventually("action required", || app.hooks(action).len() == 1).await;
    let workflow = app.hooks(action)[0]["properties"]["workflow_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = app.cancel(&workflow, "wrong amount").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["state"], "FAILED");
    assert_eq!(fake.state.lock().unwrap().invoices[0]["status"], "void");
}

#[actix_rt::test]
async fn two_cancels_at_once_end_the_workflow_failed_once_and_the_second_waits_or_repeats() {
    let fake = FakeStripe::start(Mode::RequireAction, ManualClock::new(system_now_ms()));
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-cancel-twice", "PAYMENT_INTENT").await;
    let action = "payment_gate.payment_pending_action_required";
    eventually("action required", || app.hooks(action).len() == 1).await;
    let workflow = workflow_of(&fake.intents()[0]);
    let (a, b) = tokio::join!(
        app.cancel(&workflow, "first"),
        app.cancel(&workflow, "second")
    );
    let mut statuses_seen = [a.0, b.0];
    statuses_seen.sort_unstable();
    assert!(
        statuses_seen == [200, 200] || statuses_seen == [200, 409],
        "{a:?} {b:?}"
    );
    for (status, body) in [&a, &b] {
        if *status == 409 {
            assert!(
                body["message"].as_str().unwrap().contains("in progress"),
                "{body}"
            );
        }
    }
    let (_, wf) = app.get(&format!("/v1/tollgate/workflows/{workflow}")).await;
    assert_eq!(wf["data"]["state"], "FAILED");
    let failed_changes = wf["data"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "FAILED")
        .count();
    assert_eq!(failed_changes, 1);
    drive(&app.clock, 60_000, "a while", || {
        app.clock.now_ms() > system_now_ms() + 30 * 60_000
    })
    .await;
    assert_eq!(fake.count("POST", "/v1/payment_intents"), 1, "one charge");
    assert_eq!(fake.intents()[0]["status"], "canceled");
    assert!(fake.refunds().is_empty());
    assert_eq!(failed(&app).len(), 1);
}

// ------------------------------------------------------------------ backup

#[actix_rt::test]
async fn a_backup_restored_after_its_payment_succeeded_reconciles_and_charges_once() {
    let fake = FakeStripe::start(Mode::Processing, ManualClock::new(system_now_ms()));
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-backup", "PAYMENT_INTENT").await;
    eventually("the PaymentIntent is processing", || {
        fake.intents().len() == 1
    })
    .await;
    let workflow = workflow_of(&fake.intents()[0]);
    // Backed up while the payment is in flight.
    let place = tempfile::tempdir().unwrap();
    let backup = place.path().join("backup");
    let (status, body) = app
        .post(
            "/v1/tollgate/backup",
            json!({"to": backup.display().to_string()}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["storage_format"],
        tollgate::storage::STORAGE_FORMAT_VERSION
    );
    // The bank settles; the original releases and is lost afterwards.
    fake.set_intent_status("pi_1", "succeeded");
    drive(&app.clock, 60_000, "paid by polling", || {
        statuses(&app).len() == 1
    })
    .await;
    drop(app);
    // Restored from the backup, where the workflow is still CHARGING: the charge reconciles
    // with Stripe (finds the PaymentIntent, succeeded) before it sends anything.
    let restored = spawn_on(&fake, place, &backup, false).await;
    drive(
        &restored.clock,
        60_000,
        "released after the restore",
        || statuses(&restored).len() == 1,
    )
    .await;
    let (_, wf) = restored
        .get(&format!("/v1/tollgate/workflows/{workflow}"))
        .await;
    assert_eq!(wf["data"]["state"], "RELEASED");
    assert_eq!(
        history_states(&wf["data"]),
        ["INITIATED", "CHARGING", "RELEASED"]
    );
    assert_eq!(
        statuses(&restored)[0]["properties"]["payment_status"],
        "paid"
    );
    assert_eq!(fake.count("POST", "/v1/payment_intents"), 1, "one charge");
    assert_eq!(fake.intents().len(), 1);
    assert!(fake.refunds().is_empty());
}

#[actix_rt::test]
async fn a_cancel_while_a_create_s_outcome_is_unknown_changes_nothing_and_the_charge_goes_on() {
    let fake = FakeStripe::start(Mode::Hang, ManualClock::new(system_now_ms()));
    // Stripe's search lags behind the create: it shows nothing yet.
    fake.state.lock().unwrap().search_hidden = true;
    let app = spawn(&fake).await;
    cross_stripe_threshold(&app, "pi-cancel-unknown", "PAYMENT_INTENT").await;
    eventually("the create is sent", || {
        fake.count("POST", "/v1/payment_intents") == 1
    })
    .await;
    let workflow = fake.state.lock().unwrap().intents[0]["metadata"]["workflow_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The create's answer never comes back in time; search finds nothing: the payment may
    // exist, so the cancel is not logged (502) and the charge is let go on.
    let (status, body) = app.cancel(&workflow, "stop").await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("outcome is not known"),
        "{body}"
    );
    let (_, wf) = app.get(&format!("/v1/tollgate/workflows/{workflow}")).await;
    assert_eq!(wf["data"]["state"], "CHARGING", "nothing changed");
    fake.state.lock().unwrap().search_hidden = false;
    drive(
        &app.clock,
        60_000,
        "the charge reconciles and is paid",
        || statuses(&app).len() == 1,
    )
    .await;
    assert_eq!(statuses(&app)[0]["properties"]["payment_status"], "paid");
    assert_eq!(fake.intents().len(), 1, "one PaymentIntent");
    assert!(fake.refunds().is_empty());
}

//! Customers, contracts, thresholds, balances, invoices and ingest over HTTP, including both
//! seed examples end to end with the webhooks they must produce.

use std::io::Write;

use serde_json::{Value, json};
use tollgate::domain::fixtures;

use super::support::eventually;
use super::{TOKEN, TestApp, spawn_app};

pub(crate) const COMMIT_PRODUCT: &str = "00000000-0000-0000-0000-000000002003";
pub(crate) const RATE_CARD: &str = "00000000-0000-0000-0000-000000003001";

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub(crate) fn rfc3339(ms: i64) -> String {
    tollgate::domain::Timestamp(ms).to_rfc3339()
}

pub(crate) fn month_start() -> String {
    tollgate::domain::Timestamp(now_ms())
        .month_start()
        .to_rfc3339()
}

/// The fixture catalog (api_call at $1 = 100 cents) loaded through the engine.
pub(crate) async fn app_with_catalog() -> TestApp {
    let app = spawn_app().await;
    for change in fixtures::catalog_changes() {
        app.engine.change_catalog(change).await.unwrap();
    }
    app
}

pub(crate) async fn create_customer(app: &TestApp, alias: &str) -> String {
    let (status, body) = app
        .post(
            "/v1/customers",
            json!({"name": format!("Customer {alias}"), "ingest_aliases": [alias]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["ingest_aliases"], json!([alias]));
    body["data"]["id"].as_str().unwrap().to_owned()
}

/// A `/v2/contracts/edit` adding a $20 PREPAID commit gated by `gate_type`, starting `start`.
pub(crate) fn gated_commit_edit(
    customer: &str,
    contract: &str,
    start: &str,
    gate_type: &str,
) -> Value {
    json!({
        "customer_id": customer, "contract_id": contract,
        "add_commits": [{
            "type": "PREPAID", "product_id": COMMIT_PRODUCT, "priority": 100,
            "access_schedule": {"schedule_items": [{"amount": 2000, "starting_at": start, "ending_before": "2099-01-01T00:00:00Z"}]},
            "invoice_schedule": {"schedule_items": [{"timestamp": start, "amount": 2000}]},
            "payment_gate_config": {"payment_gate_type": gate_type, "tax_type": "NONE"}
        }]
    })
}

/// A customer with a contract and a $20 commit gated by `gate_type` added by an edit; answers
/// the customer and the contract.
pub(crate) async fn customer_with_gated_commit(
    app: &TestApp,
    alias: &str,
    gate_type: &str,
) -> (String, String) {
    let customer = create_customer(app, alias).await;
    let start = month_start();
    let (_, body) = app
        .post(
            "/v1/contracts/create",
            json!({"customer_id": customer, "rate_card_id": RATE_CARD, "starting_at": start}),
        )
        .await;
    let contract = body["data"]["id"].as_str().unwrap().to_owned();
    let edit = gated_commit_edit(&customer, &contract, &start, gate_type);
    let (status, body) = app.post("/v2/contracts/edit", edit).await;
    assert_eq!(status, 200, "{body}");
    (customer, contract)
}

pub(crate) fn gate(kind: &str) -> Value {
    json!({"payment_gate_type": kind})
}

pub(crate) async fn ingest_calls(app: &TestApp, alias: &str, prefix: &str, n: usize) {
    let events: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "transaction_id": format!("{prefix}-{i}"),
                "customer_id": alias,
                "event_type": "api_call",
                "timestamp": rfc3339(now_ms()),
                "properties": {"region": "eu"},
            })
        })
        .collect();
    for chunk in events.chunks(100) {
        let (status, body) = app.post("/v1/ingest", json!(chunk)).await;
        assert_eq!(status, 200, "{body}");
    }
}

pub(crate) async fn draft_usage_total(app: &TestApp, customer: &str) -> Value {
    let (status, body) = app
        .get(&format!(
            "/v1/customers/{customer}/invoices?type=USAGE&status=DRAFT"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"][0]["total"].clone()
}

async fn wait_for_usage_total(app: &TestApp, customer: &str, expected: Value) {
    for _ in 0..200 {
        if draft_usage_total(app, customer).await == expected {
            return;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(draft_usage_total(app, customer).await, expected);
}

#[actix_rt::test]
async fn seed_usage_hits_100_dollars_invoice_payment_commit_released_outstanding_zero() {
    let app = app_with_catalog().await;
    let customer = create_customer(&app, "acme").await;
    let (status, body) = app
        .post(
            "/v1/contracts/create",
            json!({
                "customer_id": customer,
                "rate_card_id": RATE_CARD,
                "starting_at": month_start(),
                "spend_threshold_configuration": {
                    "commit": {"product_id": COMMIT_PRODUCT, "name": "Threshold charge"},
                    "is_enabled": true,
                    "payment_gate_config": gate("EXTERNAL"),
                    "threshold_amount": 10000
                }
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let contract = body["data"]["id"].as_str().unwrap().to_owned();

    // The user hits $100 of usage.
    ingest_calls(&app, "acme", "seed1", 100).await;
    // Deliveries are concurrent: no order between the two webhooks.
    eventually("threshold_reached and external_initiate", || {
        app.receiver.of_type("payment_gate.external_initiate").len() == 1
            && app.receiver.of_type("payment_gate.threshold_reached").len() == 1
    })
    .await;
    let reached = app.receiver.of_type("payment_gate.threshold_reached");
    assert_eq!(reached.len(), 1);
    assert!(reached[0].signature_valid);
    assert_eq!(reached[0].body["properties"]["workflow_type"], "spend");
    assert_eq!(reached[0].body["properties"]["contract_id"], contract);
    let initiate = app.receiver.of_type("payment_gate.external_initiate")[0].clone();
    assert!(initiate.signature_valid);
    assert_eq!(initiate.body["properties"]["invoice_total"], 10000);
    assert_eq!(initiate.body["properties"]["invoice_currency"], "USD");

    // -> invoice: a SCHEDULED invoice with one commit_purchase line of $100.
    let (_, invoices) = app
        .get(&format!("/v1/customers/{customer}/invoices?type=SCHEDULED"))
        .await;
    let purchase = &invoices["data"][0];
    assert_eq!(purchase["total"], 10000);
    assert_eq!(purchase["line_items"][0]["type"], "commit_purchase");
    assert_eq!(purchase["id"], initiate.body["properties"]["invoice_id"]);
    assert_eq!(draft_usage_total(&app, &customer).await, 10000);

    // -> payment succeeds (EXTERNAL gate: the operator reports it).
    let workflow_id = initiate.body["properties"]["workflow_id"].as_str().unwrap();
    let (status, body) = app
        .post(
            "/v1/contracts/commits/threshold-billing/release",
            json!({"workflow_id": workflow_id, "outcome": "PAID"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("payment_status", || {
        app.receiver.of_type("payment_gate.payment_status").len() == 1
    })
    .await;
    let paid = app.receiver.of_type("payment_gate.payment_status")[0].clone();
    assert_eq!(paid.body["properties"]["payment_status"], "paid");

    // -> commit released -> outstanding spend back to $0.
    assert_eq!(draft_usage_total(&app, &customer).await, 0);
    let (_, v2) = app
        .post(
            "/v2/contracts/get",
            json!({"customer_id": customer, "contract_id": contract, "include_ledgers": true, "include_balance": true}),
        )
        .await;
    let commit = &v2["data"]["commits"][0];
    assert_eq!(commit["type"], "PREPAID");
    assert!(
        commit.get("created_by").is_none(),
        "threshold commits omit created_by"
    );
    let ledger: Vec<&str> = commit["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        ledger,
        vec![
            "PREPAID_COMMIT_SEGMENT_START",
            "PREPAID_COMMIT_AUTOMATED_INVOICE_DEDUCTION"
        ]
    );
    assert_eq!(
        v2["data"]["spend_threshold_configuration"]["threshold_amount"],
        10000
    );

    // The gated commit and its purchase invoice show the workflow and its state.
    assert_eq!(commit["payment_gate_workflow"]["id"], json!(workflow_id));
    assert_eq!(commit["payment_gate_workflow"]["state"], "RELEASED");
    assert_eq!(
        commit["payment_gate_workflow"]["payment_gate_type"],
        "EXTERNAL"
    );
    let (_, invoices) = app
        .get(&format!("/v1/customers/{customer}/invoices?type=SCHEDULED"))
        .await;
    let gated = &invoices["data"][0]["payment_gate_workflow"];
    assert_eq!(gated["id"], json!(workflow_id), "{invoices}");
    assert_eq!(gated["state"], "RELEASED");
    // Collected by the operator's own system, not Stripe.
    let external = &invoices["data"][0]["external_invoice"];
    assert_eq!(external["billing_provider_type"], "custom", "{invoices}");
    assert_eq!(external["external_status"], "PAID");

    // The same release again: 200 with the workflow as it ended, nothing changes.
    let (status, body) = app
        .post(
            "/v1/contracts/commits/threshold-billing/release",
            json!({"workflow_id": workflow_id, "outcome": "paid"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["id"], json!(workflow_id));
    assert_eq!(body["data"]["state"], "RELEASED");
    assert_eq!(body["data"]["workflow_type"], "spend");
    assert_eq!(body["data"]["invoice_total"], 10000);
    assert!(body["data"]["ended_at"].is_string());
    // The other outcome: 409 saying how it ended; nothing changes.
    let (status, body) = app
        .post(
            "/v1/contracts/commits/threshold-billing/release",
            json!({"workflow_id": workflow_id, "outcome": "failed"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("already ended RELEASED"), "{message}");
    assert_eq!(draft_usage_total(&app, &customer).await, 0);
    assert_eq!(
        app.receiver.of_type("payment_gate.payment_status").len(),
        1,
        "no second payment_status"
    );
}

#[actix_rt::test]
async fn seed_balance_below_20_dollars_charges_to_50_payment_succeeds_commit_released() {
    let app = app_with_catalog().await;
    let customer = create_customer(&app, "bolt").await;
    let start = month_start();
    let (status, body) = app
        .post(
            "/v1/contracts/create",
            json!({
                "customer_id": customer,
                "rate_card_id": RATE_CARD,
                "starting_at": start,
                "commits": [{
                    "type": "PREPAID",
                    "product_id": COMMIT_PRODUCT,
                    "priority": 10,
                    "access_schedule": {"schedule_items": [{"amount": 5000, "starting_at": start, "ending_before": "2099-01-01T00:00:00Z"}]},
                    "invoice_schedule": {"schedule_items": [{"timestamp": start, "amount": 5000}]}
                }],
                "prepaid_balance_threshold_configuration": {
                    "commit": {"product_id": COMMIT_PRODUCT, "name": "Auto-recharge"},
                    "is_enabled": true,
                    "payment_gate_config": gate("EXTERNAL"),
                    "threshold_amount": 1999,
                    "recharge_to_amount": 5000
                }
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let net = |app: &TestApp, customer: String| {
        let app_base = app.base.clone();
        let client = app.client.clone();
        async move {
            let response = client
                .post(format!(
                    "{app_base}/v1/contracts/customerBalances/getNetBalance"
                ))
                .bearer_auth(TOKEN)
                .json(&json!({"customer_id": customer}))
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            body["data"]["balance"].clone()
        }
    };
    assert_eq!(net(&app, customer.clone()).await, 5000);
    // The balance falls below $20 (31 calls at $1: $19 left) ...
    ingest_calls(&app, "bolt", "seed2", 31).await;
    eventually("external_initiate", || {
        app.receiver.of_type("payment_gate.external_initiate").len() == 1
    })
    .await;
    // ... -> a charge to bring it to $50 ...
    let initiate = app.receiver.of_type("payment_gate.external_initiate")[0].clone();
    assert_eq!(initiate.body["properties"]["invoice_total"], 3100);
    assert_eq!(
        initiate.body["properties"]["workflow_type"],
        "prepaid_balance"
    );
    assert_eq!(net(&app, customer.clone()).await, 1900);
    // ... -> payment succeeds -> commit released.
    let workflow_id = initiate.body["properties"]["workflow_id"].as_str().unwrap();
    let (status, _) = app
        .post(
            "/v1/contracts/commits/threshold-billing/release",
            json!({"workflow_id": workflow_id, "outcome": "paid"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(net(&app, customer.clone()).await, 5000);
    let (_, balances) = app
        .post(
            "/v1/contracts/customerBalances/list",
            json!({"customer_id": customer, "include_contract_balances": true, "include_balance": true}),
        )
        .await;
    let amounts: Vec<Value> = balances["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["balance"].clone())
        .collect();
    assert_eq!(amounts.len(), 2);
    assert!(amounts.contains(&json!(3100)) && amounts.contains(&json!(1900)));
    assert_eq!(balances["next_page"], Value::Null);
}

#[actix_rt::test]
async fn a_failed_external_payment_voids_the_invoice_and_disables_the_configuration() {
    let app = app_with_catalog().await;
    let customer = create_customer(&app, "fail-co").await;
    let (_, body) = app
        .post(
            "/v1/contracts/create",
            json!({
                "customer_id": customer, "rate_card_id": RATE_CARD, "starting_at": month_start(),
                "spend_threshold_configuration": {
                    "commit": {"product_id": COMMIT_PRODUCT}, "is_enabled": true,
                    "payment_gate_config": gate("EXTERNAL"), "threshold_amount": 500
                }
            }),
        )
        .await;
    let contract = body["data"]["id"].as_str().unwrap().to_owned();
    ingest_calls(&app, "fail-co", "f", 5).await;
    eventually("external_initiate", || {
        app.receiver.of_type("payment_gate.external_initiate").len() == 1
    })
    .await;
    let initiate = app.receiver.of_type("payment_gate.external_initiate")[0].clone();
    let workflow_id = initiate.body["properties"]["workflow_id"].as_str().unwrap();
    let (status, _) = app
        .post(
            "/v1/contracts/commits/threshold-billing/release",
            json!({"workflow_id": workflow_id, "outcome": "failed"}),
        )
        .await;
    assert_eq!(status, 200);
    let invoice_id = initiate.body["properties"]["invoice_id"].as_str().unwrap();
    let (_, invoice) = app
        .get(&format!("/v1/customers/{customer}/invoices/{invoice_id}"))
        .await;
    assert_eq!(invoice["data"]["status"], "VOID");
    let (_, v2) = app
        .post(
            "/v2/contracts/get",
            json!({"customer_id": customer, "contract_id": contract}),
        )
        .await;
    assert_eq!(
        v2["data"]["spend_threshold_configuration"]["is_enabled"],
        false
    );
    assert_eq!(
        v2["data"]["commits"],
        json!([]),
        "a failed purchase leaves no commit"
    );
    eventually("failed payment_status", || {
        app.receiver
            .of_type("payment_gate.payment_status")
            .iter()
            .any(|r| r.body["properties"]["payment_status"] == "failed")
    })
    .await;
    // Re-enabling evaluates at once: S is still $5 -> a new attempt.
    let (status, body) = app
        .post(
            "/v2/contracts/edit",
            json!({"customer_id": customer, "contract_id": contract,
                   "update_spend_threshold_configuration": {"is_enabled": true}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("a second attempt", || {
        app.receiver.of_type("payment_gate.external_initiate").len() == 2
    })
    .await;
}

#[actix_rt::test]
async fn payment_gated_commits_from_edit_emit_manual_commit_webhooks_and_uniqueness_keys_conflict()
{
    let app = app_with_catalog().await;
    let customer = create_customer(&app, "gated").await;
    let start = month_start();
    let (_, body) = app
        .post(
            "/v1/contracts/create",
            json!({"customer_id": customer, "rate_card_id": RATE_CARD, "starting_at": start}),
        )
        .await;
    let contract = body["data"]["id"].as_str().unwrap().to_owned();
    let mut edit = gated_commit_edit(&customer, &contract, &start, "EXTERNAL");
    edit["uniqueness_key"] = json!("purchase-123");
    let (status, body) = app.post("/v2/contracts/edit", edit.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["edit"]["add_commits"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    eventually("manual external_initiate", || {
        app.receiver.of_type("payment_gate.external_initiate").len() == 1
    })
    .await;
    let initiate = app.receiver.of_type("payment_gate.external_initiate")[0].clone();
    assert_eq!(
        initiate.body["properties"]["workflow_type"],
        "manual_commit"
    );
    assert!(
        app.receiver
            .of_type("payment_gate.threshold_reached")
            .is_empty()
    );
    // The same uniqueness key again: 409 that the SDK must not retry.
    let response = app
        .client
        .post(format!("{}/v2/contracts/edit", app.base))
        .bearer_auth(TOKEN)
        .json(&edit)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
    assert_eq!(response.headers()["x-should-retry"], "false");
}

#[actix_rt::test]
async fn bad_contract_requests_get_clear_4xx_and_change_nothing() {
    let app = app_with_catalog().await;
    let customer = create_customer(&app, "strict").await;
    let base =
        json!({"customer_id": customer, "rate_card_id": RATE_CARD, "starting_at": month_start()});
    let with = |field: &str, value: Value| {
        let mut body = base.clone();
        body[field] = value;
        body
    };
    let cases = vec![
        (
            with(
                "prepaid_balance_threshold_configuration",
                json!({
                "commit": {"product_id": COMMIT_PRODUCT}, "is_enabled": true,
                "payment_gate_config": gate("NONE"), "threshold_amount": 100, "recharge_to_amount": 5000}),
            ),
            400,
            "threshold_amount must be at least 500",
        ),
        (
            with(
                "prepaid_balance_threshold_configuration",
                json!({
                "commit": {"product_id": COMMIT_PRODUCT}, "is_enabled": true,
                "payment_gate_config": gate("NONE"), "threshold_amount": 500, "recharge_to_amount": 1000}),
            ),
            400,
            "recharge_to_amount must be at least threshold_amount + 1000",
        ),
        (
            with(
                "spend_threshold_configuration",
                json!({
                "commit": {"product_id": COMMIT_PRODUCT}, "is_enabled": true,
                "payment_gate_config": gate("STRIPE"), "threshold_amount": 500}),
            ),
            400,
            "STRIPE",
        ),
        (
            with(
                "spend_threshold_configuration",
                json!({
                "commit": {"product_id": COMMIT_PRODUCT}, "is_enabled": true,
                "payment_gate_config": gate("SOMETIMES"), "threshold_amount": 500}),
            ),
            400,
            "payment_gate_type",
        ),
        (
            with(
                "spend_threshold_configuration",
                json!({
                "commit": {"product_id": COMMIT_PRODUCT}, "is_enabled": true,
                "payment_gate_config": gate("NONE"),
                "threshold_amount": Value::Number("1.00000000000000000000000000001".parse().unwrap())}),
            ),
            400,
            "threshold_amount",
        ),
        (
            with(
                "rate_card_id",
                json!("00000000-0000-0000-0000-00000000ffff"),
            ),
            400,
            "rate card",
        ),
        (
            with("overrides", json!([{"product_id": COMMIT_PRODUCT}])),
            400,
            "unsupported: overrides is not supported",
        ),
        // Typed bodies: every message names the field with its full path.
        (
            with(
                "commits",
                json!([{"type": "PREPAID", "product_id": COMMIT_PRODUCT, "access_schedule": {
                "schedule_items": [
                    {"amount": 100, "starting_at": month_start(), "ending_before": "2099-01-01T00:00:00Z"},
                    {"amount": "ten", "starting_at": month_start(), "ending_before": "2099-01-01T00:00:00Z"},
                ]}}]),
            ),
            400,
            "commits[0].access_schedule.schedule_items[1].amount: \"ten\" is not an exact number",
        ),
        (
            with(
                "commits",
                json!([{"type": "PREPAID", "product_id": COMMIT_PRODUCT, "access_schedule": {
                    "schedule_items": [{"amount": 100, "starting_at": month_start()}]}}]),
            ),
            400,
            "commits[0].access_schedule.schedule_items[0].ending_before is required",
        ),
        (
            with(
                "commits",
                json!([{"type": "WEEKLY", "product_id": COMMIT_PRODUCT, "access_schedule": {}}]),
            ),
            400,
            "commits[0].type: \"WEEKLY\" is not one of PREPAID, POSTPAID",
        ),
        (
            with(
                "spend_threshold_configuration",
                json!({
                "commit": {"product_id": COMMIT_PRODUCT}, "is_enabled": "yes",
                "payment_gate_config": gate("NONE"), "threshold_amount": 500}),
            ),
            400,
            "spend_threshold_configuration.is_enabled: must be true or false",
        ),
        (
            with(
                "spend_threshold_configuration",
                json!({
                "commit": {"product_id": COMMIT_PRODUCT, "specifiers": [{"product_id": COMMIT_PRODUCT}]},
                "is_enabled": true, "payment_gate_config": gate("NONE"), "threshold_amount": 500}),
            ),
            400,
            "unsupported: spend_threshold_configuration.commit.specifiers is not supported",
        ),
        (
            with("credits", json!({"product_id": COMMIT_PRODUCT})),
            400,
            "credits: must be a list",
        ),
        (
            with(
                "commits",
                json!([[
                    "PREPAID",
                    COMMIT_PRODUCT,
                    null,
                    null,
                    null,
                    null,
                    null,
                    [[[5000, month_start(), "2099-01-01T00:00:00Z"]]]
                ]]),
            ),
            400,
            "commits[0]: must be an object",
        ),
        (
            with(
                "spend_threshold_configuration",
                json!({
                "commit": {"product_id": COMMIT_PRODUCT}, "is_enabled": true,
                "payment_gate_config": {"payment_gate_type": "EXTERNAL",
                    "stripe_config": {"invoice_metadata": {"workflow_id": "another"}}},
                "threshold_amount": 500}),
            ),
            400,
            "spend_threshold_configuration.payment_gate_config.stripe_config.invoice_metadata.workflow_id: the key is Tollgate's own",
        ),
        (
            with("customer_id", json!("00000000-0000-0000-0000-00000000ffff")),
            404,
            "not found",
        ),
        (
            with("starting_at", json!("last tuesday")),
            400,
            "starting_at",
        ),
    ];
    for (body, status, message) in cases {
        let (got, response) = app.post("/v1/contracts/create", body).await;
        assert_eq!(got, status, "{response}");
        assert!(
            response["message"].as_str().unwrap().contains(message),
            "{response} should mention {message}"
        );
    }
    let (_, list) = app
        .post("/v1/contracts/list", json!({"customer_id": customer}))
        .await;
    assert_eq!(list["data"], json!([]));
}

#[actix_rt::test]
async fn ingest_rejects_bad_batches_whole_accepts_gzip_and_limits_size() {
    let app = app_with_catalog().await;
    let customer = create_customer(&app, "ing").await;
    app.post(
        "/v1/contracts/create",
        json!({"customer_id": customer, "rate_card_id": RATE_CARD, "starting_at": month_start()}),
    )
    .await;
    let good = json!({"transaction_id": "g1", "customer_id": "ing", "event_type": "api_call", "timestamp": rfc3339(now_ms())});
    let bad = json!({"transaction_id": "g2", "customer_id": "ing", "event_type": "api_call", "timestamp": "2001-01-01T00:00:00Z"});
    let (status, body) = app.post("/v1/ingest", json!([good, bad])).await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("event[1].timestamp")
    );
    // Nothing of the rejected batch applied; then gzip works.
    let mut encoder = flate2_like_gzip(serde_json::to_vec(&json!([good])).unwrap());
    encoder.flush().unwrap();
    let response = app
        .client
        .post(format!("{}/v1/ingest", app.base))
        .bearer_auth(TOKEN)
        .header("Content-Type", "application/json")
        .header("Content-Encoding", "gzip")
        .body(encoder.into_inner())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "{:?}",
        response.text().await
    );
    wait_for_usage_total(&app, &customer, json!(100)).await;
    let huge = "x".repeat(1_100_000);
    let response = app
        .client
        .post(format!("{}/v1/ingest", app.base))
        .bearer_auth(TOKEN)
        .header("Content-Type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].is_string());
}

/// A minimal gzip writer (stored blocks) so the test needs no compression crate.
fn flate2_like_gzip(data: Vec<u8>) -> std::io::Cursor<Vec<u8>> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    for (i, chunk) in data.chunks(65_535).enumerate() {
        let last = (i + 1) * 65_535 >= data.len();
        out.push(u8::from(last));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(&data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let mut cursor = std::io::Cursor::new(out);
    cursor.set_position(cursor.get_ref().len() as u64);
    cursor
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[actix_rt::test]
async fn customers_list_pages_until_next_page_is_null_and_aliases_conflict() {
    let app = app_with_catalog().await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(create_customer(&app, &format!("alias-{i}")).await);
    }
    let (status, body) = app
        .post(
            "/v1/customers",
            json!({"name": "dup", "ingest_aliases": ["alias-3"]}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/customers?limit=3&next_page={c}"),
            None => "/v1/customers?limit=3".to_owned(),
        };
        let (status, body) = app.get(&path).await;
        assert_eq!(status, 200);
        for c in body["data"].as_array().unwrap() {
            seen.push(c["id"].as_str().unwrap().to_owned());
        }
        match body["next_page"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    seen.sort();
    created.sort();
    assert_eq!(seen, created);
    let (status, _) = app
        .get("/v1/customers/00000000-0000-0000-0000-00000000ffff")
        .await;
    assert_eq!(status, 404);
    let (status, body) = app.get("/v1/customers?ingest_alias=alias-2").await;
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let id = &created[0];
    let (status, _) = app
        .post(
            &format!("/v1/customers/{id}/setIngestAliases"),
            json!({"ingest_aliases": ["renamed"]}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, detail) = app.get(&format!("/v1/customers/{id}")).await;
    assert_eq!(detail["data"]["ingest_aliases"], json!(["renamed"]));
}

#[actix_rt::test]
async fn idempotency_keys_replay_the_first_response_and_refuse_a_different_body() {
    let app = app_with_catalog().await;
    let send = |body: Value, key: &str| {
        let request = app
            .client
            .post(format!("{}/v1/customers", app.base))
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", key)
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let status = response.status().as_u16();
            (status, replayed, response.json::<Value>().await.unwrap())
        }
    };
    let body = json!({"name": "Once", "ingest_aliases": ["once"]});
    let (s1, r1, first) = send(body.clone(), "key-1").await;
    let (s2, r2, second) = send(body.clone(), "key-1").await;
    assert_eq!((s1, r1), (200, false));
    assert_eq!((s2, r2), (200, true));
    assert_eq!(first, second, "the same customer, not a second one");
    let (s3, _, conflict) = send(json!({"name": "Other"}), "key-1").await;
    assert_eq!(s3, 409, "{conflict}");
    let (_, list) = app.get("/v1/customers").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

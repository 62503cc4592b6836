//! Custom pricing units over HTTP: credit types (`/v1/credit-types/list`, Tollgate's
//! `/v1/tollgate/credit-types/create`), rate-card conversions (create, `update`), rates in
//! credits, commits and credits in credits, a prepaid threshold in credits charged in dollars,
//! invoices with the `cpu_conversion` line, balances and alerts per credit type. Every refusal
//! is a 400 (409 for a name taken) that changes nothing.

use std::sync::Arc;

use serde_json::{Value, json};
use tollgate::actors::clock::ManualClock;
use tollgate::domain::fixtures;

use super::contracts::{COMMIT_PRODUCT, create_customer, gate, now_ms};
use super::lifecycle::calls;
use super::support::eventually;
use super::{TestApp, spawn_app_on_clock};

const USD: &str = "2714e483-4ff1-48e4-9e25-ac732e8f24f2";

async fn app_on(clock: &ManualClock) -> TestApp {
    let app = spawn_app_on_clock(Arc::new(clock.clone()), None, |_| {}).await;
    for change in fixtures::catalog_changes() {
        app.engine.change_catalog(change).await.unwrap();
    }
    app
}

fn start() -> String {
    tollgate::domain::Timestamp(now_ms())
        .month_start()
        .to_rfc3339()
}

fn schedule(amount: i64) -> Value {
    json!({"schedule_items": [{"amount": amount, "starting_at": start(), "ending_before": "2099-01-01T00:00:00Z"}]})
}

async fn ok(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, answer) = app.post(path, body).await;
    assert_eq!(status, 200, "{path}: {answer}");
    answer
}

async fn refused(app: &TestApp, path: &str, body: Value, status: u16, names: &[&str]) {
    let (got, answer) = app.post(path, body).await;
    assert_eq!(got, status, "{path}: {answer}");
    let message = answer["message"].as_str().unwrap_or_default();
    for name in names {
        assert!(message.contains(name), "{message:?} should name {name}");
    }
}

async fn credit_types(app: &TestApp) -> Vec<Value> {
    let (status, page) = app.get("/v1/credit-types/list").await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().unwrap().clone()
}

/// A unit "credits" worth 2 cents and a card pricing API calls at 10 credits, tokens at 1 cent.
async fn credits_card(app: &TestApp) -> (String, String) {
    let create = "/v1/tollgate/credit-types/create";
    let credits = ok(app, create, json!({"name": "credits"})).await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let card = ok(
        app,
        "/v1/contract-pricing/rate-cards/create",
        json!({"name": "In credits", "credit_type_conversions": [
            {"custom_credit_type_id": credits, "fiat_per_custom_credit": 2}]}),
    )
    .await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rate = ok(
        app,
        "/v1/contract-pricing/rate-cards/addRate",
        json!({"rate_card_id": card, "product_id": fixtures::API_PRODUCT.to_string(),
               "entitled": true, "rate_type": "FLAT", "price": 10, "credit_type_id": credits,
               "starting_at": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        rate["data"]["credit_type"],
        json!({"id": credits, "name": "credits"})
    );
    ok(
        app,
        "/v1/contract-pricing/rate-cards/addRate",
        json!({"rate_card_id": card, "product_id": fixtures::TOKEN_PRODUCT.to_string(),
               "entitled": true, "rate_type": "FLAT", "price": 1,
               "starting_at": "2020-01-01T00:00:00Z"}),
    )
    .await;
    (credits, card)
}

/// Units are listed, named once (any case), created by a `write` token; conversions are shown
/// with their worth as a string, added and never modified; a rate needs its unit's conversion
/// and a product keeps one unit per card.
#[actix_rt::test]
async fn credit_types_and_conversions_are_created_listed_and_checked() {
    let clock = ManualClock::new(now_ms());
    let app = app_on(&clock).await;
    assert_eq!(
        credit_types(&app).await,
        vec![json!({"id": USD, "name": "USD (cents)", "is_currency": true})]
    );
    let create = "/v1/tollgate/credit-types/create";
    refused(&app, create, json!({}), 400, &["name"]).await;
    refused(&app, create, json!({"name": "  "}), 400, &["name"]).await;
    refused(&app, create, json!({"name": "USD (cents)"}), 409, &[]).await;
    let (credits, card) = credits_card(&app).await;
    refused(&app, create, json!({"name": "CREDITS"}), 409, &[]).await;
    let listed = credit_types(&app).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.contains(&json!({"id": credits, "name": "credits", "is_currency": false})));

    let (_, read) = app
        .post("/v1/contract-pricing/rate-cards/get", json!({"id": card}))
        .await;
    assert_eq!(
        read["data"]["credit_type_conversions"],
        json!([{"custom_credit_type": {"id": credits, "name": "credits"}, "fiat_per_custom_credit": "2"}])
    );
    let tokens = ok(&app, create, json!({"name": "tokens"})).await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let add_rate = "/v1/contract-pricing/rate-cards/addRate";
    let rate = |credit_type: &str, product: String| {
        json!({"rate_card_id": card, "product_id": product, "entitled": true,
               "rate_type": "FLAT", "price": 1, "credit_type_id": credit_type,
               "starting_at": "2020-01-01T00:00:00Z"})
    };
    refused(
        &app,
        add_rate,
        rate(&tokens, COMMIT_PRODUCT.into()),
        400,
        &["credit_type_id", "conversion"],
    )
    .await;
    refused(
        &app,
        add_rate,
        rate(USD, fixtures::API_PRODUCT.to_string()),
        400,
        &["credit_type_id", "one credit type"],
    )
    .await;
    let update = "/v1/contract-pricing/rate-cards/update";
    for (conversion, names) in [
        (
            json!({"custom_credit_type_id": credits, "fiat_per_custom_credit": 3}),
            "never modified",
        ),
        (
            json!({"custom_credit_type_id": tokens, "fiat_per_custom_credit": 0}),
            "positive",
        ),
        (
            json!({"custom_credit_type_id": USD, "fiat_per_custom_credit": 1}),
            "not a custom pricing unit",
        ),
    ] {
        refused(
            &app,
            update,
            json!({"rate_card_id": card, "add_credit_type_conversions": [conversion]}),
            400,
            &[names],
        )
        .await;
    }
    refused(
        &app,
        update,
        json!({"rate_card_id": card, "name": "renamed"}),
        400,
        &["name"],
    )
    .await;
    ok(
        &app,
        update,
        json!({"rate_card_id": card, "add_credit_type_conversions": [
            {"custom_credit_type_id": tokens, "fiat_per_custom_credit": "0.001"}]}),
    )
    .await;
    ok(&app, add_rate, rate(&tokens, COMMIT_PRODUCT.into())).await;
    let (_, read) = app
        .post("/v1/contract-pricing/rate-cards/get", json!({"id": card}))
        .await;
    assert_eq!(
        read["data"]["credit_type_conversions"][1]["fiat_per_custom_credit"],
        "0.001"
    );
}

/// Credits bought with dollars: usage in credits draws the credit first, then the dollar
/// commit at 2 cents a credit; the prepaid threshold watches credits and charges its recharge
/// in cents; invoices convert what credits leave; balances and alerts are per credit type.
#[actix_rt::test]
async fn a_contract_in_credits_draws_converts_recharges_and_reports_per_credit_type() {
    let clock = ManualClock::new(now_ms());
    let app = app_on(&clock).await;
    let (credits, card) = credits_card(&app).await;
    let customer = create_customer(&app, "in-credits").await;
    let mut body = json!({
        "customer_id": customer, "rate_card_id": card, "starting_at": start(),
        "commits": [{
            "type": "PREPAID", "product_id": COMMIT_PRODUCT, "priority": 10,
            "access_schedule": schedule(1000),
            "invoice_schedule": {"schedule_items": [{"timestamp": start(), "amount": 1000}]}
        }],
        "credits": [{
            "product_id": COMMIT_PRODUCT, "priority": 1,
            "access_schedule": {"credit_type_id": credits, "schedule_items": schedule(2000)["schedule_items"]}
        }],
        "prepaid_balance_threshold_configuration": {
            "commit": {"product_id": COMMIT_PRODUCT}, "is_enabled": true,
            "payment_gate_config": gate("EXTERNAL"), "threshold_amount": 500,
            "recharge_to_amount": 1500, "custom_credit_type_id": credits
        }
    });
    // 200 credits = 400 cents: under the $5 minimum once converted.
    body["prepaid_balance_threshold_configuration"]["threshold_amount"] = json!(200);
    refused(&app, "/v1/contracts/create", body.clone(), 400, &["500"]).await;
    body["prepaid_balance_threshold_configuration"]["threshold_amount"] = json!(500);
    let mut spend = body.clone();
    spend["spend_threshold_configuration"] = json!({
        "commit": {"product_id": COMMIT_PRODUCT}, "is_enabled": true,
        "payment_gate_config": gate("NONE"), "threshold_amount": 5000,
        "custom_credit_type_id": credits});
    refused(
        &app,
        "/v1/contracts/create",
        spend,
        400,
        &["custom_credit_type_id"],
    )
    .await;
    let mut invoiced_in_credits = body.clone();
    invoiced_in_credits["commits"][0]["invoice_schedule"]["credit_type_id"] = json!(credits);
    refused(
        &app,
        "/v1/contracts/create",
        invoiced_in_credits,
        400,
        &["invoice_schedule.credit_type_id"],
    )
    .await;
    let contract = ok(&app, "/v1/contracts/create", body).await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = ok(
        &app,
        "/v2/contracts/get",
        json!({"customer_id": customer, "contract_id": contract}),
    )
    .await;
    assert_eq!(
        read["data"]["prepaid_balance_threshold_configuration"]["custom_credit_type_id"],
        json!(credits)
    );
    let credit = &read["data"]["credits"][0];
    assert_eq!(
        credit["access_schedule"]["credit_type"]["id"],
        json!(credits),
        "{credit}"
    );
    let commit = &read["data"]["commits"][0];
    assert_eq!(commit["access_schedule"]["credit_type"]["id"], USD);
    // A change of unit on update is refused.
    refused(
        &app,
        "/v2/contracts/edit",
        json!({"customer_id": customer, "contract_id": contract,
               "update_prepaid_balance_threshold_configuration": {"custom_credit_type_id": USD}}),
        400,
        &["custom_credit_type_id"],
    )
    .await;

    // 150 calls = 1500 credits: the credit keeps 500 <= 500, the recharge fires for 1000
    // credits, invoiced 2000 cents; 10 more leave 400 while it waits for its payment.
    calls(&app, &clock, "in-credits", "a", 100).await;
    calls(&app, &clock, "in-credits", "a2", 60).await;
    eventually("threshold_reached", || {
        !app.receiver
            .of_type("payment_gate.threshold_reached")
            .is_empty()
    })
    .await;
    let (_, invoices) = app
        .get(&format!("/v1/customers/{customer}/invoices?type=SCHEDULED"))
        .await;
    let totals: Vec<&Value> = invoices["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["total"])
        .collect();
    assert!(totals.contains(&&json!(2000)), "{invoices}");
    let net = |credit_type: &str| json!({"customer_id": customer, "credit_type_id": credit_type});
    let balance = "/v1/contracts/customerBalances/getNetBalance";
    assert_eq!(
        ok(&app, balance, net(&credits)).await["data"]["balance"],
        json!(400)
    );
    assert_eq!(
        ok(&app, balance, net(USD)).await["data"]["balance"],
        json!(1000)
    );

    // 50 more = 500 credits: 400 from the credit, 100 credits = 200 cents from the dollars.
    calls(&app, &clock, "in-credits", "b", 50).await;
    assert_eq!(
        ok(&app, balance, net(&credits)).await["data"]["balance"],
        json!(0)
    );
    assert_eq!(
        ok(&app, balance, net(USD)).await["data"]["balance"],
        json!(800)
    );
    let (_, usage) = app
        .get(&format!("/v1/customers/{customer}/invoices?type=USAGE"))
        .await;
    let invoice = &usage["data"][0];
    let lines = invoice["line_items"].as_array().unwrap();
    let of = |kind: &str, unit: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["type"] == kind && l["credit_type"]["id"] == json!(unit))
            .collect()
    };
    assert_eq!(of("usage", &credits)[0]["total"], json!(2100), "{invoice}");
    assert_eq!(
        of("applied_commit_or_credit", &credits)[0]["total"],
        json!(-2000)
    );
    assert_eq!(of("applied_commit_or_credit", USD)[0]["total"], json!(-200));
    let conversion = of("cpu_conversion", USD)[0];
    assert_eq!(
        (
            &conversion["quantity"],
            &conversion["unit_price"],
            &conversion["total"]
        ),
        (&json!(100), &json!(2), &json!(200))
    );
    assert_eq!(
        (&invoice["total"], &invoice["subtotal"]),
        (&json!(0), &json!(4200))
    );

    // Released: B (credits) holds the recharge; an alert in credits watches it.
    let workflow =
        app.receiver.of_type("payment_gate.threshold_reached")[0].body["properties"]["workflow_id"]
            .as_str()
            .unwrap()
            .to_owned();
    ok(
        &app,
        "/v1/contracts/commits/threshold-billing/release",
        json!({"workflow_id": workflow, "outcome": "PAID"}),
    )
    .await;
    // The recharge's 1000 credits first take over the 100 credits the dollars paid for (the
    // 200 cents go back): B holds 900 credits.
    assert_eq!(
        ok(&app, balance, net(&credits)).await["data"]["balance"],
        json!(900)
    );
    assert_eq!(
        ok(&app, balance, net(USD)).await["data"]["balance"],
        json!(1000)
    );
    let (_, usage) = app
        .get(&format!("/v1/customers/{customer}/invoices?type=USAGE"))
        .await;
    let lines = usage["data"][0]["line_items"].as_array().unwrap();
    assert!(
        lines.iter().all(|l| l["type"] != "cpu_conversion"),
        "nothing left to convert: {usage}"
    );
    let alert = ok(
        &app,
        "/v1/alerts/create",
        json!({"alert_type": "low_remaining_contract_credit_and_commit_balance_reached",
               "name": "low credits", "threshold": 2000, "customer_id": customer,
               "credit_type_id": credits}),
    )
    .await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually("in alarm", || {
        !app.receiver
            .of_type("alerts.low_remaining_contract_credit_and_commit_balance_reached")
            .is_empty()
    })
    .await;
    let status = ok(
        &app,
        "/v1/customer-alerts/get",
        json!({"customer_id": customer, "alert_id": alert}),
    )
    .await;
    assert_eq!(status["data"]["customer_status"], "in_alarm", "{status}");
    assert_eq!(status["data"]["alert"]["credit_type"]["id"], json!(credits));
    refused(
        &app,
        "/v1/alerts/create",
        json!({"alert_type": "spend_threshold_reached", "name": "spend", "threshold": 1,
               "credit_type_id": credits}),
        400,
        &["credit_type_id", "fiat"],
    )
    .await;

    // A customer-level credit in credits: unknown units are refused.
    refused(
        &app,
        "/v1/contracts/customerCredits/create",
        json!({"customer_id": customer, "product_id": COMMIT_PRODUCT, "priority": 1,
               "access_schedule": {"credit_type_id": "00000000-0000-4000-8000-000000000000",
                                   "schedule_items": schedule(100)["schedule_items"]}}),
        400,
        &["credit_type_id"],
    )
    .await;
    ok(
        &app,
        "/v1/contracts/customerCredits/create",
        json!({"customer_id": customer, "product_id": COMMIT_PRODUCT, "priority": 1,
               "access_schedule": {"credit_type_id": credits,
                                   "schedule_items": schedule(300)["schedule_items"]}}),
    )
    .await;
    assert_eq!(
        ok(&app, balance, net(&credits)).await["data"]["balance"],
        json!(1200)
    );
}

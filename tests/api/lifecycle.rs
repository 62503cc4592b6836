//! Recharge safety rails, contract end dates and lifecycle webhooks over HTTP, on a manual
//! clock: time moves only when the test says, and what it brings (a rail letting go, a
//! contract's end) must happen without any input, from the engine's alarms.

use std::sync::Arc;

use serde_json::{Value, json};
use tollgate::actors::clock::ManualClock;
use tollgate::domain::fixtures;

use super::contracts::{COMMIT_PRODUCT, RATE_CARD, create_customer, gate, now_ms, rfc3339};
use super::support::eventually;
use super::{TestApp, spawn_app_on_clock};

async fn app_on(clock: &ManualClock) -> TestApp {
    let app = spawn_app_on_clock(Arc::new(clock.clone()), None, |_| {}).await;
    for change in fixtures::catalog_changes() {
        app.engine.change_catalog(change).await.unwrap();
    }
    app
}

/// `n` API calls ($1 each) of `alias` at the clock's time.
pub(super) async fn calls(app: &TestApp, clock: &ManualClock, alias: &str, prefix: &str, n: usize) {
    use tollgate::actors::clock::Clock;
    let at = rfc3339(clock.now_ms());
    let events: Vec<Value> = (0..n)
        .map(|i| {
            json!({"transaction_id": format!("{prefix}-{i}"), "customer_id": alias,
                   "event_type": "api_call", "timestamp": at, "properties": {}})
        })
        .collect();
    let (status, body) = app.post("/v1/ingest", json!(events)).await;
    assert_eq!(status, 200, "{body}");
}

/// A contract from this month's start with a $50 commit (to 2099).
fn contract_body(customer: &str, start: &str, prepaid: Option<Value>) -> Value {
    let mut body = json!({
        "customer_id": customer, "rate_card_id": RATE_CARD, "starting_at": start,
        "commits": [{
            "type": "PREPAID", "product_id": COMMIT_PRODUCT, "priority": 10,
            "access_schedule": {"schedule_items": [{"amount": 5000, "starting_at": start, "ending_before": "2099-01-01T00:00:00Z"}]},
            "invoice_schedule": {"schedule_items": [{"timestamp": start, "amount": 5000}]}
        }]
    });
    if let Some(prepaid) = prepaid {
        body["prepaid_balance_threshold_configuration"] = prepaid;
    }
    body
}

#[actix_rt::test]
async fn a_rail_holds_a_recharge_back_announces_it_once_and_lets_go_when_its_interval_ends() {
    let clock = ManualClock::new(now_ms());
    let app = app_on(&clock).await;
    let customer = create_customer(&app, "railed").await;
    let start = tollgate::domain::Timestamp(now_ms())
        .month_start()
        .to_rfc3339();
    let limits = json!({"min_recharge_interval_minutes": 10, "recharge_commit_duration_days": 30});
    let prepaid = json!({
        "commit": {"product_id": COMMIT_PRODUCT}, "is_enabled": true,
        "payment_gate_config": gate("NONE"), "threshold_amount": 2000, "recharge_to_amount": 5000,
        "recharge_limits": limits
    });
    let (status, body) = app
        .post(
            "/v1/contracts/create",
            contract_body(&customer, &start, Some(prepaid)),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let contract = body["data"]["id"].as_str().unwrap().to_owned();
    let get = json!({"customer_id": customer, "contract_id": contract});
    let (_, read) = app.post("/v2/contracts/get", get.clone()).await;
    let config = &read["data"]["prepaid_balance_threshold_configuration"];
    assert_eq!(config["recharge_limits"], limits, "{read}");
    assert!(config.get("recharge_hold").is_none());
    // B falls to $20: the first recharge.
    calls(&app, &clock, "railed", "a", 30).await;
    eventually("the first recharge", || {
        app.receiver.of_type("payment_gate.threshold_reached").len() == 1
    })
    .await;
    // B falls to $20 again within ten minutes: held back, announced once.
    calls(&app, &clock, "railed", "b", 30).await;
    eventually("recharge_limited", || {
        !app.receiver
            .of_type("payment_gate.recharge_limited")
            .is_empty()
    })
    .await;
    calls(&app, &clock, "railed", "c", 5).await;
    let (_, read) = app.post("/v2/contracts/get", get.clone()).await;
    let hold = &read["data"]["prepaid_balance_threshold_configuration"]["recharge_hold"];
    assert_eq!(hold["limit"], "min_recharge_interval_minutes", "{read}");
    let held = app.receiver.of_type("payment_gate.recharge_limited");
    assert_eq!(held.len(), 1, "one notice while the same rail holds");
    assert!(held[0].signature_valid);
    let properties = &held[0].body["properties"];
    assert_eq!(properties["contract_id"], json!(contract));
    assert_eq!(properties["limit"], "min_recharge_interval_minutes");
    assert_eq!(properties["held_until"], hold["until"]);
    assert_eq!(
        app.receiver.of_type("payment_gate.threshold_reached").len(),
        1
    );
    // Ten minutes pass and nobody sends anything: the alarm's tick recharges.
    clock.advance(10 * 60_000);
    eventually("the held recharge at the interval's end", || {
        app.receiver.of_type("payment_gate.threshold_reached").len() == 2
    })
    .await;
    let (_, read) = app.post("/v2/contracts/get", get).await;
    let config = &read["data"]["prepaid_balance_threshold_configuration"];
    assert!(config.get("recharge_hold").is_none(), "{read}");
    // Bad rails are refused with the field named, and change nothing.
    for (bad, field) in [
        (
            json!({"min_recharge_interval_minutes": 0}),
            "min_recharge_interval_minutes",
        ),
        (
            json!({"max_recharge_amount_per_period": 100}),
            "max_recharge_amount_per_period",
        ),
        (
            json!({"max_recharges_per_period": -1}),
            "max_recharges_per_period",
        ),
        (json!({"max_recharges": 1}), "max_recharges"),
    ] {
        let edit = json!({"customer_id": customer, "contract_id": contract,
            "update_prepaid_balance_threshold_configuration": {"recharge_limits": bad}});
        let (status, body) = app.post("/v2/contracts/edit", edit).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains(field),
            "{field}: {body}"
        );
    }
}

#[actix_rt::test]
async fn an_end_date_ends_the_contract_with_its_webhooks_and_can_be_lifted() {
    use tollgate::actors::clock::Clock;
    let clock = ManualClock::new(now_ms());
    let app = app_on(&clock).await;
    let customer = create_customer(&app, "ending").await;
    let start = tollgate::domain::Timestamp(now_ms())
        .month_start()
        .to_rfc3339();
    let (status, body) = app
        .post(
            "/v1/contracts/create",
            contract_body(&customer, &start, None),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let contract = body["data"]["id"].as_str().unwrap().to_owned();
    for notice in ["contract.create", "commit.create", "commit.segment.start"] {
        eventually(notice, || app.receiver.of_type(notice).len() == 1).await;
        let received = &app.receiver.of_type(notice)[0];
        assert!(received.signature_valid);
        let body = &received.body;
        assert_eq!(body["type"], notice);
        assert_eq!(body["environment_type"], "PRODUCTION");
        assert_eq!(body["customer_id"], json!(customer));
        assert_eq!(body["contract_id"], json!(contract));
        assert!(body["customer_custom_fields"].is_object());
        assert!(body.get("properties").is_none(), "flat envelope: {body}");
    }
    let segment = &app.receiver.of_type("commit.segment.start")[0].body;
    assert_eq!(segment["segment_index"], 0);
    assert_eq!(segment["segment_count"], 1);
    // Refused: unknown contract, before the start, not a time.
    let unknown = "00000000-0000-0000-0000-00000000dead";
    for (body, want) in [
        (
            json!({"customer_id": customer, "contract_id": unknown, "ending_before": "2099-01-01T00:00:00Z"}),
            404,
        ),
        (
            json!({"customer_id": customer, "contract_id": contract, "ending_before": "2000-01-01T00:00:00Z"}),
            400,
        ),
        (
            json!({"customer_id": customer, "contract_id": contract, "ending_before": "soon"}),
            400,
        ),
    ] {
        let (status, answer) = app.post("/v1/contracts/updateEndDate", body).await;
        assert_eq!(status, want, "{answer}");
        assert!(answer["message"].is_string());
    }
    // Ends in an hour.
    let end = tollgate::domain::Timestamp(clock.now_ms() + 3_600_000).to_rfc3339();
    let (status, answer) = app
        .post(
            "/v1/contracts/updateEndDate",
            json!({"customer_id": customer, "contract_id": contract, "ending_before": end}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["id"], json!(contract));
    eventually("contract.edit", || {
        app.receiver.of_type("contract.edit").len() == 1
    })
    .await;
    let get = json!({"customer_id": customer, "contract_id": contract});
    let (_, read) = app.post("/v1/contracts/get", get.clone()).await;
    assert_eq!(
        read["data"]["current"]["ending_before"],
        json!(end),
        "{read}"
    );
    assert!(app.receiver.of_type("contract.end").is_empty());
    // The hour passes with no input: the contract and its commit's segment end.
    clock.advance(3_600_000);
    for notice in ["contract.end", "commit.segment.end"] {
        eventually(notice, || app.receiver.of_type(notice).len() == 1).await;
    }
    assert_eq!(
        app.receiver.of_type("contract.end")[0].body["timestamp"],
        json!(end)
    );
    // The v2 edit lifts the end again.
    let (status, answer) = app
        .post(
            "/v2/contracts/edit",
            json!({"customer_id": customer, "contract_id": contract, "update_contract_end_date": null}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (_, read) = app.post("/v1/contracts/get", get).await;
    let current = &read["data"]["current"];
    assert!(
        current.get("ending_before").is_none_or(Value::is_null),
        "{read}"
    );
}

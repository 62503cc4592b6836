//! Alerts over HTTP, on a manual clock: entering and leaving alarm on the event that crosses,
//! the webhooks of both, `evaluate_on_create` (a customer that sends nothing is evaluated by
//! the sweep), reset, archive and the refusals.

use std::sync::Arc;

use serde_json::{Value, json};
use tollgate::actors::clock::ManualClock;
use tollgate::domain::fixtures;

use super::contracts::{COMMIT_PRODUCT, RATE_CARD, create_customer, now_ms};
use super::lifecycle::calls;
use super::support::eventually;
use super::{TestApp, spawn_app_on_clock};

async fn app_on(clock: &ManualClock) -> TestApp {
    let app = spawn_app_on_clock(Arc::new(clock.clone()), None, |_| {}).await;
    for change in fixtures::catalog_changes() {
        app.engine.change_catalog(change).await.unwrap();
    }
    app
}

/// A contract from this month's start with a $50 prepaid commit and a $10 credit.
async fn contract(app: &TestApp, customer: &str) -> String {
    let start = tollgate::domain::Timestamp(now_ms())
        .month_start()
        .to_rfc3339();
    let schedule = |amount: i64| json!({"schedule_items": [{"amount": amount, "starting_at": start, "ending_before": "2099-01-01T00:00:00Z"}]});
    let body = json!({
        "customer_id": customer, "rate_card_id": RATE_CARD, "starting_at": start,
        "commits": [{
            "type": "PREPAID", "product_id": COMMIT_PRODUCT, "priority": 10,
            "access_schedule": schedule(5000),
            "invoice_schedule": {"schedule_items": [{"timestamp": start, "amount": 5000}]}
        }],
        "credits": [{"product_id": COMMIT_PRODUCT, "priority": 1, "access_schedule": schedule(1000)}]
    });
    let (status, body) = app.post("/v1/contracts/create", body).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["id"].as_str().unwrap().to_owned()
}

async fn create_alert(app: &TestApp, body: Value) -> String {
    let (status, answer) = app.post("/v1/alerts/create", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["data"]["id"].as_str().unwrap().to_owned()
}

async fn customer_status(app: &TestApp, customer: &str, alert: &str) -> Value {
    let (status, body) = app
        .post(
            "/v1/customer-alerts/get",
            json!({"customer_id": customer, "alert_id": alert}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

/// Waits (15 s at most) until the customer's status on the alert is `want`.
async fn until_status(app: &TestApp, customer: &str, alert: &str, want: &str) {
    for _ in 0..300 {
        if customer_status(app, customer, alert).await["customer_status"] == want {
            return;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("customer {customer} never reached {want} on alert {alert}");
}

#[actix_rt::test]
async fn a_balance_alert_enters_alarm_on_the_crossing_event_and_leaves_it_when_the_balance_is_back()
{
    let clock = ManualClock::new(now_ms());
    let app = app_on(&clock).await;
    let customer = create_customer(&app, "watched").await;
    let contract_id = contract(&app, &customer).await;
    // $60 of commits and credits; alarm at $20 or less.
    let alert = create_alert(
        &app,
        json!({"alert_type": "low_remaining_contract_credit_and_commit_balance_reached",
               "name": "Balance low", "threshold": 2000, "customer_id": customer}),
    )
    .await;
    until_status(&app, &customer, &alert, "ok").await;
    let now = now_ms();
    // $39 spent: $21 left, still ok.
    calls(&app, &clock, "watched", "a", 39).await;
    assert_eq!(
        customer_status(&app, &customer, &alert).await["customer_status"],
        "ok"
    );
    assert!(
        app.receiver
            .of_type("alerts.low_remaining_contract_credit_and_commit_balance_reached")
            .is_empty()
    );
    // One more dollar: $20 left, the threshold is reached on this event.
    calls(&app, &clock, "watched", "b", 1).await;
    let status = customer_status(&app, &customer, &alert).await;
    assert_eq!(status["customer_status"], "in_alarm", "{status}");
    assert_eq!(status["triggered_by"], "usage");
    assert_eq!(
        status["alert"]["type"],
        "low_remaining_contract_credit_and_commit_balance_reached"
    );
    assert_eq!(status["alert"]["threshold"], 2000);
    eventually("alerts.* webhook", || {
        app.receiver
            .of_type("alerts.low_remaining_contract_credit_and_commit_balance_reached")
            .len()
            == 1
    })
    .await;
    let hook = &app
        .receiver
        .of_type("alerts.low_remaining_contract_credit_and_commit_balance_reached")[0];
    assert!(hook.signature_valid);
    let properties = &hook.body["properties"];
    assert_eq!(properties["customer_id"], json!(customer));
    assert_eq!(properties["alert_id"], json!(alert));
    assert_eq!(properties["alert_name"], "Balance low");
    assert_eq!(properties["threshold"], 2000);
    assert_eq!(properties["remaining_balance"], 2000);
    assert_eq!(properties["triggered_by"], "usage");
    assert_eq!(
        properties["credit_type_id"],
        "2714e483-4ff1-48e4-9e25-ac732e8f24f2"
    );
    // More usage in alarm: no second webhook.
    calls(&app, &clock, "watched", "c", 5).await;
    // A $50 commit added by an edit: the balance is back above, the alarm resolves.
    let start = tollgate::domain::Timestamp(now).month_start().to_rfc3339();
    let (status, body) = app
        .post(
            "/v2/contracts/edit",
            json!({"customer_id": customer, "contract_id": contract_id, "add_commits": [{
                "type": "PREPAID", "product_id": COMMIT_PRODUCT, "priority": 20,
                "access_schedule": {"schedule_items": [{"amount": 5000, "starting_at": start, "ending_before": "2099-01-01T00:00:00Z"}]},
                "invoice_schedule": {"schedule_items": [{"timestamp": start, "amount": 5000}]}}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let status = customer_status(&app, &customer, &alert).await;
    assert_eq!(status["customer_status"], "ok", "{status}");
    assert_eq!(status["triggered_by"], "contract");
    eventually("the _resolved webhook", || {
        app.receiver
            .of_type("alerts.low_remaining_contract_credit_and_commit_balance_reached_resolved")
            .len()
            == 1
    })
    .await;
    let resolved = &app
        .receiver
        .of_type("alerts.low_remaining_contract_credit_and_commit_balance_reached_resolved")[0];
    assert_eq!(resolved.body["properties"]["remaining_balance"], 6500);
    assert_ne!(resolved.body["id"], hook.body["id"]);
    assert_eq!(
        app.receiver
            .of_type("alerts.low_remaining_contract_credit_and_commit_balance_reached")
            .len(),
        1
    );
    // Listed for the customer, with its status; archived, it is listed only on request.
    let (_, list) = app
        .post("/v1/customer-alerts/list", json!({"customer_id": customer}))
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["data"][0]["customer_status"], "ok");
    let (status, body) = app.post("/v1/alerts/archive", json!({"id": alert})).await;
    assert_eq!(status, 200, "{body}");
    let (_, list) = app
        .post("/v1/customer-alerts/list", json!({"customer_id": customer}))
        .await;
    assert!(list["data"].as_array().unwrap().is_empty(), "{list}");
    let (_, list) = app
        .post(
            "/v1/customer-alerts/list",
            json!({"customer_id": customer, "alert_statuses": ["ARCHIVED"]}),
        )
        .await;
    assert_eq!(list["data"][0]["alert"]["status"], "archived", "{list}");
    assert_eq!(list["data"][0]["customer_status"], Value::Null);
    // Archived, it evaluates nothing: spending down again sends nothing.
    calls(&app, &clock, "watched", "d", 60).await;
    let (_, read) = app
        .post(
            "/v1/customer-alerts/get",
            json!({"customer_id": customer, "alert_id": alert}),
        )
        .await;
    assert_eq!(read["data"]["customer_status"], Value::Null);
    assert_eq!(
        app.receiver
            .of_type("alerts.low_remaining_contract_credit_and_commit_balance_reached")
            .len(),
        1
    );
}

#[actix_rt::test]
async fn an_alert_for_every_customer_reaches_one_that_sends_nothing_and_reset_announces_again() {
    let clock = ManualClock::new(now_ms());
    let app = app_on(&clock).await;
    let quiet = create_customer(&app, "quiet").await;
    contract(&app, &quiet).await;
    let busy = create_customer(&app, "busy").await;
    contract(&app, &busy).await;
    // Both have $10 of credits: a $10 alert is in alarm for both at creation.
    let alert = create_alert(
        &app,
        json!({"alert_type": "low_remaining_contract_credit_balance_reached",
               "name": "Credits low", "threshold": 1000}),
    )
    .await;
    eventually("the sweep evaluates both", || {
        app.receiver
            .of_type("alerts.low_remaining_contract_credit_balance_reached")
            .len()
            == 2
    })
    .await;
    let status = customer_status(&app, &quiet, &alert).await;
    assert_eq!(status["customer_status"], "in_alarm", "{status}");
    assert_eq!(status["triggered_by"], "time");
    // Reset: forgotten and evaluated again at once, announced again under a new id.
    let (status, body) = app
        .post(
            "/v1/customer-alerts/reset",
            json!({"customer_id": quiet, "alert_id": alert}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let status = customer_status(&app, &quiet, &alert).await;
    assert_eq!(status["customer_status"], "in_alarm");
    assert_eq!(status["triggered_by"], "reset");
    eventually("announced again", || {
        app.receiver
            .of_type("alerts.low_remaining_contract_credit_balance_reached")
            .len()
            == 3
    })
    .await;
    let hooks = app
        .receiver
        .of_type("alerts.low_remaining_contract_credit_balance_reached");
    let ids: std::collections::BTreeSet<String> =
        hooks.iter().map(|h| h.body["id"].to_string()).collect();
    assert_eq!(ids.len(), 3, "three alarms, three ids");
    // evaluate_on_create false: customers already past it start in alarm silently.
    let silent = create_alert(
        &app,
        json!({"alert_type": "low_remaining_contract_credit_balance_reached",
               "name": "Credits low (quiet)", "threshold": 1000, "evaluate_on_create": false,
               "uniqueness_key": "quiet-credits"}),
    )
    .await;
    until_status(&app, &quiet, &silent, "in_alarm").await;
    assert_eq!(
        app.receiver
            .of_type("alerts.low_remaining_contract_credit_balance_reached")
            .len(),
        3,
        "no webhook for a customer already past the threshold"
    );
    // The uniqueness key is taken until released by an archive.
    let again = json!({"alert_type": "spend_threshold_reached", "name": "x", "threshold": 1,
                       "uniqueness_key": "quiet-credits"});
    let (status, body) = app.post("/v1/alerts/create", again.clone()).await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = app
        .post(
            "/v1/alerts/archive",
            json!({"id": silent, "release_uniqueness_key": true}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = app.post("/v1/alerts/create", again).await;
    assert_eq!(status, 200, "{body}");
}

#[actix_rt::test]
async fn spend_usage_and_invoice_alerts_enter_alarm_at_their_threshold() {
    let clock = ManualClock::new(now_ms());
    let app = app_on(&clock).await;
    let customer = create_customer(&app, "spender").await;
    contract(&app, &customer).await;
    let metric = fixtures::API_METRIC.to_string();
    let spend = create_alert(
        &app,
        json!({"alert_type": "spend_threshold_reached", "name": "spend",
        "threshold": 5000, "customer_id": customer}),
    )
    .await;
    let usage = create_alert(
        &app,
        json!({"alert_type": "usage_threshold_reached", "name": "usage",
        "threshold": 30, "customer_id": customer, "billable_metric_id": metric}),
    )
    .await;
    let invoice = create_alert(
        &app,
        json!({"alert_type": "monthly_invoice_total_spend_threshold_reached",
        "name": "invoice", "threshold": 500, "customer_id": customer}),
    )
    .await;
    calls(&app, &clock, "spender", "a", 29).await;
    for alert in [&spend, &usage, &invoice] {
        let status = customer_status(&app, &customer, alert).await;
        assert_eq!(status["customer_status"], "ok", "{status}");
    }
    // The 30th call: usage reaches 30.
    calls(&app, &clock, "spender", "b", 1).await;
    assert_eq!(
        customer_status(&app, &customer, &usage).await["customer_status"],
        "in_alarm"
    );
    assert_eq!(
        customer_status(&app, &customer, &spend).await["customer_status"],
        "ok"
    );
    // $50 of spend: the spend alert; the invoice after $60 of commits and credits is $0.
    calls(&app, &clock, "spender", "c", 20).await;
    assert_eq!(
        customer_status(&app, &customer, &spend).await["customer_status"],
        "in_alarm"
    );
    assert_eq!(
        customer_status(&app, &customer, &invoice).await["customer_status"],
        "ok"
    );
    // $65 spent: $5 on the invoice.
    calls(&app, &clock, "spender", "d", 15).await;
    assert_eq!(
        customer_status(&app, &customer, &invoice).await["customer_status"],
        "in_alarm"
    );
    eventually("three webhooks", || {
        app.receiver.of_type("alerts.usage_threshold_reached").len() == 1
            && app.receiver.of_type("alerts.spend_threshold_reached").len() == 1
            && app
                .receiver
                .of_type("alerts.monthly_invoice_total_spend_threshold_reached")
                .len()
                == 1
    })
    .await;
    let usage_hook = &app.receiver.of_type("alerts.usage_threshold_reached")[0];
    assert_eq!(usage_hook.body["properties"]["current_usage"], 30);
    assert_eq!(
        usage_hook.body["properties"]["billable_metric_id"],
        json!(metric)
    );
    let spend_hook = &app.receiver.of_type("alerts.spend_threshold_reached")[0];
    assert_eq!(spend_hook.body["properties"]["current_spend"], 5000);
    let invoice_hook = &app
        .receiver
        .of_type("alerts.monthly_invoice_total_spend_threshold_reached")[0];
    assert_eq!(invoice_hook.body["properties"]["invoice_total"], 500);
}

#[actix_rt::test]
async fn bad_alerts_are_refused_with_the_field_named_and_create_nothing() {
    let clock = ManualClock::new(now_ms());
    let app = app_on(&clock).await;
    let customer = create_customer(&app, "refused").await;
    let base = json!({"alert_type": "spend_threshold_reached", "name": "x", "threshold": 100});
    let with = |key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    for (body, status, needle) in [
        (with("threshold", json!(-1)), 400, "threshold"),
        (with("threshold", json!("1e400")), 400, "threshold"),
        (
            with("alert_type", json!("low_remaining_seat_balance_reached")),
            400,
            "not supported",
        ),
        (with("alert_type", json!("nonsense")), 400, "alert_type"),
        (with("name", json!("  ")), 400, "name"),
        (
            with("customer_id", json!("00000000-0000-0000-0000-00000000dead")),
            404,
            "customer",
        ),
        (
            with(
                "credit_type_id",
                json!("00000000-0000-0000-0000-00000000beef"),
            ),
            400,
            "credit_type_id",
        ),
        (
            with(
                "billable_metric_id",
                json!(fixtures::API_METRIC.to_string()),
            ),
            400,
            "billable_metric_id",
        ),
        (
            with("group_values", json!([{"key": "region", "value": "eu"}])),
            400,
            "group_values",
        ),
        (
            with(
                "custom_field_filters",
                json!([{"entity": "Commit", "key": "k", "value": "v"}]),
            ),
            400,
            "custom_field_filters",
        ),
        (
            with("plan_id", json!("00000000-0000-0000-0000-000000000001")),
            400,
            "plan_id",
        ),
        (with("uniqueness_key", json!("")), 400, "uniqueness_key"),
        (
            with("invoice_types_filter", json!(["USAGE"])),
            400,
            "invoice_types_filter",
        ),
        (with("unknown_field", json!(1)), 400, "unknown_field"),
        (
            json!({"alert_type": "usage_threshold_reached", "name": "u", "threshold": 1}),
            400,
            "billable_metric_id",
        ),
        (
            json!({"alert_type": "usage_threshold_reached", "name": "u", "threshold": 1,
                "billable_metric_id": "00000000-0000-0000-0000-00000000abcd"}),
            400,
            "billable metric",
        ),
        (
            json!({"alert_type": "low_remaining_commit_percentage_reached", "name": "p", "threshold": 101}),
            400,
            "percentage",
        ),
    ] {
        let (got, answer) = app.post("/v1/alerts/create", body.clone()).await;
        assert_eq!(got, status, "{body} -> {answer}");
        let message = answer["message"].as_str().unwrap_or("");
        assert!(message.contains(needle), "{body} -> {message}");
    }
    let (_, list) = app
        .post("/v1/customer-alerts/list", json!({"customer_id": customer}))
        .await;
    assert!(list["data"].as_array().unwrap().is_empty(), "{list}");
    let unknown = "00000000-0000-0000-0000-00000000f00d";
    let (status, _) = app.post("/v1/alerts/archive", json!({"id": unknown})).await;
    assert_eq!(status, 404);
    let (status, _) = app
        .post(
            "/v1/customer-alerts/get",
            json!({"customer_id": customer, "alert_id": unknown}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .post(
            "/v1/customer-alerts/reset",
            json!({"customer_id": customer, "alert_id": unknown}),
        )
        .await;
    assert_eq!(status, 404);
    // Another customer's alert is not this customer's.
    let other = create_customer(&app, "other").await;
    let theirs = create_alert(
        &app,
        json!({"alert_type": "spend_threshold_reached", "name": "t",
        "threshold": 1, "customer_id": other}),
    )
    .await;
    let (status, _) = app
        .post(
            "/v1/customer-alerts/get",
            json!({"customer_id": customer, "alert_id": theirs}),
        )
        .await;
    assert_eq!(status, 404);
}

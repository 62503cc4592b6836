//! Customer-level commits and credits over HTTP: the refusals of create and `updateEndDate`
//! (each changes nothing), drawdown by a contract's usage, the lists and the net balance.

use std::sync::Arc;

use serde_json::{Value, json};
use tollgate::actors::clock::ManualClock;
use tollgate::domain::fixtures;

use super::contracts::{COMMIT_PRODUCT, RATE_CARD, create_customer, now_ms};
use super::lifecycle::calls;
use super::{TestApp, spawn_app_on_clock};

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

fn credit(customer: &str, amount: i64) -> Value {
    json!({
        "customer_id": customer, "product_id": COMMIT_PRODUCT, "priority": 5,
        "access_schedule": {"schedule_items": [{"amount": amount, "starting_at": start(), "ending_before": "2099-01-01T00:00:00Z"}]}
    })
}

async fn contract(app: &TestApp, customer: &str) -> String {
    let body = json!({"customer_id": customer, "rate_card_id": RATE_CARD, "starting_at": start()});
    let (status, body) = app.post("/v1/contracts/create", body).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["id"].as_str().unwrap().to_owned()
}

async fn listed(app: &TestApp, path: &str, body: Value) -> Vec<Value> {
    let (status, answer) = app.post(path, body).await;
    assert_eq!(status, 200, "{answer}");
    answer["data"].as_array().unwrap().clone()
}

/// Every malformed or unsupported create is a 400 with a message naming the field, an unknown
/// customer a 404, a reused key a 409, and none of them creates anything; a valid credit is
/// drawn by the contract's usage and listed with its ledger.
#[actix_rt::test]
async fn customer_level_creates_refuse_whole_and_a_credit_pays_for_the_contracts_usage() {
    let clock = ManualClock::new(now_ms());
    let app = app_on(&clock).await;
    let customer = create_customer(&app, "shared-api").await;
    let contract_id = contract(&app, &customer).await;
    let other = create_customer(&app, "shared-api-other").await;
    let other_contract = contract(&app, &other).await;
    let path = "/v1/contracts/customerCredits/create";
    let refusals: Vec<(Value, &str)> = vec![
        (
            {
                let mut b = credit(&customer, 100);
                b["type"] = json!("PREPAID");
                b
            },
            "credits are free",
        ),
        (
            {
                let mut b = credit(&customer, -100);
                b["priority"] = json!(5);
                b
            },
            "amount",
        ),
        (
            {
                let mut b = credit(&customer, 100);
                b["applicable_contract_ids"] = json!([other_contract]);
                b
            },
            "applicable_contract_ids",
        ),
        (
            {
                let mut b = credit(&customer, 100);
                b["access_schedule"]["credit_type_id"] =
                    json!("00000000-0000-0000-0000-00000000aaaa");
                b
            },
            "credit_type_id",
        ),
        (
            {
                let mut b = credit(&customer, 100);
                b["specifiers"] = json!([{"product_id": COMMIT_PRODUCT}]);
                b
            },
            "specifiers",
        ),
        (
            {
                let mut b = credit(&customer, 100);
                b["custom_fields"] = json!({"": "v"});
                b
            },
            "custom_fields",
        ),
        (
            {
                let mut b = credit(&customer, 100);
                b["surprise"] = json!(1);
                b
            },
            "surprise",
        ),
        (
            {
                let mut b = credit(&customer, 100);
                b.as_object_mut().unwrap().remove("priority");
                b
            },
            "priority",
        ),
        (
            {
                let mut b = credit(&customer, 100);
                b["access_schedule"]["schedule_items"] = json!([]);
                b
            },
            "schedule_items",
        ),
    ];
    for (body, names) in refusals {
        let (status, answer) = app.post(path, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(names), "{message} should name {names}");
    }
    // A PREPAID commit with invoices needs the contract they are billed on.
    let mut invoiced = credit(&customer, 1000);
    invoiced["type"] = json!("PREPAID");
    invoiced["invoice_schedule"] =
        json!({"schedule_items": [{"timestamp": start(), "amount": 1000}]});
    let (status, answer) = app
        .post("/v1/contracts/customerCommits/create", invoiced.clone())
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("invoice_contract_id")
    );
    let mut unknown = credit(&customer, 100);
    unknown["customer_id"] = json!("00000000-0000-0000-0000-00000000dead");
    assert_eq!(app.post(path, unknown).await.0, 404);
    let everything = json!({"customer_id": customer, "include_contract_balances": true});
    assert!(
        listed(
            &app,
            "/v1/contracts/customerBalances/list",
            everything.clone()
        )
        .await
        .is_empty(),
        "nothing was created"
    );

    let mut keyed = credit(&customer, 500);
    keyed["uniqueness_key"] = json!("welcome");
    let (status, answer) = app.post(path, keyed.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let credit_id = answer["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(app.post(path, keyed).await.0, 409);
    invoiced["invoice_contract_id"] = json!(contract_id);
    let (status, answer) = app
        .post("/v1/contracts/customerCommits/create", invoiced)
        .await;
    assert_eq!(status, 200, "{answer}");
    let commit_id = answer["data"]["id"].as_str().unwrap().to_owned();

    // Seven $1 calls: $5 from the credit (priority 5), $2 from the commit (priority 5, paid).
    calls(&app, &clock, "shared-api", "c", 7).await;
    let credits = listed(
        &app,
        "/v1/contracts/customerCredits/list",
        json!({"customer_id": customer, "include_balance": true, "include_ledgers": true}),
    )
    .await;
    assert_eq!(credits.len(), 1);
    assert_eq!(credits[0]["id"], json!(credit_id));
    assert_eq!(credits[0]["balance"], json!(0));
    assert!(credits[0].get("contract").is_none());
    let deduction = credits[0]["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "CREDIT_AUTOMATED_INVOICE_DEDUCTION")
        .unwrap()
        .clone();
    assert_eq!(deduction["amount"], json!(-500));
    assert_eq!(deduction["contract_id"], json!(contract_id));
    let commits = listed(
        &app,
        "/v1/contracts/customerCommits/list",
        json!({"customer_id": customer, "include_balance": true}),
    )
    .await;
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0]["id"], json!(commit_id));
    assert_eq!(commits[0]["balance"], json!(800));
    assert_eq!(commits[0]["invoice_contract"]["id"], json!(contract_id));
    let (status, net) = app
        .post(
            "/v1/contracts/customerBalances/getNetBalance",
            json!({"customer_id": customer}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(net["data"]["balance"], json!(800));
    // The purchase invoice is on the contract.
    let (status, invoices) = app
        .get(&format!("/v1/customers/{customer}/invoices?type=SCHEDULED"))
        .await;
    assert_eq!(status, 200, "{invoices}");
    assert_eq!(invoices["data"].as_array().unwrap().len(), 1, "{invoices}");
    assert_eq!(invoices["data"][0]["total"], json!(1000));
    assert!(
        listed(
            &app,
            "/v1/contracts/customerCommits/list",
            json!({"customer_id": other})
        )
        .await
        .is_empty(),
        "another customer's are not listed"
    );
    // Each list reads its own fields: another list's are refused, not ignored.
    for (path, body) in [
        (
            "/v1/contracts/customerCredits/list",
            json!({"customer_id": customer, "commit_id": commit_id}),
        ),
        (
            "/v1/contracts/customerCommits/list",
            json!({"customer_id": customer, "include_contract_credits": true}),
        ),
        (
            "/v1/contracts/customerBalances/list",
            json!({"customer_id": customer, "credit_id": credit_id}),
        ),
    ] {
        let (status, answer) = app.post(path, body).await;
        assert_eq!(status, 400, "{path}: {answer}");
    }
}

/// `updateEndDate` refuses what it cannot do (lengthen, an issued invoice, the wrong kind or
/// endpoint, a contract's own commit, an unknown id) and shortens access otherwise.
#[actix_rt::test]
async fn update_end_date_only_shortens_and_refuses_whole() {
    let clock = ManualClock::new(now_ms());
    let app = app_on(&clock).await;
    let customer = create_customer(&app, "shared-end").await;
    let contract_id = contract(&app, &customer).await;
    let (status, answer) = app
        .post(
            "/v1/contracts/customerCredits/create",
            credit(&customer, 500),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let credit_id = answer["data"]["id"].as_str().unwrap().to_owned();
    let mut commit = credit(&customer, 1000);
    commit["type"] = json!("PREPAID");
    commit["invoice_contract_id"] = json!(contract_id);
    commit["invoice_schedule"] =
        json!({"schedule_items": [{"timestamp": start(), "amount": 1000}]});
    let (status, answer) = app
        .post("/v1/contracts/customerCommits/create", commit)
        .await;
    assert_eq!(status, 200, "{answer}");
    let commit_id = answer["data"]["id"].as_str().unwrap().to_owned();
    let tomorrow = tollgate::domain::Timestamp(now_ms() + 86_400_000).to_rfc3339();
    let credits = "/v1/contracts/customerCredits/updateEndDate";
    let commits = "/v1/contracts/customerCommits/updateEndDate";
    let cases: Vec<(&str, Value, u16)> = vec![
        (
            credits,
            json!({"customer_id": customer, "credit_id": credit_id, "access_ending_before": "2200-01-01T00:00:00Z"}),
            400,
        ),
        (
            credits,
            json!({"customer_id": customer, "credit_id": credit_id, "access_ending_before": "2000-01-01T00:00:00Z"}),
            400,
        ),
        (
            credits,
            json!({"customer_id": customer, "credit_id": credit_id}),
            400,
        ),
        (
            credits,
            json!({"customer_id": customer, "credit_id": commit_id, "access_ending_before": tomorrow}),
            400,
        ),
        (
            commits,
            json!({"customer_id": customer, "commit_id": credit_id, "access_ending_before": tomorrow}),
            400,
        ),
        (
            commits,
            json!({"customer_id": customer, "commit_id": commit_id, "invoices_ending_before": start()}),
            400,
        ),
        (
            commits,
            json!({"customer_id": customer, "commit_id": commit_id}),
            400,
        ),
        (
            commits,
            json!({"customer_id": customer, "commit_id": "00000000-0000-0000-0000-00000000beef", "access_ending_before": tomorrow}),
            404,
        ),
    ];
    let before = listed(
        &app,
        "/v1/contracts/customerBalances/list",
        json!({"customer_id": customer}),
    )
    .await;
    for (path, body, expected) in cases {
        let (status, answer) = app.post(path, body.clone()).await;
        assert_eq!(status, expected, "{path} {body} -> {answer}");
        assert!(answer["message"].is_string(), "{answer}");
    }
    assert_eq!(
        listed(
            &app,
            "/v1/contracts/customerBalances/list",
            json!({"customer_id": customer})
        )
        .await,
        before,
        "nothing changed"
    );
    let (status, answer) = app.post(credits, json!({"customer_id": customer, "credit_id": credit_id, "access_ending_before": tomorrow})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["id"], json!(credit_id));
    let after = listed(
        &app,
        "/v1/contracts/customerCredits/list",
        json!({"customer_id": customer}),
    )
    .await;
    assert_eq!(
        after[0]["access_schedule"]["schedule_items"][0]["ending_before"],
        json!(tomorrow)
    );
}

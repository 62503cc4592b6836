//! Balance corrections over HTTP: custom fields on commits and credits, the prepaid threshold's
//! `threshold_balance_specifiers`, manual ledger entries (`addManualBalanceLedgerEntry`) and
//! archiving commits and credits through `/v2/contracts/edit`. Every refusal is a 400 (404 for
//! what does not exist) that changes nothing.

use std::sync::Arc;

use serde_json::{Value, json};
use tollgate::actors::clock::ManualClock;
use tollgate::domain::fixtures;

use super::contracts::{COMMIT_PRODUCT, RATE_CARD, create_customer, gate, now_ms};
use super::lifecycle::calls;
use super::support::eventually;
use super::{TOKEN, TestApp, spawn_app_on_clock};

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

/// A $50 paid commit, a $30 promotional credit (priority 1, so drawn first) and a prepaid
/// threshold ($20 -> $50, NONE gate) whose specifiers leave the promotion out of B.
fn contract_body(customer: &str, specifiers: Value) -> Value {
    json!({
        "customer_id": customer, "rate_card_id": RATE_CARD, "starting_at": start(),
        "commits": [{
            "type": "PREPAID", "product_id": COMMIT_PRODUCT, "priority": 10,
            "access_schedule": schedule(5000),
            "invoice_schedule": {"schedule_items": [{"timestamp": start(), "amount": 5000}]},
            "custom_fields": {"source": "sales"}
        }],
        "credits": [{
            "product_id": COMMIT_PRODUCT, "priority": 1, "access_schedule": schedule(3000),
            "custom_fields": {"campaign": "promo"}
        }],
        "prepaid_balance_threshold_configuration": {
            "commit": {"product_id": COMMIT_PRODUCT}, "is_enabled": true,
            "payment_gate_config": gate("NONE"), "threshold_amount": 2000, "recharge_to_amount": 5000,
            "threshold_balance_specifiers": specifiers
        }
    })
}

fn promo_specifiers() -> Value {
    json!([{"exclude": [{"custom_field_filters": [{"entity": "ContractCredit", "key": "campaign", "value": "promo"}]}]}])
}

async fn balances(app: &TestApp, customer: &str) -> Vec<Value> {
    let (status, answer) = app
        .post(
            "/v1/contracts/customerBalances/list",
            json!({"customer_id": customer, "include_contract_balances": true,
                   "include_balance": true, "include_ledgers": true, "include_archived": true}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    answer["data"].as_array().unwrap().clone()
}

fn by_type<'a>(list: &'a [Value], kind: &str) -> &'a Value {
    list.iter().find(|b| b["type"] == kind).unwrap()
}

/// Custom fields are kept and shown; the specifiers are shown on the configuration and keep
/// the promotion out of B (the recharge fires after the paid commit alone fell to $20, 60
/// calls in, not 30); malformed specifiers and custom fields are refused whole.
#[actix_rt::test]
async fn specifiers_leave_a_promotion_out_of_the_watched_balance_and_bad_ones_are_refused() {
    let clock = ManualClock::new(now_ms());
    let app = app_on(&clock).await;
    let customer = create_customer(&app, "specified").await;
    let path = "/v1/contracts/create";
    let bad: Vec<(Value, &str)> = vec![
        (
            json!([{"exclude": [{"custom_field_filters": [{"entity": "Customer", "key": "k", "value": "v"}]}]}]),
            "Customer",
        ),
        (
            json!([{"exclude": [{"custom_field_filters": [{"entity": "Commit", "key": "k"}]}]}]),
            "value",
        ),
        (
            json!([{"exclude": [{"custom_field_filters": [{"entity": "Commit", "key": "k", "value": "v", "op": "eq"}]}]}]),
            "op",
        ),
        (
            json!([{"exclude": [{"custom_field_filters": []}]}]),
            "at least one",
        ),
        (json!({"exclude": []}), "threshold_balance_specifiers"),
    ];
    for (specifiers, names) in bad {
        let (status, answer) = app.post(path, contract_body(&customer, specifiers)).await;
        assert_eq!(status, 400, "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(names), "{message} should name {names}");
    }
    let mut long_key = contract_body(&customer, promo_specifiers());
    long_key["credits"][0]["custom_fields"] = json!({"k".repeat(129): "v"});
    let (status, answer) = app.post(path, long_key).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("custom_fields")
    );
    let (status, answer) = app
        .post("/v1/contracts/list", json!({"customer_id": customer}))
        .await;
    assert_eq!(status, 200);
    assert!(
        answer["data"].as_array().unwrap().is_empty(),
        "nothing was created"
    );

    let (status, answer) = app
        .post(path, contract_body(&customer, promo_specifiers()))
        .await;
    assert_eq!(status, 200, "{answer}");
    let contract = answer["data"]["id"].as_str().unwrap().to_owned();
    let (_, read) = app
        .post(
            "/v2/contracts/get",
            json!({"customer_id": customer, "contract_id": contract}),
        )
        .await;
    assert_eq!(
        read["data"]["prepaid_balance_threshold_configuration"]["threshold_balance_specifiers"],
        promo_specifiers(),
        "{read}"
    );
    let listed = balances(&app, &customer).await;
    assert_eq!(
        by_type(&listed, "CREDIT")["custom_fields"],
        json!({"campaign": "promo"})
    );
    assert_eq!(
        by_type(&listed, "PREPAID")["custom_fields"],
        json!({"source": "sales"})
    );
    eventually("credit.create", || {
        !app.receiver.of_type("credit.create").is_empty()
    })
    .await;
    let created = app.receiver.of_type("credit.create");
    assert_eq!(
        created[0].body["commit_custom_fields"],
        json!({"campaign": "promo"})
    );
    // 30 calls spend the promotion: B (the paid $50) has not moved.
    calls(&app, &clock, "specified", "a", 30).await;
    calls(&app, &clock, "specified", "b", 29).await;
    let listed = balances(&app, &customer).await;
    assert_eq!(by_type(&listed, "CREDIT")["balance"], json!(0));
    assert_eq!(by_type(&listed, "PREPAID")["balance"], json!(2100));
    assert!(
        app.receiver
            .of_type("payment_gate.threshold_reached")
            .is_empty()
    );
    calls(&app, &clock, "specified", "c", 1).await;
    eventually("the recharge at B = $20", || {
        app.receiver.of_type("payment_gate.threshold_reached").len() == 1
    })
    .await;
    assert_eq!(
        recharged(&app, &customer).await,
        vec![json!(3000)],
        "$50 - $20"
    );
}

/// The access amounts of the commits the prepaid threshold issued.
async fn recharged(app: &TestApp, customer: &str) -> Vec<Value> {
    balances(app, customer)
        .await
        .iter()
        .filter(|b| b.get("created_by").is_none())
        .map(|b| b["access_schedule"]["schedule_items"][0]["amount"].clone())
        .collect()
}

/// POST with the token and an Idempotency-Key.
async fn post_keyed(app: &TestApp, path: &str, key: &str, body: &Value) -> (u16, String) {
    let response = app
        .client
        .post(format!("{}{}", app.base, path))
        .bearer_auth(TOKEN)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// A manual entry answers 200 with no body, shows in the ledger with its reason and moves the
/// balance (a negative one fires the prepaid threshold; a customer-level entry needs no
/// contract); a retried entry with the same Idempotency-Key counts once; refusals change
/// nothing.
#[actix_rt::test]
async fn manual_entries_move_balances_once_and_refuse_whole() {
    let clock = ManualClock::new(now_ms());
    let app = app_on(&clock).await;
    let customer = create_customer(&app, "manual").await;
    let (status, answer) = app
        .post(
            "/v1/contracts/create",
            contract_body(&customer, promo_specifiers()),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let contract = answer["data"]["id"].as_str().unwrap().to_owned();
    let listed = balances(&app, &customer).await;
    let paid = by_type(&listed, "PREPAID").clone();
    let commit = paid["id"].as_str().unwrap().to_owned();
    let segment = paid["access_schedule"]["schedule_items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let entry = |amount: i64| {
        json!({"customer_id": customer, "contract_id": contract, "id": commit,
               "segment_id": segment, "amount": amount, "reason": "outage credit"})
    };
    let path = "/v1/contracts/addManualBalanceLedgerEntry";
    let refusals: Vec<(Value, u16, &str)> = vec![
        (entry(0), 400, "amount"),
        (
            {
                let mut b = entry(100);
                b["reason"] = json!("");
                b
            },
            400,
            "reason",
        ),
        (
            {
                let mut b = entry(100);
                b.as_object_mut().unwrap().remove("reason");
                b
            },
            400,
            "reason",
        ),
        (
            {
                let mut b = entry(100);
                b["per_group_amounts"] = json!({"a": 100});
                b
            },
            400,
            "per_group_amounts",
        ),
        (
            {
                let mut b = entry(100);
                b["note"] = json!("x");
                b
            },
            400,
            "note",
        ),
        (
            {
                let mut b = entry(100);
                b["amount"] = json!(1e300);
                b
            },
            400,
            "amount",
        ),
        (
            {
                let mut b = entry(100);
                b["segment_id"] = json!(commit);
                b
            },
            400,
            "segment_id",
        ),
        (
            {
                let mut b = entry(100);
                b.as_object_mut().unwrap().remove("contract_id");
                b
            },
            400,
            "contract_id",
        ),
        (
            {
                let mut b = entry(100);
                b["id"] = json!("00000000-0000-0000-0000-00000000beef");
                b
            },
            404,
            "",
        ),
        (
            {
                let mut b = entry(100);
                b["customer_id"] = json!("00000000-0000-0000-0000-00000000beef");
                b
            },
            404,
            "",
        ),
    ];
    for (body, status, names) in refusals {
        let (got, answer) = app.post(path, body.clone()).await;
        assert_eq!(got, status, "{body} -> {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{message} should name {names}");
    }
    let listed = balances(&app, &customer).await;
    assert_eq!(
        by_type(&listed, "PREPAID")["balance"],
        json!(5000),
        "nothing moved"
    );

    // -$25 twice with one key (a retry), then -$6: counted once each, B = $19 <= $20 fires.
    let (status, body) = post_keyed(&app, path, "adj-1", &entry(-2500)).await;
    assert_eq!((status, body.as_str()), (200, ""));
    let (status, _) = post_keyed(&app, path, "adj-1", &entry(-2500)).await;
    assert_eq!(status, 200, "the replay of the first answer");
    let listed = balances(&app, &customer).await;
    assert_eq!(by_type(&listed, "PREPAID")["balance"], json!(2500));
    assert!(
        app.receiver
            .of_type("payment_gate.threshold_reached")
            .is_empty()
    );
    let (status, _) = post_keyed(&app, path, "adj-2", &entry(-600)).await;
    assert_eq!(status, 200);
    eventually("the recharge after the manual draw-down", || {
        app.receiver.of_type("payment_gate.threshold_reached").len() == 1
    })
    .await;
    assert_eq!(
        recharged(&app, &customer).await,
        vec![json!(3100)],
        "$50 - $19"
    );
    let listed = balances(&app, &customer).await;
    let paid = listed.iter().find(|b| b["id"] == json!(commit)).unwrap();
    let ledger = paid["ledger"].as_array().unwrap().clone();
    let manual: Vec<(Value, Value)> = ledger
        .iter()
        .filter(|e| e["type"] == "PREPAID_COMMIT_MANUAL")
        .map(|e| (e["amount"].clone(), e["reason"].clone()))
        .collect();
    assert_eq!(
        manual,
        vec![
            (json!(-2500), json!("outage credit")),
            (json!(-600), json!("outage credit"))
        ]
    );

    // A customer-level credit takes an entry without a contract.
    let (status, answer) = app
        .post(
            "/v1/contracts/customerCredits/create",
            json!({"customer_id": customer, "product_id": COMMIT_PRODUCT, "priority": 5,
                   "access_schedule": schedule(100)}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let shared = answer["data"]["id"].as_str().unwrap().to_owned();
    let (_, credits) = app
        .post(
            "/v1/contracts/customerCredits/list",
            json!({"customer_id": customer, "include_balance": true}),
        )
        .await;
    let shared_segment = credits["data"][0]["access_schedule"]["schedule_items"][0]["id"].clone();
    let (status, answer) = app
        .post(
            path,
            json!({"customer_id": customer, "id": shared, "segment_id": shared_segment,
                   "amount": 250, "reason": "loyalty", "timestamp": start()}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (_, credits) = app
        .post(
            "/v1/contracts/customerCredits/list",
            json!({"customer_id": customer, "include_balance": true, "include_ledgers": true}),
        )
        .await;
    assert_eq!(credits["data"][0]["balance"], json!(350));
    let ledger = credits["data"][0]["ledger"].as_array().unwrap();
    assert!(
        ledger
            .iter()
            .any(|e| e["type"] == "CREDIT_MANUAL" && e["amount"] == json!(250)),
        "{ledger:?}"
    );
}

/// `archive_commits` and `archive_credits`: the archived credit stops drawing and shows its
/// `archived_at`, `credit.archive` is sent; a wrong list or an unknown id is a 400 that
/// archives nothing.
#[actix_rt::test]
async fn an_edit_archives_a_credit_and_refuses_bad_archives_whole() {
    let clock = ManualClock::new(now_ms());
    let app = app_on(&clock).await;
    let customer = create_customer(&app, "archiver").await;
    let (status, answer) = app
        .post("/v1/contracts/create", contract_body(&customer, json!([])))
        .await;
    assert_eq!(status, 200, "{answer}");
    let contract = answer["data"]["id"].as_str().unwrap().to_owned();
    let listed = balances(&app, &customer).await;
    let credit = by_type(&listed, "CREDIT")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let commit = by_type(&listed, "PREPAID")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    calls(&app, &clock, "archiver", "a", 5).await;
    let edit = |archive: Value| {
        let mut body = json!({"customer_id": customer, "contract_id": contract});
        body.as_object_mut()
            .unwrap()
            .extend(archive.as_object().unwrap().clone());
        body
    };
    for (body, names) in [
        (
            edit(json!({"archive_commits": [{"id": credit}]})),
            "is a credit",
        ),
        (
            edit(
                json!({"archive_credits": [{"id": credit}], "archive_commits": [{"id": "00000000-0000-0000-0000-00000000beef"}]}),
            ),
            "not a commit",
        ),
        (
            edit(json!({"archive_credits": [{"id": credit, "reason": "x"}]})),
            "reason",
        ),
    ] {
        let (status, answer) = app.post("/v2/contracts/edit", body).await;
        assert_eq!(status, 400, "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(names), "{message} should name {names}");
    }
    let listed = balances(&app, &customer).await;
    assert!(by_type(&listed, "CREDIT").get("archived_at").is_none());
    let (status, answer) = app
        .post(
            "/v2/contracts/edit",
            edit(json!({"archive_credits": [{"id": credit}]})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let listed = balances(&app, &customer).await;
    let archived = by_type(&listed, "CREDIT");
    assert!(archived["archived_at"].is_string(), "{archived}");
    assert_eq!(archived["balance"], json!(0));
    let ledger = archived["ledger"].as_array().unwrap();
    assert_eq!(ledger.last().unwrap()["type"], "CREDIT_EXPIRATION");
    assert_eq!(ledger.last().unwrap()["amount"], json!(-2500));
    eventually("credit.archive", || {
        app.receiver.of_type("credit.archive").len() == 1
    })
    .await;
    let notice = &app.receiver.of_type("credit.archive")[0];
    assert_eq!(notice.body["commit_id"], json!(credit));
    assert_eq!(notice.body["contract_id"], json!(contract));
    assert!(notice.signature_valid);
    calls(&app, &clock, "archiver", "b", 3).await;
    let listed = balances(&app, &customer).await;
    assert_eq!(
        by_type(&listed, "PREPAID")["balance"],
        json!(4700),
        "the commit draws now"
    );
    assert_eq!(by_type(&listed, "PREPAID")["id"], json!(commit));
}

/// `update_commits` / `update_credits` in the SDK's shapes: a credit raised and renamed, a
/// commit's unissued invoice changed; a lowering below what was drawn, an unknown field and a
/// credit in the commits' list are 400s that change nothing.
#[actix_rt::test]
async fn an_edit_updates_a_credit_and_an_invoice_and_refuses_what_would_rewrite_history() {
    let clock = ManualClock::new(now_ms());
    let app = app_on(&clock).await;
    let customer = create_customer(&app, "updater").await;
    let mut body = contract_body(&customer, json!([]));
    let later = tollgate::domain::Timestamp(now_ms() + 40 * 86_400_000).to_rfc3339();
    body["commits"][0]["invoice_schedule"] =
        json!({"schedule_items": [{"timestamp": later, "amount": 5000}]});
    let (status, answer) = app.post("/v1/contracts/create", body).await;
    assert_eq!(status, 200, "{answer}");
    let contract = answer["data"]["id"].as_str().unwrap().to_owned();
    let listed = balances(&app, &customer).await;
    let credit = by_type(&listed, "CREDIT").clone();
    let commit = by_type(&listed, "PREPAID").clone();
    let credit_segment = credit["access_schedule"]["schedule_items"][0]["id"].clone();
    let item = commit["invoice_schedule"]["schedule_items"][0]["id"].clone();
    calls(&app, &clock, "updater", "a", 5).await;
    let edit = |extra: Value| {
        let mut body = json!({"customer_id": customer, "contract_id": contract});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, names) in [
        (
            json!({"update_credits": [{"credit_id": credit["id"], "access_schedule": {"update_schedule_items": [{"id": credit_segment, "amount": 400}]}}]}),
            "drew 500",
        ),
        (
            json!({"update_credits": [{"credit_id": credit["id"], "colour": "red"}]}),
            "colour",
        ),
        (
            json!({"update_commits": [{"commit_id": credit["id"], "name": "x"}]}),
            "is a credit",
        ),
        (
            json!({"update_credits": [{"credit_id": credit["id"], "rollover_fraction": 0.5}]}),
            "rollover_fraction",
        ),
    ] {
        let (status, answer) = app.post("/v2/contracts/edit", edit(extra)).await;
        assert_eq!(status, 400, "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(names), "{message} should name {names}");
    }
    let unchanged = balances(&app, &customer).await;
    for kind in ["CREDIT", "PREPAID"] {
        for field in ["name", "access_schedule", "invoice_schedule", "priority"] {
            assert_eq!(
                by_type(&unchanged, kind)[field],
                by_type(&listed, kind)[field],
                "{kind} {field}"
            );
        }
    }

    let (status, answer) = app
        .post(
            "/v2/contracts/edit",
            edit(json!({
                "update_credits": [{"credit_id": credit["id"], "name": "Promo (extended)",
                    "access_schedule": {"update_schedule_items": [{"id": credit_segment, "amount": 4000}]}}],
                "update_commits": [{"commit_id": commit["id"],
                    "invoice_schedule": {"update_schedule_items": [{"id": item, "amount": 4500}]}}]
            })),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let listed = balances(&app, &customer).await;
    let credit = by_type(&listed, "CREDIT");
    assert_eq!(credit["name"], "Promo (extended)");
    assert_eq!(credit["balance"], json!(3500));
    let (status, invoices) = app
        .get(&format!("/v1/customers/{customer}/invoices?type=SCHEDULED"))
        .await;
    assert_eq!(status, 200, "{invoices}");
    assert_eq!(invoices["data"][0]["total"], json!(4500), "{invoices}");
}

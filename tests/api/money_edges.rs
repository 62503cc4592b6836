//! Money safety at the edges, over HTTP: negative usage, bounds that make overflow impossible,
//! inputs that apply whole or not at all, and ids and aliases that cannot capture another
//! customer's usage. Each test reproduces a way the engine once charged wrongly.

use std::time::Duration;

use serde_json::{Value, json};

use super::contracts::{
    COMMIT_PRODUCT, RATE_CARD, app_with_catalog, create_customer, draft_usage_total, gate,
    month_start, now_ms, rfc3339,
};
use super::support::eventually;
use super::{TestApp, spawn_app};
use tollgate::domain::catalog::{CatalogChange, Price, ProductKind, Rate};
use tollgate::domain::money::CreditType;
use tollgate::domain::{Id, Money, Timestamp, fixtures};

/// A read that must answer promptly (a dead customer actor must fail the test, not hang it).
async fn timely<T>(future: impl std::future::Future<Output = T>) -> T {
    actix_rt::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("the server answered within 10 s")
}

async fn net_balance(app: &TestApp, customer: &str) -> Value {
    let (status, body) = timely(app.post(
        "/v1/contracts/customerBalances/getNetBalance",
        json!({"customer_id": customer}),
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["balance"].clone()
}

fn prepaid_commit(amount: Value) -> Value {
    let start = month_start();
    json!({
        "type": "PREPAID",
        "product_id": COMMIT_PRODUCT,
        "access_schedule": {"schedule_items": [{"amount": amount, "starting_at": start, "ending_before": "2099-01-01T00:00:00Z"}]},
        "invoice_schedule": {"schedule_items": [{"timestamp": start, "amount": amount}]}
    })
}

fn credit(amount: Value) -> Value {
    json!({
        "product_id": COMMIT_PRODUCT,
        "access_schedule": {"schedule_items": [{"amount": amount, "starting_at": month_start(), "ending_before": "2099-01-01T00:00:00Z"}]}
    })
}

/// A contract on the fixture rate card with one prepaid commit of `amount` cents.
async fn contract_with_commit(app: &TestApp, customer: &str, amount: i64) -> String {
    let (status, body) = app
        .post(
            "/v1/contracts/create",
            json!({
                "customer_id": customer, "rate_card_id": RATE_CARD, "starting_at": month_start(),
                "commits": [prepaid_commit(json!(amount))]
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["id"].as_str().unwrap().to_owned()
}

async fn ingest(app: &TestApp, events: Value) -> (u16, Value) {
    timely(app.post("/v1/ingest", events)).await
}

fn tokens(transaction_id: &str, customer: &str, amount: &str) -> Value {
    json!({
        "transaction_id": transaction_id, "customer_id": customer, "event_type": "llm",
        "timestamp": rfc3339(now_ms()),
        "properties": {"tokens": Value::Number(amount.parse().unwrap())}
    })
}

fn call(transaction_id: &str, customer: &str) -> Value {
    json!({
        "transaction_id": transaction_id, "customer_id": customer, "event_type": "api_call",
        "timestamp": rfc3339(now_ms())
    })
}

/// The fixture catalog plus `bytes` (SUM of `bytes` on `storage` events) at a flat 1 cent.
async fn app_with_flat_sum() -> TestApp {
    let app = app_with_catalog().await;
    for change in flat_sum_catalog() {
        app.engine.change_catalog(change).await.unwrap();
    }
    app
}

fn flat_sum_catalog() -> Vec<CatalogChange> {
    let metric = Id::from_u128(0x1101);
    let product = Id::from_u128(0x2101);
    let mut changes = fixtures::catalog_changes();
    let CatalogChange::CreateBillableMetric(mut sum) = changes.swap_remove(1) else {
        panic!("the fixture's second change is the SUM metric");
    };
    sum.id = metric;
    sum.name = "Bytes".into();
    sum.aggregation_key = Some("bytes".into());
    sum.event_type_filter.in_values = Some(vec!["storage".into()]);
    let CatalogChange::CreateProduct(mut usage) = changes.swap_remove(2) else {
        panic!("the fixture's fourth change is the token product");
    };
    usage.id = product;
    usage.name = "Bytes".into();
    usage.kind = ProductKind::Usage {
        billable_metric_id: metric,
    };
    let rate = Rate {
        product_id: product,
        price: Price::Flat(Money::from_i64(1)),
        entitled: true,
        starting_at: Timestamp(0),
        ending_before: None,
        credit_type_id: CreditType::usd_cents().id,
        added_in_version: 0,
    };
    vec![
        CatalogChange::CreateBillableMetric(sum),
        CatalogChange::CreateProduct(usage),
        CatalogChange::AddRates {
            rate_card_id: fixtures::RATE_CARD,
            rates: vec![rate],
        },
    ]
}

fn bytes(transaction_id: &str, customer: &str, amount: &str) -> Value {
    json!({
        "transaction_id": transaction_id, "customer_id": customer, "event_type": "storage",
        "timestamp": rfc3339(now_ms()),
        "properties": {"bytes": Value::Number(amount.parse().unwrap())}
    })
}

#[actix_rt::test]
async fn net_zero_sum_usage_draws_nothing_from_a_prepaid_commit() {
    let app = app_with_flat_sum().await;
    let customer = create_customer(&app, "tok").await;
    contract_with_commit(&app, &customer, 100_000).await;
    for (txn, amount) in [("neg", "-3000"), ("pos", "3000")] {
        let (status, body) = ingest(&app, json!([bytes(txn, "tok", amount)])).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(net_balance(&app, &customer).await, json!(100_000));
    assert_eq!(timely(draft_usage_total(&app, &customer)).await, json!(0));
    // The net is back at zero: the next 500 bytes are charged from zero.
    let (status, _) = ingest(&app, json!([bytes("more", "tok", "500")])).await;
    assert_eq!(status, 200);
    assert_eq!(net_balance(&app, &customer).await, json!(99_500));
}

#[actix_rt::test]
async fn a_negative_net_charges_nothing_and_is_filled_back_to_zero_at_no_charge() {
    let app = app_with_flat_sum().await;
    let customer = create_customer(&app, "below").await;
    contract_with_commit(&app, &customer, 10_000).await;
    for (txn, amount) in [("a", "-2000"), ("b", "1000"), ("c", "1500")] {
        let (status, body) = ingest(&app, json!([bytes(txn, "below", amount)])).await;
        assert_eq!(status, 200, "{body}");
    }
    // Net 500 bytes: 500 cents, although 2500 bytes of positive usage arrived.
    assert_eq!(net_balance(&app, &customer).await, json!(9_500));
    assert_eq!(timely(draft_usage_total(&app, &customer)).await, json!(0));
}

#[actix_rt::test]
async fn a_negative_correction_first_gives_back_what_the_line_drew() {
    let app = app_with_catalog().await;
    let customer = create_customer(&app, "corr").await;
    // 1000 cents of commit; 800 tokens cost 1600: 1000 drawn, 600 outstanding.
    contract_with_commit(&app, &customer, 1_000).await;
    let (status, _) = ingest(&app, json!([tokens("t1", "corr", "800")])).await;
    assert_eq!(status, 200);
    assert_eq!(net_balance(&app, &customer).await, json!(0));
    assert_eq!(timely(draft_usage_total(&app, &customer)).await, json!(600));
    // -300 tokens lower the line's charge by 600: the commit gets 600 back, outstanding stays.
    let (status, _) = ingest(&app, json!([tokens("t2", "corr", "-300")])).await;
    assert_eq!(status, 200);
    assert_eq!(net_balance(&app, &customer).await, json!(600));
    assert_eq!(timely(draft_usage_total(&app, &customer)).await, json!(600));
    // -900 more: the net is -400, charged as zero; everything drawn goes back.
    let (status, _) = ingest(&app, json!([tokens("t3", "corr", "-900")])).await;
    assert_eq!(status, 200);
    assert_eq!(net_balance(&app, &customer).await, json!(1_000));
    assert_eq!(timely(draft_usage_total(&app, &customer)).await, json!(0));
    // +400 fills the negative net back to zero at no charge.
    let (status, _) = ingest(&app, json!([tokens("t4", "corr", "400")])).await;
    assert_eq!(status, 200);
    assert_eq!(net_balance(&app, &customer).await, json!(1_000));
}

#[actix_rt::test]
async fn amounts_beyond_their_bounds_are_refused_naming_the_field_and_change_nothing() {
    let app = app_with_catalog().await;
    let customer = create_customer(&app, "huge").await;
    let huge = Value::Number("50000000000000000000000000000".parse().unwrap());
    let (status, body) = app
        .post(
            "/v1/contracts/create",
            json!({
                "customer_id": customer, "rate_card_id": RATE_CARD, "starting_at": month_start(),
                "credits": [credit(huge.clone()), credit(huge)]
            }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("amount"),
        "{body}"
    );
    let (_, list) = app
        .post("/v1/contracts/list", json!({"customer_id": customer}))
        .await;
    assert_eq!(list["data"], json!([]), "a refused contract must not exist");

    contract_with_commit(&app, &customer, 100_000).await;
    let (status, body) = ingest(
        &app,
        json!([
            tokens("ok", "huge", "10"),
            tokens("big", "huge", "79000000000000000000000000000")
        ]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("[1].properties.tokens"),
        "{body}"
    );
    // The refused batch changed nothing, and the customer's later events still apply.
    let (status, _) = ingest(&app, json!([tokens("after", "huge", "10")])).await;
    assert_eq!(status, 200);
    assert_eq!(net_balance(&app, &customer).await, json!(99_980));
}

#[actix_rt::test]
async fn a_threshold_crossing_starts_its_workflow_whatever_another_contract_holds() {
    let app = app_with_catalog().await;
    let customer = create_customer(&app, "two").await;
    let huge = Value::Number("50000000000000000000000000000".parse().unwrap());
    // A contract whose balance would overflow: refused today, and harmless if it existed.
    app.post(
        "/v1/contracts/create",
        json!({
            "customer_id": customer, "rate_card_id": RATE_CARD, "starting_at": month_start(),
            "credits": [credit(huge.clone()), credit(huge)],
            "prepaid_balance_threshold_configuration": {
                "commit": {"product_id": COMMIT_PRODUCT}, "is_enabled": true,
                "payment_gate_config": gate("NONE"), "threshold_amount": 500, "recharge_to_amount": 5000}
        }),
    )
    .await;
    let (status, body) = app
        .post(
            "/v1/contracts/create",
            json!({
                "customer_id": customer, "rate_card_id": RATE_CARD, "starting_at": month_start(),
                "spend_threshold_configuration": {
                    "commit": {"product_id": COMMIT_PRODUCT}, "is_enabled": true,
                    "payment_gate_config": gate("EXTERNAL"), "threshold_amount": 500}
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let events: Vec<Value> = (0..5).map(|i| call(&format!("c{i}"), "two")).collect();
    let (status, _) = ingest(&app, json!(events)).await;
    assert_eq!(status, 200);
    eventually("external_initiate", || {
        app.receiver.of_type("payment_gate.external_initiate").len() == 1
    })
    .await;
    let initiate = app.receiver.of_type("payment_gate.external_initiate")[0].clone();
    let workflow_id = initiate.body["properties"]["workflow_id"].as_str().unwrap();
    let (status, body) = app
        .post(
            "/v1/contracts/commits/threshold-billing/release",
            json!({"workflow_id": workflow_id, "outcome": "paid"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[actix_rt::test]
async fn an_alias_equal_to_another_customers_id_is_refused_and_ids_win() {
    let app = app_with_catalog().await;
    let owner = create_customer(&app, "owner").await;
    contract_with_commit(&app, &owner, 10_000).await;
    let (status, body) = app
        .post(
            "/v1/customers",
            json!({"name": "Thief", "ingest_aliases": [owner.clone()]}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let thief = create_customer(&app, "thief").await;
    contract_with_commit(&app, &thief, 10_000).await;
    let (status, body) = app
        .post(
            &format!("/v1/customers/{thief}/setIngestAliases"),
            json!({"ingest_aliases": ["thief", owner.clone()]}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = ingest(&app, json!([call("by-id", &owner)])).await;
    assert_eq!(status, 200);
    assert_eq!(net_balance(&app, &owner).await, json!(9_900));
    assert_eq!(net_balance(&app, &thief).await, json!(10_000));
}

#[actix_rt::test]
async fn keys_with_control_format_or_edge_whitespace_characters_are_refused() {
    let app = spawn_app().await;
    for bad in [
        "acme\u{0}x",
        "acme\u{200b}",
        " acme",
        "acme\n",
        "ac\u{202e}me",
    ] {
        let (status, body) = ingest(&app, json!([call("t-ok", bad)])).await;
        assert_eq!(status, 400, "customer_id {bad:?}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("customer_id"),
            "{body}"
        );
        let (status, body) = ingest(&app, json!([call(bad, "acme")])).await;
        assert_eq!(status, 400, "transaction_id {bad:?}: {body}");
        let (status, body) = app
            .post(
                "/v1/customers",
                json!({"name": "Acme", "ingest_aliases": [bad]}),
            )
            .await;
        assert_eq!(status, 400, "alias {bad:?}: {body}");
    }
}

#[actix_rt::test]
async fn usage_for_a_key_that_extends_an_alias_is_never_billed_to_the_alias() {
    let app = app_with_catalog().await;
    let acme = create_customer(&app, "acme").await;
    contract_with_commit(&app, &acme, 10_000).await;
    // A key no one has: kept as late usage for that key (or refused at the edge).
    let (status, _) = ingest(&app, json!([call("smuggled", "acme\u{0}x")])).await;
    assert!(status == 400 || status == 200, "{status}");
    // Setting acme's aliases again releases late usage waiting for "acme", and only for it.
    let (status, body) = app
        .post(
            &format!("/v1/customers/{acme}/setIngestAliases"),
            json!({"ingest_aliases": ["acme", "acme-2"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = ingest(&app, json!([call("own", "acme")])).await;
    assert_eq!(status, 200);
    // Give a wrongly released event time to apply before looking.
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(net_balance(&app, &acme).await, json!(9_900));
}

#[actix_rt::test]
async fn a_storage_failure_answers_503_with_retry_after_never_400_and_ready_fails() {
    use tollgate::storage::faults::{Faults, ScriptedFaults, StorageOp};
    let faults = ScriptedFaults::new();
    let app = super::spawn_app_with_faults(Some(faults.clone() as Faults)).await;
    let customer = create_customer(&app, "disk").await;
    faults.fail_from(StorageOp::Append, 0);
    let response = timely(
        app.client
            .post(format!("{}/v1/ingest", app.base))
            .bearer_auth(super::TOKEN)
            .json(&json!([call("lost-disk", "disk")]))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers().get("retry-after").unwrap(), "1");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("retry"),
        "{body}"
    );
    // Stopped: everything is refused as unavailable until a restart, and /ready says so.
    faults.heal();
    let (status, body) = app
        .post(
            &format!("/v1/customers/{customer}/setIngestAliases"),
            json!({"ingest_aliases": ["disk-2"]}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(app.ready_status().await, 503);
}

/// Found by the simulation (fail-stop invariant, seed 12): a failed read of a stored
/// Idempotency-Key answer was answered 503 while the engine went on accepting work.
#[actix_rt::test]
async fn a_failed_idempotency_key_read_stops_the_engine() {
    use tollgate::storage::faults::{Faults, ScriptedFaults, StorageOp};
    let faults = ScriptedFaults::new();
    let app = super::spawn_app_with_faults(Some(faults.clone() as Faults)).await;
    faults.fail_from(StorageOp::Read, 0);
    let response = timely(
        app.client
            .post(format!("{}/v1/customers", app.base))
            .bearer_auth(super::TOKEN)
            .header("idempotency-key", "read-fails")
            .json(&json!({"name": "read fails"}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    faults.heal();
    assert_eq!(
        app.ready_status().await,
        503,
        "still accepting after a failed read"
    );
}

/// A stored answer that no longer decodes (corrupt bytes, or written by another version) is
/// an error of that one key: 500, nothing applied, and the engine goes on (stopping would not
/// mend it; the restart would read the same bytes and stop again).
#[actix_rt::test]
async fn an_undecodable_idempotency_answer_is_a_500_that_leaves_the_engine_running() {
    let app = spawn_app().await;
    // The first sweep at start deletes entries that do not decode: wait until it is done.
    let store = app.engine.store();
    eventually("the first Idempotency-Key sweep", || {
        store.meta_get(b"idem-index/complete").unwrap().is_some()
    })
    .await;
    app.engine
        .store()
        .meta_put(b"idem/garbled", b"not a stored answer")
        .unwrap();
    let response = timely(
        app.client
            .post(format!("{}/v1/customers", app.base))
            .bearer_auth(super::TOKEN)
            .header("idempotency-key", "garbled")
            .json(&json!({"name": "garbled"}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 500);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].is_string(), "{body}");
    assert_eq!(app.ready_status().await, 200, "stopped for one bad value");
    let (status, customers) = app.get("/v1/customers").await;
    assert_eq!(status, 200, "{customers}");
    assert_eq!(
        customers["data"],
        json!([]),
        "the request ran after the error: {customers}"
    );
}

#[actix_rt::test]
async fn quarantined_inputs_are_listed_oldest_first_in_cursor_pages() {
    use tollgate::actors::quarantine::{QuarantineCause, Quarantined};
    use tollgate::domain::customer::Input;
    let app = spawn_app().await;
    let (status, body) = app.get("/v1/tollgate/quarantine").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"data": [], "next_page": null}));
    let entries: Vec<Quarantined> = (0..3)
        .map(|seq| Quarantined {
            partition: 1,
            seq: 10 - seq,
            index: 0,
            customer_id: fixtures::CUSTOMER,
            at: Timestamp(now_ms()),
            catalog_version: 7,
            input: Input::RecordUsage(fixtures::api_call(&format!("q{seq}"), Timestamp(now_ms()))),
            cause: QuarantineCause::Panic,
            reason: format!("boom {seq}"),
        })
        .collect();
    let mut entries = entries;
    entries[1].input = Input::create_contract(fixtures::contract(fixtures::CONTRACT));
    let puts: Vec<_> = entries.iter().map(|e| e.encoded().unwrap()).collect();
    app.engine.store().meta_write_derived(&puts).unwrap();
    let (status, first) = app.get("/v1/tollgate/quarantine?limit=2").await;
    assert_eq!(status, 200, "{first}");
    let seqs: Vec<&Value> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["seq"])
        .collect();
    assert_eq!(seqs, vec![&json!(8), &json!(9)]);
    assert_eq!(first["data"][0]["cause"], "PANIC");
    assert_eq!(first["data"][0]["reason"], "boom 2");
    let cursor = first["next_page"].as_str().unwrap();
    let (_, rest) = app
        .get(&format!(
            "/v1/tollgate/quarantine?limit=2&next_page={cursor}"
        ))
        .await;
    assert_eq!(rest["data"][0]["seq"], 10);
    assert_eq!(rest["next_page"], Value::Null);
    let (status, _) = app.get("/v1/tollgate/quarantine?next_page=zz").await;
    assert_eq!(status, 400);

    // Decisions: the id of a listed entry names it; malformed requests change nothing.
    let id = first["data"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(id, hex::encode(entries[2].key()));
    for (path, body, expected) in [
        ("reapply", json!({}), 400),
        ("reapply", json!({"id": "zz"}), 400),
        ("reapply", json!({"id": hex::encode(b"cs/xxxx")}), 400),
        ("discard", json!({"id": id}), 400),
        ("discard", json!({"id": id, "reason": "  "}), 400),
        (
            "discard",
            json!({"id": id, "reason": "x".repeat(1_001)}),
            400,
        ),
        (
            "reapply",
            json!({"id": hex::encode(Quarantined { seq: 99, ..entries[0].clone() }.key())}),
            404,
        ),
    ] {
        let (status, answer) = app
            .post(&format!("/v1/tollgate/quarantine/{path}"), body.clone())
            .await;
        assert_eq!(status, expected, "{path} {body}: {answer}");
        assert!(answer["message"].is_string(), "{answer}");
    }
    // These entries were written by hand: their customer's state does not list them, as after
    // an upgrade whose replay applied them. The engine decides nothing, says so, and removes
    // the stale entry from the list; a second decision then finds nothing (404).
    let (status, answer) = app
        .post(
            "/v1/tollgate/quarantine/discard",
            json!({"id": id, "reason": "test"}),
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("not quarantined"),
        "{answer}"
    );
    let (_, listed) = app.get("/v1/tollgate/quarantine").await;
    let left: Vec<&Value> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["seq"])
        .collect();
    assert_eq!(left, vec![&json!(9), &json!(10)]);
    let (status, _) = app
        .post("/v1/tollgate/quarantine/reapply", json!({"id": id}))
        .await;
    assert_eq!(status, 404);
    let (status, decisions) = app.get("/v1/tollgate/quarantine/decisions").await;
    assert_eq!(status, 200, "{decisions}");
    assert_eq!(
        decisions,
        json!({"data": [], "next_page": null}),
        "nothing was decided"
    );
}

/// Forgets every stored Idempotency-Key answer, as when storing it failed after the request ran.
fn forget_stored_answers(app: &TestApp) {
    let store = app.engine.store();
    for (key, _) in store.meta_scan_prefix(b"idem/").unwrap() {
        store.meta_delete(&key).unwrap();
    }
}

async fn post_with_key(app: &TestApp, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let response = app
        .client
        .post(format!("{}{}", app.base, path))
        .bearer_auth(super::TOKEN)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[actix_rt::test]
async fn a_retry_whose_first_answer_was_lost_never_creates_a_second_object() {
    let app = app_with_catalog().await;
    let body = json!({"name": "Once", "ingest_aliases": ["once"]});
    let (status, first) = post_with_key(&app, "/v1/customers", "k-customer", &body).await;
    assert_eq!(status, 200, "{first}");
    forget_stored_answers(&app);
    let (status, again) = post_with_key(&app, "/v1/customers", "k-customer", &body).await;
    assert_eq!(
        status, 409,
        "the same customer, refused as a duplicate: {again}"
    );
    let (_, list) = app.get("/v1/customers").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    // Catalog objects too.
    for (path, body) in [
        (
            "/v1/billable-metrics/create",
            json!({"name": "once", "aggregation_type": "COUNT",
                   "event_type_filter": {"in_values": ["once"]}}),
        ),
        (
            "/v1/contract-pricing/products/create",
            json!({"name": "once", "type": "FIXED"}),
        ),
        (
            "/v1/contract-pricing/rate-cards/create",
            json!({"name": "once"}),
        ),
    ] {
        let (status, created) = post_with_key(&app, path, &format!("k-{path}"), &body).await;
        assert_eq!(status, 200, "{path}: {created}");
        forget_stored_answers(&app);
        let (status, again) = post_with_key(&app, path, &format!("k-{path}"), &body).await;
        assert_eq!(status, 409, "{path}: the same object, refused: {again}");
    }

    let customer = first["data"]["id"].as_str().unwrap().to_owned();
    let contract = contract_with_commit(&app, &customer, 1_000).await;
    let edit = json!({
        "customer_id": customer, "contract_id": contract,
        "add_commits": [prepaid_commit(json!(500))]
    });
    let (status, body) = post_with_key(&app, "/v2/contracts/edit", "k-edit", &edit).await;
    assert_eq!(status, 200, "{body}");
    forget_stored_answers(&app);
    let (status, body) = post_with_key(&app, "/v2/contracts/edit", "k-edit", &edit).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        net_balance(&app, &customer).await,
        json!(1_500),
        "one added commit, not two"
    );
}

/// A disk whose next log append, once armed, takes 1.5 s (a stalled fsync).
#[derive(Default)]
struct StalledAppend {
    armed: std::sync::atomic::AtomicBool,
}

impl tollgate::storage::faults::FaultInjector for StalledAppend {
    fn before(
        &self,
        op: tollgate::storage::faults::StorageOp,
    ) -> Result<(), tollgate::storage::StorageError> {
        use std::sync::atomic::Ordering::SeqCst;
        if op == tollgate::storage::faults::StorageOp::Append && self.armed.swap(false, SeqCst) {
            std::thread::sleep(Duration::from_millis(1_500));
        }
        Ok(())
    }
}

/// POSTs a body that is not JSON to `/v1/ingest`.
async fn post_malformed_batch(app: &TestApp) -> reqwest::Response {
    let request = app
        .client
        .post(format!("{}/v1/ingest", app.base))
        .bearer_auth(super::TOKEN)
        .header("content-type", "application/json")
        .body("this is not json");
    timely(request.send()).await.unwrap()
}

/// The apply lag is bounded in time (PERFORMANCE.md P9): while a partition's oldest input has
/// waited longer than `engine.apply_lag_max_ms`, ingest answers 429 before it reads the body
/// (a malformed one gets 429, not 400), nothing of a refused batch is applied, and ingest
/// takes batches again once the partition has caught up.
#[actix_rt::test]
async fn ingest_answers_429_before_reading_the_body_while_a_partition_lags_too_long() {
    let stall = std::sync::Arc::new(StalledAppend::default());
    let app = super::spawn_app_configured(Some(stall.clone()), |settings| {
        settings.apply_lag_max_ms = 200;
    })
    .await;
    for change in fixtures::catalog_changes()
        .into_iter()
        .chain(flat_sum_catalog())
    {
        app.engine.change_catalog(change).await.unwrap();
    }
    let customer = create_customer(&app, "lag").await;
    contract_with_commit(&app, &customer, 100_000).await;
    assert_eq!(app.engine.apply_lag_ms(), 0);

    stall.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let stalled = app
        .client
        .post(format!("{}/v1/ingest", app.base))
        .bearer_auth(super::TOKEN)
        .json(&json!([bytes("first", "lag", "100")]))
        .send();
    let stalled = actix_rt::spawn(stalled);
    eventually("the stalled batch to wait past the bound", || {
        app.engine.apply_lag_ms() > 200
    })
    .await;
    let metrics = timely(app.client.get(format!("{}/metrics", app.base)).send())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lag: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("tollgate_apply_lag_oldest_seconds "))
        .expect("the apply lag gauge")
        .parse()
        .unwrap();
    assert!(lag > 0.2, "{lag}");
    // The disk a user plans for: what the log and the dedupe index hold so far.
    for cf in ["log", "dedupe"] {
        let held: u64 = metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix(&format!(
                    "tollgate_storage_bytes{{cf=\"{cf}\",kind=\"memtable\"}} "
                ))
            })
            .expect("the storage gauge")
            .parse()
            .unwrap();
        assert!(held > 0, "{cf} holds what was written: {metrics}");
    }
    let shed = post_malformed_batch(&app).await;
    assert_eq!(shed.status().as_u16(), 429, "decided before parsing");
    assert_eq!(shed.headers()["retry-after"], "1");
    // In milliseconds too, as Metronome's SDK reads first: the lag bound plus jitter.
    let wait: i64 = shed.headers()["retry-after-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((200..400).contains(&wait), "{wait}");
    let body: Value = shed.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("retry"),
        "{body}"
    );
    let (status, body) = ingest(&app, json!([bytes("second", "lag", "7")])).await;
    assert_eq!(status, 429, "{body}");

    let first = timely(stalled).await.unwrap().unwrap();
    assert_eq!(
        first.status().as_u16(),
        200,
        "the admitted batch is acknowledged"
    );
    eventually("the partition to catch up", || {
        app.engine.apply_lag_ms() == 0
    })
    .await;
    assert_eq!(
        net_balance(&app, &customer).await,
        json!(99_900),
        "only the first batch"
    );
    let (status, body) = ingest(&app, json!([bytes("second", "lag", "7")])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(net_balance(&app, &customer).await, json!(99_893));
    let parsed = post_malformed_batch(&app).await;
    assert_eq!(parsed.status().as_u16(), 400, "parsed again once caught up");
}

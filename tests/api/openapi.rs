//! The OpenAPI document describes what the handlers really answer: real responses of a
//! customer with a contract holding both threshold configurations, a payment-gated commit, usage
//! and a workflow are checked field by field against the documented response schemas, so a view
//! drifting from its schema (a field added without being described, a wrong type) fails here.

use serde_json::{Map, Value, json};

use super::TestApp;
use super::contracts::{COMMIT_PRODUCT, customer_with_gated_commit, gate, ingest_calls};
use super::support::eventually;

/// Resolves `$ref`s.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/schemas/");
            let target = &doc["components"]["schemas"][name];
            assert!(!target.is_null(), "{reference} is not defined");
            resolve(doc, target)
        }
        None => schema,
    }
}

/// The properties an object schema documents, through `allOf` (serde's flatten).
fn properties(doc: &Value, schema: &Value, out: &mut Map<String, Value>) {
    let schema = resolve(doc, schema);
    if let Some(props) = schema["properties"].as_object() {
        out.extend(props.clone());
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        properties(doc, part, out);
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

/// Errors of `value` against `schema`, with their JSON paths.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            let errors: Vec<Vec<String>> = options
                .iter()
                .map(|option| check(doc, option, value, at))
                .collect();
            if errors.iter().any(Vec::is_empty) {
                return Vec::new();
            }
            return errors.into_iter().flatten().collect();
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| type_matches(t, value)) {
        return vec![format!("{at}: {value} is not of type {types:?}")];
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            return vec![format!("{at}: {value} is not one of {allowed:?}")];
        }
    }
    let mut errors = Vec::new();
    match value {
        Value::Object(map) => {
            let mut props = Map::new();
            properties(doc, schema, &mut props);
            let extra = &schema["additionalProperties"];
            let documented = !props.is_empty() || extra.is_object();
            for (key, item) in map {
                let path = format!("{at}.{key}");
                match props.get(key) {
                    Some(sub) => errors.extend(check(doc, sub, item, &path)),
                    None if extra.is_object() => errors.extend(check(doc, extra, item, &path)),
                    None if documented => errors.push(format!("{path} is not documented")),
                    None => {}
                }
            }
            let mut required = Vec::new();
            let mut collect_required = |s: &Value| {
                required.extend(
                    resolve(doc, s)["required"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(str::to_owned),
                );
            };
            collect_required(schema);
            for part in schema["allOf"].as_array().into_iter().flatten() {
                collect_required(part);
            }
            for key in required {
                if !map.contains_key(&key) {
                    errors.push(format!("{at}.{key} is required by the schema but absent"));
                }
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for (i, item) in items.iter().enumerate() {
                errors.extend(check(doc, &schema["items"], item, &format!("{at}[{i}]")));
            }
        }
        _ => {}
    }
    errors
}

/// Checks a 200 answer of `method path` against its documented schema.
fn conforms(doc: &Value, method: &str, path: &str, answer: &Value) {
    let operation = &doc["paths"][path][method];
    assert!(operation.is_object(), "{method} {path} is not documented");
    let schema = &operation["responses"]["200"]["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} documents no JSON answer"
    );
    let errors = check(doc, schema, answer, "$");
    assert!(
        errors.is_empty(),
        "{method} {path} answered what its schema does not say:\n{}\n{answer:#}",
        errors.join("\n")
    );
}

async fn ok_get(app: &TestApp, path: &str) -> Value {
    let (status, body) = app.get(path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

async fn ok_post(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, answer) = app.post(path, body).await;
    assert_eq!(status, 200, "POST {path}: {answer}");
    answer
}

#[actix_rt::test]
async fn real_responses_match_their_documented_schemas() {
    let app = super::contracts::app_with_catalog().await;
    let doc = ok_get(&app, "/openapi.json").await;
    let (customer, contract) = customer_with_gated_commit(&app, "schema", "EXTERNAL").await;
    let thresholds = json!({
        "customer_id": customer,
        "contract_id": contract,
        "add_spend_threshold_configuration": {
            "commit": {"product_id": COMMIT_PRODUCT, "name": "Spend"},
            "is_enabled": true, "payment_gate_config": gate("EXTERNAL"),
            "threshold_amount": 100000, "discount_configuration": {"payment_fraction": 0.9}},
        "add_prepaid_balance_threshold_configuration": {
            "commit": {"product_id": COMMIT_PRODUCT, "applicable_product_tags": ["api"]},
            "is_enabled": false, "payment_gate_config": gate("NONE"),
            "threshold_amount": 1000, "recharge_to_amount": 5000},
    });
    let edit = ok_post(&app, "/v2/contracts/edit", thresholds).await;
    conforms(&doc, "post", "/v2/contracts/edit", &edit);
    ingest_calls(&app, "schema", "schema", 5).await;
    eventually("the workflow's webhook", || {
        !app.receiver
            .of_type("payment_gate.external_initiate")
            .is_empty()
    })
    .await;
    let workflow =
        app.receiver.of_type("payment_gate.external_initiate")[0].body["properties"]["workflow_id"]
            .as_str()
            .unwrap()
            .to_owned();

    let answer = ok_get(&app, &format!("/v1/customers/{customer}")).await;
    conforms(&doc, "get", "/v1/customers/{customer_id}", &answer);
    let answer = ok_get(&app, "/v1/customers").await;
    conforms(&doc, "get", "/v1/customers", &answer);
    let read = json!({"customer_id": customer, "contract_id": contract,
        "include_balance": true, "include_ledgers": true});
    for (path, method_path) in [
        ("/v2/contracts/get", "/v2/contracts/get"),
        ("/v1/contracts/get", "/v1/contracts/get"),
    ] {
        let answer = ok_post(&app, path, read.clone()).await;
        assert!(
            answer.to_string().contains("spend_threshold_configuration"),
            "{answer}"
        );
        conforms(&doc, "post", method_path, &answer);
    }
    // The check reaches deep: an extra field on a commit's access schedule item is caught.
    let mut answer = ok_post(&app, "/v2/contracts/get", read.clone()).await;
    answer["data"]["commits"][0]["access_schedule"]["schedule_items"][0]["surprise"] = json!(1);
    let schema = &doc["paths"]["/v2/contracts/get"]["post"]["responses"]["200"]["content"]["application/json"]
        ["schema"];
    assert_eq!(
        check(&doc, schema, &answer, "$"),
        vec!["$.data.commits[0].access_schedule.schedule_items[0].surprise is not documented"]
    );
    let answer = ok_post(&app, "/v2/contracts/list", json!({"customer_id": customer})).await;
    conforms(&doc, "post", "/v2/contracts/list", &answer);
    let answer = ok_get(&app, &format!("/v1/customers/{customer}/invoices")).await;
    assert!(answer["data"].as_array().unwrap().len() >= 2, "{answer}");
    conforms(&doc, "get", "/v1/customers/{customer_id}/invoices", &answer);
    let answer = ok_post(
        &app,
        "/v1/contracts/customerBalances/list",
        json!({"customer_id": customer, "include_contract_balances": true,
            "include_balance": true, "include_ledgers": true}),
    )
    .await;
    conforms(&doc, "post", "/v1/contracts/customerBalances/list", &answer);
    let answer = ok_post(
        &app,
        "/v1/contracts/customerBalances/getNetBalance",
        json!({"customer_id": customer}),
    )
    .await;
    conforms(
        &doc,
        "post",
        "/v1/contracts/customerBalances/getNetBalance",
        &answer,
    );
    let answer = ok_get(&app, &format!("/v1/tollgate/workflows/{workflow}")).await;
    conforms(&doc, "get", "/v1/tollgate/workflows/{workflow_id}", &answer);
    let answer = ok_get(&app, "/v1/tollgate/summary").await;
    conforms(&doc, "get", "/v1/tollgate/summary", &answer);
    let answer = ok_get(&app, "/v1/tollgate/audit").await;
    conforms(&doc, "get", "/v1/tollgate/audit", &answer);
    let answer = ok_get(&app, "/v1/tollgate/customers/search?q=schema").await;
    conforms(&doc, "get", "/v1/tollgate/customers/search", &answer);
    eventually("a delivered webhook", || app.receiver.count() > 0).await;
    let answer = ok_get(&app, "/v1/tollgate/webhooks/delivered").await;
    conforms(&doc, "get", "/v1/tollgate/webhooks/delivered", &answer);
    let answer = ok_post(
        &app,
        "/v1/contracts/commits/threshold-billing/release",
        json!({"workflow_id": workflow, "outcome": "paid"}),
    )
    .await;
    conforms(
        &doc,
        "post",
        "/v1/contracts/commits/threshold-billing/release",
        &answer,
    );
    // Released: the commit now has ledger entries.
    let answer = ok_post(&app, "/v2/contracts/get", read).await;
    let ledgers = answer["data"]["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["ledger"].as_array().map_or(0, Vec::len))
        .sum::<usize>();
    assert!(ledgers > 0, "{answer}");
    conforms(&doc, "post", "/v2/contracts/get", &answer);
}

#[test]
fn the_checker_catches_an_undocumented_field_and_a_wrong_type() {
    let doc = json!({"components": {"schemas": {"A": {"type": "object", "required": ["n"],
        "properties": {"n": {"type": "integer"}, "s": {"type": ["string", "null"]}}}}}});
    let schema = json!({"$ref": "#/components/schemas/A"});
    assert!(check(&doc, &schema, &json!({"n": 1, "s": null}), "$").is_empty());
    assert_eq!(
        check(&doc, &schema, &json!({"n": 1, "x": 2}), "$"),
        vec!["$.x is not documented"]
    );
    assert_eq!(check(&doc, &schema, &json!({"n": "1"}), "$").len(), 1);
    assert_eq!(check(&doc, &schema, &json!({}), "$").len(), 1);
}

//! Catalog endpoints over HTTP: billable metrics, products, rate cards and rates, with
//! Metronome's request and response shapes.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::{TOKEN, TestApp, spawn_app};

const USD_CENTS: &str = "2714e483-4ff1-48e4-9e25-ac732e8f24f2";
const UNKNOWN_ID: &str = "00000000-0000-4000-8000-000000000000";

/// POSTs and expects 200, returning `data`.
async fn ok(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, response) = app.post(path, body).await;
    assert_eq!(status, 200, "{path}: {response}");
    response["data"].clone()
}

/// POSTs and expects a 4xx whose message mentions every one of `words`.
async fn refused(app: &TestApp, path: &str, body: Value, status: u16, words: &[&str]) {
    let (got, response) = app.post(path, body).await;
    assert_eq!(got, status, "{path}: {response}");
    let message = response["message"].as_str().unwrap_or_default();
    for word in words {
        assert!(
            message.contains(word),
            "{message:?} should mention {word:?}"
        );
    }
}

async fn create_metric(app: &TestApp, name: &str) -> String {
    let data = ok(
        app,
        "/v1/billable-metrics/create",
        json!({"name": name, "aggregation_type": "COUNT",
               "event_type_filter": {"in_values": ["api_call"]}}),
    )
    .await;
    data["id"].as_str().unwrap().to_owned()
}

async fn create_product(app: &TestApp, body: Value) -> String {
    let data = ok(app, "/v1/contract-pricing/products/create", body).await;
    data["id"].as_str().unwrap().to_owned()
}

async fn create_usage_product(app: &TestApp, name: &str, tags: &[&str]) -> String {
    let metric = create_metric(app, &format!("{name} metric")).await;
    create_product(
        app,
        json!({"name": name, "type": "USAGE", "billable_metric_id": metric, "tags": tags}),
    )
    .await
}

async fn create_rate_card(app: &TestApp, name: &str) -> String {
    let data = ok(
        app,
        "/v1/contract-pricing/rate-cards/create",
        json!({"name": name}),
    )
    .await;
    data["id"].as_str().unwrap().to_owned()
}

fn flat_rate(product: &str, price: Value, starting_at: &str) -> Value {
    json!({"product_id": product, "entitled": true, "rate_type": "FLAT",
           "price": price, "starting_at": starting_at})
}

/// Every item of a cursor-paged endpoint, following `next_page` until it is null; `path`
/// already holds its query string (`?limit=...`).
async fn collect_pages(app: &TestApp, method: &str, path: &str, body: Value) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let url = match &cursor {
            Some(c) => format!("{path}&next_page={c}"),
            None => path.to_owned(),
        };
        let (status, page) = if method == "GET" {
            app.get(&url).await
        } else {
            app.post(&url, body.clone()).await
        };
        assert_eq!(status, 200, "{url}: {page}");
        let data = page["data"].as_array().unwrap();
        items.extend(data.iter().cloned());
        match page["next_page"].as_str() {
            Some(next) => {
                assert!(!data.is_empty(), "a page with a cursor must not be empty");
                cursor = Some(next.to_owned());
            }
            None => {
                assert!(page["next_page"].is_null(), "{page}");
                return items;
            }
        }
    }
    panic!("paging did not end");
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The rates of a card in effect at `at`.
async fn rates_at(app: &TestApp, card: &str, at: &str) -> Vec<Value> {
    collect_pages(
        app,
        "POST",
        "/v1/contract-pricing/rate-cards/getRates?limit=100",
        json!({"rate_card_id": card, "at": at}),
    )
    .await
}

#[actix_rt::test]
async fn billable_metrics_are_created_read_listed_and_archived() {
    let app = spawn_app().await;
    let count = ok(
        &app,
        "/v1/billable-metrics/create",
        json!({
            "name": "API calls",
            "aggregation_type": "count",
            "event_type_filter": {"in_values": ["api_call"], "not_in_values": ["ping"]},
            "property_filters": [{"name": "region", "exists": true, "in_values": ["eu", "us"]}],
            "group_keys": [["region"]],
            "custom_fields": {"team": "core"},
            "some_future_field": 1
        }),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = app.get(&format!("/v1/billable-metrics/{count}")).await;
    assert_eq!(status, 200, "{body}");
    let metric = &body["data"];
    assert_eq!(metric["id"], json!(count));
    assert_eq!(metric["name"], "API calls");
    assert_eq!(metric["aggregation_type"], "COUNT");
    assert_eq!(
        metric["event_type_filter"],
        json!({"in_values": ["api_call"], "not_in_values": ["ping"]})
    );
    assert_eq!(
        metric["property_filters"],
        json!([{"name": "region", "exists": true, "in_values": ["eu", "us"]}])
    );
    assert_eq!(metric["group_keys"], json!([["region"]]));
    assert!(metric.get("archived_at").is_none(), "{metric}");

    let sum = ok(
        &app,
        "/v1/billable-metrics/create",
        json!({"name": "Tokens", "aggregation_type": "SUM", "aggregation_key": "tokens"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, body) = app.get(&format!("/v1/billable-metrics/{sum}")).await;
    assert_eq!(body["data"]["aggregation_key"], "tokens");
    assert_eq!(body["data"]["aggregation_type"], "SUM");

    let archived = ok(&app, "/v1/billable-metrics/archive", json!({"id": sum})).await;
    assert_eq!(archived["id"], json!(sum));
    let (_, body) = app.get(&format!("/v1/billable-metrics/{sum}")).await;
    assert!(body["data"]["archived_at"].is_string(), "{body}");

    let (status, page) = app.get("/v1/billable-metrics").await;
    assert_eq!(status, 200);
    assert_eq!(ids(page["data"].as_array().unwrap()), vec![count.clone()]);
    assert!(page["next_page"].is_null());
    let (_, page) = app.get("/v1/billable-metrics?include_archived=true").await;
    let mut all = ids(page["data"].as_array().unwrap());
    all.sort();
    let mut expected = vec![count, sum];
    expected.sort();
    assert_eq!(all, expected);
}

#[actix_rt::test]
async fn billable_metric_mistakes_get_400s_naming_the_field() {
    let app = spawn_app().await;
    let create = "/v1/billable-metrics/create";
    refused(
        &app,
        create,
        json!({"aggregation_type": "COUNT"}),
        400,
        &["name"],
    )
    .await;
    refused(
        &app,
        create,
        json!({"name": " ", "aggregation_type": "COUNT"}),
        400,
        &["name"],
    )
    .await;
    refused(
        &app,
        create,
        json!({"name": "m"}),
        400,
        &["aggregation_type"],
    )
    .await;
    refused(
        &app,
        create,
        json!({"name": "m", "aggregation_type": "AVERAGE"}),
        400,
        &["aggregation_type", "AVERAGE"],
    )
    .await;
    refused(
        &app,
        create,
        json!({"name": "m", "aggregation_type": "LATEST", "aggregation_key": "x"}),
        400,
        &["unsupported", "aggregation_type"],
    )
    .await;
    refused(
        &app,
        create,
        json!({"name": "m", "aggregation_type": "SUM"}),
        400,
        &["aggregation_key"],
    )
    .await;
    refused(
        &app,
        create,
        json!({"name": "m", "sql": "select 1"}),
        400,
        &["unsupported", "sql"],
    )
    .await;
    refused(
        &app,
        create,
        json!({"name": "m", "aggregation_type": "COUNT", "property_filters": [{"name": ""}]}),
        400,
        &["property_filters"],
    )
    .await;
    refused(
        &app,
        create,
        json!({"name": 5, "aggregation_type": "COUNT"}),
        400,
        &["name"],
    )
    .await;

    let (status, body) = app.get(&format!("/v1/billable-metrics/{UNKNOWN_ID}")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["message"].is_string());
    let (status, _) = app.get("/v1/billable-metrics/not-a-uuid").await;
    assert_eq!(status, 400);
    refused(
        &app,
        "/v1/billable-metrics/archive",
        json!({"id": UNKNOWN_ID}),
        404,
        &[],
    )
    .await;
    refused(
        &app,
        "/v1/billable-metrics/archive",
        json!({}),
        400,
        &["id"],
    )
    .await;
    let (status, body) = app.get("/v1/billable-metrics?limit=abc").await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("limit"));
    // Nothing was created by the refused requests.
    let (_, page) = app.get("/v1/billable-metrics?include_archived=true").await;
    assert_eq!(page["data"], json!([]));
}

#[actix_rt::test]
async fn billable_metric_pages_cover_every_metric_once_and_cap_the_limit() {
    let app = spawn_app().await;
    let creates = (0..101).map(|i| {
        let app = &app;
        async move { create_metric(app, &format!("metric {i}")).await }
    });
    let mut created = futures_util::future::join_all(creates).await;
    created.sort();

    let seen = ids(&collect_pages(&app, "GET", "/v1/billable-metrics?limit=40", Value::Null).await);
    assert_eq!(seen.len(), 101);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        101,
        "no duplicates"
    );
    assert_eq!(seen, created, "sorted by id");

    let (status, page) = app.get("/v1/billable-metrics?limit=1000").await;
    assert_eq!(status, 200);
    assert_eq!(
        page["data"].as_array().unwrap().len(),
        100,
        "limit capped at 100"
    );
    assert!(page["next_page"].is_string());
    let capped =
        ids(&collect_pages(&app, "GET", "/v1/billable-metrics?limit=1000", Value::Null).await);
    assert_eq!(capped, created);
    let (status, _) = app.get("/v1/billable-metrics?limit=0").await;
    assert_eq!(status, 400);
}

#[actix_rt::test]
async fn products_are_created_read_listed_and_archived() {
    let app = spawn_app().await;
    let metric = create_metric(&app, "calls").await;
    let usage = create_product(
        &app,
        json!({"name": "API", "type": "usage", "billable_metric_id": metric,
               "tags": ["api", "core"], "custom_fields": {"x": "y"}, "is_refundable": true}),
    )
    .await;
    let fixed = create_product(&app, json!({"name": "Prepaid commit", "type": "FIXED"})).await;

    let product = ok(
        &app,
        "/v1/contract-pricing/products/get",
        json!({"id": usage}),
    )
    .await;
    assert_eq!(product["id"], json!(usage));
    assert_eq!(product["type"], "USAGE");
    assert_eq!(product["updates"], json!([]));
    let current = &product["current"];
    assert_eq!(current["name"], "API");
    assert_eq!(current["billable_metric_id"], json!(metric));
    assert_eq!(current["tags"], json!(["api", "core"]));
    assert!(current["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(current["created_by"].is_string());
    assert_eq!(product["initial"], product["current"]);
    assert!(product["archived_at"].is_null());

    let product = ok(
        &app,
        "/v1/contract-pricing/products/get",
        json!({"id": fixed}),
    )
    .await;
    assert_eq!(product["type"], "FIXED");
    assert!(product["current"].get("billable_metric_id").is_none());

    let archived = ok(
        &app,
        "/v1/contract-pricing/products/archive",
        json!({"product_id": fixed}),
    )
    .await;
    assert_eq!(archived["id"], json!(fixed));
    let product = ok(
        &app,
        "/v1/contract-pricing/products/get",
        json!({"id": fixed}),
    )
    .await;
    assert!(product["archived_at"].is_string());

    let list = "/v1/contract-pricing/products/list?limit=10";
    let listed = |filter: Value| collect_pages(&app, "POST", list, filter);
    assert_eq!(ids(&listed(json!({})).await), vec![usage.clone()]);
    assert_eq!(
        ids(&listed(json!({"archive_filter": "NOT_ARCHIVED"})).await),
        vec![usage.clone()]
    );
    assert_eq!(
        ids(&listed(json!({"archive_filter": "ARCHIVED"})).await),
        vec![fixed.clone()]
    );
    assert_eq!(
        ids(&listed(json!({"archive_filter": "ALL"})).await).len(),
        2
    );
    refused(
        &app,
        list,
        json!({"archive_filter": "SOME"}),
        400,
        &["archive_filter"],
    )
    .await;
}

#[actix_rt::test]
async fn product_pages_follow_the_cursor_with_the_body_resent() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(create_product(&app, json!({"name": format!("p{i}"), "type": "FIXED"})).await);
    }
    created.sort();
    let seen = collect_pages(
        &app,
        "POST",
        "/v1/contract-pricing/products/list?limit=2",
        json!({"archive_filter": "ALL"}),
    )
    .await;
    assert_eq!(ids(&seen), created);
}

#[actix_rt::test]
async fn product_mistakes_get_400s_naming_the_field_and_unknown_ids_404() {
    let app = spawn_app().await;
    let create = "/v1/contract-pricing/products/create";
    let metric = create_metric(&app, "calls").await;
    refused(&app, create, json!({"type": "FIXED"}), 400, &["name"]).await;
    refused(&app, create, json!({"name": "p"}), 400, &["type"]).await;
    refused(
        &app,
        create,
        json!({"name": "p", "type": "USAGE"}),
        400,
        &["billable_metric_id"],
    )
    .await;
    refused(
        &app,
        create,
        json!({"name": "p", "type": "USAGE", "billable_metric_id": UNKNOWN_ID}),
        400,
        &["billable_metric_id", "not found"],
    )
    .await;
    refused(
        &app,
        create,
        json!({"name": "p", "type": "USAGE", "billable_metric_id": "nope"}),
        400,
        &["billable_metric_id"],
    )
    .await;
    for unsupported in [
        "COMPOSITE",
        "SUBSCRIPTION",
        "PRO_SERVICE",
        "professional_service",
    ] {
        refused(
            &app,
            create,
            json!({"name": "p", "type": unsupported}),
            400,
            &["unsupported", "type"],
        )
        .await;
    }
    refused(
        &app,
        create,
        json!({"name": "p", "type": "GADGET"}),
        400,
        &["type"],
    )
    .await;
    refused(
        &app,
        create,
        json!({"name": "p", "type": "USAGE", "billable_metric_id": metric,
               "quantity_conversion": {"conversion_factor": 2, "operation": "MULTIPLY"}}),
        400,
        &["unsupported", "quantity_conversion"],
    )
    .await;
    refused(
        &app,
        create,
        json!({"name": "p", "type": "USAGE", "billable_metric_id": metric,
               "quantity_rounding": {"decimal_places": 0, "rounding_method": "ROUND_UP"}}),
        400,
        &["quantity_rounding"],
    )
    .await;
    // A null is "not given".
    create_product(
        &app,
        json!({"name": "p", "type": "USAGE", "billable_metric_id": metric,
               "quantity_conversion": null, "quantity_rounding": null}),
    )
    .await;
    ok(&app, "/v1/billable-metrics/archive", json!({"id": metric})).await;
    refused(
        &app,
        create,
        json!({"name": "p", "type": "USAGE", "billable_metric_id": metric}),
        400,
        &["billable_metric_id", "archived"],
    )
    .await;

    refused(
        &app,
        "/v1/contract-pricing/products/get",
        json!({"id": UNKNOWN_ID}),
        404,
        &[],
    )
    .await;
    refused(
        &app,
        "/v1/contract-pricing/products/get",
        json!({}),
        400,
        &["id"],
    )
    .await;
    refused(
        &app,
        "/v1/contract-pricing/products/archive",
        json!({"product_id": UNKNOWN_ID}),
        404,
        &[],
    )
    .await;
}

#[actix_rt::test]
async fn rate_cards_are_created_read_and_listed_even_with_an_empty_body() {
    let app = spawn_app().await;
    let card = ok(
        &app,
        "/v1/contract-pricing/rate-cards/create",
        json!({"name": "Standard", "description": "List prices",
               "fiat_credit_type_id": USD_CENTS, "aliases": [{"name": "standard"}],
               "credit_type_conversions": [], "custom_fields": {}}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let data = ok(
        &app,
        "/v1/contract-pricing/rate-cards/get",
        json!({"id": card}),
    )
    .await;
    assert_eq!(data["id"], json!(card));
    assert_eq!(data["name"], "Standard");
    assert_eq!(data["description"], "List prices");
    assert_eq!(
        data["fiat_credit_type"],
        json!({"id": USD_CENTS, "name": "USD (cents)"})
    );
    assert_eq!(data["credit_type_conversions"], json!([]));
    assert_eq!(data["aliases"], json!([{"name": "standard"}]));
    assert!(data["created_at"].is_string() && data["created_by"].is_string());

    let mut created = vec![card];
    for i in 0..4 {
        created.push(create_rate_card(&app, &format!("card {i}")).await);
    }
    created.sort();

    // What `rateCards.list()` sends: Content-Type JSON and Content-Length 0.
    let mut seen = Vec::new();
    let mut url = format!("{}/v1/contract-pricing/rate-cards/list?limit=2", app.base);
    loop {
        let response = app
            .client
            .post(&url)
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .header("content-length", "0")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let page: Value = response.json().await.unwrap();
        seen.extend(ids(page["data"].as_array().unwrap()));
        match page["next_page"].as_str() {
            Some(next) => {
                url = format!(
                    "{}/v1/contract-pricing/rate-cards/list?limit=2&next_page={next}",
                    app.base
                )
            }
            None => break,
        }
    }
    assert_eq!(seen, created);
}

#[actix_rt::test]
async fn rate_card_mistakes_get_400s_and_unknown_ids_404() {
    let app = spawn_app().await;
    let create = "/v1/contract-pricing/rate-cards/create";
    refused(&app, create, json!({}), 400, &["name"]).await;
    refused(
        &app,
        create,
        json!({"name": "c", "fiat_credit_type_id": UNKNOWN_ID}),
        400,
        &["unsupported", "fiat_credit_type_id"],
    )
    .await;
    refused(
        &app,
        create,
        json!({"name": "c", "credit_type_conversions": [
            {"custom_credit_type_id": UNKNOWN_ID, "fiat_per_custom_credit": 2}]}),
        400,
        &[
            "credit_type_conversions[0].custom_credit_type_id",
            "not a custom pricing unit",
        ],
    )
    .await;
    refused(
        &app,
        create,
        json!({"name": "c", "aliases": [{}]}),
        400,
        &["aliases[0].name"],
    )
    .await;
    refused(
        &app,
        "/v1/contract-pricing/rate-cards/get",
        json!({"id": UNKNOWN_ID}),
        404,
        &[],
    )
    .await;
}

#[actix_rt::test]
async fn flat_prices_round_trip_as_exact_decimals() {
    let app = spawn_app().await;
    let product = create_usage_product(&app, "API", &[]).await;
    let card = create_rate_card(&app, "c").await;
    let rate = ok(
        &app,
        "/v1/contract-pricing/rate-cards/addRate",
        json!({"rate_card_id": card, "product_id": product, "entitled": true,
               "rate_type": "flat", "price": 0.0087, "credit_type_id": USD_CENTS,
               "starting_at": "2024-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(rate["rate_type"], "FLAT");
    assert_eq!(rate["price"].to_string(), "0.0087");
    assert_eq!(
        rate["credit_type"],
        json!({"id": USD_CENTS, "name": "USD (cents)"})
    );

    // A price f64 cannot hold, sent as raw JSON text.
    let raw = format!(
        r#"{{"rate_card_id":"{card}","product_id":"{product}","entitled":true,"rate_type":"FLAT","price":123456789.0123456789012345678,"starting_at":"2025-01-01T00:00:00Z"}}"#
    );
    let response = app
        .client
        .post(format!(
            "{}/v1/contract-pricing/rate-cards/addRate",
            app.base
        ))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("\"price\":123456789.0123456789012345678"),
        "{text}"
    );

    let rates = rates_at(&app, &card, "2024-06-01T00:00:00Z").await;
    assert_eq!(rates.len(), 1);
    assert_eq!(rates[0]["rate"]["price"].to_string(), "0.0087");
    let rates = rates_at(&app, &card, "2025-06-01T00:00:00Z").await;
    assert_eq!(
        rates[0]["rate"]["price"].to_string(),
        "123456789.0123456789012345678"
    );
}

#[actix_rt::test]
async fn get_rates_returns_the_rates_in_effect_at_the_instant() {
    let app = spawn_app().await;
    let api = create_usage_product(&app, "API", &["api"]).await;
    let storage = create_usage_product(&app, "Storage", &["storage"]).await;
    let card = create_rate_card(&app, "c").await;
    let add = "/v1/contract-pricing/rate-cards/addRate";
    let on_card = |mut rate: Value| {
        rate["rate_card_id"] = json!(card);
        rate
    };
    let mut first = flat_rate(&api, json!(1), "2024-01-01T00:00:00Z");
    first["ending_before"] = json!("2024-06-01T00:00:00Z");
    ok(&app, add, on_card(first)).await;
    let second = flat_rate(&api, json!(2), "2024-06-01T00:00:00Z");
    ok(&app, add, on_card(second)).await;
    let mut storage_rate = flat_rate(&storage, json!(3), "2024-03-01T00:00:00Z");
    storage_rate["entitled"] = json!(false);
    ok(&app, add, on_card(storage_rate)).await;

    assert_eq!(
        rates_at(&app, &card, "2023-12-31T23:59:59Z").await,
        Vec::<Value>::new()
    );
    let rates = rates_at(&app, &card, "2024-02-01T00:00:00Z").await;
    assert_eq!(rates.len(), 1);
    assert_eq!(rates[0]["product_id"], json!(api));
    assert_eq!(rates[0]["product_name"], "API");
    assert_eq!(rates[0]["product_tags"], json!(["api"]));
    assert_eq!(rates[0]["product_custom_fields"], json!({}));
    assert_eq!(rates[0]["entitled"], true);
    assert_eq!(rates[0]["starting_at"], "2024-01-01T00:00:00Z");
    assert_eq!(rates[0]["ending_before"], "2024-06-01T00:00:00Z");
    assert_eq!(rates[0]["rate"]["rate_type"], "FLAT");
    assert_eq!(rates[0]["rate"]["price"], json!(1));
    assert_eq!(rates[0]["rate"]["credit_type"]["id"], USD_CENTS);

    // ending_before is exclusive: the next rate takes over at that instant.
    let rates = rates_at(&app, &card, "2024-06-01T00:00:00Z").await;
    assert_eq!(rates.len(), 2);
    let api_rate = rates
        .iter()
        .find(|r| r["product_id"] == json!(api))
        .unwrap();
    assert_eq!(api_rate["rate"]["price"], json!(2));
    assert!(api_rate.get("ending_before").is_none());
    let storage_item = rates
        .iter()
        .find(|r| r["product_id"] == json!(storage))
        .unwrap();
    assert_eq!(storage_item["entitled"], false);

    // Selectors: any selector may match; within one, every condition must.
    let get_rates = "/v1/contract-pricing/rate-cards/getRates?limit=1";
    let at = "2024-07-01T00:00:00Z";
    let selected = |selectors: Value| {
        collect_pages(
            &app,
            "POST",
            get_rates,
            json!({"rate_card_id": card, "at": at, "selectors": selectors}),
        )
    };
    let by_tag = selected(json!([{"product_tags": ["storage", "other"]}])).await;
    assert_eq!(by_tag.len(), 1);
    assert_eq!(by_tag[0]["product_id"], json!(storage));
    let by_id = selected(json!([{"product_id": api}])).await;
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0]["product_id"], json!(api));
    let either = selected(json!([{"product_id": api}, {"product_tags": ["storage"]}])).await;
    assert_eq!(either.len(), 2, "paged one at a time");
    let both = selected(json!([{"product_id": api, "product_tags": ["storage"]}])).await;
    assert!(both.is_empty());
    let everything = selected(json!([])).await;
    assert_eq!(everything.len(), 2);
}

#[actix_rt::test]
async fn tiered_rates_keep_their_tiers() {
    let app = spawn_app().await;
    let product = create_usage_product(&app, "API", &[]).await;
    let card = create_rate_card(&app, "c").await;
    let rate = ok(
        &app,
        "/v1/contract-pricing/rate-cards/addRate",
        json!({"rate_card_id": card, "product_id": product, "entitled": true,
               "rate_type": "TIERED", "starting_at": "2024-01-01T00:00:00Z",
               "tiers": [{"price": 10, "size": 1000}, {"price": 7.5, "size": 9000}, {"price": 0.25}]}),
    )
    .await;
    assert_eq!(rate["rate_type"], "TIERED");
    assert!(rate.get("price").is_none());
    let expected =
        json!([{"price": 10, "size": 1000}, {"price": 7.5, "size": 9000}, {"price": 0.25}]);
    assert_eq!(rate["tiers"], expected);
    let rates = rates_at(&app, &card, "2024-01-01T00:00:00Z").await;
    assert_eq!(rates[0]["rate"]["tiers"], expected);
    assert_eq!(rates[0]["rate"]["tiers"][1]["price"].to_string(), "7.5");
}

#[actix_rt::test]
async fn rate_mistakes_get_400s_naming_the_field() {
    let app = spawn_app().await;
    let product = create_usage_product(&app, "API", &[]).await;
    let card = create_rate_card(&app, "c").await;
    let add = "/v1/contract-pricing/rate-cards/addRate";
    let base = || {
        let mut rate = flat_rate(&product, json!(5), "2024-01-01T00:00:00Z");
        rate["rate_card_id"] = json!(card);
        rate
    };
    let with = |key: &str, value: Value| {
        let mut rate = base();
        rate[key] = value;
        rate
    };
    let without = |key: &str| {
        let mut rate = base();
        rate.as_object_mut().unwrap().remove(key);
        rate
    };
    for rate_type in ["PERCENTAGE", "SUBSCRIPTION", "TIERED_PERCENTAGE", "CUSTOM"] {
        refused(
            &app,
            add,
            with("rate_type", json!(rate_type)),
            400,
            &["unsupported", "rate_type"],
        )
        .await;
    }
    refused(
        &app,
        add,
        with("rate_type", json!("BOGUS")),
        400,
        &["rate_type"],
    )
    .await;
    refused(
        &app,
        add,
        with("price", json!(-1)),
        400,
        &["price", "negative"],
    )
    .await;
    refused(&app, add, with("price", json!("abc")), 400, &["price"]).await;
    refused(&app, add, without("price"), 400, &["price"]).await;
    refused(&app, add, without("starting_at"), 400, &["starting_at"]).await;
    refused(&app, add, without("entitled"), 400, &["entitled"]).await;
    refused(
        &app,
        add,
        with("starting_at", json!("yesterday")),
        400,
        &["starting_at"],
    )
    .await;
    refused(
        &app,
        add,
        with("ending_before", json!("2023-01-01T00:00:00Z")),
        400,
        &["ending_before"],
    )
    .await;
    refused(
        &app,
        add,
        with("product_id", json!(UNKNOWN_ID)),
        400,
        &["product_id"],
    )
    .await;
    refused(
        &app,
        add,
        with("credit_type_id", json!(UNKNOWN_ID)),
        400,
        &["credit_type_id"],
    )
    .await;
    for (key, value) in [
        ("pricing_group_values", json!({"region": "eu"})),
        ("commit_rate", json!({"rate_type": "FLAT", "price": 1})),
        ("is_prorated", json!(true)),
        ("quantity", json!(2)),
        ("billing_frequency", json!("MONTHLY")),
    ] {
        refused(&app, add, with(key, value), 400, &["unsupported", key]).await;
    }
    let mut tiered = with("rate_type", json!("TIERED"));
    tiered.as_object_mut().unwrap().remove("price");
    refused(&app, add, tiered.clone(), 400, &["tiers"]).await;
    tiered["tiers"] = json!([{"price": 1}, {"price": 2}]);
    refused(&app, add, tiered.clone(), 400, &["tiers", "size"]).await;
    tiered["tiers"] = json!([{"price": 1, "size": 10}, {"price": -2}]);
    refused(&app, add, tiered, 400, &["tiers", "price"]).await;
    refused(&app, add, with("rate_card_id", json!(UNKNOWN_ID)), 404, &[]).await;

    // Nothing was added by any of the refused requests.
    assert!(
        rates_at(&app, &card, "2030-01-01T00:00:00Z")
            .await
            .is_empty()
    );
    refused(
        &app,
        "/v1/contract-pricing/rate-cards/getRates",
        json!({"rate_card_id": UNKNOWN_ID, "at": "2024-01-01T00:00:00Z"}),
        404,
        &[],
    )
    .await;
    refused(
        &app,
        "/v1/contract-pricing/rate-cards/getRates",
        json!({"rate_card_id": card}),
        400,
        &["at"],
    )
    .await;
    refused(
        &app,
        "/v1/contract-pricing/rate-cards/getRates",
        json!({"rate_card_id": card, "at": "2024-01-01T00:00:00Z",
               "selectors": [{"pricing_group_values": {"a": "b"}}]}),
        400,
        &["selectors[0].pricing_group_values"],
    )
    .await;
}

#[actix_rt::test]
async fn add_rates_adds_all_or_nothing() {
    let app = spawn_app().await;
    let api = create_usage_product(&app, "API", &[]).await;
    let commit = create_product(&app, json!({"name": "Commit", "type": "FIXED"})).await;
    let card = create_rate_card(&app, "c").await;
    let add_many = "/v1/contract-pricing/rate-cards/addRates";
    let good = vec![
        flat_rate(&api, json!(0.5), "2024-01-01T00:00:00Z"),
        flat_rate(&commit, json!(100), "2024-01-01T00:00:00Z"),
    ];
    let mut bad = good.clone();
    bad.push(flat_rate(&api, json!(-3), "2024-02-01T00:00:00Z"));
    refused(
        &app,
        add_many,
        json!({"rate_card_id": card, "rates": bad}),
        400,
        &["rates[2].price"],
    )
    .await;
    let mut unknown_product = good.clone();
    unknown_product.push(flat_rate(UNKNOWN_ID, json!(1), "2024-01-01T00:00:00Z"));
    refused(
        &app,
        add_many,
        json!({"rate_card_id": card, "rates": unknown_product}),
        400,
        &["rates[2].product_id"],
    )
    .await;
    assert!(
        rates_at(&app, &card, "2024-06-01T00:00:00Z")
            .await
            .is_empty()
    );

    refused(
        &app,
        add_many,
        json!({"rate_card_id": card}),
        400,
        &["rates"],
    )
    .await;
    refused(
        &app,
        add_many,
        json!({"rate_card_id": card, "rates": []}),
        400,
        &["rates"],
    )
    .await;
    refused(
        &app,
        add_many,
        json!({"rate_card_id": UNKNOWN_ID, "rates": good.clone()}),
        404,
        &[],
    )
    .await;

    let data = ok(&app, add_many, json!({"rate_card_id": card, "rates": good})).await;
    assert_eq!(data, json!({"id": card}));
    let rates = rates_at(&app, &card, "2024-06-01T00:00:00Z").await;
    assert_eq!(rates.len(), 2);
    let api_rate = rates
        .iter()
        .find(|r| r["product_id"] == json!(api))
        .unwrap();
    assert_eq!(api_rate["rate"]["price"].to_string(), "0.5");
}

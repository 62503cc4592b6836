//! `GET /openapi.json`: an OpenAPI 3.0 description of what Tollgate serves, kept by hand next to
//! the routes (a test checks that every route answers something other than 404).

use actix_web::{HttpResponse, web};
use serde_json::{Map, Value, json};

/// Every endpoint: method, path, summary, and whether it answers `{"data": ...}` (or a page).
pub const ENDPOINTS: &[(&str, &str, &str, Shape)] = &[
    (
        "post",
        "/v1/ingest",
        "Ingest 1-100 usage events (JSON array); 200 with an empty body once durable",
        Shape::Empty,
    ),
    ("post", "/v1/customers", "Create a customer", Shape::Data),
    (
        "get",
        "/v1/tollgate/quarantine",
        "List quarantined inputs (Tollgate)",
        Shape::Page,
    ),
    (
        "post",
        "/v1/tollgate/quarantine/reapply",
        "Re-apply a quarantined input, {\"id\"} (Tollgate)",
        Shape::Data,
    ),
    (
        "post",
        "/v1/tollgate/quarantine/discard",
        "Discard a quarantined input, {\"id\", \"reason\"} (Tollgate)",
        Shape::Data,
    ),
    (
        "get",
        "/v1/tollgate/workflows",
        "List payment-gate workflows; filters customer_id, contract_id, state, kind, created_after, created_before (Tollgate)",
        Shape::Page,
    ),
    (
        "get",
        "/v1/tollgate/workflows/{workflow_id}",
        "Get a payment-gate workflow (Tollgate)",
        Shape::Data,
    ),
    (
        "post",
        "/v1/tollgate/workflows/{workflow_id}/cancel",
        "Cancel a workflow in flight, {\"reason\"}: it ends FAILED; a STRIPE payment is cancelled first (409 when Stripe says it succeeded) (Tollgate)",
        Shape::Data,
    ),
    (
        "post",
        "/v1/tollgate/backup",
        "Write an online, consistent backup of the data directory to {\"to\": DIR} on the server's host (Tollgate)",
        Shape::Data,
    ),
    (
        "get",
        "/v1/tollgate/summary",
        "Dashboard summary: ingest rate, apply lag, workflows in flight by state, webhooks pending and dead letters, quarantined inputs (Tollgate)",
        Shape::Data,
    ),
    (
        "get",
        "/v1/tollgate/webhooks/pending",
        "List webhook deliveries waiting or between retries (Tollgate)",
        Shape::Page,
    ),
    (
        "get",
        "/v1/tollgate/webhooks/delivered",
        "List webhook deliveries of the retention window, oldest first (Tollgate)",
        Shape::Page,
    ),
    (
        "get",
        "/v1/tollgate/webhooks/dead-letters",
        "List webhook dead letters (Tollgate)",
        Shape::Page,
    ),
    (
        "post",
        "/v1/tollgate/webhooks/redrive",
        "Re-drive one webhook dead letter {\"id\"} or all {\"all\": true} (Tollgate)",
        Shape::Data,
    ),
    (
        "get",
        "/v1/tollgate/customers/search",
        "Search customers by id, ingest alias or name, q=TEXT (Tollgate)",
        Shape::Page,
    ),
    (
        "get",
        "/v1/tollgate/audit",
        "List audited calls, oldest first; filters starting_on, ending_before, token (Tollgate)",
        Shape::Page,
    ),
    (
        "get",
        "/v1/tollgate/quarantine/decisions",
        "List decided quarantine entries with their decisions (Tollgate)",
        Shape::Page,
    ),
    ("get", "/v1/customers", "List customers", Shape::Page),
    (
        "get",
        "/v1/customers/{customer_id}",
        "Get a customer",
        Shape::Data,
    ),
    (
        "post",
        "/v1/customers/{customer_id}/setIngestAliases",
        "Replace a customer's ingest aliases",
        Shape::Empty,
    ),
    (
        "post",
        "/v1/customers/archive",
        "Archive a customer",
        Shape::Data,
    ),
    (
        "post",
        "/v1/setCustomerBillingProviderConfigurations",
        "Set Stripe billing configurations",
        Shape::Data,
    ),
    (
        "post",
        "/v1/getCustomerBillingProviderConfigurations",
        "Get billing configurations",
        Shape::Data,
    ),
    (
        "get",
        "/v1/customers/{customer_id}/invoices",
        "List a customer's invoices",
        Shape::Page,
    ),
    (
        "get",
        "/v1/customers/{customer_id}/invoices/{invoice_id}",
        "Get an invoice",
        Shape::Data,
    ),
    (
        "post",
        "/v1/invoices/void",
        "Void a SCHEDULED invoice",
        Shape::Data,
    ),
    (
        "post",
        "/v1/billable-metrics/create",
        "Create a billable metric",
        Shape::Data,
    ),
    (
        "get",
        "/v1/billable-metrics",
        "List billable metrics",
        Shape::Page,
    ),
    (
        "get",
        "/v1/billable-metrics/{billable_metric_id}",
        "Get a billable metric",
        Shape::Data,
    ),
    (
        "post",
        "/v1/billable-metrics/archive",
        "Archive a billable metric",
        Shape::Data,
    ),
    (
        "post",
        "/v1/contract-pricing/products/create",
        "Create a product",
        Shape::Data,
    ),
    (
        "post",
        "/v1/contract-pricing/products/get",
        "Get a product",
        Shape::Data,
    ),
    (
        "post",
        "/v1/contract-pricing/products/list",
        "List products",
        Shape::Page,
    ),
    (
        "post",
        "/v1/contract-pricing/products/archive",
        "Archive a product",
        Shape::Data,
    ),
    (
        "post",
        "/v1/contract-pricing/rate-cards/create",
        "Create a rate card",
        Shape::Data,
    ),
    (
        "post",
        "/v1/contract-pricing/rate-cards/get",
        "Get a rate card",
        Shape::Data,
    ),
    (
        "post",
        "/v1/contract-pricing/rate-cards/list",
        "List rate cards",
        Shape::Page,
    ),
    (
        "post",
        "/v1/contract-pricing/rate-cards/addRate",
        "Add a rate",
        Shape::Data,
    ),
    (
        "post",
        "/v1/contract-pricing/rate-cards/addRates",
        "Add rates (all or nothing)",
        Shape::Data,
    ),
    (
        "post",
        "/v1/contract-pricing/rate-cards/getRates",
        "Rates in effect at a time",
        Shape::Page,
    ),
    (
        "post",
        "/v1/contracts/create",
        "Create a contract (commits, credits, threshold configurations)",
        Shape::Data,
    ),
    (
        "post",
        "/v1/contracts/get",
        "Get a contract (v1 shape)",
        Shape::Data,
    ),
    (
        "post",
        "/v1/contracts/list",
        "List a customer's contracts (v1 shape, not paginated)",
        Shape::Data,
    ),
    (
        "post",
        "/v2/contracts/get",
        "Get a contract (v2 shape)",
        Shape::Data,
    ),
    (
        "post",
        "/v2/contracts/list",
        "List a customer's contracts (v2 shape, not paginated)",
        Shape::Data,
    ),
    (
        "post",
        "/v2/contracts/edit",
        "Edit a contract: threshold configurations, commits (payment-gated), credits",
        Shape::Data,
    ),
    (
        "post",
        "/v1/contracts/commits/threshold-billing/release",
        "Report an EXTERNAL gate's payment outcome",
        Shape::Empty,
    ),
    (
        "post",
        "/v1/contracts/customerBalances/list",
        "List commits and credits with balances",
        Shape::Page,
    ),
    (
        "post",
        "/v1/contracts/customerBalances/getNetBalance",
        "A customer's net balance",
        Shape::Data,
    ),
    (
        "post",
        "/v1/contracts/customerCommits/list",
        "List commits",
        Shape::Page,
    ),
    ("get", "/health", "The process lives", Shape::Plain),
    (
        "get",
        "/ready",
        "Recovery finished and accepting work",
        Shape::Plain,
    ),
    ("get", "/metrics", "Prometheus metrics", Shape::Plain),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Data,
    Page,
    Empty,
    Plain,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(openapi));
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, summary, shape) in ENDPOINTS {
        let public = matches!(shape, Shape::Plain);
        let ok = match shape {
            Shape::Data => {
                json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Data"}}}})
            }
            Shape::Page => {
                json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Page"}}}})
            }
            Shape::Empty | Shape::Plain => json!({"description": "OK"}),
        };
        let mut operation = json!({
            "summary": summary,
            "responses": {
                "200": ok,
                "400": {"$ref": "#/components/responses/Error"},
                "401": {"$ref": "#/components/responses/Error"},
                "403": {"$ref": "#/components/responses/Error"},
                "404": {"$ref": "#/components/responses/Error"},
                "409": {"$ref": "#/components/responses/Error"},
                "413": {"$ref": "#/components/responses/Error"},
                "429": {"$ref": "#/components/responses/Error"},
                "500": {"$ref": "#/components/responses/Error"},
            },
        });
        if public {
            operation["security"] = json!([]);
        } else {
            let http_method = actix_web::http::Method::from_bytes(method.to_uppercase().as_bytes())
                .unwrap_or(actix_web::http::Method::POST);
            operation["x-tollgate-scope"] =
                json!(super::auth::required_scope(&http_method, path).name());
        }
        if *method == "post" {
            operation["requestBody"] = json!({
                "content": {"application/json": {"schema": {"type": if *path == "/v1/ingest" { "array" } else { "object" }}}}
            });
            operation["parameters"] = json!([{
                "name": "Idempotency-Key", "in": "header", "required": false,
                "schema": {"type": "string", "maxLength": 255}
            }]);
        }
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            operation["parameters"] = json!(params);
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Tollgate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Threshold billing and auto-recharge with payment-gated commits; the Metronome-compatible subset of the API.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}},
                "Data": {"type": "object", "required": ["data"], "properties": {"data": {}}},
                "Page": {"type": "object", "required": ["data", "next_page"], "properties": {
                    "data": {"type": "array", "items": {}},
                    "next_page": {"type": "string", "nullable": true},
                }},
            },
            "responses": {
                "Error": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        },
    })
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

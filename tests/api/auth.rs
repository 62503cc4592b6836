//! Scoped tokens and the audit log (SPEC 3.1), through the HTTP API.

use std::net::TcpListener;
use std::sync::Arc;

use serde_json::{Value, json};
use tollgate::actors::Engine;
use tollgate::actors::clock::SystemClock;
use tollgate::http::auth::{ScopedToken, TokenConfig};
use tollgate::http::{ApiOptions, Application};

use super::{TOKEN, support};

const INGEST: &str = "ingest-only-token";
const READ: &str = "read-only-token";
const WRITE: &str = "write-only-token";
const OPERATOR: &str = "operator-scope-token";

fn scoped(token: &str, name: &str, scopes: &[&str]) -> TokenConfig {
    TokenConfig::Scoped(ScopedToken {
        token: token.into(),
        name: Some(name.into()),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    })
}

struct App {
    base: String,
    client: reqwest::Client,
    _engine: Engine,
    _dir: tempfile::TempDir,
}

async fn spawn_scoped_app() -> App {
    let dir = tempfile::tempdir().unwrap();
    let config = support::engine_config(dir.path(), None);
    let engine = Engine::start(config, Arc::new(SystemClock), None)
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let options = ApiOptions {
        tokens: vec![
            TokenConfig::Full(TOKEN.into()),
            scoped(INGEST, "ingest-svc", &["ingest"]),
            scoped(READ, "dashboard", &["read"]),
            scoped(WRITE, "billing", &["write"]),
            scoped(OPERATOR, "oncall", &["operator"]),
        ],
        body_limit: 1 << 20,
        workers: 1,
        stripe: None,
    };
    let app = Application::build_with(listener, engine.clone(), options).unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    actix_rt::spawn(app.run_until_stopped());
    App {
        base,
        client: reqwest::Client::new(),
        _engine: engine,
        _dir: dir,
    }
}

impl App {
    async fn call(&self, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        let url = format!("{}{}", self.base, path);
        let request = match method {
            "GET" => self.client.get(url),
            _ => self.client.post(url).json(&body),
        };
        let response = request.bearer_auth(token).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn audit(&self, query: &str) -> Value {
        let (status, page) = self
            .call(
                READ,
                "GET",
                &format!("/v1/tollgate/audit{query}"),
                Value::Null,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        page
    }
}

fn event(customer: &str, tx: &str) -> Value {
    json!([{
        "transaction_id": tx,
        "customer_id": customer,
        "event_type": "api_call",
        "timestamp": "2026-01-01T00:00:00Z",
        "properties": {}
    }])
}

#[actix_rt::test]
async fn each_token_may_call_only_what_its_scopes_allow_and_is_told_which_scope_is_missing() {
    let app = spawn_scoped_app().await;
    let customer = json!({"name": "Acme"});
    let cancel = "/v1/tollgate/workflows/00000000-0000-0000-0000-000000000001/cancel";
    let cases: [(&str, &str, &str, Value, bool); 22] = [
        (INGEST, "POST", "/v1/ingest", event("someone", "t1"), true),
        (INGEST, "GET", "/v1/customers", Value::Null, false),
        (INGEST, "POST", "/v1/customers", customer.clone(), false),
        (INGEST, "POST", "/v1/contracts/list", json!({}), false),
        (READ, "GET", "/v1/customers", Value::Null, true),
        (READ, "POST", "/v1/contracts/list", json!({}), true),
        (READ, "GET", "/v1/tollgate/quarantine", Value::Null, true),
        (READ, "POST", "/v1/customers", customer.clone(), false),
        (READ, "POST", "/v1/ingest", event("someone", "t2"), false),
        (WRITE, "POST", "/v1/customers", customer.clone(), true),
        (WRITE, "GET", "/v1/customers", Value::Null, false),
        (
            WRITE,
            "POST",
            "/v1/tollgate/quarantine/discard",
            json!({}),
            false,
        ),
        (
            OPERATOR,
            "POST",
            "/v1/tollgate/quarantine/discard",
            json!({}),
            true,
        ),
        (OPERATOR, "POST", "/v1/ingest", event("someone", "t3"), true),
        (READ, "POST", cancel, json!({"reason": "x"}), false),
        (WRITE, "POST", cancel, json!({"reason": "x"}), false),
        (OPERATOR, "POST", cancel, json!({"reason": "x"}), true),
        (READ, "GET", "/v1/tollgate/summary", Value::Null, true),
        (
            WRITE,
            "POST",
            "/v1/tollgate/backup",
            json!({"to": "x"}),
            false,
        ),
        (
            OPERATOR,
            "POST",
            "/v1/tollgate/backup",
            json!({"to": "x"}),
            true,
        ),
        (TOKEN, "POST", "/v1/customers", customer.clone(), true),
        (TOKEN, "GET", "/v1/tollgate/audit", Value::Null, true),
    ];
    for (token, method, path, body, allowed) in cases {
        let (status, answer) = app.call(token, method, path, body).await;
        if allowed {
            assert!(
                status != 403 && status != 401,
                "{token} {method} {path}: {status} {answer}"
            );
        } else {
            assert_eq!(status, 403, "{token} {method} {path}: {answer}");
            let message = answer["message"].as_str().unwrap();
            assert!(
                message.contains(path) && message.contains("scope"),
                "{message}"
            );
        }
    }
    // A wrong token is still 401, whatever the path.
    let (status, answer) = app
        .call("no-such-token", "POST", "/v1/ingest", json!([]))
        .await;
    assert_eq!(status, 401, "{answer}");
}

#[actix_rt::test]
async fn every_mutating_call_is_audited_with_its_token_identity_targets_and_status() {
    let app = spawn_scoped_app().await;
    // Made: a customer created by "billing" (its id comes from the answer).
    let (status, created) = app
        .call(WRITE, "POST", "/v1/customers", json!({"name": "Acme"}))
        .await;
    assert_eq!(status, 200, "{created}");
    let customer = created["data"]["id"].as_str().unwrap().to_owned();
    // Refused by the domain: recorded with its 4xx.
    let (status, _) = app.call(WRITE, "POST", "/v1/customers", json!({})).await;
    assert_eq!(status, 400);
    // Refused for its scope: recorded with 403, without running.
    let (status, _) = app
        .call(
            INGEST,
            "POST",
            "/v1/customers/archive",
            json!({"id": customer}),
        )
        .await;
    assert_eq!(status, 403);
    // Not audited: reads, ingest, and a read refused for its scope.
    app.call(READ, "GET", "/v1/customers", Value::Null).await;
    app.call(INGEST, "POST", "/v1/ingest", event(&customer, "t1"))
        .await;
    app.call(INGEST, "GET", "/v1/customers", Value::Null).await;
    // Made by a plain token: known by its fingerprint.
    let (status, _) = app
        .call(
            TOKEN,
            "POST",
            &format!("/v1/customers/{customer}/setIngestAliases"),
            json!({"ingest_aliases": ["acme-alias"]}),
        )
        .await;
    assert_eq!(status, 200);

    let page = app.audit("").await;
    let records = page["data"].as_array().unwrap();
    assert_eq!(records.len(), 4, "{page}");
    assert_eq!(page["next_page"], Value::Null);
    let summary: Vec<(&str, &str, &str, u64)> = records
        .iter()
        .map(|r| {
            (
                r["token"].as_str().unwrap(),
                r["method"].as_str().unwrap(),
                r["path"].as_str().unwrap(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let alias_path = format!("/v1/customers/{customer}/setIngestAliases");
    // A plain token is known by a fingerprint keyed by the data directory.
    let fingerprint = records[3]["token"].as_str().unwrap().to_owned();
    assert!(
        fingerprint.starts_with("token-") && fingerprint.len() == 22,
        "{fingerprint}"
    );
    assert_eq!(
        summary,
        [
            ("billing", "POST", "/v1/customers", 200),
            ("billing", "POST", "/v1/customers", 400),
            ("ingest-svc", "POST", "/v1/customers/archive", 403),
            (fingerprint.as_str(), "POST", alias_path.as_str(), 200),
        ]
    );
    assert_eq!(records[0]["targets"], json!({"id": customer}));
    assert_eq!(records[2]["targets"], json!({}));
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(records[0]["at"].as_str().unwrap().ends_with('Z'));
    // No token appears anywhere in the log.
    let text = page.to_string();
    for token in [TOKEN, INGEST, READ, WRITE, OPERATOR] {
        assert!(!text.contains(token), "{token} leaked into the audit log");
    }

    // Filters and pages.
    let billing = app.audit("?token=billing").await;
    assert_eq!(billing["data"].as_array().unwrap().len(), 2);
    let first = app.audit("?limit=3").await;
    assert_eq!(first["data"].as_array().unwrap().len(), 3);
    let cursor = first["next_page"].as_str().unwrap();
    let rest = app.audit(&format!("?limit=3&next_page={cursor}")).await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["data"][0]["token"], json!(fingerprint));
    assert_eq!(rest["next_page"], Value::Null);
    let later = app.audit("?starting_on=2999-01-01T00:00:00Z").await;
    assert_eq!(later["data"], json!([]));
    let earlier = app.audit("?ending_before=2000-01-01T00:00:00Z").await;
    assert_eq!(earlier["data"], json!([]));
    let all = app
        .audit("?starting_on=2000-01-01T00:00:00Z&ending_before=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(all["data"].as_array().unwrap().len(), 4);
    for bad in [
        "?next_page=zz",
        "?next_page=00",
        "?starting_on=yesterday",
        "?limit=0",
    ] {
        let (status, answer) = app
            .call(
                READ,
                "GET",
                &format!("/v1/tollgate/audit{bad}"),
                Value::Null,
            )
            .await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(answer["message"].is_string());
    }
}

#[actix_rt::test]
async fn an_encoded_path_needs_the_scope_of_the_route_it_reaches_and_is_audited_decoded() {
    let app = spawn_scoped_app().await;
    // `%74` is `t`: the router reaches the operator's discard endpoint.
    for path in [
        "/v1/%74ollgate/quarantine/discard",
        "/v1/tollgate/quarantine/%64iscard",
    ] {
        let (status, answer) = app
            .call(WRITE, "POST", path, json!({"id": "00", "reason": "x"}))
            .await;
        assert_eq!(status, 403, "{path}: {answer}");
        let (status, _) = app
            .call(OPERATOR, "POST", path, json!({"id": "00", "reason": "x"}))
            .await;
        assert_eq!(status, 400, "{path} reaches the handler for an operator");
    }
    // An encoded ingest path is still ingest for an ingest token, and a read for no one else.
    let (status, _) = app
        .call(INGEST, "POST", "/v1/%69ngest", event("someone", "t1"))
        .await;
    assert_ne!(status, 403);
    let page = app.audit("").await;
    let paths: Vec<(&str, u64)> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["path"].as_str().unwrap(), r["status"].as_u64().unwrap()))
        .collect();
    let discard = "/v1/tollgate/quarantine/discard";
    assert_eq!(
        paths,
        [
            (discard, 403),
            (discard, 400),
            (discard, 403),
            (discard, 400)
        ]
    );
}

#[actix_rt::test]
async fn refusals_by_inner_layers_and_idempotent_replays_are_audited_with_their_status() {
    let app = spawn_scoped_app().await;
    let post = |key: &str| {
        app.client
            .post(format!("{}/v1/customers", app.base))
            .bearer_auth(WRITE)
            .header("Idempotency-Key", key)
            .json(&json!({"name": "Acme"}))
            .send()
    };
    assert_eq!(post("create-acme").await.unwrap().status(), 200);
    let replay = post("create-acme").await.unwrap();
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    // Refused by the idempotency layer itself (a key over 255 characters): 400, nothing ran.
    assert_eq!(post(&"k".repeat(256)).await.unwrap().status(), 400);
    let page = app.audit("").await;
    let records = page["data"].as_array().unwrap();
    let seen: Vec<(u64, bool)> = records
        .iter()
        .map(|r| {
            (
                r["status"].as_u64().unwrap(),
                r["replayed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [(200, false), (200, true), (400, false)]);
    assert_eq!(records[0]["targets"], records[1]["targets"]);
}

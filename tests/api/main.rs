//! API integration tests: the real server on port 0 with a temp data dir and a local webhook
//! receiver, driven over HTTP with Metronome's request shapes.

#[path = "../support/mod.rs"]
mod support;

mod alerts;
mod auth;
mod balance_corrections;
mod catalog;
mod contracts;
mod credit_types;
mod customer_commits;
mod edge;
mod lifecycle;
mod money_edges;
mod openapi;
mod search;
mod webhooks;
mod workflows;

use std::net::TcpListener;
use std::sync::Arc;

use serde_json::{Value, json};
use tollgate::actors::Engine;
use tollgate::actors::clock::SystemClock;
use tollgate::http::Application;

pub const TOKEN: &str = "test-token-123";

/// A running server and a client for it.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub receiver: support::Receiver,
    pub engine: Engine,
    _dir: tempfile::TempDir,
}

/// Starts Tollgate on 127.0.0.1:0 with a fresh data dir and a webhook receiver.
pub async fn spawn_app() -> TestApp {
    spawn_app_with_faults(None).await
}

/// [`spawn_app`] on a store that asks `faults` before every write and read.
pub async fn spawn_app_with_faults(faults: Option<tollgate::storage::faults::Faults>) -> TestApp {
    spawn_app_configured(faults, |_| {}).await
}

/// [`spawn_app_with_faults`] with the engine's settings changed by `adjust` first.
pub async fn spawn_app_configured(
    faults: Option<tollgate::storage::faults::Faults>,
    adjust: impl FnOnce(&mut tollgate::actors::EngineSettings),
) -> TestApp {
    spawn_app_with_config(faults, |config| adjust(&mut config.settings)).await
}

/// [`spawn_app_with_faults`] with the whole engine config changed by `adjust` first.
pub async fn spawn_app_with_config(
    faults: Option<tollgate::storage::faults::Faults>,
    adjust: impl FnOnce(&mut tollgate::actors::engine::EngineConfig),
) -> TestApp {
    spawn_app_on_clock(Arc::new(SystemClock), faults, adjust).await
}

/// [`spawn_app_with_config`] on `clock` (a manual clock lets a test move time).
pub async fn spawn_app_on_clock(
    clock: tollgate::actors::clock::SharedClock,
    faults: Option<tollgate::storage::faults::Faults>,
    adjust: impl FnOnce(&mut tollgate::actors::engine::EngineConfig),
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let receiver = support::Receiver::start();
    let mut config = support::engine_config(dir.path(), Some(&receiver.url));
    adjust(&mut config);
    let seams = tollgate::actors::Seams {
        storage_faults: faults,
        ..tollgate::actors::Seams::new(clock)
    };
    let engine = Engine::start_with(config, seams).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let app =
        Application::build(listener, engine.clone(), &[TOKEN.to_owned()], 1 << 20, 1).unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    actix_rt::spawn(app.run_until_stopped());
    TestApp {
        base,
        client: reqwest::Client::new(),
        receiver,
        engine,
        _dir: dir,
    }
}

impl TestApp {
    /// The status `/ready` answers (no token needed).
    pub async fn ready_status(&self) -> u16 {
        let response = self.client.get(format!("{}/ready", self.base)).send();
        response.await.unwrap().status().as_u16()
    }

    /// POSTs JSON with the token; returns status and parsed body (Null when empty).
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{}", self.base, path))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        decode(response).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{}", self.base, path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        decode(response).await
    }
}

async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}))
    };
    (status, body)
}

#[actix_rt::test]
async fn requests_without_a_valid_token_get_401_with_a_message() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/v1/customers", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("token"));
    let wrong = app
        .client
        .get(format!("{}/v1/customers", app.base))
        .bearer_auth("test-token-124")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    for open in ["/health", "/ready", "/metrics"] {
        let r = app
            .client
            .get(format!("{}{open}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{open}");
    }
}

#[actix_rt::test]
async fn unknown_endpoints_are_404_with_a_message() {
    let app = spawn_app().await;
    let (status, body) = app.get("/v1/nothing-here").await;
    assert_eq!(status, 404);
    assert!(body["message"].is_string());
}

#[actix_rt::test]
async fn every_documented_endpoint_is_served() {
    let app = spawn_app().await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 30);
    for (path, methods) in paths {
        let concrete = path
            .replace("{customer_id}", "00000000-0000-0000-0000-000000000001")
            .replace("{invoice_id}", "00000000-0000-0000-0000-000000000002")
            .replace(
                "{billable_metric_id}",
                "00000000-0000-0000-0000-000000000003",
            )
            .replace("{workflow_id}", "00000000-0000-0000-0000-000000000004");
        for method in methods.as_object().unwrap().keys() {
            let (status, body) = match method.as_str() {
                "get" => app.get(&concrete).await,
                _ => app.post(&concrete, json!({})).await,
            };
            // Unknown ids and empty bodies give 4xx, but never "no such endpoint".
            assert!(
                !(status == 404 && body["message"] == "no such endpoint"),
                "{method} {path} is documented but not served"
            );
        }
    }
}

//! Helpers shared by the integration tests: a local webhook receiver that records and verifies
//! what it gets, engine configs on temp dirs, and polling.
#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use tollgate::actors::EngineSettings;
use tollgate::actors::engine::EngineConfig;
use tollgate::actors::shared::WebhookRoute;
use tollgate::actors::webhook::{Destination, WebhookSettings, sign};
use tollgate::domain::Limits;
use tollgate::storage::Durability;

pub const SECRET: &str = "whsec_test_secret";

/// One webhook as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub event_type: String,
    pub body: serde_json::Value,
    pub signature_valid: bool,
}

/// A webhook receiver on 127.0.0.1 that answers `status` (settable) and records every request.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub status: Arc<Mutex<u16>>,
}

impl Receiver {
    /// Starts on the current actix system.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(200u16));
        let (r, s) = (received.clone(), status.clone());
        let server = HttpServer::new(move || {
            let (r, s) = (r.clone(), s.clone());
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (r, s) = (r.clone(), s.clone());
                async move {
                    let date = req
                        .headers()
                        .get("x-metronome-date")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let signature = req
                        .headers()
                        .get("metronome-webhook-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let json: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    r.lock().unwrap().push(Received {
                        id: json["id"].as_str().unwrap_or("").to_owned(),
                        event_type: json["type"].as_str().unwrap_or("").to_owned(),
                        signature_valid: sign(SECRET, &date, &body) == signature,
                        body: json,
                    });
                    let code = *s.lock().unwrap();
                    HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap())
                        .finish()
                }
            }))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        Receiver {
            url: format!("http://127.0.0.1:{port}/hooks"),
            received,
            status,
        }
    }

    pub fn of_type(&self, event_type: &str) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.event_type == event_type)
            .cloned()
            .collect()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

pub fn engine_config(dir: &std::path::Path, webhook_url: Option<&str>) -> EngineConfig {
    EngineConfig {
        data_dir: dir.to_path_buf(),
        durability: Durability::Wal,
        dedupe_window_ms: 34 * 86_400_000,
        dedupe_memory_entries: 10_000,
        settings: EngineSettings {
            partitions: 2,
            limits: Limits::default(),
            webhook_routes: webhook_url.iter().map(|u| WebhookRoute::all(u)).collect(),
            mailbox_capacity: 1024,
            pending_inputs_max: 100_000,
            apply_lag_max_ms: 60_000,
            checkpoint_interval_ms: 60_000,
            checkpoint_every_inputs: 1_000_000,
            evict_idle_ms: 3_600_000,
            preload_customers_max: 1_000_000,
            tick_interval_ms: 3_600_000,
            housekeeping_ms: 200,
            late_window_ms: 34 * 86_400_000,
        },
        webhooks: WebhookSettings {
            destinations: webhook_url
                .iter()
                .map(|u| Destination {
                    url: u.to_string(),
                    secret: SECRET.into(),
                })
                .collect(),
            timeout_ms: 2_000,
            first_retry_ms: 50,
            max_interval_ms: 200,
            give_up_after_ms: 60_000,
            concurrency_per_destination: 4,
            schedule_check_ms: 50,
            delivered_retention_ms: 72 * 3_600_000,
        },
        submit_capacity: 1024,
    }
}

/// Polls `check` until it holds or ~15 s pass.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..300 {
        if check() {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

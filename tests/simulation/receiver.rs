//! The simulation's webhook receiver: a [`WebhookTransport`] that answers from a seeded script
//! (2xx, 5xx, a timeout, an outage of a few minutes, an answer lost after the receiver kept the
//! webhook) and records what arrived, so the simulation can check at-least-once delivery with
//! stable ids and bodies.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tollgate::actors::webhook::{DeliveryFuture, Outcome, WebhookRequest, WebhookTransport};

/// What the receiver kept of one webhook id.
#[derive(Clone, Debug)]
pub struct Kept {
    pub event_type: String,
    pub body: Vec<u8>,
    pub properties: serde_json::Value,
    pub deliveries: u32,
}

#[derive(Default)]
struct State {
    /// Every webhook the receiver kept, by id.
    kept: BTreeMap<String, Kept>,
    /// Ids in the order they first arrived (the trace).
    arrival: Vec<String>,
    /// Webhook ids that arrived with a body other than the first one.
    conflicts: Vec<String>,
    /// Failing answers until this simulated time (ms).
    outage_until_ms: i64,
    /// Failures injected, for the report.
    failures: u64,
    healthy: bool,
}

/// Shared by the transport (inside the engine) and the simulation.
#[derive(Clone)]
pub struct Receiver {
    state: Arc<Mutex<State>>,
    rng: Arc<Mutex<StdRng>>,
    now_ms: Arc<dyn Fn() -> i64 + Send + Sync>,
}

impl Receiver {
    pub fn new(seed: u64, now_ms: Arc<dyn Fn() -> i64 + Send + Sync>) -> Receiver {
        Receiver {
            state: Arc::new(Mutex::new(State::default())),
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
            now_ms,
        }
    }

    /// The receiver fails every attempt for `ms` of simulated time from now.
    pub fn outage(&self, ms: i64) {
        let now = (self.now_ms)();
        self.state.lock().unwrap().outage_until_ms = now + ms;
    }

    /// From now on every attempt succeeds at once (the end of a run).
    pub fn heal(&self) {
        let mut state = self.state.lock().unwrap();
        state.healthy = true;
        state.outage_until_ms = 0;
    }

    pub fn kept(&self) -> BTreeMap<String, Kept> {
        self.state.lock().unwrap().kept.clone()
    }

    pub fn arrival(&self) -> Vec<String> {
        self.state.lock().unwrap().arrival.clone()
    }

    pub fn conflicts(&self) -> Vec<String> {
        self.state.lock().unwrap().conflicts.clone()
    }

    pub fn failures(&self) -> u64 {
        self.state.lock().unwrap().failures
    }

    /// Workflow ids of `payment_gate.external_initiate` webhooks, as an integrator learns them.
    pub fn external_workflows(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .kept
            .values()
            .filter(|k| k.event_type == "payment_gate.external_initiate")
            .filter_map(|k| k.properties["workflow_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Every workflow a webhook named, once each.
    pub fn workflows(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        let mut workflows: Vec<String> = state
            .kept
            .values()
            .filter_map(|k| k.properties["workflow_id"].as_str().map(str::to_owned))
            .collect();
        workflows.sort();
        workflows.dedup();
        workflows
    }

    /// Keeps the webhook (the receiver processed it), whatever it then answers.
    fn keep(&self, body: &[u8]) {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let id = json["id"].as_str().unwrap_or_default().to_owned();
        let mut state = self.state.lock().unwrap();
        match state.kept.get_mut(&id) {
            Some(kept) => {
                kept.deliveries += 1;
                if kept.body != body {
                    if std::env::var_os("TOLLGATE_SIM_VERBOSE").is_some() {
                        println!(
                            "webhook {id} again with another body:\n  {}\n  {}",
                            String::from_utf8_lossy(&kept.body),
                            String::from_utf8_lossy(body)
                        );
                    }
                    state.conflicts.push(id);
                }
            }
            None => {
                state.arrival.push(id.clone());
                state.kept.insert(
                    id,
                    Kept {
                        event_type: json["type"].as_str().unwrap_or_default().to_owned(),
                        body: body.to_vec(),
                        properties: json["properties"].clone(),
                        deliveries: 1,
                    },
                );
            }
        }
    }
}

/// What the receiver does with one attempt.
enum Script {
    Ok,
    /// Kept, but the 200 never reaches the engine: it retries (a duplicate delivery).
    LostAnswer,
    ServerError,
    /// No answer within the engine's timeout.
    Timeout,
}

impl WebhookTransport for Receiver {
    fn deliver(&self, request: WebhookRequest) -> DeliveryFuture {
        let now = (self.now_ms)();
        let script = {
            let mut state = self.state.lock().unwrap();
            if state.healthy {
                Script::Ok
            } else if now < state.outage_until_ms {
                state.failures += 1;
                Script::ServerError
            } else {
                let roll: u32 = self.rng.lock().unwrap().random_range(0..100);
                let script = match roll {
                    0..=79 => Script::Ok,
                    80..=86 => Script::ServerError,
                    87..=93 => Script::LostAnswer,
                    _ => Script::Timeout,
                };
                if !matches!(script, Script::Ok) {
                    state.failures += 1;
                }
                script
            }
        };
        let receiver = self.clone();
        Box::pin(async move {
            match script {
                Script::Ok => {
                    receiver.keep(&request.body);
                    Outcome::Delivered { status: 200 }
                }
                Script::LostAnswer => {
                    receiver.keep(&request.body);
                    Outcome::Failed {
                        status: None,
                        error: "connection reset after the receiver answered".into(),
                    }
                }
                Script::ServerError => Outcome::Failed {
                    status: Some(503),
                    error: "503 from the receiver".into(),
                },
                Script::Timeout => {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Outcome::Failed {
                        status: None,
                        error: "timed out".into(),
                    }
                }
            }
        })
    }
}

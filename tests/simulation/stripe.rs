//! The simulation's Stripe: the fake of tests/stripe (Stripe's idempotency layer with saved
//! 500s, 409 for a key in progress, 400 `idempotency_error`, keys that expire after 24 h,
//! search and list by metadata, PaymentIntents, invoices, refunds) run in process as the
//! engine's [`StripeTransport`], behind a seeded script of what Stripe and the network do: a
//! charge that succeeds, is declined, needs 3DS, stays `processing` or waits for a capture; a
//! 500 saved before or after the work; an answer that comes after the client's timeout; a key
//! held in progress; connections lost before or after Stripe did the work; outages that outlast
//! the 24 h key window; a search index that lags. Its webhook events reach the engine's Stripe
//! endpoint late, twice or never.
//!
//! It also holds the money invariants that only Stripe's side can show: at most one successful
//! charge per workflow, and each one belongs to a RELEASED workflow whose commit exists, for the
//! invoice's amount, or was refunded after the workflow FAILED.

#[allow(dead_code)]
#[path = "../stripe/fake.rs"]
mod fake;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tollgate::actors::clock::Clock;
use tollgate::payments::stripe::{
    StripeCall, StripeMethod, StripeReply, StripeTransport, TransportFuture,
};

use self::fake::{FakeStripe, Mode};

pub const WEBHOOK_SECRET: &str = "whsec_stripe_sim";
pub const WEBHOOK_PATH: &str = "/v1/stripe/webhook";
/// The client's timeout for one Stripe call.
pub const CLIENT_TIMEOUT_MS: u64 = 10_000;
const MINUTE_MS: i64 = 60_000;

/// The fake's clock: the simulation's.
#[derive(Clone)]
pub struct SimClock(pub Arc<dyn Clock>);

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        self.0.now_ms()
    }
}

/// What the network does to one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Network {
    Through,
    /// Refused before Stripe saw it.
    LostBefore,
    /// Stripe did the work; the answer never arrived.
    LostAfter,
    /// Stripe's edge answers 500 without running the request (nothing saved).
    EdgeError,
    /// Stripe rejects the key for a moment (a rotated key being deployed).
    Unauthorized,
}

/// One Stripe event on its way to the engine.
#[derive(Clone, Debug)]
struct Delivery {
    due_ms: i64,
    event: Value,
}

struct Script {
    rng: StdRng,
    /// Stripe answers nothing useful until then (ms).
    down_until_ms: i64,
    /// The search index shows nothing until then (ms).
    search_lag_until_ms: i64,
    /// No faults and no new undecided charges: the end of a run.
    healthy: bool,
    deliveries: Vec<Delivery>,
    /// Percent of events never delivered (this seed's; see [`SimStripe::new`]).
    event_loss_percent: u32,
    /// Saved 500s, late answers and held keys are common (this seed's).
    flaky: bool,
    calls: u64,
    faults: u64,
    events_delivered: u64,
}

/// Shared by the engine (as its transport) and the simulation.
#[derive(Clone)]
pub struct SimStripe {
    fake: FakeStripe<SimClock>,
    script: Arc<Mutex<Script>>,
}

/// A charge Stripe collected, as the invariants see it.
#[derive(Clone, Debug)]
pub struct Collected {
    pub intent: String,
    pub workflow: Option<String>,
    pub amount: i64,
    pub refunded: bool,
}

impl SimStripe {
    /// `event_loss_percent` of Stripe's events never reach the engine, and a `flaky` Stripe
    /// saves 500s, answers late and holds keys often: seeds differ in how unreliable Stripe is.
    pub fn new(
        seed: u64,
        clock: Arc<dyn Clock>,
        event_loss_percent: u32,
        flaky: bool,
    ) -> SimStripe {
        SimStripe {
            fake: FakeStripe::in_process(Mode::Succeed, SimClock(clock)),
            script: Arc::new(Mutex::new(Script {
                rng: StdRng::seed_from_u64(seed),
                down_until_ms: 0,
                search_lag_until_ms: 0,
                healthy: false,
                deliveries: Vec::new(),
                event_loss_percent,
                flaky,
                calls: 0,
                faults: 0,
                events_delivered: 0,
            })),
        }
    }

    fn now_ms(&self) -> i64 {
        self.fake.clock.now_ms()
    }

    /// Stripe is down for `ms` of simulated time from now.
    pub fn outage(&self, ms: i64) {
        let now = self.now_ms();
        self.script.lock().unwrap().down_until_ms = now + ms;
    }

    /// New objects stay out of search results for `ms` (Stripe's index lags behind writes).
    pub fn search_lag(&self, ms: i64) {
        let now = self.now_ms();
        self.script.lock().unwrap().search_lag_until_ms = now + ms;
    }

    /// From now on Stripe and the network behave (the end of a run); what is undecided stays
    /// so until [`settle_all`](Self::settle_all).
    pub fn heal(&self) {
        let mut script = self.script.lock().unwrap();
        script.healthy = true;
        script.down_until_ms = 0;
        script.search_lag_until_ms = 0;
    }

    pub fn calls(&self) -> u64 {
        self.script.lock().unwrap().calls
    }

    pub fn faults(&self) -> u64 {
        self.script.lock().unwrap().faults
    }

    pub fn events_delivered(&self) -> u64 {
        self.script.lock().unwrap().events_delivered
    }

    /// The last requests Stripe saw, for a failure's message.
    pub fn requests_summary(&self) -> String {
        let state = self.fake.state.lock().unwrap();
        let start = state.requests.len().saturating_sub(12);
        format!(
            "{:?}; intents {:?}",
            &state.requests[start..],
            state
                .intents
                .iter()
                .map(|i| format!("{} {}", i["id"], i["status"]))
                .collect::<Vec<_>>()
        )
    }

    /// The PaymentIntents still waiting for the bank or the customer.
    fn undecided(&self) -> Vec<String> {
        self.fake
            .intents()
            .iter()
            .filter(|i| matches!(i["status"].as_str(), Some("processing" | "requires_action")))
            .filter_map(|i| i["id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Now and then the bank decides a `processing` charge or the customer completes (or
    /// abandons) 3DS.
    pub fn settle_some(&self) {
        let undecided = self.undecided();
        if undecided.is_empty() {
            return;
        }
        let (pick, succeeded) = {
            let mut script = self.script.lock().unwrap();
            if !script.rng.random_bool(0.3) {
                return;
            }
            (
                script.rng.random_range(0..undecided.len()),
                script.rng.random_bool(0.75),
            )
        };
        self.fake.settle(&undecided[pick], succeeded);
    }

    /// Every undecided charge is decided (the end of a run).
    pub fn settle_all(&self) {
        for id in self.undecided() {
            let succeeded = self.script.lock().unwrap().rng.random_bool(0.75);
            self.fake.settle(&id, succeeded);
        }
    }

    /// Takes Stripe's new events and schedules each as Stripe's delivery would go: most soon,
    /// some late, some twice, some never (the engine must find out by polling).
    pub fn schedule_events(&self) {
        let events = self.fake.take_events();
        let now = self.now_ms();
        let mut script = self.script.lock().unwrap();
        for event in events {
            if script.rng.random_range(0..100) < script.event_loss_percent && !script.healthy {
                continue; // never delivered
            }
            let copies = if script.rng.random_ratio(1, 8) { 2 } else { 1 };
            for _ in 0..copies {
                let due_ms = if script.rng.random_bool(0.3) {
                    now + script.rng.random_range(1_000..30 * MINUTE_MS)
                } else {
                    now + script.rng.random_range(0..2_000)
                };
                script.deliveries.push(Delivery {
                    due_ms,
                    event: event.clone(),
                });
            }
        }
    }

    /// The events due now, in due order (ties in the order they were scheduled).
    pub fn due_events(&self) -> Vec<Value> {
        let now = self.now_ms();
        let mut script = self.script.lock().unwrap();
        let mut due: Vec<(i64, usize, Value)> = Vec::new();
        let mut rest = Vec::new();
        for (i, delivery) in std::mem::take(&mut script.deliveries)
            .into_iter()
            .enumerate()
        {
            if delivery.due_ms <= now {
                due.push((delivery.due_ms, i, delivery.event));
            } else {
                rest.push(delivery);
            }
        }
        script.deliveries = rest;
        due.sort_by_key(|(at, i, _)| (*at, *i));
        script.events_delivered += due.len() as u64;
        due.into_iter().map(|(_, _, e)| e).collect()
    }

    /// An event the engine did not take (a 5xx): Stripe tries again later.
    pub fn redeliver(&self, event: Value) {
        let now = self.now_ms();
        let mut script = self.script.lock().unwrap();
        let due_ms = now + script.rng.random_range(MINUTE_MS..60 * MINUTE_MS);
        script.deliveries.push(Delivery { due_ms, event });
    }

    pub fn has_deliveries(&self) -> bool {
        !self.script.lock().unwrap().deliveries.is_empty()
    }

    /// Every PaymentIntent that succeeded, with the workflow it was for (its own metadata, or
    /// its invoice's).
    pub fn collected(&self) -> Vec<Collected> {
        let state = self.fake.state.lock().unwrap();
        let invoice_of = |intent: &str| -> Option<String> {
            let payment = state
                .invoice_payments
                .iter()
                .find(|p| p["payment"]["payment_intent"] == intent)?;
            let invoice = state
                .invoices
                .iter()
                .find(|i| i["id"] == payment["invoice"])?;
            invoice["metadata"]["workflow_id"]
                .as_str()
                .map(str::to_owned)
        };
        state
            .intents
            .iter()
            .filter(|i| i["status"] == "succeeded")
            .map(|i| {
                let id = i["id"].as_str().unwrap_or_default().to_owned();
                Collected {
                    workflow: i["metadata"]["workflow_id"]
                        .as_str()
                        .map(str::to_owned)
                        .or_else(|| invoice_of(&id)),
                    intent: id,
                    amount: i["amount"].as_i64().unwrap_or(-1),
                    refunded: i["amount_refunded"] == i["amount"],
                }
            })
            .collect()
    }

    /// At most one successful charge per workflow, refunded or not.
    pub fn check_charges(&self) -> Result<(), String> {
        let mut per_workflow: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for charge in self.collected() {
            let Some(workflow) = charge.workflow else {
                return Err(format!("{} collected money for no workflow", charge.intent));
            };
            per_workflow
                .entry(workflow)
                .or_default()
                .push(charge.intent);
        }
        match per_workflow.iter().find(|(_, intents)| intents.len() > 1) {
            Some((workflow, intents)) => Err(format!(
                "workflow {workflow} was charged {} times: {intents:?}",
                intents.len()
            )),
            None => Ok(()),
        }
    }

    /// What the network and Stripe do to this call; sets the fake's mode for a charge.
    fn script_call(&self, call: &StripeCall) -> Network {
        let now = self.now_ms();
        let mut script = self.script.lock().unwrap();
        script.calls += 1;
        let charging = call.method == StripeMethod::Post
            && (call.path == "/v1/payment_intents"
                || call.path.ends_with("/confirm")
                || (call.path.starts_with("/v1/invoices/") && call.path.ends_with("/pay")));
        if charging {
            // A seed with a flaky Stripe draws from the faults (81..100) three times as often.
            let roll = if script.flaky && script.rng.random_ratio(2, 5) {
                script.rng.random_range(81..100)
            } else {
                script.rng.random_range(0..100)
            };
            let mode = match roll {
                0..=47 => Mode::Succeed,
                48..=57 => Mode::Decline,
                58..=65 => Mode::RequireAction,
                66..=77 => Mode::Processing,
                78..=80 => Mode::RequiresCapture,
                _ if script.healthy => Mode::Succeed,
                81..=85 => Mode::Fail500Before,
                86..=90 => Mode::Fail500After,
                91..=95 => Mode::Hang,
                _ => Mode::Slow,
            };
            let hang_ms = script.rng.random_range(2_000..3 * CLIENT_TIMEOUT_MS);
            let mut fake = self.fake.state.lock().unwrap();
            fake.mode = mode;
            fake.hang_ms = hang_ms;
        }
        self.fake.state.lock().unwrap().search_hidden = now < script.search_lag_until_ms;
        if script.healthy {
            return Network::Through;
        }
        if now < script.down_until_ms {
            script.faults += 1;
            return if script.rng.random_bool(0.5) {
                Network::EdgeError
            } else {
                Network::LostBefore
            };
        }
        let network = match script.rng.random_range(0..1000) {
            0..=29 => Network::LostBefore,
            30..=59 => Network::LostAfter,
            60..=79 => Network::EdgeError,
            80..=84 => Network::Unauthorized,
            _ => Network::Through,
        };
        if network != Network::Through {
            script.faults += 1;
        }
        network
    }
}

impl StripeTransport for SimStripe {
    fn send(&self, call: StripeCall) -> TransportFuture {
        let this = self.clone();
        Box::pin(async move {
            let network = this.script_call(&call);
            if std::env::var_os("TOLLGATE_SIM_VERBOSE").is_some() {
                eprintln!(
                    "t={} stripe {} {} key={:?} {network:?} mode={:?}",
                    this.now_ms(),
                    call.method.as_str(),
                    call.path,
                    call.idempotency_key,
                    this.fake.state.lock().unwrap().mode
                );
            }
            match network {
                Network::LostBefore => StripeReply::Lost("connection refused".into()),
                Network::EdgeError => StripeReply::Answered {
                    status: 500,
                    body: json!({"error": {"type": "api_error", "message": "edge error"}}),
                },
                Network::Unauthorized => StripeReply::Answered {
                    status: 401,
                    body: json!({"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}}),
                },
                Network::Through => {
                    let (status, body) = this.fake.serve(call).await;
                    StripeReply::Answered { status, body }
                }
                Network::LostAfter => {
                    this.fake.serve(call).await;
                    StripeReply::Lost("connection reset after the request was sent".into())
                }
            }
        })
    }
}

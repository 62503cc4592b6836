//! The built-in webhook receiver: verifies every request's signature with
//! [`crate::actors::webhook::sign`] over its `X-Metronome-Date` header (and that the date is
//! fresh), timestamps arrivals, and matches each `payment_gate.threshold_reached` to the moment
//! the load generator saw the crossing event acknowledged, for crossing -> webhook latency.
//!
//! Matching is per customer and in order: the k-th threshold webhook of a customer belongs to its
//! k-th acknowledged crossing. A webhook may arrive before the client has processed the 200 of the
//! batch that crossed (the server applies the event while the response is on the wire); it then
//! waits for its crossing and counts as latency 0 (`arrived_before_ack`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use hdrhistogram::Histogram;

use super::report::{WebhookCounts, new_histogram, record_us};
use crate::actors::webhook::sign;
use crate::http::constant_time_eq;

/// Metronome's advice: reject webhooks dated more than 5 minutes away.
const DATE_SKEW_MAX: Duration = Duration::from_secs(5 * 60);
/// A webhook that waited longer than this for its crossing is stale (its crossing was lost,
/// e.g. a batch that failed with a 5xx after the server had taken it) and is dropped.
const EARLY_WEBHOOK_WAIT_MAX: Duration = Duration::from_secs(1);

pub const THRESHOLD_REACHED: &str = "payment_gate.threshold_reached";

#[derive(Default)]
struct Matching {
    seen_ids: HashSet<String>,
    crossings: HashMap<u32, VecDeque<Instant>>,
    early_webhooks: HashMap<u32, VecDeque<Instant>>,
    histogram: Option<Histogram<u64>>,
    counts: WebhookCounts,
    arrived_before_ack: u64,
}

/// Shared between the receiver's handlers and the load generator.
pub struct WebhookSink {
    secret: String,
    /// Server customer id -> bench customer index, known once setup is done.
    customers: OnceLock<HashMap<String, u32>>,
    matching: Mutex<Matching>,
}

/// What a run's matching found.
pub struct WebhookRun {
    pub latency: Histogram<u64>,
    pub counts: WebhookCounts,
    pub arrived_before_ack: u64,
}

impl WebhookSink {
    pub fn new(secret: String) -> WebhookSink {
        WebhookSink {
            secret,
            customers: OnceLock::new(),
            matching: Mutex::new(Matching::default()),
        }
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Matching> {
        self.matching.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs the customer id map (once; later calls are ignored).
    pub fn set_customers(&self, ids: &[String]) {
        let map = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        let _ = self.customers.set(map);
    }

    /// Starts a run: forgets crossings and webhooks left from an earlier one.
    pub fn begin_run(&self) {
        let mut m = self.lock();
        m.crossings.clear();
        m.early_webhooks.clear();
        m.histogram = Some(new_histogram());
        m.counts = WebhookCounts::default();
        m.arrived_before_ack = 0;
    }

    /// Crossings acknowledged in this run that no webhook matched yet.
    pub fn pending_crossings(&self) -> usize {
        self.lock().crossings.values().map(VecDeque::len).sum()
    }

    /// Ends a run: what matched, and the crossings still without a webhook as missing.
    pub fn end_run(&self) -> WebhookRun {
        let mut m = self.lock();
        let missing = m.crossings.values().map(VecDeque::len).sum::<usize>() as u64;
        m.crossings.clear();
        m.early_webhooks.clear();
        let mut counts = std::mem::take(&mut m.counts);
        counts.missing = missing;
        WebhookRun {
            latency: m.histogram.take().unwrap_or_else(new_histogram),
            counts,
            arrived_before_ack: m.arrived_before_ack,
        }
    }

    /// The load generator saw the batch holding `customer`'s crossing event acknowledged `at`.
    pub fn crossing_acknowledged(&self, customer: u32, at: Instant) {
        let mut m = self.lock();
        let early = m.early_webhooks.get_mut(&customer).and_then(|queue| {
            // Webhooks that waited too long belong to crossings the tool never saw acknowledged.
            while queue
                .front()
                .is_some_and(|&w| at.saturating_duration_since(w) > EARLY_WEBHOOK_WAIT_MAX)
            {
                queue.pop_front();
            }
            queue.pop_front()
        });
        match early {
            Some(_) => {
                m.arrived_before_ack += 1;
                m.counts.matched += 1;
                if let Some(h) = m.histogram.as_mut() {
                    record_us(h, 0);
                }
            }
            None => m.crossings.entry(customer).or_default().push_back(at),
        }
    }

    fn webhook_arrived(&self, id: &str, event_type: &str, customer_id: &str, at: Instant) {
        let mut m = self.lock();
        m.counts.received += 1;
        if !m.seen_ids.insert(id.to_owned()) {
            m.counts.redeliveries += 1;
            return;
        }
        if event_type != THRESHOLD_REACHED {
            return;
        }
        let Some(&customer) = self.customers.get().and_then(|c| c.get(customer_id)) else {
            return;
        };
        match m.crossings.get_mut(&customer).and_then(VecDeque::pop_front) {
            Some(acknowledged) => {
                m.counts.matched += 1;
                let us = at.saturating_duration_since(acknowledged).as_micros() as u64;
                if let Some(h) = m.histogram.as_mut() {
                    record_us(h, us);
                }
            }
            None => m.early_webhooks.entry(customer).or_default().push_back(at),
        }
    }

    fn invalid(&self) {
        self.lock().counts.invalid_signatures += 1;
    }

    /// Whether the signature verifies over the raw body and the date is fresh.
    fn verifies(&self, date: &str, signature: &str, body: &[u8]) -> bool {
        let expected = sign(&self.secret, date, body);
        let fresh = httpdate::parse_http_date(date).is_ok_and(|sent| {
            let now = SystemTime::now();
            let skew = now
                .duration_since(sent)
                .or_else(|_| sent.duration_since(now))
                .unwrap_or(Duration::MAX);
            skew <= DATE_SKEW_MAX
        });
        fresh && constant_time_eq(expected.as_bytes(), signature.as_bytes())
    }
}

fn header<'a>(request: &'a HttpRequest, name: &str) -> &'a str {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn receive(
    sink: web::Data<WebhookSink>,
    request: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let at = Instant::now();
    let date = header(&request, "x-metronome-date");
    let signature = header(&request, "metronome-webhook-signature");
    if !sink.verifies(date, signature, &body) {
        sink.invalid();
        return HttpResponse::Unauthorized().finish();
    }
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    sink.webhook_arrived(
        json["id"].as_str().unwrap_or(""),
        json["type"].as_str().unwrap_or(""),
        json["properties"]["customer_id"].as_str().unwrap_or(""),
        at,
    );
    HttpResponse::Ok().finish()
}

/// Starts the receiver on `listen` in a thread of its own (one actix worker); returns the URL
/// to configure as the server's webhook destination. It runs until the process exits.
///
/// # Errors
/// When the address cannot be bound.
pub fn start(sink: Arc<WebhookSink>, listen: SocketAddr) -> Result<String, String> {
    let listener =
        TcpListener::bind(listen).map_err(|e| format!("webhook sink cannot bind {listen}: {e}"))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("webhook sink: {e}"))?;
    let data = web::Data::from(sink);
    spawn_server("bench-webhook-sink", move || {
        HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(1 << 20))
                .default_service(web::post().to(receive))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .map(|server| server.run())
    })?;
    Ok(format!("http://{address}/hooks"))
}

/// Runs the actix server that `build` makes on a thread and actix system of its own, until the
/// process exits.
///
/// # Errors
/// When the thread cannot be started or the server cannot be built.
pub fn spawn_server<F>(name: &str, build: F) -> Result<(), String>
where
    F: FnOnce() -> std::io::Result<actix_web::dev::Server> + Send + 'static,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                match build() {
                    Ok(server) => {
                        let _ = ready_tx.send(Ok(()));
                        let _ = server.await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
            });
        })
        .map_err(|e| format!("{name}: cannot start a thread: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| format!("{name}: the server thread ended"))?
        .map_err(|e| format!("{name}: {e}"))
}

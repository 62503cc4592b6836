//! Webhook delivery: the `WebhookActor` carries out the webhook entries of the outbox, at least
//! once, to the destinations configured for them. It owns the delivery schedule (an in-memory
//! heap rebuilt from the outbox at start), the per-destination concurrency bound, signing and the
//! retry policy (exponential backoff with jitter, capped, then a dead letter). It must not create
//! outbox entries, interpret webhook bodies or decide anything about money: customer actors
//! persist each entry (one per destination, keyed by `webhook_outbox_id`) before telling this
//! actor, so a crash anywhere leaves the entry pending and it is sent again after restart.
//!
//! The actor runs on its own arbiter so that a slow receiver never slows ingest. Each attempt
//! is a `POST` of the exact stored body bytes with a fresh `Date`/`X-Metronome-Date` and a fresh
//! `Metronome-Webhook-Signature` (see [`sign`]); the id and body never change between attempts.
//! Storage calls are synchronous RocksDB calls of a few microseconds, made from the actor.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, UNIX_EPOCH};

use actix::prelude::*;
use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::actors::clock::SharedClock;
use crate::actors::deliveries::{DELIVERED_PREFIX, DeliveredWebhook, delivered_cutoff};
use crate::actors::handles::{Mailbox, Placement};
use crate::actors::health::Health;
use crate::actors::outbox::{OUTBOX_VERSION, OutboxEffect, OutboxEntry};
use crate::domain::Id;
use crate::storage::{StorageError, Store, Uuid16, encode};

/// Per-attempt timeout: long enough for a receiver that does a little work before answering,
/// short enough that a hanging one does not hold a concurrency slot for long.
pub const TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Metronome's documented schedule: "first retry after about 1 s, doubling".
pub const FIRST_RETRY_MS_DEFAULT: i64 = 1_000;
/// Metronome retries every 15 minutes once the backoff reaches that interval.
pub const MAX_INTERVAL_MS_DEFAULT: i64 = 15 * 60 * 1000;
/// Retries stop 72 hours after the first attempt (SPEC section 4, as Metronome documents).
pub const GIVE_UP_AFTER_MS_DEFAULT: i64 = 72 * 60 * 60 * 1000;
/// Requests in flight to one destination at a time.
pub const CONCURRENCY_PER_DESTINATION_DEFAULT: usize = 16;

/// How often the schedule is checked for due retries by default. New entries and freed
/// concurrency slots are acted on at once; only retries wait for the tick, and their delays are
/// at least `first_retry_ms`, so 50 ms of extra latency is noise.
pub const SCHEDULE_CHECK_MS_DEFAULT: u64 = 50;
/// Delivered webhooks stay listed for three days.
pub const DELIVERED_RETENTION_MS_DEFAULT: i64 = 72 * 60 * 60 * 1000;
/// How often records of deliveries past their retention are deleted.
const DELIVERED_SWEEP_MS: i64 = 60_000;
/// Each retry delay is moved by up to this share of itself, so entries that failed together
/// (a receiver outage) do not come back together.
const JITTER_PERCENT: i64 = 20;
/// How much of a failed response's body is kept in `last_error` for the operator.
const ERROR_BODY_BYTES_MAX: usize = 256;
/// How much of a successful response's body is read so the connection can be reused; a larger
/// body is dropped unread (the connection is then closed, the delivery still counts).
const SUCCESS_BODY_BYTES_MAX: usize = 64 * 1024;
/// 9999-12-31T23:59:59Z, the last instant an HTTP-date can express.
const HTTP_DATE_MS_MAX: i64 = 253_402_300_799_000;

const USER_AGENT: &str = "Tollgate";
const HEADER_METRONOME_DATE: &str = "X-Metronome-Date";
const HEADER_SIGNATURE: &str = "Metronome-Webhook-Signature";

/// One webhook receiver and the secret its signatures are made with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub url: String,
    pub secret: String,
}

// Written by hand so that the secret never reaches a log line.
impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Destination")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The `webhooks` section of the config (absent fields take the defaults above).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    pub destinations: Vec<Destination>,
    /// Per attempt, from connect to the end of the response headers (and the bounded body
    /// read that follows).
    pub timeout_ms: u64,
    /// Delay before the first retry; each further retry doubles it.
    pub first_retry_ms: i64,
    /// Cap of the delay between two attempts.
    pub max_interval_ms: i64,
    /// An entry that still fails this long after it was created is dead-lettered.
    pub give_up_after_ms: i64,
    pub concurrency_per_destination: usize,
    /// How often the retry schedule is checked for due attempts.
    pub schedule_check_ms: u64,
    /// How long the record of a delivered webhook is kept for the operator's list.
    pub delivered_retention_ms: i64,
}

impl Default for WebhookSettings {
    fn default() -> WebhookSettings {
        WebhookSettings {
            destinations: Vec::new(),
            timeout_ms: TIMEOUT_MS_DEFAULT,
            first_retry_ms: FIRST_RETRY_MS_DEFAULT,
            max_interval_ms: MAX_INTERVAL_MS_DEFAULT,
            give_up_after_ms: GIVE_UP_AFTER_MS_DEFAULT,
            concurrency_per_destination: CONCURRENCY_PER_DESTINATION_DEFAULT,
            schedule_check_ms: SCHEDULE_CHECK_MS_DEFAULT,
            delivered_retention_ms: DELIVERED_RETENTION_MS_DEFAULT,
        }
    }
}

impl WebhookSettings {
    /// The settings with values that would stall delivery raised to the smallest workable ones:
    /// a zero timeout or concurrency would never deliver, a zero delay would spin.
    fn sanitized(mut self) -> WebhookSettings {
        self.timeout_ms = self.timeout_ms.max(1);
        self.first_retry_ms = self.first_retry_ms.max(1);
        self.max_interval_ms = self.max_interval_ms.max(self.first_retry_ms);
        self.give_up_after_ms = self.give_up_after_ms.max(0);
        self.concurrency_per_destination = self.concurrency_per_destination.max(1);
        self.schedule_check_ms = self.schedule_check_ms.max(1);
        self.delivered_retention_ms = self.delivered_retention_ms.max(0);
        self
    }

    fn secret_for(&self, url: &str) -> Option<&str> {
        self.destinations
            .iter()
            .find(|d| d.url == url)
            .map(|d| d.secret.as_str())
    }
}

/// Metronome's webhook signature: lowercase hex of HMAC-SHA256 keyed with the UTF-8 bytes of
/// `secret` over `date + "\n" + body`, where `date` is the `X-Metronome-Date` header sent with
/// the request and `body` the exact bytes sent.
/// A destination as metrics and lists show it: scheme, host, port and path, without user
/// info or query string (either may carry a credential).
/// A destination as a metric label: scheme, host and port only (`/metrics` needs no token, and
/// hooks like Slack's keep their secret in the path).
pub fn destination_origin(url: &str) -> String {
    let shown = shown_destination(url);
    match shown.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split('/').next().unwrap_or(rest);
            format!("{scheme}://{host}")
        }
        None => shown.split('/').next().unwrap_or_default().to_owned(),
    }
}

pub fn shown_destination(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    match without_query.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => without_query.to_owned(),
    }
}

pub fn sign(secret: &str, date: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        unreachable!("HMAC-SHA256 takes keys of any length")
    };
    mac.update(date.as_bytes());
    mac.update(b"\n");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Delivery counters, shared with `/metrics`. Counters only grow; `pending` and `in_flight` are
/// gauges.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Attempts by destination (without user info or query) and status (`error` for none).
    pub delivery: crate::histogram::LabeledHistograms,
    delivered: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    dead_lettered: AtomicU64,
    redriven: AtomicU64,
    pending: AtomicU64,
    in_flight: AtomicU64,
}

/// A point-in-time copy of [`WebhookStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WebhookStatsSnapshot {
    /// Entries a destination accepted with a 2xx.
    pub delivered: u64,
    /// HTTP attempts started.
    pub attempts: u64,
    /// Failed attempts (status outside 2xx, connection error, timeout); each one is followed
    /// by a retry or a dead letter.
    pub retries: u64,
    /// Entries moved to the dead letters (gave up, or destination no longer configured).
    pub dead_lettered: u64,
    /// Dead letters moved back to the outbox by an operator.
    pub redriven: u64,
    /// Webhook entries waiting for delivery, including those in flight.
    pub pending: u64,
    /// Requests currently in flight, all destinations.
    pub in_flight: u64,
}

impl WebhookStats {
    pub fn snapshot(&self) -> WebhookStatsSnapshot {
        WebhookStatsSnapshot {
            delivered: self.delivered.load(Relaxed),
            attempts: self.attempts.load(Relaxed),
            retries: self.retries.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            redriven: self.redriven.load(Relaxed),
            pending: self.pending.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
        }
    }
}

pub use crate::actors::handles::Enqueue;

/// Moves a webhook dead letter back to the outbox and schedules it at once, with a fresh retry
/// window (operator re-drive). Answers whether a webhook dead letter with this id existed.
///
/// # Errors
/// Storage errors reading or moving the dead letter, or decoding it.
#[derive(Debug, Message)]
#[rtype(result = "Result<bool, StorageError>")]
pub struct Redrive(pub Uuid16);

/// Where a tracked entry is in its delivery cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting in the heap for `entry.next_attempt_at_ms`.
    Scheduled,
    /// Due, waiting in its destination's queue for a free concurrency slot.
    Ready,
    InFlight,
}

struct Tracked {
    entry: OutboxEntry,
    /// The destination URL, copied out of `entry.effect`.
    url: String,
    phase: Phase,
}

#[derive(Default)]
struct DestinationQueue {
    ready: VecDeque<Uuid16>,
    in_flight: usize,
}

/// What one HTTP attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered { status: u16 },
    /// Any other status, a timeout or a connection error.
    Failed { status: Option<u16>, error: String },
}

/// One signed attempt, ready to send: the exact stored body and the headers made for this
/// attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookRequest {
    pub url: String,
    /// The HTTP-date sent as `Date` and `X-Metronome-Date`.
    pub date: String,
    pub signature: String,
    pub body: Vec<u8>,
}

pub type DeliveryFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;

/// How attempts reach receivers: HTTP in production ([`HttpTransport`]); tests and the
/// simulation replace it with a scripted receiver (outages, slow answers, timeouts).
pub trait WebhookTransport: Send + Sync + 'static {
    /// Sends one attempt. Cancel-safe: dropping the future abandons the attempt.
    fn deliver(&self, request: WebhookRequest) -> DeliveryFuture;
}

/// The production transport: a `POST` with reqwest, no redirects, bounded body reads.
pub struct HttpTransport {
    client: reqwest::Client,
    timeout_ms: u64,
}

impl HttpTransport {
    pub fn new(settings: &WebhookSettings) -> HttpTransport {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            // A redirect is not an acknowledgement: a 3xx is retried like any status
            // outside 2xx, and a POST must not silently become a GET elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(settings.concurrency_per_destination)
            .build()
            // Building fails only when the TLS backend cannot initialise; with rustls and
            // its bundled roots that is a broken build, not a runtime condition.
            .expect("building the webhook HTTP client");
        HttpTransport {
            client,
            timeout_ms: settings.timeout_ms,
        }
    }
}

impl WebhookTransport for HttpTransport {
    fn deliver(&self, request: WebhookRequest) -> DeliveryFuture {
        let builder = self
            .client
            .post(&request.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::USER_AGENT, USER_AGENT)
            .header(reqwest::header::DATE, &request.date)
            .header(HEADER_METRONOME_DATE, &request.date)
            .header(HEADER_SIGNATURE, request.signature)
            .body(request.body);
        Box::pin(send(builder, self.timeout_ms))
    }
}

pub struct WebhookActor {
    store: Store,
    settings: WebhookSettings,
    clock: SharedClock,
    stats: Arc<WebhookStats>,
    transport: Arc<dyn WebhookTransport>,
    /// Storage failures stop the engine (fail-stop).
    health: Arc<Health>,
    /// Every pending webhook entry this actor knows, by outbox id.
    entries: FxHashMap<Uuid16, Tracked>,
    /// Due times of scheduled entries, earliest first. Stale items (the entry moved on) are
    /// skipped when popped, which is cheaper than removing them.
    schedule: BinaryHeap<Reverse<(i64, Uuid16)>>,
    destinations: FxHashMap<String, DestinationQueue>,
    /// Whether the pending entries of the outbox have been loaded; retried on each tick until
    /// a load succeeds.
    loaded: bool,
    /// Retry jitter (seeded in the simulation, from the OS otherwise).
    rng: StdRng,
    /// When delivered records were last swept (engine clock); `None` before the first sweep.
    last_sweep_ms: Option<i64>,
}

/// What a webhook actor is made of.
pub struct WebhookParts {
    pub store: Store,
    pub settings: WebhookSettings,
    pub clock: SharedClock,
    pub stats: Arc<WebhookStats>,
    /// `None`: HTTP.
    pub transport: Option<Arc<dyn WebhookTransport>>,
    pub health: Arc<Health>,
    pub placement: Placement,
    /// Seeds the retry jitter; `None` seeds it from the OS.
    pub seed: Option<u64>,
}

impl WebhookActor {
    /// Starts the actor on a new arbiter. Once running it loads every pending webhook entry
    /// of the outbox (payment entries are left to the payment actor) and schedules them.
    ///
    /// The actor, and its arbiter thread, stop when every [`Addr`] to it has been dropped.
    /// Attempts in flight then are abandoned; their entries stay pending and are sent again by
    /// the next start.
    #[must_use = "the actor stops when every address to it is dropped"]
    pub fn start(
        store: Store,
        settings: WebhookSettings,
        clock: SharedClock,
        stats: Arc<WebhookStats>,
    ) -> Addr<WebhookActor> {
        let health = Arc::new(Health::default());
        WebhookActor::start_with(store, settings, clock, stats, None, health)
    }

    /// [`WebhookActor::start`] with another transport (`None`: HTTP) and the engine's health,
    /// which a storage failure here stops.
    #[must_use = "the actor stops when every address to it is dropped"]
    pub fn start_with(
        store: Store,
        settings: WebhookSettings,
        clock: SharedClock,
        stats: Arc<WebhookStats>,
        transport: Option<Arc<dyn WebhookTransport>>,
        health: Arc<Health>,
    ) -> Addr<WebhookActor> {
        let (addr, mailbox) = Mailbox::new();
        let parts = WebhookParts {
            store,
            settings,
            clock,
            stats,
            transport,
            health,
            placement: Placement::Threads,
            seed: None,
        };
        WebhookActor::start_on(mailbox, parts);
        addr
    }

    /// [`WebhookActor::start_with`] on a mailbox made earlier (the engine hands out the
    /// address before the actor runs).
    pub fn start_on(mailbox: Mailbox<WebhookActor>, parts: WebhookParts) {
        let WebhookParts {
            store,
            settings,
            clock,
            stats,
            transport,
            health,
            placement,
            seed,
        } = parts;
        let settings = settings.sanitized();
        mailbox.start(placement, move |_ctx| {
            let transport = transport.unwrap_or_else(|| Arc::new(HttpTransport::new(&settings)));
            WebhookActor {
                store,
                settings,
                clock,
                stats,
                transport,
                health,
                entries: FxHashMap::default(),
                schedule: BinaryHeap::new(),
                destinations: FxHashMap::default(),
                loaded: false,
                rng: seed.map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64),
                last_sweep_ms: None,
            }
        })
    }

    fn load_pending(&mut self) {
        let pending = match self.store.outbox_pending() {
            Ok(pending) => pending,
            // Storage failures are fail-stop (SPEC 2.1), as for the payment actor's read: the
            // restart loads them again.
            Err(e) => {
                self.health.fail_stop("webhook outbox read", &e);
                return;
            }
        };
        self.loaded = true;
        let mut webhooks = 0usize;
        for (id, value) in pending {
            match OutboxEntry::decode(&value) {
                Ok(entry) => {
                    if self.track(id, entry) {
                        webhooks += 1;
                    }
                }
                // Not ours to touch: it may be another actor's entry in a format this build
                // does not read.
                Err(e) => {
                    tracing::error!(id = %Id::from_bytes(id), error = %e, "undecodable outbox entry skipped");
                }
            }
        }
        tracing::info!(pending = webhooks, "webhook outbox loaded");
    }

    /// Starts tracking a webhook entry. Returns false (and does nothing) for payment entries
    /// and for ids already tracked.
    fn track(&mut self, id: Uuid16, entry: OutboxEntry) -> bool {
        let OutboxEffect::Webhook {
            destination_url, ..
        } = &entry.effect
        else {
            return false;
        };
        if self.entries.contains_key(&id) {
            return false;
        }
        let url = destination_url.clone();
        self.schedule.push(Reverse((entry.next_attempt_at_ms, id)));
        self.entries.insert(
            id,
            Tracked {
                entry,
                url,
                phase: Phase::Scheduled,
            },
        );
        self.publish_pending();
        true
    }

    fn untrack(&mut self, id: Uuid16) -> Option<Tracked> {
        let tracked = self.entries.remove(&id);
        self.publish_pending();
        tracked
    }

    fn publish_pending(&self) {
        self.stats.pending.store(self.entries.len() as u64, Relaxed);
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if !ctx.connected() {
            tracing::info!("every webhook actor address dropped; stopping");
            ctx.stop();
            return;
        }
        if !self.loaded {
            self.load_pending();
        }
        self.sweep_delivered();
        self.pump(ctx);
    }

    /// Deletes the records of deliveries past `delivered_retention_ms`, at most once a minute.
    fn sweep_delivered(&mut self) {
        let now_ms = self.clock.now_ms();
        // A clock stepped back sweeps at once rather than waiting for it to catch up.
        if self
            .last_sweep_ms
            .is_some_and(|last| (0..DELIVERED_SWEEP_MS).contains(&now_ms.saturating_sub(last)))
        {
            return;
        }
        self.last_sweep_ms = Some(now_ms);
        let cutoff = now_ms.saturating_sub(self.settings.delivered_retention_ms);
        let end = delivered_cutoff(cutoff);
        if let Err(e) = self.store.meta_delete_range_lazily(DELIVERED_PREFIX, &end) {
            self.health.fail_stop("delivered webhook sweep", &e);
        }
    }

    /// Moves due entries to their destinations' queues and starts as many attempts as the
    /// concurrency bound allows.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let now_ms = self.clock.now_ms();
        while let Some(&Reverse((due_ms, id))) = self.schedule.peek() {
            if due_ms > now_ms {
                break;
            }
            self.schedule.pop();
            let Some(tracked) = self.entries.get_mut(&id) else {
                continue;
            };
            if tracked.phase != Phase::Scheduled || tracked.entry.next_attempt_at_ms != due_ms {
                continue;
            }
            tracked.phase = Phase::Ready;
            self.destinations
                .entry(tracked.url.clone())
                .or_default()
                .ready
                .push_back(id);
        }
        let limit = self.settings.concurrency_per_destination;
        let startable: Vec<String> = self
            .destinations
            .iter()
            .filter(|(_, q)| !q.ready.is_empty() && q.in_flight < limit)
            .map(|(url, _)| url.clone())
            .collect();
        for url in startable {
            while let Some(queue) = self.destinations.get_mut(&url)
                && queue.in_flight < limit
                && let Some(id) = queue.ready.pop_front()
            {
                self.start_attempt(id, ctx);
            }
        }
    }

    fn start_attempt(&mut self, id: Uuid16, ctx: &mut Context<Self>) {
        let Some(tracked) = self.entries.get_mut(&id) else {
            return;
        };
        let OutboxEffect::Webhook { body, .. } = &tracked.entry.effect else {
            return;
        };
        let Some(secret) = self.settings.secret_for(&tracked.url) else {
            tracked.entry.last_error = Some(format!(
                "destination {} is no longer configured",
                tracked.url
            ));
            self.dead_letter(id);
            return;
        };
        let date = http_date(self.clock.now_ms());
        let signature = sign(secret, &date, body);
        let request = WebhookRequest {
            url: tracked.url.clone(),
            date,
            signature,
            body: body.clone(),
        };
        tracked.phase = Phase::InFlight;
        let attempt = tracked.entry.attempts.saturating_add(1);
        tracing::debug!(id = %Id::from_bytes(id), url = %shown_destination(&tracked.url), attempt, "webhook attempt");
        if let Some(queue) = self.destinations.get_mut(&tracked.url) {
            queue.in_flight += 1;
        }
        self.stats.attempts.fetch_add(1, Relaxed);
        self.stats.in_flight.fetch_add(1, Relaxed);
        let url = tracked.url.clone();
        // Cancel-safe: if the actor stops, the future is dropped with the request; the entry
        // is still pending in the outbox and the next start sends it again.
        let attempt = self.transport.deliver(request);
        let started = std::time::Instant::now();
        ctx.spawn(attempt.into_actor(self).map(move |outcome, act, ctx| {
            let status = match &outcome {
                Outcome::Delivered { status }
                | Outcome::Failed {
                    status: Some(status),
                    ..
                } => status.to_string(),
                Outcome::Failed { status: None, .. } => "error".to_owned(),
            };
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            act.stats.delivery.observe_micros(
                &[
                    ("destination", &destination_origin(&url)),
                    ("status", &status),
                ],
                micros,
            );
            act.finish(id, &url, outcome, ctx)
        }));
    }

    fn finish(&mut self, id: Uuid16, url: &str, outcome: Outcome, ctx: &mut Context<Self>) {
        self.stats.in_flight.fetch_sub(1, Relaxed);
        if let Some(queue) = self.destinations.get_mut(url) {
            queue.in_flight = queue.in_flight.saturating_sub(1);
        }
        match outcome {
            Outcome::Delivered { status } => self.delivered(id, status),
            Outcome::Failed { status, error } => self.failed(id, status, error),
        }
        self.pump(ctx);
    }

    fn delivered(&mut self, id: Uuid16, status: u16) {
        let Some(tracked) = self.entries.get(&id) else {
            return;
        };
        let OutboxEffect::Webhook {
            webhook_id,
            event_type,
            destination_url,
            ..
        } = &tracked.entry.effect
        else {
            return;
        };
        let record = DeliveredWebhook {
            id,
            webhook_id: *webhook_id,
            event_type: event_type.clone(),
            destination_url: destination_url.clone(),
            attempts: tracked.entry.attempts.saturating_add(1),
            status,
            created_at_ms: tracked.entry.created_at_ms,
            delivered_at_ms: self.clock.now_ms(),
        };
        // Without an fsync of its own: a webhook lost with its mark in a power loss is sent
        // again with the same id, which receivers must accept anyway (at least once).
        let marked = record.encode().and_then(|value| {
            self.store
                .mark_delivered_lazily_with(id, tracked.entry.cause, (&record.key(), &value))
        });
        match marked {
            Ok(()) => {
                let attempt = record.attempts;
                tracing::debug!(id = %Id::from_bytes(id), url = %shown_destination(&tracked.url), status, attempt, "webhook delivered");
                self.untrack(id);
                self.stats.delivered.fetch_add(1, Relaxed);
            }
            // The receiver has it, but the outbox still says pending: sending it again later
            // is the at-least-once promise (the receiver dedupes on the webhook id).
            Err(e) => {
                self.health.fail_stop("webhook delivery record", &e);
                self.failed(id, Some(status), format!("persisting the delivery: {e}"));
            }
        }
    }

    fn failed(&mut self, id: Uuid16, status: Option<u16>, error: String) {
        let Some(tracked) = self.entries.get_mut(&id) else {
            return;
        };
        self.stats.retries.fetch_add(1, Relaxed);
        let now_ms = self.clock.now_ms();
        let entry = &mut tracked.entry;
        entry.attempts = entry.attempts.saturating_add(1);
        entry.last_error = Some(error);
        entry.last_status = status;
        let delay_ms = retry_delay_ms(&self.settings, entry.attempts, &mut self.rng);
        let deadline_ms = entry
            .created_at_ms
            .saturating_add(self.settings.give_up_after_ms);
        if now_ms >= deadline_ms {
            tracing::warn!(
                id = %Id::from_bytes(id), url = %shown_destination(&tracked.url), status, attempt = entry.attempts,
                error = entry.last_error.as_deref().unwrap_or_default(),
                "webhook attempt failed; giving up"
            );
            self.dead_letter(id);
            return;
        }
        // The last attempt happens at the deadline rather than up to a full interval later.
        entry.next_attempt_at_ms = now_ms.saturating_add(delay_ms).min(deadline_ms);
        tracked.phase = Phase::Scheduled;
        tracing::warn!(
            id = %Id::from_bytes(id), url = %shown_destination(&tracked.url), status, attempt = entry.attempts,
            error = entry.last_error.as_deref().unwrap_or_default(),
            retry_in_ms = entry.next_attempt_at_ms - now_ms,
            "webhook attempt failed"
        );
        let next_ms = entry.next_attempt_at_ms;
        // Without an fsync of its own: the attempt count only paces retries.
        match encode(OUTBOX_VERSION, &*entry).and_then(|v| self.store.update_outbox_lazily(id, &v))
        {
            Ok(true) => {}
            Ok(false) => {
                // Someone else delivered or dead-lettered it meanwhile; nothing left to do.
                tracing::debug!(id = %Id::from_bytes(id), "webhook no longer pending");
                self.untrack(id);
                return;
            }
            // The retry still happens; only the bookkeeping a restart would see is stale.
            Err(e) => self.health.fail_stop("webhook retry state", &e),
        }
        self.schedule.push(Reverse((next_ms, id)));
    }

    /// Moves a tracked entry, with its current bookkeeping, to the dead letters.
    fn dead_letter(&mut self, id: Uuid16) {
        let Some(tracked) = self.untrack(id) else {
            return;
        };
        let moved = encode(OUTBOX_VERSION, &tracked.entry)
            .and_then(|value| self.store.dead_letter(id, &value));
        match moved {
            Ok(true) => {
                self.stats.dead_lettered.fetch_add(1, Relaxed);
                tracing::warn!(
                    id = %Id::from_bytes(id), url = %shown_destination(&tracked.url), attempts = tracked.entry.attempts,
                    reason = tracked.entry.last_error.as_deref().unwrap_or_default(),
                    "webhook dead-lettered"
                );
            }
            Ok(false) => {
                tracing::debug!(id = %Id::from_bytes(id), "webhook no longer pending");
            }
            // Still pending on disk: keep it scheduled, so the next failure tries again.
            Err(e) => {
                self.health.fail_stop("webhook dead letter", &e);
                let mut tracked = tracked;
                tracked.entry.next_attempt_at_ms = self
                    .clock
                    .now_ms()
                    .saturating_add(self.settings.max_interval_ms);
                tracked.phase = Phase::Scheduled;
                self.schedule
                    .push(Reverse((tracked.entry.next_attempt_at_ms, id)));
                self.entries.insert(id, tracked);
                self.publish_pending();
            }
        }
    }

    fn redrive(&mut self, id: Uuid16) -> Result<bool, StorageError> {
        let Some(value) = self.store.dead_letter_value(id)? else {
            return Ok(false);
        };
        let mut entry = OutboxEntry::decode(&value)?;
        if !matches!(entry.effect, OutboxEffect::Webhook { .. }) {
            // A payment dead letter is the payment actor's to re-drive.
            return Ok(false);
        }
        // A fresh retry window: with the old `created_at_ms` the first failure would
        // dead-letter it again at once. `last_error` and `last_status` are kept as history.
        let now_ms = self.clock.now_ms();
        entry.created_at_ms = now_ms;
        entry.attempts = 0;
        entry.next_attempt_at_ms = now_ms;
        // One batch: a crash can never leave it pending with its old, spent window.
        if !self
            .store
            .redrive_dead_letter_as(id, &encode(OUTBOX_VERSION, &entry)?)?
        {
            return Ok(false);
        }
        self.stats.redriven.fetch_add(1, Relaxed);
        tracing::info!(id = %Id::from_bytes(id), "webhook re-driven");
        self.track(id, entry);
        Ok(true)
    }
}

impl Actor for WebhookActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.load_pending();
        let every = Duration::from_millis(self.settings.schedule_check_ms);
        ctx.run_interval(every, |act, ctx| act.tick(ctx));
        self.pump(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // The arbiter was made for this actor alone.
        Arbiter::current().stop();
    }
}

impl Handler<Enqueue> for WebhookActor {
    type Result = ();

    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) {
        let offered: Vec<(Uuid16, OutboxEntry)> = msg
            .0
            .into_iter()
            .filter(|(id, entry)| {
                !self.entries.contains_key(id)
                    && matches!(entry.effect, OutboxEffect::Webhook { .. })
            })
            .collect();
        // Callers offer every effect they persisted, including ids that `put_outbox` skipped
        // because they were delivered or dead-lettered before (a replay). Only pending ones may
        // be sent: one batched read, no write (a synced rewrite here used to hold the outbox
        // lock through an fsync per webhook, stalling every partition's `put_outbox`).
        let ids: Vec<Uuid16> = offered.iter().map(|(id, _)| *id).collect();
        let checked = if ids.is_empty() {
            Ok(Vec::new())
        } else {
            self.store.outbox_contains(&ids)
        };
        let pending = match checked {
            Ok(pending) => pending,
            // Storage failures are fail-stop (SPEC 2.1); until the process stops, sending one
            // more time than needed beats not sending (the restart finds them pending).
            Err(e) => {
                self.health.fail_stop("enqueued webhook check", &e);
                vec![true; ids.len()]
            }
        };
        for ((id, entry), pending) in offered.into_iter().zip(pending) {
            if pending {
                self.track(id, entry);
            } else {
                tracing::debug!(id = %Id::from_bytes(id), "enqueued webhook is not pending; skipped");
            }
        }
        self.pump(ctx);
    }
}

impl Handler<Redrive> for WebhookActor {
    type Result = Result<bool, StorageError>;

    fn handle(&mut self, msg: Redrive, ctx: &mut Context<Self>) -> Self::Result {
        let redriven = self.redrive(msg.0)?;
        self.pump(ctx);
        Ok(redriven)
    }
}

/// The delay before the next attempt after `attempts` failed ones (>= 1): `first_retry_ms`
/// doubled per earlier failure, capped at `max_interval_ms`, moved by up to ±[`JITTER_PERCENT`]
/// and never above the cap nor below 1 ms.
fn retry_delay_ms(settings: &WebhookSettings, attempts: u32, rng: &mut impl Rng) -> i64 {
    let doublings = attempts.saturating_sub(1).min(62);
    let base = settings
        .first_retry_ms
        .saturating_mul(1i64 << doublings)
        .min(settings.max_interval_ms);
    let spread = base / 100 * JITTER_PERCENT + base % 100 * JITTER_PERCENT / 100;
    let jitter = rng.random_range(-spread..=spread);
    base.saturating_add(jitter)
        .clamp(1, settings.max_interval_ms.max(1))
}

/// `now_ms` as an HTTP-date (`Mon, 02 Jan 2006 22:04:05 GMT`), clamped to the representable
/// range.
fn http_date(now_ms: i64) -> String {
    let ms = u64::try_from(now_ms.clamp(0, HTTP_DATE_MS_MAX)).unwrap_or(0);
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Sends one attempt and classifies the answer.
async fn send(request: reqwest::RequestBuilder, timeout_ms: u64) -> Outcome {
    match request.send().await {
        Ok(mut response) => {
            let status = response.status();
            if status.is_success() {
                // Read a small body to the end so the connection goes back to the pool.
                read_prefix(&mut response, SUCCESS_BODY_BYTES_MAX).await;
                return Outcome::Delivered {
                    status: status.as_u16(),
                };
            }
            let prefix = read_prefix(&mut response, ERROR_BODY_BYTES_MAX).await;
            let mut error = format!("status {status}");
            if !prefix.is_empty() {
                error.push_str(": ");
                error.push_str(String::from_utf8_lossy(&prefix).trim());
            }
            Outcome::Failed {
                status: Some(status.as_u16()),
                error,
            }
        }
        Err(e) => Outcome::Failed {
            status: None,
            error: describe(&e, timeout_ms),
        },
    }
}

/// Up to `max` bytes of the response body; whatever fails while reading ends the prefix.
async fn read_prefix(response: &mut reqwest::Response, max: usize) -> Vec<u8> {
    let mut prefix = Vec::new();
    while prefix.len() < max {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = max - prefix.len();
                prefix.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    prefix
}

/// A one-line error with its causes (reqwest's own message omits the interesting part, e.g.
/// "connection refused").
fn describe(e: &reqwest::Error, timeout_ms: u64) -> String {
    if e.is_timeout() {
        return format!("timed out after {timeout_ms} ms");
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
#[path = "webhook_tests.rs"]
mod tests;

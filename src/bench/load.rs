//! The load generator: `connections` tasks on a multi-threaded tokio runtime sharing one HTTP/1.1
//! connection pool of that size, sending `POST /v1/ingest` batches.
//!
//! - Closed loop (`--max`): each task sends its next batch as soon as the previous one is
//!   answered; latency is measured from the send.
//! - Open loop (`--rate`): batch `k` is due at `start + k * batch / rate`. A free task takes the
//!   next due batch, waits for its time if it is early, and sends it. Latency is always measured
//!   from the time the batch was due: when every task is busy (the server is slow), batches go
//!   out late and that wait counts, so a slow server cannot hide its queueing (no coordinated
//!   omission). tokio timers tick per millisecond and fire on the first tick at or after their
//!   deadline, so a task aims half a tick early: its send lands within about ±0.5 ms of the due
//!   time instead of up to 1 ms late on every batch.
//!
//! Events go to customers drawn by the [`CustomerSampler`]; a `--duplicates` share re-sends a
//! `transaction_id` this task already had acknowledged. For runs against Tollgate, every
//! acknowledged unique event is counted per customer ([`SpendTracker`]) and the acknowledgement
//! time of each crossing is handed to the webhook sink.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::population::{CustomerSampler, SpendTracker};
use super::report::{new_histogram, record_us};
use super::setup::now_ms;
use super::sink::WebhookSink;
use crate::domain::Timestamp;

/// Acknowledged events each task remembers for re-sending as duplicates.
const DUPLICATE_RING_EVENTS: usize = 4096;
const PROGRESS_TICK: Duration = Duration::from_millis(250);
/// Half of tokio's timer resolution (see the module comment).
const TIMER_HALF_TICK: Duration = Duration::from_micros(500);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Closed loop: as fast as the server answers.
    Max,
    /// Open loop at this many offered events per second.
    Rate(f64),
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Max => "max",
            Mode::Rate(_) => "rate",
        }
    }
}

/// Who receives the events, and how they are chosen.
pub struct Workload {
    pub aliases: Vec<String>,
    pub sampler: CustomerSampler,
}

/// Crossing bookkeeping for runs against Tollgate (none for the null server).
#[derive(Clone)]
pub struct Tracking {
    pub tracker: Arc<SpendTracker>,
    pub sink: Arc<WebhookSink>,
}

pub struct LoadSpec {
    pub label: String,
    pub base: String,
    pub token: Option<String>,
    pub mode: Mode,
    pub connections: usize,
    pub batch: usize,
    pub duration: Duration,
    pub duplicates: f64,
    pub timeout: Duration,
    /// Closed loop: after a 429, wait the server's `retry-after-ms` (at most
    /// [`RETRY_AFTER_MAX`]) before the next batch, as Metronome's SDK does.
    pub honour_retry_after: bool,
    /// Makes this run's transaction ids unique (`<prefix><task>-<n>`).
    pub transaction_prefix: String,
    pub seed: u64,
}

/// What one run measured on the client side.
pub struct LoadOutcome {
    pub offered_events_per_s: f64,
    pub accepted_events_per_s: f64,
    pub sent_events: u64,
    pub accepted_events: u64,
    /// Acknowledged events with a transaction id not sent before (not `--duplicates` re-sends).
    pub acknowledged_unique_events: u64,
    pub unsent_requests: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    pub errors_by_status: BTreeMap<String, u64>,
}

/// Counters the progress bar reads while the run goes.
#[derive(Default)]
struct Live {
    accepted_events: AtomicU64,
    errors: AtomicU64,
    /// Set when every task has finished: the progress bar clears itself and stops.
    done: AtomicBool,
}

struct Shared {
    spec: LoadSpec,
    client: reqwest::Client,
    url: String,
    authorization: Option<String>,
    workload: Arc<Workload>,
    tracking: Option<Tracking>,
    start: Instant,
    deadline: Instant,
    /// Open loop: the next due batch, how far apart batches are due, and how many fit the run.
    next_slot: AtomicU64,
    interval: Duration,
    slots: u64,
    live: Live,
}

#[derive(Default)]
struct TaskResult {
    latency: Option<Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    sent_events: u64,
    sent_requests: u64,
    accepted_events: u64,
    acknowledged_unique_events: u64,
    last_ack: Option<Instant>,
}

/// Runs the load described by `spec` and returns what it measured.
///
/// # Errors
/// When the HTTP client cannot be built.
pub async fn run(
    spec: LoadSpec,
    workload: Arc<Workload>,
    tracking: Option<Tracking>,
) -> Result<LoadOutcome, String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(spec.connections)
        .tcp_nodelay(true)
        .timeout(spec.timeout)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let duration = spec.duration;
    let (interval, slots) = match spec.mode {
        Mode::Max => (Duration::ZERO, 0),
        Mode::Rate(rate) => {
            let requests_per_s = rate / spec.batch as f64;
            let slots = (duration.as_secs_f64() * requests_per_s).floor().max(1.0) as u64;
            (Duration::from_secs_f64(1.0 / requests_per_s), slots)
        }
    };
    let start = Instant::now();
    let shared = Arc::new(Shared {
        url: format!("{}/v1/ingest", spec.base.trim_end_matches('/')),
        authorization: spec.token.as_ref().map(|t| format!("Bearer {t}")),
        client,
        workload,
        tracking,
        start,
        deadline: start + duration,
        next_slot: AtomicU64::new(0),
        interval,
        slots,
        live: Live::default(),
        spec,
    });
    let progress = tokio::spawn(show_progress(shared.clone()));
    let tasks: Vec<_> = (0..shared.spec.connections)
        .map(|task| tokio::spawn(send_batches(shared.clone(), task)))
        .collect();
    let mut latency = new_histogram();
    let mut result = TaskResult::default();
    for task in tasks {
        let Ok(r) = task.await else { continue };
        if let Some(h) = &r.latency {
            let _ = latency.add(h);
        }
        for (status, n) in r.errors {
            *result.errors.entry(status).or_default() += n;
        }
        result.sent_events += r.sent_events;
        result.sent_requests += r.sent_requests;
        result.accepted_events += r.accepted_events;
        result.acknowledged_unique_events += r.acknowledged_unique_events;
        result.last_ack = result.last_ack.max(r.last_ack);
    }
    shared.live.done.store(true, Ordering::Relaxed);
    let _ = progress.await;
    // Requests answered after the duration still count, over the time they took.
    let elapsed = result
        .last_ack
        .map_or(duration, |last| last.duration_since(start).max(duration));
    let seconds = elapsed.as_secs_f64();
    let (offered, unsent) = match shared.spec.mode {
        Mode::Max => (result.sent_events as f64 / seconds, 0),
        // What the schedule held (the requested rate, rounded to whole batches).
        Mode::Rate(_) => (
            (slots * shared.spec.batch as u64) as f64 / duration.as_secs_f64(),
            slots.saturating_sub(result.sent_requests),
        ),
    };
    Ok(LoadOutcome {
        offered_events_per_s: offered,
        accepted_events_per_s: result.accepted_events as f64 / seconds,
        sent_events: result.sent_events,
        accepted_events: result.accepted_events,
        acknowledged_unique_events: result.acknowledged_unique_events,
        unsent_requests: unsent,
        elapsed,
        latency,
        errors_by_status: result.errors,
    })
}

async fn show_progress(shared: Arc<Shared>) {
    let total_ms = shared.spec.duration.as_millis() as u64;
    let bar = ProgressBar::new(total_ms);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(shared.spec.label.clone());
    let mut previous = (Instant::now(), 0u64);
    while !shared.live.done.load(Ordering::Relaxed) {
        tokio::time::sleep(PROGRESS_TICK).await;
        let now = Instant::now();
        let accepted = shared.live.accepted_events.load(Ordering::Relaxed);
        let rate = (accepted - previous.1) as f64 / now.duration_since(previous.0).as_secs_f64();
        previous = (now, accepted);
        bar.set_position((now.duration_since(shared.start).as_millis() as u64).min(total_ms));
        bar.set_message(format!(
            "{rate:>9.0} events/s accepted, {} errors",
            shared.live.errors.load(Ordering::Relaxed)
        ));
    }
    bar.finish_and_clear();
}

/// One event of a batch: the customer and the task-local number of its transaction id, and
/// whether it is new (not a re-sent duplicate).
#[derive(Clone, Copy)]
struct Sent {
    customer: u32,
    number: u64,
    new: bool,
}

async fn send_batches(shared: Arc<Shared>, task: usize) -> TaskResult {
    let spec = &shared.spec;
    let mut rng = SmallRng::seed_from_u64(spec.seed ^ (task as u64).wrapping_mul(0x9E37_79B9));
    let mut result = TaskResult {
        latency: Some(new_histogram()),
        ..TaskResult::default()
    };
    let mut ring: VecDeque<(u32, u64)> = VecDeque::with_capacity(DUPLICATE_RING_EVENTS);
    let mut next_number = 0u64;
    let mut events: Vec<Sent> = Vec::with_capacity(spec.batch);
    let mut body = String::with_capacity(spec.batch * 160);
    loop {
        // When this batch counts from: its due time (open loop) or now (closed loop).
        let from = match spec.mode {
            Mode::Max => {
                let now = Instant::now();
                if now >= shared.deadline {
                    break;
                }
                now
            }
            Mode::Rate(_) => {
                let slot = shared.next_slot.fetch_add(1, Ordering::Relaxed);
                if slot >= shared.slots {
                    break;
                }
                let due = shared.start + shared.interval.mul_f64(slot as f64);
                let now = Instant::now();
                if now >= shared.deadline {
                    // Behind schedule at the end of the run: the rest is reported as unsent.
                    break;
                }
                if due > now + TIMER_HALF_TICK {
                    tokio::time::sleep_until((due - TIMER_HALF_TICK).into()).await;
                }
                due
            }
        };
        events.clear();
        for _ in 0..spec.batch {
            let duplicate =
                spec.duplicates > 0.0 && !ring.is_empty() && rng.random::<f64>() < spec.duplicates;
            let sent = if duplicate {
                let (customer, number) = ring[rng.random_range(0..ring.len())];
                Sent {
                    customer,
                    number,
                    new: false,
                }
            } else {
                next_number += 1;
                Sent {
                    customer: shared.workload.sampler.sample(&mut rng) as u32,
                    number: next_number,
                    new: true,
                }
            };
            events.push(sent);
        }
        write_batch(&mut body, &shared, task, &events);
        let mut request = shared
            .client
            .post(&shared.url)
            .header("content-type", "application/json")
            .body(std::mem::replace(
                &mut body,
                String::with_capacity(spec.batch * 160),
            ));
        if let Some(authorization) = &shared.authorization {
            request = request.header("authorization", authorization);
        }
        result.sent_requests += 1;
        result.sent_events += events.len() as u64;
        let mut pause = None;
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                if status == 429 && spec.honour_retry_after && matches!(spec.mode, Mode::Max) {
                    pause = retry_after(response.headers());
                }
                // Read the body so the connection goes back to the pool.
                let _ = response.bytes().await;
                Ok(status)
            }
            Err(e) if e.is_timeout() => Err("timeout"),
            Err(_) => Err("connection"),
        };
        let acknowledged = Instant::now();
        match outcome {
            Ok(200) => {
                if let Some(h) = result.latency.as_mut() {
                    record_us(h, acknowledged.duration_since(from).as_micros() as u64);
                }
                result.accepted_events += events.len() as u64;
                result.last_ack = Some(acknowledged);
                shared
                    .live
                    .accepted_events
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                for event in events.iter().filter(|e| e.new) {
                    result.acknowledged_unique_events += 1;
                    if ring.len() == DUPLICATE_RING_EVENTS {
                        ring.pop_front();
                    }
                    ring.push_back((event.customer, event.number));
                    if let Some(tracking) = &shared.tracking
                        && tracking.tracker.acknowledge(event.customer as usize)
                    {
                        tracking
                            .sink
                            .crossing_acknowledged(event.customer, acknowledged);
                    }
                }
            }
            Ok(status) => {
                *result.errors.entry(status.to_string()).or_default() += 1;
                shared.live.errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(kind) => {
                *result.errors.entry(kind.to_owned()).or_default() += 1;
                shared.live.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(pause) = pause {
            let until = (Instant::now() + pause).min(shared.deadline);
            tokio::time::sleep_until(until.into()).await;
        }
    }
    result
}

/// The longest a closed-loop connection waits after a 429.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(1);

/// The wait a 429 asks for in `retry-after-ms` (Metronome's SDK reads it before `Retry-After`),
/// at most [`RETRY_AFTER_MAX`]; `None` without a valid one.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let ms: f64 = headers
        .get("retry-after-ms")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (ms.is_finite() && ms > 0.0).then(|| Duration::from_secs_f64(ms / 1_000.0).min(RETRY_AFTER_MAX))
}

/// Writes the JSON array of `events` into `body` (ids and aliases are plain ASCII, so no
/// escaping is needed; this keeps the loader's CPU per event small).
fn write_batch(body: &mut String, shared: &Shared, task: usize, events: &[Sent]) {
    let timestamp = Timestamp(now_ms()).to_rfc3339();
    body.clear();
    body.push('[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            r#"{{"transaction_id":"{}{task}-{}","customer_id":"{}","event_type":"api_call","timestamp":"{timestamp}"}}"#,
            shared.spec.transaction_prefix,
            event.number,
            shared.workload.aliases[event.customer as usize],
        );
    }
    body.push(']');
}

#[cfg(test)]
mod tests {
    use super::{RETRY_AFTER_MAX, retry_after};
    use reqwest::header::{HeaderMap, HeaderValue};
    use std::time::Duration;

    fn wait_for(value: Option<&'static str>) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        if let Some(value) = value {
            headers.insert("retry-after-ms", HeaderValue::from_static(value));
        }
        retry_after(&headers)
    }

    #[test]
    fn a_429_is_waited_out_for_its_retry_after_ms_at_most_a_second() {
        assert_eq!(wait_for(Some("100")), Some(Duration::from_millis(100)));
        assert_eq!(wait_for(Some(" 2.5 ")), Some(Duration::from_micros(2_500)));
        assert_eq!(wait_for(Some("60000")), Some(RETRY_AFTER_MAX));
        for bad in [
            None,
            Some("soon"),
            Some("-5"),
            Some("0"),
            Some("NaN"),
            Some("inf"),
        ] {
            assert_eq!(wait_for(bad), None, "{bad:?}");
        }
    }
}

//! Tests of the webhook actor against a local receiver that records every request and answers
//! as a test scripts it: a status, or holding the request open until released (or until the
//! client gives up). Time is real: retries use delays of tens of milliseconds, and every
//! "eventually" check polls for up to 10 s so a loaded machine does not make them flaky.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_rt::net::{TcpListener, TcpStream};
use rand::SeedableRng;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::*;
use crate::actors::clock::{Clock, SystemClock};
use crate::actors::outbox::webhook_outbox_id;
use crate::storage::StoreOptions;

const SECRET: &str = "correct-horse-battery-staple";
const EVENTUALLY: Duration = Duration::from_secs(10);

// ---- the receiver ------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Reply {
    Status(u16),
    /// Keep the request open until `Receiver::release` (then answer 200) or until the client
    /// closes the connection.
    Hold,
}

#[derive(Clone, Debug)]
struct Recorded {
    request_line: String,
    /// Lowercased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    received_at_ms: i64,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    fn webhook_id(&self) -> String {
        let value: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        value["id"].as_str().unwrap().to_owned()
    }
}

struct ReceiverState {
    requests: Vec<Recorded>,
    script: VecDeque<Reply>,
    default: Reply,
    in_flight: usize,
    max_in_flight: usize,
}

struct Receiver {
    url: String,
    state: Arc<Mutex<ReceiverState>>,
    release: watch::Sender<bool>,
}

impl Receiver {
    /// Answers with `script` in order, then with `default`.
    async fn start(script: Vec<Reply>, default: Reply) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ReceiverState {
            requests: Vec::new(),
            script: script.into(),
            default,
            in_flight: 0,
            max_in_flight: 0,
        }));
        let (release, released) = watch::channel(false);
        let accepting = Arc::clone(&state);
        actix_rt::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                actix_rt::spawn(serve(socket, Arc::clone(&accepting), released.clone()));
            }
        });
        Receiver {
            url,
            state,
            release,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReceiverState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    fn max_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }

    fn answer_from_now_on(&self, reply: Reply) {
        let mut state = self.lock();
        state.script.clear();
        state.default = reply;
    }

    /// Answers 200 to every held request, and to every later one.
    fn release(&self) {
        self.answer_from_now_on(Reply::Status(200));
        self.release.send_replace(true);
    }
}

async fn serve(
    mut socket: TcpStream,
    state: Arc<Mutex<ReceiverState>>,
    mut released: watch::Receiver<bool>,
) {
    let Some((request_line, headers, body)) = read_request(&mut socket).await else {
        return;
    };
    let reply = {
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        state.requests.push(Recorded {
            request_line,
            headers,
            body,
            received_at_ms: SystemClock.now_ms(),
        });
        state.in_flight += 1;
        state.max_in_flight = state.max_in_flight.max(state.in_flight);
        let default = state.default;
        state.script.pop_front().unwrap_or(default)
    };
    let status = match reply {
        Reply::Status(code) => Some(code),
        Reply::Hold => {
            let mut probe = [0u8; 64];
            tokio::select! {
                _ = released.wait_for(|released| *released) => Some(200),
                // The client timed out and closed the connection.
                _ = socket.read(&mut probe) => None,
            }
        }
    };
    // Counted out before answering, so the client cannot start its next request while this
    // one still counts as in flight here.
    state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .in_flight -= 1;
    if let Some(code) = status {
        let response =
            format!("HTTP/1.1 {code} Scripted\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        let _ = socket.write_all(response.as_bytes()).await;
        let _ = socket.shutdown().await;
    }
}

type Request = (String, Vec<(String, String)>, Vec<u8>);

async fn read_request(socket: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..header_end]).ok()?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some((request_line, headers, body))
}

// ---- the engine side -----------------------------------------------------------------------

struct Harness {
    store: Store,
    stats: Arc<WebhookStats>,
    addr: Option<Addr<WebhookActor>>,
    /// Taken by a test that restarts the actor on the same database.
    dir: Option<TempDir>,
}

impl Harness {
    fn addr(&self) -> &Addr<WebhookActor> {
        self.addr.as_ref().expect("the actor was stopped")
    }

    /// Drops the address and waits until the actor is gone: it releases its clone of the stats
    /// (and of the store) when it is dropped. A test must not end while the actor's thread still
    /// holds the database, or RocksDB may abort the process when it exits.
    fn stop(&mut self) {
        if self.addr.take().is_none() {
            return;
        }
        let deadline = std::time::Instant::now() + EVENTUALLY;
        while Arc::strong_count(&self.stats) > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the webhook actor did not stop"
            );
            // The actor runs on its own arbiter thread, so blocking this one is fine.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop();
    }
}

fn open_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    (dir, store)
}

fn settings(destinations: &[(&Receiver, &str)]) -> WebhookSettings {
    WebhookSettings {
        destinations: destinations
            .iter()
            .map(|(receiver, secret)| Destination {
                url: receiver.url.clone(),
                secret: (*secret).to_owned(),
            })
            .collect(),
        timeout_ms: 5_000,
        first_retry_ms: 20,
        max_interval_ms: 200,
        give_up_after_ms: 60_000,
        concurrency_per_destination: 4,
        schedule_check_ms: 50,
        delivered_retention_ms: 60_000,
    }
}

fn start(dir: TempDir, store: Store, settings: WebhookSettings) -> Harness {
    let stats = Arc::new(WebhookStats::default());
    let addr = WebhookActor::start(
        store.clone(),
        settings,
        Arc::new(SystemClock),
        Arc::clone(&stats),
    );
    Harness {
        store,
        stats,
        addr: Some(addr),
        dir: Some(dir),
    }
}

/// A webhook entry for one destination, with a pretty-printed body so that any re-encoding on
/// the way would show.
fn webhook(n: u64, url: &str, created_at_ms: i64) -> (Uuid16, OutboxEntry) {
    let webhook_id = Id::from_key("test-webhook", &n.to_string());
    let body = serde_json::to_vec_pretty(&serde_json::json!({
        "id": webhook_id.to_string(),
        "type": "payment_gate.payment_status",
        "properties": { "n": n, "payment_status": "paid" },
    }))
    .unwrap();
    let entry = OutboxEntry::new(
        OutboxEffect::Webhook {
            webhook_id,
            event_type: "payment_gate.payment_status".to_owned(),
            destination_url: url.to_owned(),
            body,
        },
        (0, n),
        created_at_ms,
    );
    (webhook_outbox_id(webhook_id, url), entry)
}

fn persist(store: &Store, entries: &[(Uuid16, OutboxEntry)]) {
    for (id, entry) in entries {
        let value = encode(OUTBOX_VERSION, entry).unwrap();
        assert_eq!(store.put_outbox(&[(*id, value)], entry.cause).unwrap(), 1);
    }
}

fn body_of(entry: &OutboxEntry) -> &[u8] {
    match &entry.effect {
        OutboxEffect::Webhook { body, .. } => body,
        OutboxEffect::Payment(_) => panic!("not a webhook"),
    }
}

fn now_ms() -> i64 {
    SystemClock.now_ms()
}

/// Checks the headers of one attempt and that its signature covers the exact bytes received.
fn assert_signed(request: &Recorded, secret: &str) {
    assert_eq!(request.request_line, "POST /hooks HTTP/1.1");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("user-agent"), Some("Tollgate"));
    let date = request
        .header("x-metronome-date")
        .expect("X-Metronome-Date");
    assert_eq!(request.header("date"), Some(date));
    let sent_at = httpdate::parse_http_date(date).expect("an HTTP-date");
    let age = sent_at.elapsed().unwrap_or_else(|e| e.duration()).as_secs();
    assert!(age < 60, "date {date} is {age} s away from now");
    assert_eq!(
        request.header("metronome-webhook-signature"),
        Some(sign(secret, date, &request.body).as_str())
    );
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + EVENTUALLY;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- pure parts ----------------------------------------------------------------------------

#[test]
fn sign_matches_the_metronome_docs_test_vector() {
    // The example request of Metronome's webhook docs, byte for byte (2-space indent, no
    // trailing newline).
    let body = "{\n  \"id\": \"b2c9e307-624e-4e7d-a5a4-1b74107d78c4\",\n  \"type\": \"widget_created\",\n  \"properties\": {\n    \"customer_id\": \"5f794d50-085a-4db6-8d15-286e518b7225\",\n    \"widget_id\": \"0891458d-b6f0-4fdd-a41e-380aae1a1e38\"\n  }\n}";
    assert_eq!(
        sign(SECRET, "Mon, 02 Jan 2006 22:04:05 GMT", body.as_bytes()),
        "b82652fa2246cf1d8a27e591f155c865f68b46c19b9213fd9c052f2419b4742b"
    );
    // Any byte changes it.
    assert_ne!(
        sign(
            SECRET,
            "Mon, 02 Jan 2006 22:04:05 GMT",
            format!("{body}\n").as_bytes()
        ),
        "b82652fa2246cf1d8a27e591f155c865f68b46c19b9213fd9c052f2419b4742b"
    );
}

#[test]
fn http_date_uses_the_imf_fixdate_format() {
    // 2006-01-02T22:04:05.789Z
    assert_eq!(
        http_date(1_136_239_445_789),
        "Mon, 02 Jan 2006 22:04:05 GMT"
    );
    assert_eq!(http_date(-5), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(http_date(i64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
}

#[test]
fn retry_delays_double_from_the_first_retry_and_stay_under_the_cap() {
    let settings = WebhookSettings::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for attempts in 1..=300u32 {
        let base = (FIRST_RETRY_MS_DEFAULT << (attempts - 1).min(20)).min(MAX_INTERVAL_MS_DEFAULT);
        for _ in 0..20 {
            let delay = retry_delay_ms(&settings, attempts, &mut rng);
            assert!(
                delay >= base * 8 / 10,
                "attempt {attempts}: {delay} < 80% of {base}"
            );
            assert!(delay <= (base * 12 / 10).min(MAX_INTERVAL_MS_DEFAULT));
        }
    }
    // The first retry comes after about a second.
    assert!((800..=1200).contains(&retry_delay_ms(&settings, 1, &mut rng)));
}

#[test]
fn settings_default_to_metronome_schedule_and_parse_from_config() {
    let parsed: WebhookSettings = serde_json::from_str(
        r#"{"destinations": [{"url": "http://127.0.0.1:9000/hooks", "secret": "s"}]}"#,
    )
    .unwrap();
    assert_eq!(parsed.destinations.len(), 1);
    assert_eq!(parsed.timeout_ms, 10_000);
    assert_eq!(parsed.first_retry_ms, 1_000);
    assert_eq!(parsed.max_interval_ms, 15 * 60 * 1000);
    assert_eq!(parsed.give_up_after_ms, 72 * 60 * 60 * 1000);
    assert_eq!(parsed.concurrency_per_destination, 16);
    assert!(!format!("{parsed:?}").contains("\"s\""), "secret in Debug");
}

// ---- delivery ------------------------------------------------------------------------------

#[actix_rt::test]
async fn delivered_webhook_carries_its_id_and_exact_body_and_leaves_the_outbox() {
    let receiver = Receiver::start(vec![], Reply::Status(200)).await;
    let (dir, store) = open_store();
    let h = start(dir, store, settings(&[(&receiver, SECRET)]));

    let (id, entry) = webhook(1, &receiver.url, now_ms());
    persist(&h.store, &[(id, entry.clone())]);
    h.addr().do_send(Enqueue(vec![(id, entry.clone())]));

    eventually("delivery", || h.stats.snapshot().delivered == 1).await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body, body_of(&entry));
    let OutboxEffect::Webhook { webhook_id, .. } = &entry.effect else {
        unreachable!()
    };
    assert_eq!(requests[0].webhook_id(), webhook_id.to_string());
    assert_signed(&requests[0], SECRET);
    assert!(h.store.outbox_pending().unwrap().is_empty());

    // Enqueueing it again (a replay) sends nothing: it is no longer tracked, and storage
    // refuses to make a delivered id pending again.
    persist_ignored(&h.store, &[(id, entry.clone())]);
    h.addr().do_send(Enqueue(vec![(id, entry)]));
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let stats = h.stats.snapshot();
    assert_eq!(receiver.requests().len(), 1);
    assert_eq!((stats.attempts, stats.retries, stats.pending), (1, 0, 0));
}

/// `put_outbox` of ids that already live somewhere writes nothing.
fn persist_ignored(store: &Store, entries: &[(Uuid16, OutboxEntry)]) {
    for (id, entry) in entries {
        let value = encode(OUTBOX_VERSION, entry).unwrap();
        assert_eq!(store.put_outbox(&[(*id, value)], entry.cause).unwrap(), 0);
    }
}

#[actix_rt::test]
async fn receiver_failing_twice_gets_three_attempts_with_the_same_body_and_fresh_signatures() {
    let receiver = Receiver::start(
        vec![Reply::Status(500), Reply::Status(503)],
        Reply::Status(200),
    )
    .await;
    let (dir, store) = open_store();
    let h = start(dir, store, settings(&[(&receiver, SECRET)]));

    let (id, entry) = webhook(2, &receiver.url, now_ms());
    persist(&h.store, &[(id, entry.clone())]);
    h.addr().do_send(Enqueue(vec![(id, entry.clone())]));

    eventually("delivery after two failures", || {
        h.stats.snapshot().delivered == 1
    })
    .await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    for request in &requests {
        assert_eq!(request.body, body_of(&entry));
        assert_signed(request, SECRET);
    }
    // The retries waited: about 20 ms, then about 40 ms (±20%).
    assert!(requests[1].received_at_ms - requests[0].received_at_ms >= 15);
    assert!(requests[2].received_at_ms - requests[1].received_at_ms >= 30);
    let stats = h.stats.snapshot();
    assert_eq!((stats.attempts, stats.retries, stats.delivered), (3, 2, 1));
    assert_eq!(
        (stats.pending, stats.in_flight, stats.dead_lettered),
        (0, 0, 0)
    );
    assert!(h.store.outbox_pending().unwrap().is_empty());
}

#[actix_rt::test]
async fn hanging_receiver_times_out_and_the_attempt_is_retried() {
    let receiver = Receiver::start(vec![Reply::Hold], Reply::Status(200)).await;
    let (dir, store) = open_store();
    let mut settings = settings(&[(&receiver, SECRET)]);
    settings.timeout_ms = 300;
    let h = start(dir, store, settings);

    let (id, entry) = webhook(3, &receiver.url, now_ms());
    persist(&h.store, &[(id, entry.clone())]);
    h.addr().do_send(Enqueue(vec![(id, entry.clone())]));

    eventually("delivery after a timeout", || {
        h.stats.snapshot().delivered == 1
    })
    .await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body, requests[1].body);
    assert_signed(&requests[1], SECRET);
    assert!(
        // The timeout (300 ms) runs from before the first request reached the receiver.
        requests[1].received_at_ms - requests[0].received_at_ms >= 250,
        "retried before the timeout"
    );
    assert_eq!(h.stats.snapshot().retries, 1);
    receiver.release();
}

#[actix_rt::test]
async fn entry_past_its_retry_window_is_dead_lettered_and_redrive_delivers_it() {
    let receiver = Receiver::start(vec![], Reply::Status(500)).await;
    let (dir, store) = open_store();
    let settings = settings(&[(&receiver, SECRET)]);
    let give_up_after_ms = settings.give_up_after_ms;
    let h = start(dir, store, settings);

    let (id, entry) = webhook(4, &receiver.url, now_ms() - give_up_after_ms - 1_000);
    persist(&h.store, &[(id, entry.clone())]);
    h.addr().do_send(Enqueue(vec![(id, entry.clone())]));

    eventually("dead letter", || h.stats.snapshot().dead_lettered == 1).await;
    assert!(h.store.outbox_pending().unwrap().is_empty());
    let dead = h.store.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, id);
    let parked: OutboxEntry = OutboxEntry::decode(&dead[0].1).unwrap();
    assert_eq!(parked.attempts, 1);
    assert!(parked.last_error.as_deref().unwrap().contains("500"));
    assert_eq!(parked.effect, entry.effect);
    assert_eq!(receiver.requests().len(), 1);

    // An unknown id is not re-driven.
    assert!(!h.addr().send(Redrive([9; 16])).await.unwrap().unwrap());

    receiver.answer_from_now_on(Reply::Status(200));
    assert!(h.addr().send(Redrive(id)).await.unwrap().unwrap());
    eventually("delivery after re-drive", || {
        h.stats.snapshot().delivered == 1
    })
    .await;
    assert!(h.store.dead_letters().unwrap().is_empty());
    assert!(h.store.outbox_pending().unwrap().is_empty());
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].body, body_of(&entry));
    assert_signed(&requests[1], SECRET);
    let stats = h.stats.snapshot();
    assert_eq!((stats.dead_lettered, stats.redriven), (1, 1));
    // A second re-drive finds nothing.
    assert!(!h.addr().send(Redrive(id)).await.unwrap().unwrap());
}

#[actix_rt::test]
async fn entry_for_a_destination_no_longer_configured_is_dead_lettered_with_a_reason() {
    let receiver = Receiver::start(vec![], Reply::Status(200)).await;
    let (dir, store) = open_store();
    let h = start(dir, store, settings(&[(&receiver, SECRET)]));

    let (id, entry) = webhook(5, "http://127.0.0.1:9/removed", now_ms());
    persist(&h.store, &[(id, entry.clone())]);
    h.addr().do_send(Enqueue(vec![(id, entry)]));

    eventually("dead letter", || h.stats.snapshot().dead_lettered == 1).await;
    let dead = h.store.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    let parked: OutboxEntry = OutboxEntry::decode(&dead[0].1).unwrap();
    assert!(
        parked
            .last_error
            .as_deref()
            .unwrap()
            .contains("no longer configured")
    );
    assert_eq!(h.stats.snapshot().attempts, 0);
    assert!(receiver.requests().is_empty());
}

fn payment_entry(now_ms: i64) -> (Uuid16, OutboxEntry) {
    let workflow_id = Id::from_key("test-workflow", "1");
    let request = crate::domain::fixtures::payment_request(workflow_id);
    (
        crate::actors::outbox::payment_outbox_id(workflow_id),
        OutboxEntry::new(OutboxEffect::Payment(request), (0, 99), now_ms),
    )
}

#[actix_rt::test]
async fn entries_pending_at_start_are_delivered_after_a_restart_and_payments_are_left_alone() {
    let receiver = Receiver::start(vec![], Reply::Status(500)).await;
    let (dir, store) = open_store();
    let entries: Vec<_> = (10..13)
        .map(|n| webhook(n, &receiver.url, now_ms()))
        .collect();
    persist(&store, &entries);
    let payment = payment_entry(now_ms());
    persist(&store, std::slice::from_ref(&payment));

    // First life: nothing is enqueued; the actor finds the entries in the outbox, and the
    // receiver fails them.
    let mut first = start(dir, store, settings(&[(&receiver, SECRET)]));
    eventually("every entry failed once", || {
        first
            .store
            .outbox_pending()
            .unwrap()
            .iter()
            .all(|(_, value)| {
                let stored: OutboxEntry = OutboxEntry::decode(value).unwrap();
                matches!(stored.effect, OutboxEffect::Payment(_)) || stored.attempts >= 1
            })
    })
    .await;
    first.stop();
    // Stopped means no attempts after that.
    let attempts_after_stop = first.stats.snapshot().attempts;
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(first.stats.snapshot().attempts, attempts_after_stop);
    let store = first.store.clone();

    // What the first life persisted: attempts and the last error, same ids and bodies.
    let pending = store.outbox_pending().unwrap();
    assert_eq!(pending.len(), 4);
    for (id, entry) in &entries {
        let (_, value) = pending.iter().find(|(key, _)| key == id).unwrap();
        let stored: OutboxEntry = OutboxEntry::decode(value).unwrap();
        assert!(stored.attempts >= 1);
        assert!(stored.last_error.as_deref().unwrap().contains("500"));
        assert_eq!(stored.effect, entry.effect);
    }

    // Second life: the receiver is back.
    receiver.answer_from_now_on(Reply::Status(200));
    let dir = first.dir.take().unwrap();
    let second = start(dir, store.clone(), settings(&[(&receiver, SECRET)]));
    eventually("every entry delivered", || {
        second.stats.snapshot().delivered == 3
    })
    .await;
    let pending = second.store.outbox_pending().unwrap();
    assert_eq!(pending.len(), 1, "only the payment entry stays");
    assert_eq!(pending[0].0, payment.0);
    let requests = receiver.requests();
    for (_, entry) in &entries {
        let OutboxEffect::Webhook { webhook_id, .. } = &entry.effect else {
            unreachable!()
        };
        let attempts: Vec<_> = requests
            .iter()
            .filter(|r| r.webhook_id() == webhook_id.to_string())
            .collect();
        assert!(attempts.len() >= 2);
        for request in attempts {
            assert_eq!(request.body, body_of(entry));
            assert_signed(request, SECRET);
        }
    }
    assert_eq!(second.stats.snapshot().pending, 0);
}

#[actix_rt::test]
async fn each_destination_gets_its_own_copy_signed_with_its_own_secret() {
    let first = Receiver::start(vec![], Reply::Status(200)).await;
    let second = Receiver::start(vec![Reply::Status(502)], Reply::Status(204)).await;
    let (dir, store) = open_store();
    let h = start(
        dir,
        store,
        settings(&[(&first, "first-secret"), (&second, "second-secret")]),
    );

    // One webhook, one outbox entry per destination, as a customer actor creates them.
    let (_, template) = webhook(20, &first.url, now_ms());
    let entries: Vec<_> = [&first, &second]
        .iter()
        .map(|receiver| {
            let mut entry = template.clone();
            let OutboxEffect::Webhook {
                webhook_id,
                destination_url,
                ..
            } = &mut entry.effect
            else {
                unreachable!()
            };
            *destination_url = receiver.url.clone();
            (webhook_outbox_id(*webhook_id, &receiver.url), entry)
        })
        .collect();
    assert_ne!(entries[0].0, entries[1].0);
    persist(&h.store, &entries);
    h.addr().do_send(Enqueue(entries.clone()));

    eventually("both deliveries", || h.stats.snapshot().delivered == 2).await;
    let at_first = first.requests();
    let at_second = second.requests();
    assert_eq!(at_first.len(), 1);
    assert_eq!(at_second.len(), 2, "the second destination failed once");
    assert_signed(&at_first[0], "first-secret");
    for request in &at_second {
        assert_signed(request, "second-secret");
        assert_eq!(request.body, at_first[0].body);
    }
    assert!(h.store.outbox_pending().unwrap().is_empty());
}

#[actix_rt::test]
async fn no_more_requests_than_the_concurrency_bound_are_in_flight_per_destination() {
    let receiver = Receiver::start(vec![], Reply::Hold).await;
    let (dir, store) = open_store();
    let mut settings = settings(&[(&receiver, SECRET)]);
    settings.concurrency_per_destination = 2;
    settings.timeout_ms = 10_000;
    let h = start(dir, store, settings);

    let entries: Vec<_> = (30..36)
        .map(|n| webhook(n, &receiver.url, now_ms()))
        .collect();
    persist(&h.store, &entries);
    h.addr().do_send(Enqueue(entries));

    eventually("two requests held", || receiver.requests().len() == 2).await;
    // All six are due; the bound keeps the other four waiting.
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.requests().len(), 2);
    let stats = h.stats.snapshot();
    assert_eq!((stats.in_flight, stats.pending), (2, 6));

    receiver.release();
    eventually("every delivery", || h.stats.snapshot().delivered == 6).await;
    assert_eq!(receiver.requests().len(), 6);
    assert_eq!(receiver.max_in_flight(), 2);
    assert_eq!(h.stats.snapshot().in_flight, 0);
    assert!(h.store.outbox_pending().unwrap().is_empty());
}

// ---- the transport seam and the manual clock -----------------------------------------------

/// A transport that answers from a script and records every attempt; no network.
struct ScriptedTransport {
    answers: Mutex<VecDeque<Outcome>>,
    seen: Mutex<Vec<WebhookRequest>>,
}

impl WebhookTransport for ScriptedTransport {
    fn deliver(&self, request: WebhookRequest) -> DeliveryFuture {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request);
        let answer = self
            .answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
            .unwrap_or(Outcome::Delivered { status: 200 });
        Box::pin(async move { answer })
    }
}

#[actix_rt::test]
async fn retries_wait_for_the_clock_and_resend_the_same_body_freshly_signed() {
    let (dir, store) = open_store();
    let clock = crate::actors::clock::ManualClock::new(1_700_000_000_000);
    let transport = Arc::new(ScriptedTransport {
        answers: Mutex::new(VecDeque::from([
            Outcome::Failed {
                status: Some(503),
                error: "status 503".into(),
            },
            Outcome::Failed {
                status: None,
                error: "timed out".into(),
            },
        ])),
        seen: Mutex::new(Vec::new()),
    });
    let url = "http://receiver.invalid/hooks";
    let mut settings = WebhookSettings {
        destinations: vec![Destination {
            url: url.into(),
            secret: SECRET.into(),
        }],
        first_retry_ms: 60_000,
        max_interval_ms: 600_000,
        ..WebhookSettings::default()
    };
    settings.give_up_after_ms = 24 * 60 * 60 * 1000;
    let entry = webhook(1, url, clock.now_ms());
    persist(&store, std::slice::from_ref(&entry));
    let stats = Arc::new(WebhookStats::default());
    let _addr = WebhookActor::start_with(
        store.clone(),
        settings,
        Arc::new(clock.clone()),
        Arc::clone(&stats),
        Some(Arc::clone(&transport) as Arc<dyn WebhookTransport>),
        Arc::new(Health::default()),
    );
    let attempts = || transport.seen.lock().unwrap().len();
    let wait_for = |n: usize| async move {
        let deadline = std::time::Instant::now() + EVENTUALLY;
        while attempts() < n && std::time::Instant::now() < deadline {
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(attempts(), n);
    };
    wait_for(1).await;
    // Real time passes, the manual clock does not: no retry.
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(attempts(), 1);
    clock.advance(2 * 60_000);
    wait_for(2).await;
    clock.advance(10 * 60_000);
    wait_for(3).await;
    let deadline = std::time::Instant::now() + EVENTUALLY;
    while stats.delivered.load(Relaxed) < 1 && std::time::Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stats.delivered.load(Relaxed), 1);
    let seen = transport.seen.lock().unwrap().clone();
    for request in &seen {
        assert_eq!(
            request.body,
            body_of(&entry.1),
            "the stored bytes, every attempt"
        );
        assert_eq!(
            request.signature,
            sign(SECRET, &request.date, &request.body)
        );
    }
    assert_ne!(seen[0].date, seen[2].date, "each attempt is dated afresh");
    drop(dir);
}

#[actix_rt::test]
async fn a_delivery_is_recorded_with_its_outbox_retirement_and_swept_after_its_retention() {
    use crate::actors::clock::ManualClock;
    use crate::actors::deliveries::{DELIVERED_PREFIX, DeliveredWebhook};
    let receiver = Receiver::start(vec![], Reply::Status(202)).await;
    let (dir, store) = open_store();
    let clock = ManualClock::new(1_000_000);
    let mut settings = settings(&[(&receiver, SECRET)]);
    settings.delivered_retention_ms = 3_600_000;
    let stats = Arc::new(WebhookStats::default());
    let addr = WebhookActor::start_with(
        store.clone(),
        settings,
        Arc::new(clock.clone()),
        Arc::clone(&stats),
        None,
        Arc::new(crate::actors::health::Health::default()),
    );
    let (id, entry) = webhook(1, &receiver.url, 999_000);
    persist(&store, &[(id, entry.clone())]);
    addr.do_send(Enqueue(vec![(id, entry.clone())]));
    eventually("delivery", || stats.snapshot().delivered == 1).await;
    let records = store.meta_scan_prefix(DELIVERED_PREFIX).unwrap();
    assert_eq!(records.len(), 1);
    let record = DeliveredWebhook::decode(&records[0].1).unwrap();
    let OutboxEffect::Webhook { webhook_id, .. } = &entry.effect else {
        unreachable!()
    };
    assert_eq!(record.id, id);
    assert_eq!(record.webhook_id, *webhook_id);
    assert_eq!((record.status, record.attempts), (202, 1));
    assert_eq!(record.delivered_at_ms, 1_000_000);
    assert_eq!(record.created_at_ms, 999_000);
    assert!(store.outbox_pending().unwrap().is_empty());

    // Still inside the retention at the next sweep: kept.
    clock.set(1_000_000 + 3_600_000 - 1);
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.meta_scan_prefix(DELIVERED_PREFIX).unwrap().len(), 1);
    // Past it (and a minute after the last sweep): gone, and nothing else in `meta` with it.
    store.meta_put(b"whc/neighbour", b"x").unwrap();
    store.meta_put(b"whe/neighbour", b"y").unwrap();
    clock.set(1_000_000 + 3_600_000 + 60_000);
    eventually("sweep", || {
        store.meta_scan_prefix(DELIVERED_PREFIX).unwrap().is_empty()
    })
    .await;
    assert_eq!(
        store.meta_get(b"whc/neighbour").unwrap(),
        Some(b"x".to_vec())
    );
    assert_eq!(
        store.meta_get(b"whe/neighbour").unwrap(),
        Some(b"y".to_vec())
    );
    drop(addr);
    drop(dir);
}

//! The HTTP edge through the real server: `Idempotency-Key` rules, gzip bodies and their limit,
//! `{"message"}` bodies on every error, request framing (Content-Length together with
//! Transfer-Encoding) and answers given before the body is read. Where a client library would
//! hide what the server does on the wire, the test talks raw TCP.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tollgate::actors::clock::{Clock, ManualClock, SystemClock};
use tollgate::actors::{Engine, EngineError};
use tollgate::http::error::ApiError;
use tollgate::http::{ApiOptions, Application, ExtraRoutes};
use tollgate::storage::StorageError;

use crate::{TOKEN, support};

const BODY_LIMIT: usize = 1 << 20;

/// A running server whose engine runs on a manual clock, with optional test routes behind the
/// API's middleware.
struct EdgeApp {
    base: String,
    port: u16,
    client: reqwest::Client,
    engine: Engine,
    clock: ManualClock,
    _dir: tempfile::TempDir,
}

async fn spawn_edge(extra: ExtraRoutes) -> EdgeApp {
    let dir = tempfile::tempdir().unwrap();
    let config = support::engine_config(dir.path(), None);
    let clock = ManualClock::new(SystemClock.now_ms());
    let engine = Engine::start(config, Arc::new(clock.clone()), None)
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let options = ApiOptions {
        tokens: tollgate::http::full_access(&[TOKEN.to_owned()]),
        body_limit: BODY_LIMIT,
        workers: 2,
        stripe: None,
    };
    let app = Application::build_with_routes(listener, engine.clone(), options, extra).unwrap();
    let port = app.port();
    actix_rt::spawn(app.run_until_stopped());
    EdgeApp {
        base: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::new(),
        engine,
        clock,
        _dir: dir,
    }
}

fn no_routes() -> ExtraRoutes {
    Arc::new(|_| {})
}

impl EdgeApp {
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    /// How many customers carry `name`.
    async fn customers_named(&self, name: &str) -> usize {
        let response = self
            .client
            .get(format!("{}/v1/customers?limit=100", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] == name)
            .count()
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A gzip body of about 1 MB that inflates to `mib` MiB of zeros. Compressing a GiB in a debug
/// build takes most of a minute, so the deflate stream is built from sync-flushed 1 MiB pieces:
/// after the first, each piece of zeros compresses to the same bytes (matches into the window),
/// so one compressed piece is repeated. The trailer's CRC is left zero: a correct server stops
/// long before it.
fn gzip_bomb(mib: usize) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    fn piece(compress: &mut Compress, input: &[u8], flush: FlushCompress) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 * 1024);
        let start = compress.total_in();
        loop {
            let consumed = usize::try_from(compress.total_in() - start).unwrap();
            compress
                .compress_vec(&input[consumed..], &mut out, flush)
                .unwrap();
            let done = usize::try_from(compress.total_in() - start).unwrap() == input.len();
            if done && out.len() < out.capacity() {
                return out;
            }
            out.reserve(64 * 1024);
        }
    }
    let zeros = vec![0u8; 1 << 20];
    let mut compress = Compress::new(Compression::best(), false);
    let first = piece(&mut compress, &zeros, FlushCompress::Sync);
    let repeated = piece(&mut compress, &zeros, FlushCompress::Sync);
    let last = piece(&mut compress, &[], FlushCompress::Finish);
    let mut body = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    body.extend_from_slice(&first);
    for _ in 1..mib {
        body.extend_from_slice(&repeated);
    }
    body.extend_from_slice(&last);
    body.extend_from_slice(&[0, 0, 0, 0]);
    body.extend_from_slice(
        &u32::try_from((mib << 20) % (1 << 32))
            .unwrap()
            .to_le_bytes(),
    );
    body
}

/// The peak resident set of this process (the server runs in it), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What a raw TCP client saw.
struct RawOutcome {
    response: Vec<u8>,
    /// The error writing the request got, if any (a broken pipe or a reset).
    write_error: Option<std::io::Error>,
    /// The error reading got, if any (a reset).
    read_error: Option<std::io::Error>,
    /// The server closed the connection (EOF) within the wait.
    closed: bool,
}

impl RawOutcome {
    fn status(&self) -> Option<u16> {
        let text = String::from_utf8_lossy(&self.response);
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.response).into_owned()
    }

    /// The body of the first response (after the blank line), as JSON.
    fn first_json(&self) -> Option<Value> {
        let text = self.text();
        let (head, rest) = text.split_once("\r\n\r\n")?;
        let length: usize = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })?;
        serde_json::from_str(rest.get(..length)?).ok()
    }
}

/// Sends `head`, then `body` in `piece`-byte writes from a second thread (as an HTTP client
/// does, without waiting for the answer), while reading until the server closes or `wait`
/// passes.
async fn raw_exchange(port: u16, head: Vec<u8>, body: Vec<u8>, piece: usize) -> RawOutcome {
    tokio::task::spawn_blocking(move || {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let writing = std::thread::spawn(move || {
            writer.write_all(&head)?;
            for chunk in body.chunks(piece.max(1)) {
                writer.write_all(chunk)?;
            }
            writer.flush()
        });
        let (mut response, mut read_error, mut closed) = (Vec::new(), None, false);
        let mut reader = stream;
        let mut buf = [0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => response.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            }
        }
        let _ = reader.shutdown(Shutdown::Both);
        let write_error = writing.join().unwrap().err();
        RawOutcome {
            response,
            write_error,
            read_error,
            closed,
        }
    })
    .await
    .unwrap()
}

#[actix_rt::test]
async fn a_gzip_body_with_an_idempotency_key_runs_once_and_is_replayed() {
    let app = spawn_edge(no_routes()).await;
    let body = gzip(br#"{"name":"gzipped customer"}"#);
    let mut ids = Vec::new();
    for attempt in 0..2 {
        let response = app
            .post("/v1/customers")
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .header("idempotency-key", "gzip-key-1")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let replayed = response.headers().get("idempotent-replayed").cloned();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "attempt {attempt}: {text}");
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(replayed.is_some(), attempt == 1, "attempt {attempt}");
        ids.push(json["data"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(app.customers_named("gzipped customer").await, 1);
    // The same key with the same JSON sent uncompressed is the same request.
    let plain = app
        .post("/v1/customers")
        .header("idempotency-key", "gzip-key-1")
        .json(&json!({"name": "gzipped customer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status().as_u16(), 200);
    let json: Value = plain.json().await.unwrap();
    assert_eq!(json["data"]["id"], ids[0].as_str());
}

/// A test route that counts its runs and waits for the test's go-ahead before answering.
#[derive(Clone, Default)]
struct Gate {
    runs: Arc<AtomicUsize>,
    started: Arc<Notify>,
    release: Arc<Notify>,
}

fn gated_route(gate: Gate) -> ExtraRoutes {
    Arc::new(move |cfg| {
        let gate = gate.clone();
        cfg.route(
            "/test/gated",
            web::post().to(move |_body: web::Bytes| {
                let gate = gate.clone();
                async move {
                    let run = gate.runs.fetch_add(1, Ordering::SeqCst) + 1;
                    gate.started.notify_one();
                    gate.release.notified().await;
                    HttpResponse::Ok().json(json!({ "run": run }))
                }
            }),
        );
    })
}

#[actix_rt::test]
async fn a_key_in_progress_gets_409_that_may_be_retried_and_the_request_runs_once() {
    let gate = Gate::default();
    let app = spawn_edge(gated_route(gate.clone())).await;
    let first = app
        .post("/test/gated")
        .header("idempotency-key", "busy-key")
        .json(&json!({"n": 1}))
        .send();
    let first = actix_rt::spawn(first);
    gate.started.notified().await;

    let second = app
        .post("/test/gated")
        .header("idempotency-key", "busy-key")
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status().as_u16(), 409);
    assert_eq!(second.headers()["x-should-retry"], "true");
    let message: Value = second.json().await.unwrap();
    assert!(message["message"].as_str().unwrap().contains("in progress"));

    gate.release.notify_one();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status().as_u16(), 200);
    assert_eq!(first.json::<Value>().await.unwrap(), json!({"run": 1}));

    let again = app
        .post("/test/gated")
        .header("idempotency-key", "busy-key")
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 200);
    assert_eq!(again.json::<Value>().await.unwrap(), json!({"run": 1}));

    let other_body = app
        .post("/test/gated")
        .header("idempotency-key", "busy-key")
        .json(&json!({"n": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(other_body.status().as_u16(), 409);
    assert_eq!(other_body.headers()["x-should-retry"], "false");
    assert_eq!(gate.runs.load(Ordering::SeqCst), 1);
}

/// A test route that counts its runs and answers with the error its path names.
fn failing_route(runs: Arc<AtomicUsize>) -> ExtraRoutes {
    Arc::new(move |cfg| {
        let runs = runs.clone();
        cfg.route(
            "/test/fail/{kind}",
            web::post().to(move |kind: web::Path<String>, _body: web::Bytes| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let error: ApiError = match kind.as_str() {
                        "overloaded" => EngineError::Overloaded.into(),
                        "not-ready" => EngineError::NotReady.into(),
                        "storage" => StorageError::Corrupt {
                            what: "test",
                            detail: "disk on fire".into(),
                        }
                        .into(),
                        _ => EngineError::Internal("after the log append".into()).into(),
                    };
                    Err::<HttpResponse, _>(error)
                }
            }),
        );
    })
}

async fn post_keyed(app: &EdgeApp, path: &str, key: &str) -> reqwest::Response {
    app.post(path)
        .header("idempotency-key", key)
        .json(&json!({"same": "body"}))
        .send()
        .await
        .unwrap()
}

#[actix_rt::test]
async fn a_429_or_503_is_not_stored_so_a_retry_with_the_key_runs_the_request() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = spawn_edge(failing_route(runs.clone())).await;
    for (kind, status) in [("overloaded", 429), ("not-ready", 503)] {
        let before = runs.load(Ordering::SeqCst);
        for _ in 0..2 {
            let response = post_keyed(&app, &format!("/test/fail/{kind}"), kind).await;
            assert_eq!(response.status().as_u16(), status, "{kind}");
            assert!(response.headers().get("idempotent-replayed").is_none());
            assert_eq!(response.headers()["retry-after"], "1");
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            before + 2,
            "{kind} was replayed"
        );
    }
}

#[actix_rt::test]
async fn a_storage_failure_answers_503_with_retry_after_and_is_not_replayed() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = spawn_edge(failing_route(runs.clone())).await;
    for attempt in 1..=2 {
        let response = post_keyed(&app, "/test/fail/storage", "storage-key").await;
        assert_eq!(response.status().as_u16(), 503, "attempt {attempt}");
        assert_eq!(response.headers()["retry-after"], "1");
        let body: Value = response.json().await.unwrap();
        // Opaque: the cause is logged, not sent.
        assert!(
            !body["message"].as_str().unwrap().contains("fire"),
            "{body}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), attempt);
    }
}

#[actix_rt::test]
async fn a_500_after_execution_began_is_stored_and_replayed() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = spawn_edge(failing_route(runs.clone())).await;
    let first = post_keyed(&app, "/test/fail/internal", "internal-key").await;
    assert_eq!(first.status().as_u16(), 500);
    let first_body: Value = first.json().await.unwrap();
    let second = post_keyed(&app, "/test/fail/internal", "internal-key").await;
    assert_eq!(second.status().as_u16(), 500);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.json::<Value>().await.unwrap(), first_body);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[actix_rt::test]
async fn a_gzip_bomb_is_refused_with_413_json_quickly_and_without_inflating_it() {
    let app = spawn_edge(no_routes()).await;
    let bomb = gzip_bomb(1000);
    assert!(bomb.len() < BODY_LIMIT, "the bomb itself fits the limit");
    let peak_before = peak_rss_kib();
    for path in ["/v1/ingest", "/v1/customers"] {
        let started = Instant::now();
        let response = app
            .post(path)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(bomb.clone())
            .send()
            .await
            .unwrap();
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let grown_mib = (peak_rss_kib() - peak_before) / 1024;
        let seen =
            format!("{path}: {status} {text:?} after {elapsed:?}, peak RSS +{grown_mib} MiB");
        eprintln!("{seen}");
        assert!(grown_mib < 32, "{seen}");
        assert_eq!(status, 413, "{seen}");
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{seen}"));
        assert!(
            body["message"].as_str().unwrap().contains("1048576"),
            "{seen}"
        );
        assert!(elapsed < Duration::from_secs(1), "{seen}");
    }
}

#[actix_rt::test]
async fn a_body_over_the_limit_gets_413_with_a_json_message() {
    let app = spawn_edge(no_routes()).await;
    let name = "x".repeat(BODY_LIMIT + BODY_LIMIT / 2);
    let body = format!(r#"{{"name":"{name}"}}"#).into_bytes();
    let head = format!(
        "POST /v1/customers HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let outcome = raw_exchange(app.port, head.into_bytes(), body, 64 * 1024).await;
    assert_eq!(outcome.status(), Some(413), "{}", outcome.text());
    let json = outcome
        .first_json()
        .unwrap_or_else(|| panic!("{}", outcome.text()));
    assert!(
        json["message"].as_str().unwrap().contains("1048576"),
        "{json}"
    );
    assert!(outcome.write_error.is_none(), "{:?}", outcome.write_error);
}

#[actix_rt::test]
async fn a_query_string_that_does_not_parse_gets_400_with_a_json_message() {
    let app = spawn_edge(no_routes()).await;
    for query in ["limit=ten", "only_archived=maybe"] {
        let response = app
            .client
            .get(format!("{}/v1/customers?{query}", app.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{query}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{query}"
        );
        let body: Value = response.json().await.unwrap();
        assert!(body["message"].is_string(), "{query}: {body}");
    }
}

#[actix_rt::test]
async fn content_length_with_transfer_encoding_is_refused_and_the_smuggled_request_never_runs() {
    let app = spawn_edge(no_routes()).await;
    let smuggled_body = r#"{"name":"smuggled"}"#;
    let smuggled = format!(
        "POST /v1/customers HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{smuggled_body}",
        smuggled_body.len()
    );
    // A front end that honours Content-Length sees one request whose body is everything after
    // the head; actix honours Transfer-Encoding and sees an empty chunked body, then a second
    // request.
    let body = format!("0\r\n\r\n{smuggled}");
    let head = format!(
        "POST /v1/ingest HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body.as_bytes());
    let outcome = raw_exchange(app.port, request, Vec::new(), 1).await;
    let smuggled_runs = app.customers_named("smuggled").await;
    let seen = format!(
        "smuggled request ran {smuggled_runs} time(s); the client saw:\n{}",
        outcome.text()
    );
    assert_eq!(smuggled_runs, 0, "{seen}");
    assert!(!outcome.text().contains("HTTP/1.1 200"), "{seen}");
    assert!(outcome.closed, "the connection stayed open; {seen}");
    assert_eq!(outcome.status(), Some(400), "{seen}");
    let json = outcome.first_json().unwrap_or_else(|| panic!("{seen}"));
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("Transfer-Encoding"),
        "{seen}"
    );
    assert!(
        outcome
            .text()
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{seen}"
    );
}

#[actix_rt::test]
async fn an_early_401_on_a_post_with_a_body_reaches_the_client_as_401() {
    let app = spawn_edge(no_routes()).await;
    let event = json!([{
        "transaction_id": "t", "customer_id": "c", "event_type": "e",
        "timestamp": "2025-01-01T00:00:00Z"
    }])
    .to_string();
    // A small body written right after the head, and a larger one that cannot sit in the
    // socket buffers unread.
    for (body, piece) in [
        (event.clone().into_bytes(), 1),
        (event.repeat(4000).into_bytes(), 16 * 1024),
    ] {
        for attempt in 0..10 {
            let head = format!(
                "POST /v1/ingest HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let outcome = raw_exchange(app.port, head.into_bytes(), body.clone(), piece).await;
            let size = body.len();
            assert_eq!(
                outcome.status(),
                Some(401),
                "{size} bytes, attempt {attempt}"
            );
            assert!(
                outcome.write_error.is_none() && outcome.read_error.is_none(),
                "{size} bytes, attempt {attempt}: write {:?}, read {:?}",
                outcome.write_error,
                outcome.read_error
            );
            assert!(outcome.first_json().unwrap()["message"].is_string());
        }
    }
}

#[actix_rt::test]
async fn idempotency_answers_are_swept_after_24_hours_and_the_key_then_runs_again() {
    use tollgate::http::idempotency::{InFlight, REPLAY_WINDOW_MS, sweep_expired};
    let app = spawn_edge(no_routes()).await;
    // Ids derive from the key and body: after the window, the key runs again with a new body.
    let client = &app;
    let send_body = move |body: Value| async move {
        let response = client
            .post("/v1/customers")
            .header("idempotency-key", "sweep-key")
            .json(&body)
            .send()
            .await
            .unwrap();
        let replayed = response.headers().contains_key("idempotent-replayed");
        let body: Value = response.json().await.unwrap();
        (replayed, body["data"]["id"].as_str().unwrap().to_owned())
    };
    let send = || send_body(json!({"name": "swept"}));
    let (replayed, first_id) = send().await;
    assert!(!replayed);
    let store = app.engine.store();
    let entry = b"idem/sweep-key";
    assert!(store.meta_get(entry).unwrap().is_some());
    let claims = InFlight::default();

    app.clock.advance(REPLAY_WINDOW_MS - 1);
    assert_eq!(
        sweep_expired(store, &claims, app.engine.now_ms()).unwrap(),
        0
    );
    assert_eq!(send().await, (true, first_id.clone()));

    app.clock.advance(1);
    assert_eq!(
        sweep_expired(store, &claims, app.engine.now_ms()).unwrap(),
        1
    );
    assert!(store.meta_get(entry).unwrap().is_none());
    for prefix in [&b"idem/"[..], b"idem-at/"] {
        assert!(store.meta_scan_prefix(prefix).unwrap().is_empty());
    }
    let (replayed, second_id) =
        send_body(json!({"name": "swept", "custom_fields": {"run": "2"}})).await;
    assert!(!replayed);
    assert_ne!(second_id, first_id);
    assert_eq!(app.customers_named("swept").await, 2);
}

//! What an early refusal costs now that the server reads (and throws away) what is left of the
//! body before answering, so the answer reaches the client instead of a reset: a POST without a
//! token, with bodies of 0 B to 1 MiB, answered 401 on one keep-alive connection (the server
//! kept it open, so each request is a full drain, not a reconnect).
//!
//! `cargo bench --bench edge`; figures are recorded in BENCHMARKS.md.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tollgate::actors::clock::SystemClock;
use tollgate::actors::engine::EngineConfig;
use tollgate::actors::{Engine, EngineSettings};
use tollgate::domain::Limits;
use tollgate::http::Application;
use tollgate::storage::Durability;

const BODY_LIMIT: usize = 1 << 20;

/// Starts Tollgate (one HTTP worker) on a thread of its own; returns its port.
fn start_server(dir: std::path::PathBuf) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let config = EngineConfig {
                data_dir: dir,
                durability: Durability::Wal,
                dedupe_window_ms: 34 * 86_400_000,
                dedupe_memory_entries: 10_000,
                settings: EngineSettings {
                    partitions: 1,
                    limits: Limits::default(),
                    webhook_routes: vec![],
                    mailbox_capacity: 1024,
                    pending_inputs_max: 100_000,
                    apply_lag_max_ms: 60_000,
                    checkpoint_interval_ms: 60_000,
                    checkpoint_every_inputs: 1_000_000,
                    evict_idle_ms: 3_600_000,
                    preload_customers_max: 0,
                    tick_interval_ms: 3_600_000,
                    housekeeping_ms: 200,
                    late_window_ms: 34 * 86_400_000,
                },
                webhooks: tollgate::actors::webhook::WebhookSettings::default(),
                submit_capacity: 1024,
            };
            let engine = Engine::start(config, Arc::new(SystemClock), None)
                .await
                .unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let app = Application::build(listener, engine, &["bench-token".into()], BODY_LIMIT, 1)
                .unwrap();
            tx.send(app.port()).unwrap();
            app.run_until_stopped().await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// Reads one response (head and a `content-length` body); returns its status.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return head[9..12].parse().unwrap();
            }
        }
    }
}

fn refused_posts(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let port = start_server(dir.path().to_path_buf());
    let mut group = c.benchmark_group("refused_401_keep_alive");
    for size in [0usize, 1 << 10, 64 << 10, 1 << 20] {
        let mut request = format!(
            "POST /v1/ingest HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {size}\r\n\r\n"
        )
        .into_bytes();
        request.extend(std::iter::repeat_n(b' ', size));
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut buf = Vec::new();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &request, |b, request| {
            b.iter(|| {
                stream.write_all(request).unwrap();
                assert_eq!(read_response(&mut stream, &mut buf), 401);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, refused_posts);
criterion_main!(benches);

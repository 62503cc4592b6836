//! The engine without HTTP: usage events from `Engine::ingest` until applied by the customer
//! actors (log append with group commit and dedupe, ordered dispatch, domain apply), with
//! `durability = "wal"` and `"fsync"`; and the actor hand-off alone (messages to customer
//! actors on one arbiter, each applying its batch).
//!
//! `cargo bench --bench engine`; figures are recorded in BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tollgate::actors::clock::SystemClock;
use tollgate::actors::customer::{ApplyInputs, CustomerActor, Sequenced};
use tollgate::actors::engine::EngineConfig;
use tollgate::actors::entry::PersistedCustomer;
use tollgate::actors::handles::Sinks;
use tollgate::actors::metrics::EngineMetrics;
use tollgate::actors::payment::PaymentActor;
use tollgate::actors::shared::Shared;
use tollgate::actors::webhook::WebhookActor;
use tollgate::actors::{Engine, EngineSettings, IngestEvent};
use tollgate::domain::customer::{Customer, Input};
use tollgate::domain::fixtures;
use tollgate::domain::gate::GateType;
use tollgate::domain::{Id, Limits, Timestamp};
use tollgate::storage::{Durability, Store, StoreOptions};

const CUSTOMERS: usize = 1_000;
const BATCH: usize = 100;
const IN_FLIGHT: usize = 16;

fn now() -> Timestamp {
    Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

fn settings(partitions: u16) -> EngineSettings {
    EngineSettings {
        partitions,
        limits: Limits::default(),
        webhook_routes: vec![],
        mailbox_capacity: 4096,
        pending_inputs_max: 1_000_000,
        apply_lag_max_ms: 60_000,
        checkpoint_interval_ms: 30_000,
        checkpoint_every_inputs: 5_000_000,
        evict_idle_ms: 3_600_000,
        preload_customers_max: 0,
        tick_interval_ms: 3_600_000,
        housekeeping_ms: 200,
        late_window_ms: 34 * 86_400_000,
    }
}

/// With `dead_webhook_url`, every customer's spend threshold crosses every 5 events and each
/// crossing's webhook goes to a destination that refuses connections (a receiver that is down).
async fn engine_with(
    dir: &std::path::Path,
    durability: Durability,
    dead_webhook_url: Option<&str>,
) -> Engine {
    let mut settings = settings(2);
    let mut webhooks = tollgate::actors::webhook::WebhookSettings::default();
    if let Some(url) = dead_webhook_url {
        settings.webhook_routes = vec![tollgate::actors::shared::WebhookRoute::all(url)];
        webhooks.destinations = vec![tollgate::actors::webhook::Destination {
            url: url.to_owned(),
            secret: "bench".into(),
        }];
        webhooks.first_retry_ms = 50;
        webhooks.max_interval_ms = 200;
    }
    let config = EngineConfig {
        data_dir: dir.to_path_buf(),
        durability,
        dedupe_window_ms: 34 * 86_400_000,
        dedupe_memory_entries: 1_000_000,
        settings,
        webhooks,
        submit_capacity: 1024,
    };
    let engine = Engine::start(config, Arc::new(SystemClock), None)
        .await
        .unwrap();
    for change in fixtures::catalog_changes() {
        engine.change_catalog(change).await.unwrap();
    }
    for c in 0..CUSTOMERS {
        let id = Id::derive(fixtures::CUSTOMER, "bench", c as u64);
        let mut profile = fixtures::profile(id, false);
        profile.ingest_aliases = vec![format!("c{c}")];
        engine.create_customer(profile).await.unwrap();
        let mut spec = fixtures::contract(Id::derive(id, "contract", 0));
        spec.starting_at = now().month_start();
        spec.ending_before = None;
        spec.commits = vec![];
        let spend = if dead_webhook_url.is_some() {
            500
        } else {
            1_000_000_000
        };
        spec.spend_threshold = Some(fixtures::spend_threshold(spend, GateType::None));
        spec.prepaid_threshold = Some(fixtures::prepaid_threshold(500, 5_000, GateType::None));
        engine
            .apply(id, Input::create_contract(spec))
            .await
            .unwrap();
    }
    engine
}

/// Sends `batches` batches of 100 events (16 in flight) and waits until all are applied.
async fn run(engine: &Engine, batches: u64, offset: &mut u64) -> Duration {
    let started = Instant::now();
    let mut in_flight = Vec::new();
    for _ in 0..batches {
        let base = *offset;
        *offset += BATCH as u64;
        let events: Vec<IngestEvent> = (0..BATCH as u64)
            .map(|i| IngestEvent {
                customer_key: format!("c{}", (base + i) as usize % CUSTOMERS),
                event: fixtures::api_call(&format!("e{}", base + i), now()),
            })
            .collect();
        let engine = engine.clone();
        in_flight.push(actix_rt::spawn(async move {
            engine.ingest(events).await.unwrap()
        }));
        if in_flight.len() >= IN_FLIGHT {
            in_flight.remove(0).await.unwrap();
        }
    }
    for task in in_flight {
        task.await.unwrap();
    }
    while engine.pending_inputs() > 0 {
        actix_rt::time::sleep(Duration::from_micros(200)).await;
    }
    started.elapsed()
}

fn bench_engine(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine_ingest_applied");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for (name, durability, dead) in [
        ("wal", Durability::Wal, None),
        ("fsync", Durability::Fsync, None),
        // Port 9 (discard) on loopback refuses connections here: a receiver that is down.
        (
            "wal_webhook_receiver_down",
            Durability::Wal,
            Some("http://127.0.0.1:9/hooks"),
        ),
    ] {
        let system = actix_rt::System::new();
        let dir = tempfile::tempdir().unwrap();
        let engine = system.block_on(engine_with(dir.path(), durability, dead));
        let mut offset = 0u64;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| system.block_on(run(&engine, iters, &mut offset)))
        });
    }
    group.finish();
}

/// Customer actors on one arbiter receiving batches of 100 inputs (ticks for existing
/// customers: the domain work is small, so this measures the hand-off and bookkeeping).
fn bench_handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("actor_handoff");
    group.throughput(Throughput::Elements(BATCH as u64 * 1_000));
    group.sample_size(10);
    let system = actix_rt::System::new();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreOptions {
            durability: Durability::Wal,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let shared = Arc::new(Shared::new(
        store,
        settings(1),
        Arc::new(SystemClock),
        Arc::new(EngineMetrics::default()),
        fixtures::catalog(),
        (Sinks::detached::<WebhookActor, PaymentActor>(), Vec::new()),
    ));
    let addrs: Vec<_> = system.block_on(async {
        (0..1_000u64)
            .map(|i| {
                let id = Id::derive(fixtures::CUSTOMER, "handoff", i);
                let mut state = PersistedCustomer {
                    applied_seq: 0,
                    customer: Customer::default(),
                    parked: vec![],
                    quarantined: vec![],
                    last_input_at: Timestamp::default(),
                };
                state.customer.profile = Some(fixtures::profile(id, false));
                CustomerActor {
                    id,
                    partition: 0,
                    state,
                    dirty: false,
                    shared: Arc::clone(&shared),
                }
                .start()
            })
            .collect()
    });
    let mut seq = 0u64;
    group.bench_function("1000_actors_x_100_inputs", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    for addr in &addrs {
                        let inputs = (0..BATCH)
                            .map(|_| {
                                seq += 1;
                                Sequenced {
                                    seq,
                                    at: now(),
                                    catalog_version: 7,
                                    input: Input::Tick,
                                    reply: None,
                                }
                            })
                            .collect();
                        shared.pending[0].admit(BATCH, 0);
                        addr.do_send(ApplyInputs(inputs));
                    }
                    while shared.pending[0].pending() > 0 {
                        actix_rt::task::yield_now().await;
                    }
                }
                started.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench_engine, bench_handoff);
criterion_main!(benches);

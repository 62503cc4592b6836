//! Heap bytes per resident customer (goal P6 of PERFORMANCE.md), measured exactly with a
//! counting global allocator instead of read off an RSS slope: live bytes and live allocations,
//! by size class, before and after `N` customers of the shape `tollgate bench` creates (an
//! ingest alias, a prepaid commit, a contract carrying both threshold configurations), in three
//! settings: the domain state alone, the same state after a checkpoint round trip (what a
//! customer read from disk costs), and the whole engine (actor, mailbox, registry, resident map
//! and state). It also walks one state field by field to say which buffer holds which bytes and
//! how much of it is unused `Vec` capacity.
//!
//! Measurement only: nothing here changes the engine. Figures are requested bytes (what the
//! code asks for) and the same rounded up to the blocks mimalloc, the server's allocator, would
//! hand out; RSS adds free pages and RocksDB's own memory, and is printed beside the engine's
//! figures for comparison. The allocator is in `memory/counting.rs`, the walk of a state in
//! `memory/parts.rs`.
//!
//! `cargo bench --bench memory`; figures are recorded in BENCHMARKS.md ("P6: what a resident
//! customer is made of").

#[path = "memory/counting.rs"]
mod counting;
#[path = "memory/parts.rs"]
mod parts;

use std::mem::size_of;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use rustc_hash::FxHashMap;
use tollgate::actors::clock::SystemClock;
use tollgate::actors::customer::CustomerActor;
use tollgate::actors::engine::EngineConfig;
use tollgate::actors::entry::{PersistedCustomer, STATE_VERSION};
use tollgate::actors::handles::Sinks;
use tollgate::actors::metrics::EngineMetrics;
use tollgate::actors::payment::PaymentActor;
use tollgate::actors::registry::Registry;
use tollgate::actors::shared::Shared;
use tollgate::actors::webhook::{WebhookActor, WebhookSettings};
use tollgate::actors::{Engine, EngineSettings, IngestEvent};
use tollgate::domain::catalog::Catalog;
use tollgate::domain::contract::{
    Commit, Contract, ContractCaches, Deduction, InvoiceScheduleItem, LineDraw, PurchaseInvoice,
    Segment, ThresholdConfig, UsageLine, UsagePeriod,
};
use tollgate::domain::customer::{ContractSpec, Ctx, Customer, CustomerProfile, Input};
use tollgate::domain::fixtures;
use tollgate::domain::gate::{GateType, PaymentGateConfig, Workflow};
use tollgate::domain::money::CreditType;
use tollgate::domain::usage::UsageEvent;
use tollgate::domain::{Id, Limits, Money, Timestamp};
use tollgate::storage::{self, Durability, Store, StoreOptions};

use counting::{CLASS_BYTES, CLASSES, Delta, Snapshot, mimalloc_block, rss_bytes, sum};
use parts::{Parts, parts_of};

/// Customers per setting: enough that fixed costs vanish in the per-customer figure, few
/// enough that the engine setting creates them in seconds.
const CUSTOMERS: usize = 20_000;
/// `tollgate bench` names customers and aliases after an 8-hex-digit run id.
const RUN_ID: &str = "1a2b3c4d";
/// `src/bench/population.rs`: the contract of a customer that never crosses during a run.
const PREPAID_COMMIT_CENTS: i64 = 1_000_000_000;
const PREPAID_THRESHOLD_CENTS: i64 = 500;
const RECHARGE_TO_CENTS: i64 = 1_500;
const SPEND_THRESHOLD_CENTS: i64 = 100_000_000;
/// `config/default.toml`.
const MAILBOX_CAPACITY: usize = 1_024;
const DEDUPE_MEMORY_ENTRIES: usize = 1_000_000;
const INGEST_BATCH: usize = 100;

// ---- The customer `tollgate bench` creates ------------------------------------------------

fn customer_id(i: usize) -> Id {
    Id::derive(fixtures::CUSTOMER, "memory", i as u64)
}

fn alias(i: usize) -> String {
    format!("bench-{RUN_ID}-{i}")
}

/// `POST /v1/customers` with a name and one ingest alias.
fn profile(i: usize, at: Timestamp) -> CustomerProfile {
    CustomerProfile {
        name: format!("bench {RUN_ID} {i}"),
        ingest_aliases: vec![alias(i)],
        created_at: at,
        ..fixtures::profile(customer_id(i), false)
    }
}

/// `POST /v1/contracts/create` as `src/bench/setup.rs` sends it: no name, no end, starting at
/// the month start, one prepaid commit and both thresholds with gate NONE.
fn contract_spec(i: usize, start: Timestamp) -> ContractSpec {
    let mut commit = fixtures::prepaid_commit(PREPAID_COMMIT_CENTS, 10);
    let end = Timestamp(4_070_908_800_000); // 2099-01-01
    commit.access_schedule = vec![(Money::from_i64(PREPAID_COMMIT_CENTS), start, end)];
    commit.invoice_schedule = vec![(
        start,
        Money::from_i64(PREPAID_COMMIT_CENTS),
        rust_decimal::Decimal::ONE,
    )];
    let mut spend = fixtures::spend_threshold(SPEND_THRESHOLD_CENTS, GateType::None);
    let mut prepaid =
        fixtures::prepaid_threshold(PREPAID_THRESHOLD_CENTS, RECHARGE_TO_CENTS, GateType::None);
    spend.commit.name = Some("bench threshold commit".into());
    prepaid.commit.name = Some("bench threshold commit".into());
    ContractSpec {
        name: None,
        starting_at: start,
        ending_before: None,
        commits: vec![commit],
        spend_threshold: Some(spend),
        prepaid_threshold: Some(prepaid),
        ..fixtures::contract(Id::derive(customer_id(i), "contract", 0))
    }
}

/// One `api_call` event, with a transaction id shaped like the loader's.
fn event(i: usize, round: usize, at: Timestamp) -> UsageEvent {
    fixtures::api_call(&format!("{RUN_ID}{round}-{i}"), at)
}

fn now() -> Timestamp {
    Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    )
}

// ---- 1 and 2: the domain state ------------------------------------------------------------

/// One step of building the states and what it left live per customer.
struct Step {
    what: &'static str,
    delta: Delta,
}

/// Applies `input(i)` to every state, returning what stayed live.
fn apply_all(
    states: &mut [PersistedCustomer],
    ctx: &Ctx<'_>,
    what: &'static str,
    input: impl Fn(usize) -> Input,
) -> Step {
    let before = Snapshot::take();
    for (i, state) in states.iter_mut().enumerate() {
        state
            .customer
            .apply(&input(i), ctx)
            .expect("bench input applies");
        state.applied_seq += 1;
    }
    Step {
        what,
        delta: Snapshot::take().since(&before),
    }
}

fn bench_ctx<'a>(catalog: &'a Catalog, limits: &'a Limits) -> Ctx<'a> {
    Ctx {
        at: now().month_start().plus_ms(1_000),
        catalog,
        catalog_version: catalog.version(),
        limits,
    }
}

/// The states of `CUSTOMERS` customers built through the domain, step by step, up to the
/// first usage event.
fn domain_states(ctx: &Ctx<'_>) -> (Vec<PersistedCustomer>, Vec<Step>) {
    let ctx = *ctx;
    let start = ctx.at.month_start();
    let mut states: Vec<PersistedCustomer> = Vec::with_capacity(CUSTOMERS);
    states.resize_with(CUSTOMERS, PersistedCustomer::default);
    let steps = vec![
        apply_all(&mut states, &ctx, "profile (CreateCustomer)", |i| {
            Input::create_customer(profile(i, ctx.at))
        }),
        apply_all(&mut states, &ctx, "+ contract (CreateContract)", |i| {
            Input::create_contract(contract_spec(i, start))
        }),
        apply_all(
            &mut states,
            &ctx,
            "+ first usage event (opens the period)",
            |i| Input::RecordUsage(event(i, 0, ctx.at)),
        ),
    ];
    (states, steps)
}

/// Each state encoded as a checkpoint and decoded again, as `load_state` does.
fn decoded_states(states: &[PersistedCustomer]) -> (Vec<PersistedCustomer>, Delta, usize) {
    let mut decoded = Vec::with_capacity(states.len());
    let mut encoded_bytes = 0;
    let before = Snapshot::take();
    for state in states {
        let bytes = storage::encode(STATE_VERSION, state).expect("state encodes");
        encoded_bytes += bytes.len();
        let mut state: PersistedCustomer =
            storage::decode(STATE_VERSION, &bytes).expect("state decodes");
        state.customer.rebuild_caches();
        decoded.push(state);
    }
    let delta = Snapshot::take().since(&before);
    (decoded, delta, encoded_bytes)
}

// ---- 3: actors, registry, resident map, and the whole engine --------------------------------

fn settings(mailbox_capacity: usize) -> EngineSettings {
    EngineSettings {
        partitions: 2,
        limits: Limits::default(),
        webhook_routes: vec![],
        mailbox_capacity,
        pending_inputs_max: 200_000,
        apply_lag_max_ms: 60_000,
        // No checkpoint, eviction, tick or preload during the measurement.
        checkpoint_interval_ms: 3_600_000,
        checkpoint_every_inputs: 100_000_000,
        evict_idle_ms: 3_600_000,
        preload_customers_max: 0,
        tick_interval_ms: 3_600_000,
        housekeeping_ms: 200,
        late_window_ms: 34 * 86_400_000,
    }
}

/// What the engine keeps per customer outside its state, built piece by piece.
struct Overheads {
    actor: Delta,
    actor_small_mailbox: Delta,
    resident_entry: Delta,
    registry: Delta,
}

/// The resident map's entry as `partition.rs` lays it out (`Resident` is private): the actor's
/// address, the last input time, the dirty flag, the in-flight query counter.
type ResidentEntry = (Addr<CustomerActor>, i64, bool, Arc<AtomicUsize>);

/// `CUSTOMERS` customer actors with empty states started on one arbiter.
async fn start_actors(shared: &Arc<Shared>, first: usize) -> (Vec<Addr<CustomerActor>>, Delta) {
    let mut addrs = Vec::with_capacity(CUSTOMERS);
    let before = Snapshot::take();
    for i in first..first + CUSTOMERS {
        let actor = CustomerActor {
            id: customer_id(i),
            partition: 0,
            state: PersistedCustomer::default(),
            dirty: false,
            shared: Arc::clone(shared),
        };
        addrs.push(actor.start());
    }
    // Let every actor run `started` (which sets its mailbox capacity).
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    (addrs, Snapshot::take().since(&before))
}

fn shared_on(dir: &std::path::Path, mailbox_capacity: usize) -> Arc<Shared> {
    let store = Store::open(
        dir,
        StoreOptions {
            durability: Durability::Wal,
            ..StoreOptions::default()
        },
    )
    .expect("store opens");
    Arc::new(Shared::new(
        store,
        settings(mailbox_capacity),
        Arc::new(SystemClock),
        Arc::new(EngineMetrics::default()),
        fixtures::catalog(),
        (Sinks::detached::<WebhookActor, PaymentActor>(), Vec::new()),
    ))
}

fn overheads() -> Overheads {
    let system = actix_rt::System::new();
    let (dir, small_dir) = (tempdir(), tempdir());
    let shared = shared_on(dir.path(), MAILBOX_CAPACITY);
    let small = shared_on(small_dir.path(), 16);
    system.block_on(async {
        let (addrs, actor) = start_actors(&shared, 0).await;
        let (small_addrs, actor_small_mailbox) = start_actors(&small, CUSTOMERS).await;
        // The partition keeps the one address `start` returned: moved, not cloned (a clone
        // allocates a sender of its own); the drained vector keeps its buffer.
        let mut addrs = addrs;
        let mut residents: FxHashMap<Id, ResidentEntry> = FxHashMap::default();
        let before = Snapshot::take();
        for (i, addr) in addrs.drain(..).enumerate() {
            residents.insert(customer_id(i), (addr, 0, false, Arc::default()));
        }
        let resident_entry = Snapshot::take().since(&before);
        let aliases: Vec<String> = (0..CUSTOMERS).map(alias).collect();
        let registry = Registry::default();
        let before = Snapshot::take();
        for (i, alias) in aliases.iter().enumerate() {
            registry.set(customer_id(i), &[], std::slice::from_ref(alias));
        }
        let registry_delta = Snapshot::take().since(&before);
        drop((residents, small_addrs, addrs));
        Overheads {
            actor,
            actor_small_mailbox,
            resident_entry,
            registry: registry_delta,
        }
    })
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn engine_config(dir: &std::path::Path, dedupe_memory_entries: usize) -> EngineConfig {
    EngineConfig {
        data_dir: dir.to_path_buf(),
        durability: Durability::Wal,
        dedupe_window_ms: 34 * 86_400_000,
        dedupe_memory_entries,
        settings: settings(MAILBOX_CAPACITY),
        webhooks: WebhookSettings::default(),
        submit_capacity: 1024,
    }
}

/// One phase of the engine setting: what stayed live since the previous one.
struct Phase {
    what: &'static str,
    delta: Delta,
    rss: i64,
    seconds: f64,
}

/// Waits until every accepted input is applied and housekeeping has run (staged invoice
/// index written), then a little longer so the arbiters are idle.
async fn settle(engine: &Engine) {
    while engine.pending_inputs() > 0 {
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    actix_rt::time::sleep(Duration::from_millis(1_000)).await;
}

async fn create_customers(engine: &Engine) {
    let start = now().month_start();
    for i in 0..CUSTOMERS {
        engine
            .create_customer(profile(i, now()))
            .await
            .expect("customer created");
        engine
            .apply(
                customer_id(i),
                Input::create_contract(contract_spec(i, start)),
            )
            .await
            .expect("contract created");
    }
}

async fn ingest_round(engine: &Engine, round: usize) {
    for first in (0..CUSTOMERS).step_by(INGEST_BATCH) {
        let events = (first..(first + INGEST_BATCH).min(CUSTOMERS))
            .map(|i| IngestEvent {
                customer_key: alias(i),
                event: event(i, round, now()),
            })
            .collect();
        let receipt = engine.ingest(events).await.expect("events accepted");
        assert_eq!(receipt.duplicates, 0, "every transaction id is new");
    }
}

/// Runs `work`, settles, and records what stayed live.
async fn phase(
    engine: &Engine,
    what: &'static str,
    work: impl std::future::Future<Output = ()>,
) -> Phase {
    let (before, rss_before, started) = (Snapshot::take(), rss_bytes(), Instant::now());
    work.await;
    let seconds = started.elapsed().as_secs_f64();
    settle(engine).await;
    Phase {
        what,
        delta: Snapshot::take().since(&before),
        rss: rss_bytes() - rss_before,
        seconds,
    }
}

/// The engine's phases. With `dedupe_memory_entries` 0 transaction ids are checked in RocksDB
/// only, so the phases hold nothing but customers.
fn engine_phases(dedupe_memory_entries: usize) -> Vec<Phase> {
    let system = actix_rt::System::new();
    let dir = tempdir();
    let config = engine_config(dir.path(), dedupe_memory_entries);
    system.block_on(async {
        let engine = Engine::start(config, Arc::new(SystemClock), None)
            .await
            .expect("engine starts");
        for change in fixtures::catalog_changes() {
            engine.change_catalog(change).await.expect("catalog change");
        }
        settle(&engine).await;
        let phases = vec![
            phase(
                &engine,
                "customers + contracts (the setup's RSS slope)",
                create_customers(&engine),
            )
            .await,
            phase(&engine, "+ first event each", ingest_round(&engine, 0)).await,
            phase(&engine, "+ second event each", ingest_round(&engine, 1)).await,
        ];
        assert_eq!(
            engine.metrics().actors_resident.load(Relaxed),
            CUSTOMERS as i64
        );
        phases
    })
}

// ---- Printing -------------------------------------------------------------------------------

fn row(what: &str, delta: &Delta) {
    println!(
        "| {what} | {:.0} | {:.0} | {:.2} |",
        delta.bytes_per(CUSTOMERS),
        delta.mimalloc_bytes_per(CUSTOMERS),
        delta.allocs_per(CUSTOMERS)
    );
}

fn print_parts(title: &str, parts: &Parts) {
    let n = CUSTOMERS as f64;
    println!("\n{title}\n");
    println!("| part | bytes/customer | of which unused capacity | allocations/customer |");
    println!("|---|---:|---:|---:|");
    for (part, heap) in parts.0.iter().filter(|(_, h)| h.allocs > 0) {
        println!(
            "| {part} | {:.0} | {:.0} | {:.2} |",
            heap.bytes as f64 / n,
            (heap.bytes - heap.used) as f64 / n,
            heap.allocs as f64 / n
        );
    }
    let total = parts.total();
    println!(
        "| **sum of the buffers walked** | **{:.0}** | **{:.0}** | **{:.2}** |",
        total.bytes as f64 / n,
        (total.bytes - total.used) as f64 / n,
        total.allocs as f64 / n
    );
}

/// The size classes that hold most of `delta`'s bytes.
fn print_classes(title: &str, delta: &Delta) {
    let mut classes: Vec<(usize, (i64, i64))> = delta
        .classes
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, (count, _))| *count != 0)
        .collect();
    classes.sort_by_key(|(_, (_, bytes))| std::cmp::Reverse(bytes.abs()));
    println!("\n{title}\n");
    println!("| requested size | allocations/customer | bytes/customer |");
    println!("|---|---:|---:|");
    for (class, (count, bytes)) in classes.into_iter().take(14) {
        let size = match class {
            0 => "0".to_owned(),
            c if c == CLASSES - 1 => format!("> {} B", (CLASSES - 1) * CLASS_BYTES),
            c => format!("{}-{} B", (c - 1) * CLASS_BYTES + 1, c * CLASS_BYTES),
        };
        println!(
            "| {size} | {:.2} | {:.0} |",
            count as f64 / CUSTOMERS as f64,
            bytes as f64 / CUSTOMERS as f64
        );
    }
}

fn print_sizes() {
    println!("\n`size_of` (bytes, inline; heap buffers come on top)\n");
    println!("| type | bytes |");
    println!("|---|---:|");
    let sizes: &[(&str, usize)] = &[
        ("CustomerActor", size_of::<CustomerActor>()),
        ("PersistedCustomer", size_of::<PersistedCustomer>()),
        ("Customer", size_of::<Customer>()),
        ("CustomerProfile", size_of::<CustomerProfile>()),
        ("Contract", size_of::<Contract>()),
        ("ContractCaches", size_of::<ContractCaches>()),
        ("CreditType", size_of::<CreditType>()),
        ("Commit", size_of::<Commit>()),
        ("Segment", size_of::<Segment>()),
        ("InvoiceScheduleItem", size_of::<InvoiceScheduleItem>()),
        ("Deduction", size_of::<Deduction>()),
        ("UsagePeriod", size_of::<UsagePeriod>()),
        ("UsageLine", size_of::<UsageLine>()),
        ("LineDraw", size_of::<LineDraw>()),
        ("PurchaseInvoice", size_of::<PurchaseInvoice>()),
        ("ThresholdConfig", size_of::<ThresholdConfig>()),
        (
            "Option<ThresholdConfig>",
            size_of::<Option<ThresholdConfig>>(),
        ),
        ("PaymentGateConfig", size_of::<PaymentGateConfig>()),
        ("Workflow", size_of::<Workflow>()),
        ("Money (rust_decimal::Decimal)", size_of::<Money>()),
        ("Id (uuid)", size_of::<Id>()),
        ("ResidentEntry (Id, Addr, i64, bool, Arc)", {
            size_of::<(Id, ResidentEntry)>()
        }),
    ];
    for &(name, bytes) in sizes {
        println!("| {name} | {bytes} |");
    }
}

fn encoded_len<T: serde::Serialize>(value: &T) -> usize {
    storage::encode(0, value).expect("part encodes").len() - 1
}

fn print_encoded(state: &PersistedCustomer, mean: f64) {
    let contract = &state.customer.contracts[0];
    println!(
        "\nEncoded state (bincode, `STATE_VERSION` {STATE_VERSION}): {} bytes for customer 0, \
         {mean:.1} on average; of it profile {}, commits {}, periods {}, purchases {}, \
         thresholds {}",
        encoded_len(state),
        encoded_len(&state.customer.profile),
        encoded_len(&contract.commits),
        encoded_len(&contract.periods),
        encoded_len(&contract.purchases),
        encoded_len(&(&contract.spend_threshold, &contract.prepaid_threshold)),
    );
}

/// Everything the three settings measured.
struct Measured {
    steps: Vec<Step>,
    second: Step,
    decoded: Delta,
    overheads: Overheads,
    phases: Vec<Phase>,
    with_dedupe: Vec<Phase>,
}

/// Runs the three settings; returns the measurements, the states after two events, the
/// decoded states (after one) and the bytes of all encoded states.
fn measure(
    ctx: &Ctx<'_>,
) -> (
    Measured,
    Vec<PersistedCustomer>,
    Vec<PersistedCustomer>,
    usize,
) {
    let (mut states, steps) = domain_states(ctx);
    let (decoded_states, decoded, encoded_bytes) = decoded_states(&states);
    let second = apply_all(&mut states, ctx, "+ a second usage event", |i| {
        Input::RecordUsage(event(i, 1, ctx.at))
    });
    let measured = Measured {
        steps,
        second,
        decoded,
        overheads: overheads(),
        phases: engine_phases(0),
        with_dedupe: engine_phases(DEDUPE_MEMORY_ENTRIES),
    };
    (measured, states, decoded_states, encoded_bytes)
}

fn print_table(m: &Measured) {
    println!("| what | bytes/customer | as mimalloc blocks | allocations/customer |");
    println!("|---|---:|---:|---:|");
    for step in m.steps.iter().chain([&m.second]) {
        row(&format!("1. domain: {}", step.what), &step.delta);
    }
    let domain = sum(
        &[&m.steps[0].delta, &m.steps[1].delta, &m.steps[2].delta],
        &[],
    );
    row("**1. domain state after one event**", &domain);
    row(
        "**2. the same after encode/decode + rebuild_caches**",
        &m.decoded,
    );
    for p in &m.phases {
        row(&format!("3. engine: {}", p.what), &p.delta);
    }
    let resident = sum(&[&m.phases[0].delta, &m.phases[1].delta], &[]);
    let o = &m.overheads;
    row(
        "**3. engine: a resident customer after one event**",
        &resident,
    );
    row(
        "3a. of which the actor, empty state (task, context, mailbox, address)",
        &o.actor,
    );
    row(
        "3a'. the same with mailbox capacity 16",
        &o.actor_small_mailbox,
    );
    row(
        "3b. of which the resident map entry (bucket, query counter)",
        &o.resident_entry,
    );
    row(
        "3c. of which the registry (customer id, alias)",
        &o.registry,
    );
    let parts = [&domain, &o.actor, &o.resident_entry, &o.registry];
    row(
        "3d. rest (3 - 1 - 3a - 3b - 3c)",
        &sum(&[&resident], &parts),
    );
    row(
        "dedupe window: one accepted event (per event, not per customer; 1M entries at most)",
        &m.with_dedupe[2].delta,
    );
    println!(
        "\n`PersistedCustomer` itself ({} bytes) is inline in the actor (3a), not in 1 or 2. \
         Dedupe off (`dedupe_memory_entries` 0) in the engine rows 3, on (1M) in the last row.",
        size_of::<PersistedCustomer>()
    );
    print_classes(
        "Engine, a resident customer after one event: live allocations by size",
        &resident,
    );
}

fn print_phases(m: &Measured) {
    println!("\nEngine phases: RSS (glibc malloc, RocksDB included) and time");
    let dedupe = &m.with_dedupe[2];
    for (p, note) in m
        .phases
        .iter()
        .map(|p| (p, ""))
        .chain([(dedupe, " (dedupe on)")])
    {
        println!(
            "- {}{note}: RSS {:+.0} bytes/customer, {:.1} s",
            p.what,
            p.rss as f64 / CUSTOMERS as f64,
            p.seconds
        );
    }
    print_classes(
        "Actor with an empty state: live allocations by size",
        &m.overheads.actor,
    );
}

fn main() {
    // mimalloc's first block sizes in words are 1..=8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ...
    // (`MI_PAGE_QUEUES_EMPTY` in its `init.c`).
    for (size, block) in [
        (1, 8),
        (64, 64),
        (65, 80),
        (129, 160),
        (768, 768),
        (1048, 1280),
    ] {
        assert_eq!(
            mimalloc_block(size),
            block,
            "mimalloc block of {size} bytes"
        );
    }
    let catalog = fixtures::catalog();
    let limits = Limits::default();
    let ctx = bench_ctx(&catalog, &limits);
    println!("P6 memory per resident customer, {CUSTOMERS} customers per setting\n");
    let (measured, states, decoded, encoded_bytes) = measure(&ctx);
    print_table(&measured);
    print_phases(&measured);
    print_parts(
        "State by part, as the domain builds it (after two events)",
        &parts_of(&states),
    );
    print_parts(
        "State by part, after decode (of the state after one event)",
        &parts_of(&decoded),
    );
    print_sizes();
    print_encoded(&states[0], encoded_bytes as f64 / CUSTOMERS as f64);
}

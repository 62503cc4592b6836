//! One seed's run: the real engine and its HTTP API, on one thread with paused time, driven by
//! a seeded workload, crashed and restarted, and checked against the model and the invariants.
//!
//! Determinism: every actor runs on the test's own arbiter ([`Placement::CurrentThread`]) on a
//! current-thread runtime whose clock is paused (timers fire in order as the driver sleeps),
//! the engine's clock reads that runtime's time, randomness comes from the seed, and requests
//! reach the API in-process (no sockets). The same seed gives the same trace.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::{test, web};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tollgate::actors::clock::Clock;
use tollgate::actors::engine::EngineConfig;
use tollgate::actors::entry::{LATE_PREFIX, PersistedCustomer, late_customer_key, partition_of};
use tollgate::actors::webhook::{Destination, WebhookSettings};
use tollgate::actors::{Disk, Engine, EngineSettings, Placement, Seams};
use tollgate::domain::fixtures::{COMMIT_PRODUCT, RATE_CARD};
use tollgate::domain::{Id, Limits, Timestamp, fixtures};
use tollgate::http::AppState;
use tollgate::storage::Durability;
use tollgate::storage::StorageError;
use tollgate::storage::faults::{FaultInjector, Faults, StorageOp};
use tollgate::storage::sim::{CrashKind, FailedWrite, SimDisk};

use tollgate::actors::payment::{PaymentSettings, Payments};
use tollgate::http::stripe::StripeWebhook;
use tollgate::payments::stripe::StripeProvider;

use super::model::{AliasMove, CustomerModel, Model, RateChange, SentEvent, Status, Usage};
pub use lifecycle::RailsModel;

#[path = "alerts.rs"]
mod alerts;
#[path = "lifecycle.rs"]
mod lifecycle;
use super::receiver::Receiver;
use super::stripe::{self as sim_stripe, SimStripe};

const TOKEN: &str = "sim-token";
/// The name the simulated integrator's token is recorded under in the audit log.
const SIM_TOKEN_NAME: &str = "sim";
const WEBHOOK_URL: &str = "http://receiver.sim/hooks";
/// 2026-03-30T00:00:00Z: a run starts here plus a seeded offset of up to two days, in
/// simulated time, so that most runs cross the end of a billing period (April 1st).
const START_MS: i64 = 1_774_828_800_000;
const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// What a run covered, printed per seed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub seed: u64,
    pub trace_hash: u64,
    pub steps: usize,
    pub requests: usize,
    pub events: usize,
    pub lifetimes: usize,
    pub crashes: usize,
    /// Crashes after which recovery was compared with the killed engine's states.
    pub recoveries_checked: usize,
    /// Of the crashes, those that struck while a request was being handled, before its answer.
    pub crashes_in_flight: usize,
    pub storage_faults: usize,
    pub webhooks: usize,
    pub webhook_failures: u64,
    /// Webhook dead letters re-driven by the operator (and delivered by the end).
    pub redriven: usize,
    pub releases: usize,
    /// Cancels answered 200 or 409 (paid).
    pub cancels: usize,
    /// Commits added with an EXTERNAL or NONE payment gate.
    pub gated_commits: usize,
    /// Customer-level commits and credits created.
    pub customer_commits: usize,
    /// Manual ledger entries applied.
    pub manual_entries: usize,
    /// Commits archived.
    pub commits_archived: usize,
    /// Commits raised by `update_commits`.
    pub commits_updated: usize,
    /// Inputs a buggy version quarantined, and the operator's decisions on them.
    pub quarantined: usize,
    pub reapplied: usize,
    pub discarded: usize,
    pub stripe_calls: u64,
    pub stripe_faults: u64,
    pub stripe_events: u64,
    /// At the last check: holds recharge rails started, contracts ended (announced), end
    /// dates set or lifted (answered 200), lifecycle notices received.
    pub rail_holds: u64,
    pub contracts_ended: usize,
    pub end_dates: usize,
    pub lifecycle_notices: usize,
    /// Alerts created (answered 200), and alert webhooks received (alarms and resolutions).
    pub alerts_created: usize,
    pub alert_webhooks: usize,
    /// Usage lines in credits at the end, and the converted draws on them (fiat paying).
    pub credit_lines: usize,
    pub converted_draws: usize,
}

/// How long a run is.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub steps: usize,
    pub customers: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            steps: 160,
            customers: 3,
        }
    }
}

/// The engine's clock: the paused runtime's time, offset to simulated wall time. Set at the
/// start of each process lifetime.
#[derive(Default)]
struct SimTime {
    base_ms: AtomicI64,
    start: Mutex<Option<tokio::time::Instant>>,
}

impl SimTime {
    fn restart(&self, now_ms: i64) {
        self.base_ms.store(now_ms, SeqCst);
        *self.start.lock().unwrap() = Some(tokio::time::Instant::now());
    }
}

impl Clock for SimTime {
    fn now_ms(&self) -> i64 {
        let base = self.base_ms.load(SeqCst);
        match *self.start.lock().unwrap() {
            Some(start) => base + start.elapsed().as_millis() as i64,
            None => base,
        }
    }
}

/// Every request and answer, hashed in order: two runs of one seed must agree.
#[derive(Default)]
struct Trace {
    hasher: xxhash_rust::xxh3::Xxh3,
    requests: usize,
}

impl Trace {
    fn record(&mut self, what: &str, status: u16, body: &[u8]) {
        self.hasher.update(what.as_bytes());
        self.hasher.update(&status.to_be_bytes());
        self.hasher.update(body);
        self.requests += 1;
    }
}

/// The simulation's storage faults: the n-th operation of one kind from now fails, once (a
/// transient error) or from then on (a disk gone bad).
#[derive(Default)]
struct SimFaults {
    plan: Mutex<Option<FaultPlan>>,
    /// Faults that struck an engine operation.
    fired: std::sync::atomic::AtomicUsize,
    /// The simulation itself is reading the store (its checks): no fault strikes.
    quiet: std::sync::atomic::AtomicBool,
}

#[derive(Clone, Copy)]
struct FaultPlan {
    kind: StorageOp,
    /// Operations of `kind` to let through first.
    skip: u64,
    once: bool,
}

impl SimFaults {
    fn arm(&self, plan: FaultPlan) {
        *self.plan.lock().unwrap() = Some(plan);
    }

    /// Runs the simulation's own read of the store with faults held off.
    fn quietly<T>(&self, read: impl FnOnce() -> T) -> T {
        self.quiet.store(true, SeqCst);
        let result = read();
        self.quiet.store(false, SeqCst);
        result
    }
}

impl FaultInjector for SimFaults {
    fn before(&self, op: StorageOp) -> Result<(), StorageError> {
        if self.quiet.load(SeqCst) {
            return Ok(());
        }
        let mut plan = self.plan.lock().unwrap();
        let Some(armed) = plan.as_mut() else {
            return Ok(());
        };
        if armed.kind != op {
            return Ok(());
        }
        if armed.skip > 0 {
            armed.skip -= 1;
            return Ok(());
        }
        if armed.once {
            *plan = None;
        }
        self.fired.fetch_add(1, SeqCst);
        Err(StorageError::Injected(format!("simulated {op:?} failure")))
    }
}

/// How a lifetime ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The process died (kill -9): no checkpoint, nothing more written.
    Crash,
    /// A storage fault stopped the engine (fail-stop); the supervisor restarts it.
    FailStop,
    /// The run's steps are done.
    Done,
}

struct Sim {
    seed: u64,
    options: Options,
    rng: StdRng,
    model: Model,
    trace: Trace,
    report: Report,
    time: Arc<SimTime>,
    now_ms: i64,
    receiver: Receiver,
    stripe: SimStripe,
    swarm: Swarm,
    dir: tempfile::TempDir,
    config: EngineConfig,
    storage: Storage,
    /// Control requests without a definitive answer, re-sent with their key until they get one.
    retries: Vec<Request>,
    /// Workflow ids already released (or failed) by the simulated integrator: paid or not.
    decided: BTreeMap<String, bool>,
    /// What the API answered that it must not have.
    violations: Vec<String>,
    /// Path and status of every answered control request below 500: each must be in the
    /// audit log at the end.
    answered: Vec<(String, u16)>,
    txn_counter: u64,
    step: usize,
    /// What the engine held when it was killed, for the restart to reach again.
    at_crash: Option<CrashPoint>,
    /// Kill the process at the next step (an alias move or a new rate was just answered).
    crash_soon: bool,
    /// Cut the step's requests after this many polls (the process is killed meanwhile).
    interrupt: Option<usize>,
    /// A request of the step was cut before its answer.
    cut_unanswered: bool,
    /// The buggy version's bug was fixed by an upgrade (a restart on a version without it).
    bug_fixed: bool,
    /// Quarantine entries the operator has sent a decision on (answered or not).
    decisions_sent: std::collections::HashSet<String>,
    /// The storage faults of the current process lifetime.
    faults: Arc<SimFaults>,
}

/// A webhook receiver that never answers (the recovery check's: nothing is delivered).
struct Unanswered;

impl tollgate::actors::webhook::WebhookTransport for Unanswered {
    fn deliver(
        &self,
        _request: tollgate::actors::webhook::WebhookRequest,
    ) -> tollgate::actors::webhook::DeliveryFuture {
        Box::pin(std::future::pending())
    }
}

/// The customer states and pending outbox entries of an engine just before a kill -9.
struct CrashPoint {
    states: Vec<PersistedCustomer>,
    outbox: Vec<Vec<u8>>,
    /// Effects already carried out (or dead-lettered).
    settled: std::collections::BTreeSet<Vec<u8>>,
}

/// What differs between seeds beyond the workload's draws (swarm testing).
#[derive(Clone, Copy, Debug)]
struct Swarm {
    /// How often the integrator answers an EXTERNAL workflow `failed`.
    failed_releases: f64,
    /// How often a Stripe outage outlasts the 24 h key window.
    long_outages: f64,
    /// The share of thresholds with a STRIPE gate.
    stripe_gates: f64,
    /// Aliases move often (both moves in most runs, across two or three partitions, the process
    /// killed right after the second), not once in a while.
    busy_aliases: bool,
    /// The process is killed right after an alias move or a new rate is answered, before a
    /// checkpoint can cover it: recovery must replay both halves of the move, across
    /// partitions, into the right map, and usage accepted before the rate at its old price.
    crash_after_changes: bool,
    /// Webhooks are given up on after 20 minutes instead of 72 hours, so receiver outages
    /// leave dead letters that the operator re-drives (through the API, now and then and at
    /// the end).
    short_webhook_window: bool,
    /// The first lifetimes run a version with a bug: usage whose transaction id starts with
    /// `poison-` panics when applied and is quarantined; an upgrade at a restart fixes it, and
    /// the operator re-applies or discards what was quarantined (through the API).
    buggy_version: bool,
}

/// Where a run's data lives.
#[derive(Clone)]
enum Storage {
    /// The simulated disk: a crash keeps what the crash kind keeps.
    Sim(Arc<SimDisk>),
    /// Real RocksDB with inline appends: a crash keeps everything written (a process crash).
    RocksDb,
}

/// A control request as the client sends it (again, with the same key, after no answer).
#[derive(Clone, Debug)]
struct Request {
    path: String,
    body: Value,
    key: String,
    purpose: Purpose,
}

impl Request {
    /// The request as the client sends it: the bearer token and its `Idempotency-Key`.
    fn to_http(&self) -> actix_http::Request {
        test::TestRequest::post()
            .uri(&self.path)
            .insert_header(("authorization", format!("Bearer {TOKEN}")))
            .insert_header(("idempotency-key", self.key.clone()))
            .set_json(&self.body)
            .to_request()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    CreateCustomer(usize),
    CreateContract(usize),
    ArchiveTokens,
    ArchiveCustomer(usize),
    /// A commit the integrator adds to customer `.0`'s contract.
    AddCommit(usize),
    /// A customer-level commit or credit of customer `.0`.
    AddCustomerCommit(usize),
    /// A customer-level commit's or credit's access shortened.
    EndCustomerCommit,
    /// A manual ledger entry of `.1` cents on a balance of customer `.0`.
    ManualEntry(usize, rust_decimal::Decimal),
    /// An archive of a commit added to customer `.0`'s contract.
    ArchiveCommit,
    /// A segment of `.1` cents added to a commit of customer `.0` by `update_commits`.
    RaiseCommit(usize, rust_decimal::Decimal),
    /// A threshold edit; one that is valid for a
    /// configuration the contract has must apply (a 4xx for it is a violation).
    EditThreshold {
        must_apply: bool,
    },
    /// The first half of an alias move: the alias taken from its customer.
    DropAlias,
    /// The second half: the alias given to the other customer.
    AddAlias,
    /// Another customer's alias, or a customer's id, as an alias: must be refused with 409.
    StealAlias,
    /// A new price for API calls, from an hour boundary ahead.
    AddRate,
    /// An operator's cancel of the workflow its path names (judged in `cancel_answered`).
    Cancel,
    /// A contract end date set or lifted (judged in `end_date_answered`).
    EndDate,
    /// An alert created, archived or reset (judged in `alert_answered`).
    Alert,
    /// A release, whose answers the workflow checks judge.
    Other,
}

/// Runs one seed.
///
/// # Errors
/// The first invariant that failed, with what was seen.
pub fn run(seed: u64, options: Options) -> Result<Report, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let time = Arc::new(SimTime::default());
    let clock_for_receiver = Arc::clone(&time);
    let receiver = Receiver::new(rng.random(), Arc::new(move || clock_for_receiver.now_ms()));
    // Swarm testing: each seed has its own weather, so that rare combinations are common in
    // some seeds.
    let swarm = Swarm {
        failed_releases: [0.1, 0.2, 0.5][rng.random_range(0..3)],
        long_outages: [0.0, 0.125, 0.5][rng.random_range(0..3)],
        stripe_gates: [0.3, 0.8][rng.random_range(0..2)],
        busy_aliases: rng.random_bool(0.5),
        crash_after_changes: rng.random_bool(0.5),
        // From the seed, not the generator: every other draw stays what it was.
        short_webhook_window: seed % 3 == 1,
        buggy_version: seed % 5 == 2,
    };
    let event_loss = [0, 12, 40, 100][rng.random_range(0..4)];
    let flaky = rng.random_bool(0.5);
    let stripe = SimStripe::new(
        rng.random(),
        Arc::clone(&time) as Arc<dyn Clock>,
        event_loss,
        flaky,
    );
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut config = engine_config(&mut rng, &dir.path().join("data"));
    if swarm.busy_aliases {
        // Moves can cross partitions.
        config.settings.partitions = config.settings.partitions.max(2);
    }
    if swarm.short_webhook_window {
        config.webhooks.give_up_after_ms = 20 * MINUTE_MS;
    }
    // One seed in four runs on real RocksDB.
    let storage = if seed % 4 == 3 {
        Storage::RocksDb
    } else {
        Storage::Sim(SimDisk::new())
    };
    let now_ms = START_MS + rng.random_range(0..2 * DAY_MS);
    let mut sim = Sim {
        seed,
        options,
        rng,
        model: Model::default(),
        trace: Trace::default(),
        report: Report {
            seed,
            ..Report::default()
        },
        time,
        now_ms,
        receiver,
        stripe,
        swarm,
        dir,
        config,
        storage,
        retries: Vec::new(),
        answered: Vec::new(),
        decided: BTreeMap::new(),
        violations: Vec::new(),
        txn_counter: 0,
        step: 0,
        at_crash: None,
        crash_soon: false,
        interrupt: None,
        cut_unanswered: false,
        bug_fixed: false,
        decisions_sent: std::collections::HashSet::new(),
        faults: Arc::default(),
    };
    for i in 0..options.customers {
        sim.model.customers.push(CustomerModel {
            name: format!("sim customer {i}"),
            alias: format!("sim-{i}"),
            late: i + 1 == options.customers && i > 0,
            ..CustomerModel::default()
        });
    }
    loop {
        let end = sim.lifetime()?;
        sim.report.lifetimes += 1;
        match end {
            End::Done => {
                // The process ends; a disk fault armed for later must not outlive it.
                if let Storage::Sim(disk) = &sim.storage {
                    disk.crash(CrashKind::ProcessCrash);
                }
                break;
            }
            End::Crash => sim.report.crashes += 1,
            End::FailStop => sim.report.storage_faults += 1,
        }
        sim.crash_disk();
        if let Some(at_crash) = sim.at_crash.take() {
            sim.recover_to_the_crash_point(&at_crash)?;
        }
        // Sometimes the restart is an upgrade that fixes the bug (after the recovery check,
        // which compares with the version that crashed).
        if sim.swarm.buggy_version && !sim.bug_fixed && sim.rng.random_ratio(1, 3) {
            sim.bug_fixed = true;
        }
        // The supervisor restarts it a little later.
        sim.now_ms += sim.rng.random_range(1_000..5 * MINUTE_MS);
    }
    sim.final_lifetime()?;
    let _ = &sim.dir;
    sim.report.trace_hash = sim.trace.hasher.digest();
    sim.report.requests = sim.trace.requests;
    sim.report.events = sim.model.sent.len();
    sim.report.steps = sim.step;
    sim.report.webhooks = sim.receiver.kept().len();
    sim.report.webhook_failures = sim.receiver.failures();
    sim.report.stripe_calls = sim.stripe.calls();
    sim.report.stripe_faults = sim.stripe.faults();
    sim.report.stripe_events = sim.stripe.events_delivered();
    Ok(sim.report)
}

fn engine_config(rng: &mut StdRng, data_dir: &std::path::Path) -> EngineConfig {
    EngineConfig {
        data_dir: data_dir.to_path_buf(),
        durability: if rng.random_bool(0.75) {
            Durability::Fsync
        } else {
            Durability::Wal
        },
        dedupe_window_ms: 34 * DAY_MS,
        dedupe_memory_entries: rng.random_range(0..64),
        settings: EngineSettings {
            partitions: rng.random_range(1..=3),
            limits: Limits::default(),
            webhook_routes: vec![tollgate::actors::shared::WebhookRoute::all(WEBHOOK_URL)],
            mailbox_capacity: 64,
            pending_inputs_max: 100_000,
            apply_lag_max_ms: 60_000,
            checkpoint_interval_ms: rng.random_range(1..10) * MINUTE_MS as u64,
            checkpoint_every_inputs: rng.random_range(20..400),
            evict_idle_ms: rng.random_range(1..30) * MINUTE_MS,
            // Preload everything, some, or nothing after a restart (drawn from a copy of the
            // generator, so the seeds' other draws stay what they were).
            preload_customers_max: [0, 3, 1_000][rng.clone().random_range(0..3)],
            tick_interval_ms: HOUR_MS as u64,
            // Coarser than production's: simulated hours pass in few wake-ups.
            housekeeping_ms: 5_000,
            late_window_ms: 34 * DAY_MS,
        },
        webhooks: WebhookSettings {
            destinations: vec![Destination {
                url: WEBHOOK_URL.into(),
                secret: "whsec_sim".into(),
            }],
            timeout_ms: 5_000,
            first_retry_ms: 1_000,
            max_interval_ms: 15 * MINUTE_MS,
            give_up_after_ms: 72 * HOUR_MS,
            concurrency_per_destination: 4,
            schedule_check_ms: 1_000,
            delivered_retention_ms: 72 * HOUR_MS,
        },
        submit_capacity: 256,
    }
}

/// A current-thread actix system whose clock is paused: it moves only while every task waits.
fn paused_system() -> actix_rt::SystemRunner {
    actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime")
    })
}

/// The in-process API as `actix_web::test::init_service` gives it.
trait Api:
    Service<actix_http::Request, Response = ServiceResponse<Self::Body>, Error = actix_web::Error>
{
    type Body: MessageBody;
}

impl<S, B> Api for S
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    type Body = B;
}

/// The engine's HTTP API in process, with its Stripe webhook endpoint.
async fn api(engine: &Engine) -> impl Api {
    let webhook = StripeWebhook {
        webhook_secret: sim_stripe::WEBHOOK_SECRET.into(),
        webhook_path: sim_stripe::WEBHOOK_PATH.into(),
    };
    let mut state = AppState::new(
        engine.clone(),
        &[tollgate::http::auth::TokenConfig::Scoped(
            tollgate::http::auth::ScopedToken {
                token: TOKEN.into(),
                name: Some(SIM_TOKEN_NAME.into()),
                scopes: vec!["operator".into()],
            },
        )],
        1 << 20,
    );
    state.stripe = Some(webhook.clone());
    let app = tollgate::http::app(web::Data::new(state), Some(webhook), Arc::new(|_| {}));
    test::init_service(app).await
}

/// Sends one request to the in-process API; an error from middleware becomes its response.
async fn send(app: &impl Api, request: actix_http::Request) -> (u16, Vec<u8>) {
    match test::try_call_service(app, request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = test::read_body(response).await.to_vec();
            (status, body)
        }
        Err(error) => {
            let response = error.as_response_error().error_response();
            let status = response.status().as_u16();
            let body = actix_web::body::to_bytes(response.into_body())
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default();
            (status, body)
        }
    }
}

impl Sim {
    /// What the process's end leaves on disk: a process crash keeps every write; a power loss
    /// (only when acknowledgements wait for fsync) keeps what was synced, and perhaps some
    /// later batches the OS wrote back.
    fn crash_disk(&mut self) {
        let Storage::Sim(disk) = &self.storage else {
            return;
        };
        let kind = if self.config.durability == Durability::Fsync && self.rng.random_bool(0.5) {
            match self.rng.random_range(0..3) {
                0 => CrashKind::PowerLoss,
                _ => CrashKind::PowerLossKeeping {
                    unsynced_batches: self.rng.random_range(0..4),
                },
            }
        } else {
            CrashKind::ProcessCrash
        };
        disk.crash(kind);
    }

    fn seams(&self, faults: Option<Faults>, lifetime: usize) -> Seams {
        let disk = match &self.storage {
            Storage::Sim(disk) => Disk::Sim(Arc::clone(disk)),
            Storage::RocksDb => Disk::RocksDbInline,
        };
        Seams {
            disk,
            storage_faults: faults,
            webhook_transport: Some(Arc::new(self.receiver.clone())),
            payments: Some(Payments {
                provider: Arc::new(StripeProvider::with_transport(
                    Arc::new(self.stripe.clone()),
                    sim_stripe::CLIENT_TIMEOUT_MS,
                )),
                settings: PaymentSettings {
                    // Shorter than production's 24 h, so that runs reach it.
                    action_required_timeout_ms: 2 * HOUR_MS,
                    retry_first_ms: 1_000,
                    retry_max_ms: 15 * MINUTE_MS,
                    scan_interval_ms: 1_000,
                },
            }),
            placement: Placement::CurrentThread,
            random_seed: Some(self.seed ^ (lifetime as u64).wrapping_mul(0x9e37_79b9)),
            apply_bug: (self.swarm.buggy_version && !self.bug_fixed).then(|| {
                Arc::new(|input: &tollgate::domain::customer::Input| {
                    matches!(input, tollgate::domain::customer::Input::RecordUsage(e)
                        if e.transaction_id.starts_with("poison-"))
                }) as tollgate::actors::shared::ApplyBug
            }),
            ..Seams::new(Arc::clone(&self.time) as Arc<dyn Clock>)
        }
    }

    /// One process lifetime: start (recover), run steps until a crash, a fail-stop or the end.
    fn lifetime(&mut self) -> Result<End, String> {
        let system = paused_system();
        let lifetime = self.report.lifetimes;
        system.block_on(async {
            self.time.restart(self.now_ms);
            let faults = Arc::new(SimFaults::default());
            self.faults = Arc::clone(&faults);
            let seams = self.seams(Some(faults.clone() as Faults), lifetime);
            let engine = Engine::start_with(self.config.clone(), seams)
                .await
                .map_err(|e| format!("seed {}: start: {e}", self.seed))?;
            let app = api(&engine).await;
            if lifetime == 0 {
                let changes = fixtures::catalog_changes()
                    .into_iter()
                    .chain(fixtures::credits_catalog_changes());
                for change in changes {
                    engine
                        .change_catalog(change)
                        .await
                        .map_err(|e| format!("catalog: {e}"))?;
                }
            }
            // (Queries make customers resident: a run with it may differ from one without.)
            if std::env::var_os("TOLLGATE_SIM_DUMP").is_some() {
                self.dump_workflows(&engine, lifetime).await;
            }
            self.retry_pending(&app).await;
            // Faults are scheduled once the customers exist.
            let mut fault_armed = false;
            loop {
                if self.step >= self.options.steps {
                    self.settle(&engine).await;
                    // A fault that struck while settling must have stopped it too.
                    if faults.fired.load(SeqCst) > 0 && engine.is_ready() {
                        return Err(format!(
                            "a storage fault struck while the last lifetime settled and the engine still accepts (step {})",
                            self.step
                        ));
                    }
                    self.now_ms = self.time.now_ms();
                    return Ok(End::Done);
                }
                self.step += 1;
                let set_up = self
                    .model
                    .customers
                    .iter()
                    .filter(|c| !c.late)
                    .all(|c| c.contract_id.is_some());
                let calm = std::env::var_os("TOLLGATE_SIM_CALM").is_some();
                if set_up && !fault_armed && self.rng.random_ratio(1, 25) && !calm {
                    self.arm_fault(&faults);
                    fault_armed = true;
                }
                let crash_now = std::mem::take(&mut self.crash_soon);
                if set_up && (crash_now || self.rng.random_ratio(1, 70)) && !calm {
                    // kill -9: whatever was not written is gone with the process. What was
                    // applied was durable first, so the restart must reach the same states.
                    self.at_crash = self.crash_point(&engine).await;
                    self.now_ms = self.time.now_ms();
                    return Ok(End::Crash);
                }
                if std::env::var_os("TOLLGATE_SIM_VERBOSE").is_some() {
                    eprintln!(
                        "seed {} step {} t={}",
                        self.seed,
                        self.step,
                        self.time.now_ms()
                    );
                }
                // Sometimes the process is killed while the step's request is being handled:
                // after a few polls, at any point between its arrival, its log append, its
                // apply and its answer. The client had no answer and sends it again.
                let cut = set_up && !calm && self.rng.random_ratio(1, 80);
                if cut {
                    self.interrupt = Some(self.rng.random_range(0..4));
                }
                let time_passes = self.one_step(&app, &engine).await;
                if cut {
                    self.interrupt = None;
                    if std::mem::take(&mut self.cut_unanswered) {
                        self.report.crashes_in_flight += 1;
                    }
                    // Recovery must apply everything acknowledged, once (the end checks); the
                    // states are not compared: the killed engine never finished its work.
                    // (Every task spawned so far runs once: an actor dropped before its first
                    // poll would start itself outside the runtime.)
                    tokio::task::yield_now().await;
                    self.now_ms = self.time.now_ms();
                    return Ok(End::Crash);
                }
                if time_passes {
                    self.pass_time().await;
                }
                self.stripe.settle_some();
                self.stripe_events(&app).await;
                self.check_step(&engine).await?;
                if !engine.is_ready() {
                    self.now_ms = self.time.now_ms();
                    return Ok(End::FailStop);
                }
            }
        })
    }

    /// The states and outbox at a crash: the engine first applies what it has admitted (no
    /// simulated time passes). `None` when a storage fault stops it meanwhile.
    async fn crash_point(&mut self, engine: &Engine) -> Option<CrashPoint> {
        // Reading the states awaits, and meanwhile the payment and webhook actors go on (a
        // payment outcome may be logged and applied between two customers' reads): the states
        // are one crash point only if no input was admitted around the reads (seed 290).
        for _ in 0..100 {
            // An alarm due now (a new alert's sweep) ticks its customer at the housekeeping's
            // next round, in this process or in the next one's first: let it happen here, so
            // the states are not a moment before ticks that recovery would apply (seed 187).
            for _ in 0..20 {
                if engine.alarms_due() == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            for _ in 0..10_000 {
                if engine.pending_inputs() == 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            if engine.pending_inputs() != 0 || !engine.is_ready() {
                return None;
            }
            let admitted = engine.inputs_admitted();
            let states = self.states(engine).await.ok()?;
            if engine.inputs_admitted() != admitted || engine.pending_inputs() != 0 {
                continue;
            }
            let (outbox, settled) = self.faults.quietly(|| {
                let store = engine.store();
                (store.outbox_pending(), store.outbox_settled_ids())
            });
            let (outbox, settled) = (outbox.ok()?, settled.ok()?);
            return engine.is_ready().then(|| CrashPoint {
                states,
                outbox: outbox.into_iter().map(|(id, _)| id.to_vec()).collect(),
                settled: settled.into_iter().map(|id| id.to_vec()).collect(),
            });
        }
        None
    }

    /// Recovery from a kill -9 reaches the states the killed engine held, field for field, and
    /// every outbox entry it had not yet carried out is still pending (or was carried out).
    /// Checked by a process of its own whose payments and webhooks are idle, so that nothing
    /// but recovery changes the states; it ends like a crash that kept every write.
    fn recover_to_the_crash_point(&mut self, at_crash: &CrashPoint) -> Result<(), String> {
        let system = paused_system();
        let lifetime = self.report.lifetimes;
        let checked = system.block_on(async {
            self.time.restart(self.now_ms);
            let seams = Seams {
                payments: None,
                webhook_transport: Some(Arc::new(Unanswered)),
                ..self.seams(None, lifetime)
            };
            let engine = Engine::start_with(self.config.clone(), seams)
                .await
                .map_err(|e| format!("seed {}: recovery start: {e}", self.seed))?;
            self.report.recoveries_checked += 1;
            self.compare_with_crash_point(&engine, at_crash).await
        });
        drop(system);
        if let Storage::Sim(disk) = &self.storage {
            disk.crash(CrashKind::ProcessCrash);
        }
        checked
    }

    async fn compare_with_crash_point(
        &mut self,
        engine: &Engine,
        at_crash: &CrashPoint,
    ) -> Result<(), String> {
        let states = self.states(engine).await?;
        for (before, after) in at_crash.states.iter().zip(&states) {
            if before != after {
                return Err(format!(
                    "step {}: recovery after a crash reached another state for customer {:?}:\nbefore {before:?}\nafter {after:?}",
                    self.step,
                    before.customer.profile.as_ref().map(|p| p.id)
                ));
            }
        }
        let pending: std::collections::BTreeSet<Vec<u8>> = engine
            .store()
            .outbox_pending()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(id, _)| id.to_vec())
            .collect();
        let settled: std::collections::BTreeSet<Vec<u8>> = engine
            .store()
            .outbox_settled_ids()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|id| id.to_vec())
            .collect();
        if let Some(lost) = at_crash
            .outbox
            .iter()
            .find(|id| !pending.contains(*id) && !settled.contains(*id))
        {
            return Err(format!(
                "step {}: outbox entry {lost:02x?} pending at the crash is neither pending nor done after recovery",
                self.step
            ));
        }
        // Recovery re-creates effects under their ids: nothing new appears (an effect carried
        // out whose mark a power loss took is pending again, and is sent again).
        let known: std::collections::BTreeSet<&Vec<u8>> =
            at_crash.outbox.iter().chain(&at_crash.settled).collect();
        if let Some(new) = pending.iter().find(|id| !known.contains(id)) {
            return Err(format!(
                "step {}: recovery created outbox entry {new:02x?}, which the killed engine never had",
                self.step
            ));
        }
        Ok(())
    }

    /// A storage fault some writes from now: one kind of operation fails (the engine stops,
    /// fail-stop), or on the simulated disk the process dies between two writes.
    fn arm_fault(&mut self, faults: &SimFaults) {
        let nth = self.rng.random_range(0..40);
        match &self.storage {
            Storage::Sim(disk) if self.rng.random_bool(0.5) => {
                let failed = if self.rng.random_bool(0.5) {
                    FailedWrite::Lost
                } else {
                    FailedWrite::ReachedWal
                };
                disk.stop_after_writes(nth, failed);
            }
            _ => {
                let kinds = [
                    StorageOp::Append,
                    StorageOp::MetaWrite,
                    StorageOp::OutboxWrite,
                    StorageOp::OutboxWrite,
                    StorageOp::Checkpoint,
                    StorageOp::Read,
                    StorageOp::OutboxRead,
                ];
                let kind = kinds[self.rng.random_range(0..kinds.len())];
                // Outbox writes and checks are few (effects only): strike one of the first few.
                let skip = if matches!(kind, StorageOp::OutboxWrite | StorageOp::OutboxRead) {
                    nth % 6
                } else {
                    nth
                };
                faults.arm(FaultPlan {
                    kind,
                    skip,
                    once: self.rng.random_bool(0.5),
                });
            }
        }
    }

    /// The last lifetime: no faults, the receiver healthy, every pending request re-sent until
    /// it is answered, time run on until the engine is quiet; then the final checks.
    fn final_lifetime(&mut self) -> Result<(), String> {
        let system = paused_system();
        let lifetime = self.report.lifetimes;
        let ended = system.block_on(async {
            self.time.restart(self.now_ms);
            // The last version is the fixed one.
            self.bug_fixed = true;
            // This lifetime has no faults: those that struck the last one (say, a checkpoint
            // during its settling, which stopped it) are not this engine's to answer for.
            self.faults = Arc::new(SimFaults::default());
            self.receiver.heal();
            let engine = Engine::start_with(self.config.clone(), self.seams(None, lifetime))
                .await
                .map_err(|e| format!("seed {}: final start: {e}", self.seed))?;
            let app = api(&engine).await;
            for _ in 0..20 {
                self.retry_pending(&app).await;
                if self.retries.is_empty() && self.model.pending().is_empty() && !self.moving() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if !self.retries.is_empty() || !self.model.pending().is_empty() || self.moving() {
                return Err(format!(
                    "requests never answered: {:?} / events {:?}",
                    self.retries,
                    self.model.pending()
                ));
            }
            self.stripe.heal();
            self.redrive_dead_letters(&app, format!("redrive-all-final-{lifetime}"))
                .await;
            // Decided before the payments finish: a re-applied event may start a workflow.
            self.decide_all_quarantined(&app).await?;
            self.finish_payments(&app, &engine).await?;
            self.settle(&engine).await;
            self.check_final(&app, &engine).await?;
            let states = self.quiet_states(&engine).await?;
            // What a kill -9 right now would leave: it must replay to the same states.
            if let Storage::Sim(disk) = &self.storage {
                let crashed = disk.fork(CrashKind::ProcessCrash);
                self.now_ms = self.time.now_ms();
                let copy = Storage::Sim(crashed);
                return Ok((states, Some(copy)));
            }
            engine.checkpoint().await.map_err(|e| e.to_string())?;
            self.now_ms = self.time.now_ms();
            Ok((states, None))
        });
        // The process ends (its store closes) before the next one starts.
        drop(system);
        let (states, crashed) = ended?;
        self.restart_with_the_same_states(&states, crashed)
    }

    /// The customers created so far: their index in the model and their id.
    fn customer_ids(&self) -> Vec<(usize, tollgate::domain::Id)> {
        self.model
            .customers
            .iter()
            .enumerate()
            .filter_map(|(c, customer)| {
                let id = customer
                    .id
                    .as_deref()
                    .and_then(tollgate::domain::Id::parse)?;
                Some((c, id))
            })
            .collect()
    }

    /// Every customer's state, as the engine holds it now.
    async fn states(&mut self, engine: &Engine) -> Result<Vec<PersistedCustomer>, String> {
        let mut states = Vec::new();
        for (_, id) in self.customer_ids() {
            let state = engine
                .query(id, PersistedCustomer::clone)
                .await
                .map_err(|e| format!("state of {id}: {e}"))?;
            states.push(state);
        }
        Ok(states)
    }

    /// Every customer's state with nothing admitted or pending while they were read: time goes
    /// on and an alarm may tick a customer (its input in the log, not yet applied) at any
    /// moment, and the states compared with a replay must be those of the whole log.
    async fn quiet_states(&mut self, engine: &Engine) -> Result<Vec<PersistedCustomer>, String> {
        for _ in 0..100 {
            if engine.pending_inputs() == 0 {
                let admitted = engine.inputs_admitted();
                let states = self.states(engine).await?;
                if engine.pending_inputs() == 0 && engine.inputs_admitted() == admitted {
                    return Ok(states);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err("inputs kept arriving while the final states were read".into())
    }

    /// Starts the engine again (on what a crash left, when given) and requires the same
    /// customer states: replay reaches what the live run reached.
    fn restart_with_the_same_states(
        &mut self,
        expected: &[PersistedCustomer],
        crashed: Option<Storage>,
    ) -> Result<(), String> {
        if let Some(crashed) = crashed {
            self.storage = crashed;
        }
        let system = paused_system();
        let lifetime = self.report.lifetimes + 1;
        system.block_on(async {
            self.time.restart(self.now_ms);
            let engine = Engine::start_with(self.config.clone(), self.seams(None, lifetime))
                .await
                .map_err(|e| format!("seed {}: restart: {e}", self.seed))?;
            let states = self.states(&engine).await?;
            for (before, after) in expected.iter().zip(&states) {
                if before != after {
                    return Err(format!(
                        "replay reached another state for customer {:?}:\nlive {before:?}\nreplayed {after:?}",
                        before.customer.profile.as_ref().map(|p| p.id)
                    ));
                }
            }
            if let Storage::Sim(disk) = &self.storage {
                self.trace.hasher.update(&disk.digest().to_be_bytes());
            }
            Ok(())
        })
    }

    /// The tokens metric is archived (once a run at most; a lost answer is retried with its
    /// key): events accepted after it count no tokens.
    async fn archive_token_metric(&mut self, app: &impl Api) {
        if self.model.tokens_archived.is_some() {
            return;
        }
        self.model.tokens_archived = Some((self.time.now_ms(), None));
        let request = Request {
            path: "/v1/billable-metrics/archive".into(),
            body: json!({"id": fixtures::TOKEN_METRIC.to_string()}),
            key: "archive-tokens".into(),
            purpose: Purpose::ArchiveTokens,
        };
        self.control(app, request).await;
    }

    /// A customer is archived (one a run at most): its usage accepted after it is not billed.
    async fn archive_customer(&mut self, app: &impl Api) {
        if self.model.customers.iter().any(|c| c.archived.is_some()) {
            return;
        }
        let Some((c, customer)) = self.customer_with_contract() else {
            return;
        };
        if self.in_alias_move(c) {
            return;
        }
        self.model.customers[c].archived = Some((self.time.now_ms(), None));
        let request = Request {
            path: "/v1/customers/archive".into(),
            body: json!({"id": customer.id}),
            key: format!("archive-customer-{c}"),
            purpose: Purpose::ArchiveCustomer(c),
        };
        self.control(app, request).await;
    }

    /// The API product's price changes, once a run, from an hour boundary up to six hours back
    /// or three ahead (the rate card gains a FLAT rate): calls timestamped after it cost the new
    /// price if the rate was in the catalog that accepted them, the old one otherwise.
    async fn add_rate(&mut self, app: &impl Api) {
        if self.model.rate_change.is_some() {
            return;
        }
        let now = self.time.now_ms();
        // Ahead, or back-dated: usage already accepted keeps the price it was rated at.
        let starting_at = Timestamp(now)
            .floor_hour()
            .plus_ms(self.rng.random_range(-6..=3) * HOUR_MS);
        let cents = [40, 150, 250][self.rng.random_range(0..3)];
        self.model.rate_change = Some(RateChange {
            starting_at,
            cents,
            added: (now, None),
        });
        let request = Request {
            path: "/v1/contract-pricing/rate-cards/addRate".into(),
            body: json!({
                "rate_card_id": RATE_CARD.to_string(),
                "product_id": fixtures::API_PRODUCT.to_string(),
                "entitled": true,
                "rate_type": "FLAT",
                "price": cents,
                "starting_at": starting_at.to_rfc3339(),
            }),
            key: "add-rate".into(),
            purpose: Purpose::AddRate,
        };
        self.control(app, request).await;
    }

    /// An alias move was started and its second half not answered yet.
    fn moving(&self) -> bool {
        self.model.alias_moves.last().is_some_and(|m| !m.added)
    }

    fn in_alias_move(&self, c: usize) -> bool {
        self.model
            .alias_moves
            .iter()
            .any(|m| m.from == c || m.to == c)
    }

    /// The aliases customer `c` has now: its own (renamed when it was moved away) and those
    /// moves gave it.
    fn aliases_of(&self, c: usize) -> Vec<String> {
        let mut aliases = vec![self.model.customers[c].alias.clone()];
        for m in &self.model.alias_moves {
            if m.to == c && m.added {
                aliases.push(m.alias.clone());
            }
        }
        aliases
    }

    /// An ingest alias moves from one customer to another: taken from the first (its own alias
    /// renamed), then, once that is answered, given to the second. Clients go on sending to the
    /// alias throughout. A second move, in some runs, takes the second customer's own alias
    /// back to the first.
    async fn move_alias(&mut self, app: &impl Api) -> bool {
        let busy = self.swarm.busy_aliases;
        let second = match self.model.alias_moves.as_slice() {
            [first] if first.added && (busy || self.rng.random_bool(0.5)) => {
                Some((first.to, first.from))
            }
            _ => None,
        };
        let (from, request) = match (self.model.alias_moves.last(), second) {
            (Some(_), Some((from, to))) => {
                let alias = self.model.customers[from].alias.clone();
                let mut keep = self.aliases_of(from);
                keep[0] = format!("{alias}-moved");
                self.model.alias_moves.push(AliasMove {
                    alias,
                    from,
                    to,
                    dropped: (self.time.now_ms(), None),
                    added: false,
                });
                (from, json!({ "ingest_aliases": keep }))
            }
            (None, _) => {
                let ready: Vec<usize> = (0..self.model.customers.len())
                    .filter(|&c| {
                        let customer = &self.model.customers[c];
                        customer.contract_id.is_some() && customer.archived.is_none()
                    })
                    .collect();
                if ready.len() < 2 {
                    return false;
                }
                let from = ready[self.rng.random_range(0..ready.len())];
                let others: Vec<usize> = ready.iter().copied().filter(|&c| c != from).collect();
                // When aliases are busy, the move crosses partitions if it can: replay then
                // meets its halves in two partitions' orders.
                let partition = |c: usize| {
                    let id = self.model.customers[c].id.as_deref().and_then(Id::parse);
                    id.map(|id| partition_of(id, self.config.settings.partitions))
                };
                let across: Vec<usize> = others
                    .iter()
                    .copied()
                    .filter(|&c| partition(c) != partition(from))
                    .collect();
                let pool = if busy && !across.is_empty() {
                    across
                } else {
                    others
                };
                let to = pool[self.rng.random_range(0..pool.len())];
                let alias = self.model.customers[from].alias.clone();
                self.model.alias_moves.push(AliasMove {
                    alias: alias.clone(),
                    from,
                    to,
                    dropped: (self.time.now_ms(), None),
                    added: false,
                });
                (from, json!({"ingest_aliases": [format!("{alias}-moved")]}))
            }
            (Some(m), _) if m.dropped.1.is_some() && !m.added => {
                let (to, alias) = (m.to, m.alias.clone());
                let mut aliases = self.aliases_of(to);
                aliases.push(alias);
                (to, json!({ "ingest_aliases": aliases }))
            }
            (Some(_), _) => return false,
        };
        let id = self.model.customers[from].id.clone().unwrap_or_default();
        let purpose = if self
            .model
            .alias_moves
            .last()
            .is_some_and(|m| m.from == from)
        {
            Purpose::DropAlias
        } else {
            Purpose::AddAlias
        };
        let request = Request {
            path: format!("/v1/customers/{id}/setIngestAliases"),
            body: request,
            key: format!("alias-{purpose:?}-{}", self.model.alias_moves.len()),
            purpose,
        };
        self.control(app, request).await;
        true
    }

    /// Both alias moves, every half right after the answer to the one before (a half left
    /// unanswered is retried later): all four changes can land after one checkpoint.
    async fn move_aliases_at_once(&mut self, app: &impl Api) {
        for _ in 0..4 {
            if !self.move_alias(app).await {
                break;
            }
        }
    }

    /// A customer tries to take another customer's alias, or an alias that spells a customer's
    /// id (its own or another's): refused with 409, and the usage sent to it stays where it was.
    async fn steal_alias(&mut self, app: &impl Api) {
        let settled: Vec<usize> = (0..self.model.customers.len())
            .filter(|&c| self.model.customers[c].id.is_some() && !self.in_alias_move(c))
            .collect();
        if settled.len() < 2 {
            return;
        }
        let thief = settled[self.rng.random_range(0..settled.len())];
        let victim = settled[self.rng.random_range(0..settled.len())];
        let stolen = if thief == victim || self.rng.random_bool(0.4) {
            self.model.customers[victim].id.clone().unwrap_or_default()
        } else {
            self.model.customers[victim].alias.clone()
        };
        let customer = &self.model.customers[thief];
        self.txn_counter += 1;
        let request = Request {
            path: format!(
                "/v1/customers/{}/setIngestAliases",
                customer.id.clone().unwrap_or_default()
            ),
            body: json!({"ingest_aliases": [customer.alias, stolen]}),
            key: format!("steal-{}", self.txn_counter),
            purpose: Purpose::StealAlias,
        };
        self.control(app, request).await;
    }

    /// Stripe goes down for minutes to hours; now and then for longer than its 24 h key
    /// window, while time runs on.
    fn stripe_outage(&mut self) {
        let ms = if self.rng.random_bool(self.swarm.long_outages) {
            self.rng.random_range(25 * HOUR_MS..30 * HOUR_MS)
        } else {
            self.rng.random_range(MINUTE_MS..3 * HOUR_MS)
        };
        self.stripe.outage(ms);
    }

    /// Delivers the Stripe events that are due to the engine's Stripe endpoint, signed as
    /// Stripe signs them; one the engine does not take (5xx) is delivered again later.
    async fn stripe_events(&mut self, app: &impl Api) {
        self.stripe.schedule_events();
        for event in self.stripe.due_events() {
            let payload = serde_json::to_vec(&event).unwrap_or_default();
            let signature = tollgate::payments::stripe::sign(
                &payload,
                sim_stripe::WEBHOOK_SECRET,
                self.time.now_ms() / 1000,
            );
            let http = test::TestRequest::post()
                .uri(sim_stripe::WEBHOOK_PATH)
                .insert_header(("stripe-signature", signature))
                .insert_header(("content-type", "application/json"))
                .set_payload(payload)
                .to_request();
            let (status, body) = send(app, http).await;
            self.trace.record(sim_stripe::WEBHOOK_PATH, status, &body);
            match status {
                200..=299 => {}
                429 | 500..=599 => self.stripe.redeliver(event),
                _ => self.violations.push(format!(
                    "a signed Stripe event {} was answered {status}: {}",
                    event["type"],
                    String::from_utf8_lossy(&body)
                )),
            }
        }
    }

    /// Debugging aid: every workflow's state as a lifetime starts.
    async fn dump_workflows(&self, engine: &Engine, lifetime: usize) {
        for customer in &self.model.customers {
            let Some(id) = customer.id.as_deref().and_then(tollgate::domain::Id::parse) else {
                continue;
            };
            let states = engine
                .query(id, |s| {
                    s.customer
                        .contracts
                        .iter()
                        .flat_map(|c| c.workflows.iter())
                        .map(|w| format!("{} {:?}", w.id, w.state))
                        .collect::<Vec<_>>()
                })
                .await;
            eprintln!("lifetime {lifetime} starts: customer {id} workflows {states:?}");
        }
    }

    /// The end of the payments: the customers decide what waits for them, Stripe's events
    /// arrive, and time runs until every STRIPE workflow has ended and the outbox is empty.
    async fn finish_payments(&mut self, app: &impl Api, engine: &Engine) -> Result<(), String> {
        use tollgate::domain::gate::GateType;
        let mut last = (0, 0, false);
        // A saved 500 is replayed for Stripe's 24 h key window: the end may take that long.
        for round in 0..300 {
            if let Some(failure) = engine.failure() {
                return Err(format!(
                    "the engine stopped in the last lifetime: {failure}"
                ));
            }
            self.stripe.settle_all();
            self.stripe_events(app).await;
            let mut charging = 0;
            for customer in &self.model.customers {
                let Some(id) = customer.id.as_deref().and_then(tollgate::domain::Id::parse) else {
                    continue;
                };
                charging += engine
                    .query(id, |s| {
                        s.customer
                            .contracts
                            .iter()
                            .flat_map(|c| c.workflows.iter())
                            .filter(|w| w.gate.gate_type == GateType::Stripe)
                            .filter(|w| !w.state.is_terminal())
                            .count()
                    })
                    .await
                    .map_err(|e| format!("finish payments: {e}"))?;
            }
            let outbox = engine
                .store()
                .outbox_pending()
                .map_err(|e| e.to_string())?
                .len();
            if charging == 0 && outbox == 0 && !self.stripe.has_deliveries() {
                return Ok(());
            }
            last = (charging, outbox, self.stripe.has_deliveries());
            let minutes = if round < 120 { 1 } else { 10 };
            tokio::time::sleep(Duration::from_secs(60 * minutes)).await;
        }
        let (charging, outbox, deliveries) = last;
        Err(format!(
            "after 32 hours: {charging} STRIPE workflows in flight, {outbox} outbox entries pending, Stripe events to deliver: {deliveries}; Stripe's requests: {}",
            self.stripe.requests_summary()
        ))
    }

    /// The operator re-drives every webhook dead letter (`POST /v1/tollgate/webhooks/redrive`
    /// `{"all": true}`); a re-drive whose answer was lost is simply made again later.
    async fn redrive_dead_letters(&mut self, app: &impl Api, key: String) {
        let request = Request {
            path: "/v1/tollgate/webhooks/redrive".into(),
            body: json!({"all": true}),
            key,
            purpose: Purpose::Other,
        };
        if let Some((status, body)) = self.control(app, request).await {
            match body["data"]["redriven"].as_array() {
                Some(ids) if status == 200 => self.report.redriven += ids.len(),
                _ => self.violations.push(format!(
                    "re-driving dead letters was answered {status}: {body}"
                )),
            }
        }
    }

    /// At the end, with the receiver healthy and everything re-driven: no webhook is pending
    /// or dead-lettered in the operator's lists, and every delivery listed as delivered was
    /// received, with its webhook id.
    async fn check_webhook_lists(&mut self, app: &impl Api) -> Result<(), String> {
        for list in ["pending", "dead-letters"] {
            let left = self
                .every_page(app, &format!("/v1/tollgate/webhooks/{list}"))
                .await?;
            if !left.is_empty() {
                return Err(format!("webhooks {list} at the end: {left:?}"));
            }
        }
        let kept = self.receiver.kept();
        for delivered in self
            .every_page(app, "/v1/tollgate/webhooks/delivered")
            .await?
        {
            let id = delivered["webhook_id"].as_str().unwrap_or("");
            if !kept.contains_key(id) {
                return Err(format!("listed as delivered, never received: {delivered}"));
            }
        }
        Ok(())
    }

    /// Every item of a list endpoint (`path` without a query), page after page (100 each)
    /// until `next_page` is null.
    async fn every_page(&mut self, app: &impl Api, path: &str) -> Result<Vec<Value>, String> {
        let (mut items, mut cursor) = (Vec::new(), String::new());
        let join = if path.contains('?') { '&' } else { '?' };
        loop {
            let (status, page) = self
                .get(app, &format!("{path}{join}limit=100&next_page={cursor}"))
                .await;
            if status != 200 {
                return Err(format!("{path}: {status} {page}"));
            }
            items.extend(page["data"].as_array().into_iter().flatten().cloned());
            match page["next_page"].as_str() {
                Some(next) => cursor = next.to_owned(),
                None => return Ok(items),
            }
        }
    }

    /// Lets time run until applied work, webhooks and payments have settled.
    async fn settle(&mut self, engine: &Engine) {
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_secs(30)).await;
            if engine.pending_inputs() == 0 && engine.webhook_stats().snapshot().pending == 0 {
                break;
            }
        }
    }

    /// One client action; `false` when no time should pass after it.
    async fn one_step(&mut self, app: &impl Api, engine: &Engine) -> bool {
        // Customers and contracts first, the late customer whenever it comes.
        if let Some(c) = self.next_setup() {
            self.set_up(app, c).await;
            return false;
        }
        let roll: u32 = self.rng.random_range(0..100);
        match roll {
            0..=54 => self.ingest(app).await,
            55..=62 => self.resend(app).await,
            63..=72 => self.release(app).await,
            73..=75 => self.add_commit(app).await,
            76 => self.customer_level_commit(app).await,
            99 => self.balance_correction(app).await,
            77..=79 => self.edit_threshold(app, engine).await,
            80..=81 => self
                .receiver
                .outage(self.rng.random_range(MINUTE_MS..30 * MINUTE_MS)),
            82 => self.stripe_outage(),
            84 if self.rng.random_ratio(1, 4) => self.archive_token_metric(app).await,
            85 if self.rng.random_ratio(1, 4) => self.archive_customer(app).await,
            86 if self.rng.random_ratio(1, 3) => {
                self.move_alias(app).await;
            }
            87 => self.steal_alias(app).await,
            88..=89 if self.swarm.busy_aliases => self.move_aliases_at_once(app).await,
            88..=89 => self.balance_correction(app).await,
            90 => self.add_rate(app).await,
            92..=93 => self.cancel(app).await,
            95..=96 => self.set_end_date(app).await,
            97 => self.create_alert(app).await,
            98 => self.archive_or_reset_alert(app, engine).await,
            94 if self.swarm.buggy_version => self.decide_quarantined(app).await,
            91 => {
                let key = format!("redrive-all-{}", self.step);
                self.redrive_dead_letters(app, key).await;
            }
            83 => self
                .stripe
                .search_lag(self.rng.random_range(10_000..5 * MINUTE_MS)),
            _ => {}
        }
        // Killed at once when `crash_soon`: no time for a checkpoint.
        !self.crash_soon
    }

    /// Time passes: mostly seconds, sometimes minutes, rarely hours.
    async fn pass_time(&mut self) {
        let ms = match self.rng.random_range(0..100) {
            0..=79 => self.rng.random_range(10..5_000),
            80..=97 => self.rng.random_range(MINUTE_MS..20 * MINUTE_MS),
            _ => self.rng.random_range(HOUR_MS..6 * HOUR_MS),
        };
        tokio::time::sleep(Duration::from_millis(ms as u64)).await;
    }

    fn next_setup(&mut self) -> Option<usize> {
        let late_due = self.step > self.options.steps / 3;
        self.model
            .customers
            .iter()
            .position(|c| c.contract_id.is_none() && (!c.late || late_due))
            .filter(|&c| {
                // A customer whose create or contract is being retried waits for it.
                !self.retries.iter().any(|r| {
                    matches!(r.purpose, Purpose::CreateCustomer(i) | Purpose::CreateContract(i) if i == c)
                })
            })
    }

    async fn set_up(&mut self, app: &impl Api, c: usize) {
        let customer = self.model.customers[c].clone();
        let request = match &customer.id {
            None => Request {
                path: "/v1/customers".into(),
                body: json!({"name": customer.name, "ingest_aliases": [customer.alias],
                    "customer_billing_provider_configurations": [{
                        "billing_provider": "stripe", "delivery_method": "direct_to_billing_provider",
                        "configuration": {"stripe_customer_id": format!("cus_sim_{c}"),
                                          "stripe_collection_method": "charge_automatically"}}]}),
                key: format!("customer-{c}"),
                purpose: Purpose::CreateCustomer(c),
            },
            Some(id) => Request {
                path: "/v1/contracts/create".into(),
                body: self.contract_body(id),
                key: format!("contract-{c}"),
                purpose: Purpose::CreateContract(c),
            },
        };
        self.control(app, request).await;
    }

    /// The contract of customer `c` was created from `body`: what it grants and which
    /// thresholds it has.
    fn contract_created(&mut self, c: usize, body: &Value) {
        let customer = &mut self.model.customers[c];
        customer.granted = granted_by(&body["commits"]) + granted_by(&body["credits"]);
        customer.credits_card = body["rate_card_id"] == json!(fixtures::CREDITS_CARD.to_string());
        customer.thresholds = [
            body.get("spend_threshold_configuration").is_some(),
            body.get("prepaid_balance_threshold_configuration")
                .is_some(),
        ];
        let limits = &body["prepaid_balance_threshold_configuration"]["recharge_limits"];
        customer.rails = limits.is_object().then(|| RailsModel {
            max_count: limits["max_recharges_per_period"]
                .as_u64()
                .map(|n| n as u32),
            max_amount: limits["max_recharge_amount_per_period"].as_i64(),
            interval_minutes: limits["min_recharge_interval_minutes"]
                .as_u64()
                .map(|n| n as u32),
            duration_days: limits["recharge_commit_duration_days"]
                .as_u64()
                .map(|n| n as u32),
        });
    }

    fn contract_body(&mut self, customer_id: &str) -> Value {
        let start = Timestamp(self.time.now_ms()).month_start().to_rfc3339();
        let amount = self.rng.random_range(0..20_000);
        // A third of the contracts price API calls in credits (2 cents each): their commits,
        // credits and prepaid threshold may be in credits too.
        let credits_card = self.rng.random_ratio(1, 3);
        let card = if credits_card {
            fixtures::CREDITS_CARD
        } else {
            RATE_CARD
        };
        let mut body = json!({
            "customer_id": customer_id,
            "rate_card_id": card.to_string(),
            "starting_at": start,
            "commits": [{
                "type": "PREPAID",
                "product_id": COMMIT_PRODUCT.to_string(),
                "priority": self.rng.random_range(1..5),
                "access_schedule": {"schedule_items": [{"amount": amount, "starting_at": start, "ending_before": "2099-01-01T00:00:00Z"}]},
                "invoice_schedule": {"schedule_items": [{"timestamp": start, "amount": amount}]}
            }],
        });
        if self.rng.random_bool(0.5) {
            body["credits"] = json!([{
                "product_id": COMMIT_PRODUCT.to_string(),
                "access_schedule": {"schedule_items": [{"amount": self.rng.random_range(1..5_000), "starting_at": start, "ending_before": "2099-01-01T00:00:00Z"}]}
            }]);
            // A promotional credit, which a prepaid threshold may leave out of its balance.
            if self.rng.random_bool(0.5) {
                body["credits"][0]["custom_fields"] = json!({"campaign": "promo"});
            }
            if credits_card && self.rng.random_bool(0.6) {
                body["credits"][0]["access_schedule"]["credit_type_id"] =
                    json!(fixtures::CREDITS.to_string());
            }
        }
        if credits_card && self.rng.random_bool(0.5) {
            // Credits bought with dollars: the access in credits, the invoice in USD.
            body["commits"][0]["access_schedule"]["credit_type_id"] =
                json!(fixtures::CREDITS.to_string());
        }
        let stripe_gates = self.swarm.stripe_gates;
        let gate = |rng: &mut StdRng| {
            if rng.random_bool(stripe_gates) {
                json!({"payment_gate_type": "STRIPE", "stripe_config": {"payment_type":
                    if rng.random_bool(0.6) { "PAYMENT_INTENT" } else { "INVOICE" }}})
            } else if rng.random_bool(0.6) {
                json!({"payment_gate_type": "EXTERNAL"})
            } else {
                json!({"payment_gate_type": "NONE"})
            }
        };
        if self.rng.random_bool(0.7) {
            body["spend_threshold_configuration"] = json!({
                "commit": {"product_id": COMMIT_PRODUCT.to_string()},
                "is_enabled": true,
                "payment_gate_config": gate(&mut self.rng),
                "threshold_amount": self.rng.random_range(1_000..20_000)
            });
        }
        if self.rng.random_bool(0.6) {
            let threshold = self.rng.random_range(1_000..5_000);
            let gap = self.rng.random_range(1_000..10_000);
            body["prepaid_balance_threshold_configuration"] = json!({
                "commit": {"product_id": COMMIT_PRODUCT.to_string()},
                "is_enabled": true,
                "payment_gate_config": gate(&mut self.rng),
                "threshold_amount": threshold,
                "recharge_to_amount": threshold + gap
            });
            if let Some(rails) = self.random_rails(threshold + gap) {
                body["prepaid_balance_threshold_configuration"]["recharge_limits"] =
                    rails.to_json();
            }
            if self.rng.random_ratio(1, 3) {
                body["prepaid_balance_threshold_configuration"]["threshold_balance_specifiers"] = json!([{"exclude": [{"custom_field_filters": [
                    {"entity": "ContractCreditOrCommit", "key": "campaign", "value": "promo"}]}]}]);
            }
            if credits_card && self.rng.random_bool(0.6) {
                // Watches the balance in credits and recharges credits, charged in USD.
                body["prepaid_balance_threshold_configuration"]["custom_credit_type_id"] =
                    json!(fixtures::CREDITS.to_string());
            }
        }
        body
    }

    /// Sends a control request; without a definitive answer it is queued for a retry.
    async fn control(&mut self, app: &impl Api, request: Request) -> Option<(u16, Value)> {
        let Some((status, body)) = self.call(app, request.to_http()).await else {
            if !self.retries.iter().any(|r| r.key == request.key) {
                self.retries.push(request);
            }
            return None;
        };
        self.trace.record(&request.path, status, &body);
        if status < 500 {
            self.answered.push((request.path.clone(), status));
        }
        if std::env::var_os("TOLLGATE_SIM_VERBOSE").is_some() {
            println!(
                "t={} {} {} -> {status} {}",
                self.time.now_ms(),
                request.path,
                request.body,
                String::from_utf8_lossy(&body)
            );
        }
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        // A cancel Stripe could not carry out (502) changed nothing: the operator may try
        // again later with a new key, not this one (its answer is stored under it).
        let gave_up = status == 502 && request.purpose == Purpose::Cancel;
        if (status >= 500 && !gave_up) || status == 429 || (status == 409 && value.is_null()) {
            if !self.retries.iter().any(|r| r.key == request.key) {
                self.retries.push(request);
            }
            return None;
        }
        self.retries.retain(|r| r.key != request.key);
        match request.purpose {
            Purpose::CreateCustomer(c) if status == 200 => {
                self.model.customers[c].id = value["data"]["id"].as_str().map(str::to_owned);
            }
            Purpose::CreateCustomer(c) if status == 409 => {
                // The first answer was lost: the customer exists; find it by its alias.
                self.model.customers[c].id = self.find_customer(app, c).await;
            }
            Purpose::CreateContract(c) if status == 200 => {
                self.model.customers[c].contract_id =
                    value["data"]["id"].as_str().map(str::to_owned);
                self.contract_created(c, &request.body);
            }
            Purpose::ArchiveTokens if status == 200 => {
                if let Some((sent, answered)) = &mut self.model.tokens_archived {
                    answered.get_or_insert(self.time.now_ms().max(*sent));
                }
            }
            Purpose::ArchiveCustomer(c) if status == 200 => {
                if let Some((sent, answered)) = &mut self.model.customers[c].archived {
                    answered.get_or_insert(self.time.now_ms().max(*sent));
                }
            }
            Purpose::ArchiveCustomer(c) => self.violations.push(format!(
                "archiving customer {c} was answered {status}: {value}"
            )),
            Purpose::ArchiveTokens => self.violations.push(format!(
                "archiving the tokens metric was answered {status}: {value}"
            )),
            Purpose::CreateContract(c) if status == 409 => {
                self.model.customers[c].contract_id = self.find_contract(app, c).await;
                self.contract_created(c, &request.body);
            }
            Purpose::DropAlias if status == 200 => {
                let now = self.time.now_ms();
                if let Some(m) = self.model.alias_moves.last_mut() {
                    m.dropped.1.get_or_insert(now);
                    let alias = format!("{}-moved", m.alias);
                    self.model.customers[m.from].alias = alias;
                }
            }
            Purpose::AddAlias if status == 200 => {
                if let Some(m) = self.model.alias_moves.last_mut() {
                    m.added = true;
                }
                // Once the last move of the run is done.
                let last = self.model.alias_moves.len() == 2 || !self.swarm.busy_aliases;
                // Busy aliases always end in a kill: replay must then meet all four halves.
                self.crash_soon =
                    (self.swarm.crash_after_changes || self.swarm.busy_aliases) && last;
            }
            Purpose::AddRate if status == 200 => {
                if let Some(change) = &mut self.model.rate_change {
                    change.added.1.get_or_insert(self.time.now_ms());
                }
                // Killed at once: replay must rate what was accepted before it at the old price.
                self.crash_soon = true;
            }
            Purpose::StealAlias if status != 409 => self.violations.push(format!(
                "taking {} was answered {status}: {value}",
                request.body
            )),
            // 409: a retry after a 503 whose input had reached the log (README, Idempotency-Key)
            // finds the edit it made.
            Purpose::AddCommit(c) if status == 200 || status == 409 => {
                self.model.customers[c].granted += granted_by(&request.body["add_commits"]);
                let gate = &request.body["add_commits"][0]["payment_gate_config"];
                let usable_at_once = gate["payment_gate_type"] != "EXTERNAL";
                let gated = gate.is_object();
                if let Some(id) = value["data"]["edit"]["add_commits"][0]["id"].as_str() {
                    let known = &mut self.model.customers[c].added_commits;
                    if usable_at_once && !known.iter().any(|(known, _, _)| known == id) {
                        known.push((id.to_owned(), false, gated));
                    }
                }
            }
            // 409: a retry after a 503 whose edit had reached the log.
            Purpose::ArchiveCommit if status == 200 || status == 409 => {
                self.report.commits_archived += 1;
            }
            // 409: a retry after a 503 whose edit had reached the log.
            Purpose::RaiseCommit(c, raise) if status == 200 || status == 409 => {
                self.model.customers[c].granted += raise;
                self.report.commits_updated += 1;
            }
            Purpose::ManualEntry(c, amount) if status == 200 || status == 409 => {
                self.model.customers[c].manual += amount;
                self.report.manual_entries += 1;
            }
            Purpose::AddCustomerCommit(c) if status == 200 || status == 409 => {
                self.model.customers[c].granted += granted_by(&json!([request.body]));
                self.report.customer_commits += 1;
                let credit = request.path.contains("customerCredits");
                if let Some(id) = value["data"]["id"].as_str() {
                    let end = Timestamp::parse_rfc3339("2099-01-01T00:00:00Z")
                        .expect("the workload's end")
                        .millis();
                    let known = &mut self.model.customers[c].customer_commits;
                    if !known.iter().any(|(known, _, _)| known == id) {
                        known.push((id.to_owned(), credit, end));
                    }
                }
            }
            Purpose::Cancel => self.cancel_answered(&request.path, status, &value),
            Purpose::EndDate => self.end_date_answered(&request, status, &value),
            Purpose::Alert => self.alert_answered(&request, status, &value),
            // Valid requests: a 4xx would mean a fault (a storage error) answered as the
            // client's mistake, and the client would never send it again. (A 409 is the
            // documented answer only to a creation's or an edit's retry, which finds its object;
            // an alias move's halves must never meet one.)
            Purpose::CreateCustomer(_)
            | Purpose::CreateContract(_)
            | Purpose::AddCommit(_)
            | Purpose::AddCustomerCommit(_)
            | Purpose::EndCustomerCommit
            | Purpose::ManualEntry(..)
            | Purpose::ArchiveCommit
            | Purpose::RaiseCommit(..)
            | Purpose::DropAlias
            | Purpose::AddAlias
            | Purpose::AddRate
            | Purpose::EditThreshold { must_apply: true }
                if status != 200
                    && !(status == 409
                        && matches!(request.purpose, Purpose::EditThreshold { .. })) =>
            {
                self.violations.push(format!(
                    "a valid {} {} was answered {status}: {value}",
                    request.path, request.body
                ))
            }
            _ => {}
        }
        Some((status, value))
    }

    /// Sends a request that changes something; `None` when the process was killed before it
    /// answered (see `interrupt`).
    async fn call(
        &mut self,
        app: &impl Api,
        request: actix_http::Request,
    ) -> Option<(u16, Vec<u8>)> {
        self.interruptible(send(app, request)).await
    }

    /// Runs `requests` to their answers, or, when the step is cut (`interrupt`), polls them a
    /// few times and gives up: the process is killed before they answered, and later requests
    /// of the step are not sent either.
    async fn interruptible<T>(&mut self, requests: impl Future<Output = T>) -> Option<T> {
        let Some(polls) = self.interrupt else {
            return Some(requests.await);
        };
        let mut requests = std::pin::pin!(requests);
        for _ in 0..polls {
            let answer =
                std::future::poll_fn(|cx| std::task::Poll::Ready(requests.as_mut().poll(cx))).await;
            if let std::task::Poll::Ready(answer) = answer {
                return Some(answer);
            }
            tokio::task::yield_now().await;
        }
        self.interrupt = Some(0);
        self.cut_unanswered = true;
        None
    }

    async fn get(&mut self, app: &impl Api, path: &str) -> (u16, Value) {
        let http = test::TestRequest::get()
            .uri(path)
            .insert_header(("authorization", format!("Bearer {TOKEN}")))
            .to_request();
        let (status, body) = send(app, http).await;
        self.trace.record(path, status, &body);
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn post_read(&mut self, app: &impl Api, path: &str, body: Value) -> (u16, Value) {
        let http = test::TestRequest::post()
            .uri(path)
            .insert_header(("authorization", format!("Bearer {TOKEN}")))
            .set_json(&body)
            .to_request();
        let (status, bytes) = send(app, http).await;
        self.trace.record(path, status, &bytes);
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn find_customer(&mut self, app: &impl Api, c: usize) -> Option<String> {
        let (_, page) = self.get(app, "/v1/customers?limit=100").await;
        let alias = self.model.customers[c].alias.clone();
        page["data"].as_array()?.iter().find_map(|customer| {
            let aliases = customer["ingest_aliases"].as_array()?;
            aliases
                .iter()
                .any(|a| a.as_str() == Some(alias.as_str()))
                .then(|| customer["id"].as_str().map(str::to_owned))
                .flatten()
        })
    }

    async fn find_contract(&mut self, app: &impl Api, c: usize) -> Option<String> {
        let customer = self.model.customers[c].id.clone()?;
        let (_, page) = self
            .post_read(app, "/v1/contracts/list", json!({"customer_id": customer}))
            .await;
        page["data"].as_array()?.first()?["id"]
            .as_str()
            .map(str::to_owned)
    }

    /// Re-sends every request and event still waiting for a definitive answer.
    async fn retry_pending(&mut self, app: &impl Api) {
        for request in self.retries.clone() {
            self.control(app, request).await;
        }
        // An alias taken from one customer is given to the other once the take was answered.
        if self.moving() && !self.retries.iter().any(|r| r.purpose == Purpose::AddAlias) {
            self.move_alias(app).await;
        }
        for chunk in self.model.pending().chunks(20) {
            self.send_events(app, chunk.to_vec()).await;
        }
    }

    fn new_event(&mut self) -> Option<(String, SentEvent)> {
        let known: Vec<usize> = (0..self.model.customers.len())
            .filter(|&c| self.model.customers[c].id.is_some() || self.model.customers[c].late)
            .collect();
        if known.is_empty() {
            return None;
        }
        let c = known[self.rng.random_range(0..known.len())];
        let customer = &self.model.customers[c];
        let before_contract = customer.contract_id.is_none();
        let moving = self
            .model
            .alias_moves
            .iter()
            .rfind(|m| m.from == c || m.to == c)
            .map(|m| m.alias.clone());
        let (key, by_alias) = match (&customer.id, moving) {
            // A client that has not heard of the move, or has heard of it already.
            (_, Some(alias)) if self.rng.random_bool(0.4) => (alias.clone(), Some(alias)),
            (Some(id), _) if self.rng.random_bool(0.3) => (id.clone(), None),
            _ => (customer.alias.clone(), Some(customer.alias.clone())),
        };
        self.txn_counter += 1;
        let poison = self.swarm.buggy_version && !self.bug_fixed && self.rng.random_ratio(1, 12);
        let txn = match poison {
            true => format!("poison-s{}-t{}", self.seed, self.txn_counter),
            false => format!("s{}-t{}", self.seed, self.txn_counter),
        };
        let now = self.time.now_ms();
        // Mostly now, sometimes backdated up to two days (into the previous period).
        let at = match self.rng.random_range(0..10) {
            0 => now - self.rng.random_range(0..2 * DAY_MS),
            _ => now - self.rng.random_range(0..MINUTE_MS),
        };
        let timestamp = Timestamp(at);
        let (usage, mut json) = if self.rng.random_bool(0.5) {
            (
                Usage::ApiCall,
                json!({"transaction_id": txn, "customer_id": key, "event_type": "api_call",
                       "timestamp": timestamp.to_rfc3339()}),
            )
        } else {
            let tokens: i64 = match self.rng.random_range(0..20) {
                0 => 0,
                1..=4 => -self.rng.random_range(1..500),
                5 => self.rng.random_range(100_000..1_000_000_000),
                _ => self.rng.random_range(1..2_000),
            };
            (
                Usage::Tokens(tokens),
                json!({"transaction_id": txn, "customer_id": key, "event_type": "llm",
                       "timestamp": timestamp.to_rfc3339(), "properties": {"tokens": tokens}}),
            )
        };
        if self.rng.random_ratio(1, 40) {
            // Beyond the quantity bound: the whole batch is refused with 400.
            json["event_type"] = json!("llm");
            json["properties"] = json!({"tokens": 2_000_000_000_i64});
            return Some((
                txn,
                SentEvent {
                    customer: c,
                    by_alias: by_alias.clone(),
                    timestamp,
                    usage: Usage::Tokens(0),
                    json,
                    status: Status::Unsent,
                    valid: false,
                    before_contract,
                    first_sent_ms: None,
                    first_ack_ms: None,
                    discarded: false,
                },
            ));
        }
        Some((
            txn,
            SentEvent {
                customer: c,
                by_alias,
                timestamp,
                usage,
                json,
                status: Status::Unsent,
                valid: true,
                before_contract,
                first_sent_ms: None,
                first_ack_ms: None,
                discarded: false,
            },
        ))
    }

    async fn ingest(&mut self, app: &impl Api) {
        let mut txns = Vec::new();
        for _ in 0..self.rng.random_range(1..=6) {
            if let Some((txn, event)) = self.new_event() {
                self.model.sent.insert(txn.clone(), event);
                txns.push(txn);
            }
        }
        if !txns.is_empty() {
            self.send_events(app, txns).await;
        }
    }

    /// A client re-sends events it sent before (a retry after a timeout).
    async fn resend(&mut self, app: &impl Api) {
        let all: Vec<String> = self.model.sent.keys().cloned().collect();
        if all.is_empty() {
            return;
        }
        let txns: Vec<String> = (0..self.rng.random_range(1..=4))
            .map(|_| all[self.rng.random_range(0..all.len())].clone())
            .collect();
        self.send_events(app, txns).await;
    }

    async fn send_events(&mut self, app: &impl Api, txns: Vec<String>) {
        let body: Vec<Value> = txns
            .iter()
            .map(|t| self.model.sent[t].json.clone())
            .collect();
        let http = test::TestRequest::post()
            .uri("/v1/ingest")
            .insert_header(("authorization", format!("Bearer {TOKEN}")))
            .set_json(&body)
            .to_request();
        self.model.sending(&txns, self.time.now_ms());
        let Some((status, bytes)) = self.call(app, http).await else {
            self.model
                .answered(&txns, Status::Pending, self.time.now_ms());
            return;
        };
        self.trace.record("/v1/ingest", status, &bytes);
        let all_valid = txns.iter().all(|t| self.model.sent[t].valid);
        if all_valid && (400..500).contains(&status) && status != 429 {
            self.violations.push(format!(
                "a batch of valid events was answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        let answer = match status {
            200 => Status::Acknowledged,
            400..=499 if status != 429 && status != 409 => Status::Refused,
            _ => Status::Pending,
        };
        self.model.answered(&txns, answer, self.time.now_ms());
    }

    /// The integrator answers an EXTERNAL workflow it heard of by webhook: paid or failed,
    /// sometimes twice, sometimes both outcomes at once.
    async fn release(&mut self, app: &impl Api) {
        let known = self.receiver.external_workflows();
        if known.is_empty() {
            return;
        }
        let workflow = known[self.rng.random_range(0..known.len())].clone();
        if self.rng.random_ratio(1, 4) {
            self.concurrent_releases(app, workflow).await;
            return;
        }
        let paid = match self.decided.get(&workflow) {
            Some(&paid) if self.rng.random_bool(0.8) => paid,
            _ => !self.rng.random_bool(self.swarm.failed_releases),
        };
        let outcome = if paid { "paid" } else { "failed" };
        let key = format!("release-{workflow}-{outcome}");
        let request = Request {
            path: "/v1/contracts/commits/threshold-billing/release".into(),
            body: json!({"workflow_id": workflow, "outcome": outcome}),
            key,
            purpose: Purpose::Other,
        };
        if let Some((status, body)) = self.control(app, request).await {
            match self.decided.get(&workflow) {
                // An ended workflow's outcome never changes: the other outcome is a 4xx.
                Some(&first) if first != paid && status < 300 => self.violations.push(format!(
                    "workflow {workflow} ended {} and was then answered {status} for {outcome}: {body}",
                    if first { "paid" } else { "failed" }
                )),
                _ if status == 200 => {
                    self.decided.entry(workflow).or_insert(paid);
                    self.report.releases += 1;
                }
                _ => {}
            }
        }
    }

    /// An operator decides on one quarantined input: re-applies it (after the upgrade; before
    /// it, the re-apply fails again and changes nothing) or discards it.
    async fn decide_quarantined(&mut self, app: &impl Api) {
        let Ok(entries) = self.every_page(app, "/v1/tollgate/quarantine").await else {
            return;
        };
        if entries.is_empty() {
            return;
        }
        let entry = entries[self.rng.random_range(0..entries.len())].clone();
        let reapply = self.rng.random_bool(0.6);
        self.decide(app, &entry, reapply).await;
    }

    /// Decides on every input still quarantined (the last version has no bug), then learns
    /// from the decisions list what was discarded: those events must not be billed; every
    /// other event, applied live or re-applied, must (the fixed version's replay does not
    /// apply what was quarantined: only a decision does).
    async fn decide_all_quarantined(&mut self, app: &impl Api) -> Result<(), String> {
        for _ in 0..5 {
            let entries = self.every_page(app, "/v1/tollgate/quarantine").await?;
            if entries.is_empty() {
                break;
            }
            for entry in entries {
                let reapply = self.rng.random_bool(0.6);
                self.decide(app, &entry, reapply).await;
            }
            self.retry_pending(app).await;
        }
        let left = self.every_page(app, "/v1/tollgate/quarantine").await?;
        if !left.is_empty() {
            return Err(format!("inputs still quarantined at the end: {left:?}"));
        }
        let decisions = self
            .every_page(app, "/v1/tollgate/quarantine/decisions")
            .await?;
        if std::env::var_os("TOLLGATE_SIM_VERBOSE").is_some() {
            for d in &decisions {
                println!("decided: {} {} {}", d["status"], d["input"], d["index"]);
            }
            for (txn, e) in self
                .model
                .sent
                .iter()
                .filter(|(t, _)| t.starts_with("poison-"))
            {
                println!(
                    "poison {txn}: {:?} customer {} {:?}",
                    e.status, e.customer, e.usage
                );
            }
        }
        self.report.quarantined = decisions.len();
        for decided in decisions {
            let txn = decided["input"]["RecordUsage"]["transaction_id"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            if decided["status"] == "DISCARDED" {
                match self.model.sent.get_mut(&txn) {
                    Some(event) => event.discarded = true,
                    None => return Err(format!("a discarded input no client sent: {decided}")),
                }
            }
        }
        Ok(())
    }

    async fn decide(&mut self, app: &impl Api, entry: &Value, reapply: bool) {
        let id = entry["id"].as_str().unwrap_or("").to_owned();
        let (path, body) = if reapply {
            ("/v1/tollgate/quarantine/reapply", json!({"id": id}))
        } else {
            (
                "/v1/tollgate/quarantine/discard",
                json!({"id": id, "reason": "the simulation's operator discards it"}),
            )
        };
        let request = Request {
            path: path.into(),
            body,
            // A new key per decision (an answer stored under a key is replayed to it).
            key: format!("decide-{id}-{reapply}-{}", self.step),
            purpose: Purpose::Other,
        };
        let decided_before = !self.decisions_sent.insert(id.clone());
        let Some((status, value)) = self.control(app, request).await else {
            return;
        };
        if std::env::var_os("TOLLGATE_SIM_VERBOSE").is_some() {
            let customer = entry["customer_id"].as_str().unwrap_or("");
            let (_, invoices) = self
                .get(
                    app,
                    &format!("/v1/customers/{customer}/invoices?type=USAGE"),
                )
                .await;
            let quantities: Vec<String> = invoices["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    format!(
                        "{} {:?}",
                        i["start_timestamp"],
                        i["line_items"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|l| (l["name"].clone(), l["quantity"].clone()))
                            .collect::<Vec<_>>()
                    )
                })
                .collect();
            println!("after deciding {entry}: {quantities:?}");
        }
        let message = value["message"].as_str().unwrap_or("");
        match (status, reapply) {
            (200, true) => self.report.reapplied += 1,
            (200, false) => self.report.discarded += 1,
            // Before the upgrade the bug is still there.
            (409, true) if !self.bug_fixed && message.contains("failed again") => {}
            // Decided already: by this operator's earlier decision, whose answer may have been
            // lost (replay never applies a quarantined input by itself).
            (409, _)
                if decided_before
                    && (message.contains("not quarantined") || message.contains("decided")) => {}
            (404, _) => {}
            _ => self.violations.push(format!(
                "deciding quarantined input {id} ({}) was answered {status}: {value}",
                if reapply { "reapply" } else { "discard" }
            )),
        }
    }

    /// An operator cancels a workflow the integrator heard of (EXTERNAL or STRIPE, in flight or
    /// ended).
    async fn cancel(&mut self, app: &impl Api) {
        let known = self.receiver.workflows();
        if known.is_empty() {
            return;
        }
        let workflow = known[self.rng.random_range(0..known.len())].clone();
        let request = Request {
            path: format!("/v1/tollgate/workflows/{workflow}/cancel"),
            body: json!({"reason": "cancelled by the simulation's operator"}),
            key: format!("cancel-{workflow}-{}", self.step),
            purpose: Purpose::Cancel,
        };
        self.control(app, request).await;
    }

    /// Judges a cancel's answer: a 200 ends the workflow FAILED for good (it must not have
    /// been paid), a 409 says it was paid (released before, or Stripe reported the payment
    /// succeeded) unless Stripe was still processing it.
    fn cancel_answered(&mut self, path: &str, status: u16, value: &Value) {
        let workflow = path
            .trim_start_matches("/v1/tollgate/workflows/")
            .trim_end_matches("/cancel")
            .to_owned();
        let message = value["message"].as_str().unwrap_or("");
        let paid = match status {
            200 => false,
            409 if message.contains("processing") || message.contains("in progress") => return,
            409 if message.contains("RELEASED") => true,
            // Stripe could not be asked: nothing changed.
            502 => return,
            _ => {
                self.violations.push(format!(
                    "a cancel of workflow {workflow} was answered {status}: {value}"
                ));
                return;
            }
        };
        match self.decided.get(&workflow) {
            Some(&decided) if decided != paid => self.violations.push(format!(
                "workflow {workflow} ended {} and a cancel was answered {status}: {value}",
                if decided { "paid" } else { "failed" },
            )),
            _ => {
                self.decided.insert(workflow, paid);
                self.report.cancels += 1;
            }
        }
    }

    /// Two releases of one workflow at the same moment: both outcomes (at most one may win),
    /// or the same outcome twice under one key (one runs, the other waits or replays).
    async fn concurrent_releases(&mut self, app: &impl Api, workflow: String) {
        let both = self.rng.random_bool(0.5);
        let first = self.rng.random_bool(0.5);
        let outcomes = [first, if both { !first } else { first }];
        let requests: Vec<Request> = outcomes
            .iter()
            .map(|&paid| {
                let outcome = if paid { "paid" } else { "failed" };
                Request {
                    path: "/v1/contracts/commits/threshold-billing/release".into(),
                    body: json!({"workflow_id": workflow, "outcome": outcome}),
                    key: format!("release-{workflow}-{outcome}"),
                    purpose: Purpose::Other,
                }
            })
            .collect();
        let both = async {
            tokio::join!(
                send(app, requests[0].to_http()),
                send(app, requests[1].to_http())
            )
        };
        let Some((a, b)) = self.interruptible(both).await else {
            // Killed before either answered: the client sends both again.
            for request in requests {
                if !self.retries.iter().any(|r| r.key == request.key) {
                    self.retries.push(request);
                }
            }
            return;
        };
        let mut winners = Vec::new();
        for ((status, body), (request, paid)) in
            [a, b].into_iter().zip(requests.iter().zip(outcomes))
        {
            self.trace.record(&request.path, status, &body);
            if status >= 500 || status == 429 {
                if !self.retries.iter().any(|r| r.key == request.key) {
                    self.retries.push(request.clone());
                }
                continue;
            }
            if status != 200 {
                continue;
            }
            winners.push(paid);
            match self.decided.get(&workflow) {
                Some(&decided) if decided != paid => self.violations.push(format!(
                    "workflow {workflow} ended {} and a concurrent release {} was answered 200",
                    if decided { "paid" } else { "failed" },
                    if paid { "paid" } else { "failed" }
                )),
                _ => {
                    self.decided.entry(workflow.clone()).or_insert(paid);
                    self.report.releases += 1;
                }
            }
        }
        if winners.len() == 2 && winners[0] != winners[1] {
            self.violations.push(format!(
                "workflow {workflow}: concurrent paid and failed were both answered 200"
            ));
        }
    }

    /// A customer whose contract exists, at random.
    fn customer_with_contract(&mut self) -> Option<(usize, CustomerModel)> {
        let ready: Vec<usize> = (0..self.model.customers.len())
            .filter(|&c| self.model.customers[c].contract_id.is_some())
            .collect();
        if ready.is_empty() {
            return None;
        }
        let c = ready[self.rng.random_range(0..ready.len())];
        Some((c, self.model.customers[c].clone()))
    }

    async fn add_commit(&mut self, app: &impl Api) {
        let Some((c, customer)) = self.customer_with_contract() else {
            return;
        };
        let start = Timestamp(self.time.now_ms()).month_start().to_rfc3339();
        let amount = self.rng.random_range(1..10_000);
        self.txn_counter += 1;
        let mut commit = json!({
            "type": "PREPAID", "product_id": COMMIT_PRODUCT.to_string(),
            "priority": self.rng.random_range(1..5),
            "access_schedule": {"schedule_items": [{"amount": amount, "starting_at": start, "ending_before": "2099-01-01T00:00:00Z"}]},
            "invoice_schedule": {"schedule_items": [{"timestamp": start, "amount": amount}]}
        });
        // Some commits pay for one product only: only its usage may draw from them.
        match self.rng.random_range(0..5) {
            0 => commit["applicable_product_ids"] = json!([fixtures::API_PRODUCT.to_string()]),
            1 => commit["applicable_product_ids"] = json!([fixtures::TOKEN_PRODUCT.to_string()]),
            _ => {}
        }
        // Some are bought through a payment gate: withheld until the integrator releases them
        // (EXTERNAL), or released at once (NONE).
        match self.rng.random_range(0..8) {
            0 | 1 => {
                commit["payment_gate_config"] =
                    json!({"payment_gate_type": "EXTERNAL", "tax_type": "NONE"});
                self.report.gated_commits += 1;
            }
            2 => {
                commit["payment_gate_config"] = json!({"payment_gate_type": "NONE"});
                self.report.gated_commits += 1;
            }
            _ => {}
        }
        let request = Request {
            path: "/v2/contracts/edit".into(),
            body: json!({
                "customer_id": customer.id, "contract_id": customer.contract_id,
                "add_commits": [commit]
            }),
            key: format!("edit-{}", self.txn_counter),
            purpose: Purpose::AddCommit(c),
        };
        self.control(app, request).await;
    }

    /// A customer-level commit (invoiced on the customer's contract) or credit, usable by every
    /// contract or by its contract only, at a priority that ties with the contract's own commits
    /// now and then (the contract's draw first then); or, for one created before, its access
    /// shortened to end some time from now.
    async fn customer_level_commit(&mut self, app: &impl Api) {
        let Some((c, customer)) = self.customer_with_contract() else {
            return;
        };
        self.txn_counter += 1;
        let key = format!("customer-commit-{}", self.txn_counter);
        if !customer.customer_commits.is_empty() && self.rng.random_ratio(1, 3) {
            let pick = self.rng.random_range(0..customer.customer_commits.len());
            let (id, credit, current_end) = &customer.customer_commits[pick];
            let wanted = self.time.now_ms() + self.rng.random_range(HOUR_MS..30 * 24 * HOUR_MS);
            // Only ever earlier than every end already asked for (one may still be retried).
            let end = Timestamp(wanted.min(*current_end));
            self.model.customers[c].customer_commits[pick].2 = end.millis();
            let (path, field) = if *credit {
                ("/v1/contracts/customerCredits/updateEndDate", "credit_id")
            } else {
                ("/v1/contracts/customerCommits/updateEndDate", "commit_id")
            };
            let request = Request {
                path: path.into(),
                body: json!({"customer_id": customer.id, field: id, "access_ending_before": end.to_rfc3339()}),
                key,
                purpose: Purpose::EndCustomerCommit,
            };
            self.control(app, request).await;
            return;
        }
        let start = Timestamp(self.time.now_ms()).month_start().to_rfc3339();
        let amount = self.rng.random_range(1..10_000);
        let credit = self.rng.random_bool(0.5);
        let mut body = json!({
            "customer_id": customer.id, "product_id": COMMIT_PRODUCT.to_string(),
            "priority": self.rng.random_range(1..5),
            "access_schedule": {"schedule_items": [{"amount": amount, "starting_at": start, "ending_before": "2099-01-01T00:00:00Z"}]},
        });
        if !credit {
            body["type"] = json!("PREPAID");
            body["invoice_schedule"] =
                json!({"schedule_items": [{"timestamp": start, "amount": amount}]});
            body["invoice_contract_id"] = json!(customer.contract_id);
        }
        if self.rng.random_bool(0.5) {
            body["applicable_contract_ids"] = json!([customer.contract_id]);
        }
        if self.rng.random_ratio(1, 4) {
            body["applicable_product_ids"] = json!([fixtures::TOKEN_PRODUCT.to_string()]);
        }
        if customer.credits_card && self.rng.random_bool(0.4) {
            body["access_schedule"]["credit_type_id"] = json!(fixtures::CREDITS.to_string());
        }
        let path = if credit {
            "/v1/contracts/customerCredits/create"
        } else {
            "/v1/contracts/customerCommits/create"
        };
        let request = Request {
            path: path.into(),
            body,
            key,
            purpose: Purpose::AddCustomerCommit(c),
        };
        self.control(app, request).await;
    }

    /// A balance correction: a manual ledger entry (positive or negative) on a commit added to
    /// the contract or on a customer-level one whose access lasts at least a day more; or, now
    /// and then, an archive of a commit added to the contract (never aimed at again).
    async fn balance_correction(&mut self, app: &impl Api) {
        let Some((c, customer)) = self.customer_with_contract() else {
            return;
        };
        self.txn_counter += 1;
        let key = format!("correction-{}", self.txn_counter);
        let live: Vec<usize> = (0..customer.added_commits.len())
            .filter(|&i| !customer.added_commits[i].1)
            .collect();
        let ungated: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&i| !customer.added_commits[i].2)
            .collect();
        if !ungated.is_empty() && self.rng.random_ratio(1, 4) {
            // Raised by an update: always valid (never below what was drawn), new money.
            let pick = ungated[self.rng.random_range(0..ungated.len())];
            let id = customer.added_commits[pick].0.clone();
            let raise = self.rng.random_range(1..5_000);
            let request = Request {
                path: "/v2/contracts/edit".into(),
                body: json!({"customer_id": customer.id, "contract_id": customer.contract_id,
                             "update_commits": [{"commit_id": id, "access_schedule": {"add_schedule_items": [
                                 {"amount": raise, "starting_at": Timestamp(self.time.now_ms()).month_start().to_rfc3339(),
                                  "ending_before": "2099-01-01T00:00:00Z"}]}}]}),
                key,
                purpose: Purpose::RaiseCommit(c, rust_decimal::Decimal::from(raise)),
            };
            self.control(app, request).await;
            return;
        }
        if !live.is_empty() && self.rng.random_ratio(1, 3) {
            let pick = live[self.rng.random_range(0..live.len())];
            self.model.customers[c].added_commits[pick].1 = true;
            let id = &customer.added_commits[pick].0;
            let request = Request {
                path: "/v2/contracts/edit".into(),
                body: json!({"customer_id": customer.id, "contract_id": customer.contract_id,
                             "archive_commits": [{"id": id}]}),
                key,
                purpose: Purpose::ArchiveCommit,
            };
            self.control(app, request).await;
            return;
        }
        let soon = self.time.now_ms() + 24 * HOUR_MS;
        let mut targets: Vec<(String, Option<String>)> = live
            .iter()
            .map(|&i| {
                (
                    customer.added_commits[i].0.clone(),
                    customer.contract_id.clone(),
                )
            })
            .collect();
        targets.extend(
            customer
                .customer_commits
                .iter()
                .filter(|(_, _, end)| *end > soon)
                .map(|(id, _, _)| (id.clone(), None)),
        );
        if targets.is_empty() {
            return;
        }
        let (commit, contract) = targets.swap_remove(self.rng.random_range(0..targets.len()));
        let Some(commit_id) = tollgate::domain::Id::parse(&commit) else {
            return;
        };
        let segment = tollgate::domain::Id::derive(commit_id, "segment", 0);
        let mut amount = self.rng.random_range(-3_000..3_000);
        if amount == 0 {
            amount = 1;
        }
        let mut body = json!({"customer_id": customer.id, "id": commit,
                              "segment_id": segment.to_string(), "amount": amount,
                              "reason": format!("correction {}", self.txn_counter)});
        if let Some(contract) = contract {
            body["contract_id"] = json!(contract);
        }
        let request = Request {
            path: "/v1/contracts/addManualBalanceLedgerEntry".into(),
            body,
            key,
            purpose: Purpose::ManualEntry(c, rust_decimal::Decimal::from(amount)),
        };
        self.control(app, request).await;
    }

    /// Edits a threshold: switched on or off, a new amount, a new recharge target; sometimes
    /// an invalid one (negative, a recharge target below the threshold), which must be refused
    /// with a 4xx and change nothing.
    async fn edit_threshold(&mut self, app: &impl Api, engine: &Engine) {
        let Some((_, customer)) = self.customer_with_contract() else {
            return;
        };
        let spend = self.rng.random_bool(0.5);
        let invalid = self.rng.random_ratio(1, 6);
        let mut update = serde_json::Map::new();
        if self.rng.random_bool(0.6) {
            update.insert("is_enabled".into(), json!(self.rng.random_bool(0.7)));
        }
        let threshold: i64 = if invalid && (spend || self.rng.random_bool(0.5)) {
            -self.rng.random_range(1..1_000)
        } else if spend {
            self.rng.random_range(1_000..20_000)
        } else {
            self.rng.random_range(1_000..5_000)
        };
        if invalid || self.rng.random_bool(0.5) {
            update.insert("threshold_amount".into(), json!(threshold));
            if !spend {
                let recharge = if invalid {
                    threshold - self.rng.random_range(1..500)
                } else {
                    threshold + self.rng.random_range(1_000..10_000)
                };
                update.insert("recharge_to_amount".into(), json!(recharge));
                // The amount rail must let the new largest recharge through: raised to fit
                // (the model keeps the highest it ever was). Count and interval stay.
                let c = self
                    .model
                    .customers
                    .iter()
                    .position(|m| m.id == customer.id);
                let rails = c.and_then(|c| self.model.customers[c].rails.as_mut());
                if let (Some(rails), false) = (rails, invalid) {
                    rails.max_amount = rails.max_amount.map(|max| max.max(recharge));
                    update.insert("recharge_limits".into(), rails.to_json());
                }
            }
        }
        if invalid && !spend && self.rng.random_ratio(1, 3) {
            update.insert(
                "recharge_limits".into(),
                json!({"min_recharge_interval_minutes": 0}),
            );
        }
        let field = if spend {
            "update_spend_threshold_configuration"
        } else {
            "update_prepaid_balance_threshold_configuration"
        };
        self.txn_counter += 1;
        let request = Request {
            path: "/v2/contracts/edit".into(),
            body: json!({
                "customer_id": customer.id, "contract_id": customer.contract_id,
                field: Value::Object(update)
            }),
            key: format!("edit-{}", self.txn_counter),
            purpose: Purpose::EditThreshold {
                must_apply: !invalid && customer.thresholds[usize::from(!spend)],
            },
        };
        let before = self.thresholds_of(engine, &customer).await;
        let answer = self.control(app, request.clone()).await;
        if let Some((status, body)) = answer {
            if invalid && status < 400 {
                self.violations.push(format!(
                    "an invalid threshold edit {} was answered {status}: {body}",
                    request.body
                ));
            }
            if (400..500).contains(&status) {
                let after = self.thresholds_of(engine, &customer).await;
                if before.is_some() && after.is_some() && before != after {
                    self.violations.push(format!(
                        "a refused edit ({status} {body}) changed the thresholds: {before:?} -> {after:?}"
                    ));
                }
            }
        }
        if invalid {
            // The client does not send an invalid edit again.
            self.retries.retain(|r| r.key != request.key);
        }
    }

    /// The contract's edit count and threshold amounts (what an edit may change).
    async fn thresholds_of(
        &mut self,
        engine: &Engine,
        customer: &CustomerModel,
    ) -> Option<(
        u64,
        Vec<(rust_decimal::Decimal, Option<rust_decimal::Decimal>)>,
    )> {
        let id = customer
            .id
            .as_deref()
            .and_then(tollgate::domain::Id::parse)?;
        engine
            .query(id, |s| {
                let contract = s.customer.contracts.first()?;
                let amounts = [&contract.spend_threshold, &contract.prepaid_threshold]
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        (
                            t.threshold_amount.as_decimal(),
                            t.recharge_to_amount.map(|m| m.as_decimal()),
                        )
                    })
                    .collect();
                Some((contract.edits, amounts))
            })
            .await
            .ok()
            .flatten()
    }

    /// Checks after every step: at most one workflow in flight per contract and kind, and
    /// nothing quarantined (the workload holds no input the engine may not apply).
    async fn check_step(&mut self, engine: &Engine) -> Result<(), String> {
        if let Some(violation) = self.violations.first() {
            return Err(format!("step {}: {violation}", self.step));
        }
        self.stripe
            .check_charges()
            .map_err(|e| format!("step {}: {e}", self.step))?;
        if !engine.is_ready() {
            return Ok(());
        }
        // Storage failures are fail-stop (SPEC 2.1): one that struck must have stopped it.
        let fired = self.faults.fired.load(SeqCst);
        if fired > 0 {
            return Err(format!(
                "step {}: {fired} storage faults struck and the engine still accepts",
                self.step
            ));
        }
        for (c, customer) in self.model.customers.iter().enumerate() {
            let Some(id) = &customer.id else { continue };
            let id = tollgate::domain::Id::parse(id).ok_or_else(|| format!("customer id {id}"))?;
            let in_flight = engine
                .query(id, |s| {
                    s.customer
                        .contracts
                        .iter()
                        .map(|contract| {
                            let mut kinds: Vec<_> = contract
                                .workflows
                                .iter()
                                .filter(|w| !w.state.is_terminal())
                                // Bought commits may wait for their payments side by side.
                                .filter(|w| {
                                    w.kind != tollgate::domain::gate::WorkflowKind::ManualCommit
                                })
                                .map(|w| w.kind)
                                .collect();
                            let all = kinds.len();
                            kinds.sort_by_key(|k| format!("{k:?}"));
                            kinds.dedup();
                            (all, kinds.len())
                        })
                        .collect::<Vec<_>>()
                })
                .await;
            let Ok(in_flight) = in_flight else { continue };
            for (all, distinct) in in_flight {
                if all != distinct {
                    return Err(format!(
                        "step {}: customer {c} has two workflows of one kind in flight",
                        self.step
                    ));
                }
            }
        }
        self.check_aliases(engine).await?;
        if let Ok(quarantined) = self.faults.quietly(|| engine.quarantined(None, 10)) {
            // Only what the buggy version's bug makes panic is ever quarantined.
            let poisoned = |q: &tollgate::actors::quarantine::Quarantined| {
                matches!(&q.input, tollgate::domain::customer::Input::RecordUsage(e)
                    if e.transaction_id.starts_with("poison-"))
                    && self.swarm.buggy_version
            };
            if !quarantined.iter().all(poisoned) {
                return Err(format!(
                    "step {}: inputs quarantined: {:?}",
                    self.step,
                    quarantined
                        .iter()
                        .map(|q| q.reason.clone())
                        .collect::<Vec<_>>()
                ));
            }
        }
        Ok(())
    }

    /// The alias map names the customers the integrator was told (once no move is half done),
    /// and no usage waits as late for a key that names a customer: an alias moved across
    /// partitions and replayed after a crash must not be left naming nobody.
    async fn check_aliases(&self, engine: &Engine) -> Result<(), String> {
        if !self.moving() {
            for (c, id) in self.customer_ids() {
                for alias in self.aliases_of(c) {
                    let named = engine.resolve(&alias);
                    if named != Some(id) {
                        return Err(format!(
                            "step {}: alias {alias} of customer {c} names {named:?}",
                            self.step
                        ));
                    }
                }
            }
        }
        // A release of late usage runs after the answer that made its key resolve: let the
        // engine finish the ones it has queued (no simulated time passes).
        for _ in 0..10_000 {
            if engine.late_releases_pending() == 0 && engine.pending_inputs() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        if engine.late_releases_pending() != 0 || !engine.is_ready() {
            return Ok(());
        }
        let late = self
            .faults
            .quietly(|| engine.store().meta_scan_prefix(LATE_PREFIX));
        let Ok(late) = late else {
            return Ok(());
        };
        for (key, _) in late {
            let customer_key = late_customer_key(&key).map(String::from_utf8_lossy);
            if let Some(named) = customer_key.as_deref().and_then(|k| engine.resolve(k)) {
                return Err(format!(
                    "step {}: usage sent to {customer_key:?} waits as late, though it names {named}",
                    self.step
                ));
            }
        }
        Ok(())
    }

    /// The end: usage exactly once per period against the model, money adding up on every
    /// invoice, webhooks delivered once each with one body, nothing pending or quarantined.
    async fn check_final(&mut self, app: &impl Api, engine: &Engine) -> Result<(), String> {
        self.check_step(engine).await?;
        let customers = self.model.customers.clone();
        let mut applied_by_invoice = BTreeMap::new();
        let mut invoiced: Vec<(usize, Timestamp, Timestamp)> = Vec::new();
        let mut api_billed = 0i64;
        for (c, customer) in customers.iter().enumerate() {
            let (Some(id), Some(_)) = (&customer.id, &customer.contract_id) else {
                return Err(format!("customer {c} was never set up"));
            };
            let (status, invoices) = self
                .get(
                    app,
                    &format!("/v1/customers/{id}/invoices?type=USAGE&limit=100"),
                )
                .await;
            if status != 200 {
                return Err(format!("invoices of customer {c}: {status} {invoices}"));
            }
            if !invoices["next_page"].is_null() {
                return Err(format!("customer {c} has more than 100 usage invoices"));
            }
            let mut covered = 0usize;
            let mut first_start = None;
            for invoice in invoices["data"].as_array().into_iter().flatten() {
                let start = parse_time(&invoice["start_timestamp"])?;
                let end = parse_time(&invoice["end_timestamp"])?;
                first_start = Some(first_start.map_or(start, |s: Timestamp| s.min(start)));
                let expected = self.model.expected(c, start, end);
                covered += self
                    .model
                    .counted()
                    .filter(|(_, e)| {
                        self.model.owner(e).may_be(c) && e.timestamp >= start && e.timestamp < end
                    })
                    .count();
                let mut api = (0i64, rust_decimal::Decimal::ZERO, 0usize);
                let mut tokens = rust_decimal::Decimal::ZERO;
                let mut applied = rust_decimal::Decimal::ZERO;
                // Lines in credits, and the conversion of what they leave: (applied in
                // credits, applied in fiat, converted quantity, converted total).
                let mut in_credits = (rust_decimal::Decimal::ZERO, rust_decimal::Decimal::ZERO);
                let mut conversion = (rust_decimal::Decimal::ZERO, rust_decimal::Decimal::ZERO);
                let credits_id = json!(fixtures::CREDITS.to_string());
                for line in invoice["line_items"].as_array().into_iter().flatten() {
                    let total = decimal(&line["total"])?;
                    let credits = line["credit_type"]["id"] == credits_id;
                    match line["type"].as_str() {
                        Some("applied_commit_or_credit") if credits => in_credits.0 += total,
                        Some("applied_commit_or_credit") => in_credits.1 += total,
                        _ => {}
                    }
                    if line["type"] == "cpu_conversion" {
                        conversion.0 += decimal(&line["quantity"])?;
                        conversion.1 += total;
                    }
                    match line["type"].as_str() {
                        Some("usage")
                            if line["product_id"] == json!(fixtures::API_PRODUCT.to_string()) =>
                        {
                            api = (line["quantity"].as_i64().unwrap_or(-1), total, api.2 + 1);
                        }
                        Some("usage")
                            if line["product_id"] == json!(fixtures::TOKEN_PRODUCT.to_string()) =>
                        {
                            tokens = total;
                        }
                        Some("applied_commit_or_credit") => applied += total,
                        _ => {}
                    }
                }
                if let Some(id) = invoice["id"].as_str() {
                    applied_by_invoice.insert(id.to_owned(), applied);
                }
                invoiced.push((c, start, end));
                api_billed += api.0.max(0);
                let api_max = expected.api_calls + expected.maybe_api_calls;
                let quantity = api.0.max(0);
                let (least, most) = expected.api_cents_for(quantity);
                let api_ok = (expected.api_calls..=api_max).contains(&quantity)
                    && (rust_decimal::Decimal::from(least)..=rust_decimal::Decimal::from(most))
                        .contains(&api.1)
                    && api.2 <= 1;
                let tokens_ok = expected.maybe_token_events > 0 || tokens == expected.token_total();
                if !api_ok || !tokens_ok {
                    return Err(format!(
                        "customer {c}, period {}: expected {expected:?} ({least}..={most} + {} cents), invoice {invoice}",
                        start.to_rfc3339(),
                        expected.token_total()
                    ));
                }
                let subtotal = decimal(&invoice["subtotal"])?;
                let total = decimal(&invoice["total"])?;
                let worth = rust_decimal::Decimal::from(fixtures::CREDIT_WORTH_CENTS);
                let credits_card = self.model.customers[c].credits_card;
                // API calls are in credits on the credits card: their charge counts at its
                // worth, and what credits leave converts at it.
                let (api_fiat, fiat_total) = if credits_card {
                    let left = api.1 + in_credits.0;
                    if conversion != (left, left * worth) {
                        return Err(format!(
                            "customer {c}: {left} credits uncovered, converted {conversion:?}: {invoice}"
                        ));
                    }
                    (api.1 * worth, tokens + in_credits.1 + conversion.1)
                } else {
                    (api.1, subtotal + applied)
                };
                if subtotal != api_fiat + tokens || total != fiat_total || total.is_sign_negative()
                {
                    return Err(format!("customer {c}: money does not add up: {invoice}"));
                }
            }
            let since = first_start.unwrap_or(Timestamp(i64::MAX));
            let (at_least, at_most) = self.model.counted_since(c, since);
            if covered < at_least || covered > at_most {
                return Err(format!(
                    "customer {c}: {covered} events in invoice periods, {at_least}..={at_most} counted"
                ));
            }
        }
        // Each customer's invoices may hold usage whose owner is uncertain (an alias moved);
        // together they hold each call at most once.
        let may_be_billed = self
            .model
            .counted()
            .filter(|(_, e)| e.usage == Usage::ApiCall && self.model.may_be_billed(e))
            .filter(|(_, e)| {
                let owner = self.model.owner(e);
                invoiced.iter().any(|&(c, start, end)| {
                    owner.may_be(c) && start <= e.timestamp && e.timestamp < end
                })
            })
            .count();
        // And every call that must be billed is, to one of its possible owners: one sent to a
        // moving alias is lost by neither.
        let must_be_billed = self
            .model
            .counted()
            .filter(|(_, e)| e.usage == Usage::ApiCall && self.model.must_be_billed(e))
            .filter(|(_, e)| {
                let owners = self.model.owner(e).candidates();
                owners.iter().all(|&o| {
                    invoiced
                        .iter()
                        .any(|&(c, start, end)| c == o && start <= e.timestamp && e.timestamp < end)
                })
            })
            .count();
        if api_billed > may_be_billed as i64 || api_billed < must_be_billed as i64 {
            return Err(format!(
                "{api_billed} API calls billed over all customers, {must_be_billed}..={may_be_billed} must be"
            ));
        }
        self.check_balances(engine, &applied_by_invoice).await?;
        self.check_workflows(engine).await?;
        self.check_workflow_list(app, engine).await?;
        self.check_workflow_money(engine).await?;
        self.check_rails_and_lifecycle(engine).await?;
        self.check_alerts(engine).await?;
        self.check_audit(app).await?;
        self.check_webhook_lists(app).await?;
        let conflicts = self.receiver.conflicts();
        if !conflicts.is_empty() {
            return Err(format!("webhooks delivered with two bodies: {conflicts:?}"));
        }
        let stats = engine.webhook_stats().snapshot();
        if stats.pending != 0 {
            return Err(format!("webhooks still pending at the end: {stats:?}"));
        }
        for id in self.receiver.arrival() {
            let kept = &self.receiver.kept()[&id];
            self.trace.record(&kept.event_type, 0, &kept.body);
        }
        Ok(())
    }
}

impl Sim {
    /// Every control request answered below 500 is in the audit log with its path and status,
    /// across crashes, power losses and storage faults; a record without a status (its call was
    /// running when the process stopped, or its second write failed) may stand for any answer.
    /// (A 503 may have no record: a call whose first record cannot be written does not run.)
    async fn check_audit(&mut self, app: &impl Api) -> Result<(), String> {
        let mut records: BTreeMap<(String, Option<u64>), usize> = BTreeMap::new();
        let mut last_seq = 0u64;
        for record in self.every_page(app, "/v1/tollgate/audit").await? {
            let seq = record["seq"].as_u64().unwrap_or(0);
            if seq <= last_seq {
                return Err(format!("audit seq {seq} after {last_seq}: {record}"));
            }
            last_seq = seq;
            if record["token"] != SIM_TOKEN_NAME {
                return Err(format!("audit record of another token: {record}"));
            }
            let path = record["path"].as_str().unwrap_or("").to_owned();
            *records
                .entry((path, record["status"].as_u64()))
                .or_default() += 1;
        }
        for (path, status) in &self.answered {
            let exact = (path.clone(), Some(u64::from(*status)));
            let open = (path.clone(), None);
            let slot = [exact, open]
                .into_iter()
                .find(|k| records.get(k).is_some_and(|&n| n > 0));
            match slot {
                Some(key) => *records.get_mut(&key).expect("found above") -= 1,
                None => {
                    return Err(format!(
                        "{path} was answered {status} and is not in the audit log"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The operator's workflow list (every page, no filter) holds every workflow of every
    /// customer, in the state the customer's actor holds, and nothing else; one is read back by
    /// id and a state filter keeps exactly its state's.
    async fn check_workflow_list(&mut self, app: &impl Api, engine: &Engine) -> Result<(), String> {
        self.check_gate_counters(engine).await?;
        let mut held: BTreeMap<String, String> = BTreeMap::new();
        for (c, id) in self.customer_ids() {
            let workflows = engine
                .query(id, |s| {
                    s.customer
                        .contracts
                        .iter()
                        .flat_map(|c| c.workflows.iter())
                        .map(|w| (w.id.to_string(), w.state.as_str().to_owned()))
                        .collect::<Vec<_>>()
                })
                .await
                .map_err(|e| format!("customer {c}: {e}"))?;
            held.extend(workflows);
        }
        let mut listed: BTreeMap<String, String> = BTreeMap::new();
        for w in self.every_page(app, "/v1/tollgate/workflows").await? {
            let id = w["id"].as_str().unwrap_or("").to_owned();
            let state = w["state"].as_str().unwrap_or("").to_owned();
            if listed.insert(id.clone(), state).is_some() {
                return Err(format!("workflow {id} listed twice"));
            }
        }
        if listed != held {
            return Err(format!(
                "the workflow list differs from the customers' workflows: listed {listed:?}, held {held:?}"
            ));
        }
        // The index of workflows in flight by state lists exactly those in each state, and the
        // summary counts them.
        let (status, summary) = self.get(app, "/v1/tollgate/summary").await;
        if status != 200 {
            return Err(format!("summary: {status} {summary}"));
        }
        for state in [
            "INITIATED",
            "AWAITING_EXTERNAL",
            "CHARGING",
            "ACTION_REQUIRED",
        ] {
            let expected: Vec<&String> = held
                .iter()
                .filter(|(_, s)| s.as_str() == state)
                .map(|(id, _)| id)
                .collect();
            let indexed: Vec<String> = self
                .every_page(app, &format!("/v1/tollgate/workflows?state={state}"))
                .await?
                .iter()
                .map(|w| w["id"].as_str().unwrap_or("").to_owned())
                .collect();
            if indexed.iter().collect::<Vec<_>>() != expected {
                return Err(format!(
                    "workflows in flight in {state}: the index lists {indexed:?}, the customers hold {expected:?}"
                ));
            }
            let counted = &summary["data"]["workflows_in_flight"]["by_state"][state];
            if counted != &json!(expected.len()) {
                return Err(format!(
                    "the summary counts {counted} workflows in {state}, the customers hold {}",
                    expected.len()
                ));
            }
        }
        if let Some((id, state)) = held.iter().next() {
            let (status, one) = self.get(app, &format!("/v1/tollgate/workflows/{id}")).await;
            if status != 200 || one["data"]["state"] != json!(state) {
                return Err(format!("workflow {id} read back as {status} {one}"));
            }
            let (status, page) = self
                .get(
                    app,
                    &format!("/v1/tollgate/workflows?state={state}&limit=100"),
                )
                .await;
            let all_of_state = page["data"].as_array().is_some_and(|items| {
                items.iter().all(|w| w["state"] == json!(state))
                    && items.len() == held.values().filter(|s| *s == state).count().min(100)
            });
            if status != 200 || !all_of_state {
                return Err(format!("workflows in state {state}: {status} {page}"));
            }
        }
        Ok(())
    }

    /// The per-gate counters (rebuilt at each start, counted live since) equal what the
    /// customers' workflows say: started, released and failed by gate.
    async fn check_gate_counters(&mut self, engine: &Engine) -> Result<(), String> {
        use tollgate::actors::entry::GATES;
        use tollgate::domain::gate::WorkflowState;
        let mut held = [(0u64, 0u64, 0u64); 3];
        for (c, id) in self.customer_ids() {
            let workflows = engine
                .query(id, |s| {
                    s.customer
                        .contracts
                        .iter()
                        .flat_map(|c| c.workflows.iter())
                        .map(|w| (w.gate.gate_type, w.state))
                        .collect::<Vec<_>>()
                })
                .await
                .map_err(|e| format!("customer {c}: {e}"))?;
            for (gate, state) in workflows {
                let row = &mut held[GATES.iter().position(|g| *g == gate).unwrap_or(0)];
                row.0 += 1;
                row.1 += u64::from(state == WorkflowState::Released);
                row.2 += u64::from(state == WorkflowState::Failed);
            }
        }
        for (gate, expected) in GATES.iter().zip(held) {
            let counted = engine.metrics().gates.get(*gate);
            if counted != expected {
                return Err(format!(
                    "workflows of the {gate:?} gate counted (started, released, failed) {counted:?}, the customers hold {expected:?}"
                ));
            }
        }
        Ok(())
    }

    /// Every EXTERNAL workflow was announced to the integrator (else nobody can ever release
    /// it), and every one the integrator decided ended that way.
    async fn check_workflows(&mut self, engine: &Engine) -> Result<(), String> {
        use tollgate::domain::gate::{GateType, WorkflowState};
        // The webhook types the integrator received for each workflow.
        let mut heard: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for kept in self.receiver.kept().values() {
            if let Some(workflow) = kept.properties["workflow_id"].as_str() {
                heard
                    .entry(workflow.to_owned())
                    .or_default()
                    .push(kept.event_type.clone());
            }
        }
        for (c, id) in self.customer_ids() {
            let workflows = engine
                .query(id, |s| {
                    s.customer
                        .contracts
                        .iter()
                        .flat_map(|c| c.workflows.iter())
                        .map(|w| (w.id.to_string(), w.gate.gate_type, w.state, w.kind))
                        .collect::<Vec<_>>()
                })
                .await
                .map_err(|e| format!("customer {c}: {e}"))?;
            for (workflow, gate, state, kind) in workflows {
                let types = heard.get(&workflow).cloned().unwrap_or_default();
                let has = |t: &str| types.iter().any(|x| x == t);
                // A bought commit's workflow reached no threshold.
                let manual = kind == tollgate::domain::gate::WorkflowKind::ManualCommit;
                let missing = if !manual && !has("payment_gate.threshold_reached") {
                    Some("payment_gate.threshold_reached")
                } else if gate == GateType::External && !has("payment_gate.external_initiate") {
                    Some("payment_gate.external_initiate")
                } else if gate != GateType::None
                    && state.is_terminal()
                    && !has("payment_gate.payment_status")
                {
                    Some("payment_gate.payment_status")
                } else {
                    None
                };
                if let Some(missing) = missing {
                    return Err(format!(
                        "customer {c}: workflow {workflow} ({gate:?}, {state:?}) never sent {missing}; heard {types:?}"
                    ));
                }
                let expected = match self.decided.get(&workflow) {
                    Some(true) => WorkflowState::Released,
                    Some(false) => WorkflowState::Failed,
                    None => continue,
                };
                if state != expected {
                    return Err(format!(
                        "customer {c}: workflow {workflow} is {state:?}, the integrator decided {expected:?}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One contract's commits, usage lines and workflows as the balance invariants see them.
#[derive(Default)]
struct ContractMoney {
    /// Segment amounts of the commits and credits the integrator added.
    user_granted: rust_decimal::Decimal,
    /// The manual entries of all segments.
    manual: rust_decimal::Decimal,
    /// Drawn from all segments, and the sum of their ledger deductions.
    drawn: rust_decimal::Decimal,
    deducted: rust_decimal::Decimal,
    /// Covered on all usage lines, and the sum of their draws.
    covered: rust_decimal::Decimal,
    line_draws: rust_decimal::Decimal,
    /// Each usage invoice's covered amount.
    covered_by_invoice: BTreeMap<String, rust_decimal::Decimal>,
    /// What is wrong inside one segment, line or workflow.
    broken: Vec<String>,
    /// Lines in a custom pricing unit, and their converted draws.
    credit_lines: usize,
    converted_draws: usize,
}

impl Sim {
    /// Balances add up: every segment's drawn amount lies within it and equals its ledger,
    /// every usage line is covered by exactly its draws, what segments lost is what lines
    /// gained (and what the invoices show as applied); the commits the integrator added sum to
    /// what it granted; each threshold commit holds its workflow's amount.
    async fn check_balances(
        &mut self,
        engine: &Engine,
        applied_by_invoice: &BTreeMap<String, rust_decimal::Decimal>,
    ) -> Result<(), String> {
        use rust_decimal::Decimal;
        for (c, id) in self.customer_ids() {
            let money = engine
                .query(id, |s| {
                    let mut m = ContractMoney::default();
                    let shared = s.customer.customer_commits.iter().map(|c| &c.commit);
                    let all_commits: Vec<_> = s
                        .customer
                        .contracts
                        .iter()
                        .flat_map(|c| &c.commits)
                        .chain(shared)
                        .collect();
                    for commit in all_commits {
                        for (si, segment) in commit.segments.iter().enumerate() {
                            let (amount, drawn) =
                                (segment.amount.as_decimal(), segment.drawn.as_decimal());
                            let manual = segment.manual.as_decimal();
                            let entries: Decimal = commit
                                .manual_entries
                                .iter()
                                .filter(|e| e.segment == si)
                                .map(|e| e.amount.as_decimal())
                                .sum();
                            if entries != manual {
                                m.broken.push(format!(
                                    "commit {} segment {si}: manual {manual}, its entries {entries}",
                                    commit.id
                                ));
                            }
                            m.manual += manual;
                            // Usage draws only from what the schedule and the positive entries
                            // gave (a negative entry after a draw may leave less than drawn).
                            let ceiling = amount
                                + commit
                                    .manual_entries
                                    .iter()
                                    .filter(|e| e.segment == si && e.amount.is_positive())
                                    .map(|e| e.amount.as_decimal())
                                    .sum::<Decimal>();
                            if commit.created_by_threshold.is_none() {
                                m.user_granted += amount;
                            }
                            let ledger: Decimal = commit
                                .deductions
                                .iter()
                                .filter(|d| d.segment == si)
                                .map(|d| d.amount.as_decimal())
                                .sum();
                            if drawn.is_sign_negative() || drawn > ceiling || ledger != drawn {
                                m.broken.push(format!(
                                    "commit {} segment {si}: amount {amount}, drawn {drawn}, ledger {ledger}",
                                    commit.id
                                ));
                            }
                            m.drawn += drawn;
                            m.deducted += ledger;
                        }
                        if let Some(archived) = commit.archived_at {
                            if let Some(d) = commit.deductions.iter().find(|d| d.at > archived) {
                                m.broken.push(format!(
                                    "commit {} archived at {archived:?} was drawn at {:?}",
                                    commit.id, d.at
                                ));
                            }
                        }
                        // (An archived commit keeps what it drew before its archive.)
                        let released = matches!(
                            commit.release,
                            tollgate::domain::contract::Release::Released { .. }
                        );
                        if !released && !commit.deductions.is_empty() {
                            m.broken.push(format!(
                                "commit {} ({:?}) was drawn from",
                                commit.id, commit.release
                            ));
                        }
                    }
                    for contract in &s.customer.contracts {
                        for period in &contract.periods {
                            let mut covered = Decimal::ZERO;
                            for line in &period.lines {
                                let sum = |converted: bool| -> Decimal {
                                    line.draws
                                        .iter()
                                        .filter(|d| d.is_converted() == converted)
                                        .map(|d| d.amount.as_decimal())
                                        .sum()
                                };
                                let (own, converted) = (sum(false), sum(true));
                                let draws = own + converted;
                                let line_covered = line.covered.as_decimal();
                                let fiat = line.covered_fiat.as_decimal();
                                // What fiat paid converted is at most what the unit left.
                                let unpaid = line
                                    .to_fiat(line.uncovered())
                                    .map(|m| m.as_decimal())
                                    .unwrap_or(Decimal::MIN);
                                if line_covered.is_sign_negative()
                                    || line_covered > line.charged.as_decimal().max(Decimal::ZERO)
                                    || own != line_covered
                                    || converted != fiat
                                    || fiat.is_sign_negative()
                                    || fiat > unpaid
                                    || (line.conversion.is_none() && !fiat.is_zero())
                                {
                                    m.broken.push(format!(
                                        "invoice {} line {}: charged {}, covered {line_covered} + {fiat} in fiat, draws {own} + {converted} converted",
                                        period.invoice_id, line.product_id, line.charged.as_decimal()
                                    ));
                                }
                                for draw in &line.draws {
                                    use tollgate::domain::contract::DrawSource;
                                    let commit = match draw.source() {
                                        DrawSource::Contract(ci) => contract.commits.get(ci),
                                        DrawSource::Customer(ci) => s
                                            .customer
                                            .customer_commits
                                            .get(ci)
                                            .filter(|shared| shared.usable_by(contract))
                                            .map(|shared| &shared.commit),
                                    };
                                    let restricted = commit.map(|c| &c.applicable_product_ids);
                                    // A draw in the line's unit comes from a commit in it, a
                                    // converted one from a fiat commit.
                                    let unit = if draw.is_converted() { None } else { line.unit() };
                                    if restricted.is_none_or(|only| {
                                        !only.is_empty() && !only.contains(&line.product_id)
                                    }) || commit.is_some_and(|c| c.credit_type != unit)
                                    {
                                        m.broken.push(format!(
                                            "invoice {} line {} drew {} from commit {:?}, which does not pay for it",
                                            period.invoice_id,
                                            line.product_id,
                                            draw.amount.as_decimal(),
                                            commit.map(|c| c.id)
                                        ));
                                    }
                                }
                                covered += line_covered + fiat;
                                m.line_draws += draws;
                                m.credit_lines += usize::from(line.conversion.is_some());
                                m.converted_draws +=
                                    line.draws.iter().filter(|d| d.is_converted()).count();
                            }
                            m.covered += covered;
                            m.covered_by_invoice
                                .insert(period.invoice_id.to_string(), covered);
                        }
                        for w in &contract.workflows {
                            let held = contract
                                .commit(w.commit_id)
                                .map(|commit| commit.total_amount().map(|a| a.as_decimal()));
                            if held != Some(Ok(w.access_amount.as_decimal())) {
                                m.broken.push(format!(
                                    "workflow {} grants {} but its commit holds {held:?}",
                                    w.id,
                                    w.access_amount.as_decimal()
                                ));
                            }
                        }
                    }
                    m
                })
                .await
                .map_err(|e| format!("balances of customer {c}: {e}"))?;
            if let Some(broken) = money.broken.first() {
                return Err(format!("customer {c}: {broken}"));
            }
            self.report.credit_lines += money.credit_lines;
            self.report.converted_draws += money.converted_draws;
            if money.drawn != money.covered || money.deducted != money.line_draws {
                return Err(format!(
                    "customer {c}: segments gave {} (ledger {}), usage lines received {} (draws {})",
                    money.drawn, money.deducted, money.covered, money.line_draws
                ));
            }
            let manual = self.model.customers[c].manual;
            if money.manual != manual {
                return Err(format!(
                    "customer {c}: its segments hold {} of manual entries, the integrator made {manual}",
                    money.manual
                ));
            }
            let granted = self.model.customers[c].granted;
            if money.user_granted != granted {
                return Err(format!(
                    "customer {c}: its commits and credits hold {}, the integrator granted {granted}",
                    money.user_granted
                ));
            }
            for (invoice, covered) in &money.covered_by_invoice {
                let applied = applied_by_invoice.get(invoice).copied();
                if applied.map_or(!covered.is_zero(), |applied| -applied != *covered) {
                    return Err(format!(
                        "customer {c}: invoice {invoice} shows {applied:?} applied, its lines are covered by {covered}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One workflow as the money invariants see it.
struct WorkflowMoney {
    customer: usize,
    gate: tollgate::domain::gate::GateType,
    state: tollgate::domain::gate::WorkflowState,
    /// The commit's release, `None` when the contract has no such commit.
    release: Option<tollgate::domain::contract::Release>,
    /// The purchase invoice's total in minor units.
    minor_units: Option<i64>,
}

impl Sim {
    /// Every workflow's money: a RELEASED one has its commit released, a FAILED one has none
    /// usable; every charge Stripe collected belongs to a RELEASED STRIPE workflow, for the
    /// invoice's amount, or was refunded after the workflow FAILED; every RELEASED STRIPE
    /// workflow was paid.
    async fn check_workflow_money(&mut self, engine: &Engine) -> Result<(), String> {
        use tollgate::domain::contract::Release;
        use tollgate::domain::gate::{GateType, WorkflowState};
        let mut workflows: BTreeMap<String, WorkflowMoney> = BTreeMap::new();
        for (c, id) in self.customer_ids() {
            let found = engine
                .query(id, |s| {
                    let mut found = Vec::new();
                    for contract in &s.customer.contracts {
                        for w in &contract.workflows {
                            let release = contract
                                .commits
                                .iter()
                                .find(|commit| commit.id == w.commit_id)
                                .map(|commit| commit.release);
                            let minor = w.invoice_total.to_minor_units(&contract.credit_type).ok();
                            found.push((
                                w.id.to_string(),
                                w.gate.gate_type,
                                w.state,
                                release,
                                minor,
                            ));
                        }
                    }
                    found
                })
                .await
                .map_err(|e| format!("workflow money of customer {c}: {e}"))?;
            for (workflow, gate, state, release, minor_units) in found {
                workflows.insert(
                    workflow,
                    WorkflowMoney {
                        customer: c,
                        gate,
                        state,
                        release,
                        minor_units,
                    },
                );
            }
        }
        for (id, w) in &workflows {
            let ok = match (w.state, w.release) {
                (WorkflowState::Released, Some(Release::Released { .. })) => true,
                (WorkflowState::Released, _) => false,
                (WorkflowState::Failed, Some(Release::Released { .. })) => false,
                _ => true,
            };
            if !ok {
                return Err(format!(
                    "customer {}: workflow {id} is {:?} and its commit is {:?}",
                    w.customer, w.state, w.release
                ));
            }
        }
        let collected = self.stripe.collected();
        for charge in &collected {
            let workflow = charge.workflow.clone().unwrap_or_default();
            let Some(w) = workflows.get(&workflow) else {
                return Err(format!(
                    "{charge:?} collected money for a workflow the engine does not have"
                ));
            };
            let fits = if charge.refunded {
                w.state == WorkflowState::Failed
            } else {
                w.gate == GateType::Stripe
                    && w.state == WorkflowState::Released
                    && w.minor_units == Some(charge.amount)
            };
            if !fits {
                return Err(format!(
                    "customer {}: {charge:?} for workflow {workflow} ({:?}, {:?}, invoice {:?} minor units)",
                    w.customer, w.gate, w.state, w.minor_units
                ));
            }
        }
        for (id, w) in &workflows {
            let paid = collected
                .iter()
                .any(|c| !c.refunded && c.workflow.as_deref() == Some(id.as_str()));
            if w.gate == GateType::Stripe && w.state == WorkflowState::Released && !paid {
                return Err(format!(
                    "customer {}: STRIPE workflow {id} RELEASED without a collected charge",
                    w.customer
                ));
            }
        }
        Ok(())
    }
}

/// The access amounts of a list of commits or credits in a request body.
fn granted_by(commits: &Value) -> rust_decimal::Decimal {
    commits
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|commit| {
            commit["access_schedule"]["schedule_items"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter_map(|item| item["amount"].as_i64())
        .map(rust_decimal::Decimal::from)
        .sum()
}

fn parse_time(value: &Value) -> Result<Timestamp, String> {
    value
        .as_str()
        .and_then(Timestamp::parse_rfc3339)
        .ok_or_else(|| format!("not a time: {value}"))
}

fn decimal(value: &Value) -> Result<rust_decimal::Decimal, String> {
    use std::str::FromStr;
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => return Err(format!("not a number: {other}")),
    };
    rust_decimal::Decimal::from_str(&text)
        .or_else(|_| rust_decimal::Decimal::from_scientific(&text))
        .map_err(|e| format!("{text}: {e}"))
}

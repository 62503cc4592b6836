//! `tollgate bench`: the capacity-planning tool. It starts the real server as a child process
//! (or targets `--url`), sets up customers with threshold contracts through the public API,
//! offers ingest load open-loop or closed-loop, receives the server's webhooks in a built-in
//! sink, and reports accepted rate, ack and crossing -> webhook latency, server CPU and memory,
//! optionally beside a null server (the HTTP + JSON ceiling) and as a sweep with a chart and a
//! capacity statement.
//!
//! This module only orchestrates; it never reaches into the engine: everything goes through
//! HTTP, as a user's client would, so the figures are the ones a deployment would see.

pub mod capacity;
pub mod chart;
pub mod load;
pub mod machine;
pub mod null_server;
pub mod population;
pub mod report;
pub mod server;
pub mod setup;
pub mod sink;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use capacity::{capacity_statement, capacity_step};
use load::{LoadSpec, Mode, Tracking, Workload};
use machine::{Machine, sample_process};
use population::{CustomerSampler, SpendTracker, crossing_plan};
use report::{
    AcknowledgedCheck, BuildInfo, MIN_SAMPLES_DEFAULT, Parameters, Percentiles, Report, RunReport,
    SweepReport,
};
use server::{LocalServer, ServerOptions};
use setup::Api;
use sink::WebhookSink;

/// Where crossings are placed for `--max` (whose rate is not known in advance): a rate of this
/// many events/s is assumed.
const MAX_RATE_ESTIMATE: f64 = 100_000.0;
/// A sweep without `--sweep-rates` offers these shares of the closed-loop maximum.
const SWEEP_SHARES: [f64; 6] = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5];
/// After a run, wait this long at most for the webhooks of acknowledged crossings ...
const WEBHOOK_GRACE: Duration = Duration::from_secs(5);
/// ... and at most this long for the server to finish applying what it acknowledged (its CPU
/// falls under `IDLE_CPU_SHARE` of one core), so CPU per event includes rating and webhooks.
const SETTLE_MAX: Duration = Duration::from_secs(15);
const SETTLE_TICK: Duration = Duration::from_millis(200);
const IDLE_CPU_SHARE: f64 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// A 200 means fsynced (group commit).
    Fsync,
    /// Written to RocksDB's WAL without fsync.
    Wal,
}

impl DurabilityArg {
    fn as_str(self) -> &'static str {
        match self {
            DurabilityArg::Fsync => "fsync",
            DurabilityArg::Wal => "wal",
        }
    }
}

/// `tollgate bench --help`'s description.
pub const LONG_ABOUT: &str = "\
Capacity planning: measure how much ingest this machine sustains. The tool sets up customers \
with threshold contracts through the public API, offers load, and reports accepted events/s, \
ack latency (p50/p90/p99/p99.9/max), threshold-crossing -> webhook latency, server CPU per \
event and RSS, errors by status.

Without --url it starts `tollgate serve` itself: a fresh data directory (removed afterwards) \
and a config that points the server's webhooks at the tool's sink. Progress goes to stderr, \
the report to stdout (text, or one JSON object with --json).

The capacity chart in one command: tollgate bench --sweep --baseline";

/// The flags of `tollgate bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Benchmark a running server at this base URL (e.g. http://127.0.0.1:8080) instead of
    /// starting one. Its CPU and RSS are not measured; for webhook latency, point its webhook
    /// destination at --webhook-listen with --webhook-secret.
    #[arg(long, value_name = "URL", requires = "token")]
    pub url: Option<String>,
    /// Bearer token for --url (a started server gets a random one).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Durability of the server the tool starts (storage.durability).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Fsync)]
    pub durability: DurabilityArg,
    /// Partitions of the server the tool starts (engine.partitions); 0 = one per core.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub partitions: u16,
    /// Directory under which the started server keeps its data (a fresh subdirectory, removed
    /// afterwards). Default: the system temp dir. fsync costs depend on this disk.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Set up customers with the started server in wal durability, then restart it (SIGTERM,
    /// final checkpoint) in --durability for the load. In fsync durability the engine creates
    /// customers one at a time with an fsync each, which bounds setup to a few hundred
    /// customers/s; after the restart customers are read from disk at their first event.
    #[arg(long)]
    pub setup_wal: bool,
    /// Customers to set up, each with an ingest alias, a prepaid commit and a contract carrying
    /// both threshold configurations.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub customers: usize,
    /// Setup requests in flight.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub setup_concurrency: usize,
    /// Open loop: offer this many events/s on a fixed schedule; latency counts from when each
    /// batch was due, so a slow server cannot hide its queueing (no coordinated omission).
    #[arg(long, value_name = "EVENTS_PER_S", conflicts_with_all = ["max", "sweep"])]
    pub rate: Option<f64>,
    /// Closed loop: each connection sends its next batch as soon as the last is answered
    /// (the default when neither --rate nor --sweep is given).
    #[arg(long, conflicts_with = "sweep")]
    pub max: bool,
    /// HTTP/1.1 connections (concurrent requests).
    #[arg(long, value_name = "C", default_value_t = 64)]
    pub connections: usize,
    /// Events per request (1-100).
    #[arg(long, value_name = "B", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub batch: u16,
    /// Seconds of load per run (each sweep step is one run).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub duration: f64,
    /// Customer skew: Zipf exponent over customers (0 = uniform; 1 = the hottest customer gets
    /// k times the events of the k-th).
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    pub zipf: f64,
    /// Share of events re-sent with an already acknowledged transaction_id (0-1).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub duplicates: f64,
    /// Share of customers that cross their prepaid balance threshold during the run (0-1); their
    /// commits are sized from the expected events per customer (for --max and --sweep, as if at
    /// 100000 events/s), and each recharge makes them cross again every 1000 events.
    #[arg(long, value_name = "F", default_value_t = 0.1)]
    pub crossing: f64,
    /// Run a series of open-loop rates: 25%, 50%, 75%, 100%, 125% and 150% of a first
    /// closed-loop measurement (or --sweep-rates), write the chart (--chart) and state this
    /// machine's capacity. The report's top-level figures are those of the capacity step.
    #[arg(long)]
    pub sweep: bool,
    /// The offered rates of --sweep, comma-separated events/s (skips the closed-loop step).
    #[arg(
        long,
        value_name = "R,R,...",
        value_delimiter = ',',
        requires = "sweep"
    )]
    pub sweep_rates: Vec<f64>,
    /// Where --sweep writes its SVG chart against offered rate: accepted rate, p50 and p99 ack
    /// latency, p99 crossing -> webhook latency, with the capacity marked.
    #[arg(long, value_name = "FILE", default_value = "bench-chart.svg")]
    pub chart: PathBuf,
    /// The p99 ack latency a sweep step must meet to count as sustained (with >= 99% accepted).
    /// The capacity is the highest offered rate at which that step and every lower one met it.
    #[arg(long, value_name = "MS", default_value_t = 20.0)]
    pub p99_target_ms: f64,
    /// The fewest samples (requests, or matched webhooks) a latency percentile is reported
    /// from; a p-quantile also needs 1/(1-p) of them (100 for p99, 1000 for p99.9), or it is
    /// only the maximum. With fewer, the percentile is null, and a sweep step without a p99 is
    /// not sustained.
    #[arg(long, value_name = "N", default_value_t = MIN_SAMPLES_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    pub min_samples: u64,
    /// Port of the started server (127.0.0.1); 0 = an ephemeral port. Pin it to watch the
    /// server with other tools (a profiler, curl /metrics) during a run.
    #[arg(long, value_name = "PORT", default_value_t = 0, conflicts_with = "url")]
    pub server_port: u16,
    /// Port of the --baseline null server (127.0.0.1); 0 = an ephemeral port.
    #[arg(long, value_name = "PORT", default_value_t = 0, requires = "baseline")]
    pub null_port: u16,
    /// Also run a null server in this process (actix-web that parses the same JSON batch with
    /// Tollgate's parser and answers 200) under the same load (closed loop in a sweep), and
    /// print Tollgate/null: the share of this machine's HTTP + JSON ceiling Tollgate reaches.
    #[arg(long)]
    pub baseline: bool,
    /// Print the final report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Address of the built-in webhook sink.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub webhook_listen: SocketAddr,
    /// Secret the sink verifies signatures with (a started server gets a random one; with --url
    /// the sink runs only when this is given).
    #[arg(long, value_name = "SECRET")]
    pub webhook_secret: Option<String>,
    /// Per-request timeout of the load, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// In the closed loop (--max), send the next batch at once after a 429 instead of waiting
    /// the `retry-after-ms` the server answered (as Metronome's SDK does, capped at 1 s): a
    /// retry storm, to show that shedding holds the lag bound whatever the client does.
    #[arg(long)]
    pub retry_storm: bool,
    /// Seed of the event generator (customers, duplicates); random by default.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

impl BenchArgs {
    fn check(&self) -> Result<(), String> {
        let share = |name: &str, v: f64, max_inclusive: bool| {
            let ok = v >= 0.0 && (v < 1.0 || (max_inclusive && v <= 1.0));
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "--{name} must be between 0 and 1{}",
                    if max_inclusive { "" } else { " (exclusive)" }
                ))
            }
        };
        share("duplicates", self.duplicates, false)?;
        share("crossing", self.crossing, true)?;
        if self.customers == 0 || self.customers > u32::MAX as usize {
            return Err("--customers must be at least 1".into());
        }
        if self.connections == 0 || self.setup_concurrency == 0 {
            return Err("--connections and --setup-concurrency must be at least 1".into());
        }
        if !(self.duration.is_finite() && self.duration > 0.0) {
            return Err("--duration must be a positive number of seconds".into());
        }
        if !(self.zipf.is_finite() && self.zipf >= 0.0) {
            return Err("--zipf must be >= 0".into());
        }
        let positive = |r: f64| r.is_finite() && r > 0.0;
        if self.rate.is_some_and(|r| !positive(r)) || self.sweep_rates.iter().any(|&r| !positive(r))
        {
            return Err("rates must be positive events/s".into());
        }
        if self.timeout_ms == 0 {
            return Err("--timeout-ms must be positive".into());
        }
        if self.server_port != 0 && self.server_port == self.null_port {
            return Err("--server-port and --null-port must differ".into());
        }
        Ok(())
    }

    fn single_mode(&self) -> Mode {
        self.rate.map_or(Mode::Max, Mode::Rate)
    }
}

/// Runs `tollgate bench`; prints the report, or the error on stderr.
pub fn run(args: BenchArgs) -> ExitCode {
    match execute(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tollgate bench: {message}");
            ExitCode::FAILURE
        }
    }
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn execute(args: &BenchArgs) -> Result<(), String> {
    args.check()?;
    if let Some(warning) = BuildInfo::current().warning() {
        eprintln!("{warning}");
    }
    let run_id = random_hex(4);
    let secret = args.webhook_secret.clone().or_else(|| {
        args.url
            .is_none()
            .then(|| format!("whsec_bench_{}", random_hex(16)))
    });
    let sink = secret.map(|s| Arc::new(WebhookSink::new(s)));
    let sink_url = match &sink {
        Some(sink) => Some(sink::start(sink.clone(), args.webhook_listen)?),
        None => None,
    };
    let token = args
        .token
        .clone()
        .unwrap_or_else(|| format!("bench-{}", random_hex(16)));
    // Started from the main thread, which lives as long as the bench: the child's death signal
    // is tied to the thread that spawned it.
    let local = match &args.url {
        Some(_) => {
            if let Some(url) = &sink_url {
                eprintln!(
                    "webhook sink at {url}: point the server's [[webhooks.destinations]] there (with the --webhook-secret) to measure crossing -> webhook latency"
                );
            }
            None
        }
        None => {
            let durability = if args.setup_wal {
                DurabilityArg::Wal
            } else {
                args.durability
            };
            eprintln!(
                "starting tollgate serve ({} durability)...",
                durability.as_str()
            );
            Some(LocalServer::start(&ServerOptions {
                durability: durability.as_str(),
                partitions: args.partitions,
                data_root: args.data_dir.as_deref(),
                token: &token,
                run_id: &run_id,
                webhook: match (&sink_url, &sink) {
                    (Some(url), Some(sink)) => Some((url.as_str(), sink.secret())),
                    _ => None,
                },
                port: args.server_port,
            })?)
        }
    };
    let local = local.map(Mutex::new);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let null_base = if args.baseline {
        // As many HTTP workers as the server under test has by default (one per core).
        Some(null_server::start(cores, args.null_port)?)
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    let context = Context {
        args,
        run_id,
        token,
        local: local.as_ref(),
        sink,
        null_base,
    };
    let report = runtime.block_on(async {
        tokio::select! {
            report = bench(&context) => report,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
        }
    });
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            let tail = local
                .as_ref()
                .map(|server| lock(server).log_tail())
                .unwrap_or_default();
            if tail.trim().is_empty() {
                return Err(e);
            }
            return Err(format!("{e}\nthe end of the server's log:\n{tail}"));
        }
    };
    drop(local);
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    if let Some(path) = &args.report {
        std::fs::write(path, format!("{json}\n"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

/// What every run of one bench shares.
struct Context<'a> {
    args: &'a BenchArgs,
    run_id: String,
    token: String,
    local: Option<&'a Mutex<LocalServer>>,
    sink: Option<Arc<WebhookSink>>,
    null_base: Option<String>,
}

fn lock(server: &Mutex<LocalServer>) -> std::sync::MutexGuard<'_, LocalServer> {
    server.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Context<'_> {
    /// The base URL of the server under test (a restart changes it).
    fn base(&self) -> String {
        match (self.local, &self.args.url) {
            (Some(server), _) => lock(server).base.clone(),
            (None, Some(url)) => url.clone(),
            (None, None) => unreachable!("a server is started when no --url is given"),
        }
    }

    fn sample_server(&self) -> Option<machine::ProcessSample> {
        self.local.and_then(|server| lock(server).sample())
    }
}

/// Which server a run loads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Tollgate,
    Null,
}

struct Bench<'a> {
    context: &'a Context<'a>,
    workload: Arc<Workload>,
    tracking: Option<Tracking>,
    runs: u32,
}

async fn bench(context: &Context<'_>) -> Result<Report, String> {
    let args = context.args;
    let api = Api::new(&context.base(), &context.token, args.setup_concurrency)?;
    api.wait_ready().await?;
    let aliases: Vec<String> = (0..args.customers)
        .map(|i| format!("bench-{}-{i}", context.run_id))
        .collect();
    let sampler = CustomerSampler::new(args.customers, args.zipf);
    let rate_estimate = match (args.rate, args.sweep_rates.first()) {
        (Some(rate), _) => rate,
        (None, Some(_)) => args.sweep_rates.iter().copied().fold(0.0, f64::max),
        (None, None) => MAX_RATE_ESTIMATE,
    };
    let expected_events = rate_estimate * args.duration * (1.0 - args.duplicates);
    let plan = crossing_plan(&sampler, args.crossing, expected_events);
    let crossing_customers = plan.iter().filter(|c| c.is_some()).count();
    eprintln!(
        "setting up {} customers ({crossing_customers} crossing) at {}...",
        args.customers,
        context.base()
    );
    let catalog = setup::create_catalog(&api, &context.run_id).await?;
    let aliases = Arc::new(aliases);
    let (ids, setup) = setup::create_customers(
        &api,
        catalog,
        &context.run_id,
        aliases.clone(),
        Arc::new(plan.clone()),
        args.setup_concurrency,
    )
    .await?;
    eprintln!(
        "setup: {} customers with contracts in {:.1} s ({:.0} requests/s; mean answer {:.2} ms per customer, {:.2} ms per contract)",
        setup.customers,
        setup.seconds,
        setup.requests_per_s,
        setup.customer_request_ms_avg,
        setup.contract_request_ms_avg
    );
    if let (true, Some(server)) = (args.setup_wal, context.local) {
        eprintln!(
            "restarting the server in {} durability...",
            args.durability.as_str()
        );
        let started = Instant::now();
        lock(server).restart(args.durability.as_str())?;
        Api::new(&context.base(), &context.token, 1)?
            .wait_ready()
            .await?;
        eprintln!(
            "restarted in {:.1} s at {}",
            started.elapsed().as_secs_f64(),
            context.base()
        );
    }
    let tracking = context.sink.as_ref().map(|sink| {
        sink.set_customers(&ids);
        Tracking {
            tracker: Arc::new(SpendTracker::new(plan)),
            sink: sink.clone(),
        }
    });
    let mut bench = Bench {
        context,
        workload: Arc::new(Workload {
            aliases: Arc::unwrap_or_clone(aliases),
            sampler,
        }),
        tracking,
        runs: 0,
    };
    let baseline = match &context.null_base {
        Some(_) => {
            let mode = if args.sweep {
                Mode::Max
            } else {
                args.single_mode()
            };
            Some(bench.measure("baseline", mode, Target::Null).await?)
        }
        None => None,
    };
    let (main, sweep) = if args.sweep {
        let (main, sweep) = bench.sweep().await?;
        (main, Some(sweep))
    } else {
        let mode = args.single_mode();
        (
            bench.measure(mode.name(), mode, Target::Tollgate).await?,
            None,
        )
    };
    let parameters = Parameters {
        target: if args.url.is_some() {
            context.base()
        } else {
            format!("a started server ({})", context.base())
        },
        durability: args
            .url
            .is_none()
            .then(|| args.durability.as_str().to_owned()),
        partitions: args.url.is_none().then_some(args.partitions),
        customers: args.customers,
        connections: args.connections,
        batch: usize::from(args.batch),
        duration_s: args.duration,
        zipf: args.zipf,
        duplicates: args.duplicates,
        crossing: args.crossing,
        crossing_customers,
        min_samples: args.min_samples,
        null_server: context.null_base.clone(),
        honours_retry_after: !args.retry_storm,
    };
    let data_dir = context.local.map(|server| lock(server).data_dir());
    let machine = Machine::describe(data_dir.as_deref());
    Ok(Report::new(
        parameters, setup, &main, baseline, sweep, machine,
    ))
}

impl Bench<'_> {
    /// One run: load, then (against Tollgate) wait for webhooks and for the server to settle,
    /// and read its CPU and memory.
    async fn measure(
        &mut self,
        label: &str,
        mode: Mode,
        target: Target,
    ) -> Result<RunReport, String> {
        let args = self.context.args;
        self.runs += 1;
        let (base, token, tracking) = match target {
            Target::Tollgate => (
                self.context.base(),
                Some(self.context.token.clone()),
                self.tracking.clone(),
            ),
            Target::Null => (
                self.context.null_base.clone().unwrap_or_default(),
                None,
                None,
            ),
        };
        let sample_server = || match target {
            Target::Tollgate => self.context.sample_server(),
            Target::Null => None,
        };
        let spec = LoadSpec {
            label: label.to_owned(),
            base,
            token,
            mode,
            connections: args.connections,
            batch: usize::from(args.batch),
            duration: Duration::from_secs_f64(args.duration),
            duplicates: args.duplicates,
            timeout: Duration::from_millis(args.timeout_ms),
            honour_retry_after: !args.retry_storm,
            transaction_prefix: format!("{}-{}-", self.context.run_id, self.runs),
            seed: args.seed.unwrap_or_else(rand::random) ^ u64::from(self.runs),
        };
        let api = match target {
            Target::Tollgate => Some(Api::new(&self.context.base(), &self.context.token, 1)?),
            Target::Null => None,
        };
        let accepted_before = match &api {
            Some(api) => api.metric(ACCEPTED_METRIC).await,
            None => None,
        };
        let server_before = sample_server();
        let loader_before = sample_process("self");
        if let Some(tracking) = &tracking {
            tracking.sink.begin_run();
        }
        let outcome = load::run(spec, self.workload.clone(), tracking.clone()).await?;
        let loader_after = sample_process("self");
        if target == Target::Tollgate {
            settle(self.context, tracking.as_ref().map(|t| t.sink.as_ref())).await;
        }
        let webhooks = tracking.as_ref().map(|t| t.sink.end_run());
        let server_after = sample_server();
        let accepted_after = match &api {
            Some(api) => api.metric(ACCEPTED_METRIC).await,
            None => None,
        };
        let acknowledged = accepted_before.zip(accepted_after).map(|(before, after)| {
            let server_accepted_events = after.saturating_sub(before);
            AcknowledgedCheck {
                unique_events: outcome.acknowledged_unique_events,
                server_accepted_events,
                lost_events: outcome
                    .acknowledged_unique_events
                    .saturating_sub(server_accepted_events),
            }
        });
        let per_event = |before: Option<machine::ProcessSample>,
                         after: Option<machine::ProcessSample>| {
            match (before, after) {
                (Some(b), Some(a)) if outcome.accepted_events > 0 => {
                    Some(a.cpu_us.saturating_sub(b.cpu_us) as f64 / outcome.accepted_events as f64)
                }
                _ => None,
            }
        };
        let (webhook_latency_ms, webhook_counts) = match &webhooks {
            Some(w) => (
                Percentiles::of(&w.latency, args.min_samples),
                w.counts.clone(),
            ),
            None => (Percentiles::default(), Default::default()),
        };
        let report = RunReport {
            mode: mode.name(),
            offered_events_per_s: outcome.offered_events_per_s,
            accepted_events_per_s: outcome.accepted_events_per_s,
            sent_events: outcome.sent_events,
            accepted_events: outcome.accepted_events,
            unsent_requests: outcome.unsent_requests,
            elapsed_s: outcome.elapsed.as_secs_f64(),
            ack_latency_ms: Percentiles::of(&outcome.latency, args.min_samples),
            webhook_latency_ms,
            webhooks: webhook_counts,
            server_cpu_us_per_event: per_event(server_before, server_after),
            server_rss_bytes: server_after.map(|s| s.rss_bytes),
            server_rss_peak_bytes: server_after.map(|s| s.rss_peak_bytes),
            loader_cpu_us_per_event: per_event(loader_before, loader_after),
            errors_by_status: outcome.errors_by_status,
            acknowledged,
            verdict: None,
        };
        if let Some(check) = report.acknowledged.as_ref().filter(|c| c.lost_events > 0) {
            eprintln!(
                "{label:>9}: {} acknowledged events are missing from the server's count",
                check.lost_events
            );
        }
        eprintln!(
            "{label:>9}: offered {:.0} events/s, accepted {:.0} events/s, ack p99 {} ms{}",
            report.offered_events_per_s,
            report.accepted_events_per_s,
            report.ack_latency_ms.p99_text(),
            if report.errors_by_status.is_empty() {
                String::new()
            } else {
                format!(", errors {:?}", report.errors_by_status)
            }
        );
        Ok(report)
    }

    /// The sweep: a closed-loop maximum (unless rates are given), then each open-loop rate.
    async fn sweep(&mut self) -> Result<(RunReport, SweepReport), String> {
        let args = self.context.args;
        let mut steps = Vec::new();
        let rates = if args.sweep_rates.is_empty() {
            let max = self.measure("max", Mode::Max, Target::Tollgate).await?;
            if max.accepted_events_per_s <= 0.0 {
                return Err("the closed-loop run accepted nothing; no rates to sweep".into());
            }
            let rates = SWEEP_SHARES.map(|s| (s * max.accepted_events_per_s).round());
            steps.push(max);
            rates.to_vec()
        } else {
            args.sweep_rates.clone()
        };
        for rate in rates {
            let label = format!("{rate:.0}/s");
            steps.push(
                self.measure(&label, Mode::Rate(rate), Target::Tollgate)
                    .await?,
            );
        }
        for step in steps.iter_mut().filter(|s| s.mode == "rate") {
            step.verdict = Some(step.verdict(args.p99_target_ms));
        }
        let capacity = capacity_step(&steps, args.p99_target_ms);
        let main_index = capacity.step.unwrap_or_else(|| {
            (0..steps.len())
                .max_by(|&a, &b| {
                    steps[a]
                        .accepted_events_per_s
                        .total_cmp(&steps[b].accepted_events_per_s)
                })
                .unwrap_or(0)
        });
        let build = BuildInfo::current();
        let title = format!(
            "tollgate bench: {} customers, batches of {}, {} connections{} ({} {})",
            args.customers,
            args.batch,
            args.connections,
            if args.url.is_none() {
                format!(", {} durability", args.durability.as_str())
            } else {
                String::new()
            },
            build.profile,
            build.git_revision
        );
        let mark = capacity.step.map(|i| chart::CapacityMark {
            offered_events_per_s: steps[i].offered_events_per_s,
            lower_bound: capacity.is_lower_bound(),
        });
        chart::write(&args.chart, &steps, args.p99_target_ms, mark, &title)?;
        let statement = capacity_statement(&steps, capacity, args.customers, args.p99_target_ms);
        eprintln!("{statement}");
        let sweep = SweepReport {
            chart: args.chart.display().to_string(),
            p99_target_ms: args.p99_target_ms,
            capacity_events_per_s: capacity.step.map(|i| steps[i].offered_events_per_s),
            capacity_is_lower_bound: capacity.is_lower_bound(),
            capacity_statement: statement,
            steps,
        };
        Ok((sweep.steps[main_index].clone(), sweep))
    }
}

/// The server counter the acknowledged check compares with.
const ACCEPTED_METRIC: &str = "tollgate_ingest_events_accepted_total";

/// Waits (bounded) until the webhooks of acknowledged crossings have arrived and the server's
/// CPU use has fallen to idle, so a run's figures include the work its events caused.
async fn settle(context: &Context<'_>, sink: Option<&WebhookSink>) {
    let start = Instant::now();
    let mut previous = context.sample_server();
    loop {
        tokio::time::sleep(SETTLE_TICK).await;
        let elapsed = start.elapsed();
        let webhooks_done =
            sink.is_none_or(|s| s.pending_crossings() == 0) || elapsed >= WEBHOOK_GRACE;
        let sample = context.sample_server();
        let idle = match (previous, sample) {
            (Some(a), Some(b)) => {
                (b.cpu_us.saturating_sub(a.cpu_us) as f64)
                    < IDLE_CPU_SHARE * SETTLE_TICK.as_micros() as f64
            }
            _ => true,
        };
        previous = sample;
        if (webhooks_done && idle) || elapsed >= SETTLE_MAX {
            return;
        }
    }
}

//! What a bench run found, as one JSON object (`--json`, `--report`) and as text: percentiles
//! from the HdrHistograms (withheld from too few samples), the build that ran, each sweep
//! step's verdict against the target, the Tollgate/null ratio. Pure formatting; the runs
//! themselves are in `load`, the capacity a sweep states in `capacity`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::machine::Machine;

/// Histograms record microseconds from 1 µs to 10 minutes at 3 significant digits.
pub const HISTOGRAM_MAX_US: u64 = 600_000_000;
const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 3;
/// A sweep step sustains its offered rate when it accepts at least this share of it.
pub const SUSTAINED_ACCEPTED_SHARE_MIN: f64 = 0.99;

pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that HdrHistogram accepts (low >= 1, high >= 2 * low, 3 digits).
    let Ok(h) = Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, HISTOGRAM_SIGNIFICANT_DIGITS)
    else {
        unreachable!("constant histogram bounds are valid")
    };
    h
}

/// Records a duration in microseconds, clamped into the histogram's range.
pub fn record_us(histogram: &mut Histogram<u64>, us: u64) {
    let _ = histogram.record(us.clamp(1, HISTOGRAM_MAX_US));
}

/// The default of `--min-samples`: a p99 from fewer than 100 samples is not a p99 (not even one
/// sample is expected above it), and the capacity statement rests on the p99.
pub const MIN_SAMPLES_DEFAULT: u64 = 100;

/// The samples a percentile is reported from: at least `min_samples`, and at least 1/(1 - q)
/// so that one sample is expected above the q-quantile (100 for p99, 1000 for p99.9); with
/// fewer, the tail percentile is just the maximum.
pub fn samples_needed(quantile: f64, min_samples: u64) -> u64 {
    min_samples.max((1.0 / (1.0 - quantile)).round() as u64)
}

/// Percentiles in milliseconds (with microsecond precision). A percentile is `null` when
/// nothing was recorded or when there were fewer samples than [`samples_needed`]; `max` is an
/// observation, not an estimate, and is reported from one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    /// The `--min-samples` the percentiles were computed with.
    pub min_samples: u64,
}

/// The percentiles reported, with their quantile and text name.
const QUANTILES: [(f64, &str); 4] = [
    (0.50, "p50"),
    (0.90, "p90"),
    (0.99, "p99"),
    (0.999, "p99.9"),
];

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>, min_samples: u64) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles {
                min_samples,
                ..Percentiles::default()
            };
        }
        let count = histogram.len();
        let ms = |us: u64| us as f64 / 1000.0;
        let at = |quantile: f64| {
            (count >= samples_needed(quantile, min_samples))
                .then(|| ms(histogram.value_at_quantile(quantile)))
        };
        Percentiles {
            count,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: Some(ms(histogram.max())),
            min_samples,
        }
    }

    fn values(&self) -> [Option<f64>; 4] {
        [self.p50, self.p90, self.p99, self.p999]
    }

    /// `p50 0.412  p90 0.800  p99 1.100  max 2.000  (420 samples; p99.9: too few samples (420),
    /// needs 1000)`.
    fn text(&self) -> String {
        if self.count == 0 {
            return "no samples".to_owned();
        }
        let mut parts = Vec::new();
        let mut withheld = Vec::new();
        for ((quantile, name), value) in QUANTILES.iter().zip(self.values()) {
            match value {
                Some(v) => parts.push(format!("{name} {v:.3}")),
                None => withheld.push((*name, samples_needed(*quantile, self.min_samples))),
            }
        }
        if let Some(max) = self.max {
            parts.push(format!("max {max:.3}"));
        }
        let mut text = format!("{}  ({} samples", parts.join("  "), self.count);
        if let (Some(first), Some(last)) = (withheld.first(), withheld.last()) {
            let names: Vec<&str> = withheld.iter().map(|(name, _)| *name).collect();
            let needs = if first.1 == last.1 {
                format!("{}", first.1)
            } else {
                format!("{}-{}", first.1, last.1)
            };
            let _ = write!(
                text,
                "; {}: too few samples ({}), needs {needs}",
                names.join(", "),
                self.count
            );
        }
        text.push(')');
        text
    }

    /// The p99 alone: the sweep table's column, the progress line.
    pub fn p99_text(&self) -> String {
        match self.p99 {
            Some(v) => format!("{v:.3}"),
            None if self.count == 0 => "-".to_owned(),
            None => format!("too few samples ({})", self.count),
        }
    }
}

/// Which binary produced a report: the loader's build, which is also the server's when the tool
/// started it (`tollgate serve` from the same executable). A debug build's figures say nothing
/// about capacity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildInfo {
    pub version: &'static str,
    /// `debug` or `release` (from `cfg!(debug_assertions)`).
    pub profile: &'static str,
    /// `git rev-parse --short=12 HEAD` at build time, `-dirty` when tracked files differed from
    /// it, `unknown` when built without git (see build.rs).
    pub git_revision: &'static str,
}

impl BuildInfo {
    pub fn current() -> BuildInfo {
        BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            git_revision: option_env!("TOLLGATE_GIT_REVISION").unwrap_or("unknown"),
        }
    }

    /// The warning a debug build prints at start and carries in its text report.
    pub fn warning(&self) -> Option<String> {
        (self.profile == "debug").then(|| {
            "warning: this is a debug build of tollgate: its figures are not this machine's capacity (build with cargo build --release)".to_owned()
        })
    }
}

/// Threshold-crossing webhooks as the sink saw them during one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WebhookCounts {
    /// Signed webhooks received (every type, retries included).
    pub received: u64,
    /// `payment_gate.threshold_reached` matched to the acknowledgement of its crossing event.
    pub matched: u64,
    /// Crossings the load generator saw acknowledged with no webhook by the end of the grace.
    pub missing: u64,
    /// Requests whose signature or `X-Metronome-Date` did not verify (answered 401).
    pub invalid_signatures: u64,
    /// Re-deliveries of an id already received.
    pub redeliveries: u64,
}

/// One load run (a sweep has several).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `"max"` (closed loop) or `"rate"` (open loop).
    pub mode: &'static str,
    pub offered_events_per_s: f64,
    pub accepted_events_per_s: f64,
    pub sent_events: u64,
    pub accepted_events: u64,
    /// Open loop: requests the schedule held that were not sent before the duration ended
    /// (the loader fell behind).
    pub unsent_requests: u64,
    pub elapsed_s: f64,
    pub ack_latency_ms: Percentiles,
    pub webhook_latency_ms: Percentiles,
    pub webhooks: WebhookCounts,
    pub server_cpu_us_per_event: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    pub server_rss_peak_bytes: Option<u64>,
    /// The bench process's own CPU per event (the loader; the null server too in a baseline run).
    pub loader_cpu_us_per_event: Option<f64>,
    /// Non-200 answers by status code, plus `timeout` and `connection` for requests that got none.
    pub errors_by_status: BTreeMap<String, u64>,
    /// Whether everything acknowledged reached the engine (a Tollgate run with `/metrics`).
    pub acknowledged: Option<AcknowledgedCheck>,
    /// A sweep's open-loop step: whether it met the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// Acknowledged events against what the server counted as accepted during the run. The server
/// may count more (a request that timed out here may still have been accepted there); it must
/// never count fewer.
#[derive(Debug, Clone, Serialize)]
pub struct AcknowledgedCheck {
    /// Events answered 200 with a transaction id sent for the first time.
    pub unique_events: u64,
    /// The server's `tollgate_ingest_events_accepted_total` increase over the run.
    pub server_accepted_events: u64,
    /// Acknowledged unique events the server did not count: must be 0.
    pub lost_events: u64,
}

/// Whether a sweep step met the target, and if not, the first reason it did not.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verdict {
    /// Accepted at least 99% of the offered rate with p99 at or under the target.
    Sustained,
    /// Accepted under [`SUSTAINED_ACCEPTED_SHARE_MIN`] of the offered rate.
    AcceptedTooLittle { accepted_share: f64 },
    /// Too few ack latency samples for a p99: the step cannot be judged sustained.
    TooFewSamples { samples: u64, needed: u64 },
    /// The p99 ack latency was over the target.
    P99OverTarget { p99_ms: f64 },
}

impl Verdict {
    pub fn is_sustained(&self) -> bool {
        *self == Verdict::Sustained
    }

    /// Why the step failed, after "the step ...".
    pub fn reason(&self, p99_target_ms: f64) -> String {
        match self {
            Verdict::Sustained => format!("met p99 <= {p99_target_ms} ms"),
            Verdict::AcceptedTooLittle { accepted_share } => format!(
                "accepted {:.1}% of it (under {:.0}%)",
                100.0 * accepted_share,
                100.0 * SUSTAINED_ACCEPTED_SHARE_MIN
            ),
            Verdict::TooFewSamples { samples, needed } => format!(
                "had too few samples for a p99 ({samples}, needs {needed}: a longer --duration or a smaller --batch)"
            ),
            Verdict::P99OverTarget { p99_ms } => {
                format!("had p99 {p99_ms:.3} ms > {p99_target_ms} ms")
            }
        }
    }
}

impl RunReport {
    /// Whether this run sustained its offered rate within the latency target.
    pub fn verdict(&self, p99_target_ms: f64) -> Verdict {
        let accepted_share = if self.offered_events_per_s > 0.0 {
            self.accepted_events_per_s / self.offered_events_per_s
        } else {
            0.0
        };
        if accepted_share < SUSTAINED_ACCEPTED_SHARE_MIN {
            return Verdict::AcceptedTooLittle { accepted_share };
        }
        match self.ack_latency_ms.p99 {
            None => Verdict::TooFewSamples {
                samples: self.ack_latency_ms.count,
                needed: samples_needed(0.99, self.ack_latency_ms.min_samples),
            },
            Some(p99_ms) if p99_ms > p99_target_ms => Verdict::P99OverTarget { p99_ms },
            Some(_) => Verdict::Sustained,
        }
    }
}

/// How the setup through the public API went.
#[derive(Debug, Clone, Serialize)]
pub struct SetupReport {
    pub customers: usize,
    /// Requests for the customers and contracts (catalog excluded).
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub concurrency: usize,
    pub retries: u64,
    /// Mean answer time of `POST /v1/customers` and of `POST /v1/contracts/create`.
    pub customer_request_ms_avg: f64,
    pub contract_request_ms_avg: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub steps: Vec<RunReport>,
    pub chart: String,
    pub p99_target_ms: f64,
    pub capacity_events_per_s: Option<f64>,
    /// Every step met the target: the capacity is at least `capacity_events_per_s`.
    pub capacity_is_lower_bound: bool,
    pub capacity_statement: String,
}

/// What was run: the flags that shape the figures.
#[derive(Debug, Clone, Serialize)]
pub struct Parameters {
    pub target: String,
    pub durability: Option<String>,
    pub partitions: Option<u16>,
    pub customers: usize,
    pub connections: usize,
    pub batch: usize,
    pub duration_s: f64,
    pub zipf: f64,
    pub duplicates: f64,
    pub crossing: f64,
    pub crossing_customers: usize,
    /// `--min-samples`: the fewest samples a latency percentile is reported from.
    pub min_samples: u64,
    /// The null server's base URL (`--baseline`).
    pub null_server: Option<String>,
    /// Whether the closed loop waited the `retry-after-ms` of a 429 (not with `--retry-storm`).
    pub honours_retry_after: bool,
}

/// The final report. The top-level figures are those of the main run: the single run, or in a
/// sweep the step at the stated capacity (else the step that accepted most).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub build: BuildInfo,
    pub parameters: Parameters,
    pub setup: SetupReport,
    pub mode: &'static str,
    pub offered_events_per_s: f64,
    pub accepted_events_per_s: f64,
    pub ack_latency_ms: Percentiles,
    pub webhook_latency_ms: Percentiles,
    pub webhooks: WebhookCounts,
    pub server_cpu_us_per_event: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    pub server_rss_peak_bytes: Option<u64>,
    pub loader_cpu_us_per_event: Option<f64>,
    pub errors_by_status: BTreeMap<String, u64>,
    /// Acknowledged events against the server's count (see [`AcknowledgedCheck`]).
    pub acknowledged: Option<AcknowledgedCheck>,
    /// Present with `--baseline`: the null server's accepted rate under the same load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_events_per_s: Option<f64>,
    /// Tollgate accepted / null server accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<RunReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepReport>,
    pub machine: Machine,
}

impl Report {
    pub fn new(
        parameters: Parameters,
        setup: SetupReport,
        main: &RunReport,
        baseline: Option<RunReport>,
        sweep: Option<SweepReport>,
        machine: Machine,
    ) -> Report {
        let baseline_events_per_s = baseline.as_ref().map(|b| b.accepted_events_per_s);
        let baseline_ratio = baseline_events_per_s
            .filter(|&b| b > 0.0)
            .map(|b| main.accepted_events_per_s / b);
        let build = BuildInfo::current();
        Report {
            tool: "tollgate bench",
            version: build.version,
            build,
            parameters,
            setup,
            mode: main.mode,
            offered_events_per_s: main.offered_events_per_s,
            accepted_events_per_s: main.accepted_events_per_s,
            ack_latency_ms: main.ack_latency_ms,
            webhook_latency_ms: main.webhook_latency_ms,
            webhooks: main.webhooks.clone(),
            server_cpu_us_per_event: main.server_cpu_us_per_event,
            server_rss_bytes: main.server_rss_bytes,
            server_rss_peak_bytes: main.server_rss_peak_bytes,
            loader_cpu_us_per_event: main.loader_cpu_us_per_event,
            errors_by_status: main.errors_by_status.clone(),
            acknowledged: main.acknowledged.clone(),
            baseline_events_per_s,
            baseline_ratio,
            baseline,
            sweep,
            machine,
        }
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let p = &self.parameters;
        let mut out = String::new();
        if let Some(warning) = self.build.warning() {
            let _ = writeln!(out, "{warning}");
        }
        let b = &self.build;
        let _ = writeln!(
            out,
            "build:           tollgate {}, {} profile, git {}",
            b.version, b.profile, b.git_revision
        );
        let _ = writeln!(
            out,
            "tollgate bench against {}: {} customers ({} crossing), {} connections, batches of {}, {} s, zipf {}, duplicates {}",
            p.target,
            p.customers,
            p.crossing_customers,
            p.connections,
            p.batch,
            p.duration_s,
            p.zipf,
            p.duplicates
        );
        let s = &self.setup;
        let _ = writeln!(
            out,
            "setup:           {} customers with contracts in {:.1} s ({:.0} requests/s, {} in flight, {} retries; mean answer {:.2} ms per customer, {:.2} ms per contract)",
            s.customers,
            s.seconds,
            s.requests_per_s,
            s.concurrency,
            s.retries,
            s.customer_request_ms_avg,
            s.contract_request_ms_avg
        );
        if let Some(sweep) = &self.sweep {
            let _ = writeln!(
                out,
                "sweep:           offered -> accepted events/s, ack p99 ms, webhook p99 ms, target"
            );
            for step in &sweep.steps {
                let verdict = match &step.verdict {
                    Some(v) if v.is_sustained() => "met".to_owned(),
                    Some(v) => format!("missed: {}", v.reason(sweep.p99_target_ms)),
                    None => "(closed loop)".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "  {:>5} {:>10.0} -> {:>10.0}   p99 {}   webhook p99 {}   {verdict}",
                    step.mode,
                    step.offered_events_per_s,
                    step.accepted_events_per_s,
                    step.ack_latency_ms.p99_text(),
                    step.webhook_latency_ms.p99_text(),
                );
            }
            let _ = writeln!(out, "chart:           {}", sweep.chart);
            let _ = writeln!(out, "capacity:        {}", sweep.capacity_statement);
            let _ = writeln!(out, "main run ({}):", self.mode);
        }
        let accepted_share = if self.offered_events_per_s > 0.0 {
            100.0 * self.accepted_events_per_s / self.offered_events_per_s
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "offered:         {:.0} events/s ({})",
            self.offered_events_per_s,
            if self.mode == "max" {
                "closed loop"
            } else {
                "open loop"
            }
        );
        let _ = writeln!(
            out,
            "accepted:        {:.0} events/s ({accepted_share:.1}%)",
            self.accepted_events_per_s
        );
        let _ = writeln!(out, "ack latency ms:  {}", self.ack_latency_ms.text());
        let _ = writeln!(out, "webhook ms:      {}", self.webhook_latency_ms.text());
        let w = &self.webhooks;
        let _ = writeln!(
            out,
            "webhooks:        {} received, {} crossings matched, {} missing, {} bad signatures, {} redeliveries",
            w.received, w.matched, w.missing, w.invalid_signatures, w.redeliveries
        );
        match (self.server_cpu_us_per_event, self.server_rss_bytes) {
            (Some(cpu), Some(rss)) => {
                let _ = writeln!(
                    out,
                    "server:          {cpu:.2} CPU µs/event, RSS {:.0} MiB (peak {:.0} MiB)",
                    rss as f64 / 1048576.0,
                    self.server_rss_peak_bytes.unwrap_or(rss) as f64 / 1048576.0
                );
            }
            (None, Some(rss)) => {
                let _ = writeln!(
                    out,
                    "server:          RSS {:.0} MiB (no events accepted: no CPU per event)",
                    rss as f64 / 1048576.0
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "server:          not started here (no CPU or RSS figures)"
                );
            }
        }
        if let Some(cpu) = self.loader_cpu_us_per_event {
            let _ = writeln!(out, "loader:          {cpu:.2} CPU µs/event (this process)");
        }
        if self.errors_by_status.is_empty() {
            let _ = writeln!(out, "errors:          none");
        } else {
            let list: Vec<String> = self
                .errors_by_status
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(out, "errors:          {}", list.join(", "));
        }
        if let Some(check) = &self.acknowledged {
            let _ = writeln!(
                out,
                "acknowledged:    {} unique events, {} counted by the server, {} missing",
                check.unique_events, check.server_accepted_events, check.lost_events
            );
        }
        if let (Some(b), Some(ratio)) = (self.baseline_events_per_s, self.baseline_ratio) {
            let _ = writeln!(
                out,
                "null server:     {b:.0} events/s under the same load; Tollgate/null = {ratio:.2}"
            );
        }
        let m = &self.machine;
        let _ = writeln!(out, "machine:         {}", m.summary());
        out
    }
}

/// A run with only rates and a p99 set (tests of sweeps and charts).
#[cfg(test)]
pub(crate) fn test_step(
    mode: &'static str,
    offered: f64,
    accepted: f64,
    p99: Option<f64>,
) -> RunReport {
    RunReport {
        mode,
        offered_events_per_s: offered,
        accepted_events_per_s: accepted,
        sent_events: 0,
        accepted_events: 0,
        unsent_requests: 0,
        elapsed_s: 1.0,
        ack_latency_ms: Percentiles {
            count: if p99.is_some() { 1000 } else { 0 },
            p50: p99.map(|v| v / 2.0),
            p99,
            min_samples: MIN_SAMPLES_DEFAULT,
            ..Percentiles::default()
        },
        webhook_latency_ms: Percentiles::default(),
        webhooks: WebhookCounts::default(),
        server_cpu_us_per_event: None,
        server_rss_bytes: None,
        server_rss_peak_bytes: None,
        loader_cpu_us_per_event: None,
        errors_by_status: BTreeMap::new(),
        acknowledged: None,
        verdict: None,
    }
}

/// A histogram of `samples` latencies: 10 µs, 20 µs, ...
#[cfg(test)]
pub(crate) fn test_histogram(samples: u64) -> Histogram<u64> {
    let mut h = new_histogram();
    for us in 1..=samples {
        record_us(&mut h, us * 10);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(mode: &'static str, offered: f64, accepted: f64, p99: Option<f64>) -> RunReport {
        test_step(mode, offered, accepted, p99)
    }

    #[test]
    fn percentiles_come_out_in_milliseconds_with_microsecond_precision() {
        let mut h = new_histogram();
        for us in 1..=1000 {
            record_us(&mut h, us);
        }
        let p = Percentiles::of(&h, MIN_SAMPLES_DEFAULT);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50, Some(0.5));
        assert_eq!(p.p90, Some(0.9));
        assert_eq!(p.p99, Some(0.99));
        assert_eq!(p.p999, Some(0.999));
        assert_eq!(p.max, Some(1.0));
        // Large values keep 3 significant digits.
        record_us(&mut h, 12_345_678);
        let max = Percentiles::of(&h, MIN_SAMPLES_DEFAULT).max.unwrap();
        assert!((max - 12_345.678).abs() / 12_345.678 < 0.001, "{max}");
    }

    #[test]
    fn an_empty_histogram_gives_nulls_and_out_of_range_values_are_clamped() {
        let h = new_histogram();
        let p = Percentiles::of(&h, MIN_SAMPLES_DEFAULT);
        assert_eq!(p.count, 0);
        assert_eq!((p.p50, p.p99, p.max), (None, None, None));
        let json = serde_json::to_value(p).unwrap();
        assert!(json["p99"].is_null() && json["p999"].is_null());
        let mut h = new_histogram();
        record_us(&mut h, 0);
        record_us(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn a_percentile_needs_min_samples_and_one_expected_sample_above_it() {
        assert_eq!(samples_needed(0.50, 100), 100);
        assert_eq!(samples_needed(0.99, 100), 100);
        assert_eq!(samples_needed(0.999, 100), 1000);
        assert_eq!(samples_needed(0.50, 1), 2);
        assert_eq!(samples_needed(0.99, 1), 100);

        // 99 samples: no percentile at all, but the maximum; JSON nulls, and the text says why.
        let p = Percentiles::of(&test_histogram(99), MIN_SAMPLES_DEFAULT);
        assert_eq!((p.p50, p.p90, p.p99, p.p999), (None, None, None, None));
        assert_eq!(p.max, Some(0.99));
        let json = serde_json::to_value(p).unwrap();
        assert!(json["p50"].is_null() && json["p99"].is_null());
        assert_eq!(json["count"], 99);
        assert_eq!(json["min_samples"], 100);
        let text = p.text();
        assert!(
            text.contains("p50, p90, p99, p99.9: too few samples (99), needs 100-1000"),
            "{text}"
        );
        assert_eq!(p.p99_text(), "too few samples (99)");

        // 100 samples: p50-p99, not p99.9 (which would be the maximum).
        let p = Percentiles::of(&test_histogram(100), MIN_SAMPLES_DEFAULT);
        assert!(p.p50.is_some() && p.p90.is_some() && p.p99.is_some());
        assert_eq!(p.p999, None);
        assert!(
            p.text()
                .contains("p99.9: too few samples (100), needs 1000"),
            "{}",
            p.text()
        );

        // A lower --min-samples reports p50 from 20 samples, but never a p99.
        let p = Percentiles::of(&test_histogram(20), 10);
        assert!(p.p50.is_some() && p.p90.is_some());
        assert_eq!(p.p99, None);
    }

    #[test]
    fn the_build_is_recorded_and_a_debug_build_warns() {
        let build = BuildInfo::current();
        assert_eq!(build.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(build.profile == "debug", cfg!(debug_assertions));
        // Built from a git checkout with git at hand, build.rs embedded the revision.
        let in_checkout = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".git")
            .exists();
        let git_runs = std::process::Command::new("git")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if in_checkout && git_runs {
            let hash = build.git_revision.trim_end_matches("-dirty");
            assert_eq!(hash.len(), 12, "{}", build.git_revision);
            assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{hash}");
        } else {
            assert!(!build.git_revision.is_empty());
        }
        let release = BuildInfo {
            profile: "release",
            ..build.clone()
        };
        assert_eq!(release.warning(), None);
        let debug = BuildInfo {
            profile: "debug",
            ..build
        };
        assert!(debug.warning().unwrap().contains("debug build"));
    }

    fn report_of(main: &RunReport, sweep: Option<SweepReport>) -> Report {
        let parameters = Parameters {
            target: "a started server (http://127.0.0.1:9)".into(),
            durability: Some("fsync".into()),
            partitions: Some(0),
            customers: 10,
            connections: 4,
            batch: 10,
            duration_s: 1.0,
            zipf: 0.0,
            duplicates: 0.0,
            crossing: 0.1,
            crossing_customers: 1,
            min_samples: MIN_SAMPLES_DEFAULT,
            null_server: None,
            honours_retry_after: true,
        };
        let setup = SetupReport {
            customers: 10,
            requests: 20,
            seconds: 1.0,
            requests_per_s: 20.0,
            concurrency: 1,
            retries: 0,
            customer_request_ms_avg: 1.0,
            contract_request_ms_avg: 1.0,
        };
        Report::new(
            parameters,
            setup,
            main,
            None,
            sweep,
            Machine::describe(None),
        )
    }

    #[test]
    fn every_report_carries_its_build_in_json_and_text() {
        let report = report_of(&step("rate", 1000.0, 1000.0, Some(2.0)), None);
        let json = serde_json::to_value(&report).unwrap();
        let build = &json["build"];
        assert_eq!(build["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            build["profile"],
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
        assert_eq!(build["git_revision"], BuildInfo::current().git_revision);
        let text = report.text();
        assert!(
            text.contains(&format!(
                "build:           tollgate {}, {} profile, git {}",
                report.build.version, report.build.profile, report.build.git_revision
            )),
            "{text}"
        );
        assert_eq!(
            text.starts_with("warning: this is a debug build"),
            cfg!(debug_assertions),
            "{text}"
        );
    }

    #[test]
    fn the_sweep_table_shows_each_steps_verdict_and_thin_percentiles() {
        let mut thin = step("rate", 2000.0, 2000.0, None);
        thin.ack_latency_ms = Percentiles::of(&test_histogram(40), MIN_SAMPLES_DEFAULT);
        let mut steps = vec![step("rate", 1000.0, 1000.0, Some(2.0)), thin];
        for s in &mut steps {
            s.verdict = Some(s.verdict(20.0));
        }
        let sweep = SweepReport {
            chart: "chart.svg".into(),
            p99_target_ms: 20.0,
            capacity_events_per_s: Some(1000.0),
            capacity_is_lower_bound: false,
            capacity_statement: "this machine sustains 1000 events/s ...".into(),
            steps: steps.clone(),
        };
        let report = report_of(&steps[0], Some(sweep));
        let text = report.text();
        assert!(text.contains("p99 2.000"), "{text}");
        assert!(text.contains("p99 too few samples (40)"), "{text}");
        assert!(text.contains("   met\n"), "{text}");
        assert!(
            text.contains("missed: had too few samples for a p99 (40, needs 100"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["sweep"]["steps"][0]["verdict"]["result"], "sustained");
        assert!(json["sweep"]["steps"][1]["ack_latency_ms"]["p99"].is_null());
        assert_eq!(json["sweep"]["capacity_is_lower_bound"], false);
    }
}

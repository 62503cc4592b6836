//! What a bench run found, as one JSON object (`--json`, `--report`) and as text: percentiles
//! from the HdrHistograms, the capacity statement of a sweep, the Tollgate/null ratio. Pure
//! formatting and selection; the runs themselves are in `load`.

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

/// Percentiles in milliseconds (with microsecond precision); `null`s when nothing was recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| Some(us as f64 / 1000.0);
        Percentiles {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }

    fn text(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            f(self.p50),
            f(self.p90),
            f(self.p99),
            f(self.p999),
            f(self.max),
            self.count
        )
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

impl RunReport {
    /// Whether this run sustained its offered rate within the latency target.
    pub fn sustains(&self, p99_target_ms: f64) -> bool {
        self.accepted_events_per_s >= SUSTAINED_ACCEPTED_SHARE_MIN * self.offered_events_per_s
            && self
                .ack_latency_ms
                .p99
                .is_some_and(|p99| p99 <= p99_target_ms)
    }
}

/// The step a sweep states as capacity: the highest offered rate that was sustained (accepted
/// at least 99% of it) with p99 at or under the target.
pub fn capacity_step(steps: &[RunReport], p99_target_ms: f64) -> Option<usize> {
    steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.mode == "rate" && s.sustains(p99_target_ms))
        .max_by(|(_, a), (_, b)| a.offered_events_per_s.total_cmp(&b.offered_events_per_s))
        .map(|(i, _)| i)
}

pub fn capacity_statement(
    step: Option<&RunReport>,
    customers: usize,
    p99_target_ms: f64,
) -> String {
    match step {
        Some(s) => format!(
            "this machine sustains {:.0} events/s with {customers} customers at p99 <= {p99_target_ms} ms",
            s.offered_events_per_s
        ),
        None => format!(
            "no offered rate was sustained with {customers} customers at p99 <= {p99_target_ms} ms"
        ),
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
}

/// The final report. The top-level figures are those of the main run: the single run, or in a
/// sweep the step at the stated capacity (else the step that accepted most).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
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
        Report {
            tool: "tollgate bench",
            version: env!("CARGO_PKG_VERSION"),
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
            let _ = writeln!(out, "sweep:           offered -> accepted events/s, p99 ms");
            for step in &sweep.steps {
                let _ = writeln!(
                    out,
                    "  {:>5} {:>10.0} -> {:>10.0}   p99 {}",
                    step.mode,
                    step.offered_events_per_s,
                    step.accepted_events_per_s,
                    step.ack_latency_ms
                        .p99
                        .map_or("-".to_owned(), |v| format!("{v:.3}"))
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
            count: 1,
            p99,
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
    }
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
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50, Some(0.5));
        assert_eq!(p.p90, Some(0.9));
        assert_eq!(p.p99, Some(0.99));
        assert_eq!(p.p999, Some(0.999));
        assert_eq!(p.max, Some(1.0));
        // Large values keep 3 significant digits.
        record_us(&mut h, 12_345_678);
        let max = Percentiles::of(&h).max.unwrap();
        assert!((max - 12_345.678).abs() / 12_345.678 < 0.001, "{max}");
    }

    #[test]
    fn an_empty_histogram_gives_nulls_and_out_of_range_values_are_clamped() {
        let h = new_histogram();
        let p = Percentiles::of(&h);
        assert_eq!(p, Percentiles::default());
        let json = serde_json::to_value(p).unwrap();
        assert!(json["p99"].is_null() && json["p999"].is_null());
        let mut h = new_histogram();
        record_us(&mut h, 0);
        record_us(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn capacity_is_the_highest_sustained_rate_within_the_latency_target() {
        let steps = vec![
            step("max", 100_000.0, 100_000.0, Some(5.0)),
            step("rate", 25_000.0, 25_000.0, Some(2.0)),
            step("rate", 50_000.0, 49_800.0, Some(4.0)),
            // Accepted all but too slow.
            step("rate", 75_000.0, 75_000.0, Some(30.0)),
            // Within latency but accepted under 99%.
            step("rate", 100_000.0, 90_000.0, Some(10.0)),
            step("rate", 150_000.0, 95_000.0, None),
        ];
        assert_eq!(capacity_step(&steps, 20.0), Some(2));
        assert_eq!(capacity_step(&steps, 50.0), Some(3));
        assert_eq!(capacity_step(&steps, 1.0), None);
        assert_eq!(
            capacity_statement(Some(&steps[2]), 100_000, 20.0),
            "this machine sustains 50000 events/s with 100000 customers at p99 <= 20 ms"
        );
        assert!(capacity_statement(None, 10, 20.0).starts_with("no offered rate"));
        // The closed-loop measurement is never the capacity: its offered rate is what it got.
        assert_eq!(capacity_step(&steps[..1], 20.0), None);
    }
}

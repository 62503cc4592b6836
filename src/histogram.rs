//! Prometheus histograms: latencies observed in microseconds, shown in seconds (the Prometheus
//! base unit) with cumulative buckets, `_sum` and `_count`. Integers throughout (bounds and sums
//! are microseconds, printed as decimal seconds), cheap to observe from any thread.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the buckets, in microseconds: 0.5 ms to 30 s.
pub const BUCKETS_MICROS: [u64; 16] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 20_000_000, 30_000_000,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), the last one past every bound (`+Inf`).
    counts: [AtomicU64; BUCKETS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

/// `micros` as decimal seconds (`0.0005`, `2.5`, `30`).
pub fn seconds(micros: u64) -> String {
    let (whole, fraction) = (micros / 1_000_000, micros % 1_000_000);
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:06}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

impl Histogram {
    pub fn observe_micros(&self, micros: u64) {
        let bucket = BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(BUCKETS_MICROS.len());
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    pub fn observe_since(&self, started: std::time::Instant) {
        self.observe_micros(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// The series of one histogram (`labels` without braces, e.g. `status="200"`, or empty).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in BUCKETS_MICROS.iter().zip(&self.counts) {
            cumulative += count.load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
                seconds(*bound)
            );
        }
        cumulative += self.counts[BUCKETS_MICROS.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(
            out,
            "{name}_sum{} {}",
            braces(labels),
            seconds(self.sum_micros.load(Relaxed))
        );
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// Histograms of one family, one per set of label values.
#[derive(Debug, Default)]
pub struct LabeledHistograms {
    by_labels: Mutex<BTreeMap<String, std::sync::Arc<Histogram>>>,
}

/// A label value as Prometheus' text format quotes it.
pub fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl LabeledHistograms {
    /// Observes `micros` under `labels` (`name="value"` pairs, values unescaped).
    pub fn observe_micros(&self, labels: &[(&str, &str)], micros: u64) {
        let key: Vec<String> = labels
            .iter()
            .map(|(name, value)| format!("{name}=\"{}\"", label_value(value)))
            .collect();
        let histogram = {
            let mut map = self.by_labels.lock().unwrap_or_else(|e| e.into_inner());
            std::sync::Arc::clone(map.entry(key.join(",")).or_default())
        };
        histogram.observe_micros(micros);
    }

    pub fn render(&self, out: &mut String, name: &str) {
        let map = self.by_labels.lock().unwrap_or_else(|e| e.into_inner());
        for (labels, histogram) in map.iter() {
            histogram.render(out, name, labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_fill_cumulative_buckets_in_seconds() {
        let h = Histogram::default();
        for micros in [100, 600, 600, 40_000, 31_000_000] {
            h.observe_micros(micros);
        }
        let mut out = String::new();
        h.render(&mut out, "t_seconds", "");
        assert!(out.contains("t_seconds_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.001\"} 3\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.05\"} 4\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"30\"} 4\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("t_seconds_sum 31.0413\n"), "{out}");
        assert!(out.contains("t_seconds_count 5\n"), "{out}");
        let labeled = LabeledHistograms::default();
        labeled.observe_micros(&[("destination", "http://a/\"x\""), ("status", "200")], 1);
        let mut out = String::new();
        labeled.render(&mut out, "d_seconds");
        assert!(
            out.contains("d_seconds_count{destination=\"http://a/\\\"x\\\"\",status=\"200\"} 1"),
            "{out}"
        );
        assert_eq!(seconds(2_500_000), "2.5");
        assert_eq!(seconds(500), "0.0005");
    }
}

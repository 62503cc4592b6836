//! The capacity a sweep states: the highest offered rate at which that step and every lower
//! step met the target, a lower bound when no step missed it, and the sentence that says so
//! (naming the step that missed and why). Selection only; each step's verdict is in `report`.

use super::report::RunReport;

/// What a sweep can state: the capacity step and the step that ended the sweep's claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// The highest open-loop step that, with every lower step, met the target.
    pub step: Option<usize>,
    /// The lowest open-loop step that missed the target; `None` when every step met it (then
    /// the capacity is a lower bound: the sweep did not reach the limit).
    pub first_failed: Option<usize>,
}

impl Capacity {
    pub fn is_lower_bound(&self) -> bool {
        self.step.is_some() && self.first_failed.is_none()
    }
}

/// The capacity of a sweep: the highest offered rate at which that step and every lower step
/// met the target. A pass above a failed step does not count (a lucky run above an unstable
/// rate is not capacity). The closed-loop step is never the capacity: its offered rate is what
/// it got.
pub fn capacity_step(steps: &[RunReport], p99_target_ms: f64) -> Capacity {
    let mut open_loop: Vec<usize> = (0..steps.len())
        .filter(|&step_index| steps[step_index].mode == "rate")
        .collect();
    open_loop.sort_by(|&a, &b| {
        steps[a]
            .offered_events_per_s
            .total_cmp(&steps[b].offered_events_per_s)
    });
    let mut capacity = Capacity {
        step: None,
        first_failed: None,
    };
    for step_index in open_loop {
        if steps[step_index].verdict(p99_target_ms).is_sustained() {
            capacity.step = Some(step_index);
        } else {
            capacity.first_failed = Some(step_index);
            break;
        }
    }
    capacity
}

pub fn capacity_statement(
    steps: &[RunReport],
    capacity: Capacity,
    customers: usize,
    p99_target_ms: f64,
) -> String {
    let target = format!("with {customers} customers at p99 <= {p99_target_ms} ms");
    let failed = capacity.first_failed.map(|failed_index| {
        let step = &steps[failed_index];
        format!(
            "at {:.0} events/s the step {}",
            step.offered_events_per_s,
            step.verdict(p99_target_ms).reason(p99_target_ms)
        )
    });
    match (capacity.step.map(|i| &steps[i]), failed) {
        (Some(s), Some(failed)) => format!(
            "this machine sustains {:.0} events/s {target} ({failed})",
            s.offered_events_per_s
        ),
        (Some(s), None) => format!(
            "this machine sustains at least {:.0} events/s {target}: every step met the target, the sweep did not reach the limit",
            s.offered_events_per_s
        ),
        (None, Some(failed)) => {
            format!("no offered rate was sustained {target}: {failed}")
        }
        (None, None) => format!("no open-loop step ran, so no capacity {target} can be stated"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::{
        MIN_SAMPLES_DEFAULT, Percentiles, Verdict, test_histogram, test_step,
    };

    fn step(mode: &'static str, offered: f64, accepted: f64, p99: Option<f64>) -> RunReport {
        test_step(mode, offered, accepted, p99)
    }

    #[test]
    fn a_step_with_too_few_samples_is_not_sustained_and_ends_the_capacity() {
        let mut thin = step("rate", 50_000.0, 50_000.0, None);
        thin.ack_latency_ms = Percentiles::of(&test_histogram(40), MIN_SAMPLES_DEFAULT);
        assert_eq!(
            thin.verdict(20.0),
            Verdict::TooFewSamples {
                samples: 40,
                needed: 100
            }
        );
        let steps = vec![
            step("rate", 25_000.0, 25_000.0, Some(2.0)),
            thin,
            step("rate", 75_000.0, 75_000.0, Some(3.0)),
        ];
        let capacity = capacity_step(&steps, 20.0);
        assert_eq!(capacity.step, Some(0));
        assert_eq!(capacity.first_failed, Some(1));
        let statement = capacity_statement(&steps, capacity, 10, 20.0);
        assert!(
            statement.contains(
                "at 50000 events/s the step had too few samples for a p99 (40, needs 100"
            ),
            "{statement}"
        );
        let json = serde_json::to_value(steps[1].verdict(20.0)).unwrap();
        assert_eq!(json["result"], "too_few_samples");
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
        let at = |target: f64| capacity_step(&steps, target);
        assert_eq!(
            at(20.0),
            Capacity {
                step: Some(2),
                first_failed: Some(3)
            }
        );
        assert_eq!(at(50.0).step, Some(3));
        assert_eq!(at(50.0).first_failed, Some(4));
        assert_eq!(at(1.0).step, None);
        assert_eq!(
            capacity_statement(&steps, at(20.0), 100_000, 20.0),
            "this machine sustains 50000 events/s with 100000 customers at p99 <= 20 ms (at 75000 events/s the step had p99 30.000 ms > 20 ms)"
        );
        assert_eq!(
            capacity_statement(&steps, at(1.0), 10, 1.0),
            "no offered rate was sustained with 10 customers at p99 <= 1 ms: at 25000 events/s the step had p99 2.000 ms > 1 ms"
        );
        assert!(
            capacity_statement(&steps, at(50.0), 10, 50.0)
                .contains("at 100000 events/s the step accepted 90.0% of it (under 99%)")
        );
        // The closed-loop measurement is never the capacity: its offered rate is what it got.
        assert_eq!(capacity_step(&steps[..1], 20.0).step, None);
        assert!(
            capacity_statement(&steps[..1], capacity_step(&steps[..1], 20.0), 10, 20.0)
                .starts_with("no open-loop step ran")
        );
    }

    #[test]
    fn a_pass_above_a_failed_step_is_not_capacity() {
        // The steps in the order a sweep ran them need not be sorted by rate.
        let steps = vec![
            step("rate", 75_000.0, 75_000.0, Some(8.0)),
            step("rate", 25_000.0, 25_000.0, Some(2.0)),
            step("rate", 50_000.0, 50_000.0, Some(25.0)),
        ];
        let capacity = capacity_step(&steps, 20.0);
        assert_eq!(
            capacity,
            Capacity {
                step: Some(1),
                first_failed: Some(2)
            }
        );
        assert!(!capacity.is_lower_bound());
        assert_eq!(
            capacity_statement(&steps, capacity, 10, 20.0),
            "this machine sustains 25000 events/s with 10 customers at p99 <= 20 ms (at 50000 events/s the step had p99 25.000 ms > 20 ms)"
        );
    }

    #[test]
    fn when_every_step_passed_the_capacity_is_a_lower_bound() {
        let steps = vec![
            step("max", 90_000.0, 90_000.0, Some(30.0)),
            step("rate", 25_000.0, 25_000.0, Some(2.0)),
            step("rate", 50_000.0, 50_000.0, Some(4.0)),
        ];
        let capacity = capacity_step(&steps, 20.0);
        assert_eq!(capacity.step, Some(2));
        assert!(capacity.is_lower_bound());
        assert_eq!(
            capacity_statement(&steps, capacity, 10, 20.0),
            "this machine sustains at least 50000 events/s with 10 customers at p99 <= 20 ms: every step met the target, the sweep did not reach the limit"
        );
    }
}

//! The simulated customers: which one each event goes to (uniform or Zipf), which customers
//! cross their prepaid balance threshold during the run and after how many events, and the
//! per-customer count of acknowledged events that tells the load generator when a crossing
//! happened. Pure except for the atomic counters; no I/O.

use std::sync::atomic::{AtomicU32, Ordering};

use rand::Rng;

/// The prepaid balance threshold every bench contract carries (Metronome's minimum, $5).
pub const PREPAID_THRESHOLD_CENTS: u64 = 500;
/// What the auto-recharge tops up to: the smallest gap Metronome allows ($10 above the
/// threshold), so a customer that keeps receiving events crosses again every
/// `RECHARGE_GAP_EVENTS` events (each event costs 1 cent).
pub const RECHARGE_TO_CENTS: u64 = PREPAID_THRESHOLD_CENTS + RECHARGE_GAP_EVENTS as u64;
pub const RECHARGE_GAP_EVENTS: u32 = 1000;
/// The prepaid commit of a customer that must not cross during the run ($10M at 1 cent per
/// event: out of reach of any run).
pub const NEVER_CROSSING_COMMIT_CENTS: u64 = 1_000_000_000;
/// The spend threshold every contract carries. Outstanding spend stays 0 while the prepaid
/// balance covers usage (the auto-recharge keeps it covered), so it is evaluated on every event
/// but never reached.
pub const SPEND_THRESHOLD_CENTS: u64 = 100_000_000;
/// Crossings are placed between these shares of a customer's expected events in the run, so
/// they spread over the run instead of all happening at its start.
const CROSSING_AT_SHARE_MIN: f64 = 0.1;
const CROSSING_AT_SHARE_MAX: f64 = 0.9;

/// Picks customer indexes: uniform when the exponent is 0, otherwise Zipf (index 0 hottest,
/// probability proportional to `1 / (i + 1)^s`).
#[derive(Debug, Clone)]
pub struct CustomerSampler {
    customers: usize,
    /// Cumulative probabilities, ascending, ending at 1.0; `None` for uniform.
    cdf: Option<Vec<f64>>,
}

impl CustomerSampler {
    /// # Panics
    /// When `customers` is 0 or the exponent is negative or not finite (the CLI refuses both).
    pub fn new(customers: usize, exponent: f64) -> CustomerSampler {
        assert!(customers > 0, "at least one customer");
        assert!(
            exponent.is_finite() && exponent >= 0.0,
            "zipf exponent >= 0"
        );
        if exponent == 0.0 {
            return CustomerSampler {
                customers,
                cdf: None,
            };
        }
        let mut cdf = Vec::with_capacity(customers);
        let mut total = 0.0;
        for i in 0..customers {
            total += ((i + 1) as f64).powf(-exponent);
            cdf.push(total);
        }
        for p in &mut cdf {
            *p /= total;
        }
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        CustomerSampler {
            customers,
            cdf: Some(cdf),
        }
    }

    pub fn customers(&self) -> usize {
        self.customers
    }

    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        match &self.cdf {
            None => rng.random_range(0..self.customers),
            Some(cdf) => {
                let u: f64 = rng.random();
                cdf.partition_point(|&p| p <= u).min(self.customers - 1)
            }
        }
    }

    /// The probability that one event goes to customer `i`.
    pub fn probability(&self, i: usize) -> f64 {
        match &self.cdf {
            None => 1.0 / self.customers as f64,
            Some(cdf) => cdf[i] - if i == 0 { 0.0 } else { cdf[i - 1] },
        }
    }
}

/// Whether customer `i` is one of the crossing share: spread evenly over the indexes (so over
/// the Zipf ranks too), exactly `floor(n * share)` of the first `n`.
pub fn is_crossing(i: usize, share: f64) -> bool {
    ((i + 1) as f64 * share).floor() > (i as f64 * share).floor()
}

/// A deterministic value in [0, 1) per customer (splitmix64), so a rerun places crossings the
/// same way.
fn unit_hash(i: usize) -> f64 {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// After how many (unique, acknowledged) events each customer first crosses its prepaid
/// balance threshold, or `None` for customers that must not cross. `expected_events` is how
/// many unique events the whole run is expected to send.
pub fn crossing_plan(
    sampler: &CustomerSampler,
    share: f64,
    expected_events: f64,
) -> Vec<Option<u32>> {
    (0..sampler.customers())
        .map(|i| {
            if !is_crossing(i, share) {
                return None;
            }
            let at = CROSSING_AT_SHARE_MIN
                + (CROSSING_AT_SHARE_MAX - CROSSING_AT_SHARE_MIN) * unit_hash(i);
            let events = (expected_events * sampler.probability(i) * at).floor();
            Some(events.clamp(1.0, f64::from(u32::MAX / 2)) as u32)
        })
        .collect()
}

/// The prepaid commit that makes a customer cross after `crossing_after` events.
pub fn prepaid_commit_cents(crossing_after: Option<u32>) -> u64 {
    match crossing_after {
        Some(events) => PREPAID_THRESHOLD_CENTS + u64::from(events),
        None => NEVER_CROSSING_COMMIT_CENTS,
    }
}

/// Acknowledged unique events per customer, and where each one crosses.
pub struct SpendTracker {
    crossing_after: Vec<Option<u32>>,
    acknowledged: Vec<AtomicU32>,
}

impl SpendTracker {
    pub fn new(crossing_after: Vec<Option<u32>>) -> SpendTracker {
        let acknowledged = crossing_after.iter().map(|_| AtomicU32::new(0)).collect();
        SpendTracker {
            crossing_after,
            acknowledged,
        }
    }

    /// Counts one acknowledged unique event of `customer`; true when it is the event that
    /// brings the balance to the threshold (the first crossing, then one every recharge gap).
    pub fn acknowledge(&self, customer: usize) -> bool {
        let Some(first) = self.crossing_after[customer] else {
            return false;
        };
        let n = self.acknowledged[customer].fetch_add(1, Ordering::Relaxed) + 1;
        crosses_at(first, n)
    }

    pub fn crossing_after(&self, customer: usize) -> Option<u32> {
        self.crossing_after[customer]
    }
}

/// Whether the `n`-th event (1-based) of a customer that first crosses at `first` crosses.
fn crosses_at(first: u32, n: u32) -> bool {
    n >= first && (n - first) % RECHARGE_GAP_EVENTS == 0
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn frequencies(sampler: &CustomerSampler, draws: usize) -> Vec<f64> {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0usize; sampler.customers()];
        for _ in 0..draws {
            counts[sampler.sample(&mut rng)] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn exponent_zero_samples_every_customer_about_equally() {
        let sampler = CustomerSampler::new(10, 0.0);
        for f in frequencies(&sampler, 200_000) {
            assert!((f - 0.1).abs() < 0.01, "{f}");
        }
        assert!((sampler.probability(3) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn zipf_one_gives_rank_k_about_one_kth_of_rank_one() {
        let sampler = CustomerSampler::new(100, 1.0);
        let harmonic: f64 = (1..=100).map(|k| 1.0 / k as f64).sum();
        assert!((sampler.probability(0) - 1.0 / harmonic).abs() < 1e-12);
        let total: f64 = (0..100).map(|i| sampler.probability(i)).sum();
        assert!((total - 1.0).abs() < 1e-9);
        let f = frequencies(&sampler, 400_000);
        assert!((f[0] - 1.0 / harmonic).abs() < 0.01, "{}", f[0]);
        assert!((f[0] / f[1] - 2.0).abs() < 0.15, "{} {}", f[0], f[1]);
        assert!((f[0] / f[9] - 10.0).abs() < 1.5, "{} {}", f[0], f[9]);
        // Frequencies fall with rank (allowing noise in the tail).
        assert!(f[..10].windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn the_last_customer_can_be_drawn_and_nothing_beyond() {
        let sampler = CustomerSampler::new(3, 0.5);
        let f = frequencies(&sampler, 30_000);
        assert_eq!(f.len(), 3);
        assert!(f[2] > 0.1);
    }

    #[test]
    fn the_crossing_share_is_exact_and_spread_over_the_ranks() {
        let crossing = |share: f64, n: usize| (0..n).filter(|&i| is_crossing(i, share)).count();
        assert_eq!(crossing(0.0, 1000), 0);
        assert_eq!(crossing(1.0, 1000), 1000);
        assert_eq!(crossing(0.5, 1000), 500);
        assert_eq!(crossing(0.1, 1000), 100);
        assert_eq!(crossing(0.1, 20), 2);
        // Among the 10 hottest Zipf ranks, half of a 0.5 share.
        assert_eq!(crossing(0.5, 10), 5);
    }

    #[test]
    fn crossings_fall_inside_the_expected_events_of_each_customer() {
        let sampler = CustomerSampler::new(20, 0.0);
        let plan = crossing_plan(&sampler, 0.5, 1000.0);
        assert_eq!(plan.iter().filter(|c| c.is_some()).count(), 10);
        for c in plan.iter().flatten() {
            // Each customer expects 50 events; crossings land between 10% and 90% of them.
            assert!((5..=45).contains(c), "{c}");
        }
        // A customer expected to get almost nothing crosses at its first event.
        let plan = crossing_plan(&CustomerSampler::new(4, 0.0), 1.0, 1.0);
        assert!(plan.iter().all(|c| *c == Some(1)));
        assert_eq!(prepaid_commit_cents(Some(7)), PREPAID_THRESHOLD_CENTS + 7);
        assert_eq!(prepaid_commit_cents(None), NEVER_CROSSING_COMMIT_CENTS);
    }

    #[test]
    fn the_tracker_reports_the_first_crossing_then_one_per_recharge_gap() {
        let tracker = SpendTracker::new(vec![Some(3), None]);
        let crossings: Vec<u32> = (1..=2500)
            .filter(|_| tracker.acknowledge(0))
            .map(|_| tracker.acknowledged[0].load(Ordering::Relaxed))
            .collect();
        assert_eq!(crossings, vec![3, 1003, 2003]);
        assert!(!(0..5000).any(|_| tracker.acknowledge(1)));
    }
}

//! A partition's backlog: the inputs admitted to it and not yet applied, and how long the
//! oldest of them has waited (the apply lag that admission bounds in time, PERFORMANCE.md P9).
//!
//! Admission counts inputs in ([`Backlog::admit`]) and application counts them out
//! ([`Backlog::applied`]). To tell the age of the oldest one without a timestamp per input, the
//! backlog keeps marks: at most one per millisecond, each the number of inputs admitted before
//! it and the time it was made. Inputs of one partition apply in log order (one worker
//! dispatches them in order; customers of a batch may finish out of order by at most that
//! batch), so the oldest unapplied input is the one numbered `applied + 1`, and its age is the
//! age of the last mark at or before that number.
//!
//! The age of the oldest input alone does not bound the wait of the newest: while it stays
//! under the bound, a burst may admit far more than the partition applies in that time. So the
//! backlog also adapts how many inputs it may hold ([`Backlog::has_room`]): it shrinks the limit
//! by a quarter while the oldest input is older than the bound, and grows it by an eighth while
//! the limit is half used and the oldest is younger than half the bound, or, for a batch that
//! does not fit while the oldest is that young, by as much as the batch needs (at most double). The limit settles near
//! what the partition applies within the bound, whatever that rate is on this machine.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize};

/// Marks kept at most (one per millisecond: over a minute without any input applied). Past it
/// no new mark is made, so the lag is then overestimated, never under.
const MARKS_MAX: usize = 65_536;

/// The limit is adapted at most this often (milliseconds).
const ADAPT_EVERY_MS: i64 = 10;
/// The limit starts here (or at the ceiling if lower): a restart under full load must not admit
/// more than a partition can apply within the bound before the limit has adapted.
const LIMIT_START: usize = 8_192;
/// The limit never falls below this (or the ceiling if lower), so a partition that was slow
/// once still admits a few requests to measure itself by.
const LIMIT_FLOOR: usize = 512;

#[derive(Debug)]
pub struct Backlog {
    pending: AtomicUsize,
    admitted: AtomicU64,
    last_mark_ms: AtomicI64,
    /// (inputs admitted before the mark, when), in admission order.
    marks: Mutex<VecDeque<(u64, i64)>>,
    /// Inputs the partition may hold now (adapted; never above the ceiling).
    limit: AtomicUsize,
    /// The most the limit may be (`engine.pending_inputs_max`).
    ceiling: usize,
    last_adapt_ms: AtomicI64,
}

impl Backlog {
    /// An empty backlog that never holds more than `ceiling` inputs admitted by ingest.
    pub fn new(ceiling: usize) -> Backlog {
        Backlog {
            pending: AtomicUsize::new(0),
            admitted: AtomicU64::new(0),
            last_mark_ms: AtomicI64::new(i64::MIN),
            marks: Mutex::new(VecDeque::new()),
            limit: AtomicUsize::new(LIMIT_START.min(ceiling)),
            ceiling,
            last_adapt_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// Whether `count` more inputs may be admitted at `now_ms` while keeping the apply lag
    /// within `lag_max_ms`: the oldest waiting input is not older than that and the backlog
    /// stays within its adapted limit. Inputs that must not be refused (payment outcomes,
    /// released late events) are admitted without asking.
    pub fn has_room(&self, count: usize, now_ms: i64, lag_max_ms: i64) -> bool {
        let lag = self.lag_ms(now_ms);
        self.adapt(
            lag,
            now_ms,
            lag_max_ms,
            self.pending().saturating_add(count),
        );
        let pending = self.pending();
        // An empty backlog takes any batch up to the ceiling: one larger than the adapted
        // limit could otherwise never be admitted.
        let fits =
            pending + count <= self.limit.load(Relaxed) || (pending == 0 && count <= self.ceiling);
        lag <= lag_max_ms && fits
    }

    /// The limit this backlog admits up to now.
    pub fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    /// `demand` is what the backlog would hold with the batch asking.
    fn adapt(&self, lag: i64, now_ms: i64, lag_max_ms: i64, demand: usize) {
        let last = self.last_adapt_ms.load(Relaxed);
        if now_ms.saturating_sub(last) < ADAPT_EVERY_MS
            || self
                .last_adapt_ms
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_err()
        {
            return;
        }
        let limit = self.limit.load(Relaxed);
        let next = if lag > lag_max_ms {
            (limit - limit / 4).max(LIMIT_FLOOR.min(self.ceiling))
        } else if lag <= lag_max_ms / 2 && (self.pending() * 2 >= limit || demand > limit) {
            // Keeping up: an eighth more, or up to twice as much for a burst that does not
            // fit (open-loop clients send in bursts; at low load the limit may have stayed
            // near the floor since the last overload).
            let burst = demand.saturating_sub(limit).min(limit);
            limit
                .saturating_add((limit / 8).max(burst).max(1))
                .min(self.ceiling)
        } else {
            limit
        };
        self.limit.store(next, Relaxed);
    }

    /// Counts `count` inputs admitted at `now_ms`.
    pub fn admit(&self, count: usize, now_ms: i64) {
        if count == 0 {
            return;
        }
        let before = self.admitted.fetch_add(count as u64, Relaxed);
        self.pending.fetch_add(count, Relaxed);
        if self.last_mark_ms.swap(now_ms, Relaxed) != now_ms {
            let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
            // Two admissions racing in one millisecond may lock in either order: keep the
            // marks increasing (the earlier number stands for both).
            if marks.back().is_none_or(|&(n, _)| n < before) && marks.len() < MARKS_MAX {
                marks.push_back((before, now_ms));
            }
        }
    }

    /// Counts `count` inputs applied (or refused after admission: they wait no more).
    pub fn applied(&self, count: usize) {
        if count > 0 {
            self.pending.fetch_sub(count, Relaxed);
        }
    }

    /// Inputs admitted since the start.
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Relaxed)
    }

    /// Inputs admitted and not yet applied.
    pub fn pending(&self) -> usize {
        self.pending.load(Relaxed)
    }

    /// How long the oldest input not yet applied has waited at `now_ms` (0 when none waits).
    pub fn lag_ms(&self, now_ms: i64) -> i64 {
        // Read `pending` before `admitted`: an admission between the two reads makes `applied`
        // look larger, i.e. the lag a little younger, for one reading.
        let pending = self.pending.load(Relaxed) as u64;
        let admitted = self.admitted.load(Relaxed);
        let applied = admitted.saturating_sub(pending);
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        // A mark is of no more use once the next one also lies at or before `applied`.
        while marks.len() >= 2 && marks[1].0 <= applied {
            marks.pop_front();
        }
        if pending == 0 {
            return 0;
        }
        marks.front().map_or(0, |&(_, at)| (now_ms - at).max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::Backlog;

    #[test]
    fn the_lag_is_the_age_of_the_oldest_input_not_yet_applied() {
        let backlog = Backlog::new(1_000);
        assert_eq!(backlog.lag_ms(1_000), 0);
        backlog.admit(10, 100);
        backlog.admit(5, 100);
        backlog.admit(20, 150);
        backlog.admit(1, 400);
        assert_eq!(backlog.pending(), 36);
        assert_eq!(backlog.lag_ms(500), 400);
        backlog.applied(14);
        assert_eq!(backlog.lag_ms(500), 400, "the 15th input came at 100");
        backlog.applied(1);
        assert_eq!(backlog.lag_ms(500), 350, "the 16th came at 150");
        backlog.applied(20);
        assert_eq!(backlog.lag_ms(500), 100);
        backlog.applied(1);
        assert_eq!(backlog.pending(), 0);
        assert_eq!(backlog.lag_ms(500), 0);
        backlog.admit(3, 600);
        assert_eq!(backlog.lag_ms(610), 10, "old marks are gone");
    }

    #[test]
    fn admissions_racing_in_one_millisecond_keep_the_earlier_mark() {
        let backlog = Backlog::new(1_000);
        backlog.admit(2, 10);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for ms in 11..200 {
                        backlog.admit(1, ms);
                    }
                });
            }
        });
        let marks = backlog.marks.lock().unwrap().clone();
        assert!(
            marks
                .iter()
                .zip(marks.iter().skip(1))
                .all(|(a, b)| a.0 < b.0)
        );
        assert_eq!(backlog.lag_ms(300), 290);
        backlog.applied(2 + 4 * 189);
        assert_eq!(backlog.lag_ms(300), 0);
    }

    #[test]
    fn the_limit_shrinks_while_the_oldest_input_waits_too_long_and_grows_while_used() {
        let backlog = Backlog::new(20_000);
        assert_eq!(backlog.limit(), 8_192);
        backlog.admit(5_000, 0);
        // Half used and young: grows by an eighth, at most every 10 ms.
        assert!(backlog.has_room(4_216, 0, 100));
        assert_eq!(backlog.limit(), 9_216);
        assert!(!backlog.has_room(4_217, 0, 100), "over the limit");
        assert!(backlog.has_room(1, 5, 100));
        assert_eq!(backlog.limit(), 9_216, "adapted 5 ms ago");
        assert!(backlog.has_room(1, 10, 100));
        assert_eq!(backlog.limit(), 10_368);
        // The oldest input has waited too long: refused, and the limit shrinks by a quarter.
        assert!(!backlog.has_room(1, 150, 100));
        assert_eq!(backlog.limit(), 7_776);
        for step in 1..=20 {
            assert!(!backlog.has_room(1, 150 + step * 10, 100));
        }
        assert_eq!(backlog.limit(), 512, "never below the floor");
        backlog.applied(5_000);
        assert!(backlog.has_room(512, 400, 100), "nothing waits: room again");
        assert!(
            backlog.has_room(20_000, 400, 100),
            "an empty backlog takes a large batch"
        );
        assert!(
            !backlog.has_room(20_001, 400, 100),
            "not beyond the ceiling"
        );
        backlog.admit(1, 400);
        assert!(backlog.has_room(511, 400, 100));
        assert!(!backlog.has_room(512, 400, 100));
        backlog.applied(1);
        // Unused, the limit does not grow.
        assert!(backlog.has_room(1, 500, 100));
        assert_eq!(backlog.limit(), 512);
        // Never above the ceiling.
        let small = Backlog::new(300);
        assert_eq!(small.limit(), 300);
        small.admit(200, 0);
        assert!(small.has_room(100, 10, 100));
        assert_eq!(small.limit(), 300);
        small.admit(100, 20);
        for step in 1..=30 {
            small.has_room(0, 200 + step * 10, 100);
        }
        assert_eq!(
            small.limit(),
            300,
            "the floor is the ceiling when it is lower"
        );
    }

    #[test]
    fn a_burst_that_does_not_fit_while_the_partition_keeps_up_grows_the_limit_at_most_double() {
        let backlog = Backlog::new(100_000);
        // Overloaded once: the limit fell to the floor.
        backlog.admit(1, 0);
        for step in 1..=20 {
            assert!(!backlog.has_room(1, 100 + step * 10, 50));
        }
        backlog.applied(1);
        assert_eq!(backlog.limit(), 512);
        // Light load: a few inputs wait, briefly. A burst of 3,000 would not fit: the limit
        // doubles (every 10 ms at most) until it does, and the refusals stop.
        backlog.admit(100, 400);
        assert!(!backlog.has_room(3_000, 400, 50));
        assert_eq!(backlog.limit(), 1_024, "at most double per step");
        assert!(!backlog.has_room(3_000, 405, 50), "adapted 5 ms ago");
        assert!(!backlog.has_room(3_000, 410, 50));
        assert_eq!(backlog.limit(), 2_048);
        assert!(backlog.has_room(3_000, 420, 50));
        assert_eq!(backlog.limit(), 3_100, "as much as the burst needs");
        // Not while the oldest input is older than half the bound.
        backlog.admit(3_000, 420);
        assert!(!backlog.has_room(5_000, 430, 50));
        assert_eq!(
            backlog.limit(),
            3_100,
            "oldest waited 30 ms of a 50 ms bound"
        );
    }
}

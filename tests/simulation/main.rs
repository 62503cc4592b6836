//! The deterministic simulation of the whole engine (issue 11): the real engine and HTTP API on
//! one thread with paused time, a seeded workload of customers, contracts, thresholds with
//! NONE and EXTERNAL gates, usage (zero, negative, huge, beyond the bounds, duplicated, late),
//! releases (paid and failed, repeated), commits added, thresholds toggled, webhook receiver
//! outages, storage faults and crashes; checked after every step and at the end against a
//! reference model and the invariants.
//!
//! `TOLLGATE_SIM_SEED=<n>` replays one seed; `TOLLGATE_SIM_SEEDS=<n>` runs seeds 0..n (a soak);
//! by default CI runs [`CI_SEEDS`].

mod model;
mod receiver;
mod sim;
mod stripe;

/// Seeds CI runs (a few minutes on 2 cores in a debug build).
const CI_SEEDS: u64 = 48;

fn seeds() -> Vec<u64> {
    if std::env::var_os("TOLLGATE_SIM_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("TOLLGATE_SIM_LOG").unwrap_or_default(),
            ))
            .with_test_writer()
            .try_init();
    }
    if let Ok(seed) = std::env::var("TOLLGATE_SIM_SEED") {
        return vec![seed.parse().expect("TOLLGATE_SIM_SEED is a number")];
    }
    let count = std::env::var("TOLLGATE_SIM_SEEDS")
        .map(|n| n.parse().expect("TOLLGATE_SIM_SEEDS is a number"))
        .unwrap_or(CI_SEEDS);
    (0..count).collect()
}

#[test]
fn seeds_pass_every_invariant() {
    let mut totals = sim::Report::default();
    for seed in seeds() {
        let report = match sim::run(seed, sim::Options::default()) {
            Ok(report) => report,
            Err(failure) => panic!(
                "simulation seed {seed} failed: {failure}\nreplay: TOLLGATE_SIM_SEED={seed} cargo test --test simulation"
            ),
        };
        println!("{report:?}");
        totals.steps += report.steps;
        totals.requests += report.requests;
        totals.events += report.events;
        totals.lifetimes += report.lifetimes;
        totals.crashes += report.crashes;
        totals.recoveries_checked += report.recoveries_checked;
        totals.crashes_in_flight += report.crashes_in_flight;
        totals.storage_faults += report.storage_faults;
        totals.webhooks += report.webhooks;
        totals.webhook_failures += report.webhook_failures;
        totals.redriven += report.redriven;
        totals.releases += report.releases;
        totals.cancels += report.cancels;
        totals.gated_commits += report.gated_commits;
        totals.customer_commits += report.customer_commits;
        totals.manual_entries += report.manual_entries;
        totals.commits_archived += report.commits_archived;
        totals.commits_updated += report.commits_updated;
        totals.quarantined += report.quarantined;
        totals.reapplied += report.reapplied;
        totals.discarded += report.discarded;
        totals.stripe_calls += report.stripe_calls;
        totals.stripe_faults += report.stripe_faults;
        totals.stripe_events += report.stripe_events;
        totals.rail_holds += report.rail_holds;
        totals.contracts_ended += report.contracts_ended;
        totals.end_dates += report.end_dates;
        totals.lifecycle_notices += report.lifecycle_notices;
        totals.alerts_created += report.alerts_created;
        totals.alert_webhooks += report.alert_webhooks;
        totals.credit_lines += report.credit_lines;
        totals.converted_draws += report.converted_draws;
    }
    println!("totals: {totals:?}");
    // The workload reaches what the invariants are about (CI's seeds, or more).
    if seeds().len() >= CI_SEEDS as usize {
        assert!(
            totals.rail_holds > 0,
            "no rail ever held a recharge back: {totals:?}"
        );
        assert!(
            totals.contracts_ended > 0,
            "no contract ever ended: {totals:?}"
        );
        assert!(
            totals.lifecycle_notices > 0,
            "no lifecycle notice: {totals:?}"
        );
        assert!(
            totals.alerts_created > 0 && totals.alert_webhooks > 0,
            "no alert created or no alert webhook: {totals:?}"
        );
        assert!(
            totals.customer_commits > 0,
            "no customer-level commit or credit: {totals:?}"
        );
        assert!(
            totals.manual_entries > 0 && totals.commits_archived > 0 && totals.commits_updated > 0,
            "no manual ledger entry, archive or commit update: {totals:?}"
        );
        assert!(
            totals.credit_lines > 0 && totals.converted_draws > 0,
            "no usage in credits, or no fiat paying for it: {totals:?}"
        );
    }
}

#[test]
fn one_seed_run_twice_gives_the_same_trace() {
    let first = sim::run(7, sim::Options::default()).unwrap();
    let second = sim::run(7, sim::Options::default()).unwrap();
    assert_eq!(first, second);
}

/// Each deliberate defect (`--features defects`, src/defects.rs) must make some seed fail
/// within its budget: the proof that the simulation catches bugs of these kinds.
#[cfg(feature = "defects")]
#[test]
fn every_injected_defect_is_caught_within_its_seed_budget() {
    use tollgate::defects::{Defect, inject};
    const BUDGET: u64 = 48;
    // `TOLLGATE_SIM_DEFECT=<name>` checks one defect only; a name that is none of them fails
    // rather than checking nothing.
    let only = std::env::var("TOLLGATE_SIM_DEFECT").ok();
    if let Some(only) = &only {
        assert!(
            Defect::ALL.iter().any(|d| format!("{d:?}") == *only),
            "TOLLGATE_SIM_DEFECT={only} names no defect; they are {:?}",
            Defect::ALL
        );
    }
    for defect in Defect::ALL {
        if only
            .as_ref()
            .is_some_and(|only| *only != format!("{defect:?}"))
        {
            continue;
        }
        let budget = match std::env::var("TOLLGATE_SIM_SEED") {
            Ok(seed) => {
                let seed = seed.parse().expect("TOLLGATE_SIM_SEED is a number");
                seed..seed + 1
            }
            Err(_) => 0..BUDGET,
        };
        let caught = budget.clone().find_map(|seed| {
            inject(Some(defect));
            let outcome = std::panic::catch_unwind(|| sim::run(seed, sim::Options::default()));
            inject(None);
            match outcome {
                Ok(Ok(_)) => None,
                Ok(Err(failure)) => Some((seed, failure)),
                Err(_) => Some((seed, "panicked".to_owned())),
            }
        });
        let (seed, failure) =
            caught.unwrap_or_else(|| panic!("{defect:?} was not caught in seeds {budget:?}"));
        println!("{defect:?}: caught by seed {seed}: {failure:.200}");
    }
}

//! Quarantine through [`apply_logged`]: a panicking and an overflowing input are kept, change
//! nothing, and the customer's later inputs go on.

use std::sync::Arc;

use super::*;
use crate::actors::EngineError;
use crate::actors::clock::ManualClock;
use crate::actors::entry::PersistedCustomer;
use crate::actors::metrics::EngineMetrics;
use crate::actors::quarantine::{
    QuarantineCause, QuarantineWrites, Quarantined, list, quarantine_key,
};
use crate::actors::quarantine::{Resolution, list_resolved};
use crate::actors::shared::{EngineSettings, Shared};
use crate::domain::Rejection;
use crate::domain::contract::LineDraw;
use crate::domain::customer::{QuarantineAction, QuarantineDecision};
use crate::domain::fixtures::{self, CONTRACT, CUSTOMER, T0};
use crate::domain::{Ctx, Limits, Money};
use crate::storage::Store;
use crate::storage::StoreOptions;

fn shared(dir: &std::path::Path) -> Shared {
    let store = Store::open(dir, StoreOptions::default()).unwrap();
    let settings = EngineSettings {
        partitions: 1,
        limits: Limits::default(),
        webhook_routes: Vec::new(),
        mailbox_capacity: 16,
        pending_inputs_max: 16,
        apply_lag_max_ms: 60_000,
        checkpoint_interval_ms: 60_000,
        checkpoint_every_inputs: 1_000,
        evict_idle_ms: 60_000,
        preload_customers_max: 1_000_000,
        tick_interval_ms: 60_000,
        housekeeping_ms: 200,
        late_window_ms: 60_000,
    };
    Shared::new(
        store,
        settings,
        Arc::new(ManualClock::new(T0.millis())),
        Arc::new(EngineMetrics::default()),
        fixtures::catalog(),
        (sinks(), Vec::new()),
    )
}

/// Sinks nobody reads: these tests persist and look at what they get back.
fn sinks() -> crate::actors::handles::Sinks {
    use crate::actors::{payment::PaymentActor, webhook::WebhookActor};
    crate::actors::handles::Sinks::detached::<WebhookActor, PaymentActor>()
}

/// Writes a state as a checkpoint or an eviction would.
fn write_state(shared: &Shared, state: &PersistedCustomer) {
    let bytes = crate::storage::encode(crate::actors::entry::STATE_VERSION, state).unwrap();
    let key = crate::actors::entry::state_key(CUSTOMER);
    shared.store.meta_write_derived(&[(key, bytes)]).unwrap();
}

/// A customer with one contract on which 10 tokens were charged.
fn customer_with_tokens() -> PersistedCustomer {
    let mut state = PersistedCustomer::default();
    let catalog = fixtures::catalog();
    let limits = Limits::default();
    let ctx = Ctx {
        at: T0,
        catalog: &catalog,
        catalog_version: catalog.version(),
        limits: &limits,
    };
    let mut contract = fixtures::contract(CONTRACT);
    contract.commits.push(fixtures::prepaid_commit(10_000, 1));
    for input in [
        Input::create_customer(fixtures::profile(CUSTOMER, false)),
        Input::create_contract(contract),
        Input::RecordUsage(fixtures::llm_tokens("t1", T0, "10")),
    ] {
        state.customer.apply(&input, &ctx).unwrap();
    }
    state
}

fn usage(seq: u64, txn: &str, tokens: &str, catalog_version: u64) -> (u64, Input, u64) {
    (
        seq,
        Input::RecordUsage(fixtures::llm_tokens(txn, T0, tokens)),
        catalog_version,
    )
}

fn apply(
    shared: &Shared,
    state: &mut PersistedCustomer,
    input: (u64, Input, u64),
    quarantined: &mut QuarantineWrites,
) -> Result<crate::domain::Applied, EngineError> {
    apply_in(Pass::Live, shared, state, input, quarantined)
}

fn apply_in(
    pass: Pass,
    shared: &Shared,
    state: &mut PersistedCustomer,
    (seq, input, catalog_version): (u64, Input, u64),
    quarantined: &mut QuarantineWrites,
) -> Result<crate::domain::Applied, EngineError> {
    let logged = Logged {
        partition: 0,
        seq,
        customer_id: CUSTOMER,
        at: T0,
        catalog_version,
        input: &input,
    };
    apply_logged(shared, state, logged, pass, quarantined)
}

#[test]
fn a_panicking_apply_is_quarantined_the_state_is_unchanged_and_later_inputs_apply() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let version = shared.catalog().version();
    let mut state = customer_with_tokens();
    // A corrupt state (a draw from a commit that does not exist): giving back panics.
    state.customer.contracts[0].periods[0].lines[0].draws[0] = LineDraw {
        commit: 99,
        segment: 0,
        amount: Money::from_i64(20),
    };
    let before = state.customer.clone();
    // Usage applies in place; after a failure the state is rebuilt from what is written.
    write_state(&shared, &state);
    let mut quarantined = QuarantineWrites::default();
    let result = apply(
        &shared,
        &mut state,
        usage(5, "neg", "-5", version),
        &mut quarantined,
    );
    assert!(
        matches!(result, Err(EngineError::Quarantined(_))),
        "{result:?}"
    );
    assert_eq!(
        state.customer, before,
        "a quarantined input changes nothing"
    );
    assert_eq!(state.applied_seq, 5, "and is not applied again on replay");
    assert_eq!(quarantined.kept.len(), 1);
    assert_eq!(quarantined.kept[0].cause, QuarantineCause::Panic);
    assert!(
        quarantined.kept[0].reason.contains("index out of bounds"),
        "{}",
        quarantined.kept[0].reason
    );
    assert_eq!(EngineMetrics::get(&shared.metrics.inputs_quarantined), 1);

    // Kept durably and listed, in log order.
    persist_quarantined(&shared, &quarantined).unwrap();
    let listed = list(&shared.store, None, 10).unwrap();
    assert_eq!(listed, quarantined.kept);

    // The customer's later inputs go on.
    let mut more = QuarantineWrites::default();
    apply(
        &shared,
        &mut state,
        usage(6, "pos", "5", version),
        &mut more,
    )
    .unwrap();
    assert!(more.is_empty());
    assert_ne!(state.customer, before);
}

#[test]
fn usage_refused_inside_the_engine_is_quarantined_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let version = shared.catalog().version();
    let mut state = customer_with_tokens();
    // A line whose charge is at Decimal's limit (impossible within the bounds): any more
    // usage overflows.
    let line = &mut state.customer.contracts[0].periods[0].lines[0];
    line.charged = Money::from_decimal(rust_decimal::Decimal::MAX);
    let before = state.customer.clone();
    // Usage applies in place; after a failure the state is rebuilt from what is written.
    write_state(&shared, &state);
    let mut quarantined = QuarantineWrites::default();
    let result = apply(
        &shared,
        &mut state,
        usage(7, "big", "1000000", version),
        &mut quarantined,
    );
    assert!(
        matches!(result, Err(EngineError::Quarantined(_))),
        "{result:?}"
    );
    assert_eq!(state.customer, before);
    assert_eq!(quarantined.kept[0].cause, QuarantineCause::Refused);
    assert!(
        quarantined.kept[0].reason.contains("overflow"),
        "{}",
        quarantined.kept[0].reason
    );
}

#[test]
fn a_failed_usage_event_rebuilds_the_state_from_disk_and_the_log_without_it() {
    use crate::actors::entry::{LOG_VERSION, LogEntry};
    use crate::storage::{AppendBatch, LogRecord};
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let version = shared.catalog().version();
    let mut state = customer_with_tokens();
    write_state(&shared, &state);
    // An earlier event, in the log after the written state.
    let (seq, input, _) = usage(1, "t2", "7", version);
    let entry = LogEntry::Customer {
        customer_id: CUSTOMER,
        catalog_version: version,
        input: input.clone(),
    };
    let payload = crate::storage::encode(LOG_VERSION, &entry).unwrap();
    let appended = shared
        .store
        .append_blocking(AppendBatch {
            partition: 0,
            at_ms: T0.millis(),
            records: vec![LogRecord {
                dedupe_key: None,
                payload,
            }],
        })
        .unwrap();
    assert_eq!(appended.seqs, vec![Some(seq)]);
    let mut quarantined = QuarantineWrites::default();
    apply(&shared, &mut state, (seq, input, version), &mut quarantined).unwrap();
    let good = state.customer.clone();
    // A bug corrupts the live state; the next event fails part-way.
    state.customer.contracts[0].periods[0].lines[0].draws[0].commit = 99;
    let result = apply(
        &shared,
        &mut state,
        usage(2, "neg", "-5", version),
        &mut quarantined,
    );
    assert!(
        matches!(result, Err(EngineError::Quarantined(_))),
        "{result:?}"
    );
    assert_eq!(
        state.customer, good,
        "rebuilt with the earlier event, without the failed one"
    );
    assert_eq!(state.applied_seq, 2);
}

/// A usage event quarantined by a corrupt state (the bug), then the state repaired (the
/// upgrade): what the operator's decisions work on.
fn quarantined_negative_usage(shared: &Shared) -> (PersistedCustomer, PersistedCustomer, Input) {
    let version = shared.catalog().version();
    let mut state = customer_with_tokens();
    let good = state.clone();
    state.customer.contracts[0].periods[0].lines[0].draws[0].commit = 99;
    write_state(shared, &state);
    let (seq, input, _) = usage(5, "neg", "-5", version);
    let mut writes = QuarantineWrites::default();
    let result = apply(
        shared,
        &mut state,
        (seq, input.clone(), version),
        &mut writes,
    );
    assert!(matches!(result, Err(EngineError::Quarantined(_))));
    assert_eq!(state.quarantined, vec![(5, 0)], "the state lists it");
    persist_quarantined(shared, &writes).unwrap();
    (state, good, input)
}

fn decision(seq: u64, action: QuarantineAction) -> (u64, Input, u64) {
    (seq, Input::Quarantine(Box::new(action)), 0)
}

fn action(input: &Input, version: u64, decision: QuarantineDecision) -> QuarantineAction {
    QuarantineAction {
        seq: 5,
        index: 0,
        at: T0,
        catalog_version: version,
        input: input.clone(),
        panicked: true,
        reason: "index out of bounds".into(),
        decision,
    }
}

fn reapply_of(input: &Input, version: u64) -> QuarantineAction {
    action(input, version, QuarantineDecision::Reapply)
}

fn discard_of(input: &Input, version: u64, reason: &str) -> QuarantineAction {
    let reason = reason.into();
    action(input, version, QuarantineDecision::Discard { reason })
}

#[test]
fn a_reapplied_input_applies_once_leaves_the_quarantine_and_a_second_decision_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let version = shared.catalog().version();
    let (mut state, _, input) = quarantined_negative_usage(&shared);
    // Still broken: re-applying fails again, changes nothing, and it stays quarantined.
    let before = state.customer.clone();
    let mut writes = QuarantineWrites::default();
    let result = apply(
        &shared,
        &mut state,
        decision(6, reapply_of(&input, version)),
        &mut writes,
    );
    assert!(
        matches!(&result, Err(EngineError::Rejected(Rejection::StillFailing(r))) if r.contains("index out of bounds")),
        "{result:?}"
    );
    assert_eq!(state.customer, before);
    assert_eq!(state.quarantined, vec![(5, 0)]);
    assert!(writes.is_empty(), "nothing new kept, nothing resolved");

    // Repaired (the upgrade): the re-apply gives back the 5 tokens' charge exactly once.
    state.customer.contracts[0].periods[0].lines[0].draws[0].commit = 0;
    let charged_before = state.customer.contracts[0].periods[0].lines[0].charged;
    let mut writes = QuarantineWrites::default();
    apply(
        &shared,
        &mut state,
        decision(7, reapply_of(&input, version)),
        &mut writes,
    )
    .unwrap();
    let line = &state.customer.contracts[0].periods[0].lines[0];
    assert!(line.charged < charged_before, "{line:?}");
    assert!(state.quarantined.is_empty());
    assert_eq!(writes.resolved.len(), 1);
    assert_eq!(writes.resolved[0].entry.key(), quarantine_key(0, 5, 0));
    assert_eq!(writes.resolved[0].resolution, Resolution::Reapplied);
    assert_eq!(writes.resolved[0].decided_seq, 7);
    persist_quarantined(&shared, &writes).unwrap();
    assert!(
        list(&shared.store, None, 10).unwrap().is_empty(),
        "no longer listed"
    );
    assert_eq!(EngineMetrics::get(&shared.metrics.quarantine_reapplied), 1);

    // A second decision on it changes nothing.
    let after = state.customer.clone();
    for (seq, action) in [
        (8, reapply_of(&input, version)),
        (9, discard_of(&input, version, "late")),
    ] {
        let result = apply(
            &shared,
            &mut state,
            decision(seq, action),
            &mut QuarantineWrites::default(),
        );
        assert!(
            matches!(
                result,
                Err(EngineError::Rejected(Rejection::NotQuarantined))
            ),
            "{result:?}"
        );
        assert_eq!(state.customer, after);
    }
}

#[test]
fn replay_after_an_upgrade_quarantines_the_input_again_and_only_the_decision_applies_it() {
    use crate::actors::quarantine::QuarantinedPositions;
    let dir = tempfile::tempdir().unwrap();
    let mut shared = shared(dir.path());
    let version = shared.catalog().version();
    let (_, good, input) = quarantined_negative_usage(&shared);
    // The restart: the positions come from `quar/`.
    shared.quarantined = QuarantinedPositions::load(&shared.store).unwrap();
    assert!(shared.quarantined.contains(0, 5, 0));
    assert!(!shared.quarantined.contains(0, 5, 1));
    // Replay from a good state, by a version that would apply the input: the inputs after it
    // were decided without it, so it is quarantined again without running.
    for pass in [Pass::Recovery, Pass::Rebuild] {
        let mut state = good.clone();
        let mut writes = QuarantineWrites::default();
        let result = apply_in(
            pass,
            &shared,
            &mut state,
            (5, input.clone(), version),
            &mut writes,
        );
        assert!(
            matches!(result, Err(EngineError::Quarantined(_))),
            "{pass:?}: {result:?}"
        );
        assert_eq!(state.customer, good.customer, "{pass:?}: not run");
        assert_eq!(state.quarantined, vec![(5, 0)], "{pass:?}: listed");
        assert!(writes.is_empty(), "{pass:?}: its entry is there already");
    }
    // Live, a position is always new: nothing is looked up.
    let mut state = good.clone();
    apply(
        &shared,
        &mut state,
        (5, input.clone(), version),
        &mut QuarantineWrites::default(),
    )
    .unwrap();
    assert_ne!(state.customer, good.customer);

    // The operator re-applies it live at seq 6 (the version is fixed now), then a replay.
    let mut live = good.clone();
    live.quarantined.push((5, 0));
    live.applied_seq = 5;
    let mut writes = QuarantineWrites::default();
    apply(
        &shared,
        &mut live,
        decision(6, reapply_of(&input, version)),
        &mut writes,
    )
    .unwrap();
    persist_quarantined(&shared, &writes).unwrap();
    shared.quarantined = QuarantinedPositions::load(&shared.store).unwrap();
    assert_eq!(
        shared.quarantined.decided(0, 5, 0),
        Some(6),
        "from quar-done/"
    );
    // Replay: quarantined at seq 5 without running, applied by the decision at seq 6, once.
    let mut state = good.clone();
    let mut writes = QuarantineWrites::default();
    let _ = apply_in(
        Pass::Recovery,
        &shared,
        &mut state,
        (5, input.clone(), version),
        &mut writes,
    );
    let charged = state.customer.contracts[0].periods[0].lines[0].charged;
    apply_in(
        Pass::Recovery,
        &shared,
        &mut state,
        decision(6, reapply_of(&input, version)),
        &mut writes,
    )
    .unwrap();
    let line = &state.customer.contracts[0].periods[0].lines[0];
    assert!(line.charged < charged, "{line:?}");
    assert!(state.quarantined.is_empty());
    assert_eq!(
        state.customer, live.customer,
        "replay reaches the live result"
    );
}

#[test]
fn a_reapply_that_failed_live_does_not_apply_on_a_later_replay() {
    use crate::actors::quarantine::QuarantinedPositions;
    let dir = tempfile::tempdir().unwrap();
    let mut shared = shared(dir.path());
    let version = shared.catalog().version();
    let (mut state, good, input) = quarantined_negative_usage(&shared);
    // Live, still broken: the re-apply at seq 6 fails and the input stays quarantined.
    let result = apply(
        &shared,
        &mut state,
        decision(6, reapply_of(&input, version)),
        &mut QuarantineWrites::default(),
    );
    assert!(matches!(
        result,
        Err(EngineError::Rejected(Rejection::StillFailing(_)))
    ));
    // A fixed version replays the log: seq 5 is quarantined again, and the decision at seq 6,
    // which resolved nothing when it was made, must not apply it now (the inputs after it were
    // decided without it).
    shared.quarantined = QuarantinedPositions::load(&shared.store).unwrap();
    assert_eq!(shared.quarantined.decided(0, 5, 0), None);
    let mut replayed = good.clone();
    let mut writes = QuarantineWrites::default();
    let _ = apply_in(
        Pass::Recovery,
        &shared,
        &mut replayed,
        (5, input.clone(), version),
        &mut writes,
    );
    let before = replayed.customer.clone();
    let result = apply_in(
        Pass::Recovery,
        &shared,
        &mut replayed,
        decision(6, reapply_of(&input, version)),
        &mut writes,
    );
    assert!(
        matches!(
            result,
            Err(EngineError::Rejected(Rejection::StillFailing(_)))
        ),
        "{result:?}"
    );
    assert_eq!(replayed.customer, before);
    assert_eq!(replayed.quarantined, vec![(5, 0)], "still quarantined");
}

#[test]
fn a_decision_on_an_input_an_older_version_applied_by_replay_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let version = shared.catalog().version();
    let (_, good, input) = quarantined_negative_usage(&shared);
    // Replay from a good state by a version before 2026-12-08 (the upgraded code no longer
    // fails, and that version ran it): the input applied. A state it wrote may still be read.
    let mut state = good;
    let mut writes = QuarantineWrites::default();
    apply(
        &shared,
        &mut state,
        (5, input.clone(), version),
        &mut writes,
    )
    .unwrap();
    assert!(state.quarantined.is_empty());
    let applied_once = state.customer.clone();
    // The operator's re-apply, logged before the upgrade, replays next: it must not count the
    // input a second time.
    let result = apply(
        &shared,
        &mut state,
        decision(6, reapply_of(&input, version)),
        &mut writes,
    );
    assert!(
        matches!(
            result,
            Err(EngineError::Rejected(Rejection::NotQuarantined))
        ),
        "{result:?}"
    );
    assert_eq!(state.customer, applied_once);
    // Its entry, stale now, leaves the list.
    assert_eq!(writes.stale, vec![quarantine_key(0, 5, 0)]);
    persist_quarantined(&shared, &writes).unwrap();
    assert!(list(&shared.store, None, 10).unwrap().is_empty());
}

#[test]
fn a_quarantined_request_whose_caller_got_a_500_can_be_discarded_but_not_reapplied() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let version = shared.catalog().version();
    let mut state = customer_with_tokens();
    state.quarantined.push((5, 0));
    let contract = Input::create_contract(fixtures::contract(crate::domain::Id::from_u128(0x5002)));
    let before = state.customer.clone();
    let result = apply(
        &shared,
        &mut state,
        decision(6, reapply_of(&contract, version)),
        &mut QuarantineWrites::default(),
    );
    assert!(
        matches!(
            result,
            Err(EngineError::Rejected(Rejection::NotReappliable))
        ),
        "{result:?}"
    );
    assert_eq!(state.customer, before);
    assert_eq!(state.quarantined, vec![(5, 0)]);
    let mut writes = QuarantineWrites::default();
    let discard = discard_of(&contract, version, "the client retried it");
    apply(&shared, &mut state, decision(7, discard), &mut writes).unwrap();
    assert!(state.quarantined.is_empty());
    assert_eq!(state.customer, before);
}

#[test]
fn a_discarded_input_is_never_applied_and_leaves_the_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let (mut state, _, input) = quarantined_negative_usage(&shared);
    let before = state.customer.clone();
    let mut writes = QuarantineWrites::default();
    let version = shared.catalog().version();
    let discard = discard_of(&input, version, "duplicate of txn neg-2");
    apply(&shared, &mut state, decision(6, discard), &mut writes).unwrap();
    assert_eq!(state.customer, before, "never applied");
    assert!(state.quarantined.is_empty());
    persist_quarantined(&shared, &writes).unwrap();
    assert!(list(&shared.store, None, 10).unwrap().is_empty());
    let decided = list_resolved(&shared.store, None, 10).unwrap();
    let reason = "duplicate of txn neg-2".to_owned();
    assert_eq!(decided[0].resolution, Resolution::Discarded { reason });
    assert_eq!(EngineMetrics::get(&shared.metrics.quarantine_discarded), 1);
}

/// A customer as state versions 2 and 3 wrote it (no workflow history; contracts without
/// rails or lifecycle).
#[derive(serde::Serialize)]
struct OldCustomer<'a> {
    profile: &'a Option<crate::domain::customer::CustomerProfile>,
    contracts: Vec<crate::domain::customer::legacy::ContractV4>,
}

impl OldCustomer<'_> {
    fn of(customer: &crate::domain::Customer) -> OldCustomer<'_> {
        OldCustomer {
            profile: &customer.profile,
            contracts: customer.contracts.iter().map(Into::into).collect(),
        }
    }
}

/// `customer` as an upgrade from a state without lifecycles reads it: its contracts take in
/// their lifecycle with their next input.
fn without_lifecycles(customer: &crate::domain::Customer) -> crate::domain::Customer {
    let mut upgraded = customer.clone();
    for contract in &mut upgraded.contracts {
        contract.lifecycle = None;
    }
    upgraded
}

#[test]
fn a_state_written_by_version_4_reads_without_lifecycles_and_announces_no_past() {
    use crate::domain::customer::legacy::CustomerV4;
    #[derive(serde::Serialize)]
    struct V4 {
        applied_seq: u64,
        customer: CustomerV4,
        parked: Vec<crate::actors::entry::Parked>,
        quarantined: Vec<(u64, u32)>,
    }
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let state = customer_with_tokens();
    let old = V4 {
        applied_seq: 9,
        customer: CustomerV4 {
            profile: state.customer.profile.clone(),
            contracts: state.customer.contracts.iter().map(Into::into).collect(),
            workflow_history: state.customer.workflow_history.clone(),
        },
        parked: Vec::new(),
        quarantined: vec![(4, 0)],
    };
    let bytes = crate::storage::encode(crate::actors::entry::STATE_VERSION_V4, &old).unwrap();
    let key = crate::actors::entry::state_key(CUSTOMER);
    shared.store.meta_write_derived(&[(key, bytes)]).unwrap();
    let mut read = load_state(&shared, CUSTOMER).unwrap();
    assert_eq!(read.applied_seq, 9);
    assert_eq!(read.quarantined, vec![(4, 0)]);
    assert_eq!(read.customer, without_lifecycles(&state.customer));
    // Its next input takes in what is true now (open segments) and announces nothing of it.
    let catalog = shared.catalog();
    let limits = Limits::default();
    let ctx = Ctx {
        at: T0.plus_ms(60_000),
        catalog: &catalog,
        catalog_version: catalog.version(),
        limits: &limits,
    };
    let applied = read.customer.apply(&Input::Tick, &ctx).unwrap();
    assert!(applied.effects.is_empty(), "{:?}", applied.effects);
    let lifecycle = read.customer.contracts[0].lifecycle.clone().unwrap();
    assert_eq!(
        lifecycle.commits_announced,
        state.customer.contracts[0].commits.len() as u64
    );
}

#[test]
fn a_state_written_by_version_2_lists_the_quarantined_inputs_it_covers() {
    #[derive(serde::Serialize)]
    struct V2<'a> {
        applied_seq: u64,
        customer: OldCustomer<'a>,
        parked: Vec<crate::actors::entry::Parked>,
    }
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let state = customer_with_tokens();
    let old = V2 {
        applied_seq: 41,
        customer: OldCustomer::of(&state.customer),
        parked: Vec::new(),
    };
    let bytes = crate::storage::encode(crate::actors::entry::STATE_VERSION_V2, &old).unwrap();
    let key = crate::actors::entry::state_key(CUSTOMER);
    shared.store.meta_write_derived(&[(key, bytes)]).unwrap();
    // Quarantined by the version 2 binary: two of its inputs the state covers, one after it
    // (replay quarantines that one again), and another customer's.
    let other = crate::domain::Id::from_u128(0x4002);
    let kept: Vec<Quarantined> = [
        (CUSTOMER, 12, 0),
        (CUSTOMER, 41, 2),
        (CUSTOMER, 42, 0),
        (other, 30, 0),
    ]
    .into_iter()
    .map(|(customer_id, seq, index)| Quarantined {
        partition: 0,
        seq,
        index,
        customer_id,
        at: T0,
        catalog_version: 1,
        input: Input::Tick,
        cause: QuarantineCause::Panic,
        reason: "old bug".into(),
    })
    .collect();
    let writes = QuarantineWrites {
        kept,
        ..QuarantineWrites::default()
    };
    persist_quarantined(&shared, &writes).unwrap();
    let read = load_state(&shared, CUSTOMER).unwrap();
    assert_eq!(read.applied_seq, 41);
    assert_eq!(read.customer, without_lifecycles(&state.customer));
    assert_eq!(read.quarantined, vec![(12, 0), (41, 2)]);
    let read = load_states(&shared, &[other, CUSTOMER]).unwrap();
    assert_eq!(read[1].quarantined, vec![(12, 0), (41, 2)]);
}

#[test]
fn a_state_written_by_version_3_reads_with_the_history_its_workflows_still_tell() {
    #[derive(serde::Serialize)]
    struct V3<'a> {
        applied_seq: u64,
        customer: OldCustomer<'a>,
        parked: Vec<crate::actors::entry::Parked>,
        quarantined: Vec<(u64, u32)>,
    }
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let catalog = fixtures::catalog();
    let limits = Limits::default();
    let ctx = Ctx {
        at: T0,
        catalog: &catalog,
        catalog_version: catalog.version(),
        limits: &limits,
    };
    let mut customer = crate::domain::Customer::default();
    let mut contract = fixtures::contract(CONTRACT);
    contract.spend_threshold = Some(fixtures::spend_threshold(
        1,
        crate::domain::gate::GateType::External,
    ));
    for input in [
        Input::create_customer(fixtures::profile(CUSTOMER, false)),
        Input::create_contract(contract),
        Input::RecordUsage(fixtures::llm_tokens("t1", T0, "1000000")),
    ] {
        customer.apply(&input, &ctx).unwrap();
    }
    let live_history = customer.workflow_history.clone();
    assert_eq!(
        live_history.iter().map(|c| c.state).collect::<Vec<_>>(),
        [
            crate::domain::gate::WorkflowState::Initiated,
            crate::domain::gate::WorkflowState::AwaitingExternal
        ],
        "a started EXTERNAL workflow's history"
    );
    let old = V3 {
        applied_seq: 7,
        customer: OldCustomer::of(&customer),
        parked: Vec::new(),
        quarantined: vec![(3, 0)],
    };
    let bytes = crate::storage::encode(crate::actors::entry::STATE_VERSION_V3, &old).unwrap();
    let key = crate::actors::entry::state_key(CUSTOMER);
    shared.store.meta_write_derived(&[(key, bytes)]).unwrap();
    let read = load_state(&shared, CUSTOMER).unwrap();
    assert_eq!(read.applied_seq, 7);
    assert_eq!(read.quarantined, vec![(3, 0)]);
    assert_eq!(
        read.customer.contracts,
        without_lifecycles(&customer).contracts
    );
    // Version 3 kept no history: the workflow's start and the state it is in.
    assert_eq!(read.customer.workflow_history, live_history);
}

#[test]
fn a_state_written_by_version_5_reads_with_no_alert_statuses() {
    use crate::actors::entry::PersistedCustomerV5;
    use crate::domain::customer::legacy::CustomerV5;
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let state = customer_with_tokens();
    let old = PersistedCustomerV5 {
        applied_seq: 11,
        customer: CustomerV5 {
            profile: state.customer.profile.clone(),
            contracts: state.customer.contracts.iter().map(Into::into).collect(),
            workflow_history: state.customer.workflow_history.clone(),
        },
        parked: Vec::new(),
        quarantined: vec![(3, 0)],
        last_input_at: T0,
    };
    let bytes = crate::storage::encode(crate::actors::entry::STATE_VERSION_V5, &old).unwrap();
    let key = crate::actors::entry::state_key(CUSTOMER);
    shared.store.meta_write_derived(&[(key, bytes)]).unwrap();
    let read = load_state(&shared, CUSTOMER).unwrap();
    assert_eq!(read.applied_seq, 11);
    assert_eq!(read.quarantined, vec![(3, 0)]);
    assert_eq!(read.last_input_at, T0);
    assert_eq!(read.customer, state.customer);
    assert!(read.customer.alerts.is_empty());
}

#[test]
fn a_state_written_by_version_6_reads_with_its_alerts_and_no_customer_level_commits() {
    use crate::actors::entry::PersistedCustomerV6;
    use crate::domain::customer::legacy::CustomerV6;
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let state = customer_with_tokens();
    let old = PersistedCustomerV6 {
        applied_seq: 12,
        customer: CustomerV6 {
            profile: state.customer.profile.clone(),
            contracts: state.customer.contracts.iter().map(Into::into).collect(),
            workflow_history: state.customer.workflow_history.clone(),
            alerts: state.customer.alerts.clone(),
            alerts_as_of: T0,
        },
        parked: Vec::new(),
        quarantined: vec![(4, 0)],
        last_input_at: T0,
    };
    let bytes = crate::storage::encode(crate::actors::entry::STATE_VERSION_V6, &old).unwrap();
    let key = crate::actors::entry::state_key(CUSTOMER);
    shared.store.meta_write_derived(&[(key, bytes)]).unwrap();
    let read = load_state(&shared, CUSTOMER).unwrap();
    assert_eq!(read.applied_seq, 12);
    assert_eq!(read.quarantined, vec![(4, 0)]);
    assert_eq!(read.customer.alerts_as_of, T0);
    assert_eq!(read.customer.contracts, state.customer.contracts);
    assert!(read.customer.customer_commits.is_empty());
}

#[test]
fn a_state_written_by_version_7_reads_with_commits_without_custom_fields_or_manual_entries() {
    use crate::actors::entry::PersistedCustomerV7;
    use crate::domain::contract::{
        Commit, CustomFieldFilter, FieldEntity, ManualEntry, Release, Segment,
    };
    use crate::domain::customer::CustomerCommit;
    use crate::domain::customer::legacy::{CustomerCommitV7, CustomerV7};
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let state = customer_with_tokens();
    let spec = crate::domain::fixtures::credit(500, 1);
    let shared_credit = Commit {
        id: crate::domain::Id::from_u128(77),
        kind: spec.kind,
        product_id: spec.product_id,
        name: "shared".into(),
        description: None,
        priority: rust_decimal::Decimal::ONE,
        applicable_product_ids: vec![],
        applicable_product_tags: vec![],
        segments: vec![Segment {
            id: crate::domain::Id::from_u128(78),
            amount: crate::domain::Money::from_i64(500),
            starting_at: T0,
            ending_before: T0.plus_ms(1_000_000),
            drawn: crate::domain::Money::from_i64(20),
            manual: crate::domain::Money::ZERO,
        }],
        invoice_schedule: vec![],
        release: Release::Released { at: T0 },
        created_by_threshold: None,
        created_at: T0,
        deductions: vec![],
        archived_at: None,
        custom_fields: vec![],
        manual_entries: vec![],
        credit_type: None,
    };
    let old = PersistedCustomerV7 {
        applied_seq: 13,
        customer: CustomerV7 {
            profile: state.customer.profile.clone(),
            contracts: state.customer.contracts.iter().map(Into::into).collect(),
            workflow_history: state.customer.workflow_history.clone(),
            alerts: state.customer.alerts.clone(),
            alerts_as_of: T0,
            customer_commits: vec![CustomerCommitV7 {
                commit: (&shared_credit).into(),
                credit_type: crate::domain::money::CreditType::usd_cents(),
                applicable_contract_ids: vec![],
                invoice_contract_id: None,
                uniqueness_key: Some("k".into()),
            }],
        },
        parked: Vec::new(),
        quarantined: vec![(5, 0)],
        last_input_at: T0,
    };
    let bytes = crate::storage::encode(crate::actors::entry::STATE_VERSION_V7, &old).unwrap();
    let key = crate::actors::entry::state_key(CUSTOMER);
    shared.store.meta_write_derived(&[(key, bytes)]).unwrap();
    let read = load_state(&shared, CUSTOMER).unwrap();
    assert_eq!(read.applied_seq, 13);
    assert_eq!(read.quarantined, vec![(5, 0)]);
    assert_eq!(read.customer.contracts, state.customer.contracts);
    assert_eq!(read.customer.customer_commits.len(), 1);
    assert_eq!(read.customer.customer_commits[0].commit, shared_credit);
    assert_eq!(
        read.customer.customer_commits[0].commit.segments[0].remaining(),
        crate::domain::Money::from_i64(480)
    );
    // And a state of this version with custom fields, a manual entry and balance specifiers
    // reads back whole.
    let mut current = read.clone();
    let mut credit = shared_credit.clone();
    credit.custom_fields = vec![("campaign".into(), "promo".into())];
    credit
        .add_manual_entry(ManualEntry {
            id: crate::domain::Id::from_u128(79),
            segment: 0,
            amount: crate::domain::Money::from_i64(-30),
            reason: "goodwill taken back".into(),
            at: T0,
        })
        .unwrap();
    current.customer.customer_commits = vec![CustomerCommit {
        commit: credit,
        credit_type: crate::domain::money::CreditType::usd_cents(),
        applicable_contract_ids: vec![],
        invoice_contract_id: None,
        uniqueness_key: None,
    }];
    if let Some(config) = current
        .customer
        .contracts
        .iter_mut()
        .find_map(|c| c.prepaid_threshold.as_mut())
    {
        config.balance_specifiers = vec![vec![vec![CustomFieldFilter {
            entity: FieldEntity::ContractCreditOrCommit,
            key: "campaign".into(),
            value: "promo".into(),
        }]]];
    }
    let bytes = crate::storage::encode(crate::actors::entry::STATE_VERSION, &current).unwrap();
    shared
        .store
        .meta_write_derived(&[(crate::actors::entry::state_key(CUSTOMER), bytes)])
        .unwrap();
    let again = load_state(&shared, CUSTOMER).unwrap().customer;
    assert_eq!(again, current.customer);
    assert_eq!(
        again.customer_commits[0].commit.segments[0].remaining(),
        crate::domain::Money::from_i64(450)
    );
}

#[test]
fn a_state_written_by_version_8_reads_as_fiat_and_units_round_trip() {
    use crate::actors::entry::PersistedCustomerV8;
    use crate::domain::customer::legacy8::CustomerV8;
    use crate::domain::money::Conversion;
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let state = customer_with_tokens();
    let old = PersistedCustomerV8 {
        applied_seq: 14,
        customer: CustomerV8 {
            profile: state.customer.profile.clone(),
            contracts: state.customer.contracts.iter().map(Into::into).collect(),
            workflow_history: state.customer.workflow_history.clone(),
            alerts: state.customer.alerts.clone(),
            alerts_as_of: T0,
            customer_commits: vec![],
        },
        parked: Vec::new(),
        quarantined: vec![(6, 0)],
        last_input_at: T0,
    };
    assert!(
        state.customer.contracts[0].periods[0].lines[0]
            .charged
            .is_positive(),
        "the state has usage to upgrade"
    );
    let bytes = crate::storage::encode(crate::actors::entry::STATE_VERSION_V8, &old).unwrap();
    let key = crate::actors::entry::state_key(CUSTOMER);
    shared.store.meta_write_derived(&[(key, bytes)]).unwrap();
    let read = load_state(&shared, CUSTOMER).unwrap();
    assert_eq!(read.applied_seq, 14);
    assert_eq!(read.quarantined, vec![(6, 0)]);
    assert_eq!(read.customer.contracts, state.customer.contracts);
    // And this version's units read back whole.
    let mut current = read.clone();
    let credits = Conversion {
        credit_type_id: crate::domain::fixtures::CREDITS,
        fiat_per_unit: rust_decimal::Decimal::new(25, 1),
    };
    let contract = &mut current.customer.contracts[0];
    contract.commits[0].credit_type = Some(credits.credit_type_id);
    let line = &mut contract.periods[0].lines[0];
    line.conversion = Some(credits);
    line.covered_fiat = crate::domain::Money::from_i64(7);
    if let Some(config) = contract.prepaid_threshold.as_mut() {
        config.credit_type = Some(credits);
    }
    let bytes = crate::storage::encode(crate::actors::entry::STATE_VERSION, &current).unwrap();
    shared
        .store
        .meta_write_derived(&[(crate::actors::entry::state_key(CUSTOMER), bytes)])
        .unwrap();
    assert_eq!(
        load_state(&shared, CUSTOMER).unwrap().customer,
        current.customer
    );
}

//! Tests of the billing rules through `Customer::apply`, one rule each, including both seed
//! examples of the spec verbatim.

use rust_decimal::Decimal;

use super::contract::{CommitKind, InvoiceStatus, Limits, Release, ThresholdKind};
use super::customer::{Applied, CommitSpec, ContractEdit, Ctx, Customer, Input, ThresholdUpdate};
use super::effects::{Effect, PaymentAction, PaymentStatus, WebhookType};
use super::fixtures::{self, CONTRACT, CUSTOMER, T0};
use super::gate::{
    GateType, OutcomeSource, PaymentOutcome, PaymentResult, ProviderError, StripePaymentType,
    WorkflowKind, WorkflowState,
};
use super::ids::{Id, MS_PER_DAY, Timestamp};
use super::money::Money;
use super::rejection::Rejection;
use super::{Catalog, catalog::CatalogChange};

struct World {
    catalog: Catalog,
    limits: Limits,
    customer: Customer,
    at: Timestamp,
    tx: u64,
}

impl World {
    fn new(with_stripe: bool) -> World {
        let mut world = World {
            catalog: fixtures::catalog(),
            limits: Limits::default(),
            customer: Customer::default(),
            at: T0.plus_ms(MS_PER_DAY),
            tx: 0,
        };
        world
            .apply(Input::CreateCustomer(Box::new(fixtures::profile(
                CUSTOMER,
                with_stripe,
            ))))
            .unwrap();
        world
    }

    fn apply(&mut self, input: Input) -> Result<Applied, Rejection> {
        self.at = self.at.plus_ms(1_000);
        let ctx = Ctx {
            at: self.at,
            catalog: &self.catalog,
            catalog_version: self.catalog.version(),
            limits: &self.limits,
        };
        self.customer.apply(&input, &ctx)
    }

    fn calls(&mut self, n: usize) -> Vec<Effect> {
        let mut effects = Vec::new();
        for _ in 0..n {
            self.tx += 1;
            let event = fixtures::api_call(&format!("tx{}", self.tx), self.at);
            effects.extend(self.apply(Input::RecordUsage(event)).unwrap().effects);
        }
        effects
    }

    fn outcome(
        &mut self,
        workflow_id: Id,
        source: OutcomeSource,
        result: PaymentResult,
    ) -> Result<Applied, Rejection> {
        self.apply(Input::PaymentOutcome(PaymentOutcome {
            workflow_id,
            source,
            result,
            payment_intent_id: (source == OutcomeSource::Stripe).then(|| "pi_123".to_owned()),
        }))
    }

    /// Applies a Stripe outcome that must be accepted; the types of its effects.
    fn stripe_types(&mut self, workflow_id: Id, result: PaymentResult) -> Vec<&'static str> {
        let applied = self.outcome(workflow_id, OutcomeSource::Stripe, result);
        types(&applied.unwrap().effects)
    }

    fn contract(&self) -> &super::contract::Contract {
        &self.customer.contracts[0]
    }

    fn outstanding(&self) -> Money {
        self.contract().outstanding_spend().unwrap()
    }

    fn balance(&self) -> Money {
        self.contract().balance(self.at).unwrap()
    }
}

fn webhooks(effects: &[Effect]) -> Vec<(WebhookType, &super::effects::Webhook)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Webhook(w) => Some((w.webhook_type, w)),
            Effect::RequestPayment(_) | Effect::Notice(_) => None,
        })
        .collect()
}

/// The types of the gate's effects (lifecycle and rail notices are left out: see [`notices`]).
fn types(effects: &[Effect]) -> Vec<&'static str> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Webhook(w) => Some(w.webhook_type.as_str()),
            Effect::RequestPayment(_) => Some("request_payment"),
            Effect::Notice(_) => None,
        })
        .collect()
}

/// The notices among `effects`: their types and bodies.
fn notices(effects: &[Effect]) -> Vec<(&'static str, &serde_json::Value)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Notice(n) => Some((n.notice_type.as_str(), &n.body)),
            _ => None,
        })
        .collect()
}

fn usd(cents: i64) -> Money {
    Money::from_i64(cents)
}

#[test]
fn seed_usage_hits_100_dollars_invoice_payment_succeeds_commit_released_outstanding_back_to_zero() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.spend_threshold = Some(fixtures::spend_threshold(10_000, GateType::External));
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();

    // 99 calls at $1: $99 outstanding, below the threshold.
    assert!(world.calls(99).is_empty());
    assert_eq!(world.outstanding(), usd(9_900));

    // The 100th call: user hit $100 of usage.
    let effects = world.calls(1);
    assert_eq!(
        types(&effects),
        vec![
            "payment_gate.threshold_reached",
            "payment_gate.external_initiate"
        ]
    );
    let workflow = world.contract().workflows[0].clone();
    assert_eq!(workflow.kind, WorkflowKind::Spend);
    assert_eq!(workflow.state, WorkflowState::AwaitingExternal);
    // -> invoice: SCHEDULED purchase of $100 with the commit, unreleased.
    let purchase = &world.contract().purchases[0];
    assert_eq!(
        (purchase.total, purchase.status),
        (usd(10_000), InvoiceStatus::Finalized)
    );
    let commit = world.contract().commit(workflow.commit_id).unwrap();
    assert_eq!(
        commit.release,
        Release::Gated {
            workflow_id: workflow.id
        }
    );
    assert_eq!(commit.total_amount().unwrap(), usd(10_000));
    assert_eq!(
        world.outstanding(),
        usd(10_000),
        "unreleased commit covers nothing"
    );
    let initiate = webhooks(&effects)[1].1.to_json();
    assert_eq!(
        initiate["properties"]["invoice_total"],
        serde_json::json!(10_000)
    );
    assert_eq!(initiate["properties"]["invoice_currency"], "USD");
    assert_eq!(initiate["properties"]["workflow_type"], "spend");

    // -> payment succeeds -> commit released -> outstanding spend back to $0.
    let effects = world
        .outcome(workflow.id, OutcomeSource::External, PaymentResult::Paid)
        .unwrap()
        .effects;
    assert_eq!(types(&effects), vec!["payment_gate.payment_status"]);
    assert_eq!(
        webhooks(&effects)[0].1.payment_status,
        Some(PaymentStatus::Paid)
    );
    assert!(
        world
            .contract()
            .commit(workflow.commit_id)
            .unwrap()
            .is_released()
    );
    assert_eq!(world.outstanding(), Money::ZERO);
    assert_eq!(world.contract().workflows[0].state, WorkflowState::Released);
    let ledger: Vec<&str> = world
        .contract()
        .commit(workflow.commit_id)
        .unwrap()
        .ledger(|_| Some(CONTRACT), world.at)
        .iter()
        .map(|e| e.entry_type.as_str())
        .collect();
    assert_eq!(
        ledger,
        vec![
            "PREPAID_COMMIT_SEGMENT_START",
            "PREPAID_COMMIT_AUTOMATED_INVOICE_DEDUCTION"
        ]
    );
}

#[test]
fn seed_balance_fell_below_20_dollars_charge_brings_it_to_50_payment_succeeds_commit_released() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.commits = vec![fixtures::prepaid_commit(5_000, 10)];
    spec.prepaid_threshold = Some(fixtures::prepaid_threshold(
        2_000,
        5_000,
        GateType::External,
    ));
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    assert_eq!(world.balance(), usd(5_000));

    assert!(world.calls(29).is_empty());
    assert_eq!(world.balance(), usd(2_100));
    // The 30th call brings B to exactly $20: B <= threshold fires.
    assert_eq!(types(&world.calls(1)).len(), 2);
    let workflow = world.contract().workflows[0].clone();
    assert_eq!(workflow.kind, WorkflowKind::PrepaidBalance);
    assert_eq!(
        workflow.access_amount,
        usd(3_000),
        "charge to bring it to $50"
    );

    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.commits = vec![fixtures::prepaid_commit(5_000, 10)];
    spec.prepaid_threshold = Some(fixtures::prepaid_threshold(
        1_999,
        5_000,
        GateType::External,
    ));
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    assert!(world.calls(30).is_empty(), "$20.00 is not below $19.99");
    // Balance falls below $20 ...
    let effects = world.calls(1);
    assert_eq!(world.balance(), usd(1_900));
    assert_eq!(
        types(&effects),
        vec![
            "payment_gate.threshold_reached",
            "payment_gate.external_initiate"
        ]
    );
    assert_eq!(
        webhooks(&effects)[0].1.to_json()["properties"]["workflow_type"],
        "prepaid_balance"
    );
    // ... -> charge to bring it to $50 ...
    let workflow = world.contract().workflows[0].clone();
    assert_eq!(workflow.access_amount, usd(3_100));
    assert_eq!(workflow.invoice_total, usd(3_100));
    assert_eq!(
        world.balance(),
        usd(1_900),
        "the recharge is not usable before payment"
    );
    // ... -> payment succeeds -> commit released.
    world
        .outcome(workflow.id, OutcomeSource::External, PaymentResult::Paid)
        .unwrap();
    assert_eq!(world.balance(), usd(5_000));
    assert!(
        world
            .contract()
            .commit(workflow.commit_id)
            .unwrap()
            .is_released()
    );
}

#[test]
fn none_gate_releases_at_once_without_payment_status() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.spend_threshold = Some(fixtures::spend_threshold(500, GateType::None));
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    let effects = world.calls(5);
    assert_eq!(types(&effects), vec!["payment_gate.threshold_reached"]);
    assert_eq!(world.contract().workflows[0].state, WorkflowState::Released);
    assert_eq!(world.outstanding(), Money::ZERO);
    // Later usage draws from the released commit first... it is fully used; S grows again.
    world.calls(3);
    assert_eq!(world.outstanding(), usd(300));
}

/// SPEC 2.1: events for an archived customer are accepted and not billed; usage from before
/// the archive stays billed (found by the simulation: it was billed).
#[test]
fn usage_of_an_archived_customer_is_accepted_and_not_billed() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.spend_threshold = Some(fixtures::spend_threshold(500, GateType::None));
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    world.calls(3);
    assert_eq!(world.outstanding(), usd(300));
    world.apply(Input::ArchiveCustomer).unwrap();
    let effects = world.calls(4);
    assert!(effects.is_empty(), "{:?}", types(&effects));
    assert_eq!(world.outstanding(), usd(300));
    assert!(world.contract().workflows.is_empty());
}

/// An event accepted before the archive but applied after it (re-applied from quarantine,
/// released after its alias appeared) is billed as of its acceptance; one accepted at or
/// after the archive is not (found by the simulation: a re-applied event went unbilled).
#[test]
fn usage_accepted_before_the_archive_and_applied_after_it_is_billed() {
    let mut world = World::new(false);
    world
        .apply(Input::CreateContract(Box::new(fixtures::contract(
            CONTRACT,
        ))))
        .unwrap();
    let accepted = world.at;
    world.apply(Input::ArchiveCustomer).unwrap();
    let archived = world.at;
    let mut at = |at: Timestamp, txn: &str| {
        let ctx = Ctx {
            at,
            catalog: &world.catalog,
            catalog_version: world.catalog.version(),
            limits: &world.limits,
        };
        let event = fixtures::api_call(txn, at);
        world
            .customer
            .apply(&Input::RecordUsage(event), &ctx)
            .unwrap();
    };
    at(accepted, "before");
    at(archived, "at");
    at(archived.plus_ms(1), "after");
    assert_eq!(
        world.outstanding(),
        usd(100),
        "only the one accepted before"
    );
}

#[test]
fn usage_crossing_threshold_while_a_workflow_is_in_flight_charges_once() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.spend_threshold = Some(fixtures::spend_threshold(1_000, GateType::External));
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    let first = world.calls(10);
    assert_eq!(types(&first).len(), 2);
    // Far past the threshold again while in flight: nothing new.
    assert!(world.calls(50).is_empty());
    assert_eq!(world.contract().workflows.len(), 1);
    let workflow = world.contract().workflows[0].clone();
    assert_eq!(workflow.access_amount, usd(1_000));
    // It ends: the commit covers its $10, $50 remain outstanding and the next evaluation (at
    // the end of the workflow) decides again.
    let effects = world
        .outcome(workflow.id, OutcomeSource::External, PaymentResult::Paid)
        .unwrap()
        .effects;
    assert_eq!(
        types(&effects),
        vec![
            "payment_gate.payment_status",
            "payment_gate.threshold_reached",
            "payment_gate.external_initiate"
        ]
    );
    assert_eq!(world.contract().workflows.len(), 2);
    assert_eq!(world.contract().workflows[1].access_amount, usd(5_000));
    assert_ne!(world.contract().workflows[1].id, workflow.id);
}

#[test]
fn failed_payment_voids_invoice_cancels_commit_and_disables_the_configuration() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.commits = vec![fixtures::prepaid_commit(5_000, 10)];
    spec.prepaid_threshold = Some(fixtures::prepaid_threshold(
        1_000,
        5_000,
        GateType::External,
    ));
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    world.calls(40);
    let workflow = world.contract().workflows[0].clone();
    let effects = world
        .outcome(
            workflow.id,
            OutcomeSource::External,
            PaymentResult::Failed { error: None },
        )
        .unwrap()
        .effects;
    assert_eq!(types(&effects), vec!["payment_gate.payment_status"]);
    assert_eq!(
        webhooks(&effects)[0].1.payment_status,
        Some(PaymentStatus::Failed)
    );
    let contract = world.contract();
    assert_eq!(contract.workflows[0].state, WorkflowState::Failed);
    assert_eq!(
        contract.purchases.last().unwrap().status,
        InvoiceStatus::Void
    );
    let commit = contract.commit(workflow.commit_id).unwrap();
    assert!(matches!(commit.release, Release::Canceled { .. }));
    assert_eq!(
        commit.ledger(|_| Some(CONTRACT), world.at)[0]
            .entry_type
            .as_str(),
        "PREPAID_COMMIT_CANCELED"
    );
    assert!(!contract.prepaid_threshold.as_ref().unwrap().is_enabled);
    // No automatic retry: more usage does nothing.
    assert!(world.calls(5).is_empty());
    // A repeated outcome changes nothing.
    assert_eq!(
        world.outcome(workflow.id, OutcomeSource::External, PaymentResult::Paid),
        Err(Rejection::WorkflowAlreadyEnded)
    );
    // Re-enabling evaluates at once and starts a new attempt.
    let applied = world
        .apply(Input::edit(ContractEdit {
            edit_id: Id::from_u128(77),
            contract_id: CONTRACT,
            update_prepaid_threshold: Some(ThresholdUpdate {
                is_enabled: Some(true),
                ..ThresholdUpdate::default()
            }),
            ..ContractEdit::default()
        }))
        .unwrap();
    assert_eq!(
        types(&applied.effects),
        vec![
            "payment_gate.threshold_reached",
            "payment_gate.external_initiate"
        ]
    );
    assert_eq!(world.contract().workflows.len(), 2);
}

#[test]
fn stripe_gate_requests_payment_and_reports_action_required_once() {
    let mut world = World::new(true);
    let mut spec = fixtures::contract(CONTRACT);
    spec.spend_threshold = Some(fixtures::spend_threshold(500, GateType::Stripe));
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    let effects = world.calls(5);
    assert_eq!(
        types(&effects),
        vec!["payment_gate.threshold_reached", "request_payment"]
    );
    let Effect::RequestPayment(request) = &effects[1] else {
        unreachable!()
    };
    assert_eq!(request.amount, usd(500));
    assert_eq!(request.stripe_customer_id, "cus_test");
    let workflow_id = request.workflow_id;
    assert_eq!(world.contract().workflows[0].state, WorkflowState::Charging);

    let action = PaymentResult::ActionRequired {
        error_message: Some("three_d_secure_redirect".into()),
        timeout_ms: 86_400_000,
    };
    let effects = world
        .outcome(workflow_id, OutcomeSource::Stripe, action.clone())
        .unwrap()
        .effects;
    assert_eq!(
        types(&effects),
        vec!["payment_gate.payment_pending_action_required"]
    );
    let body = webhooks(&effects)[0].1.to_json();
    assert_eq!(
        body["properties"]["billing_provider"]["stripe"]["payment_intent_id"],
        "pi_123"
    );
    assert!(
        world
            .outcome(workflow_id, OutcomeSource::Stripe, action)
            .unwrap()
            .effects
            .is_empty()
    );
    assert_eq!(
        world.outcome(workflow_id, OutcomeSource::External, PaymentResult::Paid),
        Err(Rejection::WorkflowGateMismatch)
    );
    let effects = world
        .outcome(workflow_id, OutcomeSource::Stripe, PaymentResult::Paid)
        .unwrap()
        .effects;
    // The release also closes the charge at the payment actor (its outbox entry is retired).
    assert_eq!(
        types(&effects),
        vec!["request_payment", "payment_gate.payment_status"]
    );
    let Effect::RequestPayment(close) = &effects[0] else {
        unreachable!()
    };
    assert_eq!(close.action, PaymentAction::Close { cancel: false });
    assert_eq!(world.outstanding(), Money::ZERO);
}

#[test]
fn action_required_fails_at_the_logged_deadline_and_money_arriving_afterwards_is_refunded_once() {
    let mut world = World::new(true);
    let mut spec = fixtures::contract(CONTRACT);
    spec.spend_threshold = Some(fixtures::spend_threshold(500, GateType::Stripe));
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    world.calls(5);
    let workflow_id = world.contract().workflows[0].id;
    let pending = PaymentResult::Pending {
        object_id: "pi_123".into(),
    };
    let applied = world.outcome(workflow_id, OutcomeSource::Stripe, pending);
    assert!(applied.unwrap().effects.is_empty());
    // The limit travels with the logged outcome (2 h here), never from the config.
    let action = PaymentResult::ActionRequired {
        error_message: None,
        timeout_ms: 2 * 3_600_000,
    };
    world
        .outcome(workflow_id, OutcomeSource::Stripe, action.clone())
        .unwrap();
    world.at = world.at.plus_ms(3_600_000);
    assert!(world.apply(Input::Tick).unwrap().effects.is_empty());
    assert_eq!(
        world.contract().workflows[0].state,
        WorkflowState::ActionRequired
    );
    world.at = world.at.plus_ms(3_600_000);
    let effects = world.apply(Input::Tick).unwrap().effects;
    assert_eq!(
        types(&effects),
        vec!["request_payment", "payment_gate.payment_status"]
    );
    let Effect::RequestPayment(close) = &effects[0] else {
        unreachable!()
    };
    assert_eq!(close.action, PaymentAction::Close { cancel: true });
    assert_eq!(close.object_id.as_deref(), Some("pi_123"));
    let body = webhooks(&effects)[0].1.to_json();
    assert_eq!(
        body["properties"]["billing_provider"]["stripe"]["error"]["code"],
        "action_required_timeout"
    );
    assert_eq!(world.contract().workflows[0].state, WorkflowState::Failed);
    // The customer completed 3DS after all: the money goes back, the workflow stays FAILED.
    let effects = world
        .outcome(workflow_id, OutcomeSource::Stripe, PaymentResult::Paid)
        .unwrap()
        .effects;
    assert_eq!(types(&effects), vec!["request_payment"]);
    let Effect::RequestPayment(refund) = &effects[0] else {
        unreachable!()
    };
    assert_eq!(refund.action, PaymentAction::Refund);
    assert_eq!(
        world.outcome(workflow_id, OutcomeSource::Stripe, PaymentResult::Paid),
        Err(Rejection::WorkflowAlreadyEnded)
    );
    let refunded = PaymentResult::Refunded {
        refund_id: "re_1".into(),
    };
    let effects = world
        .outcome(workflow_id, OutcomeSource::Stripe, refunded.clone())
        .unwrap()
        .effects;
    assert_eq!(types(&effects), vec!["payment_gate.payment_refunded"]);
    let body = webhooks(&effects)[0].1.to_json();
    assert_eq!(
        body["properties"]["billing_provider"]["stripe"]["refund_id"],
        "re_1"
    );
    assert_eq!(
        world.outcome(workflow_id, OutcomeSource::Stripe, refunded),
        Err(Rejection::WorkflowAlreadyEnded)
    );
    assert_eq!(world.contract().workflows[0].state, WorkflowState::Failed);
    let commit_id = world.contract().workflows[0].commit_id;
    let commit = world.contract().commits.iter().find(|c| c.id == commit_id);
    assert!(
        !commit.unwrap().is_released(),
        "a FAILED workflow is never released"
    );
}

/// A STRIPE workflow whose charge is CHARGING: its workflow id.
fn stripe_charging(world: &mut World) -> Id {
    let mut spec = fixtures::contract(CONTRACT);
    spec.spend_threshold = Some(fixtures::spend_threshold(500, GateType::Stripe));
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    world.calls(5);
    world.contract().workflows[0].id
}

/// Reports of the charge's object while CHARGING (a poll and a webhook) are both taken, and
/// each entry into ACTION_REQUIRED is announced once, repeats (polls) not (found by mutation
/// testing).
#[test]
fn action_required_after_the_payment_intent_was_reported_is_announced_once() {
    let mut world = World::new(true);
    let workflow_id = stripe_charging(&mut world);
    let pending = PaymentResult::Pending {
        object_id: "pi_123".into(),
    };
    for _ in 0..2 {
        // Reported twice while CHARGING (a poll and a webhook): both are fine.
        let applied = world.outcome(workflow_id, OutcomeSource::Stripe, pending.clone());
        assert!(applied.is_ok(), "{applied:?}");
    }
    assert_eq!(
        world.contract().workflows[0].charge.object_id.as_deref(),
        Some("pi_123")
    );
    let action = PaymentResult::ActionRequired {
        error_message: None,
        timeout_ms: 86_400_000,
    };
    let announced = vec!["payment_gate.payment_pending_action_required"];
    assert_eq!(world.stripe_types(workflow_id, action.clone()), announced);
    assert!(world.stripe_types(workflow_id, action.clone()).is_empty());
    // The customer authenticated (processing: CHARGING again), then Stripe asks for another
    // action on the same PaymentIntent: a new entry into ACTION_REQUIRED is announced again.
    assert!(world.stripe_types(workflow_id, pending).is_empty());
    assert_eq!(world.contract().workflows[0].state, WorkflowState::Charging);
    assert_eq!(world.stripe_types(workflow_id, action), announced);
}

/// Every ACTION_REQUIRED notice of one workflow has an id of its own (a consumer dedupes by
/// id): the first, another PaymentIntent while still waiting, and a new entry after the
/// customer's attempt went back to processing (found by the simulation: one id, two bodies).
#[test]
fn each_action_required_notice_has_its_own_webhook_id() {
    let mut world = World::new(true);
    let workflow_id = stripe_charging(&mut world);
    let action = PaymentResult::ActionRequired {
        error_message: None,
        timeout_ms: 86_400_000,
    };
    let notice = |world: &mut World, intent: &str, result: PaymentResult| {
        let applied = world
            .apply(Input::PaymentOutcome(PaymentOutcome {
                workflow_id,
                source: OutcomeSource::Stripe,
                result,
                payment_intent_id: Some(intent.to_owned()),
            }))
            .unwrap();
        webhooks(&applied.effects)
            .into_iter()
            .filter(|(t, _)| *t == WebhookType::PaymentPendingActionRequired)
            .map(|(_, hook)| hook.id)
            .collect::<Vec<_>>()
    };
    let first = notice(&mut world, "pi_1", action.clone());
    assert!(
        notice(&mut world, "pi_1", action.clone()).is_empty(),
        "a poll"
    );
    let second = notice(&mut world, "pi_2", action.clone());
    let pending = PaymentResult::Pending {
        object_id: "pi_2".into(),
    };
    assert!(notice(&mut world, "pi_2", pending).is_empty());
    let third = notice(&mut world, "pi_2", action);
    let ids: Vec<Id> = [first, second, third].concat();
    assert_eq!(ids.len(), 3, "three notices: {ids:?}");
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "each with its own id: {ids:?}");
    // The first keeps the id earlier versions gave it.
    assert_eq!(
        ids[0],
        Id::derive(
            workflow_id,
            "payment_gate.payment_pending_action_required",
            0
        )
    );
    let history: Vec<WorkflowState> = world
        .customer
        .history_of(workflow_id)
        .iter()
        .map(|c| c.state)
        .collect();
    assert_eq!(
        history,
        [
            WorkflowState::Initiated,
            WorkflowState::Charging,
            WorkflowState::ActionRequired,
            WorkflowState::ActionRequired,
            WorkflowState::Charging,
            WorkflowState::ActionRequired
        ]
    );
}

/// An integrator's release never touches a STRIPE workflow, not even a FAILED one (no refund,
/// no release); a late report of the PaymentIntent of a FAILED workflow is kept for a refund.
#[test]
fn a_failed_stripe_workflow_ignores_external_releases_and_keeps_a_late_object_id() {
    let mut world = World::new(true);
    let workflow_id = stripe_charging(&mut world);
    // Declined before Tollgate learned the PaymentIntent's id (a webhook without it).
    world
        .apply(Input::PaymentOutcome(PaymentOutcome {
            workflow_id,
            source: OutcomeSource::Stripe,
            result: PaymentResult::Failed { error: None },
            payment_intent_id: None,
        }))
        .unwrap();
    assert_eq!(world.contract().workflows[0].state, WorkflowState::Failed);
    assert_eq!(world.contract().workflows[0].charge.object_id, None);
    for result in [PaymentResult::Paid, PaymentResult::Failed { error: None }] {
        let refused = world.outcome(workflow_id, OutcomeSource::External, result);
        assert!(refused.is_err(), "{refused:?}");
    }
    let workflow = &world.contract().workflows[0];
    assert_eq!(workflow.state, WorkflowState::Failed);
    assert_eq!(workflow.charge.refund, None);
    let late = PaymentResult::Pending {
        object_id: "pi_late".into(),
    };
    let noted = world.outcome(workflow_id, OutcomeSource::Stripe, late.clone());
    assert!(noted.unwrap().effects.is_empty());
    assert_eq!(
        world.contract().workflows[0].charge.object_id.as_deref(),
        Some("pi_late")
    );
    assert_eq!(
        world.outcome(workflow_id, OutcomeSource::Stripe, late),
        Err(Rejection::WorkflowAlreadyEnded)
    );
}

/// Which object a STRIPE workflow keeps for later (cancel, refund): a PAYMENT_INTENT gate keeps
/// the PaymentIntent an outcome names; an INVOICE gate only the invoice a `Pending` reports,
/// never a PaymentIntent (found by mutation testing).
#[test]
fn a_stripe_workflow_keeps_the_object_of_its_payment_type() {
    for payment_type in [StripePaymentType::PaymentIntent, StripePaymentType::Invoice] {
        let mut world = World::new(true);
        let mut spec = fixtures::contract(CONTRACT);
        let mut threshold = fixtures::spend_threshold(500, GateType::Stripe);
        if let Some(stripe) = threshold.gate.stripe.as_mut() {
            stripe.payment_type = payment_type;
        }
        spec.spend_threshold = Some(threshold);
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        world.calls(5);
        let workflow_id = world.contract().workflows[0].id;
        let action = PaymentResult::ActionRequired {
            error_message: None,
            timeout_ms: 86_400_000,
        };
        // `outcome` names PaymentIntent pi_123.
        world
            .outcome(workflow_id, OutcomeSource::Stripe, action)
            .unwrap();
        let kept = world.contract().workflows[0].charge.object_id.clone();
        match payment_type {
            StripePaymentType::PaymentIntent => assert_eq!(kept.as_deref(), Some("pi_123")),
            StripePaymentType::Invoice => {
                assert_eq!(kept, None);
                let pending = PaymentResult::Pending {
                    object_id: "in_1".into(),
                };
                world
                    .outcome(workflow_id, OutcomeSource::Stripe, pending)
                    .unwrap();
                assert_eq!(
                    world.contract().workflows[0].charge.object_id.as_deref(),
                    Some("in_1")
                );
            }
        }
    }
}

/// The payment actor's ACTION_REQUIRED repeat logged after the deadline ends the workflow at
/// once, without waiting for the next tick (found by mutation testing: only the tick was tested).
#[test]
fn an_action_required_repeat_past_the_deadline_fails_the_workflow_at_once() {
    let mut world = World::new(true);
    let workflow_id = stripe_charging(&mut world);
    let action = PaymentResult::ActionRequired {
        error_message: None,
        timeout_ms: 3_600_000,
    };
    world.stripe_types(workflow_id, action.clone());
    world.at = world.at.plus_ms(3_600_000);
    assert_eq!(
        world.stripe_types(workflow_id, action),
        vec!["request_payment", "payment_gate.payment_status"]
    );
    assert_eq!(world.contract().workflows[0].state, WorkflowState::Failed);
}

/// A contract's `uniqueness_key` is unique per customer: reusing it is refused and changes
/// nothing; another key is fine (found by mutation testing: only the API tests covered it).
#[test]
fn a_reused_uniqueness_key_is_refused() {
    let mut world = World::new(false);
    let mut first = fixtures::contract(CONTRACT);
    first.uniqueness_key = Some("order-1".into());
    world.apply(Input::CreateContract(Box::new(first))).unwrap();
    let mut again = fixtures::contract(Id::from_u128(0xc2));
    again.uniqueness_key = Some("order-1".into());
    assert_eq!(
        world.apply(Input::CreateContract(Box::new(again))),
        Err(Rejection::UniquenessKeyReused)
    );
    assert_eq!(world.customer.contracts.len(), 1);
    let mut other = fixtures::contract(Id::from_u128(0xc3));
    other.uniqueness_key = Some("order-2".into());
    world.apply(Input::CreateContract(Box::new(other))).unwrap();
    assert_eq!(world.customer.contracts.len(), 2);
}

#[test]
fn stripe_decline_code_reaches_the_payment_status_webhook() {
    let mut world = World::new(true);
    let mut spec = fixtures::contract(CONTRACT);
    spec.spend_threshold = Some(fixtures::spend_threshold(500, GateType::Stripe));
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    world.calls(5);
    let workflow_id = world.contract().workflows[0].id;
    let error = ProviderError {
        error_type: Some("card_error".into()),
        code: Some("card_declined".into()),
        decline_code: Some("insufficient_funds".into()),
        message: Some("Your card has insufficient funds.".into()),
    };
    let effects = world
        .outcome(
            workflow_id,
            OutcomeSource::Stripe,
            PaymentResult::Failed { error: Some(error) },
        )
        .unwrap()
        .effects;
    let body = webhooks(&effects)[0].1.to_json();
    assert_eq!(body["properties"]["payment_status"], "failed");
    assert_eq!(
        body["properties"]["billing_provider"]["stripe"]["error"]["decline_code"],
        "insufficient_funds"
    );
    assert_eq!(
        body["properties"]["error_message"],
        "Your card has insufficient funds."
    );
}

#[test]
fn a_stripe_gate_needs_the_customers_stripe_configuration() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.spend_threshold = Some(fixtures::spend_threshold(500, GateType::Stripe));
    assert_eq!(
        world.apply(Input::CreateContract(Box::new(spec))),
        Err(Rejection::StripeNotConfigured)
    );
    assert!(world.customer.contracts.is_empty());
}

#[test]
fn payment_gated_commit_is_withheld_until_paid_without_threshold_reached() {
    let mut world = World::new(false);
    world
        .apply(Input::CreateContract(Box::new(fixtures::contract(
            CONTRACT,
        ))))
        .unwrap();
    let mut commit = fixtures::prepaid_commit(2_000, 10);
    commit.payment_gate = Some(fixtures::gate(GateType::External));
    let applied = world
        .apply(Input::edit(ContractEdit {
            edit_id: Id::from_u128(5),
            contract_id: CONTRACT,
            uniqueness_key: Some("purchase-123".into()),
            add_commits: vec![commit.clone()],
            ..ContractEdit::default()
        }))
        .unwrap();
    assert_eq!(
        types(&applied.effects),
        vec!["payment_gate.external_initiate"]
    );
    assert_eq!(applied.created.len(), 1);
    let body = webhooks(&applied.effects)[0].1.to_json();
    assert_eq!(body["properties"]["workflow_type"], "manual_commit");
    assert_eq!(
        body["properties"]["invoice_total"],
        serde_json::json!(2_000)
    );
    assert_eq!(world.balance(), Money::ZERO);
    let workflow_id = world.contract().workflows[0].id;
    world
        .outcome(workflow_id, OutcomeSource::External, PaymentResult::Paid)
        .unwrap();
    assert_eq!(world.balance(), usd(2_000));
    // The same uniqueness key again: 409, nothing added.
    let again = world.apply(Input::edit(ContractEdit {
        edit_id: Id::from_u128(6),
        contract_id: CONTRACT,
        uniqueness_key: Some("purchase-123".into()),
        add_commits: vec![commit],
        ..ContractEdit::default()
    }));
    assert_eq!(again, Err(Rejection::UniquenessKeyReused));
    assert_eq!(world.contract().commits.len(), 1);
}

#[test]
fn released_commits_draw_free_before_paid_and_cover_spend() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.commits = vec![fixtures::prepaid_commit(300, 10)];
    spec.credits = vec![fixtures::credit(200, 10)];
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    world.calls(3);
    let contract = world.contract();
    let remaining: Vec<Money> = contract
        .commits
        .iter()
        .map(|c| c.balance_at(world.at).unwrap())
        .collect();
    assert_eq!(
        remaining,
        vec![usd(200), Money::ZERO],
        "the free credit drains first"
    );
    assert_eq!(world.outstanding(), Money::ZERO);
    world.calls(3);
    assert_eq!(world.outstanding(), usd(100));
    assert_eq!(world.balance(), Money::ZERO);
}

#[test]
fn tiered_rates_charge_the_period_total_across_tiers() {
    let mut world = World::new(false);
    world
        .apply(Input::CreateContract(Box::new(fixtures::contract(
            CONTRACT,
        ))))
        .unwrap();
    let at = world.at;
    world
        .apply(Input::RecordUsage(fixtures::llm_tokens("a", at, "600")))
        .unwrap();
    world
        .apply(Input::RecordUsage(fixtures::llm_tokens("b", at, "900.5")))
        .unwrap();
    // 1000 at 2 cents + 500.5 at 1 cent.
    assert_eq!(world.outstanding(), Money::parse("2500.5").unwrap());
    // A negative SUM value lowers the charge.
    world
        .apply(Input::RecordUsage(fixtures::llm_tokens("c", at, "-500.5")))
        .unwrap();
    assert_eq!(world.outstanding(), usd(2_000));
}

#[test]
fn a_negative_usage_value_gives_drawn_balance_back() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.credits = vec![fixtures::credit(10_000, 1)];
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    let at = world.at;
    world
        .apply(Input::RecordUsage(fixtures::llm_tokens("a", at, "100")))
        .unwrap();
    assert_eq!(world.balance(), usd(9_800));
    world
        .apply(Input::RecordUsage(fixtures::llm_tokens("b", at, "-40")))
        .unwrap();
    assert_eq!(world.balance(), usd(9_880));
    assert_eq!(world.outstanding(), Money::ZERO);
}

#[test]
fn discount_lowers_the_invoice_not_the_access_amount() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    let mut config = fixtures::prepaid_threshold(500, 5_000, GateType::External);
    config.discount = Some(fixtures::discount("0.9"));
    spec.prepaid_threshold = Some(config);
    // No balance at all: B = 0 <= $5 fires at creation.
    let applied = world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    assert_eq!(types(&applied.effects).len(), 2);
    let workflow = &world.contract().workflows[0];
    assert_eq!(workflow.access_amount, usd(5_000));
    assert_eq!(workflow.invoice_total, usd(4_500));
}

#[test]
fn threshold_configurations_are_validated() {
    let cases: Vec<(super::contract::ThresholdConfig, Rejection)> = vec![
        (
            fixtures::prepaid_threshold(499, 5_000, GateType::None),
            Rejection::ThresholdTooLow("500".into()),
        ),
        (
            fixtures::prepaid_threshold(500, 1_499, GateType::None),
            Rejection::RechargeGapTooSmall("1000".into()),
        ),
        (
            {
                let mut c = fixtures::prepaid_threshold(500, 5_000, GateType::None);
                c.recharge_to_amount = None;
                c
            },
            Rejection::MissingField("prepaid_balance_threshold_configuration.recharge_to_amount"),
        ),
        (
            fixtures::spend_threshold(0, GateType::None),
            Rejection::InvalidField(
                "spend_threshold_configuration.threshold_amount: must be positive".into(),
            ),
        ),
        (
            {
                let mut c = fixtures::spend_threshold(100, GateType::None);
                c.commit.applicable_product_ids = vec![fixtures::API_PRODUCT];
                c
            },
            Rejection::InvalidField(
                "spend_threshold_configuration.commit: spend threshold commits apply to all products"
                    .into(),
            ),
        ),
        (
            {
                let mut c = fixtures::spend_threshold(100, GateType::None);
                c.commit.product_id = fixtures::API_PRODUCT;
                c
            },
            Rejection::WrongProductType("commit.product_id must be a FIXED product".into()),
        ),
        (
            {
                let mut c = fixtures::spend_threshold(100, GateType::None);
                c.discount = Some(fixtures::discount("1.5"));
                c
            },
            Rejection::InvalidField(
                "spend_threshold_configuration.discount_configuration.payment_fraction: must be in (0, 1]"
                    .into(),
            ),
        ),
    ];
    for (config, expected) in cases {
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        match config.kind {
            ThresholdKind::Spend => spec.spend_threshold = Some(config),
            ThresholdKind::PrepaidBalance => spec.prepaid_threshold = Some(config),
        }
        assert_eq!(
            world.apply(Input::CreateContract(Box::new(spec))),
            Err(expected)
        );
        assert!(world.customer.contracts.is_empty());
    }
    // The limits are configuration.
    let mut world = World::new(false);
    world.limits.prepaid_threshold_min_usd_cents = usd(100);
    let mut spec = fixtures::contract(CONTRACT);
    spec.prepaid_threshold = Some(fixtures::prepaid_threshold(200, 5_000, GateType::None));
    assert!(world.apply(Input::CreateContract(Box::new(spec))).is_ok());
}

#[test]
fn rejected_edits_change_nothing() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.spend_threshold = Some(fixtures::spend_threshold(10_000, GateType::External));
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    world.calls(3);
    let before = world.customer.clone();
    let bad_edits = vec![
        (
            ContractEdit {
                add_spend_threshold: Some(fixtures::spend_threshold(100, GateType::None)),
                ..ContractEdit::default()
            },
            Rejection::ThresholdConfigExists("spend"),
        ),
        (
            ContractEdit {
                update_prepaid_threshold: Some(ThresholdUpdate::default()),
                ..ContractEdit::default()
            },
            Rejection::ThresholdConfigMissing("prepaid balance"),
        ),
        (
            ContractEdit {
                // A valid threshold update plus an invalid commit: the whole edit is refused.
                update_spend_threshold: Some(ThresholdUpdate {
                    threshold_amount: Some(usd(100)),
                    ..ThresholdUpdate::default()
                }),
                add_commits: vec![{
                    let mut c = fixtures::prepaid_commit(100, 1);
                    c.access_schedule.clear();
                    c
                }],
                ..ContractEdit::default()
            },
            Rejection::InvalidField(
                "add_commits[0].access_schedule.schedule_items: at least one item is required"
                    .into(),
            ),
        ),
    ];
    for (mut edit, expected) in bad_edits {
        edit.contract_id = CONTRACT;
        assert_eq!(world.apply(Input::edit(edit)), Err(expected));
        assert_eq!(world.customer, before);
    }
    let unknown = ContractEdit {
        contract_id: Id::from_u128(1),
        ..ContractEdit::default()
    };
    assert_eq!(
        world.apply(Input::edit(unknown)),
        Err(Rejection::ContractNotFound)
    );
    assert_eq!(
        world.outcome(
            Id::from_u128(9),
            OutcomeSource::External,
            PaymentResult::Paid
        ),
        Err(Rejection::WorkflowNotFound)
    );
    assert_eq!(world.customer, before);
}

#[test]
fn lowering_the_threshold_evaluates_at_once() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.spend_threshold = Some(fixtures::spend_threshold(10_000, GateType::None));
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    world.calls(3);
    let applied = world
        .apply(Input::edit(ContractEdit {
            contract_id: CONTRACT,
            update_spend_threshold: Some(ThresholdUpdate {
                threshold_amount: Some(usd(200)),
                ..ThresholdUpdate::default()
            }),
            ..ContractEdit::default()
        }))
        .unwrap();
    assert_eq!(
        types(&applied.effects),
        vec!["payment_gate.threshold_reached"]
    );
    assert_eq!(world.outstanding(), Money::ZERO);
}

#[test]
fn disabling_stops_evaluation_but_lets_the_in_flight_workflow_finish() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.spend_threshold = Some(fixtures::spend_threshold(500, GateType::External));
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    world.calls(5);
    let workflow_id = world.contract().workflows[0].id;
    world
        .apply(Input::edit(ContractEdit {
            contract_id: CONTRACT,
            update_spend_threshold: Some(ThresholdUpdate {
                is_enabled: Some(false),
                ..ThresholdUpdate::default()
            }),
            ..ContractEdit::default()
        }))
        .unwrap();
    world.calls(20);
    let effects = world
        .outcome(workflow_id, OutcomeSource::External, PaymentResult::Paid)
        .unwrap()
        .effects;
    assert_eq!(types(&effects), vec!["payment_gate.payment_status"]);
    assert_eq!(world.contract().workflows.len(), 1);
    assert_eq!(world.outstanding(), usd(2_000));
}

#[test]
fn periods_close_after_the_grace_and_leave_outstanding_spend() {
    let mut world = World::new(false);
    world
        .apply(Input::CreateContract(Box::new(fixtures::contract(
            CONTRACT,
        ))))
        .unwrap();
    world.calls(2);
    assert_eq!(world.outstanding(), usd(200));
    world.at = Timestamp::parse_rfc3339("2025-02-15T00:00:00Z").unwrap();
    world.apply(Input::Tick).unwrap();
    assert_eq!(
        world.outstanding(),
        usd(200),
        "January stays draft during the grace"
    );
    world.at = Timestamp::parse_rfc3339("2025-03-07T00:00:00Z").unwrap();
    world.apply(Input::Tick).unwrap();
    assert_eq!(world.contract().periods[0].status, InvoiceStatus::Finalized);
    assert_eq!(world.outstanding(), Money::ZERO);
}

#[test]
fn purchase_invoices_void_only_when_no_payment_is_in_flight() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.commits = vec![fixtures::prepaid_commit(1_000, 1)];
    spec.spend_threshold = Some(fixtures::spend_threshold(500, GateType::External));
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    world.calls(20);
    let purchases = world.contract().purchases.clone();
    let gated = purchases
        .iter()
        .find(|p| p.workflow_id.is_some())
        .unwrap()
        .id;
    let plain = purchases
        .iter()
        .find(|p| p.workflow_id.is_none())
        .unwrap()
        .id;
    assert!(matches!(
        world.apply(Input::VoidInvoice { invoice_id: gated }),
        Err(Rejection::InvoiceNotVoidable(_))
    ));
    world
        .apply(Input::VoidInvoice { invoice_id: plain })
        .unwrap();
    assert_eq!(
        world.apply(Input::VoidInvoice { invoice_id: plain }),
        Err(Rejection::InvoiceNotVoidable("already void"))
    );
    let usage_invoice = world.contract().periods[0].invoice_id;
    assert!(matches!(
        world.apply(Input::VoidInvoice {
            invoice_id: usage_invoice
        }),
        Err(Rejection::InvoiceNotVoidable(_))
    ));
    assert_eq!(
        world.apply(Input::VoidInvoice {
            invoice_id: Id::from_u128(3)
        }),
        Err(Rejection::InvoiceNotFound)
    );
}

#[test]
fn rates_added_after_an_input_do_not_change_its_replay() {
    let mut world = World::new(false);
    world
        .apply(Input::CreateContract(Box::new(fixtures::contract(
            CONTRACT,
        ))))
        .unwrap();
    let version = world.catalog.version();
    world
        .catalog
        .apply(CatalogChange::AddRates {
            rate_card_id: fixtures::RATE_CARD,
            rates: vec![super::catalog::Rate {
                product_id: fixtures::API_PRODUCT,
                price: super::catalog::Price::Flat(usd(7)),
                entitled: true,
                starting_at: T0,
                ending_before: None,
                credit_type_id: super::money::CreditType::usd_cents().id,
                added_in_version: 0,
            }],
        })
        .unwrap();
    let ctx = Ctx {
        at: world.at,
        catalog: &world.catalog,
        catalog_version: version,
        limits: &world.limits,
    };
    world
        .customer
        .apply(&Input::RecordUsage(fixtures::api_call("x", world.at)), &ctx)
        .unwrap();
    assert_eq!(world.outstanding(), usd(100));
    world.calls(1);
    assert_eq!(world.outstanding(), usd(107));
}

#[test]
fn webhook_bodies_have_metronome_shape_and_stable_ids() {
    let run = || {
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        spec.spend_threshold = Some(fixtures::spend_threshold(100, GateType::External));
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        world.calls(1)
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b, "same inputs, same effects and ids");
    let body = webhooks(&a)[0].1.to_json();
    assert_eq!(body["type"], "payment_gate.threshold_reached");
    assert_eq!(body["properties"]["customer_id"], CUSTOMER.to_string());
    assert_eq!(body["properties"]["contract_id"], CONTRACT.to_string());
    assert!(
        body["properties"]["timestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(Id::parse(body["id"].as_str().unwrap()).is_some());
    let ids: Vec<Id> = a.iter().map(Effect::id).collect();
    assert_ne!(ids[0], ids[1]);
}

#[test]
fn usage_outside_the_contract_or_matching_no_metric_is_ignored() {
    let mut world = World::new(false);
    world
        .apply(Input::CreateContract(Box::new(fixtures::contract(
            CONTRACT,
        ))))
        .unwrap();
    let before = world.customer.clone();
    let early = fixtures::api_call("early", T0.plus_ms(-1));
    world.apply(Input::RecordUsage(early)).unwrap();
    let mut unknown = fixtures::api_call("other", world.at);
    unknown.event_type = "page_view".into();
    world.apply(Input::RecordUsage(unknown)).unwrap();
    let bad_sum = fixtures::llm_tokens("bad", world.at, "lots");
    world.apply(Input::RecordUsage(bad_sum)).unwrap();
    // Nothing changed but the lifecycle's clock (every input moves it).
    let mut after = world.customer.clone();
    for (contract, was) in after.contracts.iter_mut().zip(&before.contracts) {
        let lifecycle = contract.lifecycle.as_mut().unwrap();
        assert_eq!(lifecycle.as_of, world.at);
        lifecycle.as_of = was.lifecycle.as_ref().unwrap().as_of;
    }
    assert_eq!(after, before);
    assert_eq!(world.outstanding(), Money::ZERO);
    let _ = Decimal::ZERO;
}

#[test]
fn usage_for_a_customer_that_does_not_exist_is_refused() {
    let catalog = fixtures::catalog();
    let limits = Limits::default();
    let ctx = Ctx {
        at: T0,
        catalog: &catalog,
        catalog_version: catalog.version(),
        limits: &limits,
    };
    let mut nobody = Customer::default();
    assert_eq!(
        nobody.apply(&Input::RecordUsage(fixtures::api_call("x", T0)), &ctx),
        Err(Rejection::CustomerNotFound)
    );
}

/// `Customer::apply` puts the customer back while a panic unwinds through it: the engine
/// quarantines the input relying on the state being untouched (found by mutation testing: no
/// refusal comes after a change, so only a panic shows it). The panic here is the invariant check
/// after a profile input, on a state corrupted by hand.
#[cfg(debug_assertions)]
#[test]
fn a_panic_part_way_through_an_input_leaves_the_customer_as_it_was() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.credits = vec![fixtures::credit(100, 1)];
    world.apply(Input::create_contract(spec)).unwrap();
    world.customer.contracts[0].commits[0].segments[0].drawn = usd(101);
    let before = world.customer.clone();
    let aliases = Input::SetIngestAliases(vec!["acme".into()]);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.apply(aliases)));
    assert!(
        unwound.is_err(),
        "an overdrawn segment fails the invariant check"
    );
    assert_eq!(world.customer, before);
    let profile = world.customer.profile.as_ref().unwrap();
    assert!(
        profile.ingest_aliases.is_empty(),
        "{:?}",
        profile.ingest_aliases
    );
}

/// A purchase invoice scheduled later is DRAFT until its date and finalized by the first tick
/// at or after it; a voided one stays VOID (found by mutation testing).
#[test]
fn scheduled_purchase_invoices_are_finalized_by_the_first_tick_at_their_date() {
    let mut world = World::new(false);
    let due = T0.plus_ms(10 * MS_PER_DAY);
    let mut later = fixtures::prepaid_commit(1_000, 1);
    later.invoice_schedule = vec![(due, usd(1_000), Decimal::ONE)];
    let mut spec = fixtures::contract(CONTRACT);
    spec.commits = vec![fixtures::prepaid_commit(500, 2), later];
    world.apply(Input::create_contract(spec)).unwrap();
    let statuses = |world: &World| -> Vec<InvoiceStatus> {
        world
            .contract()
            .purchases
            .iter()
            .map(|p| p.status)
            .collect()
    };
    assert_eq!(
        statuses(&world),
        vec![InvoiceStatus::Finalized, InvoiceStatus::Draft],
        "invoiced at T0 (past) and at the due date (future)"
    );
    let voided = world.contract().purchases[0].id;
    world
        .apply(Input::VoidInvoice { invoice_id: voided })
        .unwrap();
    // Each apply moves the clock 1 s: this tick runs 1 s before the due date.
    world.at = due.plus_ms(-2_000);
    world.apply(Input::Tick).unwrap();
    assert_eq!(
        statuses(&world),
        vec![InvoiceStatus::Void, InvoiceStatus::Draft]
    );
    world.apply(Input::Tick).unwrap();
    assert_eq!(world.at, due);
    assert_eq!(
        statuses(&world),
        vec![InvoiceStatus::Void, InvoiceStatus::Finalized]
    );
}

/// A contract that starts after it was created is evaluated by the first tick in force, and the
/// tick's webhooks name the customer (found by mutation testing).
#[test]
fn the_first_tick_of_a_later_contract_evaluates_its_threshold_for_the_customer() {
    assert_eq!(Customer::default().id(), None);
    let mut world = World::new(false);
    assert_eq!(world.customer.id(), Some(CUSTOMER));
    let starts = T0.plus_ms(31 * MS_PER_DAY);
    let mut spec = fixtures::contract(CONTRACT);
    spec.starting_at = starts;
    spec.prepaid_threshold = Some(fixtures::prepaid_threshold(
        1_000,
        5_000,
        GateType::External,
    ));
    let created = world.apply(Input::create_contract(spec)).unwrap();
    assert!(types(&created.effects).is_empty(), "not in force yet");
    let announced: Vec<&str> = notices(&created.effects).iter().map(|n| n.0).collect();
    assert_eq!(announced, ["contract.create"]);
    world.at = starts;
    let effects = world.apply(Input::Tick).unwrap().effects;
    assert_eq!(
        types(&effects),
        vec![
            "payment_gate.threshold_reached",
            "payment_gate.external_initiate"
        ]
    );
    for (_, hook) in webhooks(&effects) {
        assert_eq!(hook.customer_id, CUSTOMER);
    }
    assert_eq!(world.contract().workflows[0].access_amount, usd(5_000));
}

/// A commit without a name takes its product's name, and so does its invoice (found by
/// mutation testing).
#[test]
fn an_unnamed_commit_is_named_after_its_product() {
    let mut world = World::new(false);
    let mut named = fixtures::prepaid_commit(1_000, 1);
    named.name = Some("Annual prepay".into());
    let mut spec = fixtures::contract(CONTRACT);
    spec.commits = vec![fixtures::prepaid_commit(500, 1), named];
    world.apply(Input::create_contract(spec)).unwrap();
    let contract = world.contract();
    let commits: Vec<&str> = contract.commits.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(commits, vec!["Prepaid balance", "Annual prepay"]);
    let invoices: Vec<&str> = contract.purchases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(invoices, vec!["Prepaid balance", "Annual prepay"]);
}

/// A credit added by an edit is usable at once: it covers the outstanding spend the contract's
/// exhausted credit left, and every applied edit is counted (found by mutation testing).
#[test]
fn a_credit_added_by_an_edit_covers_outstanding_spend_at_once() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.credits = vec![fixtures::credit(100, 1)];
    world.apply(Input::create_contract(spec)).unwrap();
    world.calls(3);
    assert_eq!(
        (world.outstanding(), world.balance()),
        (usd(200), Money::ZERO)
    );
    let edit_id = Id::from_u128(0xe1);
    let applied = world
        .apply(Input::edit(ContractEdit {
            edit_id,
            contract_id: CONTRACT,
            add_credits: vec![fixtures::credit(1_000, 1)],
            ..ContractEdit::default()
        }))
        .unwrap();
    let added = Id::derive(edit_id, "commit", 0);
    assert_eq!(applied.created, vec![added]);
    assert_eq!(world.outstanding(), Money::ZERO);
    let credit = world.contract().commit(added).unwrap();
    assert_eq!(credit.balance_at(world.at), Ok(usd(800)));
    assert_eq!(world.balance(), usd(800));
    assert_eq!(world.contract().edits, 1);
    world
        .apply(Input::edit(ContractEdit {
            edit_id: Id::from_u128(0xe2),
            contract_id: CONTRACT,
            ..ContractEdit::default()
        }))
        .unwrap();
    assert_eq!(world.contract().edits, 2);
}

/// A uniqueness key has 1 to 128 characters, counted as characters (not bytes), on contracts
/// and on edits (found by mutation testing).
#[test]
fn uniqueness_keys_have_one_to_128_characters() {
    let refused = Rejection::InvalidField("uniqueness_key: must be 1 to 128 characters".into());
    let cases = [
        (String::new(), Err(refused.clone())),
        ("k".into(), Ok(())),
        ("é".repeat(128), Ok(())),
        ("k".repeat(129), Err(refused)),
    ];
    for (key, expected) in cases {
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        spec.uniqueness_key = Some(key.clone());
        let created = world.apply(Input::create_contract(spec)).map(|_| ());
        assert_eq!(created, expected, "contract key {key:?}");
        let mut world = World::new(false);
        world
            .apply(Input::create_contract(fixtures::contract(CONTRACT)))
            .unwrap();
        let edited = world.apply(Input::edit(ContractEdit {
            contract_id: CONTRACT,
            uniqueness_key: Some(key.clone()),
            ..ContractEdit::default()
        }));
        assert_eq!(edited.map(|_| ()), expected, "edit key {key:?}");
    }
}

/// POSTPAID commits need an invoice schedule and credits must not have one (found by mutation
/// testing).
#[test]
fn commit_kinds_are_checked_against_their_invoice_schedules() {
    let postpaid = CommitSpec {
        kind: CommitKind::Postpaid,
        ..fixtures::prepaid_commit(1_000, 1)
    };
    let unscheduled_postpaid = CommitSpec {
        invoice_schedule: vec![],
        ..postpaid.clone()
    };
    let scheduled_credit = CommitSpec {
        invoice_schedule: vec![(T0, usd(1_000), Decimal::ONE)],
        ..fixtures::credit(1_000, 1)
    };
    let cases = [
        (vec![postpaid], vec![], Ok(())),
        (
            vec![unscheduled_postpaid],
            vec![],
            Err(Rejection::InvalidField(
                "commits[0].invoice_schedule: is required for POSTPAID commits".into(),
            )),
        ),
        (vec![], vec![fixtures::credit(1_000, 1)], Ok(())),
        (
            vec![],
            vec![scheduled_credit],
            Err(Rejection::InvalidField(
                "credits[0].invoice_schedule: credits are free and have no invoice schedule".into(),
            )),
        ),
    ];
    for (commits, credits, expected) in cases {
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        spec.commits = commits;
        spec.credits = credits;
        let created = world.apply(Input::create_contract(spec.clone()));
        assert_eq!(created.map(|_| ()), expected, "{spec:?}");
        let contracts = usize::from(expected.is_ok());
        assert_eq!(world.customer.contracts.len(), contracts);
    }
}

/// An event at the first millisecond of a month belongs to that month, even while only the
/// month before is open (found by mutation testing).
#[test]
fn usage_at_the_first_millisecond_of_a_month_opens_that_months_period() {
    let mut world = World::new(false);
    world
        .apply(Input::create_contract(fixtures::contract(CONTRACT)))
        .unwrap();
    world.calls(1);
    let february = Timestamp::parse_rfc3339("2025-02-01T00:00:00Z").unwrap();
    world
        .apply(Input::RecordUsage(fixtures::api_call("feb", february)))
        .unwrap();
    let periods: Vec<(Timestamp, Timestamp, Money)> = world
        .contract()
        .periods
        .iter()
        .map(|p| (p.starting_at, p.ending_before, p.lines[0].charged))
        .collect();
    let march = Timestamp::parse_rfc3339("2025-03-01T00:00:00Z").unwrap();
    assert_eq!(
        periods,
        vec![(T0, february, usd(100)), (february, march, usd(100))]
    );
}

/// Billing periods stay in time order whatever order their usage arrives in (found by mutation
/// testing).
#[test]
fn billing_periods_stay_in_time_order_when_usage_arrives_out_of_order() {
    let mut world = World::new(false);
    world
        .apply(Input::create_contract(fixtures::contract(CONTRACT)))
        .unwrap();
    let day = |date: &str| Timestamp::parse_rfc3339(&format!("2025-{date}T00:00:00Z")).unwrap();
    for (transaction, date) in [("mar", "03-10"), ("jan", "01-10"), ("feb", "02-10")] {
        let event = fixtures::api_call(transaction, day(date));
        world.apply(Input::RecordUsage(event)).unwrap();
    }
    let periods: Vec<(Timestamp, Money)> = world
        .contract()
        .periods
        .iter()
        .map(|p| (p.starting_at, p.lines[0].charged))
        .collect();
    assert_eq!(
        periods,
        vec![
            (day("01-01"), usd(100)),
            (day("02-01"), usd(100)),
            (day("03-01"), usd(100))
        ]
    );
}

/// The fixture catalog with the tokens product tagged `ai`.
fn catalog_with_ai_tokens() -> Catalog {
    let mut catalog = Catalog::default();
    for mut change in fixtures::catalog_changes() {
        if let CatalogChange::CreateProduct(product) = &mut change {
            if product.id == fixtures::TOKEN_PRODUCT {
                product.tags = vec!["ai".into()];
            }
        }
        catalog.apply(change).unwrap();
    }
    catalog
}

/// A credit restricted to a product tag draws only the usage of products with that tag (found
/// by mutation testing).
#[test]
fn a_credit_restricted_to_a_tag_draws_only_usage_of_tagged_products() {
    let mut world = World::new(false);
    world.catalog = catalog_with_ai_tokens();
    let mut credit = fixtures::credit(10_000, 1);
    credit.applicable_product_tags = vec!["ai".into()];
    let mut spec = fixtures::contract(CONTRACT);
    spec.credits = vec![credit];
    world.apply(Input::create_contract(spec)).unwrap();
    world.calls(2);
    assert_eq!(
        (world.outstanding(), world.balance()),
        (usd(200), usd(10_000)),
        "API calls are not tagged ai"
    );
    let at = world.at;
    world
        .apply(Input::RecordUsage(fixtures::llm_tokens("t", at, "100")))
        .unwrap();
    assert_eq!(
        (world.outstanding(), world.balance()),
        (usd(200), usd(9_800)),
        "100 tokens at 2 cents drawn from the credit"
    );
}

/// What every segment of the contract has left, commit by commit.
fn segments_remaining(world: &World) -> Vec<Money> {
    world
        .contract()
        .commits
        .iter()
        .flat_map(|c| c.segments.iter().map(|s| s.remaining()))
        .collect()
}

/// Records `tokens` tokens at the world's time.
fn record_tokens(world: &mut World, transaction: &str, tokens: &str) {
    let event = fixtures::llm_tokens(transaction, world.at, tokens);
    world.apply(Input::RecordUsage(event)).unwrap();
}

/// A decrease gives back to the segments the line drew from, last drawn first, each no more than
/// it gave: draws from the first segments of two credits, and from two segments of one credit,
/// are kept apart (found by mutation testing: the draws of a line were merged).
#[test]
fn a_decrease_gives_back_to_the_segment_drawn_last_then_to_the_one_before() {
    let mut two_segments = fixtures::credit(100, 1);
    two_segments.access_schedule = vec![
        // Ends first, so draws first.
        (usd(100), T0, T0.plus_ms(60 * MS_PER_DAY)),
        (usd(1_000), T0, fixtures::year_end()),
    ];
    let two_credits = vec![fixtures::credit(100, 1), fixtures::credit(1_000, 2)];
    for credits in [two_credits, vec![two_segments]] {
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        spec.credits = credits;
        world.apply(Input::create_contract(spec)).unwrap();
        // 100 tokens at 2 cents: 100 from the first segment (used up), 100 from the second.
        record_tokens(&mut world, "a", "100");
        // 40 tokens fewer: the 80 cents go back to the second segment, drawn last.
        record_tokens(&mut world, "b", "-40");
        assert_eq!(segments_remaining(&world), vec![Money::ZERO, usd(980)]);
        // 20 fewer again: 20 cents finish what the second gave, 20 go back to the first.
        record_tokens(&mut world, "c", "-20");
        assert_eq!(segments_remaining(&world), vec![usd(20), usd(1_000)]);
        assert_eq!(world.outstanding(), Money::ZERO);
    }
}

/// A line whose uncovered amount changes only in its decimal places (200 -> 200.0: a fractional
/// charge drawn whole from a credit) still updates the outstanding spend kept between events, so
/// a threshold charges S exactly as the lines sum it, as it would after a restart rebuilt the
/// caches (found by mutation testing: `line_changed` compares the scales too).
#[test]
fn a_line_gaining_only_decimal_places_is_charged_as_the_lines_sum_it() {
    let day = |n: i64| T0.plus_ms(n * MS_PER_DAY);
    let run = |restored: bool| {
        let mut world = World::new(false);
        let mut credit = fixtures::credit(10_000, 1);
        // Usable from day 10: the usage before stays outstanding.
        credit.access_schedule = vec![(usd(10_000), day(10), fixtures::year_end())];
        let mut spec = fixtures::contract(CONTRACT);
        spec.credits = vec![credit];
        spec.spend_threshold = Some(fixtures::spend_threshold(400, GateType::External));
        world.apply(Input::create_contract(spec)).unwrap();
        world.at = day(12);
        for event in [
            fixtures::llm_tokens("a", day(1), "100"),
            fixtures::api_call("b", day(1)),
            // Half a token more: 1.0 cent, drawn from the credit.
            fixtures::llm_tokens("c", day(11), "0.5"),
        ] {
            world.apply(Input::RecordUsage(event)).unwrap();
        }
        let tokens_line = &world.contract().periods[0].lines[0];
        assert_eq!(tokens_line.uncovered().to_string(), "200.0");
        assert_eq!(world.outstanding(), usd(300));
        if restored {
            world.customer.rebuild_caches();
        }
        // S reaches $4.
        let crossing = Input::RecordUsage(fixtures::api_call("d", day(1)));
        let effects = world.apply(crossing).unwrap().effects;
        let initiate = webhooks(&effects)[1].1.to_json();
        initiate["properties"]["invoice_total"].to_string()
    };
    assert_eq!(run(false), "400.0");
    assert_eq!(run(true), "400.0");
}

/// A commit added by an edit covers the outstanding spend of the products it applies to only
/// (found by mutation testing: `cover_outstanding` drew it for every line with spend left).
#[test]
fn a_restricted_credit_added_by_an_edit_covers_only_its_products_outstanding_spend() {
    let mut world = World::new(false);
    world
        .apply(Input::create_contract(fixtures::contract(CONTRACT)))
        .unwrap();
    world.calls(3);
    let at = world.at;
    let tokens = fixtures::llm_tokens("t", at, "100");
    world.apply(Input::RecordUsage(tokens)).unwrap();
    assert_eq!(world.outstanding(), usd(500));
    let mut credit = fixtures::credit(1_000, 1);
    credit.applicable_product_ids = vec![fixtures::TOKEN_PRODUCT];
    world
        .apply(Input::edit(ContractEdit {
            edit_id: Id::from_u128(0xe1),
            contract_id: CONTRACT,
            add_credits: vec![credit],
            ..ContractEdit::default()
        }))
        .unwrap();
    assert_eq!(
        (world.outstanding(), world.balance()),
        (usd(300), usd(800)),
        "the $2 of tokens covered, the $3 of API calls not"
    );
}

/// A spend threshold's commit starts with the earliest usage period still open (a finalized
/// one is not offset); a recharge starts at the hour it was triggered and pays for no usage
/// from before (found by mutation testing).
#[test]
fn threshold_commits_start_with_the_earliest_open_period_or_the_trigger_hour() {
    let day = |date: &str| Timestamp::parse_rfc3339(&format!("2025-{date}T00:00:00Z")).unwrap();
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.spend_threshold = Some(fixtures::spend_threshold(500, GateType::None));
    world.apply(Input::create_contract(spec)).unwrap();
    world.calls(2);
    // January's invoice closes 34 days after its period.
    world.at = day("03-10");
    world.apply(Input::Tick).unwrap();
    let february = fixtures::api_call("feb", day("02-15"));
    world.apply(Input::RecordUsage(february)).unwrap();
    world.calls(4);
    let spend = &world.contract().workflows[0];
    let commit = world.contract().commit(spend.commit_id).unwrap();
    assert_eq!(commit.segments[0].starting_at, day("02-01"));
    assert_eq!(world.outstanding(), Money::ZERO);

    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.prepaid_threshold = Some(fixtures::prepaid_threshold(1_000, 5_000, GateType::None));
    // B = 0: the recharge fires, and is released, at creation, 2 s after midnight on January 2.
    world.apply(Input::create_contract(spec)).unwrap();
    let trigger_hour = T0.plus_ms(MS_PER_DAY);
    let recharge = world.contract().workflows[0].commit_id;
    let commit = world.contract().commit(recharge).unwrap();
    assert_eq!(commit.segments[0].starting_at, trigger_hour);
    let earlier = fixtures::api_call("early", trigger_hour.plus_ms(-1));
    world.apply(Input::RecordUsage(earlier)).unwrap();
    assert_eq!(
        (world.outstanding(), world.balance()),
        (usd(100), usd(5_000))
    );
    world.calls(1);
    assert_eq!(
        (world.outstanding(), world.balance()),
        (usd(100), usd(4_900))
    );
}

/// A released payment marks its own purchase invoice PAID at the provider, never another
/// invoice of the contract; a NONE gate collects nothing and marks nothing (found by mutation
/// testing).
#[test]
fn a_paid_release_marks_its_own_purchase_invoice_paid_and_a_none_gate_none() {
    for gate_type in [GateType::External, GateType::None] {
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        spec.commits = vec![fixtures::prepaid_commit(100, 1)];
        spec.spend_threshold = Some(fixtures::spend_threshold(500, gate_type));
        world.apply(Input::create_contract(spec)).unwrap();
        // $1 drawn from the commit, $5 outstanding.
        world.calls(6);
        let workflow_id = world.contract().workflows[0].id;
        if gate_type == GateType::External {
            world
                .outcome(workflow_id, OutcomeSource::External, PaymentResult::Paid)
                .unwrap();
        }
        assert_eq!(world.contract().workflows[0].state, WorkflowState::Released);
        let statuses: Vec<Option<&str>> = world
            .contract()
            .purchases
            .iter()
            .map(|p| p.external_status.as_deref())
            .collect();
        let paid = (gate_type == GateType::External).then_some("PAID");
        assert_eq!(statuses, vec![None, paid], "{gate_type:?}");
    }
}

/// Each workflow releases its own withheld commit even when a manual commit has the id a
/// threshold workflow's commit gets later: an edit whose id is that of the spend workflow that
/// fires next. Edge ids are random or hashed, so only an input built by hand does this, but the
/// rules take any id: the threshold's commit is the one added last, the manual one the first
/// (found by mutation testing).
#[test]
fn each_workflow_releases_its_own_commit_when_two_commits_share_an_id() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.spend_threshold = Some(fixtures::spend_threshold(500, GateType::External));
    world.apply(Input::create_contract(spec)).unwrap();
    let spend_id = Id::derive(CONTRACT, WorkflowKind::Spend.as_str(), 1);
    let mut manual = fixtures::prepaid_commit(2_000, 1);
    manual.payment_gate = Some(fixtures::gate(GateType::External));
    world
        .apply(Input::edit(ContractEdit {
            edit_id: spend_id,
            contract_id: CONTRACT,
            add_commits: vec![manual],
            ..ContractEdit::default()
        }))
        .unwrap();
    world.calls(5);
    let workflows = &world.contract().workflows;
    let (manual_id, spend) = (workflows[0].id, &workflows[1]);
    assert_eq!(spend.id, spend_id);
    assert_eq!(
        spend.commit_id, workflows[0].commit_id,
        "one id, two commits"
    );
    let released = |world: &World| -> Vec<bool> {
        let commits = &world.contract().commits;
        commits.iter().map(|c| c.is_released()).collect()
    };
    assert_eq!(released(&world), vec![false, false]);
    // The spend payment releases the spend commit: it covers the $5, the manual one stays
    // withheld.
    world
        .outcome(spend_id, OutcomeSource::External, PaymentResult::Paid)
        .unwrap();
    assert_eq!(released(&world), vec![false, true]);
    assert_eq!(
        (world.outstanding(), world.balance()),
        (Money::ZERO, Money::ZERO)
    );
    world
        .outcome(manual_id, OutcomeSource::External, PaymentResult::Paid)
        .unwrap();
    assert_eq!(released(&world), vec![true, true]);
    assert_eq!(segments_remaining(&world), vec![usd(2_000), Money::ZERO]);
}

/// A customer's lists are allocated for what they hold, not for `Vec`'s four on a first push:
/// with a contract, a commit and a first event, no list of the state has slack (P6; the slack
/// was half of a resident customer's memory).
#[test]
fn a_new_contract_and_its_first_event_leave_no_slack_in_the_states_lists() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.commits = vec![fixtures::prepaid_commit(300, 10)];
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    world.calls(1);
    let contract = world.contract();
    let period = &contract.periods[0];
    let line = &period.lines[0];
    let commit = &contract.commits[0];
    let lists = [
        (
            "contracts",
            world.customer.contracts.len(),
            world.customer.contracts.capacity(),
        ),
        (
            "commits",
            contract.commits.len(),
            contract.commits.capacity(),
        ),
        (
            "periods",
            contract.periods.len(),
            contract.periods.capacity(),
        ),
        ("lines", period.lines.len(), period.lines.capacity()),
        ("draws", line.draws.len(), line.draws.capacity()),
        (
            "deductions",
            commit.deductions.len(),
            commit.deductions.capacity(),
        ),
        (
            "draw order",
            contract.draw_order.len(),
            contract.draw_order.capacity(),
        ),
        (
            "live",
            contract.caches.live.len(),
            contract.caches.live.capacity(),
        ),
    ];
    for (name, len, capacity) in lists {
        assert_eq!((len, capacity), (1, 1), "{name}");
    }
}

/// A contract whose $50 commit recharges to $50 at $20 through a NONE gate (released at once),
/// with `limits` as its rails.
fn railed_world(limits: super::contract::RechargeLimits) -> World {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.commits = vec![fixtures::prepaid_commit(5_000, 10)];
    let mut config = fixtures::prepaid_threshold(2_000, 5_000, GateType::None);
    config.limits = Some(limits);
    spec.prepaid_threshold = Some(config);
    world.apply(Input::CreateContract(Box::new(spec))).unwrap();
    world
}

fn limited(effects: &[Effect]) -> Vec<serde_json::Value> {
    notices(effects)
        .into_iter()
        .filter(|(t, _)| *t == "payment_gate.recharge_limited")
        .map(|(_, body)| body.clone())
        .collect()
}

#[test]
fn a_minimum_interval_holds_a_recharge_until_it_ends_and_announces_it_once() {
    let mut world = railed_world(super::contract::RechargeLimits {
        min_interval_minutes: Some(60),
        ..Default::default()
    });
    // B falls to $20: the first recharge goes through (NONE gate: released at once).
    world.calls(30);
    assert_eq!(world.contract().workflows.len(), 1);
    let first_start = world.contract().workflows[0].started_at;
    assert_eq!(world.balance(), usd(5_000));
    // Thirty calls later B is $20 again, within the hour: held back, announced once.
    let effects = world.calls(30);
    assert_eq!(world.contract().workflows.len(), 1, "held back");
    let held = limited(&effects);
    assert_eq!(held.len(), 1, "{held:?}");
    let properties = &held[0]["properties"];
    assert_eq!(properties["limit"], "min_recharge_interval_minutes");
    assert_eq!(properties["limit_value"], 60);
    assert_eq!(properties["recharges_this_period"], 1);
    let until = first_start.plus_ms(60 * 60_000);
    assert_eq!(properties["held_until"], until.to_rfc3339());
    assert_eq!(properties["customer_id"], CUSTOMER.to_string());
    // More usage while held: no new recharge, no second notice; B goes on falling.
    assert!(limited(&world.calls(5)).is_empty());
    assert_eq!(world.balance(), usd(1_500));
    assert_eq!(world.customer.next_wake(world.at), Some(until));
    let hold = world.contract().prepaid_threshold.as_ref().unwrap().hold;
    assert_eq!(hold.map(|h| h.until), Some(until));
    // The interval ends: the tick at its end recharges to $50.
    world.at = until.plus_ms(-1_000);
    let applied = world.apply(Input::Tick).unwrap();
    assert_eq!(world.contract().workflows.len(), 2, "{:?}", applied.effects);
    assert_eq!(world.balance(), usd(5_000));
    assert_eq!(
        world.contract().prepaid_threshold.as_ref().unwrap().hold,
        None
    );
}

#[test]
fn per_period_limits_hold_until_the_next_period_and_each_new_hold_is_announced() {
    let mut world = railed_world(super::contract::RechargeLimits {
        max_recharges_per_period: Some(2),
        max_amount_per_period: Some(usd(5_000)),
        ..Default::default()
    });
    world.calls(30);
    assert_eq!(world.contract().workflows.len(), 1);
    // The second recharge ($30) would bring the month to $60 > $50: held by the amount.
    let effects = world.calls(30);
    assert_eq!(world.contract().workflows.len(), 1);
    let held = limited(&effects);
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0]["properties"]["limit"],
        "max_recharge_amount_per_period"
    );
    assert_eq!(
        held[0]["properties"]["recharged_amount_this_period"],
        json_amount(3_000)
    );
    let next_month = Timestamp::parse_rfc3339("2025-02-01T00:00:00Z").unwrap();
    assert_eq!(held[0]["properties"]["held_until"], next_month.to_rfc3339());
    assert_eq!(world.customer.next_wake(world.at), Some(next_month));
    // The next period: the hold lets go, the recharge goes through.
    world.at = next_month;
    world.apply(Input::Tick).unwrap();
    assert_eq!(world.contract().workflows.len(), 2);
    // Raising the amount rail lets one more through; then the count rail holds: a new notice
    // with an id of its own.
    world
        .apply(Input::edit(ContractEdit {
            edit_id: Id::from_u128(0xed17),
            contract_id: CONTRACT,
            update_prepaid_threshold: Some(ThresholdUpdate {
                recharge_limits: Some(Some(super::contract::RechargeLimits {
                    max_recharges_per_period: Some(2),
                    max_amount_per_period: Some(usd(100_000)),
                    ..Default::default()
                })),
                ..ThresholdUpdate::default()
            }),
            ..ContractEdit::default()
        }))
        .unwrap();
    world.calls(30);
    assert_eq!(world.contract().workflows.len(), 3);
    let effects = world.calls(30);
    assert_eq!(world.contract().workflows.len(), 3);
    let second = limited(&effects);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["properties"]["limit"], "max_recharges_per_period");
    assert_ne!(second[0]["id"], held[0]["id"]);
    assert_eq!(
        world.contract().prepaid_threshold.as_ref().unwrap().holds,
        2
    );
}

fn json_amount(cents: i64) -> serde_json::Value {
    serde_json::json!(usd(cents))
}

#[test]
fn a_recharge_commit_expires_after_its_duration_and_rails_are_validated() {
    let mut world = railed_world(super::contract::RechargeLimits {
        commit_duration_days: Some(7),
        ..Default::default()
    });
    world.calls(30);
    let workflow = world.contract().workflows[0].clone();
    let commit = world.contract().commit(workflow.commit_id).unwrap();
    let segment = &commit.segments[0];
    assert_eq!(
        segment.ending_before,
        segment.starting_at.plus_ms(7 * MS_PER_DAY)
    );
    let prepaid = |limits: super::contract::RechargeLimits| {
        let mut config = fixtures::prepaid_threshold(2_000, 5_000, GateType::None);
        config.limits = Some(limits);
        config
    };
    let cases = [
        prepaid(super::contract::RechargeLimits {
            max_recharges_per_period: Some(0),
            ..Default::default()
        }),
        prepaid(super::contract::RechargeLimits {
            min_interval_minutes: Some(super::contract::RECHARGE_INTERVAL_MAX_MINUTES + 1),
            ..Default::default()
        }),
        prepaid(super::contract::RechargeLimits {
            commit_duration_days: Some(0),
            ..Default::default()
        }),
        // Below the largest recharge ($50, when B is 0): it would be held back every period.
        prepaid(super::contract::RechargeLimits {
            max_amount_per_period: Some(usd(4_999)),
            ..Default::default()
        }),
        {
            let mut spend = fixtures::spend_threshold(1_000, GateType::None);
            spend.limits = Some(super::contract::RechargeLimits::default());
            spend
        },
    ];
    let credit_type = super::money::CreditType::usd_cents();
    for config in cases {
        let refused = config.validate(&credit_type, &Limits::default());
        assert!(
            matches!(refused, Err(Rejection::InvalidField { .. })),
            "{config:?}: {refused:?}"
        );
    }
    let largest = prepaid(super::contract::RechargeLimits {
        max_amount_per_period: Some(usd(5_000)),
        ..Default::default()
    });
    assert_eq!(largest.validate(&credit_type, &Limits::default()), Ok(()));
}

#[test]
fn lifecycle_notices_announce_creation_segments_and_the_end_once_each() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    let mut credit = fixtures::credit(1_000, 1);
    let starts = world.at.plus_ms(10 * MS_PER_DAY);
    let ends = starts.plus_ms(5 * MS_PER_DAY);
    credit.access_schedule = vec![(usd(1_000), starts, ends)];
    spec.commits = vec![fixtures::prepaid_commit(5_000, 10)];
    spec.credits = vec![credit];
    let created = world.apply(Input::create_contract(spec)).unwrap().effects;
    let announced: Vec<&str> = notices(&created).iter().map(|n| n.0).collect();
    assert_eq!(
        announced,
        [
            "contract.create",
            "commit.create",
            "credit.create",
            "commit.segment.start"
        ]
    );
    let start = notices(&created)[3].1.clone();
    assert_eq!(start["environment_type"], "PRODUCTION");
    assert_eq!(start["contract_id"], CONTRACT.to_string());
    assert_eq!(start["segment_index"], 0);
    assert_eq!(start["segment_count"], 1);
    assert!(start["customer_custom_fields"].is_object());
    // The credit starts in ten days: that is when the customer is woken.
    assert_eq!(world.customer.next_wake(world.at), Some(starts));
    assert!(notices(&world.apply(Input::Tick).unwrap().effects).is_empty());
    world.at = starts;
    let started = world.apply(Input::Tick).unwrap().effects;
    let announced: Vec<&str> = notices(&started).iter().map(|n| n.0).collect();
    assert_eq!(announced, ["credit.segment.start"]);
    // Usage meanwhile announces nothing more; the end is announced by the first input after it.
    assert!(notices(&world.calls(3)).is_empty());
    assert_eq!(world.customer.next_wake(world.at), Some(ends));
    world.at = ends;
    let ended = world.calls(1);
    let announced: Vec<&str> = notices(&ended).iter().map(|n| n.0).collect();
    assert_eq!(announced, ["credit.segment.end"]);
    assert_eq!(notices(&ended)[0].1["timestamp"], ends.to_rfc3339());
    // The contract ends early: the edit is announced, then at the end the contract and its
    // open commit segment end; thresholds stop.
    let end = world.at.plus_ms(MS_PER_DAY).floor_hour();
    let edited = world
        .apply(Input::edit(ContractEdit {
            edit_id: Id::from_u128(0xe1d),
            contract_id: CONTRACT,
            update_ending_before: Some(Some(end)),
            allow_ending_before_finalized_invoice: true,
            ..ContractEdit::default()
        }))
        .unwrap()
        .effects;
    let announced: Vec<&str> = notices(&edited).iter().map(|n| n.0).collect();
    assert_eq!(announced, ["contract.edit"]);
    assert_eq!(world.contract().ending_before, Some(end));
    assert_eq!(world.customer.next_wake(world.at), Some(end));
    world.at = end;
    let at_end = world.apply(Input::Tick).unwrap().effects;
    let announced: Vec<&str> = notices(&at_end).iter().map(|n| n.0).collect();
    assert_eq!(announced, ["commit.segment.end", "contract.end"]);
    assert!(
        notices(&world.apply(Input::Tick).unwrap().effects).is_empty(),
        "once"
    );
    assert_eq!(world.customer.next_wake(world.at), None);
    // The end is lifted: the commit's segment starts again, under an id of its own (the first
    // start's id was sent with another body), and ends again under a new one too.
    let segment = world
        .contract()
        .commits
        .iter()
        .find(|c| c.kind == CommitKind::Prepaid)
        .unwrap()
        .segments[0]
        .id;
    let ids = |effects: &[Effect], kind: &str| -> Vec<Id> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Notice(n) if n.notice_type.as_str() == kind => Some(n.id),
                _ => None,
            })
            .collect()
    };
    let lift = |world: &mut World, id: u128, end: Option<Timestamp>| {
        world
            .apply(Input::edit(ContractEdit {
                edit_id: Id::from_u128(id),
                contract_id: CONTRACT,
                update_ending_before: Some(end),
                allow_ending_before_finalized_invoice: true,
                ..ContractEdit::default()
            }))
            .unwrap()
            .effects
    };
    let lifted = lift(&mut world, 0xe1e, None);
    let restarted = ids(&lifted, "commit.segment.start");
    assert_eq!(restarted.len(), 1, "{:?}", notices(&lifted));
    assert_ne!(restarted[0], Id::derive(segment, "commit.segment.start", 0));
    let again = world.at.plus_ms(MS_PER_DAY).floor_hour();
    lift(&mut world, 0xe1f, Some(again));
    world.at = again;
    let ended_again = ids(
        &world.apply(Input::Tick).unwrap().effects,
        "commit.segment.end",
    );
    assert_eq!(ended_again.len(), 1);
    assert_ne!(
        ended_again[0],
        Id::derive(segment, "commit.segment.end", end.millis() as u64)
    );
}

#[test]
fn an_end_date_stops_thresholds_and_may_not_orphan_billed_usage() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.ending_before = None;
    spec.spend_threshold = Some(fixtures::spend_threshold(1_000, GateType::External));
    world.apply(Input::create_contract(spec)).unwrap();
    world.calls(2);
    // Each edit has an id of its own (a repeated id is a retry, refused with 409).
    let edits = std::cell::Cell::new(0);
    let edit = |end: Option<Timestamp>, allow: bool| {
        Input::edit(ContractEdit {
            edit_id: Id::derive(Id::from_u128(0xe2d), "edit", {
                edits.set(edits.get() + 1);
                edits.get()
            }),
            contract_id: CONTRACT,
            update_ending_before: Some(end),
            allow_ending_before_finalized_invoice: allow,
            ..ContractEdit::default()
        })
    };
    // Not before the start, and not before the period that billed the usage.
    let refused = world.apply(edit(Some(T0), true));
    assert!(
        matches!(refused, Err(Rejection::InvalidField { .. })),
        "{refused:?}"
    );
    let period_start = world.contract().periods[0].starting_at;
    let refused = world.apply(edit(Some(period_start), true));
    assert!(
        matches!(refused, Err(Rejection::InvalidField { .. })),
        "{refused:?}"
    );
    assert_eq!(world.contract().ending_before, None, "refused whole");
    // Mid-period: the draft period ends with the contract.
    let end = world.at.plus_ms(MS_PER_DAY).floor_hour();
    world.apply(edit(Some(end), true)).unwrap();
    assert_eq!(world.contract().periods[0].ending_before, end);
    // Open-ended again: the period ends with its month.
    world.apply(edit(None, true)).unwrap();
    assert_eq!(
        world.contract().periods[0].ending_before,
        period_start.next_month_start()
    );
    world.apply(edit(Some(end), true)).unwrap();
    // Not in the past inside the period that billed usage: that usage would stay billed on a
    // contract that ended before it.
    let past = world.at.plus_ms(-60_000);
    let refused = world.apply(edit(Some(past), true));
    assert!(
        matches!(refused, Err(Rejection::InvalidField { .. })),
        "{refused:?}"
    );
    // After the end usage is not billed here and thresholds do not fire.
    world.at = end;
    world.apply(Input::Tick).unwrap();
    let outstanding = world.outstanding();
    let effects = world.calls(20);
    assert!(types(&effects).is_empty(), "{effects:?}");
    assert_eq!(world.outstanding(), outstanding);
    assert!(world.contract().workflows.is_empty());
}

#[test]
fn an_extended_end_extends_the_recharges_and_a_final_short_period_pins_the_end() {
    let mut world = World::new(false);
    let mut spec = fixtures::contract(CONTRACT);
    spec.commits = vec![fixtures::prepaid_commit(5_000, 10)];
    spec.prepaid_threshold = Some(fixtures::prepaid_threshold(2_000, 5_000, GateType::None));
    world.apply(Input::create_contract(spec)).unwrap();
    world.calls(30);
    let recharge = world.contract().workflows[0].commit_id;
    let old_end = fixtures::year_end();
    let segment_end =
        |world: &World| world.contract().commit(recharge).unwrap().segments[0].ending_before;
    assert_eq!(segment_end(&world), old_end);
    let edits = std::cell::Cell::new(0);
    let edit = |end: Option<Timestamp>| {
        Input::edit(ContractEdit {
            edit_id: Id::derive(Id::from_u128(0xe3d), "edit", {
                edits.set(edits.get() + 1);
                edits.get()
            }),
            contract_id: CONTRACT,
            update_ending_before: Some(end),
            allow_ending_before_finalized_invoice: true,
            ..ContractEdit::default()
        })
    };
    // Extended: the paid recharge goes on with the contract instead of expiring at the old end.
    let later = old_end.plus_ms(30 * MS_PER_DAY);
    world.apply(edit(Some(later))).unwrap();
    assert_eq!(segment_end(&world), later);
    world.apply(edit(None)).unwrap();
    assert_eq!(segment_end(&world), Timestamp::END_OF_TIME);
    // A contract that ends mid-month and whose short last period is final keeps its end.
    let mid_month = Timestamp::parse_rfc3339("2025-01-20T00:00:00Z").unwrap();
    world.apply(edit(Some(mid_month))).unwrap();
    world.at = mid_month.plus_ms(Limits::default().draft_grace_ms + MS_PER_DAY);
    world.apply(Input::Tick).unwrap();
    let last = world.contract().periods.last().unwrap().clone();
    assert_eq!(last.status, InvoiceStatus::Finalized);
    assert_eq!(last.ending_before, mid_month);
    for end in [
        None,
        Some(mid_month.plus_ms(MS_PER_DAY)),
        Some(mid_month.plus_ms(-MS_PER_DAY)),
    ] {
        let refused = world.apply(edit(end));
        assert!(
            matches!(refused, Err(Rejection::InvalidField { .. })),
            "{end:?}: {refused:?}"
        );
    }
    assert_eq!(world.contract().ending_before, Some(mid_month));
}

/// A spend alert (for every customer) created in the world's catalog.
fn spend_alert(world: &mut World, threshold: i64) -> Id {
    use super::alerts::{Alert, AlertType};
    let id = Id::from_u128(0xa1e7);
    let alert = Alert {
        id,
        alert_type: AlertType::SpendThreshold,
        name: "spend".into(),
        threshold: Decimal::from(threshold),
        customer_id: None,
        credit_type_id: super::money::CreditType::usd_cents().id,
        billable_metric_id: None,
        invoice_types: Vec::new(),
        credit_grant_type_filters: Vec::new(),
        evaluate_on_create: true,
        uniqueness_key: None,
        key_released: false,
        created_at: world.at,
        archived_at: None,
        created_in: 0,
        archived_in: None,
    };
    world
        .catalog
        .apply(CatalogChange::CreateAlert(alert))
        .unwrap();
    id
}

#[test]
fn an_alert_enters_alarm_on_the_crossing_event_once_and_leaves_it_when_the_period_rolls() {
    use super::alerts::{AlertState, AlertType};
    let mut world = World::new(false);
    world
        .apply(Input::create_contract(fixtures::contract(CONTRACT)))
        .unwrap();
    let alert = spend_alert(&mut world, 500);
    // $4: below. The fifth call reaches $5: in alarm, one webhook on that event.
    assert!(notices(&world.calls(4)).is_empty());
    let effects = world.calls(1);
    let sent = notices(&effects);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, AlertType::SpendThreshold.webhook_type());
    assert_eq!(sent[0].1["properties"]["current_spend"], 500);
    let status = world.customer.alert_status(alert).unwrap().clone();
    assert_eq!(status.state, AlertState::InAlarm);
    assert_eq!((status.alarms, status.resolutions), (1, 0));
    // Further spend: silent.
    assert!(notices(&world.calls(3)).is_empty());
    // The next billing period: spend starts again at 0, the alarm resolves (a tick).
    let late_at = world.at;
    world.at = world
        .at
        .month_start()
        .plus_ms(40 * MS_PER_DAY)
        .month_start();
    let sent = notices(&world.apply(Input::Tick).unwrap().effects)
        .into_iter()
        .map(|(t, _)| t)
        .collect::<Vec<_>>();
    assert_eq!(sent, vec![AlertType::SpendThreshold.resolved_type()]);
    // Usage of the old period applied now (accepted then, applied out of its time): the old
    // period is not the current one any more, so nothing moves.
    let ctx = Ctx {
        at: late_at,
        catalog: &world.catalog,
        catalog_version: world.catalog.version(),
        limits: &world.limits,
    };
    let late = Input::RecordUsage(fixtures::api_call("late", late_at));
    let applied = world.customer.apply(&late, &ctx).unwrap();
    assert!(
        notices(&applied.effects).is_empty(),
        "{:?}",
        applied.effects
    );
    assert_eq!(
        world.customer.alert_status(alert).unwrap().state,
        AlertState::Ok
    );
}

#[test]
fn a_silent_first_alarm_is_never_resolved_aloud_and_a_reset_alarm_is() {
    use super::alerts::{AlertState, AlertType};
    let mut world = World::new(false);
    world
        .apply(Input::create_contract(fixtures::contract(CONTRACT)))
        .unwrap();
    world.calls(6);
    let alert = spend_alert(&mut world, 500);
    // evaluate_on_create false: already past the threshold, in alarm without a webhook.
    let quiet = world.catalog.alert(alert).cloned().unwrap();
    let mut quiet = quiet;
    quiet.id = Id::from_u128(0xa1e8);
    quiet.evaluate_on_create = false;
    world
        .catalog
        .apply(CatalogChange::CreateAlert(quiet.clone()))
        .unwrap();
    let effects = world.apply(Input::Tick).unwrap().effects;
    let sent: Vec<_> = notices(&effects).into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        sent,
        vec![AlertType::SpendThreshold.webhook_type()],
        "only the loud one"
    );
    assert_eq!(
        world.customer.alert_status(quiet.id).unwrap().state,
        AlertState::InAlarm
    );
    // The period rolls: both leave alarm, only the announced one says so.
    world.at = world
        .at
        .month_start()
        .plus_ms(40 * MS_PER_DAY)
        .month_start();
    let effects = world.apply(Input::Tick).unwrap().effects;
    let resolved: Vec<_> = notices(&effects)
        .into_iter()
        .map(|(_, body)| body["properties"]["alert_id"].clone())
        .collect();
    assert_eq!(resolved, vec![serde_json::json!(alert.to_string())]);
    let status = world.customer.alert_status(quiet.id).unwrap();
    assert_eq!(
        (status.state, status.alarms, status.resolutions),
        (AlertState::Ok, 0, 0)
    );
    // In alarm again and announced; a reset that finds it resolved says so too.
    world.calls(6);
    let status = world.customer.alert_status(alert).unwrap().clone();
    assert_eq!((status.alarms, status.resolutions), (2, 1));
    world.customer.contracts[0]
        .periods
        .last_mut()
        .unwrap()
        .lines
        .clear();
    let effects = world
        .apply(Input::ResetAlert { alert_id: alert })
        .unwrap()
        .effects;
    // (The quiet alert's second alarm, a crossing after it existed, was announced: it resolves
    // aloud too, at the evaluation that follows every input.)
    let sent: Vec<_> = notices(&effects).into_iter().map(|(t, _)| t).collect();
    let resolved = AlertType::SpendThreshold.resolved_type();
    assert_eq!(sent, vec![resolved, resolved]);
    assert_eq!(world.customer.alert_status(quiet.id).unwrap().alarms, 1);
    let status = world.customer.alert_status(alert).unwrap();
    assert_eq!(
        (status.state, status.alarms, status.resolutions),
        (AlertState::Ok, 2, 2)
    );
}

mod customer_level {
    //! Customer-level commits and credits: drawn with the contracts' own in Metronome's order,
    //! counted in every contract's B, shortened by `updateEndDate`.

    use super::*;
    use crate::domain::customer::{CustomerCommitEnd, CustomerCommitSpec};

    const SHARED: Id = Id::from_u128(0x6001);
    const OTHER_CONTRACT: Id = Id::from_u128(0x5002);

    fn shared(id: Id, commit: CommitSpec, contracts: Vec<Id>) -> Input {
        let invoiced = !commit.invoice_schedule.is_empty();
        Input::CreateCustomerCommit(Box::new(CustomerCommitSpec {
            id,
            commit,
            applicable_contract_ids: contracts,
            invoice_contract_id: invoiced.then_some(CONTRACT),
            uniqueness_key: None,
        }))
    }

    /// The fixture contract, without commits or thresholds.
    fn plain_contract(world: &mut World) {
        world
            .apply(Input::CreateContract(Box::new(fixtures::contract(
                CONTRACT,
            ))))
            .unwrap();
    }

    fn remaining(world: &World, index: usize) -> Money {
        world.customer.customer_commits[index]
            .commit
            .balance_at(world.at)
            .unwrap()
    }

    /// Lower priority first across levels; at equal priority the contract's own commit draws
    /// before the customer's credit, even though the credit is free (the level is decided
    /// before the cost basis); the ledger of a customer-level deduction names the contract; a
    /// decrease gives back to the customer-level segment it drew from.
    #[test]
    fn usage_draws_the_lower_priority_first_and_the_contracts_own_first_at_equal_priority() {
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        spec.commits = vec![fixtures::prepaid_commit(500, 10)];
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        let first = Id::from_u128(0x6002);
        world
            .apply(shared(SHARED, fixtures::credit(500, 10), vec![]))
            .unwrap();
        world
            .apply(shared(first, fixtures::credit(300, 5), vec![]))
            .unwrap();
        assert_eq!(world.customer.customer_commits.len(), 2);
        // B of the contract: its own $5 and both shared credits.
        let b = |w: &World| {
            let contract = w.contract();
            contract.balance(w.at).unwrap().as_decimal()
                + w.customer
                    .customer_commits
                    .iter()
                    .map(|c| c.commit.balance_at(w.at).unwrap().as_decimal())
                    .sum::<Decimal>()
        };
        assert_eq!(b(&world), Decimal::from(1_300));

        world.calls(3);
        assert_eq!(remaining(&world, 1), Money::ZERO, "priority 5 drew first");
        assert_eq!(remaining(&world, 0), usd(500));
        assert_eq!(world.balance(), usd(500));
        world.calls(5);
        assert_eq!(
            world.balance(),
            Money::ZERO,
            "then the contract's own at priority 10"
        );
        assert_eq!(remaining(&world, 0), usd(500));
        world.calls(2);
        assert_eq!(
            remaining(&world, 0),
            usd(300),
            "then the customer's at priority 10"
        );
        assert_eq!(world.outstanding(), Money::ZERO);
        let ledger = world.customer.customer_commits[0]
            .commit
            .ledger(|i| world.customer.contract_of_usage_invoice(i), world.at);
        let deduction = ledger.iter().find(|e| e.invoice_id.is_some()).unwrap();
        assert_eq!(deduction.amount, usd(-200));
        assert_eq!(deduction.contract_id, Some(CONTRACT));
        world.calls(4);
        assert_eq!(world.outstanding(), usd(100), "$13 of balances, 14 calls");

        // Tokens drawn from a shared credit; a decrease gives back to it.
        let mut world = World::new(false);
        plain_contract(&mut world);
        world
            .apply(shared(SHARED, fixtures::credit(5_000, 10), vec![]))
            .unwrap();
        let at = world.at;
        world
            .apply(Input::RecordUsage(fixtures::llm_tokens("a", at, "600")))
            .unwrap();
        let drawn = usd(5_000).checked_sub(remaining(&world, 0)).unwrap();
        assert!(drawn.is_positive());
        let line = &world.contract().periods[0].lines[0];
        assert_eq!(line.covered, drawn);
        assert_eq!(
            line.draws[0].source(),
            crate::domain::contract::DrawSource::Customer(0)
        );
        world
            .apply(Input::RecordUsage(fixtures::llm_tokens("b", at, "-600")))
            .unwrap();
        assert_eq!(remaining(&world, 0), usd(5_000), "given back whole");
        assert!(world.contract().periods[0].lines[0].draws.is_empty());
    }

    /// One customer-level credit usable by two contracts is one balance: both contracts' usage
    /// draws it down, and the prepaid threshold of the contract that did not draw fires on the
    /// event of the other that brought it low. A credit scoped to one contract is in that
    /// contract's B only.
    #[test]
    fn a_shared_balance_drawn_by_one_contract_fires_the_threshold_of_another() {
        let mut world = World::new(false);
        world
            .apply(shared(SHARED, fixtures::credit(5_000, 1), vec![]))
            .unwrap();
        // Contract A rates the API calls; contract B (a second contract of the customer on the
        // same rate card, starting later) watches the shared balance with a threshold.
        plain_contract(&mut world);
        let mut b = fixtures::contract(OTHER_CONTRACT);
        b.starting_at = world.at;
        b.prepaid_threshold = Some(fixtures::prepaid_threshold(
            2_000,
            5_000,
            GateType::External,
        ));
        world.apply(Input::CreateContract(Box::new(b))).unwrap();
        assert!(world.customer.contracts[1].workflows.is_empty(), "B = $50");
        // Each call is rated on both contracts ($1 each), both drawn from the shared credit.
        assert!(webhooks(&world.calls(14)).is_empty());
        assert_eq!(remaining(&world, 0), usd(2_200));
        let effects = world.calls(1);
        assert_eq!(remaining(&world, 0), usd(2_000));
        assert_eq!(
            types(&effects),
            [
                "payment_gate.threshold_reached",
                "payment_gate.external_initiate"
            ]
        );
        let workflow = &world.customer.contracts[1].workflows[0];
        assert_eq!(workflow.access_amount, usd(3_000), "recharged to $50");
        assert!(world.customer.contracts[0].workflows.is_empty());

        // Scoped to contract A: B does not count it.
        let mut world = World::new(false);
        plain_contract(&mut world);
        world
            .apply(shared(SHARED, fixtures::credit(5_000, 1), vec![CONTRACT]))
            .unwrap();
        let mut b = fixtures::contract(OTHER_CONTRACT);
        b.starting_at = world.at;
        b.prepaid_threshold = Some(fixtures::prepaid_threshold(
            2_000,
            5_000,
            GateType::External,
        ));
        let effects = world
            .apply(Input::CreateContract(Box::new(b)))
            .unwrap()
            .effects;
        assert_eq!(
            types(&effects),
            [
                "payment_gate.threshold_reached",
                "payment_gate.external_initiate"
            ],
            "B has nothing of its own"
        );
        assert_eq!(
            world.customer.contracts[1].workflows[0].access_amount,
            usd(5_000)
        );
        world.calls(1);
        assert_eq!(remaining(&world, 0), usd(4_900), "only A drew from it");
    }

    /// A new customer-level commit covers usage already charged; `updateEndDate` shortens
    /// access (nothing is drawn after it) and stops later invoices (voided), and refuses what
    /// would lengthen, touch an issued invoice, or name the wrong kind.
    #[test]
    fn a_customer_commit_covers_outstanding_usage_and_its_end_moves_only_earlier() {
        let mut world = World::new(false);
        plain_contract(&mut world);
        world.calls(3);
        assert_eq!(world.outstanding(), usd(300));
        let mut commit = fixtures::prepaid_commit(1_000, 10);
        let later = world.at.plus_ms(60 * MS_PER_DAY);
        commit.invoice_schedule = vec![
            (T0, usd(500), Decimal::ONE),
            (later, usd(500), Decimal::ONE),
        ];
        let applied = world.apply(shared(SHARED, commit.clone(), vec![])).unwrap();
        assert_eq!(applied.created, [SHARED]);
        assert_eq!(
            notices(&applied.effects)[0].1["type"],
            "commit.create",
            "announced"
        );
        assert!(notices(&applied.effects)[0].1.get("contract_id").is_none());
        assert_eq!(world.outstanding(), Money::ZERO, "covered at once");
        assert_eq!(remaining(&world, 0), usd(700));
        let purchases = &world.contract().purchases;
        assert_eq!(purchases.len(), 2, "billed on the invoice contract");
        assert_eq!(
            world.apply(shared(SHARED, commit.clone(), vec![])),
            Err(Rejection::AlreadyExists)
        );
        let mut unbilled = shared(Id::from_u128(0x6009), commit, vec![]);
        if let Input::CreateCustomerCommit(spec) = &mut unbilled {
            spec.invoice_contract_id = None;
        }
        assert!(matches!(
            world.apply(unbilled),
            Err(Rejection::InvalidField(_))
        ));

        let end = |access: Option<Timestamp>, invoices: Option<Timestamp>, credit: bool| {
            Input::EndCustomerCommit(Box::new(CustomerCommitEnd {
                commit_id: SHARED,
                credit,
                access_ending_before: access,
                invoices_ending_before: invoices,
            }))
        };
        let invalid = |r: Result<Applied, Rejection>| matches!(r, Err(Rejection::InvalidField(_)));
        assert!(invalid(world.apply(end(
            Some(fixtures::year_end().plus_ms(1)),
            None,
            false
        ))));
        assert!(invalid(world.apply(end(Some(T0), None, false))));
        assert!(invalid(world.apply(end(None, Some(T0), false))), "issued");
        assert!(
            invalid(world.apply(end(Some(world.at), None, true))),
            "a commit"
        );
        assert_eq!(
            world.apply(end(None, None, false)),
            Err(Rejection::MissingField("access_ending_before"))
        );
        let before = world.customer.clone();
        let stop = world.at.plus_ms(MS_PER_DAY);
        world.apply(end(Some(stop), Some(later), false)).unwrap();
        assert_ne!(world.customer, before);
        let shared_commit = &world.customer.customer_commits[0].commit;
        assert_eq!(shared_commit.segments[0].ending_before, stop);
        assert_eq!(shared_commit.invoice_schedule.len(), 1);
        assert_eq!(world.contract().purchases[1].status, InvoiceStatus::Void);
        world.at = stop;
        world.calls(1);
        assert_eq!(world.outstanding(), usd(100), "nothing drawn after the end");
        let ledger = shared_commit_ledger(&world);
        assert!(ledger.contains(&"PREPAID_COMMIT_EXPIRATION"), "{ledger:?}");
        let mut unknown = end(Some(stop), None, false);
        if let Input::EndCustomerCommit(e) = &mut unknown {
            e.commit_id = Id::from_u128(0x7777);
        }
        assert_eq!(world.apply(unknown), Err(Rejection::CommitNotFound));
    }

    /// An invoice voided after `invoices_ending_before` was refused for it no longer stands in
    /// the way; the customer wakes when a customer-level segment ends; a customer has at most
    /// [`CUSTOMER_COMMITS_MAX`] of them.
    ///
    /// [`CUSTOMER_COMMITS_MAX`]: crate::domain::customer::customer_level::CUSTOMER_COMMITS_MAX
    #[test]
    fn a_voided_invoice_does_not_block_an_end_and_a_shared_segment_end_wakes_the_customer() {
        use crate::domain::customer::customer_level::CUSTOMER_COMMITS_MAX;
        let mut world = World::new(false);
        plain_contract(&mut world);
        let mut commit = fixtures::prepaid_commit(1_000, 10);
        let ends = world.at.plus_ms(10 * MS_PER_DAY);
        commit.access_schedule = vec![(usd(1_000), T0, ends)];
        world.apply(shared(SHARED, commit, vec![])).unwrap();
        assert_eq!(world.customer.next_wake(world.at), Some(ends));
        let invoice = world.contract().purchases[0].id;
        let stop = |at| {
            Input::EndCustomerCommit(Box::new(CustomerCommitEnd {
                commit_id: SHARED,
                credit: false,
                access_ending_before: None,
                invoices_ending_before: Some(at),
            }))
        };
        assert!(matches!(
            world.apply(stop(T0)),
            Err(Rejection::InvalidField(_))
        ));
        world
            .apply(Input::VoidInvoice {
                invoice_id: invoice,
            })
            .unwrap();
        world.apply(stop(T0)).unwrap();
        assert!(
            world.customer.customer_commits[0]
                .commit
                .invoice_schedule
                .is_empty()
        );
        for i in 1..CUSTOMER_COMMITS_MAX {
            let id = Id::from_u128(0x9000 + i as u128);
            world
                .apply(shared(id, fixtures::credit(1, 10), vec![]))
                .unwrap();
        }
        let one_more = shared(Id::from_u128(0x8fff), fixtures::credit(1, 10), vec![]);
        assert!(matches!(
            world.apply(one_more),
            Err(Rejection::InvalidField(_))
        ));
    }

    fn shared_commit_ledger(world: &World) -> Vec<&'static str> {
        world.customer.customer_commits[0]
            .commit
            .ledger(|i| world.customer.contract_of_usage_invoice(i), world.at)
            .iter()
            .map(|e| e.entry_type.as_str())
            .collect()
    }
}

mod balance_corrections {
    //! Custom fields and `threshold_balance_specifiers` (B leaves out what they exclude), manual
    //! ledger entries, and archiving commits and credits through the edit.

    use super::*;
    use crate::domain::contract::{CustomFieldFilter, FieldEntity};
    use crate::domain::customer::{
        CommitUpdate, CustomerCommitSpec, InvoiceUpdate, ManualEntrySpec, SegmentUpdate,
    };

    fn promo(mut spec: CommitSpec) -> CommitSpec {
        spec.custom_fields = vec![("campaign".into(), "promo".into())];
        spec
    }

    fn exclude_promo(entity: FieldEntity) -> Vec<Vec<Vec<CustomFieldFilter>>> {
        vec![vec![vec![CustomFieldFilter {
            entity,
            key: "campaign".into(),
            value: "promo".into(),
        }]]]
    }

    fn entry(id: u128, commit: Id, segment: Id, amount: i64) -> Input {
        Input::AddManualEntry(Box::new(ManualEntrySpec {
            id: Id::from_u128(id),
            contract_id: Some(CONTRACT),
            commit_id: commit,
            segment_id: segment,
            amount: usd(amount),
            reason: "support goodwill".into(),
            timestamp: None,
        }))
    }

    /// A promotional credit (drawn first: free, lower priority) is left out of B by the
    /// specifiers, so the prepaid threshold watches the paid balance alone; a customer-level
    /// credit with the field is left out too; replacing the specifiers with none counts it
    /// again; a spend threshold refuses them.
    #[test]
    fn specifiers_keep_a_promotional_credit_out_of_the_watched_balance() {
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        spec.commits = vec![fixtures::prepaid_commit(5_000, 10)];
        spec.credits = vec![promo(fixtures::credit(3_000, 1))];
        let mut threshold = fixtures::prepaid_threshold(2_000, 5_000, GateType::External);
        threshold.balance_specifiers = exclude_promo(FieldEntity::ContractCredit);
        spec.prepaid_threshold = Some(threshold);
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        assert_eq!(world.balance(), usd(5_000), "the $30 promo is not in B");
        world
            .apply(Input::CreateCustomerCommit(Box::new(CustomerCommitSpec {
                id: Id::from_u128(0x7001),
                commit: promo(fixtures::credit(1_000, 2)),
                applicable_contract_ids: vec![],
                invoice_contract_id: None,
                uniqueness_key: None,
            })))
            .unwrap();
        // 40 calls spend the promos ($30 + $10): B does not move, nothing fires.
        assert!(types(&world.calls(40)).is_empty());
        assert_eq!(world.balance(), usd(5_000));
        // 30 more draw the paid commit to $20: B <= $20 fires a $30 recharge.
        assert!(types(&world.calls(29)).is_empty());
        assert_eq!(
            types(&world.calls(1)),
            vec![
                "payment_gate.threshold_reached",
                "payment_gate.external_initiate"
            ]
        );
        assert_eq!(world.contract().workflows[0].access_amount, usd(3_000));

        // Without specifiers the promo would have been counted: the same start, with them
        // removed by an update, fires 40 calls later.
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        spec.commits = vec![fixtures::prepaid_commit(5_000, 10)];
        spec.credits = vec![promo(fixtures::credit(3_000, 1))];
        let mut threshold = fixtures::prepaid_threshold(2_000, 5_000, GateType::External);
        threshold.balance_specifiers = exclude_promo(FieldEntity::ContractCreditOrCommit);
        spec.prepaid_threshold = Some(threshold);
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        world
            .apply(Input::edit(ContractEdit {
                edit_id: Id::from_u128(9),
                contract_id: CONTRACT,
                update_prepaid_threshold: Some(ThresholdUpdate {
                    balance_specifiers: Some(vec![]),
                    ..ThresholdUpdate::default()
                }),
                ..ContractEdit::default()
            }))
            .unwrap();
        assert_eq!(world.balance(), usd(8_000));
        assert!(types(&world.calls(59)).is_empty());
        assert_eq!(
            types(&world.calls(1)).len(),
            2,
            "B reached $20 with the promo in it"
        );

        // An entity that does not match the balance's kind excludes nothing.
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        spec.credits = vec![promo(fixtures::credit(3_000, 1))];
        let mut threshold = fixtures::prepaid_threshold(2_000, 5_000, GateType::External);
        threshold.balance_specifiers = exclude_promo(FieldEntity::Commit);
        spec.prepaid_threshold = Some(threshold);
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        assert_eq!(world.balance(), usd(3_000));

        // A spend threshold watches no balance; an empty exclude is refused; nothing created.
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        let mut spend = fixtures::spend_threshold(10_000, GateType::External);
        spend.balance_specifiers = exclude_promo(FieldEntity::Commit);
        spec.spend_threshold = Some(spend);
        assert!(matches!(
            world.apply(Input::CreateContract(Box::new(spec))),
            Err(Rejection::InvalidField(m)) if m.contains("spend_threshold_configuration")
        ));
        let mut spec = fixtures::contract(CONTRACT);
        let mut threshold = fixtures::prepaid_threshold(2_000, 5_000, GateType::External);
        threshold.balance_specifiers = vec![vec![vec![]]];
        spec.prepaid_threshold = Some(threshold);
        assert!(matches!(
            world.apply(Input::CreateContract(Box::new(spec))),
            Err(Rejection::InvalidField(m)) if m.contains("at least one")
        ));
        let mut spec = fixtures::contract(CONTRACT);
        spec.credits = vec![fixtures::credit(100, 1)];
        spec.credits[0].custom_fields = vec![(String::new(), "x".into())];
        assert!(world.apply(Input::CreateContract(Box::new(spec))).is_err());
        assert!(world.customer.contracts.is_empty());
    }

    /// Manual entries move the segment's balance at once: a negative one lowers B and fires the
    /// prepaid threshold; a positive one pays for uncovered usage first; the ledger shows each
    /// with its reason; every refusal changes nothing; a retried entry (same id) is refused.
    #[test]
    fn manual_entries_adjust_balances_fire_thresholds_and_cover_outstanding_usage() {
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        spec.commits = vec![fixtures::prepaid_commit(5_000, 10)];
        spec.prepaid_threshold = Some(fixtures::prepaid_threshold(
            2_000,
            5_000,
            GateType::External,
        ));
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        let commit = world.contract().commits[0].id;
        let segment = world.contract().commits[0].segments[0].id;
        let applied = world.apply(entry(1, commit, segment, -2_500)).unwrap();
        assert!(types(&applied.effects).is_empty());
        assert_eq!(world.balance(), usd(2_500));
        let applied = world.apply(entry(2, commit, segment, -1_000)).unwrap();
        assert_eq!(
            types(&applied.effects),
            vec![
                "payment_gate.threshold_reached",
                "payment_gate.external_initiate"
            ]
        );
        assert_eq!(world.contract().workflows[0].access_amount, usd(3_500));
        let ledger = world.contract().commits[0].ledger(|_| Some(CONTRACT), world.at);
        let manual: Vec<_> = ledger
            .iter()
            .filter(|e| e.entry_type.as_str() == "PREPAID_COMMIT_MANUAL")
            .map(|e| (e.amount, e.reason.clone().unwrap(), e.timestamp))
            .collect();
        assert_eq!(
            manual,
            vec![
                (usd(-2_500), "support goodwill".to_string(), T0),
                (usd(-1_000), "support goodwill".to_string(), T0),
            ],
            "the timestamp defaults to the segment's start"
        );
        // The same entry again (a retry): refused, counted once.
        assert_eq!(
            world.apply(entry(2, commit, segment, -1_000)),
            Err(Rejection::AlreadyExists)
        );
        assert_eq!(world.balance(), usd(1_500));

        // Refusals, each leaving the customer as it was.
        let before = world.customer.clone();
        let gated = {
            let mut c = fixtures::prepaid_commit(2_000, 10);
            c.payment_gate = Some(fixtures::gate(GateType::External));
            world
                .apply(Input::edit(ContractEdit {
                    edit_id: Id::from_u128(50),
                    contract_id: CONTRACT,
                    add_commits: vec![c],
                    ..ContractEdit::default()
                }))
                .unwrap()
                .created[0]
        };
        let gated_segment = world.contract().commit(gated).unwrap().segments[0].id;
        let with_gated = world.customer.clone();
        let cases: Vec<(Input, &str)> = vec![
            (entry(10, commit, segment, 0), "amount"),
            (entry(11, commit, Id::from_u128(1), 100), "segment_id"),
            (entry(12, gated, gated_segment, 100), "payment gate"),
            (
                Input::AddManualEntry(Box::new(ManualEntrySpec {
                    reason: "   ".into(),
                    ..manual_spec(13, commit, segment)
                })),
                "reason",
            ),
            (
                Input::AddManualEntry(Box::new(ManualEntrySpec {
                    contract_id: None,
                    ..manual_spec(14, commit, segment)
                })),
                "contract_id",
            ),
            (
                Input::AddManualEntry(Box::new(ManualEntrySpec {
                    amount: usd(crate::domain::bounds::AMOUNT_MAX)
                        .checked_add(usd(1))
                        .unwrap(),
                    ..manual_spec(15, commit, segment)
                })),
                "amount",
            ),
        ];
        for (input, field) in cases {
            match world.apply(input) {
                Err(Rejection::InvalidField(m)) => assert!(m.contains(field), "{m}"),
                other => panic!("{field}: {other:?}"),
            }
            assert_eq!(world.customer, with_gated);
        }
        assert_eq!(
            world.apply(entry(16, Id::from_u128(3), segment, 100)),
            Err(Rejection::CommitNotFound)
        );
        assert_eq!(
            before.contracts[0].commits.len() + 1,
            world.contract().commits.len()
        );

        // A positive entry on an exhausted credit pays for the uncovered usage first.
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        spec.credits = vec![fixtures::credit(500, 1)];
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        world.calls(8);
        assert_eq!(world.outstanding(), usd(300));
        let credit = world.contract().commits[0].id;
        let segment = world.contract().commits[0].segments[0].id;
        world.apply(entry(20, credit, segment, 1_000)).unwrap();
        assert_eq!(world.outstanding(), Money::ZERO);
        assert_eq!(world.balance(), usd(700));
        // Past the segment's end: refused (its expiration is history).
        world.at = fixtures::year_end();
        assert!(matches!(
            world.apply(entry(21, credit, segment, 100)),
            Err(Rejection::InvalidField(m)) if m.contains("ended")
        ));
    }

    fn manual_spec(id: u128, commit: Id, segment: Id) -> ManualEntrySpec {
        match entry(id, commit, segment, 100) {
            Input::AddManualEntry(spec) => *spec,
            _ => unreachable!(),
        }
    }

    fn update(id: u128, updates: Vec<CommitUpdate>) -> Input {
        Input::edit(ContractEdit {
            edit_id: Id::from_u128(id),
            contract_id: CONTRACT,
            update_commits: updates,
            ..ContractEdit::default()
        })
    }

    /// `update_commits` / `update_credits`: a raised amount pays for uncovered usage, a lower
    /// one never goes below what was drawn; a drawn segment's start stays and its end moves
    /// only into the future; an untouched segment can be removed (it disappears and never
    /// draws), a drawn one cannot; a priority change reorders the drawdown; invoice items
    /// change only while unissued; a threshold's commit keeps its schedules; each refusal
    /// changes nothing.
    #[test]
    fn updates_change_commits_in_place_without_rewriting_what_money_did() {
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        spec.credits = vec![fixtures::credit(500, 1)];
        let mut later = fixtures::prepaid_commit(5_000, 10);
        later.invoice_schedule = vec![(T0.plus_ms(60 * MS_PER_DAY), usd(5_000), Decimal::ONE)];
        spec.commits = vec![later];
        spec.prepaid_threshold = Some(fixtures::prepaid_threshold(
            1_000,
            2_000,
            GateType::External,
        ));
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        let commit = world.contract().commits[0].id;
        let credit = world.contract().commits[1].id;
        let credit_segment = world.contract().commits[1].segments[0].id;
        world.calls(4);
        assert_eq!(
            world.contract().commits[1].segments[0].remaining(),
            usd(100)
        );
        let credit_update = |f: &dyn Fn(&mut CommitUpdate)| {
            let mut u = CommitUpdate {
                commit_id: credit,
                credit: true,
                ..CommitUpdate::default()
            };
            f(&mut u);
            u
        };
        let segment_change =
            |amount: Option<i64>, start: Option<Timestamp>, end: Option<Timestamp>| {
                credit_update(&|u| {
                    u.update_segments = vec![SegmentUpdate {
                        id: credit_segment,
                        amount: amount.map(usd),
                        starting_at: start,
                        ending_before: end,
                    }]
                })
            };
        // Refusals, each changing nothing.
        let before = world.customer.clone();
        let refused: Vec<(Vec<CommitUpdate>, &str)> = vec![
            (vec![segment_change(Some(399), None, None)], "drew 400"),
            (
                vec![segment_change(None, Some(T0.plus_ms(1)), None)],
                "start cannot move",
            ),
            (
                vec![segment_change(None, None, Some(T0.plus_ms(MS_PER_DAY)))],
                "into the past",
            ),
            (
                vec![credit_update(&|u| u.remove_segments = vec![credit_segment])],
                "drawn from",
            ),
            (
                vec![CommitUpdate {
                    commit_id: credit,
                    ..CommitUpdate::default()
                }],
                "is a credit",
            ),
            (
                vec![
                    credit_update(&|u| u.name = Some("x".into())),
                    credit_update(&|u| u.name = Some("y".into())),
                ],
                "twice",
            ),
            (
                vec![credit_update(&|u| {
                    u.add_invoices = vec![(T0, usd(1), Decimal::ONE)]
                })],
                "credits are free",
            ),
        ];
        for (i, (updates, why)) in refused.into_iter().enumerate() {
            match world.apply(update(200 + i as u128, updates)) {
                Err(Rejection::InvalidField(m)) => assert!(m.contains(why), "{why}: {m}"),
                other => panic!("{why}: {other:?}"),
            }
            assert_eq!(world.customer, before, "{why}");
        }

        // Raised: $4 more, and a second segment of $2 from now on.
        let now = world.at;
        world
            .apply(update(
                210,
                vec![credit_update(&|u| {
                    u.update_segments = vec![SegmentUpdate {
                        id: credit_segment,
                        amount: Some(usd(900)),
                        starting_at: None,
                        ending_before: Some(fixtures::year_end().plus_ms(MS_PER_DAY)),
                    }];
                    u.add_segments = vec![(usd(200), now, fixtures::year_end())];
                    u.name = Some("Renamed".into());
                })],
            ))
            .unwrap();
        let c = world.contract().commit(credit).unwrap();
        assert_eq!(c.name, "Renamed");
        assert_eq!(c.segments.len(), 2);
        assert_eq!(c.segments[0].remaining(), usd(500));
        // The untouched new segment can be removed: it leaves the views and never draws.
        let added = c.segments[1].id;
        world
            .apply(update(
                211,
                vec![credit_update(&|u| u.remove_segments = vec![added])],
            ))
            .unwrap();
        let c = world.contract().commit(credit).unwrap();
        assert!(c.segments[1].is_removed());
        assert!(
            c.ledger(|_| Some(CONTRACT), world.at)
                .iter()
                .all(|e| e.segment_id != added)
        );
        assert!(
            matches!(
                world.apply(entry(240, credit, added, 100)),
                Err(Rejection::InvalidField(m)) if m.contains("segment_id")
            ),
            "a removed segment takes no manual entry"
        );
        // Lowered to exactly what was drawn: nothing remains; the commit draws next.
        world
            .apply(update(212, vec![segment_change(Some(400), None, None)]))
            .unwrap();
        assert_eq!(
            world.contract().commit(credit).unwrap().segments[0].remaining(),
            Money::ZERO
        );
        world.calls(1);
        assert_eq!(
            world.contract().commits[0].segments[0].remaining(),
            usd(4_900)
        );
        // Priority: the credit raised again and moved after the commit: the commit draws first.
        world
            .apply(update(
                213,
                vec![credit_update(&|u| {
                    u.priority = Some(Some(Decimal::from(50)));
                    u.update_segments = vec![SegmentUpdate {
                        id: credit_segment,
                        amount: Some(usd(1_400)),
                        ..SegmentUpdate::default()
                    }];
                })],
            ))
            .unwrap();
        world.calls(1);
        assert_eq!(
            world.contract().commits[0].segments[0].remaining(),
            usd(4_800)
        );
        assert_eq!(
            world.contract().commit(credit).unwrap().segments[0].remaining(),
            usd(1_000)
        );

        // The commit's unissued invoice: raised, another added; the commit was drawn from, so
        // its invoices are neither lowered nor removed.
        let item = world.contract().commits[0].invoice_schedule[0].id;
        let invoice = world.contract().commits[0].invoice_schedule[0].invoice_id;
        let commit_update = |f: &dyn Fn(&mut CommitUpdate)| {
            let mut u = CommitUpdate {
                commit_id: commit,
                ..CommitUpdate::default()
            };
            f(&mut u);
            u
        };
        world
            .apply(update(
                214,
                vec![commit_update(&|u| {
                    u.update_invoices = vec![InvoiceUpdate {
                        id: item,
                        amount: Some(usd(6_000)),
                        ..InvoiceUpdate::default()
                    }];
                    u.add_invoices =
                        vec![(T0.plus_ms(90 * MS_PER_DAY), usd(500), Decimal::from(2))];
                })],
            ))
            .unwrap();
        let purchases = &world.contract().purchases;
        let first = purchases.iter().find(|p| p.id == invoice).unwrap();
        assert_eq!(
            (first.total, first.status),
            (usd(6_000), InvoiceStatus::Draft)
        );
        let added = purchases
            .iter()
            .find(|p| p.commit_id == commit && p.id != invoice)
            .unwrap();
        assert_eq!(
            (added.total, added.status),
            (usd(1_000), InvoiceStatus::Draft)
        );
        let before = world.customer.clone();
        for (i, (u, why)) in [
            (
                commit_update(&|u| u.remove_invoices = vec![item]),
                "not removed",
            ),
            (
                commit_update(&|u| {
                    u.update_invoices = vec![InvoiceUpdate {
                        id: item,
                        amount: Some(usd(5_999)),
                        ..InvoiceUpdate::default()
                    }]
                }),
                "not lowered",
            ),
            (
                commit_update(&|u| {
                    u.update_invoices = vec![InvoiceUpdate {
                        id: item,
                        amount: Some(usd(7_000)),
                        quantity: Some(Decimal::from(2)),
                        ..InvoiceUpdate::default()
                    }]
                }),
                "not both",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            match world.apply(update(215 + 100 * i as u128, vec![u])) {
                Err(Rejection::InvalidField(m)) => assert!(m.contains(why), "{why}: {m}"),
                other => panic!("{why}: {other:?}"),
            }
            assert_eq!(world.customer, before);
        }
        assert_eq!(world.contract().commits[0].invoice_schedule.len(), 2);
        // The same edit applied again (a retry past the edits the contract remembers) finds
        // the invoice it added and is refused.
        world.customer.contracts[0].recent_edits.clear();
        assert_eq!(
            world.apply(update(
                214,
                vec![commit_update(&|u| {
                    u.add_invoices = vec![(T0.plus_ms(90 * MS_PER_DAY), usd(500), Decimal::from(2))]
                })]
            )),
            Err(Rejection::AlreadyExists)
        );

        // A threshold's recharge commit keeps its schedules (its workflow charged them).
        world.calls(48);
        let recharge = world.contract().workflows[0].commit_id;
        let recharge_segment = world.contract().commit(recharge).unwrap().segments[0].id;
        let before = world.customer.clone();
        let refused = world.apply(update(
            216,
            vec![CommitUpdate {
                commit_id: recharge,
                update_segments: vec![SegmentUpdate {
                    id: recharge_segment,
                    amount: Some(usd(1)),
                    ..SegmentUpdate::default()
                }],
                ..CommitUpdate::default()
            }],
        ));
        assert!(matches!(refused, Err(Rejection::InvalidField(m)) if m.contains("workflow")));
        assert_eq!(world.customer, before);

        // A raise pays for usage nothing covered.
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        spec.credits = vec![fixtures::credit(500, 1)];
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        world.calls(6);
        assert_eq!(world.outstanding(), usd(100));
        let credit = world.contract().commits[0].id;
        let segment = world.contract().commits[0].segments[0].id;
        world
            .apply(update(
                220,
                vec![CommitUpdate {
                    commit_id: credit,
                    credit: true,
                    update_segments: vec![SegmentUpdate {
                        id: segment,
                        amount: Some(usd(700)),
                        ..SegmentUpdate::default()
                    }],
                    ..CommitUpdate::default()
                }],
            ))
            .unwrap();
        assert_eq!(
            world.outstanding(),
            Money::ZERO,
            "the raise paid the uncovered call"
        );
        assert_eq!(world.balance(), usd(100));
        // An ended segment's dates do not move.
        world.at = fixtures::year_end();
        assert!(matches!(
            world.apply(update(
                221,
                vec![CommitUpdate {
                    commit_id: credit,
                    credit: true,
                    update_segments: vec![SegmentUpdate {
                        id: segment,
                        ending_before: Some(fixtures::year_end().plus_ms(MS_PER_DAY)),
                        ..SegmentUpdate::default()
                    }],
                    ..CommitUpdate::default()
                }],
            )),
            Err(Rejection::InvalidField(m)) if m.contains("history")
        ));

        // A commit waiting for its payment gate pays for nothing, even when an update widens
        // what it pays for; an undrawn commit's unissued invoice can be removed (voided).
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        let mut later = fixtures::prepaid_commit(1_000, 10);
        later.invoice_schedule = vec![(T0.plus_ms(60 * MS_PER_DAY), usd(1_000), Decimal::ONE)];
        later.applicable_product_ids = vec![fixtures::TOKEN_PRODUCT];
        spec.commits = vec![later];
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        let mut gated = fixtures::prepaid_commit(2_000, 10);
        gated.payment_gate = Some(fixtures::gate(GateType::External));
        gated.applicable_product_ids = vec![fixtures::TOKEN_PRODUCT];
        let gated = world
            .apply(Input::edit(ContractEdit {
                edit_id: Id::from_u128(230),
                contract_id: CONTRACT,
                add_commits: vec![gated],
                ..ContractEdit::default()
            }))
            .unwrap()
            .created[0];
        world.calls(3);
        assert_eq!(world.outstanding(), usd(300));
        world
            .apply(update(
                231,
                vec![CommitUpdate {
                    commit_id: gated,
                    applicable_product_ids: Some(vec![]),
                    ..CommitUpdate::default()
                }],
            ))
            .unwrap();
        assert_eq!(
            world.outstanding(),
            usd(300),
            "an unpaid commit pays nothing"
        );
        let commit = world.contract().commits[0].id;
        let item = world.contract().commits[0].invoice_schedule[0].id;
        world
            .apply(update(
                232,
                vec![CommitUpdate {
                    commit_id: commit,
                    remove_invoices: vec![item],
                    ..CommitUpdate::default()
                }],
            ))
            .unwrap();
        let purchase = world
            .contract()
            .purchases
            .iter()
            .find(|p| p.commit_id == commit)
            .unwrap();
        assert_eq!(purchase.status, InvoiceStatus::Void);
    }

    /// An edit of an older log version replays as it applied then: a repeat of its id applies
    /// again (those versions did not refuse it), so an old log replays to the same state.
    #[test]
    fn a_repeated_edit_of_an_older_log_version_applies_again_on_replay() {
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        spec.spend_threshold = Some(fixtures::spend_threshold(10_000, GateType::External));
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        let old = crate::domain::customer::legacy::ContractEditV8 {
            edit_id: Id::from_u128(0x01d),
            contract_id: CONTRACT,
            uniqueness_key: None,
            add_commits: vec![],
            add_credits: vec![],
            add_spend_threshold: None,
            update_spend_threshold: None,
            add_prepaid_threshold: None,
            update_prepaid_threshold: None,
            update_ending_before: None,
            allow_ending_before_finalized_invoice: true,
        };
        for _ in 0..2 {
            world
                .apply(Input::EditContractV6(Box::new(old.clone())))
                .unwrap();
        }
        assert_eq!(world.contract().edits, 2);
        assert!(world.contract().recent_edits.is_empty());
    }

    /// Archiving a credit stops its drawdown at once (what it covered stays covered, what
    /// remains expires in the ledger), announces `credit.archive`, ends its segment; archiving
    /// a commit voids its purchase invoice not issued yet; refusals change nothing.
    #[test]
    fn archived_commits_and_credits_stop_drawing_and_void_their_unissued_invoices() {
        let mut world = World::new(false);
        let mut spec = fixtures::contract(CONTRACT);
        spec.credits = vec![fixtures::credit(1_000, 1)];
        let mut later = fixtures::prepaid_commit(5_000, 10);
        later.invoice_schedule = vec![(T0.plus_ms(60 * MS_PER_DAY), usd(5_000), Decimal::ONE)];
        spec.commits = vec![later];
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        let commit = world.contract().commits[0].id;
        let credit = world.contract().commits[1].id;
        world.calls(4);
        assert_eq!(
            world.contract().commits[1].balance_at(world.at).unwrap(),
            usd(600)
        );
        let archive = |id: u128, commits: Vec<Id>, credits: Vec<Id>| {
            Input::edit(ContractEdit {
                edit_id: Id::from_u128(id),
                contract_id: CONTRACT,
                archive_commits: commits,
                archive_credits: credits,
                ..ContractEdit::default()
            })
        };
        // Refusals: wrong list, unknown, twice; nothing changes.
        let before = world.customer.clone();
        for (input, why) in [
            (archive(60, vec![credit], vec![]), "is a credit"),
            (archive(61, vec![], vec![commit]), "is a commit"),
            (archive(62, vec![Id::from_u128(9)], vec![]), "not a commit"),
            (archive(63, vec![], vec![credit, credit]), "twice"),
        ] {
            match world.apply(input) {
                Err(Rejection::InvalidField(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{why}: {other:?}"),
            }
            assert_eq!(world.customer, before);
        }
        let applied = world.apply(archive(64, vec![], vec![credit])).unwrap();
        // The same edit again (a retry whose answer was lost): 409, applied once.
        let once = world.customer.clone();
        assert_eq!(
            world.apply(archive(64, vec![], vec![credit])),
            Err(Rejection::AlreadyExists)
        );
        assert_eq!(world.customer, once);
        let sent: Vec<_> = notices(&applied.effects)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert!(sent.contains(&"credit.archive"), "{sent:?}");
        assert!(sent.contains(&"credit.segment.end"), "{sent:?}");
        let archived = world.contract().commit(credit).unwrap();
        assert_eq!(archived.balance_at(world.at).unwrap(), Money::ZERO);
        let ledger = archived.ledger(|_| Some(CONTRACT), world.at);
        let last = ledger.last().unwrap();
        assert_eq!(
            (last.entry_type.as_str(), last.amount),
            ("CREDIT_EXPIRATION", usd(-600))
        );
        assert_eq!(
            world.outstanding(),
            Money::ZERO,
            "covered usage stays covered"
        );
        world.calls(2);
        assert_eq!(world.balance(), usd(4_800), "the commit draws now");
        assert_eq!(
            world.apply(archive(65, vec![], vec![credit])),
            Err(Rejection::InvalidField(format!(
                "archive_credits[].id: {credit} is archived already"
            )))
        );
        // The commit was drawn from and its invoice (in 60 days) is not issued: refused, the
        // invoice stays due.
        let before = world.customer.clone();
        assert!(matches!(
            world.apply(archive(66, vec![commit], vec![])),
            Err(Rejection::InvalidField(m)) if m.contains("stay due")
        ));
        assert_eq!(world.customer, before);
        // An undrawn commit: its archive voids its unissued invoice.
        let mut spare = fixtures::prepaid_commit(1_000, 90);
        spare.invoice_schedule = vec![(T0.plus_ms(60 * MS_PER_DAY), usd(1_000), Decimal::ONE)];
        let spare = world
            .apply(Input::edit(ContractEdit {
                edit_id: Id::from_u128(69),
                contract_id: CONTRACT,
                add_commits: vec![spare],
                ..ContractEdit::default()
            }))
            .unwrap()
            .created[0];
        world.apply(archive(70, vec![spare], vec![])).unwrap();
        let purchase = world
            .contract()
            .purchases
            .iter()
            .find(|p| p.commit_id == spare)
            .unwrap();
        assert_eq!(purchase.status, InvoiceStatus::Void);

        // A commit waiting for its payment gate: cancel first.
        let mut c = fixtures::prepaid_commit(2_000, 10);
        c.payment_gate = Some(fixtures::gate(GateType::External));
        let gated = world
            .apply(Input::edit(ContractEdit {
                edit_id: Id::from_u128(67),
                contract_id: CONTRACT,
                add_commits: vec![c],
                ..ContractEdit::default()
            }))
            .unwrap()
            .created[0];
        assert!(matches!(
            world.apply(archive(68, vec![gated], vec![])),
            Err(Rejection::InvalidField(m)) if m.contains("cancel workflow")
        ));
    }
}

mod custom_pricing_units {
    //! Custom pricing units: products priced in "credits" on a rate card with a conversion,
    //! commits and credits in that unit, fiat paying (converted) for what they leave, and a
    //! prepaid balance threshold in credits charged in fiat.

    use super::*;
    use crate::domain::catalog::{Price, Rate, RateCard};
    use crate::domain::contract::DrawSource;
    use crate::domain::customer::ContractSpec;
    use crate::domain::money::{Conversion, CreditType, CreditUnit};
    use crate::domain::usage::UsageEvent;

    const CREDITS: Id = Id::from_u128(0x9001);
    const TOKENS_UNIT: Id = Id::from_u128(0x9003);
    const CPU_CARD: Id = Id::from_u128(0x9002);

    fn dec(text: &str) -> Decimal {
        crate::domain::money::parse_exact_decimal(text).unwrap()
    }

    fn unit(id: Id, name: &str) -> CatalogChange {
        CatalogChange::CreateCreditType(CreditType {
            id,
            name: name.into(),
            currency: None,
            unit: CreditUnit::Custom,
        })
    }

    fn rate(product: Id, price: i64, credit_type_id: Id) -> Rate {
        Rate {
            product_id: product,
            price: Price::Flat(usd(price)),
            entitled: true,
            starting_at: Timestamp(0),
            ending_before: None,
            credit_type_id,
            added_in_version: 0,
        }
    }

    /// A card where an API call costs 10 credits (a credit is worth `per_credit` cents) and a
    /// token 1 cent.
    fn credits_world(per_credit: &str) -> World {
        let mut world = World::new(false);
        let changes = [
            unit(CREDITS, "credits"),
            CatalogChange::CreateRateCard(RateCard {
                id: CPU_CARD,
                name: "Credits".into(),
                description: None,
                fiat_credit_type: CreditType::usd_cents(),
                aliases: vec![],
                created_at: Timestamp(0),
                rates: Default::default(),
                conversions_added_in: Vec::new(),
                conversions: vec![Conversion {
                    credit_type_id: CREDITS,
                    fiat_per_unit: dec(per_credit),
                }],
            }),
            CatalogChange::AddRates {
                rate_card_id: CPU_CARD,
                rates: vec![
                    rate(fixtures::API_PRODUCT, 10, CREDITS),
                    rate(fixtures::TOKEN_PRODUCT, 1, CreditType::usd_cents().id),
                ],
            },
        ];
        for change in changes {
            world.catalog.apply(change).unwrap();
        }
        world
    }

    fn in_credits(mut spec: CommitSpec) -> CommitSpec {
        spec.credit_type = Some(CREDITS);
        spec
    }

    fn card_spec() -> ContractSpec {
        let mut spec = fixtures::contract(CONTRACT);
        spec.rate_card_id = CPU_CARD;
        spec
    }

    fn remaining(world: &World, commit: usize) -> Money {
        world.contract().commits[commit]
            .balance_at(world.at)
            .unwrap()
    }

    fn tokens(world: &mut World, amount: &str) {
        world.tx += 1;
        let event: UsageEvent = fixtures::llm_tokens(&format!("tx{}", world.tx), world.at, amount);
        world.apply(Input::RecordUsage(event)).unwrap();
    }

    /// API calls (in credits) draw the credit commit first, then the USD commit at 2 cents a
    /// credit; tokens (in USD) never touch the credits; what nothing pays converts into S.
    #[test]
    fn usage_in_credits_draws_its_unit_first_then_fiat_at_the_conversion() {
        let mut world = credits_world("2");
        let mut spec = card_spec();
        spec.credits = vec![in_credits(fixtures::credit(100, 1))];
        spec.commits = vec![fixtures::prepaid_commit(150, 10)];
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        let (usd_commit, credit) = (0, 1);
        assert_eq!(world.contract().commits[credit].credit_type, Some(CREDITS));
        tokens(&mut world, "30");
        assert_eq!(remaining(&world, usd_commit), usd(120), "tokens are USD");
        assert_eq!(remaining(&world, credit), usd(100), "not paid in credits");
        world.calls(5);
        assert_eq!(remaining(&world, credit), usd(50));
        assert_eq!(remaining(&world, usd_commit), usd(120), "credits paid all");
        // 10 calls = 100 credits: 50 from the credit, 50 credits = 100 cents from USD.
        world.calls(10);
        assert_eq!(remaining(&world, credit), usd(0));
        assert_eq!(remaining(&world, usd_commit), usd(20));
        assert_eq!(world.outstanding(), usd(0));
        let line = world.contract().periods[0]
            .lines
            .iter()
            .find(|l| l.product_id == fixtures::API_PRODUCT)
            .unwrap();
        assert_eq!(
            (line.charged, line.covered, line.covered_fiat),
            (usd(150), usd(100), usd(100))
        );
        assert!(line.draws.iter().any(|d| d.is_converted()
            && d.source() == DrawSource::Contract(usd_commit)
            && d.amount == usd(100)));
        // 2 more calls = 20 credits = 40 cents: 20 from USD, 20 cents outstanding.
        world.calls(2);
        assert_eq!(remaining(&world, usd_commit), usd(0));
        assert_eq!(world.outstanding(), usd(20), "10 credits at 2 cents");
        let period = &world.contract().periods[0];
        assert_eq!(period.uncovered().unwrap(), usd(20));
    }

    /// A SUM line in credits going down: the credit gets its draw back first, then USD, then S.
    #[test]
    fn negative_usage_in_credits_returns_credits_then_fiat_then_lowers_s() {
        let mut world = World::new(false);
        world.catalog.apply(unit(CREDITS, "credits")).unwrap();
        let card = RateCard {
            id: CPU_CARD,
            name: "Tokens in credits".into(),
            description: None,
            fiat_credit_type: CreditType::usd_cents(),
            aliases: vec![],
            created_at: Timestamp(0),
            rates: Default::default(),
            conversions_added_in: Vec::new(),
            conversions: vec![Conversion {
                credit_type_id: CREDITS,
                fiat_per_unit: dec("0.5"),
            }],
        };
        world
            .catalog
            .apply(CatalogChange::CreateRateCard(card))
            .unwrap();
        world
            .catalog
            .apply(CatalogChange::AddRates {
                rate_card_id: CPU_CARD,
                rates: vec![rate(fixtures::TOKEN_PRODUCT, 1, CREDITS)],
            })
            .unwrap();
        let mut spec = card_spec();
        spec.credits = vec![in_credits(fixtures::credit(100, 1))];
        spec.commits = vec![fixtures::prepaid_commit(50, 10)];
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        // 300 credits: 100 from the credit, 200 credits = 100 cents, of which USD pays 50.
        tokens(&mut world, "300");
        assert_eq!(
            (remaining(&world, 1), remaining(&world, 0)),
            (usd(0), usd(0))
        );
        assert_eq!(world.outstanding(), usd(50));
        // -30: the credit gets 30 back first, S unchanged (the converted part still pays).
        tokens(&mut world, "-30");
        assert_eq!(remaining(&world, 1), usd(30));
        assert_eq!(world.outstanding(), usd(50));
        // -150: 70 more credits back, then 80 credits = 40 cents back to USD.
        tokens(&mut world, "-150");
        assert_eq!(
            (remaining(&world, 1), remaining(&world, 0)),
            (usd(100), usd(40))
        );
        let line = &world.contract().periods[0].lines[0];
        assert_eq!(
            (line.charged, line.covered, line.covered_fiat),
            (usd(120), usd(0), usd(10))
        );
        assert_eq!(
            world.outstanding(),
            usd(50),
            "120 credits = 60 cents, 10 paid"
        );
        // Back to 0: everything returned, nothing outstanding.
        tokens(&mut world, "-120");
        assert_eq!(
            (remaining(&world, 1), remaining(&world, 0)),
            (usd(100), usd(50))
        );
        assert_eq!(world.outstanding(), usd(0));
        assert!(world.contract().periods[0].lines[0].draws.is_empty());
    }

    /// B counts credits only when the threshold is in credits; the recharge's commit is in
    /// credits and its invoice in USD at the conversion (discount after converting); a
    /// threshold below the USD minimums after converting is refused.
    #[test]
    fn a_prepaid_threshold_in_credits_watches_credits_and_charges_fiat() {
        let mut world = credits_world("2");
        let mut spec = card_spec();
        spec.credits = vec![in_credits(fixtures::credit(1_000, 1))];
        spec.commits = vec![fixtures::prepaid_commit(5_000, 10)];
        let mut threshold = fixtures::prepaid_threshold(500, 1_500, GateType::External);
        threshold.credit_type = Some(Conversion {
            credit_type_id: CREDITS,
            fiat_per_unit: Decimal::ZERO, // taken from the rate card
        });
        threshold.discount = Some(fixtures::discount("0.9"));
        spec.prepaid_threshold = Some(threshold);
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        let config = world.contract().prepaid_threshold.clone().unwrap();
        assert_eq!(config.credit_type.unwrap().fiat_per_unit, dec("2"));
        assert_eq!(world.balance(), usd(1_000), "B counts credits, not the $50");
        // 49 calls = 490 credits: B = 510 > 500.
        assert!(types(&world.calls(49)).is_empty());
        let fired = types(&world.calls(1));
        assert!(
            fired.contains(&"payment_gate.threshold_reached"),
            "{fired:?}"
        );
        let workflow = world.contract().workflows[0].clone();
        assert_eq!(workflow.access_amount, usd(1_000), "1500 - 500 credits");
        assert_eq!(
            workflow.invoice_total,
            usd(1_800),
            "1000 credits x 2c x 0.9"
        );
        let commit = world
            .contract()
            .commits
            .iter()
            .find(|c| c.id == workflow.commit_id)
            .unwrap();
        assert_eq!(commit.credit_type, Some(CREDITS));
        assert_eq!(commit.segments[0].amount, usd(1_000));
        world
            .outcome(workflow.id, OutcomeSource::External, PaymentResult::Paid)
            .unwrap();
        assert_eq!(world.balance(), usd(1_500));

        // Minimums after converting: 200 credits = 400 cents < $5; a 400-credit gap = $8.
        let mut world = credits_world("2");
        let mut spec = card_spec();
        let mut low = fixtures::prepaid_threshold(200, 5_000, GateType::External);
        low.credit_type = Some(Conversion {
            credit_type_id: CREDITS,
            fiat_per_unit: Decimal::ZERO,
        });
        spec.prepaid_threshold = Some(low.clone());
        assert!(matches!(
            world.apply(Input::CreateContract(Box::new(spec.clone()))),
            Err(Rejection::ThresholdTooLow(_))
        ));
        low.threshold_amount = usd(300);
        low.recharge_to_amount = Some(usd(700));
        spec.prepaid_threshold = Some(low.clone());
        assert!(matches!(
            world.apply(Input::CreateContract(Box::new(spec.clone()))),
            Err(Rejection::RechargeGapTooSmall(_))
        ));
        // A unit the card has no conversion for.
        world.catalog.apply(unit(TOKENS_UNIT, "tokens")).unwrap();
        low.recharge_to_amount = Some(usd(900));
        low.credit_type = Some(Conversion {
            credit_type_id: TOKENS_UNIT,
            fiat_per_unit: Decimal::ZERO,
        });
        spec.prepaid_threshold = Some(low);
        match world.apply(Input::CreateContract(Box::new(spec))) {
            Err(Rejection::InvalidField(text)) => assert!(text.contains("no conversion"), "{text}"),
            other => panic!("{other:?}"),
        }
        assert!(world.customer.contracts.is_empty(), "nothing applied");
    }

    /// A spend threshold counts credit usage at its worth, and its USD commit pays for it
    /// (converted), so S returns to zero instead of triggering again.
    #[test]
    fn a_spend_threshold_pays_credit_usage_converted_and_does_not_fire_again() {
        let mut world = credits_world("2");
        let mut spec = card_spec();
        spec.spend_threshold = Some(fixtures::spend_threshold(1_000, GateType::External));
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        // 50 calls = 500 credits = 1000 cents: S reaches the threshold.
        let fired = types(&world.calls(50));
        assert_eq!(
            fired
                .iter()
                .filter(|t| **t == "payment_gate.threshold_reached")
                .count(),
            1
        );
        let workflow = world.contract().workflows[0].clone();
        assert_eq!(workflow.invoice_total, usd(1_000));
        world
            .outcome(workflow.id, OutcomeSource::External, PaymentResult::Paid)
            .unwrap();
        assert_eq!(
            world.outstanding(),
            usd(0),
            "the USD commit paid the credits"
        );
        assert_eq!(world.contract().workflows.len(), 1);
        assert!(types(&world.calls(1)).is_empty());
        assert_eq!(world.outstanding(), usd(20));

        // A spend threshold in a custom unit is refused.
        let mut world = credits_world("2");
        let mut spec = card_spec();
        let mut spend = fixtures::spend_threshold(1_000, GateType::External);
        spend.credit_type = Some(Conversion {
            credit_type_id: CREDITS,
            fiat_per_unit: Decimal::ZERO,
        });
        spec.spend_threshold = Some(spend);
        assert!(matches!(
            world.apply(Input::CreateContract(Box::new(spec))),
            Err(Rejection::InvalidField(_))
        ));
    }

    /// Commits name a unit that exists and, on a contract, one its rate card converts;
    /// rates need the conversion and one unit per product; units and conversions are unique and
    /// never modified.
    #[test]
    fn units_conversions_and_rates_are_checked_whole() {
        let mut world = credits_world("2");
        world.catalog.apply(unit(TOKENS_UNIT, "tokens")).unwrap();
        let mut spec = card_spec();
        spec.credits = vec![fixtures::credit(10, 1)];
        spec.credits[0].credit_type = Some(TOKENS_UNIT);
        match world.apply(Input::CreateContract(Box::new(spec.clone()))) {
            Err(Rejection::InvalidField(text)) => assert!(text.contains("no conversion"), "{text}"),
            other => panic!("{other:?}"),
        }
        spec.credits[0].credit_type = Some(Id::from_u128(0xdead));
        assert!(matches!(
            world.apply(Input::CreateContract(Box::new(spec))),
            Err(Rejection::InvalidField(_))
        ));
        let catalog = &mut world.catalog;
        let version = catalog.version();
        // A rate in a unit without a conversion; a product priced in two units.
        for rates in [
            vec![rate(fixtures::API_PRODUCT, 1, TOKENS_UNIT)],
            vec![rate(fixtures::API_PRODUCT, 1, CreditType::usd_cents().id)],
            vec![
                rate(fixtures::COMMIT_PRODUCT, 1, CREDITS),
                rate(fixtures::COMMIT_PRODUCT, 1, CreditType::usd_cents().id),
            ],
        ] {
            assert!(
                catalog
                    .apply(CatalogChange::AddRates {
                        rate_card_id: CPU_CARD,
                        rates,
                    })
                    .is_err()
            );
        }
        // The same name again (any case), an existing conversion, a zero worth.
        assert_eq!(
            catalog.apply(unit(Id::from_u128(0x9009), "CREDITS")),
            Err(Rejection::AlreadyExists)
        );
        assert_eq!(
            catalog.apply(unit(Id::from_u128(0x9009), "USD (cents)")),
            Err(Rejection::AlreadyExists)
        );
        for (credit_type_id, worth) in [(CREDITS, "3"), (TOKENS_UNIT, "0"), (TOKENS_UNIT, "-1")] {
            assert!(
                catalog
                    .apply(CatalogChange::AddConversions {
                        rate_card_id: CPU_CARD,
                        conversions: vec![Conversion {
                            credit_type_id,
                            fiat_per_unit: dec(worth),
                        }],
                    })
                    .is_err(),
                "{worth}"
            );
        }
        assert_eq!(catalog.version(), version, "nothing applied");
        catalog
            .apply(CatalogChange::AddConversions {
                rate_card_id: CPU_CARD,
                conversions: vec![Conversion {
                    credit_type_id: TOKENS_UNIT,
                    fiat_per_unit: dec("0.001"),
                }],
            })
            .unwrap();
        let card = catalog.rate_card(CPU_CARD).unwrap();
        assert_eq!(card.conversions.len(), 2);
        assert_eq!(card.conversion(CREDITS).unwrap().fiat_per_unit, dec("2"));
    }

    /// A customer-level commit in credits pays credit usage of every contract, and a
    /// customer-level USD commit pays, converted, what credits leave.
    #[test]
    fn customer_level_commits_pay_in_their_unit_and_fiat_ones_converted() {
        use crate::domain::customer::CustomerCommitSpec;
        let mut world = credits_world("2");
        world
            .apply(Input::CreateContract(Box::new(card_spec())))
            .unwrap();
        for (id, commit) in [
            (0x7001, in_credits(fixtures::credit(50, 1))),
            (0x7002, fixtures::credit(60, 2)),
        ] {
            world
                .apply(Input::CreateCustomerCommit(Box::new(CustomerCommitSpec {
                    id: Id::from_u128(id),
                    commit,
                    applicable_contract_ids: vec![],
                    invoice_contract_id: None,
                    uniqueness_key: None,
                })))
                .unwrap();
        }
        // 8 calls = 80 credits: 50 from the credits, 30 credits = 60 cents from USD.
        world.calls(8);
        let left: Vec<Money> = world
            .customer
            .customer_commits
            .iter()
            .map(|c| c.commit.balance_at(world.at).unwrap())
            .collect();
        assert_eq!(left, vec![usd(0), usd(0)]);
        assert_eq!(world.outstanding(), usd(0));
        world.calls(1);
        assert_eq!(world.outstanding(), usd(20));
    }

    /// An input refused because the rate card had no conversion stays refused when it is
    /// judged again at its catalog version (replay) after the conversion was added.
    #[test]
    fn a_conversion_added_later_does_not_change_an_earlier_verdict() {
        let mut world = credits_world("2");
        world.catalog.apply(unit(TOKENS_UNIT, "tokens")).unwrap();
        let mut spec = card_spec();
        spec.credits = vec![fixtures::credit(10, 1)];
        spec.credits[0].credit_type = Some(TOKENS_UNIT);
        let input = Input::CreateContract(Box::new(spec));
        let accepted_at = world.catalog.version();
        assert!(world.apply(input.clone()).is_err());
        world
            .catalog
            .apply(CatalogChange::AddConversions {
                rate_card_id: CPU_CARD,
                conversions: vec![Conversion {
                    credit_type_id: TOKENS_UNIT,
                    fiat_per_unit: dec("0.01"),
                }],
            })
            .unwrap();
        let replay = Ctx {
            at: world.at,
            catalog: &world.catalog,
            catalog_version: accepted_at,
            limits: &world.limits,
        };
        let mut again = world.customer.clone();
        assert!(
            again.apply(&input, &replay).is_err(),
            "refused on replay too"
        );
        world.apply(input).unwrap();
        assert_eq!(
            world.customer.contracts.len(),
            1,
            "accepted once the conversion is in"
        );
    }

    /// A commit in credits added after fiat paid for credit usage takes that usage over: the
    /// fiat is given back and pays only what the new credits do not.
    #[test]
    fn a_new_commit_in_the_unit_takes_over_what_fiat_paid_converted() {
        let mut world = credits_world("2");
        let mut spec = card_spec();
        spec.commits = vec![fixtures::prepaid_commit(1_000, 10)];
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        // 30 calls = 300 credits = 600 cents, all paid by the USD commit.
        world.calls(30);
        assert_eq!(remaining(&world, 0), usd(400));
        let edit = ContractEdit {
            edit_id: Id::from_u128(0xe1),
            contract_id: CONTRACT,
            add_credits: vec![in_credits(fixtures::credit(200, 1))],
            ..ContractEdit::default()
        };
        world.apply(Input::EditContract(Box::new(edit))).unwrap();
        // The 200 credits pay 200 of the 300; USD pays 100 credits = 200 cents.
        assert_eq!(remaining(&world, 1), usd(0));
        assert_eq!(remaining(&world, 0), usd(800));
        let line = &world.contract().periods[0].lines[0];
        assert_eq!((line.covered, line.covered_fiat), (usd(200), usd(200)));
        assert_eq!(world.outstanding(), usd(0));
    }

    /// A customer-level balance in credits needs a contract priced in credits; conversions
    /// are bounded (decimal places, a converted price, a converted recharge).
    #[test]
    fn unit_balances_need_a_contract_in_the_unit_and_conversions_are_bounded() {
        use crate::domain::customer::CustomerCommitSpec;
        let mut world = World::new(false);
        world.catalog.apply(unit(CREDITS, "credits")).unwrap();
        world
            .apply(Input::CreateContract(Box::new(fixtures::contract(
                CONTRACT,
            ))))
            .unwrap();
        let shared = |applicable: Vec<Id>| {
            Input::CreateCustomerCommit(Box::new(CustomerCommitSpec {
                id: Id::from_u128(0x7100),
                commit: in_credits(fixtures::credit(50, 1)),
                applicable_contract_ids: applicable,
                invoice_contract_id: None,
                uniqueness_key: None,
            }))
        };
        for applicable in [vec![], vec![CONTRACT]] {
            match world.apply(shared(applicable)) {
                Err(Rejection::InvalidField(text)) => {
                    assert!(text.contains("no contract"), "{text}")
                }
                other => panic!("{other:?}"),
            }
        }
        let card = |worth: &str| RateCard {
            id: CPU_CARD,
            name: "c".into(),
            description: None,
            fiat_credit_type: CreditType::usd_cents(),
            aliases: vec![],
            created_at: Timestamp(0),
            rates: Default::default(),
            conversions: vec![Conversion {
                credit_type_id: CREDITS,
                fiat_per_unit: dec(worth),
            }],
            conversions_added_in: Vec::new(),
        };
        for worth in ["0.0000000000001", "1000000001"] {
            assert!(
                world
                    .catalog
                    .apply(CatalogChange::CreateRateCard(card(worth)))
                    .is_err(),
                "{worth}"
            );
        }
        world
            .catalog
            .apply(CatalogChange::CreateRateCard(card("1000")))
            .unwrap();
        // 10^7 credits a call at 1000 cents each: beyond the price bound once converted.
        let mut expensive = rate(fixtures::API_PRODUCT, 10_000_000, CREDITS);
        assert!(
            world
                .catalog
                .apply(CatalogChange::AddRates {
                    rate_card_id: CPU_CARD,
                    rates: vec![expensive.clone()],
                })
                .is_err()
        );
        expensive.price = Price::Flat(usd(10));
        world
            .catalog
            .apply(CatalogChange::AddRates {
                rate_card_id: CPU_CARD,
                rates: vec![expensive],
            })
            .unwrap();
        // A recharge to 10^15 credits would invoice 10^18 cents.
        let mut spec = card_spec();
        spec.id = Id::from_u128(0x5002);
        let mut huge =
            fixtures::prepaid_threshold(1_000, 1_000_000_000_000_000, GateType::External);
        huge.credit_type = Some(Conversion {
            credit_type_id: CREDITS,
            fiat_per_unit: Decimal::ZERO,
        });
        spec.prepaid_threshold = Some(huge);
        match world.apply(Input::CreateContract(Box::new(spec))) {
            Err(Rejection::InvalidField(text)) => assert!(text.contains("converted"), "{text}"),
            other => panic!("{other:?}"),
        }
        world
            .apply(shared(vec![]))
            .expect_err("the contract on the credits card does not exist yet");
    }

    /// A line that a fiat balance no longer usable paid converted keeps that payment: a new
    /// commit in the unit does not give money back to an archived credit.
    #[test]
    fn a_take_over_leaves_what_an_archived_fiat_credit_paid() {
        let mut world = credits_world("2");
        let mut spec = card_spec();
        spec.credits = vec![fixtures::credit(1_000, 1)];
        world.apply(Input::CreateContract(Box::new(spec))).unwrap();
        // 20 calls = 200 credits = 400 cents from the USD credit.
        world.calls(20);
        assert_eq!(remaining(&world, 0), usd(600));
        let credit = world.contract().commits[0].id;
        let archive = ContractEdit {
            edit_id: Id::from_u128(0xe2),
            contract_id: CONTRACT,
            archive_credits: vec![credit],
            ..ContractEdit::default()
        };
        world.apply(Input::EditContract(Box::new(archive))).unwrap();
        let add = ContractEdit {
            edit_id: Id::from_u128(0xe3),
            contract_id: CONTRACT,
            add_credits: vec![in_credits(fixtures::credit(500, 1))],
            ..ContractEdit::default()
        };
        world.apply(Input::EditContract(Box::new(add))).unwrap();
        assert_eq!(remaining(&world, 1), usd(500), "nothing taken over");
        let line = &world.contract().periods[0].lines[0];
        assert_eq!((line.covered, line.covered_fiat), (usd(0), usd(400)));
        assert_eq!(world.outstanding(), usd(0));
        // New usage draws the new credits.
        world.calls(1);
        assert_eq!(remaining(&world, 1), usd(490));
    }
}

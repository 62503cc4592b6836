//! Thresholds and the gate workflow.
//!
//! Owns evaluating both thresholds of a contract (spend: outstanding spend against the
//! threshold; prepaid: the balance against it), starting a workflow with its withheld commit
//! and purchase invoice (threshold-triggered, or a manually added payment-gated commit), moving
//! it out of INITIATED by its gate, and ending it on a payment outcome: released (the commit
//! becomes usable and covers outstanding spend) or failed (the commit is cancelled and the
//! threshold disabled). The provider-specific steps of a STRIPE charge belong to `charges`;
//! this module must not start a second workflow of a kind while one is in flight.

use rust_decimal::Decimal;
use serde_json::json;

use super::charges::{Progress, action_required, charge_progress, note_object, payment_request};
use super::contracts::build_commit;
use super::usage::{Drawable, cover_outstanding};
use super::{
    Applied, CommitSpec, Ctx, Customer, DEFAULT_PRIORITY, StripeBilling, commit_name, webhook,
};
use crate::domain::contract::DrawSource;
use crate::domain::contract::{
    Commit, CommitKind, Contract, InvoiceScheduleItem, InvoiceStatus, PurchaseInvoice,
    RechargeHold, RechargeRail, Release, Segment, ThresholdCommit, ThresholdKind,
};
use crate::domain::effects::{
    Effect, Notice, NoticeType, PaymentAction, PaymentStatus, WebhookType,
};
use crate::domain::gate::{
    ChargeRecord, GateType, OutcomeSource, PaymentGateConfig, PaymentOutcome, PaymentResult,
    ProviderError, Workflow, WorkflowKind, WorkflowState,
};
use crate::domain::ids::{Id, MS_PER_DAY, Timestamp};
use crate::domain::money::{Money, in_fiat};
use crate::domain::rejection::Rejection;

/// How many workflows one kind may start while applying one input. A NONE gate releases at
/// once and the next evaluation may fire again; this bound makes a runaway loop impossible even
/// if a configuration could never be satisfied.
const TRIGGERS_PER_INPUT_MAX: usize = 2;

impl Customer {
    /// Evaluates both thresholds of a contract (the rule of SPEC 1.5: on every input that may
    /// change S or B, at creation, on edits and when a workflow ends).
    pub(super) fn evaluate(
        &mut self,
        ci: usize,
        customer_id: Id,
        ctx: &Ctx<'_>,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        for kind in [ThresholdKind::Spend, ThresholdKind::PrepaidBalance] {
            for _ in 0..TRIGGERS_PER_INPUT_MAX {
                let contract = &mut self.contracts[ci];
                let Some(config) = contract.threshold(kind) else {
                    break;
                };
                if !config.is_enabled || contract.in_flight_tracked(kind.workflow_kind()).is_some()
                {
                    break;
                }
                // Only a contract in force at the input's time is evaluated; a contract that
                // starts later is evaluated by the first tick after its start.
                if !contract.covers(ctx.at) {
                    break;
                }
                let threshold_amount = config.threshold_amount;
                let recharge_to_amount = config.recharge_to_amount;
                let access = match kind {
                    ThresholdKind::Spend => {
                        let outstanding = contract.outstanding_spend_tracked()?;
                        if outstanding < threshold_amount || !outstanding.is_positive() {
                            break;
                        }
                        outstanding
                    }
                    ThresholdKind::PrepaidBalance => {
                        let own = contract.balance_tracked(ctx.at)?;
                        // Most customers have no customer-level balance: no decimal addition.
                        let balance = if self.customer_commits.is_empty() {
                            own
                        } else {
                            let pool = &self.customer_commits;
                            own.checked_add(super::customer_level::balance_for(
                                pool, contract, ctx.at,
                            )?)?
                        };
                        if balance > threshold_amount {
                            // Nothing to recharge: a rail holds nothing back.
                            if let Some(config) = contract.prepaid_threshold.as_mut() {
                                config.hold = None;
                            }
                            break;
                        }
                        let recharge_to = recharge_to_amount
                            .ok_or(Rejection::MissingField("recharge_to_amount"))?;
                        let access = recharge_to.checked_sub(balance)?;
                        if !access.is_positive() {
                            break;
                        }
                        if held_back(contract, customer_id, (balance, access), ctx, applied)? {
                            break;
                        }
                        access
                    }
                };
                let stripe = self.profile.as_ref().and_then(|p| p.stripe.as_ref());
                let wi = start_threshold_workflow(
                    &mut self.contracts[ci],
                    customer_id,
                    kind,
                    access,
                    ctx,
                    applied,
                )?;
                begin_gate(
                    &mut self.contracts[ci],
                    customer_id,
                    wi,
                    stripe,
                    ctx,
                    applied,
                )?;
            }
        }
        Ok(())
    }

    pub(super) fn payment_outcome(
        &mut self,
        outcome: &PaymentOutcome,
        ctx: &Ctx<'_>,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        let customer_id = self.profile()?.id;
        let (ci, wi) = self
            .workflow_position(outcome.workflow_id)
            .ok_or(Rejection::WorkflowNotFound)?;
        let contract = &mut self.contracts[ci];
        match charge_progress(contract, customer_id, wi, outcome, ctx, applied)? {
            Progress::Continue => {}
            Progress::Done => return Ok(()),
            Progress::Ended => return self.evaluate(ci, customer_id, ctx, applied),
        }
        let next = contract.workflows[wi].next_state(outcome)?;
        match next {
            WorkflowState::Released => {
                release_workflow(contract, customer_id, wi, outcome, ctx, applied)?;
            }
            WorkflowState::Failed => {
                fail_workflow(contract, customer_id, wi, outcome, ctx, applied);
            }
            WorkflowState::ActionRequired => {
                let entered_before = self
                    .workflow_history
                    .iter()
                    .chain(&applied.transitions)
                    .filter(|c| {
                        c.workflow_id == outcome.workflow_id
                            && c.state == WorkflowState::ActionRequired
                    })
                    .count() as u64;
                let contract = &mut self.contracts[ci];
                action_required(
                    contract,
                    customer_id,
                    wi,
                    outcome,
                    (ctx, entered_before),
                    applied,
                );
                return Ok(());
            }
            WorkflowState::Charging => {
                // `Pending` while CHARGING or ACTION_REQUIRED: the provider's object is known.
                let workflow = &mut contract.workflows[wi];
                workflow.enter(
                    WorkflowState::Charging,
                    None,
                    ctx.at,
                    &mut applied.transitions,
                );
                workflow.charge.action_deadline = None;
                note_object(workflow, outcome);
                return Ok(());
            }
            WorkflowState::Initiated | WorkflowState::AwaitingExternal => {
                return Err(Rejection::WorkflowGateMismatch);
            }
        }
        // The workflow ended: the next evaluation decides again.
        self.evaluate(ci, customer_id, ctx, applied)
    }
}

impl Customer {
    /// Where workflow `id` is: its contract's index and its own.
    fn workflow_position(&self, id: Id) -> Option<(usize, usize)> {
        self.contracts.iter().enumerate().find_map(|(ci, c)| {
            c.workflows
                .iter()
                .position(|w| w.id == id)
                .map(|wi| (ci, wi))
        })
    }

    /// An operator's cancel: the workflow ends FAILED with the reason, with every consequence
    /// of a failed payment (commit cancelled, invoice void, threshold disabled, the
    /// `payment_status` webhook), and its thresholds are evaluated again.
    ///
    /// # Errors
    /// [`Rejection::WorkflowNotFound`], [`Rejection::WorkflowAlreadyEnded`], and
    /// [`Rejection::InvalidField`] for an empty reason.
    pub(super) fn cancel_workflow(
        &mut self,
        workflow_id: Id,
        reason: &str,
        ctx: &Ctx<'_>,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        let customer_id = self.profile()?.id;
        if reason.trim().is_empty() {
            return Err(Rejection::invalid("reason", "must not be empty"));
        }
        let (ci, wi) = self
            .workflow_position(workflow_id)
            .ok_or(Rejection::WorkflowNotFound)?;
        let contract = &mut self.contracts[ci];
        if contract.workflows[wi].state.is_terminal() {
            return Err(Rejection::WorkflowAlreadyEnded);
        }
        let outcome = PaymentOutcome {
            workflow_id,
            source: OutcomeSource::External,
            result: PaymentResult::Failed {
                error: Some(ProviderError {
                    error_type: Some("tollgate_error".into()),
                    code: Some("canceled_by_operator".into()),
                    decline_code: None,
                    message: Some(reason.to_owned()),
                }),
            },
            payment_intent_id: None,
        };
        fail_workflow(contract, customer_id, wi, &outcome, ctx, applied);
        self.evaluate(ci, customer_id, ctx, applied)
    }
}

/// Whether a recharge safety rail holds back the recharge of `access` that B = `balance` asks
/// for. A hold that has not expired holds without looking again (constant time on every event
/// while it lasts); an expired one is checked again, and a rail that starts holding sends one
/// `payment_gate.recharge_limited` notice (a rail that goes on holding sends none).
fn held_back(
    contract: &mut Contract,
    customer_id: Id,
    (balance, access): (Money, Money),
    ctx: &Ctx<'_>,
    applied: &mut Applied,
) -> Result<bool, Rejection> {
    let Some(config) = contract.prepaid_threshold.as_ref() else {
        return Ok(false);
    };
    let Some(limits) = config.limits.clone() else {
        return Ok(false);
    };
    if crate::defects::active(crate::defects::Defect::RailsIgnored) {
        return Ok(false);
    }
    if config.hold.is_some_and(|h| ctx.at < h.until) {
        return Ok(true);
    }
    let (period_start, period_end) = super::usage::period_bounds(contract, ctx.at);
    let (mut count, mut amount, mut last_start) = (0u64, Money::ZERO, None);
    // Workflows are kept in the order they started: from the latest back to the period's
    // start, so a recharge costs what its period holds, not the contract's whole history.
    for workflow in contract
        .workflows
        .iter()
        .rev()
        .filter(|w| w.kind == WorkflowKind::PrepaidBalance)
    {
        last_start = last_start.max(Some(workflow.started_at));
        if workflow.started_at < period_start {
            break;
        }
        if workflow.started_at < period_end {
            count += 1;
            if workflow.state != WorkflowState::Failed {
                amount = amount.checked_add(workflow.access_amount)?;
            }
        }
    }
    // Every rail that holds, and until when; the one holding longest is reported.
    let mut holding: Vec<(RechargeRail, Timestamp)> = Vec::new();
    if limits
        .max_recharges_per_period
        .is_some_and(|max| count >= u64::from(max))
    {
        holding.push((RechargeRail::MaxRecharges, period_end));
    }
    if let Some(max) = limits.max_amount_per_period {
        if amount.checked_add(access)? > max {
            holding.push((RechargeRail::MaxAmount, period_end));
        }
    }
    if let (Some(minutes), Some(last)) = (limits.min_interval_minutes, last_start) {
        let until = last.plus_ms(i64::from(minutes) * 60_000);
        if ctx.at < until {
            holding.push((RechargeRail::MinInterval, until));
        }
    }
    let config = contract.prepaid_threshold.as_mut().expect("checked above");
    let Some(&(rail, until)) = holding.iter().max_by_key(|(_, until)| *until) else {
        config.hold = None;
        return Ok(false);
    };
    let starts = config.hold.is_none_or(|h| h.rail != rail);
    let since = match config.hold {
        Some(h) if !starts => h.since,
        _ => ctx.at,
    };
    config.hold = Some(RechargeHold { rail, since, until });
    if starts {
        config.holds += 1;
        let id = Id::derive(
            contract.id,
            NoticeType::RechargeLimited.as_str(),
            config.holds,
        );
        let mut properties = serde_json::Map::new();
        let limit_value = match rail {
            RechargeRail::MaxRecharges => json!(limits.max_recharges_per_period),
            RechargeRail::MaxAmount => json!(limits.max_amount_per_period),
            RechargeRail::MinInterval => json!(limits.min_interval_minutes),
        };
        for (key, value) in [
            (
                "workflow_type",
                json!(WorkflowKind::PrepaidBalance.as_str()),
            ),
            ("customer_id", json!(customer_id.to_string())),
            ("contract_id", json!(contract.id.to_string())),
            ("limit", json!(rail.as_str())),
            ("limit_value", limit_value),
            ("balance", json!(balance)),
            ("threshold_amount", json!(config.threshold_amount)),
            ("recharge_amount", json!(access)),
            ("recharges_this_period", json!(count)),
            ("recharged_amount_this_period", json!(amount)),
            ("held_until", json!(until.to_rfc3339())),
            ("timestamp", json!(ctx.at.to_rfc3339())),
        ] {
            properties.insert(key.into(), value);
        }
        applied.effects.push(Effect::Notice(Notice::with_properties(
            id,
            NoticeType::RechargeLimited,
            customer_id,
            contract.id,
            properties,
        )));
    }
    Ok(true)
}

/// The id of the workflow gating a manually added commit.
pub(super) fn id_of_workflow(commit_id: Id) -> Id {
    Id::derive(commit_id, WorkflowKind::ManualCommit.as_str(), 0)
}

/// Adds a payment-gated commit (withheld) with its purchase invoice and workflow.
pub(super) fn start_manual_workflow(
    contract: &mut Contract,
    commit_id: Id,
    spec: &CommitSpec,
    gate: &PaymentGateConfig,
    ctx: &Ctx<'_>,
) -> Result<(), Rejection> {
    let workflow_id = id_of_workflow(commit_id);
    let invoice_id = Id::derive(workflow_id, "invoice", 0);
    let commit = build_commit(
        commit_id,
        spec,
        Release::Gated { workflow_id },
        |_| invoice_id,
        ctx,
    )?;
    let mut subtotal = Money::ZERO;
    for item in &commit.invoice_schedule {
        subtotal = subtotal.checked_add(item.amount)?;
    }
    let tax = gate.tax();
    let total = subtotal.checked_add(tax)?;
    let access_amount = commit.total_amount()?;
    add_gated_commit(
        contract,
        commit,
        (commit_id, invoice_id, workflow_id),
        (subtotal, tax, total),
        ctx.at,
    );
    crate::domain::push_first_exact(
        &mut contract.workflows,
        Workflow {
            id: workflow_id,
            kind: WorkflowKind::ManualCommit,
            contract_id: contract.id,
            commit_id,
            invoice_id,
            access_amount,
            invoice_total: total,
            gate: gate.clone(),
            state: WorkflowState::Initiated,
            started_at: ctx.at,
            ended_at: None,
            payment_intent_id: None,
            error: None,
            charge: ChargeRecord::default(),
        },
    );
    Ok(())
}

/// Adds a payment-gated commit and its purchase invoice (issued at `at`, finalized, not yet
/// paid) to `contract`.
fn add_gated_commit(
    contract: &mut Contract,
    commit: Commit,
    (commit_id, invoice_id, workflow_id): (Id, Id, Id),
    (subtotal, tax, total): (Money, Money, Money),
    at: Timestamp,
) {
    crate::domain::push_first_exact(
        &mut contract.purchases,
        PurchaseInvoice {
            id: invoice_id,
            commit_id,
            product_id: commit.product_id,
            name: commit.name.clone(),
            status: InvoiceStatus::Finalized,
            issued_at: at,
            subtotal,
            tax,
            total,
            workflow_id: Some(workflow_id),
            external_status: None,
        },
    );
    crate::domain::push_first_exact(&mut contract.commits, commit);
}

/// Starts a threshold workflow: the withheld commit of `access`, its purchase invoice and the
/// `threshold_reached` webhook. Returns the workflow's index.
fn start_threshold_workflow(
    contract: &mut Contract,
    customer_id: Id,
    kind: ThresholdKind,
    access: Money,
    ctx: &Ctx<'_>,
    applied: &mut Applied,
) -> Result<usize, Rejection> {
    let config = contract.threshold(kind).expect("evaluated config exists");
    let sequence = config.triggers + 1;
    let workflow_kind = kind.workflow_kind();
    let workflow_id = Id::derive(contract.id, workflow_kind.as_str(), sequence);
    let commit_id = Id::derive(workflow_id, "commit", 0);
    let invoice_id = Id::derive(workflow_id, "invoice", 0);
    // A recharge in a custom pricing unit is charged in fiat at the rate card's conversion.
    let charged = in_fiat(config.credit_type.as_ref(), access)?;
    let subtotal = match &config.discount {
        Some(discount) => charged.checked_mul(discount.payment_fraction)?,
        None => charged,
    };
    let unit = config.credit_type.map(|c| c.credit_type_id);
    let tax = config.gate.tax();
    let total = subtotal.checked_add(tax)?;
    let starting_at = threshold_commit_start(contract, kind, ctx);
    // A rail may make each recharge's commit expire; never after the contract ends.
    let duration_days = config.limits.as_ref().and_then(|l| l.commit_duration_days);
    let ending_before = match duration_days {
        Some(days) => starting_at
            .plus_ms(i64::from(days) * MS_PER_DAY)
            .min(contract.end_or_forever()),
        None => contract.end_or_forever(),
    };
    let commit = commit_for_threshold(
        &config.commit,
        (workflow_id, commit_id, invoice_id),
        (access, subtotal),
        (starting_at, ending_before),
        (kind, unit),
        ctx,
    );
    let gate = config.gate.clone();
    // Checked: record the trigger.
    contract
        .threshold_mut(kind)
        .expect("evaluated config exists")
        .triggers = sequence;
    add_gated_commit(
        contract,
        commit,
        (commit_id, invoice_id, workflow_id),
        (subtotal, tax, total),
        ctx.at,
    );
    let workflow = Workflow {
        id: workflow_id,
        kind: workflow_kind,
        contract_id: contract.id,
        commit_id,
        invoice_id,
        access_amount: access,
        invoice_total: total,
        gate,
        state: WorkflowState::Initiated,
        started_at: ctx.at,
        ended_at: None,
        payment_intent_id: None,
        error: None,
        charge: ChargeRecord::default(),
    };
    applied.effects.push(Effect::Webhook(webhook(
        &workflow,
        WebhookType::ThresholdReached,
        customer_id,
        ctx.at,
    )));
    crate::domain::push_first_exact(&mut contract.workflows, workflow);
    let wi = contract.workflows.len() - 1;
    contract.threshold_workflow_added(wi);
    Ok(wi)
}

/// Where the commit of a threshold workflow starts. A spend commit must offset usage already
/// incurred, so it starts with the earliest open usage period; a recharge starts at the trigger
/// hour.
fn threshold_commit_start(contract: &Contract, kind: ThresholdKind, ctx: &Ctx<'_>) -> Timestamp {
    match kind {
        ThresholdKind::Spend => contract
            .periods
            .iter()
            .filter(|p| p.status == InvoiceStatus::Draft)
            .map(|p| p.starting_at)
            .min()
            .unwrap_or(ctx.at.floor_hour()),
        ThresholdKind::PrepaidBalance => ctx.at.floor_hour(),
    }
    .max(contract.starting_at)
}

fn commit_for_threshold(
    spec: &ThresholdCommit,
    (workflow_id, id, invoice_id): (Id, Id, Id),
    (access, subtotal): (Money, Money),
    (starting_at, ending_before): (Timestamp, Timestamp),
    (kind, credit_type): (ThresholdKind, Option<Id>),
    ctx: &Ctx<'_>,
) -> Commit {
    Commit {
        id,
        kind: CommitKind::Prepaid,
        product_id: spec.product_id,
        name: commit_name(ctx, spec.product_id, &spec.name),
        description: spec.description.clone(),
        priority: spec.priority.unwrap_or(Decimal::from(DEFAULT_PRIORITY)),
        applicable_product_ids: spec.applicable_product_ids.clone(),
        applicable_product_tags: spec.applicable_product_tags.clone(),
        segments: vec![Segment {
            id: Id::derive(id, "segment", 0),
            amount: access,
            starting_at,
            ending_before,
            drawn: Money::ZERO,
            manual: Money::ZERO,
        }],
        invoice_schedule: vec![InvoiceScheduleItem {
            id: Id::derive(id, "invoice_schedule_item", 0),
            timestamp: ctx.at,
            amount: subtotal,
            quantity: Decimal::ONE,
            unit_price: subtotal,
            invoice_id,
        }],
        release: Release::Gated { workflow_id },
        created_by_threshold: Some(kind.workflow_kind()),
        created_at: ctx.at,
        deductions: Vec::new(),
        archived_at: None,
        custom_fields: Vec::new(),
        manual_entries: Vec::new(),
        credit_type,
    }
}

/// Moves a new workflow (index `wi`) out of INITIATED according to its gate.
pub(super) fn begin_gate(
    contract: &mut Contract,
    customer_id: Id,
    wi: usize,
    stripe: Option<&StripeBilling>,
    ctx: &Ctx<'_>,
    applied: &mut Applied,
) -> Result<(), Rejection> {
    let workflow_id = contract.workflows[wi].id;
    let gate_type = contract.workflows[wi].gate.gate_type;
    applied.workflows_started.push(workflow_id);
    contract.workflows[wi].note_start(&mut applied.transitions);
    match gate_type {
        GateType::None => {
            let outcome = PaymentOutcome {
                workflow_id,
                source: OutcomeSource::External,
                result: PaymentResult::Paid,
                payment_intent_id: None,
            };
            release_workflow(contract, customer_id, wi, &outcome, ctx, applied)?;
        }
        GateType::External => {
            contract.workflows[wi].enter(
                WorkflowState::AwaitingExternal,
                None,
                ctx.at,
                &mut applied.transitions,
            );
            let workflow = &contract.workflows[wi];
            let mut hook = webhook(workflow, WebhookType::ExternalInitiate, customer_id, ctx.at);
            hook.invoice_id = Some(workflow.invoice_id);
            hook.invoice_total = Some(workflow.invoice_total);
            hook.invoice_currency = Some(
                contract
                    .credit_type
                    .currency
                    .clone()
                    .unwrap_or_else(|| contract.credit_type.name.clone()),
            );
            applied.effects.push(Effect::Webhook(hook));
        }
        GateType::Stripe => {
            let billing = stripe.ok_or(Rejection::StripeNotConfigured)?;
            let workflow = &mut contract.workflows[wi];
            workflow.enter(
                WorkflowState::Charging,
                None,
                ctx.at,
                &mut applied.transitions,
            );
            workflow.charge.stripe_customer_id = Some(billing.stripe_customer_id.clone());
            let request = payment_request(contract, customer_id, wi, PaymentAction::Charge);
            applied.effects.push(Effect::RequestPayment(request));
        }
    }
    Ok(())
}

/// Finds the first element whose id is `id`. A threshold workflow's commit and invoice have ids
/// derived from the workflow's own (unique) id, so the only one is searched from the end, where
/// it was just added; other ids come from the edge and keep the first-match rule.
fn index_of<T>(items: &[T], unique: bool, is: impl Fn(&T) -> bool) -> Option<usize> {
    if unique {
        items.iter().rposition(is)
    } else {
        items.iter().position(is)
    }
}

fn release_workflow(
    contract: &mut Contract,
    customer_id: Id,
    wi: usize,
    outcome: &PaymentOutcome,
    ctx: &Ctx<'_>,
    applied: &mut Applied,
) -> Result<(), Rejection> {
    let commit_id = contract.workflows[wi].commit_id;
    let invoice_id = contract.workflows[wi].invoice_id;
    let gate_type = contract.workflows[wi].gate.gate_type;
    let unique = contract.workflows[wi].kind != WorkflowKind::ManualCommit;
    let commit = index_of(&contract.commits, unique, |c| c.id == commit_id);
    let mut was_released = false;
    if let Some(ci) = commit {
        let commit = &mut contract.commits[ci];
        was_released = commit.is_released();
        commit.release = Release::Released { at: ctx.at };
    }
    if let Some(pi) = index_of(&contract.purchases, unique, |p| p.id == invoice_id) {
        if gate_type != GateType::None {
            contract.purchases[pi].external_status = Some("PAID".into());
        }
    }
    let workflow = &mut contract.workflows[wi];
    workflow.enter(
        WorkflowState::Released,
        None,
        ctx.at,
        &mut applied.transitions,
    );
    workflow.ended_at = Some(ctx.at);
    if outcome.payment_intent_id.is_some() {
        workflow.payment_intent_id = outcome.payment_intent_id.clone();
    }
    note_object(workflow, outcome);
    if gate_type == GateType::Stripe {
        let close = PaymentAction::Close { cancel: false };
        let request = payment_request(contract, customer_id, wi, close);
        applied.effects.push(Effect::RequestPayment(request));
    }
    match commit {
        Some(ci) if !was_released => contract.commit_released(ci),
        // Not the usual gated commit: sort the drawdown order again from scratch.
        _ => contract.rebuild_caches(),
    }
    if let Some(ci) = commit {
        cover_outstanding(
            &mut Drawable {
                contract,
                pool: &mut [],
            },
            DrawSource::Contract(ci),
            ctx,
        )?;
    }
    if gate_type != GateType::None {
        let workflow = &contract.workflows[wi];
        let mut hook = webhook(workflow, WebhookType::PaymentStatus, customer_id, ctx.at);
        hook.invoice_id = Some(workflow.invoice_id);
        hook.payment_status = Some(PaymentStatus::Paid);
        hook.payment_intent_id = workflow.payment_intent_id.clone();
        applied.effects.push(Effect::Webhook(hook));
    }
    Ok(())
}

pub(super) fn fail_workflow(
    contract: &mut Contract,
    customer_id: Id,
    wi: usize,
    outcome: &PaymentOutcome,
    ctx: &Ctx<'_>,
    applied: &mut Applied,
) {
    let error = match &outcome.result {
        PaymentResult::Failed { error } => error.clone(),
        _ => None,
    };
    let commit_id = contract.workflows[wi].commit_id;
    let invoice_id = contract.workflows[wi].invoice_id;
    if let Some(ci) = contract.commits.iter().position(|c| c.id == commit_id) {
        let was_released = contract.commits[ci].is_released();
        contract.commits[ci].release = Release::Canceled { at: ctx.at };
        if was_released {
            contract.released_commit_canceled(ci);
        }
    }
    if let Some(purchase) = contract.purchases.iter_mut().find(|p| p.id == invoice_id) {
        purchase.status = InvoiceStatus::Void;
        purchase.external_status = Some("PAYMENT_FAILED".into());
    }
    let workflow = &mut contract.workflows[wi];
    let reason = error
        .as_ref()
        .and_then(|e| e.message.clone().or_else(|| e.code.clone()));
    workflow.enter(
        WorkflowState::Failed,
        reason,
        ctx.at,
        &mut applied.transitions,
    );
    workflow.ended_at = Some(ctx.at);
    workflow.error = error.clone();
    if outcome.payment_intent_id.is_some() {
        workflow.payment_intent_id = outcome.payment_intent_id.clone();
    }
    note_object(workflow, outcome);
    workflow.charge.action_deadline = None;
    let workflow = workflow.clone();
    if workflow.gate.gate_type == GateType::Stripe {
        // Whatever the provider still holds must never collect for a FAILED workflow.
        let close = PaymentAction::Close { cancel: true };
        let request = payment_request(contract, customer_id, wi, close);
        applied.effects.push(Effect::RequestPayment(request));
    }
    // A failed charge disables its threshold configuration; no automatic retry.
    let kind = match workflow.kind {
        WorkflowKind::Spend => Some(ThresholdKind::Spend),
        WorkflowKind::PrepaidBalance => Some(ThresholdKind::PrepaidBalance),
        WorkflowKind::ManualCommit => None,
    };
    if let Some(config) = kind.and_then(|k| contract.threshold_mut(k)) {
        config.is_enabled = false;
    }
    let mut hook = webhook(&workflow, WebhookType::PaymentStatus, customer_id, ctx.at);
    hook.invoice_id = Some(workflow.invoice_id);
    hook.payment_status = Some(PaymentStatus::Failed);
    hook.payment_intent_id = workflow.payment_intent_id.clone();
    hook.error_message = error.as_ref().and_then(|e| e.message.clone());
    hook.provider_error = error;
    applied.effects.push(Effect::Webhook(hook));
}

//! A customer's state and the one function that changes it: [`Customer::apply`].
//!
//! Everything that moves money happens here, deterministically: rating a usage event, drawing
//! the charge down from released segments in Metronome's order, evaluating both thresholds after
//! every input, starting a gate workflow, and releasing or cancelling its commit when the payment
//! outcome arrives. Time, ids of edge-created objects and the catalog come in with the input;
//! everything else is derived. Each input is checked completely before anything is changed: it
//! applies whole or is rejected whole.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::bounds;
use super::catalog::{Catalog, Contribution, ProductKind};
use super::contract::{
    Commit, CommitKind, Contract, ContractCaches, Discount, InvoiceScheduleItem, InvoiceStatus,
    Limits, PurchaseInvoice, Release, Segment, ThresholdCommit, ThresholdConfig, ThresholdKind,
    UsageLine, UsagePeriod,
};
use super::effects::{Effect, PaymentAction, PaymentRequest, PaymentStatus, Webhook, WebhookType};
use super::gate::{
    ChargeRecord, GateType, OutcomeSource, PaymentGateConfig, PaymentOutcome, PaymentResult,
    ProviderError, RefundRecord, StripePaymentType, Workflow, WorkflowKind, WorkflowState,
};
use super::ids::{Id, Timestamp};
use super::money::Money;
use super::rejection::Rejection;
use super::usage::UsageEvent;

/// Default drawdown priority of commits that do not name one (Metronome's threshold default).
pub const DEFAULT_PRIORITY: i64 = 100;

/// How many workflows one kind may start while applying one input. A NONE gate releases at
/// once and the next evaluation may fire again; this bound makes a runaway loop impossible even
/// if a configuration could never be satisfied.
const TRIGGERS_PER_INPUT_MAX: usize = 2;

/// What the core is handed with every input.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    /// When the input was accepted (recorded in the log, so replay sees the same time).
    pub at: Timestamp,
    pub catalog: &'a Catalog,
    /// Catalog version at acceptance; rates added later are invisible (see `catalog.rs`).
    pub catalog_version: u64,
    pub limits: &'a Limits,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeBilling {
    pub configuration_id: Id,
    pub stripe_customer_id: String,
    pub collection_method: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerProfile {
    pub id: Id,
    pub name: String,
    pub external_id: Option<String>,
    pub ingest_aliases: Vec<String>,
    pub custom_fields: Vec<(String, String)>,
    pub stripe: Option<StripeBilling>,
    pub created_at: Timestamp,
    pub archived_at: Option<Timestamp>,
}

/// A commit or credit to add, as a request describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitSpec {
    pub kind: CommitKind,
    pub product_id: Id,
    pub name: Option<String>,
    pub description: Option<String>,
    pub priority: Option<Decimal>,
    pub applicable_product_ids: Vec<Id>,
    pub applicable_product_tags: Vec<String>,
    /// (amount, starting_at, ending_before) per segment.
    pub access_schedule: Vec<(Money, Timestamp, Timestamp)>,
    /// (timestamp, unit_price, quantity) per invoice; `amount` requests use quantity 1.
    pub invoice_schedule: Vec<(Timestamp, Money, Decimal)>,
    pub payment_gate: Option<PaymentGateConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractSpec {
    pub id: Id,
    pub rate_card_id: Id,
    pub name: Option<String>,
    pub starting_at: Timestamp,
    pub ending_before: Option<Timestamp>,
    pub uniqueness_key: Option<String>,
    pub commits: Vec<CommitSpec>,
    pub credits: Vec<CommitSpec>,
    pub spend_threshold: Option<ThresholdConfig>,
    pub prepaid_threshold: Option<ThresholdConfig>,
}

/// A partial update of a threshold configuration: `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThresholdUpdate {
    pub is_enabled: Option<bool>,
    pub gate: Option<PaymentGateConfig>,
    pub threshold_amount: Option<Money>,
    pub recharge_to_amount: Option<Money>,
    /// `Some(None)` removes the discount.
    pub discount: Option<Option<Discount>>,
    pub commit_product_id: Option<Id>,
    pub commit_name: Option<Option<String>>,
    pub commit_description: Option<Option<String>>,
    pub commit_priority: Option<Option<Decimal>>,
    pub commit_applicable_product_ids: Option<Vec<Id>>,
    pub commit_applicable_product_tags: Option<Vec<String>>,
}

impl ThresholdUpdate {
    fn merged_into(&self, config: &ThresholdConfig) -> ThresholdConfig {
        let mut next = config.clone();
        if let Some(v) = self.is_enabled {
            next.is_enabled = v;
        }
        if let Some(v) = &self.gate {
            next.gate = v.clone();
        }
        if let Some(v) = self.threshold_amount {
            next.threshold_amount = v;
        }
        if let Some(v) = self.recharge_to_amount {
            next.recharge_to_amount = Some(v);
        }
        if let Some(v) = &self.discount {
            next.discount = v.clone();
        }
        if let Some(v) = self.commit_product_id {
            next.commit.product_id = v;
        }
        if let Some(v) = &self.commit_name {
            next.commit.name = v.clone();
        }
        if let Some(v) = &self.commit_description {
            next.commit.description = v.clone();
        }
        if let Some(v) = self.commit_priority {
            next.commit.priority = v;
        }
        if let Some(v) = &self.commit_applicable_product_ids {
            next.commit.applicable_product_ids = v.clone();
        }
        if let Some(v) = &self.commit_applicable_product_tags {
            next.commit.applicable_product_tags = v.clone();
        }
        next
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractEdit {
    /// Id of this edit (assigned at the edge); commits it adds derive their ids from it.
    pub edit_id: Id,
    pub contract_id: Id,
    pub uniqueness_key: Option<String>,
    pub add_commits: Vec<CommitSpec>,
    pub add_credits: Vec<CommitSpec>,
    pub add_spend_threshold: Option<ThresholdConfig>,
    pub update_spend_threshold: Option<ThresholdUpdate>,
    pub add_prepaid_threshold: Option<ThresholdConfig>,
    pub update_prepaid_threshold: Option<ThresholdUpdate>,
}

/// Every input that changes a customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    CreateCustomer(Box<CustomerProfile>),
    SetIngestAliases(Vec<String>),
    SetStripeBilling(StripeBilling),
    ArchiveCustomer,
    RecordUsage(UsageEvent),
    CreateContract(Box<ContractSpec>),
    EditContract(Box<ContractEdit>),
    PaymentOutcome(PaymentOutcome),
    VoidInvoice {
        invoice_id: Id,
    },
    /// Time passed: close billing periods, expire segments, evaluate thresholds.
    Tick,
}

impl Input {
    pub fn create_customer(profile: CustomerProfile) -> Input {
        Input::CreateCustomer(Box::new(profile))
    }

    pub fn create_contract(spec: ContractSpec) -> Input {
        Input::CreateContract(Box::new(spec))
    }

    pub fn edit(edit: ContractEdit) -> Input {
        Input::EditContract(Box::new(edit))
    }
}

/// The result of an accepted input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub effects: Vec<Effect>,
    /// Ids of objects the input created (commits added by an edit), for the response.
    pub created: Vec<Id>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub profile: Option<CustomerProfile>,
    pub contracts: Vec<Contract>,
}

/// One charge computed in the check phase of a usage event, applied after.
#[derive(Clone, Copy)]
struct Charge {
    contract: usize,
    period_bounds: (Timestamp, Timestamp),
    product_id: Id,
    contribution: Contribution,
    new_charged: Money,
    delta: Money,
}

/// How many charges of one event are kept without touching the heap: an event usually rates
/// one product of one contract; more spill to a `Vec`.
const CHARGES_INLINE: usize = 4;

/// The charges of one event, inline up to [`CHARGES_INLINE`].
#[derive(Default)]
struct Charges {
    inline: [Option<Charge>; CHARGES_INLINE],
    spill: Vec<Charge>,
}

impl Charges {
    fn push(&mut self, charge: Charge) {
        match self.inline.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(charge),
            None => self.spill.push(charge),
        }
    }

    fn is_empty(&self) -> bool {
        self.inline[0].is_none()
    }

    /// In the order pushed.
    fn iter(&self) -> impl Iterator<Item = &Charge> {
        self.inline
            .iter()
            .map_while(Option::as_ref)
            .chain(&self.spill)
    }
}

/// What an input may change, set aside before it changes it.
enum Saved {
    Nothing,
    Whole(Box<Customer>),
}

/// Puts [`Saved`] back when dropped, unless the input succeeded (which sets it to `Nothing`):
/// on a refusal, and also while a panic unwinds through [`Customer::apply`].
struct Rollback<'a> {
    customer: &'a mut Customer,
    saved: Saved,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.saved, Saved::Nothing) {
            Saved::Nothing => {}
            Saved::Whole(customer) => *self.customer = *customer,
        }
    }
}

impl Customer {
    pub fn id(&self) -> Option<Id> {
        self.profile.as_ref().map(|p| p.id)
    }

    /// Rebuilds derived caches after decoding a checkpoint.
    pub fn rebuild_caches(&mut self) {
        for contract in &mut self.contracts {
            contract.rebuild_caches();
        }
    }

    /// Applies one input.
    ///
    /// Every input but usage runs with a copy of the customer set aside: a refusal, an overflow
    /// or a panic part-way through puts it back, so the state is exactly as before. Usage, the
    /// hot path, is checked completely before anything changes (every charge computed with
    /// checked arithmetic) and then applied in place without a copy, which would cost as much
    /// as the contract's whole history on every event: a failure after the check (an overflow
    /// the bounds make impossible, or a bug) may leave it half-applied, and the caller must
    /// then rebuild the state (the engine reloads it from disk and the log, as recovery does,
    /// and quarantines the event). A panic unwinds to the caller.
    ///
    /// # Errors
    /// A [`Rejection`] when the input is refused; the state is then unchanged, except after a
    /// usage event's check phase (see above).
    pub fn apply(&mut self, input: &Input, ctx: &Ctx<'_>) -> Result<Applied, Rejection> {
        for contract in &mut self.contracts {
            contract.ensure_caches();
        }
        let mut undo = Rollback {
            customer: self,
            saved: Saved::Nothing,
        };
        if !matches!(input, Input::RecordUsage(_)) {
            undo.saved = Saved::Whole(Box::new(undo.customer.clone()));
        }
        let result = undo.customer.apply_checked(input, ctx);
        if result.is_ok() {
            undo.saved = Saved::Nothing;
        }
        result
    }

    fn apply_checked(&mut self, input: &Input, ctx: &Ctx<'_>) -> Result<Applied, Rejection> {
        let mut applied = Applied::default();
        match input {
            Input::CreateCustomer(profile) => {
                if self.profile.is_some() {
                    return Err(Rejection::AlreadyExists);
                }
                if profile.name.trim().is_empty() {
                    return Err(Rejection::MissingField("name"));
                }
                self.profile = Some((**profile).clone());
            }
            Input::SetIngestAliases(aliases) => {
                self.profile_mut()?.ingest_aliases = aliases.clone();
            }
            Input::SetStripeBilling(billing) => {
                self.profile_mut()?.stripe = Some(billing.clone());
            }
            Input::ArchiveCustomer => {
                self.profile_mut()?.archived_at.get_or_insert(ctx.at);
            }
            Input::RecordUsage(event) => self.record_usage(event, ctx, &mut applied)?,
            Input::CreateContract(spec) => self.create_contract(spec, ctx, &mut applied)?,
            Input::EditContract(edit) => self.edit_contract(edit, ctx, &mut applied)?,
            Input::PaymentOutcome(outcome) => self.payment_outcome(outcome, ctx, &mut applied)?,
            Input::VoidInvoice { invoice_id } => self.void_invoice(*invoice_id)?,
            Input::Tick => self.tick(ctx, &mut applied)?,
        }
        self.debug_check_invariants();
        Ok(applied)
    }

    fn profile_mut(&mut self) -> Result<&mut CustomerProfile, Rejection> {
        self.profile.as_mut().ok_or(Rejection::CustomerNotFound)
    }

    fn profile(&self) -> Result<&CustomerProfile, Rejection> {
        self.profile.as_ref().ok_or(Rejection::CustomerNotFound)
    }

    // ---------------------------------------------------------------- usage

    fn record_usage(
        &mut self,
        event: &UsageEvent,
        ctx: &Ctx<'_>,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        let customer_id = self.profile()?.id;
        let mut charges = Charges::default();
        // Check phase: every charge computed with checked arithmetic, nothing changed yet.
        for (ci, contract) in self.contracts.iter().enumerate() {
            if !contract.covers(event.timestamp) {
                continue;
            }
            let Some(card) = ctx.catalog.rate_card(contract.rate_card_id) else {
                continue;
            };
            for (metric, products) in ctx
                .catalog
                .rating_candidates(&event.event_type, ctx.catalog_version)
            {
                if !metric.matches(event) {
                    continue;
                }
                let Some(contribution) = metric.contribution(event) else {
                    continue;
                };
                for &product_id in products {
                    let Some(rate) = card.rate_at(product_id, event.timestamp, ctx.catalog_version)
                    else {
                        continue;
                    };
                    if !rate.entitled {
                        continue;
                    }
                    // The period holding the event is usually the latest one: finding it by
                    // its bounds avoids the calendar arithmetic of `period_bounds`.
                    let period = contract.periods.iter().rposition(|p| {
                        p.starting_at <= event.timestamp && event.timestamp < p.ending_before
                    });
                    let bounds = match period {
                        Some(pi) => {
                            let p = &contract.periods[pi];
                            (p.starting_at, p.ending_before)
                        }
                        None => period_bounds(contract, event.timestamp),
                    };
                    debug_assert_eq!(bounds, period_bounds(contract, event.timestamp));
                    let line = period.and_then(|p| {
                        contract.periods[p]
                            .lines
                            .iter()
                            .position(|l| l.product_id == product_id)
                    });
                    let (old_charged, old_quantity, new_quantity) = match line {
                        Some(li) => {
                            let l =
                                &contract.periods[period.expect("line implies period")].lines[li];
                            let old = l.aggregate.quantity();
                            (l.charged, old, l.aggregate.quantity_with(&contribution)?)
                        }
                        None => (
                            Money::ZERO,
                            Decimal::ZERO,
                            super::contract::Aggregate::empty_for(&contribution)
                                .quantity_with(&contribution)?,
                        ),
                    };
                    let (new_charged, delta) =
                        line_charge(&rate.price, old_charged, old_quantity, new_quantity)?;
                    charges.push(Charge {
                        contract: ci,
                        period_bounds: bounds,
                        product_id,
                        contribution,
                        new_charged,
                        delta,
                    });
                }
            }
        }
        if charges.is_empty() {
            return Ok(());
        }
        // Checked as far as it can be: from here the event applies in place (see `apply`).
        for charge in charges.iter() {
            let tags = product_tags(ctx.catalog, charge.product_id);
            let contract = &mut self.contracts[charge.contract];
            let pi = match contract
                .periods
                .iter()
                .rposition(|p| p.starting_at == charge.period_bounds.0)
            {
                Some(pi) => pi,
                None => open_period(contract, charge.period_bounds),
            };
            let existing = contract.periods[pi]
                .lines
                .iter()
                .position(|l| l.product_id == charge.product_id);
            let li = match existing {
                Some(li) => li,
                None => {
                    let lines = &mut contract.periods[pi].lines;
                    let aggregate = super::contract::Aggregate::empty_for(&charge.contribution);
                    lines.push(UsageLine::new(charge.product_id, aggregate));
                    lines.len() - 1
                }
            };
            let invoice_id = contract.periods[pi].invoice_id;
            let line = &mut contract.periods[pi].lines[li];
            let uncovered_before = line.uncovered();
            line.aggregate.add(&charge.contribution);
            line.charged = charge.new_charged;
            if charge.delta.is_positive() {
                let drawn = Drawn {
                    line: (pi, li),
                    invoice_id,
                    usage_at: event.timestamp,
                };
                draw_down(
                    contract,
                    charge.product_id,
                    tags,
                    drawn,
                    charge.delta,
                    ctx.at,
                )?;
            } else if charge.delta.is_negative() {
                // SPEC 2.1: a decrease first gives back what the line drew, then lowers S.
                let decrease = Money::ZERO.checked_sub(charge.delta)?;
                let back = decrease.min(contract.periods[pi].lines[li].covered);
                give_back(contract, (pi, li), invoice_id, back)?;
            }
            let uncovered_after = contract.periods[pi].lines[li].uncovered();
            contract.line_changed(pi, uncovered_before, uncovered_after);
        }
        // Charges come contract by contract: evaluate each touched contract once, in order.
        let mut last = None;
        for charge in charges.iter() {
            if last != Some(charge.contract) {
                last = Some(charge.contract);
                self.evaluate(charge.contract, customer_id, ctx, applied)?;
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ contracts

    fn create_contract(
        &mut self,
        spec: &ContractSpec,
        ctx: &Ctx<'_>,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        let profile = self.profile()?;
        let customer_id = profile.id;
        if self.contracts.iter().any(|c| c.id == spec.id) {
            return Err(Rejection::AlreadyExists);
        }
        if let Some(key) = &spec.uniqueness_key {
            validate_uniqueness_key(key)?;
            if self
                .contracts
                .iter()
                .any(|c| c.uniqueness_key.as_ref() == Some(key))
            {
                return Err(Rejection::UniquenessKeyReused);
            }
        }
        let card = ctx
            .catalog
            .rate_card(spec.rate_card_id)
            .ok_or_else(|| Rejection::RateCardNotFound(spec.rate_card_id.to_string()))?;
        if spec
            .ending_before
            .is_some_and(|end| end <= spec.starting_at)
        {
            return Err(Rejection::invalid(
                "ending_before",
                "must be after starting_at",
            ));
        }
        for (field, list) in [("commits", &spec.commits), ("credits", &spec.credits)] {
            for (i, commit) in list.iter().enumerate() {
                if commit.payment_gate.is_some() {
                    return Err(Rejection::invalid(
                        &format!("{field}[{i}].payment_gate_config"),
                        "payment-gated commits are added with /v2/contracts/edit",
                    ));
                }
                validate_commit(commit, &format!("{field}[{i}]"), ctx, profile)?;
            }
        }
        for config in [&spec.spend_threshold, &spec.prepaid_threshold]
            .into_iter()
            .flatten()
        {
            validate_threshold(config, &card.fiat_credit_type, ctx, profile)?;
        }
        // Checked: build the contract.
        let mut contract = Contract {
            id: spec.id,
            customer_id,
            rate_card_id: spec.rate_card_id,
            name: spec.name.clone(),
            starting_at: spec.starting_at,
            ending_before: spec.ending_before,
            credit_type: card.fiat_credit_type.clone(),
            uniqueness_key: spec.uniqueness_key.clone(),
            created_at: ctx.at,
            commits: Vec::new(),
            periods: Vec::new(),
            purchases: Vec::new(),
            spend_threshold: spec.spend_threshold.clone().map(|mut c| {
                c.triggers = 0;
                c
            }),
            prepaid_threshold: spec.prepaid_threshold.clone().map(|mut c| {
                c.triggers = 0;
                c
            }),
            workflows: Vec::new(),
            edit_keys: Vec::new(),
            edits: 0,
            draw_order: Vec::new(),
            caches: ContractCaches::default(),
        };
        for (i, commit) in spec.commits.iter().chain(&spec.credits).enumerate() {
            let id = Id::derive(spec.id, "commit", i as u64);
            add_ungated_commit(&mut contract, id, commit, ctx)?;
        }
        contract.rebuild_caches();
        self.contracts.push(contract);
        let ci = self.contracts.len() - 1;
        // Thresholds evaluate at once on creation.
        self.evaluate(ci, customer_id, ctx, applied)
    }

    fn edit_contract(
        &mut self,
        edit: &ContractEdit,
        ctx: &Ctx<'_>,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        let profile = self.profile()?;
        let customer_id = profile.id;
        let ci = self
            .contracts
            .iter()
            .position(|c| c.id == edit.contract_id)
            .ok_or(Rejection::ContractNotFound)?;
        let contract = &self.contracts[ci];
        if let Some(key) = &edit.uniqueness_key {
            validate_uniqueness_key(key)?;
            if contract.edit_keys.contains(key) {
                return Err(Rejection::UniquenessKeyReused);
            }
        }
        let mut next_configs = [
            contract.spend_threshold.clone(),
            contract.prepaid_threshold.clone(),
        ];
        let changes = [
            (
                ThresholdKind::Spend,
                &edit.add_spend_threshold,
                &edit.update_spend_threshold,
            ),
            (
                ThresholdKind::PrepaidBalance,
                &edit.add_prepaid_threshold,
                &edit.update_prepaid_threshold,
            ),
        ];
        for (slot, (kind, add, update)) in next_configs.iter_mut().zip(changes) {
            if let Some(add) = add {
                if slot.is_some() {
                    return Err(Rejection::ThresholdConfigExists(kind.label()));
                }
                let mut config = add.clone();
                config.kind = kind;
                config.triggers = 0;
                validate_threshold(&config, &contract.credit_type, ctx, profile)?;
                *slot = Some(config);
            }
            if let Some(update) = update {
                let Some(current) = slot.as_ref() else {
                    return Err(Rejection::ThresholdConfigMissing(kind.label()));
                };
                let merged = update.merged_into(current);
                validate_threshold(&merged, &contract.credit_type, ctx, profile)?;
                *slot = Some(merged);
            }
        }
        let additions: Vec<&CommitSpec> =
            edit.add_commits.iter().chain(&edit.add_credits).collect();
        for (i, commit) in edit.add_commits.iter().enumerate() {
            validate_commit(commit, &format!("add_commits[{i}]"), ctx, profile)?;
        }
        for (i, credit) in edit.add_credits.iter().enumerate() {
            if credit.payment_gate.is_some() {
                return Err(Rejection::invalid(
                    &format!("add_credits[{i}].payment_gate_config"),
                    "credits cannot be payment-gated",
                ));
            }
            validate_commit(credit, &format!("add_credits[{i}]"), ctx, profile)?;
        }
        // Checked: apply the edit.
        let contract = &mut self.contracts[ci];
        let [spend, prepaid] = next_configs;
        contract.spend_threshold = spend;
        contract.prepaid_threshold = prepaid;
        contract.edits += 1;
        if let Some(key) = &edit.uniqueness_key {
            contract.edit_keys.push(key.clone());
        }
        for (i, spec) in additions.into_iter().enumerate() {
            let id = Id::derive(edit.edit_id, "commit", i as u64);
            applied.created.push(id);
            match &spec.payment_gate {
                Some(gate) => {
                    let contract = &mut self.contracts[ci];
                    start_manual_workflow(contract, id, spec, gate, ctx)?;
                    let workflow_id = id_of_workflow(id);
                    let wi = contract
                        .workflows
                        .iter()
                        .position(|w| w.id == workflow_id)
                        .ok_or(Rejection::WorkflowNotFound)?;
                    let stripe = self.profile.as_ref().and_then(|p| p.stripe.as_ref());
                    begin_gate(
                        &mut self.contracts[ci],
                        customer_id,
                        wi,
                        stripe,
                        ctx,
                        applied,
                    )?;
                }
                None => {
                    let contract = &mut self.contracts[ci];
                    add_ungated_commit(contract, id, spec, ctx)?;
                    contract.commit_released(contract.commits.len() - 1);
                    // The first commit with this id (ids come from the edit's id).
                    if let Some(commit) = contract.commits.iter().position(|c| c.id == id) {
                        cover_outstanding(contract, commit, ctx)?;
                    }
                }
            }
        }
        // Every configuration edit forces an evaluation (and is_enabled -> true in particular).
        self.evaluate(ci, customer_id, ctx, applied)
    }

    // ------------------------------------------------------------- payments

    fn payment_outcome(
        &mut self,
        outcome: &PaymentOutcome,
        ctx: &Ctx<'_>,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        let customer_id = self.profile()?.id;
        let (ci, wi) = self
            .contracts
            .iter()
            .enumerate()
            .find_map(|(ci, c)| {
                c.workflows
                    .iter()
                    .position(|w| w.id == outcome.workflow_id)
                    .map(|wi| (ci, wi))
            })
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
                action_required(contract, customer_id, wi, outcome, ctx, applied);
                return Ok(());
            }
            WorkflowState::Charging => {
                // `Pending` while CHARGING or ACTION_REQUIRED: the provider's object is known.
                let workflow = &mut contract.workflows[wi];
                workflow.state = WorkflowState::Charging;
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

    fn void_invoice(&mut self, invoice_id: Id) -> Result<(), Rejection> {
        for contract in &mut self.contracts {
            if contract.periods.iter().any(|p| p.invoice_id == invoice_id) {
                return Err(Rejection::InvoiceNotVoidable(
                    "usage invoices close with their billing period",
                ));
            }
            let Some(pi) = contract.purchases.iter().position(|p| p.id == invoice_id) else {
                continue;
            };
            let purchase = &contract.purchases[pi];
            if purchase.status == InvoiceStatus::Void {
                return Err(Rejection::InvoiceNotVoidable("already void"));
            }
            if let Some(wf) = purchase.workflow_id.and_then(|id| contract.workflow(id)) {
                if !wf.state.is_terminal() {
                    return Err(Rejection::InvoiceNotVoidable(
                        "its payment is in flight; report the payment outcome instead",
                    ));
                }
            }
            let purchase = &mut contract.purchases[pi];
            purchase.status = InvoiceStatus::Void;
            purchase.external_status = Some("VOID".into());
            return Ok(());
        }
        Err(Rejection::InvoiceNotFound)
    }

    fn tick(&mut self, ctx: &Ctx<'_>, applied: &mut Applied) -> Result<(), Rejection> {
        let Some(customer_id) = self.id() else {
            return Ok(());
        };
        for contract in &mut self.contracts {
            for period in &mut contract.periods {
                let closes_at = period.ending_before.plus_ms(ctx.limits.draft_grace_ms);
                if period.status == InvoiceStatus::Draft && closes_at <= ctx.at {
                    period.status = InvoiceStatus::Finalized;
                }
            }
            for purchase in &mut contract.purchases {
                if purchase.status == InvoiceStatus::Draft && purchase.issued_at <= ctx.at {
                    purchase.status = InvoiceStatus::Finalized;
                }
            }
            contract.periods_changed();
            expire_overdue_actions(contract, customer_id, ctx, applied);
        }
        for ci in 0..self.contracts.len() {
            self.evaluate(ci, customer_id, ctx, applied)?;
        }
        Ok(())
    }

    // ----------------------------------------------------------- thresholds

    /// Evaluates both thresholds of a contract (the rule of SPEC 1.5: on every input that may
    /// change S or B, at creation, on edits and when a workflow ends).
    fn evaluate(
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
                        let balance = contract.balance_tracked(ctx.at)?;
                        if balance > threshold_amount {
                            break;
                        }
                        let recharge_to = recharge_to_amount
                            .ok_or(Rejection::MissingField("recharge_to_amount"))?;
                        let access = recharge_to.checked_sub(balance)?;
                        if !access.is_positive() {
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

    /// Checks the invariants every apply must keep (debug builds and tests).
    fn debug_check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        for contract in &self.contracts {
            contract.check_caches();
            for kind in [WorkflowKind::Spend, WorkflowKind::PrepaidBalance] {
                let in_flight = contract
                    .workflows
                    .iter()
                    .filter(|w| w.kind == kind && !w.state.is_terminal())
                    .count();
                debug_assert!(in_flight <= 1, "two {kind:?} workflows in flight");
            }
            for commit in &contract.commits {
                for segment in &commit.segments {
                    debug_assert!(segment.drawn <= segment.amount, "segment overdrawn");
                    debug_assert!(!segment.drawn.is_negative(), "negative drawdown");
                }
            }
            for period in &contract.periods {
                for line in &period.lines {
                    debug_assert!(
                        line.covered <= line.charged.floor_zero(),
                        "line overcovered"
                    );
                    let mut drawn = Money::ZERO;
                    for draw in &line.draws {
                        drawn = drawn.checked_add(draw.amount).expect("bounded sums");
                    }
                    debug_assert_eq!(drawn, line.covered, "line draws drifted from covered");
                }
            }
        }
    }
}

fn product_tags(catalog: &Catalog, product: Id) -> &[String] {
    catalog
        .product(product)
        .map(|p| p.tags.as_slice())
        .unwrap_or(&[])
}

fn validate_uniqueness_key(key: &str) -> Result<(), Rejection> {
    if key.is_empty() || key.chars().count() > 128 {
        return Err(Rejection::invalid(
            "uniqueness_key",
            "must be 1 to 128 characters",
        ));
    }
    Ok(())
}

/// The monthly billing period (first of month, UTC) containing `at`, clipped to the contract.
/// Needed once per period: an event finds the period it belongs to among those already open.
#[cold]
#[inline(never)]
fn period_bounds(contract: &Contract, at: Timestamp) -> (Timestamp, Timestamp) {
    let start = at.month_start().max(contract.starting_at);
    let end = at.next_month_start().min(contract.end_or_forever());
    (start, end)
}

fn open_period(contract: &mut Contract, (start, end): (Timestamp, Timestamp)) -> usize {
    let invoice_id = Id::derive(contract.id, "usage_invoice", start.millis() as u64);
    let at = contract.periods.partition_point(|p| p.starting_at < start);
    contract.periods.insert(
        at,
        UsagePeriod {
            invoice_id,
            starting_at: start,
            ending_before: end,
            status: InvoiceStatus::Draft,
            lines: Vec::new(),
        },
    );
    at
}

/// Where a drawdown goes: the usage line (period, line index), its invoice and the usage time.
#[derive(Clone, Copy)]
struct Drawn {
    line: (usize, usize),
    invoice_id: Id,
    usage_at: Timestamp,
}

/// The charge of a line after its quantity went from `old_quantity` to `new_quantity`, and the
/// change: `(new_charged, delta)`. SPEC 2.1: a line is charged on its net quantity, floored at
/// zero. Marginal pricing: the increment is priced by the rate in effect at the event's time
/// (tiers still count the period's total), so a rate change mid-period does not re-price
/// earlier usage; a net at or below zero charges nothing whatever rates applied before.
fn line_charge(
    price: &super::catalog::Price,
    old_charged: Money,
    old_quantity: Decimal,
    new_quantity: Decimal,
) -> Result<(Money, Money), Rejection> {
    let floor = |q: Decimal| {
        if q.is_sign_negative() {
            Decimal::ZERO
        } else {
            q
        }
    };
    let new_charged = if new_quantity.is_sign_negative() || new_quantity.is_zero() {
        Money::ZERO
    } else {
        let delta = price
            .charge_for(floor(new_quantity))?
            .checked_sub(price.charge_for(floor(old_quantity))?)?;
        old_charged.checked_add(delta)?.floor_zero()
    };
    Ok((new_charged, new_charged.checked_sub(old_charged)?))
}

/// Draws `amount` of usage from eligible released segments in drawdown order and records the
/// draws on the line. Only segments with something left are visited (the live list, a
/// subsequence of `draw_order`): an exhausted one could give nothing.
fn draw_down(
    contract: &mut Contract,
    product: Id,
    tags: &[String],
    drawn: Drawn,
    amount: Money,
    at: Timestamp,
) -> Result<(), Rejection> {
    let (pi, li) = drawn.line;
    let mut left = amount;
    let mut i = 0;
    while i < contract.caches.live.len() {
        let (ci, si) = contract.caches.live[i];
        let commit = &contract.commits[ci];
        let segment = &commit.segments[si];
        if !segment.covers(drawn.usage_at) || !commit.applies_to(product, tags) {
            i += 1;
            continue;
        }
        let before = segment.remaining();
        let take = left.min(before);
        if !take.is_positive() {
            i += 1;
            continue;
        }
        contract.commits[ci].record_deduction(si, drawn.invoice_id, take, at)?;
        contract.periods[pi].lines[li].record_draw((ci, si), take)?;
        let after = contract.commits[ci].segments[si].remaining();
        contract.segment_changed((ci, si), before, after, true);
        if after.is_positive() {
            i += 1;
        } else {
            contract.caches.live.remove(i);
        }
        left = left.checked_sub(take)?;
        if left.is_zero() {
            break;
        }
    }
    Ok(())
}

/// Returns `amount` of what line `(pi, li)` drew to the segments it drew from, last drawn first
/// (usage went down, e.g. a negative SUM value).
fn give_back(
    contract: &mut Contract,
    (pi, li): (usize, usize),
    invoice_id: Id,
    amount: Money,
) -> Result<(), Rejection> {
    let mut left = amount;
    while left.is_positive() {
        let Some(draw) = contract.periods[pi].lines[li].draws.last().copied() else {
            break;
        };
        let (ci, si) = (draw.commit as usize, draw.segment as usize);
        let back = left.min(draw.amount);
        let commit = &mut contract.commits[ci];
        let before = commit.segments[si].remaining();
        commit.return_deduction(si, invoice_id, back)?;
        let after = commit.segments[si].remaining();
        contract.segment_changed((ci, si), before, after, false);
        let line = &mut contract.periods[pi].lines[li];
        line.covered = line.covered.checked_sub(back)?;
        let last = line.draws.last_mut().expect("the draw read above");
        last.amount = last.amount.checked_sub(back)?;
        if last.amount.is_zero() {
            line.draws.pop();
        }
        left = left.checked_sub(back)?;
    }
    Ok(())
}

/// Applies a newly usable commit (index `ci`) to usage already charged but not covered on draft
/// invoices whose period overlaps its segments: this is how a released spend-threshold commit
/// brings outstanding spend back to zero.
fn cover_outstanding(contract: &mut Contract, ci: usize, ctx: &Ctx<'_>) -> Result<(), Rejection> {
    for pi in 0..contract.periods.len() {
        if contract.periods[pi].status != InvoiceStatus::Draft {
            continue;
        }
        let (start, end) = (
            contract.periods[pi].starting_at,
            contract.periods[pi].ending_before,
        );
        let invoice_id = contract.periods[pi].invoice_id;
        for li in 0..contract.periods[pi].lines.len() {
            let line = &contract.periods[pi].lines[li];
            let uncovered_before = line.uncovered();
            let mut left = uncovered_before;
            let product = line.product_id;
            let tags = product_tags(ctx.catalog, product);
            if !left.is_positive() || !contract.commits[ci].applies_to(product, tags) {
                continue;
            }
            for si in 0..contract.commits[ci].segments.len() {
                let segment = &contract.commits[ci].segments[si];
                if !segment.overlaps(start, end) {
                    continue;
                }
                let take = left.min(segment.remaining());
                if !take.is_positive() {
                    continue;
                }
                contract.deduct((ci, si), invoice_id, take, ctx.at)?;
                left = left.checked_sub(take)?;
                contract.periods[pi].lines[li].record_draw((ci, si), take)?;
                if left.is_zero() {
                    break;
                }
            }
            let uncovered_after = contract.periods[pi].lines[li].uncovered();
            contract.line_changed(pi, uncovered_before, uncovered_after);
        }
    }
    Ok(())
}

fn validate_commit(
    spec: &CommitSpec,
    field: &str,
    ctx: &Ctx<'_>,
    profile: &CustomerProfile,
) -> Result<(), Rejection> {
    let product = ctx
        .catalog
        .product(spec.product_id)
        .ok_or_else(|| Rejection::ProductNotFound(spec.product_id.to_string()))?;
    if !matches!(product.kind, ProductKind::Fixed) {
        return Err(Rejection::WrongProductType(format!(
            "{field}.product_id must be a FIXED product"
        )));
    }
    if spec.access_schedule.is_empty() {
        return Err(Rejection::invalid(
            &format!("{field}.access_schedule.schedule_items"),
            "at least one item is required",
        ));
    }
    for (amount, start, end) in &spec.access_schedule {
        bounds::check_amount(
            &format!("{field}.access_schedule.schedule_items[].amount"),
            *amount,
        )?;
        if end <= start {
            return Err(Rejection::invalid(
                &format!("{field}.access_schedule.schedule_items[].ending_before"),
                "must be after starting_at",
            ));
        }
    }
    for (_, unit_price, quantity) in &spec.invoice_schedule {
        let item = format!("{field}.invoice_schedule.schedule_items[]");
        bounds::check_amount(&format!("{item}.unit_price"), *unit_price)?;
        bounds::check_quantity(&format!("{item}.quantity"), *quantity)?;
        bounds::check_amount(
            &format!("{item}.amount"),
            unit_price.checked_mul(*quantity)?,
        )?;
    }
    if spec.priority.is_some_and(|p| p.is_sign_negative()) {
        return Err(Rejection::invalid(
            &format!("{field}.priority"),
            "must not be negative",
        ));
    }
    match spec.kind {
        CommitKind::Postpaid if spec.invoice_schedule.is_empty() => {
            return Err(Rejection::invalid(
                &format!("{field}.invoice_schedule"),
                "is required for POSTPAID commits",
            ));
        }
        CommitKind::Credit if !spec.invoice_schedule.is_empty() => {
            return Err(Rejection::invalid(
                &format!("{field}.invoice_schedule"),
                "credits are free and have no invoice schedule",
            ));
        }
        _ => {}
    }
    if let Some(gate) = &spec.payment_gate {
        gate.validate(&format!("{field}.payment_gate_config"))?;
        if spec.kind != CommitKind::Prepaid {
            return Err(Rejection::invalid(
                &format!("{field}.payment_gate_config"),
                "only PREPAID commits can be payment-gated",
            ));
        }
        if spec.invoice_schedule.is_empty() {
            return Err(Rejection::invalid(
                &format!("{field}.invoice_schedule"),
                "a payment-gated commit needs an invoice schedule (the amount to charge)",
            ));
        }
        if gate.gate_type == GateType::Stripe && profile.stripe.is_none() {
            return Err(Rejection::StripeNotConfigured);
        }
    }
    Ok(())
}

fn validate_threshold(
    config: &ThresholdConfig,
    credit_type: &super::money::CreditType,
    ctx: &Ctx<'_>,
    profile: &CustomerProfile,
) -> Result<(), Rejection> {
    config.validate(credit_type, ctx.limits)?;
    let product = ctx
        .catalog
        .product(config.commit.product_id)
        .ok_or_else(|| Rejection::ProductNotFound(config.commit.product_id.to_string()))?;
    if !matches!(product.kind, ProductKind::Fixed) {
        return Err(Rejection::WrongProductType(
            "commit.product_id must be a FIXED product".into(),
        ));
    }
    if config.gate.gate_type == GateType::Stripe && profile.stripe.is_none() {
        return Err(Rejection::StripeNotConfigured);
    }
    Ok(())
}

fn commit_name(ctx: &Ctx<'_>, product: Id, name: &Option<String>) -> String {
    name.clone().unwrap_or_else(|| {
        ctx.catalog
            .product(product)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    })
}

fn build_commit(
    id: Id,
    spec: &CommitSpec,
    release: Release,
    invoice_id_of: impl Fn(usize) -> Id,
    ctx: &Ctx<'_>,
) -> Result<Commit, Rejection> {
    let segments = spec
        .access_schedule
        .iter()
        .enumerate()
        .map(|(i, (amount, start, end))| Segment {
            id: Id::derive(id, "segment", i as u64),
            amount: *amount,
            starting_at: *start,
            ending_before: *end,
            drawn: Money::ZERO,
        })
        .collect();
    let mut invoice_schedule = Vec::with_capacity(spec.invoice_schedule.len());
    for (i, (timestamp, unit_price, quantity)) in spec.invoice_schedule.iter().enumerate() {
        invoice_schedule.push(InvoiceScheduleItem {
            id: Id::derive(id, "invoice_schedule_item", i as u64),
            timestamp: *timestamp,
            amount: unit_price.checked_mul(*quantity)?,
            quantity: *quantity,
            unit_price: *unit_price,
            invoice_id: invoice_id_of(i),
        });
    }
    Ok(Commit {
        id,
        kind: spec.kind,
        product_id: spec.product_id,
        name: commit_name(ctx, spec.product_id, &spec.name),
        description: spec.description.clone(),
        priority: spec.priority.unwrap_or(Decimal::from(DEFAULT_PRIORITY)),
        applicable_product_ids: spec.applicable_product_ids.clone(),
        applicable_product_tags: spec.applicable_product_tags.clone(),
        segments,
        invoice_schedule,
        release,
        created_by_threshold: None,
        created_at: ctx.at,
        deductions: Vec::new(),
        archived_at: None,
    })
}

/// Adds a commit that is usable at once, with one SCHEDULED invoice per invoice schedule item.
fn add_ungated_commit(
    contract: &mut Contract,
    id: Id,
    spec: &CommitSpec,
    ctx: &Ctx<'_>,
) -> Result<(), Rejection> {
    let commit = build_commit(
        id,
        spec,
        Release::Released { at: ctx.at },
        |i| Id::derive(id, "invoice", i as u64),
        ctx,
    )?;
    for item in &commit.invoice_schedule {
        contract.purchases.push(PurchaseInvoice {
            id: item.invoice_id,
            commit_id: id,
            product_id: commit.product_id,
            name: commit.name.clone(),
            status: if item.timestamp <= ctx.at {
                InvoiceStatus::Finalized
            } else {
                InvoiceStatus::Draft
            },
            issued_at: item.timestamp,
            subtotal: item.amount,
            tax: Money::ZERO,
            total: item.amount,
            workflow_id: None,
            external_status: None,
        });
    }
    contract.commits.push(commit);
    Ok(())
}

/// The id of the workflow gating a manually added commit.
fn id_of_workflow(commit_id: Id) -> Id {
    Id::derive(commit_id, WorkflowKind::ManualCommit.as_str(), 0)
}

/// Adds a payment-gated commit (withheld) with its purchase invoice and workflow.
fn start_manual_workflow(
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
    contract.purchases.push(PurchaseInvoice {
        id: invoice_id,
        commit_id,
        product_id: commit.product_id,
        name: commit.name.clone(),
        status: InvoiceStatus::Finalized,
        issued_at: ctx.at,
        subtotal,
        tax,
        total,
        workflow_id: Some(workflow_id),
        external_status: None,
    });
    contract.commits.push(commit);
    contract.workflows.push(Workflow {
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
    });
    Ok(())
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
    let subtotal = match &config.discount {
        Some(discount) => access.checked_mul(discount.payment_fraction)?,
        None => access,
    };
    let tax = config.gate.tax();
    let total = subtotal.checked_add(tax)?;
    // A spend commit must offset usage already incurred, so it starts with the earliest open
    // usage period; a recharge starts at the trigger hour.
    let starting_at = match kind {
        ThresholdKind::Spend => contract
            .periods
            .iter()
            .filter(|p| p.status == InvoiceStatus::Draft)
            .map(|p| p.starting_at)
            .min()
            .unwrap_or(ctx.at.floor_hour()),
        ThresholdKind::PrepaidBalance => ctx.at.floor_hour(),
    }
    .max(contract.starting_at);
    let commit = commit_for_threshold(
        &config.commit,
        (workflow_id, commit_id, invoice_id),
        (access, subtotal),
        (starting_at, contract.end_or_forever()),
        kind,
        ctx,
    );
    let gate = config.gate.clone();
    // Checked: record the trigger.
    contract
        .threshold_mut(kind)
        .expect("evaluated config exists")
        .triggers = sequence;
    contract.purchases.push(PurchaseInvoice {
        id: invoice_id,
        commit_id,
        product_id: commit.product_id,
        name: commit.name.clone(),
        status: InvoiceStatus::Finalized,
        issued_at: ctx.at,
        subtotal,
        tax,
        total,
        workflow_id: Some(workflow_id),
        external_status: None,
    });
    contract.commits.push(commit);
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
    contract.workflows.push(workflow);
    let wi = contract.workflows.len() - 1;
    contract.threshold_workflow_added(wi);
    Ok(wi)
}

fn commit_for_threshold(
    spec: &ThresholdCommit,
    (workflow_id, id, invoice_id): (Id, Id, Id),
    (access, subtotal): (Money, Money),
    (starting_at, ending_before): (Timestamp, Timestamp),
    kind: ThresholdKind,
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
    }
}

/// Moves a new workflow (index `wi`) out of INITIATED according to its gate.
fn begin_gate(
    contract: &mut Contract,
    customer_id: Id,
    wi: usize,
    stripe: Option<&StripeBilling>,
    ctx: &Ctx<'_>,
    applied: &mut Applied,
) -> Result<(), Rejection> {
    let workflow_id = contract.workflows[wi].id;
    let gate_type = contract.workflows[wi].gate.gate_type;
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
            contract.workflows[wi].state = WorkflowState::AwaitingExternal;
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
            workflow.state = WorkflowState::Charging;
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
    workflow.state = WorkflowState::Released;
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
        cover_outstanding(contract, ci, ctx)?;
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

fn fail_workflow(
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
    workflow.state = WorkflowState::Failed;
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

/// Moves workflow `wi` to ACTION_REQUIRED; the first entry starts its deadline from the limit
/// logged with the outcome, and tells the customer's operator once per PaymentIntent.
fn action_required(
    contract: &mut Contract,
    customer_id: Id,
    wi: usize,
    outcome: &PaymentOutcome,
    ctx: &Ctx<'_>,
    applied: &mut Applied,
) {
    let workflow = &mut contract.workflows[wi];
    let repeat = workflow.state == WorkflowState::ActionRequired
        && workflow.payment_intent_id == outcome.payment_intent_id;
    let (error_message, timeout_ms) = match &outcome.result {
        PaymentResult::ActionRequired {
            error_message,
            timeout_ms,
        } => (error_message.clone(), *timeout_ms),
        _ => (None, 0),
    };
    if workflow.state != WorkflowState::ActionRequired {
        // Repeats (polls) never extend the deadline.
        workflow.charge.action_deadline = Some(ctx.at.plus_ms(timeout_ms.max(0)));
    }
    workflow.state = WorkflowState::ActionRequired;
    workflow.payment_intent_id = outcome.payment_intent_id.clone();
    note_object(workflow, outcome);
    if !repeat {
        let workflow = &contract.workflows[wi];
        let mut hook = webhook(
            workflow,
            WebhookType::PaymentPendingActionRequired,
            customer_id,
            ctx.at,
        );
        hook.invoice_id = Some(workflow.invoice_id);
        hook.error_message = error_message;
        hook.payment_intent_id = outcome.payment_intent_id.clone();
        applied.effects.push(Effect::Webhook(hook));
    }
}

/// What [`charge_progress`] left to do.
enum Progress {
    /// Nothing special: the usual transition applies.
    Continue,
    /// The outcome was fully applied.
    Done,
    /// The outcome ended the workflow: evaluate again.
    Ended,
}

/// The STRIPE cases outside the plain transition table: money arriving for a FAILED workflow
/// (refunded, never released), the refund's report, and an ACTION_REQUIRED repeat past its
/// deadline (FAILED; its PaymentIntent is cancelled).
fn charge_progress(
    contract: &mut Contract,
    customer_id: Id,
    wi: usize,
    outcome: &PaymentOutcome,
    ctx: &Ctx<'_>,
    applied: &mut Applied,
) -> Result<Progress, Rejection> {
    let workflow = &mut contract.workflows[wi];
    if workflow.gate.gate_type != GateType::Stripe || outcome.source != OutcomeSource::Stripe {
        return Ok(Progress::Continue);
    }
    match (&outcome.result, workflow.state) {
        (PaymentResult::Pending { .. }, state) if state.is_terminal() => {
            // A late report of the object: keep the id (a refund may need it), nothing else.
            let known = workflow.charge.object_id.is_some();
            note_object(workflow, outcome);
            if known {
                return Err(Rejection::WorkflowAlreadyEnded);
            }
            Ok(Progress::Done)
        }
        (PaymentResult::Paid, WorkflowState::Failed) => {
            if workflow.charge.refund.is_some() {
                return Err(Rejection::WorkflowAlreadyEnded);
            }
            workflow.charge.refund = Some(RefundRecord::Requested);
            if workflow.payment_intent_id.is_none() {
                workflow.payment_intent_id = outcome.payment_intent_id.clone();
            }
            note_object(workflow, outcome);
            let request = payment_request(contract, customer_id, wi, PaymentAction::Refund);
            applied.effects.push(Effect::RequestPayment(request));
            Ok(Progress::Done)
        }
        (PaymentResult::Refunded { refund_id }, WorkflowState::Failed) => {
            if workflow.charge.refund != Some(RefundRecord::Requested) {
                return Err(Rejection::WorkflowAlreadyEnded);
            }
            workflow.charge.refund = Some(RefundRecord::Done {
                refund_id: refund_id.clone(),
            });
            if workflow.payment_intent_id.is_none() {
                workflow.payment_intent_id = outcome.payment_intent_id.clone();
            }
            let workflow = &contract.workflows[wi];
            let mut hook = webhook(workflow, WebhookType::PaymentRefunded, customer_id, ctx.at);
            hook.invoice_id = Some(workflow.invoice_id);
            hook.invoice_total = Some(workflow.invoice_total);
            hook.payment_intent_id = workflow.payment_intent_id.clone();
            hook.refund_id = Some(refund_id.clone());
            applied.effects.push(Effect::Webhook(hook));
            Ok(Progress::Done)
        }
        (PaymentResult::ActionRequired { .. }, WorkflowState::ActionRequired)
            if action_overdue(workflow, ctx.at) =>
        {
            expire_action(contract, customer_id, wi, ctx, applied);
            Ok(Progress::Ended)
        }
        _ => Ok(Progress::Continue),
    }
}

fn action_overdue(workflow: &Workflow, at: Timestamp) -> bool {
    workflow.state == WorkflowState::ActionRequired
        && workflow
            .charge
            .action_deadline
            .is_some_and(|deadline| deadline <= at)
}

/// Fails every ACTION_REQUIRED workflow of `contract` past its deadline (from `tick`).
fn expire_overdue_actions(
    contract: &mut Contract,
    customer_id: Id,
    ctx: &Ctx<'_>,
    applied: &mut Applied,
) {
    for wi in 0..contract.workflows.len() {
        if action_overdue(&contract.workflows[wi], ctx.at) {
            expire_action(contract, customer_id, wi, ctx, applied);
        }
    }
}

fn expire_action(
    contract: &mut Contract,
    customer_id: Id,
    wi: usize,
    ctx: &Ctx<'_>,
    applied: &mut Applied,
) {
    let outcome = PaymentOutcome {
        workflow_id: contract.workflows[wi].id,
        source: OutcomeSource::Stripe,
        result: PaymentResult::Failed {
            error: Some(ProviderError {
                error_type: Some("tollgate_error".into()),
                code: Some("action_required_timeout".into()),
                decline_code: None,
                message: Some("the customer did not complete the required action in time".into()),
            }),
        },
        payment_intent_id: None,
    };
    fail_workflow(contract, customer_id, wi, &outcome, ctx, applied);
}

/// Records the provider's object of a STRIPE workflow the first time an outcome names it: a
/// `Pending` names it outright; other outcomes name a PaymentIntent, which is the object only
/// for the PAYMENT_INTENT payment type (an invoice's PaymentIntent is not the invoice).
fn note_object(workflow: &mut Workflow, outcome: &PaymentOutcome) {
    if workflow.charge.object_id.is_some() || workflow.gate.gate_type != GateType::Stripe {
        return;
    }
    let by_intent = workflow
        .gate
        .stripe
        .as_ref()
        .is_some_and(|s| s.payment_type == StripePaymentType::PaymentIntent);
    workflow.charge.object_id = match &outcome.result {
        PaymentResult::Pending { object_id } => Some(object_id.clone()),
        _ if by_intent => outcome.payment_intent_id.clone(),
        _ => None,
    };
}

/// The payment actor's request about workflow `wi` (STRIPE gates).
fn payment_request(
    contract: &Contract,
    customer_id: Id,
    wi: usize,
    action: PaymentAction,
) -> PaymentRequest {
    let workflow = &contract.workflows[wi];
    let stripe = workflow
        .gate
        .stripe
        .clone()
        .unwrap_or(super::gate::StripeConfig {
            payment_type: StripePaymentType::Invoice,
            invoice_metadata: Vec::new(),
            on_session_payment: false,
        });
    let description = contract
        .commit(workflow.commit_id)
        .map(|c| c.name.clone())
        .unwrap_or_default();
    PaymentRequest {
        workflow_id: workflow.id,
        workflow_type: workflow.kind,
        customer_id,
        contract_id: contract.id,
        invoice_id: workflow.invoice_id,
        commit_id: workflow.commit_id,
        amount: workflow.invoice_total,
        credit_type: contract.credit_type.clone(),
        stripe,
        stripe_customer_id: workflow
            .charge
            .stripe_customer_id
            .clone()
            .unwrap_or_default(),
        description,
        action,
        object_id: workflow.charge.object_id.clone(),
    }
}

fn webhook(
    workflow: &Workflow,
    webhook_type: WebhookType,
    customer_id: Id,
    at: Timestamp,
) -> Webhook {
    Webhook {
        id: Id::derive(workflow.id, webhook_type.as_str(), 0),
        webhook_type,
        workflow_type: workflow.kind,
        workflow_id: workflow.id,
        customer_id,
        contract_id: workflow.contract_id,
        timestamp: at,
        invoice_id: None,
        invoice_total: None,
        invoice_currency: None,
        payment_status: None,
        error_message: None,
        payment_intent_id: None,
        provider_error: None,
        refund_id: None,
    }
}

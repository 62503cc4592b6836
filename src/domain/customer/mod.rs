//! A customer's state and the one function that changes it: [`Customer::apply`].
//!
//! Everything that moves money happens here, deterministically: rating a usage event, drawing
//! the charge down from released segments in Metronome's order, evaluating both thresholds after
//! every input, starting a gate workflow, and releasing or cancelling its commit when the payment
//! outcome arrives. Time, ids of edge-created objects and the catalog come in with the input;
//! everything else is derived. Each input is checked completely before anything is changed: it
//! applies whole or is rejected whole.
//!
//! This file owns the inputs, the customer itself and the one entry point: [`Customer::apply`]
//! with its rollback, the profile inputs, voiding an invoice, the tick and the invariant checks,
//! plus the helpers several parts share. Each kind of input is handled by one submodule:
//! - `usage`: rating a usage event into charges on the period's usage lines, and the drawdown of
//!   those charges from released segments (also giving back, and covering outstanding spend
//!   with a newly usable commit).
//! - `contracts`: creating and editing contracts: checking commit, credit and threshold
//!   specifications, and building ungated commits with their invoices.
//! - `workflows`: evaluating both thresholds, starting gate workflows (threshold and manual),
//!   moving them through their gate, and releasing or failing their commits on the outcome.
//! - `charges`: what only provider-collected (STRIPE) charges do: ACTION_REQUIRED and its
//!   deadline, the provider's object, refunds after FAILED, and the payment requests.
//!
//! The submodules change the customer only from inside [`Customer::apply`]; none of them reads
//! a clock, sends anything or makes ids that do not derive from the input.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::catalog::Catalog;
use super::contract::{
    BalanceSpecifiers, CommitKind, Contract, CustomFields, Discount, InvoiceStatus, Limits,
    ThresholdConfig,
};
use super::effects::{Effect, Webhook, WebhookType};
use super::gate::{PaymentGateConfig, PaymentOutcome, StateChange, Workflow, WorkflowKind};
use super::ids::{Id, Timestamp};
use super::money::Money;
use super::rejection::Rejection;
use super::usage::UsageEvent;
use charges::expire_overdue_actions;
pub use commit_updates::{CommitUpdate, InvoiceUpdate, SegmentUpdate};
pub use customer_level::{CustomerCommit, CustomerCommitEnd, CustomerCommitSpec};

mod charges;
pub mod commit_updates;
mod contracts;
pub mod customer_level;
pub mod legacy;
pub mod legacy8;
mod lifecycle;
mod manual;
mod usage;
mod workflows;

/// Default drawdown priority of commits that do not name one (Metronome's threshold default).
pub const DEFAULT_PRIORITY: i64 = 100;

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
    /// Metronome's `custom_fields` (log version 9).
    pub custom_fields: CustomFields,
    /// The custom pricing unit of the access schedule (`access_schedule.credit_type_id`);
    /// `None`: fiat. The invoice schedule is always fiat (log version 10).
    pub credit_type: Option<Id>,
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
    /// `Some(None)` removes the rails.
    pub recharge_limits: Option<Option<super::contract::RechargeLimits>>,
    /// `threshold_balance_specifiers` (log version 9): `Some` replaces them (empty: none).
    pub balance_specifiers: Option<BalanceSpecifiers>,
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
    /// A new end (`Some(None)`: open-ended), from `/v1/contracts/updateEndDate` or the v2
    /// edit's `update_contract_end_date`.
    pub update_ending_before: Option<Option<Timestamp>>,
    /// Metronome's `allow_ending_before_finalized_invoice`, as the request sent it (logged).
    /// Tollgate never lets an end fall before a finalized invoice's end, so it changes nothing.
    pub allow_ending_before_finalized_invoice: bool,
    /// Commits and credits to archive (log version 9), by id.
    pub archive_commits: Vec<Id>,
    pub archive_credits: Vec<Id>,
    /// `update_commits` and `update_credits` (log version 9), in that order.
    pub update_commits: Vec<CommitUpdate>,
}

/// A manual ledger entry to add (`/v1/contracts/addManualBalanceLedgerEntry`): to a segment of
/// a contract's commit or credit, or of a customer-level one (`contract_id` `None`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualEntrySpec {
    /// Assigned at the edge (from the Idempotency-Key when there is one): a retry of an
    /// entry that was applied is refused rather than counted twice.
    pub id: Id,
    pub contract_id: Option<Id>,
    pub commit_id: Id,
    pub segment_id: Id,
    pub amount: Money,
    pub reason: String,
    /// `None`: the segment's start (Metronome's default).
    pub timestamp: Option<Timestamp>,
}

/// Every input that changes a customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    CreateCustomer(Box<CustomerProfile>),
    SetIngestAliases(Vec<String>),
    SetStripeBilling(StripeBilling),
    ArchiveCustomer,
    RecordUsage(UsageEvent),
    /// A contract to create, as log versions 2 to 5 recorded it (applied as
    /// [`Input::CreateContract`]).
    CreateContractV1(Box<legacy::ContractSpecV1>),
    /// A contract edit, as log versions 2 to 5 recorded it (applied as
    /// [`Input::EditContract`]).
    EditContractV1(Box<legacy::ContractEditV1>),
    PaymentOutcome(PaymentOutcome),
    VoidInvoice {
        invoice_id: Id,
    },
    /// Time passed: close billing periods, expire segments, evaluate thresholds.
    Tick,
    /// An operator's decision on a quarantined input of this customer (SPEC 2.1). The engine
    /// applies it (it knows which inputs are quarantined); the domain refuses it.
    Quarantine(Box<QuarantineAction>),
    /// An operator cancels a workflow in flight (SPEC 3.1): it ends FAILED with `reason`, as
    /// a failed payment ends it. For a STRIPE workflow the engine has cancelled the
    /// PaymentIntent or voided the invoice first (money that arrives all the same is refunded).
    CancelWorkflow {
        workflow_id: Id,
        reason: String,
    },
    /// A contract to create, as log versions 6 to 8 recorded it (applied as
    /// [`Input::CreateContract`]).
    CreateContractV6(Box<legacy::ContractSpecV8>),
    /// A contract edit, as log versions 6 to 8 recorded it (applied as [`Input::EditContract`]).
    EditContractV6(Box<legacy::ContractEditV8>),
    /// Forget where the customer stands on an alert and evaluate it again now
    /// (`/v1/customer-alerts/reset`; log version 7).
    ResetAlert {
        alert_id: Id,
    },
    /// A customer-level commit or credit to create, as log version 8 recorded it (applied as
    /// [`Input::CreateCustomerCommit`]).
    CreateCustomerCommitV8(Box<legacy::CustomerCommitSpecV8>),
    /// Shorten a customer-level commit's or credit's access or invoicing (log version 8).
    EndCustomerCommit(Box<CustomerCommitEnd>),
    /// A contract to create, as log version 9 recorded it (applied as [`Input::CreateContract`]).
    CreateContractV9(Box<legacy8::ContractSpecV9>),
    /// A contract edit, as log version 9 recorded it (applied as [`Input::EditContract`]).
    EditContractV9(Box<legacy8::ContractEditV9>),
    /// A customer-level commit or credit to create, as log version 9 recorded it (applied as
    /// [`Input::CreateCustomerCommit`]).
    CreateCustomerCommitV9(Box<legacy8::CustomerCommitSpecV9>),
    /// Add a manual ledger entry to a commit's or credit's segment (log version 9).
    AddManualEntry(Box<ManualEntrySpec>),
    /// Create a contract (log version 10: commits, credits and prepaid thresholds in custom
    /// pricing units).
    CreateContract(Box<ContractSpec>),
    /// Edit a contract (log version 10).
    EditContract(Box<ContractEdit>),
    /// Create a customer-level commit or credit (log version 10).
    CreateCustomerCommit(Box<CustomerCommitSpec>),
}

/// An operator's decision on one quarantined input, with the input it decides on as the
/// quarantine kept it: where it sits in the log (`seq`, and `index` > 0 for the i-th usage event
/// parked before its customer existed), when it was accepted, its catalog version, and why it
/// was quarantined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineAction {
    pub seq: u64,
    pub index: u32,
    pub at: Timestamp,
    pub catalog_version: u64,
    pub input: Input,
    /// Whether its apply panicked (else the domain refused it), and the message.
    pub panicked: bool,
    pub reason: String,
    pub decision: QuarantineDecision,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuarantineDecision {
    /// Apply it now (after an upgrade), as it would have applied when it was accepted: with its
    /// own acceptance time and catalog version.
    Reapply,
    /// Never apply it.
    Discard { reason: String },
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
    /// Workflows the input started, each gate included (for the workflow index: a NONE-gated
    /// commit's workflow has no effect that would name it).
    pub workflows_started: Vec<Id>,
    /// Workflow state changes the input made, in order (the customer's history keeps them,
    /// and the engine's index of workflows by state follows them).
    pub transitions: Vec<StateChange>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub profile: Option<CustomerProfile>,
    pub contracts: Vec<Contract>,
    /// Every state change of this customer's workflows, in the order they happened.
    pub workflow_history: Vec<StateChange>,
    /// Where it stands on each alert it was evaluated on (state version 6).
    pub alerts: Vec<super::alerts::AlertStatus>,
    /// The time of its latest alert evaluation: alerts are evaluated as of the latest input's
    /// time, never earlier (an input applied out of its time, a late or re-applied event, does
    /// not evaluate a past billing period as the current one).
    pub alerts_as_of: Timestamp,
    /// Commits and credits of the customer rather than of one contract (state version 7), in
    /// the order created (a usage line's draw names one by its index).
    pub customer_commits: Vec<CustomerCommit>,
}

/// A customer as state versions 2 and 3 stored it (no workflow history).
#[derive(Deserialize)]
pub struct CustomerV3 {
    pub profile: Option<CustomerProfile>,
    pub contracts: Vec<legacy::ContractV4>,
}

impl From<CustomerV3> for Customer {
    /// The history these versions did not keep, as far as the workflows still tell it: each
    /// one's start, and its end (or the state it was in) at its end (or start) time, with the
    /// reason it failed.
    fn from(old: CustomerV3) -> Customer {
        let mut history = Vec::new();
        for workflow in old.contracts.iter().flat_map(|c| &c.workflows) {
            workflow.note_start(&mut history);
            if workflow.state != super::gate::WorkflowState::Initiated {
                history.push(StateChange {
                    workflow_id: workflow.id,
                    state: workflow.state,
                    at: workflow.ended_at.unwrap_or(workflow.started_at),
                    reason: workflow
                        .error
                        .as_ref()
                        .and_then(|e| e.message.clone().or_else(|| e.code.clone())),
                });
            }
        }
        history.sort_by_key(|c| c.at);
        Customer {
            profile: old.profile,
            contracts: old.contracts.into_iter().map(Into::into).collect(),
            workflow_history: history,
            alerts: Vec::new(),
            alerts_as_of: Timestamp::default(),
            customer_commits: Vec::new(),
        }
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

/// What an input that moved an alert was, for `triggered_by`.
fn alert_trigger(input: &Input) -> &'static str {
    match input {
        Input::RecordUsage(_) => "usage",
        Input::CreateContract(_)
        | Input::CreateContractV1(_)
        | Input::CreateContractV6(_)
        | Input::CreateContractV9(_)
        | Input::EditContract(_)
        | Input::EditContractV9(_)
        | Input::EditContractV1(_)
        | Input::EditContractV6(_)
        | Input::CreateCustomerCommit(_)
        | Input::CreateCustomerCommitV8(_)
        | Input::CreateCustomerCommitV9(_)
        | Input::EndCustomerCommit(_)
        | Input::AddManualEntry(_) => "contract",
        Input::PaymentOutcome(_) | Input::CancelWorkflow { .. } => "payment",
        Input::VoidInvoice { .. } => "invoice",
        Input::Tick => "time",
        Input::ResetAlert { .. } => "reset",
        Input::CreateCustomer(_)
        | Input::SetIngestAliases(_)
        | Input::SetStripeBilling(_)
        | Input::ArchiveCustomer
        | Input::Quarantine(_) => "customer",
    }
}

impl Customer {
    pub fn id(&self) -> Option<Id> {
        self.profile.as_ref().map(|p| p.id)
    }

    /// The payment request about workflow `workflow_id` (an operator's cancel asks the
    /// provider with it); `None` for an unknown workflow or a customer without a profile.
    pub fn payment_request_for(
        &self,
        workflow_id: Id,
        action: super::effects::PaymentAction,
    ) -> Option<super::effects::PaymentRequest> {
        let customer_id = self.id()?;
        self.contracts.iter().find_map(|contract| {
            let wi = contract
                .workflows
                .iter()
                .position(|w| w.id == workflow_id)?;
            Some(charges::payment_request(
                contract,
                customer_id,
                wi,
                action.clone(),
            ))
        })
    }

    /// The workflow `workflow_id`, whichever contract it belongs to.
    pub fn workflow(&self, workflow_id: Id) -> Option<&Workflow> {
        self.contracts.iter().find_map(|c| c.workflow(workflow_id))
    }

    /// The state changes of workflow `workflow_id`, in order.
    pub fn history_of(&self, workflow_id: Id) -> Vec<StateChange> {
        self.workflow_history
            .iter()
            .filter(|c| c.workflow_id == workflow_id)
            .cloned()
            .collect()
    }

    /// Workflow `workflow_id` with its state changes.
    pub fn workflow_with_history(&self, workflow_id: Id) -> Option<(Workflow, Vec<StateChange>)> {
        let workflow = self.workflow(workflow_id)?.clone();
        Some((workflow, self.history_of(workflow_id)))
    }

    /// Every workflow of every contract with its state changes.
    pub fn workflows_with_history(&self) -> Vec<(Workflow, Vec<StateChange>)> {
        let mut by_id: std::collections::HashMap<Id, Vec<StateChange>> =
            std::collections::HashMap::new();
        for change in &self.workflow_history {
            by_id
                .entry(change.workflow_id)
                .or_default()
                .push(change.clone());
        }
        self.contracts
            .iter()
            .flat_map(|c| &c.workflows)
            .map(|w| (w.clone(), by_id.remove(&w.id).unwrap_or_default()))
            .collect()
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
            Input::EditContract(edit) => self.edit_contract(edit, true, ctx, &mut applied)?,
            Input::CreateContractV1(spec) => {
                let spec = ContractSpec::from((**spec).clone());
                self.create_contract(&spec, ctx, &mut applied)?;
            }
            Input::EditContractV1(edit) => {
                let edit = ContractEdit::from((**edit).clone());
                self.edit_contract(&edit, false, ctx, &mut applied)?;
            }
            Input::CreateContractV6(spec) => {
                let spec = ContractSpec::from((**spec).clone());
                self.create_contract(&spec, ctx, &mut applied)?;
            }
            Input::EditContractV6(edit) => {
                let edit = ContractEdit::from((**edit).clone());
                self.edit_contract(&edit, false, ctx, &mut applied)?;
            }
            Input::CreateContractV9(spec) => {
                let spec = ContractSpec::from((**spec).clone());
                self.create_contract(&spec, ctx, &mut applied)?;
            }
            Input::EditContractV9(edit) => {
                // Log version 9 remembered its edits already.
                let edit = ContractEdit::from((**edit).clone());
                self.edit_contract(&edit, true, ctx, &mut applied)?;
            }
            Input::PaymentOutcome(outcome) => self.payment_outcome(outcome, ctx, &mut applied)?,
            Input::VoidInvoice { invoice_id } => self.void_invoice(*invoice_id)?,
            Input::Tick => self.tick(ctx, &mut applied)?,
            Input::CancelWorkflow {
                workflow_id,
                reason,
            } => self.cancel_workflow(*workflow_id, reason, ctx, &mut applied)?,
            Input::Quarantine(_) => {
                return Err(Rejection::Unsupported(
                    "quarantine decisions are applied by the engine".into(),
                ));
            }
            Input::ResetAlert { alert_id } => self.reset_alert(*alert_id, ctx)?,
            Input::CreateCustomerCommit(spec) => {
                self.create_customer_commit(spec, ctx, &mut applied)?;
            }
            Input::CreateCustomerCommitV8(spec) => {
                let spec = CustomerCommitSpec::from((**spec).clone());
                self.create_customer_commit(&spec, ctx, &mut applied)?;
            }
            Input::CreateCustomerCommitV9(spec) => {
                let spec = CustomerCommitSpec::from((**spec).clone());
                self.create_customer_commit(&spec, ctx, &mut applied)?;
            }
            Input::EndCustomerCommit(end) => self.end_customer_commit(end, ctx, &mut applied)?,
            Input::AddManualEntry(entry) => self.add_manual_entry(entry, ctx, &mut applied)?,
        }
        // Usage looks only at what it created and at contracts whose next notice is due.
        let usage = matches!(input, Input::RecordUsage(_));
        self.advance_lifecycles(!usage, ctx, &mut applied);
        self.evaluate_alerts(alert_trigger(input), ctx, &mut applied)?;
        if !usage {
            // Any other input may move a workflow's ACTION_REQUIRED deadline.
            for contract in &mut self.contracts {
                contract.caches.action_deadline = None;
            }
        }
        self.workflow_history
            .extend(applied.transitions.iter().cloned());
        self.debug_check_invariants();
        Ok(applied)
    }

    /// The next instant after `after` at which time alone changes something for this customer,
    /// so the engine can tick it then rather than at its next hourly tick: a lifecycle notice
    /// falling due (a segment's start or end, the contract's end), a recharge held by a rail
    /// being evaluated again, a contract starting, an ACTION_REQUIRED deadline. `None` when
    /// nothing is scheduled.
    ///
    /// Constant time per contract on a usage event: the earliest ACTION_REQUIRED deadline is
    /// cached per contract (only other inputs move it), and so is the lifecycle's next notice.
    pub fn next_wake(&mut self, after: Timestamp) -> Option<Timestamp> {
        let mut next: Option<Timestamp> = None;
        let mut consider = |at: Timestamp| {
            if after < at && at < Timestamp::END_OF_TIME {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        for contract in &mut self.contracts {
            let workflows = &contract.workflows;
            let deadline = *contract.caches.action_deadline.get_or_insert_with(|| {
                workflows
                    .iter()
                    .filter(|w| !w.state.is_terminal())
                    .filter_map(|w| w.charge.action_deadline)
                    .min()
            });
            if let Some(deadline) = deadline {
                consider(deadline);
            }
            if let Some(due) = contract.caches.lifecycle_due {
                consider(due);
            }
            consider(contract.starting_at);
            if let Some(end) = contract.ending_before {
                consider(end);
            }
            if let Some(config) = &contract.prepaid_threshold {
                if let Some(hold) = config.hold.filter(|_| config.is_enabled) {
                    consider(hold.until);
                }
            }
        }
        // A customer-level segment's start or end changes the B of the contracts using it.
        for shared in self
            .customer_commits
            .iter()
            .filter(|c| c.commit.is_released())
        {
            for segment in &shared.commit.segments {
                consider(segment.starting_at);
                consider(segment.ending_before);
            }
        }
        next
    }

    fn profile_mut(&mut self) -> Result<&mut CustomerProfile, Rejection> {
        self.profile.as_mut().ok_or(Rejection::CustomerNotFound)
    }

    fn profile(&self) -> Result<&CustomerProfile, Rejection> {
        self.profile.as_ref().ok_or(Rejection::CustomerNotFound)
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
            contract.purchases[pi].void();
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
            let shared = self.customer_commits.iter().map(|c| &c.commit);
            for commit in contract.commits.iter().chain(shared) {
                for (si, segment) in commit.segments.iter().enumerate() {
                    // Usage draws only what the schedule and the positive manual entries gave
                    // (a negative entry after a draw may leave less than was drawn: their sum is
                    // not the bound).
                    let given: rust_decimal::Decimal = commit
                        .manual_entries
                        .iter()
                        .filter(|e| e.segment == si && e.amount.is_positive())
                        .map(|e| e.amount.as_decimal())
                        .sum();
                    debug_assert!(
                        segment.drawn.as_decimal() <= segment.amount.as_decimal() + given,
                        "segment overdrawn"
                    );
                    debug_assert!(!segment.drawn.is_negative(), "negative drawdown");
                }
            }
            for period in &contract.periods {
                for line in &period.lines {
                    debug_assert!(
                        line.covered <= line.charged.floor_zero(),
                        "line overcovered"
                    );
                    let (mut drawn, mut converted) = (Money::ZERO, Money::ZERO);
                    for draw in &line.draws {
                        let sum = if draw.is_converted() {
                            &mut converted
                        } else {
                            &mut drawn
                        };
                        *sum = sum.checked_add(draw.amount).expect("bounded sums");
                    }
                    debug_assert_eq!(drawn, line.covered, "line draws drifted from covered");
                    debug_assert_eq!(
                        converted, line.covered_fiat,
                        "converted draws drifted from covered_fiat"
                    );
                    if line.conversion.is_none() {
                        debug_assert!(line.covered_fiat.is_zero(), "a fiat line converted");
                    }
                }
            }
        }
    }
}

fn commit_name(ctx: &Ctx<'_>, product: Id, name: &Option<String>) -> String {
    name.clone().unwrap_or_else(|| {
        ctx.catalog
            .product(product)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    })
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

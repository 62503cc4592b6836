//! The shapes older versions wrote, kept so their logs and states still read, and their upgrade
//! to today's shapes.
//!
//! Log and state values are bincode: positional, so a type that gains a field cannot read what
//! was written before it. A type that changed keeps its earlier shape here, frozen: the log's
//! inputs through [`ContractSpecV1`] and [`ContractEditV1`] (log versions 2 to 5, under the
//! input kinds [`Input::CreateContractV1`] and [`Input::EditContractV1`]), and the states of
//! versions 2 to 4 through [`ContractV4`]. Nothing here is written any more.
//!
//! [`Input::CreateContractV1`]: super::Input::CreateContractV1
//! [`Input::EditContractV1`]: super::Input::EditContractV1

use serde::Deserialize;

use super::{CommitSpec, ContractEdit, ContractSpec, ThresholdUpdate};
use super::{Customer, CustomerCommit, CustomerCommitSpec, CustomerProfile};
use crate::domain::contract::{
    Commit, CommitKind, Contract, ContractCaches, Deduction, Discount, InvoiceScheduleItem,
    PurchaseInvoice, RechargeHold, RechargeLimits, Release, Segment, ThresholdCommit,
    ThresholdConfig, ThresholdKind,
};
use crate::domain::gate::{PaymentGateConfig, StateChange, Workflow, WorkflowKind};
use crate::domain::ids::{Id, Timestamp};
use crate::domain::money::{CreditType, Money};

/// A threshold configuration without recharge rails (log versions 2 to 5, states 2 to 4).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ThresholdConfigV4 {
    pub kind: ThresholdKind,
    pub commit: ThresholdCommit,
    pub is_enabled: bool,
    pub gate: PaymentGateConfig,
    pub threshold_amount: Money,
    pub recharge_to_amount: Option<Money>,
    pub discount: Option<Discount>,
    pub triggers: u64,
}

impl From<ThresholdConfigV4> for ThresholdConfig {
    fn from(old: ThresholdConfigV4) -> ThresholdConfig {
        ThresholdConfig {
            kind: old.kind,
            commit: old.commit,
            is_enabled: old.is_enabled,
            gate: old.gate,
            threshold_amount: old.threshold_amount,
            recharge_to_amount: old.recharge_to_amount,
            discount: old.discount,
            triggers: old.triggers,
            limits: None,
            hold: None,
            holds: 0,
            balance_specifiers: Vec::new(),
            credit_type: None,
        }
    }
}

/// A contract to create, as log versions 2 to 5 recorded it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ContractSpecV1 {
    pub id: Id,
    pub rate_card_id: Id,
    pub name: Option<String>,
    pub starting_at: Timestamp,
    pub ending_before: Option<Timestamp>,
    pub uniqueness_key: Option<String>,
    pub commits: Vec<CommitSpecV8>,
    pub credits: Vec<CommitSpecV8>,
    pub spend_threshold: Option<ThresholdConfigV4>,
    pub prepaid_threshold: Option<ThresholdConfigV4>,
}

impl From<ContractSpecV1> for ContractSpec {
    fn from(old: ContractSpecV1) -> ContractSpec {
        ContractSpec {
            id: old.id,
            rate_card_id: old.rate_card_id,
            name: old.name,
            starting_at: old.starting_at,
            ending_before: old.ending_before,
            uniqueness_key: old.uniqueness_key,
            commits: specs(old.commits),
            credits: specs(old.credits),
            spend_threshold: old.spend_threshold.map(Into::into),
            prepaid_threshold: old.prepaid_threshold.map(Into::into),
        }
    }
}

/// A threshold update, as log versions 2 to 5 recorded it (no rails).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ThresholdUpdateV1 {
    pub is_enabled: Option<bool>,
    pub gate: Option<PaymentGateConfig>,
    pub threshold_amount: Option<Money>,
    pub recharge_to_amount: Option<Money>,
    pub discount: Option<Option<Discount>>,
    pub commit_product_id: Option<Id>,
    pub commit_name: Option<Option<String>>,
    pub commit_description: Option<Option<String>>,
    pub commit_priority: Option<Option<rust_decimal::Decimal>>,
    pub commit_applicable_product_ids: Option<Vec<Id>>,
    pub commit_applicable_product_tags: Option<Vec<String>>,
}

impl From<ThresholdUpdateV1> for ThresholdUpdate {
    fn from(old: ThresholdUpdateV1) -> ThresholdUpdate {
        ThresholdUpdate {
            is_enabled: old.is_enabled,
            gate: old.gate,
            threshold_amount: old.threshold_amount,
            recharge_to_amount: old.recharge_to_amount,
            discount: old.discount,
            commit_product_id: old.commit_product_id,
            commit_name: old.commit_name,
            commit_description: old.commit_description,
            commit_priority: old.commit_priority,
            commit_applicable_product_ids: old.commit_applicable_product_ids,
            commit_applicable_product_tags: old.commit_applicable_product_tags,
            recharge_limits: None,
            balance_specifiers: None,
        }
    }
}

/// A contract edit, as log versions 2 to 5 recorded it (no end date, no rails).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ContractEditV1 {
    pub edit_id: Id,
    pub contract_id: Id,
    pub uniqueness_key: Option<String>,
    pub add_commits: Vec<CommitSpecV8>,
    pub add_credits: Vec<CommitSpecV8>,
    pub add_spend_threshold: Option<ThresholdConfigV4>,
    pub update_spend_threshold: Option<ThresholdUpdateV1>,
    pub add_prepaid_threshold: Option<ThresholdConfigV4>,
    pub update_prepaid_threshold: Option<ThresholdUpdateV1>,
}

impl From<ContractEditV1> for ContractEdit {
    fn from(old: ContractEditV1) -> ContractEdit {
        ContractEdit {
            edit_id: old.edit_id,
            contract_id: old.contract_id,
            uniqueness_key: old.uniqueness_key,
            add_commits: specs(old.add_commits),
            add_credits: specs(old.add_credits),
            add_spend_threshold: old.add_spend_threshold.map(Into::into),
            update_spend_threshold: old.update_spend_threshold.map(Into::into),
            add_prepaid_threshold: old.add_prepaid_threshold.map(Into::into),
            update_prepaid_threshold: old.update_prepaid_threshold.map(Into::into),
            update_ending_before: None,
            allow_ending_before_finalized_invoice: true,
            archive_commits: Vec::new(),
            archive_credits: Vec::new(),
            update_commits: Vec::new(),
        }
    }
}

/// A contract as states 2 to 4 kept it (no rails, no lifecycle).
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub struct ContractV4 {
    pub id: Id,
    pub customer_id: Id,
    pub rate_card_id: Id,
    pub name: Option<String>,
    pub starting_at: Timestamp,
    pub ending_before: Option<Timestamp>,
    pub credit_type: CreditType,
    pub uniqueness_key: Option<String>,
    pub created_at: Timestamp,
    pub commits: Vec<CommitV7>,
    pub periods: Vec<super::legacy8::UsagePeriodV8>,
    pub purchases: Vec<PurchaseInvoice>,
    pub spend_threshold: Option<ThresholdConfigV4>,
    pub prepaid_threshold: Option<ThresholdConfigV4>,
    pub workflows: Vec<Workflow>,
    pub edit_keys: Vec<String>,
    pub edits: u64,
}

impl From<ContractV4> for Contract {
    /// Without a lifecycle: its next input takes in what is true then without announcing the
    /// past.
    fn from(old: ContractV4) -> Contract {
        Contract {
            id: old.id,
            customer_id: old.customer_id,
            rate_card_id: old.rate_card_id,
            name: old.name,
            starting_at: old.starting_at,
            ending_before: old.ending_before,
            credit_type: old.credit_type,
            uniqueness_key: old.uniqueness_key,
            created_at: old.created_at,
            commits: old.commits.into_iter().map(Into::into).collect(),
            periods: super::legacy8::periods(old.periods),
            purchases: old.purchases,
            spend_threshold: old.spend_threshold.map(Into::into),
            prepaid_threshold: old.prepaid_threshold.map(Into::into),
            workflows: old.workflows,
            edit_keys: old.edit_keys,
            edits: old.edits,
            lifecycle: None,
            recent_edits: Vec::new(),
            draw_order: Vec::new(),
            caches: ContractCaches::default(),
        }
    }
}

/// A customer as state version 4 stored it (contracts without rails or lifecycle).
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub struct CustomerV4 {
    pub profile: Option<CustomerProfile>,
    pub contracts: Vec<ContractV4>,
    pub workflow_history: Vec<StateChange>,
}

impl From<CustomerV4> for Customer {
    fn from(old: CustomerV4) -> Customer {
        Customer {
            profile: old.profile,
            contracts: old.contracts.into_iter().map(Into::into).collect(),
            workflow_history: old.workflow_history,
            alerts: Vec::new(),
            alerts_as_of: Timestamp::default(),
            customer_commits: Vec::new(),
        }
    }
}

/// A customer as state version 5 stored it (no alert statuses).
#[derive(Deserialize, serde::Serialize)]
pub struct CustomerV5 {
    pub profile: Option<CustomerProfile>,
    pub contracts: Vec<ContractV7>,
    pub workflow_history: Vec<StateChange>,
}

impl From<CustomerV5> for Customer {
    fn from(old: CustomerV5) -> Customer {
        Customer {
            profile: old.profile,
            contracts: old.contracts.into_iter().map(Into::into).collect(),
            workflow_history: old.workflow_history,
            alerts: Vec::new(),
            alerts_as_of: Timestamp::default(),
            customer_commits: Vec::new(),
        }
    }
}

/// A customer as state version 6 stored it (no customer-level commits).
#[derive(Deserialize, serde::Serialize)]
pub struct CustomerV6 {
    pub profile: Option<CustomerProfile>,
    pub contracts: Vec<ContractV7>,
    pub workflow_history: Vec<StateChange>,
    pub alerts: Vec<crate::domain::alerts::AlertStatus>,
    pub alerts_as_of: Timestamp,
}

impl From<CustomerV6> for Customer {
    fn from(old: CustomerV6) -> Customer {
        Customer {
            profile: old.profile,
            contracts: old.contracts.into_iter().map(Into::into).collect(),
            workflow_history: old.workflow_history,
            alerts: old.alerts,
            alerts_as_of: old.alerts_as_of,
            customer_commits: Vec::new(),
        }
    }
}

/// Today's contract in the shape of states 2 to 4, for tests that write an old state. Rails,
/// holds and the lifecycle are left behind.
#[cfg(test)]
impl From<&Contract> for ContractV4 {
    fn from(c: &Contract) -> ContractV4 {
        let threshold = |config: &Option<ThresholdConfig>| {
            config.as_ref().map(|t| ThresholdConfigV4 {
                kind: t.kind,
                commit: t.commit.clone(),
                is_enabled: t.is_enabled,
                gate: t.gate.clone(),
                threshold_amount: t.threshold_amount,
                recharge_to_amount: t.recharge_to_amount,
                discount: t.discount.clone(),
                triggers: t.triggers,
            })
        };
        ContractV4 {
            id: c.id,
            customer_id: c.customer_id,
            rate_card_id: c.rate_card_id,
            name: c.name.clone(),
            starting_at: c.starting_at,
            ending_before: c.ending_before,
            credit_type: c.credit_type.clone(),
            uniqueness_key: c.uniqueness_key.clone(),
            created_at: c.created_at,
            commits: c.commits.iter().map(Into::into).collect(),
            periods: c.periods.iter().map(Into::into).collect(),
            purchases: c.purchases.clone(),
            spend_threshold: threshold(&c.spend_threshold),
            prepaid_threshold: threshold(&c.prepaid_threshold),
            workflows: c.workflows.clone(),
            edit_keys: c.edit_keys.clone(),
            edits: c.edits,
        }
    }
}

/// A segment as states 2 to 7 kept it (no manual ledger entries).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct SegmentV7 {
    pub id: Id,
    pub amount: Money,
    pub starting_at: Timestamp,
    pub ending_before: Timestamp,
    pub drawn: Money,
}

impl From<SegmentV7> for Segment {
    fn from(old: SegmentV7) -> Segment {
        Segment {
            id: old.id,
            amount: old.amount,
            starting_at: old.starting_at,
            ending_before: old.ending_before,
            drawn: old.drawn,
            manual: Money::ZERO,
        }
    }
}

/// A commit as states 2 to 7 kept it (no custom fields, no manual ledger entries).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct CommitV7 {
    pub id: Id,
    pub kind: CommitKind,
    pub product_id: Id,
    pub name: String,
    pub description: Option<String>,
    pub priority: rust_decimal::Decimal,
    pub applicable_product_ids: Vec<Id>,
    pub applicable_product_tags: Vec<String>,
    pub segments: Vec<SegmentV7>,
    pub invoice_schedule: Vec<InvoiceScheduleItem>,
    pub release: Release,
    pub created_by_threshold: Option<WorkflowKind>,
    pub created_at: Timestamp,
    pub deductions: Vec<Deduction>,
    pub archived_at: Option<Timestamp>,
}

impl From<CommitV7> for Commit {
    fn from(old: CommitV7) -> Commit {
        Commit {
            id: old.id,
            kind: old.kind,
            product_id: old.product_id,
            name: old.name,
            description: old.description,
            priority: old.priority,
            applicable_product_ids: old.applicable_product_ids,
            applicable_product_tags: old.applicable_product_tags,
            segments: old.segments.into_iter().map(Into::into).collect(),
            invoice_schedule: old.invoice_schedule,
            release: old.release,
            created_by_threshold: old.created_by_threshold,
            created_at: old.created_at,
            deductions: old.deductions,
            archived_at: old.archived_at,
            custom_fields: Vec::new(),
            manual_entries: Vec::new(),
            credit_type: None,
        }
    }
}

/// A threshold configuration as states 5 to 7 and log versions 6 to 8 kept it (no balance
/// specifiers).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ThresholdConfigV7 {
    pub kind: ThresholdKind,
    pub commit: ThresholdCommit,
    pub is_enabled: bool,
    pub gate: PaymentGateConfig,
    pub threshold_amount: Money,
    pub recharge_to_amount: Option<Money>,
    pub discount: Option<Discount>,
    pub triggers: u64,
    pub limits: Option<RechargeLimits>,
    pub hold: Option<RechargeHold>,
    pub holds: u64,
}

impl From<ThresholdConfigV7> for ThresholdConfig {
    fn from(old: ThresholdConfigV7) -> ThresholdConfig {
        ThresholdConfig {
            kind: old.kind,
            commit: old.commit,
            is_enabled: old.is_enabled,
            gate: old.gate,
            threshold_amount: old.threshold_amount,
            recharge_to_amount: old.recharge_to_amount,
            discount: old.discount,
            triggers: old.triggers,
            limits: old.limits,
            hold: old.hold,
            holds: old.holds,
            balance_specifiers: Vec::new(),
            credit_type: None,
        }
    }
}

/// A contract as states 5 to 7 kept it.
#[derive(Deserialize, serde::Serialize)]
pub struct ContractV7 {
    pub id: Id,
    pub customer_id: Id,
    pub rate_card_id: Id,
    pub name: Option<String>,
    pub starting_at: Timestamp,
    pub ending_before: Option<Timestamp>,
    pub credit_type: CreditType,
    pub uniqueness_key: Option<String>,
    pub created_at: Timestamp,
    pub commits: Vec<CommitV7>,
    pub periods: Vec<super::legacy8::UsagePeriodV8>,
    pub purchases: Vec<PurchaseInvoice>,
    pub spend_threshold: Option<ThresholdConfigV7>,
    pub prepaid_threshold: Option<ThresholdConfigV7>,
    pub workflows: Vec<Workflow>,
    pub edit_keys: Vec<String>,
    pub edits: u64,
    pub lifecycle: Option<super::legacy8::LifecycleV8>,
}

impl From<ContractV7> for Contract {
    fn from(old: ContractV7) -> Contract {
        Contract {
            id: old.id,
            customer_id: old.customer_id,
            rate_card_id: old.rate_card_id,
            name: old.name,
            starting_at: old.starting_at,
            ending_before: old.ending_before,
            credit_type: old.credit_type,
            uniqueness_key: old.uniqueness_key,
            created_at: old.created_at,
            commits: old.commits.into_iter().map(Into::into).collect(),
            periods: super::legacy8::periods(old.periods),
            purchases: old.purchases,
            spend_threshold: old.spend_threshold.map(Into::into),
            prepaid_threshold: old.prepaid_threshold.map(Into::into),
            workflows: old.workflows,
            edit_keys: old.edit_keys,
            edits: old.edits,
            lifecycle: old.lifecycle.map(Into::into),
            recent_edits: Vec::new(),
            draw_order: Vec::new(),
            caches: ContractCaches::default(),
        }
    }
}

/// A customer-level commit as state 7 kept it.
#[derive(Deserialize, serde::Serialize)]
pub struct CustomerCommitV7 {
    pub commit: CommitV7,
    pub credit_type: CreditType,
    pub applicable_contract_ids: Vec<Id>,
    pub invoice_contract_id: Option<Id>,
    pub uniqueness_key: Option<String>,
}

impl From<CustomerCommitV7> for CustomerCommit {
    fn from(old: CustomerCommitV7) -> CustomerCommit {
        CustomerCommit {
            commit: old.commit.into(),
            credit_type: old.credit_type,
            applicable_contract_ids: old.applicable_contract_ids,
            invoice_contract_id: old.invoice_contract_id,
            uniqueness_key: old.uniqueness_key,
        }
    }
}

/// A customer as state version 7 stored it (commits without custom fields or manual entries,
/// prepaid thresholds without balance specifiers).
#[derive(Deserialize, serde::Serialize)]
pub struct CustomerV7 {
    pub profile: Option<CustomerProfile>,
    pub contracts: Vec<ContractV7>,
    pub workflow_history: Vec<StateChange>,
    pub alerts: Vec<crate::domain::alerts::AlertStatus>,
    pub alerts_as_of: Timestamp,
    pub customer_commits: Vec<CustomerCommitV7>,
}

impl From<CustomerV7> for Customer {
    fn from(old: CustomerV7) -> Customer {
        Customer {
            profile: old.profile,
            contracts: old.contracts.into_iter().map(Into::into).collect(),
            workflow_history: old.workflow_history,
            alerts: old.alerts,
            alerts_as_of: old.alerts_as_of,
            customer_commits: old.customer_commits.into_iter().map(Into::into).collect(),
        }
    }
}

/// A commit or credit to create, as log versions 2 to 8 recorded it (no custom fields).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct CommitSpecV8 {
    pub kind: CommitKind,
    pub product_id: Id,
    pub name: Option<String>,
    pub description: Option<String>,
    pub priority: Option<rust_decimal::Decimal>,
    pub applicable_product_ids: Vec<Id>,
    pub applicable_product_tags: Vec<String>,
    pub access_schedule: Vec<(Money, Timestamp, Timestamp)>,
    pub invoice_schedule: Vec<(Timestamp, Money, rust_decimal::Decimal)>,
    pub payment_gate: Option<PaymentGateConfig>,
}

impl From<CommitSpecV8> for CommitSpec {
    fn from(old: CommitSpecV8) -> CommitSpec {
        CommitSpec {
            kind: old.kind,
            product_id: old.product_id,
            name: old.name,
            description: old.description,
            priority: old.priority,
            applicable_product_ids: old.applicable_product_ids,
            applicable_product_tags: old.applicable_product_tags,
            access_schedule: old.access_schedule,
            invoice_schedule: old.invoice_schedule,
            payment_gate: old.payment_gate,
            custom_fields: Vec::new(),
            credit_type: None,
        }
    }
}

fn specs(old: Vec<CommitSpecV8>) -> Vec<CommitSpec> {
    old.into_iter().map(Into::into).collect()
}

/// A contract to create, as log versions 6 to 8 recorded it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ContractSpecV8 {
    pub id: Id,
    pub rate_card_id: Id,
    pub name: Option<String>,
    pub starting_at: Timestamp,
    pub ending_before: Option<Timestamp>,
    pub uniqueness_key: Option<String>,
    pub commits: Vec<CommitSpecV8>,
    pub credits: Vec<CommitSpecV8>,
    pub spend_threshold: Option<ThresholdConfigV7>,
    pub prepaid_threshold: Option<ThresholdConfigV7>,
}

impl From<ContractSpecV8> for ContractSpec {
    fn from(old: ContractSpecV8) -> ContractSpec {
        ContractSpec {
            id: old.id,
            rate_card_id: old.rate_card_id,
            name: old.name,
            starting_at: old.starting_at,
            ending_before: old.ending_before,
            uniqueness_key: old.uniqueness_key,
            commits: specs(old.commits),
            credits: specs(old.credits),
            spend_threshold: old.spend_threshold.map(Into::into),
            prepaid_threshold: old.prepaid_threshold.map(Into::into),
        }
    }
}

/// A threshold update, as log versions 6 to 8 recorded it (no balance specifiers).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ThresholdUpdateV8 {
    pub is_enabled: Option<bool>,
    pub gate: Option<PaymentGateConfig>,
    pub threshold_amount: Option<Money>,
    pub recharge_to_amount: Option<Money>,
    pub discount: Option<Option<Discount>>,
    pub commit_product_id: Option<Id>,
    pub commit_name: Option<Option<String>>,
    pub commit_description: Option<Option<String>>,
    pub commit_priority: Option<Option<rust_decimal::Decimal>>,
    pub commit_applicable_product_ids: Option<Vec<Id>>,
    pub commit_applicable_product_tags: Option<Vec<String>>,
    pub recharge_limits: Option<Option<RechargeLimits>>,
}

impl From<ThresholdUpdateV8> for ThresholdUpdate {
    fn from(old: ThresholdUpdateV8) -> ThresholdUpdate {
        ThresholdUpdate {
            is_enabled: old.is_enabled,
            gate: old.gate,
            threshold_amount: old.threshold_amount,
            recharge_to_amount: old.recharge_to_amount,
            discount: old.discount,
            commit_product_id: old.commit_product_id,
            commit_name: old.commit_name,
            commit_description: old.commit_description,
            commit_priority: old.commit_priority,
            commit_applicable_product_ids: old.commit_applicable_product_ids,
            commit_applicable_product_tags: old.commit_applicable_product_tags,
            recharge_limits: old.recharge_limits,
            balance_specifiers: None,
        }
    }
}

/// A contract edit, as log versions 6 to 8 recorded it (no archives, no custom fields).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ContractEditV8 {
    pub edit_id: Id,
    pub contract_id: Id,
    pub uniqueness_key: Option<String>,
    pub add_commits: Vec<CommitSpecV8>,
    pub add_credits: Vec<CommitSpecV8>,
    pub add_spend_threshold: Option<ThresholdConfigV7>,
    pub update_spend_threshold: Option<ThresholdUpdateV8>,
    pub add_prepaid_threshold: Option<ThresholdConfigV7>,
    pub update_prepaid_threshold: Option<ThresholdUpdateV8>,
    pub update_ending_before: Option<Option<Timestamp>>,
    pub allow_ending_before_finalized_invoice: bool,
}

impl From<ContractEditV8> for ContractEdit {
    fn from(old: ContractEditV8) -> ContractEdit {
        ContractEdit {
            edit_id: old.edit_id,
            contract_id: old.contract_id,
            uniqueness_key: old.uniqueness_key,
            add_commits: specs(old.add_commits),
            add_credits: specs(old.add_credits),
            add_spend_threshold: old.add_spend_threshold.map(Into::into),
            update_spend_threshold: old.update_spend_threshold.map(Into::into),
            add_prepaid_threshold: old.add_prepaid_threshold.map(Into::into),
            update_prepaid_threshold: old.update_prepaid_threshold.map(Into::into),
            update_ending_before: old.update_ending_before,
            allow_ending_before_finalized_invoice: old.allow_ending_before_finalized_invoice,
            archive_commits: Vec::new(),
            archive_credits: Vec::new(),
            update_commits: Vec::new(),
        }
    }
}

/// A customer-level commit or credit to create, as log version 8 recorded it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct CustomerCommitSpecV8 {
    pub id: Id,
    pub commit: CommitSpecV8,
    pub applicable_contract_ids: Vec<Id>,
    pub invoice_contract_id: Option<Id>,
    pub uniqueness_key: Option<String>,
}

impl From<CustomerCommitSpecV8> for CustomerCommitSpec {
    fn from(old: CustomerCommitSpecV8) -> CustomerCommitSpec {
        CustomerCommitSpec {
            id: old.id,
            commit: old.commit.into(),
            applicable_contract_ids: old.applicable_contract_ids,
            invoice_contract_id: old.invoice_contract_id,
            uniqueness_key: old.uniqueness_key,
        }
    }
}

/// Today's commit in the shape of states 2 to 7, for tests that write an old state (custom
/// fields and manual entries are left behind).
#[cfg(test)]
impl From<&Commit> for CommitV7 {
    fn from(c: &Commit) -> CommitV7 {
        CommitV7 {
            id: c.id,
            kind: c.kind,
            product_id: c.product_id,
            name: c.name.clone(),
            description: c.description.clone(),
            priority: c.priority,
            applicable_product_ids: c.applicable_product_ids.clone(),
            applicable_product_tags: c.applicable_product_tags.clone(),
            segments: c
                .segments
                .iter()
                .map(|s| SegmentV7 {
                    id: s.id,
                    amount: s.amount,
                    starting_at: s.starting_at,
                    ending_before: s.ending_before,
                    drawn: s.drawn,
                })
                .collect(),
            invoice_schedule: c.invoice_schedule.clone(),
            release: c.release,
            created_by_threshold: c.created_by_threshold,
            created_at: c.created_at,
            deductions: c.deductions.clone(),
            archived_at: c.archived_at,
        }
    }
}

/// Today's contract in the shape of states 5 to 7, for tests that write an old state.
#[cfg(test)]
impl From<&Contract> for ContractV7 {
    fn from(c: &Contract) -> ContractV7 {
        let threshold = |config: &Option<ThresholdConfig>| {
            config.as_ref().map(|t| ThresholdConfigV7 {
                kind: t.kind,
                commit: t.commit.clone(),
                is_enabled: t.is_enabled,
                gate: t.gate.clone(),
                threshold_amount: t.threshold_amount,
                recharge_to_amount: t.recharge_to_amount,
                discount: t.discount.clone(),
                triggers: t.triggers,
                limits: t.limits.clone(),
                hold: t.hold,
                holds: t.holds,
            })
        };
        ContractV7 {
            id: c.id,
            customer_id: c.customer_id,
            rate_card_id: c.rate_card_id,
            name: c.name.clone(),
            starting_at: c.starting_at,
            ending_before: c.ending_before,
            credit_type: c.credit_type.clone(),
            uniqueness_key: c.uniqueness_key.clone(),
            created_at: c.created_at,
            commits: c.commits.iter().map(Into::into).collect(),
            periods: c.periods.iter().map(Into::into).collect(),
            purchases: c.purchases.clone(),
            spend_threshold: threshold(&c.spend_threshold),
            prepaid_threshold: threshold(&c.prepaid_threshold),
            workflows: c.workflows.clone(),
            edit_keys: c.edit_keys.clone(),
            edits: c.edits,
            lifecycle: c.lifecycle.as_ref().map(Into::into),
        }
    }
}

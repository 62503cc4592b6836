//! The shapes of state version 8 and log version 9, frozen when custom pricing units came
//! (state 9, log 10): commits, usage lines and prepaid thresholds gained their credit type.
//! Read and upgraded; nothing here is written any more (see [`super::legacy`] for older ones).

use serde::{Deserialize, Serialize};

use super::customer_level::{CustomerCommit, CustomerCommitSpec};
use super::{CommitSpec, CommitUpdate, ContractEdit, ContractSpec, Customer, ThresholdUpdate};
use crate::domain::contract::{
    Aggregate, BalanceSpecifiers, Commit, CommitKind, Contract, ContractCaches, CustomFields,
    Deduction, Discount, InvoiceScheduleItem, InvoiceStatus, Lifecycle, LineDraw, ManualEntry,
    PurchaseInvoice, RechargeHold, RechargeLimits, Release, Segment, ThresholdCommit,
    ThresholdConfig, ThresholdKind, UsageLine, UsagePeriod,
};
use crate::domain::gate::{PaymentGateConfig, StateChange, Workflow, WorkflowKind};
use crate::domain::ids::{Id, Timestamp};
use crate::domain::money::{CreditType, Money};

/// A commit as state 8 kept it (fiat only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitV8 {
    pub id: Id,
    pub kind: CommitKind,
    pub product_id: Id,
    pub name: String,
    pub description: Option<String>,
    pub priority: rust_decimal::Decimal,
    pub applicable_product_ids: Vec<Id>,
    pub applicable_product_tags: Vec<String>,
    pub segments: Vec<Segment>,
    pub invoice_schedule: Vec<InvoiceScheduleItem>,
    pub release: Release,
    pub created_by_threshold: Option<WorkflowKind>,
    pub created_at: Timestamp,
    pub deductions: Vec<Deduction>,
    pub archived_at: Option<Timestamp>,
    pub custom_fields: CustomFields,
    pub manual_entries: Vec<ManualEntry>,
}

impl From<CommitV8> for Commit {
    fn from(old: CommitV8) -> Commit {
        Commit {
            id: old.id,
            kind: old.kind,
            product_id: old.product_id,
            name: old.name,
            description: old.description,
            priority: old.priority,
            applicable_product_ids: old.applicable_product_ids,
            applicable_product_tags: old.applicable_product_tags,
            segments: old.segments,
            invoice_schedule: old.invoice_schedule,
            release: old.release,
            created_by_threshold: old.created_by_threshold,
            created_at: old.created_at,
            deductions: old.deductions,
            archived_at: old.archived_at,
            custom_fields: old.custom_fields,
            manual_entries: old.manual_entries,
            credit_type: None,
        }
    }
}

/// What the lifecycle notices had announced, as states 5 to 8 kept it (no re-opened segments).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleV8 {
    pub commits_announced: u64,
    pub open_segments: Vec<Id>,
    pub ended: Option<Timestamp>,
    pub as_of: Timestamp,
}

impl From<LifecycleV8> for Lifecycle {
    fn from(old: LifecycleV8) -> Lifecycle {
        Lifecycle {
            commits_announced: old.commits_announced,
            open_segments: old.open_segments,
            ended: old.ended,
            as_of: old.as_of,
            reopened: Vec::new(),
        }
    }
}

/// Today's lifecycle in the shape of states 5 to 8, for tests that write an old state.
#[cfg(test)]
impl From<&Lifecycle> for LifecycleV8 {
    fn from(l: &Lifecycle) -> LifecycleV8 {
        LifecycleV8 {
            commits_announced: l.commits_announced,
            open_segments: l.open_segments.clone(),
            ended: l.ended,
            as_of: l.as_of,
        }
    }
}

/// A usage line as states 2 to 8 kept it (fiat only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageLineV8 {
    pub product_id: Id,
    pub aggregate: Aggregate,
    pub charged: Money,
    pub covered: Money,
    pub draws: Vec<LineDraw>,
}

/// A billing period as states 2 to 8 kept it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsagePeriodV8 {
    pub invoice_id: Id,
    pub starting_at: Timestamp,
    pub ending_before: Timestamp,
    pub status: InvoiceStatus,
    pub lines: Vec<UsageLineV8>,
}

impl From<UsagePeriodV8> for UsagePeriod {
    fn from(old: UsagePeriodV8) -> UsagePeriod {
        UsagePeriod {
            invoice_id: old.invoice_id,
            starting_at: old.starting_at,
            ending_before: old.ending_before,
            status: old.status,
            lines: old
                .lines
                .into_iter()
                .map(|l| UsageLine {
                    product_id: l.product_id,
                    aggregate: l.aggregate,
                    charged: l.charged,
                    covered: l.covered,
                    draws: l.draws,
                    covered_fiat: Money::ZERO,
                    conversion: None,
                })
                .collect(),
        }
    }
}

/// Today's period in the shape of states 2 to 8, for tests that write an old state.
#[cfg(test)]
impl From<&UsagePeriod> for UsagePeriodV8 {
    fn from(p: &UsagePeriod) -> UsagePeriodV8 {
        UsagePeriodV8 {
            invoice_id: p.invoice_id,
            starting_at: p.starting_at,
            ending_before: p.ending_before,
            status: p.status,
            lines: p
                .lines
                .iter()
                .map(|l| UsageLineV8 {
                    product_id: l.product_id,
                    aggregate: l.aggregate.clone(),
                    charged: l.charged,
                    covered: l.covered,
                    draws: l.draws.clone(),
                })
                .collect(),
        }
    }
}

/// Every period of an older state, upgraded.
pub fn periods(old: Vec<UsagePeriodV8>) -> Vec<UsagePeriod> {
    old.into_iter().map(Into::into).collect()
}

/// A threshold configuration as state 8 and log version 9 kept it (fiat only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThresholdConfigV8 {
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
    pub balance_specifiers: BalanceSpecifiers,
}

impl From<ThresholdConfigV8> for ThresholdConfig {
    fn from(old: ThresholdConfigV8) -> ThresholdConfig {
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
            balance_specifiers: old.balance_specifiers,
            credit_type: None,
        }
    }
}

/// A contract as state 8 kept it.
#[derive(Deserialize, Serialize)]
pub struct ContractV8 {
    pub id: Id,
    pub customer_id: Id,
    pub rate_card_id: Id,
    pub name: Option<String>,
    pub starting_at: Timestamp,
    pub ending_before: Option<Timestamp>,
    pub credit_type: CreditType,
    pub uniqueness_key: Option<String>,
    pub created_at: Timestamp,
    pub commits: Vec<CommitV8>,
    pub periods: Vec<UsagePeriodV8>,
    pub purchases: Vec<PurchaseInvoice>,
    pub spend_threshold: Option<ThresholdConfigV8>,
    pub prepaid_threshold: Option<ThresholdConfigV8>,
    pub workflows: Vec<Workflow>,
    pub edit_keys: Vec<String>,
    pub edits: u64,
    pub lifecycle: Option<LifecycleV8>,
    pub recent_edits: Vec<Id>,
}

impl From<ContractV8> for Contract {
    fn from(old: ContractV8) -> Contract {
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
            periods: periods(old.periods),
            purchases: old.purchases,
            spend_threshold: old.spend_threshold.map(Into::into),
            prepaid_threshold: old.prepaid_threshold.map(Into::into),
            workflows: old.workflows,
            edit_keys: old.edit_keys,
            edits: old.edits,
            lifecycle: old.lifecycle.map(Into::into),
            recent_edits: old.recent_edits,
            draw_order: Vec::new(),
            caches: ContractCaches::default(),
        }
    }
}

/// A customer-level commit as state 8 kept it.
#[derive(Deserialize, Serialize)]
pub struct CustomerCommitV8 {
    pub commit: CommitV8,
    pub credit_type: CreditType,
    pub applicable_contract_ids: Vec<Id>,
    pub invoice_contract_id: Option<Id>,
    pub uniqueness_key: Option<String>,
}

/// A customer as state version 8 stored it.
#[derive(Deserialize, Serialize)]
pub struct CustomerV8 {
    pub profile: Option<super::CustomerProfile>,
    pub contracts: Vec<ContractV8>,
    pub workflow_history: Vec<StateChange>,
    pub alerts: Vec<crate::domain::alerts::AlertStatus>,
    pub alerts_as_of: Timestamp,
    pub customer_commits: Vec<CustomerCommitV8>,
}

impl From<CustomerV8> for Customer {
    fn from(old: CustomerV8) -> Customer {
        Customer {
            profile: old.profile,
            contracts: old.contracts.into_iter().map(Into::into).collect(),
            workflow_history: old.workflow_history,
            alerts: old.alerts,
            alerts_as_of: old.alerts_as_of,
            customer_commits: old
                .customer_commits
                .into_iter()
                .map(|c| CustomerCommit {
                    commit: c.commit.into(),
                    credit_type: c.credit_type,
                    applicable_contract_ids: c.applicable_contract_ids,
                    invoice_contract_id: c.invoice_contract_id,
                    uniqueness_key: c.uniqueness_key,
                })
                .collect(),
        }
    }
}

/// A commit or credit to create, as log version 9 recorded it (fiat only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitSpecV9 {
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
    pub custom_fields: CustomFields,
}

impl From<CommitSpecV9> for CommitSpec {
    fn from(old: CommitSpecV9) -> CommitSpec {
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
            custom_fields: old.custom_fields,
            credit_type: None,
        }
    }
}

fn specs(old: Vec<CommitSpecV9>) -> Vec<CommitSpec> {
    old.into_iter().map(Into::into).collect()
}

/// A contract to create, as log version 9 recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractSpecV9 {
    pub id: Id,
    pub rate_card_id: Id,
    pub name: Option<String>,
    pub starting_at: Timestamp,
    pub ending_before: Option<Timestamp>,
    pub uniqueness_key: Option<String>,
    pub commits: Vec<CommitSpecV9>,
    pub credits: Vec<CommitSpecV9>,
    pub spend_threshold: Option<ThresholdConfigV8>,
    pub prepaid_threshold: Option<ThresholdConfigV8>,
}

impl From<ContractSpecV9> for ContractSpec {
    fn from(old: ContractSpecV9) -> ContractSpec {
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

/// A contract edit, as log version 9 recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractEditV9 {
    pub edit_id: Id,
    pub contract_id: Id,
    pub uniqueness_key: Option<String>,
    pub add_commits: Vec<CommitSpecV9>,
    pub add_credits: Vec<CommitSpecV9>,
    pub add_spend_threshold: Option<ThresholdConfigV8>,
    pub update_spend_threshold: Option<ThresholdUpdate>,
    pub add_prepaid_threshold: Option<ThresholdConfigV8>,
    pub update_prepaid_threshold: Option<ThresholdUpdate>,
    pub update_ending_before: Option<Option<Timestamp>>,
    pub allow_ending_before_finalized_invoice: bool,
    pub archive_commits: Vec<Id>,
    pub archive_credits: Vec<Id>,
    pub update_commits: Vec<CommitUpdate>,
}

impl From<ContractEditV9> for ContractEdit {
    fn from(old: ContractEditV9) -> ContractEdit {
        ContractEdit {
            edit_id: old.edit_id,
            contract_id: old.contract_id,
            uniqueness_key: old.uniqueness_key,
            add_commits: specs(old.add_commits),
            add_credits: specs(old.add_credits),
            add_spend_threshold: old.add_spend_threshold.map(Into::into),
            update_spend_threshold: old.update_spend_threshold,
            add_prepaid_threshold: old.add_prepaid_threshold.map(Into::into),
            update_prepaid_threshold: old.update_prepaid_threshold,
            update_ending_before: old.update_ending_before,
            allow_ending_before_finalized_invoice: old.allow_ending_before_finalized_invoice,
            archive_commits: old.archive_commits,
            archive_credits: old.archive_credits,
            update_commits: old.update_commits,
        }
    }
}

/// A customer-level commit or credit to create, as log version 9 recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerCommitSpecV9 {
    pub id: Id,
    pub commit: CommitSpecV9,
    pub applicable_contract_ids: Vec<Id>,
    pub invoice_contract_id: Option<Id>,
    pub uniqueness_key: Option<String>,
}

impl From<CustomerCommitSpecV9> for CustomerCommitSpec {
    fn from(old: CustomerCommitSpecV9) -> CustomerCommitSpec {
        CustomerCommitSpec {
            id: old.id,
            commit: old.commit.into(),
            applicable_contract_ids: old.applicable_contract_ids,
            invoice_contract_id: old.invoice_contract_id,
            uniqueness_key: old.uniqueness_key,
        }
    }
}

/// Today's commit in the shape of state 8, for tests that write an old state.
#[cfg(test)]
impl From<&Commit> for CommitV8 {
    fn from(c: &Commit) -> CommitV8 {
        CommitV8 {
            id: c.id,
            kind: c.kind,
            product_id: c.product_id,
            name: c.name.clone(),
            description: c.description.clone(),
            priority: c.priority,
            applicable_product_ids: c.applicable_product_ids.clone(),
            applicable_product_tags: c.applicable_product_tags.clone(),
            segments: c.segments.clone(),
            invoice_schedule: c.invoice_schedule.clone(),
            release: c.release,
            created_by_threshold: c.created_by_threshold,
            created_at: c.created_at,
            deductions: c.deductions.clone(),
            archived_at: c.archived_at,
            custom_fields: c.custom_fields.clone(),
            manual_entries: c.manual_entries.clone(),
        }
    }
}

/// Today's contract in the shape of state 8, for tests that write an old state.
#[cfg(test)]
impl From<&Contract> for ContractV8 {
    fn from(c: &Contract) -> ContractV8 {
        let threshold = |config: &Option<ThresholdConfig>| {
            config.as_ref().map(|t| ThresholdConfigV8 {
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
                balance_specifiers: t.balance_specifiers.clone(),
            })
        };
        ContractV8 {
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
            recent_edits: c.recent_edits.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Input;
    use crate::domain::catalog::CatalogChange;

    fn index<T: serde::Serialize>(value: &T) -> u8 {
        let bytes = bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap();
        bytes[0]
    }

    /// Logged kinds keep their positions (bincode writes a variant by its index): log version
    /// 9's contract inputs are read as the V9 kinds, the new kinds come after every old one.
    #[test]
    fn input_and_catalog_kinds_keep_their_logged_positions() {
        let spec = || {
            Box::new(super::ContractSpecV9 {
                id: crate::domain::Id::from_u128(1),
                rate_card_id: crate::domain::Id::from_u128(2),
                name: None,
                starting_at: crate::domain::Timestamp(0),
                ending_before: None,
                uniqueness_key: None,
                commits: vec![],
                credits: vec![],
                spend_threshold: None,
                prepaid_threshold: None,
            })
        };
        assert_eq!(index(&Input::CreateContractV9(spec())), 17);
        let edit = super::ContractEditV9 {
            edit_id: crate::domain::Id::from_u128(3),
            contract_id: crate::domain::Id::from_u128(1),
            uniqueness_key: None,
            add_commits: vec![],
            add_credits: vec![],
            add_spend_threshold: None,
            update_spend_threshold: None,
            add_prepaid_threshold: None,
            update_prepaid_threshold: None,
            update_ending_before: None,
            allow_ending_before_finalized_invoice: true,
            archive_commits: vec![],
            archive_credits: vec![],
            update_commits: vec![],
        };
        assert_eq!(index(&Input::EditContractV9(Box::new(edit))), 18);
        let contract = crate::domain::fixtures::contract(crate::domain::fixtures::CONTRACT);
        assert_eq!(index(&Input::CreateContract(Box::new(contract))), 21);
        assert_eq!(index(&Input::EditContract(Box::default())), 22);
        let card = crate::domain::fixtures::catalog_changes()
            .into_iter()
            .find_map(|c| match c {
                CatalogChange::CreateRateCard(card) => Some(card),
                _ => None,
            })
            .unwrap();
        let old = super::super::super::catalog::RateCardV1 {
            id: card.id,
            name: card.name.clone(),
            description: None,
            fiat_credit_type: card.fiat_credit_type.clone(),
            aliases: vec![],
            created_at: card.created_at,
            rates: Default::default(),
        };
        assert_eq!(index(&CatalogChange::CreateRateCardV1(old)), 4);
        assert_eq!(index(&CatalogChange::CreateRateCard(card)), 10);
        let credits = crate::domain::fixtures::credits_catalog_changes().remove(0);
        assert_eq!(index(&credits), 9);
    }
}

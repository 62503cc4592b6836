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
use super::{Customer, CustomerProfile};
use crate::domain::contract::{
    Commit, Contract, ContractCaches, Discount, PurchaseInvoice, ThresholdCommit, ThresholdConfig,
    ThresholdKind, UsagePeriod,
};
use crate::domain::gate::{PaymentGateConfig, StateChange, Workflow};
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
    pub commits: Vec<CommitSpec>,
    pub credits: Vec<CommitSpec>,
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
            commits: old.commits,
            credits: old.credits,
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
        }
    }
}

/// A contract edit, as log versions 2 to 5 recorded it (no end date, no rails).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ContractEditV1 {
    pub edit_id: Id,
    pub contract_id: Id,
    pub uniqueness_key: Option<String>,
    pub add_commits: Vec<CommitSpec>,
    pub add_credits: Vec<CommitSpec>,
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
            add_commits: old.add_commits,
            add_credits: old.add_credits,
            add_spend_threshold: old.add_spend_threshold.map(Into::into),
            update_spend_threshold: old.update_spend_threshold.map(Into::into),
            add_prepaid_threshold: old.add_prepaid_threshold.map(Into::into),
            update_prepaid_threshold: old.update_prepaid_threshold.map(Into::into),
            update_ending_before: None,
            allow_ending_before_finalized_invoice: true,
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
    pub commits: Vec<Commit>,
    pub periods: Vec<UsagePeriod>,
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
            commits: old.commits,
            periods: old.periods,
            purchases: old.purchases,
            spend_threshold: old.spend_threshold.map(Into::into),
            prepaid_threshold: old.prepaid_threshold.map(Into::into),
            workflows: old.workflows,
            edit_keys: old.edit_keys,
            edits: old.edits,
            lifecycle: None,
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
    pub contracts: Vec<Contract>,
    pub workflow_history: Vec<StateChange>,
}

impl From<CustomerV5> for Customer {
    fn from(old: CustomerV5) -> Customer {
        Customer {
            profile: old.profile,
            contracts: old.contracts,
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
    pub contracts: Vec<Contract>,
    pub workflow_history: Vec<StateChange>,
    pub alerts: Vec<crate::domain::alerts::AlertStatus>,
    pub alerts_as_of: Timestamp,
}

impl From<CustomerV6> for Customer {
    fn from(old: CustomerV6) -> Customer {
        Customer {
            profile: old.profile,
            contracts: old.contracts,
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
            commits: c.commits.clone(),
            periods: c.periods.clone(),
            purchases: c.purchases.clone(),
            spend_threshold: threshold(&c.spend_threshold),
            prepaid_threshold: threshold(&c.prepaid_threshold),
            workflows: c.workflows.clone(),
            edit_keys: c.edit_keys.clone(),
            edits: c.edits,
        }
    }
}

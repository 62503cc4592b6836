//! Every reason the core refuses an input, with a stable snake_case code.
//!
//! A rejected input changes nothing. The HTTP layer maps each variant to a status code in one
//! exhaustive match (`src/http/error.rs`); codes are part of the API and never renamed.

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum Rejection {
    /// An arithmetic result left Decimal's range (about 7.9e28).
    #[error("amount overflow")]
    AmountOverflow,
    /// A number could not be read exactly (not a number, or more than 28 significant digits).
    #[error("amounts must be exact decimals with at most 28 significant digits")]
    InvalidAmount,
    /// The credit type cannot be used here (a custom pricing unit where money must be paid).
    #[error("unsupported credit type")]
    UnsupportedCreditType,
    /// A required field is missing or empty.
    #[error("{0} is required")]
    MissingField(&'static str),
    /// A field has a value the engine refuses; the text names the field and why.
    #[error("{0}")]
    InvalidField(String),
    /// The request asks for a feature Tollgate does not implement; the text names it.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The customer id is unknown.
    #[error("customer not found")]
    CustomerNotFound,
    /// The contract id is unknown for this customer.
    #[error("contract not found")]
    ContractNotFound,
    /// A referenced product does not exist.
    #[error("product {0} not found")]
    ProductNotFound(String),
    /// A referenced rate card does not exist.
    #[error("rate card {0} not found")]
    RateCardNotFound(String),
    /// A referenced billable metric does not exist.
    #[error("billable metric {0} not found")]
    BillableMetricNotFound(String),
    /// A product of the wrong type was referenced (a USAGE product where a FIXED one is needed).
    #[error("{0}")]
    WrongProductType(String),
    /// The referenced alert does not exist (or is not in force for this customer).
    #[error("alert not found")]
    AlertNotFound,
    /// The referenced commit does not exist on this contract.
    #[error("commit not found")]
    CommitNotFound,
    /// The referenced invoice does not exist.
    #[error("invoice not found")]
    InvoiceNotFound,
    /// The invoice cannot be voided in its current state (already void, or gated and in flight).
    #[error("invoice cannot be voided: {0}")]
    InvoiceNotVoidable(&'static str),
    /// The workflow id is unknown.
    #[error("workflow not found")]
    WorkflowNotFound,
    /// The workflow already reached RELEASED or FAILED; its outcome cannot change.
    #[error("workflow already ended")]
    WorkflowAlreadyEnded,
    /// The outcome does not fit the workflow's gate (an external outcome for a Stripe workflow).
    #[error("workflow is not awaiting this kind of outcome")]
    WorkflowGateMismatch,
    /// The contract already has a threshold configuration of this kind (use an update).
    #[error("contract already has a {0} threshold configuration")]
    ThresholdConfigExists(&'static str),
    /// An update names a threshold configuration the contract does not have.
    #[error("contract has no {0} threshold configuration")]
    ThresholdConfigMissing(&'static str),
    /// `threshold_amount` is below the configured minimum.
    #[error("threshold_amount must be at least {0}")]
    ThresholdTooLow(String),
    /// `recharge_to_amount` is not far enough above `threshold_amount`.
    #[error("recharge_to_amount must be at least threshold_amount + {0}")]
    RechargeGapTooSmall(String),
    /// A uniqueness key was used before.
    #[error("This uniqueness key has already been used.")]
    UniquenessKeyReused,
    /// An ingest alias already belongs to another customer.
    #[error("ingest alias {0} is already in use")]
    AliasInUse(String),
    /// The customer already exists (same id).
    #[error("already exists")]
    AlreadyExists,
    /// A STRIPE gate needs the customer to have a Stripe billing configuration.
    #[error(
        "payment_gate_type STRIPE requires a Stripe billing provider configuration on the customer"
    )]
    StripeNotConfigured,
    /// A quarantine decision names an input that is not quarantined (any more): it was
    /// re-applied or discarded already, or replay after an upgrade applied it.
    #[error("this input is not quarantined: it was re-applied or discarded already")]
    NotQuarantined,
    /// A quarantined request whose caller was told it failed (500) cannot be re-applied: the
    /// caller may have sent it again since.
    #[error(
        "this quarantined request was answered 500 to its caller, who may have sent it again; it can only be discarded"
    )]
    NotReappliable,
    /// A quarantined input still fails when re-applied; it stays quarantined.
    #[error("re-applying failed again; the input stays quarantined: {0}")]
    StillFailing(String),
}

impl Rejection {
    /// The stable machine-readable code of this rejection.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::AmountOverflow => "amount_overflow",
            Rejection::InvalidAmount => "invalid_amount",
            Rejection::UnsupportedCreditType => "unsupported_credit_type",
            Rejection::MissingField(_) => "missing_field",
            Rejection::InvalidField(_) => "invalid_field",
            Rejection::Unsupported(_) => "unsupported",
            Rejection::CustomerNotFound => "customer_not_found",
            Rejection::ContractNotFound => "contract_not_found",
            Rejection::ProductNotFound(_) => "product_not_found",
            Rejection::RateCardNotFound(_) => "rate_card_not_found",
            Rejection::BillableMetricNotFound(_) => "billable_metric_not_found",
            Rejection::WrongProductType(_) => "wrong_product_type",
            Rejection::AlertNotFound => "alert_not_found",
            Rejection::CommitNotFound => "commit_not_found",
            Rejection::InvoiceNotFound => "invoice_not_found",
            Rejection::InvoiceNotVoidable(_) => "invoice_not_voidable",
            Rejection::WorkflowNotFound => "workflow_not_found",
            Rejection::WorkflowAlreadyEnded => "workflow_already_ended",
            Rejection::WorkflowGateMismatch => "workflow_gate_mismatch",
            Rejection::ThresholdConfigExists(_) => "threshold_config_exists",
            Rejection::ThresholdConfigMissing(_) => "threshold_config_missing",
            Rejection::ThresholdTooLow(_) => "threshold_too_low",
            Rejection::RechargeGapTooSmall(_) => "recharge_gap_too_small",
            Rejection::UniquenessKeyReused => "uniqueness_key_reused",
            Rejection::AliasInUse(_) => "alias_in_use",
            Rejection::AlreadyExists => "already_exists",
            Rejection::StripeNotConfigured => "stripe_not_configured",
            Rejection::NotQuarantined => "not_quarantined",
            Rejection::NotReappliable => "not_reappliable",
            Rejection::StillFailing(_) => "still_failing",
        }
    }

    pub(crate) fn invalid(field: &str, why: &str) -> Rejection {
        Rejection::InvalidField(format!("{field}: {why}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_snake_case() {
        let all = [
            Rejection::AmountOverflow,
            Rejection::InvalidAmount,
            Rejection::UnsupportedCreditType,
            Rejection::MissingField("x"),
            Rejection::InvalidField("x".into()),
            Rejection::Unsupported("x".into()),
            Rejection::CustomerNotFound,
            Rejection::ContractNotFound,
            Rejection::ProductNotFound("x".into()),
            Rejection::RateCardNotFound("x".into()),
            Rejection::BillableMetricNotFound("x".into()),
            Rejection::WrongProductType("x".into()),
            Rejection::CommitNotFound,
            Rejection::InvoiceNotFound,
            Rejection::InvoiceNotVoidable("x"),
            Rejection::WorkflowNotFound,
            Rejection::WorkflowAlreadyEnded,
            Rejection::WorkflowGateMismatch,
            Rejection::ThresholdConfigExists("x"),
            Rejection::ThresholdConfigMissing("x"),
            Rejection::ThresholdTooLow("x".into()),
            Rejection::RechargeGapTooSmall("x".into()),
            Rejection::UniquenessKeyReused,
            Rejection::AliasInUse("x".into()),
            Rejection::AlreadyExists,
            Rejection::StripeNotConfigured,
            Rejection::NotQuarantined,
            Rejection::NotReappliable,
            Rejection::StillFailing("x".into()),
        ];
        let mut codes: Vec<&str> = all.iter().map(Rejection::code).collect();
        assert!(
            codes
                .iter()
                .all(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'))
        );
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}

//! The payment gate: how a charge is collected before a commit is released, and the workflow
//! that tracks one charge from trigger to RELEASED or FAILED.
//!
//! ```text
//! INITIATED -> (NONE) RELEASED
//!           -> (EXTERNAL) AWAITING_EXTERNAL -> RELEASED | FAILED
//!           -> (STRIPE) CHARGING [-> ACTION_REQUIRED] -> RELEASED | FAILED
//! ```
//! The transitions are checked here; what a transition does to commits, invoices and threshold
//! configurations is done by the contract (`customer/`), which owns them.

use serde::{Deserialize, Serialize};

use super::ids::{Id, Timestamp};
use super::money::Money;
use super::rejection::Rejection;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GateType {
    /// Release at once; no payment is collected by Tollgate.
    None,
    /// The operator collects the money and reports the outcome to the release endpoint.
    External,
    /// Tollgate charges through Stripe.
    Stripe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaxType {
    None,
    Stripe,
    Anrok,
    Precalculated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StripePaymentType {
    Invoice,
    PaymentIntent,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeConfig {
    pub payment_type: StripePaymentType,
    pub invoice_metadata: Vec<(String, String)>,
    pub on_session_payment: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentGateConfig {
    pub gate_type: GateType,
    pub tax_type: TaxType,
    pub stripe: Option<StripeConfig>,
    /// PRECALCULATED tax added to the purchase invoice.
    pub precalculated_tax: Option<(Money, Option<String>)>,
}

impl PaymentGateConfig {
    pub fn none() -> PaymentGateConfig {
        PaymentGateConfig {
            gate_type: GateType::None,
            tax_type: TaxType::None,
            stripe: None,
            precalculated_tax: None,
        }
    }

    /// Checks that the configuration is one Tollgate can carry out.
    ///
    /// # Errors
    /// [`Rejection::Unsupported`] for tax types that need an external tax engine, and
    /// [`Rejection::InvalidField`] for inconsistent combinations.
    pub fn validate(&self, field: &str) -> Result<(), Rejection> {
        match self.tax_type {
            TaxType::None => {}
            TaxType::Precalculated => match &self.precalculated_tax {
                Some((amount, _)) => super::bounds::check_amount(
                    &format!("{field}.precalculated_tax_config.tax_amount"),
                    *amount,
                )?,
                None => {
                    return Err(Rejection::invalid(
                        &format!("{field}.precalculated_tax_config"),
                        "is required when tax_type is PRECALCULATED",
                    ));
                }
            },
            TaxType::Stripe | TaxType::Anrok => {
                return Err(Rejection::Unsupported(format!(
                    "{field}.tax_type {:?}: use NONE or PRECALCULATED",
                    self.tax_type
                )));
            }
        }
        if self.stripe.is_some() && self.gate_type != GateType::Stripe {
            return Err(Rejection::invalid(
                &format!("{field}.stripe_config"),
                "is only allowed with payment_gate_type STRIPE",
            ));
        }
        Ok(())
    }

    /// The tax added to a purchase of `amount` under this configuration.
    pub fn tax(&self) -> Money {
        match (&self.tax_type, &self.precalculated_tax) {
            (TaxType::Precalculated, Some((amount, _))) => *amount,
            _ => Money::ZERO,
        }
    }
}

/// Which feature started a workflow; also Metronome's `workflow_type` webhook field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkflowKind {
    Spend,
    PrepaidBalance,
    ManualCommit,
}

impl WorkflowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowKind::Spend => "spend",
            WorkflowKind::PrepaidBalance => "prepaid_balance",
            WorkflowKind::ManualCommit => "manual_commit",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkflowState {
    Initiated,
    AwaitingExternal,
    Charging,
    ActionRequired,
    Released,
    Failed,
}

impl WorkflowState {
    pub fn is_terminal(self) -> bool {
        matches!(self, WorkflowState::Released | WorkflowState::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowState::Initiated => "INITIATED",
            WorkflowState::AwaitingExternal => "AWAITING_EXTERNAL",
            WorkflowState::Charging => "CHARGING",
            WorkflowState::ActionRequired => "ACTION_REQUIRED",
            WorkflowState::Released => "RELEASED",
            WorkflowState::Failed => "FAILED",
        }
    }
}

/// Who reports a payment outcome; an outcome must come from the gate the workflow uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutcomeSource {
    /// The operator, through `POST /v1/contracts/commits/threshold-billing/release`.
    External,
    /// Tollgate's Stripe provider (synchronous answer or Stripe webhook).
    Stripe,
}

/// Stripe's description of a failed charge, passed through to the `payment_status` webhook.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderError {
    pub error_type: Option<String>,
    pub code: Option<String>,
    pub decline_code: Option<String>,
    pub message: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentResult {
    Paid,
    Failed {
        error: Option<ProviderError>,
    },
    /// The customer must act (3-D Secure). The workflow ends FAILED if it still waits
    /// `timeout_ms` after it first entered ACTION_REQUIRED: the limit travels with the logged
    /// input, so replay never reads it from the (possibly changed) config.
    ActionRequired {
        error_message: Option<String>,
        timeout_ms: i64,
    },
    /// The provider holds `object_id` (a PaymentIntent `pi_...` or an invoice `in_...`) for the
    /// workflow and has not decided yet (`processing`, an invoice being paid): recorded, and the
    /// workflow stays in flight.
    Pending {
        object_id: String,
    },
    /// Money that arrived for a FAILED workflow went back: the provider's refund `refund_id`.
    Refunded {
        refund_id: String,
    },
}

/// A payment outcome: an input to the customer's log like any other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentOutcome {
    pub workflow_id: Id,
    pub source: OutcomeSource,
    pub result: PaymentResult,
    /// Stripe's PaymentIntent (or invoice) id when the provider is Stripe.
    pub payment_intent_id: Option<String>,
}

/// What the log says about the provider's side of a STRIPE workflow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRecord {
    /// The Stripe customer charged (kept so follow-ups need nothing but the workflow).
    pub stripe_customer_id: Option<String>,
    /// The PaymentIntent or invoice created for the workflow, once known.
    pub object_id: Option<String>,
    /// When an ACTION_REQUIRED workflow ends FAILED (set when it first enters the state).
    pub action_deadline: Option<Timestamp>,
    pub refund: Option<RefundRecord>,
}

/// A refund of money that arrived after its workflow ended FAILED.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefundRecord {
    /// The payment actor was asked to refund.
    Requested,
    Done {
        refund_id: String,
    },
}

/// One change of a workflow's state: the history an operator reads (SPEC 3.1). Kept by the
/// customer ([`crate::domain::customer::Customer::workflow_history`]), in the order the changes
/// happened; `reason` says why a workflow failed (the provider's message, or the operator's
/// reason for a cancel).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    pub workflow_id: Id,
    pub state: WorkflowState,
    pub at: Timestamp,
    pub reason: Option<String>,
}

/// One charge, from trigger to release or failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workflow {
    pub id: Id,
    pub kind: WorkflowKind,
    pub contract_id: Id,
    pub commit_id: Id,
    pub invoice_id: Id,
    /// What the customer gets: the commit's access amount.
    pub access_amount: Money,
    /// What the customer pays: the purchase invoice's total.
    pub invoice_total: Money,
    pub gate: PaymentGateConfig,
    pub state: WorkflowState,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub payment_intent_id: Option<String>,
    pub error: Option<ProviderError>,
    /// STRIPE gates only (default otherwise).
    pub charge: ChargeRecord,
}

impl Workflow {
    /// The state entered right after INITIATED, decided by the gate type.
    pub fn first_state(gate: GateType) -> WorkflowState {
        match gate {
            GateType::None => WorkflowState::Released,
            GateType::External => WorkflowState::AwaitingExternal,
            GateType::Stripe => WorkflowState::Charging,
        }
    }

    /// Moves to `state`, noting the change in `changes`; staying in the same state (a poll)
    /// is no change. A new workflow's INITIATED is noted by [`Workflow::note_start`].
    pub fn enter(
        &mut self,
        state: WorkflowState,
        reason: Option<String>,
        at: Timestamp,
        changes: &mut Vec<StateChange>,
    ) {
        if self.state == state {
            return;
        }
        self.state = state;
        changes.push(StateChange {
            workflow_id: self.id,
            state,
            at,
            reason,
        });
    }

    /// Notes that the workflow started (INITIATED).
    pub fn note_start(&self, changes: &mut Vec<StateChange>) {
        changes.push(StateChange {
            workflow_id: self.id,
            state: WorkflowState::Initiated,
            at: self.started_at,
            reason: None,
        });
    }

    /// Checks that `outcome` may be applied now and returns the state it leads to.
    ///
    /// # Errors
    /// [`Rejection::WorkflowAlreadyEnded`] for a terminal workflow and
    /// [`Rejection::WorkflowGateMismatch`] for an outcome from the wrong source.
    pub fn next_state(&self, outcome: &PaymentOutcome) -> Result<WorkflowState, Rejection> {
        let reopened = crate::defects::active(crate::defects::Defect::ReleaseAfterFailed)
            && self.state == WorkflowState::Failed
            && outcome.result == PaymentResult::Paid;
        if self.state.is_terminal() && !reopened {
            return Err(Rejection::WorkflowAlreadyEnded);
        }
        let source_fits = matches!(
            (self.gate.gate_type, outcome.source),
            (GateType::External, OutcomeSource::External)
                | (GateType::Stripe, OutcomeSource::Stripe)
        );
        if !source_fits {
            return Err(Rejection::WorkflowGateMismatch);
        }
        Ok(match (&outcome.result, outcome.source) {
            (PaymentResult::Paid, _) => WorkflowState::Released,
            (PaymentResult::Failed { .. }, _) => WorkflowState::Failed,
            (PaymentResult::ActionRequired { .. }, OutcomeSource::Stripe) => {
                WorkflowState::ActionRequired
            }
            // Still undecided (e.g. `processing` after the customer authenticated).
            (PaymentResult::Pending { .. }, OutcomeSource::Stripe) => WorkflowState::Charging,
            // Refunds follow a FAILED workflow only (see `customer/charges.rs`).
            (PaymentResult::Refunded { .. }, _)
            | (
                PaymentResult::ActionRequired { .. } | PaymentResult::Pending { .. },
                OutcomeSource::External,
            ) => {
                return Err(Rejection::WorkflowGateMismatch);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workflow(gate: GateType, state: WorkflowState) -> Workflow {
        Workflow {
            id: Id::from_u128(1),
            kind: WorkflowKind::Spend,
            contract_id: Id::from_u128(2),
            commit_id: Id::from_u128(3),
            invoice_id: Id::from_u128(4),
            access_amount: Money::from_i64(100),
            invoice_total: Money::from_i64(100),
            gate: PaymentGateConfig {
                gate_type: gate,
                ..PaymentGateConfig::none()
            },
            state,
            started_at: Timestamp(0),
            ended_at: None,
            payment_intent_id: None,
            error: None,
            charge: ChargeRecord::default(),
        }
    }

    fn outcome(source: OutcomeSource, result: PaymentResult) -> PaymentOutcome {
        PaymentOutcome {
            workflow_id: Id::from_u128(1),
            source,
            result,
            payment_intent_id: None,
        }
    }

    #[test]
    fn gates_choose_the_first_state() {
        assert_eq!(
            Workflow::first_state(GateType::None),
            WorkflowState::Released
        );
        assert_eq!(
            Workflow::first_state(GateType::External),
            WorkflowState::AwaitingExternal
        );
        assert_eq!(
            Workflow::first_state(GateType::Stripe),
            WorkflowState::Charging
        );
    }

    #[test]
    fn outcomes_move_in_flight_workflows_only_from_their_own_gate() {
        let external = workflow(GateType::External, WorkflowState::AwaitingExternal);
        assert_eq!(
            external.next_state(&outcome(OutcomeSource::External, PaymentResult::Paid)),
            Ok(WorkflowState::Released)
        );
        assert_eq!(
            external.next_state(&outcome(
                OutcomeSource::External,
                PaymentResult::Failed { error: None }
            )),
            Ok(WorkflowState::Failed)
        );
        assert_eq!(
            external.next_state(&outcome(OutcomeSource::Stripe, PaymentResult::Paid)),
            Err(Rejection::WorkflowGateMismatch)
        );
        let stripe = workflow(GateType::Stripe, WorkflowState::Charging);
        assert_eq!(
            stripe.next_state(&outcome(
                OutcomeSource::Stripe,
                PaymentResult::ActionRequired {
                    error_message: None,
                    timeout_ms: 1,
                }
            )),
            Ok(WorkflowState::ActionRequired)
        );
        assert_eq!(
            stripe.next_state(&outcome(
                OutcomeSource::Stripe,
                PaymentResult::Pending {
                    object_id: "pi_1".into()
                }
            )),
            Ok(WorkflowState::Charging)
        );
        assert_eq!(
            stripe.next_state(&outcome(
                OutcomeSource::Stripe,
                PaymentResult::Refunded {
                    refund_id: "re_1".into()
                }
            )),
            Err(Rejection::WorkflowGateMismatch)
        );
        assert_eq!(
            stripe.next_state(&outcome(OutcomeSource::External, PaymentResult::Paid)),
            Err(Rejection::WorkflowGateMismatch)
        );
        for terminal in [WorkflowState::Released, WorkflowState::Failed] {
            let done = workflow(GateType::External, terminal);
            assert_eq!(
                done.next_state(&outcome(OutcomeSource::External, PaymentResult::Paid)),
                Err(Rejection::WorkflowAlreadyEnded)
            );
        }
    }

    /// The state names of Metronome's API and webhooks (found by mutation testing).
    #[test]
    fn workflow_states_are_named_as_metronome_names_them() {
        let names = [
            WorkflowState::Initiated,
            WorkflowState::AwaitingExternal,
            WorkflowState::Charging,
            WorkflowState::ActionRequired,
            WorkflowState::Released,
            WorkflowState::Failed,
        ]
        .map(WorkflowState::as_str);
        assert_eq!(
            names,
            [
                "INITIATED",
                "AWAITING_EXTERNAL",
                "CHARGING",
                "ACTION_REQUIRED",
                "RELEASED",
                "FAILED"
            ]
        );
    }

    #[test]
    fn unsupported_tax_types_are_refused() {
        let mut gate = PaymentGateConfig::none();
        gate.tax_type = TaxType::Stripe;
        assert!(matches!(
            gate.validate("payment_gate_config"),
            Err(Rejection::Unsupported(_))
        ));
        gate.tax_type = TaxType::Precalculated;
        assert!(gate.validate("payment_gate_config").is_err());
        gate.precalculated_tax = Some((Money::from_i64(120), Some("VAT".into())));
        assert_eq!(gate.validate("payment_gate_config"), Ok(()));
        assert_eq!(gate.tax(), Money::from_i64(120));
    }
}

//! An operator's cancel of a workflow in flight (SPEC 3.1), through the log.
//!
//! An EXTERNAL workflow waiting for its outcome is cancelled by logging
//! [`Input::CancelWorkflow`]: it ends FAILED with the reason, as a failed payment ends it. A
//! STRIPE workflow (CHARGING or ACTION_REQUIRED) is first cancelled at the provider by the
//! payment actor, which holds the workflow's charge meanwhile so that nothing is created or
//! confirmed while the cancel runs:
//! - cancelled, voided, declined before, or nothing created: the cancel is logged;
//! - the provider collected the money: the payment is logged as the outcome and the workflow is
//!   released instead (the caller is told: 409);
//! - still processing, or no usable answer: nothing is logged and nothing changes.
//!
//! A crash between the provider's cancel and the logged cancel leaves a cancelled object for
//! the charge to find when it reconciles at restart (it ends FAILED by it), except a draft
//! invoice, which Stripe deletes rather than voids: the charge then creates another. Until a
//! cancel is answered 200 the workflow may still collect; a cancel that got no answer is sent
//! again. Money the provider collects all the same after a cancel is refunded, as for every
//! FAILED workflow. Only one cancel of a workflow runs at a time (another one meanwhile is
//! answered "in progress").

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::sync::oneshot;

use super::engine::Engine;
use super::error::EngineError;
use super::payment::{CancelAnswer, ChargeCancel};
use crate::domain::customer::Input;
use crate::domain::effects::PaymentAction;
use crate::domain::gate::{
    GateType, OutcomeSource, PaymentOutcome, PaymentResult, StateChange, Workflow, WorkflowState,
};
use crate::domain::{Id, Rejection};

/// Tokens of cancels: which cancel holds a charge.
static CANCEL_TOKENS: AtomicU64 = AtomicU64::new(1);

/// How a cancel ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelVerdict {
    /// The workflow is FAILED: by this cancel, or it had ended so before (a repeat).
    Failed,
    /// It had ended RELEASED before the cancel.
    AlreadyReleased,
    /// The provider reported the payment succeeded: the workflow was released instead.
    ReleasedInstead,
    /// The provider is still deciding the payment of `object_id` and cannot cancel it now.
    Processing { object_id: String },
    /// The provider could not be asked, or gave no usable answer: nothing changed.
    ProviderUnavailable(String),
}

/// The workflow after a cancel, with its customer and how the cancel ended.
pub struct Cancelled {
    pub customer: Id,
    pub workflow: Workflow,
    pub history: Vec<StateChange>,
    pub verdict: CancelVerdict,
}

impl Engine {
    /// Cancels workflow `workflow_id` with `reason` (see the module).
    ///
    /// # Errors
    /// [`Rejection::WorkflowNotFound`], a refused reason, overload and storage failures.
    pub async fn cancel_workflow(
        &self,
        workflow_id: Id,
        reason: String,
    ) -> Result<Cancelled, EngineError> {
        // A task of its own: a caller that goes away (a client hanging up) does not cut the
        // cancel between the provider's answer and the log, which would leave the charge held.
        let engine = self.clone();
        actix_rt::spawn(async move { engine.run_cancel(workflow_id, reason).await })
            .await
            .map_err(|_| EngineError::Internal("the cancel task failed".into()))?
    }

    async fn run_cancel(&self, workflow_id: Id, reason: String) -> Result<Cancelled, EngineError> {
        self.check_ready()?;
        let customer = self
            .workflow_customer(workflow_id)?
            .ok_or(Rejection::WorkflowNotFound)?;
        let (workflow, request) = self
            .query(customer, move |s| {
                let close = PaymentAction::Close { cancel: true };
                (
                    s.customer.workflow(workflow_id).cloned(),
                    s.customer.payment_request_for(workflow_id, close),
                )
            })
            .await?;
        let workflow = workflow.ok_or(Rejection::WorkflowNotFound)?;
        if workflow.state.is_terminal() {
            let read = self.read(customer, workflow_id).await?;
            return Ok(ended(customer, read, false));
        }
        let stripe = workflow.gate.gate_type == GateType::Stripe
            && matches!(
                workflow.state,
                WorkflowState::Charging | WorkflowState::ActionRequired
            );
        let (Some(request), true) = (request, stripe) else {
            return self.log_cancel(customer, workflow_id, reason).await;
        };
        let (reply, answer) = oneshot::channel();
        let token = CANCEL_TOKENS.fetch_add(1, Relaxed);
        self.payment_cancel()
            .send(ChargeCancel::Cancel {
                request: Box::new(request),
                token,
                reply,
            })
            .await
            .map_err(|_| EngineError::Internal("payment actor stopped".into()))?;
        let answer = answer.await.unwrap_or_else(|_| {
            // The charge was closed meanwhile: the workflow ended by another outcome.
            CancelAnswer::Unavailable("the workflow's charge ended meanwhile".into())
        });
        let result = match answer {
            CancelAnswer::Canceled => self.log_cancel(customer, workflow_id, reason).await,
            CancelAnswer::Succeeded { payment_intent_id } => {
                let outcome = PaymentOutcome {
                    workflow_id,
                    source: OutcomeSource::Stripe,
                    result: PaymentResult::Paid,
                    payment_intent_id,
                };
                match self.apply(customer, Input::PaymentOutcome(outcome)).await {
                    Ok(_) | Err(EngineError::Rejected(Rejection::WorkflowAlreadyEnded)) => {
                        let read = self.read(customer, workflow_id).await?;
                        Ok(ended(customer, read, true))
                    }
                    Err(error) => Err(error),
                }
            }
            CancelAnswer::Processing { object_id } => {
                let (workflow, history) = self.read(customer, workflow_id).await?;
                Ok(Cancelled {
                    customer,
                    workflow,
                    history,
                    verdict: CancelVerdict::Processing { object_id },
                })
            }
            // Another cancel holds the charge: it decides; this one changed nothing.
            CancelAnswer::InProgress => return Err(EngineError::CancelInProgress),
            CancelAnswer::Unavailable(why) => {
                let (workflow, history) = self.read(customer, workflow_id).await?;
                if workflow.state.is_terminal() {
                    Ok(ended(customer, (workflow, history), false))
                } else {
                    Ok(Cancelled {
                        customer,
                        workflow,
                        history,
                        verdict: CancelVerdict::ProviderUnavailable(why),
                    })
                }
            }
        };
        // Whatever was logged, the charge (if still held) goes on: a Close retires it after
        // a cancel or a release.
        let _ = self
            .payment_cancel()
            .send(ChargeCancel::Finished { workflow_id, token })
            .await;
        result
    }

    async fn log_cancel(
        &self,
        customer: Id,
        workflow_id: Id,
        reason: String,
    ) -> Result<Cancelled, EngineError> {
        let input = Input::CancelWorkflow {
            workflow_id,
            reason,
        };
        match self.apply(customer, input).await {
            Ok(_) | Err(EngineError::Rejected(Rejection::WorkflowAlreadyEnded)) => {}
            Err(error) => return Err(error),
        }
        let read = self.read(customer, workflow_id).await?;
        Ok(ended(customer, read, false))
    }

    /// The workflow as its customer's actor has it now, with its history.
    async fn read(
        &self,
        customer: Id,
        workflow_id: Id,
    ) -> Result<(Workflow, Vec<StateChange>), EngineError> {
        self.query(customer, move |s| {
            s.customer.workflow_with_history(workflow_id)
        })
        .await?
        .ok_or_else(|| Rejection::WorkflowNotFound.into())
    }
}

/// The verdict on a workflow read after the cancel; `paid_now` when the cancel itself logged
/// the payment. A workflow still in flight here (which a logged cancel or payment never
/// leaves) is said to be unchanged rather than cancelled.
fn ended(
    customer: Id,
    (workflow, history): (Workflow, Vec<StateChange>),
    paid_now: bool,
) -> Cancelled {
    let verdict = match (workflow.state, paid_now) {
        (WorkflowState::Released, true) => CancelVerdict::ReleasedInstead,
        (WorkflowState::Released, false) => CancelVerdict::AlreadyReleased,
        (WorkflowState::Failed, _) => CancelVerdict::Failed,
        (state, _) => {
            CancelVerdict::ProviderUnavailable(format!("the workflow is still {}", state.as_str()))
        }
    };
    Cancelled {
        customer,
        workflow,
        history,
        verdict,
    }
}

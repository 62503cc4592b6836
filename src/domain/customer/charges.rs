//! Provider-collected charges (STRIPE gates): what happens beyond the plain transition table.
//!
//! Owns ACTION_REQUIRED (entering it, its deadline, and failing the workflow when the deadline
//! passes), progress reports outside the usual transitions (the provider's object, money
//! arriving for a FAILED workflow and its refund), and the payment requests the payment actor
//! carries out. It only records and asks: it must not talk to the provider, and it leaves
//! releasing and failing a workflow to `workflows`.

use super::workflows::fail_workflow;
use super::{Applied, Ctx, webhook};
use crate::domain::contract::Contract;
use crate::domain::effects::{Effect, PaymentAction, PaymentRequest, WebhookType};
use crate::domain::gate::{
    GateType, OutcomeSource, PaymentOutcome, PaymentResult, ProviderError, RefundRecord,
    StateChange, StripeConfig, StripePaymentType, Workflow, WorkflowState,
};
use crate::domain::ids::{Id, Timestamp};
use crate::domain::rejection::Rejection;

/// Moves workflow `wi` to ACTION_REQUIRED; the first entry starts its deadline from the limit
/// logged with the outcome, and each entry tells the customer's operator once (a repeat for
/// the same PaymentIntent while still in ACTION_REQUIRED is a poll, not news).
///
/// `entered_before` counts the workflow's earlier ACTION_REQUIRED notices (entries in its
/// history): each notice's webhook has an id of its own, so a second one (after the customer's
/// attempt went back to processing, or for another PaymentIntent) is news with a new id, never
/// another body under an earlier one's. Another PaymentIntent while still waiting is noted in
/// the history as an ACTION_REQUIRED entry of its own. The first report of the PaymentIntent
/// of an invoice already waiting is no news.
pub(super) fn action_required(
    contract: &mut Contract,
    customer_id: Id,
    wi: usize,
    outcome: &PaymentOutcome,
    (ctx, entered_before): (&Ctx<'_>, u64),
    applied: &mut Applied,
) {
    let workflow = &mut contract.workflows[wi];
    let repeat = workflow.state == WorkflowState::ActionRequired
        && (workflow.payment_intent_id == outcome.payment_intent_id
            || workflow.payment_intent_id.is_none());
    let (error_message, timeout_ms) = match &outcome.result {
        PaymentResult::ActionRequired {
            error_message,
            timeout_ms,
        } => (error_message.clone(), *timeout_ms),
        _ => (None, 0),
    };
    let waiting = workflow.state == WorkflowState::ActionRequired;
    if !waiting {
        // Repeats (polls) never extend the deadline.
        workflow.charge.action_deadline = Some(ctx.at.plus_ms(timeout_ms.max(0)));
    } else if !repeat {
        applied.transitions.push(StateChange {
            workflow_id: workflow.id,
            state: WorkflowState::ActionRequired,
            at: ctx.at,
            reason: Some("another PaymentIntent needs the customer's action".into()),
        });
    }
    workflow.enter(
        WorkflowState::ActionRequired,
        None,
        ctx.at,
        &mut applied.transitions,
    );
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
        hook.id = Id::derive(
            workflow.id,
            WebhookType::PaymentPendingActionRequired.as_str(),
            entered_before,
        );
        hook.invoice_id = Some(workflow.invoice_id);
        hook.error_message = error_message;
        hook.payment_intent_id = outcome.payment_intent_id.clone();
        applied.effects.push(Effect::Webhook(hook));
    }
}

/// What [`charge_progress`] left to do.
pub(super) enum Progress {
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
pub(super) fn charge_progress(
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
pub(super) fn expire_overdue_actions(
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
pub(super) fn note_object(workflow: &mut Workflow, outcome: &PaymentOutcome) {
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
pub(super) fn payment_request(
    contract: &Contract,
    customer_id: Id,
    wi: usize,
    action: PaymentAction,
) -> PaymentRequest {
    let workflow = &contract.workflows[wi];
    let stripe = workflow.gate.stripe.clone().unwrap_or(StripeConfig {
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

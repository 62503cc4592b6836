//! Effects: what the engine must do because an input was applied, as data.
//!
//! The core never sends anything. It returns effects with ids derived from their cause; the
//! engine persists them in the outbox before acting, so a crash between deciding and doing
//! re-sends the same effect (same id) and never decides twice.

use serde::{Deserialize, Serialize};

use super::gate::{ProviderError, StripeConfig, WorkflowKind};
use super::ids::{Id, Timestamp};
use super::money::{CreditType, Money};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    Webhook(Webhook),
    RequestPayment(PaymentRequest),
}

impl Effect {
    pub fn id(&self) -> Id {
        match self {
            Effect::Webhook(w) => w.id,
            Effect::RequestPayment(p) => p.workflow_id,
        }
    }
}

/// The webhook types Tollgate emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebhookType {
    ThresholdReached,
    ExternalInitiate,
    PaymentStatus,
    PaymentPendingActionRequired,
}

impl WebhookType {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookType::ThresholdReached => "payment_gate.threshold_reached",
            WebhookType::ExternalInitiate => "payment_gate.external_initiate",
            WebhookType::PaymentStatus => "payment_gate.payment_status",
            WebhookType::PaymentPendingActionRequired => {
                "payment_gate.payment_pending_action_required"
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentStatus {
    Paid,
    Failed,
}

/// One notification in Metronome's "properties" envelope: `{"id", "type", "properties"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Derived from the workflow and the type: stable across retries and replays.
    pub id: Id,
    pub webhook_type: WebhookType,
    pub workflow_type: WorkflowKind,
    pub workflow_id: Id,
    pub customer_id: Id,
    pub contract_id: Id,
    pub timestamp: Timestamp,
    pub invoice_id: Option<Id>,
    pub invoice_total: Option<Money>,
    pub invoice_currency: Option<String>,
    pub payment_status: Option<PaymentStatus>,
    pub error_message: Option<String>,
    pub payment_intent_id: Option<String>,
    pub provider_error: Option<ProviderError>,
}

impl Webhook {
    /// The exact JSON body to sign and send (keys in a fixed order, so the bytes are the same on
    /// every replay).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{Map, Value, json};
        let mut properties = Map::new();
        properties.insert("workflow_type".into(), json!(self.workflow_type.as_str()));
        properties.insert("customer_id".into(), json!(self.customer_id.to_string()));
        properties.insert("contract_id".into(), json!(self.contract_id.to_string()));
        properties.insert("workflow_id".into(), json!(self.workflow_id.to_string()));
        if let Some(invoice_id) = self.invoice_id {
            properties.insert("invoice_id".into(), json!(invoice_id.to_string()));
        }
        if let Some(total) = self.invoice_total {
            properties.insert("invoice_total".into(), json!(total));
        }
        if let Some(currency) = &self.invoice_currency {
            properties.insert("invoice_currency".into(), json!(currency));
        }
        if let Some(status) = self.payment_status {
            let text = match status {
                PaymentStatus::Paid => "paid",
                PaymentStatus::Failed => "failed",
            };
            properties.insert("payment_status".into(), json!(text));
        }
        if let Some(message) = &self.error_message {
            properties.insert("error_message".into(), json!(message));
        }
        if self.payment_intent_id.is_some() || self.provider_error.is_some() {
            let mut stripe = Map::new();
            if let Some(intent) = &self.payment_intent_id {
                stripe.insert("payment_intent_id".into(), json!(intent));
            }
            if let Some(error) = &self.provider_error {
                let mut e = Map::new();
                for (key, value) in [
                    ("type", &error.error_type),
                    ("code", &error.code),
                    ("decline_code", &error.decline_code),
                    ("message", &error.message),
                ] {
                    if let Some(value) = value {
                        e.insert(key.into(), json!(value));
                    }
                }
                stripe.insert("error".into(), Value::Object(e));
            }
            properties.insert(
                "billing_provider".into(),
                json!({"type": "stripe", "stripe": Value::Object(stripe)}),
            );
        }
        properties.insert("timestamp".into(), json!(self.timestamp.to_rfc3339()));
        json!({
            "id": self.id.to_string(),
            "type": self.webhook_type.as_str(),
            "properties": Value::Object(properties),
        })
    }
}

/// A charge the payment provider must make (STRIPE gates only; NONE releases in the core and
/// EXTERNAL waits for the operator).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRequest {
    /// Also the provider's idempotency key.
    pub workflow_id: Id,
    pub workflow_type: WorkflowKind,
    pub customer_id: Id,
    pub contract_id: Id,
    pub invoice_id: Id,
    pub commit_id: Id,
    pub amount: Money,
    pub credit_type: CreditType,
    pub stripe: StripeConfig,
    pub stripe_customer_id: String,
    pub description: String,
}

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
    /// Work for the payment actor: a charge, or a follow-up of one (see [`PaymentAction`]).
    RequestPayment(PaymentRequest),
    /// A notification about no workflow: lifecycle events and rails holding a recharge.
    Notice(Notice),
}

impl Effect {
    pub fn id(&self) -> Id {
        match self {
            Effect::Webhook(w) => w.id,
            Effect::RequestPayment(p) => p.effect_id(),
            Effect::Notice(n) => n.id,
        }
    }
}

/// The notifications that belong to no gate workflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoticeType {
    /// Tollgate's: a recharge safety rail started holding a recharge back (properties
    /// envelope).
    RechargeLimited,
    ContractCreate,
    ContractEdit,
    ContractEnd,
    CommitCreate,
    CommitSegmentStart,
    CommitSegmentEnd,
    CreditCreate,
    CreditSegmentStart,
    CreditSegmentEnd,
    /// A customer entered alarm on an alert: `alerts.<type>` (properties envelope).
    AlertReached(super::alerts::AlertType),
    /// Tollgate's: a customer left alarm: `alerts.<type>_resolved` (properties envelope).
    AlertResolved(super::alerts::AlertType),
    CommitArchive,
    CreditArchive,
}

impl NoticeType {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeType::RechargeLimited => "payment_gate.recharge_limited",
            NoticeType::ContractCreate => "contract.create",
            NoticeType::ContractEdit => "contract.edit",
            NoticeType::ContractEnd => "contract.end",
            NoticeType::CommitCreate => "commit.create",
            NoticeType::CommitSegmentStart => "commit.segment.start",
            NoticeType::CommitSegmentEnd => "commit.segment.end",
            NoticeType::CreditCreate => "credit.create",
            NoticeType::CreditSegmentStart => "credit.segment.start",
            NoticeType::CreditSegmentEnd => "credit.segment.end",
            NoticeType::AlertReached(alert) => alert.webhook_type(),
            NoticeType::AlertResolved(alert) => alert.resolved_type(),
            NoticeType::CommitArchive => "commit.archive",
            NoticeType::CreditArchive => "credit.archive",
        }
    }

    /// Every notice type, for listings and tests.
    pub fn all() -> Vec<NoticeType> {
        let alerts = super::alerts::AlertType::ALL;
        NoticeType::FIXED
            .into_iter()
            .chain(alerts.iter().map(|&t| NoticeType::AlertReached(t)))
            .chain(alerts.iter().map(|&t| NoticeType::AlertResolved(t)))
            .collect()
    }

    /// The notice types without an alert type.
    const FIXED: [NoticeType; 12] = [
        NoticeType::RechargeLimited,
        NoticeType::ContractCreate,
        NoticeType::ContractEdit,
        NoticeType::ContractEnd,
        NoticeType::CommitCreate,
        NoticeType::CommitSegmentStart,
        NoticeType::CommitSegmentEnd,
        NoticeType::CreditCreate,
        NoticeType::CreditSegmentStart,
        NoticeType::CreditSegmentEnd,
        NoticeType::CommitArchive,
        NoticeType::CreditArchive,
    ];
}

/// A notification with its exact body, built when it was decided (so every replay builds the
/// same bytes): lifecycle events in Metronome's flat envelope (`{"id", "type", "timestamp",
/// "environment_type", "customer_id", ...}`), `payment_gate.recharge_limited` in the
/// properties envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Derived from what it is about (the contract, the commit or segment, the hold's
    /// sequence): stable across retries and replays.
    pub id: Id,
    pub notice_type: NoticeType,
    pub customer_id: Id,
    pub contract_id: Id,
    pub body: serde_json::Value,
}

impl Notice {
    /// A notice in Metronome's flat envelope: the envelope's fields, then `fields`.
    pub fn flat(
        id: Id,
        notice_type: NoticeType,
        at: Timestamp,
        (customer_id, customer_custom_fields): (Id, &[(String, String)]),
        contract_id: Id,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Notice {
        use serde_json::{Map, Value, json};
        let mut custom = Map::new();
        for (key, value) in customer_custom_fields {
            custom.insert(key.clone(), json!(value));
        }
        let mut body = Map::new();
        body.insert("id".into(), json!(id.to_string()));
        body.insert("type".into(), json!(notice_type.as_str()));
        body.insert("timestamp".into(), json!(at.to_rfc3339()));
        body.insert("environment_type".into(), json!("PRODUCTION"));
        body.insert("customer_id".into(), json!(customer_id.to_string()));
        body.insert("customer_custom_fields".into(), Value::Object(custom));
        // A customer-level commit's notice is about no contract.
        if contract_id != Id::NIL {
            body.insert("contract_id".into(), json!(contract_id.to_string()));
            body.insert("contract_custom_fields".into(), json!({}));
        }
        body.extend(fields);
        Notice {
            id,
            notice_type,
            customer_id,
            contract_id,
            body: Value::Object(body),
        }
    }

    /// A notice in the properties envelope (`{"id", "type", "properties"}`).
    pub fn with_properties(
        id: Id,
        notice_type: NoticeType,
        customer_id: Id,
        contract_id: Id,
        properties: serde_json::Map<String, serde_json::Value>,
    ) -> Notice {
        use serde_json::{Value, json};
        Notice {
            id,
            notice_type,
            customer_id,
            contract_id,
            body: json!({
                "id": id.to_string(),
                "type": notice_type.as_str(),
                "properties": Value::Object(properties),
            }),
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
    /// Money that arrived after its workflow ended FAILED was refunded.
    PaymentRefunded,
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
            WebhookType::PaymentRefunded => "payment_gate.payment_refunded",
        }
    }
}

impl WebhookType {
    pub const ALL: [WebhookType; 5] = [
        WebhookType::ThresholdReached,
        WebhookType::ExternalInitiate,
        WebhookType::PaymentStatus,
        WebhookType::PaymentPendingActionRequired,
        WebhookType::PaymentRefunded,
    ];
}

/// Every webhook type Tollgate sends, by name.
pub fn all_type_names() -> impl Iterator<Item = &'static str> {
    WebhookType::ALL
        .iter()
        .map(|t| t.as_str())
        .chain(NoticeType::all().into_iter().map(NoticeType::as_str))
}

/// Whether `pattern` (an exact type name, or a prefix ending in `*`) names at least one type.
pub fn type_pattern_is_known(pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => all_type_names().any(|t| t.starts_with(prefix)),
        None => all_type_names().any(|t| t == pattern),
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
    /// The provider's refund (`payment_refunded` only).
    pub refund_id: Option<String>,
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
        if self.payment_intent_id.is_some()
            || self.provider_error.is_some()
            || self.refund_id.is_some()
        {
            let mut stripe = Map::new();
            if let Some(intent) = &self.payment_intent_id {
                stripe.insert("payment_intent_id".into(), json!(intent));
            }
            if let Some(refund) = &self.refund_id {
                stripe.insert("refund_id".into(), json!(refund));
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

/// What the payment actor must do for a STRIPE workflow (NONE releases in the core and EXTERNAL
/// waits for the operator).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentAction {
    /// Collect the money: find the workflow's PaymentIntent or invoice at the provider, create
    /// it only if there is none, and report until it is decided.
    Charge,
    /// The workflow ended: stop working on its charge (retire it). With `cancel` (it ended
    /// FAILED) also cancel the PaymentIntent or void the invoice, so it can never collect.
    Close { cancel: bool },
    /// Money arrived after the workflow ended FAILED: refund it in full.
    Refund,
}

/// Work for the payment provider about one workflow's charge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRequest {
    /// Also the base of the provider's idempotency keys.
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
    pub action: PaymentAction,
    /// The provider's object for the workflow when the log knows it; otherwise the payment actor
    /// looks it up by the workflow id.
    pub object_id: Option<String>,
}

impl PaymentRequest {
    /// The effect's id: the workflow id for the charge (as before follow-ups existed), derived
    /// from it for each follow-up, so each has an outbox entry of its own.
    pub fn effect_id(&self) -> Id {
        match self.action {
            PaymentAction::Charge => self.workflow_id,
            PaymentAction::Close { .. } => Id::derive(self.workflow_id, "payment-close", 0),
            PaymentAction::Refund => Id::derive(self.workflow_id, "payment-refund", 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::gate::StripePaymentType;

    fn payment_status(workflow_id: Id) -> Webhook {
        Webhook {
            id: Id::derive(workflow_id, WebhookType::PaymentStatus.as_str(), 0),
            webhook_type: WebhookType::PaymentStatus,
            workflow_type: WorkflowKind::Spend,
            workflow_id,
            customer_id: Id::from_u128(2),
            contract_id: Id::from_u128(3),
            timestamp: Timestamp(0),
            invoice_id: None,
            invoice_total: None,
            invoice_currency: None,
            payment_status: Some(PaymentStatus::Failed),
            error_message: None,
            payment_intent_id: None,
            provider_error: None,
            refund_id: None,
        }
    }

    /// Any one of the provider's details (its PaymentIntent, its error, its refund) is enough to
    /// name Stripe as the billing provider; without any there is no `billing_provider` (found by
    /// mutation testing).
    #[test]
    fn any_one_provider_detail_names_stripe_as_the_billing_provider() {
        let plain = payment_status(Id::from_u128(1));
        assert_eq!(plain.to_json()["properties"].get("billing_provider"), None);
        let mut intent = plain.clone();
        intent.payment_intent_id = Some("pi_1".into());
        let mut error = plain.clone();
        error.provider_error = Some(ProviderError {
            code: Some("card_declined".into()),
            ..ProviderError::default()
        });
        let mut refund = plain;
        refund.refund_id = Some("re_1".into());
        let cases = [
            (intent, json!({"payment_intent_id": "pi_1"})),
            (error, json!({"error": {"code": "card_declined"}})),
            (refund, json!({"refund_id": "re_1"})),
        ];
        for (webhook, stripe) in cases {
            assert_eq!(
                webhook.to_json()["properties"]["billing_provider"],
                json!({"type": "stripe", "stripe": stripe})
            );
        }
    }

    /// The charge keeps the workflow's id as its effect id; each follow-up has an id of its own,
    /// derived from the workflow's, so each gets its own outbox entry (found by mutation testing).
    #[test]
    fn a_charge_is_identified_by_its_workflow_and_each_follow_up_by_its_own_id() {
        let workflow_id = Id::from_u128(0x77);
        let request = |action: PaymentAction| PaymentRequest {
            workflow_id,
            workflow_type: WorkflowKind::Spend,
            customer_id: Id::from_u128(2),
            contract_id: Id::from_u128(3),
            invoice_id: Id::from_u128(4),
            commit_id: Id::from_u128(5),
            amount: Money::from_i64(500),
            credit_type: CreditType::usd_cents(),
            stripe: StripeConfig {
                payment_type: StripePaymentType::PaymentIntent,
                invoice_metadata: vec![],
                on_session_payment: false,
            },
            stripe_customer_id: "cus_1".into(),
            description: "Threshold charge".into(),
            action,
            object_id: None,
        };
        let charge = Effect::RequestPayment(request(PaymentAction::Charge));
        assert_eq!(charge.id(), workflow_id);
        let close = request(PaymentAction::Close { cancel: true }).effect_id();
        assert_eq!(close, Id::derive(workflow_id, "payment-close", 0));
        assert_eq!(
            request(PaymentAction::Close { cancel: false }).effect_id(),
            close
        );
        let refund = request(PaymentAction::Refund).effect_id();
        assert_eq!(refund, Id::derive(workflow_id, "payment-refund", 0));
        assert_ne!(close, refund);
        assert_ne!(close, workflow_id);
    }
}

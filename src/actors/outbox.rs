//! What the engine keeps in the outbox: effects waiting to be carried out, with their delivery
//! state. Written by customer actors right after the input that caused them is applied (and
//! before the actor's state can be checkpointed), read by the webhook and payment actors.
//!
//! Ids are deterministic: a webhook's outbox id derives from the webhook id and the destination
//! URL, so a replay after a crash re-creates the same entry, which storage refuses to resurrect
//! once delivered.

use serde::{Deserialize, Serialize};

use crate::domain::Id;
use crate::domain::effects::PaymentRequest;

/// Version byte of encoded [`OutboxEntry`] values (2: payment requests carry their action).
pub const OUTBOX_VERSION: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboxEffect {
    /// One webhook for one destination. `body` is the exact JSON that is signed and sent on
    /// every attempt.
    Webhook {
        webhook_id: Id,
        event_type: String,
        destination_url: String,
        body: Vec<u8>,
    },
    /// A charge for the payment provider (STRIPE gates).
    Payment(PaymentRequest),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub effect: OutboxEffect,
    /// Log position of the input that caused the effect (partition, seq).
    pub cause: (u16, u64),
    pub created_at_ms: i64,
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub last_error: Option<String>,
}

impl OutboxEntry {
    pub fn new(effect: OutboxEffect, cause: (u16, u64), now_ms: i64) -> OutboxEntry {
        OutboxEntry {
            effect,
            cause,
            created_at_ms: now_ms,
            attempts: 0,
            next_attempt_at_ms: now_ms,
            last_error: None,
        }
    }
}

/// The outbox key of a webhook for one destination.
pub fn webhook_outbox_id(webhook_id: Id, destination_url: &str) -> [u8; 16] {
    *Id::derive(
        Id::from_key("webhook-destination", destination_url),
        &webhook_id.to_string(),
        0,
    )
    .as_bytes()
}

/// The outbox key of a payment request: one per workflow.
pub fn payment_outbox_id(workflow_id: Id) -> [u8; 16] {
    *Id::derive(workflow_id, "payment-request", 0).as_bytes()
}

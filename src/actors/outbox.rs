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
use crate::storage::{self, StorageError};

/// Version byte of encoded [`OutboxEntry`] values (2: payment requests carry their action;
/// 3: entries keep the status of their last failed attempt). [`OutboxEntry::decode`] reads 2
/// too.
pub const OUTBOX_VERSION: u8 = 3;

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
    /// The HTTP status of the last failed attempt (`None` before any, or when it got none: a
    /// timeout, a refused connection).
    pub last_status: Option<u16>,
}

/// An entry as version 2 stored it (without `last_status`).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct OutboxEntryV2 {
    effect: OutboxEffect,
    cause: (u16, u64),
    created_at_ms: i64,
    attempts: u32,
    next_attempt_at_ms: i64,
    last_error: Option<String>,
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
            last_status: None,
        }
    }

    /// Decodes a stored entry of this version or of version 2 (written by earlier builds; its
    /// `last_status` is unknown).
    ///
    /// # Errors
    /// Another version, or bytes that do not decode.
    pub fn decode(bytes: &[u8]) -> Result<OutboxEntry, StorageError> {
        if bytes.first() == Some(&2) {
            let v2: OutboxEntryV2 = storage::decode(2, bytes)?;
            return Ok(OutboxEntry {
                effect: v2.effect,
                cause: v2.cause,
                created_at_ms: v2.created_at_ms,
                attempts: v2.attempts,
                next_attempt_at_ms: v2.next_attempt_at_ms,
                last_error: v2.last_error,
                last_status: None,
            });
        }
        storage::decode(OUTBOX_VERSION, bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook() -> OutboxEffect {
        OutboxEffect::Webhook {
            webhook_id: Id::from_u128(7),
            event_type: "payment_gate.threshold_reached".into(),
            destination_url: "http://127.0.0.1:9/hooks".into(),
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn an_entry_of_version_2_is_read_with_its_last_status_unknown() {
        let v2 = OutboxEntryV2 {
            effect: webhook(),
            cause: (1, 42),
            created_at_ms: 1_000,
            attempts: 3,
            next_attempt_at_ms: 9_000,
            last_error: Some("status 500".into()),
        };
        let entry = OutboxEntry::decode(&storage::encode(2, &v2).unwrap()).unwrap();
        assert_eq!(entry.cause, (1, 42));
        assert_eq!(entry.attempts, 3);
        assert_eq!(entry.next_attempt_at_ms, 9_000);
        assert_eq!(entry.last_error.as_deref(), Some("status 500"));
        assert_eq!(entry.last_status, None);
        assert_eq!(entry.effect, webhook());
    }

    #[test]
    fn an_entry_round_trips_in_this_version_and_other_versions_are_refused() {
        let mut entry = OutboxEntry::new(webhook(), (0, 5), 100);
        entry.last_status = Some(503);
        let bytes = storage::encode(OUTBOX_VERSION, &entry).unwrap();
        assert_eq!(OutboxEntry::decode(&bytes).unwrap(), entry);
        let mut other = bytes.clone();
        other[0] = 1;
        assert!(matches!(
            OutboxEntry::decode(&other),
            Err(StorageError::UnknownVersion { found: 1, .. })
        ));
        assert!(OutboxEntry::decode(&[]).is_err());
    }
}

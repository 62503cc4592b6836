//! What the operator sees of delivered webhooks: one record per delivery in `meta` under
//! `whd/<delivered at ms><outbox id>`, written in the same batch that retires the outbox entry
//! (so a listed delivery is never still pending) and deleted once older than
//! `webhooks.delivered_retention_ms` by the webhook actor's sweep (a key range: the keys are in
//! time order). It must not decide anything about delivery; it only describes it.

use serde::{Deserialize, Serialize};

use crate::domain::Id;
use crate::storage::{self, StorageError, Uuid16};

pub const DELIVERED_PREFIX: &[u8] = b"whd/";
const DELIVERED_VERSION: u8 = 1;

/// One delivered webhook, for one destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredWebhook {
    /// The outbox id (one per webhook and destination).
    pub id: Uuid16,
    pub webhook_id: Id,
    pub event_type: String,
    pub destination_url: String,
    /// Attempts it took, the delivering one included.
    pub attempts: u32,
    /// The receiver's 2xx status.
    pub status: u16,
    pub created_at_ms: i64,
    pub delivered_at_ms: i64,
}

impl DeliveredWebhook {
    pub fn key(&self) -> Vec<u8> {
        delivered_key(self.delivered_at_ms, self.id)
    }

    /// # Errors
    /// Encoding errors.
    pub fn encode(&self) -> Result<Vec<u8>, StorageError> {
        storage::encode(DELIVERED_VERSION, self)
    }

    /// # Errors
    /// Another version, or bytes that do not decode.
    pub fn decode(bytes: &[u8]) -> Result<DeliveredWebhook, StorageError> {
        storage::decode(DELIVERED_VERSION, bytes)
    }
}

/// The key of a delivery at `at_ms` (a time before 1970 files at 0).
pub fn delivered_key(at_ms: i64, id: Uuid16) -> Vec<u8> {
    let at = u64::try_from(at_ms).unwrap_or(0).to_be_bytes();
    [DELIVERED_PREFIX, &at[..], &id[..]].concat()
}

/// The first key of deliveries at or after `at_ms`: the sweep deletes everything before it.
pub fn delivered_cutoff(at_ms: i64) -> Vec<u8> {
    delivered_key(at_ms, [0; 16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_sort_by_time_and_the_cutoff_splits_them() {
        let early = delivered_key(1_000, [0xff; 16]);
        let late = delivered_key(1_001, [0; 16]);
        assert!(early < late);
        assert!(early < delivered_cutoff(1_001));
        assert!(late >= delivered_cutoff(1_001));
        assert!(delivered_key(-5, [1; 16]) < delivered_key(0, [2; 16]));
    }

    #[test]
    fn a_record_round_trips() {
        let record = DeliveredWebhook {
            id: [3; 16],
            webhook_id: Id::from_u128(9),
            event_type: "payment_gate.payment_status".into(),
            destination_url: "http://127.0.0.1:9/hooks".into(),
            attempts: 2,
            status: 204,
            created_at_ms: 10,
            delivered_at_ms: 20,
        };
        let bytes = record.encode().unwrap();
        assert_eq!(DeliveredWebhook::decode(&bytes).unwrap(), record);
        assert!(record.key().starts_with(DELIVERED_PREFIX));
    }
}

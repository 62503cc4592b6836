//! Byte layouts of the fixed-format keys and values in the column families (see the table in
//! `storage/mod.rs`). It owns nothing but these conversions; it must not touch a database, so the
//! layouts stay testable and the one place to read when a format question comes up.
//!
//! Integers are big-endian everywhere: in keys so that RocksDB's bytewise order is numeric order
//! (a partition's log is one contiguous, seq-ordered range), in values for consistency.

use super::StorageError;

/// Length of a `log` key: partition (2) + seq (8).
pub(crate) const LOG_KEY_LEN: usize = 2 + 8;
/// Length of the header in front of a log record's payload: `at_ms` (8).
pub(crate) const RECORD_HEADER_LEN: usize = 8;
/// Length of a `dedupe` value: partition (2) + seq (8) + at_ms (8).
pub(crate) const DEDUPE_VALUE_LEN: usize = 2 + 8 + 8;
/// Length of the seq in front of a checkpoint's state bytes.
const CHECKPOINT_HEADER_LEN: usize = 8;
/// Length of an `outbox_done` value: cause partition (2) + cause seq (8).
const OUTBOX_DONE_VALUE_LEN: usize = 2 + 8;

pub(crate) fn log_key(partition: u16, seq: u64) -> [u8; LOG_KEY_LEN] {
    let mut key = [0u8; LOG_KEY_LEN];
    key[..2].copy_from_slice(&partition.to_be_bytes());
    key[2..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub(crate) fn parse_log_key(key: &[u8]) -> Result<(u16, u64), StorageError> {
    let key: &[u8; LOG_KEY_LEN] = key
        .try_into()
        .map_err(|_| corrupt("log key", format!("length {} != {LOG_KEY_LEN}", key.len())))?;
    let (partition, seq) = key.split_at(2);
    Ok((be_u16(partition), be_u64(seq)))
}

/// The first key after every log key of `partition`, or `None` for the last partition (whose
/// range runs to the end of the column family). Used as an exclusive iterator bound.
pub(crate) fn log_partition_end(partition: u16) -> Option<[u8; LOG_KEY_LEN]> {
    partition.checked_add(1).map(|next| log_key(next, 0))
}

pub(crate) fn partition_key(partition: u16) -> [u8; 2] {
    partition.to_be_bytes()
}

pub(crate) fn parse_partition_key(key: &[u8]) -> Result<u16, StorageError> {
    let key: &[u8; 2] = key
        .try_into()
        .map_err(|_| corrupt("partition key", format!("length {} != 2", key.len())))?;
    Ok(u16::from_be_bytes(*key))
}

/// The header of a log value; the payload follows it.
pub(crate) fn record_header(at_ms: i64) -> [u8; RECORD_HEADER_LEN] {
    at_ms.to_be_bytes()
}

/// A whole log value (the writer puts header and payload into its batch without this copy).
#[cfg(test)]
pub(crate) fn record_value(at_ms: i64, payload: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
    value.extend_from_slice(&record_header(at_ms));
    value.extend_from_slice(payload);
    value
}

/// Splits a log value into `(at_ms, payload)`.
pub(crate) fn parse_record_value(value: &[u8]) -> Result<(i64, &[u8]), StorageError> {
    if value.len() < RECORD_HEADER_LEN {
        return Err(corrupt(
            "log record",
            format!("length {} < {RECORD_HEADER_LEN}", value.len()),
        ));
    }
    let (at_ms, payload) = value.split_at(RECORD_HEADER_LEN);
    Ok((be_i64(at_ms), payload))
}

/// Where and when a dedupe key was first accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DedupeHit {
    pub partition: u16,
    pub seq: u64,
    pub at_ms: i64,
}

impl DedupeHit {
    pub(crate) fn encode(&self) -> [u8; DEDUPE_VALUE_LEN] {
        let mut value = [0u8; DEDUPE_VALUE_LEN];
        value[..2].copy_from_slice(&self.partition.to_be_bytes());
        value[2..10].copy_from_slice(&self.seq.to_be_bytes());
        value[10..].copy_from_slice(&self.at_ms.to_be_bytes());
        value
    }

    pub(crate) fn decode(value: &[u8]) -> Result<DedupeHit, StorageError> {
        if value.len() != DEDUPE_VALUE_LEN {
            return Err(corrupt(
                "dedupe value",
                format!("length {} != {DEDUPE_VALUE_LEN}", value.len()),
            ));
        }
        Ok(DedupeHit {
            partition: be_u16(&value[..2]),
            seq: be_u64(&value[2..10]),
            at_ms: be_i64(&value[10..]),
        })
    }
}

pub(crate) fn checkpoint_value(seq: u64, state: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(CHECKPOINT_HEADER_LEN + state.len());
    value.extend_from_slice(&seq.to_be_bytes());
    value.extend_from_slice(state);
    value
}

/// Splits a checkpoint value into `(seq, state)`.
pub(crate) fn parse_checkpoint_value(value: &[u8]) -> Result<(u64, &[u8]), StorageError> {
    if value.len() < CHECKPOINT_HEADER_LEN {
        return Err(corrupt(
            "checkpoint",
            format!("length {} < {CHECKPOINT_HEADER_LEN}", value.len()),
        ));
    }
    let (seq, state) = value.split_at(CHECKPOINT_HEADER_LEN);
    Ok((be_u64(seq), state))
}

pub(crate) fn outbox_done_value(cause: (u16, u64)) -> [u8; OUTBOX_DONE_VALUE_LEN] {
    let mut value = [0u8; OUTBOX_DONE_VALUE_LEN];
    value[..2].copy_from_slice(&cause.0.to_be_bytes());
    value[2..].copy_from_slice(&cause.1.to_be_bytes());
    value
}

pub(crate) fn parse_outbox_done_value(value: &[u8]) -> Result<(u16, u64), StorageError> {
    if value.len() != OUTBOX_DONE_VALUE_LEN {
        return Err(corrupt(
            "outbox_done value",
            format!("length {} != {OUTBOX_DONE_VALUE_LEN}", value.len()),
        ));
    }
    Ok((be_u16(&value[..2]), be_u64(&value[2..])))
}

pub(crate) fn parse_effect_id(key: &[u8]) -> Result<[u8; 16], StorageError> {
    key.try_into()
        .map_err(|_| corrupt("effect id", format!("length {} != 16", key.len())))
}

fn corrupt(what: &'static str, detail: String) -> StorageError {
    StorageError::Corrupt { what, detail }
}

// The helpers below are only called on slices whose length was checked just before, so the
// fixed-size conversions cannot fail; a zero-padded fallback keeps them panic-free regardless.
fn be_u16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes(bytes.try_into().unwrap_or_default())
}

fn be_u64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().unwrap_or_default())
}

fn be_i64(bytes: &[u8]) -> i64 {
    i64::from_be_bytes(bytes.try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_partition_then_seq() {
        let mut keys = [
            log_key(1, 2),
            log_key(0, u64::MAX),
            log_key(1, 1),
            log_key(0, 256),
        ];
        keys.sort();
        let parsed: Vec<_> = keys.iter().map(|k| parse_log_key(k).unwrap()).collect();
        assert_eq!(parsed, vec![(0, 256), (0, u64::MAX), (1, 1), (1, 2)]);
        assert!(log_partition_end(0).unwrap() > log_key(0, u64::MAX));
        assert_eq!(log_partition_end(u16::MAX), None);
    }

    #[test]
    fn fixed_values_roundtrip_and_reject_wrong_lengths() {
        let hit = DedupeHit {
            partition: 7,
            seq: 42,
            at_ms: -5,
        };
        assert_eq!(DedupeHit::decode(&hit.encode()).unwrap(), hit);
        assert!(DedupeHit::decode(&[0; 17]).is_err());

        let record = record_value(123, b"payload");
        assert_eq!(parse_record_value(&record).unwrap(), (123, &b"payload"[..]));
        assert!(parse_record_value(&[0; 7]).is_err());

        let checkpoint = checkpoint_value(9, b"state");
        assert_eq!(
            parse_checkpoint_value(&checkpoint).unwrap(),
            (9, &b"state"[..])
        );
        assert_eq!(
            parse_outbox_done_value(&outbox_done_value((3, 4))).unwrap(),
            (3, 4)
        );
        assert!(parse_effect_id(&[0; 15]).is_err());
    }
}

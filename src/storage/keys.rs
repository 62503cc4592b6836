//! Byte layouts of the fixed-format keys and values in the column families (see the table in
//! `storage/mod.rs`). It owns nothing but these conversions; it must not touch a database, so the
//! layouts stay testable and the one place to read when a format question comes up.
//!
//! Integers are big-endian everywhere: in keys so that RocksDB's bytewise order is numeric order
//! (a partition's log is one contiguous, seq-ordered range), in values for consistency.

use super::StorageError;

/// Length of a `log` key: partition (2) + seq (8).
pub(crate) const LOG_KEY_LEN: usize = 2 + 8;
/// Length of the header of a log value: `at_ms` (8) + number of payloads (4).
pub(crate) const RECORD_HEADER_LEN: usize = 8 + 4;
/// Length of the length in front of each payload of a log value.
pub(crate) const PAYLOAD_LEN_LEN: usize = 4;
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

/// Refuses a run of payloads that a log value cannot hold: more payloads, or a longer one, than
/// the format's 32-bit counts.
pub(crate) fn check_run(
    mut payload_lens: impl ExactSizeIterator<Item = usize>,
) -> Result<(), StorageError> {
    if u32::try_from(payload_lens.len()).is_err()
        || payload_lens.any(|len| u32::try_from(len).is_err())
    {
        return Err(StorageError::Encode(format!(
            "a log record holds at most {} payloads of at most {} bytes",
            u32::MAX,
            u32::MAX
        )));
    }
    Ok(())
}

/// The length of the log value of `payloads`.
pub(crate) fn encoded_run_len(payloads: &[&[u8]]) -> usize {
    RECORD_HEADER_LEN
        + payloads
            .iter()
            .map(|p| PAYLOAD_LEN_LEN + p.len())
            .sum::<usize>()
}

/// Appends to `out` the log value holding `payloads`: the records of consecutive seqs from its
/// key's seq on, all accepted at `at_ms`. Layout: `at_ms` `i64` ++ count `u32` ++ (length
/// `u32` ++ payload) per payload. The caller has passed [`check_run`]; a count that does not
/// fit would be written as `u32::MAX` (which the parser then refuses), never wrapped.
pub(crate) fn encode_run(out: &mut Vec<u8>, at_ms: i64, payloads: &[&[u8]]) {
    out.reserve(encoded_run_len(payloads));
    out.extend_from_slice(&at_ms.to_be_bytes());
    out.extend_from_slice(&u32_or_max(payloads.len()).to_be_bytes());
    for payload in payloads {
        out.extend_from_slice(&u32_or_max(payload.len()).to_be_bytes());
        out.extend_from_slice(payload);
    }
}

fn u32_or_max(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A whole log value (the writer encodes straight into its batch).
#[cfg(test)]
pub(crate) fn record_value(at_ms: i64, payloads: &[&[u8]]) -> Vec<u8> {
    let mut value = Vec::new();
    encode_run(&mut value, at_ms, payloads);
    value
}

/// A parsed log value: when its payloads were accepted and the payloads, in seq order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Run<'v> {
    pub at_ms: i64,
    pub payloads: Vec<&'v [u8]>,
}

/// Parses a log value, checking every length: a value that ends early, has bytes after its
/// last payload, or holds no payload is corrupt.
pub(crate) fn parse_record_value(value: &[u8]) -> Result<Run<'_>, StorageError> {
    let (count, mut rest) = run_header(value)?;
    let at_ms = be_i64(&value[..8]);
    let mut payloads = Vec::with_capacity(count as usize);
    for index in 0..count {
        if rest.len() < PAYLOAD_LEN_LEN {
            return Err(corrupt(
                "log record",
                format!("payload {index} of {count}: no length"),
            ));
        }
        let (len, after) = rest.split_at(PAYLOAD_LEN_LEN);
        let len = be_u32(len) as usize;
        if after.len() < len {
            return Err(corrupt(
                "log record",
                format!(
                    "payload {index} of {count}: length {len} > {} bytes left",
                    after.len()
                ),
            ));
        }
        let (payload, after) = after.split_at(len);
        payloads.push(payload);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(corrupt(
            "log record",
            format!("{} bytes after payload {count}", rest.len()),
        ));
    }
    Ok(Run { at_ms, payloads })
}

/// The number of payloads of a log value, from its header alone (recovering a partition's
/// last seq needs no more).
pub(crate) fn record_count(value: &[u8]) -> Result<u32, StorageError> {
    run_header(value).map(|(count, _)| count)
}

/// The last seq of a record whose first seq is `first` and which holds `count` payloads: the
/// one rule for a record's seq range (replay, trim and recovery use it). A record without
/// payloads, or one reaching past `u64::MAX`, is corrupt: the writer never makes either.
pub(crate) fn record_last_seq(first: u64, count: u64) -> Result<u64, StorageError> {
    count
        .checked_sub(1)
        .and_then(|extra| first.checked_add(extra))
        .ok_or_else(|| {
            corrupt(
                "log record",
                format!("{count} payloads from seq {first}: no valid seq range"),
            )
        })
}

fn run_header(value: &[u8]) -> Result<(u32, &[u8]), StorageError> {
    if value.len() < RECORD_HEADER_LEN {
        return Err(corrupt(
            "log record",
            format!("length {} < {RECORD_HEADER_LEN}", value.len()),
        ));
    }
    let (header, rest) = value.split_at(RECORD_HEADER_LEN);
    let count = be_u32(&header[8..]);
    if count == 0 {
        return Err(corrupt("log record", "no payload".to_owned()));
    }
    Ok((count, rest))
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

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes.try_into().unwrap_or_default())
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

        let record = record_value(123, &[b"payload", b"", b"second"]);
        assert_eq!(record.len(), encoded_run_len(&[b"payload", b"", b"second"]));
        assert_eq!(
            parse_record_value(&record).unwrap(),
            Run {
                at_ms: 123,
                payloads: vec![&b"payload"[..], b"", b"second"]
            }
        );
        assert_eq!(record_count(&record).unwrap(), 3);
        // Too short for the header, no payload, a length past the end, bytes after the last.
        assert!(parse_record_value(&[0; 11]).is_err());
        assert!(parse_record_value(&record_value(1, &[])).is_err());
        assert!(record_count(&record_value(1, &[])).is_err());
        assert!(parse_record_value(&record[..record.len() - 1]).is_err());
        let mut longer = record.clone();
        longer.push(0);
        assert!(parse_record_value(&longer).is_err());
        let mut wrong_count = record.clone();
        wrong_count[11] = 4;
        assert!(parse_record_value(&wrong_count).is_err());

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

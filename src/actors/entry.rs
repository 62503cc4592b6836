//! What the engine writes to the log and to `meta`, and the keys it uses there.
//!
//! | meta key | value |
//! |---|---|
//! | `cs/` ++ customer id (16 bytes) | [`PersistedCustomer`]: a customer's state and the last seq it reflects |
//! | `cust/` ++ customer id | [`crate::domain::customer::CustomerProfile`] (listing, lookups) |
//! | `alias/` ++ alias | customer id (16 bytes) |
//! | `late/` ++ key ++ `\0` ++ transaction id | [`LateEvent`]: usage for an unknown customer |
//! | `engine/partitions` | partition count fixed at first start (u16 BE) |

use serde::{Deserialize, Serialize};

use crate::domain::catalog::CatalogChange;
use crate::domain::customer::legacy::CustomerV4;
use crate::domain::customer::{Customer, CustomerV3, Input};
use crate::domain::gate::WorkflowState;
use crate::domain::usage::UsageEvent;
use crate::domain::{Id, Timestamp};
use crate::storage::{self, StorageError};

/// Version byte of encoded log entries (2: payment outcomes carry the ACTION_REQUIRED limit and
/// the provider's object id; catalog changes include logged limits; 3: operators' quarantine
/// decisions; 4: usage for an unknown customer carries the catalog version it was accepted
/// at, [`LogEntry::UnmatchedAt`]; 5: operators' cancels of workflows; 6: contracts created and
/// edited with recharge rails and end dates, as new input kinds; 7: alerts in the catalog and
/// alert resets, as new kinds; 8: customer-level commits and credits, as new kinds; 9: manual
/// ledger entries, and contract and customer-level commit inputs with custom fields, balance
/// specifiers and archives, as new kinds; 10: contract and customer-level commit inputs with
/// custom pricing units, as new kinds, and the catalog's credit types and conversions).
/// Versions 2 to 9 read as they are (3 to 9 only added
/// kinds: the
/// earlier contract inputs keep their kinds and shapes, see
/// [`crate::domain::customer::legacy`]); an older binary meeting a newer entry refuses it with
/// the version named.
pub const LOG_VERSION: u8 = 10;
/// The previous log versions, still read.
pub const LOG_VERSION_V2: u8 = 2;
pub const LOG_VERSION_V3: u8 = 3;
pub const LOG_VERSION_V4: u8 = 4;
pub const LOG_VERSION_V5: u8 = 5;
pub const LOG_VERSION_V6: u8 = 6;
pub const LOG_VERSION_V7: u8 = 7;
pub const LOG_VERSION_V8: u8 = 8;
pub const LOG_VERSION_V9: u8 = 9;

/// Decodes a log entry of the current or the previous version.
///
/// # Errors
/// [`StorageError::UnknownVersion`] for any other version, decode errors.
pub fn decode_log_entry(bytes: &[u8]) -> Result<LogEntry, StorageError> {
    let version = match bytes.first() {
        Some(&LOG_VERSION_V2) => LOG_VERSION_V2,
        Some(&LOG_VERSION_V3) => LOG_VERSION_V3,
        Some(&LOG_VERSION_V4) => LOG_VERSION_V4,
        Some(&LOG_VERSION_V5) => LOG_VERSION_V5,
        Some(&LOG_VERSION_V6) => LOG_VERSION_V6,
        Some(&LOG_VERSION_V7) => LOG_VERSION_V7,
        Some(&LOG_VERSION_V8) => LOG_VERSION_V8,
        Some(&LOG_VERSION_V9) => LOG_VERSION_V9,
        _ => LOG_VERSION,
    };
    storage::decode(version, bytes)
}
/// Version byte of encoded customer states (2: usage lines record the segments they drew
/// from; 3: the state lists its quarantined inputs; 4: the customer keeps its workflows'
/// history of state changes; 5: threshold configurations keep their recharge rails and holds,
/// contracts what their lifecycle notices announced; 6: where the customer stands on each
/// alert; 7: its customer-level commits and credits; 8: commits with custom fields and manual
/// ledger entries, prepaid thresholds with balance specifiers; 9: commits, usage lines and
/// prepaid thresholds in custom pricing units). Versions 2 to 8 are read and upgraded
/// ([`PersistedCustomerV2`] to [`PersistedCustomerV8`]); any other version is refused
/// with the version named, never misread.
pub const STATE_VERSION: u8 = 9;
/// The previous state versions, still read.
pub const STATE_VERSION_V2: u8 = 2;
pub const STATE_VERSION_V3: u8 = 3;
pub const STATE_VERSION_V4: u8 = 4;
pub const STATE_VERSION_V5: u8 = 5;
pub const STATE_VERSION_V6: u8 = 6;
pub const STATE_VERSION_V7: u8 = 7;
pub const STATE_VERSION_V8: u8 = 8;
/// Version byte of other meta values.
pub const META_VERSION: u8 = 1;

/// The log partition that carries catalog changes (never trimmed, replayed whole at start).
pub const CATALOG_PARTITION: u16 = u16::MAX;

/// One record of a partition log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LogEntry {
    /// An input for one customer, with the catalog version it is rated against.
    Customer {
        customer_id: Id,
        catalog_version: u64,
        input: Input,
    },
    /// Usage whose `customer_id` matched no customer or alias when it arrived, as versions 2
    /// and 3 logged it: it is rated by the catalog in force when it is finally applied.
    Unmatched { key: String, event: UsageEvent },
    /// A change to the shared catalog (only in [`CATALOG_PARTITION`]).
    Catalog(CatalogChange),
    /// Usage whose `customer_id` matched no customer or alias when it arrived, with the
    /// catalog version it was accepted at: like every event, it is rated by that catalog
    /// (SPEC 2.1: an archive or a new rate affects events accepted after it), however late
    /// its customer or alias appears.
    UnmatchedAt {
        key: String,
        catalog_version: u64,
        event: UsageEvent,
    },
}

/// A customer's state as checkpointed: the state and the last log seq applied to it. Replay
/// skips inputs at or below `applied_seq`, so writing a state at any time is safe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedCustomer {
    pub applied_seq: u64,
    pub customer: Customer,
    /// Usage that reached the customer's log before its `CreateCustomer` input applied (an
    /// alias registered a moment earlier); applied, in order, right after creation.
    pub parked: Vec<Parked>,
    /// Inputs of this customer in quarantine, by log position (`seq`, `index`), in log order:
    /// what an operator's re-apply or discard may still decide on. Kept in the state (not only
    /// in `quar/`) so that replay decides the same way: an input that replay after an upgrade
    /// applies is not in this list, and a later re-apply of it changes nothing.
    pub quarantined: Vec<(u64, u32)>,
    /// The latest acceptance time of an input applied to it: its alarm is computed from there
    /// (an input applied out of its time, a re-applied quarantined one, must not set an alarm
    /// in the past).
    pub last_input_at: Timestamp,
}

/// A customer state as version 2 wrote it (no quarantine list, no workflow history).
#[derive(Deserialize)]
pub struct PersistedCustomerV2 {
    pub applied_seq: u64,
    pub customer: CustomerV3,
    pub parked: Vec<Parked>,
}

impl From<PersistedCustomerV2> for PersistedCustomer {
    fn from(old: PersistedCustomerV2) -> PersistedCustomer {
        PersistedCustomer {
            applied_seq: old.applied_seq,
            customer: old.customer.into(),
            parked: old.parked,
            quarantined: Vec::new(),
            last_input_at: Timestamp::default(),
        }
    }
}

/// A customer state as version 3 wrote it (no workflow history).
#[derive(Deserialize)]
pub struct PersistedCustomerV3 {
    pub applied_seq: u64,
    pub customer: CustomerV3,
    pub parked: Vec<Parked>,
    pub quarantined: Vec<(u64, u32)>,
}

impl From<PersistedCustomerV3> for PersistedCustomer {
    fn from(old: PersistedCustomerV3) -> PersistedCustomer {
        PersistedCustomer {
            applied_seq: old.applied_seq,
            customer: old.customer.into(),
            parked: old.parked,
            quarantined: old.quarantined,
            last_input_at: Timestamp::default(),
        }
    }
}

/// A customer state as version 4 wrote it (contracts without rails or lifecycle).
#[derive(Deserialize)]
pub struct PersistedCustomerV4 {
    pub applied_seq: u64,
    pub customer: CustomerV4,
    pub parked: Vec<Parked>,
    pub quarantined: Vec<(u64, u32)>,
}

impl From<PersistedCustomerV4> for PersistedCustomer {
    fn from(old: PersistedCustomerV4) -> PersistedCustomer {
        PersistedCustomer {
            applied_seq: old.applied_seq,
            customer: old.customer.into(),
            parked: old.parked,
            quarantined: old.quarantined,
            last_input_at: Timestamp::default(),
        }
    }
}

/// A customer state as version 5 wrote it (no alert statuses).
#[derive(Deserialize, Serialize)]
pub struct PersistedCustomerV5 {
    pub applied_seq: u64,
    pub customer: crate::domain::customer::legacy::CustomerV5,
    pub parked: Vec<Parked>,
    pub quarantined: Vec<(u64, u32)>,
    pub last_input_at: Timestamp,
}

impl From<PersistedCustomerV5> for PersistedCustomer {
    fn from(old: PersistedCustomerV5) -> PersistedCustomer {
        PersistedCustomer {
            applied_seq: old.applied_seq,
            customer: old.customer.into(),
            parked: old.parked,
            quarantined: old.quarantined,
            last_input_at: old.last_input_at,
        }
    }
}

/// A customer state as version 6 wrote it (no customer-level commits).
#[derive(Deserialize, Serialize)]
pub struct PersistedCustomerV6 {
    pub applied_seq: u64,
    pub customer: crate::domain::customer::legacy::CustomerV6,
    pub parked: Vec<Parked>,
    pub quarantined: Vec<(u64, u32)>,
    pub last_input_at: Timestamp,
}

impl From<PersistedCustomerV6> for PersistedCustomer {
    fn from(old: PersistedCustomerV6) -> PersistedCustomer {
        PersistedCustomer {
            applied_seq: old.applied_seq,
            customer: old.customer.into(),
            parked: old.parked,
            quarantined: old.quarantined,
            last_input_at: old.last_input_at,
        }
    }
}

/// A customer state as version 7 wrote it (no custom fields, manual entries or balance
/// specifiers).
#[derive(Deserialize, Serialize)]
pub struct PersistedCustomerV7 {
    pub applied_seq: u64,
    pub customer: crate::domain::customer::legacy::CustomerV7,
    pub parked: Vec<Parked>,
    pub quarantined: Vec<(u64, u32)>,
    pub last_input_at: Timestamp,
}

impl From<PersistedCustomerV7> for PersistedCustomer {
    fn from(old: PersistedCustomerV7) -> PersistedCustomer {
        PersistedCustomer {
            applied_seq: old.applied_seq,
            customer: old.customer.into(),
            parked: old.parked,
            quarantined: old.quarantined,
            last_input_at: old.last_input_at,
        }
    }
}

/// A customer state as version 8 wrote it (fiat only).
#[derive(Deserialize, Serialize)]
pub struct PersistedCustomerV8 {
    pub applied_seq: u64,
    pub customer: crate::domain::customer::legacy8::CustomerV8,
    pub parked: Vec<Parked>,
    pub quarantined: Vec<(u64, u32)>,
    pub last_input_at: Timestamp,
}

impl From<PersistedCustomerV8> for PersistedCustomer {
    fn from(old: PersistedCustomerV8) -> PersistedCustomer {
        PersistedCustomer {
            applied_seq: old.applied_seq,
            customer: old.customer.into(),
            parked: old.parked,
            quarantined: old.quarantined,
            last_input_at: old.last_input_at,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    pub at: Timestamp,
    pub catalog_version: u64,
    pub event: UsageEvent,
}

/// Usage kept for an unknown customer key (34 days at most).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateEvent {
    pub at_ms: i64,
    pub event: UsageEvent,
    /// The catalog version it was accepted at; `None` for one kept by a version that did not
    /// record it (released with the catalog in force then, as that version did).
    pub catalog_version: Option<u64>,
}

/// Version byte of a [`LateEvent`] value (2: with its catalog version).
const LATE_VERSION: u8 = 2;
/// The first version of `late/` values, still read.
const LATE_VERSION_V1: u8 = 1;

/// A [`LateEvent`] as version 1 of the `late/` values held it.
#[derive(Deserialize)]
struct LateEventV1 {
    at_ms: i64,
    event: UsageEvent,
}

/// Encodes a `late/` value.
///
/// # Errors
/// Encoding errors.
pub fn encode_late(late: &LateEvent) -> Result<Vec<u8>, StorageError> {
    storage::encode(LATE_VERSION, late)
}

/// Decodes a `late/` value of either version.
///
/// # Errors
/// [`StorageError::UnknownVersion`] for another version, decode errors.
pub fn decode_late(bytes: &[u8]) -> Result<LateEvent, StorageError> {
    if bytes.first() == Some(&LATE_VERSION_V1) {
        let old: LateEventV1 = storage::decode(LATE_VERSION_V1, bytes)?;
        return Ok(LateEvent {
            at_ms: old.at_ms,
            event: old.event,
            catalog_version: None,
        });
    }
    storage::decode(LATE_VERSION, bytes)
}

pub fn state_key(customer: Id) -> Vec<u8> {
    let mut key = b"cs/".to_vec();
    key.extend_from_slice(customer.as_bytes());
    key
}

pub fn profile_key(customer: Id) -> Vec<u8> {
    let mut key = b"cust/".to_vec();
    key.extend_from_slice(customer.as_bytes());
    key
}

pub const PROFILE_PREFIX: &[u8] = b"cust/";
pub const ALIAS_PREFIX: &[u8] = b"alias/";
pub const LATE_PREFIX: &[u8] = b"late/";
pub const PARTITIONS_KEY: &[u8] = b"engine/partitions";

pub fn alias_key(alias: &str) -> Vec<u8> {
    let mut key = ALIAS_PREFIX.to_vec();
    key.extend_from_slice(alias.as_bytes());
    key
}

/// `late/` ++ key length (u32, big-endian) ++ key: length-prefixed, so no key's prefix is
/// another key's (with a separator byte, `acme\0x` would sort under `acme`'s prefix).
pub fn late_prefix(customer_key: &str) -> Vec<u8> {
    let bytes = customer_key.as_bytes();
    let mut key = Vec::with_capacity(LATE_PREFIX.len() + 4 + bytes.len());
    key.extend_from_slice(LATE_PREFIX);
    key.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    key.extend_from_slice(bytes);
    key
}

/// The customer key of a `late/` entry's key (the inverse of [`late_key`]'s first part).
pub fn late_customer_key(key: &[u8]) -> Option<&[u8]> {
    let rest = key.strip_prefix(LATE_PREFIX)?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    rest.get(..u32::from_be_bytes(*len) as usize)
}

pub fn late_key(customer_key: &str, transaction_id: &str) -> Vec<u8> {
    let mut key = late_prefix(customer_key);
    key.extend_from_slice(transaction_id.as_bytes());
    key
}

/// The dedupe key of an ingested transaction id: a 128-bit hash of it, so keys are short and
/// evenly spread (RocksDB compares them on every insert and lookup), whatever ids clients use.
pub fn transaction_key(transaction_id: &str) -> Vec<u8> {
    dedupe_key(b"tx:", transaction_id)
}

/// The dedupe key of a late event re-submitted to its customer: a crash between re-submission
/// and cleanup re-submits, and this key makes the second copy a duplicate.
pub fn late_apply_key(transaction_id: &str) -> Vec<u8> {
    dedupe_key(b"late:", transaction_id)
}

/// XXH3-128 of `domain` + `id`: two different ids share a key with probability 2^-128 per pair.
fn dedupe_key(domain: &[u8], id: &str) -> Vec<u8> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(domain);
    hasher.update(id.as_bytes());
    hasher.digest128().to_be_bytes().to_vec()
}

/// The partition owning a customer.
pub fn partition_of(customer: Id, partitions: u16) -> u16 {
    // The low bits of a UUID are random (v4) or hash output (v5): a fair spread.
    (customer.as_u128() % u128::from(partitions.max(1))) as u16
}

/// The partition keeping late events of an unknown key.
pub fn partition_of_key(key: &str, partitions: u16) -> u16 {
    partition_of(Id::from_key("late-key", key), partitions)
}

/// The prefix of the workflow index.
pub fn workflow_key_prefix() -> &'static [u8] {
    b"wf/"
}

/// `wf/` ++ workflow id -> customer id: the release endpoint names only the workflow.
pub fn workflow_key(workflow: Id) -> Vec<u8> {
    let mut key = workflow_key_prefix().to_vec();
    key.extend_from_slice(workflow.as_bytes());
    key
}

/// The states of a workflow in flight, as the `wfs/` index keeps them.
pub const IN_FLIGHT_STATES: [WorkflowState; 4] = [
    WorkflowState::Initiated,
    WorkflowState::AwaitingExternal,
    WorkflowState::Charging,
    WorkflowState::ActionRequired,
];

/// `wfs/` ++ state name ++ `/`: the workflows in flight in `state`.
pub fn workflow_state_prefix(state: WorkflowState) -> Vec<u8> {
    format!("wfs/{}/", state.as_str()).into_bytes()
}

/// `wfs/` ++ state name ++ `/` ++ workflow id -> customer id: written with the effects of the
/// input that moved the workflow into `state`, deleted by the one that moves it on.
pub fn workflow_state_key(state: WorkflowState, workflow: Id) -> Vec<u8> {
    let mut key = workflow_state_prefix(state);
    key.extend_from_slice(workflow.as_bytes());
    key
}

/// Set once the workflow indexes (`wfs/`, `wfg/`, `wfi/`, `wfe/`) cover every customer state
/// (built at the first start of a version that keeps them).
pub const WORKFLOW_STATE_INDEX_MARK: &[u8] = b"engine/wf-indexes-2";

/// The gate names of the per-gate workflow indexes.
pub const GATES: [crate::domain::gate::GateType; 3] = [
    crate::domain::gate::GateType::None,
    crate::domain::gate::GateType::External,
    crate::domain::gate::GateType::Stripe,
];

pub fn gate_name(gate: crate::domain::gate::GateType) -> &'static str {
    match gate {
        crate::domain::gate::GateType::None => "NONE",
        crate::domain::gate::GateType::External => "EXTERNAL",
        crate::domain::gate::GateType::Stripe => "STRIPE",
    }
}

/// `wfg/<GATE>/` ++ id: every workflow started with this gate (`wfi/`: those in flight,
/// `wfe/<GATE>/<RELEASED|FAILED>/`: those that ended so). Counted for the metrics that must add
/// up: started = released + failed + in flight, for every gate.
pub fn gate_prefix(index: &str, gate: crate::domain::gate::GateType) -> Vec<u8> {
    format!("{index}/{}/", gate_name(gate)).into_bytes()
}

pub fn ended_prefix(gate: crate::domain::gate::GateType, state: WorkflowState) -> Vec<u8> {
    format!("wfe/{}/{}/", gate_name(gate), state.as_str()).into_bytes()
}

/// `inv/` ++ invoice id -> customer id: voiding names only the invoice.
pub fn invoice_key(invoice: Id) -> Vec<u8> {
    let mut key = b"inv/".to_vec();
    key.extend_from_slice(invoice.as_bytes());
    key
}

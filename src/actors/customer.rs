//! `CustomerActor`: the one writer of one customer's state.
//!
//! It lives on its partition's arbiter, receives the customer's inputs in log order (one message
//! per customer per batch, never one per event), applies them with the pure domain, writes the
//! resulting effects to the outbox before answering anyone, and hands them to the webhook and
//! payment actors. Its state is checkpointed by the partition worker; an idle actor is evicted
//! after writing its state and is re-created from it on the next input.
//!
//! The same [`apply_logged`] function runs live and during recovery replay, so both reach the
//! same state, effects and ids.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use actix::{Actor, Context, Handler, Message};
use tokio::sync::oneshot;

use super::entry::{
    LogEntry, PersistedCustomer, PersistedCustomerV2, PersistedCustomerV3, PersistedCustomerV4,
    PersistedCustomerV5, PersistedCustomerV6, PersistedCustomerV7, PersistedCustomerV8,
    STATE_VERSION, STATE_VERSION_V2, STATE_VERSION_V3, STATE_VERSION_V4, STATE_VERSION_V5,
    STATE_VERSION_V6, STATE_VERSION_V7, STATE_VERSION_V8, state_key,
};
use super::error::EngineError;
use super::handles::QueryFn;
use super::metrics::EngineMetrics;
use super::outbox::{OutboxEffect, OutboxEntry, payment_outbox_id, webhook_outbox_id};
use super::quarantine::{
    QUARANTINE_PREFIX, QuarantineCause, QuarantineWrites, Quarantined, Resolution, Resolved,
    catching, panic_message, quarantine_key, reappliable,
};
use super::shared::Shared;
use crate::domain::customer::{
    Applied, Ctx, Customer, Input, QuarantineAction, QuarantineDecision,
};
use crate::domain::effects::{Effect, NoticeType, PaymentAction, WebhookType};
use crate::domain::gate::{GateType, WorkflowState};
use crate::domain::{Id, Rejection, Timestamp};
use crate::storage::{self, StorageError};

/// One logged input on its way to the customer.
pub struct Sequenced {
    pub seq: u64,
    pub at: Timestamp,
    pub catalog_version: u64,
    pub input: Input,
    /// Who waits for the verdict (control inputs); usage is acknowledged at durability.
    pub reply: Option<oneshot::Sender<Result<Applied, EngineError>>>,
}

/// Applies inputs in order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyInputs(pub Vec<Sequenced>);

/// Returns the encoded state if it changed since the last snapshot (checkpoint).
#[derive(Message)]
#[rtype(result = "Option<Vec<u8>>")]
pub struct Snapshot {
    /// Encode even if unchanged (after a failed checkpoint write).
    pub force: bool,
}

/// Returns the encoded state if it changed, then stops (idle eviction).
#[derive(Message)]
#[rtype(result = "Option<Vec<u8>>")]
pub struct Evict;

/// Reads the state (HTTP reads: contracts, balances, invoices).
#[derive(Message)]
#[rtype(result = "Box<dyn Any + Send>")]
pub struct Query(pub QueryFn);

pub struct CustomerActor {
    pub id: Id,
    pub partition: u16,
    pub state: PersistedCustomer,
    pub dirty: bool,
    pub shared: Arc<Shared>,
}

impl Actor for CustomerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.shared.settings.mailbox_capacity);
        self.shared.metrics.actors_resident.fetch_add(1, Relaxed);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shared.metrics.actors_resident.fetch_sub(1, Relaxed);
    }
}

impl Handler<ApplyInputs> for CustomerActor {
    type Result = ();

    fn handle(&mut self, msg: ApplyInputs, _: &mut Self::Context) {
        let count = msg.0.len();
        let mut effects = Vec::new();
        let mut moves = WorkflowMoves::default();
        let mut quarantined = QuarantineWrites::default();
        let mut replies = Vec::new();
        let mut last_seq = self.state.applied_seq;
        let now_ms = self.shared.clock.now_ms();
        for sequenced in msg.0 {
            let lag_ms = now_ms.saturating_sub(sequenced.at.0).max(0);
            let lag_micros = u64::try_from(lag_ms).unwrap_or(0).saturating_mul(1_000);
            self.shared.metrics.apply_lag.observe_micros(lag_micros);
            let logged = Logged {
                partition: self.partition,
                seq: sequenced.seq,
                customer_id: self.id,
                at: sequenced.at,
                catalog_version: sequenced.catalog_version,
                input: &sequenced.input,
            };
            let result = apply_logged(
                &self.shared,
                &mut self.state,
                logged,
                Pass::Live,
                &mut quarantined,
            );
            last_seq = last_seq.max(sequenced.seq);
            if let Ok(applied) = &result {
                effects.extend(applied.effects.iter().cloned());
                moves.add(applied, self.id, &self.state.customer);
                count_gate_moves(&self.shared, applied, &self.state.customer);
                log_business_events(self.id, applied);
            }
            if let Some(reply) = sequenced.reply {
                replies.push((reply, result));
            }
        }
        self.dirty = true;
        // Effects and quarantined inputs reach storage before anyone hears of the inputs'
        // outcome, and before this actor can be snapshotted (the next message), so a checkpoint
        // never covers an input whose effects are not in the outbox.
        let persisted = persist_quarantined(&self.shared, &quarantined).and_then(|()| {
            persist_effects(&self.shared, (self.partition, last_seq), &effects, &moves)
        });
        match persisted {
            Ok(entries) => self.shared.notify_effects(entries),
            Err(_) if crate::defects::active(crate::defects::Defect::EffectsLost) => {}
            Err(error) => {
                // The inputs are durable in the log; a restart replays them and re-creates what
                // was not written. Fail-stop: never answer success without them.
                self.shared.health.fail_stop("outbox write", &error);
                for (reply, _) in replies.drain(..) {
                    let _ = reply.send(Err(EngineError::Storage(error.clone())));
                }
            }
        }
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
        self.shared.pending[usize::from(self.partition)].applied(count);
    }
}

/// Counts workflows started and ended, by gate (live inputs; at start the counters are
/// rebuilt from the `wfg/` and `wfe/` indexes, so they add up after a restart).
fn count_gate_moves(shared: &Shared, applied: &Applied, after: &Customer) {
    for change in &applied.transitions {
        let gate = after
            .workflow(change.workflow_id)
            .map_or(GateType::None, |w| w.gate.gate_type);
        shared.metrics.gates.count(gate, change.state);
    }
}

/// Logs at INFO, with their ids, what an applied input did to money: thresholds reached,
/// workflow state changes, payment outcomes and refunds (live inputs only: replay repeats
/// nothing). Each line has an `event` field: `threshold_reached`, `workflow_state`,
/// `payment_outcome`, `payment_refunded`.
fn log_business_events(customer: Id, applied: &Applied) {
    for effect in &applied.effects {
        let hook = match effect {
            Effect::Webhook(hook) => hook,
            Effect::Notice(notice) if notice.notice_type == NoticeType::RechargeLimited => {
                tracing::warn!(
                    event = "recharge_limited",
                    customer = %customer,
                    contract = %notice.contract_id,
                    limit = notice.body["properties"]["limit"].as_str().unwrap_or(""),
                    held_until = notice.body["properties"]["held_until"].as_str().unwrap_or(""),
                    "a recharge safety rail holds a recharge back"
                );
                continue;
            }
            _ => continue,
        };
        match hook.webhook_type {
            WebhookType::ThresholdReached => tracing::info!(
                event = "threshold_reached",
                customer = %customer,
                contract = %hook.contract_id,
                workflow = %hook.workflow_id,
                kind = hook.workflow_type.as_str(),
                "threshold reached"
            ),
            WebhookType::PaymentStatus => tracing::info!(
                event = "payment_outcome",
                customer = %customer,
                workflow = %hook.workflow_id,
                status = ?hook.payment_status,
                error = hook.error_message.as_deref().unwrap_or(""),
                "payment outcome"
            ),
            WebhookType::PaymentRefunded => tracing::info!(
                event = "payment_refunded",
                customer = %customer,
                workflow = %hook.workflow_id,
                refund = hook.refund_id.as_deref().unwrap_or(""),
                "payment refunded"
            ),
            _ => {}
        }
    }
    for change in &applied.transitions {
        tracing::info!(
            event = "workflow_state",
            customer = %customer,
            workflow = %change.workflow_id,
            state = change.state.as_str(),
            reason = change.reason.as_deref().unwrap_or(""),
            "workflow state changed"
        );
    }
}

/// Writes quarantined inputs to `meta`, and moves the entries operators decided on (and stale
/// ones) out of the list.
///
/// # Errors
/// Storage errors.
pub fn persist_quarantined(
    shared: &Shared,
    quarantine: &QuarantineWrites,
) -> Result<(), StorageError> {
    if quarantine.is_empty() {
        return Ok(());
    }
    let (puts, deletes) = quarantine.encoded()?;
    shared.store.meta_write_derived_batch(&puts, &deletes)
}

impl Handler<Snapshot> for CustomerActor {
    type Result = Option<Vec<u8>>;

    fn handle(&mut self, msg: Snapshot, _: &mut Self::Context) -> Option<Vec<u8>> {
        if !self.dirty && !msg.force {
            return None;
        }
        match storage::encode(STATE_VERSION, &self.state) {
            Ok(bytes) => {
                self.dirty = false;
                Some(bytes)
            }
            Err(error) => {
                // The checkpoint must not advance past a state it did not write.
                self.shared.health.fail_stop("state encoding", &error);
                None
            }
        }
    }
}

impl Handler<Evict> for CustomerActor {
    type Result = Option<Vec<u8>>;

    fn handle(&mut self, _: Evict, ctx: &mut Self::Context) -> Option<Vec<u8>> {
        use actix::ActorContext;
        ctx.stop();
        match storage::encode(STATE_VERSION, &self.state) {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                self.shared.health.fail_stop("state encoding", &error);
                None
            }
        }
    }
}

impl Handler<Query> for CustomerActor {
    type Result = actix::MessageResult<Query>;

    fn handle(&mut self, msg: Query, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult((msg.0)(&self.state))
    }
}

/// Loads a customer's last written state, or an empty one.
///
/// # Errors
/// Storage read or decode errors (a corrupt state must stop the engine, not reset a customer).
pub fn load_state(shared: &Shared, customer: Id) -> Result<PersistedCustomer, StorageError> {
    decode_state(
        shared,
        customer,
        shared.store.meta_get(&state_key(customer))?.as_deref(),
    )
}

/// Loads the last written states of many customers (one batched read), or empty ones.
///
/// # Errors
/// As [`load_state`].
pub fn load_states(
    shared: &Shared,
    customers: &[Id],
) -> Result<Vec<PersistedCustomer>, StorageError> {
    let keys: Vec<Vec<u8>> = customers.iter().map(|id| state_key(*id)).collect();
    shared
        .store
        .meta_multi_get(&keys)?
        .into_iter()
        .zip(customers)
        .map(|(bytes, id)| decode_state(shared, *id, bytes.as_deref()))
        .collect()
}

fn decode_state(
    shared: &Shared,
    customer: Id,
    bytes: Option<&[u8]>,
) -> Result<PersistedCustomer, StorageError> {
    let Some(bytes) = bytes else {
        return Ok(PersistedCustomer::default());
    };
    let mut state: PersistedCustomer = match bytes.first() {
        Some(&STATE_VERSION_V2) => {
            let old = storage::decode::<PersistedCustomerV2>(STATE_VERSION_V2, bytes)?;
            upgraded_from_v2(shared, customer, old)?
        }
        Some(&STATE_VERSION_V3) => {
            storage::decode::<PersistedCustomerV3>(STATE_VERSION_V3, bytes)?.into()
        }
        Some(&STATE_VERSION_V4) => {
            storage::decode::<PersistedCustomerV4>(STATE_VERSION_V4, bytes)?.into()
        }
        Some(&STATE_VERSION_V5) => {
            storage::decode::<PersistedCustomerV5>(STATE_VERSION_V5, bytes)?.into()
        }
        Some(&STATE_VERSION_V6) => {
            storage::decode::<PersistedCustomerV6>(STATE_VERSION_V6, bytes)?.into()
        }
        Some(&STATE_VERSION_V8) => {
            storage::decode::<PersistedCustomerV8>(STATE_VERSION_V8, bytes)?.into()
        }
        Some(&STATE_VERSION_V7) => {
            storage::decode::<PersistedCustomerV7>(STATE_VERSION_V7, bytes)?.into()
        }
        _ => storage::decode(STATE_VERSION, bytes)?,
    };
    state.customer.rebuild_caches();
    Ok(state)
}

/// Builds the `wfs/` index (workflows in flight by state) from every written customer state,
/// once: at the first start of a version that keeps it, before recovery replays the log on top
/// of those states (which moves the index on as the live path does). A build cut short by a
/// crash is started again from nothing. Answers how many workflows it indexed, `None` when the
/// index was there already.
///
/// # Errors
/// Storage errors; an unreadable state.
pub fn build_workflow_state_index(shared: &Shared) -> Result<Option<usize>, StorageError> {
    use super::entry::{WORKFLOW_STATE_INDEX_MARK, workflow_state_key};
    if shared.store.meta_get(WORKFLOW_STATE_INDEX_MARK)?.is_some() {
        return Ok(None);
    }
    for (start, end) in [
        (&b"wfs/"[..], &b"wfs0"[..]),
        (b"wfg/", b"wfg0"),
        (b"wfi/", b"wfi0"),
        (b"wfe/", b"wfe0"),
    ] {
        shared.store.meta_delete_range_lazily(start, end)?;
    }
    const PAGE: usize = 512;
    let prefix: &[u8] = b"cs/";
    let (mut after, mut indexed) = (None::<Vec<u8>>, 0);
    loop {
        let page = shared
            .store
            .meta_scan_page(prefix, after.as_deref(), PAGE)?;
        let mut puts = Vec::new();
        for (key, bytes) in &page {
            let id = key
                .get(prefix.len()..)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(Id::from_bytes)
                .ok_or_else(|| StorageError::Corrupt {
                    what: "customer state key",
                    detail: hex::encode(key),
                })?;
            let state = decode_state(shared, id, Some(bytes))?;
            for workflow in state.customer.contracts.iter().flat_map(|c| &c.workflows) {
                let value = id.as_bytes().to_vec();
                let key = |mut prefix: Vec<u8>| {
                    prefix.extend_from_slice(workflow.id.as_bytes());
                    prefix
                };
                let gate = workflow.gate.gate_type;
                puts.push((key(super::entry::gate_prefix("wfg", gate)), value.clone()));
                if workflow.state.is_terminal() {
                    let ended = super::entry::ended_prefix(gate, workflow.state);
                    puts.push((key(ended), value));
                } else {
                    let state_key = workflow_state_key(workflow.state, workflow.id);
                    puts.push((state_key, value.clone()));
                    puts.push((key(super::entry::gate_prefix("wfi", gate)), value));
                }
            }
        }
        indexed += puts.len();
        shared.store.meta_write_derived(&puts)?;
        if page.len() < PAGE {
            break;
        }
        after = page.last().map(|(key, _)| key.clone());
    }
    // Synced: the index written above is durable with it.
    shared
        .store
        .meta_write_batch(&[(WORKFLOW_STATE_INDEX_MARK.to_vec(), vec![1])], &[])?;
    Ok(Some(indexed))
}

/// A version 2 state with its quarantine list: version 2 decided nothing, so every `quar/`
/// entry of this customer that the state covers is still quarantined in it (entries after
/// `applied_seq` are quarantined again by replay).
fn upgraded_from_v2(
    shared: &Shared,
    customer: Id,
    old: PersistedCustomerV2,
) -> Result<PersistedCustomer, StorageError> {
    let mut state = PersistedCustomer::from(old);
    for (_, value) in shared.store.meta_scan_prefix(QUARANTINE_PREFIX)? {
        let entry: Quarantined = storage::decode(super::entry::META_VERSION, &value)?;
        if entry.customer_id == customer && entry.seq <= state.applied_seq {
            state.quarantined.push((entry.seq, entry.index));
        }
    }
    Ok(state)
}

/// One logged input, as the log holds it.
#[derive(Clone, Copy)]
pub struct Logged<'a> {
    pub partition: u16,
    pub seq: u64,
    pub customer_id: Id,
    pub at: Timestamp,
    pub catalog_version: u64,
    pub input: &'a Input,
}

/// Applies one logged input to a customer's state: the function both live actors and recovery
/// use. Inputs at or below the state's `applied_seq` were applied before the state was written
/// and are skipped.
///
/// An input applies whole or not at all. One whose apply panics, and usage or a tick the domain
/// refuses (nobody waits for their verdict), is quarantined: pushed to `quarantine` for the
/// caller to persist with the batch's effects, and answered [`EngineError::Quarantined`]. An
/// operator's decision on a quarantined input ([`Input::Quarantine`]) is applied here too.
///
/// # Errors
/// [`EngineError::Rejected`] for a refused control input, [`EngineError::Quarantined`].
pub fn apply_logged(
    shared: &Shared,
    state: &mut PersistedCustomer,
    logged: Logged<'_>,
    pass: Pass,
    quarantine: &mut QuarantineWrites,
) -> Result<Applied, EngineError> {
    if logged.seq <= state.applied_seq {
        return Ok(Applied::default());
    }
    state.applied_seq = logged.seq;
    if let Input::Quarantine(action) = logged.input {
        return decide_quarantined(shared, state, logged, action, pass, quarantine);
    }
    apply_input(shared, state, logged, pass, quarantine, Attempt::First)
}

/// Which pass over an input [`apply_logged`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// A new input, applied by its customer's actor.
    Live,
    /// Replayed at recovery: the registry of aliases is reloaded after it.
    Recovery,
    /// Replayed to rebuild one customer's state while the engine runs (after a usage event
    /// failed part-way): what the inputs did beyond the state (aliases in the registry and in
    /// `meta`, late releases, counters) happened already, live, and is not done again: a
    /// replayed alias change of this customer would take back an alias another customer holds
    /// by now (found by the simulation).
    Rebuild,
}

/// Whether an input is applied for the first time (a failure quarantines it) or re-applied
/// from quarantine by an operator (a failure leaves it there and answers the operator).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempt {
    First,
    Reapply,
}

fn apply_input(
    shared: &Shared,
    state: &mut PersistedCustomer,
    logged: Logged<'_>,
    pass: Pass,
    quarantine: &mut QuarantineWrites,
    attempt: Attempt,
) -> Result<Applied, EngineError> {
    let catalog = shared.catalog();
    let input = logged.input;
    // Usage that arrives in the log before its customer's creation applied is parked, then
    // applied right after creation (deterministic: it depends only on log order).
    if let Input::RecordUsage(event) = input {
        if state.customer.profile.is_none() {
            state.parked.push(super::entry::Parked {
                at: logged.at,
                catalog_version: logged.catalog_version,
                event: event.clone(),
            });
            return Ok(Applied::default());
        }
    }
    let old_aliases: Vec<String> = state
        .customer
        .profile
        .as_ref()
        .map(|p| p.ingest_aliases.clone())
        .unwrap_or_default();
    let invoices_before = invoice_count(state);
    if attempt == Attempt::First && quarantined_before(shared, state, logged, 0, pass) {
        return Err(EngineError::Quarantined(QUARANTINED_BEFORE.to_owned()));
    }
    let mut applied = guarded_apply(shared, &catalog, state, logged, 0, quarantine, attempt)?;
    state.last_input_at = state.last_input_at.max(logged.at);
    if matches!(
        input,
        Input::CreateCustomer(_)
            | Input::SetIngestAliases(_)
            | Input::SetStripeBilling(_)
            | Input::ArchiveCustomer
    ) {
        if let Some(profile) = &state.customer.profile {
            if pass != Pass::Rebuild {
                shared.record_profile(profile, &old_aliases, pass == Pass::Live);
            }
        }
    }
    if matches!(input, Input::CreateCustomer(_)) {
        let parked = std::mem::take(&mut state.parked);
        for (index, parked) in parked.into_iter().enumerate() {
            let usage = Input::RecordUsage(parked.event);
            let released = Logged {
                at: parked.at,
                catalog_version: parked.catalog_version,
                input: &usage,
                ..logged
            };
            let index = u32::try_from(index + 1).unwrap_or(u32::MAX);
            if quarantined_before(shared, state, released, index, pass) {
                continue;
            }
            // A customer that was just created is small: a copy restores a failed event.
            let before = state.customer.clone();
            match guarded_apply(
                shared,
                &catalog,
                state,
                released,
                index,
                quarantine,
                Attempt::First,
            ) {
                Ok(more) => {
                    applied.effects.extend(more.effects);
                    applied.workflows_started.extend(more.workflows_started);
                    applied.transitions.extend(more.transitions);
                }
                Err(_) => state.customer = before,
            }
        }
    }
    count_workflow_effects(&shared.metrics, &applied.effects);
    if invoice_count(state) != invoices_before {
        index_invoices(shared, logged.partition, state);
    }
    // Usage that changed nothing but balances leaves the customer's next alarm as it was.
    let may_move_alarm = !matches!(input, Input::RecordUsage(_))
        || !applied.effects.is_empty()
        || !applied.transitions.is_empty();
    if may_move_alarm {
        if let Some(index) = shared.wakes.get(usize::from(logged.partition)) {
            let after = state.last_input_at;
            index.set(logged.customer_id, state.customer.next_wake(after));
        }
    }
    Ok(applied)
}

/// Why replay did not run an input: the answer of [`quarantined_before`]'s inputs.
const QUARANTINED_BEFORE: &str = "quarantined before this replay: kept for the operator";

/// Whether replay or a state rebuild meets an input that was quarantined when it was first
/// applied: it is quarantined again without running, whatever this version would do with it
/// (the inputs after it were decided, and acted on, without it; see
/// [`super::quarantine`]). Listed in the state, so that the operator's decision, replayed
/// later in the log, applies or discards it as it did live.
fn quarantined_before(
    shared: &Shared,
    state: &mut PersistedCustomer,
    logged: Logged<'_>,
    index: u32,
    pass: Pass,
) -> bool {
    if pass == Pass::Live
        || !shared
            .quarantined
            .contains(logged.partition, logged.seq, index)
    {
        return false;
    }
    if !state.quarantined.contains(&(logged.seq, index)) {
        state.quarantined.push((logged.seq, index));
    }
    tracing::debug!(
        customer = %logged.customer_id,
        partition = logged.partition,
        seq = logged.seq,
        index,
        "replay: input quarantined before, quarantined again without running"
    );
    true
}

/// Applies an operator's decision on one of the customer's quarantined inputs. Only an input
/// the state still lists as quarantined is decided on: after an upgrade, replay may have
/// applied the original input already, and re-applying it then would count it twice.
fn decide_quarantined(
    shared: &Shared,
    state: &mut PersistedCustomer,
    logged: Logged<'_>,
    action: &QuarantineAction,
    pass: Pass,
    quarantine: &mut QuarantineWrites,
) -> Result<Applied, EngineError> {
    let (seq, index) = (action.seq, action.index);
    let Some(listed) = state.quarantined.iter().position(|p| *p == (seq, index)) else {
        // Decided already (its decision keeps its `quar-done/` entry), or applied by replay
        // after an upgrade: an entry still listed under `quar/` is stale.
        quarantine
            .stale
            .push(quarantine_key(logged.partition, seq, index));
        return Err(EngineError::Rejected(Rejection::NotQuarantined));
    };
    // Replayed, a decision applies only if it is the one that resolved the input live (a
    // re-apply that failed then must not succeed on a later version's replay).
    if pass != Pass::Live
        && shared.quarantined.decided(logged.partition, seq, index) != Some(logged.seq)
    {
        return Err(EngineError::Rejected(Rejection::StillFailing(
            "this decision did not resolve the input when it was made".into(),
        )));
    }
    let original = Logged {
        seq,
        at: action.at,
        catalog_version: action.catalog_version,
        input: &action.input,
        ..logged
    };
    let (applied, resolution) = match &action.decision {
        QuarantineDecision::Reapply => {
            if !reappliable(&action.input) {
                return Err(EngineError::Rejected(Rejection::NotReappliable));
            }
            let mut applied =
                apply_input(shared, state, original, pass, quarantine, Attempt::Reapply)?;
            // The input was judged by the alerts of its own time (replay must judge it the
            // same); the alerts in force at the decision then look at what it changed, so a
            // re-applied input that moved a balance cannot leave an alert's status stale.
            let catalog = shared.catalog();
            let ctx = Ctx {
                at: logged.at,
                catalog: &catalog,
                catalog_version: logged.catalog_version,
                limits: catalog.limits_at(logged.catalog_version),
            };
            let saved = (state.customer.alerts.clone(), state.customer.alerts_as_of);
            let effects = applied.effects.len();
            if let Err(error) = state
                .customer
                .evaluate_alerts("reapply", &ctx, &mut applied)
            {
                // Only an overflow the bounds make impossible: the statuses stay as they were
                // and the customer's next input evaluates them.
                (state.customer.alerts, state.customer.alerts_as_of) = saved;
                applied.effects.truncate(effects);
                tracing::error!(customer = %logged.customer_id, %error, "alerts not evaluated after a re-apply");
            }
            (applied, Resolution::Reapplied)
        }
        QuarantineDecision::Discard { reason } => {
            let resolution = Resolution::Discarded {
                reason: reason.clone(),
            };
            (Applied::default(), resolution)
        }
    };
    if pass == Pass::Live {
        let counter = match resolution {
            Resolution::Reapplied => &shared.metrics.quarantine_reapplied,
            Resolution::Discarded { .. } => &shared.metrics.quarantine_discarded,
        };
        EngineMetrics::add(counter, 1);
    }
    tracing::warn!(
        customer = %logged.customer_id,
        partition = logged.partition,
        seq,
        index,
        decided_at_seq = logged.seq,
        ?resolution,
        "quarantined input decided by the operator"
    );
    state.quarantined.remove(listed);
    shared
        .quarantined
        .set_decided(logged.partition, seq, index, logged.seq);
    let cause = if action.panicked {
        QuarantineCause::Panic
    } else {
        QuarantineCause::Refused
    };
    quarantine.resolved.push(Resolved {
        entry: Quarantined {
            partition: logged.partition,
            seq,
            index,
            customer_id: logged.customer_id,
            at: action.at,
            catalog_version: action.catalog_version,
            input: action.input.clone(),
            cause,
            reason: action.reason.clone(),
        },
        resolution,
        decided_seq: logged.seq,
        decided_at: logged.at,
    });
    Ok(applied)
}

/// Applies one input under `catch_unwind`, with the limits in force at its catalog version.
/// A first attempt that panics, or that carries no caller and is refused, is quarantined; a
/// re-applied one that fails in any way is put back and answered [`Rejection::StillFailing`].
fn guarded_apply(
    shared: &Shared,
    catalog: &crate::domain::Catalog,
    state: &mut PersistedCustomer,
    logged: Logged<'_>,
    index: u32,
    quarantine: &mut QuarantineWrites,
    attempt: Attempt,
) -> Result<Applied, EngineError> {
    let ctx = Ctx {
        at: logged.at,
        catalog,
        catalog_version: logged.catalog_version,
        limits: catalog.limits_at(logged.catalog_version),
    };
    // Usage applies in place; a re-apply is rare enough to copy the state first.
    let before = (attempt == Attempt::Reapply).then(|| state.customer.clone());
    // The domain puts the state back while a panic unwinds, so the state is unchanged then.
    let outcome = catching(|| {
        if shared
            .apply_bug
            .as_ref()
            .is_some_and(|bug| bug(logged.input))
        {
            panic!("a bug of this version (simulated)");
        }
        state.customer.apply(logged.input, &ctx)
    });
    let metrics = &shared.metrics;
    let (cause, reason) = match outcome {
        Ok(Ok(applied)) => {
            EngineMetrics::add(&metrics.inputs_applied, 1);
            return Ok(applied);
        }
        Ok(Err(rejection)) if has_caller(logged.input) && attempt == Attempt::First => {
            EngineMetrics::add(&metrics.inputs_rejected, 1);
            return Err(EngineError::Rejected(rejection));
        }
        Ok(Err(rejection)) => (QuarantineCause::Refused, rejection.to_string()),
        Err(payload) => (QuarantineCause::Panic, panic_message(payload.as_ref())),
    };
    if let Some(before) = before {
        state.customer = before;
        tracing::error!(
            customer = %logged.customer_id,
            partition = logged.partition,
            seq = logged.seq,
            index,
            ?cause,
            %reason,
            "re-applying a quarantined input failed again; it stays quarantined"
        );
        return Err(EngineError::Rejected(Rejection::StillFailing(reason)));
    }
    if matches!(logged.input, Input::RecordUsage(_)) && index == 0 {
        // Usage applies in place (see `Customer::apply`): rebuild the state without it.
        // (Parked usage, index > 0, is restored by its caller from a copy.)
        *state = rebuilt_without(shared, logged).map_err(|error| {
            shared.health.fail_stop("customer state rebuild", &error);
            EngineError::Storage(error)
        })?;
    }
    state.quarantined.push((logged.seq, index));
    shared
        .quarantined
        .insert(logged.partition, logged.seq, index);
    EngineMetrics::add(&metrics.inputs_quarantined, 1);
    tracing::error!(
        customer = %logged.customer_id,
        partition = logged.partition,
        seq = logged.seq,
        index,
        ?cause,
        %reason,
        "input quarantined: not applied, kept for the operator"
    );
    quarantine.kept.push(Quarantined {
        partition: logged.partition,
        seq: logged.seq,
        index,
        customer_id: logged.customer_id,
        at: logged.at,
        catalog_version: logged.catalog_version,
        input: logged.input.clone(),
        cause,
        reason: reason.clone(),
    });
    Err(EngineError::Quarantined(reason))
}

/// The customer's state as it was just before `logged`, with `logged` counted as consumed:
/// its last written state and the log after it, replayed as recovery does (rare: only after a
/// usage event failed part-way). Effects of the replayed inputs are already in the outbox.
///
/// # Errors
/// Storage read or decode errors.
fn rebuilt_without(shared: &Shared, logged: Logged<'_>) -> Result<PersistedCustomer, StorageError> {
    let mut state = load_state(shared, logged.customer_id)?;
    // Inputs of this customer after its written state are all in the log: a checkpoint writes
    // every dirty state before the log is trimmed past them.
    let checkpointed = shared
        .store
        .checkpoint(logged.partition)?
        .map_or(0, |(seq, _)| seq);
    let from = state.applied_seq.max(checkpointed);
    shared
        .store
        .replay(logged.partition, from, |seq, at_ms, bytes| {
            if seq >= logged.seq {
                return Ok(());
            }
            let entry = super::entry::decode_log_entry(bytes)?;
            if let LogEntry::Customer {
                customer_id,
                catalog_version,
                input,
            } = entry
            {
                if customer_id == logged.customer_id {
                    let earlier = Logged {
                        seq,
                        at: Timestamp(at_ms),
                        catalog_version,
                        input: &input,
                        ..logged
                    };
                    // Inputs quarantined earlier are quarantined again, identically (already kept).
                    let _ = apply_logged(
                        shared,
                        &mut state,
                        earlier,
                        Pass::Rebuild,
                        &mut QuarantineWrites::default(),
                    );
                }
            }
            Ok(())
        })?;
    state.applied_seq = state.applied_seq.max(logged.seq);
    Ok(state)
}

/// Whether someone waits for the input's verdict (a refusal is then their 4xx). Usage is
/// acknowledged at durability and ticks come from the engine: a refusal of those is a defect
/// to quarantine, never a silent drop.
fn has_caller(input: &Input) -> bool {
    !matches!(input, Input::RecordUsage(_) | Input::Tick)
}

fn invoice_count(state: &PersistedCustomer) -> usize {
    state
        .customer
        .contracts
        .iter()
        .map(|c| c.purchases.len() + c.periods.len())
        .sum()
}

/// Records which customer owns each invoice (voiding names only the invoice): staged for the
/// partition's next batch write (see [`super::staged_index`]). Idempotent; replay re-stages
/// what a crash lost.
fn index_invoices(shared: &Shared, partition: u16, state: &PersistedCustomer) {
    let Some(customer) = state.customer.id() else {
        return;
    };
    let invoices = state.customer.contracts.iter().flat_map(|contract| {
        contract
            .purchases
            .iter()
            .map(|p| p.id)
            .chain(contract.periods.iter().map(|p| p.invoice_id))
    });
    shared.invoice_index[usize::from(partition)].stage(customer, invoices);
}

fn count_workflow_effects(metrics: &EngineMetrics, effects: &[Effect]) {
    for effect in effects {
        let counter = match effect {
            Effect::RequestPayment(request) if request.action == PaymentAction::Charge => {
                &metrics.payment_requests
            }
            Effect::RequestPayment(_) => continue,
            Effect::Notice(notice) => match notice.notice_type {
                NoticeType::RechargeLimited => &metrics.recharges_limited,
                _ => continue,
            },
            // Started, released and failed are counted by gate from the state changes.
            Effect::Webhook(hook) => match hook.webhook_type {
                WebhookType::PaymentPendingActionRequired => &metrics.workflows_action_required,
                _ => continue,
            },
        };
        EngineMetrics::add(counter, 1);
    }
}

/// A key and value to write to `meta`.
type MetaPut = (Vec<u8>, Vec<u8>);

/// What inputs did to workflows, for the workflow indexes (`wf/` by id, `wfs/` in flight by
/// state, `wfg/` `wfi/` `wfe/` by gate): each workflow started and each state change, with its
/// customer and gate.
#[derive(Clone, Debug, Default)]
pub struct WorkflowMoves {
    /// (workflow, customer).
    pub started: Vec<(Id, Id)>,
    /// (workflow, customer, state, gate), in the order the states were entered.
    pub moved: Vec<(Id, Id, WorkflowState, GateType)>,
}

impl WorkflowMoves {
    /// Adds what `applied` did; `after` is the customer after it (the workflows' gates).
    pub fn add(&mut self, applied: &Applied, customer: Id, after: &Customer) {
        self.started
            .extend(applied.workflows_started.iter().map(|&w| (w, customer)));
        self.moved.extend(applied.transitions.iter().map(|c| {
            let gate = after
                .workflow(c.workflow_id)
                .map_or(GateType::None, |w| w.gate.gate_type);
            (c.workflow_id, customer, c.state, gate)
        }));
    }

    pub fn of(applied: &Applied, customer: Id, after: &Customer) -> WorkflowMoves {
        let mut moves = WorkflowMoves::default();
        moves.add(applied, customer, after);
        moves
    }

    pub fn is_empty(&self) -> bool {
        self.started.is_empty() && self.moved.is_empty()
    }

    /// The index writes: each moved workflow under its last state in `wfs/` if that is in
    /// flight (deleted under every other in-flight state), under its gate in `wfg/` once it
    /// started, in `wfi/` while in flight, and in `wfe/` once it ended. Puts and deletes of
    /// one workflow never touch the same key, so their order in the batch does not matter.
    fn index_writes(&self) -> (Vec<MetaPut>, Vec<Vec<u8>>) {
        use super::entry::{ended_prefix, gate_prefix};
        let mut last: Vec<(Id, Id, WorkflowState, GateType)> = Vec::new();
        for &(workflow, customer, state, gate) in &self.moved {
            match last.iter_mut().find(|(w, ..)| *w == workflow) {
                Some(slot) => slot.2 = state,
                None => last.push((workflow, customer, state, gate)),
            }
        }
        let key = |mut prefix: Vec<u8>, workflow: Id| {
            prefix.extend_from_slice(workflow.as_bytes());
            prefix
        };
        let (mut puts, mut deletes) = (Vec::new(), Vec::new());
        for (workflow, customer, state, gate) in last {
            let value = customer.as_bytes().to_vec();
            for in_flight in super::entry::IN_FLIGHT_STATES {
                let key = super::entry::workflow_state_key(in_flight, workflow);
                if in_flight == state {
                    puts.push((key, value.clone()));
                } else {
                    deletes.push(key);
                }
            }
            puts.push((key(gate_prefix("wfg", gate), workflow), value.clone()));
            if state.is_terminal() {
                deletes.push(key(gate_prefix("wfi", gate), workflow));
                puts.push((key(ended_prefix(gate, state), workflow), value));
            } else {
                puts.push((key(gate_prefix("wfi", gate), workflow), value));
            }
        }
        (puts, deletes)
    }
}

/// Writes effects to the outbox (one entry per webhook destination, one per payment) and
/// returns the entries written, for delivery.
///
/// # Errors
/// Storage errors; nothing was written then.
pub fn persist_effects(
    shared: &Shared,
    cause: (u16, u64),
    effects: &[Effect],
    moves: &WorkflowMoves,
) -> Result<Vec<([u8; 16], OutboxEntry)>, StorageError> {
    if effects.is_empty() && moves.is_empty() {
        return Ok(Vec::new());
    }
    let now = shared.clock.now_ms();
    let mut entries = Vec::new();
    // Every workflow started (workflow, customer), and every one an effect names.
    let mut workflows: Vec<(Vec<u8>, Vec<u8>)> = moves
        .started
        .iter()
        .map(|(workflow, customer)| {
            (
                super::entry::workflow_key(*workflow),
                customer.as_bytes().to_vec(),
            )
        })
        .collect();
    for effect in effects {
        let (workflow, customer) = match effect {
            Effect::Webhook(hook) => (hook.workflow_id, hook.customer_id),
            Effect::RequestPayment(request) => (request.workflow_id, request.customer_id),
            Effect::Notice(_) => continue,
        };
        workflows.push((
            super::entry::workflow_key(workflow),
            customer.as_bytes().to_vec(),
        ));
    }
    // The index of workflows in flight by state: each moved workflow under its last state
    // only (none once it ended).
    let (puts, deletes) = moves.index_writes();
    workflows.extend(puts);
    // Before the outbox: once anyone hears of a workflow, its owner can be found.
    shared
        .store
        .meta_write_derived_batch(&workflows, &deletes)?;
    for effect in effects {
        let (id, event_type, body) = match effect {
            Effect::Webhook(hook) => (hook.id, hook.webhook_type.as_str(), hook.to_json()),
            Effect::Notice(notice) => (notice.id, notice.notice_type.as_str(), notice.body.clone()),
            Effect::RequestPayment(request) => {
                entries.push((
                    payment_outbox_id(request.effect_id()),
                    OutboxEntry::new(OutboxEffect::Payment(request.clone()), cause, now),
                ));
                continue;
            }
        };
        let body = serde_json::to_vec(&body).map_err(|e| StorageError::Encode(e.to_string()))?;
        for route in &shared.settings.webhook_routes {
            if !route.receives(event_type) {
                continue;
            }
            let effect = OutboxEffect::Webhook {
                webhook_id: id,
                event_type: event_type.to_owned(),
                destination_url: route.url.clone(),
                body: body.clone(),
            };
            entries.push((
                webhook_outbox_id(id, &route.url),
                OutboxEntry::new(effect, cause, now),
            ));
        }
    }
    let mut encoded = Vec::with_capacity(entries.len());
    for (id, entry) in &entries {
        encoded.push((*id, storage::encode(super::outbox::OUTBOX_VERSION, entry)?));
    }
    shared.store.put_outbox(&encoded, cause)?;
    Ok(entries)
}

#[cfg(test)]
#[path = "quarantine_tests.rs"]
mod quarantine_tests;

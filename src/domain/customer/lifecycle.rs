//! Lifecycle notices: `contract.create`, `contract.edit`, `contract.end`, `commit.create`,
//! `commit.segment.start` and `.end`, and the same for credits, in Metronome's flat envelope.
//!
//! Owns deciding, after each input, what the input and the passing of time did to a contract's
//! lifecycle, and remembering what was announced ([`Lifecycle`]) so nothing is announced twice.
//! A segment starts when it becomes usable: at its `starting_at`, or at the release of its
//! gated commit if that is later; it ends at the earliest of its `ending_before`, the contract's
//! end, and its commit's cancellation or archive. Every notice's id derives from what it is
//! about, so a replay announces the same ids. It never changes money.

use rustc_hash::FxHashSet;
use serde_json::{Map, Value, json};

use super::{Applied, Ctx, Customer};
use crate::domain::contract::{Commit, CommitKind, Contract, Lifecycle, Release};
use crate::domain::effects::{Effect, Notice, NoticeType};
use crate::domain::ids::{Id, Timestamp};

impl Customer {
    /// Announces what is due for every contract. With `every` (any input but usage) each
    /// contract's segments are all looked at; a usage event looks only at the commits it
    /// created (a threshold's) and, when a notice falls due at its time (the constant-time check
    /// of `ContractCaches::lifecycle_due`), at all of them: a contract with thousands of
    /// recharges costs a usage event nothing more.
    pub(super) fn advance_lifecycles(&mut self, every: bool, ctx: &Ctx<'_>, applied: &mut Applied) {
        let Some(profile) = self.profile.as_ref() else {
            return;
        };
        let customer = (profile.id, profile.custom_fields.as_slice());
        for contract in &mut self.contracts {
            // Every input moves the clock of every lifecycle, whether or not anything is due
            // (so that the state never depends on the caches that say what is).
            if let Some(lifecycle) = contract.lifecycle.as_mut() {
                lifecycle.as_of = lifecycle.as_of.max(ctx.at);
            }
            let due = contract
                .caches
                .lifecycle_due
                .is_none_or(|due| due <= ctx.at);
            let new_commits = contract
                .lifecycle
                .as_ref()
                .is_some_and(|l| l.commits_announced < contract.commits.len() as u64);
            if every || due || new_commits {
                advance(contract, customer, ctx.at, every || due, applied);
            }
        }
    }
}

/// How many times the end of `segment` was announced (it may start again after each, when the
/// contract's end is lifted).
fn reopened_times(lifecycle: &Lifecycle, segment: Id) -> u64 {
    lifecycle
        .reopened
        .iter()
        .find(|(s, _)| *s == segment)
        .map_or(0, |(_, n)| *n)
}

fn note_end(lifecycle: &mut Lifecycle, segment: Id) {
    match lifecycle.reopened.iter_mut().find(|(s, _)| *s == segment) {
        Some((_, n)) => *n += 1,
        None => lifecycle.reopened.push((segment, 1)),
    }
}

/// The id of a segment's start or end notice: the first start and end keep the ids they always
/// had; after the segment started again (`times` ends before), each has an id of its own,
/// so that no id is ever sent with two bodies.
fn lifecycle_id(segment: Id, notice_type: NoticeType, sequence: u64, times: u64) -> Id {
    if times == 0 {
        Id::derive(segment, notice_type.as_str(), sequence)
    } else {
        Id::derive(
            Id::derive(segment, "reopened", times),
            notice_type.as_str(),
            sequence,
        )
    }
}

/// The `contract.create` or `contract.edit` notice of an input (`sequence`: the edit's count).
pub(super) fn contract_notice(
    contract: &Contract,
    notice_type: NoticeType,
    sequence: u64,
    customer: (Id, &[(String, String)]),
    at: Timestamp,
) -> Effect {
    let id = Id::derive(contract.id, notice_type.as_str(), sequence);
    Effect::Notice(Notice::flat(
        id,
        notice_type,
        at,
        customer,
        contract.id,
        Map::new(),
    ))
}

/// Announces what is due for one contract at `at`, and records when the next notice falls due:
/// looking at every segment (`full`), or only at those of commits not announced yet (the others
/// have nothing due before `ContractCaches::lifecycle_due`, which stays the bound). A contract
/// without a [`Lifecycle`] (kept by an older version) takes in what is true now without
/// announcing it.
///
/// [`Lifecycle`]: crate::domain::contract::Lifecycle
fn advance(
    contract: &mut Contract,
    customer: (Id, &[(String, String)]),
    at: Timestamp,
    full: bool,
    applied: &mut Applied,
) {
    let quiet = contract.lifecycle.is_none();
    let full = full || quiet || contract.caches.lifecycle_due.is_none();
    let mut lifecycle = contract.lifecycle.take().unwrap_or_default();
    // Never backwards: an input accepted earlier than one already applied (a late event
    // released now) sees the lifecycle as it stands.
    let at = at.max(lifecycle.as_of);
    lifecycle.as_of = at;
    let mut notices = Vec::new();
    let contract_end = contract.end_or_forever();
    let announced = usize::try_from(lifecycle.commits_announced).unwrap_or(usize::MAX);
    let (first, mut next) = if full {
        (0, Timestamp::END_OF_TIME)
    } else {
        let due = contract
            .caches
            .lifecycle_due
            .unwrap_or(Timestamp::END_OF_TIME);
        (announced, due)
    };
    for commit in contract.commits.iter().skip(announced) {
        let notice_type = match commit.kind {
            CommitKind::Credit => NoticeType::CreditCreate,
            _ => NoticeType::CommitCreate,
        };
        let mut fields = commit_fields(commit);
        fields.insert("commit_type".into(), json!(commit_type(commit.kind)));
        let id = Id::derive(commit.id, notice_type.as_str(), 0);
        notices.push((id, notice_type, commit.created_at, fields));
    }
    lifecycle.commits_announced = contract.commits.len() as u64;
    // Segments of commits not announced yet cannot be open: a partial pass needs no set.
    let mut open: FxHashSet<Id> = if full {
        lifecycle.open_segments.iter().copied().collect()
    } else {
        FxHashSet::default()
    };
    let mut ended = false;
    for commit in contract.commits.iter().skip(first) {
        let (start_type, end_type) = match commit.kind {
            CommitKind::Credit => (NoticeType::CreditSegmentStart, NoticeType::CreditSegmentEnd),
            _ => (NoticeType::CommitSegmentStart, NoticeType::CommitSegmentEnd),
        };
        // When it became usable, and when it stopped being usable whatever its schedule says.
        let (released_at, stopped_at) = match commit.release {
            Release::Released { at } => (Some(at), commit.archived_at),
            Release::Gated { .. } => (None, None),
            Release::Canceled { at } => (None, Some(at)),
        };
        let count = commit.segments.len();
        for (index, segment) in commit.segments.iter().enumerate() {
            let mut end = segment.ending_before.min(contract_end);
            if let Some(stopped) = stopped_at {
                end = end.min(stopped);
            }
            let segment_fields = || {
                let mut fields = commit_fields(commit);
                fields.insert("segment_id".into(), json!(segment.id.to_string()));
                fields.insert("segment_index".into(), json!(index));
                fields.insert("segment_count".into(), json!(count));
                fields
            };
            match (open.contains(&segment.id), released_at) {
                (true, _) if end <= at => {
                    open.remove(&segment.id);
                    ended = true;
                    let times = reopened_times(&lifecycle, segment.id);
                    let id = lifecycle_id(segment.id, end_type, end.millis() as u64, times);
                    // It may start again (the contract's end lifted, which also moves the end of
                    // a threshold commit that ran to it).
                    note_end(&mut lifecycle, segment.id);
                    if !crate::defects::active(crate::defects::Defect::SegmentEndUnannounced) {
                        notices.push((id, end_type, end, segment_fields()));
                    }
                }
                (true, _) => next = next.min(end),
                (false, Some(released)) => {
                    let start = segment.starting_at.max(released);
                    if start <= at && at < end {
                        open.insert(segment.id);
                        lifecycle.open_segments.push(segment.id);
                        let times = reopened_times(&lifecycle, segment.id);
                        let id = lifecycle_id(segment.id, start_type, 0, times);
                        notices.push((id, start_type, start, segment_fields()));
                        next = next.min(end);
                    } else if at < start && start < end {
                        next = next.min(start);
                    }
                }
                (false, None) => {}
            }
        }
    }
    if ended {
        // Ended segments leave the list, which keeps its order.
        lifecycle.open_segments.retain(|s| open.contains(s));
    }
    if let Some(end) = contract.ending_before {
        if end <= at && lifecycle.ended != Some(end) {
            lifecycle.ended = Some(end);
            let notice_type = NoticeType::ContractEnd;
            let id = Id::derive(contract.id, notice_type.as_str(), end.millis() as u64);
            let mut fields = Map::new();
            fields.insert("ending_before".into(), json!(end.to_rfc3339()));
            notices.push((id, notice_type, end, fields));
        } else if at < end {
            next = next.min(end);
        }
    }
    contract.lifecycle = Some(lifecycle);
    contract.caches.lifecycle_due = Some(next);
    if quiet {
        return;
    }
    for (id, notice_type, when, fields) in notices {
        applied.effects.push(Effect::Notice(Notice::flat(
            id,
            notice_type,
            when,
            customer,
            contract.id,
            fields,
        )));
    }
}

/// `commit_id` and `commit_custom_fields`, the fields every commit and credit notice carries.
pub(super) fn commit_fields(commit: &Commit) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("commit_id".into(), json!(commit.id.to_string()));
    let custom: Map<String, Value> = commit
        .custom_fields
        .iter()
        .map(|(key, value)| (key.clone(), json!(value)))
        .collect();
    fields.insert("commit_custom_fields".into(), Value::Object(custom));
    fields
}

/// The `commit.archive` or `credit.archive` notice of an archived commit of `contract_id`.
pub(super) fn archive_notice(
    contract_id: Id,
    commit: &Commit,
    customer: (Id, &[(String, String)]),
    at: Timestamp,
) -> Effect {
    let notice_type = match commit.kind {
        CommitKind::Credit => NoticeType::CreditArchive,
        _ => NoticeType::CommitArchive,
    };
    let mut fields = commit_fields(commit);
    fields.insert("commit_type".into(), json!(commit_type(commit.kind)));
    Effect::Notice(Notice::flat(
        Id::derive(commit.id, notice_type.as_str(), 0),
        notice_type,
        at,
        customer,
        contract_id,
        fields,
    ))
}

pub(super) fn commit_type(kind: CommitKind) -> &'static str {
    match kind {
        CommitKind::Prepaid => "PREPAID",
        CommitKind::Postpaid => "POSTPAID",
        CommitKind::Credit => "CREDIT",
    }
}

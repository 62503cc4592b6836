//! Lifecycle notices: `contract.create`, `contract.edit`, `contract.end`, `commit.create`,
//! `commit.segment.start` and `.end`, and the same for credits, in Metronome's flat envelope.
//!
//! Owns deciding, after each input, what the input and the passing of time did to a contract's
//! lifecycle, and remembering what was announced ([`Lifecycle`]) so nothing is announced twice.
//! A segment starts when it becomes usable: at its `starting_at`, or at the release of its
//! gated commit if that is later; it ends at the earliest of its `ending_before`, the contract's
//! end, and its commit's cancellation or archive. Every notice's id derives from what it is
//! about, so a replay announces the same ids. It never changes money.

use serde_json::{Map, Value, json};

use super::{Applied, Ctx, Customer};
use crate::domain::contract::{CommitKind, Contract, Release};
use crate::domain::effects::{Effect, Notice, NoticeType};
use crate::domain::ids::{Id, Timestamp};

impl Customer {
    /// Announces what is due for every contract (`every`: for all; else only for those whose
    /// next notice is due at `ctx.at`, the hot path's constant-time check).
    pub(super) fn advance_lifecycles(&mut self, every: bool, ctx: &Ctx<'_>, applied: &mut Applied) {
        let Some(profile) = self.profile.as_ref() else {
            return;
        };
        let customer = (profile.id, profile.custom_fields.as_slice());
        for contract in &mut self.contracts {
            let due = contract
                .caches
                .lifecycle_due
                .is_none_or(|due| due <= ctx.at);
            if every || due {
                advance(contract, customer, ctx.at, applied);
            }
        }
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

/// Announces what is due for one contract at `at`, and records when the next notice falls due.
/// A contract without a [`Lifecycle`] (kept by an older version) takes in what is true now
/// without announcing it.
fn advance(
    contract: &mut Contract,
    customer: (Id, &[(String, String)]),
    at: Timestamp,
    applied: &mut Applied,
) {
    let quiet = contract.lifecycle.is_none();
    let mut lifecycle = contract.lifecycle.take().unwrap_or_default();
    let mut notices = Vec::new();
    let contract_end = contract.end_or_forever();
    let mut next = Timestamp::END_OF_TIME;
    let announced = usize::try_from(lifecycle.commits_announced).unwrap_or(usize::MAX);
    for commit in contract.commits.iter().skip(announced) {
        let notice_type = match commit.kind {
            CommitKind::Credit => NoticeType::CreditCreate,
            _ => NoticeType::CommitCreate,
        };
        let mut fields = commit_fields(commit.id);
        fields.insert("commit_type".into(), json!(commit_type(commit.kind)));
        let id = Id::derive(commit.id, notice_type.as_str(), 0);
        notices.push((id, notice_type, commit.created_at, fields));
    }
    lifecycle.commits_announced = contract.commits.len() as u64;
    for commit in &contract.commits {
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
            let open = lifecycle
                .open_segments
                .iter()
                .position(|s| *s == segment.id);
            let segment_fields = || {
                let mut fields = commit_fields(commit.id);
                fields.insert("segment_id".into(), json!(segment.id.to_string()));
                fields.insert("segment_index".into(), json!(index));
                fields.insert("segment_count".into(), json!(count));
                fields
            };
            match (open, released_at) {
                (Some(position), _) if end <= at => {
                    lifecycle.open_segments.remove(position);
                    let id = Id::derive(segment.id, end_type.as_str(), end.millis() as u64);
                    if !crate::defects::active(crate::defects::Defect::SegmentEndUnannounced) {
                        notices.push((id, end_type, end, segment_fields()));
                    }
                }
                (Some(_), _) => next = next.min(end),
                (None, Some(released)) => {
                    let start = segment.starting_at.max(released);
                    if start <= at && at < end {
                        lifecycle.open_segments.push(segment.id);
                        let id = Id::derive(segment.id, start_type.as_str(), 0);
                        notices.push((id, start_type, start, segment_fields()));
                        next = next.min(end);
                    } else if at < start && start < end {
                        next = next.min(start);
                    }
                }
                (None, None) => {}
            }
        }
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

fn commit_fields(commit_id: Id) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("commit_id".into(), json!(commit_id.to_string()));
    fields.insert("commit_custom_fields".into(), json!({}));
    fields
}

fn commit_type(kind: CommitKind) -> &'static str {
    match kind {
        CommitKind::Prepaid => "PREPAID",
        CommitKind::Postpaid => "POSTPAID",
        CommitKind::Credit => "CREDIT",
    }
}

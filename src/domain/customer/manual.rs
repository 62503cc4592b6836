//! Manual ledger entries (`/v1/contracts/addManualBalanceLedgerEntry`): an operator adds to, or
//! draws down, one segment of a contract's or the customer's commit or credit, with a reason
//! the ledger shows.
//!
//! The rules (Metronome's where it states them): the entry counts in the segment's balance at
//! once, whatever its timestamp (Metronome counts future-dated entries of active segments); a
//! balance that negative entries take below zero reads 0 and later additions make up the
//! difference first (the balance is the sum of the ledger, floored at 0, as Metronome states it);
//! a positive entry is new money, so it
//! pays for usage already charged and not covered on the open invoices (as a new commit does),
//! in the same order; a negative one never takes back what usage drew (usage it covered stays
//! covered). Thresholds are evaluated after it, like after any change of B. Tollgate refuses an
//! entry on a segment that has ended (its expiration is history), on a commit that is not
//! usable (gated, canceled, archived), and a zero amount.

use super::usage::{Drawable, cover_outstanding};
use super::{Applied, Ctx, Customer, ManualEntrySpec};
use crate::domain::bounds;
use crate::domain::contract::{Commit, DrawSource, ManualEntry, Release};
use crate::domain::money::Money;
use crate::domain::rejection::Rejection;

/// A manual entry's `reason`: 1 to 1,000 characters once trimmed.
pub const REASON_MAX: usize = 1_000;
/// At most this many manual entries on one commit or credit (Tollgate's bound: every input but
/// usage copies the customer).
pub const MANUAL_ENTRIES_MAX: usize = 1_000;

/// Where the commit of an entry is.
enum Place {
    /// Contract index, commit index.
    Contract(usize, usize),
    /// Index into the customer-level commits.
    Customer(usize),
}

impl Customer {
    pub(super) fn add_manual_entry(
        &mut self,
        spec: &ManualEntrySpec,
        ctx: &Ctx<'_>,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        let customer_id = self.profile()?.id;
        if spec.amount.is_zero() {
            return Err(Rejection::invalid("amount", "must not be zero"));
        }
        let magnitude = Money::ZERO
            .max(spec.amount)
            .max(Money::ZERO.checked_sub(spec.amount)?);
        bounds::check_amount("amount", magnitude)?;
        let reason = spec.reason.trim();
        if reason.is_empty() || reason.chars().count() > REASON_MAX {
            return Err(Rejection::invalid(
                "reason",
                &format!("must be 1 to {REASON_MAX} characters"),
            ));
        }
        let seen = |c: &Commit| c.manual_entries.iter().any(|e| e.id == spec.id);
        let all_commits = self.contracts.iter().flat_map(|c| &c.commits);
        if all_commits
            .chain(self.customer_commits.iter().map(|c| &c.commit))
            .any(seen)
        {
            return Err(Rejection::AlreadyExists);
        }
        let place = self.place_of(spec)?;
        let commit = match place {
            Place::Contract(ci, k) => &self.contracts[ci].commits[k],
            Place::Customer(pi) => &self.customer_commits[pi].commit,
        };
        usable(commit)?;
        let si = commit
            .segments
            .iter()
            .position(|s| s.id == spec.segment_id && !s.is_removed())
            .ok_or_else(|| {
                Rejection::invalid(
                    "segment_id",
                    &format!("{} is not a segment of {}", spec.segment_id, commit.id),
                )
            })?;
        if commit.manual_entries.len() >= MANUAL_ENTRIES_MAX {
            return Err(Rejection::invalid(
                "id",
                &format!(
                    "{} has {MANUAL_ENTRIES_MAX} manual entries, the most one may have",
                    commit.id
                ),
            ));
        }
        let segment = &commit.segments[si];
        if segment.ending_before <= ctx.at {
            return Err(Rejection::invalid(
                "segment_id",
                "the segment has ended: its expiration is in the ledger already",
            ));
        }
        let entry = ManualEntry {
            id: spec.id,
            segment: si,
            amount: spec.amount,
            reason: reason.to_string(),
            at: spec.timestamp.unwrap_or(segment.starting_at),
        };
        let positive = spec.amount.is_positive();
        // Checked but for the bounds of the sum, which `add_manual_entry` checks before it
        // changes anything.
        match place {
            Place::Contract(ci, k) => {
                let contract = &mut self.contracts[ci];
                let before = contract.commits[k].segments[si].remaining();
                contract.commits[k].add_manual_entry(entry)?;
                let after = contract.commits[k].segments[si].remaining();
                contract.segment_changed((k, si), before, after, false);
                let mut shared_moved = false;
                if positive {
                    let mut drawable = Drawable {
                        contract,
                        pool: &mut self.customer_commits,
                    };
                    shared_moved = cover_outstanding(&mut drawable, DrawSource::Contract(k), ctx)?;
                }
                if shared_moved {
                    // A customer-level fiat balance got money back: every contract counting
                    // it looks again.
                    return self.evaluate_all(customer_id, ctx, applied);
                }
                self.evaluate(ci, customer_id, ctx, applied)
            }
            Place::Customer(pi) => {
                self.customer_commits[pi].commit.add_manual_entry(entry)?;
                if positive {
                    self.cover_with_shared(pi, ctx)?;
                }
                self.evaluate_all(customer_id, ctx, applied)
            }
        }
    }

    /// Finds the entry's commit: on its contract when it names one, else among the
    /// customer-level ones (a contract's commit without its `contract_id` is a 400 that says
    /// so).
    fn place_of(&self, spec: &ManualEntrySpec) -> Result<Place, Rejection> {
        match spec.contract_id {
            Some(contract_id) => {
                let ci = self
                    .contracts
                    .iter()
                    .position(|c| c.id == contract_id)
                    .ok_or(Rejection::ContractNotFound)?;
                let k = self.contracts[ci]
                    .commits
                    .iter()
                    .position(|c| c.id == spec.commit_id)
                    .ok_or(Rejection::CommitNotFound)?;
                Ok(Place::Contract(ci, k))
            }
            None => {
                if let Some(pi) = self
                    .customer_commits
                    .iter()
                    .position(|c| c.commit.id == spec.commit_id)
                {
                    return Ok(Place::Customer(pi));
                }
                if self
                    .contracts
                    .iter()
                    .any(|c| c.commit(spec.commit_id).is_some())
                {
                    return Err(Rejection::invalid(
                        "contract_id",
                        "is required for a contract's commit or credit",
                    ));
                }
                Err(Rejection::CommitNotFound)
            }
        }
    }
}

/// Refuses a commit whose balance cannot move: not released yet, canceled, or archived.
fn usable(commit: &Commit) -> Result<(), Rejection> {
    let why = match commit.release {
        _ if commit.archived_at.is_some() => "is archived",
        Release::Gated { .. } => "waits for its payment gate",
        Release::Canceled { .. } => "was canceled (its payment failed)",
        Release::Released { .. } => return Ok(()),
    };
    Err(Rejection::invalid("id", &format!("{} {why}", commit.id)))
}

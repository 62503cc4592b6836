//! Customer-level commits and credits (`/v1/contracts/customerCommits/create`,
//! `customerCredits/create` and their `updateEndDate`): balances that belong to the customer,
//! usable by every contract (or those `applicable_contract_ids` names).
//!
//! Owns creating one (checked whole, then usable at once: the API has no payment gate for them),
//! shortening its access or its invoicing, and what the rest of the core asks of the shared pool:
//! which of its segments a contract's usage may draw from, in drawdown order, and what it adds to
//! a contract's balance B. The drawdown itself (merging these with the contract's own segments,
//! contract-level first at equal priority) is in `usage`; every change here ends with the
//! evaluation of every contract's thresholds, since each may count the changed balance.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::contracts::{purchase_invoices, validate_commit, validate_uniqueness_key};
use super::lifecycle::commit_type;
use super::usage::{Drawable, cover_outstanding};
use super::{Applied, CommitSpec, Ctx, Customer};
use crate::domain::contract::{
    Commit, CommitKind, Contract, DrawSource, InvoiceStatus, Release, draw_order,
};
use crate::domain::effects::{Effect, Notice, NoticeType};
use crate::domain::ids::{Id, Timestamp};
use crate::domain::money::{CreditType, Money};
use crate::domain::rejection::Rejection;

/// How many customer-level commits and credits one customer may have: each usage event that may
/// draw from them looks at every one of their segments (Tollgate's bound; Metronome states none).
pub const CUSTOMER_COMMITS_MAX: usize = 500;

/// A commit or credit of the customer rather than of one contract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerCommit {
    pub commit: Commit,
    pub credit_type: CreditType,
    /// The contracts whose usage may draw from it; empty: every contract of the customer, also
    /// those created later.
    pub applicable_contract_ids: Vec<Id>,
    /// The contract its scheduled invoices are billed on.
    pub invoice_contract_id: Option<Id>,
    pub uniqueness_key: Option<String>,
}

impl CustomerCommit {
    /// Whether `contract`'s usage may draw from it (and its balance counts in the contract's B).
    #[inline]
    pub fn usable_by(&self, contract: &Contract) -> bool {
        (self.applicable_contract_ids.is_empty()
            || self.applicable_contract_ids.contains(&contract.id))
            && self.credit_type.id == contract.credit_type.id
    }
}

/// A customer-level commit or credit to create, as the request describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerCommitSpec {
    /// Assigned at the edge (from the Idempotency-Key when there is one).
    pub id: Id,
    pub commit: CommitSpec,
    pub applicable_contract_ids: Vec<Id>,
    pub invoice_contract_id: Option<Id>,
    pub uniqueness_key: Option<String>,
}

/// A shorter access or invoicing of a customer-level commit or credit (`updateEndDate`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerCommitEnd {
    pub commit_id: Id,
    /// Asked through `customerCredits/updateEndDate` (else `customerCommits/`).
    pub credit: bool,
    pub access_ending_before: Option<Timestamp>,
    pub invoices_ending_before: Option<Timestamp>,
}

/// The segments of customer-level commits that usage of `contract` for `product` at `usage_at`
/// may draw from, with something left, in drawdown order, as (commit index, segment index).
/// Empty, without allocating, for a customer without customer-level commits.
pub(super) fn candidates(
    pool: &[CustomerCommit],
    contract: &Contract,
    (unit, product, tags): (Option<Id>, Id, &[String]),
    usage_at: Timestamp,
) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    if pool.is_empty() {
        return found;
    }
    for (ci, shared) in pool.iter().enumerate() {
        let commit = &shared.commit;
        if !commit.is_released()
            || !shared.usable_by(contract)
            || !commit.pays_for(unit, product, tags)
        {
            continue;
        }
        for (si, segment) in commit.segments.iter().enumerate() {
            if segment.covers(usage_at) && segment.remaining().is_positive() {
                found.push((ci, si));
            }
        }
    }
    found.sort_by(|&(ca, sa), &(cb, sb)| {
        let (a, b) = (&pool[ca].commit, &pool[cb].commit);
        draw_order((a, &a.segments[sa]), (b, &b.segments[sb])).then((ca, sa).cmp(&(cb, sb)))
    });
    found
}

/// What the customer-level commits usable by `contract` add to its balance B at `at`.
///
/// # Errors
/// [`Rejection::AmountOverflow`].
pub(super) fn balance_for(
    pool: &[CustomerCommit],
    contract: &Contract,
    at: Timestamp,
) -> Result<Money, Rejection> {
    let mut total = Money::ZERO;
    for shared in pool
        .iter()
        .filter(|s| s.usable_by(contract) && contract.counts_in_b(&s.commit))
    {
        total = total.checked_add(shared.commit.balance_at(at)?)?;
    }
    Ok(total)
}

impl Customer {
    pub(super) fn create_customer_commit(
        &mut self,
        spec: &CustomerCommitSpec,
        ctx: &Ctx<'_>,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        let profile = self.profile()?;
        let customer_id = profile.id;
        let customer_fields = profile.custom_fields.clone();
        if self.customer_commits.iter().any(|c| c.commit.id == spec.id) {
            return Err(Rejection::AlreadyExists);
        }
        if self.customer_commits.len() >= CUSTOMER_COMMITS_MAX {
            return Err(Rejection::invalid(
                "customer_id",
                &format!(
                    "the customer has {CUSTOMER_COMMITS_MAX} customer-level commits and credits, the most it may have"
                ),
            ));
        }
        if let Some(key) = &spec.uniqueness_key {
            validate_uniqueness_key(key)?;
            if self
                .customer_commits
                .iter()
                .any(|c| c.uniqueness_key.as_ref() == Some(key))
            {
                return Err(Rejection::UniquenessKeyReused);
            }
        }
        if spec.commit.payment_gate.is_some() {
            return Err(Rejection::invalid(
                "payment_gate_config",
                "customer-level commits cannot be payment-gated",
            ));
        }
        validate_commit(&spec.commit, "commit", ctx, profile, None)?;
        let contract_of = |id: Id, field: &str| {
            self.contracts.iter().find(|c| c.id == id).ok_or_else(|| {
                Rejection::invalid(field, &format!("{id} is not a contract of this customer"))
            })
        };
        for &id in &spec.applicable_contract_ids {
            contract_of(id, "applicable_contract_ids")?;
        }
        if let Some(unit) = spec.commit.credit_type {
            // A balance in a custom pricing unit pays only usage priced in it: every contract
            // it names (or, naming none, one of the customer's contracts) has the unit on its
            // rate card.
            let converts = |contract: &Contract| {
                ctx.catalog
                    .rate_card(contract.rate_card_id)
                    .is_some_and(|card| card.conversion_at(unit, ctx.catalog_version).is_some())
            };
            let usable = if spec.applicable_contract_ids.is_empty() {
                self.contracts.iter().any(converts)
            } else {
                self.contracts
                    .iter()
                    .filter(|c| spec.applicable_contract_ids.contains(&c.id))
                    .all(converts)
            };
            if !usable {
                return Err(Rejection::invalid(
                    "access_schedule.credit_type_id",
                    &format!(
                        "{unit}: no contract it would apply to has a rate card with a conversion for it"
                    ),
                ));
            }
        }
        let credit_type = CreditType::usd_cents();
        let invoice_contract = match spec.invoice_contract_id {
            Some(id) => Some(contract_of(id, "invoice_contract_id")?),
            None => None,
        };
        if !spec.commit.invoice_schedule.is_empty() {
            let Some(contract) = invoice_contract else {
                return Err(Rejection::invalid(
                    "invoice_contract_id",
                    "is required for an invoiced commit (the contract its invoices are billed on)",
                ));
            };
            if contract.credit_type.id != credit_type.id {
                return Err(Rejection::invalid(
                    "invoice_contract_id",
                    "the contract bills in another credit type",
                ));
            }
        }
        // Checked: create it.
        let id = spec.id;
        let commit = super::contracts::build_commit(
            id,
            &spec.commit,
            Release::Released { at: ctx.at },
            |i| Id::derive(id, "invoice", i as u64),
            ctx,
        )?;
        if let Some(contract_id) = spec.invoice_contract_id {
            if let Some(contract) = self.contracts.iter_mut().find(|c| c.id == contract_id) {
                for invoice in purchase_invoices(&commit, ctx) {
                    crate::domain::push_first_exact(&mut contract.purchases, invoice);
                }
            }
        }
        let notice_type = match commit.kind {
            CommitKind::Credit => NoticeType::CreditCreate,
            _ => NoticeType::CommitCreate,
        };
        let mut fields = super::lifecycle::commit_fields(&commit);
        fields.insert("commit_type".into(), json!(commit_type(commit.kind)));
        applied.effects.push(Effect::Notice(Notice::flat(
            Id::derive(id, notice_type.as_str(), 0),
            notice_type,
            ctx.at,
            (customer_id, customer_fields.as_slice()),
            Id::NIL,
            fields,
        )));
        crate::domain::push_first_exact(
            &mut self.customer_commits,
            CustomerCommit {
                commit,
                credit_type,
                applicable_contract_ids: spec.applicable_contract_ids.clone(),
                invoice_contract_id: spec.invoice_contract_id,
                uniqueness_key: spec.uniqueness_key.clone(),
            },
        );
        applied.created.push(id);
        // Usable at once: it pays for usage already charged and not covered, contract by
        // contract, then every threshold looks at the new balance.
        let pi = self.customer_commits.len() - 1;
        self.cover_with_shared(pi, ctx)?;
        self.evaluate_all(customer_id, ctx, applied)
    }

    /// Customer-level commit `pi` pays for usage charged and not covered on the open invoices
    /// of every contract it applies to, contract by contract (new money: a creation, a positive
    /// manual entry).
    pub(super) fn cover_with_shared(&mut self, pi: usize, ctx: &Ctx<'_>) -> Result<(), Rejection> {
        for ci in 0..self.contracts.len() {
            if !self.customer_commits[pi].usable_by(&self.contracts[ci]) {
                continue;
            }
            let mut drawable = Drawable {
                contract: &mut self.contracts[ci],
                pool: &mut self.customer_commits,
            };
            cover_outstanding(&mut drawable, DrawSource::Customer(pi), ctx)?;
        }
        Ok(())
    }

    /// `updateEndDate`: access ends at `access_ending_before` (what was drawn stays drawn; what
    /// is left expires then), invoices at or after `invoices_ending_before` are not issued (they
    /// are voided; one already issued refuses the request). Only moves ends earlier.
    pub(super) fn end_customer_commit(
        &mut self,
        end: &CustomerCommitEnd,
        ctx: &Ctx<'_>,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        let customer_id = self.profile()?.id;
        let Some(pi) = self
            .customer_commits
            .iter()
            .position(|c| c.commit.id == end.commit_id)
        else {
            let on_contract = self
                .contracts
                .iter()
                .any(|c| c.commit(end.commit_id).is_some());
            if on_contract {
                return Err(Rejection::invalid(
                    if end.credit { "credit_id" } else { "commit_id" },
                    "is a contract's commit or credit: change it with POST /v2/contracts/edit",
                ));
            }
            return Err(Rejection::CommitNotFound);
        };
        let shared = &self.customer_commits[pi];
        let commit = &shared.commit;
        let (field, wanted) = if end.credit {
            ("credit_id", CommitKind::Credit)
        } else {
            ("commit_id", CommitKind::Prepaid)
        };
        if commit.kind != wanted {
            return Err(Rejection::invalid(
                field,
                if end.credit {
                    "is a commit: use customerCommits/updateEndDate"
                } else {
                    "only PREPAID customer-level commits can be shortened here"
                },
            ));
        }
        if end.access_ending_before.is_none() && end.invoices_ending_before.is_none() {
            return Err(Rejection::MissingField("access_ending_before"));
        }
        if let Some(at) = end.access_ending_before {
            let first = commit.segments.iter().map(|s| s.starting_at).min();
            let last = commit.segments.iter().map(|s| s.ending_before).max();
            if first.is_some_and(|first| at <= first) {
                return Err(Rejection::invalid(
                    "access_ending_before",
                    "must be after the access schedule starts",
                ));
            }
            if last.is_some_and(|last| at > last) {
                return Err(Rejection::invalid(
                    "access_ending_before",
                    "can only move the end earlier",
                ));
            }
        }
        let mut voided = Vec::new();
        if let Some(at) = end.invoices_ending_before {
            let purchases = shared
                .invoice_contract_id
                .and_then(|id| self.contracts.iter().find(|c| c.id == id))
                .map(|c| c.purchases.as_slice())
                .unwrap_or(&[]);
            for item in commit.invoice_schedule.iter().filter(|i| i.timestamp >= at) {
                let invoice = purchases.iter().find(|p| p.id == item.invoice_id);
                // A voided invoice is not issued and never will be: nothing to stop.
                if invoice.is_some_and(|p| p.status == InvoiceStatus::Finalized) {
                    return Err(Rejection::invalid(
                        "invoices_ending_before",
                        &format!(
                            "the invoice of {} is already issued (void it with POST /v1/invoices/void)",
                            item.timestamp.to_rfc3339()
                        ),
                    ));
                }
                voided.push(item.invoice_id);
            }
        }
        // Checked: shorten it.
        let invoice_contract = shared.invoice_contract_id;
        let shared = &mut self.customer_commits[pi];
        if let Some(at) = end.access_ending_before {
            for segment in &mut shared.commit.segments {
                segment.ending_before = segment.ending_before.min(at.max(segment.starting_at));
            }
        }
        if let Some(at) = end.invoices_ending_before {
            shared.commit.invoice_schedule.retain(|i| i.timestamp < at);
        }
        if let Some(contract) =
            invoice_contract.and_then(|id| self.contracts.iter_mut().find(|c| c.id == id))
        {
            for purchase in contract
                .purchases
                .iter_mut()
                .filter(|p| voided.contains(&p.id))
            {
                purchase.void();
            }
        }
        self.evaluate_all(customer_id, ctx, applied)
    }

    /// Evaluates the thresholds of every contract, in order.
    pub(super) fn evaluate_all(
        &mut self,
        customer_id: Id,
        ctx: &Ctx<'_>,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        for ci in 0..self.contracts.len() {
            self.evaluate(ci, customer_id, ctx, applied)?;
        }
        Ok(())
    }

    /// The contract whose usage invoice `invoice_id` is (a customer-level commit's ledger names
    /// it for each deduction).
    pub fn contract_of_usage_invoice(&self, invoice_id: Id) -> Option<Id> {
        self.contracts
            .iter()
            .find(|c| c.periods.iter().any(|p| p.invoice_id == invoice_id))
            .map(|c| c.id)
    }
}

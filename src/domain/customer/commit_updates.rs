//! `update_commits` and `update_credits` of `/v2/contracts/edit`: a contract's commit or credit
//! changed in place (names, priority, what it pays for, its access schedule, a commit's invoice
//! schedule).
//!
//! Metronome does not say what an update may do to money already moved; Tollgate's rules keep
//! every balance and invoice consistent with what happened:
//! - a segment's amount may not fall below what usage drew from it (less its manual entries);
//!   a raised amount is new money and pays for uncovered usage at once;
//! - a segment's start may move only while nothing was drawn from it; its end may move later,
//!   or earlier but not into the past (what expired is history), and always after its start;
//! - a segment may be removed only while nothing was drawn from it and it has no manual
//!   entries; it is kept as an empty window (amount 0, ending at its start), so the positions
//!   that usage lines and ledgers name never shift, and is left out of every view;
//! - a segment's dates do not move once it has ended;
//! - an invoice schedule item may be changed or removed only while its invoice is not issued
//!   (removed: the invoice is voided), and once usage drew from the commit its invoices are
//!   neither lowered nor removed (the usage was paid for with them); an added one is a new
//!   SCHEDULED invoice;
//! - added segments and invoices take ids derived from the edit, so an edit applied again is
//!   refused (409) rather than adding them twice;
//! - a commit bought through a payment gate, or issued by a threshold, keeps its schedules (its
//!   workflow charged exactly them); an archived commit is not updated.
//!
//! The edit runs on a copy of the customer (see `Customer::apply`), so an update refused half
//! way leaves nothing changed.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{Ctx, DEFAULT_PRIORITY, commit_name};
use crate::domain::bounds;
use crate::domain::catalog::ProductKind;
use crate::domain::contract::{
    CommitKind, Contract, InvoiceScheduleItem, InvoiceStatus, Release, Segment,
};
use crate::domain::ids::{Id, Timestamp};
use crate::domain::money::Money;
use crate::domain::rejection::Rejection;

/// At most this many commit updates in one edit, and schedule changes in one update.
pub const UPDATES_MAX: usize = 100;
/// At most this many segments on one commit or credit, removed ones included.
pub const SEGMENTS_MAX: usize = 1_000;

/// One item of `update_commits` (or, with `credit`, of `update_credits`). `None` leaves a field
/// as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitUpdate {
    pub commit_id: Id,
    pub credit: bool,
    pub name: Option<String>,
    pub description: Option<String>,
    /// `Some(None)`: back to the default priority.
    pub priority: Option<Option<Decimal>>,
    pub product_id: Option<Id>,
    /// `Some(empty)` (a `null` in the request): every product.
    pub applicable_product_ids: Option<Vec<Id>>,
    pub applicable_product_tags: Option<Vec<String>>,
    /// (amount, starting_at, ending_before) per added segment.
    pub add_segments: Vec<(Money, Timestamp, Timestamp)>,
    pub update_segments: Vec<SegmentUpdate>,
    pub remove_segments: Vec<Id>,
    /// (timestamp, unit_price, quantity) per added invoice.
    pub add_invoices: Vec<(Timestamp, Money, Decimal)>,
    pub update_invoices: Vec<InvoiceUpdate>,
    pub remove_invoices: Vec<Id>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentUpdate {
    pub id: Id,
    pub amount: Option<Money>,
    pub starting_at: Option<Timestamp>,
    pub ending_before: Option<Timestamp>,
}

/// A changed invoice schedule item: `amount` sets the price of one unit, as on creation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceUpdate {
    pub id: Id,
    pub timestamp: Option<Timestamp>,
    pub amount: Option<Money>,
    pub unit_price: Option<Money>,
    pub quantity: Option<Decimal>,
}

/// Applies `updates` (the `i`-th at `update_commits[i]` or `update_credits[i]`) to `contract`,
/// refusing the first that breaks a rule. Answers the commits whose balance grew (they pay for
/// uncovered usage next). The caller rebuilds the contract's caches.
pub(super) fn apply_updates(
    contract: &mut Contract,
    updates: &[CommitUpdate],
    edit_id: Id,
    ctx: &Ctx<'_>,
) -> Result<Vec<usize>, Rejection> {
    if updates.len() > UPDATES_MAX {
        return Err(Rejection::invalid(
            "update_commits",
            &format!("at most {UPDATES_MAX} updates in one edit"),
        ));
    }
    let mut grown = Vec::new();
    let mut seen = Vec::new();
    for (n, update) in updates.iter().enumerate() {
        let list = if update.credit {
            "update_credits"
        } else {
            "update_commits"
        };
        let field = |name: &str| format!("{list}[].{name}");
        let ci = contract
            .commits
            .iter()
            .position(|c| c.id == update.commit_id)
            .ok_or_else(|| {
                Rejection::invalid(
                    &field(if update.credit {
                        "credit_id"
                    } else {
                        "commit_id"
                    }),
                    &format!(
                        "{} is not a commit or credit of this contract",
                        update.commit_id
                    ),
                )
            })?;
        if seen.contains(&ci) {
            return Err(Rejection::invalid(
                &field("commit_id"),
                &format!("{} is updated twice in one edit", update.commit_id),
            ));
        }
        seen.push(ci);
        let commit = &contract.commits[ci];
        if (commit.kind == CommitKind::Credit) != update.credit {
            return Err(Rejection::invalid(
                &field(if update.credit {
                    "credit_id"
                } else {
                    "commit_id"
                }),
                if update.credit {
                    "is a commit: update it with update_commits"
                } else {
                    "is a credit: update it with update_credits"
                },
            ));
        }
        if commit.archived_at.is_some() {
            return Err(Rejection::invalid(&field("commit_id"), "is archived"));
        }
        let schedules_change = !update.add_segments.is_empty()
            || !update.update_segments.is_empty()
            || !update.remove_segments.is_empty()
            || !update.add_invoices.is_empty()
            || !update.update_invoices.is_empty()
            || !update.remove_invoices.is_empty();
        let has_workflow = commit.created_by_threshold.is_some()
            || contract.workflows.iter().any(|w| w.commit_id == commit.id);
        if schedules_change && has_workflow {
            return Err(Rejection::invalid(
                &field("access_schedule"),
                "a commit bought through a payment gate or issued by a threshold keeps the schedules its workflow charged",
            ));
        }
        if schedules_change && !matches!(commit.release, Release::Released { .. }) {
            return Err(Rejection::invalid(
                &field("access_schedule"),
                "the commit is not usable",
            ));
        }
        let changes = update.add_segments.len()
            + update.update_segments.len()
            + update.remove_segments.len()
            + update.add_invoices.len()
            + update.update_invoices.len()
            + update.remove_invoices.len();
        if changes > UPDATES_MAX {
            return Err(Rejection::invalid(
                &field("access_schedule"),
                &format!("at most {UPDATES_MAX} schedule changes in one update"),
            ));
        }
        if let Some(product_id) = update.product_id {
            let product = ctx
                .catalog
                .product(product_id)
                .ok_or_else(|| Rejection::ProductNotFound(product_id.to_string()))?;
            if !matches!(product.kind, ProductKind::Fixed) {
                return Err(Rejection::WrongProductType(format!(
                    "{} must be a FIXED product",
                    field("product_id")
                )));
            }
        }
        if update
            .priority
            .flatten()
            .is_some_and(|p| p.is_sign_negative())
        {
            return Err(Rejection::invalid(
                &field("priority"),
                "must not be negative",
            ));
        }
        let before = balance_sum(&contract.commits[ci].segments)?;
        update_segments(
            &mut contract.commits[ci].segments,
            update,
            (edit_id, n),
            ctx.at,
            &field,
        )?;
        let commit_id = contract.commits[ci].id;
        update_invoices(contract, ci, update, (edit_id, n), ctx, &field)?;
        let commit = &mut contract.commits[ci];
        if let Some(name) = &update.name {
            commit.name = commit_name(
                ctx,
                update.product_id.unwrap_or(commit.product_id),
                &Some(name.clone()),
            );
        }
        if let Some(description) = &update.description {
            commit.description = Some(description.clone());
        }
        if let Some(priority) = update.priority {
            commit.priority = priority.unwrap_or(Decimal::from(DEFAULT_PRIORITY));
        }
        if let Some(product_id) = update.product_id {
            commit.product_id = product_id;
            for purchase in contract
                .purchases
                .iter_mut()
                .filter(|p| p.commit_id == commit_id && p.status == InvoiceStatus::Draft)
            {
                purchase.product_id = product_id;
            }
        }
        let commit = &mut contract.commits[ci];
        if let Some(ids) = &update.applicable_product_ids {
            commit.applicable_product_ids = ids.clone();
        }
        if let Some(tags) = &update.applicable_product_tags {
            commit.applicable_product_tags = tags.clone();
        }
        // Only a usable commit pays for uncovered usage (one waiting for its payment never).
        let wider =
            update.applicable_product_ids.is_some() || update.applicable_product_tags.is_some();
        if commit.is_released() && (balance_sum(&commit.segments)? > before || wider) {
            grown.push(ci);
        }
    }
    Ok(grown)
}

/// Whether usage drew anything from the commit (or manual entries moved it).
pub(super) fn drawn_from(commit: &crate::domain::contract::Commit) -> bool {
    commit
        .segments
        .iter()
        .any(|s| !s.drawn.is_zero() || !s.manual.is_zero())
}

/// What the segments hold in all (amount and manual entries, less what was drawn).
fn balance_sum(segments: &[Segment]) -> Result<Money, Rejection> {
    segments
        .iter()
        .try_fold(Money::ZERO, |sum, s| sum.checked_add(s.remaining()))
}

fn update_segments(
    segments: &mut Vec<Segment>,
    update: &CommitUpdate,
    (edit_id, n): (Id, usize),
    now: Timestamp,
    field: &impl Fn(&str) -> String,
) -> Result<(), Rejection> {
    let items = field("access_schedule.update_schedule_items[]");
    for change in &update.update_segments {
        let segment = segments
            .iter_mut()
            .find(|s| s.id == change.id && !s.is_removed())
            .ok_or_else(|| {
                Rejection::invalid(
                    &format!("{items}.id"),
                    &format!("{} is not a segment of the commit", change.id),
                )
            })?;
        if let Some(amount) = change.amount {
            bounds::check_amount(&format!("{items}.amount"), amount)?;
            // What usage drew, less what positive manual entries gave it.
            let floor = segment
                .drawn
                .checked_sub(segment.manual.max(Money::ZERO))?
                .max(Money::ZERO);
            if amount < floor {
                return Err(Rejection::invalid(
                    &format!("{items}.amount"),
                    &format!(
                        "usage drew {} from the segment (less its positive manual entries): its amount cannot be lower",
                        floor.as_decimal()
                    ),
                ));
            }
            if amount.exact_add(segment.manual).is_none() {
                return Err(Rejection::AmountOverflow);
            }
            segment.amount = amount;
        }
        let moves = change.starting_at.is_some_and(|s| s != segment.starting_at)
            || change
                .ending_before
                .is_some_and(|e| e != segment.ending_before);
        if moves && segment.ending_before <= now {
            return Err(Rejection::invalid(
                &format!("{items}.ending_before"),
                "the segment has ended: what expired is history",
            ));
        }
        if let Some(start) = change.starting_at {
            if start != segment.starting_at && !segment.drawn.is_zero() {
                return Err(Rejection::invalid(
                    &format!("{items}.starting_at"),
                    "the segment was drawn from: its start cannot move",
                ));
            }
            segment.starting_at = start;
        }
        if let Some(end) = change.ending_before {
            if end < segment.ending_before && end < now {
                return Err(Rejection::invalid(
                    &format!("{items}.ending_before"),
                    "an end can move earlier, but not into the past",
                ));
            }
            segment.ending_before = end;
        }
        if segment.ending_before <= segment.starting_at {
            return Err(Rejection::invalid(
                &format!("{items}.ending_before"),
                "must be after starting_at",
            ));
        }
    }
    let removals = field("access_schedule.remove_schedule_items[]");
    for id in &update.remove_segments {
        let segment = segments
            .iter_mut()
            .find(|s| s.id == *id && !s.is_removed())
            .ok_or_else(|| {
                Rejection::invalid(
                    &format!("{removals}.id"),
                    &format!("{id} is not a segment of the commit"),
                )
            })?;
        if !segment.drawn.is_zero() || !segment.manual.is_zero() {
            return Err(Rejection::invalid(
                &format!("{removals}.id"),
                "the segment was drawn from or has manual entries: shorten it instead",
            ));
        }
        segment.amount = Money::ZERO;
        segment.ending_before = segment.starting_at;
    }
    let additions = field("access_schedule.add_schedule_items[]");
    if segments.len() + update.add_segments.len() > SEGMENTS_MAX {
        return Err(Rejection::invalid(
            &additions,
            &format!("a commit has at most {SEGMENTS_MAX} segments"),
        ));
    }
    for (k, &(amount, start, end)) in update.add_segments.iter().enumerate() {
        bounds::check_amount(&format!("{additions}.amount"), amount)?;
        if end <= start {
            return Err(Rejection::invalid(
                &format!("{additions}.ending_before"),
                "must be after starting_at",
            ));
        }
        // Derived from the edit, update and item: an edit applied again finds its segment.
        let id = Id::derive(edit_id, "segment", ((n as u64) << 32) | k as u64);
        if segments.iter().any(|s| s.id == id) {
            return Err(Rejection::AlreadyExists);
        }
        segments.push(Segment {
            id,
            amount,
            starting_at: start,
            ending_before: end,
            drawn: Money::ZERO,
            manual: Money::ZERO,
        });
    }
    if segments.iter().all(Segment::is_removed) {
        return Err(Rejection::invalid(
            &field("access_schedule"),
            "at least one segment must remain",
        ));
    }
    Ok(())
}

fn update_invoices(
    contract: &mut Contract,
    ci: usize,
    update: &CommitUpdate,
    (edit_id, n): (Id, usize),
    ctx: &Ctx<'_>,
    field: &impl Fn(&str) -> String,
) -> Result<(), Rejection> {
    let touches = !update.add_invoices.is_empty()
        || !update.update_invoices.is_empty()
        || !update.remove_invoices.is_empty();
    if !touches {
        return Ok(());
    }
    if update.credit || contract.commits[ci].kind == CommitKind::Credit {
        return Err(Rejection::invalid(
            &field("invoice_schedule"),
            "credits are free and have no invoice schedule",
        ));
    }
    let items = field("invoice_schedule.update_schedule_items[]");
    let unissued = |contract: &Contract, invoice_id: Id| {
        contract
            .purchases
            .iter()
            .any(|p| p.id == invoice_id && p.status == InvoiceStatus::Draft)
    };
    for change in &update.update_invoices {
        let at = contract.commits[ci]
            .invoice_schedule
            .iter()
            .position(|i| i.id == change.id)
            .ok_or_else(|| {
                Rejection::invalid(
                    &format!("{items}.id"),
                    &format!(
                        "{} is not an invoice schedule item of the commit",
                        change.id
                    ),
                )
            })?;
        let invoice_id = contract.commits[ci].invoice_schedule[at].invoice_id;
        if !unissued(contract, invoice_id) {
            return Err(Rejection::invalid(
                &format!("{items}.id"),
                "its invoice is issued already (void it with POST /v1/invoices/void)",
            ));
        }
        if change.amount.is_some() && (change.unit_price.is_some() || change.quantity.is_some()) {
            return Err(Rejection::invalid(
                &format!("{items}.amount"),
                "give amount, or unit_price and quantity, not both",
            ));
        }
        let drawn = drawn_from(&contract.commits[ci]);
        let item = &mut contract.commits[ci].invoice_schedule[at];
        let before = item.amount;
        if let Some(timestamp) = change.timestamp {
            item.timestamp = timestamp;
        }
        match (change.amount, change.unit_price) {
            (Some(amount), _) => {
                item.unit_price = amount;
                item.quantity = Decimal::ONE;
            }
            (None, Some(price)) => item.unit_price = price,
            (None, None) => {}
        }
        if let Some(quantity) = change.quantity {
            item.quantity = quantity;
        }
        bounds::check_amount(&format!("{items}.unit_price"), item.unit_price)?;
        bounds::check_quantity(&format!("{items}.quantity"), item.quantity)?;
        item.amount = item.unit_price.checked_mul(item.quantity)?;
        bounds::check_amount(&format!("{items}.amount"), item.amount)?;
        if drawn && item.amount < before {
            return Err(Rejection::invalid(
                &format!("{items}.amount"),
                "usage drew from the commit: its invoices are not lowered",
            ));
        }
        let (timestamp, amount) = (item.timestamp, item.amount);
        if let Some(purchase) = contract.purchases.iter_mut().find(|p| p.id == invoice_id) {
            purchase.issued_at = timestamp;
            purchase.subtotal = amount;
            purchase.total = amount;
            if timestamp <= ctx.at {
                purchase.status = InvoiceStatus::Finalized;
            }
        }
    }
    let removals = field("invoice_schedule.remove_schedule_items[]");
    for id in &update.remove_invoices {
        let at = contract.commits[ci]
            .invoice_schedule
            .iter()
            .position(|i| i.id == *id)
            .ok_or_else(|| {
                Rejection::invalid(
                    &format!("{removals}.id"),
                    &format!("{id} is not an invoice schedule item of the commit"),
                )
            })?;
        let invoice_id = contract.commits[ci].invoice_schedule[at].invoice_id;
        if !unissued(contract, invoice_id) {
            return Err(Rejection::invalid(
                &format!("{removals}.id"),
                "its invoice is issued already (void it with POST /v1/invoices/void)",
            ));
        }
        if drawn_from(&contract.commits[ci]) {
            return Err(Rejection::invalid(
                &format!("{removals}.id"),
                "usage drew from the commit: its invoices are not removed",
            ));
        }
        contract.commits[ci].invoice_schedule.remove(at);
        if let Some(purchase) = contract.purchases.iter_mut().find(|p| p.id == invoice_id) {
            purchase.void();
        }
    }
    let additions = field("invoice_schedule.add_schedule_items[]");
    for (k, &(timestamp, unit_price, quantity)) in update.add_invoices.iter().enumerate() {
        bounds::check_amount(&format!("{additions}.unit_price"), unit_price)?;
        bounds::check_quantity(&format!("{additions}.quantity"), quantity)?;
        let amount = unit_price.checked_mul(quantity)?;
        bounds::check_amount(&format!("{additions}.amount"), amount)?;
        // Unique per edit, update and item: replay derives the same ids.
        let seq = ((n as u64) << 32) | k as u64;
        if contract
            .purchases
            .iter()
            .any(|p| p.id == Id::derive(edit_id, "invoice", seq))
        {
            return Err(Rejection::AlreadyExists);
        }
        let item = InvoiceScheduleItem {
            id: Id::derive(edit_id, "invoice_schedule_item", seq),
            timestamp,
            amount,
            quantity,
            unit_price,
            invoice_id: Id::derive(edit_id, "invoice", seq),
        };
        let commit = &contract.commits[ci];
        let mut purchase = super::contracts::purchase_invoice(commit, &item, ctx);
        // The product this edit gives the commit (set after its invoices).
        purchase.product_id = update.product_id.unwrap_or(commit.product_id);
        contract.commits[ci].invoice_schedule.push(item);
        crate::domain::push_first_exact(&mut contract.purchases, purchase);
    }
    if contract.commits[ci].kind == CommitKind::Postpaid
        && contract.commits[ci].invoice_schedule.is_empty()
    {
        return Err(Rejection::invalid(
            &field("invoice_schedule"),
            "is required for POSTPAID commits",
        ));
    }
    Ok(())
}

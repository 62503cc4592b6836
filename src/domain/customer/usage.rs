//! Usage: rating one usage event into charges, and drawing them down.
//!
//! Owns the check phase of a usage event (every charge computed with checked arithmetic before
//! anything changes), the billing periods and usage lines the charges land on, and the drawdown
//! from released segments in drawdown order: drawing down, giving back when usage goes down,
//! and covering outstanding spend with a newly usable commit. It must not decide about
//! thresholds or workflows: after charging it asks `workflows` to evaluate, nothing more.

use rust_decimal::Decimal;

use super::customer_level::{self, CustomerCommit};
use super::{Applied, Ctx, Customer};
use crate::domain::catalog::{Catalog, Contribution, Price};
use crate::domain::contract::{
    Aggregate, Commit, Contract, DrawSource, InvoiceStatus, Level, UsageLine, UsagePeriod,
    draw_order_across,
};
use crate::domain::ids::{Id, Timestamp};
use crate::domain::money::{Conversion, Money};
use crate::domain::rejection::Rejection;
use crate::domain::usage::UsageEvent;

/// One charge computed in the check phase of a usage event, applied after.
#[derive(Clone, Copy)]
struct Charge {
    contract: usize,
    period_bounds: (Timestamp, Timestamp),
    product_id: Id,
    contribution: Contribution,
    new_charged: Money,
    delta: Money,
    /// The product's custom pricing unit on the contract's rate card, as its index in the
    /// card's conversions (`None`: fiat; an index keeps a charge small, and most are fiat).
    unit: Option<u16>,
}

/// How many charges of one event are kept without touching the heap: an event usually rates
/// one product of one contract; more spill to a `Vec`.
const CHARGES_INLINE: usize = 4;

/// The charges of one event, inline up to [`CHARGES_INLINE`].
#[derive(Default)]
struct Charges {
    inline: [Option<Charge>; CHARGES_INLINE],
    spill: Vec<Charge>,
}

impl Charges {
    fn push(&mut self, charge: Charge) {
        match self.inline.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(charge),
            None => self.spill.push(charge),
        }
    }

    fn is_empty(&self) -> bool {
        self.inline[0].is_none()
    }

    /// In the order pushed.
    fn iter(&self) -> impl Iterator<Item = &Charge> {
        self.inline
            .iter()
            .map_while(Option::as_ref)
            .chain(&self.spill)
    }
}

impl Customer {
    pub(super) fn record_usage(
        &mut self,
        event: &UsageEvent,
        ctx: &Ctx<'_>,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        let profile = self.profile()?;
        if profile
            .archived_at
            .is_some_and(|archived| archived <= ctx.at)
        {
            // SPEC 2.1: accepted after the archive (deduplicated like any event) and not
            // billed. An event accepted before it and applied later (re-applied from
            // quarantine, released after its alias appeared) is billed as of its acceptance.
            return Ok(());
        }
        let customer_id = profile.id;
        let charges = self.rate_event(event, ctx)?;
        if charges.is_empty() {
            return Ok(());
        }
        // Checked as far as it can be: from here the event applies in place (see `apply`).
        let mut shared_touched = false;
        for charge in charges.iter() {
            let tags = product_tags(ctx.catalog, charge.product_id);
            let conversion = match charge.unit {
                None => None,
                Some(index) => ctx
                    .catalog
                    .rate_card(self.contracts[charge.contract].rate_card_id)
                    .and_then(|card| card.conversions.get(usize::from(index)))
                    .copied(),
            };
            let mut drawable = Drawable {
                contract: &mut self.contracts[charge.contract],
                pool: &mut self.customer_commits,
            };
            let product = (conversion, tags);
            shared_touched |=
                apply_charge(&mut drawable, charge, product, event.timestamp, ctx.at)?;
        }
        if shared_touched {
            // A customer-level balance moved: every contract that counts it looks again.
            return self.evaluate_all(customer_id, ctx, applied);
        }
        // Charges come contract by contract: evaluate each touched contract once, in order.
        let mut last = None;
        for charge in charges.iter() {
            if last != Some(charge.contract) {
                last = Some(charge.contract);
                self.evaluate(charge.contract, customer_id, ctx, applied)?;
            }
        }
        Ok(())
    }

    /// The check phase of a usage event: the charge of every line it rates, contract by
    /// contract.
    fn rate_event(&self, event: &UsageEvent, ctx: &Ctx<'_>) -> Result<Charges, Rejection> {
        let mut charges = Charges::default();
        // Check phase: every charge computed with checked arithmetic, nothing changed yet.
        for (ci, contract) in self.contracts.iter().enumerate() {
            if !contract.covers(event.timestamp) {
                continue;
            }
            let Some(card) = ctx.catalog.rate_card(contract.rate_card_id) else {
                continue;
            };
            for (metric, products) in ctx
                .catalog
                .rating_candidates(&event.event_type, ctx.catalog_version)
            {
                if !metric.matches(event) {
                    continue;
                }
                let Some(contribution) = metric.contribution(event) else {
                    continue;
                };
                for &product_id in products {
                    let Some(rate) = card.rate_at(product_id, event.timestamp, ctx.catalog_version)
                    else {
                        continue;
                    };
                    if !rate.entitled {
                        continue;
                    }
                    let line = (ci, product_id);
                    let mut charge = rate_line(contract, line, &rate.price, contribution, event)?;
                    if rate.credit_type_id != card.fiat_credit_type.id {
                        let (index, conversion) = card.conversion_index_of(rate)?;
                        charge.unit = Some(index);
                        // What the line leaves uncovered is at most its charge: converting
                        // the charge checks every conversion the apply phase makes.
                        conversion.to_fiat(charge.new_charged)?;
                    }
                    charges.push(charge);
                }
            }
        }
        Ok(charges)
    }
}

/// The charge of one event on the line of `product_id` in contract `ci` (`contract`): the
/// line's new charge and its change. Nothing is changed.
fn rate_line(
    contract: &Contract,
    (ci, product_id): (usize, Id),
    price: &Price,
    contribution: Contribution,
    event: &UsageEvent,
) -> Result<Charge, Rejection> {
    // The period holding the event is usually the latest one: finding it by its bounds avoids
    // the calendar arithmetic of `period_bounds`.
    let period = contract
        .periods
        .iter()
        .rposition(|p| p.starting_at <= event.timestamp && event.timestamp < p.ending_before);
    let bounds = match period {
        Some(pi) => {
            let p = &contract.periods[pi];
            (p.starting_at, p.ending_before)
        }
        None => period_bounds(contract, event.timestamp),
    };
    debug_assert_eq!(bounds, period_bounds(contract, event.timestamp));
    let line = period.and_then(|p| {
        contract.periods[p]
            .lines
            .iter()
            .position(|l| l.product_id == product_id)
    });
    let (old_charged, old_quantity, new_quantity) = match line {
        Some(li) => {
            let l = &contract.periods[period.expect("line implies period")].lines[li];
            let old = l.aggregate.quantity();
            (l.charged, old, l.aggregate.quantity_with(&contribution)?)
        }
        None => (
            Money::ZERO,
            Decimal::ZERO,
            Aggregate::empty_for(&contribution).quantity_with(&contribution)?,
        ),
    };
    let (new_charged, delta) = line_charge(price, old_charged, old_quantity, new_quantity)?;
    Ok(Charge {
        contract: ci,
        period_bounds: bounds,
        product_id,
        contribution,
        new_charged,
        delta,
        unit: None,
    })
}

/// What a contract's usage draws from: the contract's own commits and credits, and the
/// customer-level ones (`pool`, indexed by [`DrawSource::Customer`]).
pub(super) struct Drawable<'a> {
    pub contract: &'a mut Contract,
    pub pool: &'a mut [CustomerCommit],
}

impl Drawable<'_> {
    fn commit(&self, source: DrawSource) -> &Commit {
        match source {
            DrawSource::Contract(ci) => &self.contract.commits[ci],
            DrawSource::Customer(ci) => &self.pool[ci].commit,
        }
    }

    /// Records a drawdown of `amount` from segment `si` of `source` for `invoice_id`.
    fn deduct(
        &mut self,
        (source, si): (DrawSource, usize),
        invoice_id: Id,
        amount: Money,
        at: Timestamp,
    ) -> Result<(), Rejection> {
        match source {
            DrawSource::Contract(ci) => self.contract.deduct((ci, si), invoice_id, amount, at),
            DrawSource::Customer(ci) => self.pool[ci]
                .commit
                .record_deduction(si, invoice_id, amount, at),
        }
    }

    /// Takes back `amount` of the drawdown from segment `si` of `source` by `invoice_id`.
    fn return_deduction(
        &mut self,
        (source, si): (DrawSource, usize),
        invoice_id: Id,
        amount: Money,
    ) -> Result<(), Rejection> {
        match source {
            DrawSource::Contract(ci) => {
                let commit = &mut self.contract.commits[ci];
                let before = commit.segments[si].remaining();
                commit.return_deduction(si, invoice_id, amount)?;
                let after = commit.segments[si].remaining();
                self.contract
                    .segment_changed((ci, si), before, after, false);
                Ok(())
            }
            DrawSource::Customer(_)
                if crate::defects::active(crate::defects::Defect::SharedGiveBackLost) =>
            {
                Ok(())
            }
            DrawSource::Customer(ci) => self.pool[ci]
                .commit
                .return_deduction(si, invoice_id, amount),
        }
    }
}

/// Applies one checked charge to its usage line (opening the period and the line if needed)
/// and draws it down, or gives back what the line drew when it went down. Answers whether a
/// customer-level balance changed.
fn apply_charge(
    drawable: &mut Drawable<'_>,
    charge: &Charge,
    (conversion, tags): (Option<Conversion>, &[String]),
    usage_at: Timestamp,
    at: Timestamp,
) -> Result<bool, Rejection> {
    let contract = &mut *drawable.contract;
    let pi = match contract
        .periods
        .iter()
        .rposition(|p| p.starting_at == charge.period_bounds.0)
    {
        Some(pi) => pi,
        None => open_period(contract, charge.period_bounds),
    };
    let existing = contract.periods[pi]
        .lines
        .iter()
        .position(|l| l.product_id == charge.product_id);
    let li = match existing {
        Some(li) => li,
        None => {
            let lines = &mut contract.periods[pi].lines;
            let aggregate = Aggregate::empty_for(&charge.contribution);
            let line = UsageLine::new(charge.product_id, aggregate, conversion);
            crate::domain::push_first_exact(lines, line);
            lines.len() - 1
        }
    };
    let invoice_id = contract.periods[pi].invoice_id;
    let line = &mut contract.periods[pi].lines[li];
    debug_assert_eq!(line.conversion, conversion, "one unit per product and card");
    let uncovered_before = line.uncovered_fiat()?;
    line.aggregate.add(&charge.contribution);
    line.charged = charge.new_charged;
    let mut shared_touched = false;
    if charge.delta.is_positive() {
        let drawn = Drawn {
            line: (pi, li),
            invoice_id,
            usage_at,
        };
        let product = (conversion, charge.product_id, tags);
        shared_touched = draw_down(drawable, product, drawn, charge.delta, at)?;
    } else if charge.delta.is_negative() {
        // SPEC 2.1: a decrease first gives back what the line drew, then lowers S.
        let decrease = Money::ZERO.checked_sub(charge.delta)?;
        shared_touched = give_back(drawable, (pi, li), invoice_id, decrease)?;
    }
    let contract = &mut *drawable.contract;
    let uncovered_after = contract.periods[pi].lines[li].uncovered_fiat()?;
    contract.line_changed(pi, uncovered_before, uncovered_after);
    Ok(shared_touched)
}

fn product_tags(catalog: &Catalog, product: Id) -> &[String] {
    catalog
        .product(product)
        .map(|p| p.tags.as_slice())
        .unwrap_or(&[])
}

/// The monthly billing period (first of month, UTC) containing `at`, clipped to the contract.
/// Needed once per period: an event finds the period it belongs to among those already open.
#[cold]
#[inline(never)]
pub(super) fn period_bounds(contract: &Contract, at: Timestamp) -> (Timestamp, Timestamp) {
    let start = at.month_start().max(contract.starting_at);
    let end = at.next_month_start().min(contract.end_or_forever());
    (start, end)
}

fn open_period(contract: &mut Contract, (start, end): (Timestamp, Timestamp)) -> usize {
    let invoice_id = Id::derive(contract.id, "usage_invoice", start.millis() as u64);
    let at = contract.periods.partition_point(|p| p.starting_at < start);
    crate::domain::insert_first_exact(
        &mut contract.periods,
        at,
        UsagePeriod {
            invoice_id,
            starting_at: start,
            ending_before: end,
            status: InvoiceStatus::Draft,
            lines: Vec::new(),
        },
    );
    at
}

/// Where a drawdown goes: the usage line (period, line index), its invoice and the usage time.
#[derive(Clone, Copy)]
struct Drawn {
    line: (usize, usize),
    invoice_id: Id,
    usage_at: Timestamp,
}

/// The charge of a line after its quantity went from `old_quantity` to `new_quantity`, and the
/// change: `(new_charged, delta)`. SPEC 2.1: a line is charged on its net quantity, floored at
/// zero. Marginal pricing: the increment is priced by the rate in effect at the event's time
/// (tiers still count the period's total), so a rate change mid-period does not re-price
/// earlier usage; a net at or below zero charges nothing whatever rates applied before.
fn line_charge(
    price: &Price,
    old_charged: Money,
    old_quantity: Decimal,
    new_quantity: Decimal,
) -> Result<(Money, Money), Rejection> {
    let floor = |q: Decimal| {
        if q.is_sign_negative() {
            Decimal::ZERO
        } else {
            q
        }
    };
    if crate::defects::active(crate::defects::Defect::NoGiveBack) && new_quantity < old_quantity {
        return Ok((old_charged, Money::ZERO));
    }
    let new_charged = if new_quantity.is_sign_negative() || new_quantity.is_zero() {
        Money::ZERO
    } else {
        let delta = price
            .charge_for(floor(new_quantity))?
            .checked_sub(price.charge_for(floor(old_quantity))?)?;
        old_charged.checked_add(delta)?.floor_zero()
    };
    Ok((new_charged, new_charged.checked_sub(old_charged)?))
}

/// Draws `amount` of usage (in the line's unit) from eligible released segments in drawdown
/// order and records the draws on the line. A line in a custom pricing unit draws from the
/// commits and credits in that unit first; what they cannot pay, fiat ones pay at the rate
/// card's conversion (converted draws). Answers whether a customer-level segment was drawn
/// from.
fn draw_down(
    drawable: &mut Drawable<'_>,
    (conversion, product, tags): (Option<Conversion>, Id, &[String]),
    drawn: Drawn,
    amount: Money,
    at: Timestamp,
) -> Result<bool, Rejection> {
    let unit = conversion.map(|c| c.credit_type_id);
    let mut left = amount;
    let mut touched = draw_from(drawable, (unit, product, tags), drawn, &mut left, false, at)?;
    if let (Some(conversion), true) = (conversion, left.is_positive()) {
        // At most the charge, which converted in the check phase: no overflow.
        let mut fiat = conversion.to_fiat(left)?;
        touched |= draw_from(drawable, (None, product, tags), drawn, &mut fiat, true, at)?;
    }
    Ok(touched)
}

/// Draws up to `left` from the released segments in `unit` (`None`: fiat) that may pay for
/// `product`: the contract's own and the customer-level ones usable by it, merged in
/// [`draw_order_across`] (contract-level first at equal priority). Only segments with something
/// left are visited (the live list, a subsequence of `draw_order`, and the customer-level
/// candidates): an exhausted one could give nothing. `converted`: fiat paying for a line in a
/// custom pricing unit (`left` is fiat). Answers whether a customer-level segment was drawn
/// from.
fn draw_from(
    drawable: &mut Drawable<'_>,
    (unit, product, tags): (Option<Id>, Id, &[String]),
    drawn: Drawn,
    left: &mut Money,
    converted: bool,
    at: Timestamp,
) -> Result<bool, Rejection> {
    let (pi, li) = drawn.line;
    let shared = customer_level::candidates(
        drawable.pool,
        drawable.contract,
        (unit, product, tags),
        drawn.usage_at,
    );
    let mut next_shared = shared.iter().copied().peekable();
    let mut shared_touched = false;
    let mut i = 0;
    while left.is_positive() {
        let contract = &*drawable.contract;
        // The next of the contract's own segments this usage may draw from.
        while let Some(&(ci, si)) = contract.caches.live.get(i) {
            let commit = &contract.commits[ci];
            if commit.segments[si].covers(drawn.usage_at) && commit.pays_for(unit, product, tags) {
                break;
            }
            i += 1;
        }
        let own = contract.caches.live.get(i).copied();
        let source = match (own, next_shared.peek().copied()) {
            (None, None) => break,
            (Some((ci, si)), None) => (DrawSource::Contract(ci), si),
            (None, Some((ci, si))) => (DrawSource::Customer(ci), si),
            (Some((oc, os)), Some((sc, ss))) => {
                let own = &contract.commits[oc];
                let other = &drawable.pool[sc].commit;
                let order = draw_order_across(
                    (own, &own.segments[os], Level::Contract),
                    (other, &other.segments[ss], Level::Customer),
                );
                if order == std::cmp::Ordering::Less {
                    (DrawSource::Contract(oc), os)
                } else {
                    (DrawSource::Customer(sc), ss)
                }
            }
        };
        let (commit_source, si) = source;
        let before = drawable.commit(commit_source).segments[si].remaining();
        let take = (*left).min(before);
        match commit_source {
            DrawSource::Contract(ci) => {
                let contract = &mut *drawable.contract;
                contract.commits[ci].record_deduction(si, drawn.invoice_id, take, at)?;
                let after = contract.commits[ci].segments[si].remaining();
                contract.segment_changed((ci, si), before, after, true);
                if after.is_positive() {
                    i += 1;
                } else {
                    contract.caches.live.remove(i);
                }
            }
            DrawSource::Customer(ci) => {
                drawable.pool[ci]
                    .commit
                    .record_deduction(si, drawn.invoice_id, take, at)?;
                next_shared.next();
                shared_touched = true;
            }
        }
        let line = &mut drawable.contract.periods[pi].lines[li];
        let at_segment = (commit_source.encoded(), si);
        if converted {
            line.record_converted_draw(at_segment, take)?;
        } else {
            line.record_draw(at_segment, take)?;
        }
        *left = left.checked_sub(take)?;
    }
    Ok(shared_touched)
}

/// Gives back a decrease of `amount` (in the line's unit) of line `(pi, li)` to the segments it
/// drew from, last drawn first: first the draws in the line's unit, then, for what is left of
/// the decrease, the converted ones (at the conversion: no division, so the amounts stay
/// exact). What exceeds every draw lowers what stays uncovered. Answers whether a
/// customer-level segment got something back.
fn give_back(
    drawable: &mut Drawable<'_>,
    (pi, li): (usize, usize),
    invoice_id: Id,
    amount: Money,
) -> Result<bool, Rejection> {
    let mut left = amount;
    let mut shared_touched = give_back_draws(drawable, (pi, li), invoice_id, &mut left, false)?;
    let line = &drawable.contract.periods[pi].lines[li];
    if let (Some(conversion), true) = (line.conversion, left.is_positive()) {
        if line.covered_fiat.is_positive() {
            // At most the old charge, which converted when it was charged.
            let mut fiat = conversion.to_fiat(left)?;
            shared_touched |= give_back_draws(drawable, (pi, li), invoice_id, &mut fiat, true)?;
        }
    }
    Ok(shared_touched)
}

/// Gives back up to `left` from the draws of one kind (`converted` or in the line's unit),
/// last drawn first.
fn give_back_draws(
    drawable: &mut Drawable<'_>,
    (pi, li): (usize, usize),
    invoice_id: Id,
    left: &mut Money,
    converted: bool,
) -> Result<bool, Rejection> {
    let mut shared_touched = false;
    let mut index = drawable.contract.periods[pi].lines[li].draws.len();
    while left.is_positive() && index > 0 {
        index -= 1;
        let draw = drawable.contract.periods[pi].lines[li].draws[index];
        if draw.is_converted() != converted {
            continue;
        }
        let source = draw.source();
        shared_touched |= matches!(source, DrawSource::Customer(_));
        let back = (*left).min(draw.amount);
        drawable.return_deduction((source, draw.segment as usize), invoice_id, back)?;
        let line = &mut drawable.contract.periods[pi].lines[li];
        if converted {
            line.covered_fiat = line.covered_fiat.checked_sub(back)?;
        } else {
            line.covered = line.covered.checked_sub(back)?;
        }
        let kept = line.draws[index].amount.checked_sub(back)?;
        if kept.is_zero() {
            line.draws.remove(index);
        } else {
            line.draws[index].amount = kept;
        }
        *left = left.checked_sub(back)?;
    }
    Ok(shared_touched)
}

/// Applies a newly usable commit (`source`) to usage already charged but not covered on draft
/// invoices whose period overlaps its segments: this is how a released spend-threshold commit
/// brings outstanding spend back to zero. A customer-level commit does it for each contract
/// that may use it, one [`Drawable`] at a time. Answers whether a customer-level segment moved.
///
/// A commit in a line's custom pricing unit pays before fiat: it pays what the unit's own
/// commits left, and the fiat that had paid for that converted is given back (what fiat paid
/// beyond what the unit now leaves, last drawn first; no division, so the amounts stay exact).
/// A line that a fiat balance no longer usable helped pay (ended, archived, or customer-level
/// while `pool` is not given) keeps that payment: the new commit leaves it alone. A fiat commit
/// pays, converted, what a line in a custom pricing unit leaves.
pub(super) fn cover_outstanding(
    drawable: &mut Drawable<'_>,
    source: DrawSource,
    ctx: &Ctx<'_>,
) -> Result<bool, Rejection> {
    // Only a usable commit pays (one waiting for its payment, canceled or archived never).
    if !drawable.commit(source).is_released() {
        return Ok(false);
    }
    let mut shared_touched = false;
    for pi in 0..drawable.contract.periods.len() {
        let period = &drawable.contract.periods[pi];
        if period.status != InvoiceStatus::Draft {
            continue;
        }
        let (start, end) = (period.starting_at, period.ending_before);
        let invoice_id = period.invoice_id;
        for li in 0..period.lines.len() {
            let line = &drawable.contract.periods[pi].lines[li];
            let uncovered_before = line.uncovered_fiat()?;
            let (unit, product) = (line.unit(), line.product_id);
            let tags = product_tags(ctx.catalog, product);
            let commit = drawable.commit(source);
            let (mut left, converted) = if commit.pays_for(unit, product, tags) {
                if line.covered_fiat.is_positive()
                    && !converted_draws_usable(drawable, line, ctx.at)
                {
                    continue;
                }
                (line.uncovered(), false)
            } else if unit.is_some() && commit.pays_for(None, product, tags) {
                (uncovered_before, true)
            } else {
                continue;
            };
            if !left.is_positive() {
                continue;
            }
            for si in 0..drawable.commit(source).segments.len() {
                let segment = &drawable.commit(source).segments[si];
                if !segment.overlaps(start, end) {
                    continue;
                }
                let take = left.min(segment.remaining());
                if !take.is_positive() {
                    continue;
                }
                drawable.deduct((source, si), invoice_id, take, ctx.at)?;
                shared_touched |= matches!(source, DrawSource::Customer(_));
                left = left.checked_sub(take)?;
                let line = &mut drawable.contract.periods[pi].lines[li];
                if converted {
                    line.record_converted_draw((source.encoded(), si), take)?;
                } else {
                    line.record_draw((source.encoded(), si), take)?;
                }
                if left.is_zero() {
                    break;
                }
            }
            let line = &drawable.contract.periods[pi].lines[li];
            if !converted && line.covered_fiat.is_positive() {
                // Fiat paid for what the new commit now pays: that much goes back to it.
                let still = line.to_fiat(line.uncovered())?;
                let mut excess = line.covered_fiat.minus_floor_zero(still);
                if excess.is_positive() {
                    shared_touched |=
                        give_back_draws(drawable, (pi, li), invoice_id, &mut excess, true)?;
                }
            }
            let uncovered_after = drawable.contract.periods[pi].lines[li].uncovered_fiat()?;
            drawable
                .contract
                .line_changed(pi, uncovered_before, uncovered_after);
        }
    }
    Ok(shared_touched)
}

/// Whether every fiat segment that paid for `line` converted can take its money back: its
/// commit is usable, the segment has not ended at `at`, and a customer-level one is in the
/// pool given.
fn converted_draws_usable(drawable: &Drawable<'_>, line: &UsageLine, at: Timestamp) -> bool {
    line.draws.iter().filter(|d| d.is_converted()).all(|draw| {
        let commit = match draw.source() {
            DrawSource::Contract(ci) => drawable.contract.commits.get(ci),
            DrawSource::Customer(ci) => drawable.pool.get(ci).map(|c| &c.commit),
        };
        commit.is_some_and(|commit| {
            commit.is_released()
                && commit
                    .segments
                    .get(draw.segment as usize)
                    .is_some_and(|s| at < s.ending_before && !s.is_removed())
        })
    })
}

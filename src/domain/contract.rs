//! Contract state: commits and credits with their access segments, usage periods with their
//! draft invoices, purchase invoices, threshold configurations and workflows.
//!
//! Data and the small rules that belong to one object live here (segment eligibility, the
//! drawdown order key, ledger rendering); the rules that move money between objects are in
//! `customer/`.

use std::cmp::Ordering;

use rust_decimal::Decimal;
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

use super::catalog::Contribution;
use super::gate::{PaymentGateConfig, Workflow, WorkflowKind};
use super::ids::{Id, Timestamp};
use super::money::{Conversion, CreditType, Money, fast, in_fiat};
use super::rejection::Rejection;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitKind {
    Prepaid,
    Postpaid,
    Credit,
}

/// One access segment: `amount` usable for usage in `[starting_at, ending_before)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub id: Id,
    pub amount: Money,
    pub starting_at: Timestamp,
    pub ending_before: Timestamp,
    /// Drawn so far by usage; `amount + manual - drawn` is what remains.
    pub drawn: Money,
    /// The sum of the segment's manual ledger entries (`addManualBalanceLedgerEntry`; negative
    /// draws down). State version 8.
    pub manual: Money,
}

impl Segment {
    #[inline]
    pub fn covers(&self, at: Timestamp) -> bool {
        self.starting_at <= at && at < self.ending_before
    }

    /// A segment removed by a v2 edit's `update_commits`: an empty window, kept so that the
    /// positions usage lines and ledgers name never shift.
    pub fn is_removed(&self) -> bool {
        self.ending_before == self.starting_at && self.amount.is_zero()
    }

    pub fn overlaps(&self, start: Timestamp, end: Timestamp) -> bool {
        self.starting_at < end && start < self.ending_before
    }

    /// What remains, floored at zero (manual entries that take more than remains leave 0,
    /// as in Metronome). `amount + manual` is kept within the amount bounds when an entry is
    /// added, so the sum cannot overflow.
    #[inline]
    pub fn remaining(&self) -> Money {
        if self.manual.is_zero() {
            return self.amount.minus_floor_zero(self.drawn);
        }
        self.amount
            .exact_add(self.manual)
            .unwrap_or(self.amount)
            .minus_floor_zero(self.drawn)
    }
}

/// One manual ledger entry of a commit or credit (`/v1/contracts/addManualBalanceLedgerEntry`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualEntry {
    pub id: Id,
    pub segment: usize,
    /// Added to the segment's balance; negative draws it down.
    pub amount: Money,
    pub reason: String,
    pub at: Timestamp,
}

/// Metronome's `custom_fields` of a commit or credit: (key, value), sorted by key, keys unique.
pub type CustomFields = Vec<(String, String)>;

/// Which balances a custom field filter of a threshold balance specifier looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldEntity {
    Commit,
    ContractCredit,
    ContractCreditOrCommit,
}

impl FieldEntity {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldEntity::Commit => "Commit",
            FieldEntity::ContractCredit => "ContractCredit",
            FieldEntity::ContractCreditOrCommit => "ContractCreditOrCommit",
        }
    }

    fn covers(self, kind: CommitKind) -> bool {
        match self {
            FieldEntity::Commit => kind != CommitKind::Credit,
            FieldEntity::ContractCredit => kind == CommitKind::Credit,
            FieldEntity::ContractCreditOrCommit => true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomFieldFilter {
    pub entity: FieldEntity,
    pub key: String,
    pub value: String,
}

/// One `exclude` of a `threshold_balance_specifiers` entry: a balance with every one of these
/// custom fields is left out of B.
pub type BalanceExclusion = Vec<CustomFieldFilter>;

/// Metronome's `threshold_balance_specifiers` of a prepaid balance threshold configuration:
/// each entry's `exclude` list. A commit or credit that meets any exclusion of any entry does
/// not count in B (it is still drawn down like any other).
pub type BalanceSpecifiers = Vec<Vec<BalanceExclusion>>;

/// Whether a commit of `kind` with `fields` is left out of B by `specifiers`.
pub fn excluded_from_balance(
    specifiers: &BalanceSpecifiers,
    kind: CommitKind,
    fields: &CustomFields,
) -> bool {
    specifiers.iter().flatten().any(|exclusion| {
        !exclusion.is_empty()
            && exclusion.iter().all(|filter| {
                filter.entity.covers(kind)
                    && fields
                        .iter()
                        .any(|(key, value)| key == &filter.key && value == &filter.value)
            })
    })
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceScheduleItem {
    pub id: Id,
    pub timestamp: Timestamp,
    pub amount: Money,
    pub quantity: Decimal,
    pub unit_price: Money,
    pub invoice_id: Id,
}

/// Whether a commit's balance can be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Release {
    Released {
        at: Timestamp,
    },
    /// Withheld until the workflow's payment succeeds.
    Gated {
        workflow_id: Id,
    },
    /// The purchase failed: never usable.
    Canceled {
        at: Timestamp,
    },
}

/// Amount drawn from one segment by one usage invoice (one ledger entry, updated in place).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deduction {
    pub segment: usize,
    pub invoice_id: Id,
    pub amount: Money,
    pub at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub id: Id,
    pub kind: CommitKind,
    pub product_id: Id,
    pub name: String,
    pub description: Option<String>,
    /// Lower draws first.
    pub priority: Decimal,
    /// Empty means every product.
    pub applicable_product_ids: Vec<Id>,
    pub applicable_product_tags: Vec<String>,
    pub segments: Vec<Segment>,
    pub invoice_schedule: Vec<InvoiceScheduleItem>,
    pub release: Release,
    /// The threshold feature that created this commit, `None` for commits a user added.
    pub created_by_threshold: Option<WorkflowKind>,
    pub created_at: Timestamp,
    pub deductions: Vec<Deduction>,
    pub archived_at: Option<Timestamp>,
    /// State version 8.
    pub custom_fields: CustomFields,
    /// State version 8, in the order added.
    pub manual_entries: Vec<ManualEntry>,
    /// The custom pricing unit its amounts are in (`access_schedule.credit_type_id`); `None`:
    /// the fiat credit type of its contract (or customer). It pays only for usage priced in
    /// the same unit. State version 9.
    pub credit_type: Option<Id>,
}

impl Commit {
    #[inline]
    pub fn is_released(&self) -> bool {
        matches!(self.release, Release::Released { .. }) && self.archived_at.is_none()
    }

    /// Free balances (credits, complimentary commits) draw before paid ones.
    pub fn is_free(&self) -> bool {
        self.kind == CommitKind::Credit || self.invoice_schedule.is_empty()
    }

    #[inline]
    pub fn applies_to(&self, product: Id, product_tags: &[String]) -> bool {
        if self.applicable_product_ids.is_empty() && self.applicable_product_tags.is_empty()
            || crate::defects::active(crate::defects::Defect::RestrictionIgnored)
        {
            return true;
        }
        self.applicable_product_ids.contains(&product)
            || self
                .applicable_product_tags
                .iter()
                .any(|tag| product_tags.contains(tag))
    }

    /// The credit type its amounts are in: its custom pricing unit, or `fiat`, its owner's.
    #[inline]
    pub fn unit_or(&self, fiat: Id) -> Id {
        self.credit_type.unwrap_or(fiat)
    }

    /// Whether it pays for usage of `product` priced in `unit` (`None`: fiat): the same unit
    /// and a product its restrictions allow.
    #[inline]
    pub fn pays_for(&self, unit: Option<Id>, product: Id, product_tags: &[String]) -> bool {
        (self.credit_type == unit || crate::defects::active(crate::defects::Defect::UnitIgnored))
            && self.applies_to(product, product_tags)
    }

    /// Counts toward the prepaid balance B (released prepaid commits and credits).
    #[inline]
    pub fn counts_in_balance(&self) -> bool {
        self.is_released() && matches!(self.kind, CommitKind::Prepaid | CommitKind::Credit)
    }

    /// Remaining balance of the segments accessible at `at` (expired and future ones count 0).
    pub fn balance_at(&self, at: Timestamp) -> Result<Money, Rejection> {
        if !self.is_released() {
            return Ok(Money::ZERO);
        }
        let mut total = Money::ZERO;
        for segment in self.segments.iter().filter(|s| s.covers(at)) {
            total = total.checked_add(segment.remaining())?;
        }
        Ok(total)
    }

    pub fn total_amount(&self) -> Result<Money, Rejection> {
        let mut total = Money::ZERO;
        for segment in &self.segments {
            total = total.checked_add(segment.amount)?;
        }
        Ok(total)
    }

    /// Adds `amount` to the deduction of `segment` by `invoice` (one ledger line per pair).
    #[inline]
    pub fn record_deduction(
        &mut self,
        segment: usize,
        invoice_id: Id,
        amount: Money,
        at: Timestamp,
    ) -> Result<(), Rejection> {
        let seg = &mut self.segments[segment];
        seg.drawn = seg.drawn.checked_add(amount)?;
        // At most one entry per (segment, invoice); the latest invoice's is near the end.
        match self
            .deductions
            .iter_mut()
            .rev()
            .find(|d| d.segment == segment && d.invoice_id == invoice_id)
        {
            Some(existing) => {
                existing.amount = existing.amount.checked_add(amount)?;
                existing.at = existing.at.max(at);
            }
            None => super::push_first_exact(
                &mut self.deductions,
                Deduction {
                    segment,
                    invoice_id,
                    amount,
                    at,
                },
            ),
        }
        Ok(())
    }

    /// Takes back `amount` of segment `segment`'s drawdown by `invoice_id` (usage went down).
    /// A deduction that falls to zero is removed: the ledger shows what usage still draws.
    ///
    /// # Errors
    /// [`Rejection::AmountOverflow`] when more is returned than was drawn (a broken invariant:
    /// the input is then not applied).
    pub fn return_deduction(
        &mut self,
        segment: usize,
        invoice_id: Id,
        amount: Money,
    ) -> Result<(), Rejection> {
        let at = self
            .deductions
            .iter()
            .rposition(|d| d.segment == segment && d.invoice_id == invoice_id)
            .ok_or(Rejection::AmountOverflow)?;
        let deduction = &mut self.deductions[at];
        if amount > deduction.amount {
            return Err(Rejection::AmountOverflow);
        }
        deduction.amount = deduction.amount.checked_sub(amount)?;
        if deduction.amount.is_zero() {
            self.deductions.remove(at);
        }
        let seg = &mut self.segments[segment];
        seg.drawn = seg.drawn.checked_sub(amount)?;
        Ok(())
    }

    /// Adds a manual ledger entry of `amount` (negative draws down) to segment `segment`. The
    /// segment's `amount + manual` stays within `[-AMOUNT_MAX, AMOUNT_MAX]` and exact, so its
    /// balance is always computable; what it takes beyond the balance leaves the balance at 0.
    ///
    /// # Errors
    /// [`Rejection::InvalidField`] naming `amount` when the sum would leave the bounds.
    pub fn add_manual_entry(&mut self, entry: ManualEntry) -> Result<(), Rejection> {
        let seg = &mut self.segments[entry.segment];
        let max = Money::from_i64(super::bounds::AMOUNT_MAX);
        let manual = seg
            .manual
            .exact_add(entry.amount)
            .filter(|m| seg.amount.exact_add(*m).is_some())
            .filter(|m| m.as_decimal().abs() <= max.as_decimal())
            .ok_or_else(|| {
                Rejection::invalid(
                    "amount",
                    "would take the segment's manual entries beyond the amount bounds",
                )
            })?;
        seg.manual = manual;
        self.manual_entries.push(entry);
        Ok(())
    }

    /// The commit's ledger in Metronome's entry types, as of `as_of`; `contract_of` names the
    /// contract whose usage invoice a deduction went to (for a contract's own commit, that
    /// contract; a customer-level commit pays the usage of several).
    pub fn ledger(
        &self,
        contract_of: impl Fn(Id) -> Option<Id>,
        as_of: Timestamp,
    ) -> Vec<LedgerEntry> {
        let names = LedgerNames::of(self.kind);
        let mut entries = Vec::new();
        let purchase_invoice = self.invoice_schedule.first().map(|i| i.invoice_id);
        for (index, segment) in self.segments.iter().enumerate() {
            if segment.is_removed() {
                continue;
            }
            match self.release {
                Release::Released { at } => {
                    entries.push(LedgerEntry {
                        entry_type: names.start,
                        amount: segment.amount,
                        segment_id: segment.id,
                        timestamp: segment.starting_at.max(at),
                        invoice_id: None,
                        contract_id: None,
                        reason: None,
                    });
                }
                Release::Canceled { at } => {
                    entries.push(LedgerEntry {
                        entry_type: names.canceled,
                        amount: Money::ZERO
                            .checked_sub(segment.amount)
                            .unwrap_or(Money::ZERO),
                        segment_id: segment.id,
                        timestamp: at,
                        invoice_id: purchase_invoice,
                        contract_id: None,
                        reason: None,
                    });
                    continue;
                }
                Release::Gated { .. } => continue,
            }
            for deduction in self.deductions.iter().filter(|d| d.segment == index) {
                entries.push(LedgerEntry {
                    entry_type: names.deduction,
                    amount: Money::ZERO
                        .checked_sub(deduction.amount)
                        .unwrap_or(Money::ZERO),
                    segment_id: segment.id,
                    timestamp: deduction.at,
                    invoice_id: Some(deduction.invoice_id),
                    contract_id: contract_of(deduction.invoice_id),
                    reason: None,
                });
            }
            for entry in self.manual_entries.iter().filter(|e| e.segment == index) {
                entries.push(LedgerEntry {
                    entry_type: names.manual,
                    amount: entry.amount,
                    segment_id: segment.id,
                    timestamp: entry.at,
                    invoice_id: None,
                    contract_id: None,
                    reason: Some(entry.reason.clone()),
                });
            }
            // An archive expires what remains at once.
            let expires = self.archived_at.map_or(segment.ending_before, |archived| {
                segment.ending_before.min(archived.max(segment.starting_at))
            });
            if expires <= as_of && segment.remaining().is_positive() {
                entries.push(LedgerEntry {
                    entry_type: names.expiration,
                    amount: Money::ZERO
                        .checked_sub(segment.remaining())
                        .unwrap_or(Money::ZERO),
                    segment_id: segment.id,
                    timestamp: expires,
                    invoice_id: None,
                    contract_id: None,
                    reason: None,
                });
            }
        }
        entries.sort_by_key(|e| e.timestamp);
        entries
    }
}

/// Drawdown order (Metronome's prioritization rules): prepaid commits and credits before
/// postpaid commits; then lower `priority`; then free before paid; then fewer applicable
/// products; then earlier `ending_before`; then earlier `starting_at`; then id, so the order is
/// total and replay-stable.
pub fn draw_order(a: (&Commit, &Segment), b: (&Commit, &Segment)) -> Ordering {
    draw_key(a, Level::Contract).cmp(&draw_key(b, Level::Contract))
}

/// Whether a commit belongs to a contract or to the customer (usable by several contracts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Contract,
    Customer,
}

/// [`draw_order`] across levels: at equal priority a contract's own commits and credits draw
/// before the customer-level ones (Metronome's tie-break), everything else as [`draw_order`].
pub fn draw_order_across(a: (&Commit, &Segment, Level), b: (&Commit, &Segment, Level)) -> Ordering {
    draw_key((a.0, a.1), a.2).cmp(&draw_key((b.0, b.1), b.2))
}

type DrawKey = (u8, Decimal, Level, u8, usize, Timestamp, Timestamp, Id, Id);

fn draw_key((commit, segment): (&Commit, &Segment), level: Level) -> DrawKey {
    let group = u8::from(commit.kind == CommitKind::Postpaid);
    let scope =
        if commit.applicable_product_ids.is_empty() && commit.applicable_product_tags.is_empty() {
            usize::MAX
        } else {
            commit.applicable_product_ids.len() + commit.applicable_product_tags.len()
        };
    (
        group,
        commit.priority,
        level,
        u8::from(!commit.is_free()),
        scope,
        segment.ending_before,
        segment.starting_at,
        commit.id,
        segment.id,
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerEntryType {
    PrepaidCommitSegmentStart,
    PrepaidCommitAutomatedInvoiceDeduction,
    PrepaidCommitCanceled,
    PrepaidCommitExpiration,
    PostpaidCommitInitialBalance,
    PostpaidCommitAutomatedInvoiceDeduction,
    PostpaidCommitCanceled,
    PostpaidCommitExpiration,
    CreditSegmentStart,
    CreditAutomatedInvoiceDeduction,
    CreditCanceled,
    CreditExpiration,
    PrepaidCommitManual,
    PostpaidCommitManual,
    CreditManual,
}

impl LedgerEntryType {
    /// Metronome's name of the entry type.
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerEntryType::PrepaidCommitSegmentStart => "PREPAID_COMMIT_SEGMENT_START",
            LedgerEntryType::PrepaidCommitAutomatedInvoiceDeduction => {
                "PREPAID_COMMIT_AUTOMATED_INVOICE_DEDUCTION"
            }
            LedgerEntryType::PrepaidCommitCanceled => "PREPAID_COMMIT_CANCELED",
            LedgerEntryType::PrepaidCommitExpiration => "PREPAID_COMMIT_EXPIRATION",
            LedgerEntryType::PostpaidCommitInitialBalance => "POSTPAID_COMMIT_INITIAL_BALANCE",
            LedgerEntryType::PostpaidCommitAutomatedInvoiceDeduction => {
                "POSTPAID_COMMIT_AUTOMATED_INVOICE_DEDUCTION"
            }
            LedgerEntryType::PostpaidCommitCanceled => "POSTPAID_COMMIT_CANCELED",
            LedgerEntryType::PostpaidCommitExpiration => "POSTPAID_COMMIT_EXPIRATION",
            LedgerEntryType::CreditSegmentStart => "CREDIT_SEGMENT_START",
            LedgerEntryType::CreditAutomatedInvoiceDeduction => {
                "CREDIT_AUTOMATED_INVOICE_DEDUCTION"
            }
            LedgerEntryType::CreditCanceled => "CREDIT_CANCELED",
            LedgerEntryType::CreditExpiration => "CREDIT_EXPIRATION",
            LedgerEntryType::PrepaidCommitManual => "PREPAID_COMMIT_MANUAL",
            LedgerEntryType::PostpaidCommitManual => "POSTPAID_COMMIT_MANUAL",
            LedgerEntryType::CreditManual => "CREDIT_MANUAL",
        }
    }
}

struct LedgerNames {
    start: LedgerEntryType,
    deduction: LedgerEntryType,
    canceled: LedgerEntryType,
    expiration: LedgerEntryType,
    manual: LedgerEntryType,
}

impl LedgerNames {
    fn of(kind: CommitKind) -> LedgerNames {
        use LedgerEntryType as T;
        match kind {
            CommitKind::Prepaid => LedgerNames {
                start: T::PrepaidCommitSegmentStart,
                deduction: T::PrepaidCommitAutomatedInvoiceDeduction,
                canceled: T::PrepaidCommitCanceled,
                expiration: T::PrepaidCommitExpiration,
                manual: T::PrepaidCommitManual,
            },
            CommitKind::Postpaid => LedgerNames {
                start: T::PostpaidCommitInitialBalance,
                deduction: T::PostpaidCommitAutomatedInvoiceDeduction,
                canceled: T::PostpaidCommitCanceled,
                expiration: T::PostpaidCommitExpiration,
                manual: T::PostpaidCommitManual,
            },
            CommitKind::Credit => LedgerNames {
                start: T::CreditSegmentStart,
                deduction: T::CreditAutomatedInvoiceDeduction,
                canceled: T::CreditCanceled,
                expiration: T::CreditExpiration,
                manual: T::CreditManual,
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub entry_type: LedgerEntryType,
    pub amount: Money,
    pub segment_id: Id,
    pub timestamp: Timestamp,
    pub invoice_id: Option<Id>,
    pub contract_id: Option<Id>,
    /// A manual entry's reason.
    pub reason: Option<String>,
}

/// A metric's running aggregate for one product within one billing period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Aggregate {
    Count(Decimal),
    Sum(Decimal),
    Max(Option<Decimal>),
    Unique(FxHashSet<u64>),
}

impl Aggregate {
    pub fn empty_for(contribution: &Contribution) -> Aggregate {
        match contribution {
            Contribution::Count => Aggregate::Count(Decimal::ZERO),
            Contribution::Sum(_) => Aggregate::Sum(Decimal::ZERO),
            Contribution::Max(_) => Aggregate::Max(None),
            Contribution::Unique(_) => Aggregate::Unique(FxHashSet::default()),
        }
    }

    pub fn quantity(&self) -> Decimal {
        match self {
            Aggregate::Count(q) | Aggregate::Sum(q) => *q,
            Aggregate::Max(q) => q.unwrap_or(Decimal::ZERO),
            Aggregate::Unique(set) => Decimal::from(set.len()),
        }
    }

    /// The quantity after adding `contribution`, without changing the aggregate.
    pub fn quantity_with(&self, contribution: &Contribution) -> Result<Decimal, Rejection> {
        Ok(match (self, contribution) {
            (Aggregate::Count(q), Contribution::Count) => {
                fast::add_sub(*q, Decimal::ONE, false).ok_or(Rejection::AmountOverflow)?
            }
            (Aggregate::Sum(q), Contribution::Sum(v)) => {
                fast::add_sub(*q, *v, false).ok_or(Rejection::AmountOverflow)?
            }
            (Aggregate::Max(q), Contribution::Max(v)) => q.map_or(*v, |q| q.max(*v)),
            (Aggregate::Unique(set), Contribution::Unique(h)) => {
                Decimal::from(set.len() + usize::from(!set.contains(h)))
            }
            _ => self.quantity(),
        })
    }

    /// Adds `contribution` (called after every check passed).
    ///
    /// # Panics
    /// On an overflow [`Aggregate::quantity_with`] would have refused.
    pub fn add(&mut self, contribution: &Contribution) {
        match (self, contribution) {
            (Aggregate::Count(q), Contribution::Count) => {
                *q = fast::add_sub(*q, Decimal::ONE, false).expect(CHECKED_FIRST);
            }
            (Aggregate::Sum(q), Contribution::Sum(v)) => {
                *q = fast::add_sub(*q, *v, false).expect(CHECKED_FIRST);
            }
            (Aggregate::Max(q), Contribution::Max(v)) => *q = Some(q.map_or(*v, |q| q.max(*v))),
            (Aggregate::Unique(set), Contribution::Unique(h)) => {
                set.insert(*h);
            }
            _ => {}
        }
    }
}

const CHECKED_FIRST: &str = "checked by Aggregate::quantity_with first: no overflow";

/// One product's usage within a billing period: a line of the draft usage invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageLine {
    pub product_id: Id,
    pub aggregate: Aggregate,
    /// Total charge of the line so far.
    pub charged: Money,
    /// Part of `charged` drawn from commits and credits; the rest is outstanding.
    pub covered: Money,
    /// Where `covered` (and `covered_fiat`) came from, in the order drawn (the amounts of the
    /// draws in the line's unit sum to `covered`, of the converted ones to `covered_fiat`): a
    /// decrease gives back to exactly these segments, last drawn first (the unit's own first),
    /// and never to a segment another line drew from.
    pub draws: Vec<LineDraw>,
    /// Lines in a custom pricing unit: the part of what the unit's commits left uncovered that
    /// fiat commits and credits paid, in fiat (converted draws). Always zero for a fiat line.
    /// State version 9.
    pub covered_fiat: Money,
    /// The custom pricing unit the product is priced in on the contract's rate card, with its
    /// worth in the contract's fiat credit type; `None`: priced in fiat. `charged`, `covered`
    /// and the draws are in this unit; what stays uncovered is converted into fiat for S and
    /// the invoice (a `cpu_conversion` line). State version 9.
    pub conversion: Option<Conversion>,
}

/// A part of a usage line's charge drawn from one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineDraw {
    /// The commit's index in its contract's `commits`, or, with [`CUSTOMER_LEVEL`] set, in the
    /// customer's `customer_commits` (see [`DrawSource`]).
    pub commit: u32,
    pub segment: u32,
    pub amount: Money,
}

/// The bit of [`LineDraw::commit`] that marks a customer-level commit.
pub const CUSTOMER_LEVEL: u32 = 1 << 31;
/// The bit of [`LineDraw::commit`] that marks a converted draw: a fiat commit paying for a line
/// in a custom pricing unit, its amount in fiat.
pub const CONVERTED: u32 = 1 << 30;

/// Which commit a draw came from: the contract's own (its index in `commits`) or a
/// customer-level one (its index in the customer's `customer_commits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrawSource {
    Contract(usize),
    Customer(usize),
}

impl DrawSource {
    /// The index a [`LineDraw`] records.
    pub fn encoded(self) -> usize {
        match self {
            DrawSource::Contract(ci) => ci,
            DrawSource::Customer(ci) => ci | CUSTOMER_LEVEL as usize,
        }
    }
}

impl LineDraw {
    pub fn source(&self) -> DrawSource {
        let index = (self.commit & !(CUSTOMER_LEVEL | CONVERTED)) as usize;
        if self.commit & CUSTOMER_LEVEL == 0 {
            DrawSource::Contract(index)
        } else {
            DrawSource::Customer(index)
        }
    }

    /// Whether a fiat commit paid for a line in a custom pricing unit (the amount is fiat).
    #[inline]
    pub fn is_converted(&self) -> bool {
        self.commit & CONVERTED != 0
    }
}

impl UsageLine {
    pub fn new(product_id: Id, aggregate: Aggregate, conversion: Option<Conversion>) -> UsageLine {
        UsageLine {
            product_id,
            aggregate,
            charged: Money::ZERO,
            covered: Money::ZERO,
            draws: Vec::new(),
            covered_fiat: Money::ZERO,
            conversion,
        }
    }

    /// What no commit or credit covers, in the line's own unit.
    #[inline]
    pub fn uncovered(&self) -> Money {
        self.charged.minus_floor_zero(self.covered)
    }

    /// The line's custom pricing unit, `None` for fiat.
    #[inline]
    pub fn unit(&self) -> Option<Id> {
        self.conversion.map(|c| c.credit_type_id)
    }

    /// `amount` of the line's unit in fiat.
    ///
    /// # Errors
    /// [`Rejection::AmountOverflow`].
    #[inline]
    pub fn to_fiat(&self, amount: Money) -> Result<Money, Rejection> {
        in_fiat(self.conversion.as_ref(), amount)
    }

    /// What no commit or credit covers, in fiat: what the line adds to S and to the invoice.
    ///
    /// # Errors
    /// [`Rejection::AmountOverflow`] (never for a line whose charge converted when it was
    /// charged: what stays uncovered is at most the charge).
    #[inline(always)]
    pub fn uncovered_fiat(&self) -> Result<Money, Rejection> {
        match &self.conversion {
            None => Ok(self.uncovered()),
            Some(conversion) => self.uncovered_converted(conversion),
        }
    }

    #[cold]
    #[inline(never)]
    fn uncovered_converted(&self, conversion: &Conversion) -> Result<Money, Rejection> {
        Ok(conversion
            .to_fiat(self.uncovered())?
            .minus_floor_zero(self.covered_fiat))
    }

    /// Records that `amount` of this line (in its unit) was drawn from segment `si` of commit
    /// `ci` (its [`DrawSource::encoded`] index).
    ///
    /// # Errors
    /// [`Rejection::AmountOverflow`].
    #[inline]
    pub fn record_draw(
        &mut self,
        (ci, si): (usize, usize),
        amount: Money,
    ) -> Result<(), Rejection> {
        self.covered = self.covered.checked_add(amount)?;
        self.push_draw((ci as u32, si as u32), amount)
    }

    /// Records that a fiat commit (segment `si` of `ci`) paid `fiat` of what the line's unit
    /// left uncovered.
    ///
    /// # Errors
    /// [`Rejection::AmountOverflow`].
    pub fn record_converted_draw(
        &mut self,
        (ci, si): (usize, usize),
        fiat: Money,
    ) -> Result<(), Rejection> {
        self.covered_fiat = self.covered_fiat.checked_add(fiat)?;
        self.push_draw((ci as u32 | CONVERTED, si as u32), fiat)
    }

    #[inline(always)]
    fn push_draw(&mut self, (commit, segment): (u32, u32), amount: Money) -> Result<(), Rejection> {
        match self.draws.last_mut() {
            Some(last) if last.commit == commit && last.segment == segment => {
                last.amount = last.amount.checked_add(amount)?;
            }
            _ => super::push_first_exact(
                &mut self.draws,
                LineDraw {
                    commit,
                    segment,
                    amount,
                },
            ),
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InvoiceStatus {
    Draft,
    Finalized,
    Void,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "DRAFT",
            InvoiceStatus::Finalized => "FINALIZED",
            InvoiceStatus::Void => "VOID",
        }
    }
}

/// A billing period's usage and its invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsagePeriod {
    pub invoice_id: Id,
    pub starting_at: Timestamp,
    pub ending_before: Timestamp,
    pub status: InvoiceStatus,
    pub lines: Vec<UsageLine>,
}

impl UsagePeriod {
    /// What no commit or credit covers, in fiat (custom pricing units converted).
    pub fn uncovered(&self) -> Result<Money, Rejection> {
        let mut total = Money::ZERO;
        for line in &self.lines {
            total = total.checked_add(line.uncovered_fiat()?)?;
        }
        Ok(total)
    }
}

/// A SCHEDULED invoice: the purchase of a commit (a `commit_purchase` line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseInvoice {
    pub id: Id,
    pub commit_id: Id,
    pub product_id: Id,
    pub name: String,
    pub status: InvoiceStatus,
    pub issued_at: Timestamp,
    /// Purchase amount before tax.
    pub subtotal: Money,
    pub tax: Money,
    pub total: Money,
    /// The gate workflow collecting it, if any.
    pub workflow_id: Option<Id>,
    /// Provider-side status (`PAID`, `PAYMENT_FAILED`, `VOID`, ...), Metronome's
    /// `external_invoice.external_status`.
    pub external_status: Option<String>,
}

impl PurchaseInvoice {
    /// Voids it: it is not, or no longer, due (`external_status` VOID, as Metronome shows it).
    pub fn void(&mut self) {
        self.status = InvoiceStatus::Void;
        self.external_status = Some("VOID".into());
    }
}

/// Discount on the charged amount of a threshold purchase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discount {
    /// Share of the access amount actually charged (0.9 = 10% off).
    pub payment_fraction: Decimal,
}

/// The commit a threshold configuration issues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThresholdCommit {
    pub product_id: Id,
    pub name: Option<String>,
    pub description: Option<String>,
    pub priority: Option<Decimal>,
    pub applicable_product_ids: Vec<Id>,
    pub applicable_product_tags: Vec<String>,
}

/// Which of the two threshold features a configuration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ThresholdKind {
    /// `spend_threshold_configuration`: fires when outstanding spend `S >= threshold`.
    Spend,
    /// `prepaid_balance_threshold_configuration`: fires when balance `B <= threshold`.
    PrepaidBalance,
}

impl ThresholdKind {
    pub fn workflow_kind(self) -> WorkflowKind {
        match self {
            ThresholdKind::Spend => WorkflowKind::Spend,
            ThresholdKind::PrepaidBalance => WorkflowKind::PrepaidBalance,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ThresholdKind::Spend => "spend",
            ThresholdKind::PrepaidBalance => "prepaid balance",
        }
    }
    /// The configuration's field name in Metronome's API.
    pub fn field(self) -> &'static str {
        match self {
            ThresholdKind::Spend => "spend_threshold_configuration",
            ThresholdKind::PrepaidBalance => "prepaid_balance_threshold_configuration",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThresholdConfig {
    pub kind: ThresholdKind,
    pub commit: ThresholdCommit,
    pub is_enabled: bool,
    pub gate: PaymentGateConfig,
    pub threshold_amount: Money,
    /// Prepaid balance only: the balance a recharge brings B back to.
    pub recharge_to_amount: Option<Money>,
    pub discount: Option<Discount>,
    /// How many times it fired; the sequence in the next workflow's id.
    pub triggers: u64,
    /// Prepaid balance only: Tollgate's recharge safety rails (none: Metronome's behaviour).
    pub limits: Option<RechargeLimits>,
    /// The rail holding the next recharge back, while one does.
    pub hold: Option<RechargeHold>,
    /// How many times a rail started holding a recharge back; the sequence in the id of the
    /// next `payment_gate.recharge_limited` notice.
    pub holds: u64,
    /// Prepaid balance only: the balances B leaves out (state version 8, log version 9).
    pub balance_specifiers: BalanceSpecifiers,
    /// Prepaid balance only: the custom pricing unit of `threshold_amount`,
    /// `recharge_to_amount`, B and the recharge commit (`custom_credit_type_id`), with its
    /// worth in fiat from the contract's rate card (the purchase invoice is A times it);
    /// `None`: fiat. State version 9, log version 10.
    pub credit_type: Option<Conversion>,
}

/// Tollgate's recharge safety rails: optional limits on a prepaid balance threshold
/// configuration (`recharge_limits`, an extension of Metronome's shape). A recharge a rail does
/// not allow is held back whole, and evaluated again when the rail lets go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RechargeLimits {
    /// At most this many recharges start in one billing period (failed ones count).
    pub max_recharges_per_period: Option<u32>,
    /// At most this much access (the recharged amount, before discount) starts in one billing
    /// period, failed recharges not counted.
    pub max_amount_per_period: Option<Money>,
    /// At least this long between the starts of two recharges.
    pub min_interval_minutes: Option<u32>,
    /// Each recharge's commit is usable for this long from its start (else to the contract's end).
    pub commit_duration_days: Option<u32>,
}

/// The largest `min_recharge_interval_minutes` (a year).
pub const RECHARGE_INTERVAL_MAX_MINUTES: u32 = 525_600;
/// The largest `recharge_commit_duration_days` (ten years).
pub const RECHARGE_DURATION_MAX_DAYS: u32 = 3_650;

/// Which rail holds a recharge back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RechargeRail {
    MaxRecharges,
    MaxAmount,
    MinInterval,
}

impl RechargeRail {
    /// The name of its field in `recharge_limits`.
    pub fn as_str(self) -> &'static str {
        match self {
            RechargeRail::MaxRecharges => "max_recharges_per_period",
            RechargeRail::MaxAmount => "max_recharge_amount_per_period",
            RechargeRail::MinInterval => "min_recharge_interval_minutes",
        }
    }
}

/// A recharge held back: by which rail, since when, and until when (when it is evaluated again).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RechargeHold {
    pub rail: RechargeRail,
    pub since: Timestamp,
    pub until: Timestamp,
}

/// Engine-wide limits the core enforces (configurable; defaults are Metronome's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Smallest prepaid `threshold_amount`, in USD cents ($5).
    pub prepaid_threshold_min_usd_cents: Money,
    /// Smallest gap `recharge_to_amount - threshold_amount`, in USD cents ($10).
    pub recharge_gap_min_usd_cents: Money,
    /// How long a usage invoice stays DRAFT after its period ends, so that events back-dated
    /// by up to the ingest window still land on it (34 days, Metronome's backdating limit).
    pub draft_grace_ms: i64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            prepaid_threshold_min_usd_cents: Money::from_i64(500),
            recharge_gap_min_usd_cents: Money::from_i64(1000),
            draft_grace_ms: 34 * super::ids::MS_PER_DAY,
        }
    }
}

impl ThresholdConfig {
    /// The configuration as a request adds it: not triggered, nothing held back.
    pub fn fresh(mut self) -> ThresholdConfig {
        self.triggers = 0;
        self.hold = None;
        self.holds = 0;
        self
    }

    /// Checks a configuration against Metronome's rules; minimums apply to USD cents (other
    /// credit types are whole units and have no published minimum).
    ///
    /// # Errors
    /// [`Rejection::ThresholdTooLow`], [`Rejection::RechargeGapTooSmall`],
    /// [`Rejection::InvalidField`] or [`Rejection::MissingField`].
    pub fn validate(&self, credit_type: &CreditType, limits: &Limits) -> Result<(), Rejection> {
        let field = self.kind.field();
        self.gate
            .validate(&format!("{field}.payment_gate_config"))?;
        if let Some(discount) = &self.discount {
            if discount.payment_fraction <= Decimal::ZERO
                || discount.payment_fraction > Decimal::ONE
            {
                return Err(Rejection::invalid(
                    &format!("{field}.discount_configuration.payment_fraction"),
                    "must be in (0, 1]",
                ));
            }
        }
        if self.commit.priority.is_some_and(|p| p < Decimal::ZERO) {
            return Err(Rejection::invalid(
                &format!("{field}.commit.priority"),
                "must not be negative",
            ));
        }
        // A negative threshold has its own message below.
        if !self.threshold_amount.is_negative() {
            super::bounds::check_amount(
                &format!("{field}.threshold_amount"),
                self.threshold_amount,
            )?;
        }
        if let Some(recharge_to) = self.recharge_to_amount {
            super::bounds::check_amount(&format!("{field}.recharge_to_amount"), recharge_to)?;
        }
        match self.kind {
            ThresholdKind::Spend => {
                if !self.threshold_amount.is_positive() {
                    return Err(Rejection::invalid(
                        &format!("{field}.threshold_amount"),
                        "must be positive",
                    ));
                }
                if self.recharge_to_amount.is_some() {
                    return Err(Rejection::invalid(
                        &format!("{field}.recharge_to_amount"),
                        "applies to prepaid balance thresholds only",
                    ));
                }
                if !self.commit.applicable_product_ids.is_empty()
                    || !self.commit.applicable_product_tags.is_empty()
                {
                    // A scoped spend commit could leave spend uncovered and re-trigger forever.
                    return Err(Rejection::invalid(
                        &format!("{field}.commit"),
                        "spend threshold commits apply to all products",
                    ));
                }
            }
            ThresholdKind::PrepaidBalance => {
                let Some(recharge_to) = self.recharge_to_amount else {
                    return Err(Rejection::MissingField(
                        "prepaid_balance_threshold_configuration.recharge_to_amount",
                    ));
                };
                if self.threshold_amount.is_negative() {
                    return Err(Rejection::invalid(
                        &format!("{field}.threshold_amount"),
                        "must not be negative",
                    ));
                }
                let (min, gap) = if credit_type.is_usd_cents() {
                    (
                        limits.prepaid_threshold_min_usd_cents,
                        limits.recharge_gap_min_usd_cents,
                    )
                } else {
                    (Money::ZERO, Money::ZERO)
                };
                // Metronome: the minimums apply to custom pricing units too, after converting
                // with the rate card's conversion.
                let conversion = self.credit_type.as_ref();
                let threshold = in_fiat(conversion, self.threshold_amount)?;
                if conversion.is_some() {
                    // A recharge's invoice is its access in fiat: in bounds like any amount.
                    super::bounds::check_amount(
                        &format!("{field}.threshold_amount (in fiat, converted)"),
                        threshold,
                    )?;
                    super::bounds::check_amount(
                        &format!("{field}.recharge_to_amount (in fiat, converted)"),
                        in_fiat(conversion, recharge_to)?,
                    )?;
                }
                if threshold < min {
                    return Err(Rejection::ThresholdTooLow(min.to_string()));
                }
                let above = in_fiat(conversion, recharge_to)?.checked_sub(threshold)?;
                if above < gap || recharge_to <= self.threshold_amount {
                    return Err(Rejection::RechargeGapTooSmall(gap.to_string()));
                }
                if let Some(limits) = &self.limits {
                    limits.validate(recharge_to)?;
                }
            }
        }
        if self.kind == ThresholdKind::Spend && self.credit_type.is_some() {
            return Err(Rejection::invalid(
                &format!("{field}.custom_credit_type_id"),
                "applies to prepaid balance thresholds only (spend is counted in fiat)",
            ));
        }
        if self.kind == ThresholdKind::Spend && self.limits.is_some() {
            return Err(Rejection::invalid(
                &format!("{field}.recharge_limits"),
                "applies to prepaid balance thresholds only",
            ));
        }
        Ok(())
    }
}

impl RechargeLimits {
    /// Each limit is positive and in bounds; an amount limit must let the largest recharge
    /// through (`largest` = recharge_to_amount, when B is 0): a recharge of more than the
    /// limit would be held back in every period, forever.
    ///
    /// # Errors
    /// [`Rejection::InvalidField`] naming the limit.
    pub fn validate(&self, largest: Money) -> Result<(), Rejection> {
        let field =
            |name: &str| format!("prepaid_balance_threshold_configuration.recharge_limits.{name}");
        let positive = |name: &str, value: Option<u32>, max: u32| match value {
            Some(v) if v == 0 || v > max => Err(Rejection::invalid(
                &field(name),
                &format!("must be between 1 and {max}"),
            )),
            _ => Ok(()),
        };
        positive(
            "max_recharges_per_period",
            self.max_recharges_per_period,
            u32::MAX,
        )?;
        positive(
            "min_recharge_interval_minutes",
            self.min_interval_minutes,
            RECHARGE_INTERVAL_MAX_MINUTES,
        )?;
        positive(
            "recharge_commit_duration_days",
            self.commit_duration_days,
            RECHARGE_DURATION_MAX_DAYS,
        )?;
        if let Some(max) = self.max_amount_per_period {
            let name = "max_recharge_amount_per_period";
            super::bounds::check_amount(&field(name), max)?;
            if max < largest {
                return Err(Rejection::invalid(
                    &field(name),
                    &format!(
                        "must be at least recharge_to_amount ({largest}): a larger recharge would be held back in every period"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A contract: a customer's agreement under one rate card, with its balances and thresholds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contract {
    pub id: Id,
    pub customer_id: Id,
    pub rate_card_id: Id,
    pub name: Option<String>,
    pub starting_at: Timestamp,
    pub ending_before: Option<Timestamp>,
    pub credit_type: CreditType,
    pub uniqueness_key: Option<String>,
    pub created_at: Timestamp,
    pub commits: Vec<Commit>,
    pub periods: Vec<UsagePeriod>,
    pub purchases: Vec<PurchaseInvoice>,
    pub spend_threshold: Option<ThresholdConfig>,
    pub prepaid_threshold: Option<ThresholdConfig>,
    pub workflows: Vec<Workflow>,
    /// Uniqueness keys of edits already applied (a repeat is refused with 409).
    pub edit_keys: Vec<String>,
    pub edits: u64,
    /// What the lifecycle notices have announced so far; `None` for a contract kept by a
    /// version without them (set, without announcing the past, by its next input).
    pub lifecycle: Option<Lifecycle>,
    /// The ids of the latest edits applied ([`RECENT_EDITS`] at most; state version 8): an edit
    /// applied again (a retry with the same Idempotency-Key after its answer was lost) is
    /// refused with 409 instead of archiving, raising or adding twice.
    pub recent_edits: Vec<Id>,
    /// Released segments in drawdown order, as (commit index, segment index); kept in order
    /// as commits are released, so an event does not sort.
    #[serde(skip)]
    pub draw_order: Vec<(usize, usize)>,
    /// Derived state that makes a usage event cost the same however many commits, workflows and
    /// periods the contract has accumulated. Never persisted; rebuilt by
    /// [`Contract::rebuild_caches`]; ignored by `==`.
    #[serde(skip)]
    pub caches: ContractCaches,
}

/// How many edit ids a contract remembers: retries come within minutes of the edit.
pub const RECENT_EDITS: usize = 100;

/// What the lifecycle notices of a contract have announced: the segments whose start was
/// announced and whose end was not yet, and the end `contract.end` was sent for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// How many of the contract's commits `commit.create` (or `credit.create`) was sent for:
    /// commits are only ever appended, so the rest are new.
    pub commits_announced: u64,
    pub open_segments: Vec<Id>,
    pub ended: Option<Timestamp>,
    /// The latest time the lifecycle was looked at: an input applied out of its time (a late
    /// event, a re-applied one) never takes it back.
    pub as_of: Timestamp,
    /// Segments whose end was announced, with how many times: a segment ended by the contract's
    /// end starts again when that end is lifted, and each start and end after the first has an
    /// id of its own (state version 9).
    pub reopened: Vec<(Id, u64)>,
}

/// What [`Contract`] derives from its own fields to answer a usage event in constant time.
///
/// Every cache is either exact or says it does not know (`None`): the running totals S and B are
/// kept with [`Money::exact_add`] and dropped the moment a step would round, and then the next
/// evaluation sums from scratch. `Default` is "not built": [`Customer::apply`] builds it before
/// the first input after a checkpoint is decoded.
///
/// [`Customer::apply`]: super::customer::Customer::apply
#[derive(Clone, Debug, Default)]
pub struct ContractCaches {
    built: bool,
    /// The entries of `draw_order` whose segment has something left, in the same order: a
    /// drawdown skips exhausted segments without looking at them.
    pub(super) live: Vec<(usize, usize)>,
    /// Set when `draw_order` may differ from what [`Contract::rebuild_draw_order`] would give
    /// (a released commit was canceled), so the next release rebuilds it instead of inserting.
    draw_order_stale: bool,
    /// Outstanding spend S, exactly as [`Contract::outstanding_spend`] computes it.
    outstanding: Option<Money>,
    /// Balance B over a window of time in which no segment of a counted commit starts or ends.
    balance: Option<BalanceWindow>,
    /// Index of the latest workflow of each threshold kind (spend, prepaid balance): a new one
    /// starts only when none is in flight, so only the latest can be.
    latest_threshold_workflow: [Option<usize>; 2],
    /// The next instant a lifecycle notice falls due (`None`: not known yet, so the next input
    /// looks; `Some(END_OF_TIME)`: none is scheduled).
    pub lifecycle_due: Option<Timestamp>,
    /// The earliest ACTION_REQUIRED deadline of a workflow in flight (`None`: not known, the
    /// next alarm computation scans the workflows; reset by every input but usage).
    pub action_deadline: Option<Option<Timestamp>>,
}

/// B is the same at every instant of `[from, until)`: the set of accessible segments is.
#[derive(Clone, Copy, Debug)]
struct BalanceWindow {
    value: Money,
    from: Timestamp,
    until: Timestamp,
}

/// Caches are derived: two contracts with equal fields are equal whatever their caches hold.
impl PartialEq for ContractCaches {
    fn eq(&self, _: &ContractCaches) -> bool {
        true
    }
}

impl Eq for ContractCaches {}

fn threshold_slot(kind: WorkflowKind) -> Option<usize> {
    match kind {
        WorkflowKind::Spend => Some(0),
        WorkflowKind::PrepaidBalance => Some(1),
        WorkflowKind::ManualCommit => None,
    }
}

impl Contract {
    pub fn covers(&self, at: Timestamp) -> bool {
        self.starting_at <= at && self.ending_before.is_none_or(|end| at < end)
    }

    pub fn end_or_forever(&self) -> Timestamp {
        self.ending_before.unwrap_or(Timestamp::END_OF_TIME)
    }

    pub fn threshold(&self, kind: ThresholdKind) -> Option<&ThresholdConfig> {
        match kind {
            ThresholdKind::Spend => self.spend_threshold.as_ref(),
            ThresholdKind::PrepaidBalance => self.prepaid_threshold.as_ref(),
        }
    }

    pub fn threshold_mut(&mut self, kind: ThresholdKind) -> Option<&mut ThresholdConfig> {
        match kind {
            ThresholdKind::Spend => self.spend_threshold.as_mut(),
            ThresholdKind::PrepaidBalance => self.prepaid_threshold.as_mut(),
        }
    }

    pub fn commit(&self, id: Id) -> Option<&Commit> {
        self.commits.iter().find(|c| c.id == id)
    }

    pub fn workflow(&self, id: Id) -> Option<&Workflow> {
        self.workflows.iter().find(|w| w.id == id)
    }

    /// The in-flight workflow of a kind, if any (at most one exists: the safety rule).
    pub fn in_flight(&self, kind: WorkflowKind) -> Option<&Workflow> {
        self.workflows
            .iter()
            .find(|w| w.kind == kind && !w.state.is_terminal())
    }

    /// [`Contract::in_flight`] for a threshold kind in constant time, from the caches: the
    /// latest workflow of the kind, if it has not ended. Falls back to the scan when the caches
    /// are not built or for manual commits (of which several may be in flight).
    pub fn in_flight_tracked(&self, kind: WorkflowKind) -> Option<&Workflow> {
        match threshold_slot(kind) {
            Some(slot) if self.caches.built => self.caches.latest_threshold_workflow[slot]
                .map(|wi| &self.workflows[wi])
                .filter(|w| !w.state.is_terminal()),
            _ => self.in_flight(kind),
        }
    }

    /// Outstanding spend S: usage charges on DRAFT usage invoices not covered by any commit or
    /// credit.
    pub fn outstanding_spend(&self) -> Result<Money, Rejection> {
        let mut total = Money::ZERO;
        for period in self
            .periods
            .iter()
            .filter(|p| p.status == InvoiceStatus::Draft)
        {
            total = total.checked_add(period.uncovered()?)?;
        }
        Ok(total)
    }

    /// The prepaid threshold's balance specifiers changed what B counts: B is computed anew.
    pub(super) fn balance_rules_changed(&mut self) {
        self.caches.balance = None;
    }

    /// Whether `commit` (one of this contract's, or a customer-level one usable by it) counts
    /// in B: released prepaid commits and credits, less what the prepaid balance threshold's
    /// `threshold_balance_specifiers` leave out.
    #[inline]
    pub fn counts_in_b(&self, commit: &Commit) -> bool {
        commit.counts_in_balance()
            && commit.credit_type == self.b_unit()
            && match &self.prepaid_threshold {
                Some(config) if !config.balance_specifiers.is_empty() => !excluded_from_balance(
                    &config.balance_specifiers,
                    commit.kind,
                    &commit.custom_fields,
                ),
                _ => true,
            }
    }

    /// The unit B counts in: the prepaid threshold's custom pricing unit, else fiat.
    #[inline]
    pub fn b_unit(&self) -> Option<Id> {
        self.prepaid_threshold
            .as_ref()
            .and_then(|c| c.credit_type)
            .map(|c| c.credit_type_id)
    }

    /// Balance B: what remains of released prepaid commits and credits accessible at `at`
    /// (less what the threshold balance specifiers leave out).
    pub fn balance(&self, at: Timestamp) -> Result<Money, Rejection> {
        let mut total = Money::ZERO;
        for commit in self.commits.iter().filter(|c| self.counts_in_b(c)) {
            total = total.checked_add(commit.balance_at(at)?)?;
        }
        Ok(total)
    }

    /// Sorts every released segment into `draw_order` from scratch (and the live list with it).
    pub fn rebuild_draw_order(&mut self) {
        self.draw_order = self.sorted_draw_order();
        self.caches.draw_order_stale = false;
        self.caches.live = self
            .draw_order
            .iter()
            .copied()
            .filter(|&(ci, si)| self.commits[ci].segments[si].remaining().is_positive())
            .collect();
        // Rebuilt rarely (after a decode, an unusual release): no slack kept (P6).
        self.caches.live.shrink_to_fit();
    }

    fn sorted_draw_order(&self) -> Vec<(usize, usize)> {
        let mut order: Vec<(usize, usize)> = Vec::new();
        for (ci, commit) in self.commits.iter().enumerate() {
            if !commit.is_released() {
                continue;
            }
            for si in 0..commit.segments.len() {
                super::push_first_exact(&mut order, (ci, si));
            }
        }
        let commits = &self.commits;
        order.sort_by(|&(ca, sa), &(cb, sb)| {
            draw_order(
                (&commits[ca], &commits[ca].segments[sa]),
                (&commits[cb], &commits[cb].segments[sb]),
            )
        });
        order
    }

    /// Rebuilds every derived cache from the contract's fields: after decoding a checkpoint, or
    /// after changing fields other than through [`Customer::apply`].
    ///
    /// [`Customer::apply`]: super::customer::Customer::apply
    pub fn rebuild_caches(&mut self) {
        self.rebuild_draw_order();
        self.caches.outstanding = None;
        self.caches.balance = None;
        let mut latest = [None; 2];
        for (wi, workflow) in self.workflows.iter().enumerate() {
            if let Some(slot) = threshold_slot(workflow.kind) {
                latest[slot] = Some(wi);
            }
        }
        self.caches.latest_threshold_workflow = latest;
        self.caches.built = true;
    }

    /// Builds the caches if they are not (a contract just decoded or built by hand).
    pub fn ensure_caches(&mut self) {
        if !self.caches.built {
            self.rebuild_caches();
        }
    }

    /// Records that workflow `wi`, of a threshold kind, was just added.
    pub(super) fn threshold_workflow_added(&mut self, wi: usize) {
        if let Some(slot) = threshold_slot(self.workflows[wi].kind) {
            self.caches.latest_threshold_workflow[slot] = Some(wi);
        }
    }

    /// The total order of drawdown: [`draw_order`], then the order the segments were added in
    /// (what the stable sort of [`Contract::rebuild_draw_order`] keeps for equal keys).
    fn draw_cmp(&self, (ca, sa): (usize, usize), (cb, sb): (usize, usize)) -> Ordering {
        let (a, b) = (&self.commits[ca], &self.commits[cb]);
        draw_order((a, &a.segments[sa]), (b, &b.segments[sb])).then((ca, sa).cmp(&(cb, sb)))
    }

    /// Commit `ci` just became usable (added released, or its payment succeeded) after being
    /// out of `draw_order`: its segments join the drawdown order and B.
    pub(super) fn commit_released(&mut self, ci: usize) {
        if self.caches.draw_order_stale || !self.caches.built {
            self.rebuild_caches();
            return;
        }
        for si in 0..self.commits[ci].segments.len() {
            let at = self
                .draw_order
                .partition_point(|&entry| self.draw_cmp(entry, (ci, si)) == Ordering::Less);
            super::insert_first_exact(&mut self.draw_order, at, (ci, si));
            if self.commits[ci].segments[si].remaining().is_positive() {
                self.insert_live((ci, si));
            }
        }
        if let Some(mut window) = self.caches.balance {
            let commit = &self.commits[ci];
            if self.counts_in_b(commit) {
                for segment in &commit.segments {
                    for boundary in [segment.starting_at, segment.ending_before] {
                        if window.from < boundary && boundary < window.until {
                            window.until = boundary;
                        }
                    }
                }
                let mut value = Some(window.value);
                for segment in commit.segments.iter().filter(|s| s.covers(window.from)) {
                    value = value.and_then(|v| v.exact_add(segment.remaining()));
                }
                self.caches.balance = value.map(|value| BalanceWindow { value, ..window });
            }
        }
    }

    /// A released commit `ci` was canceled: B changes, and `draw_order` keeps its segments (as
    /// it always did) until the next rebuild.
    pub(super) fn released_commit_canceled(&mut self, _ci: usize) {
        self.caches.balance = None;
        self.caches.draw_order_stale = true;
    }

    fn insert_live(&mut self, entry: (usize, usize)) {
        let at = self
            .caches
            .live
            .partition_point(|&e| self.draw_cmp(e, entry) == Ordering::Less);
        if self.caches.live.get(at) != Some(&entry) {
            super::insert_first_exact(&mut self.caches.live, at, entry);
        }
    }

    /// Segment `si` of commit `ci` went from `before` to `after` remaining (a drawdown, a give
    /// back): B and the live list follow. A drawdown loop that removes exhausted entries from
    /// the live list itself passes `keep_live`.
    #[inline]
    pub(super) fn segment_changed(
        &mut self,
        (ci, si): (usize, usize),
        before: Money,
        after: Money,
        keep_live: bool,
    ) {
        let counted = self.caches.balance.is_some() && self.counts_in_b(&self.commits[ci]);
        if let Some(window) = &mut self.caches.balance {
            if counted && self.commits[ci].segments[si].covers(window.from) {
                match window
                    .value
                    .exact_sub(before)
                    .and_then(|v| v.exact_add(after))
                {
                    Some(value) => window.value = value,
                    None => self.caches.balance = None,
                }
            }
        }
        if keep_live || before.is_positive() == after.is_positive() {
            return;
        }
        if after.is_positive() {
            if self.draw_order.contains(&(ci, si)) {
                self.insert_live((ci, si));
            }
        } else if let Some(at) = self.caches.live.iter().position(|&e| e == (ci, si)) {
            self.caches.live.remove(at);
        }
    }

    /// Records a drawdown from segment `si` of commit `ci` and keeps the caches.
    ///
    /// # Errors
    /// [`Rejection::AmountOverflow`].
    pub fn deduct(
        &mut self,
        (ci, si): (usize, usize),
        invoice_id: Id,
        amount: Money,
        at: Timestamp,
    ) -> Result<(), Rejection> {
        let before = self.commits[ci].segments[si].remaining();
        self.commits[ci].record_deduction(si, invoice_id, amount, at)?;
        let after = self.commits[ci].segments[si].remaining();
        self.segment_changed((ci, si), before, after, false);
        Ok(())
    }

    /// A line of period `pi` changed from `before` to `after` uncovered: S follows.
    #[inline]
    pub(super) fn line_changed(&mut self, pi: usize, before: Money, after: Money) {
        let unchanged =
            before == after && before.as_decimal().scale() == after.as_decimal().scale();
        if unchanged || self.periods[pi].status != InvoiceStatus::Draft {
            return;
        }
        if let Some(outstanding) = self.caches.outstanding {
            self.caches.outstanding = outstanding
                .exact_sub(before)
                .and_then(|v| v.exact_add(after));
        }
    }

    /// Periods changed status wholesale (a tick): S is summed again when next needed.
    pub(super) fn periods_changed(&mut self) {
        self.caches.outstanding = None;
    }

    /// Outstanding spend S, equal to [`Contract::outstanding_spend`], in constant time while
    /// the cache holds.
    ///
    /// # Errors
    /// [`Rejection::AmountOverflow`], exactly when [`Contract::outstanding_spend`] fails.
    pub fn outstanding_spend_tracked(&mut self) -> Result<Money, Rejection> {
        if let Some(outstanding) = self.caches.outstanding {
            return Ok(outstanding);
        }
        let mut total = Some(Money::ZERO);
        for period in self
            .periods
            .iter()
            .filter(|p| p.status == InvoiceStatus::Draft)
        {
            for line in &period.lines {
                let uncovered = line.uncovered_fiat().ok();
                total = total.and_then(|t| uncovered.and_then(|u| t.exact_add(u)));
            }
        }
        match total {
            Some(total) => {
                if self.caches.built {
                    self.caches.outstanding = Some(total);
                }
                Ok(total)
            }
            None => self.outstanding_spend(),
        }
    }

    /// Balance B at `at`, equal to [`Contract::balance`], in constant time while `at` stays in
    /// the window where the accessible segments do not change.
    ///
    /// # Errors
    /// [`Rejection::AmountOverflow`], exactly when [`Contract::balance`] fails.
    pub fn balance_tracked(&mut self, at: Timestamp) -> Result<Money, Rejection> {
        if let Some(window) = self.caches.balance {
            if window.from <= at && at < window.until {
                return Ok(window.value);
            }
        }
        let mut window = BalanceWindow {
            value: Money::ZERO,
            from: Timestamp(i64::MIN),
            until: Timestamp(i64::MAX),
        };
        let mut value = Some(Money::ZERO);
        for commit in self.commits.iter().filter(|c| self.counts_in_b(c)) {
            for segment in &commit.segments {
                for boundary in [segment.starting_at, segment.ending_before] {
                    if boundary <= at {
                        window.from = window.from.max(boundary);
                    } else {
                        window.until = window.until.min(boundary);
                    }
                }
                if segment.covers(at) {
                    value = value.and_then(|v| v.exact_add(segment.remaining()));
                }
            }
        }
        match value {
            Some(value) => {
                if self.caches.built {
                    self.caches.balance = Some(BalanceWindow { value, ..window });
                }
                Ok(value)
            }
            None => {
                self.caches.balance = None;
                self.balance(at)
            }
        }
    }

    /// Checks every cache against the fields it derives from (debug builds and tests).
    ///
    /// # Panics
    /// When a cache disagrees: a bug in keeping it.
    pub fn check_caches(&self) {
        if !self.caches.built {
            return;
        }
        if !self.caches.draw_order_stale {
            assert_eq!(
                self.draw_order,
                self.sorted_draw_order(),
                "draw order drifted"
            );
        }
        let live: Vec<(usize, usize)> = self
            .draw_order
            .iter()
            .copied()
            .filter(|&(ci, si)| self.commits[ci].segments[si].remaining().is_positive())
            .collect();
        assert_eq!(self.caches.live, live, "live segments drifted");
        if let Some(outstanding) = self.caches.outstanding {
            assert_eq!(Ok(outstanding), self.outstanding_spend(), "S drifted");
        }
        if let Some(window) = self.caches.balance {
            assert_eq!(Ok(window.value), self.balance(window.from), "B drifted");
            let last = Timestamp(window.until.0.saturating_sub(1));
            assert_eq!(Ok(window.value), self.balance(last), "B window too wide");
        }
        for kind in [WorkflowKind::Spend, WorkflowKind::PrepaidBalance] {
            assert_eq!(
                self.in_flight_tracked(kind).map(|w| w.id),
                self.in_flight(kind).map(|w| w.id),
                "in-flight {kind:?} drifted"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(id: u128, kind: CommitKind, priority: i64, paid: bool) -> Commit {
        Commit {
            id: Id::from_u128(id),
            kind,
            product_id: Id::from_u128(500),
            name: format!("c{id}"),
            description: None,
            priority: Decimal::from(priority),
            applicable_product_ids: vec![],
            applicable_product_tags: vec![],
            segments: vec![Segment {
                id: Id::from_u128(id * 10),
                amount: Money::from_i64(100),
                starting_at: Timestamp(0),
                ending_before: Timestamp(1_000),
                drawn: Money::ZERO,
                manual: Money::ZERO,
            }],
            invoice_schedule: if paid {
                vec![InvoiceScheduleItem {
                    id: Id::from_u128(id * 100),
                    timestamp: Timestamp(0),
                    amount: Money::from_i64(100),
                    quantity: Decimal::ONE,
                    unit_price: Money::from_i64(100),
                    invoice_id: Id::from_u128(id * 1000),
                }]
            } else {
                vec![]
            },
            release: Release::Released { at: Timestamp(0) },
            created_by_threshold: None,
            created_at: Timestamp(0),
            deductions: vec![],
            archived_at: None,
            custom_fields: vec![],
            manual_entries: vec![],
            credit_type: None,
        }
    }

    #[test]
    fn drawdown_order_follows_metronome_rules() {
        let postpaid_low_priority = commit(1, CommitKind::Postpaid, 1, true);
        let paid_prepaid = commit(2, CommitKind::Prepaid, 10, true);
        let credit = commit(3, CommitKind::Credit, 10, false);
        let urgent_paid = commit(4, CommitKind::Prepaid, 5, true);
        let mut scoped = commit(5, CommitKind::Prepaid, 10, true);
        scoped.applicable_product_ids = vec![Id::from_u128(77)];
        let mut early_end = commit(6, CommitKind::Prepaid, 10, true);
        early_end.segments[0].ending_before = Timestamp(500);
        let mut contract_commits = [
            postpaid_low_priority,
            paid_prepaid,
            credit,
            urgent_paid,
            scoped,
            early_end,
        ];
        contract_commits.sort_by(|a, b| draw_order((a, &a.segments[0]), (b, &b.segments[0])));
        let ids: Vec<u128> = contract_commits.iter().map(|c| c.id.as_u128()).collect();
        // priority 5 first; at priority 10 the free credit, then the scoped commit, then the
        // earlier-ending one; postpaid last despite its priority 1.
        assert_eq!(ids, vec![4, 3, 5, 6, 2, 1]);
    }

    #[test]
    fn balance_counts_only_released_accessible_prepaid_segments() {
        let mut c = commit(1, CommitKind::Prepaid, 1, true);
        c.segments[0].drawn = Money::from_i64(30);
        assert_eq!(c.balance_at(Timestamp(10)).unwrap(), Money::from_i64(70));
        assert_eq!(c.balance_at(Timestamp(1_000)).unwrap(), Money::ZERO);
        c.release = Release::Gated {
            workflow_id: Id::from_u128(9),
        };
        assert_eq!(c.balance_at(Timestamp(10)).unwrap(), Money::ZERO);
        assert!(!commit(2, CommitKind::Postpaid, 1, true).counts_in_balance());
    }

    #[test]
    fn ledger_has_one_deduction_per_segment_and_invoice() {
        let mut c = commit(1, CommitKind::Prepaid, 1, true);
        let invoice = Id::from_u128(42);
        c.record_deduction(0, invoice, Money::from_i64(10), Timestamp(5))
            .unwrap();
        c.record_deduction(0, invoice, Money::from_i64(15), Timestamp(7))
            .unwrap();
        let ledger = c.ledger(|_| Some(Id::from_u128(1)), Timestamp(2_000));
        let types: Vec<&str> = ledger.iter().map(|e| e.entry_type.as_str()).collect();
        assert_eq!(
            types,
            vec![
                "PREPAID_COMMIT_SEGMENT_START",
                "PREPAID_COMMIT_AUTOMATED_INVOICE_DEDUCTION",
                "PREPAID_COMMIT_EXPIRATION"
            ]
        );
        assert_eq!(ledger[1].amount, Money::from_i64(-25));
        assert_eq!(ledger[2].amount, Money::from_i64(-75));
        c.release = Release::Canceled { at: Timestamp(3) };
        let canceled = c.ledger(|_| Some(Id::from_u128(1)), Timestamp(2_000));
        assert_eq!(canceled.len(), 1);
        assert_eq!(canceled[0].entry_type.as_str(), "PREPAID_COMMIT_CANCELED");
    }

    #[test]
    fn aggregates_compute_quantities() {
        let mut unique = Aggregate::empty_for(&Contribution::Unique(1));
        assert_eq!(
            unique.quantity_with(&Contribution::Unique(1)).unwrap(),
            Decimal::ONE
        );
        unique.add(&Contribution::Unique(1));
        assert_eq!(
            unique.quantity_with(&Contribution::Unique(1)).unwrap(),
            Decimal::ONE
        );
        assert_eq!(
            unique.quantity_with(&Contribution::Unique(2)).unwrap(),
            Decimal::TWO
        );
        let mut max = Aggregate::empty_for(&Contribution::Max(Decimal::ONE));
        max.add(&Contribution::Max(Decimal::from(5)));
        max.add(&Contribution::Max(Decimal::from(3)));
        assert_eq!(max.quantity(), Decimal::from(5));
    }

    fn contract_with(commits: Vec<Commit>) -> Contract {
        Contract {
            id: Id::from_u128(900),
            customer_id: Id::from_u128(901),
            rate_card_id: Id::from_u128(902),
            name: None,
            starting_at: Timestamp(0),
            ending_before: Some(Timestamp(10_000)),
            credit_type: CreditType::usd_cents(),
            uniqueness_key: None,
            created_at: Timestamp(0),
            commits,
            periods: vec![],
            purchases: vec![],
            spend_threshold: None,
            prepaid_threshold: None,
            workflows: vec![],
            edit_keys: vec![],
            edits: 0,
            lifecycle: None,
            recent_edits: vec![],
            draw_order: vec![],
            caches: ContractCaches::default(),
        }
    }

    fn segment(start: i64, end: i64) -> Segment {
        Segment {
            id: Id::from_u128(1),
            amount: Money::from_i64(100),
            starting_at: Timestamp(start),
            ending_before: Timestamp(end),
            drawn: Money::ZERO,
            manual: Money::ZERO,
        }
    }

    fn manual(id: u128, amount: i64) -> ManualEntry {
        ManualEntry {
            id: Id::from_u128(id),
            segment: 0,
            amount: Money::from_i64(amount),
            reason: "adjust".into(),
            at: Timestamp(5),
        }
    }

    #[test]
    fn manual_entries_move_the_balance_and_one_beyond_it_leaves_zero_not_a_debt() {
        let mut c = commit(1, CommitKind::Prepaid, 1, true);
        c.segments[0].drawn = Money::from_i64(30);
        c.add_manual_entry(manual(1, 25)).unwrap();
        assert_eq!(c.segments[0].remaining(), Money::from_i64(95));
        c.add_manual_entry(manual(2, -200)).unwrap();
        assert_eq!(c.segments[0].manual, Money::from_i64(-175));
        assert_eq!(c.segments[0].remaining(), Money::ZERO);
        // A later positive entry counts from where the entries stand, not from zero.
        c.add_manual_entry(manual(3, 100)).unwrap();
        assert_eq!(
            c.segments[0].remaining(),
            Money::ZERO.max(Money::from_i64(100 - 75 - 30))
        );
        // Beyond the bounds: refused, nothing changed.
        let before = c.clone();
        let huge = Money::from_i64(super::super::bounds::AMOUNT_MAX);
        let mut entry = manual(4, 0);
        entry.amount = huge;
        assert!(c.add_manual_entry(entry.clone()).is_ok());
        assert!(matches!(
            c.add_manual_entry(entry),
            Err(Rejection::InvalidField(_))
        ));
        assert_eq!(c.manual_entries.len(), before.manual_entries.len() + 1);
        // The ledger shows each entry with its reason and sign.
        let ledger = c.ledger(|_| None, Timestamp(10));
        let manual: Vec<_> = ledger
            .iter()
            .filter(|e| e.entry_type == LedgerEntryType::PrepaidCommitManual)
            .map(|e| (e.amount, e.reason.as_deref()))
            .collect();
        assert_eq!(manual.len(), 4);
        assert_eq!(manual[1], (Money::from_i64(-200), Some("adjust")));
    }

    #[test]
    fn balance_specifiers_exclude_a_balance_only_when_every_filter_of_one_exclude_matches() {
        let filter = |entity, key: &str, value: &str| CustomFieldFilter {
            entity,
            key: key.into(),
            value: value.into(),
        };
        let promo = vec![("campaign".to_string(), "promo".to_string())];
        let both = vec![
            ("campaign".to_string(), "promo".to_string()),
            ("region".to_string(), "eu".to_string()),
        ];
        let one: BalanceSpecifiers = vec![vec![vec![filter(
            FieldEntity::ContractCredit,
            "campaign",
            "promo",
        )]]];
        assert!(excluded_from_balance(&one, CommitKind::Credit, &promo));
        // The entity scopes it: a commit with the same field counts.
        assert!(!excluded_from_balance(&one, CommitKind::Prepaid, &promo));
        assert!(!excluded_from_balance(&one, CommitKind::Credit, &vec![]));
        let all_of: BalanceSpecifiers = vec![vec![vec![
            filter(FieldEntity::ContractCreditOrCommit, "campaign", "promo"),
            filter(FieldEntity::ContractCreditOrCommit, "region", "eu"),
        ]]];
        assert!(!excluded_from_balance(&all_of, CommitKind::Prepaid, &promo));
        assert!(excluded_from_balance(&all_of, CommitKind::Prepaid, &both));
        // Any exclude of any entry is enough.
        let any_of: BalanceSpecifiers = vec![
            vec![vec![filter(FieldEntity::Commit, "region", "us")]],
            vec![vec![filter(FieldEntity::Commit, "region", "eu")]],
        ];
        assert!(excluded_from_balance(&any_of, CommitKind::Postpaid, &both));
        assert!(!excluded_from_balance(&vec![], CommitKind::Credit, &both));
    }

    #[test]
    fn segments_and_contracts_cover_from_their_start_until_before_their_end() {
        let s = segment(10, 20);
        assert!(!s.covers(Timestamp(9)) && s.covers(Timestamp(10)));
        assert!(s.covers(Timestamp(19)) && !s.covers(Timestamp(20)));
        assert!(s.overlaps(Timestamp(5), Timestamp(15)));
        assert!(s.overlaps(Timestamp(19), Timestamp(30)));
        assert!(s.overlaps(Timestamp(0), Timestamp(11)));
        assert!(
            !s.overlaps(Timestamp(0), Timestamp(10)),
            "ends where it starts"
        );
        assert!(
            !s.overlaps(Timestamp(20), Timestamp(30)),
            "starts where it ends"
        );
        assert!(!s.overlaps(Timestamp(0), Timestamp(5)));
        assert!(!s.overlaps(Timestamp(25), Timestamp(30)));
        let c = contract_with(vec![]);
        assert!(c.covers(Timestamp(0)) && c.covers(Timestamp(9_999)));
        assert!(!c.covers(Timestamp(-1)) && !c.covers(Timestamp(10_000)));
        let open = Contract {
            ending_before: None,
            ..contract_with(vec![])
        };
        assert!(open.covers(Timestamp(i64::MAX - 1)));
    }

    #[test]
    fn credits_and_commits_without_an_invoice_are_free() {
        let mut credit = commit(1, CommitKind::Credit, 1, true);
        assert!(credit.is_free(), "a credit is free even with a schedule");
        credit.invoice_schedule.clear();
        assert!(credit.is_free());
        assert!(commit(2, CommitKind::Prepaid, 1, false).is_free());
        assert!(!commit(3, CommitKind::Prepaid, 1, true).is_free());
    }

    #[test]
    fn a_restricted_commit_pays_for_its_products_and_tags_only() {
        let (a, b) = (Id::from_u128(71), Id::from_u128(72));
        let tags = |t: &[&str]| t.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        let open = commit(1, CommitKind::Prepaid, 1, true);
        assert!(open.applies_to(a, &[]) && open.applies_to(b, &tags(&["x"])));
        let mut by_id = commit(2, CommitKind::Prepaid, 1, true);
        by_id.applicable_product_ids = vec![a];
        assert!(by_id.applies_to(a, &[]));
        assert!(!by_id.applies_to(b, &tags(&["x"])));
        let mut by_tag = commit(3, CommitKind::Prepaid, 1, true);
        by_tag.applicable_product_tags = tags(&["x"]);
        assert!(by_tag.applies_to(b, &tags(&["y", "x"])));
        assert!(!by_tag.applies_to(b, &tags(&["y"])));
        assert!(!by_tag.applies_to(a, &[]));
        let mut either = by_id.clone();
        either.applicable_product_tags = tags(&["x"]);
        assert!(either.applies_to(a, &[]), "by id");
        assert!(either.applies_to(b, &tags(&["x"])), "by tag");
        assert!(!either.applies_to(b, &tags(&["z"])));
    }

    /// Fewer applicable products and tags (counted together) draw first.
    #[test]
    fn a_narrower_scope_draws_first_counting_products_and_tags_together() {
        let ids = |n: u128| (0..n).map(|i| Id::from_u128(300 + i)).collect::<Vec<_>>();
        let tags = |n: usize| (0..n).map(|i| format!("t{i}")).collect::<Vec<_>>();
        let mut six = commit(1, CommitKind::Prepaid, 1, true);
        six.applicable_product_ids = ids(1);
        six.applicable_product_tags = tags(5);
        let mut five = commit(2, CommitKind::Prepaid, 1, true);
        five.applicable_product_ids = ids(2);
        five.applicable_product_tags = tags(3);
        let order = draw_order((&six, &six.segments[0]), (&five, &five.segments[0]));
        assert_eq!(order, Ordering::Greater, "1 + 5 is wider than 2 + 3");
        let open = commit(3, CommitKind::Prepaid, 1, true);
        assert_eq!(
            draw_order((&open, &open.segments[0]), (&six, &six.segments[0])),
            Ordering::Greater
        );
    }

    #[test]
    fn a_deduction_is_returned_to_its_own_segment_and_invoice_only() {
        let mut c = commit(1, CommitKind::Prepaid, 1, true);
        c.segments.push(Segment {
            id: Id::from_u128(11),
            ..segment(0, 1_000)
        });
        let (one, two) = (Id::from_u128(41), Id::from_u128(42));
        c.record_deduction(0, one, Money::from_i64(10), Timestamp(5))
            .unwrap();
        c.record_deduction(1, two, Money::from_i64(20), Timestamp(6))
            .unwrap();
        assert_eq!(
            c.return_deduction(0, two, Money::from_i64(1)),
            Err(Rejection::AmountOverflow)
        );
        assert_eq!(
            c.return_deduction(1, one, Money::from_i64(1)),
            Err(Rejection::AmountOverflow)
        );
        c.return_deduction(1, two, Money::from_i64(5)).unwrap();
        assert_eq!(c.segments[0].drawn, Money::from_i64(10));
        assert_eq!(c.segments[1].drawn, Money::from_i64(15));
    }

    #[test]
    fn only_a_segment_that_ended_with_a_balance_expires_in_the_ledger() {
        let mut c = commit(1, CommitKind::Prepaid, 1, true);
        let types = |c: &Commit, as_of: i64| {
            c.ledger(|_| Some(Id::from_u128(1)), Timestamp(as_of))
                .iter()
                .map(|e| e.entry_type.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            types(&c, 999),
            ["PREPAID_COMMIT_SEGMENT_START"],
            "not ended yet"
        );
        c.record_deduction(0, Id::from_u128(42), Money::from_i64(100), Timestamp(5))
            .unwrap();
        assert_eq!(
            types(&c, 2_000),
            [
                "PREPAID_COMMIT_SEGMENT_START",
                "PREPAID_COMMIT_AUTOMATED_INVOICE_DEDUCTION"
            ],
            "used up: nothing expires"
        );
    }

    #[test]
    fn count_and_max_aggregates_add_up() {
        let mut count = Aggregate::empty_for(&Contribution::Count);
        count.add(&Contribution::Count);
        count.add(&Contribution::Count);
        assert_eq!(count.quantity(), Decimal::TWO);
        assert_eq!(
            count.quantity_with(&Contribution::Count).unwrap(),
            Decimal::from(3)
        );
        let mut sum = Aggregate::empty_for(&Contribution::Sum(Decimal::ONE));
        sum.add(&Contribution::Sum(Decimal::from(4)));
        sum.add(&Contribution::Sum(Decimal::from(3)));
        assert_eq!(sum.quantity(), Decimal::from(7));
        let mut max = Aggregate::empty_for(&Contribution::Max(Decimal::ONE));
        assert_eq!(
            max.quantity_with(&Contribution::Max(Decimal::from(4)))
                .unwrap(),
            Decimal::from(4)
        );
        max.add(&Contribution::Max(Decimal::from(5)));
        assert_eq!(
            max.quantity_with(&Contribution::Max(Decimal::from(7)))
                .unwrap(),
            Decimal::from(7)
        );
        assert_eq!(
            max.quantity_with(&Contribution::Max(Decimal::from(2)))
                .unwrap(),
            Decimal::from(5)
        );
    }

    #[test]
    fn invoice_statuses_have_metronome_names() {
        assert_eq!(InvoiceStatus::Draft.as_str(), "DRAFT");
        assert_eq!(InvoiceStatus::Finalized.as_str(), "FINALIZED");
        assert_eq!(InvoiceStatus::Void.as_str(), "VOID");
    }

    #[test]
    fn threshold_configurations_are_checked_at_their_boundaries() {
        use super::super::fixtures::{prepaid_threshold, spend_threshold};
        use crate::domain::gate::GateType;
        let (usd, limits) = (CreditType::usd_cents(), Limits::default());
        let ok = |c: &ThresholdConfig| c.validate(&usd, &limits);
        let mut spend = spend_threshold(500, GateType::None);
        spend.discount = Some(Discount {
            payment_fraction: Decimal::ONE,
        });
        assert_eq!(ok(&spend), Ok(()), "a fraction of exactly 1 is no discount");
        spend.discount = Some(Discount {
            payment_fraction: Decimal::new(10_001, 4),
        });
        assert!(ok(&spend).is_err());
        spend.discount = None;
        for (priority, valid) in [(0, true), (3, true), (-1, false)] {
            spend.commit.priority = Some(Decimal::from(priority));
            assert_eq!(ok(&spend).is_ok(), valid, "priority {priority}");
        }
        spend.commit.priority = None;
        spend.threshold_amount = Money::from_i64(crate::domain::bounds::AMOUNT_MAX + 1);
        assert!(
            matches!(ok(&spend), Err(Rejection::InvalidField(ref f)) if f.contains("threshold_amount")),
            "{:?}",
            ok(&spend)
        );
        // The smallest recharge is the threshold plus the gap, exactly.
        assert_eq!(ok(&prepaid_threshold(500, 1_500, GateType::None)), Ok(()));
        assert!(matches!(
            ok(&prepaid_threshold(500, 1_499, GateType::None)),
            Err(Rejection::RechargeGapTooSmall(_))
        ));
    }

    fn released_pair() -> Contract {
        let mut late = commit(2, CommitKind::Prepaid, 2, true);
        late.segments[0].starting_at = Timestamp(100);
        late.segments[0].ending_before = Timestamp(200);
        contract_with(vec![commit(1, CommitKind::Prepaid, 1, true), late])
    }

    #[test]
    fn caches_are_built_before_the_first_input_and_follow_releases_and_cancels() {
        let mut c = released_pair();
        c.ensure_caches();
        assert_eq!(c.draw_order, vec![(0, 0), (1, 0)]);
        c.check_caches();
        // B, cached per window of constant accessible segments.
        assert_eq!(
            c.balance_tracked(Timestamp(50)).unwrap(),
            Money::from_i64(100)
        );
        assert_eq!(
            c.balance_tracked(Timestamp(150)).unwrap(),
            Money::from_i64(200)
        );
        assert_eq!(
            c.balance_tracked(Timestamp(250)).unwrap(),
            Money::from_i64(100)
        );
        assert_eq!(
            c.balance_tracked(Timestamp(99)).unwrap(),
            Money::from_i64(100)
        );
        assert_eq!(c.balance_tracked(Timestamp(1_000)).unwrap(), Money::ZERO);
        assert_eq!(
            c.balance_tracked(Timestamp(100)).unwrap(),
            Money::from_i64(200)
        );
        // A cancel drops the commit from B at once and from the order at the next rebuild.
        c.commits[1].release = Release::Canceled { at: Timestamp(120) };
        c.released_commit_canceled(1);
        assert_eq!(
            c.balance_tracked(Timestamp(150)).unwrap(),
            Money::from_i64(100)
        );
        // A commit released after a cancel rebuilds the stale order.
        c.commits.push(commit(3, CommitKind::Prepaid, 3, true));
        c.commit_released(2);
        assert_eq!(c.draw_order, vec![(0, 0), (2, 0)]);
        assert_eq!(
            c.balance_tracked(Timestamp(150)).unwrap(),
            Money::from_i64(200)
        );
        c.check_caches();
    }

    #[test]
    fn a_release_before_the_caches_are_built_builds_them_whole() {
        let mut c = released_pair();
        c.commit_released(1);
        assert_eq!(c.draw_order, vec![(0, 0), (1, 0)]);
        c.check_caches();
    }

    #[test]
    fn a_workflow_in_flight_is_found_before_the_caches_are_built() {
        use crate::domain::gate::{ChargeRecord, GateType, Workflow, WorkflowKind, WorkflowState};
        let mut c = contract_with(vec![]);
        c.workflows.push(Workflow {
            id: Id::from_u128(5),
            kind: WorkflowKind::Spend,
            contract_id: c.id,
            commit_id: Id::from_u128(6),
            invoice_id: Id::from_u128(7),
            access_amount: Money::from_i64(500),
            invoice_total: Money::from_i64(500),
            gate: crate::domain::fixtures::gate(GateType::External),
            state: WorkflowState::AwaitingExternal,
            started_at: Timestamp(1),
            ended_at: None,
            payment_intent_id: None,
            error: None,
            charge: ChargeRecord::default(),
        });
        assert_eq!(
            c.in_flight_tracked(WorkflowKind::Spend).map(|w| w.id),
            Some(Id::from_u128(5))
        );
        assert!(c.in_flight_tracked(WorkflowKind::PrepaidBalance).is_none());
    }

    #[test]
    fn outstanding_spend_follows_line_changes_of_draft_periods_only() {
        let line = |charged: i64| UsageLine {
            charged: Money::from_i64(charged),
            ..UsageLine::new(Id::from_u128(8), Aggregate::Count(Decimal::ONE), None)
        };
        let period = |status, charged| UsagePeriod {
            invoice_id: Id::from_u128(60),
            starting_at: Timestamp(0),
            ending_before: Timestamp(100),
            status,
            lines: vec![line(charged)],
        };
        let mut c = contract_with(vec![]);
        c.periods = vec![
            period(InvoiceStatus::Finalized, 30),
            period(InvoiceStatus::Draft, 40),
        ];
        c.ensure_caches();
        assert_eq!(c.outstanding_spend_tracked().unwrap(), Money::from_i64(40));
        c.periods[1].lines[0].charged = Money::from_i64(45);
        c.line_changed(1, Money::from_i64(40), Money::from_i64(45));
        assert_eq!(c.outstanding_spend_tracked().unwrap(), Money::from_i64(45));
        c.periods[0].lines[0].charged = Money::from_i64(31);
        c.line_changed(0, Money::from_i64(30), Money::from_i64(31));
        assert_eq!(c.outstanding_spend_tracked().unwrap(), Money::from_i64(45));
        assert_eq!(c.outstanding_spend().unwrap(), Money::from_i64(45));
    }
}

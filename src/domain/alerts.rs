//! Alerts (Metronome's threshold notifications): a threshold on a value of one customer, or of
//! every customer, watched on every input that may move it.
//!
//! An alert is a catalog object ([`Alert`]): created and archived through the catalog's log,
//! in force for the inputs accepted from the version that created it until the version that
//! archived it, so replay judges every input by the alerts it was first judged by. Each
//! customer keeps one [`AlertStatus`] per alert it was evaluated on: `ok` or `in_alarm`. After
//! every input the customer evaluates its alerts ([`Customer::evaluate_alerts`]): entering
//! alarm emits `alerts.<type>` (Metronome's properties envelope), leaving it emits Tollgate's
//! `alerts.<type>_resolved`. Both ids are derived from the alert, the customer and how many
//! times it entered (or left) alarm, so a replay or a retry sends the same ids.
//!
//! A customer's first evaluation of an alert created with `evaluate_on_create: false` is
//! silent: a customer already past the threshold starts `in_alarm` without a webhook (it did
//! not cross it after the alert existed). A reset (`/v1/customer-alerts/reset`) forgets the
//! status and evaluates again at once, announcing an alarm.
//!
//! [`Customer::evaluate_alerts`]: super::customer::Customer::evaluate_alerts

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::contract::{Commit, CommitKind, Contract, InvoiceStatus};
use super::customer::{Applied, Customer};
use super::effects::{Effect, Notice, NoticeType};
use super::ids::{Id, Timestamp};
use super::money::Money;
use super::rejection::Rejection;
use super::{Catalog, Ctx};

/// The alert types Tollgate evaluates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AlertType {
    /// Remaining balance of released prepaid commits `<=` threshold.
    LowRemainingCommitBalance,
    /// Remaining share (0-100) of released prepaid commits `<=` threshold.
    LowRemainingCommitPercentage,
    /// Remaining balance of released credits `<=` threshold.
    LowRemainingContractCreditBalance,
    /// Remaining share (0-100) of released credits `<=` threshold.
    LowRemainingContractCreditPercentage,
    /// Remaining balance of released prepaid commits and credits together `<=` threshold.
    LowRemainingContractCreditAndCommitBalance,
    /// Charges of the current billing periods, before commits and credits, `>=` threshold.
    SpendThreshold,
    /// What the current billing periods' usage invoices come to after commits and credits
    /// `>=` threshold.
    MonthlyInvoiceTotalSpendThreshold,
    /// Quantity of one billable metric in the current billing periods `>=` threshold.
    UsageThreshold,
    /// One invoice of the current billing periods (usage or a commit's purchase) whose total
    /// is `>=` threshold.
    InvoiceTotal,
}

impl AlertType {
    pub const ALL: [AlertType; 9] = [
        AlertType::LowRemainingCommitBalance,
        AlertType::LowRemainingCommitPercentage,
        AlertType::LowRemainingContractCreditBalance,
        AlertType::LowRemainingContractCreditPercentage,
        AlertType::LowRemainingContractCreditAndCommitBalance,
        AlertType::SpendThreshold,
        AlertType::MonthlyInvoiceTotalSpendThreshold,
        AlertType::UsageThreshold,
        AlertType::InvoiceTotal,
    ];

    /// Metronome's `alert_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertType::LowRemainingCommitBalance => "low_remaining_commit_balance_reached",
            AlertType::LowRemainingCommitPercentage => "low_remaining_commit_percentage_reached",
            AlertType::LowRemainingContractCreditBalance => {
                "low_remaining_contract_credit_balance_reached"
            }
            AlertType::LowRemainingContractCreditPercentage => {
                "low_remaining_contract_credit_percentage_reached"
            }
            AlertType::LowRemainingContractCreditAndCommitBalance => {
                "low_remaining_contract_credit_and_commit_balance_reached"
            }
            AlertType::SpendThreshold => "spend_threshold_reached",
            AlertType::MonthlyInvoiceTotalSpendThreshold => {
                "monthly_invoice_total_spend_threshold_reached"
            }
            AlertType::UsageThreshold => "usage_threshold_reached",
            AlertType::InvoiceTotal => "invoice_total_reached",
        }
    }

    pub fn parse(text: &str) -> Option<AlertType> {
        AlertType::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// The webhook sent when a customer enters alarm: `alerts.<type>`.
    pub fn webhook_type(self) -> &'static str {
        match self {
            AlertType::LowRemainingCommitBalance => "alerts.low_remaining_commit_balance_reached",
            AlertType::LowRemainingCommitPercentage => {
                "alerts.low_remaining_commit_percentage_reached"
            }
            AlertType::LowRemainingContractCreditBalance => {
                "alerts.low_remaining_contract_credit_balance_reached"
            }
            AlertType::LowRemainingContractCreditPercentage => {
                "alerts.low_remaining_contract_credit_percentage_reached"
            }
            AlertType::LowRemainingContractCreditAndCommitBalance => {
                "alerts.low_remaining_contract_credit_and_commit_balance_reached"
            }
            AlertType::SpendThreshold => "alerts.spend_threshold_reached",
            AlertType::MonthlyInvoiceTotalSpendThreshold => {
                "alerts.monthly_invoice_total_spend_threshold_reached"
            }
            AlertType::UsageThreshold => "alerts.usage_threshold_reached",
            AlertType::InvoiceTotal => "alerts.invoice_total_reached",
        }
    }

    /// Tollgate's webhook when a customer leaves alarm: `alerts.<type>_resolved`.
    pub fn resolved_type(self) -> &'static str {
        match self {
            AlertType::LowRemainingCommitBalance => {
                "alerts.low_remaining_commit_balance_reached_resolved"
            }
            AlertType::LowRemainingCommitPercentage => {
                "alerts.low_remaining_commit_percentage_reached_resolved"
            }
            AlertType::LowRemainingContractCreditBalance => {
                "alerts.low_remaining_contract_credit_balance_reached_resolved"
            }
            AlertType::LowRemainingContractCreditPercentage => {
                "alerts.low_remaining_contract_credit_percentage_reached_resolved"
            }
            AlertType::LowRemainingContractCreditAndCommitBalance => {
                "alerts.low_remaining_contract_credit_and_commit_balance_reached_resolved"
            }
            AlertType::SpendThreshold => "alerts.spend_threshold_reached_resolved",
            AlertType::MonthlyInvoiceTotalSpendThreshold => {
                "alerts.monthly_invoice_total_spend_threshold_reached_resolved"
            }
            AlertType::UsageThreshold => "alerts.usage_threshold_reached_resolved",
            AlertType::InvoiceTotal => "alerts.invoice_total_reached_resolved",
        }
    }

    /// Whether the alarm is a value at or below the threshold (balances) rather than at or
    /// above it (spend, usage, invoices).
    pub fn is_low(self) -> bool {
        matches!(
            self,
            AlertType::LowRemainingCommitBalance
                | AlertType::LowRemainingCommitPercentage
                | AlertType::LowRemainingContractCreditBalance
                | AlertType::LowRemainingContractCreditPercentage
                | AlertType::LowRemainingContractCreditAndCommitBalance
        )
    }

    pub fn is_percentage(self) -> bool {
        matches!(
            self,
            AlertType::LowRemainingCommitPercentage
                | AlertType::LowRemainingContractCreditPercentage
        )
    }
}

/// The invoices an `invoice_total_reached` alert looks at (`invoice_types_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlertInvoiceType {
    /// A billing period's usage invoice.
    Usage,
    /// A commit's purchase invoice.
    Scheduled,
}

impl AlertInvoiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertInvoiceType::Usage => "USAGE",
            AlertInvoiceType::Scheduled => "SCHEDULED",
        }
    }
}

/// One alert, as created (`POST /v1/alerts/create`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub id: Id,
    pub alert_type: AlertType,
    pub name: String,
    /// In the credit type's units (cents for USD), the metric's units, or percent.
    pub threshold: Decimal,
    /// `None`: every customer.
    pub customer_id: Option<Id>,
    pub credit_type_id: Id,
    /// For [`AlertType::UsageThreshold`].
    pub billable_metric_id: Option<Id>,
    /// For [`AlertType::InvoiceTotal`]; empty: every type.
    pub invoice_types: Vec<AlertInvoiceType>,
    /// Kept and shown: they name credit grants (Metronome's plans), which Tollgate does not
    /// have, so they filter nothing.
    pub credit_grant_type_filters: Vec<String>,
    pub evaluate_on_create: bool,
    pub uniqueness_key: Option<String>,
    /// Set by `archive` with `release_uniqueness_key`: the key may be used again.
    pub key_released: bool,
    pub created_at: Timestamp,
    pub archived_at: Option<Timestamp>,
    /// The catalog versions that created and archived it (set by the catalog).
    pub created_in: u64,
    pub archived_in: Option<u64>,
}

impl Alert {
    /// # Errors
    /// [`Rejection::InvalidField`] or [`Rejection::MissingField`] naming the field.
    pub fn validate(&self, catalog: &Catalog) -> Result<(), Rejection> {
        if self.name.trim().is_empty() {
            return Err(Rejection::MissingField("name"));
        }
        if self.threshold.is_sign_negative() && !self.threshold.is_zero() {
            return Err(Rejection::invalid("threshold", "must not be negative"));
        }
        if self.alert_type.is_percentage() && self.threshold > Decimal::ONE_HUNDRED {
            return Err(Rejection::invalid(
                "threshold",
                "is a percentage: at most 100",
            ));
        }
        super::bounds::check_amount("threshold", Money::from_decimal(self.threshold))?;
        if let Some(key) = &self.uniqueness_key {
            super::bounds::check_uniqueness_key(key)?;
        }
        match (self.alert_type, self.billable_metric_id) {
            (AlertType::UsageThreshold, None) => {
                return Err(Rejection::invalid(
                    "billable_metric_id",
                    "is required for usage_threshold_reached",
                ));
            }
            (AlertType::UsageThreshold, Some(metric)) => {
                if catalog.metric(metric).is_none() {
                    return Err(Rejection::BillableMetricNotFound(metric.to_string()));
                }
            }
            (_, Some(_)) => {
                return Err(Rejection::invalid(
                    "billable_metric_id",
                    "is only for usage_threshold_reached",
                ));
            }
            (_, None) => {}
        }
        let usd = super::money::CreditType::usd_cents().id;
        if self.credit_type_id != usd {
            if catalog.credit_type(self.credit_type_id).is_none() {
                return Err(Rejection::invalid(
                    "credit_type_id",
                    &format!(
                        "{} is neither USD (cents) nor a custom pricing unit",
                        self.credit_type_id
                    ),
                ));
            }
            if !self.alert_type.is_low() {
                return Err(Rejection::invalid(
                    "credit_type_id",
                    "only balance alerts watch a custom pricing unit: spend and invoices are in fiat",
                ));
            }
        }
        if !self.invoice_types.is_empty() && self.alert_type != AlertType::InvoiceTotal {
            return Err(Rejection::invalid(
                "invoice_types_filter",
                "is only for invoice_total_reached",
            ));
        }
        Ok(())
    }

    /// Whether inputs accepted at `catalog_version` are judged by it.
    pub fn in_force_at(&self, catalog_version: u64) -> bool {
        self.created_in <= catalog_version
            && self
                .archived_in
                .is_none_or(|archived| catalog_version < archived)
    }

    pub fn status_name(&self) -> &'static str {
        if self.archived_at.is_some() {
            "archived"
        } else {
            "enabled"
        }
    }
}

/// Where a customer stands on one alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlertState {
    /// Reset: evaluated again at once, an alarm announced.
    Evaluating,
    Ok,
    InAlarm,
}

/// One customer's status on one alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertStatus {
    pub alert_id: Id,
    pub state: AlertState,
    /// When the state last changed.
    pub updated_at: Timestamp,
    /// What moved it last (`usage`, `contract`, `payment`, `time`, `reset`, ...).
    pub triggered_by: Option<String>,
    /// Times it entered alarm with a webhook, and left it (the webhooks' ids).
    pub alarms: u64,
    pub resolutions: u64,
}

/// The value an alert watches, now, and whether it is past the threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub breached: bool,
    pub value: Decimal,
    /// The invoice that reached the total (`invoice_total_reached`).
    pub invoice: Option<(Id, Money)>,
}

/// A contract's billing period covering `at`, if any.
fn current_period(contract: &Contract, at: Timestamp) -> Option<&super::contract::UsagePeriod> {
    contract
        .periods
        .iter()
        .find(|p| p.starting_at <= at && at < p.ending_before)
}

impl Customer {
    /// What `alert` watches for this customer at `ctx.at`.
    ///
    /// # Errors
    /// [`Rejection::AmountOverflow`] (impossible within the bounds).
    pub fn alert_reading(&self, alert: &Alert, ctx: &Ctx<'_>) -> Result<Reading, Rejection> {
        let at = ctx.at;
        // A balance alert watches the balances in its credit type (a custom pricing unit's
        // commits live on contracts in fiat); the others watch contracts in it.
        let low = alert.alert_type.is_low();
        let contracts = self
            .contracts
            .iter()
            .filter(|c| low || c.credit_type.id == alert.credit_type_id);
        let mut value = Money::ZERO;
        let mut total = Money::ZERO;
        let mut invoice: Option<(Id, Money)> = None;
        let kinds: &[CommitKind] = match alert.alert_type {
            AlertType::LowRemainingCommitBalance | AlertType::LowRemainingCommitPercentage => {
                &[CommitKind::Prepaid]
            }
            AlertType::LowRemainingContractCreditBalance
            | AlertType::LowRemainingContractCreditPercentage => &[CommitKind::Credit],
            _ => &[CommitKind::Prepaid, CommitKind::Credit],
        };
        if alert.alert_type.is_low() {
            // The customer's own commits and credits count once, whatever contracts use them.
            let shared = self
                .customer_commits
                .iter()
                .filter(|c| c.commit.unit_or(c.credit_type.id) == alert.credit_type_id)
                .map(|c| &c.commit);
            add_balances(shared, kinds, at, (&mut value, &mut total))?;
        }
        for contract in contracts {
            match alert.alert_type {
                AlertType::LowRemainingCommitBalance
                | AlertType::LowRemainingCommitPercentage
                | AlertType::LowRemainingContractCreditBalance
                | AlertType::LowRemainingContractCreditPercentage
                | AlertType::LowRemainingContractCreditAndCommitBalance => {
                    let fiat = contract.credit_type.id;
                    let in_unit = contract
                        .commits
                        .iter()
                        .filter(|c| c.unit_or(fiat) == alert.credit_type_id);
                    add_balances(in_unit, kinds, at, (&mut value, &mut total))?;
                }
                AlertType::SpendThreshold => {
                    if let Some(period) = current_period(contract, at) {
                        for line in &period.lines {
                            // Spend in a custom pricing unit counts at its worth in fiat.
                            value = value.checked_add(line.to_fiat(line.charged)?)?;
                        }
                    }
                }
                AlertType::MonthlyInvoiceTotalSpendThreshold => {
                    if let Some(period) = current_period(contract, at) {
                        value = value.checked_add(period.uncovered()?)?;
                    }
                }
                AlertType::UsageThreshold => {
                    let Some(period) = current_period(contract, at) else {
                        continue;
                    };
                    // Every product billed from the metric aggregates the same events.
                    let quantity = period
                        .lines
                        .iter()
                        .filter(|line| {
                            ctx.catalog.product(line.product_id).is_some_and(|p| {
                                p.kind
                                    == super::catalog::ProductKind::Usage {
                                        billable_metric_id: alert
                                            .billable_metric_id
                                            .unwrap_or_default(),
                                    }
                            })
                        })
                        .map(|line| line.aggregate.quantity())
                        .max()
                        .unwrap_or_default();
                    // An event is rated on every contract covering it: overlapping contracts
                    // count the same usage, so the customer's usage is the largest.
                    value = value.max(Money::from_decimal(quantity));
                }
                AlertType::InvoiceTotal => {
                    let wants =
                        |t| alert.invoice_types.is_empty() || alert.invoice_types.contains(&t);
                    let mut candidates = Vec::new();
                    if let Some(period) = current_period(contract, at) {
                        if wants(AlertInvoiceType::Usage) && period.status != InvoiceStatus::Void {
                            candidates.push((period.invoice_id, period.uncovered()?));
                        }
                    }
                    // Purchases issued this calendar month, up to now (a month without usage
                    // has no usage period, and its purchases still count).
                    let month = at.month_start();
                    if wants(AlertInvoiceType::Scheduled) {
                        candidates.extend(
                            contract
                                .purchases
                                .iter()
                                .filter(|p| p.status != InvoiceStatus::Void)
                                .filter(|p| month <= p.issued_at && p.issued_at <= at)
                                .map(|p| (p.id, p.total)),
                        );
                    }
                    for (id, amount) in candidates {
                        if invoice.is_none_or(|(_, best)| amount > best) {
                            invoice = Some((id, amount));
                        }
                    }
                }
            }
        }
        let threshold = alert.threshold;
        let reading = match alert.alert_type {
            AlertType::InvoiceTotal => {
                let largest = invoice.map_or(Decimal::ZERO, |(_, amount)| amount.as_decimal());
                Reading {
                    breached: invoice.is_some() && largest >= threshold,
                    value: largest,
                    invoice,
                }
            }
            t if t.is_percentage() => {
                // Nothing to measure without a balance: never in alarm.
                if total.is_zero() {
                    Reading {
                        breached: false,
                        value: Decimal::ONE_HUNDRED,
                        invoice: None,
                    }
                } else {
                    let share = value
                        .as_decimal()
                        .checked_mul(Decimal::ONE_HUNDRED)
                        .and_then(|v| v.checked_div(total.as_decimal()))
                        .ok_or(Rejection::AmountOverflow)?;
                    Reading {
                        breached: share <= threshold,
                        value: share,
                        invoice: None,
                    }
                }
            }
            t if t.is_low() => Reading {
                breached: value.as_decimal() <= threshold,
                value: value.as_decimal(),
                invoice: None,
            },
            _ => Reading {
                breached: value.as_decimal() >= threshold,
                value: value.as_decimal(),
                invoice: None,
            },
        };
        Ok(reading)
    }

    /// Evaluates every alert in force for this customer after an input (see the module's
    /// documentation); `trigger` says what kind of input it was.
    ///
    /// # Errors
    /// [`Rejection::AmountOverflow`] (impossible within the bounds).
    pub fn evaluate_alerts(
        &mut self,
        trigger: &'static str,
        ctx: &Ctx<'_>,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        let Some(customer_id) = self.id() else {
            return Ok(());
        };
        if !ctx.catalog.has_alerts_for(customer_id) {
            return Ok(());
        }
        // As of the latest input's time, never earlier (see `Customer::alerts_as_of`).
        self.alerts_as_of = self.alerts_as_of.max(ctx.at);
        let ctx = &Ctx {
            at: self.alerts_as_of,
            ..*ctx
        };
        for alert in ctx.catalog.alerts_for(customer_id, ctx.catalog_version) {
            let reading = self.alert_reading(alert, ctx)?;
            let position = self.alerts.iter().position(|s| s.alert_id == alert.id);
            let prior = position.map(|i| self.alerts[i].state);
            let after = if reading.breached
                || (prior == Some(AlertState::InAlarm)
                    && crate::defects::active(crate::defects::Defect::AlertResolutionLost))
            {
                AlertState::InAlarm
            } else {
                AlertState::Ok
            };
            let index = match position {
                Some(i) => i,
                None => {
                    self.alerts.push(AlertStatus {
                        alert_id: alert.id,
                        state: AlertState::Evaluating,
                        updated_at: ctx.at,
                        triggered_by: None,
                        alarms: 0,
                        resolutions: 0,
                    });
                    self.alerts.len() - 1
                }
            };
            let status = &mut self.alerts[index];
            if status.state == after {
                continue;
            }
            status.state = after;
            status.updated_at = ctx.at;
            status.triggered_by = Some(trigger.to_owned());
            // An alarm is announced unless it is the silent first evaluation; a resolution
            // only answers an alarm that was announced (after a reset too).
            let (notice_type, count) = match after {
                AlertState::InAlarm if prior.is_some() || alert.evaluate_on_create => {
                    status.alarms += 1;
                    (NoticeType::AlertReached(alert.alert_type), status.alarms)
                }
                AlertState::Ok if status.alarms > status.resolutions => {
                    status.resolutions += 1;
                    (
                        NoticeType::AlertResolved(alert.alert_type),
                        status.resolutions,
                    )
                }
                _ => continue,
            };
            applied.effects.push(Effect::Notice(alert_notice(
                alert,
                customer_id,
                notice_type,
                count,
                &reading,
                (trigger, ctx.at),
            )));
        }
        Ok(())
    }

    /// Forgets the status on `alert_id` so the evaluation after this input starts afresh.
    ///
    /// # Errors
    /// [`Rejection::AlertNotFound`] for an alert not in force for this customer.
    pub fn reset_alert(&mut self, alert_id: Id, ctx: &Ctx<'_>) -> Result<(), Rejection> {
        let customer_id = self.id().ok_or(Rejection::CustomerNotFound)?;
        if !ctx
            .catalog
            .alerts_for(customer_id, ctx.catalog_version)
            .any(|a| a.id == alert_id)
        {
            return Err(Rejection::AlertNotFound);
        }
        if let Some(status) = self.alerts.iter_mut().find(|s| s.alert_id == alert_id) {
            status.state = AlertState::Evaluating;
            status.updated_at = ctx.at;
            status.triggered_by = Some("reset".into());
        } else {
            self.alerts.push(AlertStatus {
                alert_id,
                state: AlertState::Evaluating,
                updated_at: ctx.at,
                triggered_by: Some("reset".into()),
                alarms: 0,
                resolutions: 0,
            });
        }
        Ok(())
    }

    /// The status on `alert_id`, if the customer was evaluated on it.
    pub fn alert_status(&self, alert_id: Id) -> Option<&AlertStatus> {
        self.alerts.iter().find(|s| s.alert_id == alert_id)
    }
}

/// The webhook of a customer entering or leaving alarm: Metronome's properties envelope with
/// the value that decided it.
fn alert_notice(
    alert: &Alert,
    customer_id: Id,
    notice_type: NoticeType,
    count: u64,
    reading: &Reading,
    (trigger, at): (&'static str, Timestamp),
) -> Notice {
    let kind = match notice_type {
        NoticeType::AlertResolved(_) => "alert-resolved",
        _ => "alert-alarm",
    };
    let id = Id::derive(
        Id::from_key(kind, &format!("{}/{customer_id}", alert.id)),
        kind,
        count,
    );
    let mut properties = Map::new();
    let mut put = |key: &str, value: Value| {
        properties.insert(key.to_owned(), value);
    };
    put("customer_id", json!(customer_id.to_string()));
    put("alert_id", json!(alert.id.to_string()));
    put("timestamp", json!(at.to_rfc3339()));
    put("threshold", json!(Money::from_decimal(alert.threshold)));
    put("alert_name", json!(alert.name));
    put("triggered_by", json!(trigger));
    let value = json!(Money::from_decimal(reading.value));
    match alert.alert_type {
        t if t.is_percentage() => {
            put("remaining_percentage", value);
            put("credit_type_id", json!(alert.credit_type_id.to_string()));
        }
        t if t.is_low() => {
            put("remaining_balance", value);
            put("credit_type_id", json!(alert.credit_type_id.to_string()));
        }
        AlertType::SpendThreshold => {
            put("current_spend", value);
            put("credit_type_id", json!(alert.credit_type_id.to_string()));
        }
        AlertType::MonthlyInvoiceTotalSpendThreshold => {
            put("invoice_total", value);
            put("credit_type_id", json!(alert.credit_type_id.to_string()));
        }
        AlertType::UsageThreshold => {
            put("current_usage", value);
            let metric = alert.billable_metric_id.map(|m| m.to_string());
            put("billable_metric_id", json!(metric));
        }
        _ => {
            let (invoice_id, total) = reading.invoice.map_or((None, Money::ZERO), |(id, total)| {
                (Some(id.to_string()), total)
            });
            put("invoice_id", json!(invoice_id));
            put("invoice_total", json!(total));
            put("credit_type_id", json!(alert.credit_type_id.to_string()));
        }
    }
    // An alert is about the customer, not one contract: the nil id.
    Notice::with_properties(id, notice_type, customer_id, Id::NIL, properties)
}

/// Adds the balance now (`value`) and the amount of the segments in effect (`total`) of the
/// released commits of `kinds` among `commits`.
fn add_balances<'a>(
    commits: impl IntoIterator<Item = &'a Commit>,
    kinds: &[CommitKind],
    at: Timestamp,
    (value, total): (&mut Money, &mut Money),
) -> Result<(), Rejection> {
    for commit in commits
        .into_iter()
        .filter(|c| c.is_released() && kinds.contains(&c.kind))
    {
        *value = value.checked_add(commit.balance_at(at)?)?;
        for segment in commit.segments.iter().filter(|s| s.covers(at)) {
            // What the segment was given: its amount and its positive manual entries.
            *total = total
                .checked_add(segment.amount)?
                .checked_add(segment.manual.max(Money::ZERO))?;
        }
    }
    Ok(())
}

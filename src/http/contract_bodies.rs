//! The request bodies of the contract endpoints in Metronome's shapes (the SDK's
//! `ContractCreateParams`, `ContractEditParams`, threshold configurations, commits and credits),
//! read by [`request::read`](super::request::read) and turned into the domain's specs. Fields
//! Metronome has and Tollgate does not implement are [`Refused`]: accepted only when unused.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult};
use super::request::{Amount, Choice, Choices, Exact, Refused, Time, Uuid, Why, present};
use crate::domain::contract::{
    BalanceSpecifiers, CommitKind, CustomFieldFilter, Discount, FieldEntity, RechargeLimits,
    ThresholdCommit, ThresholdConfig, ThresholdKind,
};
use crate::domain::customer::{
    CommitSpec, CommitUpdate, InvoiceUpdate, SegmentUpdate, ThresholdUpdate,
};
use crate::domain::gate::{GateType, PaymentGateConfig, StripeConfig, StripePaymentType, TaxType};
use crate::domain::money::Conversion;

impl Choices for GateType {
    const NAME: &'static str = "PaymentGateType";
    const VALUES: &'static [(&'static str, Self)] = &[
        ("NONE", GateType::None),
        ("EXTERNAL", GateType::External),
        ("STRIPE", GateType::Stripe),
    ];
}

impl Choices for TaxType {
    const NAME: &'static str = "TaxType";
    const VALUES: &'static [(&'static str, Self)] = &[
        ("NONE", TaxType::None),
        ("STRIPE", TaxType::Stripe),
        ("ANROK", TaxType::Anrok),
        ("PRECALCULATED", TaxType::Precalculated),
    ];
}

impl Choices for StripePaymentType {
    const NAME: &'static str = "StripePaymentType";
    const VALUES: &'static [(&'static str, Self)] = &[
        ("INVOICE", StripePaymentType::Invoice),
        ("PAYMENT_INTENT", StripePaymentType::PaymentIntent),
    ];
}

/// A commit's type (credits have none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitType(pub CommitKind);

impl Choices for CommitType {
    const NAME: &'static str = "CommitType";
    const VALUES: &'static [(&'static str, Self)] = &[
        ("PREPAID", CommitType(CommitKind::Prepaid)),
        ("POSTPAID", CommitType(CommitKind::Postpaid)),
    ];
}

/// An EXTERNAL gate's payment outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub paid: bool,
}

impl Choices for Outcome {
    const NAME: &'static str = "ReleaseOutcome";
    const VALUES: &'static [(&'static str, Self)] = &[
        ("paid", Outcome { paid: true }),
        ("failed", Outcome { paid: false }),
    ];
}

pub type GateTypeChoice = Choice<GateType>;
pub type TaxTypeChoice = Choice<TaxType>;
pub type StripePaymentTypeChoice = Choice<StripePaymentType>;
pub type CommitTypeChoice = Choice<CommitType>;
pub type OutcomeChoice = Choice<Outcome>;
pub type FieldEntityChoice = Choice<FieldEntity>;

impl Choices for FieldEntity {
    const NAME: &'static str = "CustomFieldFilterEntity";
    const VALUES: &'static [(&'static str, Self)] = &[
        ("Commit", FieldEntity::Commit),
        ("ContractCredit", FieldEntity::ContractCredit),
        (
            "ContractCreditOrCommit",
            FieldEntity::ContractCreditOrCommit,
        ),
    ];
}

/// One entry of `threshold_balance_specifiers`: a balance that meets any `exclude` is left out
/// of the balance the prepaid threshold watches.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BalanceSpecifierBody {
    pub exclude: Vec<BalanceExcludeBody>,
}

/// A balance with every one of these custom fields is left out.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BalanceExcludeBody {
    pub custom_field_filters: Vec<CustomFieldFilterBody>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomFieldFilterBody {
    pub entity: FieldEntityChoice,
    pub key: String,
    pub value: String,
}

/// `threshold_balance_specifiers` as the domain keeps them.
pub fn balance_specifiers(list: Vec<BalanceSpecifierBody>) -> BalanceSpecifiers {
    list.into_iter()
        .map(|specifier| {
            specifier
                .exclude
                .into_iter()
                .map(|exclude| {
                    exclude
                        .custom_field_filters
                        .into_iter()
                        .map(|f| CustomFieldFilter {
                            entity: f.entity.0,
                            key: f.key,
                            value: f.value,
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// An item of `update_commits` (`commit_id`) or `update_credits` (`credit_id`): absent fields
/// stay as they are; `null` product restrictions mean every product, a `null` priority the
/// default one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCommitBody {
    #[serde(default)]
    pub commit_id: Option<Uuid>,
    #[serde(default)]
    pub credit_id: Option<Uuid>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub priority: Option<Option<Exact>>,
    #[serde(default)]
    pub product_id: Option<Uuid>,
    #[serde(default, deserialize_with = "present")]
    pub applicable_product_ids: Option<Option<Vec<Uuid>>>,
    #[serde(default, deserialize_with = "present")]
    pub applicable_product_tags: Option<Option<Vec<String>>>,
    #[serde(default)]
    pub access_schedule: Option<AccessScheduleUpdateBody>,
    /// Commits only.
    #[serde(default)]
    pub invoice_schedule: Option<InvoiceScheduleUpdateBody>,
    /// Only LIST_RATE.
    #[serde(default)]
    pub rate_type: Option<String>,
    #[serde(default)]
    pub hierarchy_configuration: Refused,
    #[serde(default)]
    pub rollover_fraction: Refused,
    #[serde(default)]
    pub netsuite_sales_order_id: Refused,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessScheduleUpdateBody {
    #[serde(default)]
    pub add_schedule_items: Option<Vec<AccessItemBody>>,
    #[serde(default)]
    pub update_schedule_items: Option<Vec<AccessItemUpdateBody>>,
    #[serde(default)]
    pub remove_schedule_items: Option<Vec<ArchiveBody>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessItemUpdateBody {
    pub id: Uuid,
    #[serde(default)]
    pub amount: Option<Amount>,
    #[serde(default)]
    pub starting_at: Option<Time>,
    #[serde(default)]
    pub ending_before: Option<Time>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoiceScheduleUpdateBody {
    #[serde(default)]
    pub add_schedule_items: Option<Vec<InvoiceItemBody>>,
    #[serde(default)]
    pub update_schedule_items: Option<Vec<InvoiceItemUpdateBody>>,
    #[serde(default)]
    pub remove_schedule_items: Option<Vec<ArchiveBody>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoiceItemUpdateBody {
    pub id: Uuid,
    #[serde(default)]
    pub timestamp: Option<Time>,
    #[serde(default)]
    pub amount: Option<Amount>,
    #[serde(default)]
    pub unit_price: Option<Amount>,
    #[serde(default)]
    pub quantity: Option<Exact>,
}

impl UpdateCommitBody {
    /// `credit`: an item of `update_credits`.
    pub fn into_domain(self, credit: bool, at: &str) -> ApiResult<CommitUpdate> {
        let id_field = if credit { "credit_id" } else { "commit_id" };
        let (id, other) = if credit {
            (self.credit_id, self.commit_id)
        } else {
            (self.commit_id, self.credit_id)
        };
        let id = id.ok_or_else(|| ApiError::BadRequest(format!("{at}.{id_field} is required")))?;
        if other.is_some() {
            return Err(ApiError::BadRequest(format!(
                "{at}: name the {} with {id_field}",
                if credit { "credit" } else { "commit" }
            )));
        }
        if let Some(rate_type) = &self.rate_type {
            if !rate_type.eq_ignore_ascii_case("LIST_RATE") {
                return Err(ApiError::BadRequest(format!(
                    "{at}.rate_type: only LIST_RATE is supported"
                )));
            }
        }
        let mut update = CommitUpdate {
            commit_id: id.0,
            credit,
            name: self.name,
            description: self.description,
            priority: self.priority.map(|p| p.map(|p| p.0)),
            product_id: self.product_id.map(|p| p.0),
            applicable_product_ids: self.applicable_product_ids.map(|ids| {
                ids.map_or_else(Vec::new, |ids| ids.into_iter().map(|id| id.0).collect())
            }),
            applicable_product_tags: self.applicable_product_tags.map(Option::unwrap_or_default),
            ..CommitUpdate::default()
        };
        if let Some(access) = self.access_schedule {
            update.add_segments = access
                .add_schedule_items
                .unwrap_or_default()
                .into_iter()
                .map(|i| (i.amount.0, i.starting_at.0, i.ending_before.0))
                .collect();
            update.update_segments = access
                .update_schedule_items
                .unwrap_or_default()
                .into_iter()
                .map(|i| SegmentUpdate {
                    id: i.id.0,
                    amount: i.amount.map(|a| a.0),
                    starting_at: i.starting_at.map(|t| t.0),
                    ending_before: i.ending_before.map(|t| t.0),
                })
                .collect();
            update.remove_segments = access
                .remove_schedule_items
                .unwrap_or_default()
                .into_iter()
                .map(|i| i.id.0)
                .collect();
        }
        if let Some(invoices) = self.invoice_schedule {
            if credit {
                return Err(ApiError::BadRequest(format!(
                    "{at}.invoice_schedule: credits are free and have no invoice schedule"
                )));
            }
            for (i, item) in invoices
                .add_schedule_items
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                let (unit_price, quantity) = match (item.amount, item.unit_price) {
                    (Some(amount), _) => (amount.0, Decimal::ONE),
                    (None, Some(price)) => (price.0, item.quantity.map_or(Decimal::ONE, |q| q.0)),
                    (None, None) => {
                        return Err(ApiError::BadRequest(format!(
                            "{at}.invoice_schedule.add_schedule_items[{i}].unit_price is required"
                        )));
                    }
                };
                update
                    .add_invoices
                    .push((item.timestamp.0, unit_price, quantity));
            }
            update.update_invoices = invoices
                .update_schedule_items
                .unwrap_or_default()
                .into_iter()
                .map(|i| InvoiceUpdate {
                    id: i.id.0,
                    timestamp: i.timestamp.map(|t| t.0),
                    amount: i.amount.map(|a| a.0),
                    unit_price: i.unit_price.map(|a| a.0),
                    quantity: i.quantity.map(|q| q.0),
                })
                .collect();
            update.remove_invoices = invoices
                .remove_schedule_items
                .unwrap_or_default()
                .into_iter()
                .map(|i| i.id.0)
                .collect();
        }
        Ok(update)
    }
}

/// `archive_commits` / `archive_credits` items of a v2 edit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchiveBody {
    pub id: Uuid,
}

/// An empty string counts as absent (older SDK calls send `""` for an unset enum).
fn blank_is_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error as _;
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) if s.is_empty() => Ok(None),
        other => T::deserialize(other).map(Some).map_err(D::Error::custom),
    }
}

/// How a threshold's or commit's purchase is paid before its money is released.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PaymentGateConfigBody {
    pub payment_gate_type: GateTypeChoice,
    /// NONE unless given.
    #[serde(default)]
    pub tax_type: Option<TaxTypeChoice>,
    /// For STRIPE gates (INVOICE unless given).
    #[serde(default)]
    pub stripe_config: Option<StripeConfigBody>,
    #[serde(default)]
    pub precalculated_tax_config: Option<PrecalculatedTaxBody>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct StripeConfigBody {
    #[serde(default, deserialize_with = "blank_is_none")]
    #[schema(value_type = Option<StripePaymentTypeChoice>)]
    pub payment_type: Option<StripePaymentTypeChoice>,
    /// Copied onto the Stripe invoice or PaymentIntent.
    #[serde(default)]
    pub invoice_metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub on_session_payment: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PrecalculatedTaxBody {
    pub tax_amount: Amount,
    #[serde(default)]
    pub tax_name: Option<String>,
}

/// Stripe's limits on metadata (keys up to 40 characters, values up to 500, 50 keys), checked
/// here so that a gate never fails at Stripe for its metadata; Tollgate's own keys and
/// brackets (Stripe's form syntax) are refused.
fn check_metadata(metadata: &BTreeMap<String, String>, at: &str) -> ApiResult<()> {
    use crate::payments::stripe::RESERVED_METADATA_KEYS;
    let at = format!("{at}.stripe_config.invoice_metadata");
    if metadata.len() > 50 {
        return Err(ApiError::BadRequest(format!("{at}: at most 50 keys")));
    }
    for (key, value) in metadata {
        if RESERVED_METADATA_KEYS.contains(&key.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "{at}.{key}: the key is Tollgate's own (it names the workflow at Stripe)"
            )));
        }
        if key.is_empty() || key.chars().count() > 40 || key.contains(['[', ']']) {
            return Err(ApiError::BadRequest(format!(
                "{at}: {key:?} is not a Stripe metadata key (1-40 characters, no brackets)"
            )));
        }
        if value.chars().count() > 500 {
            return Err(ApiError::BadRequest(format!(
                "{at}.{key}: at most 500 characters"
            )));
        }
    }
    Ok(())
}

impl PaymentGateConfigBody {
    /// `at` is the configuration's path, for messages.
    pub fn into_domain(self, at: &str) -> ApiResult<PaymentGateConfig> {
        let at = format!("{at}.payment_gate_config");
        if let Some(metadata) = self
            .stripe_config
            .as_ref()
            .and_then(|c| c.invoice_metadata.as_ref())
        {
            check_metadata(metadata, &at)?;
        }
        let gate_type = self.payment_gate_type.0;
        let stripe = match self.stripe_config {
            Some(config) => Some(StripeConfig {
                payment_type: config
                    .payment_type
                    .map_or(StripePaymentType::Invoice, |c| c.0),
                invoice_metadata: config
                    .invoice_metadata
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                on_session_payment: config.on_session_payment.unwrap_or(false),
            }),
            None if gate_type == GateType::Stripe => Some(StripeConfig {
                payment_type: StripePaymentType::Invoice,
                invoice_metadata: Vec::new(),
                on_session_payment: false,
            }),
            None => None,
        };
        Ok(PaymentGateConfig {
            gate_type,
            tax_type: self.tax_type.map_or(TaxType::None, |c| c.0),
            stripe,
            precalculated_tax: self
                .precalculated_tax_config
                .map(|tax| (tax.tax_amount.0, tax.tax_name)),
        })
    }
}

/// A discount on what a threshold purchase charges.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DiscountBody {
    /// Share of the access amount actually charged (0.9 = 10% off).
    #[serde(default)]
    pub payment_fraction: Option<Exact>,
    /// Another spelling of `payment_fraction` found in Metronome's guides.
    #[serde(default)]
    pub fraction: Option<Exact>,
    #[serde(default)]
    pub cap: Refused,
}

impl DiscountBody {
    fn into_domain(self, at: &str) -> ApiResult<Discount> {
        let fraction = self
            .payment_fraction
            .or(self.fraction)
            .ok_or_else(|| ApiError::BadRequest(format!("{at}.payment_fraction is required")))?;
        Ok(Discount {
            payment_fraction: fraction.0,
        })
    }
}

/// The commit a threshold configuration issues.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ThresholdCommitBody {
    pub product_id: Uuid,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub priority: Option<Exact>,
    #[serde(default)]
    pub applicable_product_ids: Option<Vec<Uuid>>,
    #[serde(default)]
    pub applicable_product_tags: Option<Vec<String>>,
    #[serde(default)]
    pub specifiers: Refused,
}

/// `spend_threshold_configuration` or `prepaid_balance_threshold_configuration` (and their
/// `add_` forms in an edit).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ThresholdConfigBody {
    pub commit: ThresholdCommitBody,
    pub is_enabled: bool,
    pub payment_gate_config: PaymentGateConfigBody,
    /// Spend: the outstanding spend that triggers a purchase. Prepaid balance: the balance
    /// below which it recharges.
    pub threshold_amount: Amount,
    /// Required for a prepaid balance threshold: the balance a recharge restores.
    #[serde(default)]
    pub recharge_to_amount: Option<Amount>,
    #[serde(default)]
    pub discount_configuration: Option<DiscountBody>,
    /// Another spelling of `discount_configuration`.
    #[serde(default)]
    pub discount_config: Option<DiscountBody>,
    /// Prepaid balance only: balances left out of the watched balance, by custom fields.
    #[serde(default)]
    pub threshold_balance_specifiers: Option<Vec<BalanceSpecifierBody>>,
    /// Prepaid balance only: the custom pricing unit of the threshold, the recharge-to amount,
    /// the watched balance and the recharge commit; the rate card must have a conversion for
    /// it (the purchase is charged in fiat at that conversion).
    #[serde(default)]
    pub custom_credit_type_id: Option<Uuid>,
    /// Tollgate's recharge safety rails (prepaid balance only; not in Metronome's shape).
    #[serde(default)]
    pub recharge_limits: Option<RechargeLimitsBody>,
}

/// `recharge_limits`: Tollgate's extension of a prepaid balance threshold configuration. Every
/// limit is optional; a recharge a limit does not allow is held back whole (one
/// `payment_gate.recharge_limited` webhook when a limit starts holding) and evaluated again
/// when the limit lets go. Tollgate's own object: an unknown field in it is refused (a
/// misspelt limit would otherwise be no limit at all).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RechargeLimitsBody {
    /// At most this many recharges start in one billing period (calendar month, UTC), failed
    /// ones included.
    #[serde(default)]
    pub max_recharges_per_period: Option<u32>,
    /// At most this much is recharged (access amount, before discount) in one billing period,
    /// failed recharges not counted.
    #[serde(default)]
    pub max_recharge_amount_per_period: Option<Amount>,
    /// At least this many minutes between the starts of two recharges.
    #[serde(default)]
    pub min_recharge_interval_minutes: Option<u32>,
    /// Each recharge's commit is usable for this many days from its start (else to the
    /// contract's end).
    #[serde(default)]
    pub recharge_commit_duration_days: Option<u32>,
}

impl RechargeLimitsBody {
    pub fn into_domain(self) -> RechargeLimits {
        RechargeLimits {
            max_recharges_per_period: self.max_recharges_per_period,
            max_amount_per_period: self.max_recharge_amount_per_period.map(|a| a.0),
            min_interval_minutes: self.min_recharge_interval_minutes,
            commit_duration_days: self.recharge_commit_duration_days,
        }
    }
}

fn ids(ids: Option<Vec<Uuid>>) -> Vec<crate::domain::Id> {
    ids.unwrap_or_default().into_iter().map(|id| id.0).collect()
}

impl ThresholdConfigBody {
    /// `at` is the configuration's field name, for messages.
    pub fn into_domain(self, kind: ThresholdKind, at: &str) -> ApiResult<ThresholdConfig> {
        let recharge_to_amount = match (kind, self.recharge_to_amount) {
            (ThresholdKind::PrepaidBalance, None) => {
                return Err(ApiError::BadRequest(format!(
                    "{at}.recharge_to_amount is required"
                )));
            }
            (_, amount) => amount.map(|a| a.0),
        };
        let discount = match (self.discount_configuration, self.discount_config) {
            (Some(d), _) => Some(d.into_domain(&format!("{at}.discount_configuration"))?),
            (None, Some(d)) => Some(d.into_domain(&format!("{at}.discount_config"))?),
            (None, None) => None,
        };
        let commit = self.commit;
        Ok(ThresholdConfig {
            kind,
            commit: ThresholdCommit {
                product_id: commit.product_id.0,
                name: commit.name,
                description: commit.description,
                priority: commit.priority.map(|p| p.0),
                applicable_product_ids: ids(commit.applicable_product_ids),
                applicable_product_tags: commit.applicable_product_tags.unwrap_or_default(),
            },
            is_enabled: self.is_enabled,
            gate: self.payment_gate_config.into_domain(at)?,
            threshold_amount: self.threshold_amount.0,
            recharge_to_amount,
            discount,
            triggers: 0,
            limits: self.recharge_limits.map(RechargeLimitsBody::into_domain),
            hold: None,
            holds: 0,
            balance_specifiers: balance_specifiers(
                self.threshold_balance_specifiers.unwrap_or_default(),
            ),
            // The engine takes the worth from the contract's rate card.
            credit_type: self
                .custom_credit_type_id
                .map(|id| id.0)
                .filter(|id| *id != crate::domain::money::CreditType::usd_cents().id)
                .map(|credit_type_id| Conversion {
                    credit_type_id,
                    fiat_per_unit: Decimal::ZERO,
                }),
        })
    }
}

/// Why an update's `custom_credit_type_id` is refused.
pub struct CreditTypeChange;

impl Why for CreditTypeChange {
    const WHY: &'static str = "(changing a threshold configuration's credit type) is not supported: its triggers, rails and recharge commits are counted in it";
}

type RefusedCreditTypeChange = Refused<CreditTypeChange>;

/// The commit of a threshold configuration update: absent fields stay, `null` clears.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ThresholdCommitUpdateBody {
    #[serde(default)]
    pub product_id: Option<Uuid>,
    #[serde(default, deserialize_with = "present")]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub priority: Option<Option<Exact>>,
    #[serde(default, deserialize_with = "present")]
    pub applicable_product_ids: Option<Option<Vec<Uuid>>>,
    #[serde(default, deserialize_with = "present")]
    pub applicable_product_tags: Option<Option<Vec<String>>>,
    #[serde(default)]
    pub specifiers: Refused,
}

/// `update_spend_threshold_configuration` or `update_prepaid_balance_threshold_configuration`:
/// absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ThresholdUpdateBody {
    #[serde(default)]
    pub is_enabled: Option<bool>,
    #[serde(default)]
    pub payment_gate_config: Option<PaymentGateConfigBody>,
    #[serde(default)]
    pub threshold_amount: Option<Amount>,
    #[serde(default)]
    pub recharge_to_amount: Option<Amount>,
    /// `null` removes the discount.
    #[serde(default, deserialize_with = "present")]
    pub discount_configuration: Option<Option<DiscountBody>>,
    #[serde(default)]
    pub discount_config: Option<DiscountBody>,
    #[serde(default)]
    pub commit: Option<ThresholdCommitUpdateBody>,
    /// Replaces the balance specifiers (an empty list removes them).
    #[serde(default)]
    pub threshold_balance_specifiers: Option<Vec<BalanceSpecifierBody>>,
    /// The credit type of a configuration does not change (its triggers, rails and recharge
    /// commits are counted in it): refused unless absent or null.
    #[serde(default)]
    pub custom_credit_type_id: RefusedCreditTypeChange,
    /// Replaces the recharge safety rails; `null` removes them.
    #[serde(default, deserialize_with = "present")]
    pub recharge_limits: Option<Option<RechargeLimitsBody>>,
}

impl ThresholdUpdateBody {
    pub fn into_domain(self, at: &str) -> ApiResult<ThresholdUpdate> {
        let mut update = ThresholdUpdate {
            is_enabled: self.is_enabled,
            gate: self
                .payment_gate_config
                .map(|gate| gate.into_domain(at))
                .transpose()?,
            threshold_amount: self.threshold_amount.map(|a| a.0),
            recharge_to_amount: self.recharge_to_amount.map(|a| a.0),
            recharge_limits: self
                .recharge_limits
                .map(|limits| limits.map(RechargeLimitsBody::into_domain)),
            balance_specifiers: self.threshold_balance_specifiers.map(balance_specifiers),
            ..ThresholdUpdate::default()
        };
        if let Some(configuration) = self.discount_configuration {
            update.discount = Some(match (configuration, self.discount_config) {
                (Some(d), _) => Some(d.into_domain(&format!("{at}.discount_configuration"))?),
                (None, Some(d)) => Some(d.into_domain(&format!("{at}.discount_config"))?),
                (None, None) => None,
            });
        }
        if let Some(commit) = self.commit {
            update.commit_product_id = commit.product_id.map(|id| id.0);
            update.commit_name = commit.name;
            update.commit_description = commit.description;
            update.commit_priority = commit.priority.map(|p| p.map(|p| p.0));
            update.commit_applicable_product_ids = commit.applicable_product_ids.map(ids);
            update.commit_applicable_product_tags = commit
                .applicable_product_tags
                .map(Option::unwrap_or_default);
        }
        Ok(update)
    }
}

/// One segment of a commit's or credit's access schedule.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AccessItemBody {
    pub amount: Amount,
    pub starting_at: Time,
    pub ending_before: Time,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct AccessScheduleBody {
    #[serde(default)]
    pub schedule_items: Option<Vec<AccessItemBody>>,
    /// USD (cents), the default, is the only credit type of commits so far.
    #[serde(default)]
    pub credit_type_id: Option<Uuid>,
}

/// One invoice of a commit's invoice schedule: `amount`, or `unit_price` times `quantity`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InvoiceItemBody {
    pub timestamp: Time,
    #[serde(default)]
    pub amount: Option<Amount>,
    #[serde(default)]
    pub unit_price: Option<Amount>,
    /// 1 unless given.
    #[serde(default)]
    pub quantity: Option<Exact>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct InvoiceScheduleBody {
    #[serde(default)]
    pub schedule_items: Option<Vec<InvoiceItemBody>>,
    /// The commit is not invoiced at all.
    #[serde(default)]
    pub do_not_invoice: Option<bool>,
    #[serde(default)]
    pub recurring_schedule: Refused,
    /// USD (cents), the default, is the only credit type of commits so far.
    #[serde(default)]
    pub credit_type_id: Option<Uuid>,
}

/// A commit (`type` PREPAID or POSTPAID) or a credit (no `type`) of a contract.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CommitBody {
    /// Commits only.
    #[serde(default, rename = "type")]
    pub kind: Option<CommitTypeChoice>,
    pub product_id: Uuid,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub priority: Option<Exact>,
    #[serde(default)]
    pub applicable_product_ids: Option<Vec<Uuid>>,
    #[serde(default)]
    pub applicable_product_tags: Option<Vec<String>>,
    pub access_schedule: AccessScheduleBody,
    /// Commits only: when the commit is invoiced.
    #[serde(default)]
    pub invoice_schedule: Option<InvoiceScheduleBody>,
    /// Only LIST_RATE.
    #[serde(default)]
    pub rate_type: Option<String>,
    /// A payment-gated commit (`add_commits` of `/v2/contracts/edit` only).
    #[serde(default)]
    pub payment_gate_config: Option<PaymentGateConfigBody>,
    #[serde(default)]
    pub specifiers: Refused,
    #[serde(default)]
    pub rollover_fraction: Refused,
    #[serde(default)]
    pub recurring_schedule: Refused,
    #[serde(default)]
    pub hierarchy_configuration: Refused,
    #[serde(default)]
    pub custom_fields: Option<BTreeMap<String, String>>,
}

/// Whether a commit body is a commit or a credit, and where it may carry a payment gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitRole {
    Commit { gates_allowed: bool },
    Credit,
}

impl CommitBody {
    /// `at` is the body's path (`add_commits[0]`), for messages.
    pub fn into_domain(self, role: CommitRole, at: &str) -> ApiResult<CommitSpec> {
        let kind = match role {
            CommitRole::Credit => CommitKind::Credit,
            CommitRole::Commit { .. } => {
                self.kind
                    .ok_or_else(|| ApiError::BadRequest(format!("{at}.type is required")))?
                    .0
                    .0
            }
        };
        if let Some(rate_type) = &self.rate_type {
            if !rate_type.eq_ignore_ascii_case("LIST_RATE") {
                return Err(ApiError::BadRequest(format!(
                    "{at}.rate_type: only LIST_RATE is supported"
                )));
            }
        }
        let usd = crate::domain::money::CreditType::usd_cents().id;
        let invoice_type = self
            .invoice_schedule
            .as_ref()
            .and_then(|i| i.credit_type_id.as_ref());
        if invoice_type.is_some_and(|id| id.0 != usd) {
            return Err(ApiError::BadRequest(format!(
                "{at}.invoice_schedule.credit_type_id: invoices are in the fiat credit type, USD (cents), {}",
                crate::domain::money::USD_CENTS_ID
            )));
        }
        // A custom pricing unit is checked by the engine (it must exist and, for a
        // contract's commit, have a conversion on the contract's rate card).
        let credit_type = self
            .access_schedule
            .credit_type_id
            .map(|id| id.0)
            .filter(|id| *id != usd);
        let access_schedule = self
            .access_schedule
            .schedule_items
            .unwrap_or_default()
            .into_iter()
            .map(|item| (item.amount.0, item.starting_at.0, item.ending_before.0))
            .collect();
        let mut invoice_schedule = Vec::new();
        if let Some(invoices) = self.invoice_schedule {
            if !invoices.do_not_invoice.unwrap_or(false) {
                for (i, item) in invoices
                    .schedule_items
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                {
                    let (unit_price, quantity) = match (item.amount, item.unit_price) {
                        (Some(amount), _) => (amount.0, Decimal::ONE),
                        (None, Some(price)) => {
                            (price.0, item.quantity.map_or(Decimal::ONE, |q| q.0))
                        }
                        (None, None) => {
                            return Err(ApiError::BadRequest(format!(
                                "{at}.invoice_schedule.schedule_items[{i}].unit_price is required"
                            )));
                        }
                    };
                    invoice_schedule.push((item.timestamp.0, unit_price, quantity));
                }
            }
        }
        let payment_gate = match (self.payment_gate_config, role) {
            (
                Some(_),
                CommitRole::Commit {
                    gates_allowed: false,
                }
                | CommitRole::Credit,
            ) => {
                return Err(ApiError::BadRequest(format!(
                    "{at}.payment_gate_config: payment-gated commits are added with POST /v2/contracts/edit"
                )));
            }
            (gate, _) => gate.map(|gate| gate.into_domain(at)).transpose()?,
        };
        Ok(CommitSpec {
            kind,
            product_id: self.product_id.0,
            name: self.name,
            description: self.description,
            priority: self.priority.map(|p| p.0),
            applicable_product_ids: ids(self.applicable_product_ids),
            applicable_product_tags: self.applicable_product_tags.unwrap_or_default(),
            access_schedule,
            invoice_schedule,
            payment_gate,
            custom_fields: self.custom_fields.unwrap_or_default().into_iter().collect(),
            credit_type,
        })
    }
}

/// The commits or credits of a list field, each with its path.
pub fn commit_specs(
    list: Option<Vec<CommitBody>>,
    role: CommitRole,
    field: &str,
) -> ApiResult<Vec<CommitSpec>> {
    list.unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, body)| body.into_domain(role, &format!("{field}[{i}]")))
        .collect()
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UsageStatementScheduleBody {
    /// Only MONTHLY.
    #[serde(default)]
    pub frequency: Option<String>,
}

/// `POST /v1/contracts/create`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateContractBody {
    pub customer_id: Uuid,
    pub starting_at: Time,
    #[serde(default)]
    pub ending_before: Option<Time>,
    /// The rate card, by id or by alias.
    #[serde(default)]
    pub rate_card_id: Option<Uuid>,
    #[serde(default)]
    pub rate_card_alias: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// A second create with the same key is refused (409).
    #[serde(default)]
    pub uniqueness_key: Option<String>,
    #[serde(default)]
    pub commits: Option<Vec<CommitBody>>,
    #[serde(default)]
    pub credits: Option<Vec<CommitBody>>,
    #[serde(default)]
    pub spend_threshold_configuration: Option<ThresholdConfigBody>,
    #[serde(default)]
    pub prepaid_balance_threshold_configuration: Option<ThresholdConfigBody>,
    #[serde(default)]
    pub usage_statement_schedule: Option<UsageStatementScheduleBody>,
    #[serde(default)]
    pub overrides: Refused,
    #[serde(default)]
    pub scheduled_charges: Refused,
    #[serde(default)]
    pub recurring_commits: Refused,
    #[serde(default)]
    pub recurring_credits: Refused,
    #[serde(default)]
    pub subscriptions: Refused,
    #[serde(default)]
    pub spend_trackers: Refused,
    #[serde(default)]
    pub discounts: Refused,
    #[serde(default)]
    pub professional_services: Refused,
    #[serde(default)]
    pub reseller_royalties: Refused,
    #[serde(default)]
    pub transition: Refused,
    #[serde(default)]
    pub hierarchy_configuration: Refused,
    #[serde(default)]
    pub usage_filter: Refused,
}

/// `POST /v1/contracts/get` and `/v2/contracts/get`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct GetContractBody {
    pub customer_id: Uuid,
    pub contract_id: Uuid,
    /// Balances as of this time (now unless given).
    #[serde(default)]
    pub as_of_date: Option<Time>,
    #[serde(default)]
    pub include_ledgers: Option<bool>,
    #[serde(default)]
    pub include_balance: Option<bool>,
}

/// `POST /v1/contracts/list` and `/v2/contracts/list`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ListContractsBody {
    pub customer_id: Uuid,
    /// Only contracts in effect at this time.
    #[serde(default)]
    pub covering_date: Option<Time>,
    /// Only contracts starting at or after this time.
    #[serde(default)]
    pub starting_at: Option<Time>,
    /// Balances as of this time (now unless given).
    #[serde(default)]
    pub as_of_date: Option<Time>,
    #[serde(default)]
    pub include_ledgers: Option<bool>,
    #[serde(default)]
    pub include_balance: Option<bool>,
}

/// `POST /v2/contracts/edit`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EditContractBody {
    pub customer_id: Uuid,
    pub contract_id: Uuid,
    /// A second edit with the same key is refused (409).
    #[serde(default)]
    pub uniqueness_key: Option<String>,
    #[serde(default)]
    pub add_commits: Option<Vec<CommitBody>>,
    #[serde(default)]
    pub add_credits: Option<Vec<CommitBody>>,
    #[serde(default)]
    pub add_spend_threshold_configuration: Option<ThresholdConfigBody>,
    #[serde(default)]
    pub update_spend_threshold_configuration: Option<ThresholdUpdateBody>,
    #[serde(default)]
    pub add_prepaid_balance_threshold_configuration: Option<ThresholdConfigBody>,
    #[serde(default)]
    pub update_prepaid_balance_threshold_configuration: Option<ThresholdUpdateBody>,
    #[serde(default)]
    pub add_overrides: Refused,
    #[serde(default)]
    pub add_scheduled_charges: Refused,
    /// Changed in place (README "Balance corrections" has the rules for money already moved).
    #[serde(default)]
    pub update_commits: Option<Vec<UpdateCommitBody>>,
    #[serde(default)]
    pub update_credits: Option<Vec<UpdateCommitBody>>,
    /// Archived now: they draw nothing more, what remains expires, scheduled invoices not
    /// issued are voided.
    #[serde(default)]
    pub archive_commits: Option<Vec<ArchiveBody>>,
    #[serde(default)]
    pub archive_credits: Option<Vec<ArchiveBody>>,
    #[serde(default)]
    pub add_recurring_commits: Refused,
    #[serde(default)]
    pub add_recurring_credits: Refused,
    #[serde(default)]
    pub add_spend_trackers: Refused,
    #[serde(default)]
    pub add_subscriptions: Refused,
    #[serde(default)]
    pub add_discounts: Refused,
    #[serde(default)]
    pub add_professional_services: Refused,
    #[serde(default)]
    pub add_reseller_royalties: Refused,
    /// The contract's new end (exclusive); `null` makes it open-ended.
    #[serde(default, deserialize_with = "present")]
    pub update_contract_end_date: Option<Option<Time>>,
    /// Whether the new end may fall before the end of a finalized usage invoice (default true;
    /// the invoice stays as it is).
    #[serde(default)]
    pub allow_contract_ending_before_finalized_invoice: Option<bool>,
    #[serde(default)]
    pub update_scheduled_charges: Refused,
    #[serde(default)]
    pub archive_scheduled_charges: Refused,
    #[serde(default)]
    pub add_usage_filters: Refused,
}

/// `POST /v1/contracts/updateEndDate`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateEndDateBody {
    pub customer_id: Uuid,
    pub contract_id: Uuid,
    /// The new end (exclusive); absent makes the contract open-ended.
    #[serde(default)]
    pub ending_before: Option<Time>,
    /// Whether the new end may fall before the end of a finalized usage invoice (default true;
    /// the invoice stays as it is).
    #[serde(default)]
    pub allow_ending_before_finalized_invoice: Option<bool>,
}

/// `POST /v1/contracts/commits/threshold-billing/release`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ReleaseBody {
    pub workflow_id: Uuid,
    pub outcome: OutcomeChoice,
    /// Recorded on a failed workflow.
    #[serde(default)]
    pub error_message: Option<String>,
}

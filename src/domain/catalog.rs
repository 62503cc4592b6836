//! The catalog: billable metrics, products and rate cards, shared by every customer.
//!
//! The catalog is append-mostly: metrics and products are immutable once created (archive and
//! recreate, as in Metronome), rate cards only gain rates. Each change bumps
//! [`Catalog::version`], and every rate remembers the version that added it, so replaying a
//! usage input rates it against exactly the catalog it was first rated against (a rate added
//! later with a back-dated `starting_at` does not rewrite history on replay).
//!
//! The lookup structures (metrics by event type, products by metric) exist so that rating an
//! event costs a few hash lookups, not a scan of the catalog.

use std::hash::{Hash, Hasher};

use rust_decimal::Decimal;
use rustc_hash::{FxHashMap, FxHasher};
use serde::{Deserialize, Serialize};

use super::bounds;
use super::contract::Limits;
use super::ids::{Id, Timestamp};
use super::money::{Conversion, CreditType, CreditUnit, Money, fast, parse_exact_decimal};
use super::rejection::Rejection;
use super::usage::UsageEvent;

/// How a billable metric turns matching events into a quantity within a billing period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Aggregation {
    Count,
    Sum,
    Max,
    Unique,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTypeFilter {
    pub in_values: Option<Vec<String>>,
    pub not_in_values: Option<Vec<String>>,
}

/// One property condition; every condition of a metric must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertyFilter {
    pub name: String,
    pub exists: Option<bool>,
    pub in_values: Option<Vec<String>>,
    pub not_in_values: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillableMetric {
    pub id: Id,
    pub name: String,
    pub aggregation: Aggregation,
    /// The property aggregated by SUM, MAX and UNIQUE; unused by COUNT.
    pub aggregation_key: Option<String>,
    pub event_type_filter: EventTypeFilter,
    pub property_filters: Vec<PropertyFilter>,
    pub group_keys: Vec<Vec<String>>,
    pub archived_at: Option<Timestamp>,
}

/// What one event adds to a metric's aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contribution {
    Count,
    Sum(Decimal),
    Max(Decimal),
    /// A stable 64-bit hash of the unique value (the aggregate keeps hashes, not strings).
    Unique(u64),
}

impl BillableMetric {
    /// Checks a new metric's definition.
    ///
    /// # Errors
    /// [`Rejection::MissingField`] / [`Rejection::InvalidField`] naming the offending field.
    pub fn validate(&self) -> Result<(), Rejection> {
        if self.name.trim().is_empty() {
            return Err(Rejection::MissingField("name"));
        }
        match (self.aggregation, &self.aggregation_key) {
            (Aggregation::Count, _) => {}
            (_, None) => return Err(Rejection::MissingField("aggregation_key")),
            (_, Some(key)) if key.is_empty() => {
                return Err(Rejection::MissingField("aggregation_key"));
            }
            _ => {}
        }
        for filter in &self.property_filters {
            if filter.name.is_empty() {
                return Err(Rejection::MissingField("property_filters[].name"));
            }
        }
        Ok(())
    }

    /// Whether the event passes the event type and property filters.
    pub fn matches(&self, event: &UsageEvent) -> bool {
        let types = &self.event_type_filter;
        if let Some(values) = &types.in_values {
            if !values.iter().any(|v| v == &event.event_type) {
                return false;
            }
        }
        if let Some(values) = &types.not_in_values {
            if values.iter().any(|v| v == &event.event_type) {
                return false;
            }
        }
        self.property_filters.iter().all(|filter| {
            let value = event.property(&filter.name);
            if let Some(exists) = filter.exists {
                if exists != value.is_some() {
                    return false;
                }
            }
            if let Some(values) = &filter.in_values {
                match value {
                    Some(v) if values.iter().any(|x| x == v) => {}
                    _ => return false,
                }
            }
            if let (Some(values), Some(v)) = (&filter.not_in_values, value) {
                if values.iter().any(|x| x == v) {
                    return false;
                }
            }
            true
        })
    }

    /// What a matching event adds, or `None` when the aggregated property is missing or not a
    /// number (such an event is accepted and contributes nothing, as in Metronome).
    pub fn contribution(&self, event: &UsageEvent) -> Option<Contribution> {
        if self.aggregation == Aggregation::Count {
            return Some(Contribution::Count);
        }
        let raw = event.property(self.aggregation_key.as_deref()?)?;
        match self.aggregation {
            Aggregation::Count => Some(Contribution::Count),
            // A value beyond the bounds is refused at ingest; one that reaches here anyway (a
            // metric created after the event was accepted) is ignored like a non-number.
            Aggregation::Sum => bounded_quantity(raw).map(Contribution::Sum),
            Aggregation::Max => bounded_quantity(raw).map(Contribution::Max),
            Aggregation::Unique => {
                let mut hasher = FxHasher::default();
                raw.hash(&mut hasher);
                Some(Contribution::Unique(hasher.finish()))
            }
        }
    }
}

/// A property value as a quantity, if it is a number within [`bounds::QUANTITY_MAX`].
pub fn bounded_quantity(raw: &str) -> Option<Decimal> {
    parse_exact_decimal(raw)
        .ok()
        .filter(|q| bounds::quantity_in_bounds(*q))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductKind {
    /// Billed from a billable metric's quantity.
    Usage { billable_metric_id: Id },
    /// A fixed item, used to invoice commits (threshold commits name one).
    Fixed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: Id,
    pub name: String,
    pub kind: ProductKind,
    pub tags: Vec<String>,
    pub created_at: Timestamp,
    pub archived_at: Option<Timestamp>,
}

/// One tier of a TIERED rate: `size` units at `price` each; the last tier has no size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub price: Money,
    pub size: Option<Decimal>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Price {
    Flat(Money),
    Tiered(Vec<Tier>),
}

impl Price {
    /// Checks a rate's price.
    ///
    /// # Errors
    /// [`Rejection::InvalidField`] for a negative price, an empty tier list, a non-positive tier
    /// size, or a sized last tier.
    pub fn validate(&self) -> Result<(), Rejection> {
        match self {
            Price::Flat(price) => bounds::check_price("price", *price),
            Price::Tiered(tiers) => {
                let Some((last, rest)) = tiers.split_last() else {
                    return Err(Rejection::invalid("tiers", "at least one tier is required"));
                };
                for tier in rest {
                    match tier.size {
                        Some(size) if size > Decimal::ZERO => {}
                        _ => {
                            return Err(Rejection::invalid(
                                "tiers[].size",
                                "every tier but the last needs a positive size",
                            ));
                        }
                    }
                }
                if last.size.is_some() && tiers.len() > 1 && last.size <= Some(Decimal::ZERO) {
                    return Err(Rejection::invalid("tiers[].size", "must be positive"));
                }
                for tier in tiers {
                    bounds::check_price("tiers[].price", tier.price)?;
                    if tier.size.is_some_and(|size| {
                        size > Decimal::from_i128_with_scale(bounds::TIER_SIZE_MAX, 0)
                    }) {
                        return Err(Rejection::invalid(
                            "tiers[].size",
                            &format!("must be at most {}", bounds::TIER_SIZE_MAX),
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// Every price per unit it charges (the flat price, or each tier's).
    pub fn unit_prices(&self) -> Vec<Money> {
        match self {
            Price::Flat(price) => vec![*price],
            Price::Tiered(tiers) => tiers.iter().map(|t| t.price).collect(),
        }
    }

    /// The charge for a total quantity within one billing period.
    ///
    /// # Errors
    /// [`Rejection::AmountOverflow`].
    pub fn charge_for(&self, quantity: Decimal) -> Result<Money, Rejection> {
        match self {
            Price::Flat(price) => price.checked_mul(quantity),
            Price::Tiered(tiers) => {
                let mut left = fast::max(quantity, Decimal::ZERO);
                let mut total = Money::ZERO;
                for (i, tier) in tiers.iter().enumerate() {
                    if left.is_zero() {
                        break;
                    }
                    let is_last = i + 1 == tiers.len();
                    let take = match tier.size {
                        Some(size) if !is_last => fast::min(left, size),
                        _ => left,
                    };
                    total = total.checked_add(tier.price.checked_mul(take)?)?;
                    // 0 <= take <= left: the difference cannot overflow.
                    left = fast::add_sub(left, take, true).expect("take <= left");
                }
                Ok(total)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub product_id: Id,
    pub price: Price,
    /// Whether the customer may use the product; usage of a non-entitled product is not billed.
    pub entitled: bool,
    pub starting_at: Timestamp,
    pub ending_before: Option<Timestamp>,
    pub credit_type_id: Id,
    /// The catalog version that added this rate (see the module doc).
    pub added_in_version: u64,
}

impl Rate {
    pub fn covers(&self, at: Timestamp) -> bool {
        self.starting_at <= at && self.ending_before.is_none_or(|end| at < end)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateCard {
    pub id: Id,
    pub name: String,
    pub description: Option<String>,
    pub fiat_credit_type: CreditType,
    pub aliases: Vec<String>,
    pub created_at: Timestamp,
    /// Rates per product, in the order they were added.
    pub rates: FxHashMap<Id, Vec<Rate>>,
    /// Custom pricing units its rates and threshold configurations may use, with their worth
    /// in `fiat_credit_type` (`credit_type_conversions`; added, never modified).
    pub conversions: Vec<Conversion>,
    /// The catalog version that added each of `conversions` (set on apply, not logged: the
    /// catalog is rebuilt from its log): an input accepted before a conversion was added is
    /// judged without it, also when replayed after it.
    #[serde(skip)]
    pub conversions_added_in: Vec<u64>,
}

/// A rate card as catalog changes before custom credit types recorded it (log versions 2 to 9).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateCardV1 {
    pub id: Id,
    pub name: String,
    pub description: Option<String>,
    pub fiat_credit_type: CreditType,
    pub aliases: Vec<String>,
    pub created_at: Timestamp,
    pub rates: FxHashMap<Id, Vec<Rate>>,
}

impl From<RateCardV1> for RateCard {
    fn from(old: RateCardV1) -> RateCard {
        RateCard {
            id: old.id,
            name: old.name,
            description: old.description,
            fiat_credit_type: old.fiat_credit_type,
            aliases: old.aliases,
            created_at: old.created_at,
            rates: old.rates,
            conversions: Vec::new(),
            conversions_added_in: Vec::new(),
        }
    }
}

impl RateCard {
    /// The rate of `product` in effect at `at`, as the catalog stood at `version`. When several
    /// rates overlap, the latest-starting one wins (then the latest added).
    pub fn rate_at(&self, product: Id, at: Timestamp, version: u64) -> Option<&Rate> {
        self.rates
            .get(&product)?
            .iter()
            .filter(|r| {
                (r.added_in_version <= version
                    || crate::defects::active(crate::defects::Defect::RatesRewriteHistory))
                    && r.covers(at)
            })
            .max_by_key(|r| (r.starting_at, r.added_in_version))
    }

    /// The conversion of custom pricing unit `credit_type_id`, if the card has one now.
    pub fn conversion(&self, credit_type_id: Id) -> Option<&Conversion> {
        self.conversions
            .iter()
            .find(|c| c.credit_type_id == credit_type_id)
    }

    /// The conversion of `credit_type_id` as the catalog stood at `version` (what an input
    /// accepted then is judged by, live and on replay).
    pub fn conversion_at(&self, credit_type_id: Id, version: u64) -> Option<&Conversion> {
        self.conversions
            .iter()
            .zip(&self.conversions_added_in)
            .find(|(c, added)| c.credit_type_id == credit_type_id && **added <= version)
            .map(|(c, _)| c)
    }

    /// Where the conversion of custom rate `rate` is among the card's conversions, and the
    /// conversion.
    ///
    /// # Errors
    /// [`Rejection::Unsupported`] for a rate without its conversion (never logged: an added rate
    /// is checked to have one, and conversions are never removed) or a card with more
    /// conversions than an index holds.
    pub fn conversion_index_of(&self, rate: &Rate) -> Result<(u16, Conversion), Rejection> {
        let found = self
            .conversions
            .iter()
            .position(|c| c.credit_type_id == rate.credit_type_id);
        match found.and_then(|i| u16::try_from(i).ok()) {
            Some(index) => Ok((index, self.conversions[usize::from(index)])),
            None => Err(Rejection::Unsupported(format!(
                "credit type {} has no conversion on rate card {}",
                rate.credit_type_id, self.id
            ))),
        }
    }
}

/// Most custom pricing units one catalog keeps, and conversions one rate card keeps.
pub const CREDIT_TYPES_MAX: usize = 1000;
/// Longest credit type name.
pub const CREDIT_TYPE_NAME_MAX: usize = 200;
/// Most decimal places of a conversion's `fiat_per_custom_credit`.
pub const CONVERSION_SCALE_MAX: u32 = 12;

/// A change to the catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CatalogChange {
    CreateBillableMetric(BillableMetric),
    ArchiveBillableMetric {
        id: Id,
        at: Timestamp,
    },
    CreateProduct(Product),
    ArchiveProduct {
        id: Id,
        at: Timestamp,
    },
    /// A rate card as log versions 2 to 9 recorded it (no conversions).
    CreateRateCardV1(RateCardV1),
    /// Adds rates to a rate card (their `added_in_version` is set on apply).
    AddRates {
        rate_card_id: Id,
        rates: Vec<Rate>,
    },
    /// The engine-wide limits from config, logged when they differ from the last logged ones:
    /// an input is judged by the limits in force when it was accepted, so replay does not depend
    /// on a config edited between runs.
    SetLimits(Limits),
    /// A new alert (`created_in` is set on apply).
    CreateAlert(super::alerts::Alert),
    /// Archives an alert: it judges no input accepted after this version.
    ArchiveAlert {
        id: Id,
        at: Timestamp,
        release_uniqueness_key: bool,
    },
    /// A custom pricing unit (log version 10; `CreditUnit::Custom`).
    CreateCreditType(CreditType),
    /// A rate card, with its conversions (log version 10).
    CreateRateCard(RateCard),
    /// Adds conversions to a rate card (log version 10; `add_credit_type_conversions`).
    AddConversions {
        rate_card_id: Id,
        conversions: Vec<Conversion>,
    },
}

/// Every catalog object plus the indexes rating needs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Catalog {
    version: u64,
    metrics: FxHashMap<Id, BillableMetric>,
    products: FxHashMap<Id, Product>,
    rate_cards: FxHashMap<Id, RateCard>,
    /// The catalog version at which each archived metric was archived. An event accepted at an
    /// earlier version is still rated by it (SPEC 2.1: archives, like rates, affect later events
    /// only), so replay after a crash reaches the live run's result.
    #[serde(default)]
    metric_archived_in: FxHashMap<Id, u64>,
    /// The limits in force from each version on (ascending versions).
    #[serde(default)]
    limits: Vec<(u64, Limits)>,
    #[serde(default)]
    alerts: FxHashMap<Id, super::alerts::Alert>,
    /// Custom pricing units, by id (USD cents is not among them: it always exists), with the
    /// catalog version that created each.
    #[serde(default)]
    credit_types: FxHashMap<Id, (CreditType, u64)>,
    #[serde(skip)]
    index: CatalogIndex,
}

#[derive(Clone, Debug, Default)]
struct CatalogIndex {
    /// Metrics whose event type filter lists the key in `in_values`.
    metrics_by_event_type: FxHashMap<String, Vec<Id>>,
    /// Metrics without an `in_values` list: candidates for every event.
    metrics_for_any_type: Vec<Id>,
    /// USAGE products billed from each metric.
    products_by_metric: FxHashMap<Id, Vec<Id>>,
    /// What rating an event of a type needs, in [`Catalog::candidate_metrics`] order: each
    /// candidate metric with its products, so an event costs one lookup by type.
    rating_by_event_type: FxHashMap<String, Vec<RatedMetric>>,
    /// The same for metrics without an `in_values` list.
    rating_for_any_type: Vec<RatedMetric>,
    /// Alerts for every customer, and for one customer, in id order (archived ones too: an
    /// input accepted before the archive is still judged by it).
    alerts_for_all: Vec<Id>,
    alerts_by_customer: FxHashMap<Id, Vec<Id>>,
}

/// A candidate metric and the USAGE products billed from it (copies kept by the index).
#[derive(Clone, Debug)]
struct RatedMetric {
    metric: BillableMetric,
    products: Vec<Id>,
    /// The catalog version that archived the metric, if any.
    archived_in: Option<u64>,
}

impl RatedMetric {
    /// Whether events accepted at `catalog_version` are rated by this metric.
    #[inline]
    fn rates_at(&self, catalog_version: u64) -> bool {
        self.archived_in
            .is_none_or(|archived| catalog_version < archived)
    }
}

impl Catalog {
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The limits in force for an input accepted at `catalog_version`: the last logged at or
    /// before it, or the defaults for inputs older than any logged limits.
    pub fn limits_at(&self, catalog_version: u64) -> &Limits {
        static DEFAULT: std::sync::LazyLock<Limits> = std::sync::LazyLock::new(Limits::default);
        let logged = self.limits.partition_point(|(v, _)| *v <= catalog_version);
        match logged.checked_sub(1) {
            Some(at) => &self.limits[at].1,
            None => &DEFAULT,
        }
    }

    /// The limits new inputs are judged by.
    pub fn current_limits(&self) -> &Limits {
        self.limits_at(self.version)
    }

    pub fn metric(&self, id: Id) -> Option<&BillableMetric> {
        self.metrics.get(&id)
    }

    pub fn product(&self, id: Id) -> Option<&Product> {
        self.products.get(&id)
    }

    pub fn rate_card(&self, id: Id) -> Option<&RateCard> {
        self.rate_cards.get(&id)
    }

    pub fn metrics(&self) -> impl Iterator<Item = &BillableMetric> {
        self.metrics.values()
    }

    pub fn products(&self) -> impl Iterator<Item = &Product> {
        self.products.values()
    }

    pub fn rate_cards(&self) -> impl Iterator<Item = &RateCard> {
        self.rate_cards.values()
    }

    /// A credit type by id: USD cents or a custom pricing unit.
    pub fn credit_type(&self, id: Id) -> Option<CreditType> {
        let usd = CreditType::usd_cents();
        if id == usd.id {
            return Some(usd);
        }
        self.credit_types.get(&id).map(|(t, _)| t.clone())
    }

    /// Whether `id` is a custom pricing unit as the catalog stood at `version`.
    pub fn is_custom_unit_at(&self, id: Id, version: u64) -> bool {
        self.credit_types
            .get(&id)
            .is_some_and(|(_, created)| *created <= version)
    }

    /// The custom pricing units, in id order.
    pub fn custom_credit_types(&self) -> Vec<&CreditType> {
        let mut types: Vec<&CreditType> = self.credit_types.values().map(|(t, _)| t).collect();
        types.sort_unstable_by_key(|t| t.id);
        types
    }

    /// Metrics not archived that may match an event of `event_type` (each still needs
    /// `matches`).
    pub fn candidate_metrics<'a>(
        &'a self,
        event_type: &str,
    ) -> impl Iterator<Item = &'a BillableMetric> + 'a {
        let typed = self
            .index
            .metrics_by_event_type
            .get(event_type)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        typed
            .iter()
            .chain(self.index.metrics_for_any_type.iter())
            .filter_map(|id| self.metrics.get(id))
            .filter(|metric| metric.archived_at.is_none())
    }

    /// The metrics that rate an event of `event_type` accepted at `catalog_version` (including
    /// those archived later), each with its [`Catalog::products_of_metric`], from one lookup.
    pub fn rating_candidates<'a>(
        &'a self,
        event_type: &str,
        catalog_version: u64,
    ) -> impl Iterator<Item = (&'a BillableMetric, &'a [Id])> + 'a {
        let typed = self
            .index
            .rating_by_event_type
            .get(event_type)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        typed
            .iter()
            .chain(&self.index.rating_for_any_type)
            .filter(move |rated| rated.rates_at(catalog_version))
            .map(|rated| (&rated.metric, rated.products.as_slice()))
    }

    pub fn alert(&self, id: Id) -> Option<&super::alerts::Alert> {
        self.alerts.get(&id)
    }

    pub fn alerts(&self) -> impl Iterator<Item = &super::alerts::Alert> {
        self.alerts.values()
    }

    /// The alerts that judge an input of `customer` accepted at `catalog_version`: the
    /// customer's own, then those for every customer, each in id order.
    pub fn alerts_for(
        &self,
        customer: Id,
        catalog_version: u64,
    ) -> impl Iterator<Item = &super::alerts::Alert> + '_ {
        let own = self
            .index
            .alerts_by_customer
            .get(&customer)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        own.iter()
            .chain(&self.index.alerts_for_all)
            .filter_map(|id| self.alerts.get(id))
            .filter(move |alert| alert.in_force_at(catalog_version))
    }

    /// Every alert of `customer` (its own and every customer's), archived ones too.
    pub fn alerts_of(&self, customer: Id) -> impl Iterator<Item = &super::alerts::Alert> + '_ {
        self.index
            .alerts_by_customer
            .get(&customer)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .chain(&self.index.alerts_for_all)
            .filter_map(|id| self.alerts.get(id))
    }

    /// Whether any alert exists for `customer` (in force or not): one lookup, for the hot
    /// path.
    pub fn has_alerts_for(&self, customer: Id) -> bool {
        !self.index.alerts_for_all.is_empty()
            || self.index.alerts_by_customer.contains_key(&customer)
    }

    pub fn products_of_metric(&self, metric: Id) -> &[Id] {
        self.index
            .products_by_metric
            .get(&metric)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Applies a change, validating everything first.
    ///
    /// # Errors
    /// A [`Rejection`] naming what is wrong; the catalog is unchanged then.
    pub fn apply(&mut self, change: CatalogChange) -> Result<(), Rejection> {
        match change {
            CatalogChange::CreateBillableMetric(metric) => {
                metric.validate()?;
                if self.metrics.contains_key(&metric.id) {
                    return Err(Rejection::AlreadyExists);
                }
                self.metrics.insert(metric.id, metric);
            }
            CatalogChange::ArchiveBillableMetric { id, at } => {
                let metric = self
                    .metrics
                    .get_mut(&id)
                    .ok_or_else(|| Rejection::BillableMetricNotFound(id.to_string()))?;
                metric.archived_at.get_or_insert(at);
                self.metric_archived_in
                    .entry(id)
                    .or_insert(self.version + 1);
            }
            CatalogChange::CreateProduct(product) => {
                if product.name.trim().is_empty() {
                    return Err(Rejection::MissingField("name"));
                }
                if self.products.contains_key(&product.id) {
                    return Err(Rejection::AlreadyExists);
                }
                if let ProductKind::Usage { billable_metric_id } = product.kind {
                    if !self.metrics.contains_key(&billable_metric_id) {
                        return Err(Rejection::BillableMetricNotFound(
                            billable_metric_id.to_string(),
                        ));
                    }
                }
                self.products.insert(product.id, product);
            }
            CatalogChange::ArchiveProduct { id, at } => {
                let product = self
                    .products
                    .get_mut(&id)
                    .ok_or_else(|| Rejection::ProductNotFound(id.to_string()))?;
                product.archived_at.get_or_insert(at);
            }
            CatalogChange::CreateRateCardV1(card) => {
                return self.apply(CatalogChange::CreateRateCard(card.into()));
            }
            CatalogChange::CreateRateCard(mut card) => {
                self.check_conversions(&[], &card.conversions)?;
                card.conversions_added_in = vec![self.version + 1; card.conversions.len()];
                if card.name.trim().is_empty() {
                    return Err(Rejection::MissingField("name"));
                }
                if self.rate_cards.contains_key(&card.id) {
                    return Err(Rejection::AlreadyExists);
                }
                if !card.rates.is_empty() {
                    return Err(Rejection::invalid("rates", "add rates with addRate(s)"));
                }
                self.rate_cards.insert(card.id, card);
            }
            CatalogChange::AddRates {
                rate_card_id,
                mut rates,
            } => {
                let card = self
                    .rate_cards
                    .get(&rate_card_id)
                    .ok_or_else(|| Rejection::RateCardNotFound(rate_card_id.to_string()))?;
                for rate in &rates {
                    if !self.products.contains_key(&rate.product_id) {
                        return Err(Rejection::ProductNotFound(rate.product_id.to_string()));
                    }
                    rate.price.validate()?;
                    if rate
                        .ending_before
                        .is_some_and(|end| end <= rate.starting_at)
                    {
                        return Err(Rejection::invalid(
                            "ending_before",
                            "must be after starting_at",
                        ));
                    }
                    if rate.credit_type_id != card.fiat_credit_type.id
                        && card.conversion(rate.credit_type_id).is_none()
                    {
                        return Err(Rejection::invalid(
                            "credit_type_id",
                            &format!(
                                "{} is neither the rate card's fiat credit type nor a custom \
                                 pricing unit with a conversion on it (credit_type_conversions)",
                                rate.credit_type_id
                            ),
                        ));
                    }
                    // Priced in a unit, a rate's worth in fiat is within the price bound too, so
                    // a period's charge converts inside the bounds (bounds.rs).
                    if let Some(conversion) = card.conversion(rate.credit_type_id) {
                        for price in rate.price.unit_prices() {
                            let fiat = conversion.to_fiat(price)?;
                            bounds::check_price("price (in fiat, converted)", fiat)?;
                        }
                    }
                    // One credit type per product on a card: a usage line has one unit.
                    let earlier = card.rates.get(&rate.product_id).and_then(|r| r.first());
                    let sibling = rates.iter().find(|r| r.product_id == rate.product_id);
                    let other = earlier
                        .or(sibling)
                        .filter(|r| r.credit_type_id != rate.credit_type_id);
                    if let Some(other) = other {
                        return Err(Rejection::invalid(
                            "credit_type_id",
                            &format!(
                                "product {} is priced in credit type {} on this rate card: \
                                 every rate of a product on a rate card uses one credit type",
                                rate.product_id, other.credit_type_id
                            ),
                        ));
                    }
                }
                // Validated: apply whole.
                let version = self.version + 1;
                let card = self
                    .rate_cards
                    .get_mut(&rate_card_id)
                    .expect("checked above");
                for rate in &mut rates {
                    rate.added_in_version = version;
                }
                for rate in rates {
                    card.rates.entry(rate.product_id).or_default().push(rate);
                }
            }
            CatalogChange::SetLimits(limits) => {
                self.limits.push((self.version + 1, limits));
            }
            CatalogChange::CreateCreditType(credit_type) => {
                let name = credit_type.name.trim();
                if name.is_empty() {
                    return Err(Rejection::MissingField("name"));
                }
                if credit_type.name.chars().count() > CREDIT_TYPE_NAME_MAX {
                    return Err(Rejection::invalid(
                        "name",
                        &format!("at most {CREDIT_TYPE_NAME_MAX} characters"),
                    ));
                }
                if credit_type.unit != CreditUnit::Custom || credit_type.currency.is_some() {
                    return Err(Rejection::invalid(
                        "credit_type",
                        "must be a custom pricing unit",
                    ));
                }
                let usd = CreditType::usd_cents();
                let taken = credit_type.id == usd.id
                    || name.eq_ignore_ascii_case(&usd.name)
                    || self.credit_types.contains_key(&credit_type.id)
                    || self
                        .credit_types
                        .values()
                        .any(|(t, _)| t.name.trim().eq_ignore_ascii_case(name));
                if taken {
                    return Err(Rejection::AlreadyExists);
                }
                if self.credit_types.len() >= CREDIT_TYPES_MAX {
                    return Err(Rejection::invalid(
                        "credit types",
                        &format!("at most {CREDIT_TYPES_MAX} custom pricing units"),
                    ));
                }
                self.credit_types
                    .insert(credit_type.id, (credit_type, self.version + 1));
            }
            CatalogChange::AddConversions {
                rate_card_id,
                conversions,
            } => {
                let card = self
                    .rate_cards
                    .get(&rate_card_id)
                    .ok_or_else(|| Rejection::RateCardNotFound(rate_card_id.to_string()))?;
                self.check_conversions(&card.conversions, &conversions)?;
                let card = self
                    .rate_cards
                    .get_mut(&rate_card_id)
                    .expect("checked above");
                let version = self.version + 1;
                card.conversions_added_in
                    .extend(std::iter::repeat_n(version, conversions.len()));
                card.conversions.extend(conversions);
            }
            CatalogChange::CreateAlert(mut alert) => {
                alert.validate(self)?;
                if self.alerts.contains_key(&alert.id) {
                    return Err(Rejection::AlreadyExists);
                }
                if let Some(key) = &alert.uniqueness_key {
                    let taken = self
                        .alerts
                        .values()
                        .any(|a| !a.key_released && a.uniqueness_key.as_ref() == Some(key));
                    if taken {
                        return Err(Rejection::UniquenessKeyReused);
                    }
                }
                alert.created_in = self.version + 1;
                alert.archived_in = None;
                alert.archived_at = None;
                self.alerts.insert(alert.id, alert);
            }
            CatalogChange::ArchiveAlert {
                id,
                at,
                release_uniqueness_key,
            } => {
                let next = self.version + 1;
                let alert = self.alerts.get_mut(&id).ok_or(Rejection::AlertNotFound)?;
                alert.archived_at.get_or_insert(at);
                alert.archived_in.get_or_insert(next);
                alert.key_released |= release_uniqueness_key;
            }
        }
        self.version += 1;
        self.rebuild_index();
        Ok(())
    }

    /// Checks conversions `added` to a rate card that has `existing` ones: known custom pricing
    /// units, a positive worth, none twice, none already on the card (conversions are never
    /// modified: amounts converted with one must convert the same way forever).
    fn check_conversions(
        &self,
        existing: &[Conversion],
        added: &[Conversion],
    ) -> Result<(), Rejection> {
        let field = "credit_type_conversions";
        for (i, conversion) in added.iter().enumerate() {
            let at = format!("{field}[{i}]");
            let id = conversion.credit_type_id;
            if !self.credit_types.contains_key(&id) {
                return Err(Rejection::invalid(
                    &format!("{at}.custom_credit_type_id"),
                    &format!(
                        "{id} is not a custom pricing unit (create it with /v1/tollgate/credit-types/create)"
                    ),
                ));
            }
            let factor = conversion.fiat_per_unit;
            if factor <= Decimal::ZERO {
                return Err(Rejection::invalid(
                    &format!("{at}.fiat_per_custom_credit"),
                    "must be positive",
                ));
            }
            // Bounded so that a converted price stays a price (see AddRates) and a conversion
            // keeps the digits of what it converts.
            bounds::check_price(
                &format!("{at}.fiat_per_custom_credit"),
                Money::from_decimal(factor),
            )?;
            if factor.normalize().scale() > CONVERSION_SCALE_MAX {
                return Err(Rejection::invalid(
                    &format!("{at}.fiat_per_custom_credit"),
                    &format!("at most {CONVERSION_SCALE_MAX} decimal places"),
                ));
            }
            let twice = added[..i].iter().any(|c| c.credit_type_id == id);
            let on_card = existing.iter().any(|c| c.credit_type_id == id);
            if twice || on_card {
                return Err(Rejection::invalid(
                    &format!("{at}.custom_credit_type_id"),
                    &format!(
                        "{id} already has a conversion on this rate card: conversions are added, never modified"
                    ),
                ));
            }
        }
        if existing.len() + added.len() > CREDIT_TYPES_MAX {
            return Err(Rejection::invalid(
                field,
                &format!("at most {CREDIT_TYPES_MAX} conversions per rate card"),
            ));
        }
        Ok(())
    }

    /// Rebuilds the lookup indexes (after a change or after decoding a snapshot).
    pub fn rebuild_index(&mut self) {
        let mut index = CatalogIndex::default();
        let mut metric_ids: Vec<&Id> = self.metrics.keys().collect();
        metric_ids.sort_unstable();
        for id in metric_ids {
            let metric = &self.metrics[id];
            match &metric.event_type_filter.in_values {
                Some(values) => {
                    for value in values {
                        let ids = index
                            .metrics_by_event_type
                            .entry(value.clone())
                            .or_default();
                        if !ids.contains(id) {
                            ids.push(*id);
                        }
                    }
                }
                None => index.metrics_for_any_type.push(*id),
            }
        }
        let mut products: Vec<&Product> = self.products.values().collect();
        products.sort_unstable_by_key(|p| p.id);
        for product in products {
            if let ProductKind::Usage { billable_metric_id } = product.kind {
                index
                    .products_by_metric
                    .entry(billable_metric_id)
                    .or_default()
                    .push(product.id);
            }
        }
        let rated = |id: &Id| RatedMetric {
            archived_in: self.metric_archived_in.get(id).copied(),
            metric: self.metrics[id].clone(),
            products: index
                .products_by_metric
                .get(id)
                .cloned()
                .unwrap_or_default(),
        };
        index.rating_by_event_type = index
            .metrics_by_event_type
            .iter()
            .map(|(event_type, ids)| (event_type.clone(), ids.iter().map(rated).collect()))
            .collect();
        index.rating_for_any_type = index.metrics_for_any_type.iter().map(rated).collect();
        let mut alerts: Vec<&super::alerts::Alert> = self.alerts.values().collect();
        alerts.sort_unstable_by_key(|a| a.id);
        for alert in alerts {
            match alert.customer_id {
                Some(customer) => index
                    .alerts_by_customer
                    .entry(customer)
                    .or_default()
                    .push(alert.id),
                None => index.alerts_for_all.push(alert.id),
            }
        }
        self.index = index;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        parse_exact_decimal(text).unwrap()
    }

    fn event(event_type: &str, props: &[(&str, &str)]) -> UsageEvent {
        UsageEvent {
            transaction_id: "t".into(),
            event_type: event_type.into(),
            timestamp: Timestamp(0),
            properties: props
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn metric(aggregation: Aggregation, key: Option<&str>) -> BillableMetric {
        BillableMetric {
            id: Id::from_u128(1),
            name: "m".into(),
            aggregation,
            aggregation_key: key.map(str::to_owned),
            event_type_filter: EventTypeFilter {
                in_values: Some(vec!["api_call".into()]),
                not_in_values: None,
            },
            property_filters: vec![],
            group_keys: vec![],
            archived_at: None,
        }
    }

    #[test]
    fn event_type_and_property_filters_all_must_hold() {
        let mut m = metric(Aggregation::Count, None);
        m.property_filters = vec![
            PropertyFilter {
                name: "region".into(),
                exists: Some(true),
                in_values: Some(vec!["eu".into(), "us".into()]),
                not_in_values: None,
            },
            PropertyFilter {
                name: "tier".into(),
                exists: None,
                in_values: None,
                not_in_values: Some(vec!["free".into()]),
            },
        ];
        assert!(m.matches(&event("api_call", &[("region", "eu")])));
        assert!(m.matches(&event("api_call", &[("region", "us"), ("tier", "pro")])));
        assert!(!m.matches(&event("api_call", &[("region", "ap")])));
        assert!(!m.matches(&event("api_call", &[])));
        assert!(!m.matches(&event("api_call", &[("region", "eu"), ("tier", "free")])));
        assert!(!m.matches(&event("login", &[("region", "eu")])));
        m.event_type_filter = EventTypeFilter {
            in_values: None,
            not_in_values: Some(vec!["login".into()]),
        };
        assert!(m.matches(&event("anything", &[("region", "eu")])));
        assert!(!m.matches(&event("login", &[("region", "eu")])));
    }

    #[test]
    fn contributions_follow_the_aggregation() {
        let e = event("api_call", &[("tokens", "12.5"), ("user", "alice")]);
        assert_eq!(
            metric(Aggregation::Count, None).contribution(&e),
            Some(Contribution::Count)
        );
        assert_eq!(
            metric(Aggregation::Sum, Some("tokens")).contribution(&e),
            Some(Contribution::Sum(d("12.5")))
        );
        assert_eq!(
            metric(Aggregation::Max, Some("tokens")).contribution(&e),
            Some(Contribution::Max(d("12.5")))
        );
        assert!(matches!(
            metric(Aggregation::Unique, Some("user")).contribution(&e),
            Some(Contribution::Unique(_))
        ));
        assert_eq!(
            metric(Aggregation::Sum, Some("missing")).contribution(&e),
            None
        );
        assert_eq!(
            metric(Aggregation::Sum, Some("user")).contribution(&e),
            None
        );
    }

    #[test]
    fn invalid_metrics_are_rejected() {
        assert_eq!(
            metric(Aggregation::Sum, None).validate(),
            Err(Rejection::MissingField("aggregation_key"))
        );
        let mut m = metric(Aggregation::Count, None);
        m.name = " ".into();
        assert_eq!(m.validate(), Err(Rejection::MissingField("name")));
    }

    #[test]
    fn an_empty_aggregation_key_is_missing() {
        assert_eq!(
            metric(Aggregation::Sum, Some("")).validate(),
            Err(Rejection::MissingField("aggregation_key"))
        );
        assert!(metric(Aggregation::Sum, Some("tokens")).validate().is_ok());
    }

    #[test]
    fn a_tier_may_hold_a_whole_period_of_the_largest_events_and_no_more() {
        let tiers = |size: i128| {
            Price::Tiered(vec![
                Tier {
                    price: Money::from_i64(1),
                    size: Some(Decimal::from_i128_with_scale(size, 0)),
                },
                Tier {
                    price: Money::ZERO,
                    size: None,
                },
            ])
        };
        assert_eq!(bounds::TIER_SIZE_MAX, 1_000_000_000_000_000_000);
        assert!(tiers(bounds::TIER_SIZE_MAX).validate().is_ok());
        assert!(tiers(bounds::TIER_SIZE_MAX + 1).validate().is_err());
    }

    fn tier(price: i64, size: Option<&str>) -> Tier {
        Tier {
            price: Money::from_i64(price),
            size: size.map(d),
        }
    }

    #[test]
    fn every_tier_but_the_last_needs_a_positive_size_and_a_sized_last_one_a_positive_one() {
        let zero_middle = Price::Tiered(vec![tier(1, Some("0")), tier(1, None)]);
        assert!(zero_middle.validate().is_err());
        let negative_middle = Price::Tiered(vec![tier(1, Some("-5")), tier(1, None)]);
        assert!(negative_middle.validate().is_err());
        assert!(
            Price::Tiered(vec![tier(1, Some("1")), tier(1, None)])
                .validate()
                .is_ok()
        );
        let zero_last = Price::Tiered(vec![tier(1, Some("10")), tier(1, Some("0"))]);
        assert!(zero_last.validate().is_err());
        let sized_last = Price::Tiered(vec![tier(1, Some("10")), tier(1, Some("5"))]);
        assert!(sized_last.validate().is_ok());
        // A single tier is the last one: its size is never used.
        assert!(Price::Tiered(vec![tier(1, Some("0"))]).validate().is_ok());
    }

    #[test]
    fn the_last_tier_takes_everything_left_whatever_its_size() {
        let sized_last = Price::Tiered(vec![tier(10, Some("100")), tier(5, Some("50"))]);
        assert_eq!(
            sized_last.charge_for(d("1000")).unwrap(),
            Money::from_i64(100 * 10 + 900 * 5)
        );
        // Quantities beyond 64-bit mantissas take the general subtraction.
        let tiers = Price::Tiered(vec![tier(10, Some("100")), tier(1, None)]);
        assert_eq!(
            tiers.charge_for(d("100000000000000000000")).unwrap(),
            Money::parse("100000000000000000900").unwrap()
        );
    }

    #[test]
    fn a_rate_covers_from_its_start_until_before_its_end() {
        let rate = Rate {
            product_id: Id::from_u128(2),
            price: Price::Flat(Money::from_i64(1)),
            entitled: true,
            starting_at: Timestamp(100),
            ending_before: Some(Timestamp(200)),
            credit_type_id: Id::from_u128(3),
            added_in_version: 1,
        };
        assert!(!rate.covers(Timestamp(99)));
        assert!(rate.covers(Timestamp(100)));
        assert!(rate.covers(Timestamp(199)));
        assert!(!rate.covers(Timestamp(200)));
        let open = Rate {
            ending_before: None,
            ..rate
        };
        assert!(open.covers(Timestamp(i64::MAX)));
        assert!(!open.covers(Timestamp(99)));
    }

    #[test]
    fn tiered_prices_charge_each_tier_at_its_price() {
        let tiered = Price::Tiered(vec![
            Tier {
                price: Money::from_i64(10),
                size: Some(d("100")),
            },
            Tier {
                price: Money::from_i64(5),
                size: Some(d("900")),
            },
            Tier {
                price: Money::from_i64(1),
                size: None,
            },
        ]);
        tiered.validate().unwrap();
        assert_eq!(tiered.charge_for(d("50")).unwrap(), Money::from_i64(500));
        assert_eq!(tiered.charge_for(d("100")).unwrap(), Money::from_i64(1000));
        assert_eq!(tiered.charge_for(d("150")).unwrap(), Money::from_i64(1250));
        assert_eq!(
            tiered.charge_for(d("2000")).unwrap(),
            Money::from_i64(1000 + 4500 + 1000)
        );
        assert_eq!(
            Price::Flat(Money::parse("0.0087").unwrap())
                .charge_for(d("1000"))
                .unwrap(),
            Money::parse("8.7").unwrap()
        );
    }

    #[test]
    fn bad_prices_are_rejected() {
        assert!(Price::Flat(Money::from_i64(-1)).validate().is_err());
        assert!(Price::Tiered(vec![]).validate().is_err());
        let unsized_middle = Price::Tiered(vec![
            Tier {
                price: Money::from_i64(1),
                size: None,
            },
            Tier {
                price: Money::from_i64(1),
                size: None,
            },
        ]);
        assert!(unsized_middle.validate().is_err());
    }

    #[test]
    fn rates_added_later_are_invisible_to_earlier_versions() {
        let mut catalog = Catalog::default();
        let m = metric(Aggregation::Count, None);
        catalog
            .apply(CatalogChange::CreateBillableMetric(m.clone()))
            .unwrap();
        let product = Product {
            id: Id::from_u128(2),
            name: "calls".into(),
            kind: ProductKind::Usage {
                billable_metric_id: m.id,
            },
            tags: vec![],
            created_at: Timestamp(0),
            archived_at: None,
        };
        catalog
            .apply(CatalogChange::CreateProduct(product.clone()))
            .unwrap();
        let card = RateCard {
            id: Id::from_u128(3),
            name: "list".into(),
            description: None,
            fiat_credit_type: CreditType::usd_cents(),
            aliases: vec![],
            created_at: Timestamp(0),
            rates: FxHashMap::default(),
            conversions_added_in: Vec::new(),
            conversions: Vec::new(),
        };
        catalog
            .apply(CatalogChange::CreateRateCard(card.clone()))
            .unwrap();
        let rate = |price: i64, start: i64| Rate {
            product_id: product.id,
            price: Price::Flat(Money::from_i64(price)),
            entitled: true,
            starting_at: Timestamp(start),
            ending_before: None,
            credit_type_id: card.fiat_credit_type.id,
            added_in_version: 0,
        };
        catalog
            .apply(CatalogChange::AddRates {
                rate_card_id: card.id,
                rates: vec![rate(2, 0)],
            })
            .unwrap();
        let v1 = catalog.version();
        catalog
            .apply(CatalogChange::AddRates {
                rate_card_id: card.id,
                rates: vec![rate(3, 10)],
            })
            .unwrap();
        let card = catalog.rate_card(card.id).unwrap();
        let price_of = |r: Option<&Rate>| r.map(|r| r.price.clone());
        assert_eq!(
            price_of(card.rate_at(product.id, Timestamp(20), v1)),
            Some(Price::Flat(Money::from_i64(2)))
        );
        assert_eq!(
            price_of(card.rate_at(product.id, Timestamp(20), catalog.version())),
            Some(Price::Flat(Money::from_i64(3)))
        );
        assert_eq!(catalog.metric(m.id).map(|m| m.id), Some(m.id));
        assert!(catalog.metric(product.id).is_none());
        assert_eq!(catalog.metrics().map(|m| m.id).collect::<Vec<_>>(), [m.id]);
        assert_eq!(
            catalog.products().map(|p| p.id).collect::<Vec<_>>(),
            [product.id]
        );
        assert_eq!(
            catalog.rate_cards().map(|c| c.id).collect::<Vec<_>>(),
            [card.id]
        );
        assert_eq!(catalog.candidate_metrics("api_call").count(), 1);
        assert_eq!(catalog.candidate_metrics("other").count(), 0);
        assert_eq!(catalog.products_of_metric(m.id), &[product.id]);
        for event_type in ["api_call", "other"] {
            let plan: Vec<(Id, Vec<Id>)> = catalog
                .rating_candidates(event_type, catalog.version())
                .map(|(metric, products)| (metric.id, products.to_vec()))
                .collect();
            let expected: Vec<(Id, Vec<Id>)> = catalog
                .candidate_metrics(event_type)
                .map(|metric| (metric.id, catalog.products_of_metric(metric.id).to_vec()))
                .collect();
            assert_eq!(plan, expected);
        }
    }

    #[test]
    fn an_archived_metric_still_rates_events_accepted_before_the_archive() {
        let mut catalog = crate::domain::fixtures::catalog();
        let before = catalog.version();
        catalog
            .apply(CatalogChange::ArchiveBillableMetric {
                id: crate::domain::fixtures::API_METRIC,
                at: Timestamp(1),
            })
            .unwrap();
        let rated_at = |catalog: &Catalog, version| {
            catalog
                .rating_candidates("api_call", version)
                .map(|(metric, _)| metric.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rated_at(&catalog, before),
            vec![crate::domain::fixtures::API_METRIC]
        );
        assert_eq!(rated_at(&catalog, catalog.version()), Vec::<Id>::new());
        assert_eq!(catalog.candidate_metrics("api_call").count(), 0);
        // Archiving again keeps the first archive's version.
        let version = catalog.version();
        catalog
            .apply(CatalogChange::ArchiveBillableMetric {
                id: crate::domain::fixtures::API_METRIC,
                at: Timestamp(2),
            })
            .unwrap();
        assert!(rated_at(&catalog, version - 1).contains(&crate::domain::fixtures::API_METRIC));
    }

    #[test]
    fn a_rate_for_an_unknown_product_changes_nothing() {
        let mut catalog = Catalog::default();
        let card = RateCard {
            id: Id::from_u128(3),
            name: "list".into(),
            description: None,
            fiat_credit_type: CreditType::usd_cents(),
            aliases: vec![],
            created_at: Timestamp(0),
            rates: FxHashMap::default(),
            conversions_added_in: Vec::new(),
            conversions: Vec::new(),
        };
        catalog
            .apply(CatalogChange::CreateRateCard(card.clone()))
            .unwrap();
        let version = catalog.version();
        let err = catalog.apply(CatalogChange::AddRates {
            rate_card_id: card.id,
            rates: vec![Rate {
                product_id: Id::from_u128(99),
                price: Price::Flat(Money::from_i64(1)),
                entitled: true,
                starting_at: Timestamp(0),
                ending_before: None,
                credit_type_id: card.fiat_credit_type.id,
                added_in_version: 0,
            }],
        });
        assert!(matches!(err, Err(Rejection::ProductNotFound(_))));
        assert_eq!(catalog.version(), version);
    }

    /// Limits apply from the catalog version that set them: inputs accepted before keep the
    /// limits of their time (replay judges them alike), and versions before any get the
    /// defaults.
    #[test]
    fn limits_apply_from_the_version_that_set_them() {
        let mut catalog = Catalog::default();
        assert_eq!(catalog.current_limits(), &Limits::default());
        let strict = Limits {
            prepaid_threshold_min_usd_cents: Money::from_i64(900),
            ..Limits::default()
        };
        let stricter = Limits {
            prepaid_threshold_min_usd_cents: Money::from_i64(1_900),
            ..Limits::default()
        };
        catalog
            .apply(CatalogChange::CreateBillableMetric(metric(
                Aggregation::Count,
                None,
            )))
            .unwrap();
        catalog
            .apply(CatalogChange::SetLimits(strict.clone()))
            .unwrap();
        let set_at = catalog.version();
        assert_eq!(set_at, 2);
        assert_eq!(catalog.limits_at(0), &Limits::default());
        assert_eq!(catalog.limits_at(set_at - 1), &Limits::default());
        assert_eq!(catalog.limits_at(set_at), &strict);
        assert_eq!(catalog.current_limits(), &strict);
        catalog
            .apply(CatalogChange::SetLimits(stricter.clone()))
            .unwrap();
        assert_eq!(catalog.limits_at(set_at), &strict);
        assert_eq!(catalog.limits_at(set_at + 1), &stricter);
        assert_eq!(catalog.limits_at(u64::MAX), &stricter);
        assert_eq!(catalog.current_limits(), &stricter);
    }

    #[test]
    fn a_rate_must_end_after_it_starts() {
        let mut catalog = crate::domain::fixtures::catalog();
        let card = crate::domain::fixtures::RATE_CARD;
        let rate = |start: i64, end: i64| Rate {
            product_id: crate::domain::fixtures::API_PRODUCT,
            price: Price::Flat(Money::from_i64(7)),
            entitled: true,
            starting_at: Timestamp(start),
            ending_before: Some(Timestamp(end)),
            credit_type_id: CreditType::usd_cents().id,
            added_in_version: 0,
        };
        let version = catalog.version();
        for end in [1_000, 999] {
            let refused = catalog.apply(CatalogChange::AddRates {
                rate_card_id: card,
                rates: vec![rate(1_000, end)],
            });
            assert!(
                matches!(refused, Err(Rejection::InvalidField(_))),
                "{refused:?}"
            );
            assert_eq!(catalog.version(), version);
        }
        catalog
            .apply(CatalogChange::AddRates {
                rate_card_id: card,
                rates: vec![rate(1_000, 1_001)],
            })
            .unwrap();
        assert_eq!(catalog.version(), version + 1);
    }
}

//! Rate cards and their rates: `POST /v1/contract-pricing/rate-cards/{create,get,list}` and
//! `addRate`, `addRates` (all-or-nothing: one catalog change) and `getRates` (the rates in
//! effect at an instant, one per product, filtered by selectors).
//!
//! Rates are FLAT or TIERED, priced in the rate card's fiat credit type (USD cents) or in a
//! custom pricing unit the card has a conversion for (`credit_type_conversions` on create,
//! `add_credit_type_conversions` on `update`; conversions are added, never modified). Prices
//! are read from the JSON number's exact text and written back the same way, never through
//! `f64`.

use super::super::openapi::{Data, Page, Routes};
use super::super::wire::IdView;
use std::collections::BTreeMap;
use std::str::FromStr;

use actix_web::{HttpRequest, HttpResponse, web};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize, Serializer};
use utoipa::ToSchema;

use super::super::AppState;
use super::super::contracts::edge_id;
use super::super::error::{ApiError, ApiResult};
use super::super::request::{self, Amount, Choice, Choices, Exact, Refused, Text, Time, Uuid, Why};
use super::super::wire;
use super::{CREATED_BY, CreditTypeView, ListQuery, new_id, page_by_id};
use crate::domain::catalog::{CatalogChange, Price, Product, Rate, RateCard, Tier};
use crate::domain::money::{Conversion, CreditType, USD_CENTS_ID};
use crate::domain::{Catalog, Id, Money, Rejection, Timestamp};

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .post(
            "/v1/contract-pricing/rate-cards/create",
            "createRateCard",
            "Create a rate card",
            create,
        )
        .body::<CreateRateCardBody>()
        .answers::<Data<IdView>>();
    routes
        .post(
            "/v1/contract-pricing/rate-cards/get",
            "getRateCard",
            "Get a rate card",
            get,
        )
        .body::<GetRateCardBody>()
        .answers::<Data<RateCardView>>();
    routes
        .post(
            "/v1/contract-pricing/rate-cards/list",
            "listRateCards",
            "List rate cards",
            list,
        )
        .query::<ListQuery>()
        .body::<ListRateCardsBody>()
        .answers::<Page<RateCardView>>();
    routes
        .post(
            "/v1/contract-pricing/rate-cards/addRate",
            "addRate",
            "Add a rate to a rate card",
            add_rate,
        )
        .body::<RateBody>()
        .answers::<Data<RateView>>();
    routes
        .post(
            "/v1/contract-pricing/rate-cards/addRates",
            "addRates",
            "Add rates to a rate card (all or nothing)",
            add_rates,
        )
        .body::<AddRatesBody>()
        .answers::<Data<IdView>>();
    routes
        .post(
            "/v1/contract-pricing/rate-cards/update",
            "updateRateCard",
            "Add credit type conversions to a rate card",
            update,
        )
        .body::<UpdateRateCardBody>()
        .answers::<Data<IdView>>();
    routes
        .post(
            "/v1/contract-pricing/rate-cards/getRates",
            "getRates",
            "The rates of a rate card in effect at a time",
            get_rates,
        )
        .query::<ListQuery>()
        .body::<GetRatesBody>()
        .answers::<Page<ScheduledRateView>>();
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RateType {
    Flat,
    Tiered,
}

impl Choices for RateType {
    const NAME: &'static str = "RateType";
    const VALUES: &'static [(&'static str, Self)] =
        &[("FLAT", RateType::Flat), ("TIERED", RateType::Tiered)];
    const UNSUPPORTED: &'static [&'static str] =
        &["PERCENTAGE", "SUBSCRIPTION", "TIERED_PERCENTAGE", "CUSTOM"];
}

type RateTypeChoice = Choice<RateType>;

struct TimeBoundedAliases;

impl Why for TimeBoundedAliases {
    const WHY: &'static str = "(time-bounded aliases) is not supported";
}

type RefusedAliasWindow = Refused<TimeBoundedAliases>;

/// An alias of a rate card (a name; time windows are refused).
#[derive(Debug, Deserialize, ToSchema)]
#[expect(dead_code, reason = "Refused fields act while the body is read")]
pub struct AliasBody {
    name: Text,
    #[serde(default)]
    starting_at: RefusedAliasWindow,
    #[serde(default)]
    ending_before: RefusedAliasWindow,
}

/// `POST /v1/contract-pricing/rate-cards/create`. `custom_fields` are accepted and not kept.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateRateCardBody {
    name: Text,
    #[serde(default)]
    description: Option<String>,
    /// Only USD cents (2714e483-4ff1-48e4-9e25-ac732e8f24f2).
    #[serde(default)]
    fiat_credit_type_id: Option<Uuid>,
    /// Names a contract may use instead of the id (`rate_card_alias`).
    #[serde(default)]
    aliases: Option<Vec<AliasBody>>,
    /// Custom pricing units the card's rates and threshold configurations may use, with their
    /// worth in the fiat credit type.
    #[serde(default)]
    credit_type_conversions: Option<Vec<ConversionBody>>,
}

/// A custom pricing unit's worth in the rate card's fiat credit type.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ConversionBody {
    custom_credit_type_id: Uuid,
    /// Positive; a numeric string is accepted too.
    fiat_per_custom_credit: Exact,
}

/// `POST /v1/contract-pricing/rate-cards/update`: adds conversions (existing ones cannot be
/// modified). Renaming and aliases are not supported: the fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[expect(dead_code, reason = "Refused fields act while the body is read")]
pub struct UpdateRateCardBody {
    rate_card_id: Uuid,
    #[serde(default)]
    add_credit_type_conversions: Option<Vec<ConversionBody>>,
    #[serde(default)]
    name: Refused,
    #[serde(default)]
    description: Refused,
    #[serde(default)]
    aliases: Refused,
}

impl ConversionBody {
    fn conversions(list: Option<Vec<ConversionBody>>) -> Vec<Conversion> {
        list.unwrap_or_default()
            .into_iter()
            .map(|c| Conversion {
                credit_type_id: c.custom_credit_type_id.0,
                fiat_per_unit: c.fiat_per_custom_credit.0,
            })
            .collect()
    }
}

/// A body naming a rate card by `id` (`rate-cards/get`).
#[derive(Debug, Deserialize, ToSchema)]
pub struct GetRateCardBody {
    id: Uuid,
}

/// `rate-cards/list`: the body (the SDK's `params.body`, usually empty) filters nothing; paging
/// is in the query string.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ListRateCardsBody {}

/// A tier of a TIERED rate; the last one has no `size`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TierBody {
    price: Amount,
    /// Units in this tier.
    #[serde(default)]
    size: Option<Exact>,
}

/// A rate: the body of `addRate` (with `rate_card_id`) or an item of `addRates`.
#[derive(Debug, Deserialize, ToSchema)]
#[expect(dead_code, reason = "Refused fields act while the body is read")]
pub struct RateBody {
    /// addRate only: the rate card.
    #[serde(default)]
    rate_card_id: Option<Uuid>,
    product_id: Uuid,
    entitled: bool,
    rate_type: RateTypeChoice,
    starting_at: Time,
    #[serde(default)]
    ending_before: Option<Time>,
    /// FLAT rates: the price per unit.
    #[serde(default)]
    price: Option<Amount>,
    /// TIERED rates.
    #[serde(default)]
    tiers: Option<Vec<TierBody>>,
    /// Only the rate card's fiat credit type.
    #[serde(default)]
    credit_type_id: Option<Uuid>,
    #[serde(default)]
    pricing_group_values: Refused,
    #[serde(default)]
    commit_rate: Refused,
    #[serde(default)]
    is_prorated: Refused,
    #[serde(default)]
    quantity: Refused,
    #[serde(default)]
    billing_frequency: Refused,
    #[serde(default)]
    custom_rate: Refused,
}

/// `POST /v1/contract-pricing/rate-cards/addRates`: all or nothing.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AddRatesBody {
    rate_card_id: Uuid,
    rates: Vec<RateBody>,
}

/// A `getRates` selector: a rate is listed when its product matches every condition given.
#[derive(Debug, Deserialize, ToSchema)]
#[expect(dead_code, reason = "Refused fields act while the body is read")]
pub struct SelectorBody {
    #[serde(default)]
    product_id: Option<Uuid>,
    /// Any of these tags.
    #[serde(default)]
    product_tags: Option<Vec<String>>,
    #[serde(default)]
    pricing_group_values: Refused,
    #[serde(default)]
    partial_pricing_group_values: Refused,
    #[serde(default)]
    billing_frequency: Refused,
}

/// `POST /v1/contract-pricing/rate-cards/getRates` (paging in the query string).
#[derive(Debug, Deserialize, ToSchema)]
pub struct GetRatesBody {
    rate_card_id: Uuid,
    /// The rates in effect at this time.
    at: Time,
    /// A rate is listed when any selector matches (all when none).
    #[serde(default)]
    selectors: Option<Vec<SelectorBody>>,
}

/// `{"name"}`: an alias of the SDK's `RateCardRetrieveResponse.Data.Alias` (names only; time
/// windows are refused on create).
#[derive(Serialize, ToSchema)]
struct AliasView {
    name: String,
}

/// The SDK's `RateCardRetrieveResponse.Data` (and `RateCardListResponse`).
#[derive(Serialize, ToSchema)]
struct RateCardView {
    #[schema(value_type = super::super::request::Uuid)]
    id: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    fiat_credit_type: CreditTypeView,
    credit_type_conversions: Vec<ConversionView>,
    aliases: Vec<AliasView>,
    custom_fields: BTreeMap<String, String>,
    #[schema(value_type = super::super::request::Time)]
    created_at: String,
    created_by: &'static str,
}

/// The SDK's `CreditTypeConversion` of a rate card (the worth is a string there).
#[derive(Serialize, ToSchema)]
struct ConversionView {
    custom_credit_type: CreditTypeView,
    fiat_per_custom_credit: String,
}

impl RateCardView {
    fn of(card: &RateCard, catalog: &Catalog) -> RateCardView {
        RateCardView {
            id: card.id.to_string(),
            name: card.name.clone(),
            description: card.description.clone(),
            fiat_credit_type: CreditTypeView::of(&card.fiat_credit_type),
            credit_type_conversions: card
                .conversions
                .iter()
                .map(|c| ConversionView {
                    custom_credit_type: credit_type_view(catalog, c.credit_type_id),
                    fiat_per_custom_credit: c.fiat_per_unit.normalize().to_string(),
                })
                .collect(),
            aliases: card
                .aliases
                .iter()
                .map(|name| AliasView { name: name.clone() })
                .collect(),
            custom_fields: BTreeMap::new(),
            created_at: wire::time(card.created_at),
            created_by: CREATED_BY,
        }
    }
}

/// The SDK's `Tier`.
#[derive(Serialize, ToSchema)]
struct TierView {
    #[schema(value_type = super::super::request::Amount)]
    price: Money,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "exact_number"
    )]
    #[schema(value_type = Option<super::super::request::Exact>)]
    size: Option<Decimal>,
}

/// Writes a decimal as an exact JSON number (serde_json keeps the text with
/// `arbitrary_precision`).
fn exact_number<S: Serializer>(value: &Option<Decimal>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        None => serializer.serialize_none(),
        Some(d) => serde_json::Number::from_str(&d.normalize().to_string())
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer),
    }
}

/// The SDK's `Shared.Rate` (also `RateAddResponse.Data`).
#[derive(Serialize, ToSchema)]
struct RateView {
    /// FLAT or TIERED.
    rate_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::super::request::Amount>)]
    price: Option<Money>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tiers: Option<Vec<TierView>>,
    credit_type: CreditTypeView,
}

/// A credit type by id as Metronome shows it (a custom pricing unit the catalog has forgotten
/// cannot happen: they are never removed; its id is shown then).
fn credit_type_view(catalog: &Catalog, id: Id) -> CreditTypeView {
    match catalog.credit_type(id) {
        Some(credit_type) => CreditTypeView::of(&credit_type),
        None => CreditTypeView {
            id: id.to_string(),
            name: id.to_string(),
        },
    }
}

impl RateView {
    fn of(rate: &Rate, card: &RateCard, catalog: &Catalog) -> RateView {
        let (rate_type, price, tiers) = match &rate.price {
            Price::Flat(price) => ("FLAT", Some(*price), None),
            Price::Tiered(tiers) => (
                "TIERED",
                None,
                Some(
                    tiers
                        .iter()
                        .map(|t| TierView {
                            price: t.price,
                            size: t.size,
                        })
                        .collect(),
                ),
            ),
        };
        let credit_type = if rate.credit_type_id == card.fiat_credit_type.id {
            CreditTypeView::of(&card.fiat_credit_type)
        } else {
            credit_type_view(catalog, rate.credit_type_id)
        };
        RateView {
            rate_type,
            price,
            tiers,
            credit_type,
        }
    }
}

/// The SDK's `RateListResponse` (a `getRates` item).
#[derive(Serialize, ToSchema)]
struct ScheduledRateView {
    entitled: bool,
    product_custom_fields: BTreeMap<String, String>,
    #[schema(value_type = super::super::request::Uuid)]
    product_id: String,
    product_name: String,
    product_tags: Vec<String>,
    rate: RateView,
    #[schema(value_type = super::super::request::Time)]
    starting_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::super::request::Time>)]
    ending_before: Option<String>,
}

/// Reads a rate-card create request.
///
/// # Errors
/// 400 naming the field.
fn parse_rate_card(body: CreateRateCardBody, created_at: Timestamp) -> ApiResult<RateCard> {
    if let Some(id) = body.fiat_credit_type_id.map(|id| id.0) {
        if id.to_string() != USD_CENTS_ID {
            return Err(Rejection::Unsupported(format!(
                "fiat_credit_type_id {id}: only USD (cents) ({USD_CENTS_ID}) is supported"
            ))
            .into());
        }
    }
    Ok(RateCard {
        id: new_id(),
        name: body.name.0,
        description: body.description,
        fiat_credit_type: CreditType::usd_cents(),
        aliases: body
            .aliases
            .unwrap_or_default()
            .into_iter()
            .map(|alias| alias.name.0)
            .collect(),
        created_at,
        rates: Default::default(),
        conversions: ConversionBody::conversions(body.credit_type_conversions),
        // Set by the catalog when it applies the change.
        conversions_added_in: Vec::new(),
    })
}

/// Reads one rate (the body of `addRate`, or an item of `addRates` at path `at`, like
/// `rates[2].`). Checks references against `catalog` so that the 400 can name the field; the
/// engine checks everything again when it applies the change.
///
/// # Errors
/// 400 naming the field (with its path inside `rates[]`).
fn parse_rate(body: RateBody, at: &str, card: &RateCard, catalog: &Catalog) -> ApiResult<Rate> {
    let invalid = |field: &str, why: &str| ApiError::BadRequest(format!("{at}{field}: {why}"));
    let product_id = body.product_id.0;
    if catalog.product(product_id).is_none() {
        return Err(invalid(
            "product_id",
            &format!("product {product_id} not found"),
        ));
    }
    let starting_at = body.starting_at.0;
    let ending_before = body.ending_before.map(|t| t.0);
    if ending_before.is_some_and(|end| end <= starting_at) {
        return Err(invalid("ending_before", "must be after starting_at"));
    }
    let credit_type_id = body
        .credit_type_id
        .map_or(card.fiat_credit_type.id, |id| id.0);
    if credit_type_id != card.fiat_credit_type.id && card.conversion(credit_type_id).is_none() {
        return Err(invalid(
            "credit_type_id",
            &format!(
                "{credit_type_id} is neither the rate card's fiat credit type ({}) nor a custom pricing unit it has a conversion for (credit_type_conversions)",
                card.fiat_credit_type.id
            ),
        ));
    }
    let price = match (body.rate_type.0, body.price, body.tiers) {
        (RateType::Flat, _, Some(tiers)) if !tiers.is_empty() => {
            return Err(invalid("tiers", "only TIERED rates have tiers"));
        }
        (RateType::Flat, Some(price), _) => Price::Flat(price.0),
        (RateType::Flat, None, _) => {
            return Err(ApiError::BadRequest(format!(
                "{at}price is required for FLAT rates"
            )));
        }
        (RateType::Tiered, Some(_), _) => {
            return Err(invalid("price", "TIERED rates are priced by their tiers"));
        }
        (RateType::Tiered, None, None) => {
            return Err(ApiError::BadRequest(format!(
                "{at}tiers is required for TIERED rates"
            )));
        }
        (RateType::Tiered, None, Some(tiers)) => Price::Tiered(
            tiers
                .into_iter()
                .map(|tier| Tier {
                    price: tier.price.0,
                    size: tier.size.map(|s| s.0),
                })
                .collect(),
        ),
    };
    price.validate().map_err(|rejection| match rejection {
        Rejection::InvalidField(text) => ApiError::BadRequest(format!("{at}{text}")),
        other => other.into(),
    })?;
    Ok(Rate {
        product_id,
        price,
        entitled: body.entitled,
        starting_at,
        ending_before,
        credit_type_id,
        added_in_version: 0,
    })
}

/// The rate card a request addresses.
///
/// # Errors
/// 404 when it does not exist.
fn addressed_card(catalog: &Catalog, id: Id) -> ApiResult<&RateCard> {
    catalog
        .rate_card(id)
        .ok_or_else(|| ApiError::NotFound(format!("rate card {id} not found")))
}

async fn create(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let now = Timestamp(state.engine.now_ms());
    let mut card = parse_rate_card(request::read(&body)?, now)?;
    // A retry whose first answer was lost names the same object (409), never a second one.
    card.id = edge_id(&request, &body, "rate-card");
    let id = card.id;
    state
        .engine
        .change_catalog(CatalogChange::CreateRateCard(card))
        .await?;
    Ok(wire::id_response(id))
}

async fn get(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let id = request::read::<GetRateCardBody>(&body)?.id.0;
    let catalog = state.engine.catalog();
    let card = addressed_card(&catalog, id)?;
    Ok(wire::data(RateCardView::of(card, &catalog)))
}

/// The body (`params.body` in the SDK, typed `unknown`, usually empty) filters nothing.
async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let ListRateCardsBody {} = request::read(&body)?;
    let paging = ListQuery::parse(&req)?.paging()?;
    let catalog = state.engine.catalog();
    let cards = catalog.rate_cards().map(|c| (c.id, c)).collect();
    Ok(page_by_id(cards, &paging, |c| {
        RateCardView::of(c, &catalog)
    }))
}

async fn add_rate(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let body: RateBody = request::read(&body)?;
    let rate_card_id = body
        .rate_card_id
        .ok_or_else(|| ApiError::BadRequest("rate_card_id is required".into()))?
        .0;
    let catalog = state.engine.catalog();
    let card = addressed_card(&catalog, rate_card_id)?;
    let rate = parse_rate(body, "", card, &catalog)?;
    let view = RateView::of(&rate, card, &catalog);
    state
        .engine
        .change_catalog(CatalogChange::AddRates {
            rate_card_id,
            rates: vec![rate],
        })
        .await?;
    Ok(wire::data(view))
}

async fn add_rates(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let body: AddRatesBody = request::read(&body)?;
    let rate_card_id = body.rate_card_id.0;
    let catalog = state.engine.catalog();
    let card = addressed_card(&catalog, rate_card_id)?;
    if body.rates.is_empty() {
        return Err(ApiError::BadRequest(
            "rates: must hold at least one rate".into(),
        ));
    }
    // Every rate is read before anything is sent: one bad rate adds none.
    let rates = body
        .rates
        .into_iter()
        .enumerate()
        .map(|(i, item)| parse_rate(item, &format!("rates[{i}]."), card, &catalog))
        .collect::<ApiResult<Vec<Rate>>>()?;
    state
        .engine
        .change_catalog(CatalogChange::AddRates {
            rate_card_id,
            rates,
        })
        .await?;
    Ok(wire::id_response(rate_card_id))
}

async fn update(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let body: UpdateRateCardBody = request::read(&body)?;
    let rate_card_id = body.rate_card_id.0;
    addressed_card(&state.engine.catalog(), rate_card_id)?;
    let conversions = ConversionBody::conversions(body.add_credit_type_conversions);
    if conversions.is_empty() {
        return Err(ApiError::BadRequest(
            "add_credit_type_conversions: at least one conversion is required (the only change update supports)".into(),
        ));
    }
    state
        .engine
        .change_catalog(CatalogChange::AddConversions {
            rate_card_id,
            conversions,
        })
        .await?;
    Ok(wire::id_response(rate_card_id))
}

/// One `getRates` selector: a rate is listed when its product matches every condition given.
struct Selector {
    product_id: Option<Id>,
    product_tags: Option<Vec<String>>,
}

impl Selector {
    fn of(body: SelectorBody) -> Selector {
        Selector {
            product_id: body.product_id.map(|id| id.0),
            product_tags: body.product_tags.filter(|tags| !tags.is_empty()),
        }
    }

    fn matches(&self, product: &Product) -> bool {
        self.product_id.is_none_or(|id| id == product.id)
            && self
                .product_tags
                .as_ref()
                .is_none_or(|tags| tags.iter().any(|t| product.tags.contains(t)))
    }
}

async fn get_rates(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let paging = ListQuery::parse(&req)?.paging()?;
    let body: GetRatesBody = request::read(&body)?;
    let rate_card_id = body.rate_card_id.0;
    let at = body.at.0;
    let selectors: Vec<Selector> = body
        .selectors
        .unwrap_or_default()
        .into_iter()
        .map(Selector::of)
        .collect();
    let catalog = state.engine.catalog();
    let card = addressed_card(&catalog, rate_card_id)?;
    let version = catalog.version();
    let in_effect = card
        .rates
        .keys()
        .filter_map(|&product_id| {
            let rate = card.rate_at(product_id, at, version)?;
            let product = catalog.product(product_id)?;
            (selectors.is_empty() || selectors.iter().any(|s| s.matches(product)))
                .then_some((product_id, (product, rate)))
        })
        .collect();
    Ok(page_by_id(in_effect, &paging, |(product, rate)| {
        ScheduledRateView {
            entitled: rate.entitled,
            product_custom_fields: BTreeMap::new(),
            product_id: product.id.to_string(),
            product_name: product.name.clone(),
            product_tags: product.tags.clone(),
            rate: RateView::of(rate, card, &catalog),
            starting_at: wire::time(rate.starting_at),
            ending_before: rate.ending_before.map(wire::time),
        }
    }))
}

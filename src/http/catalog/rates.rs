//! Rate cards and their rates: `POST /v1/contract-pricing/rate-cards/{create,get,list}` and
//! `addRate`, `addRates` (all-or-nothing: one catalog change) and `getRates` (the rates in
//! effect at an instant, one per product, filtered by selectors).
//!
//! Rates are FLAT or TIERED, priced in the rate card's fiat credit type (USD cents). Prices are
//! read from the JSON number's exact text and written back the same way, never through `f64`.

use super::super::openapi::Routes;
use std::collections::BTreeMap;
use std::str::FromStr;

use actix_web::{HttpRequest, HttpResponse, web};
use rust_decimal::Decimal;
use serde::{Serialize, Serializer};

use super::super::AppState;
use super::super::contracts::edge_id;
use super::super::error::{ApiError, ApiResult};
use super::super::wire;
use super::fields::{Fields, parse_supported};
use super::{CREATED_BY, CreditTypeView, ListQuery, new_id, page_by_id};
use crate::domain::catalog::{CatalogChange, Price, Product, Rate, RateCard, Tier};
use crate::domain::money::{CreditType, USD_CENTS_ID};
use crate::domain::{Catalog, Id, Money, Rejection, Timestamp};

pub fn routes(routes: &mut Routes<'_>) {
    routes.post(
        "/v1/contract-pricing/rate-cards/create",
        "createRateCard",
        "Create a rate card",
        create,
    );
    routes.post(
        "/v1/contract-pricing/rate-cards/get",
        "getRateCard",
        "Get a rate card",
        get,
    );
    routes.post(
        "/v1/contract-pricing/rate-cards/list",
        "listRateCards",
        "List rate cards",
        list,
    );
    routes.post(
        "/v1/contract-pricing/rate-cards/addRate",
        "addRate",
        "Add a rate to a rate card",
        add_rate,
    );
    routes.post(
        "/v1/contract-pricing/rate-cards/addRates",
        "addRates",
        "Add rates to a rate card (all or nothing)",
        add_rates,
    );
    routes.post(
        "/v1/contract-pricing/rate-cards/getRates",
        "getRates",
        "The rates of a rate card in effect at a time",
        get_rates,
    );
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RateType {
    Flat,
    Tiered,
}

const RATE_TYPES: [(&str, RateType); 2] = [("FLAT", RateType::Flat), ("TIERED", RateType::Tiered)];
const RATE_TYPES_UNSUPPORTED: [&str; 4] =
    ["PERCENTAGE", "SUBSCRIPTION", "TIERED_PERCENTAGE", "CUSTOM"];

/// `{"name"}`: an alias of the SDK's `RateCardRetrieveResponse.Data.Alias` (names only; time
/// windows are refused on create).
#[derive(Serialize)]
struct AliasView {
    name: String,
}

/// The SDK's `RateCardRetrieveResponse.Data` (and `RateCardListResponse`).
#[derive(Serialize)]
struct RateCardView {
    id: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    fiat_credit_type: CreditTypeView,
    credit_type_conversions: Vec<serde_json::Value>,
    aliases: Vec<AliasView>,
    custom_fields: BTreeMap<String, String>,
    created_at: String,
    created_by: &'static str,
}

impl RateCardView {
    fn of(card: &RateCard) -> RateCardView {
        RateCardView {
            id: card.id.to_string(),
            name: card.name.clone(),
            description: card.description.clone(),
            fiat_credit_type: CreditTypeView::of(&card.fiat_credit_type),
            credit_type_conversions: Vec::new(),
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
#[derive(Serialize)]
struct TierView {
    price: Money,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "exact_number"
    )]
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
#[derive(Serialize)]
struct RateView {
    rate_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    price: Option<Money>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tiers: Option<Vec<TierView>>,
    credit_type: CreditTypeView,
}

impl RateView {
    fn of(rate: &Rate, card: &RateCard) -> RateView {
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
        // The domain only accepts rates in the card's fiat credit type.
        debug_assert_eq!(rate.credit_type_id, card.fiat_credit_type.id);
        RateView {
            rate_type,
            price,
            tiers,
            credit_type: CreditTypeView::of(&card.fiat_credit_type),
        }
    }
}

/// The SDK's `RateListResponse` (a `getRates` item).
#[derive(Serialize)]
struct ScheduledRateView {
    entitled: bool,
    product_custom_fields: BTreeMap<String, String>,
    product_id: String,
    product_name: String,
    product_tags: Vec<String>,
    rate: RateView,
    starting_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ending_before: Option<String>,
}

/// Reads a rate-card create request.
///
/// # Errors
/// 400 naming the field.
fn parse_rate_card(mut body: Fields, created_at: Timestamp) -> ApiResult<RateCard> {
    let name = body.req_text("name")?;
    let description: Option<String> = body.opt("description")?;
    if let Some(id) = body.opt_id("fiat_credit_type_id")? {
        if id.to_string() != USD_CENTS_ID {
            return Err(Rejection::Unsupported(format!(
                "fiat_credit_type_id {id}: only USD (cents) ({USD_CENTS_ID}) is supported"
            ))
            .into());
        }
    }
    body.refuse(
        "credit_type_conversions",
        "(custom pricing units) is not supported",
    )?;
    let mut aliases = Vec::new();
    for mut alias in body.opt_objects("aliases")?.unwrap_or_default() {
        let name = alias.req_text("name")?;
        alias.refuse("starting_at", "(time-bounded aliases) is not supported")?;
        alias.refuse("ending_before", "(time-bounded aliases) is not supported")?;
        aliases.push(name);
    }
    // `custom_fields`: accepted and not kept.
    Ok(RateCard {
        id: new_id(),
        name,
        description,
        fiat_credit_type: CreditType::usd_cents(),
        aliases,
        created_at,
        rates: Default::default(),
    })
}

/// Reads one rate (the body of `addRate` without `rate_card_id`, or an item of `addRates`).
/// Checks references against `catalog` so that the 400 can name the field; the engine checks
/// everything again when it applies the change.
///
/// # Errors
/// 400 naming the field (with its path inside `rates[]`).
fn parse_rate(mut f: Fields, card: &RateCard, catalog: &Catalog) -> ApiResult<Rate> {
    let product_id = f.req_id("product_id")?;
    if catalog.product(product_id).is_none() {
        return Err(f.invalid("product_id", &format!("product {product_id} not found")));
    }
    let entitled: bool = f.req("entitled")?;
    let type_text: String = f.req("rate_type")?;
    let rate_type = parse_supported(
        &f,
        "rate_type",
        &type_text,
        &RATE_TYPES,
        &RATE_TYPES_UNSUPPORTED,
    )?;
    let starting_at = f.req_time("starting_at")?;
    let ending_before = f.opt_time("ending_before")?;
    if ending_before.is_some_and(|end| end <= starting_at) {
        return Err(f.invalid("ending_before", "must be after starting_at"));
    }
    for key in [
        "pricing_group_values",
        "commit_rate",
        "is_prorated",
        "quantity",
        "billing_frequency",
        "custom_rate",
    ] {
        f.refuse(key, "is not supported")?;
    }
    if let Some(id) = f.opt_id("credit_type_id")? {
        if id != card.fiat_credit_type.id {
            return Err(Rejection::Unsupported(format!(
                "{} {id}: rates must use the rate card's fiat credit type ({})",
                f.name("credit_type_id"),
                card.fiat_credit_type.id
            ))
            .into());
        }
    }
    let price = match rate_type {
        RateType::Flat => {
            if f.opt_objects("tiers")?.is_some_and(|t| !t.is_empty()) {
                return Err(f.invalid("tiers", "only TIERED rates have tiers"));
            }
            let price = f
                .opt_money("price")?
                .ok_or_else(|| f.missing_for("price", "FLAT rates"))?;
            Price::Flat(price)
        }
        RateType::Tiered => {
            if f.opt_money("price")?.is_some() {
                return Err(f.invalid("price", "TIERED rates are priced by their tiers"));
            }
            let Some(tier_fields) = f.opt_objects("tiers")? else {
                return Err(f.missing_for("tiers", "TIERED rates"));
            };
            let mut tiers = Vec::with_capacity(tier_fields.len());
            for mut tier in tier_fields {
                let price = tier
                    .opt_money("price")?
                    .ok_or_else(|| tier.missing("price"))?;
                let size = tier.opt_decimal("size")?;
                tiers.push(Tier { price, size });
            }
            Price::Tiered(tiers)
        }
    };
    price.validate().map_err(|r| f.locate(r))?;
    Ok(Rate {
        product_id,
        price,
        entitled,
        starting_at,
        ending_before,
        credit_type_id: card.fiat_credit_type.id,
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
    let mut card = parse_rate_card(Fields::from_body(&body)?, now)?;
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
    let id = Fields::from_body(&body)?.req_id("id")?;
    let catalog = state.engine.catalog();
    let card = addressed_card(&catalog, id)?;
    Ok(wire::data(RateCardView::of(card)))
}

/// The body (`params.body` in the SDK, typed `unknown`, usually empty) filters nothing.
async fn list(state: web::Data<AppState>, req: HttpRequest) -> ApiResult<HttpResponse> {
    let paging = ListQuery::parse(&req)?.paging()?;
    let catalog = state.engine.catalog();
    let cards = catalog.rate_cards().map(|c| (c.id, c)).collect();
    Ok(page_by_id(cards, &paging, RateCardView::of))
}

async fn add_rate(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let mut body = Fields::from_body(&body)?;
    let rate_card_id = body.req_id("rate_card_id")?;
    let catalog = state.engine.catalog();
    let card = addressed_card(&catalog, rate_card_id)?;
    let rate = parse_rate(body, card, &catalog)?;
    let view = RateView::of(&rate, card);
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
    let mut body = Fields::from_body(&body)?;
    let rate_card_id = body.req_id("rate_card_id")?;
    let catalog = state.engine.catalog();
    let card = addressed_card(&catalog, rate_card_id)?;
    let Some(items) = body.opt_objects("rates")? else {
        return Err(body.missing("rates"));
    };
    if items.is_empty() {
        return Err(body.invalid("rates", "must hold at least one rate"));
    }
    // Every rate is read before anything is sent: one bad rate adds none.
    let rates = items
        .into_iter()
        .map(|item| parse_rate(item, card, &catalog))
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

/// One `getRates` selector: a rate is listed when its product matches every condition given.
struct Selector {
    product_id: Option<Id>,
    product_tags: Option<Vec<String>>,
}

impl Selector {
    fn parse(mut f: Fields) -> ApiResult<Selector> {
        for key in [
            "pricing_group_values",
            "partial_pricing_group_values",
            "billing_frequency",
        ] {
            f.refuse(key, "is not supported")?;
        }
        Ok(Selector {
            product_id: f.opt_id("product_id")?,
            product_tags: f
                .opt::<Vec<String>>("product_tags")?
                .filter(|tags| !tags.is_empty()),
        })
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
    let mut body = Fields::from_body(&body)?;
    let rate_card_id = body.req_id("rate_card_id")?;
    let at = body.req_time("at")?;
    let selectors = body
        .opt_objects("selectors")?
        .unwrap_or_default()
        .into_iter()
        .map(Selector::parse)
        .collect::<ApiResult<Vec<Selector>>>()?;
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
            rate: RateView::of(rate, card),
            starting_at: wire::time(rate.starting_at),
            ending_before: rate.ending_before.map(wire::time),
        }
    }))
}

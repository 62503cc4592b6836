//! Products: `POST /v1/contract-pricing/products/{create,get,list,archive}`. Tollgate has USAGE
//! products (billed from a billable metric) and FIXED ones (commits); products never change
//! after creation, so `updates` is always empty and `current` equals `initial`.

use super::super::openapi::{Data, Page, Routes};
use super::super::wire::IdView;
use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::super::AppState;
use super::super::contracts::edge_id;
use super::super::error::{ApiError, ApiResult};
use super::super::request::{self, Choice, Choices, Refused, Text, Uuid, Why};
use super::super::wire;
use super::{CREATED_BY, ListQuery, new_id, page_by_id};
use crate::domain::Timestamp;
use crate::domain::catalog::{CatalogChange, Product, ProductKind};

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .post(
            "/v1/contract-pricing/products/create",
            "createProduct",
            "Create a product",
            create,
        )
        .body::<CreateProductBody>()
        .answers::<Data<IdView>>();
    routes
        .post(
            "/v1/contract-pricing/products/get",
            "getProduct",
            "Get a product",
            get,
        )
        .body::<GetProductBody>()
        .answers::<Data<ProductView>>();
    routes
        .post(
            "/v1/contract-pricing/products/list",
            "listProducts",
            "List products",
            list,
        )
        .query::<ListQuery>()
        .body::<ListProductsBody>()
        .answers::<Page<ProductView>>();
    routes
        .post(
            "/v1/contract-pricing/products/archive",
            "archiveProduct",
            "Archive a product",
            archive,
        )
        .body::<ArchiveProductBody>()
        .answers::<Data<IdView>>();
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProductType {
    Usage,
    Fixed,
}

impl Choices for ProductType {
    const NAME: &'static str = "ProductType";
    const VALUES: &'static [(&'static str, Self)] =
        &[("USAGE", ProductType::Usage), ("FIXED", ProductType::Fixed)];
    const UNSUPPORTED: &'static [&'static str] = &[
        "COMPOSITE",
        "SUBSCRIPTION",
        "PRO_SERVICE",
        "PROFESSIONAL_SERVICE",
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArchiveFilter {
    Archived,
    NotArchived,
    All,
}

impl Choices for ArchiveFilter {
    const NAME: &'static str = "ArchiveFilter";
    const VALUES: &'static [(&'static str, Self)] = &[
        ("ARCHIVED", ArchiveFilter::Archived),
        ("NOT_ARCHIVED", ArchiveFilter::NotArchived),
        ("ALL", ArchiveFilter::All),
    ];
}

type ProductTypeChoice = Choice<ProductType>;
type ArchiveFilterChoice = Choice<ArchiveFilter>;
type RefusedPricingGroups = Refused<PricingGroups>;
type RefusedPresentationGroups = Refused<PresentationGroups>;

struct PricingGroups;

impl Why for PricingGroups {
    const WHY: &'static str = "(pricing groups) is not supported";
}

struct PresentationGroups;

impl Why for PresentationGroups {
    const WHY: &'static str = "(presentation groups) is not supported";
}

/// `POST /v1/contract-pricing/products/create`. `custom_fields`, `is_refundable` and NetSuite
/// ids are accepted and not kept.
#[derive(Debug, Deserialize, ToSchema)]
#[expect(dead_code, reason = "Refused fields act while the body is read")]
pub struct CreateProductBody {
    name: Text,
    #[serde(rename = "type")]
    product_type: ProductTypeChoice,
    /// USAGE products only: the metric they bill.
    #[serde(default)]
    billable_metric_id: Option<Uuid>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    quantity_conversion: Refused,
    #[serde(default)]
    quantity_rounding: Refused,
    #[serde(default)]
    pricing_group_key: RefusedPricingGroups,
    #[serde(default)]
    presentation_group_key: RefusedPresentationGroups,
}

/// `POST /v1/contract-pricing/products/get`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct GetProductBody {
    id: Uuid,
}

/// `POST /v1/contract-pricing/products/list` (paging in the query string).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ListProductsBody {
    /// NOT_ARCHIVED unless given.
    #[serde(default)]
    archive_filter: Option<ArchiveFilterChoice>,
}

/// `POST /v1/contract-pricing/products/archive`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ArchiveProductBody {
    product_id: Uuid,
}

/// The SDK's `ProductListItemState`.
#[derive(Clone, Serialize, ToSchema)]
struct ProductStateView {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::super::request::Uuid>)]
    billable_metric_id: Option<String>,
    tags: Vec<String>,
    #[schema(value_type = super::super::request::Time)]
    created_at: String,
    created_by: &'static str,
}

/// The SDK's `ProductRetrieveResponse.Data` (and `ProductListResponse`).
#[derive(Serialize, ToSchema)]
struct ProductView {
    #[schema(value_type = super::super::request::Uuid)]
    id: String,
    /// USAGE or FIXED.
    #[serde(rename = "type")]
    product_type: &'static str,
    current: ProductStateView,
    initial: ProductStateView,
    /// Products never change, so there are never updates.
    updates: Vec<serde_json::Value>,
    #[schema(value_type = Option<super::super::request::Time>)]
    archived_at: Option<String>,
    custom_fields: BTreeMap<String, String>,
}

impl ProductView {
    fn of(product: &Product) -> ProductView {
        let (product_type, billable_metric_id) = match product.kind {
            ProductKind::Usage { billable_metric_id } => {
                ("USAGE", Some(billable_metric_id.to_string()))
            }
            ProductKind::Fixed => ("FIXED", None),
        };
        let state = ProductStateView {
            name: product.name.clone(),
            billable_metric_id,
            tags: product.tags.clone(),
            created_at: wire::time(product.created_at),
            created_by: CREATED_BY,
        };
        ProductView {
            id: product.id.to_string(),
            product_type,
            current: state.clone(),
            initial: state,
            updates: Vec::new(),
            archived_at: product.archived_at.map(wire::time),
            custom_fields: BTreeMap::new(),
        }
    }
}

/// Reads a create request into a product.
///
/// # Errors
/// 400 naming the field (an unknown or archived metric is a 400: it is a reference inside the
/// body, not the addressed object).
fn parse_product(
    body: CreateProductBody,
    state: &AppState,
    created_at: Timestamp,
) -> ApiResult<Product> {
    let invalid = |why: String| ApiError::BadRequest(format!("billable_metric_id: {why}"));
    let kind = match (body.product_type.0, body.billable_metric_id.map(|id| id.0)) {
        (ProductType::Usage, None) => {
            return Err(ApiError::BadRequest(
                "billable_metric_id is required for USAGE products".into(),
            ));
        }
        (ProductType::Usage, Some(id)) => {
            let catalog = state.engine.catalog();
            match catalog.metric(id) {
                None => return Err(invalid(format!("billable metric {id} not found"))),
                Some(m) if m.archived_at.is_some() => {
                    return Err(invalid(format!("billable metric {id} is archived")));
                }
                Some(_) => ProductKind::Usage {
                    billable_metric_id: id,
                },
            }
        }
        (ProductType::Fixed, Some(_)) => {
            return Err(invalid("only USAGE products have a billable metric".into()));
        }
        (ProductType::Fixed, None) => ProductKind::Fixed,
    };
    Ok(Product {
        id: new_id(),
        name: body.name.0,
        kind,
        tags: body.tags.unwrap_or_default(),
        created_at,
        archived_at: None,
    })
}

async fn create(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let now = Timestamp(state.engine.now_ms());
    let mut product = parse_product(request::read(&body)?, &state, now)?;
    // A retry whose first answer was lost names the same object (409), never a second one.
    product.id = edge_id(&request, &body, "product");
    let id = product.id;
    state
        .engine
        .change_catalog(CatalogChange::CreateProduct(product))
        .await?;
    Ok(wire::id_response(id))
}

async fn get(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let id = request::read::<GetProductBody>(&body)?.id.0;
    let catalog = state.engine.catalog();
    let product = catalog
        .product(id)
        .ok_or_else(|| ApiError::NotFound(format!("product {id} not found")))?;
    Ok(wire::data(ProductView::of(product)))
}

async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let paging = ListQuery::parse(&req)?.paging()?;
    let filter = request::read::<ListProductsBody>(&body)?
        .archive_filter
        .map_or(ArchiveFilter::NotArchived, |c| c.0);
    let catalog = state.engine.catalog();
    let products = catalog
        .products()
        .filter(|p| match filter {
            ArchiveFilter::Archived => p.archived_at.is_some(),
            ArchiveFilter::NotArchived => p.archived_at.is_none(),
            ArchiveFilter::All => true,
        })
        .map(|p| (p.id, p))
        .collect();
    Ok(page_by_id(products, &paging, ProductView::of))
}

async fn archive(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let id = request::read::<ArchiveProductBody>(&body)?.product_id.0;
    if state.engine.catalog().product(id).is_none() {
        return Err(ApiError::NotFound(format!("product {id} not found")));
    }
    let at = Timestamp(state.engine.now_ms());
    state
        .engine
        .change_catalog(CatalogChange::ArchiveProduct { id, at })
        .await?;
    Ok(wire::id_response(id))
}

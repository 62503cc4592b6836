//! Products: `POST /v1/contract-pricing/products/{create,get,list,archive}`. Tollgate has USAGE
//! products (billed from a billable metric) and FIXED ones (commits); products never change
//! after creation, so `updates` is always empty and `current` equals `initial`.

use super::super::openapi::Routes;
use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::super::AppState;
use super::super::contracts::edge_id;
use super::super::error::{ApiError, ApiResult};
use super::super::wire;
use super::fields::{Fields, parse_supported};
use super::{CREATED_BY, ListQuery, new_id, page_by_id};
use crate::domain::Timestamp;
use crate::domain::catalog::{CatalogChange, Product, ProductKind};

pub fn routes(routes: &mut Routes<'_>) {
    routes.post(
        "/v1/contract-pricing/products/create",
        "createProduct",
        "Create a product",
        create,
    );
    routes.post(
        "/v1/contract-pricing/products/get",
        "getProduct",
        "Get a product",
        get,
    );
    routes.post(
        "/v1/contract-pricing/products/list",
        "listProducts",
        "List products",
        list,
    );
    routes.post(
        "/v1/contract-pricing/products/archive",
        "archiveProduct",
        "Archive a product",
        archive,
    );
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ProductType {
    Usage,
    Fixed,
}

const PRODUCT_TYPES: [(&str, ProductType); 2] =
    [("USAGE", ProductType::Usage), ("FIXED", ProductType::Fixed)];
const PRODUCT_TYPES_UNSUPPORTED: [&str; 4] = [
    "COMPOSITE",
    "SUBSCRIPTION",
    "PRO_SERVICE",
    "PROFESSIONAL_SERVICE",
];

#[derive(Clone, Copy)]
enum ArchiveFilter {
    Archived,
    NotArchived,
    All,
}

const ARCHIVE_FILTERS: [(&str, ArchiveFilter); 3] = [
    ("ARCHIVED", ArchiveFilter::Archived),
    ("NOT_ARCHIVED", ArchiveFilter::NotArchived),
    ("ALL", ArchiveFilter::All),
];

/// The SDK's `ProductListItemState`.
#[derive(Clone, Serialize)]
struct ProductStateView {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    billable_metric_id: Option<String>,
    tags: Vec<String>,
    created_at: String,
    created_by: &'static str,
}

/// The SDK's `ProductRetrieveResponse.Data` (and `ProductListResponse`).
#[derive(Serialize)]
struct ProductView {
    id: String,
    #[serde(rename = "type")]
    product_type: &'static str,
    current: ProductStateView,
    initial: ProductStateView,
    /// Products never change, so there are never updates.
    updates: Vec<serde_json::Value>,
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
fn parse_product(mut body: Fields, state: &AppState, created_at: Timestamp) -> ApiResult<Product> {
    let name = body.req_text("name")?;
    let type_text: String = body.req("type")?;
    let product_type = parse_supported(
        &body,
        "type",
        &type_text,
        &PRODUCT_TYPES,
        &PRODUCT_TYPES_UNSUPPORTED,
    )?;
    body.refuse("quantity_conversion", "is not supported")?;
    body.refuse("quantity_rounding", "is not supported")?;
    body.refuse("pricing_group_key", "(pricing groups) is not supported")?;
    body.refuse(
        "presentation_group_key",
        "(presentation groups) is not supported",
    )?;
    let metric = body.opt_id("billable_metric_id")?;
    let kind = match (product_type, metric) {
        (ProductType::Usage, None) => {
            return Err(body.missing_for("billable_metric_id", "USAGE products"));
        }
        (ProductType::Usage, Some(id)) => {
            let catalog = state.engine.catalog();
            match catalog.metric(id) {
                None => {
                    return Err(body.invalid(
                        "billable_metric_id",
                        &format!("billable metric {id} not found"),
                    ));
                }
                Some(m) if m.archived_at.is_some() => {
                    return Err(body.invalid(
                        "billable_metric_id",
                        &format!("billable metric {id} is archived"),
                    ));
                }
                Some(_) => ProductKind::Usage {
                    billable_metric_id: id,
                },
            }
        }
        (ProductType::Fixed, Some(_)) => {
            return Err(body.invalid(
                "billable_metric_id",
                "only USAGE products have a billable metric",
            ));
        }
        (ProductType::Fixed, None) => ProductKind::Fixed,
    };
    let tags: Vec<String> = body.opt("tags")?.unwrap_or_default();
    // `custom_fields`, `is_refundable`, NetSuite ids: accepted and not kept.
    Ok(Product {
        id: new_id(),
        name,
        kind,
        tags,
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
    let mut product = parse_product(Fields::from_body(&body)?, &state, now)?;
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
    let id = Fields::from_body(&body)?.req_id("id")?;
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
    let mut body = Fields::from_body(&body)?;
    let filter = match body.opt::<String>("archive_filter")? {
        None => ArchiveFilter::NotArchived,
        Some(text) => wire::parse_enum(&body.name("archive_filter"), &text, &ARCHIVE_FILTERS)?,
    };
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
    let id = Fields::from_body(&body)?.req_id("product_id")?;
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

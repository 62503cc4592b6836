//! Catalog endpoints: billable metrics, products, rate cards and rates, in Metronome's shapes.
//!
//! Handlers read the request into domain values (a 400 names the offending field, using the
//! `rates[2].price` path for nested fields), hand one [`CatalogChange`] to the engine, which
//! validates, persists and publishes it, and render answers from the engine's current
//! [`Catalog`] snapshot. Nothing here keeps state or decides a domain rule; checks made here
//! before the engine's (unknown references, archived metrics) only exist to name the field in
//! the 400.
//!
//! Objects created here get random (v4) ids: they are created at the edge, so their ids arrive
//! inside the change that is persisted, and replay re-creates the same ids.
//!
//! [`CatalogChange`]: crate::domain::catalog::CatalogChange
//! [`Catalog`]: crate::domain::Catalog

mod credit_types;
mod metrics;
mod products;
mod rates;

use actix_web::{HttpRequest, web};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::wire;
use crate::domain::Id;
use crate::domain::money::CreditType;

pub fn routes(routes: &mut super::openapi::Routes<'_>) {
    credit_types::routes(routes);
    metrics::routes(routes);
    products::routes(routes);
    rates::routes(routes);
}

/// Who created catalog objects made through the API (Metronome reports a user; we have tokens).
const CREATED_BY: &str = "Tollgate API";

/// A fresh id for an object created through the API.
fn new_id() -> Id {
    Id::from_bytes(uuid::Uuid::new_v4().into_bytes())
}

/// `{"id", "name"}`: Metronome's `CreditTypeData`.
#[derive(Serialize, utoipa::ToSchema)]
struct CreditTypeView {
    #[schema(value_type = super::request::Uuid)]
    id: String,
    name: String,
}

impl CreditTypeView {
    fn of(credit_type: &CreditType) -> CreditTypeView {
        CreditTypeView {
            id: credit_type.id.to_string(),
            name: credit_type.name.clone(),
        }
    }
}

/// The paging (and filter) parameters the SDK sends in the query string. Everything is read as
/// text first: the SDK sends `key=` for a null, which means "not given".
#[derive(Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Page size, 1-100 (25 unless given).
    limit: Option<String>,
    /// The cursor a previous page answered.
    next_page: Option<String>,
    /// Archived objects too (rate cards, billable metrics).
    include_archived: Option<String>,
}

/// A parsed query: page size (capped) and cursor.
struct Paging {
    limit: usize,
    cursor: Option<String>,
}

impl ListQuery {
    /// # Errors
    /// 400 for a query that does not parse.
    fn parse(req: &HttpRequest) -> ApiResult<ListQuery> {
        web::Query::<ListQuery>::from_query(req.query_string())
            .map(web::Query::into_inner)
            .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))
    }

    /// # Errors
    /// 400 naming `limit` when it is not a positive integer.
    fn paging(&self) -> ApiResult<Paging> {
        let limit = match self.limit.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(text.parse::<usize>().map_err(|_| {
                ApiError::BadRequest(format!("limit: {text:?} is not a positive integer"))
            })?),
        };
        Ok(Paging {
            limit: wire::page_limit(limit)?,
            cursor: self.next_page.clone().filter(|c| !c.is_empty()),
        })
    }

    /// # Errors
    /// 400 naming `include_archived` when it is not a boolean.
    fn include_archived(&self) -> ApiResult<bool> {
        match self.include_archived.as_deref().map(str::trim) {
            None | Some("") => Ok(false),
            Some(text) if text.eq_ignore_ascii_case("true") => Ok(true),
            Some(text) if text.eq_ignore_ascii_case("false") => Ok(false),
            Some(text) => Err(ApiError::BadRequest(format!(
                "include_archived: {text:?} is not true or false"
            ))),
        }
    }
}

/// Pages `items` sorted by id, with the id as cursor, rendering only the page.
fn page_by_id<T, V: Serialize>(
    mut items: Vec<(Id, T)>,
    paging: &Paging,
    render: impl Fn(T) -> V,
) -> actix_web::HttpResponse {
    items.sort_unstable_by_key(|(id, _)| *id);
    // Lower-case hyphenated UUIDs sort as text exactly as the ids sort, so the text cursor
    // continues where the id order left off.
    let (page, next) = wire::page_after(items, paging.cursor.as_deref(), paging.limit, |item| {
        item.0.to_string()
    });
    wire::page(
        page.into_iter().map(|(_, item)| render(item)).collect(),
        next,
    )
}

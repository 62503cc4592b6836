//! Customer search for operators (SPEC 3.1): `GET /v1/tollgate/customers/search?q=TEXT`.
//!
//! Exact matches come first, on the first page: the customer whose id is `q`, then the one
//! whose ingest alias is `q`. Then every customer whose name or one of whose aliases contains
//! `q` (case-insensitively), in id order. Each result is the customer as `GET /v1/customers/{id}`
//! shows it, with `matched_on` (`id`, `alias` or `name`). Archived customers only with
//! `include_archived=true`.
//!
//! A request reads at most [`SCAN_MAX`] customers: a rare `q` may answer a short (or empty)
//! page with a `next_page` to go on from; keep paging until `next_page` is `null`.

use super::openapi::{Page, Routes};
use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::views::CustomerView;
use super::{render, wire};
use crate::domain::Id;
use crate::domain::customer::CustomerProfile;

/// Customers read per store page while scanning.
const SCAN_PAGE: usize = 500;
/// Customers one request reads at most.
pub const SCAN_MAX: usize = 20_000;
/// Longest accepted query.
const QUERY_CHARS_MAX: usize = 200;

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .get(
            "/v1/tollgate/customers/search",
            "searchCustomers",
            "Search customers by id, ingest alias or name (Tollgate)",
            search,
        )
        .query::<SearchQuery>()
        .answers::<Page<SearchHitView>>();
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SearchQuery {
    /// A customer id, an ingest alias or part of a name.
    q: Option<String>,
    /// Page size, 1-100 (25 unless given).
    limit: Option<usize>,
    /// The cursor a previous page answered.
    next_page: Option<String>,
    /// Archived customers too.
    include_archived: Option<bool>,
}

/// How a customer matched.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Matched {
    Id,
    Alias,
    Name,
}

impl Matched {
    fn as_str(self) -> &'static str {
        match self {
            Matched::Id => "id",
            Matched::Alias => "alias",
            Matched::Name => "name",
        }
    }
}

/// How `profile` matches `needle` (lowercased) in the scan: by name first, then by alias.
fn scan_match(profile: &CustomerProfile, needle: &str) -> Option<Matched> {
    if profile.name.to_lowercase().contains(needle) {
        Some(Matched::Name)
    } else if profile
        .ingest_aliases
        .iter()
        .any(|a| a.to_lowercase().contains(needle))
    {
        Some(Matched::Alias)
    } else {
        None
    }
}

async fn search(
    state: web::Data<AppState>,
    query: web::Query<SearchQuery>,
) -> ApiResult<HttpResponse> {
    let q = query
        .q
        .as_deref()
        .ok_or_else(|| ApiError::BadRequest("q is required".into()))?;
    if let Some(problem) = crate::domain::ids::key_problem(q) {
        return Err(ApiError::BadRequest(format!("q: {problem}")));
    }
    if q.chars().count() > QUERY_CHARS_MAX {
        return Err(ApiError::BadRequest(format!(
            "q: at most {QUERY_CHARS_MAX} characters"
        )));
    }
    let limit = wire::page_limit(query.limit)?;
    let include_archived = query.include_archived.unwrap_or(false);
    let cursor = wire::parse_opt_id(
        "next_page",
        query.next_page.as_deref().filter(|c| !c.is_empty()),
    )?;
    let shown = |p: &CustomerProfile| include_archived || p.archived_at.is_none();

    // Exact matches, named first and kept out of the scan.
    let by_id = Id::parse(q).filter(|&id| state.engine.customer_exists(id));
    let by_alias = state.engine.alias_owner(q).filter(|&id| Some(id) != by_id);
    let exact: Vec<(Id, Matched)> = by_id
        .map(|id| (id, Matched::Id))
        .into_iter()
        .chain(by_alias.map(|id| (id, Matched::Alias)))
        .collect();
    let mut items: Vec<SearchHitView> = Vec::new();
    if cursor.is_none() {
        for &(id, matched) in &exact {
            let profile = state
                .engine
                .query(id, |s| s.customer.profile.clone())
                .await?;
            if let Some(profile) = profile.filter(|p| shown(p)) {
                items.push(rendered(&profile, matched));
            }
        }
    }

    let needle = q.to_lowercase();
    let (mut after, mut scanned, mut more) = (cursor, 0usize, false);
    'scan: loop {
        let page = state.engine.list_profiles(after, SCAN_PAGE)?;
        let exhausted = page.len() < SCAN_PAGE;
        for profile in &page {
            if scanned == SCAN_MAX {
                more = true;
                break 'scan;
            }
            if items.len() >= limit {
                more = true;
                break 'scan;
            }
            scanned += 1;
            after = Some(profile.id);
            if !shown(profile) || exact.iter().any(|&(id, _)| id == profile.id) {
                continue;
            }
            if let Some(matched) = scan_match(profile, &needle) {
                items.push(rendered(profile, matched));
            }
        }
        if exhausted {
            break;
        }
    }
    // Exact matches alone may fill the first page before the scan read anything: the next
    // page then scans from the start (the nil id sorts before every customer's).
    let next_page = more.then(|| after.unwrap_or(Id::from_u128(0)).to_string());
    Ok(wire::page(items, next_page))
}

/// A customer found by search, with how it matched.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SearchHitView {
    #[serde(flatten)]
    pub customer: CustomerView,
    /// id, ingest_alias or name.
    pub matched_on: &'static str,
}

fn rendered(profile: &CustomerProfile, matched: Matched) -> SearchHitView {
    SearchHitView {
        customer: render::customer_detail(profile),
        matched_on: matched.as_str(),
    }
}

//! Credit types: `GET /v1/credit-types/list` (Metronome's, the SDK's `pricingUnits.list`) and
//! `POST /v1/tollgate/credit-types/create` (Tollgate's: the SDK has no create). USD (cents) is
//! always there; every other credit type is a custom pricing unit ("credits", "tokens"),
//! usable by a rate card once it has a conversion for it.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::super::AppState;
use super::super::auth::CREDIT_TYPE_CREATE;
use super::super::contracts::edge_id;
use super::super::error::ApiResult;
use super::super::openapi::{Data, Page, Routes};
use super::super::request::{self, Text};
use super::super::wire::{self, IdView};
use super::{ListQuery, page_by_id};
use crate::domain::catalog::CatalogChange;
use crate::domain::money::{CreditType, CreditUnit};

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .get(
            "/v1/credit-types/list",
            "listCreditTypes",
            "List credit types (USD cents and the custom pricing units)",
            list,
        )
        .query::<ListQuery>()
        .answers::<Page<CreditTypeListView>>();
    routes
        .post(
            CREDIT_TYPE_CREATE,
            "createCreditType",
            "Create a custom pricing unit (Tollgate's extension)",
            create,
        )
        .body::<CreateCreditTypeBody>()
        .answers::<Data<IdView>>();
}

/// `POST /v1/tollgate/credit-types/create`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateCreditTypeBody {
    /// Unique (ignoring ASCII case), at most 200 characters.
    name: Text,
}

/// The SDK's `PricingUnitListResponse`.
#[derive(Serialize, ToSchema)]
struct CreditTypeListView {
    #[schema(value_type = super::super::request::Uuid)]
    id: String,
    name: String,
    is_currency: bool,
}

impl CreditTypeListView {
    fn of(credit_type: &CreditType) -> CreditTypeListView {
        CreditTypeListView {
            id: credit_type.id.to_string(),
            name: credit_type.name.clone(),
            is_currency: credit_type.currency.is_some(),
        }
    }
}

async fn list(state: web::Data<AppState>, req: HttpRequest) -> ApiResult<HttpResponse> {
    let paging = ListQuery::parse(&req)?.paging()?;
    let catalog = state.engine.catalog();
    let usd = CreditType::usd_cents();
    let mut all = vec![(usd.id, usd)];
    all.extend(
        catalog
            .custom_credit_types()
            .into_iter()
            .map(|t| (t.id, t.clone())),
    );
    Ok(page_by_id(all, &paging, |t| CreditTypeListView::of(&t)))
}

async fn create(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let parsed: CreateCreditTypeBody = request::read(&body)?;
    // A retry whose first answer was lost names the same unit (409), never a second one.
    let id = edge_id(&request, &body, "credit-type");
    let credit_type = CreditType {
        id,
        name: parsed.name.0.trim().to_owned(),
        currency: None,
        unit: CreditUnit::Custom,
    };
    state
        .engine
        .change_catalog(CatalogChange::CreateCreditType(credit_type))
        .await?;
    Ok(wire::id_response(id))
}

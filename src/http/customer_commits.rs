//! Customer-level commits and credits: `POST /v1/contracts/customerCommits/create`,
//! `customerCredits/create` and the `updateEndDate` of each (their lists are in `balances`).
//!
//! Each is a customer input through the log ([`Input::CreateCustomerCommit`],
//! [`Input::EndCustomerCommit`]); the rules are in
//! [`crate::domain::customer::customer_level`].

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use super::contract_bodies::{
    AccessScheduleBody, CommitBody, CommitRole, CommitTypeChoice, InvoiceScheduleBody,
};
use super::contracts::{customer_of, edge_id};
use super::error::{ApiError, ApiResult};
use super::openapi::{Data, Empty, Routes};
use super::request::{self, Amount, Exact, Refused, Time, Uuid, Why};
use super::wire::{self, IdView};
use crate::domain::Id;
use crate::domain::customer::{CustomerCommitEnd, CustomerCommitSpec, Input, ManualEntrySpec};

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .post(
            "/v1/contracts/addManualBalanceLedgerEntry",
            "addManualBalanceLedgerEntry",
            "Add a manual ledger entry to a commit's or credit's segment",
            add_manual_entry,
        )
        .body::<ManualEntryBody>()
        .answers::<Empty>();
    routes
        .post(
            "/v1/contracts/customerCommits/create",
            "createCustomerCommit",
            "Create a customer-level commit",
            create_commit,
        )
        .body::<CustomerCommitBody>()
        .answers::<Data<IdView>>();
    routes
        .post(
            "/v1/contracts/customerCredits/create",
            "createCustomerCredit",
            "Create a customer-level credit",
            create_credit,
        )
        .body::<CustomerCommitBody>()
        .answers::<Data<IdView>>();
    routes
        .post(
            "/v1/contracts/customerCommits/updateEndDate",
            "updateCustomerCommitEndDate",
            "Shorten a customer-level commit's access or invoicing",
            update_commit_end,
        )
        .body::<UpdateEndBody>()
        .answers::<Data<IdView>>();
    routes
        .post(
            "/v1/contracts/customerCredits/updateEndDate",
            "updateCustomerCreditEndDate",
            "Shorten a customer-level credit's access",
            update_credit_end,
        )
        .body::<UpdateEndBody>()
        .answers::<Data<IdView>>();
}

struct NoSpecifiers;

impl Why for NoSpecifiers {
    const WHY: &'static str = "specifiers are not supported: scope with applicable_product_ids or applicable_product_tags";
}

struct NoCrm;

impl Why for NoCrm {
    const WHY: &'static str = "CRM references are not kept";
}

type RefusedSpecifiers = Refused<NoSpecifiers>;
type RefusedCrm = Refused<NoCrm>;
type RefusedSeats = Refused<NoSeats>;

/// `POST /v1/contracts/customerCommits/create` and `customerCredits/create` (the SDK's
/// `CommitCreateParams` and `CreditCreateParams`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "Refused fields act while the body is read")]
pub struct CustomerCommitBody {
    customer_id: Uuid,
    /// PREPAID or POSTPAID; commits only.
    #[serde(default, rename = "type")]
    kind: Option<CommitTypeChoice>,
    product_id: Uuid,
    /// Lower draws first; at equal priority a contract's own commits and credits draw first.
    priority: Exact,
    access_schedule: AccessScheduleBody,
    /// Commits only: their invoices, billed on `invoice_contract_id`.
    #[serde(default)]
    invoice_schedule: Option<InvoiceScheduleBody>,
    #[serde(default)]
    invoice_contract_id: Option<Uuid>,
    /// The contracts whose usage may draw from it; none: every contract of the customer.
    #[serde(default)]
    applicable_contract_ids: Option<Vec<Uuid>>,
    #[serde(default)]
    applicable_product_ids: Option<Vec<Uuid>>,
    #[serde(default)]
    applicable_product_tags: Option<Vec<String>>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    /// Only LIST_RATE.
    #[serde(default)]
    rate_type: Option<String>,
    /// A second create with the same key is refused (409).
    #[serde(default)]
    uniqueness_key: Option<String>,
    #[serde(default)]
    custom_fields: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    specifiers: RefusedSpecifiers,
    #[serde(default)]
    netsuite_sales_order_id: RefusedCrm,
    #[serde(default)]
    salesforce_opportunity_id: RefusedCrm,
}

/// `POST /v1/contracts/customerCommits/updateEndDate` (`commit_id`, both ends optional) and
/// `customerCredits/updateEndDate` (`credit_id`, `access_ending_before`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndBody {
    customer_id: Uuid,
    #[serde(default)]
    commit_id: Option<Uuid>,
    #[serde(default)]
    credit_id: Option<Uuid>,
    #[serde(default)]
    access_ending_before: Option<Time>,
    /// Commits only.
    #[serde(default)]
    invoices_ending_before: Option<Time>,
}

/// `POST /v1/contracts/addManualBalanceLedgerEntry` (the SDK's
/// `ContractAddManualBalanceEntryParams`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "Refused fields act while the body is read")]
pub struct ManualEntryBody {
    customer_id: Uuid,
    /// The commit or credit.
    id: Uuid,
    segment_id: Uuid,
    /// Added to the segment's balance; negative draws it down.
    amount: Amount,
    /// Shown in the ledger; 1 to 1,000 characters.
    reason: String,
    /// Absent for a customer-level commit or credit.
    #[serde(default)]
    contract_id: Option<Uuid>,
    /// Defaults to the segment's start.
    #[serde(default)]
    timestamp: Option<Time>,
    #[serde(default)]
    per_group_amounts: RefusedSeats,
}

struct NoSeats;

impl Why for NoSeats {
    const WHY: &'static str = "seat-managed subscriptions are not supported";
}

/// One input through the log: the customer's actor decides on it (`manual.rs` has the rules).
async fn add_manual_entry(
    state: web::Data<AppState>,
    http: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let request: ManualEntryBody = request::read(&body)?;
    let customer = customer_of(&state, request.customer_id)?;
    let entry = ManualEntrySpec {
        id: edge_id(&http, &body, "manual_entry"),
        contract_id: request.contract_id.map(|id| id.0),
        commit_id: request.id.0,
        segment_id: request.segment_id.0,
        amount: request.amount.0,
        reason: request.reason,
        timestamp: request.timestamp.map(|t| t.0),
    };
    state
        .engine
        .apply(customer, Input::AddManualEntry(Box::new(entry)))
        .await?;
    Ok(HttpResponse::Ok().finish())
}

async fn create(
    state: web::Data<AppState>,
    http: HttpRequest,
    body: web::Bytes,
    credit: bool,
) -> ApiResult<HttpResponse> {
    let request: CustomerCommitBody = request::read(&body)?;
    let customer = customer_of(&state, request.customer_id)?;
    if credit {
        let invoiced = request.invoice_schedule.is_some() || request.invoice_contract_id.is_some();
        if request.kind.is_some() || invoiced {
            return Err(ApiError::BadRequest(
                "credits are free: type, invoice_schedule and invoice_contract_id are for commits (customerCommits/create)".into(),
            ));
        }
    }
    let ids = |list: Option<Vec<Uuid>>| -> Vec<Id> {
        list.unwrap_or_default()
            .into_iter()
            .map(|id| id.0)
            .collect()
    };
    let applicable_contract_ids = ids(request.applicable_contract_ids);
    let commit = CommitBody {
        kind: request.kind,
        product_id: request.product_id,
        name: request.name,
        description: request.description,
        priority: Some(request.priority),
        applicable_product_ids: request.applicable_product_ids,
        applicable_product_tags: request.applicable_product_tags,
        access_schedule: request.access_schedule,
        invoice_schedule: request.invoice_schedule,
        rate_type: request.rate_type,
        payment_gate_config: None,
        specifiers: Refused::default(),
        rollover_fraction: Refused::default(),
        recurring_schedule: Refused::default(),
        hierarchy_configuration: Refused::default(),
        custom_fields: request.custom_fields,
    };
    let role = if credit {
        CommitRole::Credit
    } else {
        CommitRole::Commit {
            gates_allowed: false,
        }
    };
    let spec = CustomerCommitSpec {
        id: edge_id(&http, &body, "customer_commit"),
        commit: commit.into_domain(role, if credit { "credit" } else { "commit" })?,
        applicable_contract_ids,
        invoice_contract_id: request.invoice_contract_id.map(|id| id.0),
        uniqueness_key: request.uniqueness_key,
    };
    let id = spec.id;
    state
        .engine
        .apply(customer, Input::CreateCustomerCommit(Box::new(spec)))
        .await?;
    Ok(wire::data(IdView { id: id.to_string() }))
}

async fn create_commit(
    state: web::Data<AppState>,
    http: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    create(state, http, body, false).await
}

async fn create_credit(
    state: web::Data<AppState>,
    http: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    create(state, http, body, true).await
}

async fn update_end(
    state: web::Data<AppState>,
    body: web::Bytes,
    credit: bool,
) -> ApiResult<HttpResponse> {
    let request: UpdateEndBody = request::read(&body)?;
    let customer = customer_of(&state, request.customer_id)?;
    let (id, other) = if credit {
        (request.credit_id, request.commit_id)
    } else {
        (request.commit_id, request.credit_id)
    };
    let field = if credit { "credit_id" } else { "commit_id" };
    if other.is_some() {
        return Err(ApiError::BadRequest(format!(
            "name the {} with {field}",
            if credit { "credit" } else { "commit" }
        )));
    }
    let id = id.ok_or_else(|| ApiError::BadRequest(format!("{field} is required")))?;
    if credit && request.invoices_ending_before.is_some() {
        return Err(ApiError::BadRequest(
            "invoices_ending_before: credits have no invoices".into(),
        ));
    }
    if credit && request.access_ending_before.is_none() {
        return Err(ApiError::BadRequest(
            "access_ending_before is required".into(),
        ));
    }
    let end = CustomerCommitEnd {
        commit_id: id.0,
        credit,
        access_ending_before: request.access_ending_before.map(|t| t.0),
        invoices_ending_before: request.invoices_ending_before.map(|t| t.0),
    };
    state
        .engine
        .apply(customer, Input::EndCustomerCommit(Box::new(end)))
        .await?;
    Ok(wire::data(IdView {
        id: id.0.to_string(),
    }))
}

async fn update_commit_end(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    update_end(state, body, false).await
}

async fn update_credit_end(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    update_end(state, body, true).await
}

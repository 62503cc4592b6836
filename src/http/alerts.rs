//! Alerts (Metronome's threshold notifications): `POST /v1/alerts/create`, `/v1/alerts/archive`,
//! and a customer's view of them, `POST /v1/customer-alerts/list`, `/get`, `/reset`.
//!
//! An alert is a catalog change (`Engine::create_alert`, which also sweeps the customers it
//! applies to); where a customer stands on it is in the customer's state, decided by the
//! customer's inputs ([`crate::domain::alerts`]). A reset is a customer input through the log.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::contracts::edge_id;
use super::error::{ApiError, ApiResult};
use super::openapi::{Data, Empty, Page, Routes};
use super::request::{self, Choice, Choices, Exact, Refused, Text, Uuid, Why};
use super::wire::{self, IdView};
use crate::domain::Catalog;
use crate::domain::alerts::{Alert, AlertInvoiceType, AlertState, AlertStatus, AlertType};
use crate::domain::catalog::CatalogChange;
use crate::domain::customer::Input;
use crate::domain::money::CreditType;
use crate::domain::{Id, Timestamp};

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .post(
            "/v1/alerts/create",
            "createAlert",
            "Create an alert",
            create,
        )
        .body::<CreateAlertBody>()
        .answers::<Data<IdView>>();
    routes
        .post(
            "/v1/alerts/archive",
            "archiveAlert",
            "Archive an alert",
            archive,
        )
        .body::<ArchiveAlertBody>()
        .answers::<Data<IdView>>();
    routes
        .post(
            "/v1/customer-alerts/list",
            "listCustomerAlerts",
            "A customer's alerts and where it stands on each",
            list,
        )
        .body::<ListBody>()
        .answers::<Page<CustomerAlertView>>();
    routes
        .post(
            "/v1/customer-alerts/get",
            "getCustomerAlert",
            "Where a customer stands on one alert",
            get,
        )
        .body::<GetBody>()
        .answers::<Data<CustomerAlertView>>();
    routes
        .post(
            "/v1/customer-alerts/reset",
            "resetCustomerAlert",
            "Forget where a customer stands on an alert and evaluate it again now",
            reset,
        )
        .body::<GetBody>()
        .answers::<Empty>();
}

impl Choices for AlertType {
    const NAME: &'static str = "AlertType";
    const VALUES: &'static [(&'static str, Self)] = &[
        (
            "low_remaining_commit_balance_reached",
            AlertType::LowRemainingCommitBalance,
        ),
        (
            "low_remaining_commit_percentage_reached",
            AlertType::LowRemainingCommitPercentage,
        ),
        (
            "low_remaining_contract_credit_balance_reached",
            AlertType::LowRemainingContractCreditBalance,
        ),
        (
            "low_remaining_contract_credit_percentage_reached",
            AlertType::LowRemainingContractCreditPercentage,
        ),
        (
            "low_remaining_contract_credit_and_commit_balance_reached",
            AlertType::LowRemainingContractCreditAndCommitBalance,
        ),
        ("spend_threshold_reached", AlertType::SpendThreshold),
        (
            "monthly_invoice_total_spend_threshold_reached",
            AlertType::MonthlyInvoiceTotalSpendThreshold,
        ),
        ("usage_threshold_reached", AlertType::UsageThreshold),
        ("invoice_total_reached", AlertType::InvoiceTotal),
    ];
    const UNSUPPORTED: &'static [&'static str] = &[
        "low_credit_balance_reached",
        "low_remaining_days_in_plan_reached",
        "low_remaining_credit_percentage_reached",
        "low_remaining_days_for_commit_segment_reached",
        "low_remaining_days_for_contract_credit_segment_reached",
        "low_remaining_seat_balance_reached",
    ];
}

type AlertTypeChoice = Choice<AlertType>;

impl Choices for AlertInvoiceType {
    const NAME: &'static str = "AlertInvoiceType";
    const VALUES: &'static [(&'static str, Self)] = &[
        ("USAGE", AlertInvoiceType::Usage),
        ("SCHEDULED", AlertInvoiceType::Scheduled),
    ];
    const UNSUPPORTED: &'static [&'static str] = &["PLAN_ARREARS", "SEAT_PURCHASE", "CORRECTION"];
}

type InvoiceTypeChoice = Choice<AlertInvoiceType>;

struct NoCustomFields;

impl Why for NoCustomFields {
    const WHY: &'static str = "custom fields on commits and credits are not kept yet, so a filter on them would match nothing";
}

struct NoPlans;

impl Why for NoPlans {
    const WHY: &'static str = "Tollgate has contracts, not plans";
}

struct NoGroups;

impl Why for NoGroups {
    const WHY: &'static str =
        "spend per group key is not evaluated: alert on the customer's whole spend";
}

struct NoSeats;

impl Why for NoSeats {
    const WHY: &'static str = "seat balances are not supported";
}

type RefusedCustomFields = Refused<NoCustomFields>;
type RefusedPlans = Refused<NoPlans>;
type RefusedGroups = Refused<NoGroups>;
type RefusedSeats = Refused<NoSeats>;

/// `POST /v1/alerts/create` (the SDK's `AlertCreateParams`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "Refused fields act while the body is read")]
pub struct CreateAlertBody {
    alert_type: AlertTypeChoice,
    name: Text,
    /// Cents for USD balances and spend, the metric's units for usage, percent for shares.
    threshold: Exact,
    #[serde(default)]
    customer_id: Option<Uuid>,
    #[serde(default)]
    credit_type_id: Option<Uuid>,
    #[serde(default)]
    billable_metric_id: Option<Uuid>,
    /// Kept and shown; they name credit grants (plans), so they filter nothing.
    #[serde(default)]
    credit_grant_type_filters: Option<Vec<String>>,
    #[serde(default)]
    invoice_types_filter: Option<Vec<InvoiceTypeChoice>>,
    /// Defaults to true.
    #[serde(default)]
    evaluate_on_create: Option<bool>,
    #[serde(default)]
    uniqueness_key: Option<String>,
    #[serde(default)]
    alert_specifiers: RefusedCustomFields,
    #[serde(default)]
    custom_field_filters: RefusedCustomFields,
    #[serde(default)]
    group_values: RefusedGroups,
    #[serde(default)]
    plan_id: RefusedPlans,
    #[serde(default)]
    seat_filter: RefusedSeats,
}

/// `POST /v1/alerts/archive`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchiveAlertBody {
    id: Uuid,
    #[serde(default)]
    release_uniqueness_key: Option<bool>,
}

/// `POST /v1/customer-alerts/list`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListBody {
    customer_id: Uuid,
    /// `ENABLED` (the default), `DISABLED`, `ARCHIVED`.
    #[serde(default)]
    alert_statuses: Option<Vec<String>>,
}

/// The list's cursor: the SDK sends it in the query string, the filters in the body.
#[derive(Deserialize)]
struct CursorQuery {
    next_page: Option<String>,
}

/// `POST /v1/customer-alerts/get` and `/reset`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "Refused fields act while the body is read")]
pub struct GetBody {
    alert_id: Uuid,
    customer_id: Uuid,
    #[serde(default)]
    alert_specifiers: RefusedCustomFields,
    #[serde(default)]
    group_values: RefusedGroups,
    #[serde(default)]
    seat_filter: RefusedSeats,
    /// `CONTRACTS` (alerts of plans do not exist here).
    #[serde(default)]
    plans_or_contracts: Option<String>,
}

/// The SDK's `CustomerAlert.Alert`.
#[derive(Serialize, ToSchema)]
struct AlertView {
    #[schema(value_type = request::Uuid)]
    id: String,
    name: String,
    /// `enabled` or `archived`.
    status: &'static str,
    #[schema(value_type = f64)]
    threshold: serde_json::Value,
    #[serde(rename = "type")]
    alert_type: &'static str,
    #[schema(value_type = request::Time)]
    updated_at: String,
    credit_type: CreditTypeView,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    credit_grant_type_filters: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    invoice_types_filter: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<request::Uuid>)]
    billable_metric_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uniqueness_key: Option<String>,
    /// Tollgate's: whether customers already past the threshold were told at creation.
    evaluate_on_create: bool,
    /// Tollgate's: the customer it is for (absent: every customer).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<request::Uuid>)]
    customer_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct CreditTypeView {
    #[schema(value_type = request::Uuid)]
    id: String,
    name: String,
}

/// The SDK's `CustomerAlert`.
#[derive(Serialize, ToSchema)]
pub struct CustomerAlertView {
    alert: AlertView,
    /// `ok`, `in_alarm`, `evaluating`, or null for an archived alert.
    customer_status: Option<&'static str>,
    triggered_by: Option<String>,
}

fn credit_type_of(catalog: &Catalog, id: Id) -> ApiResult<CreditType> {
    catalog.credit_type(id).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "credit_type_id: {id} is not a credit type of this engine (USD cents is {}; custom pricing units are listed by /v1/credit-types/list)",
            CreditType::usd_cents().id
        ))
    })
}

fn view(alert: &Alert, status: Option<&AlertStatus>, catalog: &Catalog) -> CustomerAlertView {
    let credit_type =
        credit_type_of(catalog, alert.credit_type_id).unwrap_or_else(|_| CreditType::usd_cents());
    let customer_status = match (alert.archived_at, status.map(|s| s.state)) {
        (Some(_), _) => None,
        (None, Some(AlertState::Ok)) => Some("ok"),
        (None, Some(AlertState::InAlarm)) => Some("in_alarm"),
        (None, Some(AlertState::Evaluating) | None) => Some("evaluating"),
    };
    let updated_at = status.map_or(alert.created_at, |s| s.updated_at.max(alert.created_at));
    CustomerAlertView {
        alert: AlertView {
            id: alert.id.to_string(),
            name: alert.name.clone(),
            status: alert.status_name(),
            threshold: serde_json::json!(crate::domain::Money::from_decimal(alert.threshold)),
            alert_type: alert.alert_type.as_str(),
            updated_at: wire::time(updated_at),
            credit_type: CreditTypeView {
                id: credit_type.id.to_string(),
                name: credit_type.name,
            },
            credit_grant_type_filters: alert.credit_grant_type_filters.clone(),
            invoice_types_filter: alert.invoice_types.iter().map(|t| t.as_str()).collect(),
            billable_metric_id: alert.billable_metric_id.map(|m| m.to_string()),
            uniqueness_key: alert.uniqueness_key.clone(),
            evaluate_on_create: alert.evaluate_on_create,
            customer_id: alert.customer_id.map(|c| c.to_string()),
        },
        customer_status,
        triggered_by: status.and_then(|s| s.triggered_by.clone()),
    }
}

async fn create(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let parsed: CreateAlertBody = request::read(&body)?;
    let credit_type = credit_type_of(
        &state.engine.catalog(),
        parsed
            .credit_type_id
            .map_or_else(|| CreditType::usd_cents().id, |u| u.0),
    )?;
    if let Some(customer) = parsed.customer_id {
        if !state.engine.customer_exists(customer.0) {
            return Err(ApiError::NotFound(format!(
                "customer {} not found",
                customer.0
            )));
        }
    }
    // A retry whose first answer was lost names the same alert (409), never a second one.
    let id = edge_id(&request, &body, "alert");
    let alert = Alert {
        id,
        alert_type: parsed.alert_type.0,
        name: parsed.name.0,
        threshold: parsed.threshold.0,
        customer_id: parsed.customer_id.map(|c| c.0),
        credit_type_id: credit_type.id,
        billable_metric_id: parsed.billable_metric_id.map(|m| m.0),
        invoice_types: parsed
            .invoice_types_filter
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.0)
            .collect(),
        credit_grant_type_filters: parsed.credit_grant_type_filters.unwrap_or_default(),
        evaluate_on_create: parsed.evaluate_on_create.unwrap_or(true),
        uniqueness_key: parsed.uniqueness_key,
        key_released: false,
        created_at: Timestamp(state.engine.now_ms()),
        archived_at: None,
        created_in: 0,
        archived_in: None,
    };
    state.engine.create_alert(alert).await?;
    Ok(wire::id_response(id))
}

async fn archive(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let parsed: ArchiveAlertBody = request::read(&body)?;
    let id = parsed.id.0;
    let alert = state
        .engine
        .catalog()
        .alert(id)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("alert {id} not found")))?;
    let release = parsed.release_uniqueness_key.unwrap_or(false);
    // Archiving again changes nothing (but may still release the key).
    if alert.archived_at.is_none() || (release && !alert.key_released) {
        let at = Timestamp(state.engine.now_ms());
        state
            .engine
            .change_catalog(CatalogChange::ArchiveAlert {
                id,
                at,
                release_uniqueness_key: release,
            })
            .await?;
    }
    Ok(wire::id_response(id))
}

/// The statuses a customer has, read through its actor.
async fn statuses(state: &AppState, customer: Id) -> ApiResult<Vec<AlertStatus>> {
    Ok(state
        .engine
        .query(customer, |s| s.customer.alerts.clone())
        .await?)
}

/// Whether `alert` is one of `customer`'s (its own or every customer's).
fn concerns(alert: &Alert, customer: Id) -> bool {
    alert.customer_id.is_none_or(|c| c == customer)
}

async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let parsed: ListBody = request::read(&body)?;
    let customer = parsed.customer_id.0;
    let (mut enabled, mut archived) = (false, false);
    for status in parsed
        .alert_statuses
        .unwrap_or_else(|| vec!["ENABLED".into()])
    {
        match status.to_ascii_uppercase().as_str() {
            "ENABLED" => enabled = true,
            "ARCHIVED" => archived = true,
            // Tollgate has no disabled alerts: the filter matches none.
            "DISABLED" => {}
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "alert_statuses: {status:?} is not one of ENABLED, DISABLED, ARCHIVED"
                )));
            }
        }
    }
    let cursor = web::Query::<CursorQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))?
        .into_inner()
        .next_page
        .filter(|c| !c.is_empty());
    let statuses = statuses(&state, customer).await?;
    let catalog = state.engine.catalog();
    let mut alerts: Vec<&Alert> = catalog
        .alerts_of(customer)
        .filter(|a| match a.archived_at {
            Some(_) => archived,
            None => enabled,
        })
        .collect();
    alerts.sort_unstable_by_key(|a| a.id);
    let (page, next) = wire::page_after(alerts, cursor.as_deref(), wire::page_limit(None)?, |a| {
        a.id.to_string()
    });
    let catalog = state.engine.catalog();
    let data = page
        .into_iter()
        .map(|a| view(a, statuses.iter().find(|s| s.alert_id == a.id), &catalog))
        .collect();
    Ok(wire::page(data, next))
}

/// The alert named by a get or reset, if it is one of the customer's.
fn customer_alert(state: &AppState, body: &GetBody) -> ApiResult<Alert> {
    if body
        .plans_or_contracts
        .as_deref()
        .is_some_and(|p| !p.eq_ignore_ascii_case("CONTRACTS"))
    {
        return Err(ApiError::BadRequest(
            "plans_or_contracts: Tollgate has contracts, not plans: CONTRACTS".into(),
        ));
    }
    let (alert, customer) = (body.alert_id.0, body.customer_id.0);
    if !state.engine.customer_exists(customer) {
        return Err(ApiError::NotFound(format!("customer {customer} not found")));
    }
    state
        .engine
        .catalog()
        .alert(alert)
        .filter(|a| concerns(a, customer))
        .cloned()
        .ok_or_else(|| {
            ApiError::NotFound(format!("alert {alert} not found for customer {customer}"))
        })
}

async fn get(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let parsed: GetBody = request::read(&body)?;
    let alert = customer_alert(&state, &parsed)?;
    let statuses = statuses(&state, parsed.customer_id.0).await?;
    Ok(wire::data(view(
        &alert,
        statuses.iter().find(|s| s.alert_id == alert.id),
        &state.engine.catalog(),
    )))
}

async fn reset(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let parsed: GetBody = request::read(&body)?;
    let alert = customer_alert(&state, &parsed)?;
    if alert.archived_at.is_some() {
        return Err(ApiError::BadRequest(format!(
            "alert {} is archived: it evaluates nothing",
            alert.id
        )));
    }
    state
        .engine
        .apply(
            parsed.customer_id.0,
            Input::ResetAlert { alert_id: alert.id },
        )
        .await?;
    Ok(HttpResponse::Ok().finish())
}

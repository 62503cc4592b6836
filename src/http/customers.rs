//! Customers: create, get, list, ingest aliases, archive, billing provider configurations, and
//! their invoices (list, get) plus `POST /v1/invoices/void`.

use super::openapi::{Data, Empty, List, Page, Routes};
use actix_web::{HttpResponse, web};
use std::collections::BTreeMap;

use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::contracts::edge_id;
use super::error::{ApiError, ApiResult};
use super::render;
use super::request::{self, Refused, Text, Uuid};
use super::views::{CustomerView, InvoiceView};
use super::wire::{self, IdView};
use crate::domain::customer::{CustomerProfile, Input, StripeBilling};
use crate::domain::{Id, Timestamp};

/// Metronome truncates longer names.
const CUSTOMER_NAME_CHARS_MAX: usize = 160;

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .post(
            "/v1/customers",
            "createCustomer",
            "Create a customer",
            create,
        )
        .body::<CreateCustomerBody>()
        .answers::<Data<CustomerView>>();
    routes
        .get("/v1/customers", "listCustomers", "List customers", list)
        .query::<ListQuery>()
        .answers::<Page<CustomerView>>();
    routes
        .post(
            "/v1/customers/archive",
            "archiveCustomer",
            "Archive a customer",
            archive,
        )
        .body::<IdBody>()
        .answers::<Data<IdView>>();
    routes
        .get(
            "/v1/customers/{customer_id}",
            "getCustomer",
            "Get a customer",
            get,
        )
        .answers::<Data<CustomerView>>();
    routes
        .post(
            "/v1/customers/{customer_id}/setIngestAliases",
            "setIngestAliases",
            "Replace a customer's ingest aliases",
            set_aliases,
        )
        .body::<SetAliasesBody>()
        .answers::<Empty>();
    routes
        .post(
            "/v1/setCustomerBillingProviderConfigurations",
            "setCustomerBillingProviderConfigurations",
            "Set Stripe billing configurations",
            set_billing,
        )
        .body::<SetBillingBody>()
        .answers::<List<BillingConfigurationView>>();
    routes
        .post(
            "/v1/getCustomerBillingProviderConfigurations",
            "getCustomerBillingProviderConfigurations",
            "Get billing configurations",
            get_billing,
        )
        .body::<CustomerBody>()
        .answers::<List<BillingConfigurationView>>();
    routes
        .get(
            "/v1/customers/{customer_id}/invoices",
            "listInvoices",
            "List a customer's invoices",
            list_invoices,
        )
        .query::<InvoiceQuery>()
        .answers::<Page<InvoiceView>>();
    routes
        .get(
            "/v1/customers/{customer_id}/invoices/{invoice_id}",
            "getInvoice",
            "Get an invoice",
            get_invoice,
        )
        .answers::<Data<InvoiceView>>();
    routes
        .post(
            "/v1/invoices/void",
            "voidInvoice",
            "Void a SCHEDULED invoice",
            void_invoice,
        )
        .body::<IdBody>()
        .answers::<Data<IdView>>();
}

/// `POST /v1/customers`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateCustomerBody {
    /// Truncated to 160 characters, as Metronome does.
    pub name: Text,
    /// Names the customer in usage events; unique among customers.
    #[serde(default)]
    pub ingest_aliases: Option<Vec<String>>,
    /// Metronome's deprecated single ingest alias (added to `ingest_aliases`).
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    pub custom_fields: Option<BTreeMap<String, String>>,
    /// At most one (stripe).
    #[serde(default)]
    pub customer_billing_provider_configurations: Option<Vec<BillingProviderBody>>,
    #[serde(default)]
    pub billing_config: Refused,
    #[serde(default)]
    pub customer_revenue_system_configurations: Refused,
}

/// A billing provider configuration: only Stripe.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BillingProviderBody {
    /// `stripe`.
    pub billing_provider: String,
    pub configuration: StripeBillingBody,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct StripeBillingBody {
    pub stripe_customer_id: Text,
    /// `charge_automatically` unless given.
    #[serde(default)]
    pub stripe_collection_method: Option<String>,
}

/// An item of `POST /v1/setCustomerBillingProviderConfigurations`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SetBillingItemBody {
    pub customer_id: Uuid,
    /// `stripe`.
    pub billing_provider: String,
    pub configuration: StripeBillingBody,
}

/// `POST /v1/setCustomerBillingProviderConfigurations`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SetBillingBody {
    pub data: Vec<SetBillingItemBody>,
}

/// A body naming a customer (`getCustomerBillingProviderConfigurations`).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CustomerBody {
    pub customer_id: Uuid,
}

/// A body naming an object by its `id` (archive a customer, void an invoice).
#[derive(Debug, Deserialize, ToSchema)]
pub struct IdBody {
    pub id: Uuid,
}

/// `POST /v1/customers/{customer_id}/setIngestAliases`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SetAliasesBody {
    /// The whole new list (empty removes every alias).
    pub ingest_aliases: Vec<String>,
}

fn path_customer(state: &AppState, text: &str) -> ApiResult<Id> {
    existing_customer(state, wire::parse_id("customer_id", text)?)
}

fn existing_customer(state: &AppState, id: Id) -> ApiResult<Id> {
    if !state.engine.customer_exists(id) {
        return Err(ApiError::NotFound(format!("customer {id} not found")));
    }
    Ok(id)
}

/// A Stripe billing configuration from Metronome's `customer_billing_provider_configurations`
/// item or `setCustomerBillingProviderConfigurations` item.
fn stripe_billing(
    customer: Id,
    provider: &str,
    config: StripeBillingBody,
    at: &str,
) -> ApiResult<StripeBilling> {
    if !provider.eq_ignore_ascii_case("stripe") {
        return Err(ApiError::BadRequest(format!(
            "{at}.billing_provider: only stripe is supported"
        )));
    }
    Ok(StripeBilling {
        configuration_id: Id::derive(customer, "billing-provider-configuration", 0),
        stripe_customer_id: config.stripe_customer_id.0,
        collection_method: config
            .stripe_collection_method
            .unwrap_or_else(|| "charge_automatically".to_owned()),
    })
}

async fn create(
    state: web::Data<AppState>,
    request: actix_web::HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let body_fields: CreateCustomerBody = request::read(&body)?;
    let name: String = body_fields
        .name
        .0
        .chars()
        .take(CUSTOMER_NAME_CHARS_MAX)
        .collect();
    let mut ingest_aliases = body_fields.ingest_aliases.unwrap_or_default();
    let external_id = body_fields.external_id;
    // `external_id` is Metronome's deprecated single alias: it names the customer in events.
    if let Some(external) = &external_id {
        if !ingest_aliases.contains(external) {
            ingest_aliases.push(external.clone());
        }
    }
    if ingest_aliases.iter().any(String::is_empty) {
        return Err(ApiError::BadRequest(
            "ingest_aliases: must not contain empty strings".into(),
        ));
    }
    let id = edge_id(&request, &body, "customer");
    let mut stripe = None;
    let configurations = body_fields
        .customer_billing_provider_configurations
        .unwrap_or_default();
    for (i, item) in configurations.into_iter().enumerate() {
        let at = format!("customer_billing_provider_configurations[{i}]");
        stripe = Some(stripe_billing(
            id,
            &item.billing_provider,
            item.configuration,
            &at,
        )?);
    }
    let profile = CustomerProfile {
        id,
        name,
        external_id,
        ingest_aliases,
        custom_fields: body_fields
            .custom_fields
            .unwrap_or_default()
            .into_iter()
            .collect(),
        stripe,
        created_at: Timestamp(state.engine.now_ms()),
        archived_at: None,
    };
    // `Customer` (the create response) is the small shape.
    let response = render::customer(&profile);
    state.engine.create_customer(profile).await?;
    Ok(wire::data(response))
}

async fn profile(state: &AppState, customer: Id) -> ApiResult<CustomerProfile> {
    state
        .engine
        .query(customer, |s| s.customer.profile.clone())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("customer {customer} not found")))
}

async fn get(state: web::Data<AppState>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let customer = path_customer(&state, &path)?;
    Ok(wire::data(render::customer_detail(
        &profile(&state, customer).await?,
    )))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Page size, 1-100 (25 unless given).
    limit: Option<usize>,
    /// The cursor a previous page answered.
    next_page: Option<String>,
    /// Only these customers (comma-separated ids).
    customer_ids: Option<String>,
    /// Only the customer with this ingest alias.
    ingest_alias: Option<String>,
    /// Only archived customers (otherwise only active ones).
    only_archived: Option<bool>,
}

async fn list(state: web::Data<AppState>, query: web::Query<ListQuery>) -> ApiResult<HttpResponse> {
    let limit = wire::page_limit(query.limit)?;
    let only_archived = query.only_archived.unwrap_or(false);
    let wanted: Option<Vec<Id>> = match &query.customer_ids {
        Some(ids) => Some(
            ids.split(',')
                .filter(|s| !s.is_empty())
                .map(|s| wire::parse_id("customer_ids", s))
                .collect::<ApiResult<_>>()?,
        ),
        None => None,
    };
    let by_alias = query
        .ingest_alias
        .as_deref()
        .map(|alias| state.engine.alias_owner(alias));
    let mut cursor = wire::parse_opt_id(
        "next_page",
        query.next_page.as_deref().filter(|c| !c.is_empty()),
    )?;
    let mut items = Vec::new();
    // Scan profiles in id order, filtering, until the page is full.
    loop {
        let batch = state.engine.list_profiles(cursor, 200)?;
        let exhausted = batch.len() < 200;
        for profile in &batch {
            cursor = Some(profile.id);
            let archived = profile.archived_at.is_some();
            let keep = archived == only_archived
                && wanted.as_ref().is_none_or(|ids| ids.contains(&profile.id))
                && by_alias.is_none_or(|owner| owner == Some(profile.id));
            if keep {
                items.push(render::customer_detail(profile));
                if items.len() == limit {
                    break;
                }
            }
        }
        if items.len() == limit || exhausted {
            let more = items.len() == limit && !state.engine.list_profiles(cursor, 1)?.is_empty();
            let next = if more {
                cursor.map(|c| c.to_string())
            } else {
                None
            };
            return Ok(wire::page(items, next));
        }
    }
}

async fn set_aliases(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let customer = path_customer(&state, &path)?;
    let aliases = request::read::<SetAliasesBody>(&body)?.ingest_aliases;
    if aliases.iter().any(String::is_empty) {
        return Err(ApiError::BadRequest(
            "ingest_aliases: must not contain empty strings".into(),
        ));
    }
    state.engine.set_ingest_aliases(customer, aliases).await?;
    Ok(HttpResponse::Ok().finish())
}

async fn archive(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let customer = existing_customer(&state, request::read::<IdBody>(&body)?.id.0)?;
    state.engine.apply(customer, Input::ArchiveCustomer).await?;
    Ok(wire::id_response(customer))
}

async fn set_billing(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let items = request::read::<SetBillingBody>(&body)?.data;
    if items.is_empty() {
        return Err(ApiError::BadRequest(
            "data: at least one configuration is required".into(),
        ));
    }
    // Validate all, then apply.
    let mut configs = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let customer = existing_customer(&state, item.customer_id.0)?;
        let at = format!("data[{i}]");
        let billing = stripe_billing(customer, &item.billing_provider, item.configuration, &at)?;
        configs.push((customer, billing));
    }
    let mut out = Vec::new();
    for (customer, billing) in configs {
        let response = billing_json(customer, &billing);
        state
            .engine
            .apply(customer, Input::SetStripeBilling(billing))
            .await?;
        out.push(response);
    }
    Ok(wire::data(out))
}

/// A billing provider configuration (Stripe), as Metronome answers it.
#[derive(serde::Serialize, ToSchema)]
pub struct BillingConfigurationView {
    #[schema(value_type = super::request::Uuid)]
    pub id: String,
    #[schema(value_type = super::request::Uuid)]
    pub customer_id: String,
    /// stripe.
    pub billing_provider: &'static str,
    /// Always null.
    pub archived_at: Option<String>,
    pub configuration: StripeConfigurationView,
    /// direct_to_billing_provider.
    pub delivery_method: &'static str,
    #[schema(value_type = super::request::Uuid)]
    pub delivery_method_id: String,
    pub delivery_method_configuration: BTreeMap<String, String>,
}

#[derive(serde::Serialize, ToSchema)]
pub struct StripeConfigurationView {
    pub stripe_customer_id: String,
    pub stripe_collection_method: String,
}

fn billing_json(customer: Id, billing: &StripeBilling) -> BillingConfigurationView {
    BillingConfigurationView {
        id: billing.configuration_id.to_string(),
        customer_id: customer.to_string(),
        billing_provider: "stripe",
        archived_at: None,
        configuration: StripeConfigurationView {
            stripe_customer_id: billing.stripe_customer_id.clone(),
            stripe_collection_method: billing.collection_method.clone(),
        },
        delivery_method: "direct_to_billing_provider",
        delivery_method_id: Id::derive(customer, "delivery-method", 0).to_string(),
        delivery_method_configuration: BTreeMap::new(),
    }
}

async fn get_billing(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let customer = existing_customer(&state, request::read::<CustomerBody>(&body)?.customer_id.0)?;
    let profile = profile(&state, customer).await?;
    let items: Vec<BillingConfigurationView> = profile
        .stripe
        .iter()
        .map(|b| billing_json(customer, b))
        .collect();
    Ok(wire::data(items))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct InvoiceQuery {
    /// Page size, 1-100 (25 unless given).
    limit: Option<usize>,
    /// The cursor a previous page answered.
    next_page: Option<String>,
    /// Only this contract's invoices.
    contract_id: Option<String>,
    /// DRAFT, FINALIZED or VOID.
    status: Option<String>,
    /// USAGE or SCHEDULED.
    #[serde(rename = "type")]
    invoice_type: Option<String>,
    /// Only invoices dated at or after this time (RFC 3339).
    starting_on: Option<String>,
    /// Only invoices dated before this time (RFC 3339).
    ending_before: Option<String>,
    /// date_asc or date_desc.
    sort: Option<String>,
}

/// Every invoice of a customer as (sort time, id, invoice).
async fn invoices(
    state: &AppState,
    customer: Id,
) -> ApiResult<Vec<(Timestamp, String, InvoiceView)>> {
    let contracts = state
        .engine
        .query(customer, |s| s.customer.contracts.clone())
        .await?;
    let catalog = state.engine.catalog();
    let mut out = Vec::new();
    for contract in &contracts {
        let workflows = render::workflows_by_commit(contract);
        for period in &contract.periods {
            out.push((
                period.starting_at,
                period.invoice_id.to_string(),
                render::usage_invoice(customer, contract, period, &catalog),
            ));
        }
        for purchase in &contract.purchases {
            out.push((
                purchase.issued_at,
                purchase.id.to_string(),
                render::purchase_invoice(customer, contract, purchase, &workflows),
            ));
        }
    }
    Ok(out)
}

async fn list_invoices(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<InvoiceQuery>,
) -> ApiResult<HttpResponse> {
    let customer = path_customer(&state, &path)?;
    let limit = wire::page_limit(query.limit)?;
    let contract = wire::parse_opt_id("contract_id", query.contract_id.as_deref())?;
    let starting_on = wire::parse_opt_time("starting_on", query.starting_on.as_deref())?;
    let ending_before = wire::parse_opt_time("ending_before", query.ending_before.as_deref())?;
    let descending = match query.sort.as_deref() {
        None | Some("date_asc") => false,
        Some("date_desc") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "sort: {other:?} is not one of date_asc, date_desc"
            )));
        }
    };
    let mut all = invoices(&state, customer).await?;
    all.retain(|(at, _, invoice)| {
        contract.is_none_or(|c| invoice.contract_id == c.to_string())
            && query
                .status
                .as_deref()
                .is_none_or(|s| invoice.status.eq_ignore_ascii_case(s))
            && query
                .invoice_type
                .as_deref()
                .is_none_or(|t| invoice.invoice_type.eq_ignore_ascii_case(t))
            && starting_on.is_none_or(|t| *at >= t)
            && ending_before.is_none_or(|t| *at < t)
    });
    all.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    if descending {
        all.reverse();
    }
    // Cursor: the position after the last item served (stable for an unchanged list).
    let start: usize = match query.next_page.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => c
            .parse()
            .map_err(|_| ApiError::BadRequest("next_page: not a cursor from this API".into()))?,
        None => 0,
    };
    let total = all.len();
    let page: Vec<InvoiceView> = all
        .into_iter()
        .skip(start)
        .take(limit)
        .map(|(_, _, j)| j)
        .collect();
    let end = start + page.len();
    let next = (end < total).then(|| end.to_string());
    Ok(wire::page(page, next))
}

async fn get_invoice(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (customer_text, invoice_text) = path.into_inner();
    let customer = path_customer(&state, &customer_text)?;
    let invoice = wire::parse_id("invoice_id", &invoice_text)?.to_string();
    invoices(&state, customer)
        .await?
        .into_iter()
        .find(|(_, id, _)| *id == invoice)
        .map(|(_, _, json)| wire::data(json))
        .ok_or_else(|| ApiError::NotFound(format!("invoice {invoice} not found")))
}

async fn void_invoice(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let invoice = request::read::<IdBody>(&body)?.id.0;
    let customer = state
        .engine
        .invoice_customer(invoice)?
        .ok_or_else(|| ApiError::NotFound(format!("invoice {invoice} not found")))?;
    state
        .engine
        .apply(
            customer,
            Input::VoidInvoice {
                invoice_id: invoice,
            },
        )
        .await?;
    Ok(wire::id_response(invoice))
}

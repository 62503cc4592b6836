//! Billable metrics: `POST /v1/billable-metrics/create`, `GET /v1/billable-metrics/{id}`,
//! `GET /v1/billable-metrics` (cursor page) and `POST /v1/billable-metrics/archive`.

use super::super::openapi::Routes;
use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::super::AppState;
use super::super::contracts::edge_id;
use super::super::error::{ApiError, ApiResult};
use super::super::wire;
use super::fields::{Fields, parse_supported};
use super::{ListQuery, new_id, page_by_id};
use crate::domain::Timestamp;
use crate::domain::catalog::{
    Aggregation, BillableMetric, CatalogChange, EventTypeFilter, PropertyFilter,
};

pub fn routes(routes: &mut Routes<'_>) {
    routes.post(
        "/v1/billable-metrics/create",
        "createBillableMetric",
        "Create a billable metric",
        create,
    );
    routes.post(
        "/v1/billable-metrics/archive",
        "archiveBillableMetric",
        "Archive a billable metric",
        archive,
    );
    routes.get(
        "/v1/billable-metrics",
        "listBillableMetrics",
        "List billable metrics",
        list,
    );
    routes.get(
        "/v1/billable-metrics/{billable_metric_id}",
        "getBillableMetric",
        "Get a billable metric",
        get,
    );
}

const AGGREGATIONS: [(&str, Aggregation); 4] = [
    ("COUNT", Aggregation::Count),
    ("SUM", Aggregation::Sum),
    ("MAX", Aggregation::Max),
    ("UNIQUE", Aggregation::Unique),
];

fn aggregation_name(aggregation: Aggregation) -> &'static str {
    match aggregation {
        Aggregation::Count => "COUNT",
        Aggregation::Sum => "SUM",
        Aggregation::Max => "MAX",
        Aggregation::Unique => "UNIQUE",
    }
}

/// Metronome's `EventTypeFilter`, as sent and as returned.
#[derive(Deserialize, Serialize)]
struct EventTypeFilterWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    in_values: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_in_values: Option<Vec<String>>,
}

/// Metronome's `PropertyFilter`, as sent and as returned.
#[derive(Deserialize, Serialize)]
struct PropertyFilterWire {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exists: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    in_values: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_in_values: Option<Vec<String>>,
}

/// The SDK's `BillableMetricRetrieveResponse.Data` (and list item).
#[derive(Serialize)]
struct MetricView {
    id: String,
    name: String,
    aggregation_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aggregation_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_type_filter: Option<EventTypeFilterWire>,
    property_filters: Vec<PropertyFilterWire>,
    group_keys: Vec<Vec<String>>,
    custom_fields: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    archived_at: Option<String>,
}

impl MetricView {
    fn of(metric: &BillableMetric) -> MetricView {
        let types = &metric.event_type_filter;
        let event_type_filter =
            (types.in_values.is_some() || types.not_in_values.is_some()).then(|| {
                EventTypeFilterWire {
                    in_values: types.in_values.clone(),
                    not_in_values: types.not_in_values.clone(),
                }
            });
        MetricView {
            id: metric.id.to_string(),
            name: metric.name.clone(),
            aggregation_type: aggregation_name(metric.aggregation),
            aggregation_key: metric.aggregation_key.clone(),
            event_type_filter,
            property_filters: metric
                .property_filters
                .iter()
                .map(|f| PropertyFilterWire {
                    name: f.name.clone(),
                    exists: f.exists,
                    in_values: f.in_values.clone(),
                    not_in_values: f.not_in_values.clone(),
                })
                .collect(),
            group_keys: metric.group_keys.clone(),
            custom_fields: BTreeMap::new(),
            archived_at: metric.archived_at.map(wire::time),
        }
    }
}

/// Reads a create request into a metric (validated by the domain when applied).
///
/// # Errors
/// 400 naming the field.
fn parse_metric(mut body: Fields) -> ApiResult<BillableMetric> {
    body.refuse(
        "sql",
        "is not supported: define the metric with aggregation_type and filters",
    )?;
    let name = body.req_text("name")?;
    let aggregation_text: String = body.req("aggregation_type")?;
    let aggregation = parse_supported(
        &body,
        "aggregation_type",
        &aggregation_text,
        &AGGREGATIONS,
        &["LATEST"],
    )?;
    let aggregation_key: Option<String> = body.opt("aggregation_key")?;
    let aggregation_key = aggregation_key.filter(|k| !k.is_empty());
    if aggregation != Aggregation::Count && aggregation_key.is_none() {
        return Err(body.missing_for(
            "aggregation_key",
            &format!("aggregation_type {aggregation_text}"),
        ));
    }
    let event_type_filter = body
        .opt::<EventTypeFilterWire>("event_type_filter")?
        .map(|f| EventTypeFilter {
            in_values: f.in_values,
            not_in_values: f.not_in_values,
        })
        .unwrap_or_default();
    let property_filters: Vec<PropertyFilterWire> =
        body.opt("property_filters")?.unwrap_or_default();
    let group_keys: Vec<Vec<String>> = body.opt("group_keys")?.unwrap_or_default();
    // `custom_fields` are accepted and not kept (nothing reads them back yet).
    Ok(BillableMetric {
        id: new_id(),
        name,
        aggregation,
        aggregation_key,
        event_type_filter,
        property_filters: property_filters
            .into_iter()
            .map(|f| PropertyFilter {
                name: f.name,
                exists: f.exists,
                in_values: f.in_values,
                not_in_values: f.not_in_values,
            })
            .collect(),
        group_keys,
        archived_at: None,
    })
}

async fn create(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let mut metric = parse_metric(Fields::from_body(&body)?)?;
    // A retry whose first answer was lost names the same object (409), never a second one.
    metric.id = edge_id(&request, &body, "billable-metric");
    let id = metric.id;
    state
        .engine
        .change_catalog(CatalogChange::CreateBillableMetric(metric))
        .await?;
    Ok(wire::id_response(id))
}

async fn get(state: web::Data<AppState>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let id = wire::parse_id("billable_metric_id", &path)?;
    let catalog = state.engine.catalog();
    let metric = catalog
        .metric(id)
        .ok_or_else(|| ApiError::NotFound(format!("billable metric {id} not found")))?;
    Ok(wire::data(MetricView::of(metric)))
}

async fn list(state: web::Data<AppState>, req: HttpRequest) -> ApiResult<HttpResponse> {
    let query = ListQuery::parse(&req)?;
    let paging = query.paging()?;
    let include_archived = query.include_archived()?;
    let catalog = state.engine.catalog();
    let metrics = catalog
        .metrics()
        .filter(|m| include_archived || m.archived_at.is_none())
        .map(|m| (m.id, m))
        .collect();
    Ok(page_by_id(metrics, &paging, MetricView::of))
}

async fn archive(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let mut body = Fields::from_body(&body)?;
    let id = body.req_id("id")?;
    if state.engine.catalog().metric(id).is_none() {
        return Err(ApiError::NotFound(format!(
            "billable metric {id} not found"
        )));
    }
    let at = Timestamp(state.engine.now_ms());
    state
        .engine
        .change_catalog(CatalogChange::ArchiveBillableMetric { id, at })
        .await?;
    Ok(wire::id_response(id))
}

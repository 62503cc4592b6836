//! Billable metrics: `POST /v1/billable-metrics/create`, `GET /v1/billable-metrics/{id}`,
//! `GET /v1/billable-metrics` (cursor page) and `POST /v1/billable-metrics/archive`.

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
use super::{ListQuery, new_id, page_by_id};
use crate::domain::Timestamp;
use crate::domain::catalog::{
    Aggregation, BillableMetric, CatalogChange, EventTypeFilter, PropertyFilter,
};

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .post(
            "/v1/billable-metrics/create",
            "createBillableMetric",
            "Create a billable metric",
            create,
        )
        .body::<CreateMetricBody>()
        .answers::<Data<IdView>>();
    routes
        .post(
            "/v1/billable-metrics/archive",
            "archiveBillableMetric",
            "Archive a billable metric",
            archive,
        )
        .body::<ArchiveMetricBody>()
        .answers::<Data<IdView>>();
    routes
        .get(
            "/v1/billable-metrics",
            "listBillableMetrics",
            "List billable metrics",
            list,
        )
        .query::<ListQuery>()
        .answers::<Page<MetricView>>();
    routes
        .get(
            "/v1/billable-metrics/{billable_metric_id}",
            "getBillableMetric",
            "Get a billable metric",
            get,
        )
        .answers::<Data<MetricView>>();
}

impl Choices for Aggregation {
    const NAME: &'static str = "AggregationType";
    const VALUES: &'static [(&'static str, Self)] = &[
        ("COUNT", Aggregation::Count),
        ("SUM", Aggregation::Sum),
        ("MAX", Aggregation::Max),
        ("UNIQUE", Aggregation::Unique),
    ];
    const UNSUPPORTED: &'static [&'static str] = &["LATEST"];
}

type AggregationChoice = Choice<Aggregation>;

struct NoSql;

impl Why for NoSql {
    const WHY: &'static str =
        "is not supported: define the metric with aggregation_type and filters";
}

type RefusedSql = Refused<NoSql>;

/// `POST /v1/billable-metrics/create`. `custom_fields` are accepted and not kept.
#[derive(Debug, Deserialize, ToSchema)]
#[expect(dead_code, reason = "Refused fields act while the body is read")]
pub struct CreateMetricBody {
    name: Text,
    aggregation_type: AggregationChoice,
    /// The property summed, maxed or counted unique (every type but COUNT).
    #[serde(default)]
    aggregation_key: Option<String>,
    #[serde(default)]
    event_type_filter: Option<EventTypeFilterWire>,
    #[serde(default)]
    property_filters: Option<Vec<PropertyFilterWire>>,
    #[serde(default)]
    group_keys: Option<Vec<Vec<String>>>,
    #[serde(default)]
    sql: RefusedSql,
}

/// `POST /v1/billable-metrics/archive`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ArchiveMetricBody {
    id: Uuid,
}

fn aggregation_name(aggregation: Aggregation) -> &'static str {
    match aggregation {
        Aggregation::Count => "COUNT",
        Aggregation::Sum => "SUM",
        Aggregation::Max => "MAX",
        Aggregation::Unique => "UNIQUE",
    }
}

/// Metronome's `EventTypeFilter`, as sent and as returned.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
struct EventTypeFilterWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    in_values: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_in_values: Option<Vec<String>>,
}

/// Metronome's `PropertyFilter`, as sent and as returned.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
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
#[derive(Serialize, ToSchema)]
struct MetricView {
    #[schema(value_type = super::super::request::Uuid)]
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
    #[schema(value_type = Option<super::super::request::Time>)]
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
fn parse_metric(body: CreateMetricBody) -> ApiResult<BillableMetric> {
    let aggregation = body.aggregation_type.0;
    let aggregation_key = body.aggregation_key.filter(|k| !k.is_empty());
    if aggregation != Aggregation::Count && aggregation_key.is_none() {
        return Err(ApiError::BadRequest(format!(
            "aggregation_key is required for aggregation_type {}",
            aggregation_name(aggregation)
        )));
    }
    let event_type_filter = body
        .event_type_filter
        .map(|f| EventTypeFilter {
            in_values: f.in_values,
            not_in_values: f.not_in_values,
        })
        .unwrap_or_default();
    let property_filters = body.property_filters.unwrap_or_default();
    let group_keys = body.group_keys.unwrap_or_default();
    Ok(BillableMetric {
        id: new_id(),
        name: body.name.0,
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
    let mut metric = parse_metric(request::read(&body)?)?;
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
    let id = request::read::<ArchiveMetricBody>(&body)?.id.0;
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

//! Payment-gate workflows for operators (SPEC 3.1).
//!
//! - `GET /v1/tollgate/workflows/{workflow_id}`: one workflow with its invoice, commit, amounts
//!   and provider ids.
//! - `GET /v1/tollgate/workflows`: cursor pages in workflow id order, filtered by `customer_id`,
//!   `contract_id`, `state`, `kind` (`spend`, `prepaid_balance`, `manual_commit`),
//!   `created_after` and `created_before` (RFC 3339, on `started_at`). With `customer_id` the
//!   customer's workflows are read at once; without it the workflow index is scanned (`wfs/`
//!   for a state in flight, which holds only the workflows in that state; else `wf/`, written
//!   for every workflow with the effects of the input that started it), at most
//!   [`SCAN_MAX`] entries per request: a narrow filter may answer a short (or empty) page whose
//!   `next_page` goes on from where the scan stopped.

use super::openapi::{Data, Page, Routes};
use actix_web::{HttpResponse, web};
use rustc_hash::FxHashMap;
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::request::{self, Text};
use super::views::WorkflowView;
use super::{render, wire};
use crate::actors::cancel::CancelVerdict;
use crate::actors::{EngineError, entry};
use crate::domain::Rejection;
use crate::domain::gate::{StateChange, Workflow, WorkflowKind, WorkflowState};
use crate::domain::{Id, Timestamp};

/// Index entries one list request reads at most.
pub const SCAN_MAX: usize = 1_000;
/// Index entries read per store page.
const SCAN_PAGE: usize = 200;

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .get(
            "/v1/tollgate/workflows",
            "listWorkflows",
            "Payment-gate workflows (Tollgate)",
            list,
        )
        .query::<ListQuery>()
        .answers::<Page<WorkflowView>>();
    routes
        .get(
            "/v1/tollgate/workflows/{workflow_id}",
            "getWorkflow",
            "A payment-gate workflow with its history (Tollgate)",
            get,
        )
        .answers::<Data<WorkflowView>>();
    routes.post(
        "/v1/tollgate/workflows/{workflow_id}/cancel",
        "cancelWorkflow",
        "Cancel a workflow in flight: it ends FAILED; a STRIPE payment is cancelled first (409 when Stripe says it succeeded) (Tollgate)",
        cancel,
    )
    .body::<CancelBody>()
    .answers::<Data<WorkflowView>>();
}

/// The workflows of `customer`, every contract's, each with its history.
async fn workflows_of(state: &AppState, customer: Id) -> ApiResult<Vec<(Workflow, History)>> {
    Ok(state
        .engine
        .query(customer, |s| s.customer.workflows_with_history())
        .await?)
}

type History = Vec<StateChange>;

async fn get(state: web::Data<AppState>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let id = wire::parse_id("workflow_id", &path)?;
    let not_found = || ApiError::NotFound(format!("workflow {id} not found"));
    let customer = state.engine.workflow_customer(id)?.ok_or_else(not_found)?;
    let (workflow, history) = state
        .engine
        .query(customer, move |s| s.customer.workflow_with_history(id))
        .await?
        .ok_or_else(not_found)?;
    Ok(wire::data(render::workflow(customer, &workflow, &history)))
}

/// Characters a cancel's reason may have at most.
pub const REASON_CHARS_MAX: usize = 1_000;

/// `POST /v1/tollgate/workflows/{workflow_id}/cancel`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CancelBody {
    /// Why (recorded in the workflow's history), at most 1,000 characters.
    pub reason: Text,
}

/// `POST /v1/tollgate/workflows/{workflow_id}/cancel {"reason"}`: ends a stuck workflow FAILED
/// with the reason (see `actors/cancel.rs`). 200 with the workflow (also for one that had
/// ended FAILED already); 409 when it ended RELEASED, when Stripe reports the payment
/// succeeded (the workflow is then released) and while Stripe is still processing it; 502 when
/// Stripe could not be asked.
async fn cancel(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let id = wire::parse_id("workflow_id", &path)?;
    let request: CancelBody = request::read(&body)?;
    let reason = request.reason.0.trim();
    if reason.is_empty() {
        return Err(ApiError::BadRequest("reason: must not be empty".into()));
    }
    if reason.chars().count() > REASON_CHARS_MAX {
        return Err(ApiError::BadRequest(format!(
            "reason: at most {REASON_CHARS_MAX} characters"
        )));
    }
    let cancelled = match state.engine.cancel_workflow(id, reason.to_owned()).await {
        Err(EngineError::Rejected(Rejection::WorkflowNotFound)) => {
            return Err(ApiError::NotFound(format!("workflow {id} not found")));
        }
        other => other?,
    };
    let ended = |how: &str| format!("workflow {id} {how}: it cannot be cancelled");
    match cancelled.verdict {
        CancelVerdict::Failed => Ok(wire::data(render::workflow(
            cancelled.customer,
            &cancelled.workflow,
            &cancelled.history,
        ))),
        CancelVerdict::AlreadyReleased => Err(ApiError::Conflict(ended("already ended RELEASED"))),
        CancelVerdict::ReleasedInstead => Err(ApiError::Conflict(ended(
            "was paid: Stripe reports the payment succeeded, and the workflow is RELEASED",
        ))),
        // Retryable: once Stripe decides, a cancel is answered for good.
        CancelVerdict::Processing { object_id } => Err(ApiError::InProgress(format!(
            "workflow {id}: Stripe is still processing {object_id}, which cannot be cancelled \
             now; the workflow ends when Stripe decides"
        ))),
        CancelVerdict::ProviderUnavailable(why) => Err(ApiError::BadGateway(format!(
            "workflow {id} was not cancelled: Stripe could not cancel its payment ({why}); \
             nothing changed, try again"
        ))),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Page size, 1-100 (25 unless given).
    limit: Option<usize>,
    /// The cursor a previous page answered.
    next_page: Option<String>,
    /// Only this customer's workflows.
    customer_id: Option<String>,
    /// Only this contract's workflows (with customer_id).
    contract_id: Option<String>,
    /// PENDING_INVOICE, PENDING_PAYMENT, ACTION_REQUIRED, RELEASED or FAILED.
    state: Option<String>,
    /// SPEND_THRESHOLD, PREPAID_BALANCE_THRESHOLD or COMMIT.
    kind: Option<String>,
    /// Only workflows created at or after this time (RFC 3339).
    created_after: Option<String>,
    /// Only workflows created before this time (RFC 3339).
    created_before: Option<String>,
}

/// What a listed workflow must match.
struct Filter {
    contract: Option<Id>,
    state: Option<WorkflowState>,
    kind: Option<WorkflowKind>,
    after: Option<Timestamp>,
    before: Option<Timestamp>,
}

impl Filter {
    fn parse(query: &ListQuery) -> ApiResult<Filter> {
        let state = match query.state.as_deref() {
            None => None,
            Some(text) => Some(wire::parse_enum(
                "state",
                &text.to_ascii_uppercase(),
                &[
                    ("INITIATED", WorkflowState::Initiated),
                    ("AWAITING_EXTERNAL", WorkflowState::AwaitingExternal),
                    ("CHARGING", WorkflowState::Charging),
                    ("ACTION_REQUIRED", WorkflowState::ActionRequired),
                    ("RELEASED", WorkflowState::Released),
                    ("FAILED", WorkflowState::Failed),
                ],
            )?),
        };
        let kind = match query.kind.as_deref() {
            None => None,
            Some(text) => Some(wire::parse_enum(
                "kind",
                &text.to_ascii_lowercase(),
                &[
                    ("spend", WorkflowKind::Spend),
                    ("prepaid_balance", WorkflowKind::PrepaidBalance),
                    ("manual_commit", WorkflowKind::ManualCommit),
                ],
            )?),
        };
        Ok(Filter {
            contract: wire::parse_opt_id("contract_id", query.contract_id.as_deref())?,
            state,
            kind,
            after: wire::parse_opt_time("created_after", query.created_after.as_deref())?,
            before: wire::parse_opt_time("created_before", query.created_before.as_deref())?,
        })
    }

    fn keeps(&self, w: &Workflow) -> bool {
        self.contract.is_none_or(|c| c == w.contract_id)
            && self.state.is_none_or(|s| s == w.state)
            && self.kind.is_none_or(|k| k == w.kind)
            && self.after.is_none_or(|t| w.started_at >= t)
            && self.before.is_none_or(|t| w.started_at < t)
    }
}

async fn list(state: web::Data<AppState>, query: web::Query<ListQuery>) -> ApiResult<HttpResponse> {
    let limit = wire::page_limit(query.limit)?;
    let filter = Filter::parse(&query)?;
    let cursor = wire::parse_opt_id(
        "next_page",
        query.next_page.as_deref().filter(|c| !c.is_empty()),
    )?;
    let customer = wire::parse_opt_id("customer_id", query.customer_id.as_deref())?;
    let (items, next) = match customer {
        Some(customer) => one_customer(&state, customer, &filter, cursor, limit).await?,
        None => from_index(&state, &filter, cursor, limit).await?,
    };
    Ok(wire::page(items, next.map(|id| id.to_string())))
}

async fn one_customer(
    state: &AppState,
    customer: Id,
    filter: &Filter,
    cursor: Option<Id>,
    limit: usize,
) -> ApiResult<(Vec<WorkflowView>, Option<Id>)> {
    if !state.engine.customer_exists(customer) {
        return Err(ApiError::NotFound(format!("customer {customer} not found")));
    }
    let mut workflows: Vec<(Workflow, History)> = workflows_of(state, customer)
        .await?
        .into_iter()
        .filter(|(w, _)| filter.keeps(w) && cursor.is_none_or(|c| w.id > c))
        .collect();
    workflows.sort_by_key(|(w, _)| w.id);
    let more = workflows.len() > limit;
    workflows.truncate(limit);
    let next = more.then(|| workflows.last().map(|(w, _)| w.id)).flatten();
    let items = workflows
        .iter()
        .map(|(w, h)| render::workflow(customer, w, h))
        .collect();
    Ok((items, next))
}

async fn from_index(
    state: &AppState,
    filter: &Filter,
    cursor: Option<Id>,
    limit: usize,
) -> ApiResult<(Vec<WorkflowView>, Option<Id>)> {
    // A state in flight has an index of its own (`wfs/`): only its workflows are read.
    let by_state = filter
        .state
        .filter(|s| !s.is_terminal())
        .map(entry::workflow_state_prefix);
    let prefix: &[u8] = by_state
        .as_deref()
        .unwrap_or_else(|| entry::workflow_key_prefix());
    let key_of = |id: Id| {
        let mut key = prefix.to_vec();
        key.extend_from_slice(id.as_bytes());
        key
    };
    let mut after: Option<Id> = cursor;
    // Each customer's workflows are read once per request.
    let mut customers: FxHashMap<Id, Vec<(Workflow, History)>> = FxHashMap::default();
    let (mut items, mut scanned) = (Vec::new(), 0usize);
    loop {
        let after_key = after.map(key_of);
        let page = state.engine.with_store("workflow index list", |store| {
            store.meta_scan_page(prefix, after_key.as_deref(), SCAN_PAGE)
        })?;
        let exhausted = page.len() < SCAN_PAGE;
        for (key, value) in page {
            if items.len() == limit || scanned == SCAN_MAX {
                return Ok((items, after));
            }
            scanned += 1;
            let (Some(workflow), Some(customer)) = (
                key.get(prefix.len()..)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .map(Id::from_bytes),
                <[u8; 16]>::try_from(value.as_slice())
                    .ok()
                    .map(Id::from_bytes),
            ) else {
                // The engine writes only 16-byte ids here: anything else is damage, said
                // loudly rather than skipped (a skipped entry could stall the cursor).
                return Err(ApiError::Engine(crate::actors::EngineError::Internal(
                    format!("workflow index entry {} is unreadable", hex::encode(&key)),
                )));
            };
            after = Some(workflow);
            if let std::collections::hash_map::Entry::Vacant(slot) = customers.entry(customer) {
                // An index entry of a customer that is gone names nothing to list.
                let workflows = match workflows_of(state, customer).await {
                    Err(ApiError::Rejected(crate::domain::Rejection::CustomerNotFound)) => {
                        Vec::new()
                    }
                    other => other?,
                };
                slot.insert(workflows);
            }
            let found = customers[&customer].iter().find(|(w, _)| w.id == workflow);
            if let Some((w, h)) = found.filter(|(w, _)| filter.keeps(w)) {
                items.push(render::workflow(customer, w, h));
            }
        }
        if exhausted {
            return Ok((items, None));
        }
    }
}

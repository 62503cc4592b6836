//! The quarantine (SPEC 2.1 and 3.1): inputs the engine kept instead of applying (their apply
//! panicked, or acknowledged usage overflowed despite the bounds).
//!
//! - `GET /v1/tollgate/quarantine`: oldest first, in cursor pages; each entry has an `id`.
//! - `POST /v1/tollgate/quarantine/reapply` `{"id"}`: apply it now (after an upgrade), with its
//!   original acceptance time and catalog version. 409 `still_failing` if it fails again (it
//!   stays quarantined).
//! - `POST /v1/tollgate/quarantine/discard` `{"id", "reason"}`: never apply it.
//!
//! - `GET /v1/tollgate/quarantine/decisions`: decided entries with their decision, oldest
//!   input first (the audit trail).
//!
//! Both decisions go through the customer's log. A decision on an input that is no longer
//! quarantined (decided already, or applied by replay after an upgrade) answers 409
//! `not_quarantined`; a re-apply of a request whose caller got a 500 answers 409
//! `not_reappliable` (discard it); an unknown id answers 404.

use super::openapi::{Data, Page, Routes};
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::Value;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::request::{self, Text};
use super::wire;
use crate::actors::quarantine::{
    QUARANTINE_PREFIX, QuarantineCause, Quarantined, Resolution, resolved_key,
};
use crate::domain::customer::QuarantineDecision;

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .get(
            "/v1/tollgate/quarantine",
            "listQuarantine",
            "Quarantined inputs (Tollgate)",
            list,
        )
        .query::<ListQuery>()
        .answers::<Page<QuarantinedView>>();
    routes
        .post(
            "/v1/tollgate/quarantine/reapply",
            "reapplyQuarantined",
            "Re-apply a quarantined input (Tollgate)",
            reapply,
        )
        .body::<ReapplyBody>()
        .answers::<Data<DecisionView>>();
    routes
        .post(
            "/v1/tollgate/quarantine/discard",
            "discardQuarantined",
            "Discard a quarantined input, with a reason (Tollgate)",
            discard,
        )
        .body::<DiscardBody>()
        .answers::<Data<DecisionView>>();
    routes
        .get(
            "/v1/tollgate/quarantine/decisions",
            "listQuarantineDecisions",
            "Decided quarantine entries with their decisions (Tollgate)",
            decisions,
        )
        .query::<ListQuery>()
        .answers::<Page<DecidedView>>();
}

/// Longest discard reason kept (it is logged with the decision).
const REASON_MAX_CHARS: usize = 1_000;

/// `POST /v1/tollgate/quarantine/reapply`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ReapplyBody {
    /// The quarantined input's id, as the list shows it.
    pub id: Text,
}

/// `POST /v1/tollgate/quarantine/discard`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DiscardBody {
    /// The quarantined input's id, as the list shows it.
    pub id: Text,
    /// Why it is discarded (kept with the decision), at most 1,000 characters.
    pub reason: Text,
}

async fn reapply(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let key = entry_key(&request::read::<ReapplyBody>(&body)?.id.0)?;
    decide(&state, &key, QuarantineDecision::Reapply, "REAPPLIED").await
}

async fn discard(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let request: DiscardBody = request::read(&body)?;
    let key = entry_key(&request.id.0)?;
    let reason = request.reason.0.trim();
    if let Some(problem) = crate::domain::ids::key_problem(reason) {
        return Err(ApiError::BadRequest(format!("reason: {problem}")));
    }
    if reason.chars().count() > REASON_MAX_CHARS {
        return Err(ApiError::BadRequest(format!(
            "reason: at most {REASON_MAX_CHARS} characters"
        )));
    }
    let decision = QuarantineDecision::Discard {
        reason: reason.to_owned(),
    };
    decide(&state, &key, decision, "DISCARDED").await
}

async fn decide(
    state: &AppState,
    key: &[u8],
    decision: QuarantineDecision,
    status: &'static str,
) -> ApiResult<HttpResponse> {
    let id = hex::encode(key);
    match state.engine.decide_quarantined(key, decision).await? {
        None => Err(ApiError::NotFound(format!(
            "no quarantined input with id {id}"
        ))),
        Some(_) => Ok(wire::data(DecisionView { id, status })),
    }
}

/// The `quar/` key an entry's `id` names (its hex encoding).
fn entry_key(id: &str) -> ApiResult<Vec<u8>> {
    hex::decode(id)
        .ok()
        .filter(|key| key.starts_with(QUARANTINE_PREFIX))
        .ok_or_else(|| ApiError::BadRequest("id: not a quarantined input's id".into()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Page size, 1-100 (25 unless given).
    limit: Option<usize>,
    /// The cursor a previous page answered.
    next_page: Option<String>,
}

impl ListQuery {
    fn after(&self) -> ApiResult<Option<Vec<u8>>> {
        match self.next_page.as_deref() {
            None | Some("") => Ok(None),
            Some(cursor) => hex::decode(cursor)
                .map(Some)
                .map_err(|_| ApiError::BadRequest("next_page: not a cursor of this list".into())),
        }
    }
}

async fn decisions(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> ApiResult<HttpResponse> {
    let limit = wire::page_limit(query.limit)?;
    let after = query.after()?;
    let mut entries = state
        .engine
        .quarantine_decisions(after.as_deref(), limit + 1)?;
    let more = entries.len() > limit;
    entries.truncate(limit);
    let next_page = match (more, entries.last()) {
        (true, Some(last)) => {
            let e = &last.entry;
            Some(hex::encode(resolved_key(e.partition, e.seq, e.index)))
        }
        _ => None,
    };
    let data: Vec<DecidedView> = entries
        .iter()
        .map(|resolved| {
            let (status, reason) = match &resolved.resolution {
                Resolution::Reapplied => ("REAPPLIED", None),
                Resolution::Discarded { reason } => ("DISCARDED", Some(reason.clone())),
            };
            DecidedView {
                entry: render(&resolved.entry),
                status,
                decision_reason: reason,
                decided_at: wire::time(resolved.decided_at),
                decided_at_seq: resolved.decided_seq,
            }
        })
        .collect();
    Ok(wire::page(data, next_page))
}

async fn list(state: web::Data<AppState>, query: web::Query<ListQuery>) -> ApiResult<HttpResponse> {
    let limit = wire::page_limit(query.limit)?;
    let after = query.after()?;
    // One more than asked tells whether another page follows.
    let mut entries = state.engine.quarantined(after.as_deref(), limit + 1)?;
    let more = entries.len() > limit;
    entries.truncate(limit);
    let next_page = match (more, entries.last()) {
        (true, Some(last)) => Some(hex::encode(last.key())),
        _ => None,
    };
    Ok(wire::page(entries.iter().map(render).collect(), next_page))
}

/// A quarantined input.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct QuarantinedView {
    /// Names it in reapply and discard.
    pub id: String,
    pub partition: u16,
    pub seq: u64,
    pub index: u32,
    #[schema(value_type = super::request::Uuid)]
    pub customer_id: String,
    #[schema(value_type = super::request::Time)]
    pub accepted_at: String,
    pub catalog_version: u64,
    /// PANIC (applying it panicked) or REFUSED (the engine refused it on replay).
    pub cause: &'static str,
    pub reason: String,
    /// The input as the engine logged it (its internal form).
    pub input: Value,
}

/// A decided quarantine entry.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DecidedView {
    #[serde(flatten)]
    pub entry: QuarantinedView,
    /// REAPPLIED or DISCARDED.
    pub status: &'static str,
    pub decision_reason: Option<String>,
    #[schema(value_type = super::request::Time)]
    pub decided_at: String,
    pub decided_at_seq: u64,
}

/// The answer of a decision.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DecisionView {
    pub id: String,
    /// REAPPLIED or DISCARDED.
    pub status: &'static str,
}

fn render(entry: &Quarantined) -> QuarantinedView {
    QuarantinedView {
        id: hex::encode(entry.key()),
        partition: entry.partition,
        seq: entry.seq,
        index: entry.index,
        customer_id: entry.customer_id.to_string(),
        accepted_at: wire::time(entry.at),
        catalog_version: entry.catalog_version,
        cause: match entry.cause {
            QuarantineCause::Panic => "PANIC",
            QuarantineCause::Refused => "REFUSED",
        },
        reason: entry.reason.clone(),
        input: serde_json::to_value(&entry.input).unwrap_or(Value::Null),
    }
}

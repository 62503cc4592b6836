//! The quarantine (SPEC 2.1 and 3.1): inputs the engine kept instead of applying (their apply
//! panicked, or acknowledged usage overflowed despite the bounds).
//!
//! - `GET /v1/tollgate/quarantine`: oldest first, in cursor pages; each entry has an `id`.
//! - `POST /v1/tollgate/quarantine/reapply` `{"id"}`: apply it now (after an upgrade), with its
//!   original acceptance time and catalog version. 409 `still_failing` if it fails again (it
//!   stays quarantined).
//! - `POST /v1/tollgate/quarantine/discard` `{"id", "reason"}`: never apply it.
//!
//! Both decisions go through the customer's log. A decision on an input that is no longer
//! quarantined (decided already, or applied by replay after an upgrade) answers 409
//! `not_quarantined`; an unknown id answers 404.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::fields::Obj;
use super::wire;
use crate::actors::quarantine::{Decision, QUARANTINE_PREFIX, QuarantineCause, Quarantined};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/tollgate/quarantine", web::get().to(list))
        .route("/v1/tollgate/quarantine/reapply", web::post().to(reapply))
        .route("/v1/tollgate/quarantine/discard", web::post().to(discard));
}

/// Longest discard reason kept (it is logged with the decision).
const REASON_MAX_CHARS: usize = 1_000;

async fn reapply(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let value: Value = wire::parse_body(&body)?;
    let obj = Obj::root(&value)?;
    let key = entry_key(obj.req_str("id")?)?;
    decide(&state, &key, Decision::Reapply, "REAPPLIED").await
}

async fn discard(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let value: Value = wire::parse_body(&body)?;
    let obj = Obj::root(&value)?;
    let key = entry_key(obj.req_str("id")?)?;
    let reason = obj.req_str("reason")?.trim();
    if reason.is_empty() {
        return Err(ApiError::BadRequest("reason is required".into()));
    }
    if reason.chars().count() > REASON_MAX_CHARS {
        return Err(ApiError::BadRequest(format!(
            "reason: at most {REASON_MAX_CHARS} characters"
        )));
    }
    let decision = Decision::Discard {
        reason: reason.to_owned(),
    };
    decide(&state, &key, decision, "DISCARDED").await
}

async fn decide(
    state: &AppState,
    key: &[u8],
    decision: Decision,
    status: &str,
) -> ApiResult<HttpResponse> {
    let id = hex::encode(key);
    match state.engine.decide_quarantined(key, decision).await? {
        None => Err(ApiError::NotFound(format!(
            "no quarantined input with id {id}"
        ))),
        Some(_) => Ok(HttpResponse::Ok().json(json!({
            "data": { "id": id, "status": status }
        }))),
    }
}

/// The `quar/` key an entry's `id` names (its hex encoding).
fn entry_key(id: &str) -> ApiResult<Vec<u8>> {
    hex::decode(id)
        .ok()
        .filter(|key| key.starts_with(QUARANTINE_PREFIX))
        .ok_or_else(|| ApiError::BadRequest("id: not a quarantined input's id".into()))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    next_page: Option<String>,
}

async fn list(state: web::Data<AppState>, query: web::Query<ListQuery>) -> ApiResult<HttpResponse> {
    let limit = wire::page_limit(query.limit)?;
    let after = match query.next_page.as_deref() {
        None | Some("") => None,
        Some(cursor) => Some(
            hex::decode(cursor)
                .map_err(|_| ApiError::BadRequest("next_page: not a cursor of this list".into()))?,
        ),
    };
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

fn render(entry: &Quarantined) -> Value {
    json!({
        "id": hex::encode(entry.key()),
        "partition": entry.partition,
        "seq": entry.seq,
        "index": entry.index,
        "customer_id": entry.customer_id.to_string(),
        "accepted_at": wire::time(entry.at),
        "catalog_version": entry.catalog_version,
        "cause": match entry.cause {
            QuarantineCause::Panic => "PANIC",
            QuarantineCause::Refused => "REFUSED",
        },
        "reason": entry.reason,
        "input": serde_json::to_value(&entry.input).unwrap_or(Value::Null),
    })
}

//! `GET /v1/tollgate/quarantine`: inputs the engine kept instead of applying (their apply
//! panicked, or acknowledged usage overflowed despite the bounds; SPEC 2.1), oldest first, in
//! cursor pages. Re-applying and discarding them belong to the operator surface (SPEC 3.1).

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::wire;
use crate::actors::quarantine::{QuarantineCause, Quarantined};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/tollgate/quarantine", web::get().to(list));
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

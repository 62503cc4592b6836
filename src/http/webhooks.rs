//! Webhook deliveries for operators (SPEC 3.1).
//!
//! - `GET /v1/tollgate/webhooks/pending`: webhooks waiting to be delivered (or between
//!   retries), in id order.
//! - `GET /v1/tollgate/webhooks/delivered`: deliveries of the last
//!   `webhooks.delivered_retention_ms` (72 h by default), oldest first.
//! - `GET /v1/tollgate/webhooks/dead-letters`: webhooks given up on after
//!   `webhooks.give_up_after_ms`, in id order.
//! - `POST /v1/tollgate/webhooks/redrive` `{"id"}` or `{"all": true}`: dead letters back to
//!   delivery with the same webhook id and body and a fresh retry window.
//!
//! Each item is one webhook for one destination; its `id` is that delivery's id (a UUID), and
//! `webhook_id` is the `id` of the body the receiver sees.

use super::openapi::Routes;
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::request::{self, Uuid};
use super::wire;
use crate::actors::deliveries::{DELIVERED_PREFIX, DeliveredWebhook};
use crate::actors::outbox::{OutboxEffect, OutboxEntry};
use crate::domain::{Id, Timestamp};
use crate::storage::{EffectPlace, Uuid16};

/// Dead letters one `{"all": true}` call re-drives at most.
pub const REDRIVE_ALL_MAX: usize = 1_000;

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .get(
            "/v1/tollgate/webhooks/pending",
            "listPendingWebhooks",
            "Webhook deliveries waiting or between retries (Tollgate)",
            pending,
        )
        .query::<ListQuery>();
    routes
        .get(
            "/v1/tollgate/webhooks/delivered",
            "listDeliveredWebhooks",
            "Webhook deliveries of the retention window, oldest first (Tollgate)",
            delivered,
        )
        .query::<ListQuery>();
    routes
        .get(
            "/v1/tollgate/webhooks/dead-letters",
            "listWebhookDeadLetters",
            "Webhook dead letters (Tollgate)",
            dead_letters,
        )
        .query::<ListQuery>();
    routes
        .post(
            "/v1/tollgate/webhooks/redrive",
            "redriveWebhooks",
            "Re-drive one webhook dead letter or all (Tollgate)",
            redrive,
        )
        .body::<RedriveBody>();
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Page size, 1-100 (25 unless given).
    limit: Option<usize>,
    /// The cursor a previous page answered.
    next_page: Option<String>,
}

async fn pending(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> ApiResult<HttpResponse> {
    list_effects(&state, &query, EffectPlace::Pending)
}

async fn dead_letters(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> ApiResult<HttpResponse> {
    list_effects(&state, &query, EffectPlace::DeadLetter)
}

fn list_effects(
    state: &AppState,
    query: &ListQuery,
    place: EffectPlace,
) -> ApiResult<HttpResponse> {
    let limit = wire::page_limit(query.limit)?;
    let after = wire::parse_opt_id(
        "next_page",
        query.next_page.as_deref().filter(|c| !c.is_empty()),
    )?
    .map(|id| *id.as_bytes());
    let (entries, next) = state.engine.webhook_entries(place, after, limit)?;
    let items = entries
        .iter()
        .map(|(id, entry)| render_entry(*id, entry, place))
        .collect();
    Ok(wire::page(
        items,
        next.map(|id| Id::from_bytes(id).to_string()),
    ))
}

fn render_entry(id: Uuid16, entry: &OutboxEntry, place: EffectPlace) -> Value {
    let OutboxEffect::Webhook {
        webhook_id,
        event_type,
        destination_url,
        ..
    } = &entry.effect
    else {
        return Value::Null;
    };
    let mut value = json!({
        "id": Id::from_bytes(id).to_string(),
        "webhook_id": webhook_id.to_string(),
        "type": event_type,
        "destination": redacted(destination_url),
        "status": match place {
            EffectPlace::Pending => "PENDING",
            EffectPlace::DeadLetter => "DEAD_LETTER",
        },
        "attempts": entry.attempts,
        "last_status": entry.last_status,
        "last_error": entry.last_error,
        "created_at": wire::time(Timestamp(entry.created_at_ms)),
    });
    if place == EffectPlace::Pending {
        value["next_attempt_at"] = json!(wire::time(Timestamp(entry.next_attempt_at_ms)));
    }
    value
}

async fn delivered(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> ApiResult<HttpResponse> {
    let limit = wire::page_limit(query.limit)?;
    let after = match query.next_page.as_deref() {
        None | Some("") => None,
        Some(cursor) => Some(
            hex::decode(cursor)
                .ok()
                .filter(|k| k.starts_with(DELIVERED_PREFIX))
                .ok_or_else(|| {
                    ApiError::BadRequest("next_page: not a cursor of this list".into())
                })?,
        ),
    };
    let mut records = state
        .engine
        .delivered_webhooks(after.as_deref(), limit + 1)?;
    let more = records.len() > limit;
    records.truncate(limit);
    let next_page = match (more, records.last()) {
        (true, Some((key, _))) => Some(hex::encode(key)),
        _ => None,
    };
    Ok(wire::page(
        records.iter().map(|(_, r)| render_delivered(r)).collect(),
        next_page,
    ))
}

fn render_delivered(record: &DeliveredWebhook) -> Value {
    json!({
        "id": Id::from_bytes(record.id).to_string(),
        "webhook_id": record.webhook_id.to_string(),
        "type": record.event_type,
        "destination": redacted(&record.destination_url),
        "status": "DELIVERED",
        "attempts": record.attempts,
        "last_status": record.status,
        "created_at": wire::time(Timestamp(record.created_at_ms)),
        "delivered_at": wire::time(Timestamp(record.delivered_at_ms)),
    })
}

/// A destination URL without what may be a credential: user info and query string (a `read`
/// token sees these lists).
fn redacted(url: &str) -> String {
    crate::actors::webhook::shown_destination(url)
}

/// `POST /v1/tollgate/webhooks/redrive`: `{"id"}` or `{"all": true}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RedriveBody {
    /// The dead letter to re-drive.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// Re-drive every dead letter (at most 1,000 per call; `more` says to call again).
    #[serde(default)]
    pub all: Option<bool>,
}

async fn redrive(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let request: RedriveBody = request::read(&body)?;
    let all = request.all.unwrap_or(false);
    match (request.id.map(|id| id.0), all) {
        (Some(id), false) => {
            if !state.engine.redrive_webhook(*id.as_bytes()).await? {
                return Err(ApiError::NotFound(format!(
                    "no webhook dead letter with id {id}"
                )));
            }
            Ok(wire::data(json!({"redriven": [id.to_string()]})))
        }
        (None, true) => {
            // Page through the dead letters; each re-driven one leaves them, so the cursor
            // only skips what could not be moved. At most `REDRIVE_ALL_MAX` per call (each is
            // a synced write): `more` says to call again.
            let mut redriven = Vec::new();
            let mut after = None;
            let more = loop {
                let room = REDRIVE_ALL_MAX - redriven.len();
                let (entries, next) =
                    state
                        .engine
                        .webhook_entries(EffectPlace::DeadLetter, after, room.min(100))?;
                for (id, _) in &entries {
                    if state.engine.redrive_webhook(*id).await? {
                        redriven.push(Id::from_bytes(*id).to_string());
                    }
                }
                match next {
                    Some(_) if redriven.len() >= REDRIVE_ALL_MAX => break true,
                    Some(next) => after = Some(next),
                    None => break false,
                }
            };
            Ok(wire::data(json!({ "redriven": redriven, "more": more })))
        }
        _ => Err(ApiError::BadRequest(
            "give either id (one dead letter) or \"all\": true".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn destinations_are_shown_without_user_info_or_query() {
        assert_eq!(
            redacted("https://user:secret@hooks.example.com:8443/in?token=abc#x"),
            "https://hooks.example.com:8443/in"
        );
        assert_eq!(
            redacted("http://127.0.0.1:9000/hooks"),
            "http://127.0.0.1:9000/hooks"
        );
        assert_eq!(redacted("http://a@b@host"), "http://host");
        assert_eq!(redacted("not a url?x=1"), "not a url");
    }
}

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

use super::openapi::{Data, Page, Routes};
use actix_web::{HttpResponse, web};
use serde::Deserialize;

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
        .query::<ListQuery>()
        .answers::<Page<DeliveryView>>();
    routes
        .get(
            "/v1/tollgate/webhooks/delivered",
            "listDeliveredWebhooks",
            "Webhook deliveries of the retention window, oldest first (Tollgate)",
            delivered,
        )
        .query::<ListQuery>()
        .answers::<Page<DeliveryView>>();
    routes
        .get(
            "/v1/tollgate/webhooks/dead-letters",
            "listWebhookDeadLetters",
            "Webhook dead letters (Tollgate)",
            dead_letters,
        )
        .query::<ListQuery>()
        .answers::<Page<DeliveryView>>();
    routes
        .post(
            "/v1/tollgate/webhooks/redrive",
            "redriveWebhooks",
            "Re-drive one webhook dead letter or all (Tollgate)",
            redrive,
        )
        .body::<RedriveBody>()
        .answers::<Data<RedrivenView>>();
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
    // Only webhooks are listed (the outbox holds nothing else under these places today).
    let items: Vec<DeliveryView> = entries
        .iter()
        .filter_map(|(id, entry)| render_entry(*id, entry, place))
        .collect();
    Ok(wire::page(
        items,
        next.map(|id| Id::from_bytes(id).to_string()),
    ))
}

fn render_entry(id: Uuid16, entry: &OutboxEntry, place: EffectPlace) -> Option<DeliveryView> {
    let OutboxEffect::Webhook {
        webhook_id,
        event_type,
        destination_url,
        ..
    } = &entry.effect
    else {
        return None;
    };
    Some(DeliveryView {
        id: Id::from_bytes(id).to_string(),
        webhook_id: webhook_id.to_string(),
        event_type: event_type.clone(),
        destination: redacted(destination_url),
        status: match place {
            EffectPlace::Pending => "PENDING",
            EffectPlace::DeadLetter => "DEAD_LETTER",
        },
        attempts: entry.attempts,
        last_status: entry.last_status,
        last_error: Some(entry.last_error.clone()),
        created_at: wire::time(Timestamp(entry.created_at_ms)),
        next_attempt_at: (place == EffectPlace::Pending)
            .then(|| wire::time(Timestamp(entry.next_attempt_at_ms))),
        delivered_at: None,
    })
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

fn render_delivered(record: &DeliveredWebhook) -> DeliveryView {
    DeliveryView {
        id: Id::from_bytes(record.id).to_string(),
        webhook_id: record.webhook_id.to_string(),
        event_type: record.event_type.clone(),
        destination: redacted(&record.destination_url),
        status: "DELIVERED",
        attempts: record.attempts,
        last_status: Some(record.status),
        last_error: None,
        created_at: wire::time(Timestamp(record.created_at_ms)),
        next_attempt_at: None,
        delivered_at: Some(wire::time(Timestamp(record.delivered_at_ms))),
    }
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

/// The dead letters re-driven (back to pending, retried from now).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RedrivenView {
    #[schema(value_type = Vec<Uuid>)]
    pub redriven: Vec<String>,
    /// `all`: more dead letters remain; call again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub more: Option<bool>,
}

/// A webhook delivery: pending, dead-lettered or delivered.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// The delivery's id (one per webhook and destination); re-drives a dead letter.
    #[schema(value_type = Uuid)]
    pub id: String,
    /// The webhook's own id (the payload's `id`), the same for every destination.
    #[schema(value_type = Uuid)]
    pub webhook_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The URL without user info or query string.
    pub destination: String,
    /// PENDING, DEAD_LETTER or DELIVERED.
    pub status: &'static str,
    pub attempts: u32,
    /// The receiver's last HTTP status.
    pub last_status: Option<u16>,
    /// Pending and dead letters: why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Option<String>>,
    #[schema(value_type = crate::http::request::Time)]
    pub created_at: String,
    /// Pending only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::http::request::Time>)]
    pub next_attempt_at: Option<String>,
    /// Delivered only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::http::request::Time>)]
    pub delivered_at: Option<String>,
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
            Ok(wire::data(RedrivenView {
                redriven: vec![id.to_string()],
                more: None,
            }))
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
            Ok(wire::data(RedrivenView {
                redriven,
                more: Some(more),
            }))
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
        // Metric labels keep the origin only.
        assert_eq!(
            crate::actors::webhook::destination_origin(
                "https://user:secret@hooks.slack.com/services/T0/B0/SECRET?x=1"
            ),
            "https://hooks.slack.com"
        );
    }
}

//! `POST /v1/ingest`: a JSON array of 1-100 usage events, all-or-nothing.
//!
//! The whole batch is validated before anything is appended; the first bad event is named by
//! index and field in a 400. A 200 (empty body) means every event is durable in the log
//! (deduplicated by `transaction_id` for 34 days); rating follows within milliseconds.

use super::openapi::Routes;
use std::borrow::Cow;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Deserialize;
use serde_json::Value;

use super::AppState;
use super::body::{BoundedBody, Encoding, collect};
use super::error::{ApiError, ApiResult};
use crate::actors::{EngineError, IngestEvent};
use crate::domain::catalog::Aggregation;
use crate::domain::ids::key_problem;
use crate::domain::ids::{MS_PER_DAY, MS_PER_HOUR};
use crate::domain::money::parse_exact_decimal;
use crate::domain::usage::UsageEvent;
use crate::domain::{Catalog, Timestamp, bounds};

/// Metronome's batch limits.
pub const EVENTS_PER_REQUEST_MAX: usize = 100;
pub const TRANSACTION_ID_CHARS_MAX: usize = 128;
/// Events may be back-dated this far (Metronome: 34 days) ...
pub const BACKDATE_MAX_MS: i64 = 34 * MS_PER_DAY;
/// ... and dated this far ahead.
pub const FUTURE_MAX_MS: i64 = 24 * MS_PER_HOUR;

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .post(
            "/v1/ingest",
            "ingest",
            "Ingest 1-100 usage events; 200 with an empty body once durable",
            ingest,
        )
        .body_list::<WellFormedEvent<'static>>()
        .answers::<super::openapi::Empty>();
}

/// Reads a request body, inflated per Content-Encoding in bounded steps, up to `limit` bytes
/// before and after inflation (see [`super::body`]). Behind Tollgate's edge middleware the body
/// is already inflated and this only reads it; the bench's null server calls it directly.
///
/// # Errors
/// 413 over the limit, 400 for a broken stream, bad gzip or an unknown encoding.
pub async fn read_body(
    request: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> ApiResult<web::BytesMut> {
    let encoding = Encoding::from_headers(request.headers())?;
    collect(BoundedBody::new(payload.into_inner(), encoding, limit)).await
}

#[derive(Deserialize)]
struct RawEvent {
    transaction_id: Option<Value>,
    customer_id: Option<Value>,
    event_type: Option<Value>,
    timestamp: Option<Value>,
    properties: Option<Value>,
}

/// The ingest route. A refusal for load (429) also says when to come back in milliseconds
/// (`retry-after-ms`, which Metronome's SDK honours before `Retry-After`): the apply lag bound
/// (the time in which a partition applies what it holds) plus a random part up to as much
/// again, so the retry finds room without the client waiting the whole second `Retry-After`
/// can express.
async fn ingest(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    match accept(&state, request, payload).await {
        Err(ApiError::Engine(EngineError::Overloaded)) => {
            let mut response = ApiError::from(EngineError::Overloaded).error_response();
            // The bound, plus up to as much again at random: clients shed together do not
            // all come back in the same millisecond.
            let bound = state.engine.settings().apply_lag_max_ms;
            let wait_ms = bound + rand::random_range(0..bound.max(1));
            if let Ok(value) = HeaderValue::from_str(&wait_ms.to_string()) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static("retry-after-ms"), value);
            }
            Ok(response)
        }
        other => other,
    }
}

async fn accept(
    state: &AppState,
    request: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    state.engine.check_ready()?;
    if state.engine.is_saturated() {
        return Err(EngineError::Overloaded.into());
    }
    let body = read_body(&request, payload, state.body_limit).await?;
    let events = parse_batch(&body, state.engine.now_ms())?;
    check_quantities(&events, &state.engine.catalog())?;
    state.engine.ingest(events).await?;
    Ok(HttpResponse::Ok().finish())
}

/// An event exactly as a well-formed batch carries it: decoded straight into these types, with
/// no intermediate `Value` tree. Anything that does not fit goes to the general path, which
/// names the problem.
/// It is also the documented shape of a usage event (`POST /v1/ingest` takes a list of 1-100).
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = UsageEvent)]
struct WellFormedEvent<'a> {
    /// Unique per event: a repeat within the 34-day window is counted once.
    transaction_id: String,
    /// The customer's id or one of its ingest aliases.
    customer_id: String,
    /// Matched by billable metrics.
    event_type: String,
    /// RFC 3339, at most 34 days in the past and 1 day in the future.
    #[serde(borrow)]
    #[schema(value_type = String, format = DateTime)]
    timestamp: Cow<'a, str>,
    /// Values billable metrics filter on, group by and sum (numbers as JSON numbers or
    /// numeric strings, read exactly).
    #[schema(value_type = Option<Object>)]
    properties: Option<serde_json::Map<String, Value>>,
}

/// Parses and validates a whole batch.
///
/// # Errors
/// 400 naming the first bad event's index and field.
pub fn parse_batch(body: &[u8], now_ms: i64) -> ApiResult<Vec<IngestEvent>> {
    if let Some(events) = parse_well_formed(body, now_ms) {
        return Ok(events);
    }
    parse_any(body, now_ms)
}

/// The fast path: `None` for anything but a valid batch (the general path then explains what
/// is wrong), so both accept exactly the same batches.
fn parse_well_formed(body: &[u8], now_ms: i64) -> Option<Vec<IngestEvent>> {
    let raw: Vec<WellFormedEvent<'_>> = serde_json::from_slice(body).ok()?;
    if raw.is_empty() || raw.len() > EVENTS_PER_REQUEST_MAX {
        return None;
    }
    let mut events = Vec::with_capacity(raw.len());
    for event in raw {
        let valid = !event.transaction_id.is_empty()
            && event.transaction_id.chars().count() <= TRANSACTION_ID_CHARS_MAX
            && key_problem(&event.transaction_id).is_none()
            && key_problem(&event.customer_id).is_none()
            && !event.event_type.is_empty();
        if !valid {
            return None;
        }
        let timestamp = Timestamp::parse_rfc3339(&event.timestamp)?;
        if !in_window(timestamp, now_ms) {
            return None;
        }
        events.push(IngestEvent {
            customer_key: event.customer_id,
            event: UsageEvent {
                transaction_id: event.transaction_id,
                event_type: event.event_type,
                timestamp,
                properties: event.properties.map(properties_text).unwrap_or_default(),
            },
        });
    }
    Some(events)
}

/// Refuses a batch in which a value some SUM or MAX metric would aggregate is beyond
/// [`bounds::QUANTITY_MAX`] (SPEC 2.1: refused at the edge, never later inside the engine).
///
/// # Errors
/// 400 naming the first such event and property.
pub fn check_quantities(events: &[IngestEvent], catalog: &Catalog) -> ApiResult<()> {
    for (i, ingest) in events.iter().enumerate() {
        let event = &ingest.event;
        for metric in catalog.candidate_metrics(&event.event_type) {
            if !matches!(metric.aggregation, Aggregation::Sum | Aggregation::Max) {
                continue;
            }
            let Some(key) = metric.aggregation_key.as_deref() else {
                continue;
            };
            let Some(raw) = event.property(key) else {
                continue;
            };
            let out_of_bounds = parse_exact_decimal(raw)
                .map(|quantity| !bounds::quantity_in_bounds(quantity))
                .unwrap_or(false);
            if out_of_bounds && metric.matches(event) {
                return Err(bad(
                    i,
                    &format!("properties.{key}"),
                    &format!(
                        "must be between -{max} and {max} (the largest quantity one event may carry)",
                        max = bounds::QUANTITY_MAX
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Whether an event's time is within what Metronome accepts.
fn in_window(timestamp: Timestamp, now_ms: i64) -> bool {
    timestamp.millis() >= now_ms - BACKDATE_MAX_MS && timestamp.millis() <= now_ms + FUTURE_MAX_MS
}

/// Properties as text, `null`s dropped.
fn properties_text(map: serde_json::Map<String, Value>) -> Vec<(String, String)> {
    map.into_iter()
        .filter_map(|(key, value)| property_text(value).map(|text| (key, text)))
        .collect()
}

/// The general path: any JSON, checked field by field so a 400 names the first bad one.
fn parse_any(body: &[u8], now_ms: i64) -> ApiResult<Vec<IngestEvent>> {
    let raw: Vec<Value> = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body must be a JSON array of events: {e}")))?;
    if raw.is_empty() || raw.len() > EVENTS_PER_REQUEST_MAX {
        return Err(ApiError::BadRequest(format!(
            "a batch holds 1 to {EVENTS_PER_REQUEST_MAX} events, got {}",
            raw.len()
        )));
    }
    let mut events = Vec::with_capacity(raw.len());
    for (i, value) in raw.into_iter().enumerate() {
        events.push(parse_event(i, value, now_ms)?);
    }
    Ok(events)
}

fn bad(i: usize, field: &str, why: &str) -> ApiError {
    ApiError::BadRequest(format!("event[{i}].{field}: {why}"))
}

fn required_string(i: usize, field: &str, value: Option<Value>) -> ApiResult<String> {
    match value {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(bad(i, field, "must not be empty")),
        Some(Value::Null) | None => Err(bad(i, field, "is required")),
        Some(_) => Err(bad(i, field, "must be a string")),
    }
}

fn parse_event(i: usize, value: Value, now_ms: i64) -> ApiResult<IngestEvent> {
    if !value.is_object() {
        return Err(ApiError::BadRequest(format!(
            "event[{i}]: must be an object"
        )));
    }
    let raw: RawEvent = serde_json::from_value(value)
        .map_err(|e| ApiError::BadRequest(format!("event[{i}]: {e}")))?;
    let transaction_id = required_string(i, "transaction_id", raw.transaction_id)?;
    if transaction_id.chars().count() > TRANSACTION_ID_CHARS_MAX {
        return Err(bad(
            i,
            "transaction_id",
            &format!("must be at most {TRANSACTION_ID_CHARS_MAX} characters"),
        ));
    }
    if let Some(problem) = key_problem(&transaction_id) {
        return Err(bad(i, "transaction_id", problem));
    }
    let customer_id = required_string(i, "customer_id", raw.customer_id)?;
    if let Some(problem) = key_problem(&customer_id) {
        return Err(bad(i, "customer_id", problem));
    }
    let event_type = required_string(i, "event_type", raw.event_type)?;
    let timestamp_text = required_string(i, "timestamp", raw.timestamp)?;
    let timestamp = Timestamp::parse_rfc3339(&timestamp_text).ok_or_else(|| {
        bad(
            i,
            "timestamp",
            "must be RFC 3339, e.g. 2025-01-23T01:23:45Z",
        )
    })?;
    if timestamp.millis() < now_ms - BACKDATE_MAX_MS {
        return Err(bad(i, "timestamp", "is more than 34 days in the past"));
    }
    if timestamp.millis() > now_ms + FUTURE_MAX_MS {
        return Err(bad(i, "timestamp", "is more than 24 hours in the future"));
    }
    debug_assert!(in_window(timestamp, now_ms));
    let properties = match raw.properties {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => properties_text(map),
        Some(_) => return Err(bad(i, "properties", "must be an object")),
    };
    Ok(IngestEvent {
        customer_key: customer_id,
        event: UsageEvent {
            transaction_id,
            event_type,
            timestamp,
            properties,
        },
    })
}

/// A property value as text: strings as they are, numbers with their exact digits (serde_json
/// keeps them under `arbitrary_precision`), booleans as `true`/`false`, nested values as JSON;
/// `null` means absent.
fn property_text(value: Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000_000;

    fn ts(offset_ms: i64) -> String {
        Timestamp(NOW + offset_ms).to_rfc3339()
    }

    fn message(result: ApiResult<Vec<IngestEvent>>) -> String {
        match result {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_batch_keeps_exact_property_values() {
        let body = format!(
            r#"[{{"transaction_id":"a","customer_id":"c","event_type":"t","timestamp":"{}","properties":{{"n":0.1000000000000000055511151231257827,"s":"x","b":true,"z":null}},"extra":1}}]"#,
            ts(0)
        );
        let events = parse_batch(body.as_bytes(), NOW).unwrap();
        let props = &events[0].event.properties;
        assert!(props.contains(&("n".into(), "0.1000000000000000055511151231257827".into())));
        assert!(props.contains(&("b".into(), "true".into())));
        assert!(!props.iter().any(|(k, _)| k == "z"));
    }

    #[test]
    fn both_paths_read_a_valid_batch_the_same() {
        let body = format!(
            r#"[{{"transaction_id":"a\u00e9","customer_id":"c","event_type":"t","timestamp":"{t}","properties":{{"z":"1","a":2.50,"n":null,"o":{{"k":[1]}},"a":3}}}},
               {{"transaction_id":"b","customer_id":"c2","event_type":"t","timestamp":"{t}","properties":null,"extra":{{"x":1}}}},
               {{"transaction_id":"{long}","customer_id":"c","event_type":"t","timestamp":"{t}"}}]"#,
            t = ts(0),
            long = "é".repeat(TRANSACTION_ID_CHARS_MAX),
        );
        let fast = parse_well_formed(body.as_bytes(), NOW).expect("a valid batch");
        let general = parse_any(body.as_bytes(), NOW).unwrap();
        assert_eq!(fast, general);
        assert_eq!(fast[0].event.transaction_id, "aé");
        assert_eq!(
            fast[0].event.properties,
            vec![
                ("a".to_owned(), "3".to_owned()),
                ("o".to_owned(), r#"{"k":[1]}"#.to_owned()),
                ("z".to_owned(), "1".to_owned()),
            ]
        );
        // Duplicated, wrongly typed or out-of-window fields leave it to the general path.
        for odd in [
            format!(
                r#"[{{"transaction_id":"a","transaction_id":"b","customer_id":"c","event_type":"t","timestamp":"{}"}}]"#,
                ts(0)
            ),
            format!(
                r#"[{{"transaction_id":"a","customer_id":"c","event_type":"t","timestamp":"{}","properties":"x"}}]"#,
                ts(0)
            ),
            format!(
                r#"[{{"transaction_id":"a","customer_id":"c","event_type":"t","timestamp":"{}"}}]"#,
                ts(FUTURE_MAX_MS + 1)
            ),
        ] {
            assert!(parse_well_formed(odd.as_bytes(), NOW).is_none(), "{odd}");
        }
    }

    #[test]
    fn the_first_bad_event_is_named_by_index_and_field() {
        let good = format!(
            r#"{{"transaction_id":"a","customer_id":"c","event_type":"t","timestamp":"{}"}}"#,
            ts(0)
        );
        let cases = [
            (
                format!(r#"[{good},{{"customer_id":"c","event_type":"t","timestamp":"{}"}}]"#, ts(0)),
                "event[1].transaction_id: is required",
            ),
            (
                format!(r#"[{good},{{"transaction_id":"{}","customer_id":"c","event_type":"t","timestamp":"{}"}}]"#, "x".repeat(129), ts(0)),
                "event[1].transaction_id: must be at most 128",
            ),
            (
                format!(r#"[{{"transaction_id":"a","customer_id":"","event_type":"t","timestamp":"{}"}}]"#, ts(0)),
                "event[0].customer_id: must not be empty",
            ),
            (
                format!(r#"[{{"transaction_id":"a","customer_id":"c","event_type":"t","timestamp":"{}"}}]"#, ts(-35 * MS_PER_DAY)),
                "event[0].timestamp: is more than 34 days in the past",
            ),
            (
                format!(r#"[{{"transaction_id":"a","customer_id":"c","event_type":"t","timestamp":"{}"}}]"#, ts(25 * MS_PER_HOUR)),
                "event[0].timestamp: is more than 24 hours",
            ),
            (
                r#"[{"transaction_id":"a","customer_id":"c","event_type":"t","timestamp":"yesterday"}]"#.to_owned(),
                "event[0].timestamp: must be RFC 3339",
            ),
            (
                format!(r#"[{{"transaction_id":7,"customer_id":"c","event_type":"t","timestamp":"{}"}}]"#, ts(0)),
                "event[0].transaction_id: must be a string",
            ),
            (
                format!(r#"[{{"transaction_id":"a","customer_id":"c","event_type":"t","timestamp":"{}","properties":[1]}}]"#, ts(0)),
                "event[0].properties: must be an object",
            ),
            ("[]".to_owned(), "a batch holds 1 to 100 events, got 0"),
            ("{}".to_owned(), "body must be a JSON array"),
            ("[1]".to_owned(), "event[0]: must be an object"),
        ];
        for (body, expected) in cases {
            assert!(
                parse_well_formed(body.as_bytes(), NOW).is_none(),
                "the fast path accepted {body}"
            );
            let got = message(parse_batch(body.as_bytes(), NOW));
            assert!(got.starts_with(expected), "{got} vs {expected}");
        }
        let too_many = format!("[{}]", vec![good; 101].join(","));
        assert!(message(parse_batch(too_many.as_bytes(), NOW)).contains("got 101"));
    }
}

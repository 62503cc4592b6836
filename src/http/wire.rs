//! Wire helpers shared by the endpoints: envelopes, cursor pages, and the parsers of path and
//! query-string parameters (bodies are read by `request`) with a 400 naming the parameter.

use actix_web::HttpResponse;
use serde::Serialize;

use super::error::{ApiError, ApiResult};
use crate::domain::{Id, Timestamp};

/// Largest page the API returns (Metronome caps `limit` at 100).
pub const PAGE_LIMIT_MAX: usize = 100;
/// Page size when the request names none.
pub const PAGE_LIMIT_DEFAULT: usize = 25;

/// `200 {"data": ...}`.
pub fn data<T: Serialize>(value: T) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "data": value }))
}

/// The answer of a create, archive or void: the object's id.
#[derive(Serialize, utoipa::ToSchema)]
pub struct IdView {
    #[schema(value_type = super::request::Uuid)]
    pub id: String,
}

/// `200 {"data": {"id": ...}}`.
pub fn id_response(id: Id) -> HttpResponse {
    data(IdView { id: id.to_string() })
}

/// A cursor page: `{"data": [...], "next_page": "<cursor>" | null}`. `next_page` is null on the
/// last page (the SDK keeps fetching while it is non-empty).
pub fn page<T: Serialize>(items: Vec<T>, next_page: Option<String>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "data": items, "next_page": next_page }))
}

/// The page size a request asked for, capped.
///
/// # Errors
/// 400 for zero.
pub fn page_limit(limit: Option<usize>) -> ApiResult<usize> {
    match limit {
        None => Ok(PAGE_LIMIT_DEFAULT),
        Some(0) => Err(ApiError::BadRequest("limit: must be at least 1".into())),
        Some(n) => Ok(n.min(PAGE_LIMIT_MAX)),
    }
}

/// Pages an already sorted list by an id cursor: items after the one whose key equals the
/// cursor. Returns the page and the next cursor (the last item's key) when more remain.
pub fn page_after<T>(
    items: Vec<T>,
    cursor: Option<&str>,
    limit: usize,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let start = match cursor {
        Some(c) if !c.is_empty() => items
            .iter()
            .position(|item| key(item).as_str() > c)
            .unwrap_or(items.len()),
        _ => 0,
    };
    let total = items.len();
    let page: Vec<T> = items.into_iter().skip(start).take(limit).collect();
    let next = if start + page.len() < total {
        page.last().map(&key)
    } else {
        None
    };
    (page, next)
}

/// A required id field.
///
/// # Errors
/// 400 naming the field.
pub fn parse_id(field: &str, text: &str) -> ApiResult<Id> {
    Id::parse(text).ok_or_else(|| ApiError::BadRequest(format!("{field}: {text:?} is not a UUID")))
}

pub fn parse_opt_id(field: &str, text: Option<&str>) -> ApiResult<Option<Id>> {
    text.map(|t| parse_id(field, t)).transpose()
}

/// A required RFC 3339 timestamp field.
///
/// # Errors
/// 400 naming the field.
pub fn parse_time(field: &str, text: &str) -> ApiResult<Timestamp> {
    Timestamp::parse_rfc3339(text).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{field}: {text:?} is not an RFC 3339 timestamp like 2025-01-01T00:00:00Z"
        ))
    })
}

pub fn parse_opt_time(field: &str, text: Option<&str>) -> ApiResult<Option<Timestamp>> {
    text.map(|t| parse_time(field, t)).transpose()
}

/// Case-insensitive enum parsing (Metronome accepts `PREPAID` and `prepaid`).
///
/// # Errors
/// 400 listing the accepted values.
pub fn parse_enum<T: Copy>(field: &str, text: &str, choices: &[(&str, T)]) -> ApiResult<T> {
    choices
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            ApiError::BadRequest(format!(
                "{field}: {text:?} is not one of {}",
                names.join(", ")
            ))
        })
}

/// A timestamp as Metronome prints it.
pub fn time(t: Timestamp) -> String {
    t.to_rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_cursor_and_end_with_none() {
        let items: Vec<String> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (p1, c1) = page_after(items.clone(), None, 2, Clone::clone);
        assert_eq!(
            (p1, c1.clone()),
            (vec!["a".to_string(), "b".into()], Some("b".into()))
        );
        let (p2, c2) = page_after(items.clone(), c1.as_deref(), 2, Clone::clone);
        assert_eq!(
            (p2, c2.clone()),
            (vec!["c".to_string(), "d".into()], Some("d".into()))
        );
        let (p3, c3) = page_after(items.clone(), c2.as_deref(), 2, Clone::clone);
        assert_eq!((p3, c3), (vec!["e".to_string()], None));
        let (p4, c4) = page_after(items, Some("e"), 2, Clone::clone);
        assert!(p4.is_empty() && c4.is_none());
    }

    #[test]
    fn limits_are_capped_and_zero_is_refused() {
        assert_eq!(page_limit(None).unwrap(), 25);
        assert_eq!(page_limit(Some(1000)).unwrap(), 100);
        assert!(page_limit(Some(0)).is_err());
    }

    #[test]
    fn enums_are_case_insensitive() {
        let choices = [("PREPAID", 1), ("POSTPAID", 2)];
        assert_eq!(parse_enum("type", "prepaid", &choices).unwrap(), 1);
        assert!(parse_enum("type", "other", &choices).is_err());
    }
}

//! The audit log (SPEC 3.1): every mutating call (one needing the `write` or `operator` scope)
//! made with an accepted token, refused ones (403) included, recorded durably with its time,
//! the token's identity (never the token), method, path, the ids it names and its status.
//!
//! **Before, then after.** A call's record is written (synced) before the call runs, with the
//! ids its body names; if that write fails the call does not run (503, and the engine stops:
//! storage is fail-stop). After the call its status and the id it created (`data.id` of the
//! answer) are added to the same record. A record without a status is a call that was running
//! when the server stopped: the log says it was made, and its effects (if any) are in the
//! objects it names.
//!
//! Records live in `meta` under `audit/<at ms><seq>` (both big-endian), so they list in time
//! order; `seq` counts on from the newest stored record at the first call after a start.
//! Kept without expiry: a record is about 200 bytes.
//!
//! `GET /v1/tollgate/audit`: oldest first in cursor pages; filters `starting_on`,
//! `ending_before` (RFC 3339) and `token` (an identity).

use std::sync::{Mutex, PoisonError};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::body::{BoundedBody, Encoding, collect};
use super::error::{ApiError, ApiResult};
use super::wire;
use crate::actors::{Engine, EngineError};
use crate::domain::Timestamp;
use crate::storage::{self, StorageError, Store};

pub const AUDIT_PREFIX: &[u8] = b"audit/";
const VERSION: u8 = 1;
/// Body fields whose values are recorded as the ids a call names.
const TARGET_FIELDS: [&str; 10] = [
    "id",
    "customer_id",
    "contract_id",
    "workflow_id",
    "invoice_id",
    "commit_id",
    "rate_card_id",
    "product_id",
    "billable_metric_id",
    "uniqueness_key",
];
/// Longest id value recorded (longer ones are cut, with `…`).
const TARGET_CHARS_MAX: usize = 200;
/// Largest answer read for the id it created; bigger answers are passed on unread.
const ANSWER_BYTES_MAX: u64 = 64 * 1024;

/// One audited call.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: u64,
    pub at_ms: i64,
    /// The token's identity (`auth::TokenConfig::identity`).
    pub token: String,
    pub method: String,
    pub path: String,
    /// `(field, value)` for each id the request body (and then the answer's `data`) named.
    pub targets: Vec<(String, String)>,
    /// The status answered; `None` while the call runs, or when the server stopped before it
    /// answered.
    pub status: Option<u16>,
}

impl AuditRecord {
    fn key(&self) -> Vec<u8> {
        record_key(self.at_ms, self.seq)
    }
}

fn record_key(at_ms: i64, seq: u64) -> Vec<u8> {
    let at = u64::try_from(at_ms).unwrap_or(0).to_be_bytes();
    [AUDIT_PREFIX, &at[..], &seq.to_be_bytes()[..]].concat()
}

/// Hands out record seqs; the first call after a start reads the newest stored record.
#[derive(Default)]
pub struct AuditLog {
    next_seq: Mutex<Option<u64>>,
}

impl AuditLog {
    fn next_seq(&self, engine: &Engine) -> Result<u64, EngineError> {
        let mut next = self.next_seq.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = match *next {
            Some(seq) => seq,
            None => engine
                .with_store("audit log read", newest_seq)?
                .map_or(1, |s| s + 1),
        };
        *next = Some(seq + 1);
        Ok(seq)
    }
}

fn newest_seq(store: &Store) -> Result<Option<u64>, StorageError> {
    let Some((_, value)) = store.meta_last_under(AUDIT_PREFIX)? else {
        return Ok(None);
    };
    let record: AuditRecord = storage::decode(VERSION, &value)?;
    Ok(Some(record.seq))
}

fn write(engine: &Engine, record: &AuditRecord) -> Result<(), EngineError> {
    engine.with_store("audit log write", |store| {
        let value = storage::encode(VERSION, record)?;
        store.meta_put(&record.key(), &value)
    })
}

/// Records a call refused for its scope (it did not run).
///
/// # Errors
/// Storage errors (the engine stops).
pub fn record_refusal(state: &AppState, caller: &Caller, req: &ServiceRequest) -> ApiResult<()> {
    let record = AuditRecord {
        seq: state.audit.next_seq(&state.engine)?,
        at_ms: state.engine.now_ms(),
        token: caller.identity.clone(),
        method: req.method().to_string(),
        path: req.path().to_owned(),
        targets: Vec::new(),
        status: Some(403),
    };
    Ok(write(&state.engine, &record)?)
}

/// Runs a mutating call between its two records (see the module docs).
///
/// # Errors
/// Body read errors (4xx, not recorded: nothing ran) and storage errors before the call.
pub async fn around(
    state: web::Data<AppState>,
    caller: Caller,
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // The edge layer inflated the body already (no `Content-Encoding` is left).
    let body = collect(BoundedBody::new(
        req.take_payload(),
        Encoding::Identity,
        state.body_limit,
    ))
    .await?
    .freeze();
    let mut record = AuditRecord {
        seq: state
            .audit
            .next_seq(&state.engine)
            .map_err(ApiError::from)?,
        at_ms: state.engine.now_ms(),
        token: caller.identity,
        method: req.method().to_string(),
        path: req.path().to_owned(),
        targets: serde_json::from_slice::<Value>(&body)
            .map(|v| targets_of(&v))
            .unwrap_or_default(),
        status: None,
    };
    let unwritten =
        crate::defects::active(crate::defects::Defect::AuditUnwritten) && record.seq % 4 == 0;
    if !unwritten {
        write(&state.engine, &record).map_err(ApiError::from)?;
    }
    req.set_payload(actix_web::dev::Payload::from(body));

    let response = next.call(req).await?.map_into_boxed_body();
    record.status = Some(response.status().as_u16());
    let (http_req, http_res) = response.into_parts();
    let (head, answer) = http_res.into_parts();
    let small =
        matches!(answer.size(), actix_web::body::BodySize::Sized(n) if n <= ANSWER_BYTES_MAX);
    let answer = if small {
        let bytes = actix_web::body::to_bytes(answer)
            .await
            .map_err(|_| ApiError::Engine(EngineError::Internal("response body".into())))?;
        if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
            for (field, id) in targets_of(&value["data"]) {
                if !record.targets.contains(&(field.clone(), id.clone())) {
                    record.targets.push((field, id));
                }
            }
        }
        BoxBody::new(bytes)
    } else {
        answer
    };
    // The call ran: its answer goes to the client even if the record cannot be completed (the
    // engine stops on the failure; the record stays without a status).
    if !unwritten {
        let _ = write(&state.engine, &record);
    }
    Ok(ServiceResponse::new(http_req, head.set_body(answer)))
}

/// The id fields of a JSON object, as strings.
fn targets_of(value: &Value) -> Vec<(String, String)> {
    let Some(object) = value.as_object() else {
        return Vec::new();
    };
    TARGET_FIELDS
        .iter()
        .filter_map(|&field| {
            let text = match object.get(field)? {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            let text = if text.chars().count() > TARGET_CHARS_MAX {
                let cut: String = text.chars().take(TARGET_CHARS_MAX).collect();
                format!("{cut}…")
            } else {
                text
            };
            Some((field.to_owned(), text))
        })
        .collect()
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/tollgate/audit", web::get().to(list));
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    next_page: Option<String>,
    starting_on: Option<String>,
    ending_before: Option<String>,
    token: Option<String>,
}

/// Records read per scan step while filtering by token.
const SCAN_PAGE: usize = 256;

async fn list(state: web::Data<AppState>, query: web::Query<ListQuery>) -> ApiResult<HttpResponse> {
    let limit = wire::page_limit(query.limit)?;
    let starting_on = wire::parse_opt_time("starting_on", query.starting_on.as_deref())?;
    let ending_before = wire::parse_opt_time("ending_before", query.ending_before.as_deref())?;
    let mut after = match query.next_page.as_deref() {
        None | Some("") => starting_on.map(|t| {
            // Just before the first key at that time.
            let mut key = record_key(t.millis(), 0);
            key.pop();
            key
        }),
        Some(cursor) => Some(
            hex::decode(cursor)
                .ok()
                .filter(|k| k.starts_with(AUDIT_PREFIX))
                .ok_or_else(|| {
                    ApiError::BadRequest("next_page: not a cursor of this list".into())
                })?,
        ),
    };
    let end = ending_before.map(|t| record_key(t.millis(), 0));
    let mut found: Vec<(Vec<u8>, AuditRecord)> = Vec::new();
    let mut more = false;
    'scan: loop {
        let page = state.engine.with_store("audit log list", |store| {
            store.meta_scan_page(AUDIT_PREFIX, after.as_deref(), SCAN_PAGE)
        })?;
        let exhausted = page.len() < SCAN_PAGE;
        for (key, value) in page {
            if end.as_ref().is_some_and(|end| key >= *end) {
                break 'scan;
            }
            after = Some(key.clone());
            let record: AuditRecord = storage::decode(VERSION, &value)
                .map_err(|e| ApiError::Engine(EngineError::Internal(format!("audit: {e}"))))?;
            if query.token.as_ref().is_some_and(|t| *t != record.token) {
                continue;
            }
            if found.len() == limit {
                more = true;
                break 'scan;
            }
            found.push((key, record));
        }
        if exhausted {
            break;
        }
    }
    let next_page = match (more, found.last()) {
        (true, Some((key, _))) => Some(hex::encode(key)),
        _ => None,
    };
    Ok(wire::page(
        found.iter().map(|(_, r)| render(r)).collect(),
        next_page,
    ))
}

fn render(record: &AuditRecord) -> Value {
    let targets: serde_json::Map<String, Value> = record
        .targets
        .iter()
        .map(|(field, id)| (field.clone(), json!(id)))
        .collect();
    json!({
        "seq": record.seq,
        "at": wire::time(Timestamp(record.at_ms)),
        "token": record.token,
        "method": record.method,
        "path": record.path,
        "targets": targets,
        "status": record.status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ids_a_body_names_are_its_targets() {
        let body = json!({
            "customer_id": "c-1",
            "contract_id": "k-1",
            "name": "not an id",
            "uniqueness_key": 7,
            "workflow_id": {"nested": true},
        });
        assert_eq!(
            targets_of(&body),
            vec![
                ("customer_id".to_owned(), "c-1".to_owned()),
                ("contract_id".to_owned(), "k-1".to_owned()),
                ("uniqueness_key".to_owned(), "7".to_owned()),
            ]
        );
        assert!(targets_of(&json!(["customer_id"])).is_empty());
        let long = "x".repeat(TARGET_CHARS_MAX + 5);
        let cut = &targets_of(&json!({ "id": long }))[0].1;
        assert_eq!(cut.chars().count(), TARGET_CHARS_MAX + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn records_list_in_time_then_seq_order() {
        assert!(record_key(1, 9) < record_key(2, 0));
        assert!(record_key(2, 1) < record_key(2, 2));
        // A clock before 1970 files at 0 instead of wrapping to the end.
        assert!(record_key(-5, 3) < record_key(1, 0));
    }
}

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
//! order; `seq` and the time only grow (see [`AuditLog::next`]) and count on from the newest
//! stored record at the first call after a start. Kept without expiry: a record is about 200
//! bytes. An `Idempotency-Key` replay is recorded too, marked `replayed`.
//!
//! `GET /v1/tollgate/audit`: oldest first in cursor pages; filters `starting_on`,
//! `ending_before` (RFC 3339) and `token` (an identity).

use super::openapi::{Page, Routes};
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
const TARGET_FIELDS: [&str; 11] = [
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
    // A backup's directory.
    "to",
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
    /// The token's identity (`AppState::identity`).
    pub token: String,
    pub method: String,
    /// The path the router matched (percent-decoded but for `%2F`, `%25`, `%2B`).
    pub path: String,
    /// `(field, value)` for each id the request body (and then the answer's `data`) named.
    pub targets: Vec<(String, String)>,
    /// The status answered; `None` while the call runs, or when the server stopped before it
    /// answered.
    pub status: Option<u16>,
    /// The answer was an `Idempotency-Key` replay: the call did not run again.
    pub replayed: bool,
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

/// Hands out record seqs and times; the first call after a start reads the newest stored
/// record.
#[derive(Default)]
pub struct AuditLog {
    /// The last `(seq, at_ms)` handed out.
    last: Mutex<Option<(u64, i64)>>,
}

impl AuditLog {
    /// The next `(seq, at_ms)`. Both only grow, whatever the clock does (a clock stepped back
    /// files records at the last time handed out), so the greatest key is the latest record and
    /// a restart counts on from it: no seq is ever given twice.
    fn next(&self, engine: &Engine) -> Result<(u64, i64), EngineError> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let (seq, at) = match *last {
            Some(last) => last,
            None => engine
                .with_store("audit log read", newest)?
                .unwrap_or((0, 0)),
        };
        let next = (seq + 1, engine.now_ms().max(at));
        *last = Some(next);
        Ok(next)
    }
}

fn newest(store: &Store) -> Result<Option<(u64, i64)>, StorageError> {
    let Some((_, value)) = store.meta_last_under(AUDIT_PREFIX)? else {
        return Ok(None);
    };
    let record: AuditRecord = storage::decode(VERSION, &value)?;
    Ok(Some((record.seq, record.at_ms)))
}

fn write(engine: &Engine, record: &AuditRecord) -> Result<(), EngineError> {
    engine.with_store("audit log write", |store| {
        let value = storage::encode(VERSION, record)?;
        store.meta_put(&record.key(), &value)
    })
}

fn new_record(
    state: &AppState,
    caller: &Caller,
    method: &Method,
    path: &str,
) -> Result<AuditRecord, EngineError> {
    let token = state.identity(caller)?;
    let (seq, at_ms) = state.audit.next(&state.engine)?;
    Ok(AuditRecord {
        seq,
        at_ms,
        token,
        method: method.to_string(),
        path: path.to_owned(),
        targets: Vec::new(),
        status: None,
        replayed: false,
    })
}

/// Records a call refused for its scope (it did not run).
///
/// # Errors
/// Storage errors (the engine stops).
pub fn record_refusal(
    state: &AppState,
    caller: &Caller,
    method: &Method,
    path: &str,
) -> ApiResult<()> {
    let mut record = new_record(state, caller, method, path)?;
    record.status = Some(403);
    Ok(write(&state.engine, &record)?)
}

/// Runs a mutating call between its two records (see the module docs).
///
/// # Errors
/// Body read errors (4xx, not recorded: nothing ran) and storage errors before the call.
pub async fn around(
    state: web::Data<AppState>,
    caller: Caller,
    path: String,
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
    let mut record = new_record(&state, &caller, req.method(), &path).map_err(ApiError::from)?;
    if let Ok(value) = serde_json::from_slice::<Value>(&body) {
        record.targets = targets_of(&value);
    }
    let unwritten =
        crate::defects::active(crate::defects::Defect::AuditUnwritten) && record.seq % 4 == 0;
    if !unwritten {
        write(&state.engine, &record).map_err(ApiError::from)?;
    }
    req.set_payload(actix_web::dev::Payload::from(body));
    // The call and its second record run as a task of their own: a client that hangs up does
    // not stop them half-way (the idempotency layer inside relies on the same).
    let run = actix_rt::spawn(async move {
        let response = match next.call(req).await {
            Ok(response) => response.map_into_boxed_body(),
            Err(error) => {
                // An inner layer's refusal (e.g. an `Idempotency-Key` in progress).
                record.status = Some(error.as_response_error().status_code().as_u16());
                if !unwritten {
                    let _ = write(&state.engine, &record);
                }
                return Err(error);
            }
        };
        record.status = Some(response.status().as_u16());
        record.replayed = response.headers().contains_key("idempotent-replayed");
        let (http_req, http_res) = response.into_parts();
        let (head, answer) = http_res.into_parts();
        let small = matches!(
            answer.size(),
            actix_web::body::BodySize::Sized(n) if n <= ANSWER_BYTES_MAX
        );
        let answer = if small {
            match actix_web::body::to_bytes(answer).await {
                Ok(bytes) => {
                    if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
                        for target in targets_of(&value["data"]) {
                            if !record.targets.contains(&target) {
                                record.targets.push(target);
                            }
                        }
                    }
                    BoxBody::new(bytes)
                }
                // The call ran; only its answer's body could not be read.
                Err(_) => BoxBody::new(actix_web::web::Bytes::new()),
            }
        } else {
            answer
        };
        // The call ran: its answer goes to the client even if the record cannot be completed
        // (the engine stops on the failure; the record stays without a status).
        if !unwritten {
            let _ = write(&state.engine, &record);
        }
        Ok(ServiceResponse::new(http_req, head.set_body(answer)))
    });
    run.await.map_err(|_| {
        actix_web::Error::from(ApiError::Engine(EngineError::Internal(
            "audited request task failed".into(),
        )))
    })?
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

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .get(
            "/v1/tollgate/audit",
            "listAudit",
            "Audited calls, oldest first (Tollgate)",
            list,
        )
        .query::<ListQuery>()
        .answers::<Page<AuditView>>();
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Page size, 1-100 (25 unless given).
    limit: Option<usize>,
    /// The cursor a previous page answered.
    next_page: Option<String>,
    /// Only calls at or after this time (RFC 3339).
    starting_on: Option<String>,
    /// Only calls before this time (RFC 3339).
    ending_before: Option<String>,
    /// Only calls made with this token (its name or fingerprint).
    token: Option<String>,
}

/// Records read per scan step while filtering by token.
const SCAN_PAGE: usize = 256;
/// Records one request reads at most: a `token` filter that matches little answers a short (or
/// empty) page with a `next_page` to go on from, rather than scanning the whole log at once.
const SCAN_MAX: usize = 10_000;

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
    let (mut more, mut scanned) = (false, 0usize);
    'scan: loop {
        let page = state.engine.with_store("audit log list", |store| {
            store.meta_scan_page(AUDIT_PREFIX, after.as_deref(), SCAN_PAGE)
        })?;
        let exhausted = page.len() < SCAN_PAGE;
        for (key, value) in page {
            if end.as_ref().is_some_and(|end| key >= *end) {
                break 'scan;
            }
            if scanned == SCAN_MAX {
                more = true;
                break 'scan;
            }
            scanned += 1;
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
    // A full page goes on after its last record; a scan cut at `SCAN_MAX`, after the last
    // record it read.
    let next_page = match (more, found.len() == limit) {
        (true, true) => found.last().map(|(key, _)| hex::encode(key)),
        (true, false) => after.as_ref().map(hex::encode),
        (false, _) => None,
    };
    Ok(wire::page(
        found.iter().map(|(_, r)| render(r)).collect(),
        next_page,
    ))
}

/// An audited call.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditView {
    pub seq: u64,
    #[schema(value_type = super::request::Time)]
    pub at: String,
    /// The token's name, or a keyed fingerprint of it.
    pub token: String,
    pub method: String,
    pub path: String,
    /// The ids the call named, by field.
    pub targets: BTreeMap<String, String>,
    /// null while the call runs, or when the server stopped before it answered.
    pub status: Option<u16>,
    /// An `Idempotency-Key` replay: the call did not run again.
    pub replayed: bool,
}

fn render(record: &AuditRecord) -> AuditView {
    AuditView {
        seq: record.seq,
        at: wire::time(Timestamp(record.at_ms)),
        token: record.token.clone(),
        method: record.method.clone(),
        path: record.path.clone(),
        targets: record.targets.iter().cloned().collect(),
        status: record.status,
        replayed: record.replayed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

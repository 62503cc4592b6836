//! `Idempotency-Key` on POST (SPEC 2.1). The answer to the first request with a key is stored
//! (in `meta`, so it survives restarts) and replayed for 24 hours to a request with the same key
//! and the same method, path and (inflated) body; the same key with another request is a 409
//! with `x-should-retry: false`.
//!
//! **One run per key.** A request first *claims* its key in memory (a second request while the
//! claim is held gets 409 with `x-should-retry: true`: retry later), and only then reads the
//! stored answer. The answer is stored before the claim is released, so a request that claims
//! after another finished always sees its answer: checking and claiming cannot interleave with
//! another request's run. The run itself is a task of its own, so a client that hangs up does not
//! cancel it half-way, and its answer is still stored.
//!
//! **What is stored.** Every answer except 429 and 503: those are given before execution
//! began (refused at admission; storage unavailable, not ready or stopped, where the engine
//! appended nothing), so a retry with the same key must run the request; and except a 409 that
//! says `x-should-retry: true` (something else holds what the request needs; it changed
//! nothing). Everything else, 5xx included, is stored once execution began, as Metronome and
//! Stripe do.
//!
//! **Sweeping.** Each entry has an index entry ordered by time (`idem-at/<ms><key>`); a
//! periodic sweep deletes entries past the window, under the key's claim so a sweep cannot delete
//! an answer being stored anew.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, web};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AppState;
use super::body::{BoundedBody, Encoding, collect};
use super::error::ApiError;
use crate::actors::EngineError;
use crate::storage::{self, StorageError, Store};

/// How long a stored response is replayed (Metronome: at least 24 hours).
pub const REPLAY_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;
/// How often expired entries are swept (an entry lives at most the window plus this).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// Longest accepted key.
const KEY_CHARS_MAX: usize = 255;
const VERSION: u8 = 1;
const ENTRY_PREFIX: &[u8] = b"idem/";
const INDEX_PREFIX: &[u8] = b"idem-at/";
/// Written once every entry of older versions (stored without an index entry) was indexed.
const INDEX_COMPLETE: &[u8] = b"idem-index/complete";
const SWEEP_PAGE: usize = 256;

#[derive(Serialize, Deserialize)]
struct Stored {
    request_hash: [u8; 32],
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
    at_ms: i64,
}

/// Keys whose request is running (or being swept).
#[derive(Default)]
pub struct InFlight(Mutex<HashSet<Vec<u8>>>);

impl InFlight {
    fn try_claim(&self, key: &[u8]) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_vec())
    }

    fn release(&self, key: &[u8]) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// A held claim; released on drop, whichever way the run ends.
struct Claim {
    state: web::Data<AppState>,
    key: Vec<u8>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.state.in_flight_keys.release(&self.key);
    }
}

fn entry_key(key: &[u8]) -> Vec<u8> {
    [ENTRY_PREFIX, key].concat()
}

fn index_key(at_ms: i64, key: &[u8]) -> Vec<u8> {
    let at = u64::try_from(at_ms).unwrap_or(0).to_be_bytes();
    [INDEX_PREFIX, &at[..], key].concat()
}

fn request_hash(method: &Method, path: &str, body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(method.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(path.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hasher.finalize().into()
}

/// Whether an answer is stored for replay: not a 429 or 503 (given before execution began),
/// and not a 409 that tells the client to retry (`x-should-retry: true`: another request holds
/// what this one needs, a cancel in progress, a payment Stripe still processes; nothing
/// changed, and a retry with the same key must run again).
pub fn is_stored(status: StatusCode, headers: &actix_web::http::header::HeaderMap) -> bool {
    let retry_later = status == StatusCode::CONFLICT
        && headers
            .get("x-should-retry")
            .is_some_and(|v| v.as_bytes() == b"true");
    !retry_later
        && !matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
}

fn lookup(store: &Store, key: &[u8], now_ms: i64) -> Result<Option<Stored>, StorageError> {
    let Some(bytes) = store.meta_get(&entry_key(key))? else {
        return Ok(None);
    };
    let stored: Stored = storage::decode(VERSION, &bytes)?;
    Ok((now_ms - stored.at_ms < REPLAY_WINDOW_MS).then_some(stored))
}

fn replay(stored: Stored, hash: [u8; 32]) -> Result<HttpResponse, ApiError> {
    if stored.request_hash != hash {
        return Err(ApiError::Conflict(
            "This Idempotency-Key was used with a different request.".into(),
        ));
    }
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = HttpResponse::build(status);
    response.insert_header(("Idempotent-Replayed", "true"));
    if status == StatusCode::CONFLICT {
        // A stored conflict is as permanent as the first one.
        response.insert_header((
            HeaderName::from_static("x-should-retry"),
            HeaderValue::from_static("false"),
        ));
    }
    if let Some(content_type) = stored.content_type {
        response.content_type(content_type);
    }
    Ok(response.body(stored.body))
}

pub async fn idempotency(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let key = req
        .headers()
        .get("idempotency-key")
        .map(|v| v.as_bytes().to_vec());
    let (Some(key), true) = (key, req.method() == Method::POST) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let chars = std::str::from_utf8(&key).map_or(usize::MAX, |k| k.chars().count());
    if key.is_empty() || chars > KEY_CHARS_MAX {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {KEY_CHARS_MAX} characters"
        ))
        .into());
    }
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or(ApiError::Engine(EngineError::NotReady))?;
    // The edge layer already inflated the body; read it once more only to hash and replay it.
    let encoding = Encoding::from_headers(req.headers())?;
    let body = collect(BoundedBody::new(
        req.take_payload(),
        encoding,
        state.body_limit,
    ))
    .await?;
    let body = body.freeze();
    let hash = request_hash(req.method(), req.path(), &body);
    if !state.in_flight_keys.try_claim(&key) {
        return Err(ApiError::InProgress(
            "A request with this Idempotency-Key is in progress; retry later.".into(),
        )
        .into());
    }
    let claim = Claim {
        state: state.clone(),
        key,
    };
    let now = state.engine.now_ms();
    let stored = state
        .engine
        .with_store("Idempotency-Key lookup", |store| {
            lookup(store, &claim.key, now)
        })
        .map_err(ApiError::from)?;
    if let Some(stored) = stored {
        let response = replay(stored, hash)?;
        return Ok(req.into_response(response));
    }
    req.set_payload(actix_web::dev::Payload::from(body));
    let run = actix_rt::spawn(run_and_store(req, next, claim, hash, now));
    run.await.map_err(|_| {
        actix_web::Error::from(ApiError::Engine(EngineError::Internal(
            "idempotent request task failed".into(),
        )))
    })?
}

/// Runs the request and stores its answer (unless 429/503) before releasing the claim.
async fn run_and_store(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    claim: Claim,
    hash: [u8; 32],
    now_ms: i64,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // A middleware error (not a handler's answer) is not stored; the claim is released.
    let response = next.call(req).await?.map_into_boxed_body();
    let (http_req, http_res) = response.into_parts();
    let (head, body) = http_res.into_parts();
    let bytes = actix_web::body::to_bytes(body)
        .await
        .map_err(|_| ApiError::Engine(EngineError::Internal("response body".into())))?;
    if is_stored(head.status(), head.headers()) {
        let stored = Stored {
            request_hash: hash,
            status: head.status().as_u16(),
            content_type: head
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: bytes.to_vec(),
            at_ms: now_ms,
        };
        // The request ran: its answer goes to the client even if it cannot be stored (a 5xx
        // instead would invite a retry that runs it again).
        // The failure stops the engine (fail-stop): nothing more is accepted.
        let _ = claim
            .state
            .engine
            .with_store("Idempotency-Key answer write", |store| {
                put(store, &claim.key, &stored)
            });
    }
    drop(claim);
    Ok(ServiceResponse::new(
        http_req,
        head.set_body(BoxBody::new(bytes)),
    ))
}

fn put(store: &Store, key: &[u8], stored: &Stored) -> Result<(), StorageError> {
    let encoded = storage::encode(VERSION, stored)?;
    store.meta_write_batch(
        &[
            (entry_key(key), encoded),
            (index_key(stored.at_ms, key), Vec::new()),
        ],
        &[],
    )
}

/// An entry the sweep looks at: its key and, when found through the time index, its index key.
struct Candidate {
    key: Vec<u8>,
    index: Option<Vec<u8>>,
}

/// Deletes the candidates' entries that are past the window at `now_ms`, each under its claim;
/// a key whose claim is held (its request is running) is left for the next sweep. Returns how
/// many entries were deleted.
fn delete_expired(
    store: &Store,
    claims: &InFlight,
    candidates: &[Candidate],
    now_ms: i64,
) -> Result<usize, StorageError> {
    let claimed: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| claims.try_claim(&c.key))
        .collect();
    let entry_keys: Vec<Vec<u8>> = claimed.iter().map(|c| entry_key(&c.key)).collect();
    let result = store.meta_multi_get(&entry_keys).and_then(|values| {
        let mut deletes: Vec<Vec<u8>> = claimed.iter().filter_map(|c| c.index.clone()).collect();
        let mut deleted = 0;
        for (entry, value) in entry_keys.iter().zip(values) {
            let Some(value) = value else { continue };
            // An entry that no longer decodes is of no use to a replay either.
            let expired = storage::decode::<Stored>(VERSION, &value)
                .map_or(true, |s| now_ms - s.at_ms >= REPLAY_WINDOW_MS);
            if expired {
                deletes.push(entry.clone());
                deleted += 1;
            }
        }
        store.meta_write_batch(&[], &deletes)?;
        Ok(deleted)
    });
    for candidate in claimed {
        claims.release(&candidate.key);
    }
    result
}

/// Deletes every entry past the replay window at `now_ms`, oldest first through the time index.
/// Returns how many entries were deleted.
///
/// # Errors
/// Storage errors; what was deleted before stays deleted.
pub fn sweep_expired(store: &Store, claims: &InFlight, now_ms: i64) -> Result<usize, StorageError> {
    let cutoff = now_ms.saturating_sub(REPLAY_WINDOW_MS);
    let (mut after, mut deleted) = (None::<Vec<u8>>, 0);
    loop {
        let page = store.meta_scan_page(INDEX_PREFIX, after.as_deref(), SWEEP_PAGE)?;
        let mut candidates = Vec::new();
        let mut reached_live = false;
        for (index, _) in &page {
            let (at, key) = index[INDEX_PREFIX.len()..]
                .split_at_checked(8)
                .unwrap_or((&[], &[]));
            let at = <[u8; 8]>::try_from(at).map_or(0, u64::from_be_bytes);
            if i64::try_from(at).unwrap_or(i64::MAX) > cutoff {
                reached_live = true;
                break;
            }
            candidates.push(Candidate {
                key: key.to_vec(),
                index: Some(index.clone()),
            });
        }
        deleted += delete_expired(store, claims, &candidates, now_ms)?;
        match page.last() {
            Some((last, _)) if !reached_live && page.len() == SWEEP_PAGE => {
                after = Some(last.clone());
            }
            _ => return Ok(deleted),
        }
    }
}

/// Indexes (or deletes, when expired) the entries stored by versions that wrote no time index;
/// a no-op once done. Returns how many entries were deleted.
///
/// # Errors
/// Storage errors; the next call starts again.
pub fn sweep_unindexed(
    store: &Store,
    claims: &InFlight,
    now_ms: i64,
) -> Result<usize, StorageError> {
    if store.meta_get(INDEX_COMPLETE)?.is_some() {
        return Ok(0);
    }
    let (mut after, mut deleted) = (None, 0);
    loop {
        let page = store.meta_scan_page(ENTRY_PREFIX, after.as_deref(), SWEEP_PAGE)?;
        let mut index = Vec::new();
        let mut expired = Vec::new();
        for (entry, value) in &page {
            let key = &entry[ENTRY_PREFIX.len()..];
            match storage::decode::<Stored>(VERSION, value) {
                Ok(s) if now_ms - s.at_ms < REPLAY_WINDOW_MS => {
                    index.push((index_key(s.at_ms, key), Vec::new()));
                }
                _ => expired.push(Candidate {
                    key: key.to_vec(),
                    index: None,
                }),
            }
        }
        store.meta_write_batch(&index, &[])?;
        deleted += delete_expired(store, claims, &expired, now_ms)?;
        match page.last() {
            Some((last, _)) if page.len() == SWEEP_PAGE => after = Some(last.clone()),
            _ => break,
        }
    }
    store.meta_put(INDEX_COMPLETE, b"1")?;
    Ok(deleted)
}

/// Sweeps every [`SWEEP_INTERVAL`] (the first time at once, indexing older entries), on the
/// blocking pool, with the engine's clock.
pub async fn sweep_periodically(state: web::Data<AppState>) {
    let mut indexed = false;
    loop {
        let state_now = state.clone();
        let result = web::block(move || {
            let (store, now) = (state_now.engine.store(), state_now.engine.now_ms());
            let claims = &state_now.in_flight_keys;
            let mut deleted = 0;
            if !indexed {
                deleted += sweep_unindexed(store, claims, now)?;
            }
            Ok::<_, StorageError>(deleted + sweep_expired(store, claims, now)?)
        })
        .await;
        match result {
            Ok(Ok(deleted)) => {
                indexed = true;
                if deleted > 0 {
                    tracing::info!(deleted, "swept expired Idempotency-Key answers");
                }
            }
            Ok(Err(error)) => state.engine.fail_stop("Idempotency-Key sweep", &error),
            Err(error) => tracing::warn!(%error, "Idempotency-Key sweep did not run"),
        }
        actix_rt::time::sleep(SWEEP_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StoreOptions;
    use actix_web::http::header::HeaderMap;

    #[test]
    fn answers_that_changed_nothing_and_say_retry_are_not_stored() {
        let plain = HeaderMap::new();
        let mut retry = HeaderMap::new();
        retry.insert(
            HeaderName::from_static("x-should-retry"),
            HeaderValue::from_static("true"),
        );
        let mut final_conflict = HeaderMap::new();
        final_conflict.insert(
            HeaderName::from_static("x-should-retry"),
            HeaderValue::from_static("false"),
        );
        assert!(is_stored(StatusCode::OK, &plain));
        assert!(is_stored(StatusCode::INTERNAL_SERVER_ERROR, &plain));
        assert!(is_stored(StatusCode::BAD_GATEWAY, &plain));
        assert!(is_stored(StatusCode::CONFLICT, &final_conflict));
        assert!(!is_stored(StatusCode::CONFLICT, &retry));
        assert!(!is_stored(StatusCode::TOO_MANY_REQUESTS, &plain));
        assert!(!is_stored(StatusCode::SERVICE_UNAVAILABLE, &plain));
    }

    fn stored(at_ms: i64) -> Vec<u8> {
        let stored = Stored {
            request_hash: [0; 32],
            status: 200,
            content_type: None,
            body: b"{}".to_vec(),
            at_ms,
        };
        storage::encode(VERSION, &stored).unwrap()
    }

    #[test]
    fn entries_written_without_a_time_index_are_indexed_once_then_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let claims = InFlight::default();
        let now = 10 * REPLAY_WINDOW_MS;
        // As an older version stored them: the entry only.
        store
            .meta_put(b"idem/old", &stored(now - REPLAY_WINDOW_MS))
            .unwrap();
        store.meta_put(b"idem/live", &stored(now - 1)).unwrap();
        store.meta_put(b"idem/broken", b"not an entry").unwrap();
        assert_eq!(sweep_expired(&store, &claims, now).unwrap(), 0);
        assert_eq!(sweep_unindexed(&store, &claims, now).unwrap(), 2);
        assert!(store.meta_get(b"idem/old").unwrap().is_none());
        assert!(store.meta_get(b"idem/broken").unwrap().is_none());
        assert!(store.meta_get(b"idem/live").unwrap().is_some());
        // The live one is now in the index and goes when it expires.
        assert_eq!(
            sweep_expired(&store, &claims, now + REPLAY_WINDOW_MS).unwrap(),
            1
        );
        assert!(store.meta_get(b"idem/live").unwrap().is_none());
        // Done once: a later legacy-looking entry is not scanned for again.
        store.meta_put(b"idem/late", &stored(0)).unwrap();
        assert_eq!(sweep_unindexed(&store, &claims, now).unwrap(), 0);
    }

    #[test]
    fn a_key_whose_request_is_running_is_not_swept_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let claims = InFlight::default();
        let stored_at = 1_000;
        store
            .meta_write_batch(
                &[
                    (entry_key(b"k"), stored(stored_at)),
                    (index_key(stored_at, b"k"), Vec::new()),
                ],
                &[],
            )
            .unwrap();
        let later = stored_at + REPLAY_WINDOW_MS;
        assert!(claims.try_claim(b"k"));
        assert_eq!(sweep_expired(&store, &claims, later).unwrap(), 0);
        assert!(store.meta_get(&entry_key(b"k")).unwrap().is_some());
        claims.release(b"k");
        assert_eq!(sweep_expired(&store, &claims, later).unwrap(), 1);
    }
}

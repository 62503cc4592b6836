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
//! appended nothing), so a retry with the same key must run the request. Everything else, 5xx
//! included, is stored once execution began, as Metronome and Stripe do.

use std::collections::HashSet;
use std::sync::Mutex;

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
/// Longest accepted key.
const KEY_CHARS_MAX: usize = 255;
const VERSION: u8 = 1;
const ENTRY_PREFIX: &[u8] = b"idem/";

#[derive(Serialize, Deserialize)]
struct Stored {
    request_hash: [u8; 32],
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
    at_ms: i64,
}

/// Keys whose request is running.
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

fn request_hash(method: &Method, path: &str, body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(method.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(path.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hasher.finalize().into()
}

/// Whether an answer with `status` is stored for replay.
pub fn is_stored(status: StatusCode) -> bool {
    !matches!(
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
    if let Some(stored) = lookup(state.engine.store(), &claim.key, now).map_err(ApiError::from)? {
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
    if is_stored(head.status()) {
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
        if let Err(error) = put(claim.state.engine.store(), &claim.key, &stored) {
            tracing::error!(%error, "cannot store an Idempotency-Key answer");
        }
    }
    drop(claim);
    Ok(ServiceResponse::new(
        http_req,
        head.set_body(BoxBody::new(bytes)),
    ))
}

fn put(store: &Store, key: &[u8], stored: &Stored) -> Result<(), StorageError> {
    let encoded = storage::encode(VERSION, stored)?;
    store.meta_write_batch(&[(entry_key(key), encoded)], &[])
}

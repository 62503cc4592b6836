//! `Idempotency-Key` on POST: the first response for a key is stored (in `meta`, so it survives
//! restarts) and replayed for 24 hours to a request with the same key and body; the same key
//! with a different body is a 409. Two concurrent requests with one key cannot both run: the
//! second gets a 409 while the first is in flight.

use std::collections::HashSet;
use std::sync::Mutex;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::storage;

/// How long a stored response is replayed (Metronome: at least 24 hours).
pub const REPLAY_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;
/// Longest accepted key.
const KEY_CHARS_MAX: usize = 255;
const VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Stored {
    request_hash: [u8; 32],
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
    at_ms: i64,
}

/// Keys whose first request is still running.
#[derive(Default)]
pub struct InFlight(Mutex<HashSet<String>>);

fn meta_key(key: &str) -> Vec<u8> {
    let mut k = b"idem/".to_vec();
    k.extend_from_slice(key.as_bytes());
    k
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

pub async fn idempotency(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (Some(key), true) = (key, req.method() == Method::POST) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    if key.is_empty() || key.chars().count() > KEY_CHARS_MAX {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {KEY_CHARS_MAX} characters"
        ))
        .into());
    }
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or(ApiError::Engine(crate::actors::EngineError::NotReady))?;
    let body = req.extract::<web::Bytes>().await?;
    let hash = request_hash(req.method(), req.path(), &body);
    let store = state.engine.store();
    let now = state.engine.now_ms();
    if let Some(bytes) = store.meta_get(&meta_key(&key)).map_err(ApiError::from)? {
        let stored: Stored = storage::decode(VERSION, &bytes).map_err(ApiError::from)?;
        if now - stored.at_ms < REPLAY_WINDOW_MS {
            if stored.request_hash != hash {
                return Err(ApiError::Conflict(
                    "This Idempotency-Key was used with a different request.".into(),
                )
                .into());
            }
            let mut response =
                HttpResponse::build(StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK));
            response.insert_header(("Idempotent-Replayed", "true"));
            if let Some(content_type) = stored.content_type {
                response.content_type(content_type);
            }
            let (http_req, _) = req.into_parts();
            return Ok(ServiceResponse::new(http_req, response.body(stored.body)));
        }
    }
    {
        let mut in_flight = state
            .in_flight_keys
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !in_flight.insert(key.clone()) {
            return Err(ApiError::Conflict(
                "A request with this Idempotency-Key is in progress.".into(),
            )
            .into());
        }
    }
    req.set_payload(actix_web::dev::Payload::from(body));
    let result = next.call(req).await;
    let outcome = async {
        let response = result?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (http_req, http_res) = response.into_parts();
        let (head, body) = http_res.into_parts();
        let bytes = actix_web::body::to_bytes(body).await.map_err(|_| {
            ApiError::Engine(crate::actors::EngineError::Internal("response body".into()))
        })?;
        let stored = Stored {
            request_hash: hash,
            status: status.as_u16(),
            content_type,
            body: bytes.to_vec(),
            at_ms: now,
        };
        // Only answers that reflect execution are stored; a 429/503 never ran, so the retry
        // must run for real.
        if !matches!(status.as_u16(), 429 | 503) {
            let encoded = storage::encode(VERSION, &stored).map_err(ApiError::from)?;
            store
                .meta_write_batch(&[(meta_key(&key), encoded)], &[])
                .map_err(ApiError::from)?;
        }
        let response = head.set_body(BoxBody::new(bytes));
        Ok::<_, actix_web::Error>(ServiceResponse::new(http_req, response))
    }
    .await;
    state
        .in_flight_keys
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&key);
    outcome
}

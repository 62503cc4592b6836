//! The outermost middleware: what must hold for every request before any handler or other
//! middleware sees it, and for every answer before it leaves.
//!
//! - **Framing.** A request with both `Content-Length` and `Transfer-Encoding` is refused (400,
//!   `Connection: close`). actix-http follows `Transfer-Encoding` (RFC 9112 6.3) and keeps the
//!   connection open, so bytes a front end counted as this request's body would run as the next
//!   request; and a request actix already decoded behind it (pipelined in the same read) would
//!   still be served after our `Connection: close`. So the connection is marked, and every later
//!   request on it is refused the same way without running.
//! - **Bodies.** The body is inflated once, here, in bounded steps ([`super::body`]); handlers
//!   and the idempotency layer see the inflated bytes with no `Content-Encoding` left to decode
//!   again.
//! - **Early answers.** actix closes a connection whose request body was not read to its end,
//!   and closing a socket with unread bytes makes the kernel send a reset, which can reach the
//!   client before (or instead of) our 401/413/429. So what is left of the body is read and
//!   thrown away, up to [`DRAIN_FACTOR`] times the body limit and for at most [`DRAIN_TIMEOUT`];
//!   beyond that the answer says `Connection: close`.
//! - **Error bodies.** Any error answer that is not JSON yet (actix's own 413/405, extractor
//!   errors) becomes `{"message"}`.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::{HttpMessage, ResponseError};
use futures_util::Stream;

use super::AppState;
use super::body::{BoundedBody, Encoding, too_large};
use super::error::ApiError;

/// A refused request's leftover body is read up to this many times the body limit.
pub const DRAIN_FACTOR: usize = 2;
/// ... and for at most this long.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest non-JSON error body kept as the message.
const MESSAGE_CHARS_MAX: usize = 512;

/// Per-connection state (installed by `HttpServer::on_connect`): set once a request on the
/// connection had ambiguous framing.
#[derive(Clone, Default)]
pub struct ConnectionState {
    poisoned: Rc<Cell<bool>>,
}

/// The raw request body, shared between the stream handlers read and the drain after them.
struct RawBody {
    payload: Payload,
    read: usize,
    ended: bool,
}

#[derive(Clone)]
struct SharedRaw(Rc<RefCell<RawBody>>);

impl Stream for SharedRaw {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut raw = self.0.borrow_mut();
        if raw.ended {
            return Poll::Ready(None);
        }
        let next = Pin::new(&mut raw.payload).poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(chunk))) => raw.read += chunk.len(),
            Poll::Ready(None) => raw.ended = true,
            // A broken stream cannot be drained either.
            Poll::Ready(Some(Err(_))) => {}
            Poll::Pending => {}
        }
        next
    }
}

fn content_length(req: &ServiceRequest) -> Option<usize> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn body_limit(req: &ServiceRequest) -> usize {
    req.app_data::<web::Data<AppState>>()
        .map_or(1 << 20, |state| state.body_limit)
}

/// The 400 for ambiguous framing, closing the connection.
fn refuse_framing(req: ServiceRequest) -> ServiceResponse<BoxBody> {
    if let Some(conn) = req.conn_data::<ConnectionState>() {
        conn.poisoned.set(true);
    }
    let error = ApiError::BadRequest(
        "a request may not carry both Content-Length and Transfer-Encoding; \
         the connection is closed"
            .into(),
    );
    let mut response = req.into_response(error.error_response());
    close_connection(&mut response);
    response
}

fn close_connection(response: &mut ServiceResponse<BoxBody>) {
    response
        .response_mut()
        .head_mut()
        .set_connection_type(ConnectionType::Close);
}

pub async fn edge(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let poisoned = req
        .conn_data::<ConnectionState>()
        .is_some_and(|c| c.poisoned.get());
    let headers = req.headers();
    if poisoned
        || (headers.contains_key(header::CONTENT_LENGTH)
            && headers.contains_key(header::TRANSFER_ENCODING))
    {
        return Ok(refuse_framing(req));
    }
    let limit = body_limit(&req);
    let declared = content_length(&req);
    let raw = SharedRaw(Rc::new(RefCell::new(RawBody {
        payload: req.take_payload(),
        read: 0,
        ended: false,
    })));
    let early = match Encoding::from_headers(req.headers()) {
        Err(error) => Some(error),
        Ok(_) if declared.is_some_and(|n| n > limit) => Some(too_large(limit)),
        Ok(encoding) => {
            if encoding != Encoding::Identity {
                // Handlers get the inflated bytes: nothing left to decode, no stale length.
                req.headers_mut().remove(header::CONTENT_ENCODING);
                req.headers_mut().remove(header::CONTENT_LENGTH);
            }
            let body: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> =
                Box::pin(BoundedBody::new(raw.clone(), encoding, limit));
            req.set_payload(Payload::from(body));
            None
        }
    };
    let result = match early {
        Some(error) => Ok(req.error_response(error)),
        None => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body),
    };
    let drained = drain(&raw, declared, limit).await;
    match result {
        Ok(response) => {
            let mut response = json_errors(response).await;
            if !drained {
                close_connection(&mut response);
            }
            Ok(response)
        }
        // A middleware's error (its response is built by actix from the error).
        Err(error) if drained => Err(error),
        Err(error) => Err(Closing(error).into()),
    }
}

/// An error whose response also closes the connection.
#[derive(Debug)]
struct Closing(actix_web::Error);

impl std::fmt::Display for Closing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ResponseError for Closing {
    fn status_code(&self) -> StatusCode {
        self.0.as_response_error().status_code()
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        let mut response = self.0.error_response();
        response
            .head_mut()
            .set_connection_type(ConnectionType::Close);
        response
    }
}

/// Reads what is left of the body; whether it ended within the budget.
async fn drain(raw: &SharedRaw, declared: Option<usize>, limit: usize) -> bool {
    let budget = limit.saturating_mul(DRAIN_FACTOR);
    let (already, ended) = {
        let state = raw.0.borrow();
        (state.read, state.ended)
    };
    if ended {
        return true;
    }
    if declared.is_some_and(|n| n.saturating_sub(already) > budget) {
        return false;
    }
    let mut raw = raw.clone();
    let reading = async move {
        use futures_util::StreamExt;
        let mut drained = 0usize;
        while let Some(chunk) = raw.next().await {
            match chunk {
                Ok(chunk) => drained += chunk.len(),
                Err(_) => return false,
            }
            if drained > budget {
                return false;
            }
        }
        true
    };
    actix_rt::time::timeout(DRAIN_TIMEOUT, reading)
        .await
        .unwrap_or(false)
}

/// Makes an error answer `{"message"}` JSON if it is not already (actix's own errors are
/// text/plain). A 5xx message stays opaque.
pub async fn json_errors(response: ServiceResponse<BoxBody>) -> ServiceResponse<BoxBody> {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let limit = response
        .request()
        .app_data::<web::Data<AppState>>()
        .map_or(1 << 20, |state| state.body_limit);
    let (http_req, http_res) = response.into_parts();
    let (mut head, body) = http_res.into_parts();
    let text = actix_web::body::to_bytes_limited(body, MESSAGE_CHARS_MAX * 4)
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!("request body is over {limit} bytes"),
        s if s.is_server_error() => "Internal server error".to_owned(),
        s if text.is_empty() => s.canonical_reason().unwrap_or("Bad request").to_owned(),
        _ => text.chars().take(MESSAGE_CHARS_MAX).collect(),
    };
    head.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let json = serde_json::json!({ "message": message }).to_string();
    ServiceResponse::new(http_req, head.set_body(BoxBody::new(json)))
}

/// The innermost middleware: handler answers are JSON before the idempotency layer stores them.
pub async fn json_error_bodies(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let response = next.call(req).await?.map_into_boxed_body();
    Ok(json_errors(response).await)
}

/// Query-string and path errors as 400 `{"message"}`.
pub fn extractor_configs(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::QueryConfig::default().error_handler(|error, _| {
            ApiError::BadRequest(format!("query string: {error}")).into()
        }),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|error, _| ApiError::BadRequest(format!("path: {error}")).into()),
    );
}

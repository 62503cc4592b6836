//! The one place errors become HTTP statuses. Every error body is `{"message": ...}`; a 5xx body
//! is opaque and its cause is logged. The matches are exhaustive (no `_` arm), so a new
//! rejection or engine error forces a decision here.

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use crate::actors::EngineError;
use crate::domain::Rejection;

#[derive(Debug)]
pub enum ApiError {
    /// The request is malformed or names something invalid (400).
    BadRequest(String),
    /// Missing or wrong bearer token (401).
    Unauthorized,
    /// The token lacks the scope the call needs (403).
    Forbidden(String),
    /// The addressed object does not exist (404).
    NotFound(String),
    /// The request conflicts with an earlier one (409; the SDK must not retry it).
    Conflict(String),
    /// A request with the same `Idempotency-Key` is running (409; the SDK may retry it).
    InProgress(String),
    /// Body over the limit (413).
    PayloadTooLarge(String),
    /// A provider the request needed (Stripe) could not be asked or gave no usable answer;
    /// nothing changed (502).
    BadGateway(String),
    /// The server could not do what was asked for a reason the operator must see (a backup
    /// that could not be written: no space left, a permission); nothing else changed (500).
    Failed(String),
    /// The domain refused the input.
    Rejected(Rejection),
    /// The engine could not take the request.
    Engine(EngineError),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> ApiError {
        ApiError::Rejected(rejection)
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> ApiError {
        match error {
            EngineError::Rejected(rejection) => ApiError::Rejected(rejection),
            other => ApiError::Engine(other),
        }
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(error: crate::storage::StorageError) -> ApiError {
        ApiError::Engine(EngineError::Storage(error))
    }
}

/// The status of each domain rejection.
fn rejection_status(rejection: &Rejection) -> StatusCode {
    match rejection {
        Rejection::AmountOverflow
        | Rejection::InvalidAmount
        | Rejection::UnsupportedCreditType
        | Rejection::MissingField(_)
        | Rejection::InvalidField(_)
        | Rejection::Unsupported(_)
        | Rejection::ProductNotFound(_)
        | Rejection::RateCardNotFound(_)
        | Rejection::BillableMetricNotFound(_)
        | Rejection::WrongProductType(_)
        | Rejection::InvoiceNotVoidable(_)
        | Rejection::WorkflowAlreadyEnded
        | Rejection::WorkflowGateMismatch
        | Rejection::ThresholdConfigExists(_)
        | Rejection::ThresholdConfigMissing(_)
        | Rejection::ThresholdTooLow(_)
        | Rejection::RechargeGapTooSmall(_)
        | Rejection::StripeNotConfigured => StatusCode::BAD_REQUEST,
        Rejection::CustomerNotFound
        | Rejection::ContractNotFound
        | Rejection::CommitNotFound
        | Rejection::AlertNotFound
        | Rejection::InvoiceNotFound
        | Rejection::WorkflowNotFound => StatusCode::NOT_FOUND,
        Rejection::UniquenessKeyReused
        | Rejection::AliasInUse(_)
        | Rejection::AlreadyExists
        | Rejection::NotQuarantined
        | Rejection::NotReappliable
        | Rejection::StillFailing(_) => StatusCode::CONFLICT,
    }
}

impl ApiError {
    fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Forbidden(m)
            | ApiError::Conflict(m)
            | ApiError::InProgress(m)
            | ApiError::PayloadTooLarge(m)
            | ApiError::BadGateway(m)
            | ApiError::Failed(m) => m.clone(),
            ApiError::Unauthorized => "Unauthorized: a valid bearer token is required".into(),
            ApiError::Rejected(rejection) => rejection.to_string(),
            ApiError::Engine(error) => match error {
                EngineError::Rejected(rejection) => rejection.to_string(),
                EngineError::Overloaded => "Too many requests; retry after a short pause".into(),
                EngineError::NotReady => "Starting up; retry shortly".into(),
                EngineError::Storage(_) | EngineError::Unavailable => {
                    "Storage unavailable: the server stops and restarts; retry shortly".into()
                }
                EngineError::Quarantined(_) | EngineError::Internal(_) => {
                    "Internal server error".into()
                }
                EngineError::CancelInProgress => error.to_string(),
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::InProgress(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Rejected(rejection) => rejection_status(rejection),
            ApiError::Engine(error) => match error {
                EngineError::Rejected(rejection) => rejection_status(rejection),
                EngineError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
                // Infrastructure, never the caller's fault: retry once the server is back.
                EngineError::NotReady | EngineError::Storage(_) | EngineError::Unavailable => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                EngineError::Quarantined(_) | EngineError::Internal(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                EngineError::CancelInProgress => StatusCode::CONFLICT,
            },
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(error = ?self, "request failed");
        }
        let mut response = HttpResponse::build(status);
        match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                response.insert_header(("Retry-After", "1"));
            }
            // A conflict is permanent: tell Metronome's SDK not to retry (it retries 409);
            // a key in progress is not.
            StatusCode::CONFLICT => {
                let retry = matches!(
                    self,
                    ApiError::InProgress(_) | ApiError::Engine(EngineError::CancelInProgress)
                );
                response.insert_header((
                    HeaderName::from_static("x-should-retry"),
                    HeaderValue::from_static(if retry { "true" } else { "false" }),
                ));
            }
            _ => {}
        }
        response.json(serde_json::json!({ "message": self.message() }))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_kind_of_error() {
        let cases = [
            (ApiError::from(Rejection::CustomerNotFound), 404),
            (ApiError::from(Rejection::UniquenessKeyReused), 409),
            (
                ApiError::from(Rejection::ThresholdTooLow("500".into())),
                400,
            ),
            (ApiError::from(EngineError::Overloaded), 429),
            (ApiError::from(EngineError::Internal("x".into())), 500),
            (ApiError::from(EngineError::Quarantined("x".into())), 500),
            (ApiError::from(EngineError::Unavailable), 503),
            (
                ApiError::from(crate::storage::StorageError::Injected("disk".into())),
                503,
            ),
            (ApiError::Unauthorized, 401),
            (ApiError::PayloadTooLarge("big".into()), 413),
            (ApiError::InProgress("busy".into()), 409),
            (ApiError::from(EngineError::NotReady), 503),
            (
                ApiError::from(crate::storage::StorageError::Encode("disk".into())),
                503,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(error.status_code().as_u16(), status, "{error:?}");
        }
        let conflict = ApiError::from(Rejection::UniquenessKeyReused).error_response();
        assert_eq!(conflict.headers().get("x-should-retry").unwrap(), "false");
        let busy = ApiError::from(EngineError::Overloaded).error_response();
        assert_eq!(busy.headers().get("retry-after").unwrap(), "1");
        let in_progress = ApiError::InProgress("busy".into()).error_response();
        assert_eq!(in_progress.headers().get("x-should-retry").unwrap(), "true");
        let storage = ApiError::from(crate::storage::StorageError::Encode("secret".into()));
        assert!(!storage.message().contains("secret"));
        assert!(storage.message().contains("retry"));
        let storage = storage.error_response();
        assert_eq!(storage.headers().get("retry-after").unwrap(), "1");
        // 5xx bodies do not leak causes.
        assert_eq!(
            ApiError::from(EngineError::Internal("secret detail".into())).message(),
            "Internal server error"
        );
    }
}

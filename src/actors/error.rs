//! The engine's one error type: a domain refusal, back-pressure, or an infrastructure failure.
//! Infrastructure failures are never refusals (`src/http/error.rs` maps them to 5xx).

use thiserror::Error;

use crate::domain::Rejection;
use crate::storage::StorageError;

#[derive(Debug, Clone, Error)]
pub enum EngineError {
    /// The domain refused the input; nothing changed.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// Too much accepted work is waiting; the caller should retry after a pause.
    #[error("overloaded; retry later")]
    Overloaded,
    /// The engine is still recovering.
    #[error("not ready")]
    NotReady,
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// A storage failure stopped the engine (fail-stop): nothing more is accepted until a
    /// restart has recovered.
    #[error("stopped after a storage failure; retry after the restart")]
    Unavailable,
    /// The input reached the log but its apply panicked or overflowed: it is kept in
    /// quarantine for the operator and changed nothing.
    #[error("input quarantined: {0}")]
    Quarantined(String),
    #[error("internal: {0}")]
    Internal(String),
    /// Another cancel of the same workflow is running; this one changed nothing.
    #[error("another cancel of this workflow is in progress; retry shortly")]
    CancelInProgress,
}

impl EngineError {
    /// The error of a failed append: a full queue is back-pressure (429), anything else a
    /// storage failure.
    pub fn of_append(error: &StorageError) -> EngineError {
        match error {
            StorageError::Overloaded(_) => EngineError::Overloaded,
            other => EngineError::Storage(other.clone()),
        }
    }
}

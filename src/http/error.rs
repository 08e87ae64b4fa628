//! One error type for every HTTP error: `{"error": {"code", "message"}}`
//! with a fitting status. Client mistakes are 4xx with a stable code;
//! internal failures are logged and answered without details.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The error body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`unauthorized`, `not_found`, …).
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

/// Every error the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong bearer token.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// No such route or resource.
    #[error("{0}")]
    NotFound(String),
    /// Malformed query, path or body.
    #[error("{0}")]
    BadRequest(String),
    /// The resource is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// A reload was refused (compile error with file:line:col).
    #[error("{0}")]
    ReloadRejected(String),
    /// The host is starting, shutting down, or full.
    #[error("{0}")]
    Unavailable(String),
    /// Something failed inside the host (logged).
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::ReloadRejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, "reload_rejected"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The error body for a status code and message.
pub fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(ErrorBody { error: ErrorDetail { code: code.to_string(), message } })).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!("API internal error: {detail}");
        }
        let (status, code) = self.status_and_code();
        error_response(status, code, self.to_string())
    }
}

impl From<crate::control::ControlError> for ApiError {
    fn from(error: crate::control::ControlError) -> Self {
        use crate::control::ControlError;
        match error {
            ControlError::UnknownStrategy(_) => ApiError::NotFound(error.to_string()),
            ControlError::Conflict(message) => ApiError::Conflict(message),
            ControlError::Rejected(message) => ApiError::ReloadRejected(message),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        ApiError::Internal(error.to_string())
    }
}

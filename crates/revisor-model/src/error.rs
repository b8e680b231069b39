//! Errors of the model server, answered as the protocol asks: `{"error": "<what is wrong>"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The client's mistake (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such model or version (404).
    #[error("{0}")]
    NotFound(String),
    /// The model is not ready yet (503).
    #[error("{0}")]
    Unavailable(String),
    /// The request body is larger than allowed (413).
    #[error("{0}")]
    TooLarge(String),
    /// The model failed on a valid request (500).
    #[error("{0}")]
    Model(String),
}

impl IntoResponse for InferError {
    fn into_response(self) -> Response {
        let code = match &self {
            InferError::BadRequest(_) => StatusCode::BAD_REQUEST,
            InferError::NotFound(_) => StatusCode::NOT_FOUND,
            InferError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            InferError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            InferError::Model(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (code, Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}

/// Why a model could not be loaded: names the URI and the cause.
#[derive(Debug, thiserror::Error)]
#[error("model {uri}: {message}")]
pub struct LoadError {
    pub uri: String,
    pub message: String,
}

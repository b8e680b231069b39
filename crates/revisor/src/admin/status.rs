//! Errors of the admin API as Kubernetes `Status` objects, made in this one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use revisor_api::FieldErrors;
use revisor_controller::ApplyError;
use revisor_store::StoreError;
use serde_json::json;

/// Every way an admin request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{kind} {name:?} is invalid")]
    Invalid {
        kind: &'static str,
        name: String,
        errors: FieldErrors,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Conflict(String),
    /// A write whose resourceVersion precondition no longer holds (409, as any conflict).
    #[error("{0}")]
    Stale(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Misdirected(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 429, as Kubernetes answers when it has too many requests in flight.
    #[error("{0}")]
    TooMany(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            Self::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            Self::AlreadyExists(_) => (StatusCode::CONFLICT, "AlreadyExists"),
            Self::Conflict(_) | Self::Stale(_) => (StatusCode::CONFLICT, "Conflict"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
            Self::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            Self::Misdirected(_) => (StatusCode::MISDIRECTED_REQUEST, "Misdirected"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            Self::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        }
    }

    pub fn invalid(kind: &'static str, name: &str, errors: FieldErrors) -> Self {
        Self::Invalid {
            kind,
            name: name.to_string(),
            errors,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::NotFound(e.to_string()),
            StoreError::AlreadyExists { .. } => Self::AlreadyExists(e.to_string()),
            StoreError::Conflict { .. } => Self::Stale(format!("{e}; read the object again and retry")),
            StoreError::Rejected(m) => Self::BadRequest(m),
            other => {
                tracing::error!("store: {other}");
                Self::Internal("the store failed; see the server log".into())
            }
        }
    }
}

impl ApiError {
    pub fn from_apply(kind: &'static str, name: &str, e: ApplyError) -> Self {
        match e {
            ApplyError::Invalid(errors) => Self::invalid(kind, name, errors),
            ApplyError::Store(e) => e.into(),
            e @ (ApplyError::FieldConflicts(_) | ApplyError::Referenced(_)) => Self::Conflict(e.to_string()),
            ApplyError::DryRun(..) | ApplyError::DryRunRollout(..) => {
                Self::Internal("a dry run escaped its transaction".into())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, reason) = self.parts();
        let (message, details) = match &self {
            Self::Invalid { kind, name, errors } => {
                let causes: Vec<_> = errors
                    .iter()
                    .map(|e| json!({ "reason": "FieldValueInvalid", "field": e.path, "message": e.message }))
                    .collect();
                let joined = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
                (
                    format!(
                        "{kind}.{} {name:?} is invalid: {joined}",
                        if *kind == "Rollout" {
                            "revisor.dev"
                        } else {
                            "serving.knative.dev"
                        }
                    ),
                    json!({ "name": name, "kind": kind.to_lowercase() + "s", "causes": causes }),
                )
            }
            other => (other.to_string(), json!({})),
        };
        let body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": details,
            "code": code.as_u16(),
        });
        let mut resp = (code, Json(body)).into_response();
        if code == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"revisor\""),
            );
        }
        resp
    }
}

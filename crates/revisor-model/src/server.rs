//! The Open Inference Protocol REST API over one model: health, metadata, readiness and inference.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::error::InferError;
use crate::infer::infer;
use crate::model::Model;
use crate::protocol::{InferRequest, ModelMetadata, ServerMetadata};

/// Largest inference request accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct ServerState {
    pub model: Arc<Model>,
    /// Bounds concurrent inferences to the cores, so health checks stay fast under load.
    pub pool: Arc<tokio::sync::Semaphore>,
}

impl ServerState {
    pub fn new(model: Arc<Model>) -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        ServerState {
            model,
            pool: Arc::new(tokio::sync::Semaphore::new(cores)),
        }
    }
}

pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata_version))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready_version))
        .route("/v2/models/{name}/infer", post(infer_latest))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_version))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> InferError {
    InferError::NotFound(format!("no such endpoint {}", uri.path()))
}

async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "revisor",
        version: env!("CARGO_PKG_VERSION"),
        extensions: vec![],
    })
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({ "live": true }))
}

async fn ready(State(s): State<ServerState>) -> Response {
    if s.model.is_ready() {
        Json(json!({ "ready": true })).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false }))).into_response()
    }
}

/// The model, if `name` (and `version`, when given) name it.
fn find(s: &ServerState, name: &str, version: Option<&str>) -> Result<Arc<Model>, InferError> {
    let m = &s.model;
    if name != m.name {
        return Err(InferError::NotFound(format!(
            "unknown model {name:?}: this server serves {:?}",
            m.name
        )));
    }
    if let Some(v) = version.filter(|v| *v != m.version) {
        return Err(InferError::NotFound(format!(
            "model {name:?} has no version {v:?}: this server serves version {:?}",
            m.version
        )));
    }
    Ok(m.clone())
}

fn metadata(m: &Model) -> Json<serde_json::Value> {
    let meta = ModelMetadata {
        name: &m.name,
        versions: vec![&m.version],
        platform: "onnx_onnxv1",
        inputs: &m.inputs,
        outputs: &m.outputs,
    };
    Json(serde_json::to_value(meta).expect("metadata serializes"))
}

async fn model_metadata(
    State(s): State<ServerState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, InferError> {
    let m = find(&s, &name, None)?;
    Ok(metadata(&m))
}

async fn model_metadata_version(
    State(s): State<ServerState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, InferError> {
    let m = find(&s, &name, Some(&version))?;
    Ok(metadata(&m))
}

fn readiness(m: &Model) -> Response {
    let body = json!({ "name": m.name, "ready": m.is_ready() });
    let code = if m.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn model_ready(State(s): State<ServerState>, Path(name): Path<String>) -> Result<Response, InferError> {
    let m = find(&s, &name, None)?;
    Ok(readiness(&m))
}

async fn model_ready_version(
    State(s): State<ServerState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, InferError> {
    let m = find(&s, &name, Some(&version))?;
    Ok(readiness(&m))
}

fn parse_request(body: Result<Bytes, BytesRejection>) -> Result<InferRequest, InferError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            InferError::TooLarge(format!("request body is larger than {MAX_BODY_BYTES} bytes"))
        }
        _ => InferError::BadRequest(format!("cannot read the request body: {e}")),
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| InferError::BadRequest(format!("request body is not a valid inference request: {e}")))
}

async fn infer_latest(
    State(s): State<ServerState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, InferError> {
    let model = find(&s, &name, None)?;
    Ok(Json(infer(model, parse_request(body)?, s.pool.clone()).await?).into_response())
}

async fn infer_version(
    State(s): State<ServerState>,
    Path((name, version)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, InferError> {
    let model = find(&s, &name, Some(&version))?;
    Ok(Json(infer(model, parse_request(body)?, s.pool.clone()).await?).into_response())
}

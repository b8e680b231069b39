//! The Open Inference Protocol REST API over one model (health, metadata, readiness, inference with
//! JSON or binary tensor data), KServe's V1 protocol, and the server's own metrics.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::error::InferError;
use crate::infer::Runner;
use crate::model::Model;
use crate::protocol::{InferRequest, InferResponse, ModelMetadata, ServerMetadata};

/// Largest inference request accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// The binary tensor extension's header: the length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

pub type ServerState = Arc<Runner>;

/// The server state for a loaded model.
pub fn state(model: Arc<Model>) -> ServerState {
    Arc::new(Runner::new(model))
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
        .route("/v1/models/{target}", get(v1_status).post(v1_predict))
        .route("/metrics", get(metrics))
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
        extensions: vec!["binary_tensor_data"],
    })
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({ "live": true }))
}

async fn ready(State(s): State<ServerState>) -> Response {
    let code = if s.model.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({ "ready": s.model.is_ready() }))).into_response()
}

async fn metrics(State(s): State<ServerState>) -> Response {
    let text = s.metrics.text(&s.model.name, &s.model.version);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
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
    let code = if m.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({ "name": m.name, "ready": m.is_ready() }))).into_response()
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

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, InferError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            InferError::TooLarge(format!("request body is larger than {MAX_BODY_BYTES} bytes"))
        }
        _ => InferError::BadRequest(format!("cannot read the request body: {e}")),
    })
}

/// The JSON request and, with the binary tensor extension, the binary section after it.
fn parse_request(headers: &HeaderMap, body: Bytes) -> Result<(InferRequest, Option<Bytes>), InferError> {
    let (json_part, binary) = match headers.get(HEADER_LENGTH) {
        None => (body, None),
        Some(v) => {
            let n: usize = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| InferError::BadRequest(format!("{HEADER_LENGTH} must be a byte count")))?;
            if n > body.len() {
                return Err(InferError::BadRequest(format!(
                    "{HEADER_LENGTH} is {n}, but the body has {} bytes",
                    body.len()
                )));
            }
            (body.slice(..n), Some(body.slice(n..)))
        }
    };
    let req = serde_json::from_slice(&json_part)
        .map_err(|e| InferError::BadRequest(format!("request body is not a valid inference request: {e}")))?;
    Ok((req, binary))
}

fn respond(response: InferResponse, binary: Option<Vec<u8>>) -> Response {
    let json = serde_json::to_vec(&response).expect("responses serialize");
    match binary {
        None => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Some(bin) => {
            let len = json.len();
            let mut body = json;
            body.extend_from_slice(&bin);
            let headers = [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::HeaderName::from_static(HEADER_LENGTH), len.to_string()),
            ];
            (headers, Body::from(body)).into_response()
        }
    }
}

async fn run_infer(
    s: ServerState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, InferError> {
    let (req, binary) = match body_bytes(body).and_then(|b| parse_request(&headers, b)) {
        Ok(x) => x,
        Err(e) => {
            s.metrics.failure();
            return Err(e);
        }
    };
    let (response, bin) = s.infer(req, binary).await?;
    Ok(respond(response, bin))
}

async fn infer_latest(
    State(s): State<ServerState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, InferError> {
    find(&s, &name, None)?;
    run_infer(s, headers, body).await
}

async fn infer_version(
    State(s): State<ServerState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, InferError> {
    find(&s, &name, Some(&version))?;
    run_infer(s, headers, body).await
}

async fn v1_status(
    State(s): State<ServerState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, InferError> {
    let m = find(&s, &name, None)?;
    Ok(Json(json!({ "name": m.name, "ready": m.is_ready() })))
}

async fn v1_predict(
    State(s): State<ServerState>,
    Path(target): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, InferError> {
    let name = target.strip_suffix(":predict").ok_or_else(|| {
        InferError::NotFound(format!(
            "no such endpoint /v1/models/{target}: use /v1/models/<name>:predict"
        ))
    })?;
    find(&s, name, None)?;
    let body = body_bytes(body)?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| InferError::BadRequest(format!("request body is not JSON: {e}")))?;
    let result = crate::v1::predict(&s, &value).await;
    if result.is_err() {
        s.metrics.failure();
    }
    Ok(Json(result?))
}

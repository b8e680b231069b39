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
use crate::protocol::{InferResponse, ModelMetadata, ServerMetadata};

/// Largest inference request accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// The binary tensor extension's header: the length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The Content-Type of `GET /metrics`.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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

/// `GET /metrics`: the model's counters, OpenMetrics text.
async fn metrics(State(s): State<ServerState>) -> Response {
    let mut text = String::new();
    // Writing to a String cannot fail, nor can the collector.
    if prometheus_client::encoding::text::encode(&mut text, &s.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
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

/// Reads an infer request's body into one buffer, reserved up front from its Content-Length (so a large
/// body is held once, not as the chunks it arrived in plus their copy), refusing more than
/// [`MAX_BODY_BYTES`].
async fn read_body(headers: &HeaderMap, mut body: Body) -> Result<Bytes, InferError> {
    use axum::body::HttpBody;
    let too_large = || InferError::TooLarge(format!("request body is larger than {MAX_BODY_BYTES} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| InferError::BadRequest(format!("cannot read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// How much of the body is JSON, with the binary tensor extension (the rest is binary tensor data).
fn json_length(headers: &HeaderMap, body: &Bytes) -> Result<Option<usize>, InferError> {
    let Some(v) = headers.get(HEADER_LENGTH) else {
        return Ok(None);
    };
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
    Ok(Some(n))
}

/// Counts what is written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The response's JSON followed by `extra` bytes of room: measured first, so a large answer is written
/// once into a buffer of its size rather than into one doubling as it grows.
fn response_json(response: &InferResponse, extra: usize) -> Vec<u8> {
    let mut size = Counter(0);
    serde_json::to_writer(&mut size, response).expect("responses serialize");
    let mut json = Vec::with_capacity(size.0 + extra);
    serde_json::to_writer(&mut json, response).expect("responses serialize");
    json
}

fn respond(response: InferResponse, binary: Option<Vec<u8>>) -> Response {
    match binary {
        None => (
            [(header::CONTENT_TYPE, "application/json")],
            response_json(&response, 0),
        )
            .into_response(),
        Some(bin) => {
            let mut body = response_json(&response, bin.len());
            let len = body.len();
            body.extend_from_slice(&bin);
            let headers = [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::HeaderName::from_static(HEADER_LENGTH), len.to_string()),
            ];
            (headers, Body::from(body)).into_response()
        }
    }
}

async fn run_infer(s: ServerState, headers: HeaderMap, body: Body) -> Result<Response, InferError> {
    let read = read_body(&headers, body).await;
    let (body, json_len) = match read.and_then(|b| json_length(&headers, &b).map(|n| (b, n))) {
        Ok(x) => x,
        Err(e) => {
            s.metrics.failure();
            return Err(e);
        }
    };
    let (response, bin) = s.infer(body, json_len).await?;
    Ok(respond(response, bin))
}

async fn infer_latest(
    State(s): State<ServerState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, InferError> {
    find(&s, &name, None)?;
    run_infer(s, headers, body).await
}

async fn infer_version(
    State(s): State<ServerState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
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

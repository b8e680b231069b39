//! Observing the data plane through the admin API: OpenMetrics exposition, metric snapshots, replica logs.

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use prometheus_client::encoding::text::encode;
use revisor_gateway::MetricsSnapshot;

use super::{AdminState, ApiError};

/// The Content-Type of an OpenMetrics text exposition.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn gateway(s: &AdminState) -> Result<&revisor_gateway::Gateway, ApiError> {
    s.gateway
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("this server runs no gateway".into()))
}

/// `GET /metrics`: per-revision request counts, latencies and concurrency, and the autoscaler's view,
/// one OpenMetrics exposition (every registered collector, then one `# EOF`).
pub async fn metrics(State(s): State<AdminState>) -> Result<Response, ApiError> {
    let registry = s
        .metrics
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("this server runs no gateway".into()))?;
    let mut text = String::new();
    encode(&mut text, registry).map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response())
}

/// `GET /apis/revisor.dev/v1alpha1/revisionmetrics`: the same counters as JSON snapshots.
pub async fn metric_snapshots(State(s): State<AdminState>) -> Result<Json<serde_json::Value>, ApiError> {
    let items: Vec<MetricsSnapshot> = gateway(&s)?.metrics();
    Ok(Json(
        serde_json::json!({ "kind": "RevisionMetricsList", "items": items }),
    ))
}

/// `GET .../revisions/{name}/log[?follow=true]`: every replica's output, each line prefixed by its replica.
pub async fn revision_log(
    State(s): State<AdminState>,
    Path((ns, name)): Path<(String, String)>,
    Query(p): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    // The path below is built from the request: only DNS labels may reach it (never `..` or `/`).
    for (what, v) in [("namespace", &ns), ("revision name", &name)] {
        if let Some(e) = revisor_api::names::dns1123_label_error(v) {
            return Err(ApiError::BadRequest(format!("{what} {v:?}: {e}")));
        }
    }
    let logs = s
        .logs
        .clone()
        .ok_or_else(|| ApiError::NotFound("this server keeps no replica logs".into()))?;
    let dir = logs.join(&ns).join(&name);
    let follow = match p.get("follow").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(ApiError::BadRequest(format!("follow={other:?}: use true or false"))),
    };
    let (store, n2, ns2) = (s.store.clone(), name.clone(), ns.clone());
    let exists = tokio::task::spawn_blocking(move || store.get::<revisor_api::Revision>(&ns2, &n2))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??
        .is_some();
    if !exists && !dir.is_dir() {
        return Err(ApiError::NotFound(format!("Revision \"{ns}/{name}\" not found")));
    }
    let state = LogState {
        dir,
        offsets: BTreeMap::new(),
        follow,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            let chunk = st.read_new();
            if !chunk.is_empty() {
                return Some((Ok::<Bytes, std::io::Error>(Bytes::from(chunk)), st));
            }
            if !st.follow {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

struct LogState {
    dir: PathBuf,
    offsets: BTreeMap<PathBuf, u64>,
    follow: bool,
}

impl LogState {
    /// The complete lines written since the last read, from every replica's log.
    fn read_new(&mut self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let offset = self.offsets.entry(f.clone()).or_insert(0);
            let replica = f.file_stem().and_then(|s| s.to_str()).unwrap_or("replica").to_string();
            if let Some((text, consumed)) = read_lines_from(&f, *offset) {
                *offset += consumed;
                for line in text.lines() {
                    out.push_str(&format!("[{replica}] {line}\n"));
                }
            }
        }
        out
    }
}

fn read_lines_from(path: &FsPath, offset: u64) -> Option<(String, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let end = buf.iter().rposition(|b| *b == b'\n')? + 1;
    Some((String::from_utf8_lossy(&buf[..end]).into_owned(), end as u64))
}

//! The admin API of `revisor serve --backend knative`: the same router as locally (`backend.rs`), over
//! a Kubernetes cluster. Applies are server-side applies to the cluster (field manager `revisor`); reads
//! come from the watched caches; a Rollout request is written to the cluster's Rollout. What only the
//! local backend has (configurations, logs, gateway metrics) answers with the reason.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use revisor_api::Defaults;
use revisor_controller::DeleteOptions;
use revisor_kube::{ApplyError, Cluster};
use serde_json::Value;

use super::backend::{Backend, Change, Kind, Write};
use revisor_api::{Revision, Rollout, Service};

use super::collection::{relay, respond, ListQuery, Listed};
use super::handlers::{body_name, dry_run, placed};
use super::patch::Patch;
use super::ApiError;

#[derive(Clone)]
pub struct ClusterState {
    pub cluster: Cluster,
    pub defaults: Arc<Defaults>,
}

/// The admin API over a cluster.
pub fn router(state: ClusterState) -> Router {
    super::backend::router(state)
}

/// A list from the cluster's API server (a consistent read, with the version a watch can start
/// from), filtered, paged and as Tables as the local backend answers them; or a watch relayed from
/// it, with the request's selectors (objects as the cluster holds them, or as Table rows).
async fn listed<T: Listed>(
    s: &ClusterState,
    resource: &revisor_kube::ClusterKind,
    ns: Option<&str>,
    q: ListQuery,
) -> Result<Response, ApiError> {
    // Only the namespace this revisor works in (`--namespace`), as its applies are.
    if let Some(n) = ns.filter(|n| !s.cluster.covers(n)) {
        return Err(ApiError::Forbidden(format!(
            "namespace {n:?} is not watched: this revisor works in namespace {:?} (--namespace)",
            s.cluster.namespace().unwrap_or_default()
        )));
    }
    let cluster = s.cluster.clone();
    if q.watches() {
        let options = q.options.clone();
        let params = revisor_kube::WatchParams {
            label_selector: Some(q.label_text.clone()).filter(|t| !t.is_empty()),
            field_selector: Some(q.field_text.clone()).filter(|t| !t.is_empty()),
            // kube's client gives up on a response after 295 s: longer watches end sooner and are
            // started again by their clients, as any watch that times out.
            timeout: Some(options.timeout.as_secs().min(290) as u32),
            // A watch-list (`sendInitialEvents`) ends its initial events with a bookmark.
            bookmarks: options.bookmarks || options.initial_events,
            send_initial_events: options.initial_events,
        };
        let version = options.resource_version.unwrap_or_else(|| "0".into());
        let events = s
            .cluster
            .watch(resource, ns, &params, &version)
            .await
            .map_err(|e| from_kube("watching", e))?;
        return Ok(relay::<T>(events, q, move |ns, name| cluster.service(ns, name)));
    }
    let (items, version) = s
        .cluster
        .list::<T>(resource, ns)
        .await
        .map_err(|e| from_kube("listing", e))?;
    let version = version.and_then(|v| v.parse::<u64>().ok());
    Ok(respond(items, version, &q, |ns, name| cluster.service(ns, name)))
}

/// An error of the cluster's API server, with its code.
fn from_kube(doing: &str, e: revisor_kube::KubeError) -> ApiError {
    let message = format!("{doing} on the cluster: {e}");
    match &e {
        revisor_kube::KubeError::Api(r) if r.code == 404 => ApiError::NotFound(message),
        revisor_kube::KubeError::Api(r) if r.code == 400 => ApiError::BadRequest(message),
        _ => ApiError::Internal(message),
    }
}

fn from_apply(kind: &'static str, name: &str, e: ApplyError) -> ApiError {
    match e {
        ApplyError::Invalid(errors) => ApiError::invalid(kind, name, errors),
        ApplyError::Conflict(m) => ApiError::Conflict(m),
        ApplyError::NotFound(m) => ApiError::NotFound(m),
        ApplyError::Rejected(m) => ApiError::BadRequest(m),
        ApplyError::Api(m) => ApiError::Internal(m),
    }
}

/// Server-side applies one document: 201 `created` when the cluster did not hold it, else 200 with
/// `configured`, or `unchanged` when its resourceVersion stayed the same.
async fn write(
    s: &ClusterState,
    kind: &'static str,
    ns: String,
    name: Option<String>,
    value: Value,
    params: HashMap<String, String>,
) -> Result<Response, ApiError> {
    let value = placed(&ns, name.as_deref(), value)?;
    let options = revisor_kube::ApplyOptions {
        dry_run: dry_run(&params)?,
        force: params.get("force").is_some_and(|f| f == "true"),
    };
    let shown = body_name(&value);
    let before = match kind {
        "Service" => s.cluster.service(&ns, &shown).map(|o| o.metadata.resource_version),
        _ => s.cluster.rollout(&ns, &shown).map(|(o, _)| o.metadata.resource_version),
    };
    let obj = revisor_kube::apply(&s.cluster, &value, &s.defaults, &ns, options)
        .await
        .map_err(|e| from_apply(kind, &shown, e))?;
    let after = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str);
    let (code, outcome) = match before {
        None => (StatusCode::CREATED, "created"),
        Some(rv) if rv.as_deref() == after => (StatusCode::OK, "unchanged"),
        Some(_) => (StatusCode::OK, "configured"),
    };
    Ok((code, [("revisor-apply-result", outcome)], Json(obj)).into_response())
}

/// What a cluster does not hold through revisor: configurations are the cluster's own to show.
fn not_held(kind: Kind) -> ApiError {
    ApiError::NotFound(format!(
        "{}s are not served with --backend knative: use kubectl against the cluster",
        kind.name().to_lowercase()
    ))
}

fn to_value(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl Backend for ClusterState {
    const LOCAL: bool = false;

    async fn list(&self, kind: Kind, ns: Option<String>, q: ListQuery) -> Result<Response, ApiError> {
        let ns = ns.as_deref();
        match kind {
            Kind::Service => listed::<Service>(self, &revisor_kube::SERVICE, ns, q).await,
            Kind::Revision => listed::<Revision>(self, &revisor_kube::REVISION, ns, q).await,
            Kind::Rollout => listed::<Rollout>(self, &revisor_kube::ROLLOUT, ns, q).await,
            Kind::Configuration => Err(not_held(kind)),
        }
    }

    async fn get(&self, kind: Kind, ns: String, name: String) -> Result<Value, ApiError> {
        let found = match kind {
            Kind::Service => self.cluster.service(&ns, &name).map(to_value),
            Kind::Revision => self.cluster.revision(&ns, &name).map(to_value),
            Kind::Rollout => self.cluster.rollout(&ns, &name).map(|(r, _)| to_value(r)),
            Kind::Configuration => return Err(not_held(kind)),
        };
        found.ok_or_else(|| kind.not_found(&ns, &name))
    }

    /// Creates, replaces and applies are server-side applies to the cluster (field manager
    /// `revisor`); merge and JSON patches are the cluster's to serve.
    async fn write(&self, kind: Kind, w: Write) -> Result<Response, ApiError> {
        let Write {
            ns,
            name,
            change,
            params,
        } = w;
        let value = match change {
            Change::Create(v) | Change::Replace(v) | Change::Patch(Patch::Apply(v)) => v,
            Change::Patch(_) => {
                return Err(ApiError::UnsupportedMediaType(
                    "merge and JSON patches are not served with --backend knative: apply the object \
                     (kubectl apply --server-side), or patch it with kubectl against the cluster"
                        .into(),
                ))
            }
        };
        match kind {
            Kind::Service | Kind::Rollout => write(self, kind.name(), ns, name, value, params).await,
            _ => Err(not_held(kind)),
        }
    }

    async fn delete(
        &self,
        kind: Kind,
        ns: String,
        name: String,
        options: DeleteOptions,
        _force: bool,
    ) -> Result<(), ApiError> {
        let resource = match kind {
            Kind::Service => &revisor_kube::SERVICE,
            Kind::Rollout => &revisor_kube::ROLLOUT,
            Kind::Revision => {
                return Err(ApiError::MethodNotAllowed(
                    "revision deletes are the cluster's with --backend knative: use kubectl".into(),
                ))
            }
            Kind::Configuration => return Err(not_held(kind)),
        };
        revisor_kube::delete(
            &self.cluster,
            resource,
            &ns,
            &name,
            options.dry_run,
            (options.uid, options.resource_version),
        )
        .await
        .map_err(|e| from_apply(kind.name(), &name, e))
    }

    async fn request(&self, ns: String, name: String, action: String, to: Option<String>) -> Result<Value, ApiError> {
        revisor_kube::request(&self.cluster, &ns, &name, &action, to.as_deref())
            .await
            .map(to_value)
            .map_err(|e| from_apply("Rollout", &name, e))
    }

    async fn service_events(&self, ns: String, name: String) -> Result<Vec<Value>, ApiError> {
        if self.cluster.service(&ns, &name).is_none() {
            return Err(Kind::Service.not_found(&ns, &name));
        }
        self.cluster
            .events(&ns, &name)
            .await
            .map_err(|e| ApiError::Internal(format!("listing events: {e}")))
    }

    fn extra(&self) -> Router {
        Router::new()
    }

    fn not_found(uri: &Uri) -> ApiError {
        ApiError::NotFound(format!(
            "no such path {} with --backend knative (configurations, revision deletes, logs and gateway \
             metrics belong to the cluster: use kubectl)",
            uri.path()
        ))
    }
}

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
use super::collection::{respond, ListQuery, Listed};
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

/// Lists from the watched caches, filtered, paged and as Tables as the local backend answers them. A
/// watch is the cluster's own API server's to serve (kubectl can talk to it directly).
fn listed<T: Listed>(s: &ClusterState, mut items: Vec<T>, q: ListQuery) -> Result<Response, ApiError> {
    if q.watches() {
        return Err(ApiError::BadRequest(
            "watch is not served with --backend knative: watch the cluster's API server with kubectl".into(),
        ));
    }
    items.sort_by(|a, b| (&a.meta().namespace, &a.meta().name).cmp(&(&b.meta().namespace, &b.meta().name)));
    Ok(respond(items, None, &q, |ns, name| s.cluster.service(ns, name)))
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
            Kind::Service => listed(self, self.cluster.services(ns), q),
            Kind::Revision => listed(self, self.cluster.revisions(ns), q),
            Kind::Rollout => listed(self, self.cluster.rollouts(ns), q),
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

//! The admin API of `revisor serve --backend knative`: the same paths and answers as locally, over a
//! Kubernetes cluster. Applies are server-side applies to the cluster (field manager `revisor`); reads
//! come from the watched caches; a Rollout request is written to the cluster's Rollout. What only the
//! local backend has (configurations, logs, gateway metrics) answers 404 with the reason.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use revisor_api::Defaults;
use revisor_kube::{ApplyError, Cluster};
use serde_json::{json, Value};

use super::collection::{respond, ListQuery, Listed};
use super::handlers::{body_document, body_name, dry_run, healthz, placed};
use super::{ApiError, MAX_BODY_BYTES, REVISOR, SERVING};

#[derive(Clone)]
pub struct ClusterState {
    pub cluster: Cluster,
    pub defaults: Arc<Defaults>,
}

type Params = Query<HashMap<String, String>>;

pub fn router(state: ClusterState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route(&format!("{SERVING}/services"), get(list_services_all))
        .route(
            &format!("{SERVING}/namespaces/{{ns}}/services"),
            get(list_services).post(create::<false>),
        )
        .route(
            &format!("{SERVING}/namespaces/{{ns}}/services/{{name}}"),
            get(get_service)
                .patch(apply::<false>)
                .put(apply::<false>)
                .delete(delete_service),
        )
        .route(
            &format!("{SERVING}/namespaces/{{ns}}/services/{{name}}/events"),
            get(service_events),
        )
        .route(&format!("{SERVING}/revisions"), get(list_revisions_all))
        .route(&format!("{SERVING}/namespaces/{{ns}}/revisions"), get(list_revisions))
        .route(
            &format!("{SERVING}/namespaces/{{ns}}/revisions/{{name}}"),
            get(get_revision),
        )
        .route(&format!("{REVISOR}/rollouts"), get(list_rollouts_all))
        .route(
            &format!("{REVISOR}/namespaces/{{ns}}/rollouts"),
            get(list_rollouts).post(create::<true>),
        )
        .route(
            &format!("{REVISOR}/namespaces/{{ns}}/rollouts/{{name}}"),
            get(get_rollout)
                .patch(apply::<true>)
                .put(apply::<true>)
                .delete(delete_rollout),
        )
        .route(
            &format!("{REVISOR}/namespaces/{{ns}}/rollouts/{{name}}/{{action}}"),
            axum::routing::post(rollout_action),
        )
        .merge(super::discovery::routes(false))
        .fallback(not_served)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_served(uri: Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no such path {} with --backend knative (configurations, revision deletes, logs and gateway metrics \
         belong to the cluster: use kubectl)",
        uri.path()
    ))
}

/// Lists from the watched caches, filtered, paged and as Tables as the local backend answers them. A
/// watch is the cluster's own API server's to serve (kubectl can talk to it directly).
fn listed<T: Listed>(
    s: &ClusterState,
    mut items: Vec<T>,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let q = ListQuery::parse(params, headers)?;
    if q.watches() {
        return Err(ApiError::BadRequest(
            "watch is not served with --backend knative: watch the cluster's API server with kubectl".into(),
        ));
    }
    items.sort_by(|a, b| (&a.meta().namespace, &a.meta().name).cmp(&(&b.meta().namespace, &b.meta().name)));
    Ok(respond(items, None, &q, |ns, name| s.cluster.service(ns, name)))
}

/// The list handlers of one kind: every namespace, and one.
macro_rules! lists {
    ($all:ident, $ns:ident, $read:ident) => {
        async fn $all(
            State(s): State<ClusterState>,
            Query(p): Params,
            headers: HeaderMap,
        ) -> Result<Response, ApiError> {
            listed(&s, s.cluster.$read(None), &p, &headers)
        }
        async fn $ns(
            State(s): State<ClusterState>,
            Path(ns): Path<String>,
            Query(p): Params,
            headers: HeaderMap,
        ) -> Result<Response, ApiError> {
            listed(&s, s.cluster.$read(Some(&ns)), &p, &headers)
        }
    };
}
lists!(list_services_all, list_services, services);
lists!(list_revisions_all, list_revisions, revisions);
lists!(list_rollouts_all, list_rollouts, rollouts);

fn from_apply(kind: &'static str, name: &str, e: ApplyError) -> ApiError {
    match e {
        ApplyError::Invalid(errors) => ApiError::invalid(kind, name, errors),
        ApplyError::Conflict(m) => ApiError::Conflict(m),
        ApplyError::NotFound(m) => ApiError::NotFound(m),
        ApplyError::Rejected(m) => ApiError::BadRequest(m),
        ApplyError::Api(m) => ApiError::Internal(m),
    }
}

async fn get_service(
    State(s): State<ClusterState>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    s.cluster
        .service(&ns, &name)
        .map(|o| Json(o).into_response())
        .ok_or_else(|| ApiError::NotFound(format!("Service \"{ns}/{name}\" not found")))
}

async fn get_revision(
    State(s): State<ClusterState>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    s.cluster
        .revision(&ns, &name)
        .map(|o| Json(o).into_response())
        .ok_or_else(|| ApiError::NotFound(format!("Revision \"{ns}/{name}\" not found")))
}

async fn get_rollout(
    State(s): State<ClusterState>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    s.cluster
        .rollout(&ns, &name)
        .map(|(r, _)| Json(r).into_response())
        .ok_or_else(|| ApiError::NotFound(format!("Rollout \"{ns}/{name}\" not found")))
}

async fn service_events(
    State(s): State<ClusterState>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    if s.cluster.service(&ns, &name).is_none() {
        return Err(ApiError::NotFound(format!("Service \"{ns}/{name}\" not found")));
    }
    let items = s
        .cluster
        .events(&ns, &name)
        .await
        .map_err(|e| ApiError::Internal(format!("listing events: {e}")))?;
    Ok(Json(
        json!({ "apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items }),
    ))
}

/// Server-side applies one document: 201 `created` when the cluster did not hold it, else 200 with
/// `configured`, or `unchanged` when its resourceVersion stayed the same.
async fn write(
    s: ClusterState,
    kind: &'static str,
    ns: String,
    name: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    params: HashMap<String, String>,
) -> Result<Response, ApiError> {
    let value = placed(&ns, name.as_deref(), body_document(&headers, body)?)?;
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

/// The kind a create or apply handler writes: `Rollout` when `ROLLOUT`, else `Service`.
const fn kind_of(rollout: bool) -> &'static str {
    if rollout {
        "Rollout"
    } else {
        "Service"
    }
}

/// `POST .../{services|rollouts}`.
async fn create<const ROLLOUT: bool>(
    State(s): State<ClusterState>,
    Path(ns): Path<String>,
    Query(p): Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    write(s, kind_of(ROLLOUT), ns, None, headers, body, p).await
}

/// `PATCH` (server-side apply) or `PUT` of `.../{services|rollouts}/{name}`.
async fn apply<const ROLLOUT: bool>(
    State(s): State<ClusterState>,
    Path((ns, name)): Path<(String, String)>,
    Query(p): Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    write(s, kind_of(ROLLOUT), ns, Some(name), headers, body, p).await
}

/// `POST .../rollouts/{name}/{action}`, body optional: `{"toRevision": "..."}` for undo.
async fn rollout_action(
    State(s): State<ClusterState>,
    Path((ns, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let to = super::rollouts::to_revision(&headers, &body)?;
    revisor_kube::request(&s.cluster, &ns, &name, &action, to.as_deref())
        .await
        .map(|r| Json(r).into_response())
        .map_err(|e| from_apply("Rollout", &name, e))
}

async fn delete_service(
    State(s): State<ClusterState>,
    Path((ns, name)): Path<(String, String)>,
    Query(p): Params,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let options = super::handlers::delete_options(&p, &body)?;
    revisor_kube::delete(
        &s.cluster,
        &revisor_kube::SERVICE,
        &ns,
        &name,
        options.dry_run,
        (options.uid, options.resource_version),
    )
    .await
    .map_err(|e| from_apply("Service", &name, e))?;
    Ok(super::handlers::deleted("services", &name))
}

async fn delete_rollout(
    State(s): State<ClusterState>,
    Path((ns, name)): Path<(String, String)>,
    Query(p): Params,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let options = super::handlers::delete_options(&p, &body)?;
    revisor_kube::delete(
        &s.cluster,
        &revisor_kube::ROLLOUT,
        &ns,
        &name,
        options.dry_run,
        (options.uid, options.resource_version),
    )
    .await
    .map_err(|e| from_apply("Rollout", &name, e))?;
    Ok(super::handlers::deleted("rollouts", &name))
}

//! The admin API: Kubernetes-style paths over the store, JSON in and out, errors as `Status` objects.

pub mod cluster;
mod collection;
mod discovery;
mod events;
pub mod guard;
mod handlers;
mod observe;
mod openapi;
mod patch;
mod rollouts;
mod status;

pub use status::ApiError;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use revisor_api::Defaults;
use revisor_store::Store;

/// The largest request body accepted (Kubernetes' own limit is 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    pub defaults: Arc<Defaults>,
    /// The data plane, when this server runs one.
    pub gateway: Option<revisor_gateway::Gateway>,
    /// Where replica logs are kept, when this server runs replicas.
    pub logs: Option<PathBuf>,
    /// What `GET /metrics` encodes (the gateway's and the autoscaler's collectors), when this server
    /// runs a data plane.
    pub metrics: Option<Arc<prometheus_client::registry::Registry>>,
}

const SERVING: &str = "/apis/serving.knative.dev/v1";
const REVISOR: &str = "/apis/revisor.dev/v1alpha1";

/// The admin API's routes; tests call `router(state).oneshot(request)` without a socket.
pub fn router(state: AdminState) -> Router {
    use collection::{all, namespaced};
    use handlers::*;
    use revisor_api::{Configuration, Revision, Rollout, Service};
    Router::new()
        .route("/healthz", get(healthz))
        .route(&format!("{SERVING}/services"), get(all::<Service>))
        .route(
            &format!("{SERVING}/namespaces/{{ns}}/services"),
            get(namespaced::<Service>).post(create_service),
        )
        .route(
            &format!("{SERVING}/namespaces/{{ns}}/services/{{name}}"),
            get(get_service)
                .put(replace_service)
                .patch(apply_service)
                .delete(delete_service),
        )
        .route(
            &format!("{SERVING}/namespaces/{{ns}}/services/{{name}}/events"),
            get(service_events),
        )
        .route(
            &format!("{SERVING}/namespaces/{{ns}}/services/{{name}}/status"),
            get(get_status::<Service>).put(write_status).patch(write_status),
        )
        .route(
            &format!("{SERVING}/namespaces/{{ns}}/revisions/{{name}}/status"),
            get(get_status::<Revision>).put(write_status).patch(write_status),
        )
        .route(
            &format!("{SERVING}/namespaces/{{ns}}/configurations/{{name}}/status"),
            get(get_status::<Configuration>).put(write_status).patch(write_status),
        )
        .route(
            &format!("{REVISOR}/namespaces/{{ns}}/rollouts/{{name}}/status"),
            get(get_status::<Rollout>).put(write_status).patch(write_status),
        )
        .route(&format!("{SERVING}/revisions"), get(all::<Revision>))
        .route(
            &format!("{SERVING}/namespaces/{{ns}}/revisions"),
            get(namespaced::<Revision>),
        )
        .route(
            &format!("{SERVING}/namespaces/{{ns}}/revisions/{{name}}"),
            get(get_revision).delete(delete_revision),
        )
        .route(&format!("{SERVING}/configurations"), get(all::<Configuration>))
        .route(
            &format!("{SERVING}/namespaces/{{ns}}/configurations"),
            get(namespaced::<Configuration>),
        )
        .route(
            &format!("{SERVING}/namespaces/{{ns}}/configurations/{{name}}"),
            get(get_configuration),
        )
        .route(
            &format!("{SERVING}/namespaces/{{ns}}/revisions/{{name}}/log"),
            get(observe::revision_log),
        )
        .route(&format!("{REVISOR}/rollouts"), get(all::<Rollout>))
        .route(
            &format!("{REVISOR}/namespaces/{{ns}}/rollouts"),
            get(namespaced::<Rollout>).post(rollouts::create),
        )
        .route(
            &format!("{REVISOR}/namespaces/{{ns}}/rollouts/{{name}}"),
            get(rollouts::get_one)
                .put(rollouts::replace)
                .patch(rollouts::apply)
                .delete(rollouts::delete),
        )
        .route(
            &format!("{REVISOR}/namespaces/{{ns}}/rollouts/{{name}}/{{action}}"),
            axum::routing::post(rollouts::action),
        )
        .route("/metrics", get(observe::metrics))
        .route(
            "/apis/revisor.dev/v1alpha1/revisionmetrics",
            get(observe::metric_snapshots),
        )
        .route("/api/v1/events", get(events::all::<false>))
        .route("/api/v1/namespaces/{ns}/events", get(events::namespaced::<false>))
        .route("/apis/events.k8s.io/v1/events", get(events::all::<true>))
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events",
            get(events::namespaced::<true>),
        )
        .merge(discovery::routes(true))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

//! The admin API: Kubernetes-style paths over the store, JSON in and out, errors as `Status` objects.

mod backend;
pub mod cluster;
mod collection;
mod dashboard;
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

/// The admin API over the embedded store; tests call `router(state).oneshot(request)` without a socket.
pub fn router(state: AdminState) -> Router {
    backend::router(state)
}

/// What only the local backend serves: replica logs, the data plane's metrics, the events it
/// records as Kubernetes event lists, and the dashboard.
fn local_routes() -> Router<AdminState> {
    Router::new()
        .route(
            &format!("{SERVING}/namespaces/{{ns}}/revisions/{{name}}/log"),
            get(observe::revision_log),
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
        .merge(dashboard::routes())
}

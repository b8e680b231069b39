//! One admin API over both backends: the object-store trait (`Backend`: list or watch, get, write,
//! delete and an operator's request, by kind) and the one router that serves it. The embedded store
//! (`AdminState`, handlers.rs) and a Kubernetes cluster (`ClusterState`, cluster.rs) implement it;
//! what only one backend has (logs, gateway metrics and event lists locally) is that backend's
//! `extra` routes.

use std::collections::HashMap;
use std::future::Future;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use revisor_api::schema::{KindInfo, CONFIGURATION, REVISION, ROLLOUT, SERVICE};
use revisor_controller::DeleteOptions;
use serde_json::{json, Value};

use super::collection::ListQuery;
use super::handlers::{body_document, delete_options, deleted, healthz, write_status};
use super::patch::Patch;
use super::{ApiError, MAX_BODY_BYTES};

/// The kinds the admin API holds objects of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Service,
    Revision,
    Configuration,
    Rollout,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Service, Kind::Revision, Kind::Configuration, Kind::Rollout];

    pub(crate) fn info(self) -> &'static KindInfo {
        match self {
            Kind::Service => &SERVICE,
            Kind::Revision => &REVISION,
            Kind::Configuration => &CONFIGURATION,
            Kind::Rollout => &ROLLOUT,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        self.info().kind
    }

    /// Services and Rollouts are written through the API; revisions and configurations are made
    /// from a Service.
    fn writable(self) -> bool {
        matches!(self, Kind::Service | Kind::Rollout)
    }

    /// `Service "ns/name" not found`.
    pub(crate) fn not_found(self, ns: &str, name: &str) -> ApiError {
        ApiError::NotFound(format!("{} \"{ns}/{name}\" not found", self.name()))
    }
}

/// A write as the router received it: a whole object (create or replace) or a patch (server-side
/// apply, merge or JSON patch), with the request's query parameters.
pub(crate) struct Write {
    pub ns: String,
    /// `None` for a create, which takes the body's name.
    pub name: Option<String>,
    pub change: Change,
    pub params: HashMap<String, String>,
}

pub(crate) enum Change {
    Create(Value),
    Replace(Value),
    Patch(Patch),
}

/// What the admin API needs of a backend. Every method answers with the API's own errors; a kind a
/// backend does not hold, or a method it does not serve, is an error that says so.
pub(crate) trait Backend: Clone + Send + Sync + 'static {
    /// Whether this is the embedded store (discovery and OpenAPI list what each backend serves).
    const LOCAL: bool;

    /// A list (filtered, paged, or as a Table) or a watch of `kind` in `ns` (`None`: every namespace).
    fn list(
        &self,
        kind: Kind,
        ns: Option<String>,
        q: ListQuery,
    ) -> impl Future<Output = Result<Response, ApiError>> + Send;

    fn get(&self, kind: Kind, ns: String, name: String) -> impl Future<Output = Result<Value, ApiError>> + Send;

    /// Creates, replaces or patches a Service or a Rollout; answers 201 or 200 with the stored object.
    fn write(&self, kind: Kind, w: Write) -> impl Future<Output = Result<Response, ApiError>> + Send;

    /// Deletes an object (`force`: a revision that traffic still names, locally).
    fn delete(
        &self,
        kind: Kind,
        ns: String,
        name: String,
        options: DeleteOptions,
        force: bool,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// An operator's request to a Rollout (promote, abort, undo ...); answers with the Rollout.
    fn request(
        &self,
        ns: String,
        name: String,
        action: String,
        to_revision: Option<String>,
    ) -> impl Future<Output = Result<Value, ApiError>> + Send;

    /// The events about a Service.
    fn service_events(&self, ns: String, name: String) -> impl Future<Output = Result<Vec<Value>, ApiError>> + Send;

    /// Routes only this backend serves, with its state.
    fn extra(&self) -> Router;

    /// The answer to a path the API does not serve.
    fn not_found(uri: &Uri) -> ApiError;
}

type Params = Query<HashMap<String, String>>;

/// The admin API over `backend`; tests call `router(state).oneshot(request)` without a socket.
pub(crate) fn router<B: Backend>(backend: B) -> Router {
    let mut api: Router<B> = Router::new().route("/healthz", get(healthz));
    for kind in Kind::ALL {
        let KindInfo {
            group, version, plural, ..
        } = *kind.info();
        let base = format!("/apis/{group}/{version}");
        api = api
            .route(
                &format!("{base}/{plural}"),
                get(move |s: State<B>, p: Params, h: HeaderMap| list(s, kind, None, p, h)),
            )
            .route(&format!("{base}/namespaces/{{ns}}/{plural}"), collection::<B>(kind))
            .route(
                &format!("{base}/namespaces/{{ns}}/{plural}/{{name}}"),
                object::<B>(kind),
            )
            .route(
                &format!("{base}/namespaces/{{ns}}/{plural}/{{name}}/status"),
                get(move |State(b): State<B>, Path((ns, name))| async move { b.get(kind, ns, name).await.map(Json) })
                    .put(write_status)
                    .patch(write_status),
            );
    }
    let serving = format!("/apis/{}/{}", SERVICE.group, SERVICE.version);
    let rollouts = format!("/apis/{}/{}", ROLLOUT.group, ROLLOUT.version);
    api = api
        .route(
            &format!("{serving}/namespaces/{{ns}}/services/{{name}}/events"),
            get(service_events::<B>),
        )
        .route(
            &format!("{rollouts}/namespaces/{{ns}}/rollouts/{{name}}/{{action}}"),
            axum::routing::post(rollout_request::<B>),
        )
        .merge(super::discovery::routes(B::LOCAL));
    api.with_state(backend.clone())
        .merge(backend.extra())
        .fallback(|uri: Uri| async move { B::not_found(&uri) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// `.../namespaces/{ns}/{plural}`: list or watch, and create for the kinds written through the API.
fn collection<B: Backend>(kind: Kind) -> MethodRouter<B> {
    let r = get(move |s: State<B>, Path(ns): Path<String>, p: Params, h: HeaderMap| list(s, kind, Some(ns), p, h));
    if !kind.writable() {
        return r;
    }
    r.post(
        move |State(b): State<B>, Path(ns): Path<String>, Query(params): Params, headers: HeaderMap, body| async move {
            let value = body_document(&headers, body)?;
            let w = Write {
                ns,
                name: None,
                change: Change::Create(value),
                params,
            };
            b.write(kind, w).await
        },
    )
}

/// `.../namespaces/{ns}/{plural}/{name}`: get and delete, and replace and patch for the kinds written
/// through the API.
fn object<B: Backend>(kind: Kind) -> MethodRouter<B> {
    let r = get(
        move |State(b): State<B>, Path((ns, name)): Path<(String, String)>| async move {
            b.get(kind, ns, name).await.map(Json)
        },
    )
    .delete(
        move |State(b): State<B>, Path((ns, name)): Path<(String, String)>, Query(p): Params, body: Bytes| async move {
            let options = delete_options(&p, &body)?;
            let force = p.get("force").is_some_and(|f| f == "true");
            b.delete(kind, ns, name.clone(), options, force).await?;
            Ok::<_, ApiError>(deleted(kind.info().plural, &name))
        },
    );
    if !kind.writable() {
        return r;
    }
    r.put(
        move |State(b): State<B>,
              Path((ns, name)): Path<(String, String)>,
              Query(params): Params,
              headers: HeaderMap,
              body: Result<Bytes, BytesRejection>| async move {
            let value = body_document(&headers, body)?;
            let w = Write {
                ns,
                name: Some(name),
                change: Change::Replace(value),
                params,
            };
            b.write(kind, w).await
        },
    )
    .patch(
        move |State(b): State<B>,
              Path((ns, name)): Path<(String, String)>,
              Query(params): Params,
              headers: HeaderMap,
              body: Result<Bytes, BytesRejection>| async move {
            let w = Write {
                ns,
                name: Some(name),
                change: Change::Patch(Patch::read(&headers, body)?),
                params,
            };
            b.write(kind, w).await
        },
    )
}

async fn list<B: Backend>(
    State(b): State<B>,
    kind: Kind,
    ns: Option<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = ListQuery::parse(&params, &headers)?;
    b.list(kind, ns, q).await
}

async fn service_events<B: Backend>(
    State(b): State<B>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let items = b.service_events(ns, name).await?;
    Ok(Json(
        json!({ "apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items }),
    ))
}

/// `POST .../rollouts/{name}/{action}`, body optional: `{"toRevision": "..."}` for undo.
async fn rollout_request<B: Backend>(
    State(b): State<B>,
    Path((ns, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let to = super::rollouts::to_revision(&headers, &body)?;
    Ok(Json(b.request(ns, name, action, to).await?).into_response())
}

//! Kubernetes API discovery for revisor's kinds: `/version`, `/api`, `/apis`, `/apis/<group>` and
//! `/apis/<group>/<version>`, in the shapes client-go reads (`APIVersions`, `APIGroupList`,
//! `APIGroup`, `APIResourceList`), so that kubectl and client libraries find `ksvc` and `rollouts`
//! on the admin address. Both backends serve it; the verbs say what each one answers.

use axum::extract::Path;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::ApiError;

/// The Kubernetes API level whose discovery shapes revisor serves (`/version`).
const KUBE_MINOR: &str = "32";

/// One resource of a group version, as `APIResourceList` lists it.
pub(super) struct Resource {
    pub name: &'static str,
    singular: &'static str,
    pub kind: &'static str,
    short: &'static [&'static str],
    categories: &'static [&'static str],
    pub verbs: &'static [&'static str],
    /// Whether it has a status subresource (revisor's kinds do; events do not).
    status: bool,
}

// Every kind is watched: locally from the store's history, on a cluster relayed from its API server.
const READ_WATCH: &[&str] = &["get", "list", "watch"];
const WRITE_WATCH: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];

/// The groups and resources served, per backend: locally revisions can be deleted and
/// configurations read; on a cluster those belong to Knative (kubectl talks to it directly).
pub(super) fn groups(local: bool) -> Vec<(&'static str, &'static str, Vec<Resource>)> {
    let knative: &[&str] = &["all", "knative", "serving"];
    let mut serving = vec![
        Resource {
            name: "services",
            singular: "service",
            kind: "Service",
            short: &["kservice", "ksvc"],
            categories: knative,
            verbs: WRITE_WATCH,
            status: true,
        },
        Resource {
            name: "revisions",
            singular: "revision",
            kind: "Revision",
            short: &["rev"],
            categories: knative,
            verbs: if local {
                &["delete", "get", "list", "watch"]
            } else {
                READ_WATCH
            },
            status: true,
        },
    ];
    if local {
        serving.push(Resource {
            name: "configurations",
            singular: "configuration",
            kind: "Configuration",
            short: &["config", "cfg"],
            categories: knative,
            verbs: READ_WATCH,
            status: true,
        });
    }
    let rollouts = vec![Resource {
        name: "rollouts",
        singular: "rollout",
        kind: "Rollout",
        short: &["ro"],
        categories: &["all", "revisor"],
        verbs: WRITE_WATCH,
        status: true,
    }];
    let mut all = vec![
        ("serving.knative.dev", "v1", serving),
        ("revisor.dev", "v1alpha1", rollouts),
    ];
    if local {
        // The events revisor records, in events.k8s.io's shape too (`events.rs`).
        all.push((
            "events.k8s.io",
            "v1",
            vec![Resource {
                name: "events",
                singular: "event",
                kind: "Event",
                short: &[],
                categories: &[],
                verbs: &["list", "watch"],
                status: false,
            }],
        ));
    }
    all
}

/// The discovery routes, for the local backend's router (`local`) or the cluster's.
pub fn routes<S: Clone + Send + Sync + 'static>(local: bool) -> Router<S> {
    Router::new()
        .route("/version", get(version))
        .route(
            "/api",
            get(move |headers: HeaderMap| async move {
                if aggregated(&headers) {
                    return aggregated_answer(core_discovery(local));
                }
                Json(api(local)).into_response()
            }),
        )
        .route("/api/v1", get(move || async move { Json(core_v1(local)) }))
        .route(
            "/apis",
            get(move |headers: HeaderMap| async move {
                if aggregated(&headers) {
                    return aggregated_answer(groups_discovery(local));
                }
                Json(group_list(local)).into_response()
            }),
        )
        .route(
            "/apis/{group}",
            get(move |Path(group): Path<String>| async move { group_of(local, &group).map(Json) }),
        )
        .merge(super::openapi::routes(local))
        .route(
            "/apis/{group}/{version}",
            get(move |Path((group, version)): Path<(String, String)>| async move {
                resource_list(local, &group, &version).map(Json)
            }),
        )
}

async fn version() -> Json<Value> {
    Json(json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0+revisor.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        }),
    }))
}

/// The core group: locally its one version, `v1`, with the events (clients such as kube-rs refuse a
/// server whose core group has no version, kubectl one whose version has no resource); on a cluster
/// none (kubectl reads the cluster's own).
fn api(local: bool) -> Value {
    let versions: &[&str] = if local { &["v1"] } else { &[] };
    json!({ "kind": "APIVersions", "versions": versions, "serverAddressByClientCIDRs": [] })
}

/// The media type of aggregated discovery (Kubernetes 1.30+), which kubectl asks for first.
const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the Accept header asks for aggregated discovery (v2).
fn aggregated(headers: &HeaderMap) -> bool {
    super::collection::accepts(headers, |params| {
        params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
            && params.contains(&"as=APIGroupDiscoveryList")
    })
}

fn aggregated_answer(items: Vec<Value>) -> Response {
    let body = json!({ "kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items });
    ([(header::CONTENT_TYPE, AGGREGATED)], Json(body)).into_response()
}

/// One group's aggregated discovery: its versions and their resources.
fn group_discovery(group: &str, version: &str, resources: &[Value]) -> Value {
    let status: Vec<&str> = resources
        .iter()
        .filter_map(|r| r["name"].as_str()?.strip_suffix("/status"))
        .collect();
    let resources: Vec<Value> = resources
        .iter()
        .filter(|r| !r["name"].as_str().unwrap_or("").contains('/'))
        .map(|r| {
            let subresources: Vec<Value> = status
                .iter()
                .filter(|name| r["name"] == **name)
                .map(|_| {
                    json!({
                        "subresource": "status",
                        "responseKind": { "group": group, "version": version, "kind": r["kind"] },
                        "verbs": ["get"],
                    })
                })
                .collect();
            json!({
                "subresources": subresources,
                "resource": r["name"],
                "responseKind": { "group": group, "version": version, "kind": r["kind"] },
                "scope": "Namespaced",
                "singularResource": r["singularName"],
                "verbs": r["verbs"],
                "shortNames": r.get("shortNames").cloned().unwrap_or(json!([])),
                "categories": r.get("categories").cloned().unwrap_or(json!([])),
            })
        })
        .collect();
    json!({
        "metadata": { "name": group },
        "versions": [{ "version": version, "resources": resources, "freshness": "Current" }],
    })
}

fn core_discovery(local: bool) -> Vec<Value> {
    let v1 = core_v1(local);
    let resources = v1["resources"].as_array().cloned().unwrap_or_default();
    if resources.is_empty() {
        return vec![];
    }
    vec![group_discovery("", "v1", &resources)]
}

fn groups_discovery(local: bool) -> Vec<Value> {
    groups(local)
        .into_iter()
        .map(|(g, v, _)| {
            let list = resource_list(local, g, v).expect("every listed group version has resources");
            group_discovery(g, v, list["resources"].as_array().map(Vec::as_slice).unwrap_or(&[]))
        })
        .collect()
}

/// Core v1: the events revisor records (`events.rs`).
fn core_v1(local: bool) -> Value {
    let events = json!({
        "name": "events", "singularName": "event", "namespaced": true, "kind": "Event",
        "verbs": ["list", "watch"], "shortNames": ["ev"],
    });
    let resources = if local { vec![events] } else { vec![] };
    json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": resources })
}

fn group_json(name: &str, version: &str) -> Value {
    let gv = json!({ "groupVersion": format!("{name}/{version}"), "version": version });
    json!({ "name": name, "versions": [gv.clone()], "preferredVersion": gv })
}

fn group_list(local: bool) -> Value {
    let groups: Vec<Value> = groups(local).iter().map(|(g, v, _)| group_json(g, v)).collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

fn group_of(local: bool, group: &str) -> Result<Value, ApiError> {
    let (g, v, _) = groups(local)
        .into_iter()
        .find(|(g, _, _)| *g == group)
        .ok_or_else(|| ApiError::NotFound(format!("no such path /apis/{group} (no API group {group:?} here)")))?;
    let mut out = group_json(g, v);
    out["kind"] = json!("APIGroup");
    out["apiVersion"] = json!("v1");
    Ok(out)
}

fn resource_list(local: bool, group: &str, version: &str) -> Result<Value, ApiError> {
    let (g, v, resources) = groups(local)
        .into_iter()
        .find(|(g, v, _)| *g == group && *v == version)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no such path /apis/{group}/{version} (no API group version \"{group}/{version}\" here)"
            ))
        })?;
    let mut out = Vec::new();
    for r in &resources {
        out.push(json!({
            "name": r.name,
            "singularName": r.singular,
            "namespaced": true,
            "kind": r.kind,
            "verbs": r.verbs,
            "shortNames": r.short,
            "categories": r.categories,
        }));
    }
    // Locally each kind's status is a subresource, read-only (revisor's controllers write it).
    if local {
        for r in resources.iter().filter(|r| r.status) {
            out.push(json!({
                "name": format!("{}/status", r.name),
                "singularName": "",
                "namespaced": true,
                "kind": r.kind,
                "verbs": ["get"],
            }));
        }
    }
    Ok(json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{g}/{v}"), "resources": out }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ksvc_and_rollouts_are_discoverable() {
        let list = group_list(true);
        let names: Vec<&str> = list["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["serving.knative.dev", "revisor.dev", "events.k8s.io"]);
        assert_eq!(
            group_list(false)["groups"].as_array().unwrap().len(),
            2,
            "events are local"
        );
        let serving = resource_list(true, "serving.knative.dev", "v1").unwrap();
        let svc = &serving["resources"][0];
        assert_eq!(
            (svc["name"].as_str(), svc["kind"].as_str()),
            (Some("services"), Some("Service"))
        );
        assert!(svc["shortNames"].as_array().unwrap().contains(&json!("ksvc")));
        let cluster = resource_list(false, "serving.knative.dev", "v1").unwrap();
        assert!(cluster["resources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["name"] != "configurations"));
        assert!(resource_list(true, "serving.knative.dev", "v2").is_err());
        let all = groups_discovery(true);
        assert_eq!(all[0]["metadata"]["name"], "serving.knative.dev");
        let ksvc = &all[0]["versions"][0]["resources"][0];
        assert_eq!(ksvc["responseKind"]["kind"], "Service");
        assert!(ksvc["shortNames"].as_array().unwrap().contains(&json!("ksvc")));
        assert_eq!(
            core_discovery(true)[0]["versions"][0]["resources"][0]["resource"],
            "events"
        );
        assert!(core_discovery(false).is_empty());
        let mut kubectl = HeaderMap::new();
        kubectl.insert(
            header::ACCEPT,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
                .parse()
                .unwrap(),
        );
        assert!(aggregated(&kubectl));
        assert!(!aggregated(&HeaderMap::new()));
        assert!(group_of(true, "apps").is_err());
    }
}

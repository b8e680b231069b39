//! A fake Kubernetes API server for revisor's tests, on loopback over plain HTTP.
//!
//! It stores objects of any kind under Kubernetes' REST paths, keeps `resourceVersion` (one counter)
//! and `generation` (bumped when `spec` changes), answers list, get, create, server-side apply (with
//! field ownership per top-level `spec` field, so conflicts between managers are real), JSON merge
//! patch, status replacement (refused on a stale `resourceVersion`) and watches (a JSON line per
//! change). It plays Knative Serving's controller: a Service whose template changes gets a Revision
//! `<svc>-0000N` that becomes Ready shortly after (or fails to, when its container sets
//! `FAKE_FAIL=reason`), and the Service's status (latest revisions, resolved traffic with tag URLs,
//! conditions) follows. It also plays the queue-proxies: every 100 ms each routed revision gets its
//! share of 100 requests per second, failing at its container's `FAKE_ERROR_RATE` and taking
//! `FAKE_LATENCY_MS`, counted on `/metrics` under the names of Knative before 1.19
//! (`revision_request_count`, `revision_request_latencies`) or, after `set_metric_names`, of 1.19 and
//! later (OpenTelemetry's `http_server_request_duration_seconds`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// Knative queue-proxy's latency buckets, in ms.
pub const BUCKETS_MS: [f64; 26] = [
    5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0, 200.0, 250.0, 300.0, 350.0, 400.0, 450.0, 500.0, 600.0, 700.0,
    800.0, 900.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0, 100000.0,
];
/// Requests per second each Service gets, split by its resolved traffic.
pub const SERVICE_RPS: f64 = 100.0;
const KSVC: &str = "serving.knative.dev/v1/services";
const KREV: &str = "serving.knative.dev/v1/revisions";

#[derive(Default)]
struct Counters {
    ok: f64,
    errors: f64,
    /// Requests by their latency in ms.
    by_latency_ms: BTreeMap<u64, f64>,
    sum_ms: f64,
}

/// OpenTelemetry's default HTTP duration buckets, in seconds (Knative 1.19+).
pub const OTEL_BUCKETS_S: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// How the fake queue-proxies name their metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricNames {
    /// Knative before 1.19 (OpenCensus): `revision_request_count`, `revision_request_latencies` (ms).
    #[default]
    OpenCensus,
    /// Knative 1.19 and later: OpenTelemetry's `http_server_request_duration_seconds`.
    OpenTelemetry,
}

struct Stored {
    value: Value,
    /// Top-level `spec` field -> its field manager.
    owners: BTreeMap<String, String>,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    uid: u64,
    /// (resource, namespace, name) -> object; resource is `group/version/plural` (`v1/configmaps`).
    objects: BTreeMap<(String, String, String), Stored>,
    /// Every change: (resourceVersion, resource, namespace, type, object).
    log: Vec<(u64, String, String, &'static str, Value)>,
    /// (namespace, service) -> (configuration generation, last template).
    configs: BTreeMap<(String, String), (u64, Value)>,
    /// (namespace, service, revision) -> queue-proxy counters.
    counters: BTreeMap<(String, String, String), Counters>,
    /// Every request the server answered: (method, path and query).
    requests: Vec<(String, String)>,
    metric_names: MetricNames,
    /// Resources this cluster does not serve (a CRD not installed).
    missing: Vec<String>,
}

/// The fake cluster; stops with the process.
#[derive(Clone)]
pub struct FakeCluster {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    changed: tokio::sync::watch::Sender<u64>,
}

type Shared = (Arc<Mutex<Inner>>, tokio::sync::watch::Sender<u64>);

fn status(code: u16, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code,
    });
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

/// The path's parts: (resource, namespace, name, subresource), or `None` if it is no API path.
/// An API path's parts: (resource, namespace, name, subresource).
type PathParts = (String, Option<String>, Option<String>, Option<String>);

fn parse_path(path: &str) -> Option<PathParts> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let s = |x: &&str| Some(x.to_string());
    match rest {
        [plural] => Some((format!("{gv}/{plural}"), None, None, None)),
        ["namespaces", ns, plural] => Some((format!("{gv}/{plural}"), s(ns), None, None)),
        ["namespaces", ns, plural, name] => Some((format!("{gv}/{plural}"), s(ns), s(name), None)),
        ["namespaces", ns, plural, name, sub] => Some((format!("{gv}/{plural}"), s(ns), s(name), s(sub))),
        _ => None,
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Good enough for a fake: a fixed date with the time of day, RFC 3339.
    format!(
        "2026-01-01T{:02}:{:02}:{:02}Z",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

fn env_of(revision: &Value, key: &str) -> Option<String> {
    revision
        .pointer("/spec/containers/0/env")?
        .as_array()?
        .iter()
        .find(|e| e["name"] == key)?
        .get("value")?
        .as_str()
        .map(str::to_string)
}

impl Inner {
    fn key(res: &str, ns: &str, name: &str) -> (String, String, String) {
        (res.to_string(), ns.to_string(), name.to_string())
    }

    fn get(&self, res: &str, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&Self::key(res, ns, name)).map(|s| &s.value)
    }

    /// Stores `value` (new or changed), stamping metadata, and logs the change.
    fn put(&mut self, res: &str, ns: &str, mut value: Value, owners: Option<BTreeMap<String, String>>) -> Value {
        let name = value["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let key = Self::key(res, ns, &name);
        self.rv += 1;
        let old = self.objects.get(&key);
        let meta = value["metadata"].as_object_mut().expect("metadata");
        meta.insert("namespace".into(), json!(ns));
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        let kind = match old {
            Some(o) => {
                for k in ["uid", "creationTimestamp"] {
                    meta.insert(k.into(), o.value["metadata"][k].clone());
                }
                let generation = o.value["metadata"]["generation"].as_i64().unwrap_or(1);
                let changed = o.value.get("spec") != value.get("spec");
                value["metadata"]["generation"] = json!(if changed { generation + 1 } else { generation });
                "MODIFIED"
            }
            None => {
                self.uid += 1;
                meta.insert("uid".into(), json!(format!("00000000-0000-0000-0000-{:012}", self.uid)));
                meta.insert("creationTimestamp".into(), json!(now()));
                meta.insert("generation".into(), json!(1));
                "ADDED"
            }
        };
        let owners = owners.unwrap_or_else(|| old.map(|o| o.owners.clone()).unwrap_or_default());
        self.objects.insert(
            key,
            Stored {
                value: value.clone(),
                owners,
            },
        );
        self.log
            .push((self.rv, res.to_string(), ns.to_string(), kind, value.clone()));
        value
    }

    /// Knative's controllers after a Service changed: a new Revision for a new template, then status.
    fn reconcile_service(&mut self, ns: &str, name: &str) {
        let Some(svc) = self.get(KSVC, ns, name).cloned() else {
            return;
        };
        let template = svc.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let key = (ns.to_string(), name.to_string());
        let (n, last) = self.configs.get(&key).cloned().unwrap_or((0, Value::Null));
        if last != template {
            let n = n + 1;
            self.configs.insert(key, (n, template.clone()));
            let rev_name = template
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("{name}-{n:05}"));
            let rev = json!({
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Revision",
                "metadata": {
                    "name": rev_name,
                    "namespace": ns,
                    "labels": {
                        "serving.knative.dev/service": name,
                        "serving.knative.dev/configuration": name,
                        "serving.knative.dev/configurationGeneration": n.to_string(),
                    },
                },
                "spec": template.get("spec").cloned().unwrap_or(json!({})),
                "status": {
                    "observedGeneration": 1,
                    "conditions": [{ "type": "Ready", "status": "Unknown", "reason": "Deploying" }],
                },
            });
            self.put(KREV, ns, rev, None);
        }
        self.service_status(ns, name);
    }

    /// The Service's status from its revisions, as Knative's Route and Service reconcilers write it.
    fn service_status(&mut self, ns: &str, name: &str) {
        let Some(mut svc) = self.get(KSVC, ns, name).cloned() else {
            return;
        };
        let mut revisions: Vec<(u64, String, String)> = self
            .objects
            .iter()
            .filter(|((res, rns, _), s)| {
                res == KREV
                    && rns == ns
                    && s.value.pointer("/metadata/labels/serving.knative.dev~1service") == Some(&json!(name))
            })
            .map(|((_, _, rname), s)| {
                let generation = s.value["metadata"]["labels"]["serving.knative.dev/configurationGeneration"]
                    .as_str()
                    .and_then(|g| g.parse().ok())
                    .unwrap_or(0);
                let ready = s.value["status"]["conditions"][0]["status"]
                    .as_str()
                    .unwrap_or("Unknown")
                    .to_string();
                (generation, rname.clone(), ready)
            })
            .collect();
        revisions.sort();
        let latest_created = revisions.last().map(|r| r.1.clone());
        let latest_ready = revisions.iter().rev().find(|r| r.2 == "True").map(|r| r.1.clone());
        let default_traffic = json!([{ "latestRevision": true, "percent": 100 }]);
        let spec_traffic = svc.pointer("/spec/traffic").cloned().unwrap_or(default_traffic);
        let mut traffic = Vec::new();
        let mut resolved = true;
        for t in spec_traffic.as_array().into_iter().flatten() {
            let latest = t["latestRevision"].as_bool().unwrap_or(t.get("revisionName").is_none());
            let rev = if latest {
                latest_ready.clone()
            } else {
                t["revisionName"].as_str().map(str::to_string)
            };
            let Some(rev) = rev else {
                resolved = false;
                continue;
            };
            let mut out = Map::new();
            if let Some(tag) = t["tag"].as_str() {
                out.insert("tag".into(), json!(tag));
                out.insert("url".into(), json!(format!("http://{tag}-{name}.{ns}.example.com")));
            }
            out.insert("revisionName".into(), json!(rev));
            out.insert("latestRevision".into(), json!(latest));
            out.insert("percent".into(), t.get("percent").cloned().unwrap_or(json!(0)));
            traffic.push(Value::Object(out));
        }
        let ready = if resolved && latest_ready.is_some() {
            "True"
        } else {
            "Unknown"
        };
        let new_status = json!({
            "observedGeneration": svc["metadata"]["generation"],
            "url": format!("http://{name}.{ns}.example.com"),
            "latestCreatedRevisionName": latest_created,
            "latestReadyRevisionName": latest_ready,
            "traffic": traffic,
            "conditions": [
                { "type": "ConfigurationsReady", "status": ready },
                { "type": "Ready", "status": ready },
                { "type": "RoutesReady", "status": ready },
            ],
        });
        if svc.get("status") != Some(&new_status) {
            svc["status"] = new_status;
            self.put(KSVC, ns, svc, None);
        }
    }

    /// Marks revisions that have waited long enough Ready (or failed, with `FAKE_FAIL`).
    fn start_revisions(&mut self) {
        let waiting: Vec<(String, String, Value)> = self
            .objects
            .iter()
            .filter(|((res, _, _), s)| res == KREV && s.value["status"]["conditions"][0]["status"] == "Unknown")
            .map(|((_, ns, name), s)| (ns.clone(), name.clone(), s.value.clone()))
            .collect();
        for (ns, _name, mut rev) in waiting {
            let condition = match env_of(&rev, "FAKE_FAIL") {
                Some(why) => json!({ "type": "Ready", "status": "False", "reason": "ExitCode1", "message": why }),
                None => json!({ "type": "Ready", "status": "True" }),
            };
            rev["status"]["conditions"] = json!([condition]);
            rev["status"]["actualReplicas"] = json!(1);
            rev["status"]["desiredReplicas"] = json!(1);
            let svc = rev["metadata"]["labels"]["serving.knative.dev/service"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            self.put(KREV, &ns, rev, None);
            self.service_status(&ns, &svc);
        }
    }

    /// 100 ms of requests, as the queue-proxies would count them.
    fn serve_traffic(&mut self, seconds: f64) {
        let services: Vec<(String, String, Value)> = self
            .objects
            .iter()
            .filter(|((res, _, _), _)| res == KSVC)
            .map(|((_, ns, name), s)| (ns.clone(), name.clone(), s.value.clone()))
            .collect();
        for (ns, name, svc) in services {
            for t in svc
                .pointer("/status/traffic")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let (Some(rev), Some(pct)) = (t["revisionName"].as_str(), t["percent"].as_f64()) else {
                    continue;
                };
                let Some(revision) = self.get(KREV, &ns, rev).cloned() else {
                    continue;
                };
                let n = SERVICE_RPS * seconds * pct / 100.0;
                let error_rate: f64 = env_of(&revision, "FAKE_ERROR_RATE")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                let latency: f64 = env_of(&revision, "FAKE_LATENCY_MS")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(20.0);
                let c = self
                    .counters
                    .entry((ns.clone(), name.clone(), rev.to_string()))
                    .or_default();
                c.errors += n * error_rate;
                c.ok += n * (1.0 - error_rate);
                *c.by_latency_ms.entry(latency.round() as u64).or_default() += n;
                c.sum_ms += n * latency;
            }
        }
    }

    /// The queue-proxies' metrics in Prometheus' text format, named as `metric_names` says.
    fn metrics(&self) -> String {
        let otel = self.metric_names == MetricNames::OpenTelemetry;
        let mut out = String::new();
        for ((ns, svc, rev), c) in &self.counters {
            // The label set, the bucket bounds in the metric's unit, ms per unit, the histogram's name.
            let (labels, bounds, unit_ms, histogram): (String, Vec<f64>, f64, &str) = if otel {
                (
                    format!(
                        "k8s_namespace_name=\"{ns}\",kn_service_name=\"{svc}\",kn_configuration_name=\"{svc}\",\
                         kn_revision_name=\"{rev}\",k8s_pod_name=\"{rev}-deployment-0\",container_name=\"queue-proxy\",\
                         http_request_method=\"GET\""
                    ),
                    OTEL_BUCKETS_S.to_vec(),
                    1000.0,
                    "http_server_request_duration_seconds",
                )
            } else {
                (
                    format!(
                        "namespace_name=\"{ns}\",service_name=\"{svc}\",configuration_name=\"{svc}\",revision_name=\"{rev}\",\
                         container_name=\"queue-proxy\",pod_name=\"{rev}-deployment-0\""
                    ),
                    BUCKETS_MS.to_vec(),
                    1.0,
                    "revision_request_latencies",
                )
            };
            let total = c.ok + c.errors;
            // One series per response code; each code has its share of every latency.
            for (code, class, n) in [("200", "2xx", c.ok), ("500", "5xx", c.errors)] {
                let share = if total > 0.0 { n / total } else { 0.0 };
                let code_labels = if otel {
                    format!("{labels},http_response_status_code=\"{code}\"")
                } else {
                    format!("{labels},response_code=\"{code}\",response_code_class=\"{class}\"")
                };
                if !otel {
                    out += &format!("revision_request_count{{{code_labels}}} {}\n", n.floor());
                }
                for b in &bounds {
                    let below: f64 = c
                        .by_latency_ms
                        .iter()
                        .filter(|(ms, _)| **ms as f64 <= b * unit_ms)
                        .map(|(_, n)| n)
                        .sum();
                    out += &format!(
                        "{histogram}_bucket{{{code_labels},le=\"{b}\"}} {}\n",
                        (below * share).floor()
                    );
                }
                out += &format!("{histogram}_bucket{{{code_labels},le=\"+Inf\"}} {}\n", n.floor());
                out += &format!("{histogram}_sum{{{code_labels}}} {}\n", c.sum_ms * share / unit_ms);
                out += &format!("{histogram}_count{{{code_labels}}} {}\n", n.floor());
            }
        }
        out
    }
}

impl FakeCluster {
    /// Starts the server on a loopback port, on its own thread.
    pub fn start() -> FakeCluster {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let (changed, _) = tokio::sync::watch::channel(0u64);
        let (tx, rx) = std::sync::mpsc::channel();
        let shared: Shared = (inner.clone(), changed.clone());
        std::thread::Builder::new()
            .name("fake-kube".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    tx.send(listener.local_addr().unwrap()).unwrap();
                    let ticker = shared.clone();
                    tokio::spawn(async move {
                        let mut tick = tokio::time::interval(Duration::from_millis(100));
                        let mut since_start = 0u32;
                        loop {
                            tick.tick().await;
                            since_start += 1;
                            let mut inner = ticker.0.lock().unwrap();
                            inner.serve_traffic(0.1);
                            // Revisions start after three ticks (about 300 ms).
                            if since_start.is_multiple_of(3) {
                                inner.start_revisions();
                            }
                            let rv = inner.rv;
                            drop(inner);
                            ticker.1.send_if_modified(|v| std::mem::replace(v, rv) != rv);
                        }
                    });
                    let app = axum::Router::new().fallback(handle).with_state(shared);
                    axum::serve(listener, app).await.unwrap();
                });
            })
            .unwrap();
        let addr = rx.recv().unwrap();
        FakeCluster { addr, inner, changed }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: default\ncurrent-context: fake\nusers:\n- name: tester\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// An object by its resource (`serving.knative.dev/v1/services`), namespace and name.
    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        self.inner.lock().unwrap().get(resource, ns, name).cloned()
    }

    /// Every object of a resource in a namespace.
    pub fn list(&self, resource: &str, ns: &str) -> Vec<Value> {
        let inner = self.inner.lock().unwrap();
        inner
            .objects
            .iter()
            .filter(|((res, n, _), _)| res == resource && n == ns)
            .map(|(_, s)| s.value.clone())
            .collect()
    }

    /// Stores an object as if `kubectl apply --server-side --field-manager MANAGER` had sent it.
    pub fn apply_as(&self, manager: &str, resource: &str, value: Value) -> Result<Value, String> {
        let ns = value["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let name = value["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let (status, body) = write(
            &(self.inner.clone(), self.changed.clone()),
            "PATCH",
            resource,
            &ns,
            &name,
            None,
            "application/apply-patch+yaml",
            &BTreeMap::from([("fieldManager".to_string(), manager.to_string())]),
            &serde_json::to_vec(&value).unwrap(),
        );
        if status == 200 || status == 201 {
            Ok(body)
        } else {
            Err(body["message"].as_str().unwrap_or_default().to_string())
        }
    }

    /// Names the fake queue-proxies' metrics as Knative 1.19+ (OpenTelemetry) or earlier releases do.
    pub fn set_metric_names(&self, names: MetricNames) {
        self.inner.lock().unwrap().metric_names = names;
    }

    /// Stops serving `resource` (`revisor.dev/v1alpha1/rollouts`), as a cluster without its CRD.
    pub fn remove_resource(&self, resource: &str) {
        self.inner.lock().unwrap().missing.push(resource.to_string());
    }

    /// Every request answered so far: (method, path and query).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.inner.lock().unwrap().requests.clone()
    }
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared
        .0
        .lock()
        .unwrap()
        .requests
        .push((method.to_string(), uri.to_string()));
    if uri.path() == "/metrics" {
        return shared.0.lock().unwrap().metrics().into_response();
    }
    let Some((res, ns, name, sub)) = parse_path(uri.path()) else {
        return status(404, "NotFound", format!("the server could not find {}", uri.path()));
    };
    if shared.0.lock().unwrap().missing.contains(&res) {
        return status(404, "NotFound", "the server could not find the requested resource");
    }
    let ns = ns.unwrap_or_default();
    match (method.as_str(), name) {
        ("GET", None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            let timeout = query
                .get("timeoutSeconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(290u64);
            watch(shared, res, ns, from, Duration::from_secs(timeout))
        }
        ("GET", None) => {
            let inner = shared.0.lock().unwrap();
            let items: Vec<Value> = inner
                .objects
                .iter()
                .filter(|((r, n, _), _)| *r == res && (ns.is_empty() || *n == ns))
                .map(|(_, s)| s.value.clone())
                .collect();
            axum::Json(json!({
                "apiVersion": "v1", "kind": "List",
                "metadata": { "resourceVersion": inner.rv.to_string() },
                "items": items,
            }))
            .into_response()
        }
        ("GET", Some(name)) => match shared.0.lock().unwrap().get(&res, &ns, &name) {
            Some(v) => axum::Json(v.clone()).into_response(),
            None => status(404, "NotFound", format!("{res} \"{name}\" not found")),
        },
        (m, name) => {
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_string();
            let (code, body) = write(
                &shared,
                m,
                &res,
                &ns,
                name.as_deref().unwrap_or(""),
                sub.as_deref(),
                &content_type,
                &query,
                &body,
            );
            (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
        }
    }
}

fn failure(code: u16, reason: &str, message: String) -> (u16, Value) {
    (
        code,
        json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code }),
    )
}

/// A write: create (POST), apply or merge patch (PATCH), replace (PUT, also of `/status`).
#[allow(clippy::too_many_arguments)]
fn write(
    shared: &Shared,
    method: &str,
    res: &str,
    ns: &str,
    name: &str,
    sub: Option<&str>,
    content_type: &str,
    query: &BTreeMap<String, String>,
    body: &[u8],
) -> (u16, Value) {
    if method == "DELETE" && sub.is_none() {
        let mut inner = shared.0.lock().unwrap();
        let Some(gone) = inner.objects.remove(&Inner::key(res, ns, name)) else {
            return failure(404, "NotFound", format!("{res} \"{name}\" not found"));
        };
        inner.rv += 1;
        let rv = inner.rv;
        let mut value = gone.value;
        value["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner
            .log
            .push((rv, res.to_string(), ns.to_string(), "DELETED", value.clone()));
        if res == KSVC {
            // Knative's owner references: the revisions go with their Service.
            let revisions: Vec<String> = inner
                .objects
                .iter()
                .filter(|((r, n, _), s)| {
                    r == KREV && n == ns && s.value["metadata"]["labels"]["serving.knative.dev/service"] == name
                })
                .map(|((_, _, rname), _)| rname.clone())
                .collect();
            for rname in revisions {
                if let Some(rev) = inner.objects.remove(&Inner::key(KREV, ns, &rname)) {
                    inner.rv += 1;
                    let rv = inner.rv;
                    inner
                        .log
                        .push((rv, KREV.to_string(), ns.to_string(), "DELETED", rev.value));
                }
            }
            inner.configs.remove(&(ns.to_string(), name.to_string()));
        }
        let rv = inner.rv;
        drop(inner);
        shared.1.send_replace(rv);
        return (200, value);
    }
    let parsed: Result<Value, String> = serde_json::from_slice(body)
        .or_else(|_| serde_norway::from_slice(body))
        .map_err(|e| e.to_string());
    let Ok(patch) = parsed else {
        return failure(400, "BadRequest", "the body is not JSON or YAML".into());
    };
    let dry_run = query.contains_key("dryRun");
    let mut inner = shared.0.lock().unwrap();
    let existing = inner
        .objects
        .get(&Inner::key(res, ns, name))
        .map(|s| (s.value.clone(), s.owners.clone()));
    let (stored, code) = match (method, sub) {
        ("POST", None) => {
            let mut obj = patch;
            let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if name.is_empty() {
                return failure(422, "Invalid", "metadata.name: Required value".into());
            }
            if inner.get(res, ns, &name).is_some() {
                return failure(409, "AlreadyExists", format!("{res} \"{name}\" already exists"));
            }
            obj["metadata"]["namespace"] = json!(ns);
            (inner.put(res, ns, obj, None), 201)
        }
        ("PUT", Some("status")) => {
            let Some((mut current, _)) = existing else {
                return failure(404, "NotFound", format!("{res} \"{name}\" not found"));
            };
            let sent_rv = patch["metadata"]["resourceVersion"].as_str().unwrap_or("");
            if !sent_rv.is_empty() && sent_rv != current["metadata"]["resourceVersion"].as_str().unwrap_or("") {
                return failure(
                    409,
                    "Conflict",
                    format!("Operation cannot be fulfilled on {res} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
                );
            }
            current["status"] = patch.get("status").cloned().unwrap_or(Value::Null);
            (inner.put(res, ns, current, None), 200)
        }
        ("PATCH", None) if content_type.starts_with("application/apply-patch") => {
            let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
                return failure(400, "BadRequest", "PATCH with apply requires fieldManager".into());
            };
            let force = query.get("force").is_some_and(|f| f == "true");
            let (mut obj, mut owners) = existing.unwrap_or_else(|| {
                (
                    json!({ "apiVersion": patch["apiVersion"], "kind": patch["kind"], "metadata": { "name": name } }),
                    BTreeMap::new(),
                )
            });
            let applied: Map<String, Value> = patch
                .get("spec")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let conflicts: Vec<String> = applied
                .iter()
                .filter(|(k, v)| owners.get(*k).is_some_and(|o| o != manager) && obj["spec"].get(k.as_str()) != Some(v))
                .map(|(k, _)| format!("conflict with \"{}\": .spec.{k}", owners[k]))
                .collect();
            if !conflicts.is_empty() && !force {
                return failure(
                    409,
                    "Conflict",
                    format!(
                        "Apply failed with {} conflict(s): {}",
                        conflicts.len(),
                        conflicts.join(", ")
                    ),
                );
            }
            // Fields this manager applied before and no longer does go away.
            let dropped: Vec<String> = owners
                .iter()
                .filter(|(k, o)| *o == manager && !applied.contains_key(*k))
                .map(|(k, _)| k.clone())
                .collect();
            let spec = obj["spec"].as_object_mut().map(std::mem::take).unwrap_or_default();
            let mut spec = spec;
            for k in dropped {
                spec.remove(&k);
                owners.remove(&k);
            }
            for (k, v) in applied {
                spec.insert(k.clone(), v);
                owners.insert(k, manager.clone());
            }
            obj["spec"] = Value::Object(spec);
            for k in ["labels", "annotations"] {
                if let Some(v) = patch["metadata"].get(k) {
                    obj["metadata"][k] = v.clone();
                }
            }
            if dry_run {
                let mut shown = obj;
                if shown["metadata"]["resourceVersion"].is_null() {
                    shown["metadata"]["namespace"] = json!(ns);
                }
                return (200, shown);
            }
            let created = obj["metadata"]["resourceVersion"].is_null();
            (inner.put(res, ns, obj, Some(owners)), if created { 201 } else { 200 })
        }
        ("PATCH", s) if content_type.starts_with("application/merge-patch") => {
            let Some((mut obj, mut owners)) = existing else {
                return failure(404, "NotFound", format!("{res} \"{name}\" not found"));
            };
            let manager = query.get("fieldManager").cloned().unwrap_or_else(|| "unknown".into());
            if s.is_none() {
                for k in patch
                    .get("spec")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    owners.insert(k.clone(), manager.clone());
                }
            }
            merge(&mut obj, &patch);
            if dry_run {
                return (200, obj);
            }
            (inner.put(res, ns, obj, Some(owners)), 200)
        }
        (m, s) => {
            return failure(
                405,
                "MethodNotAllowed",
                format!(
                    "the fake API server does not do {m} on {res}{}",
                    s.map(|s| format!("/{s}")).unwrap_or_default()
                ),
            )
        }
    };
    if res == KSVC {
        let name = stored["metadata"]["name"].as_str().unwrap_or_default().to_string();
        inner.reconcile_service(ns, &name);
    }
    let rv = inner.rv;
    let stored = inner
        .get(res, ns, stored["metadata"]["name"].as_str().unwrap_or_default())
        .cloned()
        .unwrap_or(stored);
    drop(inner);
    shared.1.send_replace(rv);
    (code, stored)
}

/// A watch: every change after `from` to `res` in `ns` (every namespace if empty), one JSON object per
/// line, until `timeout`.
fn watch(shared: Shared, res: String, ns: String, from: u64, timeout: Duration) -> Response {
    let rx = shared.1.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = futures_util::stream::unfold((from, rx), move |(mut last, mut rx)| {
        let inner = shared.0.clone();
        let (res, ns) = (res.clone(), ns.clone());
        async move {
            loop {
                rx.borrow_and_update();
                let lines: String = {
                    let inner = inner.lock().unwrap();
                    let start = last;
                    let mut out = String::new();
                    for (rv, r, n, kind, obj) in inner.log.iter().filter(|e| e.0 > start) {
                        if *r == res && (ns.is_empty() || *n == ns) {
                            out += &json!({ "type": kind, "object": obj }).to_string();
                            out.push('\n');
                        }
                        last = *rv;
                    }
                    out
                };
                if !lines.is_empty() {
                    return Some((Ok::<_, std::io::Error>(Bytes::from(lines)), (last, rx)));
                }
                match tokio::time::timeout_at(deadline, rx.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return None,
                }
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

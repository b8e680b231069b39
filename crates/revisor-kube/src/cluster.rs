//! The connection to the cluster and the watched caches of Knative Services, Revisions and Rollouts.

use revisor_rollout_controller::{Change, Key};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use futures_util::StreamExt;
pub use kube::api::WatchParams;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use serde::de::DeserializeOwned;

/// Knative Serving's Service (`serving.knative.dev/v1`).
pub static SERVICE: Kind = Kind {
    group: "serving.knative.dev",
    version: "v1",
    kind: "Service",
    plural: "services",
};
/// Knative Serving's Revision.
pub static REVISION: Kind = Kind {
    group: "serving.knative.dev",
    version: "v1",
    kind: "Revision",
    plural: "revisions",
};
/// revisor's Rollout (`rollouts.revisor.dev`, the CRD `revisor crd` prints).
pub static ROLLOUT: Kind = Kind {
    group: "revisor.dev",
    version: "v1alpha1",
    kind: "Rollout",
    plural: "rollouts",
};

/// A kind of object revisor reads or writes.
#[derive(Debug)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl Kind {
    pub fn resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(self.group, self.version, self.kind), self.plural)
    }

    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("{0}")]
    Missing(String),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

/// A client from `kubeconfig` (or, without one, `$KUBECONFIG`, `~/.kube/config`, or the in-cluster
/// service account), using `context` if given, and the API server's URL.
pub async fn connect(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<(kube::Client, String), ClusterError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let kc =
                Kubeconfig::read_from(path).map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| ClusterError::Config(e.to_string()))?,
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| ClusterError::Config(e.to_string()))?,
    };
    let url = config.cluster_url.to_string();
    Ok((kube::Client::try_from(config).map_err(ClusterError::Api)?, url))
}

/// The cluster as revisor sees it: a client, the namespace it works in (`None`: all), and caches of
/// Services, Revisions and Rollouts kept by watches.
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    pub namespace: Option<String>,
    services: Store<DynamicObject>,
    revisions: Store<DynamicObject>,
    rollouts: Store<DynamicObject>,
}

impl Cluster {
    /// Whether this handle works in `ns` (`--namespace` names the one it works in; none: all).
    pub fn covers(&self, ns: &str) -> bool {
        self.namespace.as_deref().is_none_or(|mine| mine == ns)
    }

    /// The namespace this handle works in, if `--namespace` named one.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// An API for `kind` in `namespace`, or across the namespaces this cluster handle covers.
    pub fn api(&self, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        api(&self.client, kind, namespace.or(self.namespace.as_deref()))
    }

    /// Checks that Knative Serving and the Rollout CRD are installed, starts watching Services,
    /// Revisions and Rollouts, and returns once every cache holds the cluster's state. The receiver
    /// gets a message whenever any of them changes.
    pub async fn start(
        client: kube::Client,
        namespace: Option<String>,
    ) -> Result<(Cluster, UnboundedReceiver<Change>), ClusterError> {
        for (kind, hint) in [
            (
                &SERVICE,
                "is Knative Serving installed? (https://knative.dev/docs/install/)",
            ),
            (
                &REVISION,
                "is Knative Serving installed? (https://knative.dev/docs/install/)",
            ),
            (
                &ROLLOUT,
                "install the CRD: `revisor crd | kubectl apply -f -` (or deploy/crd.yaml)",
            ),
        ] {
            let probe = api(&client, kind, namespace.as_deref());
            match probe.list_metadata(&ListParams::default().limit(1)).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    return Err(ClusterError::Missing(format!(
                        "the cluster does not serve {}/{} {}: {hint}",
                        kind.api_version(),
                        kind.kind,
                        kind.plural
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let services = watch(&client, &SERVICE, namespace.as_deref(), tx.clone());
        let revisions = watch(&client, &REVISION, namespace.as_deref(), tx.clone());
        let rollouts = watch(&client, &ROLLOUT, namespace.as_deref(), tx);
        for store in [&services, &revisions, &rollouts] {
            tokio::time::timeout(Duration::from_secs(60), store.wait_until_ready())
                .await
                .map_err(|_| ClusterError::Missing("the first list of the watched objects took over 60 s".into()))?
                .map_err(|_| ClusterError::Missing("a watch ended before its first list".into()))?;
        }
        Ok((
            Cluster {
                client,
                namespace,
                services,
                revisions,
                rollouts,
            },
            rx,
        ))
    }

    /// A handle whose caches hold `objects` (Knative Services, Revisions and Rollouts, told apart by
    /// kind) and are never refreshed: for tests of the calls revisor makes, and one-shot tools.
    pub fn from_objects(client: kube::Client, namespace: Option<String>, objects: Vec<DynamicObject>) -> Cluster {
        let mut writers = [&SERVICE, &REVISION, &ROLLOUT].map(|k| reflector::store::Writer::new(k.resource()));
        for obj in objects {
            let kind = obj.types.as_ref().map(|t| t.kind.as_str()).unwrap_or("");
            let i = match kind {
                "Service" => 0,
                "Revision" => 1,
                _ => 2,
            };
            writers[i].apply_watcher_event(&watcher::Event::Apply(obj));
        }
        let [services, revisions, rollouts] = writers.map(|w| w.as_reader());
        Cluster {
            client,
            namespace,
            services,
            revisions,
            rollouts,
        }
    }

    fn cached<T: DeserializeOwned>(
        store: &Store<DynamicObject>,
        kind: &Kind,
        ns: &str,
        name: &str,
    ) -> Option<(T, DynamicObject)> {
        let key = ObjectRef::new_with(name, kind.resource()).within(ns);
        let obj = store.get(&key)?;
        let typed = from_dynamic(&obj)
            .map_err(|e| tracing::warn!("{}/{ns}/{name}: {e}", kind.kind))
            .ok()?;
        Some((typed, (*obj).clone()))
    }

    pub fn service(&self, ns: &str, name: &str) -> Option<revisor_api::Service> {
        Self::cached(&self.services, &SERVICE, ns, name).map(|(t, _)| t)
    }

    /// The Knative Service as the cluster holds it (for its `status.traffic` URLs).
    pub fn service_object(&self, ns: &str, name: &str) -> Option<DynamicObject> {
        Self::cached::<serde_json::Value>(&self.services, &SERVICE, ns, name).map(|(_, o)| o)
    }

    pub fn revision(&self, ns: &str, name: &str) -> Option<revisor_api::Revision> {
        Self::cached(&self.revisions, &REVISION, ns, name).map(|(t, _)| t)
    }

    pub fn rollout(&self, ns: &str, name: &str) -> Option<(revisor_api::Rollout, DynamicObject)> {
        Self::cached(&self.rollouts, &ROLLOUT, ns, name)
    }

    fn all<T: DeserializeOwned>(store: &Store<DynamicObject>, ns: Option<&str>) -> Vec<T> {
        let mut out: Vec<(String, String, T)> = store
            .state()
            .iter()
            .filter(|o| ns.is_none() || o.metadata.namespace.as_deref() == ns)
            .filter_map(|o| {
                let t = from_dynamic(o).ok()?;
                Some((o.metadata.namespace.clone()?, o.metadata.name.clone()?, t))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out.into_iter().map(|(_, _, t)| t).collect()
    }

    pub fn rollouts(&self, ns: Option<&str>) -> Vec<revisor_api::Rollout> {
        Self::all(&self.rollouts, ns)
    }

    /// Every `T` of `kind` in `ns` (every namespace this handle covers with `None`) as the cluster's
    /// API server lists it, sorted by namespace and name, with the list's resourceVersion: a watch
    /// from it misses nothing (the watched caches give objects, not a version to watch from).
    pub async fn list<T: DeserializeOwned>(
        &self,
        kind: &Kind,
        ns: Option<&str>,
    ) -> Result<(Vec<T>, Option<String>), kube::Error> {
        let list = self.api(kind, ns).list(&ListParams::default()).await?;
        let mut out: Vec<(String, String, T)> = list
            .items
            .iter()
            .filter_map(|o| {
                let t = from_dynamic(o)
                    .map_err(|e| tracing::warn!("{}/{:?}: {e}", kind.kind, o.metadata.name))
                    .ok()?;
                Some((
                    o.metadata.namespace.clone().unwrap_or_default(),
                    o.metadata.name.clone()?,
                    t,
                ))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok((
            out.into_iter().map(|(_, _, t)| t).collect(),
            list.metadata.resource_version,
        ))
    }

    /// A watch of `kind` in `ns` on the cluster's API server, from `version` (`"0"`: the objects
    /// there are first, as ADDED), as (event type, object) pairs: the objects as the cluster holds
    /// them, a bookmark's, or an ERROR's Status (also for a failure of the stream itself).
    pub async fn watch(
        &self,
        kind: &Kind,
        ns: Option<&str>,
        params: &WatchParams,
        version: &str,
    ) -> Result<impl futures_util::Stream<Item = (&'static str, serde_json::Value)> + Send + 'static, kube::Error> {
        use kube::api::WatchEvent;
        fn value(v: &impl serde::Serialize) -> serde_json::Value {
            serde_json::to_value(v).unwrap_or_default()
        }
        let stream = self.api(kind, ns).watch(params, version).await?;
        Ok(stream.map(move |e| match e {
            Ok(WatchEvent::Added(o)) => ("ADDED", value(&o)),
            Ok(WatchEvent::Modified(o)) => ("MODIFIED", value(&o)),
            Ok(WatchEvent::Deleted(o)) => ("DELETED", value(&o)),
            Ok(WatchEvent::Bookmark(b)) => ("BOOKMARK", value(&b)),
            Ok(WatchEvent::Error(status)) => ("ERROR", value(&*status)),
            Err(e) => (
                "ERROR",
                serde_json::json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("watching the cluster: {e}"), "reason": "InternalError", "code": 500,
                }),
            ),
        }))
    }

    /// The Kubernetes Events about a Service and its Rollouts, oldest first, in revisor's event shape
    /// (`time`, `type`, `reason`, `message`, `object`).
    pub async fn events(&self, ns: &str, service: &str) -> Result<Vec<serde_json::Value>, kube::Error> {
        let rollouts: Vec<String> = self
            .rollouts(Some(ns))
            .into_iter()
            .filter(|r| r.spec.service_ref.name == service)
            .map(|r| r.metadata.name)
            .collect();
        let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client.clone(), ns);
        let mut out: Vec<(String, serde_json::Value)> = Vec::new();
        for e in api.list(&ListParams::default()).await?.items {
            let Some(r) = &e.regarding else { continue };
            let (kind, name) = (r.kind.as_deref().unwrap_or(""), r.name.as_deref().unwrap_or(""));
            let ours =
                (kind == "Rollout" && rollouts.iter().any(|n| n == name)) || (kind == "Service" && name == service);
            if !ours {
                continue;
            }
            let time = e
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0.to_string())
                .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
                .unwrap_or_default();
            out.push((
                time.clone(),
                serde_json::json!({
                    "time": time,
                    "type": e.type_.as_deref().unwrap_or("Normal"),
                    "reason": e.reason.as_deref().unwrap_or(""),
                    "message": e.note.as_deref().unwrap_or(""),
                    "object": format!("{kind}/{name}"),
                }),
            ));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out.into_iter().map(|(_, v)| v).collect())
    }

    /// The Knative networking layer the cluster routes with: `config-network`'s `ingress-class` in
    /// `knative-serving` (Knative's default, Kourier's class, when unset or unreadable).
    pub async fn ingress_class(&self) -> String {
        let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(self.client.clone(), "knative-serving");
        let data = maps.get_opt("config-network").await.ok().flatten().and_then(|m| m.data);
        data.and_then(|d| d.get("ingress-class").or_else(|| d.get("ingress.class")).cloned())
            .unwrap_or_else(|| DEFAULT_INGRESS_CLASS.to_string())
    }
}

/// Knative's default networking layer when `config-network` names none.
pub const DEFAULT_INGRESS_CLASS: &str = "kourier.ingress.networking.knative.dev";

fn api(client: &kube::Client, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &kind.resource()),
        None => Api::all_with(client.clone(), &kind.resource()),
    }
}

/// The change a watched object's event means to the Rollout controller.
fn change_of(kind: &Kind, obj: &DynamicObject) -> Option<Change> {
    let namespace = obj.metadata.namespace.clone()?;
    let name = obj.metadata.name.clone()?;
    if kind.kind == ROLLOUT.kind {
        return Some(Change::Rollout(Key::new(namespace, name)));
    }
    let service = if kind.kind == REVISION.kind {
        obj.metadata
            .labels
            .as_ref()?
            .get("serving.knative.dev/service")?
            .clone()
    } else {
        name
    };
    Some(Change::Service {
        namespace,
        name: service,
    })
}

/// A typed revisor object from a cluster object.
pub fn from_dynamic<T: DeserializeOwned>(obj: &DynamicObject) -> Result<T, serde_json::Error> {
    serde_json::from_value(serde_json::to_value(obj)?)
}

/// Watches `kind` into a cache, telling `changed` about every change: a Rollout's as itself, a
/// Service's or a Revision's as its Service's, a new list as a resync.
fn watch(
    client: &kube::Client,
    kind: &'static Kind,
    namespace: Option<&str>,
    changed: UnboundedSender<Change>,
) -> Store<DynamicObject> {
    let writer = reflector::store::Writer::new(kind.resource());
    let reader = writer.as_reader();
    let stream = reflector::reflector(
        writer,
        watcher(api(client, kind, namespace), watcher::Config::default()).default_backoff(),
    );
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let change = match event {
                Ok(watcher::Event::Apply(obj) | watcher::Event::Delete(obj) | watcher::Event::InitApply(obj)) => {
                    change_of(kind, &obj)
                }
                Ok(watcher::Event::InitDone) => Some(Change::Resync),
                Ok(watcher::Event::Init) => None,
                Err(e) => {
                    tracing::warn!("watching {}: {e}", kind.plural);
                    None
                }
            };
            if let Some(c) = change {
                if changed.send(c).is_err() {
                    return;
                }
            }
        }
    });
    reader
}

//! Where the Rollout controller finds Rollouts, Services and Revisions and writes its decisions:
//! locally the store (revisor-controller's `StoreWorld`), on Kubernetes the cluster
//! (revisor-kube's `KnativeWorld`).

use std::future::Future;

use revisor_api::rollout::RolloutStatus;
use revisor_api::{Revision, Rollout, Service, TrafficTarget};

/// A Rollout's namespace and name: the work queue's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Key {
        Key {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of(r: &Rollout) -> Key {
        Key::new(r.metadata.namespace.clone(), r.metadata.name.clone())
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What changed in the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A Rollout was written or deleted.
    Rollout(Key),
    /// A Service, or one of its Revisions, was written or deleted: its Rollouts look again.
    Service { namespace: String, name: String },
    /// Changes were missed: every Rollout looks again.
    Resync,
}

/// One step's outcome to write.
#[derive(Debug, Clone)]
pub struct Commit {
    pub rollout: Rollout,
    pub status: RolloutStatus,
    /// The Service's new `spec.traffic`, when it changed.
    pub traffic: Option<Vec<TrafficTarget>>,
    pub events: Vec<revisor_rollout::Event>,
}

pub trait World: Send + Sync + 'static {
    fn rollouts(&self) -> impl Future<Output = Result<Vec<Rollout>, String>> + Send;
    fn rollout(&self, key: &Key) -> impl Future<Output = Result<Option<Rollout>, String>> + Send;
    fn service(&self, namespace: &str, name: &str) -> impl Future<Output = Result<Option<Service>, String>> + Send;
    fn revision(&self, namespace: &str, name: &str) -> impl Future<Output = Result<Option<Revision>, String>> + Send;
    /// Writes the Rollout's status, the Service's traffic and the events. `Ok(false)` when someone
    /// wrote the Rollout or the Service meanwhile: nothing is written and the step runs again.
    fn commit(&self, c: Commit) -> impl Future<Output = Result<bool, String>> + Send;
    /// Why this world cannot run `r` as written (say, a header route that the cluster's networking
    /// layer cannot express), if it cannot.
    fn refusal(&self, _r: &Rollout) -> impl Future<Output = Option<String>> + Send {
        async { None }
    }
    /// Where the load generator sends requests for `tag`'s revision: the URL and a Host header.
    fn load_target(&self, r: &Rollout, tag: &str) -> Option<(String, Option<String>)>;
    /// The changes from now on; the controller stops when the channel closes.
    fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<Change>;
}

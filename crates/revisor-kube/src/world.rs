//! The Rollout controller's world on a cluster: Rollouts, Services and Revisions from the watched
//! caches; each step writes the Rollout's status subresource (optimistically, by resourceVersion), then
//! the Knative Service's `spec.traffic`, then Kubernetes Events.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use revisor_api::rollout::RunStep;
use revisor_api::{Revision, Rollout, Service};
use revisor_rollout_controller::{Change, Commit, Key, World};
use serde_json::json;

use crate::apply::ROLLOUT_FIELD_MANAGER;
use crate::cluster::{Cluster, ROLLOUT, SERVICE};

pub struct KnativeWorld {
    cluster: Cluster,
    /// The watches' changes, handed to the controller once.
    changes: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Change>>>,
    recorder: Recorder,
    /// The cluster's networking layer (`config-network`'s `ingress-class`), read once.
    ingress_class: tokio::sync::OnceCell<String>,
    /// Whether a Prometheus with the queue-proxy metrics was given (built-in analysis metrics need one).
    prometheus: bool,
    /// Rollouts written since their cache was last updated: (namespace, name) -> the resourceVersion
    /// the write replaced. Until the watch brings the new version they are not stepped again, so a
    /// step never runs (and calls webhooks, or takes a window) on a status it has already replaced.
    replaced: Mutex<HashMap<Key, Option<String>>>,
}

/// How long a step waits for the watch to bring the version of a Rollout it wrote.
const CACHE_CATCH_UP: Duration = Duration::from_secs(2);

impl KnativeWorld {
    /// `changes` are the cluster's watches' (`Cluster::start`).
    pub fn new(cluster: Cluster, changes: tokio::sync::mpsc::UnboundedReceiver<Change>) -> Self {
        let recorder = Recorder::new(
            cluster.client.clone(),
            Reporter {
                controller: "revisor".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        KnativeWorld {
            cluster,
            changes: Mutex::new(Some(changes)),
            recorder,
            ingress_class: tokio::sync::OnceCell::new(),
            prometheus: true,
            replaced: Default::default(),
        }
    }

    /// Without a Prometheus, Rollouts whose analysis uses the built-in metrics are refused.
    pub fn with_prometheus(mut self, prometheus: bool) -> Self {
        self.prometheus = prometheus;
        self
    }
}

/// Why a Rollout cannot run on Knative as written: Knative's traffic block (and so revisor on any
/// networking layer) can split by percent and reach revisions by tag, but cannot route by header or
/// mirror requests, and only revisor's own gateway compares mirrored predictions.
pub fn refusal(r: &Rollout, ingress_class: &str, prometheus: bool) -> Option<String> {
    let mut needs = Vec::new();
    let built_in = r
        .spec
        .analysis
        .iter()
        .flat_map(|a| a.metrics.iter())
        .filter(|m| m.provider.is_none() && m.name != "prediction-agreement")
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>();
    if !prometheus && !built_in.is_empty() {
        return Some(format!(
            "cannot run on this cluster: analysis metric(s) {} read the queue-proxy's request metrics from \
             Prometheus; start revisor with --prometheus URL",
            built_in.join(", ")
        ));
    }
    for (i, step) in r.spec.run_steps().iter().enumerate() {
        match step {
            RunStep::HeaderRoute(_) => needs.push(format!("step {i} routes by header (setHeaderRoute)")),
            RunStep::Mirror(_) => needs.push(format!("step {i} mirrors requests (setMirrorRoute)")),
            _ => {}
        }
    }
    let metrics = r.spec.analysis.iter().flat_map(|a| a.metrics.iter());
    for m in metrics.filter(|m| m.name == "prediction-agreement") {
        needs.push(format!(
            "metric {:?} compares mirrored predictions, which only revisor's gateway does",
            m.name
        ));
    }
    (!needs.is_empty()).then(|| {
        format!(
            "cannot run on this cluster: {}; Knative's traffic block has no header routes or mirroring, and \
             revisor does not program the networking layer ({ingress_class}) directly. Use weights, tags and \
             analysis, or run this Rollout on revisor's local backend",
            needs.join("; ")
        )
    })
}

impl KnativeWorld {
    fn replaced(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Option<String>>> {
        self.replaced.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the cache still holds the version of `key` that a step of ours replaced.
    fn stale(&self, key: &Key, current: Option<&Option<String>>) -> bool {
        let mut replaced = self.replaced();
        match (replaced.get(key), current) {
            (Some(old), Some(rv)) if old == rv => true,
            (Some(_), _) => {
                replaced.remove(key);
                false
            }
            (None, _) => false,
        }
    }
}

impl World for KnativeWorld {
    async fn rollouts(&self) -> Result<Vec<Rollout>, String> {
        let all = self.cluster.rollouts(None);
        Ok(all
            .into_iter()
            .filter(|r| !self.stale(&Key::of(r), Some(&r.metadata.resource_version)))
            .collect())
    }

    /// The cached Rollout; one a step of ours wrote is answered once the watch brings the written
    /// version, so that a step never runs (and calls webhooks, or takes a window) on a status it has
    /// already replaced.
    async fn rollout(&self, key: &Key) -> Result<Option<Rollout>, String> {
        let until = tokio::time::Instant::now() + CACHE_CATCH_UP;
        loop {
            let r = self.cluster.rollout(&key.namespace, &key.name).map(|(r, _)| r);
            if !self.stale(key, r.as_ref().map(|r| &r.metadata.resource_version)) {
                return Ok(r);
            }
            if tokio::time::Instant::now() >= until {
                return Err(format!(
                    "the watch has not brought the status written {CACHE_CATCH_UP:?} ago yet"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn service(&self, namespace: &str, name: &str) -> Result<Option<Service>, String> {
        Ok(self.cluster.service(namespace, name))
    }

    async fn revision(&self, namespace: &str, name: &str) -> Result<Option<Revision>, String> {
        Ok(self.cluster.revision(namespace, name))
    }

    async fn commit(&self, c: Commit) -> Result<bool, String> {
        let r = &c.rollout;
        let (ns, name) = (r.metadata.namespace.as_str(), r.metadata.name.as_str());
        let Some((_, mut obj)) = self.cluster.rollout(ns, name) else {
            return Ok(false);
        };
        // The status goes first, on the resourceVersion the step read: if anyone wrote the Rollout
        // since (an operator's request), nothing is written and the step runs again. Traffic follows the
        // status, so a failed traffic write is repeated by the next step.
        obj.metadata.resource_version = r.metadata.resource_version.clone();
        obj.data["status"] = serde_json::to_value(&c.status).map_err(|e| e.to_string())?;
        let rollouts = self.cluster.api(&ROLLOUT, Some(ns));
        match rollouts.replace_status(name, &PostParams::default(), &obj).await {
            Ok(_) => {
                self.replaced().insert(Key::of(r), r.metadata.resource_version.clone());
            }
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(false),
            Err(e) => return Err(format!("writing the status of Rollout {ns}/{name}: {e}")),
        }
        if let Some(traffic) = &c.traffic {
            let services = self.cluster.api(&SERVICE, Some(ns));
            let patch = json!({ "spec": { "traffic": traffic } });
            let params = PatchParams {
                field_manager: Some(ROLLOUT_FIELD_MANAGER.into()),
                ..Default::default()
            };
            let service = &r.spec.service_ref.name;
            services
                .patch(service, &params, &Patch::Merge(&patch))
                .await
                .map_err(|e| format!("moving the traffic of Service {ns}/{service}: {e}"))?;
        }
        let reference = ObjectReference {
            api_version: Some(ROLLOUT.api_version()),
            kind: Some(ROLLOUT.kind.into()),
            name: Some(name.into()),
            namespace: Some(ns.into()),
            uid: obj.metadata.uid.clone(),
            ..Default::default()
        };
        for e in &c.events {
            let event = Event {
                type_: if e.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: e.reason.clone(),
                note: Some(e.message.chars().take(1000).collect()),
                action: "Rollout".into(),
                secondary: None,
            };
            // Events are a record, not state: a refused one is logged and the step stands.
            if let Err(err) = self.recorder.publish(&event, &reference).await {
                tracing::warn!("event {} of Rollout {ns}/{name}: {err}", e.reason);
            }
        }
        Ok(true)
    }

    async fn refusal(&self, r: &Rollout) -> Option<String> {
        let class = self.ingress_class.get_or_init(|| self.cluster.ingress_class()).await;
        refusal(r, class, self.prometheus)
    }

    /// The tag's URL from the Knative Service's `status.traffic`.
    fn load_target(&self, r: &Rollout, tag: &str) -> Option<(String, Option<String>)> {
        let svc = self
            .cluster
            .service_object(&r.metadata.namespace, &r.spec.service_ref.name)?;
        let traffic = svc.data.pointer("/status/traffic")?.as_array()?;
        let url = traffic
            .iter()
            .find(|t| t["tag"].as_str() == Some(tag))?
            .get("url")?
            .as_str()?;
        Some((url.to_string(), None))
    }

    /// The watches' changes (once; a second subscriber gets a closed channel).
    fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<Change> {
        let taken = self.changes.lock().unwrap_or_else(|e| e.into_inner()).take();
        taken.unwrap_or_else(|| tokio::sync::mpsc::unbounded_channel().1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(yaml: &str) -> Rollout {
        revisor_api::admit_rollout(&serde_norway_value(yaml)).expect("valid rollout")
    }

    fn serde_norway_value(yaml: &str) -> serde_json::Value {
        revisor_api::read_documents(yaml).unwrap().remove(0).value
    }

    #[test]
    fn weights_and_analysis_run_header_routes_and_mirrors_are_refused_with_the_steps() {
        let plain = rollout(
            "apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata: {name: r}\nspec:\n  serviceRef: {name: s}\n  \
             strategy:\n    canary:\n      steps:\n      - setWeight: 20\n      - pause: {duration: 10s}\n",
        );
        assert_eq!(refusal(&plain, "kourier.ingress.networking.knative.dev", false), None);
        let ab = rollout(
            "apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata: {name: r}\nspec:\n  serviceRef: {name: s}\n  \
             strategy:\n    canary:\n      steps:\n      - setHeaderRoute:\n          match:\n          - headerName: x-beta\n            \
             headerValue: {exact: \"1\"}\n      - setMirrorRoute: {percentage: 50}\n      - setWeight: 50\n",
        );
        let why = refusal(&ab, "istio.ingress.networking.knative.dev", true).expect("refused");
        assert!(why.contains("step 0 routes by header"), "{why}");
        assert!(why.contains("step 1 mirrors requests"), "{why}");
        assert!(why.contains("istio.ingress.networking.knative.dev"), "{why}");
    }
}

//! The Rollout controller's world on a cluster: Rollouts, Services and Revisions from the watched
//! caches; each step writes the Rollout's status subresource (optimistically, by resourceVersion), then
//! the Knative Service's `spec.traffic`, then Kubernetes Events.

use std::sync::mpsc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use revisor_api::rollout::RunStep;
use revisor_api::{Revision, Rollout, Service};
use revisor_controller::{Commit, RolloutWorld};
use serde_json::json;

use crate::apply::ROLLOUT_FIELD_MANAGER;
use crate::cluster::{Cluster, ROLLOUT, SERVICE};

pub struct KnativeWorld {
    cluster: Cluster,
    runtime: tokio::runtime::Handle,
    changes: mpsc::Receiver<()>,
    recorder: Recorder,
    /// The cluster's networking layer (`config-network`'s `ingress-class`), read once.
    ingress_class: Option<String>,
    /// Whether a Prometheus with the queue-proxy metrics was given (built-in analysis metrics need one).
    prometheus: bool,
    /// Rollouts written since their cache was last updated: (namespace, name) -> the resourceVersion
    /// the write replaced. Until the watch brings the new version they are not stepped again, so a
    /// step never runs (and calls webhooks, or takes a window) on a status it has already replaced.
    replaced: std::collections::HashMap<(String, String), Option<String>>,
}

impl KnativeWorld {
    /// `runtime` runs the API calls; the controller calls from its own thread.
    pub fn new(cluster: Cluster, changes: mpsc::Receiver<()>, runtime: tokio::runtime::Handle) -> Self {
        let recorder = Recorder::new(
            cluster.client.clone(),
            Reporter {
                controller: "revisor".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        KnativeWorld {
            cluster,
            runtime,
            changes,
            recorder,
            ingress_class: None,
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

impl RolloutWorld for KnativeWorld {
    fn rollouts(&mut self) -> Result<Vec<Rollout>, String> {
        let all = self.cluster.rollouts(None);
        let replaced = &mut self.replaced;
        replaced.retain(|(ns, name), rv| {
            all.iter()
                .any(|r| &r.metadata.namespace == ns && &r.metadata.name == name && &r.metadata.resource_version == rv)
        });
        Ok(all
            .into_iter()
            .filter(|r| !replaced.contains_key(&(r.metadata.namespace.clone(), r.metadata.name.clone())))
            .collect())
    }

    fn service(&mut self, namespace: &str, name: &str) -> Result<Option<Service>, String> {
        Ok(self.cluster.service(namespace, name))
    }

    fn revision(&mut self, namespace: &str, name: &str) -> Result<Option<Revision>, String> {
        Ok(self.cluster.revision(namespace, name))
    }

    fn commit(&mut self, c: Commit<'_>) -> Result<bool, String> {
        let r = c.rollout;
        let (ns, name) = (r.metadata.namespace.as_str(), r.metadata.name.as_str());
        let Some((_, mut obj)) = self.cluster.rollout(ns, name) else {
            return Ok(false);
        };
        // The status goes first, on the resourceVersion the step read: if anyone wrote the Rollout
        // since (an operator's request), nothing is written and the step runs again. Traffic follows the
        // status, so a failed traffic write is repeated by the next step.
        obj.metadata.resource_version = r.metadata.resource_version.clone();
        obj.data["status"] = serde_json::to_value(c.status).map_err(|e| e.to_string())?;
        let rollouts = self.cluster.api(&ROLLOUT, Some(ns));
        let written = self
            .runtime
            .block_on(rollouts.replace_status(name, &PostParams::default(), &obj));
        match written {
            Ok(_) => {
                self.replaced
                    .insert((ns.to_string(), name.to_string()), r.metadata.resource_version.clone());
            }
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(false),
            Err(e) => return Err(format!("writing the status of Rollout {ns}/{name}: {e}")),
        }
        if let Some(traffic) = c.traffic {
            let services = self.cluster.api(&SERVICE, Some(ns));
            let patch = json!({ "spec": { "traffic": traffic } });
            let params = PatchParams {
                field_manager: Some(ROLLOUT_FIELD_MANAGER.into()),
                ..Default::default()
            };
            let service = &r.spec.service_ref.name;
            self.runtime
                .block_on(services.patch(service, &params, &Patch::Merge(&patch)))
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
        for e in c.events {
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
            if let Err(err) = self.runtime.block_on(self.recorder.publish(&event, &reference)) {
                tracing::warn!("event {} of Rollout {ns}/{name}: {err}", e.reason);
            }
        }
        Ok(true)
    }

    fn refusal(&mut self, r: &Rollout) -> Option<String> {
        let class = self
            .ingress_class
            .get_or_insert_with(|| self.runtime.block_on(self.cluster.ingress_class()));
        refusal(r, class, self.prometheus)
    }

    /// The tag's URL from the Knative Service's `status.traffic`.
    fn load_target(&mut self, r: &Rollout, tag: &str) -> Option<(String, Option<String>)> {
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

    fn wait(&mut self, d: Duration) -> bool {
        let until = std::time::Instant::now() + d;
        // Changes to Services and Revisions come often (Knative writes their status); only wake early
        // once the tick is half over.
        match self.changes.recv_timeout(d / 2) {
            Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            Ok(()) => return true,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let rest = until.saturating_duration_since(std::time::Instant::now());
        !matches!(
            self.changes.recv_timeout(rest),
            Err(mpsc::RecvTimeoutError::Disconnected)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(yaml: &str) -> Rollout {
        revisor_api::admit_rollout(&serde_yaml_value(yaml)).expect("valid rollout")
    }

    fn serde_yaml_value(yaml: &str) -> serde_json::Value {
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

//! An operator's request to a Rollout on the cluster (promote, abort, undo, pause, ...): the same
//! actions as locally, taken by the Rollout controller at its next step.

use std::time::Duration;

use kube::api::{Patch, PatchParams, PostParams};
use revisor_api::rollout::ActionEffect;
use revisor_api::Rollout;
use serde_json::json;

use crate::apply::{ApplyError, FIELD_MANAGER};
use crate::cluster::{from_dynamic, Cluster, ROLLOUT};

/// Records `action` on Rollout `ns/name` as the local backend does (`Rollout::take_action`):
/// `pause`/`resume` patch `spec.paused`; the others replace the status with the request appended,
/// retrying when the controller writes the status in between.
pub async fn request(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    action: &str,
    to_revision: Option<&str>,
) -> Result<Rollout, ApplyError> {
    let api = cluster.api(&ROLLOUT, Some(ns));
    let api_error = |e: kube::Error| match e {
        kube::Error::Api(s) if s.code == 404 => ApplyError::NotFound(format!("Rollout \"{ns}/{name}\" not found")),
        e => ApplyError::Api(format!("Rollout {ns}/{name}: {e}")),
    };
    let typed = |o: &kube::api::DynamicObject| from_dynamic::<Rollout>(o).map_err(|e| ApplyError::Api(e.to_string()));
    // An unknown action is refused before any request to the cluster.
    revisor_api::rollout::check_action(action).map_err(ApplyError::Invalid)?;
    let owner_of = |rev: &str| cluster.revision(ns, rev).map(|r| r.service_name().map(str::to_string));
    for _ in 0..10 {
        let mut obj = api.get(name).await.map_err(api_error)?;
        let mut rollout = typed(&obj)?;
        let effect = rollout
            .take_action(action, to_revision, owner_of)
            .map_err(ApplyError::Invalid)?;
        let written = match effect {
            ActionEffect::Paused { .. } => {
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                let patch = json!({ "spec": { "paused": rollout.spec.paused } });
                api.patch(name, &params, &Patch::Merge(patch)).await
            }
            ActionEffect::Requested => {
                obj.data["status"] =
                    serde_json::to_value(rollout.status()).map_err(|e| ApplyError::Api(e.to_string()))?;
                api.replace_status(name, &PostParams::default(), &obj).await
            }
        };
        match written {
            Ok(o) => return typed(&o),
            Err(kube::Error::Api(s)) if s.code == 409 => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return Err(api_error(e)),
        }
    }
    Err(ApplyError::Conflict(format!(
        "Rollout {ns}/{name}: its status kept changing; try again"
    )))
}

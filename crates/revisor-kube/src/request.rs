//! An operator's request to a Rollout on the cluster (promote, abort, undo, pause, ...): the same
//! actions as locally, taken by the Rollout controller at its next step.

use std::time::Duration;

use kube::api::{Patch, PatchParams, PostParams};
use revisor_api::{FieldErrors, Rollout};
use serde_json::json;

use crate::apply::{ApplyError, FIELD_MANAGER};
use crate::cluster::{from_dynamic, Cluster, ROLLOUT};

/// Records `action` on Rollout `ns/name`: `pause`/`resume` set `spec.paused`; the others are appended
/// to `status.requests` (with `undo`'s target revision), retrying when the controller writes the status
/// in between.
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
    revisor_api::rollout::check_action(action).map_err(ApplyError::Invalid)?;
    if action == "pause" || action == "resume" {
        let paused = if action == "pause" { json!(true) } else { json!(null) };
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let obj = api
            .patch(name, &params, &Patch::Merge(json!({ "spec": { "paused": paused } })))
            .await
            .map_err(api_error)?;
        return typed(&obj);
    }
    if let Some(rev) = to_revision {
        if cluster.revision(ns, rev).is_none() {
            let mut errs = FieldErrors::default();
            errs.push("toRevision", format!("revision {rev:?} does not exist"));
            return Err(ApplyError::Invalid(errs));
        }
    }
    for _ in 0..10 {
        let mut obj = api.get(name).await.map_err(api_error)?;
        let mut st = typed(&obj)?.status();
        st.requests.push(action.to_string());
        if action == "undo" {
            st.undo_to = to_revision.map(str::to_string);
        }
        obj.data["status"] = serde_json::to_value(&st).map_err(|e| ApplyError::Api(e.to_string()))?;
        match api.replace_status(name, &PostParams::default(), &obj).await {
            Ok(o) => return typed(&o),
            Err(kube::Error::Api(s)) if s.code == 409 => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return Err(api_error(e)),
        }
    }
    Err(ApplyError::Conflict(format!(
        "Rollout {ns}/{name}: its status kept changing; try again"
    )))
}

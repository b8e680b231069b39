//! Server-side apply of the Services and Rollouts revisor is given, as the field manager `revisor`.

use kube::api::{Patch, PatchParams};
use revisor_api::{admit_rollout, admit_service, cluster_manifest, decode, Defaults, FieldErrors, Resource};
use serde_json::Value;

use crate::cluster::{Cluster, ROLLOUT, SERVICE};

/// The field manager of everything revisor applies.
pub const FIELD_MANAGER: &str = "revisor";
/// The field manager of the traffic the Rollout controller writes.
pub const ROLLOUT_FIELD_MANAGER: &str = "revisor-rollouts";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The document is not a valid Service or Rollout; nothing was sent.
    #[error("{0}")]
    Invalid(FieldErrors),
    #[error("{0}")]
    NotFound(String),
    /// Another field manager owns a field the document sets; nothing changed.
    #[error("{0}")]
    Conflict(String),
    /// The API server refused the object (its own validation, or Knative's webhook); nothing changed.
    #[error("{0}")]
    Rejected(String),
    #[error("Kubernetes API: {0}")]
    Api(String),
}

/// How to apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// The API server checks everything and changes nothing.
    pub dry_run: bool,
    /// Take the fields other field managers own (server-side apply's `force`), as asked for.
    pub force: bool,
}

/// Checks one document as revisor's admission does, then server-side applies the fields it sets (and
/// nothing revisor would default) as the field manager `revisor`. A conflict with another manager is
/// reported, not forced unless `options.force` says so. A Service whose traffic a Rollout owns is
/// applied without `spec.traffic`, which stays the Rollout's. `namespace` fills in a missing
/// `metadata.namespace`. Returns the object as the cluster holds it after the apply (or would, with a
/// dry run).
pub async fn apply(
    cluster: &Cluster,
    doc: &Value,
    defaults: &Defaults,
    namespace: &str,
    options: ApplyOptions,
) -> Result<Value, ApplyError> {
    let mut doc = doc.clone();
    if doc.pointer("/metadata/namespace").is_none_or(Value::is_null) {
        if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("namespace".into(), Value::String(namespace.to_string()));
        }
    }
    let (kind, ns, name, owned_by_rollout) = match decode(&doc).map_err(ApplyError::Invalid)? {
        Resource::Service(_) => {
            let svc = admit_service(&doc, defaults).map_err(ApplyError::Invalid)?;
            let (ns, name) = (svc.metadata.namespace.clone(), svc.metadata.name.clone());
            let owned = cluster
                .rollouts(Some(&ns))
                .iter()
                .any(|r| r.spec.service_ref.name == name);
            (&SERVICE, ns, name, owned)
        }
        Resource::Rollout(_) => {
            let r = admit_rollout(&doc).map_err(ApplyError::Invalid)?;
            (&ROLLOUT, r.metadata.namespace.clone(), r.metadata.name.clone(), false)
        }
    };
    if let Some(watched) = cluster.namespace.as_deref().filter(|w| *w != ns) {
        let mut errs = FieldErrors::default();
        errs.push(
            "metadata.namespace",
            format!("{ns:?} is not watched: this revisor works in namespace {watched:?} (--namespace)"),
        );
        return Err(ApplyError::Invalid(errs));
    }
    let mut manifest = cluster_manifest(&doc);
    if owned_by_rollout {
        if let Some(spec) = manifest.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("traffic");
        }
    }
    let mut params = PatchParams::apply(FIELD_MANAGER);
    if options.dry_run {
        params = params.dry_run();
    }
    if options.force {
        params = params.force();
    }
    let api = cluster.api(kind, Some(&ns));
    match api.patch(&name, &params, &Patch::Apply(&manifest)).await {
        Ok(obj) => serde_json::to_value(obj).map_err(|e| ApplyError::Api(e.to_string())),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(ApplyError::Conflict(format!(
            "{} {ns}/{name}: {} (revisor does not force a conflicting apply: change the field back, have its \
             manager give it up, or take it with `revisor apply --force-conflicts`)",
            kind.kind, e.message
        ))),
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => Err(ApplyError::Rejected(format!(
            "{} {ns}/{name} refused by the cluster: {}",
            kind.kind, e.message
        ))),
        Err(e) => Err(ApplyError::Api(format!("{} {ns}/{name}: {e}", kind.kind))),
    }
}

/// Deletes a Knative Service (Knative deletes its revisions) or a Rollout.
/// Deletes one object; `preconditions` are its uid and resourceVersion, when the request gave them.
pub async fn delete(
    cluster: &Cluster,
    kind: &crate::cluster::Kind,
    ns: &str,
    name: &str,
    dry_run: bool,
    preconditions: (Option<String>, Option<String>),
) -> Result<(), ApplyError> {
    let api = cluster.api(kind, Some(ns));
    let (uid, resource_version) = preconditions;
    let params = kube::api::DeleteParams {
        dry_run,
        preconditions: (uid.is_some() || resource_version.is_some())
            .then_some(kube::api::Preconditions { uid, resource_version }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            Err(ApplyError::NotFound(format!("{} \"{ns}/{name}\" not found", kind.kind)))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Err(ApplyError::Conflict(e.message)),
        Err(e) => Err(ApplyError::Api(format!("deleting {} {ns}/{name}: {e}", kind.kind))),
    }
}

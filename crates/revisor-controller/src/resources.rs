//! Pure builders of the objects a Service owns: its Configuration and its Revisions.

use revisor_api::meta::OwnerReference;
use revisor_api::names::revision_name;
use revisor_api::revision::labels;
use revisor_api::service::SERVING_API_VERSION;
use revisor_api::{Condition, ConditionStatus, Configuration, ObjectMeta, Revision, RevisionStatus, Service};

/// Reason and message of a revision that no runtime has picked up yet.
pub const AWAITING_RUNTIME: (&str, &str) = (
    "AwaitingRuntime",
    "the revision is recorded; no runtime has started it yet",
);

fn owner(svc: &Service, kind: &str) -> OwnerReference {
    OwnerReference {
        api_version: SERVING_API_VERSION.into(),
        kind: kind.into(),
        name: svc.metadata.name.clone(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The Configuration a Service's template maps to, at the given generation.
pub fn make_configuration(svc: &Service, generation: i64) -> Configuration {
    let mut metadata = ObjectMeta {
        name: svc.metadata.name.clone(),
        namespace: svc.metadata.namespace.clone(),
        labels: svc.metadata.labels.clone(),
        generation: Some(generation),
        owner_references: Some(vec![owner(svc, "Service")]),
        ..Default::default()
    };
    metadata.set_label(labels::SERVICE, svc.metadata.name.clone());
    Configuration {
        api_version: SERVING_API_VERSION.into(),
        kind: "Configuration".into(),
        metadata,
        spec: revisor_api::configuration::ConfigurationSpec {
            template: svc.spec.template.clone(),
        },
        status: None,
    }
}

/// The name of the revision a configuration generation stamps: the BYO name, or `<name>-<gen:05>`.
pub fn desired_revision_name(cfg: &Configuration) -> String {
    cfg.spec
        .template
        .byo_name()
        .map(str::to_string)
        .unwrap_or_else(|| revision_name(&cfg.metadata.name, cfg.metadata.generation.unwrap_or(1)))
}

/// A new Revision stamped from a configuration's current template.
pub fn make_revision(svc: &Service, cfg: &Configuration) -> Revision {
    let template = &cfg.spec.template;
    let tmeta = template.meta();
    let mut metadata = ObjectMeta {
        name: desired_revision_name(cfg),
        namespace: cfg.metadata.namespace.clone(),
        labels: tmeta.labels.clone(),
        annotations: tmeta.annotations.clone(),
        owner_references: Some(vec![OwnerReference {
            kind: "Configuration".into(),
            ..owner(svc, "Configuration")
        }]),
        ..Default::default()
    };
    let generation = cfg.metadata.generation.unwrap_or(1);
    metadata.set_label(labels::SERVICE, svc.metadata.name.clone());
    metadata.set_label(labels::CONFIGURATION, cfg.metadata.name.clone());
    metadata.set_label(labels::CONFIGURATION_GENERATION, generation.to_string());
    let (reason, message) = AWAITING_RUNTIME;
    let conditions = ["Active", "ContainerHealthy", "Ready", "ResourcesAvailable"]
        .into_iter()
        .map(|t| Condition::new(t, ConditionStatus::Unknown, Some(reason), Some(message.to_string())))
        .collect();
    Revision {
        api_version: SERVING_API_VERSION.into(),
        kind: "Revision".into(),
        metadata,
        spec: template.spec.clone(),
        status: Some(RevisionStatus {
            observed_generation: Some(1),
            conditions,
            actual_replicas: None,
            desired_replicas: None,
        }),
    }
}

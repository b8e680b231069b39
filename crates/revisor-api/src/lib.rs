//! Wire types of revisor's resources (Knative's Service and Revision) with parsing, defaulting and validation.
//!
//! No I/O happens here: callers hand in text or values and get typed objects or field errors back.

pub mod annotations;
pub mod configuration;
pub mod defaults;
pub mod field;
pub mod meta;
pub mod names;
pub mod parse;
pub mod podspec;
pub mod revision;
pub mod rollout;
pub mod schema;
pub mod selector;
pub mod service;
pub mod units;
pub mod validate;

pub use configuration::{Configuration, ConfigurationStatus};
pub use defaults::Defaults;
pub use field::{FieldError, FieldErrors, Path};
pub use meta::{Condition, ConditionStatus, Conditions, ManagedFieldsEntry, ObjectMeta};
pub use parse::{cluster_manifest, decode, read_documents, Document, Resource};
pub use revision::{Revision, RevisionStatus};
pub use rollout::{Rollout, RolloutSpec, RolloutStatus};
pub use service::{Service, ServiceSpec, ServiceStatus, TrafficTarget};

/// Decodes, defaults and validates one Service document: the whole admission path.
pub fn admit_service(value: &serde_json::Value, defaults: &Defaults) -> Result<Service, FieldErrors> {
    let mut svc = match decode(value)? {
        Resource::Service(s) => *s,
        Resource::Rollout(_) => {
            return Err(FieldErrors(vec![FieldError::new(
                "kind",
                "expected a Service, got a Rollout",
            )]))
        }
    };
    defaults.apply(&mut svc);
    validate::validate_service(&svc, defaults)?;
    Ok(svc)
}

/// Decodes, defaults and validates one Rollout document.
pub fn admit_rollout(value: &serde_json::Value) -> Result<Rollout, FieldErrors> {
    let mut r = match decode(value)? {
        Resource::Rollout(r) => *r,
        Resource::Service(_) => {
            return Err(FieldErrors(vec![FieldError::new(
                "kind",
                "expected a Rollout, got a Service",
            )]))
        }
    };
    if r.metadata.namespace.is_empty() {
        r.metadata.namespace = defaults::DEFAULT_NAMESPACE.into();
    }
    rollout::validate_rollout(&r)?;
    Ok(r)
}

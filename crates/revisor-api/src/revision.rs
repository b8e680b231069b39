//! The Knative `Revision`: an immutable snapshot of a Service's template.

use serde::{Deserialize, Serialize};

use crate::meta::{Condition, ObjectMeta};
use crate::podspec::RevisionSpec;

/// Labels Knative puts on every Revision.
pub mod labels {
    pub const SERVICE: &str = "serving.knative.dev/service";
    pub const CONFIGURATION: &str = "serving.knative.dev/configuration";
    pub const CONFIGURATION_GENERATION: &str = "serving.knative.dev/configurationGeneration";
    pub const ROUTING_STATE: &str = "serving.knative.dev/routingState";
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RevisionSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RevisionStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_replicas: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i64>,
}

impl Revision {
    pub fn status(&self) -> RevisionStatus {
        self.status.clone().unwrap_or_default()
    }

    /// The Service this revision belongs to.
    pub fn service_name(&self) -> Option<&str> {
        self.metadata.label(labels::SERVICE)
    }

    pub fn configuration_generation(&self) -> Option<i64> {
        self.metadata.label(labels::CONFIGURATION_GENERATION)?.parse().ok()
    }
}

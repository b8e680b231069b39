//! The Knative `Service` (serving.knative.dev/v1): a template, a traffic split, and their status.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::meta::{Condition, ObjectMeta};
use crate::podspec::RevisionTemplate;

pub const SERVING_API_VERSION: &str = "serving.knative.dev/v1";

/// A Knative Service as the user writes it and as revisor stores it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// The template of the Service's revisions: each change to it creates a new, immutable Revision.
    #[serde(default)]
    pub template: RevisionTemplate,
    /// How traffic is split between the Service's revisions, by percent and by tag. When absent, all
    /// traffic goes to the latest ready revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Vec<TrafficTarget>>,
}

impl ServiceSpec {
    pub fn traffic(&self) -> &[TrafficTarget] {
        self.traffic.as_deref().unwrap_or_default()
    }
}

/// One entry of `spec.traffic` (or, resolved, of `status.traffic`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTarget {
    /// A name for this target, which also gets its own URL (`<tag>-<service>...`) that reaches it
    /// whatever its percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The Revision this target sends traffic to. Not with `latestRevision: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    /// The Configuration whose latest ready Revision this target follows (status only; in a
    /// Service's spec it is implied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_name: Option<String>,
    /// Whether this target follows the latest ready Revision rather than a named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<bool>,
    /// The share of the Service's traffic this target receives, 0 to 100; the percents of all
    /// targets add up to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    /// The URL of this target's tag (status only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl TrafficTarget {
    pub fn is_latest(&self) -> bool {
        self.latest_revision == Some(true)
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref().filter(|t| !t.is_empty())
    }

    pub fn revision(&self) -> Option<&str> {
        self.revision_name.as_deref().filter(|t| !t.is_empty())
    }

    pub fn percent(&self) -> i64 {
        self.percent.unwrap_or(0)
    }
}

/// What the controller observed and did, as Knative reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

impl Service {
    pub fn status(&self) -> ServiceStatus {
        self.status.clone().unwrap_or_default()
    }

    pub fn generation(&self) -> i64 {
        self.metadata.generation.unwrap_or(0)
    }
}

//! Object metadata and status conditions, shaped like Kubernetes' ObjectMeta and Knative's Conditions.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The metadata every stored object carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalizers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_references: Option<Vec<OwnerReference>>,
    /// Which field manager set which fields, as Kubernetes records it. revisor records the owner of the
    /// fields that more than one writer sets (a Service's `spec.traffic`: apply, `revisor traffic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_fields: Option<Vec<ManagedFieldsEntry>>,
}

/// One field manager's fields (Kubernetes' `managedFields` entry, `FieldsV1`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedFieldsEntry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "fieldsV1")]
    pub fields_v1: Option<serde_json::Value>,
}

impl ObjectMeta {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    pub fn set_label(&mut self, key: &str, value: impl Into<String>) {
        self.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), value.into());
    }

    pub fn labels_map(&self) -> BTreeMap<String, String> {
        self.labels.clone().unwrap_or_default()
    }

    pub fn annotations_map(&self) -> BTreeMap<String, String> {
        self.annotations.clone().unwrap_or_default()
    }

    /// The store's key for this object: `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The resourceVersion as a number, when it is one.
    pub fn resource_version_number(&self) -> Option<u64> {
        self.resource_version.as_deref()?.parse().ok()
    }
}

/// Points at the object that owns this one (a Revision's Service).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

/// `True`, `False` or `Unknown`, as Knative writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// One status condition (`Ready`, `RoutesReady`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Condition {
    pub fn new(type_: &str, status: ConditionStatus, reason: Option<&str>, message: Option<String>) -> Self {
        Self {
            type_: type_.to_string(),
            status,
            severity: None,
            last_transition_time: None,
            reason: reason.map(str::to_string),
            message,
        }
    }

    pub fn truthy(type_: &str) -> Self {
        Self::new(type_, ConditionStatus::True, None, None)
    }
}

/// Helpers over a list of conditions.
pub trait Conditions {
    fn get_condition(&self, type_: &str) -> Option<&Condition>;
    /// Sets a condition, keeping its lastTransitionTime when the status did not change.
    fn set_condition(&mut self, cond: Condition, now: DateTime<Utc>);
}

impl Conditions for Vec<Condition> {
    fn get_condition(&self, type_: &str) -> Option<&Condition> {
        self.iter().find(|c| c.type_ == type_)
    }

    fn set_condition(&mut self, mut cond: Condition, now: DateTime<Utc>) {
        match self.iter_mut().find(|c| c.type_ == cond.type_) {
            Some(old) => {
                cond.last_transition_time = if old.status == cond.status {
                    old.last_transition_time.or(Some(now))
                } else {
                    Some(now)
                };
                *old = cond;
            }
            None => {
                cond.last_transition_time = Some(now);
                self.push(cond);
                self.sort_by(|a, b| a.type_.cmp(&b.type_));
            }
        }
    }
}

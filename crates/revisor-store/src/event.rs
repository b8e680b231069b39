//! The event log: what happened to a service and its revisions, and why.

use chrono::{DateTime, Utc};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// How many events are kept per service; older ones are dropped first.
pub const MAX_EVENTS_PER_SERVICE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Normal,
    Warning,
}

/// One recorded event, shaped like a Kubernetes Event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub time: DateTime<Utc>,
    #[serde(rename = "type")]
    pub type_: EventType,
    pub reason: String,
    pub message: String,
    /// The object it is about: `Service/name` or `Revision/name`.
    pub object: String,
}

impl Event {
    pub fn normal(object: String, reason: &str, message: impl Into<String>) -> Self {
        Self {
            time: Utc::now(),
            type_: EventType::Normal,
            reason: reason.into(),
            message: message.into(),
            object,
        }
    }

    pub fn warning(object: String, reason: &str, message: impl Into<String>) -> Self {
        Self {
            time: Utc::now(),
            type_: EventType::Warning,
            reason: reason.into(),
            message: message.into(),
            object,
        }
    }
}

pub(crate) fn list(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    service_key: &str,
) -> Result<Vec<Event>, StoreError> {
    let mut out = Vec::new();
    for entry in table.range((service_key, 0)..=(service_key, u64::MAX))? {
        let (k, v) = entry?;
        let event = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
            kind: "Event",
            key: format!("{}#{}", k.value().0, k.value().1),
            message: e.to_string(),
        })?;
        out.push(event);
    }
    Ok(out)
}

/// Every event of the services in `namespace` (every namespace with `None`), each with its service's
/// key (`namespace/service`) and its sequence number, in key order.
pub(crate) fn list_all(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    namespace: Option<&str>,
) -> Result<Vec<(String, u64, Event)>, StoreError> {
    let decode = |k: (&str, u64), v: &[u8]| -> Result<(String, u64, Event), StoreError> {
        let event = serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
            kind: "Event",
            key: format!("{}#{}", k.0, k.1),
            message: e.to_string(),
        })?;
        Ok((k.0.to_string(), k.1, event))
    };
    let mut out = Vec::new();
    match namespace {
        // Keys are "namespace/service": a namespace's are from "namespace/" up to "namespace0".
        Some(ns) => {
            let (start, end) = (format!("{ns}/"), format!("{ns}0"));
            for entry in table.range((start.as_str(), 0)..(end.as_str(), 0))? {
                let (k, v) = entry?;
                out.push(decode(k.value(), v.value())?);
            }
        }
        None => {
            for entry in table.iter()? {
                let (k, v) = entry?;
                out.push(decode(k.value(), v.value())?);
            }
        }
    }
    Ok(out)
}

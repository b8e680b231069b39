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

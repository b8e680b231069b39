//! What the store keeps: objects with Kubernetes metadata, one table per kind.

use redb::{ReadableTable, TableDefinition};
use revisor_api::{Configuration, ObjectMeta, Revision, Rollout, Service};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{StoreError, CONFIGURATIONS, REVISIONS, ROLLOUTS, SERVICES};

/// The kinds of stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Service,
    Configuration,
    Revision,
    Rollout,
    /// A recorded event: in the watch history only (named by its service, numbered by its sequence).
    Event,
}

/// A stored object: serializable, with metadata, in its own table.
pub trait Object: Serialize + DeserializeOwned + Clone {
    const KIND: Kind;
    const KIND_NAME: &'static str;
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]>;
    fn meta(&self) -> &ObjectMeta;
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    /// The service this object belongs to.
    fn service(&self) -> Option<String>;
}

impl Object for Service {
    fn service(&self) -> Option<String> {
        Some(self.metadata.name.clone())
    }
    const KIND: Kind = Kind::Service;
    const KIND_NAME: &'static str = "Service";
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> = SERVICES;
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Object for Configuration {
    fn service(&self) -> Option<String> {
        Some(self.metadata.name.clone())
    }
    const KIND: Kind = Kind::Configuration;
    const KIND_NAME: &'static str = "Configuration";
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> = CONFIGURATIONS;
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Object for Revision {
    fn service(&self) -> Option<String> {
        self.service_name().map(str::to_string)
    }
    const KIND: Kind = Kind::Revision;
    const KIND_NAME: &'static str = "Revision";
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> = REVISIONS;
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Object for Rollout {
    fn service(&self) -> Option<String> {
        Some(self.spec.service_ref.name.clone())
    }
    const KIND: Kind = Kind::Rollout;
    const KIND_NAME: &'static str = "Rollout";
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> = ROLLOUTS;
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

pub(crate) fn decode<T: Object>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        kind: T::KIND_NAME,
        key: key.to_string(),
        message: e.to_string(),
    })
}

pub(crate) fn list<T: Object>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    namespace: Option<&str>,
) -> Result<Vec<T>, StoreError> {
    match namespace {
        // Keys are "namespace/name": a namespace's objects are those under "namespace/".
        Some(ns) => list_prefixed(table, ns, ""),
        None => table
            .iter()?
            .map(|entry| {
                let (k, v) = entry?;
                decode(k.value(), v.value())
            })
            .collect(),
    }
}

/// The objects of `namespace` whose names start with `prefix`, from one range of keys.
pub(crate) fn list_prefixed<T: Object>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    namespace: &str,
    prefix: &str,
) -> Result<Vec<T>, StoreError> {
    let start = format!("{namespace}/{prefix}");
    // The first key after every key that starts with `start`: its last byte, plus one. Keys are ASCII
    // (DNS labels and '/'), so the last byte is never 0xff.
    let mut end = start.clone().into_bytes();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let end = String::from_utf8(end).unwrap_or_default();
    let mut out = Vec::new();
    for entry in table.range(start.as_str()..end.as_str())? {
        let (k, v) = entry?;
        out.push(decode(k.value(), v.value())?);
    }
    Ok(out)
}

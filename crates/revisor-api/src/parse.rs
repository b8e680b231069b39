//! Reading manifests: multi-document YAML or JSON into typed resources, strictly (unknown fields are errors).

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::field::{FieldError, FieldErrors, Path};
use crate::rollout::{Rollout, ROLLOUT_API_VERSION};
use crate::service::{Service, SERVING_API_VERSION};

/// One document of a manifest file, numbered from 1 as it appears.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub index: usize,
    pub value: Value,
}

/// A manifest document that could not be read at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("document {index}: {message}")]
pub struct SyntaxError {
    pub index: usize,
    pub message: String,
}

/// Splits text into documents: a JSON value (a `List` is unpacked) or YAML documents separated by `---`.
/// Empty documents are skipped but still counted, so indexes match what the user sees.
pub fn read_documents(text: &str) -> Result<Vec<Document>, SyntaxError> {
    // A byte order mark (editors on Windows write one) is not part of the first document.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let value: Value = serde_json::from_str(text).map_err(|e| SyntaxError {
            index: 1,
            message: format!("invalid JSON: {e}"),
        })?;
        return Ok(unpack_list(value, 1));
    }
    let mut docs = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let yaml = <serde_norway::Value as serde::Deserialize>::deserialize(de).map_err(|e| SyntaxError {
            index,
            message: format!("invalid YAML: {e}"),
        })?;
        let value = serde_json::to_value(&yaml).map_err(|e| SyntaxError {
            index,
            message: format!("not representable as JSON: {e}"),
        })?;
        if !value.is_null() {
            docs.extend(unpack_list(value, index));
        }
    }
    Ok(docs)
}

fn unpack_list(value: Value, index: usize) -> Vec<Document> {
    match value {
        Value::Object(ref o) if o.get("kind").and_then(Value::as_str) == Some("List") => o
            .get("items")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|v| Document {
                        index,
                        value: v.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        Value::Array(items) => items.into_iter().map(|value| Document { index, value }).collect(),
        value => vec![Document { index, value }],
    }
}

/// What a cluster should get of an object: apiVersion, kind, the user's metadata (name, namespace,
/// labels, annotations) and spec; nothing the server manages.
pub fn cluster_manifest(v: &Value) -> Value {
    let mut meta = serde_json::Map::new();
    for k in ["name", "namespace", "labels", "annotations"] {
        if let Some(x) = v.pointer(&format!("/metadata/{k}")).filter(|x| !x.is_null()) {
            meta.insert(k.into(), x.clone());
        }
    }
    serde_json::json!({
        "apiVersion": v["apiVersion"],
        "kind": v["kind"],
        "metadata": meta,
        "spec": v.get("spec").cloned().unwrap_or_else(|| serde_json::json!({})),
    })
}

/// A resource revisor understands, decoded and type-checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Service(Box<Service>),
    Rollout(Box<Rollout>),
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Service(_) => "Service",
            Resource::Rollout(_) => "Rollout",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Resource::Service(s) => &s.metadata.name,
            Resource::Rollout(r) => &r.metadata.name,
        }
    }
}

/// Decodes one document by its `apiVersion` and `kind`.
pub fn decode(value: &Value) -> Result<Resource, FieldErrors> {
    let obj = value
        .as_object()
        .ok_or_else(|| one("", format!("expected an object, got {}", type_name(value))))?;
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    match (api_version, kind) {
        (SERVING_API_VERSION, "Service") => Ok(Resource::Service(Box::new(decode_strict(value)?))),
        (ROLLOUT_API_VERSION, "Rollout") => Ok(Resource::Rollout(Box::new(decode_strict(value)?))),
        ("", _) => Err(one("apiVersion", "missing field(s)")),
        (_, "") => Err(one("kind", "missing field(s)")),
        _ => Err(one(
            "kind",
            format!(
                "unsupported resource {api_version}/{kind}: revisor accepts {SERVING_API_VERSION} Service and \
                 {ROLLOUT_API_VERSION} Rollout"
            ),
        )),
    }
}

/// Deserializes a typed object and refuses any field the type does not know, with its path.
/// Status is output only: it is ignored on input, as Kubernetes does for resources with a status subresource.
pub fn decode_strict<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, FieldErrors> {
    let mut input = value.clone();
    if let Some(o) = input.as_object_mut() {
        o.remove("status");
    }
    // An empty name would not survive the round trip (it is not written out) and read as unknown.
    if input.pointer("/metadata/name").and_then(Value::as_str) == Some("") {
        return Err(one("metadata.name", "must not be empty"));
    }
    let typed: T = serde_path_to_error::deserialize(&input).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        one(path, e.into_inner().to_string())
    })?;
    let echoed = serde_json::to_value(&typed).map_err(|e| one("", e.to_string()))?;
    let mut errs = FieldErrors::default();
    unknown_fields(&input, &echoed, &Path::default(), &mut errs);
    errs.into_result().map(|_| typed)
}

/// Removes from `value` (a Service or Rollout document) every field its kind does not have, and says
/// which (`spec.template.spec.bogus`): Kubernetes' `fieldValidation=Ignore` and `Warn`. A document
/// that does not decode at all is left as it is, for admission to report.
pub fn prune_unknown(value: &mut Value) -> Vec<String> {
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    match (api_version, kind) {
        (SERVING_API_VERSION, "Service") => prune::<Service>(value),
        (ROLLOUT_API_VERSION, "Rollout") => prune::<Rollout>(value),
        _ => vec![],
    }
}

fn prune<T: DeserializeOwned + Serialize>(value: &mut Value) -> Vec<String> {
    let mut input = value.clone();
    if let Some(o) = input.as_object_mut() {
        o.remove("status");
    }
    let Ok(typed) = serde_json::from_value::<T>(input) else {
        return vec![];
    };
    let Ok(echoed) = serde_json::to_value(&typed) else {
        return vec![];
    };
    let mut removed = Vec::new();
    remove_unknown(value, &echoed, &Path::default(), &mut removed);
    removed
}

fn remove_unknown(input: &mut Value, echoed: &Value, path: &Path, removed: &mut Vec<String>) {
    match (input, echoed) {
        (Value::Object(i), Value::Object(o)) => {
            i.retain(|k, v| {
                let keep = v.is_null() || o.contains_key(k) || (path.to_string().is_empty() && k == "status");
                if !keep {
                    removed.push(path.field(k).to_string());
                }
                keep
            });
            for (k, v) in i.iter_mut() {
                if let Some(ov) = o.get(k) {
                    remove_unknown(v, ov, &path.field(k), removed);
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (a, b)) in i.iter_mut().zip(o).enumerate() {
                remove_unknown(a, b, &path.index(n), removed);
            }
        }
        _ => {}
    }
}

/// Every key of `input` that did not survive the typed round trip is a field the type does not have.
fn unknown_fields(input: &Value, echoed: &Value, path: &Path, errs: &mut FieldErrors) {
    match (input, echoed) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i.iter().filter(|(_, v)| !v.is_null()) {
                match o.get(k) {
                    Some(ov) => unknown_fields(v, ov, &path.field(k), errs),
                    None => errs.push(path.field(k), format!("unknown field {k:?}")),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (a, b)) in i.iter().zip(o).enumerate() {
                unknown_fields(a, b, &path.index(n), errs);
            }
        }
        _ => {}
    }
}

fn one(path: impl Into<String>, message: impl Into<String>) -> FieldErrors {
    FieldErrors(vec![FieldError::new(path, message)])
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod prune_tests {
    use super::*;

    #[test]
    fn unknown_fields_are_removed_and_named() {
        let mut v = serde_json::json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": { "name": "a", "bogus": 1 },
            "spec": { "template": { "spec": { "containers": [{ "image": "x", "colour": "red" }] } } },
            "status": { "url": "kept: status is output only" },
        });
        let removed = prune_unknown(&mut v);
        assert_eq!(removed, ["metadata.bogus", "spec.template.spec.containers[0].colour"]);
        assert!(v.pointer("/metadata/bogus").is_none() && v.pointer("/status/url").is_some());
        assert!(decode(&v).is_ok(), "what is left decodes strictly");
        let mut other = serde_json::json!({ "apiVersion": "v1", "kind": "Pod", "x": 1 });
        assert!(prune_unknown(&mut other).is_empty());
    }
}

//! PATCH as Kubernetes takes it, by content type: an apply patch (server-side apply), a JSON merge patch
//! (RFC 7386, what client-side `kubectl apply` sends for custom resources), or a JSON patch (RFC 6902);
//! a strategic merge patch is refused as Kubernetes refuses it for custom resources. Also
//! `fieldValidation`, which says what a write does with fields its kind does not have.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use revisor_store::{Object, Store};
use serde_json::Value;

use super::handlers::body_document;
use super::ApiError;

/// A PATCH request's body, by its content type.
pub(crate) enum Patch {
    /// The fields of one field manager (`application/apply-patch+yaml`, YAML or JSON).
    Apply(Value),
    Merge(Value),
    Json(json_patch::Patch),
}

const ACCEPTED: &str = "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml";

impl Patch {
    pub(crate) fn read(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Patch, ApiError> {
        let mime = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|c| c.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let json = |body: Result<Bytes, BytesRejection>| -> Result<Value, ApiError> {
            let body = body.map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
            serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("the patch is not valid JSON: {e}")))
        };
        match mime.as_str() {
            "application/merge-patch+json" => match json(body)? {
                v @ Value::Object(_) => Ok(Patch::Merge(v)),
                other => Err(ApiError::BadRequest(format!(
                    "a merge patch must be a JSON object, got {}",
                    kind_of(&other)
                ))),
            },
            "application/json-patch+json" => serde_json::from_value(json(body)?)
                .map(Patch::Json)
                .map_err(|e| ApiError::BadRequest(format!("the JSON patch is not a list of operations: {e}"))),
            "application/strategic-merge-patch+json" => Err(ApiError::UnsupportedMediaType(format!(
                "strategic merge patch is not supported for revisor's kinds, which are custom resources \
                 (as in Kubernetes): accepted media types are {ACCEPTED} (kubectl patch --type=merge or --type=json)"
            ))),
            "application/apply-patch+yaml" => body_document(headers, body).map(Patch::Apply),
            "" => Err(ApiError::UnsupportedMediaType(format!(
                "the PATCH has no Content-Type, which says what kind of patch it is: send one of {ACCEPTED}"
            ))),
            other => Err(ApiError::UnsupportedMediaType(format!(
                "content type {other:?} is not a kind of patch: send one of {ACCEPTED} (a whole object is \
                 sent with PUT)"
            ))),
        }
    }

    /// `current` (the stored `kind` called `name`) with this merge or JSON patch applied.
    fn onto(&self, mut current: Value, kind: &'static str, name: &str) -> Result<Value, ApiError> {
        match self {
            Patch::Apply(v) => Ok(v.clone()),
            Patch::Merge(p) => {
                json_patch::merge(&mut current, p);
                Ok(current)
            }
            Patch::Json(p) => json_patch::patch(&mut current, p).map(|_| current).map_err(|e| {
                let message = format!("JSON patch operation {}: {}", e.operation, e.kind);
                let error = revisor_api::FieldError::new(e.path.to_string(), message);
                ApiError::invalid(kind, name, revisor_api::FieldErrors(vec![error]))
            }),
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "a list",
        Value::String(_) => "a string",
        Value::Null => "null",
        _ => "a scalar",
    }
}

/// Applies a merge or JSON patch to the stored `T` at `ns/name` and writes the result with `write`
/// (which admits it and stores it as an update), with the read's resourceVersion as precondition
/// unless the patch gives one: a write that lands in between makes it read and patch again, as
/// Kubernetes does.
pub(crate) fn read_modify_write<T: Object + serde::Serialize, R>(
    store: &Store,
    ns: &str,
    name: &str,
    patch: &Patch,
    mut write: impl FnMut(Value) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    let mut attempts = 0;
    loop {
        let current = store
            .get::<T>(ns, name)?
            .ok_or_else(|| ApiError::NotFound(format!("{} \"{ns}/{name}\" not found", T::KIND_NAME)))?;
        let read_version = current.meta().resource_version.clone();
        let current = serde_json::to_value(&current).map_err(|e| ApiError::Internal(e.to_string()))?;
        let next = patch.onto(current, T::KIND_NAME, name)?;
        let own_precondition =
            next.pointer("/metadata/resourceVersion").and_then(Value::as_str) == read_version.as_deref();
        attempts += 1;
        match write(next) {
            Err(ApiError::Stale(_)) if own_precondition && attempts < 5 => continue,
            other => return other,
        }
    }
}

/// Kubernetes' `fieldValidation`: what a write does with fields its kind does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    /// Refused, naming each (the default, as in Kubernetes since 1.27).
    Strict,
    /// Dropped, each named in a `Warning` header (kubectl prints them).
    Warn,
    /// Dropped silently.
    Ignore,
}

impl FieldValidation {
    pub(crate) fn from_params(params: &HashMap<String, String>) -> Result<Self, ApiError> {
        match params.get("fieldValidation").map(String::as_str) {
            None | Some("") | Some("Strict") => Ok(Self::Strict),
            Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation={other:?}: want Strict, Warn or Ignore"
            ))),
        }
    }

    /// Drops the fields `value`'s kind does not have, or (strict) refuses them, each by its path;
    /// the warnings to send.
    pub(crate) fn prune(self, value: &mut Value) -> Result<Vec<String>, ApiError> {
        let mut pruned = value.clone();
        let removed = revisor_api::parse::prune_unknown(&mut pruned);
        match self {
            Self::Strict if !removed.is_empty() => {
                let kind = if value.get("kind").and_then(Value::as_str) == Some("Rollout") {
                    "Rollout"
                } else {
                    "Service"
                };
                let name = value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
                let errors = removed
                    .iter()
                    .map(|f| {
                        let key = f.rsplit(['.', ']']).next().unwrap_or(f);
                        revisor_api::FieldError::new(f.clone(), format!("unknown field {key:?}"))
                    })
                    .collect();
                Err(ApiError::invalid(kind, name, revisor_api::FieldErrors(errors)))
            }
            Self::Strict => Ok(vec![]),
            Self::Ignore => {
                *value = pruned;
                Ok(vec![])
            }
            Self::Warn => {
                *value = pruned;
                Ok(removed.into_iter().map(|f| format!("unknown field \"{f}\"")).collect())
            }
        }
    }
}

/// Adds each warning as a `Warning: 299 - "..."` header, as Kubernetes sends them.
pub(crate) fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use revisor_api::Service;

    /// A write that lands between a patch's read and its write makes the patch read and apply again:
    /// both changes are kept.
    #[test]
    fn a_patch_raced_by_another_write_is_applied_again_to_the_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let mut svc = Service {
            api_version: "serving.knative.dev/v1".into(),
            kind: "Service".into(),
            ..Default::default()
        };
        svc.metadata.name = "a".into();
        svc.metadata.namespace = "default".into();
        store.write(|tx| tx.create(svc)).unwrap();
        let patch = Patch::Merge(serde_json::json!({ "metadata": { "labels": { "patched": "yes" } } }));
        let mut attempts = 0;
        let stored = read_modify_write::<Service, _>(&store, "default", "a", &patch, |value| {
            attempts += 1;
            if attempts == 1 {
                // Another writer gets in first.
                let mut other: Service = store.get("default", "a").unwrap().unwrap();
                other.metadata.set_label("other", "write");
                store.write(|tx| tx.update(other)).unwrap();
            }
            let ours: Service = serde_json::from_value(value).unwrap();
            Ok(store.write(|tx| tx.update(ours))?)
        })
        .unwrap();
        assert_eq!(attempts, 2);
        assert_eq!(stored.metadata.label("other"), Some("write"));
        assert_eq!(stored.metadata.label("patched"), Some("yes"));
    }
}

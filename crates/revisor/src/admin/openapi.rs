//! OpenAPI v3 documents of revisor's kinds (`/openapi/v3` and one document per group version), built
//! from the schemas generated from the types that decode and validate them (`revisor_api::schema`).
//! kubectl reads them to validate (it sees that PATCH takes `fieldValidation` and lets the server
//! validate), to `explain` fields, and client generators read them as they read Kubernetes' own.

use std::hash::{Hash, Hasher};

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use revisor_api::schema::{self, KindInfo};
use serde_json::{json, Map, Value};

use super::discovery::groups;
use super::ApiError;

/// The routes, for the local backend (`local`) or the cluster's: each documents what its discovery
/// lists.
pub fn routes<S: Clone + Send + Sync + 'static>(local: bool) -> Router<S> {
    Router::new()
        .route("/openapi/v3", get(move || async move { Json(index(local)) }))
        .route(
            "/openapi/v3/apis/{group}/{version}",
            get(move |Path((group, version)): Path<(String, String)>| async move {
                document(local, &group, &version).map(Json)
            }),
        )
}

/// `/openapi/v3`: where each group version's document is, with a hash of its content that clients
/// cache it by.
fn index(local: bool) -> Value {
    let mut paths = Map::new();
    for (group, version, _) in groups(local) {
        let doc = document(local, group, version).expect("every listed group version has a document");
        if doc["components"]["schemas"].as_object().is_none_or(|s| s.is_empty()) {
            continue;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        doc.to_string().hash(&mut h);
        paths.insert(
            format!("apis/{group}/{version}"),
            json!({ "serverRelativeURL": format!("/openapi/v3/apis/{group}/{version}?hash={:016X}", h.finish()) }),
        );
    }
    json!({ "paths": paths })
}

/// The name Kubernetes gives a kind's schema: the group reversed, the version, the kind.
fn schema_name(k: &KindInfo) -> String {
    let group: Vec<&str> = k.group.split('.').rev().collect();
    format!("{}.{}.{}", group.join("."), k.version, k.kind)
}

fn gvk(k: &KindInfo) -> Value {
    json!({ "group": k.group, "version": k.version, "kind": k.kind })
}

fn query(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "query", "description": description, "schema": { "type": "string", "uniqueItems": true } })
}

fn path_param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description, "schema": { "type": "string", "uniqueItems": true } })
}

/// One operation on `k`, answering `ok_schema` as JSON (and YAML).
fn operation(k: &KindInfo, action: &str, id: &str, params: Vec<Value>, ok_schema: Value, body: Option<Value>) -> Value {
    let content = json!({ "application/json": { "schema": ok_schema }, "application/yaml": { "schema": ok_schema } });
    let mut op = json!({
        "operationId": format!("{id}{}{}Namespaced{}", camel(k.group), camel(k.version), k.kind),
        "tags": [format!("{}_{}", k.group, k.version)],
        "parameters": params,
        "responses": { "200": { "description": "OK", "content": content }, "401": { "description": "Unauthorized" } },
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(k),
    });
    if let Some(body) = body {
        op["requestBody"] = json!({ "content": body, "required": true });
    }
    op
}

/// `serving.knative.dev` as `ServingKnativeDev`, the way Kubernetes names operations.
fn camel(s: &str) -> String {
    s.split(['.', '-'])
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

/// The OpenAPI v3 document of one group version: its kinds' schemas and operations.
fn document(local: bool, group: &str, version: &str) -> Result<Value, ApiError> {
    let (g, v, resources) = groups(local)
        .into_iter()
        .find(|(g, v, _)| *g == group && *v == version)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no such path /openapi/v3/apis/{group}/{version} (no API group version \"{group}/{version}\" here)"
            ))
        })?;
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for r in &resources {
        // Events are Kubernetes' own kind, documented by Kubernetes.
        let Some(k) = schema::KINDS
            .iter()
            .find(|k| k.group == g && k.version == v && k.kind == r.kind)
        else {
            continue;
        };
        let name = schema_name(k);
        let mut object = schema::object(*k, false);
        object["x-kubernetes-group-version-kind"] = json!([gvk(k)]);
        schemas.insert(name.clone(), object);
        let one = json!({ "$ref": format!("#/components/schemas/{name}") });
        let list_name = format!("{name}List");
        schemas.insert(
            list_name.clone(),
            json!({
                "type": "object",
                "description": format!("A list of {}.", r.name),
                "required": ["items"],
                "properties": {
                    "apiVersion": { "type": "string" },
                    "kind": { "type": "string" },
                    "metadata": { "type": "object" },
                    "items": { "type": "array", "items": one },
                },
                "x-kubernetes-group-version-kind": [{ "group": k.group, "version": k.version, "kind": format!("{}List", k.kind) }],
            }),
        );
        let many = json!({ "$ref": format!("#/components/schemas/{list_name}") });
        let can = |verb: &str| r.verbs.contains(&verb);
        let write_params =
            || {
                vec![
                query("dryRun", "When present, says the changes are not to be persisted: the only value is All."),
                query("fieldManager", "The name of the actor making the change."),
                query(
                    "fieldValidation",
                    "What to do with unknown or duplicate fields in the body: Ignore, Warn or Strict (the default).",
                ),
            ]
            };
        let object_body = json!({ "application/json": { "schema": one }, "application/yaml": { "schema": one } });
        let base = format!("/apis/{g}/{v}/namespaces/{{namespace}}/{}", r.name);

        let mut collection = Map::new();
        collection.insert(
            "parameters".into(),
            json!([path_param("namespace", "The object name and auth scope.")]),
        );
        if can("list") {
            let params = [
                "labelSelector",
                "fieldSelector",
                "limit",
                "continue",
                "resourceVersion",
                "watch",
            ]
            .iter()
            .map(|p| query(p, "As Kubernetes' list and watch take it."))
            .collect();
            collection.insert("get".into(), operation(k, "list", "list", params, many, None));
        }
        if can("create") {
            collection.insert(
                "post".into(),
                operation(
                    k,
                    "post",
                    "create",
                    write_params(),
                    one.clone(),
                    Some(object_body.clone()),
                ),
            );
        }
        paths.insert(base.clone(), Value::Object(collection));

        let mut item = Map::new();
        item.insert(
            "parameters".into(),
            json!([
                path_param("name", &format!("The name of the {}.", k.kind)),
                path_param("namespace", "The object name and auth scope.")
            ]),
        );
        if can("get") {
            item.insert("get".into(), operation(k, "get", "read", vec![], one.clone(), None));
        }
        if can("update") {
            item.insert(
                "put".into(),
                operation(
                    k,
                    "put",
                    "replace",
                    write_params(),
                    one.clone(),
                    Some(object_body.clone()),
                ),
            );
        }
        if can("patch") {
            let mut params = write_params();
            params.push(query(
                "force",
                "Apply even where other managers own the fields (apply patches only).",
            ));
            let patch = json!({ "type": "object" });
            let body = json!({
                "application/apply-patch+yaml": { "schema": patch },
                "application/merge-patch+json": { "schema": patch },
                "application/json-patch+json": { "schema": patch },
            });
            item.insert(
                "patch".into(),
                operation(k, "patch", "patch", params, one.clone(), Some(body)),
            );
        }
        if can("delete") {
            let status = json!({ "type": "object" });
            item.insert(
                "delete".into(),
                operation(
                    k,
                    "delete",
                    "delete",
                    vec![query("dryRun", "As for a write.")],
                    status,
                    None,
                ),
            );
        }
        paths.insert(format!("{base}/{{name}}"), Value::Object(item));
    }
    Ok(json!({
        "openapi": "3.0.0",
        "info": { "title": "revisor", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": { "schemas": schemas },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_kind_has_a_schema_and_patch_takes_field_validation() {
        let index = index(true);
        let paths = index["paths"].as_object().unwrap();
        assert_eq!(
            paths.keys().collect::<Vec<_>>(),
            ["apis/serving.knative.dev/v1", "apis/revisor.dev/v1alpha1"]
        );
        let doc = document(true, "serving.knative.dev", "v1").unwrap();
        let svc = &doc["components"]["schemas"]["dev.knative.serving.v1.Service"];
        assert_eq!(svc["x-kubernetes-group-version-kind"][0]["kind"], "Service");
        let traffic = &svc["properties"]["spec"]["properties"]["traffic"]["items"]["properties"];
        assert_eq!(traffic["percent"]["type"], "integer");
        assert!(traffic["revisionName"]["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()));
        let patch = &doc["paths"]["/apis/serving.knative.dev/v1/namespaces/{namespace}/services/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Service");
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"));
        // Revisions are read and deleted, never written: no PATCH is documented for them.
        assert!(
            doc["paths"]["/apis/serving.knative.dev/v1/namespaces/{namespace}/revisions/{name}"]
                .get("patch")
                .is_none()
        );
        let ro = document(true, "revisor.dev", "v1alpha1").unwrap();
        assert_eq!(
            ro["components"]["schemas"]["dev.revisor.v1alpha1.Rollout"]["required"],
            json!(["spec"])
        );
        let cluster = document(false, "serving.knative.dev", "v1").unwrap();
        assert!(cluster["components"]["schemas"]
            .get("dev.knative.serving.v1.Configuration")
            .is_none());
        assert!(document(true, "apps", "v1").is_err());
    }
}

//! Conformance with the Open Inference Protocol spec (../shared/reference/oip/open_inference_rest.yaml):
//! every endpoint the spec lists answers, and every answer validates against the schema the spec gives
//! for its status (required properties and their JSON types, following `$ref`s).

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use revisor_conformance::reference_dir;
use revisor_model::examples::{write_all, Example};
use revisor_model::{router, state, Model};
use serde_json::{json, Value};
use tower::ServiceExt;

fn spec() -> Value {
    let path = reference_dir().join("oip/open_inference_rest.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let yaml: serde_norway::Value = serde_norway::from_str(&text).expect("spec parses");
    serde_json::to_value(yaml).expect("spec is JSON-compatible")
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.trim_start_matches('#');
            resolve(
                spec,
                spec.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {r}")),
            )
        }
        None => schema,
    }
}

/// Checks `v` against a schema: `type`, `required`, `properties`, `items`.
fn validate(spec: &Value, schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    let ok = match schema.get("type").and_then(Value::as_str) {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    };
    if !ok {
        errors.push(format!("{path}: expected {}, got {v}", schema["type"]));
        return;
    }
    for r in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
        let key = r.as_str().unwrap();
        if v.get(key).is_none() {
            errors.push(format!("{path}: missing required property {key:?}"));
        }
    }
    if let (Some(props), Some(obj)) = (schema.get("properties").and_then(Value::as_object), v.as_object()) {
        for (k, s) in props {
            if let Some(x) = obj.get(k).filter(|x| !x.is_null()) {
                validate(spec, s, x, &format!("{path}.{k}"), errors);
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            validate(spec, items, x, &format!("{path}[{i}]"), errors);
        }
    }
}

#[tokio::test]
async fn every_endpoint_answers_as_the_spec_says() {
    let spec = spec();
    let dir = tempfile::tempdir().unwrap();
    write_all(dir.path()).unwrap();
    let m = Model::load(
        dir.path().join(Example::V1.file_name()).to_str().unwrap(),
        "tabular",
        "1",
    )
    .unwrap();
    m.warm_up().unwrap();
    let app = router(state(Arc::new(m)));
    let good = json!({ "id": "42", "inputs": [{ "name": "features", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8] }], "outputs": [{ "name": "probabilities" }] });
    let bad = json!({ "inputs": [{ "name": "features", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3] }] });
    let paths = spec["paths"].as_object().expect("the spec has paths");
    let mut checked = 0;
    let mut errors = Vec::new();
    for (template, ops) in paths {
        let uri = template
            .replace("${MODEL_NAME}", "tabular")
            .replace("${MODEL_VERSION}", "1");
        for (method, op) in ops
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "get" | "post"))
        {
            let mut cases = vec![("200", if method == "post" { good.clone() } else { Value::Null })];
            if method == "post" {
                cases.push(("400", bad.clone()));
            }
            for (status, body) in cases {
                let req = Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(&uri)
                    .header("content-type", "application/json")
                    .body(if body.is_null() {
                        Body::empty()
                    } else {
                        Body::from(body.to_string())
                    })
                    .unwrap();
                let resp = app.clone().oneshot(req).await.unwrap();
                let got = resp.status().as_u16().to_string();
                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                if got != status {
                    errors.push(format!("{method} {uri}: status {got}, want {status}"));
                    continue;
                }
                checked += 1;
                if let Some(schema) = op.pointer(&format!("/responses/{status}/content/application~1json/schema")) {
                    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    validate(&spec, schema, &v, &format!("{method} {uri} {status}"), &mut errors);
                }
            }
        }
    }
    assert!(
        checked >= 7,
        "only {checked} endpoint answers were checked (the spec has 6 operations)"
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

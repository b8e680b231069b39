//! The Rollout CRD generated from the Rust types is a structural schema, as Kubernetes requires.

use serde_json::Value;

/// Every problem that makes a schema non-structural, with its path.
fn non_structural(v: &Value, path: &str, out: &mut Vec<String>) {
    let Some(o) = v.as_object() else { return };
    for k in ["$ref", "allOf", "anyOf", "oneOf", "not"] {
        if o.contains_key(k) {
            out.push(format!("{path}: has {k}"));
        }
    }
    let typed = o.contains_key("type")
        || o.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || o.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !typed {
        out.push(format!("{path}: no type"));
    }
    if let Some(Value::String(d)) = o.get("description") {
        // `kubectl explain` shows descriptions as they are: a doc comment's source line wrap
        // is not part of the text.
        if d.replace("\n\n", "").contains('\n') {
            out.push(format!("{path}: description wrapped mid-paragraph: {d:?}"));
        }
    }
    if let Some(Value::Object(props)) = o.get("properties") {
        for (k, p) in props {
            non_structural(p, &format!("{path}.{k}"), out);
        }
    }
    if let Some(items) = o.get("items") {
        non_structural(items, &format!("{path}[]"), out);
    }
    if let Some(ap @ Value::Object(_)) = o.get("additionalProperties") {
        non_structural(ap, &format!("{path}{{}}"), out);
    }
}

#[test]
fn the_crd_is_structural_and_names_the_resource() {
    let crd = revisor_api::rollout::crd();
    assert_eq!(crd["metadata"]["name"], "rollouts.revisor.dev");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let schema = &version["schema"]["openAPIV3Schema"];
    let mut problems = Vec::new();
    non_structural(schema, "", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
    let spec = &schema["properties"]["spec"]["properties"];
    for field in [
        "serviceRef",
        "strategy",
        "analysis",
        "progressDeadline",
        "rollbackWindow",
        "paused",
    ] {
        assert!(spec.get(field).is_some(), "spec.{field} in the schema");
    }
    let step = &spec["strategy"]["properties"]["canary"]["properties"]["steps"]["items"]["properties"];
    assert!(step["setHeaderRoute"]["properties"]["match"]["items"]["properties"]["headerName"].is_object());
    assert_eq!(
        schema["properties"]["status"]["properties"]["measurements"]["items"]["properties"]["time"]["format"],
        "date-time"
    );
}

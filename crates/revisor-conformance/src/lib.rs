//! Locates Knative's reference material (CRDs, configmaps, example manifests) for the conformance tests.

use std::path::PathBuf;

/// The reference directory: `$REVISOR_REFERENCE_DIR`, else `../shared/reference` beside the repository.
/// Panics with a message naming what is missing, so a run without it fails instead of skipping.
pub fn reference_dir() -> PathBuf {
    let dir = std::env::var_os("REVISOR_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference"));
    assert!(
        dir.join("knative").is_dir(),
        "the Knative reference material is missing at {} (set REVISOR_REFERENCE_DIR)",
        dir.display()
    );
    dir
}

/// Every example manifest, as (file name, text).
pub fn examples() -> Vec<(String, String)> {
    let dir = reference_dir().join("knative/examples");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect();
    out.sort();
    out
}

/// The `_example` block of a Knative ConfigMap, as key -> value (comments dropped).
pub fn configmap_example(name: &str) -> Vec<(String, String)> {
    let path = reference_dir().join("knative/configmaps").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let doc: serde_norway::Value = serde_norway::from_str(&text).expect("configmap parses");
    let example = doc["data"]["_example"].as_str().expect("configmap has data._example");
    example
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.split(" #").next().unwrap_or("").trim().trim_matches('"');
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// The `openAPIV3Schema` of a Knative CRD (`service.yaml`, ...), for its first served version.
pub fn crd_schema(file: &str) -> serde_json::Value {
    let path = reference_dir().join("knative/crds").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let doc: serde_norway::Value = serde_norway::from_str(&text).expect("CRD parses");
    let doc: serde_json::Value = serde_json::to_value(doc).expect("CRD is JSON");
    doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Validates `v` as the Kubernetes API server does a custom resource against its structural schema:
/// types (with `int-or-string`), required fields, enums, items, additionalProperties, and fields the
/// schema does not know (an error, as with `kubectl apply --validate=strict`, unless the schema
/// preserves unknown fields). `metadata` is only checked to be an object. Returns every problem with
/// its path.
pub fn validate_structural(schema: &serde_json::Value, v: &serde_json::Value) -> Vec<String> {
    let mut errs = Vec::new();
    check(schema, v, "", &mut errs);
    errs
}

fn check(schema: &serde_json::Value, v: &serde_json::Value, path: &str, errs: &mut Vec<String>) {
    use serde_json::Value;
    let at = if path.is_empty() { "<root>" } else { path };
    if v.is_null() && schema["nullable"] == true {
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(v.is_i64() || v.is_u64() || v.is_string()) {
            errs.push(format!("{at}: expected an integer or a string, got {v}"));
        }
        return;
    }
    let ty = schema["type"].as_str();
    let ok = match (ty, v) {
        (None, _) => true,
        (Some("object"), Value::Object(_)) => true,
        (Some("array"), Value::Array(_)) => true,
        (Some("string"), Value::String(_)) => true,
        (Some("boolean"), Value::Bool(_)) => true,
        (Some("integer"), Value::Number(n)) => n.is_i64() || n.is_u64(),
        (Some("number"), Value::Number(_)) => true,
        _ => false,
    };
    if !ok {
        errs.push(format!("{at}: expected {}, got {v}", ty.unwrap_or("?")));
        return;
    }
    if let Some(options) = schema["enum"].as_array() {
        if !options.contains(v) {
            errs.push(format!("{at}: {v} is not one of {options:?}"));
        }
    }
    match v {
        Value::Object(o) => {
            if path == ".metadata" {
                return;
            }
            for r in schema["required"].as_array().into_iter().flatten() {
                if let Some(k) = r.as_str() {
                    if !o.contains_key(k) {
                        errs.push(format!("{at}: missing required field {k:?}"));
                    }
                }
            }
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
            for (k, x) in o {
                let sub = format!("{path}.{k}");
                if let Some(p) = schema["properties"].get(k) {
                    check(p, x, &sub, errs);
                } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                    check(ap, x, &sub, errs);
                } else if !preserve && schema.get("properties").is_some() {
                    errs.push(format!("{sub}: unknown field"));
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                for (i, x) in items.iter().enumerate() {
                    check(item, x, &format!("{path}[{i}]"), errs);
                }
            }
        }
        _ => {}
    }
}

/// Validates `v` against `schema` with a JSON-Schema validator (draft 4, which OpenAPI v3's schema
/// objects extend; the `x-kubernetes-*` extensions are unknown keywords and ignored): a second
/// opinion beside `validate_structural`. Returns every problem with its path.
pub fn validate_json_schema(schema: &serde_json::Value, v: &serde_json::Value) -> Vec<String> {
    let validator = jsonschema::draft4::new(schema).unwrap_or_else(|e| panic!("the schema is not JSON Schema: {e}"));
    validator
        .iter_errors(v)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

//! OpenAPI v3 schemas of revisor's kinds, generated from the same types that decode and validate them:
//! the Rollout CRD (`revisor crd`) and the admin API's `/openapi/v3` documents both come from here.

use serde_json::{json, Value};

use crate::ObjectMeta;

/// One kind revisor serves, with what its schema and documents need to say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The resource name in paths (`services`).
    pub plural: &'static str,
    pub description: &'static str,
}

pub const SERVICE: KindInfo = KindInfo {
    group: "serving.knative.dev",
    version: "v1",
    kind: "Service",
    plural: "services",
    description: "A Knative Service: a template that stamps out immutable Revisions, and the split of its \
                  traffic between them.",
};
pub const REVISION: KindInfo = KindInfo {
    group: "serving.knative.dev",
    version: "v1",
    kind: "Revision",
    plural: "revisions",
    description: "An immutable snapshot of a Service's template: code and configuration that can take traffic.",
};
pub const CONFIGURATION: KindInfo = KindInfo {
    group: "serving.knative.dev",
    version: "v1",
    kind: "Configuration",
    plural: "configurations",
    description: "The latest template of a Service, and the Revisions created from it.",
};
pub const ROLLOUT: KindInfo = KindInfo {
    group: "revisor.dev",
    version: "v1alpha1",
    kind: "Rollout",
    plural: "rollouts",
    description: "A Rollout moves a Knative Service's traffic to its new revisions step by step, judged by \
                  analysis, with automatic rollback.",
};

/// Every kind, in the order documents list them.
pub const KINDS: [KindInfo; 4] = [SERVICE, REVISION, CONFIGURATION, ROLLOUT];

/// The schema of `T`, structural as Kubernetes requires: subschemas inlined, single `allOf` wrappers
/// (schemars' way of saying "nullable struct") merged into their node, unsigned and 32-bit formats
/// mapped to Kubernetes' `int64`/`double`, doc comments unwrapped to one line per paragraph.
pub fn of<T: schemars::JsonSchema>() -> Value {
    let settings = schemars::generate::SchemaSettings::openapi3().with(|s| {
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    let root = settings.into_generator().into_root_schema_for::<T>();
    let mut v = serde_json::to_value(root).expect("schemas serialize");
    if let Some(o) = v.as_object_mut() {
        o.remove("title");
        o.remove("definitions");
        o.remove("$defs");
    }
    structural(&mut v);
    v
}

fn structural(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        if let Some(Value::Array(all)) = o.get("allOf").cloned() {
            if all.len() == 1 {
                o.remove("allOf");
                if let Value::Object(inner) = &all[0] {
                    for (k, x) in inner {
                        o.entry(k.clone()).or_insert_with(|| x.clone());
                    }
                }
            }
        }
        if let Some(Value::String(d)) = o.get_mut("description") {
            // Doc comments wrap at the source's width; the schema keeps paragraphs only.
            *d = d
                .split("\n\n")
                .map(|p| p.split('\n').collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join("\n\n");
        }
        if let Some(Value::String(f)) = o.get("format") {
            if f.starts_with("uint") || f == "int32" || f == "double" || f == "float" {
                let int = f.starts_with("uint") || f == "int32";
                o.insert(
                    "format".into(),
                    Value::String(if int { "int64" } else { "double" }.into()),
                );
            }
        }
        for x in o.values_mut() {
            structural(x);
        }
    } else if let Some(a) = v.as_array_mut() {
        a.iter_mut().for_each(structural);
    }
}

/// The schema of a whole object of `kind`: `apiVersion`, `kind`, `metadata` (the full ObjectMeta, or
/// `{type: object}` as a CRD must have it when `crd`), `spec` and `status`.
pub fn object(kind: KindInfo, crd: bool) -> Value {
    let (spec, status) = match kind.kind {
        "Service" => (of::<crate::ServiceSpec>(), of::<crate::ServiceStatus>()),
        "Revision" => (of::<crate::podspec::RevisionSpec>(), of::<crate::RevisionStatus>()),
        "Configuration" => (
            of::<crate::configuration::ConfigurationSpec>(),
            of::<crate::ConfigurationStatus>(),
        ),
        _ => (of::<crate::RolloutSpec>(), of::<crate::RolloutStatus>()),
    };
    let metadata = if crd {
        json!({ "type": "object" })
    } else {
        let mut m = of::<ObjectMeta>();
        m["description"] =
            json!("Standard object's metadata: name, namespace, labels, annotations and what the server sets.");
        m
    };
    let string = |d: &str| json!({ "type": "string", "description": d });
    let mut schema = json!({
        "type": "object",
        "description": kind.description,
        "properties": {
            "apiVersion": string("The API group and version of this object."),
            "kind": string("The kind of this object."),
            "metadata": metadata,
            "spec": spec,
            "status": status,
        },
    });
    if kind == ROLLOUT {
        schema["required"] = json!(["spec"]);
    }
    schema
}

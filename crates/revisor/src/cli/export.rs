//! `revisor export`: Services (and their Rollouts) as manifests for `kubectl apply`, or as a Pulumi
//! program (YAML or Python) that declares the same Knative Service as a
//! `kubernetes:apiextensions.k8s.io:CustomResource`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use revisor_api::{cluster_manifest as clean, decode, read_documents, Resource};
use serde_json::{json, Map, Value};

use crate::client::{Client, ROLLOUTS, SERVING};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Knative Service (and Rollout) YAML for kubectl.
    Knative,
    /// A Pulumi YAML program.
    PulumiYaml,
    /// A Pulumi Python program (`__main__.py`).
    PulumiPython,
}

/// The objects to export: every document of the files, or the named service (with its Rollout) from
/// the server.
pub fn objects(client: Option<&Client>, files: &[PathBuf], service: Option<&str>, ns: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("{}: cannot read", f.display()))?;
        for doc in read_documents(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))? {
            let mut value = doc.value.clone();
            match decode(&doc.value) {
                Ok(Resource::Service(_)) | Ok(Resource::Rollout(_)) => {}
                Err(errs) => {
                    let lines: Vec<String> = errs.iter().map(|e| format!("  {e}")).collect();
                    bail!("{}: document {}:\n{}", f.display(), doc.index, lines.join("\n"));
                }
            }
            if value.pointer("/metadata/namespace").is_none_or(Value::is_null) {
                value["metadata"]["namespace"] = Value::String(ns.to_string());
            }
            out.push(clean(&value));
        }
    }
    if let Some(name) = service {
        let client = client.context("exporting a service by name needs the server")?;
        let svc: Value = client.get(&format!("{SERVING}/namespaces/{ns}/services/{name}"))?;
        out.push(clean(&svc));
        let rollouts: Value = client.get(&format!("{ROLLOUTS}/namespaces/{ns}/rollouts"))?;
        for r in rollouts["items"].as_array().into_iter().flatten() {
            if r.pointer("/spec/serviceRef/name").and_then(Value::as_str) == Some(name) {
                out.push(clean(r));
            }
        }
    }
    if out.is_empty() {
        bail!("nothing to export: give -f FILE or a SERVICE name");
    }
    Ok(out)
}

/// A Pulumi resource name for an object: `<kind>-<namespace>-<name>` in lower case.
fn resource_name(v: &Value) -> String {
    format!(
        "{}-{}-{}",
        v["kind"].as_str().unwrap_or("object").to_ascii_lowercase(),
        v.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default"),
        v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("unnamed")
    )
}

/// A JSON value as a Python literal.
pub fn python_literal(v: &Value, indent: usize) -> String {
    let pad = "    ".repeat(indent + 1);
    let end = "    ".repeat(indent);
    match v {
        Value::Null => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => serde_json::to_string(s).expect("strings serialize"),
        Value::Array(items) if items.is_empty() => "[]".into(),
        Value::Array(items) => {
            let inner: Vec<String> = items
                .iter()
                .map(|x| format!("{pad}{},", python_literal(x, indent + 1)))
                .collect();
            format!("[\n{}\n{end}]", inner.join("\n"))
        }
        Value::Object(o) if o.is_empty() => "{}".into(),
        Value::Object(o) => {
            let inner: Vec<String> = o
                .iter()
                .map(|(k, x)| {
                    format!(
                        "{pad}{}: {},",
                        serde_json::to_string(k).expect("keys serialize"),
                        python_literal(x, indent + 1)
                    )
                })
                .collect();
            format!("{{\n{}\n{end}}}", inner.join("\n"))
        }
    }
}

/// Renders the objects in a format.
pub fn render(objects: &[Value], format: Format) -> Result<String> {
    Ok(match format {
        Format::Knative => {
            let docs: Vec<String> = objects.iter().map(serde_norway::to_string).collect::<Result<_, _>>()?;
            docs.join("---\n")
        }
        Format::PulumiYaml => {
            let mut resources = Map::new();
            for o in objects {
                resources.insert(
                    resource_name(o),
                    json!({ "type": "kubernetes:apiextensions.k8s.io:CustomResource", "properties": o }),
                );
            }
            let program = json!({
                "name": "revisor-export",
                "runtime": "yaml",
                "description": "Knative Services exported by revisor",
                "resources": resources,
            });
            serde_norway::to_string(&program)?
        }
        Format::PulumiPython => {
            let mut out = String::from(
                "\"\"\"Knative Services exported by revisor, declared as Kubernetes custom resources.\"\"\"\n\nimport pulumi_kubernetes as k8s\n",
            );
            for o in objects {
                out.push_str(&format!(
                    "\nk8s.apiextensions.CustomResource(\n    {},\n    api_version={},\n    kind={},\n    metadata={},\n    spec={},\n)\n",
                    serde_json::to_string(&resource_name(o))?,
                    python_literal(&o["apiVersion"], 1),
                    python_literal(&o["kind"], 1),
                    python_literal(&o["metadata"], 1),
                    python_literal(&o["spec"], 1),
                ));
            }
            out
        }
    })
}

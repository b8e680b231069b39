//! `revisor apply -f`: every document is checked (locally, then by a server dry run) before any is written,
//! so a bad document anywhere changes nothing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use revisor_api::{decode, read_documents, Resource};
use serde_json::Value;

use crate::client::{Client, ROLLOUTS, SERVING};

/// One document to apply, with where it came from.
struct Item {
    origin: String,
    /// `service` or `rollout`.
    kind: &'static str,
    namespace: String,
    name: String,
    value: Value,
}

impl Item {
    fn path(&self) -> String {
        match self.kind {
            "rollout" => format!("{ROLLOUTS}/namespaces/{}/rollouts/{}", self.namespace, self.name),
            _ => format!("{SERVING}/namespaces/{}/services/{}", self.namespace, self.name),
        }
    }

    /// `service/NAME` or `rollout/NAME`.
    fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

fn read_file(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))
}

/// Reads and decodes every document: the readable ones, and a line for each problem.
fn load(files: &[PathBuf], ns_flag: Option<&str>) -> Result<(Vec<Item>, Vec<String>)> {
    let mut items = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let shown = if file == Path::new("-") {
            "<stdin>".to_string()
        } else {
            file.display().to_string()
        };
        let text = read_file(file)?;
        let docs = match read_documents(&text) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("{shown}: {e}"));
                continue;
            }
        };
        if docs.is_empty() {
            problems.push(format!("{shown}: no objects in the file"));
        }
        for doc in docs {
            let origin = format!("{shown}: document {}", doc.index);
            let decoded = decode(&doc.value).map(|r| match r {
                Resource::Service(s) => ("service", s.metadata.namespace.clone(), s.metadata.name.clone()),
                Resource::Rollout(r) => ("rollout", r.metadata.namespace.clone(), r.metadata.name.clone()),
            });
            match decoded {
                Ok((kind, ns, name)) => match namespace_of(&ns, ns_flag) {
                    Ok(namespace) => {
                        let mut value = doc.value;
                        value["metadata"]["namespace"] = Value::String(namespace.clone());
                        items.push(Item {
                            origin,
                            kind,
                            namespace,
                            name,
                            value,
                        });
                    }
                    Err(e) => problems.push(format!("{origin}: {e}")),
                },
                Err(errs) => {
                    let lines: Vec<String> = errs.iter().map(|e| format!("  {e}")).collect();
                    problems.push(format!("{origin}:\n{}", lines.join("\n")));
                }
            }
        }
    }
    Ok((items, problems))
}

fn namespace_of(in_manifest: &str, flag: Option<&str>) -> Result<String, String> {
    match (in_manifest, flag) {
        ("", None) => Ok(revisor_api::defaults::DEFAULT_NAMESPACE.into()),
        ("", Some(f)) => Ok(f.into()),
        (m, Some(f)) if m != f => Err(format!(
            "the namespace of the object ({m}) does not match the namespace given with -n ({f})"
        )),
        (m, _) => Ok(m.into()),
    }
}

/// How `revisor apply` applies.
pub struct Flags {
    pub dry_run: bool,
    pub wait: bool,
    pub force_conflicts: bool,
}

pub fn run(client: &Client, files: &[PathBuf], ns_flag: Option<&str>, flags: Flags) -> Result<()> {
    let Flags {
        dry_run,
        wait,
        force_conflicts: force,
    } = flags;
    let (items, mut problems) = load(files, ns_flag)?;
    let mut outcomes = Vec::new();
    for item in &items {
        match client.apply(&item.path(), &item.value, true, force) {
            Ok((outcome, _)) => outcomes.push(outcome),
            Err(e) => problems.push(format!("{} ({}): {e:#}", item.origin, item.id())),
        }
    }
    if !problems.is_empty() {
        bail!("nothing was applied:\n{}", problems.join("\n"));
    }
    if dry_run {
        for (item, outcome) in items.iter().zip(outcomes) {
            println!("{} {outcome} (dry run)", item.id());
        }
        return Ok(());
    }
    for item in &items {
        let (outcome, stored) = client
            .apply(&item.path(), &item.value, false, force)
            .with_context(|| format!("{} ({})", item.origin, item.id()))?;
        println!("{} {outcome}", item.id());
        if wait && outcome != "unchanged" && item.kind == "service" {
            wait_observed(client, item, &stored);
        }
    }
    Ok(())
}

/// Waits until the controller has observed the applied generation, so a following `get` sees its revisions.
fn wait_observed(client: &Client, item: &Item, stored: &Value) {
    let want = stored
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(v) = client.get::<Value>(&item.path()) {
            if v.pointer("/status/observedGeneration")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                >= want
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "warning: service/{} was stored, but the controller has not observed generation {want} yet",
        item.name
    );
}

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

/// How long `revisor apply` waits after writing a service.
pub enum Wait {
    /// Not at all (`--no-wait`).
    No,
    /// Until the controller has observed the new generation, so a following `get` sees its revisions
    /// (the default: quick, and what kubectl users expect of apply).
    Observed,
    /// Until the service is Ready, at most this long (`--wait`, as kn waits).
    Ready(Duration),
}

impl Wait {
    /// From `--wait [--timeout D]` and `--no-wait`.
    pub fn from_flags(wait: bool, no_wait: bool, timeout: &str) -> Result<Wait> {
        Ok(match (wait, no_wait) {
            (true, _) => Wait::Ready(
                revisor_api::units::parse_go_duration(timeout)
                    .map_err(|e| anyhow::anyhow!("--timeout {timeout:?}: {e}"))?,
            ),
            (false, true) => Wait::No,
            (false, false) => Wait::Observed,
        })
    }
}

/// How `revisor apply` applies.
pub struct Flags {
    pub dry_run: bool,
    pub wait: Wait,
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
    let mut written = Vec::new();
    for item in &items {
        let (outcome, stored) = client
            .apply(&item.path(), &item.value, false, force)
            .with_context(|| format!("{} ({})", item.origin, item.id()))?;
        println!("{} {outcome}", item.id());
        if item.kind == "service" {
            written.push((item, outcome, stored));
        }
    }
    match wait {
        Wait::No => Ok(()),
        Wait::Observed => {
            for (item, outcome, stored) in written {
                if outcome != "unchanged" {
                    wait_observed(client, item, &stored);
                }
            }
            Ok(())
        }
        Wait::Ready(timeout) => wait_ready(client, &written, Instant::now() + timeout),
    }
}

/// Waits until every written service is Ready at its applied generation and prints its URL; a service
/// that fails, or is still not Ready at the deadline, is an error with its revision's reason.
fn wait_ready(client: &Client, written: &[(&Item, String, Value)], deadline: Instant) -> Result<()> {
    let mut failures = Vec::new();
    for (item, _, stored) in written {
        let want = generation(stored);
        match wait_service_ready(client, item, want, deadline) {
            Ok(url) => println!("service/{} ready at {url}", item.name),
            Err(why) => failures.push(format!("service/{}: {why}", item.name)),
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    bail!("not ready:\n{}", failures.join("\n"))
}

fn generation(v: &Value) -> i64 {
    v.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0)
}

/// The `Ready` condition of an object: its status and `reason: message`.
fn ready_condition(v: &Value) -> Option<(String, String)> {
    let c = v
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    Some((s("status"), format!("{}: {}", s("reason"), s("message"))))
}

/// Polls one service until it is Ready (its URL) or failed or out of time (the reason, from the
/// service's latest created revision when it has one).
fn wait_service_ready(client: &Client, item: &Item, want: i64, deadline: Instant) -> Result<String, String> {
    loop {
        let svc: Value = client.get(&item.path()).map_err(|e| format!("{e:#}"))?;
        let observed = svc
            .pointer("/status/observedGeneration")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            >= want;
        let ready = ready_condition(&svc);
        if observed {
            match ready {
                Some((s, _)) if s == "True" => {
                    return Ok(svc
                        .pointer("/status/url")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string())
                }
                Some((s, why)) if s == "False" => {
                    return Err(format!(
                        "Ready=False, {}",
                        revision_reason(client, item, &svc).unwrap_or(why)
                    ))
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            let why = revision_reason(client, item, &svc)
                .or(ready.map(|(_, why)| why))
                .unwrap_or_else(|| "the controller has not observed it".into());
            return Err(format!("not Ready in time; {why}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `revision NAME: reason: message` of the service's latest created revision, when it is not Ready.
fn revision_reason(client: &Client, item: &Item, svc: &Value) -> Option<String> {
    let name = svc.pointer("/status/latestCreatedRevisionName")?.as_str()?;
    let rev: Value = client
        .get(&format!("{SERVING}/namespaces/{}/revisions/{name}", item.namespace))
        .ok()?;
    match ready_condition(&rev)? {
        (s, _) if s == "True" => None,
        (_, why) => Some(format!("revision {name}: {why}")),
    }
}

/// Waits until the controller has observed the applied generation, so a following `get` sees its revisions.
fn wait_observed(client: &Client, item: &Item, stored: &Value) {
    let want = generation(stored);
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

//! `revisor get services|revisions|rollouts`: kn's columns, or the objects as YAML or JSON; with
//! `--selector`, only the objects with those labels; with `--watch`, then each object again as it changes.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Result};
use revisor_api::{Revision, Service};
use serde_json::Value;

use super::{print_value, table, Kind, Output};
use crate::client::{Client, SERVING};
use crate::columns;

/// What `revisor get` lists.
pub struct Query<'a> {
    pub kind: Kind,
    /// Only this object.
    pub name: Option<&'a str>,
    /// `None`: every namespace.
    pub ns: Option<&'a str>,
    /// Labels an object must have, every one (`--selector`).
    pub selector: Vec<(String, String)>,
}

/// `--selector key=value[,key=value]` (`key==value` too), as Kubernetes reads equality selectors.
pub fn selector(text: Option<&str>) -> Result<Vec<(String, String)>> {
    let Some(text) = text else {
        return Ok(vec![]);
    };
    text.split(',')
        .map(str::trim)
        .filter(|term| !term.is_empty())
        .map(|term| match term.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !k.ends_with('!') => {
                Ok((k.trim().to_string(), v.trim_start_matches('=').trim().to_string()))
            }
            _ => bail!("--selector {term:?}: only key=value terms are supported"),
        })
        .collect()
}

fn has_labels(item: &Value, selector: &[(String, String)]) -> bool {
    selector
        .iter()
        .all(|(k, v)| item["metadata"]["labels"][k.as_str()].as_str() == Some(v.as_str()))
}

fn collection(kind: Kind, ns: Option<&str>) -> String {
    let (base, plural) = (kind.base(), kind.plural());
    match ns {
        Some(ns) => format!("{base}/namespaces/{ns}/{plural}"),
        None => format!("{base}/{plural}"),
    }
}

impl Query<'_> {
    /// The object, or the list of those the selector picks (the admin API filters only revisions by
    /// label, so the selector is applied here, to every kind).
    fn fetch(&self, client: &Client) -> Result<Value> {
        let mut value: Value = match (self.name, self.ns) {
            (Some(n), Some(ns)) => client.get(&format!("{}/{n}", collection(self.kind, Some(ns))))?,
            (Some(n), None) => bail!("a name ({n}) needs a namespace: drop --all-namespaces"),
            (None, ns) => client.get(&collection(self.kind, ns))?,
        };
        if let Some(Value::Array(items)) = value.get_mut("items") {
            items.retain(|item| has_labels(item, &self.selector));
        }
        Ok(value)
    }
}

/// The objects of a list, or the one object.
fn objects(value: Value) -> Vec<Value> {
    match value.get("items") {
        Some(Value::Array(items)) => items.clone(),
        _ => vec![value],
    }
}

pub fn run(client: &Client, q: &Query, output: Output, watch: bool) -> Result<()> {
    let value = q.fetch(client)?;
    if watch {
        return self::watch(client, q, output, objects(value));
    }
    if output != Output::Table {
        return print_value(&value, output);
    }
    let items = objects(value);
    if items.is_empty() {
        println!("No {} found.", q.kind.plural());
        return Ok(());
    }
    let (headers, rows) = rows(client, q.kind, &items, q.ns.is_none())?;
    table::print(&headers, &rows);
    Ok(())
}

/// The table's headers and one row per item, in order.
fn rows(client: &Client, kind: Kind, items: &[Value], all_ns: bool) -> Result<(Vec<&'static str>, Vec<Vec<String>>)> {
    match kind {
        Kind::Services => services_rows(items, all_ns),
        Kind::Revisions => revisions_rows(client, items, all_ns),
        Kind::Rollouts => super::rollout::rows(items, all_ns),
    }
}

/// `--watch`: `first` as `get` prints it, then, polling every second, each object that is new or has
/// changed (its resourceVersion, or a cell of its row other than AGE), until interrupted. A table keeps
/// the first table's columns; YAML and JSON print one object at a time.
fn watch(client: &Client, q: &Query, output: Output, first: Vec<Value>) -> Result<()> {
    let mut printed: HashMap<String, String> = HashMap::new();
    // The table's columns, once its header is out; whether "No ... found." or a YAML document is.
    let mut widths: Option<Vec<usize>> = None;
    let (mut said_none, mut said_yaml) = (false, false);
    let mut items = first;
    loop {
        let (headers, rows) = match output {
            Output::Table => rows(client, q.kind, &items, q.ns.is_none())?,
            _ => (vec![], vec![]),
        };
        let age = headers.iter().position(|h| *h == "AGE");
        let mut now = HashMap::new();
        let mut changed = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let meta = &item["metadata"];
            let key = format!(
                "{}/{}",
                meta["namespace"].as_str().unwrap_or(""),
                meta["name"].as_str().unwrap_or("")
            );
            let mut version = meta["resourceVersion"].to_string();
            if let Some(row) = rows.get(i) {
                for (j, cell) in row.iter().enumerate() {
                    if Some(j) != age {
                        version.push('\t');
                        version.push_str(cell);
                    }
                }
            }
            if printed.get(&key) != Some(&version) {
                changed.push(i);
            }
            now.insert(key, version);
        }
        printed = now;
        let mut out = std::io::stdout().lock();
        if output == Output::Table {
            if items.is_empty() && widths.is_none() && !said_none {
                writeln!(out, "No {} found.", q.kind.plural())?;
                said_none = true;
            }
            let changed: Vec<Vec<String>> = changed.iter().map(|&i| rows[i].clone()).collect();
            if widths.is_none() && !changed.is_empty() {
                let w = table::widths(&headers, &changed);
                out.write_all(table::line(&w, &headers).as_bytes())?;
                widths = Some(w);
            }
            for row in &changed {
                out.write_all(table::line(widths.as_deref().unwrap_or_default(), row).as_bytes())?;
            }
        } else {
            for &i in &changed {
                if output == Output::Json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&items[i])?)?;
                } else {
                    if said_yaml {
                        writeln!(out, "---")?;
                    }
                    write!(out, "{}", serde_norway::to_string(&items[i])?)?;
                    said_yaml = true;
                }
            }
        }
        out.flush()?;
        drop(out);
        std::thread::sleep(Duration::from_secs(1));
        items = objects(q.fetch(client)?);
    }
}

/// `3 OK / 3` as kn prints it.
fn services_rows(items: &[Value], all_ns: bool) -> Result<(Vec<&'static str>, Vec<Vec<String>>)> {
    let mut rows = Vec::new();
    for v in items {
        let s: Service = serde_json::from_value(v.clone())?;
        let mut row = columns::service_cells(&s);
        if all_ns {
            row.insert(0, s.metadata.namespace.clone());
        }
        rows.push(row);
    }
    Ok((headers(&columns::SERVICE, all_ns), rows))
}

fn headers(columns: &[&'static str], all_ns: bool) -> Vec<&'static str> {
    let mut headers = columns.to_vec();
    if all_ns {
        headers.insert(0, "NAMESPACE");
    }
    headers
}

fn revisions_rows(client: &Client, items: &[Value], all_ns: bool) -> Result<(Vec<&'static str>, Vec<Vec<String>>)> {
    let mut services: std::collections::BTreeMap<(String, String), Option<Service>> = Default::default();
    let mut rows = Vec::new();
    for v in items {
        let r: Revision = serde_json::from_value(v.clone())?;
        let svc_name = r.service_name().unwrap_or_default().to_string();
        let key = (r.metadata.namespace.clone(), svc_name.clone());
        if !services.contains_key(&key) {
            let svc = client.get_opt::<Service>(&format!("{SERVING}/namespaces/{}/services/{svc_name}", key.0))?;
            services.insert(key.clone(), svc);
        }
        let mut row = columns::revision_cells(&r, services[&key].as_ref());
        if all_ns {
            row.insert(0, r.metadata.namespace.clone());
        }
        rows.push(row);
    }
    Ok((headers(&columns::REVISION, all_ns), rows))
}

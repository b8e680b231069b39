//! `revisor get services|revisions|rollouts`: kn's columns, or the objects as YAML or JSON.

use anyhow::Result;
use revisor_api::{ConditionStatus, Revision, Service};
use serde_json::Value;

use super::{print_value, table, Kind, Output};
use crate::client::{Client, SERVING};

fn collection(kind: Kind, ns: Option<&str>) -> String {
    let (base, plural) = (kind.base(), kind.plural());
    match ns {
        Some(ns) => format!("{base}/namespaces/{ns}/{plural}"),
        None => format!("{base}/{plural}"),
    }
}

pub fn run(client: &Client, kind: Kind, name: Option<&str>, ns: Option<&str>, output: Output) -> Result<()> {
    let value: Value = match (name, ns) {
        (Some(n), Some(ns)) => client.get(&format!("{}/{n}", collection(kind, Some(ns))))?,
        (Some(n), None) => anyhow::bail!("a name ({n}) needs a namespace: drop --all-namespaces"),
        (None, ns) => client.get(&collection(kind, ns))?,
    };
    if output != Output::Table {
        return print_value(&value, output);
    }
    let items: Vec<Value> = match value.get("items") {
        Some(Value::Array(items)) => items.clone(),
        _ => vec![value],
    };
    let all_ns = ns.is_none();
    match kind {
        Kind::Services => services_table(items, all_ns),
        Kind::Revisions => revisions_table(client, items, all_ns),
        Kind::Rollouts => super::rollout::table(items, all_ns),
    }
}

/// `3 OK / 3` as kn prints it.
fn conditions_cell(conds: &[revisor_api::Condition]) -> String {
    let ok = conds.iter().filter(|c| c.status == ConditionStatus::True).count();
    format!("{ok} OK / {}", conds.len())
}

fn ready_cells(conds: &[revisor_api::Condition]) -> (String, String) {
    match conds.iter().find(|c| c.type_ == "Ready") {
        Some(c) => (c.status.as_str().to_string(), c.reason.clone().unwrap_or_default()),
        None => ("Unknown".into(), String::new()),
    }
}

fn services_table(items: Vec<Value>, all_ns: bool) -> Result<()> {
    if items.is_empty() {
        println!("No services found.");
        return Ok(());
    }
    let mut rows = Vec::new();
    for v in items {
        let s: Service = serde_json::from_value(v)?;
        let st = s.status();
        let (ready, reason) = ready_cells(&st.conditions);
        let mut row = vec![
            s.metadata.name.clone(),
            st.url.unwrap_or_default(),
            st.latest_created_revision_name.unwrap_or_default(),
            table::age(s.metadata.creation_timestamp),
            conditions_cell(&st.conditions),
            ready,
            reason,
        ];
        if all_ns {
            row.insert(0, s.metadata.namespace.clone());
        }
        rows.push(row);
    }
    let mut headers = vec!["NAME", "URL", "LATEST", "AGE", "CONDITIONS", "READY", "REASON"];
    if all_ns {
        headers.insert(0, "NAMESPACE");
    }
    table::print(&headers, &rows);
    Ok(())
}

/// Ready replicas over desired ones, like kubectl's READY column of a Deployment (`1/3`).
fn replicas_cell(actual: Option<i64>, desired: Option<i64>) -> String {
    match (actual, desired) {
        (None, None) => String::new(),
        (a, d) => format!("{}/{}", a.unwrap_or(0), d.unwrap_or(0)),
    }
}

fn revisions_table(client: &Client, items: Vec<Value>, all_ns: bool) -> Result<()> {
    if items.is_empty() {
        println!("No revisions found.");
        return Ok(());
    }
    let mut services: std::collections::BTreeMap<(String, String), Option<Service>> = Default::default();
    let mut rows = Vec::new();
    for v in items {
        let r: Revision = serde_json::from_value(v)?;
        let svc_name = r.service_name().unwrap_or_default().to_string();
        let key = (r.metadata.namespace.clone(), svc_name.clone());
        if !services.contains_key(&key) {
            let svc = client.get_opt::<Service>(&format!("{SERVING}/namespaces/{}/services/{svc_name}", key.0))?;
            services.insert(key.clone(), svc);
        }
        let status_traffic = services[&key].as_ref().map(|s| s.status().traffic).unwrap_or_default();
        let mine: Vec<_> = status_traffic
            .iter()
            .filter(|t| t.revision_name.as_deref() == Some(&r.metadata.name))
            .collect();
        let percent: i64 = mine.iter().map(|t| t.percent()).sum();
        let tags: Vec<&str> = mine.iter().filter_map(|t| t.tag()).collect();
        let st = r.status();
        let (ready, reason) = ready_cells(&st.conditions);
        let mut row = vec![
            r.metadata.name.clone(),
            svc_name,
            if mine.is_empty() {
                String::new()
            } else {
                format!("{percent}%")
            },
            tags.join(","),
            r.configuration_generation().map(|g| g.to_string()).unwrap_or_default(),
            replicas_cell(st.actual_replicas, st.desired_replicas),
            table::age(r.metadata.creation_timestamp),
            conditions_cell(&st.conditions),
            ready,
            reason,
        ];
        if all_ns {
            row.insert(0, r.metadata.namespace.clone());
        }
        rows.push(row);
    }
    let mut headers = vec![
        "NAME",
        "SERVICE",
        "TRAFFIC",
        "TAGS",
        "GENERATION",
        "REPLICAS",
        "AGE",
        "CONDITIONS",
        "READY",
        "REASON",
    ];
    if all_ns {
        headers.insert(0, "NAMESPACE");
    }
    table::print(&headers, &rows);
    Ok(())
}

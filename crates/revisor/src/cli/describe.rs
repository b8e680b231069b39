//! `revisor describe` and `revisor events`: one object in detail, and its event log.

use anyhow::Result;
use revisor_api::{Condition, Revision, Service};
use serde_json::Value;

use super::{print_value, table, Kind, ObjectOutput, Output};
use crate::client::{Client, SERVING};

/// Describes the object, or with `output` prints it as YAML or JSON.
pub fn run(client: &Client, kind: Kind, name: &str, ns: &str, output: Option<ObjectOutput>) -> Result<()> {
    if let Some(output) = output {
        let v: Value = client.get(&format!("{}/namespaces/{ns}/{}/{name}", kind.base(), kind.plural()))?;
        return print_value(&v, output.into());
    }
    match kind {
        Kind::Services => service(client, name, ns),
        Kind::Revisions => revision(client, name, ns),
        Kind::Rollouts => {
            let r: revisor_api::Rollout =
                client.get(&format!("{}/namespaces/{ns}/rollouts/{name}", crate::client::ROLLOUTS))?;
            print!("{}", super::rollout::status_text(&r));
            Ok(())
        }
    }
}

fn conditions(conds: &[Condition]) {
    println!("Conditions:");
    let rows: Vec<Vec<String>> = conds
        .iter()
        .map(|c| {
            let ok = match c.status {
                revisor_api::ConditionStatus::True => "++",
                revisor_api::ConditionStatus::False => "!!",
                revisor_api::ConditionStatus::Unknown => "??",
            };
            vec![
                format!("  {ok}"),
                c.type_.clone(),
                crate::columns::age(c.last_transition_time),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table::print(&["  OK", "TYPE", "AGE", "REASON", "MESSAGE"], &rows);
}

fn service(client: &Client, name: &str, ns: &str) -> Result<()> {
    let s: Service = client.get(&format!("{SERVING}/namespaces/{ns}/services/{name}"))?;
    let st = s.status();
    println!("Name:        {}", s.metadata.name);
    println!("Namespace:   {}", s.metadata.namespace);
    println!("URL:         {}", st.url.clone().unwrap_or_default());
    println!("Age:         {}", crate::columns::age(s.metadata.creation_timestamp));
    println!(
        "Generation:  {} (observed {})",
        s.generation(),
        st.observed_generation.unwrap_or(0)
    );
    println!(
        "Latest:      {} (ready: {})",
        st.latest_created_revision_name.clone().unwrap_or_default(),
        st.latest_ready_revision_name.clone().unwrap_or_else(|| "none".into())
    );
    println!();
    println!("Traffic (spec):");
    for t in s.spec.traffic() {
        println!("{}", super::table::target_line(t));
    }
    println!("Traffic (programmed):");
    if st.traffic.is_empty() {
        println!("  none yet");
    }
    for t in &st.traffic {
        let latest = if t.is_latest() { "@latest " } else { "" };
        let url = t.url.as_deref().map(|u| format!("  {u}")).unwrap_or_default();
        println!(
            "  {:>4}%  {latest}{}{}{url}",
            t.percent(),
            t.revision_name.clone().unwrap_or_default(),
            t.tag().map(|x| format!(" #{x}")).unwrap_or_default()
        );
    }
    println!();
    let revs: Value = client.get(&format!(
        "{SERVING}/namespaces/{ns}/revisions?labelSelector=serving.knative.dev/service={name}"
    ))?;
    println!("Revisions:");
    for r in revs["items"].as_array().into_iter().flatten() {
        let r: Revision = serde_json::from_value(r.clone())?;
        let image = r
            .spec
            .serving_container()
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        println!(
            "  {}  [{}]  {}  {}",
            r.metadata.name,
            r.configuration_generation().unwrap_or(0),
            crate::columns::age(r.metadata.creation_timestamp),
            image
        );
    }
    println!();
    conditions(&st.conditions);
    Ok(())
}

fn revision(client: &Client, name: &str, ns: &str) -> Result<()> {
    let r: Revision = client.get(&format!("{SERVING}/namespaces/{ns}/revisions/{name}"))?;
    println!("Name:        {}", r.metadata.name);
    println!("Namespace:   {}", r.metadata.namespace);
    println!("Service:     {}", r.service_name().unwrap_or_default());
    println!("Generation:  {}", r.configuration_generation().unwrap_or(0));
    println!("Age:         {}", crate::columns::age(r.metadata.creation_timestamp));
    for c in r.spec.containers() {
        println!(
            "Container:   {} {}",
            c.name.clone().unwrap_or_default(),
            c.image.clone().unwrap_or_default()
        );
    }
    println!("Concurrency: {}", r.spec.container_concurrency.unwrap_or(0));
    println!("Timeout:     {}s", r.spec.timeout_seconds.unwrap_or(0));
    println!();
    conditions(&r.status().conditions);
    Ok(())
}

pub fn events(client: &Client, service: &str, ns: &str, output: Output) -> Result<()> {
    let v: Value = client.get(&format!("{SERVING}/namespaces/{ns}/services/{service}/events"))?;
    if output != Output::Table {
        return print_value(&v, output);
    }
    let items = v["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("No events found.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            let time = e["time"].as_str().and_then(|t| t.parse().ok());
            vec![
                crate::columns::age(time),
                s("type"),
                s("reason"),
                s("object"),
                s("message"),
            ]
        })
        .collect();
    table::print(&["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"], &rows);
    Ok(())
}

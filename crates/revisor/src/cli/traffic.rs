//! `revisor traffic`: kn's traffic arithmetic on the stored spec, written back with optimistic concurrency.

use anyhow::{bail, Result};
use revisor_api::{Revision, Service};
use revisor_traffic::{compute, TrafficEdit};
use serde_json::Value;

use crate::client::{ApiFailure, Client, SERVING};

pub fn run(client: &Client, service: &str, ns: &str, edit: TrafficEdit) -> Result<()> {
    if edit.traffic.is_empty() && edit.tags.is_empty() && edit.untags.is_empty() {
        bail!("nothing to change: give --traffic, --tag or --untag");
    }
    let path = format!("{SERVING}/namespaces/{ns}/services/{service}");
    // A concurrent writer makes the PUT conflict; read again and retry a few times, as kn does.
    for _ in 0..5 {
        let svc: Service = client.get(&path)?;
        let revs: Value = client.get(&format!(
            "{SERVING}/namespaces/{ns}/revisions?labelSelector=serving.knative.dev/service={service}"
        ))?;
        let names: Vec<String> = revs["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| serde_json::from_value::<Revision>(r.clone()).ok())
            .map(|r| r.metadata.name)
            .collect();
        let traffic = compute(svc.spec.traffic(), &edit, &names).map_err(anyhow::Error::msg)?;
        let mut next = svc.clone();
        next.spec.traffic = Some(traffic);
        next.status = None;
        // As its own field manager, so a later `revisor apply` of a manifest without traffic keeps it.
        match client.put(
            &format!("{path}?fieldManager=revisor-traffic"),
            &serde_json::to_value(&next)?,
        ) {
            Ok(_) => {
                println!("service/{service} traffic updated");
                for t in next.spec.traffic() {
                    println!("{}", super::table::target_line(t));
                }
                return Ok(());
            }
            Err(e) if e.downcast_ref::<ApiFailure>().is_some_and(|f| f.reason == "Conflict") => continue,
            Err(e) => return Err(e),
        }
    }
    bail!("service/{service} kept changing under the update; try again")
}

//! Pure status computation: from a Service, its Configuration and its Revisions to Knative's status.

use chrono::{DateTime, Utc};
use revisor_api::meta::Conditions;
use revisor_api::{Condition, ConditionStatus, Configuration, ConfigurationStatus, Revision, Service, ServiceStatus};
use revisor_traffic::{resolve, RevisionState};

use crate::ControllerConfig;

/// The Ready condition of a revision, Unknown when it has none.
pub fn revision_ready(rev: &Revision) -> Condition {
    rev.status
        .as_ref()
        .and_then(|s| s.conditions.get_condition("Ready").cloned())
        .unwrap_or_else(|| Condition::new("Ready", ConditionStatus::Unknown, None, None))
}

/// Whether traffic can go to a revision: Ready, as in Knative. A ready revision at zero (`Active=False`)
/// stays routable: the gateway holds its requests while the autoscaler brings a replica back.
fn routable(rev: &Revision) -> ConditionStatus {
    revision_ready(rev).status
}

/// The configuration's status: latest created, latest ready (which only moves to a ready latest
/// revision, as in Knative), and ConfigurationsReady's verdict.
pub fn configuration_status(
    cfg: &Configuration,
    revisions: &[Revision],
    latest_created: &str,
    now: DateTime<Utc>,
) -> ConfigurationStatus {
    let mut st = cfg.status();
    st.observed_generation = cfg.metadata.generation;
    st.latest_created_revision_name = Some(latest_created.to_string());
    let find = |name: &str| revisions.iter().find(|r| r.metadata.name == name);
    if st
        .latest_ready_revision_name
        .as_deref()
        .is_some_and(|n| find(n).is_none())
    {
        st.latest_ready_revision_name = None;
    }
    let ready = find(latest_created).map(revision_ready);
    let cond = match &ready {
        Some(c) if c.status == ConditionStatus::True => {
            st.latest_ready_revision_name = Some(latest_created.to_string());
            Condition::truthy("Ready")
        }
        Some(c) if c.status == ConditionStatus::False => Condition::new(
            "Ready",
            ConditionStatus::False,
            Some("RevisionFailed"),
            Some(format!(
                "Revision {latest_created:?} failed with message: {}.",
                c.message.clone().unwrap_or_default()
            )),
        ),
        Some(c) => Condition::new(
            "Ready",
            ConditionStatus::Unknown,
            c.reason.as_deref(),
            c.message.clone(),
        ),
        None => Condition::new(
            "Ready",
            ConditionStatus::Unknown,
            Some("RevisionMissing"),
            Some(format!("Revision {latest_created:?} is being created.")),
        ),
    };
    st.conditions.set_condition(cond, now);
    st
}

/// The Service's status from its configuration's status and the revisions: RoutesReady from resolving
/// traffic, ConfigurationsReady from the configuration, Ready from both. When the route cannot be
/// resolved, `status.traffic` keeps the last programmed split.
pub fn service_status(
    svc: &Service,
    cfg: &ConfigurationStatus,
    revisions: &[Revision],
    config: &ControllerConfig,
    gradual: Option<&revisor_traffic::gradual::Gradual>,
    now: DateTime<Utc>,
) -> ServiceStatus {
    let mut st = svc.status();
    let (name, ns) = (&svc.metadata.name, &svc.metadata.namespace);
    st.observed_generation = svc.metadata.generation;
    st.latest_created_revision_name = cfg.latest_created_revision_name.clone();
    st.latest_ready_revision_name = cfg.latest_ready_revision_name.clone();
    st.url = Some(config.url(name, ns));
    st.address = Some(serde_json::json!({ "url": config.url(name, ns) }));
    let cfg_ready = cfg
        .conditions
        .get_condition("Ready")
        .cloned()
        .unwrap_or_else(|| Condition::new("Ready", ConditionStatus::Unknown, None, None));
    let configurations_ready = Condition {
        type_: "ConfigurationsReady".into(),
        ..cfg_ready
    };
    let states: Vec<RevisionState> = revisions
        .iter()
        .map(|r| RevisionState {
            name: r.metadata.name.clone(),
            ready: routable(r),
        })
        .collect();
    let latest_failed = configurations_ready.status == ConditionStatus::False;
    let routes_ready = match resolve(
        name,
        svc.spec.traffic(),
        cfg.latest_ready_revision_name.as_deref(),
        latest_failed,
        &states,
    ) {
        Ok(mut targets) => {
            if let Some(g) = gradual {
                // During a gradual rollout the untagged latestRevision targets become the revisions
                // the traffic is moving between, as Knative reports them.
                let keep: Vec<_> = targets
                    .drain(..)
                    .filter(|t| !(t.is_latest() && t.tag().is_none()))
                    .collect();
                targets = g
                    .revisions
                    .iter()
                    .map(|(rev, percent)| revisor_api::TrafficTarget {
                        revision_name: Some(rev.clone()),
                        latest_revision: Some(true),
                        percent: Some(*percent as i64),
                        ..Default::default()
                    })
                    .chain(keep)
                    .collect();
            }
            for t in &mut targets {
                t.url = t.tag().map(|tag| config.url(&format!("{tag}-{name}"), ns));
            }
            st.traffic = targets;
            Condition::truthy("RoutesReady")
        }
        Err(p) => Condition::new("RoutesReady", p.status, Some(p.reason), Some(p.message)),
    };
    let ready = combine(&[&configurations_ready, &routes_ready]);
    st.conditions.set_condition(configurations_ready, now);
    st.conditions.set_condition(routes_ready, now);
    st.conditions.set_condition(ready, now);
    st
}

/// Ready is False if any part is False, Unknown if any is Unknown, else True; it takes the reason of the
/// first part that is not True.
fn combine(parts: &[&Condition]) -> Condition {
    let worst = parts
        .iter()
        .find(|c| c.status == ConditionStatus::False)
        .or_else(|| parts.iter().find(|c| c.status == ConditionStatus::Unknown));
    match worst {
        Some(c) => Condition::new("Ready", c.status, c.reason.as_deref(), c.message.clone()),
        None => Condition::truthy("Ready"),
    }
}

/// Compares statuses ignoring lastTransitionTime, so that a reconcile that changes nothing writes nothing.
pub fn same_ignoring_times<T: serde::Serialize>(a: &T, b: &T) -> bool {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                o.remove("lastTransitionTime");
                o.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let (mut a, mut b) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    strip(&mut a);
    strip(&mut b);
    a == b
}

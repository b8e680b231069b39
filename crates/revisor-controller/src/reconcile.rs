//! The Service reconciler: one store transaction that brings a Service's Configuration, Revisions and
//! status up to date. Writes only what changed, so a reconcile that finds nothing to do writes nothing.

use chrono::{DateTime, Utc};
use revisor_api::meta::Conditions;
use revisor_api::{Condition, ConditionStatus, Configuration, Revision, Service};
use revisor_store::{Event, StoreError, Tx};

use revisor_api::annotations::ROLLOUT_DURATION;
use revisor_api::units::parse_go_duration;
use revisor_traffic::gradual::{self, Gradual};

use crate::resources::{desired_revision_name, make_configuration, make_revision};
use crate::status::{configuration_status, same_ignoring_times, service_status};
use crate::ControllerConfig;

/// The revisions of one service, oldest configuration generation first.
pub fn revisions_of(tx: &Tx, namespace: &str, service: &str) -> Result<Vec<Revision>, StoreError> {
    // A service's revisions are named `<service>-...` (validation requires the prefix of a name
    // brought by the template too), so only that range of keys is read.
    let mut revs: Vec<Revision> = tx
        .list_prefixed::<Revision>(namespace, &format!("{service}-"))?
        .into_iter()
        .filter(|r| r.service_name() == Some(service))
        .collect();
    revs.sort_by_key(|r| (r.configuration_generation().unwrap_or(0), r.metadata.name.clone()));
    Ok(revs)
}

/// Reconciles one Service. A missing Service is nothing to do.
pub fn reconcile_service(
    tx: &mut Tx,
    namespace: &str,
    name: &str,
    config: &ControllerConfig,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let Some(svc) = tx.get::<Service>(namespace, name)? else {
        return Ok(());
    };
    let cfg = ensure_configuration(tx, &svc)?;
    let mut revisions = revisions_of(tx, namespace, name)?;
    let desired = desired_revision_name(&cfg);
    let mut cfg_status = if revisions.iter().any(|r| r.metadata.name == desired) {
        configuration_status(&cfg, &revisions, &desired, now)
    } else {
        match create_revision(tx, &svc, &cfg, &desired)? {
            Ok(rev) => {
                revisions.push(rev);
                configuration_status(&cfg, &revisions, &desired, now)
            }
            Err(message) => {
                let mut st = configuration_status(&cfg, &revisions, &desired, now);
                let failed = Condition::new("Ready", ConditionStatus::False, Some("RevisionFailed"), Some(message));
                st.conditions.set_condition(failed, now);
                st
            }
        }
    };
    if !same_ignoring_times(&cfg.status, &Some(cfg_status.clone())) {
        let mut updated = cfg.clone();
        updated.status = Some(cfg_status.clone());
        cfg_status = tx.update(updated)?.status.unwrap_or_default();
    }
    let gradual = gradual_rollout(tx, &svc, &cfg_status, config, now)?;
    let status = service_status(&svc, &cfg_status, &revisions, config, gradual.as_ref(), now);
    mark_routing_state(tx, &revisions, &status, now)?;
    if !same_ignoring_times(&svc.status, &Some(status.clone())) {
        record_transitions(tx, &svc, &status)?;
        let mut updated = svc.clone();
        updated.status = Some(status);
        tx.update(updated)?;
    }
    Ok(())
}

/// The Configuration for the Service's current template; its generation bumps when the template changes.
/// Where a Configuration keeps its gradual rollout's state (Knative keeps it on the Route).
pub const GRADUAL_STATE: &str = "serving.knative.dev/rollout";

/// Steps the service's gradual rollout (Knative's `rollout-duration`) for its untagged
/// `latestRevision` targets and keeps the state on the Configuration. `None` when nothing is rolling.
fn gradual_rollout(
    tx: &mut Tx,
    svc: &Service,
    cfg_status: &revisor_api::ConfigurationStatus,
    config: &ControllerConfig,
    now: DateTime<Utc>,
) -> Result<Option<Gradual>, StoreError> {
    let duration = svc
        .metadata
        .annotation(ROLLOUT_DURATION)
        .and_then(|v| parse_go_duration(v).ok())
        .unwrap_or(config.rollout_duration);
    let percent: i64 = svc
        .spec
        .traffic()
        .iter()
        .filter(|t| t.is_latest() && t.tag().is_none())
        .map(|t| t.percent())
        .sum();
    let (Some(goal), true) = (cfg_status.latest_ready_revision_name.as_deref(), percent > 0) else {
        return Ok(None);
    };
    let Some(mut cfg) = tx.get::<Configuration>(&svc.metadata.namespace, &svc.metadata.name)? else {
        return Ok(None);
    };
    let prev: Option<Gradual> = cfg
        .metadata
        .annotation(GRADUAL_STATE)
        .and_then(|v| serde_json::from_str(v).ok());
    let next = gradual::advance(
        prev.as_ref(),
        goal,
        percent.clamp(0, 100) as u32,
        duration,
        now.timestamp_millis(),
    );
    if prev.as_ref() != Some(&next) {
        if next.in_progress()
            && prev
                .as_ref()
                .is_none_or(|p| p.revisions.last() != next.revisions.last())
        {
            tx.record(
                &svc.metadata.namespace,
                &svc.metadata.name,
                &Event::normal(
                    format!("Service/{}", svc.metadata.name),
                    "GradualRollout",
                    format!(
                        "moving traffic to {goal} over {duration:?}: 1% now, then {}% every {} ms",
                        next.step_size, next.step_ms
                    ),
                ),
            )?;
        }
        cfg.metadata.annotations.get_or_insert_with(Default::default).insert(
            GRADUAL_STATE.to_string(),
            serde_json::to_string(&next).unwrap_or_default(),
        );
        tx.update(cfg)?;
    }
    Ok(next.in_progress().then_some(next))
}

/// Knative's routing-state label on each revision (`active` while the route references it, else
/// `reserve`), with the time it last changed: what garbage collection judges inactivity by.
fn mark_routing_state(
    tx: &mut Tx,
    revisions: &[Revision],
    status: &revisor_api::ServiceStatus,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    use crate::gc::{ROUTING_STATE, ROUTING_STATE_MODIFIED};
    for rev in revisions {
        let routed = status
            .traffic
            .iter()
            .any(|t| t.revision_name.as_deref() == Some(rev.metadata.name.as_str()));
        let state = if routed { "active" } else { "reserve" };
        if rev.metadata.label(ROUTING_STATE) == Some(state) {
            continue;
        }
        let Some(mut current) = tx.get::<Revision>(&rev.metadata.namespace, &rev.metadata.name)? else {
            continue;
        };
        current.metadata.set_label(ROUTING_STATE, state);
        current
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ROUTING_STATE_MODIFIED.to_string(), now.to_rfc3339());
        tx.update(current)?;
    }
    Ok(())
}

fn ensure_configuration(tx: &mut Tx, svc: &Service) -> Result<Configuration, StoreError> {
    let (ns, name) = (&svc.metadata.namespace, &svc.metadata.name);
    match tx.get::<Configuration>(ns, name)? {
        None => tx.create(make_configuration(svc, 1)),
        Some(cfg)
            if cfg.spec.template != svc.spec.template
                || cfg.metadata.labels != make_configuration(svc, 1).metadata.labels =>
        {
            let bump = i64::from(cfg.spec.template != svc.spec.template);
            let mut next = make_configuration(svc, cfg.metadata.generation.unwrap_or(1) + bump);
            next.metadata.resource_version = cfg.metadata.resource_version.clone();
            if let Some(state) = cfg.metadata.annotation(GRADUAL_STATE) {
                next.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(GRADUAL_STATE.to_string(), state.to_string());
            }
            next.status = cfg.status.clone();
            tx.update(next)
        }
        Some(cfg) => Ok(cfg),
    }
}

/// Stamps the revision for the configuration's generation, unless its name is taken by another service.
fn create_revision(
    tx: &mut Tx,
    svc: &Service,
    cfg: &Configuration,
    name: &str,
) -> Result<Result<Revision, String>, StoreError> {
    let ns = &svc.metadata.namespace;
    if let Some(other) = tx.get::<Revision>(ns, name)? {
        return Ok(Err(format!(
            "Revision creation failed with message: revision {name:?} already exists and belongs to service {:?}",
            other.service_name().unwrap_or("?")
        )));
    }
    let rev = tx.create(make_revision(svc, cfg))?;
    let gen = cfg.metadata.generation.unwrap_or(1);
    tx.record(
        ns,
        &svc.metadata.name,
        &Event::normal(
            format!("Revision/{name}"),
            "Created",
            format!("Created Revision {name:?} (configuration generation {gen})"),
        ),
    )?;
    Ok(Ok(rev))
}

/// Records an event when the Service's Ready condition changes.
fn record_transitions(tx: &mut Tx, svc: &Service, new: &revisor_api::ServiceStatus) -> Result<(), StoreError> {
    let old = svc
        .status
        .as_ref()
        .and_then(|s| s.conditions.get_condition("Ready").cloned());
    let Some(ready) = new.conditions.get_condition("Ready") else {
        return Ok(());
    };
    let changed =
        old.as_ref().map(|o| (o.status, &o.reason, &o.message)) != Some((ready.status, &ready.reason, &ready.message));
    if !changed {
        return Ok(());
    }
    let object = format!("Service/{}", svc.metadata.name);
    let reason = ready.reason.clone().unwrap_or_else(|| "Ready".into());
    let message = ready.message.clone().unwrap_or_else(|| "the service is ready".into());
    let event = match ready.status {
        ConditionStatus::False => Event::warning(object, &reason, message),
        _ => Event::normal(object, &reason, message),
    };
    tx.record(&svc.metadata.namespace, &svc.metadata.name, &event)
}

//! Admission that needs stored state: create-or-update of a Service (server-side apply), and deletes.
//!
//! Stateless checks (schema, defaults, field rules) happen before, in revisor-api; these add the rules
//! that compare against what is stored, all in the same transaction as the write.

use revisor_api::rollout::REQUESTS;
use revisor_api::validate::validate_service_update;
use revisor_api::{Configuration, FieldErrors, Revision, Rollout, Service};
use revisor_store::{Event, Store, StoreError, Tx};

use crate::reconcile::revisions_of;

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}

impl ApplyOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
        }
    }
}

/// Which writes a request allows: apply creates or updates, create only creates, replace only updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    Apply,
    Create,
    Replace,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Invalid(FieldErrors),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Internal: aborts a dry run's transaction after every check passed.
    #[error("dry run")]
    DryRun(ApplyOutcome, Box<Service>),
    #[error("dry run")]
    DryRunRollout(ApplyOutcome, Box<Rollout>),
}

/// Creates or updates a Service that revisor-api already admitted (decoded, defaulted, validated).
/// The generation bumps only when the spec changes; labels and annotations are replaced.
/// A dry run makes every check and reports the outcome, but writes nothing.
pub fn apply_service(
    store: &Store,
    svc: Service,
    mode: ApplyMode,
    dry_run: bool,
) -> Result<(ApplyOutcome, Service), ApplyError> {
    let result = store.write(|tx| {
        let (ns, name) = (svc.metadata.namespace.clone(), svc.metadata.name.clone());
        match tx.get::<Service>(&ns, &name)? {
            None if mode == ApplyMode::Replace => Err(StoreError::NotFound {
                kind: "Service",
                key: format!("{ns}/{name}"),
            }
            .into()),
            None => create(tx, svc),
            Some(_) if mode == ApplyMode::Create => Err(StoreError::AlreadyExists {
                kind: "Service",
                key: format!("{ns}/{name}"),
            }
            .into()),
            Some(old) => update(tx, old, svc),
        }
        .and_then(|(outcome, stored)| {
            if dry_run {
                Err(ApplyError::DryRun(outcome, Box::new(stored)))
            } else {
                Ok((outcome, stored))
            }
        })
    });
    match result {
        Err(ApplyError::DryRun(outcome, stored)) => Ok((outcome, *stored)),
        other => other,
    }
}

fn create(tx: &mut Tx, mut svc: Service) -> Result<(ApplyOutcome, Service), ApplyError> {
    check_byo_name(tx, &svc)?;
    svc.metadata.generation = Some(1);
    svc.metadata.resource_version = None;
    svc.status = None;
    let created = tx.create(svc)?;
    let (ns, name) = (&created.metadata.namespace, &created.metadata.name);
    tx.record(
        ns,
        name,
        &Event::normal(format!("Service/{name}"), "Created", "Created Service (generation 1)"),
    )?;
    Ok((ApplyOutcome::Created, created))
}

/// The Rollout that owns a service's traffic, if any.
pub fn rollout_for(tx: &Tx, namespace: &str, service: &str) -> Result<Option<Rollout>, StoreError> {
    Ok(tx
        .list::<Rollout>(Some(namespace))?
        .into_iter()
        .find(|r| r.spec.service_ref.name == service))
}

fn update(tx: &mut Tx, old: Service, mut svc: Service) -> Result<(ApplyOutcome, Service), ApplyError> {
    // A Rollout owns the traffic of its service (as Flagger and Argo Rollouts do): an apply changes
    // the template, and the Rollout decides where requests go.
    if rollout_for(tx, &old.metadata.namespace, &old.metadata.name)?.is_some() {
        svc.spec.traffic = old.spec.traffic.clone();
    }
    validate_service_update(&old, &svc).map_err(ApplyError::Invalid)?;
    let spec_changed = old.spec != svc.spec;
    let meta_changed =
        old.metadata.labels != svc.metadata.labels || old.metadata.annotations != svc.metadata.annotations;
    if !spec_changed && !meta_changed {
        return Ok((ApplyOutcome::Unchanged, old));
    }
    if old.spec.template != svc.spec.template {
        check_byo_name(tx, &svc)?;
    }
    let mut next = old.clone();
    next.spec = svc.spec;
    next.metadata.labels = svc.metadata.labels;
    next.metadata.annotations = svc.metadata.annotations;
    // A resourceVersion in the request is a precondition; without one the write is unconditional.
    next.metadata.resource_version = svc.metadata.resource_version.or(old.metadata.resource_version.clone());
    if spec_changed {
        next.metadata.generation = Some(old.generation() + 1);
    }
    let updated = tx.update(next)?;
    let (ns, name) = (&updated.metadata.namespace, &updated.metadata.name);
    let what = if spec_changed {
        format!("spec changed (generation {})", updated.generation())
    } else {
        "metadata changed".into()
    };
    tx.record(
        ns,
        name,
        &Event::normal(format!("Service/{name}"), "Updated", format!("Updated Service: {what}")),
    )?;
    Ok((ApplyOutcome::Configured, updated))
}

/// A bring-your-own revision name must be free, or name this service's revision of the same template.
fn check_byo_name(tx: &Tx, svc: &Service) -> Result<(), ApplyError> {
    let Some(byo) = svc.spec.template.byo_name() else {
        return Ok(());
    };
    let Some(existing) = tx.get::<Revision>(&svc.metadata.namespace, byo)? else {
        return Ok(());
    };
    let mut errs = FieldErrors::default();
    if existing.service_name() != Some(svc.metadata.name.as_str()) {
        errs.push(
            "spec.template.metadata.name",
            format!(
                "revision {byo:?} already exists and belongs to service {:?}",
                existing.service_name().unwrap_or("?")
            ),
        );
    } else if existing.spec != svc.spec.template.spec {
        errs.push(
            "spec.template.metadata.name",
            format!("revision {byo:?} already exists with a different template; revisions are immutable, so choose a new name"),
        );
    }
    errs.into_result().map_err(ApplyError::Invalid)
}

/// What applying a Rollout did (the stored object).
pub type RolloutApplied = (ApplyOutcome, Rollout);

/// Creates or updates a Rollout that revisor-api admitted. Its status is the controller's: an apply
/// changes the spec (bumping the generation) and keeps the status. One Rollout per service.
pub fn apply_rollout(
    store: &Store,
    rollout: Rollout,
    mode: ApplyMode,
    dry_run: bool,
) -> Result<RolloutApplied, ApplyError> {
    let result = store.write(|tx| {
        let (ns, name) = (rollout.metadata.namespace.clone(), rollout.metadata.name.clone());
        if let Some(other) = rollout_for(tx, &ns, &rollout.spec.service_ref.name)? {
            if other.metadata.name != name {
                let mut errs = FieldErrors::default();
                errs.push(
                    "spec.serviceRef.name",
                    format!(
                        "service {:?} is already rolled out by Rollout {:?}; a service has one Rollout",
                        rollout.spec.service_ref.name, other.metadata.name
                    ),
                );
                return Err(ApplyError::Invalid(errs));
            }
        }
        let existing = tx.get::<Rollout>(&ns, &name)?;
        let (outcome, stored) = match existing {
            None if mode == ApplyMode::Replace => {
                return Err(StoreError::NotFound {
                    kind: "Rollout",
                    key: format!("{ns}/{name}"),
                }
                .into())
            }
            Some(_) if mode == ApplyMode::Create => {
                return Err(StoreError::AlreadyExists {
                    kind: "Rollout",
                    key: format!("{ns}/{name}"),
                }
                .into())
            }
            None => {
                let mut r = rollout;
                r.metadata.generation = Some(1);
                r.metadata.resource_version = None;
                r.status = None;
                (ApplyOutcome::Created, tx.create(r)?)
            }
            Some(old) => {
                if old.spec == rollout.spec
                    && old.metadata.labels == rollout.metadata.labels
                    && old.metadata.annotations == rollout.metadata.annotations
                {
                    (ApplyOutcome::Unchanged, old)
                } else {
                    if old.spec.service_ref != rollout.spec.service_ref {
                        let mut errs = FieldErrors::default();
                        errs.push(
                            "spec.serviceRef.name",
                            "is immutable: delete the Rollout and create another",
                        );
                        return Err(ApplyError::Invalid(errs));
                    }
                    let mut next = old.clone();
                    if old.spec != rollout.spec {
                        next.metadata.generation = Some(old.metadata.generation.unwrap_or(0) + 1);
                    }
                    next.spec = rollout.spec;
                    next.metadata.labels = rollout.metadata.labels;
                    next.metadata.annotations = rollout.metadata.annotations;
                    next.metadata.resource_version = rollout
                        .metadata
                        .resource_version
                        .or(old.metadata.resource_version.clone());
                    (ApplyOutcome::Configured, tx.update(next)?)
                }
            }
        };
        if outcome != ApplyOutcome::Unchanged {
            tx.record(
                &ns,
                &stored.spec.service_ref.name,
                &Event::normal(
                    format!("Rollout/{name}"),
                    if outcome == ApplyOutcome::Created {
                        "Created"
                    } else {
                        "Updated"
                    },
                    format!("Rollout {name} {}", outcome.as_str()),
                ),
            )?;
        }
        if dry_run {
            return Err(ApplyError::DryRunRollout(outcome, Box::new(stored)));
        }
        Ok((outcome, stored))
    });
    match result {
        Err(ApplyError::DryRunRollout(outcome, stored)) => Ok((outcome, *stored)),
        other => other,
    }
}

/// An operator's request to a Rollout (`revisor rollout promote|abort|retry|undo|pause|resume`).
pub fn request_rollout(
    store: &Store,
    namespace: &str,
    name: &str,
    action: &str,
    to_revision: Option<&str>,
) -> Result<Rollout, ApplyError> {
    store.write(|tx| {
        let mut r = tx
            .get::<Rollout>(namespace, name)?
            .ok_or_else(|| StoreError::NotFound {
                kind: "Rollout",
                key: format!("{namespace}/{name}"),
            })?;
        match action {
            "pause" | "resume" => {
                let paused = action == "pause";
                if r.spec.paused.unwrap_or(false) != paused {
                    r.spec.paused = paused.then_some(true);
                    r.metadata.generation = Some(r.metadata.generation.unwrap_or(0) + 1);
                }
            }
            a if REQUESTS.contains(&a) => {
                let mut st = r.status();
                st.requests.push(a.to_string());
                if a == "undo" {
                    if let Some(rev) = to_revision {
                        if tx.get::<Revision>(namespace, rev)?.is_none() {
                            let mut errs = FieldErrors::default();
                            errs.push("toRevision", format!("revision {rev:?} does not exist"));
                            return Err(ApplyError::Invalid(errs));
                        }
                        st.undo_to = Some(rev.to_string());
                    }
                }
                r.status = Some(st);
            }
            other => {
                return Err(ApplyError::Invalid(
                    revisor_api::rollout::check_action(other).unwrap_err(),
                ))
            }
        }
        let service = r.spec.service_ref.name.clone();
        let updated = tx.update(r)?;
        tx.record(
            namespace,
            &service,
            &Event::normal(format!("Rollout/{name}"), "Requested", format!("{action} requested")),
        )?;
        Ok(updated)
    })
}

/// Deletes a Rollout; the service keeps its current traffic.
pub fn delete_rollout(store: &Store, namespace: &str, name: &str) -> Result<Rollout, StoreError> {
    store.write(|tx| tx.delete::<Rollout>(namespace, name))
}

/// Deletes a Service with everything it owns: configuration, revisions and event log.
pub fn delete_service(store: &Store, namespace: &str, name: &str) -> Result<Service, StoreError> {
    store.write(|tx| {
        let svc = tx.delete::<Service>(namespace, name)?;
        if tx.get::<Configuration>(namespace, name)?.is_some() {
            tx.delete::<Configuration>(namespace, name)?;
        }
        for rev in revisions_of(tx, namespace, name)? {
            tx.delete::<Revision>(namespace, &rev.metadata.name)?;
        }
        tx.clear_events(namespace, name)?;
        Ok(svc)
    })
}

/// Deletes one Revision. As in Knative, the revision of a configuration's current generation is made
/// again by the next reconcile; traffic that names a deleted revision reports RevisionMissing.
pub fn delete_revision(store: &Store, namespace: &str, name: &str) -> Result<Revision, StoreError> {
    store.write(|tx| {
        let rev = tx.delete::<Revision>(namespace, name)?;
        if let Some(svc) = rev.service_name() {
            tx.record(
                namespace,
                svc,
                &Event::normal(
                    format!("Revision/{name}"),
                    "Deleted",
                    format!("Deleted Revision {name:?}"),
                ),
            )?;
        }
        Ok(rev)
    })
}

//! Admission that needs stored state: create-or-update of a Service (server-side apply), and deletes.
//!
//! Stateless checks (schema, defaults, field rules) happen before, in revisor-api; these add the rules
//! that compare against what is stored, all in the same transaction as the write.

use revisor_api::validate::validate_service_update;
use revisor_api::{Configuration, FieldErrors, Revision, Service};
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

fn update(tx: &mut Tx, old: Service, svc: Service) -> Result<(ApplyOutcome, Service), ApplyError> {
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

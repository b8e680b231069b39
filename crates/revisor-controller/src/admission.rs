//! Admission that needs stored state: create-or-update of a Service (server-side apply), and deletes.
//!
//! Stateless checks (schema, defaults, field rules) happen before, in revisor-api; these add the rules
//! that compare against what is stored, all in the same transaction as the write.

use revisor_api::rollout::ActionEffect;
use revisor_api::validate::validate_service_update;
use revisor_api::{Configuration, FieldErrors, Revision, Rollout, Service};
use revisor_store::{Event, Store, StoreError, Tx};

use crate::fields::{self, Conflict};
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

/// Who writes, and how: the field manager (`?fieldManager=`), and for an apply whether it takes fields
/// other managers own (`?force=true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    pub mode: ApplyMode,
    pub manager: String,
    pub force: bool,
}

impl Writer {
    /// `revisor apply`'s writer: manager `revisor`.
    pub fn apply() -> Writer {
        Writer {
            mode: ApplyMode::Apply,
            manager: APPLY_MANAGER.into(),
            force: false,
        }
    }
}

/// The field manager of `revisor apply` (as kubectl's is `kubectl`).
pub const APPLY_MANAGER: &str = "revisor";
/// The field manager of a replace or create that names none.
pub const UPDATE_MANAGER: &str = "revisor-update";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Invalid(FieldErrors),
    /// An apply would change fields other field managers set (server-side apply's conflicts).
    #[error("{}", conflicts_message(.0))]
    FieldConflicts(Vec<Conflict>),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Internal: aborts a dry run's transaction after every check passed.
    /// A delete of something still in use.
    #[error("{0}")]
    Referenced(String),
    #[error("dry run")]
    DryRun(ApplyOutcome, Box<Service>),
    #[error("dry run")]
    DryRunRollout(ApplyOutcome, Box<Rollout>),
}

/// "Apply failed with 2 conflicts: conflict with "a": .spec.traffic; ...", as Kubernetes says it.
fn conflicts_message(conflicts: &[Conflict]) -> String {
    let n = conflicts.len();
    let each: Vec<String> = conflicts
        .iter()
        .map(|c| format!("conflict with \"{}\": {}", c.manager, c.field))
        .collect();
    format!(
        "Apply failed with {n} conflict{}: {}; leave the field{} out of the manifest to keep {}, or apply with \
         --force-conflicts to take {}",
        if n == 1 { "" } else { "s" },
        each.join("; "),
        if n == 1 { "" } else { "s" },
        if n == 1 { "it" } else { "them" },
        if n == 1 { "it" } else { "them" },
    )
}

/// Ends a dry run's transaction after every check passed, with what it would have stored.
fn finish(
    result: Result<(ApplyOutcome, Service), ApplyError>,
    dry_run: bool,
) -> Result<(ApplyOutcome, Service), ApplyError> {
    result.and_then(|(outcome, stored)| {
        if dry_run {
            Err(ApplyError::DryRun(outcome, Box::new(stored)))
        } else {
            Ok((outcome, stored))
        }
    })
}

fn undry(result: Result<(ApplyOutcome, Service), ApplyError>) -> Result<(ApplyOutcome, Service), ApplyError> {
    match result {
        Err(ApplyError::DryRun(outcome, stored)) => Ok((outcome, *stored)),
        other => other,
    }
}

fn json<T: serde::Serialize>(object: &T) -> serde_json::Value {
    serde_json::to_value(object).unwrap_or_default()
}

/// Creates or replaces a Service that revisor-api already admitted (decoded, defaulted, validated): an
/// update in server-side apply's terms, whose manager owns every field it changed. The generation
/// bumps only when the spec changes; labels and annotations are replaced. A dry run makes every check
/// and reports the outcome, but writes nothing.
pub fn apply_service(
    store: &Store,
    mut svc: Service,
    writer: &Writer,
    dry_run: bool,
) -> Result<(ApplyOutcome, Service), ApplyError> {
    undry(store.write(|tx| {
        let (ns, name) = (svc.metadata.namespace.clone(), svc.metadata.name.clone());
        let result = match tx.get::<Service>(&ns, &name)? {
            None if writer.mode == ApplyMode::Replace => Err(StoreError::NotFound {
                kind: "Service",
                key: format!("{ns}/{name}"),
            }
            .into()),
            None => {
                svc.metadata.managed_fields = Some(fields::update(
                    None,
                    &json(&svc),
                    &[],
                    &writer.manager,
                    chrono::Utc::now(),
                ));
                create(tx, svc)
            }
            Some(_) if writer.mode == ApplyMode::Create => Err(StoreError::AlreadyExists {
                kind: "Service",
                key: format!("{ns}/{name}"),
            }
            .into()),
            Some(old) => {
                let managed = old.metadata.managed_fields.clone().unwrap_or_default();
                svc.metadata.managed_fields = Some(fields::update(
                    Some(&json(&old)),
                    &json(&svc),
                    &managed,
                    &writer.manager,
                    chrono::Utc::now(),
                ));
                update(tx, old, svc, writer)
            }
        };
        finish(result, dry_run)
    }))
}

/// An apply configuration's namespace (the default when it names none) and name, with the namespace
/// written into it; refused unless it and its metadata are objects.
fn placed_config(config: &serde_json::Value) -> Result<(serde_json::Value, String, String), ApplyError> {
    let not_object = |path: &str, what: &str| {
        let mut errs = FieldErrors::default();
        errs.push(path, format!("{what} must be an object"));
        ApplyError::Invalid(errs)
    };
    if !config.is_object() {
        return Err(not_object("", "an apply configuration"));
    }
    if config.get("metadata").is_some_and(|m| !m.is_object()) {
        return Err(not_object("metadata", "metadata"));
    }
    let text = |p: &str| {
        config
            .pointer(p)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let name = text("/metadata/name");
    let ns = Some(text("/metadata/namespace"))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| revisor_api::defaults::DEFAULT_NAMESPACE.to_string());
    let mut config = config.clone();
    config["metadata"]["namespace"] = serde_json::Value::String(ns.clone());
    Ok((config, ns, name))
}

/// The stored object `old` (none yet: `None`) with `config` applied by `writer`'s manager, field by
/// field (`fields.rs`), admitted by `admit`, and the managed fields after it. Conflicts are judged on
/// the admitted values, so the defaults admission fills in never make one.
fn merged<T: revisor_store::Object>(
    old: Option<&T>,
    config: &serde_json::Value,
    writer: &Writer,
    admit: impl Fn(&serde_json::Value) -> Result<T, ApplyError>,
) -> Result<(T, Vec<revisor_api::ManagedFieldsEntry>), ApplyError> {
    let managed = old.and_then(|o| o.meta().managed_fields.clone()).unwrap_or_default();
    let live = old.map(json);
    let adopts = writer.manager == APPLY_MANAGER;
    let now = chrono::Utc::now();
    let apply = |force, settled| {
        fields::apply(
            live.as_ref(),
            &managed,
            config,
            &writer.manager,
            force,
            adopts,
            settled,
            now,
        )
        .map_err(ApplyError::FieldConflicts)
    };
    // The merge as it would be, admitted: the values each field settles to.
    let (draft, _) = apply(true, None)?;
    let admitted = admit(&draft)?;
    let (_, managed) = apply(writer.force, Some(&json(&admitted)))?;
    Ok((admitted, managed))
}

/// Server-side apply of a Service: `config` (the manager's fields, as sent: not yet admitted) merged
/// into the stored Service by field ownership (`fields.rs`), then admitted whole (decoded, defaulted,
/// validated with `defaults`) and created or updated.
pub fn server_side_apply(
    store: &Store,
    config: &serde_json::Value,
    defaults: &revisor_api::Defaults,
    writer: &Writer,
    dry_run: bool,
) -> Result<(ApplyOutcome, Service), ApplyError> {
    let (mut config, ns, name) = placed_config(config)?;
    undry(store.write(|tx| {
        let old = tx.get::<Service>(&ns, &name)?;
        // A Rollout owns its service's traffic: an apply's is left out (neither set nor owned).
        if rollout_for(tx, &ns, &name)?.is_some() {
            if let Some(spec) = config.get_mut("spec").and_then(serde_json::Value::as_object_mut) {
                spec.remove("traffic");
            }
        }
        let (mut svc, managed) = merged(old.as_ref(), &config, writer, |v| {
            revisor_api::admit_service(v, defaults).map_err(ApplyError::Invalid)
        })?;
        svc.metadata.managed_fields = Some(managed);
        let result = match old {
            None => create(tx, svc),
            Some(old) => update(tx, old, svc, writer),
        };
        finish(result, dry_run)
    }))
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

fn update(tx: &mut Tx, old: Service, mut svc: Service, writer: &Writer) -> Result<(ApplyOutcome, Service), ApplyError> {
    // A Rollout owns the traffic of its service (as Flagger and Argo Rollouts do): an apply changes
    // the template, and the Rollout decides where requests go; any other write of traffic is refused.
    if let Some(r) = rollout_for(tx, &old.metadata.namespace, &old.metadata.name)? {
        if writer.mode != ApplyMode::Apply && svc.spec.traffic != old.spec.traffic {
            return Err(ApplyError::Invalid(rollout_owns_traffic(&old, &r)));
        }
        svc.spec.traffic = old.spec.traffic.clone();
    }
    validate_service_update(&old, &svc).map_err(ApplyError::Invalid)?;
    let spec_changed = old.spec != svc.spec;
    let meta_changed = old.metadata.labels != svc.metadata.labels
        || old.metadata.annotations != svc.metadata.annotations
        || old.metadata.managed_fields != svc.metadata.managed_fields;
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
    next.metadata.managed_fields = svc.metadata.managed_fields;
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

/// Why a write of a Rollout-owned service's traffic is refused, and what moves it instead.
fn rollout_owns_traffic(svc: &Service, r: &Rollout) -> FieldErrors {
    let mut errs = FieldErrors::default();
    errs.push(
        "spec.traffic",
        format!(
            "service {:?} is rolled out by Rollout {:?}, which owns its traffic: move it with \
             `revisor rollout promote|abort|undo|pause|resume {}` (or delete the Rollout first)",
            svc.metadata.name, r.metadata.name, r.metadata.name
        ),
    );
    errs
}

/// The field manager that set a service's `spec.traffic`, if one is recorded.
pub fn traffic_owner(svc: &Service) -> Option<&str> {
    svc.metadata
        .managed_fields
        .as_ref()?
        .iter()
        .find(|e| {
            e.fields_v1
                .as_ref()
                .and_then(|f| f.pointer("/f:spec/f:traffic"))
                .is_some()
        })
        .map(|e| e.manager.as_str())
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
fn write_rollout(tx: &mut Tx, mut rollout: Rollout, writer: &Writer) -> Result<RolloutApplied, ApplyError> {
    let mode = writer.mode;
    {
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
                if mode != ApplyMode::Apply {
                    r.metadata.managed_fields = Some(fields::update(
                        None,
                        &json(&r),
                        &[],
                        &writer.manager,
                        chrono::Utc::now(),
                    ));
                }
                r.metadata.generation = Some(1);
                r.metadata.resource_version = None;
                r.status = None;
                (ApplyOutcome::Created, tx.create(r)?)
            }
            Some(old) => {
                if mode != ApplyMode::Apply {
                    let managed = old.metadata.managed_fields.clone().unwrap_or_default();
                    rollout.metadata.managed_fields = Some(fields::update(
                        Some(&json(&old)),
                        &json(&rollout),
                        &managed,
                        &writer.manager,
                        chrono::Utc::now(),
                    ));
                }
                if old.spec == rollout.spec
                    && old.metadata.labels == rollout.metadata.labels
                    && old.metadata.annotations == rollout.metadata.annotations
                    && old.metadata.managed_fields == rollout.metadata.managed_fields
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
                    next.metadata.managed_fields = rollout.metadata.managed_fields;
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
        Ok((outcome, stored))
    }
}

/// Ends a Rollout's dry run as [`finish`] does a Service's.
fn rehearsed(
    store: &Store,
    dry_run: bool,
    f: impl FnOnce(&mut Tx) -> Result<RolloutApplied, ApplyError>,
) -> Result<RolloutApplied, ApplyError> {
    let result = store.write(|tx| {
        let (outcome, stored) = f(tx)?;
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

/// Creates or replaces a Rollout that revisor-api admitted (an update: its manager owns what it
/// changed).
pub fn apply_rollout(
    store: &Store,
    rollout: Rollout,
    writer: &Writer,
    dry_run: bool,
) -> Result<RolloutApplied, ApplyError> {
    rehearsed(store, dry_run, |tx| write_rollout(tx, rollout, writer))
}

/// Server-side apply of a Rollout: `config` merged into the stored Rollout by field ownership, then
/// admitted whole, as for a Service ([`server_side_apply`]).
pub fn server_side_apply_rollout(
    store: &Store,
    config: &serde_json::Value,
    writer: &Writer,
    dry_run: bool,
) -> Result<RolloutApplied, ApplyError> {
    let (config, ns, name) = placed_config(config)?;
    rehearsed(store, dry_run, |tx| {
        let old = tx.get::<Rollout>(&ns, &name)?;
        let (mut rollout, managed) = merged(old.as_ref(), &config, writer, |v| {
            revisor_api::admit_rollout(v).map_err(ApplyError::Invalid)
        })?;
        rollout.metadata.managed_fields = Some(managed);
        write_rollout(tx, rollout, writer)
    })
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
        let target = match to_revision {
            Some(rev) => tx.get::<Revision>(namespace, rev)?,
            None => None,
        };
        let owner_of = |_: &str| target.as_ref().map(|t| t.service_name().map(str::to_string));
        let effect = r
            .take_action(action, to_revision, owner_of)
            .map_err(ApplyError::Invalid)?;
        if effect == (ActionEffect::Paused { changed: true }) {
            r.metadata.generation = Some(r.metadata.generation.unwrap_or(0) + 1);
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
/// A delete's options, as Kubernetes' `DeleteOptions` give them: a dry run, and preconditions on the
/// object's uid and resourceVersion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    pub dry_run: bool,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl DeleteOptions {
    /// The preconditions against the stored object's metadata: a mismatch is a `Conflict`.
    fn check(&self, kind: &'static str, meta: &revisor_api::ObjectMeta) -> Result<(), StoreError> {
        let conflict = |given: &String, current: Option<&String>| StoreError::Conflict {
            kind,
            key: meta.key(),
            given: given.clone(),
            current: current.cloned().unwrap_or_default(),
        };
        if let Some(uid) = self.uid.as_ref().filter(|u| Some(*u) != meta.uid.as_ref()) {
            return Err(conflict(uid, meta.uid.as_ref()));
        }
        if let Some(rv) = self
            .resource_version
            .as_ref()
            .filter(|v| Some(*v) != meta.resource_version.as_ref())
        {
            return Err(conflict(rv, meta.resource_version.as_ref()));
        }
        Ok(())
    }
}

/// Deletes `T`'s `namespace/name` after checking the options' preconditions.
fn delete_checked<T: revisor_store::Object>(
    tx: &mut Tx,
    namespace: &str,
    name: &str,
    options: &DeleteOptions,
) -> Result<T, StoreError> {
    if let Some(current) = tx.get::<T>(namespace, name)? {
        options.check(T::KIND_NAME, current.meta())?;
    }
    tx.delete::<T>(namespace, name)
}

pub fn delete_rollout(
    store: &Store,
    namespace: &str,
    name: &str,
    options: &DeleteOptions,
) -> Result<Rollout, StoreError> {
    write_or_rehearse(store, options.dry_run, |tx| {
        delete_checked::<Rollout>(tx, namespace, name, options)
    })
}

/// Runs `f` in one write transaction; a dry run makes every check and then rolls it back, answering
/// what it would have answered.
fn write_or_rehearse<T, E: From<StoreError>>(
    store: &Store,
    dry_run: bool,
    f: impl FnOnce(&mut Tx) -> Result<T, E>,
) -> Result<T, E> {
    if !dry_run {
        return store.write(f);
    }
    let mut answer = None;
    let rolled_back = store.write(|tx| {
        answer = Some(f(tx)?);
        Err(E::from(StoreError::Rejected("dry run".into())))
    });
    match (rolled_back, answer) {
        (_, Some(answer)) => Ok(answer),
        (Err(e), None) => Err(e),
        (Ok(v), None) => Ok(v),
    }
}

/// Deletes a Service with everything it owns: configuration, revisions and event log.
pub fn delete_service(
    store: &Store,
    namespace: &str,
    name: &str,
    options: &DeleteOptions,
) -> Result<Service, StoreError> {
    write_or_rehearse(store, options.dry_run, |tx| {
        let svc = delete_checked::<Service>(tx, namespace, name, options)?;
        if tx.get::<Configuration>(namespace, name)?.is_some() {
            tx.delete::<Configuration>(namespace, name)?;
        }
        for rev in revisions_of(tx, namespace, name)? {
            tx.delete::<Revision>(namespace, &rev.metadata.name)?;
        }
        tx.clear_events(namespace, name)?;
        // The Rollout stays (it names the service, as Argo's names its workload), and starts afresh
        // in the same transaction, so a service applied again at once never meets its old status.
        if let Some(mut r) = rollout_for(tx, namespace, name)? {
            r.status = Some(r.status_without_service());
            tx.update(r)?;
        }
        Ok(svc)
    })
}

/// Deletes one Revision. As in Knative, the revision of a configuration's current generation is made
/// again by the next reconcile. A revision that traffic, a tag or a Rollout references is kept unless
/// `force`: deleting it would leave its requests without a revision (503s) or its Rollout without a
/// stable to go back to. A dry run makes the checks and deletes nothing.
pub fn delete_revision(
    store: &Store,
    namespace: &str,
    name: &str,
    force: bool,
    options: &DeleteOptions,
) -> Result<Revision, ApplyError> {
    write_or_rehearse(store, options.dry_run, |tx| {
        let rev = tx
            .get::<Revision>(namespace, name)?
            .ok_or_else(|| StoreError::NotFound {
                kind: "Revision",
                key: format!("{namespace}/{name}"),
            })?;
        let refs = references(tx, &rev)?;
        if !refs.is_empty() && !force {
            return Err(ApplyError::Referenced(format!(
                "revision {name:?} is in use: {}; move traffic away first, or delete it anyway with --force",
                refs.join("; ")
            )));
        }
        let rev = delete_checked::<Revision>(tx, namespace, name, options)?;
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

/// What references a revision: its service's traffic (by name, tag, or as the latest ready revision that
/// `latestRevision` resolves to) and its Rollout's stable, canary and previous stable.
fn references(tx: &Tx, rev: &Revision) -> Result<Vec<String>, StoreError> {
    let (ns, name) = (&rev.metadata.namespace, rev.metadata.name.as_str());
    let Some(service) = rev.service_name() else {
        return Ok(vec![]);
    };
    let mut refs = Vec::new();
    if let Some(svc) = tx.get::<Service>(ns, service)? {
        for (i, t) in svc.spec.traffic().iter().enumerate() {
            if t.revision_name.as_deref() == Some(name) {
                let tag = t.tag.as_ref().map(|t| format!(", tag {t:?}")).unwrap_or_default();
                refs.push(format!(
                    "service {service:?} sends it {}%{tag} (spec.traffic[{i}])",
                    t.percent.unwrap_or(0)
                ));
            }
        }
        let latest = svc.status().traffic.iter().any(|t| {
            t.latest_revision == Some(true)
                && t.revision_name.as_deref() == Some(name)
                && (t.percent.unwrap_or(0) > 0 || t.tag.is_some())
        });
        if latest {
            refs.push(format!(
                "service {service:?} routes to it as its latest ready revision (latestRevision: true)"
            ));
        }
    }
    if let Some(r) = rollout_for(tx, ns, service)? {
        let st = r.status();
        let roles = [
            (st.stable_revision, "stable revision"),
            (st.canary_revision, "canary"),
            (
                st.previous_stable_revision,
                "previous stable revision (what undo goes back to)",
            ),
        ];
        for (rev, role) in roles {
            if rev.as_deref() == Some(name) {
                refs.push(format!("it is Rollout {:?}'s {role}", r.metadata.name));
            }
        }
    }
    Ok(refs)
}

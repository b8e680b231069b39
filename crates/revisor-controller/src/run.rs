//! The control loop: reconcile every service at start, then each service whose objects change, and
//! each service whose gradual rollout (Knative's `rollout-duration`) has a step due.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::thread::JoinHandle;

use chrono::Utc;
use revisor_api::{Configuration, Defaults, Revision, Rollout, Service};
use revisor_store::{Kind, Store, StoreError};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::dataplane::{Backend, Derivation, DesiredState};
use crate::reconcile::reconcile_service;
use crate::ControllerConfig;

/// Drives reconciles from store changes on its own thread (store writes are blocking fsyncs), and
/// after each round tells the backend what the data plane should be.
pub struct Controller {
    store: Store,
    config: ControllerConfig,
    defaults: Defaults,
    backend: Option<Arc<dyn Backend>>,
    last: Option<Arc<DesiredState>>,
    /// The desired data plane, kept service by service.
    derivation: Derivation,
    /// Services whose gradual rollout is in progress, with when its next step is due (ms).
    gradual: BTreeMap<(String, String), i64>,
    /// The objects the data plane is derived from, kept current from the store's changes so that a
    /// round reads only what changed (with a backend only).
    objects: Objects,
}

/// Services, Revisions and Rollouts by (namespace, name).
#[derive(Default)]
struct Objects {
    services: BTreeMap<(String, String), Service>,
    revisions: BTreeMap<(String, String), Arc<Revision>>,
    rollouts: BTreeMap<(String, String), Rollout>,
    /// The services whose objects were read again since the data plane was last derived.
    dirty: BTreeSet<(String, String)>,
    /// Every service's, after a whole load (or a change that named no service).
    all_dirty: bool,
}

/// The cached revision if the store's is the same version of it (the data plane tells changed
/// revisions from unchanged ones by their pointer), else the store's.
fn keep_unchanged(cached: Option<Arc<Revision>>, stored: Revision) -> Arc<Revision> {
    match cached {
        Some(c) if same_version(&c, &stored) => c,
        _ => Arc::new(stored),
    }
}

/// Whether two reads of a revision are the same version of the same object.
fn same_version(a: &Revision, b: &Revision) -> bool {
    a.metadata.uid == b.metadata.uid
        && a.metadata.resource_version.is_some()
        && a.metadata.resource_version == b.metadata.resource_version
}

impl Objects {
    fn load(store: &Store) -> Result<Objects, StoreError> {
        let key = |m: &revisor_api::ObjectMeta| (m.namespace.clone(), m.name.clone());
        Ok(Objects {
            services: store
                .list::<Service>(None)?
                .into_iter()
                .map(|o| (key(&o.metadata), o))
                .collect(),
            revisions: store
                .list::<Revision>(None)?
                .into_iter()
                .map(|o| (key(&o.metadata), Arc::new(o)))
                .collect(),
            rollouts: store
                .list::<Rollout>(None)?
                .into_iter()
                .map(|o| (key(&o.metadata), o))
                .collect(),
            dirty: BTreeSet::new(),
            all_dirty: true,
        })
    }

    /// Reads a service and its revisions again, after its reconcile: the revision a reconcile made is
    /// in the cache together with the service status that routes to it, whatever order the store's
    /// changes about them arrive in.
    fn refresh_service(&mut self, store: &Store, namespace: &str, name: &str) -> Result<(), StoreError> {
        let key = (namespace.to_string(), name.to_string());
        self.dirty.insert(key.clone());
        match store.get::<Service>(namespace, name)? {
            Some(s) => self.services.insert(key, s),
            None => self.services.remove(&key),
        };
        let revisions: Vec<Revision> = store
            .list_prefixed::<Revision>(namespace, &format!("{name}-"))?
            .into_iter()
            .filter(|r| r.service_name() == Some(name))
            .collect();
        let mut old: BTreeMap<(String, String), Arc<Revision>> = BTreeMap::new();
        self.revisions.retain(|k, r| {
            let theirs = k.0 == namespace && r.service_name() == Some(name);
            if theirs {
                old.insert(k.clone(), r.clone());
            }
            !theirs
        });
        for r in revisions {
            let key = (namespace.to_string(), r.metadata.name.clone());
            let r = keep_unchanged(old.remove(&key), r);
            self.revisions.insert(key, r);
        }
        Ok(())
    }

    /// Reads again the object a change is about.
    fn refresh(&mut self, store: &Store, c: &revisor_store::Change) -> Result<(), StoreError> {
        fn put<T: revisor_store::Object>(
            map: &mut BTreeMap<(String, String), T>,
            store: &Store,
            c: &revisor_store::Change,
        ) -> Result<(), StoreError> {
            let key = (c.namespace.clone(), c.name.clone());
            match store.get::<T>(&c.namespace, &c.name)? {
                Some(o) => map.insert(key, o),
                None => map.remove(&key),
            };
            Ok(())
        }
        match &c.service {
            Some(svc) => {
                self.dirty.insert((c.namespace.clone(), svc.clone()));
            }
            None => self.all_dirty = true,
        }
        match c.kind {
            Kind::Service => put(&mut self.services, store, c),
            Kind::Revision => {
                let key = (c.namespace.clone(), c.name.clone());
                match store.get::<Revision>(&c.namespace, &c.name)? {
                    Some(r) => {
                        let r = keep_unchanged(self.revisions.remove(&key), r);
                        self.revisions.insert(key, r)
                    }
                    None => self.revisions.remove(&key),
                };
                Ok(())
            }
            Kind::Rollout => put(&mut self.rollouts, store, c),
            Kind::Configuration | Kind::Event => Ok(()),
        }
    }
}

impl Controller {
    pub fn new(store: Store, config: ControllerConfig) -> Self {
        Self {
            store,
            config,
            defaults: Defaults::default(),
            backend: None,
            last: None,
            derivation: Derivation::default(),
            gradual: BTreeMap::new(),
            objects: Objects::default(),
        }
    }

    /// Drives `backend` with the desired data plane; `defaults` resolve revisions' annotations.
    pub fn with_backend(mut self, backend: Arc<dyn Backend>, defaults: Defaults) -> Self {
        self.backend = Some(backend);
        self.defaults = defaults;
        self
    }

    /// Starts the loop. It runs until the process ends; reconcile failures are logged and retried on the
    /// next change or resync.
    pub fn spawn(self) -> JoinHandle<()> {
        let rx = self.store.subscribe();
        std::thread::Builder::new()
            .name("controller".into())
            .spawn(move || self.run(rx))
            .expect("spawn controller thread")
    }

    fn run(mut self, mut rx: tokio::sync::broadcast::Receiver<revisor_store::Change>) {
        // Only for waiting on changes with a deadline (the next gradual step); reconciles block.
        let waiter = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("the controller cannot start its timer: {e}");
                return;
            }
        };
        self.reconcile_all();
        self.reload();
        loop {
            self.sync_backend();
            let now = Utc::now().timestamp_millis();
            let due: Vec<(String, String)> = self
                .gradual
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(k, _)| k.clone())
                .collect();
            if !due.is_empty() {
                for (ns, name) in due {
                    self.reconcile(&ns, &name);
                }
                continue;
            }
            let next = self.gradual.values().min().map(|at| (at - now).max(1) as u64);
            let first = waiter.block_on(async {
                match next {
                    Some(ms) => tokio::time::timeout(std::time::Duration::from_millis(ms), rx.recv())
                        .await
                        .ok(),
                    None => Some(rx.recv().await),
                }
            });
            let mut pending = BTreeSet::new();
            match first {
                // A gradual step is due.
                None => continue,
                Some(Ok(c)) => self.note(&mut pending, c),
                Some(Err(RecvError::Lagged(_))) => {
                    self.reconcile_all();
                    self.reload();
                    continue;
                }
                Some(Err(RecvError::Closed)) => return,
            }
            // Coalesce a burst of changes into one reconcile per service.
            loop {
                match rx.try_recv() {
                    Ok(c) => self.note(&mut pending, c),
                    Err(TryRecvError::Lagged(_)) => {
                        self.reconcile_all();
                        self.reload();
                        pending.clear();
                    }
                    Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => break,
                }
            }
            for (ns, name) in pending {
                self.reconcile(&ns, &name);
            }
        }
    }

    /// Reads every object the data plane is derived from (at start, and when changes were missed).
    fn reload(&mut self) {
        if self.backend.is_none() {
            return;
        }
        match Objects::load(&self.store) {
            Ok(mut o) => {
                // What did not change keeps its pointer, so the data plane sees what did.
                let mut cached = std::mem::take(&mut self.objects.revisions);
                for (k, r) in o.revisions.iter_mut() {
                    if let Some(c) = cached.remove(k).filter(|c| same_version(c, r)) {
                        *r = c;
                    }
                }
                self.objects = o;
            }
            Err(e) => tracing::error!("reading the store for the data plane: {e}"),
        }
    }

    /// Keeps the objects current with a change and notes its service for reconciling.
    fn note(&mut self, pending: &mut BTreeSet<(String, String)>, c: revisor_store::Change) {
        if self.backend.is_some() {
            if let Err(e) = self.objects.refresh(&self.store, &c) {
                tracing::error!(
                    "reading {:?} {}/{} for the data plane: {e}",
                    c.kind,
                    c.namespace,
                    c.name
                );
                self.reload();
            }
        }
        add(pending, c);
    }

    /// Sends the desired data plane to the backend when it changed.
    fn sync_backend(&mut self) {
        let Some(backend) = &self.backend else { return };
        let o = &mut self.objects;
        let desired = self.derivation.update(
            &o.services,
            &o.revisions,
            &o.rollouts,
            &o.dirty,
            o.all_dirty,
            &self.defaults,
            Utc::now(),
        );
        o.dirty.clear();
        o.all_dirty = false;
        if self.last.as_deref() != Some(&desired) {
            let desired = Arc::new(desired);
            backend.sync(desired.clone());
            self.last = Some(desired);
        }
    }

    /// Reconciles every stored service (at start, and when changes were missed).
    pub fn reconcile_all(&mut self) {
        match self.store.list::<Service>(None) {
            Ok(services) => {
                for s in services {
                    self.reconcile(&s.metadata.namespace, &s.metadata.name);
                }
            }
            Err(e) => tracing::error!("listing services to reconcile: {e}"),
        }
    }

    /// Reconciles one service, and notes when its gradual rollout's next step is due.
    pub fn reconcile(&mut self, namespace: &str, name: &str) {
        let result: Result<(), StoreError> = self
            .store
            .write(|tx| reconcile_service(tx, namespace, name, &self.config, Utc::now()));
        if let Err(e) = result {
            tracing::error!(service = %format!("{namespace}/{name}"), "reconcile failed: {e}");
        }
        if self.backend.is_some() {
            if let Err(e) = self.objects.refresh_service(&self.store, namespace, name) {
                tracing::error!("reading {namespace}/{name} for the data plane: {e}");
                self.reload();
            }
        }
        let key = (namespace.to_string(), name.to_string());
        let next_step = self
            .store
            .get::<Configuration>(namespace, name)
            .ok()
            .flatten()
            .and_then(|cfg| {
                let state = cfg.metadata.annotation(crate::reconcile::GRADUAL_STATE)?;
                serde_json::from_str::<revisor_traffic::gradual::Gradual>(state).ok()
            })
            .filter(|g| g.in_progress())
            .map(|g| g.next_step_ms);
        match next_step {
            Some(at) => self.gradual.insert(key, at),
            None => self.gradual.remove(&key),
        };
    }
}

fn add(pending: &mut BTreeSet<(String, String)>, c: revisor_store::Change) {
    if let Some(svc) = c.service {
        pending.insert((c.namespace, svc));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(uid: &str, version: &str) -> Revision {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "s-00001", "namespace": "ns", "uid": uid, "resourceVersion": version },
            "spec": { "containers": [{ "image": "app" }] },
        }))
        .unwrap()
    }

    /// A revision read again unchanged keeps its pointer (the data plane derives again only the
    /// services whose revisions' pointers changed); another version or another object does not.
    #[test]
    fn a_revision_read_again_unchanged_keeps_its_pointer() {
        let cached = Arc::new(revision("u1", "7"));
        let same = keep_unchanged(Some(cached.clone()), revision("u1", "7"));
        assert!(Arc::ptr_eq(&same, &cached));
        let newer = keep_unchanged(Some(cached.clone()), revision("u1", "8"));
        assert!(!Arc::ptr_eq(&newer, &cached));
        assert_eq!(newer.metadata.resource_version.as_deref(), Some("8"));
        let other = keep_unchanged(Some(cached.clone()), revision("u2", "7"));
        assert!(!Arc::ptr_eq(&other, &cached));
        assert!(!Arc::ptr_eq(&keep_unchanged(None, revision("u1", "7")), &cached));
    }
}

//! The control loop: reconcile every service at start, then each service whose objects change.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::thread::JoinHandle;

use chrono::Utc;
use revisor_api::{Defaults, Revision, Rollout, Service};
use revisor_store::{Store, StoreError};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::dataplane::{desired_state, Backend, DesiredState};
use crate::reconcile::reconcile_service;
use crate::ControllerConfig;

/// Drives reconciles from store changes on its own thread (store writes are blocking fsyncs), and
/// after each round tells the backend what the data plane should be.
pub struct Controller {
    store: Store,
    config: ControllerConfig,
    defaults: Defaults,
    backend: Option<Arc<dyn Backend>>,
    last: Option<DesiredState>,
}

impl Controller {
    pub fn new(store: Store, config: ControllerConfig) -> Self {
        Self {
            store,
            config,
            defaults: Defaults::default(),
            backend: None,
            last: None,
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
        self.reconcile_all();
        loop {
            self.sync_backend();
            let mut pending = BTreeSet::new();
            match rx.blocking_recv() {
                Ok(c) => add(&mut pending, c),
                Err(RecvError::Lagged(_)) => {
                    self.reconcile_all();
                    continue;
                }
                Err(RecvError::Closed) => return,
            }
            // Coalesce a burst of changes into one reconcile per service.
            loop {
                match rx.try_recv() {
                    Ok(c) => add(&mut pending, c),
                    Err(TryRecvError::Lagged(_)) => {
                        self.reconcile_all();
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

    /// Sends the desired data plane to the backend when it changed.
    fn sync_backend(&mut self) {
        let Some(backend) = &self.backend else { return };
        let read = || -> Result<_, StoreError> {
            Ok((
                self.store.list::<Service>(None)?,
                self.store.list::<Revision>(None)?,
                self.store.list::<Rollout>(None)?,
            ))
        };
        let (services, revisions, rollouts) = match read() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("reading the store for the data plane: {e}");
                return;
            }
        };
        let desired = desired_state(&services, &revisions, &rollouts, &self.defaults, Utc::now());
        if self.last.as_ref() != Some(&desired) {
            backend.sync(desired.clone());
            self.last = Some(desired);
        }
    }

    /// Reconciles every stored service (at start, and when changes were missed).
    pub fn reconcile_all(&self) {
        match self.store.list::<Service>(None) {
            Ok(services) => {
                for s in services {
                    self.reconcile(&s.metadata.namespace, &s.metadata.name);
                }
            }
            Err(e) => tracing::error!("listing services to reconcile: {e}"),
        }
    }

    pub fn reconcile(&self, namespace: &str, name: &str) {
        let result: Result<(), StoreError> = self
            .store
            .write(|tx| reconcile_service(tx, namespace, name, &self.config, Utc::now()));
        if let Err(e) = result {
            tracing::error!(service = %format!("{namespace}/{name}"), "reconcile failed: {e}");
        }
    }
}

fn add(pending: &mut BTreeSet<(String, String)>, c: revisor_store::Change) {
    if let Some(svc) = c.service {
        pending.insert((c.namespace, svc));
    }
}

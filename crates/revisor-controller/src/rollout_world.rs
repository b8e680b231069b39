//! The Rollout controller's world on this machine (revisor-rollout-controller's `World`): Rollouts,
//! Services and Revisions in the store; each step's writes in one transaction, after which the
//! Service's own reconcile resolves the traffic and the backend moves requests; the load generator
//! aims at the gateway with the tag's host.

use revisor_api::{Revision, Rollout, Service};
use revisor_rollout_controller::{Change, Commit, Key, World};
use revisor_store::{Event, Kind, Store, StoreError};
use tokio::sync::broadcast::error::RecvError;

pub struct StoreWorld {
    store: Store,
    config: crate::ControllerConfig,
}

impl StoreWorld {
    pub fn new(store: Store, config: crate::ControllerConfig) -> Self {
        StoreWorld { store, config }
    }
}

/// Writes one step's outcome in one transaction; `Ok(false)` on a conflict.
fn commit(store: &Store, c: Commit) -> Result<bool, String> {
    let r = &c.rollout;
    let (ns, service) = (r.metadata.namespace.clone(), r.spec.service_ref.name.clone());
    let result = store.write(|tx| {
        let mut next = r.clone();
        next.status = Some(c.status.clone());
        tx.update(next)?;
        if let Some(traffic) = &c.traffic {
            if let Some(mut s) = tx.get::<Service>(&ns, &service)? {
                s.spec.traffic = Some(traffic.clone());
                s.metadata.generation = Some(s.generation() + 1);
                tx.update(s)?;
            }
        }
        for e in &c.events {
            let object = format!("Rollout/{}", r.metadata.name);
            let event = if e.warning {
                Event::warning(object, &e.reason, e.message.clone())
            } else {
                Event::normal(object, &e.reason, e.message.clone())
            };
            tx.record(&ns, &service, &event)?;
        }
        Ok(())
    });
    match result {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

impl World for StoreWorld {
    async fn rollouts(&self) -> Result<Vec<Rollout>, String> {
        self.store.list::<Rollout>(None).map_err(|e| e.to_string())
    }

    async fn rollout(&self, key: &Key) -> Result<Option<Rollout>, String> {
        self.store
            .get::<Rollout>(&key.namespace, &key.name)
            .map_err(|e| e.to_string())
    }

    async fn service(&self, namespace: &str, name: &str) -> Result<Option<Service>, String> {
        self.store.get::<Service>(namespace, name).map_err(|e| e.to_string())
    }

    async fn revision(&self, namespace: &str, name: &str) -> Result<Option<Revision>, String> {
        self.store.get::<Revision>(namespace, name).map_err(|e| e.to_string())
    }

    /// On a blocking thread: a write waits for the disk.
    async fn commit(&self, c: Commit) -> Result<bool, String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || commit(&store, c))
            .await
            .map_err(|e| format!("writing a rollout step: {e}"))?
    }

    fn load_target(&self, r: &Rollout, tag: &str) -> Option<(String, Option<String>)> {
        let host = format!(
            "{tag}-{}.{}.{}",
            r.spec.service_ref.name, r.metadata.namespace, self.config.domain
        );
        let gateway = std::net::SocketAddr::new(self.config.gateway_ip, self.config.gateway_port);
        Some((format!("http://{gateway}"), Some(host)))
    }

    /// The store's changes: a Rollout's as itself, any other object's as its Service's.
    fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<Change> {
        let mut rx = self.store.subscribe();
        let (tx, out) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let change = match rx.recv().await {
                    Ok(c) if c.kind == Kind::Rollout => Change::Rollout(Key::new(c.namespace, c.name)),
                    Ok(c) => match c.service {
                        Some(name) => Change::Service {
                            namespace: c.namespace,
                            name,
                        },
                        None => continue,
                    },
                    Err(RecvError::Lagged(_)) => Change::Resync,
                    Err(RecvError::Closed) => return,
                };
                if tx.send(change).is_err() {
                    return;
                }
            }
        });
        out
    }
}

//! Local replicas: each revision's container runs as processes that honour Knative's container contract
//! (listen on `$PORT`). The runtime starts, probes, restarts (with backoff), drains and stops them, and
//! publishes what is running as a snapshot on a watch channel.
//!
//! It makes no routing decision: it only says which replicas are ready at which address, and before
//! stopping one it waits for the in-flight count the caller reports to reach zero.

mod probe;
mod process;
mod replica;
mod spec;
mod state;

pub use process::tail;
pub use spec::{Probe, ProbeAction, ProcessSpec, RevisionKey, AGGRESSIVE_PERIOD};
pub use state::{Failure, ReadyReplica, RevisionState, Snapshot, StartTiming};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Reports how many requests are in flight to a replica address (the gateway knows).
pub type InFlight = Arc<dyn Fn(SocketAddr) -> usize + Send + Sync>;

struct ReplicaHandle {
    id: u64,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Entry {
    spec: Arc<ProcessSpec>,
    replicas: Vec<ReplicaHandle>,
    next_id: u64,
    deadline: Option<JoinHandle<()>>,
}

pub(crate) struct Shared {
    logs: PathBuf,
    states: Mutex<BTreeMap<RevisionKey, RevisionState>>,
    snapshot: watch::Sender<Snapshot>,
    pub(crate) in_flight: InFlight,
}

impl Shared {
    /// Changes one revision's state and publishes a new snapshot.
    pub(crate) fn update(&self, key: &RevisionKey, f: impl FnOnce(&mut RevisionState)) {
        let mut states = self.states.lock().unwrap();
        f(states.entry(key.clone()).or_default());
        self.snapshot.send_replace(Arc::new(states.clone()));
    }

    fn forget(&self, key: &RevisionKey) {
        let mut states = self.states.lock().unwrap();
        if states.remove(key).is_some() {
            self.snapshot.send_replace(Arc::new(states.clone()));
        }
    }

    pub(crate) fn log_path(&self, key: &RevisionKey, id: u64) -> PathBuf {
        self.logs
            .join(&key.namespace)
            .join(&key.name)
            .join(format!("replica-{id}.log"))
    }
}

/// The local runtime. Cheap to clone; every method must be called inside a tokio runtime.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
    entries: Arc<Mutex<HashMap<RevisionKey, Entry>>>,
}

impl Runtime {
    /// A runtime keeping replica logs under `logs`.
    pub fn new(logs: PathBuf, in_flight: InFlight) -> Runtime {
        let (snapshot, _) = watch::channel(Arc::new(BTreeMap::new()));
        let shared = Arc::new(Shared {
            logs,
            states: Mutex::new(BTreeMap::new()),
            snapshot,
            in_flight,
        });
        Runtime {
            shared,
            entries: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Every revision's state, now and as it changes.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.shared.snapshot.subscribe()
    }

    /// Where a revision's replica logs live.
    pub fn log_dir(&self, key: &RevisionKey) -> PathBuf {
        self.shared.logs.join(&key.namespace).join(&key.name)
    }

    /// Runs `replicas` replicas of a revision: starts the missing ones, drains and stops the extra ones.
    pub fn scale(&self, spec: ProcessSpec, replicas: u32) {
        let mut entries = self.entries.lock().unwrap();
        let key = spec.key.clone();
        let entry = entries.entry(key.clone()).or_insert_with(|| Entry {
            spec: Arc::new(spec.clone()),
            replicas: Vec::new(),
            next_id: 0,
            deadline: None,
        });
        if *entry.spec != spec && entry.replicas.is_empty() {
            entry.spec = Arc::new(spec);
        }
        entry.replicas.retain(|r| !r.task.is_finished());
        let from_zero = entry.replicas.is_empty() && replicas > 0;
        if from_zero {
            self.start_deadline(entry);
        }
        while entry.replicas.len() < replicas as usize {
            entry.next_id += 1;
            let (stop, rx) = watch::channel(false);
            let task = tokio::spawn(replica::run(self.shared.clone(), entry.spec.clone(), entry.next_id, rx));
            entry.replicas.push(ReplicaHandle {
                id: entry.next_id,
                stop,
                task,
            });
        }
        while entry.replicas.len() > replicas as usize {
            let r = entry.replicas.pop().expect("more replicas than wanted");
            // Out of the published snapshot at once, not when its task next runs, so nobody routes to
            // a replica that is already stopping.
            self.shared.update(&key, |st| st.ready.retain(|x| x.id != r.id));
            r.stop.send_replace(true);
        }
        let changed = self
            .shared
            .states
            .lock()
            .unwrap()
            .get(&key)
            .is_none_or(|st| st.desired != replicas);
        if changed {
            self.shared.update(&key, |st| st.desired = replicas);
        }
    }

    /// The progress deadline: unless a replica becomes ready in time, the revision is marked as failed.
    fn start_deadline(&self, entry: &mut Entry) {
        if let Some(d) = entry.deadline.take() {
            d.abort();
        }
        let (shared, key, deadline) = (
            self.shared.clone(),
            entry.spec.key.clone(),
            entry.spec.progress_deadline,
        );
        shared.update(&key, |st| {
            st.deadline_exceeded = false;
            st.ready_since_scale_up = false;
        });
        entry.deadline = Some(tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            shared.update(&key, |st| {
                if !st.ready_since_scale_up {
                    st.deadline_exceeded = true;
                }
            });
        }));
    }

    /// Stops every replica of a revision and forgets it once they are gone.
    pub async fn remove(&self, key: &RevisionKey) {
        let entry = self.entries.lock().unwrap().remove(key);
        if let Some(entry) = entry {
            if let Some(d) = entry.deadline {
                d.abort();
            }
            for r in &entry.replicas {
                self.shared.update(key, |st| st.ready.retain(|x| x.id != r.id));
                r.stop.send_replace(true);
            }
            for r in entry.replicas {
                let _ = r.task.await;
            }
        }
        self.shared.forget(key);
    }

    /// The revisions the runtime knows.
    pub fn keys(&self) -> Vec<RevisionKey> {
        self.entries.lock().unwrap().keys().cloned().collect()
    }

    /// Stops everything (server shutdown): drains and terminates every replica.
    pub async fn shutdown(&self) {
        for key in self.keys() {
            self.remove(&key).await;
        }
    }
}

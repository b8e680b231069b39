//! Local replicas: each revision's container runs as processes that honour Knative's container contract
//! (listen on `$PORT`). The runtime starts, probes, restarts (with backoff), drains and stops them, and
//! publishes what is running as a snapshot on a watch channel.
//!
//! It makes no routing decision: it only says which replicas are ready at which address, and before
//! stopping one it waits for the in-flight count the caller reports to reach zero.

pub mod lifeline;
pub mod prefork;
mod probe;
mod process;
mod replica;
mod spec;
mod state;

/// The directory under the logs where running replicas' process groups are recorded.
pub const GROUPS_DIR: &str = ".groups";

pub use process::tail;
pub use spec::{Probe, ProbeAction, ProcessSpec, RevisionKey, AGGRESSIVE_PERIOD};
pub use state::{Failure, ReadyReplica, RevisionState, Snapshot, StartTiming};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Which life of the revision this is: a revision deleted and made again under the same name (a
    /// service deleted and applied again) is a new incarnation, and the replicas of the old one, still
    /// draining, no longer touch its state.
    incarnation: u64,
    spec: Arc<ProcessSpec>,
    replicas: Vec<ReplicaHandle>,
    deadline: Option<JoinHandle<()>>,
}

/// Every revision's state, with the incarnation it belongs to.
#[derive(Default)]
struct States {
    by_key: BTreeMap<RevisionKey, RevisionState>,
    incarnation: HashMap<RevisionKey, u64>,
    /// The last replica number of each revision name, kept across incarnations so that replicas (and
    /// their log files) are numbered 1, 2, ... per revision and never collide.
    last_replica: HashMap<RevisionKey, u64>,
}

pub(crate) struct Shared {
    logs: PathBuf,
    states: Mutex<States>,
    snapshot: watch::Sender<Snapshot>,
    pub(crate) in_flight: InFlight,
    /// Numbers incarnations, unique for the runtime's life.
    next_incarnation: AtomicU64,
    /// Forks replicas of revisor itself (`prefork.rs`).
    pub(crate) prefork: Option<Arc<prefork::Prefork>>,
}

impl Shared {
    fn next_incarnation(&self) -> u64 {
        self.next_incarnation.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn next_replica(&self, key: &RevisionKey) -> u64 {
        let mut states = self.states.lock().unwrap();
        let n = states.last_replica.entry(key.clone()).or_default();
        *n += 1;
        *n
    }

    /// Changes the state of one incarnation of a revision and publishes a new snapshot; a change from
    /// an incarnation that is no longer current is dropped.
    pub(crate) fn update(&self, key: &RevisionKey, incarnation: u64, f: impl FnOnce(&mut RevisionState)) {
        let mut states = self.states.lock().unwrap();
        if states.incarnation.get(key) != Some(&incarnation) {
            return;
        }
        f(states.by_key.entry(key.clone()).or_default());
        self.snapshot.send_replace(Arc::new(states.by_key.clone()));
    }

    /// Starts a revision's incarnation with a fresh state.
    fn begin(&self, key: &RevisionKey, incarnation: u64) {
        let mut states = self.states.lock().unwrap();
        states.incarnation.insert(key.clone(), incarnation);
        states.by_key.insert(key.clone(), RevisionState::default());
        self.snapshot.send_replace(Arc::new(states.by_key.clone()));
    }

    /// Forgets a revision, unless a newer incarnation of it has begun meanwhile.
    fn forget(&self, key: &RevisionKey, incarnation: u64) {
        let mut states = self.states.lock().unwrap();
        if states.incarnation.get(key) != Some(&incarnation) {
            return;
        }
        states.incarnation.remove(key);
        if states.by_key.remove(key).is_some() {
            self.snapshot.send_replace(Arc::new(states.by_key.clone()));
        }
    }

    fn desired(&self, key: &RevisionKey) -> Option<u32> {
        self.states.lock().unwrap().by_key.get(key).map(|st| st.desired)
    }

    /// Where replicas' process groups are recorded while they run (beside the logs; a namespace is
    /// a DNS label, so never `.groups`).
    pub(crate) fn groups_dir(&self) -> PathBuf {
        self.logs.join(GROUPS_DIR)
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
        Runtime::build(logs, in_flight, None)
    }

    /// A runtime that forks the replicas running `exe` (revisor itself) from a pre-fork server of it,
    /// started now, instead of exec'ing them (`prefork.rs`).
    pub fn with_prefork(logs: PathBuf, in_flight: InFlight, exe: PathBuf) -> Runtime {
        Runtime::build(logs, in_flight, Some(prefork::Prefork::start(exe)))
    }

    fn build(logs: PathBuf, in_flight: InFlight, prefork: Option<Arc<prefork::Prefork>>) -> Runtime {
        let ended = process::end_leftovers(&logs.join(GROUPS_DIR));
        if ended > 0 {
            tracing::warn!("ended {ended} process group(s) that replicas of a previous run left behind");
        }
        let (snapshot, _) = watch::channel(Arc::new(BTreeMap::new()));
        let shared = Arc::new(Shared {
            logs,
            states: Mutex::new(States::default()),
            snapshot,
            in_flight,
            next_incarnation: AtomicU64::new(0),
            prefork,
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
    pub fn scale(&self, spec: impl Into<Arc<ProcessSpec>>, replicas: u32) {
        let spec: Arc<ProcessSpec> = spec.into();
        let mut entries = self.entries.lock().unwrap();
        let key = spec.key.clone();
        let entry = entries.entry(key.clone()).or_insert_with(|| {
            let incarnation = self.shared.next_incarnation();
            self.shared.begin(&key, incarnation);
            Entry {
                incarnation,
                spec: spec.clone(),
                replicas: Vec::new(),
                deadline: None,
            }
        });
        let incarnation = entry.incarnation;
        if !Arc::ptr_eq(&entry.spec, &spec) && *entry.spec != *spec && entry.replicas.is_empty() {
            entry.spec = spec;
        }
        entry.replicas.retain(|r| !r.task.is_finished());
        let from_zero = entry.replicas.is_empty() && replicas > 0;
        if from_zero {
            self.start_deadline(entry);
        }
        while entry.replicas.len() < replicas as usize {
            let id = self.shared.next_replica(&key);
            let (stop, rx) = watch::channel(false);
            let replica = replica::Replica {
                shared: self.shared.clone(),
                spec: entry.spec.clone(),
                id,
                incarnation,
            };
            let task = tokio::spawn(replica::run(replica, rx));
            entry.replicas.push(ReplicaHandle { id, stop, task });
        }
        while entry.replicas.len() > replicas as usize {
            let r = entry.replicas.pop().expect("more replicas than wanted");
            // Out of the published snapshot at once, not when its task next runs, so nobody routes to
            // a replica that is already stopping.
            self.shared
                .update(&key, incarnation, |st| st.ready.retain(|x| x.id != r.id));
            r.stop.send_replace(true);
        }
        if self.shared.desired(&key) != Some(replicas) {
            self.shared.update(&key, incarnation, |st| st.desired = replicas);
        }
    }

    /// The progress deadline: unless a replica becomes ready in time, the revision is marked as failed.
    fn start_deadline(&self, entry: &mut Entry) {
        if let Some(d) = entry.deadline.take() {
            d.abort();
        }
        let (shared, key, deadline, incarnation) = (
            self.shared.clone(),
            entry.spec.key.clone(),
            entry.spec.progress_deadline,
            entry.incarnation,
        );
        shared.update(&key, incarnation, |st| {
            st.deadline_exceeded = false;
            st.ready_since_scale_up = false;
        });
        entry.deadline = Some(tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            shared.update(&key, incarnation, |st| {
                if !st.ready_since_scale_up {
                    st.deadline_exceeded = true;
                }
            });
        }));
    }

    /// Stops every replica of a revision and forgets it once they are gone. The revision leaves the
    /// runtime at once (a `scale` of the same name after this call starts a new incarnation); the
    /// future waits for its replicas to drain and stop.
    pub fn remove(&self, key: &RevisionKey) -> impl std::future::Future<Output = ()> + Send + 'static {
        let entry = self.entries.lock().unwrap().remove(key);
        let (shared, key) = (self.shared.clone(), key.clone());
        if let Some(entry) = &entry {
            if let Some(d) = &entry.deadline {
                d.abort();
            }
            for r in &entry.replicas {
                shared.update(&key, entry.incarnation, |st| st.ready.retain(|x| x.id != r.id));
                r.stop.send_replace(true);
            }
        }
        async move {
            if let Some(entry) = entry {
                for r in entry.replicas {
                    let _ = r.task.await;
                }
                shared.forget(&key, entry.incarnation);
            }
        }
    }

    /// The revisions the runtime knows.
    pub fn keys(&self) -> Vec<RevisionKey> {
        self.entries.lock().unwrap().keys().cloned().collect()
    }

    /// Stops everything (server shutdown): drains and terminates every replica.
    pub async fn shutdown(&self) {
        let mut stopping = tokio::task::JoinSet::new();
        for key in self.keys() {
            stopping.spawn(self.remove(&key));
        }
        while stopping.join_next().await.is_some() {}
    }
}

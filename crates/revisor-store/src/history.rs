//! Recent changes with their resourceVersions, kept in memory so that a watch can start from a list's
//! resourceVersion and miss nothing: Kubernetes' watch cache, for one process. The history holds the
//! last [`KEPT`] changes since the store opened; a watch from before them is told it is too old (410
//! Gone) and lists again, as a client of Kubernetes does after etcd compacts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::Kind;

/// How many changes are kept.
pub const KEPT: usize = 4096;
/// How many bytes of objects they may hold together: past this, the oldest go first.
pub const KEPT_BYTES: usize = 64 * 1024 * 1024;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchType {
    Added,
    Modified,
    Deleted,
}

impl WatchType {
    /// As a Kubernetes watch event names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change of one object: the object as written (as deleted, for a delete, with the
/// resourceVersion of the delete) as JSON.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub kind: Kind,
    pub kind_of_change: WatchType,
    pub namespace: String,
    pub name: String,
    pub resource_version: u64,
    pub object: Arc<[u8]>,
    /// The object's labels before this change (none for a create), so that a watch by label selector
    /// can tell an object that left its selection (DELETED) or entered it (ADDED).
    pub previous_labels: Option<std::collections::BTreeMap<String, String>>,
}

/// The events after a resourceVersion, or why there are none to give.
#[derive(Debug)]
pub enum Since {
    /// Every change after the version, oldest first (perhaps none yet).
    Events(Vec<Arc<WatchEvent>>),
    /// Changes after the version were dropped from the history: the oldest still kept is given.
    TooOld { oldest: u64 },
}

#[derive(Debug)]
struct Inner {
    events: VecDeque<Arc<WatchEvent>>,
    /// The bytes of the kept objects.
    bytes: usize,
    /// Every change after this version is in `events` (the store's version when it opened, or the
    /// version of the last change dropped).
    complete_after: u64,
}

/// The store's recent changes; cheap to clone.
#[derive(Debug, Clone)]
pub struct History {
    inner: Arc<Mutex<Inner>>,
    latest: watch::Sender<u64>,
}

impl History {
    pub(crate) fn new(current: u64) -> Self {
        let (latest, _) = watch::channel(current);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                events: VecDeque::new(),
                bytes: 0,
                complete_after: current,
            })),
            latest,
        }
    }

    /// Adds the changes of one committed transaction, in the order they were made.
    pub(crate) fn publish(&self, events: Vec<WatchEvent>, committed: u64) {
        if events.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for e in events {
            inner.bytes += e.object.len();
            inner.events.push_back(Arc::new(e));
        }
        while inner.events.len() > KEPT || (inner.bytes > KEPT_BYTES && inner.events.len() > 1) {
            if let Some(dropped) = inner.events.pop_front() {
                inner.bytes -= dropped.object.len();
                inner.complete_after = dropped.resource_version;
            }
        }
        drop(inner);
        self.latest.send_modify(|v| *v = committed.max(*v));
    }

    /// The changes after `version`.
    pub fn since(&self, version: u64) -> Since {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if version < inner.complete_after {
            return Since::TooOld {
                oldest: inner.complete_after,
            };
        }
        let start = inner.events.partition_point(|e| e.resource_version <= version);
        Since::Events(inner.events.range(start..).cloned().collect())
    }

    /// Wakes when a transaction commits (its version is the value).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(rv: u64) -> WatchEvent {
        WatchEvent {
            kind: Kind::Service,
            kind_of_change: WatchType::Modified,
            namespace: "default".into(),
            name: "a".into(),
            resource_version: rv,
            object: Arc::from(&b"{}"[..]),
            previous_labels: None,
        }
    }

    #[test]
    fn a_watch_gets_every_change_after_its_version_or_is_told_it_is_too_old() {
        let h = History::new(10);
        h.publish(vec![ev(11), ev(12)], 12);
        h.publish(vec![ev(14)], 14);
        let versions = |s: Since| match s {
            Since::Events(e) => e.iter().map(|e| e.resource_version).collect::<Vec<_>>(),
            Since::TooOld { oldest } => panic!("too old: {oldest}"),
        };
        assert_eq!(versions(h.since(10)), [11, 12, 14]);
        assert_eq!(versions(h.since(12)), [14]);
        assert_eq!(versions(h.since(14)), Vec::<u64>::new());
        assert!(matches!(h.since(9), Since::TooOld { oldest: 10 }));
        h.publish((15..15 + KEPT as u64).map(ev).collect(), 15 + KEPT as u64);
        assert!(matches!(h.since(12), Since::TooOld { .. }));
        assert_eq!(versions(h.since(13 + KEPT as u64)), [14 + KEPT as u64]);
        assert_eq!(*h.subscribe().borrow(), 15 + KEPT as u64);
        // A byte budget too: one huge object pushes the older ones out.
        let mut big = ev(20 + KEPT as u64);
        big.object = vec![b' '; KEPT_BYTES].into();
        h.publish(vec![big], 20 + KEPT as u64);
        assert!(matches!(h.since(13 + KEPT as u64), Since::TooOld { .. }));
        assert_eq!(versions(h.since(14 + KEPT as u64)), [20 + KEPT as u64]);
    }
}

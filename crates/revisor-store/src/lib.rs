//! Durable embedded state: resources in redb, optimistic concurrency by resourceVersion, an event log per
//! service, and change notifications.
//!
//! Every write is one redb transaction, committed with fsync before it is acknowledged, so a crash at any
//! moment keeps every acknowledged change and none half-made.

mod error;
mod event;
mod history;
mod migrate;
mod object;
mod tx;

pub use error::StoreError;
pub use event::{Event, EventType};
/// A recorded event with its service's key (`namespace/service`) and its sequence number.
pub type Recorded = (String, u64, Event);

pub use history::{History, Since, WatchEvent, WatchType, KEPT as WATCH_HISTORY};
pub use object::{Kind, Object};
pub use tx::Tx;

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::broadcast;

pub(crate) const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
pub(crate) const CONFIGURATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("configurations");
pub(crate) const REVISIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("revisions");
pub(crate) const ROLLOUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("rollouts");
pub(crate) const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
pub(crate) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// What changed, sent after the change is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// The service the object belongs to (itself, for a Service).
    pub service: Option<String>,
}

/// The store: cheap to clone, safe to share.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    changes: broadcast::Sender<Change>,
    history: History,
    /// Recorded events' history, kept apart from the objects'.
    event_history: History,
    /// Held from a commit to its publication, so that the history gets changes in version order: the
    /// next writer can commit as soon as the last one did, before it published.
    publishing: Arc<std::sync::Mutex<()>>,
}

impl Store {
    /// Opens (or creates) the store at `path`. Fails if another process holds it. A store written by
    /// revisor before redb 3 (file format v2) is migrated first ([`migrate`]).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_error = |e: redb::DatabaseError| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        migrate::finish_interrupted(path)?;
        let db = match Database::create(path) {
            Err(redb::DatabaseError::UpgradeRequired(_)) => {
                migrate::from_redb2(path)?;
                Database::create(path).map_err(open_error)?
            }
            other => other.map_err(open_error)?,
        };
        let tx = db.begin_write()?;
        tx.open_table(SERVICES)?;
        tx.open_table(CONFIGURATIONS)?;
        tx.open_table(REVISIONS)?;
        tx.open_table(ROLLOUTS)?;
        tx.open_table(EVENTS)?;
        let version = tx
            .open_table(COUNTERS)?
            .get("sequence")?
            .map(|v| v.value())
            .unwrap_or(0);
        tx.commit()?;
        let (changes, _) = broadcast::channel(1024);
        Ok(Store {
            db: Arc::new(db),
            changes,
            history: History::new(version),
            event_history: History::new(version),
            publishing: Arc::default(),
        })
    }

    /// Runs `f` in one write transaction; it commits only if `f` returns `Ok`.
    pub fn write<R, E: From<StoreError>>(&self, f: impl FnOnce(&mut Tx) -> Result<R, E>) -> Result<R, E> {
        let inner = self.db.begin_write().map_err(StoreError::from)?;
        let mut tx = Tx::new(inner);
        let out = f(&mut tx)?;
        let order = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let (changes, watched, version) = tx.commit()?;
        // Events in a history of their own: many of them must not push objects' changes out.
        let (events, objects): (Vec<_>, Vec<_>) = watched.into_iter().partition(|w| w.kind == Kind::Event);
        self.history.publish(objects, version);
        self.event_history.publish(events, version);
        drop(order);
        for c in changes {
            // Nobody listening is fine: subscribers re-read the store when they start.
            let _ = self.changes.send(c);
        }
        Ok(out)
    }

    pub fn get<T: Object>(&self, namespace: &str, name: &str) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(T::TABLE)?;
        let key = format!("{namespace}/{name}");
        table
            .get(key.as_str())?
            .map(|v| object::decode::<T>(&key, v.value()))
            .transpose()
    }

    /// Every object of a kind, in one namespace or (with `None`) all, ordered by namespace and name.
    pub fn list<T: Object>(&self, namespace: Option<&str>) -> Result<Vec<T>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(T::TABLE)?;
        object::list(&table, namespace)
    }

    /// The objects of a kind in `namespace` whose names start with `prefix` (one range of keys).
    pub fn list_prefixed<T: Object>(&self, namespace: &str, prefix: &str) -> Result<Vec<T>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(T::TABLE)?;
        object::list_prefixed(&table, namespace, prefix)
    }

    /// The events recorded for a service, oldest first.
    pub fn events(&self, namespace: &str, service: &str) -> Result<Vec<Event>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(EVENTS)?;
        event::list(&table, &format!("{namespace}/{service}"))
    }

    /// The events of every service in `namespace` (all with `None`): each with its service's key
    /// (`namespace/service`) and sequence number.
    pub fn all_events(&self, namespace: Option<&str>) -> Result<Vec<Recorded>, StoreError> {
        Ok(self.all_events_versioned(namespace)?.0)
    }

    /// Every recorded event, as [`Store::all_events`], with the resourceVersion of the state it read
    /// (a watch of events from it misses none recorded later).
    pub fn all_events_versioned(&self, namespace: Option<&str>) -> Result<(Vec<Recorded>, u64), StoreError> {
        let tx = self.db.begin_read()?;
        let version = tx
            .open_table(COUNTERS)?
            .get("sequence")?
            .map(|v| v.value())
            .unwrap_or(0);
        let table = tx.open_table(EVENTS)?;
        Ok((event::list_all(&table, namespace)?, version))
    }

    /// Every object of a kind, as [`Store::list`], with the resourceVersion of the state it read: a
    /// watch from that version misses no change after the list.
    /// With `prefix`, only the names in `namespace` that start with it (one range of keys).
    pub fn list_versioned<T: Object>(
        &self,
        namespace: Option<&str>,
        prefix: Option<&str>,
    ) -> Result<(Vec<T>, u64), StoreError> {
        let tx = self.db.begin_read()?;
        let version = tx
            .open_table(COUNTERS)?
            .get("sequence")?
            .map(|v| v.value())
            .unwrap_or(0);
        let table = tx.open_table(T::TABLE)?;
        let items = match (namespace, prefix) {
            (Some(ns), Some(p)) => object::list_prefixed(&table, ns, p)?,
            _ => object::list(&table, namespace)?,
        };
        Ok((items, version))
    }

    /// The recent changes, for watches.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Recent recorded events with their resourceVersions, for watches of events.
    pub fn event_history(&self) -> &History {
        &self.event_history
    }

    /// Changes committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// How many objects of a kind there are (for metrics and tests).
    pub fn count<T: Object>(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(T::TABLE)?.len()?)
    }
}

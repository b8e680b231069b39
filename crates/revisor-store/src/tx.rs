//! A write transaction: reads see its own writes; resourceVersion checks make concurrent updates safe.

use chrono::Utc;
use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};

use crate::event::{self, Event, MAX_EVENTS_PER_SERVICE};
use crate::history::{WatchEvent, WatchType};
use crate::object::{self, Object};
use crate::{Change, Kind, StoreError, COUNTERS, EVENTS};

fn encode<T: Object>(key: &str, obj: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(obj).map_err(|e| StoreError::Corrupt {
        kind: T::KIND_NAME,
        key: key.to_string(),
        message: e.to_string(),
    })
}

pub struct Tx {
    inner: WriteTransaction,
    changes: Vec<Change>,
    watch: Vec<WatchEvent>,
    /// The highest resourceVersion this transaction gave out.
    version: u64,
}

impl Tx {
    pub(crate) fn new(inner: WriteTransaction) -> Self {
        Self {
            inner,
            changes: Vec::new(),
            watch: Vec::new(),
            version: 0,
        }
    }

    /// Commits; what changed, for subscribers and for watches, and the last version given out.
    pub(crate) fn commit(self) -> Result<(Vec<Change>, Vec<WatchEvent>, u64), StoreError> {
        self.inner.commit()?;
        Ok((self.changes, self.watch, self.version))
    }

    /// The next value of the store-wide sequence that resourceVersions and event ids come from.
    fn next_sequence(&mut self) -> Result<u64, StoreError> {
        let mut t = self.inner.open_table(COUNTERS)?;
        let next = t.get("sequence")?.map(|v| v.value()).unwrap_or(0) + 1;
        t.insert("sequence", next)?;
        self.version = next;
        Ok(next)
    }

    pub fn get<T: Object>(&self, namespace: &str, name: &str) -> Result<Option<T>, StoreError> {
        let t = self.inner.open_table(T::TABLE)?;
        let key = format!("{namespace}/{name}");
        let got = t.get(key.as_str())?;
        got.map(|v| object::decode::<T>(&key, v.value())).transpose()
    }

    pub fn list<T: Object>(&self, namespace: Option<&str>) -> Result<Vec<T>, StoreError> {
        let t = self.inner.open_table(T::TABLE)?;
        object::list(&t, namespace)
    }

    /// The objects of `namespace` whose names start with `prefix` (one range of keys, not a scan).
    pub fn list_prefixed<T: Object>(&self, namespace: &str, prefix: &str) -> Result<Vec<T>, StoreError> {
        let t = self.inner.open_table(T::TABLE)?;
        object::list_prefixed(&t, namespace, prefix)
    }

    /// Stores a new object: sets its resourceVersion, uid, creationTimestamp and (if unset) generation 1.
    pub fn create<T: Object>(&mut self, mut obj: T) -> Result<T, StoreError> {
        let key = obj.meta().key();
        if self.get::<T>(&obj.meta().namespace, &obj.meta().name)?.is_some() {
            return Err(StoreError::AlreadyExists {
                kind: T::KIND_NAME,
                key,
            });
        }
        let seq = self.next_sequence()?;
        let meta = obj.meta_mut();
        meta.resource_version = Some(seq.to_string());
        meta.uid = Some(uid(&key, seq));
        meta.creation_timestamp = Some(Utc::now());
        meta.generation.get_or_insert(1);
        self.put(&key, &obj, WatchType::Added, seq, None)?;
        Ok(obj)
    }

    /// Replaces a stored object. When `obj` carries a resourceVersion it must be the stored one (else
    /// `Conflict`); identity fields (uid, creationTimestamp) are kept from the stored object.
    pub fn update<T: Object>(&mut self, mut obj: T) -> Result<T, StoreError> {
        let key = obj.meta().key();
        let Some(current) = self.get::<T>(&obj.meta().namespace, &obj.meta().name)? else {
            return Err(StoreError::NotFound {
                kind: T::KIND_NAME,
                key,
            });
        };
        let cur = current.meta();
        if let Some(given) = obj.meta().resource_version.clone() {
            if Some(&given) != cur.resource_version.as_ref() {
                let current = cur.resource_version.clone().unwrap_or_default();
                return Err(StoreError::Conflict {
                    kind: T::KIND_NAME,
                    key,
                    given,
                    current,
                });
            }
        }
        let (uid, created) = (cur.uid.clone(), cur.creation_timestamp);
        let previous_labels = cur.labels.clone();
        let seq = self.next_sequence()?;
        let meta = obj.meta_mut();
        meta.resource_version = Some(seq.to_string());
        meta.uid = uid;
        meta.creation_timestamp = created;
        self.put(&key, &obj, WatchType::Modified, seq, previous_labels)?;
        Ok(obj)
    }

    fn put<T: Object>(
        &mut self,
        key: &str,
        obj: &T,
        change: WatchType,
        version: u64,
        previous_labels: Option<std::collections::BTreeMap<String, String>>,
    ) -> Result<(), StoreError> {
        let bytes = encode(key, obj)?;
        self.inner.open_table(T::TABLE)?.insert(key, bytes.as_slice())?;
        self.changed::<T>(obj.meta().namespace.clone(), obj.meta().name.clone(), obj.service());
        self.watched::<T>(obj, change, version, bytes, previous_labels);
        Ok(())
    }

    fn watched<T: Object>(
        &mut self,
        obj: &T,
        change: WatchType,
        version: u64,
        bytes: Vec<u8>,
        previous_labels: Option<std::collections::BTreeMap<String, String>>,
    ) {
        self.watch.push(WatchEvent {
            kind: T::KIND,
            kind_of_change: change,
            namespace: obj.meta().namespace.clone(),
            name: obj.meta().name.clone(),
            resource_version: version,
            object: bytes.into(),
            previous_labels,
        });
    }

    /// Removes an object; `NotFound` when there is none.
    pub fn delete<T: Object>(&mut self, namespace: &str, name: &str) -> Result<T, StoreError> {
        let key = format!("{namespace}/{name}");
        let removed = self
            .inner
            .open_table(T::TABLE)?
            .remove(key.as_str())?
            .map(|v| v.value().to_vec());
        let Some(bytes) = removed else {
            return Err(StoreError::NotFound {
                kind: T::KIND_NAME,
                key,
            });
        };
        let obj: T = object::decode(&key, &bytes)?;
        self.changed::<T>(namespace.to_string(), name.to_string(), obj.service());
        // A watch sees the object as it was, with the version of its deletion (as Kubernetes shows it).
        let seq = self.next_sequence()?;
        let mut last = obj.clone();
        last.meta_mut().resource_version = Some(seq.to_string());
        let bytes = encode(&key, &last)?;
        let labels = obj.meta().labels.clone();
        self.watched::<T>(&last, WatchType::Deleted, seq, bytes, labels);
        Ok(obj)
    }

    fn changed<T: Object>(&mut self, namespace: String, name: String, service: Option<String>) {
        let c = Change {
            kind: T::KIND,
            namespace,
            name,
            service,
        };
        if !self.changes.contains(&c) {
            self.changes.push(c);
        }
    }

    /// Appends an event to a service's log, dropping the oldest beyond the cap.
    pub fn record(&mut self, namespace: &str, service: &str, event: &Event) -> Result<(), StoreError> {
        let key = format!("{namespace}/{service}");
        let seq = self.next_sequence()?;
        let bytes = serde_json::to_vec(event).expect("events always serialize");
        let mut t = self.inner.open_table(EVENTS)?;
        t.insert((key.as_str(), seq), bytes.as_slice())?;
        // Watches of events see it as it is recorded (one dropped for the cap below is not told).
        self.watch.push(WatchEvent {
            kind: Kind::Event,
            kind_of_change: WatchType::Added,
            namespace: namespace.to_string(),
            name: service.to_string(),
            resource_version: seq,
            object: bytes.into(),
            previous_labels: None,
        });
        let count = t.range((key.as_str(), 0)..=(key.as_str(), u64::MAX))?.count();
        if count > MAX_EVENTS_PER_SERVICE {
            let oldest: Vec<u64> = t
                .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))?
                .take(count - MAX_EVENTS_PER_SERVICE)
                .map(|e| e.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for s in oldest {
                t.remove((key.as_str(), s))?;
            }
        }
        Ok(())
    }

    /// Drops a service's whole event log (when the service is deleted).
    pub fn clear_events(&mut self, namespace: &str, service: &str) -> Result<(), StoreError> {
        let key = format!("{namespace}/{service}");
        let mut t = self.inner.open_table(EVENTS)?;
        t.retain_in((key.as_str(), 0)..=(key.as_str(), u64::MAX), |_, _| false)?;
        Ok(())
    }

    /// The events of a service as this transaction sees them.
    pub fn events(&self, namespace: &str, service: &str) -> Result<Vec<Event>, StoreError> {
        let t = self.inner.open_table(EVENTS)?;
        event::list(&t, &format!("{namespace}/{service}"))
    }

    /// How many objects of a kind exist.
    pub fn count<T: Object>(&self) -> Result<u64, StoreError> {
        Ok(self.inner.open_table(T::TABLE)?.len()?)
    }
}

/// A stable, unique id: a hash of the key and the sequence number it was created at.
fn uid(key: &str, seq: u64) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    seq.hash(&mut h);
    let a = h.finish();
    seq.hash(&mut h);
    let b = h.finish();
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

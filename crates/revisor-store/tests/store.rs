//! Store behaviour: atomic writes, optimistic concurrency, events, and crash safety under kill -9.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use revisor_api::{Revision, Service};
use revisor_store::{Event, Store, StoreError};

fn service(ns: &str, name: &str) -> Service {
    let mut s = Service::default();
    s.metadata.namespace = ns.into();
    s.metadata.name = name.into();
    s
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.redb")).unwrap();
    (dir, store)
}

#[test]
fn create_get_list_by_namespace() {
    let (_d, store) = open();
    store
        .write(|tx| {
            tx.create(service("a", "x"))?;
            tx.create(service("a", "y"))?;
            tx.create(service("ab", "z"))?;
            Ok::<_, StoreError>(())
        })
        .unwrap();
    let got: Service = store.get("a", "x").unwrap().unwrap();
    assert_eq!(got.metadata.generation, Some(1));
    assert!(got.metadata.uid.is_some() && got.metadata.creation_timestamp.is_some());
    let names = |ns| {
        store
            .list::<Service>(ns)
            .unwrap()
            .into_iter()
            .map(|s| s.metadata.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(Some("a")), ["x", "y"]);
    assert_eq!(names(Some("ab")), ["z"]);
    assert_eq!(names(None), ["x", "y", "z"]);
    let err = store.write(|tx| tx.create(service("a", "x"))).unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
}

#[test]
fn stale_resource_version_is_a_conflict_and_changes_nothing() {
    let (_d, store) = open();
    let created = store.write(|tx| tx.create(service("ns", "s"))).unwrap();
    let mut first = created.clone();
    first.metadata.labels = Some([("v".to_string(), "1".to_string())].into());
    store.write(|tx| tx.update(first)).unwrap();
    let mut stale = created.clone();
    stale.metadata.labels = Some([("v".to_string(), "2".to_string())].into());
    let err = store.write(|tx| tx.update(stale)).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    let now: Service = store.get("ns", "s").unwrap().unwrap();
    assert_eq!(now.metadata.label("v"), Some("1"));
}

#[test]
fn a_failed_transaction_writes_nothing() {
    let (_d, store) = open();
    let err = store
        .write(|tx| {
            tx.create(service("ns", "a"))?;
            tx.record("ns", "a", &Event::normal("Service/a".into(), "Created", "x"))?;
            Err::<(), _>(StoreError::Rejected("changed my mind".into()))
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "changed my mind");
    assert!(store.get::<Service>("ns", "a").unwrap().is_none());
    assert!(store.events("ns", "a").unwrap().is_empty());
}

#[test]
fn concurrent_read_modify_write_loses_no_update() {
    let (_d, store) = open();
    store.write(|tx| tx.create(service("ns", "counter"))).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut done = 0;
                while done < 25 {
                    let mut s: Service = store.get("ns", "counter").unwrap().unwrap();
                    let n: u64 = s.metadata.label("n").unwrap_or("0").parse().unwrap();
                    s.metadata.set_label("n", (n + 1).to_string());
                    match store.write(|tx| tx.update(s)) {
                        Ok(_) => done += 1,
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s: Service = store.get("ns", "counter").unwrap().unwrap();
    assert_eq!(s.metadata.label("n"), Some("100"));
}

#[test]
fn events_are_kept_in_order_and_capped() {
    let (_d, store) = open();
    store
        .write(|tx| {
            for i in 0..1005 {
                tx.record("ns", "s", &Event::normal("Service/s".into(), "Tick", format!("{i}")))?;
            }
            tx.record("ns", "other", &Event::normal("Service/other".into(), "Tick", "x"))
        })
        .unwrap();
    let events = store.events("ns", "s").unwrap();
    assert_eq!(events.len(), 1000);
    assert_eq!(events[0].message, "5");
    assert_eq!(events[999].message, "1004");
    store.write(|tx| tx.clear_events("ns", "s")).unwrap();
    assert!(store.events("ns", "s").unwrap().is_empty());
    assert_eq!(store.events("ns", "other").unwrap().len(), 1);
}

#[test]
fn a_second_process_cannot_open_the_same_store() {
    let (d, _store) = open();
    let err = Store::open(&d.path().join("state.redb"))
        .err()
        .expect("second open must fail");
    assert!(err.to_string().contains("cannot open the store"), "{err}");
}

#[test]
fn changes_are_announced_after_commit() {
    let (_d, store) = open();
    let mut rx = store.subscribe();
    store.write(|tx| tx.create(service("ns", "s"))).unwrap();
    let c = rx.try_recv().unwrap();
    assert_eq!((c.namespace.as_str(), c.name.as_str()), ("ns", "s"));
}

/// Child mode: write services forever, printing each acknowledged name after its commit returns.
fn writer(path: &str, round: &str) -> ! {
    let store = Store::open(std::path::Path::new(path)).unwrap();
    for i in 0.. {
        let name = format!("s{round}x{i}");
        store
            .write(|tx| {
                tx.create(service("ns", &name))?;
                let mut r = Revision::default();
                r.metadata.namespace = "ns".into();
                r.metadata.name = format!("{name}-00001");
                tx.create(r)?;
                tx.record("ns", &name, &Event::normal(format!("Service/{name}"), "Created", "x"))
            })
            .unwrap();
        println!("{name}");
    }
    unreachable!()
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    if let Ok(path) = std::env::var("REVISOR_STORE_WRITER") {
        writer(&path, &std::env::var("REVISOR_STORE_ROUND").unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kill_9_loses_nothing_acknowledged",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("REVISOR_STORE_WRITER", &path)
            .env("REVISOR_STORE_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut acked = Vec::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        while acked.len() < 20 + round * 7 {
            let line = lines.next().expect("writer output").unwrap();
            if line.starts_with('s') {
                acked.push(line);
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let store = Store::open(&path).unwrap();
        for name in &acked {
            assert!(
                store.get::<Service>("ns", name).unwrap().is_some(),
                "round {round}: {name} lost"
            );
            assert!(
                store.get::<Revision>("ns", &format!("{name}-00001")).unwrap().is_some(),
                "{name} revision lost"
            );
            assert_eq!(store.events("ns", name).unwrap().len(), 1, "{name} event lost");
        }
        // Nothing half-written: every stored service has its revision.
        for s in store.list::<Service>(Some("ns")).unwrap() {
            let rev = format!("{}-00001", s.metadata.name);
            assert!(
                store.get::<Revision>("ns", &rev).unwrap().is_some(),
                "{rev} missing: a torn transaction"
            );
        }
    }
}

/// A store written by revisor 0.1 (redb 2, file format v2: `tests/fixtures/revisor-0.1-redb2.redb`,
/// the data directory of a `revisor serve` that applied two services, a new revision of one, a Rollout
/// over it and a tag) opens with every object, event and counter, and takes writes after.
#[test]
fn a_store_written_with_redb_2_is_migrated_with_everything_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("revisor.redb");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/revisor-0.1-redb2.redb"),
        &path,
    )
    .unwrap();
    let store = Store::open(&path).unwrap();
    let names = |mut v: Vec<(String, String)>| {
        v.sort();
        v
    };
    let services: Vec<Service> = store.list(None).unwrap();
    assert_eq!(
        names(
            services
                .iter()
                .map(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()))
                .collect()
        ),
        vec![("default".into(), "tabular".into()), ("other".into(), "greeter".into())]
    );
    let greeter = services.iter().find(|s| s.metadata.name == "greeter").unwrap();
    assert_eq!(
        greeter.spec.traffic()[1].tag.as_deref(),
        Some("first"),
        "the tag set by `revisor traffic`"
    );
    let revisions: Vec<revisor_api::Revision> = store.list(None).unwrap();
    assert_eq!(
        names(
            revisions
                .iter()
                .map(|r| (r.metadata.namespace.clone(), r.metadata.name.clone()))
                .collect()
        ),
        vec![
            ("default".into(), "tabular-00001".into()),
            ("default".into(), "tabular-00002".into()),
            ("other".into(), "greeter-00001".into())
        ]
    );
    let configs: Vec<revisor_api::Configuration> = store.list(None).unwrap();
    assert_eq!(configs.len(), 2);
    let rollout: revisor_api::Rollout = store.get("default", "tabular").unwrap().unwrap();
    let st = rollout.status();
    assert_eq!(
        (
            st.phase,
            st.stable_revision.as_deref(),
            st.canary_revision.as_deref(),
            st.canary_weight
        ),
        (
            revisor_api::rollout::phase::PAUSED,
            Some("tabular-00001"),
            Some("tabular-00002"),
            10
        )
    );
    // The event log (tuple keys, encoded differently since redb 3) in its order.
    let events = store.events("default", "tabular").unwrap();
    assert!(events.len() >= 5, "{events:?}");
    assert!(
        events.windows(2).all(|w| w[0].time <= w[1].time),
        "in order: {events:?}"
    );
    assert!(events.iter().any(|e| e.reason == "RevisionMissing"));
    assert!(!store.events("other", "greeter").unwrap().is_empty());
    // Writes go on, with resourceVersions after the old ones.
    let before: u64 = greeter.metadata.resource_version.as_deref().unwrap().parse().unwrap();
    let created = store.write(|tx| tx.create(service("default", "new"))).unwrap();
    let after: u64 = created.metadata.resource_version.as_deref().unwrap().parse().unwrap();
    assert!(after > before, "{after} after {before}");
    drop(store);
    // The old file is kept; opening again does not migrate again.
    assert!(dir.path().join("revisor.redb.redb2-backup").exists());
    let store = Store::open(&path).unwrap();
    assert_eq!(store.list::<Service>(None).unwrap().len(), 3);
}

/// A name prefix reads one range of keys: exactly the namespace's objects whose names start with it.
#[test]
fn list_prefixed_reads_one_namespace_and_one_prefix() {
    let (_dir, store) = open();
    for (ns, name) in [
        ("default", "app"),
        ("default", "app-1"),
        ("default", "app-2"),
        ("default", "apps"),
        ("default", "app."),
        ("default-2", "app-3"),
        ("defaul", "app-4"),
    ] {
        store.write(|tx| tx.create(service(ns, name))).unwrap();
    }
    let names: Vec<String> = store
        .write(|tx| tx.list_prefixed::<Service>("default", "app-"))
        .unwrap()
        .into_iter()
        .map(|s| s.metadata.name)
        .collect();
    assert_eq!(names, vec!["app-1", "app-2"]);
}

/// Issue 16 (review): recorded events have a watch history of their own. Thousands of events (cold
/// starts, scaling) must not push objects' changes out of the history their watches resume from.
#[test]
fn many_events_leave_the_objects_watch_history_whole() {
    let (_d, store) = open();
    store
        .write(|tx| {
            tx.create(service("default", "web"))?;
            Ok::<_, StoreError>(())
        })
        .unwrap();
    let (_, version) = store.list_versioned::<Service>(None, None).unwrap();
    store
        .write(|tx| {
            tx.create(service("default", "api"))?;
            Ok::<_, StoreError>(())
        })
        .unwrap();
    for i in 0..(revisor_store::WATCH_HISTORY + 100) {
        let e = Event::normal("Service/web".into(), "Scaled", format!("event {i}"));
        store.write(|tx| tx.record("default", "web", &e)).unwrap();
    }
    match store.history().since(version) {
        revisor_store::Since::Events(changes) => {
            assert_eq!(
                changes.len(),
                1,
                "the one object change after the version: {}",
                changes.len()
            );
            assert_eq!(changes[0].name, "api");
        }
        revisor_store::Since::TooOld { oldest } => panic!("events pushed the object change out (oldest {oldest})"),
    }
    assert!(
        matches!(
            store.event_history().since(version),
            revisor_store::Since::TooOld { .. }
        ),
        "the events' own history keeps the last {} of them",
        revisor_store::WATCH_HISTORY
    );
}

//! The Service reconciler against a real store: naming, immutability, traffic resolution and status.

use chrono::Utc;
use revisor_api::meta::Conditions;
use revisor_api::{
    admit_service, read_documents, Condition, ConditionStatus, Configuration, Defaults, Revision, Service,
};
use revisor_controller::admission::{ApplyMode, Writer};
use revisor_controller::{
    apply_service, delete_revision, reconcile_service, server_side_apply, ApplyError, ApplyOutcome, ControllerConfig,
};
use revisor_store::{Store, StoreError};

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        Env { _dir: dir, store }
    }

    fn apply(&self, yaml: &str) -> Result<ApplyOutcome, ApplyError> {
        let doc = &read_documents(yaml).unwrap()[0];
        let (outcome, _) = server_side_apply(&self.store, &doc.value, &Defaults::default(), &Writer::apply(), false)?;
        self.reconcile();
        Ok(outcome)
    }

    fn reconcile(&self) {
        self.store
            .write(|tx| reconcile_service(tx, "default", "svc", &ControllerConfig::default(), Utc::now()))
            .unwrap();
    }

    fn svc(&self) -> Service {
        self.store.get("default", "svc").unwrap().unwrap()
    }

    fn revisions(&self) -> Vec<String> {
        self.store
            .list::<Revision>(Some("default"))
            .unwrap()
            .into_iter()
            .map(|r| r.metadata.name)
            .collect()
    }

    fn cond(&self, t: &str) -> Condition {
        self.svc().status.unwrap().conditions.get_condition(t).cloned().unwrap()
    }

    /// Plays the runtime: marks a revision Ready=True (or False).
    fn set_ready(&self, name: &str, status: ConditionStatus) {
        self.store
            .write(|tx| {
                let mut r: Revision = tx.get("default", name)?.unwrap();
                let st = r.status.get_or_insert_with(Default::default);
                st.conditions.set_condition(
                    Condition::new("Ready", status, Some("Test"), Some("set by test".into())),
                    Utc::now(),
                );
                tx.update(r)?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        self.reconcile();
    }
}

fn manifest(image: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: svc\nspec:\n  template:\n    spec:\n      containers:\n        - image: {image}\n{extra_spec}"
    )
}

#[test]
fn template_changes_make_numbered_revisions_and_traffic_changes_do_not() {
    let env = Env::new();
    assert_eq!(env.apply(&manifest("img:v1", "")).unwrap(), ApplyOutcome::Created);
    assert_eq!(env.revisions(), ["svc-00001"]);
    assert_eq!(env.apply(&manifest("img:v1", "")).unwrap(), ApplyOutcome::Unchanged);
    assert_eq!(env.revisions(), ["svc-00001"]);
    assert_eq!(env.apply(&manifest("img:v2", "")).unwrap(), ApplyOutcome::Configured);
    assert_eq!(env.revisions(), ["svc-00001", "svc-00002"]);
    let split =
        "  traffic:\n    - revisionName: svc-00001\n      percent: 50\n    - latestRevision: true\n      percent: 50\n";
    assert_eq!(env.apply(&manifest("img:v2", split)).unwrap(), ApplyOutcome::Configured);
    assert_eq!(
        env.revisions(),
        ["svc-00001", "svc-00002"],
        "a traffic-only change makes no revision"
    );
    let svc = env.svc();
    assert_eq!(svc.metadata.generation, Some(3));
    assert_eq!(svc.status.as_ref().unwrap().observed_generation, Some(3));
    let cfg: Configuration = env.store.get("default", "svc").unwrap().unwrap();
    assert_eq!(cfg.metadata.generation, Some(2));
    // Going back to an earlier template is a new revision too: revisions are never reused by content.
    env.apply(&manifest("img:v1", split)).unwrap();
    assert_eq!(env.revisions(), ["svc-00001", "svc-00002", "svc-00003"]);
    let r: Revision = env.store.get("default", "svc-00003").unwrap().unwrap();
    assert_eq!(
        r.metadata.label("serving.knative.dev/configurationGeneration"),
        Some("3")
    );
    assert_eq!(r.metadata.label("serving.knative.dev/service"), Some("svc"));
    assert_eq!(r.spec.containers()[0].image.as_deref(), Some("img:v1"));
}

#[test]
fn status_waits_for_a_ready_revision_then_resolves_traffic() {
    let env = Env::new();
    env.apply(&manifest("img:v1", "")).unwrap();
    let st = env.svc().status.unwrap();
    assert_eq!(st.latest_created_revision_name.as_deref(), Some("svc-00001"));
    assert_eq!(st.latest_ready_revision_name, None);
    assert_eq!(st.url.as_deref(), Some("http://svc.default.localhost:8080"));
    assert_eq!(env.cond("Ready").status, ConditionStatus::Unknown);
    assert_eq!(
        env.cond("ConfigurationsReady").reason.as_deref(),
        Some("AwaitingRuntime")
    );
    assert_eq!(env.cond("RoutesReady").reason.as_deref(), Some("RevisionMissing"));

    env.set_ready("svc-00001", ConditionStatus::True);
    let st = env.svc().status.unwrap();
    assert_eq!(st.latest_ready_revision_name.as_deref(), Some("svc-00001"));
    assert_eq!(env.cond("Ready").status, ConditionStatus::True);
    assert_eq!(st.traffic.len(), 1);
    assert_eq!(st.traffic[0].revision_name.as_deref(), Some("svc-00001"));

    let tagged = "  traffic:\n    - revisionName: svc-00001\n      percent: 100\n      tag: stable\n    - latestRevision: true\n      percent: 0\n      tag: latest\n";
    env.apply(&manifest("img:v2", tagged)).unwrap();
    // v2 is not ready yet: latestRevision still means the latest *ready* revision, as in Knative.
    assert_eq!(env.cond("RoutesReady").status, ConditionStatus::True);
    assert_eq!(env.cond("ConfigurationsReady").status, ConditionStatus::Unknown);
    assert_eq!(
        env.svc().status.unwrap().traffic[1].revision_name.as_deref(),
        Some("svc-00001")
    );
    env.set_ready("svc-00002", ConditionStatus::True);
    let st = env.svc().status.unwrap();
    assert_eq!(env.cond("Ready").status, ConditionStatus::True);
    assert_eq!(
        st.traffic[0].url.as_deref(),
        Some("http://stable-svc.default.localhost:8080")
    );
    assert_eq!(st.traffic[1].revision_name.as_deref(), Some("svc-00002"));
    assert_eq!(
        st.traffic[1].url.as_deref(),
        Some("http://latest-svc.default.localhost:8080")
    );
}

#[test]
fn a_failed_latest_revision_keeps_the_last_ready_one() {
    let env = Env::new();
    env.apply(&manifest("img:v1", "")).unwrap();
    env.set_ready("svc-00001", ConditionStatus::True);
    env.apply(&manifest("img:v2", "")).unwrap();
    env.set_ready("svc-00002", ConditionStatus::False);
    let st = env.svc().status.unwrap();
    assert_eq!(st.latest_created_revision_name.as_deref(), Some("svc-00002"));
    assert_eq!(st.latest_ready_revision_name.as_deref(), Some("svc-00001"));
    assert_eq!(
        st.traffic[0].revision_name.as_deref(),
        Some("svc-00001"),
        "traffic stays on the ready revision"
    );
    let c = env.cond("ConfigurationsReady");
    assert_eq!(
        (c.status, c.reason.as_deref()),
        (ConditionStatus::False, Some("RevisionFailed"))
    );
    assert_eq!(env.cond("Ready").status, ConditionStatus::False);
}

#[test]
fn traffic_to_a_missing_revision_is_accepted_but_not_ready() {
    let env = Env::new();
    let t = "  traffic:\n    - revisionName: svc-00042\n      percent: 100\n";
    assert_eq!(env.apply(&manifest("img:v1", t)).unwrap(), ApplyOutcome::Created);
    let c = env.cond("RoutesReady");
    assert_eq!(
        (c.status, c.reason.as_deref()),
        (ConditionStatus::False, Some("RevisionMissing"))
    );
    assert!(c
        .message
        .unwrap()
        .contains("\"svc-00042\" referenced in traffic not found"));
    let events = env.store.events("default", "svc").unwrap();
    assert!(events.iter().any(|e| e.reason == "RevisionMissing"), "{events:?}");
}

#[test]
fn bring_your_own_names() {
    let env = Env::new();
    let named = |name: &str, image: &str| {
        format!("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: svc\nspec:\n  template:\n    metadata:\n      name: {name}\n    spec:\n      containers:\n        - image: {image}\n")
    };
    env.apply(&named("svc-first", "img:v1")).unwrap();
    assert_eq!(env.revisions(), ["svc-first"]);
    let err = env.apply(&named("svc-first", "img:v2")).unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.template.metadata.name: spec.template changed but its name \"svc-first\" did not"),
        "{err}"
    );
    env.apply(&named("svc-second", "img:v2")).unwrap();
    assert_eq!(env.revisions(), ["svc-first", "svc-second"]);
    // Pointing back at an existing name with a different template is refused; with the same one it is reused.
    let err = env.apply(&named("svc-first", "img:v3")).unwrap_err();
    assert!(
        err.to_string().contains("already exists with a different template"),
        "{err}"
    );
    env.apply(&named("svc-first", "img:v1")).unwrap();
    assert_eq!(env.revisions(), ["svc-first", "svc-second"]);
    assert_eq!(
        env.svc().status.unwrap().latest_created_revision_name.as_deref(),
        Some("svc-first")
    );
}

#[test]
fn the_current_revision_is_made_again_after_a_delete() {
    let env = Env::new();
    env.apply(&manifest("img:v1", "")).unwrap();
    env.apply(&manifest("img:v2", "")).unwrap();
    delete_revision(&env.store, "default", "svc-00002", false, &Default::default()).unwrap();
    delete_revision(&env.store, "default", "svc-00001", false, &Default::default()).unwrap();
    env.reconcile();
    assert_eq!(env.revisions(), ["svc-00002"]);
}

#[test]
fn a_stale_resource_version_is_refused() {
    let env = Env::new();
    env.apply(&manifest("img:v1", "")).unwrap();
    let yaml = manifest("img:v2", "").replace("  name: svc\n", "  name: svc\n  resourceVersion: \"1\"\n");
    let err = env.apply(&yaml).unwrap_err();
    assert!(matches!(err, ApplyError::Store(StoreError::Conflict { .. })), "{err}");
    assert_eq!(env.revisions(), ["svc-00001"]);
}

#[test]
fn routing_state_is_marked_and_inactive_revisions_are_collected() {
    use revisor_controller::gc::{collect, GcConfig, ROUTING_STATE, ROUTING_STATE_MODIFIED};
    let env = Env::new();
    let svc = |image: &str| {
        format!("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: svc\nspec:\n  template:\n    spec:\n      containers:\n        - image: {image}\n")
    };
    for (i, image) in ["img:1", "img:2", "img:3"].iter().enumerate() {
        env.apply(&svc(image)).unwrap();
        env.set_ready(&format!("svc-0000{}", i + 1), ConditionStatus::True);
        env.reconcile();
    }
    let rev = |n: &str| env.store.get::<Revision>("default", n).unwrap().unwrap();
    assert_eq!(rev("svc-00003").metadata.label(ROUTING_STATE), Some("active"));
    assert_eq!(rev("svc-00001").metadata.label(ROUTING_STATE), Some("reserve"));
    assert!(rev("svc-00001").metadata.annotation(ROUTING_STATE_MODIFIED).is_some());
    let defaults = collect(&env.store, &GcConfig::default(), Utc::now()).unwrap();
    assert_eq!(defaults, 0, "young revisions are retained by default");
    let immediate = GcConfig {
        retain_since_create_time: None,
        retain_since_last_active_time: None,
        min_non_active_revisions: 1,
        max_non_active_revisions: Some(1),
    };
    assert_eq!(collect(&env.store, &immediate, Utc::now()).unwrap(), 1);
    let mut left = env.revisions();
    left.sort();
    assert_eq!(
        left,
        vec!["svc-00002", "svc-00003"],
        "the latest stays, and min-non-active keeps the newer inactive one"
    );
    let events = env.store.events("default", "svc").unwrap();
    assert!(events
        .iter()
        .any(|e| e.reason == "GarbageCollected" && e.object == "Revision/svc-00001"));
}

/// A service with a gradual rollout over 5 s.
fn gradual(image: &str) -> String {
    format!("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: svc\n  annotations:\n    serving.knative.dev/rollout-duration: \"5s\"\nspec:\n  template:\n    spec:\n      containers:\n        - image: {image}\n")
}

/// The service's `status.traffic`: (revision, percent).
fn status_split(env: &Env) -> Vec<(String, i64)> {
    env.svc()
        .status
        .unwrap()
        .traffic
        .iter()
        .map(|t| (t.revision_name.clone().unwrap_or_default(), t.percent()))
        .collect()
}

#[test]
fn rollout_duration_moves_traffic_gradually_one_percent_first() {
    let env = Env::new();
    let svc = gradual;
    let at = |env: &Env, t: chrono::DateTime<Utc>| {
        env.store
            .write(|tx| reconcile_service(tx, "default", "svc", &ControllerConfig::default(), t))
            .unwrap();
        status_split(env)
    };
    env.apply(&svc("img:1")).unwrap();
    env.set_ready("svc-00001", ConditionStatus::True);
    assert_eq!(at(&env, Utc::now()), vec![("svc-00001".to_string(), 100)]);
    env.apply(&svc("img:2")).unwrap();
    env.set_ready("svc-00002", ConditionStatus::True);
    let t0 = Utc::now();
    assert_eq!(
        at(&env, t0),
        vec![("svc-00001".to_string(), 99), ("svc-00002".to_string(), 1)],
        "1% first"
    );
    let s = |secs: i64| t0 + chrono::Duration::seconds(secs);
    assert_eq!(
        at(&env, s(1)),
        vec![("svc-00001".to_string(), 74), ("svc-00002".to_string(), 26)]
    );
    at(&env, s(2));
    at(&env, s(3));
    assert_eq!(
        at(&env, s(4)),
        vec![("svc-00002".to_string(), 100)],
        "all moved within the duration"
    );
    let events = env.store.events("default", "svc").unwrap();
    assert!(events.iter().any(|e| e.reason == "GradualRollout"), "{events:?}");
}

/// The running controller takes each gradual step when it falls due, with nothing else changing (it
/// waits for the step's time, not for a poll of every Configuration).
#[test]
fn the_running_controller_moves_gradual_traffic_by_itself() {
    let env = Env::new();
    let svc = gradual;
    env.apply(&svc("img:1")).unwrap();
    env.set_ready("svc-00001", ConditionStatus::True);
    env.apply(&svc("img:2")).unwrap();
    env.set_ready("svc-00002", ConditionStatus::True);
    let split = status_split;
    assert_eq!(split(&env)[1], ("svc-00002".to_string(), 1), "1% first");
    revisor_controller::Controller::new(env.store.clone(), ControllerConfig::default()).spawn();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = Vec::new();
    while std::time::Instant::now() < until {
        let now = split(&env);
        if seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        if now == vec![("svc-00002".to_string(), 100)] {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        seen.last(),
        Some(&vec![("svc-00002".to_string(), 100)]),
        "all traffic moved within 20 s: {seen:?}"
    );
    assert!(seen.len() >= 4, "in steps a second apart: {seen:?}");
}

/// Server-side apply's rule for `spec.traffic` (issue 12): what `revisor traffic` set survives an apply
/// whose manifest leaves traffic out; a manifest declaring other traffic conflicts unless forced; the
/// applier's own traffic, later left out, goes back to the default.
#[test]
fn apply_keeps_traffic_that_another_manager_set() {
    let env = Env::new();
    env.apply(&manifest("img:v1", "")).unwrap();
    env.apply(&manifest("img:v2", "")).unwrap();
    let split = "  traffic:\n    - revisionName: svc-00001\n      percent: 90\n      tag: old\n    - latestRevision: true\n      percent: 10\n";
    let write = |yaml: &str, writer: Writer| {
        let doc = &read_documents(yaml).unwrap()[0];
        if writer.mode == ApplyMode::Apply {
            return server_side_apply(&env.store, &doc.value, &Defaults::default(), &writer, false).map(|(o, _)| o);
        }
        let svc = admit_service(&doc.value, &Defaults::default()).unwrap();
        apply_service(&env.store, svc, &writer, false).map(|(o, _)| o)
    };
    let traffic_cmd = Writer {
        mode: ApplyMode::Replace,
        manager: "revisor-traffic".into(),
        force: false,
    };
    assert_eq!(
        write(&manifest("img:v2", split), traffic_cmd).unwrap(),
        ApplyOutcome::Configured
    );
    let set = env.svc().spec.traffic;
    assert_eq!(set.as_ref().map(Vec::len), Some(2));
    assert_eq!(env.apply(&manifest("img:v2", "")).unwrap(), ApplyOutcome::Unchanged);
    assert_eq!(env.svc().spec.traffic, set);
    // A template change through apply keeps the traffic too.
    assert_eq!(env.apply(&manifest("img:v3", "")).unwrap(), ApplyOutcome::Configured);
    assert_eq!(env.svc().spec.traffic, set);

    let all_latest = "  traffic:\n    - latestRevision: true\n      percent: 100\n";
    match env.apply(&manifest("img:v3", all_latest)) {
        Err(ApplyError::FieldConflicts(c)) => assert_eq!(c[0].manager, "revisor-traffic"),
        other => panic!("want a conflict, got {other:?}"),
    }
    assert_eq!(env.svc().spec.traffic, set, "a conflict changes nothing");
    let forced = Writer {
        force: true,
        ..Writer::apply()
    };
    assert_eq!(
        write(&manifest("img:v3", all_latest), forced).unwrap(),
        ApplyOutcome::Configured
    );
    assert_eq!(env.svc().spec.traffic.map(|t| t.len()), Some(1));

    // Now apply owns traffic: leaving it out again means the default.
    assert_eq!(env.apply(&manifest("img:v3", split)).unwrap(), ApplyOutcome::Configured);
    assert_eq!(env.apply(&manifest("img:v3", "")).unwrap(), ApplyOutcome::Configured);
    let t = env.svc().spec.traffic.unwrap();
    assert_eq!(
        (t.len(), t[0].latest_revision, t[0].percent),
        (1, Some(true), Some(100))
    );
}

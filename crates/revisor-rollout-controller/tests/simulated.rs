//! Whole rollouts on a simulated clock: the controller's own run loop over an in-memory world and
//! fake providers (counters that grow with the clock, webhooks that answer after a delay), with
//! tokio's time paused so that minutes pass in milliseconds and every run is the same.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use revisor_api::rollout::{phase, Webhook};
use revisor_api::{Revision, Rollout, Service, TrafficTarget};
use revisor_rollout::{Counters, Window};
use revisor_rollout_controller::{Change, Clock, Commit, Key, Load, Providers, RolloutController, TokioClock, World};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

const NS: &str = "default";

/// One write the controller made.
#[derive(Debug, Clone)]
struct Write {
    at: DateTime<Utc>,
    rollout: String,
    phase: revisor_api::rollout::Phase,
    weight: u32,
    traffic: Option<Vec<TrafficTarget>>,
}

#[derive(Default)]
struct State {
    rollouts: BTreeMap<String, Rollout>,
    services: BTreeMap<String, Service>,
    revisions: BTreeMap<String, Revision>,
    version: u64,
    writes: Vec<Write>,
    subscribers: Vec<UnboundedSender<Change>>,
}

impl State {
    fn tell(&mut self, c: Change) {
        self.subscribers.retain(|s| s.send(c.clone()).is_ok());
    }
}

/// Shared state and the clock; clones share the state.
struct Shared<T> {
    state: Arc<Mutex<T>>,
    clock: TokioClock,
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            state: self.state.clone(),
            clock: self.clock,
        }
    }
}

impl<T: Default> Shared<T> {
    fn new(clock: TokioClock) -> Self {
        Shared {
            state: Arc::default(),
            clock,
        }
    }
}

/// The world in memory; clones share it (a restarted controller finds what the last one wrote).
type FakeWorld = Shared<State>;

impl FakeWorld {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// A Service whose latest revision is `<name>-0000<n>`, ready with one replica.
    fn deploy(&self, service: &str, n: u32) {
        let rev = format!("{service}-{n:05}");
        let revision: Revision = serde_norway::from_str(&format!(
            "apiVersion: serving.knative.dev/v1\nkind: Revision\nmetadata: {{name: {rev}, namespace: {NS}}}\n\
             spec: {{containers: [{{image: model}}]}}\n\
             status: {{actualReplicas: 1, conditions: [{{type: Ready, status: 'True'}}]}}\n"
        ))
        .unwrap();
        let mut st = self.state();
        st.revisions.insert(rev.clone(), revision);
        let svc = st.services.entry(service.to_string()).or_insert_with(|| {
            serde_norway::from_str(&format!(
                "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: {service}, namespace: {NS}}}\n\
                 spec: {{template: {{spec: {{containers: [{{image: model}}]}}}}}}\n"
            ))
            .unwrap()
        });
        svc.status
            .get_or_insert_with(Default::default)
            .latest_created_revision_name = Some(rev);
        st.tell(Change::Service {
            namespace: NS.into(),
            name: service.into(),
        });
    }

    fn apply(&self, r: Rollout) {
        let mut st = self.state();
        st.version += 1;
        let mut r = r;
        r.metadata.resource_version = Some(st.version.to_string());
        let key = Key::of(&r);
        st.rollouts.insert(r.metadata.name.clone(), r);
        st.tell(Change::Rollout(key));
    }

    fn status(&self, name: &str) -> revisor_api::rollout::RolloutStatus {
        self.state().rollouts[name].status()
    }

    /// When `name` was first written as promoted after `t`.
    fn promoted_after(&self, name: &str, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let writes = self.writes(name);
        writes
            .iter()
            .find(|w| w.phase == phase::SUCCEEDED && w.at > t)
            .map(|w| w.at)
    }

    fn writes(&self, name: &str) -> Vec<Write> {
        self.state()
            .writes
            .iter()
            .filter(|w| w.rollout == name)
            .cloned()
            .collect()
    }

    /// The service's split: (revision or latest, percent, tag).
    fn split(&self, service: &str) -> Vec<(String, i64, Option<String>)> {
        let st = self.state();
        st.services[service]
            .spec
            .traffic()
            .iter()
            .map(|t| {
                let rev = t.revision_name.clone().unwrap_or_else(|| "@latest".into());
                (rev, t.percent(), t.tag.clone())
            })
            .collect()
    }
}

impl World for FakeWorld {
    async fn rollouts(&self) -> Result<Vec<Rollout>, String> {
        Ok(self.state().rollouts.values().cloned().collect())
    }

    async fn rollout(&self, key: &Key) -> Result<Option<Rollout>, String> {
        Ok(self.state().rollouts.get(&key.name).cloned())
    }

    async fn service(&self, _namespace: &str, name: &str) -> Result<Option<Service>, String> {
        Ok(self.state().services.get(name).cloned())
    }

    async fn revision(&self, _namespace: &str, name: &str) -> Result<Option<Revision>, String> {
        Ok(self.state().revisions.get(name).cloned())
    }

    async fn commit(&self, c: Commit) -> Result<bool, String> {
        let at = self.clock.now();
        let mut st = self.state();
        let name = c.rollout.metadata.name.clone();
        let current = st.rollouts.get(&name).and_then(|r| r.metadata.resource_version.clone());
        if current != c.rollout.metadata.resource_version {
            return Ok(false);
        }
        st.version += 1;
        let version = st.version.to_string();
        let r = st.rollouts.get_mut(&name).unwrap();
        r.status = Some(c.status.clone());
        r.metadata.resource_version = Some(version);
        let service = r.spec.service_ref.name.clone();
        if let Some(t) = &c.traffic {
            st.services.get_mut(&service).unwrap().spec.traffic = Some(t.clone());
        }
        st.writes.push(Write {
            at,
            rollout: name.clone(),
            phase: c.status.phase,
            weight: c.status.canary_weight,
            traffic: c.traffic,
        });
        st.tell(Change::Rollout(Key::new(NS, name)));
        Ok(true)
    }

    fn load_target(&self, r: &Rollout, tag: &str) -> Option<(String, Option<String>)> {
        Some((format!("http://{tag}-{}.test", r.spec.service_ref.name), None))
    }

    fn subscribe(&self) -> UnboundedReceiver<Change> {
        let (tx, rx) = unbounded_channel();
        self.state().subscribers.push(tx);
        rx
    }
}

/// How a revision behaves: requests per second from the moment it was deployed, and the share of them
/// that fail.
#[derive(Clone, Copy)]
struct Behaviour {
    rps: f64,
    errors: f64,
}

/// How a webhook answers: after a delay, 2xx from a given time on.
#[derive(Clone)]
struct HookBehaviour {
    delay: Duration,
    ok_from: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct Fakes {
    revisions: BTreeMap<String, (DateTime<Utc>, Behaviour)>,
    hooks: BTreeMap<String, HookBehaviour>,
    /// Each webhook call: (name, started, answered).
    calls: Vec<(String, DateTime<Utc>, DateTime<Utc>)>,
    loads: BTreeMap<Key, Option<Load>>,
}

type FakeProviders = Shared<Fakes>;

impl FakeProviders {
    fn behave(&self, revision: &str, b: Behaviour) {
        let now = self.clock.now();
        self.state.lock().unwrap().revisions.insert(revision.into(), (now, b));
    }

    fn hook(&self, name: &str, h: HookBehaviour) {
        self.state.lock().unwrap().hooks.insert(name.into(), h);
    }

    fn calls(&self, name: &str) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let f = self.state.lock().unwrap();
        f.calls.iter().filter(|c| c.0 == name).map(|c| (c.1, c.2)).collect()
    }
}

impl Providers for FakeProviders {
    async fn counters(&self, _namespace: &str, revision: &str) -> Option<Counters> {
        let (since, b) = *self.state.lock().unwrap().revisions.get(revision)?;
        let secs = (self.clock.now() - since).num_milliseconds().max(0) as f64 / 1000.0;
        let n = (b.rps * secs).floor() as u64;
        let failed = (n as f64 * b.errors).round() as u64;
        Some(Counters {
            requests: [0, n - failed, 0, 0, failed],
            bounds_ms: vec![10.0, 100.0, 1000.0],
            latency_counts: vec![n, 0, 0, 0],
            ..Default::default()
        })
    }

    async fn window(&self, _namespace: &str, _revision: &str, _seconds: f64) -> Option<Window> {
        None
    }

    async fn query(&self, _address: &str, _query: &str) -> Result<Option<f64>, String> {
        Ok(Some(0.0))
    }

    async fn webhook(&self, hook: &Webhook, _payload: &serde_json::Value) -> Result<(), String> {
        let started = self.clock.now();
        let b = self.state.lock().unwrap().hooks.get(&hook.name).cloned();
        let b = b.unwrap_or(HookBehaviour {
            delay: Duration::ZERO,
            ok_from: Some(started),
        });
        tokio::time::sleep(b.delay).await;
        let answered = self.clock.now();
        self.state
            .lock()
            .unwrap()
            .calls
            .push((hook.name.clone(), started, answered));
        match b.ok_from {
            Some(t) if answered >= t => Ok(()),
            _ => Err(format!("{} answered 500", hook.name)),
        }
    }

    fn load(&self, key: &Key, load: Option<Load>) {
        self.state.lock().unwrap().loads.insert(key.clone(), load);
    }
}

fn rollout(name: &str, service: &str, extra_analysis: &str) -> Rollout {
    serde_norway::from_str(&format!(
        "apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  serviceRef: {{name: {service}}}\n  strategy:\n    canary:\n      steps:\n\
         \x20       - setWeight: 20\n        - analysis: {{count: 1}}\n        - setWeight: 50\n        - analysis: {{count: 1}}\n\
         \x20 analysis:\n    interval: 10s\n    metrics:\n      - name: success-rate\n        thresholdRange: {{min: 99}}\n{extra_analysis}"
    ))
    .unwrap()
}

struct Rig {
    clock: TokioClock,
    world: FakeWorld,
    providers: FakeProviders,
    task: tokio::task::JoinHandle<()>,
}

impl Rig {
    fn start() -> Rig {
        let clock = TokioClock::starting_at(Utc::now());
        let world = FakeWorld::new(clock);
        let providers = FakeProviders::new(clock);
        let task = tokio::spawn(RolloutController::new(world.clone(), providers.clone(), clock).run());
        Rig {
            clock,
            world,
            providers,
            task,
        }
    }

    /// Stops this controller and starts another over the same world and providers (a restart).
    fn restart(&mut self) {
        self.task.abort();
        let c = RolloutController::new(self.world.clone(), self.providers.clone(), self.clock);
        self.task = tokio::spawn(c.run());
    }

    /// `service` with a first revision and a Rollout `name` over it, promoted to stable.
    async fn service_with_rollout(&self, name: &str, service: &str, extra_analysis: &str) {
        self.world.deploy(service, 1);
        self.providers
            .behave(&format!("{service}-00001"), Behaviour { rps: 50.0, errors: 0.0 });
        self.world.apply(rollout(name, service, extra_analysis));
        wait(Duration::from_secs(1)).await;
        let st = self.world.status(name);
        assert_eq!(
            st.stable_revision.as_deref(),
            Some(&*format!("{service}-00001")),
            "{st:?}"
        );
    }

    /// Webhook `name` answers after `delay`, 2xx from `secs` seconds from now on (which it returns).
    fn hook_ok_after(&self, name: &str, delay: Duration, secs: i64) -> DateTime<Utc> {
        let from = self.clock.now() + chrono::Duration::seconds(secs);
        self.providers.hook(
            name,
            HookBehaviour {
                delay,
                ok_from: Some(from),
            },
        );
        from
    }

    /// Deploys `service`'s revision `n` behaving as `b`.
    fn canary(&self, service: &str, n: u32, b: Behaviour) {
        self.providers.behave(&format!("{service}-{n:05}"), b);
        self.world.deploy(service, n);
    }
}

async fn wait(d: Duration) {
    tokio::time::sleep(d).await;
}

const GOOD: Behaviour = Behaviour { rps: 50.0, errors: 0.0 };
const BAD: Behaviour = Behaviour { rps: 50.0, errors: 0.2 };

#[tokio::test(start_paused = true)]
async fn a_good_canary_goes_through_its_steps_and_is_promoted() {
    let rig = Rig::start();
    rig.service_with_rollout("r", "svc", "").await;
    rig.canary("svc", 2, GOOD);
    wait(Duration::from_secs(600)).await;
    let st = rig.world.status("r");
    assert_eq!(st.phase, phase::SUCCEEDED, "{st:?}");
    assert_eq!(st.stable_revision.as_deref(), Some("svc-00002"));
    assert_eq!(
        rig.world.split("svc"),
        vec![
            ("svc-00002".into(), 100, None),
            ("svc-00001".into(), 0, Some("previous".into()))
        ],
        "promoted, the previous revision kept warm under its tag"
    );
    let weights: Vec<u32> = rig
        .world
        .writes("r")
        .iter()
        .filter(|w| w.traffic.is_some())
        .map(|w| w.weight)
        .collect();
    assert_eq!(
        weights,
        vec![0, 20, 50, 0],
        "traffic moved at the start, at each weight step and at the promotion"
    );
    rig.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_bad_canary_is_rolled_back_within_seconds() {
    let rig = Rig::start();
    rig.service_with_rollout("r", "svc", "").await;
    let deployed = rig.clock.now();
    rig.canary("svc", 2, BAD);
    wait(Duration::from_secs(120)).await;
    let st = rig.world.status("r");
    assert_eq!(st.phase, phase::ROLLED_BACK, "{st:?}");
    assert_eq!(st.rejected_revision.as_deref(), Some("svc-00002"));
    assert_eq!(rig.world.split("svc"), vec![("svc-00001".into(), 100, None)]);
    let rolled_back = rig
        .world
        .writes("r")
        .iter()
        .find(|w| w.phase == phase::ROLLED_BACK)
        .map(|w| w.at)
        .unwrap();
    let took = (rolled_back - deployed).num_milliseconds();
    assert!(took < 10_000, "rolled back {took} ms after the canary came");
    rig.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_new_revision_starts_a_rollout_at_once_without_polling() {
    let rig = Rig::start();
    rig.service_with_rollout("r", "svc", "").await;
    // An idle Rollout is not stepped again until something changes.
    let before = rig.world.writes("r").len();
    wait(Duration::from_secs(20)).await;
    assert_eq!(rig.world.writes("r").len(), before);
    let deployed = rig.clock.now();
    rig.canary("svc", 2, GOOD);
    wait(Duration::from_millis(50)).await;
    let w = rig.world.writes("r");
    let first = w.iter().find(|w| w.phase == phase::PROGRESSING).expect("progressing");
    assert!(
        (first.at - deployed).num_milliseconds() < 50,
        "{:?}",
        first.at - deployed
    );
    rig.task.abort();
}

const HOOKS: &str = "    webhooks:\n      - {name: gate, type: confirm-promotion, url: 'http://gate'}\n      - {name: smoke, type: pre-rollout, url: 'http://smoke'}\n      - {name: told, type: post-rollout, url: 'http://told'}\n";

#[tokio::test(start_paused = true)]
async fn webhooks_gate_the_promotion_and_are_told_the_outcome() {
    let rig = Rig::start();
    let opens = rig.hook_ok_after("gate", Duration::from_millis(20), 300);
    rig.service_with_rollout("r", "svc", HOOKS).await;
    rig.canary("svc", 2, GOOD);
    wait(Duration::from_secs(200)).await;
    let st = rig.world.status("r");
    assert_eq!(st.phase, phase::PROGRESSING, "the gate holds the promotion: {st:?}");
    assert!(!rig.providers.calls("gate").is_empty());
    assert_eq!(rig.providers.calls("smoke").len(), 1, "pre-rollout is called once");
    assert!(rig.providers.calls("told").is_empty());
    wait(Duration::from_secs(120)).await;
    let st = rig.world.status("r");
    assert_eq!(st.phase, phase::SUCCEEDED, "{st:?}");
    let promoted = rig.world.promoted_after("r", opens);
    assert!(
        promoted.is_some_and(|at| (at - opens).num_seconds() <= 2),
        "{promoted:?} vs {opens}"
    );
    assert_eq!(rig.providers.calls("told").len(), 1, "post-rollout is told once");
    rig.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_rollback_webhook_rolls_a_canary_back() {
    let rig = Rig::start();
    rig.hook_ok_after("panic-button", Duration::ZERO, 15);
    let hooks = "    webhooks:\n      - {name: panic-button, type: rollback, url: 'http://button'}\n";
    rig.service_with_rollout("r", "svc", hooks).await;
    rig.canary("svc", 2, GOOD);
    wait(Duration::from_secs(30)).await;
    let st = rig.world.status("r");
    assert_eq!(st.phase, phase::ROLLED_BACK, "{st:?}");
    rig.task.abort();
}

/// The time from the canary's deployment to its promotion, for `svc-b`'s rollout, with or without a
/// rollout beside it whose every analysis run waits 10 s on a webhook.
async fn promotion_time(with_slow_neighbour: bool) -> (i64, Vec<(DateTime<Utc>, DateTime<Utc>)>) {
    let rig = Rig::start();
    if with_slow_neighbour {
        rig.providers.hook(
            "slow",
            HookBehaviour {
                delay: Duration::from_secs(10),
                ok_from: Some(rig.clock.now()),
            },
        );
        let hooks = "    webhooks:\n      - {name: slow, type: rollout, url: 'http://slow', timeout: 15s}\n";
        rig.service_with_rollout("a", "svc-a", hooks).await;
    }
    rig.service_with_rollout("b", "svc-b", "").await;
    if with_slow_neighbour {
        rig.canary("svc-a", 2, GOOD);
        wait(Duration::from_secs(15)).await;
    }
    let deployed = rig.clock.now();
    rig.canary("svc-b", 2, GOOD);
    wait(Duration::from_secs(600)).await;
    let st = rig.world.status("b");
    assert_eq!(st.phase, phase::SUCCEEDED, "{st:?}");
    let promoted = rig.world.promoted_after("b", deployed).unwrap();
    let calls = rig.providers.calls("slow");
    rig.task.abort();
    ((promoted - deployed).num_milliseconds(), calls)
}

#[tokio::test(start_paused = true)]
async fn a_slow_webhook_on_one_rollout_delays_no_other() {
    let (alone, _) = promotion_time(false).await;
    let (beside, calls) = promotion_time(true).await;
    assert!(
        calls.len() >= 2,
        "the neighbour's webhook was called during its analysis: {calls:?}"
    );
    assert!(calls.iter().all(|(s, a)| (*a - *s).num_seconds() >= 10));
    assert!(
        (beside - alone).abs() <= 1000,
        "promoted in {alone} ms alone, {beside} ms beside a rollout waiting 10 s on a webhook"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restarted_controller_carries_on_where_the_last_one_stopped() {
    let mut rig = Rig::start();
    rig.service_with_rollout("r", "svc", "").await;
    rig.canary("svc", 2, GOOD);
    wait(Duration::from_secs(3)).await;
    let st = rig.world.status("r");
    assert_eq!((st.phase, st.canary_weight), (phase::PROGRESSING, 20), "{st:?}");
    let analysed = st.last_analysis_at;
    rig.restart();
    wait(Duration::from_secs(600)).await;
    let st = rig.world.status("r");
    assert_eq!(st.phase, phase::SUCCEEDED, "{st:?}");
    assert!(st.last_analysis_at > analysed, "analysis ran again after the restart");
    rig.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_load_generator_runs_while_the_canary_is_analysed_and_stops_after() {
    let rig = Rig::start();
    let load = "    loadTest: {rps: 5}\n";
    rig.service_with_rollout("r", "svc", load).await;
    rig.canary("svc", 2, GOOD);
    wait(Duration::from_secs(2)).await;
    let key = Key::new(NS, "r");
    let aimed = rig.providers.state.lock().unwrap().loads.get(&key).cloned().flatten();
    assert_eq!(aimed.map(|l| l.url), Some("http://canary-svc.test".to_string()));
    wait(Duration::from_secs(600)).await;
    assert_eq!(rig.world.status("r").phase, phase::SUCCEEDED);
    let aimed = rig.providers.state.lock().unwrap().loads.get(&key).cloned().flatten();
    assert_eq!(aimed, None, "stopped once the rollout ended");
    rig.task.abort();
}

//! The Rollout controller: a thread that, every quarter second (and at once when a Rollout changes),
//! steps every Rollout's state machine (revisor-rollout) with its Service's latest revision and, when
//! an analysis run is due, the canary's window from the data plane; then writes the Rollout's status,
//! the Service's traffic and the events. Where Rollouts, Services and Revisions live is a
//! `RolloutWorld`: locally the store (`StoreWorld`, one transaction per step, after which the
//! Service's own reconcile resolves the traffic and the backend moves requests); on Kubernetes the
//! cluster (revisor-kube).

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::Utc;
use revisor_api::meta::Conditions;
use revisor_api::rollout::{AnalysisBaseline, RolloutStatus};
use revisor_api::rollout::{LoadTest, Webhook};
use revisor_api::units::parse_go_duration;
use revisor_api::{ConditionStatus, Revision, Rollout, Service, TrafficTarget};
use revisor_rollout::{advance, hooks_due, CanaryState, Counters, Hooks, Input, Window};
use revisor_store::{Event, Kind, Store, StoreError};

/// Where analysis reads a revision's cumulative counters (locally the gateway; on Kubernetes,
/// Prometheus).
pub trait MetricsSource: Send + Sync {
    /// The revision's counters summed over every route to it; `None` if the data plane has not seen it.
    fn counters(&self, namespace: &str, revision: &str) -> Option<Counters>;
    /// The revision's window over the last `seconds`, for a source that computes windows itself
    /// (Prometheus: `increase()` over a range, which survives pods coming and going). `None`: the
    /// controller takes the difference of two readings of `counters`.
    fn window(&self, _namespace: &str, _revision: &str, _seconds: f64) -> Option<Window> {
        None
    }
}

/// One step's outcome to write.
pub struct Commit<'a> {
    pub rollout: &'a Rollout,
    pub status: &'a RolloutStatus,
    /// The Service's new `spec.traffic`, when it changed.
    pub traffic: Option<&'a [TrafficTarget]>,
    pub events: &'a [revisor_rollout::Event],
}

/// Where the Rollout controller finds Rollouts, Services and Revisions and writes its decisions:
/// locally the store, on Kubernetes the cluster.
pub trait RolloutWorld: Send {
    fn rollouts(&mut self) -> Result<Vec<Rollout>, String>;
    fn service(&mut self, namespace: &str, name: &str) -> Result<Option<Service>, String>;
    fn revision(&mut self, namespace: &str, name: &str) -> Result<Option<Revision>, String>;
    /// Writes the Rollout's status, the Service's traffic and the events. `Ok(false)` when someone
    /// wrote the Rollout or the Service meanwhile: nothing is written and the step runs again.
    fn commit(&mut self, c: Commit<'_>) -> Result<bool, String>;
    /// Why this world cannot run `r` as written (say, a header route that the cluster's networking
    /// layer cannot express), if it cannot.
    fn refusal(&mut self, _r: &Rollout) -> Option<String> {
        None
    }
    /// Where the load generator sends requests for `tag`'s revision: the URL and a Host header.
    fn load_target(&mut self, r: &Rollout, tag: &str) -> Option<(String, Option<String>)>;
    /// The world's own periodic work (locally: Knative's gradual rollouts).
    fn housekeeping(&mut self) {}
    /// Sleeps up to `d`, waking early when a Rollout changes; `false` once the world is gone.
    fn wait(&mut self, d: Duration) -> bool;
}

const TICK: Duration = Duration::from_millis(250);

/// The canary's and the stable revision's cumulative counters now.
type Readings = (Counters, Option<Counters>);

pub struct RolloutController {
    world: Box<dyn RolloutWorld>,
    metrics: Arc<dyn MetricsSource>,
    /// The last answer of each (namespace, rollout, webhook kind), reused for a second.
    hook_cache: HashMap<(String, String, &'static str), (Instant, HookAnswer)>,
    /// Made on the controller's own thread (a blocking client cannot be made inside an async runtime).
    http: Option<reqwest::blocking::Client>,
    /// Running load generators, by (namespace, rollout): the URL they aim at, and their stop flag.
    loads: HashMap<(String, String), (String, Arc<std::sync::atomic::AtomicBool>)>,
}

/// Sends the load test's requests to `base` (with `host` as the Host header, if any) until `stop`
/// turns true.
fn run_load(base: String, host: Option<String>, spec: LoadTest, stop: Arc<std::sync::atomic::AtomicBool>) {
    let http = reqwest::blocking::Client::new();
    let url = format!("{}{}", base.trim_end_matches('/'), spec.path.as_deref().unwrap_or("/"));
    let period = Duration::from_secs_f64(1.0 / spec.rps.unwrap_or(10).max(1) as f64);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let t = Instant::now();
        let mut req = match spec.method.as_deref() {
            Some("POST") => http.post(&url).body(spec.body.clone().unwrap_or_default()),
            _ => http.get(&url),
        }
        .timeout(Duration::from_secs(10));
        if let Some(h) = &host {
            req = req.header("host", h.as_str());
        }
        for (k, v) in &spec.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let _ = req.send().and_then(|r| r.bytes());
        if let Some(rest) = period.checked_sub(t.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

#[derive(Clone)]
enum HookAnswer {
    Confirm(Result<(), String>),
    Rollback(Option<String>),
}

/// Runs a metric's Prometheus query (its placeholders filled) and reads the scalar, or the first
/// sample of the vector; `Ok(None)` when the query has no data.
fn query_prometheus(
    http: &reqwest::blocking::Client,
    q: &revisor_api::rollout::PrometheusQuery,
    r: &Rollout,
) -> Result<Option<f64>, String> {
    let st = r.status();
    let interval = r
        .spec
        .analysis
        .as_ref()
        .map(|a| a.interval())
        .unwrap_or(Duration::from_secs(30));
    let query = q
        .query
        .replace("{{revision}}", st.canary_revision.as_deref().unwrap_or(""))
        .replace("{{stable}}", st.stable_revision.as_deref().unwrap_or(""))
        .replace("{{namespace}}", &r.metadata.namespace)
        .replace("{{service}}", &r.spec.service_ref.name)
        .replace("{{interval}}", &format!("{}s", interval.as_secs().max(1)));
    let url = format!("{}/api/v1/query", q.address.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .query(&[("query", query.as_str())])
        .timeout(Duration::from_secs(10))
        .send()
        .map_err(|e| format!("Prometheus at {}: {e}", q.address))?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .map_err(|e| format!("Prometheus at {}: not JSON: {e}", q.address))?;
    if !status.is_success() || body["status"] != "success" {
        return Err(format!(
            "Prometheus at {} refused {query:?}: {}",
            q.address,
            body["error"].as_str().unwrap_or(status.as_str())
        ));
    }
    let data = &body["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => Some(&data["result"]),
        Some("vector") => data["result"].get(0).map(|s| &s["value"]),
        other => return Err(format!("Prometheus answered a {other:?}, not a scalar or vector")),
    };
    match sample.and_then(|s| s.get(1)).and_then(|v| v.as_str()) {
        None => Ok(None),
        Some(v) => v
            .parse::<f64>()
            .map(Some)
            .map_err(|_| format!("Prometheus answered {v:?}, not a number")),
    }
}

/// Calls one webhook with Flagger's payload; Ok on 2xx.
fn call_hook(http: &reqwest::blocking::Client, r: &Rollout, hook: &Webhook) -> Result<(), String> {
    let timeout = hook
        .timeout
        .as_deref()
        .and_then(|t| parse_go_duration(t).ok())
        .unwrap_or(Duration::from_secs(10));
    let payload = serde_json::json!({
        "name": r.metadata.name,
        "namespace": r.metadata.namespace,
        "phase": r.status().phase,
        "metadata": hook.metadata,
    });
    match http.post(&hook.url).timeout(timeout).json(&payload).send() {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => {
            let code = resp.status().as_u16();
            let body: String = resp.text().unwrap_or_default().chars().take(200).collect();
            Err(format!("{} answered {code}: {}", hook.name, body.trim()))
        }
        Err(e) => Err(format!("{}: {e}", hook.name)),
    }
}

fn hooks_of<'a>(r: &'a Rollout, kind: &str) -> Vec<&'a Webhook> {
    r.spec
        .analysis
        .iter()
        .flat_map(|a| a.webhooks.iter())
        .filter(|w| w.type_ == kind)
        .collect()
}

/// The local world: Rollouts, Services and Revisions in the store; each step's writes in one
/// transaction; the load generator aims at the gateway with the tag's host.
pub struct StoreWorld {
    store: Store,
    config: crate::ControllerConfig,
    rx: tokio::sync::broadcast::Receiver<revisor_store::Change>,
}

impl StoreWorld {
    pub fn new(store: Store, config: crate::ControllerConfig) -> Self {
        let rx = store.subscribe();
        StoreWorld { store, config, rx }
    }
}

impl RolloutWorld for StoreWorld {
    fn rollouts(&mut self) -> Result<Vec<Rollout>, String> {
        self.store.list::<Rollout>(None).map_err(|e| e.to_string())
    }

    fn service(&mut self, namespace: &str, name: &str) -> Result<Option<Service>, String> {
        self.store.get::<Service>(namespace, name).map_err(|e| e.to_string())
    }

    fn revision(&mut self, namespace: &str, name: &str) -> Result<Option<Revision>, String> {
        self.store.get::<Revision>(namespace, name).map_err(|e| e.to_string())
    }

    fn commit(&mut self, c: Commit<'_>) -> Result<bool, String> {
        let r = c.rollout;
        let (ns, service) = (r.metadata.namespace.clone(), r.spec.service_ref.name.clone());
        let result = self.store.write(|tx| {
            let mut next = r.clone();
            next.status = Some(c.status.clone());
            tx.update(next)?;
            if let Some(traffic) = c.traffic {
                if let Some(mut s) = tx.get::<Service>(&ns, &service)? {
                    s.spec.traffic = Some(traffic.to_vec());
                    s.metadata.generation = Some(s.generation() + 1);
                    tx.update(s)?;
                }
            }
            for e in c.events {
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

    fn load_target(&mut self, r: &Rollout, tag: &str) -> Option<(String, Option<String>)> {
        let host = format!(
            "{tag}-{}.{}.{}",
            r.spec.service_ref.name, r.metadata.namespace, self.config.domain
        );
        let gateway = std::net::SocketAddr::new(self.config.gateway_ip, self.config.gateway_port);
        Some((format!("http://{gateway}"), Some(host)))
    }

    /// Reconciles the services whose gradual rollout (Knative's `rollout-duration`) has a step due.
    fn housekeeping(&mut self) {
        let Ok(configs) = self.store.list::<revisor_api::Configuration>(None) else {
            return;
        };
        let now = Utc::now();
        for cfg in configs {
            let due = cfg
                .metadata
                .annotation(crate::reconcile::GRADUAL_STATE)
                .and_then(|v| serde_json::from_str::<revisor_traffic::gradual::Gradual>(v).ok())
                .is_some_and(|g| g.in_progress() && g.next_step_ms <= now.timestamp_millis());
            if due {
                let (ns, name) = (&cfg.metadata.namespace, &cfg.metadata.name);
                let result = self
                    .store
                    .write(|tx| crate::reconcile_service(tx, ns, name, &self.config, now));
                if let Err(e) = result {
                    tracing::warn!("gradual rollout of {ns}/{name}: {e}");
                }
            }
        }
    }

    fn wait(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            match self.rx.try_recv() {
                Ok(c) if c.kind == Kind::Rollout => return true,
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::TryRecvError::Closed) => return false,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        true
    }
}

impl RolloutController {
    /// The local controller: Rollouts in `store`, windows from `metrics` (the gateway).
    pub fn new(store: Store, metrics: Arc<dyn MetricsSource>, config: crate::ControllerConfig) -> Self {
        Self::with_world(Box::new(StoreWorld::new(store, config)), metrics)
    }

    pub fn with_world(world: Box<dyn RolloutWorld>, metrics: Arc<dyn MetricsSource>) -> Self {
        RolloutController {
            world,
            metrics,
            hook_cache: HashMap::new(),
            http: None,
            loads: HashMap::new(),
        }
    }

    /// The webhooks due before this step, called (or their answer of the last second reused).
    fn hooks(&mut self, r: &Rollout, latest: Option<&str>, analysing: bool) -> Hooks {
        let mut out = Hooks::default();
        let has_hooks = r.spec.analysis.as_ref().is_some_and(|a| !a.webhooks.is_empty());
        if !has_hooks {
            return out;
        }
        let http = self.http.get_or_insert_with(reqwest::blocking::Client::new).clone();
        for kind in hooks_due(r, latest) {
            let key = (r.metadata.namespace.clone(), r.metadata.name.clone(), kind);
            let fresh = self
                .hook_cache
                .get(&key)
                .filter(|(at, _)| at.elapsed() < Duration::from_secs(1))
                .map(|(_, a)| a.clone());
            let answer = fresh.unwrap_or_else(|| {
                let hooks = hooks_of(r, kind);
                let a = if kind == "rollback" {
                    HookAnswer::Rollback(
                        hooks
                            .iter()
                            .find(|h| call_hook(&http, r, h).is_ok())
                            .map(|h| h.name.clone()),
                    )
                } else {
                    HookAnswer::Confirm(hooks.iter().try_for_each(|h| call_hook(&http, r, h)))
                };
                self.hook_cache.insert(key, (Instant::now(), a.clone()));
                a
            });
            match (kind, answer) {
                ("confirm-rollout", HookAnswer::Confirm(a)) => out.confirm_rollout = Some(a),
                ("pre-rollout", HookAnswer::Confirm(a)) => out.pre_rollout = Some(a),
                ("confirm-promotion", HookAnswer::Confirm(a)) => out.confirm_promotion = Some(a),
                ("rollback", HookAnswer::Rollback(a)) => out.rollback = a,
                _ => {}
            }
        }
        if analysing {
            out.rollout = hooks_of(r, "rollout")
                .into_iter()
                .map(|h| (h.name.clone(), call_hook(&http, r, h)))
                .collect();
        }
        out
    }

    /// Keeps the rollout's load generator running while a canary (or preview) is analysed, aimed at
    /// its tag; stops it otherwise.
    fn load(&mut self, r: &Rollout) {
        let key = (r.metadata.namespace.clone(), r.metadata.name.clone());
        let st = r.status();
        let active = matches!(st.phase.as_str(), "Progressing" | "Paused") && st.canary_revision.is_some();
        let spec = r.spec.analysis.as_ref().and_then(|a| a.load_test.clone());
        let tag = if r.spec.is_blue_green() && st.canary_weight < 100 {
            revisor_rollout::PREVIEW_TAG
        } else {
            revisor_rollout::CANARY_TAG
        };
        let wanted = match (active, spec) {
            (true, Some(s)) => self.world.load_target(r, tag).map(|t| (t, s)),
            _ => None,
        };
        let aim = |t: &(String, Option<String>)| format!("{} {}", t.0, t.1.as_deref().unwrap_or(""));
        let running = self.loads.get(&key).map(|(h, _)| h.clone());
        if running == wanted.as_ref().map(|(t, _)| aim(t)) {
            return;
        }
        if let Some((_, stop)) = self.loads.remove(&key) {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some((target, spec)) = wanted {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let s = stop.clone();
            let aimed = aim(&target);
            std::thread::spawn(move || run_load(target.0, target.1, spec, s));
            self.loads.insert(key, (aimed, stop));
        }
    }

    /// Tells the post-rollout webhooks how a rollout ended (in the background; answers are ignored).
    fn post_rollout(&mut self, r: &Rollout) {
        let hooks: Vec<Webhook> = hooks_of(r, "post-rollout").into_iter().cloned().collect();
        if hooks.is_empty() {
            return;
        }
        let http = self.http.get_or_insert_with(reqwest::blocking::Client::new).clone();
        let r = r.clone();
        std::thread::spawn(move || {
            for h in &hooks {
                if let Err(e) = call_hook(&http, &r, h) {
                    tracing::warn!("post-rollout webhook: {e}");
                }
            }
        });
    }

    pub fn spawn(mut self) -> JoinHandle<()> {
        std::thread::Builder::new()
            .name("rollouts".into())
            .spawn(move || loop {
                self.tick();
                // Sleep a tick, waking early when a Rollout changes (an operator's request).
                if !self.world.wait(TICK) {
                    return;
                }
            })
            .expect("spawn the rollout controller")
    }

    /// Steps every Rollout once, and every gradual rollout that is due.
    pub fn tick(&mut self) {
        self.world.housekeeping();
        let rollouts = match self.world.rollouts() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("listing rollouts: {e}");
                return;
            }
        };
        self.loads.retain(|(ns, name), (_, stop)| {
            let keep = rollouts
                .iter()
                .any(|r| &r.metadata.namespace == ns && &r.metadata.name == name);
            if !keep {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            keep
        });
        for r in rollouts {
            if let Err(e) = self.step(r) {
                tracing::warn!("rollout step: {e}");
            }
        }
    }

    /// The canary's analysis window due now, if any (and stable's over the same time), from the
    /// baseline stored in the Rollout's status; a metrics source that computes windows itself
    /// (Prometheus) answers for the same span. Also the counters now, for sequential analysis, when
    /// the source has counters.
    fn windows(
        &self,
        r: &Rollout,
        now: chrono::DateTime<Utc>,
        canary: &str,
    ) -> (
        Option<revisor_rollout::baseline::Windows>,
        AnalysisBaseline,
        Option<Readings>,
    ) {
        let ns = &r.metadata.namespace;
        let counted = self.metrics.counters(ns, canary);
        let canary_now = counted.clone().unwrap_or_default();
        let stable = r.status().stable_revision;
        let stable_now = stable
            .as_ref()
            .map(|s| self.metrics.counters(ns, s).unwrap_or_default());
        let stable_reading = stable.as_deref().zip(stable_now.as_ref());
        let (windows, baseline) = revisor_rollout::next_window(r, now, (canary, &canary_now), stable_reading);
        let windows = windows.map(|(c, s)| {
            let own = |rev: &str, w: Window| self.metrics.window(ns, rev, w.seconds).unwrap_or(w);
            let s = s.zip(stable.as_deref()).map(|(w, name)| own(name, w));
            (own(canary, c), s)
        });
        (windows, baseline, counted.map(|c| (c, stable_now)))
    }

    /// Marks a Rollout this world cannot run as Failed with the reason (once). A canary it was running
    /// is rejected and all traffic goes back to stable: nothing judges the canary any more.
    fn refuse(&mut self, r: &Rollout, why: String) -> Result<(), String> {
        let mut st = r.status();
        if st.phase == revisor_api::rollout::phase::FAILED && st.message.as_deref() == Some(why.as_str()) {
            return Ok(());
        }
        let active = matches!(st.phase.as_str(), "Progressing" | "Paused");
        let back_to_stable = match (active, st.canary_revision.take(), &st.stable_revision) {
            (true, Some(canary), Some(stable)) => {
                st.rejected_revision = Some(canary);
                st.canary_weight = 0;
                st.header_route = None;
                st.mirror_percentage = None;
                Some(vec![TrafficTarget {
                    revision_name: Some(stable.clone()),
                    latest_revision: Some(false),
                    percent: Some(100),
                    ..Default::default()
                }])
            }
            _ => None,
        };
        st.phase = revisor_api::rollout::phase::FAILED.into();
        st.message = Some(why.clone());
        let events = [revisor_rollout::Event {
            warning: true,
            reason: "Refused".into(),
            message: why,
        }];
        self.world.commit(Commit {
            rollout: r,
            status: &st,
            traffic: back_to_stable.as_deref(),
            events: &events,
        })?;
        Ok(())
    }

    fn step(&mut self, r: Rollout) -> Result<(), String> {
        if let Some(why) = self.world.refusal(&r) {
            return self.refuse(&r, why);
        }
        self.load(&r);
        let ns = r.metadata.namespace.clone();
        let Some(svc) = self.world.service(&ns, &r.spec.service_ref.name)? else {
            let st = r.status_without_service();
            if r.status.as_ref() != Some(&st) {
                self.world.commit(Commit {
                    rollout: &r,
                    status: &st,
                    traffic: None,
                    events: &[],
                })?;
            }
            return Ok(());
        };
        let latest_name = svc.status().latest_created_revision_name;
        let latest_rev = match &latest_name {
            Some(n) => self.world.revision(&ns, n)?,
            None => None,
        };
        let latest = latest_name.as_deref().zip(latest_rev.as_ref()).map(|(n, rev)| {
            let ready = rev
                .status
                .as_ref()
                .and_then(|s| s.conditions.get_condition("Ready").cloned());
            let state = match ready {
                Some(c) if c.status == ConditionStatus::True => CanaryState::Ready,
                Some(c) if c.status == ConditionStatus::False => CanaryState::Failed(format!(
                    "{}: {}",
                    c.reason.unwrap_or_default(),
                    c.message.unwrap_or_default()
                )),
                _ => CanaryState::Pending,
            };
            (n, state)
        });
        let now = Utc::now();
        let (windows, baseline, readings) = match r.status().canary_revision {
            Some(canary) => {
                let (w, b, readings) = self.windows(&r, now, &canary);
                (w, Some(b), readings)
            }
            None => (None, None, None),
        };
        let (window, stable_window) = match windows {
            Some((w, s)) => (Some(w), s),
            None => (None, None),
        };
        let stable_replicas = match &r.status().stable_revision {
            Some(s) => self
                .world
                .revision(&ns, s)?
                .and_then(|rev| rev.status)
                .and_then(|st| st.actual_replicas)
                .unwrap_or(0)
                .max(0) as u32,
            None => 0,
        };
        let hooks = self.hooks(&r, latest.as_ref().map(|(n, _)| *n), window.is_some());
        let provided = match (&window, &r.spec.analysis) {
            (Some(_), Some(a)) if a.metrics.iter().any(|m| m.provider.is_some()) => {
                let http = self.http.get_or_insert_with(reqwest::blocking::Client::new).clone();
                a.metrics
                    .iter()
                    .filter_map(|m| {
                        let q = m.provider.as_ref()?.prometheus.as_ref()?;
                        Some((m.name.clone(), query_prometheus(&http, q, &r)))
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        // `undo --to-revision` asks whether a revision exists; only then is the world asked.
        let world = std::cell::RefCell::new(&mut self.world);
        let exists = |rev: &str| world.borrow_mut().revision(&ns, rev).ok().flatten().is_some();
        let out = advance(&Input {
            rollout: &r,
            latest,
            exists: &exists,
            now,
            window,
            stable_window,
            stable_replicas,
            hooks,
            provided,
            baseline,
            readings,
        });
        let traffic_changed = svc.spec.traffic() != out.traffic.as_slice();
        if Some(&out.status) == r.status.as_ref() && !traffic_changed && out.events.is_empty() {
            return Ok(());
        }
        let committed = self.world.commit(Commit {
            rollout: &r,
            status: &out.status,
            traffic: traffic_changed.then_some(out.traffic.as_slice()),
            events: &out.events,
        })?;
        let was_active = matches!(r.status().phase.as_str(), "Progressing" | "Paused");
        let ended = matches!(out.status.phase.as_str(), "Succeeded" | "RolledBack" | "Failed");
        // Not committed: someone (an operator's request) wrote meanwhile; the next tick steps again.
        if committed && was_active && ended {
            let mut done = r.clone();
            done.status = Some(out.status);
            self.post_rollout(&done);
        }
        Ok(())
    }
}

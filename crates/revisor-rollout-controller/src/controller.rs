//! The controller: [`RolloutController::run`] keeps the work queue (one entry per Rollout) and runs
//! each due Rollout's [`RolloutController::step`] on a task of its own; a step reads the world, asks
//! the providers, runs the state machine and commits, then says when it wants to be looked at again.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use revisor_api::meta::Conditions;
use revisor_api::rollout::{phase, AnalysisBaseline, Phase, RolloutStatus, Webhook, WebhookKind};
use revisor_api::{ConditionStatus, Revision, Rollout, TrafficTarget};
use revisor_rollout::{advance, hooks_due, CanaryState, Counters, Hooks, Input, Window};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::metrics::Outcomes;
use crate::providers::{Load, Providers};
use crate::queue::Queue;
use crate::world::{Change, Commit, Key, World};

/// How often a Rollout that is progressing is stepped: sequential analysis looks once a second.
const ACTIVE_EVERY: Duration = Duration::from_millis(revisor_rollout::sequential::LOOK_EVERY_MS as u64);
/// The soonest a step asks to run again.
const MIN_REQUEUE: Duration = Duration::from_millis(100);
/// A step that failed (the world could not be read or written) runs again after this.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Every Rollout is stepped at least this often, whatever changed (a safety net for missed changes).
const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// A webhook's answer is reused for this long (a Rollout may step several times a second).
const HOOK_FRESH_FOR: chrono::Duration = chrono::Duration::seconds(1);

/// What one step asks of the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Stepped {
    /// Step again after this, even if nothing changes.
    pub requeue: Option<Duration>,
    /// The Rollout's Service, whose changes wake it (`None`: the Rollout is gone).
    pub service: Option<String>,
}

#[derive(Debug, Clone)]
enum HookAnswer {
    Confirm(Result<(), String>),
    Rollback(Option<String>),
}

/// Webhook answers by (rollout, kind), with when they were given.
type HookCache = HashMap<(Key, WebhookKind), (DateTime<Utc>, HookAnswer)>;

struct Inner<W, P, C> {
    world: W,
    providers: P,
    clock: C,
    /// The last answer of each (rollout, webhook kind), reused for [`HOOK_FRESH_FOR`].
    hooks: Mutex<HookCache>,
    /// Rollouts that ended, for `/metrics`.
    outcomes: Arc<Outcomes>,
}

/// Cheap to clone; clones share the world, the providers and the clock.
pub struct RolloutController<W, P, C> {
    inner: Arc<Inner<W, P, C>>,
}

impl<W, P, C> Clone for RolloutController<W, P, C> {
    fn clone(&self) -> Self {
        RolloutController {
            inner: self.inner.clone(),
        }
    }
}

impl<W: World, P: Providers, C: Clock> RolloutController<W, P, C> {
    pub fn new(world: W, providers: P, clock: C) -> Self {
        RolloutController {
            inner: Arc::new(Inner {
                world,
                providers,
                clock,
                hooks: Mutex::new(HashMap::new()),
                outcomes: Arc::default(),
            }),
        }
    }

    /// Runs until the world's change channel closes: steps every Rollout at start, then each one
    /// when it or its Service changes and when its step asked to be looked at again.
    /// The promotions, rollbacks and their durations this controller saw, for `/metrics`.
    pub fn outcomes(&self) -> Arc<Outcomes> {
        self.inner.outcomes.clone()
    }

    pub async fn run(self) {
        let mut changes = self.inner.world.subscribe();
        let mut queue: Queue<Key> = Queue::default();
        // Which Rollouts follow a Service: (namespace, service) -> rollouts, and back.
        let mut followers: HashMap<(String, String), BTreeSet<Key>> = HashMap::new();
        let mut follows: HashMap<Key, String> = HashMap::new();
        let mut tasks: JoinSet<(Key, Result<Stepped, String>)> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, Key> = HashMap::new();
        let mut resync_at = Instant::now();
        loop {
            let now = Instant::now();
            if now >= resync_at {
                match self.inner.world.rollouts().await {
                    Ok(all) => {
                        let keys: BTreeSet<Key> = all.iter().map(Key::of).collect();
                        // Rollouts gone while a change was missed: their step cleans up after them.
                        let gone: Vec<Key> = follows.keys().filter(|k| !keys.contains(*k)).cloned().collect();
                        for k in keys.into_iter().chain(gone) {
                            queue.wake(k, now);
                        }
                    }
                    Err(e) => tracing::warn!("listing rollouts: {e}"),
                }
                resync_at = now + RESYNC_EVERY;
            }
            for key in queue.take_due(now) {
                let this = self.clone();
                let k = key.clone();
                let handle = tasks.spawn(async move {
                    let result = this.step(&k).await;
                    (k, result)
                });
                running.insert(handle.id(), key);
            }
            let wake_at = queue.next_due().map_or(resync_at, |at| at.min(resync_at));
            tokio::select! {
                change = changes.recv() => match change {
                    None => break,
                    Some(Change::Rollout(key)) => queue.wake(key, Instant::now()),
                    Some(Change::Service { namespace, name }) => {
                        for key in followers.get(&(namespace, name)).into_iter().flatten() {
                            queue.wake(key.clone(), Instant::now());
                        }
                    }
                    Some(Change::Resync) => resync_at = Instant::now(),
                },
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let now = Instant::now();
                    let (key, result) = match done {
                        Ok((id, (key, result))) => {
                            running.remove(&id);
                            (key, result)
                        }
                        Err(e) => {
                            let Some(key) = running.remove(&e.id()) else { continue };
                            tracing::error!("rollout {key}: step panicked: {e}");
                            (key, Err("the step panicked".into()))
                        }
                    };
                    match result {
                        Ok(stepped) => {
                            if let Some(old) = follows.remove(&key) {
                                let service = (key.namespace.clone(), old);
                                if let Some(set) = followers.get_mut(&service) {
                                    set.remove(&key);
                                    if set.is_empty() {
                                        followers.remove(&service);
                                    }
                                }
                            }
                            match stepped.service {
                                Some(service) => {
                                    followers
                                        .entry((key.namespace.clone(), service.clone()))
                                        .or_default()
                                        .insert(key.clone());
                                    follows.insert(key.clone(), service);
                                    queue.finish(&key, stepped.requeue.map(|d| now + d.max(MIN_REQUEUE)));
                                }
                                None => {
                                    queue.finish(&key, None);
                                    queue.forget(&key);
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!("rollout {key}: {e}");
                            queue.finish(&key, Some(now + RETRY_AFTER));
                        }
                    }
                },
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
        tasks.abort_all();
        for key in follows.keys() {
            self.inner.providers.load(key, None);
        }
    }

    /// One step of one Rollout: read it, its Service and Revisions; ask the providers what is due;
    /// run the state machine; commit what changed.
    pub async fn step(&self, key: &Key) -> Result<Stepped, String> {
        let w = &self.inner.world;
        let Some(r) = w.rollout(key).await? else {
            self.inner.providers.load(key, None);
            self.forget_hooks(key);
            return Ok(Stepped {
                requeue: None,
                service: None,
            });
        };
        let service = Some(r.spec.service_ref.name.clone());
        if let Some(why) = w.refusal(&r).await {
            self.refuse(&r, why).await?;
            return Ok(Stepped { requeue: None, service });
        }
        self.load(key, &r);
        let ns = key.namespace.as_str();
        let Some(svc) = w.service(ns, &r.spec.service_ref.name).await? else {
            let st = r.status_without_service();
            if r.status.as_ref() != Some(&st) {
                self.commit(&r, st, None, Vec::new()).await?;
            }
            return Ok(Stepped { requeue: None, service });
        };
        let latest_name = svc.status().latest_created_revision_name;
        let latest_rev = match &latest_name {
            Some(n) => w.revision(ns, n).await?,
            None => None,
        };
        let latest = latest_name
            .as_deref()
            .zip(latest_rev.as_ref())
            .map(|(n, rev)| (n, canary_state(rev)));
        let now = self.inner.clock.now();
        let st = r.status();
        let (windows, baseline, readings) = match &st.canary_revision {
            Some(canary) => {
                let (w, b, readings) = self.windows(&r, now, canary).await;
                (w, Some(b), readings)
            }
            None => (None, None, None),
        };
        let (window, stable_window) = match windows {
            Some((w, s)) => (Some(w), s),
            None => (None, None),
        };
        let stable_replicas = match &st.stable_revision {
            Some(s) => w
                .revision(ns, s)
                .await?
                .and_then(|rev| rev.status)
                .and_then(|st| st.actual_replicas)
                .unwrap_or(0)
                .max(0) as u32,
            None => 0,
        };
        let latest_str = latest.as_ref().map(|(n, _)| *n);
        let due_hooks = hooks_due(&r, latest_str);
        let (hooks, provided) = tokio::join!(
            self.hooks(&r, &due_hooks, window.is_some(), now),
            self.provided(&r, window.is_some())
        );
        // `undo` asks whether its target revision exists.
        let mut existing = BTreeSet::new();
        for name in st.undo_to.iter().chain(st.previous_stable_revision.iter()) {
            if w.revision(ns, name).await?.is_some() {
                existing.insert(name.clone());
            }
        }
        let exists = |rev: &str| existing.contains(rev);
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
        let requeue = requeue_after(&r, &out.status, !due_hooks.is_empty(), now);
        let traffic_changed = svc.spec.traffic() != out.traffic.as_slice();
        if Some(&out.status) == r.status.as_ref() && !traffic_changed && out.events.is_empty() {
            return Ok(Stepped { requeue, service });
        }
        let was_active = is_active(st.phase);
        let ended = matches!(out.status.phase, phase::SUCCEEDED | phase::ROLLED_BACK | phase::FAILED);
        let status = out.status.clone();
        let committed = self
            .commit(&r, out.status, traffic_changed.then_some(out.traffic), out.events)
            .await?;
        // Not committed: someone (an operator's request) wrote meanwhile; the change wakes it again.
        if committed && was_active && ended {
            // From the canary revision's creation (the rollout's start) to now.
            let started = match &st.canary_revision {
                Some(canary) => w
                    .revision(ns, canary)
                    .await?
                    .and_then(|c| c.metadata.creation_timestamp),
                None => None,
            };
            let seconds = started.map(|t| (now - t).num_milliseconds() as f64 / 1000.0);
            self.inner.outcomes.ended(&r, status.phase, seconds);
            let mut done = r.clone();
            done.status = Some(status);
            self.post_rollout(&done);
        }
        Ok(Stepped { requeue, service })
    }

    async fn commit(
        &self,
        r: &Rollout,
        status: RolloutStatus,
        traffic: Option<Vec<TrafficTarget>>,
        events: Vec<revisor_rollout::Event>,
    ) -> Result<bool, String> {
        // One log line per decision (a step, a promotion, a rollback ...), with its reason.
        let logged: Vec<(bool, String, String)> = events
            .iter()
            .map(|e| (e.warning, e.reason.clone(), e.message.clone()))
            .collect();
        let (phase, weight) = (status.phase, status.canary_weight);
        let committed = self
            .inner
            .world
            .commit(Commit {
                rollout: r.clone(),
                status,
                traffic,
                events,
            })
            .await?;
        if committed {
            let name = format!("{}/{}", r.metadata.namespace, r.metadata.name);
            for (warning, reason, message) in logged {
                if warning {
                    tracing::warn!(decision = %reason, rollout = %name, phase = %phase, weight, "{name}: {reason}: {message}");
                } else {
                    tracing::info!(decision = %reason, rollout = %name, phase = %phase, weight, "{name}: {reason}: {message}");
                }
            }
        }
        Ok(committed)
    }

    fn forget_hooks(&self, key: &Key) {
        let mut hooks = self.inner.hooks.lock().unwrap_or_else(|e| e.into_inner());
        hooks.retain(|(k, _), _| k != key);
    }

    /// Calls `r`'s webhooks of `kind`, each bounded by its timeout: for `rollback` the first one
    /// that answers 2xx, for the others whether all did.
    async fn call_kind(&self, r: &Rollout, kind: WebhookKind) -> HookAnswer {
        let hooks = hooks_of(r, kind);
        if kind == WebhookKind::Rollback {
            for h in hooks {
                if self.call(r, h).await.is_ok() {
                    return HookAnswer::Rollback(Some(h.name.clone()));
                }
            }
            return HookAnswer::Rollback(None);
        }
        for h in hooks {
            if let Err(e) = self.call(r, h).await {
                return HookAnswer::Confirm(Err(e));
            }
        }
        HookAnswer::Confirm(Ok(()))
    }

    /// Calls one webhook with Flagger's payload, bounded by its timeout.
    async fn call(&self, r: &Rollout, hook: &Webhook) -> Result<(), String> {
        let payload = serde_json::json!({
            "name": r.metadata.name,
            "namespace": r.metadata.namespace,
            "phase": r.status().phase,
            "metadata": hook.metadata,
        });
        let timeout = hook.timeout();
        match tokio::time::timeout(timeout, self.inner.providers.webhook(hook, &payload)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("{}: no answer within {timeout:?}", hook.name)),
        }
    }

    /// The webhooks due before this step, called (or their answer of the last second reused).
    async fn hooks(&self, r: &Rollout, due: &[WebhookKind], analysing: bool, now: DateTime<Utc>) -> Hooks {
        let mut out = Hooks::default();
        if r.spec.analysis.as_ref().is_none_or(|a| a.webhooks.is_empty()) {
            return out;
        }
        let key = Key::of(r);
        for &kind in due {
            let cached = {
                let hooks = self.inner.hooks.lock().unwrap_or_else(|e| e.into_inner());
                hooks
                    .get(&(key.clone(), kind))
                    .filter(|(at, _)| now - *at < HOOK_FRESH_FOR)
                    .map(|(_, a)| a.clone())
            };
            let answer = match cached {
                Some(a) => a,
                None => {
                    let a = self.call_kind(r, kind).await;
                    let mut hooks = self.inner.hooks.lock().unwrap_or_else(|e| e.into_inner());
                    hooks.insert((key.clone(), kind), (self.inner.clock.now(), a.clone()));
                    a
                }
            };
            match (kind, answer) {
                (WebhookKind::ConfirmRollout, HookAnswer::Confirm(a)) => out.confirm_rollout = Some(a),
                (WebhookKind::PreRollout, HookAnswer::Confirm(a)) => out.pre_rollout = Some(a),
                (WebhookKind::ConfirmPromotion, HookAnswer::Confirm(a)) => out.confirm_promotion = Some(a),
                (WebhookKind::Rollback, HookAnswer::Rollback(a)) => out.rollback = a,
                _ => {}
            }
        }
        if analysing {
            let calls = hooks_of(r, WebhookKind::Rollout)
                .into_iter()
                .map(|h| async move { (h.name.clone(), self.call(r, h).await) });
            out.rollout = join_all(calls).await;
        }
        out
    }

    /// With an analysis run: each metric's Prometheus query, run at once.
    async fn provided(&self, r: &Rollout, analysing: bool) -> Vec<revisor_rollout::Provided> {
        let Some(a) = r.spec.analysis.as_ref().filter(|_| analysing) else {
            return Vec::new();
        };
        let queries = a.metrics.iter().filter_map(|m| {
            let q = m.provider.as_ref()?.prometheus.as_ref()?;
            let query = fill(&q.query, r);
            Some(async move { (m.name.clone(), self.inner.providers.query(&q.address, &query).await) })
        });
        join_all(queries).await
    }

    /// Keeps the rollout's load generator running while a canary (or preview) is analysed, aimed at
    /// its tag; stops it otherwise.
    fn load(&self, key: &Key, r: &Rollout) {
        let st = r.status();
        let active = matches!(st.phase, phase::PROGRESSING | phase::PAUSED) && st.canary_revision.is_some();
        let spec = r.spec.analysis.as_ref().and_then(|a| a.load_test.clone());
        let tag = if r.spec.is_blue_green() && st.canary_weight < 100 {
            revisor_rollout::PREVIEW_TAG
        } else {
            revisor_rollout::CANARY_TAG
        };
        let wanted = match (active, spec) {
            (true, Some(spec)) => self
                .inner
                .world
                .load_target(r, tag)
                .map(|(url, host)| Load { url, host, spec }),
            _ => None,
        };
        self.inner.providers.load(key, wanted);
    }

    /// Tells the post-rollout webhooks how a rollout ended (in the background; answers are ignored).
    fn post_rollout(&self, r: &Rollout) {
        if hooks_of(r, WebhookKind::PostRollout).is_empty() {
            return;
        }
        let this = self.clone();
        let r = r.clone();
        tokio::spawn(async move {
            for h in hooks_of(&r, WebhookKind::PostRollout) {
                if let Err(e) = this.call(&r, h).await {
                    tracing::warn!("post-rollout webhook: {e}");
                }
            }
        });
    }

    /// The canary's analysis window due now, if any (and stable's over the same time), from the
    /// baseline stored in the Rollout's status; a metrics source that computes windows itself
    /// (Prometheus) answers for the same span. Also the counters now, for sequential analysis, when
    /// the source has counters.
    async fn windows(
        &self,
        r: &Rollout,
        now: DateTime<Utc>,
        canary: &str,
    ) -> (
        Option<revisor_rollout::baseline::Windows>,
        AnalysisBaseline,
        Option<(Counters, Option<Counters>)>,
    ) {
        let p = &self.inner.providers;
        let ns = r.metadata.namespace.as_str();
        let stable = r.status().stable_revision;
        let (counted, stable_counted) = tokio::join!(p.counters(ns, canary), async {
            match &stable {
                Some(s) => Some(p.counters(ns, s).await.unwrap_or_default()),
                None => None,
            }
        });
        let canary_now = counted.clone().unwrap_or_default();
        let stable_reading = stable.as_deref().zip(stable_counted.as_ref());
        let (windows, baseline) = revisor_rollout::next_window(r, now, (canary, &canary_now), stable_reading);
        let windows = match windows {
            None => None,
            Some((c, s)) => {
                let own = |rev: String, w: Window| async move { p.window(ns, &rev, w.seconds).await.unwrap_or(w) };
                let s = match s.zip(stable.clone()) {
                    Some((w, name)) => Some(own(name, w).await),
                    None => None,
                };
                Some((own(canary.to_string(), c).await, s))
            }
        };
        (windows, baseline, counted.map(|c| (c, stable_counted)))
    }

    /// Marks a Rollout this world cannot run as Failed with the reason (once). A canary it was running
    /// is rejected and all traffic goes back to stable: nothing judges the canary any more.
    async fn refuse(&self, r: &Rollout, why: String) -> Result<(), String> {
        let mut st = r.status();
        if st.phase == phase::FAILED && st.message.as_deref() == Some(why.as_str()) {
            return Ok(());
        }
        let back_to_stable = match (is_active(st.phase), st.canary_revision.take(), &st.stable_revision) {
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
        st.phase = phase::FAILED;
        st.message = Some(why.clone());
        let events = vec![revisor_rollout::Event {
            warning: true,
            reason: "Refused".into(),
            message: why,
        }];
        self.commit(r, st, back_to_stable, events).await?;
        Ok(())
    }
}

fn is_active(phase: Phase) -> bool {
    matches!(phase, phase::PROGRESSING | phase::PAUSED)
}

/// The latest revision's readiness, from its Ready condition.
fn canary_state(rev: &Revision) -> CanaryState {
    let ready = rev
        .status
        .as_ref()
        .and_then(|s| s.conditions.get_condition("Ready").cloned());
    match ready {
        Some(c) if c.status == ConditionStatus::True => CanaryState::Ready,
        Some(c) if c.status == ConditionStatus::False => CanaryState::Failed(format!(
            "{}: {}",
            c.reason.unwrap_or_default(),
            c.message.unwrap_or_default()
        )),
        _ => CanaryState::Pending,
    }
}

fn hooks_of(r: &Rollout, kind: WebhookKind) -> Vec<&Webhook> {
    r.spec
        .analysis
        .iter()
        .flat_map(|a| a.webhooks.iter())
        .filter(|w| w.kind() == Some(kind))
        .collect()
}

/// A manifest's PromQL with its placeholders filled.
fn fill(query: &str, r: &Rollout) -> String {
    let st = r.status();
    let interval = r
        .spec
        .analysis
        .as_ref()
        .map(|a| a.interval())
        .unwrap_or(Duration::from_secs(30));
    query
        .replace("{{revision}}", st.canary_revision.as_deref().unwrap_or(""))
        .replace("{{stable}}", st.stable_revision.as_deref().unwrap_or(""))
        .replace("{{namespace}}", &r.metadata.namespace)
        .replace("{{service}}", &r.spec.service_ref.name)
        .replace("{{interval}}", &format!("{}s", interval.as_secs().max(1)))
}

/// When a Rollout wants to be stepped again with nothing changed: while a canary runs, at its next
/// look (a second) or sooner when its analysis window falls due; while webhooks gate it, a second
/// later; when idle, when the previous stable revision's rollback window closes (its `previous` tag
/// and warm replica go). Otherwise only a change wakes it.
fn requeue_after(r: &Rollout, st: &RolloutStatus, hooks_due: bool, now: DateTime<Utc>) -> Option<Duration> {
    // How long from now until `at` plus `d` (zero when that has passed).
    let until = |at: DateTime<Utc>, d: Duration| {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| at.checked_add_signed(d))
            .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
    };
    if matches!(st.phase, phase::PROGRESSING | phase::PAUSED | phase::PROMOTING) {
        let window_due = match (&r.spec.analysis, st.last_analysis_at) {
            (Some(a), Some(last)) => until(last, a.interval()),
            _ => None,
        };
        return Some(window_due.map_or(ACTIVE_EVERY, |d| d.min(ACTIVE_EVERY)));
    }
    if hooks_due {
        return Some(ACTIVE_EVERY);
    }
    let (Some(prev), Some(at)) = (&st.previous_stable_revision, st.promoted_at) else {
        return None;
    };
    if Some(prev) == st.stable_revision.as_ref() {
        return None;
    }
    match until(at, r.spec.rollback_window()) {
        Some(d) if d > Duration::ZERO => Some(d + Duration::from_millis(10)),
        _ => None,
    }
}

//! Rollouts on a simulated clock against synthetic traffic (`revisor simulate`): this crate's own
//! [`RolloutController`], run loop and all, over a world in memory (one Service, its stable and canary
//! revisions, one Rollout) and providers whose counters grow with Poisson requests split by the
//! Service's traffic as the controller last wrote it, Bernoulli 5xx and lognormal latencies counted
//! into the gateway's latency buckets. tokio's clock is paused, so an hour passes in milliseconds,
//! and each run is deterministic for its seed.
//!
//! What a simulation leaves out: webhooks answer 2xx at once, a manifest's Prometheus queries have
//! no data, the load generator and mirroring send nothing.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use revisor_api::rollout::{phase, Rollout, RolloutStatus, Webhook};
use revisor_api::{Revision, Service};
use revisor_rollout::{Counters, Window};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::clock::{Clock, TokioClock};
use crate::controller::RolloutController;
use crate::providers::{Load, Providers};
use crate::world::{Change, Commit, Key, World};

/// How one revision answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Behaviour {
    /// Share of requests answered 5xx.
    pub error_rate: f64,
    /// Median latency, ms.
    pub median_ms: f64,
    /// The lognormal's sigma (of the natural log).
    pub sigma: f64,
}

/// The traffic and the two revisions of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Requests per second to the service, Poisson.
    pub rate: f64,
    /// The longest a simulated rollout runs, seconds.
    pub duration: f64,
    pub stable: Behaviour,
    pub canary: Behaviour,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Promoted,
    RolledBack,
    Undecided,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Promoted => "promoted",
            Outcome::RolledBack => "rolledBack",
            Outcome::Undecided => "undecided",
        }
    }
}

/// What happened to one simulated rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct SimResult {
    pub seed: u64,
    pub outcome: Outcome,
    /// From the canary's start to the decision (or the cap).
    pub seconds: f64,
    pub canary_requests: u64,
    pub canary_errors: u64,
    /// The Rollout's last message (why it ended).
    pub reason: String,
    /// The Rollout's status at the end.
    pub status: RolloutStatus,
}

/// Requests are drawn in slices of at most this long, each split by the traffic in effect.
const SLICE: Duration = Duration::from_millis(250);
const SERVICE: &str = "sim";
const STABLE: &str = "sim-00001";
const CANARY: &str = "sim-00002";

/// Runs one rollout of `rollout` (its spec; the status is the simulation's) with `seed`. `bounds_ms`
/// are the latency buckets' upper bounds (the gateway's).
pub fn simulate(rollout: &Rollout, scenario: &Scenario, bounds_ms: &[f64], seed: u64) -> SimResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    rt.block_on(run(rollout, scenario, bounds_ms, seed))
}

async fn run(rollout: &Rollout, scenario: &Scenario, bounds_ms: &[f64], seed: u64) -> SimResult {
    let start = DateTime::from_timestamp(1_700_000_000, 0).expect("a fixed epoch");
    let clock = TokioClock::starting_at(start);
    let mut r = rollout.clone();
    r.metadata.namespace = "default".into();
    r.metadata.resource_version = Some("1".into());
    r.spec.service_ref.name = SERVICE.into();
    r.status = Some(RolloutStatus {
        phase: phase::SUCCEEDED,
        stable_revision: Some(STABLE.into()),
        ..Default::default()
    });
    let new = || Counters {
        bounds_ms: bounds_ms.to_vec(),
        latency_counts: vec![0; bounds_ms.len() + 1],
        ..Default::default()
    };
    let sim = Sim {
        state: Arc::new(Mutex::new(State {
            rollout: r,
            service: service(),
            revisions: [revision(STABLE), revision(CANARY)],
            version: 1,
            subscribers: Vec::new(),
            rng: Rng::new(seed),
            scenario: scenario.clone(),
            stable: new(),
            canary: new(),
            drawn_until: start,
            began: None,
            ended: None,
        })),
        clock,
    };
    let controller = RolloutController::new(sim.clone(), sim.clone(), clock);
    let running = tokio::spawn(controller.run());
    let cap = start + chrono::Duration::milliseconds((scenario.duration * 1000.0).ceil() as i64);
    loop {
        tokio::time::sleep(SLICE).await;
        let now = clock.now();
        let mut st = sim.state();
        st.draw(now);
        if st.ended.is_some() || now >= cap {
            // The controller stops when its change channel closes.
            st.subscribers.clear();
            break;
        }
    }
    let _ = running.await;
    let st = sim.state();
    let status = st.rollout.status();
    let (outcome, at) = st.ended.unwrap_or((Outcome::Undecided, cap));
    SimResult {
        seed,
        outcome,
        seconds: (at - st.began.unwrap_or(at)).num_milliseconds() as f64 / 1000.0,
        canary_requests: st.canary.requests.iter().sum(),
        canary_errors: st.canary.requests[4],
        reason: status.message.clone().unwrap_or_default(),
        status,
    }
}

fn service() -> Service {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": { "name": SERVICE, "namespace": "default" },
        "spec": {
            "template": { "spec": { "containers": [{ "image": "model" }] } },
            "traffic": [{ "revisionName": STABLE, "percent": 100 }],
        },
        "status": { "latestCreatedRevisionName": CANARY, "latestReadyRevisionName": CANARY },
    }))
    .expect("the simulated Service")
}

fn revision(name: &str) -> Revision {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": { "name": name, "namespace": "default" },
        "spec": { "containers": [{ "image": "model" }] },
        "status": { "actualReplicas": 1, "conditions": [{ "type": "Ready", "status": "True" }] },
    }))
    .expect("a simulated Revision")
}

struct State {
    rollout: Rollout,
    service: Service,
    revisions: [Revision; 2],
    version: u64,
    subscribers: Vec<UnboundedSender<Change>>,
    rng: Rng,
    scenario: Scenario,
    stable: Counters,
    canary: Counters,
    /// Requests have been drawn up to here.
    drawn_until: DateTime<Utc>,
    /// When the canary first took part (the Rollout first named it).
    began: Option<DateTime<Utc>>,
    /// How and when the rollout ended.
    ended: Option<(Outcome, DateTime<Utc>)>,
}

impl State {
    /// The canary's share of the Service's traffic as last written (the latest revision is the canary).
    fn canary_share(&self) -> f64 {
        let percent: i64 = self
            .service
            .spec
            .traffic()
            .iter()
            .filter(|t| match &t.revision_name {
                Some(n) => n == CANARY,
                None => t.latest_revision != Some(false),
            })
            .map(|t| t.percent())
            .sum();
        percent.clamp(0, 100) as f64 / 100.0
    }

    /// Draws the requests from the last draw up to `now`, in slices, split by the traffic in effect.
    fn draw(&mut self, now: DateTime<Utc>) {
        let share = self.canary_share();
        let slice = chrono::Duration::from_std(SLICE).expect("a short slice");
        while self.drawn_until < now {
            let to = (self.drawn_until + slice).min(now);
            let dt = (to - self.drawn_until).num_microseconds().unwrap_or(0) as f64 / 1e6;
            let n = self.rng.poisson(self.scenario.rate * dt);
            let to_canary = self.rng.binomial(n, share);
            let (s, bounds) = (self.scenario.clone(), self.canary.bounds_ms.clone());
            serve(&mut self.rng, &mut self.canary, &s.canary, to_canary, &bounds);
            serve(&mut self.rng, &mut self.stable, &s.stable, n - to_canary, &bounds);
            self.drawn_until = to;
        }
    }
}

/// The simulation's world and providers at once; clones share the state.
#[derive(Clone)]
struct Sim {
    state: Arc<Mutex<State>>,
    clock: TokioClock,
}

impl Sim {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl World for Sim {
    async fn rollouts(&self) -> Result<Vec<Rollout>, String> {
        Ok(vec![self.state().rollout.clone()])
    }

    async fn rollout(&self, key: &Key) -> Result<Option<Rollout>, String> {
        let st = self.state();
        Ok((key.name == st.rollout.metadata.name).then(|| st.rollout.clone()))
    }

    async fn service(&self, _namespace: &str, name: &str) -> Result<Option<Service>, String> {
        Ok((name == SERVICE).then(|| self.state().service.clone()))
    }

    async fn revision(&self, _namespace: &str, name: &str) -> Result<Option<Revision>, String> {
        let st = self.state();
        Ok(st.revisions.iter().find(|r| r.metadata.name == name).cloned())
    }

    async fn commit(&self, c: Commit) -> Result<bool, String> {
        let now = self.clock.now();
        let mut st = self.state();
        if c.rollout.metadata.resource_version != st.rollout.metadata.resource_version {
            return Ok(false);
        }
        // The requests until now went where the traffic was.
        st.draw(now);
        st.version += 1;
        let mut status = c.status;
        // Measurements are a record, never an input of the machine: dropping them keeps each step
        // cheap over hours of simulated time without changing a decision.
        status.measurements.clear();
        if st.began.is_none() && status.canary_revision.is_some() {
            st.began = Some(now);
        }
        let outcome = match status.phase {
            phase::SUCCEEDED if status.stable_revision.as_deref() == Some(CANARY) => Some(Outcome::Promoted),
            phase::ROLLED_BACK | phase::FAILED => Some(Outcome::RolledBack),
            _ => None,
        };
        if st.ended.is_none() {
            st.ended = outcome.map(|o| (o, now));
        }
        st.rollout.status = Some(status);
        st.rollout.metadata.resource_version = Some(st.version.to_string());
        if let Some(t) = c.traffic {
            st.service.spec.traffic = Some(t);
        }
        let key = Key::of(&st.rollout);
        st.subscribers.retain(|s| s.send(Change::Rollout(key.clone())).is_ok());
        Ok(true)
    }

    fn load_target(&self, _r: &Rollout, _tag: &str) -> Option<(String, Option<String>)> {
        None
    }

    fn subscribe(&self) -> UnboundedReceiver<Change> {
        let (tx, rx) = unbounded_channel();
        self.state().subscribers.push(tx);
        rx
    }
}

impl Providers for Sim {
    async fn counters(&self, _namespace: &str, revision: &str) -> Option<Counters> {
        let now = self.clock.now();
        let mut st = self.state();
        st.draw(now);
        match revision {
            STABLE => Some(st.stable.clone()),
            CANARY => Some(st.canary.clone()),
            _ => None,
        }
    }

    async fn window(&self, _namespace: &str, _revision: &str, _seconds: f64) -> Option<Window> {
        None
    }

    async fn query(&self, _address: &str, _query: &str) -> Result<Option<f64>, String> {
        Ok(None)
    }

    async fn webhook(&self, _hook: &Webhook, _payload: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }

    fn load(&self, _key: &Key, _load: Option<Load>) {}
}

/// Answers `n` requests the way `b` does, into cumulative counters.
fn serve(rng: &mut Rng, c: &mut Counters, b: &Behaviour, n: u64, bounds_ms: &[f64]) {
    for _ in 0..n {
        if rng.uniform() < b.error_rate {
            c.requests[4] += 1;
        } else {
            c.requests[1] += 1;
        }
        let ms = b.median_ms * (b.sigma * rng.normal()).exp();
        let i = bounds_ms.iter().position(|x| ms <= *x).unwrap_or(bounds_ms.len());
        c.latency_counts[i] += 1;
    }
}

/// A small deterministic generator (SplitMix64), so results reproduce for a seed on any platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Poisson by inversion for small means, else a rounded normal approximation.
    fn poisson(&mut self, mean: f64) -> u64 {
        if mean <= 0.0 {
            return 0;
        }
        if mean > 30.0 {
            return (mean + mean.sqrt() * self.normal()).round().max(0.0) as u64;
        }
        let (limit, mut k, mut p) = ((-mean).exp(), 0u64, 1.0);
        loop {
            p *= self.uniform();
            if p <= limit {
                return k;
            }
            k += 1;
        }
    }

    fn binomial(&mut self, n: u64, p: f64) -> u64 {
        (0..n).filter(|_| self.uniform() < p).count() as u64
    }
}

/// The share of each outcome and the median seconds to a decision over many results.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub runs: usize,
    pub promoted: f64,
    pub rolled_back: f64,
    pub undecided: f64,
    /// Median seconds to rollback, over the rolled-back runs.
    pub median_seconds_to_rollback: Option<f64>,
    /// Median failed canary requests before rollback, over the rolled-back runs.
    pub median_errors_to_rollback: Option<f64>,
    pub median_seconds: f64,
}

pub fn summarize(results: &[SimResult]) -> Summary {
    let runs = results.len();
    let share = |o: Outcome| results.iter().filter(|r| r.outcome == o).count() as f64 / runs.max(1) as f64;
    let rolled: Vec<&SimResult> = results.iter().filter(|r| r.outcome == Outcome::RolledBack).collect();
    Summary {
        runs,
        promoted: share(Outcome::Promoted),
        rolled_back: share(Outcome::RolledBack),
        undecided: share(Outcome::Undecided),
        median_seconds_to_rollback: median(rolled.iter().map(|r| r.seconds).collect()),
        median_errors_to_rollback: median(rolled.iter().map(|r| r.canary_errors as f64).collect()),
        median_seconds: median(results.iter().map(|r| r.seconds).collect()).unwrap_or(0.0),
    }
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    Some(if xs.len().is_multiple_of(2) {
        (xs[m - 1] + xs[m]) / 2.0
    } else {
        xs[m]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use revisor_api::rollout::*;

    const BOUNDS: [f64; 6] = [5.0, 10.0, 20.0, 40.0, 80.0, 160.0];

    /// Steps to 20% and 50%, one analysis run of 10 s after each; success rate at least 95%.
    fn rollout() -> Rollout {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "revisor.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": { "name": "sim", "namespace": "default" },
            "spec": {
                "serviceRef": { "name": "sim" },
                "strategy": { "canary": { "steps": [
                    { "setWeight": 20 }, { "analysis": { "count": 1 } },
                    { "setWeight": 50 }, { "analysis": { "count": 1 } },
                ] } },
                "analysis": {
                    "interval": "10s",
                    "threshold": 2,
                    "minSamples": 20,
                    "metrics": [{ "name": "success-rate", "thresholdRange": { "min": 95.0 } }],
                },
            },
        }))
        .expect("the test's Rollout")
    }

    fn scenario(canary_errors: f64) -> Scenario {
        let b = |e| Behaviour {
            error_rate: e,
            median_ms: 20.0,
            sigma: 0.5,
        };
        Scenario {
            rate: 50.0,
            duration: 600.0,
            stable: b(0.0),
            canary: b(canary_errors),
        }
    }

    #[test]
    fn the_real_machine_promotes_a_good_canary_and_rolls_back_a_bad_one_reproducibly() {
        let good = simulate(&rollout(), &scenario(0.0), &BOUNDS, 7);
        assert_eq!(good.outcome, Outcome::Promoted, "{good:?}");
        assert!(good.canary_requests > 100 && good.canary_errors == 0, "{good:?}");
        // Two analysis steps of one 10 s run each, after the weights are set.
        assert!((15.0..=40.0).contains(&good.seconds), "{good:?}");
        assert_eq!(
            simulate(&rollout(), &scenario(0.0), &BOUNDS, 7),
            good,
            "same seed, same run"
        );

        let bad = simulate(&rollout(), &scenario(0.5), &BOUNDS, 7);
        assert_eq!(bad.outcome, Outcome::RolledBack, "{bad:?}");
        assert!(bad.reason.contains("success-rate"), "{bad:?}");
        assert!(bad.canary_errors > 0);

        let results: Vec<SimResult> = (0..20)
            .map(|s| simulate(&rollout(), &scenario(0.5), &BOUNDS, s))
            .collect();
        let sum = summarize(&results);
        assert_eq!((sum.runs, sum.rolled_back), (20, 1.0), "{sum:?}");
        assert!(sum.median_seconds_to_rollback.is_some());
    }

    /// The recommended shape (bench/judgement/sequential-relative.yaml): success rate and p50 latency
    /// against stable, judged sequentially.
    fn relative() -> Rollout {
        let mut r = rollout();
        let a = r.spec.analysis.as_mut().unwrap();
        a.interval = Some("30s".into());
        a.metrics = vec![
            MetricCheck {
                name: "success-rate".into(),
                relative_to: Some("stable".into()),
                max_ratio: Some(1.5),
                ..Default::default()
            },
            MetricCheck {
                name: "latency".into(),
                percentile: Some(50.0),
                relative_to: Some("stable".into()),
                max_ratio: Some(1.5),
                ..Default::default()
            },
        ];
        r
    }

    fn scenario_at(rate: f64, errors: f64, median_ms: f64) -> Scenario {
        let b = |e, m| Behaviour {
            error_rate: e,
            median_ms: m,
            sigma: 0.5,
        };
        Scenario {
            rate,
            duration: 3600.0,
            stable: b(0.005, 20.0),
            canary: b(errors, median_ms),
        }
    }

    /// Issue 13's targets on a few seeds (bench/judgement.sh measures them on 1,000): a 20%-error
    /// canary at 100 req/s is rolled back within 10 s of reaching traffic with fewer than 30 failed
    /// requests, at once rather than after an interval and a threshold count; a good canary is not
    /// rolled back, and at 1 req/s it waits rather than failing for want of data.
    #[test]
    fn sequential_verdicts_roll_back_at_once_and_never_for_want_of_data() {
        let bad: Vec<SimResult> = (0..40)
            .map(|s| simulate(&relative(), &scenario_at(100.0, 0.2, 20.0), &BOUNDS, s))
            .collect();
        let sum = summarize(&bad);
        assert_eq!(sum.rolled_back, 1.0, "{sum:?}");
        assert!(sum.median_seconds_to_rollback.unwrap() < 10.0, "{sum:?}");
        assert!(sum.median_errors_to_rollback.unwrap() < 30.0, "{sum:?}");
        assert!(bad[0].reason.contains("success-rate is worse"), "{:?}", bad[0]);

        let good: Vec<SimResult> = (0..40)
            .map(|s| simulate(&relative(), &scenario_at(100.0, 0.005, 20.0), &BOUNDS, s))
            .collect();
        assert!(
            good.iter().all(|r| r.outcome != Outcome::RolledBack),
            "{:?}",
            summarize(&good)
        );

        let mut short = scenario_at(1.0, 0.005, 20.0);
        short.duration = 900.0;
        let idle: Vec<SimResult> = (0..10).map(|s| simulate(&relative(), &short, &BOUNDS, s)).collect();
        assert!(
            idle.iter().all(|r| r.outcome == Outcome::Undecided),
            "{:?}",
            summarize(&idle)
        );
    }

    #[test]
    fn inconclusive_evidence_does_what_on_inconclusive_says_after_its_time() {
        let mut r = relative();
        let a = r.spec.analysis.as_mut().unwrap();
        a.on_inconclusive = Some("rollback".into());
        a.inconclusive_after = Some("5m".into());
        let mut s = scenario_at(1.0, 0.005, 20.0);
        s.duration = 900.0;
        let out = simulate(&r, &s, &BOUNDS, 3);
        assert_eq!(out.outcome, Outcome::RolledBack, "{out:?}");
        assert!(out.reason.contains("not conclusive"), "{out:?}");
        assert!((295.0..=400.0).contains(&out.seconds), "{out:?}");

        // hold (the default): still waiting at the end, with the condition saying why.
        r.spec.analysis.as_mut().unwrap().on_inconclusive = None;
        let held = simulate(&r, &s, &BOUNDS, 3);
        assert_eq!(held.outcome, Outcome::Undecided, "{held:?}");
        use revisor_api::meta::Conditions;
        let c = held
            .status
            .conditions
            .get_condition("Analysis")
            .expect("the Analysis condition");
        assert_eq!(
            (c.status, c.reason.as_deref()),
            (revisor_api::ConditionStatus::Unknown, Some("Inconclusive"))
        );

        r.spec.analysis.as_mut().unwrap().on_inconclusive = Some("promote".into());
        let out = simulate(&r, &s, &BOUNDS, 3);
        assert_eq!(out.outcome, Outcome::Promoted, "{out:?}");
    }

    /// The simulation runs the controller itself: its webhooks are called (and answer yes), so a
    /// Rollout gated on confirm-rollout and confirm-promotion hooks is simulated to its verdict, where
    /// the state machine stepped alone would wait for answers forever.
    #[test]
    fn webhooks_are_called_by_the_controller_and_answer_yes() {
        let mut r = rollout();
        let hook = |name: &str, kind: &str| Webhook {
            name: name.into(),
            type_: kind.into(),
            url: "http://gate.test/".into(),
            timeout: Some("5s".into()),
            metadata: Default::default(),
        };
        r.spec.analysis.as_mut().unwrap().webhooks =
            vec![hook("gate", "confirm-rollout"), hook("sign-off", "confirm-promotion")];
        let good = simulate(&r, &scenario(0.0), &BOUNDS, 7);
        assert_eq!(good.outcome, Outcome::Promoted, "{good:?}");
        let bad = simulate(&r, &scenario(0.5), &BOUNDS, 7);
        assert_eq!(bad.outcome, Outcome::RolledBack, "{bad:?}");
    }

    #[test]
    fn the_generator_is_poisson_and_lognormal_enough() {
        let mut rng = Rng::new(1);
        let n = 20_000;
        let mean = (0..n).map(|_| rng.poisson(2.5) as f64).sum::<f64>() / n as f64;
        assert!((mean - 2.5).abs() < 0.05, "{mean}");
        let big = (0..n).map(|_| rng.poisson(100.0) as f64).sum::<f64>() / n as f64;
        assert!((big - 100.0).abs() < 0.5, "{big}");
        let mut below = 0;
        for _ in 0..n {
            if 20.0 * (0.5 * rng.normal()).exp() <= 20.0 {
                below += 1;
            }
        }
        let share = below as f64 / n as f64;
        assert!((share - 0.5).abs() < 0.02, "the median is the median: {share}");
    }
}

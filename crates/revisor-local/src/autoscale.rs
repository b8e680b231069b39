//! The autoscaler's loop for local revisions: every second it turns the gateway's per-revision
//! request-seconds and request counts into average concurrency and requests per second; every two
//! seconds (Knative's tick) it asks the KPA (revisor-autoscaler) for each routed revision's replicas; and
//! a request held at a revision without replicas pokes it at once, so a cold start waits for nothing
//! but the replica itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use revisor_autoscaler::{Activity, Autoscaler, AutoscalerConfig, DeciderSpec, Time};
use revisor_runtime::RevisionKey;
use tokio::sync::mpsc;

/// Knative's autoscaler tick.
pub const TICK: Duration = Duration::from_secs(2);
/// How often the gateway's counters are turned into samples (Knative scrapes every second).
pub const SAMPLE: Duration = Duration::from_secs(1);

/// One revision's cumulative counters, summed over the routes that reach it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub busy_seconds: f64,
    pub requests: u64,
}

/// Sums the gateway's counters per revision (over the routes that reach it: its split and its tag).
pub fn counters(gateway: &revisor_gateway::Gateway) -> HashMap<RevisionKey, Counters> {
    let mut out: HashMap<RevisionKey, Counters> = HashMap::new();
    gateway.for_each_load(|labels, busy_seconds, requests| {
        let key = RevisionKey {
            namespace: labels.namespace.clone(),
            name: labels.revision.clone(),
        };
        let c = out.entry(key).or_default();
        c.busy_seconds += busy_seconds;
        c.requests += requests;
    });
    out
}

#[derive(Default)]
struct State {
    scaler: Autoscaler<RevisionKey>,
    services: HashMap<RevisionKey, String>,
    last: HashMap<RevisionKey, (Instant, Counters)>,
    /// Revisions the autoscaler took to zero, with when their activation began (a held request).
    from_zero: HashMap<RevisionKey, Option<Instant>>,
}

/// The autoscaler's state for every routed local revision. Shared by the backend loop (which says
/// which revisions are routed and reads their replicas) and the sampling loop.
pub struct Autoscaling {
    config: AutoscalerConfig,
    origin: tokio::time::Instant,
    state: Mutex<State>,
    /// Revisions whose replicas a tick or a poke changed since the backend loop last asked.
    changed: Mutex<Vec<RevisionKey>>,
}

/// A cold start that just finished: the first held request's wait until a replica was ready.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColdStart {
    pub waited: Duration,
}

impl Autoscaling {
    pub fn new(config: AutoscalerConfig) -> Autoscaling {
        Autoscaling {
            config,
            origin: tokio::time::Instant::now(),
            state: Mutex::new(State::default()),
            changed: Mutex::new(Vec::new()),
        }
    }

    pub fn config(&self) -> &AutoscalerConfig {
        &self.config
    }

    fn now(&self) -> Time {
        tokio::time::Instant::now().saturating_duration_since(self.origin)
    }

    /// Manages a routed revision (starting at `replicas` if new) and returns the replicas it should run.
    pub fn manage(&self, key: &RevisionKey, service: &str, spec: DeciderSpec, replicas: u32) -> u32 {
        let now = self.now();
        let mut st = self.state.lock().unwrap();
        st.scaler.ensure(key, spec, now, replicas);
        st.services.insert(key.clone(), service.to_string());
        st.scaler.get(key).map(|r| r.replicas()).unwrap_or(replicas)
    }

    /// Stops managing every revision for which `keep` is false (no longer routed, deleted).
    pub fn retain(&self, keep: impl Fn(&RevisionKey) -> bool) {
        let mut st = self.state.lock().unwrap();
        st.scaler.retain(&keep);
        st.services.retain(|k, _| keep(k));
        st.last.retain(|k, _| keep(k));
        st.from_zero.retain(|k, _| keep(k));
    }

    /// Whether the revision is at zero (or coming back from it) because the autoscaler put it there,
    /// or was created at zero and a request woke it: requests to it are held until it has a replica,
    /// rather than routed elsewhere (as Knative's activator holds them).
    pub fn activatable(&self, key: &RevisionKey) -> bool {
        self.state.lock().unwrap().from_zero.contains_key(key)
    }

    /// Whether the revision is idle (Active=False, reason NoTraffic), whatever its replicas.
    pub fn inactive(&self, key: &RevisionKey) -> bool {
        let st = self.state.lock().unwrap();
        st.scaler
            .get(key)
            .is_some_and(|r| matches!(r.activity(), Activity::Inactive { .. }))
    }

    /// Records one sample per managed revision from the gateway's cumulative counters.
    pub fn sample(&self, counters: &HashMap<RevisionKey, Counters>) {
        let (now, at) = (self.now(), Instant::now());
        let mut st = self.state.lock().unwrap();
        let st = &mut *st;
        for key in st.scaler.keys() {
            let c = counters.get(&key).copied().unwrap_or_default();
            let prev = st.last.insert(key.clone(), (at, c));
            let (concurrency, rps) = match prev {
                Some((t, p)) => {
                    let dt = at.saturating_duration_since(t).as_secs_f64().max(1e-3);
                    (
                        ((c.busy_seconds - p.busy_seconds) / dt).max(0.0),
                        (c.requests.saturating_sub(p.requests)) as f64 / dt,
                    )
                }
                None => continue,
            };
            if let Some(r) = st.scaler.get_mut(&key) {
                r.record(now, concurrency, rps);
            }
        }
    }

    /// One tick for every managed revision; true if any replica count changed.
    pub fn tick(&self, ready: impl Fn(&RevisionKey) -> u32) -> bool {
        let now = self.now();
        let mut st = self.state.lock().unwrap();
        let changed = st.scaler.tick(now, &ready);
        let mut scaled = false;
        for (key, d) in changed {
            if d.replicas == 0 {
                st.from_zero.entry(key.clone()).or_insert(None);
            }
            scaled = true;
            let why = match &d.result {
                Some(r) if r.panicking => format!(
                    "panic mode: {:.2} in flight over the panic window (stable window {:.2}) wants {}",
                    r.panic, r.stable, r.desired
                ),
                Some(r) => format!("{:.2} in flight over the stable window wants {}", r.stable, r.desired),
                None if d.replicas == 0 => "no request within the scale-to-zero grace period".into(),
                None => "no data yet: initial scale".into(),
            };
            tracing::info!(decision = "scale", revision = %key, replicas = d.replicas, "scale {key} to {}: {why}", d.replicas);
            self.changed.lock().unwrap().push(key);
        }
        scaled
    }

    /// A request waits for a replica of `key` (`held` requests in all). True if replicas changed.
    pub fn poke(&self, key: &RevisionKey, held: usize, ready: u32) -> bool {
        let now = self.now();
        let mut st = self.state.lock().unwrap();
        let Some(r) = st.scaler.get_mut(key) else {
            return false;
        };
        let before = r.replicas();
        let decided = r.poke(now, held as u32, ready);
        let after = r.replicas();
        if decided.is_some() && after > 0 {
            match st.from_zero.get_mut(key) {
                Some(started) => {
                    started.get_or_insert_with(Instant::now);
                }
                // A revision created at zero (`initial-scale: 0`) starts cold too.
                None if before == 0 => {
                    st.from_zero.insert(key.clone(), Some(Instant::now()));
                }
                None => {}
            }
        }
        if before != after {
            tracing::info!(
                decision = "scale",
                revision = %key,
                replicas = after,
                "scale {key} to {after}: {held} request(s) waiting with {ready} ready replica(s)"
            );
            self.changed.lock().unwrap().push(key.clone());
        }
        before != after
    }

    /// The revisions whose replicas a tick or a poke changed since the last call.
    pub fn take_changed(&self) -> Vec<RevisionKey> {
        std::mem::take(&mut *self.changed.lock().unwrap())
    }

    /// The revision has a ready replica: if it was coming back from zero, the cold start is over.
    pub fn ready(&self, key: &RevisionKey) -> Option<ColdStart> {
        let mut st = self.state.lock().unwrap();
        match st.from_zero.get(key) {
            Some(Some(t)) => {
                let waited = t.elapsed();
                st.from_zero.remove(key);
                Some(ColdStart { waited })
            }
            Some(None) => {
                let at_zero = st.scaler.get(key).is_some_and(|r| r.replicas() == 0);
                if !at_zero {
                    st.from_zero.remove(key);
                }
                None
            }
            None => None,
        }
    }

    /// The autoscaler's view per revision, in Knative's autoscaler gauges (name, help, labels, value),
    /// sorted by name; `actual` is each revision's ready replicas.
    fn gauges(&self, actual: impl Fn(&RevisionKey) -> u32) -> BTreeMap<&'static str, (&'static str, Vec<Gauge>)> {
        let st = self.state.lock().unwrap();
        let mut rows: BTreeMap<&'static str, (&'static str, Vec<Gauge>)> = BTreeMap::new();
        for (key, r) in st.scaler.iter() {
            let svc = st.services.get(key).map(String::as_str).unwrap_or("");
            let labels = [
                ("namespace_name", key.namespace.clone()),
                ("service_name", svc.to_string()),
                ("configuration_name", svc.to_string()),
                ("revision_name", key.name.clone()),
            ];
            let last = r.last();
            let mut put = |name: &'static str, value: GaugeValue| {
                let help = GAUGE_HELP.iter().find(|(n, _)| *n == name).map_or("", |(_, h)| *h);
                rows.entry(name)
                    .or_insert((help, Vec::new()))
                    .1
                    .push((labels.clone(), value))
            };
            put("autoscaler_desired_pods", GaugeValue::Int(i64::from(r.replicas())));
            put("autoscaler_actual_pods", GaugeValue::Int(i64::from(actual(key))));
            put(
                "autoscaler_panic_mode",
                GaugeValue::Int(last.is_some_and(|l| l.panicking).into()),
            );
            let (stable, panic) = last.map(|l| (l.stable, l.panic)).unwrap_or((0.0, 0.0));
            let (s_name, p_name, t_name) = match r.spec().metric {
                revisor_autoscaler::Metric::Concurrency => (
                    "autoscaler_stable_request_concurrency",
                    "autoscaler_panic_request_concurrency",
                    "autoscaler_target_concurrency_per_pod",
                ),
                revisor_autoscaler::Metric::Rps => (
                    "autoscaler_stable_requests_per_second",
                    "autoscaler_panic_requests_per_second",
                    "autoscaler_target_requests_per_second",
                ),
            };
            put(s_name, GaugeValue::Float(stable));
            put(p_name, GaugeValue::Float(panic));
            put(t_name, GaugeValue::Float(r.spec().target_value));
            put(
                "autoscaler_excess_burst_capacity",
                GaugeValue::Float(last.map(|l| l.excess_burst_capacity as f64).unwrap_or(0.0)),
            );
        }
        rows
    }
}

/// One revision's value of a gauge: its labels (Knative's autoscaler labels) and value.
type Gauge = ([(&'static str, String); 4], GaugeValue);

/// Replica counts and panic mode are whole numbers; the rest are measured.
#[derive(Debug, Clone, Copy, PartialEq)]
enum GaugeValue {
    Int(i64),
    Float(f64),
}

/// The help text of each gauge.
const GAUGE_HELP: [(&str, &str); 10] = [
    ("autoscaler_desired_pods", "Number of replicas the autoscaler wants"),
    ("autoscaler_actual_pods", "Number of replicas that are ready"),
    (
        "autoscaler_panic_mode",
        "1 if the autoscaler is in panic mode, 0 otherwise",
    ),
    (
        "autoscaler_stable_request_concurrency",
        "Average concurrent requests over the stable window",
    ),
    (
        "autoscaler_panic_request_concurrency",
        "Average concurrent requests over the panic window",
    ),
    (
        "autoscaler_target_concurrency_per_pod",
        "The desired concurrent requests per replica",
    ),
    (
        "autoscaler_stable_requests_per_second",
        "Average requests per second over the stable window",
    ),
    (
        "autoscaler_panic_requests_per_second",
        "Average requests per second over the panic window",
    ),
    (
        "autoscaler_target_requests_per_second",
        "The desired requests per second per replica",
    ),
    (
        "autoscaler_excess_burst_capacity",
        "Excess burst capacity observed over the stable window",
    ),
];

/// The autoscaler's metrics for a prometheus-client [`Registry`](prometheus_client::registry::Registry),
/// read at each scrape with Knative's autoscaler names.
pub struct AutoscalerCollector {
    autoscaling: Arc<Autoscaling>,
    /// Each revision's ready replicas, at scrape time.
    ready: Box<dyn Fn() -> HashMap<RevisionKey, u32> + Send + Sync>,
}

impl AutoscalerCollector {
    pub fn new(
        autoscaling: Arc<Autoscaling>,
        ready: impl Fn() -> HashMap<RevisionKey, u32> + Send + Sync + 'static,
    ) -> Self {
        AutoscalerCollector {
            autoscaling,
            ready: Box::new(ready),
        }
    }
}

impl std::fmt::Debug for AutoscalerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoscalerCollector").finish_non_exhaustive()
    }
}

impl Collector for AutoscalerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ready = (self.ready)();
        let gauges = self.autoscaling.gauges(|k| ready.get(k).copied().unwrap_or(0));
        for (name, (help, values)) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, value) in values {
                let metric = family.encode_family(&labels)?;
                match value {
                    GaugeValue::Int(v) => ConstGauge::new(v).encode(metric)?,
                    GaugeValue::Float(v) => ConstGauge::new(v).encode(metric)?,
                }
            }
        }
        Ok(())
    }
}

/// The sampling and ticking loop. `counters` reads the gateway, `ready` the runtime; `scaled` is
/// called whenever replica counts changed. Pokes arrive on `pokes` as (revision, requests held).
pub async fn drive(
    autoscaling: &Autoscaling,
    counters: impl Fn() -> HashMap<RevisionKey, Counters>,
    ready: impl Fn(&RevisionKey) -> u32,
    scaled: impl Fn(),
    mut pokes: mpsc::UnboundedReceiver<(RevisionKey, usize)>,
) {
    let mut sample = tokio::time::interval(SAMPLE);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ticks_per_sample = (TICK.as_millis() / SAMPLE.as_millis()).max(1) as u64;
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = sample.tick() => {
                autoscaling.sample(&counters());
                n += 1;
                if n >= ticks_per_sample {
                    n = 0;
                    if autoscaling.tick(&ready) {
                        scaled();
                    }
                }
            }
            poke = pokes.recv() => match poke {
                Some((key, held)) => if autoscaling.poke(&key, held, ready(&key)) {
                    scaled();
                },
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;
    use revisor_api::annotations::AutoscalingAnnotations;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn key() -> RevisionKey {
        RevisionKey {
            namespace: "default".into(),
            name: "svc-00001".into(),
        }
    }

    /// The exposition of `a`'s collector (every revision with `ready` replicas), as `GET /metrics`
    /// ends it.
    fn exposition(a: &Arc<Autoscaling>, ready: u32) -> String {
        let snapshot: HashMap<RevisionKey, u32> = a
            .state
            .lock()
            .unwrap()
            .scaler
            .iter()
            .map(|(k, _)| (k.clone(), ready))
            .collect();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(AutoscalerCollector::new(a.clone(), move || snapshot.clone())));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    /// A concurrency-scaled revision's spec, 10 requests in flight per replica.
    fn concurrency_target_10(cfg: &AutoscalerConfig) -> DeciderSpec {
        let annotations = AutoscalingAnnotations {
            target: Some(10.0),
            ..Default::default()
        };
        DeciderSpec::resolve(cfg, &annotations, 0)
    }

    #[test]
    fn exports_knatives_gauges_per_revision() {
        let cfg = AutoscalerConfig::default();
        let a = Arc::new(Autoscaling::new(cfg.clone()));
        let concurrency = concurrency_target_10(&cfg);
        let rps = DeciderSpec::resolve(
            &cfg,
            &AutoscalingAnnotations {
                metric: Some("rps".into()),
                target: Some(150.0),
                ..Default::default()
            },
            0,
        );
        // The target per replica is the annotation's times the target utilization (70%), as Knative's.
        a.manage(&key(), "svc", concurrency, 2);
        let other = RevisionKey {
            namespace: "default".into(),
            name: "web-00003".into(),
        };
        a.manage(&other, "web", rps, 3);
        let text = exposition(&a, 1);
        let l = r#"{namespace_name="default",service_name="svc",configuration_name="svc",revision_name="svc-00001"}"#;
        let w = r#"{namespace_name="default",service_name="web",configuration_name="web",revision_name="web-00003"}"#;
        // Each revision appears under its own metric's names only (None).
        for (series, want) in [
            ("autoscaler_desired_pods{l}", Some("2")),
            ("autoscaler_desired_pods{w}", Some("3")),
            ("autoscaler_actual_pods{w}", Some("1")),
            ("autoscaler_panic_mode{l}", Some("0")),
            ("autoscaler_target_concurrency_per_pod{l}", Some("7.0")),
            ("autoscaler_target_requests_per_second{w}", Some("105.0")),
            ("autoscaler_target_requests_per_second{l}", None),
            ("autoscaler_stable_request_concurrency{w}", None),
        ] {
            let series = series.replace("{l}", l).replace("{w}", w);
            assert_eq!(revisor_gateway::sample(&text, &series), want, "{series} in\n{text}");
        }
        assert!(text.contains("# HELP autoscaler_desired_pods Number of replicas the autoscaler wants\n# TYPE autoscaler_desired_pods gauge\n"), "{text}");
        // One descriptor per family, each family's samples together.
        assert_eq!(text.matches("# TYPE autoscaler_desired_pods ").count(), 1, "{text}");
        assert_eq!(text.matches("# TYPE ").count(), 10, "{text}");
        assert!(text.ends_with("\n# EOF\n"), "{text}");
    }

    /// A revision created at zero (`initial-scale: 0`) that a request wakes is a cold start as much
    /// as one the autoscaler put at zero: it gets its ColdStart event (it got none before).
    #[tokio::test(start_paused = true)]
    async fn a_revision_created_at_zero_reports_its_cold_start() {
        let cfg = AutoscalerConfig::default();
        let a = Autoscaling::new(cfg.clone());
        assert_eq!(a.manage(&key(), "svc", concurrency_target_10(&cfg), 0), 0);
        assert!(a.ready(&key()).is_none(), "nothing waited yet");
        assert!(a.poke(&key(), 1, 0), "a held request scales it up");
        assert_eq!(a.manage(&key(), "svc", concurrency_target_10(&cfg), 0), 1);
        let cold = a
            .ready(&key())
            .expect("a cold start is reported once a replica is ready");
        assert!(cold.waited < Duration::from_secs(1), "{cold:?}");
        assert!(a.ready(&key()).is_none(), "once");
    }

    /// A simulated revision: `clients` closed-loop clients keep that many requests in flight; replicas
    /// become ready at once when asked for.
    struct Plant {
        clients: AtomicU32,
        replicas: AtomicU32,
        busy_ms: std::sync::Mutex<(tokio::time::Instant, f64)>,
    }

    impl Plant {
        fn counters(&self) -> HashMap<RevisionKey, Counters> {
            let mut b = self.busy_ms.lock().unwrap();
            let now = tokio::time::Instant::now();
            b.1 += now.duration_since(b.0).as_secs_f64() * self.clients.load(Ordering::SeqCst) as f64;
            b.0 = now;
            HashMap::from([(
                key(),
                Counters {
                    busy_seconds: b.1,
                    requests: (b.1 * 100.0) as u64,
                },
            )])
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_ticks_every_two_seconds_and_a_poke_acts_at_once() {
        let cfg = AutoscalerConfig {
            stable_window: Duration::from_secs(6),
            scale_to_zero_grace_period: Duration::from_secs(6),
            ..Default::default()
        };
        let a = Arc::new(Autoscaling::new(cfg.clone()));
        let spec = concurrency_target_10(&cfg);
        assert_eq!(a.manage(&key(), "svc", spec.clone(), 1), 1);
        let plant = Arc::new(Plant {
            clients: AtomicU32::new(0),
            replicas: AtomicU32::new(1),
            busy_ms: std::sync::Mutex::new((tokio::time::Instant::now(), 0.0)),
        });
        let (poke_tx, pokes) = mpsc::unbounded_channel();
        let scaled = Arc::new(AtomicU32::new(0));
        let driver = tokio::spawn({
            let (a, plant, scaled) = (a.clone(), plant.clone(), scaled.clone());
            async move {
                let p2 = plant.clone();
                drive(
                    &a,
                    || plant.counters(),
                    |_| p2.replicas.load(Ordering::SeqCst),
                    || {
                        scaled.fetch_add(1, Ordering::SeqCst);
                    },
                    pokes,
                )
                .await
            }
        });
        let replicas = |a: &Autoscaling| a.manage(&key(), "svc", spec.clone(), 1);
        let follow = |a: &Autoscaling| plant.replicas.store(replicas(a), Ordering::SeqCst);

        // Idle: inactive after a stable window (6s), zero after the grace period (6s more).
        let mut zero_at = None;
        for s in 1..=20 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            follow(&a);
            if replicas(&a) == 0 && zero_at.is_none() {
                zero_at = Some(s);
            }
        }
        let zero_at = zero_at.expect("scaled to zero");
        assert!(
            (12..=15).contains(&zero_at),
            "zero after 6s + 6s (at a tick): {zero_at}"
        );
        assert!(a.activatable(&key()));

        // A poke at zero scales up without waiting for the tick.
        poke_tx.send((key(), 1)).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(replicas(&a), 1, "one replica at once");
        follow(&a);
        assert!(
            a.ready(&key()).is_some(),
            "a cold start is reported once a replica is ready"
        );
        assert!(!a.activatable(&key()));

        // A load step to 200 in flight: panic, and the KPA's answer within two ticks.
        plant.clients.store(200, Ordering::SeqCst);
        let want = (200.0f64 / 7.0).ceil() as u32;
        let mut reached = None;
        for ms in (0..10_000).step_by(100) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            follow(&a);
            if replicas(&a) >= want && reached.is_none() {
                reached = Some(ms);
            }
        }
        let reached = reached.expect("reached the KPA's answer");
        assert!(reached <= 4_100, "within two ticks of the step: {reached} ms");
        assert!(scaled.load(Ordering::SeqCst) >= 3);
        let text = exposition(&a, 1);
        let l = r#"{namespace_name="default",service_name="svc",configuration_name="svc",revision_name="svc-00001"}"#;
        let desired = replicas(&a).to_string();
        for (name, want) in [("autoscaler_panic_mode", "1"), ("autoscaler_desired_pods", &desired)] {
            let series = format!("{name}{l}");
            assert_eq!(
                revisor_gateway::sample(&text, &series),
                Some(want),
                "{series} in\n{text}"
            );
        }
        driver.abort();
    }
}

//! Per-revision request metrics, recorded on the hot path with atomics only, exported as snapshots
//! for the autoscaler and rollout analysis and, through a prometheus-client [`Collector`] that reads
//! them at scrape time, as OpenMetrics text.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use serde::Serialize;

/// Upper bounds of the latency buckets, in milliseconds.
pub const LATENCY_BUCKETS_MS: [f64; 25] = [
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 750.0,
    1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0, 100000.0,
];

/// Upper bounds of the buckets of prediction differences (the last bucket is above 1).
pub const DIFF_BUCKETS: [f64; 10] = [1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];

/// Why a request that reached a revision's route is reported but not counted as the revision's
/// answer (so rollout analysis never blames a canary for it): the client went away before the answer,
/// the client's request body was malformed, or the gateway shed it (the revision's queue was full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCounted {
    ClientClosed = 0,
    BadRequest = 1,
    Shed = 2,
}

/// The `reason` label of each [`NotCounted`], by its index.
pub const NOT_COUNTED_REASONS: [&str; 3] = ["client-closed", "bad-request", "shed"];

/// Which revision, reached through which route (`tag` is empty for the service's own URL).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Labels {
    pub namespace: String,
    pub service: String,
    pub revision: String,
    pub tag: String,
}

#[derive(Debug)]
pub struct RevisionMetrics {
    pub labels: Labels,
    /// Responses by class: 1xx .. 5xx.
    classes: [AtomicU64; 5],
    /// Cumulative-free counts per bucket (the last slot is +Inf).
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    sum_us: AtomicU64,
    in_flight: AtomicI64,
    /// Time in flight summed over requests, kept as `sum(end) - sum(start)` in microseconds since
    /// [`clock_us`]'s origin, so that adding `in_flight × now` gives the request-seconds up to now
    /// with atomics only.
    busy_us: AtomicI64,
    /// Mirrored answers compared with the primary's, and how they compared.
    compared: AtomicU64,
    argmax_agreed: AtomicU64,
    diff_buckets: [AtomicU64; DIFF_BUCKETS.len() + 1],
    /// Requests reported but not counted, by [`NotCounted`].
    not_counted: [AtomicU64; 3],
}

/// Microseconds since a process-wide origin (a monotonic clock; the origin lies a day before first use,
/// so instants taken shortly before it still count).
pub fn clock_us(at: Instant) -> i64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now)
    });
    at.saturating_duration_since(origin).as_micros() as i64
}

/// A point-in-time copy of one revision's counters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    pub labels: Labels,
    pub requests: [u64; 5],
    pub latency_buckets_ms: Vec<f64>,
    /// Count per bucket (not cumulative); the last is above the highest bound.
    pub latency_counts: Vec<u64>,
    pub latency_sum_ms: f64,
    pub in_flight: i64,
    /// Request-seconds spent in flight since the revision was first routed: its growth over an
    /// interval divided by the interval is the average concurrency (what Knative's autoscaler scales on).
    pub busy_seconds: f64,
    /// Mirrored answers compared with the primary revision's (model predictions).
    pub compared: u64,
    pub argmax_agreed: u64,
    /// Count per bucket of the largest absolute difference (bounds [`DIFF_BUCKETS`], then above).
    pub diff_counts: Vec<u64>,
    /// Requests reported but not counted in `requests` or the latencies, by [`NotCounted`].
    pub not_counted: [u64; 3],
}

impl MetricsSnapshot {
    pub fn total(&self) -> u64 {
        self.requests.iter().sum()
    }
}

impl RevisionMetrics {
    pub fn new(labels: Labels) -> Self {
        RevisionMetrics {
            labels,
            classes: Default::default(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            busy_us: AtomicI64::new(0),
            compared: AtomicU64::new(0),
            argmax_agreed: AtomicU64::new(0),
            diff_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            not_counted: Default::default(),
        }
    }

    /// Records how a mirrored answer compared with the primary's.
    pub fn record_comparison(&self, c: crate::compare::Comparison) {
        self.compared.fetch_add(1, Ordering::Relaxed);
        if c.argmax_agree {
            self.argmax_agreed.fetch_add(1, Ordering::Relaxed);
        }
        let idx = DIFF_BUCKETS
            .iter()
            .position(|b| c.max_abs_diff <= *b)
            .unwrap_or(DIFF_BUCKETS.len());
        self.diff_buckets[idx].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request in flight from `at`.
    pub fn start(&self, at: Instant) {
        self.busy_us.fetch_sub(clock_us(at), Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a request that ended without the revision's answer to count (see [`NotCounted`]); it
    /// was in flight all the same.
    pub fn finish_not_counted(&self, why: NotCounted, started: Instant, elapsed: Duration) {
        self.end(started, elapsed);
        self.not_counted[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn end(&self, started: Instant, elapsed: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.busy_us.fetch_add(clock_us(started + elapsed), Ordering::Relaxed);
    }

    /// Records a finished request that took `elapsed` since its start.
    pub fn finish(&self, status: u16, started: Instant, elapsed: Duration) {
        self.end(started, elapsed);
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        let ms = elapsed.as_secs_f64() * 1000.0;
        let idx = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// What the autoscaler samples every second: request-seconds so far (finished requests' time
    /// and in-flight requests' time until now) and requests counted (finished and in flight), read
    /// without copying the rest of the counters.
    pub fn load(&self) -> (f64, u64) {
        let now = clock_us(Instant::now());
        let in_flight = self.in_flight();
        let busy = self.busy_us.load(Ordering::Relaxed) + in_flight * now;
        let finished: u64 = self.classes.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        (busy as f64 / 1e6, finished + in_flight.max(0) as u64)
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let now = clock_us(Instant::now());
        let in_flight = self.in_flight();
        let busy = self.busy_us.load(Ordering::Relaxed) + in_flight * now;
        MetricsSnapshot {
            labels: self.labels.clone(),
            requests: std::array::from_fn(|i| self.classes[i].load(Ordering::Relaxed)),
            latency_buckets_ms: LATENCY_BUCKETS_MS.to_vec(),
            latency_counts: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            latency_sum_ms: self.sum_us.load(Ordering::Relaxed) as f64 / 1000.0,
            in_flight,
            busy_seconds: busy as f64 / 1e6,
            compared: self.compared.load(Ordering::Relaxed),
            argmax_agreed: self.argmax_agreed.load(Ordering::Relaxed),
            diff_counts: self.diff_buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            not_counted: std::array::from_fn(|i| self.not_counted[i].load(Ordering::Relaxed)),
        }
    }
}

/// The `response_code_class` label of each slot of [`MetricsSnapshot::requests`].
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Knative's queue-proxy labels of one revision's route (`configuration_name` is the service's, as
/// every revisor service has one configuration of its name).
fn label_set(l: &Labels) -> [(&'static str, &str); 5] {
    [
        ("namespace_name", &l.namespace),
        ("service_name", &l.service),
        ("configuration_name", &l.service),
        ("revision_name", &l.revision),
        ("tag", &l.tag),
    ]
}

/// The gateway's metrics for a prometheus-client [`Registry`](prometheus_client::registry::Registry):
/// at each scrape it takes fresh snapshots (the hot path keeps recording on its own atomics) and
/// encodes them with Knative's metric names.
pub struct MetricsCollector {
    snapshots: Box<dyn Fn() -> Vec<MetricsSnapshot> + Send + Sync>,
}

impl MetricsCollector {
    /// A collector that encodes whatever `snapshots` returns at scrape time.
    pub fn new(snapshots: impl Fn() -> Vec<MetricsSnapshot> + Send + Sync + 'static) -> Self {
        MetricsCollector {
            snapshots: Box::new(snapshots),
        }
    }
}

impl std::fmt::Debug for MetricsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsCollector").finish_non_exhaustive()
    }
}

impl Collector for MetricsCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_snapshots(&(self.snapshots)(), encoder)
    }
}

/// A counter family (name, help) by revision and one more label, whose values and counts `by` gives.
fn counters_by(
    encoder: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    snaps: &[MetricsSnapshot],
    label: &str,
    by: impl Fn(&MetricsSnapshot) -> Vec<(&'static str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for s in snaps {
        for (value, n) in by(s) {
            let labels = (label_set(&s.labels), [(label, value)]);
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// Encodes snapshots as OpenMetrics families with Knative's queue-proxy names (counters get the
/// `_total` suffix OpenMetrics gives every counter).
fn encode_snapshots(snaps: &[MetricsSnapshot], mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
    type By = fn(&MetricsSnapshot) -> Vec<(&'static str, u64)>;
    let by_label: [(&str, &str, &str, By); 2] = [
        (
            "revision_request_count",
            "The number of requests that are routed to a revision",
            "response_code_class",
            |s| CLASSES.iter().copied().zip(s.requests).collect(),
        ),
        (
            "revisor_requests_not_counted",
            "Requests not counted as the revision's answers: the client closed the connection first, sent a malformed body, or the gateway shed them",
            "reason",
            |s| NOT_COUNTED_REASONS.iter().copied().zip(s.not_counted).collect(),
        ),
    ];
    for (name, help, label, by) in by_label {
        counters_by(&mut encoder, (name, help), snaps, label, by)?;
    }
    let mut family = encoder.encode_descriptor(
        "revision_request_latencies",
        "The response time of requests to a revision, in milliseconds",
        None,
        MetricType::Histogram,
    )?;
    for s in snaps {
        let mut buckets: Vec<(f64, u64)> = s
            .latency_buckets_ms
            .iter()
            .copied()
            .zip(s.latency_counts.iter().copied())
            .collect();
        buckets.push((f64::INFINITY, s.latency_counts.last().copied().unwrap_or(0)));
        let count = buckets.iter().map(|(_, n)| n).sum();
        let labels = label_set(&s.labels);
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(s.latency_sum_ms, count, &buckets, None)?;
    }
    let compared: Vec<&MetricsSnapshot> = snaps.iter().filter(|s| s.compared > 0).collect();
    type Count = fn(&MetricsSnapshot) -> u64;
    let comparisons: [(&str, &str, Count); 2] = [
        (
            "revisor_prediction_comparisons",
            "Mirrored answers compared with the primary revision's",
            |s| s.compared,
        ),
        (
            "revisor_prediction_argmax_agreements",
            "Mirrored answers whose argmax agreed with the primary revision's",
            |s| s.argmax_agreed,
        ),
    ];
    for (name, help, count) in comparisons {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for s in &compared {
            ConstCounter::new(count(s)).encode(family.encode_family(&label_set(&s.labels))?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "revision_concurrent_requests",
        "Requests in flight to a revision",
        None,
        MetricType::Gauge,
    )?;
    for s in snaps {
        ConstGauge::new(s.in_flight).encode(family.encode_family(&label_set(&s.labels))?)?;
    }
    Ok(())
}

/// The value of the sample whose name and labels are exactly `series` in an exposition (text format),
/// as the tests of every `/metrics` read one.
pub fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(s, _)| *s == series).map(|(_, v)| v))
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use super::*;

    /// What the autoscaler samples (`load`) is what a snapshot says of the same counters.
    #[test]
    fn the_autoscalers_load_agrees_with_a_snapshot() {
        let m = RevisionMetrics::new(Labels {
            namespace: "default".into(),
            service: "svc".into(),
            revision: "svc-00001".into(),
            tag: String::new(),
        });
        let t0 = Instant::now() - Duration::from_secs(2);
        m.start(t0);
        m.finish(200, t0, Duration::from_millis(500));
        m.start(t0);
        m.finish(503, t0, Duration::from_millis(250));
        m.start(t0 + Duration::from_secs(1));
        let (busy, requests) = m.load();
        let snap = m.snapshot();
        assert_eq!(requests, snap.total() + snap.in_flight as u64);
        assert_eq!(requests, 3, "two finished, one in flight");
        assert!(
            (busy - snap.busy_seconds).abs() < 0.05,
            "{busy} vs {}",
            snap.busy_seconds
        );
        assert!(
            busy >= 0.75 + 0.99,
            "the in-flight request counts its second so far: {busy}"
        );
    }

    #[test]
    fn busy_time_counts_requests_still_in_flight() {
        let m = RevisionMetrics::new(Labels {
            namespace: "ns".into(),
            service: "s".into(),
            revision: "r".into(),
            tag: String::new(),
        });
        let t0 = Instant::now() - Duration::from_secs(2);
        m.start(t0);
        m.start(t0 + Duration::from_secs(1));
        let s = m.snapshot();
        assert!(
            (s.busy_seconds - 3.0).abs() < 0.05,
            "2s + 1s so far: {}",
            s.busy_seconds
        );
        m.finish(200, t0, Duration::from_millis(500));
        let s = m.snapshot();
        assert!(
            (s.busy_seconds - 1.5).abs() < 0.05,
            "0.5s done + 1s in flight: {}",
            s.busy_seconds
        );
    }

    fn labels(revision: &str, tag: &str) -> Labels {
        Labels {
            namespace: "ns".into(),
            service: "s".into(),
            revision: revision.into(),
            tag: tag.into(),
        }
    }

    /// The exposition `GET /metrics` serves for these snapshots.
    fn exposition(snaps: Vec<MetricsSnapshot>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(MetricsCollector::new(move || snaps.clone())));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn records_classes_buckets_and_renders() {
        let m = RevisionMetrics::new(labels("s-00001", ""));
        let t0 = Instant::now();
        for (status, ms) in [(200, 0.1), (200, 3.0), (503, 70.0), (404, 1e9)] {
            m.start(t0);
            m.finish(status, t0, Duration::from_secs_f64(ms / 1000.0));
        }
        m.start(t0);
        m.finish_not_counted(NotCounted::Shed, t0, Duration::ZERO);
        m.start(t0);
        let s = m.snapshot();
        assert_eq!(s.requests, [0, 2, 0, 1, 1]);
        assert_eq!(s.in_flight, 1);
        assert_eq!(s.latency_counts[0], 1);
        assert_eq!(*s.latency_counts.last().unwrap(), 1);
        let text = exposition(vec![s]);

        let l = r#"namespace_name="ns",service_name="s",configuration_name="s",revision_name="s-00001",tag="""#;
        assert!(text.contains("# HELP revision_request_count The number of requests that are routed to a revision\n# TYPE revision_request_count counter\n"), "{text}");
        for (class, n) in [("1xx", "0"), ("2xx", "2"), ("3xx", "0"), ("4xx", "1"), ("5xx", "1")] {
            let series = format!("revision_request_count_total{{{l},response_code_class=\"{class}\"}}");
            assert_eq!(sample(&text, &series), Some(n), "{series} in\n{text}");
        }
        assert!(text.contains("# TYPE revision_request_latencies histogram\n"), "{text}");
        let bucket = |le: &str| sample(&text, &format!("revision_request_latencies_bucket{{le=\"{le}\",{l}}}"));
        assert_eq!(bucket("0.25"), Some("1"), "{text}");
        assert_eq!(bucket("5.0"), Some("2"), "{text}");
        assert_eq!(bucket("80.0"), Some("3"), "{text}");
        assert_eq!(bucket("100000.0"), Some("3"), "{text}");
        assert_eq!(bucket("+Inf"), Some("4"), "{text}");
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("revision_request_latencies_bucket"))
            .count();
        assert_eq!(buckets, LATENCY_BUCKETS_MS.len() + 1, "{text}");
        assert_eq!(
            sample(&text, &format!("revision_request_latencies_count{{{l}}}")),
            Some("4")
        );
        let sum: f64 = sample(&text, &format!("revision_request_latencies_sum{{{l}}}"))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - (0.1 + 3.0 + 70.0 + 1e9)).abs() < 1e-3, "{sum}");
        for (reason, n) in [("client-closed", "0"), ("bad-request", "0"), ("shed", "1")] {
            let series = format!("revisor_requests_not_counted_total{{{l},reason=\"{reason}\"}}");
            assert_eq!(sample(&text, &series), Some(n), "{series} in\n{text}");
        }
        assert!(text.contains("# TYPE revision_concurrent_requests gauge\n"), "{text}");
        assert_eq!(
            sample(&text, &format!("revision_concurrent_requests{{{l}}}")),
            Some("1")
        );
        // Nothing compared: the families are described, without samples.
        assert!(
            text.contains("# TYPE revisor_prediction_comparisons counter\n"),
            "{text}"
        );
        assert!(!text.contains("revisor_prediction_comparisons_total{"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("\n# EOF\n"), "{text}");
    }

    #[test]
    fn renders_comparisons_per_route() {
        let primary = RevisionMetrics::new(labels("s-00001", ""));
        let mirror = RevisionMetrics::new(labels("s-00002", "mirror"));
        for agree in [true, false, true] {
            mirror.record_comparison(crate::compare::Comparison {
                argmax_agree: agree,
                max_abs_diff: 0.5,
            });
        }
        let text = exposition(vec![primary.snapshot(), mirror.snapshot()]);
        let l = r#"namespace_name="ns",service_name="s",configuration_name="s",revision_name="s-00002",tag="mirror""#;
        assert_eq!(
            sample(&text, &format!("revisor_prediction_comparisons_total{{{l}}}")),
            Some("3"),
            "{text}"
        );
        assert_eq!(
            sample(&text, &format!("revisor_prediction_argmax_agreements_total{{{l}}}")),
            Some("2"),
            "{text}"
        );
        assert!(text.contains("# HELP revisor_prediction_argmax_agreements "), "{text}");
        // The primary compared nothing: no comparison samples of its own.
        assert_eq!(
            text.matches("revisor_prediction_comparisons_total{").count(),
            1,
            "{text}"
        );
        // Both routes' request counts.
        assert_eq!(text.matches("revision_request_count_total{").count(), 10, "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        // A tag is any string a route names: a quote, backslash or newline must not end the value.
        let m = RevisionMetrics::new(labels("s-00001", "a\"b\\c\nd"));
        let t0 = Instant::now();
        m.start(t0);
        m.finish(200, t0, Duration::from_millis(1));
        let text = exposition(vec![m.snapshot()]);
        let series = r#"revision_request_count_total{namespace_name="ns",service_name="s",configuration_name="s",revision_name="s-00001",tag="a\"b\\c\nd",response_code_class="2xx"}"#;
        assert_eq!(sample(&text, series), Some("1"), "{text}");
        assert!(!text.contains("a\"b"), "an unescaped quote: {text}");
    }
}

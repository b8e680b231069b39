//! Analysis windows from Prometheus: the request count and latency histogram that Knative's
//! queue-proxy exports for every revision, summed over its pods with `increase()` over the window.
//!
//! Knative has named them two ways. Since 1.19 the queue-proxy reports OpenTelemetry's HTTP server
//! metrics (`http.server.request.duration`, seconds, by `http.response.status_code`) with the
//! attributes `k8s.namespace.name` and `kn.revision.name`; Prometheus sees
//! `http_server_request_duration_seconds_{count,bucket}` with those names' dots as underscores.
//! Before, with OpenCensus, it was `revision_request_count` (by `response_code_class`) and
//! `revision_request_latencies_bucket` (milliseconds), labelled `namespace_name` and `revision_name`.
//! Each window asks for the OpenTelemetry series first and falls back to the older ones.
//!
//! Sequential analysis needs cumulative counters rather than windows. A revision's counters are its
//! pods' series summed by revisor itself, from one instant query per series name: each series (one
//! pod's counter for one status class or bucket) adds what it grew since the last reading, or all of
//! it when it went back (the pod's queue-proxy restarted) or is new (a new pod counts from zero).
//! A series that leaves (a pod scaled away, a scrape that failed) keeps its last value, so coming back
//! adds only its growth. Summing in PromQL instead would make the total fall whenever a pod goes away,
//! and a fall reads as a data plane restart. Readings are cached for a second: the controller steps
//! every quarter second, and looks are a second apart.
//!
//! Queries go through revisor-rollout-controller's one Prometheus client.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use revisor_rollout::{Counters, Window};
use revisor_rollout_controller::{MetricsSource, PrometheusClient};

/// The queue-proxy's counter of requests, by `response_code_class` (Knative Serving's
/// `revision_request_count`, labels `namespace_name`, `revision_name`, `response_code_class`, ...).
pub const REQUEST_COUNT: &str = "revision_request_count";
/// The queue-proxy's response-time histogram, in milliseconds.
pub const REQUEST_LATENCIES: &str = "revision_request_latencies_bucket";
/// The labels of the OpenCensus-era series.
pub const OPENCENSUS_LABELS: (&str, &str) = ("namespace_name", "revision_name");
/// Knative 1.19+: requests counted by OpenTelemetry's HTTP server histogram, by status code.
pub const OTEL_REQUEST_COUNT: &str = "http_server_request_duration_seconds_count";
/// Knative 1.19+: the same histogram's buckets, in seconds.
pub const OTEL_REQUEST_DURATION: &str = "http_server_request_duration_seconds_bucket";
/// The labels of the OpenTelemetry series.
pub const OTEL_LABELS: (&str, &str) = ("k8s_namespace_name", "kn_revision_name");

pub use revisor_rollout_controller::prometheus::Series;
/// Values by one label's value (a status class, a bucket's `le`).
type ByLabel = Vec<(String, f64)>;

/// How long a revision's counters are reused before Prometheus is asked again.
const COUNTERS_FRESH_FOR: Duration = Duration::from_secs(1);
/// A revision whose counters nobody asked for this long is forgotten.
const COUNTERS_FORGOTTEN_AFTER: Duration = Duration::from_secs(600);

/// Reads revision windows and counters from the Prometheus at `url`.
pub struct PrometheusMetrics {
    client: PrometheusClient,
    /// Per namespace and revision: the running totals and when they were last read.
    counted: Mutex<HashMap<(String, String), Counted>>,
}

/// One revision's running totals.
#[derive(Default)]
struct Counted {
    /// Per series name (a request count, a bucket series).
    totals: HashMap<&'static str, Totals>,
    read_at: Option<Instant>,
    asked_at: Option<Instant>,
    last: Option<Counters>,
}

/// Totals of one series name by one label, kept across pods coming, going and restarting.
#[derive(Debug, Default)]
pub struct Totals {
    /// Each series' last value, by its whole label set.
    last: HashMap<String, f64>,
    /// The running total by the label (`le`, a status code or class).
    by: BTreeMap<String, f64>,
}

impl Totals {
    /// Adds what each series grew since the last reading (all of it when it is new or went back) and
    /// answers the running totals by `by`.
    pub fn update(&mut self, series: &[Series], by: &str) -> Vec<(String, f64)> {
        for (labels, value) in series {
            let Some(group) = labels.get(by) else { continue };
            let key = format!("{labels:?}");
            let grew = match self.last.get(&key) {
                Some(last) if value >= last => value - last,
                _ => *value,
            };
            *self.by.entry(group.clone()).or_default() += grew;
            self.last.insert(key, *value);
        }
        self.by.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

impl PrometheusMetrics {
    pub fn new(url: &str) -> Self {
        PrometheusMetrics {
            client: PrometheusClient::new(url),
            counted: Mutex::new(HashMap::new()),
        }
    }

    /// The PromQL selecting every series of `metric` of one revision (each pod's, unsummed).
    pub fn selector(metric: &str, labels: (&str, &str), namespace: &str, revision: &str) -> String {
        format!(
            "{metric}{{{}=\"{}\",{}=\"{}\"}}",
            labels.0,
            escape(namespace),
            labels.1,
            escape(revision)
        )
    }

    /// The PromQL for `metric` of one revision (its namespace and revision under `labels`), summed by
    /// `by` over `seconds`.
    pub fn query(
        metric: &str,
        by: &str,
        labels: (&str, &str),
        namespace: &str,
        revision: &str,
        seconds: f64,
    ) -> String {
        format!(
            "sum by ({by}) (increase({metric}{{{}=\"{}\",{}=\"{}\"}}[{}s]))",
            labels.0,
            escape(namespace),
            labels.1,
            escape(revision),
            seconds.ceil().max(1.0) as u64
        )
    }

    /// Runs an instant query and returns each series' label `by` with its value.
    async fn vector(&self, query: &str, by: &str) -> Result<Vec<(String, f64)>, String> {
        Ok(self
            .instant(query)
            .await?
            .into_iter()
            .filter_map(|(labels, v)| Some((labels.get(by)?.clone(), v)))
            .collect())
    }

    /// Runs an instant query and returns each series' labels with its value (a counter, so never
    /// negative or NaN).
    async fn instant(&self, query: &str) -> Result<Vec<Series>, String> {
        let answer = self.client.query(query).await?;
        Ok(answer
            .series()
            .into_iter()
            .map(|(labels, v)| (labels, if v.is_finite() { v.max(0.0) } else { 0.0 }))
            .collect())
    }

    fn counted(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Counted>> {
        self.counted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The revision's cumulative counters now (see the module's doc), or why they could not be read.
    pub async fn read_counters(&self, namespace: &str, revision: &str) -> Result<Counters, String> {
        let now = Instant::now();
        let key = (namespace.to_string(), revision.to_string());
        {
            let mut all = self.counted();
            all.retain(|_, c| c.asked_at.is_some_and(|t| now - t < COUNTERS_FORGOTTEN_AFTER));
            let c = all.entry(key.clone()).or_default();
            c.asked_at = Some(now);
            if let (Some(at), Some(last)) = (c.read_at, &c.last) {
                if now - at < COUNTERS_FRESH_FOR {
                    return Ok(last.clone());
                }
            }
        }
        let (ns, rev) = (namespace, revision);
        let code = "http_response_status_code";
        let codes = self
            .instant(&Self::selector(OTEL_REQUEST_COUNT, OTEL_LABELS, ns, rev))
            .await?;
        // The series are read first, then added to the totals under the lock (never held across a
        // query).
        let counters = if codes.iter().any(|(l, _)| l.contains_key(code)) {
            let buckets = self
                .instant(&Self::selector(OTEL_REQUEST_DURATION, OTEL_LABELS, ns, rev))
                .await?;
            let mut all = self.counted();
            let c = all.entry(key).or_default();
            let codes = c.totals.entry(OTEL_REQUEST_COUNT).or_default().update(&codes, code);
            let buckets = c
                .totals
                .entry(OTEL_REQUEST_DURATION)
                .or_default()
                .update(&buckets, "le");
            let (classes, buckets) = otel_to_opencensus(&codes, &buckets);
            let counters = counters_of(&classes, &buckets);
            c.read_at = Some(now);
            c.last = Some(counters.clone());
            counters
        } else {
            let class = "response_code_class";
            let classes = self
                .instant(&Self::selector(REQUEST_COUNT, OPENCENSUS_LABELS, ns, rev))
                .await?;
            let buckets = self
                .instant(&Self::selector(REQUEST_LATENCIES, OPENCENSUS_LABELS, ns, rev))
                .await?;
            let mut all = self.counted();
            let c = all.entry(key).or_default();
            let classes = c.totals.entry(REQUEST_COUNT).or_default().update(&classes, class);
            let buckets = c.totals.entry(REQUEST_LATENCIES).or_default().update(&buckets, "le");
            let counters = counters_of(&classes, &buckets);
            c.read_at = Some(now);
            c.last = Some(counters.clone());
            counters
        };
        Ok(counters)
    }

    /// The revision's window over the last `seconds`, or why it could not be read.
    pub async fn read_window(&self, namespace: &str, revision: &str, seconds: f64) -> Result<Window, String> {
        let (ns, rev) = (namespace, revision);
        let code = "http_response_status_code";
        let codes = self
            .vector(
                &Self::query(OTEL_REQUEST_COUNT, code, OTEL_LABELS, ns, rev, seconds),
                code,
            )
            .await?;
        if !codes.is_empty() {
            let buckets = self
                .vector(
                    &Self::query(OTEL_REQUEST_DURATION, "le", OTEL_LABELS, ns, rev, seconds),
                    "le",
                )
                .await?;
            return Ok(otel_window(&codes, &buckets, seconds));
        }
        let class = "response_code_class";
        let classes = self
            .vector(
                &Self::query(REQUEST_COUNT, class, OPENCENSUS_LABELS, ns, rev, seconds),
                class,
            )
            .await?;
        let buckets = self
            .vector(
                &Self::query(REQUEST_LATENCIES, "le", OPENCENSUS_LABELS, ns, rev, seconds),
                "le",
            )
            .await?;
        Ok(window_of(&classes, &buckets, seconds))
    }
}

/// A window from requests by class (`2xx`..) and cumulative latency buckets by `le`.
pub fn window_of(classes: &[(String, f64)], buckets: &[(String, f64)], seconds: f64) -> Window {
    Window::between(&Counters::default(), &counters_of(classes, buckets), seconds)
}

/// Counters from requests by class (`2xx`..) and cumulative latency buckets by `le` (ms).
pub fn counters_of(classes: &[(String, f64)], buckets: &[(String, f64)]) -> Counters {
    let mut requests = [0u64; 5];
    for (class, n) in classes {
        let i = match class.chars().next().and_then(|c| c.to_digit(10)) {
            Some(d @ 1..=5) => d as usize - 1,
            // Not an HTTP class: counted among requests, never as an error.
            _ => 1,
        };
        requests[i] += n.round() as u64;
    }
    let mut cumulative: Vec<(f64, f64)> = buckets
        .iter()
        .filter_map(|(le, n)| {
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((bound, *n))
        })
        .collect();
    cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut bounds_ms = Vec::new();
    let mut latency_counts = Vec::new();
    let mut below = 0.0;
    for (bound, n) in &cumulative {
        if bound.is_finite() {
            bounds_ms.push(*bound);
        }
        latency_counts.push((n - below).max(0.0).round() as u64);
        below = n.max(below);
    }
    if cumulative.last().is_some_and(|(b, _)| b.is_finite()) {
        latency_counts.push(0);
    }
    Counters {
        requests,
        bounds_ms,
        latency_counts,
        ..Counters::default()
    }
}

/// A window from OpenTelemetry's series: requests by status code (`503`), buckets by `le` in seconds.
pub fn otel_window(codes: &[(String, f64)], buckets_s: &[(String, f64)], seconds: f64) -> Window {
    let (classes, buckets_ms) = otel_to_opencensus(codes, buckets_s);
    window_of(&classes, &buckets_ms, seconds)
}

/// OpenTelemetry's status codes as classes and its buckets in seconds as buckets in ms.
fn otel_to_opencensus(codes: &[(String, f64)], buckets_s: &[(String, f64)]) -> (ByLabel, ByLabel) {
    let classes = codes
        .iter()
        .map(|(code, n)| (format!("{}xx", code.chars().next().unwrap_or('0')), *n))
        .collect();
    let buckets_ms = buckets_s
        .iter()
        .filter_map(|(le, n)| {
            let le = if le == "+Inf" {
                le.clone()
            } else {
                // Seconds to ms, without the binary fraction's noise (0.05 s is 50 ms).
                ((le.parse::<f64>().ok()? * 1e9).round() / 1e6).to_string()
            };
            Some((le, *n))
        })
        .collect();
    (classes, buckets_ms)
}

/// Escapes a label value for PromQL.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

impl MetricsSource for PrometheusMetrics {
    /// Counters summed over the revision's pods by revisor (for sequential analysis); `None` when
    /// Prometheus cannot be read, so nothing is judged on a reading that did not happen.
    async fn counters(&self, namespace: &str, revision: &str) -> Option<Counters> {
        match self.read_counters(namespace, revision).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("counters of {namespace}/{revision}: {e}");
                None
            }
        }
    }

    async fn window(&self, namespace: &str, revision: &str, seconds: f64) -> Option<Window> {
        match self.read_window(namespace, revision, seconds).await {
            Ok(w) => Some(w),
            Err(e) => {
                // An empty window is inconclusive: analysis waits rather than judging on no data.
                tracing::warn!("analysis window of {namespace}/{revision}: {e}");
                Some(Window {
                    seconds,
                    ..Window::default()
                })
            }
        }
    }
}

/// The metrics source on a cluster: Prometheus when one is given; without one every reading is
/// empty, and the world refuses Rollouts whose analysis would need one.
pub enum ClusterMetrics {
    Prometheus(PrometheusMetrics),
    None,
}

impl ClusterMetrics {
    pub fn new(prometheus: Option<&str>) -> Self {
        match prometheus {
            Some(url) => ClusterMetrics::Prometheus(PrometheusMetrics::new(url)),
            None => ClusterMetrics::None,
        }
    }
}

impl MetricsSource for ClusterMetrics {
    async fn counters(&self, namespace: &str, revision: &str) -> Option<Counters> {
        match self {
            ClusterMetrics::Prometheus(p) => p.counters(namespace, revision).await,
            ClusterMetrics::None => None,
        }
    }

    async fn window(&self, namespace: &str, revision: &str, seconds: f64) -> Option<Window> {
        match self {
            ClusterMetrics::Prometheus(p) => p.window(namespace, revision, seconds).await,
            ClusterMetrics::None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_sums_one_revision_over_the_window() {
        assert_eq!(
            PrometheusMetrics::query(
                REQUEST_COUNT,
                "response_code_class",
                OPENCENSUS_LABELS,
                "default",
                "model-00002",
                29.2
            ),
            "sum by (response_code_class) (increase(revision_request_count{namespace_name=\"default\",\
             revision_name=\"model-00002\"}[30s]))"
        );
    }

    #[test]
    fn classes_and_cumulative_buckets_become_a_window() {
        let classes = [
            ("2xx".to_string(), 89.6),
            ("5xx".to_string(), 10.2),
            ("4xx".to_string(), 1.0),
        ];
        let buckets = [
            ("+Inf".to_string(), 101.0),
            ("10".to_string(), 50.0),
            ("100".to_string(), 99.0),
            ("50".to_string(), 90.0),
        ];
        let w = window_of(&classes, &buckets, 10.0);
        assert_eq!((w.requests, w.errors), (101, 10));
        assert_eq!(w.bounds_ms, vec![10.0, 50.0, 100.0]);
        assert_eq!(w.latency_counts, vec![50, 40, 9, 2]);
        assert_eq!(w.success_rate().map(|r| (r * 10.0).round() / 10.0), Some(90.1));
    }

    #[test]
    fn opentelemetry_codes_and_second_buckets_become_the_same_window() {
        let codes = [
            ("200".to_string(), 89.6),
            ("503".to_string(), 10.2),
            ("404".to_string(), 1.0),
        ];
        let buckets = [
            ("+Inf".to_string(), 101.0),
            ("0.01".to_string(), 50.0),
            ("0.1".to_string(), 99.0),
            ("0.05".to_string(), 90.0),
        ];
        let w = otel_window(&codes, &buckets, 10.0);
        assert_eq!((w.requests, w.errors), (101, 10));
        assert_eq!(w.bounds_ms, vec![10.0, 50.0, 100.0]);
        assert_eq!(w.latency_counts, vec![50, 40, 9, 2]);
        assert_eq!(
            PrometheusMetrics::query(
                OTEL_REQUEST_COUNT,
                "http_response_status_code",
                OTEL_LABELS,
                "ns",
                "r-1",
                3.0
            ),
            "sum by (http_response_status_code) (increase(http_server_request_duration_seconds_count{\
             k8s_namespace_name=\"ns\",kn_revision_name=\"r-1\"}[3s]))"
        );
    }

    #[test]
    fn no_series_is_an_empty_window() {
        let w = window_of(&[], &[], 5.0);
        assert_eq!((w.requests, w.latency_counts.len()), (0, 0));
        assert_eq!(w.success_rate(), None);
    }

    fn series(pod: &str, code: &str, v: f64) -> (BTreeMap<String, String>, f64) {
        let labels = [("pod", pod), ("response_code_class", code)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (labels, v)
    }

    /// Pods that come, go, restart and miss a scrape never make the totals fall or count twice.
    #[test]
    fn totals_survive_pods_leaving_restarting_and_missing_a_scrape() {
        let mut t = Totals::default();
        let by = "response_code_class";
        // First reading: everything counted so far.
        let r = t.update(&[series("a", "2xx", 100.0), series("b", "2xx", 50.0)], by);
        assert_eq!(r, vec![("2xx".to_string(), 150.0)]);
        // Both grow; a 5xx series appears on a (new series: counted from zero).
        let r = t.update(
            &[
                series("a", "2xx", 110.0),
                series("b", "2xx", 60.0),
                series("a", "5xx", 2.0),
            ],
            by,
        );
        assert_eq!(r, vec![("2xx".to_string(), 170.0), ("5xx".to_string(), 2.0)]);
        // b scaled away (its series left): the total does not fall.
        let r = t.update(&[series("a", "2xx", 115.0), series("a", "5xx", 2.0)], by);
        assert_eq!(r, vec![("2xx".to_string(), 175.0), ("5xx".to_string(), 2.0)]);
        // a's queue-proxy restarted (went back to 3) and a new pod c started with 7.
        let r = t.update(
            &[
                series("a", "2xx", 3.0),
                series("c", "2xx", 7.0),
                series("a", "5xx", 0.0),
            ],
            by,
        );
        assert_eq!(r, vec![("2xx".to_string(), 185.0), ("5xx".to_string(), 2.0)]);
        // c missed one scrape and came back: only its growth counts.
        t.update(&[series("a", "2xx", 4.0)], by);
        let r = t.update(&[series("a", "2xx", 4.0), series("c", "2xx", 9.0)], by);
        assert_eq!(r, vec![("2xx".to_string(), 188.0), ("5xx".to_string(), 2.0)]);
    }

    #[test]
    fn counters_keep_classes_apart() {
        let c = counters_of(
            &[("2xx".into(), 90.0), ("4xx".into(), 3.0), ("5xx".into(), 7.0)],
            &[("10".into(), 60.0), ("+Inf".into(), 100.0)],
        );
        assert_eq!(c.requests, [0, 90, 0, 3, 7]);
        assert_eq!((c.bounds_ms, c.latency_counts), (vec![10.0], vec![60, 40]));
    }
}

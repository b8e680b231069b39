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

use std::sync::OnceLock;
use std::time::Duration;

use revisor_controller::MetricsSource;
use revisor_rollout::{Counters, Window};
use serde_json::Value;

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

/// Reads revision windows from the Prometheus at `url`.
pub struct PrometheusMetrics {
    url: String,
    /// Made on first use, on the Rollout controller's thread (a blocking client cannot be made inside
    /// the async runtime).
    http: OnceLock<reqwest::blocking::Client>,
}

impl PrometheusMetrics {
    pub fn new(url: &str) -> Self {
        PrometheusMetrics {
            url: url.trim_end_matches('/').to_string(),
            http: OnceLock::new(),
        }
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
    fn vector(&self, query: &str, by: &str) -> Result<Vec<(String, f64)>, String> {
        let http = self.http.get_or_init(reqwest::blocking::Client::new);
        let resp = http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .timeout(Duration::from_secs(10))
            .send()
            .map_err(|e| format!("Prometheus at {}: {e}", self.url))?;
        let body: Value = resp
            .json()
            .map_err(|e| format!("Prometheus at {}: not JSON: {e}", self.url))?;
        if body["status"] != "success" {
            return Err(format!("Prometheus refused {query:?}: {}", body["error"]));
        }
        Ok(body["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let label = s["metric"][by].as_str()?.to_string();
                let value = s["value"][1].as_str()?.parse::<f64>().ok()?;
                Some((label, if value.is_finite() { value.max(0.0) } else { 0.0 }))
            })
            .collect())
    }

    /// The revision's window over the last `seconds`, or why it could not be read.
    pub fn read_window(&self, namespace: &str, revision: &str, seconds: f64) -> Result<Window, String> {
        let (ns, rev) = (namespace, revision);
        let code = "http_response_status_code";
        let codes = self.vector(
            &Self::query(OTEL_REQUEST_COUNT, code, OTEL_LABELS, ns, rev, seconds),
            code,
        )?;
        if !codes.is_empty() {
            let buckets = self.vector(
                &Self::query(OTEL_REQUEST_DURATION, "le", OTEL_LABELS, ns, rev, seconds),
                "le",
            )?;
            return Ok(otel_window(&codes, &buckets, seconds));
        }
        let class = "response_code_class";
        let classes = self.vector(
            &Self::query(REQUEST_COUNT, class, OPENCENSUS_LABELS, ns, rev, seconds),
            class,
        )?;
        let buckets = self.vector(
            &Self::query(REQUEST_LATENCIES, "le", OPENCENSUS_LABELS, ns, rev, seconds),
            "le",
        )?;
        Ok(window_of(&classes, &buckets, seconds))
    }
}

/// A window from requests by class (`2xx`..) and cumulative latency buckets by `le`.
pub fn window_of(classes: &[(String, f64)], buckets: &[(String, f64)], seconds: f64) -> Window {
    let mut requests = 0u64;
    let mut errors = 0u64;
    for (class, n) in classes {
        let n = n.round() as u64;
        requests += n;
        if class.starts_with('5') {
            errors += n;
        }
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
    Window {
        requests,
        errors,
        bounds_ms,
        latency_counts,
        seconds,
        ..Window::default()
    }
}

/// A window from OpenTelemetry's series: requests by status code (`503`), buckets by `le` in seconds.
pub fn otel_window(codes: &[(String, f64)], buckets_s: &[(String, f64)], seconds: f64) -> Window {
    let classes: Vec<(String, f64)> = codes
        .iter()
        .map(|(code, n)| (format!("{}xx", code.chars().next().unwrap_or('0')), *n))
        .collect();
    let buckets_ms: Vec<(String, f64)> = buckets_s
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
    window_of(&classes, &buckets_ms, seconds)
}

/// Escapes a label value for PromQL.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

impl MetricsSource for PrometheusMetrics {
    /// Windows come from `increase()`; there are no cumulative counters to read, so the controller
    /// judges success rate and latency per interval here.
    fn counters(&self, _namespace: &str, _revision: &str) -> Option<Counters> {
        None
    }

    fn window(&self, namespace: &str, revision: &str, seconds: f64) -> Option<Window> {
        match self.read_window(namespace, revision, seconds) {
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

/// The metrics source when no Prometheus is configured: every window is empty. The world refuses
/// Rollouts whose analysis would need one.
pub struct NoMetrics;

impl MetricsSource for NoMetrics {
    fn counters(&self, _namespace: &str, _revision: &str) -> Option<Counters> {
        None
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
}

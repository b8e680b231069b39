//! Analysis windows from Prometheus: the request count and latency histogram that Knative's
//! queue-proxy exports for every revision, summed over its pods with `increase()` over the window.

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

    /// The PromQL for `metric` of one revision, summed by `by` over `seconds`.
    pub fn query(metric: &str, by: &str, namespace: &str, revision: &str, seconds: f64) -> String {
        format!(
            "sum by ({by}) (increase({metric}{{namespace_name=\"{}\",revision_name=\"{}\"}}[{}s]))",
            escape(namespace),
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
        let classes = self.vector(
            &Self::query(REQUEST_COUNT, "response_code_class", namespace, revision, seconds),
            "response_code_class",
        )?;
        let buckets = self.vector(
            &Self::query(REQUEST_LATENCIES, "le", namespace, revision, seconds),
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

/// Escapes a label value for PromQL.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

impl MetricsSource for PrometheusMetrics {
    /// Windows come from `increase()`; the controller only needs a reading to start one from.
    fn counters(&self, _namespace: &str, _revision: &str) -> Option<Counters> {
        Some(Counters::default())
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
            PrometheusMetrics::query(REQUEST_COUNT, "response_code_class", "default", "model-00002", 29.2),
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
    fn no_series_is_an_empty_window() {
        let w = window_of(&[], &[], 5.0);
        assert_eq!((w.requests, w.latency_counts.len()), (0, 0));
        assert_eq!(w.success_rate(), None);
    }
}

//! Analysis windows and checks: from cumulative counters to a window, and from a window to one
//! measurement per metric with its verdict.

use chrono::{DateTime, Utc};
use revisor_api::rollout::{Analysis, Measurement, MetricCheck};

/// A revision's cumulative counters as the data plane reports them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Responses by class (1xx..5xx).
    pub requests: [u64; 5],
    /// Upper bounds of the latency buckets, in ms.
    pub bounds_ms: Vec<f64>,
    /// Count per bucket (not cumulative); one more than `bounds_ms` (the last is above every bound).
    pub latency_counts: Vec<u64>,
}

/// What happened between two readings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    pub bounds_ms: Vec<f64>,
    pub latency_counts: Vec<u64>,
    pub seconds: f64,
}

impl Window {
    /// The window between `before` and `after`, `seconds` apart.
    pub fn between(before: &Counters, after: &Counters, seconds: f64) -> Window {
        let total = |c: &Counters| c.requests.iter().sum::<u64>();
        let latency_counts = after
            .latency_counts
            .iter()
            .enumerate()
            .map(|(i, n)| n.saturating_sub(before.latency_counts.get(i).copied().unwrap_or(0)))
            .collect();
        Window {
            requests: total(after).saturating_sub(total(before)),
            errors: after.requests[4].saturating_sub(before.requests[4]),
            bounds_ms: after.bounds_ms.clone(),
            latency_counts,
            seconds,
        }
    }

    /// Share of responses that were not 5xx, in percent.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| 100.0 * (self.requests - self.errors) as f64 / self.requests as f64)
    }

    pub fn request_rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The `p`th percentile latency in ms, interpolated within its bucket as Prometheus'
    /// `histogram_quantile` does; the open top bucket answers its lower bound.
    pub fn latency_percentile(&self, p: f64) -> Option<f64> {
        let total: u64 = self.latency_counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = p / 100.0 * total as f64;
        let mut seen = 0.0;
        for (i, n) in self.latency_counts.iter().enumerate() {
            let next = seen + *n as f64;
            if next >= rank && *n > 0 {
                let lower = if i == 0 { 0.0 } else { self.bounds_ms[i - 1] };
                let Some(&upper) = self.bounds_ms.get(i) else {
                    return Some(lower);
                };
                return Some(lower + (upper - lower) * ((rank - seen) / *n as f64));
            }
            seen = next;
        }
        self.bounds_ms.last().copied()
    }
}

/// The outcome of one analysis run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub measurements: Vec<Measurement>,
    /// Some check failed.
    pub failed: bool,
    /// Too little data for a verdict (and nothing failed).
    pub inconclusive: bool,
}

fn value(m: &MetricCheck, w: &Window) -> Option<f64> {
    match m.name.as_str() {
        "success-rate" => w.success_rate(),
        "latency" => w.latency_percentile(m.percentile.unwrap_or(99.0)),
        "error-count" => Some(w.errors as f64),
        "request-rate" => Some(w.request_rate()),
        _ => None,
    }
}

/// Judges a window: each metric against its range. Below `minSamples` requests a check is
/// inconclusive, except an error count already over its maximum, which more requests cannot undo.
pub fn evaluate(analysis: &Analysis, w: &Window, revision: &str, step: u32, now: DateTime<Utc>) -> Run {
    let enough = w.requests >= analysis.min_samples();
    let mut failed = false;
    let mut inconclusive = false;
    let measurements = analysis
        .metrics
        .iter()
        .map(|m| {
            let v = value(m, w);
            let t = m.threshold_range;
            let out_of_range = v.is_some_and(|v| t.min.is_some_and(|lo| v < lo) || t.max.is_some_and(|hi| v > hi));
            let certain = m.name == "error-count" && out_of_range;
            let verdict = if v.is_none() || (!enough && !certain) {
                inconclusive = true;
                "Inconclusive"
            } else if out_of_range {
                failed = true;
                "Failed"
            } else {
                "Successful"
            };
            Measurement {
                time: now,
                revision: revision.to_string(),
                step,
                metric: match m.name.as_str() {
                    "latency" => format!("latency-p{}", m.percentile.unwrap_or(99.0)),
                    n => n.to_string(),
                },
                value: v,
                threshold: t,
                samples: w.requests,
                verdict: verdict.to_string(),
            }
        })
        .collect();
    Run {
        measurements,
        failed,
        inconclusive: inconclusive && !failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use revisor_api::rollout::ThresholdRange;

    fn counters(ok: u64, errors: u64, latency: &[u64]) -> Counters {
        Counters {
            requests: [0, ok, 0, 0, errors],
            bounds_ms: vec![1.0, 10.0, 100.0],
            latency_counts: latency.to_vec(),
        }
    }

    fn check(name: &str, min: Option<f64>, max: Option<f64>) -> MetricCheck {
        MetricCheck {
            name: name.into(),
            percentile: None,
            threshold_range: ThresholdRange { min, max },
        }
    }

    #[test]
    fn windows_and_percentiles() {
        let w = Window::between(
            &counters(10, 0, &[10, 0, 0, 0]),
            &counters(100, 10, &[10, 50, 40, 10]),
            10.0,
        );
        assert_eq!((w.requests, w.errors), (100, 10));
        assert_eq!(w.success_rate(), Some(90.0));
        assert_eq!(w.request_rate(), 10.0);
        assert_eq!(w.latency_percentile(50.0), Some(1.0 + 9.0 * (50.0 / 50.0)));
        assert_eq!(w.latency_percentile(75.0), Some(10.0 + 90.0 * (25.0 / 40.0)));
        assert_eq!(
            w.latency_percentile(99.0),
            Some(100.0),
            "the open bucket answers its lower bound"
        );
        assert_eq!(Window::default().latency_percentile(99.0), None);
    }

    #[test]
    fn verdicts() {
        let a = |metrics, min_samples| Analysis {
            metrics,
            min_samples: Some(min_samples),
            ..Default::default()
        };
        let now = Utc::now();
        let good = Window::between(&Counters::default(), &counters(100, 0, &[100, 0, 0, 0]), 10.0);
        let bad = Window::between(&Counters::default(), &counters(90, 10, &[0, 0, 50, 50]), 10.0);
        let few = Window::between(&Counters::default(), &counters(3, 2, &[5, 0, 0, 0]), 10.0);
        let sr = check("success-rate", Some(99.0), None);
        let lat = MetricCheck {
            percentile: Some(90.0),
            ..check("latency", None, Some(50.0))
        };
        let r = evaluate(&a(vec![sr.clone(), lat.clone()], 20), &good, "c", 0, now);
        assert!(!r.failed && !r.inconclusive, "{r:?}");
        let r = evaluate(&a(vec![sr.clone(), lat.clone()], 20), &bad, "c", 0, now);
        assert!(r.failed);
        assert_eq!(r.measurements[0].verdict, "Failed");
        assert_eq!(r.measurements[0].value, Some(90.0));
        assert_eq!(r.measurements[1].metric, "latency-p90");
        assert_eq!(
            r.measurements[1].verdict, "Failed",
            "p90 is in the open bucket, above 50 ms"
        );
        let r = evaluate(&a(vec![sr.clone()], 20), &few, "c", 0, now);
        assert!(r.inconclusive && !r.failed, "5 requests < 20: {r:?}");
        let r = evaluate(&a(vec![check("error-count", None, Some(1.0))], 20), &few, "c", 0, now);
        assert!(r.failed, "2 errors already exceed 1, whatever comes next");
        let r = evaluate(&a(vec![check("request-rate", Some(5.0), None)], 1), &few, "c", 0, now);
        assert!(r.failed, "0.5 rps is below 5");
    }
}

//! Analysis windows and checks: from cumulative counters to a window, and from a window to one
//! measurement per metric with its verdict.

use chrono::{DateTime, Utc};
use revisor_api::rollout::Judgement as Verdict;
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
    /// Mirrored answers compared with stable's, and those whose argmax agreed.
    pub compared: u64,
    pub argmax_agreed: u64,
    /// Upper bounds of the buckets of the largest absolute difference, and the count per bucket (one
    /// more than the bounds).
    pub diff_bounds: Vec<f64>,
    pub diff_counts: Vec<u64>,
}

/// What happened between two readings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    pub bounds_ms: Vec<f64>,
    pub latency_counts: Vec<u64>,
    pub seconds: f64,
    pub compared: u64,
    pub argmax_agreed: u64,
    pub diff_bounds: Vec<f64>,
    pub diff_counts: Vec<u64>,
}

impl Window {
    /// The window between `before` and `after`, `seconds` apart.
    pub fn between(before: &Counters, after: &Counters, seconds: f64) -> Window {
        let total = |c: &Counters| c.requests.iter().sum::<u64>();
        let diff = |a: &[u64], b: &[u64]| -> Vec<u64> {
            a.iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(b.get(i).copied().unwrap_or(0)))
                .collect()
        };
        Window {
            requests: total(after).saturating_sub(total(before)),
            errors: after.requests[4].saturating_sub(before.requests[4]),
            bounds_ms: after.bounds_ms.clone(),
            latency_counts: diff(&after.latency_counts, &before.latency_counts),
            seconds,
            compared: after.compared.saturating_sub(before.compared),
            argmax_agreed: after.argmax_agreed.saturating_sub(before.argmax_agreed),
            diff_bounds: after.diff_bounds.clone(),
            diff_counts: diff(&after.diff_counts, &before.diff_counts),
        }
    }

    /// Share of responses that were not 5xx, in percent.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| 100.0 * (self.requests - self.errors) as f64 / self.requests as f64)
    }

    /// Percent of compared predictions that agree: by argmax, or (with a tolerance) whose largest
    /// difference falls in a bucket whose bound is at most the tolerance.
    pub fn prediction_agreement(&self, tolerance: Option<f64>) -> Option<f64> {
        if self.compared == 0 {
            return None;
        }
        let agreed = match tolerance {
            None => self.argmax_agreed,
            Some(t) => self
                .diff_bounds
                .iter()
                .zip(&self.diff_counts)
                .filter(|(b, _)| **b <= t)
                .map(|(_, n)| n)
                .sum(),
        };
        Some(100.0 * agreed as f64 / self.compared as f64)
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
        "prediction-agreement" => w.prediction_agreement(match m.agreement.as_deref() {
            Some("tolerance") => m.tolerance,
            _ => None,
        }),
        _ => None,
    }
}

/// The standard normal CDF (erf by Abramowitz and Stegun 7.1.26, error below 1.5e-7).
fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// The one-sided critical value: the z with `normal_cdf(z) = confidence` (by bisection).
pub fn z_critical(confidence: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 10.0);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if normal_cdf(mid) < confidence {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// One-sided two-proportion z statistic for "the canary's error rate is higher than stable's".
pub fn two_proportion_z(errors_c: u64, n_c: u64, errors_s: u64, n_s: u64) -> f64 {
    let (e1, n1, e2, n2) = (errors_c as f64, n_c as f64, errors_s as f64, n_s as f64);
    let (p1, p2) = (e1 / n1, e2 / n2);
    let pooled = (e1 + e2) / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 {
        return if p1 > p2 { f64::INFINITY } else { 0.0 };
    }
    (p1 - p2) / se
}

/// Judges the canary's window, and for `relativeTo: stable` checks the stable revision's window over
/// the same time: each metric against its range and its comparison. Below `minSamples` requests (in
/// either window a check needs) a check is inconclusive, except an error count already over its
/// maximum, which more requests cannot undo.
pub fn evaluate(
    analysis: &Analysis,
    w: &Window,
    stable: Option<&Window>,
    revision: &str,
    step: u32,
    now: DateTime<Utc>,
) -> Run {
    evaluate_with(analysis, w, stable, &[], revision, step, now)
}

/// The value a provider (Prometheus) gave a metric: a number, no data (`None`), or the error.
pub type Provided = (String, Result<Option<f64>, String>);

/// [`evaluate`], with the values external providers gave this run (by metric name).
pub fn evaluate_with(
    analysis: &Analysis,
    w: &Window,
    stable: Option<&Window>,
    provided: &[Provided],
    revision: &str,
    step: u32,
    now: DateTime<Utc>,
) -> Run {
    let min = analysis.min_samples();
    let enough = w.requests >= min;
    let mut failed = false;
    let mut inconclusive = false;
    let measurements = analysis
        .metrics
        .iter()
        .map(|m| {
            let t = m.threshold_range;
            if m.provider.is_some() {
                let got = provided.iter().find(|(n, _)| n == &m.name).map(|(_, r)| r.clone());
                let (value, note) = match got {
                    Some(Ok(v)) => (v, v.is_none().then(|| "the query returned no data".to_string())),
                    Some(Err(e)) => (None, Some(e)),
                    None => (None, Some("the provider was not queried".to_string())),
                };
                let verdict = match value {
                    None => {
                        inconclusive = true;
                        Verdict::Inconclusive
                    }
                    Some(v) if t.min.is_some_and(|lo| v < lo) || t.max.is_some_and(|hi| v > hi) => {
                        failed = true;
                        Verdict::Failed
                    }
                    Some(_) => Verdict::Successful,
                };
                return Measurement {
                    time: now,
                    revision: revision.to_string(),
                    step,
                    metric: m.name.clone(),
                    value,
                    threshold: t,
                    comparison: note,
                    samples: 1,
                    verdict,
                    ..Default::default()
                };
            }
            let v = value(m, w);
            let absolute = t.min.is_some() || t.max.is_some();
            let out_of_range = v.is_some_and(|v| t.min.is_some_and(|lo| v < lo) || t.max.is_some_and(|hi| v > hi));
            let certain = m.name == "error-count" && out_of_range;
            let enough = if m.name == "prediction-agreement" {
                w.compared >= min
            } else {
                enough
            };
            let mut verdict = if !absolute {
                Verdict::Successful
            } else if v.is_none() || (!enough && !certain) {
                Verdict::Inconclusive
            } else if out_of_range {
                Verdict::Failed
            } else {
                Verdict::Successful
            };
            let (mut baseline, mut comparison) = (None, None);
            if m.relative_to.as_deref() == Some("stable") && !matches!(verdict, Verdict::Failed) {
                let s = stable.filter(|s| s.requests >= min && enough);
                baseline = stable.and_then(|s| value(m, s));
                let relative = match (s, m.max_ratio, m.confidence) {
                    (None, _, _) => Verdict::Inconclusive,
                    (Some(s), Some(ratio), _) => match (v, value(m, s)) {
                        (Some(c), Some(b)) if b > 0.0 => {
                            let ok = c <= ratio * b;
                            comparison = Some(format!(
                                "{c:.3} {} {ratio} x stable {b:.3}",
                                if ok { "<=" } else { ">" }
                            ));
                            if ok {
                                Verdict::Successful
                            } else {
                                Verdict::Failed
                            }
                        }
                        _ => Verdict::Inconclusive,
                    },
                    (Some(s), None, Some(confidence)) => {
                        let z = two_proportion_z(w.errors, w.requests, s.errors, s.requests);
                        let crit = z_critical(confidence);
                        let worse = z > crit;
                        comparison = Some(format!(
                            "error rate {:.4} vs stable {:.4}: z = {z:.2} {} {crit:.2} ({confidence})",
                            w.errors as f64 / w.requests as f64,
                            s.errors as f64 / s.requests as f64,
                            if worse { ">" } else { "<=" }
                        ));
                        if worse {
                            Verdict::Failed
                        } else {
                            Verdict::Successful
                        }
                    }
                    _ => Verdict::Inconclusive,
                };
                verdict = match (verdict, relative) {
                    (_, Verdict::Failed) => Verdict::Failed,
                    (Verdict::Inconclusive, _) | (_, Verdict::Inconclusive) => Verdict::Inconclusive,
                    _ => Verdict::Successful,
                };
            }
            match verdict {
                Verdict::Failed => failed = true,
                Verdict::Inconclusive => inconclusive = true,
                Verdict::Successful => {}
            }
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
                baseline,
                comparison,
                samples: if m.name == "prediction-agreement" {
                    w.compared
                } else {
                    w.requests
                },
                verdict,
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
            ..Default::default()
        }
    }

    fn check(name: &str, min: Option<f64>, max: Option<f64>) -> MetricCheck {
        MetricCheck {
            name: name.into(),
            threshold_range: ThresholdRange { min, max },
            ..Default::default()
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
        let r = evaluate(&a(vec![sr.clone(), lat.clone()], 20), &good, None, "c", 0, now);
        assert!(!r.failed && !r.inconclusive, "{r:?}");
        let r = evaluate(&a(vec![sr.clone(), lat.clone()], 20), &bad, None, "c", 0, now);
        assert!(r.failed);
        assert_eq!(r.measurements[0].verdict, Verdict::Failed);
        assert_eq!(r.measurements[0].value, Some(90.0));
        assert_eq!(r.measurements[1].metric, "latency-p90");
        assert_eq!(
            r.measurements[1].verdict,
            Verdict::Failed,
            "p90 is in the open bucket, above 50 ms"
        );
        let r = evaluate(&a(vec![sr.clone()], 20), &few, None, "c", 0, now);
        assert!(r.inconclusive && !r.failed, "5 requests < 20: {r:?}");
        let r = evaluate(
            &a(vec![check("error-count", None, Some(1.0))], 20),
            &few,
            None,
            "c",
            0,
            now,
        );
        assert!(r.failed, "2 errors already exceed 1, whatever comes next");
        let r = evaluate(
            &a(vec![check("request-rate", Some(5.0), None)], 1),
            &few,
            None,
            "c",
            0,
            now,
        );
        assert!(r.failed, "0.5 rps is below 5");
    }

    #[test]
    fn relative_checks_judge_the_canary_against_stable_over_the_same_window() {
        let now = Utc::now();
        let a = |m: MetricCheck| Analysis {
            metrics: vec![m],
            min_samples: Some(50),
            ..Default::default()
        };
        let lat = MetricCheck {
            name: "latency".into(),
            percentile: Some(50.0),
            relative_to: Some("stable".into()),
            max_ratio: Some(1.2),
            ..Default::default()
        };
        let slow_stable = Window::between(&Counters::default(), &counters(100, 0, &[0, 0, 100, 0]), 10.0);
        let slow_canary = slow_stable.clone();
        let r = evaluate(&a(lat.clone()), &slow_canary, Some(&slow_stable), "c", 0, now);
        assert!(
            !r.failed && !r.inconclusive,
            "a slow baseline does not fail an equally slow canary: {r:?}"
        );
        let fast_stable = Window::between(&Counters::default(), &counters(100, 0, &[0, 100, 0, 0]), 10.0);
        let r = evaluate(&a(lat.clone()), &slow_canary, Some(&fast_stable), "c", 0, now);
        assert!(r.failed, "{r:?}");
        assert!(
            r.measurements[0]
                .comparison
                .as_deref()
                .unwrap()
                .contains("> 1.2 x stable"),
            "{r:?}"
        );
        let r = evaluate(&a(lat), &slow_canary, None, "c", 0, now);
        assert!(r.inconclusive, "no stable window: inconclusive");

        let errors = MetricCheck {
            name: "success-rate".into(),
            relative_to: Some("stable".into()),
            confidence: Some(0.95),
            ..Default::default()
        };
        let w =
            |ok: u64, err: u64| Window::between(&Counters::default(), &counters(ok, err, &[ok + err, 0, 0, 0]), 10.0);
        let r = evaluate(&a(errors.clone()), &w(190, 10), Some(&w(950, 50)), "c", 0, now);
        assert!(
            !r.failed,
            "5% vs 5%: the noisy baseline does not fail the canary: {r:?}"
        );
        let r = evaluate(&a(errors.clone()), &w(186, 14), Some(&w(950, 50)), "c", 0, now);
        assert!(
            !r.failed,
            "7% vs 5% on 200 requests is not significant (z = 1.15 < 1.64): {r:?}"
        );
        let r = evaluate(&a(errors), &w(180, 20), Some(&w(950, 50)), "c", 0, now);
        assert!(r.failed, "10% vs 5%: z = 2.75 > 1.64: {r:?}");
    }

    #[test]
    fn prediction_agreement_by_argmax_or_tolerance() {
        let c = |compared, agreed, diffs: Vec<u64>| Counters {
            compared,
            argmax_agreed: agreed,
            diff_bounds: vec![1e-6, 1e-3, 1.0],
            diff_counts: diffs,
            ..Default::default()
        };
        let w = Window::between(&c(10, 10, vec![10, 0, 0, 0]), &c(110, 90, vec![60, 30, 5, 5]), 10.0);
        assert_eq!((w.compared, w.argmax_agreed), (100, 80));
        assert_eq!(w.prediction_agreement(None), Some(80.0));
        assert_eq!(w.prediction_agreement(Some(1e-3)), Some(80.0), "50 + 30 within 1e-3");
        assert_eq!(w.prediction_agreement(Some(1e-6)), Some(50.0));
        let a = Analysis {
            min_samples: Some(50),
            metrics: vec![MetricCheck {
                name: "prediction-agreement".into(),
                threshold_range: ThresholdRange {
                    min: Some(95.0),
                    max: None,
                },
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = evaluate(&a, &w, None, "c", 0, Utc::now());
        assert!(r.failed, "80% < 95%: {r:?}");
        assert_eq!(r.measurements[0].samples, 100, "samples are the compared predictions");
        let few = Window::between(&c(0, 0, vec![0; 4]), &c(10, 5, vec![5, 0, 0, 5]), 10.0);
        assert!(evaluate(&a, &few, None, "c", 0, Utc::now()).inconclusive);
    }

    #[test]
    fn the_normal_quantiles_are_right() {
        assert!((z_critical(0.95) - 1.6449).abs() < 1e-3);
        assert!((z_critical(0.99) - 2.3263).abs() < 1e-3);
        assert!((two_proportion_z(20, 200, 50, 1000) - 2.7541).abs() < 1e-3);
    }
}

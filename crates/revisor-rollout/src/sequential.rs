//! Sequential verdicts: evidence from the canary's start, judged at every look by anytime-valid tests,
//! so looking often never inflates the chance of a false rollback (Ville's inequality: a test
//! martingale crosses 1/α with probability at most α, however long it is watched).
//!
//! Each check asks whether the share of "bad" canary requests is above a tolerance p0: 5xx against
//! `success-rate >= X` (p0 = 1 - X/100); requests slower than a latency bound against
//! `1 - percentile`. The test statistic is a mixture likelihood ratio of Bernoulli trials: the
//! likelihood of the canary's totals under a grid of alternatives on one side of p0, averaged, over
//! their likelihood at p0; closed form from the totals since the canary started.
//! Checks relative to stable take their tolerance from stable's totals over the same time (far more
//! requests than the canary's): an error rate up to `maxRatio` times stable's or stable's plus
//! `minDifference` (percentage points, default 0.25), whichever is larger; a latency up to `maxRatio`
//! times stable's percentile or that plus `minDifference` (default 5ms), whichever is larger. The
//! floors keep noise that no user cares about (sub-millisecond, a few 5xx where stable had none)
//! from ever failing a canary.
//!
//! `Worse` when the worse-side mixture reaches 1/α (α: the rollout's false-rollback budget shared
//! among its checks); `NotWorse` when the better-side mixture reaches 1/β (β = 5%: the chance of
//! calling a canary at its tolerance fine); otherwise not yet known.

use chrono::{DateTime, Utc};
use revisor_api::rollout::{Analysis, CounterReading, Evidence, MetricCheck};

use crate::analysis::Counters;

/// The chance that a check calls a canary exactly at its tolerance "not worse".
pub const BETA: f64 = 0.05;
/// Looks are at least this far apart (each one is written to the store).
pub const LOOK_EVERY_MS: i64 = 1000;
/// The relative error-rate tolerance when a check names none.
pub const DEFAULT_RATIO: f64 = 1.5;
/// The error-rate floor of a check relative to stable when it names none, in percentage points.
pub const DEFAULT_ERROR_FLOOR: f64 = 0.25;

/// Alternatives, as shifts of the log-odds away from the bound.
const SHIFTS: [f64; 6] = [0.3, 0.75, 1.25, 1.75, 2.5, 4.0];

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Worse than the tolerance, with the evidence.
    Worse(String),
    /// Not worse than the tolerance, with the estimate.
    NotWorse(String),
    /// Not yet known.
    Unknown(String),
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn log_mean_exp(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    max + (v.iter().map(|x| (x - max).exp()).sum::<f64>() / v.len() as f64).ln()
}

/// The log mixture likelihood ratio of `k` bad out of `n` Bernoulli trials against the bad share
/// `p0`, over alternatives above p0 (`worse`) or below it.
pub fn log_mixture(n: f64, k: f64, p0: f64, worse: bool) -> f64 {
    let p0 = p0.clamp(1e-9, 1.0 - 1e-9);
    let sign = if worse { 1.0 } else { -1.0 };
    log_mean_exp(SHIFTS.iter().map(|d| {
        let p = sigmoid(logit(p0) + sign * d);
        k * (p / p0).ln() + (n - k) * ((1.0 - p) / (1.0 - p0)).ln()
    }))
}

/// The bad share's verdict at budget `alpha`.
fn bernoulli(n: f64, k: f64, p0: f64, alpha: f64, what: &str) -> Verdict {
    let est = if n > 0.0 { k / n } else { 0.0 };
    let shown = format!(
        "{what}: {k:.0} of {n:.0} ({:.2}%) against {:.2}%",
        100.0 * est,
        100.0 * p0
    );
    if log_mixture(n, k, p0, true) >= (1.0 / alpha).ln() {
        Verdict::Worse(shown)
    } else if log_mixture(n, k, p0, false) >= (1.0 / BETA).ln() {
        Verdict::NotWorse(shown)
    } else {
        Verdict::Unknown(shown)
    }
}

fn reading(c: &Counters) -> CounterReading {
    crate::baseline::reading(("", c))
}

/// What happened since the last reading (from zero if the counters went back: a data plane restart).
fn delta(last: &CounterReading, now: &Counters) -> Counters {
    let last = crate::baseline::counters(last, now);
    let sub = |a: &[u64], b: &[u64]| -> Vec<u64> {
        a.iter()
            .enumerate()
            .map(|(i, x)| x.saturating_sub(b.get(i).copied().unwrap_or(0)))
            .collect()
    };
    let mut requests = [0; 5];
    for (i, r) in requests.iter_mut().enumerate() {
        *r = now.requests[i].saturating_sub(last.requests[i]);
    }
    Counters {
        requests,
        bounds_ms: now.bounds_ms.clone(),
        latency_counts: sub(&now.latency_counts, &last.latency_counts),
        ..Default::default()
    }
}

fn add(total: &mut CounterReading, d: &Counters) {
    total.requests.resize(5, 0);
    for (t, x) in total.requests.iter_mut().zip(d.requests) {
        *t += x;
    }
    total.latency_counts.resize(d.latency_counts.len(), 0);
    for (t, x) in total.latency_counts.iter_mut().zip(&d.latency_counts) {
        *t += x;
    }
}

/// Whether a metric is judged sequentially.
pub fn is_sequential(m: &MetricCheck) -> bool {
    m.provider.is_none() && matches!(m.name.as_str(), "success-rate" | "latency")
}

/// Adds a look to the evidence (a first look only notes the counters). `None` when the last look is
/// too recent.
pub fn look(
    evidence: Option<&Evidence>,
    now: DateTime<Utc>,
    canary: &Counters,
    stable: Option<&Counters>,
) -> Option<Evidence> {
    let Some(prev) = evidence else {
        return Some(Evidence {
            at: now,
            last_canary: reading(canary),
            last_stable: stable.map(reading),
            ..Default::default()
        });
    };
    if (now - prev.at).num_milliseconds() < LOOK_EVERY_MS {
        return None;
    }
    let mut ev = prev.clone();
    let dc = delta(&prev.last_canary, canary);
    let ds = match (&prev.last_stable, stable) {
        (Some(last), Some(now)) => delta(last, now),
        (None, Some(now)) => Counters {
            bounds_ms: now.bounds_ms.clone(),
            latency_counts: vec![0; now.latency_counts.len()],
            ..Default::default()
        },
        _ => Counters::default(),
    };
    add(&mut ev.canary, &dc);
    add(&mut ev.stable, &ds);
    ev.at = now;
    ev.last_canary = reading(canary);
    ev.last_stable = stable.map(reading);
    Some(ev)
}

/// The sequential checks' budget each: the rollout's false-rollback budget shared equally.
pub fn alpha(a: &Analysis) -> f64 {
    let n = a.metrics.iter().filter(|m| is_sequential(m)).count().max(1);
    a.false_rollback_budget() / n as f64
}

/// Requests above `t` ms in a histogram, interpolating inside the bucket that holds `t`.
fn above(c: &CounterReading, bounds: &[f64], t: f64) -> f64 {
    let mut n = 0.0;
    for (i, count) in c.latency_counts.iter().enumerate() {
        let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
        let upper = bounds.get(i).copied().unwrap_or(f64::INFINITY);
        let share = if t <= lower {
            1.0
        } else if t >= upper {
            0.0
        } else if upper.is_infinite() {
            1.0
        } else {
            (upper - t) / (upper - lower)
        };
        n += share * *count as f64;
    }
    n
}

/// The `p`th percentile of a histogram, interpolated as Prometheus does.
fn percentile(c: &CounterReading, bounds: &[f64], p: f64) -> Option<f64> {
    let w = crate::analysis::Window {
        latency_counts: c.latency_counts.clone(),
        bounds_ms: bounds.to_vec(),
        ..Default::default()
    };
    w.latency_percentile(p)
}

/// The verdict of one sequential check on the evidence (`index`: the check's place in the metrics).
pub fn judge(a: &Analysis, index: usize, ev: &Evidence, bounds: &[f64]) -> Verdict {
    let m = &a.metrics[index];
    let alpha = alpha(a);
    let n = ev.canary.requests.iter().sum::<u64>() as f64;
    let errors = ev.canary.requests.get(4).copied().unwrap_or(0) as f64;
    let mut verdicts = Vec::new();
    match m.name.as_str() {
        "success-rate" => {
            if let Some(min) = m.threshold_range.min {
                verdicts.push(bernoulli(n, errors, 1.0 - min / 100.0, alpha, "5xx"));
            }
            if m.relative_to.is_some() {
                let stable_n = ev.stable.requests.iter().sum::<u64>();
                if stable_n < a.min_samples() {
                    verdicts.push(Verdict::Unknown(format!("stable has {stable_n} requests")));
                } else {
                    let rate = ev.stable.requests.get(4).copied().unwrap_or(0) as f64 / stable_n as f64;
                    let ratio = m.max_ratio.unwrap_or(DEFAULT_RATIO);
                    let floor = m.min_difference_percent().unwrap_or(DEFAULT_ERROR_FLOOR) / 100.0;
                    let p0 = (ratio * rate).max(rate + floor).min(0.999);
                    let what = format!("5xx (stable {:.2}%)", 100.0 * rate);
                    verdicts.push(bernoulli(n, errors, p0, alpha, &what));
                }
            }
        }
        "latency" => {
            let q = m.percentile.unwrap_or(99.0);
            let p0 = 1.0 - q / 100.0;
            if let Some(max) = m.threshold_range.max {
                let slow = above(&ev.canary, bounds, max);
                verdicts.push(bernoulli(n, slow, p0, alpha, &format!("slower than {max} ms")));
            }
            if let (Some(_), Some(r)) = (&m.relative_to, m.max_ratio) {
                let stable_n: u64 = ev.stable.latency_counts.iter().sum();
                match percentile(&ev.stable, bounds, q).filter(|_| stable_n >= a.min_samples()) {
                    None => verdicts.push(Verdict::Unknown(format!("stable has {stable_n} requests"))),
                    Some(s) => {
                        let t = (r * s).max(s + m.min_difference_ms());
                        let slow = above(&ev.canary, bounds, t);
                        let what = format!("slower than {t:.1} ms ({r} x stable p{q} {s:.1} ms)");
                        verdicts.push(bernoulli(n, slow, p0, alpha, &what));
                    }
                }
            }
        }
        _ => {}
    }
    combine(verdicts)
}

/// Worse if any part is, not worse if all are, else not yet known.
fn combine(vs: Vec<Verdict>) -> Verdict {
    let text = |vs: &[Verdict]| {
        vs.iter()
            .map(|v| match v {
                Verdict::Worse(s) | Verdict::NotWorse(s) | Verdict::Unknown(s) => s.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    if let Some(w) = vs.iter().find(|v| matches!(v, Verdict::Worse(_))) {
        return w.clone();
    }
    if vs.iter().all(|v| matches!(v, Verdict::NotWorse(_))) && !vs.is_empty() {
        return Verdict::NotWorse(text(&vs));
    }
    Verdict::Unknown(text(&vs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mixture_says_worse_only_on_strong_evidence_and_not_worse_on_enough_good_data() {
        let ln100 = 100f64.ln();
        // One error in thirty requests against 1%: far from evidence of worse.
        assert!(log_mixture(30.0, 1.0, 0.01, true) < ln100);
        // Twenty errors in a hundred against 1%: worse beyond doubt.
        assert!(log_mixture(100.0, 20.0, 0.01, true) > ln100);
        // Nothing bad in a thousand against 1%: not worse.
        assert!(log_mixture(1000.0, 0.0, 0.01, false) > (1.0 / BETA).ln());
        assert!(log_mixture(10.0, 0.0, 0.01, false) < (1.0 / BETA).ln());
    }

    #[test]
    fn a_canary_at_its_bound_is_called_worse_rarely_however_often_it_is_looked_at() {
        // 2,000 runs of 5,000 Bernoulli(1%) requests against a 1% bound, looked at after every
        // request: the share ever called worse stays within the 1% budget.
        let mut state = 12345u64;
        let mut uniform = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let runs = 2000;
        let mut false_alarms = 0;
        for _ in 0..runs {
            let mut k = 0.0;
            for n in 1..=5000 {
                if uniform() < 0.01 {
                    k += 1.0;
                }
                if log_mixture(n as f64, k, 0.01, true) >= 100f64.ln() {
                    false_alarms += 1;
                    break;
                }
            }
        }
        let rate = false_alarms as f64 / runs as f64;
        assert!(rate <= 0.01, "false alarms {rate}");
    }

    #[test]
    fn evidence_adds_each_look_and_survives_counters_that_went_back() {
        let c = |ok: u64, errors: u64| Counters {
            requests: [0, ok, 0, 0, errors],
            bounds_ms: vec![10.0],
            latency_counts: vec![ok + errors, 0],
            ..Default::default()
        };
        let t = |s: i64| DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let first = look(None, t(0), &c(100, 1), Some(&c(900, 5))).unwrap();
        assert_eq!(
            first.canary.requests.iter().sum::<u64>(),
            0,
            "a first look notes the counters"
        );
        assert!(
            look(Some(&first), t(0), &c(150, 1), None).is_none(),
            "looks are a second apart"
        );
        let second = look(Some(&first), t(1), &c(150, 3), Some(&c(1000, 5))).unwrap();
        assert_eq!(second.canary.requests, vec![0, 50, 0, 0, 2]);
        assert_eq!(second.stable.requests, vec![0, 100, 0, 0, 0]);
        // The server restarted (its counters are back near zero); the stored evidence is kept and the
        // new counts are added from zero.
        let third = look(Some(&second), t(5), &c(20, 1), Some(&c(30, 0))).unwrap();
        assert_eq!(third.canary.requests, vec![0, 70, 0, 0, 3]);
        assert_eq!(third.stable.requests, vec![0, 130, 0, 0, 0]);
    }

    #[test]
    fn latency_above_a_bound_is_interpolated_in_its_bucket() {
        let c = CounterReading {
            latency_counts: vec![10, 10, 10],
            ..Default::default()
        };
        let bounds = [10.0, 20.0];
        assert_eq!(
            above(&c, &bounds, 15.0),
            15.0,
            "half the middle bucket and the open one"
        );
        assert_eq!(above(&c, &bounds, 0.0), 30.0);
        assert_eq!(above(&c, &bounds, 25.0), 10.0, "the open bucket counts as above");
    }
}

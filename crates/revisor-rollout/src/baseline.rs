//! Where an analysis window starts: a baseline of the canary's (and stable's) cumulative counters,
//! kept in the Rollout's status so that a restart of the controller loses at most one look, and a
//! restart of the data plane (its counters back at zero) only shortens one window.

use chrono::{DateTime, Utc};
use revisor_api::rollout::{AnalysisBaseline, CounterReading, Rollout};

use crate::analysis::{Counters, Window};
use crate::machine::analysis_due;

/// A revision's counters now, by its name.
pub type Reading<'a> = (&'a str, &'a Counters);

/// The canary's window and, for checks relative to stable, the stable revision's over the same time.
pub type Windows = (Window, Option<Window>);

/// The window due now, if any, and the baseline to keep. A window is due when analysis is due and the
/// stored baseline of this canary is most of an interval old (so a run right after a restart still
/// looks at a whole interval); a new baseline starts at every run and whenever none fits the canary.
pub fn next_window(
    r: &Rollout,
    now: DateTime<Utc>,
    canary: Reading,
    stable: Option<Reading>,
) -> (Option<Windows>, AnalysisBaseline) {
    let fresh = AnalysisBaseline {
        at: now,
        canary: reading(canary),
        stable: stable.map(reading),
    };
    let interval = r.spec.analysis.as_ref().map(|a| a.interval()).unwrap_or_default();
    let Some(base) = r.status().analysis_baseline.filter(|b| b.canary.revision == canary.0) else {
        return (None, fresh);
    };
    let age = (now - base.at).to_std().unwrap_or_default();
    if !analysis_due(r, now) || age < interval.mul_f64(0.9) {
        return (None, base);
    }
    let secs = age.as_secs_f64();
    let canary_window = Window::between(&counters(&base.canary, canary.1), canary.1, secs);
    let stable_window = match (&base.stable, stable) {
        (Some(b), Some((name, now))) if b.revision == name => Some(Window::between(&counters(b, now), now, secs)),
        _ => None,
    };
    (Some((canary_window, stable_window)), fresh)
}

pub(crate) fn reading((revision, c): Reading) -> CounterReading {
    CounterReading {
        revision: revision.to_string(),
        requests: c.requests.to_vec(),
        latency_counts: c.latency_counts.clone(),
        compared: c.compared,
        argmax_agreed: c.argmax_agreed,
        diff_counts: c.diff_counts.clone(),
    }
}

/// A stored reading as counters (bucket bounds from `now`'s); zero when the counters went back since
/// (the data plane restarted), so the window counts what came after the restart.
pub(crate) fn counters(r: &CounterReading, now: &Counters) -> Counters {
    let mut requests = [0; 5];
    for (a, b) in requests.iter_mut().zip(&r.requests) {
        *a = *b;
    }
    let total = |q: &[u64]| q.iter().sum::<u64>();
    if total(&now.requests) < total(&requests) || now.compared < r.compared {
        return Counters {
            bounds_ms: now.bounds_ms.clone(),
            diff_bounds: now.diff_bounds.clone(),
            ..Default::default()
        };
    }
    Counters {
        requests,
        bounds_ms: now.bounds_ms.clone(),
        latency_counts: r.latency_counts.clone(),
        compared: r.compared,
        argmax_agreed: r.argmax_agreed,
        diff_bounds: now.diff_bounds.clone(),
        diff_counts: r.diff_counts.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use revisor_api::rollout::*;

    fn rollout(baseline: Option<AnalysisBaseline>, last_analysis: DateTime<Utc>) -> Rollout {
        Rollout {
            spec: RolloutSpec {
                service_ref: ServiceRef { name: "svc".into() },
                analysis: Some(Analysis {
                    interval: Some("10s".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            status: Some(RolloutStatus {
                phase: phase::PROGRESSING,
                canary_revision: Some("svc-2".into()),
                canary_weight: 10,
                last_analysis_at: Some(last_analysis),
                analysis_baseline: baseline,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn c(ok: u64, errors: u64) -> Counters {
        Counters {
            requests: [0, ok, 0, 0, errors],
            bounds_ms: vec![10.0],
            latency_counts: vec![ok + errors, 0],
            ..Default::default()
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_stored_baseline_gives_a_window_once_due_even_after_a_restart() {
        // No baseline yet: one starts now, no window.
        let r = rollout(None, at(0));
        let (w, base) = next_window(&r, at(0), ("svc-2", &c(5, 0)), Some(("svc-1", &c(50, 1))));
        assert!(w.is_none());
        assert_eq!((base.at, base.canary.requests[1]), (at(0), 5));

        // Not due yet (4 s of a 10 s interval): the baseline is kept, not replaced.
        let r = rollout(Some(base.clone()), at(0));
        let (w, kept) = next_window(&r, at(4), ("svc-2", &c(9, 0)), None);
        assert!(w.is_none());
        assert_eq!(kept, base, "a baseline is never replaced before its window");

        // Due: the window runs from the stored baseline, and a new baseline starts.
        let r = rollout(Some(base.clone()), at(0));
        let (w, next) = next_window(&r, at(10), ("svc-2", &c(25, 3)), Some(("svc-1", &c(150, 1))));
        let (canary, stable) = w.expect("a window");
        assert_eq!((canary.requests, canary.errors, canary.seconds), (23, 3, 10.0));
        assert_eq!(stable.map(|s| (s.requests, s.errors)), Some((100, 0)));
        assert_eq!(next.at, at(10));

        // A controller restarted long after: the stored baseline still gives the next window at once.
        let (w, _) = next_window(&r, at(300), ("svc-2", &c(25, 3)), None);
        assert_eq!(w.map(|(c, _)| c.requests), Some(23));
    }

    #[test]
    fn counters_that_went_back_count_from_zero_and_another_canary_starts_afresh() {
        let base = AnalysisBaseline {
            at: at(0),
            canary: reading(("svc-2", &c(500, 10))),
            stable: None,
        };
        let r = rollout(Some(base), at(0));
        // The data plane restarted: its counters are back near zero.
        let (w, _) = next_window(&r, at(10), ("svc-2", &c(7, 1)), None);
        assert_eq!(w.map(|(c, _)| (c.requests, c.errors)), Some((8, 1)));
        // A baseline of another canary does not count.
        let (w, fresh) = next_window(&r, at(10), ("svc-3", &c(7, 1)), None);
        assert!(w.is_none());
        assert_eq!(fresh.canary.revision, "svc-3");
    }
}

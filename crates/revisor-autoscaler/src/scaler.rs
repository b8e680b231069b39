//! One revision's autoscaler (metric windows, the decider, bounds, and the scale-to-zero state machine
//! of Knative's KPA reconciler), and [`Autoscaler`], the set of them that the local backend drives.

use std::collections::BTreeMap;

use crate::config::{DeciderSpec, Metric};
use crate::decider::{Decider, ScaleResult};
use crate::window::Buckets;
use crate::Time;

/// Knative's `Active` condition of a revision's autoscaler, with when it was entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Requests are waiting for a replica (Active=Unknown, reason Queued).
    Activating { since: Time },
    /// Active=True.
    Active { since: Time },
    /// Active=False, reason NoTraffic: idle, replicas stop once the grace period has passed.
    Inactive { since: Time },
}

impl Activity {
    pub fn since(self) -> Time {
        match self {
            Activity::Activating { since } | Activity::Active { since } | Activity::Inactive { since } => since,
        }
    }
}

/// The outcome of one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Replicas to run.
    pub replicas: u32,
    pub activity: Activity,
    /// The decider's answer, `None` while there is no data.
    pub result: Option<ScaleResult>,
}

/// One revision's autoscaler.
#[derive(Debug, Clone)]
pub struct RevisionAutoscaler {
    spec: DeciderSpec,
    concurrency: Buckets,
    rps: Buckets,
    decider: Decider,
    activity: Activity,
    scale: u32,
    initialized: bool,
    reachable: bool,
    last: Option<ScaleResult>,
}

/// `x` within [min, max] (max 0: unbounded); a negative `x` (no decision) only rises to a positive min.
fn apply_bounds(min: u32, max: u32, x: i64) -> i64 {
    if x < min as i64 && (x >= 0 || min > 0) {
        return min as i64;
    }
    if max != 0 && x > max as i64 {
        return max as i64;
    }
    x
}

impl RevisionAutoscaler {
    /// Starts managing a revision that runs `replicas` now.
    pub fn new(spec: DeciderSpec, now: Time, replicas: u32) -> RevisionAutoscaler {
        let longest = spec.stable_window.max(spec.panic_window);
        RevisionAutoscaler {
            decider: Decider::new(&spec),
            concurrency: Buckets::new(longest),
            rps: Buckets::new(longest),
            activity: if replicas > 0 {
                Activity::Activating { since: now }
            } else {
                Activity::Inactive { since: now }
            },
            scale: replicas,
            initialized: false,
            reachable: true,
            last: None,
            spec,
        }
    }

    pub fn spec(&self) -> &DeciderSpec {
        &self.spec
    }

    /// Replicas asked for now.
    pub fn replicas(&self) -> u32 {
        self.scale
    }

    pub fn activity(&self) -> Activity {
        self.activity
    }

    pub fn last(&self) -> Option<ScaleResult> {
        self.last
    }

    pub fn set_reachable(&mut self, reachable: bool) {
        self.reachable = reachable;
    }

    /// One second's observations: average requests in flight, and requests per second.
    pub fn record(&mut self, now: Time, concurrency: f64, rps: f64) {
        self.concurrency.record(now, concurrency);
        self.rps.record(now, rps);
    }

    /// A request is waiting for a replica (`held` of them): counted at once, and when the revision is
    /// at zero the decision is made now rather than at the next tick. Returns the decision if one
    /// was made.
    pub fn poke(&mut self, now: Time, held: u32, ready: u32) -> Option<Decision> {
        self.concurrency.record(now, held as f64);
        self.rps.record(now, held as f64);
        (self.scale == 0).then(|| self.tick(now, ready))
    }

    fn observed(&self, now: Time) -> Option<(f64, f64)> {
        let b = match self.spec.metric {
            Metric::Concurrency => &self.concurrency,
            Metric::Rps => &self.rps,
        };
        Some((
            b.average(now, self.spec.stable_window)?,
            b.average(now, self.spec.panic_window).unwrap_or(0.0),
        ))
    }

    /// One tick with `ready` replicas ready now.
    pub fn tick(&mut self, now: Time, ready: u32) -> Decision {
        let spec = self.spec.clone();
        let result = self
            .observed(now)
            .map(|(stable, panic)| self.decider.scale(&spec, now, ready, stable, panic, self.reachable));
        if result.is_some() {
            self.last = result;
        }
        let mut want = result.map(|r| r.desired as i64).unwrap_or(-1);
        let activating = matches!(self.activity, Activity::Activating { .. });
        if want >= 0 || activating {
            let mut min = if self.reachable { spec.min_scale } else { 0 };
            if spec.initial_scale > 1 && !self.initialized {
                min = min.max(spec.initial_scale);
            }
            let bounded = apply_bounds(min, spec.max_scale, want);
            let (w, apply) = self.scale_to_zero(now, bounded);
            if apply && w >= 0 {
                self.scale = w as u32;
            }
            want = w;
        }
        self.update_activity(now, want, ready);
        Decision {
            replicas: self.scale,
            activity: self.activity,
            result,
        }
    }

    /// Knative's scale-to-zero rules: a decision of zero first marks the revision inactive (once it has
    /// been active for a stable window), and replicas stop only after it has been inactive for the
    /// grace period (or the pod retention period, if longer). Returns (want, apply).
    fn scale_to_zero(&self, now: Time, want: i64) -> (i64, bool) {
        if want != 0 {
            return (want, true);
        }
        if !self.spec.enable_scale_to_zero {
            return (1, true);
        }
        match self.activity {
            Activity::Activating { since } => {
                if now.saturating_sub(since) >= self.spec.activation_timeout {
                    (0, true)
                } else {
                    (-1, false)
                }
            }
            Activity::Active { since } => {
                if now.saturating_sub(since) >= self.spec.stable_window {
                    (0, false)
                } else {
                    (1, true)
                }
            }
            Activity::Inactive { since } => {
                let wait = self
                    .spec
                    .scale_to_zero_grace_period
                    .max(self.spec.scale_to_zero_pod_retention_period);
                (0, now.saturating_sub(since) >= wait)
            }
        }
    }

    /// Knative's Active condition from what was wanted and what is ready.
    fn update_activity(&mut self, now: Time, want: i64, ready: u32) {
        let min_ready = if self.reachable { self.spec.min_scale.max(1) } else { 1 };
        if ready >= min_ready {
            self.initialized = true;
        }
        let inactive = matches!(self.activity, Activity::Inactive { .. });
        let next = if want == 0 {
            Activity::Inactive { since: now }
        } else if ready < min_ready {
            if want > 0 || !inactive {
                Activity::Activating { since: now }
            } else {
                Activity::Inactive { since: now }
            }
        } else if want > 0 || !inactive {
            Activity::Active { since: now }
        } else {
            self.activity
        };
        // Keep the time a state was entered.
        if std::mem::discriminant(&next) != std::mem::discriminant(&self.activity) {
            self.activity = next;
        }
    }
}

/// Every managed revision's autoscaler, by key.
#[derive(Debug, Clone)]
pub struct Autoscaler<K: Ord + Clone> {
    revisions: BTreeMap<K, RevisionAutoscaler>,
}

impl<K: Ord + Clone> Default for Autoscaler<K> {
    fn default() -> Self {
        Autoscaler {
            revisions: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> Autoscaler<K> {
    /// Manages `key` from now on (starting at `replicas`), or updates its spec if already managed.
    pub fn ensure(&mut self, key: &K, spec: DeciderSpec, now: Time, replicas: u32) {
        match self.revisions.get_mut(key) {
            Some(r) if r.spec == spec => {}
            Some(r) => {
                let mut fresh = RevisionAutoscaler::new(spec, now, r.scale);
                fresh.activity = r.activity;
                fresh.initialized = r.initialized;
                *r = fresh;
            }
            None => {
                self.revisions
                    .insert(key.clone(), RevisionAutoscaler::new(spec, now, replicas));
            }
        }
    }

    /// Stops managing every revision not in `keep`.
    pub fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        self.revisions.retain(|k, _| keep(k));
    }

    pub fn get(&self, key: &K) -> Option<&RevisionAutoscaler> {
        self.revisions.get(key)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut RevisionAutoscaler> {
        self.revisions.get_mut(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &RevisionAutoscaler)> {
        self.revisions.iter()
    }

    pub fn keys(&self) -> Vec<K> {
        self.revisions.keys().cloned().collect()
    }

    /// Ticks every revision; returns those whose replica count changed.
    pub fn tick(&mut self, now: Time, ready: impl Fn(&K) -> u32) -> Vec<(K, Decision)> {
        let mut changed = Vec::new();
        for (k, r) in self.revisions.iter_mut() {
            let before = (r.scale, r.activity);
            let d = r.tick(now, ready(k));
            if (d.replicas, d.activity) != before {
                changed.push((k.clone(), d));
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AutoscalerConfig;
    use revisor_api::annotations::AutoscalingAnnotations;
    use std::time::Duration;

    fn s(x: u64) -> Time {
        Duration::from_secs(x)
    }

    fn spec(f: impl FnOnce(&mut AutoscalingAnnotations)) -> DeciderSpec {
        let mut a = AutoscalingAnnotations {
            target: Some(10.0),
            target_utilization_percentage: Some(100.0),
            ..Default::default()
        };
        f(&mut a);
        DeciderSpec::resolve(&AutoscalerConfig::default(), &a, 0)
    }

    /// Drives one revision second by second with a constant load, a tick every 2 s, replicas ready
    /// one tick after they are asked for. Returns (second, replicas, activity) at each tick.
    fn drive(r: &mut RevisionAutoscaler, from: u64, to: u64, load: f64, ready: &mut u32) -> Vec<(u64, u32, Activity)> {
        let mut out = Vec::new();
        for t in from..to {
            r.record(s(t), load, load);
            if t % 2 == 0 {
                let d = r.tick(s(t), *ready);
                *ready = d.replicas;
                out.push((t, d.replicas, d.activity));
            }
        }
        out
    }

    #[test]
    fn idle_goes_inactive_after_the_stable_window_then_to_zero_after_the_grace_period() {
        let mut r = RevisionAutoscaler::new(spec(|_| {}), s(0), 1);
        let mut ready = 1;
        let ticks = drive(&mut r, 0, 200, 0.0, &mut ready);
        let first = |p: &dyn Fn(&(u64, u32, Activity)) -> bool| ticks.iter().find(|x| p(x)).map(|x| x.0);
        assert_eq!(ticks[0].2, Activity::Active { since: s(0) });
        assert_eq!(
            first(&|x| matches!(x.2, Activity::Inactive { .. })),
            Some(60),
            "inactive once active for a stable window with nothing observed"
        );
        assert_eq!(first(&|x| x.1 == 0), Some(90), "zero after the 30s grace period");
        assert!(ticks.iter().all(|x| x.0 >= 90 || x.1 == 1), "one replica until then");
    }

    #[test]
    fn scale_to_zero_disabled_min_scale_and_retention() {
        let cfg = AutoscalerConfig {
            enable_scale_to_zero: false,
            ..Default::default()
        };
        let mut r = RevisionAutoscaler::new(
            DeciderSpec::resolve(&cfg, &AutoscalingAnnotations::default(), 0),
            s(0),
            1,
        );
        let mut ready = 1;
        assert!(
            drive(&mut r, 0, 300, 0.0, &mut ready).iter().all(|x| x.1 == 1),
            "disabled: never zero"
        );

        let mut r = RevisionAutoscaler::new(spec(|a| a.min_scale = Some(2)), s(0), 1);
        let mut ready = 1;
        let ticks = drive(&mut r, 0, 300, 0.0, &mut ready);
        assert_eq!(ticks.last().unwrap().1, 2, "min-scale holds while reachable");
        r.set_reachable(false);
        let ticks = drive(&mut r, 300, 500, 0.0, &mut ready);
        assert_eq!(
            ticks.last().unwrap().1,
            0,
            "min-scale does not hold an unreachable revision"
        );

        let mut r = RevisionAutoscaler::new(
            spec(|a| a.scale_to_zero_pod_retention_period = Some(Duration::from_secs(100))),
            s(0),
            1,
        );
        let mut ready = 1;
        let ticks = drive(&mut r, 0, 300, 0.0, &mut ready);
        assert_eq!(
            ticks.iter().find(|x| x.1 == 0).map(|x| x.0),
            Some(160),
            "retention 100s > grace 30s"
        );
    }

    #[test]
    fn a_poke_at_zero_scales_up_at_once_and_activates() {
        let mut r = RevisionAutoscaler::new(spec(|a| a.activation_scale = Some(2)), s(0), 1);
        let mut ready = 1;
        drive(&mut r, 0, 100, 0.0, &mut ready);
        assert_eq!(r.replicas(), 0);
        assert!(
            r.poke(s(100), 0, 0).is_none() || r.replicas() == 0,
            "nothing held, nothing to do"
        );
        let d = r.poke(s(101), 1, 0).expect("a decision at zero");
        assert_eq!(d.replicas, 2, "activation-scale");
        assert!(matches!(d.activity, Activity::Activating { .. }));
        assert_eq!(r.poke(s(101), 1, 0), None, "no longer at zero: the tick decides");
        let d = r.tick(s(102), 2);
        assert!(matches!(d.activity, Activity::Active { .. }), "{d:?}");
        assert!(d.replicas >= 1);
    }

    #[test]
    fn initial_scale_holds_until_reached_and_max_scale_caps() {
        let mut r = RevisionAutoscaler::new(spec(|a| a.initial_scale = Some(3)), s(0), 3);
        r.record(s(0), 1.0, 1.0);
        assert_eq!(r.tick(s(0), 0).replicas, 3, "not yet initialized");
        r.record(s(1), 1.0, 1.0);
        assert_eq!(
            r.tick(s(2), 3).replicas,
            3,
            "reached now; the decider may scale down from here"
        );
        assert_eq!(
            r.tick(s(4), 3).replicas,
            1,
            "ceil(1/10) = 1, within the down rate of 3/2"
        );
        let mut r = RevisionAutoscaler::new(spec(|a| a.max_scale = Some(4)), s(0), 1);
        r.record(s(0), 500.0, 500.0);
        let d = r.tick(s(0), 1);
        assert_eq!(d.replicas, 4, "{d:?} {:?}", r.spec());
    }

    #[test]
    fn a_load_step_panics_and_follows_the_load_then_settles() {
        // 0 -> 200 concurrent clients against target 10 (utilization 70%: 7 per replica).
        let mut r = RevisionAutoscaler::new(
            DeciderSpec::resolve(
                &AutoscalerConfig::default(),
                &AutoscalingAnnotations {
                    target: Some(10.0),
                    ..Default::default()
                },
                0,
            ),
            s(0),
            1,
        );
        let mut ready = 1;
        drive(&mut r, 0, 100, 0.0, &mut ready);
        assert_eq!(r.replicas(), 0);
        let d = r.poke(s(100), 200, 0).unwrap();
        assert!(d.replicas >= 1);
        let ticks = drive(&mut r, 100, 110, 200.0, &mut ready);
        assert!(
            ticks[0].1 > 1 && r.decider.panicking(),
            "panic at the first tick: {ticks:?}"
        );
        let want = (200.0f64 / 7.0).ceil() as u32;
        assert_eq!(
            ticks.last().unwrap().1,
            want,
            "the KPA's answer for 200 in flight: {ticks:?}"
        );
        let ticks = drive(&mut r, 110, 400, 0.0, &mut ready);
        assert_eq!(
            ticks.last().unwrap().1,
            0,
            "back to zero: {:?}",
            &ticks[ticks.len() - 5..]
        );
        assert!(!r.decider.panicking());
    }
}

//! The KPA's decision for one tick: desired replicas from the observed stable and panic values, with
//! Knative's rate limits, panic mode, activation scale, scale-down delay and excess burst capacity.

use crate::config::DeciderSpec;
use crate::window::DelayWindow;
use crate::Time;

/// What the decider keeps between ticks.
#[derive(Debug, Clone)]
pub struct Decider {
    /// When panic mode was last entered or extended; `None` when not panicking.
    panic_time: Option<Time>,
    max_panic_pods: u32,
    delay: DelayWindow,
}

/// One decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleResult {
    pub desired: u32,
    /// Spare capacity beyond the target burst capacity; negative means a burst could not be absorbed.
    pub excess_burst_capacity: i64,
    pub panicking: bool,
    pub stable: f64,
    pub panic: f64,
}

impl Decider {
    pub fn new(spec: &DeciderSpec) -> Decider {
        Decider {
            panic_time: None,
            max_panic_pods: 0,
            delay: DelayWindow::new(spec.scale_down_delay),
        }
    }

    pub fn panicking(&self) -> bool {
        self.panic_time.is_some()
    }

    /// Decides from the observed averages (`stable`, `panic`) over their windows, with `ready` replicas
    /// ready now. An unreachable revision may scale straight down (no max-scale-down-rate floor).
    pub fn scale(
        &mut self,
        spec: &DeciderSpec,
        now: Time,
        ready: u32,
        stable: f64,
        panic: f64,
        reachable: bool,
    ) -> ScaleResult {
        let ready_f = (ready as f64).max(1.0);
        let max_up = (spec.max_scale_up_rate * ready_f).ceil();
        let max_down = if reachable {
            (ready_f / spec.max_scale_down_rate).floor()
        } else {
            0.0
        };
        let dspc = (stable / spec.target_value).ceil();
        let dppc = (panic / spec.target_value).ceil();
        let mut desired_stable = dspc.max(max_down).min(max_up) as u32;
        let mut desired_panic = dppc.max(max_down).min(max_up) as u32;
        if spec.activation_scale > 1 {
            if dspc > 0.0 && spec.activation_scale > desired_stable {
                desired_stable = spec.activation_scale;
            }
            if dppc > 0.0 && spec.activation_scale > desired_panic {
                desired_panic = spec.activation_scale;
            }
        }
        let over_threshold = dppc / ready_f >= spec.panic_threshold;
        match self.panic_time {
            _ if over_threshold => self.panic_time = Some(now),
            Some(t) if t + spec.stable_window < now => {
                self.panic_time = None;
                self.max_panic_pods = 0;
            }
            _ => {}
        }
        let mut desired = desired_stable;
        if self.panic_time.is_some() {
            desired = desired.max(desired_panic);
            // Never scale down while panicking.
            self.max_panic_pods = self.max_panic_pods.max(desired);
            desired = self.max_panic_pods;
        }
        desired = self.delay.record(now, desired);
        let excess_burst_capacity = if spec.target_burst_capacity == 0.0 {
            0
        } else if spec.target_burst_capacity > 0.0 {
            (ready as f64 * spec.total_value - spec.target_burst_capacity - panic).floor() as i64
        } else {
            -1
        };
        ScaleResult {
            desired,
            excess_burst_capacity,
            panicking: self.panic_time.is_some(),
            stable,
            panic,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AutoscalerConfig, Metric};
    use revisor_api::annotations::AutoscalingAnnotations;
    use std::time::Duration;

    fn spec(f: impl FnOnce(&mut AutoscalingAnnotations)) -> DeciderSpec {
        let mut a = AutoscalingAnnotations {
            target: Some(10.0),
            target_utilization_percentage: Some(100.0),
            ..Default::default()
        };
        f(&mut a);
        DeciderSpec::resolve(&AutoscalerConfig::default(), &a, 0)
    }

    fn s(x: u64) -> Time {
        Duration::from_secs(x)
    }

    /// One row: (what it shows, spec, ready, stable, panic, reachable, desired, panicking).
    type Row = (&'static str, DeciderSpec, u32, f64, f64, bool, u32, bool);

    #[test]
    fn single_decisions() {
        let rows: Vec<Row> = vec![
            (
                "steady: ceil(stable / target)",
                spec(|_| {}),
                5,
                50.0,
                50.0,
                true,
                5,
                false,
            ),
            ("a fraction rounds up", spec(|_| {}), 1, 0.01, 0.01, true, 1, false),
            ("no traffic: zero", spec(|_| {}), 1, 0.0, 0.0, true, 0, false),
            (
                "scale down at most by half (rate 2)",
                spec(|_| {}),
                10,
                10.0,
                10.0,
                true,
                5,
                false,
            ),
            (
                "unreachable: straight down",
                spec(|_| {}),
                10,
                10.0,
                10.0,
                false,
                1,
                false,
            ),
            (
                "utilization 70%: ceil(100 / 7)",
                spec(|a| a.target_utilization_percentage = None),
                15,
                100.0,
                100.0,
                true,
                15,
                false,
            ),
            ("panic: 200% of ready", spec(|_| {}), 2, 10.0, 40.0, true, 4, true),
            (
                "just under the threshold (ceil(30/10)/2 < 2)",
                spec(|_| {}),
                2,
                20.0,
                30.0,
                true,
                2,
                false,
            ),
            (
                "from zero ready counts as one",
                spec(|_| {}),
                0,
                0.0,
                25.0,
                true,
                3,
                true,
            ),
            (
                "max-scale-up-rate caps growth",
                spec(|_| {}),
                1,
                0.0,
                10_000.0,
                true,
                1000,
                true,
            ),
            (
                "activation scale lifts any non-zero decision",
                spec(|a| a.activation_scale = Some(3)),
                1,
                1.0,
                1.0,
                true,
                3,
                false,
            ),
            (
                "activation scale leaves zero alone",
                spec(|a| a.activation_scale = Some(3)),
                1,
                0.0,
                0.0,
                true,
                0,
                false,
            ),
            (
                "panic threshold 110%",
                spec(|a| a.panic_threshold_percentage = Some(110.0)),
                10,
                100.0,
                110.0,
                true,
                11,
                true,
            ),
        ];
        for (name, spec, ready, stable, panic, reachable, want, panicking) in rows {
            let mut d = Decider::new(&spec);
            let r = d.scale(&spec, s(100), ready, stable, panic, reachable);
            assert_eq!((r.desired, r.panicking), (want, panicking), "{name}");
        }
    }

    #[test]
    fn panic_mode_never_scales_down_and_ends_after_a_stable_window() {
        let sp = spec(|_| {});
        let mut d = Decider::new(&sp);
        let r = d.scale(&sp, s(0), 1, 10.0, 80.0, true);
        assert_eq!((r.desired, r.panicking), (8, true));
        let r = d.scale(&sp, s(2), 8, 10.0, 30.0, true);
        assert_eq!((r.desired, r.panicking), (8, true), "panic holds the maximum");
        let r = d.scale(&sp, s(60), 8, 10.0, 10.0, true);
        assert_eq!((r.desired, r.panicking), (8, true), "not a full stable window yet");
        let r = d.scale(&sp, s(61), 8, 10.0, 10.0, true);
        assert_eq!(
            (r.desired, r.panicking),
            (4, false),
            "out of panic; rate-limited scale down"
        );
    }

    #[test]
    fn scale_down_delay_and_burst_capacity() {
        let sp = spec(|a| a.scale_down_delay = Some(Duration::from_secs(10)));
        let mut d = Decider::new(&sp);
        assert_eq!(d.scale(&sp, s(0), 4, 40.0, 40.0, true).desired, 4);
        assert_eq!(d.scale(&sp, s(2), 4, 0.0, 0.0, true).desired, 4, "held by the delay");
        assert_eq!(d.scale(&sp, s(10), 4, 0.0, 0.0, true).desired, 2);
        assert_eq!(
            d.scale(&sp, s(12), 2, 0.0, 0.0, true).desired,
            2,
            "the 2 of s(10) holds"
        );
        assert_eq!(d.scale(&sp, s(20), 2, 0.0, 0.0, true).desired, 1);
        let sp = spec(|a| a.target_burst_capacity = Some(15.0));
        let mut d = Decider::new(&sp);
        let r = d.scale(&sp, s(0), 3, 10.0, 10.0, true);
        assert_eq!(r.excess_burst_capacity, 3 * 10 - 15 - 10);
        let sp = spec(|a| a.target_burst_capacity = Some(-1.0));
        assert_eq!(
            Decider::new(&sp)
                .scale(&sp, s(0), 3, 0.0, 0.0, true)
                .excess_burst_capacity,
            -1
        );
        assert_eq!(sp.metric, Metric::Concurrency);
    }
}

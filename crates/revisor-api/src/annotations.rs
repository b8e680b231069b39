//! Knative's per-revision annotations (`autoscaling.knative.dev/*`, `serving.knative.dev/*`), parsed and checked.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::field::{FieldErrors, Path};
use crate::units::parse_go_duration;

pub const AUTOSCALING_PREFIX: &str = "autoscaling.knative.dev/";
pub const PROGRESS_DEADLINE: &str = "serving.knative.dev/progress-deadline";
pub const ROLLOUT_DURATION: &str = "serving.knative.dev/rollout-duration";

pub const CLASS: &str = "autoscaling.knative.dev/class";
pub const METRIC: &str = "autoscaling.knative.dev/metric";
pub const TARGET: &str = "autoscaling.knative.dev/target";
pub const TARGET_UTILIZATION: [&str; 2] = [
    "autoscaling.knative.dev/target-utilization-percentage",
    "autoscaling.knative.dev/targetUtilizationPercentage",
];
pub const TARGET_BURST_CAPACITY: [&str; 2] = [
    "autoscaling.knative.dev/target-burst-capacity",
    "autoscaling.knative.dev/targetBurstCapacity",
];
pub const MIN_SCALE: [&str; 2] = ["autoscaling.knative.dev/min-scale", "autoscaling.knative.dev/minScale"];
pub const MAX_SCALE: [&str; 2] = ["autoscaling.knative.dev/max-scale", "autoscaling.knative.dev/maxScale"];
pub const INITIAL_SCALE: [&str; 2] = [
    "autoscaling.knative.dev/initial-scale",
    "autoscaling.knative.dev/initialScale",
];
pub const ACTIVATION_SCALE: &str = "autoscaling.knative.dev/activation-scale";
pub const SCALE_DOWN_DELAY: &str = "autoscaling.knative.dev/scale-down-delay";
pub const WINDOW: &str = "autoscaling.knative.dev/window";
pub const PANIC_WINDOW_PERCENTAGE: [&str; 2] = [
    "autoscaling.knative.dev/panic-window-percentage",
    "autoscaling.knative.dev/panicWindowPercentage",
];
pub const PANIC_THRESHOLD_PERCENTAGE: [&str; 2] = [
    "autoscaling.knative.dev/panic-threshold-percentage",
    "autoscaling.knative.dev/panicThresholdPercentage",
];
pub const SCALE_TO_ZERO_POD_RETENTION: &str = "autoscaling.knative.dev/scale-to-zero-pod-retention-period";

pub const KPA_CLASS: &str = "kpa.autoscaling.knative.dev";
pub const HPA_CLASS: &str = "hpa.autoscaling.knative.dev";

/// The autoscaling settings one revision's annotations ask for; `None` means "use the server default".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AutoscalingAnnotations {
    pub class: Option<String>,
    pub metric: Option<String>,
    pub target: Option<f64>,
    pub target_utilization_percentage: Option<f64>,
    pub target_burst_capacity: Option<f64>,
    pub min_scale: Option<i64>,
    pub max_scale: Option<i64>,
    pub initial_scale: Option<i64>,
    pub activation_scale: Option<i64>,
    pub scale_down_delay: Option<Duration>,
    pub window: Option<Duration>,
    pub panic_window_percentage: Option<f64>,
    pub panic_threshold_percentage: Option<f64>,
    pub scale_to_zero_pod_retention_period: Option<Duration>,
    pub progress_deadline: Option<Duration>,
}

/// Server limits that annotation checks depend on (from Knative's config-autoscaler).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnnotationLimits {
    pub allow_zero_initial_scale: bool,
    pub max_scale_limit: i64,
}

struct Reader<'a> {
    map: &'a BTreeMap<String, String>,
    path: &'a Path,
    errs: FieldErrors,
}

impl Reader<'_> {
    /// The value of the first of `keys` present, refusing both spellings at once.
    fn raw(&mut self, keys: &[&str]) -> Option<(String, String)> {
        let present: Vec<&str> = keys.iter().copied().filter(|k| self.map.contains_key(*k)).collect();
        if present.len() > 1 {
            self.errs.push(
                self.path.field(present[1]),
                format!("set only one of {}", present.join(", ")),
            );
        }
        let key = present.first()?;
        Some((key.to_string(), self.map[*key].clone()))
    }

    fn parse<T>(&mut self, keys: &[&str], parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        let (key, value) = self.raw(keys)?;
        match parse(value.trim()) {
            Ok(v) => Some(v),
            Err(msg) => {
                self.errs.push(self.path.field(&key), msg);
                None
            }
        }
    }

    fn int_in(&mut self, keys: &[&str], min: i64, max: i64) -> Option<i64> {
        self.parse(keys, |s| {
            let v: i64 = s.parse().map_err(|_| format!("{s:?} is not an integer"))?;
            in_range(v, min, max)
        })
    }

    fn float_in(&mut self, keys: &[&str], min: f64, max: f64) -> Option<f64> {
        self.parse(keys, |s| {
            let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
            if v.is_finite() && v >= min && v <= max {
                Ok(v)
            } else {
                Err(format!("must be in [{min}, {max}], got {s}"))
            }
        })
    }

    fn duration_in(&mut self, keys: &[&str], min: Duration, max: Duration) -> Option<Duration> {
        self.parse(keys, |s| {
            let d = parse_go_duration(s)?;
            if d < min || d > max {
                Err(format!("must be between {:?} and {:?}, got {s}", min, max))
            } else {
                Ok(d)
            }
        })
    }
}

fn in_range(v: i64, min: i64, max: i64) -> Result<i64, String> {
    if v < min || v > max {
        Err(format!("must be in [{min}, {max}], got {v}"))
    } else {
        Ok(v)
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// Parses and checks a revision template's annotations; errors name `path.<key>`.
pub fn parse_autoscaling(
    map: &BTreeMap<String, String>,
    path: &Path,
    limits: AnnotationLimits,
) -> Result<AutoscalingAnnotations, FieldErrors> {
    let mut r = Reader {
        map,
        path,
        errs: FieldErrors::default(),
    };
    let class = r.parse(&[CLASS], |s| match s {
        KPA_CLASS | HPA_CLASS => Ok(s.to_string()),
        _ => Err(format!("must be {KPA_CLASS:?} or {HPA_CLASS:?}, got {s:?}")),
    });
    let hpa = class.as_deref() == Some(HPA_CLASS);
    let metric = r.parse(&[METRIC], |s| match (s, hpa) {
        ("concurrency" | "rps", false) | ("cpu" | "memory", true) => Ok(s.to_string()),
        (_, false) => Err(format!("must be \"concurrency\" or \"rps\" for the KPA, got {s:?}")),
        (_, true) => Err(format!("must be \"cpu\" or \"memory\" for the HPA, got {s:?}")),
    });
    let max_limit = if limits.max_scale_limit > 0 {
        limits.max_scale_limit
    } else {
        i64::MAX
    };
    let min_initial = if limits.allow_zero_initial_scale { 0 } else { 1 };
    let a = AutoscalingAnnotations {
        class,
        metric,
        target: r.float_in(&[TARGET], 0.01, f64::MAX),
        target_utilization_percentage: r.float_in(&TARGET_UTILIZATION, 1.0, 100.0),
        target_burst_capacity: r.float_in(&TARGET_BURST_CAPACITY, -1.0, f64::MAX),
        min_scale: r.int_in(&MIN_SCALE, 0, max_limit),
        max_scale: r.int_in(&MAX_SCALE, 0, max_limit),
        initial_scale: r.int_in(&INITIAL_SCALE, min_initial, i64::MAX),
        activation_scale: r.int_in(&[ACTIVATION_SCALE], 1, i64::MAX),
        scale_down_delay: r.duration_in(&[SCALE_DOWN_DELAY], Duration::ZERO, HOUR),
        window: r.duration_in(&[WINDOW], Duration::from_secs(6), HOUR),
        panic_window_percentage: r.float_in(&PANIC_WINDOW_PERCENTAGE, 1.0, 100.0),
        panic_threshold_percentage: r.float_in(&PANIC_THRESHOLD_PERCENTAGE, 110.0, 1000.0),
        scale_to_zero_pod_retention_period: r.duration_in(&[SCALE_TO_ZERO_POD_RETENTION], Duration::ZERO, HOUR),
        progress_deadline: r.duration_in(&[PROGRESS_DEADLINE], Duration::from_secs(1), Duration::MAX),
    };
    if let (Some(min), Some(max)) = (a.min_scale, a.max_scale) {
        if max != 0 && min > max {
            r.errs.push(
                path.field(MAX_SCALE[0]),
                format!("max-scale={max} is less than min-scale={min}"),
            );
        }
    }
    if limits.max_scale_limit > 0 && a.max_scale == Some(0) {
        r.errs.push(
            path.field(MAX_SCALE[0]),
            format!(
                "must be set to at most {} (the server's max-scale-limit), got 0 (unlimited)",
                limits.max_scale_limit
            ),
        );
    }
    r.errs.into_result().map(|_| a)
}

/// Refuses autoscaling annotations where Knative ignores them (anywhere but the template).
pub fn check_misplaced_autoscaling(map: &BTreeMap<String, String>, path: &Path, errs: &mut FieldErrors) {
    for key in map.keys().filter(|k| k.starts_with(AUTOSCALING_PREFIX)) {
        errs.push(
            path.field(key),
            "autoscaling annotations must be put under `spec.template.metadata.annotations` to work",
        );
    }
}

//! Knative's `config-autoscaler`: the server-wide keys, their defaults and their checks, and the
//! resolution of one revision's annotations against them into a [`DeciderSpec`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use revisor_api::annotations::{AnnotationLimits, AutoscalingAnnotations, HPA_CLASS, KPA_CLASS};
use revisor_api::units::parse_go_duration;

/// The smallest target per replica Knative accepts.
pub const TARGET_MIN: f64 = 0.01;
/// The shortest stable window (and grace period) Knative accepts.
pub const WINDOW_MIN: Duration = Duration::from_secs(6);
const HOUR: Duration = Duration::from_secs(3600);

/// Knative's `config-autoscaler`, key for key, with its defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscalerConfig {
    pub container_concurrency_target_percentage: f64,
    pub container_concurrency_target_default: f64,
    pub requests_per_second_target_default: f64,
    pub target_burst_capacity: f64,
    pub stable_window: Duration,
    pub panic_window_percentage: f64,
    pub panic_threshold_percentage: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub enable_scale_to_zero: bool,
    pub scale_to_zero_grace_period: Duration,
    pub scale_to_zero_pod_retention_period: Duration,
    pub pod_autoscaler_class: String,
    pub activator_capacity: f64,
    pub initial_scale: u32,
    pub allow_zero_initial_scale: bool,
    pub min_scale: u32,
    pub max_scale: u32,
    pub scale_down_delay: Duration,
    pub max_scale_limit: u32,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig {
            container_concurrency_target_percentage: 70.0,
            container_concurrency_target_default: 100.0,
            requests_per_second_target_default: 200.0,
            target_burst_capacity: 211.0,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            enable_scale_to_zero: true,
            scale_to_zero_grace_period: Duration::from_secs(30),
            scale_to_zero_pod_retention_period: Duration::ZERO,
            pod_autoscaler_class: KPA_CLASS.to_string(),
            activator_capacity: 100.0,
            initial_scale: 1,
            allow_zero_initial_scale: false,
            min_scale: 0,
            max_scale: 0,
            scale_down_delay: Duration::ZERO,
            max_scale_limit: 0,
        }
    }
}

/// Every key of the configuration, in Knative's order.
pub const KEYS: [&str; 20] = [
    "container-concurrency-target-percentage",
    "container-concurrency-target-default",
    "requests-per-second-target-default",
    "target-burst-capacity",
    "stable-window",
    "panic-window-percentage",
    "panic-threshold-percentage",
    "max-scale-up-rate",
    "max-scale-down-rate",
    "enable-scale-to-zero",
    "scale-to-zero-grace-period",
    "scale-to-zero-pod-retention-period",
    "pod-autoscaler-class",
    "activator-capacity",
    "initial-scale",
    "allow-zero-initial-scale",
    "min-scale",
    "max-scale",
    "scale-down-delay",
    "max-scale-limit",
];

/// What is wrong with a configuration: each bad key with its reason.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<(String, String)>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, m)| format!("{k}: {m}")).collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for ConfigErrors {}

fn float(v: &str) -> Result<f64, String> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("{v:?} is not a number"))
}

fn uint(v: &str) -> Result<u32, String> {
    v.trim()
        .parse::<u32>()
        .map_err(|_| format!("{v:?} is not a whole number >= 0"))
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{v:?} is not true or false")),
    }
}

impl AutoscalerConfig {
    /// Reads Knative's keys (values as strings, as in the ConfigMap); unknown keys and bad values are
    /// errors that name the key. Missing keys keep their defaults.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<AutoscalerConfig, ConfigErrors> {
        let mut c = AutoscalerConfig::default();
        let mut errs = Vec::new();
        for (key, value) in map {
            let r: Result<(), String> = (|| {
                match key.as_str() {
                    "container-concurrency-target-percentage" => {
                        c.container_concurrency_target_percentage = float(value)?
                    }
                    "container-concurrency-target-default" => c.container_concurrency_target_default = float(value)?,
                    "requests-per-second-target-default" => c.requests_per_second_target_default = float(value)?,
                    "target-burst-capacity" => c.target_burst_capacity = float(value)?,
                    "stable-window" => c.stable_window = parse_go_duration(value.trim())?,
                    "panic-window-percentage" => c.panic_window_percentage = float(value)?,
                    "panic-threshold-percentage" => c.panic_threshold_percentage = float(value)?,
                    "max-scale-up-rate" => c.max_scale_up_rate = float(value)?,
                    "max-scale-down-rate" => c.max_scale_down_rate = float(value)?,
                    "enable-scale-to-zero" => c.enable_scale_to_zero = boolean(value)?,
                    "scale-to-zero-grace-period" => c.scale_to_zero_grace_period = parse_go_duration(value.trim())?,
                    "scale-to-zero-pod-retention-period" => {
                        c.scale_to_zero_pod_retention_period = parse_go_duration(value.trim())?
                    }
                    "pod-autoscaler-class" => c.pod_autoscaler_class = value.trim().to_string(),
                    "activator-capacity" => c.activator_capacity = float(value)?,
                    "initial-scale" => c.initial_scale = uint(value)?,
                    "allow-zero-initial-scale" => c.allow_zero_initial_scale = boolean(value)?,
                    "min-scale" => c.min_scale = uint(value)?,
                    "max-scale" => c.max_scale = uint(value)?,
                    "scale-down-delay" => c.scale_down_delay = parse_go_duration(value.trim())?,
                    "max-scale-limit" => c.max_scale_limit = uint(value)?,
                    _ => return Err(format!("unknown key; the keys are {}", KEYS.join(", "))),
                }
                Ok(())
            })();
            if let Err(m) = r {
                errs.push((key.clone(), m));
            }
        }
        if errs.is_empty() {
            c.validate()?;
            Ok(c)
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// Knative's checks of the configuration, every failure with its key.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        let mut bad = |k: &str, m: String| errs.push((k.to_string(), m));
        let p = self.container_concurrency_target_percentage;
        if !(p > 0.0 && p <= 100.0) {
            bad(KEYS[0], format!("must be in (0, 100], got {p}"));
        }
        if self.container_concurrency_target_default < TARGET_MIN {
            bad(KEYS[1], format!("must be at least {TARGET_MIN}"));
        }
        if self.requests_per_second_target_default < TARGET_MIN {
            bad(KEYS[2], format!("must be at least {TARGET_MIN}"));
        }
        if self.target_burst_capacity < 0.0 && self.target_burst_capacity != -1.0 {
            bad(KEYS[3], "must be -1 (unlimited) or at least 0".into());
        }
        if self.stable_window < WINDOW_MIN || self.stable_window > HOUR {
            bad(KEYS[4], "must be between 6s and 1h".into());
        } else if self.stable_window.subsec_nanos() != 0 {
            bad(KEYS[4], "must be a whole number of seconds".into());
        }
        if !(1.0..=100.0).contains(&self.panic_window_percentage) {
            bad(KEYS[5], "must be in [1, 100]".into());
        }
        if !(110.0..=1000.0).contains(&self.panic_threshold_percentage) {
            bad(KEYS[6], "must be in [110, 1000]".into());
        }
        if self.max_scale_up_rate <= 1.0 {
            bad(KEYS[7], "must be greater than 1".into());
        }
        if self.max_scale_down_rate <= 1.0 {
            bad(KEYS[8], "must be greater than 1".into());
        }
        if self.scale_to_zero_grace_period < WINDOW_MIN {
            bad(KEYS[10], "must be at least 6s".into());
        }
        if self.pod_autoscaler_class != KPA_CLASS && self.pod_autoscaler_class != HPA_CLASS {
            bad(KEYS[12], format!("must be {KPA_CLASS:?} or {HPA_CLASS:?}"));
        }
        if self.activator_capacity < 1.0 {
            bad(KEYS[13], "must be at least 1".into());
        }
        if self.initial_scale == 0 && !self.allow_zero_initial_scale {
            bad(
                KEYS[14],
                "must be at least 1 unless allow-zero-initial-scale is true".into(),
            );
        }
        if self.max_scale != 0 && self.min_scale > self.max_scale {
            bad(KEYS[16], format!("must not exceed max-scale ({})", self.max_scale));
        }
        if self.max_scale_limit > 0 && (self.max_scale == 0 || self.max_scale > self.max_scale_limit) {
            bad(
                KEYS[17],
                format!("must be in [1, {}] (max-scale-limit)", self.max_scale_limit),
            );
        }
        if self.scale_down_delay > HOUR {
            bad(KEYS[18], "must be at most 1h".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// The limits that revision annotations are checked against at admission.
    pub fn annotation_limits(&self) -> AnnotationLimits {
        AnnotationLimits {
            allow_zero_initial_scale: self.allow_zero_initial_scale,
            max_scale_limit: self.max_scale_limit as i64,
        }
    }
}

/// The metric a revision scales on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Average requests in flight.
    Concurrency,
    /// Requests per second.
    Rps,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Concurrency => "concurrency",
            Metric::Rps => "rps",
        }
    }
}

/// Everything the autoscaler needs to decide for one revision: its annotations resolved against the
/// server's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DeciderSpec {
    pub metric: Metric,
    /// What one replica should carry: the target times the utilization.
    pub target_value: f64,
    /// What one replica can carry (the target before utilization), for the burst capacity.
    pub total_value: f64,
    /// -1: unlimited; 0: none.
    pub target_burst_capacity: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    /// As a ratio (2.0 for 200%).
    pub panic_threshold: f64,
    pub stable_window: Duration,
    pub panic_window: Duration,
    pub scale_down_delay: Duration,
    pub activation_scale: u32,
    pub min_scale: u32,
    /// 0: no upper bound.
    pub max_scale: u32,
    pub initial_scale: u32,
    pub enable_scale_to_zero: bool,
    pub scale_to_zero_grace_period: Duration,
    pub scale_to_zero_pod_retention_period: Duration,
    /// How long activation may take before the revision goes back to zero (Knative: the progress
    /// deadline plus a buffer).
    pub activation_timeout: Duration,
}

/// Knative's margin on top of the progress deadline before an activation counts as failed.
pub const ACTIVATION_TIMEOUT_BUFFER: Duration = Duration::from_secs(10);

impl DeciderSpec {
    /// Knative's resolution: the annotation if set, else the server's default. The concurrency target
    /// is the `target` annotation, else `containerConcurrency` if > 0, else the default, and never more
    /// than `containerConcurrency` when that is set.
    pub fn resolve(cfg: &AutoscalerConfig, a: &AutoscalingAnnotations, container_concurrency: u32) -> DeciderSpec {
        let metric = match a.metric.as_deref() {
            Some("rps") => Metric::Rps,
            _ => Metric::Concurrency,
        };
        let cc = container_concurrency as f64;
        let mut total = match metric {
            Metric::Rps => cfg.requests_per_second_target_default,
            Metric::Concurrency if cc > 0.0 => cc,
            Metric::Concurrency => cfg.container_concurrency_target_default,
        };
        if let Some(t) = a.target {
            total = t;
        }
        if metric == Metric::Concurrency && cc > 0.0 {
            total = total.min(cc);
        }
        total = total.max(TARGET_MIN);
        let utilization = a
            .target_utilization_percentage
            .unwrap_or(cfg.container_concurrency_target_percentage)
            / 100.0;
        let stable_window = a.window.unwrap_or(cfg.stable_window);
        let panic_pct = a.panic_window_percentage.unwrap_or(cfg.panic_window_percentage);
        let panic_window =
            Duration::from_secs_f64(stable_window.as_secs_f64() * panic_pct / 100.0).max(Duration::from_secs(1));
        let non_negative = |x: Option<i64>, d: u32| x.map(|v| v.clamp(0, u32::MAX as i64) as u32).unwrap_or(d);
        DeciderSpec {
            metric,
            target_value: (total * utilization).max(TARGET_MIN),
            total_value: total,
            target_burst_capacity: a.target_burst_capacity.unwrap_or(cfg.target_burst_capacity),
            max_scale_up_rate: cfg.max_scale_up_rate,
            max_scale_down_rate: cfg.max_scale_down_rate,
            panic_threshold: a.panic_threshold_percentage.unwrap_or(cfg.panic_threshold_percentage) / 100.0,
            stable_window,
            panic_window,
            scale_down_delay: a.scale_down_delay.unwrap_or(cfg.scale_down_delay),
            activation_scale: non_negative(a.activation_scale, 1).max(1),
            min_scale: non_negative(a.min_scale, cfg.min_scale),
            max_scale: non_negative(a.max_scale, cfg.max_scale),
            initial_scale: non_negative(a.initial_scale, cfg.initial_scale),
            enable_scale_to_zero: cfg.enable_scale_to_zero,
            scale_to_zero_grace_period: cfg.scale_to_zero_grace_period,
            scale_to_zero_pod_retention_period: a
                .scale_to_zero_pod_retention_period
                .unwrap_or(cfg.scale_to_zero_pod_retention_period),
            activation_timeout: a.progress_deadline.unwrap_or(Duration::from_secs(600)) + ACTIVATION_TIMEOUT_BUFFER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_key_reads_and_bad_values_name_their_key() {
        let all: Vec<(&str, &str)> = vec![
            ("container-concurrency-target-percentage", "70"),
            ("container-concurrency-target-default", "100"),
            ("requests-per-second-target-default", "200"),
            ("target-burst-capacity", "211"),
            ("stable-window", "60s"),
            ("panic-window-percentage", "10.0"),
            ("panic-threshold-percentage", "200.0"),
            ("max-scale-up-rate", "1000.0"),
            ("max-scale-down-rate", "2.0"),
            ("enable-scale-to-zero", "true"),
            ("scale-to-zero-grace-period", "30s"),
            ("scale-to-zero-pod-retention-period", "0s"),
            ("pod-autoscaler-class", "kpa.autoscaling.knative.dev"),
            ("activator-capacity", "100.0"),
            ("initial-scale", "1"),
            ("allow-zero-initial-scale", "false"),
            ("min-scale", "0"),
            ("max-scale", "0"),
            ("scale-down-delay", "0s"),
            ("max-scale-limit", "0"),
        ];
        assert_eq!(all.len(), KEYS.len());
        assert_eq!(
            AutoscalerConfig::from_map(&map(&all)).unwrap(),
            AutoscalerConfig::default()
        );
        let cases = [
            ("stable-window", "5s", "between 6s and 1h"),
            ("stable-window", "6500ms", "whole number of seconds"),
            ("scale-to-zero-grace-period", "1s", "at least 6s"),
            ("panic-threshold-percentage", "100", "[110, 1000]"),
            ("max-scale-down-rate", "1", "greater than 1"),
            ("container-concurrency-target-percentage", "0", "(0, 100]"),
            ("target-burst-capacity", "-2", "-1 (unlimited)"),
            ("enable-scale-to-zero", "yes", "not true or false"),
            ("initial-scale", "0", "allow-zero-initial-scale"),
            ("min-scale", "-1", "whole number"),
            ("tick-interval", "2s", "unknown key"),
        ];
        for (k, v, want) in cases {
            let err = AutoscalerConfig::from_map(&map(&[(k, v)])).unwrap_err();
            assert_eq!(err.0.len(), 1, "{k}={v}: {err}");
            assert_eq!(err.0[0].0, k, "{k}={v}: {err}");
            assert!(err.0[0].1.contains(want), "{k}={v}: {err}");
        }
        let err = AutoscalerConfig::from_map(&map(&[("min-scale", "3"), ("max-scale", "2")])).unwrap_err();
        assert_eq!(err.0[0].0, "min-scale");
    }

    #[test]
    fn targets_resolve_like_knative() {
        let cfg = AutoscalerConfig::default();
        let a = |target: Option<f64>, metric: Option<&str>| AutoscalingAnnotations {
            target,
            metric: metric.map(str::to_string),
            ..Default::default()
        };
        let t = |a: &AutoscalingAnnotations, cc| {
            let s = DeciderSpec::resolve(&cfg, a, cc);
            (s.total_value, (s.target_value * 1000.0).round() / 1000.0)
        };
        assert_eq!(t(&a(None, None), 0), (100.0, 70.0), "the default");
        assert_eq!(t(&a(None, None), 10), (10.0, 7.0), "containerConcurrency");
        assert_eq!(t(&a(Some(10.0), None), 0), (10.0, 7.0), "the target annotation");
        assert_eq!(
            t(&a(Some(50.0), None), 20),
            (20.0, 14.0),
            "capped by containerConcurrency"
        );
        assert_eq!(
            t(&a(None, Some("rps")), 10),
            (200.0, 140.0),
            "rps ignores containerConcurrency"
        );
        let s = DeciderSpec::resolve(
            &cfg,
            &AutoscalingAnnotations {
                window: Some(Duration::from_secs(20)),
                panic_window_percentage: Some(50.0),
                target_utilization_percentage: Some(100.0),
                target: Some(1.0),
                ..Default::default()
            },
            0,
        );
        assert_eq!(s.stable_window, Duration::from_secs(20));
        assert_eq!(s.panic_window, Duration::from_secs(10));
        assert_eq!(s.target_value, 1.0);
        assert_eq!(s.panic_threshold, 2.0);
        assert_eq!(s.initial_scale, 1);
    }
}

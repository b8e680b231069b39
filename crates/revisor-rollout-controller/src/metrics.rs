//! Rollout metrics for Prometheus: each Rollout's state read at scrape time (phase, canary weight,
//! step, each analysis metric's last value, samples and verdict), and what the controller saw end
//! (promotions and rollbacks, and how long each rollout took), counted since the server started.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `revisor_rollout_info` | gauge (1) | namespace, rollout, service, stable, canary |
//! | `revisor_rollout_phase` | gauge (1 for the current phase, 0 for the others) | namespace, rollout, phase |
//! | `revisor_rollout_canary_weight` | gauge (percent) | namespace, rollout |
//! | `revisor_rollout_step` | gauge (the current step, from 0) | namespace, rollout |
//! | `revisor_rollout_steps` | gauge (steps in the spec) | namespace, rollout |
//! | `revisor_rollout_analysis_value` | gauge (the last measurement of the canary) | namespace, rollout, metric |
//! | `revisor_rollout_analysis_samples` | gauge (requests it was measured on) | namespace, rollout, metric |
//! | `revisor_rollout_analysis_verdict` | gauge (1 for the last verdict, 0 for the others) | namespace, rollout, metric, verdict |
//! | `revisor_rollout_promotions_total` | counter | namespace, rollout |
//! | `revisor_rollout_rollbacks_total` | counter | namespace, rollout |
//! | `revisor_rollout_duration_seconds` | histogram (from the canary's creation to its end) | namespace, rollout, outcome |

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use revisor_api::rollout::{Judgement, Phase};
use revisor_api::Rollout;

type Labels = Vec<(&'static str, String)>;

/// Rollouts that ended, counted by the controller (`RolloutController::outcomes`).
pub struct Outcomes {
    promotions: Family<Labels, Counter>,
    rollbacks: Family<Labels, Counter>,
    duration: Family<Labels, Histogram>,
}

impl Default for Outcomes {
    fn default() -> Self {
        Outcomes {
            promotions: Family::default(),
            rollbacks: Family::default(),
            // 10 s to about 11 h: a rollout is minutes to hours.
            duration: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    10.0, 2.0, 12,
                ))
            }),
        }
    }
}

impl Outcomes {
    /// A rollout of `r` ended in `phase` after `seconds` (when its start is known).
    pub fn ended(&self, r: &Rollout, phase: Phase, seconds: Option<f64>) {
        let key = rollout_labels(r);
        let (counter, outcome) = match phase {
            Phase::Succeeded => (&self.promotions, "promoted"),
            Phase::RolledBack | Phase::Failed => (&self.rollbacks, "rolledBack"),
            _ => return,
        };
        counter.get_or_create(&key).inc();
        if let Some(s) = seconds.filter(|s| s.is_finite() && *s >= 0.0) {
            let mut labels = key;
            labels.push(("outcome", outcome.into()));
            self.duration.get_or_create(&labels).observe(s);
        }
    }

    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register(
            "revisor_rollout_promotions",
            "Rollouts that promoted their canary, since the server started",
            self.promotions.clone(),
        );
        registry.register(
            "revisor_rollout_rollbacks",
            "Rollouts that rolled their canary back (or failed), since the server started",
            self.rollbacks.clone(),
        );
        registry.register(
            "revisor_rollout_duration_seconds",
            "How long rollouts took, from the canary revision's creation to promotion or rollback",
            self.duration.clone(),
        );
    }
}

fn rollout_labels(r: &Rollout) -> Labels {
    vec![
        ("namespace", r.metadata.namespace.clone()),
        ("rollout", r.metadata.name.clone()),
    ]
}

const PHASES: [Phase; 8] = [
    Phase::New,
    Phase::Initialized,
    Phase::Progressing,
    Phase::Paused,
    Phase::Promoting,
    Phase::Succeeded,
    Phase::Failed,
    Phase::RolledBack,
];

const VERDICTS: [(Judgement, &str); 3] = [
    (Judgement::Successful, "Successful"),
    (Judgement::Failed, "Failed"),
    (Judgement::Inconclusive, "Inconclusive"),
];

/// One gauge family: its name, help, and (labels, value) per series.
pub type GaugeFamily = (&'static str, &'static str, Vec<(Labels, f64)>);

/// Every Rollout's state as gauges.
pub fn gauges(rollouts: &[Rollout]) -> Vec<GaugeFamily> {
    let mut info = Vec::new();
    let mut phases = Vec::new();
    let mut weight = Vec::new();
    let mut step = Vec::new();
    let mut steps = Vec::new();
    let mut values = Vec::new();
    let mut samples = Vec::new();
    let mut verdicts = Vec::new();
    for r in rollouts {
        let st = r.status();
        let base = rollout_labels(r);
        let with = |more: &[(&'static str, String)]| {
            let mut l = base.clone();
            l.extend(more.iter().cloned());
            l
        };
        info.push((
            with(&[
                ("service", r.spec.service_ref.name.clone()),
                ("stable", st.stable_revision.clone().unwrap_or_default()),
                ("canary", st.canary_revision.clone().unwrap_or_default()),
            ]),
            1.0,
        ));
        for p in PHASES {
            let name = if p == Phase::New { "New" } else { p.as_str() };
            phases.push((with(&[("phase", name.into())]), f64::from(u8::from(p == st.phase))));
        }
        weight.push((base.clone(), f64::from(st.canary_weight)));
        step.push((base.clone(), f64::from(st.current_step)));
        steps.push((base.clone(), r.spec.run_steps().len() as f64));
        // The canary's latest measurement of each metric (measurements are kept oldest first).
        let canary = st.canary_revision.as_deref();
        let mut seen = std::collections::BTreeSet::new();
        for m in st
            .measurements
            .iter()
            .rev()
            .filter(|m| Some(m.revision.as_str()) == canary)
        {
            if !seen.insert(m.metric.clone()) {
                continue;
            }
            let labels = with(&[("metric", m.metric.clone())]);
            if let Some(v) = m.value {
                values.push((labels.clone(), v));
            }
            samples.push((labels.clone(), m.samples as f64));
            for (j, name) in VERDICTS {
                let mut l = labels.clone();
                l.push(("verdict", name.into()));
                verdicts.push((l, f64::from(u8::from(m.verdict == j))));
            }
        }
    }
    vec![
        (
            "revisor_rollout_info",
            "A Rollout: its service, stable and canary revisions",
            info,
        ),
        (
            "revisor_rollout_phase",
            "The Rollout's phase: 1 for the current one",
            phases,
        ),
        (
            "revisor_rollout_canary_weight",
            "The canary's share of requests, in percent",
            weight,
        ),
        (
            "revisor_rollout_step",
            "The current step of the Rollout's steps, from 0",
            step,
        ),
        ("revisor_rollout_steps", "How many steps the Rollout's spec has", steps),
        (
            "revisor_rollout_analysis_value",
            "The canary's last measurement of an analysis metric",
            values,
        ),
        (
            "revisor_rollout_analysis_samples",
            "The requests the last measurement was taken on",
            samples,
        ),
        (
            "revisor_rollout_analysis_verdict",
            "The last verdict on an analysis metric: 1 for the current one",
            verdicts,
        ),
    ]
}

/// Encodes [`gauges`] of the Rollouts `rollouts` reads at each scrape.
pub struct RolloutCollector<F> {
    rollouts: F,
}

impl<F> RolloutCollector<F> {
    pub fn new(rollouts: F) -> Self {
        RolloutCollector { rollouts }
    }
}

impl<F: Fn() -> Vec<Rollout> + Send + Sync + 'static> std::fmt::Debug for RolloutCollector<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RolloutCollector")
    }
}

impl<F: Fn() -> Vec<Rollout> + Send + Sync + 'static> Collector for RolloutCollector<F> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, series) in gauges(&(self.rollouts)()) {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, value) in series {
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

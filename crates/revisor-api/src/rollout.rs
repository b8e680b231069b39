//! The `Rollout` resource (revisor.dev/v1alpha1): how a Service's new revisions reach its traffic, step
//! by step, judged by analysis, with automatic rollback. Its shapes follow Argo Rollouts (canary
//! `steps`) and Flagger (`interval`, `stepWeight(s)`, `maxWeight`, `threshold`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::field::{FieldErrors, Path};
use crate::meta::{Condition, ObjectMeta};
use crate::units::parse_go_duration;

pub const ROLLOUT_API_VERSION: &str = "revisor.dev/v1alpha1";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RolloutSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RolloutStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// The Service whose `spec.traffic` this Rollout owns.
    #[serde(default)]
    pub service_ref: ServiceRef,
    #[serde(default)]
    pub strategy: Strategy,
    /// Checks run every `interval` while a canary takes traffic (Flagger's analysis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
    /// The longest a rollout waits for a canary to become ready or for enough data (Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<String>,
    /// After promotion, the previous stable revision stays warm this long, so `undo` is instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_window: Option<String>,
    /// A paused rollout holds its step (`revisor rollout pause|resume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// Blue-green (Argo Rollouts' shape): the new revision waits beside the old one with no traffic
    /// (reachable by the `preview` tag), then takes all traffic at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreen>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    /// Argo Rollouts' shape: the steps in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Step>>,
    /// Flagger's shape: every `interval`, move `stepWeight` (or to the next of `stepWeights`) up to
    /// `maxWeight`, then promote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weights: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
    /// A blocking analysis: the step ends after `count` successful analysis runs in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<StepAnalysis>,
    /// Requests whose headers match go to the canary, whatever the weights (A/B). Stays until the
    /// rollout ends; an empty `match` list removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_header_route: Option<HeaderRoute>,
    /// A share of the stable revision's requests is copied to the canary; the copy's answer is only
    /// measured (and, for model predictions, compared with stable's). `percentage: 0` stops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_mirror_route: Option<MirrorRoute>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreen {
    /// Successful runs of `spec.analysis` on the preview (its requests through the `preview` tag)
    /// before promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<StepAnalysis>,
    /// Promote this long after the preview is ready (and its pre-promotion analysis passed); without
    /// it, wait for `revisor rollout promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion_seconds: Option<u64>,
    /// Successful runs of `spec.analysis` after the switch; a failure switches back at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<StepAnalysis>,
    /// The old revision stays tagged `previous` (and warm) this long after promotion (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay_seconds: Option<u64>,
}

/// Argo Rollouts' `setHeaderRoute`: every match must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    pub header_name: String,
    pub header_value: StringMatch,
}

/// Exactly one of exact, prefix, regex.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirrorRoute {
    /// Share of the stable revision's requests copied to the canary, 0-100.
    #[serde(default)]
    pub percentage: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pause {
    /// Without a duration the rollout waits for `revisor rollout promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepAnalysis {
    /// Successful analysis runs in a row that end the step (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// Time between analysis runs, and the window each run looks at (default 30s; Flagger's interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Failed runs before the rollout rolls back (Flagger's threshold; default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    /// Argo Rollouts' name for `threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<u32>,
    /// Requests a window needs before a check says anything (default 20); fewer is inconclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
    #[serde(default)]
    pub metrics: Vec<MetricCheck>,
    /// Synthetic requests to the canary while it is analysed (Flagger's load tester, built in), so
    /// that a canary with little real traffic still gets a verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_test: Option<LoadTest>,
    /// Flagger's webhooks, called over HTTP POST with `{name, namespace, phase, metadata}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
    /// How `success-rate` and `latency` are judged: `sequential` (the default: evidence from the
    /// canary's start, anytime-valid tests at every look, worse / not worse / not yet known) or
    /// `interval` (Flagger's shape: each interval's window against the thresholds, `threshold`
    /// failed runs roll back). Other metrics are judged per interval either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// With `sequential`: the chance, in percent, that a canary as good as its tolerances is rolled
    /// back by the analysis over the whole rollout, however long it runs (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_false_rollback: Option<f64>,
    /// With `sequential`: what a step does when its evidence is still not conclusive after
    /// `inconclusiveAfter`: `hold` (the default: stay, with a Warning event and condition), `rollback`
    /// or `promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_inconclusive: Option<String>,
    /// Go duration (default 30m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconclusive_after: Option<String>,
}

/// The built-in load generator's requests: sent to the canary's own URL (the `canary` or `preview`
/// tag) through the gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadTest {
    /// Requests per second (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rps: Option<u32>,
    /// `GET` (default) or `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// The kinds of webhook, as Flagger names them.
pub const WEBHOOK_TYPES: [&str; 6] = [
    WebhookKind::ConfirmRollout.as_str(),
    WebhookKind::PreRollout.as_str(),
    WebhookKind::Rollout.as_str(),
    WebhookKind::ConfirmPromotion.as_str(),
    WebhookKind::PostRollout.as_str(),
    WebhookKind::Rollback.as_str(),
];

/// A webhook's kind (`spec.analysis.webhooks[].type`), as Flagger names them. The manifest keeps the
/// string, so that an unknown kind is refused by validation with the list of known ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookKind {
    /// A new canary waits until it answers 2xx.
    ConfirmRollout,
    /// Before the canary gets traffic; a failure counts as a failed check.
    PreRollout,
    /// With every analysis run; a failure counts as a failed check.
    Rollout,
    /// Promotion waits until it answers 2xx.
    ConfirmPromotion,
    /// Told after a promotion or rollback.
    PostRollout,
    /// 2xx rolls the canary back.
    Rollback,
}

impl WebhookKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            WebhookKind::ConfirmRollout => "confirm-rollout",
            WebhookKind::PreRollout => "pre-rollout",
            WebhookKind::Rollout => "rollout",
            WebhookKind::ConfirmPromotion => "confirm-promotion",
            WebhookKind::PostRollout => "post-rollout",
            WebhookKind::Rollback => "rollback",
        }
    }

    pub fn parse(s: &str) -> Option<WebhookKind> {
        [
            WebhookKind::ConfirmRollout,
            WebhookKind::PreRollout,
            WebhookKind::Rollout,
            WebhookKind::ConfirmPromotion,
            WebhookKind::PostRollout,
            WebhookKind::Rollback,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for WebhookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub name: String,
    /// `confirm-rollout` (a new canary waits until it answers 2xx), `pre-rollout` (before the canary
    /// gets traffic; a failure counts as a failed check), `rollout` (with every analysis run; a
    /// failure counts as a failed check), `confirm-promotion` (promotion waits until 2xx),
    /// `post-rollout` (told after a promotion or rollback), `rollback` (2xx rolls the canary back).
    #[serde(rename = "type")]
    pub type_: String,
    pub url: String,
    /// Go duration (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl Webhook {
    /// The webhook's kind; `None` for a kind validation refuses.
    pub fn kind(&self) -> Option<WebhookKind> {
        WebhookKind::parse(&self.type_)
    }

    /// Its timeout (`timeout`, a Go duration; 10 s when absent or unreadable, which validation refuses).
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
            .as_deref()
            .and_then(|t| crate::units::parse_go_duration(t).ok())
            .unwrap_or(std::time::Duration::from_secs(10))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricCheck {
    /// `success-rate` (non-5xx share, percent), `latency` (ms at `percentile`), `error-count` (5xx),
    /// `request-rate` (requests per second), or `prediction-agreement` (percent of mirrored Open
    /// Inference Protocol requests where the canary's outputs agree with stable's).
    #[serde(default)]
    pub name: String,
    /// For `latency`: the percentile, 0 < p < 100 (default 99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    /// Absolute bounds on the canary's value (optional when `relativeTo` judges it).
    #[serde(default)]
    pub threshold_range: ThresholdRange,
    /// `stable`: judge the canary against the stable revision over the same window, so a slow or
    /// noisy baseline does not fail a good canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_to: Option<String>,
    /// With `relativeTo` (latency, request-rate): the canary's value may be at most this many times
    /// the stable one's (e.g. 1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ratio: Option<f64>,
    /// With `relativeTo` (success-rate, error-count): fail only if the canary's error rate is higher
    /// than the stable one's by a one-sided two-proportion z-test at this confidence (e.g. 0.95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// For `prediction-agreement`: a mirrored request agrees when every output's argmax (per row) is
    /// the same (`argmax`, the default), or when no output element differs by more than
    /// `tolerance` (`tolerance`; compared at a power of ten, rounded down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    /// Where the value comes from instead of the gateway's counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<MetricProvider>,
    /// For a check relative to stable, with sequential analysis: differences below this never fail
    /// a canary. For `latency` a Go duration (default 5ms), so sub-millisecond noise is no
    /// regression; for `success-rate` percentage points (default "0.25%"), so a few 5xx where stable
    /// had none are not either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_difference: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricProvider {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusQuery>,
}

/// A PromQL query whose result (a scalar, or the first sample of a vector) is judged by the
/// metric's `thresholdRange`. `{{revision}}` (the canary), `{{stable}}`, `{{namespace}}`,
/// `{{service}}` and `{{interval}}` (e.g. `30s`) are replaced before it is sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusQuery {
    /// The server, e.g. `http://127.0.0.1:9090`.
    pub address: String,
    pub query: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

// No doc comments on the variants: with them the CRD's schema would be a `oneOf`, which a structural
// schema cannot be.
/// A Rollout's phase, as Flagger names them; `""` before the controller first stepped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Phase {
    #[default]
    #[serde(rename = "")]
    New,
    Initialized,
    Progressing,
    Paused,
    Promoting,
    Succeeded,
    Failed,
    RolledBack,
}

impl Phase {
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::New => "",
            Phase::Initialized => "Initialized",
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::Promoting => "Promoting",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::RolledBack => "RolledBack",
        }
    }

    /// Before the controller first stepped the Rollout.
    pub fn is_new(self) -> bool {
        self == Phase::New
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flagger's phases, by name.
pub mod phase {
    use super::Phase;
    pub const INITIALIZED: Phase = Phase::Initialized;
    pub const PROGRESSING: Phase = Phase::Progressing;
    pub const PAUSED: Phase = Phase::Paused;
    pub const PROMOTING: Phase = Phase::Promoting;
    pub const SUCCEEDED: Phase = Phase::Succeeded;
    pub const FAILED: Phase = Phase::Failed;
    pub const ROLLED_BACK: Phase = Phase::RolledBack;
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    #[serde(default)]
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_revision: Option<String>,
    /// The stable revision before the last promotion (what `undo` goes back to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_stable_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<DateTime<Utc>>,
    /// A canary that was rolled back; it is not tried again unless `retry` asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_revision: Option<String>,
    #[serde(default)]
    pub canary_weight: u32,
    #[serde(default)]
    pub current_step: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis_at: Option<DateTime<Utc>>,
    /// Failed analysis runs of the current canary.
    #[serde(default)]
    pub failed_checks: u32,
    /// Successful analysis runs in a row (for blocking analysis steps).
    #[serde(default)]
    pub successful_runs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Every measurement of the current and previous rollouts (the most recent ones kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<Measurement>,
    /// Requests from the CLI, taken by the controller at its next step: promote, promote-full,
    /// abort, retry, undo.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<String>,
    /// The header route in force for the canary (set by a `setHeaderRoute` step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_route: Option<HeaderRoute>,
    /// The share of stable's requests mirrored to the canary (set by a `setMirrorRoute` step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<u32>,
    /// The stable revision's ready replicas when the rollout began: it never runs fewer meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_floor: Option<u32>,
    /// For `undo --to-revision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo_to: Option<String>,
    /// Where the next analysis window starts. In the store, so a restart of the controller loses at
    /// most one look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_baseline: Option<AnalysisBaseline>,
    /// The sequential analysis' evidence: everything the canary and stable answered since the canary
    /// started. In the store, so a restart loses at most one look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The canary's (and stable's) cumulative counters when the current analysis window began.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisBaseline {
    pub at: DateTime<Utc>,
    pub canary: CounterReading,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<CounterReading>,
}

/// The sequential analysis' evidence for one canary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// When the last look was.
    pub at: DateTime<Utc>,
    /// The data plane's counters at the last look (increments are taken from them).
    pub last_canary: CounterReading,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stable: Option<CounterReading>,
    /// What the canary answered since it started (requests by class, latency buckets).
    pub canary: CounterReading,
    /// What stable answered over the same time.
    pub stable: CounterReading,
    /// Whether the inconclusive hold was announced for the current step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

/// One revision's cumulative request counters as the data plane reported them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CounterReading {
    pub revision: String,
    /// Responses by class, 1xx to 5xx.
    pub requests: Vec<u64>,
    /// Requests per latency bucket (not cumulative).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_counts: Vec<u64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compared: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub argmax_agreed: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diff_counts: Vec<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One check of one metric: its value against its threshold and the verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    pub time: DateTime<Utc>,
    pub revision: String,
    pub step: u32,
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default)]
    pub threshold: ThresholdRange,
    /// The stable revision's value over the same window, for a relative check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// How the relative check judged (`<= 1.2 × stable`, `z = 3.1 > 1.64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<String>,
    /// Requests in the window.
    pub samples: u64,
    pub verdict: Judgement,
}

// No doc comments on the variants: with them the CRD's schema would be a `oneOf`, which a structural
// schema cannot be.
/// How an analysis run judged a metric: `Successful`, `Failed`, or `Inconclusive` (too little data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Judgement {
    #[default]
    Successful,
    Failed,
    Inconclusive,
}

impl Judgement {
    pub const fn as_str(self) -> &'static str {
        match self {
            Judgement::Successful => "Successful",
            Judgement::Failed => "Failed",
            Judgement::Inconclusive => "Inconclusive",
        }
    }
}

impl std::fmt::Display for Judgement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operator's request, taken by the controller at its next step. `status.requests` keeps them as
/// strings, so a status holding one this version does not know still reads (the controller ignores
/// it with an event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperatorRequest {
    /// Skip the current step.
    Promote,
    /// Skip every remaining step.
    PromoteFull,
    Abort,
    /// Roll out a rejected revision again.
    Retry,
    /// Make the previous stable revision (or `undoTo`) stable again.
    Undo,
}

impl OperatorRequest {
    pub const ALL: [OperatorRequest; 5] = [
        OperatorRequest::Promote,
        OperatorRequest::PromoteFull,
        OperatorRequest::Abort,
        OperatorRequest::Retry,
        OperatorRequest::Undo,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            OperatorRequest::Promote => "promote",
            OperatorRequest::PromoteFull => "promote-full",
            OperatorRequest::Abort => "abort",
            OperatorRequest::Retry => "retry",
            OperatorRequest::Undo => "undo",
        }
    }

    pub fn parse(s: &str) -> Option<OperatorRequest> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Refuses an operator's action that is neither a request (`OperatorRequest`) nor `pause`/`resume`.
pub fn check_action(action: &str) -> Result<(), crate::FieldErrors> {
    if OperatorRequest::parse(action).is_some() || action == "pause" || action == "resume" {
        return Ok(());
    }
    let mut errs = crate::FieldErrors::default();
    errs.push(
        "action",
        format!("unknown action {action:?}: promote, promote-full, abort, retry, undo, pause or resume"),
    );
    Err(errs)
}

/// What an operator's action changed in a Rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionEffect {
    /// `spec.paused` (`changed`: whether it was not already so).
    Paused { changed: bool },
    /// `status.requests` (and `status.undoTo`).
    Requested,
}

impl Rollout {
    /// Takes an operator's action, the same on every backend: `pause`/`resume` set `spec.paused`; a
    /// request (`promote`, `promote-full`, `abort`, `retry`, `undo`) is appended to `status.requests`
    /// for the controller's next step. `undo`'s target must be a revision of this Rollout's service:
    /// `owner_of(rev)` says which service a revision belongs to (`None`: no such revision).
    pub fn take_action(
        &mut self,
        action: &str,
        to_revision: Option<&str>,
        owner_of: impl Fn(&str) -> Option<Option<String>>,
    ) -> Result<ActionEffect, crate::FieldErrors> {
        check_action(action)?;
        if action == "pause" || action == "resume" {
            let paused = action == "pause";
            let changed = self.spec.paused.unwrap_or(false) != paused;
            self.spec.paused = paused.then_some(true);
            return Ok(ActionEffect::Paused { changed });
        }
        let mut st = self.status();
        st.requests.push(action.to_string());
        if let (Some(OperatorRequest::Undo), Some(rev)) = (OperatorRequest::parse(action), to_revision) {
            let service = &self.spec.service_ref.name;
            let problem = match owner_of(rev) {
                None => Some(format!(
                    "revision {rev:?} does not exist (deleted?); `revisor get revisions` lists service {service:?}'s"
                )),
                Some(owner) if owner.as_deref() != Some(service.as_str()) => Some(format!(
                    "revision {rev:?} belongs to service {:?}, not to {service:?}",
                    owner.as_deref().unwrap_or("?")
                )),
                Some(_) => None,
            };
            if let Some(problem) = problem {
                let mut errs = crate::FieldErrors::default();
                errs.push("toRevision", problem);
                return Err(errs);
            }
            st.undo_to = Some(rev.to_string());
        }
        self.status = Some(st);
        Ok(ActionEffect::Requested)
    }

    pub fn status(&self) -> RolloutStatus {
        self.status.clone().unwrap_or_default()
    }

    /// The status while its service does not exist. What the status said of revisions belonged to
    /// the service that was deleted: one applied again under the name starts the Rollout afresh (its
    /// first revision becomes stable).
    pub fn status_without_service(&self) -> RolloutStatus {
        RolloutStatus {
            observed_generation: self.status().observed_generation,
            message: Some(format!("service {:?} not found", self.spec.service_ref.name)),
            ..Default::default()
        }
    }
}

impl Analysis {
    pub fn interval(&self) -> Duration {
        self.interval
            .as_deref()
            .and_then(|s| parse_go_duration(s).ok())
            .unwrap_or(Duration::from_secs(30))
    }

    pub fn failure_limit(&self) -> u32 {
        self.threshold.or(self.failure_limit).unwrap_or(2).max(1)
    }

    pub fn min_samples(&self) -> u64 {
        self.min_samples.unwrap_or(20)
    }

    /// Whether success rate and latency are judged sequentially (the default).
    pub fn sequential(&self) -> bool {
        self.method.as_deref() != Some(METHOD_INTERVAL)
    }

    /// The false-rollback budget of the whole rollout, as a probability.
    pub fn false_rollback_budget(&self) -> f64 {
        self.max_false_rollback.unwrap_or(1.0) / 100.0
    }

    pub fn inconclusive_after(&self) -> Duration {
        self.inconclusive_after
            .as_deref()
            .and_then(|s| parse_go_duration(s).ok())
            .unwrap_or(Duration::from_secs(1800))
    }
}

/// `analysis.method`: judged sequentially (default) or per interval.
pub const METHOD_SEQUENTIAL: &str = "sequential";
pub const METHOD_INTERVAL: &str = "interval";
/// `analysis.onInconclusive`.
pub const ON_INCONCLUSIVE: [&str; 3] = ["hold", "rollback", "promote"];

impl MetricCheck {
    /// For relative latency: the smallest difference that counts, in ms.
    pub fn min_difference_ms(&self) -> f64 {
        self.min_difference
            .as_deref()
            .and_then(|s| parse_go_duration(s).ok())
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(5.0)
    }

    /// For relative success rate: the smallest difference that counts, in percentage points.
    pub fn min_difference_percent(&self) -> Option<f64> {
        parse_percent(self.min_difference.as_deref()?).ok()
    }
}

/// `"0.5%"` (or `"0.5"`) as 0.5; a percentage in [0, 100].
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage (like \"0.5%\")"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s:?} is not in [0%, 100%]"))
    }
}

/// One step of the canary as the controller runs it (Flagger's shape expanded into steps).
#[derive(Debug, Clone, PartialEq)]
pub enum RunStep {
    SetWeight(u32),
    /// `None`: until promoted.
    Pause(Option<Duration>),
    /// Successful analysis runs in a row needed.
    Analysis(u32),
    HeaderRoute(HeaderRoute),
    Mirror(u32),
}

impl RolloutSpec {
    /// The canary's steps. Flagger's shape becomes, for each weight, set it and run one analysis.
    pub fn run_steps(&self) -> Vec<RunStep> {
        if let Some(bg) = &self.strategy.blue_green {
            let mut steps = Vec::new();
            if let Some(a) = &bg.pre_promotion_analysis {
                steps.push(RunStep::Analysis(a.count.unwrap_or(1).max(1)));
            }
            steps.push(RunStep::Pause(bg.auto_promotion_seconds.map(Duration::from_secs)));
            steps.push(RunStep::SetWeight(100));
            if let Some(a) = &bg.post_promotion_analysis {
                steps.push(RunStep::Analysis(a.count.unwrap_or(1).max(1)));
            }
            return steps;
        }
        let Some(c) = &self.strategy.canary else {
            return Vec::new();
        };
        if let Some(steps) = &c.steps {
            return steps
                .iter()
                .filter_map(|s| {
                    if let Some(w) = s.set_weight {
                        Some(RunStep::SetWeight(w))
                    } else if let Some(h) = &s.set_header_route {
                        Some(RunStep::HeaderRoute(h.clone()))
                    } else if let Some(m) = &s.set_mirror_route {
                        Some(RunStep::Mirror(m.percentage))
                    } else if let Some(p) = &s.pause {
                        Some(RunStep::Pause(
                            p.duration.as_deref().and_then(|d| parse_go_duration(d).ok()),
                        ))
                    } else {
                        s.analysis
                            .as_ref()
                            .map(|a| RunStep::Analysis(a.count.unwrap_or(1).max(1)))
                    }
                })
                .collect();
        }
        let max = c.max_weight.unwrap_or(100).min(100);
        let weights: Vec<u32> = match (&c.step_weights, c.step_weight) {
            (Some(ws), _) => ws.iter().copied().filter(|w| *w <= max).collect(),
            (None, Some(step)) if step > 0 => (1..).map(|i| i * step).take_while(|w| *w <= max).collect(),
            _ => Vec::new(),
        };
        weights
            .into_iter()
            .flat_map(|w| [RunStep::SetWeight(w), RunStep::Analysis(1)])
            .collect()
    }

    pub fn progress_deadline(&self) -> Duration {
        self.progress_deadline
            .as_deref()
            .and_then(|s| parse_go_duration(s).ok())
            .unwrap_or(Duration::from_secs(600))
    }

    /// How long the previous stable revision stays tagged `previous` and warm after a promotion:
    /// blue-green's `scaleDownDelaySeconds` (default 30 s), else `rollbackWindow` (default 10 min).
    pub fn rollback_window(&self) -> Duration {
        if let Some(bg) = &self.strategy.blue_green {
            return Duration::from_secs(bg.scale_down_delay_seconds.unwrap_or(30));
        }
        self.rollback_window
            .as_deref()
            .and_then(|s| parse_go_duration(s).ok())
            .unwrap_or(Duration::from_secs(600))
    }

    pub fn is_blue_green(&self) -> bool {
        self.strategy.blue_green.is_some()
    }
}

/// Whether a header name is not a valid HTTP token.
fn hyper_header_name_error(name: &str) -> bool {
    name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks a Rollout; every error with its path.
pub fn validate_rollout(r: &Rollout) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    let spec = Path::root("spec");
    if let Some(e) = crate::names::dns1123_label_error(&r.metadata.name) {
        errs.push(Path::root("metadata.name"), e);
    }
    if r.spec.service_ref.name.is_empty() {
        errs.push(spec.field("serviceRef").field("name"), "missing field(s)");
    }
    check_duration(&mut errs, spec.field("progressDeadline"), &r.spec.progress_deadline);
    check_duration(&mut errs, spec.field("rollbackWindow"), &r.spec.rollback_window);
    validate_strategy(r, &spec, &mut errs);
    if let Some(a) = &r.spec.analysis {
        validate_analysis(a, &spec, &mut errs);
    }
    errs.into_result()
}

/// A Go duration field, when given, must parse and be more than zero.
fn check_duration(errs: &mut FieldErrors, p: Path, v: &Option<String>) {
    if let Some(v) = v {
        match parse_go_duration(v) {
            Ok(d) if d.is_zero() => errs.push(p, "must be greater than 0"),
            Ok(_) => {}
            Err(e) => errs.push(p, e),
        }
    }
}

/// `spec.strategy`'s checks: blue-green or canary, its steps or Flagger's weights.
fn validate_strategy(r: &Rollout, spec: &Path, errs: &mut FieldErrors) {
    let strategy = spec.field("strategy");
    if let Some(bg) = &r.spec.strategy.blue_green {
        let p = strategy.field("blueGreen");
        if r.spec.strategy.canary.is_some() {
            errs.push(p.clone(), "set either canary or blueGreen, not both");
        }
        if (bg.pre_promotion_analysis.is_some() || bg.post_promotion_analysis.is_some()) && r.spec.analysis.is_none() {
            errs.push(
                spec.field("analysis"),
                "pre- and post-promotion analysis run spec.analysis: give it",
            );
        }
        for (name, a) in [
            ("prePromotionAnalysis", &bg.pre_promotion_analysis),
            ("postPromotionAnalysis", &bg.post_promotion_analysis),
        ] {
            if a.as_ref().is_some_and(|a| a.count == Some(0)) {
                errs.push(p.field(name).field("count"), "must be at least 1");
            }
        }
    }
    match &r.spec.strategy.canary {
        None if r.spec.strategy.blue_green.is_none() => errs.push(
            strategy.field("canary"),
            "missing: give strategy.canary or strategy.blueGreen",
        ),
        None => {}
        Some(c) => {
            let canary = strategy.field("canary");
            let flagger = c.step_weight.is_some() || c.step_weights.is_some() || c.max_weight.is_some();
            match (&c.steps, flagger) {
                (Some(_), true) => errs.push(
                    canary.field("steps"),
                    "set either steps (Argo Rollouts' shape) or stepWeight/stepWeights/maxWeight (Flagger's), not both",
                ),
                (None, false) => errs.push(
                    canary.field("steps"),
                    "missing: give steps, or stepWeight or stepWeights (with maxWeight)",
                ),
                _ => {}
            }
            if c.step_weight.is_some() && c.step_weights.is_some() {
                errs.push(canary.field("stepWeights"), "set stepWeight or stepWeights, not both");
            }
            if c.step_weight == Some(0) {
                errs.push(canary.field("stepWeight"), "must be greater than 0");
            }
            if let Some(m) = c.max_weight {
                if m == 0 || m > 100 {
                    errs.push(canary.field("maxWeight"), format!("must be in [1, 100], got {m}"));
                }
            }
            if let Some(ws) = &c.step_weights {
                let mut prev = 0;
                for (i, w) in ws.iter().enumerate() {
                    if *w == 0 || *w > 100 || *w <= prev {
                        errs.push(
                            canary.field("stepWeights").index(i),
                            format!("weights must rise within [1, 100], got {w}"),
                        );
                    }
                    prev = *w;
                }
            }
            if flagger && r.spec.analysis.is_none() {
                errs.push(
                    spec.field("analysis"),
                    "Flagger's shape (stepWeight) advances on analysis runs: give spec.analysis",
                );
            }
            for (i, s) in c.steps.iter().flatten().enumerate() {
                let p = canary.field("steps").index(i);
                let set = [
                    s.set_weight.is_some(),
                    s.pause.is_some(),
                    s.analysis.is_some(),
                    s.set_header_route.is_some(),
                    s.set_mirror_route.is_some(),
                ]
                .iter()
                .filter(|x| **x)
                .count();
                if set != 1 {
                    errs.push(
                        p.clone(),
                        "each step is exactly one of setWeight, pause, analysis, setHeaderRoute, setMirrorRoute",
                    );
                }
                if let Some(w) = s.set_weight {
                    if w > 100 {
                        errs.push(p.field("setWeight"), format!("must be in [0, 100], got {w}"));
                    }
                }
                if let Some(pause) = &s.pause {
                    check_duration(errs, p.field("pause").field("duration"), &pause.duration);
                }
                if s.analysis.is_some() && r.spec.analysis.is_none() {
                    errs.push(
                        p.field("analysis"),
                        "an analysis step needs spec.analysis (its metrics)",
                    );
                }
                if let Some(h) = &s.set_header_route {
                    for (j, m) in h.matches.iter().enumerate() {
                        let mp = p.field("setHeaderRoute").field("match").index(j);
                        if hyper_header_name_error(&m.header_name) {
                            errs.push(
                                mp.field("headerName"),
                                format!("{:?} is not a valid HTTP header name", m.header_name),
                            );
                        }
                        let v = &m.header_value;
                        let set = [v.exact.is_some(), v.prefix.is_some(), v.regex.is_some()]
                            .iter()
                            .filter(|x| **x)
                            .count();
                        if set != 1 {
                            errs.push(mp.field("headerValue"), "give exactly one of exact, prefix, regex");
                        }
                        if let Some(re) = &v.regex {
                            if let Err(e) = regex_lite::Regex::new(re) {
                                errs.push(
                                    mp.field("headerValue").field("regex"),
                                    format!("not a regular expression: {e}"),
                                );
                            }
                        }
                    }
                }
                if let Some(m) = &s.set_mirror_route {
                    if m.percentage > 100 {
                        errs.push(
                            p.field("setMirrorRoute").field("percentage"),
                            format!("must be in [0, 100], got {}", m.percentage),
                        );
                    }
                }
            }
        }
    }
}

/// `spec.analysis`'s checks: interval, methods, metrics, webhooks and the load test.
fn validate_analysis(a: &Analysis, spec: &Path, errs: &mut FieldErrors) {
    let p = spec.field("analysis");
    check_duration(errs, p.field("interval"), &a.interval);
    check_duration(errs, p.field("inconclusiveAfter"), &a.inconclusive_after);
    if let Some(m) = a
        .method
        .as_deref()
        .filter(|m| ![METHOD_SEQUENTIAL, METHOD_INTERVAL].contains(m))
    {
        errs.push(p.field("method"), format!("must be sequential or interval, got {m:?}"));
    }
    if let Some(b) = a.max_false_rollback.filter(|b| !(*b > 0.0 && *b <= 50.0)) {
        errs.push(
            p.field("maxFalseRollback"),
            format!("must be a percentage in (0, 50], got {b}"),
        );
    }
    if let Some(o) = a.on_inconclusive.as_deref().filter(|o| !ON_INCONCLUSIVE.contains(o)) {
        errs.push(
            p.field("onInconclusive"),
            format!("must be hold, rollback or promote, got {o:?}"),
        );
    }
    if a.threshold.is_some() && a.failure_limit.is_some() {
        errs.push(p.field("failureLimit"), "set threshold or failureLimit, not both");
    }
    if a.threshold == Some(0) || a.failure_limit == Some(0) {
        errs.push(p.field("threshold"), "must be at least 1");
    }
    if a.metrics.is_empty() && !a.webhooks.iter().any(|w| w.kind() == Some(WebhookKind::Rollout)) {
        errs.push(p.field("metrics"), "give at least one metric (or a rollout webhook)");
    }
    if let Some(l) = &a.load_test {
        let lp = p.field("loadTest");
        if l.rps.is_some_and(|r| r == 0 || r > 10_000) {
            errs.push(lp.field("rps"), "must be in [1, 10000]");
        }
        if let Some(m) = &l.method {
            if m != "GET" && m != "POST" {
                errs.push(lp.field("method"), format!("must be GET or POST, got {m:?}"));
            }
        }
        if l.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
            errs.push(lp.field("path"), "must start with /");
        }
    }
    for (i, w) in a.webhooks.iter().enumerate() {
        let wp = p.field("webhooks").index(i);
        if w.name.is_empty() {
            errs.push(wp.field("name"), "missing field(s)");
        }
        if w.kind().is_none() {
            errs.push(
                wp.field("type"),
                format!("must be one of {}, got {:?}", WEBHOOK_TYPES.join(", "), w.type_),
            );
        }
        if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
            errs.push(
                wp.field("url"),
                format!("must be an http:// or https:// URL, got {:?}", w.url),
            );
        }
        check_duration(errs, wp.field("timeout"), &w.timeout);
    }
    for (i, m) in a.metrics.iter().enumerate() {
        validate_metric(m, &p.field("metrics").index(i), errs);
    }
}

/// One metric's checks (`spec.analysis.metrics[i]`, at `mp`).
fn validate_metric(m: &MetricCheck, mp: &Path, errs: &mut FieldErrors) {
    if let Some(d) = &m.min_difference {
        match (m.name.as_str(), m.relative_to.is_some()) {
            ("latency", true) => check_duration(errs, mp.field("minDifference"), &m.min_difference),
            ("success-rate", true) => {
                if let Err(e) = parse_percent(d) {
                    errs.push(mp.field("minDifference"), e);
                }
            }
            _ => errs.push(
                mp.field("minDifference"),
                "only latency and success-rate relative to stable take minDifference",
            ),
        }
    }
    if let Some(prov) = &m.provider {
        match &prov.prometheus {
            None => errs.push(mp.field("provider"), "give provider.prometheus"),
            Some(q) => {
                if !(q.address.starts_with("http://") || q.address.starts_with("https://")) {
                    errs.push(
                        mp.field("provider").field("prometheus").field("address"),
                        format!("must be an http:// or https:// URL, got {:?}", q.address),
                    );
                }
                if q.query.trim().is_empty() {
                    errs.push(
                        mp.field("provider").field("prometheus").field("query"),
                        "missing field(s)",
                    );
                }
            }
        }
        if m.relative_to.is_some() || m.agreement.is_some() {
            errs.push(
                mp.field("provider"),
                "a provider's value is judged by thresholdRange only",
            );
        }
        if m.threshold_range.min.is_none() && m.threshold_range.max.is_none() {
            errs.push(mp.field("thresholdRange"), "give min, max or both");
        }
        return;
    }
    if ![
        "success-rate",
        "latency",
        "error-count",
        "request-rate",
        "prediction-agreement",
    ]
    .contains(&m.name.as_str())
    {
        errs.push(
            mp.field("name"),
            format!(
                "unknown metric {:?}: the built-in ones are success-rate, latency, error-count, request-rate, prediction-agreement",
                m.name
            ),
        );
    }
    if m.name == "prediction-agreement" {
        match (m.agreement.as_deref(), m.tolerance) {
            (None | Some("argmax"), None) => {}
            (Some("tolerance"), Some(t)) if t > 0.0 => {}
            (Some("tolerance"), _) => errs.push(mp.field("tolerance"), "agreement: tolerance needs a tolerance > 0"),
            (None | Some("argmax"), Some(_)) => {
                errs.push(mp.field("tolerance"), "a tolerance needs agreement: tolerance")
            }
            (Some(other), _) => errs.push(
                mp.field("agreement"),
                format!("must be argmax or tolerance, got {other:?}"),
            ),
        }
        if m.relative_to.is_some() {
            errs.push(
                mp.field("relativeTo"),
                "prediction agreement already compares with stable",
            );
        }
    } else if m.agreement.is_some() || m.tolerance.is_some() {
        errs.push(
            mp.field("agreement"),
            "only prediction-agreement takes agreement and tolerance",
        );
    }
    if let Some(pc) = m.percentile {
        if m.name != "latency" {
            errs.push(mp.field("percentile"), "only the latency metric has a percentile");
        } else if !(pc > 0.0 && pc < 100.0) {
            errs.push(mp.field("percentile"), format!("must be in (0, 100), got {pc}"));
        }
    }
    let t = m.threshold_range;
    match m.relative_to.as_deref() {
        None => {
            if t.min.is_none() && t.max.is_none() {
                errs.push(mp.field("thresholdRange"), "give min, max or both");
            }
            if m.max_ratio.is_some() || m.confidence.is_some() {
                errs.push(
                    mp.field("relativeTo"),
                    "maxRatio and confidence need relativeTo: stable",
                );
            }
        }
        Some("stable") => {
            let ratio_metric = matches!(m.name.as_str(), "latency" | "request-rate");
            match (ratio_metric, m.max_ratio, m.confidence) {
                (true, Some(r), None) if r > 0.0 => {}
                (true, Some(r), None) => errs.push(mp.field("maxRatio"), format!("must be greater than 0, got {r}")),
                (true, _, _) => errs.push(
                    mp.field("maxRatio"),
                    format!("{} relative to stable is judged by maxRatio (and not confidence)", m.name),
                ),
                (false, None, Some(c)) if c > 0.5 && c < 1.0 => {}
                (false, None, Some(c)) => errs.push(mp.field("confidence"), format!("must be in (0.5, 1), got {c}")),
                // Sequential analysis: the error rate may be at most maxRatio times stable's.
                (false, Some(r), None) if r >= 1.0 && m.name == "success-rate" => {}
                (false, Some(r), None) if m.name == "success-rate" => {
                    errs.push(mp.field("maxRatio"), format!("must be at least 1, got {r}"))
                }
                (false, _, _) => errs.push(
                    mp.field("confidence"),
                    if m.name == "success-rate" {
                        "success-rate relative to stable takes confidence (a two-proportion test per interval) or maxRatio (the tolerated error-rate ratio), not both".to_string()
                    } else {
                        format!(
                            "{} relative to stable is judged by a two-proportion test: give confidence (and not maxRatio)",
                            m.name
                        )
                    },
                ),
            }
        }
        Some(other) => errs.push(mp.field("relativeTo"), format!("must be \"stable\", got {other:?}")),
    }
    if let (Some(lo), Some(hi)) = (t.min, t.max) {
        if lo > hi {
            errs.push(mp.field("thresholdRange"), format!("min {lo} is above max {hi}"));
        }
    }
}

/// The `rollouts.revisor.dev` CustomResourceDefinition, its schema generated from these types
/// (`revisor crd` prints it): structural, as Kubernetes requires, with the status subresource and
/// the columns of `revisor get rollouts`.
pub fn crd() -> serde_json::Value {
    use serde_json::json;
    let column = |name: &str, path: &str| json!({ "name": name, "type": "string", "jsonPath": path });
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "rollouts.revisor.dev" },
        "spec": {
            "group": "revisor.dev",
            "scope": "Namespaced",
            "names": {
                "kind": "Rollout",
                "listKind": "RolloutList",
                "plural": "rollouts",
                "singular": "rollout",
                "shortNames": ["ro"],
            },
            "versions": [{
                "name": "v1alpha1",
                "served": true,
                "storage": true,
                "subresources": { "status": {} },
                "additionalPrinterColumns": [
                    column("Service", ".spec.serviceRef.name"),
                    column("Stable", ".status.stableRevision"),
                    column("Canary", ".status.canaryRevision"),
                    { "name": "Weight", "type": "integer", "jsonPath": ".status.canaryWeight" },
                    column("Phase", ".status.phase"),
                ],
                "schema": { "openAPIV3Schema": crate::schema::object(crate::schema::ROLLOUT, true) },
            }],
        },
    })
}

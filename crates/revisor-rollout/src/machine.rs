//! The Rollout state machine: one call per controller step, from the Rollout, its Service's latest
//! revision, the time and (when an analysis run is due) the canary's window, to the new status, the
//! Service's traffic and the events to record.

use chrono::{DateTime, Utc};
use revisor_api::rollout::{phase, Judgement, OperatorRequest, Rollout, RolloutStatus, RunStep, WebhookKind};
use revisor_api::TrafficTarget;

use crate::analysis::Window;
use crate::sequential::{self, Verdict};
use revisor_api::meta::Conditions;
use revisor_api::rollout::Analysis;
use revisor_api::ConditionStatus;

/// The tag the canary is reachable by during a rollout (`canary-<service>.<ns>.<domain>`).
pub const CANARY_TAG: &str = "canary";
/// Measurements kept in a Rollout's status (the most recent).
pub const MAX_MEASUREMENTS: usize = 200;

/// The latest revision's readiness.
#[derive(Debug, Clone, PartialEq)]
pub enum CanaryState {
    Ready,
    /// Not ready yet.
    Pending,
    /// Ready=False, with its reason and message.
    Failed(String),
}

/// What the webhooks answered this step (the controller calls them; `None`: not called).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hooks {
    pub confirm_rollout: Option<Result<(), String>>,
    pub pre_rollout: Option<Result<(), String>>,
    /// With an analysis run: each rollout hook's name and answer.
    pub rollout: Vec<(String, Result<(), String>)>,
    pub confirm_promotion: Option<Result<(), String>>,
    /// A rollback hook that answered 2xx.
    pub rollback: Option<String>,
}

fn has_hook(r: &Rollout, kind: WebhookKind) -> bool {
    r.spec
        .analysis
        .as_ref()
        .is_some_and(|a| a.webhooks.iter().any(|w| w.kind() == Some(kind)))
}

/// Which webhooks the controller should call before this step: (kind, reason to call).
pub fn hooks_due(r: &Rollout, latest: Option<&str>) -> Vec<WebhookKind> {
    let st = r.status();
    let progressing = matches!(st.phase, phase::PROGRESSING | phase::PAUSED);
    let mut out = Vec::new();
    let starting = !progressing
        && st.stable_revision.is_some()
        && latest
            .is_some_and(|l| Some(l) != st.stable_revision.as_deref() && Some(l) != st.rejected_revision.as_deref());
    if starting && has_hook(r, WebhookKind::ConfirmRollout) {
        out.push(WebhookKind::ConfirmRollout);
    }
    if progressing && st.current_step == 0 && st.canary_weight == 0 && has_hook(r, WebhookKind::PreRollout) {
        out.push(WebhookKind::PreRollout);
    }
    if progressing && st.current_step as usize >= r.spec.run_steps().len() && has_hook(r, WebhookKind::ConfirmPromotion)
    {
        out.push(WebhookKind::ConfirmPromotion);
    }
    if progressing && has_hook(r, WebhookKind::Rollback) {
        out.push(WebhookKind::Rollback);
    }
    out
}

pub struct Input<'a> {
    pub rollout: &'a Rollout,
    /// The Service's latest created revision and its readiness.
    pub latest: Option<(&'a str, CanaryState)>,
    /// Whether a revision of the Service exists (for `undo --to-revision`).
    pub exists: &'a dyn Fn(&str) -> bool,
    pub now: DateTime<Utc>,
    /// The canary's window since the last analysis run, when a run is due.
    pub window: Option<Window>,
    /// The stable revision's window over the same time (for checks relative to stable).
    pub stable_window: Option<Window>,
    /// The stable revision's ready replicas now (its floor while a rollout runs).
    pub stable_replicas: u32,
    pub hooks: Hooks,
    /// With an analysis run: what the external providers (Prometheus) answered, by metric name.
    pub provided: Vec<crate::analysis::Provided>,
    /// Where the canary's next analysis window starts ([`crate::next_window`]); kept in the status.
    pub baseline: Option<revisor_api::rollout::AnalysisBaseline>,
    /// The canary's and the stable revision's cumulative counters now, for sequential analysis; `None`
    /// where the metrics source has no counters (Prometheus), which judges per interval instead.
    pub readings: Option<(crate::analysis::Counters, Option<crate::analysis::Counters>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub status: RolloutStatus,
    /// The Service's `spec.traffic` as it should be.
    pub traffic: Vec<TrafficTarget>,
    pub events: Vec<Event>,
}

/// Whether an analysis run is due: a canary takes traffic (or an analysis step runs) and an interval
/// has passed since the last run.
pub fn analysis_due(r: &Rollout, now: DateTime<Utc>) -> bool {
    let (Some(a), st) = (&r.spec.analysis, r.status()) else {
        return false;
    };
    let active = matches!(st.phase, phase::PROGRESSING | phase::PAUSED) && st.canary_revision.is_some();
    let in_analysis_step = matches!(
        r.spec.run_steps().get(st.current_step as usize),
        Some(RunStep::Analysis(_))
    );
    let last = st.last_analysis_at.unwrap_or(now);
    active && (st.canary_weight > 0 || in_analysis_step) && (now - last).to_std().unwrap_or_default() >= a.interval()
}

fn target(revision: Option<&str>, latest: bool, percent: u32, tag: Option<&str>) -> TrafficTarget {
    TrafficTarget {
        revision_name: revision.map(str::to_string),
        latest_revision: Some(latest),
        percent: Some(percent as i64),
        tag: tag.map(str::to_string),
        ..Default::default()
    }
}

/// The Service's traffic for a status: the canary beside stable at its weight (tag `canary`), or for
/// blue-green the preview at 0% then all of it (tag `preview`, the old one tagged `previous` at 0%);
/// when idle, stable alone, plus the previous stable tagged `previous` within the rollback window.
fn traffic(r: &Rollout, st: &RolloutStatus, now: DateTime<Utc>) -> Vec<TrafficTarget> {
    let Some(stable) = st.stable_revision.as_deref() else {
        return vec![target(None, true, 100, None)];
    };
    let active =
        matches!(st.phase, phase::PROGRESSING | phase::PAUSED | phase::PROMOTING) && st.canary_revision.is_some();
    let w = st.canary_weight.min(100);
    if active && r.spec.is_blue_green() {
        let stable_target = if w >= 100 {
            target(Some(stable), false, 0, Some(PREVIOUS_TAG))
        } else {
            target(Some(stable), false, 100 - w, None)
        };
        return vec![stable_target, target(None, true, w, Some(PREVIEW_TAG))];
    }
    if active {
        return vec![
            target(Some(stable), false, 100 - w, None),
            target(None, true, w, Some(CANARY_TAG)),
        ];
    }
    let mut out = vec![target(Some(stable), false, 100, None)];
    if let (Some(prev), Some(at)) = (st.previous_stable_revision.as_deref(), st.promoted_at) {
        let within = (now - at).to_std().unwrap_or_default() < r.spec.rollback_window();
        if prev != stable && within {
            out.push(target(Some(prev), false, 0, Some(PREVIOUS_TAG)));
        }
    }
    out
}

/// The blue-green preview's tag.
pub const PREVIEW_TAG: &str = "preview";
/// The previous stable revision's tag while it is kept warm.
pub const PREVIOUS_TAG: &str = "previous";

/// The replicas a Rollout asks a revision to keep whatever the autoscaler says: the stable revision
/// keeps its replicas from the start of a rollout, and the previous stable one stays warm (one
/// replica) within the rollback window.
pub fn floors(r: &Rollout, now: DateTime<Utc>) -> Vec<(String, u32)> {
    let st = r.status();
    let mut out = Vec::new();
    let active = matches!(st.phase, phase::PROGRESSING | phase::PAUSED | phase::PROMOTING);
    if let (true, Some(stable), Some(floor)) = (active, &st.stable_revision, st.stable_floor) {
        out.push((stable.clone(), floor.max(1)));
    }
    if let (Some(prev), Some(at)) = (&st.previous_stable_revision, st.promoted_at) {
        if (now - at).to_std().unwrap_or_default() < r.spec.rollback_window()
            && Some(prev) != st.stable_revision.as_ref()
        {
            out.push((prev.clone(), 1));
        }
    }
    out
}

struct Machine<'a> {
    input: &'a Input<'a>,
    st: RolloutStatus,
    events: Vec<Event>,
}

impl Machine<'_> {
    fn event(&mut self, warning: bool, reason: &str, message: String) {
        self.st.message = Some(message.clone());
        self.events.push(Event {
            warning,
            reason: reason.into(),
            message,
        });
    }

    fn start(&mut self, canary: &str) {
        let now = self.input.now;
        self.st.evidence = None;
        self.st.phase = phase::PROGRESSING;
        self.st.canary_revision = Some(canary.into());
        self.st.canary_weight = 0;
        self.st.current_step = 0;
        self.st.step_started_at = Some(now);
        self.st.last_analysis_at = Some(now);
        self.st.failed_checks = 0;
        self.st.successful_runs = 0;
        self.st.header_route = None;
        self.st.mirror_percentage = None;
        self.st.stable_floor = Some(self.input.stable_replicas.max(1));
        let stable = self.st.stable_revision.clone().unwrap_or_default();
        self.event(
            false,
            "Progressing",
            format!("new revision {canary}: starting a canary rollout from {stable}"),
        );
    }

    fn roll_back(&mut self, failed: bool, reason: &str, why: String) {
        let canary = self.st.canary_revision.take().unwrap_or_default();
        self.st.rejected_revision = Some(canary.clone());
        self.st.canary_weight = 0;
        self.st.header_route = None;
        self.st.mirror_percentage = None;
        self.st.phase = if failed { phase::FAILED } else { phase::ROLLED_BACK };
        let stable = self.st.stable_revision.clone().unwrap_or_default();
        self.event(
            true,
            reason,
            format!("{canary} rolled back, all traffic on {stable}: {why}"),
        );
    }

    fn promote(&mut self) {
        let Some(canary) = self.st.canary_revision.take() else {
            return;
        };
        self.st.previous_stable_revision = self.st.stable_revision.replace(canary.clone());
        self.st.promoted_at = Some(self.input.now);
        self.st.canary_weight = 0;
        self.st.header_route = None;
        self.st.mirror_percentage = None;
        self.st.phase = phase::SUCCEEDED;
        let prev = self.st.previous_stable_revision.clone().unwrap_or_default();
        self.event(
            false,
            "Promoted",
            format!("{canary} promoted: all traffic on it; {prev} can be restored with `revisor rollout undo`"),
        );
    }

    /// Promotes, unless confirm-promotion webhooks have not said yes.
    fn confirmed_promote(&mut self) {
        let canary = self.st.canary_revision.clone().unwrap_or_default();
        match &self.input.hooks.confirm_promotion {
            Some(Err(e)) => {
                self.st.message = Some(format!("{canary} waits for the confirm-promotion webhook: {e}"));
            }
            None if has_hook(self.input.rollout, WebhookKind::ConfirmPromotion) => {
                self.st.message = Some(format!("{canary} waits for the confirm-promotion webhook"));
            }
            _ => self.promote(),
        }
    }

    fn next_step(&mut self) {
        self.st.current_step += 1;
        self.st.step_started_at = Some(self.input.now);
        self.st.successful_runs = 0;
        if let Some(ev) = &mut self.st.evidence {
            ev.held = false;
        }
    }

    fn since_step(&self) -> std::time::Duration {
        self.st
            .step_started_at
            .map(|t| (self.input.now - t).to_std().unwrap_or_default())
            .unwrap_or_default()
    }

    fn handle_requests(&mut self) {
        let requests = std::mem::take(&mut self.st.requests);
        let progressing = matches!(self.st.phase, phase::PROGRESSING | phase::PAUSED);
        for req in requests {
            match OperatorRequest::parse(&req) {
                Some(OperatorRequest::Abort) if progressing => {
                    self.roll_back(false, "Aborted", "aborted by `revisor rollout abort`".into())
                }
                Some(OperatorRequest::PromoteFull) if progressing => self.promote(),
                Some(OperatorRequest::Promote) if progressing => {
                    let what = match self.input.rollout.spec.run_steps().get(self.st.current_step as usize) {
                        Some(s) => format!("{s:?}"),
                        None => "the last step".into(),
                    };
                    self.next_step();
                    self.events.push(Event {
                        warning: false,
                        reason: "Promote".into(),
                        message: format!("step {what} skipped by `revisor rollout promote`"),
                    });
                }
                Some(OperatorRequest::Retry) if !progressing => {
                    if let Some(r) = self.st.rejected_revision.take() {
                        self.events.push(Event {
                            warning: false,
                            reason: "Retry".into(),
                            message: format!("{r} will be rolled out again"),
                        });
                    }
                }
                Some(OperatorRequest::Undo) if !progressing => self.undo(),
                _ => self.events.push(Event {
                    warning: true,
                    reason: "Ignored".into(),
                    message: format!("request {req:?} does not apply in phase {}", self.st.phase),
                }),
            }
        }
    }

    fn undo(&mut self) {
        let to = self
            .st
            .undo_to
            .take()
            .or_else(|| self.st.previous_stable_revision.clone());
        let Some(to) = to else {
            self.events.push(Event {
                warning: true,
                reason: "Ignored".into(),
                message: "nothing to undo: no previous stable revision".into(),
            });
            return;
        };
        if !(self.input.exists)(&to) {
            self.events.push(Event {
                warning: true,
                reason: "Ignored".into(),
                message: format!("cannot undo to {to}: no such revision"),
            });
            return;
        }
        let from = self.st.stable_revision.replace(to.clone());
        // The undone revision is not rolled out again by itself.
        self.st.rejected_revision = from.clone();
        self.st.previous_stable_revision = from.clone();
        self.st.phase = phase::SUCCEEDED;
        self.event(
            false,
            "Undone",
            format!("all traffic back on {to} (from {})", from.unwrap_or_default()),
        );
    }

    /// The analysis baseline of the canary being analysed; none otherwise (and no evidence).
    fn keep_baseline(&mut self) {
        let active = matches!(self.st.phase, phase::PROGRESSING | phase::PAUSED);
        if !active {
            self.st.evidence = None;
        }
        let canary = self.st.canary_revision.as_deref().filter(|_| active);
        let of_canary = |b: &&revisor_api::rollout::AnalysisBaseline| Some(b.canary.revision.as_str()) == canary;
        self.st.analysis_baseline = self
            .input
            .baseline
            .as_ref()
            .filter(of_canary)
            .or(self.st.analysis_baseline.as_ref().filter(of_canary))
            .cloned();
    }

    fn run(&mut self) {
        let input = self.input;
        let r = input.rollout;
        if self.st.phase.is_new() {
            self.st.phase = phase::INITIALIZED;
        }
        self.handle_requests();
        let latest = input.latest.as_ref();
        // The first ready revision simply becomes stable.
        if self.st.stable_revision.is_none() {
            match latest {
                Some((name, CanaryState::Ready)) => {
                    self.st.stable_revision = Some(name.to_string());
                    self.st.phase = phase::SUCCEEDED;
                    self.event(false, "Initialized", format!("{name} is the stable revision"));
                }
                _ => self.st.message = Some("waiting for the service's first revision to become ready".into()),
            }
            return;
        }
        let progressing = matches!(self.st.phase, phase::PROGRESSING | phase::PAUSED);
        if !progressing {
            if let Some((name, _)) = latest {
                let new = Some(*name) != self.st.stable_revision.as_deref()
                    && Some(*name) != self.st.rejected_revision.as_deref();
                if new {
                    if let Some(Err(e)) = &input.hooks.confirm_rollout {
                        self.st.message = Some(format!("{name} waits for the confirm-rollout webhook: {e}"));
                        return;
                    }
                    if has_hook(r, WebhookKind::ConfirmRollout) && input.hooks.confirm_rollout.is_none() {
                        self.st.message = Some(format!("{name} waits for the confirm-rollout webhook"));
                        return;
                    }
                    self.start(name);
                }
            }
            if !matches!(self.st.phase, phase::PROGRESSING) {
                return;
            }
        }
        // A newer revision replaces the canary: start again with it.
        if let Some((name, _)) = latest {
            if Some(*name) != self.st.canary_revision.as_deref() && Some(*name) != self.st.stable_revision.as_deref() {
                let old = self.st.canary_revision.clone().unwrap_or_default();
                self.events.push(Event {
                    warning: false,
                    reason: "Superseded".into(),
                    message: format!("{old} superseded by {name} before it finished"),
                });
                self.start(name);
            }
        }
        let canary = self.st.canary_revision.clone().unwrap_or_default();
        let deadline = r.spec.progress_deadline();
        match latest.map(|(_, s)| s) {
            Some(CanaryState::Failed(why)) => {
                let why = format!("the canary revision failed: {why}");
                return self.roll_back(true, "CanaryFailed", why);
            }
            Some(CanaryState::Pending) => {
                if self.st.canary_weight == 0 && self.since_step() >= deadline {
                    let why = format!("the canary did not become ready within {deadline:?}");
                    return self.roll_back(true, "ProgressDeadlineExceeded", why);
                }
                self.st.message = Some(format!("waiting for {canary} to become ready"));
                return;
            }
            _ => {}
        }
        if let Some(hook) = &input.hooks.rollback {
            let why = format!("the rollback webhook {hook:?} asked for it");
            return self.roll_back(false, "RollbackWebhook", why);
        }
        if self.st.current_step == 0 && self.st.canary_weight == 0 {
            match &input.hooks.pre_rollout {
                Some(Err(e)) => {
                    self.st.failed_checks += 1;
                    let limit = r.spec.analysis.as_ref().map(|a| a.failure_limit()).unwrap_or(1);
                    let why = format!("pre-rollout webhook failed ({}/{limit}): {e}", self.st.failed_checks);
                    if self.st.failed_checks >= limit {
                        return self.roll_back(false, "PreRolloutFailed", why);
                    }
                    return self.event(true, "PreRolloutFailed", why);
                }
                None if has_hook(r, WebhookKind::PreRollout) => {
                    self.st.message = Some(format!("{canary} waits for the pre-rollout webhooks"));
                    return;
                }
                _ => {}
            }
        }
        // Sequential analysis: a look at the evidence, at once when it shows the canary worse.
        let sequential = r
            .spec
            .analysis
            .as_ref()
            .filter(|a| a.sequential() && input.readings.is_some());
        if let Some(a) = sequential {
            if let Some(why) = self.sequential_look(a) {
                return self.roll_back(false, "AnalysisFailed", why);
            }
        }
        // Analysis runs, each interval.
        if let (Some(a), Some(w)) = (&r.spec.analysis, &input.window) {
            if self.analysis_run(a, w, sequential, &canary, deadline) {
                return;
            }
        }
        if r.spec.paused == Some(true) {
            self.st.phase = phase::PAUSED;
            self.st.message = Some("paused by `revisor rollout pause`".into());
            return;
        }
        self.take_step(&canary);
    }

    /// Takes the step the rollout is at: a weight, a header route, a mirror, a pause or an analysis
    /// step; past the last one, promotion.
    fn take_step(&mut self, canary: &str) {
        let r = self.input.rollout;
        self.st.phase = phase::PROGRESSING;
        let steps = r.spec.run_steps();
        match steps.get(self.st.current_step as usize) {
            None => self.confirmed_promote(),
            Some(RunStep::SetWeight(w)) => {
                // As Flagger does ("Advance canary weight"), each weight the canary gets is an event.
                if self.st.canary_weight != *w {
                    self.event(false, "Advanced", format!("{canary} takes {w}% of the traffic"));
                }
                self.st.canary_weight = *w;
                self.st.message = Some(format!("{canary} at {w}%"));
                self.next_step();
            }
            Some(RunStep::HeaderRoute(h)) => {
                let n = h.matches.len();
                self.st.header_route = (n > 0).then(|| h.clone());
                self.st.message = Some(format!("{canary}: header route with {n} match(es)"));
                self.next_step();
            }
            Some(RunStep::Mirror(p)) => {
                self.st.mirror_percentage = (*p > 0).then_some(*p);
                self.st.message = Some(format!("{canary} gets copies of {p}% of stable's requests"));
                self.next_step();
            }
            Some(RunStep::Pause(Some(d))) => {
                if self.since_step() >= *d {
                    self.next_step();
                } else {
                    self.st.message = Some(format!("pausing {d:?} at {}%", self.st.canary_weight));
                }
            }
            Some(RunStep::Pause(None)) => {
                self.st.phase = phase::PAUSED;
                self.st.message = Some(format!(
                    "paused at {}% until `revisor rollout promote`",
                    self.st.canary_weight
                ));
            }
            Some(RunStep::Analysis(n)) => {
                if self.st.successful_runs >= *n {
                    self.next_step();
                } else {
                    self.st.message = Some(format!(
                        "analysing {canary} at {}%: {}/{n} successful runs",
                        self.st.canary_weight, self.st.successful_runs
                    ));
                }
            }
        }
        if self.st.current_step as usize >= steps.len() && self.st.phase == phase::PROGRESSING {
            self.confirmed_promote();
        }
    }
}

impl Machine<'_> {
    /// An interval's analysis run: records its measurements and webhook answers, then judges them
    /// (failed checks count toward rollback; an inconclusive run waits, up to the progress deadline).
    /// `true` when the step ends here (rolled back, or waiting for data).
    fn analysis_run(
        &mut self,
        a: &Analysis,
        w: &Window,
        sequential: Option<&Analysis>,
        canary: &str,
        deadline: std::time::Duration,
    ) -> bool {
        let input = self.input;
        self.st.last_analysis_at = Some(input.now);
        let per_interval = match sequential {
            Some(a) => revisor_api::rollout::Analysis {
                metrics: a
                    .metrics
                    .iter()
                    .filter(|m| !sequential::is_sequential(m))
                    .cloned()
                    .collect(),
                ..a.clone()
            },
            None => a.clone(),
        };
        let mut run = crate::analysis::evaluate_with(
            &per_interval,
            w,
            input.stable_window.as_ref(),
            &input.provided,
            canary,
            self.st.current_step,
            input.now,
        );
        for (name, result) in &input.hooks.rollout {
            let failed = result.is_err();
            run.failed |= failed;
            run.measurements.push(revisor_api::rollout::Measurement {
                time: input.now,
                revision: canary.to_string(),
                step: self.st.current_step,
                metric: format!("webhook/{name}"),
                comparison: result.as_ref().err().cloned(),
                samples: 1,
                verdict: if failed {
                    Judgement::Failed
                } else {
                    Judgement::Successful
                },
                ..Default::default()
            });
        }
        if let Some(a) = sequential {
            self.sequential_measurements(a, &mut run);
        }
        if run.failed {
            run.inconclusive = false;
        }
        self.keep_measurements(run.measurements.clone());
        if run.failed {
            self.st.failed_checks += 1;
            self.st.successful_runs = 0;
            let failed: Vec<String> = run
                .measurements
                .iter()
                .filter(|m| m.verdict == Judgement::Failed)
                .map(|m| match &m.comparison {
                    Some(c) => format!("{} {c}", m.metric),
                    None => format!(
                        "{} = {} (range {}..{})",
                        m.metric,
                        m.value.map(|v| format!("{v:.3}")).unwrap_or_default(),
                        m.threshold.min.map(|v| v.to_string()).unwrap_or_default(),
                        m.threshold.max.map(|v| v.to_string()).unwrap_or_default()
                    ),
                })
                .collect();
            let limit = a.failure_limit();
            let why = format!(
                "analysis failed {}/{limit} times; last: {}",
                self.st.failed_checks,
                failed.join(", ")
            );
            if self.st.failed_checks >= limit {
                {
                    self.roll_back(false, "AnalysisFailed", why);
                    return true;
                }
            }
            self.event(true, "AnalysisFailed", why);
        } else if run.inconclusive && sequential.is_some() {
            if self.inconclusive(a) {
                return true;
            }
        } else if run.inconclusive {
            if self.since_step() >= deadline {
                let why = format!(
                    "fewer than {} requests per analysis window for {deadline:?} (progressDeadline)",
                    a.min_samples()
                );
                {
                    self.roll_back(false, "NotEnoughData", why);
                    return true;
                }
            }
        } else {
            self.st.successful_runs += 1;
            if sequential.is_some() {
                let msg = "every sequential check is not worse than its tolerance".to_string();
                self.analysis_condition(ConditionStatus::True, "NotWorse", msg);
            }
        }
        false
    }
}

impl Machine<'_> {
    /// Adds a look to the evidence (at most one a second) and says why the canary is worse, if a
    /// sequential check finds it so.
    fn sequential_look(&mut self, a: &Analysis) -> Option<String> {
        let (canary, stable) = self.input.readings.as_ref()?;
        let ev = sequential::look(self.st.evidence.as_ref(), self.input.now, canary, stable.as_ref())?;
        let worse = a.metrics.iter().enumerate().find_map(|(i, m)| {
            if !sequential::is_sequential(m) {
                return None;
            }
            match sequential::judge(a, i, &ev, &canary.bounds_ms) {
                Verdict::Worse(why) => Some(format!("{} is worse: {why}", metric_label(m))),
                _ => None,
            }
        });
        self.st.evidence = Some(ev);
        if let Some(why) = &worse {
            self.analysis_condition(ConditionStatus::False, "Worse", why.clone());
            // The verdict that rolls back is kept with the other measurements.
            let mut run = crate::analysis::Run {
                measurements: Vec::new(),
                failed: true,
                inconclusive: false,
            };
            self.sequential_measurements(a, &mut run);
            self.keep_measurements(run.measurements);
        }
        worse
    }

    /// The `Analysis` condition: True when the last run found every sequential check not worse,
    /// False when one was worse, Unknown while the evidence is still not conclusive past its time.
    fn analysis_condition(&mut self, status: ConditionStatus, reason: &str, message: String) {
        let c = revisor_api::Condition::new("Analysis", status, Some(reason), Some(message));
        self.st.conditions.set_condition(c, self.input.now);
    }

    fn keep_measurements(&mut self, ms: Vec<revisor_api::rollout::Measurement>) {
        self.st.measurements.extend(ms);
        let excess = self.st.measurements.len().saturating_sub(MAX_MEASUREMENTS);
        self.st.measurements.drain(..excess);
    }

    /// The sequential checks' verdicts as this run's measurements; a check not yet known makes the
    /// run inconclusive (a hold, never a failure).
    fn sequential_measurements(&mut self, a: &Analysis, run: &mut crate::analysis::Run) {
        let (Some(ev), Some((canary, _))) = (&self.st.evidence, &self.input.readings) else {
            run.inconclusive = true;
            return;
        };
        for (i, m) in a
            .metrics
            .iter()
            .enumerate()
            .filter(|(_, m)| sequential::is_sequential(m))
        {
            let (verdict, comparison) = match sequential::judge(a, i, ev, &canary.bounds_ms) {
                Verdict::Worse(s) => (Judgement::Failed, s),
                Verdict::NotWorse(s) => (Judgement::Successful, s),
                Verdict::Unknown(s) => {
                    run.inconclusive = true;
                    (Judgement::Inconclusive, s)
                }
            };
            let window = |r: &revisor_api::rollout::CounterReading| crate::analysis::Window {
                requests: r.requests.iter().sum(),
                errors: r.requests.get(4).copied().unwrap_or(0),
                bounds_ms: canary.bounds_ms.clone(),
                latency_counts: r.latency_counts.clone(),
                ..Default::default()
            };
            let value = |w: &crate::analysis::Window| match m.name.as_str() {
                "latency" => w.latency_percentile(m.percentile.unwrap_or(99.0)),
                _ => w.success_rate(),
            };
            let (c, s) = (window(&ev.canary), window(&ev.stable));
            run.measurements.push(revisor_api::rollout::Measurement {
                time: self.input.now,
                revision: self.st.canary_revision.clone().unwrap_or_default(),
                step: self.st.current_step,
                metric: metric_label(m),
                value: value(&c),
                threshold: m.threshold_range,
                baseline: m.relative_to.as_ref().and_then(|_| value(&s)),
                comparison: Some(format!("sequential, since the canary started: {comparison}")),
                samples: c.requests,
                verdict,
            });
        }
    }

    /// A step whose evidence is still not conclusive after `inconclusiveAfter`: hold (announced
    /// once), roll back or promote, as the analysis says. True when the step ends here.
    fn inconclusive(&mut self, a: &Analysis) -> bool {
        let after = a.inconclusive_after();
        if self.since_step() < after {
            return false;
        }
        let canary = self.st.canary_revision.clone().unwrap_or_default();
        let why = format!("the evidence on {canary} is still not conclusive after {after:?} at this step");
        match a.on_inconclusive.as_deref().unwrap_or("hold") {
            "rollback" => {
                self.roll_back(false, "Inconclusive", why);
                true
            }
            "promote" => {
                self.event(
                    false,
                    "Inconclusive",
                    format!("{why}: promoting, as onInconclusive says"),
                );
                self.confirmed_promote();
                true
            }
            _ => {
                let held = self.st.evidence.as_ref().is_some_and(|e| e.held);
                self.analysis_condition(ConditionStatus::Unknown, "Inconclusive", why.clone());
                if !held {
                    self.event(true, "Inconclusive", format!("{why}: holding (onInconclusive: hold); more traffic, or the load generator, gives a verdict sooner"));
                    if let Some(ev) = &mut self.st.evidence {
                        ev.held = true;
                    }
                }
                false
            }
        }
    }
}

/// How a metric is named in measurements: `latency-p99`, `success-rate`.
fn metric_label(m: &revisor_api::rollout::MetricCheck) -> String {
    match m.name.as_str() {
        "latency" => format!("latency-p{}", m.percentile.unwrap_or(99.0)),
        n => n.to_string(),
    }
}

/// One step of the state machine.
pub fn advance(input: &Input) -> Output {
    let mut m = Machine {
        input,
        st: input.rollout.status(),
        events: Vec::new(),
    };
    m.st.observed_generation = input.rollout.metadata.generation;
    m.run();
    m.keep_baseline();
    let mut rollout = input.rollout.clone();
    rollout.status = Some(m.st.clone());
    let traffic = traffic(&rollout, &m.st, input.now);
    Output {
        status: m.st,
        traffic,
        events: m.events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use revisor_api::rollout::*;

    fn rollout(steps: Vec<Step>, analysis: Option<Analysis>) -> Rollout {
        Rollout {
            spec: RolloutSpec {
                service_ref: ServiceRef { name: "svc".into() },
                strategy: Strategy {
                    canary: Some(Canary {
                        steps: Some(steps),
                        ..Default::default()
                    }),
                    blue_green: None,
                },
                analysis,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn weight(w: u32) -> Step {
        Step {
            set_weight: Some(w),
            ..Default::default()
        }
    }

    fn pause(d: Option<&str>) -> Step {
        Step {
            pause: Some(Pause {
                duration: d.map(str::to_string),
            }),
            ..Default::default()
        }
    }

    fn analysis(min: f64) -> Analysis {
        Analysis {
            interval: Some("10s".into()),
            threshold: Some(2),
            min_samples: Some(10),
            metrics: vec![MetricCheck {
                name: "success-rate".into(),
                threshold_range: ThresholdRange {
                    min: Some(min),
                    max: None,
                },
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn window(ok: u64, errors: u64) -> Window {
        Window {
            requests: ok + errors,
            errors,
            seconds: 10.0,
            ..Default::default()
        }
    }

    struct Sim {
        r: Rollout,
        now: DateTime<Utc>,
        events: Vec<Event>,
        traffic: Vec<TrafficTarget>,
    }

    impl Sim {
        fn new(r: Rollout) -> Sim {
            Sim {
                r,
                now: Utc::now(),
                events: vec![],
                traffic: vec![],
            }
        }

        fn step(&mut self, latest: &str, state: CanaryState, secs: i64, w: Option<Window>) -> &RolloutStatus {
            self.step_with(latest, state, secs, w, Hooks::default())
        }

        fn step_with(
            &mut self,
            latest: &str,
            state: CanaryState,
            secs: i64,
            w: Option<Window>,
            hooks: Hooks,
        ) -> &RolloutStatus {
            self.now += chrono::Duration::seconds(secs);
            let out = advance(&Input {
                rollout: &self.r,
                latest: Some((latest, state)),
                exists: &|_| true,
                now: self.now,
                window: w,
                stable_window: None,
                stable_replicas: 1,
                hooks,
                provided: Vec::new(),
                baseline: None,
                readings: None,
            });
            self.events.extend(out.events);
            self.traffic = out.traffic;
            self.r.status = Some(out.status);
            self.r.status.as_ref().unwrap()
        }

        /// The messages of the events recorded with `reason`, in order.
        fn messages(&self, reason: &str) -> Vec<&str> {
            self.events
                .iter()
                .filter(|e| e.reason == reason)
                .map(|e| e.message.as_str())
                .collect()
        }

        fn split(&self) -> Vec<(Option<String>, i64)> {
            self.traffic
                .iter()
                .map(|t| (t.revision_name.clone(), t.percent()))
                .collect()
        }
    }

    #[test]
    fn a_good_canary_goes_through_every_step_and_is_promoted() {
        let mut s = Sim::new(rollout(
            vec![weight(20), pause(Some("30s")), weight(50), pause(None)],
            Some(analysis(95.0)),
        ));
        assert_eq!(s.step("svc-1", CanaryState::Ready, 0, None).phase, phase::SUCCEEDED);
        assert_eq!(
            s.split(),
            vec![(Some("svc-1".into()), 100)],
            "the first revision is stable"
        );
        assert_eq!(s.step("svc-2", CanaryState::Pending, 1, None).phase, phase::PROGRESSING);
        assert_eq!(s.split()[1].1, 0, "no traffic before the canary is ready");
        let st = s.step("svc-2", CanaryState::Ready, 1, None);
        assert_eq!((st.canary_weight, st.current_step), (20, 1));
        assert_eq!(s.split(), vec![(Some("svc-1".into()), 80), (None, 20)]);
        assert_eq!(
            s.step("svc-2", CanaryState::Ready, 10, Some(window(100, 0)))
                .current_step,
            1,
            "pausing"
        );
        assert_eq!(
            s.step("svc-2", CanaryState::Ready, 25, None).current_step,
            2,
            "30s passed"
        );
        assert_eq!(s.step("svc-2", CanaryState::Ready, 1, None).canary_weight, 50);
        let st = s.step("svc-2", CanaryState::Ready, 100, None);
        assert_eq!(st.phase, phase::PAUSED, "an open pause waits");
        s.r.status.as_mut().unwrap().requests.push("promote".into());
        let st = s.step("svc-2", CanaryState::Ready, 1, None).clone();
        assert_eq!(st.phase, phase::SUCCEEDED, "{st:?}");
        assert_eq!(st.stable_revision.as_deref(), Some("svc-2"));
        assert_eq!(st.previous_stable_revision.as_deref(), Some("svc-1"));
        assert_eq!(
            s.split(),
            vec![(Some("svc-2".into()), 100), (Some("svc-1".into()), 0)],
            "the previous stable stays tagged (warm) within the rollback window"
        );
        assert_eq!(s.traffic[1].tag.as_deref(), Some("previous"));
        assert!(s.events.iter().any(|e| e.reason == "Promoted"));
        assert_eq!(
            s.messages("Advanced"),
            vec!["svc-2 takes 20% of the traffic", "svc-2 takes 50% of the traffic"]
        );
        assert_eq!(st.measurements.len(), 1);
        assert_eq!(st.measurements[0].verdict, Judgement::Successful);
    }

    #[test]
    fn failed_checks_roll_back_at_the_threshold_and_the_canary_is_not_retried() {
        let mut s = Sim::new(rollout(vec![weight(10), pause(Some("10m"))], Some(analysis(99.0))));
        s.step("svc-1", CanaryState::Ready, 0, None);
        s.step("svc-2", CanaryState::Ready, 1, None);
        s.step("svc-2", CanaryState::Ready, 1, None);
        assert_eq!(s.split()[1].1, 10);
        let st = s.step("svc-2", CanaryState::Ready, 10, Some(window(50, 50)));
        assert_eq!((st.phase, st.failed_checks), (phase::PROGRESSING, 1));
        let st = s.step("svc-2", CanaryState::Ready, 10, Some(window(5, 2))).clone();
        assert_eq!(
            st.failed_checks, 1,
            "7 requests < minSamples 10: inconclusive, not failed"
        );
        let st2 = s.step("svc-2", CanaryState::Ready, 10, Some(window(40, 60))).clone();
        assert_eq!(st2.phase, phase::ROLLED_BACK);
        assert_eq!(st2.rejected_revision.as_deref(), Some("svc-2"));
        assert!(
            st2.message
                .as_deref()
                .unwrap()
                .contains("success-rate = 40.000 (range 99.."),
            "{st2:?}"
        );
        assert_eq!(s.split(), vec![(Some("svc-1".into()), 100)]);
        assert_eq!(
            s.step("svc-2", CanaryState::Ready, 10, None).phase,
            phase::ROLLED_BACK,
            "not retried by itself"
        );
        assert_eq!(st.measurements.len(), 2);
        s.r.status.as_mut().unwrap().requests.push("retry".into());
        assert_eq!(
            s.step("svc-2", CanaryState::Ready, 1, None).phase,
            phase::PROGRESSING,
            "retry asks again"
        );
    }

    #[test]
    fn a_canary_that_fails_or_never_gets_ready_is_rejected_without_traffic() {
        let mut s = Sim::new(rollout(vec![weight(50)], None));
        s.step("svc-1", CanaryState::Ready, 0, None);
        s.step("svc-2", CanaryState::Pending, 1, None);
        let st = s.step("svc-2", CanaryState::Failed("ExitCode1: boom".into()), 1, None);
        assert_eq!(st.phase, phase::FAILED);
        assert!(st.message.as_deref().unwrap().contains("boom"));
        assert_eq!(s.split(), vec![(Some("svc-1".into()), 100)]);
        let mut s = Sim::new(Rollout {
            spec: RolloutSpec {
                progress_deadline: Some("60s".into()),
                ..rollout(vec![weight(50)], None).spec
            },
            ..Default::default()
        });
        s.step("svc-1", CanaryState::Ready, 0, None);
        s.step("svc-2", CanaryState::Pending, 1, None);
        assert_eq!(
            s.step("svc-2", CanaryState::Pending, 30, None).phase,
            phase::PROGRESSING
        );
        assert_eq!(s.step("svc-2", CanaryState::Pending, 31, None).phase, phase::FAILED);
    }

    #[test]
    fn flaggers_shape_steps_on_analysis_and_abort_and_undo_work() {
        let mut r = rollout(vec![], Some(analysis(90.0)));
        r.spec.strategy.canary = Some(Canary {
            step_weight: Some(25),
            max_weight: Some(50),
            ..Default::default()
        });
        assert_eq!(
            r.spec.run_steps(),
            vec![
                RunStep::SetWeight(25),
                RunStep::Analysis(1),
                RunStep::SetWeight(50),
                RunStep::Analysis(1)
            ]
        );
        let mut s = Sim::new(r);
        s.step("svc-1", CanaryState::Ready, 0, None);
        s.step("svc-2", CanaryState::Ready, 1, None);
        assert_eq!(s.step("svc-2", CanaryState::Ready, 1, None).canary_weight, 25);
        s.step("svc-2", CanaryState::Ready, 10, Some(window(100, 0)));
        assert_eq!(s.step("svc-2", CanaryState::Ready, 1, None).canary_weight, 50);
        s.step("svc-2", CanaryState::Ready, 10, Some(window(100, 0)));
        assert_eq!(s.step("svc-2", CanaryState::Ready, 1, None).phase, phase::SUCCEEDED);
        s.r.status.as_mut().unwrap().requests.push("undo".into());
        let st = s.step("svc-2", CanaryState::Ready, 1, None).clone();
        assert_eq!(st.stable_revision.as_deref(), Some("svc-1"));
        assert_eq!(s.split(), vec![(Some("svc-1".into()), 100), (Some("svc-2".into()), 0)]);
        assert_eq!(
            s.step("svc-2", CanaryState::Ready, 1, None).phase,
            phase::SUCCEEDED,
            "undone: not re-rolled"
        );
        s.step("svc-3", CanaryState::Ready, 1, None);
        s.r.status.as_mut().unwrap().requests.push("abort".into());
        let st = s.step("svc-3", CanaryState::Ready, 1, None);
        assert_eq!(st.phase, phase::ROLLED_BACK);
        assert!(s.events.iter().any(|e| e.reason == "Aborted"));
    }

    #[test]
    fn blue_green_previews_switches_at_once_and_keeps_the_old_one_warm() {
        let mut r = rollout(vec![], Some(analysis(95.0)));
        r.spec.strategy = Strategy {
            canary: None,
            blue_green: Some(BlueGreen {
                pre_promotion_analysis: Some(StepAnalysis { count: Some(1) }),
                auto_promotion_seconds: Some(10),
                post_promotion_analysis: Some(StepAnalysis { count: Some(1) }),
                scale_down_delay_seconds: Some(60),
            }),
        };
        let mut s = Sim::new(r);
        s.step("svc-1", CanaryState::Ready, 0, None);
        s.step("svc-2", CanaryState::Ready, 1, None);
        let tags = |s: &Sim| {
            s.traffic
                .iter()
                .map(|t| (t.tag.clone(), t.percent()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            tags(&s),
            vec![(None, 100), (Some("preview".into()), 0)],
            "the preview has no traffic"
        );
        assert!(
            analysis_due(&s.r, s.now + chrono::Duration::seconds(10)),
            "pre-promotion analysis runs on the preview"
        );
        s.step("svc-2", CanaryState::Ready, 10, Some(window(100, 0)));
        assert_eq!(
            s.r.status().current_step,
            1,
            "analysis passed: auto-promotion countdown"
        );
        s.step("svc-2", CanaryState::Ready, 5, None);
        assert_eq!(s.r.status().canary_weight, 0);
        s.step("svc-2", CanaryState::Ready, 6, None);
        s.step("svc-2", CanaryState::Ready, 1, None);
        assert_eq!(s.r.status().canary_weight, 100, "all at once");
        assert_eq!(
            tags(&s),
            vec![(Some("previous".into()), 0), (Some("preview".into()), 100)]
        );
        assert_eq!(
            floors(&s.r, s.now),
            vec![("svc-1".to_string(), 1)],
            "stable kept at its replicas"
        );
        let st = s.step("svc-2", CanaryState::Ready, 10, Some(window(40, 60))).clone();
        assert_eq!(st.failed_checks, 1, "post-promotion analysis");
        let st = s.step("svc-2", CanaryState::Ready, 10, Some(window(40, 60))).clone();
        assert_eq!(st.phase, phase::ROLLED_BACK, "switched back at once");
        assert_eq!(s.split(), vec![(Some("svc-1".into()), 100)]);

        s.r.status.as_mut().unwrap().requests.push("retry".into());
        s.step("svc-2", CanaryState::Ready, 1, None);
        s.step("svc-2", CanaryState::Ready, 10, Some(window(100, 0)));
        s.step("svc-2", CanaryState::Ready, 11, None);
        s.step("svc-2", CanaryState::Ready, 1, None);
        let st = s.step("svc-2", CanaryState::Ready, 10, Some(window(100, 0))).clone();
        assert_eq!(
            (st.phase, st.stable_revision.as_deref()),
            (phase::SUCCEEDED, Some("svc-2"))
        );
        assert_eq!(
            s.traffic
                .iter()
                .map(|t| (t.revision_name.clone(), t.tag.clone(), t.percent()))
                .collect::<Vec<_>>(),
            vec![
                (Some("svc-2".into()), None, 100),
                (Some("svc-1".into()), Some("previous".into()), 0)
            ],
            "the old one stays tagged within the scale-down delay"
        );
        assert_eq!(floors(&s.r, s.now), vec![("svc-1".to_string(), 1)]);
        s.step("svc-2", CanaryState::Ready, 61, None);
        assert_eq!(s.split(), vec![(Some("svc-2".into()), 100)], "then it goes");
        assert!(floors(&s.r, s.now).is_empty());
    }

    #[test]
    fn webhooks_gate_fail_and_roll_back() {
        let hook = |name: &str, kind: &str| Webhook {
            name: name.into(),
            type_: kind.into(),
            url: "http://127.0.0.1:1/hook".into(),
            ..Default::default()
        };
        let mut a = analysis(90.0);
        a.webhooks = vec![
            hook("gate", "confirm-rollout"),
            hook("smoke", "pre-rollout"),
            hook("load", "rollout"),
            hook("approve", "confirm-promotion"),
            hook("panic-button", "rollback"),
        ];
        let mut s = Sim::new(rollout(vec![weight(50)], Some(a)));
        s.step("svc-1", CanaryState::Ready, 0, None);
        assert_eq!(hooks_due(&s.r, Some("svc-2")), vec![WebhookKind::ConfirmRollout]);
        let no = |e: &str| Some(Err(e.to_string()));
        let st = s.step_with(
            "svc-2",
            CanaryState::Ready,
            1,
            None,
            Hooks {
                confirm_rollout: no("not yet"),
                ..Default::default()
            },
        );
        assert_eq!(st.phase, phase::SUCCEEDED, "waits for confirm-rollout");
        assert!(st.message.as_deref().unwrap().contains("not yet"));
        let st = s.step_with(
            "svc-2",
            CanaryState::Ready,
            1,
            None,
            Hooks {
                confirm_rollout: Some(Ok(())),
                ..Default::default()
            },
        );
        assert_eq!(
            (st.phase, st.canary_weight),
            (phase::PROGRESSING, 0),
            "waits for pre-rollout"
        );
        assert_eq!(
            hooks_due(&s.r, Some("svc-2")),
            vec![WebhookKind::PreRollout, WebhookKind::Rollback]
        );
        let st = s.step_with(
            "svc-2",
            CanaryState::Ready,
            1,
            None,
            Hooks {
                pre_rollout: no("smoke failed"),
                ..Default::default()
            },
        );
        assert_eq!((st.failed_checks, st.canary_weight), (1, 0));
        let st = s.step_with(
            "svc-2",
            CanaryState::Ready,
            1,
            None,
            Hooks {
                pre_rollout: Some(Ok(())),
                ..Default::default()
            },
        );
        assert_eq!(st.canary_weight, 50);
        let st = s
            .step_with(
                "svc-2",
                CanaryState::Ready,
                10,
                Some(window(100, 0)),
                Hooks {
                    rollout: vec![("load".into(), Ok(()))],
                    ..Default::default()
                },
            )
            .clone();
        assert_eq!(
            st.phase,
            phase::PROGRESSING,
            "steps done, but confirm-promotion was not asked: {st:?}"
        );
        assert!(st
            .measurements
            .iter()
            .any(|m| m.metric == "webhook/load" && m.verdict == Judgement::Successful));
        assert_eq!(
            hooks_due(&s.r, Some("svc-2")),
            vec![WebhookKind::ConfirmPromotion, WebhookKind::Rollback]
        );
        let st = s.step_with(
            "svc-2",
            CanaryState::Ready,
            1,
            None,
            Hooks {
                confirm_promotion: no("403"),
                ..Default::default()
            },
        );
        assert_eq!(st.phase, phase::PROGRESSING);
        let st = s.step_with(
            "svc-2",
            CanaryState::Ready,
            1,
            None,
            Hooks {
                confirm_promotion: Some(Ok(())),
                ..Default::default()
            },
        );
        assert_eq!(st.phase, phase::SUCCEEDED);

        s.step_with(
            "svc-3",
            CanaryState::Ready,
            1,
            None,
            Hooks {
                confirm_rollout: Some(Ok(())),
                ..Default::default()
            },
        );
        let st = s.step_with(
            "svc-3",
            CanaryState::Ready,
            1,
            None,
            Hooks {
                rollback: Some("panic-button".into()),
                ..Default::default()
            },
        );
        assert_eq!(st.phase, phase::ROLLED_BACK);
        assert!(st.message.as_deref().unwrap().contains("panic-button"));
    }

    #[test]
    fn analysis_is_due_every_interval_while_the_canary_has_traffic() {
        let mut s = Sim::new(rollout(vec![weight(10), pause(None)], Some(analysis(90.0))));
        s.step("svc-1", CanaryState::Ready, 0, None);
        s.step("svc-2", CanaryState::Pending, 1, None);
        assert!(
            !analysis_due(&s.r, s.now + chrono::Duration::seconds(60)),
            "no traffic yet"
        );
        s.step("svc-2", CanaryState::Ready, 1, None);
        assert_eq!(s.r.status().canary_weight, 10);
        assert!(!analysis_due(&s.r, s.now + chrono::Duration::seconds(5)));
        assert!(analysis_due(&s.r, s.now + chrono::Duration::seconds(10)));
    }

    #[test]
    fn a_request_this_version_does_not_know_is_ignored_with_an_event() {
        let mut s = Sim::new(rollout(vec![weight(20), pause(None)], None));
        s.step("svc-1", CanaryState::Ready, 0, None);
        s.r.status.as_mut().unwrap().requests.push("rewind".into());
        let st = s.step("svc-1", CanaryState::Ready, 1, None).clone();
        assert!(st.requests.is_empty(), "taken");
        assert_eq!(
            s.messages("Ignored"),
            vec!["request \"rewind\" does not apply in phase Succeeded"]
        );
    }
}

//! The columns of each kind: what `revisor get` prints and what the admin API's Tables carry for
//! `kubectl get`, from one definition.

use chrono::{DateTime, Utc};
use revisor_api::rollout::{phase, Rollout, RunStep};
use revisor_api::{ConditionStatus, Revision, Service};

/// A Service's columns.
pub const SERVICE: [&str; 7] = ["NAME", "URL", "LATEST", "AGE", "CONDITIONS", "READY", "REASON"];
/// A Revision's columns.
pub const REVISION: [&str; 10] = [
    "NAME",
    "SERVICE",
    "TRAFFIC",
    "TAGS",
    "GENERATION",
    "REPLICAS",
    "AGE",
    "CONDITIONS",
    "READY",
    "REASON",
];
/// A Rollout's columns.
pub const ROLLOUT: [&str; 8] = ["NAME", "SERVICE", "STABLE", "CANARY", "WEIGHT", "PHASE", "STEP", "AGE"];

/// What a column says, for a Table's column definitions.
pub fn description(column: &str) -> &'static str {
    match column {
        "NAME" => "The object's name.",
        "URL" => "Where the service answers.",
        "LATEST" => "The latest revision created.",
        "AGE" => "How long ago the object was created.",
        "CONDITIONS" => "How many of the status conditions are True, of all.",
        "READY" => "The Ready condition's status.",
        "REASON" => "Why Ready is not True.",
        "SERVICE" => "The service it belongs to.",
        "TRAFFIC" => "Its share of the service's traffic.",
        "TAGS" => "The tags that reach it.",
        "GENERATION" => "The configuration generation it was created from.",
        "REPLICAS" => "Ready replicas over desired ones.",
        "STABLE" => "The revision serving most traffic.",
        "CANARY" => "The revision being rolled out.",
        "WEIGHT" => "The canary's share of the traffic.",
        "PHASE" => "Where the rollout is.",
        "STEP" => "The current step of its plan.",
        _ => "",
    }
}

/// How long ago `t` was, as kubectl prints ages (`42s`, `5m`, `3h`, `2d`).
pub fn age(t: Option<DateTime<Utc>>) -> String {
    let Some(t) = t else {
        return "<unknown>".into();
    };
    let s = (Utc::now() - t).num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn conditions_cell(conds: &[revisor_api::Condition]) -> String {
    let ok = conds.iter().filter(|c| c.status == ConditionStatus::True).count();
    format!("{ok} OK / {}", conds.len())
}

fn ready_cells(conds: &[revisor_api::Condition]) -> (String, String) {
    match conds.iter().find(|c| c.type_ == "Ready") {
        Some(c) => (c.status.as_str().to_string(), c.reason.clone().unwrap_or_default()),
        None => ("Unknown".into(), String::new()),
    }
}

/// Ready replicas over desired ones, like kubectl's READY column of a Deployment (`1/3`).
fn replicas_cell(actual: Option<i64>, desired: Option<i64>) -> String {
    match (actual, desired) {
        (None, None) => String::new(),
        (a, d) => format!("{}/{}", a.unwrap_or(0), d.unwrap_or(0)),
    }
}

/// A Service's cells, in the order of [`SERVICE`].
pub fn service_cells(s: &Service) -> Vec<String> {
    let st = s.status();
    let (ready, reason) = ready_cells(&st.conditions);
    vec![
        s.metadata.name.clone(),
        st.url.unwrap_or_default(),
        st.latest_created_revision_name.unwrap_or_default(),
        age(s.metadata.creation_timestamp),
        conditions_cell(&st.conditions),
        ready,
        reason,
    ]
}

/// A Revision's cells, in the order of [`REVISION`]; its traffic and tags come from its service's
/// status.
pub fn revision_cells(r: &Revision, service: Option<&Service>) -> Vec<String> {
    let status_traffic = service.map(|s| s.status().traffic).unwrap_or_default();
    let mine: Vec<_> = status_traffic
        .iter()
        .filter(|t| t.revision_name.as_deref() == Some(&r.metadata.name))
        .collect();
    let percent: i64 = mine.iter().map(|t| t.percent()).sum();
    let tags: Vec<&str> = mine.iter().filter_map(|t| t.tag()).collect();
    let st = r.status();
    let (ready, reason) = ready_cells(&st.conditions);
    vec![
        r.metadata.name.clone(),
        r.service_name().unwrap_or_default().to_string(),
        if mine.is_empty() {
            String::new()
        } else {
            format!("{percent}%")
        },
        tags.join(","),
        r.configuration_generation().map(|g| g.to_string()).unwrap_or_default(),
        replicas_cell(st.actual_replicas, st.desired_replicas),
        age(r.metadata.creation_timestamp),
        conditions_cell(&st.conditions),
        ready,
        reason,
    ]
}

/// Where a Rollout is in its plan: `2/5 setWeight 20`, `-` when it is not progressing.
pub fn step_text(r: &Rollout) -> String {
    let st = r.status();
    let steps = r.spec.run_steps();
    match steps.get(st.current_step as usize) {
        _ if !matches!(st.phase, phase::PROGRESSING | phase::PAUSED) => "-".into(),
        Some(s) => {
            let what = match s {
                RunStep::SetWeight(w) => format!("setWeight {w}"),
                RunStep::Pause(Some(d)) => format!("pause {d:?}"),
                RunStep::Pause(None) => "pause (until promoted)".into(),
                RunStep::Analysis(n) => format!("analysis ({n} runs)"),
                RunStep::HeaderRoute(h) => format!("setHeaderRoute ({} matches)", h.matches.len()),
                RunStep::Mirror(p) => format!("setMirrorRoute {p}%"),
            };
            format!("{}/{} {what}", st.current_step + 1, steps.len())
        }
        None => format!("{}/{}", steps.len(), steps.len()),
    }
}

/// A Rollout's cells, in the order of [`ROLLOUT`].
pub fn rollout_cells(r: &Rollout) -> Vec<String> {
    let st = r.status();
    vec![
        r.metadata.name.clone(),
        r.spec.service_ref.name.clone(),
        st.stable_revision.clone().unwrap_or_default(),
        st.canary_revision.clone().unwrap_or_else(|| "-".into()),
        format!("{}%", st.canary_weight),
        st.phase.to_string(),
        step_text(r),
        age(r.metadata.creation_timestamp),
    ]
}

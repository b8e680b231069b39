//! `revisor rollout status|watch|promote|abort|retry|pause|resume|undo NAME` and the rollout table of
//! `revisor get rollouts`.

use std::time::Duration;

use anyhow::Result;
use revisor_api::rollout::{phase, Rollout};
use serde_json::{json, Value};

use super::{table, ObjectOutput};
use crate::client::{Client, ROLLOUTS};
use crate::columns;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum RolloutCommand {
    /// The rollout's phase, step, weights and latest measurements.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the Rollout as YAML or JSON instead.
        #[arg(short, long, value_enum)]
        output: Option<ObjectOutput>,
    },
    /// Follow the rollout until it ends: exit 0 when promoted, 1 when rolled back or failed.
    Watch(Target),
    /// Skip the current step (an open pause ends); with --full, promote the canary now.
    Promote {
        #[command(flatten)]
        target: Target,
        /// Skip every remaining step and analysis: the canary takes all traffic now.
        #[arg(long)]
        full: bool,
    },
    /// Roll back now: all traffic to the stable revision.
    Abort(Target),
    /// Roll out a rolled-back canary again.
    Retry(Target),
    /// Hold the current step.
    Pause(Target),
    /// Continue from the current step.
    Resume(Target),
    /// Move all traffic back to the previous stable revision (or --to-revision).
    Undo {
        #[command(flatten)]
        target: Target,
        /// The revision to move all traffic to, instead of the previous stable one.
        #[arg(long, value_parser = super::object_name)]
        to_revision: Option<String>,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The Rollout.
    #[arg(value_parser = super::object_name)]
    pub name: String,
    /// Its namespace.
    #[arg(short, long, default_value = "default", value_parser = super::object_name)]
    pub namespace: String,
}

fn path(t: &Target) -> String {
    format!("{ROLLOUTS}/namespaces/{}/rollouts/{}", t.namespace, t.name)
}

pub fn run(client: &Client, cmd: RolloutCommand) -> Result<i32> {
    let (target, action, body) = match &cmd {
        RolloutCommand::Status { target, output } => {
            if let Some(output) = output {
                let v: Value = client.get(&path(target))?;
                super::print_value(&v, (*output).into())?;
            } else {
                let r: Rollout = client.get(&path(target))?;
                print!("{}", status_text(&r));
            }
            return Ok(0);
        }
        RolloutCommand::Watch(t) => return watch(client, t),
        RolloutCommand::Promote { target, full } => (target, if *full { "promote-full" } else { "promote" }, None),
        RolloutCommand::Abort(t) => (t, "abort", None),
        RolloutCommand::Retry(t) => (t, "retry", None),
        RolloutCommand::Pause(t) => (t, "pause", None),
        RolloutCommand::Resume(t) => (t, "resume", None),
        RolloutCommand::Undo { target, to_revision } => {
            (target, "undo", to_revision.as_ref().map(|r| json!({ "toRevision": r })))
        }
    };
    client.post(&format!("{}/{action}", path(target)), body.as_ref())?;
    println!("rollout/{} {action} requested", target.name);
    Ok(0)
}

fn bar(weight: u32) -> String {
    let filled = (weight as usize).div_ceil(5).min(20);
    format!("[{}{}] {weight:>3}%", "#".repeat(filled), "-".repeat(20 - filled))
}

/// The status as `revisor rollout status` prints it.
pub fn status_text(r: &Rollout) -> String {
    let st = r.status();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<12} {v}\n"));
    line(
        "Rollout:",
        format!("{} (service {})", r.metadata.name, r.spec.service_ref.name),
    );
    line("Phase:", st.phase.to_string());
    line("Stable:", st.stable_revision.clone().unwrap_or_default());
    line("Canary:", st.canary_revision.clone().unwrap_or_else(|| "-".into()));
    line("Weight:", bar(st.canary_weight));
    line("Step:", columns::step_text(r));
    if let Some(a) = &r.spec.analysis {
        line(
            "Analysis:",
            format!("{} failed of {} allowed", st.failed_checks, a.failure_limit()),
        );
    }
    if let Some(m) = &st.message {
        line("Message:", m.clone());
    }
    let recent: Vec<_> = st.measurements.iter().rev().take(8).collect();
    if !recent.is_empty() {
        out.push_str("Measurements (latest first):\n");
        let rows: Vec<Vec<String>> = recent
            .iter()
            .map(|m| {
                let range = match (&m.comparison, m.threshold.min.is_some() || m.threshold.max.is_some()) {
                    (Some(c), _) => c.clone(),
                    (None, true) => format!(
                        "{}..{}",
                        m.threshold.min.map(|v| v.to_string()).unwrap_or_default(),
                        m.threshold.max.map(|v| v.to_string()).unwrap_or_default()
                    ),
                    (None, false) => "relative to stable".into(),
                };
                vec![
                    format!("  {}", crate::columns::age(Some(m.time))),
                    m.revision.clone(),
                    m.metric.clone(),
                    m.value.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into()),
                    range,
                    m.samples.to_string(),
                    m.verdict.to_string(),
                ]
            })
            .collect();
        let mut buf = Vec::new();
        table::write(
            &mut buf,
            &[
                "  AGE",
                "REVISION",
                "METRIC",
                "VALUE",
                "RANGE OR COMPARISON",
                "SAMPLES",
                "VERDICT",
            ],
            &rows,
        );
        out.push_str(&String::from_utf8_lossy(&buf));
    }
    out
}

fn watch(client: &Client, t: &Target) -> Result<i32> {
    let mut last = String::new();
    let mut seen_progress = false;
    loop {
        let r: Rollout = client.get(&path(t))?;
        let st = r.status();
        let text = format!(
            "{:<11} {} canary {} step {} {}",
            st.phase,
            bar(st.canary_weight),
            st.canary_revision.clone().unwrap_or_else(|| "-".into()),
            columns::step_text(&r),
            st.message.clone().unwrap_or_default()
        );
        if text != last {
            println!("{text}");
            if let Some(m) = st.measurements.last() {
                println!(
                    "            {} {} = {} ({} samples): {}",
                    m.revision,
                    m.metric,
                    m.value.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into()),
                    m.samples,
                    m.verdict
                );
            }
            last = text;
        }
        let progressing = matches!(st.phase, phase::PROGRESSING | phase::PAUSED | phase::PROMOTING);
        seen_progress |= progressing;
        // Idle, but the service has a revision the rollout has not taken up yet: it is about to start.
        let pending = !progressing && !seen_progress && {
            let svc: revisor_api::Service = client.get(&format!(
                "{}/namespaces/{}/services/{}",
                crate::client::SERVING,
                t.namespace,
                r.spec.service_ref.name
            ))?;
            let latest = svc.status().latest_created_revision_name;
            latest.is_some() && latest != st.stable_revision && latest != st.rejected_revision
        };
        if !progressing && !pending && (seen_progress || !st.phase.is_new()) {
            return Ok(match st.phase {
                phase::SUCCEEDED | phase::INITIALIZED => 0,
                _ => 1,
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The table of `revisor get rollouts`: NAME SERVICE STABLE CANARY WEIGHT PHASE STEP AGE, one row per item.
pub fn rows(items: &[Value], all_ns: bool) -> Result<(Vec<&'static str>, Vec<Vec<String>>)> {
    let mut rows = Vec::new();
    for v in items {
        let r: Rollout = serde_json::from_value(v.clone())?;
        let mut row = columns::rollout_cells(&r);
        if all_ns {
            row.insert(0, r.metadata.namespace.clone());
        }
        rows.push(row);
    }
    let mut headers = columns::ROLLOUT.to_vec();
    if all_ns {
        headers.insert(0, "NAMESPACE");
    }
    Ok((headers, rows))
}

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
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stdout().is_terminal();
    let mut drawn = 0;
    let mut last = String::new();
    let mut seen_progress = false;
    loop {
        let r: Rollout = client.get(&path(t))?;
        let st = r.status();
        if terminal {
            // On a terminal: the whole view, drawn again in place, fitted to the window.
            let (cols, rows) = terminal_size().unwrap_or((100, 40));
            let lines = fit(view(&r, chrono::Utc::now()), cols, rows);
            let mut out = std::io::stdout().lock();
            write!(out, "{}", redraw(drawn, &lines))?;
            out.flush()?;
            drawn = lines.len();
        }
        let text = format!(
            "{:<11} {} canary {} step {} {}",
            st.phase,
            bar(st.canary_weight),
            st.canary_revision.clone().unwrap_or_else(|| "-".into()),
            columns::step_text(&r),
            st.message.clone().unwrap_or_default()
        );
        if text != last && !terminal {
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

/// What `revisor rollout watch` draws on a terminal: the rollout and its revisions, its steps with the
/// current one in brackets, the weight bar, each metric's latest verdict on the canary with its range
/// and evidence, the time left in a timed pause, and the message.
pub fn view(r: &Rollout, now: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    use revisor_api::rollout::RunStep;
    let st = r.status();
    let mut out = vec![
        format!(
            "Rollout {} (service {}): {}",
            r.metadata.name, r.spec.service_ref.name, st.phase
        ),
        format!(
            "  stable {}   canary {}",
            st.stable_revision.as_deref().unwrap_or("-"),
            st.canary_revision.as_deref().unwrap_or("-")
        ),
        format!("  weight {}", bar(st.canary_weight)),
    ];
    let steps = r.spec.run_steps();
    let active = matches!(st.phase, phase::PROGRESSING | phase::PAUSED);
    let names: Vec<String> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = match s {
                RunStep::SetWeight(w) => format!("weight {w}%"),
                RunStep::Pause(Some(d)) => format!("pause {d:?}"),
                RunStep::Pause(None) => "pause".into(),
                RunStep::Analysis(n) => format!("analysis x{n}"),
                RunStep::HeaderRoute(_) => "header route".into(),
                RunStep::Mirror(p) => format!("mirror {p}%"),
            };
            if active && i == st.current_step as usize {
                format!("[{name}]")
            } else {
                name
            }
        })
        .collect();
    if !names.is_empty() {
        out.push(format!("  steps  {}", names.join(" > ")));
    }
    if let (true, Some(RunStep::Pause(Some(d))), Some(started)) =
        (active, steps.get(st.current_step as usize), st.step_started_at)
    {
        let left = (started + chrono::Duration::from_std(*d).unwrap_or_default() - now)
            .num_seconds()
            .max(0);
        out.push(format!("  pause  {left}s left"));
    }
    let canary = st.canary_revision.as_deref().or(st.rejected_revision.as_deref());
    let mut latest: Vec<&revisor_api::rollout::Measurement> = Vec::new();
    for m in st
        .measurements
        .iter()
        .rev()
        .filter(|m| Some(m.revision.as_str()) == canary)
    {
        if !latest.iter().any(|l| l.metric == m.metric) {
            latest.push(m);
        }
    }
    latest.sort_by(|a, b| a.metric.cmp(&b.metric));
    for m in latest {
        let range = match (m.threshold.min, m.threshold.max) {
            (Some(lo), Some(hi)) => format!("{lo}..{hi}"),
            (Some(lo), None) => format!(">= {lo}"),
            (None, Some(hi)) => format!("<= {hi}"),
            (None, None) => "relative to stable".into(),
        };
        out.push(format!(
            "  {:<22} {:>10} {:<14} {:<12} {} samples{}",
            m.metric,
            m.value.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into()),
            range,
            m.verdict.to_string(),
            m.samples,
            m.comparison.as_deref().map(|c| format!("; {c}")).unwrap_or_default()
        ));
    }
    if let Some(msg) = &st.message {
        out.push(format!("  {msg}"));
    }
    out
}

/// Lines as a terminal of `cols` columns and `rows` rows can redraw them: one row each (a line the
/// API gave with newlines in it is split; one wider than the window is cut), control characters
/// (what could move the cursor) dropped, and no more rows than the window has, less one.
pub fn fit(lines: Vec<String>, cols: usize, rows: usize) -> Vec<String> {
    let cols = cols.max(10);
    let mut out: Vec<String> = lines
        .iter()
        .flat_map(|l| l.split('\n'))
        .map(|l| {
            let clean: String = l.chars().filter(|c| !c.is_control()).collect();
            match clean.char_indices().nth(cols - 1) {
                Some((at, _)) => format!("{}…", &clean[..at]),
                None => clean,
            }
        })
        .collect();
    out.truncate(rows.saturating_sub(1).max(3));
    out
}

/// The terminal's columns and rows (standard output's).
fn terminal_size() -> Option<(usize, usize)> {
    // SAFETY: winsize is plain integers: all zeroes is a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a winsize we own.
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col as usize, ws.ws_row as usize))
}

/// The terminal output that replaces the `drawn` lines last printed with `lines`: the cursor goes up
/// to where they began, each line is cleared as it is written, and what is below is cleared.
pub fn redraw(drawn: usize, lines: &[String]) -> String {
    let mut s = String::new();
    if drawn > 0 {
        s.push_str(&format!("\x1b[{drawn}F"));
    }
    for l in lines {
        s.push_str("\x1b[2K");
        s.push_str(l);
        s.push('\n');
    }
    s.push_str("\x1b[J");
    s
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

#[cfg(test)]
mod tests {
    use super::*;

    fn paused() -> Rollout {
        serde_json::from_value(json!({
            "apiVersion": "revisor.dev/v1alpha1", "kind": "Rollout",
            "metadata": { "name": "web", "namespace": "default" },
            "spec": {
                "serviceRef": { "name": "web" },
                "strategy": { "canary": { "steps": [
                    { "setWeight": 20 }, { "pause": { "duration": "30s" } }, { "setWeight": 50 }
                ] } },
            },
            "status": {
                "phase": "Paused", "stableRevision": "web-00001", "canaryRevision": "web-00002",
                "canaryWeight": 20, "currentStep": 1, "stepStartedAt": "2026-11-30T12:00:00Z",
                "message": "paused at 20% for 30s",
                "measurements": [
                    { "time": "2026-11-30T12:00:01Z", "revision": "web-00002", "step": 1, "metric": "success-rate",
                      "value": 97.0, "threshold": { "min": 99.0 }, "samples": 40, "verdict": "Inconclusive" },
                    { "time": "2026-11-30T12:00:03Z", "revision": "web-00002", "step": 1, "metric": "success-rate",
                      "value": 99.5, "threshold": { "min": 99.0 }, "samples": 120, "verdict": "Successful",
                      "comparison": "sequential: 0 of 120" },
                    { "time": "2026-11-30T12:00:03Z", "revision": "web-00001", "step": 1, "metric": "latency-p99",
                      "value": 8.0, "threshold": { "max": 100.0 }, "samples": 500, "verdict": "Successful" },
                ],
            },
        }))
        .unwrap()
    }

    #[test]
    fn the_terminal_view_shows_steps_weight_every_metric_and_the_pause_left() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-30T12:00:10Z")
            .unwrap()
            .to_utc();
        let v = view(&paused(), now).join("\n");
        assert!(v.contains("Rollout web (service web): Paused"), "{v}");
        assert!(v.contains("stable web-00001   canary web-00002"), "{v}");
        assert!(v.contains("weight [####----------------]  20%"), "{v}");
        assert!(
            v.contains("weight 20% > [pause 30s] > weight 50%"),
            "the current step: {v}"
        );
        assert!(v.contains("pause  20s left"), "{v}");
        let metric: Vec<&str> = v.lines().filter(|l| l.contains("success-rate")).collect();
        assert_eq!(metric.len(), 1, "the latest verdict per metric: {v}");
        assert!(
            metric[0].contains("99.500") && metric[0].contains(">= 99") && metric[0].contains("Successful"),
            "{v}"
        );
        assert!(metric[0].contains("120 samples; sequential: 0 of 120"), "{v}");
        assert!(
            !v.contains("latency-p99"),
            "stable's measurements are not the canary's: {v}"
        );
        assert!(v.ends_with("paused at 20% for 30s"), "{v}");
    }

    #[test]
    fn what_is_drawn_fits_the_window_and_moves_no_cursor() {
        let lines = vec![
            "short".to_string(),
            "two\nlines".to_string(),
            format!("{}\x1b[2Jend", "x".repeat(30)),
        ];
        let fitted = fit(lines, 20, 40);
        assert_eq!(fitted[0], "short");
        assert_eq!((fitted[1].as_str(), fitted[2].as_str()), ("two", "lines"));
        assert_eq!(
            fitted[3],
            format!("{}…", "x".repeat(19)),
            "cut to the width, no escape left"
        );
        let many: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert_eq!(fit(many, 80, 24).len(), 23, "no more rows than the window has");
    }

    #[test]
    fn a_redraw_goes_back_over_what_was_drawn() {
        let lines = vec!["a".to_string(), "b".to_string()];
        assert_eq!(redraw(0, &lines), "\x1b[2Ka\n\x1b[2Kb\n\x1b[J");
        assert_eq!(redraw(3, &lines), "\x1b[3F\x1b[2Ka\n\x1b[2Kb\n\x1b[J");
    }
}

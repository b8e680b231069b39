//! `revisor simulate`: a Rollout run many times on a simulated clock against synthetic traffic (the
//! Rollout controller itself, from revisor-rollout-controller's `sim`), to see how often it promotes or
//! rolls back, and how fast, before it meets production.

use std::path::Path;

use anyhow::{bail, Context, Result};
use revisor_api::units::parse_go_duration;
use revisor_rollout_controller::sim::{simulate, summarize, Behaviour, Scenario, SimResult};
use serde::Deserialize;
use serde_json::json;

/// The scenario file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScenarioFile {
    /// Requests per second to the service, Poisson.
    rate: f64,
    /// The cap per simulated rollout (Go duration).
    duration: String,
    stable: RevisionFile,
    canary: RevisionFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RevisionFile {
    #[serde(default)]
    error_rate: f64,
    latency: LatencyFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyFile {
    /// Go duration, like 20ms.
    median: String,
    sigma: f64,
}

fn behaviour(r: &RevisionFile, at: &str) -> Result<Behaviour> {
    if !(0.0..=1.0).contains(&r.error_rate) {
        bail!("{at}.errorRate: must be in [0, 1], got {}", r.error_rate);
    }
    let median = parse_go_duration(&r.latency.median).map_err(|e| anyhow::anyhow!("{at}.latency.median: {e}"))?;
    if median.is_zero() {
        bail!("{at}.latency.median: must be more than 0");
    }
    if !(0.0..=5.0).contains(&r.latency.sigma) {
        bail!("{at}.latency.sigma: must be in [0, 5], got {}", r.latency.sigma);
    }
    Ok(Behaviour {
        error_rate: r.error_rate,
        median_ms: median.as_secs_f64() * 1000.0,
        sigma: r.latency.sigma,
    })
}

/// Reads and checks a scenario file; every error names the file and the field.
pub fn scenario(path: &Path) -> Result<Scenario> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let shown = path.display();
    let de = serde_norway::Deserializer::from_str(&text);
    let raw: ScenarioFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        anyhow::anyhow!(
            "{shown}: {}{}",
            if at == "." { String::new() } else { format!("{at}: ") },
            e.inner()
        )
    })?;
    if !(raw.rate.is_finite() && raw.rate > 0.0 && raw.rate <= 100_000.0) {
        bail!(
            "{shown}: rate: must be in (0, 100000] requests per second, got {}",
            raw.rate
        );
    }
    let duration = parse_go_duration(&raw.duration).map_err(|e| anyhow::anyhow!("{shown}: duration: {e}"))?;
    if duration.is_zero() || duration.as_secs() > 7 * 24 * 3600 {
        bail!("{shown}: duration: must be more than 0 and at most 168h");
    }
    Ok(Scenario {
        rate: raw.rate,
        duration: duration.as_secs_f64(),
        stable: behaviour(&raw.stable, &format!("{shown}: stable"))?,
        canary: behaviour(&raw.canary, &format!("{shown}: canary"))?,
    })
}

/// Reads the one Rollout of a manifest file, admitted as the server would.
pub fn rollout(path: &Path) -> Result<revisor_api::Rollout> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let shown = path.display();
    let docs = revisor_api::read_documents(&text).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
    let mut rollouts = Vec::new();
    for doc in docs {
        let kind = doc.value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if kind != "Rollout" {
            continue;
        }
        let r = revisor_api::admit_rollout(&doc.value).map_err(|errs| {
            let lines: Vec<String> = errs.iter().map(|e| format!("  {e}")).collect();
            anyhow::anyhow!("{shown}: document {}:\n{}", doc.index, lines.join("\n"))
        })?;
        rollouts.push(r);
    }
    match rollouts.len() {
        1 => Ok(rollouts.remove(0)),
        0 => bail!("{shown}: no Rollout in the file"),
        n => bail!("{shown}: {n} Rollouts in the file; give one"),
    }
}

/// Runs `seeds` rollouts (seeds 0..seeds) on both cores; results in seed order.
pub fn run_seeds(r: &revisor_api::Rollout, s: &Scenario, seeds: u64) -> Vec<SimResult> {
    let bounds = revisor_gateway::LATENCY_BUCKETS_MS;
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u64;
    let mut results: Vec<SimResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || {
                    (0..seeds)
                        .filter(|seed| seed % workers == w)
                        .map(|seed| simulate(r, s, &bounds, seed))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation thread"))
            .collect()
    });
    results.sort_by_key(|r| r.seed);
    results
}

pub fn run(file: &Path, scenario_file: &Path, seeds: u64, json_out: bool) -> Result<()> {
    if seeds == 0 || seeds > 1_000_000 {
        bail!("--seeds: must be in [1, 1000000], got {seeds}");
    }
    let r = rollout(file)?;
    let s = scenario(scenario_file)?;
    let results = run_seeds(&r, &s, seeds);
    let sum = summarize(&results);
    if json_out {
        for x in &results {
            let line = json!({
                "seed": x.seed,
                "outcome": x.outcome.as_str(),
                "seconds": x.seconds,
                "canaryRequests": x.canary_requests,
                "canaryErrors": x.canary_errors,
                "reason": x.reason,
            });
            println!("{line}");
        }
        let summary = json!({ "summary": {
            "runs": sum.runs,
            "promoted": sum.promoted,
            "rolledBack": sum.rolled_back,
            "undecided": sum.undecided,
            "medianSeconds": sum.median_seconds,
            "medianSecondsToRollback": sum.median_seconds_to_rollback,
            "medianFailedRequestsToRollback": sum.median_errors_to_rollback,
        }});
        println!("{summary}");
        return Ok(());
    }
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let opt = |x: Option<f64>| x.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
    super::table_print(
        &[
            "RUNS",
            "PROMOTED",
            "ROLLED BACK",
            "UNDECIDED",
            "MEDIAN S",
            "MEDIAN S TO ROLLBACK",
            "MEDIAN FAILED TO ROLLBACK",
        ],
        &[vec![
            sum.runs.to_string(),
            pct(sum.promoted),
            pct(sum.rolled_back),
            pct(sum.undecided),
            format!("{:.1}", sum.median_seconds),
            opt(sum.median_seconds_to_rollback),
            opt(sum.median_errors_to_rollback),
        ]],
    );
    let mut reasons: Vec<(String, usize)> = Vec::new();
    for x in results
        .iter()
        .filter(|x| x.outcome != revisor_rollout_controller::sim::Outcome::Promoted)
    {
        let why = shorten(&x.reason);
        match reasons.iter_mut().find(|(r, _)| *r == why) {
            Some((_, n)) => *n += 1,
            None => reasons.push((why, 1)),
        }
    }
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    for (why, n) in reasons.iter().take(5) {
        println!("{n:>6} x {why}");
    }
    Ok(())
}

/// A reason without the names and numbers that differ from run to run, to group runs by it:
/// `rolled back: success-rate is worse`, `analysis failed: latency-p99`, `analysing at %`.
fn shorten(reason: &str) -> String {
    if let Some(i) = reason.find(" is worse") {
        let start = reason[..i].rfind(": ").map(|j| j + 2).unwrap_or(0);
        return format!("rolled back: {} is worse", &reason[start..i]);
    }
    if let Some(i) = reason.find("; last: ") {
        let rest = &reason[i + 8..];
        let metric = rest.split([' ', ',']).next().unwrap_or(rest);
        return format!("rolled back: analysis failed on {metric}");
    }
    let words: Vec<&str> = reason
        .split_whitespace()
        .filter(|w| !w.starts_with("sim-") && !w.chars().any(|c| c.is_ascii_digit()))
        .collect();
    words.join(" ")
}

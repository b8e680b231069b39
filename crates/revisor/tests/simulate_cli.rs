//! `revisor simulate` as a user runs it: a Rollout file and a scenario file in, one JSON object per
//! seed and a summary out (or a table), reproducible by seed; bad scenario files name the field.

mod common;

use common::*;

const ROLLOUT: &str = "apiVersion: revisor.dev/v1alpha1
kind: Rollout
metadata:
  name: web
spec:
  serviceRef:
    name: web
  strategy:
    canary:
      steps:
        - setWeight: 20
        - analysis: {count: 1}
  analysis:
    interval: 10s
    metrics:
      - name: success-rate
        relativeTo: stable
        maxRatio: 1.5
";

fn scenario(canary_errors: f64) -> String {
    format!(
        "rate: 100\nduration: 10m\nstable: {{errorRate: 0.005, latency: {{median: 20ms, sigma: 0.5}}}}\ncanary: {{errorRate: {canary_errors}, latency: {{median: 20ms, sigma: 0.5}}}}\n"
    )
}

fn simulate(dir: &std::path::Path, scenario_text: &str, extra: &[&str]) -> Run {
    let r = write(dir, "rollout.yaml", ROLLOUT);
    let s = write(dir, "scenario.yaml", scenario_text);
    let mut args = vec!["simulate", "-f", r.to_str().unwrap(), "--scenario", s.to_str().unwrap()];
    args.extend_from_slice(extra);
    cli("http://127.0.0.1:1", &args)
}

#[test]
fn simulate_prints_one_object_per_seed_and_a_summary_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let run = simulate(dir.path(), &scenario(0.2), &["--seeds", "20", "-o", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<serde_json::Value> = run.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 21, "{}", run.stdout);
    for (i, l) in lines[..20].iter().enumerate() {
        assert_eq!(l["seed"], i as u64);
        assert_eq!(l["outcome"], "rolledBack", "{l}");
        for k in ["seconds", "canaryRequests", "canaryErrors", "reason"] {
            assert!(!l[k].is_null(), "{k} in {l}");
        }
    }
    let summary = &lines[20]["summary"];
    assert_eq!(summary["rolledBack"], 1.0, "{summary}");
    assert!(summary["medianSeconds"].as_f64().unwrap() < 10.0, "{summary}");
    let again = simulate(dir.path(), &scenario(0.2), &["--seeds", "20", "-o", "json"]);
    assert_eq!(again.stdout, run.stdout, "the same seeds give the same runs");

    let table = simulate(dir.path(), &scenario(0.005), &["--seeds", "10"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.starts_with("RUNS"), "{}", table.stdout);
}

#[test]
fn bad_scenarios_and_flags_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    for (text, want) in [
        ("rate: 10\nduration: 1h\nstable: {errorRate: 0.1, latency: {median: 20ms, sigma: 0.5}}\ncanary: {errorRate: 2, latency: {median: 20ms, sigma: 0.5}}\n", "canary.errorRate: must be in [0, 1]"),
        ("rate: 10\nduration: soon\nstable: {latency: {median: 20ms, sigma: 0.5}}\ncanary: {latency: {median: 20ms, sigma: 0.5}}\n", "duration:"),
        ("rate: 10\nduration: 1h\nstable: {latency: {median: 20ms, sigma: 0.5}}\ncanary: {latency: {median: 20ms, sigma: 0.5}, typo: 1}\n", "canary: unknown field `typo`"),
        ("rate: -1\nduration: 1h\nstable: {latency: {median: 20ms, sigma: 0.5}}\ncanary: {latency: {median: 20ms, sigma: 0.5}}\n", "rate: must be in"),
    ] {
        let run = simulate(dir.path(), text, &["--seeds", "1"]);
        assert_ne!(run.code, 0, "{text}");
        assert!(
            run.stderr.contains("scenario.yaml") && run.stderr.contains(want),
            "{want}: {}",
            run.stderr
        );
    }
    let run = simulate(dir.path(), &scenario(0.0), &["--seeds", "0"]);
    assert!(run.code != 0 && run.stderr.contains("--seeds"), "{}", run.stderr);
}

//! Issue 17: structured logs. `--log-format json` writes one JSON object per line with the event's
//! fields; every decision is one line with its reason (here the autoscaler's, a revision at zero
//! scaled to one by a waiting request, and the Rollout controller's, a step and a promotion); text
//! goes to a pipe without colour escapes.

mod common;

use std::time::Duration;

use common::*;

fn service(version: &str) -> String {
    upstream_service(
        "logged",
        &[("VERSION", version)],
        &[("autoscaling.knative.dev/initial-scale", "0")],
        "",
    )
}

const ROLLOUT: &str = "apiVersion: revisor.dev/v1alpha1
kind: Rollout
metadata:
  name: logged
spec:
  serviceRef:
    name: logged
  strategy:
    canary:
      steps:
        - setWeight: 50
";

/// A server at `format`, logging at info, with a revision at zero that one request wakes, then a
/// Rollout that promotes a second revision in one step; its log.
fn scaled_from_zero(dir: &std::path::Path, format: &str) -> String {
    std::fs::write(dir.join("data.toml"), "[autoscaler]\nallow-zero-initial-scale = true\n").unwrap();
    let server = Server::start_logging(
        &dir.join("data"),
        &[
            "--config",
            dir.join("data.toml").to_str().unwrap(),
            "--log-format",
            format,
        ],
        "info",
    );
    let s = server.admin.clone();
    apply(&s, dir, "rollout.yaml", ROLLOUT);
    apply(&s, dir, "logged.yaml", &service("v1"));
    wait_ready(&s, "logged", &["logged-00001"]);
    let gateway = server.gateway_addr();
    let body = reqwest::blocking::Client::new()
        .get(format!("http://{gateway}/"))
        .header("host", "logged.default.localhost")
        .send()
        .and_then(|r| r.text())
        .unwrap();
    assert!(body.contains("logged-00001"), "{body}");
    wait_until("a scale decision in the log", Duration::from_secs(10), || {
        server.log.lock().unwrap().contains("logged-00001 to 1")
    });
    apply(&s, dir, "logged.yaml", &service("v2"));
    wait_until("the promotion in the log", Duration::from_secs(30), || {
        server.log.lock().unwrap().contains("Promoted")
    });
    let log = server.log.lock().unwrap().clone();
    log
}

#[test]
fn json_logs_carry_each_decision_with_its_fields_and_text_logs_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let json = scaled_from_zero(dir.path(), "json");
    let lines: Vec<serde_json::Value> = json
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let scale = lines
        .iter()
        .find(|v| v["decision"] == "scale" && v["revision"] == "default/logged-00001" && v["replicas"] == 1)
        .unwrap_or_else(|| panic!("no scale decision:\n{json}"));
    assert_eq!(scale["level"], "INFO", "{scale}");
    assert!(
        scale["message"].as_str().unwrap().contains("request(s) waiting"),
        "the reason: {scale}"
    );
    assert!(scale["timestamp"].is_string(), "{scale}");
    for decision in ["Advanced", "Promoted"] {
        let line = lines
            .iter()
            .find(|v| v["decision"] == decision)
            .unwrap_or_else(|| panic!("no {decision} decision:\n{json}"));
        assert_eq!(line["rollout"], "default/logged", "{line}");
        assert!(
            line["message"].as_str().unwrap().contains("logged-00002"),
            "the reason: {line}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let text = scaled_from_zero(dir.path(), "text");
    let line = text
        .lines()
        .find(|l| l.contains("scale default/logged-00001 to 1"))
        .unwrap_or_else(|| panic!("no scale decision:\n{text}"));
    assert!(line.contains("INFO") && line.contains("request(s) waiting"), "{line}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log that is not a terminal:\n{text:?}"
    );
}

//! Table-driven admission tests for Rollouts: each bad manifest is refused with its field path.

use revisor_api::{admit_rollout, read_documents};

fn rollout(spec: &str) -> String {
    format!("apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: web\nspec:\n  serviceRef:\n    name: web\n{spec}")
}

const STEPS: &str =
    "  strategy:\n    canary:\n      steps:\n        - setWeight: 20\n        - pause: {duration: 30s}\n";
const ANALYSIS: &str =
    "  analysis:\n    interval: 10s\n    metrics:\n      - name: success-rate\n        thresholdRange: {min: 99}\n";

fn errors(yaml: &str) -> Vec<String> {
    let docs = read_documents(yaml).expect("test manifest parses");
    match admit_rollout(&docs[0].value) {
        Ok(_) => vec![],
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn valid_rollouts() {
    assert_eq!(errors(&rollout(STEPS)), Vec::<String>::new());
    assert_eq!(errors(&rollout(&format!("{STEPS}{ANALYSIS}"))), Vec::<String>::new());
    let flagger = format!("  strategy:\n    canary:\n      stepWeight: 10\n      maxWeight: 50\n{ANALYSIS}");
    assert_eq!(errors(&rollout(&flagger)), Vec::<String>::new());
    let relative = format!(
        "{STEPS}  analysis:\n    metrics:\n      - {{name: latency, relativeTo: stable, maxRatio: 1.2}}\n      - {{name: success-rate, relativeTo: stable, confidence: 0.95, thresholdRange: {{min: 90}}}}\n"
    );
    assert_eq!(errors(&rollout(&relative)), Vec::<String>::new());
    let ab = "  strategy:\n    canary:\n      steps:\n        - setHeaderRoute: {match: [{headerName: X-Canary, headerValue: {exact: \"yes\"}}, {headerName: User-Agent, headerValue: {regex: \"^beta\"}}]}\n        - setMirrorRoute: {percentage: 50}\n        - pause: {}\n";
    assert_eq!(errors(&rollout(ab)), Vec::<String>::new());
    let bg = format!("  strategy:\n    blueGreen: {{prePromotionAnalysis: {{count: 2}}, autoPromotionSeconds: 30, scaleDownDelaySeconds: 60}}\n{ANALYSIS}");
    assert_eq!(errors(&rollout(&bg)), Vec::<String>::new());
}

#[test]
fn bad_rollouts_are_refused_with_their_paths() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: web\nspec:\n  strategy:\n    canary:\n      steps: [{setWeight: 10}]\n".into(),
            "spec.serviceRef.name",
            "missing",
        ),
        (rollout("  strategy: {}\n"), "spec.strategy.canary", "missing"),
        (rollout("  strategy:\n    canary: {}\n"), "spec.strategy.canary.steps", "give steps"),
        (
            rollout("  strategy:\n    canary:\n      steps: [{setWeight: 10}]\n      stepWeight: 10\n"),
            "spec.strategy.canary.steps",
            "not both",
        ),
        (
            rollout("  strategy:\n    canary:\n      steps: [{setWeight: 120}]\n"),
            "spec.strategy.canary.steps[0].setWeight",
            "[0, 100]",
        ),
        (
            rollout("  strategy:\n    canary:\n      steps: [{setWeight: 10, pause: {}}]\n"),
            "spec.strategy.canary.steps[0]",
            "exactly one of",
        ),
        (
            rollout("  strategy:\n    canary:\n      steps: [{pause: {duration: soon}}]\n"),
            "spec.strategy.canary.steps[0].pause.duration",
            "",
        ),
        (
            rollout("  strategy:\n    canary:\n      steps: [{analysis: {count: 2}}]\n"),
            "spec.strategy.canary.steps[0].analysis",
            "needs spec.analysis",
        ),
        (
            rollout("  strategy:\n    canary:\n      steps: [{setHeaderRoute: {match: [{headerName: x-a, headerValue: {regex: \"(\"}}]}}]\n"),
            "spec.strategy.canary.steps[0].setHeaderRoute.match[0].headerValue.regex",
            "not a regular expression",
        ),
        (
            rollout("  strategy:\n    canary:\n      steps: [{setHeaderRoute: {match: [{headerName: x-a, headerValue: {exact: a, prefix: b}}]}}]\n"),
            "spec.strategy.canary.steps[0].setHeaderRoute.match[0].headerValue",
            "exactly one of",
        ),
        (
            rollout("  strategy:\n    canary:\n      steps: [{setHeaderRoute: {match: [{headerName: \"bad name\", headerValue: {exact: a}}]}}]\n"),
            "spec.strategy.canary.steps[0].setHeaderRoute.match[0].headerName",
            "not a valid HTTP header name",
        ),
        (
            rollout("  strategy:\n    canary:\n      steps: [{setMirrorRoute: {percentage: 150}}]\n"),
            "spec.strategy.canary.steps[0].setMirrorRoute.percentage",
            "[0, 100]",
        ),
        (
            rollout("  strategy:\n    blueGreen: {prePromotionAnalysis: {count: 1}}\n"),
            "spec.analysis",
            "pre- and post-promotion analysis",
        ),
        (
            rollout("  strategy:\n    blueGreen: {}\n    canary:\n      steps: [{setWeight: 5}]\n"),
            "spec.strategy.blueGreen",
            "not both",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: prediction-agreement, agreement: tolerance, thresholdRange: {{min: 99}}}}]\n")),
            "spec.analysis.metrics[0].tolerance",
            "needs a tolerance",
        ),
        (
            rollout("  strategy:\n    canary:\n      stepWeights: [10, 5]\n  analysis:\n    metrics: [{name: success-rate, thresholdRange: {min: 1}}]\n"),
            "spec.strategy.canary.stepWeights[1]",
            "must rise",
        ),
        (
            rollout("  strategy:\n    canary:\n      stepWeight: 10\n"),
            "spec.analysis",
            "give spec.analysis",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: accuracy, thresholdRange: {{min: 1}}}}]\n")),
            "spec.analysis.metrics[0].name",
            "unknown metric \"accuracy\"",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: success-rate}}]\n")),
            "spec.analysis.metrics[0].thresholdRange",
            "give min, max or both",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: latency, percentile: 100, thresholdRange: {{max: 1}}}}]\n")),
            "spec.analysis.metrics[0].percentile",
            "(0, 100)",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    threshold: 2\n    failureLimit: 2\n    metrics: [{{name: error-count, thresholdRange: {{max: 1}}}}]\n")),
            "spec.analysis.failureLimit",
            "not both",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: success-rate, thresholdRange: {{min: 9, max: 1}}}}]\n")),
            "spec.analysis.metrics[0].thresholdRange",
            "above max",
        ),
        (rollout(&format!("{STEPS}  progressDeadline: 0s\n")), "spec.progressDeadline", "greater than 0"),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: latency, relativeTo: baseline, maxRatio: 1.2}}]\n")),
            "spec.analysis.metrics[0].relativeTo",
            "must be \"stable\"",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: latency, relativeTo: stable, confidence: 0.9}}]\n")),
            "spec.analysis.metrics[0].maxRatio",
            "judged by maxRatio",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: success-rate, relativeTo: stable, confidence: 1.5}}]\n")),
            "spec.analysis.metrics[0].confidence",
            "(0.5, 1)",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: error-count, relativeTo: stable, maxRatio: 2}}]\n")),
            "spec.analysis.metrics[0].confidence",
            "two-proportion test",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: latency, maxRatio: 2, thresholdRange: {{max: 1}}}}]\n")),
            "spec.analysis.metrics[0].relativeTo",
            "need relativeTo",
        ),
        (rollout(&format!("{STEPS}  colour: blue\n")), "spec.colour", "unknown field"),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: success-rate, thresholdRange: {{min: 1}}}}]\n    webhooks: [{{name: a, type: pre-promotion, url: \"http://x\"}}]\n")),
            "spec.analysis.webhooks[0].type",
            "must be one of confirm-rollout",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: q, provider: {{prometheus: {{address: \"127.0.0.1:9090\", query: up}}}}, thresholdRange: {{min: 1}}}}]\n")),
            "spec.analysis.metrics[0].provider.prometheus.address",
            "http:// or https://",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: q, provider: {{prometheus: {{address: \"http://p\", query: up}}}}}}]\n")),
            "spec.analysis.metrics[0].thresholdRange",
            "give min, max or both",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: success-rate, thresholdRange: {{min: 1}}}}]\n    loadTest: {{rps: 0, method: PUT, path: probe}}\n")),
            "spec.analysis.loadTest.rps",
            "[1, 10000]",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: success-rate, thresholdRange: {{min: 1}}}}]\n    loadTest: {{method: PUT}}\n")),
            "spec.analysis.loadTest.method",
            "GET or POST",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: success-rate, thresholdRange: {{min: 1}}}}]\n    webhooks: [{{name: a, type: rollout, url: \"ftp://x\"}}]\n")),
            "spec.analysis.webhooks[0].url",
            "http:// or https://",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    method: bayesian\n    metrics: [{{name: success-rate, thresholdRange: {{min: 99}}}}]\n")),
            "spec.analysis.method",
            "sequential or interval",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    maxFalseRollback: 0\n    metrics: [{{name: success-rate, thresholdRange: {{min: 99}}}}]\n")),
            "spec.analysis.maxFalseRollback",
            "(0, 50]",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    onInconclusive: wait\n    inconclusiveAfter: 99999999999999999999h\n    metrics: [{{name: success-rate, thresholdRange: {{min: 99}}}}]\n")),
            "spec.analysis.onInconclusive",
            "hold, rollback or promote",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: success-rate, relativeTo: stable, maxRatio: 1.5, minDifference: lots}}]\n")),
            "spec.analysis.metrics[0].minDifference",
            "not a percentage",
        ),
        (
            rollout(&format!("{STEPS}  analysis:\n    metrics: [{{name: latency, thresholdRange: {{max: 100}}, minDifference: 5ms}}]\n")),
            "spec.analysis.metrics[0].minDifference",
            "relative to stable",
        ),
    ];
    for (yaml, path, msg) in cases {
        let errs = errors(&yaml);
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("{path}:")) && e.contains(msg)),
            "want {path}: ...{msg}... for\n{yaml}\ngot {errs:?}"
        );
    }
}

/// Issue 14 (found here): a Go duration too long for any clock is an error naming the field, not a
/// panic of the handler.
#[test]
fn a_duration_too_long_for_any_clock_is_refused_not_a_panic() {
    for field in ["interval", "inconclusiveAfter"] {
        let yaml = rollout(&format!(
            "{STEPS}  analysis:\n    {field}: 99999999999999999999h\n    metrics: [{{name: success-rate, thresholdRange: {{min: 99}}}}]\n"
        ));
        let errs = errors(&yaml);
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("spec.analysis.{field}:")) && e.contains("longer than")),
            "{errs:?}"
        );
    }
    // Longer than Go allows (int64 nanoseconds, about 292 years), wherever a duration is written.
    let huge = "3000000h";
    let cases = [
        (
            rollout(&format!("  progressDeadline: {huge}
{STEPS}")),
            "spec.progressDeadline",
        ),
        (
            rollout(&format!(
                "  strategy:\n    canary:\n      steps:\n        - setWeight: 20\n        - pause: {{duration: {huge}}}\n"
            )),
            "spec.strategy.canary.steps[1].pause.duration",
        ),
        (
            rollout(&format!("{STEPS}{}", ANALYSIS.replace("10s", huge))),
            "spec.analysis.interval",
        ),
    ];
    for (yaml, path) in cases {
        let errs = errors(&yaml);
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("{path}:")) && e.contains("about 292 years")),
            "want {path} for\n{yaml}\ngot {errs:?}"
        );
    }
}

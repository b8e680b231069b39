//! Conformance with Knative's reference: every example manifest is accepted, and revisor's defaults are Knative's.

use revisor_api::{admit_service, read_documents, Defaults};
use revisor_conformance::{configmap_example, examples};

#[test]
fn every_knative_example_is_accepted_verbatim() {
    let examples = examples();
    assert_eq!(examples.len(), 25, "expected the 25 reference examples");
    let mut failures = Vec::new();
    for (name, text) in &examples {
        let docs = match read_documents(text) {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        for doc in docs {
            if let Err(e) = admit_service(&doc.value, &Defaults::default()) {
                failures.push(format!("{name}: document {}:\n{e}", doc.index));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "refused reference examples:\n{}",
        failures.join("\n")
    );
}

#[test]
fn defaults_match_knatives_config_defaults() {
    let d = Defaults::default();
    let example = configmap_example("defaults.yaml");
    let get = |k: &str| {
        example
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} missing"))
    };
    assert_eq!(get("revision-timeout-seconds"), d.revision_timeout_seconds.to_string());
    assert_eq!(
        get("max-revision-timeout-seconds"),
        d.max_revision_timeout_seconds.to_string()
    );
    assert_eq!(
        get("revision-idle-timeout-seconds"),
        d.revision_idle_timeout_seconds.to_string()
    );
    assert_eq!(get("container-name-template"), d.container_name_template);
    assert_eq!(get("init-container-name-template"), d.init_container_name_template);
    assert_eq!(get("container-concurrency"), d.container_concurrency.to_string());
    assert_eq!(
        get("container-concurrency-max-limit"),
        d.container_concurrency_max_limit.to_string()
    );
    assert_eq!(
        get("allow-container-concurrency-zero"),
        d.allow_container_concurrency_zero.to_string()
    );
    assert_eq!(get("enable-service-links"), d.enable_service_links.unwrap().to_string());
    let autoscaler = configmap_example("autoscaler.yaml");
    let get = |k: &str| {
        autoscaler
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} missing"))
    };
    assert_eq!(get("allow-zero-initial-scale"), d.allow_zero_initial_scale.to_string());
    assert_eq!(get("max-scale-limit"), d.max_scale_limit.to_string());
}

#[test]
fn autoscaler_defaults_equal_knatives_config_autoscaler() {
    let example: std::collections::BTreeMap<String, String> =
        configmap_example("autoscaler.yaml").into_iter().collect();
    let keys: Vec<&str> = example.keys().map(String::as_str).collect();
    let mut ours = revisor_autoscaler::config::KEYS.to_vec();
    ours.sort();
    assert_eq!(keys, ours, "revisor's [autoscaler] keys are Knative's");
    let parsed = revisor_autoscaler::AutoscalerConfig::from_map(&example).expect("Knative's example parses");
    assert_eq!(parsed, revisor_autoscaler::AutoscalerConfig::default());
}

#[test]
fn gc_defaults_equal_knatives_config_gc() {
    let example: std::collections::BTreeMap<String, String> = configmap_example("gc.yaml").into_iter().collect();
    let keys: Vec<&str> = example.keys().map(String::as_str).collect();
    let mut ours = revisor_controller::gc::KEYS.to_vec();
    ours.sort();
    assert_eq!(keys, ours, "revisor's [gc] keys are Knative's");
    let parsed = revisor_controller::gc::GcConfig::from_map(&example).expect("Knative's example parses");
    assert_eq!(parsed, revisor_controller::gc::GcConfig::default());
}

#[test]
fn exported_services_validate_against_knatives_service_crd() {
    use revisor::cli::export::{render, Format};
    use revisor_api::cluster_manifest as clean;
    let schema = revisor_conformance::crd_schema("service.yaml");
    assert!(schema.is_object(), "the service CRD has an openAPIV3Schema");
    let mut checked = 0;
    let mut problems = Vec::new();
    for (name, text) in examples() {
        for doc in revisor_api::read_documents(&text).unwrap() {
            if doc.value["kind"] != "Service" {
                continue;
            }
            let exported = clean(&doc.value);
            for e in revisor_conformance::validate_structural(&schema, &exported) {
                problems.push(format!("{name}: {e}"));
            }
            for e in revisor_conformance::validate_json_schema(&schema, &exported) {
                problems.push(format!("{name} (JSON Schema): {e}"));
            }
            // The Pulumi program declares the very same object.
            let program: serde_json::Value =
                serde_norway::from_str(&render(std::slice::from_ref(&exported), Format::PulumiYaml).unwrap()).unwrap();
            let declared = program["resources"].as_object().unwrap().values().next().unwrap();
            assert_eq!(declared["type"], "kubernetes:apiextensions.k8s.io:CustomResource");
            assert_eq!(declared["properties"], exported, "{name}");
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} services exported");
    assert!(problems.is_empty(), "schema violations:\n{}", problems.join("\n"));
    // And the validator does refuse what the API server would.
    let bad = serde_json::json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "x"},
        "spec": {"template": {"spec": {"containers": [{"image": 3, "colour": "blue"}]}}, "traffic": [{"percent": "ten"}]}});
    let errs = revisor_conformance::validate_structural(&schema, &bad);
    assert!(
        errs.iter()
            .any(|e| e.contains(".spec.template.spec.containers[0].image")),
        "{errs:?}"
    );
    assert!(errs.iter().any(|e| e.contains(".spec.traffic[0].percent")), "{errs:?}");
    let errs = revisor_conformance::validate_json_schema(&schema, &bad);
    assert!(
        errs.iter()
            .any(|e| e.contains("/spec/template/spec/containers/0/image")),
        "{errs:?}"
    );
    assert!(errs.iter().any(|e| e.contains("/spec/traffic/0/percent")), "{errs:?}");
}

#[test]
fn exported_rollouts_validate_against_the_generated_crd() {
    use revisor_api::cluster_manifest as clean;
    let crd = revisor_api::rollout::crd();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let rollouts = [
        "apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata: {name: a, namespace: default}\nspec:\n  serviceRef: {name: web}\n  strategy:\n    canary:\n      steps:\n        - setWeight: 10\n        - pause: {duration: 1m}\n        - setHeaderRoute: {match: [{headerName: X-Canary, headerValue: {exact: \"yes\"}}]}\n        - setMirrorRoute: {percentage: 50}\n        - analysis: {count: 2}\n        - pause: {}\n  analysis:\n    interval: 30s\n    threshold: 2\n    minSamples: 20\n    loadTest: {rps: 20, method: POST, path: /v2/models/m/infer, body: '{}', headers: {content-type: application/json}}\n    metrics:\n      - {name: success-rate, thresholdRange: {min: 99}}\n      - {name: latency, percentile: 99, relativeTo: stable, maxRatio: 1.2}\n      - {name: prediction-agreement, agreement: tolerance, tolerance: 0.001, thresholdRange: {min: 95}}\n      - {name: quality, provider: {prometheus: {address: \"http://p:9090\", query: up}}, thresholdRange: {min: 1}}\n    webhooks:\n      - {name: gate, type: confirm-promotion, url: \"http://h/ok\", timeout: 5s, metadata: {ticket: CHG-1}}\n  progressDeadline: 10m\n  rollbackWindow: 15m\n",
        "apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata: {name: b}\nspec:\n  serviceRef: {name: web}\n  strategy:\n    canary: {stepWeights: [5, 20, 50], maxWeight: 50}\n  analysis:\n    metrics: [{name: error-count, thresholdRange: {max: 5}}]\n",
        "apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata: {name: c}\nspec:\n  serviceRef: {name: web}\n  strategy:\n    blueGreen: {prePromotionAnalysis: {count: 1}, autoPromotionSeconds: 30, postPromotionAnalysis: {count: 1}, scaleDownDelaySeconds: 60}\n  analysis:\n    metrics: [{name: request-rate, thresholdRange: {min: 1}}]\n",
    ];
    for text in rollouts {
        let doc = &revisor_api::read_documents(text).unwrap()[0];
        revisor_api::admit_rollout(&doc.value).expect("a valid Rollout");
        let errs = revisor_conformance::validate_structural(schema, &clean(&doc.value));
        assert!(errs.is_empty(), "{errs:?}\n{text}");
        let errs = revisor_conformance::validate_json_schema(schema, &clean(&doc.value));
        assert!(errs.is_empty(), "JSON Schema: {errs:?}\n{text}");
    }
    // What the controller writes to the status subresource fits the CRD too.
    let mut with_status = clean(&revisor_api::read_documents(rollouts[0]).unwrap()[0].value);
    let status = revisor_api::RolloutStatus {
        phase: revisor_api::rollout::phase::ROLLED_BACK,
        stable_revision: Some("web-00001".into()),
        rejected_revision: Some("web-00002".into()),
        canary_weight: 0,
        current_step: 2,
        failed_checks: 2,
        message: Some("web-00002 rolled back".into()),
        measurements: serde_json::from_value(serde_json::json!([{
            "time": "2026-11-26T21:00:00Z", "revision": "web-00002", "step": 1, "metric": "success-rate",
            "value": 50.0, "thresholdRange": {"min": 99.0}, "samples": 120, "verdict": "Failed"
        }]))
        .unwrap(),
        requests: vec!["retry".into()],
        ..Default::default()
    };
    with_status["status"] = serde_json::to_value(&status).unwrap();
    let errs = revisor_conformance::validate_structural(schema, &with_status);
    assert!(errs.is_empty(), "{errs:?}");
    let errs = revisor_conformance::validate_json_schema(schema, &with_status);
    assert!(errs.is_empty(), "JSON Schema: {errs:?}");
    let bad = serde_json::json!({"apiVersion": "revisor.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "x"},
        "spec": {"serviceRef": {"name": "web"}, "strategy": {"canary": {"steps": [{"setWeight": "ten"}]}}}});
    let errs = revisor_conformance::validate_structural(schema, &bad);
    assert!(
        errs.iter()
            .any(|e| e.contains(".spec.strategy.canary.steps[0].setWeight")),
        "{errs:?}"
    );
    let errs = revisor_conformance::validate_json_schema(schema, &bad);
    assert!(
        errs.iter()
            .any(|e| e.contains("/spec/strategy/canary/steps/0/setWeight")),
        "{errs:?}"
    );
}

/// Issue 16: the OpenAPI v3 schemas the admin API serves for Knative's kinds (generated from
/// revisor's types) document no field that Knative's own CRD schemas lack, and give each field
/// Knative's type: `kubectl explain` and client-side validation see the same shape as on a cluster.
#[test]
fn served_openapi_schemas_agree_with_knatives_crds() {
    use revisor_api::schema::{object, CONFIGURATION, REVISION, SERVICE};
    use serde_json::Value;

    /// Walks `ours` beside `theirs`, noting fields Knative lacks and types that differ.
    fn walk(ours: &Value, theirs: &Value, path: &str, problems: &mut Vec<String>, checked: &mut usize) {
        // Knative leaves some subtrees open (x-kubernetes-preserve-unknown-fields): nothing to compare.
        if theirs.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
            && theirs.get("properties").is_none()
        {
            return;
        }
        let (ty, their_ty) = (ours.get("type"), theirs.get("type"));
        if let (Some(a), Some(b)) = (ty, their_ty) {
            *checked += 1;
            if a != b {
                problems.push(format!("{path}: revisor says {a}, Knative says {b}"));
            }
        }
        if let Some(props) = ours.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                let sub = format!("{path}.{k}");
                match theirs.pointer(&format!("/properties/{k}")) {
                    Some(t) => walk(v, t, &sub, problems, checked),
                    None if theirs.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) => {}
                    None => problems.push(format!("{sub}: not in Knative's schema")),
                }
            }
        }
        if let (Some(a), Some(b)) = (ours.get("items"), theirs.get("items")) {
            walk(a, b, &format!("{path}[]"), problems, checked);
        }
    }

    for (kind, file) in [
        (SERVICE, "service.yaml"),
        (REVISION, "revision.yaml"),
        (CONFIGURATION, "configuration.yaml"),
    ] {
        let theirs = revisor_conformance::crd_schema(file);
        let ours = object(kind, false);
        let (mut problems, mut checked) = (Vec::new(), 0);
        for part in ["spec", "status"] {
            walk(
                &ours["properties"][part],
                &theirs["properties"][part],
                part,
                &mut problems,
                &mut checked,
            );
        }
        assert!(problems.is_empty(), "{}:\n{}", kind.kind, problems.join("\n"));
        assert!(checked > 20, "{}: only {checked} fields compared", kind.kind);
    }
}

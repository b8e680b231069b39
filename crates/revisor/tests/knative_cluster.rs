//! A canary on a real Kubernetes cluster with Knative Serving and revisor's CRD installed
//! (`kubectl apply -f deploy/crd.yaml`). Not run by default: there is no cluster on the build machines,
//! so `cargo test` lists it as ignored. To run it:
//!
//! ```text
//! REVISOR_E2E_KUBECONFIG=~/.kube/config cargo test -p revisor --test knative_cluster -- --ignored
//! ```
//!
//! Optional: `REVISOR_E2E_NAMESPACE` (default `default`), `REVISOR_E2E_IMAGE` (default Knative's
//! helloworld-go sample), `REVISOR_E2E_PROMETHEUS` (a Prometheus scraping the queue-proxies: the
//! Rollout then also judges success-rate). It creates a Service and a Rollout named
//! `revisor-e2e-<pid>` and deletes them at the end.

mod common;

use std::time::Duration;

use common::*;

#[test]
#[ignore = "needs a Kubernetes cluster with Knative Serving: set REVISOR_E2E_KUBECONFIG and pass --ignored"]
fn a_canary_promotes_on_a_real_cluster() {
    let kubeconfig = std::env::var("REVISOR_E2E_KUBECONFIG")
        .ok()
        .filter(|k| !k.is_empty())
        .expect("REVISOR_E2E_KUBECONFIG is not set: it names the kubeconfig of a cluster with Knative Serving");
    let namespace = std::env::var("REVISOR_E2E_NAMESPACE").unwrap_or_else(|_| "default".into());
    let image = std::env::var("REVISOR_E2E_IMAGE").unwrap_or_else(|_| "ghcr.io/knative/helloworld-go:latest".into());
    let prometheus = std::env::var("REVISOR_E2E_PROMETHEUS").ok();
    let name = format!("revisor-e2e-{}", std::process::id());

    let mut args = vec!["--namespace", namespace.as_str()];
    if let Some(p) = &prometheus {
        args.extend(["--prometheus", p.as_str()]);
    }
    let server = KnativeServer::start(std::path::Path::new(&kubeconfig), &args);
    let s = server.admin.as_str();
    let dir = tempfile::tempdir().unwrap();
    let service = |target: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
             spec:\n  template:\n    spec:\n      containers:\n        - image: {image}\n          env:\n            \
             - name: TARGET\n              value: \"{target}\"\n"
        )
    };
    let analysis = if prometheus.is_some() {
        "  analysis:\n    interval: 30s\n    metrics:\n      - name: success-rate\n        thresholdRange: {min: 90}\n"
    } else {
        ""
    };
    let rollout = format!(
        "apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  \
         serviceRef:\n    name: {name}\n  strategy:\n    canary:\n      steps:\n        - setWeight: 50\n        - \
         pause: {{duration: 20s}}\n{analysis}"
    );
    let ns_args = ["-n", namespace.as_str()];
    let status = |key: &str| -> String {
        let out = cli(s, &["get", "rollout", &name, "-n", &namespace, "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["status"][key].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    apply(s, dir.path(), "v1.yaml", &service("v1"));
    apply(s, dir.path(), "rollout.yaml", &rollout);
    wait_until("the first revision becomes stable", Duration::from_secs(300), || {
        status("stableRevision") == format!("{name}-00001")
    });
    apply(s, dir.path(), "v2.yaml", &service("v2"));
    wait_until("the second revision is promoted", Duration::from_secs(600), || {
        status("stableRevision") == format!("{name}-00002")
    });
    assert_eq!(status("phase"), "Succeeded");
    let events = ok(s, &["events", &name, ns_args[0], ns_args[1]]);
    assert!(events.contains("Promoted"), "{events}");
    ok(s, &["delete", "rollout", &name, "-n", &namespace]);
    ok(s, &["delete", "service", &name, "-n", &namespace]);
}

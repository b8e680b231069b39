//! `revisor serve --backend knative` end to end, against a fake Kubernetes API server that plays
//! Knative Serving (crates/revisor-fakekube) and a real Prometheus (Debian's, on loopback) scraping the
//! fake queue-proxies: the CLI applies through revisor's admin API, revisor server-side applies to the
//! cluster through kube-rs, watches it, moves traffic by patching the Knative Service, writes the
//! Rollout's status subresource and Events, and judges canaries on Prometheus' numbers.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use revisor_fakekube::{FakeCluster, MetricNames};
use serde_json::{json, Value};

const KSVC: &str = "serving.knative.dev/v1/services";
const ROLLOUTS: &str = "revisor.dev/v1alpha1/rollouts";
const EVENTS: &str = "events.k8s.io/v1/events";

/// A Knative Service whose container sets `env` (the fake reads FAKE_* from it).
fn ksvc(env: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: model\nspec:\n  template:\n    spec:\n      \
         containers:\n        - image: ghcr.io/example/model:1\n          env:\n",
    );
    for (k, v) in env {
        s.push_str(&format!("            - name: {k}\n              value: \"{v}\"\n"));
    }
    s
}

/// A Rollout `model` of Service `model`: a canary with these `steps` lines, then `rest` of the spec.
fn rollout_yaml(steps: &str, rest: &str) -> String {
    format!(
        "apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: model\nspec:\n  serviceRef:\n    \
         name: model\n  strategy:\n    canary:\n      steps:\n{steps}{rest}"
    )
}

/// Two weights, each analysed on success rate and latency.
fn analysed_rollout() -> String {
    rollout_yaml(
        "        - setWeight: 20
        - analysis: {count: 1}
        - setWeight: 50
        - analysis: {count: 1}
",
        "  analysis:
    interval: 3s
    threshold: 2
    minSamples: 20
    metrics:
      - name: success-rate
        thresholdRange: {min: 95}
      - name: latency
        percentile: 99
        thresholdRange: {max: 250}
",
    )
}
fn rollout(fake: &FakeCluster) -> Value {
    fake.get(ROLLOUTS, "default", "model")
        .expect("the Rollout is in the cluster")
}

fn status_of(fake: &FakeCluster, key: &str) -> String {
    rollout(fake)["status"][key].as_str().unwrap_or("").to_string()
}

/// The Knative Service's `spec.traffic` (`part` "spec") or resolved `status.traffic` ("status") as
/// (revision or "@latest", percent, tag).
fn traffic_in(fake: &FakeCluster, part: &str) -> Vec<(String, u64, String)> {
    let svc = fake.get(KSVC, "default", "model").unwrap();
    svc[part]["traffic"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["revisionName"].as_str().unwrap_or("@latest").to_string(),
                t["percent"].as_u64().unwrap_or(0),
                t["tag"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Where requests go: the Knative Service's resolved `status.traffic`.
fn traffic(fake: &FakeCluster) -> Vec<(String, u64, String)> {
    traffic_in(fake, "status")
}

fn event_reasons(fake: &FakeCluster) -> Vec<String> {
    fake.list(EVENTS, "default")
        .iter()
        .filter(|e| e["regarding"]["kind"] == "Rollout")
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The repository's deploy/ directory.
fn deploy(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_docs(text: &str) -> Vec<Value> {
    revisor_api::read_documents(text)
        .unwrap()
        .into_iter()
        .map(|d| d.value)
        .collect()
}

/// Whether deploy/rbac.yaml lets revisor's service account do `verb` on `resource` (`plural` or
/// `plural/subresource`) of `group` in `namespace`.
fn rbac_allows(rbac: &[Value], verb: &str, group: &str, resource: &str, namespace: &str, name: &str) -> bool {
    rbac.iter()
        .filter(|d| d["kind"] == "ClusterRole" || (d["kind"] == "Role" && d["metadata"]["namespace"] == namespace))
        .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
        .any(|rule| {
            let has = |key: &str, v: &str| rule[key].as_array().is_some_and(|a| a.iter().any(|x| x == v));
            let names_ok = rule["resourceNames"]
                .as_array()
                .is_none_or(|a| a.iter().any(|x| x == name));
            has("apiGroups", group) && has("resources", resource) && has("verbs", verb) && names_ok
        })
}

/// Every request the fake answered is one deploy/rbac.yaml allows.
fn assert_rbac_covers(fake: &FakeCluster) {
    let rbac = yaml_docs(&deploy("rbac.yaml"));
    for (method, uri) in fake.requests() {
        let (path, query) = uri.split_once('?').unwrap_or((&uri, ""));
        if path == "/metrics" {
            continue;
        }
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match parts.as_slice() {
            ["api", _v, rest @ ..] => ("", rest),
            ["apis", g, _v, rest @ ..] => (*g, rest),
            _ => panic!("not an API path: {uri}"),
        };
        let (namespace, resource, name) = match rest {
            [plural] => ("", plural.to_string(), ""),
            ["namespaces", ns, plural] => (*ns, plural.to_string(), ""),
            ["namespaces", ns, plural, name] => (*ns, plural.to_string(), *name),
            ["namespaces", ns, plural, name, sub] => (*ns, format!("{plural}/{sub}"), *name),
            _ => panic!("not a resource path: {uri}"),
        };
        let verb = match (method.as_str(), name.is_empty()) {
            ("GET", true) if query.contains("watch=true") => "watch",
            ("GET", true) => "list",
            ("GET", false) => "get",
            ("POST", _) => "create",
            ("PATCH", _) => "patch",
            ("PUT", _) => "update",
            ("DELETE", _) => "delete",
            _ => panic!("unexpected method {method}"),
        };
        assert!(
            rbac_allows(&rbac, verb, group, &resource, namespace, name),
            "deploy/rbac.yaml does not allow {verb} {group}/{resource} {namespace}/{name} ({method} {uri})"
        );
    }
}

/// A fake cluster with the CRD, whose queue-proxies name their metrics `names`; a Prometheus scraping
/// it; and revisor driving it with that Prometheus.
fn with_prometheus(names: MetricNames) -> (FakeCluster, tempfile::TempDir, Prometheus, KnativeServer) {
    let fake = FakeCluster::start();
    fake.set_metric_names(names);
    install_crd(&fake);
    let dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(fake.addr);
    let server = KnativeServer::start(&fake.kubeconfig(dir.path()), &["--prometheus", &prometheus.address]);
    (fake, dir, prometheus, server)
}

fn install_crd(fake: &FakeCluster) {
    let crd = serde_json::to_value(revisor_api::rollout::crd()).unwrap();
    fake.apply_as("kubectl", "apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        .unwrap();
}

#[test]
fn a_canary_on_knative_promotes_then_rolls_back_through_kube_and_prometheus() {
    let (fake, dir, _prometheus, server) = with_prometheus(MetricNames::OpenCensus);
    let s = server.admin.as_str();

    apply(s, dir.path(), "v1.yaml", &ksvc(&[("VERSION", "1")]));
    apply(s, dir.path(), "rollout.yaml", &analysed_rollout());
    wait_until("model-00001 becomes stable", Duration::from_secs(30), || {
        status_of(&fake, "stableRevision") == "model-00001"
    });
    // The Service went to the cluster by server-side apply as revisor's field manager.
    assert!(fake.requests().iter().any(|(m, p)| m == "PATCH"
        && p.starts_with("/apis/serving.knative.dev/v1/namespaces/default/services/model?")
        && p.contains("fieldManager=revisor")));
    let listed = ok(s, &["get", "revisions"]);
    assert!(listed.contains("model-00001"), "{listed}");
    let described = ok(s, &["describe", "service", "model"]);
    assert!(described.contains("model-00001"), "{described}");

    // v2 is healthy: 20%, analysis, 50%, analysis, promoted.
    apply(s, dir.path(), "v2.yaml", &ksvc(&[("VERSION", "2")]));
    wait_until("model-00002 is the canary", Duration::from_secs(30), || {
        status_of(&fake, "canaryRevision") == "model-00002"
    });
    wait_until("the canary takes 20%", Duration::from_secs(30), || {
        traffic(&fake).contains(&("model-00002".into(), 20, "canary".into()))
    });
    assert!(
        traffic(&fake).contains(&("model-00001".into(), 80, "".into())),
        "{:?}",
        traffic(&fake)
    );
    // As the issue asks: stable by revisionName, the canary as `latestRevision: true` tagged canary.
    let spec = traffic_in(&fake, "spec");
    assert!(spec.contains(&("model-00001".into(), 80, "".into())), "{spec:?}");
    assert!(spec.contains(&("@latest".into(), 20, "canary".into())), "{spec:?}");
    wait_until("model-00002 is promoted", Duration::from_secs(90), || {
        status_of(&fake, "phase") == "Succeeded"
    });
    assert_eq!(status_of(&fake, "stableRevision"), "model-00002");
    // The traffic follows the status write.
    wait_until("all traffic on model-00002", Duration::from_secs(10), || {
        traffic(&fake).contains(&("model-00002".into(), 100, "".into()))
    });
    let r = rollout(&fake);
    let measured: Vec<&Value> = r["status"]["measurements"].as_array().unwrap().iter().collect();
    assert!(
        measured
            .iter()
            .any(|m| m["metric"] == "success-rate" && m["verdict"] == "Successful"),
        "{measured:?}"
    );
    // Judged sequentially (the default method), on counters summed from Prometheus' series: the
    // evidence since the canary started, not one interval's window.
    assert!(
        measured
            .iter()
            .any(|m| m["metric"] == "success-rate"
                && m["comparison"].as_str().is_some_and(|c| c.starts_with("sequential"))),
        "{measured:?}"
    );
    // Events follow the status write.
    wait_until("the Promoted event", Duration::from_secs(10), || {
        event_reasons(&fake).contains(&"Promoted".to_string())
    });

    // v3 fails half its requests: rolled back on success-rate, traffic back on model-00002.
    apply(
        s,
        dir.path(),
        "v3.yaml",
        &ksvc(&[("VERSION", "3"), ("FAKE_ERROR_RATE", "0.5")]),
    );
    wait_until("model-00003 is rolled back", Duration::from_secs(90), || {
        status_of(&fake, "phase") == "RolledBack"
    });
    assert_eq!(status_of(&fake, "rejectedRevision"), "model-00003");
    let message = status_of(&fake, "message");
    assert!(message.contains("success-rate"), "{message}");
    // The sequential verdict: the 5xx since the canary started, against the tolerance.
    assert!(message.contains("success-rate is worse: 5xx: "), "{message}");
    wait_until("all traffic back on model-00002", Duration::from_secs(10), || {
        traffic(&fake).contains(&("model-00002".into(), 100, "".into()))
    });
    let t = traffic(&fake);
    assert!(t.contains(&("model-00002".into(), 100, "".into())), "{t:?}");
    assert!(!t.iter().any(|(r, p, _)| r == "model-00003" && *p > 0), "{t:?}");
    wait_until("the AnalysisFailed event", Duration::from_secs(10), || {
        event_reasons(&fake).contains(&"AnalysisFailed".to_string())
    });
    // The CLI reads the same through revisor's admin API.
    let status = ok(s, &["rollout", "status", "model"]);
    assert!(status.contains("RolledBack"), "{status}");
    let events = ok(s, &["events", "model"]);
    assert!(
        events.contains("Promoted") && events.contains("AnalysisFailed"),
        "{events}"
    );
    // deploy/rbac.yaml allows every call revisor made.
    assert_rbac_covers(&fake);
    // Status is written when it changes, not every step: a few writes per phase of the rollout.
    let status_writes = fake
        .requests()
        .iter()
        .filter(|(m, p)| m == "PUT" && p.contains("/rollouts/model/status"))
        .count();
    assert!(status_writes <= 60, "{status_writes} status writes for two rollouts");
    // Every status write went to the status subresource.
    assert!(fake.requests().iter().any(
        |(m, p)| m == "PUT" && p.starts_with("/apis/revisor.dev/v1alpha1/namespaces/default/rollouts/model/status")
    ));
}

#[test]
fn conflicts_are_reported_unsupported_routes_refused_and_bad_manifests_change_nothing() {
    let fake = FakeCluster::start();
    install_crd(&fake);
    let dir = tempfile::tempdir().unwrap();
    let server = KnativeServer::start(&fake.kubeconfig(dir.path()), &[]);
    let s = server.admin.as_str();

    // Someone else owns the template: revisor reports the conflict and does not force it.
    let theirs: Value = serde_json::to_value(
        revisor_api::read_documents(&ksvc(&[("OWNER", "kubectl")])).unwrap()[0]
            .value
            .clone(),
    )
    .unwrap();
    let mut theirs = theirs;
    theirs["metadata"]["namespace"] = json!("default");
    fake.apply_as("kubectl", KSVC, theirs).unwrap();
    let before = fake.get(KSVC, "default", "model").unwrap();
    let spec_and_generation = |v: &Value| (v["spec"].clone(), v["metadata"]["generation"].clone());
    let file = write(dir.path(), "mine.yaml", &ksvc(&[("OWNER", "revisor")]));
    let run = cli(s, &["apply", "-f", file.to_str().unwrap()]);
    assert_ne!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("conflict with \"kubectl\"") && run.stderr.contains(".spec.template"),
        "{}",
        run.stderr
    );
    let after = fake.get(KSVC, "default", "model").unwrap();
    // (Knative's status writes go on; the spec is as kubectl left it.)
    assert_eq!(spec_and_generation(&before), spec_and_generation(&after));
    assert_eq!(
        after["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "kubectl"
    );
    // Asked to, revisor takes the field, as `kubectl apply --server-side --force-conflicts` would.
    ok(s, &["apply", "--force-conflicts", "-f", file.to_str().unwrap()]);
    let taken = fake.get(KSVC, "default", "model").unwrap();
    assert_eq!(
        taken["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "revisor"
    );
    let run = cli(s, &["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(run.code, 0, "revisor owns the template now: {}", run.stderr);

    // An invalid Service never reaches the cluster, and the error names the field.
    let bad = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: other\nspec:\n  template:\n    spec:\n      \
         containers:\n        - image: x\n          ports:\n            - containerPort: 99999\n",
    );
    let run = cli(s, &["apply", "-f", bad.to_str().unwrap()]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("containerPort"), "{}", run.stderr);
    assert!(fake.get(KSVC, "default", "other").is_none());

    // Header routes and mirroring cannot be said in Knative's traffic block: refused with the reason.
    let ab = &rollout_yaml(
        "        - setHeaderRoute:
            match:
              - headerName: x-beta
                headerValue: {exact: \"1\"}
        - setWeight: 50
",
        "",
    );
    apply(s, dir.path(), "ab.yaml", ab);
    wait_until("the Rollout is refused", Duration::from_secs(30), || {
        status_of(&fake, "phase") == "Failed"
    });
    let message = status_of(&fake, "message");
    assert!(message.contains("routes by header"), "{message}");
    assert!(message.contains("kourier.ingress.networking.knative.dev"), "{message}");
    wait_until("the Refused event", Duration::from_secs(10), || {
        event_reasons(&fake).contains(&"Refused".to_string())
    });
    // Without --prometheus, built-in analysis metrics are refused too (not judged on nothing).
    apply(s, dir.path(), "rollout.yaml", &analysed_rollout());
    wait_until("the analysing Rollout is refused", Duration::from_secs(30), || {
        status_of(&fake, "message").contains("--prometheus")
    });

    // Deletes go to the cluster; Knative takes the revisions with the Service.
    ok(s, &["delete", "rollout", "model"]);
    ok(s, &["delete", "service", "model"]);
    assert!(fake.get(ROLLOUTS, "default", "model").is_none());
    assert!(fake.get(KSVC, "default", "model").is_none());
    let run = cli(s, &["delete", "service", "model"]);
    assert!(run.code != 0 && run.stderr.contains("not found"), "{}", run.stderr);

    // An operator's request goes into the cluster's Rollout: a canary paused until promoted.
    let paused = &rollout_yaml(
        "        - setWeight: 30
        - pause: {}
",
        "",
    );
    apply(s, dir.path(), "v1.yaml", &ksvc(&[("VERSION", "1")]));
    apply(s, dir.path(), "paused.yaml", paused);
    wait_until("model-00001 becomes stable", Duration::from_secs(30), || {
        status_of(&fake, "stableRevision") == "model-00001"
    });
    apply(s, dir.path(), "v2.yaml", &ksvc(&[("VERSION", "2")]));
    wait_until("the canary pauses at 30%", Duration::from_secs(30), || {
        status_of(&fake, "phase") == "Paused" && traffic(&fake).contains(&("model-00002".into(), 30, "canary".into()))
    });
    ok(s, &["rollout", "promote", "model"]);
    wait_until("promoted by the operator", Duration::from_secs(30), || {
        status_of(&fake, "phase") == "Succeeded" && status_of(&fake, "stableRevision") == "model-00002"
    });

    // A Rollout changed mid-canary into one the cluster cannot run: refused, the canary rejected and
    // all traffic back on stable, since nothing would judge the canary any more.
    apply(s, dir.path(), "v3.yaml", &ksvc(&[("VERSION", "3")]));
    wait_until("model-00003 pauses at 30%", Duration::from_secs(30), || {
        status_of(&fake, "phase") == "Paused" && traffic(&fake).contains(&("model-00003".into(), 30, "canary".into()))
    });
    apply(s, dir.path(), "ab-again.yaml", ab);
    wait_until("refused mid-canary", Duration::from_secs(30), || {
        status_of(&fake, "phase") == "Failed"
    });
    assert_eq!(status_of(&fake, "rejectedRevision"), "model-00003");
    wait_until("all traffic back on model-00002", Duration::from_secs(10), || {
        traffic(&fake) == vec![("model-00002".to_string(), 100, String::new())]
    });
    // Fixed and retried, the canary runs again.
    apply(s, dir.path(), "paused.yaml", paused);
    ok(s, &["rollout", "retry", "model"]);
    wait_until("model-00003 is retried", Duration::from_secs(30), || {
        status_of(&fake, "phase") == "Paused" && traffic(&fake).contains(&("model-00003".into(), 30, "canary".into()))
    });
    assert_rbac_covers(&fake);
}

#[test]
fn the_deploy_manifests_match_the_binary() {
    // deploy/crd.yaml is what `revisor crd` prints.
    assert_eq!(
        deploy("crd.yaml"),
        ok("http://127.0.0.1:1", &["crd"]),
        "regenerate: revisor crd > deploy/crd.yaml"
    );
    // The Deployment's arguments are ones `revisor` takes: with them (and no cluster) it gets as far as
    // looking for the in-cluster service account.
    let docs = yaml_docs(&deploy("deployment.yaml"));
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(&args[..3], ["serve", "--backend", "knative"]);
    // The token comes from the Secret mounted where --admin-token-file points.
    let at = args
        .iter()
        .position(|a| a == "--admin-token-file")
        .expect("the Deployment passes a token file");
    let mounts = container["volumeMounts"]
        .as_array()
        .expect("the token's volume is mounted");
    let secret_dir = mounts[0]["mountPath"].as_str().unwrap();
    assert_eq!(args[at + 1], format!("{secret_dir}/admin-token"));
    let volume = &deployment["spec"]["template"]["spec"]["volumes"][0];
    assert_eq!(volume["name"], mounts[0]["name"]);
    assert_eq!(volume["secret"]["secretName"], "revisor-admin-token");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "a-token-from-the-secret-0123456789\n").unwrap();
    let mut args = args.clone();
    args[at + 1] = token_file.to_string_lossy().into_owned();
    // The data dir (the admin API's CA) is an emptyDir volume, writable whatever the root filesystem.
    let data_at = args
        .iter()
        .position(|a| a == "--data-dir")
        .expect("the Deployment passes a data dir");
    let data_mount = mounts
        .iter()
        .find(|m| m["mountPath"] == args[data_at + 1].as_str())
        .expect("the data dir is mounted");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    assert!(volumes
        .iter()
        .any(|v| v["name"] == data_mount["name"] && v["emptyDir"].is_object()));
    args[data_at + 1] = dir.path().join("data").to_string_lossy().into_owned();
    // The certificate covers the Service's name, for clients inside the cluster.
    let san = args
        .iter()
        .position(|a| a == "--admin-tls-san")
        .expect("the Deployment names its Service");
    assert_eq!(args[san + 1], "revisor.revisor-system.svc");
    // Probes speak HTTPS, as the admin API does.
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    let out = Command::new(BIN)
        .args(&args)
        .env_remove("KUBECONFIG")
        .env("HOME", "/nonexistent")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("kubeconfig"), "{stderr}");
    assert!(!stderr.contains("Usage:"), "the arguments are not revisor's: {stderr}");
    assert_eq!(deployment["spec"]["template"]["spec"]["serviceAccountName"], "revisor");
    // The service account the Deployment runs as is the one the RBAC binds.
    let rbac = yaml_docs(&deploy("rbac.yaml"));
    assert!(rbac
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding")
        .any(|b| b["subjects"][0]["name"] == "revisor"
            && b["subjects"][0]["namespace"] == deployment["metadata"]["namespace"]));
}

/// Knative 1.19+ names its queue-proxy metrics after OpenTelemetry (seconds, status codes): a canary
/// slower than the Rollout allows is rolled back on latency read from those series.
#[test]
fn opentelemetry_metric_names_of_knative_1_19_judge_a_slow_canary() {
    let (fake, dir, _prometheus, server) = with_prometheus(MetricNames::OpenTelemetry);
    let s = server.admin.as_str();
    apply(s, dir.path(), "v1.yaml", &ksvc(&[("VERSION", "1")]));
    apply(s, dir.path(), "rollout.yaml", &analysed_rollout());
    wait_until("model-00001 becomes stable", Duration::from_secs(30), || {
        status_of(&fake, "stableRevision") == "model-00001"
    });
    apply(
        s,
        dir.path(),
        "v2.yaml",
        &ksvc(&[("VERSION", "2"), ("FAKE_LATENCY_MS", "600")]),
    );
    wait_until("the slow canary is rolled back", Duration::from_secs(90), || {
        status_of(&fake, "phase") == "RolledBack"
    });
    let message = status_of(&fake, "message");
    assert!(message.contains("latency"), "{message}");
    let r = rollout(&fake);
    let latency = r["status"]["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "latency-p99" && m["verdict"] == "Failed")
        .cloned()
        .expect("a failed latency measurement");
    // 600 ms lands in OpenTelemetry's 0.5-0.75 s bucket: read in ms, p99 interpolates within it.
    let value = latency["value"].as_f64().unwrap();
    assert!((500.0..=750.0).contains(&value), "{latency}");
    wait_until("all traffic back on model-00001", Duration::from_secs(10), || {
        traffic(&fake).contains(&("model-00001".into(), 100, "".into()))
    });
}

/// Bad flags and clusters revisor cannot drive are named, and nothing starts.
#[test]
fn bad_flags_and_unusable_clusters_are_named() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "revisor {args:?} started");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&["serve", "--prometheus", "http://127.0.0.1:9090"]);
    assert!(err.contains("--prometheus needs --backend knative"), "{err}");
    let err = run(&[
        "serve",
        "--backend",
        "knative",
        "--kubeconfig",
        "/nonexistent/kubeconfig",
    ]);
    assert!(err.contains("/nonexistent/kubeconfig"), "{err}");
    let err = run(&["serve", "--backend", "kubernetes"]);
    assert!(
        err.contains("invalid value 'kubernetes'") && err.contains("knative"),
        "{err}"
    );

    // A cluster without revisor's CRD: the error says how to install it.
    let fake = FakeCluster::start();
    fake.remove_resource(ROLLOUTS);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.kubeconfig(dir.path());
    let err = run(&[
        "serve",
        "--backend",
        "knative",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    assert!(
        err.contains("rollouts") && err.contains("revisor crd | kubectl apply -f -"),
        "{err}"
    );
    // A cluster without Knative Serving.
    let fake = FakeCluster::start();
    fake.remove_resource(KSVC);
    let kubeconfig = fake.kubeconfig(dir.path());
    let err = run(&[
        "serve",
        "--backend",
        "knative",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    assert!(err.contains("is Knative Serving installed?"), "{err}");
}

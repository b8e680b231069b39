//! End to end: the real `revisor` binary as server and as CLI, on loopback, with a real data dir.

mod common;

use common::{cli, ok, write, Server, BIN};

const REFERENCE: &str = "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: ai-model-service
  namespace: knative-serving
spec:
  template:
    spec:
      containers:
        - image: gcr.io/my-project/my-model:v1
          resources:
            requests: {cpu: 100m, memory: 256Mi}
            limits: {cpu: 200m, memory: 512Mi}
  traffic:
    - latestRevision: true
      percent: 100
";

#[test]
fn reference_manifest_revisions_and_restart_after_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let v1 = write(tmp.path(), "v1.yaml", REFERENCE);
    let v2 = write(tmp.path(), "v2.yaml", &REFERENCE.replace("my-model:v1", "my-model:v2"));
    let gateway = format!("127.0.0.1:{}", common::free_port());
    let server = Server::start_on(&data, &gateway);
    let s = server.admin.clone();

    assert_eq!(
        ok(&s, &["apply", "-f", v1.to_str().unwrap()]),
        "service/ai-model-service created\n"
    );
    let revs = ok(&s, &["get", "revisions", "-n", "knative-serving"]);
    assert!(revs.starts_with("NAME "), "{revs}");
    for col in [
        "SERVICE",
        "TRAFFIC",
        "TAGS",
        "GENERATION",
        "REPLICAS",
        "AGE",
        "CONDITIONS",
        "READY",
        "REASON",
    ] {
        assert!(
            revs.lines().next().unwrap().contains(col),
            "missing column {col}: {revs}"
        );
    }
    assert!(revs.contains("ai-model-service-00001"), "{revs}");
    assert_eq!(
        ok(&s, &["apply", "-f", v2.to_str().unwrap()]),
        "service/ai-model-service configured\n"
    );
    assert_eq!(
        ok(&s, &["apply", "-f", v2.to_str().unwrap()]),
        "service/ai-model-service unchanged\n"
    );
    let revs = ok(&s, &["get", "revisions", "-n", "knative-serving"]);
    assert!(
        revs.contains("ai-model-service-00002") && !revs.contains("-00003"),
        "{revs}"
    );
    let svcs = ok(&s, &["get", "services", "-n", "knative-serving"]);
    let port = gateway.rsplit(':').next().unwrap();
    assert!(
        svcs.contains(&format!("http://ai-model-service.knative-serving.localhost:{port}")),
        "{svcs}"
    );
    assert!(
        svcs.lines().next().unwrap().split_whitespace().eq([
            "NAME",
            "URL",
            "LATEST",
            "AGE",
            "CONDITIONS",
            "READY",
            "REASON"
        ]),
        "{svcs}"
    );

    let snapshot = |s: &str| {
        (
            ok(s, &["get", "services", "-A", "-o", "json"]),
            ok(s, &["get", "revisions", "-A", "-o", "json"]),
            ok(
                s,
                &["events", "ai-model-service", "-n", "knative-serving", "-o", "json"],
            ),
        )
    };
    let before = snapshot(&s);
    server.kill9();
    let server = Server::start_on(&data, &gateway);
    let after = snapshot(&server.admin);
    assert_eq!(before, after, "state after kill -9 and restart differs");
    let svc: serde_json::Value = serde_json::from_str(&after.0).unwrap();
    assert_eq!(svc["items"][0]["metadata"]["generation"], 2);
    let events: serde_json::Value = serde_json::from_str(&after.2).unwrap();
    assert!(events["items"].as_array().unwrap().len() >= 4, "{events}");
}

#[test]
fn bad_manifests_name_file_document_and_field_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let s = server.admin.as_str();
    let good = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: good\nspec:\n  template:\n    spec:\n      containers:\n        - image: img\n";
    let bad = good.replace("name: good", "name: bad").replace(
        "        - image: img\n",
        "        - image: img\n  traffic:\n    - latestRevision: true\n      percent: 50\n",
    );
    let file = write(tmp.path(), "mixed.yaml", &format!("{good}---\n{bad}"));
    let r = cli(s, &["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("mixed.yaml: document 2 (service/bad)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("spec.traffic: traffic targets sum to 50, want 100"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("nothing was applied"), "{}", r.stderr);
    assert_eq!(
        ok(s, &["get", "services"]),
        "No services found.\n",
        "the good document must not be applied either"
    );

    let typo = write(
        tmp.path(),
        "typo.yaml",
        &good.replace("- image: img", "- image: img\n          imagePullPolcy: Always"),
    );
    let r = cli(s, &["apply", "-f", typo.to_str().unwrap()]);
    assert!(r.stderr.contains("typo.yaml: document 1:\n  spec.template.spec.containers[0].imagePullPolcy: unknown field \"imagePullPolcy\""), "{}", r.stderr);

    let broken = write(tmp.path(), "broken.yaml", "apiVersion: v1\nkind: [\n");
    let r = cli(s, &["apply", "-f", broken.to_str().unwrap()]);
    assert!(
        r.code == 1 && r.stderr.contains("broken.yaml: document 1: invalid YAML"),
        "{}",
        r.stderr
    );

    let r = cli(s, &["apply", "-f", "/nonexistent/x.yaml"]);
    assert!(
        r.code == 1 && r.stderr.contains("/nonexistent/x.yaml: cannot read"),
        "{}",
        r.stderr
    );

    let r = cli(
        s,
        &[
            "apply",
            "-n",
            "other",
            "-f",
            write(
                tmp.path(),
                "ns.yaml",
                &good.replace("name: good", "name: good\n  namespace: prod"),
            )
            .to_str()
            .unwrap(),
        ],
    );
    assert!(
        r.code == 1 && r.stderr.contains("does not match the namespace given with -n (other)"),
        "{}",
        r.stderr
    );

    let r = cli(s, &["get", "widgets"]);
    assert_eq!(r.code, 2, "clap refuses unknown kinds: {}", r.stderr);
    assert!(r.stderr.contains("invalid value 'widgets'"), "{}", r.stderr);
    assert_eq!(ok(s, &["get", "services"]), "No services found.\n");
}

#[test]
fn the_cli_says_plainly_when_no_server_listens() {
    // Bind and drop a listener to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = cli(&format!("http://127.0.0.1:{port}"), &["get", "services"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&format!(
            "cannot reach the revisor server at http://127.0.0.1:{port}: nothing is listening there"
        )),
        "{}",
        r.stderr
    );
}

#[test]
fn traffic_tags_describe_and_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let s = server.admin.as_str();
    let m = |image: &str| {
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n        - image: IMG\n".replace("IMG", image)
    };
    ok(
        s,
        &["apply", "-f", write(tmp.path(), "a.yaml", &m("a")).to_str().unwrap()],
    );
    ok(
        s,
        &["apply", "-f", write(tmp.path(), "b.yaml", &m("b")).to_str().unwrap()],
    );
    let out = ok(
        s,
        &[
            "traffic",
            "web",
            "--traffic",
            "web-00001=30",
            "--tag",
            "web-00001=stable",
        ],
    );
    assert!(out.contains("service/web traffic updated"), "{out}");
    let svc: serde_json::Value = serde_json::from_str(&ok(s, &["get", "service", "web", "-o", "json"])).unwrap();
    assert_eq!(
        svc["spec"]["traffic"],
        serde_json::json!([
            { "latestRevision": true, "percent": 70 },
            { "tag": "stable", "revisionName": "web-00001", "latestRevision": false, "percent": 30 }
        ])
    );
    let r = cli(s, &["traffic", "web", "--traffic", "web-00009=10,@latest=90"]);
    assert!(
        r.code == 1 && r.stderr.contains("revision \"web-00009\" does not exist"),
        "{}",
        r.stderr
    );
    ok(s, &["traffic", "web", "--untag", "stable", "--traffic", "@latest=100"]);
    let svc: serde_json::Value = serde_json::from_str(&ok(s, &["get", "service", "web", "-o", "json"])).unwrap();
    assert_eq!(
        svc["spec"]["traffic"],
        serde_json::json!([{ "latestRevision": true, "percent": 100 }])
    );

    let d = ok(s, &["describe", "service", "web"]);
    assert!(d.contains("web-00002") && d.contains("RoutesReady"), "{d}");
    let ev = ok(s, &["events", "web"]);
    assert!(ev.contains("Created Revision \"web-00002\""), "{ev}");

    assert_eq!(
        ok(s, &["delete", "revision", "web-00001"]),
        "revision/web-00001 deleted\n"
    );
    assert_eq!(ok(s, &["delete", "service", "web"]), "service/web deleted\n");
    assert_eq!(ok(s, &["get", "revisions"]), "No revisions found.\n");
    let r = cli(s, &["delete", "service", "web"]);
    assert!(r.code == 1 && r.stderr.contains("not found"), "{}", r.stderr);
}

#[test]
fn export_writes_knative_yaml_and_pulumi_programs_that_declare_the_same_service() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write(
        dir.path(),
        "svc.yaml",
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: model\n  labels: {team: ml}\nspec:\n  template:\n    metadata:\n      annotations: {autoscaling.knative.dev/target: \"10\"}\n    spec:\n      containers:\n        - image: example.com/model:v1\n          env: [{name: ON, value: \"true\"}]\n  traffic:\n    - {latestRevision: true, percent: 100}\n---\napiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: model\nspec:\n  serviceRef: {name: model}\n  strategy:\n    canary:\n      steps: [{setWeight: 10}, {pause: {}}]\n",
    );
    let f = manifest.to_str().unwrap();
    let run = |format: &str| {
        let out = std::process::Command::new(BIN)
            .args(["export", "-f", f, "--format", format])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let knative: Vec<serde_json::Value> = revisor_api::read_documents(&run("knative"))
        .unwrap()
        .into_iter()
        .map(|d| d.value)
        .collect();
    assert_eq!(knative.len(), 2);
    assert_eq!(knative[0]["metadata"]["namespace"], "default");
    assert_eq!(knative[0]["spec"]["traffic"][0]["percent"], 100);
    assert_eq!(knative[1]["kind"], "Rollout");
    assert!(revisor_api::admit_service(&knative[0], &revisor_api::Defaults::default()).is_ok());

    let program: serde_json::Value = serde_norway::from_str(&run("pulumi-yaml")).unwrap();
    assert_eq!(program["runtime"], "yaml");
    let svc = &program["resources"]["service-default-model"];
    assert_eq!(svc["type"], "kubernetes:apiextensions.k8s.io:CustomResource");
    assert_eq!(
        svc["properties"], knative[0],
        "the Pulumi YAML declares the same Service"
    );

    // The Python program: parse it, and read back each CustomResource call's arguments.
    let py = write(dir.path(), "__main__.py", &run("pulumi-python"));
    let python = std::env::var("REVISOR_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import ast, json, sys
tree = ast.parse(open(sys.argv[1]).read())
calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "CustomResource"]
out = []
for c in calls:
    kw = {k.arg: ast.literal_eval(k.value) for k in c.keywords}
    out.append({"name": ast.literal_eval(c.args[0]), "apiVersion": kw["api_version"], "kind": kw["kind"], "metadata": kw["metadata"], "spec": kw["spec"]})
print(json.dumps(out))
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(&py)
        .output()
        .unwrap_or_else(|e| panic!("{python} is needed to check the Python program ({e}): run ./scripts/test.sh"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let calls: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(calls.len(), 2);

    // From the server: the stored Service and its Rollout, without anything the server manages.
    let server = Server::start(&dir.path().join("data"));
    ok(&server.admin, &["apply", "-f", f]);
    let stored: Vec<serde_json::Value> = revisor_api::read_documents(&ok(&server.admin, &["export", "model"]))
        .unwrap()
        .into_iter()
        .map(|d| d.value)
        .collect();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(stored[0].get("status").is_none() && stored[0]["metadata"].get("uid").is_none());
    assert_eq!(stored[1]["kind"], "Rollout");
    assert_eq!(calls[0]["name"], "service-default-model");
    for (call, object) in calls.iter().zip(&knative) {
        for k in ["apiVersion", "kind", "metadata", "spec"] {
            assert_eq!(call[k], object[k], "the Python program declares the same {k}");
        }
    }
}

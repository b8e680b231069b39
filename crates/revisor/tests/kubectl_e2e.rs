//! Issue 16 (first part): kubectl, a Kubernetes client nobody here wrote, finds revisor's kinds by
//! the API's discovery and reads, lists and deletes them on the admin address. kubectl must be
//! installed (the machine image has 1.32); the test fails, not skips, without it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{apply, upstream_service, wait_ready, Server};

/// Runs kubectl with `args` (and no kubeconfig of the user's); whether it succeeded, and its output.
fn run_kubectl(args: &[String]) -> (bool, String) {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", "/dev/null")
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl is needed for this test and could not run ({e}): install kubectl 1.27 or later")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// kubectl's flags for the server: its token and CA (no kubeconfig), and a discovery cache of its own.
fn flags(admin: &str, data: &Path) -> Vec<String> {
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    vec![
        format!("--server={admin}"),
        format!("--token={}", token.trim()),
        format!("--certificate-authority={}", data.join("tls/ca.crt").display()),
        format!("--cache-dir={}", data.join("kubectl-cache").display()),
    ]
}

/// kubectl against the server with `args`.
fn kubectl(server: &Server, data: &Path, args: &[&str]) -> (bool, String) {
    let mut all = flags(&server.admin, data);
    all.extend(args.iter().map(|a| a.to_string()));
    run_kubectl(&all)
}

#[test]
fn kubectl_discovers_gets_and_deletes_revisors_kinds() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let run = |args: &[&str]| {
        let (ok, out) = kubectl(&server, &data, args);
        assert!(ok, "kubectl {args:?} failed:\n{out}");
        out
    };

    let version = run(&["version"]);
    assert!(version.contains("Server Version: v1.32.0+revisor."), "{version}");
    // kubectl asks for aggregated discovery first and, answered, needs no request per group version.
    let requests = run(&["api-resources", "-v=6"]);
    assert!(requests.contains("/apis?timeout"), "{requests}");
    assert!(!requests.contains("/apis/serving.knative.dev/v1?"), "{requests}");
    let resources = run(&["api-resources"]);
    for want in [
        ["services", "kservice,ksvc", "serving.knative.dev/v1", "true", "Service"],
        ["rollouts", "ro", "revisor.dev/v1alpha1", "true", "Rollout"],
    ] {
        assert!(
            resources.lines().any(|l| l.split_whitespace().eq(want.iter().copied())),
            "{want:?} not in:\n{resources}"
        );
    }

    apply(
        &server.admin,
        tmp.path(),
        "hello.yaml",
        &upstream_service("hello", &[], &[], ""),
    );
    wait_ready(&server.admin, "hello", &["hello-00001"]);
    let services = run(&["get", "ksvc"]);
    assert!(services.lines().any(|l| l.starts_with("hello ")), "{services}");
    let url = run(&[
        "get",
        "ksvc",
        "hello",
        "--subresource=status",
        "-o",
        "jsonpath={.status.url}",
    ]);
    assert!(url.starts_with("http://hello.default."), "{url}");
    let yaml = run(&["get", "ksvc", "hello", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Service") && yaml.contains("latestCreatedRevisionName: hello-00001"),
        "{yaml}"
    );
    // The events revisor records, as core v1 Events, with kubectl's columns.
    let events = run(&["get", "events"]);
    assert!(
        events
            .lines()
            .next()
            .is_some_and(|h| h.starts_with("LAST SEEN") && h.contains("OBJECT")),
        "{events}"
    );
    assert!(
        events
            .lines()
            .any(|l| l.contains("Created") && l.contains("service/hello")),
        "{events}"
    );
    let v1 = run(&[
        "get",
        "events.v1.events.k8s.io",
        "--field-selector",
        "regarding.kind=Service",
        "-o",
        "jsonpath={.items[*].note}",
    ]);
    assert!(v1.contains("Created Service"), "{v1}");
    let mine = run(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=Revision",
        "-o",
        "name",
    ]);
    assert!(
        !mine.trim().is_empty() && mine.lines().all(|l| l.starts_with("event/hello.")),
        "{mine}"
    );
    let rollouts = run(&["get", "ro"]);
    assert!(rollouts.contains("No resources found"), "{rollouts}");
    let revisions = run(&["get", "rev", "-o", "name"]);
    assert_eq!(revisions.trim(), "revision.serving.knative.dev/hello-00001");
    let (ok, missing) = kubectl(&server, &data, &["get", "ksvc", "nope"]);
    assert!(!ok && missing.contains("not found"), "{missing}");

    // A server-side dry run deletes nothing (kubectl sends it in the DeleteOptions body).
    let rehearsed = run(&["delete", "ksvc", "hello", "--dry-run=server"]);
    assert!(rehearsed.contains("deleted (server dry run)"), "{rehearsed}");
    run(&["get", "ksvc", "hello"]);
    run(&["get", "rev", "hello-00001"]);
    let deleted = run(&["delete", "ksvc", "hello"]);
    assert!(deleted.contains("\"hello\" deleted"), "{deleted}");
    let after = run(&["get", "ksvc"]);
    assert!(after.contains("No resources found"), "{after}");
}

/// kubectl's apply, both ways, and patch, validate and explain: it reads the OpenAPI v3 documents,
/// sees that the server validates fields, and sends what Kubernetes would get.
#[test]
fn kubectl_applies_patches_validates_and_explains() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let kubectl = |args: &[&str]| kubectl(&server, &data, args);
    let run = |args: &[&str]| {
        let (ok, out) = kubectl(args);
        assert!(ok, "kubectl {args:?} failed:\n{out}");
        out
    };
    let file = |name: &str, text: &str| common::write(tmp.path(), name, text).display().to_string();
    let generation = || run(&["get", "ksvc", "hello", "-o", "jsonpath={.metadata.generation}"]);

    let explained = run(&["explain", "ksvc.spec.traffic"]);
    assert!(
        explained.contains("KIND:       Service") && explained.contains("revisionName\t<string>"),
        "{explained}"
    );
    assert!(explained.contains("The share of the Service's traffic"), "{explained}");
    let rollout_doc = run(&["explain", "rollouts.spec"]);
    assert!(rollout_doc.contains("serviceRef"), "{rollout_doc}");

    // Client-side apply: a create, then a three-way JSON merge patch.
    let v1 = file("v1.yaml", &upstream_service("hello", &[("GREETING", "one")], &[], ""));
    assert!(run(&["apply", "-f", &v1]).contains("service.serving.knative.dev/hello created"));
    let last = run(&["get", "ksvc", "hello", "-o", "yaml"]);
    assert!(
        last.contains("kubectl.kubernetes.io/last-applied-configuration"),
        "{last}"
    );
    let waited = run(&["wait", "--for=condition=Ready", "ksvc/hello", "--timeout=30s"]);
    assert!(waited.contains("condition met"), "{waited}");
    // `get` prints revisor's columns (a Table from the server); `get -w` streams a watch.
    let table = run(&["get", "ksvc"]);
    let head: Vec<&str> = table.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        head,
        ["NAME", "URL", "LATEST", "AGE", "CONDITIONS", "READY", "REASON"],
        "{table}"
    );
    // A kubectl that follows what a command prints, line by line.
    let follow = |args: &[&str]| {
        let mut child = Command::new("kubectl")
            .args(flags(&server.admin, &data))
            .args(args)
            .env("KUBECONFIG", "/dev/null")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (kept, out) = (seen.clone(), child.stdout.take().unwrap());
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                kept.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        (child, seen, reader)
    };
    let (watching, seen, reader) = follow(&["get", "revisions", "-w"]);
    let (events, events_seen, events_reader) = follow(&["get", "events", "-w", "--watch-only"]);
    common::wait_until("kubectl get -w lists hello-00001", Duration::from_secs(20), || {
        seen.lock().unwrap().contains("hello-00001")
    });
    let v2 = file("v2.yaml", &upstream_service("hello", &[("GREETING", "two")], &[], ""));
    assert!(run(&["apply", "-f", &v2]).contains("configured"));
    assert_eq!(generation(), "2");
    common::wait_until(
        "kubectl get -w sees hello-00002 become Ready",
        Duration::from_secs(30),
        || {
            seen.lock()
                .unwrap()
                .lines()
                .any(|l| l.starts_with("hello-00002") && l.contains(" True"))
        },
    );
    // `get events -w`: the events recorded after it started, as they are recorded.
    common::wait_until(
        "kubectl get events -w sees revision hello-00002 made",
        Duration::from_secs(30),
        || {
            events_seen
                .lock()
                .unwrap()
                .lines()
                .any(|l| l.contains("revision/hello-00002") && l.contains("Created"))
        },
    );
    assert!(
        !events_seen.lock().unwrap().contains("revision/hello-00001"),
        "--watch-only shows nothing from before it started: {}",
        events_seen.lock().unwrap()
    );
    for (mut child, reader) in [(watching, reader), (events, events_reader)] {
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
    }
    wait_ready(&server.admin, "hello", &["hello-00002"]);
    // Moving from client-side to server-side apply with the same manifest conflicts over nothing: the
    // defaults the server filled in are no one's change.
    let moved = run(&["apply", "--server-side", "-f", &v2]);
    assert!(moved.contains("serverside-applied"), "{moved}");

    // Unknown fields: refused by default (kubectl asks for Strict), dropped with a warning on request.
    let bad = upstream_service("hello", &[("GREETING", "three")], &[], "")
        .replace("        - image:", "        - colour: red\n          image:");
    let bad = file("bad.yaml", &bad);
    let (ok, refused) = kubectl(&["apply", "-f", &bad]);
    assert!(
        !ok && refused.contains("spec.template.spec.containers[0].colour: unknown field \"colour\""),
        "{refused}"
    );
    assert_eq!(generation(), "2", "a refused apply changes nothing");
    let warned = run(&["apply", "-f", &bad, "--validate=warn"]);
    assert!(
        warned.contains("Warning: unknown field \"spec.template.spec.containers[0].colour\""),
        "{warned}"
    );
    assert_eq!(generation(), "3");

    // Patches: merge and JSON; a strategic merge patch is refused as Kubernetes refuses it for
    // custom resources.
    run(&[
        "patch",
        "ksvc",
        "hello",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"team":"a"}}}"#,
    ]);
    run(&[
        "patch",
        "ksvc",
        "hello",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/tier","value":"b"}]"#,
    ]);
    let labels = run(&[
        "get",
        "ksvc",
        "hello",
        "-o",
        "jsonpath={.metadata.labels.team},{.metadata.labels.tier}",
    ]);
    assert_eq!(labels, "a,b");
    let (ok, strategic) = kubectl(&["patch", "ksvc", "hello", "-p", r#"{"metadata":{"labels":{"x":"y"}}}"#]);
    assert!(!ok && strategic.contains("--type=merge"), "{strategic}");
    let (ok, missing) = kubectl(&[
        "patch",
        "ksvc",
        "hello",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/labels/nope"}]"#,
    ]);
    assert!(!ok && missing.contains("/metadata/labels/nope"), "{missing}");

    // Server-side apply, and two field managers that disagree on the traffic: 409, naming the other.
    let split = "  traffic:\n    - revisionName: hello-00001\n      percent: 50\n    - revisionName: hello-00002\n      percent: 50\n";
    let ssa = file(
        "ssa.yaml",
        &upstream_service("hello", &[("GREETING", "three")], &[], split),
    );
    // The client-side applies above set the traffic (to its default) as an update: taking it over is
    // a conflict, as in Kubernetes, until forced.
    let (ok, taken) = kubectl(&["apply", "--server-side", "--field-manager=team-a", "-f", &ssa]);
    assert!(
        !ok && taken.contains("conflict with \"kubectl-client-side-apply\""),
        "{taken}"
    );
    let applied = run(&[
        "apply",
        "--server-side",
        "--field-manager=team-a",
        "--force-conflicts",
        "-f",
        &ssa,
    ]);
    assert!(applied.contains("serverside-applied"), "{applied}");
    let other = upstream_service(
        "hello",
        &[("GREETING", "three")],
        &[],
        &split.replace("50", "40").replacen("40", "60", 1),
    );
    let other = file("other.yaml", &other);
    let (ok, conflict) = kubectl(&["apply", "--server-side", "--field-manager=team-b", "-f", &other]);
    assert!(
        !ok && conflict.contains("conflict") && conflict.contains("team-a"),
        "{conflict}"
    );
    run(&[
        "apply",
        "--server-side",
        "--field-manager=team-b",
        "--force-conflicts",
        "-f",
        &other,
    ]);
    let percents = run(&["get", "ksvc", "hello", "-o", "jsonpath={.spec.traffic[*].percent}"]);
    assert_eq!(percents, "60 40");

    // Field by field, as Kubernetes merges: an apply of a label alone keeps everything else, and two
    // managers that disagree on it conflict, on that field.
    let label = |owner: &str| {
        format!("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\n  labels:\n    owner: {owner}\n")
    };
    let a = file("label-a.yaml", &label("a"));
    run(&["apply", "--server-side", "--field-manager=labeller-a", "-f", &a]);
    let b = file("label-b.yaml", &label("b"));
    let (ok, conflict) = kubectl(&["apply", "--server-side", "--field-manager=labeller-b", "-f", &b]);
    assert!(
        !ok && conflict.contains("conflict with \"labeller-a\": .metadata.labels.owner"),
        "{conflict}"
    );
    let kept = run(&[
        "get",
        "ksvc",
        "hello",
        "-o",
        "jsonpath={.metadata.labels.owner} {.spec.traffic[*].percent} {.spec.template.spec.containers[0].env[0].value}",
    ]);
    assert_eq!(kept, "a 60 40 three");
    let managers = run(&[
        "get",
        "ksvc",
        "hello",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    for m in ["kubectl-client-side-apply", "team-b", "labeller-a"] {
        assert!(managers.split_whitespace().any(|x| x == m), "{m} not in {managers}");
    }
}

/// `revisor kubeconfig` prints what kubectl needs (the https URL, the CA, the token): with it,
/// kubectl needs no flags.
#[test]
fn kubectl_works_with_the_kubeconfig_revisor_prints() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    apply(
        &server.admin,
        tmp.path(),
        "hello.yaml",
        &upstream_service("hello", &[], &[], ""),
    );
    wait_ready(&server.admin, "hello", &["hello-00001"]);
    let config = common::ok(&server.admin, &["kubeconfig"]);
    assert!(
        config.contains("certificate-authority-data:") && config.contains(&format!("server: {}", server.admin)),
        "{config}"
    );
    let path = tmp.path().join("kubeconfig");
    std::fs::write(&path, &config).unwrap();
    let args = ["--kubeconfig", path.to_str().unwrap(), "get", "ksvc", "-o", "name"];
    let (ok, text) = run_kubectl(&args.map(String::from));
    assert!(ok, "{text}");
    assert_eq!(text.trim(), "service.serving.knative.dev/hello");
    // Without a token for the address there is nothing to print, and it says so.
    let elsewhere = tempfile::tempdir().unwrap();
    let r = Command::new(common::BIN)
        .args(["kubeconfig", "--server", &server.admin])
        .env("XDG_CONFIG_HOME", elsewhere.path())
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("no admin token for"),
        "{r:?}"
    );
}

/// Issue 16: the same API over a cluster (`revisor serve --backend knative`, here against the fake
/// API server): kubectl lists revisor's kinds, from the cluster's API server with its version, and
/// `get -w` relays the cluster's watch, so a Service applied through revisor appears in it.
#[test]
fn kubectl_lists_and_watches_through_the_knative_backend() {
    let fake = revisor_fakekube::FakeCluster::start();
    let crd = serde_json::to_value(revisor_api::rollout::crd()).unwrap();
    fake.apply_as("kubectl", "apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = common::KnativeServer::start(&fake.kubeconfig(dir.path()), &["--namespace", "default"]);
    let args = |extra: &[&str]| {
        let mut all = flags(&server.admin, server.data());
        all.extend(extra.iter().map(|a| a.to_string()));
        all
    };
    let (ok, empty) = run_kubectl(&args(&[
        "get",
        "--raw",
        "/apis/serving.knative.dev/v1/namespaces/default/services",
    ]));
    assert!(ok, "{empty}");
    let list: serde_json::Value = serde_json::from_str(&empty).unwrap();
    assert!(
        list["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "a list from the cluster says its version: {list}"
    );
    let mut watching = Command::new("kubectl")
        .args(args(&["get", "ksvc", "-w"]))
        .env("KUBECONFIG", "/dev/null")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (kept, out) = (seen.clone(), watching.stdout.take().unwrap());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                kept.lock().unwrap().push_str(&(line + "\n"));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let manifest = dir.path().join("ksvc.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: relayed\nspec:\n  template:\n    spec:\n      containers:\n        - image: ghcr.io/example/model:v1\n",
    )
    .unwrap();
    let (ok, applied) = run_kubectl(&args(&["apply", "--server-side", "-f", manifest.to_str().unwrap()]));
    assert!(ok, "{applied}");
    common::wait_until(
        "kubectl get ksvc -w shows the new service",
        Duration::from_secs(20),
        || seen.lock().unwrap().lines().any(|l| l.starts_with("relayed ")),
    );
    assert!(fake
        .get("serving.knative.dev/v1/services", "default", "relayed")
        .is_some());
    let (ok, listed) = run_kubectl(&args(&["get", "ksvc"]));
    assert!(ok && listed.lines().any(|l| l.starts_with("relayed ")), "{listed}");
    // Only the namespace this revisor works in (`--namespace`), with revisor's own credentials.
    let (ok, elsewhere) = run_kubectl(&args(&["get", "ksvc", "-n", "kube-system"]));
    assert!(!ok && elsewhere.contains("not watched"), "{elsewhere}");
    watching.kill().unwrap();
    watching.wait().unwrap();
    reader.join().unwrap();
}

//! Issue 16 (first part): kubectl, a Kubernetes client nobody here wrote, finds revisor's kinds by
//! the API's discovery and reads, lists and deletes them on the admin address. kubectl must be
//! installed (the machine image has 1.32); the test fails, not skips, without it.

mod common;

use std::path::Path;
use std::process::Command;

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

/// kubectl against the server, with its token and CA as flags (no kubeconfig).
fn kubectl(server: &Server, data: &Path, args: &[&str]) -> (bool, String) {
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let mut all = vec![
        format!("--server={}", server.admin),
        format!("--token={}", token.trim()),
        format!("--certificate-authority={}", data.join("tls/ca.crt").display()),
    ];
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
    let url = run(&["get", "ksvc", "hello", "-o", "jsonpath={.status.url}"]);
    assert!(url.starts_with("http://hello.default."), "{url}");
    let yaml = run(&["get", "ksvc", "hello", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Service") && yaml.contains("latestCreatedRevisionName: hello-00001"),
        "{yaml}"
    );
    let rollouts = run(&["get", "ro"]);
    assert!(rollouts.contains("No resources found"), "{rollouts}");
    let revisions = run(&["get", "rev", "-o", "name"]);
    assert_eq!(revisions.trim(), "revision.serving.knative.dev/hello-00001");
    let (ok, missing) = kubectl(&server, &data, &["get", "ksvc", "nope"]);
    assert!(!ok && missing.contains("not found"), "{missing}");

    let deleted = run(&["delete", "ksvc", "hello"]);
    assert!(deleted.contains("\"hello\" deleted"), "{deleted}");
    let after = run(&["get", "ksvc"]);
    assert!(after.contains("No resources found"), "{after}");
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

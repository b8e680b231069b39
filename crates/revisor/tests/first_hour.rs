//! Issue 12's everyday commands against a real server: re-creating a service under the same name,
//! traffic set by `revisor traffic` surviving an apply, commands that would misroute a Rollout's
//! traffic or delete a revision in use, services created at zero, `apply --wait`, and the examples.

mod common;

use std::time::Duration;

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
        - setWeight: 10
        - pause: {}
";

fn json(server: &str, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&ok(server, &a)).unwrap()
}

fn status_of(v: &serde_json::Value, kind: &str) -> (String, String) {
    let c = v["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .cloned()
        .unwrap_or_default();
    (
        c["status"].as_str().unwrap_or("").into(),
        c["reason"].as_str().unwrap_or("").into(),
    )
}

/// Where each of `n` requests through the gateway went (the test upstream answers its revision's name).
async fn answers(server: &Server, host: &str, n: usize) -> Vec<String> {
    let c = http_client();
    let mut out = Vec::new();
    for _ in 0..n {
        match get(&c, server.gateway_addr(), host, &[]).await {
            Ok((200, body)) => out.push(body.trim().to_string()),
            Ok((code, body)) => out.push(format!("{code} {}", body.trim())),
            Err(e) => out.push(e),
        }
    }
    out
}

/// Applies `name` v1 then v2 and waits for each to take the traffic; the v2 manifest's path.
fn two_revisions(s: &str, dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    apply(s, dir, "v1.yaml", &upstream_service(name, &[("V", "1")], &[], ""));
    wait_ready(s, name, &[&format!("{name}-00001")]);
    let v2 = write(dir, "v2.yaml", &upstream_service(name, &[("V", "2")], &[], ""));
    ok(s, &["apply", "-f", v2.to_str().unwrap()]);
    wait_ready(s, name, &[&format!("{name}-00002")]);
    v2
}

/// Sends one request that takes `ms` to answer, in the background.
fn slow_request(server: &Server, host: &str, ms: u64) -> std::thread::JoinHandle<String> {
    let (addr, host) = (server.gateway_addr(), host.to_string());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET /?sleep_ms={ms} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_deleted_mid_request_and_applied_again_at_once_works_fully() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    let manifest = upstream_service("again", &[], &[], "");
    apply(&s, dir.path(), "again.yaml", &manifest);
    wait_ready(&s, "again", &["again-00001"]);
    let inflight = slow_request(&server, "again.default.localhost", 2000);
    std::thread::sleep(Duration::from_millis(300));
    ok(&s, &["delete", "service", "again"]);
    apply(&s, dir.path(), "again.yaml", &manifest);
    wait_ready(&s, "again", &["again-00001"]);
    assert!(
        inflight.join().unwrap().starts_with("HTTP/1.1 200"),
        "the acknowledged request finished"
    );
    // After the old replica has drained and stopped, the new revision still has its replica.
    std::thread::sleep(Duration::from_millis(2500));
    let rev = json(&s, &["get", "revision", "again-00001"]);
    assert_eq!(rev["status"]["actualReplicas"], 1, "{rev:#}");
    assert_eq!(status_of(&rev, "Ready").0, "True", "{rev:#}");
    let got = answers(&server, "again.default.localhost", 5).await;
    assert!(got.iter().all(|a| a == "again-00001"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_starts_afresh_when_its_service_is_made_again_and_routing_matches_status() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    let v1 = upstream_service("web", &[("VERSION", "1")], &[], "");
    apply(&s, dir.path(), "v1.yaml", &v1);
    apply(&s, dir.path(), "rollout.yaml", ROLLOUT);
    wait_ready(&s, "web", &["web-00001"]);
    let v2 = upstream_service("web", &[("VERSION", "2")], &[], "");
    apply(&s, dir.path(), "v2.yaml", &v2);
    wait_until("the canary at 10%", Duration::from_secs(30), || {
        json(&s, &["get", "rollout", "web"])["status"]["canaryWeight"] == 10
    });
    let inflight = slow_request(&server, "web.default.localhost", 1500);
    std::thread::sleep(Duration::from_millis(200));
    ok(&s, &["delete", "service", "web"]);
    apply(&s, dir.path(), "v1.yaml", &v1);
    wait_ready(&s, "web", &["web-00001"]);
    inflight.join().unwrap();
    wait_until(
        "the Rollout to take web-00001 as stable",
        Duration::from_secs(30),
        || {
            let r = json(&s, &["get", "rollout", "web"]);
            r["status"]["stableRevision"] == "web-00001" && r["status"]["canaryRevision"].is_null()
        },
    );
    std::thread::sleep(Duration::from_millis(2000));
    let svc = service_json(&s, "web");
    let routed: Vec<_> = svc["status"]["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["percent"].as_i64().unwrap_or(0) > 0)
        .map(|t| t["revisionName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(routed, ["web-00001"], "{svc:#}");
    let got = answers(&server, "web.default.localhost", 20).await;
    assert!(got.iter().all(|a| a == "web-00001"), "routing equals status: {got:?}");
}

#[test]
fn traffic_set_by_the_traffic_command_survives_an_apply_that_does_not_declare_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    let v2 = two_revisions(&s, dir.path(), "hello");
    let v2 = v2.to_str().unwrap();
    ok(
        &s,
        &[
            "traffic",
            "hello",
            "--traffic",
            "hello-00001=90,@latest=10",
            "--tag",
            "hello-00001=old",
        ],
    );
    let before = service_json(&s, "hello")["spec"]["traffic"].clone();
    assert_eq!(before.as_array().unwrap().len(), 2, "{before:#}");
    let out = ok(&s, &["apply", "-f", v2]);
    assert!(out.contains("service/hello unchanged"), "{out}");
    let svc = service_json(&s, "hello");
    assert_eq!(svc["spec"]["traffic"], before, "apply kept what `revisor traffic` set");
    // Each manager's fields are recorded; the traffic is the traffic command's alone.
    let owners: Vec<&str> = svc["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.pointer("/fieldsV1/f:spec/f:traffic").is_some())
        .map(|e| e["manager"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["revisor-traffic"], "{svc:#}");

    // A manifest that declares other traffic conflicts with the traffic command's, unless forced.
    let declared = upstream_service(
        "hello",
        &[("V", "2")],
        &[],
        "  traffic:\n    - latestRevision: true\n      percent: 100\n",
    );
    let declared = write(dir.path(), "declared.yaml", &declared);
    let declared = declared.to_str().unwrap();
    let r = cli(&s, &["apply", "-f", declared]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stderr.contains("revisor-traffic") && r.stderr.contains("--force-conflicts"),
        "{}",
        r.stderr
    );
    assert_eq!(
        service_json(&s, "hello")["spec"]["traffic"],
        before,
        "a conflict changes nothing"
    );
    let out = ok(&s, &["apply", "--force-conflicts", "-f", declared]);
    assert!(out.contains("configured"), "{out}");
    let svc = service_json(&s, "hello");
    assert_eq!(svc["spec"]["traffic"].as_array().unwrap().len(), 1, "{svc:#}");
    assert_eq!(svc["metadata"]["managedFields"][0]["manager"], "revisor");
}

#[test]
fn commands_that_would_misroute_traffic_are_refused_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    two_revisions(&s, dir.path(), "web");

    // Deleting a revision that traffic reaches is refused, and the message says what reaches it.
    ok(&s, &["traffic", "web", "--traffic", "web-00001=50,@latest=50"]);
    for (rev, why) in [("web-00001", "sends it 50%"), ("web-00002", "latest ready revision")] {
        let r = cli(&s, &["delete", "revision", rev]);
        assert_ne!(r.code, 0, "{}", r.stdout);
        assert!(
            r.stderr.contains(why) && r.stderr.contains("--force"),
            "{rev}: {}",
            r.stderr
        );
        assert!(json(&s, &["get", "revision", rev])["metadata"]["name"] == rev);
    }

    // A Rollout owns its service's traffic: `revisor traffic` is refused, naming it.
    ok(&s, &["traffic", "web", "--traffic", "@latest=100"]);
    apply(&s, dir.path(), "rollout.yaml", ROLLOUT);
    wait_until("the Rollout to take a stable", Duration::from_secs(30), || {
        json(&s, &["get", "rollout", "web"])["status"]["stableRevision"] == "web-00002"
    });
    let r = cli(&s, &["traffic", "web", "--traffic", "web-00001=100"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stderr.contains("Rollout \"web\"") && r.stderr.contains("revisor rollout"),
        "{}",
        r.stderr
    );
    let r = cli(&s, &["delete", "revision", "web-00002"]);
    assert!(
        r.code != 0 && r.stderr.contains("Rollout \"web\"'s stable revision"),
        "{}",
        r.stderr
    );

    // With --force the unreferenced old revision goes; undo to it is then refused.
    ok(&s, &["delete", "revision", "web-00001", "--force"]);
    let r = cli(&s, &["rollout", "undo", "web", "--to-revision", "web-00001"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_with_initial_scale_zero_is_ready_without_a_replica_until_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[autoscaler]\nallow-zero-initial-scale = true\n";
    let server = Server::start_with(&dir.path().join("data"), "127.0.0.1:0", Some(config));
    let s = server.admin.clone();
    let manifest = upstream_service("lazy", &[], &[("autoscaling.knative.dev/initial-scale", "0")], "");
    let file = write(dir.path(), "lazy.yaml", &manifest);
    let out = ok(&s, &["apply", "--wait", "-f", file.to_str().unwrap()]);
    assert!(
        out.contains("service/lazy ready at http://lazy.default.localhost"),
        "{out}"
    );
    let rev = json(&s, &["get", "revision", "lazy-00001"]);
    assert_eq!(status_of(&rev, "Ready").0, "True", "{rev:#}");
    assert_eq!(rev["status"]["actualReplicas"], 0, "{rev:#}");
    let logs = dir.path().join("data/logs/default/lazy-00001");
    assert!(!logs.exists(), "no replica was ever started");
    let got = answers(&server, "lazy.default.localhost", 1).await;
    assert_eq!(got, ["lazy-00001"]);
    wait_until("a replica after the request", Duration::from_secs(10), || {
        json(&s, &["get", "revision", "lazy-00001"])["status"]["actualReplicas"] == 1
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wait_returns_when_the_service_answers_or_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    let file = write(
        dir.path(),
        "ok.yaml",
        &upstream_service("quick", &[("START_DELAY_MS", "300")], &[], ""),
    );
    let out = ok(&s, &["apply", "--wait", "-f", file.to_str().unwrap()]);
    assert!(out.contains("service/quick created"), "{out}");
    let port = server.gateway_addr().port();
    assert!(
        out.contains(&format!("service/quick ready at http://quick.default.localhost:{port}")),
        "{out}"
    );
    assert_eq!(answers(&server, "quick.default.localhost", 1).await, ["quick-00001"]);

    let bad = write(
        dir.path(),
        "bad.yaml",
        &upstream_service("broken", &[("EXIT_AT_START", "3")], &[], ""),
    );
    let r = cli(
        &s,
        &["apply", "--wait", "--timeout", "20s", "-f", bad.to_str().unwrap()],
    );
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains("service/broken created"), "{}", r.stdout);
    assert!(
        r.stderr.contains("service/broken") && r.stderr.contains("broken-00001") && r.stderr.contains("ExitCode3"),
        "{}",
        r.stderr
    );
    let r = cli(
        &s,
        &["apply", "--wait", "--timeout", "soon", "-f", bad.to_str().unwrap()],
    );
    assert!(r.code != 0 && r.stderr.contains("--timeout"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_example_serves_a_greeting_and_nothing_of_the_servers_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/hello-python.yaml");
    ok(&s, &["apply", "--wait", "-f", example]);
    let c = http_client();
    let (code, body) = get(&c, server.gateway_addr(), "hello.default.localhost", &[])
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(body.starts_with("Hello from hello-00001"), "{body}");
    for path in ["/revisor.redb", "/data/revisor.redb", "/../", "/Cargo.toml"] {
        let req = hyper::Request::builder()
            .uri(format!("http://{}{path}", server.gateway_addr()))
            .header("host", "hello.default.localhost")
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = c.request(req).await.unwrap();
        let code = resp.status().as_u16();
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(
            !body.contains("Directory listing") && !body.contains("revisor.redb") && !body.contains("[workspace]"),
            "{path}: {code} {body}"
        );
    }
}

//! End to end through the gateway: real `revisor serve`, real replica processes, real HTTP on loopback.

mod common;

use std::time::Duration;

use common::{apply, cli, ok, service_json, upstream_service, wait_ready, wait_until, Load, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_70_30_split_lands_70_30_and_tags_reach_their_revision() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let s = server.admin.clone();
    apply(
        &s,
        tmp.path(),
        "v1.yaml",
        &upstream_service("web", &[("V", "1")], &[], ""),
    );
    wait_ready(&s, "web", &["web-00001"]);
    let split = "  traffic:\n    - revisionName: web-00001\n      percent: 70\n      tag: stable\n    - latestRevision: true\n      percent: 30\n      tag: candidate\n";
    apply(
        &s,
        tmp.path(),
        "v2.yaml",
        &upstream_service("web", &[("V", "2")], &[], split),
    );
    wait_ready(&s, "web", &["web-00001", "web-00002"]);

    let gw = server.gateway_addr();
    let c = common::http_client();
    let mut first = 0;
    for _ in 0..5000 {
        let (status, body) = common::get(&c, gw, "web.default.localhost", &[]).await.unwrap();
        assert_eq!(status, 200, "{body}");
        if body == "web-00001\n" {
            first += 1;
        }
    }
    let share = first as f64 / 5000.0 * 100.0;
    assert!(
        (share - 70.0).abs() <= 3.0,
        "web-00001 got {share:.1}% of 5000 requests, want 70 ± 3"
    );

    let v = service_json(&s, "web");
    let url = |tag: &str| {
        v["status"]["traffic"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tag"] == tag)
            .unwrap()["url"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        url("candidate"),
        format!("http://candidate-web.default.localhost:{}", gw.port())
    );
    for _ in 0..20 {
        assert_eq!(
            common::get(&c, gw, "candidate-web.default.localhost", &[])
                .await
                .unwrap()
                .1,
            "web-00002\n"
        );
        assert_eq!(
            common::get(&c, gw, "stable-web.default.localhost", &[])
                .await
                .unwrap()
                .1,
            "web-00001\n"
        );
        assert_eq!(
            common::get(&c, gw, "web.default.localhost", &[("Knative-Serving-Tag", "candidate")])
                .await
                .unwrap()
                .1,
            "web-00002\n"
        );
    }
    let (status, body) = common::get(&c, gw, "nothing.default.localhost", &[]).await.unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("nothing.default.localhost"), "{body}");

    let metrics = reqwest_text(&s, "/metrics").await;
    assert!(
        metrics.contains("revision_name=\"web-00002\",tag=\"candidate\",response_code_class=\"2xx\"} 40"),
        "{metrics}"
    );
    let logs = ok(&s, &["logs", "web-00002"]);
    assert!(
        logs.contains("[replica-1] revisor-test-upstream web-00002 listening"),
        "{logs}"
    );
}

async fn reqwest_text(server: &str, path: &str) -> String {
    let (url, token) = (format!("{server}{path}"), common::token(server));
    tokio::task::spawn_blocking(move || {
        let ca = std::fs::read(revisor::auth::ca_path(&url).unwrap()).unwrap();
        reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap()
            .get(url)
            .bearer_auth(token)
            .send()
            .unwrap()
            .text()
            .unwrap()
    })
    .await
    .unwrap()
}

fn run_cli(s: &str, args: &[&str]) {
    let r = cli(s, args);
    assert_eq!(r.code, 0, "revisor {args:?}: {}{}", r.stdout, r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_changes_new_revisions_and_deletions_drop_no_request() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let s = server.admin.clone();
    let apply_version =
        |name: &str, v: &str| apply(&s, tmp.path(), name, &upstream_service("moving", &[("V", v)], &[], ""));
    apply_version("v1.yaml", "1");
    wait_ready(&s, "moving", &["moving-00001"]);
    let load = Load::start(server.gateway_addr(), "moving.default.localhost", 4, 80);

    apply_version("v2.yaml", "2"); // a new revision takes all traffic once ready
    wait_ready(&s, "moving", &["moving-00002"]);
    let splits = [
        10, 50, 0, 90, 30, 100, 0, 20, 70, 0, 60, 40, 100, 5, 95, 0, 80, 25, 75, 0,
    ];
    for (i, p) in splits.iter().enumerate() {
        let s2 = s.clone();
        let arg = format!("moving-00001={p},@latest={}", 100 - p);
        tokio::task::spawn_blocking(move || run_cli(&s2, &["traffic", "moving", "--traffic", &arg]))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(if i % 4 == 0 { 700 } else { 250 })).await;
    }
    apply_version("v3.yaml", "3"); // another new revision, while traffic stays split by name
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking({
        let s = s.clone();
        move || run_cli(&s, &["traffic", "moving", "--traffic", "@latest=100"])
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking({
        let s = s.clone();
        move || wait_ready(&s, "moving", &["moving-00003"])
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    run_cli(&s, &["delete", "revision", "moving-00001"]);
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let (ok_count, rate, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failures.len(),
        ok_count + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    assert!(rate >= 200.0, "load was {rate:.0} requests/s, want at least 200");
    let revs = ok(&s, &["get", "revisions"]);
    assert!(
        !revs.contains("moving-00001") && revs.contains("moving-00003"),
        "{revs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_replica_is_replaced_and_no_request_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let s = server.admin.clone();
    let manifest = upstream_service("killed", &[], &[("autoscaling.knative.dev/initial-scale", "2")], "");
    apply(&s, tmp.path(), "v1.yaml", &manifest);
    wait_ready(&s, "killed", &["killed-00001"]);
    let replicas = |s: &str| -> i64 {
        let v: serde_json::Value =
            serde_json::from_str(&ok(s, &["get", "revision", "killed-00001", "-o", "json"])).unwrap();
        v["status"]["actualReplicas"].as_i64().unwrap_or(0)
    };
    wait_until("two ready replicas", Duration::from_secs(20), || replicas(&s) == 2);
    let load = Load::start(server.gateway_addr(), "killed.default.localhost", 4, 80);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pids = replica_pids("killed-00001");
    assert_eq!(pids.len(), 2, "{pids:?}");
    std::process::Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::spawn_blocking({
        let s = s.clone();
        move || {
            wait_until("the killed replica replaced", Duration::from_secs(20), || {
                replicas(&s) == 2 && replica_pids("killed-00001").len() == 2
            })
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok_count, _, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        ok_count,
        &failures[..failures.len().min(5)]
    );
    let new = replica_pids("killed-00001");
    assert!(!new.contains(&pids[0]), "the killed pid is gone: {new:?}");
    let events = ok(&s, &["events", "killed"]);
    assert!(events.contains("Created"), "{events}");
}

/// Pids of the processes whose environment says `K_REVISION=<rev>`.
fn replica_pids(rev: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if env
            .split(|b| *b == 0)
            .any(|kv| kv == format!("K_REVISION={rev}").as_bytes())
        {
            out.push(pid);
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_reported_in_status() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let s = server.admin.clone();
    let missing = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: missing\nspec:\n  template:\n    spec:\n      containers:\n        - image: x\n          command: [/nonexistent/model-server]\n";
    let unmapped = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: unmapped\nspec:\n  template:\n    spec:\n      containers:\n        - image: gcr.io/p/model:v1\n";
    let crashing = upstream_service(
        "crashing",
        &[("EXIT_AT_START", "7")],
        &[("serving.knative.dev/progress-deadline", "2s")],
        "",
    );
    for (n, m) in [
        ("a.yaml", missing.to_string()),
        ("b.yaml", unmapped.to_string()),
        ("c.yaml", crashing),
    ] {
        apply(&s, tmp.path(), n, &m);
    }
    let ready_of = |rev: &str| -> (String, String, String) {
        let v: serde_json::Value = serde_json::from_str(&ok(&s, &["get", "revision", rev, "-o", "json"])).unwrap();
        let c = v["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        let f = |k: &str| c[k].as_str().unwrap_or("").to_string();
        (f("status"), f("reason"), f("message"))
    };
    wait_until("failures in status", Duration::from_secs(20), || {
        ready_of("missing-00001").0 == "False"
            && ready_of("unmapped-00001").0 == "False"
            && ready_of("crashing-00001").1 == "ProgressDeadlineExceeded"
    });
    let (_, reason, msg) = ready_of("missing-00001");
    assert_eq!(reason, "ExecFailed");
    assert!(
        msg.contains("/nonexistent/model-server") && msg.contains("No such file or directory"),
        "{msg}"
    );
    let (_, reason, msg) = ready_of("unmapped-00001");
    assert_eq!(reason, "ImageNotRunnableLocally");
    assert!(msg.contains("[images.\"gcr.io/p/model:v1\"]"), "{msg}");
    let (_, _, msg) = ready_of("crashing-00001");
    assert!(
        msg.contains("ExitCode7") && msg.contains("exiting at start with code 7"),
        "{msg}"
    );
    let gw = server.gateway_addr();
    let (status, body) = common::get(&common::http_client(), gw, "missing.default.localhost", &[])
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
}

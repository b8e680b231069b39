//! Rollouts end to end, with real processes under continuous load: a good canary is promoted through
//! its steps, a canary answering 5xx and a slow one are rolled back by analysis with the reason, the
//! only failed requests are the faulty canary's own, `undo` moves traffic back at once, and a kill -9
//! of the server mid-rollout resumes at the same step. `/metrics` shows each rollout as it goes.

mod common;

use std::time::{Duration, Instant};

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
        - setWeight: 20
        - analysis: {count: 1}
        - setWeight: 50
        - analysis: {count: 1}
  analysis:
    interval: 2s
    threshold: 2
    minSamples: 10
    metrics:
      - name: success-rate
        thresholdRange: {min: 95}
      - name: latency
        percentile: 99
        thresholdRange: {max: 150}
";

fn rollout_json(s: &str) -> serde_json::Value {
    serde_json::from_str(&ok(s, &["get", "rollout", "web", "-o", "json"])).unwrap()
}

fn phase(s: &str) -> String {
    rollout_json(s)["status"]["phase"].as_str().unwrap_or("").to_string()
}

fn web(version: &str, env: &[(&str, &str)]) -> String {
    let mut all = vec![("VERSION", version)];
    all.extend_from_slice(env);
    upstream_service("web", &all, &[("autoscaling.knative.dev/min-scale", "1")], "")
}

/// Applies web v1 (with `env`) and `rollout`, and waits for web-00001 to be the stable revision.
fn start_stable(s: &str, dir: &std::path::Path, env: &[(&str, &str)], rollout: &str) {
    apply(s, dir, "web.yaml", &web("v1", env));
    apply(s, dir, "rollout.yaml", rollout);
    wait_until("stable", Duration::from_secs(20), || {
        rollout_json(s)["status"]["stableRevision"] == "web-00001"
    });
}

/// [`watch`] from async code.
async fn watch_async(s: &str) -> (i32, String) {
    let s = s.to_string();
    tokio::task::spawn_blocking(move || watch(&s)).await.unwrap()
}

/// Runs `revisor rollout watch web` to its end: (exit code, output).
fn watch(s: &str) -> (i32, String) {
    let r = cli(s, &["rollout", "watch", "web"]);
    (r.code, format!("{}{}", r.stdout, r.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promote_then_roll_back_under_load_then_undo() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    apply(&s, dir.path(), "web.yaml", &web("v1", &[]));
    apply(&s, dir.path(), "rollout.yaml", ROLLOUT);
    wait_ready(&s, "web", &["web-00001"]);
    wait_until("the first revision to become stable", Duration::from_secs(10), || {
        rollout_json(&s)["status"]["stableRevision"] == "web-00001"
    });
    let listing = ok(&s, &["get", "rollouts"]);
    assert!(
        listing.starts_with("NAME") && listing.contains("web-00001"),
        "{listing}"
    );

    let load = Load::start(server.gateway_addr(), "web.default.localhost", 5, 60);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A good canary: promoted through every step. Meanwhile /metrics is read as Prometheus would.
    let scrapes = Scraper::start(&s);
    apply(&s, dir.path(), "web.yaml", &web("v2", &[]));
    let started = Instant::now();
    let (code, out) = watch_async(&s).await;
    assert_eq!(code, 0, "promoted:\n{out}");
    let seen = scrapes.stop();
    let ours = [("namespace", "default"), ("rollout", "web")];
    let values = |name: &str, extra: &[(&str, &str)]| -> Vec<f64> {
        let mut labels = ours.to_vec();
        labels.extend_from_slice(extra);
        seen.iter().filter_map(|m| series(m, name, &labels)).collect()
    };
    let weights = values("revisor_rollout_canary_weight", &[]);
    assert!(
        weights.contains(&20.0) && weights.contains(&50.0),
        "the weight steps: {weights:?}"
    );
    assert!(values("revisor_rollout_phase", &[("phase", "Progressing")]).contains(&1.0));
    assert!(values("revisor_rollout_steps", &[]).iter().all(|n| *n == 4.0));
    let rates = values("revisor_rollout_analysis_value", &[("metric", "success-rate")]);
    assert!(
        !rates.is_empty() && rates.iter().all(|r| *r >= 95.0),
        "success rates measured: {rates:?}"
    );
    assert!(values(
        "revisor_rollout_analysis_verdict",
        &[("metric", "success-rate"), ("verdict", "Successful")]
    )
    .contains(&1.0));
    assert!(values("revisor_rollout_analysis_samples", &[("metric", "latency-p99")])
        .iter()
        .any(|n| *n >= 10.0));
    let after = admin_get(&s, "/metrics");
    assert_eq!(
        series(&after, "revisor_rollout_promotions_total", &ours),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        series(
            &after,
            "revisor_rollout_phase",
            &[ours[0], ours[1], ("phase", "Succeeded")]
        ),
        Some(1.0)
    );
    assert_eq!(series(&after, "revisor_rollout_canary_weight", &ours), Some(0.0));
    assert_eq!(
        series(
            &after,
            "revisor_rollout_info",
            &[ours[0], ours[1], ("stable", "web-00002")]
        ),
        Some(1.0),
        "{after}"
    );
    let took = series(
        &after,
        "revisor_rollout_duration_seconds_sum",
        &[ours[0], ours[1], ("outcome", "promoted")],
    );
    assert!(took.is_some_and(|t| t > 0.0 && t < 60.0), "{after}");
    assert!(
        out.contains("20%") && out.contains("50%"),
        "went through the steps:\n{out}"
    );
    let r = rollout_json(&s);
    assert_eq!(r["status"]["phase"], "Succeeded");
    assert_eq!(r["status"]["stableRevision"], "web-00002");
    assert!(started.elapsed() < Duration::from_secs(40), "{:?}", started.elapsed());
    let svc = service_json(&s, "web");
    assert_eq!(
        svc["spec"]["traffic"][0]["revisionName"], "web-00002",
        "{}",
        svc["spec"]
    );
    assert_eq!(svc["spec"]["traffic"][0]["percent"], 100);

    // A canary answering 500 to half its requests: rolled back by analysis.
    apply(&s, dir.path(), "web.yaml", &web("v3", &[("FAIL_PERCENT", "50")]));
    let (code, out) = watch_async(&s).await;
    assert_eq!(code, 1, "rolled back:\n{out}");
    let r = rollout_json(&s);
    assert_eq!(r["status"]["phase"], "RolledBack", "{}", r["status"]);
    assert_eq!(r["status"]["stableRevision"], "web-00002");
    assert_eq!(r["status"]["rejectedRevision"], "web-00003");
    let msg = r["status"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("success-rate"), "the reason names the metric: {msg}");
    let events = ok(&s, &["events", "web"]);
    assert!(events.contains("AnalysisFailed"), "{events}");
    let after = admin_get(&s, "/metrics");
    let ours = [("namespace", "default"), ("rollout", "web")];
    assert_eq!(
        series(&after, "revisor_rollout_rollbacks_total", &ours),
        Some(1.0),
        "{after}"
    );
    assert_eq!(series(&after, "revisor_rollout_promotions_total", &ours), Some(1.0));
    assert_eq!(
        series(
            &after,
            "revisor_rollout_duration_seconds_count",
            &[ours[0], ours[1], ("outcome", "rolledBack")]
        ),
        Some(1.0)
    );
    // Sequential analysis: the failing verdict is kept with its evidence, and came at a look as soon
    // as the evidence was strong, without waiting for a threshold count of failed intervals.
    let failed: Vec<&serde_json::Value> = r["status"]["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["revision"] == "web-00003" && m["verdict"] == "Failed")
        .collect();
    assert!(
        !failed.is_empty(),
        "every measurement is kept: {}",
        r["status"]["measurements"]
    );
    assert!(
        failed[0]["comparison"].as_str().unwrap().contains("sequential"),
        "{}",
        failed[0]
    );
    assert_eq!(r["status"]["failedChecks"], 0, "no threshold count: {}", r["status"]);

    // Undo: back to web-00001 at once.
    let t0 = Instant::now();
    ok(&s, &["rollout", "undo", "web"]);
    wait_until("undo", Duration::from_secs(5), || {
        rollout_json(&s)["status"]["stableRevision"] == "web-00001"
    });
    wait_until("traffic back on web-00001", Duration::from_secs(5), || {
        service_json(&s, "web")["status"]["traffic"][0]["revisionName"] == "web-00001"
    });
    let undo_time = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (ok_count, rate, failures) = load.stop().await;
    eprintln!("{ok_count} requests at {rate:.0}/s, undo took {undo_time:?}");
    assert!(rate >= 200.0, "load of at least 200 requests/s: {rate}");
    assert!(undo_time < Duration::from_secs(2), "{undo_time:?}");
    // The only failures: web-00003's own 500s, before the rollback.
    let foreign: Vec<&String> = failures.iter().filter(|f| !f.starts_with("500: web-00003")).collect();
    assert!(foreign.is_empty(), "requests failed because traffic moved: {foreign:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_canary_is_rolled_back_on_latency() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    start_stable(&s, dir.path(), &[], ROLLOUT);
    let load = Load::start(server.gateway_addr(), "web.default.localhost", 8, 30);
    apply(&s, dir.path(), "web.yaml", &web("v2", &[("LATENCY_MS", "300")]));
    let (code, out) = watch_async(&s).await;
    let (_, _, failures) = load.stop().await;
    assert_eq!(code, 1, "{out}");
    let msg = rollout_json(&s)["status"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("latency-p99"), "{msg}");
    assert!(failures.is_empty(), "a slow canary fails no request: {failures:?}");
}

#[test]
fn kill_9_mid_rollout_resumes_at_the_same_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gateway = format!("127.0.0.1:{}", free_port());
    let server = Server::start_on(&data, &gateway);
    let s = server.admin.clone();
    let paused = ROLLOUT.replace(
        "        - analysis: {count: 1}\n        - setWeight: 50",
        "        - pause: {}\n        - setWeight: 50",
    );
    start_stable(&s, dir.path(), &[], &paused);
    apply(&s, dir.path(), "web.yaml", &web("v2", &[]));
    wait_until("paused at 20%", Duration::from_secs(20), || phase(&s) == "Paused");
    let before = rollout_json(&s)["status"].clone();
    assert_eq!(before["canaryWeight"], 20);
    server.kill9();

    let server = Server::start_on(&data, &gateway);
    let s = server.admin.clone();
    std::thread::sleep(Duration::from_secs(1));
    let after = rollout_json(&s)["status"].clone();
    assert_eq!(
        (
            &after["phase"],
            &after["currentStep"],
            &after["canaryWeight"],
            &after["canaryRevision"]
        ),
        (
            &before["phase"],
            &before["currentStep"],
            &before["canaryWeight"],
            &before["canaryRevision"]
        ),
        "resumed where it stopped"
    );
    let svc = service_json(&s, "web");
    assert_eq!(svc["spec"]["traffic"][1]["percent"], 20, "{}", svc["spec"]);
    ok(&s, &["rollout", "promote", "web", "--full"]);
    wait_until("promoted", Duration::from_secs(10), || phase(&s) == "Succeeded");
    assert_eq!(rollout_json(&s)["status"]["stableRevision"], "web-00002");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_relative_to_stable_pass_a_slow_baseline_and_catch_a_slower_canary() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    let relative = "apiVersion: revisor.dev/v1alpha1
kind: Rollout
metadata:
  name: web
spec:
  serviceRef:
    name: web
  strategy:
    canary:
      steps:
        - setWeight: 50
        - analysis: {count: 2}
  analysis:
    interval: 2s
    threshold: 2
    minSamples: 10
    metrics:
      - name: latency
        percentile: 50
        relativeTo: stable
        maxRatio: 1.5
      - name: success-rate
        relativeTo: stable
        confidence: 0.95
";
    start_stable(&s, dir.path(), &[("LATENCY_MS", "80")], relative);
    let load = Load::start(server.gateway_addr(), "web.default.localhost", 16, 20);
    // As slow as stable, far above any absolute bound one would write for a fast service: promoted.
    apply(&s, dir.path(), "web.yaml", &web("v2", &[("LATENCY_MS", "80")]));
    let (code, out) = watch_async(&s).await;
    assert_eq!(code, 0, "{out}\n{}", rollout_json(&s)["status"]);
    // Three times slower than stable: rolled back, the comparison in the reason.
    apply(&s, dir.path(), "web.yaml", &web("v3", &[("LATENCY_MS", "240")]));
    let (code, out) = watch_async(&s).await;
    let (_, _, failures) = load.stop().await;
    assert_eq!(code, 1, "{out}");
    let msg = rollout_json(&s)["status"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("latency-p50") && msg.contains("x stable"), "{msg}");
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_route_sends_matching_requests_to_the_canary() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    let ab = "apiVersion: revisor.dev/v1alpha1
kind: Rollout
metadata:
  name: web
spec:
  serviceRef:
    name: web
  strategy:
    canary:
      steps:
        - setHeaderRoute:
            match:
              - headerName: X-Canary
                headerValue: {exact: \"yes\"}
              - headerName: User-Agent
                headerValue: {regex: \"^beta-.*\"}
        - pause: {}
";
    start_stable(&s, dir.path(), &[], ab);
    apply(&s, dir.path(), "web.yaml", &web("v2", &[]));
    wait_until("paused with the header route", Duration::from_secs(20), || {
        let st = rollout_json(&s)["status"].clone();
        st["phase"] == "Paused" && st["headerRoute"].is_object()
    });
    let c = http_client();
    let gw = server.gateway_addr();
    let host = "web.default.localhost";
    let deadline = Instant::now() + Duration::from_secs(5);
    while !get(&c, gw, host, &[("x-canary", "yes"), ("user-agent", "beta-7")])
        .await
        .is_ok_and(|(_, b)| b.contains("web-00002"))
    {
        assert!(Instant::now() < deadline, "the header route was never programmed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        let (_, body) = get(&c, gw, host, &[("x-canary", "yes"), ("user-agent", "beta-7")])
            .await
            .unwrap();
        assert!(body.contains("web-00002"), "{body}");
        let (_, body) = get(&c, gw, host, &[("x-canary", "yes"), ("user-agent", "curl")])
            .await
            .unwrap();
        assert!(body.contains("web-00001"), "all matches must hold: {body}");
        let (_, body) = get(&c, gw, host, &[]).await.unwrap();
        assert!(body.contains("web-00001"), "{body}");
    }
    ok(&s, &["rollout", "promote", "web", "--full"]);
    wait_until("promoted", Duration::from_secs(10), || phase(&s) == "Succeeded");
    assert!(
        rollout_json(&s)["status"]["headerRoute"].is_null(),
        "the header route ends with the rollout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_previews_then_switches_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    let bg = "apiVersion: revisor.dev/v1alpha1
kind: Rollout
metadata:
  name: web
spec:
  serviceRef:
    name: web
  strategy:
    blueGreen:
      prePromotionAnalysis: {count: 1}
      autoPromotionSeconds: 2
      postPromotionAnalysis: {count: 1}
      scaleDownDelaySeconds: 4
  analysis:
    interval: 2s
    minSamples: 10
    metrics:
      - name: success-rate
        thresholdRange: {min: 99}
";
    start_stable(&s, dir.path(), &[], bg);
    let gw = server.gateway_addr();
    let main = Load::start(gw, "web.default.localhost", 4, 50);
    apply(&s, dir.path(), "web.yaml", &web("v2", &[]));
    wait_until("the preview is routed", Duration::from_secs(20), || {
        service_json(&s, "web")["status"]["traffic"]
            .as_array()
            .is_some_and(|t| {
                t.iter()
                    .any(|x| x["tag"] == "preview" && x["revisionName"] == "web-00002")
            })
    });
    // Requests to the preview's own URL feed its pre-promotion analysis.
    let preview = Load::start(gw, "preview-web.default.localhost", 2, 50);
    let (code, out) = watch_async(&s).await;
    assert_eq!(code, 0, "{out}\n{}", rollout_json(&s)["status"]);
    let (_, _, preview_failures) = preview.stop().await;
    let svc = service_json(&s, "web");
    let traffic = svc["status"]["traffic"].as_array().unwrap().clone();
    assert!(
        traffic
            .iter()
            .any(|t| t["revisionName"] == "web-00002" && t["percent"] == 100),
        "{traffic:?}"
    );
    assert!(
        traffic
            .iter()
            .any(|t| t["revisionName"] == "web-00001" && t["tag"] == "previous"),
        "the old one stays reachable and warm: {traffic:?}"
    );
    let c = http_client();
    let (_, body) = get(&c, gw, "previous-web.default.localhost", &[]).await.unwrap();
    assert!(body.contains("web-00001"), "{body}");
    wait_until("the scale-down delay to pass", Duration::from_secs(15), || {
        service_json(&s, "web")["status"]["traffic"]
            .as_array()
            .is_some_and(|t| t.len() == 1)
    });
    let (_, _, failures) = main.stop().await;
    assert!(failures.is_empty(), "{failures:?}");
    // The preview URL goes away with the promotion; nothing else failed on it.
    assert!(
        preview_failures
            .iter()
            .all(|f| f.starts_with("404: revisor gateway: no service for host")),
        "{preview_failures:?}"
    );
    let events = ok(&s, &["events", "web"]);
    assert!(events.contains("Promoted"), "{events}");
}

/// A webhook receiver: answers each path with its configured status and records the payloads.
struct Hooks {
    addr: std::net::SocketAddr,
    status: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u16>>>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
}

impl Hooks {
    fn start() -> Hooks {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let status: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u16>>> = Default::default();
        let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>> = Default::default();
        let (st, sn) = (status.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (st, sn) = (st.clone(), sn.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let mut len = 0;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        if h == "\r\n" || h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    sn.lock()
                        .unwrap()
                        .push((path.clone(), serde_json::from_slice(&body).unwrap_or_default()));
                    let code = st.lock().unwrap().get(&path).copied().unwrap_or(200);
                    let mut conn = conn;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {code} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                    );
                });
            }
        });
        Hooks { addr, status, seen }
    }

    fn set(&self, path: &str, code: u16) {
        self.status.lock().unwrap().insert(path.to_string(), code);
    }

    fn calls(&self, path: &str) -> Vec<serde_json::Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_gate_promotion_count_as_checks_and_hear_the_outcome() {
    let hooks = Hooks::start();
    hooks.set("/approve", 403);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    let h = hooks.addr;
    let rollout = format!(
        "apiVersion: revisor.dev/v1alpha1
kind: Rollout
metadata:
  name: web
spec:
  serviceRef:
    name: web
  strategy:
    canary:
      steps:
        - setWeight: 30
        - analysis: {{count: 1}}
  analysis:
    interval: 2s
    minSamples: 5
    metrics:
      - name: success-rate
        thresholdRange: {{min: 90}}
    webhooks:
      - {{name: load-check, type: rollout, url: \"http://{h}/check\"}}
      - {{name: approval, type: confirm-promotion, url: \"http://{h}/approve\", metadata: {{ticket: CHG-42}}}}
      - {{name: notify, type: post-rollout, url: \"http://{h}/done\"}}
"
    );
    start_stable(&s, dir.path(), &[], &rollout);
    let load = Load::start(server.gateway_addr(), "web.default.localhost", 4, 30);
    apply(&s, dir.path(), "web.yaml", &web("v2", &[]));
    wait_until("waiting for approval", Duration::from_secs(30), || {
        rollout_json(&s)["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("confirm-promotion"))
    });
    assert_eq!(phase(&s), "Progressing", "not promoted without approval");
    let approvals = hooks.calls("/approve");
    assert!(!approvals.is_empty());
    assert_eq!(approvals[0]["name"], "web");
    assert_eq!(approvals[0]["namespace"], "default");
    assert_eq!(approvals[0]["metadata"]["ticket"], "CHG-42");
    assert!(
        !hooks.calls("/check").is_empty(),
        "the rollout hook ran with the analysis"
    );
    hooks.set("/approve", 200);
    wait_until("promoted", Duration::from_secs(10), || phase(&s) == "Succeeded");
    wait_until("post-rollout told", Duration::from_secs(5), || {
        !hooks.calls("/done").is_empty()
    });
    assert_eq!(hooks.calls("/done")[0]["phase"], "Succeeded");

    // A failing rollout hook counts as a failed check: rolled back at the threshold.
    hooks.set("/check", 500);
    apply(&s, dir.path(), "web.yaml", &web("v3", &[]));
    wait_until("rolled back", Duration::from_secs(30), || phase(&s) == "RolledBack");
    let msg = rollout_json(&s)["status"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("webhook/load-check"), "{msg}");
    let (_, _, failures) = load.stop().await;
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn the_built_in_load_generator_gives_an_idle_canary_a_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    let rollout = "apiVersion: revisor.dev/v1alpha1
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
        - analysis: {count: 2}
  analysis:
    interval: 2s
    threshold: 2
    minSamples: 20
    loadTest:
      rps: 40
      path: /probe
      headers: {x-load-test: \"1\"}
    metrics:
      - name: success-rate
        thresholdRange: {min: 99}
";
    start_stable(&s, dir.path(), &[], rollout);
    // No client sends anything: the load generator's requests to the canary's URL decide.
    apply(&s, dir.path(), "web.yaml", &web("v2", &[]));
    let (code, out) = watch(&s);
    assert_eq!(code, 0, "promoted on synthetic traffic alone:\n{out}");
    let measured: Vec<u64> = rollout_json(&s)["status"]["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["revision"] == "web-00002")
        .map(|m| m["samples"].as_u64().unwrap_or(0))
        .collect();
    assert!(measured.iter().all(|n| *n >= 20), "{measured:?}");

    apply(&s, dir.path(), "web.yaml", &web("v3", &[("FAIL_PERCENT", "100")]));
    let (code, out) = watch(&s);
    assert_eq!(code, 1, "a broken canary is caught without any client:\n{out}");
    assert!(rollout_json(&s)["status"]["message"]
        .as_str()
        .unwrap()
        .contains("success-rate"));
}

/// A /metrics endpoint of the test's own: `model_quality{revision="..."}` per revision.
fn quality_endpoint(values: std::sync::Arc<std::sync::Mutex<Vec<(String, f64)>>>) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let body: String = values
                .lock()
                .unwrap()
                .iter()
                .map(|(r, v)| format!("model_quality{{revision=\"{r}\"}} {v}\n"))
                .collect();
            let mut conn = conn;
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn a_prometheus_query_judges_the_canary() {
    let values = std::sync::Arc::new(std::sync::Mutex::new(vec![
        ("web-00002".to_string(), 0.97),
        ("web-00003".to_string(), 0.42),
    ]));
    let prometheus = Prometheus::start(quality_endpoint(values.clone()));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    let rollout = format!(
        "apiVersion: revisor.dev/v1alpha1
kind: Rollout
metadata:
  name: web
spec:
  serviceRef:
    name: web
  strategy:
    canary:
      steps:
        - setWeight: 20
        - analysis: {{count: 1}}
  analysis:
    interval: 2s
    threshold: 1
    metrics:
      - name: model-quality
        provider:
          prometheus:
            address: {}
            query: 'max(model_quality{{revision=\"{{{{revision}}}}\"}})'
        thresholdRange: {{min: 0.9}}
",
        prometheus.address
    );
    start_stable(&s, dir.path(), &[], &rollout);
    apply(&s, dir.path(), "web.yaml", &web("v2", &[]));
    let (code, out) = watch(&s);
    assert_eq!(
        code,
        0,
        "quality 0.97 >= 0.9: promoted\n{out}\n{}",
        rollout_json(&s)["status"]
    );
    let m = rollout_json(&s)["status"]["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|m| m["metric"] == "model-quality")
        .cloned()
        .unwrap();
    assert_eq!(
        (m["value"].as_f64(), m["verdict"].as_str()),
        (Some(0.97), Some("Successful")),
        "{m}"
    );
    apply(&s, dir.path(), "web.yaml", &web("v3", &[]));
    let (code, out) = watch(&s);
    assert_eq!(code, 1, "{out}");
    let msg = rollout_json(&s)["status"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("model-quality = 0.420"), "{msg}");
}

/// Issue 13: after a promotion the previous stable revision keeps a ready replica for the rollback
/// window whatever the autoscaler says. Without min-scale and with short autoscaler windows, it used
/// to scale to zero after the stable window and grace period, so `undo` cold-started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_stable_revision_stays_warm_past_the_stable_window_and_grace() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[autoscaler]\nstable-window = \"6s\"\nscale-to-zero-grace-period = \"6s\"\n";
    let server = Server::start_with(&dir.path().join("data"), "127.0.0.1:0", Some(config));
    let s = server.admin.clone();
    let rollout = "apiVersion: revisor.dev/v1alpha1
kind: Rollout
metadata:
  name: web
spec:
  serviceRef:
    name: web
  rollbackWindow: 10m
  strategy:
    canary:
      steps:
        - setWeight: 50
";
    apply(
        &s,
        dir.path(),
        "v1.yaml",
        &upstream_service("web", &[("VERSION", "v1")], &[], ""),
    );
    apply(&s, dir.path(), "rollout.yaml", rollout);
    wait_until("stable", Duration::from_secs(20), || {
        rollout_json(&s)["status"]["stableRevision"] == "web-00001"
    });
    apply(
        &s,
        dir.path(),
        "v2.yaml",
        &upstream_service("web", &[("VERSION", "v2")], &[], ""),
    );
    wait_until("promoted", Duration::from_secs(30), || {
        rollout_json(&s)["status"]["stableRevision"] == "web-00002"
    });
    let replicas = |rev: &str| {
        let v: serde_json::Value = serde_json::from_str(&ok(&s, &["get", "revision", rev, "-o", "json"])).unwrap();
        v["status"]["actualReplicas"].as_i64().unwrap_or(-1)
    };
    // Idle past the stable window (6 s) and the grace period (6 s), with room to spare.
    tokio::time::sleep(Duration::from_secs(18)).await;
    assert_eq!(replicas("web-00001"), 1, "the previous stable revision is warm");
    let cold = || {
        ok(&s, &["events", "web"])
            .lines()
            .filter(|l| l.contains("ColdStart") && l.contains("Revision/web-00001"))
            .count()
    };
    let cold_before = cold();
    let c = http_client();
    // Timed from the API call (the CLI's own start-up is not part of the switch).
    let t0 = std::time::Instant::now();
    let code = admin_post(&s, "/apis/revisor.dev/v1alpha1/namespaces/default/rollouts/web/undo");
    assert_eq!(code, 200, "undo through the admin API");
    let answered = t0.elapsed();
    loop {
        let (code, body) = get(&c, server.gateway_addr(), "web.default.localhost", &[])
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}");
        if body.trim() == "web-00001" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "undo never moved traffic");
    }
    eprintln!(
        "undo: answered after {answered:?}, first request answered by the warm revision {:?} after the call",
        t0.elapsed()
    );
    assert_eq!(
        cold(),
        cold_before,
        "undo went to a warm replica, no cold start:\n{}",
        ok(&s, &["events", "web"])
    );
}

/// Issue 13: a `kill -9` mid-analysis loses at most one look. After the restart the analysis goes on:
/// a new measurement within two intervals, and the canary's next verdict (here: the faulty canary's
/// rollback). Before, the in-memory baseline was replaced every tick once a run was due, so analysis
/// never ran again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysis_goes_on_after_a_kill_9_mid_analysis() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gateway = format!("127.0.0.1:{}", free_port());
    let server = Server::start_on(&data, &gateway);
    let s = server.admin.clone();
    // Per-interval analysis, whose window baseline is what a restart used to lose.
    let rollout = ROLLOUT.replace("threshold: 2", "threshold: 3\n    method: interval");
    start_stable(&s, dir.path(), &[], &rollout);
    let load = Load::start(server.gateway_addr(), "web.default.localhost", 4, 25);
    apply(&s, dir.path(), "web.yaml", &web("v2", &[("FAIL_PERCENT", "30")]));
    wait_until("a first failed analysis", Duration::from_secs(30), || {
        rollout_json(&s)["status"]["failedChecks"] == 1
    });
    let _ = load.stop().await;
    server.kill9();
    // Down for more than an interval: analysis is due the moment the server is back.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let server = Server::start_on(&data, &gateway);
    let s = server.admin.clone();
    let before = rollout_json(&s)["status"].clone();
    let load = Load::start(server.gateway_addr(), "web.default.localhost", 4, 25);
    // Interval 2 s: a new look within two intervals (plus the replicas' start).
    wait_until("a look after the restart", Duration::from_secs(8), || {
        rollout_json(&s)["status"]["lastAnalysisAt"] != before["lastAnalysisAt"]
    });
    wait_until("the faulty canary rolled back", Duration::from_secs(20), || {
        phase(&s) == "RolledBack"
    });
    let _ = load.stop().await;
    let msg = rollout_json(&s)["status"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("success-rate"), "{msg}");
}

/// Reads /metrics every 100 ms in the background, as a Prometheus scraping fast would.
struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Scraper {
    fn start(s: &str) -> Scraper {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, s) = (stop.clone(), s.to_string());
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                seen.push(admin_get(&s, "/metrics"));
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        });
        Scraper { stop, thread }
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The value of the series `name` whose labels include every one of `labels`, in an exposition.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .find_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
}

/// Issue 17: on a terminal (a pseudo-terminal from util-linux's `script`), `revisor rollout watch`
/// draws the whole view and redraws it in place, to the promotion; piped, it prints plain lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_watch_redraws_in_place_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    start_stable(&s, dir.path(), &[], ROLLOUT);
    let load = Load::start(server.gateway_addr(), "web.default.localhost", 4, 50);
    apply(&s, dir.path(), "web.yaml", &web("v2", &[]));
    let command = format!("{BIN} rollout watch web --server {s}");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("script")
            .args(["-qfec", &command, "/dev/null"])
            .output()
            .expect("util-linux's script runs the watch on a pseudo-terminal")
    })
    .await
    .unwrap();
    load.stop().await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "promoted: {text}");
    assert!(
        text.contains("\x1b[2K") && text.contains("F\x1b[2K"),
        "redrawn in place: {text:?}"
    );
    let last = text.rsplit("\x1b[J").nth(1).unwrap_or("");
    assert!(
        last.contains("Rollout web (service web): Succeeded"),
        "the final view: {last:?}"
    );
    assert!(
        text.contains("[weight 20%]") || text.contains("[analysis x1]"),
        "a current step in brackets: {text:?}"
    );
    assert!(text.contains("success-rate") && text.contains("Successful"), "{text:?}");
}

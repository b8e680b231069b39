//! A model rollout end to end: `revisor model-server` as a revision's container, behind the gateway.

mod common;

use std::time::Duration;

use common::{apply, children, comm, free_port, ok, wait_ready, wait_until, Server, BIN};

/// Writes the example models into `dir` with `revisor example-models`.
fn example_models(dir: &std::path::Path) {
    let out = std::process::Command::new(BIN)
        .args(["example-models", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn model_service(models: &std::path::Path, file: &str, version: &str, traffic: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: tabular\nspec:\n  template:\n    spec:\n      containers:\n        - image: ghcr.io/example/revisor:latest\n          command: [revisor, model-server]\n          args: [--model, file://{}, --name, tabular, --version, {version}]\n{traffic}",
        models.join(file).display()
    )
}

async fn infer(c: &reqwest::Client, gateway: std::net::SocketAddr) -> (u16, serde_json::Value) {
    let body = serde_json::json!({ "inputs": [{ "name": "features", "shape": [2, 4], "datatype": "FP32", "data": [[1, 2, 3, 4], [0.5, -1, 0, 2]] }] });
    let resp = c
        .post(format!("http://{gateway}/v2/models/tabular/infer"))
        .header("host", "tabular.default.localhost")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_service_serves_v2_inference_and_splits_50_50_between_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    example_models(&models);
    let server = Server::start(&tmp.path().join("data"));
    let s = server.admin.clone();
    apply(
        &s,
        tmp.path(),
        "v1.yaml",
        &model_service(&models, "tabular-v1.onnx", "v1", ""),
    );
    wait_ready(&s, "tabular", &["tabular-00001"]);
    let split = "  traffic:\n    - revisionName: tabular-00001\n      percent: 50\n    - latestRevision: true\n      percent: 50\n";
    apply(
        &s,
        tmp.path(),
        "v2.yaml",
        &model_service(&models, "tabular-v2.onnx", "v2", split),
    );
    wait_ready(&s, "tabular", &["tabular-00001", "tabular-00002"]);

    let c = reqwest::Client::new();
    let gw = server.gateway_addr();
    let (mut v1, mut v2) = (0, 0);
    let mut outputs = std::collections::BTreeMap::new();
    for _ in 0..400 {
        let (status, v) = infer(&c, gw).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["outputs"][0]["shape"], serde_json::json!([2, 3]));
        let version = v["model_version"].as_str().unwrap().to_string();
        outputs.insert(version.clone(), v["outputs"][0]["data"].clone());
        match version.as_str() {
            "v1" => v1 += 1,
            "v2" => v2 += 1,
            other => panic!("unexpected version {other}"),
        }
    }
    let share = v1 as f64 / 400.0;
    assert!((share - 0.5).abs() < 0.08, "v1 answered {v1} and v2 {v2} of 400");
    assert_ne!(outputs["v1"], outputs["v2"], "the versions have different weights");

    // The faulty v3 becomes ready (it loads and warms up) but fails every inference.
    apply(
        &s,
        tmp.path(),
        "v3.yaml",
        &model_service(&models, "tabular-v3-faulty.onnx", "v3", ""),
    );
    wait_ready(&s, "tabular", &["tabular-00003"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, v) = infer(&c, gw).await;
    assert_eq!(status, 500, "{v}");
    assert!(v["error"].as_str().unwrap().contains("JSON cannot carry"), "{v}");
}

#[test]
fn a_missing_model_fails_start_up_naming_the_uri() {
    let out = std::process::Command::new(BIN)
        .args(["model-server", "--model", "file:///nonexistent/m.onnx", "--port", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model file:///nonexistent/m.onnx: cannot read /nonexistent/m.onnx"),
        "{err}"
    );
}

#[test]
fn the_onnx_runtime_engine_needs_its_library() {
    let out = std::process::Command::new(BIN)
        .args([
            "model-server",
            "--model",
            "m.onnx",
            "--port",
            "1",
            "--engine",
            "onnxruntime",
        ])
        .env_remove("REVISOR_ONNXRUNTIME_LIB")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--engine onnxruntime needs the ONNX Runtime library"),
        "{err}"
    );
}

const MIRROR_ROLLOUT: &str = "apiVersion: revisor.dev/v1alpha1
kind: Rollout
metadata:
  name: tabular
spec:
  serviceRef:
    name: tabular
  strategy:
    canary:
      steps:
        - setMirrorRoute: {percentage: 100}
        - analysis: {count: 1}
        - setWeight: 50
        - analysis: {count: 1}
  analysis:
    interval: 2s
    threshold: 2
    minSamples: 10
    metrics:
      - name: prediction-agreement
        agreement: tolerance
        tolerance: 0.001
        thresholdRange: {min: 95}
      - name: success-rate
        thresholdRange: {min: 99}
";

fn rollout(s: &str) -> serde_json::Value {
    serde_json::from_str(&common::ok(s, &["get", "rollout", "tabular", "-o", "json"])).unwrap()
}

/// Inference traffic with varied rows until stopped: the model versions that answered, and failures.
fn traffic(
    gateway: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(std::collections::BTreeMap<String, u64>, Vec<String>)> {
    tokio::spawn(async move {
        let c = reqwest::Client::new();
        let (mut seen, mut failures) = (std::collections::BTreeMap::new(), Vec::new());
        let mut i = 0u32;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            let x = (i % 17) as f32 / 4.0;
            let body = serde_json::json!({ "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP32", "data": [x, 1.0 - x, x * 0.5, 2.0] }] });
            let resp = c
                .post(format!("http://{gateway}/v2/models/tabular/infer"))
                .header("host", "tabular.default.localhost")
                .json(&body)
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => {
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    *seen
                        .entry(v["model_version"].as_str().unwrap_or("?").to_string())
                        .or_insert(0) += 1;
                }
                Ok(r) => failures.push(format!("{}: {}", r.status(), r.text().await.unwrap_or_default())),
                Err(e) => failures.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
        (seen, failures)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_model_canary_is_judged_on_prediction_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    revisor_model::examples::write_all(&models).unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    apply(
        &s,
        dir.path(),
        "m.yaml",
        &model_service(&models, "tabular-v1.onnx", "v1", ""),
    );
    apply(&s, dir.path(), "r.yaml", MIRROR_ROLLOUT);
    common::wait_until("v1 stable", Duration::from_secs(30), || {
        rollout(&s)["status"]["stableRevision"] == "tabular-00001"
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = traffic(server.gateway_addr(), stop.clone());

    // The same model again: every mirrored prediction agrees; promoted.
    apply(
        &s,
        dir.path(),
        "m.yaml",
        &model_service(&models, "tabular-v1.onnx", "v1-again", ""),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while rollout(&s)["status"]["stableRevision"] != "tabular-00002" {
        if std::time::Instant::now() > deadline {
            let st = rollout(&s)["status"].clone();
            let metrics = common::admin_get(&s, "/metrics");
            let lines: Vec<&str> = metrics
                .lines()
                .filter(|l| l.contains("prediction") || l.contains("tag=\"mirror\""))
                .collect();
            panic!(
                "not promoted: {}\n{}",
                serde_json::to_string_pretty(&st).unwrap(),
                lines.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let agreed: Vec<serde_json::Value> = rollout(&s)["status"]["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["metric"] == "prediction-agreement" && m["revision"] == "tabular-00002")
        .cloned()
        .collect();
    assert!(
        !agreed.is_empty() && agreed.iter().all(|m| m["value"] == 100.0),
        "{agreed:?}"
    );

    // Retrained weights: probabilities differ by more than the tolerance; rolled back while it only
    // received copies, so no client ever got its answers.
    apply(
        &s,
        dir.path(),
        "m.yaml",
        &model_service(&models, "tabular-v2.onnx", "v2", ""),
    );
    common::wait_until("v2 rolled back", Duration::from_secs(40), || {
        rollout(&s)["status"]["phase"] == "RolledBack"
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (seen, failures) = load.await.unwrap();
    let r = rollout(&s);
    let msg = r["status"]["message"].as_str().unwrap();
    assert!(msg.contains("prediction-agreement"), "{msg}");
    assert_eq!(r["status"]["rejectedRevision"], "tabular-00003");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        !seen.contains_key("v2"),
        "clients never saw the mirrored canary's answers: {seen:?}"
    );
    assert!(
        seen.get("v1").copied().unwrap_or(0) > 0 && seen.get("v1-again").copied().unwrap_or(0) > 0,
        "{seen:?}"
    );
}

/// The binary runs with transparent huge pages off: its allocator asks for them on its arena, and
/// zeroing a 2 MiB page at each first touch took most of a model server's start-up (the cold start of
/// a model revision fell from about 45 ms to under 20 ms without them).
#[test]
fn a_model_server_runs_without_transparent_huge_pages() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    example_models(dir.path());
    let port = free_port();
    let mut child = std::process::Command::new(BIN)
        .args(["model-server", "--port", &port.to_string(), "--model"])
        .arg(dir.path().join("tabular-v1.onnx"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("listening on"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(listening.is_some(), "the model server did not start");
    assert!(status.contains("THP_enabled:\t0"), "{status}");
}

/// Issue 15: a model revision's replica is forked from the server's pre-fork server (the binary is
/// already loaded and relocated there), and its ColdStart event says so; `[runtime] prefork = false`
/// goes back to exec. The forked model server is what an exec'd one is: its command line, and no
/// transparent huge pages.
#[test]
fn a_model_revision_s_cold_start_is_forked_from_the_prefork_server() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    example_models(&models);
    let at_zero = model_service(&models, "tabular-v1.onnx", "v1", "").replace(
        "    spec:\n      containers:",
        "    metadata:\n      annotations:\n        autoscaling.knative.dev/initial-scale: \"0\"\n    spec:\n      containers:",
    );
    for (name, prefork, says) in [
        ("forked", true, "process forked from the pre-fork server in"),
        ("exec", false, "process spawn"),
    ] {
        let config = format!("[autoscaler]\nallow-zero-initial-scale = true\n[runtime]\nprefork = {prefork}\n");
        let server = Server::start_with(&tmp.path().join(name), "127.0.0.1:0", Some(&config));
        let s = server.admin.clone();
        apply(&s, tmp.path(), "zero.yaml", &at_zero);
        wait_ready(&s, "tabular", &["tabular-00001"]);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (status, v) = rt.block_on(infer(&reqwest::Client::new(), server.gateway_addr()));
        assert_eq!(status, 200, "{v}");
        wait_until("a ColdStart event", Duration::from_secs(10), || {
            ok(&s, &["events", "tabular"]).contains("ColdStart")
        });
        let events = ok(&s, &["events", "tabular"]);
        let cold = events.lines().find(|l| l.contains("ColdStart")).unwrap();
        assert!(cold.contains(says), "{name}: {cold}");
        let prefork_server = children(server.child.id()).into_iter().find(|p| comm(*p) == "prefork");
        assert_eq!(
            prefork_server.is_some(),
            prefork,
            "{name}: a pre-fork server runs only when asked"
        );
        let replica = match prefork_server {
            Some(p) => children(p),
            None => children(server.child.id())
                .into_iter()
                .filter(|p| comm(*p) == "revisor")
                .collect(),
        };
        assert_eq!(replica.len(), 1, "{name}: one replica: {replica:?}");
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", replica[0])).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(cmdline.contains(" model-server --model file://"), "{name}: {cmdline}");
        let status = std::fs::read_to_string(format!("/proc/{}/status", replica[0])).unwrap();
        assert!(status.contains("THP_enabled:\t0"), "{name}: {status}");
    }
}

/// `revisor rewrite-model` writes what the ONNX Runtime engine opens: magika with its GELUs and its
/// one-hot embedding rewritten, the tabular example as it is, and nothing for a file that is not ONNX.
#[test]
fn rewrite_model_writes_the_graph_onnx_runtime_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |model: &std::path::Path, out: &std::path::Path| {
        let o = std::process::Command::new(BIN)
            .args(["rewrite-model", "--model"])
            .arg(model)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let magika = std::path::PathBuf::from(std::env::var("REVISOR_MAGIKA_MODEL").expect(
        "REVISOR_MAGIKA_MODEL is not set: run ./scripts/test.sh, which extracts magika's model from PyPI's wheel",
    ));
    let out = tmp.path().join("magika.onnx");
    let (ok, stdout, stderr) = run(&magika, &out);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("rewritten: 2 tanh GELU chain(s) as FastGelu, 1 one-hot product(s) as a row lookup"),
        "{stdout}"
    );
    let (before, after) = (std::fs::read(&magika).unwrap(), std::fs::read(&out).unwrap());
    assert!(after.windows(8).any(|w| w == b"FastGelu") && !before.windows(8).any(|w| w == b"FastGelu"));

    let models = tmp.path().join("models");
    example_models(&models);
    let out = tmp.path().join("tabular.onnx");
    let (ok, stdout, _) = run(&models.join("tabular-v1.onnx"), &out);
    assert!(ok && stdout.contains("nothing to rewrite"), "{stdout}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(models.join("tabular-v1.onnx")).unwrap()
    );

    let text = tmp.path().join("notes.txt");
    std::fs::write(&text, "not a model at all\n").unwrap();
    let out = tmp.path().join("never.onnx");
    let (ok, _, stderr) = run(&text, &out);
    assert!(!ok && stderr.contains("notes.txt: not an ONNX model"), "{stderr}");
    assert!(!out.exists(), "nothing is written for a file that is not ONNX");
    let (ok, _, stderr) = run(&tmp.path().join("missing.onnx"), &out);
    assert!(!ok && stderr.contains("missing.onnx"), "{stderr}");
}

/// The ONNX Runtime engine says in its log what it rewrote before serving (README, "Two engines run
/// the model").
#[test]
fn the_onnx_runtime_model_server_logs_what_it_rewrote() {
    use std::io::BufRead;
    let env = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run ./scripts/test.sh, which sets it"))
    };
    let port = free_port();
    let mut child = std::process::Command::new(BIN)
        .args([
            "model-server",
            "--name",
            "magika",
            "--engine",
            "onnxruntime",
            "--port",
            &port.to_string(),
        ])
        .args([
            "--onnxruntime-lib",
            &env("REVISOR_ONNXRUNTIME_LIB"),
            "--model",
            &env("REVISOR_MAGIKA_MODEL"),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<String> = std::io::BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.contains("listening on"))
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        lines.iter().any(|l| l
            .contains("rewritten for speed: 2 tanh GELU chain(s) as FastGelu, 1 one-hot product(s) as a row lookup")),
        "{lines:#?}"
    );
}

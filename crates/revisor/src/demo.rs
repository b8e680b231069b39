//! `revisor demo`: the whole mission in a minute or two, with nothing to set up. It starts a server in
//! a temporary data dir (this executable, `revisor serve`, on free loopback ports), deploys the tabular
//! example model v1 with a Rollout, sends live inference traffic, rolls out v2 as a canary judged on
//! success rate and latency (promoted), then the faulty v3 (rolled back by itself), and prints a
//! summary. It stops the server (which stops every replica) and removes the data dir before it exits.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use revisor_api::rollout::{phase, Rollout};
use serde_json::{json, Value};

use revisor_model::examples::Example;

use crate::client::{Client, ROLLOUTS, SERVING};

const ROLLOUT: &str = "apiVersion: revisor.dev/v1alpha1
kind: Rollout
metadata:
  name: tabular
spec:
  serviceRef:
    name: tabular
  strategy:
    canary:
      steps:
        - setWeight: 10
        - analysis: {count: 1}
        - setWeight: 30
        - analysis: {count: 1}
        - setWeight: 60
        - analysis: {count: 1}
  analysis:
    interval: 3s
    threshold: 2
    minSamples: 20
    metrics:
      - name: success-rate
        thresholdRange: {min: 99}
      - name: latency
        percentile: 99
        thresholdRange: {max: 250}
";

fn service(models: &Path, version: &str) -> String {
    let file = match version {
        "v1" => Example::V1,
        "v2" => Example::V2,
        _ => Example::V3Faulty,
    }
    .file_name();
    format!(
        "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: tabular
spec:
  template:
    spec:
      containers:
        - image: revisor
          command: [revisor, model-server]
          args: [--model, {}, --name, tabular, --version, {version}]
",
        models.join(file).display()
    )
}

/// The server child: SIGTERM (drain and stop replicas) on drop.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(data: &Path) -> Result<(ServerProcess, String, String)> {
    let exe = std::env::current_exe().context("finding the revisor executable")?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "serve",
        "--admin-addr",
        "127.0.0.1:0",
        "--gateway-addr",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(data)
    .env("REVISOR_LOG", "error")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    // The server must not outlive the demo, even if the demo is killed.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting `revisor serve`")?;
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let server = ServerProcess(child);
    let (mut admin, mut gateway) = (None, None);
    while admin.is_none() || gateway.is_none() {
        let Some(line) = lines.next() else {
            bail!("`revisor serve` stopped before it listened");
        };
        let line = line?;
        let addr = |rest: &str| rest.split_whitespace().next().unwrap_or("").to_string();
        if let Some(rest) = line.strip_prefix("revisor: admin API listening on ") {
            admin = Some(addr(rest));
        } else if let Some(rest) = line.strip_prefix("revisor: gateway listening on ") {
            gateway = Some(addr(rest).trim_start_matches("http://").to_string());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok((server, admin.unwrap_or_default(), gateway.unwrap_or_default()))
}

fn apply(client: &Client, path: &str, yaml: &str) -> Result<()> {
    let value: Value = serde_norway::from_str(yaml)?;
    client.apply(path, &value, false, false)?;
    Ok(())
}

/// Per model version: latencies (ms) of answered requests, and failures.
type Seen = BTreeMap<String, (Vec<f64>, u64)>;

/// Live traffic: `workers` threads posting one V2 inference each, about `rps` in all.
struct Traffic {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(gateway: &str, workers: usize, rps: u64) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let url = format!("http://{gateway}/v2/models/tabular/infer");
        let body = json!({ "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2] }] })
            .to_string();
        let period = Duration::from_secs_f64(workers as f64 / rps as f64);
        let threads = (0..workers)
            .map(|_| {
                let (stop, seen, url, body) = (stop.clone(), seen.clone(), url.clone(), body.clone());
                std::thread::spawn(move || {
                    let http = reqwest::blocking::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let resp = http
                            .post(&url)
                            .header("host", "tabular.default.localhost")
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send();
                        let ms = t.elapsed().as_secs_f64() * 1e3;
                        let (version, ok) = match resp {
                            Ok(r) if r.status().is_success() => {
                                let v: Value = r.json().unwrap_or_default();
                                (v["model_version"].as_str().unwrap_or("?").to_string(), true)
                            }
                            Ok(r) => {
                                let code = r.status().as_u16();
                                let text = r.text().unwrap_or_default();
                                let v = if text.contains("JSON cannot carry") { "v3" } else { "?" };
                                (format!("{v} (HTTP {code})"), false)
                            }
                            Err(_) => ("connection error".to_string(), false),
                        };
                        {
                            let mut s = seen.lock().unwrap();
                            let e = s
                                .entry(version.split(' ').next().unwrap_or("?").to_string())
                                .or_default();
                            if ok {
                                e.0.push(ms);
                            } else {
                                e.1 += 1;
                            }
                        }
                        if let Some(rest) = period.checked_sub(t.elapsed()) {
                            std::thread::sleep(rest);
                        }
                    }
                })
            })
            .collect();
        Traffic { stop, seen, threads }
    }

    fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        Arc::try_unwrap(self.seen)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_default()
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

/// Follows the rollout of `revision` until it ends (promoted or rejected), printing each change and
/// each new measurement; returns the final status.
fn follow(client: &Client, revision: &str) -> Result<Rollout> {
    let path = format!("{ROLLOUTS}/namespaces/default/rollouts/tabular");
    let mut last = String::new();
    let mut shown = client.get::<Rollout>(&path)?.status().measurements.len();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r: Rollout = client.get(&path)?;
        let st = r.status();
        let line = format!(
            "  {:<11} canary {:<14} {:>3}%  {}",
            st.phase,
            st.canary_revision.clone().unwrap_or_else(|| "-".into()),
            st.canary_weight,
            st.message.clone().unwrap_or_default()
        );
        for m in st.measurements.iter().skip(shown) {
            let range = format!(
                "{}..{}",
                m.threshold.min.map(|v| v.to_string()).unwrap_or_default(),
                m.threshold.max.map(|v| v.to_string()).unwrap_or_default()
            );
            println!(
                "      {} {:<14} {:>9} in {:<8} over {:>4} requests: {}",
                m.revision,
                m.metric,
                m.value.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
                range,
                m.samples,
                m.verdict
            );
        }
        shown = shown.max(st.measurements.len());
        if line != last {
            println!("{line}");
            last = line;
        }
        let progressing = matches!(st.phase, phase::PROGRESSING | phase::PAUSED);
        let decided =
            st.stable_revision.as_deref() == Some(revision) || st.rejected_revision.as_deref() == Some(revision);
        if decided && !progressing {
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!("the rollout of {revision} did not finish within two minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_ready(client: &Client) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r: Rollout = client.get(&format!("{ROLLOUTS}/namespaces/default/rollouts/tabular"))?;
        if r.status().stable_revision.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("tabular-00001 did not become ready within a minute");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn run() -> Result<()> {
    let t0 = Instant::now();
    let dir = tempfile_dir()?;
    let result = demo(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "\n(demo finished in {:.0}s; nothing left running)",
        t0.elapsed().as_secs_f64()
    );
    result
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("revisor-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn demo(dir: &Path) -> Result<()> {
    let models = dir.join("models");
    revisor_model::examples::write_all(&models).context("writing the example models")?;
    println!("revisor demo: a model rolled out to live traffic, judged on live metrics.\n");
    println!("1. Starting revisor (data in {}) ...", dir.display());
    let data = dir.join("data");
    let (server, admin, gateway) = start_server(&data)?;
    // The server's own token and CA, wherever (or whether) it could write the CLI's credentials.
    let client = Client::with_credentials(
        &admin,
        Some(&data.join(crate::auth::TOKEN_FILE)),
        Some(&data.join(crate::tls::TLS_DIR).join(crate::tls::CA_CERT)),
    )?;
    let svc_path = format!("{SERVING}/namespaces/default/services/tabular");
    let rollout_path = format!("{ROLLOUTS}/namespaces/default/rollouts/tabular");

    println!("2. Deploying model v1 (tabular-v1.onnx, served by `revisor model-server`) with a canary Rollout:");
    println!("   steps 10% -> 30% -> 60% -> 100%, each judged on success rate >= 99% and p99 latency <= 250 ms");
    apply(&client, &svc_path, &service(&models, "v1"))?;
    apply(&client, &rollout_path, ROLLOUT)?;
    wait_ready(&client)?;
    println!("   tabular-00001 is ready and stable.\n");

    println!("3. Sending live inference traffic (about 150 requests/s) to http://tabular.default.localhost ...");
    let traffic = Traffic::start(&gateway, 6, 150);
    std::thread::sleep(Duration::from_secs(2));

    println!("\n4. Rolling out model v2 (different weights) as a canary:");
    apply(&client, &svc_path, &service(&models, "v2"))?;
    let r = follow(&client, "tabular-00002")?;
    let st = r.status();
    println!(
        "   => {}: stable is now {}\n",
        st.phase,
        st.stable_revision.clone().unwrap_or_default()
    );

    println!("5. Rolling out model v3, which fails every inference:");
    apply(&client, &svc_path, &service(&models, "v3"))?;
    let r = follow(&client, "tabular-00003")?;
    let st3 = r.status();
    println!("   => {}: {}\n", st3.phase, st3.message.clone().unwrap_or_default());
    std::thread::sleep(Duration::from_secs(1));
    let seen = traffic.stop();

    println!("6. Summary");
    let (mut total, mut failed) = (0usize, 0u64);
    let mut rows = Vec::new();
    for (version, (lat, fails)) in &seen {
        let mut lat = lat.clone();
        lat.sort_by(|a, b| a.total_cmp(b));
        total += lat.len() + *fails as usize;
        failed += fails;
        rows.push(vec![
            format!("   {version}"),
            lat.len().to_string(),
            fails.to_string(),
            format!("{:.1}", pct(&lat, 50.0)),
            format!("{:.1}", pct(&lat, 99.0)),
        ]);
    }
    crate::cli::table_print(&["   MODEL VERSION", "ANSWERED", "FAILED", "P50 MS", "P99 MS"], &rows);
    println!("   {total} requests sent, {failed} failed (all of them answered by the faulty v3 before its rollback)");
    println!("   Decisions (revisor events tabular):");
    let events: Value = client.get(&format!("{svc_path}/events"))?;
    for e in events["items"].as_array().into_iter().flatten() {
        if e["object"].as_str().is_some_and(|o| o.starts_with("Rollout/")) {
            println!(
                "     {:<8} {:<15} {}",
                e["type"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            );
        }
    }
    drop(server);
    let ok = st.phase == phase::SUCCEEDED && st3.phase == phase::ROLLED_BACK;
    if !ok {
        bail!(
            "the demo did not go as planned: v2 ended {}, v3 ended {}",
            st.phase,
            st3.phase
        );
    }
    let unexpected: u64 = seen
        .iter()
        .filter(|(v, _)| v.as_str() != "v3")
        .map(|(_, (_, f))| f)
        .sum();
    if unexpected > 0 {
        bail!("{unexpected} requests failed that the faulty model did not answer");
    }
    Ok(())
}

//! Helpers for end-to-end tests: a real `revisor serve` on loopback, the CLI, the test upstream, and a
//! load generator that counts every failed request.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_revisor");

/// The test upstream binary (crates/revisor-testapp), built beside revisor.
pub fn upstream_bin() -> PathBuf {
    revisor_testapp::upstream_binary()
}

/// A `revisor serve` process on free loopback ports; killed (SIGKILL) on drop.
pub struct Server {
    pub child: Child,
    pub admin: String,
    pub gateway: String,
    /// What the server printed to stderr after its addresses, so far.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub fn start(data: &Path) -> Server {
        Self::start_on(data, "127.0.0.1:0")
    }

    /// A server whose gateway listens on `gateway` (to keep URLs stable across restarts).
    pub fn start_on(data: &Path, gateway: &str) -> Server {
        Self::start_with(data, gateway, None)
    }

    /// A server with more flags of `revisor serve`.
    pub fn start_args(data: &Path, extra: &[&str]) -> Server {
        Self::spawn(data, "127.0.0.1:0", None, extra, "warn")
    }

    /// A server with `config` as its revisor.toml (written beside the data dir).
    pub fn start_with(data: &Path, gateway: &str, config: Option<&str>) -> Server {
        Self::spawn(data, gateway, config, &[], "warn")
    }

    /// A server with more flags, logging at `level` (`REVISOR_LOG`) into [`Server::log`].
    pub fn start_logging(data: &Path, extra: &[&str], level: &str) -> Server {
        Self::spawn(data, "127.0.0.1:0", None, extra, level)
    }

    fn spawn(data: &Path, gateway: &str, config: Option<&str>, extra: &[&str], level: &str) -> Server {
        let mut cmd = Command::new(BIN);
        if let Some(text) = config {
            let file = data.with_extension("toml");
            std::fs::write(&file, text).unwrap();
            cmd.arg("serve").arg("--config").arg(&file);
        } else {
            cmd.arg("serve");
        }
        let mut child = cmd
            .args(["--admin-addr", "127.0.0.1:0", "--gateway-addr", gateway, "--data-dir"])
            .arg(data)
            .args(extra)
            .env("REVISOR_LOG", level)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start revisor serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut admin, mut gateway) = (None, None);
        while admin.is_none() {
            let line = lines.next().expect("server printed its addresses").unwrap();
            let addr = |rest: &str| rest.split_whitespace().next().unwrap().to_string();
            if let Some(rest) = line.strip_prefix("revisor: admin API listening on ") {
                admin = Some(addr(rest));
            } else if let Some(rest) = line.strip_prefix("revisor: gateway listening on ") {
                gateway = Some(addr(rest));
            }
        }
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                let mut k = kept.lock().unwrap();
                k.push_str(&l);
                k.push('\n');
            }
        });
        Server {
            child,
            admin: admin.unwrap(),
            gateway: gateway.expect("gateway address"),
            log,
        }
    }

    pub fn gateway_addr(&self) -> std::net::SocketAddr {
        self.gateway.trim_start_matches("http://").parse().unwrap()
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits up to `timeout` for the server to exit: whether it did, and what it
    /// printed.
    pub fn terminate(mut self, timeout: Duration) -> (bool, String) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + timeout;
        let exited = loop {
            if self.child.try_wait().unwrap().is_some() {
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log.lock().unwrap().clone();
        (exited, log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn cli(server: &str, args: &[&str]) -> Run {
    let out: Output = Command::new(BIN)
        .args(args)
        .env("REVISOR_SERVER", server)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

pub fn ok(server: &str, args: &[&str]) -> String {
    let r = cli(server, args);
    assert_eq!(r.code, 0, "revisor {args:?} failed:\n{}{}", r.stdout, r.stderr);
    r.stdout
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Writes `manifest` into `dir` as `file` and applies it, failing the test if the CLI fails.
pub fn apply(server: &str, dir: &Path, file: &str, manifest: &str) {
    ok(server, &["apply", "-f", write(dir, file, manifest).to_str().unwrap()]);
}

/// A Service running the test upstream; `extra_env` lines go under `env:`, `annotations` under the
/// template's annotations.
pub fn upstream_service(name: &str, env: &[(&str, &str)], annotations: &[(&str, &str)], traffic: &str) -> String {
    let mut s =
        format!("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n");
    if !annotations.is_empty() {
        s.push_str("    metadata:\n      annotations:\n");
        for (k, v) in annotations {
            s.push_str(&format!("        {k}: \"{v}\"\n"));
        }
    }
    s.push_str(&format!(
        "    spec:\n      containers:\n        - image: revisor-test-upstream\n          command: [{}]\n",
        upstream_bin().display()
    ));
    if !env.is_empty() {
        s.push_str("          env:\n");
        for (k, v) in env {
            s.push_str(&format!("            - name: {k}\n              value: \"{v}\"\n"));
        }
    }
    s.push_str(traffic);
    s
}

/// The service as JSON.
pub fn service_json(server: &str, name: &str) -> serde_json::Value {
    serde_json::from_str(&ok(server, &["get", "service", name, "-o", "json"])).unwrap()
}

/// The admin token the server at `server` wrote for the CLI.
pub fn token(server: &str) -> String {
    revisor::auth::client_token(server, None)
        .unwrap()
        .unwrap_or_else(|| panic!("the server at {server} wrote no credentials"))
}

/// The admin API's address (`host:port`) from its URL.
pub fn admin_addr(server: &str) -> &str {
    server.trim_start_matches("https://").trim_start_matches("http://")
}

/// Sends `request` (whole, as bytes on the wire) to the admin API over TLS, trusting the CA the
/// server wrote for the CLI; the whole answer (empty if the server closed without one).
pub fn admin_raw(server: &str, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    let ca = revisor::auth::ca_path(server).expect("a credentials dir");
    let pem = std::fs::read(&ca).unwrap_or_else(|e| panic!("the server's CA at {}: {e}", ca.display()));
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(admin_addr(server)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// GET a path on the admin API (with its token): the body.
pub fn admin_get(server: &str, path: &str) -> String {
    let addr = admin_addr(server);
    let token = token(server);
    let out = admin_raw(
        server,
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes(),
    );
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// POST an empty JSON body to a path on the admin API (with its token): the status code.
pub fn admin_post(server: &str, path: &str) -> u16 {
    let addr = admin_addr(server);
    let token = token(server);
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    let out = admin_raw(server, req.as_bytes());
    out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// The value of the first Prometheus sample named `name` whose labels contain `labels`.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .find_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
}

/// Polls `f` until it is true or `timeout` passes (then panics with `what`).
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the service is Ready and its programmed traffic names exactly `revisions` (with percent > 0).
pub fn wait_ready(server: &str, name: &str, revisions: &[&str]) {
    wait_until(
        &format!("{name} ready on {revisions:?}"),
        Duration::from_secs(30),
        || {
            let v = service_json(server, name);
            let ready = v["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let mut routed: Vec<String> = v["status"]["traffic"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["percent"].as_i64().unwrap_or(0) > 0)
                .map(|t| t["revisionName"].as_str().unwrap_or("").to_string())
                .collect();
            routed.sort();
            routed.dedup();
            ready && routed == revisions
        },
    );
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

pub fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// One GET through the gateway: (status, body).
pub async fn get(
    c: &HttpClient,
    gateway: std::net::SocketAddr,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let mut req = hyper::Request::builder()
        .uri(format!("http://{gateway}/"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c
        .request(req.body(http_body_util::Empty::new()).unwrap())
        .await
        .map_err(|e| format!("request: {e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Continuous load: `workers` loops, each at most `per_worker_rps`, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    pub failures: Arc<Mutex<Vec<String>>>,
    pub by_body: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    pub fn start(gateway: std::net::SocketAddr, host: &str, workers: usize, per_worker_rps: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let by_body: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::new(Mutex::new(Default::default()));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failures, by_body, host) = (
                    stop.clone(),
                    ok.clone(),
                    failures.clone(),
                    by_body.clone(),
                    host.to_string(),
                );
                tokio::spawn(async move {
                    let c = http_client();
                    let period = Duration::from_micros(1_000_000 / per_worker_rps);
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        match get(&c, gateway, &host, &[]).await {
                            Ok((200, body)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                *by_body.lock().unwrap().entry(body).or_default() += 1;
                            }
                            Ok((status, body)) => failures.lock().unwrap().push(format!("{status}: {body}")),
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                        if let Some(rest) = period.checked_sub(t.elapsed()) {
                            tokio::time::sleep(rest).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            by_body,
            tasks,
            started: Instant::now(),
        }
    }

    /// Stops the load; returns (successful requests, requests per second, failures).
    pub async fn stop(self) -> (u64, f64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let ok = self.ok.load(Ordering::Relaxed);
        let failures = self.failures.lock().unwrap().clone();
        let rate = (ok + failures.len() as u64) as f64 / self.started.elapsed().as_secs_f64();
        (ok, rate, failures)
    }
}

/// Debian's Prometheus on loopback, scraping `target` every second; killed on drop.
pub struct Prometheus {
    child: std::process::Child,
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    pub fn start(target: std::net::SocketAddr) -> Prometheus {
        let bin = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("prometheus is not installed: ./scripts/test.sh installs it (apt-get install prometheus)");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: models\n    static_configs:\n      - targets: [\"{target}\"]\n"),
        )
        .unwrap();
        let port = free_port();
        let child = std::process::Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let address = format!("http://127.0.0.1:{port}");
        let p = Prometheus {
            child,
            address,
            _dir: dir,
        };
        let ready = format!("{}/-/ready", p.address);
        wait_until("Prometheus ready", Duration::from_secs(30), || {
            reqwest::blocking::get(&ready).is_ok_and(|r| r.status().is_success())
        });
        p
    }
}

/// `revisor serve --backend knative` against `kubeconfig`; killed on drop.
pub struct KnativeServer {
    child: Child,
    pub admin: String,
    /// Its data dir (where its admin token is).
    _data: tempfile::TempDir,
}

impl Drop for KnativeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl KnativeServer {
    /// Its data directory (its admin token and CA are there).
    pub fn data(&self) -> &Path {
        self._data.path()
    }

    pub fn start(kubeconfig: &Path, extra: &[&str]) -> KnativeServer {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--backend",
                "knative",
                "--admin-addr",
                "127.0.0.1:0",
                "--kubeconfig",
            ])
            .arg(kubeconfig)
            .arg("--data-dir")
            .arg(data.path())
            .args(extra)
            .env("REVISOR_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start revisor serve --backend knative");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let admin = loop {
            let line = lines.next().expect("server printed its address").unwrap();
            if let Some((_, rest)) = line.split_once("admin API listening on ") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
            assert!(!line.starts_with("Error"), "revisor serve failed: {line}");
        };
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                eprintln!("[revisor] {l}");
            }
        });
        KnativeServer {
            child,
            admin,
            _data: data,
        }
    }
}

/// The name a process gives itself (`/proc/PID/comm`).
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The pids of `parent`'s children.
pub fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

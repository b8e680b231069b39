//! Issue 17: the dashboard in a real browser. A canary under load, paused at 20%, is shown at `/ui` in
//! headless Chromium (driven through chromedriver's W3C WebDriver protocol): the page shows what the
//! API says (revisions, the set weight, a verdict), a click on Promote promotes it (checked through
//! the API), and without the token neither the page nor its event stream is served. Screenshots are
//! saved under `target/dashboard/`. Chromium and chromedriver must be installed (scripts/test.sh
//! installs Debian's); the test fails, not skips, without them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

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
        - pause: {}
  analysis:
    interval: 2s
    minSamples: 10
    metrics:
      - name: success-rate
        thresholdRange: {min: 95}
      - name: latency
        percentile: 99
        thresholdRange: {max: 500}
";

fn web(version: &str) -> String {
    upstream_service(
        "web",
        &[("VERSION", version)],
        &[("autoscaling.knative.dev/min-scale", "1")],
        "",
    )
}

fn rollout(s: &str) -> Value {
    serde_json::from_str(&ok(s, &["get", "rollout", "web", "-o", "json"])).unwrap()
}

/// A W3C WebDriver session on a chromedriver of its own.
struct Browser {
    driver: std::process::Child,
    base: String,
    http: reqwest::Client,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver is needed for this test and could not run ({e}): install Debian's chromium-driver")
            });
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{root}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            // The admin API's certificate is signed by revisor's own CA.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": { "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1440,1000"] },
        }}});
        let session: Value = http
            .post(format!("{root}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session (is chromium installed?): {session}"))
            .to_string();
        Browser {
            driver,
            base: format!("{root}/session/{id}"),
            http,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The text of the first element matching `css`, or "" when there is none.
    async fn text(&self, css: &str) -> String {
        let script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';";
        let v = self
            .call(
                reqwest::Method::POST,
                "/execute/sync",
                Some(json!({ "script": script, "args": [css] })),
            )
            .await;
        v.as_str().unwrap_or("").to_string()
    }

    /// Waits until the text of `css` satisfies `f`; returns it.
    async fn wait_text(&self, css: &str, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = self.text(css).await;
            if f(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what}; {css} says {t:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn click(&self, css: &str) {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        let id = found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no {css}: {found}"))
            .to_string();
        self.call(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({})))
            .await;
    }

    async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        use base64::Engine;
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("a screenshot"))
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_a_canary_and_promotes_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.clone();
    apply(&s, dir.path(), "web.yaml", &web("v1"));
    apply(&s, dir.path(), "rollout.yaml", ROLLOUT);
    wait_ready(&s, "web", &["web-00001"]);
    wait_until("web-00001 stable", Duration::from_secs(20), || {
        rollout(&s)["status"]["stableRevision"] == "web-00001"
    });
    let load = Load::start(server.gateway_addr(), "web.default.localhost", 4, 40);
    apply(&s, dir.path(), "web.yaml", &web("v2"));
    // Paused at 20% after a passing analysis: what the page must show.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let st = rollout(&s)["status"].clone();
        if st["phase"] == "Paused" && st["canaryWeight"] == 20 && st["currentStep"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the canary never paused at 20% after its analysis: {st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let browser = Browser::start().await;
    // Without the token: the page and its stream are refused, in the browser and to any client.
    browser.go(&format!("{s}/ui")).await;
    let refused = browser.text("body").await;
    assert!(
        refused.contains("token") && !refused.contains("Rollout"),
        "the page without the token: {refused}"
    );
    let insecure = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    for path in ["/ui", "/ui/stream", "/ui/app.js"] {
        let r = insecure.get(format!("{s}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without the token");
    }

    // With the login link `revisor dashboard` prints (and opens).
    let link = ok(&s, &["dashboard", "--no-browser"]).trim().to_string();
    assert_eq!(link, format!("{s}/login?token={}", token(&s)));
    browser.go(&link).await;
    browser.wait_text("#conn", "the live stream", |t| t == "live").await;
    browser.wait_text("#ro-phase", "the phase", |t| t == "Paused").await;
    let revisions = browser
        .wait_text("#rev-table", "both revisions", |t| {
            t.contains("web-00001") && t.contains("web-00002")
        })
        .await;
    assert!(revisions.contains("80%") && revisions.contains("20%"), "{revisions}");
    let weights = browser.text("#ro-weights").await;
    assert!(
        weights.contains("set 20%") && weights.contains("actual 20%"),
        "{weights}"
    );
    let steps = browser.text("#ro-steps li.current").await;
    assert!(steps.contains("pause"), "the current step is highlighted: {steps}");
    let verdicts = browser
        .wait_text("#verdicts", "a verdict", |t| t.contains("Successful"))
        .await;
    assert!(
        verdicts.contains("success-rate") && verdicts.contains("latency"),
        "{verdicts}"
    );
    // Let the charts gather a few seconds of the stream (more for the README's screenshot).
    let gather = if std::env::var_os("REVISOR_UPDATE_SCREENSHOT").is_some() {
        45
    } else {
        6
    };
    tokio::time::sleep(Duration::from_secs(gather)).await;
    let shot = browser.screenshot("canary.png").await;
    eprintln!("screenshot: {}", shot.display());
    if std::env::var_os("REVISOR_UPDATE_SCREENSHOT").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboard.png");
        std::fs::copy(&shot, docs).unwrap();
    }

    // Promote from the page: the API says it happened.
    browser.click("button[data-action=promote]").await;
    browser
        .wait_text("#action-result", "the request taken", |t| t.contains("promote: asked"))
        .await;
    wait_until("promoted", Duration::from_secs(30), || {
        let st = rollout(&s)["status"].clone();
        st["phase"] == "Succeeded" && st["stableRevision"] == "web-00002"
    });
    browser.wait_text("#ro-phase", "Succeeded", |t| t == "Succeeded").await;
    browser.screenshot("promoted.png").await;
    // An action the API refuses shows its error: undo to a revision that does not exist.
    let pick = "const s = document.getElementById('undo-to'); const o = document.createElement('option'); \
                o.value = o.textContent = 'web-09999'; s.append(o); s.value = 'web-09999';";
    browser
        .call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": pick, "args": [] })),
        )
        .await;
    browser.click("button[data-action=undo]").await;
    let err = browser
        .wait_text("#action-result", "an error", |t| t.contains("undo failed"))
        .await;
    assert!(err.contains("web-09999") && err.contains("does not exist"), "{err}");
    assert_eq!(rollout(&s)["status"]["stableRevision"], "web-00002", "nothing changed");
    let (_, _, failures) = load.stop().await;
    assert!(failures.is_empty(), "requests failed: {failures:?}");
}

//! The autoscaler end to end, with real processes: a load step from 0 to 200 concurrent clients against
//! a revision with target 10 panics and scales to the KPA's answer within two ticks, falls back when the
//! load stops, reaches zero after the stable window and the grace period, and a request at zero is
//! answered (held by the gateway while a replica starts) with its cold start in the events.

mod common;

use std::time::{Duration, Instant};

use common::*;

const CONFIG: &str = "[autoscaler]\nstable-window = \"6s\"\nscale-to-zero-grace-period = \"6s\"\n";
const REV: &str = "burst-00001";

fn revision(server: &str) -> serde_json::Value {
    serde_json::from_str(&ok(server, &["get", "revision", REV, "-o", "json"])).unwrap()
}

fn condition(rev: &serde_json::Value, t: &str) -> (String, String) {
    let c = rev["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == t)
        .cloned()
        .unwrap_or_default();
    (
        c["status"].as_str().unwrap_or("").to_string(),
        c["reason"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_step_scale_down_scale_to_zero_and_cold_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&dir.path().join("data"), "127.0.0.1:0", Some(CONFIG));
    let s = server.admin.clone();
    let svc = upstream_service(
        "burst",
        &[("LATENCY_MS", "200")],
        &[("autoscaling.knative.dev/target", "10")],
        "",
    );
    apply(&s, dir.path(), "burst.yaml", &svc);
    wait_ready(&s, "burst", &[REV]);
    let gateway = server.gateway_addr();
    let labels = format!("revision_name=\"{REV}\"");

    // The load step: 200 closed-loop clients, each request taking 200 ms.
    let load = Load::start(gateway, "burst.default.localhost", 200, 1_000);
    let step = Instant::now();
    let want = (200.0f64 / 7.0).ceil();
    let mut reached = None;
    let mut panicked = false;
    while step.elapsed() < Duration::from_secs(12) {
        let m = admin_get(&s, "/metrics");
        panicked |= metric(&m, "autoscaler_panic_mode", &labels) == Some(1.0);
        let desired = metric(&m, "autoscaler_desired_pods", &labels).unwrap_or(0.0);
        if reached.is_none() && desired >= want * 0.9 {
            reached = Some(step.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reached = reached.unwrap_or_else(|| panic!("never reached ~{want} replicas:\n{}", admin_get(&s, "/metrics")));
    assert!(panicked, "panic mode was entered");
    // Two ticks (4 s) plus the one second a sample needs to see the load and a little slack.
    assert!(
        reached <= Duration::from_millis(5_500),
        "reached {want} replicas after {reached:?}"
    );
    let rev = revision(&s);
    assert!(
        rev["status"]["actualReplicas"].as_i64().unwrap_or(0) as f64 >= want * 0.9,
        "replicas started: {}",
        rev["status"]
    );
    let listing = ok(&s, &["get", "revisions"]);
    assert!(listing.contains("REPLICAS"), "{listing}");
    let (ok_count, _, failures) = load.stop().await;
    assert!(ok_count > 1_000, "{ok_count}");
    assert!(
        failures.is_empty(),
        "no request failed while scaling up: {:?}",
        &failures[..failures.len().min(5)]
    );

    // One OpenMetrics exposition: the gateway's series (counters with `_total`) and the autoscaler's,
    // ended by one `# EOF`.
    let raw = admin_raw(
        &s,
        format!(
            "GET /metrics HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
            admin_addr(&s),
            token(&s)
        )
        .as_bytes(),
    );
    let (head, m) = raw.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    let served = metric(
        m,
        "revision_request_count_total",
        &format!("{labels},tag=\"\",response_code_class=\"2xx\""),
    )
    .unwrap_or_else(|| panic!("no 2xx count for {REV}:\n{m}"));
    assert!(
        served >= ok_count as f64 * 0.99,
        "{served} counted, {ok_count} answered"
    );
    assert!(m.contains("# TYPE revision_request_count counter\n"), "{m}");
    assert!(m.contains("# TYPE autoscaler_desired_pods gauge\n"), "{m}");
    assert!(metric(m, "autoscaler_actual_pods", &labels).is_some(), "{m}");
    assert_eq!(m.matches("# EOF").count(), 1, "{m}");
    assert!(m.ends_with("\n# EOF\n"), "{m}");

    // Load gone: down, inactive after the stable window, zero after the grace period.
    let stopped = Instant::now();
    wait_until("scaled down below the peak", Duration::from_secs(20), || {
        metric(&admin_get(&s, "/metrics"), "autoscaler_desired_pods", &labels).unwrap_or(99.0) < want * 0.9
    });
    wait_until("zero replicas", Duration::from_secs(60), || {
        revision(&s)["status"]["actualReplicas"].as_i64() == Some(0)
    });
    assert!(
        stopped.elapsed() >= Duration::from_secs(12),
        "not before window + grace: {:?}",
        stopped.elapsed()
    );
    let rev = revision(&s);
    assert_eq!(condition(&rev, "Ready").0, "True", "{}", rev["status"]);
    assert_eq!(condition(&rev, "Active"), ("False".into(), "NoTraffic".into()));
    assert!(ok(&s, &["get", "revisions"]).contains("0/0"));
    let svc = service_json(&s, "burst");
    assert_eq!(
        svc["status"]["traffic"][0]["revisionName"], REV,
        "still routed at zero: {}",
        svc["status"]
    );

    // A request at zero is held, the revision starts, the request is answered.
    let c = http_client();
    let t = Instant::now();
    let (status, body) = get(&c, gateway, "burst.default.localhost", &[]).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(REV), "{body}");
    eprintln!(
        "cold start answered after {:?} (debug build; the 200 ms latency included)",
        t.elapsed()
    );
    wait_until("a ColdStart event", Duration::from_secs(10), || {
        ok(&s, &["events", "burst"]).contains("ColdStart")
    });
    let events = ok(&s, &["events", "burst"]);
    assert!(events.contains("scaled from zero"), "{events}");
}
